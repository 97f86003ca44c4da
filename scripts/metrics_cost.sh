#!/usr/bin/env bash
# What per-command metrics cost: two keyway processes in front of one Redis,
# one with metrics and one without (`server.metrics = false`), driven in
# alternation by the same redis-benchmark runs; prints each run's CPU time
# per request (utime+stime from /proc) and throughput, and the medians.
# Loopback timings swing by 10-15% between runs, so when valgrind is
# installed it also counts keyway's user-space instructions per request
# under callgrind, on and off: a figure that repeats exactly.
#   scripts/metrics_cost.sh [requests] [rounds]     (default 200000, 7)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
ROUNDS=${2:-7}
scripts/install-deps.sh
cargo build --release --quiet

# shellcheck source=scripts/lib.sh
source scripts/lib.sh

RP=$(free_port)
start_redis "$RP"

declare -A port pid
for mode in on off; do
  metrics=true; [ "$mode" = off ] && metrics=false
  printf '[server]\nmetrics = %s\n[pools.cache]\nurl = "redis://127.0.0.1:%s"\n[routes]\ndefault = "cache"\n' "$metrics" "$RP" > "$work/$mode.toml"
  port[$mode]=$(free_port)
  KEYWAY_LISTEN=127.0.0.1:${port[$mode]} KEYWAY_ADMIN=127.0.0.1:$(free_port) KEYWAY_LOG=warn \
    ./target/release/keyway --config "$work/$mode.toml" 2>/dev/null &
  pid[$mode]=$!
  pids+=(${pid[$mode]})
  wait_port "${port[$mode]}"
done

TICK=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
: > "$work/results"
for round in $(seq "$ROUNDS"); do
  # Alternate which goes first, so neither always runs on a warmer machine.
  order="on off"; [ $((round % 2)) -eq 0 ] && order="off on"
  for mode in $order; do
    before=$(ticks "${pid[$mode]}")
    rps=$(redis-benchmark -h 127.0.0.1 -p "${port[$mode]}" -c 50 -n "$N" -t get,set --csv 2>/dev/null | tail -n +2 | awk -F, '{gsub(/"/,"",$2); s+=$2} END {print s/NR}')
    after=$(ticks "${pid[$mode]}")
    cpu=$(python3 -c "print(($after-$before)/$TICK*1e6/(2*$N))")
    echo "$mode $cpu $rps" >> "$work/results"
    printf 'round %s metrics %-3s cpu %.2f us/req  %.0f ops/s\n' "$round" "$mode" "$cpu" "$rps"
  done
done
python3 - "$work/results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = {m: statistics.median(float(r[1]) for r in rows if r[0] == m) for m in ("on", "off")}
ops = {m: statistics.median(float(r[2]) for r in rows if r[0] == m) for m in ("on", "off")}
print(f"median CPU per request: metrics on {med['on']:.2f} us, off {med['off']:.2f} us -> {100*(med['on']/med['off']-1):+.1f}%")
print(f"median throughput: on {ops['on']:.0f} ops/s, off {ops['off']:.0f} ops/s -> {100*(ops['on']/ops['off']-1):+.1f}%")
PY

command -v valgrind >/dev/null || { echo "(valgrind not installed: no instruction counts)"; exit 0; }
# Instructions per request under callgrind: 20,000 requests after a warm-up.
for mode in on off; do
  p=$(free_port)
  KEYWAY_LISTEN=127.0.0.1:$p KEYWAY_ADMIN=127.0.0.1:$(free_port) KEYWAY_LOG=warn \
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.$mode" \
    ./target/release/keyway --config "$work/$mode.toml" 2>/dev/null &
  vg=$!
  pids+=($vg)
  for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/"$p") 2>/dev/null && break; sleep 0.1; done
  redis-benchmark -h 127.0.0.1 -p "$p" -c 50 -n 2000 -t get,set -q >/dev/null 2>&1
  callgrind_control -z "$vg" >/dev/null 2>&1
  redis-benchmark -h 127.0.0.1 -p "$p" -c 50 -n 10000 -t get,set -q >/dev/null 2>&1
  callgrind_control -d "$vg" >/dev/null 2>&1
  sleep 1
  kill "$vg"; wait "$vg" 2>/dev/null || true
  dump="$work/cg.$mode.1"  # the -d dump; the file written at exit holds only the shutdown
  total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
  echo "$mode $((total / 20000))" >> "$work/instructions"
done
python3 - "$work/instructions" <<'PY'
import sys
ins = dict(l.split() for l in open(sys.argv[1]))
on, off = int(ins["on"]), int(ins["off"])
print(f"user-space instructions per request (callgrind): metrics on {on}, off {off} -> {100*(on/off-1):+.1f}%")
PY
