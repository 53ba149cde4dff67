//! The publishing half of every adapter: given the records of one request (or one chunk of a
//! streamed file), already parsed and validated by the adapter, publish the valid ones to
//! their topics and the invalid ones to the dead-letter topic, and report — only after the
//! broker acknowledged every one of them.
//!
//! The contract every adapter answers by:
//! - `Ok(report)`: every valid record is durable on the bus, every invalid one is durable on
//!   the dead-letter topic with its original bytes and reason. The adapter answers 2xx (or 4xx
//!   when nothing was valid).
//! - `Err(failure)`: the bus did not acknowledge something. Nothing in the batch may be
//!   reported as stored; the adapter answers 503 (retryable) or 500. Records carry stable ids
//!   and versions, so the client re-sending the whole batch is harmless downstream.
//!
//! Metrics (label `adapter`): `ponte_adapter_records_received_total`,
//! `ponte_adapter_records_accepted_total`, `ponte_adapter_records_rejected_total{reason}`,
//! `ponte_adapter_publish_failures_total{error_type}`, `ponte_adapter_in_flight_records`,
//! `ponte_adapter_publish_latency_seconds`.
use std::time::{Instant, SystemTime};

use ponte_proto::events::v1::{DeadLetter, Event};

use crate::publish::{dead_letter_message, event_message, timestamp};
use crate::{BusError, Delivered, Publisher};

/// A valid record, mapped to its event, with where it goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// Full topic name.
    pub topic: String,
    /// Kafka key (NIS, CNS/CPF or family id).
    pub key: String,
    pub event: Event,
}

/// An invalid record: where it was, what failed, and its bytes as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// `body`, `line 17`, `record 3`, `entry 2`…
    pub position: String,
    /// The field at fault, or `record` when the record as a whole is malformed.
    pub field: String,
    /// Low-cardinality class: `malformed`, `invalid_identifier`, `invalid_period`,
    /// `invalid_value`, `unsupported`.
    pub error_type: String,
    /// What rule failed, for a person to act on.
    pub reason: String,
    /// The record's original bytes.
    pub original: Vec<u8>,
    /// Media type of `original`.
    pub content_type: String,
}

/// One record of a batch, valid or not.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // most records are valid; boxing them costs more
pub enum Item {
    Accepted(Accepted),
    Rejected(Rejected),
}

/// Who sent a batch and in which request: named by every dead letter of it and stamped on
/// every event of it (`Event.sender`, `Event.request_id`), so each record in the view can be
/// traced to the principal and the request that brought it.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The source system the records are from (from the access policy).
    pub source_system: &'a str,
    /// The authenticated principal that sent them, or `pull:<source system>`.
    pub sender: &'a str,
    /// The id of the request (or pull) that carried them.
    pub request_id: &'a str,
    /// The caller's trace id (logs and Kafka headers).
    pub trace_id: &'a str,
    /// What was called: `POST /v1/attendance`, or what a pull fetched.
    pub endpoint: &'a str,
}

/// Records a write in the audit log once every record of it is acknowledged (ponte-audit's
/// `Auditor` implements it; the bus does not depend on it).
pub trait WriteAudit: Send + Sync + std::fmt::Debug {
    /// The write of `origin`: `accepted` records with `record_ids`, `rejected` dead-lettered.
    fn write<'a>(
        &'a self,
        origin: &'a Origin<'a>,
        accepted: usize,
        rejected: usize,
        record_ids: &'a [String],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BusError>> + Send + 'a>>;
}

/// What a request's answer lists about one rejected record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejection {
    pub position: String,
    pub field: String,
    pub error_type: String,
    pub reason: String,
}

/// Every record of the batch is durable (valid ones on their topics, invalid ones as dead
/// letters).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IngestReport {
    pub accepted: usize,
    pub rejected: Vec<Rejection>,
}

impl IngestReport {
    /// Adds another chunk's report (streamed files are ingested chunk by chunk).
    pub fn absorb(&mut self, other: IngestReport) {
        self.accepted += other.accepted;
        self.rejected.extend(other.rejected);
    }
}

/// The bus did not acknowledge part of the batch.
#[derive(Debug)]
pub struct IngestFailure {
    /// Records acknowledged before the failure (informational: the batch must be re-sent).
    pub acknowledged: usize,
    pub error: BusError,
}

/// The largest original kept in a dead letter by default, in bytes: well under the broker's
/// default 1 MiB message limit, so that a dead letter is always publishable.
pub const DEFAULT_MAX_DEAD_LETTER_ORIGINAL_BYTES: usize = 256 * 1024;

