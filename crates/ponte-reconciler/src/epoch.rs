//! Committing an epoch: the events applied since the last commit become visible at once — their
//! outputs, their state changes on the changelog and their input offsets in one Kafka
//! transaction — and only then reach the local store.
//!
//! Order of a commit, each step a fault point for the crash tests ([`FaultPoint`]):
//!
//! 1. `begun`: a transaction is open.
//! 2. `sent`: every output (latest view per key, every alert, repartition message and dead
//!    letter) and one changelog entry per state key written is acknowledged by the broker —
//!    still invisible to `read_committed` readers.
//! 3. `offsets`: the next input offsets are in the transaction, for the group generation this
//!    instance was assigned its partitions in. A stale generation (another instance owns them
//!    now) is refused here or at the commit: the epoch is aborted and nothing of it is seen.
//! 4. `committed`: the transaction is committed: outputs, changelog and offsets are visible.
//! 5. `applied`: the state changes and each partition's changelog position are in the local
//!    store, without a write-ahead log: a crash before the store flushes loses them locally, and
//!    the next assignment reads them back from the changelog ([`crate::restore`]).
//!
//! The consumer loop pipelines epochs ([`crate::driver`]): [`Committer::send`] begins the
//! transaction and hands every message to the producer, the loop applies the next epoch over
//! the sent one's writes while the broker acknowledges them, and [`Committer::complete`] does
//! the rest before the next epoch is sent. One transaction is open at a time, and the steps of
//! each keep their order; if one is aborted, the epoch applied over it is dropped with it.
//!
//! A crash before step 4 leaves nothing visible and the inputs are consumed again from the
//! committed offsets; a crash after it leaves everything visible and the inputs are not
//! consumed again. Either way the restarted instance ends where an uninterrupted one would.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ponte_bus::headers::EventHeaders;
use ponte_bus::transact::{Transactional, TxError};
use ponte_bus::{KafkaConfig, Topic, TopicsConfig};
use ponte_store::Store;
use rdkafka::consumer::{Consumer, ConsumerGroupMetadata};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::ReconcilerError;
use crate::restore::Marker;
use crate::topology::{
    Batcher, Output, OutputKind, ParkedAfter, Tx, Writes, batch_bytes, index_marker,
    index_marker_key, is_derived, key_partition, table_of,
};

/// Where each kind of output goes: topic, Kafka `ponte-event-type` header and metric label.
#[derive(Debug, Clone)]
pub struct Routes {
    changes: String,
    alerts: String,
    crosswalk: String,
    health_by_nis: String,
    members: String,
    deadletter: String,
    changelog: String,
    /// The repartition topics' partition count (the inputs'): where each repartition
    /// message's batch goes ([`Batcher`]).
    partitions: i32,
    /// Changes are published in the partition of the input that produced them (the changes
    /// topic has the inputs' partition count), not by their key's hash: the owner of an input
    /// partition is then the only writer of that changes partition.
    changes_by_input: bool,
}

impl Routes {
    /// The routes of group `group`'s outputs, its repartition topics having `partitions`
    /// partitions (the inputs' count).
    pub fn new(topics: &TopicsConfig, group: &str, partitions: i32) -> Self {
        Self {
            changes: topics.name(Topic::ComplianceChanges),
            alerts: topics.name(Topic::ComplianceAlerts),
            crosswalk: topics.reconciler_name(Topic::ReconcilerCrosswalk, group),
            health_by_nis: topics.reconciler_name(Topic::ReconcilerHealthByNis, group),
            members: topics.reconciler_name(Topic::ReconcilerMembers, group),
            deadletter: topics.name(Topic::DeadLetter),
            changelog: topics.reconciler_name(Topic::ReconcilerChangelog, group),
            partitions,
            changes_by_input: false,
        }
    }

    /// Changes go to the partition of the input that produced them: for a changes topic with
    /// the inputs' partition count.
    pub fn changes_in_input_partitions(self) -> Self {
        Self {
            changes_by_input: true,
            ..self
        }
    }

    /// The partition an output is sent to (`None`: its key's hash decides).
    fn partition(&self, o: &Output) -> Option<i32> {
        (o.kind == OutputKind::Change && self.changes_by_input).then_some(o.partition)
    }

    /// The topic of an output kind.
    pub fn topic(&self, kind: OutputKind) -> &str {
        match kind {
            OutputKind::Change => &self.changes,
            OutputKind::Alert => &self.alerts,
            OutputKind::Crosswalk => &self.crosswalk,
            OutputKind::HealthByNis => &self.health_by_nis,
            OutputKind::Member => &self.members,
            OutputKind::DeadLetter => &self.deadletter,
        }
    }

    pub fn changes(&self) -> &str {
        &self.changes
    }

    pub fn changelog(&self) -> &str {
        &self.changelog
    }
}

/// The steps of a commit at which a test can stop the process (`PONTE_TEST_FAULT_POINT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    Begun,
    Sent,
    Offsets,
    Committed,
    Applied,
}

impl FaultPoint {
    pub const ALL: [FaultPoint; 5] = [
        FaultPoint::Begun,
        FaultPoint::Sent,
        FaultPoint::Offsets,
        FaultPoint::Committed,
        FaultPoint::Applied,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultPoint::Begun => "begun",
            FaultPoint::Sent => "sent",
            FaultPoint::Offsets => "offsets",
            FaultPoint::Committed => "committed",
            FaultPoint::Applied => "applied",
        }
    }
}

/// A fault point armed by the environment: `PONTE_TEST_FAULT_POINT=<point>[:<n>[:stop]]`
/// stops the process the `n`-th time (default 1) a commit reaches `<point>`. For crash and
/// fencing tests only: by default the process logs and then sleeps until the test kills it
/// with SIGKILL; with `stop` it sends itself SIGSTOP, and goes on from the point when the test
/// sends SIGCONT (an instance stalled mid-commit, e.g. by a long GC-like pause or a frozen VM).
#[derive(Debug, Default)]
pub struct Faults {
    armed: Option<(FaultPoint, u32, bool)>,
    seen: u32,
}

