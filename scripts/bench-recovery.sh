#!/usr/bin/env bash
# Recovery of a job on a cluster after a worker's SIGKILL, with large state: a server and 3
# `oxflow worker` processes on loopback, all with the same checkpoint store (state in
# RocksDB under a memory budget, uploaded by each subtask, downloaded by key group on
# restore). The job counts bids per (bidder, auction) in one day-long window, unthrottled
# and unbounded, so its state only grows; once a completed checkpoint holds STATE_MB of
# state, one worker is killed with SIGKILL and a replacement starts. Reported, from the kill:
# when the failure was detected (the job RESTARTING), when it ran again, when its first
# checkpoint after the restore completed (restored and processing), and what the workers
# downloaded (bytes, ms, from their logs).
#
#   scripts/bench-recovery.sh [STATE_MB] (default 1024)
#   STORE=s3://BUCKET/PREFIX?endpoint=URL (with the AWS_* variables): an S3 store instead of
#   a directory. OXFLOW_BIN=path: another build.
set -euo pipefail
state_mb=${1:-1024}
root=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/oxflow-target}
# shellcheck source=scripts/cluster-lib.sh
source "$root/scripts/cluster-lib.sh"
bin=$(oxflow_bin)
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"' EXIT
store=${STORE:-file://$work/store}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port
events=0

RUST_LOG=warn "$bin" server --listen "127.0.0.1:$port" --data-dir "$work/server" \
  --allow-path "$work" --checkpoint-store "$store" > "$work/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "$url/health" > /dev/null && break; sleep 0.1; done
worker_pid=()
start_worker() { # start_worker N
  RUST_LOG=info "$bin" worker --server "$url" --token-file "$work/server/token" \
    --data-dir "$work/w$1" --checkpoint-store "$store" > "$work/w$1.log" 2>&1 &
  pids+=($!)
  worker_pid[$1]=$!
}
for i in 1 2 3; do start_worker "$i"; done
wait_workers 3

python3 - "$work/out" > "$work/job.json" <<'PY'
import json, sys
print(json.dumps({
    "parallelism": 3,
    "stream": {
        "source": {"nexmark": {"table": "bid", "event_rate": 10000000, "seed": 1}},
        "watermarks": {"column": "date_time", "delay_ms": 1000},
        "steps": [{"window": {"keys": ["bidder", "auction"],
                              "window": {"tumbling": {"size_ms": 86400000}},
                              "compute": {"aggregate": ["count(price) AS bids", "max(price) AS top",
                                                        "sum(price) AS total"]}}}],
    },
    "sink": {"file": {"path": sys.argv[1]}},
    "checkpoints": {"interval_ms": 10000},
    "state": {"memory_budget_mb": 256},
    "restart": {"max_attempts": 5, "initial_backoff_ms": 100, "max_backoff_ms": 1000},
}))
PY
id=$(submit "$work/job.json")
echo "job $id: growing its state to $state_mb MiB (store $store)"
while :; do
  bytes=$(job_field "$id" "(v.get('checkpoint') or {}).get('state_bytes') or 0")
  state=$(job_field "$id" "v['state']")
  [ "$state" = RUNNING ] || { echo "the job is $state" >&2; tail -20 "$work/server.log" >&2; exit 1; }
  [ "$bytes" != "?" ] && [ "$bytes" -ge $((state_mb * 1024 * 1024)) ] && break
  sleep 1
done
last=$(job_field "$id" "v['checkpoint']['last_duration_ms']")
echo "state of the last checkpoint: $((bytes / 1024 / 1024)) MiB (it took $last ms)"
echo "checkpoints so far (each subtask uploads only the files the store lacks):"
api "$url/v1/jobs/$id" | python3 -c '
import json, sys
for c in json.load(sys.stdin)["checkpoint_history"]:
    if c["status"] == "COMPLETED":
        print("  checkpoint %(id)s: %(duration_ms)s ms, state %(s).0f MiB, uploaded %(u).0f MiB"
              % dict(c, s=c["state_bytes"] / 2**20, u=c["new_bytes"] / 2**20))
'
restarts=$(job_field "$id" "v['restarts']")
killed=$(date +%s.%N)
kill -9 "${worker_pid[2]}"
start_worker 4
detected="" running="" checkpointed=""
while [ -z "$checkpointed" ]; do
  now=$(date +%s.%N)
  if python3 -c "import sys; sys.exit(0 if $now - $killed > 300 else 1)"; then
    echo "no checkpoint within 5 minutes of the kill" >&2; tail -20 "$work/server.log" >&2; exit 1
  fi
  s=$(api "$url/v1/jobs/$id" || echo '{}')
  state=$(echo "$s" | field "v.get('state')")
  r=$(echo "$s" | field "v.get('restarts', 0)")
  done_=$(echo "$s" | field "(v.get('checkpoint') or {}).get('completed') or 0")
  if [ -z "$detected" ] && { [ "$state" = RESTARTING ] || [ "$r" != "$restarts" ]; }; then detected=$now; fi
  if [ -n "$detected" ] && [ -z "$running" ] && [ "$state" = RUNNING ] && [ "$r" != "$restarts" ]; then running=$now; fi
  if [ -n "$running" ] && [ "$done_" -ge 1 ]; then checkpointed=$now; fi
  sleep 0.05
done
downloads=$(cat "$work"/w*.log | grep 'state downloaded from the checkpoint store' || true)
python3 - "$killed" "$detected" "$running" "$checkpointed" "$bytes" <<PY
import re, sys
k, d, r, c, state = map(float, sys.argv[1:6])
lines = [re.sub(r"\x1b\[[0-9;]*m", "", l) for l in """$downloads""".splitlines()]
got = [(int(re.search(r"bytes=(\d+)", l).group(1)), int(re.search(r"ms=(\d+)", l).group(1))) for l in lines]
print(f"state {state/2**20:.0f} MiB; after the SIGKILL: detected {d-k:.1f} s, running again {r-k:.1f} s, "
      f"first checkpoint completed {c-k:.1f} s")
print(f"workers downloaded {sum(b for b, _ in got)/2**20:.0f} MiB in all, the slowest in {max((m for _, m in got), default=0)} ms "
      f"({len(got)} downloads)")
PY
api -X DELETE "$url/v1/jobs/$id" > /dev/null || true
