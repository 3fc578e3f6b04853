#!/usr/bin/env bash
# An S3-compatible server on 127.0.0.1 for integration tests and demos: s3s-fs (from
# crates.io, the s3s project's file-system backend: the real S3 protocol over HTTP, with
# SigV4 authentication), storing objects under a temporary directory.
#
#   scripts/s3.sh start|stop|status
#   scripts/s3.sh free-port                     print a free port for S3_PORT
#   scripts/s3.sh env                           print the variables a client needs
#
# `start` installs s3s-fs into ~/.cache/oxflow-tools the first time (cargo install, its own
# target directory), serves 127.0.0.1:${S3_PORT:-9014} with fresh storage and the bucket
# ${S3_BUCKET:-oxflow}, and the access key and secret of S3_ACCESS_KEY / S3_SECRET_KEY
# (test values by default); `stop` stops only the process `start` started.
set -euo pipefail

port=${S3_PORT:-9014}
bucket=${S3_BUCKET:-oxflow}
access=${S3_ACCESS_KEY:-oxflow-test}
secret=${S3_SECRET_KEY:-oxflow-test-secret}
tools=$HOME/.cache/oxflow-tools
run=${S3_RUN_DIR:-${TMPDIR:-/tmp}/oxflow-s3-$port}
pidfile=$run/s3s.pid
bin=$tools/bin/s3s-fs

install() {
  [ -x "$bin" ] && return
  echo "s3.sh: installing s3s-fs 0.14.1 from crates.io into $tools (once)" >&2
  cargo install s3s-fs --version 0.14.1 --features binary --locked --quiet \
    --root "$tools" --target-dir "$tools/build" >&2
}

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

start() {
  if running; then echo "s3.sh: already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; return; fi
  if answers; then echo "s3.sh: 127.0.0.1:$port is taken by another process" >&2; exit 1; fi
  install
  rm -rf "$run"
  mkdir -p "$run/data/$bucket"
  nohup "$bin" --host 127.0.0.1 --port "$port" --access-key "$access" --secret-key "$secret" \
    "$run/data" >> "$run/s3s.log" 2>&1 &
  echo $! > "$pidfile"
  for _ in $(seq 1 50); do
    if ! running; then echo "s3.sh: the server exited:" >&2; tail -20 "$run/s3s.log" >&2; exit 1; fi
    if answers; then echo "s3.sh: s3s-fs on http://127.0.0.1:$port, bucket $bucket (pid $(cat "$pidfile"))"; return; fi
    sleep 0.2
  done
  echo "s3.sh: the server did not answer within 10 s" >&2
  stop
  exit 1
}

stop() {
  if ! running; then echo "s3.sh: not running"; rm -f "$pidfile"; return; fi
  kill "$(cat "$pidfile")" 2>/dev/null || true
  rm -f "$pidfile"
  echo "s3.sh: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running && answers; then echo "s3.sh: running on 127.0.0.1:$port"; else echo "s3.sh: not running"; exit 1; fi ;;
  free-port) python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' ;;
  env)
    echo "AWS_ACCESS_KEY_ID=$access"
    echo "AWS_SECRET_ACCESS_KEY=$secret"
    echo "AWS_REGION=us-east-1"
    echo "OXFLOW_S3_ENDPOINT=http://127.0.0.1:$port"
    echo "OXFLOW_S3_BUCKET=$bucket" ;;
  *) echo "usage: $0 start|stop|status|free-port|env" >&2; exit 2 ;;
esac
