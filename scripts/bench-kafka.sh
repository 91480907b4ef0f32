#!/usr/bin/env bash
# Kafka source benchmark for issue 3 (run by hand, not in CI), against baselines measured in the same run:
#   - `safeguard ingest` of a generated platform stream from a file (the file-ingest rate), then
#   - the same lines produced to a 4-partition topic on a dedicated tansu broker and drained by the real
#     `safeguard watch` (release build, default commit settings: durable commits at least every second
#     and every 50,000 lines) into a store that already holds 100,000 instances: lines/s from watcher
#     start to flushed store, and the watcher's resident memory (VmRSS/VmHWM from /proc);
#   - the same lines produced while the watcher runs: first produce to flushed store.
# Targets: >= 100,000 lines/s with durable commits; RSS < 200 MB with 100,000 instances in the store.
# The test producer sends one record per batch (tansu 0.6's multi-record batches report wrong high
# watermarks), so the live figure is bounded by the producer; the backlog figure measures safeguard.
# Usage: scripts/bench-kafka.sh [LINES] [INSTANCES]   (defaults 500000 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
LINES=${1:-500000}
INSTANCES=${2:-100000}
WORK=$(mktemp -d /tmp/safeguard-bench-kafka.XXXXXX)
TANSU_PID=""
cleanup() {
    [[ -n $TANSU_PID ]] && kill "$TANSU_PID" 2>/dev/null && wait "$TANSU_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

TANSU=${SAFEGUARD_TEST_TANSU:-$(command -v tansu || echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu")}
[[ -x $TANSU ]] || { echo "tansu not found: run 'bash scripts/services.sh install' first" >&2; exit 1; }

echo "== building (release)"
cargo build --release --quiet --bin safeguard --example populate
cargo test --release --quiet --test it --no-run 2>/dev/null

echo "== populating a store with $INSTANCES instances"
target/release/examples/populate "$WORK/seed-store" "$INSTANCES" >/dev/null

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "== starting a dedicated tansu on 127.0.0.1:$PORT"
"$TANSU" broker --listener-url "tcp://127.0.0.1:$PORT" --advertised-listener-url "tcp://127.0.0.1:$PORT" \
    --storage-engine memory://tansu/ >"$WORK/tansu.log" 2>&1 &
TANSU_PID=$!
for _ in $(seq 100); do
    python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' "$PORT" 2>/dev/null && break
    sleep 0.1
done

echo "== $LINES lines: file ingest, then Kafka (backlog and live)"
OUT=$(SAFEGUARD_TEST_KAFKA=127.0.0.1:$PORT SAFEGUARD_TEST_TANSU=$TANSU SAFEGUARD_BENCH_LINES=$LINES \
    SAFEGUARD_BENCH_STORE=$WORK/seed-store \
    cargo test --release --quiet --test it -- --ignored --nocapture --exact kafka::bench_kafka_end_to_end 2>&1) || {
    echo "$OUT" | tail -40
    exit 1
}
echo "$OUT" | grep '^BENCH' | sed 's/^BENCH //'
python3 - "$OUT" <<'PY'
import re, sys
out = sys.argv[1]
def num(key):
    m = re.search(key + r"=(\d+)", out)
    return int(m.group(1)) if m else None
kafka, steady, file_rate, rss = num("kafka_backlog_lines_per_s"), num("steady"), num("file_ingest_lines_per_s"), num("watcher_vmhwm_kib")
print(f"kafka backlog: {kafka} lines/s start to flushed store ({steady} steady) vs file ingest {file_rate} lines/s "
      f"({kafka / file_rate:.2f}x)")
print(f"targets: >= 100,000 lines/s -> {'PASS' if kafka >= 100_000 else 'MISS'}; "
      f"peak RSS {rss / 1024:.0f} MiB < 200 MiB -> {'PASS' if rss < 200 * 1024 else 'MISS'}")
PY
