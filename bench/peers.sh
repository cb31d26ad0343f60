# The servers bench/run.sh measures (sourced): the demo backends, quic-proxy, nginx, HAProxy, Caddy and the
# bare HTTP/3 responder. Each start_* function leaves the server listening and sets
#   SERVER_GROUP  the process group whose CPU time and memory are the server's (the pid setsid gave it)
#   SERVER_HTTP   plain HTTP/1.1 base URL, or empty
#   SERVER_TLS    HTTPS / HTTP/3 base URL (TCP and UDP share the port), or empty
# Everything listens on 127.0.0.1 and runs as the current user; distro services are never used.
# shellcheck shell=bash

BACKEND_COUNT=3
HAPROXY_NOTE=
BACKEND_PORTS=()
BACKEND_PIDS=()
# One per core for every peer: quic-proxy's workers, nginx's worker processes, HAProxy's threads, Caddy's
# GOMAXPROCS, the bare responder's threads.
WORKERS=$(nproc)

start_backends() {
  local n
  for ((n = 1; n <= BACKEND_COUNT; n++)); do
    next_port
    start_process "backend$n" env -u RUST_LOG "$BIN" backend --listen "127.0.0.1:$PORT" --name "backend$n"
    wait_for_port "backend$n" "$PORT" "$STARTED_PID"
    BACKEND_PORTS+=("$PORT")
    BACKEND_PIDS+=("$STARTED_PID")
  done
}

# One certificate for every TLS peer, so the handshakes cost the same (same key type and size); HAProxy
# wants certificate and key in one file.
CERT_DIR=
make_cert() {
  [[ -z $CERT_DIR ]] || return 0
  CERT_DIR="$TMP_DIR/certs"
  "$BIN" cert generate --out "$CERT_DIR" --hosts localhost,127.0.0.1 >"$TMP_DIR/cert.log" 2>&1 ||
    die "quic-proxy cert generate failed: $(cat "$TMP_DIR/cert.log")"
  [[ -s $CERT_DIR/server.crt && -s $CERT_DIR/server.key ]] || die "cert generate wrote no server.crt/server.key"
  cat "$CERT_DIR/server.crt" "$CERT_DIR/server.key" >"$CERT_DIR/server.pem"
}

# The demo backend on its own: the first backend is the server.
start_direct() {
  SERVER_GROUP=${BACKEND_PIDS[0]}
  SERVER_HTTP="http://127.0.0.1:${BACKEND_PORTS[0]}"
  SERVER_TLS=
  SERVER_LOG=
}

# $1: name (for its log), $2: metrics on (true/false).
# The load_balancer and health_check sections of the quic-proxy-policy peer: every traffic-policy feature on
# the request path turned on (p2c, outlier detection by failure rate and latency, circuit breakers, retry on
# statuses under the retry budget), with limits no benchmark reaches, so the row shows what they cost.
POLICY_SECTIONS='load_balancer:
  algorithm: "p2c"
  retry_on_statuses: [503]
  circuit_breaker: {max_connections: 100000, max_requests: 100000}
health_check:
  enabled: false
  passive:
    failure_rate: {percentage: 50, minimum_requests: 20, period: 10s}
    latency: {unhealthy_latency: 5s, consecutive: 1000}'

# The quic-proxy-actions peer: the plain round robin, and on every request the route actions a typical
# site has (request and response header rules, a per-client rate limit no run reaches), so the row shows
# what they cost next to the plain one. Request IDs are on in every quic-proxy row (the default).
ACTIONS_SECTIONS='load_balancer:
  algorithm: "round_robin"
route_defaults:
  request_headers: {set: {x-env: "bench"}, add: {x-client: "{client_ip}"}, remove: [x-debug]}
  response_headers: {set: {strict-transport-security: "max-age=31536000"}, remove: [x-powered-by]}
  rate_limit: {requests_per_second: 10000000, burst: 10000000}'

# The compression table's quic-proxy: every route compresses (zstd, br, gzip, by what the client asks for).
COMPRESS_SECTIONS='load_balancer:
  algorithm: "round_robin"
route_defaults:
  compress: true'

