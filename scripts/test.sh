#!/usr/bin/env bash
# `make test`: formatting, lints and every test. Installs what the tests need when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets
