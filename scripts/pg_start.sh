#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on 127.0.0.1 (a free port, data in a temp dir) for the multi-worker
# sweep tests, and print the shell lines that point bnexp at it:
#   eval "$(scripts/pg_start.sh)"            # sets BNEXP_PG_URL and BNEXP_PG_DIR
#   pytest -m postgres tests/test_postgres.py
#   scripts/pg_stop.sh "$BNEXP_PG_DIR"       # .ci/run calls this from a trap
# Uses Debian's postgresql package (installed with apt-get when initdb is missing and we are root, unless
# BNEXP_PG_NO_INSTALL is set).
# PostgreSQL refuses to run as root: as root the server runs as the `postgres` user. Trust auth on
# loopback only, fsync off: a scratch server for tests, never for results you keep.
set -euo pipefail

say() { echo "pg_start: $*" >&2; }

find_bin() {
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v initdb)")"
    return
  fi
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

BIN="$(find_bin)"
if [ -z "$BIN" ] || [ ! -x "$BIN/initdb" ]; then
  if [ "$(id -u)" -ne 0 ] || [ -n "${BNEXP_PG_NO_INSTALL:-}" ]; then
    say "initdb not found: install PostgreSQL (Debian: apt-get install -y postgresql), or set BNEXP_PG_URL"
    exit 1
  fi
  say "installing postgresql with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends postgresql >&2
  BIN="$(find_bin)"
  [ -x "$BIN/initdb" ] || { say "no initdb after installing postgresql"; exit 1; }
fi

DIR="$(mktemp -d "${TMPDIR:-/tmp}/bnexp-pg.XXXXXX")"
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  chown postgres "$DIR"
  chmod 700 "$DIR"
  as_pg() { runuser -u postgres -- "$@"; }
else
  as_pg() { "$@"; }
fi

as_pg "$BIN/initdb" -D "$DIR/data" -U bnexp --auth=trust --encoding=UTF8 --no-locale >"$DIR/initdb.log" 2>&1 \
  || { cat "$DIR/initdb.log" >&2; say "initdb failed"; exit 1; }
# -k: the unix socket lives in the temp dir too (no /var/run/postgresql needed)
as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c fsync=off -c synchronous_commit=off -c max_connections=200" \
  start >&2 || { cat "$DIR/server.log" >&2; say "server did not start"; exit 1; }
as_pg "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U bnexp bnexp
echo "$BIN" >"$DIR/bin"
say "PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT, data in $DIR"
echo "export BNEXP_PG_URL=postgresql://bnexp@127.0.0.1:$PORT/bnexp"
echo "export BNEXP_PG_DIR=$DIR"
