//! The consumer driver: polls the inputs, applies each event to the open epoch
//! ([`crate::topology`]), dead-letters what cannot be applied, and commits the epoch
//! ([`crate::epoch`]) when it is full or has lingered long enough ([`OpenEpoch`]: larger and
//! longer while the consumer is behind). An epoch's messages are taken as they are fetched and
//! applied when it is committed, on several threads at once ([`crate::lanes`]): each
//! partition's in order, in runs of up to [`READ_AHEAD_RUN`] whose state keys are read in one
//! batched lookup first ([`Tx::read_ahead`]).
use std::time::{Duration, Instant, SystemTime};

use futures::FutureExt as _;
use ponte_bus::Topic;
use ponte_bus::TopicsConfig;
use ponte_bus::consume::{Assignment, SeekingContext};
use ponte_bus::headers::EventHeaders;
use ponte_proto::events::v1::{DeadLetter, Event};
use ponte_runtime::Readiness;
use ponte_store::Store;
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use tokio_util::sync::CancellationToken;

use crate::ReconcilerError;
use crate::config::Behind;
use crate::epoch::{Committer, Consumed, InFlight, Outcome, Sent};
use crate::gauges::{read_state, refresh_gauges};
use crate::grpc::ReadPath;
use crate::lanes::Lanes;
use crate::topology::{
    Applied, Entries, Input, OutputKind, ParkedCounts, Pending, READ_AHEAD_RUN, Screened, Topology,
    Tx, Unapplicable, entries_in, entries_of, is_batch,
};

/// What the consumer loop works with; borrowed from the process wiring ([`crate::service`]).
pub(crate) struct Driver<'a> {
    pub topology: &'a Topology,
    pub inputs: &'a Inputs,
    pub store: &'a Store,
    pub consumer: &'a StreamConsumer<SeekingContext>,
    pub assignment: &'a Assignment,
    pub committer: &'a mut Committer,
    pub readiness: &'a Readiness,
    pub read_path: &'a ReadPath,
    /// When an epoch is committed.
    pub limits: EpochLimits,
    /// Threads applying an epoch's partitions at once ([`crate::lanes`]).
    pub apply_threads: usize,
    pub shutdown: &'a CancellationToken,
}

/// When an epoch is committed: at `batch_max` events or `batch_linger` after its first event,
/// or by `behind`'s limits once the epoch is behind ([`Behind`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct EpochLimits {
    pub batch_max: usize,
    pub batch_linger: Duration,
    pub behind: Behind,
}

/// The open epoch's clock: when its first event came and whether it is behind.
#[derive(Debug)]
struct OpenEpoch {
    limits: EpochLimits,
    started: Instant,
    behind: bool,
}

impl OpenEpoch {
    fn new(limits: EpochLimits) -> Self {
        Self {
            limits,
            started: Instant::now(),
            behind: false,
        }
    }

    /// A new epoch starts with its first event, at `now`.
    fn begin(&mut self, now: Instant) {
        self.started = now;
        self.behind = false;
    }

    /// Notes a message fetched for the epoch, created at `created_ms` (Unix milliseconds, when
    /// the message has a timestamp), fetched at `now_ms`. True when it made the epoch behind.
    fn fetched(&mut self, created_ms: Option<i64>, now_ms: i64) -> bool {
        if self.behind {
            return false;
        }
        // A message created after it was fetched (clocks apart) is not old.
        self.behind = created_ms
            .and_then(|c| u64::try_from(now_ms.saturating_sub(c)).ok())
            .is_some_and(|age| Duration::from_millis(age) > self.limits.behind.after);
        self.behind
    }

    /// Most events of the epoch.
    fn batch_max(&self) -> usize {
        if self.behind {
            self.limits.behind.batch_max
        } else {
            self.limits.batch_max
        }
    }

    /// How long after its first event the epoch is committed at the latest.
    fn linger(&self) -> Duration {
        if self.behind {
            self.limits.behind.linger
        } else {
            self.limits.batch_linger
        }
    }

