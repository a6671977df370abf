#!/usr/bin/env bash
# Installs what building and testing caps needs, and nothing that is already
# there: Debian's libssl-dev and pkg-config (rust_socketio's TLS stack), Node.js
# and npm (the JavaScript tests), Chromium (the dashboard's browser test), and
# PostgreSQL's server programs and psql (the tests of a group of hubs start a
# private cluster of their own; no server is left running), HAProxy (the load
# balancer in front of a group, in its test), and the npm packages from
# package-lock.json (socket.io, socket.io-client, playwright-core;
# playwright-core downloads no browser).
#
# `scripts/setup.sh demo` installs only what `make demo` runs: the build's
# packages (one hub, vendors and drivers in one process need nothing else).
set -euo pipefail
cd "$(dirname "$0")/.."
only_demo=false
[ "${1:-}" = demo ] && only_demo=true

missing=()
for package in libssl-dev pkg-config; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if ! $only_demo; then
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  # The dashboard's browser test drives Debian's Chromium.
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
  command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
  command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi

$only_demo && exit 0

# npm ci only when a lockfile changed since the last install: the tests'
# packages here, the benchmark's Node peer in bench/.
for dir in . bench; do
  stamp="$dir/node_modules/.package-lock.json"
  if [ ! -f "$stamp" ] || [ "$dir/package-lock.json" -nt "$stamp" ]; then
    npm ci --prefix "$dir" --no-audit --no-fund
  fi
done
