#!/usr/bin/env bash
# Connector throughput, each beside a plain loop of the same library (benches/connectors.rs) on
# the same input, in the same run:
#   - NATS JetStream to NATS JetStream: Oxflow's q0 (at least once; and exactly once with
#     checkpoints every second) beside an async-nats ordered consumer + publisher loop.
#   - RabbitMQ to RabbitMQ: Oxflow's q0 from a stream (by offset) and from a classic queue
#     (acknowledged at checkpoints, every 200 ms), into a classic queue with publisher
#     confirms, beside a lapin consumer + confirmed publisher loop.
#   - Parquet files in: Oxflow's q0 into a blackhole beside an arrow-rs reader loop.
# Starts its own NATS and RabbitMQ servers (scripts/nats.sh, scripts/rabbitmq.sh, on free
# ports); nats-py and pika (scripts/nats-tool.py, scripts/rabbitmq-tool.py) create the streams
# and queues.
#
#   scripts/bench-connectors.sh [EVENTS]     (generator events; about 92 % are bids)
set -euo pipefail
events=${1:-2000000}
root=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/oxflow-target}
export RUST_LOG=${RUST_LOG:-warn}
nats=$root/scripts/nats.sh
work=$(mktemp -d)
NATS_PORT=$("$nats" free-port)
export NATS_PORT NATS_RUN_DIR=$work/nats
rabbitmq=$root/scripts/rabbitmq.sh
RABBITMQ_PORT=$("$rabbitmq" free-port)
export RABBITMQ_PORT RABBITMQ_RUN_DIR=$work/rabbitmq
trap '"$nats" stop > /dev/null; "$rabbitmq" stop > /dev/null; rm -rf "$work"' EXIT
"$nats" start
"$rabbitmq" start
server=127.0.0.1:$NATS_PORT
venv=$HOME/.cache/oxflow-tools/venv
if ! "$venv/bin/python" -c 'import nats, pika' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet nats-py pika
fi
amqp() { "$venv/bin/python" "$root/scripts/rabbitmq-tool.py" "$@"; }
tool() { "$venv/bin/python" "$root/scripts/nats-tool.py" "$@"; }
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin oxflow
cargo bench --quiet --manifest-path "$root/Cargo.toml" --bench connectors --no-run 2>/dev/null
bin=$CARGO_TARGET_DIR/release/oxflow
field() { sed "s/.*\"$1\":\\([0-9.e+-]*\\).*/\\1/"; }
baseline() { cargo bench --quiet --manifest-path "$root/Cargo.toml" --bench connectors -- "$@" | tail -1; }
report() {
  python3 - "$@" <<'PY'
import json, sys
what, guarantee, base, ox = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
rows = [(f"{what} loop", base["records_per_sec"], base["cpu_seconds"], base["records"]),
        ("oxflow q0", ox["events_per_sec"], ox["cpu_seconds"], ox["events"])]
for name, rate, cpu, n in rows:
    print(f"{name:<18} {guarantee:<14} {n:>10} {rate/1e6:12.3f}M {cpu:8.2f} {n/cpu/1e6:14.3f}M")
print(f"{'oxflow / loop':<18} {guarantee:<14} {'':>10} {ox['events_per_sec']/base['records_per_sec']:12.2f}x "
      f"{'':>8} {(ox['events']/ox['cpu_seconds'])/(base['records']/base['cpu_seconds']):14.2f}x")
PY
}

for s in IN BASE OXALO OXEO; do tool create-stream "$server" "$s"; done
bids=$("$bin" nexmark --query q0 --events "$events" --workers 1 --sink "nats://$server/IN?subject=IN.bids" | tail -1 | field output_rows)
echo "input: $bids bids in stream IN"
printf '%-18s %-14s %10s %13s %8s %15s\n' system guarantee records records/s cpu-s records/cpu-s
base=$(baseline nats "$server" IN BASE "$bids")
ox=$("$bin" nexmark --query q0 --workers 2 --source "nats://$server/IN?bounded=true" \
  --sink "nats://$server/OXALO?subject=OXALO.out" | tail -1)
report "async-nats" at-least-once "$base" "$ox"
ox=$("$bin" nexmark --query q0 --workers 2 --source "nats://$server/IN?bounded=true" \
  --sink "nats://$server/OXEO?subject=OXEO.out" --checkpoint-dir "$work/chk" \
  --checkpoint-interval-ms 1000 | tail -1)
report "async-nats" exactly-once "$base" "$ox"

rmq=127.0.0.1:$RABBITMQ_PORT
amqp declare "$rmq" stream bids-stream
for q in bids-loop bids-oxflow out-loop out-stream out-queue; do amqp declare "$rmq" classic "$q"; done
for q in bids-stream bids-loop bids-oxflow; do
  bids=$("$bin" nexmark --query q0 --events "$events" --workers 1 --sink "rabbitmq://$rmq/$q" | tail -1 | field output_rows)
done
echo "input: $bids bids in stream bids-stream and in queues bids-loop, bids-oxflow"
base=$(baseline rabbitmq "$rmq" stream bids-stream out-loop "$bids")
ox=$("$bin" nexmark --query q0 --workers 2 --source "rabbitmq://$rmq/bids-stream?bounded=true" \
  --sink "rabbitmq://$rmq/out-stream" | tail -1)
report "lapin stream" at-least-once "$base" "$ox"
base=$(baseline rabbitmq "$rmq" queue bids-loop out-loop "$bids")
ox=$("$bin" nexmark --query q0 --workers 2 --source "rabbitmq://$rmq/bids-oxflow?mode=queue&bounded=true" \
  --sink "rabbitmq://$rmq/out-queue" --checkpoint-dir "$work/chk-rabbitmq" \
  --checkpoint-interval-ms 200 | tail -1)
report "lapin queue" at-least-once "$base" "$ox"
"$rabbitmq" stop > /dev/null

"$bin" nexmark --query q0 --events "$events" --workers 1 --sink "file:$work/parquet?format=parquet" > /dev/null
echo "parquet: $(ls "$work/parquet" | wc -l) files, $(du -sh "$work/parquet" | cut -f1)"
base=$(baseline parquet "$work/parquet")
ox=$("$bin" nexmark --query q0 --workers 2 --source "file:$work/parquet" --sink blackhole | tail -1)
report "arrow-rs parquet" "-" "$base" "$ox"
