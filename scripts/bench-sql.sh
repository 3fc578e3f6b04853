#!/usr/bin/env bash
# The SQL version of each Nexmark query beside the Rust API's, in one run on one machine:
# `oxflow sql` on Nexmark's own DDL and query text (examples/sql) against `oxflow nexmark`,
# alternating, RUNS times each (default 3); prints the median run's events/s and events per
# CPU second of both, and SQL's per CPU second as a share of Rust's.
# Usage: [QUERIES="q0 q11"] [RUNS=3] [WORKERS=2] scripts/bench-sql.sh [EVENTS] (default 10,000,000)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/oxflow-target}"
events="${1:-10000000}"
workers="${WORKERS:-2}"
cargo build --release --quiet --bin oxflow
bin="$CARGO_TARGET_DIR/release/oxflow"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# The DDL on EVENTS events, at the parallelism of the Rust runs.
sed "s/'events.num' = '10000000'/'events.num' = '$events'/" examples/sql/nexmark-ddl.sql >"$tmp/ddl.sql"
echo "SET 'parallelism.default' = '$workers';" >>"$tmp/ddl.sql"
printf "%-5s %5s %12s %14s %12s %14s %8s\n" query rows rust_ev/s rust_ev/cpu-s sql_ev/s sql_ev/cpu-s sql/rust
for q in ${QUERIES:-q0 q1 q2 q3 q5 q7 q8 q11}; do
  rust=() sql=()
  for _ in $(seq "${RUNS:-3}"); do
    rust+=("$("$bin" nexmark --query "$q" --events "$events" --workers "$workers" | tail -n 1)")
    sql+=("$("$bin" sql -f "$tmp/ddl.sql" -f "examples/sql/$q.sql" | tail -n 1)")
  done
  python3 - "$q" "${rust[*]}" "${sql[*]}" <<'PY'
import json, sys
def median(text):
    runs = sorted((json.loads(l) for l in text.replace("} {", "}\n{").splitlines()),
                  key=lambda r: r["events"] / r["cpu_seconds"])
    return runs[len(runs) // 2]
q, rust, sql = sys.argv[1], median(sys.argv[2]), median(sys.argv[3])
per_cpu = lambda r: r["events"] / r["cpu_seconds"]
assert rust["output_rows"] == sql["output_rows"], (rust["output_rows"], sql["output_rows"])
print(f"{q:<5} {rust['output_rows']:>5.0e} {rust['events_per_sec']:>12,.0f} {per_cpu(rust):>14,.0f} "
      f"{sql['events_per_sec']:>12,.0f} {per_cpu(sql):>14,.0f} {per_cpu(sql) / per_cpu(rust):>7.0%}")
PY
done
