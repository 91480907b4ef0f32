#!/usr/bin/env bash
# Copy benchmark (manual, not CI): `safeguard recover --to-prefix` against `aws s3 sync` copying the same
# 5,000-object WAL-E prefix on the same S3 server in the same run.
#
#   bash scripts/services.sh install           # the aws CLI (awscli from PyPI), once
#   bash scripts/bench-copy.sh [objects] [server]
#
# objects defaults to 5000. server is where both tools copy:
#   s3s   (default) s3s-fs, a multi-threaded S3 server from crates.io (installed into ~/.cargo/bin when
#         missing, started here on a free port, stopped at exit). Real servers answer a CopyObject in
#         well under a millisecond of their own CPU; so does this one, so the clients' own costs show.
#   moto  the moto server the tests use (SAFEGUARD_TEST_S3, from scripts/services.sh start). moto is
#         single-threaded Python and spends ~0.6 ms of CPU per copy whoever asks, which caps any client's
#         lead near 1.4x on this 2-core machine: it measures moto more than the clients.
# Each tool copies the source prefix into its own empty prefix; each runs twice, alternating, and every
# copy is checked (object count and total bytes equal the source's). The S3 server's CPU time per tool is
# reported beside the wall time.
# SAFEGUARD_BENCH_CONCURRENCY sets recover's --concurrency (default: the config default, 32).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${1:-5000}
SERVER=${2:-s3s}
S3S_VERSION=0.14.1 # the newest s3s-fs that builds with this machine's rustc 1.95
if [[ -z ${SAFEGUARD_TEST_AWS:-} && -f $REPO/.services/env ]]; then . "$REPO/.services/env"; fi
: "${SAFEGUARD_TEST_AWS:?the aws CLI is missing: run bash scripts/services.sh install}"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_DEFAULT_REGION=us-east-1

WORK=$(mktemp -d /tmp/safeguard-bench.XXXXXX)
SERVER_PID=
cleanup() {
    [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

case $SERVER in
s3s)
    if ! command -v s3s-fs >/dev/null && [[ ! -x $HOME/.cargo/bin/s3s-fs ]]; then
        echo "bench: installing s3s-fs $S3S_VERSION from crates.io (a few minutes, once)"
        cargo install s3s-fs --version "$S3S_VERSION" --features binary --locked --quiet
    fi
    S3S=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    mkdir -p "$WORK/s3s"
    "$S3S" --host 127.0.0.1 --port "$PORT" --access-key bench --secret-key bench "$WORK/s3s" >"$WORK/s3s.log" 2>&1 &
    SERVER_PID=$!
    S3=http://127.0.0.1:$PORT
    for _ in $(seq 50); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2)" 2>/dev/null && break
        sleep 0.1
    done
    ;;
moto)
    : "${SAFEGUARD_TEST_S3:?run bash scripts/services.sh start first}"
    S3=$SAFEGUARD_TEST_S3
    SERVER_PID_WATCH=$(cat "$REPO/.services/moto.pid" 2>/dev/null || echo)
    ;;
*)
    echo "bench: unknown server '$SERVER' (s3s or moto)" >&2
    exit 2
    ;;
esac
CPU_PID=${SERVER_PID:-${SERVER_PID_WATCH:-}}
echo "bench: S3 server $SERVER at $S3"
aws_s3() { "$SAFEGUARD_TEST_AWS" --endpoint-url "$S3" "$@"; }

cargo build --release --quiet --manifest-path "$REPO/Cargo.toml"
SG=$REPO/target/release/safeguard
BUCKET=bench-$(date +%s)-$$
ID=6e101b27-ee1b-4f4d-a032-$(printf '%012x' $$)
SRC=s3://$BUCKET/backups/$ID/wal/

