# Load generators for bench/run.sh (sourced): wrk, oha and examples/h3load, each run under a time limit and
# read into the same variables:
#   P_REQUESTS  responses of any status      P_OK      2xx responses
#   P_ERRORS    non-2xx + transport errors    P_P50/P_P99  latency of successful requests, ms
#   P_DETAIL    one line for the report       P_FAILURE  why there is no figure (empty when there is one)
#   LG_TICKS    the generator's own CPU time (clock ticks)
#   LG_MID_TICKS, LG_LINGER  see run_loadgen
# shellcheck shell=bash

H3LOAD=target/release/examples/h3load
# How long a generator may outlive its own deadline before it counts as hung: longer than the 30 s idle
# timeout a server may make oha wait for (see run_loadgen), short enough that a hang costs about a minute.
HANG_GRACE=45

# Runs a generator in the background (so a signal reaches cleanup at once), bounded by `timeout`.
# Usage: run_loadgen LIMIT OUTPUT DEADLINE MARKER COMMAND...
# - DEADLINE > 0 (seconds after the start at which the generator's clock runs out, for clients whose clock
#   starts at launch): the server's CPU time is also read 2 s after it, into LG_MID_TICKS. oha, once its time
#   is up, sends GOAWAY on each HTTP/3 connection and waits for the server to close it, so against a server
#   that leaves that to its idle timeout it idles for up to 30 s before exiting; LG_LINGER says how many
#   seconds after the deadline it exited.
# - MARKER (a string the generator prints when its connections are up and its clock starts, or empty): the
#   server's CPU time is read when it appears, into LG_START_TICKS, so that set-up is left out.
run_loadgen() {
  local limit=$1 output=$2 deadline=$3 marker=$4 status=0 before after started now
  shift 4
  LG_MID_TICKS='' LG_START_TICKS='' LG_LINGER=0
  before=$(children_cpu_ticks)
  started=${EPOCHREALTIME/./}
  timeout --kill-after=5 "$limit" "$@" >"$output" 2>&1 &
  LOADGEN_PID=$!
  if [[ -n $marker ]]; then
    while kill -0 "$LOADGEN_PID" 2>/dev/null; do
      if grep -qsF -- "$marker" "$output"; then
        LG_START_TICKS=$(group_cpu_ticks "$SERVER_GROUP")
        break
      fi
      sleep 0.1
    done
  fi
  if ((deadline > 0)); then
    while kill -0 "$LOADGEN_PID" 2>/dev/null; do
      now=${EPOCHREALTIME/./}
      if ((now >= started + (deadline + 2) * 1000000)); then
        LG_MID_TICKS=$(group_cpu_ticks "$SERVER_GROUP")
        break
      fi
      sleep 0.2
    done
  fi
  wait "$LOADGEN_PID" || status=$?
  LOADGEN_PID=
  now=${EPOCHREALTIME/./}
  ((deadline == 0)) || LG_LINGER=$(((now - started) / 1000000 - deadline))
  after=$(children_cpu_ticks)
  LG_TICKS=$((after - before))
  LG_STATUS=$status
  LG_LIMIT=$limit
}

reset_parsed() {
  P_REQUESTS=0 P_OK=0 P_ERRORS=0 P_P50=0 P_P99=0 P_DETAIL='' P_FAILURE=''
}

# Warm-ups (LOAD_WARMUP=1) only need load to have run: they are stopped 8 s after their deadline rather
# than waited for, and that stop is no failure.
LOAD_WARMUP=0
# Extra request fields for oha, e.g. (-H "accept-encoding: gzip"); empty unless a table sets them.
LOAD_HEADERS=()
time_limit() {
  if ((LOAD_WARMUP)); then
    printf '%d' $(($1 + 8 + $2))
  else
    printf '%d' $(($1 + HANG_GRACE + $2))
  fi
}

