//! A transactional producer: everything sent between [`Transactional::begin`] and
//! [`Transactional::commit`] — to any topic and partition, consumed offsets included — becomes
//! visible to `read_committed` consumers at once, or never.
//!
//! The offsets are committed for the consumer group with the group's generation (Kafka's
//! KIP-447): a member the group has moved on from — stalled past its session or poll interval,
//! its partitions handed to another member — gets its commit refused and the transaction
//! aborted, so it cannot write over what the new owner restored. A transaction left open by a
//! crashed or stalled process is aborted by the broker after `transaction.timeout.ms`, or at
//! once when a process starts with the same transactional id.
use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::topic_partition_list::TopicPartitionList;

use crate::KafkaConfig;

/// Why a transaction did not commit.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    /// The transaction was aborted (or must be: see [`Transactional::abort`]); nothing of it is
    /// visible. The producer can run the next one. Typical causes: a send the broker refused,
    /// a timeout, or an offset commit refused because the group has moved on (`fenced`).
    #[error("transaction aborted: {reason}")]
    Aborted { reason: String, fenced: bool },
    /// The producer cannot go on (another producer took its transactional id, or the broker
    /// timed the transaction out and bumped its epoch: `fenced`): it must be created anew.
    #[error("transactional producer failed for good: {reason}")]
    Fatal { reason: String, fenced: bool },
}

impl TxError {
    pub fn aborted(reason: impl Into<String>) -> Self {
        Self::Aborted {
            reason: reason.into(),
            fenced: false,
        }
    }

    pub fn fatal(reason: impl Into<String>) -> Self {
        Self::Fatal {
            reason: reason.into(),
            fenced: false,
        }
    }

    /// Classifies a producer error of operation `what`.
    pub fn of(what: &str, e: &KafkaError) -> Self {
        use rdkafka::types::RDKafkaErrorCode as C;
        let code = match e {
            KafkaError::Transaction(t) => Some(t.code()),
            other => other.rdkafka_error_code(),
        };
        // Refusals that mean another member or producer has taken over: the group's
        // generation moved on, the member was removed or replaced, or the producer's epoch
        // was bumped (its transaction timed out, or its id was registered again).
        let fenced = matches!(
            code,
            Some(
                C::IllegalGeneration
                    | C::UnknownMemberId
                    | C::FencedInstanceId
                    | C::InvalidProducerEpoch
                    | C::ProducerFenced
                    | C::Fenced
            )
        );
        let reason = format!("{what}: {e}");
        match e {
            KafkaError::Transaction(t) if t.is_fatal() => Self::Fatal { reason, fenced },
            _ => Self::Aborted { reason, fenced },
        }
    }

    /// True when the group or the transaction coordinator refused this producer because another
    /// member or producer has taken over.
    pub fn is_fenced(&self) -> bool {
        match self {
            Self::Aborted { fenced, .. } | Self::Fatal { fenced, .. } => *fenced,
        }
    }

    /// True when the producer must be replaced.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Fatal { .. })
    }
}

/// One transactional producer (one transactional id).
pub struct Transactional {
    producer: FutureProducer,
    id: String,
    timeout: Duration,
}

impl std::fmt::Debug for Transactional {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transactional")
            .field("id", &self.id)
            .finish()
    }
}

impl Transactional {
    /// Creates the producer and registers `transactional_id` with the coordinator, which aborts
    /// a transaction the id's previous holder left open. Blocks up to `op_timeout`.
    /// `transaction_timeout` bounds how long a transaction may stay open before the broker
    /// aborts it.
    pub fn new(
        kafka: &KafkaConfig,
        client_id: &str,
        transactional_id: &str,
        transaction_timeout: Duration,
        op_timeout: Duration,
    ) -> Result<Self, TxError> {
        let txn_ms = transaction_timeout.as_millis().max(1000);
        // librdkafka refuses a message timeout above the transaction's.
        let msg_ms = u128::from(kafka.message_timeout_ms).min(txn_ms);
        let mut cfg = kafka.client_config(client_id);
        cfg.set("transactional.id", transactional_id)
            .set("transaction.timeout.ms", txn_ms.to_string())
            .set("message.timeout.ms", msg_ms.to_string())
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            .set("batch.size", (1 << 20).to_string());
        for (k, v) in &kafka.properties {
            cfg.set(k, v);
        }
        let producer: FutureProducer = cfg
            .create()
            .map_err(|e| TxError::fatal(format!("creating the producer: {e}")))?;
        producer
            .init_transactions(op_timeout)
            .map_err(|e| TxError::of("init_transactions", &e))?;
        Ok(Self {
            producer,
            id: transactional_id.to_owned(),
            timeout: op_timeout,
        })
    }

