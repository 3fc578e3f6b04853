#!/usr/bin/env bash
# End-to-end latency, Kafka to Kafka (benches/latency.rs), read by a read_committed consumer:
# - q0: a producer stamps each bid's send time, Oxflow's q0 copies bids to another topic, and
#   each record's latency is its arrival minus its send;
# - q5 (hop windows of 10 s every 2 s): each bid's event time is its send time, and each
#   window's latency is the arrival of its first row minus the moment it became due (its end
#   plus the 4 s watermark delay); one sample per window, so run it long enough.
# At-least-once and exactly-once (checkpoints every INTERVAL ms), at each rate. Starts its
# own broker (scripts/kafka.sh, on a free port) unless KAFKA_PORT names one already running.
#
#   [QUERIES="q0 q5"] scripts/bench-latency.sh [SECONDS] [INTERVAL_MS] [RATE...]
#                                                          (default 20 1000 5000 50000)
set -euo pipefail
seconds=${1:-20}
interval=${2:-1000}
shift $(( $# < 2 ? $# : 2 ))
rates=("$@")
[ ${#rates[@]} -gt 0 ] || rates=(5000 50000)
# shellcheck source=scripts/bench-lib.sh
source "$(dirname "$0")/bench-lib.sh"
bench_kafka latency
run=$$

read -r -a queries <<< "${QUERIES:-q0 q5}"
delay_ms=4000

printf '%-5s %-14s %8s %10s %8s %8s %8s\n' query guarantee rate/s received p50-ms p99-ms max-ms
for query in "${queries[@]}"; do
  for rate in "${rates[@]}"; do
    for guarantee in at-least-once exactly-once; do
      tag=$query-$guarantee-$rate-$run
      "$kafka" topic "in-$tag" 2 > /dev/null
      "$kafka" topic "out-$tag" 2 > /dev/null
      chk=()
      [ "$guarantee" = exactly-once ] && chk=(--checkpoint-dir "$work/chk-$tag" --checkpoint-interval-ms "$interval")
      "$bin" nexmark --query "$query" --workers 2 --watermark-delay-ms "$delay_ms" --source "kafka://$broker/in-$tag" --events $((rate * seconds)) \
        --sink "kafka://$broker/out-$tag?guarantee=$guarantee" "${chk[@]}" > "$work/ox-$tag.log" 2>&1 &
      ox=$!
      sleep 2   # the job's consumers join before the first bid is stamped
      result=$(cargo bench --quiet --manifest-path "$root/Cargo.toml" --bench latency -- \
        "$broker" "in-$tag" "out-$tag" "$rate" "$seconds" "$query" "$delay_ms" | tail -1)
      kill "$ox" 2>/dev/null || true
      wait "$ox" 2>/dev/null || true
      python3 - "$result" "$guarantee" "$rate" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
print(f"{r['query']:<5} {sys.argv[2]:<14} {int(sys.argv[3]):8d} {r['received']:10d} {r['p50_ms']:8d} {r['p99_ms']:8d} {r['max_ms']:8d}")
PY
    done
  done
done
