//! The HTTP service.
//!
//! - `POST /fhir` (the FHIR base: batch and transaction bundles are posted there) and
//!   `POST /fhir/Bundle`: a FHIR R4 `Bundle` of type batch, transaction or collection. Every
//!   answer is a FHIR `OperationOutcome` (`application/fhir+json`): one `error` issue per rejected
//!   entry with its FHIRPath (`Bundle.entry[2].resource.valueQuantity`) and reason, one
//!   `information` issue per ignored entry, a summary issue, and the counts as extensions.
//! - `POST /v1/health`: the simple JSON form, one object or an array; answered with every
//!   adapter's JSON answer (`ponte_edge::ingest`: `accepted`, `rejected` with position, field and
//!   reason).
//! - `POST /v1/household-evidence` (record kind `household-evidence`): the health source's
//!   evidence about the households of Colombia's Unidos, published on the records topic keyed
//!   by household id. As JSON, the assistance adapter's household-evidence layout
//!   (`ponte_adapter_education::household`), answered as `/v1/health` is; as
//!   `application/fhir+json`, a household's Bundle (the household a `Group`, its members
//!   `Patient`s, the results `Coverage`, `Observation`, `Encounter`: [`crate::household_fhir`]),
//!   answered with an `OperationOutcome` as `/fhir` is.
//!
//! Status codes, the same as every adapter's (`ponte_edge::ingest`): `200` every accepted record is acknowledged by the broker (rejected ones are on
//! the dead-letter topic); `422` nothing was accepted and something was rejected; `400` the body
//! is not a Bundle / not JSON (dead-lettered whole); `413` larger than `max_body_bytes`; `503` +
//! `Retry-After` the broker did not acknowledge (send the same body again: ids are stable);
//! `500` the broker refused the write for good.
use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use ponte_adapter_education::household::{SectorEvidence, ValidEvidence};
use ponte_bus::ingest::{Accepted, IngestReport, Ingestor, Item};
use ponte_bus::{BusError, KafkaConfig, Publisher, Topic, TopicsConfig};
use ponte_edge::http::{Sender, may_send};
use ponte_edge::ingest::{
    Answer, BodyLimit, BodyType, BoundedBody, Fault, answer, body_type, json_position, status_of,
    unavailable, unavailable_status, with_retry_after,
};
use ponte_edge::{AccessConfig, Adapter, Gate, RecordKind, TlsConfig};
use ponte_proto::events::v1::Event;
use ponte_runtime::Readiness;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::fhir::{BundleSource, EntryOutcome, ParsedBundle, parse_bundle};
use crate::household_fhir::{HouseholdBundle, Outcome, parse_household_bundle};
use crate::pull::PullConfig;
use crate::record::{MappingConfig, RecordError, ValidRecord};
use crate::simple::{FollowUpInput, validate};

pub(crate) const ADAPTER: &str = "health";
const FHIR_JSON: &str = "application/fhir+json";
const EXT_ACCEPTED: &str = "urn:ponte:fhir:StructureDefinition:accepted-count";
const EXT_REJECTED: &str = "urn:ponte:fhir:StructureDefinition:rejected-count";
const EXT_IGNORED: &str = "urn:ponte:fhir:StructureDefinition:ignored-count";

/// The `[health_adapter]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthAdapterConfig {
    /// Address of the ingest API, e.g. `127.0.0.1:8082`.
    pub listen: String,
    /// Address of the admin endpoint (metrics, health).
    pub admin_listen: String,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Seconds a client is told to wait before retrying when the broker is unavailable.
    pub retry_after_secs: u64,
    /// Most records of one request waiting for the broker's acknowledgement at once.
    pub max_in_flight: usize,
    /// Identifier systems and codes.
    pub mapping: MappingConfig,
    /// Pull mode (off while `base_url` is empty).
    pub pull: PullConfig,
}

#[derive(Debug)]
struct AppState {
    ingestor: Ingestor,
    records_topic: String,
    mapping: MappingConfig,
    retry_after_secs: u64,
    /// The health source of Unidos's rule set: the household evidence this adapter takes.
    evidence: SectorEvidence,
}

