#!/usr/bin/env bash
# Chaos test of RabbitMQ in and out, within each side's stated guarantee: a windowed Nexmark
# query reads bids from a RabbitMQ stream by offset (exactly once on the source side) and
# publishes its results to a quorum queue with publisher confirms (at least once). The job is
# killed with SIGKILL at random moments and restarted with `--restore latest` until it
# finishes; the server itself is restarted once in the middle (with its data). The queue must
# then hold every row of an uninterrupted run; repeats are counted and reported (the sink's
# stated limit).
#
# With `--input queue` the bids come from a classic queue instead (`mode=queue`: competing
# consumers, acknowledged when a checkpoint completes, at least once): the query must then be
# one that a repeated bid does not change the rows of (q0, q1, q2), and the output must hold
# every row, repeats counted.
#
#   scripts/chaos-rabbitmq.sh [--input stream|queue] [--query q5] [--events 200000] [--rate 20000] [--kills 6] [--seed N]
#
# Needs the server of scripts/rabbitmq.sh running on 127.0.0.1:${RABBITMQ_PORT:-5672}, and
# Python 3 (pika, installed into a virtual environment under ~/.cache/oxflow-tools the first
# time, declares the queues and reads the output).
set -euo pipefail

input_kind=stream query=q5 events=200000 rate=20000 kills=6 seed=${RANDOM}
while [ $# -gt 0 ]; do
  case "$1" in
    --input) input_kind=$2; shift 2 ;;
    --query) query=$2; shift 2 ;;
    --events) events=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --kills) kills=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
RANDOM=$seed
case "$input_kind:$query" in
  stream:*) ;;
  queue:q0 | queue:q1 | queue:q2) ;;
  queue:*) echo "chaos-rabbitmq: a queue is read at least once: use q0, q1 or q2 with --input queue" >&2; exit 2 ;;
  *) echo "chaos-rabbitmq: --input is stream or queue" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
rabbitmq=$root/scripts/rabbitmq.sh
"$rabbitmq" status > /dev/null || { echo "chaos-rabbitmq: start the server first: $rabbitmq start" >&2; exit 1; }
server=127.0.0.1:${RABBITMQ_PORT:-5672}
venv=$HOME/.cache/oxflow-tools/venv
if ! "$venv/bin/python" -c 'import pika' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet pika
fi
tool() { "$venv/bin/python" "$root/scripts/rabbitmq-tool.py" "$@"; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/oxflow-target}
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin oxflow
bin=$CARGO_TARGET_DIR/release/oxflow

export RUST_LOG=${RUST_LOG:-warn}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run_id=$$-$seed
bids_of() {
  "$bin" nexmark --query q0 --events "$events" --event-rate 2000 --workers 1 \
    --sink "rabbitmq://$server/$1" | tail -1 | sed 's/.*"output_rows":\([0-9]*\).*/\1/'
}

echo "chaos-rabbitmq: $input_kind in, query $query, $events events, $kills kills, seed $seed"
input=chaos-bids-$run_id output=chaos-out-$run_id
tool declare "$server" quorum "$output"
if [ "$input_kind" = stream ]; then
  tool declare "$server" stream "$input"
  echo "input: $(bids_of "$input") bids in stream $input"
  common=(nexmark --query "$query" --source "rabbitmq://$server/$input?bounded=true")
  "$bin" "${common[@]}" --workers 2 --sink "file:$work/expected" > /dev/null
else
  # A queue read empties it: the uninterrupted run reads a queue of its own.
  tool declare "$server" classic "$input"
  tool declare "$server" classic "$input-expected"
  echo "input: $(bids_of "$input") bids in queue $input"
  bids_of "$input-expected" > /dev/null
  "$bin" nexmark --query "$query" --source "rabbitmq://$server/$input-expected?mode=queue&bounded=true" \
    --workers 2 --sink "file:$work/expected" > /dev/null
  common=(nexmark --query "$query" --source "rabbitmq://$server/$input?mode=queue&bounded=true")
fi
cat "$work"/expected/part-* 2>/dev/null | sort > "$work/expected.sorted"

# shellcheck source=scripts/chaos-lib.sh
. "$root/scripts/chaos-lib.sh"
chaos_attempts "rabbitmq://$server/$output" server "$rabbitmq" restart

tool drain "$server" "$output" | sort > "$work/actual.sorted"
sort -u "$work/actual.sorted" > "$work/actual.distinct"
expected=$(wc -l < "$work/expected.sorted") actual=$(wc -l < "$work/actual.sorted")
repeats=$((actual - $(wc -l < "$work/actual.distinct")))
if cmp -s "$work/expected.sorted" "$work/actual.distinct"; then
  echo "chaos-rabbitmq: PASS: every one of the uninterrupted run's $expected rows, and $repeats repeats (at least once)"
else
  echo "chaos-rabbitmq: FAIL: $actual rows ($repeats repeats), expected $expected; differences (< expected, > actual):" >&2
  diff "$work/expected.sorted" "$work/actual.distinct" | head -20 >&2
  exit 1
fi
