#!/usr/bin/env bash
# User-space instructions per request of keyway and of twemproxy, each under
# callgrind in front of the same redis-server, for the bench.sh shapes
# (c50: 50 clients unpipelined, p16: pipeline 16, c1: one client). Timings
# on a shared 2-core machine swing by 10-15%; this count repeats to within
# about 1%, so it is the figure to compare a change with. It leaves out the
# kernel (about three quarters of a proxy's CPU time here): bench.sh
# measures that. Stops every process it started, by PID.
#
#   scripts/instructions.sh [requests]      (default 20000 per test)
#   (keyway built as the container image ships it: scripts/build-pgo.sh)
#   KEYWAY_BIN=/path/to/keyway scripts/instructions.sh   (another build)
#   PREDIXY_BIN=/path/to/predixy scripts/instructions.sh (a predixy column;
#     by default the one scripts/bench.sh built into target/peers/, if any)
#   CACHE=1 scripts/instructions.sh   (also first-level cache misses per
#     request, instruction and data, from callgrind's cache simulation:
#     where instruction counts alike still cost different time; about
#     twice as slow)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
# The same callgrind options for every proxy.
CALLGRIND=(--tool=callgrind)
if [ "${CACHE:-0}" = 1 ]; then
  CALLGRIND+=(--cache-sim=yes)
fi

scripts/install-deps.sh nutcracker
for tool in valgrind nutcracker; do
  command -v "$tool" >/dev/null || { echo "instructions: $tool is required (apt-get install $tool)" >&2; exit 1; }
done
[ -n "${KEYWAY_BIN:-}" ] || KEYWAY_BIN=$(scripts/build-pgo.sh release)

# shellcheck source=scripts/lib.sh
source scripts/lib.sh

RP=$(free_port)
start_redis "$RP"

KW=$(free_port)
printf '[pools.cache]\nurl = "redis://127.0.0.1:%s"\n[routes]\ndefault = "cache"\n' "$RP" > "$work/keyway.toml"
KEYWAY_LISTEN=127.0.0.1:$KW KEYWAY_ADMIN=127.0.0.1:$(free_port) KEYWAY_LOG=warn \
  valgrind "${CALLGRIND[@]}" --callgrind-out-file="$work/cg.keyway" \
  "${KEYWAY_BIN:-./target/release/keyway}" --config "$work/keyway.toml" 2>/dev/null &
KW_PID=$!
pids+=($KW_PID)

TW=$(free_port)
printf 'bench:\n  listen: 127.0.0.1:%s\n  hash: fnv1a_64\n  redis: true\n  server_connections: 1\n  servers:\n   - 127.0.0.1:%s:1\n' "$TW" "$RP" > "$work/nutcracker.yml"
valgrind "${CALLGRIND[@]}" --callgrind-out-file="$work/cg.twemproxy" \
  nutcracker -c "$work/nutcracker.yml" -a 127.0.0.1 -s "$(free_port)" -o "$work/nutcracker.log" 2>/dev/null &
TW_PID=$!
pids+=($TW_PID)

# predixy, when bench.sh built one (or PREDIXY_BIN names one): same
# configuration as bench.sh's row, one worker thread.
PREDIXY=${PREDIXY_BIN:-$(ls target/peers/predixy-*/src/predixy 2>/dev/null | head -1)}
PX=""
if [ -n "$PREDIXY" ] && [ -x "$PREDIXY" ]; then
  PX=$(free_port)
  sed -e "s|@LISTEN@|$PX|" -e "s|@BACKEND@|$RP|" -e "s|@LOG@|$work/predixy.log|" \
    conf/bench/predixy.conf > "$work/predixy.conf"
  valgrind "${CALLGRIND[@]}" --callgrind-out-file="$work/cg.predixy" \
    "$PREDIXY" "$work/predixy.conf" >/dev/null 2>&1 &
  PX_PID=$!
  pids+=($PX_PID)
else
  echo "instructions: no predixy column (build one with scripts/bench.sh, or set PREDIXY_BIN)" >&2
fi

for p in "$KW" "$TW" ${PX:+"$PX"}; do
  for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/"$p") 2>/dev/null && break; sleep 0.1; done
done

# measure NAME PORT PID REQUESTS ARGS... -> instructions per request; with
# CACHE=1 also "instructions/I1-misses/D1-misses" into $work/misses.NAME
measure() {
  local name=$1 p=$2 pid=$3 requests=$4; shift 4
  redis-benchmark -h 127.0.0.1 -p "$p" -c 50 -n 2000 -t get,set -q >/dev/null 2>&1
  callgrind_control -z "$pid" >/dev/null 2>&1
  redis-benchmark -h 127.0.0.1 -p "$p" "$@" -q >/dev/null 2>&1
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 1
  # Each dump is a new numbered part file; the newest is this test's.
  local dump
  dump=$(ls -t "$work/cg.$name".* | head -1)
  # The totals line: Ir, then (with the cache simulation) Dr Dw I1mr D1mr
  # D1mw ..., each followed by its percentage.
  local totals
  totals=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", ""); gsub(/\([^)]*\)/, ""); print; exit}')
  # shellcheck disable=SC2086
  set -- $totals
  if [ "${CACHE:-0}" = 1 ]; then
    python3 -c "print(f'{$4/$requests:.1f}/{($5+$6)/$requests:.1f}')" > "$work/misses.$name"
  fi
  echo $(($1 / requests))
}

misses=()
printf '%-6s %12s %12s %8s %12s %8s\n' test keyway twemproxy ratio predixy ratio
for scenario in "c50:-c 50 -n $N -t get,set" "p16:-c 50 -n $((5 * N)) -P 16 -t get,set" "c1:-c 1 -n $((N / 4)) -t get,set"; do
  name=${scenario%%:*}; args=${scenario#*:}
  n=$(echo "$args" | sed -E 's/.*-n ([0-9]+).*/\1/')
  # shellcheck disable=SC2086
  k=$(measure keyway "$KW" "$KW_PID" $((2 * n)) $args)
  # shellcheck disable=SC2086
  t=$(measure twemproxy "$TW" "$TW_PID" $((2 * n)) $args)
  x=- xr=-
  if [ -n "$PX" ]; then
    # shellcheck disable=SC2086
    x=$(measure predixy "$PX" "$PX_PID" $((2 * n)) $args)
    xr=$(python3 -c "print(f'{$k/$x:.2f}')")
  fi
  printf '%-6s %12s %12s %8s %12s %8s\n' "$name" "$k" "$t" "$(python3 -c "print(f'{$k/$t:.2f}')")" "$x" "$xr"
  if [ "${CACHE:-0}" = 1 ]; then
    misses+=("$(printf '%-6s %16s %16s %16s' "$name" "$(cat "$work/misses.keyway")" \
      "$(cat "$work/misses.twemproxy")" "$([ -n "$PX" ] && cat "$work/misses.predixy" || echo -)")")
  fi
done
if [ "${CACHE:-0}" = 1 ]; then
  echo
  echo "first-level cache misses per request, instruction/data (simulated):"
  printf '%-6s %16s %16s %16s\n' test keyway twemproxy predixy
  printf '%s\n' "${misses[@]}"
fi
