#!/usr/bin/env bash
# Installs what the driver matrix (tests/tests/drivers.rs, the programs beside this file)
# needs and a fresh Debian machine lacks: the PostgreSQL JDBC driver and a JDK, psycopg 3
# and asyncpg for Python, node-postgres for Node.js. Run as root; idempotent, and quick when
# everything is already there.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export DEBIAN_FRONTEND=noninteractive

apt_wanted=()
[ -f /usr/share/java/postgresql.jar ] || apt_wanted+=(libpostgresql-jdbc-java)
command -v javac >/dev/null 2>&1 || apt_wanted+=(default-jdk-headless)
command -v python3 >/dev/null 2>&1 || apt_wanted+=(python3)
python3 -m pip --version >/dev/null 2>&1 || apt_wanted+=(python3-pip)
command -v npm >/dev/null 2>&1 || apt_wanted+=(nodejs npm)
if [ ${#apt_wanted[@]} -gt 0 ]; then
  echo "installing ${apt_wanted[*]} ..."
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${apt_wanted[@]}" >/dev/null
fi

python_pkgs=("psycopg[binary]==3.3.9" "asyncpg==0.32.0")
if ! python3 -c 'import psycopg, psycopg_binary, asyncpg' >/dev/null 2>&1; then
  echo "installing ${python_pkgs[*]} ..."
  # Debian's own python3 refuses pip installs outside a virtualenv unless told otherwise.
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "${python_pkgs[@]}" ||
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --break-system-packages "${python_pkgs[@]}"
fi

if [ ! -d "$here/node/node_modules/pg" ]; then
  echo "installing node-postgres ..."
  (cd "$here/node" && npm install --no-audit --no-fund --loglevel=error --omit-lockfile-registry-resolved)
fi
