#!/usr/bin/env bash
# Load test, in two groups with the same concurrency and duration inside each group:
#  - HTTP/1.1 (wrk): the demo backend on its own, then quic-proxy (metrics on and off), nginx and HAProxy in
#    front of three demo backends.
#  - TLS (oha): quic-proxy and Caddy in front of the same backends over HTTP/3 (QUIC), then over HTTPS on TCP.
# The whole row set runs BENCH_ROUNDS times (the machine is usually shared, so one pass can mislead); each
# round gets its own tables. Then bench/health_scale.sh measures the cost of probing 1,000 backends.
# Prints everything and writes it (with the raw wrk/oha output) to bench/results/<timestamp>.txt.
#
#   BENCH_DURATION=10s BENCH_CONNECTIONS=64 BENCH_THREADS=2 BENCH_WARMUP=2s ./bench/run.sh
#   BENCH_TARGETS="direct quic_proxy" ./bench/run.sh     # a subset, in this order
#   BENCH_ROUNDS=1 BENCH_HEALTH_SCALE=0 ./bench/run.sh    # one pass, no health-check scale test
#   BENCH_TLS_HTTP_VERSION=1.1 ./bench/run.sh             # HTTPS-over-TCP rows with HTTP/1.1 instead of h2
#   BENCH_KEEP_TMP=1 ./bench/run.sh                       # keep configs and server logs for a look afterwards
#
# Everything listens on 127.0.0.1 on free high ports and runs as the current user; the distro nginx/haproxy/
# caddy services are never used, and everything started here is stopped on exit. oha (with HTTP/3) is built
# once with cargo into ~/.cargo/bin when missing, which takes several minutes.
set -euo pipefail
shopt -u patsub_replacement 2>/dev/null || true

cd "$(dirname "$0")/.."
# nginx and haproxy live in /usr/sbin, which a non-root PATH may lack.
PATH="$PATH:/usr/sbin:/sbin"

BIN=${QUIC_PROXY_BIN:-target/release/quic-proxy}
DURATION=${BENCH_DURATION:-10s}
WARMUP=${BENCH_WARMUP:-2s}
CONNECTIONS=${BENCH_CONNECTIONS:-64}
THREADS=${BENCH_THREADS:-2}
REQUEST_PATH=${BENCH_PATH:-/}
read -r -a TARGETS <<<"${BENCH_TARGETS:-direct quic_proxy quic_proxy_no_metrics nginx haproxy h3_quic_proxy h3_caddy https_quic_proxy https_caddy}"
ROUNDS=${BENCH_ROUNDS:-2}
TLS_HTTP_VERSION=${BENCH_TLS_HTTP_VERSION:-2}
HEALTH_SCALE=${BENCH_HEALTH_SCALE:-1}
OHA=${OHA:-}
# quic-proxy runs tokio's default multi-thread runtime, one worker per core; the other peers get as many.
WORKERS=$(nproc)
BACKEND_COUNT=3
START_TIMEOUT_TENTHS=100

log() { printf 'bench: %s\n' "$*" >&2; }
die() {
  printf 'bench: error: %s\n' "$*" >&2
  exit 1
}

# wrk takes 10s / 1m / 500ms; `timeout` and our arithmetic need whole seconds.
to_seconds() {
  local value=$1
  case $value in
    *ms) echo 1 ;;
    *s) echo "${value%s}" ;;
    *m) echo $((${value%m} * 60)) ;;
    *h) echo $((${value%h} * 3600)) ;;
    *) echo "$value" ;;
  esac
}

