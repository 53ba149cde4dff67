//! The one way Ponte writes to Kafka: an idempotent producer with `acks=all` whose `publish`
//! returns only after the broker acknowledged the record (or failed for good).
//!
//! A delivery report goes to whoever waits for it: one message's sender ([`Ack::One`]), or a
//! batch's slot ([`Ack::Batch`], [`Publisher::publish_all`]) — a batch is enqueued in one go and
//! awaited once, instead of a future, a channel and a wake-up per record (an adapter's ingest
//! spent about a quarter of its CPU on those, docs/benchmarks.md).
//!
//! No sender waits for a report for ever: librdkafka reports every message within its
//! `message.timeout.ms`, yet after a broker restart reports were seen still missing 5 s past
//! it — a whole epoch's of the reconciler, an adapter's audit entry — and a sender waiting for
//! them waits with them (the likely end of one run of the system test `broker_restart`, whose
//! reconciler applied nothing more for three minutes). A report that late is given up
//! ([`overdue`]): the message counts as not acknowledged.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use futures::channel::oneshot;
use ponte_proto::events::v1::{DeadLetter, Event, event::Record};
use prost::Message as _;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message as _, OwnedHeaders, ToBytes};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use rdkafka::util::IntoOpaque;
use tokio::sync::Notify;

use crate::headers::EventHeaders;
use crate::{BusError, KafkaConfig};

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// How long a send waits before it tries again when the producer's local queue is full (it
/// drains as the broker acknowledges).
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

/// How long after a message's delivery report was due (its `message.timeout.ms`) it is
/// given up for ([`overdue`]).
const REPORT_GRACE: Duration = Duration::from_secs(5);

/// How long a sender waits for a delivery report with the client configuration `cfg`:
/// librdkafka reports every message within its `message.timeout.ms` (as failed, if nothing
/// else), so past that and [`REPORT_GRACE`] the report is overdue. Without a message timeout
/// (`0`, for ever) there is no bound either.
pub(crate) fn reports_within(cfg: &rdkafka::ClientConfig) -> Duration {
    match cfg
        .get("message.timeout.ms")
        .and_then(|v| v.parse::<u64>().ok())
    {
        // A century stands for "for ever" (a deadline must still be a point in time).
        Some(0) => Duration::from_secs(100 * 365 * 86_400),
        // librdkafka's default.
        None => Duration::from_millis(300_000) + REPORT_GRACE,
        Some(ms) => Duration::from_millis(ms) + REPORT_GRACE,
    }
}

/// A wait for delivery reports that ran out: `missing` of `sent` messages were never reported
/// `within` (a fault of the client library, which reports every message). Counted
/// (`ponte_bus_delivery_reports_overdue_total`) and logged; returns the error's text. The
/// sender fails what it waited for — an adapter answers 503, an epoch is aborted — instead of
/// waiting for ever: the messages may still be on the bus, and a retry is harmless.
pub(crate) fn overdue(
    producer: &'static str,
    missing: usize,
    sent: usize,
    within: Duration,
) -> String {
    metrics::counter!("ponte_bus_delivery_reports_overdue_total", "producer" => producer)
        .increment(missing as u64);
    let text = format!(
        "{missing} of {sent} messages had no delivery report after {:.1} s (their message \
         timeout passed): given up as not acknowledged",
        within.as_secs_f64()
    );
    tracing::warn!(producer, missing, sent, "{text}");
    text
}

/// Who waits for a message's delivery report.
enum Ack {
    /// The sender of this one message.
    One(oneshot::Sender<Result<Delivered, BusError>>),
    /// Slot `.1` of a batch.
    Batch(Arc<Batch>, usize),
}

/// The delivery reports of one [`Publisher::publish_all`] call, by slot.
struct Batch {
    reports: Mutex<Vec<Option<Result<Delivered, BusError>>>>,
    pending: AtomicUsize,
    all_reported: Notify,
}

impl Batch {
    fn new(n: usize) -> Self {
        Self {
            reports: Mutex::new((0..n).map(|_| None).collect()),
            pending: AtomicUsize::new(n),
            all_reported: Notify::new(),
        }
    }

