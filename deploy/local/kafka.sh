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
#   PONTE_KAFKA_PORT      client listener on 127.0.0.1             (default 19092; secure 19094)
#   PONTE_KAFKA_CONTROLLER_PORT  KRaft controller listener         (default 19093; secure 19095)
#   PONTE_CACHE_DIR       where jars, Maven repo and data live     (default <repo>/.cache)
#   PONTE_KAFKA_HEAP      JVM heap                                  (default 1g)
#
# Secure mode (opt-in): PONTE_KAFKA_SECURE=1 with any action, e.g.
#   PONTE_KAFKA_SECURE=1 deploy/local/kafka.sh start
# starts a broker as a production cluster should be run, on its own default ports so it can run
# next to the plaintext one (docs/security.md, "Kafka: SASL_SSL and ACLs"):
#   - the client listener is SASL_SSL with SCRAM-SHA-512: TLS with a broker certificate for
#     127.0.0.1 and localhost, signed by a CA generated (openssl) into the run directory;
#   - the KRaft controller listener stays on loopback, SASL_PLAINTEXT with PLAIN as `admin`;
#   - StandardAuthorizer, allow.everyone.if.no.acl.found=false, super.users=User:admin;
#   - one SCRAM principal per Ponte service, created when the log dir is formatted (random
#     passwords, kept in the run directory): admin, education-adapter, health-adapter,
#     assistance-adapter, reconciler;
#   - least-privilege ACLs applied as admin through the Admin API (the rules are written to
#     <run dir>/secure/acls.txt): each adapter may write and describe only its own topics and the
#     dead-letter topic, the reconciler reads the sector topics and owns its outputs, internal
#     topics and consumer groups; nobody but admin creates topics (`ponte topics ensure` as
#     admin does);
#   - per principal, in <run dir>/clients/: <name>.properties (librdkafka properties: bootstrap,
#     SASL_SSL, SCRAM-SHA-512, username, password, CA file) and <name>.toml (the same as a Ponte
#     config file for --config / PONTE_CONFIG); admin.java.properties for Java admin tools.
#   PONTE_KAFKA_TOPIC_PREFIX      topic prefix the ACLs are written for  (default ponte.)
#   PONTE_KAFKA_RECONCILER_GROUP  the reconciler's consumer group (ACLs are PREFIXED on it)
#                                                                       (default ponte-reconciler)
# The ACLs are reapplied on `start` when the rules change (stale ones of these principals are
# deleted). A run directory is either plaintext or secure: `reset` it to switch.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${PONTE_CACHE_DIR:-$REPO/.cache}"
VERSION="${PONTE_KAFKA_VERSION:-4.1.1}"
SECURE=0
case "${PONTE_KAFKA_SECURE:-}" in
  "" | 0 | false | no) ;;
  *) SECURE=1 ;;
esac
if ((SECURE)); then
  PORT="${PONTE_KAFKA_PORT:-19094}"
  CPORT="${PONTE_KAFKA_CONTROLLER_PORT:-19095}"
else
  PORT="${PONTE_KAFKA_PORT:-19092}"
  CPORT="${PONTE_KAFKA_CONTROLLER_PORT:-19093}"
fi
HEAP="${PONTE_KAFKA_HEAP:-1g}"
HOME_DIR="$CACHE/kafka-$VERSION"
LIBS="$HOME_DIR/libs"
RUN_DIR="$CACHE/kafka-run-$PORT"
DATA_DIR="$RUN_DIR/data"
PID_FILE="$RUN_DIR/kafka.pid"
LOG_FILE="$RUN_DIR/kafka.out"
MODE_FILE="$RUN_DIR/mode"
SEC_DIR="$RUN_DIR/secure"
CLIENTS_DIR="$RUN_DIR/clients"
TOPIC_PREFIX="${PONTE_KAFKA_TOPIC_PREFIX:-ponte.}"
RECONCILER_GROUP="${PONTE_KAFKA_RECONCILER_GROUP:-ponte-reconciler}"
# admin first: the broker itself (inter-broker and controller connections) is admin.
PRINCIPALS=(admin education-adapter health-adapter assistance-adapter reconciler)