/// Turns a parsed bundle into the items to publish (records and rejections; identities and
/// ignored entries publish nothing). `position` names the entry for dead letters.
pub(crate) fn items_of(
    parsed: &ParsedBundle,
    topic: &str,
    position: impl Fn(usize) -> String,
) -> Vec<Item> {
    parsed
        .entries
        .iter()
        .filter_map(|e| match &e.outcome {
            EntryOutcome::Record(v) => {
                let ValidRecord { key, event } = v.as_ref().clone();
                Some(Item::Accepted(Accepted {
                    topic: topic.to_owned(),
                    key,
                    event,
                }))
            }
            EntryOutcome::Rejected(err) => Some(Fault::from(err.clone()).item(
                position(e.index),
                e.original.clone(),
                FHIR_JSON,
            )),
            EntryOutcome::Identity(_) => None,
            EntryOutcome::Ignored(_) => {
                metrics::counter!("ponte_adapter_records_ignored_total", "adapter" => ADAPTER, "reason" => "not_used")
                    .increment(1);
                None
            }
        })
        .collect()
}

impl From<RecordError> for Fault {
    fn from(e: RecordError) -> Fault {
        Fault::new(e.field, e.error_type, e.reason)
    }
}

pub(crate) use ponte_runtime::http::trace_id;

// ---------------------------------------------------------------------------------------------
// FHIR answers
// ---------------------------------------------------------------------------------------------

fn issue_code(error_type: &str) -> &'static str {
    match error_type {
        "malformed" => "structure",
        "unsupported" => "not-supported",
        "unresolved_reference" => "not-found",
        _ => "value",
    }
}

/// FHIRPath of the element at fault inside entry `index`.
fn expression(index: usize, rtype: &str, field: &str) -> String {
    let base = format!("Bundle.entry[{index}]");
    if let Some(rest) = field.strip_prefix("Bundle.entry") {
        format!("{base}{rest}")
    } else if !rtype.is_empty()
        && let Some(rest) = field.strip_prefix(rtype).and_then(|r| r.strip_prefix('.'))
    {
        format!("{base}.resource.{rest}")
    } else {
        format!("{base}.resource")
    }
}

fn outcome_response(
    status: StatusCode,
    issues: Vec<Value>,
    counts: Option<(usize, usize, usize)>,
) -> Response {
    let mut oo = json!({"resourceType": "OperationOutcome", "issue": issues});
    if let Some((a, r, i)) = counts {
        oo["extension"] = json!([
            {"url": EXT_ACCEPTED, "valueInteger": a},
            {"url": EXT_REJECTED, "valueInteger": r},
            {"url": EXT_IGNORED, "valueInteger": i},
        ]);
    }
    let body = serde_json::to_vec(&oo).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, FHIR_JSON)], body).into_response()
}

fn single_issue(status: StatusCode, severity: &str, code: &str, text: String) -> Response {
    outcome_response(
        status,
        vec![json!({"severity": severity, "code": code, "diagnostics": text})],
        None,
    )
}

/// What the answer says about one entry.
enum Verdict<'a> {
    Rejected(&'a RecordError),
    Ignored(&'a str),
    /// Part of the record of entry `0` (0-based).
    PartOf(usize),
    /// A record, or identity: said in the summary only.
    Quiet,
}

fn bundle_answer(parsed: &ParsedBundle, report: &IngestReport) -> Response {
    fhir_answer(
        parsed.entries.iter().map(|e| {
            let verdict = match &e.outcome {
                EntryOutcome::Rejected(err) => Verdict::Rejected(err),
                EntryOutcome::Ignored(reason) => Verdict::Ignored(reason),
                EntryOutcome::Record(_) | EntryOutcome::Identity(_) => Verdict::Quiet,
            };
            (e.index, e.label.as_str(), verdict)
        }),
        report,
    )
}

/// The `OperationOutcome` of a bundle: a summary, one `error` issue per rejected entry (its
/// FHIRPath, the entry 1-based with its resource, the reason and its class), one `information`
/// issue per ignored entry (and per measurement recorded with another entry), the counts as
/// extensions.
fn fhir_answer<'a>(
    entries: impl Iterator<Item = (usize, &'a str, Verdict<'a>)>,
    report: &IngestReport,
) -> Response {
    let mut issues = Vec::new();
    let (mut rejected_n, mut ignored_n) = (0, 0);
    for (index, label, verdict) in entries {
        let rtype = label.split('/').next().unwrap_or("");
        match verdict {
            Verdict::Rejected(err) => {
                rejected_n += 1;
                issues.push(json!({
                    "severity": "error",
                    "code": issue_code(err.error_type),
                    "details": {"text": err.error_type},
                    "diagnostics": format!("entry {} ({label}): {}: {}", index + 1, err.field, err.reason),
                    "expression": [expression(index, rtype, &err.field)],
                }));
            }
            Verdict::Ignored(reason) => {
                ignored_n += 1;
                issues.push(json!({
                    "severity": "information",
                    "code": "informational",
                    "details": {"text": "ignored"},
                    "diagnostics": format!("entry {} ({label}): ignored: {reason}", index + 1),
                    "expression": [format!("Bundle.entry[{index}]")],
                }));
            }
            Verdict::PartOf(record) => {
                issues.push(json!({
                    "severity": "information",
                    "code": "informational",
                    "details": {"text": "part-of"},
                    "diagnostics": format!("entry {} ({label}): recorded with entry {}", index + 1, record + 1),
                    "expression": [format!("Bundle.entry[{index}]")],
                }));
            }
            Verdict::Quiet => {}
        }
    }
    issues.insert(
        0,
        json!({
            "severity": "information",
            "code": "informational",
            "diagnostics": format!(
                "{} record(s) accepted and acknowledged by the bus; {rejected_n} entr(ies) rejected (on the dead-letter topic); {ignored_n} ignored",
                report.accepted
            ),
        }),
    );
    outcome_response(
        status_of(report, false),
        issues,
        Some((report.accepted, rejected_n, ignored_n)),
    )
}

