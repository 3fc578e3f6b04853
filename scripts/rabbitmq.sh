#!/usr/bin/env bash
# A RabbitMQ server on 127.0.0.1 for integration tests and demos.
#
#   scripts/rabbitmq.sh start|stop|restart|status
#   scripts/rabbitmq.sh free-port               print a free port for RABBITMQ_PORT
#
# `rabbitmq-server` is Debian's package (installed here with apt-get when missing and running
# as root). `start` begins with a fresh node (its own name, Erlang cookie, epmd and
# distribution ports, data under a temporary directory) and waits until it has booted, with
# AMQP on 127.0.0.1:${RABBITMQ_PORT:-5672}; `restart` keeps the data (as a server restart in
# production does); `stop` stops only the node `start` started, and its epmd. Nothing listens
# beyond loopback; the guest user (guest/guest) may log in, from loopback only (RabbitMQ's
# default).
set -euo pipefail

port=${RABBITMQ_PORT:-5672}
run=${RABBITMQ_RUN_DIR:-${TMPDIR:-/tmp}/oxflow-rabbitmq-$port}
pidfile=$run/rabbitmq.pid
bin=/usr/lib/rabbitmq/bin

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

install() {
  [ -x "$bin/rabbitmq-server" ] && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "rabbitmq.sh: installing Debian's rabbitmq-server" >&2
    # The package's own service must not start (it would take port 5672 on every address):
    # a policy denies it while installing, unless the machine has a policy of its own.
    local policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      policy=/usr/sbin/policy-rc.d
      printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
    [ -z "$policy" ] || rm -f "$policy"
  else
    echo "rabbitmq.sh: rabbitmq-server not found; install Debian's rabbitmq-server package" >&2
    exit 1
  fi
}

# Every command of this node runs with the same environment: node name, cookie (in $HOME),
# ports and directories.
node_env() {
  export HOME=$run/home
  export RABBITMQ_NODENAME="oxflow-$port@localhost"
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$port
  export RABBITMQ_DIST_PORT=$(cat "$run/dist-port")
  export ERL_EPMD_ADDRESS=127.0.0.1 ERL_EPMD_PORT=$(cat "$run/epmd-port")
  export RABBITMQ_MNESIA_BASE=$run/mnesia RABBITMQ_LOG_BASE=$run/log
  export RABBITMQ_CONFIG_FILE=$run/rabbitmq RABBITMQ_ENABLED_PLUGINS_FILE=$run/enabled_plugins
  export RABBITMQ_PID_FILE=$run/node.pid
  # Erlang distribution (rabbitmqctl talks to the node through it) on loopback too.
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

running() {
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

answers() {
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

booted() {
  grep -qs "Server startup complete" "$run/log/oxflow-$port@localhost.log"
}

launch() {
  # "Server startup complete" again, from the new node only.
  rm -f "$run/log/oxflow-$port@localhost.log"
  (node_env && exec nohup "$bin/rabbitmq-server" >> "$run/rabbitmq.log" 2>&1) &
  echo $! > "$pidfile"
  for _ in $(seq 1 300); do
    if ! running; then echo "rabbitmq.sh: the server exited:" >&2; tail -30 "$run/rabbitmq.log" >&2; exit 1; fi
    if answers && booted; then
      local version
      version=$(grep -o 'Starting RabbitMQ [0-9.]*' "$run/log/oxflow-$port@localhost.log" | head -1)
      echo "rabbitmq.sh: ${version#Starting } on 127.0.0.1:$port (pid $(cat "$pidfile"))"
      return
    fi
    sleep 0.2
  done
  echo "rabbitmq.sh: the server did not boot within 60 s:" >&2
  tail -30 "$run/rabbitmq.log" >&2
  stop
  exit 1
}

start() {
  if running; then echo "rabbitmq.sh: already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; return; fi
  if answers; then echo "rabbitmq.sh: 127.0.0.1:$port is taken by another process" >&2; exit 1; fi
  install
  rm -rf "$run"
  mkdir -p "$run/home" "$run/mnesia" "$run/log"
  free_port > "$run/dist-port"
  free_port > "$run/epmd-port"
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$run/home/.erlang.cookie"
  chmod 400 "$run/home/.erlang.cookie"
  # No plugins (no management listener); AMQP on loopback only.
  echo '[].' > "$run/enabled_plugins"
  printf 'listeners.tcp.default = 127.0.0.1:%s\n' "$port" > "$run/rabbitmq.conf"
  : > "$run/rabbitmq.log"
  launch
}

restart() {
  [ -d "$run/mnesia" ] || { echo "rabbitmq.sh: never started here" >&2; exit 1; }
  stop_node
  launch
}

stop_node() {
  if ! running; then rm -f "$pidfile"; return 1; fi
  local pid
  pid=$(cat "$pidfile")
  # The node stops cleanly on SIGTERM (rabbitmqctl stop would boot an Erlang VM first).
  if [ -f "$run/node.pid" ]; then kill "$(cat "$run/node.pid")" 2>/dev/null || true; fi
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
    sleep 0.2
  done
  # The wrapper's children (beam, erl_child_setup) go with it.
  pkill -9 -P "$pid" 2>/dev/null || true
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

stop() {
  if stop_node; then echo "rabbitmq.sh: stopped"; else echo "rabbitmq.sh: not running"; fi
  # The node's own epmd (on its own port) outlives the node: stop it too.
  if [ -f "$run/epmd-port" ]; then
    (node_env && epmd -port "$ERL_EPMD_PORT" -kill >/dev/null 2>&1) || true
  fi
}

status() {
  if running && answers; then
    echo "rabbitmq.sh: running on 127.0.0.1:$port (pid $(cat "$pidfile"))"
  else
    echo "rabbitmq.sh: not running"
    exit 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) restart ;;
  status) status ;;
  free-port) free_port ;;
  *) echo "usage: $0 start|stop|restart|status|free-port" >&2; exit 2 ;;
esac
