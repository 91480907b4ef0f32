#!/usr/bin/env bash
# The README's first set-up command: builds safeguard and runs the watcher on its embedded default
# (syslog listener on 127.0.0.1:5514, UDP and TCP; sled store in ./var/safeguard; no Kafka, no config).
# Extra arguments go to `safeguard watch` (e.g. --syslog 127.0.0.1:1514, or a global --config FILE
# before `watch` via SAFEGUARD_CONFIG).
set -euo pipefail
cd "$(dirname "$0")/.."

# The Kafka client builds its bundled librdkafka; TLS needs OpenSSL's headers (found via pkg-config).
missing=()
command -v pkg-config >/dev/null || missing+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
if ((${#missing[@]})); then
    echo "watch.sh: installing build dependencies: ${missing[*]}" >&2
    sudo_cmd=()
    [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

exec cargo run --release --locked --bin safeguard -- watch "$@"
