//! The HTTP service. One endpoint per record kind, each taking one JSON record or a JSON array
//! of records; person profiles also as a streamed CSV upload (`Content-Type: text/csv`):
//!
//! | endpoint | record | topic (key) |
//! |---|---|---|
//! | `POST /v1/persons` | registry person profile | `registry.persons.v1` (NIS) |
//! | `POST /v1/scfv-attendance` | one month of SCFV attendance | `assistance.person.v1` (NIS) |
//! | `POST /v1/family-follow-ups` | family follow-up | `assistance.family.v1` (family id) |
//! | `POST /v1/appeals` | appeal and decision | `assistance.family.v1` (family id) |
//! | `POST /v1/erasures` | an order to erase a person (LGPD) | `registry.persons.v1` (NIS) |
//! | `POST /v1/household-profiles` | household profile (Unidos) | `assistance.family.v1` (household id) |
//! | `POST /v1/household-evidence` | visit or registry evidence about a household (Unidos) | `assistance.family.v1` (household id) |
//!
//! Answers are the adapters' common ones (`ponte_edge::ingest`), JSON with `accepted` and
//! `rejected`:
//! - `200` every valid record is acknowledged by the broker; invalid ones (if any) are listed
//!   with position, field and reason and are on the dead-letter topic.
//! - `422` nothing was valid; every record is listed and dead-lettered.
//! - `400` the body is not JSON (dead-lettered whole), or a CSV header cannot be read
//!   (the header is dead-lettered; nothing else was read).
//! - `413` the body is larger than the limit. For a CSV upload, the records before the limit
//!   are stored and counted in the answer.
//! - `415` a CSV body sent where only JSON is taken, or not UTF-8.
//! - `503` + `Retry-After` the broker could not acknowledge; send the same body again (records
//!   carry stable ids and versions, so a repeat is harmless downstream).
//!
//! A dead letter keeps at most the first 256 KiB of a record (the ingestor's cap), so that it
//! fits in one Kafka message; its reason says so when it was cut.
//!
//! The service never holds a whole CSV upload: it reads it record by record in the dialect of
//! every adapter (`ponte_edge::csv`, docs/integration/csv.md) and publishes it in chunks of
//! `csv_chunk_records` (or fewer, once the first row of a chunk has waited
//! `csv_chunk_linger_ms`), answering only after the last chunk is acknowledged.
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use ponte_bus::ingest::{Accepted, Ingestor, Item};
use ponte_bus::{KafkaConfig, Publisher, Topic, TopicsConfig};
use ponte_edge::http::{Sender, may_send};
use ponte_edge::ingest::{
    Answer, BodyError, BodyType, CsvLayout, CsvSettings, CsvUpload, Fault, answer, body_type,
    csv_not_utf8, json_position, unavailable,
};
use ponte_edge::{AccessConfig, Adapter, Gate, RecordKind, TlsConfig};
use ponte_runtime::Readiness;
use ponte_runtime::http::trace_id;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::csv::Header;
use crate::record::{
    Destination, Kind, RecordError, ValidRecord, is_json_array, parse_json, split_json_body,
};

const ADAPTER: &str = "assistance";
/// Longest CSV record read; longer ones are rejected (their first bytes are dead-lettered).
const MAX_RECORD_BYTES: usize = 64 * 1024;
/// Most rejections listed in one CSV answer; `rejected_total` counts them all.
const MAX_LISTED_REJECTIONS: usize = 1000;

/// The `[assistance_adapter]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssistanceAdapterConfig {
    /// Address of the ingest API, e.g. `127.0.0.1:8083`.
    pub listen: String,
    /// Address of the admin endpoint (metrics, health).
    pub admin_listen: String,
    /// Largest JSON request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Largest CSV upload accepted, in bytes (it is streamed, not held in memory).
    pub max_csv_bytes: u64,
    /// CSV rows published per chunk (memory held per upload is about this many records).
    pub csv_chunk_records: usize,
    /// Longest a CSV row waits for its chunk to fill, in milliseconds: then the chunk is
    /// published as it is, so a slowly sent upload reaches the view while it is still coming.
    pub csv_chunk_linger_ms: u64,
    /// Seconds a client is told to wait before retrying when the broker is unavailable.
    pub retry_after_secs: u64,
    /// Most records of one request waiting for the broker's acknowledgement at once.
    pub max_in_flight: usize,
}

