#!/usr/bin/env bash
# Runs keyway's whole test suite: installs what the tests start (Redis from
# Debian's packages, redis-py from PyPI, ioredis and node-redis from npm
# (Node.js and npm from Debian's packages when missing), promtool from
# Debian's prometheus package, each only when missing), then the unit and
# integration tests against real servers, then redis-py's own test suite
# through keyway (tests/clients/redis_py_suite.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
tests/clients/install.sh
bash tests/deploy/install.sh >/dev/null
cargo test --all-targets "$@"
# A real client library's own test suite, directly and through keyway (the
# debug binary cargo test just built); only for a whole run, not a filter.
if [ $# -eq 0 ]; then
  KEYWAY_BIN=target/debug/keyway tests/clients/redis_py_suite.sh
fi