fn bus_failure_fhir(state: &AppState, err: &BusError) -> Response {
    let resp = single_issue(
        unavailable_status(err),
        "error",
        if err.is_retryable() {
            "transient"
        } else {
            "exception"
        },
        format!(
            "the bus did not acknowledge the bundle ({err}); nothing in it is guaranteed stored: send it again"
        ),
    );
    with_retry_after(resp, err, state.retry_after_secs)
}

async fn ingest_bundle(
    State(state): State<Arc<AppState>>,
    Extension(sender): Extension<Sender>,
    headers: HeaderMap,
    BoundedBody(body): BoundedBody,
) -> Response {
    let now = SystemTime::now();
    let trace = trace_id(&headers);
    let source = sender.source_system.as_str();
    let parsed = parse_bundle(&body, &state.mapping, source, BundleSource::Push, now);
    match parsed {
        Ok(parsed) => {
            let items = items_of(&parsed, &state.records_topic, |i| {
                format!("entry {}", i + 1)
            });
            match state
                .ingestor
                .ingest(&sender.origin(&trace), items, now)
                .await
            {
                Ok(report) => bundle_answer(&parsed, &report),
                Err(failure) => bus_failure_fhir(&state, &failure.error),
            }
        }
        Err(err) => refuse_bundle(&state, &sender, &trace, &body, &err, now).await,
    }
}

/// A bundle unusable as a whole: dead-lettered whole, answered `400` with the reason.
async fn refuse_bundle(
    state: &AppState,
    sender: &Sender,
    trace: &str,
    body: &[u8],
    err: &RecordError,
    now: SystemTime,
) -> Response {
    let item = Fault::from(err.clone()).item("body", body.to_vec(), FHIR_JSON);
    match state
        .ingestor
        .ingest(&sender.origin(trace), vec![item], now)
        .await
    {
        Ok(_) => single_issue(
            StatusCode::BAD_REQUEST,
            "error",
            issue_code(err.error_type),
            format!("{}: {}", err.field, err.reason),
        ),
        Err(failure) => bus_failure_fhir(state, &failure.error),
    }
}

// ---------------------------------------------------------------------------------------------
// Household evidence as FHIR (Unidos)
// ---------------------------------------------------------------------------------------------

/// True when the `Content-Type` is `application/fhir+json`.
fn is_fhir_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(FHIR_JSON))
}

/// The items to publish from a household bundle: its records keyed by household id, and its
/// rejected entries with their bytes and position `entry N`.
fn household_items(parsed: &HouseholdBundle, topic: &str) -> Vec<Item> {
    parsed
        .entries
        .iter()
        .filter_map(|e| match &e.outcome {
            Outcome::Record(v) => {
                let ValidEvidence { key, event } = v.as_ref().clone();
                Some(Item::Accepted(Accepted {
                    topic: topic.to_owned(),
                    key,
                    event,
                }))
            }
            Outcome::Rejected(err) => Some(Fault::from(err.clone()).item(
                format!("entry {}", e.index + 1),
                e.original.clone(),
                FHIR_JSON,
            )),
            Outcome::Ignored(_) => {
                metrics::counter!("ponte_adapter_records_ignored_total", "adapter" => ADAPTER, "reason" => "not_used")
                    .increment(1);
                None
            }
            Outcome::Identity | Outcome::PartOf(_) => None,
        })
        .collect()
}

