#!/usr/bin/env bash
# Runs redis-py 5.0.8's own test suite (from its PyPI source distribution)
# three times, each against a throwaway redis-server of its own on free
# loopback ports: directly, through keyway with one pool, and through keyway
# with three pools on that one server. Every test that passes directly must
# pass through keyway too, except those redis_py_suite/expected_differences.txt
# lists as keyway's deliberate differences (README, "Commands").
#
#   cargo build --release && tests/clients/redis_py_suite.sh [PYTEST_ARGS...]
#
# Exit 0: no unexpected difference; 1: some (listed), or the direct run
# passed fewer than MIN_DIRECT_PASSES tests (a broken set-up), or a run broke.
# Environment: KEYWAY_BIN (default target/release/keyway; copied to
# tests/clients/.suite/keyway-under-test first, so a rebuild during the run
# changes nothing), REDIS_SERVER (default redis-server), MIN_DIRECT_PASSES
# (default 1500), RUN_TIMEOUT seconds per pytest run (default 900), and
# PYTEST_ARGS appended to each run (e.g. -k slowlog; then set MIN_DIRECT_PASSES=1).
#
# Installs what it needs only when missing, into tests/clients/.suite
# (gitignored): a venv with pytest and redis-py 5.0.8 installed editable from
# its sdist, whose tests/ are the suite. Results of the last run stay in
# tests/clients/.suite/runs/{direct,keyway1,keyway3}/ (JUnit XML, pytest,
# keyway and redis-server logs). Needs no input; stops what it started by PID.
set -euo pipefail
exec </dev/null

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
AUX=$HERE/redis_py_suite
SUITE=$HERE/.suite
VERSION=5.0.8
SRC=$SUITE/redis-$VERSION
VENV=$SUITE/venv
PY=$VENV/bin/python
KEYWAY_BIN=${KEYWAY_BIN:-$REPO/target/release/keyway}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
MIN_DIRECT_PASSES=${MIN_DIRECT_PASSES:-1500}
RUN_TIMEOUT=${RUN_TIMEOUT:-900}
# What the venv holds; a change here reinstalls it. numpy and ujson are only
# imported at collection (Redis Stack module tests, not selected).
REQUIREMENTS=("pytest==7.4.4" "pytest-asyncio==0.23.8" "pytest-timeout==2.4.0"
              "mock==4.0.3" "packaging>=20.4" "ujson>=4.2.0" "numpy")
STAMP="redis==$VERSION (sdist, editable) ${REQUIREMENTS[*]}"
# Not selected: Redis Stack modules, cluster, TLS, replica tests. The two
# ignored files read TLS certificates (not in the sdist) at collection; all
# their tests carry the ssl or onlycluster marker anyway.
MARKERS="not redismod and not onlycluster and not ssl and not replica"
IGNORE=(--ignore=tests/test_ssl.py --ignore=tests/test_asyncio/test_cluster.py)

say() { echo "redis-py suite: $*"; }
die() { echo "redis-py suite: $*" >&2; exit 1; }

# --- what is needed, installed only when missing ----------------------------
[ -x "$KEYWAY_BIN" ] || die "no keyway binary at $KEYWAY_BIN (cargo build --release, or set KEYWAY_BIN)"
command -v "$REDIS_SERVER" >/dev/null 2>&1 || "$REPO/scripts/install-deps.sh"
command -v "$REDIS_SERVER" >/dev/null 2>&1 || die "$REDIS_SERVER not found"

mkdir -p "$SUITE"
if [ "$(cat "$SUITE/installed" 2>/dev/null)" = "$STAMP" ] && [ -f "$SRC/tests/conftest.py" ] &&
   "$PY" -c 'import redis, pytest, pytest_asyncio, pytest_timeout, mock' 2>/dev/null; then
  say "redis-py $VERSION sdist and venv already in tests/clients/.suite"
