#!/usr/bin/env bash
# Adversarial tests (tests/adversarial): the real quic-proxy binary attacked through real sockets by raw
# HTTP/1.1, HTTP/2 and HTTP/3 clients and misbehaving backends. Installs what the suite needs into its own
# venv, builds the debug binary, and runs the suite. Extra arguments go to pytest (e.g. -k desync, -x).
#
#   ADVERSARIAL_VENV   the venv to use (default .venv-adversarial)
#   QUIC_PROXY_BIN     a binary to attack instead of target/debug/quic-proxy (nothing is built then)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${ADVERSARIAL_VENV:-.venv-adversarial}
requirements=tests/adversarial/requirements.txt

. scripts/lib/venv.sh
python_venv "$venv" .adversarial-requirements 'aioquic, pylsqpack, h2, pytest, pytest_timeout' "$requirements"

if [ -z "${QUIC_PROXY_BIN:-}" ]; then
  cargo build --quiet
fi

exec "$venv/bin/python" -m pytest -q tests/adversarial "$@"
