#!/usr/bin/env bash
# Builds Ponte's container images from this machine alone, with no image registry:
#
#   ponte:<version>         the `ponte` binary (every service is `ponte <service>`: the image's
#                           entrypoint), the shared libraries it links, CA certificates, and
#                           nothing else: no shell, no package manager, no build tools
#   ponte-kafka:<version>   a single-node KRaft broker for local use: a Java 17 runtime cut down
#                           with jlink to the modules Kafka uses, the broker and tools jars that
#                           deploy/local/kafka.sh fetches through Maven, and their libraries
#
#   deploy/images/build.sh [ponte|kafka|all]      (default: all)
#
# Each image is a root file system assembled here and imported as one layer (`docker import`),
# the base included: every ELF file's shared libraries are copied from this machine (the one the
# binary was built and linked on) with the dynamic loader. Both run as an unprivileged user
# (ponte 10001, kafka 10002) and with a read-only root file system: write to volumes (the
# reconciler's state in /var/lib/ponte, the broker's log in /var/lib/kafka) and a tmpfs on /tmp.
# The script prints each image's size. An image whose file system and settings did not change
# is left as it is.
#
# What it installs when missing (Debian packages, one `apt-get update`): docker.io, and through
# deploy/local/setup.sh the build's packages (a JDK 17 among them: its jlink and jmods cut the
# Java runtime). It starts dockerd when no Docker engine answers.
#
# Environment (all optional):
#   CARGO_TARGET_DIR   where `cargo build --release -p ponte --locked` builds (default <repo>/target)
#   PONTE_BIN          use this ponte binary instead of building one
#   PONTE_IMAGE        name of the ponte image              (default ponte:<workspace version>)
#   PONTE_KAFKA_IMAGE  name of the Kafka image              (default ponte-kafka:<Kafka version>)
#   PONTE_KAFKA_VERSION  Kafka version (as deploy/local/kafka.sh)    (default 4.1.1)
#   PONTE_CACHE_DIR    cache (default <repo>/.cache; this script's files go to .cache/images)
set -euo pipefail
LOG_TAG=images
# shellcheck source=deploy/images/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

what="${1:-all}"
case "$what" in ponte | kafka | all) ;; *) echo "usage: $0 [ponte|kafka|all]" >&2; exit 2 ;; esac

# ---------------------------------------------------------------------------------------------
# Root file systems