else
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    say "python3 venv module missing; apt-get install python3-venv"
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
  fi
  rm -rf "$VENV" "$SRC" "$SUITE/sdist" "$SUITE/installed"
  say "creating tests/clients/.suite/venv"
  python3 -m venv "$VENV"
  pip=("$VENV/bin/pip" --quiet --disable-pip-version-check)
  say "pip download redis==$VERSION (source distribution)"
  "${pip[@]}" download --no-binary :all: --no-deps "redis==$VERSION" -d "$SUITE/sdist"
  tar xzf "$SUITE/sdist/redis-$VERSION.tar.gz" -C "$SUITE"
  say "pip install ${REQUIREMENTS[*]}"
  "${pip[@]}" install "${REQUIREMENTS[@]}"
  say "pip install -e redis-$VERSION"
  "${pip[@]}" install -e "$SRC"
  echo "$STAMP" >"$SUITE/installed"
  say "installed redis-py $("$PY" -c 'import redis; print(redis.__version__)') from its sdist"
fi
# The sdist has no pytest configuration: ours, and our plugin beside it.
cp "$AUX/pytest.ini" "$SRC/pytest.ini"
mkdir -p "$SUITE/lib"
cp "$AUX/suite_plugin.py" "$SUITE/lib/suite_plugin.py"
cp "$KEYWAY_BIN" "$SUITE/keyway-under-test.new" && mv -f "$SUITE/keyway-under-test.new" "$SUITE/keyway-under-test"
KW=$SUITE/keyway-under-test
say "keyway under test: $KEYWAY_BIN ($("$KW" --version 2>&1 | head -1)); $("$REDIS_SERVER" --version | cut -d' ' -f1-3)"

