#!/usr/bin/env bash
# Smoke test for the services started by scripts/services.sh: uses each one for
# real and prints PASS/FAIL per service; exits non-zero on any failure.
#
# No `set -e` here on purpose: each check runs in a subshell with its own
# `set -e`, and bash ignores `set -e` inside a subshell whose status is tested
# by `if`/`||`, so the status is read from `$?` afterwards instead.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN=${SAFEGUARD_SERVICES_DIR:-$REPO/.services}
[[ -f $RUN/env ]] || { echo "no $RUN/env: run scripts/services.sh start first" >&2; exit 1; }
# shellcheck disable=SC1091
source "$RUN/env"

export AWS_ACCESS_KEY_ID=safeguard-test AWS_SECRET_ACCESS_KEY=safeguard-test
export AWS_DEFAULT_REGION=us-east-1
TAG=$(date +%s)-$$
LOGS=$(mktemp -d /tmp/safeguard-check.XXXXXX)

aws_s3() { "$SAFEGUARD_TEST_AWS" --endpoint-url "$SAFEGUARD_TEST_S3" "$@"; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

check_kafka() {
    local topic=safeguard-check-$TAG
    "$SAFEGUARD_TEST_TANSU" topic create "$topic" --partitions 3 \
        --broker "tcp://$SAFEGUARD_TEST_KAFKA"
    echo "created topic $topic"
}

check_s3() {
    local bucket=safeguard-check-$TAG
    aws_s3 s3api create-bucket --bucket "$bucket"
    echo "hello from safeguard" >"$LOGS/object.txt"
    aws_s3 s3 cp "$LOGS/object.txt" "s3://$bucket/dir/object.txt"
    aws_s3 s3 ls --recursive "s3://$bucket/" | tee "$LOGS/s3.ls"
    grep -q 'dir/object.txt' "$LOGS/s3.ls"
    [[ $(aws_s3 s3 cp "s3://$bucket/dir/object.txt" -) == "hello from safeguard" ]]
}

check_etcd() {
    local url=$SAFEGUARD_TEST_ETCD/v2/keys/safeguard-check/$TAG
    curl -fsS -X PUT "$url" -d value=v1
    echo
    curl -fsS "$url" | tee "$LOGS/etcd.get"
    echo
    grep -q '"value":"v1"' "$LOGS/etcd.get"
    curl -fsS -X DELETE "$url"
    echo
    # After DELETE the key must be gone: etcd answers 404.
    [[ $(curl -s -o /dev/null -w '%{http_code}' "$url") == 404 ]]
}

check_smtp() {
    local subject="safeguard check $TAG" i
    python3 - "$SAFEGUARD_TEST_SMTP" "$subject" <<'EOF'
import smtplib, sys
from email.message import EmailMessage
host, port = sys.argv[1].rsplit(":", 1)
msg = EmailMessage()
msg["From"] = "check@safeguard.test"
msg["To"] = "ops@safeguard.test"
msg["Subject"] = sys.argv[2]
msg.set_content("smoke test")
with smtplib.SMTP(host, int(port), timeout=10) as s:
    s.send_message(msg)
EOF
    for ((i = 0; i < 50; i++)); do
        if grep -rlqF "Subject: $subject" "$SAFEGUARD_TEST_MAILDIR/new" 2>/dev/null; then
            echo "found in $(grep -rlF "Subject: $subject" "$SAFEGUARD_TEST_MAILDIR/new")"
            return 0
        fi
        sleep 0.2
    done
    echo "mail not found in $SAFEGUARD_TEST_MAILDIR/new"
    return 1
}

# Runs when check_pg_wale's subshell exits, also on failure; errexit is still
# on inside traps, hence the `|| true`.
pg_cleanup() {
    local rc=$?
    if ((rc != 0)) && [[ -f $PG_TMP/pg.log ]]; then
        echo "--- server log tail:"
        tail -n 20 "$PG_TMP/pg.log"
    fi
    runuser -u postgres -- "$SAFEGUARD_TEST_PG_BIN/pg_ctl" -D "$PG_TMP/data" -m immediate stop \
        >/dev/null 2>&1 || true
    rm -rf "$PG_TMP"
}

# PostgreSQL 14 cluster (as the postgres user) archiving through real WAL-E to moto.
check_pg_wale() {
    local bucket=safeguard-pgcheck-$TAG port id tmp data i
    port=$(free_port)
    id=$(python3 -c 'import uuid; print(uuid.uuid4())')
    tmp=$(mktemp -d /tmp/safeguard-pg.XXXXXX)
    data=$tmp/data
    chown postgres:postgres "$tmp"
    PG_TMP=$tmp
    trap pg_cleanup EXIT

    aws_s3 s3api create-bucket --bucket "$bucket"

    # Wrapper so archive_command and backup-push see the same WAL-E settings;
    # PG* tell WAL-E's psql where the cluster is.
    cat >"$tmp/wale" <<EOF
#!/bin/sh
export WALE_S3_ENDPOINT=http+path://${SAFEGUARD_TEST_S3#http://}
export WALE_S3_PREFIX=s3://$bucket/backups/$id/wal
export AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
export WALE_LOG_DESTINATION=stderr
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres
exec "$SAFEGUARD_TEST_WALE" "\$@"
EOF
    chmod 755 "$tmp/wale"

    runuser -u postgres -- "$SAFEGUARD_TEST_PG_BIN/initdb" -D "$data" -U postgres -A trust >/dev/null
    cat >>"$data/postgresql.conf" <<EOF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$tmp'
wal_level = replica
archive_mode = on
archive_command = '$tmp/wale wal-push %p'
EOF
    runuser -u postgres -- "$SAFEGUARD_TEST_PG_BIN/pg_ctl" -D "$data" -l "$tmp/pg.log" -w start
    local psql=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres)
    "${psql[@]}" -c 'create table check_rows (id int primary key, note text)' \
        -c "insert into check_rows select g, 'row ' || g from generate_series(1, 1000) g" \
        -c 'select pg_switch_wal()'

    for ((i = 0; i < 120; i++)); do
        [[ $("${psql[@]}" -At -c 'select archived_count from pg_stat_archiver') -ge 1 ]] && break
        sleep 0.5
    done
    "${psql[@]}" -c 'select archived_count, last_archived_wal, failed_count from pg_stat_archiver'

    runuser -u postgres -- "$tmp/wale" backup-push "$data"

    aws_s3 s3 ls --recursive "s3://$bucket/backups/$id/" | tee "$tmp/s3.ls"
    grep -q "backups/$id/wal/wal_005/" "$tmp/s3.ls" || { echo "no wal_005 segments"; return 1; }
    grep -Eq "backups/$id/wal/basebackups_005/.*_backup_stop_sentinel\.json" "$tmp/s3.ls" ||
        { echo "no backup stop sentinel"; return 1; }

    runuser -u postgres -- "$SAFEGUARD_TEST_PG_BIN/pg_ctl" -D "$data" -m fast -w stop
}

failures=0
run_check() {
    local name=$1 fn=$2 rc
    (set -e; "$fn") >"$LOGS/$name.log" 2>&1
    rc=$?
    if ((rc == 0)); then
        echo "PASS $name"
    else
        echo "FAIL $name (exit $rc); output:"
        sed 's/^/    /' "$LOGS/$name.log"
        failures=$((failures + 1))
    fi
}

run_check kafka check_kafka
run_check s3 check_s3
run_check etcd check_etcd
run_check smtp check_smtp
run_check postgres+wal-e check_pg_wale

if ((failures)); then
    echo "$failures check(s) failed; logs in $LOGS"
    exit 1
fi
rm -rf "$LOGS"
echo "all services OK"
