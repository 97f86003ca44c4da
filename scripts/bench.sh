#!/usr/bin/env bash
# End-to-end benchmark on loopback, in one run: redis-server direct, keyway
# in front of it, and its peers in front of the same server: twemproxy
# (nutcracker), predixy (a C++ RESP proxy) and HAProxy in `mode tcp` (a
# plain L4 forwarder: no RESP parsing, one backend connection per client),
# all measured with redis-benchmark. Then the same in front of a Redis
# Cluster (three masters, three replicas): keyway's cluster pool, predixy's
# ClusterServerPool and redis-benchmark --cluster straight to the masters. Prints ops/s, latency, the ratios
# keyway/direct and keyway/each peer, and CPU time per request of each
# proxy (the run time of its threads from /proc/PID/task/*/schedstat, in
# nanoseconds). Each scenario runs ROUNDS times, the targets one after the
# other in each round; the table shows the medians, and the range of the
# CPU figure over the rounds.
# Stops every process it started, by PID.
#
#   scripts/bench.sh [requests] [rounds]      (defaults 200000, 3)
#   (keyway is built as the container image ships it: scripts/build-pgo.sh)
#   KEYWAY_BIN=/path/to/keyway scripts/bench.sh   (another build, e.g. before a change; no cargo build)
#   BENCH_PIN=1 scripts/bench.sh   (redis-benchmark on CPU 0; redis-servers and proxies on CPU 1)
#   BENCH_CLUSTER=0 scripts/bench.sh   (without the Redis Cluster rows)
#
# Peers: twemproxy and HAProxy come from Debian's packages (installed when
# missing). predixy has no package: it is downloaded (a pinned commit, the
# 7.0.1 tag) and built once into target/peers/; PREDIXY_SRC=<tarball or
# source directory> builds it from a local copy instead, PREDIXY_BIN=<path>
# uses a ready binary. A peer that cannot be had is skipped with a line
# saying why; the other rows are still measured.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
ROUNDS=${2:-3}

scripts/install-deps.sh nutcracker
command -v nutcracker >/dev/null || { echo "bench: nutcracker (twemproxy) is required" >&2; exit 1; }
[ -n "${KEYWAY_BIN:-}" ] || KEYWAY_BIN=$(scripts/build-pgo.sh release)

# shellcheck source=scripts/lib.sh
source scripts/lib.sh

skipped=()
PEERS=target/peers
PREDIXY_REF=29b48b976d5e249077fb4347db0538be00341362 # predixy tag 7.0.1

# obtain_predixy: sets PREDIXY to a predixy binary, building it when needed;
# on failure returns 1 with the reason in $why.
obtain_predixy() {
  local dir="$PEERS/predixy-$PREDIXY_REF"
  local tmp="$dir.partial" log="$PEERS/predixy-build.log"
  PREDIXY=${PREDIXY_BIN:-$dir/src/predixy}
  [ -x "$PREDIXY" ] && return 0
  [ -z "${PREDIXY_BIN:-}" ] || { why="PREDIXY_BIN=$PREDIXY_BIN is not an executable"; return 1; }
  if ! command -v g++ >/dev/null || ! command -v make >/dev/null; then
    scripts/install-deps.sh g++ make >&2 || { why="g++/make are missing and apt-get could not install them"; return 1; }
  fi
  mkdir -p "$PEERS"
  rm -rf "$tmp" && mkdir -p "$tmp"
  if [ -n "${PREDIXY_SRC:-}" ]; then
    echo "bench: building predixy from $PREDIXY_SRC" >&2
    if [ -d "$PREDIXY_SRC" ]; then
      cp -a "$PREDIXY_SRC/." "$tmp/"
    elif ! tar -xzf "$PREDIXY_SRC" -C "$tmp" --strip-components=1; then
      rm -rf "$tmp"; why="PREDIXY_SRC=$PREDIXY_SRC is neither a directory nor a .tar.gz"; return 1
    fi
  elif command -v curl >/dev/null; then
    local url="https://github.com/joyieldInc/predixy/archive/$PREDIXY_REF.tar.gz"
    echo "bench: downloading predixy ($url)" >&2
    if ! curl -fsSL --connect-timeout 15 --max-time 180 -o "$work/predixy.tar.gz" "$url" 2>"$work/predixy.curl" \
       || ! tar -xzf "$work/predixy.tar.gz" -C "$tmp" --strip-components=1; then
      rm -rf "$tmp"; why="download of $url failed: $(tail -1 "$work/predixy.curl")"; return 1
    fi
  elif command -v git >/dev/null; then
    echo "bench: cloning predixy 7.0.1" >&2
    rmdir "$tmp"
    if ! timeout 180 git clone -q --depth 1 --branch 7.0.1 https://github.com/joyieldInc/predixy.git "$tmp" 2>"$work/predixy.git" \
       || [ "$(git -C "$tmp" rev-parse HEAD)" != "$PREDIXY_REF" ]; then
      rm -rf "$tmp"; why="git clone of predixy 7.0.1 failed: $(tail -1 "$work/predixy.git")"; return 1
    fi
  else
    rm -rf "$tmp"; why="neither curl nor git is installed to download it"; return 1
  fi
  echo "bench: building predixy (make, log in $log)" >&2
  # GCC 12 no longer pulls <ctime> in through the other headers predixy uses.
  if ! timeout 900 make -C "$tmp" -j"$(nproc)" CXX='g++ -include ctime' >"$log" 2>&1 || [ ! -x "$tmp/src/predixy" ]; then
    rm -rf "$tmp"; why="its build failed (see $log)"; return 1
  fi
  rm -rf "$dir" && mv "$tmp" "$dir"
  PREDIXY=$dir/src/predixy
}

