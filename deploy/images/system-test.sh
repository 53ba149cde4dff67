#!/usr/bin/env bash
# System test of the images and the container stack (on demand; not part of deploy/local/test.sh
# nor CI): builds the images, starts a fresh stack (deploy/images/stack.sh: SASL_SSL broker,
# TLS everywhere, the development PKI), and from the host
#   - checks every container runs as an unprivileged user on a read-only root file system, and
#     that the ponte image has no shell;
#   - feeds the README's sample through the adapters' published ports, as the demo does: a health
#     record that parks until the registry knows the child's CNS, the family's registry profiles,
#     school attendance with a correction (one post with a bearer token instead of a client
#     certificate), an invalid NIS (422), a sector posting what it may not (403) and a caller
#     without credentials (401);
#   - reads the view over gRPC with the host's `ponte query` (the federal ministry's certificate,
#     the operator's for parked records, the state of São Paulo's token) until it is complete;
#   - kills the reconciler's container (docker kill: SIGKILL), starts a new one on the same state
#     volume, and checks that every answer is the same as before, byte for byte; then the same
#     after a graceful stop (docker stop: SIGTERM);
#   - verifies the audit log's chains.
# Exits non-zero on any failed check. Ends with the stack removed (PONTE_KEEP_STACK=1 keeps it).
#
# Environment (all optional): CARGO_TARGET_DIR, PONTE_BIN (the host's ponte, default the one
# build.sh builds), PONTE_SKIP_BUILD=1 (use the images as they are), PONTE_KEEP_STACK=1, and
# those of build.sh and stack.sh.
set -euo pipefail
LOG_TAG=system-test
# shellcheck source=deploy/images/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
HERE="$REPO/deploy/images"
RUN="$CACHE/containers"
PKI="$RUN/pki"
OUT="$CACHE/images/system-test"
PONTE="${PONTE_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/ponte}"

passed=0 failed=0
pass() { passed=$((passed + 1)); echo "  ok   $*" >&2; }
fail() { failed=$((failed + 1)); echo "  FAIL $*" >&2; }
check() { # DESCRIPTION COMMAND… — passes when the command succeeds
  local what="$1"
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}

finish() {
  local rc=$?
  if [[ ${PONTE_KEEP_STACK:-0} == 1 ]]; then
    log "the stack keeps running (deploy/images/stack.sh down removes it)"
  else
    "$HERE/stack.sh" down >/dev/null 2>&1 || true
  fi
  echo "system-test: $passed passed, $failed failed"
  if ((rc == 0 && failed > 0)); then exit 1; fi
  exit "$rc"
}

if [[ ${PONTE_SKIP_BUILD:-0} != 1 ]]; then "$HERE/build.sh"; fi
[[ -x $PONTE ]] || die "no host ponte binary at $PONTE (set PONTE_BIN)"
ensure_docker
rm -rf "$OUT"
mkdir -p "$OUT"

log "starting a fresh stack"
"$HERE/stack.sh" down >/dev/null 2>&1 || true
trap finish EXIT
"$HERE/stack.sh" up 2>"$OUT/stack-up.log" || { cat "$OUT/stack-up.log" >&2; die "the stack did not start"; }

# ---------------------------------------------------------------------------------------------
log "containers"
containers=(ponte-kafka ponte-education-adapter ponte-health-adapter ponte-assistance-adapter ponte-reconciler)
for c in "${containers[@]}"; do
  user="$(docker inspect -f '{{.Config.User}}' "$c")"
  ro="$(docker inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$c")"
  uid="$(docker top "$c" -eo pid,uid | awk 'NR > 1 { print $2; exit }')"
  check "$c runs as $user (uid $uid), read-only root: $ro" \
    test "$ro" == true -a "${user%%:*}" != 0 -a -n "$user" -a "$uid" != 0
done
check "the ponte image has no shell" \
  bash -c "! docker run --rm --entrypoint /bin/sh '$PONTE_IMAGE' -c true >/dev/null 2>&1"

