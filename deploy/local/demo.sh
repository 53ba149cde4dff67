#!/usr/bin/env bash
# Ponte's main job on one machine: starts a local Kafka broker, creates the topics, starts the
# three sector adapters and the reconciler, feeds them a small sample — a family from the
# registry, a health record that arrives before the registry knows the child's CNS, school
# attendance with a correction, an invalid record — and shows the resulting compliance view and
# where to query and watch.
#
# Leaves the services running until Ctrl-C; stops everything it started on exit.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
RUN="$REPO/.cache/demo"
mkdir -p "$RUN"

deploy/local/setup.sh
echo "[demo] building ponte (the first build compiles RocksDB and librdkafka: about 20 min on 2 cores)" >&2
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

for service in education-adapter health-adapter assistance-adapter reconciler; do
  "$PONTE" "$service" >"$RUN/$service.log" 2>&1 &
  pids+=($!)
done

wait_ready() {
  for _ in $(seq 1 120); do
    curl -fsS "http://127.0.0.1:$1/health/ready" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "[demo] service on admin port $1 did not become ready; logs in $RUN" >&2
  exit 1
}
for port in 9181 9182 9183 9190; do wait_ready "$port"; done

post() { # post PORT PATH JSON
  echo "+ POST :$1$2 $3" >&2
  curl -sS -X POST "http://127.0.0.1:$1$2" \
    -H 'content-type: application/json' --data-binary "$3" -w '  -> HTTP %{http_code}\n'
}
# Health first: the child's CNS is not in the registry yet, so the reconciler parks the record.
post 8082 /v1/health '{"cns":"700000000000005","encounter_date":"2025-03-10","vaccination_up_to_date":true,"weight_kg":18.5,"height_cm":108.0,"version":1}'
sleep 2
echo "[demo] parked health records:" >&2
"$PONTE" query parked
# The registry: a family of two, in the programme; the child's profile carries the CNS.
post 8083 /v1/persons '[{"nis":"26827649960","family_id":"F-1","birth_date":"2019-01-15","sex":"F","municipality":"3550308","cns":["700000000000005"],"memberships":["PBF"],"version":1},
  {"nis":"46952280637","family_id":"F-1","birth_date":"1990-06-01","sex":"F","municipality":"3550308","memberships":["PBF"],"version":1}]'
# School attendance, bimester 2025-B2: April at 70 % (below the 75 % of ages 6-17; she is 6), May fine.
post 8081 /v1/attendance '[{"nis":"268.27649.96-0","inep_school_code":"35012345","month":"2025-04","unit":"days","given":20,"attended":14,"low_attendance_reason":"62","version":1},
  {"nis":"26827649960","inep_school_code":"35012345","month":"2025-05","unit":"days","given":21,"attended":20,"version":1}]'
# August at 50 %: bimester 2025-B4 non-compliant.
post 8081 /v1/attendance '{"nis":"26827649960","inep_school_code":"35012345","month":"2025-08","attendance_percent":50}'
# The school corrects April (a higher version replaces the record): 2025-B2 becomes compliant.
post 8081 /v1/attendance '{"nis":"26827649960","inep_school_code":"35012345","month":"2025-04","unit":"days","given":20,"attended":17,"version":2}'
# An invalid NIS: answered 422 with the field and the reason, and sent to the dead-letter topic.
post 8081 /v1/attendance '{"nis":"26827649961","inep_school_code":"35012345","month":"2025-04","attendance_percent":80}'

sleep 3
echo "[demo] the view of NIS 26827649960 over gRPC:" >&2
"$PONTE" query person 26827649960 | grep -v evidence_json | grep -E 'nis:|family_id|conditionality|period|status|note' | head -60
echo "[demo] the family:" >&2
"$PONTE" query family F-1 | grep -v effects_json | grep -E 'members|name|sequence|status|non_compliant|"' | head -30
echo "[demo] indicators of São Paulo (3550308):" >&2
"$PONTE" query indicators 3550308

cat >&2 <<MSG

[demo] Ponte is running:
  ingest      education  POST http://127.0.0.1:8081/v1/attendance  (docs/integration/education.md)
              health     POST http://127.0.0.1:8082/fhir, /v1/health (docs/integration/health.md)
              assistance POST http://127.0.0.1:8083/v1/persons, ...  (docs/integration/assistance.md)
  query       gRPC 127.0.0.1:50051  ponte.compliance.v1.ComplianceService (docs/api.md)
              $PONTE query person 46952280637
              .cache/go-bin/grpcurl -plaintext -d '{"nis":"46952280637"}' 127.0.0.1:50051 ponte.compliance.v1.ComplianceService/GetPerson
  metrics     http://127.0.0.1:{9181,9182,9183}/metrics (adapters)   http://127.0.0.1:9190/metrics (reconciler)
  health      http://127.0.0.1:{9181,9182,9183,9190}/health/ready
  logs        $RUN/*.log
Ctrl-C stops the services (and the broker, if this script started it).
MSG
if [[ "${PONTE_DEMO_EXIT:-0}" == "1" ]]; then exit 0; fi
wait "${pids[@]}"
