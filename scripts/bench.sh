#!/usr/bin/env bash
# End-to-end benchmark on loopback, in one run: redis-server direct, keyway
# in front of it, and twemproxy (nutcracker) in front of the same server,
# measured with redis-benchmark. Prints ops/s, latency, the ratios
# keyway/direct and keyway/twemproxy, and CPU time per request of each
# proxy (utime+stime from /proc). Each scenario runs ROUNDS times, the three
# targets one after the other in each round; the table shows the medians.
# Stops every process it started, by PID.
#
#   scripts/bench.sh [requests] [rounds]      (defaults 200000, 3)
#   KEYWAY_BIN=/path/to/keyway scripts/bench.sh   (another build, e.g. before a change)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
ROUNDS=${2:-3}

scripts/install-deps.sh nutcracker
command -v nutcracker >/dev/null || { echo "bench: nutcracker (twemproxy) is required" >&2; exit 1; }
cargo build --release --quiet

# shellcheck source=scripts/lib.sh
source scripts/lib.sh

declare -A port
for name in session cache realtime; do
  port[$name]=$(free_port)
  start_redis "${port[$name]}"
done
DIRECT=${port[cache]}

KW=$(free_port); KW_ADMIN=$(free_port)
start_keyway() { # $1 = true|false for per-command metrics
  cat > "$work/keyway.toml" <<TOML
[server]
metrics = $1
[pools.session]
url = "redis://127.0.0.1:${port[session]}"
[pools.cache]
url = "redis://127.0.0.1:${port[cache]}"
[pools.realtime]
url = "redis://127.0.0.1:${port[realtime]}"
[routes]
default = "cache"
prefixes = [{ prefix = "session:", pool = "session" }, { prefix = "rate:", pool = "realtime" }]
TOML
  KEYWAY_LISTEN=127.0.0.1:$KW KEYWAY_ADMIN=127.0.0.1:$KW_ADMIN KEYWAY_LOG=warn \
    "${KEYWAY_BIN:-./target/release/keyway}" --config "$work/keyway.toml" 2>"$work/keyway.log" &
  KW_PID=$!
  pids+=($KW_PID)
  wait_port "$KW"
}
start_keyway true

TW=$(free_port)
cat > "$work/nutcracker.yml" <<YML
bench:
  listen: 127.0.0.1:$TW
  hash: fnv1a_64
  distribution: ketama
  redis: true
  auto_eject_hosts: false
  server_connections: 1
  servers:
   - 127.0.0.1:$DIRECT:1
YML
nutcracker -c "$work/nutcracker.yml" -o "$work/nutcracker.log" &
TW_PID=$!
pids+=($TW_PID)
wait_port "$TW"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

# run LABEL PORT PID(or -) REQUESTS ARGS... -> "label|test|rps|p50|p99|cpu_us_per_req"
# REQUESTS is how many requests the whole run sends (for CPU per request).
run() {
  local label=$1 p=$2 pid=$3 total=$4; shift 4
  local before=0 after=0
  [ "$pid" != - ] && before=$(cpu_ticks "$pid")
  local csv
  csv=$(redis-benchmark -h 127.0.0.1 -p "$p" --csv "$@" 2>/dev/null | tail -n +2)
  [ "$pid" != - ] && after=$(cpu_ticks "$pid")
  # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
  echo "$csv" | while IFS=, read -r test rps avg min p50 p95 p99 max; do
    local cpu="-"
    if [ "$pid" != - ]; then
      cpu=$(python3 -c "print(round(($after-$before)/$TICK*1e6/$total, 2))")
    fi
    printf '%s|%s|%s|%s|%s|%s\n' "$label" "${test//\"/}" "${rps//\"/}" "${p50//\"/}" "${p99//\"/}" "$cpu"
  done
}

# Peak resident memory of keyway while the benchmark runs, sampled every
# 200 ms by a background loop stopped (by PID) at the end.
peak="$work/peak_rss"
echo 0 > "$peak"
( max=0
  while rss_now=$(awk '/VmRSS/ {print $2}' "/proc/$KW_PID/status" 2>/dev/null) && [ -n "$rss_now" ]; do
    [ "$rss_now" -gt "$max" ] && max=$rss_now && echo "$max" > "$peak"
    sleep 0.2
  done ) &
