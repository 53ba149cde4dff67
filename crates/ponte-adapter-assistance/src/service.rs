//! The HTTP service. One endpoint per record kind, each taking one JSON record or a JSON array
//! of records; person profiles also as a streamed CSV upload (`Content-Type: text/csv`):
//!
//! | endpoint | record | topic (key) |
//! |---|---|---|
//! | `POST /v1/persons` | registry person profile | `registry.persons.v1` (NIS) |
//! | `POST /v1/scfv-attendance` | one month of SCFV attendance | `assistance.person.v1` (NIS) |
//! | `POST /v1/family-follow-ups` | family follow-up | `assistance.family.v1` (family id) |
//! | `POST /v1/appeals` | appeal and decision | `assistance.family.v1` (family id) |
//!
//! Answers (JSON, always with `accepted` and `rejected`):
//! - `200` every valid record is acknowledged by the broker; invalid ones (if any) are listed
//!   with position, field and reason and are on the dead-letter topic.
//! - `422` nothing was valid; every record is listed and dead-lettered.
//! - `400` the body is not JSON (dead-lettered whole), or a CSV header cannot be read
//!   (the header line is dead-lettered; nothing else was read).
//! - `413` the body is larger than the limit. For a CSV upload, the lines before the limit are
//!   stored and counted in the answer.
//! - `415` a CSV body sent where only JSON is taken, or not UTF-8.
//! - `503` + `Retry-After` the broker could not acknowledge; send the same body again (records
//!   carry stable ids and versions, so a repeat is harmless downstream).
//!
//! A dead letter keeps at most the first 256 KiB of a record, so that it fits in one Kafka
//! message; the reason says so when it was cut.
//!
//! The service never holds a whole CSV upload: it reads it line by line and publishes it in
//! chunks of `csv_chunk_records`, answering only after the last chunk is acknowledged.
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt as _;
use ponte_bus::ingest::{Accepted, IngestReport, Ingestor, Item, Rejected, Rejection};
use ponte_bus::{BusError, KafkaConfig, Publisher, Topic, TopicsConfig};
use ponte_edge::http::{Sender, may_send};
use ponte_edge::{AccessConfig, Adapter, Gate, RecordKind, TlsConfig};
use ponte_runtime::Readiness;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::csv::{Header, Line, LineSplitter, parse_row};
use crate::record::{
    Destination, Kind, RecordError, ValidRecord, is_json_array, parse_json, split_json_body,
};

const ADAPTER: &str = "assistance";
/// Longest CSV line read; longer lines are rejected (their first bytes are dead-lettered).
const MAX_LINE_BYTES: usize = 64 * 1024;
/// Most bytes of one rejected record (or unreadable body) kept in its dead letter (Kafka's
/// default message limit is 1 MB).
const MAX_DEAD_LETTER_BYTES: usize = 256 * 1024;
/// Most rejections listed in one answer; `rejected_total` counts them all.
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
    max_csv_bytes: u64,
    csv_chunk_records: usize,
    retry_after_secs: u64,
}

impl AppState {
    fn topic(&self, d: Destination) -> &str {
        match d {
            Destination::RegistryPersons => &self.registry_topic,
            Destination::AssistancePerson => &self.person_topic,
            Destination::AssistanceFamily => &self.family_topic,
        }
    }

    fn item(
        &self,
        parsed: Result<ValidRecord, RecordError>,
        position: String,
        original: &[u8],
        content_type: &str,
    ) -> Item {
        match parsed {
            Ok(v) => Item::Accepted(Accepted {
                topic: self.topic(v.destination).to_owned(),
                key: v.key,
                event: v.event,
            }),
            Err(e) => {
                let (original, reason) = kept_original(original, e.reason);
                Item::Rejected(Rejected {
                    position,
                    field: e.field,
                    error_type: e.error_type.to_owned(),
                    reason,
                    original,
                    content_type: content_type.to_owned(),
                })
            }
        }
    }
}

/// A dead letter must fit in one Kafka message: a huge record keeps its start, and the reason
/// says so.
fn kept_original(original: &[u8], mut reason: String) -> (Vec<u8>, String) {
    if original.len() > MAX_DEAD_LETTER_BYTES {
        reason.push_str(&format!(
            " (the record is {} bytes; its first {MAX_DEAD_LETTER_BYTES} are kept)",
            original.len()
        ));
    }
    (
        original[..original.len().min(MAX_DEAD_LETTER_BYTES)].to_vec(),
        reason,
    )
}