# After a run: a hang (killed by timeout) or a non-zero exit becomes P_FAILURE; true when the run is usable.
check_exit() {
  local client=$1 seconds=$2 file=$3
  if ((LOAD_WARMUP)) && ((LG_STATUS == 124 || LG_STATUS == 137)); then
    return 1
  fi
  if ((LG_STATUS == 124 || LG_STATUS == 137)); then
    P_FAILURE="$client hung: still running $((LG_LIMIT - seconds)) s after its ${seconds} s run ended, killed"
    return 1
  fi
  if ((LG_STATUS != 0)); then
    P_FAILURE="$client exited with status $LG_STATUS: $(tr '\n' ' ' <"$file" | head -c 300)"
    return 1
  fi
  return 0
}

# Converts wrk's latency (e.g. 812.00us, 1.25ms, 2.01s) to milliseconds.
latency_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.3f", n
  }'
}

# wrk: plain HTTP/1.1 at full load (it has no rate limit). Usage: load_wrk CONNECTIONS SECONDS URL
load_wrk() {
  local connections=$1 seconds=$2 url=$3 file="$TMP_DIR/wrk.out" threads=$WRK_THREADS output
  reset_parsed
  ((threads <= connections)) || threads=$connections
  LG_COMMAND="wrk -t$threads -c$connections -d${seconds}s --timeout 5s --latency $url"
  run_loadgen "$(time_limit "$seconds" $((connections / 500)))" "$file" 0 "" \
    wrk -t"$threads" -c"$connections" -d"${seconds}s" --timeout 5s --latency "$url"
  check_exit wrk "$seconds" "$file" || return 0
  output=$(<"$file")
  LG_RAW=$output
  local p50 p99 non2xx socket_errors
  P_REQUESTS=$(awk '/requests in/ { print $1 }' <<<"$output")
  p50=$(awk '$1 == "50%" { print $2 }' <<<"$output")
  p99=$(awk '$1 == "99%" { print $2 }' <<<"$output")
  if [[ -z $P_REQUESTS || -z $p50 || -z $p99 ]]; then
    P_FAILURE="cannot read wrk's output: $(head -c 300 "$file")"
    return 0
  fi
  P_P50=$(latency_ms "$p50")
  P_P99=$(latency_ms "$p99")
  # wrk prints these lines only when there is something to count.
  non2xx=$(awk -F': ' '/Non-2xx or 3xx responses/ { print $2 }' <<<"$output")
  socket_errors=$(awk '/Socket errors:/ { gsub(/,/, ""); print $4 + $6 + $8 + $10 }' <<<"$output")
  P_ERRORS=$((${non2xx:-0} + ${socket_errors:-0}))
  P_OK=$((P_REQUESTS - ${non2xx:-0}))
  P_DETAIL="$P_REQUESTS responses$([[ -z $non2xx ]] || echo ", non-2xx/3xx $non2xx")$(
    awk '/Socket errors:/ { printf ", socket errors: %s", substr($0, index($0, ":") + 2) }' <<<"$output")"
}

