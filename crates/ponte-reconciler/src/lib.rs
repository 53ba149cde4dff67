//! The reconciliation service (`ponte reconciler`).
//!
//! Consumes the sector topics and its own repartition topics in a consumer group, applies each
//! event to the state of its partitions held in the embedded store ([`topology`]), publishes the
//! views on `compliance.changes.v1`, and serves them over gRPC
//! (`ponte.compliance.v1.ComplianceService`, with gRPC health and reflection) from the state it
//! holds: the views of the partitions it owns computed from it, those of the others asked of
//! the instances that own them ([`peers`], [`lists`]).
//!
//! Exactly once ([`epoch`]): consumed events are applied to an in-memory epoch over the
//! local state and committed as one Kafka transaction — the epoch's outputs, its state changes
//! on the changelog topic and its input offsets (for the group generation, so a member the group
//! has moved on from is refused) — and only then written to the local store, which keeps no
//! write-ahead log. On every assignment a partition's local state is brought up to its changelog
//! ([`restore`]): the tail its store had not flushed, what another instance wrote meanwhile, or
//! the whole partition on a new disk. A crash at any point therefore ends in the views an
//! uninterrupted run gives, every output published once.
pub mod config;
mod driver;
pub mod epoch;
mod gauges;
pub mod grpc;
mod lanes;
pub mod lists;
pub mod peers;
pub mod restore;
pub mod service;
pub mod topology;

pub use config::ReconcilerConfig;
pub use service::run;

/// How many times [`while_topic_settles`] tries before giving up, [`SETTLE_PAUSE`] apart.
pub(crate) const SETTLE_TRIES: u32 = 60;
/// The pause between two tries while a topic settles.
pub(crate) const SETTLE_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);

/// Runs `attempt` until it succeeds, every 500 ms for up to 30 s: right after a topic is
/// created its metadata, leaders and watermarks may not be there yet. `Ok(None)` when `stop`
/// says to give up early (shutdown); the last error, prefixed with `what`, after 30 s.
/// Blocking: call it off the async runtime.
pub(crate) fn while_topic_settles<T>(
    what: &str,
    stop: impl Fn() -> bool,
    mut attempt: impl FnMut() -> Result<T, String>,
) -> Result<Option<T>, ReconcilerError> {
    for tries in 0.. {
        if stop() {
            return Ok(None);
        }
        match attempt() {
            Ok(v) => return Ok(Some(v)),
            Err(e) if tries < SETTLE_TRIES => {
                tracing::info!(error = %e, "{what}: not ready yet; retrying");
                std::thread::sleep(SETTLE_PAUSE);
            }
            Err(e) => return Err(ReconcilerError::Startup(format!("{what}: {e}"))),
        }
    }
    unreachable!("the loop returns")
}

/// A startup error with `e`'s text.
pub(crate) fn startup(e: impl std::fmt::Display) -> ReconcilerError {
    ReconcilerError::Startup(e.to_string())
}

/// Errors of the reconciler.
#[derive(Debug, thiserror::Error)]
pub enum ReconcilerError {
    #[error(transparent)]
    Store(#[from] ponte_store::StoreError),
    #[error(transparent)]
    Bus(#[from] ponte_bus::BusError),
    #[error("stored value under {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("{0}")]
    Startup(String),
    /// The consumer cannot go on without skipping inputs: the loop stops, and a restart
    /// resumes at the committed offsets.
    #[error("{0}")]
    Consumer(String),
    /// A Kafka client of the consumer loop knows no broker any more and never will
    /// ([`ponte_bus::brokers`]): the loop stops and the service replaces its clients.
    #[error("{0}")]
    ClientLost(String),
    /// A record reached the state of another person or family: a bug in the topology.
    #[error("record applied to the wrong key: {0}")]
    Misrouted(String),
}