echo "bench: generating a $N-object WAL-E layout"
python3 - "$WORK/src" "$N" <<'EOF'
import os, sys, random
root, n = sys.argv[1], int(sys.argv[2])
random.seed(7)
def put(rel, size):
    p = os.path.join(root, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.write(os.urandom(size))
put("sysids/sysid", 20)
b = "basebackups_005/base_000000010000000000000002_00000028"
put(b + "/extended_version.txt", 40)
for i in range(10):
    put(f"{b}/tar_partitions/part_{i:08d}.tar.lzo", 256 * 1024)
put(b + "_backup_stop_sentinel.json", 200)
for i in range(n - 13):
    s = 1 + i
    put(f"wal_005/00000001{s >> 8:08X}{s & 0xFF:08X}.lzo", random.randint(4, 64) * 1024)
EOF
aws_s3 s3 mb "s3://$BUCKET" >/dev/null
aws_s3 s3 cp --recursive --quiet "$WORK/src" "$SRC"
src_count=$(aws_s3 s3 ls --recursive "$SRC" | wc -l)
src_bytes=$(aws_s3 s3 ls --recursive "$SRC" | awk '{s+=$3} END {print s}')
echo "bench: source $SRC: $src_count objects, $src_bytes bytes"

# A store that knows the instance and its prefix (one WAL-E line, as the watcher would have seen).
STORE=$WORK/store
echo "<134>1 2026-01-01T00:00:00Z cell-1 cf-c8ce128e-7b4c-4fe7-a533-e9379356f906 - - - patroni>         STRUCTURED: time=2026-01-01T00:00:00.0-00 pid=1 action=push-wal key=${SRC}wal_005/000000010000000000000001.lzo prefix=backups/$ID/wal/ seg=000000010000000000000001 state=complete" >"$WORK/seed.log"
"$SG" ingest --store "$STORE" "$WORK/seed.log" >/dev/null
cat >"$WORK/safeguard.toml" <<EOF
[s3]
endpoint = "$S3"
region = "us-east-1"
path_style = true
access_key_id = "bench"
secret_access_key = "bench"
timeout = "60s"
EOF

check() { # prefix -> "count bytes"
    aws_s3 s3 ls --recursive "$1" | awk '{n++; s+=$3} END {printf "%d %d", n, s}'
}

now() { date +%s.%N; }
server_cpu() { # seconds of CPU the S3 server has used so far
    if [[ -n $CPU_PID && -r /proc/$CPU_PID/stat ]]; then
        awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$CPU_PID/stat"
    else echo 0; fi
}
calc() { python3 -c "print($1)"; }
declare -A T C
for round in 1 2; do
    dst=s3://$BUCKET/clone-safeguard-$round/
    c0=$(server_cpu)
    t0=$(now)
    "$SG" --config "$WORK/safeguard.toml" --store "$STORE" recover "$ID" --to-prefix "$dst" --execute --yes ${SAFEGUARD_BENCH_CONCURRENCY:+--concurrency $SAFEGUARD_BENCH_CONCURRENCY} >"$WORK/sg-$round.out" 2>"$WORK/sg-$round.err" ||
        { cat "$WORK/sg-$round.err" >&2; exit 1; }
    t1=$(now)
    T[sg$round]=$(calc "$t1 - $t0")
    C[sg$round]=$(calc "$(server_cpu) - $c0")
    [[ $(check "$dst") == "$src_count $src_bytes" ]] || { echo "bench: safeguard copy $dst does not match the source" >&2; exit 1; }

    dst=s3://$BUCKET/clone-aws-$round/
    c0=$(server_cpu)
    t0=$(now)
    aws_s3 s3 sync --quiet "$SRC" "$dst"
    t1=$(now)
    T[aws$round]=$(calc "$t1 - $t0")
    C[aws$round]=$(calc "$(server_cpu) - $c0")
    [[ $(check "$dst") == "$src_count $src_bytes" ]] || { echo "bench: aws s3 sync copy $dst does not match the source" >&2; exit 1; }
    echo "bench: round $round: safeguard recover --to-prefix ${T[sg$round]}s (S3 server CPU ${C[sg$round]}s), aws s3 sync ${T[aws$round]}s (S3 server CPU ${C[aws$round]}s)"
done
sg=$(calc "(${T[sg1]} + ${T[sg2]}) / 2")
aws=$(calc "(${T[aws1]} + ${T[aws2]}) / 2")
printf 'bench: %s server, %d objects (%d bytes); mean of 2 runs: safeguard %.2fs (%.0f objects/s), aws s3 sync %.2fs (%.0f objects/s); safeguard is %.2fx faster\n' \
    "$SERVER" "$src_count" "$src_bytes" "$sg" "$(calc "$src_count / $sg")" "$aws" "$(calc "$src_count / $aws")" "$(calc "$aws / $sg")"
echo "bench: safeguard's steps (round 2):"
grep -h '\] done' "$WORK/sg-2.err" | sed 's/^/bench:   /' || true