# obtain_haproxy: sets HAPROXY, installing Debian's haproxy when missing.
obtain_haproxy() {
  HAPROXY=${HAPROXY_BIN:-$(command -v haproxy || true)}
  if [ -z "$HAPROXY" ]; then
    scripts/install-deps.sh haproxy >&2 || true
    HAPROXY=$(command -v haproxy || true)
  fi
  [ -n "$HAPROXY" ] || { why="haproxy is not installed and apt-get install haproxy failed"; return 1; }
}

why=""
obtain_predixy || { skipped+=("predixy row skipped: $why"); PREDIXY=""; }
why=""
obtain_haproxy || { skipped+=("haproxy row skipped: $why"); HAPROXY=""; }
for note in ${skipped[@]+"${skipped[@]}"}; do echo "bench: $note" >&2; done

# BENCH_PIN=1: redis-benchmark on CPU 0, everything it talks to on CPU 1.
CLIENT=(); SRV=()
pin() { :; }
if [ "${BENCH_PIN:-0}" = 1 ]; then
  if [ "$(nproc)" -ge 2 ]; then
    CLIENT=(taskset -c 0); SRV=(taskset -c 1)
    pin() { taskset -a -p -c 1 "$1" >/dev/null; }
  else
    echo "bench: BENCH_PIN=1 needs two CPUs; running unpinned" >&2
  fi
fi

# try_port PORT: like wait_port, but returns 1 instead of exiting.
try_port() {
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done
  return 1
}

declare -A port
for name in session cache realtime; do
  port[$name]=$(free_port)
  start_redis "${port[$name]}"
  pin "${pids[-1]}"
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
    "${SRV[@]}" "${KEYWAY_BIN:-./target/release/keyway}" --config "$work/keyway.toml" 2>"$work/keyway.log" &
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
# Its stats port on a free one too: the default (22222) may be taken by
# a twemproxy already running on this machine, and it would not start.
"${SRV[@]}" nutcracker -c "$work/nutcracker.yml" -a 127.0.0.1 -s "$(free_port)" -o "$work/nutcracker.log" &
TW_PID=$!
pids+=($TW_PID)
wait_port "$TW"

# The measured targets, "label:port:pid" (pid - for Redis itself).
targets=("direct:$DIRECT:-" "keyway:$KW:$KW_PID" "twemproxy:$TW:$TW_PID")

