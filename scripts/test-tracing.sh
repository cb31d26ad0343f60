#!/usr/bin/env bash
# Tracing tests (tests/tracing): the real quic-proxy binary exporting its spans to a real OpenTelemetry collector
# (rotel from PyPI, OTLP over gRPC and HTTP), driven by curl's HTTP/1.1, HTTP/2 and HTTP/3 stacks (curl_cffi).
# Installs what the suite needs into its own venv, builds the debug binary, and runs the suite. Extra arguments
# go to pytest (e.g. -k retried, -x). The trace of the retried HTTP/3 request is printed as a tree.
#
#   TRACING_VENV     the venv to use (default .venv-tracing)
#   QUIC_PROXY_BIN   a binary to test instead of target/debug/quic-proxy (nothing is built then)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${TRACING_VENV:-.venv-tracing}
requirements=tests/tracing/requirements.txt

. scripts/lib/venv.sh
python_venv "$venv" .tracing-requirements 'rotel, curl_cffi, pytest, pytest_timeout' "$requirements"

if [ -z "${QUIC_PROXY_BIN:-}" ]; then
  cargo build --quiet
fi

exec "$venv/bin/python" -m pytest -q tests/tracing "$@"
