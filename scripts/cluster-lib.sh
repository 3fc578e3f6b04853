# What the cluster scripts share (sourced, not run). The caller sets bin (the oxflow binary),
# work (a scratch directory), url (the server's) and events, and starts the server with its
# data directory in $work/server.

# oxflow_bin: the oxflow binary to run, $OXFLOW_BIN (another build, to compare two builds in
# one sitting), else this checkout's release build, built first. Needs root.
oxflow_bin() {
  if [ -n "${OXFLOW_BIN:-}" ]; then
    echo "$OXFLOW_BIN"
  else
    cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin oxflow >&2
    echo "$CARGO_TARGET_DIR/release/oxflow"
  fi
}

# q5_spec OUT [RATE]: Nexmark q5 (hopping windows, then the top auction per window) on
# $events generated bids, into files under OUT with checkpoints every 200 ms, at parallelism 3,
# restarted up to 50 times: the spec every cluster script runs.
q5_spec() {
  python3 - "$1" "$events" "${2:-}" <<'PY'
import json, sys
out, events, rate = sys.argv[1], int(sys.argv[2]), sys.argv[3]
source = {"table": "bid", "events": events, "event_rate": 10000, "seed": 7}
if rate:
    source["rate"] = float(rate)
print(json.dumps({
    "parallelism": 3,
    "stream": {
        "source": {"nexmark": source},
        "watermarks": {"column": "date_time", "delay_ms": 2000},
        "steps": [
            {"window": {"keys": ["auction"],
                        "window": {"hopping": {"size_ms": 10000, "slide_ms": 2000}},
                        "compute": {"aggregate": ["count(auction) AS num"]}}},
            {"window": {"keys": ["window_start", "window_end"], "window": "inherited",
                        "compute": {"top_n": {"order_by": "num", "n": 1}}}},
        ],
    },
    "sink": {"file": {"path": out}},
    "checkpoints": {"interval_ms": 200},
    "restart": {"max_attempts": 50, "initial_backoff_ms": 200, "max_backoff_ms": 1000},
}))
PY
}

# api CURL-ARGS...: a call to the server with its token.
api() { curl -sf -H "Authorization: Bearer $(cat "$work/server/token")" "$@"; }

# field EXPR: a Python expression over the JSON on stdin (`v`).
field() { python3 -c "import json,sys; v=json.load(sys.stdin); print($1)"; }

# wait_workers N: until N workers are alive.
wait_workers() {
  local alive=0
  for _ in $(seq 300); do
    alive=$(api "$url/v1/workers" | field "sum(w['state']=='ALIVE' for w in v['workers'])" || echo 0)
    [ "$alive" -ge "$1" ] && return
    sleep 0.1
  done
  echo "only $alive of $1 workers registered" >&2
  exit 1
}

# submit SPEC_FILE: prints the new job's id.
submit() {
  api -X POST -H 'content-type: application/json' \
    --data "$(python3 -c 'import json,sys; print(json.dumps({"spec": json.load(open(sys.argv[1]))}))' "$1")" \
    "$url/v1/jobs" | field "v['id']"
}

# job_field ID EXPR: a field of the job's status ("?" if the server does not answer).
job_field() { api "$url/v1/jobs/$1" | field "$2" 2>/dev/null || echo "?"; }

# wait_ended ID: until the job is FINISHED, FAILED or CANCELLED (at most 5 minutes).
wait_ended() {
  local state
  for _ in $(seq 1200); do
    state=$(job_field "$1" "v['state']")
    case "$state" in FINISHED|FAILED|CANCELLED) return ;; esac
    sleep 0.25
  done
}

# compare_outputs EXPECTED_DIR OUT_DIR WHAT: the committed rows of both, as multisets.
compare_outputs() {
  local expected got
  expected=$(cat "$1"/part-* 2>/dev/null | sort | tee "$work/expected.sorted" | wc -l)
  got=$(cat "$2"/part-* 2>/dev/null | sort | tee "$work/out.sorted" | wc -l)
  if [ "$expected" -gt 0 ] && cmp -s "$work/expected.sorted" "$work/out.sorted"; then
    echo "$3: PASS: $got committed rows equal the $expected of an uninterrupted run"
  else
    echo "$3: FAIL: $got committed rows, $expected expected; differences:" >&2
    diff "$work/expected.sorted" "$work/out.sorted" | head -20 >&2
    exit 1
  fi
}
