#!/usr/bin/env bash
# Kafka pass-through throughput: Oxflow's q0 from Kafka to Kafka beside a plain rdkafka
# consumer + producer loop (benches/kafka.rs) on the same input topic, in the same run, with
# and without exactly-once. Starts its own broker (scripts/kafka.sh, on a free port) unless
# KAFKA_PORT names one already running.
#
#   scripts/bench-kafka.sh [EVENTS]     (generator events; about 92 % are bids)
set -euo pipefail
events=${1:-2000000}
# shellcheck source=scripts/bench-lib.sh
source "$(dirname "$0")/bench-lib.sh"
bench_kafka kafka
run=$$
field() { sed "s/.*\"$1\":\\([0-9.e+-]*\\).*/\\1/"; }

"$kafka" topic "in-$run" 4
for t in base-plain base-eos ox-plain ox-eos; do "$kafka" topic "$t-$run" 4; done
bids=$("$bin" nexmark --query q0 --events "$events" --workers 1 --sink "kafka://$broker/in-$run" | tail -1 | field output_rows)
echo "input: $bids bids in in-$run (4 partitions)"

printf '%-14s %-10s %14s %12s %10s %16s\n' system guarantee records/s MB/s cpu-s records/cpu-s
for mode in plain eos; do
  extra=() guarantee=at-least-once
  [ "$mode" = eos ] && extra=(exactly-once) guarantee=exactly-once
  base=$(cargo bench --quiet --manifest-path "$root/Cargo.toml" --bench kafka -- \
    "$broker" "in-$run" "base-$mode-$run" "$bids" "${extra[@]}" | tail -1)
  bytes_per_record=$(python3 -c "import json,sys; b=json.loads(sys.argv[1]); print(b['mb_per_sec']*1e6/b['records_per_sec'])" "$base")
  chk=()
  [ "$mode" = eos ] && chk=(--checkpoint-dir "$work/chk-$mode" --checkpoint-interval-ms 1000)
  ox=$("$bin" nexmark --query q0 --workers 2 --source "kafka://$broker/in-$run" --events "$bids" \
    --sink "kafka://$broker/ox-$mode-$run?guarantee=$guarantee" "${chk[@]}" | tail -1)
  python3 - "$base" "$ox" "$guarantee" "$bytes_per_record" <<'PY'
import json, sys
base, ox, guarantee, bpr = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3], float(sys.argv[4])
rows = [("rdkafka loop", base["records_per_sec"], base["cpu_seconds"], base["records"]),
        ("oxflow q0", ox["events_per_sec"], ox["cpu_seconds"], ox["events"])]
for name, rate, cpu, n in rows:
    print(f"{name:<14} {guarantee:<10} {rate/1e6:13.3f}M {rate*bpr/1e6:12.1f} {cpu:10.2f} {n/cpu/1e6:15.3f}M")
print(f"{'ratio':<14} {guarantee:<10} {ox['events_per_sec']/base['records_per_sec']:13.2f}x")
PY
done