#[derive(Debug)]
struct AppState {
    ingestor: Ingestor,
    registry_topic: String,
    person_topic: String,
    family_topic: String,
    max_body_bytes: usize,
    retry_after_secs: u64,
    csv: CsvSettings,
}

impl From<RecordError> for Fault {
    fn from(e: RecordError) -> Fault {
        Fault::new(e.field, e.error_type, e.reason)
    }
}

impl AppState {
    fn topic(&self, d: Destination) -> &str {
        match d {
            Destination::RegistryPersons => &self.registry_topic,
            Destination::AssistancePerson => &self.person_topic,
            Destination::AssistanceFamily => &self.family_topic,
        }
    }

    fn accepted(&self, v: ValidRecord) -> Accepted {
        Accepted {
            topic: self.topic(v.destination).to_owned(),
            key: v.key,
            event: v.event,
        }
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    Answer::error(message).respond(status)
}

async fn json_records(
    state: &AppState,
    sender: &Sender,
    kind: Kind,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let source = sender.source_system.as_str();
    let now = SystemTime::now();
    let trace = trace_id(headers);
    let limit = state.max_body_bytes;
    let body = match ponte_edge::ingest::read_body(body, limit).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body larger than {limit} bytes \
                     (assistance_adapter.max_body_bytes); split it"
                ),
            );
        }
        Err(BodyError::Unreadable(e)) => {
            return error(StatusCode::BAD_REQUEST, format!("reading the body: {e}"));
        }
    };

    let (items, malformed_body) = match split_json_body(&body) {
        Ok(raws) => {
            let single = !is_json_array(&body);
            let items = raws
                .iter()
                .enumerate()
                .map(|(i, raw)| match parse_json(kind, raw.get(), source, now) {
                    Ok(v) => Item::Accepted(state.accepted(v)),
                    Err(e) => Fault::from(e).item(
                        json_position(single, i),
                        raw.get().as_bytes().to_vec(),
                        "application/json",
                    ),
                })
                .collect();
            (items, false)
        }
        Err(e) => {
            let fault = Fault::malformed(format!("body is not JSON: {e}"));
            (
                vec![fault.item("body", body.to_vec(), "application/json")],
                true,
            )
        }
    };

    match state
        .ingestor
        .ingest(&sender.origin(&trace), items, now)
        .await
    {
        Ok(report) => answer(report, malformed_body),
        Err(failure) => unavailable(&failure.error, state.retry_after_secs),
    }
}

/// The profile layout of a CSV upload: rows validated exactly as JSON profiles are.
struct PersonCsv<'a> {
    state: &'a AppState,
    source: &'a str,
    now: SystemTime,
}

impl CsvLayout for PersonCsv<'_> {
    type Header = Header;

    fn header(&self, names: &[String], delimiter: u8) -> Result<Header, String> {
        Header::new(names, delimiter)
    }

    fn row(&self, header: &Header, cells: &[String]) -> Result<Accepted, Fault> {
        let v = crate::csv::row(header, cells, self.source, self.now)?;
        Ok(self.state.accepted(v))
    }
}

/// A CSV upload of profiles: streamed record by record, published in chunks of
/// `csv_chunk_records`.
async fn csv_upload(
    state: &AppState,
    sender: &Sender,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let source = sender.source_system.as_str();
    // Rows are validated against the time the request came in; the upload stamps each chunk's
    // records (`ingest_time`) when it publishes them.
    let now = SystemTime::now();
    let trace = trace_id(headers);
    let upload = CsvUpload {
        sink: &state.ingestor,
        settings: &state.csv,
        adapter: ADAPTER,
        origin: sender.origin(&trace),
        received: now,
    };
    let layout = PersonCsv { state, source, now };
    upload.run(&layout, headers, body).await
}

async fn persons(
    State(state): State<Arc<AppState>>,
    Extension(sender): Extension<Sender>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match body_type(&headers) {
        BodyType::Json => json_records(&state, &sender, Kind::Person, &headers, body).await,
        BodyType::Csv => csv_upload(&state, &sender, &headers, body).await,
        BodyType::CsvNotUtf8(charset) => csv_not_utf8(&charset),
    }
}

