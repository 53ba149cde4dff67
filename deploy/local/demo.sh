#!/usr/bin/env bash
# Ponte's main job on one machine: starts a local Kafka broker, creates the topics, starts the
# education adapter and the reconciler, feeds them a small sample of school attendance (valid
# records, a correction and an invalid one), and shows where to query and watch.
#
# Leaves the services running until Ctrl-C; stops everything it started on exit.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
RUN="$REPO/.cache/demo"
mkdir -p "$RUN"

deploy/local/setup.sh
echo "[demo] building ponte (the first build compiles RocksDB and librdkafka: ~15 min on 2 cores)" >&2
cargo build --locked -p ponte --bin ponte
PONTE="${CARGO_TARGET_DIR:-$REPO/target}/debug/ponte"

started_kafka=0
deploy/local/kafka.sh status >/dev/null 2>&1 || started_kafka=1
export PONTE__KAFKA__BOOTSTRAP_SERVERS="$(deploy/local/kafka.sh start | tail -n1)"
export PONTE__RECONCILER__STATE_DIR="$RUN/reconciler-state"

pids=()
cleanup() {
  echo "[demo] stopping" >&2
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if ((started_kafka)); then deploy/local/kafka.sh stop || true; fi
}
trap cleanup EXIT INT TERM

"$PONTE" topics ensure

"$PONTE" education-adapter >"$RUN/education-adapter.log" 2>&1 &
pids+=($!)
"$PONTE" reconciler >"$RUN/reconciler.log" 2>&1 &
pids+=($!)

wait_ready() {
  for _ in $(seq 1 120); do
    curl -fsS "http://127.0.0.1:$1/health/ready" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "[demo] service on admin port $1 did not become ready; logs in $RUN" >&2
  exit 1
}
wait_ready 9181
wait_ready 9190

post() {
  echo "+ POST /v1/attendance $1" >&2
  curl -sS -X POST http://127.0.0.1:8081/v1/attendance \
    -H 'content-type: application/json' --data-binary "$1" -w '  -> HTTP %{http_code}\n'
}
# Two pupils, April and May 2025 (bimester 2025-B2); one month reported as a percentage.
post '[{"nis":"268.27649.96-0","inep_school_code":"35012345","month":"2025-04","unit":"days","given":20,"attended":14,"low_attendance_reason":"62","version":1},
      {"nis":"26827649960","inep_school_code":"35012345","month":"2025-05","unit":"days","given":21,"attended":20,"version":1},
      {"nis":"46952280637","inep_school_code":"35012345","month":"2025-04","attendance_percent":91.5}]'
# The school corrects April for the first pupil (a higher version replaces the record).
post '{"nis":"26827649960","inep_school_code":"35012345","month":"2025-04","unit":"days","given":20,"attended":17,"version":2}'
# An invalid NIS: answered 422 with the field and the reason, and sent to the dead-letter topic.
post '{"nis":"26827649961","inep_school_code":"35012345","month":"2025-04","attendance_percent":80}'

sleep 2
echo "[demo] the view of NIS 26827649960 over gRPC:" >&2
"$PONTE" query person 26827649960

cat >&2 <<MSG

[demo] Ponte is running:
  ingest      POST http://127.0.0.1:8081/v1/attendance      (docs/integration/education.md)
  query       gRPC 127.0.0.1:50051  ponte.compliance.v1.ComplianceService/GetPerson
              $PONTE query person 46952280637
              grpcurl -plaintext -d '{"nis":"46952280637"}' 127.0.0.1:50051 ponte.compliance.v1.ComplianceService/GetPerson
  metrics     http://127.0.0.1:9181/metrics (adapter)   http://127.0.0.1:9190/metrics (reconciler)
  health      http://127.0.0.1:9181/health/ready        http://127.0.0.1:9190/health/ready
  logs        $RUN/*.log
Ctrl-C stops the services (and the broker, if this script started it).
MSG
if [[ "${PONTE_DEMO_EXIT:-0}" == "1" ]]; then exit 0; fi
wait "${pids[@]}"