    /// How long the epoch may still linger at `now`.
    fn left(&self, now: Instant) -> Duration {
        self.linger()
            .saturating_sub(now.saturating_duration_since(self.started))
    }
}

/// The message's creation time (Unix milliseconds), if it has one.
fn created_ms(msg: &BorrowedMessage<'_>) -> Option<i64> {
    msg.timestamp().to_millis()
}

impl Driver<'_> {
    /// Runs until `shutdown` (the open epoch is then committed) or a failure.
    pub(crate) async fn run(self) -> Result<(), ReconcilerError> {
        let Driver {
            topology,
            inputs,
            store,
            consumer,
            assignment,
            committer,
            readiness,
            read_path,
            shutdown,
            ..
        } = self;
        // The consumer loop: events are applied to an in-memory epoch over the local state and
        // committed together ([`crate::epoch`]). Work consumed under an older assignment generation
        // is dropped uncommitted (its partitions may belong to another instance now); it is
        // consumed again from the group's committed offsets, which is harmless.
        //
        // Epochs are pipelined: once an epoch's messages are handed to the producer, the loop
        // applies the next epoch (reading the state through the sent epoch's writes, `pending`)
        // while the broker acknowledges them, and completes the commit when that epoch is full
        // or no input is at hand — never waiting for input with an epoch in flight. If the
        // epoch in flight is aborted, what was applied over it is dropped with it.
        //
        // The owned partitions' parked records are counted from each commit
        // ([`crate::topology::ParkedCounts`]); the epochs read the store through them, which
        // screens out the scans of a layout a partition does not hold ([`Screened`]).
        let parked = ParkedCounts::default();
        let screened = Screened::new(store, &parked);
        let pending = Pending::new(&screened);
        // The open epoch: the messages fetched for it, applied when it is committed on
        // `apply_threads` lanes at once ([`crate::lanes`]). A fetch returns a run of one
        // partition's messages, so lanes applying each run as it came would rarely have more
        // than one partition to share out.
        let mut fetched: Vec<BorrowedMessage<'_>> = Vec::new();
        let mut lanes = Lanes::new(&pending, self.apply_threads);
        let mut consumed = Consumed::default();
        let mut in_flight: Option<InFlight> = None;
        let mut last_gauges = Instant::now() - Duration::from_secs(60);
        let mut generation = assignment.generation();
        // The partitions whose records flow: owned and restored.
        let mut owned = assignment.prepared_partition_numbers();
        parked.reassign(store, &owned)?;
        let mut epoch = OpenEpoch::new(self.limits);
        let behind_epochs = metrics::counter!("ponte_reconciler_epochs_behind_total");
        // Time spent applying the open epoch's events (not waiting for them, not committing).
        let mut applying = Duration::ZERO;
        // Set on every event: the handles are looked up once, not per event.
        let uncommitted = metrics::gauge!("ponte_reconciler_uncommitted_events");
        let counters = TopicCounters::of(inputs);
        // Completes the commit of the epoch in flight, if any. True when it was aborted: the
        // open epoch, applied over it, was dropped with it and is consumed again.
        macro_rules! complete_in_flight {
            () => {
                match in_flight.take() {
                    None => false,
                    Some(epoch) => {
                        let (outcome, counts) =
                            committer.complete(epoch, consumer, &mut consumed).await?;
                        pending.clear();
                        if outcome == Outcome::Committed {
                            parked.follow(&counts);
                            false
                        } else {
                            lanes.discard();
                            fetched.clear();
                            true
                        }
                    }
                }
            };
        }
        let result: Result<(), ReconcilerError> = loop {
            // Checked here too: while epochs are in flight, input at hand is applied without
            // going through the waits below, which also watch for the shutdown.
            if shutdown.is_cancelled() {
                break Ok(());
            }
            if let Some(why) = assignment.failure() {
                break Err(ReconcilerError::Startup(format!(
                    "partitions could not be prepared: {why}"
                )));
            }
            // Partitions are assigned paused and restored on the consumer's own thread
            // ([`ponte_bus::consume`]); those restored since are resumed here, between polls.
            if assignment.resume_prepared(consumer)? {
                owned = assignment.prepared_partition_numbers();
                parked.reassign(store, &owned)?;
                // Readiness follows at once.
                last_gauges = Instant::now() - Duration::from_secs(60);
            }
            if last_gauges.elapsed() >= Duration::from_secs(1) {
                if let Some(lost) = consumer.context().brokers_lost(Instant::now()) {
                    break Err(ReconcilerError::ClientLost(format!(
                        "the consumer has known no Kafka broker for {} s (librdkafka dropped them all on a metadata answer that listed none, as a broker restarting gives) and would never rejoin its group",
                        lost.as_secs()
                    )));
                }
                refresh_gauges(
                    store,
                    assignment,
                    readiness,
                    read_state(read_path),
                    &parked,
                    inputs.by_topic.len(),
                );
                last_gauges = Instant::now();
            }
            // With an epoch in flight, a message at hand is applied over it (while the open
            // epoch is within its linger); with none at hand the epoch in flight is committed
            // before waiting.
            let at_hand = match in_flight {
                Some(_) if consumed.is_empty() || !epoch.left(Instant::now()).is_zero() => {
                    consumer.recv().now_or_never()
                }
                _ => None,
            };
            if at_hand.is_none() && complete_in_flight!() {
                applying = Duration::ZERO;
                uncommitted.set(0.0);
            }
            let mut next = if at_hand.is_some() {
                at_hand
            } else if consumed.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => break Ok(()),
                    m = consumer.recv() => Some(m),
                    _ = assignment.changed() => None,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => None,
                }
            } else {
                // The epoch is committed `batch_linger_ms` (`behind_linger_ms`) after its first
                // event at the latest, however steadily events keep arriving.
                let left = epoch.left(Instant::now());
                tokio::select! {
                    _ = shutdown.cancelled() => break Ok(()),
                    m = tokio::time::timeout(left, consumer.recv()) => m.ok(),
                }
            };
            if assignment.generation() != generation {
                // The epoch in flight was sent under the old generation: its commit is refused
                // unless the group's generation is unchanged (then it commits). If it is
                // aborted, the message fetched with the change (if any) is sent back with the
                // open epoch, to be consumed again in its partition's order.
                if in_flight.is_some()
                    && let Some(Ok(msg)) = &next
                {
                    consumed.record(msg.topic(), msg.partition(), msg.offset(), events_in(msg));
                }
                if complete_in_flight!() {
                    next = None;
                }
                if !consumed.is_empty() {
                    tracing::info!(
                        events = consumed.events,
                        "assignment changed: the open epoch is dropped and consumed again from the committed offsets"
                    );
                }
                lanes.discard();
                fetched.clear();
                consumed = Consumed::default();
                applying = Duration::ZERO;
                uncommitted.set(0.0);
                generation = assignment.generation();
                owned = assignment.prepared_partition_numbers();
                // A partition kept may have been revoked and restored meanwhile: every one is
                // read again from the store.
                parked.clear();
                parked.reassign(store, &owned)?;
                // The message (if any) was fetched under the new assignment: it is applied below.
            }
            let commit_now = match next {
                Some(Ok(msg)) => {
                    if consumed.is_empty() {
                        epoch.begin(Instant::now());
                    }
                    // With it, the messages already fetched (never waiting for more), up to
                    // the epoch's limit; they are applied when the epoch is committed. A
                    // rebalance is served inside a poll and returns no message: taking them
                    // ends there, and the next message goes through the generation check above.
                    let now_ms = crate::epoch::unix_millis();
                    if epoch.fetched(created_ms(&msg), now_ms) {
                        behind_epochs.increment(1);
                    }
                    consumed.record(msg.topic(), msg.partition(), msg.offset(), events_in(&msg));
                    fetched.push(msg);
                    while consumed.events < epoch.batch_max()
                        && assignment.generation() == generation
                    {
                        match consumer.recv().now_or_never() {
                            Some(Ok(m)) => {
                                if epoch.fetched(created_ms(&m), now_ms) {
                                    behind_epochs.increment(1);
                                }
                                consumed.record(
                                    m.topic(),
                                    m.partition(),
                                    m.offset(),
                                    events_in(&m),
                                );
                                fetched.push(m);
                            }
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "consumer error");
                                metrics::counter!("ponte_reconciler_consumer_errors_total")
                                    .increment(1);
                                break;
                            }
                            None => break,
                        }
                    }
                    uncommitted.set(consumed.events as f64);
                    consumed.events >= epoch.batch_max()
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    metrics::counter!("ponte_reconciler_consumer_errors_total").increment(1);
                    false
                }
                None => true,
            };
            if commit_now {
                let t = Instant::now();
                apply_fetched(
                    &mut lanes,
                    &mut fetched,
                    &mut consumed,
                    topology,
                    inputs,
                    &counters,
                )?;
                applying += t.elapsed();
                // One transaction at a time: the epoch before is committed first (if it is
                // aborted, this one is dropped with it).
                if complete_in_flight!() {
                    applying = Duration::ZERO;
                }
                if !consumed.is_empty() {
                    metrics::histogram!("ponte_reconciler_epoch_apply_seconds")
                        .record(std::mem::take(&mut applying).as_secs_f64());
                }
                if let Sent::InFlight(epoch) =
                    committer.send(lanes.merged(), &mut consumed, consumer)?
                {
                    pending.set(epoch.writes());
                    in_flight = Some(epoch);
                }
                uncommitted.set(0.0);
            }
        };
        // The epoch in flight is committed (or aborted) whatever ended the loop: no
        // transaction is left open.
        let completed: Result<bool, ReconcilerError> = async { Ok(complete_in_flight!()) }.await;
        let result = result.and(completed.map(drop));
        if result.is_ok() && assignment.generation() == generation {
            // Whatever was applied in memory is committed with its offsets; nothing is half-written.
            apply_fetched(
                &mut lanes,
                &mut fetched,
                &mut consumed,
                topology,
                inputs,
                &counters,
            )?;
            committer
                .commit(lanes.merged(), &mut consumed, consumer)
                .await?;
        }
        result
    }
}

