#!/usr/bin/env bash
# Connector throughput, each beside a plain loop of the same library (benches/connectors.rs) on
# the same input, in the same run:
#   - NATS JetStream to NATS JetStream: Oxflow's q0 (at least once; and exactly once with
#     checkpoints every second) beside an async-nats ordered consumer + publisher loop.
#   - Parquet files in: Oxflow's q0 into a blackhole beside an arrow-rs reader loop.
# Starts its own NATS server (scripts/nats.sh, on a free port); nats-py (scripts/nats-tool.py)
# creates the streams.
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
trap '"$nats" stop > /dev/null; rm -rf "$work"' EXIT
"$nats" start
server=127.0.0.1:$NATS_PORT
venv=$HOME/.cache/oxflow-tools/venv
if ! "$venv/bin/python" -c 'import nats' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet nats-py
fi
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

"$bin" nexmark --query q0 --events "$events" --workers 1 --sink "file:$work/parquet?format=parquet" > /dev/null
echo "parquet: $(ls "$work/parquet" | wc -l) files, $(du -sh "$work/parquet" | cut -f1)"
base=$(baseline parquet "$work/parquet")
ox=$("$bin" nexmark --query q0 --workers 2 --source "file:$work/parquet" --sink blackhole | tail -1)
report "arrow-rs parquet" "-" "$base" "$ox"