    fn report(&self, slot: usize, outcome: Result<Delivered, BusError>) {
        {
            // A panic while holding the lock leaves a slot unset at worst: still readable.
            let mut reports = self
                .reports
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(r) = reports.get_mut(slot) {
                *r = Some(outcome);
            }
        }
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Stores a permit when the waiter is not waiting yet: no report is missed.
            self.all_reported.notify_one();
        }
    }

    /// Every slot's report, once all came or `within` from now: a slot still without one is
    /// `Unavailable` ([`overdue`]).
    async fn reported(&self, within: Duration) -> Vec<Result<Delivered, BusError>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut ran_out = false;
        while self.pending.load(Ordering::Acquire) > 0 {
            if tokio::time::timeout_at(deadline, self.all_reported.notified())
                .await
                .is_err()
            {
                ran_out = true;
                break;
            }
        }
        // Taken whole: a report that comes after this finds no slot.
        let reports = std::mem::take(
            &mut *self
                .reports
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let missing = reports.iter().filter(|r| r.is_none()).count();
        let why = if ran_out && missing > 0 {
            overdue("idempotent", missing, reports.len(), within)
        } else {
            "no delivery report for the message".to_owned()
        };
        reports
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(BusError::Unavailable(why.clone()))))
            .collect()
    }
}

/// The producer's context: hands each delivery report to its [`Ack`], and watches whether the
/// client still knows a broker ([`crate::brokers`]).
struct Acks {
    /// Labelled with the client id and `/idempotent`.
    brokers: crate::brokers::Watched,
}

impl ClientContext for Acks {
    fn stats(&self, mut statistics: rdkafka::Statistics) {
        self.brokers.report(&mut statistics);
    }
}

impl ProducerContext for Acks {
    type DeliveryOpaque = Box<Ack>;

    fn delivery(&self, result: &DeliveryResult<'_>, ack: Box<Ack>) {
        let outcome = match result {
            Ok(m) => Ok(Delivered {
                partition: m.partition(),
                offset: m.offset(),
            }),
            Err((e, _)) => Err(classify(e)),
        };
        match *ack {
            Ack::One(tx) => {
                // The sender may have stopped waiting (its request was dropped): nothing to do.
                let _ = tx.send(outcome);
            }
            Ack::Batch(batch, slot) => batch.report(slot, outcome),
        }
    }
}

/// One encoded message for [`Publisher::publish_all`].
#[derive(Debug)]
pub struct Outgoing {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: OwnedHeaders,
}

/// An idempotent, `acks=all` producer. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    /// The producer; replaced by a new one from `config` once it has known no broker for
    /// [`crate::brokers::LOST_AFTER`] (librdkafka never reconnects such a client).
    producer: Arc<RwLock<Arc<ThreadedProducer<Acks>>>>,
    config: Arc<rdkafka::ClientConfig>,
    source: String,
    /// How long a sender waits for a delivery report ([`overdue`]).
    reports_within: Duration,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("source", &self.source)
            .finish()
    }
}

/// A producer of `config` for service `source`.
fn create(
    config: &rdkafka::ClientConfig,
    source: &str,
) -> Result<ThreadedProducer<Acks>, BusError> {
    config
        .create_with_context(Acks {
            brokers: crate::brokers::Watched::new(&format!("ponte-{source}/idempotent"))?,
        })
        .map_err(|e| BusError::Config(e.to_string()))
}

/// Name of the `record` case, used as the `ponte-event-type` header.
pub fn event_type(event: &Event) -> &'static str {
    match &event.record {
        Some(Record::SchoolAttendance(_)) => "school_attendance",
        Some(Record::HealthFollowUp(_)) => "health_follow_up",
        Some(Record::PersonProfile(_)) => "person_profile",
        Some(Record::ScfvAttendance(_)) => "scfv_attendance",
        Some(Record::FamilyFollowUp(_)) => "family_follow_up",
        Some(Record::Appeal(_)) => "appeal",
        Some(Record::PersonErasure(_)) => "person_erasure",
        Some(Record::HouseholdProfile(_)) => "household_profile",
        Some(Record::HouseholdEvidence(_)) => "household_evidence",
        None => "none",
    }
}

/// An event as [`Publisher::publish_event`] sends it, for [`Publisher::publish_all`].
pub fn event_message(topic: &str, key: &str, event: &Event, trace_id: &str) -> Outgoing {
    Outgoing {
        topic: topic.to_owned(),
        key: key.to_owned(),
        payload: event.encode_to_vec(),
        headers: EventHeaders::kafka(
            event_type(event),
            ponte_proto::EVENTS_SCHEMA,
            &event.source_system,
            trace_id,
        ),
    }
}

/// A dead letter (keyed by its source system) as [`Publisher::publish_dead_letter`] sends it,
/// for [`Publisher::publish_all`].
pub fn dead_letter_message(topic: &str, letter: &DeadLetter, trace_id: &str) -> Outgoing {
    Outgoing {
        topic: topic.to_owned(),
        key: letter.source_system.clone(),
        payload: letter.encode_to_vec(),
        headers: EventHeaders::kafka(
            "dead_letter",
            ponte_proto::EVENTS_SCHEMA,
            &letter.source_system,
            trace_id,
        ),
    }
}