log() { echo "[kafka] $*" >&2; }

answers() {
  # A TCP accept on the client port; `wait_ready` adds a real protocol round trip.
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}

fetch() {
  if [[ -f "$LIBS/.complete-with-tools" ]]; then return 0; fi
  command -v mvn >/dev/null || { log "mvn not found: install Maven (deploy/local/setup.sh does)"; exit 1; }
  command -v java >/dev/null || { log "java not found: install a JDK 17+"; exit 1; }
  log "fetching org.apache.kafka:kafka_2.13:$VERSION, kafka-tools and their dependencies through Maven"
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
    <!-- the command-line tools operators reach for (kafka-consumer-groups, the console
         consumer, …; deploy/local/kafka-tools.sh runs them), in one resolution with the broker
         as in Kafka's own distribution -->
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
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
  touch "$LIBS/.complete-with-tools"
  log "jars in $LIBS ($(ls "$LIBS" | wc -l) files)"
}

listener_config() {
  if ((SECURE)); then
    local admin_pw
    admin_pw="$(password_of admin)"
    cat <<PROPS
listeners=SASL_SSL://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=SASL_SSL://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT
inter.broker.listener.name=SASL_SSL
# Clients: TLS (server certificate only) and SCRAM-SHA-512; the broker talks to itself as admin.
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin_pw";
ssl.keystore.type=PEM
ssl.keystore.location=$SEC_DIR/broker-keystore.pem
# The broker checks its own TLS setup as a client of itself, and connects to itself as one.
ssl.truststore.type=PEM
ssl.truststore.location=$SEC_DIR/ca.pem
ssl.client.auth=none
# Controller: loopback only, authenticated as admin with a static PLAIN user (SCRAM credentials
# live in the metadata the controller serves), so no anonymous connection is a super user.
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="$admin_pw" user_admin="$admin_pw";
# Authorization: deny unless an ACL allows; admin is the only super user.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin
PROPS
  else
    cat <<PROPS
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
PROPS
  fi
}

