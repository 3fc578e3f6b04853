#!/usr/bin/env bash
# Every test of the workspace, including those against a real Apache Kafka broker, a real
# NATS server, a real RabbitMQ server (scripts/rabbitmq.sh) and an S3-protocol server (s3s-fs, scripts/s3.sh) (and the metrics test, with promtool from scripts/promtool.sh): starts the
# broker of scripts/kafka.sh and the server of scripts/nats.sh on free loopback ports (fetching
# Kafka with Maven, installing nats-server, the first time), runs
# `cargo test --release --workspace -- --include-ignored`, and stops what it started, whatever
# happens. Extra arguments go to the test binaries (e.g. a name filter).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/oxflow-target}

KAFKA_PORT=${KAFKA_PORT:-$("$root/scripts/kafka.sh" free-port)}
export KAFKA_PORT
"$root/scripts/kafka.sh" start
trap '"$root/scripts/kafka.sh" stop' EXIT
export OXFLOW_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
NATS_PORT=${NATS_PORT:-$("$root/scripts/nats.sh" free-port)}
export NATS_PORT
"$root/scripts/nats.sh" start
trap '"$root/scripts/kafka.sh" stop; "$root/scripts/nats.sh" stop' EXIT
S3_PORT=${S3_PORT:-$("$root/scripts/s3.sh" free-port)}
export S3_PORT
"$root/scripts/s3.sh" start
trap '"$root/scripts/kafka.sh" stop; "$root/scripts/nats.sh" stop; "$root/scripts/s3.sh" stop' EXIT
RABBITMQ_PORT=${RABBITMQ_PORT:-$("$root/scripts/rabbitmq.sh" free-port)}
export RABBITMQ_PORT
"$root/scripts/rabbitmq.sh" start
trap '"$root/scripts/kafka.sh" stop; "$root/scripts/nats.sh" stop; "$root/scripts/s3.sh" stop; "$root/scripts/rabbitmq.sh" stop' EXIT
export OXFLOW_RABBITMQ_URL=127.0.0.1:$RABBITMQ_PORT
export OXFLOW_NATS_URL=127.0.0.1:$NATS_PORT
# The S3 tests' endpoint, bucket and credentials (test values of the local server).
set -a
eval "$("$root/scripts/s3.sh" env)"
set +a
# The metrics test checks /metrics with Prometheus' own promtool.
OXFLOW_PROMTOOL=$("$root/scripts/promtool.sh")
export OXFLOW_PROMTOOL
cargo test --release --workspace --manifest-path "$root/Cargo.toml" -- --include-ignored "$@"
# With no filter, the dashboard's browser test too (Chromium, Playwright).
if [ "$#" -eq 0 ]; then
  "$root/scripts/test-browser.sh"
fi
