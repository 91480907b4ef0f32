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

cargo test --locked --all-targets "$@"
