#!/usr/bin/env bash
# The monitoring part of `make test` (tests/monitoring): the Grafana dashboard type-checked against Grafana's
# own types (@grafana/schema, tsc --strict), the compose and Grafana provisioning files, docs/metrics.md
# against the code and a running proxy, the series present at start-up, the alert rules, and every dashboard
# query run through a real Prometheus scraping the real proxy. Installs what those need when it is missing.
#
#   scripts/test-monitoring.sh [pytest arguments]
#
# VENV picks the Python venv (default .venv, the one scripts/test.sh uses); QUIC_PROXY_BIN a proxy binary to
# test instead of building target/debug/quic-proxy.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${VENV:-.venv}
schema_check=monitoring/schema-check

# Debian packages: Node.js for the type check, prometheus for prometheus and promtool.
missing=()
command -v node >/dev/null && command -v npm >/dev/null || missing+=(nodejs npm)
command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  # The prometheus package's install starts a distro daemon (systemd unit or init script) listening on
  # :9090, the proxy's default admin port. The tests start their own Prometheus, so the distro one is
  # stopped and disabled, and any daemon the install started is killed by pid.
  running_before=$(pgrep -x prometheus || true)
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  elif [ -x /etc/init.d/prometheus ]; then
    /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  fi
  for pid in $(pgrep -x prometheus || true); do
    if ! grep -qxF "$pid" <<<"$running_before"; then
      kill "$pid" 2>/dev/null || true
    fi
  done
fi

# @grafana/schema and TypeScript, exactly as package-lock.json pins them, into monitoring/schema-check/
# node_modules; again only when the lock file changed since the last successful install.
installed_lock=$schema_check/node_modules/.installed-package-lock.json
if ! cmp -s "$schema_check/package-lock.json" "$installed_lock"; then
  (cd "$schema_check" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$schema_check/package-lock.json" "$installed_lock"
fi

# Python: the interop pins (curl_cffi, pytest) and the monitoring ones.
. scripts/lib/venv.sh
python_venv "$venv" .monitoring-requirements 'curl_cffi, pytest, check_jsonschema, jsonschema, ruamel.yaml' \
  tests/interop/requirements.txt tests/monitoring/requirements.txt

# The tests run target/debug/quic-proxy; after `cargo test` (as in `make test`) this is quick.
if [ -z "${QUIC_PROXY_BIN:-}" ]; then
  cargo build --quiet
fi

exec "$venv/bin/python" -m pytest -q tests/monitoring "$@"
