//! Kafka plumbing shared by every Ponte service.
//!
//! - [`brokers`]: whether a client still knows a broker (librdkafka can lose them all).
//! - [`config`]: how to reach the cluster (bootstrap servers, client properties).
//! - [`topics`]: the topic catalogue — every topic Ponte uses, its key, partitions and cleanup
//!   policy — and [`topics::ensure`], which makes a cluster match it.
//! - [`publish`]: an idempotent, `acks=all` producer that returns only once the broker has
//!   acknowledged, with errors classified so adapters know whether to answer 4xx or 503.
//! - [`headers`]: the Kafka headers every Ponte event carries.
//! - [`partition`]: the partition librdkafka's default partitioner gives a key.
//! - [`transact`]: a transactional producer, for outputs committed with the offsets they came
//!   from (the reconciler's epochs).
//!
//! This crate knows the envelope (`ponte.events.v1.Event`) but never the meaning of a record.
pub mod brokers;
pub mod config;
pub mod consume;
pub mod headers;
pub mod ingest;
pub mod members;
pub mod partition;
pub mod publish;
pub mod topics;
pub mod transact;

pub use config::KafkaConfig;
pub use publish::{Delivered, Publisher};
pub use topics::{Topic, TopicsConfig};

/// Errors of the bus, classified by who is at fault and whether retrying can help.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The cluster cannot take the write now (brokers down, timed out, not enough replicas).
    /// Retrying later can succeed; adapters answer 503 with `Retry-After`.
    #[error("Kafka unavailable: {0}")]
    Unavailable(String),
    /// The cluster rejected the write for good (message too large, topic missing, not
    /// authorised). Retrying the same write will fail again; an operator must act.
    #[error("Kafka rejected the write: {0}")]
    Rejected(String),
    /// Ponte's own Kafka configuration is invalid.
    #[error("Kafka client configuration: {0}")]
    Config(String),
    /// An admin operation (topic creation, config change) failed.
    #[error("topic {topic}: {reason}")]
    Admin { topic: String, reason: String },
}

impl BusError {
    /// True when the same operation may succeed if retried later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, BusError::Unavailable(_))
    }

    /// Low-cardinality label for metrics.
    pub fn error_type(&self) -> &'static str {
        match self {
            BusError::Unavailable(_) => "unavailable",
            BusError::Rejected(_) => "rejected",
            BusError::Config(_) => "config",
            BusError::Admin { .. } => "admin",
        }
    }
}
