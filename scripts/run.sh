#!/usr/bin/env bash
# Runs the reference deployment on this machine: session, cache and realtime
# redis-server on 6379, 6380 and 6381, and keyway on 127.0.0.1:6390 in front
# of them. Ctrl-C stops keyway and every Redis this script started.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
echo "run: building keyway (release; the first build takes a few minutes, later ones seconds)"
cargo build --release

rundir="run"
mkdir -p "$rundir"
started=()

cleanup() {
  for pidfile in "${started[@]}"; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
}
trap cleanup EXIT INT TERM

for entry in session:6379 cache:6380 realtime:6381; do
  name=${entry%%:*}
  port=${entry##*:}
  if redis-cli -p "$port" PING >/dev/null 2>&1; then
    echo "run: a Redis already answers on $port; using it as the $name pool"
    continue
  fi
  mkdir -p "$rundir/$name"
  redis-server --port "$port" --bind 127.0.0.1 --daemonize yes \
    --dir "$PWD/$rundir/$name" --pidfile "$PWD/$rundir/$name.pid" \
    --logfile "$PWD/$rundir/$name.log" --save "" --appendonly no
  started+=("$PWD/$rundir/$name.pid")
  for _ in $(seq 50); do
    redis-cli -p "$port" PING >/dev/null 2>&1 && break
    sleep 0.1
  done
  echo "run: started the $name pool's redis-server on 127.0.0.1:$port"
done

echo "run: keyway on 127.0.0.1:6390 — try: redis-cli -p 6390 SET session:abc 1"
echo "run: metrics on http://127.0.0.1:9390/metrics; where a key goes: ./target/release/keyway route KEY"
echo "run: Ctrl-C (or kill $$) stops keyway and every Redis this script started"
./target/release/keyway --config conf/keyway.toml &
keyway_pid=$!
trap 'kill $keyway_pid 2>/dev/null || true; cleanup' EXIT INT TERM
wait $keyway_pid
