# Shared by deploy/images/build.sh, stack.sh and system-test.sh (sourced, not run).
# shellcheck shell=bash
# Variables here are used by the scripts that source this file.
# shellcheck disable=SC2034

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${PONTE_CACHE_DIR:-$REPO/.cache}"
# Everything these scripts make or download lives here (git-ignored).
IMAGES_CACHE="$CACHE/images"
# Ponte's version (the workspace's), the tag of both images.
PONTE_VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -n1)"
KAFKA_VERSION="${PONTE_KAFKA_VERSION:-4.1.1}"
PONTE_IMAGE="${PONTE_IMAGE:-ponte:$PONTE_VERSION}"
KAFKA_IMAGE="${PONTE_KAFKA_IMAGE:-ponte-kafka:$KAFKA_VERSION}"
# The images' unprivileged users (the Helm chart runs the ponte image as 10001).
PONTE_UID=10001
KAFKA_UID=10002

log() { echo "[${LOG_TAG:-images}] $*" >&2; }
die() { log "$*"; exit 1; }

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

# Installs Debian packages that are missing, with one `apt-get update` for the lot.
apt_install() {
  (($#)) || return 0
  log "installing: $*"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# A Docker engine that answers: installs docker.io when there is no dockerd, starts dockerd
# (in the background, logging to $IMAGES_CACHE/dockerd.log) when none answers.
ensure_docker() {
  if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
    apt_install docker.io
  fi
  if docker info >/dev/null 2>&1; then return 0; fi
  if ! pgrep -x dockerd >/dev/null; then
    mkdir -p "$IMAGES_CACHE"
    log "starting dockerd (log: $IMAGES_CACHE/dockerd.log)"
    as_root setsid nohup dockerd >"$IMAGES_CACHE/dockerd.log" 2>&1 </dev/null &
  fi
  local _
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  die "the Docker engine did not answer within 60 s; see $IMAGES_CACHE/dockerd.log"
}

# Size of a local image in MiB (one decimal).
image_size_mib() {
  docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.1f", $1 / 1048576}'
}

# The broker's server.properties for the containers: KRaft, one node that is broker and
# controller, data on /var/lib/kafka/data, the controller on the container's loopback. Settings
# as deploy/local/kafka.sh's. $1: plaintext (the image's default: PLAINTEXT on kafka:9092) or
# secure (SASL_SSL with SCRAM-SHA-512 on kafka:9094, ACLs; $2 is the admin password and the TLS
# files are expected in /etc/kafka: broker-keystore.pem, ca.pem).
kafka_server_properties() {
  echo "# written by deploy/images (${1} broker for the container stack)"
  cat <<'PROPS'
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:9093
controller.listener.names=CONTROLLER
PROPS
  if [[ $1 == secure ]]; then
    cat <<PROPS
listeners=SASL_SSL://:9094,CONTROLLER://127.0.0.1:9093
advertised.listeners=SASL_SSL://kafka:9094
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT
inter.broker.listener.name=SASL_SSL
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$2";
ssl.keystore.type=PEM
ssl.keystore.location=/etc/kafka/broker-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=/etc/kafka/ca.pem
ssl.client.auth=none
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="$2" user_admin="$2";
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin
PROPS
  else
    cat <<'PROPS'
listeners=PLAINTEXT://:9092,CONTROLLER://127.0.0.1:9093
advertised.listeners=PLAINTEXT://kafka:9092
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
PROPS
  fi
  cat <<'PROPS'
log.dirs=/var/lib/kafka/data
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
}
