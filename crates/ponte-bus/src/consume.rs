//! Group consumers whose positions come from the consuming service's own state store.
//!
//! A stateful service stores the next offset of every partition in the same atomic write as
//! the state it derived from the records (see `ponte-store`). On every partition assignment the
//! [`SeekingContext`] asks that store where to start, so the consumer resumes exactly where the
//! state stops. A partition the store has never seen starts from the beginning — never from the
//! group's committed offset, which may be ahead of a store that was lost or replaced. Offsets are
//! also committed to Kafka, asynchronously, only so that operators' lag tools see progress.
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, Consumer as _, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use crate::{BusError, KafkaConfig};

/// Where a consumer should resume: the next offset to read for a partition, or `None` when the
/// store holds nothing from it.
pub trait OffsetSource: Send + Sync + 'static {
    /// Called once per assignment, before any [`OffsetSource::next_offset`] of it, with every
    /// newly assigned partition: a stateful service checks here that its local state of those
    /// partitions is current and restores it when it is not (it runs inside the rebalance, so
    /// no record of the partitions is delivered before it returns).
    fn prepare(&self, _assigned: &[(String, i32)]) -> Result<(), String> {
        Ok(())
    }

    fn next_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, String>;
}

/// The partitions a consumer currently owns, readable from other tasks (health, metrics).
#[derive(Debug, Clone, Default)]
pub struct Assignment {
    inner: Arc<Mutex<BTreeSet<(String, i32)>>>,
    generation: Arc<std::sync::atomic::AtomicU64>,
    failure: Arc<Mutex<Option<String>>>,
}

impl Assignment {
    /// Changes on every assignment and revocation: work derived from records consumed under an
    /// older generation may belong to partitions this consumer no longer owns.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Why the last assignment could not be prepared, if it could not: the partitions were
    /// not taken and the service should stop (and be restarted) rather than run without them.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|g| g.clone())
    }

    fn bump(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// The distinct partition numbers owned (of any topic).
    pub fn partition_numbers(&self) -> BTreeSet<i32> {
        self.inner
            .lock()
            .map(|g| g.iter().map(|(_, p)| *p).collect())
            .unwrap_or_default()
    }

    /// A snapshot of the owned partitions.
    pub fn partitions(&self) -> Vec<(String, i32)> {
        self.inner
            .lock()
            .map(|g| g.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn replace(&self, parts: impl IntoIterator<Item = (String, i32)>) {
        if let Ok(mut g) = self.inner.lock() {
            g.clear();
            g.extend(parts);
        }
    }

    fn add(&self, parts: impl IntoIterator<Item = (String, i32)>) {
        if let Ok(mut g) = self.inner.lock() {
            g.extend(parts);
        }
    }

    fn remove(&self, parts: &[(String, i32)]) {
        if let Ok(mut g) = self.inner.lock() {
            for p in parts {
                g.remove(p);
            }
        }
    }
}

/// Consumer context that positions every newly assigned partition from an [`OffsetSource`].
pub struct SeekingContext {
    offsets: Arc<dyn OffsetSource>,
    assignment: Assignment,
    group: String,
}

impl std::fmt::Debug for SeekingContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeekingContext")
            .field("group", &self.group)
            .finish()
    }
}

impl ClientContext for SeekingContext {
    /// librdkafka's statistics (every `statistics.interval.ms`): the consumer lag of every
    /// owned partition, from the broker's high watermark and this consumer's position.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in statistics.topics {
            for (partition, p) in t.partitions {
                // -1 for partitions this consumer does not fetch; the internal partition is -1.
                if partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                metrics::gauge!(
                    "ponte_consumer_lag",
                    "group" => self.group.clone(),
                    "topic" => topic.clone(),
                    "partition" => partition.to_string()
                )
                .set(p.consumer_lag as f64);
            }
        }
    }
}

fn list(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl ConsumerContext for SeekingContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let parts = list(tpl);
                self.assignment.bump();
                if let Err(e) = self.offsets.prepare(&parts) {
                    // Without current state the partitions cannot be processed correctly:
                    // take none of them and report it; the service then stops, leaving the
                    // group, which gives the partitions to another member (or to this one
                    // when it is restarted).
                    tracing::error!(error = %e, "cannot prepare the state of the assigned partitions; leaving them unassigned");
                    metrics::counter!("ponte_consumer_prepare_failures_total", "group" => self.group.clone()).increment(1);
                    if let Ok(mut g) = self.assignment.failure.lock() {
                        *g = Some(e);
                    }
                    return;
                }
                for (topic, partition) in &parts {
                    let offset = match self.offsets.next_offset(topic, *partition) {
                        Ok(Some(o)) => Offset::Offset(o),
                        Ok(None) => Offset::Beginning,
                        Err(e) => {
                            // Reading from the beginning is always safe: applying is idempotent.
                            tracing::error!(%topic, partition, error = %e, "cannot read stored offset; starting from the beginning");
                            Offset::Beginning
                        }
                    };
                    if let Err(e) = tpl.set_partition_offset(topic, *partition, offset) {
                        tracing::error!(%topic, partition, error = %e, "cannot set start offset");
                    }
                    tracing::info!(%topic, partition, ?offset, "partition assigned");
                }
                let res = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                match res {
                    Ok(()) => {
                        if cooperative {
                            self.assignment.add(parts);
                        } else {
                            self.assignment.replace(parts);
                        }
                        metrics::counter!("ponte_consumer_rebalances_total", "group" => self.group.clone(), "kind" => "assign").increment(1);
                    }
                    Err(e) => tracing::error!(error = %e, "assign failed"),
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let parts = list(tpl);
                self.assignment.bump();
                tracing::info!(partitions = ?parts, "partitions revoked");
                let res = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = res {
                    tracing::error!(error = %e, "unassign failed");
                }
                if cooperative {
                    self.assignment.remove(&parts);
                } else {
                    self.assignment.replace([]);
                }
                metrics::counter!("ponte_consumer_rebalances_total", "group" => self.group.clone(), "kind" => "revoke").increment(1);
            }
            other => {
                tracing::error!(error = ?other, "rebalance error; dropping assignment");
                let _ = consumer.unassign();
                self.assignment.replace([]);
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            // Informational only: positions come from the state store.
            tracing::debug!(error = %e, "async offset commit failed");
        }
    }
}

