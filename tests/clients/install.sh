#!/usr/bin/env bash
# Installs the real client libraries the client checks drive through keyway:
# redis-py (PyPI) into tests/clients/.venv and ioredis (npm) into
# tests/clients/node_modules. Idempotent; needs no input.
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import redis, yaml' 2>/dev/null; then
  if ! python3 -m venv .venv 2>/dev/null; then
    echo "clients: python3-venv missing; installing it"
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv .venv
  fi
  echo "clients: pip install redis (redis-py 5) and pyyaml"
  .venv/bin/pip install --quiet --disable-pip-version-check 'redis>=5,<6' 'pyyaml>=6'
fi

if [ ! -d node_modules/ioredis ]; then
  echo "clients: npm install ioredis 5"
  npm install --silent --no-audit --no-fund >/dev/null
fi
