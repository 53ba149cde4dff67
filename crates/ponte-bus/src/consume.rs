//! Group consumers of stateful services, whose positions are committed with their outputs.
//!
//! A stateful service commits the next offset of every partition it read in the same Kafka
//! transaction as the outputs and changelog entries it derived from the records
//! ([`crate::transact`]). On every partition assignment the [`SeekingContext`] first reads the
//! group's committed offsets — with `isolation.level=read_committed` librdkafka asks for stable
//! offsets (`rd_kafka_committed` sets RequireStable, and retries on UNSTABLE_OFFSET_COMMIT), so
//! the answer waits until a transaction still open on those partitions (a stalled
//! or crashed previous owner's) is committed or aborted — then assigns them from those offsets,
//! *paused*, and hands them to the service's [`PartitionSetup::prepare`] on a thread of its
//! own, which brings the service's local state of the partitions up to its changelog. The
//! consumer goes on polling meanwhile, so a preparation of any length keeps the member in its
//! group (one run inside the rebalance callback blocked the poll: past
//! `max.poll.interval.ms` librdkafka took the member out of the group, and its partitions were
//! assigned and restored again). Once the preparation is done the service resumes the
//! partitions ([`Assignment::resume_prepared`]); a preparation whose partitions were revoked
//! meanwhile is abandoned and never resumes anything. State, outputs and positions therefore
//! always describe the same committed transactions. A partition without a committed offset
//! starts from the beginning.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use crate::{BusError, KafkaConfig};

/// What a stateful service does with newly assigned partitions before their records flow.
pub trait PartitionSetup: Send + Sync + 'static {
    /// Called once per assignment with every newly assigned partition and the group's
    /// committed next offset of each (`None`: nothing committed), after any transaction open on
    /// them is resolved: a stateful service brings its local state of those partitions up to
    /// its changelog here. It runs on a thread of its own while the partitions are assigned
    /// but paused, so no record of them is delivered before it returns, and the consumer keeps
    /// polling however long it takes. `still_wanted` turns false once the partitions are
    /// revoked or the consumer closes: the preparation should then stop (with an error, which
    /// is not reported as a failure) — the next assignment prepares the partitions again.
    fn prepare(
        &self,
        assigned: &BTreeMap<(String, i32), Option<i64>>,
        still_wanted: &dyn Fn() -> bool,
    ) -> Result<(), String>;
}

/// How long an assignment waits for the group's committed offsets: a previous owner's open
/// transaction holds them until it ends or the broker aborts it (`transaction.timeout.ms`).
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(120);

type Partition = (String, i32);

/// An assignment's partitions for [`PartitionSetup::prepare`], with the generation it was for.
struct Job {
    generation: u64,
    positions: BTreeMap<Partition, Option<i64>>,
}

#[derive(Debug, Default)]
struct State {
    /// Every partition assigned to the consumer.
    owned: BTreeSet<Partition>,
    /// Assigned partitions paused until their preparation is done and they are resumed, with
    /// their committed positions.
    preparing: BTreeMap<Partition, Option<i64>>,
    /// Preparations done, with the generation each was for, whose partitions are not resumed
    /// yet.
    prepared: Vec<(u64, Vec<Partition>)>,
    /// Why an assignment could not be prepared.
    failure: Option<String>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    generation: AtomicU64,
    closed: AtomicBool,
    /// Set when a preparation is done, so the driver's check between polls is one atomic load
    /// rather than a lock.
    done: AtomicBool,
    /// Signalled when a preparation ends, done or failed.
    wake: tokio::sync::Notify,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The partitions a consumer currently owns, readable from other tasks (health, metrics).
#[derive(Debug, Clone, Default)]
pub struct Assignment {
    shared: Arc<Shared>,
}

impl Assignment {
    fn state(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// An assignment of `partitions` (topic, partition), each prepared: what a service reading
    /// the assignment sees once its consumer owns them and has prepared them — for tests of
    /// those reads without a broker.
    pub fn prepared(partitions: impl IntoIterator<Item = (String, i32)>) -> Self {
        let a = Self::default();
        a.state().owned = partitions.into_iter().collect();
        a
    }

    /// Changes on every assignment and revocation: work derived from records consumed under an
    /// older generation may belong to partitions this consumer no longer owns.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::SeqCst)
    }

