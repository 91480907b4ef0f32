#!/usr/bin/env bash
# INSTANCE, PORT and PREFIX come from the container's meta file (load_meta).
# shellcheck disable=SC2153

# One Dingo PostgreSQL "container" of the end-to-end harness (tests/harness), played by a real
# PostgreSQL 14 server running as the `postgres` user and real WAL-E 1.1.1 against the S3 API.
#
#   container.sh create ROOT CELL CONTAINER INSTANCE PORT   lay out the container (not started)
#   container.sh start  ROOT CELL CONTAINER                 like `docker start`: returns at once; the
#                                                           entrypoint runs in the background
#   container.sh stop   ROOT CELL CONTAINER                 like `docker stop` (idempotent)
#   container.sh flush  ROOT CELL CONTAINER                 empty the data volume (idempotent)
#   container.sh backup ROOT CELL CONTAINER                 the image's `backup` job: wal-e backup-push
#   container.sh status ROOT CELL CONTAINER                 prints starting|running|failed|stopped
#
# ROOT holds `env` (written by the harness: S3, bucket, etcd, binaries) and cells/CELL/CONTAINER/.
# Everything the container prints goes to cells/CELL/CONTAINER/console.log, one line each, with the
# image's script prefixes (`restore_leader_if_missing> `, `patroni> `, `backup> `); the server's own log
# (pg.log, which also receives the archive_command's and restore_command's WAL-E output) is relayed
# with `patroni> `. The harness ships both to Kafka framed as the platform's syslog.
#
# The entrypoint does what the image's restore_leader_if_missing + Patroni do on start:
#   leader in etcd (another node)          -> join it as a replica (pg_basebackup)
#   data directory holds a database        -> start it
#   backups at the instance's WAL-E prefix -> /initialize missing: fetch the sysid from <prefix>sysids and
#                                             re-initialize it; restore with wal-e backup-fetch and recover
#                                             with wal-e wal-fetch (restore_command + recovery.signal);
#                                             refuse when /initialize names another system (Patroni would)
#   nothing                                -> initdb a new cluster, publish /initialize, /leader,
#                                             /optime/leader and upload the sysid to <prefix>sysids/sysid
# postgresql.conf, pg_hba.conf and pg_ident.conf live outside the data directory, as Patroni writes
# them: a restored base backup never brings the old instance's settings (port, archive prefix) along.
set -euo pipefail

cmd=${1:?usage: container.sh create|start|stop|flush|backup|status ROOT CELL CONTAINER ...}
ROOT=${2:?ROOT}
CELL=${3:?CELL}
CONTAINER=${4:?CONTAINER}
DIR=$ROOT/cells/$CELL/$CONTAINER
# shellcheck disable=SC1091
source "$ROOT/env"

as_pg() { runuser -u postgres -- "$@"; }
pgctl() { as_pg "$E2E_PG_BIN/pg_ctl" -D "$DIR/conf" "$@"; }
console() { cat >>"$DIR/console.log"; }
# say PREFIX MESSAGE: one line on the container's console.
say() { printf '%s> %s\n' "$1" "$2" >>"$DIR/console.log"; }
prefixed() { sed -u "s/^/$1> /" >>"$DIR/console.log"; }

etcd_url() { echo "$E2E_ETCD/v2/keys/service/$INSTANCE/$1"; }
etcd_get() { curl -fsS "$(etcd_url "$1")" 2>/dev/null | "$E2E_PYTHON3" -c 'import json,sys; print(json.load(sys.stdin)["node"]["value"])' 2>/dev/null || true; }
etcd_put() { curl -fsS -X PUT "$(etcd_url "$1")" --data-urlencode "value=$2" >/dev/null; }
etcd_del() { curl -sS -X DELETE "$(etcd_url "$1")" >/dev/null 2>&1 || true; }

aws_s3() {
    AWS_ACCESS_KEY_ID=$E2E_AWS_KEY AWS_SECRET_ACCESS_KEY=$E2E_AWS_SECRET AWS_DEFAULT_REGION=us-east-1 \
        "$E2E_AWS" --endpoint-url "$E2E_S3" "$@"
}

# The system identifier in pg_control (its first 8 bytes, little endian).
sysid_of() {
    "$E2E_PYTHON3" -c 'import struct,sys; print(struct.unpack("<Q", open(sys.argv[1], "rb").read(8))[0])' "$1/global/pg_control"
}

running() { pgctl status >/dev/null 2>&1; }

psql_c() { psql -X -q -At -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -c "$1"; }

