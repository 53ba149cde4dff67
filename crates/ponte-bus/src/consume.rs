//! Group consumers of stateful services, whose positions are committed with their outputs.
//!
//! A stateful service commits the next offset of every partition it read in the same Kafka
//! transaction as the outputs and changelog entries it derived from the records
//! ([`crate::transact`]). On every partition assignment the [`SeekingContext`] first reads the
//! group's committed offsets — with `isolation.level=read_committed` librdkafka asks for stable
//! offsets (`rd_kafka_committed` sets RequireStable, and retries on UNSTABLE_OFFSET_COMMIT), so
//! the answer waits until a transaction still open on those partitions (a stalled
//! or crashed previous owner's) is committed or aborted — then lets the service bring its local
//! state of the partitions up to the changelog ([`PartitionSetup::prepare`]), and only then
//! assigns them from those offsets. State, outputs and positions therefore always describe the
//! same committed transactions. A partition without a committed offset starts from the
//! beginning.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, Consumer as _, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use crate::{BusError, KafkaConfig};

/// What a stateful service does with newly assigned partitions before their records flow.
pub trait PartitionSetup: Send + Sync + 'static {
    /// Called once per assignment with every newly assigned partition and the group's
    /// committed next offset of each (`None`: nothing committed), after any transaction open on
    /// them is resolved: a stateful service brings its local state of those partitions up to
    /// its changelog here (it runs inside the rebalance, so no record of the partitions is
    /// delivered before it returns).
    fn prepare(&self, assigned: &BTreeMap<(String, i32), Option<i64>>) -> Result<(), String>;
}

/// How long an assignment waits for the group's committed offsets: a previous owner's open
/// transaction holds them until it ends or the broker aborts it (`transaction.timeout.ms`).
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(120);

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

/// Consumer context that positions every newly assigned partition at the group's committed
/// offset, once its [`PartitionSetup`] has prepared it.
pub struct SeekingContext {
    setup: Arc<dyn PartitionSetup>,
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
                // Without current state (or positions) the partitions cannot be processed
                // correctly: take none of them and report it; the service then stops, leaving
                // the group, which gives the partitions to another member (or to this one when
                // it is restarted).
                let fail = |e: String| {
                    tracing::error!(error = %e, "cannot prepare the assigned partitions; leaving them unassigned");
                    metrics::counter!("ponte_consumer_prepare_failures_total", "group" => self.group.clone()).increment(1);
                    if let Ok(mut g) = self.assignment.failure.lock() {
                        *g = Some(e);
                    }
                };
                let committed = match consumer.committed_offsets(tpl.clone(), COMMITTED_TIMEOUT) {
                    Ok(c) => c,
                    Err(e) => return fail(format!("reading the group's committed offsets: {e}")),
                };
                let positions: BTreeMap<(String, i32), Option<i64>> = committed
                    .elements()
                    .iter()
                    .map(|e| {
                        let next = match e.offset() {
                            Offset::Offset(o) if o >= 0 => Some(o),
                            _ => None,
                        };
                        ((e.topic().to_owned(), e.partition()), next)
                    })
                    .collect();
                if let Err(e) = self.setup.prepare(&positions) {
                    return fail(e);
                }
                for ((topic, partition), next) in &positions {
                    let offset = next.map_or(Offset::Beginning, Offset::Offset);
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

/// A group consumer subscribed to `topics`, positioned at the group's committed offsets after
/// `setup` has prepared every assignment. Its offsets are committed in the caller's
/// transactions, never by the consumer itself.
pub fn group_consumer(
    kafka: &KafkaConfig,
    group_id: &str,
    client_id: &str,
    topics: &[&str],
    setup: Arc<dyn PartitionSetup>,
    membership: Membership<'_>,
) -> Result<(StreamConsumer<SeekingContext>, Assignment), BusError> {
    let session_timeout_ms = membership.session_timeout_ms;
    let assignment = Assignment::default();
    let ctx = SeekingContext {
        setup,
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

/// The context of a consumer that reads partitions to their end (`enable.partition.eof`):
/// reaching the end is what it waits for, not an error, so librdkafka's end-of-partition
/// events are logged at debug level instead of the default context's `ERROR` (which filled a
/// restarted reconciler's log with one "Global error: PartitionEOF" per partition restored).
/// Every other client error is logged at error level, as by default.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReadToEnd;

impl ClientContext for ReadToEnd {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
            tracing::debug!(%reason, "end of partition");
        } else {
            tracing::error!(%error, %reason, "librdkafka client error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ReadToEnd {}