    /// The transactional id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Starts a transaction.
    pub fn begin(&self) -> Result<(), TxError> {
        self.producer
            .begin_transaction()
            .map_err(|e| TxError::of("begin_transaction", &e))
    }

    /// Queues one message of the open transaction (to `partition`, or by key when `None`; a
    /// tombstone when `payload` is `None`). Its future resolves when the broker has it — not
    /// yet visible: that takes the commit.
    pub fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> Result<DeliveryFuture, TxError> {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).key(key);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if let Some(p) = payload {
            record = record.payload(p);
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        // A full local queue is waited out (it drains as the broker acknowledges), bounded by
        // the operation timeout.
        let deadline = std::time::Instant::now() + self.timeout;
        loop {
            match self.producer.send_result(record) {
                Ok(f) => return Ok(f),
                Err((KafkaError::MessageProduction(code), r))
                    if code == rdkafka::types::RDKafkaErrorCode::QueueFull
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                    record = r;
                }
                Err((e, _)) => return Err(TxError::of("send", &e)),
            }
        }
    }

    /// Adds the consumed `offsets` (next offsets to read) to the transaction, for the group
    /// and generation in `group`.
    pub fn send_offsets(
        &self,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
    ) -> Result<(), TxError> {
        self.producer
            .send_offsets_to_transaction(offsets, group, self.timeout)
            .map_err(|e| TxError::of("send_offsets_to_transaction", &e))
    }

    /// Commits the open transaction. On an error it is aborted here when it can be; a
    /// [`TxError::Fatal`] producer must be replaced.
    pub fn commit(&self) -> Result<(), TxError> {
        let mut attempts = 0;
        loop {
            match self.producer.commit_transaction(self.timeout) {
                Ok(()) => return Ok(()),
                Err(KafkaError::Transaction(t)) if t.is_retriable() && attempts < 3 => {
                    attempts += 1;
                }
                Err(e) => {
                    let err = TxError::of("commit_transaction", &e);
                    if !err.is_fatal() {
                        self.abort();
                    }
                    return Err(err);
                }
            }
        }
    }

    /// Aborts the open transaction, if any (best effort: a producer that cannot abort is
    /// fenced or failed, and its transaction is aborted by the broker).
    pub fn abort(&self) {
        if let Err(e) = self.producer.abort_transaction(self.timeout) {
            tracing::debug!(error = %e, "abort_transaction");
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::types::RDKafkaErrorCode as C;

    use super::*;

    #[test]
    fn refusals_of_a_member_or_producer_taken_over_are_fenced_and_others_are_not() {
        for code in [
            C::IllegalGeneration,
            C::UnknownMemberId,
            C::FencedInstanceId,
            C::InvalidProducerEpoch,
            C::ProducerFenced,
            C::Fenced,
        ] {
            let e = TxError::of("send", &KafkaError::MessageProduction(code));
            assert!(e.is_fenced(), "{code:?}");
            assert!(
                !e.is_fatal(),
                "a send error aborts the transaction, {code:?}"
            );
        }
        for code in [C::QueueFull, C::MessageTimedOut, C::NotEnoughReplicas] {
            let e = TxError::of("send", &KafkaError::MessageProduction(code));
            assert!(!e.is_fenced(), "{code:?}");
        }
        assert!(TxError::fatal("gone").is_fatal());
        assert!(!TxError::aborted("timed out").is_fenced());
    }
}
