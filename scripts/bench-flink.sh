#!/usr/bin/env bash
# Oxflow beside Apache Flink on the same machine, the same bids and the same queries.
#
#   scripts/bench-flink.sh [EVENTS] [PARALLELISM]      (defaults: 5000000 events, 2)
#
# Installs Apache Flink's Python distribution from PyPI (apache-flink, which brings the Flink
# runtime; Java 17 runs it) into a virtual environment under ~/.cache once. Oxflow's generator
# writes its people, auctions and bids once as JSON lines (`oxflow nexmark-tables`); both
# systems then read those same files with the same watermark (4 s), at the same parallelism,
# into a blackhole sink: Oxflow with `nexmark --source file:DIR`, Flink with the Nexmark
# queries in Flink SQL on its local mini-cluster (benches/flink/nexmark.py). First, on small
# input, the results of both are compared row for row (q4, which both emit as a changelog,
# by each category's final average).
#
# Records per second count the rows of the tables a query reads: bids for q0-q2, q5, q7 and
# q11; people and auctions for q3 and q8; auctions and bids for q4.
#
# Prints a table: query, records/s of each (Flink: execution time, after the job is planned
# and deployed), their ratio, CPU seconds and peak RSS of each (Oxflow's process from
# /usr/bin/time; Flink's JVM, which PyFlink starts, plus PyFlink's Python process), and
# writes it as TSV to $OUT (default: bench-flink.tsv in the cargo target directory).
set -euo pipefail
events=${1:-5000000}
parallelism=${2:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/oxflow-target}
out=${OUT:-$CARGO_TARGET_DIR/bench-flink.tsv}
# shellcheck source=scripts/flink-lib.sh
source "$root/scripts/flink-lib.sh"
py=$(flink_python matplotlib)
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin oxflow
bin=$CARGO_TARGET_DIR/release/oxflow
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])[sys.argv[1]])" "$1"; }
# Runs a command under /usr/bin/time; prints "cpu_seconds max_rss_mb" of it, its stdout to $2.
measured() {
  local stdout=$1; shift
  /usr/bin/time -f "%U %S %M" -o "$work/time" "$@" > "$stdout" 2> "$work/stderr" \
    || { tail -20 "$work/stderr" >&2; return 1; }
  awk '{printf "%.2f %.0f\n", $1 + $2, $3 / 1024}' "$work/time"
}

echo "== results compared on small input (200000 events, parallelism $parallelism)"
"$bin" nexmark-tables --out "$work/small" --events 200000 --event-rate 10000 --workers 1 > /dev/null
for q in q2 q3 q4 q5 q7 q8 q11; do
  "$py" "$root/benches/flink/nexmark.py" --input "$work/small" --query "$q" --parallelism "$parallelism" --collect \
    > "$work/$q.flink" 2> "$work/$q.flink.log"
  "$bin" nexmark --query "$q" --source "file:$work/small" --workers "$parallelism" --sink "file:$work/$q.oxflow" > /dev/null
  printf '%-4s ' "$q"
  if [ "$q" = q4 ]; then
    python3 "$root/benches/flink/compare.py" --changelog category avg_final "$work/$q.oxflow" "$work/$q.flink"
  else
    python3 "$root/benches/flink/compare.py" "$work/$q.oxflow" "$work/$q.flink"
  fi
done

echo "== throughput: $events generated events, parallelism $parallelism, blackhole sinks"
# One file per split and table (the file source spreads files over splits, as Flink does).
"$bin" nexmark-tables --out "$work/tables" --events "$events" --workers "$parallelism" > "$work/fill.json"
people=$(field person < "$work/fill.json"); auctions=$(field auction < "$work/fill.json"); bids=$(field bid < "$work/fill.json")
echo "input: $people people, $auctions auctions, $bids bids; $(du -sh "$work/tables" | cut -f1) of JSON lines"
printf 'query\toxflow_records_per_sec\tflink_records_per_sec\tratio\toxflow_cpu_s\tflink_cpu_s\toxflow_rss_mb\tflink_rss_mb\toxflow_per_cpu_s\tflink_per_cpu_s\n' > "$out"
printf '%-5s %14s %14s %7s %10s %10s %9s %9s\n' query oxflow/s flink/s ratio ox-cpu-s fl-cpu-s ox-rss fl-rss
for q in ${QUERIES:-q0 q1 q2 q3 q4 q5 q7 q8 q11}; do
  case $q in
    q3|q8) records=$((people + auctions)) ;;
    q4) records=$((auctions + bids)) ;;
    *) records=$bids ;;
  esac
  read -r ox_cpu ox_rss < <(measured "$work/ox.json" "$bin" nexmark --query "$q" --source "file:$work/tables" --workers "$parallelism")
  read -r fl_cpu fl_rss < <(measured "$work/fl.json" "$py" "$root/benches/flink/nexmark.py" --input "$work/tables" --query "$q" --parallelism "$parallelism" --records "$records")
  ox_rate=$(field events_per_sec < "$work/ox.json")
  fl_rate=$(field records_per_sec < "$work/fl.json")
  # Flink: its JVM's CPU and peak RSS (PyFlink's own Python process is small beside it).
  fl_cpu=$(python3 -c "print(round($fl_cpu + $(field jvm_cpu_seconds < "$work/fl.json"), 2))")
  fl_rss=$(python3 -c "print(round(max($fl_rss, $(field jvm_peak_rss_mb < "$work/fl.json"))))")
  python3 - "$q" "$ox_rate" "$fl_rate" "$ox_cpu" "$fl_cpu" "$ox_rss" "$fl_rss" "$records" "$out" <<'PY'
import sys
q, ox, fl, oc, fc, orss, frss, n, out = sys.argv[1:]
ox, fl, oc, fc, n = float(ox), float(fl), float(oc), float(fc), int(n)
print(f"{q:<5} {ox/1e6:13.3f}M {fl/1e6:13.3f}M {ox/fl:6.1f}x {oc:10.2f} {fc:10.2f} {orss:>7}MB {frss:>7}MB")
with open(out, "a") as f:
    f.write(f"{q}\t{ox:.0f}\t{fl:.0f}\t{ox/fl:.2f}\t{oc}\t{fc}\t{orss}\t{frss}\t{n/oc:.0f}\t{n/fc:.0f}\n")
PY
done
echo "table: $out"