impl Faults {
    pub fn from_env() -> Result<Self, ReconcilerError> {
        let Ok(spec) = std::env::var("PONTE_TEST_FAULT_POINT") else {
            return Ok(Self::default());
        };
        Self::parse(&spec)
            .map_err(|e| ReconcilerError::Startup(format!("PONTE_TEST_FAULT_POINT: {e}")))
    }

    fn parse(spec: &str) -> Result<Self, String> {
        let mut parts = spec.split(':');
        let name = parts.next().unwrap_or_default();
        let point = FaultPoint::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| {
                format!("unknown point {name:?} (one of begun, sent, offsets, committed, applied)")
            })?;
        let n = match parts.next() {
            None => 1,
            Some(n) => n.parse().map_err(|_| format!("{n:?} is not a count"))?,
        };
        let stop = match parts.next() {
            None => false,
            Some("stop") => true,
            Some(other) => return Err(format!("{other:?} is not `stop`")),
        };
        tracing::warn!(
            point = name,
            n,
            stop,
            "test fault point armed: the process will stop there"
        );
        Ok(Self {
            armed: Some((point, n, stop)),
            seen: 0,
        })
    }

    fn reach(&mut self, point: FaultPoint) {
        let Some((armed, n, stop)) = self.armed else {
            return;
        };
        if armed != point {
            return;
        }
        self.seen += 1;
        if self.seen != n {
            return;
        }
        if stop {
            tracing::error!(
                point = point.name(),
                "test fault point reached; stopping (SIGSTOP) until continued"
            );
            let stopped = std::process::Command::new("kill")
                .args(["-STOP", &std::process::id().to_string()])
                .status();
            tracing::warn!(
                point = point.name(),
                ?stopped,
                "test fault point: continued"
            );
            return;
        }
        tracing::error!(
            point = point.name(),
            "test fault point reached; waiting to be killed"
        );
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// What was consumed in the open epoch, per input partition.
#[derive(Debug, Default)]
pub struct Consumed {
    /// Topic → partition → (first offset consumed: where to seek back if the epoch is aborted,
    /// next offset to consume: committed with the epoch). By topic name first, so recording a
    /// message allocates nothing once its topic is in the epoch.
    offsets: BTreeMap<String, BTreeMap<i32, (i64, i64)>>,
    /// Events consumed: input records and repartition messages (a batch counts its entries).
    pub events: usize,
    pub ingest_times: Vec<SystemTime>,
}

impl Consumed {
    /// Records a message consumed at `offset`, bringing `events` events (a batch of
    /// repartition messages brings its entries).
    pub fn record(&mut self, topic: &str, partition: i32, offset: i64, events: usize) {
        let partitions = match self.offsets.get_mut(topic) {
            Some(p) => p,
            None => self.offsets.entry(topic.to_owned()).or_default(),
        };
        partitions
            .entry(partition)
            .and_modify(|(_, next)| *next = offset + 1)
            .or_insert((offset, offset + 1));
        self.events += events;
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// (topic, partition, first offset consumed, next offset to consume) of each partition.
    fn partitions(&self) -> impl Iterator<Item = (&str, i32, i64, i64)> {
        self.offsets.iter().flat_map(|(topic, partitions)| {
            partitions
                .iter()
                .map(move |(p, (first, next))| (topic.as_str(), *p, *first, *next))
        })
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// How an epoch ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was consumed.
    Empty,
    /// Committed, and applied to the local store.
    Committed,
    /// Aborted: nothing of it is visible; the consumer was sent back to its first offsets.
    Aborted,
}

/// Commits epochs through one transactional producer.
pub struct Committer {
    store: Store,
    kafka: KafkaConfig,
    routes: Routes,
    transactional_id: String,
    transaction_timeout: Duration,
    producer: Option<Arc<Transactional>>,
    faults: Faults,
    /// A transaction is open: an epoch was sent and not completed.
    open: bool,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer")
            .field("transactional_id", &self.transactional_id)
            .finish()
    }
}

/// Producer operations (init, offsets, commit) wait at most this long.
const OP_TIMEOUT: Duration = Duration::from_secs(30);

impl Committer {
    pub fn new(
        store: Store,
        kafka: KafkaConfig,
        routes: Routes,
        transactional_id: String,
        transaction_timeout: Duration,
        faults: Faults,
    ) -> Self {
        Self {
            store,
            kafka,
            routes,
            transactional_id,
            transaction_timeout,
            producer: None,
            faults,
            open: false,
        }
    }

    /// The producer, created (and its transactional id registered, which aborts a transaction a
    /// previous process with the id left open) when there is none.
    fn producer(&mut self) -> Result<&Transactional, TxError> {
        if let Some(lost) = self
            .producer
            .as_ref()
            .and_then(|p| p.brokers_lost(Instant::now()))
        {
            tracing::error!(
                seconds = lost.as_secs(),
                "the transactional producer has known no Kafka broker for a while and never will again: replaced"
            );
            self.replace_producer();
        }
        if self.producer.is_none() {
            let p = tokio::task::block_in_place(|| {
                Transactional::new(
                    &self.kafka,
                    "ponte-reconciler",
                    &self.transactional_id,
                    self.transaction_timeout,
                    OP_TIMEOUT,
                )
            })?;
            self.producer = Some(Arc::new(p));
        }
        self.producer
            .as_deref()
            .ok_or_else(|| TxError::fatal("no producer"))
    }

    /// Drops the producer; the next epoch creates a new one, whose registration of the
    /// transactional id aborts whatever this one left open. Returns its label in metrics.
    fn drop_producer(&mut self) -> Option<String> {
        let old = self.producer.take()?;
        let client = old.client().to_owned();
        ponte_bus::brokers::destroy_aside(old);
        self.open = false;
        Some(client)
    }

    /// Drops a producer whose client lost every broker ([`ponte_bus::brokers`]), counted as
    /// replaced: the next epoch creates a new one.
    pub fn replace_producer(&mut self) {
        if let Some(client) = self.drop_producer() {
            ponte_bus::brokers::replaced(&client);
        }
    }

    /// Registers the transactional id now, so a start fails early when Kafka refuses it.
    pub fn init(&mut self) -> Result<(), ReconcilerError> {
        self.producer()
            .map(|_| ())
            .map_err(|e| ReconcilerError::Startup(format!("transactional producer: {e}")))
    }

    /// Commits the epoch held in `tx` and `consumed` at once: [`Committer::send`], then
    /// [`Committer::complete`]. Returns the parked counts the state writes leave when it
    /// committed.
    pub async fn commit<C: Consumer<ponte_bus::consume::SeekingContext>>(
        &mut self,
        tx: &mut Tx<'_>,
        consumed: &mut Consumed,
        consumer: &C,
    ) -> Result<(Outcome, ParkedAfter), ReconcilerError> {
        match self.send(tx, consumed, consumer)? {
            Sent::Empty => Ok((Outcome::Empty, ParkedAfter::default())),
            Sent::Aborted => Ok((Outcome::Aborted, ParkedAfter::default())),
            Sent::InFlight(epoch) => {
                self.complete(epoch, consumer, &mut Consumed::default())
                    .await
            }
        }
    }

    /// Steps 1–2 of the commit of the epoch held in `tx` and `consumed` (both left empty): a
    /// transaction is begun and every output and changelog entry handed to the producer. The
    /// broker acknowledges them meanwhile; [`Committer::complete`] finishes the commit. An
    /// epoch that cannot be sent is aborted here, and the consumer sent back to its first
    /// offsets.
    pub fn send<C: Consumer<ponte_bus::consume::SeekingContext>>(
        &mut self,
        tx: &mut Tx<'_>,
        consumed: &mut Consumed,
        consumer: &C,
    ) -> Result<Sent, ReconcilerError> {
        if consumed.is_empty() {
            return Ok(Sent::Empty);
        }
        let started = Instant::now();
        let (writes, outputs) = tx.take();
        let parked = crate::topology::parked_after(&writes)?;
        let outputs = latest_views(outputs);
        let consumed = std::mem::take(consumed);
        match self.begin_and_send(&writes, &outputs, &consumed, consumer) {
            Ok(((deliveries, published), offsets, group)) => Ok(Sent::InFlight(InFlight {
                writes: Arc::new(writes),
                outputs: outputs.len(),
                parked,
                consumed,
                deliveries,
                published: Box::new(published),
                offsets,
                group,
                spent: started.elapsed(),
            })),
            Err(e) => {
                self.abandon(&e, consumed, &mut Consumed::default(), consumer)?;
                Ok(Sent::Aborted)
            }
        }
    }

    /// Steps 3–5 of the commit of an epoch [`Committer::send`] sent: waits until the broker
    /// acknowledged its messages, commits its transaction and writes its state to the local
    /// store. Returns the parked counts the state writes leave when it committed.
    ///
    /// `after` is what was consumed since, applied over this epoch's writes: if this epoch is
    /// aborted, that work is dropped with it and the consumer sent back to the first offsets
    /// of both (`after` is left empty).
    pub async fn complete<C: Consumer<ponte_bus::consume::SeekingContext>>(
        &mut self,
        epoch: InFlight,
        consumer: &C,
        after: &mut Consumed,
    ) -> Result<(Outcome, ParkedAfter), ReconcilerError> {
        let started = Instant::now();
        let InFlight {
            writes,
            outputs: _,
            parked,
            mut consumed,
            deliveries,
            published,
            offsets,
            group,
            spent,
        } = epoch;
        match self
            .acknowledge_and_commit(deliveries, offsets, group)
            .await
        {
            Ok(Acknowledged { changelog_ends }) => {
                self.faults.reach(FaultPoint::Committed);
                let applying = Instant::now();
                let mut w = self.store.batch_with_capacity(batch_bytes(&writes));
                for (k, v) in writes.iter() {
                    match v {
                        Some(v) => w.put(k, v),
                        None => w.delete(k),
                    }
                }
                for (p, end) in changelog_ends {
                    w.put(&Marker::key(p), &Marker::now(end).encode());
                    // The index of a partition an epoch ran on was whole (made so before the
                    // partition was served), and the epoch kept it.
                    w.put(&index_marker_key(p), &index_marker(end));
                }
                w.commit()?;
                phase_took("store", applying);
                self.faults.reach(FaultPoint::Applied);
                (*published).count();
                metrics::counter!("ponte_reconciler_epochs_total", "result" => "committed")
                    .increment(1);
                // The time the consumer loop spent on the commit, not the time the broker took
                // to acknowledge while the loop applied the next epoch.
                metrics::histogram!("ponte_reconciler_batch_commit_seconds")
                    .record((spent + started.elapsed()).as_secs_f64());
                metrics::histogram!("ponte_reconciler_batch_events").record(consumed.events as f64);
                let now = SystemTime::now();
                for t in consumed.ingest_times.drain(..) {
                    if let Ok(lat) = now.duration_since(t) {
                        metrics::histogram!("ponte_reconciler_ingest_to_view_seconds")
                            .record(lat.as_secs_f64());
                    }
                }
                Ok((Outcome::Committed, parked))
            }
            Err(e) => {
                self.abandon(&e, std::mem::take(&mut consumed), after, consumer)?;
                Ok((Outcome::Aborted, ParkedAfter::default()))
            }
        }
    }

    /// After a failed epoch: counts and logs it, drops a producer that cannot go on, and sends
    /// the consumer back to the first offsets of `consumed` and of `after` (consumed since,
    /// over it; left empty). A partition revoked meanwhile is positioned by its next
    /// assignment instead. A partition still assigned that cannot be sent back is an error:
    /// the loop must stop rather than go on past inputs nothing applied ([`rewind`]).
    fn abandon<C: Consumer<ponte_bus::consume::SeekingContext>>(
        &mut self,
        e: &TxError,
        consumed: Consumed,
        after: &mut Consumed,
        consumer: &C,
    ) -> Result<(), ReconcilerError> {
        let fenced = e.is_fenced();
        let result = if fenced { "fenced" } else { "aborted" };
        metrics::counter!("ponte_reconciler_epochs_total", "result" => result).increment(1);
        tracing::warn!(
            error = %e,
            fenced,
            events = consumed.events,
            after = after.events,
            "epoch not committed; nothing of it is visible, its inputs are consumed again"
        );
        if e.is_fatal() {
            self.drop_producer();
        }
        let rewound =
            tokio::task::block_in_place(|| rewind(&Seeker(consumer), &rewind_to(&consumed, after)));
        after.clear();
        rewound
    }

    /// Steps 1–2: a transaction begun and every message handed to the producer. Returns the
    /// deliveries to wait for (changelog entries marked) and what step 3 commits.
    fn begin_and_send<C: Consumer<ponte_bus::consume::SeekingContext>>(
        &mut self,
        writes: &Writes,
        outputs: &[Output],
        consumed: &Consumed,
        consumer: &C,
    ) -> Result<
        (
            (Deliveries, Published),
            TopicPartitionList,
            ConsumerGroupMetadata,
        ),
        TxError,
    > {
        // The group generation the offsets are committed for is the one of the epoch's
        // assignment: a rebalance before its commit makes the commit fail, and the epoch is
        // consumed again by whoever owns its partitions then.
        let group = consumer
            .group_metadata()
            .ok_or_else(|| TxError::aborted("the consumer has no group metadata"))?;
        let mut offsets = TopicPartitionList::new();
        for (topic, partition, _, next) in consumed.partitions() {
            offsets
                .add_partition_offset(topic, partition, Offset::Offset(next))
                .map_err(|e| TxError::aborted(format!("offsets: {e}")))?;
        }
        self.producer()?;
        let Self {
            producer,
            faults,
            routes,
            ..
        } = self;
        let producer = producer
            .as_ref()
            .ok_or_else(|| TxError::fatal("no producer"))?;
        if producer.abort_unfinished() {
            // It finishes the earlier abort first, waiting for the broker.
            tokio::task::block_in_place(|| producer.begin())?;
        } else {
            producer.begin()?;
        }
        let sent = send_all(producer, routes, writes, outputs, faults);
        if sent.as_ref().is_err_and(|e| !e.is_fatal()) {
            tokio::task::block_in_place(|| producer.abort());
        }
        self.open = sent.is_ok();
        Ok((sent?, offsets, group))
    }

    /// Steps 2–4 once the messages are handed over.
    async fn acknowledge_and_commit(
        &mut self,
        deliveries: Deliveries,
        offsets: TopicPartitionList,
        group: ConsumerGroupMetadata,
    ) -> Result<Acknowledged, TxError> {
        let Self {
            producer, faults, ..
        } = self;
        let producer = producer
            .as_ref()
            .ok_or_else(|| TxError::fatal("no producer"))?;
        let mut result = acknowledge_and_commit(producer, deliveries, offsets, group, faults).await;
        if let Err(e) = &result
            && !e.is_fatal()
            && let Err(stuck) = bounded(producer, "abort_transaction", OP_TIMEOUT, |p| {
                p.abort();
                Ok(())
            })
            .await
        {
            // The abort did not return: the producer goes, the epoch's inputs are consumed
            // again, and the next producer's registration aborts the transaction.
            result = Err(stuck);
        }
        self.open = false;
        result
    }

    /// Aborts the transaction of an epoch sent and never completed (the consumer loop stopped
    /// on an error with one in flight), so readers of its partitions are not held up until the
    /// broker's transaction timeout. Nothing of it becomes visible either way.
    pub fn abort_open(&mut self) {
        if !std::mem::take(&mut self.open) {
            return;
        }
        if let Some(p) = &self.producer {
            tracing::warn!(
                "the consumer loop stopped with an epoch in flight; its transaction is aborted"
            );
            tokio::task::block_in_place(|| p.abort());
        }
    }
}

/// Where each partition read by an aborted epoch (`consumed`) and the epoch applied over it
/// (`after`) is consumed again from: its first offset in the earlier of the two that read it.
fn rewind_to<'c>(consumed: &'c Consumed, after: &'c Consumed) -> BTreeMap<(&'c str, i32), i64> {
    let mut firsts: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for (topic, partition, first, _) in consumed.partitions().chain(after.partitions()) {
        let at = firsts.entry((topic, partition)).or_insert(first);
        *at = (*at).min(first);
    }
    firsts
}

/// How often a partition is sent back before [`rewind`] gives up, and how long each try waits
/// for the consumer's fetcher to take the new position.
const SEEK_TRIES: u32 = 3;
const SEEK_WAIT: Duration = Duration::from_secs(5);

/// What [`rewind`] needs of the consumer.
trait Seek {
    fn seek(&self, topic: &str, partition: i32, offset: i64) -> Result<(), String>;
    /// Whether the partition is in the consumer's assignment now.
    fn assigned(&self, topic: &str, partition: i32) -> bool;
}

struct Seeker<'c, C>(&'c C);

