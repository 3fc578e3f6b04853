#!/usr/bin/env bash
# Every test of the workspace, including those against a real Apache Kafka broker: starts the
# broker of scripts/kafka.sh on a free loopback port (fetching Kafka with Maven the first
# time), runs `cargo test --release --workspace -- --include-ignored`, and stops the broker it
# started, whatever happens. Extra arguments go to the test binaries (e.g. a name filter).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/oxflow-target}

if [ -z "${KAFKA_PORT:-}" ]; then
  # A free port whose successor (the controller's) is free too.
  KAFKA_PORT=$(python3 - <<'PY'
import socket
for _ in range(100):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    t = socket.socket()
    try:
        t.bind(("127.0.0.1", port + 1)); t.close(); print(port); break
    except OSError:
        t.close()
PY
)
fi
export KAFKA_PORT
"$root/scripts/kafka.sh" start
trap '"$root/scripts/kafka.sh" stop' EXIT
export OXFLOW_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
cargo test --release --workspace --manifest-path "$root/Cargo.toml" -- --include-ignored "$@"
