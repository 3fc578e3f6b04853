#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft mode) on 127.0.0.1 for integration tests and demos.
#
#   scripts/kafka.sh start|stop|restart|status
#   scripts/kafka.sh topic NAME [PARTITIONS]    create a topic (default 4 partitions)
#   scripts/kafka.sh consume NAME               print every committed record's value
#                                               (read_committed), then exit when idle 5 s
#   scripts/kafka.sh free-port                  print a free port for KAFKA_PORT
#
# Kafka's jars come from Maven Central with Maven (org.apache.kafka:kafka_2.13, kafka-tools and
# their runtime dependencies) into a cache reused across runs. `start` formats fresh KRaft storage, starts the
# broker on 127.0.0.1:${KAFKA_PORT:-9092} (controller on the next port) and waits until it
# answers; `stop` stops only the process `start` started. Needs Java 17 and Maven.
set -euo pipefail

version=${KAFKA_VERSION:-4.4.0}
port=${KAFKA_PORT:-9092}
controller_port=$((port + 1))
cache=${OXFLOW_KAFKA_CACHE:-$HOME/.cache/oxflow-kafka}
libs=$cache/$version/libs
run=${KAFKA_RUN_DIR:-$cache/run-$port}
pidfile=$run/kafka.pid

fetch() {
  if [ -f "$libs/.complete-with-tools" ]; then return; fi
  mkdir -p "$cache/$version"
  cat > "$cache/$version/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>oxflow</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$version</version></dependency>
    <!-- The command-line tools (topics, console consumer) the scripts use. -->
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$version</version></dependency>
    <!-- Kafka logs through SLF4J 1.x; the distribution binds it to Log4j 2 the same way. -->
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>2.25.5</version></dependency>
  </dependencies>
</project>
POM
  echo "kafka.sh: fetching Apache Kafka $version with Maven into $libs" >&2
  mvn -q -B -Dstyle.color=never -f "$cache/$version/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$libs" >&2
  touch "$libs/.complete-with-tools"
}

running() {
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

answers() {
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

# `restart` keeps the broker's data (as a broker restart in production does); `start` begins
# with fresh storage.
launch() {
  nohup java -Xms256m -Xmx1g -Dlog4j2.configurationFile="$run/log4j2.properties" \
    -cp "$libs/*" kafka.Kafka "$run/server.properties" \
    >> "$run/kafka.log" 2>&1 &
  echo $! > "$pidfile"
  local mark=$1
  for _ in $(seq 1 120); do
    if ! running; then echo "kafka.sh: the broker exited:" >&2; tail -30 "$run/kafka.log" >&2; exit 1; fi
    if answers && [ "$(started_count)" -gt "$mark" ]; then
      echo "kafka.sh: Apache Kafka $version running on 127.0.0.1:$port (pid $(cat "$pidfile"))"
      return
    fi
    sleep 0.5
  done
  echo "kafka.sh: the broker did not answer within 60 s:" >&2
  tail -30 "$run/kafka.log" >&2
  stop
  exit 1
}

started_count() {
  grep -c "Kafka Server started\|started (kafka.server.KafkaRaftServer)" "$run/kafka.log" || true
}

restart() {
  [ -f "$run/server.properties" ] || { echo "kafka.sh: never started here" >&2; exit 1; }
  stop
  launch "$(started_count)"
}

# A free loopback port whose successor (the controller's) is free too.
free_port() {
  python3 - <<'PY'
import socket
for _ in range(100):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    t = socket.socket()
    try:
        t.bind(("127.0.0.1", port + 1)); t.close(); print(port); break
    except OSError:
        t.close()
PY
}

topic() {
  local name=$1 partitions=${2:-4}
  java -cp "$libs/*" org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$port" \
    --create --if-not-exists --topic "$name" --partitions "$partitions" --replication-factor 1 >&2
}

consume() {
  # Quiet logging: the console consumer logs to stdout, where the records go.
  echo "rootLogger.level=OFF" > "$run/quiet-log4j2.properties"
  java -Dlog4j2.configurationFile="$run/quiet-log4j2.properties" -cp "$libs/*" \
    org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server "127.0.0.1:$port" \
    --topic "$1" --from-beginning --isolation-level read_committed --timeout-ms 5000 \
    2> >(grep -v "Processed a total\\|KIP-848" >&2) || true
}

start() {
  if running; then echo "kafka.sh: already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; return; fi
  if answers; then echo "kafka.sh: 127.0.0.1:$port is taken by another process" >&2; exit 1; fi
  fetch
  rm -rf "$run"
  mkdir -p "$run/logs"
  cat > "$run/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$run/data
num.partitions=4
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
PROPS
  cat > "$run/log4j2.properties" <<LOG
rootLogger.level=INFO
rootLogger.appenderRef.out.ref=out
appender.out.type=Console
appender.out.name=out
appender.out.layout.type=PatternLayout
appender.out.layout.pattern=[%d] %p %m (%c)%n
logger.kafka.name=kafka
logger.kafka.level=INFO
logger.apache.name=org.apache.kafka
logger.apache.level=WARN
LOG
  local cluster
  cluster=$(java -cp "$libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)
  java -cp "$libs/*" kafka.tools.StorageTool format -t "$cluster" -c "$run/server.properties" \
    > "$run/format.log" 2>&1 || { cat "$run/format.log" >&2; exit 1; }
  : > "$run/kafka.log"
  launch 0
}

stop() {
  if ! running; then echo "kafka.sh: not running"; rm -f "$pidfile"; return; fi
  local pid
  pid=$(cat "$pidfile")
  kill "$pid"
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; echo "kafka.sh: stopped"; return; }
    sleep 0.5
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  echo "kafka.sh: killed (it did not stop within 30 s)"
}

status() {
  if running && answers; then
    echo "kafka.sh: running on 127.0.0.1:$port (pid $(cat "$pidfile"))"
  else
    echo "kafka.sh: not running"
    exit 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) restart ;;
  status) status ;;
  topic) shift; topic "$@" ;;
  consume) shift; consume "$@" ;;
  free-port) free_port ;;
  *) echo "usage: $0 start|stop|restart|status|topic NAME [PARTITIONS]|consume NAME|free-port" >&2; exit 2 ;;
esac
