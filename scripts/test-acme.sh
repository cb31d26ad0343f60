#!/usr/bin/env bash
# Automatic HTTPS tests (tests/acme): the real quic-proxy binary getting its certificates over ACME from pebble,
# Let's Encrypt's test CA, with pebble-challtestsrv as pebble's DNS (both Debian's pebble package), validated at
# the proxy's own listeners; served over TCP (curl) and QUIC (aioquic), renewed, shared between instances; and
# SNI among file certificates and the redirect to HTTPS. Installs what the suite needs when it is missing,
# builds the debug binary, and runs the suite. Extra arguments go to pytest (e.g. -k renew, -x).
#
#   ACME_VENV        the venv to use (default .venv-acme)
#   QUIC_PROXY_BIN   a binary to test instead of target/debug/quic-proxy (nothing is built then)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${ACME_VENV:-.venv-acme}
requirements=tests/acme/requirements.txt

if ! command -v pebble >/dev/null || ! command -v pebble-challtestsrv >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pebble >/dev/null
fi

. scripts/lib/venv.sh
python_venv "$venv" .acme-requirements 'aioquic, cryptography, dnslib, pytest, pytest_timeout, trustme' "$requirements"

if [ -z "${QUIC_PROXY_BIN:-}" ]; then
  cargo build --quiet
fi

exec "$venv/bin/python" -m pytest -q tests/acme "$@"
