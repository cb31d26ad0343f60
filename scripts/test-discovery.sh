#!/usr/bin/env bash
# DNS discovery tests (tests/discovery): the real quic-proxy binary resolving its backends' names through a DNS
# server the suite runs on 127.0.0.1 (dnslib from PyPI), with demo backends on several loopback addresses.
# Installs what the suite needs into its own venv, builds the debug binary, and runs the suite. Extra arguments
# go to pytest (e.g. -k reload, -x).
#
#   DISCOVERY_VENV   the venv to use (default .venv-discovery)
#   QUIC_PROXY_BIN   a binary to test instead of target/debug/quic-proxy (nothing is built then)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${DISCOVERY_VENV:-.venv-discovery}
requirements=tests/discovery/requirements.txt

. scripts/lib/venv.sh
python_venv "$venv" .discovery-requirements 'dnslib, pytest, pytest_timeout' "$requirements"

if [ -z "${QUIC_PROXY_BIN:-}" ]; then
  cargo build --quiet
fi

exec "$venv/bin/python" -m pytest -q tests/discovery "$@"