load_meta() {
    [[ -f $DIR/meta ]] || { echo "no container $CONTAINER on cell $CELL (no $DIR/meta)" >&2; exit 1; }
    # shellcheck disable=SC1091
    source "$DIR/meta"
}

cmd_create() {
    local instance=${5:?INSTANCE} port=${6:?PORT}
    mkdir -p "$DIR"/{conf,data,tmp/sysids}
    cat >"$DIR/meta" <<EOF
INSTANCE=$instance
PORT=$port
PREFIX=s3://$E2E_BUCKET/backups/$instance/wal/
EOF
    # WAL-E's settings for this container, as the image's envdir holds them.
    cat >"$DIR/wale" <<EOF
#!/bin/sh
export WALE_S3_ENDPOINT=$E2E_WALE_ENDPOINT
export WALE_S3_PREFIX=s3://$E2E_BUCKET/backups/$instance/wal
export AWS_ACCESS_KEY_ID=$E2E_AWS_KEY AWS_SECRET_ACCESS_KEY=$E2E_AWS_SECRET AWS_REGION=us-east-1
export WALE_LOG_DESTINATION=stderr
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres
exec "$E2E_WALE" "\$@"
EOF
    chmod 755 "$DIR/wale"
    cat >"$DIR/conf/postgresql.conf" <<EOF
data_directory = '$DIR/data'
hba_file = '$DIR/conf/pg_hba.conf'
ident_file = '$DIR/conf/pg_ident.conf'
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
wal_level = replica
max_wal_senders = 5
hot_standby = on
archive_mode = on
archive_command = '$DIR/wale wal-push %p'
# --prefetch 0: WAL-E 1.1.1's prefetch daemon cannot detach under Python 3.11 (OSError ENOTSOCK).
restore_command = '$DIR/wale wal-fetch --prefetch 0 "%f" "%p"'
log_line_prefix = '%m [%p] '
log_timezone = 'UTC'
timezone = 'UTC'
shared_buffers = 16MB
max_connections = 20
EOF
    cat >"$DIR/conf/pg_hba.conf" <<EOF
local all all trust
host all all 127.0.0.1/32 trust
local replication all trust
host replication all 127.0.0.1/32 trust
EOF
    : >"$DIR/conf/pg_ident.conf"
    : >"$DIR/console.log"
    : >"$DIR/pg.log"
    echo stopped >"$DIR/state"
    chown -R postgres:postgres "$DIR"
    chmod 700 "$DIR/data"
}

cmd_start() {
    load_meta
    if running; then return 0; fi
    echo starting >"$DIR/state"
    # Detached like a container: nothing inherits the caller's stdout/stderr, so `sh -c` returns at once.
    setsid bash "$0" entrypoint "$ROOT" "$CELL" "$CONTAINER" </dev/null >>"$DIR/entrypoint.log" 2>&1 &
}

fail() {
    say patroni "FATAL: $1"
    echo failed >"$DIR/state"
    exit 1
}

