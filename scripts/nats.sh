#!/usr/bin/env bash
# A NATS server with JetStream on 127.0.0.1 for integration tests and demos.
#
#   scripts/nats.sh start|stop|restart|status
#   scripts/nats.sh free-port                   print a free port for NATS_PORT
#
# `nats-server` is Debian's package (installed here with apt-get when missing and running as
# root). `start` begins with a fresh JetStream store in a temporary directory and waits until
# the server answers on 127.0.0.1:${NATS_PORT:-4222}; `restart` keeps the store (as a server
# restart in production does); `stop` stops only the process `start` started.
set -euo pipefail

port=${NATS_PORT:-4222}
run=${NATS_RUN_DIR:-${TMPDIR:-/tmp}/oxflow-nats-$port}
pidfile=$run/nats.pid

install() {
  command -v nats-server >/dev/null && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "nats.sh: installing Debian's nats-server" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
  else
    echo "nats.sh: nats-server not found; install Debian's nats-server package" >&2
    exit 1
  fi
}

running() {
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

answers() {
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

launch() {
  # Loopback only; JetStream with its store under $run; a monitoring port is not opened.
  nohup nats-server --addr 127.0.0.1 --port "$port" --jetstream --store_dir "$run/store" \
    --server_name "oxflow-test-$port" >> "$run/nats.log" 2>&1 &
  echo $! > "$pidfile"
  for _ in $(seq 1 100); do
    if ! running; then echo "nats.sh: the server exited:" >&2; tail -20 "$run/nats.log" >&2; exit 1; fi
    if answers && grep -q "Server is ready" "$run/nats.log"; then
      echo "nats.sh: nats-server $(nats-server --version | awk '{print $2}') with JetStream on 127.0.0.1:$port (pid $(cat "$pidfile"))"
      return
    fi
    sleep 0.2
  done
  echo "nats.sh: the server did not answer within 20 s:" >&2
  tail -20 "$run/nats.log" >&2
  stop
  exit 1
}

start() {
  if running; then echo "nats.sh: already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; return; fi
  if answers; then echo "nats.sh: 127.0.0.1:$port is taken by another process" >&2; exit 1; fi
  install
  rm -rf "$run"
  mkdir -p "$run/store"
  : > "$run/nats.log"
  launch
}

restart() {
  [ -d "$run/store" ] || { echo "nats.sh: never started here" >&2; exit 1; }
  stop
  # "Server is ready" again, from the new process only.
  : > "$run/nats.log"
  launch
}

stop() {
  if ! running; then echo "nats.sh: not running"; rm -f "$pidfile"; return; fi
  local pid
  pid=$(cat "$pidfile")
  kill "$pid"
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; echo "nats.sh: stopped"; return; }
    sleep 0.2
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  echo "nats.sh: killed (it did not stop within 10 s)"
}

status() {
  if running && answers; then
    echo "nats.sh: running on 127.0.0.1:$port (pid $(cat "$pidfile"))"
  else
    echo "nats.sh: not running"
    exit 1
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) restart ;;
  status) status ;;
  free-port) free_port ;;
  *) echo "usage: $0 start|stop|restart|status|free-port" >&2; exit 2 ;;
esac
