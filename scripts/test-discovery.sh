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
installed=$venv/.discovery-requirements  # the requirements file as of the last successful install

# Debian splits venv support into python3-venv; a clean machine may lack it, and a failed attempt leaves a
# venv without pip behind, so it is removed before trying again.
if [ ! -x "$venv/bin/pip" ]; then
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
fi

# Installing takes a while even when nothing changed, so it runs only for new pins or a broken venv.
if ! cmp -s "$requirements" "$installed" || ! "$venv/bin/python" -c 'import dnslib, pytest, pytest_timeout' 2>/dev/null; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$installed"
fi

if [ -z "${QUIC_PROXY_BIN:-}" ]; then
  cargo build --quiet
fi

exec "$venv/bin/python" -m pytest -q tests/discovery "$@"
