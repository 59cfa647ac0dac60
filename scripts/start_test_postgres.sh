#!/usr/bin/env bash
# Start a throw-away PostgreSQL server on loopback for the case-store tests and print its URL.
# Usage: export MEDCM_TEST_POSTGRES_URL=$(bash scripts/start_test_postgres.sh)
# Needs Debian's postgresql package (installed by .ci/run). The server lives in a temporary folder
# (/tmp/medcm-pg.*) and listens on 127.0.0.1 only, on a free port; stop it with pg_ctl -D <folder> stop.
set -euo pipefail
PORT=${MEDCM_TEST_POSTGRES_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
DATA=$(mktemp -d /tmp/medcm-pg.XXXXXX)
AS=()
if [ "$(id -u)" = 0 ]; then  # the server refuses to run as root
  chown postgres "$DATA"
  AS=(runuser -u postgres --)
fi
"${AS[@]}" "$BIN/initdb" -D "$DATA" -A trust -U postgres >/dev/null
"${AS[@]}" "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DATA" start >/dev/null
"$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres medcm_test
echo "postgresql+psycopg://postgres@127.0.0.1:$PORT/medcm_test"