fn household_answer(parsed: &HouseholdBundle, report: &IngestReport) -> Response {
    fhir_answer(
        parsed.entries.iter().map(|e| {
            let verdict = match &e.outcome {
                Outcome::Rejected(err) => Verdict::Rejected(err),
                Outcome::Ignored(reason) => Verdict::Ignored(reason),
                Outcome::PartOf(i) => Verdict::PartOf(*i),
                Outcome::Record(_) | Outcome::Identity => Verdict::Quiet,
            };
            (e.index, e.label.as_str(), verdict)
        }),
        report,
    )
}

async fn ingest_household_bundle(
    state: &AppState,
    sender: &Sender,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let now = SystemTime::now();
    let trace = trace_id(headers);
    let source = sender.source_system.as_str();
    match parse_household_bundle(body, &state.evidence, &state.mapping, source, now) {
        Ok(parsed) => {
            let items = household_items(&parsed, &state.records_topic);
            match state
                .ingestor
                .ingest(&sender.origin(&trace), items, now)
                .await
            {
                Ok(report) => household_answer(&parsed, &report),
                Err(failure) => bus_failure_fhir(state, &failure.error),
            }
        }
        Err(err) => refuse_bundle(state, sender, &trace, body, &err, now).await,
    }
}

// ---------------------------------------------------------------------------------------------
// Simple JSON form
// ---------------------------------------------------------------------------------------------

