#!/usr/bin/env bash
# What a shared rate limit adds per request: redis-benchmark SET latency
# (-c 1 and -c 50) through keyway with no limit, a local limit, and a shared
# limit kept in a second Redis, unbatched and with shared_batch = 100. The
# limits are far above the load, so every request is admitted: what is
# measured is the cost of deciding, not of refusing.
#   scripts/shared_limits.sh [REQUESTS]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-50000}
scripts/install-deps.sh >/dev/null
cargo build --release --quiet
source scripts/lib.sh

DATA=$(free_port); start_redis "$DATA"
LIMITS=$(free_port); start_redis "$LIMITS"

run() {
  local label=$1 limit=$2 port admin pid
  port=$(free_port); admin=$(free_port)
  printf '[pools.cache]\nurl = "redis://127.0.0.1:%s"\n[pools.realtime]\nurl = "redis://127.0.0.1:%s"\n[routes]\ndefault = "cache"\n%b\n' \
    "$DATA" "$LIMITS" "$limit" > "$work/$label.toml"
  KEYWAY_LISTEN=127.0.0.1:$port KEYWAY_ADMIN=127.0.0.1:$admin KEYWAY_LOG=warn \
    "${KEYWAY_BIN:-./target/release/keyway}" --config "$work/$label.toml" &
  pid=$!; pids+=($pid)
  wait_port "$port"
  for c in 1 50; do
    redis-benchmark -p "$port" -c "$c" -n 2000 -t set -q >/dev/null 2>&1
    local out
    out=$(redis-benchmark -p "$port" -c "$c" -n "$N" -t set --csv 2>/dev/null | tail -1)
    # "test","rps","avg_latency_ms","min","p50","p95","p99","max"
    echo "$out" | awk -F'"' -v l="$label" -v c="$c" '{printf "%-16s c%-3s %10.0f ops/s  p50 %6.3f ms  p99 %6.3f ms\n", l, c, $4, $10, $14}'
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

limit='[[limits]]\nname = "api"\nscope = "global"\nrate = 10000000\nburst = 10000000'
run none ""
run local "$limit"
run shared "$limit\nshared = true"
run shared-batch100 "$limit\nshared = true\nshared_batch = 100"
