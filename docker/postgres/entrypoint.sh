#!/bin/sh
# First start: initdb into $PGDATA with POSTGRES_USER (superuser, password POSTGRES_PASSWORD) and
# create POSTGRES_DB, as the official postgres image does; then run the server on every
# interface of the container (the compose network; nothing is published to the host).
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}

if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "docker-entrypoint.sh: POSTGRES_PASSWORD is empty; set it (docker/.env)" >&2
    exit 1
  fi
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb --pgdata="$PGDATA" --username="$user" --pwfile="$pwfile" --auth-local=trust \
    --auth-host=scram-sha-256 --encoding=UTF8 --locale=C >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait --silent start
  if [ "$db" != postgres ]; then
    psql --username="$user" --dbname=postgres --set=ON_ERROR_STOP=1 --quiet \
      --command="CREATE DATABASE \"$db\""
  fi
  pg_ctl --pgdata="$PGDATA" --mode=fast --wait --silent stop
  echo "docker-entrypoint.sh: initialised $PGDATA (role $user, database $db)"
fi

if [ "${1:-}" = postgres ]; then
  shift
  exec postgres -c listen_addresses='*' "$@"
fi
exec "$@"