# start_peer NAME PORT CMD...: starts a peer proxy and adds it to targets,
# or notes why its row is skipped.
start_peer() {
  local name=$1 p=$2; shift 2
  "${SRV[@]}" "$@" >"$work/$name.out" 2>&1 &
  local pid=$!
  pids+=($pid)
  if try_port "$p" && kill -0 "$pid" 2>/dev/null; then
    targets+=("$name:$p:$pid")
  else
    kill "$pid" 2>/dev/null || true
    skipped+=("$name row skipped: it did not start: $(tail -2 "$work/$name.out" | tr '\n' ' ')")
  fi
}

if [ -n "$PREDIXY" ]; then
  PX=$(free_port)
  sed -e "s|@LISTEN@|$PX|" -e "s|@BACKEND@|$DIRECT|" -e "s|@LOG@|$work/predixy.log|" \
    conf/bench/predixy.conf > "$work/predixy.conf"
  start_peer predixy "$PX" "$PREDIXY" "$work/predixy.conf"
fi
if [ -n "$HAPROXY" ]; then
  HA=$(free_port)
  sed -e "s|@LISTEN@|$HA|" -e "s|@BACKEND@|$DIRECT|" conf/bench/haproxy.cfg > "$work/haproxy.cfg"
  # -db: foreground, no master process, so the PID is the one doing the work.
  start_peer haproxy "$HA" "$HAPROXY" -db -f "$work/haproxy.cfg"
fi

# CPU time of a process in nanoseconds: the run time of each of its
# threads from /proc/PID/task/*/schedstat (exact, where /proc/PID/stat
# counts 10 ms ticks, 5% of a pipelined run); ticks where it is missing.
TICK=$(getconf CLK_TCK)
cpu_ns() {
  if [ -r "/proc/$1/schedstat" ]; then
    cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ns += $1} END {printf "%.0f\n", ns}'
  else
    awk -v tick="$TICK" '{printf "%.0f\n", ($14 + $15) * 1e9 / tick}' "/proc/$1/stat"
  fi
}