# The image's restore_leader_if_missing, then what Patroni does for the mode it chose.
cmd_entrypoint() {
    load_meta
    # Whatever stops the entrypoint early leaves the container failed (details in entrypoint.log).
    trap 'if [[ $(cat "$DIR/state") == starting ]]; then echo failed >"$DIR/state"; fi' EXIT
    printf 'looking up public host:port from etcd -> %s/v2/keys/postgresql-patroni/127.0.0.1:%s:5432 (0)\n' "${E2E_ETCD#http://}" "$CONTAINER" | console
    printf 'public address 127.0.0.1:%s\n' "$PORT" | console
    printf 'Enabling wal-e archives to S3 bucket '"'"'%s'"'"'\n' "$E2E_BUCKET" | console

    local leader mode
    leader=$(etcd_get leader)
    if [[ -n $leader && $leader != "$CONTAINER" ]]; then
        say restore_leader_if_missing "leader exists, no additional preparation required for container to join cluster"
        mode=replica
    elif [[ -f $DIR/data/PG_VERSION ]]; then
        say restore_leader_if_missing "local database exists; no additional preparation required to restart container"
        mode=existing
    elif (("$(as_pg "$DIR/wale" backup-list 2>/dev/null | wc -l)" >= 2)); then
        if [[ -z $(etcd_get initialize) ]]; then
            say restore_leader_if_missing "etcd missing /initialize system ID, fetching from ${PREFIX}sysids"
            aws_s3 s3 cp "${PREFIX}sysids/sysid" "$DIR/tmp/sysid.restore" --only-show-errors 2>&1 | prefixed restore_leader_if_missing
            say restore_leader_if_missing "Re-initializing /service/$INSTANCE/initialize with original 'Database system identifier'"
            etcd_put initialize "$(tr -d '[:space:]' <"$DIR/tmp/sysid.restore")"
        fi
        say restore_leader_if_missing "preparing patroni to restore this container from wal-e backups"
        mode=restore
    else
        say restore_leader_if_missing "new cluster, no existing backup to restore"
        mode=new
    fi

    case $mode in
    new)
        as_pg "$E2E_PG_BIN/initdb" -D "$DIR/data" -U postgres -A trust --no-sync 2>&1 | prefixed patroni
        ;;
    replica)
        local leader_port
        leader_port=$(etcd_get "members/$leader")
        [[ -n $leader_port ]] || fail "leader $leader has no member key"
        say patroni "INFO: trying to bootstrap from leader '$leader'"
        as_pg pg_basebackup -h 127.0.0.1 -p "$leader_port" -U postgres -D "$DIR/data" -R -X stream 2>&1 | prefixed patroni
        ;;
    restore)
        say patroni "INFO: trying to bootstrap from wal-e backup"
        as_pg "$DIR/wale" backup-fetch "$DIR/data" LATEST 2>&1 | prefixed patroni
        local restored initialize
        restored=$(sysid_of "$DIR/data")
        initialize=$(etcd_get initialize)
        if [[ -n $initialize && $initialize != "$restored" ]]; then
            fail "system ID mismatch, node $CONTAINER belongs to a different cluster: $restored != $initialize"
        fi
        as_pg touch "$DIR/data/recovery.signal"
        ;;
    esac

    pgctl -l "$DIR/pg.log" -w -t 300 start >/dev/null
    if [[ $mode == restore ]]; then
        # Archive recovery ends with a promotion when wal-fetch finds no more segments.
        local i
        for ((i = 0; i < 600; i++)); do
            [[ $(psql_c 'select pg_is_in_recovery()' 2>/dev/null) == f ]] && break
            sleep 0.5
        done
        [[ $(psql_c 'select pg_is_in_recovery()') == f ]] || fail "recovery did not finish"
        say patroni "INFO: recovered from wal-e backups; promoted"
    fi

    etcd_put "members/$CONTAINER" "$PORT"
    if [[ $mode != replica ]]; then
        etcd_put leader "$CONTAINER"
        etcd_put optime/leader "$(psql_c "select pg_current_wal_lsn() - '0/0'")"
        if [[ $mode == new ]]; then
            local sysid
            sysid=$(sysid_of "$DIR/data")
            etcd_put initialize "$sysid"
            echo "$sysid" >"$DIR/tmp/sysids/sysid"
            (cd "$DIR" && aws_s3 s3 cp tmp/sysids/sysid "${PREFIX}sysids/sysid" --no-progress 2>&1) | prefixed patroni
        fi
        say patroni "INFO: no action.  i am the leader with the lock"
    else
        say patroni "INFO: no action.  i am a secondary and i am following a leader"
    fi
    echo running >"$DIR/state"
}

cmd_stop() {
    load_meta
    if running; then
        pgctl -m fast -w stop >/dev/null 2>&1 || pgctl -m immediate -w stop >/dev/null 2>&1 || true
        say patroni "INFO: Lock owner: $CONTAINER; I am $CONTAINER"
        say patroni "INFO: shut down"
    fi
    # Patroni releases the leader lock on a clean shutdown.
    if [[ $(etcd_get leader) == "$CONTAINER" ]]; then etcd_del leader; fi
    echo stopped >"$DIR/state"
}

cmd_flush() {
    load_meta
    running && { echo "refusing to flush $CONTAINER: it is running; stop it first" >&2; exit 1; }
    find "$DIR/data" -mindepth 1 -delete
}

cmd_backup() {
    load_meta
    running || { echo "$CONTAINER is not running" >&2; exit 1; }
    as_pg "$DIR/wale" backup-push "$DIR/data" 2>&1 | prefixed backup
    # The image's backup job lists the backups after each push.
    as_pg "$DIR/wale" backup-list 2>/dev/null | tr -d '\r' | tail -n +2 | prefixed backup
}

cmd_status() {
    load_meta
    cat "$DIR/state"
}

case $cmd in
create) cmd_create "$@" ;;
start) cmd_start ;;
entrypoint) cmd_entrypoint ;;
stop) cmd_stop ;;
flush) cmd_flush ;;
backup) cmd_backup ;;
status) cmd_status ;;
*) echo "unknown command $cmd" >&2; exit 2 ;;
esac