#[derive(Debug, Default, Serialize)]
struct Answer {
    accepted: usize,
    rejected: Vec<Rejection>,
    /// CSV uploads: every rejection, also those beyond the listed ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    rejected_total: Option<usize>,
    /// CSV uploads: lines read (header included).
    #[serde(skip_serializing_if = "Option::is_none")]
    lines: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn json(status: StatusCode, answer: &Answer) -> Response {
    let body = serde_json::to_vec(answer).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    json(
        status,
        &Answer {
            error: Some(message.into()),
            ..Default::default()
        },
    )
}

fn unavailable(state: &AppState, err: &BusError, stored: &str) -> Response {
    let mut resp = json(
        if err.is_retryable() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        },
        &Answer {
            error: Some(format!(
                "the bus did not acknowledge the batch ({err}); {stored}: send it again \
                 (records carry stable ids, a repeat is harmless)"
            )),
            ..Default::default()
        },
    );
    if err.is_retryable() {
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(state.retry_after_secs),
        );
    }
    resp
}

use ponte_runtime::http::trace_id;

/// What the `Content-Type` says the body is.
#[derive(Debug, PartialEq, Eq)]
enum BodyType {
    Json,
    Csv,
    /// CSV in a charset other than UTF-8.
    CsvNotUtf8(String),
}

fn body_type(headers: &HeaderMap) -> BodyType {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return BodyType::Json;
    };
    let mut parts = ct.split(';').map(str::trim);
    let media = parts.next().unwrap_or("").to_ascii_lowercase();
    if media != "text/csv" {
        return BodyType::Json;
    }
    for p in parts {
        if let Some((k, v)) = p.split_once('=')
            && k.trim().eq_ignore_ascii_case("charset")
        {
            let v = v.trim().trim_matches('"');
            if !v.eq_ignore_ascii_case("utf-8") && !v.eq_ignore_ascii_case("utf8") {
                return BodyType::CsvNotUtf8(v.to_owned());
            }
        }
    }
    BodyType::Csv
}

/// True when reading a body failed on its length limit (`http_body_util::LengthLimitError`,
/// which axum does not re-export), rather than on the connection.
fn is_length_limit(e: &axum::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.to_string().contains("length limit exceeded") {
            return true;
        }
        cur = err.source();
    }
    false
}

fn too_large(what: &str, limit: u64, key: &str) -> String {
    format!("{what} larger than {limit} bytes (assistance_adapter.{key}); split it")
}

async fn json_records(
    state: &AppState,
    source: &str,
    kind: Kind,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let now = SystemTime::now();
    let trace = trace_id(headers);
    let limit = state.max_body_bytes;
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(e) => {
            // `to_bytes` fails on the length limit or a broken connection.
            let too_big = is_length_limit(&e);
            return if too_big {
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    too_large("request body", limit as u64, "max_body_bytes"),
                )
            } else {
                error(StatusCode::BAD_REQUEST, format!("reading the body: {e}"))
            };
        }
    };

    let (items, malformed_body) = match split_json_body(&body) {
        Ok(raws) => {
            let single = !is_json_array(&body);
            let items = raws
                .iter()
                .enumerate()
                .map(|(i, raw)| {
                    let position = if single {
                        "body".to_owned()
                    } else {
                        format!("record {}", i + 1)
                    };
                    let parsed = parse_json(kind, raw.get(), source, now);
                    state.item(parsed, position, raw.get().as_bytes(), "application/json")
                })
                .collect();
            (items, false)
        }
        Err(e) => {
            let err = RecordError::malformed(format!("body is not JSON: {e}"));
            (
                vec![state.item(Err(err), "body".to_owned(), &body, "application/json")],
                true,
            )
        }
    };

    match state.ingestor.ingest(source, items, &trace, now).await {
        Ok(report) => {
            let status = if malformed_body {
                StatusCode::BAD_REQUEST
            } else if report.accepted == 0 && !report.rejected.is_empty() {
                StatusCode::UNPROCESSABLE_ENTITY
            } else {
                StatusCode::OK
            };
            json(
                status,
                &Answer {
                    accepted: report.accepted,
                    rejected: report.rejected,
                    ..Default::default()
                },
            )
        }
        Err(failure) => unavailable(state, &failure.error, "nothing in it is guaranteed stored"),
    }
}

/// Running totals of a CSV upload; only the first rejections are kept for the answer.
#[derive(Debug, Default)]
struct CsvProgress {
    accepted: usize,
    rejected: Vec<Rejection>,
    rejected_total: usize,
    lines: u64,
}

impl CsvProgress {
    fn absorb(&mut self, report: IngestReport) {
        self.accepted += report.accepted;
        self.rejected_total += report.rejected.len();
        let room = MAX_LISTED_REJECTIONS.saturating_sub(self.rejected.len());
        self.rejected.extend(report.rejected.into_iter().take(room));
    }

