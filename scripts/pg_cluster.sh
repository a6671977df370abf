#!/usr/bin/env bash
# Starts a private PostgreSQL cluster for caps in a temporary directory, on a
# free port, runs the given command with CAPS_DATABASE set to it, then stops
# the cluster and removes it. PostgreSQL refuses to run as root: as root, the
# server runs as the `postgres` user (scripts/setup.sh installs PostgreSQL).
#   scripts/pg_cluster.sh target/debug/caps demo --hubs 3
set -euo pipefail

bin=${CAPS_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
dir=$(mktemp -d -t caps-pg-XXXXXX)
as_server=()
if [ "$(id -u)" -eq 0 ]; then
  chown postgres: "$dir"
  as_server=(runuser -u postgres --)
fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
stop() {
  "${as_server[@]}" "$bin/pg_ctl" -D "$dir/data" stop -m fast >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap stop EXIT
"${as_server[@]}" "$bin/initdb" -D "$dir/data" -A trust -U caps >/dev/null
"${as_server[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
psql -h 127.0.0.1 -p "$port" -U caps -d postgres -qc 'CREATE DATABASE caps'
export CAPS_DATABASE="postgres://caps@127.0.0.1:$port/caps"
echo "PostgreSQL for this run: $CAPS_DATABASE" >&2
"$@"