/// Publishes validated batches for one adapter.
#[derive(Debug, Clone)]
pub struct Ingestor {
    publisher: Publisher,
    adapter: &'static str,
    deadletter_topic: String,
    max_in_flight: usize,
    max_original_bytes: usize,
    audit: Option<std::sync::Arc<dyn WriteAudit>>,
}

impl Ingestor {
    /// `adapter` is the metrics label (`education`, `health`, `assistance`); `max_in_flight`
    /// bounds unacknowledged records (memory). Dead letters keep at most
    /// [`DEFAULT_MAX_DEAD_LETTER_ORIGINAL_BYTES`] of an original (see
    /// [`Ingestor::with_max_original_bytes`]).
    pub fn new(
        publisher: Publisher,
        adapter: &'static str,
        deadletter_topic: &str,
        max_in_flight: usize,
    ) -> Self {
        Self {
            publisher,
            adapter,
            deadletter_topic: deadletter_topic.to_owned(),
            max_in_flight: max_in_flight.max(1),
            max_original_bytes: DEFAULT_MAX_DEAD_LETTER_ORIGINAL_BYTES,
            audit: None,
        }
    }

    /// Every batch is recorded in `audit` once all its records are acknowledged, and reported
    /// stored only once that record is acknowledged too: no write is answered 2xx without its
    /// audit entry, and none is in the log that is not on the bus.
    pub fn with_audit(mut self, audit: std::sync::Arc<dyn WriteAudit>) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Dead letters keep at most the first `max` bytes of an original; the reason says how
    /// many there were. A larger original than the broker's message limit could never be
    /// dead-lettered, and the client would get 5xx on every retry.
    pub fn with_max_original_bytes(mut self, max: usize) -> Self {
        self.max_original_bytes = max.max(1);
        self
    }

    /// The underlying publisher (for readiness probes and shutdown flushes).
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    fn dead_letter(&self, origin: &Origin<'_>, r: &Rejected, received: SystemTime) -> DeadLetter {
        let mut reason = format!("{}: {}", r.field, r.reason);
        let original = if r.original.len() > self.max_original_bytes {
            reason.push_str(&format!(
                " (original of {} bytes; its first {} kept)",
                r.original.len(),
                self.max_original_bytes
            ));
            r.original[..self.max_original_bytes].to_vec()
        } else {
            r.original.clone()
        };
        DeadLetter {
            source_system: origin.source_system.to_owned(),
            sender: origin.sender.to_owned(),
            request_id: origin.request_id.to_owned(),
            reason,
            error_type: r.error_type.clone(),
            field: r.field.clone(),
            position: r.position.clone(),
            original,
            content_type: r.content_type.clone(),
            received_time: Some(timestamp(received)),
            // Rejected before it became an event: no record id yet.
            record_id: String::new(),
        }
    }

    /// Publishes a batch from `origin` (every event stamped with its sender and request id,
    /// every dead letter naming them); see the module documentation for the contract.
    pub async fn ingest(
        &self,
        origin: &Origin<'_>,
        items: Vec<Item>,
        received: SystemTime,
    ) -> Result<IngestReport, IngestFailure> {
        let adapter = self.adapter;
        let trace_id = origin.trace_id;
        let total = items.len();
        let started = Instant::now();
        metrics::counter!("ponte_adapter_records_received_total", "adapter" => adapter)
            .increment(total as u64);
        metrics::gauge!("ponte_adapter_in_flight_records", "adapter" => adapter)
            .increment(total as f64);

        let record_ids: Vec<String> = match &self.audit {
            Some(_) => items
                .iter()
                .filter_map(|i| match i {
                    Item::Accepted(a) => Some(a.event.record_id.clone()),
                    Item::Rejected(_) => None,
                })
                .collect(),
            None => Vec::new(),
        };
        // Published in windows of `max_in_flight` records, each enqueued whole and then awaited
        // ([`Publisher::publish_all`]): at most that many unacknowledged at once.
        let mut rejected = Vec::new();
        let mut results: Vec<(bool, Result<Delivered, BusError>)> = Vec::with_capacity(total);
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            let mut window = Vec::with_capacity(self.max_in_flight.min(total));
            let mut valid = Vec::with_capacity(window.capacity());
            for item in items.by_ref().take(self.max_in_flight) {
                match item {
                    Item::Accepted(mut a) => {
                        a.event.sender = origin.sender.to_owned();
                        a.event.request_id = origin.request_id.to_owned();
                        window.push(event_message(&a.topic, &a.key, &a.event, trace_id));
                        valid.push(true);
                    }
                    Item::Rejected(r) => {
                        window.push(dead_letter_message(
                            &self.deadletter_topic,
                            &self.dead_letter(origin, &r, received),
                            trace_id,
                        ));
                        rejected.push(Rejection {
                            position: r.position,
                            field: r.field,
                            error_type: r.error_type,
                            reason: r.reason,
                        });
                        valid.push(false);
                    }
                }
            }
            let reports = self.publisher.publish_all(window).await;
            results.extend(valid.into_iter().zip(reports));
        }

