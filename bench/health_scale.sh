#!/usr/bin/env bash
# What active health checking costs at scale: quic-proxy with 1,000 backends (distinct loopback addresses
# 127.0.X.Y, all reaching one demo backend) probed every second, and no client traffic. After the first
# probe round and a settling period, measures the proxy's CPU (utime+stime from /proc/PID/stat over a
# window, as a share of one core) and its RSS, then confirms through the admin API that every backend is
# healthy and was checked recently. Prints a few lines; bench/run.sh includes them in its report.
#
#   ./bench/health_scale.sh
#   HEALTH_BACKENDS=2000 HEALTH_SETTLE=5 HEALTH_WINDOW=20 ./bench/health_scale.sh
#   BENCH_KEEP_TMP=1 ./bench/health_scale.sh     # keep the config and logs
#
# One demo backend can answer for 1,000 addresses only when bound to 0.0.0.0. So that it is not reachable
# from outside, everything runs in a private network namespace (unshare --net) whose only interface is
# loopback. Where that is not allowed, HEALTH_HOST_NETWORK=1 runs on the host network instead, with the
# backend on 0.0.0.0 of every interface for the duration of the test.
set -euo pipefail

SELF=$(realpath "$0")
cd "$(dirname "$SELF")/.."
BIN=${QUIC_PROXY_BIN:-target/release/quic-proxy}
COUNT=${HEALTH_BACKENDS:-1000}
SETTLE=${HEALTH_SETTLE:-5}
WINDOW=${HEALTH_WINDOW:-20}
INTERVAL=1s
TIMEOUT=500ms

log() { printf 'health_scale: %s\n' "$*" >&2; }
die() {
  printf 'health_scale: error: %s\n' "$*" >&2
  exit 1
}

{ [[ $COUNT =~ ^[1-9][0-9]*$ ]] && ((COUNT <= 60000)); } || die "HEALTH_BACKENDS=$COUNT: expected 1 to 60000"
[[ $SETTLE =~ ^[0-9]+$ ]] || die "HEALTH_SETTLE=$SETTLE: expected whole seconds"
{ [[ $WINDOW =~ ^[1-9][0-9]*$ ]] && ((WINDOW <= 300)); } || die "HEALTH_WINDOW=$WINDOW: expected 1 to 300 seconds"
[[ -x $BIN ]] || die "$BIN not found; run 'cargo build --release' first"
for tool in curl jq; do
  command -v "$tool" >/dev/null || die "$tool is needed (apt-get install $tool)"
done

if [[ ${1:-} != --inside ]]; then
  if [[ ${HEALTH_HOST_NETWORK:-0} == 1 ]]; then
    log "HEALTH_HOST_NETWORK=1: the demo backend listens on 0.0.0.0 of the host during the test"
    exec "$SELF" --inside
  fi
  unshare --net true 2>/dev/null ||
    die "cannot create a network namespace (unshare --net needs root or user namespaces); HEALTH_HOST_NETWORK=1 runs without one"
  # `timeout` bounds the whole test should anything hang; the namespace disappears with its last process.
  exec timeout --kill-after=5 $((SETTLE + WINDOW + 90)) unshare --net -- "$SELF" --inside
fi

if [[ ${HEALTH_HOST_NETWORK:-0} != 1 ]]; then
  # A new namespace starts with loopback down, and with it 127.0.0.0/8.
  ip link set lo up 2>/dev/null || PATH="$PATH:/usr/sbin:/sbin" ip link set lo up || die "cannot bring up lo"
fi

# Probes keep one connection per backend open; the backend holds the other end, so both need COUNT fds.
needed=$((COUNT + 512))
if (($(ulimit -n) < needed)); then
  ulimit -n "$needed" 2>/dev/null || die "open-file limit $(ulimit -n) is below $needed and cannot be raised"
fi

TMP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/quic-proxy-health.XXXXXX")
PIDS=()
cleanup() {
  local status=$? pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in {1..50}; do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ ${BENCH_KEEP_TMP:-0} == 1 ]]; then log "config and logs kept in $TMP_DIR"; else rm -rf "$TMP_DIR"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_for() {
  local what=$1 pid=$2 tenths
  shift 2
  for ((tenths = 0; tenths < 150; tenths++)); do
    "$@" && return 0
    kill -0 "$pid" 2>/dev/null || die "$what exited early: $(tail -n 5 "$TMP_DIR"/*.log)"
    sleep 0.1
  done
  die "$what: not up within 15 s: $(tail -n 5 "$TMP_DIR"/*.log)"
}

# Below the ephemeral range, so no probe's client socket can hold it.
free_port() {
  local port
  for _ in {1..200}; do
    port=$((20000 + RANDOM % 12000))
    port_open 127.0.0.1 "$port" || { echo "$port"; return 0; }
  done
  die "no free port"
}

BACKEND_PORT=$(free_port)
HTTP_PORT=$(free_port)
TLS_PORT=$(free_port)
ADMIN_PORT=$(free_port)
while [[ $HTTP_PORT == "$BACKEND_PORT" || $ADMIN_PORT == "$BACKEND_PORT" || $ADMIN_PORT == "$HTTP_PORT" ]]; do
  HTTP_PORT=$(free_port)
  ADMIN_PORT=$(free_port)
done

setsid env -u RUST_LOG "$BIN" backend --listen "0.0.0.0:$BACKEND_PORT" --name shared >"$TMP_DIR/backend.log" 2>&1 &
BACKEND_PID=$!
PIDS+=("$BACKEND_PID")
wait_for "demo backend" "$BACKEND_PID" port_open 127.0.0.1 "$BACKEND_PORT"

