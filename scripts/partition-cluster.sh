#!/usr/bin/env bash
# A network partition of one worker, made with a network namespace: the server and two
# workers listen on the host's end of a veth pair, a third worker runs inside the namespace
# on the other end. While q5 runs on all three, the namespace's end of the link is taken
# down (inside the namespace only: nothing else on the machine is touched). The server must
# take the worker for lost, restart the job from its latest checkpoint on the two others,
# and the output must equal an uninterrupted run; the link then comes back and the worker
# with it. Needs root (ip netns). Prints how long the detection and the recovery took.
#
#   scripts/partition-cluster.sh [--events 500000] [--rate 40000]
set -euo pipefail
events=500000 rate=40000
while [ $# -gt 0 ]; do
  case "$1" in
    --events) events=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
root=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/oxflow-target}
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin oxflow
bin=$CARGO_TARGET_DIR/release/oxflow
export RUST_LOG=${RUST_LOG:-warn,oxflow::server=info}

work=$(mktemp -d)
ns=oxflow-part-$$
host_if=oxh$$ ns_if=oxn$$
net=10.213.$(( $$ % 250 + 1 ))
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  ip link del "$host_if" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns"
ip link add "$host_if" type veth peer name "$ns_if"
ip link set "$ns_if" netns "$ns"
ip addr add "$net.1/24" dev "$host_if"
ip link set "$host_if" up
ip netns exec "$ns" ip addr add "$net.2/24" dev "$ns_if"
ip netns exec "$ns" ip link set "$ns_if" up
ip netns exec "$ns" ip link set lo up

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url=http://$net.1:$port
# shellcheck source=scripts/cluster-lib.sh
. "$root/scripts/cluster-lib.sh"
echo "partition: q5, $events events at $rate/s; worker 3 in namespace $ns ($net.2)"

# Not loopback: the server requires its token (the default), as do the workers' streams.
"$bin" server --listen "$net.1:$port" --data-dir "$work/server" --allow-path "$work" \
  --worker-timeout-ms 3000 --max-restart-attempts 50 --min-restart-backoff-ms 100 \
  > "$work/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "$url/health" > /dev/null && break; sleep 0.1; done
for i in 1 2; do
  "$bin" worker --server "$url" --token-file "$work/server/token" --listen "$net.1:0" \
    --data-dir "$work/w$i" > "$work/w$i.log" 2>&1 &
  pids+=($!)
done
ip netns exec "$ns" "$bin" worker --server "$url" --token-file "$work/server/token" \
  --listen "$net.2:0" --data-dir "$work/w3" > "$work/w3.log" 2>&1 &
pids+=($!)
wait_workers 3

q5_spec "$work/expected" > "$work/expected.json"
"$bin" run "$work/expected.json" > /dev/null
q5_spec "$work/out" "$rate" > "$work/job.json"
id=$(submit "$work/job.json")
for _ in $(seq 400); do
  done_=$(job_field "$id" "v['checkpoint']['completed'] or 0")
  [ "$done_" != "?" ] && [ "$done_" -ge 3 ] && break
  sleep 0.05
done
placed=$(job_field "$id" "len({t['worker'] for t in v['tasks']})")
[ "$placed" -eq 3 ] || { echo "the job runs on $placed workers, not 3" >&2; exit 1; }
echo "job $id runs on 3 workers, $done_ checkpoints completed; cutting $net.2 off"
cut=$(date +%s.%N)
ip netns exec "$ns" ip link set "$ns_if" down
for _ in $(seq 600); do
  restarts=$(job_field "$id" "v['restarts']")
  [ "$restarts" != "?" ] && [ "$restarts" -ge 1 ] && break
  sleep 0.05
done
detected=$(date +%s.%N)
echo "detected after $(python3 -c "print(f'{$detected - $cut:.1f}')") s: $(job_field "$id" "(v['failure'] or '')[:160]")"
for _ in $(seq 600); do
  state=$(job_field "$id" "v['state']")
  [ "$state" = RUNNING ] && [ "$(job_field "$id" "len(v['tasks'])")" -gt 0 ] && break
  sleep 0.05
done
echo "running again after $(python3 -c "print(f'{$(date +%s.%N) - $cut:.1f}')") s on $(job_field "$id" "sorted({t['worker'] for t in v['tasks']})")"
ip netns exec "$ns" ip link set "$ns_if" up
wait_ended "$id"
state=$(job_field "$id" "v['state']")
[ "$state" = FINISHED ] || { echo "job $state" >&2; tail -30 "$work/server.log" >&2; exit 1; }
compare_outputs "$work/expected" "$work/out" "partition (a worker cut off mid-job)"
wait_workers 3
echo "partition: the cut-off worker is back: 3 workers alive"