# Starts quic-proxy under the name $1 with metrics on ($2 true) or off, and its traffic policy ($3) either
# `plain` (round robin, defaults), `policy` (POLICY_SECTIONS), `actions` (ACTIONS_SECTIONS) or `compress`
# (COMPRESS_SECTIONS).
start_quic_proxy() {
  local name=$1 metrics=$2 policy=${3:-plain} dir="$TMP_DIR/${1// /-}" http_port tls_port metrics_port
  local backends="" extra="" sections='load_balancer:
  algorithm: "round_robin"' n
  mkdir -p "$dir"
  make_cert
  next_port && http_port=$PORT
  next_port && tls_port=$PORT
  next_port && metrics_port=$PORT
  for ((n = 1; n <= BACKEND_COUNT; n++)); do
    backends+="  - name: \"backend$n\""$'\n'"    url: \"http://127.0.0.1:${BACKEND_PORTS[n - 1]}\""$'\n'
  done
  [[ -z $PROXY_WORKERS ]] || extra="  workers: $PROXY_WORKERS"
  case $policy in
    policy) sections=$POLICY_SECTIONS ;;
    actions) sections=$ACTIONS_SECTIONS ;;
    compress) sections=$COMPRESS_SECTIONS ;;
  esac
  render bench/proxy.yaml.tmpl "$dir/proxy.yaml" \
    "HTTP_PORT=$http_port" "TLS_PORT=$tls_port" "CERT_FILE=$CERT_DIR/server.crt" "KEY_FILE=$CERT_DIR/server.key" \
    "HEADER_READ_TIMEOUT=60s" "SERVER_EXTRA=$extra" "MAX_CONNECTIONS=$((MAX_CONNECTIONS * 2 + 1000))" \
    "METRICS_ENABLED=$metrics" "METRICS_PORT=$metrics_port" "BACKENDS=${backends%$'\n'}" "POLICY=$sections"
  "$BIN" check --config "$dir/proxy.yaml" >"$dir/check.log" 2>&1 ||
    die "quic-proxy rejected its config: $(cat "$dir/check.log")"
  # RUST_LOG would override the config's log level and could turn access logging back on.
  start_process "$name" env -u RUST_LOG "$BIN" --config "$dir/proxy.yaml"
  wait_for_port "$name" "$http_port" "$STARTED_PID"
  wait_for_port "$name" "$tls_port" "$STARTED_PID"
  SERVER_GROUP=$STARTED_PID
  SERVER_HTTP="http://127.0.0.1:$http_port"
  SERVER_TLS="https://127.0.0.1:$tls_port"
  SERVER_LOG="$TMP_DIR/$name.log"
}

start_nginx() {
  local name=$1 dir="$TMP_DIR/${1// /-}" http_port tls_port servers="" user_directive="" port
  mkdir -p "$dir"
  make_cert
  next_port && http_port=$PORT
  next_port && tls_port=$PORT
  for port in "${BACKEND_PORTS[@]}"; do
    servers+="        server 127.0.0.1:$port;"$'\n'
  done
  # A root master would otherwise run its workers as nobody, who cannot read the key.
  ((EUID != 0)) || user_directive="user $(id -un) $(id -gn);"
  render bench/nginx.conf.tmpl "$dir/nginx.conf" \
    "USER_DIRECTIVE=$user_directive" "WORKERS=$WORKERS" "PID_FILE=$dir/nginx.pid" "ERROR_LOG=$dir/error.log" \
    "NOFILE=$(ulimit -n)" "WORKER_CONNECTIONS=$((MAX_CONNECTIONS * 2 + 256))" "KEEPALIVE=$MAX_CONNECTIONS" \
    "HTTP_PORT=$http_port" "TLS_PORT=$tls_port" "CERT_FILE=$CERT_DIR/server.crt" "KEY_FILE=$CERT_DIR/server.key" \
    "UPSTREAM_SERVERS=${servers%$'\n'}"
  # -e keeps nginx away from /var/log/nginx before it has read the config (needs nginx >= 1.19.5).
  nginx -t -q -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/check.log" 2>&1 ||
    die "nginx rejected its config: $(cat "$dir/check.log")"
  start_process "$name" nginx -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf"
  wait_for_port "$name" "$http_port" "$STARTED_PID"
  wait_for_port "$name" "$tls_port" "$STARTED_PID"
  SERVER_GROUP=$STARTED_PID
  SERVER_HTTP="http://127.0.0.1:$http_port"
  SERVER_TLS="https://127.0.0.1:$tls_port"
  SERVER_LOG="$dir/error.log"
}

