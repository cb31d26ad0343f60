#!/usr/bin/env bash
# HTTP/1.1 load test: the demo backend on its own, then quic-proxy, nginx and HAProxy in front of three demo
# backends, all hit by wrk with the same parameters, one after the other. Prints a table and writes it (with
# the raw wrk output) to bench/results/<timestamp>.txt.
#
#   BENCH_DURATION=10s BENCH_CONNECTIONS=64 BENCH_THREADS=2 BENCH_WARMUP=2s ./bench/run.sh
#   BENCH_TARGETS="direct quic_proxy" ./bench/run.sh     # a subset, in this order
#   BENCH_KEEP_TMP=1 ./bench/run.sh                       # keep configs and server logs for a look afterwards
#
# Everything listens on 127.0.0.1 on free high ports and runs as the current user; the distro nginx/haproxy
# services are never used, and everything started here is stopped on exit.
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
read -r -a TARGETS <<<"${BENCH_TARGETS:-direct quic_proxy nginx haproxy}"
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

install_packages() {
  local missing=() packages=()
  command -v wrk >/dev/null || missing+=(wrk)
  command -v nginx >/dev/null || missing+=(nginx)
  command -v haproxy >/dev/null || missing+=(haproxy)
  command -v curl >/dev/null || missing+=(curl)
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
    if [[ $package == nginx || $package == haproxy ]]; then packages+=("$package"); fi
  done
  ((${#packages[@]} == 0)) || stop_distro_services "${packages[@]}"
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

ROW_NAMES=()
declare -A ROW_RPS ROW_P50 ROW_P99 ROW_ERRORS ROW_DETAIL
RAW_OUTPUTS=

# Converts wrk's latency (e.g. 812.00us, 1.25ms, 2.01s) to milliseconds.
latency_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.3f", n
  }'
}

# One request per backend first: proves the target answers 200 and, through a proxy, reaches every backend.
check_target() {
  local name=$1 url=$2 expect_backends=$3 seen=() backend i
  for ((i = 0; i < BACKEND_COUNT * 2; i++)); do
    backend=$(curl -fsS --max-time 5 -o /dev/null -D - "$url" | tr -d '\r' |
      awk -F': ' 'tolower($1) == "x-backend" { print $2 }') ||
      die "$name: GET $url failed"
    [[ -n $backend ]] || die "$name: GET $url answered without an x-backend header"
    [[ " ${seen[*]} " == *" $backend "* ]] || seen+=("$backend")
  done
  ((${#seen[@]} == expect_backends)) ||
    die "$name: expected requests spread over $expect_backends backend(s), saw: ${seen[*]}"
}

# wrk with the shared parameters, its output in a file. `timeout` bounds it even if a server stops answering;
# running it in the background lets a signal interrupt `wait` (and so reach cleanup) at once.
run_wrk() {
  local duration=$1 output=$2 status=0
  shift 2
  timeout --kill-after=5 $(($(to_seconds "$duration") + 20)) \
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$duration" "$@" >"$output" 2>&1 &
  WRK_PID=$!
  wait "$WRK_PID" || status=$?
  WRK_PID=
  return "$status"
}

measure() {
  local name=$1 url=$2 file="$TMP_DIR/wrk.out" output rps p50 p99 non2xx socket_errors requests
  log "$name: warm-up $WARMUP, then $DURATION against $url"
  run_wrk "$WARMUP" "$file" "$url" || die "$name: wrk warm-up failed: $(cat "$file")"
  run_wrk "$DURATION" "$file" --latency "$url" || die "$name: wrk failed: $(cat "$file")"
  output=$(<"$file")
  RAW_OUTPUTS+=$'\n'"== $name: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency $url"$'\n'"$output"$'\n'

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

  ROW_NAMES+=("$name")
  ROW_RPS[$name]=$rps
  ROW_P50[$name]=$(latency_ms "$p50")
  ROW_P99[$name]=$(latency_ms "$p99")
  ROW_ERRORS[$name]=$((${non2xx:-0} + $(tail -n 1 <<<"$socket_errors")))
  local detail="$requests requests"
  [[ -z $non2xx ]] || detail+=", non-2xx/3xx $non2xx"
  (($(wc -l <<<"$socket_errors") == 1)) || detail+=", socket errors: $(head -n 1 <<<"$socket_errors")"
  ROW_DETAIL[$name]=$detail
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

target_direct() {
  local url="http://127.0.0.1:${BACKEND_PORTS[0]}$REQUEST_PATH"
  check_target "backend (direct)" "$url" 1
  measure "backend (direct)" "$url"
}

target_quic_proxy() {
  local name=quic-proxy dir="$TMP_DIR/quic-proxy" port tls_port metrics_port backends="" n
  mkdir -p "$dir"
  next_port && port=$PORT
  next_port && tls_port=$PORT
  next_port && metrics_port=$PORT
  for ((n = 1; n <= BACKEND_COUNT; n++)); do
    backends+="  - name: \"backend$n\""$'\n'"    url: \"http://127.0.0.1:${BACKEND_PORTS[n - 1]}\""$'\n'
  done
  render bench/proxy.yaml.tmpl "$dir/proxy.yaml" \
    "HTTP_PORT=$port" "TLS_PORT=$tls_port" "METRICS_PORT=$metrics_port" "BACKENDS=${backends%$'\n'}"
  "$BIN" check --config "$dir/proxy.yaml" >"$dir/check.log" 2>&1 ||
    die "quic-proxy rejected its config: $(cat "$dir/check.log")"
  # RUST_LOG would override the config's log level and could turn access logging back on.
  start_process "$name" env -u RUST_LOG "$BIN" --config "$dir/proxy.yaml"
  local pid=$STARTED_PID
  wait_for_port "$name" "$port" "$pid"
  check_target "$name" "http://127.0.0.1:$port$REQUEST_PATH" "$BACKEND_COUNT"
  measure "$name" "http://127.0.0.1:$port$REQUEST_PATH"
  kill -0 "$pid" 2>/dev/null || die "quic-proxy exited during the run; see its log"
  stop_process "$pid"
  # At level warn anything it logged is worth a look (upstream errors, accept failures).
  PROXY_WARNINGS=$(grep -c . "$TMP_DIR/$name.log" || true)
  PROXY_FIRST_WARNING=$(head -n 1 "$TMP_DIR/$name.log")
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

# --- report ------------------------------------------------------------------------------------------------

ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'
}

report() {
  local reference=quic-proxy name rps_ratio p99_ratio
  printf '%s\n' "quic-proxy benchmark, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src 2>/dev/null || echo ' (src modified)')"
  printf '%s\n' "host: $(nproc) cores, $(uname -sr); wrk, servers and backends all share these cores"
  # Anything else busy on the machine (a build, tests) skews every row; this makes it visible.
  printf '%s\n' "load average before the run: $LOAD_BEFORE (1, 5, 15 min)"
  printf '%s\n' "load: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency GET $REQUEST_PATH (HTTP/1.1 keep-alive), after ${WARMUP} warm-up"
  printf '%s\n' "peers: $BACKEND_COUNT demo backends, round robin; quic-proxy $WORKERS runtime threads, nginx $WORKERS workers, haproxy $WORKERS threads"
  printf '%s\n' "access logging is off for all peers (quic-proxy level warn, nginx access_log off, haproxy no log)"
  printf '%s\n' "versions: $("$BIN" --version 2>/dev/null || echo quic-proxy ?), $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(haproxy -v 2>/dev/null | head -n 1 | awk '{ print "haproxy/" $3 }'), $(wrk -v 2>&1 | head -n 1 | awk '{ print "wrk " $2 }')"
  printf '\n%-18s %12s %10s %10s %8s %14s %12s\n' target "requests/s" "p50 ms" "p99 ms" errors "rps/quic-proxy" "p99/quic-proxy"
  for name in "${ROW_NAMES[@]}"; do
    rps_ratio=-
    p99_ratio=-
    if [[ -n ${ROW_RPS[$reference]:-} ]]; then
      rps_ratio=$(ratio "${ROW_RPS[$name]}" "${ROW_RPS[$reference]}")
      p99_ratio=$(ratio "${ROW_P99[$name]}" "${ROW_P99[$reference]}")
    fi
    printf '%-18s %12.0f %10.2f %10.2f %8d %14s %12s\n' "$name" "${ROW_RPS[$name]}" "${ROW_P50[$name]}" \
      "${ROW_P99[$name]}" "${ROW_ERRORS[$name]}" "$rps_ratio" "$p99_ratio"
  done
  printf '\n%s\n' "errors = non-2xx/3xx responses + socket errors (connect, read, write, timeout) as wrk counts them:"
  for name in "${ROW_NAMES[@]}"; do
    printf '  %-18s %s\n' "$name" "${ROW_DETAIL[$name]}"
  done
  if [[ -n ${PROXY_WARNINGS:-} ]]; then
    if ((PROXY_WARNINGS > 0)); then
      printf '%s\n' "quic-proxy logged $PROXY_WARNINGS line(s) at warn or above; the first: $PROXY_FIRST_WARNING"
    else
      printf '%s\n' "quic-proxy logged nothing at warn or above"
    fi
  fi
}

main() {
  validate_settings
  [[ -x $BIN ]] || die "$BIN not found; run 'cargo build --release' (or 'make bench') first"
  install_packages
  trap cleanup EXIT
  TMP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/quic-proxy-bench.XXXXXX")
  trap 'exit 130' INT
  trap 'exit 143' TERM

  LOAD_BEFORE=$(cut -d ' ' -f 1-3 /proc/loadavg)
  start_backends
  log "backends on 127.0.0.1:${BACKEND_PORTS[*]}"
  local target
  for target in "${TARGETS[@]}"; do
    "target_$target"
  done

  local table results
  results="bench/results/$(date '+%Y%m%d-%H%M%S').txt"
  table=$(report)
  printf '\n%s\n' "$table"
  mkdir -p bench/results
  printf '%s\n\n--- raw wrk output ---%s' "$table" "$RAW_OUTPUTS" >"$results"
  log "written to $results"
}

main "$@"
