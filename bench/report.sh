# Results and the tables bench/run.sh prints (sourced).
# shellcheck shell=bash

# Measured figures, keyed "<round>|<table>|<row>|<mode>|<connections>"; round is 1..N, "s" for the scale
# pass. Tables: http1, https, h3, compress, scale-http1, scale-https, scale-h3. Modes: full, fixed.
declare -A R_RPS=() R_P50=() R_P99=() R_ERR=() R_CPU=() R_GEN=() R_DETAIL=() R_NOTE=() R_FAIL=()
# Rows in the order first measured, per table; a row's peer and variant (TLS protocol or HTTP/3 client).
declare -A TABLE_ROWS=() ROW_PEER_OF=() ROW_VARIANT_OF=() SCALE_CLIENT=()
# Memory figures keyed "<peer>|<mode>": RSS before and after (KiB), connections or streams held, and the
# client's ready and status lines.
declare -A M_BEFORE=() M_AFTER=() M_UNITS=() M_READY=() M_STATUS=() M_FAIL=()
PROXY_WARNINGS=

# Sets ROW to the row name of peer $1 with variant $2 and remembers both.
name_row() {
  ROW="${PEER_LABEL[$1]}${2:+ $2}"
  ROW_PEER_OF[$ROW]=$1
  ROW_VARIANT_OF[$ROW]=$2
}

add_row() {
  [[ $'\n'"${TABLE_ROWS[$1]:-}" == *$'\n'"$2"$'\n'* ]] || TABLE_ROWS[$1]+="$2"$'\n'
}