start_haproxy() {
  local name=$1 dir="$TMP_DIR/${1// /-}" http_port tls_port servers="" n maxconn
  mkdir -p "$dir"
  # HAProxy refuses to start unless it has two descriptors per connection (client and server side) and a
  # few more; under a lower hard limit its maxconn is what the limit allows, and the report says so.
  maxconn=$((MAX_CONNECTIONS + 256))
  if ((maxconn * 2 + 64 > $(ulimit -n))); then
    maxconn=$((($(ulimit -n) - 64) / 2))
    HAPROXY_NOTE="haproxy maxconn is $maxconn, not $((MAX_CONNECTIONS + 256)): it needs two descriptors per connection and the open-file limit is $(ulimit -n)"
  fi
  make_cert
  next_port && http_port=$PORT
  next_port && tls_port=$PORT
  for ((n = 1; n <= BACKEND_COUNT; n++)); do
    servers+="    server backend$n 127.0.0.1:${BACKEND_PORTS[n - 1]}"$'\n'
  done
  render bench/haproxy.cfg.tmpl "$dir/haproxy.cfg" \
    "WORKERS=$WORKERS" "PID_FILE=$dir/haproxy.pid" "MAXCONN=$maxconn" "NOFILE=$(ulimit -n)" \
    "HTTP_PORT=$http_port" "TLS_PORT=$tls_port" "PEM_FILE=$CERT_DIR/server.pem" "SERVERS=${servers%$'\n'}"
  haproxy -c -q -f "$dir/haproxy.cfg" >"$dir/check.log" 2>&1 ||
    die "haproxy rejected its config: $(cat "$dir/check.log")"
  # -db: stay in the foreground, so the pid we hold is HAProxy's own.
  start_process "$name" haproxy -db -f "$dir/haproxy.cfg"
  wait_for_port "$name" "$http_port" "$STARTED_PID"
  wait_for_port "$name" "$tls_port" "$STARTED_PID"
  SERVER_GROUP=$STARTED_PID
  SERVER_HTTP="http://127.0.0.1:$http_port"
  SERVER_TLS="https://127.0.0.1:$tls_port"
  SERVER_LOG="$TMP_DIR/$name.log"
}

# Caddy with the same certificate: HTTPS (h1, h2) and HTTP/3 on one port.
start_caddy() {
  local name=$1 dir="$TMP_DIR/${1// /-}" tls_port http_port upstreams="" port
  mkdir -p "$dir/home"
  make_cert
  next_port && tls_port=$PORT
  next_port && http_port=$PORT
  for port in "${BACKEND_PORTS[@]}"; do upstreams+=" 127.0.0.1:$port"; done
  render bench/Caddyfile.tmpl "$dir/Caddyfile" \
    "HTTPS_PORT=$tls_port" "HTTP_PORT=$http_port" "STORAGE_DIR=$dir/data" \
    "CERT_FILE=$CERT_DIR/server.crt" "KEY_FILE=$CERT_DIR/server.key" "UPSTREAMS=${upstreams# }"
  # Caddy keeps state (certificates, autosaved config) under $HOME/XDG dirs; keep it in the scratch dir.
  local env=(env HOME="$dir/home" XDG_DATA_HOME="$dir/home" XDG_CONFIG_HOME="$dir/home" GOMAXPROCS="$WORKERS")
  "${env[@]}" caddy validate --adapter caddyfile --config "$dir/Caddyfile" >"$dir/check.log" 2>&1 ||
    die "caddy rejected its config: $(tail -n 5 "$dir/check.log")"
  start_process "$name" "${env[@]}" caddy run --adapter caddyfile --config "$dir/Caddyfile"
  wait_for_port "$name" "$tls_port" "$STARTED_PID"
  SERVER_GROUP=$STARTED_PID
  SERVER_HTTP=
  SERVER_TLS="https://127.0.0.1:$tls_port"
  SERVER_LOG="$TMP_DIR/$name.log"
}

