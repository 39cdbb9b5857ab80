#!/bin/sh
# MariaDB for the test bed: initialise the data directory on first start (a database and a user,
# as the usual images do with MARIADB_DATABASE, MARIADB_USER, MARIADB_PASSWORD), then run the server.
# root logs in through the socket only (unix_socket authentication).
set -eu
DATADIR=/var/lib/mysql
SOCKET=/run/mysqld/mysqld.sock
# The temporary server of the first start listens on a socket of its own: on the real one, the
# health check and the tests' clients took it for the server and lost it when it shut down
# ("Can't connect to local server through socket", seen under load).
INIT_SOCKET=/run/mysqld/init.sock
mkdir -p /run/mysqld
chown mysql:mysql "$DATADIR" /run/mysqld
if [ ! -d "$DATADIR/mysql" ]; then
    mariadb-install-db --user=mysql --datadir="$DATADIR" --skip-test-db --auth-root-authentication-method=socket \
        >/dev/null
    mariadbd --user=mysql --datadir="$DATADIR" --skip-networking --socket="$INIT_SOCKET" &
    pid=$!
    i=0
    until mariadb-admin --socket="$INIT_SOCKET" ping >/dev/null 2>&1; do
        i=$((i + 1))
        [ "$i" -lt 60 ] || { echo "temporary server did not start" >&2; exit 1; }
        sleep 0.5
    done
    db=${MARIADB_DATABASE:-}
    user=${MARIADB_USER:-}
    if [ -n "$db" ]; then
        mariadb --socket="$INIT_SOCKET" -e "CREATE DATABASE \`$db\`"
    fi
    if [ -n "$user" ]; then
        pw=${MARIADB_PASSWORD:?set MARIADB_PASSWORD with MARIADB_USER}
        for h in '%' localhost; do
            mariadb --socket="$INIT_SOCKET" -e "CREATE USER '$user'@'$h' IDENTIFIED BY '$pw'; GRANT ALL ON \`${db:-*}\`.* TO '$user'@'$h'"
        done
    fi
    mariadb-admin --socket="$INIT_SOCKET" shutdown
    wait "$pid" || true
    echo "initialised $DATADIR"
fi
exec mariadbd --user=mysql --datadir="$DATADIR" --socket="$SOCKET" --bind-address=0.0.0.0
