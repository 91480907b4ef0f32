#!/usr/bin/env bash
# The project's test command (README, CI): installs whatever is missing, starts the real services the
# suite runs against (Kafka protocol broker, S3 API, etcd, SMTP; PostgreSQL 14 + WAL-E installed) on free
# loopback ports, runs the whole suite, and stops the services again, whatever the outcome.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh install
bash scripts/services.sh start
trap 'bash scripts/services.sh stop' EXIT
set -a
# shellcheck disable=SC1091
. "${SAFEGUARD_SERVICES_DIR:-.services}/env"
set +a

# A clean debug build of every target takes about 2 GB; say so up front rather than letting the linker
# fail deep in the build with "No space left on device".
target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir"
free_kb=$(df -Pk "$target_dir" | awk 'NR==2 {print $4}')
if [ "${free_kb:-0}" -lt $((3 * 1024 * 1024)) ]; then
    echo "warning: only $((free_kb / 1024)) MiB free for $target_dir; a clean test build needs about 3 GiB." >&2
    echo "         Free space (e.g. cargo clean in other checkouts) if the build fails." >&2
fi

cargo test --locked --workspace --all-targets "$@"