# The bare quinn + h3 responder (examples/h3bare) answering with a body as large as the demo backend's
# answer through the proxy, so both put the same bytes on the wire. It binds a free port itself and prints
# it; that line is awaited (it is printed after every socket is bound).
H3BARE=target/release/examples/h3bare
start_h3bare() {
  local name=$1
  make_cert
  local mode=()
  [[ $BARE_SINGLE_ENDPOINT == 0 ]] || mode=(--single-endpoint)
  start_process "$name" "$H3BARE" --listen 127.0.0.1:0 --cert "$CERT_DIR/server.crt" --key "$CERT_DIR/server.key" \
    --workers "$BARE_WORKERS" "${mode[@]}" --body-bytes "$RESPONSE_BYTES"
  wait_until 150 "$STARTED_PID" grep -qs '"listening"' "$TMP_DIR/$name.log" ||
    die "$name did not start: $(tail -n 5 "$TMP_DIR/$name.log")"
  SERVER_GROUP=$STARTED_PID
  SERVER_HTTP=
  SERVER_TLS="https://$(jq -r 'select(.listening) | .listening' "$TMP_DIR/$name.log" | head -n 1)"
  SERVER_LOG="$TMP_DIR/$name.log"
}

# Starts peer $1 under the name $2. Peers: direct, quic-proxy, quic-proxy-nometrics, quic-proxy-policy,
# quic-proxy-actions, quic-proxy-compress, nginx, haproxy, caddy, h3bare.
start_peer() {
  local peer=$1 name=$2
  case $peer in
    direct) start_direct ;;
    quic-proxy) start_quic_proxy "$name" true ;;
    quic-proxy-nometrics) start_quic_proxy "$name" false ;;
    quic-proxy-policy) start_quic_proxy "$name" true policy ;;
    quic-proxy-actions) start_quic_proxy "$name" true actions ;;
    quic-proxy-compress) start_quic_proxy "$name" true compress ;;
    nginx) start_nginx "$name" ;;
    haproxy) start_haproxy "$name" ;;
    caddy) start_caddy "$name" ;;
    h3bare) start_h3bare "$name" ;;
    *) die "unknown peer $peer" ;;
  esac
  SERVER_PEER=$peer
}

# Stops the current server (the direct backend keeps running: the proxies need it). Fails the run if the
# server died during its rows, since every figure after that point would be meaningless.
stop_peer() {
  [[ $SERVER_PEER != direct ]] || return 0
  kill -0 "$SERVER_GROUP" 2>/dev/null || die "$SERVER_PEER exited during its rows; log: $(tail -n 5 "$SERVER_LOG" 2>/dev/null)"
  stop_process "$SERVER_GROUP"
}

peer_versions() {
  local versions=("$("$BIN" --version 2>/dev/null || echo 'quic-proxy ?')")
  command -v nginx >/dev/null && versions+=("$(nginx -v 2>&1 | sed 's/^nginx version: //')")
  command -v haproxy >/dev/null && versions+=("$(haproxy -v 2>/dev/null | head -n 1 | awk '{ print "haproxy/" $3 }')")
  command -v caddy >/dev/null && versions+=("caddy $(caddy version 2>/dev/null | awk '{ print $1 }')")
  command -v wrk >/dev/null && versions+=("$(wrk -v 2>&1 | head -n 1 | awk '{ print "wrk " $2 }')")
  [[ -z ${OHA:-} ]] || versions+=("$("$OHA" --version 2>/dev/null)")
  versions+=("h3bare/h3load: $(crate_versions)")
  local IFS=,
  printf '%s' "${versions[*]}" | sed 's/,/, /g'
}

# quinn, h3 and rustls as Cargo.lock pins them: the versions quic-proxy, h3bare and h3load all use.
crate_versions() {
  awk '/^name = / { name = $3 } /^version = / && name ~ /^"(quinn|h3|h3-quinn|rustls)"$/ { gsub(/"/, "", name); gsub(/"/, "", $3); printf "%s%s %s", sep, name, $3; sep = " + " }' Cargo.lock
}
