//! The HTTP service: `POST /v1/attendance` with one JSON record or a JSON array of records.
//!
//! Answers (JSON, always with `accepted` and `rejected`):
//! - `200` every valid record is acknowledged by the broker; invalid ones (if any) are listed
//!   with position, field and reason and are on the dead-letter topic.
//! - `422` nothing was valid; every record is listed and dead-lettered.
//! - `400` the body is not JSON at all; it is dead-lettered whole.
//! - `413` the body is larger than `max_body_bytes`.
//! - `503` + `Retry-After` the broker could not acknowledge; send the same body again (records
//!   carry stable ids and versions, so a repeat is harmless downstream).
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use ponte_bus::ingest::{Accepted, Ingestor, Item, Rejected, Rejection};
use ponte_bus::{BusError, KafkaConfig, Publisher, Topic, TopicsConfig};
use ponte_runtime::Readiness;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use crate::record::{AttendanceInput, RecordError, ValidRecord, validate};

const ADAPTER: &str = "education";

/// The `[education_adapter]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EducationAdapterConfig {
    /// Address of the ingest API, e.g. `127.0.0.1:8081`.
    pub listen: String,
    /// Address of the admin endpoint (metrics, health).
    pub admin_listen: String,
    /// Name written as the events' source system and into record ids.
    pub source_system: String,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Seconds a client is told to wait before retrying when the broker is unavailable.
    pub retry_after_secs: u64,
    /// Most records of one request waiting for the broker's acknowledgement at once.
    pub max_in_flight: usize,
}

#[derive(Debug)]
struct AppState {
    ingestor: Ingestor,
    records_topic: String,
    source_system: String,
    retry_after_secs: u64,
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

/// Splits a body into records, keeping each record's original bytes.
fn split(body: &[u8]) -> Result<Vec<Box<RawValue>>, serde_json::Error> {
    if is_array(body) {
        serde_json::from_slice::<Vec<Box<RawValue>>>(body)
    } else {
        serde_json::from_slice::<Box<RawValue>>(body).map(|r| vec![r])
    }
}

fn is_array(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

fn trace_id(headers: &HeaderMap) -> String {
    headers
        .get("x-trace-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 64)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

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

async fn ingest(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let now = SystemTime::now();
    let trace = trace_id(&headers);

    let (items, malformed_body) = match split(&body) {
        Ok(raws) => {
            let single = !is_array(&body);
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
                        .and_then(|input| validate(&input, &state.source_system, now));
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

    match state.ingestor.ingest(items, &trace, now).await {
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
        Err(failure) => unavailable(&state, &failure.error),
    }
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
pub async fn run(
    cfg: &EducationAdapterConfig,
    kafka: &KafkaConfig,
    topics: &TopicsConfig,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let publisher = Publisher::new(kafka, &cfg.source_system)?;
    let state = Arc::new(AppState {
        ingestor: Ingestor::new(
            publisher.clone(),
            ADAPTER,
            &cfg.source_system,
            &topics.name(Topic::DeadLetter),
            cfg.max_in_flight,
        ),
        records_topic: topics.name(Topic::EducationAttendance),
        source_system: cfg.source_system.clone(),
        retry_after_secs: cfg.retry_after_secs,
    });

    // Readiness follows the broker: a load balancer should not send pushes we cannot store.
    let probe = publisher.clone();
    let ready = readiness.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let p = probe.clone();
            let res =
                tokio::task::spawn_blocking(move || p.check_connected(Duration::from_secs(3)))
                    .await;
            match res {
                Ok(Ok(())) => ready.set_ready(),
                Ok(Err(e)) => ready.set_not_ready(format!("broker: {e}")),
                Err(e) => ready.set_not_ready(format!("probe: {e}")),
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    });

    let limit = cfg.max_body_bytes;
    let app = Router::new()
        .route("/v1/attendance", post(ingest))
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
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| format!("binding {}: {e}", cfg.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "education adapter listening (POST /v1/attendance)");
    let stop = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
    readiness.set_not_ready("shutting down");
    let p = publisher.clone();
    tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(10))).await??;
    tracing::info!("education adapter stopped");
    Ok(())
}
