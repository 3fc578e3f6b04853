#!/usr/bin/env bash
# Chaos test of exactly-once from Kafka to Kafka: a windowed Nexmark query reads bids from a
# topic and writes its results to another with transactions and checkpoints. The job is
# killed with SIGKILL at random moments and restarted with `--restore latest` until it
# finishes; the broker itself is restarted once in the middle (with its data, as in
# production). A read_committed consumer (Kafka's own console consumer) then must find
# exactly the output of an uninterrupted run, as a multiset: nothing lost, nothing twice.
#
#   scripts/chaos-kafka.sh [--query q5] [--events 300000] [--rate 60000] [--kills 6] [--seed N]
#                          [--event-rate 2000]   (generator events per second of event time)
#
# Needs the broker of scripts/kafka.sh running on 127.0.0.1:${KAFKA_PORT:-9092}.
set -euo pipefail

query=q5 events=300000 rate=60000 kills=6 seed=${RANDOM} event_rate=2000
while [ $# -gt 0 ]; do
  case "$1" in
    --query) query=$2; shift 2 ;;
    --events) events=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --kills) kills=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --event-rate) event_rate=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
RANDOM=$seed

root=$(cd "$(dirname "$0")/.." && pwd)
kafka=$root/scripts/kafka.sh
"$kafka" status > /dev/null || { echo "chaos-kafka: start the broker first: $kafka start" >&2; exit 1; }
broker=127.0.0.1:${KAFKA_PORT:-9092}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/oxflow-target}
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin oxflow
bin=$CARGO_TARGET_DIR/release/oxflow

export RUST_LOG=${RUST_LOG:-warn}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run_id=$$-$seed
input=chaos-bids-$run_id output=chaos-out-$run_id
"$kafka" topic "$input" 4
"$kafka" topic "$output" 3

echo "chaos-kafka: query $query, $events events, $kills kills, seed $seed, topics $input -> $output"
# The input: the generator's bids, written by one writer so each partition is in order.
bids=$("$bin" nexmark --query q0 --events "$events" --event-rate "$event_rate" --workers 1 \
  --sink "kafka://$broker/$input" | tail -1 | sed 's/.*"output_rows":\([0-9]*\).*/\1/')
echo "input: $bids bids"
common=(nexmark --query "$query" --source "kafka://$broker/$input" --events "$bids")
"$bin" "${common[@]}" --workers 2 --sink "file:$work/expected" > /dev/null
cat "$work"/expected/part-* 2>/dev/null | sort > "$work/expected.sorted"

# shellcheck source=scripts/chaos-lib.sh
. "$root/scripts/chaos-lib.sh"
chaos_attempts "kafka://$broker/$output" broker "$kafka" restart

"$kafka" consume "$output" | sort > "$work/actual.sorted"
expected=$(wc -l < "$work/expected.sorted") actual=$(wc -l < "$work/actual.sorted")
if cmp -s "$work/expected.sorted" "$work/actual.sorted"; then
  echo "chaos-kafka: PASS: $actual committed rows equal the uninterrupted run's $expected"
else
  echo "chaos-kafka: FAIL: $actual committed rows, expected $expected; differences (< expected, > actual):" >&2
  diff "$work/expected.sorted" "$work/actual.sorted" | head -20 >&2
  exit 1
fi