/// Protobuf timestamp for a point in time.
pub fn timestamp(t: SystemTime) -> ponte_proto::Timestamp {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    ponte_proto::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Classifies a producer error: can a later retry succeed?
pub fn classify(err: &KafkaError) -> BusError {
    let code = match err {
        KafkaError::MessageProduction(code) => Some(*code),
        KafkaError::Transaction(e) => Some(e.code()),
        _ => err.rdkafka_error_code(),
    };
    match code {
        Some(
            RDKafkaErrorCode::MessageTimedOut
            | RDKafkaErrorCode::QueueFull
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::NotEnoughReplicas
            | RDKafkaErrorCode::NotEnoughReplicasAfterAppend
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::NotLeaderForPartition
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::Resolve,
        ) => BusError::Unavailable(err.to_string()),
        _ => BusError::Rejected(err.to_string()),
    }
}

impl Publisher {
    /// Creates a producer for service `source` (also its Kafka client id) that waits up to
    /// 5 ms to fill a batch: records arrive in bursts (a request's records, a CSV chunk).
    pub fn new(kafka: &KafkaConfig, source: &str) -> Result<Self, BusError> {
        Self::with_linger(kafka, source, Duration::from_millis(5))
    }

    /// A producer that waits up to `linger` to fill a batch. One message at a time that a
    /// caller waits for (an audit entry before a read is answered) wants none: what queues
    /// while a request is in flight is still sent together.
    pub fn with_linger(
        kafka: &KafkaConfig,
        source: &str,
        linger: Duration,
    ) -> Result<Self, BusError> {
        let mut cfg = kafka.client_config(&format!("ponte-{source}"));
        cfg.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", linger.as_millis().to_string())
            .set("message.timeout.ms", kafka.message_timeout_ms.to_string())
            // Statistics only for whether the client still knows a broker.
            .set("statistics.interval.ms", "5000");
        let producer = create(&cfg, source)?;
        Ok(Self {
            producer: Arc::new(RwLock::new(Arc::new(producer))),
            reports_within: reports_within(&cfg),
            config: Arc::new(cfg),
            source: source.to_owned(),
        })
    }

    /// The producer, replaced first when it has known no broker for
    /// [`crate::brokers::LOST_AFTER`]: messages still with the old one are reported failed or
    /// overdue ([`overdue`]), and their senders answered `Unavailable`.
    fn current(&self) -> Arc<ThreadedProducer<Acks>> {
        let lost = |p: &ThreadedProducer<Acks>| {
            p.context()
                .brokers
                .lost(std::time::Instant::now())
                .is_some()
        };
        // Every send asks: a shared lock, taken exclusively only to replace.
        {
            let producer = self.producer.read().unwrap_or_else(PoisonError::into_inner);
            if !lost(&producer) {
                return Arc::clone(&producer);
            }
        }
        let mut producer = self
            .producer
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Another sender may have replaced it meanwhile.
        if lost(&producer) {
            match create(&self.config, &self.source) {
                Ok(fresh) => {
                    let client = producer.context().brokers.client().to_owned();
                    tracing::error!(
                        client,
                        "the producer has known no Kafka broker for a while and never will again: replaced"
                    );
                    crate::brokers::destroy_aside(std::mem::replace(
                        &mut *producer,
                        Arc::new(fresh),
                    ));
                    crate::brokers::replaced(&client);
                }
                Err(e) => tracing::error!(error = %e, "replacing a producer without brokers"),
            }
        }
        Arc::clone(&producer)
    }

    /// Asks the cluster for its metadata: `Ok` when a broker answers within `timeout`.
    pub fn check_connected(&self, timeout: Duration) -> Result<(), BusError> {
        self.current()
            .client()
            .fetch_metadata(None, timeout)
            .map(|_| ())
            .map_err(|e| BusError::Unavailable(e.to_string()))
    }

    /// Publishes one event to `topic` under `key` and waits for the broker's acknowledgement.
    pub async fn publish_event(
        &self,
        topic: &str,
        key: &str,
        event: &Event,
        trace_id: &str,
    ) -> Result<Delivered, BusError> {
        self.send(event_message(topic, key, event, trace_id)).await
    }

    /// Publishes a dead letter (keyed by its source system) and waits for the acknowledgement.
    pub async fn publish_dead_letter(
        &self,
        topic: &str,
        letter: &DeadLetter,
        trace_id: &str,
    ) -> Result<Delivered, BusError> {
        self.send(dead_letter_message(topic, letter, trace_id))
            .await
    }

    /// Publishes an already encoded payload (for example a view change) and waits for the
    /// acknowledgement.
    pub async fn publish_bytes(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        event_type: &str,
        trace_id: &str,
    ) -> Result<Delivered, BusError> {
        let headers =
            EventHeaders::kafka(event_type, "ponte.compliance.v1", &self.source, trace_id);
        self.send_one(topic, key, Some(payload), Some(headers), None)
            .await
    }

    /// Publishes a tombstone (a null payload) for `key`: on a compacted topic it deletes the key.
    pub async fn publish_tombstone(&self, topic: &str, key: &str) -> Result<Delivered, BusError> {
        self.send_one(topic, key, None, None, None).await
    }

    /// Publishes `payload` (a tombstone when `None`) under `key` to an explicit `partition`
    /// (for a changelog, whose partitions mirror the input partitions the state came from).
    pub async fn publish_to_partition(
        &self,
        topic: &str,
        partition: i32,
        key: &str,
        payload: Option<&[u8]>,
    ) -> Result<Delivered, BusError> {
        self.send_one(topic, key, payload, None, Some(partition))
            .await
    }

    async fn send(&self, m: Outgoing) -> Result<Delivered, BusError> {
        self.send_one(&m.topic, &m.key, Some(&m.payload), Some(m.headers), None)
            .await
    }

    /// Sends one message and waits for its acknowledgement. Waiting for queue space is bounded
    /// by the message timeout too (what fills the queue times out by then).
    async fn send_one(
        &self,
        topic: &str,
        key: &str,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
        partition: Option<i32>,
    ) -> Result<Delivered, BusError> {
        let (tx, rx) = oneshot::channel();
        let record = record(
            topic,
            key,
            payload,
            headers,
            partition,
            Box::new(Ack::One(tx)),
        );
        self.enqueue_waiting(record).await?;
        acknowledgement(rx, self.reports_within).await
    }

    /// Hands `record` to the producer, waiting while its local queue is full.
    async fn enqueue_waiting(
        &self,
        mut record: BaseRecord<'_, str, [u8], Box<Ack>>,
    ) -> Result<(), BusError> {
        let producer = self.current();
        loop {
            match producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err((e, _)) => return Err(classify(&e)),
            }
        }
    }

    /// Publishes `messages` in their order and waits until the broker acknowledged (or refused)
    /// every one: one delivery report each, in the same order. All are enqueued before the
    /// first is awaited, so they travel in as few produce requests as the producer makes; a
    /// message the producer refuses at once is reported so without holding up the others.
    pub async fn publish_all(&self, messages: Vec<Outgoing>) -> Vec<Result<Delivered, BusError>> {
        let batch = Arc::new(Batch::new(messages.len()));
        for (slot, m) in messages.into_iter().enumerate() {
            let Outgoing {
                topic,
                key,
                payload,
                headers,
            } = m;
            let ack = Box::new(Ack::Batch(Arc::clone(&batch), slot));
            let record = record(
                &topic,
                key.as_str(),
                Some(&payload),
                Some(headers),
                None,
                ack,
            );
            if let Err(e) = self.enqueue_waiting(record).await {
                batch.report(slot, Err(e));
            }
        }
        batch.reported(self.reports_within).await
    }

    /// Enqueues an encoded message now and returns a future of its acknowledgement. Messages
    /// enqueued one after another keep that order on their partition (the producer is
    /// idempotent) while their acknowledgements are awaited concurrently: what a hash chain
    /// written by concurrent requests needs. A full queue is refused at once (`Unavailable`).
    pub fn enqueue(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        event_type: &str,
        schema: &str,
    ) -> Result<
        impl std::future::Future<Output = Result<Delivered, BusError>> + Send + 'static,
        BusError,
    > {
        let headers = EventHeaders::kafka(event_type, schema, &self.source, "");
        let (tx, rx) = oneshot::channel();
        let record = record(
            topic,
            key,
            Some(payload),
            Some(headers),
            None,
            Box::new(Ack::One(tx)),
        );
        self.current().send(record).map_err(|(e, _)| classify(&e))?;
        Ok(acknowledgement(rx, self.reports_within))
    }

    /// Waits up to `timeout` for every in-flight record to be acknowledged (on shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        self.current().flush(timeout).map_err(|e| classify(&e))
    }
}