# ---------------------------------------------------------------------------------------------
log "feeding the README's sample through the adapters"
post() { # EXPECTED AS PORT PATH JSON — AS: a client certificate's name, or token:<principal>
  local want="$1" as="$2" port="$3" path="$4" body="$5" auth=() code
  case "$as" in
    none) ;;
    token:*) auth=(-H "authorization: Bearer $("$PONTE" pki dev-token --dir "$PKI" --principal "${as#token:}")") ;;
    *) auth=(--cert "$PKI/$as.pem" --key "$PKI/$as-key.pem") ;;
  esac
  code="$(curl -sS -o "$OUT/answer.json" -w '%{http_code}' -X POST "https://localhost:$port$path" \
    --cacert "$PKI/ca.pem" "${auth[@]}" -H 'content-type: application/json' --data-binary "$body")"
  check "POST :$port$path as $as -> $code (want $want) $(head -c 120 "$OUT/answer.json")" test "$code" == "$want"
}

query() { # AS ARGS… — `ponte query` on the host over TLS, as a client certificate or token:<principal>
  local as="$1"
  shift
  case "$as" in
    token:*) "$PONTE" query --ca "$PKI/ca.pem" \
               --token-file <("$PONTE" pki dev-token --dir "$PKI" --principal "${as#token:}") "$@" ;;
    *) "$PONTE" query --ca "$PKI/ca.pem" --cert "$PKI/$as.pem" --key "$PKI/$as-key.pem" "$@" ;;
  esac
}

# Waits until `query ARGS…` prints something matching every pattern (extended regex, each over
# the whole output); counts a failure when it does not in time.
wait_for() { # DESCRIPTION TIMEOUT_S AS ARGS… -- PATTERN…
  local what="$1" timeout="$2" as="$3" args=() patterns=() deadline out p ok
  shift 3
  while (($#)) && [[ $1 != -- ]]; do args+=("$1"); shift; done
  shift
  patterns=("$@")
  deadline=$((SECONDS + timeout))
  while :; do
    out="$(query "$as" "${args[@]}" 2>&1 || true)"
    ok=1
    for p in "${patterns[@]}"; do
      grep -Ezq -- "$p" <<<"$out" || { ok=0; break; }
    done
    if ((ok)); then pass "$what"; return 0; fi
    if ((SECONDS >= deadline)); then
      echo "$out" >"$OUT/timeout.txt"
      fail "$what (not within ${timeout} s; last answer in $OUT/timeout.txt)"
      return 0
    fi
    sleep 1
  done
}

# Health first: the child's CNS is not in the registry yet, so the reconciler parks the record.
post 200 health 8082 /v1/health '{"cns":"700000000000005","encounter_date":"2025-03-10","vaccination_up_to_date":true,"weight_kg":18.5,"height_cm":108.0,"version":1}'
wait_for "the health record is parked (ListParked as the operator)" 60 operator parked -- '(^|[[:space:]])1 parked'
# The registry: a family of two, in the programme; the child's profile carries the CNS.
post 200 assistance 8083 /v1/persons '[{"nis":"26827649960","family_id":"F-1","birth_date":"2019-01-15","sex":"F","municipality":"3550308","cns":["700000000000005"],"memberships":["PBF"],"version":1},
  {"nis":"46952280637","family_id":"F-1","birth_date":"1990-06-01","sex":"F","municipality":"3550308","memberships":["PBF"],"version":1}]'
# School attendance, bimester 2025-B2: April at 70 %, May fine.
post 200 education 8081 /v1/attendance '[{"nis":"268.27649.96-0","inep_school_code":"35012345","month":"2025-04","unit":"days","given":20,"attended":14,"low_attendance_reason":"62","version":1},
  {"nis":"26827649960","inep_school_code":"35012345","month":"2025-05","unit":"days","given":21,"attended":20,"version":1}]'
# August at 50 %: bimester 2025-B4 non-compliant. Sent with a bearer token instead of a certificate.
post 200 token:education 8081 /v1/attendance '{"nis":"26827649960","inep_school_code":"35012345","month":"2025-08","attendance_percent":50}'
# The school corrects April (a higher version replaces the record): 2025-B2 becomes compliant.
post 200 education 8081 /v1/attendance '{"nis":"26827649960","inep_school_code":"35012345","month":"2025-04","unit":"days","given":20,"attended":17,"version":2}'
# An invalid NIS: 422 and the dead-letter topic.
post 422 education 8081 /v1/attendance '{"nis":"26827649961","inep_school_code":"35012345","month":"2025-04","attendance_percent":80}'
# The education system may not send registry profiles.
post 403 education 8083 /v1/persons '{"nis":"46952280637","family_id":"F-9","birth_date":"1990-06-01","sex":"F","municipality":"3550308","version":9}'
# No client certificate, no token.
post 401 none 8081 /v1/attendance '{}'

