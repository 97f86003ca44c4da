#!/usr/bin/env bash
# Installs the real client libraries the client checks drive through keyway:
# redis-py 5 (PyPI, plus PyYAML and kubernetes-validate for tests/deploy)
# into tests/clients/.venv and
# ioredis 5 and node-redis 5 (npm, from package.json) into tests/clients/node_modules.
# Idempotent, needs no input: each part is skipped when already installed.
set -euo pipefail
cd "$(dirname "$0")"
exec </dev/null
export DEBIAN_FRONTEND=noninteractive

if .venv/bin/python -c 'import redis, yaml, kubernetes_validate; assert redis.__version__.startswith("5.")' 2>/dev/null; then
  echo "clients: redis-py $(.venv/bin/python -c 'import redis; print(redis.__version__)') already in tests/clients/.venv"
else
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    echo "clients: python3 venv module missing; apt-get install python3-venv"
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq python3-venv >/dev/null
  fi
  echo "clients: creating tests/clients/.venv"
  rm -rf .venv
  python3 -m venv .venv
  echo "clients: pip install 'redis>=5,<6' 'pyyaml>=6' kubernetes-validate"
  .venv/bin/pip install --quiet --disable-pip-version-check 'redis>=5,<6' 'pyyaml>=6' 'kubernetes-validate>=1.33'
  echo "clients: installed redis-py $(.venv/bin/python -c 'import redis; print(redis.__version__)')"
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "clients: npm missing; apt-get install nodejs npm"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

version_of() { node -p "require('./node_modules/$1/package.json').version" 2>/dev/null; }
if [[ "$(version_of ioredis)" == 5.* && "$(version_of redis)" == 5.* && -f package-lock.json ]]; then
  echo "clients: ioredis $(version_of ioredis) and node-redis $(version_of redis) already in tests/clients/node_modules"
else
  echo "clients: npm install (ioredis 5 and node-redis 5, writes package-lock.json)"
  npm install --no-audit --no-fund --loglevel=error
  echo "clients: installed ioredis $(version_of ioredis) and node-redis $(version_of redis)"
fi
