# The kill loop the chaos scripts share (sourced, not run). `chaos_attempts SINK WHAT RESTART...`
# runs `$bin "${common[@]}" --workers 1|2 --rate $rate --sink SINK` with checkpoints in
# $work/chk and `--restore latest`, SIGKILLs it at a random moment `$kills` times (restarting
# the server or broker with the command RESTART... once, half way, while the job runs; WHAT
# names it in the log), then lets the last attempt finish. The caller seeds RANDOM and sets
# bin, common, rate, kills and work.
chaos_attempts() {
  local sink=$1 what=$2
  shift 2
  local attempt=0 restarted=no workers pid
  while :; do
    attempt=$((attempt + 1))
    workers=$((RANDOM % 2 + 1))
    "$bin" "${common[@]}" --workers "$workers" --rate "$rate" --sink "$sink" \
      --checkpoint-dir "$work/chk" --checkpoint-interval-ms 200 --restore latest \
      > "$work/attempt.json" 2> "$work/attempt-$attempt.log" &
    pid=$!
    if [ "$attempt" -le "$kills" ]; then
      sleep "$((RANDOM % 2)).$((RANDOM % 10))$((RANDOM % 10))"
      sleep 0.5
      if [ "$restarted" = no ] && [ "$attempt" -eq $((kills / 2)) ]; then
        # The server goes away under the running job (which may fail, or ride it out), then
        # comes back with its data.
        "$@" > /dev/null
        restarted=yes
        echo "attempt $attempt: $what restarted while the job ran"
      fi
      if kill -9 "$pid" 2>/dev/null; then
        wait "$pid" 2>/dev/null || true
        echo "attempt $attempt ($workers workers): killed; $(ls "$work/chk" 2>/dev/null | grep -c '^chk-' || true) checkpoint directories"
      elif wait "$pid"; then
        echo "attempt $attempt ($workers workers): finished before the kill"
        return
      else
        echo "attempt $attempt ($workers workers): failed by itself: $(grep -m1 -i 'error' "$work/attempt-$attempt.log" | cut -c1-200 || true)"
      fi
    else
      if ! wait "$pid"; then
        echo "attempt $attempt failed:" >&2
        # The error, not the frames of its backtrace.
        grep -v -E '^ +([0-9]+:|at )' "$work/attempt-$attempt.log" | tail -20 >&2
        [ "$attempt" -le $((kills + 3)) ] && continue
        exit 1
      fi
      echo "attempt $attempt ($workers workers): finished: $(tail -1 "$work/attempt.json")"
      return
    fi
  done
}
