#!/usr/bin/env bash
# Local Apache Kafka (KRaft, single node) for development, demos and tests.
#
#   deploy/local/kafka.sh fetch    download the broker jars through Maven into the cache
#   deploy/local/kafka.sh start    fetch if needed, format the log dir once, start, wait until it answers
#   deploy/local/kafka.sh stop     stop the broker started by this script (SIGTERM, then wait)
#   deploy/local/kafka.sh status   exit 0 when the broker answers on its port
#   deploy/local/kafka.sh reset    stop and delete the local log directory
#
# Idempotent: a second `start` reuses the cached jars and a broker that is already running.
# Nothing is written outside $PONTE_CACHE_DIR (default: <repo>/.cache, git-ignored).
#
# Environment (all optional):
#   PONTE_KAFKA_VERSION   org.apache.kafka:kafka_2.13 version      (default 4.1.1)
#   PONTE_KAFKA_PORT      client listener on 127.0.0.1             (default 19092)
#   PONTE_KAFKA_CONTROLLER_PORT  KRaft controller listener         (default 19093)
#   PONTE_CACHE_DIR       where jars, Maven repo and data live     (default <repo>/.cache)
#   PONTE_KAFKA_HEAP      JVM heap                                  (default 1g)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${PONTE_CACHE_DIR:-$REPO/.cache}"
VERSION="${PONTE_KAFKA_VERSION:-4.1.1}"
PORT="${PONTE_KAFKA_PORT:-19092}"
CPORT="${PONTE_KAFKA_CONTROLLER_PORT:-19093}"
HEAP="${PONTE_KAFKA_HEAP:-1g}"
HOME_DIR="$CACHE/kafka-$VERSION"
LIBS="$HOME_DIR/libs"
RUN_DIR="$CACHE/kafka-run-$PORT"
DATA_DIR="$RUN_DIR/data"
PID_FILE="$RUN_DIR/kafka.pid"
LOG_FILE="$RUN_DIR/kafka.out"

log() { echo "[kafka] $*" >&2; }

answers() {
  # A TCP accept on the client port; `wait_ready` adds a real protocol round trip.
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}

fetch() {
  if [[ -f "$LIBS/.complete" ]]; then return 0; fi
  command -v mvn >/dev/null || { log "mvn not found: install Maven (deploy/local/setup.sh does)"; exit 1; }
  command -v java >/dev/null || { log "java not found: install a JDK 17+"; exit 1; }
  log "fetching org.apache.kafka:kafka_2.13:$VERSION and its dependencies through Maven"
  mkdir -p "$HOME_DIR"
  cat >"$HOME_DIR/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>org.ponte.local</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$VERSION</version>
    </dependency>
    <!-- slf4j 2 and the log4j2 binding (as in Kafka's own distribution), so the broker's log
         lands in a file we can read; without the pin Maven picks an slf4j 1.7 api -->
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-api</artifactId>
      <version>2.0.17</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j2-impl</artifactId>
      <version>2.24.3</version>
    </dependency>
  </dependencies>
</project>
POM
  rm -rf "$LIBS"
  # Maven's output goes to stderr: stdout carries only the bootstrap address `start` prints.
  mvn -B -q -Dstyle.color=never -f "$HOME_DIR/pom.xml" -Dmaven.repo.local="$CACHE/m2" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$LIBS" >&2
  touch "$LIBS/.complete"
  log "jars in $LIBS ($(ls "$LIBS" | wc -l) files)"
}

write_config() {
  mkdir -p "$RUN_DIR"
  cat >"$RUN_DIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CPORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$DATA_DIR
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=168
PROPS
  cat >"$RUN_DIR/log4j2.properties" <<L4J
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $RUN_DIR/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = INFO
L4J
}

JAVA_ARGS=(-Xms256m "-Xmx$HEAP" -XX:+UseG1GC -Djava.awt.headless=true
  "-Dlog4j2.configurationFile=$RUN_DIR/log4j2.properties" -cp "$LIBS/*")
java_cmd() { java "${JAVA_ARGS[@]}" "$@"; }

running_pid() {
  if [[ -f "$PID_FILE" ]]; then
    local pid; pid="$(cat "$PID_FILE")"
    if kill -0 "$pid" 2>/dev/null; then echo "$pid"; return 0; fi
  fi
  return 1
}

wait_ready() {
  local deadline=$((SECONDS + ${PONTE_KAFKA_START_TIMEOUT:-120}))
  while (( SECONDS < deadline )); do
    if answers && grep -q "Kafka Server started\|\[KafkaRaftServer nodeId=1\] Kafka Server started" "$RUN_DIR/server.log" 2>/dev/null; then
      return 0
    fi
    if ! running_pid >/dev/null; then
      log "broker exited during start; last lines of $LOG_FILE and server.log:"
      tail -n 30 "$LOG_FILE" >&2 || true
      tail -n 30 "$RUN_DIR/server.log" >&2 || true
      return 1
    fi
    sleep 0.5
  done
  log "broker did not answer on 127.0.0.1:$PORT in time; see $RUN_DIR/server.log"
  return 1
}

start() {
  if pid="$(running_pid)"; then
    wait_ready
    log "already running (pid $pid) on 127.0.0.1:$PORT"
    echo "127.0.0.1:$PORT"
    return 0
  fi
  if answers; then
    log "port $PORT is taken by a process this script did not start; set PONTE_KAFKA_PORT or stop it"
    exit 1
  fi
  fetch
  write_config
  if [[ ! -f "$DATA_DIR/meta.properties" ]]; then
    local cluster_id
    cluster_id="$(java_cmd kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)"
    log "formatting KRaft log directory $DATA_DIR (cluster $cluster_id)"
    java_cmd kafka.tools.StorageTool format -t "$cluster_id" -c "$RUN_DIR/server.properties" >&2
  fi
  log "starting broker on 127.0.0.1:$PORT"
  : >"$RUN_DIR/server.log"
  nohup java "${JAVA_ARGS[@]}" kafka.Kafka "$RUN_DIR/server.properties" >"$LOG_FILE" 2>&1 </dev/null &
  echo $! >"$PID_FILE"
  wait_ready
  log "ready (pid $(cat "$PID_FILE"))"
  echo "127.0.0.1:$PORT"
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then log "not running"; rm -f "$PID_FILE"; return 0; fi
  log "stopping broker (pid $pid)"
  kill -TERM "$pid"
  for _ in $(seq 1 120); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$PID_FILE"; log "stopped"; return 0; }
    sleep 0.5
  done
  log "broker did not stop in 60 s; killing"
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$PID_FILE"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) if running_pid >/dev/null && answers; then echo "127.0.0.1:$PORT"; else exit 1; fi ;;
  reset) stop; rm -rf "$RUN_DIR"; log "removed $RUN_DIR" ;;
  *) echo "usage: $0 {fetch|start|stop|status|reset}" >&2; exit 2 ;;
esac