    fn bump(&self) -> u64 {
        self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Why the last assignment could not be prepared, if it could not: the partitions are not
    /// processed and the service should stop (and be restarted) rather than run without them.
    pub fn failure(&self) -> Option<String> {
        self.state().failure.clone()
    }

    fn fail(&self, why: String) {
        self.state().failure = Some(why);
        self.shared.wake.notify_one();
    }

    /// The distinct partition numbers owned (of any topic), prepared or not.
    pub fn partition_numbers(&self) -> BTreeSet<i32> {
        self.state().owned.iter().map(|(_, p)| *p).collect()
    }

    /// The distinct partition numbers owned and prepared: those whose records flow.
    pub fn prepared_partition_numbers(&self) -> BTreeSet<i32> {
        let s = self.state();
        s.owned
            .iter()
            .filter(|p| !s.preparing.contains_key(*p))
            .map(|(_, p)| *p)
            .collect()
    }

    /// Whether partition number `partition` is owned (of some topic) and none of its topics'
    /// partitions is still being prepared: stricter than [`Assignment::prepared_partition_numbers`],
    /// which counts a number once any of its topics is prepared — for reads of the state the
    /// partition's restore writes, which must wait for all of it.
    pub fn is_prepared(&self, partition: i32) -> bool {
        let s = self.state();
        s.owned.iter().any(|(_, p)| *p == partition)
            && !s.preparing.keys().any(|(_, p)| *p == partition)
    }

    /// The distinct partition numbers owned and still being prepared (paused).
    pub fn preparing_partition_numbers(&self) -> BTreeSet<i32> {
        self.state().preparing.keys().map(|(_, p)| *p).collect()
    }

    /// A snapshot of the owned partitions.
    pub fn partitions(&self) -> Vec<(String, i32)> {
        self.state().owned.iter().cloned().collect()
    }

    /// Resolves when a preparation has ended (done or failed) since the last call: time to call
    /// [`Assignment::resume_prepared`] (or to look at [`Assignment::failure`]).
    pub async fn changed(&self) {
        self.shared.wake.notified().await;
    }

    /// Resumes the partitions whose preparation is done for the current assignment (those of
    /// a preparation for an older one stay as the newer assignment left them). Returns whether
    /// any was resumed. Call it from the task that polls `consumer`.
    pub fn resume_prepared<C: ConsumerContext>(
        &self,
        consumer: &impl Consumer<C>,
    ) -> Result<bool, BusError> {
        if !self.shared.done.swap(false, Ordering::SeqCst) {
            return Ok(false);
        }
        let current = self.generation();
        let mut s = self.state();
        let mut tpl = TopicPartitionList::new();
        let mut resumed = Vec::new();
        for (generation, parts) in std::mem::take(&mut s.prepared) {
            if generation != current {
                continue;
            }
            for part in parts {
                if s.preparing.contains_key(&part) {
                    tpl.add_partition(&part.0, part.1);
                    resumed.push(part);
                }
            }
        }
        if resumed.is_empty() {
            return Ok(false);
        }
        consumer
            .resume(&tpl)
            .map_err(|e| BusError::Unavailable(format!("resuming prepared partitions: {e}")))?;
        for part in &resumed {
            s.preparing.remove(part);
        }
        tracing::info!(partitions = ?resumed, "prepared partitions resumed");
        Ok(true)
    }

    /// Stops the preparation thread: a preparation under way is told it is no longer wanted,
    /// and this waits until it has returned. Blocking.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        let worker = self
            .shared
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(w) = worker
            && w.join().is_err()
        {
            tracing::error!("the partition preparation thread panicked");
        }
    }

    fn closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }
}

