#!/usr/bin/env bash
# Events per CPU second of a job on a cluster (a server and 3 `oxflow worker` processes on
# loopback) against the same spec in one process (`oxflow run`), side by side, for q5, q11
# and q3 on the generator. CPU is every process's user + system time over the job (server
# and workers, from /proc); wall time is from submission to FINISHED (polled every 50 ms,
# so short runs are rounded up). The specs are the same text; only the placement differs.
#
#   scripts/bench-cluster.sh [EVENTS] (default 5000000)   QUERIES="q5 q11 q3" RUNS=1
#   OXFLOW_BIN=path: another build of oxflow (to compare two builds in one sitting)
set -euo pipefail
events=${1:-5000000}
queries=${QUERIES:-q5 q11 q3}
runs=${RUNS:-1}
root=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/oxflow-target}
# shellcheck source=scripts/cluster-lib.sh
source "$root/scripts/cluster-lib.sh"
bin=$(oxflow_bin)
export RUST_LOG=${RUST_LOG:-warn}
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port

spec() { # spec QUERY OUT
  python3 - "$1" "$2" "$events" <<'PY'
import json, sys
q, out, events = sys.argv[1], sys.argv[2], int(sys.argv[3])
def table(name):
    return {"source": {"nexmark": {"table": name, "events": events, "event_rate": 10000, "seed": 1}},
            "watermarks": {"column": "date_time", "delay_ms": 4000}}
if q == "q5":
    stream = table("bid")
    stream["steps"] = [
        {"window": {"keys": ["auction"], "window": {"hopping": {"size_ms": 10000, "slide_ms": 2000}},
                    "compute": {"aggregate": ["count(auction) AS num"]}}},
        {"window": {"keys": ["window_start", "window_end"], "window": "inherited",
                    "compute": {"top_n": {"order_by": "num", "n": 1}}}}]
elif q == "q11":
    stream = table("bid")
    stream["steps"] = [
        {"window": {"keys": ["bidder"], "window": {"session": {"gap_ms": 10000}},
                    "compute": {"aggregate": ["count(auction) AS bid_count"]}}}]
elif q == "q3":
    people = table("person")
    people["steps"] = [{"select": ["id", "name", "city", "state"]},
                       {"filter": "state IN ('OR', 'ID', 'CA')"}]
    stream = table("auction")
    stream["steps"] = [
        {"select": ["id", "seller", "category"]}, {"filter": "category = 10"},
        {"select": ["id", "seller"]},
        {"join": {"keys": ["seller"], "right": people, "right_keys": ["id"], "on": {"regular": {}}}},
        {"select": ["name", "city", "state", "id"]}]
else:
    sys.exit(f"no query {q}")
print(json.dumps({"parallelism": 3, "stream": stream, "sink": {"file": {"path": out}}}))
PY
}

cpu_of() { # total CPU seconds of the given pids
  python3 - "$@" <<'PY'
import os, sys
tck = os.sysconf("SC_CLK_TCK"); total = 0
for p in sys.argv[1:]:
    f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
    total += int(f[11]) + int(f[12])
print(total / tck)
PY
}

"$bin" server --listen "127.0.0.1:$port" --data-dir "$work/server" --allow-path "$work" \
  > "$work/server.log" 2>&1 &
server=$!
pids+=("$server")
for _ in $(seq 100); do curl -sf "$url/health" > /dev/null && break; sleep 0.1; done
token=$(cat "$work/server/token")
cluster=("$server")
for i in 1 2 3; do
  "$bin" worker --server "$url" --token-file "$work/server/token" --data-dir "$work/w$i" \
    > "$work/w$i.log" 2>&1 &
  pids+=($!)
  cluster+=($!)
done
api() { curl -sf -H "Authorization: Bearer $token" "$@"; }
for _ in $(seq 100); do
  n=$(api "$url/v1/workers" | python3 -c 'import json,sys; print(sum(w["state"]=="ALIVE" for w in json.load(sys.stdin)["workers"]))')
  [ "$n" -ge 3 ] && break
  sleep 0.1
done
# Idle CPU of the cluster (polls, heartbeats) is counted too, as a user would pay it.

printf '%-5s %-10s %9s %12s %15s %8s\n' query where seconds events/s events/cpu-s rows
for q in $queries; do
  for r in $(seq "$runs"); do
    spec "$q" "$work/one-$q-$r" > "$work/one.json"
    one=$("$bin" run "$work/one.json" | tail -1)
    python3 - "$q" "$events" "$one" <<'PY'
import json, sys
q, events, s = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
print(f"{q:<5} {'1 process':<10} {s['seconds']:9.2f} {events/s['seconds']:12.0f} {events/s['cpu_seconds']:15.0f} {s['output_rows']:8}")
PY
    spec "$q" "$work/cluster-$q-$r" > "$work/job.json"
    before=$(cpu_of "${cluster[@]}")
    started=$(date +%s.%N)
    id=$(api -X POST -H 'content-type: application/json' \
      --data "$(python3 -c 'import json,sys; print(json.dumps({"spec": json.load(open(sys.argv[1]))}))' "$work/job.json")" \
      "$url/v1/jobs" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    while :; do
      state=$(api "$url/v1/jobs/$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
      [ "$state" = RUNNING ] || [ "$state" = RESTARTING ] || break
      sleep 0.05
    done
    ended=$(date +%s.%N)
    after=$(cpu_of "${cluster[@]}")
    [ "$state" = FINISHED ] || { echo "$q on the cluster: $state" >&2; tail -20 "$work/server.log" >&2; exit 1; }
    rows=$(cat "$work/cluster-$q-$r"/part-* 2>/dev/null | wc -l)
    python3 - "$q" "$events" "$started" "$ended" "$before" "$after" "$rows" <<'PY'
import sys
q, events, t0, t1, c0, c1, rows = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:7]), int(sys.argv[7])
secs, cpu = t1 - t0, c1 - c0
print(f"{q:<5} {'3 workers':<10} {secs:9.2f} {events/secs:12.0f} {events/cpu:15.0f} {rows:8}")
PY
  done
done
