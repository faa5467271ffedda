#!/usr/bin/env bash
# A throwaway PostgreSQL for the ledger tests: its own cluster in a temp dir under /tmp, on 127.0.0.1.
#
#   tests/postgres.sh start [DIR]   initdb into DIR (default: a new mktemp dir), start, create database
#                                   `archipelag`, print its URL on stdout (the last line)
#   tests/postgres.sh url DIR       print the URL of the cluster in DIR
#   tests/postgres.sh stop DIR      stop the cluster in DIR by its data dir (pg_ctl) and remove DIR
#
# Installs PostgreSQL with apt-get when no binaries are found and we are root. PostgreSQL refuses to run as
# root, so as root the cluster runs as the `postgres` user (created as a system user when missing).
# Auth is `trust` on 127.0.0.1 and a private socket dir: this is a test cluster, never a deployment.
set -euo pipefail

die() { echo "postgres.sh: $*" >&2; exit 1; }

find_bindir() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]] && { echo "$dir"; return 0; }
    done
    if command -v pg_config >/dev/null && [[ -x "$(pg_config --bindir)/initdb" ]]; then
        pg_config --bindir; return 0
    fi
    return 1
}

install_postgres() {
    [[ $(id -u) -eq 0 ]] || die "no PostgreSQL binaries found and not root; install postgresql first"
    echo "postgres.sh: installing postgresql with apt-get" >&2
    # Keep the package from creating and starting its own cluster on port 5432.
    mkdir -p /etc/postgresql-common
    grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf \
        || echo 'create_main_cluster = false' >>/etc/postgresql-common/createcluster.conf
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
}

# Run a command as the cluster's owner.
as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

ensure_owner() {
    [[ $(id -u) -eq 0 ]] || return 0
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

url_of() {
    local dir=$1
    [[ -f "$dir/port" ]] || die "$dir holds no cluster started by this script"
    echo "postgresql+psycopg://postgres@127.0.0.1:$(cat "$dir/port")/archipelag"
}

start() {
    local dir=${1:-}
    local bindir
    # `make test`'s two pytest processes may each start a cluster at once: one installs, the other waits for it.
    exec 9>/tmp/archipelag-postgres-setup.lock
    flock 9
    bindir=$(find_bindir) || { install_postgres; bindir=$(find_bindir) || die "install gave no initdb"; }
    ensure_owner
    flock -u 9
    exec 9>&-
    if [[ -z "$dir" ]]; then
        dir=$(mktemp -d /tmp/archipelag-pg.XXXXXX)
    fi
    mkdir -p "$dir/sock"
    [[ -e "$dir/data" ]] && die "$dir/data exists; stop that cluster first or pick another dir"
    [[ $(id -u) -eq 0 ]] && chown -R postgres "$dir"
    chmod 700 "$dir"
    as_owner "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 --no-sync \
        >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    local port attempt
    for attempt in 1 2 3; do
        port=$(free_port)
        # fsync/full_page_writes off: a test cluster trades durability for speed.
        if as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 start \
            -o "-h 127.0.0.1 -p $port -k $dir/sock -c fsync=off -c synchronous_commit=off \
                -c full_page_writes=off -c max_connections=200" >/dev/null; then
            echo "$port" >"$dir/port"
            echo "$bindir" >"$dir/bindir"
            as_owner "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres archipelag
            echo "postgres.sh: started in $dir; stop with: $0 stop $dir" >&2
            url_of "$dir"
            return 0
        fi
        echo "postgres.sh: start on port $port failed (attempt $attempt)" >&2
    done
    cat "$dir/server.log" >&2 || true
    die "could not start PostgreSQL"
}

stop() {
    local dir=${1:?usage: postgres.sh stop DIR}
    if [[ -d "$dir/data" ]]; then
        local bindir
        bindir=$(cat "$dir/bindir" 2>/dev/null || find_bindir)
        as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    # Only ever remove a dir that this script made (it holds our marker files).
    [[ -f "$dir/port" || -f "$dir/initdb.log" ]] && rm -rf "$dir"
    return 0
}

case "${1:-}" in
    start) start "${2:-}" ;;
    stop) stop "${2:-}" ;;
    url) url_of "${2:?usage: postgres.sh url DIR}" ;;
    *) die "usage: $0 start [DIR] | url DIR | stop DIR" ;;
esac
