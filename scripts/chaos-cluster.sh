#!/usr/bin/env bash
# Chaos test of a cluster: a runtime server and three `oxflow worker` processes on loopback
# run Nexmark q5 (hopping windows, then top-N per window) from the generator into files with
# checkpoints. A random worker is killed with SIGKILL at random moments, `--kills` times, and
# a replacement started each time; half way, the server itself is killed and started again on
# its data directory. The committed output must equal, as a multiset, the same spec run in
# one process without interruption.
#
#   scripts/chaos-cluster.sh [--events 600000] [--rate 40000] [--kills 5] [--seed N]
#
# Prints one line per event and a final verdict; exits non-zero on any difference.
set -euo pipefail

events=600000 rate=40000 kills=5 seed=${RANDOM}
while [ $# -gt 0 ]; do
  case "$1" in
    --events) events=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --kills) kills=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
RANDOM=$seed

root=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/oxflow-target}
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin oxflow
bin=$CARGO_TARGET_DIR/release/oxflow
export RUST_LOG=${RUST_LOG:-warn,oxflow::server=info,oxflow::cluster=info}

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
[ -n "${KEEP_WORK:-}" ] && trap 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port
# shellcheck source=scripts/cluster-lib.sh
. "$root/scripts/cluster-lib.sh"
echo "chaos-cluster: q5, $events events at $rate/s, $kills worker kills, seed $seed, in $work"

start_server() {
  "$bin" server --listen "127.0.0.1:$port" --data-dir "$work/server" --allow-path "$work" \
    --worker-timeout-ms 3000 --max-restart-attempts 50 --min-restart-backoff-ms 100 \
    >> "$work/server.log" 2>&1 &
  server=$!
  pids+=("$server")
  for _ in $(seq 100); do curl -sf "$url/health" > /dev/null && return; sleep 0.1; done
  echo "the server did not come up" >&2; tail -20 "$work/server.log" >&2; exit 1
}
workers=()
next_worker=0
start_worker() {
  "$bin" worker --server "$url" --token-file "$work/server/token" \
    --data-dir "$work/worker-$next_worker" >> "$work/worker-$next_worker.log" 2>&1 &
  workers+=($!)
  pids+=($!)
  next_worker=$((next_worker + 1))
}

q5_spec "$work/expected" > "$work/expected.json"
"$bin" run "$work/expected.json" > /dev/null

start_server
for _ in 1 2 3; do start_worker; done
wait_workers 3
q5_spec "$work/out" "$rate" > "$work/job.json"
id=$(submit "$work/job.json")
echo "job $id submitted to 3 workers"
status() { job_field "$id" "$1"; }
for k in $(seq "$kills"); do
  sleep "$((RANDOM % 2 + 1)).$((RANDOM % 10))"
  state=$(status "v['state']")
  if [ "$state" = FINISHED ]; then echo "the job finished before kill $k"; break; fi
  if [ "$k" -eq $(((kills + 1) / 2)) ]; then
    kill -9 "$server"; wait "$server" 2>/dev/null || true
    echo "kill $k: server killed (job $state, $(ls "$work/server/jobs/$id/checkpoints" | grep -c '^chk-' || true) checkpoint directories); starting it again"
    start_server
  fi
  victim=$((RANDOM % ${#workers[@]}))
  kill -9 "${workers[$victim]}" 2>/dev/null || true
  wait "${workers[$victim]}" 2>/dev/null || true
  echo "kill $k: worker $victim killed (job $state); a replacement starts"
  unset 'workers[victim]'
  workers=("${workers[@]}")
  start_worker
done
wait_ended "$id"
state=$(status "v['state']")
echo "job $state after $(status "v['restarts']") restarts; last failure: $(status "(v['failure'] or '')[:160]")"
[ "$state" = FINISHED ] || { tail -30 "$work/server.log" >&2; exit 1; }

compare_outputs "$work/expected" "$work/out" "chaos-cluster ($kills worker kills, a server kill)"