    fn answer(self, status: StatusCode, error: Option<String>) -> Response {
        json(
            status,
            &Answer {
                accepted: self.accepted,
                rejected: self.rejected,
                rejected_total: Some(self.rejected_total),
                lines: Some(self.lines),
                error,
            },
        )
    }
}

async fn csv_upload(state: &AppState, source: &str, headers: &HeaderMap, body: Body) -> Response {
    let now = SystemTime::now();
    let trace = trace_id(headers);
    let limit = state.max_csv_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            too_large("CSV upload", limit, "max_csv_bytes"),
        );
    }

    let mut stream = body.into_data_stream();
    let mut splitter = LineSplitter::new(MAX_LINE_BYTES);
    let mut header: Option<Header> = None;
    let mut pending: Vec<Item> = Vec::new();
    let mut progress = CsvProgress::default();
    let mut read: u64 = 0;
    let mut lines = Vec::new();
    let mut stop: Option<(StatusCode, String)> = None;
    let mut ended = false;

    while !ended && stop.is_none() {
        match stream.next().await {
            Some(Ok(chunk)) => {
                read += chunk.len() as u64;
                if read > limit {
                    stop = Some((
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!(
                            "{}; the lines before line {} were read and are counted here, \
                             nothing after them",
                            too_large("CSV upload", limit, "max_csv_bytes"),
                            splitter.lines_seen() + 1
                        ),
                    ));
                } else {
                    splitter.push(&chunk, &mut lines);
                }
            }
            // Whatever was read before the limit or the broken connection is still published
            // below (the loop ends once `stop` is set), so the answer's counts are true.
            Some(Err(e)) => {
                stop = Some((StatusCode::BAD_REQUEST, format!("reading the upload: {e}")));
            }
            None => {
                splitter.finish(&mut lines);
                ended = true;
            }
        }
        for line in lines.drain(..) {
            progress.lines += 1;
            match line {
                Line::TooLong { number, prefix } => {
                    let err = RecordError::malformed(format!(
                        "line longer than {MAX_LINE_BYTES} bytes (its first bytes are kept)"
                    ));
                    if header.is_none() {
                        pending.push(state.item(
                            Err(err),
                            format!("line {number}"),
                            &prefix,
                            "text/csv",
                        ));
                        stop = Some((
                            StatusCode::BAD_REQUEST,
                            "the header line cannot be read".to_owned(),
                        ));
                        break;
                    }
                    pending.push(state.item(
                        Err(err),
                        format!("line {number}"),
                        &prefix,
                        "text/csv",
                    ));
                }
                Line::Text { number, bytes } => {
                    let position = format!("line {number}");
                    let text = match std::str::from_utf8(&bytes) {
                        Ok(t) => t,
                        Err(e) => {
                            let err = RecordError::malformed(format!(
                                "not UTF-8 ({e}); send the file in UTF-8"
                            ));
                            pending.push(state.item(Err(err), position, &bytes, "text/csv"));
                            if header.is_none() {
                                stop = Some((
                                    StatusCode::BAD_REQUEST,
                                    "the header line is not UTF-8".to_owned(),
                                ));
                                break;
                            }
                            continue;
                        }
                    };
                    match &header {
                        None => match Header::parse(text) {
                            Ok(h) => header = Some(h),
                            Err(reason) => {
                                let err = RecordError::malformed(format!("header: {reason}"));
                                let msg = err.to_string();
                                pending.push(state.item(Err(err), position, &bytes, "text/csv"));
                                stop = Some((StatusCode::BAD_REQUEST, msg));
                                break;
                            }
                        },
                        Some(_) if text.trim().is_empty() => {}
                        Some(h) => {
                            let parsed = parse_row(h, text, source, now);
                            pending.push(state.item(parsed, position, &bytes, "text/csv"));
                        }
                    }
                }
            }
        }
        if pending.len() >= state.csv_chunk_records
            || (ended || stop.is_some()) && !pending.is_empty()
        {
            let last_line = splitter.lines_seen();
            match state
                .ingestor
                .ingest(source, std::mem::take(&mut pending), &trace, now)
                .await
            {
                Ok(report) => progress.absorb(report),
                Err(failure) => {
                    let stored = format!(
                        "{} records before the failed chunk are stored; lines up to {last_line} \
                         are not guaranteed",
                        progress.accepted
                    );
                    return unavailable(state, &failure.error, &stored);
                }
            }
        }
    }

    if let Some((status, msg)) = stop {
        return progress.answer(status, Some(msg));
    }
    if header.is_none() {
        return progress.answer(
            StatusCode::BAD_REQUEST,
            Some("empty upload: the first line must be the header".to_owned()),
        );
    }
    let status = if progress.accepted == 0 && progress.rejected_total > 0 {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    progress.answer(status, None)
}