# --- processes: started here, stopped by PID ----------------------------------
PIDS=()
stop_all() {
  local p _
  for p in ${PIDS[@]+"${PIDS[@]}"}; do kill "$p" 2>/dev/null || true; done
  for p in ${PIDS[@]+"${PIDS[@]}"}; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  PIDS=()
}
forget() { # PID: reaped already, no longer ours to stop
  local keep=() p
  for p in ${PIDS[@]+"${PIDS[@]}"}; do
    if [ "$p" != "$1" ]; then keep+=("$p"); fi
  done
  PIDS=(${keep[@]+"${keep[@]}"})
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_ports() { # N: N distinct free loopback ports
  python3 -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

wait_port() { # PORT PID WHAT
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || die "$3 exited at start"
    sleep 0.05
  done
  die "$3 did not open port $1"
}

wait_ready() { # ADMIN_PORT PID LOG: keyway's /readyz answers 200 (every pool probed healthy)
  local status
  for _ in $(seq 200); do
    kill -0 "$2" 2>/dev/null || { cat "$3" >&2; die "keyway exited at start"; }
    status=$(timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0" && printf "GET /readyz HTTP/1.0\r\n\r\n" >&3 && head -1 <&3' "$1" 2>/dev/null || true)
    [[ $status == *" 200"* ]] && return 0
    sleep 0.05
  done
  cat "$3" >&2
  die "keyway not ready on admin port $1"
}

start_redis() { # PORT DIR
  "$REDIS_SERVER" --port "$1" --bind 127.0.0.1 --dir "$2" --logfile "$2/redis.log" \
    --enable-debug-command yes --protected-mode no --save '' --appendonly no --daemonize no &
  PIDS+=($!)
  wait_port "$1" $! "redis-server"
}

start_keyway() { # CONFIG LISTEN_PORT ADMIN_PORT LOG POOL_ENV...
  local config=$1 listen=$2 admin=$3 log=$4
  shift 4
  env -u KEYWAY_CONFIG -u KEYWAY_REQUIREPASS -u KEYWAY_TLS_LISTEN \
    KEYWAY_LISTEN="127.0.0.1:$listen" KEYWAY_ADMIN="127.0.0.1:$admin" KEYWAY_LOG=warn "$@" \
    "$KW" --config "$config" >"$log" 2>&1 &
  PIDS+=($!)
  wait_ready "$admin" $! "$log"
}

run_pytest() { # NAME URL BACKEND_PORT DIR
  local name=$1 url=$2 backend=$3 dir=$4 pid rc=0 start=$SECONDS
  cd "$SRC"
  # --tb=native: pytest's own traceback renderer has aborted a run
  # (INTERNALERROR, AST recursion) on one of these tests' failures.
  SUITE_BACKEND="127.0.0.1:$backend" SUITE_GUARD_LOG="$dir/guard.log" PYTHONPATH="$SUITE/lib" \
    timeout --kill-after=30 "$RUN_TIMEOUT" "$PY" -m pytest tests/ "${IGNORE[@]}" -m "$MARKERS" \
      --redis-url="$url" -p suite_plugin -p no:cacheprovider --timeout=30 -q -rfE -W ignore \
      --tb=native --junit-xml="$dir/junit.xml" ${PYTEST_ARGS[@]+"${PYTEST_ARGS[@]}"} \
      >"$dir/pytest.log" 2>&1 &
  pid=$!
  PIDS+=($pid)
  cd "$REPO"
  wait "$pid" || rc=$?
  forget "$pid"
  [ "$rc" -eq 124 ] && say "$name: pytest stopped after ${RUN_TIMEOUT}s (RUN_TIMEOUT)"
  say "$name: $(tail -1 "$dir/pytest.log") [exit $rc, $((SECONDS - start))s]"
  local resets errors
  resets=$(grep -c ': left requirepass=' "$dir/guard.log" 2>/dev/null || true)
  errors=$(grep -c ': guard error' "$dir/guard.log" 2>/dev/null || true)
  if [ "${resets:-0}" != 0 ] || [ "${errors:-0}" != 0 ]; then
    say "$name: requirepass guard: reset the backend's password after ${resets:-0} tests, ${errors:-0} errors (${dir#"$REPO"/}/guard.log)"
  fi
}

PYTEST_ARGS=("$@")
RUNS=$SUITE/runs
rm -rf "$RUNS"

# --- 1. directly against redis-server -----------------------------------------
dir=$RUNS/direct; mkdir -p "$dir"
read -r rport _ < <(free_ports 1)
start_redis "$rport" "$dir"
say "direct: redis-server 127.0.0.1:$rport"
run_pytest direct "redis://127.0.0.1:$rport/0" "$rport" "$dir"
stop_all

# --- 2. through keyway, one pool ----------------------------------------------
dir=$RUNS/keyway1; mkdir -p "$dir"
read -r rport kport aport < <(free_ports 3)
start_redis "$rport" "$dir"
start_keyway "$AUX/keyway1.toml" "$kport" "$aport" "$dir/keyway.log" \
  REDIS_MAIN_URL="redis://127.0.0.1:$rport"
say "keyway (1 pool): keyway 127.0.0.1:$kport -> redis-server 127.0.0.1:$rport"
run_pytest "keyway (1 pool)" "redis://127.0.0.1:$kport/0" "$rport" "$dir"
stop_all

# --- 3. through keyway, three pools on one redis-server ------------------------
dir=$RUNS/keyway3; mkdir -p "$dir"
read -r rport kport aport < <(free_ports 3)
start_redis "$rport" "$dir"
start_keyway "$AUX/keyway3.toml" "$kport" "$aport" "$dir/keyway.log" \
  REDIS_SESSION_URL="redis://127.0.0.1:$rport" REDIS_CACHE_URL="redis://127.0.0.1:$rport" \
  REDIS_REALTIME_URL="redis://127.0.0.1:$rport"
say "keyway (3 pools): keyway 127.0.0.1:$kport -> session, cache, realtime on redis-server 127.0.0.1:$rport"
run_pytest "keyway (3 pools)" "redis://127.0.0.1:$kport/0" "$rport" "$dir"
stop_all

# --- compare ------------------------------------------------------------------
"$PY" "$AUX/compare.py" --expected "$AUX/expected_differences.txt" \
  --min-direct "$MIN_DIRECT_PASSES" --version "$VERSION" \
  "direct=$RUNS/direct/junit.xml" \
  "keyway (1 pool)=$RUNS/keyway1/junit.xml" \
  "keyway (3 pools)=$RUNS/keyway3/junit.xml"
