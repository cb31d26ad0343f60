#!/usr/bin/env bash
# gRPC tests (tests/grpc): real grpcio servers behind the real quic-proxy binary (h2c, and h2 over TLS), called
# by grpcio over HTTPS (h2) and by tonic over HTTP/3 (examples/grpc_h3_client.rs); gRPC health probes against
# grpcio-health-checking. Installs what the suite needs into its own venv, builds the debug binary and the
# HTTP/3 client, and runs the suite. Extra arguments go to pytest (e.g. -k deadline, -x).
#
#   GRPC_VENV        the venv to use (default .venv-grpc)
#   QUIC_PROXY_BIN   a binary to test instead of target/debug/quic-proxy
#   GRPC_H3_CLIENT   an HTTP/3 gRPC client to use instead of target/debug/examples/grpc_h3_client
#                    (nothing is built when both are given)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${GRPC_VENV:-.venv-grpc}
requirements=tests/grpc/requirements.txt
installed=$venv/.grpc-requirements  # the requirements file as of the last successful install

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
if ! cmp -s "$requirements" "$installed" \
  || ! "$venv/bin/python" -c 'import grpc, grpc_health.v1.health, grpc_tools.protoc, h2, pytest, pytest_timeout' 2>/dev/null; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$installed"
fi

if [ -z "${QUIC_PROXY_BIN:-}" ] || [ -z "${GRPC_H3_CLIENT:-}" ]; then
  cargo build --quiet
  cargo build --quiet --example grpc_h3_client
fi

exec "$venv/bin/python" -m pytest -q tests/grpc "$@"
