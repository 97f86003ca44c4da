#!/usr/bin/env bash
# Builds keyway with profile-guided optimisation, as the container image
# ships it: an instrumented build serves a training load (redis-benchmark
# through keyway in front of a redis-server of its own, then of a
# three-master Redis Cluster, on loopback: unpipelined, pipelined, one
# client, MSET and the other commands redis-benchmark sends), then the
# final build arranges the code by the
# profile that load recorded. Measured (BENCHMARKS.md): a sixth fewer
# instructions and a fifth of the first-level code cache misses per
# request, a quarter less user CPU per request.
#
#   scripts/build-pgo.sh [cargo-profile]    (default: release)
#   scripts/build-pgo.sh --deps    (only the instrumented build, e.g. of
#     the dependencies: the container image's cached layer)
#
# The binary lands in $CARGO_TARGET_DIR/pgo/<profile>/keyway (target/ by
# default); its path is the last line printed. Needs redis-server and
# redis-benchmark (installed by scripts/install-deps.sh when missing) and
# the toolchain's llvm-profdata (`rustup component add llvm-tools`, done
# here when missing). Without llvm-profdata it says so and builds without
# a profile. Stops every process it started, by PID; needs no input.
set -euo pipefail
cd "$(dirname "$0")/.."
exec </dev/null
profile=${1:-release}
target=${CARGO_TARGET_DIR:-$PWD/target}
case "$target" in /*) ;; *) target=$PWD/$target ;; esac
out="$target/pgo"
# A fixed place for the raw profile: the instrumented build's flags, and so
# its cached dependencies, stay the same from one run to the next.
raw="$out/train/raw"

# The instrumented build has the final build's optimisation settings: a
# profile taken from a build with others (no LTO, more codegen units) was
# measured to match it no better than no profile at all.
train() {
  RUSTFLAGS="-Cprofile-generate=$raw" CARGO_TARGET_DIR="$out/train" \
    cargo build --locked --release --bin keyway >&2
}
if [ "$profile" = "--deps" ]; then
  train
  exit 0
fi

scripts/install-deps.sh redis-tools >&2

profdata() {
  local sysroot host
  sysroot=$(rustc --print sysroot)
  host=$(rustc -vV | sed -n 's/^host: //p')
  echo "$sysroot/lib/rustlib/$host/bin/llvm-profdata"
}
if [ ! -x "$(profdata)" ]; then
  echo "build-pgo: rustup component add llvm-tools" >&2
  rustup component add llvm-tools >&2 || rustup component add llvm-tools-preview >&2 || true
fi
if [ ! -x "$(profdata)" ]; then
  echo "build-pgo: no llvm-profdata in the Rust toolchain: building WITHOUT a profile" >&2
  CARGO_TARGET_DIR="$out" cargo build --locked --profile "$profile" --bin keyway >&2
  echo "$out/$profile/keyway"
  exit 0
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# A loopback port nothing listens on (no python in a bare build image),
# with its cluster bus port (+10000) free too, a cluster node needs both;
# both below Linux's ephemeral range (from 32768), where a port nothing
# listens on may still be the local end of another program's connection.
free_port() {
  local port
  for _ in $(seq 50); do
    port=$((10000 + RANDOM % 12000))
    if ! (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null \
      && ! (exec 3<>/dev/tcp/127.0.0.1/"$((port + 10000))") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  echo "build-pgo: no free port" >&2
  exit 1
}
opened() {
  for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done
  return 1
}
wait_port() {
  opened "$1" && return 0
  echo "build-pgo: port $1 never opened" >&2
  exit 1
}
# start_redis ARGS...: a redis-server with ARGS on a free port, tried on
# another port if it does not start (the port was taken meanwhile); sets
# started_port (not a subshell: its PID must reach `pids`).
start_redis() {
  local port
  for _ in 1 2 3 4 5; do
    port=$(free_port)
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" "$@" >/dev/null 2>&1 &
    pids+=($!)
    if opened "$port"; then
      started_port=$port
      return
    fi
  done
  echo "build-pgo: redis-server did not start" >&2
  exit 1
}

echo "build-pgo: instrumented build (target/pgo/train)" >&2
train
rm -rf "$raw"

# train_on CONFIG-BODY LOAD...: the instrumented keyway in front of the
# pool CONFIG-BODY names, serving each redis-benchmark LOAD; its profile
# is written when it exits (SIGTERM drains and exits 0).
train_on() {
  local listen admin keyway load
  listen=$(free_port)
  admin=$(free_port)
  printf '[server]\nlisten = "127.0.0.1:%s"\nadmin = "127.0.0.1:%s"\n%s\n[routes]\ndefault = "cache"\n' \
    "$listen" "$admin" "$1" >"$work/keyway.toml"
  shift
  KEYWAY_LOG=warn "$out/train/release/keyway" --config "$work/keyway.toml" 2>>"$work/keyway.log" &
  keyway=$!
  wait_port "$listen"
  for load in "$@"; do
    # shellcheck disable=SC2086
    redis-benchmark -h 127.0.0.1 -p "$listen" -r 100000 -q $load >/dev/null 2>&1
  done
  kill -TERM "$keyway"
  wait "$keyway" || true
}

echo "build-pgo: training load, one Redis" >&2
start_redis
train_on "$(printf '[pools.cache]\nurl = "redis://127.0.0.1:%s"' "$started_port")" \
  "-c 50 -n 200000 -t get,set" "-c 50 -n 1000000 -P 16 -t get,set" \
  "-c 1 -n 20000 -t get,set" "-c 50 -n 20000"

echo "build-pgo: training load, a three-master Redis Cluster" >&2
nodes=()
for i in 1 2 3; do
  start_redis --cluster-enabled yes --cluster-config-file "nodes-$i.conf"
  nodes+=("127.0.0.1:$started_port")
done
redis-cli --cluster create "${nodes[@]}" --cluster-yes >/dev/null 2>&1
for _ in $(seq 100); do
  redis-cli -p "${nodes[0]##*:}" cluster info 2>/dev/null | grep -q cluster_state:ok && break
  sleep 0.1
done
seeds=$(IFS=,; echo "${nodes[*]}")
train_on "$(printf '[pools.cache]\nurl = "redis+cluster://%s"' "$seeds")" \
  "-c 50 -n 100000 -t get,set" "-c 50 -n 500000 -P 16 -t get,set" "-c 50 -n 10000 -t mset"

"$(profdata)" merge -o "$work/keyway.profdata" "$raw"/*.profraw
echo "build-pgo: final build with the profile (target/pgo/$profile)" >&2
RUSTFLAGS="-Cprofile-use=$work/keyway.profdata" \
  CARGO_TARGET_DIR="$out" cargo build --locked --profile "$profile" --bin keyway >&2
echo "$out/$profile/keyway"