/// How a consumer is a member of its group.
#[derive(Debug, Clone, Copy)]
pub struct Membership<'a> {
    /// How long the partitions of a member that stopped answering stay unowned.
    pub session_timeout_ms: u32,
    /// A stable name (Kafka's static membership, `group.instance.id`): a member that comes
    /// back under the same name within the session timeout gets its partitions back at once,
    /// without waiting for the timeout or moving anything; a member that stops for good keeps
    /// its partitions unowned until the timeout, even on a clean shutdown. `None`: a new member
    /// on every start.
    pub instance_id: Option<&'a str>,
}

/// Waits until the broker's metadata shows every topic of `topics` with all its partitions
/// led, for up to `timeout`. A group member that subscribes before a topic is visible is
/// assigned the others only — and so is every member, since the leader assigns what it sees —
/// until a metadata refresh: call this before [`group_consumer`] when the topics may have been
/// created moments ago. Blocking.
pub fn wait_for_topics(
    kafka: &KafkaConfig,
    topics: &[&str],
    timeout: std::time::Duration,
) -> Result<(), BusError> {
    let client: BaseConsumer = kafka
        .client_config("ponte-metadata")
        .create()
        .map_err(|e| BusError::Config(e.to_string()))?;
    let deadline = std::time::Instant::now() + timeout;
    let mut waiting: Vec<&str> = topics.to_vec();
    loop {
        let mut still = Vec::new();
        for &t in &waiting {
            let visible = client
                .fetch_metadata(Some(t), std::time::Duration::from_secs(5))
                .ok()
                .and_then(|md| {
                    md.topics().first().map(|m| {
                        m.error().is_none()
                            && !m.partitions().is_empty()
                            && m.partitions()
                                .iter()
                                .all(|p| p.error().is_none() && p.leader() >= 0)
                    })
                })
                .unwrap_or(false);
            if !visible {
                still.push(t);
            }
        }
        if still.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(BusError::Unavailable(format!(
                "topics not visible in the broker's metadata after {timeout:?}: {still:?}"
            )));
        }
        tracing::info!(topics = ?still, "waiting for topics to appear in the broker's metadata");
        waiting = still;
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// A group consumer subscribed to `topics`, positioned from `offsets` on every assignment.
pub fn group_consumer(
    kafka: &KafkaConfig,
    group_id: &str,
    client_id: &str,
    topics: &[&str],
    offsets: Arc<dyn OffsetSource>,
    membership: Membership<'_>,
) -> Result<(StreamConsumer<SeekingContext>, Assignment), BusError> {
    let session_timeout_ms = membership.session_timeout_ms;
    let assignment = Assignment::default();
    let ctx = SeekingContext {
        offsets,
        assignment: assignment.clone(),
        group: group_id.to_owned(),
    };
    let mut cfg = kafka.client_config(client_id);
    cfg.set("group.id", group_id)
        .set("session.timeout.ms", session_timeout_ms.to_string())
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_committed")
        .set("statistics.interval.ms", "5000")
        // The range assignor gives a member the same partition numbers of every topic of equal
        // partition count: co-partitioned topics stay together, and so does their state.
        .set("partition.assignment.strategy", "range")
        // Prefetched messages are resident memory: 16 MiB is seconds of work for a consumer
        // that applies what it reads (librdkafka's default is 64 MiB).
        .set("queued.max.messages.kbytes", "16384")
        // A subscribed topic the group leader cannot see yet is left out of the assignment
        // until the leader's next metadata refresh notices it (librdkafka's default: every
        // 5 minutes). Callers wait for their topics first ([`wait_for_topics`]); this bounds
        // what is left, e.g. a broker that does not know a topic another broker created.
        .set("topic.metadata.refresh.interval.ms", "10000");
    if let Some(id) = membership.instance_id {
        cfg.set("group.instance.id", id);
    }
    // Pass-through properties win over the defaults above.
    for (k, v) in &kafka.properties {
        cfg.set(k, v);
    }
    let consumer: StreamConsumer<SeekingContext> = cfg
        .create_with_context(ctx)
        .map_err(|e| BusError::Config(e.to_string()))?;
    consumer
        .subscribe(topics)
        .map_err(|e| BusError::Config(format!("subscribing to {topics:?}: {e}")))?;
    Ok((consumer, assignment))
}