write_config() {
  mkdir -p "$RUN_DIR"
  {
    cat <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CPORT
PROPS
    listener_config
    cat <<PROPS
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
# The log cleaner looks for compactable logs every second instead of every 15 s, so the erase
# test sees a compacted topic within seconds (a broker's default is fine in production).
log.cleaner.backoff.ms=1000
PROPS
  } >"$RUN_DIR/server.properties"
  # It holds the admin password in secure mode.
  chmod 600 "$RUN_DIR/server.properties"
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

# ---------------------------------------------------------------------------------------------
# Secure mode: credentials, TLS material, ACLs and client files.

password_of() { cat "$SEC_DIR/$1.password"; }

new_secret() { head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24; }

# One random password per principal, created once per run dir; a local CA and the broker's
# certificate (for 127.0.0.1 and localhost), made with openssl.
secure_material() {
  (umask 077; mkdir -p "$SEC_DIR")
  local name
  for name in "${PRINCIPALS[@]}"; do
    [[ -s "$SEC_DIR/$name.password" ]] || (umask 077; new_secret >"$SEC_DIR/$name.password")
  done
  [[ -s "$SEC_DIR/broker-keystore.pem" && -s "$SEC_DIR/ca.pem" ]] && return 0
  command -v openssl >/dev/null || { log "openssl not found (deploy/local/setup.sh installs it)"; exit 1; }
  log "generating a local CA and the broker's TLS certificate in $SEC_DIR"
  rm -f "$SEC_DIR"/ca.* "$SEC_DIR"/broker*
  (
    umask 077
    cd "$SEC_DIR"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 \
      -subj "/CN=Ponte local Kafka CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    openssl req -newkey rsa:2048 -nodes -keyout broker.key -out broker.csr -subj "/CN=localhost"
    printf '%s\n' "basicConstraints=critical,CA:FALSE" \
      "subjectAltName=IP:127.0.0.1,DNS:localhost" \
      "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth" >broker.ext
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
      -sha256 -extfile broker.ext -out broker.pem
    # Kafka's PEM key store: the (unencrypted PKCS#8) key, then the chain, leaf first.
    cat broker.key broker.pem ca.pem >broker-keystore.pem
  ) >"$SEC_DIR/openssl.log" 2>&1 || { log "openssl failed:"; cat "$SEC_DIR/openssl.log" >&2; exit 1; }
  # Clients need only the CA certificate.
  chmod 644 "$SEC_DIR/ca.pem"
}

# `--add-scram` arguments of `StorageTool format`: one SCRAM-SHA-512 credential per principal.
scram_args() {
  local name
  for name in "${PRINCIPALS[@]}"; do
    printf '%s\n' --add-scram "SCRAM-SHA-512=[name=$name,password=$(password_of "$name")]"
  done
}

# The least-privilege rules, one binding a line: principal resource-type pattern-type name
# operation (all ALLOW, from any host). Names are PREFIXED on `<topic prefix><family>.`, so a
# topic family's later versions (`.v2`) are covered and nothing else is.
acl_rules() {
  local p="$TOPIC_PREFIX" who fam op
  echo "# generated by deploy/local/kafka.sh for topic prefix '$p' and group '$RECONCILER_GROUP'"
  echo "# admin is a super user (super.users) and needs no ACL; no one else may create topics."
  # Adapters: write (and describe, for metadata) their own record topics and the dead letters.
  for who in "education-adapter education" "health-adapter health" \
             "assistance-adapter registry" "assistance-adapter assistance"; do
    set -- $who
    for op in WRITE DESCRIBE; do echo "User:$1 TOPIC PREFIXED ${p}$2. $op"; done
  done
  # Every service: the dead letters, and its audit log entries (docs/operations.md "Audit log").
  for who in education-adapter health-adapter assistance-adapter reconciler; do
    for fam in deadletter audit; do
      for op in WRITE DESCRIBE; do echo "User:$who TOPIC PREFIXED ${p}$fam. $op"; done
    done
  done
  # Reconciler: read the sector topics; read and write the view topics (it follows the changes
  # topic for WatchChanges) and its own internal topics, whose configs it
  # checks at start (it does not create them: `ponte topics ensure` as admin does).
  for fam in education health registry assistance; do
    for op in READ DESCRIBE; do echo "User:reconciler TOPIC PREFIXED ${p}$fam. $op"; done
  done
  for op in READ WRITE DESCRIBE; do echo "User:reconciler TOPIC PREFIXED ${p}compliance. $op"; done
  for op in READ WRITE DESCRIBE DESCRIBE_CONFIGS; do
    echo "User:reconciler TOPIC PREFIXED ${p}reconciler. $op"
  done
  # Its consumer groups: the configured group and the changelog restore's
  # (ponte-reconciler-*), and one per WatchChanges stream (ponte-watch-<pid>).
  local groups=("$RECONCILER_GROUP")
  [[ "$RECONCILER_GROUP" == ponte-reconciler* ]] || groups+=(ponte-reconciler)
  groups+=(ponte-watch-)
  local g
  for g in "${groups[@]}"; do echo "User:reconciler GROUP PREFIXED $g READ"; done
  # Its epochs are Kafka transactions, under transactional ids `<group>.<instance>`.
  for op in WRITE DESCRIBE; do
    echo "User:reconciler TRANSACTIONAL_ID PREFIXED ${RECONCILER_GROUP}. $op"
  done
}

# Applies the rules as admin through the Admin API (one JVM; the AclCommand tool is not among
# the broker's jars), deletes other bindings of these principals, and waits until the broker's
# authorizer shows every rule.
apply_acls() {
  acl_rules >"$SEC_DIR/acls.txt"
  if cmp -s "$SEC_DIR/acls.txt" "$SEC_DIR/acls.applied"; then
    log "ACLs unchanged ($(grep -vc '^#' "$SEC_DIR/acls.txt") bindings)"
    return 0
  fi
  cat >"$SEC_DIR/PonteAcls.java" <<'JAVA'
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclBindingFilter;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

/** Makes the broker's ACLs of the principals named in a rules file exactly those rules. */
public class PonteAcls {
  public static void main(String[] args) throws Exception {
    Properties props = new Properties();
    try (var in = Files.newInputStream(Path.of(args[0]))) {
      props.load(in);
    }
    Set<AclBinding> want = new HashSet<>();
    Set<String> principals = new HashSet<>(List.of(args).subList(2, args.length));
    for (String raw : Files.readAllLines(Path.of(args[1]))) {
      String line = raw.strip();
      if (line.isEmpty() || line.startsWith("#")) continue;
      String[] f = line.split("\\s+");
      if (f.length != 5) throw new IllegalArgumentException("not `principal type pattern name op`: " + line);
      ResourceType type = ResourceType.fromString(f[1]);
      PatternType pattern = PatternType.fromString(f[2]);
      AclOperation op = AclOperation.fromString(f[4]);
      if (type == ResourceType.UNKNOWN || pattern == PatternType.UNKNOWN || op == AclOperation.UNKNOWN)
        throw new IllegalArgumentException("unknown resource type, pattern or operation: " + line);
      want.add(new AclBinding(new ResourcePattern(type, f[3], pattern),
          new AccessControlEntry(f[0], "*", op, AclPermissionType.ALLOW)));
      principals.add(f[0]);
    }
    try (Admin admin = Admin.create(props)) {
      List<AclBindingFilter> stale = new ArrayList<>();
      for (AclBinding b : admin.describeAcls(AclBindingFilter.ANY).values().get(60, TimeUnit.SECONDS)) {
        if (principals.contains(b.entry().principal()) && !want.contains(b)) stale.add(b.toFilter());
      }
      if (!stale.isEmpty()) admin.deleteAcls(stale).all().get(60, TimeUnit.SECONDS);
      admin.createAcls(want).all().get(60, TimeUnit.SECONDS);
      long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
      while (true) {
        Set<AclBinding> have = new HashSet<>(admin.describeAcls(AclBindingFilter.ANY).values().get(60, TimeUnit.SECONDS));
        long missing = want.stream().filter(b -> !have.contains(b)).count();
        boolean staleLeft = have.stream().anyMatch(b -> principals.contains(b.entry().principal()) && !want.contains(b));
        if (missing == 0 && !staleLeft) break;
        if (System.nanoTime() > deadline) throw new IllegalStateException(missing + " ACL bindings not in place after 60 s");
        Thread.sleep(100);
      }
      System.out.println(want.size() + " ACL bindings in place, " + stale.size() + " stale removed");
    }
  }
}
JAVA
  cat >"$RUN_DIR/log4j2-tools.properties" <<L4J
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $RUN_DIR/tools.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = FILE
L4J
  log "applying ACLs as admin ($SEC_DIR/acls.txt)"
  local principals=() name
  for name in "${PRINCIPALS[@]}"; do [[ $name == admin ]] || principals+=("User:$name"); done
  if ! java -Xmx256m -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
      "-Dlog4j2.configurationFile=$RUN_DIR/log4j2-tools.properties" -cp "$LIBS/*" \
      "$SEC_DIR/PonteAcls.java" "$CLIENTS_DIR/admin.java.properties" "$SEC_DIR/acls.txt" \
      "${principals[@]}" >&2; then
    log "applying ACLs failed; see $RUN_DIR/tools.log"
    return 1
  fi
  cp "$SEC_DIR/acls.txt" "$SEC_DIR/acls.applied"
}

toml_str() { local v="${1//\\/\\\\}"; printf '"%s"' "${v//\"/\\\"}"; }

# Per principal: librdkafka properties and the same as a Ponte config file; Java properties for
# admin tools. Readable by the owner only (they hold the passwords).
write_clients() {
  (umask 077; mkdir -p "$CLIENTS_DIR")
  local name pw ca="$SEC_DIR/ca.pem"
  for name in "${PRINCIPALS[@]}"; do
    pw="$(password_of "$name")"
    (
      umask 077
      cat >"$CLIENTS_DIR/$name.properties" <<PROPS
# librdkafka properties of principal $name on the local secure broker
bootstrap.servers=127.0.0.1:$PORT
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.username=$name
sasl.password=$pw
ssl.ca.location=$ca
PROPS
      cat >"$CLIENTS_DIR/$name.toml" <<TOML
# Ponte configuration (--config / PONTE_CONFIG) of principal $name on the local secure broker
[kafka]
bootstrap_servers = $(toml_str "127.0.0.1:$PORT")

[kafka.properties]
"security.protocol" = "SASL_SSL"
"sasl.mechanism" = "SCRAM-SHA-512"
"sasl.username" = $(toml_str "$name")
"sasl.password" = $(toml_str "$pw")
"ssl.ca.location" = $(toml_str "$ca")
TOML
    )
  done
  (
    umask 077
    cat >"$CLIENTS_DIR/admin.java.properties" <<PROPS
# Java client properties of admin (kafka-acls, kafka-configs, kafka-topics --command-config)
bootstrap.servers=127.0.0.1:$PORT
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(password_of admin)";
ssl.truststore.type=PEM
ssl.truststore.location=$ca
PROPS
  )
}

# A run directory is formatted either plaintext or secure.
check_mode() {
  local want=plaintext
  ((SECURE)) && want=secure
  if [[ -f "$MODE_FILE" ]]; then
    local have; have="$(cat "$MODE_FILE")"
    if [[ "$have" != "$want" ]]; then
      log "$RUN_DIR holds a $have broker; PONTE_KAFKA_SECURE asks for $want: reset it first"
      exit 1
    fi
  elif [[ -f "$DATA_DIR/meta.properties" ]]; then
    # Formatted before the mode was recorded: plaintext.
    if ((SECURE)); then
      log "$RUN_DIR holds a plaintext broker; reset it first (or use another PONTE_KAFKA_PORT)"
      exit 1
    fi
  fi
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
    check_mode
    wait_ready
    if ((SECURE)); then
      write_clients
      apply_acls
    fi
    log "already running (pid $pid) on 127.0.0.1:$PORT"
    echo "127.0.0.1:$PORT"
    return 0
  fi
  if answers; then
    log "port $PORT is taken by a process this script did not start; set PONTE_KAFKA_PORT or stop it"
    exit 1
  fi
  fetch
  check_mode
  if ((SECURE)); then
    # The ACL tool below runs through java's source launcher, which needs a JDK, not a JRE.
    if ! java --list-modules 2>/dev/null | grep '^jdk.compiler' >/dev/null; then
      log "secure mode needs a JDK (jdk.compiler) for its ACL tool; deploy/local/setup.sh installs one"
      exit 1
    fi
    secure_material
  fi
  write_config
  if [[ ! -f "$DATA_DIR/meta.properties" ]]; then
    local cluster_id extra=()
    cluster_id="$(java_cmd kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)"
    # Secure mode: the SCRAM credentials go into the first metadata, before anyone can connect.
    ((SECURE)) && mapfile -t extra < <(scram_args)
    log "formatting KRaft log directory $DATA_DIR (cluster $cluster_id)"
    java_cmd kafka.tools.StorageTool format -t "$cluster_id" -c "$RUN_DIR/server.properties" \
      "${extra[@]}" >&2
  fi
  if ((SECURE)); then echo secure; else echo plaintext; fi >"$MODE_FILE"
  log "starting broker on 127.0.0.1:$PORT$( ((SECURE)) && echo ' (SASL_SSL, ACLs)')"
  : >"$RUN_DIR/server.log"
  nohup java "${JAVA_ARGS[@]}" kafka.Kafka "$RUN_DIR/server.properties" >"$LOG_FILE" 2>&1 </dev/null &
  echo $! >"$PID_FILE"
  wait_ready
  if ((SECURE)); then
    write_clients
    apply_acls
    log "client configs per principal in $CLIENTS_DIR"
  fi
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