/// Applies the open epoch's `fetched` messages (taken) on the lanes — each lane its
/// partitions' messages in their order, in runs of up to [`READ_AHEAD_RUN`] whose state keys
/// are read in one lookup first ([`Tx::read_ahead`]) — then evaluates the views they deferred
/// ([`Topology::finish`]); their ingest times go to `consumed`.
fn apply_fetched(
    lanes: &mut Lanes<'_>,
    fetched: &mut Vec<BorrowedMessage<'_>>,
    consumed: &mut Consumed,
    topology: &Topology,
    inputs: &Inputs,
    counters: &[TopicCounters],
) -> Result<(), ReconcilerError> {
    lanes.apply(
        fetched,
        BorrowedMessage::partition,
        |tx, ingest_times, msgs| {
            for run in msgs.chunks(READ_AHEAD_RUN) {
                let unpacked: Vec<Unpacked<'_>> = run.iter().map(|m| unpack(inputs, m)).collect();
                tx.read_ahead(run.iter().zip(&unpacked).flat_map(|(m, u)| {
                    let keys: Vec<Vec<u8>> = match u {
                        Unpacked::One(_, input) => topology.keys_read(
                            *input,
                            m.key().unwrap_or_default(),
                            m.payload().unwrap_or_default(),
                        ),
                        Unpacked::Batch(_, input, Ok(batch)) => batch
                            .keys
                            .iter()
                            .zip(&batch.entries)
                            .flat_map(|(k, e)| topology.keys_read(*input, k, e))
                            .collect(),
                        Unpacked::Batch(_, _, Err(_)) | Unpacked::Unknown => Vec::new(),
                    };
                    keys.into_iter().map(move |k| (m.partition(), k))
                }))?;
                for (msg, u) in run.iter().zip(unpacked) {
                    apply_message(topology, counters, tx, ingest_times, msg, u)?;
                }
            }
            Ok(())
        },
    )?;
    fetched.clear();
    consumed.ingest_times.extend(lanes.take_ingest_times());
    lanes.finish(topology)
}

