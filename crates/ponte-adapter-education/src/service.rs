//! The HTTP service: `POST /v1/attendance` with
//! - `Content-Type: application/json` (or none): one JSON record or a JSON array of records;
//! - `Content-Type: text/csv`: a file in the columns of [`crate::csv`] and the CSV dialect of
//!   every adapter (`ponte_edge::csv`, docs/integration/csv.md), read as a stream record by
//!   record and published in chunks, so a file of millions of lines needs no more memory than
//!   one chunk.
//!
//! and `POST /v1/household-evidence` (JSON only; record kind `household-evidence`): the
//! education source's evidence about the households of Colombia's Unidos ([`crate::household`]),
//! published on the same topic keyed by household id.
//!
//! Answers are the adapters' common ones (`ponte_edge::ingest`), JSON with `accepted` and
//! `rejected`:
//! - `200` every valid record is acknowledged by the broker; invalid ones (if any) are listed
//!   with position (`record N`, `line N`), field and reason and are on the dead-letter topic.
//! - `422` nothing was valid; every record is listed and dead-lettered.
//! - `400` the body is not JSON at all (dead-lettered whole), or the CSV header is unreadable
//!   (the header is dead-lettered; no row was published).
//! - `413` the body is larger than `max_body_bytes` (JSON) or `max_csv_bytes` (CSV).
//! - `415` CSV in a charset other than UTF-8.
//! - `503` + `Retry-After` the broker could not acknowledge; send the same body again (records
//!   carry stable ids and versions, so a repeat is harmless downstream).
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest as _, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use ponte_bus::ingest::{Accepted, Ingestor, Item};
use ponte_bus::{KafkaConfig, Publisher, Topic, TopicsConfig};
use ponte_edge::http::{Sender, may_send};
use ponte_edge::ingest::{
    Answer, BodyLimit, BodyType, BoundedBody, CsvLayout, CsvSettings, CsvUpload, Fault, answer,
    body_type, csv_not_utf8, json_position, unavailable,
};
use ponte_edge::{AccessConfig, Adapter, Gate, RecordKind, TlsConfig};
use ponte_runtime::Readiness;
use ponte_runtime::http::trace_id;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::csv::Header;
use crate::household::{SectorEvidence, ValidEvidence};
use crate::record::{
    AttendanceInput, RecordError, ValidRecord, is_json_array, split_json_body, validate,
};

const ADAPTER: &str = "education";

/// The `[education_adapter]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EducationAdapterConfig {
    /// Address of the ingest API, e.g. `127.0.0.1:8081`.
    pub listen: String,
    /// Address of the admin endpoint (metrics, health).
    pub admin_listen: String,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Seconds a client is told to wait before retrying when the broker is unavailable.
    pub retry_after_secs: u64,
    /// Most records of one request waiting for the broker's acknowledgement at once.
    pub max_in_flight: usize,
    /// Largest CSV upload accepted, in bytes. CSV is streamed, so this bounds time and bus
    /// volume of one request, not memory.
    pub max_csv_bytes: u64,
    /// Longest CSV record kept; a longer one is rejected (its first bytes are dead-lettered).
    pub max_csv_line_bytes: usize,
    /// CSV records published per chunk: the memory bound of an upload.
    pub csv_chunk_records: usize,
    /// Longest a CSV record waits for its chunk to fill, in milliseconds: then the chunk is
    /// published as it is, so a slowly sent upload reaches the view while it is still coming.
    pub csv_chunk_linger_ms: u64,
    /// Most rejected records listed in a CSV answer (all are counted and dead-lettered).
    pub max_listed_rejections: usize,
}

#[derive(Debug)]
struct AppState {
    ingestor: Ingestor,
    records_topic: String,
    retry_after_secs: u64,
    csv: CsvSettings,
    /// The education source of Unidos's rule set: the household evidence this adapter takes.
    evidence: SectorEvidence,
}

impl From<RecordError> for Fault {
    fn from(e: RecordError) -> Fault {
        Fault::new(e.field, e.error_type, e.reason)
    }
}

async fn ingest(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let headers = req.headers().clone();
    // Put there by the edge (`may_send`): the caller's right to send attendance, and the source
    // system its records carry.
    let Some(sender) = req.extensions().get::<Sender>().cloned() else {
        return Answer::error("the request reached the handler without a checked sender")
            .respond(StatusCode::INTERNAL_SERVER_ERROR);
    };
    match body_type(&headers) {
        BodyType::Csv => return ingest_csv(&state, &sender, &headers, req.into_body()).await,
        BodyType::CsvNotUtf8(charset) => return csv_not_utf8(&charset),
        BodyType::Json => {}
    }
    // The JSON path reads the whole body, bounded by `max_body_bytes` (`BodyLimit`).
    match BoundedBody::from_request(req, &state).await {
        Ok(BoundedBody(body)) => {
            let source = sender.source_system.as_str();
            ingest_json(&state, &sender, &headers, body, |raw, now| {
                serde_json::from_str::<AttendanceInput>(raw)
                    .map_err(|e| RecordError::malformed(e.to_string()))
                    .and_then(|input| validate(&input, source, now))
                    .map(|ValidRecord { key, event }| (key, event))
            })
            .await
        }
        Err(rejection) => rejection.into_response(),
    }
}

