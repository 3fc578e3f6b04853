#!/usr/bin/env bash
# State-heavy jobs (benches/state.rs) with state in memory against state in RocksDB under a
# memory budget, side by side in one run: per job, records, events/s, peak RSS, the last
# checkpoint's duration, the state and the bytes it added; then, for RocksDB, a restore from
# the latest checkpoint (time and peak RSS).
# Usage: scripts/bench-state.sh [KEYS] [CHECKPOINTS] [BUDGET_MB]
# (defaults 20,000,000 distinct keys, 8 checkpoints 2 s apart, 64 MiB per operator subtask).
# JOBS="window running session join window-join topn" picks the jobs.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/oxflow-target}"
keys="${1:-20000000}"
checkpoints="${2:-8}"
budget="${3:-64}"
cargo bench --quiet --bench state --no-run 2>/dev/null
bench=$(ls -t "$CARGO_TARGET_DIR"/release/deps/state-* | grep -v '\.d$' | head -n 1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf "%-12s %-9s %11s %11s %9s %10s %13s %13s %11s %9s\n" \
  job storage records events/s peak_MiB last_ms state_bytes last_new_bytes restore_ms rest_MiB
for job in ${JOBS:-window running session join window-join topn}; do
  for mb in 0 "$budget"; do
    dir="$work/$job-$mb"
    run=$("$bench" run "$dir" "$keys" "$checkpoints" 2000 "$mb" "$job")
    restore='{}'
    if [ "$mb" != 0 ]; then
      restore=$("$bench" restore "$dir" "$keys" 1 2000 "$mb" "$job" | tail -n 1)
    fi
    python3 - "$job" "$mb" "$restore" <<PY
import json, sys
job, mb, restore = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
lines = [json.loads(l) for l in """$run""".splitlines() if l.startswith("{")]
cps = [l for l in lines if "checkpoint" in l]
run = [l for l in lines if l.get("phase") == "run"][0]
last = max(cps, key=lambda c: c["checkpoint"]) if cps else {}
storage = "memory" if mb == "0" else f"rocksdb{mb}"
print(f"{job:<12} {storage:<9} {run['records']:>11,} {run['events_per_sec']:>11,.0f} {run['peak_rss_mib']:>9,.0f} "
      f"{last.get('duration_ms', '-'):>10} {last.get('state_bytes', 0):>13,} {last.get('new_state_bytes', 0):>13,} "
      f"{restore.get('restore_state_ms', '-'):>11} {restore.get('peak_rss_mib', '-'):>9}")
PY
    rm -rf "$dir"
  done
done
