#!/usr/bin/env bash
# Chaos test of exactly-once from NATS JetStream to NATS JetStream: a windowed Nexmark query
# reads bids from one stream and writes its results to another, with checkpoints (the sink
# publishes each epoch at its checkpoint's commit, with message ids the server deduplicates).
# The job is killed with SIGKILL at random moments and restarted with `--restore latest` until
# it finishes; the server itself is restarted once in the middle (with its store). The output
# stream must then hold exactly the output of an uninterrupted run, as a multiset. (Each kill
# comes well within the stream's two-minute duplicate window, the guarantee's stated limit.)
#
#   scripts/chaos-nats.sh [--query q5] [--events 300000] [--rate 60000] [--kills 6] [--seed N]
#
# Needs the server of scripts/nats.sh running on 127.0.0.1:${NATS_PORT:-4222}, and Python 3
# (nats-py, installed into a virtual environment under ~/.cache/oxflow-tools the first time,
# creates the streams and reads the output).
set -euo pipefail

query=q5 events=300000 rate=60000 kills=6 seed=${RANDOM}
while [ $# -gt 0 ]; do
  case "$1" in
    --query) query=$2; shift 2 ;;
    --events) events=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --kills) kills=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
RANDOM=$seed

root=$(cd "$(dirname "$0")/.." && pwd)
nats=$root/scripts/nats.sh
"$nats" status > /dev/null || { echo "chaos-nats: start the server first: $nats start" >&2; exit 1; }
server=127.0.0.1:${NATS_PORT:-4222}
venv=$HOME/.cache/oxflow-tools/venv
if ! "$venv/bin/python" -c 'import nats' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet nats-py
fi
tool() { "$venv/bin/python" "$root/scripts/nats-tool.py" "$@"; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/oxflow-target}
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin oxflow
bin=$CARGO_TARGET_DIR/release/oxflow

export RUST_LOG=${RUST_LOG:-warn}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run_id=$$_$seed
input=CHAOS_BIDS_$run_id output=CHAOS_OUT_$run_id
tool create-stream "$server" "$input"
tool create-stream "$server" "$output"

echo "chaos-nats: query $query, $events events, $kills kills, seed $seed, streams $input -> $output"
bids=$("$bin" nexmark --query q0 --events "$events" --event-rate 2000 --workers 1 \
  --sink "nats://$server/$input?subject=$input.bids" | tail -1 | sed 's/.*"output_rows":\([0-9]*\).*/\1/')
echo "input: $bids bids"
common=(nexmark --query "$query" --source "nats://$server/$input?bounded=true")
"$bin" "${common[@]}" --workers 2 --sink "file:$work/expected" > /dev/null
cat "$work"/expected/part-* 2>/dev/null | sort > "$work/expected.sorted"

# shellcheck source=scripts/chaos-lib.sh
. "$root/scripts/chaos-lib.sh"
chaos_attempts "nats://$server/$output?subject=$output.results" server "$nats" restart

tool dump "$server" "$output" | sort > "$work/actual.sorted"
expected=$(wc -l < "$work/expected.sorted") actual=$(wc -l < "$work/actual.sorted")
if cmp -s "$work/expected.sorted" "$work/actual.sorted"; then
  echo "chaos-nats: PASS: $actual rows in the output stream equal the uninterrupted run's $expected"
else
  echo "chaos-nats: FAIL: $actual rows in the output stream, expected $expected; differences (< expected, > actual):" >&2
  diff "$work/expected.sorted" "$work/actual.sorted" | head -20 >&2
  exit 1
fi
