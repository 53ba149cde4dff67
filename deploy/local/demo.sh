#!/usr/bin/env bash
# Ponte's main job on one machine: starts a local Kafka broker, creates the topics, starts the
# three sector adapters and the reconciler, feeds them a small sample — a family from the
# registry, a health record that arrives before the registry knows the child's CNS, school
# attendance with a correction, an invalid record — and shows the resulting compliance view and
# where to query and watch. Everything runs with TLS and authenticated callers: a development
# PKI (`ponte pki dev`) in .cache/demo/pki gives the services their certificate and the access
# policy, and each sector system and reader its client certificate.
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

# TLS, authentication and the audit log: the development PKI and audit keys (made once) and the
# config that points at them.
PKI="$RUN/pki"
[[ -f "$PKI/ponte.toml" && -f "$PKI/audit/subject.key" ]] || "$PONTE" pki dev --out "$PKI" --force >/dev/null
export PONTE_CONFIG="$PKI/ponte.toml"
# `ponte query` trusts the demo CA and reads as the federal ministry by default.
export PONTE_CLIENT_CA="$PKI/ca.pem" PONTE_CLIENT_CERT="$PKI/federal.pem" PONTE_CLIENT_KEY="$PKI/federal-key.pem"

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

post() { # post AS PORT PATH JSON — as the sector system AS, with its client certificate
  echo "+ POST :$2$3 (as $1) $4" >&2
  curl -sS -X POST "https://localhost:$2$3" --cacert "$PKI/ca.pem" \
    --cert "$PKI/$1.pem" --key "$PKI/$1-key.pem" \
    -H 'content-type: application/json' --data-binary "$4" -w '  -> HTTP %{http_code}\n'
}
# Health first: the child's CNS is not in the registry yet, so the reconciler parks the record.
post health 8082 /v1/health '{"cns":"700000000000005","encounter_date":"2025-03-10","vaccination_up_to_date":true,"weight_kg":18.5,"height_cm":108.0,"version":1}'
sleep 2
echo "[demo] parked health records:" >&2
# Parked records hold raw CNS/CPF: only the operator may list them.
"$PONTE" query --cert "$PKI/operator.pem" --key "$PKI/operator-key.pem" parked
# The registry: a family of two, in the programme; the child's profile carries the CNS.
post assistance 8083 /v1/persons '[{"nis":"26827649960","family_id":"F-1","birth_date":"2019-01-15","sex":"F","municipality":"3550308","cns":["700000000000005"],"memberships":["PBF"],"version":1},
  {"nis":"46952280637","family_id":"F-1","birth_date":"1990-06-01","sex":"F","municipality":"3550308","memberships":["PBF"],"version":1}]'
# School attendance, bimester 2025-B2: April at 70 % (below the 75 % of ages 6-17; she is 6), May fine.
post education 8081 /v1/attendance '[{"nis":"268.27649.96-0","inep_school_code":"35012345","month":"2025-04","unit":"days","given":20,"attended":14,"low_attendance_reason":"62","version":1},
  {"nis":"26827649960","inep_school_code":"35012345","month":"2025-05","unit":"days","given":21,"attended":20,"version":1}]'
# August at 50 %: bimester 2025-B4 non-compliant.
post education 8081 /v1/attendance '{"nis":"26827649960","inep_school_code":"35012345","month":"2025-08","attendance_percent":50}'
# The school corrects April (a higher version replaces the record): 2025-B2 becomes compliant.
post education 8081 /v1/attendance '{"nis":"26827649960","inep_school_code":"35012345","month":"2025-04","unit":"days","given":20,"attended":17,"version":2}'
# An invalid NIS: answered 422 with the field and the reason, and sent to the dead-letter topic.
post education 8081 /v1/attendance '{"nis":"26827649961","inep_school_code":"35012345","month":"2025-04","attendance_percent":80}'
# The education system may not send registry profiles: 403, nothing published.
post education 8083 /v1/persons '{"nis":"46952280637","family_id":"F-9","birth_date":"1990-06-01","sex":"F","municipality":"3550308","version":9}'
# Without a client certificate (or a bearer token): 401.
echo "+ POST :8081/v1/attendance without credentials" >&2
curl -sS -X POST https://localhost:8081/v1/attendance --cacert "$PKI/ca.pem" -d '{}' -w '  -> HTTP %{http_code}\n'

sleep 3
echo "[demo] the view of NIS 26827649960 over gRPC:" >&2
"$PONTE" query person 26827649960 | grep -v evidence_json | grep -E 'nis:|family_id|conditionality|period|status|note' | head -60
echo "[demo] the family:" >&2
"$PONTE" query family F-1 | grep -v effects_json | grep -E 'members|name|sequence|status|non_compliant|"' | head -30
echo "[demo] indicators of São Paulo (3550308):" >&2
"$PONTE" query indicators 3550308
# Every write, read and refusal above is in the audit log (docs/privacy.md), hash-chained and
# signed; the operator holding the subject key can answer a family's "who read us?".
sleep 2
echo "[demo] who read NIS 26827649960, from the audit log:" >&2
"$PONTE" audit who-read 26827649960 | tail -n 6 || true
echo "[demo] the audit log's chains:" >&2
"$PONTE" audit verify | tail -n 2 || true

cat >&2 <<MSG

[demo] Ponte is running:
  ingest      education  POST https://localhost:8081/v1/attendance  (docs/integration/education.md)
              health     POST https://localhost:8082/fhir, /v1/health (docs/integration/health.md)
              assistance POST https://localhost:8083/v1/persons, ...  (docs/integration/assistance.md)
              curl --cacert $PKI/ca.pem --cert $PKI/education.pem --key $PKI/education-key.pem ...
  query       gRPC localhost:50051 over TLS  ponte.compliance.v1.ComplianceService (docs/api.md)
              $PONTE query --ca $PKI/ca.pem --cert $PKI/municipality-3550308.pem --key $PKI/municipality-3550308-key.pem person 46952280637
              $PONTE query --ca $PKI/ca.pem --token-file <($PONTE pki dev-token --dir $PKI --principal state-sp) person 46952280637
              .cache/go-bin/grpcurl -cacert $PKI/ca.pem -cert $PKI/federal.pem -key $PKI/federal-key.pem -d '{"nis":"46952280637"}' localhost:50051 ponte.compliance.v1.ComplianceService/GetPerson
  security    certificates, tokens and the access policy: $PKI (docs/security.md)
  audit       $PONTE audit verify | who-read <nis> | trace <record id>   (docs/privacy.md)
              $PONTE erase <nis> --cert $PKI/operator.pem --key $PKI/operator-key.pem
  metrics     http://127.0.0.1:{9181,9182,9183}/metrics (adapters)   http://127.0.0.1:9190/metrics (reconciler)
  health      http://127.0.0.1:{9181,9182,9183,9190}/health/ready
  logs        $RUN/*.log
Ctrl-C stops the services (and the broker, if this script started it).
MSG
if [[ "${PONTE_DEMO_EXIT:-0}" == "1" ]]; then exit 0; fi
wait "${pids[@]}"
