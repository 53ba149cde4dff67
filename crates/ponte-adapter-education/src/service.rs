//! The HTTP service: `POST /v1/attendance` with
//! - `Content-Type: application/json` (or none): one JSON record or a JSON array of records;
//! - `Content-Type: text/csv`: a CSV file in the layout of [`crate::csv`], read as a stream
//!   line by line and published in chunks, so a file of millions of lines needs no more memory
//!   than one chunk.
//!
//! Answers (JSON, always with `accepted` and `rejected`):
//! - `200` every valid record is acknowledged by the broker; invalid ones (if any) are listed
//!   with position (`record N`, `line N`), field and reason and are on the dead-letter topic.
//! - `422` nothing was valid; every record is listed and dead-lettered.
//! - `400` the body is not JSON at all (dead-lettered whole), or the CSV header is unreadable
//!   (the header line is dead-lettered; no line was published).
//! - `413` the body is larger than `max_body_bytes` (JSON) or `max_csv_bytes` (CSV).
//! - `503` + `Retry-After` the broker could not acknowledge; send the same body again (records
//!   carry stable ids and versions, so a repeat is harmless downstream).
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest as _, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt as _;
use ponte_bus::ingest::{Accepted, Ingestor, Item, Rejected, Rejection};
use ponte_bus::{BusError, KafkaConfig, Publisher, Topic, TopicsConfig};
use ponte_edge::http::{Sender, may_send};
use ponte_edge::{AccessConfig, Adapter, Gate, RecordKind, SourceSystem, TlsConfig};
use ponte_runtime::Readiness;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::csv::{Header, Line, LineSplitter};
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
    /// Longest CSV line kept; a longer line is rejected (its first bytes are dead-lettered).
    pub max_csv_line_bytes: usize,
    /// CSV lines published per chunk: the memory bound of an upload.
    pub csv_chunk_records: usize,
    /// Most rejected lines listed in a CSV answer (all are counted and dead-lettered).
    pub max_listed_rejections: usize,
}

#[derive(Debug)]
struct AppState {
    ingestor: Ingestor,
    records_topic: String,
    retry_after_secs: u64,
    max_csv_bytes: u64,
    max_csv_line_bytes: usize,
    csv_chunk_records: usize,
    max_listed_rejections: usize,
}

#[derive(Debug, Serialize)]
struct Answer {
    accepted: usize,
    rejected: Vec<Rejection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn json(status: StatusCode, answer: &Answer) -> Response {
    let body = serde_json::to_vec(answer).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn unavailable(state: &AppState, err: &BusError) -> Response {
    let mut resp = json(
        if err.is_retryable() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        },
        &Answer {
            accepted: 0,
            rejected: Vec::new(),
            error: Some(format!(
                "the bus did not acknowledge the batch ({err}); nothing in it is guaranteed \
                 stored: send it again"
            )),
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

fn rejected(position: String, err: RecordError, original: Vec<u8>) -> Rejected {
    Rejected {
        position,
        field: err.field,
        error_type: err.error_type.to_owned(),
        reason: err.reason,
        original,
        content_type: "application/json".to_owned(),
    }
}

/// True when the request says its body is CSV (`text/csv`, `application/csv`).
fn is_csv(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| v == "text/csv" || v == "application/csv")
}

async fn ingest(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let headers = req.headers().clone();
    // Put there by the edge (`may_send`): the caller's right to send attendance, and the source
    // system its records carry.
    let Some(sender) = req.extensions().get::<Sender>().cloned() else {
        return json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &Answer {
                accepted: 0,
                rejected: Vec::new(),
                error: Some("the request reached the handler without a checked sender".into()),
            },
        );
    };
    let source = sender.source_system;
    if is_csv(&headers) {
        return ingest_csv(state, source, headers, req.into_body()).await;
    }
    // The JSON path reads the whole body, bounded by `DefaultBodyLimit` (`max_body_bytes`).
    match Bytes::from_request(req, &state).await {
        Ok(body) => ingest_json(&state, &source, &headers, body).await,
        Err(rejection) => rejection.into_response(),
    }
}

async fn ingest_json(
    state: &AppState,
    source: &SourceSystem,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let now = SystemTime::now();
    let trace = trace_id(headers);

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
                    let parsed = serde_json::from_str::<AttendanceInput>(raw.get())
                        .map_err(|e| RecordError::malformed(e.to_string()))
                        .and_then(|input| validate(&input, source.as_str(), now));
                    match parsed {
                        Ok(ValidRecord { key, event }) => Item::Accepted(Accepted {
                            topic: state.records_topic.clone(),
                            key,
                            event,
                        }),
                        Err(e) => {
                            Item::Rejected(rejected(position, e, raw.get().as_bytes().to_vec()))
                        }
                    }
                })
                .collect();
            (items, false)
        }
        Err(e) => {
            let err = RecordError::malformed(format!("body is not JSON: {e}"));
            (
                vec![Item::Rejected(rejected(
                    "body".to_owned(),
                    err,
                    body.to_vec(),
                ))],
                true,
            )
        }
    };

    match state
        .ingestor
        .ingest(source.as_str(), items, &trace, now)
        .await
    {
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
                    error: None,
                },
            )
        }
        Err(failure) => unavailable(state, &failure.error),
    }
}