pub(crate) struct Inputs {
    pub by_topic: Vec<(String, Input)>,
}

impl Inputs {
    pub(crate) fn new(topics: &TopicsConfig, group: &str) -> Self {
        Self {
            by_topic: vec![
                (topics.name(Topic::RegistryPersons), Input::Registry),
                (topics.name(Topic::EducationAttendance), Input::Education),
                (topics.name(Topic::HealthRecords), Input::Health),
                (
                    topics.name(Topic::AssistancePerson),
                    Input::AssistancePerson,
                ),
                (
                    topics.name(Topic::AssistanceFamily),
                    Input::AssistanceFamily,
                ),
                (
                    topics.reconciler_name(Topic::ReconcilerCrosswalk, group),
                    Input::Crosswalk,
                ),
                (
                    topics.reconciler_name(Topic::ReconcilerHealthByNis, group),
                    Input::HealthByNis,
                ),
                (
                    topics.reconciler_name(Topic::ReconcilerMembers, group),
                    Input::Members,
                ),
            ],
        }
    }

    /// The input a topic is, and where it is in [`Inputs::by_topic`].
    fn position(&self, topic: &str) -> Option<(usize, Input)> {
        self.by_topic
            .iter()
            .position(|(t, _)| t == topic)
            .map(|i| (i, self.by_topic[i].1))
    }
}

