#!/usr/bin/env bash
# Ponte's whole stack in containers, with plain `docker run` on a user-defined network (no
# Compose plugin needed): the Kafka broker, `ponte topics ensure`, the three adapters and the
# reconciler, from the images of deploy/images/build.sh.
#
#   deploy/images/stack.sh up             build the images if missing, start everything, wait
#                                         until every service is ready, print where to reach it
#   deploy/images/stack.sh service NAME   (re)create one service's container (on its volume, for
#                                         the reconciler) and wait until it is ready
#   deploy/images/stack.sh status         the stack's containers
#   deploy/images/stack.sh logs NAME      a container's log (kafka, education-adapter, …)
#   deploy/images/stack.sh kafka-tool TOOL [ARGS…]
#                                         one of Kafka's tools (as deploy/local/kafka-tools.sh:
#                                         consumer-groups, console-consumer, topics, …) against
#                                         the stack's broker, as admin
#   deploy/images/stack.sh stop           remove the containers, keep the data and credentials
#   deploy/images/stack.sh down           remove containers, network, volumes and credentials
#
# As in production, and as the local harness's PONTE_KAFKA_SECURE=1 broker:
#   - every service listener runs TLS and authenticates every caller, with the development PKI
#     and audit keys of `ponte pki dev` (run in the ponte image into .cache/containers/pki);
#     sector systems post with their client certificates, readers query with theirs or a token;
#   - the broker's client listener (kafka:9094 on the network) is SASL_SSL with SCRAM-SHA-512,
#     one principal per service with the least-privilege ACLs of deploy/local/kafka.sh (read from
#     there, so both stay one rule set), nobody but admin creates topics
#     (PONTE_STACK_KAFKA_SECURE=0: a PLAINTEXT broker on kafka:9092 instead);
#   - every container runs as its image's unprivileged user with a read-only root file system,
#     no capabilities and no privilege escalation; it writes only to its volume (the broker's log
#     `ponte-kafka-data`, the reconciler's state `ponte-reconciler-state`) and a tmpfs on /tmp.
# Ports are published on 127.0.0.1 only: HTTPS 8081-8083 (adapters), gRPC over TLS 50051
# (reconciler), admin (plaintext /metrics and /health/*) 9181-9183 and 9190. The broker is
# reachable from the network only.
#
# Environment (all optional):
#   PONTE_STACK_KAFKA_SECURE  1 (default) or 0
#   PONTE_STACK_KAFKA_HEAP    the broker's JVM options (default "-Xms256m -Xmx512m")
#   PONTE_STACK_NETWORK       the Docker network (default ponte)
#   PONTE_IMAGE, PONTE_KAFKA_IMAGE, PONTE_CACHE_DIR   as deploy/images/build.sh
set -euo pipefail
LOG_TAG=stack
# shellcheck source=deploy/images/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUN="$CACHE/containers"
NET="${PONTE_STACK_NETWORK:-ponte}"
# Secure unless asked otherwise, or unless the stack in $RUN was made plaintext.
SECURE=1
case "${PONTE_STACK_KAFKA_SECURE:-}" in
  0 | false | no) SECURE=0 ;;
  "") [[ "$(cat "$RUN/mode" 2>/dev/null)" != plaintext ]] || SECURE=0 ;;
esac
KAFKA_OPTS="${PONTE_STACK_KAFKA_HEAP:--Xms256m -Xmx512m}"
KAFKA_VOLUME=ponte-kafka-data
STATE_VOLUME=ponte-reconciler-state
LABEL=org.ponte.stack=1
SERVICES=(education-adapter health-adapter assistance-adapter reconciler)
PRINCIPALS=(admin education-adapter health-adapter assistance-adapter reconciler)
# What kafka.sh's acl_rules writes the rules for (the configuration's defaults).
# shellcheck disable=SC2034
TOPIC_PREFIX=ponte. RECONCILER_GROUP=ponte-reconciler
if ((SECURE)); then BOOTSTRAP=kafka:9094; else BOOTSTRAP=kafka:9092; fi