/// The preparation thread: runs each assignment's [`PartitionSetup::prepare`] in turn, skipping
/// those already superseded, until the consumer is dropped or the assignment closed.
fn prepare_assignments(
    setup: Arc<dyn PartitionSetup>,
    assignment: Assignment,
    jobs: Receiver<Job>,
    group: String,
) {
    loop {
        let job = match jobs.recv_timeout(Duration::from_millis(200)) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) if !assignment.closed() => continue,
            Err(_) => return,
        };
        let wanted = || assignment.generation() == job.generation && !assignment.closed();
        if !wanted() {
            continue;
        }
        let started = Instant::now();
        let result = setup.prepare(&job.positions, &wanted);
        if !wanted() {
            tracing::info!(
                seconds = started.elapsed().as_secs_f64(),
                "the partitions being prepared were revoked; the preparation is abandoned"
            );
            continue;
        }
        match result {
            Ok(()) => {
                tracing::info!(
                    partitions = job.positions.len(),
                    seconds = started.elapsed().as_secs_f64(),
                    "assigned partitions prepared"
                );
                // Flagged under the lock: whoever sees the preparation listed sees the flag.
                let mut s = assignment.state();
                s.prepared
                    .push((job.generation, job.positions.into_keys().collect()));
                assignment.shared.done.store(true, Ordering::SeqCst);
                drop(s);
                assignment.shared.wake.notify_one();
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot prepare the assigned partitions; they stay paused");
                metrics::counter!("ponte_consumer_prepare_failures_total", "group" => group.clone()).increment(1);
                assignment.fail(e);
            }
        }
    }
}

/// Consumer context that positions every newly assigned partition at the group's committed
/// offset, paused until its [`PartitionSetup`] has prepared it.
pub struct SeekingContext {
    jobs: Sender<Job>,
    assignment: Assignment,
    group: String,
    /// Whether the group's rebalance protocol is cooperative (incremental assignments), as the
    /// consumer's `partition.assignment.strategy` decides. Known when the consumer is built:
    /// asking librdkafka from inside the callback is a request to its main thread, and the
    /// callback also runs from the consumer's close.
    cooperative: bool,
    /// Whether the client still knows a broker ([`crate::brokers`]).
    brokers: crate::brokers::Watched,
}

impl std::fmt::Debug for SeekingContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeekingContext")
            .field("group", &self.group)
            .finish()
    }
}