async fn persons(
    State(state): State<Arc<AppState>>,
    Extension(sender): Extension<Sender>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let source = sender.source_system.as_str();
    match body_type(&headers) {
        BodyType::Json => json_records(&state, source, Kind::Person, &headers, body).await,
        BodyType::Csv => csv_upload(&state, source, &headers, body).await,
        BodyType::CsvNotUtf8(charset) => error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("charset {charset:?}: CSV uploads must be UTF-8"),
        ),
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
    json_records(state, sender.source_system.as_str(), kind, &headers, body).await
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

/// Runs the adapter until `shutdown` is cancelled: binds the API, keeps readiness in step with
/// the broker, and flushes the producer before returning.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    cfg: &AssistanceAdapterConfig,
    kafka: &KafkaConfig,
    topics: &TopicsConfig,
    tls: &TlsConfig,
    access: &AccessConfig,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // The policy is read before anything connects: a bad one stops the start, named.
    let gate = Arc::new(Gate::new(ADAPTER, access, tls.is_insecure(), &[])?);
    let publisher = Publisher::new(kafka, ADAPTER)?;
    let state = Arc::new(AppState {
        ingestor: Ingestor::new(
            publisher.clone(),
            ADAPTER,
            &topics.name(Topic::DeadLetter),
            cfg.max_in_flight,
        ),
        registry_topic: topics.name(Topic::RegistryPersons),
        person_topic: topics.name(Topic::AssistancePerson),
        family_topic: topics.name(Topic::AssistanceFamily),
        max_body_bytes: cfg.max_body_bytes,
        max_csv_bytes: cfg.max_csv_bytes,
        csv_chunk_records: cfg.csv_chunk_records.max(1),
        retry_after_secs: cfg.retry_after_secs,
    });

    // Readiness follows the broker: a load balancer should not send pushes we cannot store.
    let probe = publisher.clone();
    ponte_runtime::spawn_readiness_probe(
        readiness.clone(),
        shutdown.clone(),
        Duration::from_secs(5),
        move || {
            probe
                .check_connected(Duration::from_secs(3))
                .map_err(|e| format!("broker: {e}"))
        },
    );

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
        .with_state(state);
    tracing::info!(
        "assistance adapter: POST /v1/persons, /v1/scfv-attendance, /v1/family-follow-ups, /v1/appeals"
    );
    ponte_edge::http::run(
        gate,
        &cfg.listen,
        tls,
        access,
        app,
        shutdown.clone(),
        Duration::from_secs(30),
    )
    .await?;
    readiness.set_not_ready("shutting down");
    let p = publisher.clone();
    tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(10))).await??;
    tracing::info!("assistance adapter stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(ct) {
            h.insert(header::CONTENT_TYPE, v);
        }
        h
    }

    #[test]
    fn content_type_selects_csv_only_for_text_csv_in_utf8() {
        assert_eq!(body_type(&HeaderMap::new()), BodyType::Json);
        assert_eq!(body_type(&headers("application/json")), BodyType::Json);
        assert_eq!(body_type(&headers("text/csv")), BodyType::Csv);
        assert_eq!(
            body_type(&headers("Text/CSV; charset=\"UTF-8\"")),
            BodyType::Csv
        );
        assert_eq!(
            body_type(&headers("text/csv; charset=ISO-8859-1")),
            BodyType::CsvNotUtf8("ISO-8859-1".to_owned())
        );
    }

    #[test]
    fn a_dead_letter_keeps_the_whole_record_unless_it_cannot_fit_in_a_message() {
        let (kept, reason) = kept_original(b"{bad", "r".into());
        assert_eq!((kept.as_slice(), reason.as_str()), (&b"{bad"[..], "r"));
        let huge = vec![b'x'; MAX_DEAD_LETTER_BYTES + 1];
        let (kept, reason) = kept_original(&huge, "r".into());
        assert_eq!(kept.len(), MAX_DEAD_LETTER_BYTES);
        assert!(reason.contains("first 262144 are kept"), "{reason}");
    }

    #[test]
    fn an_answer_lists_at_most_the_cap_but_counts_every_rejection() {
        let mut p = CsvProgress::default();
        let r = Rejection {
            position: "line 2".into(),
            field: "nis".into(),
            error_type: "invalid_identifier".into(),
            reason: "x".into(),
        };
        p.absorb(IngestReport {
            accepted: 3,
            rejected: vec![r.clone(); MAX_LISTED_REJECTIONS + 5],
        });
        p.absorb(IngestReport {
            accepted: 1,
            rejected: vec![r],
        });
        assert_eq!(p.accepted, 4);
        assert_eq!(p.rejected.len(), MAX_LISTED_REJECTIONS);
        assert_eq!(p.rejected_total, MAX_LISTED_REJECTIONS + 6);
    }
}