# Every container: unprivileged (the image's user), read-only, no capabilities.
HARDENING=(--read-only --cap-drop ALL --security-opt no-new-privileges --label "$LABEL")

api_port() {
  case "$1" in
    education-adapter) echo 8081 ;; health-adapter) echo 8082 ;;
    assistance-adapter) echo 8083 ;; reconciler) echo 50051 ;;
  esac
}
admin_port() {
  case "$1" in
    education-adapter) echo 9181 ;; health-adapter) echo 9182 ;;
    assistance-adapter) echo 9183 ;; reconciler) echo 9190 ;;
  esac
}

new_secret() { head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24; }
password_of() { cat "$RUN/secrets/$1.password"; }
toml_str() { local v="${1//\\/\\\\}"; printf '"%s"' "${v//\"/\\\"}"; }

# A one-shot container of the Kafka image on the network (the JVM's arguments follow).
kafka_tool() {
  docker run --rm --network "$NET" "${HARDENING[@]}" --tmpfs /tmp:exec,size=64m \
    -e JDK_JAVA_OPTIONS="-Xms64m -Xmx256m" "$@"
}

# ---------------------------------------------------------------------------------------------
# Credentials and configuration, made once per stack (`down` removes them with the volumes).

check_mode() {
  local want=plaintext
  ((SECURE)) && want=secure
  if [[ -f $RUN/mode && "$(cat "$RUN/mode")" != "$want" ]]; then
    die "the stack in $RUN is $(cat "$RUN/mode"); PONTE_STACK_KAFKA_SECURE asks for $want: run '$0 down' first"
  fi
  mkdir -p "$RUN"
  echo "$want" >"$RUN/mode"
}

# The development PKI and audit keys, made by the image itself so that its ponte.toml names the
# paths the containers see (/pki/...).
make_pki() {
  [[ -f $RUN/pki/ponte.toml && -f $RUN/pki/audit/subject.key ]] && return 0
  log "making the development PKI and audit keys (ponte pki dev) in $RUN/pki"
  rm -rf "$RUN/pki"
  mkdir -p "$RUN/pki"
  chown "$PONTE_UID:$PONTE_UID" "$RUN/pki"
  docker run --rm "${HARDENING[@]}" -v "$RUN/pki:/pki" "$PONTE_IMAGE" pki dev --out /pki >/dev/null
}

# Secure broker: a password per principal, a CA and the broker's certificate for the name the
# services connect to (kafka), as deploy/local/kafka.sh makes them for 127.0.0.1.
make_kafka_secrets() {
  (umask 077; mkdir -p "$RUN/secrets")
  local name
  for name in "${PRINCIPALS[@]}"; do
    [[ -s $RUN/secrets/$name.password ]] || (umask 077; new_secret >"$RUN/secrets/$name.password")
  done
  [[ -s $RUN/secrets/broker-keystore.pem ]] && return 0
  command -v openssl >/dev/null || apt_install openssl
  log "making the broker's CA and certificate (DNS:kafka) in $RUN/secrets"
  (
    umask 077
    cd "$RUN/secrets"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 \
      -subj "/CN=Ponte container Kafka CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    openssl req -newkey rsa:2048 -nodes -keyout broker.key -out broker.csr -subj "/CN=kafka"
    printf '%s\n' "basicConstraints=critical,CA:FALSE" \
      "subjectAltName=DNS:kafka,DNS:localhost,IP:127.0.0.1" \
      "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >broker.ext
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
      -sha256 -extfile broker.ext -out broker.pem
    cat broker.key broker.pem ca.pem >broker-keystore.pem
  ) >"$RUN/secrets/openssl.log" 2>&1 || { cat "$RUN/secrets/openssl.log" >&2; die "openssl failed"; }
}

