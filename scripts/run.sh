#!/usr/bin/env bash
# Starts three demo backends on loopback and the proxy in front of them (configs/proxy.yaml), in the
# foreground; Ctrl-C stops all of them.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/quic-proxy
config=${CONFIG:-configs/proxy.yaml}

if [ ! -f certs/server.crt ] || [ ! -f certs/server.key ]; then
  "$bin" cert generate --out certs
fi

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

for n in 1 2 3; do
  "$bin" backend --listen "127.0.0.1:800$n" --name "backend$n" &
  pids+=($!)
done
"$bin" --config "$config" &
pids+=($!)
wait -n "${pids[@]}"
