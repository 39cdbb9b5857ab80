#!/bin/sh
# PostgreSQL for the test bed: initialise the data directory on first start, then run the
# server as the postgres user. POSTGRES_PASSWORD and POSTGRES_DB as in the usual images.
set -eu
PGBIN=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d | sort -V | tail -n 1)
PGDATA=${PGDATA:-/var/lib/postgresql/data}
export PGDATA
mkdir -p "$PGDATA" /run/postgresql
chown postgres:postgres "$PGDATA" /run/postgresql
chmod 0700 "$PGDATA"
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp)
    printf '%s\n' "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}" >"$pwfile"
    chown postgres "$pwfile"
    as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres --pwfile="$pwfile" --auth-local=trust \
        --auth-host=scram-sha-256 -E UTF8 >/dev/null
    rm -f "$pwfile"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    if [ -n "${POSTGRES_DB:-}" ] && [ "$POSTGRES_DB" != postgres ]; then
        as_pg "$PGBIN/postgres" --single -D "$PGDATA" postgres >/dev/null <<SQL
CREATE DATABASE "$POSTGRES_DB";
SQL
    fi
    echo "initialised $PGDATA"
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups "$PGBIN/postgres" -D "$PGDATA"
