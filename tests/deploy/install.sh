#!/usr/bin/env bash
# Makes PyYAML available to tests/deploy/check_manifests.py and prints the
# python to run it with; unpacks promtool (from Debian's prometheus package,
# into tests/deploy/.promtool: no service installed) when it is not on PATH.
# Idempotent; needs no input.
#   bash tests/deploy/install.sh
#   "$(bash tests/deploy/install.sh | tail -1)" tests/deploy/check_manifests.py
# Uses tests/clients/.venv when tests/clients/install.sh made it (it installs
# PyYAML there too, and tests/deploy.rs runs the check with that python);
# else creates tests/deploy/.venv (git-ignored).
set -euo pipefail
cd "$(dirname "$0")"

if [ -x ../clients/.venv/bin/python ]; then
  venv=../clients/.venv
else
  venv=.venv
  if [ ! -x "$venv/bin/python" ]; then
    if ! python3 -m venv "$venv" 2>/dev/null; then
      echo "deploy: python3-venv missing; installing it" >&2
      sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
      rm -rf "$venv"
      python3 -m venv "$venv"
    fi
  fi
fi

if ! "$venv/bin/python" -c 'import yaml' 2>/dev/null; then
  echo "deploy: pip install pyyaml into $(cd "$venv" && pwd)" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'pyyaml>=6'
fi

# promtool checks and unit-tests the alert rules (tests/deploy.rs).
if ! command -v promtool >/dev/null 2>&1 && [ ! -x .promtool/usr/bin/promtool ]; then
  echo "deploy: unpacking promtool from Debian's prometheus package into tests/deploy/.promtool" >&2
  tmp=$(mktemp -d)
  if ! (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1); then
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    (cd "$tmp" && apt-get download prometheus >/dev/null)
  fi
  dpkg-deb -x "$tmp"/prometheus_*.deb .promtool
  rm -rf "$tmp"
fi

echo "$(cd "$venv" && pwd)/bin/python"