median() {
  printf '%s\n' "$@" | awk 'NF && $1 != "-"' | sort -g |
    awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Median over rounds of array $1 at "<round>|$2".
round_median() {
  local -n values=$1
  local suffix=$2 list=() round
  for ((round = 1; round <= ROUNDS; round++)); do
    [[ -z ${values[$round|$suffix]:-} ]] || list+=("${values[$round|$suffix]}")
  done
  median "${list[@]}"
}

# Median over rounds of the ratio of array $1 at "<round>|$2" to the same at "<round>|$3".
ratio_median() {
  local -n values=$1
  local a=$2 b=$3 list=() round
  for ((round = 1; round <= ROUNDS; round++)); do
    [[ -n ${values[$round|$a]:-} && -n ${values[$round|$b]:-} ]] || continue
    list+=("$(awk -v x="${values[$round|$a]}" -v y="${values[$round|$b]}" 'BEGIN { if (y > 0) printf "%.4f", x / y; else print "-" }')")
  done
  median "${list[@]}"
}

# Prints $1 with printf format $2, or "-" when there is no value.
fmt() {
  if [[ $1 == - || -z $1 ]]; then printf '%s' -; else printf "$2" "$1"; fi
}

# The name of the row of reference peer $2 with the same variant as row $1.
reference_row() {
  printf '%s' "${PEER_LABEL[$2]}${ROW_VARIANT_OF[$1]:+ ${ROW_VARIANT_OF[$1]}}"
}

declare -A SHORT=([nginx]=ngx [haproxy]=hap [h3bare]=bare [caddy]=caddy)

# One protocol's table: medians over rounds, full load and fixed rate side by side, ratios to two peers.
TABLE_FORMAT='%-26s|%8s %7s %7s %6s %7s %7s |%8s %8s %8s %8s |%8s %7s %7s %6s %7s |%8s %8s\n'
print_table() {
  local table=$1 ref1=$2 ref2=$3 rate=$4 row full fixed r1 r2
  local s1=${SHORT[$ref1]} s2=${SHORT[$ref2]}
  printf '%-26s|%-48s|%-36s|%-40s|%-17s\n' "" " full load" " ratios at full load" " fixed rate $rate/s" " ratios, fixed"
  # shellcheck disable=SC2059
  printf "$TABLE_FORMAT" target req/s "p50 ms" "p99 ms" errors "us/req" "cli us" "rps/$s1" "rps/$s2" "us/$s1" "us/$s2" \
    req/s "p50 ms" "p99 ms" errors "us/req" "us/$s1" "us/$s2"
  while IFS= read -r row; do
    [[ -n $row ]] || continue
    full="$table|$row|full|$CONNECTIONS"
    fixed="$table|$row|fixed|$CONNECTIONS"
    r1="$table|$(reference_row "$row" "$ref1")"
    r2="$table|$(reference_row "$row" "$ref2")"
    # shellcheck disable=SC2059
    printf "$TABLE_FORMAT" "$row" \
      "$(fmt "$(round_median R_RPS "$full")" %.0f)" "$(fmt "$(round_median R_P50 "$full")" %.2f)" \
      "$(fmt "$(round_median R_P99 "$full")" %.2f)" "$(fmt "$(round_median R_ERR "$full")" %.0f)" \
      "$(fmt "$(round_median R_CPU "$full")" %.1f)" "$(fmt "$(round_median R_GEN "$full")" %.1f)" \
      "$(fmt "$(ratio_median R_RPS "$full" "$r1|full|$CONNECTIONS")" %.2fx)" \
      "$(fmt "$(ratio_median R_RPS "$full" "$r2|full|$CONNECTIONS")" %.2fx)" \
      "$(fmt "$(ratio_median R_CPU "$full" "$r1|full|$CONNECTIONS")" %.2fx)" \
      "$(fmt "$(ratio_median R_CPU "$full" "$r2|full|$CONNECTIONS")" %.2fx)" \
      "$(fmt "$(round_median R_RPS "$fixed")" %.0f)" "$(fmt "$(round_median R_P50 "$fixed")" %.2f)" \
      "$(fmt "$(round_median R_P99 "$fixed")" %.2f)" "$(fmt "$(round_median R_ERR "$fixed")" %.0f)" \
      "$(fmt "$(round_median R_CPU "$fixed")" %.1f)" \
      "$(fmt "$(ratio_median R_CPU "$fixed" "$r1|fixed|$CONNECTIONS")" %.2fx)" \
      "$(fmt "$(ratio_median R_CPU "$fixed" "$r2|fixed|$CONNECTIONS")" %.2fx)"
  done <<<"${TABLE_ROWS[$table]:-}"
}

# What compressing costs each peer per KiB of the uncompressed answer: CPU per request at the fixed rate, over
# the same peer's identity row, divided by the answer's size; and the size each coding made of it.
print_compression_cost() {
  local row peer identity cost
  printf '%-26s|%10s %12s %8s\n' "compression cost" "bytes" "us per KiB" ratio
  while IFS= read -r row; do
    [[ -n $row ]] || continue
    peer=${ROW_PEER_OF[$row]}
    identity="${PEER_LABEL[$peer]} identity"
    cost=$(awk -v a="$(round_median R_CPU "compress|$row|fixed|$CONNECTIONS")" \
      -v b="$(round_median R_CPU "compress|$identity|fixed|$CONNECTIONS")" -v kib="$((COMPRESS_BYTES / 1024))" \
      'BEGIN { if (a == "-" || b == "-") print "-"; else printf "%.2f", (a - b) / kib }')
    [[ $row != "$identity" ]] || cost=0
    printf '%-26s|%10s %12s %8s\n' "$row" "${ENCODED_BYTES[$row]:--}" "$cost" \
      "$(awk -v n="${ENCODED_BYTES[$row]:-0}" -v d="$COMPRESS_BYTES" 'BEGIN { if (n > 0) printf "%.1fx", d / n; else print "-" }')"
  done <<<"${TABLE_ROWS[compress]:-}"
}

# Per round: req/s at full load and CPU per request in both modes, to show how much is noise.
print_rounds() {
  local table=$1 row mode round line
  line=$(printf '%-26s' "by round")
  for mode in "req/s full" "us/req full" "us/req fixed"; do
    line+=$(printf '|%-*s' $((ROUNDS * 9)) " $mode")
  done
  printf '%s\n' "$line"
  while IFS= read -r row; do
    [[ -n $row ]] || continue
    line=$(printf '%-26s' "$row")
    for mode in rps-full cpu-full cpu-fixed; do
      line+="|"
      for ((round = 1; round <= ROUNDS; round++)); do
        case $mode in
          rps-full) line+=$(printf '%8s ' "$(fmt "${R_RPS[$round|$table|$row|full|$CONNECTIONS]:--}" %.0f)") ;;
          cpu-full) line+=$(printf '%8s ' "$(fmt "${R_CPU[$round|$table|$row|full|$CONNECTIONS]:--}" %.1f)") ;;
          cpu-fixed) line+=$(printf '%8s ' "$(fmt "${R_CPU[$round|$table|$row|fixed|$CONNECTIONS]:--}" %.1f)") ;;
        esac
      done
    done
    printf '%s\n' "$line"
  done <<<"${TABLE_ROWS[$table]:-}"
}

