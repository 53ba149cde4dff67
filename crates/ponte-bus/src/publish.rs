//! The one way Ponte writes to Kafka: an idempotent producer with `acks=all` whose `publish`
//! returns only after the broker acknowledged the record (or failed for good).
use std::time::{Duration, SystemTime};

use ponte_proto::events::v1::{DeadLetter, Event, event::Record};
use prost::Message as _;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;

use crate::headers::EventHeaders;
use crate::{BusError, KafkaConfig};

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// An idempotent, `acks=all` producer. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    source: String,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("source", &self.source)
            .finish()
    }
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
        let producer: FutureProducer = kafka
            .client_config(&format!("ponte-{source}"))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", linger.as_millis().to_string())
            .set("message.timeout.ms", kafka.message_timeout_ms.to_string())
            .create()
            .map_err(|e| BusError::Config(e.to_string()))?;
        Ok(Self {
            producer,
            source: source.to_owned(),
        })
    }

    /// Asks the cluster for its metadata: `Ok` when a broker answers within `timeout`.
    pub fn check_connected(&self, timeout: Duration) -> Result<(), BusError> {
        self.producer
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
        let headers = EventHeaders {
            event_type: event_type(event).to_owned(),
            schema: ponte_proto::EVENTS_SCHEMA.to_owned(),
            source: event.source_system.clone(),
            trace_id: trace_id.to_owned(),
        };
        self.send(topic, key, &event.encode_to_vec(), headers).await
    }

    /// Publishes a dead letter (keyed by its source system) and waits for the acknowledgement.
    pub async fn publish_dead_letter(
        &self,
        topic: &str,
        letter: &DeadLetter,
        trace_id: &str,
    ) -> Result<Delivered, BusError> {
        let headers = EventHeaders {
            event_type: "dead_letter".to_owned(),
            schema: ponte_proto::EVENTS_SCHEMA.to_owned(),
            source: letter.source_system.clone(),
            trace_id: trace_id.to_owned(),
        };
        self.send(
            topic,
            &letter.source_system,
            &letter.encode_to_vec(),
            headers,
        )
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
        let headers = EventHeaders {
            event_type: event_type.to_owned(),
            schema: "ponte.compliance.v1".to_owned(),
            source: self.source.clone(),
            trace_id: trace_id.to_owned(),
        };
        self.send(topic, key, payload, headers).await
    }

    /// Publishes a tombstone (a null payload) for `key`: on a compacted topic it deletes the key.
    pub async fn publish_tombstone(&self, topic: &str, key: &str) -> Result<Delivered, BusError> {
        let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(key);
        match self.producer.send(record, Timeout::Never).await {
            Ok(d) => Ok(Delivered {
                partition: d.partition,
                offset: d.offset,
            }),
            Err((err, _)) => Err(classify(&err)),
        }
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
        let mut record: FutureRecord<'_, str, [u8]> =
            FutureRecord::to(topic).key(key).partition(partition);
        if let Some(p) = payload {
            record = record.payload(p);
        }
        match self.producer.send(record, Timeout::Never).await {
            Ok(d) => Ok(Delivered {
                partition: d.partition,
                offset: d.offset,
            }),
            Err((err, _)) => Err(classify(&err)),
        }
    }

    async fn send(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: EventHeaders,
    ) -> Result<Delivered, BusError> {
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(headers.to_kafka());
        // Waiting for queue space is bounded by the message timeout too.
        match self.producer.send(record, Timeout::Never).await {
            Ok(d) => Ok(Delivered {
                partition: d.partition,
                offset: d.offset,
            }),
            Err((err, _)) => Err(classify(&err)),
        }
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
        let headers = EventHeaders {
            event_type: event_type.to_owned(),
            schema: schema.to_owned(),
            source: self.source.clone(),
            trace_id: String::new(),
        };
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(headers.to_kafka());
        let delivery = self
            .producer
            .send_result(record)
            .map_err(|(err, _)| classify(&err))?;
        Ok(async move {
            match delivery.await {
                Ok(Ok(d)) => Ok(Delivered {
                    partition: d.partition,
                    offset: d.offset,
                }),
                Ok(Err((err, _))) => Err(classify(&err)),
                Err(_) => Err(BusError::Unavailable("the producer was dropped".to_owned())),
            }
        })
    }

    /// Waits up to `timeout` for every in-flight record to be acknowledged (on shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        self.producer.flush(timeout).map_err(|e| classify(&e))
    }
}