# ---------------------------------------------------------------------------------------------
log "reading the view over gRPC from the host"
# Education 2025-B2 compliant after the correction, 2025-B4 not; the parked health record
# applied once the registry named the CNS.
edu_outcome() { printf 'conditionality: "education",[[:space:]]*period: "%s",[[:space:]]*status: %s,' "$1" "$2"; }
wait_for "the child's view: education 2025-B2 compliant (corrected), 2025-B4 non-compliant" 90 \
  federal person 26827649960 -- "$(edu_outcome 2025-B2 Compliant)" "$(edu_outcome 2025-B4 NonCompliant)" \
  'record_id: "education:35012345:26827649960:2025-04",[[:space:]]*version: 2,'
wait_for "the parked health record is applied (no record parked)" 60 operator parked -- '(^|[[:space:]])0 parked'
wait_for "the child's view: the health record under her CNS, health 2025-S1 compliant" 60 \
  federal person 26827649960 -- 'arrived_as: "cns:700000000000005"' \
  'conditionality: "health",[[:space:]]*period: "2025-S1",[[:space:]]*status: Compliant,'
wait_for "the family F-1 has both members" 60 federal family F-1 -- '26827649960' '46952280637'
wait_for "São Paulo's state reads the mother with a bearer token" 30 token:state-sp person 46952280637 -- 'nis: "46952280637"'

# Let the reconciler settle, then take the answers.
snapshot() { # DIR
  mkdir -p "$1"
  query federal person 26827649960 >"$1/person-26827649960.txt"
  query federal person 46952280637 >"$1/person-46952280637.txt"
  query federal family F-1 >"$1/family-F-1.txt"
  query federal indicators 3550308 >"$1/indicators-3550308.txt"
  query operator parked >"$1/parked.txt"
  query token:state-sp person 46952280637 >"$1/person-46952280637-state-sp.txt"
}
sleep 2
snapshot "$OUT/before"
sleep 2
snapshot "$OUT/before-again"
check "the view is stable before the kill" diff -r "$OUT/before" "$OUT/before-again"

# ---------------------------------------------------------------------------------------------
log "killing the reconciler's container and starting a new one on its state volume"
old_id="$(docker inspect -f '{{.Id}}' ponte-reconciler)"
docker kill ponte-reconciler >/dev/null
check "the reconciler was killed (SIGKILL: exit code 137)" \
  test "$(docker inspect -f '{{.State.Running}} {{.State.ExitCode}}' ponte-reconciler)" == "false 137"
"$HERE/stack.sh" service reconciler 2>>"$OUT/stack-up.log"
new_id="$(docker inspect -f '{{.Id}}' ponte-reconciler)"
check "a new reconciler container on the same volume" bash -c "
  [[ '$old_id' != '$new_id' ]] &&
  docker inspect -f '{{range .Mounts}}{{.Name}} {{end}}' ponte-reconciler | grep -qw ponte-reconciler-state"
snapshot "$OUT/after"
for f in "$OUT/before"/*.txt; do
  name="$(basename "$f")"
  check "after the restart, the same answer: ${name%.txt}" diff -u "$f" "$OUT/after/$name"
done

# A graceful stop (SIGTERM) and a new container: the same view again, this time from the local
# state on the volume (after the kill above, the reconciler rebuilt it from the changelog).
log "stopping the reconciler (SIGTERM) and starting a new container on its state volume"
docker stop ponte-reconciler >/dev/null
"$HERE/stack.sh" service reconciler 2>>"$OUT/stack-up.log"
snapshot "$OUT/after-stop"
check "after a graceful stop and restart, the same answers" diff -r "$OUT/before" "$OUT/after-stop"

# ---------------------------------------------------------------------------------------------
log "the audit log"
docker run --rm --network ponte --read-only --cap-drop ALL --tmpfs /tmp:size=16m \
  -v "$PKI:/pki:ro" -v "$RUN/ponte/admin.toml:/etc/ponte/ponte.toml:ro" \
  -v "$RUN/ponte/kafka-ca.pem:/etc/ponte/kafka-ca.pem:ro" -e PONTE_CONFIG=/etc/ponte/ponte.toml \
  "$PONTE_IMAGE" audit verify >"$OUT/audit-verify.txt" 2>&1 || true
check "ponte audit verify: $(tail -n1 "$OUT/audit-verify.txt")" grep -Eq ' 0 problems' "$OUT/audit-verify.txt"

log "answers in $OUT"