async fn json_only(
    state: &AppState,
    sender: Sender,
    kind: Kind,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if body_type(&headers) != BodyType::Json {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "CSV is taken for person profiles only (POST /v1/persons); send JSON here",
        );
    }
    json_records(state, &sender, kind, &headers, body).await
}

async fn scfv(
    State(state): State<Arc<AppState>>,
    Extension(sender): Extension<Sender>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    json_only(&state, sender, Kind::ScfvAttendance, headers, body).await
}

async fn follow_ups(
    State(state): State<Arc<AppState>>,
    Extension(sender): Extension<Sender>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    json_only(&state, sender, Kind::FamilyFollowUp, headers, body).await
}

async fn appeals(
    State(state): State<Arc<AppState>>,
    Extension(sender): Extension<Sender>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    json_only(&state, sender, Kind::Appeal, headers, body).await
}

async fn household_profiles(
    State(state): State<Arc<AppState>>,
    Extension(sender): Extension<Sender>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    json_only(&state, sender, Kind::HouseholdProfile, headers, body).await
}

async fn household_evidence(
    State(state): State<Arc<AppState>>,
    Extension(sender): Extension<Sender>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    json_only(&state, sender, Kind::HouseholdEvidence, headers, body).await
}

async fn erasures(
    State(state): State<Arc<AppState>>,
    Extension(sender): Extension<Sender>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    json_only(&state, sender, Kind::Erasure, headers, body).await
}

/// Runs the adapter until `shutdown` is cancelled: binds the API, keeps readiness in step with
/// the broker, and flushes the producer before returning.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    cfg: &AssistanceAdapterConfig,
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
    let publisher = Publisher::new(kafka, ADAPTER)?;
    let state = Arc::new(AppState {
        ingestor: ponte_audit::log::adapter_ingestor(
            publisher.clone(),
            cfg.max_in_flight,
            audit,
            kafka,
            topics,
            &gate,
            shutdown.clone(),
        )
        .await?,
        registry_topic: topics.name(Topic::RegistryPersons),
        person_topic: topics.name(Topic::AssistancePerson),
        family_topic: topics.name(Topic::AssistanceFamily),
        max_body_bytes: cfg.max_body_bytes,
        retry_after_secs: cfg.retry_after_secs,
        csv: CsvSettings {
            section: "assistance_adapter",
            max_bytes: cfg.max_csv_bytes,
            max_record_bytes: MAX_RECORD_BYTES,
            max_record_setting: None,
            chunk_records: cfg.csv_chunk_records.max(1),
            chunk_linger: Duration::from_millis(cfg.csv_chunk_linger_ms),
            max_listed_rejections: MAX_LISTED_REJECTIONS,
            retry_after_secs: cfg.retry_after_secs,
        },
    });

    let rights =
        |kind| axum::middleware::from_fn(may_send(Arc::clone(&gate), Adapter::Assistance, kind));
    let app = Router::new()
        .route(
            "/v1/persons",
            post(persons).layer(rights(RecordKind::Person)),
        )
        .route(
            "/v1/scfv-attendance",
            post(scfv).layer(rights(RecordKind::Scfv)),
        )
        .route(
            "/v1/family-follow-ups",
            post(follow_ups).layer(rights(RecordKind::FollowUp)),
        )
        .route(
            "/v1/appeals",
            post(appeals).layer(rights(RecordKind::Appeal)),
        )
        .route(
            "/v1/erasures",
            post(erasures).layer(rights(RecordKind::Erasure)),
        )
        .route(
            "/v1/household-profiles",
            post(household_profiles).layer(rights(RecordKind::HouseholdProfile)),
        )
        .route(
            "/v1/household-evidence",
            post(household_evidence).layer(rights(RecordKind::HouseholdEvidence)),
        )
        .with_state(state);
    tracing::info!(
        "assistance adapter: POST /v1/persons, /v1/scfv-attendance, /v1/family-follow-ups, /v1/appeals, /v1/erasures, /v1/household-profiles, /v1/household-evidence"
    );
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
    ponte_edge::ingest::flush(&publisher).await?;
    tracing::info!("assistance adapter stopped");
    Ok(())
}