# Rows that failed, fixed rates not sustained, and errors, per round.
print_notes() {
  local table=$1 rounds=$2 row mode round key connections printed=0 counts=("$CONNECTIONS")
  for connections in "${SCALE[@]}"; do
    [[ " ${counts[*]} " == *" $connections "* ]] || counts+=("$connections")
  done
  while IFS= read -r row; do
    [[ -n $row ]] || continue
    for round in $rounds; do
      for mode in full fixed; do
        for connections in "${counts[@]}"; do
          key="$round|$table|$row|$mode|$connections"
          if [[ -n ${R_FAIL[$key]:-} ]]; then
            printf '  %s, round %s, %s, %s connections: not measured: %s\n' "$row" "$round" "$mode" "$connections" "${R_FAIL[$key]}"
            printed=1
          fi
          if [[ -n ${R_NOTE[$key]:-} ]]; then
            printf '  %s, round %s, %s: %s\n' "$row" "$round" "$mode" "${R_NOTE[$key]}"
            printed=1
          fi
          if [[ -n ${R_ERR[$key]:-} ]] && ((R_ERR[$key] > 0)); then
            printf '  %s, round %s, %s, %s connections: %s errors: %s\n' "$row" "$round" "$mode" "$connections" "${R_ERR[$key]}" "${R_DETAIL[$key]}"
            printed=1
          fi
        done
      done
    done
  done <<<"${TABLE_ROWS[$table]:-}"
  ((printed)) || printf '  no errors, every row measured%s\n' "$([[ $table == scale-* ]] || echo ', every fixed rate sustained')"
}

all_rounds() {
  local round list=""
  for ((round = 1; round <= ROUNDS; round++)); do list+="$round "; done
  printf '%s' "$list"
}

