#!/usr/bin/env bash
# A CPU flame graph of a running process: `bench/flamegraph.sh PID [SECONDS] [OUT.svg]`.
# Samples PID's threads with `perf record` for SECONDS (default 10) while you put load on it, then renders
# the stacks with inferno (crates.io; built into bench/.tools on first use). bench/README.md has the recipe
# this follows, step by step, and how to get a PID under load from the benchmark.
#
#   PERF_CALL_GRAPH=fp bench/flamegraph.sh PID   # frame pointers: for a build with -C force-frame-pointers=yes
#   PERF_FREQUENCY=499 bench/flamegraph.sh PID   # samples per second per CPU (default 999)
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  printf 'flamegraph: error: %s\n' "$*" >&2
  exit 1
}

PID=${1:-}
SECONDS_TO_SAMPLE=${2:-10}
OUT=${3:-flamegraph-$PID.svg}
TOOLS_DIR=${BENCH_TOOLS_DIR:-$PWD/bench/.tools}
CALL_GRAPH=${PERF_CALL_GRAPH:-dwarf}
FREQUENCY=${PERF_FREQUENCY:-999}

[[ $PID =~ ^[0-9]+$ ]] || die "usage: bench/flamegraph.sh PID [SECONDS] [OUT.svg]"
kill -0 "$PID" 2>/dev/null || die "no process $PID"
{ [[ $SECONDS_TO_SAMPLE =~ ^[1-9][0-9]*$ ]] && ((SECONDS_TO_SAMPLE <= 120)); } || die "SECONDS: 1 to 120"
[[ $CALL_GRAPH == dwarf || $CALL_GRAPH == fp ]] || die "PERF_CALL_GRAPH: dwarf or fp"

if ! command -v perf >/dev/null; then
  command -v apt-get >/dev/null || die "perf is missing (Debian: linux-perf)"
  DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends linux-perf >/dev/null ||
    die "apt-get install linux-perf failed"
fi
if [[ ! -x $TOOLS_DIR/bin/inferno-flamegraph || ! -x $TOOLS_DIR/bin/inferno-collapse-perf ]]; then
  printf 'flamegraph: building inferno into %s (cargo install, a few minutes, once)\n' "$TOOLS_DIR" >&2
  cargo install inferno --locked --root "$TOOLS_DIR" --quiet || die "cargo install inferno failed"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/flamegraph.XXXXXX")
trap 'rm -rf "$work"' EXIT
# No hardware counters in most VMs: cpu-clock is a software timer and works everywhere. DWARF unwinding
# needs no rebuild (the release profile keeps debug line info) but writes 8 KiB of stack per sample.
call_graph=(--call-graph "dwarf,8192")
[[ $CALL_GRAPH == dwarf ]] || call_graph=(--call-graph fp)
perf record -e cpu-clock -F "$FREQUENCY" "${call_graph[@]}" -p "$PID" -o "$work/perf.data" -- sleep "$SECONDS_TO_SAMPLE" \
  2>"$work/record.log" || die "perf record failed: $(tail -n 5 "$work/record.log")"
perf script -i "$work/perf.data" 2>/dev/null | "$TOOLS_DIR/bin/inferno-collapse-perf" >"$work/folded"
[[ -s $work/folded ]] || die "no samples (was process $PID busy?)"
"$TOOLS_DIR/bin/inferno-flamegraph" --title "PID $PID, ${SECONDS_TO_SAMPLE}s, cpu-clock" <"$work/folded" >"$OUT"
# The hottest functions by own time, for a text summary next to the picture.
printf 'flamegraph: wrote %s; functions with the most samples on top of the stack:\n' "$OUT" >&2
awk '{ n = $NF; $NF = ""; k = split($0, frames, ";"); leaf = frames[k]; gsub(/ +$/, "", leaf); self[leaf] += n; total += n }
  END { for (f in self) printf "%6.2f%%  %s\n", self[f] * 100 / total, f }' "$work/folded" | sort -rn | head -n 15 >&2