impl ClientContext for SeekingContext {
    /// librdkafka's statistics (every `statistics.interval.ms`): the brokers the client knows
    /// ([`crate::brokers`]), and the consumer lag of every owned partition, from the broker's
    /// high watermark and this consumer's position.
    fn stats(&self, mut statistics: rdkafka::Statistics) {
        self.brokers.report(&mut statistics);
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

impl SeekingContext {
    /// How long the client has known no broker at all, from its statistics (every 5 s), as of
    /// `now`, once that has lasted [`crate::brokers::LOST_AFTER`]; `None` before, and while it
    /// knows one, even one that is down. Such a client never reconnects: its owner must
    /// replace it.
    pub fn brokers_lost(&self, now: std::time::Instant) -> Option<std::time::Duration> {
        self.brokers.lost(now)
    }

    /// The client's label in metrics: its client id and `/consumer`.
    pub fn client(&self) -> &str {
        self.brokers.client()
    }

    /// Answers an assignment by taking no partition. librdkafka waits for every assignment to
    /// be answered with an assign call — until then the member neither goes on nor can close —
    /// and an unassign is no answer: an empty assignment is.
    fn take_none(&self, consumer: &BaseConsumer<Self>) {
        let none = TopicPartitionList::new();
        let res = if self.cooperative {
            consumer.incremental_assign(&none)
        } else {
            consumer.assign(&none)
        };
        if let Err(e) = res {
            tracing::error!(error = %e, "answering the assignment with no partition failed");
        }
    }

    /// Hands every partition still waiting to the preparation thread, for `generation`.
    fn prepare(&self, generation: u64, s: &State) {
        if s.preparing.is_empty() {
            return;
        }
        // The thread lives as long as the consumer: a send fails only while the consumer is
        // being dropped.
        let _ = self.jobs.send(Job {
            generation,
            positions: s.preparing.clone(),
        });
    }
}

impl ConsumerContext for SeekingContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = self.cooperative;
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS if self.assignment.closed() => {
                // An assignment the group made while this member was leaving, served by the
                // consumer's close: nothing will process the partitions. The group's committed
                // offsets cannot be read any more (librdkafka answers "waiting for the
                // coordinator" to a closing consumer, and `committed_offsets` would wait out
                // its whole timeout for a broker change that never comes, holding the close —
                // and the service's shutdown — with it), and are not needed: the closing
                // consumer treats the assignment as none at all.
                self.assignment.bump();
                tracing::info!(partitions = ?list(tpl), "partitions assigned while the consumer closes; not taken");
                self.take_none(consumer);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let parts = list(tpl);
                let generation = self.assignment.bump();
                // Without their committed positions the partitions cannot be processed
                // correctly: take none of them and report it; the service then stops, leaving
                // the group, which gives the partitions to another member (or to this one when
                // it is restarted).
                let fail = |e: String| {
                    tracing::error!(error = %e, "cannot take the assigned partitions; leaving them unassigned");
                    metrics::counter!("ponte_consumer_prepare_failures_total", "group" => self.group.clone()).increment(1);
                    self.take_none(consumer);
                    self.assignment.fail(e);
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
                if let Err(e) = res {
                    tracing::error!(error = %e, "assign failed");
                    return;
                }
                // Paused in the same callback, before anything fetched can be delivered (a
                // pause also discards what was fetched, and fetching restarts from the
                // assigned offset on resume).
                if !parts.is_empty()
                    && let Err(e) = consumer.pause(tpl)
                {
                    return fail(format!("pausing the assigned partitions: {e}"));
                }
                let mut s = self.assignment.state();
                if !cooperative {
                    s.owned.clear();
                    s.preparing.clear();
                    s.prepared.clear();
                }
                s.owned.extend(parts.iter().cloned());
                s.preparing.extend(positions);
                // A preparation under way is for the older generation and stops: the new one
                // takes every partition still waiting (under the cooperative protocol, those
                // of earlier assignments too).
                self.prepare(generation, &s);
                drop(s);
                metrics::counter!("ponte_consumer_rebalances_total", "group" => self.group.clone(), "kind" => "assign").increment(1);
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
                let mut s = self.assignment.state();
                if cooperative {
                    for p in &parts {
                        s.owned.remove(p);
                        s.preparing.remove(p);
                    }
                    // The preparation under way stopped with the generation: the partitions
                    // still waiting are prepared again.
                    self.prepare(self.assignment.generation(), &s);
                } else {
                    s.owned.clear();
                    s.preparing.clear();
                    s.prepared.clear();
                }
                metrics::counter!("ponte_consumer_rebalances_total", "group" => self.group.clone(), "kind" => "revoke").increment(1);
            }
            other => {
                tracing::error!(error = ?other, "rebalance error; dropping assignment");
                self.assignment.bump();
                let _ = consumer.unassign();
                let mut s = self.assignment.state();
                s.owned.clear();
                s.preparing.clear();
                s.prepared.clear();
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
    /// An address the other members find in the group's description
    /// ([`crate::members::describe`]), carried in the client id
    /// ([`crate::members::advertised_client_id`]; metrics keep the plain client id). `None`:
    /// nothing advertised.
    pub advertised: Option<&'a str>,
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

/// A group consumer subscribed to `topics`, positioned at the group's committed offsets; every
/// assignment's partitions stay paused until `setup` has prepared them on the returned
/// [`Assignment`]'s thread and the caller resumes them ([`Assignment::resume_prepared`]). Its
/// offsets are committed in the caller's transactions, never by the consumer itself. Stop the
/// service with [`Assignment::close`] *before* dropping the consumer: the drop closes it, which
/// serves any assignment still queued, and a closed assignment is answered with no partition
/// instead of reading the group's committed offsets (which a closing consumer cannot).
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
    let (jobs, pending) = std::sync::mpsc::channel();
    let worker = {
        let (assignment, group) = (assignment.clone(), group_id.to_owned());
        std::thread::Builder::new()
            .name("partition-setup".to_owned())
            .spawn(move || prepare_assignments(setup, assignment, pending, group))
            .map_err(|e| BusError::Config(format!("starting the partition setup thread: {e}")))?
    };
    *assignment
        .shared
        .worker
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(worker);
    let mut cfg = kafka.client_config(client_id);
    cfg.set("group.id", group_id)
        .set("session.timeout.ms", session_timeout_ms.to_string())
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_committed")
        // Statistics: the consumer lag of each partition, and whether the client still knows a
        // broker ([`SeekingContext::brokers_lost`]).
        .set("statistics.interval.ms", "5000")
        // The range assignor gives a member the same partition numbers of every topic of equal
        // partition count: co-partitioned topics stay together, and so does their state.
        .set("partition.assignment.strategy", "range")
        // Prefetched messages are resident memory: 16 MiB is seconds of work for a consumer
        // that applies what it reads (librdkafka's default is 64 MiB).
        .set("queued.max.messages.kbytes", "16384")
        // A fetch hands over each partition's messages as one run: at most 256 KiB of each
        // per fetch (librdkafka's default is 1 MiB, thousands of records) so that what a
        // consumer takes at a time mixes partitions, which the reconciler applies on several
        // threads at once (`lanes` of ponte-reconciler). 64 KiB mixed them as well but cost
        // the broker a fifth more CPU in fetches (docs/benchmarks.md).
        .set("max.partition.fetch.bytes", "262144")
        // A subscribed topic the group leader cannot see yet is left out of the assignment
        // until the leader's next metadata refresh notices it (librdkafka's default: every
        // 5 minutes). Callers wait for their topics first ([`wait_for_topics`]); this bounds
        // what is left, e.g. a broker that does not know a topic another broker created.
        .set("topic.metadata.refresh.interval.ms", "10000");
    if let Some(id) = membership.instance_id {
        cfg.set("group.instance.id", id);
    }
    if let Some(address) = membership.advertised {
        cfg.set(
            "client.id",
            crate::members::advertised_client_id(client_id, address),
        );
    }
    // Pass-through properties win over the defaults above.
    for (k, v) in &kafka.properties {
        cfg.set(k, v);
    }
    let ctx = SeekingContext {
        jobs,
        assignment: assignment.clone(),
        group: group_id.to_owned(),
        cooperative: cfg
            .get("partition.assignment.strategy")
            .is_some_and(is_cooperative),
        brokers: crate::brokers::Watched::new(&format!("{client_id}/consumer"))?,
    };
    let consumer: StreamConsumer<SeekingContext> = cfg
        .create_with_context(ctx)
        .map_err(|e| BusError::Config(e.to_string()))?;
    consumer
        .subscribe(topics)
        .map_err(|e| BusError::Config(format!("subscribing to {topics:?}: {e}")))?;
    Ok((consumer, assignment))
}

/// Whether a `partition.assignment.strategy` list names a cooperative assignor: librdkafka
/// refuses a list mixing eager and cooperative ones, so any one decides the protocol.
fn is_cooperative(strategy: &str) -> bool {
    strategy
        .split(',')
        .any(|assignor| assignor.trim() == "cooperative-sticky")
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::mpsc;

    use rdkafka::config::ClientConfig;

    use super::*;

    #[test]
    fn a_partition_is_prepared_when_owned_and_none_of_its_topics_is_being_prepared() {
        let a = Assignment::prepared([
            ("a".to_owned(), 1),
            ("b".to_owned(), 1),
            ("a".to_owned(), 2),
        ]);
        assert!(a.is_prepared(1) && a.is_prepared(2));
        assert!(!a.is_prepared(3), "not owned");
        a.state().preparing.insert(("b".to_owned(), 1), None);
        assert!(!a.is_prepared(1), "one of its topics is being prepared");
        assert!(a.is_prepared(2));
    }

    /// A setup that reports each call and finishes when told to, or as soon as it is no longer
    /// wanted (with an error, as a restore does).
    struct Gated {
        started: Mutex<mpsc::Sender<()>>,
        finish: Mutex<mpsc::Receiver<()>>,
    }

    impl PartitionSetup for Gated {
        fn prepare(
            &self,
            _: &BTreeMap<Partition, Option<i64>>,
            still_wanted: &dyn Fn() -> bool,
        ) -> Result<(), String> {
            self.started.lock().unwrap().send(()).unwrap();
            loop {
                if !still_wanted() {
                    return Err("no longer wanted".to_owned());
                }
                if self
                    .finish
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_millis(10))
                    .is_ok()
                {
                    return Ok(());
                }
            }
        }
    }

    /// What the rebalance callback does on an assignment, without a broker.
    fn assign(a: &Assignment, jobs: &Sender<Job>, parts: &[Partition]) -> u64 {
        let generation = a.bump();
        {
            let mut s = a.state();
            s.owned = parts.iter().cloned().collect();
            s.preparing = parts.iter().map(|p| (p.clone(), None)).collect();
            s.prepared.clear();
        }
        jobs.send(Job {
            generation,
            positions: parts.iter().map(|p| (p.clone(), None)).collect(),
        })
        .unwrap();
        generation
    }

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_preparation_overtaken_by_a_new_assignment_resumes_nothing_and_is_no_failure() {
        let (started_tx, started) = mpsc::channel();
        let (finish, finish_rx) = mpsc::channel();
        let setup = Arc::new(Gated {
            started: Mutex::new(started_tx),
            finish: Mutex::new(finish_rx),
        });
        let a = Assignment::default();
        let (jobs, pending) = mpsc::channel();
        let worker = {
            let a = a.clone();
            std::thread::spawn(move || prepare_assignments(setup, a, pending, "g".to_owned()))
        };
        *a.shared.worker.lock().unwrap() = Some(worker);
        // No broker: resuming only needs the consumer's local partition state.
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("group.id", "g")
            .create()
            .unwrap();
        let p0 = ("t".to_owned(), 0);
        let p1 = ("t".to_owned(), 1);

        // The first assignment is revoked and replaced while it is being prepared.
        assign(&a, &jobs, &[p0.clone(), p1.clone()]);
        started.recv_timeout(Duration::from_secs(10)).unwrap();
        assign(&a, &jobs, std::slice::from_ref(&p1));
        // The abandoned preparation stopped on its own (it was not told to finish) and the
        // new one began; nothing is resumed before it is done.
        started.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(!a.resume_prepared(&consumer).unwrap());
        assert_eq!(
            a.failure(),
            None,
            "an abandoned preparation is not a failure"
        );
        assert_eq!(a.prepared_partition_numbers(), BTreeSet::new());
        assert_eq!(a.preparing_partition_numbers(), BTreeSet::from([1]));

        finish.send(()).unwrap();
        wait_for("the preparation to be reported", || {
            !a.state().prepared.is_empty()
        });
        assert!(a.resume_prepared(&consumer).unwrap());
        assert_eq!(a.prepared_partition_numbers(), BTreeSet::from([1]));
        assert_eq!(a.preparing_partition_numbers(), BTreeSet::new());
        // Resumed once.
        assert!(!a.resume_prepared(&consumer).unwrap());

        // A preparation done for an assignment that has since changed is not resumed.
        let stale = assign(&a, &jobs, std::slice::from_ref(&p0));
        started.recv_timeout(Duration::from_secs(10)).unwrap();
        finish.send(()).unwrap();
        wait_for("the preparation to be reported", || {
            !a.state().prepared.is_empty()
        });
        a.bump();
        assert!(a.generation() > stale);
        assert!(!a.resume_prepared(&consumer).unwrap());
        assert_eq!(a.preparing_partition_numbers(), BTreeSet::from([0]));

        // A failure of a current preparation is reported, and wakes whoever waits.
        let (failing_tx, failing) = mpsc::channel();
        let b = Assignment::default();
        let (b_jobs, b_pending) = mpsc::channel();
        struct Failing(Mutex<mpsc::Sender<()>>);
        impl PartitionSetup for Failing {
            fn prepare(
                &self,
                _: &BTreeMap<Partition, Option<i64>>,
                _: &dyn Fn() -> bool,
            ) -> Result<(), String> {
                self.0.lock().unwrap().send(()).unwrap();
                Err("changelog unreadable".to_owned())
            }
        }
        {
            let b = b.clone();
            let setup = Arc::new(Failing(Mutex::new(failing_tx)));
            std::thread::spawn(move || prepare_assignments(setup, b, b_pending, "g".to_owned()));
        }
        assign(&b, &b_jobs, std::slice::from_ref(&p0));
        failing.recv_timeout(Duration::from_secs(10)).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), b.changed())
                .await
                .unwrap();
        });
        assert_eq!(b.failure().as_deref(), Some("changelog unreadable"));
        assert!(!b.resume_prepared(&consumer).unwrap());

        // Closing stops the thread, even in the middle of a preparation.
        assign(&a, &jobs, std::slice::from_ref(&p1));
        started.recv_timeout(Duration::from_secs(10)).unwrap();
        a.close();
        assert!(a.shared.worker.lock().unwrap().is_none());
        b.close();
    }
}