# /etc/kafka of the broker: server.properties and, secure, its key store and the CA.
write_kafka_config() {
  rm -rf "$RUN/kafka"
  mkdir -p "$RUN/kafka"
  if ((SECURE)); then
    kafka_server_properties secure "$(password_of admin)" >"$RUN/kafka/server.properties"
    cp "$RUN/secrets/broker-keystore.pem" "$RUN/secrets/ca.pem" "$RUN/kafka/"
  else
    kafka_server_properties plaintext >"$RUN/kafka/server.properties"
  fi
  chown -R "$KAFKA_UID:$KAFKA_UID" "$RUN/kafka"
  chmod 0700 "$RUN/kafka"
  chmod 0600 "$RUN/kafka"/*
}

# Per principal, the Ponte configuration its container reads (/etc/ponte/ponte.toml): the PKI's
# ponte.toml (TLS, access policy, tokens, audit keys), the broker and its credentials, and the
# listeners on every interface of the container (the ports are published on 127.0.0.1 only).
write_ponte_configs() {
  rm -rf "$RUN/ponte"
  mkdir -p "$RUN/ponte"
  local name
  for name in "${PRINCIPALS[@]}"; do
    {
      cat "$RUN/pki/ponte.toml"
      echo
      echo "# added by deploy/images/stack.sh: the container stack's broker and listeners"
      echo "[kafka]"
      echo "bootstrap_servers = $(toml_str "$BOOTSTRAP")"
      if ((SECURE)); then
        cat <<TOML

[kafka.properties]
"security.protocol" = "SASL_SSL"
"sasl.mechanism" = "SCRAM-SHA-512"
"sasl.username" = $(toml_str "$name")
"sasl.password" = $(toml_str "$(password_of "$name")")
"ssl.ca.location" = "/etc/ponte/kafka-ca.pem"
TOML
      fi
      case "$name" in
        *-adapter)
          printf '\n[%s]\nlisten = "0.0.0.0:%s"\nadmin_listen = "0.0.0.0:%s"\n' \
            "${name//-/_}" "$(api_port "$name")" "$(admin_port "$name")" ;;
        reconciler)
          # A stable instance id: restarted within the session timeout, it gets its partitions
          # back at once (docs/operations.md, "Restarts").
          printf '\n[reconciler]\ngrpc_listen = "0.0.0.0:50051"\nadmin_listen = "0.0.0.0:9190"\nstate_dir = "/var/lib/ponte/reconciler"\ninstance_id = "reconciler-0"\n' ;;
      esac
    } >"$RUN/ponte/$name.toml"
  done
  if ((SECURE)); then cp "$RUN/secrets/ca.pem" "$RUN/ponte/kafka-ca.pem"; else : >"$RUN/ponte/kafka-ca.pem"; fi
  chmod 0644 "$RUN/ponte/kafka-ca.pem"
  chmod 0600 "$RUN/ponte"/*.toml
  chown -R "$PONTE_UID:$PONTE_UID" "$RUN/ponte"
}

# ---------------------------------------------------------------------------------------------
# The broker

kafka_running() {
  [[ "$(docker inspect -f '{{.State.Running}}' ponte-kafka 2>/dev/null)" == true ]]
}

start_kafka() {
  if kafka_running; then log "the broker is running"; return 0; fi
  docker rm -f ponte-kafka >/dev/null 2>&1 || true
  docker volume create --label "$LABEL" "$KAFKA_VOLUME" >/dev/null
  local cid
  if [[ ! -s $RUN/cluster-id ]]; then
    cid="$(docker run --rm "${HARDENING[@]}" --tmpfs /tmp:exec -e JDK_JAVA_OPTIONS=-Xmx128m \
      "$KAFKA_IMAGE" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)"
    echo "$cid" >"$RUN/cluster-id"
  fi
  cid="$(cat "$RUN/cluster-id")"
  local scram=() name
  if ((SECURE)); then
    # The SCRAM credentials go into the first metadata, before anyone can connect.
    for name in "${PRINCIPALS[@]}"; do
      scram+=(--add-scram "SCRAM-SHA-512=[name=$name,password=$(password_of "$name")]")
    done
  fi
  log "formatting the broker's log volume $KAFKA_VOLUME once (cluster $cid)"
  docker run --rm "${HARDENING[@]}" --tmpfs /tmp:exec -e JDK_JAVA_OPTIONS=-Xmx256m \
    -v "$KAFKA_VOLUME:/var/lib/kafka" -v "$RUN/kafka:/etc/kafka:ro" "$KAFKA_IMAGE" \
    kafka.tools.StorageTool format --ignore-formatted -t "$cid" -c /etc/kafka/server.properties \
    "${scram[@]}" >"$RUN/kafka-format.log" 2>&1 || { cat "$RUN/kafka-format.log" >&2; die "formatting failed"; }
  log "starting the broker ($BOOTSTRAP$( ((SECURE)) && echo ', SASL_SSL, ACLs'))"
  docker run -d --name ponte-kafka --hostname kafka --network "$NET" --network-alias kafka \
    "${HARDENING[@]}" --tmpfs /tmp:exec,size=64m -e JDK_JAVA_OPTIONS="$KAFKA_OPTS" \
    -v "$KAFKA_VOLUME:/var/lib/kafka" -v "$RUN/kafka:/etc/kafka:ro" "$KAFKA_IMAGE" >/dev/null
  local _
  for _ in $(seq 1 240); do
    if docker logs ponte-kafka 2>&1 | grep -q 'Kafka Server started'; then
      log "the broker is ready"
      return 0
    fi
    kafka_running || { docker logs --tail 30 ponte-kafka >&2; die "the broker exited"; }
    sleep 0.5
  done
  docker logs --tail 30 ponte-kafka >&2
  die "the broker did not start within 120 s"
}

# The least-privilege ACLs of deploy/local/kafka.sh, applied as admin by its own Admin API tool
# (compiled here, run in a Kafka container on the network).
apply_acls() {
  ((SECURE)) || return 0
  local src="$REPO/deploy/local/kafka.sh" dir="$RUN/acl"
  rm -rf "$dir"
  mkdir -p "$dir"
  # The rules: kafka.sh's acl_rules function, for this stack's topic prefix and group.
  eval "$(sed -n '/^acl_rules() {/,/^}/p' "$src")"
  declare -F acl_rules >/dev/null || die "no acl_rules function in $src"
  acl_rules >"$dir/acls.txt"
  sed -n "/<<'JAVA'\$/,/^JAVA\$/p" "$src" | sed '1d;$d' >"$dir/PonteAcls.java"
  grep -q 'public class PonteAcls' "$dir/PonteAcls.java" || die "no PonteAcls tool in $src"
  local javac
  javac="$(command -v javac || true)"
  [[ -n $javac ]] || die "javac not found (a JDK 17: deploy/local/setup.sh installs one)"
  "$javac" -nowarn --release 17 -cp "$CACHE/kafka-$KAFKA_VERSION/libs/*" -d "$dir" "$dir/PonteAcls.java" \
    || die "compiling the ACL tool failed"
  cat >"$dir/admin.properties" <<PROPS
bootstrap.servers=$BOOTSTRAP
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(password_of admin)";
ssl.truststore.type=PEM
ssl.truststore.location=/etc/kafka/ca.pem
PROPS
  chown -R "$KAFKA_UID:$KAFKA_UID" "$dir"
  chmod 0600 "$dir/admin.properties"
  local principals=() name
  for name in "${PRINCIPALS[@]}"; do [[ $name == admin ]] || principals+=("User:$name"); done
  log "applying the ACLs of deploy/local/kafka.sh as admin ($(grep -vc '^#' "$dir/acls.txt") bindings)"
  kafka_tool -v "$dir:/acl:ro" -v "$RUN/kafka:/etc/kafka:ro" "$KAFKA_IMAGE" \
    -cp "/opt/kafka/libs/*:/acl" PonteAcls \
    /acl/admin.properties /acl/acls.txt "${principals[@]}" >"$RUN/acl.log" 2>&1 ||
    { tail -n 30 "$RUN/acl.log" >&2; die "applying the ACLs failed"; }
  log "$(grep 'ACL bindings in place' "$RUN/acl.log" | tail -n1)"
}

# ---------------------------------------------------------------------------------------------
# Ponte

# `ponte ARGS…` in a one-shot container on the network, as principal $1.
ponte_as() {
  local who="$1"
  shift
  docker run --rm --network "$NET" "${HARDENING[@]}" --tmpfs /tmp:size=16m \
    -v "$RUN/pki:/pki:ro" -v "$RUN/ponte/$who.toml:/etc/ponte/ponte.toml:ro" \
    -v "$RUN/ponte/kafka-ca.pem:/etc/ponte/kafka-ca.pem:ro" -e PONTE_CONFIG=/etc/ponte/ponte.toml \
    "$PONTE_IMAGE" "$@"
}

wait_ready() { # NAME
  local port _ body
  port="$(admin_port "$1")"
  for _ in $(seq 1 240); do
    body="$(curl -s "http://127.0.0.1:$port/health/ready" 2>/dev/null || true)"
    [[ $body == ready* ]] && return 0
    if [[ "$(docker inspect -f '{{.State.Running}}' "ponte-$1" 2>/dev/null)" != true ]]; then
      docker logs --tail 30 "ponte-$1" >&2 || true
      die "$1 exited"
    fi
    sleep 0.5
  done
  docker logs --tail 30 "ponte-$1" >&2 || true
  die "$1 was not ready within 120 s (last answer: ${body:-none})"
}

# (Re)creates one service's container and waits until it is ready. The reconciler keeps its
# state on the volume $STATE_VOLUME (its RocksDB state).
run_service() {
  local name="$1" api admin extra=()
  api="$(api_port "$name")" admin="$(admin_port "$name")"
  [[ -n $api ]] || die "unknown service $name (one of: ${SERVICES[*]})"
  if [[ $name == reconciler ]]; then
    docker volume create --label "$LABEL" "$STATE_VOLUME" >/dev/null
    extra+=(-v "$STATE_VOLUME:/var/lib/ponte")
  fi
  docker rm -f "ponte-$name" >/dev/null 2>&1 || true
  docker run -d --name "ponte-$name" --hostname "$name" --network "$NET" "${HARDENING[@]}" \
    --tmpfs /tmp:size=16m -v "$RUN/pki:/pki:ro" \
    -v "$RUN/ponte/$name.toml:/etc/ponte/ponte.toml:ro" \
    -v "$RUN/ponte/kafka-ca.pem:/etc/ponte/kafka-ca.pem:ro" -e PONTE_CONFIG=/etc/ponte/ponte.toml \
    -p "127.0.0.1:$api:$api" -p "127.0.0.1:$admin:$admin" "${extra[@]}" \
    "$PONTE_IMAGE" "$name" >/dev/null
  wait_ready "$name"
  log "$name is ready (https://localhost:$api, admin http://127.0.0.1:$admin)"
}

# One of Kafka's command-line tools (deploy/local/kafka-tools.sh's names: consumer-groups,
# console-consumer, topics, …) in a container on the network, as admin.
kafka_tool_cmd() {
  local tool="${1:-}" class extra=() mounts=()
  (($#)) && shift
  eval "$(sed -n '/^main_class() {/,/^}/p' "$REPO/deploy/local/kafka-tools.sh")"
  class="$(main_class "$tool")" || die "unknown tool '$tool' (deploy/local/kafka-tools.sh list names them)"
  local a has_bootstrap=0 has_config=0 opt=--command-config
  case "${tool#kafka-}" in
    console-consumer) opt=--consumer.config ;;
    console-producer) opt=--producer.config ;;
  esac
  for a in "$@"; do
    [[ $a == --bootstrap-server* ]] && has_bootstrap=1
    [[ $a == "$opt"* ]] && has_config=1
  done
  ((has_bootstrap)) || extra+=(--bootstrap-server "$BOOTSTRAP")
  if ((SECURE)); then
    [[ -f $RUN/acl/admin.properties ]] || die "no admin credentials in $RUN/acl: run '$0 up' first"
    mounts+=(-v "$RUN/acl:/acl:ro" -v "$RUN/kafka:/etc/kafka:ro")
    ((has_config)) || extra+=("$opt" /acl/admin.properties)
  fi
  docker run --rm -i --network "$NET" "${HARDENING[@]}" --tmpfs /tmp:exec,size=64m \
    -e JDK_JAVA_OPTIONS=-Xmx512m "${mounts[@]}" "$KAFKA_IMAGE" -XX:TieredStopAtLevel=1 \
    -Dlog4j2.configurationFile=/opt/kafka/config/tools-log4j2.properties "$class" "${extra[@]}" "$@"
}

up() {
  ensure_docker
  command -v curl >/dev/null || apt_install curl
  if ! docker image inspect "$PONTE_IMAGE" >/dev/null 2>&1 ||
     ! docker image inspect "$KAFKA_IMAGE" >/dev/null 2>&1; then
    "$REPO/deploy/images/build.sh"
  fi
  check_mode
  docker network inspect "$NET" >/dev/null 2>&1 || docker network create --label "$LABEL" "$NET" >/dev/null
  make_pki
  ((SECURE)) && make_kafka_secrets
  write_kafka_config
  write_ponte_configs
  start_kafka
  apply_acls
  log "ponte topics ensure (as admin)"
  ponte_as admin topics ensure | tail -n1 >&2
  local name
  for name in "${SERVICES[@]}"; do run_service "$name"; done
  cat >&2 <<MSG

[stack] Ponte runs in containers (network $NET; credentials in $RUN):
  ingest   curl --cacert $RUN/pki/ca.pem --cert $RUN/pki/education.pem --key $RUN/pki/education-key.pem \\
             -H 'content-type: application/json' https://localhost:8081/v1/attendance -d @record.json
           (health https://localhost:8082, assistance https://localhost:8083)
  query    ponte query --ca $RUN/pki/ca.pem --cert $RUN/pki/federal.pem --key $RUN/pki/federal-key.pem person <nis>
  admin    http://127.0.0.1:{9181,9182,9183,9190}/metrics and /health/ready
  logs     $0 logs kafka|education-adapter|health-adapter|assistance-adapter|reconciler
  kafka    $0 kafka-tool consumer-groups --describe --group $RECONCILER_GROUP
  stop     $0 stop (keeps data)   |   $0 down (removes data and credentials)
MSG
}

stop_containers() {
  local ids
  mapfile -t ids < <(docker ps -aq --filter "label=$LABEL")
  ((${#ids[@]} == 0)) || docker rm -f "${ids[@]}" >/dev/null
  log "containers removed"
}

down() {
  docker info >/dev/null 2>&1 || { rm -rf "$RUN"; return 0; }
  stop_containers
  docker volume rm "$KAFKA_VOLUME" "$STATE_VOLUME" >/dev/null 2>&1 || true
  docker network rm "$NET" >/dev/null 2>&1 || true
  rm -rf "$RUN"
  log "volumes, network and $RUN removed"
}

case "${1:-}" in
  up) up ;;
  service)
    [[ -n ${2:-} ]] || die "usage: $0 service NAME"
    [[ -f $RUN/ponte/$2.toml ]] || die "no stack configuration in $RUN: run '$0 up' first"
    ensure_docker
    run_service "$2" ;;
  status) docker ps -a --filter "label=$LABEL" --format 'table {{.Names}}\t{{.Status}}\t{{.Ports}}' ;;
  logs) [[ -n ${2:-} ]] || die "usage: $0 logs NAME"; docker logs "ponte-$2" ;;
  kafka-tool) shift; kafka_tool_cmd "$@" ;;
  stop) stop_containers ;;
  down) down ;;
  *) echo "usage: $0 {up|service NAME|status|logs NAME|kafka-tool TOOL [ARGS]|stop|down}" >&2; exit 2 ;;
esac