validate_settings() {
  [[ $DURATION =~ ^[0-9]+(ms|s|m|h)?$ ]] || die "BENCH_DURATION=$DURATION: expected e.g. 10s or 1m"
  [[ $WARMUP =~ ^[0-9]+(ms|s|m|h)?$ ]] || die "BENCH_WARMUP=$WARMUP: expected e.g. 2s"
  [[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] || die "BENCH_CONNECTIONS=$CONNECTIONS: expected a positive number"
  [[ $THREADS =~ ^[1-9][0-9]*$ ]] || die "BENCH_THREADS=$THREADS: expected a positive number"
  ((THREADS <= CONNECTIONS)) || die "BENCH_THREADS ($THREADS) must not exceed BENCH_CONNECTIONS ($CONNECTIONS)"
  (($(to_seconds "$DURATION") <= 600)) || die "BENCH_DURATION=$DURATION: at most 10 minutes per target"
  [[ $REQUEST_PATH == /* ]] || die "BENCH_PATH=$REQUEST_PATH: must start with /"
  [[ $ROUNDS =~ ^[1-9]$ ]] || die "BENCH_ROUNDS=$ROUNDS: expected 1 to 9"
  [[ $TLS_HTTP_VERSION == 2 || $TLS_HTTP_VERSION == 1.1 ]] ||
    die "BENCH_TLS_HTTP_VERSION=$TLS_HTTP_VERSION: expected 2 or 1.1"
  [[ $HEALTH_SCALE == 0 || $HEALTH_SCALE == 1 ]] || die "BENCH_HEALTH_SCALE=$HEALTH_SCALE: expected 0 or 1"
  local target
  for target in "${TARGETS[@]}"; do
    declare -F "target_$target" >/dev/null || die "BENCH_TARGETS: unknown target '$target'"
  done
}

OWN_POLICY=
TMP_DIR=
PIDS=()
WRK_PID=
USED_PORTS=()

# --- packages ----------------------------------------------------------------------------------------------

as_root() {
  if ((EUID == 0)); then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

# The distro packages start nginx on :80 (and haproxy) as soon as they are installed; we run our own
# instances, so stop the services again and keep them from coming back on boot.
stop_distro_services() {
  local service pid_file pid
  for service in "$@"; do
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
      as_root systemctl disable --now "$service" >/dev/null 2>&1 || true
    else
      as_root service "$service" stop >/dev/null 2>&1 || true
      if command -v update-rc.d >/dev/null; then
        as_root update-rc.d "$service" disable >/dev/null 2>&1 || true
      fi
    fi
    # Without an init system the stop above can miss a daemon; its pid file still names it.
    for pid_file in "/run/$service.pid" "/var/run/$service.pid"; do
      [[ -r $pid_file ]] || continue
      pid=$(<"$pid_file")
      if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
        log "stopping the distro $service daemon (pid $pid)"
        as_root kill "$pid" 2>/dev/null || true
      fi
    done
  done
}

remove_own_policy() {
  [[ -z $OWN_POLICY ]] || as_root rm -f "$OWN_POLICY"
  OWN_POLICY=
}

# True when a selected target's name matches the pattern, e.g. `wants '*caddy*'`.
wants() {
  local target
  for target in "${TARGETS[@]}"; do
    # shellcheck disable=SC2053
    [[ $target == $1 ]] && return 0
  done
  return 1
}

install_packages() {
  local missing=() packages=()
  command -v wrk >/dev/null || missing+=(wrk)
  command -v nginx >/dev/null || missing+=(nginx)
  command -v haproxy >/dev/null || missing+=(haproxy)
  command -v curl >/dev/null || missing+=(curl)
  # jq reads oha's JSON summary and the admin API's backend list.
  command -v jq >/dev/null || missing+=(jq)
  if wants '*caddy*'; then command -v caddy >/dev/null || missing+=(caddy); fi
  ((${#missing[@]} > 0)) || return 0
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
  log "installing ${missing[*]} (apt-get)"
  local policy=/usr/sbin/policy-rc.d
  # policy-rc.d exiting 101 tells invoke-rc.d not to start services while packages are configured.
  if [[ ! -e $policy ]]; then
    OWN_POLICY=$policy
    as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
  fi
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout=120)
  local status=0
  as_root "${apt[@]}" update >/dev/null || status=$?
  if ((status == 0)); then
    as_root "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null || status=$?
  fi
  remove_own_policy
  ((status == 0)) || die "apt-get failed to install ${missing[*]} (exit $status)"
  local package
  for package in "${missing[@]}"; do
    if [[ $package == nginx || $package == haproxy || $package == caddy ]]; then packages+=("$package"); fi
  done
  ((${#packages[@]} == 0)) || stop_distro_services "${packages[@]}"
}

# A usable oha: built with HTTP/3. Without the cargo feature, `--http-version 3` fails at argument parsing
# with "not been built with HTTP/3 support" before any connection is tried; with it, the request below goes
# to a port nothing listens on and fails fast, which is fine: only the message matters.
oha_has_http3() {
  local output
  output=$(timeout 15 "$1" -n 1 --no-tui --insecure --http-version 3 -t 300ms --connect-timeout 300ms \
    "https://127.0.0.1:9/" 2>&1) || true
  [[ $output != *"HTTP/3 support"* ]] && "$1" --help 2>/dev/null | grep -q -- '--http-version'
}

install_oha() {
  local candidate
  for candidate in "$OHA" "$(command -v oha || true)" "${CARGO_HOME:-$HOME/.cargo}/bin/oha"; do
    if [[ -n $candidate && -x $candidate ]] && oha_has_http3 "$candidate"; then
      OHA=$candidate
      return 0
    fi
  done
  command -v cargo >/dev/null || die "oha with HTTP/3 is missing and there is no cargo to build it"
  log "building oha with HTTP/3 support (cargo install, several minutes, once)"
  # The build directory lives outside the repository so `cargo clean` there does not force a rebuild here.
  local cache="${XDG_CACHE_HOME:-$HOME/.cache}/quic-proxy-bench/oha-target"
  mkdir -p "$cache"
  CARGO_TARGET_DIR=$cache cargo install oha --features http3 --locked --quiet ||
    die "cargo install oha --features http3 failed"
  OHA="${CARGO_HOME:-$HOME/.cargo}/bin/oha"
  oha_has_http3 "$OHA" || die "$OHA was built but does not speak HTTP/3"
}

# --- processes and ports -----------------------------------------------------------------------------------


cleanup() {
  local status=$?
  trap - EXIT INT TERM
  remove_own_policy
  [[ -z $WRK_PID ]] || stop_processes "$WRK_PID"
  # Newest first: a proxy lets go of its backend connections before the backends are asked to drain.
  local reversed=() i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do reversed+=("${PIDS[i]}"); done
  ((${#reversed[@]} == 0)) || stop_processes "${reversed[@]}"
  if [[ -n $TMP_DIR && -d $TMP_DIR ]]; then
    if [[ ${BENCH_KEEP_TMP:-0} == 1 ]]; then
      log "configs and logs kept in $TMP_DIR"
    else
      rm -rf "$TMP_DIR"
    fi
  fi
  exit "$status"
}

# Each server runs in its own process group (setsid), so signalling the group also reaches nginx's workers.
# All get SIGTERM at once and 5 s in total to finish draining; whatever is left then gets SIGKILL.
stop_processes() {
  local pid tenths alive
  for pid in "$@"; do
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for ((tenths = 0; tenths < 50; tenths++)); do
    alive=0
    for pid in "$@"; do
      if kill -0 "$pid" 2>/dev/null; then alive=1; fi
    done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "$@"; do
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}

stop_process() {
  stop_processes "$1"
  forget_process "$1"
}

forget_process() {
  local pid=$1 kept=() p
  for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || kept+=("$p"); done
  PIDS=("${kept[@]}")
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Sets PORT to a free one below the ephemeral range (32768+), so it cannot clash with wrk's or the proxies'
# client sockets. Not called as $(...): it must remember what it handed out.
next_port() {
  local attempt used
  for ((attempt = 0; attempt < 200; attempt++)); do
    PORT=$((20000 + RANDOM % 12000))
    for used in "${USED_PORTS[@]}"; do
      [[ $used == "$PORT" ]] && continue 2
    done
    if ! port_open "$PORT"; then
      USED_PORTS+=("$PORT")
      return 0
    fi
  done
  die "no free loopback port found"
}

# Starts a server in the background with its output in $TMP_DIR/<name>.log; sets STARTED_PID.
start_process() {
  local name=$1
  shift
  setsid "$@" >"$TMP_DIR/$name.log" 2>&1 &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
}

wait_for_port() {
  local name=$1 port=$2 pid=$3 tenths
  for ((tenths = 0; tenths < START_TIMEOUT_TENTHS; tenths++)); do
    port_open "$port" && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$TMP_DIR/$name.log" >&2 || true
      die "$name exited before listening on 127.0.0.1:$port (log above)"
    fi
    sleep 0.1
  done
  tail -n 20 "$TMP_DIR/$name.log" >&2 || true
  die "$name did not listen on 127.0.0.1:$port within $((START_TIMEOUT_TENTHS / 10)) s (log above)"
}

# Substitutes @KEY@ placeholders (values may span lines) and refuses to leave any unfilled.
render() {
  local template=$1 output=$2 text pair key value
  shift 2
  text=$(<"$template")
  for pair in "$@"; do
    key=${pair%%=*}
    value=${pair#*=}
    text=${text//"@$key@"/"$value"}
  done
  if [[ $text =~ @[A-Z_]+@ ]]; then
    die "$template: placeholder ${BASH_REMATCH[0]} left unfilled"
  fi
  printf '%s\n' "$text" >"$output"
}

# --- measuring ---------------------------------------------------------------------------------------------

# Rows in the order first measured; values are keyed "<round>/<row>". GROUP says which table a row goes in.
ROW_NAMES=()
declare -A ROW_GROUP ROW_RPS ROW_P50 ROW_P99 ROW_ERRORS ROW_DETAIL ROW_WARNINGS
ROUND=1
RAW_OUTPUTS=
TLS_LABEL=h2
[[ $TLS_HTTP_VERSION == 2 ]] || TLS_LABEL=http/1.1

add_row() {
  local name=$1 group=$2
  [[ -n ${ROW_GROUP[$name]:-} ]] || ROW_NAMES+=("$name")
  ROW_GROUP[$name]=$group
}

# Converts wrk's latency (e.g. 812.00us, 1.25ms, 2.01s) to milliseconds.
latency_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.3f", n
  }'
}

# One request per backend first: proves the target answers 200 and, through a proxy, reaches every backend.
# Extra arguments go to curl (TLS options).
check_target() {
  local name=$1 url=$2 expect_backends=$3 seen=() backend i
  shift 3
  for ((i = 0; i < BACKEND_COUNT * 2; i++)); do
    backend=$(curl -fsS --max-time 5 "$@" -o /dev/null -D - "$url" | tr -d '\r' |
      awk -F': ' 'tolower($1) == "x-backend" { print $2 }') ||
      die "$name: GET $url failed"
    [[ -n $backend ]] || die "$name: GET $url answered without an x-backend header"
    [[ " ${seen[*]} " == *" $backend "* ]] || seen+=("$backend")
  done
  ((${#seen[@]} == expect_backends)) ||
    die "$name: expected requests spread over $expect_backends backend(s), saw: ${seen[*]}"
}

# Runs a load generator in the background with its output in a file. `timeout` bounds it even if a server
# stops answering; running it in the background lets a signal interrupt `wait` (and so reach cleanup) at once.
run_bounded() {
  local duration=$1 output=$2 status=0
  shift 2
  timeout --kill-after=5 $(($(to_seconds "$duration") + 20)) "$@" >"$output" 2>&1 &
  WRK_PID=$!
  wait "$WRK_PID" || status=$?
  WRK_PID=
  return "$status"
}

run_wrk() {
  local duration=$1 output=$2
  shift 2
  run_bounded "$duration" "$output" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$duration" "$@"
}

measure() {
  local name=$1 url=$2 file="$TMP_DIR/wrk.out" output rps p50 p99 non2xx socket_errors requests key="$ROUND/$1"
  log "round $ROUND, $name: warm-up $WARMUP, then $DURATION against $url"
  run_wrk "$WARMUP" "$file" "$url" || die "$name: wrk warm-up failed: $(cat "$file")"
  run_wrk "$DURATION" "$file" --latency "$url" || die "$name: wrk failed: $(cat "$file")"
  output=$(<"$file")
  RAW_OUTPUTS+=$'\n'"== round $ROUND, $name: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency $url"$'\n'"$output"$'\n'

  rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$output")
  p50=$(awk '$1 == "50%" { print $2 }' <<<"$output")
  p99=$(awk '$1 == "99%" { print $2 }' <<<"$output")
  requests=$(awk '/requests in/ { print $1 }' <<<"$output")
  [[ -n $rps && -n $p50 && -n $p99 ]] || die "$name: cannot read wrk's output: $output"
  # wrk prints these two lines only when there is something to count.
  non2xx=$(awk -F': ' '/Non-2xx or 3xx responses/ { print $2 }' <<<"$output")
  socket_errors=$(awk '/Socket errors:/ {
    gsub(/,/, ""); print "connect " $4 ", read " $6 ", write " $8 ", timeout " $10; total = $4 + $6 + $8 + $10
  } END { print total + 0 }' <<<"$output")

  add_row "$name" http1
  ROW_RPS[$key]=$rps
  ROW_P50[$key]=$(latency_ms "$p50")
  ROW_P99[$key]=$(latency_ms "$p99")
  ROW_ERRORS[$key]=$((${non2xx:-0} + $(tail -n 1 <<<"$socket_errors")))
  local detail="$requests requests"
  [[ -z $non2xx ]] || detail+=", non-2xx/3xx $non2xx"
  (($(wc -l <<<"$socket_errors") == 1)) || detail+=", socket errors: $(head -n 1 <<<"$socket_errors")"
  ROW_DETAIL[$key]=$detail
}

# oha with the shared parameters. Its JSON goes to a file of its own (-o) so that nothing it prints on
# stderr can corrupt it.
run_oha() {
  local duration=$1 output=$2 log_file=$3
  shift 3
  run_bounded "$duration" "$log_file" "$OHA" --no-tui -z "$duration" -c "$CONNECTIONS" --insecure \
    --output-format json --stats-success-breakdown -o "$output" "$@"
}

# oha's own requests/s divides by the wall time of the whole run, which can include waiting for the last
# responses and idle connection time; successful responses over the configured duration is the figure
# comparable with wrk's. Requests cut off at the deadline ("aborted due to deadline") are not errors.
measure_oha() {
  local name=$1 url=$2 file="$TMP_DIR/oha.json" log_file="$TMP_DIR/oha.log" key="$ROUND/$1" values
  shift 2
  local args=("$@")
  log "round $ROUND, $name: warm-up $WARMUP, then $DURATION against $url (oha ${args[*]})"
  run_oha "$WARMUP" "$file" "$log_file" "${args[@]}" "$url" || die "$name: oha warm-up failed: $(cat "$log_file")"
  run_oha "$DURATION" "$file" "$log_file" "${args[@]}" "$url" || die "$name: oha failed: $(cat "$log_file")"
  [[ -s $file ]] || die "$name: oha wrote no JSON summary: $(cat "$log_file")"
  RAW_OUTPUTS+=$'\n'"== round $ROUND, $name: oha -z $DURATION -c $CONNECTIONS --insecure ${args[*]} $url"$'\n'"$(jq -c '{summary, latencyPercentilesSuccessful, statusCodeDistribution, errorDistribution}' "$file")"$'\n'
  values=$(jq -r '
    def total(f): [.[]? | f] | add // 0;
    (.latencyPercentilesSuccessful // .latencyPercentiles) as $lat
    | [ (.statusCodeDistribution | to_entries | total(select(.key | test("^2")) | .value)),
        (.statusCodeDistribution | to_entries | total(select(.key | test("^2") | not) | .value)),
        (.errorDistribution | to_entries | total(select(.key != "aborted due to deadline") | .value)),
        (.errorDistribution | to_entries | total(select(.key == "aborted due to deadline") | .value)),
        (($lat.p50 // 0) * 1000), (($lat.p99 // 0) * 1000), .summary.requestsPerSec,
        (.errorDistribution | to_entries | map("\(.key): \(.value)") | join("; ")) ]
    | @tsv' "$file") || die "$name: cannot read oha's JSON: $(head -c 500 "$file")"
  local ok non2xx errors aborted p50 p99 oha_rps error_list
  IFS=$'\t' read -r ok non2xx errors aborted p50 p99 oha_rps error_list <<<"$values"
  ((ok > 0)) || die "$name: no successful responses; oha: $(head -c 500 "$file")"

  add_row "$name" tls
  ROW_RPS[$key]=$(awk -v n="$ok" -v d="$(to_seconds "$DURATION")" 'BEGIN { printf "%.1f", n / d }')
  ROW_P50[$key]=$p50
  ROW_P99[$key]=$p99
  ROW_ERRORS[$key]=$((non2xx + errors))
  local detail="$ok responses 2xx"
  ((non2xx == 0)) || detail+=", non-2xx $non2xx"
  detail+=", $aborted cut off at the deadline"
  ((errors == 0)) || detail+=", errors: $error_list"
  detail+=" (oha's own figure: $(printf '%.0f' "$oha_rps") req/s)"
  ROW_DETAIL[$key]=$detail
}

# HTTP/3 rows use examples/h3load (quinn + h3, built here): oha's HTTP/3 client hangs against Caddy's QUIC
# stack, while h3load works with both peers, so one client measures both. Same shape as oha's TLS rows:
# $CONNECTIONS connections, one request at a time on each, 2xx responses over the configured duration.
H3LOAD=target/release/examples/h3load
measure_h3load() {
  local name=$1 url=$2 key="$ROUND/$1" values log_file="$TMP_DIR/h3load.log"
  local seconds warm
  seconds=$(to_seconds "$DURATION")
  warm=$(to_seconds "$WARMUP")
  log "round $ROUND, $name: warm-up $WARMUP, then $DURATION against $url (h3load, $CONNECTIONS connections)"
  timeout $((warm + 30)) "$H3LOAD" "$url" "$CONNECTIONS" 1 "$warm" >"$log_file" 2>&1 ||
    die "$name: h3load warm-up failed: $(cat "$log_file")"
  timeout $((seconds + 30)) "$H3LOAD" "$url" "$CONNECTIONS" 1 "$seconds" >"$log_file" 2>&1 ||
    die "$name: h3load failed: $(cat "$log_file")"
  RAW_OUTPUTS+=$'\n'"== round $ROUND, $name: h3load $url $CONNECTIONS 1 $seconds"$'\n'"$(cat "$log_file")"$'\n'
  values=$(jq -r '[.ok, .errors, .p50_ms, .p99_ms] | @tsv' "$log_file") ||
    die "$name: cannot read h3load's output: $(head -c 500 "$log_file")"
  local ok errors p50 p99
  IFS=$'\t' read -r ok errors p50 p99 <<<"$values"
  ((ok > 0)) || die "$name: no successful responses: $(cat "$log_file")"
  add_row "$name" tls
  ROW_RPS[$key]=$(awk -v n="$ok" -v d="$seconds" 'BEGIN { printf "%.1f", n / d }')
  ROW_P50[$key]=$p50
  ROW_P99[$key]=$p99
  ROW_ERRORS[$key]=$errors
  ROW_DETAIL[$key]="$ok responses 2xx, $errors errors (h3load)"
}

# curl here has no HTTP/3, so the check goes through h3load: one second of requests that must all succeed.
# Retried once: QUIC may come up after TCP. Returns non-zero with H3_ERROR set, so a peer whose HTTP/3 does
# not work costs a row, not the run.
check_h3() {
  local name=$1 url=$2 file="$TMP_DIR/h3-check.json" attempt status
  H3_ERROR=
  for ((attempt = 0; attempt < 2; attempt++)); do
    status=0
    timeout 15 "$H3LOAD" "$url" 1 1 1 >"$file" 2>&1 || status=$?
    if ((status == 0)) && [[ $(jq '.errors == 0 and .ok > 0' "$file" 2>/dev/null) == true ]]; then
      return 0
    fi
    H3_ERROR="h3load check failed (status $status): $(head -c 300 "$file")"
    sleep 0.5
  done
  log "$name: HTTP/3 check of $url failed: $H3_ERROR"
  return 1
}

# A row that could not be measured; the tables show why instead of numbers.
declare -A ROW_FAILED
fail_row() {
  add_row "$1" "$2"
  ROW_FAILED[$ROUND/$1]=$3
}

# --- targets: one function each, named target_<name>; add rows by adding functions ----------------------

BACKEND_PORTS=()

start_backends() {
  local n
  for ((n = 1; n <= BACKEND_COUNT; n++)); do
    next_port
    start_process "backend$n" env -u RUST_LOG "$BIN" backend --listen "127.0.0.1:$PORT" --name "backend$n"
    wait_for_port "backend$n" "$PORT" "$STARTED_PID"
    BACKEND_PORTS+=("$PORT")
  done
}

# One certificate for every TLS peer, so the handshakes cost the same (same key type and size).
CERT_DIR=
make_cert() {
  [[ -z $CERT_DIR ]] || return 0
  CERT_DIR="$TMP_DIR/certs"
  "$BIN" cert generate --out "$CERT_DIR" --hosts localhost,127.0.0.1 >"$TMP_DIR/cert.log" 2>&1 ||
    die "quic-proxy cert generate failed: $(cat "$TMP_DIR/cert.log")"
  [[ -s $CERT_DIR/server.crt && -s $CERT_DIR/server.key ]] || die "cert generate wrote no server.crt/server.key"
}

target_direct() {
  local url="http://127.0.0.1:${BACKEND_PORTS[0]}$REQUEST_PATH"
  check_target "backend (direct)" "$url" 1
  measure "backend (direct)" "$url"
}

# Starts quic-proxy in front of the backends; sets QP_PID, QP_HTTP_PORT and QP_TLS_PORT (HTTPS on TCP and
# QUIC on UDP share it). $2: metrics on or off; $3: 1 to configure TLS.
start_quic_proxy() {
  local name=$1 metrics=$2 tls=$3 dir="$TMP_DIR/${1// /-}" metrics_port backends="" tls_section="" n
  mkdir -p "$dir"
  next_port && QP_HTTP_PORT=$PORT
  next_port && QP_TLS_PORT=$PORT
  next_port && metrics_port=$PORT
  for ((n = 1; n <= BACKEND_COUNT; n++)); do
    backends+="  - name: \"backend$n\""$'\n'"    url: \"http://127.0.0.1:${BACKEND_PORTS[n - 1]}\""$'\n'
  done
  if ((tls)); then
    make_cert
    tls_section="  tls:"$'\n'"    cert_file: \"$CERT_DIR/server.crt\""$'\n'"    key_file: \"$CERT_DIR/server.key\""
  fi
  render bench/proxy.yaml.tmpl "$dir/proxy.yaml" \
    "HTTP_PORT=$QP_HTTP_PORT" "TLS_PORT=$QP_TLS_PORT" "TLS=$tls_section" "METRICS_ENABLED=$metrics" \
    "METRICS_PORT=$metrics_port" "BACKENDS=${backends%$'\n'}"
  "$BIN" check --config "$dir/proxy.yaml" >"$dir/check.log" 2>&1 ||
    die "quic-proxy rejected its config: $(cat "$dir/check.log")"
  # RUST_LOG would override the config's log level and could turn access logging back on.
  start_process "$name" env -u RUST_LOG "$BIN" --config "$dir/proxy.yaml"
  QP_PID=$STARTED_PID
  wait_for_port "$name" "$QP_HTTP_PORT" "$QP_PID"
  ((tls == 0)) || wait_for_port "$name" "$QP_TLS_PORT" "$QP_PID"
}

stop_quic_proxy() {
  local name=$1
  kill -0 "$QP_PID" 2>/dev/null || die "$name exited during the run; see its log"
  stop_process "$QP_PID"
  # At level warn anything it logged is worth a look (upstream errors, accept failures).
  ROW_WARNINGS[$ROUND/$name]="$(grep -c . "$TMP_DIR/$name.log" || true) $(head -n 1 "$TMP_DIR/$name.log")"
}

target_quic_proxy() {
  local name=quic-proxy
  start_quic_proxy "$name" true 0
  check_target "$name" "http://127.0.0.1:$QP_HTTP_PORT$REQUEST_PATH" "$BACKEND_COUNT"
  measure "$name" "http://127.0.0.1:$QP_HTTP_PORT$REQUEST_PATH"
  stop_quic_proxy "$name"
}

# Without a recorder the metric macros on the request path do nothing; the difference to quic-proxy above
# is what recording costs.
target_quic_proxy_no_metrics() {
  local name="quic-proxy nometrics"
  start_quic_proxy "$name" false 0
  check_target "$name" "http://127.0.0.1:$QP_HTTP_PORT$REQUEST_PATH" "$BACKEND_COUNT"
  measure "$name" "http://127.0.0.1:$QP_HTTP_PORT$REQUEST_PATH"
  stop_quic_proxy "$name"
}

target_nginx() {
  local name=nginx dir="$TMP_DIR/nginx" port servers="" user_directive="" port_b
  mkdir -p "$dir"
  next_port && port=$PORT
  for port_b in "${BACKEND_PORTS[@]}"; do
    servers+="        server 127.0.0.1:$port_b;"$'\n'
  done
  # A root master would otherwise run its workers as nobody.
  ((EUID != 0)) || user_directive="user $(id -un) $(id -gn);"
  render bench/nginx.conf.tmpl "$dir/nginx.conf" \
    "USER_DIRECTIVE=$user_directive" "WORKERS=$WORKERS" "PID_FILE=$dir/nginx.pid" \
    "ERROR_LOG=$dir/error.log" "KEEPALIVE=$CONNECTIONS" "WORKER_CONNECTIONS=$((CONNECTIONS * 2 + 256))" "HTTP_PORT=$port" "UPSTREAM_SERVERS=${servers%$'\n'}"
  # -e keeps nginx away from /var/log/nginx before it has read the config (needs nginx >= 1.19.5).
  nginx -t -q -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/check.log" 2>&1 ||
    die "nginx rejected its config: $(cat "$dir/check.log")"
  start_process "$name" nginx -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf"
  local pid=$STARTED_PID
  wait_for_port "$name" "$port" "$pid"
  check_target "$name" "http://127.0.0.1:$port$REQUEST_PATH" "$BACKEND_COUNT"
  measure "$name" "http://127.0.0.1:$port$REQUEST_PATH"
  stop_process "$pid"
}

target_haproxy() {
  local name=haproxy dir="$TMP_DIR/haproxy" port servers="" n
  mkdir -p "$dir"
  next_port && port=$PORT
  for ((n = 1; n <= BACKEND_COUNT; n++)); do
    servers+="    server backend$n 127.0.0.1:${BACKEND_PORTS[n - 1]}"$'\n'
  done
  render bench/haproxy.cfg.tmpl "$dir/haproxy.cfg" \
    "WORKERS=$WORKERS" "PID_FILE=$dir/haproxy.pid" "MAXCONN=$((CONNECTIONS + 256))" "HTTP_PORT=$port" "SERVERS=${servers%$'\n'}"
  haproxy -c -q -f "$dir/haproxy.cfg" >"$dir/check.log" 2>&1 ||
    die "haproxy rejected its config: $(cat "$dir/check.log")"
  # -db: stay in the foreground, so the pid we hold is HAProxy's own.
  start_process "$name" haproxy -db -f "$dir/haproxy.cfg"
  local pid=$STARTED_PID
  wait_for_port "$name" "$port" "$pid"
  check_target "$name" "http://127.0.0.1:$port$REQUEST_PATH" "$BACKEND_COUNT"
  measure "$name" "http://127.0.0.1:$port$REQUEST_PATH"
  stop_process "$pid"
}

# Caddy with the same certificate, HTTP/3 on its HTTPS port; sets CADDY_PID and CADDY_PORT.
start_caddy() {
  local name=$1 dir="$TMP_DIR/${1// /-}" http_port upstreams="" port_b
  mkdir -p "$dir/home"
  make_cert
  next_port && CADDY_PORT=$PORT
  next_port && http_port=$PORT
  for port_b in "${BACKEND_PORTS[@]}"; do upstreams+=" 127.0.0.1:$port_b"; done
  render bench/Caddyfile.tmpl "$dir/Caddyfile" \
    "HTTPS_PORT=$CADDY_PORT" "HTTP_PORT=$http_port" "STORAGE_DIR=$dir/data" \
    "CERT_FILE=$CERT_DIR/server.crt" "KEY_FILE=$CERT_DIR/server.key" "UPSTREAMS=${upstreams# }"
  # Caddy keeps state (certificates, autosaved config) under $HOME/XDG dirs; keep it in the scratch dir.
  local env=(env HOME="$dir/home" XDG_DATA_HOME="$dir/home" XDG_CONFIG_HOME="$dir/home" GOMAXPROCS="$WORKERS")
  "${env[@]}" caddy validate --adapter caddyfile --config "$dir/Caddyfile" >"$dir/check.log" 2>&1 ||
    die "caddy rejected its config: $(tail -n 5 "$dir/check.log")"
  start_process "$name" "${env[@]}" caddy run --adapter caddyfile --config "$dir/Caddyfile"
  CADDY_PID=$STARTED_PID
  wait_for_port "$name" "$CADDY_PORT" "$CADDY_PID"
}

stop_caddy() {
  kill -0 "$CADDY_PID" 2>/dev/null || die "$1 exited during the run; see its log"
  stop_process "$CADDY_PID"
}

target_h3_quic_proxy() {
  local name="quic-proxy h3" url
  start_quic_proxy "$name" true 1
  url="https://127.0.0.1:$QP_TLS_PORT$REQUEST_PATH"
  if check_h3 "$name" "$url"; then
    measure_h3load "$name" "$url"
  else
    fail_row "$name" tls "$H3_ERROR"
  fi
  stop_quic_proxy "$name"
}

target_h3_caddy() {
  local name="caddy h3" url
  start_caddy "$name"
  url="https://127.0.0.1:$CADDY_PORT$REQUEST_PATH"
  if check_h3 "$name" "$url"; then
    measure_h3load "$name" "$url"
  else
    fail_row "$name" tls "$H3_ERROR"
  fi
  stop_caddy "$name"
}

curl_tls_options() {
  if [[ $TLS_HTTP_VERSION == 2 ]]; then echo --http2; else echo --http1.1; fi
}

target_https_quic_proxy() {
  local name="quic-proxy $TLS_LABEL" url
  start_quic_proxy "$name" true 1
  url="https://127.0.0.1:$QP_TLS_PORT$REQUEST_PATH"
  check_target "$name" "$url" "$BACKEND_COUNT" -k "$(curl_tls_options)"
  measure_oha "$name" "$url" --http-version "$TLS_HTTP_VERSION"
  stop_quic_proxy "$name"
}

target_https_caddy() {
  local name="caddy $TLS_LABEL" url
  start_caddy "$name"
  url="https://127.0.0.1:$CADDY_PORT$REQUEST_PATH"
  check_target "$name" "$url" "$BACKEND_COUNT" -k "$(curl_tls_options)"
  measure_oha "$name" "$url" --http-version "$TLS_HTTP_VERSION"
  stop_caddy "$name"
}

# --- report ------------------------------------------------------------------------------------------------

ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'
}

# A table of one group's rows in one round, with ratios to the reference row.
print_table() {
  local round=$1 group=$2 reference="$1/$3" name key rps_ratio p99_ratio
  printf '%-24s %12s %10s %10s %8s %12s %12s\n' target "requests/s" "p50 ms" "p99 ms" errors "rps/ref" "p99/ref"
  for name in "${ROW_NAMES[@]}"; do
    key="$round/$name"
    [[ ${ROW_GROUP[$name]} == "$group" ]] || continue
    if [[ -n ${ROW_FAILED[$key]:-} ]]; then
      printf '%-24s %s\n' "$name" "not measured: ${ROW_FAILED[$key]}"
      continue
    fi
    [[ -n ${ROW_RPS[$key]:-} ]] || continue
    rps_ratio=-
    p99_ratio=-
    if [[ -n ${ROW_RPS[$reference]:-} ]]; then
      rps_ratio=$(ratio "${ROW_RPS[$key]}" "${ROW_RPS[$reference]}")
      p99_ratio=$(ratio "${ROW_P99[$key]}" "${ROW_P99[$reference]}")
    fi
    printf '%-24s %12.0f %10.2f %10.2f %8d %12s %12s\n' "$name" "${ROW_RPS[$key]}" "${ROW_P50[$key]}" \
      "${ROW_P99[$key]}" "${ROW_ERRORS[$key]}" "$rps_ratio" "$p99_ratio"
  done
}

has_group() {
  local name
  for name in "${ROW_NAMES[@]}"; do [[ ${ROW_GROUP[$name]} == "$1" ]] && return 0; done
  return 1
}

report_round() {
  local round=$1 name key on off h3 tcp
  printf '\n=== round %d of %d\n' "$round" "$ROUNDS"
  if has_group http1; then
    printf '\nHTTP/1.1 (wrk -t%s -c%s -d%s), ratios to quic-proxy:\n' "$THREADS" "$CONNECTIONS" "$DURATION"
    print_table "$round" http1 quic-proxy
  fi
  on=${ROW_RPS[$round/quic-proxy]:-}
  off=${ROW_RPS[$round/quic-proxy nometrics]:-}
  if [[ -n $on && -n $off ]]; then
    printf '\nmetrics cost: quic-proxy HTTP/1.1 %.0f req/s with metrics, %.0f without: %s throughput with metrics on (p99 %.2f vs %.2f ms)\n' \
      "$on" "$off" "$(awk -v a="$on" -v b="$off" 'BEGIN { printf "%+.1f%%", (a - b) / b * 100 }')" \
      "${ROW_P99[$round/quic-proxy]}" "${ROW_P99[$round/quic-proxy nometrics]}"
  fi
  if has_group tls; then
    printf '\nHTTP/3 (h3load) and HTTPS over TCP (oha), %s with %s connections, one request at a time on each, ratios to quic-proxy h3:\n' \
      "$DURATION" "$CONNECTIONS"
    print_table "$round" tls "quic-proxy h3"
  fi
  h3=${ROW_RPS[$round/quic-proxy h3]:-}
  tcp=${ROW_RPS[$round/quic-proxy $TLS_LABEL]:-}
  if [[ -n $h3 && -n $tcp ]]; then
    printf '\nquic-proxy HTTP/3 vs HTTPS over TCP (%s): %.0f vs %.0f req/s = %s\n' "$TLS_LABEL" "$h3" "$tcp" "$(ratio "$h3" "$tcp")"
  fi
  printf '\nerrors = non-2xx/3xx responses + socket errors (wrk), non-2xx responses + transport errors (oha):\n'
  for name in "${ROW_NAMES[@]}"; do
    key="$round/$name"
    [[ -n ${ROW_DETAIL[$key]:-} ]] || continue
    printf '  %-24s %s\n' "$name" "${ROW_DETAIL[$key]}"
  done
  local count first
  for name in "${ROW_NAMES[@]}"; do
    [[ -n ${ROW_WARNINGS[$round/$name]:-} ]] || continue
    read -r count first <<<"${ROW_WARNINGS[$round/$name]}"
    if ((count > 0)); then
      printf '%s\n' "$name logged $count line(s) at warn or above; the first: $first"
    else
      printf '%s\n' "$name logged nothing at warn or above"
    fi
  done
}

report() {
  local round
  printf '%s\n' "quic-proxy benchmark, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src 2>/dev/null || echo ' (src modified)')"
  printf '%s\n' "host: $(nproc) cores, $(uname -sr); load generator, servers and backends all share these cores"
  # Anything else busy on the machine (a build, tests) skews every row; this makes it visible.
  printf '%s\n' "load average before the run: $LOAD_BEFORE (1, 5, 15 min), after: $(cut -d ' ' -f 1-3 /proc/loadavg)"
  printf '%s\n' "NOTE: numbers are noisy when other work shares the machine; compare rounds before trusting a difference."
  printf '%s\n' "load: GET $REQUEST_PATH, $CONNECTIONS connections, $DURATION per row after $WARMUP warm-up; HTTP/1.1 keep-alive via wrk, TLS rows via oha"
  printf '%s\n' "TLS rows: requests/s = 2xx responses / $DURATION (not oha's own figure); p50/p99 over successful requests"
  printf '%s\n' "peers: $BACKEND_COUNT demo backends, round robin; quic-proxy $WORKERS runtime threads, nginx $WORKERS workers, haproxy $WORKERS threads, caddy GOMAXPROCS=$WORKERS"
  printf '%s\n' "access logging is off for all peers (quic-proxy level warn, nginx access_log off, haproxy no log, caddy no log directive)"
  printf '%s\n' "versions: $(peer_versions)"
  for ((round = 1; round <= ROUNDS; round++)); do
    report_round "$round"
  done
  ((ROUNDS > 1)) || return 0
  # Side by side, the rounds show how much of a difference between rows is noise.
  local name key line costs="" h3_ratios=""
  printf '\n=== requests/s by round (a spread between rounds is noise from the shared machine)\n'
  line=$(printf '%-24s' target)
  for ((round = 1; round <= ROUNDS; round++)); do line+=$(printf ' %10s' "round $round"); done
  printf '%s\n' "$line"
  for name in "${ROW_NAMES[@]}"; do
    line=$(printf '%-24s' "$name")
    for ((round = 1; round <= ROUNDS; round++)); do
      key="$round/$name"
      if [[ -n ${ROW_RPS[$key]:-} ]]; then line+=$(printf ' %10.0f' "${ROW_RPS[$key]}"); else line+=$(printf ' %10s' -); fi
    done
    printf '%s\n' "$line"
  done
  for ((round = 1; round <= ROUNDS; round++)); do
    if [[ -n ${ROW_RPS[$round/quic-proxy]:-} && -n ${ROW_RPS[$round/quic-proxy nometrics]:-} ]]; then
      costs+=" $(awk -v a="${ROW_RPS[$round/quic-proxy]}" -v b="${ROW_RPS[$round/quic-proxy nometrics]}" 'BEGIN { printf "%+.1f%%", (a - b) / b * 100 }')"
    fi
    if [[ -n ${ROW_RPS[$round/quic-proxy h3]:-} && -n ${ROW_RPS[$round/quic-proxy $TLS_LABEL]:-} ]]; then
      h3_ratios+=" $(ratio "${ROW_RPS[$round/quic-proxy h3]}" "${ROW_RPS[$round/quic-proxy $TLS_LABEL]}")"
    fi
  done
  [[ -z $costs ]] || printf 'metrics cost by round (throughput with metrics on vs off):%s\n' "$costs"
  [[ -z $h3_ratios ]] || printf 'quic-proxy HTTP/3 / HTTPS over TCP (%s) throughput by round:%s\n' "$TLS_LABEL" "$h3_ratios"
}

peer_versions() {
  local versions=("$("$BIN" --version 2>/dev/null || echo quic-proxy ?)")
  if has_group http1; then
    versions+=("$(nginx -v 2>&1 | sed 's/^nginx version: //')" "$(haproxy -v 2>/dev/null | head -n 1 | awk '{ print "haproxy/" $3 }')" "$(wrk -v 2>&1 | head -n 1 | awk '{ print "wrk " $2 }')")
  fi
  if has_group tls; then
    versions+=("caddy $(caddy version 2>/dev/null | awk '{ print $1 }')" "$("$OHA" --version 2>/dev/null)")
  fi
  local IFS=,
  printf '%s' "${versions[*]}" | sed 's/,/, /g'
}

main() {
  validate_settings
  [[ -x $BIN ]] || die "$BIN not found; run 'cargo build --release' (or 'make bench') first"
  install_packages
  if wants 'h3_*' || wants 'https_*'; then install_oha; fi
  if wants 'h3_*'; then
    cargo build --release --quiet --example h3load || die "cannot build examples/h3load"
  fi
  trap cleanup EXIT
  TMP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/quic-proxy-bench.XXXXXX")
  trap 'exit 130' INT
  trap 'exit 143' TERM

  LOAD_BEFORE=$(cut -d ' ' -f 1-3 /proc/loadavg)
  start_backends
  log "backends on 127.0.0.1:${BACKEND_PORTS[*]}"
  local target
  for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    for target in "${TARGETS[@]}"; do
      "target_$target"
    done
  done
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
  [[ -z $health ]] || table+=$'\n\n'"health checks:"$'\n'"$health"
  printf '\n%s\n' "$table"
  mkdir -p bench/results
  printf '%s\n\n--- raw load generator output ---%s' "$table" "$RAW_OUTPUTS" >"$results"
  log "written to $results"
}

main "$@"