fn to_system_time(t: &ponte_proto::Timestamp) -> SystemTime {
    SystemTime::UNIX_EPOCH
        + Duration::new(
            u64::try_from(t.seconds).unwrap_or(0),
            u32::try_from(t.nanos).unwrap_or(0),
        )
}

/// The per-topic counters of the consumer loop, looked up once instead of per message (a
/// labelled `counter!` finds its series in the registry each time it runs).
struct TopicCounters {
    consumed: metrics::Counter,
    /// Repartition messages read, alone or in batches (`consumed` counts Kafka messages).
    entries: metrics::Counter,
    applied: metrics::Counter,
    stale: metrics::Counter,
    parked: metrics::Counter,
    erased: metrics::Counter,
}

impl TopicCounters {
    /// One per input topic, in [`Inputs::by_topic`] order.
    fn of(inputs: &Inputs) -> Vec<Self> {
        inputs
            .by_topic
            .iter()
            .map(|(topic, _)| TopicCounters {
                consumed: metrics::counter!("ponte_reconciler_events_consumed_total", "topic" => topic.clone()),
                entries: metrics::counter!("ponte_reconciler_repartition_entries_consumed_total", "topic" => topic.clone()),
                applied: metrics::counter!("ponte_reconciler_events_applied_total", "topic" => topic.clone()),
                stale: metrics::counter!("ponte_reconciler_events_ignored_total", "topic" => topic.clone(), "reason" => "stale_version"),
                parked: metrics::counter!("ponte_reconciler_events_parked_total", "topic" => topic.clone()),
                erased: metrics::counter!("ponte_reconciler_erasures_applied_total", "topic" => topic.clone()),
            })
            .collect()
    }
}

/// What a fetched message holds, read before its run is applied.
enum Unpacked<'m> {
    /// Not from a subscribed topic.
    Unknown,
    /// One event, or one repartition message sent alone; with the input's place in
    /// [`Inputs::by_topic`].
    One(usize, Input),
    /// A batch of repartition messages ([`crate::topology::Batcher`]), or why it cannot be read.
    Batch(usize, Input, Result<Entries<'m>, String>),
}