# Copies the shared libraries of the given ELF files (and the dynamic loader) from this machine
# into the root file system $1, each under the path the loader found it at. A library ldd cannot
# find must be in the root file system already (a JVM's own libraries, found through RPATH).
copy_libs() {
  local root="$1" f lib name
  shift
  local -A seen=()
  for f in "$@"; do
    while read -r lib; do
      [[ -n $lib && -z ${seen[$lib]:-} ]] || continue
      seen[$lib]=1
      if [[ $lib == "missing:"* ]]; then
        name="${lib#missing:}"
        [[ -n $(find "$root" -name "$name" -print -quit) ]] ||
          die "$f needs $name, which is neither on this machine nor in the image"
        continue
      fi
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    done < <(ldd "$f" 2>/dev/null | awk '
      /=> not found/ { print "missing:" $1; next }
      /=> \// { print $3; next }
      /^[[:space:]]*\// { print $1 }')
  done
}

# /etc of a root file system: the image's user ($2, uid $3, home $4), name resolution, and the
# files Docker mounts over.
base_etc() {
  local root="$1" user="$2" uid="$3" home="$4"
  mkdir -p "$root/etc" "$root/tmp"
  printf 'root:x:0:0:root:/nonexistent:/nonexistent\n%s:x:%s:%s:%s:%s:/nonexistent\nnobody:x:65534:65534:nobody:/nonexistent:/nonexistent\n' \
    "$user" "$uid" "$uid" "$user" "$home" >"$root/etc/passwd"
  printf 'root:x:0:\n%s:x:%s:\nnogroup:x:65534:\n' "$user" "$uid" >"$root/etc/group"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
  : >"$root/etc/hosts"
  : >"$root/etc/hostname"
  : >"$root/etc/resolv.conf"
  chmod 1777 "$root/tmp"
}

# Imports root file system $2 as image $1 with the settings $3… (`docker import --change`),
# unless an image of that name already holds exactly this file system and these settings.
import_image() {
  local image="$1" root="$2"
  shift 2
  local tarball digest have change
  tarball="$IMAGES_CACHE/$(echo "$image" | tr ':/' '__').tar"
  # A reproducible tar: sorted names, one mtime, numeric owners, no atime/ctime.
  tar --sort=name --mtime=@0 --numeric-owner \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$root" -cf "$tarball" .
  digest="$({ sha256sum <"$tarball"; printf '%s\n' "$@"; } | sha256sum | cut -c1-64)"
  have="$(docker image inspect -f '{{index .Config.Labels "org.ponte.rootfs"}}' "$image" 2>/dev/null || true)"
  if [[ $have == "$digest" ]]; then
    log "$image is up to date"
  else
    local args=()
    for change in "$@" "LABEL org.ponte.rootfs=$digest"; do args+=(--change "$change"); done
    docker import "${args[@]}" --message "deploy/images/build.sh" "$tarball" "$image" >/dev/null
    log "imported $image"
  fi
  rm -f "$tarball"
}

# ---------------------------------------------------------------------------------------------
# ponte

build_ponte() {
  local bin="${PONTE_BIN:-}"
  if [[ -z $bin ]]; then
    "$REPO/deploy/local/setup.sh"
    local target="${CARGO_TARGET_DIR:-$REPO/target}"
    log "building ponte (cargo build --release -p ponte --locked, target dir $target)"
    (cd "$REPO" && CARGO_TARGET_DIR="$target" cargo build --release -p ponte --locked)
    bin="$target/release/ponte"
  fi
  [[ -x $bin ]] || die "no ponte binary at $bin"

  local root="$IMAGES_CACHE/rootfs-ponte"
  log "assembling the ponte image's file system from $bin"
  rm -rf "$root"
  mkdir -p "$root/usr/local/bin" "$root/etc/ponte" "$root/etc/ssl/certs" "$root/var/lib/ponte"
  install -m 0755 "$bin" "$root/usr/local/bin/ponte"
  copy_libs "$root" "$root/usr/local/bin/ponte"
  base_etc "$root" ponte "$PONTE_UID" /var/lib/ponte
  # For a Kafka cluster or FHIR server whose certificates chain to a public CA. (NO_COLOR: logs
  # without terminal colours, as log pipelines want them.)
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  chown "$PONTE_UID:$PONTE_UID" "$root/var/lib/ponte"
  chmod 0750 "$root/var/lib/ponte"

  import_image "$PONTE_IMAGE" "$root" \
    'ENV PATH=/usr/local/bin' \
    'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    'ENV NO_COLOR=1' \
    "USER $PONTE_UID:$PONTE_UID" \
    'WORKDIR /var/lib/ponte' \
    'ENTRYPOINT ["/usr/local/bin/ponte"]' \
    'CMD ["--help"]' \
    'EXPOSE 8081 8082 8083 50051 9181 9182 9183 9190' \
    "LABEL org.opencontainers.image.title=ponte org.opencontainers.image.version=$PONTE_VERSION"
}

# ---------------------------------------------------------------------------------------------
# Kafka

# The Java modules the broker and the tools need: `jdeps --print-module-deps` over the broker,
# server, clients and tools jars (java.base … jdk.unsupported), plus the service providers it
# cannot see: EC and ECDHE for TLS, JAAS login modules, the management extensions behind
# Kafka's JVM metrics, DNS lookups and zip file systems.
JAVA_MODULES=java.base,java.compiler,java.desktop,java.management,java.naming,java.rmi,java.scripting,java.security.jgss,java.security.sasl,java.sql,jdk.unsupported,jdk.crypto.ec,jdk.management,jdk.security.auth,jdk.naming.dns,jdk.zipfs
# java.desktop is there for java.beans (pure Java); its native AWT, font, image and sound
# libraries are left out (and with them X11 and their other libraries).
JAVA_EXCLUDE='**/libawt.so,**/libawt_headless.so,**/libawt_xawt.so,**/libjawt.so,**/libsplashscreen.so,**/libjsound.so,**/libfontmanager.so,**/libjavajpeg.so,**/liblcms.so,**/libmlib_image.so'

# A JDK 17 with jlink and its jmods: the one `java` runs from, else Debian's, else installed.
find_jdk17() {
  local home cand
  for cand in "${JAVA_HOME:-}" "$(dirname "$(dirname "$(readlink -f "$(command -v java 2>/dev/null || echo /nonexistent/bin/java)")")")" \
      /usr/lib/jvm/java-17-openjdk-amd64 /usr/lib/jvm/java-17-openjdk-*; do
    home="$cand"
    [[ -n $home && -x $home/bin/jlink && -f $home/jmods/java.base.jmod ]] || continue
    grep -q '^JAVA_VERSION="17' "$home/release" 2>/dev/null || continue
    echo "$home"
    return 0
  done
  return 1
}

build_kafka() {
  "$REPO/deploy/local/setup.sh"
  PONTE_KAFKA_VERSION="$KAFKA_VERSION" PONTE_CACHE_DIR="$CACHE" "$REPO/deploy/local/kafka.sh" fetch
  local libs="$CACHE/kafka-$KAFKA_VERSION/libs" jdk
  jdk="$(find_jdk17)" || { apt_install openjdk-17-jdk-headless; jdk="$(find_jdk17)"; } ||
    die "no JDK 17 with jlink and jmods found"

  # The runtime, cut once per JDK build and module list.
  local jre="$IMAGES_CACHE/jre17" stamp
  stamp="$(cat "$jdk/release") $JAVA_MODULES $JAVA_EXCLUDE"
  if [[ ! -x $jre/bin/java || "$(cat "$jre/.stamp" 2>/dev/null)" != "$stamp" ]]; then
    log "cutting a Java 17 runtime with jlink ($jdk)"
    rm -rf "$jre"
    "$jdk/bin/jlink" --add-modules "$JAVA_MODULES" --exclude-files="$JAVA_EXCLUDE" \
      --strip-debug --no-header-files --no-man-pages --compress=2 --output "$jre"
    echo "$stamp" >"$jre/.stamp"
  fi

  local root="$IMAGES_CACHE/rootfs-kafka"
  log "assembling the Kafka image's file system (Kafka $KAFKA_VERSION, $(find "$libs" -name '*.jar' | wc -l) jars)"
  rm -rf "$root"
  mkdir -p "$root/opt/kafka/libs" "$root/opt/kafka/config" "$root/etc/kafka" "$root/var/lib/kafka"
  cp -a "$jre" "$root/opt/java"
  rm -f "$root/opt/java/.stamp"
  cp "$libs"/*.jar "$root/opt/kafka/libs/"
  local elves=()
  mapfile -t elves < <(find "$root/opt/java" -type f \( -name '*.so' -o -path '*/bin/*' -o -name jspawnhelper -o -name jexec \))
  copy_libs "$root" "${elves[@]}"
  base_etc "$root" kafka "$KAFKA_UID" /var/lib/kafka
  # The broker logs to standard output (docker logs).
  cat >"$root/opt/kafka/config/log4j2.properties" <<'L4J'
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.console.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = INFO
L4J
  # For the command-line tools (-Dlog4j2.configurationFile=…): warnings only, to stderr.
  cat >"$root/opt/kafka/config/tools-log4j2.properties" <<'L4J'
status = warn
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
L4J
  # The default configuration: PLAINTEXT on kafka:9092 (the stack mounts its own /etc/kafka).
  kafka_server_properties plaintext >"$root/etc/kafka/server.properties"
  chown "$KAFKA_UID:$KAFKA_UID" "$root/var/lib/kafka"
  chmod 0750 "$root/var/lib/kafka"

  # The entrypoint is the JVM with the jars on its class path; the command is the main class and
  # its arguments: the broker by default, or any tool, e.g.
  #   docker run --rm ponte-kafka:4.1.1 kafka.tools.StorageTool random-uuid
  # The heap is set through JDK_JAVA_OPTIONS. The JVM's temporary files (compression codecs'
  # native libraries among them) go to /tmp, a tmpfs that must allow exec.
  import_image "$KAFKA_IMAGE" "$root" \
    'ENV PATH=/opt/java/bin' \
    'ENV JDK_JAVA_OPTIONS="-Xms256m -Xmx1g"' \
    "USER $KAFKA_UID:$KAFKA_UID" \
    'WORKDIR /var/lib/kafka' \
    'ENTRYPOINT ["/opt/java/bin/java", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:-UsePerfData", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true", "-Djava.io.tmpdir=/tmp", "-Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties", "-cp", "/opt/kafka/libs/*"]' \
    'CMD ["kafka.Kafka", "/etc/kafka/server.properties"]' \
    'EXPOSE 9092 9094' \
    "LABEL org.opencontainers.image.title=ponte-kafka org.opencontainers.image.version=$KAFKA_VERSION"
}

# ---------------------------------------------------------------------------------------------

# What this script needs beyond deploy/local/setup.sh's packages, in one apt-get run.
missing=()
command -v dockerd >/dev/null && command -v docker >/dev/null || missing+=(docker.io)
[[ -f /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
apt_install "${missing[@]}"
ensure_docker
mkdir -p "$IMAGES_CACHE"
case "$what" in
  ponte) build_ponte ;;
  kafka) build_kafka ;;
  all) build_ponte; build_kafka ;;
esac

images=()
[[ $what == kafka ]] || images+=("$PONTE_IMAGE")
[[ $what == ponte ]] || images+=("$KAFKA_IMAGE")
for image in "${images[@]}"; do
  printf '%-28s %8s MiB\n' "$image" "$(image_size_mib "$image")"
done
