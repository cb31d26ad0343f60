#!/usr/bin/env bash
# `make bench`: what quic-proxy costs per request, side by side with nginx, HAProxy, Caddy and a bare quinn
# responder, from one run. bench/README.md explains every table and knob; in short:
#  - HTTP/1.1, HTTPS (h2 and http/1.1) and HTTP/3 tables: req/s, p50, p99 and CPU per request (utime+stime
#    of the server's own processes from /proc, divided by responses) at full load and at an equal fixed
#    rate, BENCH_ROUNDS times, with ratios to the peers from the same round.
#  - Scale: the same at 64, 1,024 and 10,000 connections.
#  - Memory: RSS per idle connection (HTTP/1.1, HTTPS, QUIC) and per stalled HTTP/3 stream.
#  - The cost of health-checking 1,000 backends (bench/health_scale.sh).
# Prints the tables and writes them, with every load generator's raw output, to bench/results/<time>.txt.
#
#   ./bench/run.sh                                  # everything, about 32 minutes on 2 cores
#   BENCH_QUICK=1 ./bench/run.sh                    # one short round, small scale and memory steps
#   BENCH_GROUPS="http1" BENCH_SCALE= BENCH_MEMORY=0 ./bench/run.sh   # only the HTTP/1.1 table
# shellcheck disable=SC2317 # with the exit after main, shellcheck takes functions called by name for unreachable
set -euo pipefail
shopt -u patsub_replacement 2>/dev/null || true

cd "$(dirname "$0")/.."
# nginx and haproxy live in /usr/sbin, which a non-root PATH may lack.
PATH="$PATH:/usr/sbin:/sbin"

source bench/lib.sh
source bench/peers.sh
source bench/load.sh
source bench/report.sh

BIN=${QUIC_PROXY_BIN:-target/release/quic-proxy}
QUICK=${BENCH_QUICK:-0}
if [[ $QUICK == 1 ]]; then
  quick() { printf '%s' "$1"; }
else
  quick() { printf '%s' "$2"; }
fi
ROUNDS=${BENCH_ROUNDS:-$(quick 1 3)}
DURATION=${BENCH_DURATION:-$(quick 4s 10s)}
WARMUP=${BENCH_WARMUP:-$(quick 1s 2s)}
CONNECTIONS=${BENCH_CONNECTIONS:-64}
WRK_THREADS=${BENCH_WRK_THREADS:-1}
RATE_HTTP1=${BENCH_RATE_HTTP1:-15000}
RATE_HTTPS=${BENCH_RATE_HTTPS:-5000}
RATE_H3=${BENCH_RATE_H3:-5000}
RATE_COMPRESS=${BENCH_RATE_COMPRESS:-1000}
COMPRESS_BYTES=${BENCH_COMPRESS_BYTES:-16384}
read -r -a GROUPS_RUN <<<"${BENCH_GROUPS-http1 https h3 compress}"
read -r -a HTTP1_PEERS <<<"${BENCH_HTTP1_PEERS-direct quic-proxy quic-proxy-nometrics quic-proxy-policy quic-proxy-actions nginx haproxy}"
read -r -a HTTPS_PEERS <<<"${BENCH_HTTPS_PEERS-quic-proxy nginx haproxy}"
read -r -a HTTPS_VERSIONS <<<"${BENCH_HTTPS_VERSIONS-2 1.1}"
read -r -a H3_PEERS <<<"${BENCH_H3_PEERS-quic-proxy h3bare caddy}"
read -r -a H3_CLIENTS <<<"${BENCH_H3_CLIENTS-oha h3load}"
read -r -a COMPRESS_PEERS <<<"${BENCH_COMPRESS_PEERS-quic-proxy-compress nginx haproxy}"
read -r -a SCALE <<<"${BENCH_SCALE-$(quick '64 1024' '64 1024 10000')}"
read -r -a SCALE_GROUPS <<<"${BENCH_SCALE_GROUPS-http1 https h3}"
SCALE_DURATION=${BENCH_SCALE_DURATION:-$DURATION}
MEMORY=${BENCH_MEMORY:-1}
read -r -a MEMORY_PEERS <<<"${BENCH_MEMORY_PEERS-quic-proxy nginx haproxy caddy h3bare}"
IDLE_CONNECTIONS=${BENCH_IDLE_CONNECTIONS:-$(quick 200 2000)}
STALLED_CONNECTIONS=${BENCH_STALLED_CONNECTIONS:-$(quick 10 40)}
STALLED_STREAMS=${BENCH_STALLED_STREAMS:-100}
HEALTH_SCALE=${BENCH_HEALTH_SCALE:-$(quick 0 1)}
PROXY_WORKERS=${BENCH_PROXY_WORKERS:-}
BARE_WORKERS=${BENCH_BARE_WORKERS:-0}
BARE_SINGLE_ENDPOINT=${BENCH_BARE_SINGLE_ENDPOINT:-0}
REQUEST_PATH=${BENCH_PATH:-/}

number() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }

validate_settings() {
  local value group peer
  [[ $DURATION =~ ^[0-9]+s$ ]] || die "BENCH_DURATION=$DURATION: expected whole seconds, e.g. 10s"
  [[ $SCALE_DURATION =~ ^[0-9]+s$ ]] || die "BENCH_SCALE_DURATION=$SCALE_DURATION: expected whole seconds, e.g. 10s"
  [[ $WARMUP =~ ^[0-9]+s$ ]] || die "BENCH_WARMUP=$WARMUP: expected whole seconds, e.g. 2s"
  (($(to_seconds "$DURATION") >= 1 && $(to_seconds "$DURATION") <= 300)) || die "BENCH_DURATION: 1s to 300s"
  (($(to_seconds "$SCALE_DURATION") >= 1 && $(to_seconds "$SCALE_DURATION") <= 300)) || die "BENCH_SCALE_DURATION: 1s to 300s"
  (($(to_seconds "$WARMUP") <= 60)) || die "BENCH_WARMUP: at most 60s"
  [[ $ROUNDS =~ ^[1-9]$ ]] || die "BENCH_ROUNDS=$ROUNDS: expected 1 to 9"
  for value in "$CONNECTIONS" "$WRK_THREADS" "$RATE_HTTP1" "$RATE_HTTPS" "$RATE_H3" "$RATE_COMPRESS" "$COMPRESS_BYTES" "$IDLE_CONNECTIONS" \
    "$STALLED_CONNECTIONS" "$STALLED_STREAMS" "${SCALE[@]}"; do
    number "$value" || die "expected a positive whole number, got '$value' (see bench/README.md for the knobs)"
  done
  ((STALLED_STREAMS <= 100)) || die "BENCH_STALLED_STREAMS: at most 100 (every peer allows 100 streams per connection)"
  [[ -z $PROXY_WORKERS ]] || number "$PROXY_WORKERS" || die "BENCH_PROXY_WORKERS=$PROXY_WORKERS: expected a number"
  [[ $BARE_WORKERS =~ ^[0-9]+$ ]] || die "BENCH_BARE_WORKERS=$BARE_WORKERS: expected a number (0: one per core)"
  [[ $BARE_SINGLE_ENDPOINT == 0 || $BARE_SINGLE_ENDPOINT == 1 ]] || die "BENCH_BARE_SINGLE_ENDPOINT: expected 0 or 1"
  [[ $MEMORY == 0 || $MEMORY == 1 ]] || die "BENCH_MEMORY=$MEMORY: expected 0 or 1"
  [[ $HEALTH_SCALE == 0 || $HEALTH_SCALE == 1 ]] || die "BENCH_HEALTH_SCALE=$HEALTH_SCALE: expected 0 or 1"
  [[ $REQUEST_PATH == /* ]] || die "BENCH_PATH=$REQUEST_PATH: must start with /"
  for group in "${GROUPS_RUN[@]}"; do
    [[ " http1 https h3 compress " == *" $group "* ]] || die "BENCH_GROUPS: unknown group '$group' (http1, https, h3, compress)"
  done
  for group in "${SCALE_GROUPS[@]}"; do
    [[ $group == http1 || $group == https || $group == h3 ]] || die "BENCH_SCALE_GROUPS: unknown group '$group' (http1, https, h3)"
  done
  for peer in "${COMPRESS_PEERS[@]}"; do
    [[ " quic-proxy-compress nginx haproxy " == *" $peer "* ]] || die "BENCH_COMPRESS_PEERS: unknown peer '$peer'"
  done
  for peer in "${HTTP1_PEERS[@]}"; do
    [[ " direct quic-proxy quic-proxy-nometrics quic-proxy-policy quic-proxy-actions nginx haproxy " == *" $peer "* ]] || die "BENCH_HTTP1_PEERS: unknown peer '$peer'"
  done
  for peer in "${HTTPS_PEERS[@]}"; do
    [[ " quic-proxy nginx haproxy caddy " == *" $peer "* ]] || die "BENCH_HTTPS_PEERS: unknown peer '$peer'"
  done
  for value in "${HTTPS_VERSIONS[@]}"; do
    [[ $value == 2 || $value == 1.1 ]] || die "BENCH_HTTPS_VERSIONS: '$value' is not 2 or 1.1"
  done
  for peer in "${H3_PEERS[@]}"; do
    [[ " quic-proxy h3bare caddy " == *" $peer "* ]] || die "BENCH_H3_PEERS: unknown peer '$peer'"
  done
  for value in "${H3_CLIENTS[@]}"; do
    [[ $value == oha || $value == h3load ]] || die "BENCH_H3_CLIENTS: '$value' is not oha or h3load"
  done
  for peer in "${MEMORY_PEERS[@]}"; do
    [[ " quic-proxy nginx haproxy caddy h3bare " == *" $peer "* ]] || die "BENCH_MEMORY_PEERS: unknown peer '$peer'"
  done
}

runs_group() {
  local group
  for group in "${GROUPS_RUN[@]}"; do [[ $group == "$1" ]] && return 0; done
  return 1
}

scales_group() {
  local group
  ((${#SCALE[@]} > 0)) || return 1
  for group in "${SCALE_GROUPS[@]}"; do [[ $group == "$1" ]] && return 0; done
  return 1
}

# True when peer $1 takes part in anything selected.
uses_peer() {
  local peers=" "
  runs_group http1 && peers+="${HTTP1_PEERS[*]} "
  runs_group https && peers+="${HTTPS_PEERS[*]} "
  runs_group h3 && peers+="${H3_PEERS[*]} "
  runs_group compress && peers+="${COMPRESS_PEERS[*]} "
  scales_group http1 && peers+="quic-proxy nginx haproxy "
  scales_group https && peers+="quic-proxy nginx haproxy "
  scales_group h3 && peers+="quic-proxy h3bare caddy "
  ((MEMORY == 0)) || peers+="${MEMORY_PEERS[*]} "
  [[ $peers == *" $1 "* ]]
}

uses_oha() {
  runs_group http1 || runs_group https || runs_group compress || { runs_group h3 && [[ " ${H3_CLIENTS[*]} " == *" oha "* ]]; }
}

# The largest number of client connections any step opens; servers are configured for it.
max_connections() {
  local max=$CONNECTIONS value
  for value in "${SCALE[@]}"; do ((value <= max)) || max=$value; done
  if ((MEMORY)); then
    ((IDLE_CONNECTIONS <= max)) || max=$IDLE_CONNECTIONS
  fi
  printf '%d' "$max"
}

# A proxy holds a client socket and, at worst, an upstream socket per connection; each process needs two
# file descriptors per connection and some to spare.
raise_file_limit() {
  local wanted=$((MAX_CONNECTIONS * 2 + 1024)) hard
  hard=$(ulimit -Hn)
  [[ $hard == unlimited ]] && hard=$wanted
  ((hard >= wanted)) || ulimit -Hn "$wanted" 2>/dev/null || true
  hard=$(ulimit -Hn)
  [[ $hard == unlimited ]] && hard=$wanted
  if ((hard < wanted)); then
    ulimit -n "$hard"
    FILE_LIMIT_NOTE="open-file limit $hard (hard limit, cannot be raised here) is below the $wanted that $MAX_CONNECTIONS connections through a one-process proxy may need (a client and an upstream socket each)"
    log "$FILE_LIMIT_NOTE"
  else
    ulimit -n "$wanted"
    FILE_LIMIT_NOTE=
  fi
}

# --- checks before measuring -------------------------------------------------------------------------------

# Through a proxy, requests must reach every backend; directly, the one. Extra arguments go to curl.
check_http() {
  local name=$1 url=$2 expect=$3 seen=() backend i
  shift 3
  # Ten per backend: enough that a random balancer (p2c) reaches every one (a miss is about 1 in 60,000).
  for ((i = 0; i < BACKEND_COUNT * 10; i++)); do
    backend=$(curl -fsS --max-time 5 "$@" -o /dev/null -D - "$url" | tr -d '\r' |
      awk -F': ' 'tolower($1) == "x-backend" { print $2 }') ||
      die "$name: GET $url failed"
    [[ -n $backend ]] || die "$name: GET $url answered without an x-backend header"
    [[ " ${seen[*]} " == *" $backend "* ]] || seen+=("$backend")
  done
  ((${#seen[@]} == expect)) || die "$name: expected requests spread over $expect backend(s), saw: ${seen[*]}"
}

# curl here has no HTTP/3, so h3load checks: one second of requests on one connection that must all succeed.
# Retried once: a QUIC listener may come up just after the TCP one. Sets H3_ERROR when it fails.
check_h3() {
  local url=$1 file="$TMP_DIR/h3-check.json" attempt status
  H3_ERROR=
  for ((attempt = 0; attempt < 2; attempt++)); do
    status=0
    timeout 20 "$H3LOAD" "$url" 1 1 1 >"$file" 2>&1 || status=$?
    if ((status == 0)) && [[ $(jq 'select(.ok != null) | .errors == 0 and .other_status == 0 and .ok > 0' "$file" 2>/dev/null) == true ]]; then
      return 0
    fi
    H3_ERROR="h3load check failed (status $status): $(head -c 300 "$file")"
    sleep 0.5
  done
  return 1
}

# The protocol, cipher and key exchange a TLS peer negotiates with curl, for the report.
tls_summary() {
  curl -sk --max-time 5 -o /dev/null -v "$1" 2>&1 | awk '/SSL connection using/ { sub(/^.*using /, ""); print; exit }'
}

# --- measuring ---------------------------------------------------------------------------------------------

RAW_OUTPUTS=

# Runs one measured load against the current server. The server's CPU time is read from /proc just before
# the load generator starts and just after it exits, so the window covers every request it counts.
# Usage: measure TABLE ROW MODE CONNECTIONS CLIENT URL SECONDS [RATE]; MODE is full or fixed.
measure() {
  local table=$1 row=$2 mode=$3 connections=$4 client=$5 url=$6 seconds=$7 rate=${8:-}
  local key="$ROUND|$table|$row|$mode|$connections" before after
  add_row "$table" "$row"
  log "round $ROUND, $table, $row: $mode$([[ -z $rate ]] || echo " $rate/s"), $connections connections, ${seconds}s ($client)"
  before=$(group_cpu_ticks "$SERVER_GROUP")
  load "$client" "$connections" "$seconds" "$url" "$rate"
  after=$(group_cpu_ticks "$SERVER_GROUP")
  RAW_OUTPUTS+=$'\n'"== $key: $LG_COMMAND"$'\n'"${LG_RAW:-}"$'\n'"server CPU ticks $before${LG_START_TICKS:+ ($LG_START_TICKS once connected)} -> $after${LG_MID_TICKS:+ ($LG_MID_TICKS 2 s after the deadline)} (CLK_TCK $CLK_TCK), generator $LG_TICKS ticks"$'\n'
  # h3load starts its clock once its connections are up: the handshakes before are not per-request cost.
  [[ -z $LG_START_TICKS ]] || before=$LG_START_TICKS
  local linger=''
  if [[ -n $LG_MID_TICKS ]] && ((LG_LINGER > 5)); then
    # Only the seconds of load count, not the idle wait for the server to close the connections.
    after=$LG_MID_TICKS
    linger="$client exited $LG_LINGER s after its deadline: after its time is up it sends GOAWAY and waits for the server to close each connection, which this server leaves to its idle timeout; CPU counted up to 2 s after the deadline"
  fi
  LG_RAW=
  if [[ -n $P_FAILURE ]]; then
    R_FAIL[$key]=$P_FAILURE
    log "  not measured: $P_FAILURE"
    return 0
  fi
  if ((P_REQUESTS == 0)); then
    R_FAIL[$key]="no responses; $P_DETAIL"
    return 0
  fi
  R_RPS[$key]=$(awk -v n="$P_OK" -v s="$seconds" 'BEGIN { printf "%.1f", n / s }')
  R_P50[$key]=$P_P50
  R_P99[$key]=$P_P99
  R_ERR[$key]=$P_ERRORS
  R_CPU[$key]=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$P_REQUESTS" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')
  R_GEN[$key]=$(awk -v t="$LG_TICKS" -v hz="$CLK_TCK" -v n="$P_REQUESTS" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')
  R_DETAIL[$key]=$P_DETAIL
  if [[ -n $rate ]] && awk -v got="${R_RPS[$key]}" -v want="$rate" 'BEGIN { exit !(got < want * 0.95) }'; then
    R_NOTE[$key]="did not sustain $rate/s: $(printf '%.0f' "${R_RPS[$key]}")/s"
  fi
  [[ -z $linger ]] || R_NOTE[$key]+="${R_NOTE[$key]:+; }$linger"
  log "  $(printf '%.0f req/s, p99 %.2f ms, %.1f µs CPU per request, %d errors' "${R_RPS[$key]}" "${R_P99[$key]}" "${R_CPU[$key]}" "$P_ERRORS")"
}

# A warm-up run whose figures are thrown away: connection pools, caches and the CPU's frequency settle.
# A failure here is recorded for the row and the row's measured runs are skipped.
warm_up() {
  local table=$1 row=$2 client=$3 url=$4
  LOAD_WARMUP=1
  load "$client" "$CONNECTIONS" "$(to_seconds "$WARMUP")" "$url"
  LOAD_WARMUP=0
  LG_RAW=
  if [[ -n $P_FAILURE ]]; then
    add_row "$table" "$row"
    R_FAIL[$ROUND|$table|$row|full|$CONNECTIONS]="warm-up: $P_FAILURE"
    log "  $row: warm-up failed: $P_FAILURE"
    return 1
  fi
}

# The full-load and fixed-rate runs of one row.
measure_pair() {
  local table=$1 row=$2 full_client=$3 fixed_client=$4 url=$5 rate=$6 seconds
  seconds=$(to_seconds "$DURATION")
  warm_up "$table" "$row" "$full_client" "$url" || return 0
  measure "$table" "$row" full "$CONNECTIONS" "$full_client" "$url" "$seconds"
  measure "$table" "$row" fixed "$CONNECTIONS" "$fixed_client" "$url" "$seconds" "$rate"
}

declare -A PEER_LABEL=(
  [direct]="backend direct" [quic-proxy]="quic-proxy" [quic-proxy-nometrics]="quic-proxy metrics off"
  [quic-proxy-policy]="quic-proxy traffic policy" [quic-proxy-actions]="quic-proxy route actions"
  [quic-proxy-compress]="quic-proxy"
  [nginx]="nginx" [haproxy]="haproxy" [caddy]="caddy" [h3bare]="h3bare"
)

warnings_of() {
  local name=$1
  [[ -n $SERVER_LOG && -s $SERVER_LOG && $SERVER_PEER == quic-proxy* ]] || return 0
  # At level warn anything quic-proxy logs is worth a look (upstream errors, accept failures).
  PROXY_WARNINGS+="$name (round $ROUND): $(grep -c . "$SERVER_LOG") line(s) at warn or above, the first: $(head -n 1 "$SERVER_LOG" | head -c 400)"$'\n'
}

round_http1() {
  local peer row expect
  for peer in "${HTTP1_PEERS[@]}"; do
    name_row "$peer" ""
    row=$ROW
    start_peer "$peer" "$peer-http1-r$ROUND"
    expect=$BACKEND_COUNT
    [[ $peer != direct ]] || expect=1
    check_http "$row" "$SERVER_HTTP$REQUEST_PATH" "$expect"
    describe_peer "$peer"
    measure_pair http1 "$row" wrk oha-1.1 "$SERVER_HTTP$REQUEST_PATH" "$RATE_HTTP1"
    warnings_of "$row"
    stop_peer
  done
}

round_https() {
  local peer version row label
  for peer in "${HTTPS_PEERS[@]}"; do
    start_peer "$peer" "$peer-https-r$ROUND"
    describe_peer "$peer"
    for version in "${HTTPS_VERSIONS[@]}"; do
      label=h2
      [[ $version == 2 ]] || label=http/1.1
      name_row "$peer" "$label"
      row=$ROW
      check_http "$row" "$SERVER_TLS$REQUEST_PATH" "$BACKEND_COUNT" -k "$([[ $version == 2 ]] && echo --http2 || echo --http1.1)"
      [[ -n ${TLS_SEEN[$peer]:-} ]] || TLS_SEEN[$peer]=$(tls_summary "$SERVER_TLS$REQUEST_PATH")
      measure_pair https "$row" "oha-$version" "oha-$version" "$SERVER_TLS$REQUEST_PATH" "$RATE_HTTPS"
    done
    warnings_of "$peer https"
    stop_peer
  done
}

round_h3() {
  local peer client row tool
  for peer in "${H3_PEERS[@]}"; do
    start_peer "$peer" "$peer-h3-r$ROUND"
    describe_peer "$peer"
    if ! check_h3 "$SERVER_TLS$REQUEST_PATH"; then
      for client in "${H3_CLIENTS[@]}"; do
        name_row "$peer" "($client)"
        row=$ROW
        add_row h3 "$row"
        R_FAIL[$ROUND|h3|$row|full|$CONNECTIONS]=$H3_ERROR
      done
      stop_peer
      continue
    fi
    for client in "${H3_CLIENTS[@]}"; do
      name_row "$peer" "($client)"
      row=$ROW
      tool=h3load
      [[ $client == h3load ]] || tool=oha-3
      measure_pair h3 "$row" "$tool" "$tool" "$SERVER_TLS$REQUEST_PATH" "$RATE_H3"
    done
    warnings_of "$peer h3"
    stop_peer
  done
}

# Compression: the demo backend's /text/N (JSON lines, as compressible as a typical API answer) through each
# peer with compression on, asked for with each coding the peer has and with none (identity), over plain
# HTTP/1.1 with oha. The difference to the identity row is what compressing costs (bench/README.md).
declare -A ENCODED_BYTES=()
round_compress() {
  local peer coding row url
  for peer in "${COMPRESS_PEERS[@]}"; do
    start_peer "$peer" "$peer-compress-r$ROUND"
    describe_peer "$peer"
    url="$SERVER_HTTP/text/$COMPRESS_BYTES"
    for coding in identity gzip br zstd; do
      # nginx (without extra modules) and HAProxy compress with gzip only.
      [[ $peer == quic-proxy* || $coding == identity || $coding == gzip ]] || continue
      name_row "$peer" "$coding"
      row=$ROW
      check_encoding "$row" "$url" "$coding"
      LOAD_HEADERS=(-H "accept-encoding: $coding")
      measure_pair compress "$row" oha-1.1 oha-1.1 "$url" "$RATE_COMPRESS"
      LOAD_HEADERS=()
    done
    warnings_of "$peer compress"
    stop_peer
  done
}

# Checks that row $1's server answers $2 with Content-Encoding $3 (none for identity), and keeps the size.
check_encoding() {
  local row=$1 url=$2 coding=$3 headers got size
  headers=$(curl -fsS --max-time 5 -H "accept-encoding: $coding" -D - -o "$TMP_DIR/encoded" "$url") ||
    die "$row: GET $url failed"
  got=$(awk -F': *' 'tolower($1) == "content-encoding" { gsub(/\r/, "", $2); print $2 }' <<<"$headers")
  [[ $got == "$([[ $coding == identity ]] || echo "$coding")" ]] ||
    die "$row: asked for $coding, got Content-Encoding '${got:-none}'"
  size=$(stat -c %s "$TMP_DIR/encoded")
  ENCODED_BYTES[$row]=$size
}

# Records what each peer runs as (processes, threads), once.
declare -A PEER_SHAPE=() TLS_SEEN=()
describe_peer() {
  [[ -n ${PEER_SHAPE[$1]:-} ]] || PEER_SHAPE[$1]=$(group_shape "$SERVER_GROUP")
}

# --- scale -------------------------------------------------------------------------------------------------

# Full load at each connection count, one pass, with one client per protocol: wrk for HTTP/1.1 (TCP set-up
# is cheap, so it has all its connections within a moment), h3load for h2 and HTTP/3, which sets up its
# connections first and starts its clock (and the server's CPU count) once all are up, so that thousands of
# TLS and QUIC handshakes do not pass for per-request cost.
scale_group() {
  local group=$1 peers client url_kind row peer connections seconds
  seconds=$(to_seconds "$SCALE_DURATION")
  case $group in
    http1) peers=(quic-proxy nginx haproxy) client=wrk url_kind=http ;;
    https) peers=(quic-proxy nginx haproxy) client=h3load-2 url_kind=tls ;;
    h3) peers=(quic-proxy h3bare caddy) client=h3load url_kind=tls ;;
  esac
  SCALE_CLIENT[$group]=$client
  for peer in "${peers[@]}"; do
    name_row "$peer" ""
    row=$ROW
    start_peer "$peer" "$peer-scale-$group"
    local url="$SERVER_HTTP$REQUEST_PATH"
    [[ $url_kind == http ]] || url="$SERVER_TLS$REQUEST_PATH"
    LOAD_WARMUP=1
    load "$client" "$CONNECTIONS" "$(to_seconds "$WARMUP")" "$url"
    LOAD_WARMUP=0
    LG_RAW=
    for connections in "${SCALE[@]}"; do
      measure "scale-$group" "$row" full "$connections" "$client" "$url" "$seconds"
    done
    warnings_of "$row scale $group"
    stop_peer
  done
}

# --- memory ------------------------------------------------------------------------------------------------

IDLE_CONNS=target/release/examples/idle_conns
POLICY_MEMORY_BIN=target/release/examples/policy_memory
POLICY_MEMORY=

# Resident memory of the current server once it stops changing: read every half second until two readings
# in a row differ by less than 0.5% (or 64 KiB), for at most 10 s.
settled_rss() {
  local previous=-1 current steady=0 i
  for ((i = 0; i < 20; i++)); do
    current=$(group_rss_kib "$SERVER_GROUP")
    if ((previous >= 0)) && awk -v a="$current" -v b="$previous" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 64 || d <= b * 0.005) }'; then
      steady=$((steady + 1))
      ((steady < 2)) || break
    else
      steady=0
    fi
    previous=$current
    sleep 0.5
  done
  printf '%d' "$current"
}

# One memory figure: a fresh server, a warm-up of a few connections, its settled RSS, then N connections
# (or N connections x S stalled streams) held open by examples/idle_conns, the settled RSS again, and the
# client's own count of what is still open. Usage: memory_step PEER MODE CONNECTIONS [STREAMS]
memory_step() {
  local peer=$1 mode=$2 connections=$3 streams=${4:-1} key="$1|$2" out="$TMP_DIR/idle.out"
  local fifo="$TMP_DIR/idle.ctl" before after pid status_line ready_line ctl units url
  start_peer "$peer" "$peer-memory-$mode"
  url="$SERVER_TLS$REQUEST_PATH"
  [[ $mode != http1 ]] || url="$SERVER_HTTP$REQUEST_PATH"
  log "memory, $peer, $mode: $connections connections$([[ $mode != h3-stalled ]] || echo " x $streams streams")"
  timeout 60 "$IDLE_CONNS" "$mode" "$url" 8 --hold 0 >"$out.warm-up" 2>&1 || true
  if ! grep -q '"connections":8' "$out.warm-up"; then
    M_FAIL[$key]="warm-up failed: $(head -c 300 "$out.warm-up")"
    stop_peer
    return 0
  fi
  before=$(settled_rss)
  rm -f "$fifo" "$out"
  mkfifo "$fifo"
  "$IDLE_CONNS" "$mode" "$url" "$connections" --streams "$streams" --hold 600 <"$fifo" >"$out" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  exec {ctl}>"$fifo"
  if ! wait_until 1800 "$pid" grep -qs '"ready"' "$out"; then
    M_FAIL[$key]="idle_conns did not report ready: $(head -c 300 "$out")"
  else
    ready_line=$(grep '"ready"' "$out" | head -n 1)
    after=$(settled_rss)
    printf 'status\n' >&"$ctl"
    wait_until 100 "$pid" grep -qs '"status"' "$out" || true
    status_line=$(grep '"status"' "$out" | head -n 1)
    units=$(jq -r '.connections' <<<"$ready_line")
    [[ $mode != h3-stalled ]] || units=$((units * streams))
    M_BEFORE[$key]=$before
    M_AFTER[$key]=$after
    M_UNITS[$key]=$units
    M_READY[$key]=$ready_line
    M_STATUS[$key]=$status_line
    RAW_OUTPUTS+=$'\n'"== memory $key: RSS $before KiB -> $after KiB; $ready_line; ${status_line:-no status line}"$'\n'
    if ((units == 0)); then
      M_FAIL[$key]="no connection was set up: $ready_line"
    fi
  fi
  exec {ctl}>&-
  wait_until 100 "$pid" false || true
  stop_processes "$pid"
  forget_process "$pid"
  stop_peer
}

MEMORY_MODES=(http1 https1 h2 h3 h3-stalled)

memory_figures() {
  local peer mode modes
  for peer in "${MEMORY_PEERS[@]}"; do
    case $peer in
      quic-proxy) modes=("${MEMORY_MODES[@]}") ;;
      nginx | haproxy) modes=(http1 https1 h2) ;;
      caddy | h3bare) modes=(h3 h3-stalled) ;;
    esac
    for mode in "${modes[@]}"; do
      if [[ $mode == h3-stalled ]]; then
        memory_step "$peer" "$mode" "$STALLED_CONNECTIONS" "$STALLED_STREAMS"
      else
        memory_step "$peer" "$mode" "$IDLE_CONNECTIONS"
      fi
    done
  done
  # What route actions hold: a rate limit's key table at its bound and under rotating keys, and a
  # compressing response per coding (examples/policy_memory.rs, with the proxy's allocator).
  POLICY_MEMORY=$("$POLICY_MEMORY_BIN" 2>&1) || POLICY_MEMORY="examples/policy_memory failed: $POLICY_MEMORY"
}

# --- main --------------------------------------------------------------------------------------------------

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  remove_own_policy
  cleanup_processes
  if [[ -n $TMP_DIR && -d $TMP_DIR ]]; then
    if [[ ${BENCH_KEEP_TMP:-0} == 1 ]]; then
      log "configs and logs kept in $TMP_DIR"
    else
      rm -rf "$TMP_DIR"
    fi
  fi
  exit "$status"
}

main() {
  validate_settings
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  STARTED_AT=$(date +%s)
  MAX_CONNECTIONS=$(max_connections)
  raise_file_limit

  local needed=(curl:curl jq:jq ss:iproute2 pgrep:procps)
  runs_group http1 || scales_group http1 && needed+=(wrk:wrk)
  uses_peer nginx && needed+=(nginx:nginx)
  uses_peer haproxy && needed+=(haproxy:haproxy)
  uses_peer caddy && needed+=(caddy:caddy)
  install_packages "${needed[@]}"
  ! uses_peer nginx || check_nginx_modules
  # oha takes minutes to build: it builds while the examples do. Nothing is measured before it is done,
  # since a build on the same cores would distort every figure.
  ! uses_oha || start_oha_build
  if [[ ${BENCH_BUILD:-1} == 1 ]]; then
    log "building quic-proxy and examples/h3load, h3bare, idle_conns and policy_memory (release)"
    if [[ -z ${QUIC_PROXY_BIN:-} ]]; then
      cargo build --release --quiet --bin quic-proxy || die "cannot build quic-proxy"
    fi
    cargo build --release --quiet --example h3load --example h3bare --example idle_conns --example policy_memory ||
      die "cannot build the benchmark's examples"
  fi
  local program
  for program in "$BIN" "$H3LOAD" "$H3BARE" "$IDLE_CONNS" "$POLICY_MEMORY_BIN"; do
    [[ -x $program ]] || die "$program not found; build it (cargo build --release --examples) or leave BENCH_BUILD unset"
  done
  ! uses_oha || wait_for_oha

  TMP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/quic-proxy-bench.XXXXXX")
  LOAD_BEFORE=$(cut -d ' ' -f 1-3 /proc/loadavg)
  start_backends
  log "backends on 127.0.0.1:${BACKEND_PORTS[*]}"
  response_bytes

  local group
  for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    for group in "${GROUPS_RUN[@]}"; do
      "round_$group"
    done
  done
  if ((${#SCALE[@]} > 0)); then
    ROUND=s
    for group in "${SCALE_GROUPS[@]}"; do
      scale_group "$group"
    done
  fi
  if ((MEMORY)); then
    ROUND=m
    memory_figures
  fi
  # The backends would otherwise stay up (and idle) during the health-check test.
  stop_processes "${PIDS[@]}"
  PIDS=()

  local table results health=""
  if ((HEALTH_SCALE)); then
    log "health-check scale test (bench/health_scale.sh)"
    health=$(QUIC_PROXY_BIN="$BIN" ./bench/health_scale.sh) || die "bench/health_scale.sh failed"
  fi
  results="bench/results/$(date '+%Y%m%d-%H%M%S').txt"
  table=$(report)
  [[ -z $health ]] || table+=$'\n\n'"=== Health checks: 1,000 backends probed every second"$'\n'"$health"
  printf '\n%s\n' "$table"
  mkdir -p bench/results
  printf '%s\n\n--- raw load generator output ---%s\n--- quic-proxy warnings ---\n%s' "$table" "$RAW_OUTPUTS" "${PROXY_WARNINGS:-none}"$'\n' >"$results"
  log "written to $results ($((($(date +%s) - STARTED_AT) / 60)) min)"
}

# The size of the demo backend's answer through quic-proxy over HTTPS: the bare responder answers with as
# many bytes, so both put the same on the wire.
response_bytes() {
  RESPONSE_BYTES=512
  runs_group h3 || scales_group h3 || ((MEMORY)) || return 0
  start_peer quic-proxy quic-proxy-size
  RESPONSE_BYTES=$(curl -fsSk --max-time 5 -o /dev/null -w '%{size_download}' "$SERVER_TLS$REQUEST_PATH") ||
    die "quic-proxy: GET $SERVER_TLS$REQUEST_PATH failed"
  stop_peer
}

# On one line: bash reads a script as it runs, so nothing after this may be read once main returns (an
# edit to this file during a run would otherwise be executed from the middle).
main "$@"; exit