/// True when the message is a batch of repartition messages: sent without a key, tagged as a
/// batch ([`is_batch`]). Events and single repartition messages always have a key.
fn is_batch_message(msg: &BorrowedMessage<'_>) -> bool {
    msg.key().is_none_or(<[u8]>::is_empty)
        && is_batch(EventHeaders::value(
            msg.headers(),
            ponte_bus::headers::EVENT_TYPE,
        ))
}

fn unpack<'m>(inputs: &Inputs, msg: &'m BorrowedMessage<'_>) -> Unpacked<'m> {
    match inputs.position(msg.topic()) {
        None => Unpacked::Unknown,
        Some((i, input)) if input.is_internal() && is_batch_message(msg) => {
            Unpacked::Batch(i, input, entries_of(msg.payload().unwrap_or_default()))
        }
        Some((i, input)) => Unpacked::One(i, input),
    }
}

/// How many events a fetched message brings to its epoch: a batch's entries, 1 for any other
/// message (an epoch's bounds count events, [`OpenEpoch::batch_max`]).
fn events_in(msg: &BorrowedMessage<'_>) -> usize {
    if is_batch_message(msg) {
        entries_in(msg.payload().unwrap_or_default())
    } else {
        1
    }
}

fn apply_message(
    topology: &Topology,
    counters: &[TopicCounters],
    tx: &mut Tx<'_>,
    ingest_times: &mut Vec<SystemTime>,
    msg: &BorrowedMessage<'_>,
    unpacked: Unpacked<'_>,
) -> Result<(), ReconcilerError> {
    let topic = msg.topic();
    let (Unpacked::One(i, input) | Unpacked::Batch(i, input, _)) = unpacked else {
        // Only the subscribed topics are ever delivered.
        metrics::counter!("ponte_reconciler_events_consumed_total", "topic" => topic.to_owned())
            .increment(1);
        metrics::counter!("ponte_reconciler_events_ignored_total", "topic" => topic.to_owned(), "reason" => "unknown_topic").increment(1);
        return Ok(());
    };
    let Some(counters) = counters.get(i) else {
        return Ok(());
    };
    counters.consumed.increment(1);
    tx.set_partition(msg.partition());
    let payload = msg.payload().unwrap_or_default();
    let whole = Place { msg, entry: None };
    // A message without the header is read as its topic's schema (tools that produce by hand
    // rarely set headers); one that names another schema is not guessed at.
    if let Some(schema) = EventHeaders::value(msg.headers(), ponte_bus::headers::SCHEMA)
        .filter(|s| !input.reads_schema(s))
    {
        let why = Unapplicable::of_event(
            "unknown_schema",
            format!(
                "schema {:?} on a topic of {}",
                String::from_utf8_lossy(schema),
                input.schema()
            ),
        );
        dead_letter(tx, &whole, input, None, payload, &why);
        return Ok(());
    }
    let mut applying = Applying {
        topology,
        counters,
        tx,
        ingest_times,
    };
    match unpacked {
        Unpacked::Batch(_, _, Ok(batch)) => {
            counters.entries.increment(batch.entries.len() as u64);
            for (n, entry) in batch.entries.into_iter().enumerate() {
                let place = Place {
                    msg,
                    entry: Some(n),
                };
                applying.repartitioned(&place, input, entry)?;
            }
        }
        Unpacked::Batch(_, _, Err(why)) => {
            let why = Unapplicable::of_event(
                "malformed",
                format!("undecodable ponte.reconciler.v1.RepartitionBatch: {why}"),
            );
            dead_letter(applying.tx, &whole, input, None, payload, &why);
        }
        _ if input.is_internal() => {
            counters.entries.increment(1);
            applying.repartitioned(&whole, input, payload)?;
        }
        _ => applying.event(&whole, input, payload)?,
    }
    Ok(())
}

/// What applying one message's events works with.
struct Applying<'a, 't> {
    topology: &'a Topology,
    counters: &'a TopicCounters,
    tx: &'a mut Tx<'t>,
    ingest_times: &'a mut Vec<SystemTime>,
}