# 127.0.1.1 to 127.0.X.250: distinct addresses, none of them 127.0.0.1 that the admin API and backend use.
address() { echo "127.0.$((1 + $1 / 250)).$((1 + $1 % 250))"; }
port_open "$(address $((COUNT - 1)))" "$BACKEND_PORT" ||
  die "the backend on 0.0.0.0:$BACKEND_PORT is not reachable at $(address $((COUNT - 1)))"

{
  cat <<EOF
# Written by bench/health_scale.sh: $COUNT backends, one demo backend behind all of them.
server:
  address: "127.0.0.1:$TLS_PORT"
  fallback_address: "127.0.0.1:$HTTP_PORT"
  drain_timeout: "1s"
health_check:
  interval: "$INTERVAL"
  timeout: "$TIMEOUT"
telemetry:
  metrics:
    enabled: true
    address: "127.0.0.1:$ADMIN_PORT"
  logging:
    level: "warn"
    format: "json"
backends:
EOF
  for ((i = 0; i < COUNT; i++)); do
    printf '  - name: "b%04d"\n    url: "http://%s:%s"\n' "$i" "$(address "$i")" "$BACKEND_PORT"
  done
} >"$TMP_DIR/proxy.yaml"
"$BIN" check --config "$TMP_DIR/proxy.yaml" >"$TMP_DIR/check.out" 2>&1 ||
  die "quic-proxy rejected the config: $(head -c 2000 "$TMP_DIR/check.out")"

setsid env -u RUST_LOG "$BIN" --config "$TMP_DIR/proxy.yaml" >"$TMP_DIR/proxy.log" 2>&1 &
PROXY_PID=$!
PIDS+=("$PROXY_PID")
admin() { curl -fsS --max-time 10 "http://127.0.0.1:$ADMIN_PORT$1"; }
# /ready turns 200 once every backend has had its first probe.
wait_for "quic-proxy (first probe round)" "$PROXY_PID" admin /ready >/dev/null 2>&1
log "$COUNT backends on 127.0.1.1 to $(address $((COUNT - 1))):$BACKEND_PORT, first probe round done; settling ${SETTLE}s"
sleep "$SETTLE"

CLK_TCK=$(getconf CLK_TCK)
# utime + stime in clock ticks; fields counted after the ")" that ends the command name.
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
now_ns() { date +%s%N; }
successful_checks() {
  admin /metrics | awk '/^health_checks_total\{/ && /result="success"/ { sum += $NF } END { printf "%d", sum }'
}

checks_before=$(successful_checks)
proxy_before=$(cpu_ticks "$PROXY_PID")
backend_before=$(cpu_ticks "$BACKEND_PID")
start_ns=$(now_ns)
sleep "$WINDOW"
proxy_after=$(cpu_ticks "$PROXY_PID")
backend_after=$(cpu_ticks "$BACKEND_PID")
end_ns=$(now_ns)
checks_after=$(successful_checks)
rss_kib=$(awk '/^VmRSS:/ { print $2 }' "/proc/$PROXY_PID/status")
kill -0 "$PROXY_PID" 2>/dev/null || die "quic-proxy exited during the window"

share() {
  awk -v t="$1" -v hz="$CLK_TCK" -v ns="$2" 'BEGIN { printf "%.1f", t / hz / (ns / 1e9) * 100 }'
}
elapsed_ns=$((end_ns - start_ns))
proxy_cpu=$(share $((proxy_after - proxy_before)) "$elapsed_ns")
backend_cpu=$(share $((backend_after - backend_before)) "$elapsed_ns")
rss_mib=$(awk -v k="$rss_kib" 'BEGIN { printf "%.1f", k / 1024 }')
# The counter is read just outside the CPU window, so the rate is a close approximation.
probe_rate=$(awk -v n=$((checks_after - checks_before)) -v ns="$elapsed_ns" 'BEGIN { printf "%.0f", n / (ns / 1e9) }')

# last_check is RFC 3339 with milliseconds; jq's date parser takes whole seconds only, so the fraction is
# added back separately.
summary=$(admin /api/backends | jq -r '
  def age: capture("^(?<s>[^.]+)(\\.(?<f>[0-9]+))?Z$")
    | now - ((.s + "Z" | fromdateiso8601) + ("0." + (.f // "0") | tonumber));
  .backends as $b
  | [ ($b | length),
      ($b | map(select(.state == "healthy")) | length),
      ($b | map(select(.last_check != null and (.last_check | age) < 3)) | length),
      ($b | map(.last_check // empty | age) | max // -1),
      ($b | map(.consecutive_successes) | min // 0),
      ($b | map(.last_error // empty) | first // "") ]
  | @tsv') || die "cannot read /api/backends"
IFS=$'\t' read -r total healthy recent oldest min_successes first_error <<<"$summary"
warnings=$(grep -c . "$TMP_DIR/proxy.log" || true)

printf '%s\n' "$COUNT backends probed every $INTERVAL: proxy CPU $proxy_cpu% of one core, RSS $rss_mib MiB"
printf '%s\n' "  (no client traffic; ${WINDOW}s window after the first probe round and ${SETTLE}s settling; timeout $TIMEOUT; GET /health over kept-alive connections; the shared demo backend used $backend_cpu% of one core; $probe_rate successful checks/s seen in health_checks_total)"
printf '%s\n' "  admin API /api/backends: $healthy of $total healthy, $recent checked within the last 3 s, oldest last_check $(printf '%.1f' "$oldest") s ago, fewest consecutive successes $min_successes${first_error:+, a last_error: $first_error}"
((warnings == 0)) || printf '%s\n' "  quic-proxy logged $warnings line(s) at warn or above; the first: $(head -n 1 "$TMP_DIR/proxy.log")"
if ((healthy != COUNT || recent != COUNT)); then
  printf '%s\n' "  WARNING: not every backend is healthy and recently checked"
fi