/// `POST /v1/household-evidence`: one JSON record or an array, in the assistance adapter's
/// household-evidence layout, for the education source only.
async fn household_evidence(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let headers = req.headers().clone();
    let Some(sender) = req.extensions().get::<Sender>().cloned() else {
        return Answer::error("the request reached the handler without a checked sender")
            .respond(StatusCode::INTERNAL_SERVER_ERROR);
    };
    if body_type(&headers) != BodyType::Json {
        return Answer::error(
            "household evidence is taken as JSON only (CSV is taken at POST /v1/attendance)",
        )
        .respond(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    match BoundedBody::from_request(req, &state).await {
        Ok(BoundedBody(body)) => {
            let source = sender.source_system.as_str();
            ingest_json(&state, &sender, &headers, body, |raw, now| {
                state
                    .evidence
                    .parse_json(raw, source, now)
                    .map(|ValidEvidence { key, event }| (key, event))
                    .map_err(|e| Fault::new(e.field, e.error_type, e.reason))
            })
            .await
        }
        Err(rejection) => rejection.into_response(),
    }
}

/// A JSON body (one record or an array), each record parsed by `parse` into its Kafka key and
/// event, published on the records topic; the invalid ones answered and dead-lettered.
async fn ingest_json<E: Into<Fault>>(
    state: &AppState,
    sender: &Sender,
    headers: &HeaderMap,
    body: Bytes,
    parse: impl Fn(&str, SystemTime) -> Result<(String, ponte_proto::events::v1::Event), E>,
) -> Response {
    let now = SystemTime::now();
    let trace = trace_id(headers);

    let (items, malformed_body) = match split_json_body(&body) {
        Ok(raws) => {
            let single = !is_json_array(&body);
            let items = raws
                .iter()
                .enumerate()
                .map(|(i, raw)| match parse(raw.get(), now) {
                    Ok((key, event)) => Item::Accepted(Accepted {
                        topic: state.records_topic.clone(),
                        key,
                        event,
                    }),
                    Err(e) => e.into().item(
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

/// The attendance layout of a CSV upload: rows validated exactly as JSON records are.
struct AttendanceCsv<'a> {
    topic: &'a str,
    source: &'a str,
    now: SystemTime,
}

impl CsvLayout for AttendanceCsv<'_> {
    type Header = Header;

    fn header(&self, names: &[String], delimiter: u8) -> Result<Header, String> {
        Header::new(names, delimiter).map_err(|e| e.0)
    }

    fn row(&self, header: &Header, cells: &[String]) -> Result<Accepted, Fault> {
        let input = header.row(cells)?;
        let ValidRecord { key, event } = validate(&input, self.source, self.now)?;
        Ok(Accepted {
            topic: self.topic.to_owned(),
            key,
            event,
        })
    }
}

/// A CSV upload: streamed record by record, published in chunks of `csv_chunk_records` (or
/// fewer, once the first record of a chunk has waited `csv_chunk_linger_ms`).
async fn ingest_csv(
    state: &AppState,
    sender: &Sender,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Response {
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
    let layout = AttendanceCsv {
        topic: &state.records_topic,
        source: sender.source_system.as_str(),
        now,
    };
    upload.run(&layout, headers, body).await
}

fn too_large(limit: usize) -> Response {
    Answer::error(format!(
        "request body larger than {limit} bytes (education_adapter.max_body_bytes); split the batch"
    ))
    .respond(StatusCode::PAYLOAD_TOO_LARGE)
}

/// Runs the adapter until `shutdown` is cancelled: binds the API, keeps readiness in step with
/// the broker, and flushes the producer before returning.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    cfg: &EducationAdapterConfig,
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
    let evidence = SectorEvidence::unidos(ponte_domain::achievements::rules::Adapter::Education)?;
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
        records_topic: topics.name(Topic::EducationAttendance),
        retry_after_secs: cfg.retry_after_secs,
        csv: CsvSettings {
            section: "education_adapter",
            max_bytes: cfg.max_csv_bytes,
            max_record_bytes: cfg.max_csv_line_bytes.max(1),
            max_record_setting: Some("max_csv_line_bytes"),
            chunk_records: cfg.csv_chunk_records.max(1),
            chunk_linger: Duration::from_millis(cfg.csv_chunk_linger_ms),
            max_listed_rejections: cfg.max_listed_rejections,
            retry_after_secs: cfg.retry_after_secs,
        },
        evidence,
    });

    let limit = cfg.max_body_bytes;
    let app = Router::new()
        .route(
            "/v1/attendance",
            post(ingest).layer(axum::middleware::from_fn(may_send(
                Arc::clone(&gate),
                Adapter::Education,
                RecordKind::Attendance,
            ))),
        )
        .route(
            "/v1/household-evidence",
            post(household_evidence).layer(axum::middleware::from_fn(may_send(
                Arc::clone(&gate),
                Adapter::Education,
                RecordKind::HouseholdEvidence,
            ))),
        )
        .layer(Extension(BodyLimit(limit)))
        .layer(axum::middleware::map_response(
            move |resp: Response| async move {
                if resp.status() == StatusCode::PAYLOAD_TOO_LARGE
                    && resp.headers().get(header::CONTENT_TYPE)
                        != Some(&HeaderValue::from_static("application/json"))
                {
                    too_large(limit)
                } else {
                    resp
                }
            },
        ))
        .with_state(state);
    tracing::info!("education adapter: POST /v1/attendance, /v1/household-evidence");
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
    tracing::info!("education adapter stopped");
    Ok(())
}
