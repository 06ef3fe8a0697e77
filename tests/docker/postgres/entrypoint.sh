#!/bin/sh
# The official image's interface: on an empty data folder, a cluster whose superuser is
# POSTGRES_USER (password POSTGRES_PASSWORD, checked over TCP) and a database POSTGRES_DB.
set -eu
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
user="${POSTGRES_USER:-postgres}"
db="${POSTGRES_DB:-$user}"
chown postgres: "$PGDATA" /run/postgresql
chmod 700 "$PGDATA"
as_postgres() { runuser -u postgres -- env PATH="$PATH" PGDATA="$PGDATA" "$@"; }
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    chown postgres "$pwfile"
    as_postgres initdb -U "$user" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust \
        --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    # Only the local socket while the database is created: not ready for clients yet.
    as_postgres pg_ctl -w -o "-c listen_addresses=''" start >/dev/null
    if [ "$db" != postgres ]; then
        as_postgres psql -q -U "$user" -d postgres -c "CREATE DATABASE \"$db\""
    fi
    as_postgres pg_ctl -w -m fast stop >/dev/null
fi
# The official image's command form too: `postgres -c name=value ...` adds settings.
if [ "${1:-}" = postgres ]; then
    shift
fi
# setpriv execs: postgres is PID 1 and gets `docker stop`'s SIGTERM itself.
exec setpriv --reuid=postgres --regid=postgres --init-groups \
    postgres -D "$PGDATA" -c listen_addresses='*' "$@"
