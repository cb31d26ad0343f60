# Helpers for bench/run.sh (sourced): logging, packages and tools, processes, ports, templates, and what
# /proc says about a server's CPU time and memory.
# shellcheck shell=bash

log() { printf 'bench: %s\n' "$*" >&2; }
die() {
  printf 'bench: error: %s\n' "$*" >&2
  exit 1
}

# --- packages and tools ------------------------------------------------------------------------------------

OWN_POLICY=

as_root() {
  if ((EUID == 0)); then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

remove_own_policy() {
  [[ -z $OWN_POLICY ]] || as_root rm -f "$OWN_POLICY"
  OWN_POLICY=
}

# The distro packages start nginx, haproxy and caddy as services when they are installed; the benchmark
# runs its own instances, so the services are stopped again and kept from coming back on boot.
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

# Installs Debian packages for the commands given as command:package pairs that are missing.
install_packages() {
  local pair missing=() services=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
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
    case $package in nginx | haproxy | caddy) services+=("$package") ;; esac
  done
  ((${#services[@]} == 0)) || stop_distro_services "${services[@]}"
}

# nginx must have the ssl and http2 modules for the HTTPS rows; Debian's nginx package has both.
check_nginx_modules() {
  local built
  built=$(nginx -V 2>&1)
  [[ $built == *--with-http_ssl_module* && $built == *--with-http_v2_module* ]] ||
    die "this nginx lacks http_ssl_module or http_v2_module (nginx -V); install Debian's nginx package"
}

# Load generators and renderers built from crates.io live in bench/.tools (ignored by git), never in ~/.cargo.
TOOLS_DIR=${BENCH_TOOLS_DIR:-$PWD/bench/.tools}

# A usable oha speaks HTTP/3: without the cargo feature, `--http-version 3` fails at argument parsing with
# "not been built with HTTP/3 support" before any connection is tried; with it, the request goes to a port
# nothing listens on and fails fast, which is fine: only the message matters.
oha_has_http3() {
  local output
  output=$(timeout 15 "$1" -n 1 --no-tui --insecure --http-version 3 -t 300ms --connect-timeout 300ms \
    "https://127.0.0.1:9/" 2>&1) || true
  [[ $output != *"HTTP/3 support"* ]] && "$1" --help 2>/dev/null | grep -q -- '--http-version'
}

# Sets OHA to an oha with HTTP/3 support, building one (about 11 minutes on 2 cores) when none is found.
# OHA_BUILD_PID is set while a background build started by start_oha_build runs.
OHA_BUILD_PID=
OHA_VERSION=${BENCH_OHA_VERSION:-1.16.0}

find_oha() {
  local candidate
  for candidate in "${OHA:-}" "$TOOLS_DIR/bin/oha"; do
    if [[ -n $candidate && -x $candidate ]] && oha_has_http3 "$candidate"; then
      OHA=$candidate
      return 0
    fi
  done
  return 1
}

# Starts building oha in the background, so the build overlaps whatever the benchmark does first.
start_oha_build() {
  find_oha && return 0
  command -v cargo >/dev/null || die "oha with HTTP/3 is missing and there is no cargo to build it"
  mkdir -p "$TOOLS_DIR"
  log "building oha $OHA_VERSION with HTTP/3 into $TOOLS_DIR (cargo install, about 11 minutes, once); log: $TOOLS_DIR/oha-build.log"
  cargo install oha --version "$OHA_VERSION" --features http3 --locked --root "$TOOLS_DIR" \
    >"$TOOLS_DIR/oha-build.log" 2>&1 &
  OHA_BUILD_PID=$!
}

wait_for_oha() {
  [[ -n ${OHA:-} && -x $OHA ]] && return 0
  if [[ -n $OHA_BUILD_PID ]]; then
    log "waiting for the oha build to finish"
    local status=0
    wait "$OHA_BUILD_PID" || status=$?
    OHA_BUILD_PID=
    ((status == 0)) || die "cargo install oha --features http3 failed: $(tail -n 20 "$TOOLS_DIR/oha-build.log")"
  fi
  find_oha || die "$TOOLS_DIR/bin/oha was built but does not speak HTTP/3"
}

# --- processes ---------------------------------------------------------------------------------------------

TMP_DIR=
PIDS=()
LOADGEN_PID=

# Each server runs in its own process group (setsid), so signalling the group also reaches nginx's workers.
# All get SIGTERM at once and 5 s in total to finish; whatever is left then gets SIGKILL.
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

forget_process() {
  local pid=$1 kept=() p
  for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || kept+=("$p"); done
  PIDS=("${kept[@]}")
}

stop_process() {
  stop_processes "$1"
  forget_process "$1"
}

# Starts a server in the background, in a process group of its own, with its output in
# $TMP_DIR/<name>.log; sets STARTED_PID (which is also the group id).
start_process() {
  local name=$1
  shift
  setsid "$@" >"$TMP_DIR/$name.log" 2>&1 </dev/null &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
}

cleanup_processes() {
  [[ -z $LOADGEN_PID ]] || stop_processes "$LOADGEN_PID"
  LOADGEN_PID=
  # Newest first: a proxy lets go of its backend connections before the backends are asked to stop.
  local reversed=() i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do reversed+=("${PIDS[i]}"); done
  ((${#reversed[@]} == 0)) || stop_processes "${reversed[@]}"
  PIDS=()
  if [[ -n $OHA_BUILD_PID ]]; then
    kill -TERM "$OHA_BUILD_PID" 2>/dev/null || true
    wait "$OHA_BUILD_PID" 2>/dev/null || true
    OHA_BUILD_PID=
  fi
}

# Polls `$@` every 0.1 s until it succeeds; fails after $1 tenths of a second or when process $2 exits.
wait_until() {
  local tenths=$1 pid=$2 i
  shift 2
  for ((i = 0; i < tenths; i++)); do
    "$@" && return 0
    [[ -z $pid ]] || kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# --- ports -------------------------------------------------------------------------------------------------

USED_PORTS=()

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

port_taken() {
  [[ -n $(ss -Htuan "sport = :$1" 2>/dev/null) ]]
}

# Sets PORT to one free for TCP and UDP, below the ephemeral range (32768+) so that no client socket of a
# load generator or proxy can hold it. Not called as $(...): it must remember what it handed out.
next_port() {
  local attempt used
  for ((attempt = 0; attempt < 200; attempt++)); do
    PORT=$((20000 + RANDOM % 12000))
    for used in "${USED_PORTS[@]}"; do
      [[ $used == "$PORT" ]] && continue 2
    done
    if ! port_taken "$PORT"; then
      USED_PORTS+=("$PORT")
      return 0
    fi
  done
  die "no free loopback port found"
}

wait_for_port() {
  local name=$1 port=$2 pid=$3
  wait_until 150 "$pid" port_open "$port" && return 0
  tail -n 20 "$TMP_DIR/$name.log" >&2 || true
  die "$name did not listen on 127.0.0.1:$port within 15 s (log above)"
}

# --- templates ---------------------------------------------------------------------------------------------

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

# --- what /proc says ---------------------------------------------------------------------------------------

CLK_TCK=$(getconf CLK_TCK)

# The processes of process group $1: a server and, for nginx, its workers.
group_pids() {
  pgrep -g "$1" 2>/dev/null || true
}

# utime + stime, in clock ticks, of every process in group $1 (threads included). Fields are counted after
# the ")" that ends the command name, which may contain spaces.
group_cpu_ticks() {
  local pid files=()
  for pid in $(group_pids "$1"); do files+=("/proc/$pid/stat"); done
  ((${#files[@]} > 0)) || { printf '0'; return 0; }
  cat "${files[@]}" 2>/dev/null | awk '{ sub(/^.*\) /, ""); sum += $12 + $13 } END { printf "%d", sum }'
}

# Resident memory in KiB of every process in group $1.
group_rss_kib() {
  local pid files=()
  for pid in $(group_pids "$1"); do files+=("/proc/$pid/status"); done
  ((${#files[@]} > 0)) || { printf '0'; return 0; }
  cat "${files[@]}" 2>/dev/null | awk '/^VmRSS:/ { sum += $2 } END { printf "%d", sum }'
}

# How group $1 is made up, for the report: "3 processes, 3 threads".
group_shape() {
  local pid files=()
  for pid in $(group_pids "$1"); do files+=("/proc/$pid/status"); done
  cat "${files[@]}" 2>/dev/null |
    awk '/^Threads:/ { p++; t += $2 } END { printf "%d process%s, %d thread%s", p, (p == 1 ? "" : "es"), t, (t == 1 ? "" : "s") }'
}

# CPU time (user + system, clock ticks) of the main shell's reaped children: a load generator's own time
# is the difference across its run, since the shell reaps it (through `timeout`) and nothing else meanwhile.
# $$, not $BASHPID: this runs in a command substitution's subshell, and the children are the main shell's.
children_cpu_ticks() {
  awk '{ sub(/^.*\) /, ""); printf "%d", $14 + $15 }' "/proc/$$/stat"
}

# Converts 10s / 1m / 500ms to whole seconds (at least 1).
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
