#!/usr/bin/env bash
# Runs every Nexmark query of this build at 1 and 2 workers, RUNS times each (default 3),
# and prints the median run's events/s and events per CPU second.
# Usage: [QUERIES="q0 q4"] [RUNS=3] scripts/bench-nexmark.sh [EVENTS] (default 10,000,000;
# every query of this build unless QUERIES).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/oxflow-target}"
events="${1:-10000000}"
cargo build --release --quiet --bin oxflow
bin="$CARGO_TARGET_DIR/release/oxflow"
printf "%-5s %7s %12s %14s %10s %12s\n" query workers events/s events/cpu-s cpu_s output_rows
for q in ${QUERIES:-q0 q1 q2 q3 q4 q5 q7 q8 q11}; do
  for w in 1 2; do
    lines=()
    for _ in $(seq "${RUNS:-3}"); do
      lines+=("$("$bin" nexmark --query "$q" --events "$events" --workers "$w" | tail -n 1)")
    done
    python3 - "${lines[@]}" <<'PY'
import json, sys
runs = sorted((json.loads(a) for a in sys.argv[1:]), key=lambda r: r["events_per_sec"])
r = runs[len(runs) // 2]
print(f"{r['query']:<5} {r['workers']:>7} {r['events_per_sec']:>12,.0f} {r['events']/r['cpu_seconds']:>14,.0f} {r['cpu_seconds']:>10.2f} {r['output_rows']:>12,}")
PY
  done
done
