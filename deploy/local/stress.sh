#!/usr/bin/env bash
# Runs the system tests that depend most on timing — scale-out, reconciler kill -9 (at random and at
# each step of an epoch commit, and a fenced instance), and the
# broker restarts under the reconciler and under a CSV upload — RUNS times in a row (default 10),
# frozen copies of one build, while two busy loops
# take both cores, the way CI and users' machines are busy. A test that fails only here hides a
# race: find its cause, do not raise its timeout. Run it after changing the reconciler, the bus
# or an adapter's publish path (docs/operations.md, "Testing under load").
#
#   deploy/local/stress.sh [RUNS]
#
# Environment (optional):
#   PONTE_STRESS_TESTS   the tests, as `<test binary>[:<name filter>]` words (default below)
#   PONTE_STRESS_BUSY    busy loops beside the tests (default 2)
#   PONTE_STRESS_LOGS    where the process logs of failed tests are kept
#                        (default target/stress-logs/<UTC time>)
#
# Ends with `stress: N passed, N failed` and exits non-zero when anything failed. Not part of
# deploy/local/test.sh: ten rounds take about 80 minutes on 2 cores (70 before the `epochs` test,
# which took 60 s a round under load). (`static_membership` can
# be added to PONTE_STRESS_TESTS; it waits out a 180 s session timeout by design.)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"

runs="${1:-10}"
tests="${PONTE_STRESS_TESTS:-scale_out reconciler_crash epochs broker_restart education_adapter:broker_restart}"
busy="${PONTE_STRESS_BUSY:-2}"
logs="${PONTE_STRESS_LOGS:-$REPO/target/stress-logs/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$logs"

deploy/local/setup.sh
started_here=0
if ! deploy/local/kafka.sh status >/dev/null 2>&1; then
  started_here=1
fi
PONTE_TEST_BOOTSTRAP="$(deploy/local/kafka.sh start | tail -n1)"
export PONTE_TEST_BOOTSTRAP

# Build before the load starts, and run frozen copies of what was built: the tests are what
# is measured, not the compiler, and edits made while the rounds run (they take an hour) must
# not be picked up half-way.
echo "[stress] building the tests and the ponte binary" >&2
cargo build -p ponte --bin ponte --locked
built="$logs/bin"
mkdir -p "$built"
cp target/debug/ponte "$built/ponte"
cargo test -p ponte-integration-tests --tests --no-run --locked 2>&1 | tee "$logs/build.out" >&2
while read -r name exe; do
  cp "$exe" "$built/$name"
done < <(sed -nE 's#^ *Executable tests/([a-z_0-9]+)\.rs \((.*)\)$#\1 \2#p' "$logs/build.out")
export PONTE_TEST_PONTE_BIN="$built/ponte"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if ((started_here)); then deploy/local/kafka.sh stop || true; fi
}
trap cleanup EXIT
for ((i = 0; i < busy; i++)); do
  (while :; do :; done) &
  pids+=($!)
done
echo "[stress] $busy busy loops running; $runs rounds of: $tests; failed tests' logs in $logs" >&2

passed=0
failed=0
failures=()
for ((r = 1; r <= runs; r++)); do
  for t in $tests; do
    bin="${t%%:*}"
    filter=""
    [[ "$t" == *:* ]] && filter="${t#*:}"
    out="$logs/round-$r-${bin}${filter:+-$filter}.out"
    started=$(date +%s)
    [[ -x "$built/$bin" ]] || { echo "[stress] no test binary $bin" >&2; exit 2; }
    if PONTE_TEST_KEEP_LOGS="$logs/round-$r" "$built/$bin" $filter >"$out" 2>&1; then
      passed=$((passed + 1))
      rm -f "$out"
      echo "[stress] round $r $t: ok ($(($(date +%s) - started)) s)" >&2
    else
      failed=$((failed + 1))
      failures+=("round $r $t")
      echo "[stress] round $r $t: FAILED ($(($(date +%s) - started)) s); output: $out" >&2
    fi
  done
done

for f in "${failures[@]}"; do echo "[stress] failed: $f" >&2; done
echo "stress: $passed passed, $failed failed"
((failed == 0))