# run LABEL PORT PID(or -) REQUESTS ARGS... -> "label|test|rps|p50|p99|cpu_us_per_req"
# REQUESTS is how many requests the whole run sends (for CPU per request).
run() {
  local label=$1 p=$2 pid=$3 total=$4; shift 4
  local before=0 after=0
  [ "$pid" != - ] && before=$(cpu_ns "$pid")
  local csv
  # Only the result rows: --cluster prints the nodes it found first.
  csv=$("${CLIENT[@]}" redis-benchmark -h 127.0.0.1 -p "$p" --csv "$@" 2>/dev/null | grep '^"' | grep -v '^"test"' || true)
  [ "$pid" != - ] && after=$(cpu_ns "$pid")
  # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
  echo "$csv" | while IFS=, read -r test rps avg min p50 p95 p99 max; do
    [ -n "$rps" ] || continue # the run failed: no row
    local cpu="-"
    if [ "$pid" != - ]; then
      cpu=$(python3 -c "print(round(($after-$before)/1e3/$total, 3))")
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
    for t in "${targets[@]}"; do
      IFS=: read -r label tport tpid <<< "$t"
      # shellcheck disable=SC2086
      run "$label/$name" "$tport" "$tpid" "$total" $args >> "$results"
    done
  done
  run "keyway/mget3" "$KW" "$KW_PID" "$N" -c 50 -n "$N" MGET "session:{a}" "user:{b}" "rate:{c}" >> "$results"
done

kill "$SAMPLER" 2>/dev/null || true
peak_rss=$(cat "$peak")

# Cluster rows: a Redis Cluster of three masters and three replicas, with
# keyway's cluster pool, predixy's ClusterServerPool and
# redis-benchmark --cluster straight to the masters, in the same rounds.
# BENCH_CLUSTER=0 leaves them out.
if [ "${BENCH_CLUSTER:-1}" = 1 ]; then
  # A node's cluster bus is its port + 10000: ports below the ephemeral range.
  cluster_port() { python3 -c '
import random, socket
for _ in range(200):
    p = random.randrange(12000, 22000)
    try:
        for q in (p, p + 10000):
            s = socket.socket(); s.bind(("127.0.0.1", q)); s.close()
        print(p); break
    except OSError:
        pass'; }
  nodes=()
  for _ in 1 2 3 4 5 6; do
    p=$(cluster_port)
    "${SRV[@]}" redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
      --cluster-enabled yes --cluster-config-file "$work/nodes-$p.conf" --repl-diskless-sync-delay 0 >/dev/null &
    pids+=($!)
    wait_port "$p"
    nodes+=("127.0.0.1:$p")
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes </dev/null >"$work/cluster-create.log" 2>&1
  for _ in $(seq 100); do
    ok=0
    for n in "${nodes[@]}"; do
      redis-cli -p "${n##*:}" cluster info | grep -q 'cluster_state:ok' && ok=$((ok + 1))
    done
    [ "$ok" = 6 ] && break
    sleep 0.1
  done
  masters=$(redis-cli -p "${nodes[0]##*:}" cluster nodes | awk '$3 ~ /master/ {split($2, a, "@"); print a[1]}')
  CL_SEED=${nodes[0]##*:}
  KWC=$(free_port); KWC_ADMIN=$(free_port)
  cat > "$work/keyway-cluster.toml" <<TOML
[pools.cache]
url = "redis+cluster://${nodes[0]},${nodes[1]},${nodes[2]}"
[routes]
default = "cache"
TOML
  KEYWAY_LISTEN=127.0.0.1:$KWC KEYWAY_ADMIN=127.0.0.1:$KWC_ADMIN KEYWAY_LOG=warn \
    "${SRV[@]}" "${KEYWAY_BIN:-./target/release/keyway}" --config "$work/keyway-cluster.toml" 2>"$work/keyway-cluster.log" &
  KWC_PID=$!
  pids+=($KWC_PID)
  wait_port "$KWC"
  ctargets=("cluster-direct:$CL_SEED:-:--cluster" "cluster-keyway:$KWC:$KWC_PID:")
  if [ -n "$PREDIXY" ]; then
    PXC=$(free_port)
    seeds=$(for m in $masters; do echo "        + $m"; done)
    python3 -c 'import sys; t = open(sys.argv[1]).read()
print(t.replace("@LISTEN@", sys.argv[2]).replace("@LOG@", sys.argv[3]).replace("@SEEDS@", sys.argv[4]), end="")' \
      conf/bench/predixy-cluster.conf "$PXC" "$work/predixy-cluster.log" "$seeds" > "$work/predixy-cluster.conf"
    before=${#targets[@]}
    start_peer predixy-cluster "$PXC" "$PREDIXY" "$work/predixy-cluster.conf"
    if [ ${#targets[@]} -gt "$before" ]; then
      unset 'targets[-1]'
      ctargets+=("cluster-predixy:$PXC:${pids[-1]}:")
    fi
  fi
  for round in $(seq "$ROUNDS"); do
    echo "bench: cluster round $round of $ROUNDS" >&2
    for scenario in "c50:$((2 * N)):-c 50 -n $N -r 100000 -t get,set" "p16:$((2 * N)):-c 50 -n $N -r 100000 -P 16 -t get,set"; do
      name=${scenario%%:*}; rest=${scenario#*:}; total=${rest%%:*}; args=${rest#*:}
      for t in "${ctargets[@]}"; do
        IFS=: read -r label tport tpid extra <<< "$t"
        # shellcheck disable=SC2086
        run "$label/$name" "$tport" "$tpid" "$total" $extra $args >> "$results"
      done
    done
  done
fi

# Metrics off, same run: what recording costs.
kill "$KW_PID"; wait "$KW_PID" 2>/dev/null || true
start_keyway false
run "keyway-nometrics/c50" "$KW" "$KW_PID" $((2 * N)) -c 50 -n "$N" -t get,set >> "$results"
run "keyway-nometrics/p16" "$KW" "$KW_PID" $((2 * N)) -c 50 -n "$N" -P 16 -t get,set >> "$results"

rss=$(awk '/VmRSS/ {print $2}' "/proc/$KW_PID/status")
pinned=no; [ ${#SRV[@]} -gt 0 ] && pinned="yes (redis-benchmark CPU 0, servers and proxies CPU 1)"
python3 - "$results" "$rss" "$ROUNDS" "$peak_rss" "$pinned" ${skipped[@]+"${skipped[@]}"} <<'PY'
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

def spread(values):
    if "-" in values or len(values) < 2:
        return ""
    v = [float(x) for x in values]
    return f"{min(v):.3g}-{max(v):.3g}"

# The median of each column over the rounds (a row per target and test),
# and the range of the CPU figures over the rounds.
rows = [[k[0], k[1]] + [median([r[i] for r in rs]) for i in range(2, 6)] for k, rs in runs.items()]
spreads = {(k[0], k[1]): spread([r[5] for r in rs]) for k, rs in runs.items()}
data = {(r[0], r[1]): r for r in rows}
print(f"medians of {sys.argv[3]} rounds; pinned: {sys.argv[5]}")
print(f"{'target':<24} {'test':<6} {'ops/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'cpu us/req':>10}  cpu range over rounds")
for r in rows:
    cpu = r[5] if r[5] == "-" else f"{float(r[5]):.3g}"
    print(f"{r[0]:<24} {r[1][:6]:<6} {float(r[2]):>10.0f} {r[3]:>8} {r[4]:>8} {cpu:>10}  {spreads[(r[0], r[1])]}")
print()
peers = [p for p in ("twemproxy", "predixy", "haproxy") if any(k[0].startswith(p + "/") for k in data)]
print("ratios keyway/X (same run, medians): ops/s, and cpu us/req for the proxies:")
for scen in ("c50", "p16", "c1"):
    for test in ("SET", "GET"):
        d = data.get((f"direct/{scen}", test)); k = data.get((f"keyway/{scen}", test))
        if not (d and k):
            continue
        line = f"  {scen:<4} {test}: /direct {float(k[2])/float(d[2]):.2f}"
        for p in peers:
            t = data.get((f"{p}/{scen}", test))
            if not t:
                continue
            line += f"  /{p} {float(k[2])/float(t[2]):.2f}"
            if k[5] != "-" and t[5] != "-" and float(t[5]) > 0:
                line += f" cpu {float(k[5])/float(t[5]):.2f}"
        print(line)
if any(k[0].startswith("cluster-keyway/") for k in data):
    print("cluster pool (3 masters + 3 replicas), keyway/X: ops/s, and cpu us/req:")
    for scen in ("c50", "p16"):
        for test in ("SET", "GET"):
            k = data.get((f"cluster-keyway/{scen}", test))
            if not k:
                continue
            line = f"  {scen:<4} {test}: cpu {k[5]} us/req"
            d = data.get((f"cluster-direct/{scen}", test))
            if d:
                line += f"  /direct --cluster {float(k[2])/float(d[2]):.2f}"
            p = data.get((f"cluster-predixy/{scen}", test))
            if p:
                line += f"  /predixy ops {float(k[2])/float(p[2]):.2f} cpu {float(k[5])/float(p[5]):.2f}"
            s = data.get((f"keyway/{scen}", test))
            if s and s[5] != "-":
                line += f"  cpu /keyway standalone {float(k[5])/float(s[5]):.2f}"
            print(line)
print("added latency over direct at c1 (p50 / p99, us):")
for test in ("SET", "GET"):
    d = data.get(("direct/c1", test))
    if not d:
        continue
    parts = []
    for p in ["keyway"] + peers:
        t = data.get((f"{p}/c1", test))
        if t:
            parts.append(f"{p} +{1000*(float(t[3])-float(d[3])):.0f}/+{1000*(float(t[4])-float(d[4])):.0f}")
    print(f"  c1   {test}: " + "  ".join(parts))
print("keyway metrics on/off, ops/s:")
for scen in ("c50", "p16"):
    for test in ("SET", "GET"):
        on = data.get((f"keyway/{scen}", test)); off = data.get((f"keyway-nometrics/{scen}", test))
        if on and off:
            print(f"  metrics on/off {scen} {test}: {float(on[2])/float(off[2]):.3f}")
print(f"\nkeyway RSS: peak under the load above {int(sys.argv[4])/1024:.1f} MiB, after the run {int(sys.argv[2])/1024:.1f} MiB")
for note in sys.argv[6:]:
    print(note)
PY
