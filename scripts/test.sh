#!/usr/bin/env bash
# Every test of the workspace, including those against a real Apache Kafka broker (and the
# metrics test, with promtool from scripts/promtool.sh): starts the
# broker of scripts/kafka.sh on a free loopback port (fetching Kafka with Maven the first
# time), runs `cargo test --release --workspace -- --include-ignored`, and stops the broker it
# started, whatever happens. Extra arguments go to the test binaries (e.g. a name filter).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/oxflow-target}

KAFKA_PORT=${KAFKA_PORT:-$("$root/scripts/kafka.sh" free-port)}
export KAFKA_PORT
"$root/scripts/kafka.sh" start
trap '"$root/scripts/kafka.sh" stop' EXIT
export OXFLOW_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
# The metrics test checks /metrics with Prometheus' own promtool.
OXFLOW_PROMTOOL=$("$root/scripts/promtool.sh")
export OXFLOW_PROMTOOL
cargo test --release --workspace --manifest-path "$root/Cargo.toml" -- --include-ignored "$@"
# With no filter, the dashboard's browser test too (Chromium, Playwright).
if [ "$#" -eq 0 ]; then
  "$root/scripts/test-browser.sh"
fi