        metrics::gauge!("ponte_adapter_in_flight_records", "adapter" => adapter)
            .decrement(total as f64);
        metrics::histogram!("ponte_adapter_publish_latency_seconds", "adapter" => adapter)
            .record(started.elapsed().as_secs_f64());

        let accepted = results.iter().filter(|(v, r)| *v && r.is_ok()).count();
        let acknowledged = results.iter().filter(|(_, r)| r.is_ok()).count();
        if let Some(error) = results.into_iter().find_map(|(_, r)| r.err()) {
            metrics::counter!("ponte_adapter_publish_failures_total", "adapter" => adapter, "error_type" => error.error_type()).increment(1);
            tracing::warn!(%error, acknowledged, total, adapter, "batch not fully acknowledged");
            return Err(IngestFailure {
                acknowledged,
                error,
            });
        }
        if let Some(audit) = &self.audit
            && let Err(error) = audit
                .write(origin, accepted, rejected.len(), &record_ids)
                .await
        {
            metrics::counter!("ponte_adapter_publish_failures_total", "adapter" => adapter, "error_type" => "audit").increment(1);
            tracing::warn!(%error, acknowledged, total, adapter, "batch stored but its audit entry was not: not reported stored");
            return Err(IngestFailure {
                acknowledged,
                error,
            });
        }
        metrics::counter!("ponte_adapter_records_accepted_total", "adapter" => adapter)
            .increment(accepted as u64);
        for r in &rejected {
            metrics::counter!("ponte_adapter_records_rejected_total", "adapter" => adapter, "reason" => r.error_type.clone()).increment(1);
        }
        tracing::info!(
            accepted,
            rejected = rejected.len(),
            trace_id,
            adapter,
            "batch ingested"
        );
        Ok(IngestReport { accepted, rejected })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::KafkaConfig;

    fn rejected(original: Vec<u8>) -> Rejected {
        Rejected {
            position: "body".into(),
            field: "record".into(),
            error_type: "malformed".into(),
            reason: "body is not JSON".into(),
            original,
            content_type: "application/json".into(),
        }
    }

    #[test]
    fn a_dead_letter_keeps_at_most_the_cap_and_says_so() {
        // Creating a producer does not connect: nothing is sent here.
        let kafka = KafkaConfig {
            bootstrap_servers: "127.0.0.1:1".into(),
            message_timeout_ms: 1000,
            properties: Default::default(),
        };
        let ingestor = Ingestor::new(Publisher::new(&kafka, "test").unwrap(), "t", "dl", 1)
            .with_max_original_bytes(10);
        let origin = |source_system| Origin {
            source_system,
            sender: "urn:ponte:principal:a-school-system",
            request_id: "r-1",
            trace_id: "t-1",
            endpoint: "POST /v1/attendance",
        };
        let small = ingestor.dead_letter(
            &origin("education"),
            &rejected(b"0123456789".to_vec()),
            SystemTime::now(),
        );
        assert_eq!(small.original, b"0123456789");
        assert_eq!(small.reason, "record: body is not JSON");
        assert_eq!(small.source_system, "education");
        assert_eq!(
            (small.sender.as_str(), small.request_id.as_str()),
            ("urn:ponte:principal:a-school-system", "r-1"),
            "a dead letter names who sent it and in which request"
        );

        let big = ingestor.dead_letter(
            &origin("health"),
            &rejected(vec![b'x'; 16 << 20]),
            SystemTime::now(),
        );
        assert_eq!(big.original, b"xxxxxxxxxx");
        assert!(
            big.reason
                .ends_with("(original of 16777216 bytes; its first 10 kept)"),
            "{}",
            big.reason
        );
        assert_eq!(big.source_system, "health");
    }
}