print_scale() {
  local group=$1 table="scale-$1" row connections key base ratio
  printf '%-26s %7s %9s %8s %8s %8s %8s %8s %8s\n' target conns req/s "vs ${SCALE[0]}" "p50 ms" "p99 ms" "us/req" "cli us" errors
  while IFS= read -r row; do
    [[ -n $row ]] || continue
    base=${R_RPS[s|$table|$row|full|${SCALE[0]}]:-}
    for connections in "${SCALE[@]}"; do
      key="s|$table|$row|full|$connections"
      ratio=-
      [[ -z $base || -z ${R_RPS[$key]:-} ]] || ratio=$(awk -v a="${R_RPS[$key]}" -v b="$base" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
      printf '%-26s %7s %9s %8s %8s %8s %8s %8s %8s\n' "$([[ $connections != "${SCALE[0]}" ]] || printf '%s' "$row")" "$connections" \
        "$(fmt "${R_RPS[$key]:--}" %.0f)" "$(fmt "$ratio" %.2fx)" "$(fmt "${R_P50[$key]:--}" %.2f)" \
        "$(fmt "${R_P99[$key]:--}" %.2f)" "$(fmt "${R_CPU[$key]:--}" %.1f)" "$(fmt "${R_GEN[$key]:--}" %.1f)" \
        "$(fmt "${R_ERR[$key]:--}" %d)"
    done
  done <<<"${TABLE_ROWS[$table]:-}"
}

# KiB per connection (or per stream) for peer $1, mode $2; for stalled streams the cost of the connections
# that carry them (the idle HTTP/3 figure of the same peer) is taken off first.
memory_per_unit() {
  local key="$1|$2" connections per_connection=0
  [[ -z ${M_FAIL[$key]:-} && -n ${M_AFTER[$key]:-} ]] || { printf '%s' -; return 0; }
  if [[ $2 == h3-stalled ]]; then
    connections=$(jq -r '.connections' <<<"${M_READY[$key]}")
    per_connection=$(memory_per_unit "$1" h3)
    [[ $per_connection != - ]] || per_connection=0
    awk -v a="${M_AFTER[$key]}" -v b="${M_BEFORE[$key]}" -v c="$connections" -v q="$per_connection" -v n="${M_UNITS[$key]}" \
      'BEGIN { printf "%.2f", (a - b - c * q) / n }'
  else
    awk -v a="${M_AFTER[$key]}" -v b="${M_BEFORE[$key]}" -v n="${M_UNITS[$key]}" 'BEGIN { printf "%.2f", (a - b) / n }'
  fi
}

print_memory() {
  local peer mode cell line
  printf '%-14s %16s %16s %16s %16s %20s\n' target "HTTP/1.1" "HTTPS http/1.1" "HTTPS h2" "HTTP/3 (QUIC)" "stalled h3 stream"
  for peer in "${MEMORY_PEERS[@]}"; do
    line=$(printf '%-14s' "$peer")
    for mode in http1 https1 h2 h3 h3-stalled; do
      if [[ -z ${M_AFTER[$peer|$mode]:-} && -z ${M_FAIL[$peer|$mode]:-} ]]; then
        cell=""
      else
        cell=$(memory_per_unit "$peer" "$mode")
        [[ $cell == - ]] || cell+=" KiB"
      fi
      line+=$(printf ' %16s' "$cell")
    done
    printf '%s\n' "${line}"
  done
  printf '\nwhat was held (RSS of the server'"'"'s processes before -> after, KiB; the client'"'"'s count of what stayed open):\n'
  for peer in "${MEMORY_PEERS[@]}"; do
    for mode in "${MEMORY_MODES[@]}"; do
      local key="$peer|$mode"
      if [[ -n ${M_FAIL[$key]:-} ]]; then
        printf '  %-10s %-10s not measured: %s\n' "$peer" "$mode" "${M_FAIL[$key]}"
      elif [[ -n ${M_AFTER[$key]:-} ]]; then
        printf '  %-10s %-10s %8s -> %8s for %s %s; still open at the reading: %s\n' "$peer" "$mode" "${M_BEFORE[$key]}" "${M_AFTER[$key]}" \
          "${M_UNITS[$key]}" "$([[ $mode == h3-stalled ]] && echo streams || echo connections)" \
          "$(jq -r '"\(.open_connections) connections" + (if .cut_streams > 0 then ", \(.cut_streams) streams cut by the server" else "" end)' <<<"${M_STATUS[$key]:-{\}}" 2>/dev/null || echo "no status")"
      fi
    done
  done
}

report() {
  local rounds
  rounds=$(all_rounds)
  printf '%s\n' "quic-proxy benchmark, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src 2>/dev/null || echo ' (src modified)')"
  printf '%s\n' "binary: $BIN, built $(date -u -r "$BIN" '+%Y-%m-%d %H:%M:%S UTC')"
  printf '%s\n' "host: $(nproc) cores, $(uname -sr); load generators, servers and backends all share these cores"
  printf '%s\n' "load average before the run: $LOAD_BEFORE (1, 5, 15 min), after: $(cut -d ' ' -f 1-3 /proc/loadavg)"
  printf '%s\n' "versions: $(peer_versions)"
  local peer shapes=""
  for peer in "${!PEER_SHAPE[@]}"; do shapes+="$peer: ${PEER_SHAPE[$peer]}; "; done
  printf '%s\n' "peers: $BACKEND_COUNT demo backends, round robin; $WORKERS workers/threads each (quic-proxy ${PROXY_WORKERS:-default} workers, nginx worker_processes, haproxy nbthread, caddy GOMAXPROCS, h3bare threads); as seen: ${shapes%; }"
  for peer in "${!TLS_SEEN[@]}"; do printf '%s\n' "TLS negotiated with $peer (curl): ${TLS_SEEN[$peer]}"; done
  printf '%s\n' "access logging off everywhere (quic-proxy level warn, nginx access_log off, haproxy no log, caddy no log); GET $REQUEST_PATH, answered with ~$RESPONSE_BYTES bytes"
  [[ -z $FILE_LIMIT_NOTE ]] || printf 'NOTE: %s\n' "$FILE_LIMIT_NOTE"
  [[ -z $HAPROXY_NOTE ]] || printf 'NOTE: %s\n' "$HAPROXY_NOTE"
  cat <<EOF

How to read the tables (bench/README.md has more):
  us/req  CPU microseconds per response: utime+stime of the server's own processes (from /proc/<pid>/stat
          of each: nginx master and workers, haproxy, caddy, quic-proxy, h3bare; never the load generator
          or the backends) over the run, divided by the responses the load generator counted.
  cli us  the load generator's own CPU per response: high means the client, not the server, is the limit.
  full    $CONNECTIONS connections, one request at a time on each, as fast as the client goes, for $DURATION.
  fixed   the same connections at one rate for every peer of a table (oha -q, h3load --rate), for $DURATION.
          On two shared cores req/s mostly measures how the cores are shared; CPU per request at an equal
          rate does not.
  Figures are medians of $ROUNDS round(s). Ratios (rps/x: req/s over peer x's; us/x: CPU per request over
  x's) are medians of per-round ratios, each from one round. Errors: non-2xx plus transport errors.
EOF
  if [[ -n ${TABLE_ROWS[http1]:-} ]]; then
    printf '\n=== HTTP/1.1: full load wrk -t%s -c%s; fixed rate oha -c%s -q %s\n' "$WRK_THREADS" "$CONNECTIONS" "$CONNECTIONS" "$RATE_HTTP1"
    print_table http1 nginx haproxy "$RATE_HTTP1"
    printf '\n'
    print_rounds http1
    printf '\nnotes:\n'
    print_notes http1 "$rounds"
  fi
  if [[ -n ${TABLE_ROWS[https]:-} ]]; then
    printf '\n=== HTTPS over TCP (oha -c%s; h2 with one stream per connection), same certificate everywhere; fixed rate -q %s\n' "$CONNECTIONS" "$RATE_HTTPS"
    print_table https nginx haproxy "$RATE_HTTPS"
    printf '\n'
    print_rounds https
    printf '\nnotes:\n'
    print_notes https "$rounds"
  fi
  if [[ -n ${TABLE_ROWS[h3]:-} ]]; then
    printf '\n=== HTTP/3 (each row names its client; ratios are to the peer measured with the same client); fixed rate %s/s\n' "$RATE_H3"
    print_table h3 h3bare caddy "$RATE_H3"
    printf '\n'
    print_rounds h3
    printf '\nnotes:\n'
    print_notes h3 "$rounds"
  fi
  if [[ -n ${TABLE_ROWS[compress]:-} ]]; then
    printf '\n=== Compression: GET /text/%s (JSON lines) over HTTP/1.1 with Accept-Encoding: <coding>, oha -c%s; fixed rate %s/s\n' "$COMPRESS_BYTES" "$CONNECTIONS" "$RATE_COMPRESS"
    print_table compress nginx haproxy "$RATE_COMPRESS"
    printf '\n'
    print_rounds compress
    printf '\n'
    print_compression_cost
    printf '\nnotes:\n'
    print_notes compress "$rounds"
  fi
  local group
  for group in http1 https h3; do
    [[ -n ${TABLE_ROWS[scale-$group]:-} ]] || continue
    printf '\n=== Scale, %s: full load with %s, %s per step after a warm-up, one pass; %s\n' \
      "$(case $group in http1) echo HTTP/1.1 ;; https) echo HTTPS h2 ;; h3) echo HTTP/3 ;; esac)" "${SCALE_CLIENT[$group]}" "$SCALE_DURATION" \
      "$(if [[ ${SCALE_CLIENT[$group]} == h3load* ]]; then echo "clock and CPU count start once every connection is up"; else echo "wrk's clock and the CPU count include its TCP connects"; fi)"
    print_scale "$group"
    printf 'notes:\n'
    print_notes "scale-$group" s
  done
  if ((${#M_AFTER[@]} + ${#M_FAIL[@]} > 0)); then
    printf '\n=== Memory: RSS growth of the server per idle connection (%s connections, each after one request) and per\n' "$IDLE_CONNECTIONS"
    printf '    stalled HTTP/3 stream (%s connections x %s streams that sent 4 bytes of a 32-byte HEADERS frame, kept alive\n' "$STALLED_CONNECTIONS" "$STALLED_STREAMS"
    printf '    with PINGs; the carrying connections'"'"' cost, from the HTTP/3 column, is subtracted). quic-proxy runs with\n'
    printf '    server.header_read_timeout 60s so that nothing is cut while RSS is read.\n'
    print_memory
  fi
  if [[ -n $POLICY_MEMORY ]]; then
    printf '\n=== Memory held by route actions (examples/policy_memory.rs)\n%s\n' "$POLICY_MEMORY"
  fi
}
