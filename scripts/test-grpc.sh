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

. scripts/lib/venv.sh
python_venv "$venv" .grpc-requirements 'grpc, grpc_health.v1.health, grpc_tools.protoc, h2, pytest, pytest_timeout' "$requirements"

if [ -z "${QUIC_PROXY_BIN:-}" ] || [ -z "${GRPC_H3_CLIENT:-}" ]; then
  cargo build --quiet
  cargo build --quiet --example grpc_h3_client
fi

exec "$venv/bin/python" -m pytest -q tests/grpc "$@"