/// What a CSV upload's answer lists about one rejected line.
#[derive(Debug, Serialize)]
struct CsvRejection {
    /// 1-based line number in the file (the header is line 1).
    line: u64,
    /// `line N`, as in the dead letter.
    position: String,
    field: String,
    error_type: String,
    reason: String,
}

/// The answer to a CSV upload.
#[derive(Debug, Default, Serialize)]
struct CsvAnswer {
    /// Lines acknowledged by the broker.
    accepted: usize,
    /// The first `max_listed_rejections` rejected lines.
    rejected: Vec<CsvRejection>,
    /// Every rejected line, listed or not (all are dead-lettered).
    rejected_total: usize,
    /// Lines read, header and blank lines included.
    lines: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// One CSV upload in progress: the header, the chunk being filled, and the answer so far.
struct CsvUpload<'a> {
    state: &'a AppState,
    source: SourceSystem,
    trace: String,
    now: SystemTime,
    header: Option<Header>,
    header_error: Option<String>,
    items: Vec<Item>,
    /// Rejections of the chunk being filled; reported once the chunk is acknowledged.
    pending: Vec<CsvRejection>,
    answer: CsvAnswer,
}

impl CsvUpload<'_> {
    fn reject(&mut self, line: Line, err: RecordError) {
        let position = format!("line {}", line.number);
        self.pending.push(CsvRejection {
            line: line.number,
            position: position.clone(),
            field: err.field.clone(),
            error_type: err.error_type.to_owned(),
            reason: err.reason.clone(),
        });
        self.items.push(Item::Rejected(Rejected {
            position,
            field: err.field,
            error_type: err.error_type.to_owned(),
            reason: err.reason,
            original: line.bytes,
            content_type: "text/csv".to_owned(),
        }));
    }

    fn line(&mut self, line: Line) {
        self.answer.lines = line.number;
        let Some(header) = &self.header else {
            let parsed = if line.truncated {
                Err(format!(
                    "header: longer than {} bytes (education_adapter.max_csv_line_bytes)",
                    self.state.max_csv_line_bytes
                ))
            } else {
                Header::parse(&line.bytes).map_err(|e| e.to_string())
            };
            match parsed {
                Ok(h) => self.header = Some(h),
                Err(reason) => {
                    self.header_error = Some(reason.clone());
                    self.reject(
                        line,
                        RecordError {
                            field: "header".to_owned(),
                            reason,
                            error_type: "malformed",
                        },
                    );
                }
            }
            return;
        };
        if line.truncated {
            let err = RecordError::malformed(format!(
                "line longer than {} bytes (education_adapter.max_csv_line_bytes); only its \
                 first bytes are kept in the dead letter",
                self.state.max_csv_line_bytes
            ));
            self.reject(line, err);
            return;
        }
        if line.bytes.iter().all(u8::is_ascii_whitespace) {
            return; // blank lines separate nothing and are not records
        }
        let parsed = header
            .parse_row(&line.bytes)
            .and_then(|input| validate(&input, self.source.as_str(), self.now));
        match parsed {
            Ok(ValidRecord { key, event }) => self.items.push(Item::Accepted(Accepted {
                topic: self.state.records_topic.clone(),
                key,
                event,
            })),
            Err(e) => self.reject(line, e),
        }
    }

    /// Publishes the chunk and waits for the broker; only then are its lines reported.
    async fn flush(&mut self) -> Result<(), BusError> {
        if self.items.is_empty() {
            return Ok(());
        }
        let items = std::mem::replace(
            &mut self.items,
            Vec::with_capacity(self.state.csv_chunk_records),
        );
        match self
            .state
            .ingestor
            .ingest(self.source.as_str(), items, &self.trace, self.now)
            .await
        {
            Ok(report) => {
                self.answer.accepted += report.accepted;
                for r in self.pending.drain(..) {
                    self.answer.rejected_total += 1;
                    if self.answer.rejected.len() < self.state.max_listed_rejections {
                        self.answer.rejected.push(r);
                    }
                }
                Ok(())
            }
            Err(failure) => {
                self.pending.clear();
                Err(failure.error)
            }
        }
    }

    fn respond(mut self, status: StatusCode, error: Option<String>) -> Response {
        self.answer.error = error;
        tracing::info!(
            trace_id = %self.trace,
            lines = self.answer.lines,
            accepted = self.answer.accepted,
            rejected = self.answer.rejected_total,
            status = status.as_u16(),
            "csv upload answered"
        );
        let body = serde_json::to_vec(&self.answer).unwrap_or_default();
        (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Reads and discards the rest of a body (up to the size limit), so that a client still
/// sending reads our answer instead of a reset connection.
async fn drain(
    stream: &mut (impl futures::Stream<Item = Result<Bytes, axum::Error>> + Unpin),
    mut received: u64,
    limit: u64,
) {
    while let Some(Ok(bytes)) = stream.next().await {
        received += bytes.len() as u64;
        if received > limit {
            break;
        }
    }
}

fn too_large_csv(limit: u64) -> String {
    format!(
        "request body larger than {limit} bytes (education_adapter.max_csv_bytes); split the file"
    )
}

fn refused(reason: &'static str) {
    metrics::counter!("ponte_adapter_requests_refused_total", "adapter" => ADAPTER, "reason" => reason)
        .increment(1);
}

/// A CSV upload: streamed line by line, published in chunks of `csv_chunk_records`.
async fn ingest_csv(
    state: Arc<AppState>,
    source: SourceSystem,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limit = state.max_csv_bytes;
    let mut up = CsvUpload {
        state: &state,
        source,
        trace: trace_id(&headers),
        now: SystemTime::now(),
        header: None,
        header_error: None,
        items: Vec::with_capacity(state.csv_chunk_records),
        pending: Vec::new(),
        answer: CsvAnswer::default(),
    };
    // A declared size over the limit is refused before anything is read or published.
    if content_length(&headers).is_some_and(|len| len > limit) {
        refused("too_large");
        return up.respond(StatusCode::PAYLOAD_TOO_LARGE, Some(too_large_csv(limit)));
    }

    let mut stream = body.into_data_stream();
    let mut splitter = LineSplitter::new(state.max_csv_line_bytes);
    let mut lines = Vec::new();
    let mut received: u64 = 0;
    let mut ended = false;
    while !ended {
        match stream.next().await {
            Some(Ok(bytes)) => {
                received += bytes.len() as u64;
                if received > limit {
                    // Chunked upload without a declared size: what came before the limit is
                    // published and reported; the rest is not read.
                    refused("too_large");
                    let error = too_large_csv(limit);
                    return match up.flush().await {
                        Ok(()) => up.respond(StatusCode::PAYLOAD_TOO_LARGE, Some(error)),
                        Err(e) => csv_unavailable(up, &e),
                    };
                }
                splitter.push(&bytes, &mut lines);
            }
            Some(Err(e)) => {
                // The client stopped sending or sent a broken body; nothing more can be read.
                let error = format!("request body could not be read: {e}");
                return match up.flush().await {
                    Ok(()) => up.respond(StatusCode::BAD_REQUEST, Some(error)),
                    Err(e) => csv_unavailable(up, &e),
                };
            }
            None => {
                splitter.finish(&mut lines);
                ended = true;
            }
        }
        for line in lines.drain(..) {
            up.line(line);
            if let Some(reason) = up.header_error.clone() {
                // Without a header no line can be read: dead-letter the header, refuse the file.
                refused("bad_header");
                drain(&mut stream, received, limit).await;
                return match up.flush().await {
                    Ok(()) => up.respond(StatusCode::BAD_REQUEST, Some(reason)),
                    Err(e) => csv_unavailable(up, &e),
                };
            }
            if up.items.len() >= state.csv_chunk_records
                && let Err(e) = up.flush().await
            {
                drain(&mut stream, received, limit).await;
                return csv_unavailable(up, &e);
            }
        }
    }
    if let Err(e) = up.flush().await {
        return csv_unavailable(up, &e);
    }
    if up.header.is_none() {
        refused("empty");
        return up.respond(
            StatusCode::BAD_REQUEST,
            Some("empty body: a CSV upload starts with its header line".to_owned()),
        );
    }
    let status = if up.answer.accepted == 0 && up.answer.rejected_total > 0 {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    up.respond(status, None)
}

fn csv_unavailable(up: CsvUpload<'_>, err: &BusError) -> Response {
    let retry_after = up.state.retry_after_secs;
    let status = if err.is_retryable() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    let mut resp = up.respond(
        status,
        Some(format!(
            "the bus did not acknowledge a chunk ({err}); lines counted in `accepted` are \
             stored, the rest are not guaranteed: send the whole file again"
        )),
    );
    if err.is_retryable() {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    }
    resp
}

async fn too_large(limit: usize) -> Response {
    json(
        StatusCode::PAYLOAD_TOO_LARGE,
        &Answer {
            accepted: 0,
            rejected: Vec::new(),
            error: Some(format!(
                "request body larger than {limit} bytes (education_adapter.max_body_bytes); split the batch"
            )),
        },
    )
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
        records_topic: topics.name(Topic::EducationAttendance),
        retry_after_secs: cfg.retry_after_secs,
        max_csv_bytes: cfg.max_csv_bytes,
        max_csv_line_bytes: cfg.max_csv_line_bytes.max(1),
        csv_chunk_records: cfg.csv_chunk_records.max(1),
        max_listed_rejections: cfg.max_listed_rejections,
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
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(
            move |resp: Response| async move {
                if resp.status() == StatusCode::PAYLOAD_TOO_LARGE
                    && resp.headers().get(header::CONTENT_TYPE)
                        != Some(&HeaderValue::from_static("application/json"))
                {
                    too_large(limit).await
                } else {
                    resp
                }
            },
        ))
        .with_state(state);
    tracing::info!("education adapter: POST /v1/attendance");
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
    tracing::info!("education adapter stopped");
    Ok(())
}
