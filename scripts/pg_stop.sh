#!/usr/bin/env bash
# Stop a server started by scripts/pg_start.sh and delete its temp dir: scripts/pg_stop.sh "$BNEXP_PG_DIR"
set -uo pipefail
DIR="${1:-${BNEXP_PG_DIR:-}}"
if [ -z "$DIR" ] || [ ! -f "$DIR/bin" ]; then
  echo "pg_stop: no server dir given (or not one made by pg_start.sh): ${DIR:-<empty>}" >&2
  exit 1
fi
BIN="$(cat "$DIR/bin")"
if [ "$(id -u)" -eq 0 ]; then
  runuser -u postgres -- "$BIN/pg_ctl" -D "$DIR/data" -m fast -w -t 60 stop >&2
else
  "$BIN/pg_ctl" -D "$DIR/data" -m fast -w -t 60 stop >&2
fi
rm -rf "$DIR"
