#!/usr/bin/env bash
# Installs the system packages Ponte's build and local stack need, and nothing else.
# Safe to run repeatedly: it only calls apt-get when something is missing.
#
#   libclang-dev   bindgen, for RocksDB's C++ bindings (librocksdb-sys)
#   cmake, g++     building librdkafka and RocksDB from source
#   libssl-dev, pkg-config  librdkafka's TLS and SASL/SCRAM (brokers with SASL_SSL)
#   openjdk 17+    the Kafka broker (a JDK: the secure broker compiles its ACL tool)
#   maven          fetching the broker jars
#   openssl        the secure broker's local CA and certificate (kafka.sh, PONTE_KAFKA_SECURE=1)
#   curl           the demo's HTTP calls
#   grpcurl        a gRPC client no one here wrote, for the system tests and operators; built
#                  from the Go module proxy into .cache/go-bin (needs Go >= 1.21)
#
# The Rust toolchain itself is expected (rustup, stable >= 1.88).
set -euo pipefail

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
have_pkg libclang-dev || need+=(libclang-dev)
command -v cmake >/dev/null || need+=(cmake)
command -v g++ >/dev/null || need+=(g++)
have_pkg libssl-dev || need+=(libssl-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
# A JDK rather than a JRE: the secure broker's ACL tool runs through java's source launcher.
java --list-modules 2>/dev/null | grep '^jdk.compiler' >/dev/null || need+=(openjdk-17-jdk-headless)
command -v openssl >/dev/null || need+=(openssl)
command -v mvn >/dev/null || need+=(maven)
command -v curl >/dev/null || need+=(curl)

if ((${#need[@]})); then
  echo "[setup] installing: ${need[*]}" >&2
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

command -v cargo >/dev/null || { echo "[setup] cargo not found: install Rust with rustup" >&2; exit 1; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
GOBIN_DIR="${PONTE_CACHE_DIR:-$REPO/.cache}/go-bin"
if [[ ! -x "$GOBIN_DIR/grpcurl" ]]; then
  command -v go >/dev/null || { echo "[setup] go not found: install Go >= 1.21 (grpcurl is built with it)" >&2; exit 1; }
  echo "[setup] building grpcurl into $GOBIN_DIR" >&2
  GOBIN="$GOBIN_DIR" go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3
fi
echo "[setup] system packages ready" >&2
