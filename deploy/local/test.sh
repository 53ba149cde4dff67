#!/usr/bin/env bash
# Runs every test of Ponte on a fresh machine: installs what the build needs, starts the local
# Kafka broker once for the whole run (or reuses a running one), runs the workspace's tests —
# unit, property and system tests against the real broker and real `ponte` processes — and
# stops the broker again if this script started it.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"

deploy/local/setup.sh

started_here=0
if ! deploy/local/kafka.sh status >/dev/null 2>&1; then
  started_here=1
fi
PONTE_TEST_BOOTSTRAP="$(deploy/local/kafka.sh start | tail -n1)"
export PONTE_TEST_BOOTSTRAP
cleanup() {
  if ((started_here)); then deploy/local/kafka.sh stop || true; fi
}
trap cleanup EXIT

echo "[test] formatting check" >&2
cargo fmt --all -- --check

echo "[test] cargo test --workspace (broker at $PONTE_TEST_BOOTSTRAP)" >&2
cargo test --workspace --locked