impl Applying<'_, '_> {
    /// Applies one event of a shared input topic.
    fn event(
        &mut self,
        place: &Place<'_, '_>,
        input: Input,
        payload: &[u8],
    ) -> Result<(), ReconcilerError> {
        let (applied, event) = if payload.is_empty() {
            (
                Applied::Invalid(Unapplicable::of_event("malformed", "empty payload")),
                None,
            )
        } else {
            match Event::decode(payload) {
                Ok(e) => (self.topology.apply(self.tx, input, &e)?, Some(e)),
                Err(e) => (
                    Applied::Invalid(Unapplicable::of_event(
                        "malformed",
                        format!("undecodable ponte.events.v1.Event: {e}"),
                    )),
                    None,
                ),
            }
        };
        // Ingest-to-view: measured where a record reaches a view, not where it is forwarded
        // (health records by CNS/CPF are measured on their second hop).
        if matches!(applied, Applied::Changed)
            && input != Input::Health
            && let Some(t) = event.as_ref().and_then(|e| e.ingest_time.as_ref())
        {
            self.ingest_times.push(to_system_time(t));
        }
        if matches!(applied, Applied::Erased) {
            tracing::info!(
                topic = %place.msg.topic(),
                record_id = %event.as_ref().map(|e| ponte_runtime::telemetry::mask_ids_in(&e.record_id)).unwrap_or_default(),
                "erasure applied"
            );
        }
        self.outcome(place, input, event.as_ref(), payload, &applied);
        Ok(())
    }

    /// Applies one repartition message, sent alone or in a batch (`place` says which).
    fn repartitioned(
        &mut self,
        place: &Place<'_, '_>,
        input: Input,
        entry: &[u8],
    ) -> Result<(), ReconcilerError> {
        let applied = if entry.is_empty() {
            Applied::Invalid(Unapplicable::of_event("malformed", "empty payload"))
        } else {
            let (applied, ingest) = self.topology.apply_internal(self.tx, input, entry)?;
            if let (Applied::Changed, Some(t)) = (&applied, &ingest) {
                self.ingest_times.push(to_system_time(t));
            }
            applied
        };
        self.outcome(place, input, None, entry, &applied);
        Ok(())
    }

    /// Counts what applying one event or repartition message did, and dead-letters it if it
    /// could not be applied.
    fn outcome(
        &mut self,
        place: &Place<'_, '_>,
        input: Input,
        event: Option<&Event>,
        payload: &[u8],
        applied: &Applied,
    ) {
        counted(self.counters, applied);
        if let Applied::Invalid(why) = applied {
            dead_letter(self.tx, place, input, event, payload, why);
        }
    }
}

/// Counts what applying one event or repartition message did.
fn counted(counters: &TopicCounters, applied: &Applied) {
    match applied {
        Applied::Changed => counters.applied.increment(1),
        Applied::Unchanged => counters.stale.increment(1),
        Applied::Parked => counters.parked.increment(1),
        Applied::Erased => counters.erased.increment(1),
        // Counted where it is dead-lettered.
        Applied::Invalid(_) => {}
    }
}

/// Where an event or repartition message was read: its message, and its place in the
/// message's batch if it came in one.
struct Place<'a, 'm> {
    msg: &'a BorrowedMessage<'m>,
    entry: Option<usize>,
}

impl std::fmt::Display for Place<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} partition {} offset {}",
            self.msg.topic(),
            self.msg.partition(),
            self.msg.offset()
        )?;
        if let Some(n) = self.entry {
            write!(f, " entry {n}")?;
        }
        Ok(())
    }
}

