#!/usr/bin/env bash
# Runs keyway's whole test suite: installs what the tests start (Redis from
# Debian's packages, redis-py from PyPI, ioredis from npm (Node.js and npm
# from Debian's packages when missing), promtool from Debian's prometheus
# package, each only when missing), then the unit and integration tests
# against real servers.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
tests/clients/install.sh
bash tests/deploy/install.sh >/dev/null
cargo test --all-targets "$@"
