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

backends=()
for n in 1 2 3; do
  "$bin" backend --listen "127.0.0.1:800$n" --name "backend$n" &
  backends+=($!)
done
pids+=("${backends[@]}")
"$bin" --config "$config" &
proxy=$!
pids+=("$proxy")

# Runs until a backend or the proxy ends. A binary upgrade (SIGUSR2 or `quic-proxy upgrade`) replaces the
# proxy with a new process of itself, which is not this script's child: it is followed by its pid.
alive() { ps -o stat= -p "$1" 2>/dev/null | grep -qv Z; }
while sleep 1; do
  for pid in "${backends[@]}"; do alive "$pid" || exit 1; done
  if ! alive "$proxy"; then
    wait "$proxy" 2>/dev/null || true
    proxy=$(pgrep -n -f -- "quic-proxy --config $config") || exit 0
    pids+=("$proxy")
  fi
done
