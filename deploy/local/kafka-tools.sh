#!/usr/bin/env bash
# Kafka's command-line tools against the local broker of deploy/local/kafka.sh, without a Kafka
# distribution: kafka.sh fetches the tools' jars (org.apache.kafka:kafka-tools) with the broker's
# through Maven into the cache once, and each tool runs its main class on them, as Kafka's
# bin/*.sh scripts do.
#
#   deploy/local/kafka-tools.sh <tool> [args...]
#   deploy/local/kafka-tools.sh fetch          fetch the jars only
#   deploy/local/kafka-tools.sh list           the tools and their main classes
#
# Tools: kafka-consumer-groups, kafka-console-consumer, kafka-console-producer, kafka-topics,
# kafka-configs, kafka-acls, kafka-get-offsets, kafka-transactions (the `kafka-` may be left
# out: `deploy/local/kafka-tools.sh consumer-groups --list`).
#
# Without --bootstrap-server the local broker's address is added (127.0.0.1:19092, or 19094 in
# secure mode). With PONTE_KAFKA_SECURE=1 the tool connects to the secure broker as admin, with
# the client properties kafka.sh wrote (<run dir>/clients/admin.java.properties), passed as
# --command-config (--consumer.config / --producer.config for the console tools) unless the
# arguments name a config file already.
#
# Examples (docs/operations.md, "Kafka tools"):
#   deploy/local/kafka-tools.sh kafka-consumer-groups --describe --group ponte-reconciler
#   deploy/local/kafka-tools.sh kafka-console-consumer --topic ponte.deadletter.v1 \
#     --from-beginning --max-messages 5 --property print.headers=true --property print.key=true
#
# Environment (as for kafka.sh): PONTE_KAFKA_VERSION, PONTE_KAFKA_PORT, PONTE_KAFKA_SECURE,
# PONTE_CACHE_DIR; PONTE_KAFKA_TOOLS_HEAP (default 512m). The tools log warnings to stderr.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${PONTE_CACHE_DIR:-$REPO/.cache}"
VERSION="${PONTE_KAFKA_VERSION:-4.1.1}"
SECURE=0
case "${PONTE_KAFKA_SECURE:-}" in
  "" | 0 | false | no) ;;
  *) SECURE=1 ;;
esac
if ((SECURE)); then PORT="${PONTE_KAFKA_PORT:-19094}"; else PORT="${PONTE_KAFKA_PORT:-19092}"; fi
TOOLS_DIR="$CACHE/kafka-$VERSION/tools"
LIBS="$CACHE/kafka-$VERSION/libs"
RUN_DIR="$CACHE/kafka-run-$PORT"
ADMIN_PROPS="$RUN_DIR/clients/admin.java.properties"

log() { echo "[kafka-tools] $*" >&2; }

# tool -> main class (Kafka 4.x; the same as bin/<tool>.sh of a Kafka distribution).
main_class() {
  case "${1#kafka-}" in
    consumer-groups) echo org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
    console-consumer) echo org.apache.kafka.tools.consumer.ConsoleConsumer ;;
    console-producer) echo org.apache.kafka.tools.ConsoleProducer ;;
    topics) echo org.apache.kafka.tools.TopicCommand ;;
    configs) echo kafka.admin.ConfigCommand ;;
    acls) echo org.apache.kafka.tools.AclCommand ;;
    get-offsets) echo org.apache.kafka.tools.GetOffsetShell ;;
    transactions) echo org.apache.kafka.tools.TransactionsCommand ;;
    *) return 1 ;;
  esac
}
TOOLS=(kafka-consumer-groups kafka-console-consumer kafka-console-producer kafka-topics
  kafka-configs kafka-acls kafka-get-offsets kafka-transactions)

# The jars are the broker's: kafka.sh fetches the tools with it.
fetch() {
  [[ -f "$LIBS/.complete-with-tools" ]] || "$REPO/deploy/local/kafka.sh" fetch
  [[ -f "$TOOLS_DIR/log4j2.properties" ]] && return 0
  mkdir -p "$TOOLS_DIR"
  cat >"$TOOLS_DIR/log4j2.properties" <<'L4J'
status = warn
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
L4J
}

has_arg() {
  local want="$1" a
  shift
  for a in "$@"; do
    [[ "$a" == "$want" || "$a" == "$want="* ]] && return 0
  done
  return 1
}

run_tool() {
  local tool="$1" class
  shift
  class="$(main_class "$tool")" || { log "unknown tool '$tool'; known: ${TOOLS[*]}"; exit 2; }
  fetch
  local extra=()
  has_arg --bootstrap-server "$@" || extra+=(--bootstrap-server "127.0.0.1:$PORT")
  if ((SECURE)); then
    [[ -f "$ADMIN_PROPS" ]] || { log "$ADMIN_PROPS not found: start the secure broker (PONTE_KAFKA_SECURE=1 deploy/local/kafka.sh start)"; exit 1; }
    local opt=--command-config
    case "${tool#kafka-}" in
      console-consumer) opt=--consumer.config ;;
      console-producer) opt=--producer.config ;;
    esac
    has_arg "$opt" "$@" || extra+=("$opt" "$ADMIN_PROPS")
  fi
  exec java "-Xmx${PONTE_KAFKA_TOOLS_HEAP:-512m}" -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
    -Djava.awt.headless=true "-Dlog4j2.configurationFile=$TOOLS_DIR/log4j2.properties" \
    -cp "$LIBS/*" "$class" "${extra[@]}" "$@"
}

case "${1:-}" in
  fetch) fetch ;;
  list) for t in "${TOOLS[@]}"; do printf '%-24s %s\n' "$t" "$(main_class "$t")"; done ;;
  "" | -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  *) run_tool "$@" ;;
esac