/// Sends an event (or one repartition message of a batch) that cannot be applied to the
/// dead-letter topic, in the epoch's transaction (so it is out exactly when the epoch's offsets
/// are committed), counted by class and logged with its identifiers masked. `payload` is what
/// could not be applied: the message, or the batch's entry.
fn dead_letter(
    tx: &mut Tx<'_>,
    place: &Place<'_, '_>,
    input: Input,
    event: Option<&Event>,
    payload: &[u8],
    why: &Unapplicable,
) {
    let topic = place.msg.topic();
    let record_id = event.map(|e| e.record_id.clone()).unwrap_or_default();
    let source_system = event
        .map(|e| e.source_system.as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or("reconciler")
        .to_owned();
    tracing::warn!(
        %topic,
        position = %place,
        record_id = %ponte_runtime::telemetry::mask_ids_in(&record_id),
        source = %source_system,
        error_type = why.error_type,
        reason = %ponte_runtime::telemetry::mask_ids_in(&why.to_string()),
        "event cannot be applied; sent to the dead-letter topic"
    );
    metrics::counter!("ponte_reconciler_events_dead_lettered_total", "topic" => topic.to_owned(), "error_type" => why.error_type).increment(1);
    let letter = DeadLetter {
        source_system: source_system.clone(),
        reason: why.to_string(),
        error_type: why.error_type.to_owned(),
        field: why.field.clone(),
        position: place.to_string(),
        original: payload.to_vec(),
        content_type: format!(
            "application/x-protobuf; messageType={}",
            input.message_type()
        ),
        received_time: event.and_then(|e| e.ingest_time),
        record_id,
        // Who sent the event that could not be applied, as its adapter stamped it.
        sender: event.map(|e| e.sender.clone()).unwrap_or_default(),
        request_id: event.map(|e| e.request_id.clone()).unwrap_or_default(),
    };
    tx.emit(
        OutputKind::DeadLetter,
        source_system,
        letter.encode_to_vec(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: EpochLimits = EpochLimits {
        batch_max: 5_000,
        batch_linger: Duration::from_millis(50),
        behind: Behind {
            after: Duration::from_secs(1),
            batch_max: 20_000,
            linger: Duration::from_millis(150),
        },
    };

    #[test]
    fn an_epoch_of_fresh_messages_keeps_the_normal_limits() {
        let mut epoch = OpenEpoch::new(LIMITS);
        let t0 = Instant::now();
        epoch.begin(t0);
        let now_ms = 1_000_000;
        // Created up to the threshold before their fetch, or without a timestamp.
        for created in [Some(now_ms), Some(now_ms - 1_000), None] {
            assert!(!epoch.fetched(created, now_ms));
        }
        assert_eq!(epoch.batch_max(), 5_000);
        assert_eq!(epoch.left(t0), Duration::from_millis(50));
        assert_eq!(
            epoch.left(t0 + Duration::from_millis(20)),
            Duration::from_millis(30)
        );
        assert!(epoch.left(t0 + Duration::from_millis(50)).is_zero());
    }

    #[test]
    fn one_old_message_makes_the_epoch_behind_until_the_next_epoch_begins() {
        let mut epoch = OpenEpoch::new(LIMITS);
        let t0 = Instant::now();
        epoch.begin(t0);
        let now_ms = 1_000_000;
        assert!(!epoch.fetched(Some(now_ms - 10), now_ms));
        // Becoming behind is reported once.
        assert!(epoch.fetched(Some(now_ms - 1_001), now_ms));
        assert!(!epoch.fetched(Some(now_ms - 5_000), now_ms));
        // Fresh messages after it do not undo it.
        assert!(!epoch.fetched(Some(now_ms), now_ms));
        assert_eq!(epoch.batch_max(), 20_000);
        assert_eq!(
            epoch.left(t0 + Duration::from_millis(100)),
            Duration::from_millis(50)
        );
        assert!(epoch.left(t0 + Duration::from_millis(150)).is_zero());
        epoch.begin(t0 + Duration::from_millis(200));
        assert_eq!(epoch.batch_max(), 5_000);
        assert_eq!(
            epoch.left(t0 + Duration::from_millis(200)),
            Duration::from_millis(50)
        );
    }
}
