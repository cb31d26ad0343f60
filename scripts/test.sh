#!/usr/bin/env bash
# `make test`: formatting, lints and every test. Installs what the tests need when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each stage's wall time, printed as it ends and summed up at the end, so a slower suite shows at once.
stages=()
started=$SECONDS
stage() {
  local name=$1 from=$SECONDS
  shift
  "$@"
  stages+=("$(printf '%5ss  %s' $((SECONDS - from)) "$name")")
  echo "== $name: $((SECONDS - from))s"
}
trap 'printf "\nmake test stages:\n"; printf "%s\n" "${stages[@]}"; echo "total: $((SECONDS - started))s"' EXIT

# Formatting, lints, and the layer check (no import cycle, no import from a higher layer): `make lint`.
stage lint make --no-print-directory lint

# Unit and integration tests. cargo-nextest (on the machine image) runs every test in a process of its own,
# so one slow or hanging test neither serialises nor hides the others; plain cargo test is the fallback.
rust_tests() {
  if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --lib --bins --tests --no-fail-fast
    cargo build --quiet --examples --benches
  else
    cargo test --all-targets
  fi
}
stage "cargo tests" rust_tests

# Interop tests (tests/interop): the real binary against curl's own HTTP/3 stack, which comes from PyPI
# (curl_cffi) and so lives in a venv rather than on the machine.
venv=.venv
requirements=tests/interop/requirements.txt

. scripts/lib/venv.sh
python_venv "$venv" .interop-requirements 'curl_cffi, pytest' "$requirements"

# The tests run target/debug/quic-proxy; cargo test has usually built it already, so this is quick.
cargo build --quiet

stage interop "$venv/bin/python" -m pytest -q tests/interop

# Adversarial suites (tests/adversarial): raw HTTP/1.1, HTTP/2 and HTTP/3 (aioquic) clients and raw backends
# doing what well-behaved peers never do: desync corpus, malformed frames, slow and stalled peers, floods.
stage adversarial ./scripts/test-adversarial.sh

# Monitoring tests (tests/monitoring): dashboard types, provisioning, metrics docs, a real Prometheus.
stage monitoring ./scripts/test-monitoring.sh

# Deployment artefacts (tests/deploy): Dockerfile (hadolint, the runtime stage built with buildah and run),
# the Kubernetes base (kubectl kustomize, kubernetes-validate), the systemd unit (systemd-analyze), examples.
stage deploy ./scripts/test-deploy.sh

# The admin console in a real browser (tests/console): Playwright from PyPI driving Debian's Chromium.
stage console ./scripts/test-console.sh

# Tracing (tests/tracing): spans of real HTTP/1.1, HTTP/2 and HTTP/3 requests exported to a real OTLP collector
# (rotel from PyPI, gRPC and HTTP); the trace of a retried HTTP/3 request is printed as a tree.
stage tracing ./scripts/test-tracing.sh

# gRPC (tests/grpc): grpcio servers behind the proxy (h2c, h2 over TLS), grpcio over h2 and tonic over HTTP/3,
# gRPC health probes.
stage grpc ./scripts/test-grpc.sh

# DNS discovery (tests/discovery): backends named by DNS, resolved through a DNS server the suite runs on
# loopback (dnslib from PyPI); endpoints added and removed live, probed and listed one by one.
stage discovery ./scripts/test-discovery.sh

# Automatic HTTPS (tests/acme): certificates ordered from pebble, Let's Encrypt's test CA (Debian's package),
# over http-01 and tls-alpn-01, served over TCP and QUIC, kept across restarts, renewed, shared by instances;
# failing CAs, SNI among file certificates, the redirect to HTTPS.
stage acme ./scripts/test-acme.sh