/// The report one message's sender waits for ([`Ack::One`]), `Unavailable` when it has not
/// come `within` ([`overdue`]).
async fn acknowledgement(
    rx: oneshot::Receiver<Result<Delivered, BusError>>,
    within: Duration,
) -> Result<Delivered, BusError> {
    match tokio::time::timeout(within, rx).await {
        Ok(report) => report
            .unwrap_or_else(|_| Err(BusError::Unavailable("the producer was dropped".to_owned()))),
        Err(_) => Err(BusError::Unavailable(overdue("idempotent", 1, 1, within))),
    }
}

/// A message for a producer (this one's or a transaction's): a tombstone when `payload` is
/// `None`, placed by key when `partition` is `None`; `opaque` comes back with its report.
pub(crate) fn record<'a, K: ToBytes + ?Sized, D: IntoOpaque>(
    topic: &'a str,
    key: &'a K,
    payload: Option<&'a [u8]>,
    headers: Option<OwnedHeaders>,
    partition: Option<i32>,
    opaque: D,
) -> BaseRecord<'a, K, [u8], D> {
    let mut record = BaseRecord::with_opaque_to(topic, opaque).key(key);
    if let Some(p) = payload {
        record = record.payload(p);
    }
    if let Some(h) = headers {
        record = record.headers(h);
    }
    if let Some(p) = partition {
        record = record.partition(p);
    }
    record
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Long enough for any report these tests send.
    const WITHIN: Duration = Duration::from_secs(60);

    fn at(offset: i64) -> Result<Delivered, BusError> {
        Ok(Delivered {
            partition: 0,
            offset,
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_answers_once_every_slot_is_reported_each_in_its_place() {
        let batch = Arc::new(Batch::new(3));
        let waiter = tokio::spawn({
            let batch = Arc::clone(&batch);
            async move { batch.reported(WITHIN).await }
        });
        // Reports arrive out of order; the waiter does not answer before the last.
        batch.report(2, at(7));
        batch.report(0, Err(BusError::Rejected("too large".into())));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "answered with a slot still unreported"
        );
        // The last comes from another thread, as the producer's poll thread delivers it.
        std::thread::spawn({
            let batch = Arc::clone(&batch);
            move || batch.report(1, at(5))
        })
        .join()
        .unwrap();
        let reports = waiter.await.unwrap();
        assert!(matches!(reports[0], Err(BusError::Rejected(_))));
        assert_eq!(reports[1].as_ref().unwrap().offset, 5);
        assert_eq!(reports[2].as_ref().unwrap().offset, 7);
    }

    #[tokio::test]
    async fn an_empty_batch_answers_at_once_and_reports_in_before_the_wait_are_kept() {
        assert!(Batch::new(0).reported(WITHIN).await.is_empty());
        // Every report in before the wait starts: it answers at once, in slot order.
        let batch = Batch::new(2);
        batch.report(1, at(1));
        batch.report(0, at(0));
        let reports = batch.reported(WITHIN).await;
        assert_eq!(
            reports
                .iter()
                .map(|r| r.as_ref().unwrap().offset)
                .collect::<Vec<_>>(),
            vec![0, 1]
        );
    }

    #[tokio::test]
    async fn a_report_that_never_comes_is_given_up_and_one_that_comes_later_goes_nowhere() {
        let batch = Batch::new(3);
        batch.report(0, at(0));
        batch.report(2, Err(BusError::Rejected("too large".into())));
        let reports = batch.reported(Duration::from_millis(50)).await;
        assert_eq!(reports[0].as_ref().unwrap().offset, 0);
        assert!(matches!(reports[2], Err(BusError::Rejected(_))));
        match &reports[1] {
            Err(BusError::Unavailable(why)) => {
                assert!(
                    why.contains("1 of 3 messages had no delivery report"),
                    "{why}"
                );
            }
            other => panic!("slot 1: {other:?}"),
        }
        // The producer reports it after all: nothing to answer any more, nothing breaks.
        batch.report(1, at(1));
    }

    #[tokio::test]
    async fn one_message_whose_report_never_comes_is_not_acknowledged() {
        let (tx, rx) = oneshot::channel::<Result<Delivered, BusError>>();
        let err = acknowledgement(rx, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, BusError::Unavailable(why) if why.contains("no delivery report")),
            "{err:?}"
        );
        assert!(err.is_retryable());
        drop(tx);
    }

    #[test]
    fn the_wait_for_a_report_follows_the_message_timeout() {
        let mut cfg = rdkafka::ClientConfig::new();
        cfg.set("message.timeout.ms", "3000");
        assert_eq!(reports_within(&cfg), Duration::from_secs(8));
        cfg.set("message.timeout.ms", "0");
        assert!(reports_within(&cfg) > Duration::from_secs(365 * 86_400));
    }
}
