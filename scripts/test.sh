#!/usr/bin/env bash
# Runs keyway's whole test suite: installs what the tests start (Redis from
# Debian's packages, redis-py from PyPI and ioredis from npm, each only
# when missing), then the unit and integration tests against real servers.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
if [ -x tests/clients/install.sh ]; then
  tests/clients/install.sh
fi
cargo test --all-targets "$@"
