#!/usr/bin/env bash
# `make test`: formatting, lints and every test. Installs what the tests need when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets

# Interop tests (tests/interop): the real binary against curl's own HTTP/3 stack, which comes from PyPI
# (curl_cffi) and so lives in a venv rather than on the machine.
venv=.venv
requirements=tests/interop/requirements.txt

. scripts/lib/venv.sh
python_venv "$venv" .interop-requirements 'curl_cffi, pytest' "$requirements"

# The tests run target/debug/quic-proxy; cargo test has usually built it already, so this is quick.
cargo build --quiet

"$venv/bin/python" -m pytest -q tests/interop

# Adversarial suites (tests/adversarial): raw HTTP/1.1, HTTP/2 and HTTP/3 (aioquic) clients and raw backends
# doing what well-behaved peers never do: desync corpus, malformed frames, slow and stalled peers, floods.
./scripts/test-adversarial.sh

# Monitoring tests (tests/monitoring): dashboard types, provisioning, metrics docs, a real Prometheus.
./scripts/test-monitoring.sh

# Deployment artefacts (tests/deploy): Dockerfile (hadolint, the runtime stage built with buildah and run),
# the Kubernetes base (kubectl kustomize, kubernetes-validate), the systemd unit (systemd-analyze), examples.
./scripts/test-deploy.sh

# The admin console in a real browser (tests/console): Playwright from PyPI driving Debian's Chromium.
./scripts/test-console.sh

# Tracing (tests/tracing): spans of real HTTP/1.1, HTTP/2 and HTTP/3 requests exported to a real OTLP collector
# (rotel from PyPI, gRPC and HTTP); the trace of a retried HTTP/3 request is printed as a tree.
./scripts/test-tracing.sh

# gRPC (tests/grpc): grpcio servers behind the proxy (h2c, h2 over TLS), grpcio over h2 and tonic over HTTP/3,
# gRPC health probes.
./scripts/test-grpc.sh

# DNS discovery (tests/discovery): backends named by DNS, resolved through a DNS server the suite runs on
# loopback (dnslib from PyPI); endpoints added and removed live, probed and listed one by one.
./scripts/test-discovery.sh
