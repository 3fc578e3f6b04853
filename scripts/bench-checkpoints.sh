#!/usr/bin/env bash
# Throughput with checkpoints every second against none, side by side in one run: each query
# at 2 workers, alternating the two modes, RUNS times each (default 3), median of each.
# Usage: scripts/bench-checkpoints.sh [EVENTS] (default 30,000,000: long enough for several
# checkpoints). STATE_MB=N runs both sides with state in RocksDB and N MiB in memory per
# window operator subtask (--state-memory-budget-mb).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/oxflow-target}"
events="${1:-30000000}"
cargo build --release --quiet --bin oxflow
bin="$CARGO_TARGET_DIR/release/oxflow"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf "%-5s %-12s %12s %14s %12s %14s %12s\n" query checkpoints events/s events/cpu-s completed last_ms state_bytes
for q in ${QUERIES:-q5 q7 q11}; do
  plain=() checkpointed=() state=()
  if [ -n "${STATE_MB:-}" ]; then state=(--state-memory-budget-mb "$STATE_MB"); fi
  for i in $(seq "${RUNS:-3}"); do
    plain+=("$("$bin" nexmark --query "$q" --events "$events" --workers 2 "${state[@]}" | tail -n 1)")
    checkpointed+=("$("$bin" nexmark --query "$q" --events "$events" --workers 2 "${state[@]}" \
      --checkpoint-dir "$work/$q-$i" --checkpoint-interval-ms 1000 | tail -n 1)")
  done
  for mode in none 1s; do
    if [ "$mode" = none ]; then set -- "${plain[@]}"; else set -- "${checkpointed[@]}"; fi
    python3 - "$mode" "$@" <<'PY'
import json, sys
mode = sys.argv[1]
runs = sorted((json.loads(a) for a in sys.argv[2:]), key=lambda r: r["events_per_sec"])
r = runs[len(runs) // 2]
last = r.get("last_checkpoint_ms")
print(f"{r['query']:<5} {mode:<12} {r['events_per_sec']:>12,.0f} {r['events']/r['cpu_seconds']:>14,.0f} {r['checkpoints']:>12} {last if last is not None else '-':>14} {r['state_bytes']:>12,}")
PY
  done
done