impl<C: Consumer<ponte_bus::consume::SeekingContext>> Seek for Seeker<'_, C> {
    fn seek(&self, topic: &str, partition: i32, offset: i64) -> Result<(), String> {
        self.0
            .seek(topic, partition, Offset::Offset(offset), SEEK_WAIT)
            .map_err(|e| e.to_string())
    }

    fn assigned(&self, topic: &str, partition: i32) -> bool {
        self.0.assignment().is_ok_and(|a| {
            a.elements()
                .iter()
                .any(|e| e.topic() == topic && e.partition() == partition)
        })
    }
}

/// Sends each partition of an aborted epoch back to its first offset (`firsts`, from
/// [`rewind_to`]). A seek librdkafka refuses or does not confirm in time (a partition whose
/// fetcher is not started, or busy, as around a broker restart) is tried again; a partition
/// no longer assigned is left to its next assignment, which starts at the committed offset.
/// A partition still assigned that cannot be sent back fails: the consumer would go on from
/// past the aborted inputs and the next epoch would commit offsets beyond them — records
/// acknowledged to their senders and never applied. Stopping instead restarts the loop at the
/// committed offsets.
fn rewind(
    consumer: &impl Seek,
    firsts: &BTreeMap<(&str, i32), i64>,
) -> Result<(), ReconcilerError> {
    for (&(topic, partition), &first) in firsts {
        let mut tries = 0;
        loop {
            tries += 1;
            let Err(e) = consumer.seek(topic, partition, first) else {
                break;
            };
            if !consumer.assigned(topic, partition) {
                tracing::info!(%topic, partition, error = %e, "partition of an aborted epoch revoked meanwhile: its next assignment positions it");
                break;
            }
            tracing::warn!(%topic, partition, offset = first, tries, error = %e, "sending a partition of an aborted epoch back failed");
            if tries >= SEEK_TRIES {
                return Err(ReconcilerError::Consumer(format!(
                    "the inputs of an aborted epoch cannot be consumed again: {topic} [{partition}] not sent back to offset {first} after {tries} tries ({e}); stopping, so that a restart resumes at the committed offsets"
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(())
}

/// What a delivery is of.
#[derive(Debug, Clone, Copy)]
enum Delivery {
    Changelog,
    /// Any other output (changes, alerts, repartition messages, dead letters).
    Output,
}

/// What each of an epoch's messages is of, by its number in the transaction.
type Deliveries = Vec<Delivery>;

/// What [`Committer::send`] did with an epoch.
#[derive(Debug)]
pub enum Sent {
    /// Nothing was consumed.
    Empty,
    /// Its messages are with the producer; [`Committer::complete`] commits it.
    InFlight(InFlight),
    /// It could not be sent: nothing of it is visible; the consumer was sent back to its
    /// first offsets.
    Aborted,
}

/// An epoch whose transaction is open and whose messages are with the producer.
pub struct InFlight {
    writes: Arc<Writes>,
    /// How many outputs it sent.
    outputs: usize,
    parked: ParkedAfter,
    consumed: Consumed,
    deliveries: Deliveries,
    /// The messages and entries sent, by kind (counted once the epoch is committed; boxed, as
    /// an epoch is moved around whole).
    published: Box<Published>,
    offsets: TopicPartitionList,
    group: ConsumerGroupMetadata,
    /// The time [`Committer::send`] took.
    spent: Duration,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("writes", &self.writes.len())
            .field("outputs", &self.outputs)
            .field("events", &self.consumed.events)
            .finish_non_exhaustive()
    }
}

impl InFlight {
    /// The epoch's state writes, for the next epoch to read over ([`crate::topology::Pending`]).
    pub fn writes(&self) -> Arc<Writes> {
        Arc::clone(&self.writes)
    }
}

/// The messages an epoch sent, and the repartition entries they held, by kind.
#[derive(Debug, Default)]
struct Published {
    /// Kafka messages by `kind` label (a batch of repartition messages is one).
    messages: BTreeMap<&'static str, u64>,
    /// Repartition messages by `kind` label: what the batches held.
    entries: BTreeMap<&'static str, u64>,
    /// Changelog entries by state table (its key prefix).
    changelog: BTreeMap<&'static str, u64>,
}

impl Published {
    /// Counts a committed epoch's messages and its changelog entries
    /// (`ponte_reconciler_outputs_published_total{kind}`,
    /// `ponte_reconciler_changelog_entries_total{table}` for the changelog's by state table,
    /// and `ponte_reconciler_repartition_entries_published_total{kind}` for what the
    /// repartition batches held).
    fn count(self) {
        for (kind, n) in self.messages {
            metrics::counter!("ponte_reconciler_outputs_published_total", "kind" => kind)
                .increment(n);
        }
        metrics::counter!("ponte_reconciler_outputs_published_total", "kind" => "changelog")
            .increment(self.changelog.values().sum());
        for (table, n) in self.changelog {
            metrics::counter!("ponte_reconciler_changelog_entries_total", "table" => table)
                .increment(n);
        }
        for (kind, n) in self.entries {
            metrics::counter!("ponte_reconciler_repartition_entries_published_total", "kind" => kind)
                .increment(n);
        }
    }
}

/// Step 2's first half: every output and changelog entry of the epoch handed to the producer,
/// the repartition messages in batches, one per topic and partition ([`Batcher`]).
fn send_all(
    producer: &Transactional,
    routes: &Routes,
    writes: &Writes,
    outputs: &[Output],
    faults: &mut Faults,
) -> Result<(Deliveries, Published), TxError> {
    faults.reach(FaultPoint::Begun);
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(outputs.len() + writes.len());
    let mut published = Published::default();
    let mut batcher = Batcher::new(routes.partitions);
    let mut numbered = |d: usize, delivery: Delivery| {
        debug_assert_eq!(
            d,
            deliveries.len(),
            "messages are numbered in the order sent"
        );
        deliveries.push(delivery);
    };
    for o in outputs {
        if o.kind.is_internal() {
            // Never a tombstone; if one were, its empty entry is dead-lettered where it lands.
            batcher.push(
                o.kind,
                o.key.as_bytes(),
                o.payload.as_deref().unwrap_or_default(),
            );
            continue;
        }
        let headers = headers_of(o.kind);
        let d = producer.send(
            routes.topic(o.kind),
            routes.partition(o),
            o.key.as_bytes(),
            o.payload.as_deref(),
            Some(headers),
        )?;
        numbered(d, Delivery::Output);
        *published.messages.entry(o.kind.label()).or_default() += 1;
    }
    for batch in batcher.finish() {
        let d = producer.send(
            routes.topic(batch.kind),
            Some(batch.partition),
            b"",
            Some(&batch.payload),
            Some(headers_of(batch.kind)),
        )?;
        numbered(d, Delivery::Output);
        *published.messages.entry(batch.kind.label()).or_default() += 1;
        *published.entries.entry(batch.kind.label()).or_default() += batch.entries as u64;
    }
    // Derived tables (a partition's index) are the local store's only: a restore derives them.
    for (k, v) in writes.iter().filter(|(k, _)| !is_derived(k)) {
        let p = key_partition(k).ok_or_else(|| {
            TxError::aborted(format!(
                "state key without a partition prefix: {}",
                String::from_utf8_lossy(k)
            ))
        })?;
        let d = producer.send(routes.changelog(), Some(p), k, v.as_deref(), None)?;
        numbered(d, Delivery::Changelog);
        *published.changelog.entry(table_of(k)).or_default() += 1;
    }
    phase_took("send", started);
    Ok((deliveries, published))
}

/// What the broker acknowledged of a committed epoch.
struct Acknowledged {
    /// Each changelog partition's offset after the epoch's last entry.
    changelog_ends: BTreeMap<i32, i64>,
}

/// How much longer than its own timeout a transactional call may take before it is taken for
/// stuck ([`bounded`]).
const OP_GRACE: Duration = Duration::from_secs(10);

/// Runs the transactional call `f` (`what`) on a blocking thread and waits for it at most
/// `within` plus [`OP_GRACE`]. librdkafka bounds these calls by their timeout only as long as
/// its state machine moves: `send_offsets_to_transaction` waits for its answer without bound,
/// and a producer that lost every broker ([`ponte_bus::brokers`]) never gets one (issue 15: a
/// reconciler blocked in it for over three minutes after a broker restart, applying nothing).
/// A call that does not return in time fails the epoch with a fatal error: the producer is
/// replaced ([`Committer::abandon`]), and the thread left waiting holds the old one until
/// librdkafka lets go of it (or the process exits).
async fn bounded<P: Send + Sync + 'static, T: Send + 'static>(
    producer: &Arc<P>,
    what: &'static str,
    within: Duration,
    f: impl FnOnce(&P) -> Result<T, TxError> + Send + 'static,
) -> Result<T, TxError> {
    let p = Arc::clone(producer);
    let limit = within + OP_GRACE;
    // A thread of its own, not the runtime's blocking pool: the runtime waits for its blocking
    // tasks when it shuts down, and a call that never returns would hold the process up.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f(&p));
    });
    match tokio::time::timeout(limit, rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(TxError::fatal(format!("{what}: the call's thread died"))),
        Err(_) => {
            tracing::error!(
                call = what,
                seconds = limit.as_secs_f64(),
                "a transactional call did not return in time: the producer is replaced"
            );
            Err(TxError::fatal(format!(
                "{what} did not return within {:.1} s",
                limit.as_secs_f64()
            )))
        }
    }
}

/// Step 2's second half and steps 3–4: waits for the broker's acknowledgements, adds the
/// offsets and commits.
async fn acknowledge_and_commit(
    producer: &Arc<Transactional>,
    deliveries: Deliveries,
    offsets: TopicPartitionList,
    group: ConsumerGroupMetadata,
    faults: &mut Faults,
) -> Result<Acknowledged, TxError> {
    let mut started = Instant::now();
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let positions = producer.acknowledged().await?;
    if positions.len() != deliveries.len() {
        return Err(TxError::aborted(format!(
            "{} messages acknowledged of {} sent",
            positions.len(),
            deliveries.len()
        )));
    }
    for (of, (partition, offset)) in deliveries.into_iter().zip(positions) {
        match of {
            Delivery::Changelog => {
                let end = ends.entry(partition).or_insert(0);
                *end = (*end).max(offset + 1);
            }
            Delivery::Output => {}
        }
    }
    started = phase_took("acknowledged", started);
    faults.reach(FaultPoint::Sent);
    bounded(
        producer,
        "send_offsets_to_transaction",
        OP_TIMEOUT,
        move |p| p.send_offsets(&offsets, &group),
    )
    .await?;
    started = phase_took("offsets", started);
    faults.reach(FaultPoint::Offsets);
    // Up to four attempts of its timeout each ([`Transactional::commit`]).
    bounded(producer, "commit_transaction", OP_TIMEOUT * 4, |p| {
        p.commit()
    })
    .await?;
    phase_took("commit", started);
    Ok(Acknowledged {
        changelog_ends: ends,
    })
}

/// Milliseconds since the Unix epoch (a Kafka timestamp's unit).
pub(crate) fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The headers of an output. A batch of repartition messages carries `ponte-schema` and the
/// event type that tells it from a message sent alone ([`crate::topology::is_batch`]), the two
/// headers the reconciler reads back. The outputs other services read carry the source and
/// trace id as well.
fn headers_of(kind: OutputKind) -> OwnedHeaders {
    if kind.is_internal() {
        return OwnedHeaders::new_with_capacity(2)
            .insert(Header {
                key: ponte_bus::headers::SCHEMA,
                value: Some(kind.schema().as_bytes()),
            })
            .insert(Header {
                key: ponte_bus::headers::EVENT_TYPE,
                value: Some(kind.event_type().as_bytes()),
            });
    }
    EventHeaders {
        event_type: kind.event_type().to_owned(),
        schema: kind.schema().to_owned(),
        source: "reconciler".to_owned(),
        trace_id: String::new(),
    }
    .to_kafka()
}

/// Records how long a step of a committed epoch took
/// (`ponte_reconciler_commit_phase_seconds{phase}`), and returns when the next step starts.
/// The steps: `send` (outputs and changelog entries handed to the producer), `acknowledged`
/// (waiting until the broker acknowledged them all), `offsets` (the input offsets added to the
/// transaction), `commit` (the transaction committed) and `store` (the state written locally).
fn phase_took(phase: &'static str, started: Instant) -> Instant {
    let now = Instant::now();
    metrics::histogram!("ponte_reconciler_commit_phase_seconds", "phase" => phase)
        .record(now.duration_since(started).as_secs_f64());
    now
}

/// The epoch's outputs with only the last view change of each person or family: the changes
/// topic is compacted to the latest view per key, and a reader of the epoch sees the views as
/// of its end. Alerts, repartition messages and dead letters all stay, in order.
fn latest_views(outputs: Vec<Output>) -> Vec<Output> {
    let mut sent = std::collections::HashSet::new();
    let mut kept: Vec<Output> = outputs
        .into_iter()
        .rev()
        .filter(|o| o.kind != OutputKind::Change || sent.insert(o.key.clone()))
        .collect();
    kept.reverse();
    kept
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn out(kind: OutputKind, key: &str, payload: &str) -> Output {
        Output {
            kind,
            key: key.to_owned(),
            payload: Some(payload.as_bytes().to_vec()),
            partition: 0,
        }
    }

    #[test]
    fn changes_go_to_their_input_partition_when_the_topic_is_co_partitioned() {
        let on = |kind| Output {
            partition: 2,
            ..out(kind, "person:1", "v")
        };
        let topics = TopicsConfig {
            prefix: "ponte.".into(),
            partitions: 3,
            replication_factor: 1,
            overrides: Default::default(),
        };
        let keyed = Routes::new(&topics, "g", 6);
        assert_eq!(keyed.partition(&on(OutputKind::Change)), None);
        let by_input = keyed.changes_in_input_partitions();
        assert_eq!(by_input.partition(&on(OutputKind::Change)), Some(2));
        // Only changes: alerts and repartition messages keep their key's partition.
        assert_eq!(by_input.partition(&on(OutputKind::Alert)), None);
        assert_eq!(by_input.partition(&on(OutputKind::Member)), None);
    }

    #[test]
    fn an_aborted_epoch_and_the_one_applied_over_it_are_consumed_again_from_their_first_offsets() {
        let mut aborted = Consumed::default();
        for (topic, p, o) in [("a", 0, 10), ("a", 0, 11), ("a", 1, 5), ("b", 0, 7)] {
            aborted.record(topic, p, o, 1);
        }
        let mut after = Consumed::default();
        for (topic, p, o) in [("a", 0, 12), ("a", 2, 40), ("b", 0, 8), ("a", 0, 13)] {
            after.record(topic, p, o, 1);
        }
        let want: BTreeMap<(&str, i32), i64> =
            [(("a", 0), 10), (("a", 1), 5), (("a", 2), 40), (("b", 0), 7)]
                .into_iter()
                .collect();
        assert_eq!(rewind_to(&aborted, &after), want);
        assert_eq!(rewind_to(&after, &aborted), want, "whichever came first");
        assert_eq!(
            rewind_to(&aborted, &Consumed::default()),
            [(("a", 0), 10), (("a", 1), 5), (("b", 0), 7)]
                .into_iter()
                .collect()
        );
    }

    /// A consumer whose seeks fail a given number of times per partition.
    #[derive(Default)]
    struct FlakySeeks {
        /// Failures left before a partition's seek succeeds.
        fail: std::cell::RefCell<BTreeMap<(String, i32), u32>>,
        revoked: Vec<(String, i32)>,
        sought: std::cell::RefCell<Vec<(String, i32, i64)>>,
    }

    impl Seek for FlakySeeks {
        fn seek(&self, topic: &str, partition: i32, offset: i64) -> Result<(), String> {
            let mut fail = self.fail.borrow_mut();
            if let Some(left) = fail.get_mut(&(topic.to_owned(), partition))
                && *left > 0
            {
                *left -= 1;
                return Err("Local: Erroneous state".into());
            }
            self.sought
                .borrow_mut()
                .push((topic.to_owned(), partition, offset));
            Ok(())
        }

        fn assigned(&self, topic: &str, partition: i32) -> bool {
            !self.revoked.contains(&(topic.to_owned(), partition))
        }
    }

    #[test]
    fn a_transactional_call_that_never_returns_fails_the_epoch_for_good_and_holds_nothing_up() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let handle = Arc::new(());
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let started = Instant::now();
        // Stands in for send_offsets_to_transaction waiting for a coordinator it cannot reach.
        let err = rt
            .block_on(bounded(
                &handle,
                "send_offsets_to_transaction",
                Duration::ZERO,
                move |_| {
                    let _ = stuck.recv();
                    Ok(())
                },
            ))
            .unwrap_err();
        assert!(err.is_fatal(), "the producer must be replaced: {err}");
        assert!(
            err.to_string()
                .contains("send_offsets_to_transaction did not return")
        );
        assert!(started.elapsed() < OP_GRACE + Duration::from_secs(5));

        // A call that returns in time gives its own result, errors included.
        let ok = rt.block_on(bounded(
            &handle,
            "commit_transaction",
            Duration::ZERO,
            |_| Ok(7),
        ));
        assert_eq!(ok.unwrap(), 7);
        let refused = rt
            .block_on(bounded(
                &handle,
                "commit_transaction",
                Duration::ZERO,
                |_| Err::<(), _>(TxError::aborted("refused")),
            ))
            .unwrap_err();
        assert!(!refused.is_fatal());

        // The call still waits; the runtime's shutdown must not wait for it (the process
        // would not exit on SIGTERM).
        let shutting = Instant::now();
        drop(rt);
        assert!(shutting.elapsed() < Duration::from_secs(5));
        drop(release);
    }

    #[test]
    fn a_partition_of_an_aborted_epoch_that_cannot_be_sent_back_stops_the_loop() {
        let firsts: BTreeMap<(&str, i32), i64> = [(("a", 0), 10), (("a", 1), 5), (("b", 0), 7)]
            .into_iter()
            .collect();

        // A refusal that passes is tried again: every partition ends where it must.
        let flaky = FlakySeeks::default();
        flaky
            .fail
            .borrow_mut()
            .insert(("a".into(), 1), SEEK_TRIES - 1);
        rewind(&flaky, &firsts).unwrap();
        assert_eq!(
            *flaky.sought.borrow(),
            [("a".into(), 0, 10), ("a".into(), 1, 5), ("b".into(), 0, 7)]
        );

        // A partition revoked meanwhile is left to its next assignment.
        let revoked = FlakySeeks {
            revoked: vec![("a".into(), 1)],
            ..Default::default()
        };
        revoked.fail.borrow_mut().insert(("a".into(), 1), u32::MAX);
        rewind(&revoked, &firsts).unwrap();
        assert_eq!(
            *revoked.sought.borrow(),
            [("a".into(), 0, 10), ("b".into(), 0, 7)]
        );

        // One still assigned that never goes back is an error naming it: going on would
        // commit offsets past inputs nothing applied.
        let stuck = FlakySeeks::default();
        stuck.fail.borrow_mut().insert(("a".into(), 1), u32::MAX);
        let err = rewind(&stuck, &firsts).unwrap_err().to_string();
        assert!(err.contains("a [1]") && err.contains("offset 5"), "{err}");
        assert!(err.contains("Erroneous state"), "{err}");
    }

    #[test]
    fn repartition_batches_carry_the_schema_and_their_event_type_and_the_outputs_others_read_all_four()
     {
        use crate::topology::INTERNAL_SCHEMA;
        use rdkafka::message::Headers as _;
        let names = |kind| -> Vec<(String, String)> {
            headers_of(kind)
                .iter()
                .map(|h| {
                    let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                    (h.key.to_owned(), value.into_owned())
                })
                .collect()
        };
        for kind in [
            OutputKind::Crosswalk,
            OutputKind::HealthByNis,
            OutputKind::Member,
        ] {
            assert_eq!(
                names(kind),
                [
                    ("ponte-schema".to_owned(), INTERNAL_SCHEMA.to_owned()),
                    ("ponte-event-type".to_owned(), kind.event_type().to_owned())
                ],
                "{kind:?}"
            );
            assert!(crate::topology::is_batch(Some(
                kind.event_type().as_bytes()
            )));
        }
        for kind in [
            OutputKind::Change,
            OutputKind::Alert,
            OutputKind::DeadLetter,
        ] {
            let keys: Vec<String> = names(kind).into_iter().map(|(k, _)| k).collect();
            assert_eq!(
                keys,
                [
                    "ponte-event-type",
                    "ponte-schema",
                    "ponte-source",
                    "ponte-trace-id"
                ],
                "{kind:?}"
            );
        }
    }

    #[test]
    fn only_the_last_view_of_a_key_is_sent_and_every_other_output_stays_in_order() {
        let outputs = vec![
            out(OutputKind::Change, "p1", "v1"),
            out(OutputKind::Alert, "p1", "a1"),
            out(OutputKind::Change, "p2", "w1"),
            out(OutputKind::Member, "f1", "m1"),
            out(OutputKind::Change, "p1", "v2"),
            out(OutputKind::Alert, "p1", "a2"),
            out(OutputKind::Member, "f1", "m2"),
        ];
        let kept: Vec<(OutputKind, String)> = latest_views(outputs)
            .into_iter()
            .map(|o| (o.kind, String::from_utf8(o.payload.unwrap()).unwrap()))
            .collect();
        assert_eq!(
            kept,
            vec![
                (OutputKind::Alert, "a1".to_owned()),
                (OutputKind::Change, "w1".to_owned()),
                (OutputKind::Member, "m1".to_owned()),
                (OutputKind::Change, "v2".to_owned()),
                (OutputKind::Alert, "a2".to_owned()),
                (OutputKind::Member, "m2".to_owned()),
            ]
        );
    }

    #[test]
    fn an_epoch_keeps_the_first_and_next_offset_of_each_partition_it_consumed() {
        let mut c = Consumed::default();
        assert!(c.is_empty());
        c.record("b", 1, 40, 1);
        c.record("a", 0, 7, 1);
        c.record("b", 1, 41, 1);
        c.record("b", 0, 3, 1);
        c.record("b", 1, 45, 300);
        let seen: Vec<(&str, i32, i64, i64)> = c.partitions().collect();
        assert_eq!(seen, vec![("a", 0, 7, 8), ("b", 0, 3, 4), ("b", 1, 40, 46)]);
        // A batch of repartition messages brings its entries.
        assert_eq!(c.events, 304);
        c.clear();
        assert!(c.is_empty() && c.partitions().next().is_none());
    }

    #[test]
    fn a_fault_point_spec_names_a_known_point_a_count_and_a_mode() {
        let f = Faults::parse("sent").unwrap();
        assert_eq!(f.armed, Some((FaultPoint::Sent, 1, false)));
        let f = Faults::parse("committed:3:stop").unwrap();
        assert_eq!(f.armed, Some((FaultPoint::Committed, 3, true)));
        for bad in ["flushed", "sent:x", "sent:2:pause", ""] {
            assert!(Faults::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
