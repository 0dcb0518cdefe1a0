#!/bin/sh
# Debian's PostgreSQL 15 with its cluster on the container's named volume
# (mounted on /var/lib/postgresql): the cluster is made on the first start,
# when the volume is empty, and a note naming the boot is stored once; every
# start prints the notes, so the console shows what the database kept.
set -eu
BIN=/usr/lib/postgresql/15/bin
PGDATA=/var/lib/postgresql/data
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
sql() { as_postgres "$BIN/psql" -h /tmp -X -q -At -v ON_ERROR_STOP=1 -c "$1"; }
boot=$(cat /proc/sys/kernel/random/boot_id)
echo "boot $boot"

# The check runs as postgres: the cluster's folder is postgres's with mode
# 0700, and root here lacks DAC_OVERRIDE.
if as_postgres test -s "$PGDATA/PG_VERSION"; then
    echo "cluster found in $PGDATA (version $(as_postgres cat "$PGDATA/PG_VERSION"))"
else
    # The volume starts out empty and root's: it becomes postgres's. The
    # cluster is made aside and moved into place when complete, so a first
    # start cut short (a power cut, a kill) leaves no half-made cluster.
    chown postgres:postgres /var/lib/postgresql
    as_postgres rm -rf "$PGDATA.new"
    as_postgres mkdir -m 0700 "$PGDATA.new"
    as_postgres "$BIN/initdb" -D "$PGDATA.new" --locale=C.UTF-8 --encoding=UTF8 \
        --auth-local=peer --auth-host=scram-sha-256 >/dev/null
    as_postgres mv -T "$PGDATA.new" "$PGDATA"
    echo "initialised a new cluster in $PGDATA"
fi

# The socket in the container's private /tmp (the root is read-only); TCP on
# loopback only.
# setpriv itself, not the function: a function in the background runs in a
# subshell, which would be $! and ignore SIGINT (as every background job of a
# non-interactive shell does); setpriv execs PostgreSQL, so $! is PostgreSQL.
setpriv --reuid=postgres --regid=postgres --init-groups \
    "$BIN/postgres" -D "$PGDATA" -c listen_addresses=127.0.0.1 \
    -c unix_socket_directories=/tmp &
pid=$!
# berth stops a container with SIGTERM: PostgreSQL's fast shutdown is SIGINT.
trap 'kill -INT "$pid"' TERM INT
until as_postgres "$BIN/pg_isready" -q -h /tmp; do
    kill -0 "$pid" 2>/dev/null || exit 1
    sleep 1
done

# The first note, written once: at the first start that gets this far.
sql "CREATE TABLE IF NOT EXISTS notes (id serial PRIMARY KEY, boot text NOT NULL)"
sql "INSERT INTO notes (boot) SELECT '$boot' WHERE NOT EXISTS (SELECT FROM notes)"
sql "SELECT 'row: ' || id || ' written at boot ' || boot FROM notes ORDER BY id"
echo "rows: $(sql 'SELECT count(*) FROM notes')"

set +e
wait "$pid"   # returns early when the trap runs
wait "$pid"