fn is_array(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

/// Parses a JSON body (one object or an array) into items, each record by `parse` into its
/// Kafka key and event; `Err` when the body is not JSON at all.
fn json_items<E: Into<Fault>>(
    body: &[u8],
    topic: &str,
    parse: impl Fn(&str) -> Result<(String, Event), E>,
) -> Result<Vec<Item>, RecordError> {
    let single = !is_array(body);
    let raws = if single {
        serde_json::from_slice::<Box<RawValue>>(body).map(|r| vec![r])
    } else {
        serde_json::from_slice::<Vec<Box<RawValue>>>(body)
    }
    .map_err(|e| RecordError::malformed("record", format!("body is not JSON: {e}")))?;
    Ok(raws
        .iter()
        .enumerate()
        .map(|(i, raw)| match parse(raw.get()) {
            Ok((key, event)) => Item::Accepted(Accepted {
                topic: topic.to_owned(),
                key,
                event,
            }),
            Err(e) => e.into().item(
                json_position(single, i),
                raw.get().as_bytes().to_vec(),
                "application/json",
            ),
        })
        .collect())
}

/// Parses the simple form's body (one object or an array) into items; `Err` when the body is not
/// JSON at all.
pub fn simple_items(
    body: &[u8],
    source_system: &str,
    topic: &str,
    now: SystemTime,
) -> Result<Vec<Item>, RecordError> {
    json_items(body, topic, |raw| {
        serde_json::from_str::<FollowUpInput>(raw)
            .map_err(|e| RecordError::malformed("record", e))
            .and_then(|input| validate(&input, source_system, now))
            .map(|ValidRecord { key, event }| (key, event))
    })
}

/// Parses a household-evidence body (one object or an array) into items; `Err` when the body
/// is not JSON at all.
fn evidence_items(
    evidence: &SectorEvidence,
    body: &[u8],
    source_system: &str,
    topic: &str,
    now: SystemTime,
) -> Result<Vec<Item>, RecordError> {
    json_items(body, topic, |raw| {
        evidence
            .parse_json(raw, source_system, now)
            .map(|ValidEvidence { key, event }| (key, event))
            .map_err(|e| Fault::new(e.field, e.error_type, e.reason))
    })
}

async fn ingest_simple(
    State(state): State<Arc<AppState>>,
    Extension(sender): Extension<Sender>,
    headers: HeaderMap,
    BoundedBody(body): BoundedBody,
) -> Response {
    let now = SystemTime::now();
    let source = sender.source_system.as_str();
    let items = simple_items(&body, source, &state.records_topic, now);
    publish_json(&state, &sender, &headers, &body, items, now).await
}

async fn ingest_household_evidence(
    State(state): State<Arc<AppState>>,
    Extension(sender): Extension<Sender>,
    headers: HeaderMap,
    BoundedBody(body): BoundedBody,
) -> Response {
    if is_fhir_json(&headers) {
        return ingest_household_bundle(&state, &sender, &headers, &body).await;
    }
    if body_type(&headers) != BodyType::Json {
        return Answer::error(
            "household evidence is taken as JSON (the household-evidence layout) or as a FHIR Bundle (application/fhir+json), not CSV",
        )
        .respond(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    let now = SystemTime::now();
    let source = sender.source_system.as_str();
    let items = evidence_items(&state.evidence, &body, source, &state.records_topic, now);
    publish_json(&state, &sender, &headers, &body, items, now).await
}

/// Publishes a JSON route's items (or dead-letters a body that is not JSON) and answers.
async fn publish_json(
    state: &AppState,
    sender: &Sender,
    headers: &HeaderMap,
    body: &[u8],
    items: Result<Vec<Item>, RecordError>,
    now: SystemTime,
) -> Response {
    let trace = trace_id(headers);
    let (items, malformed) = match items {
        Ok(items) => (items, false),
        Err(e) => (
            vec![Fault::from(e).item("body", body.to_vec(), "application/json")],
            true,
        ),
    };
    match state
        .ingestor
        .ingest(&sender.origin(&trace), items, now)
        .await
    {
        Ok(report) => answer(report, malformed),
        Err(failure) => unavailable(&failure.error, state.retry_after_secs),
    }
}

fn too_large_text(limit: usize) -> String {
    format!(
        "request body larger than {limit} bytes (health_adapter.max_body_bytes); split the batch or bundle"
    )
}

/// Replaces axum's plain-text 413 with an answer in the route's own format.
fn is_plain_413(resp: &Response, own_type: &'static str) -> bool {
    resp.status() == StatusCode::PAYLOAD_TOO_LARGE
        && resp.headers().get(header::CONTENT_TYPE) != Some(&HeaderValue::from_static(own_type))
}

/// Runs the adapter until `shutdown` is cancelled: binds the API, starts pull mode when
/// configured, keeps readiness in step with the broker, and flushes the producer before
/// returning.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    cfg: &HealthAdapterConfig,
    kafka: &KafkaConfig,
    topics: &TopicsConfig,
    tls: &TlsConfig,
    access: &AccessConfig,
    audit: &ponte_audit::AuditConfig,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // The policy is read before anything connects: a bad one stops the start, named.
    let gate = Arc::new(Gate::new(ADAPTER, access, tls.is_insecure(), &[])?);
    let evidence = SectorEvidence::unidos(ponte_domain::achievements::rules::Adapter::Health)?;
    let publisher = Publisher::new(kafka, ADAPTER)?;
    let ingestor = ponte_audit::log::adapter_ingestor(
        publisher.clone(),
        cfg.max_in_flight,
        audit,
        kafka,
        topics,
        &gate,
        shutdown.clone(),
    )
    .await?;
    let records_topic = topics.name(Topic::HealthRecords);
    let state = Arc::new(AppState {
        ingestor: ingestor.clone(),
        records_topic: records_topic.clone(),
        mapping: cfg.mapping.clone(),
        retry_after_secs: cfg.retry_after_secs,
        evidence,
    });

    // Pull mode: refuses to start on a bad watermark file rather than re-reading everything.
    let puller = if cfg.pull.base_url.is_empty() {
        None
    } else {
        let poller = crate::pull::Poller::new(
            &cfg.pull,
            cfg.mapping.clone(),
            &cfg.pull.source_system,
            &records_topic,
        )?;
        let stop = shutdown.clone();
        Some(tokio::spawn(
            async move { poller.run(ingestor, stop).await },
        ))
    };

    let limit = cfg.max_body_bytes;
    let health_records = || {
        axum::middleware::from_fn(may_send(
            Arc::clone(&gate),
            Adapter::Health,
            RecordKind::Health,
        ))
    };
    let fhir = Router::new()
        .route("/fhir", post(ingest_bundle).layer(health_records()))
        .route("/fhir/Bundle", post(ingest_bundle).layer(health_records()))
        .layer(axum::middleware::map_response(
            move |resp: Response| async move {
                if is_plain_413(&resp, FHIR_JSON) {
                    single_issue(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "error",
                        "too-costly",
                        too_large_text(limit),
                    )
                } else {
                    resp
                }
            },
        ));
    let simple = Router::new()
        .route("/v1/health", post(ingest_simple).layer(health_records()))
        .route(
            "/v1/household-evidence",
            post(ingest_household_evidence).layer(axum::middleware::from_fn(may_send(
                Arc::clone(&gate),
                Adapter::Health,
                RecordKind::HouseholdEvidence,
            ))),
        )
        .layer(axum::middleware::map_response(
            move |resp: Response| async move {
                if is_plain_413(&resp, "application/json") {
                    Answer::error(too_large_text(limit)).respond(StatusCode::PAYLOAD_TOO_LARGE)
                } else {
                    resp
                }
            },
        ));
    let app = fhir
        .merge(simple)
        .layer(Extension(BodyLimit(limit)))
        .with_state(state);
    tracing::info!("health adapter: POST /fhir, /fhir/Bundle, /v1/health, /v1/household-evidence");
    ponte_edge::ingest::serve_adapter(
        gate,
        &cfg.listen,
        tls,
        access,
        app,
        &publisher,
        &readiness,
        shutdown.clone(),
    )
    .await?;
    if let Some(p) = puller {
        p.await?;
    }
    ponte_edge::ingest::flush(&publisher).await?;
    tracing::info!("health adapter stopped");
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn expressions_point_into_the_entry() {
        assert_eq!(
            expression(2, "Observation", "Observation.valueQuantity"),
            "Bundle.entry[2].resource.valueQuantity"
        );
        assert_eq!(
            expression(0, "", "Bundle.entry.request.method"),
            "Bundle.entry[0].request.method"
        );
        assert_eq!(
            expression(1, "Patient", "record"),
            "Bundle.entry[1].resource"
        );
    }

    #[test]
    fn simple_batches_keep_positions_and_bytes() {
        let body = br#"[{"nis":"26827649960","semester":"2025-S1","weight_kg":10},{"nis":"26827649961","semester":"2025-S1"}]"#;
        let items = simple_items(body, "health", "t", SystemTime::now()).unwrap();
        assert!(matches!(&items[0], Item::Accepted(a) if a.key == "26827649960"));
        match &items[1] {
            Item::Rejected(r) => {
                assert_eq!(r.position, "record 2");
                assert_eq!(r.field, "nis");
                assert_eq!(r.original, br#"{"nis":"26827649961","semester":"2025-S1"}"#);
            }
            other => panic!("{other:?}"),
        }
        assert!(simple_items(b"{nope", "health", "t", SystemTime::now()).is_err());
    }

    #[test]
    fn household_evidence_keeps_the_valid_records_keyed_by_household_and_names_the_invalid() {
        let evidence =
            SectorEvidence::unidos(ponte_domain::achievements::rules::Adapter::Health).unwrap();
        let body = br#"[{"household_id":"HH-52001-0001","evidence_id":"RIPS-77","subject":"nuip:1023456789","recorded_on":"2025-05-02","recorded_by":"eps:EPS037","items":{"vaccination_up_to_date":true,"weight_and_height_recorded":true}},{"household_id":"HH-52001-0001","source":"health","subject":"household","recorded_on":"2025-05-02","recorded_by":"eps:EPS037","items":{"enrolled_current_year":true}}]"#;
        let items = evidence_items(&evidence, body, "health", "t", SystemTime::now()).unwrap();
        match &items[0] {
            Item::Accepted(a) => {
                assert_eq!((a.topic.as_str(), a.key.as_str()), ("t", "HH-52001-0001"));
                assert_eq!(
                    a.event.record_id,
                    "health:household-evidence:HH-52001-0001:RIPS-77"
                );
                let Some(ponte_proto::events::v1::event::Record::HouseholdEvidence(e)) =
                    &a.event.record
                else {
                    panic!("{a:?}")
                };
                assert_eq!(e.source, "health");
                assert_eq!(e.items.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        match &items[1] {
            Item::Rejected(r) => {
                assert_eq!(r.position, "record 2");
                assert_eq!(r.field, "items.enrolled_current_year");
                assert!(
                    r.reason.contains("is not an item of the health source"),
                    "{}",
                    r.reason
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(evidence_items(&evidence, b"{nope", "health", "t", SystemTime::now()).is_err());
    }
}