SAMPLER=$!
pids+=($SAMPLER)

results="$work/results"
: > "$results"
for round in $(seq "$ROUNDS"); do
  echo "bench: round $round of $ROUNDS" >&2
  for scenario in "c50:$((2 * N)):-c 50 -n $N -t get,set" "p16:$((2 * N)):-c 50 -n $N -P 16 -t get,set" "c1:$((N / 5)):-c 1 -n $((N / 10)) -t get,set"; do
    name=${scenario%%:*}; rest=${scenario#*:}; total=${rest%%:*}; args=${rest#*:}
    # shellcheck disable=SC2086
    run "direct/$name" "$DIRECT" - "$total" $args >> "$results"
    # shellcheck disable=SC2086
    run "keyway/$name" "$KW" "$KW_PID" "$total" $args >> "$results"
    # shellcheck disable=SC2086
    run "twemproxy/$name" "$TW" "$TW_PID" "$total" $args >> "$results"
  done
  run "keyway/mget3" "$KW" "$KW_PID" "$N" -c 50 -n "$N" MGET "session:{a}" "user:{b}" "rate:{c}" >> "$results"
done

kill "$SAMPLER" 2>/dev/null || true
peak_rss=$(cat "$peak")

# Metrics off, same run: what recording costs.
kill "$KW_PID"; wait "$KW_PID" 2>/dev/null || true
start_keyway false
run "keyway-nometrics/c50" "$KW" "$KW_PID" $((2 * N)) -c 50 -n "$N" -t get,set >> "$results"
run "keyway-nometrics/p16" "$KW" "$KW_PID" $((2 * N)) -c 50 -n "$N" -P 16 -t get,set >> "$results"

rss=$(awk '/VmRSS/ {print $2}' "/proc/$KW_PID/status")
python3 - "$results" "$rss" "$ROUNDS" "$peak_rss" <<'PY'
import sys, statistics
runs = {}
for line in open(sys.argv[1]):
    if line.strip():
        r = line.strip().split("|")
        runs.setdefault((r[0], r[1]), []).append(r)

def median(values):
    if "-" in values:
        return "-"
    return f"{statistics.median(float(v) for v in values):g}"

# The median of each column over the rounds (a row per target and test).
rows = [[k[0], k[1]] + [median([r[i] for r in rs]) for i in range(2, 6)] for k, rs in runs.items()]
data = {(r[0], r[1]): r for r in rows}
print(f"medians of {sys.argv[3]} rounds")
print(f"{'target':<24} {'test':<6} {'ops/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'cpu us/req':>10}")
for r in rows:
    print(f"{r[0]:<24} {r[1][:6]:<6} {float(r[2]):>10.0f} {r[3]:>8} {r[4]:>8} {r[5]:>10}")
print()
print("ratios (same run, medians):")
for scen in ("c50", "p16", "c1"):
    for test in ("SET", "GET"):
        d = data.get((f"direct/{scen}", test)); k = data.get((f"keyway/{scen}", test)); t = data.get((f"twemproxy/{scen}", test))
        if not (d and k and t):
            continue
        line = f"  {scen:<4} {test}: keyway/direct {float(k[2])/float(d[2]):.2f}  keyway/twemproxy {float(k[2])/float(t[2]):.2f}"
        if k[5] != "-" and t[5] != "-" and float(t[5]) > 0:
            line += f"  cpu keyway/twemproxy {float(k[5])/float(t[5]):.2f}"
        if scen == "c1":
            line += f"  added p50 {1000*(float(k[3])-float(d[3])):.0f}us p99 {1000*(float(k[4])-float(d[4])):.0f}us"
        print(line)
for scen in ("c50", "p16"):
    for test in ("SET", "GET"):
        on = data.get((f"keyway/{scen}", test)); off = data.get((f"keyway-nometrics/{scen}", test))
        if on and off:
            print(f"  metrics on/off {scen} {test}: {float(on[2])/float(off[2]):.3f}")
print(f"\nkeyway RSS: peak under the load above {int(sys.argv[4])/1024:.1f} MiB, after the run {int(sys.argv[2])/1024:.1f} MiB")
PY