# oha over any protocol. Usage: load_oha CONNECTIONS SECONDS URL HTTP_VERSION [RATE]
# Its JSON goes to a file of its own (-o) so that nothing it prints on stderr can corrupt it.
load_oha() {
  local connections=$1 seconds=$2 url=$3 version=$4 rate=${5:-} json="$TMP_DIR/oha.json" file="$TMP_DIR/oha.log"
  local args=(--no-tui -z "${seconds}s" -c "$connections" -t 5s --insecure --http-version "$version"
    --output-format json --stats-success-breakdown -o "$json")
  [[ -z $rate ]] || args+=(-q "$rate")
  args+=("${LOAD_HEADERS[@]}")
  reset_parsed
  rm -f "$json"
  LG_COMMAND="oha ${args[*]} $url"
  run_loadgen "$(time_limit "$seconds" $((connections / 500)))" "$file" "$seconds" "" "$OHA" "${args[@]}" "$url"
  check_exit oha "$seconds" "$file" || return 0
  if [[ ! -s $json ]]; then
    P_FAILURE="oha wrote no JSON summary: $(head -c 300 "$file")"
    return 0
  fi
  LG_RAW=$(jq -c '{summary, latencyPercentilesSuccessful, statusCodeDistribution, errorDistribution}' "$json")
  # Requests cut off at the deadline ("aborted due to deadline") are not errors.
  local values
  values=$(jq -r '
    def total(f): [.[]? | f] | add // 0;
    (.latencyPercentilesSuccessful // .latencyPercentiles) as $lat
    | [ (.statusCodeDistribution | to_entries | total(.value)),
        (.statusCodeDistribution | to_entries | total(select(.key | test("^2")) | .value)),
        (.errorDistribution | to_entries | total(select(.key != "aborted due to deadline") | .value)),
        (.errorDistribution | to_entries | total(select(.key == "aborted due to deadline") | .value)),
        (($lat.p50 // 0) * 1000), (($lat.p99 // 0) * 1000),
        (.errorDistribution | to_entries | map(select(.key != "aborted due to deadline") | "\(.key): \(.value)") | join("; ")) ]
    | @tsv' "$json") || {
    P_FAILURE="cannot read oha's JSON: $(head -c 300 "$json")"
    return 0
  }
  local errors aborted error_list
  IFS=$'\t' read -r P_REQUESTS P_OK errors aborted P_P50 P_P99 error_list <<<"$values"
  P_ERRORS=$((P_REQUESTS - P_OK + errors))
  P_DETAIL="$P_REQUESTS responses ($P_OK 2xx), $aborted cut off at the deadline"
  ((errors == 0)) || P_DETAIL+=", errors: $error_list"
}

# examples/h3load. Usage: load_h3load CONNECTIONS SECONDS URL HTTP_VERSION [RATE]
# Its clock starts once every connection is up, and so does the server's CPU count (run_loadgen's marker).
load_h3load() {
  local connections=$1 seconds=$2 url=$3 version=$4 rate=${5:-} file="$TMP_DIR/h3load.out" timeout=5
  # With thousands of connections each waits its turn behind the others: a request may take seconds.
  ((connections < 1000)) || timeout=60
  local args=("$url" "$connections" 1 "$seconds" --http-version "$version" --timeout "$timeout")
  [[ -z $rate ]] || args+=(--rate "$rate")
  reset_parsed
  LG_COMMAND="h3load ${args[*]}"
  # Set-up is not part of its time: 10,000 handshakes take a while on two shared cores.
  run_loadgen "$(time_limit "$seconds" $((connections / 50 + timeout)))" "$file" 0 '"connected"' "$H3LOAD" "${args[@]}"
  check_exit h3load "$seconds" "$file" || return 0
  LG_RAW=$(<"$file")
  local values
  values=$(jq -r 'select(.ok != null) | [.ok, .other_status, .errors, .p50_ms, .p99_ms, .connected, .connect_errors, .connect_seconds, .streams_lost, (.first_error // "")] | @tsv' "$file") || true
  if [[ -z $values ]]; then
    P_FAILURE="cannot read h3load's output: $(head -c 300 "$file")"
    return 0
  fi
  local other errors connected connect_errors connect_seconds lost first_error
  IFS=$'\t' read -r P_OK other errors P_P50 P_P99 connected connect_errors connect_seconds lost first_error <<<"$values"
  P_REQUESTS=$((P_OK + other))
  P_ERRORS=$((other + errors))
  P_DETAIL="$P_REQUESTS responses ($P_OK 2xx), $connected connections up in ${connect_seconds} s"
  ((connect_errors == 0)) || P_DETAIL+=", $connect_errors failed to connect"
  ((lost == 0)) || P_DETAIL+=", $lost connections lost during the run"
  ((errors == 0)) || P_DETAIL+=", $errors errors, first: $first_error"
}

# Dispatches to a generator by client name. Usage: load CLIENT CONNECTIONS SECONDS URL [RATE]
# Clients: wrk; oha-1.1 (plain or TLS), oha-2, oha-3; h3load (HTTP/3), h3load-2, h3load-1.1.
load() {
  local client=$1
  shift
  case $client in
    wrk) load_wrk "$@" ;;
    oha-*) load_oha "$1" "$2" "$3" "${client#oha-}" "${4:-}" ;;
    h3load) load_h3load "$1" "$2" "$3" 3 "${4:-}" ;;
    h3load-*) load_h3load "$1" "$2" "$3" "${client#h3load-}" "${4:-}" ;;
    *) die "unknown client $client" ;;
  esac
}
