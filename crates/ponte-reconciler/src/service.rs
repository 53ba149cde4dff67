//! Wiring of the reconciler process: store, consumer loop, outbox, gRPC server.
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ponte_bus::consume::{OffsetSource, group_consumer};
use ponte_bus::{KafkaConfig, Publisher, Topic, TopicsConfig};
use ponte_domain::period::Month;
use ponte_domain::rules::RuleSet;
use ponte_proto::compliance::v1::compliance_service_server::ComplianceServiceServer;
use ponte_proto::events::v1::{DeadLetter, Event};
use ponte_runtime::Readiness;
use ponte_store::{Durability, Memory, Store};
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::CommitMode;
use rdkafka::message::BorrowedMessage;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::ReconcilerError;
use crate::grpc::ComplianceApi;
use crate::topology::{Applied, Input, OutputKind, Topology, Tx, Unapplicable, partition_prefix};

/// The `[reconciler]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcilerConfig {
    /// Address of the gRPC API, e.g. `127.0.0.1:50051`.
    pub grpc_listen: String,
    /// Address of the admin endpoint (metrics, health).
    pub admin_listen: String,
    /// Directory of the embedded state store (one per instance; never shared).
    pub state_dir: PathBuf,
    /// Kafka consumer group of the reconciler instances.
    pub group_id: String,
    /// Most events applied in one atomic store write.
    pub batch_max: usize,
    /// How long after its first event a partly filled batch is committed at the latest.
    pub batch_linger_ms: u64,
    /// `process` (survives kill -9) or `machine` (fsync: survives power loss).
    pub durability: String,
    /// Consumer group session timeout: how long the partitions of an instance that died
    /// without leaving the group wait before another instance takes them.
    pub session_timeout_ms: u32,
    /// A stable name of this instance in the consumer group (Kafka static membership); empty
    /// for a new member on every start. See docs/operations.md, "Restarts".
    pub instance_id: String,
    /// Rule-set TOML file; empty for the built-in Bolsa Família 2023 rule set.
    pub rules_file: String,
    /// First month of the monitoring window (`YYYY-MM`): every period overlapping the window
    /// is evaluated for every registered person.
    pub monitor_from: String,
    /// Last month of the monitoring window (`YYYY-MM`).
    pub monitor_to: String,
    /// Memory of the state store (RocksDB block cache with the memtables charged to it), MiB.
    pub state_memory_mb: usize,
    /// Memory of the read model's store, MiB.
    pub read_model_memory_mb: usize,
}

/// The built-in rule set (rules/bolsa-familia-2023.toml).
const BUILTIN_RULES: &str = include_str!("../../../rules/bolsa-familia-2023.toml");

/// Builds the topology from the configuration: rule set and monitoring window.
pub fn topology_from(cfg: &ReconcilerConfig) -> Result<Topology, ReconcilerError> {
    let (name, text) = if cfg.rules_file.is_empty() {
        (
            "rules/bolsa-familia-2023.toml".to_owned(),
            BUILTIN_RULES.to_owned(),
        )
    } else {
        let text = std::fs::read_to_string(&cfg.rules_file).map_err(|e| {
            ReconcilerError::Startup(format!("reconciler.rules_file {}: {e}", cfg.rules_file))
        })?;
        (cfg.rules_file.clone(), text)
    };
    let rules = RuleSet::from_toml_str(&name, &text)
        .map_err(|e| ReconcilerError::Startup(e.to_string()))?;
    let month = |field: &str, v: &str| {
        Month::parse(v).map_err(|e| ReconcilerError::Startup(format!("reconciler.{field}: {e}")))
    };
    let from = month("monitor_from", &cfg.monitor_from)?;
    let to = month("monitor_to", &cfg.monitor_to)?;
    if from > to {
        return Err(ReconcilerError::Startup(
            "reconciler.monitor_from is after monitor_to".to_owned(),
        ));
    }
    Ok(Topology::new(rules, from, to))
}

/// Where the consumer resumes, and the check that runs on every assignment: the local state of
/// each newly assigned partition must be what the changelog says, or it is rebuilt from it.
struct StoreOffsets {
    store: Store,
    kafka: KafkaConfig,
    changelog: String,
}

impl OffsetSource for StoreOffsets {
    fn prepare(&self, assigned: &[(String, i32)]) -> Result<(), String> {
        let partitions: BTreeSet<i32> = assigned.iter().map(|(_, p)| *p).collect();
        for p in partitions {
            ensure_current(&self.store, &self.kafka, &self.changelog, p)
                .map_err(|e| format!("partition {p}: {e}"))?;
        }
        Ok(())
    }

    fn next_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, String> {
        self.store
            .offset(topic, partition)
            .map_err(|e| e.to_string())
    }
}

/// An output waiting in the store until the broker acknowledged it (transactional outbox):
/// written in the same atomic batch as the state that produced it, deleted after the ack.
/// Besides view changes, alerts and the repartition topics' messages, every state write and
/// every consumed offset goes to the changelog topic this way, so another instance (or this one
/// after losing its disk) can rebuild the partition's state.
#[derive(Clone, PartialEq, prost::Message)]
struct OutboxEntry {
    /// See the `KIND_*` constants.
    #[prost(int32, tag = "1")]
    kind: i32,
    #[prost(string, tag = "2")]
    key: String,
    #[prost(bytes = "vec", tag = "3")]
    payload: Vec<u8>,
    /// The input partition whose state produced the entry.
    #[prost(int32, tag = "4")]
    partition: i32,
}

const OUTBOX: &[u8] = b"o/";
const KIND_CHANGE: i32 = 1;
const KIND_ALERT: i32 = 2;
const KIND_STATE_PUT: i32 = 3;
const KIND_STATE_DELETE: i32 = 4;
/// Published only once every other entry before it is acknowledged, so a restored store's
/// offsets are never ahead of its state or of the outputs derived from it (re-applying inputs
/// is harmless; skipping them is not).
const KIND_OFFSET: i32 = 5;
const KIND_CROSSWALK: i32 = 6;
const KIND_HEALTH_BY_NIS: i32 = 7;
const KIND_MEMBER: i32 = 8;
const KIND_DEAD_LETTER: i32 = 10;
/// A state key written by the batch, without its value: the value published to the changelog
/// is read from the store when the entry is published. The batch's values are still the
/// store's then, because no batch is applied while an owned partition has entries pending
/// ([`Outbox::drain`]); every value is written once, not a second time into the outbox.
/// (`KIND_STATE_PUT` entries, which carry the value, are still published as they are.)
const KIND_STATE_REF: i32 = 9;
/// Changelog key prefix of consumed offsets: `offset/<topic>`, on the changelog partition of
/// the same number as the input partition.
const CHANGELOG_OFFSET: &str = "offset/";
const OUTBOX_SEQ: &[u8] = b"meta/outbox_seq";

/// `meta/changelog/<p>`: the changelog's end offset for partition `p` after this store's last
/// acknowledged changelog write. When the changelog has moved past it, another instance owned
/// the partition in between and the local state of `p` is stale.
fn marker_key(p: i32) -> Vec<u8> {
    format!("meta/changelog/{p}").into_bytes()
}

fn read_marker(store: &Store, p: i32) -> Result<Option<i64>, ReconcilerError> {
    Ok(store
        .get(&marker_key(p))?
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map(i64::from_be_bytes))
}

/// The input partition a full state key belongs to (its `NNNN/` prefix).
fn key_partition(key: &[u8]) -> Option<i32> {
    std::str::from_utf8(key.get(..4)?).ok()?.parse().ok()
}

/// Counters of one batch, turned into metrics after the commit.
#[derive(Default)]
struct BatchStats {
    events: usize,
    ingest_times: Vec<SystemTime>,
}

struct Inputs {
    by_topic: Vec<(String, Input)>,
}

impl Inputs {
    fn new(topics: &TopicsConfig, group: &str) -> Self {
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

    fn input(&self, topic: &str) -> Option<Input> {
        self.by_topic
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, i)| *i)
    }
}

fn to_system_time(t: &ponte_proto::Timestamp) -> SystemTime {
    SystemTime::UNIX_EPOCH
        + Duration::new(
            u64::try_from(t.seconds).unwrap_or(0),
            u32::try_from(t.nanos).unwrap_or(0),
        )
}

fn apply_message(
    topology: &Topology,
    inputs: &Inputs,
    tx: &mut Tx<'_>,
    offsets: &mut BTreeMap<(String, i32), i64>,
    stats: &mut BatchStats,
    msg: &BorrowedMessage<'_>,
) -> Result<(), ReconcilerError> {
    let topic = msg.topic().to_owned();
    metrics::counter!("ponte_reconciler_events_consumed_total", "topic" => topic.clone())
        .increment(1);
    offsets.insert((topic.clone(), msg.partition()), msg.offset() + 1);
    stats.events += 1;
    let Some(input) = inputs.input(&topic) else {
        // Only the subscribed topics are ever delivered.
        metrics::counter!("ponte_reconciler_events_ignored_total", "topic" => topic.clone(), "reason" => "unknown_topic").increment(1);
        return Ok(());
    };
    tx.set_partition(msg.partition());
    let payload = msg.payload().unwrap_or_default();
    let (applied, event) = if payload.is_empty() {
        (
            Applied::Invalid(Unapplicable::of_event("malformed", "empty payload")),
            None,
        )
    } else if input.is_internal() {
        let (applied, at) = topology.apply_internal(tx, input, payload)?;
        if let (Applied::Changed, Some(t)) = (&applied, &at) {
            stats.ingest_times.push(to_system_time(t));
        }
        (applied, None)
    } else {
        match Event::decode(payload) {
            Ok(e) => (topology.apply(tx, input, &e)?, Some(e)),
            Err(e) => (
                Applied::Invalid(Unapplicable::of_event(
                    "malformed",
                    format!("undecodable ponte.events.v1.Event: {e}"),
                )),
                None,
            ),
        }
    };
    match applied {
        Applied::Changed => {
            metrics::counter!("ponte_reconciler_events_applied_total", "topic" => topic.clone())
                .increment(1);
            // Ingest-to-view: measured where a record reaches a view, not where it is
            // forwarded (health records by CNS/CPF are measured on their second hop).
            if input != Input::Health
                && let Some(t) = event.as_ref().and_then(|e| e.ingest_time.as_ref())
            {
                stats.ingest_times.push(to_system_time(t));
            }
        }
        Applied::Unchanged => {
            metrics::counter!("ponte_reconciler_events_ignored_total", "topic" => topic.clone(), "reason" => "stale_version").increment(1);
        }
        Applied::Parked => {
            metrics::counter!("ponte_reconciler_events_parked_total", "topic" => topic.clone())
                .increment(1);
        }
        Applied::Invalid(why) => dead_letter(tx, msg, input, event.as_ref(), payload, &why),
    }
    Ok(())
}

/// Sends an event that cannot be applied to the dead-letter topic, through the outbox with
/// the batch (so it is out exactly when the batch's offsets are), counted by class and
/// logged with its identifiers masked.
fn dead_letter(
    tx: &mut Tx<'_>,
    msg: &BorrowedMessage<'_>,
    input: Input,
    event: Option<&Event>,
    payload: &[u8],
    why: &Unapplicable,
) {
    let topic = msg.topic();
    let record_id = event.map(|e| e.record_id.clone()).unwrap_or_default();
    let source_system = event
        .map(|e| e.source_system.as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or("reconciler")
        .to_owned();
    tracing::warn!(
        %topic,
        partition = msg.partition(),
        offset = msg.offset(),
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
        position: format!(
            "{topic} partition {} offset {}",
            msg.partition(),
            msg.offset()
        ),
        original: payload.to_vec(),
        content_type: format!(
            "application/x-protobuf; messageType={}",
            input.message_type()
        ),
        received_time: event.and_then(|e| e.ingest_time),
        record_id,
    };
    tx.emit(
        OutputKind::DeadLetter,
        source_system,
        letter.encode_to_vec(),
    );
}

/// Parked health records per owned partition for `ponte_reconciler_parked_records`: counted
/// once when a partition is taken, then kept from each commit's writes. (Scanning them every
/// second instead took 58 % of the reconciler's CPU with 3 M records parked while 10 M people
/// were loaded at once: docs/benchmarks.md.)
#[derive(Debug, Default)]
struct ParkedCount(BTreeMap<i32, i64>);

impl ParkedCount {
    /// Forgets the partitions no longer owned and counts the newly owned ones (one scan each).
    fn reassign(&mut self, store: &Store, owned: &BTreeSet<i32>) -> Result<(), ReconcilerError> {
        self.0.retain(|p, _| owned.contains(p));
        for &p in owned {
            if let std::collections::btree_map::Entry::Vacant(e) = self.0.entry(p) {
                e.insert(crate::topology::count_parked(store, &[p])? as i64);
            }
        }
        Ok(())
    }

    fn add(&mut self, delta: BTreeMap<i32, i64>) {
        for (p, d) in delta {
            if let Some(n) = self.0.get_mut(&p) {
                *n += d;
            }
        }
    }

    fn total(&self) -> i64 {
        self.0.values().sum()
    }
}

/// Commits the batch: state changes, outbox entries and offsets in one atomic write.
fn commit(
    store: &Store,
    tx: &mut Tx<'_>,
    offsets: &mut BTreeMap<(String, i32), i64>,
    stats: &mut BatchStats,
    parked: &mut ParkedCount,
    consumer: &impl rdkafka::consumer::Consumer<ponte_bus::consume::SeekingContext>,
) -> Result<(), ReconcilerError> {
    if offsets.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let (writes, outputs) = tx.take();
    let parked_delta = crate::topology::parked_delta(store, &writes)?;
    let mut w = store.batch();
    for (k, v) in &writes {
        match v {
            Some(v) => w.put(k, v),
            None => w.delete(k),
        }
    }
    let mut seq = store
        .get(OUTBOX_SEQ)?
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0);
    let seq_before = seq;
    let mut outbox = |w: &mut ponte_store::BatchWriter<'_>, entry: OutboxEntry| {
        seq += 1;
        w.put(&outbox_key(seq), &entry.encode_to_vec());
    };
    for o in outputs {
        let kind = match o.kind {
            OutputKind::Change => KIND_CHANGE,
            OutputKind::Alert => KIND_ALERT,
            OutputKind::Crosswalk => KIND_CROSSWALK,
            OutputKind::HealthByNis => KIND_HEALTH_BY_NIS,
            OutputKind::Member => KIND_MEMBER,
            OutputKind::DeadLetter => KIND_DEAD_LETTER,
        };
        outbox(
            &mut w,
            OutboxEntry {
                kind,
                key: o.key,
                payload: o.payload,
                partition: o.partition,
            },
        );
    }
    for (k, v) in writes {
        let partition = key_partition(&k).ok_or_else(|| ReconcilerError::Corrupt {
            key: String::from_utf8_lossy(&k).into_owned(),
            reason: "state key without a partition prefix".to_owned(),
        })?;
        let key = String::from_utf8_lossy(&k).into_owned();
        let entry = match v {
            Some(_) => OutboxEntry {
                kind: KIND_STATE_REF,
                key,
                payload: Vec::new(),
                partition,
            },
            None => OutboxEntry {
                kind: KIND_STATE_DELETE,
                key,
                payload: Vec::new(),
                partition,
            },
        };
        outbox(&mut w, entry);
    }
    for ((topic, partition), next) in offsets.iter() {
        w.set_offset(topic, *partition, *next);
        outbox(
            &mut w,
            OutboxEntry {
                kind: KIND_OFFSET,
                key: format!("{CHANGELOG_OFFSET}{topic}"),
                payload: next.to_be_bytes().to_vec(),
                partition: *partition,
            },
        );
    }
    w.put(OUTBOX_SEQ, &seq.to_be_bytes());
    w.commit()?;
    parked.add(parked_delta);
    // Pending from the commit on, not from the next gauge refresh: "0 pending and everything
    // consumed is committed" must mean the outputs are out (ponte-bench waits on it).
    metrics::gauge!("ponte_reconciler_outbox_pending").increment((seq - seq_before) as f64);
    metrics::histogram!("ponte_reconciler_batch_commit_seconds")
        .record(started.elapsed().as_secs_f64());
    metrics::histogram!("ponte_reconciler_batch_events").record(stats.events as f64);
    let now = SystemTime::now();
    for t in stats.ingest_times.drain(..) {
        if let Ok(lat) = now.duration_since(t) {
            metrics::histogram!("ponte_reconciler_ingest_to_view_seconds")
                .record(lat.as_secs_f64());
        }
    }
    // Informational commit to Kafka so lag tools see progress; positions come from the store.
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), next) in offsets.iter() {
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next));
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        tracing::debug!(error = %e, "async offset commit not sent");
    }
    offsets.clear();
    stats.events = 0;
    Ok(())
}

/// Where outbox entries go.
struct OutTopics {
    changes: String,
    alerts: String,
    changelog: String,
    crosswalk: String,
    health_by_nis: String,
    members: String,
    deadletter: String,
}

/// The outbox's reading position: entries are keyed `o/<seq>` and deleted once acknowledged,
/// so everything below `floor` is gone and a drain starts there instead of walking over the
/// deletions (RocksDB keeps them as tombstones until compaction).
struct Outbox {
    store: Store,
    publisher: Publisher,
    out: OutTopics,
    floor: u64,
}

fn outbox_key(seq: u64) -> Vec<u8> {
    let mut k = OUTBOX.to_vec();
    k.extend_from_slice(format!("{seq:020}").as_bytes());
    k
}

fn outbox_seq(key: &[u8]) -> Option<u64> {
    std::str::from_utf8(key.strip_prefix(OUTBOX)?)
        .ok()?
        .parse()
        .ok()
}

impl Outbox {
    fn new(store: Store, publisher: Publisher, out: OutTopics) -> Self {
        Self {
            store,
            publisher,
            out,
            floor: 0,
        }
    }

    /// Publishes the entries of the partitions this instance owns and deletes the
    /// acknowledged ones, offsets last. Returns how many of the owned partitions' entries
    /// remain.
    async fn drain(&mut self, owned: &BTreeSet<i32>) -> Result<usize, ReconcilerError> {
        let (store, publisher, out) = (&self.store, &self.publisher, &self.out);
        let entries = match self.floor {
            0 => store.scan_prefix(OUTBOX)?,
            f => store.scan_prefix_after(OUTBOX, &outbox_key(f - 1), usize::MAX)?,
        };
        let Some(last) = entries.last().and_then(|(k, _)| outbox_seq(k)) else {
            metrics::gauge!("ponte_reconciler_outbox_pending").set(0.0);
            return Ok(0);
        };
        let mut decoded = Vec::with_capacity(entries.len());
        let mut kept = Vec::new();
        for (k, v) in entries {
            let entry =
                OutboxEntry::decode(v.as_slice()).map_err(|e| ReconcilerError::Corrupt {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    reason: e.to_string(),
                })?;
            // Entries of a partition owned elsewhere now stay until the partition comes back
            // (published then, if no one else wrote its changelog since) or is found stale.
            if owned.contains(&entry.partition) {
                decoded.push((k, entry));
            } else {
                kept.push(k);
            }
        }
        let (offsets, others): (Vec<_>, Vec<_>) = decoded
            .into_iter()
            .partition(|(_, e)| e.kind == KIND_OFFSET);
        let failed = publish_entries(store, publisher, out, others).await?;
        let (failed, remaining) = if failed.is_empty() {
            let failed = publish_entries(store, publisher, out, offsets).await?;
            let n = failed.len();
            (failed, n)
        } else {
            let n = failed.len() + offsets.len();
            let mut all = failed;
            all.extend(offsets.into_iter().map(|(k, _)| k));
            (all, n)
        };
        self.floor = failed
            .iter()
            .chain(&kept)
            .filter_map(|k| outbox_seq(k))
            .min()
            .unwrap_or(last + 1);
        // Left: unacknowledged, or of partitions owned elsewhere.
        metrics::gauge!("ponte_reconciler_outbox_pending").set((failed.len() + kept.len()) as f64);
        if remaining > 0 {
            tracing::warn!(
                remaining,
                "outputs not acknowledged; no new input is applied until they are"
            );
        }
        Ok(remaining)
    }

    /// Drains until nothing owned is pending, retrying every second, so no batch is applied
    /// on top of state whose changelog entries are not out yet. Gives up (returns false) on
    /// shutdown or when the assignment changed.
    async fn drain_all(
        &mut self,
        owned: &BTreeSet<i32>,
        (assignment, generation): (&ponte_bus::consume::Assignment, u64),
        shutdown: &CancellationToken,
    ) -> Result<bool, ReconcilerError> {
        while self.drain(owned).await? > 0 {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(false),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if assignment.generation() != generation {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

async fn publish_entries(
    store: &Store,
    publisher: &Publisher,
    out: &OutTopics,
    entries: Vec<(Vec<u8>, OutboxEntry)>,
) -> Result<Vec<Vec<u8>>, ReconcilerError> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    // A state key's current value: an absent key goes out as a tombstone.
    let mut entries = entries;
    for (_, e) in &mut entries {
        if e.kind == KIND_STATE_REF {
            match store.get(e.key.as_bytes())? {
                Some(v) => {
                    e.kind = KIND_STATE_PUT;
                    e.payload = v;
                }
                None => e.kind = KIND_STATE_DELETE,
            }
        }
    }
    let sends = entries.iter().map(|(k, e)| async move {
        let keyed = match e.kind {
            KIND_ALERT => Some((&out.alerts, "compliance_alert", "alert")),
            KIND_CROSSWALK => Some((&out.crosswalk, "crosswalk", "crosswalk")),
            KIND_HEALTH_BY_NIS => Some((&out.health_by_nis, "health_by_nis", "health_by_nis")),
            KIND_MEMBER => Some((&out.members, "member", "member")),
            KIND_DEAD_LETTER => Some((&out.deadletter, "dead_letter", "dead_letter")),
            KIND_STATE_PUT | KIND_STATE_DELETE | KIND_OFFSET => None,
            _ => Some((&out.changes, "compliance_change", "change")),
        };
        let res = match keyed {
            Some((topic, event_type, kind)) => (
                publisher
                    .publish_bytes(topic, &e.key, &e.payload, event_type, "")
                    .await,
                kind,
            ),
            None => {
                let payload = match e.kind {
                    KIND_STATE_DELETE => None,
                    _ => Some(e.payload.as_slice()),
                };
                let res = publisher
                    .publish_to_partition(&out.changelog, e.partition, &e.key, payload)
                    .await;
                (res, "changelog")
            }
        };
        (k, res.0, res.1)
    });
    let results = futures::future::join_all(sends).await;
    let mut w = store.batch();
    let mut failed = Vec::new();
    let mut changelog_end: BTreeMap<i32, i64> = BTreeMap::new();
    for (k, res, kind) in results {
        match res {
            Ok(d) => {
                w.delete(k);
                metrics::counter!("ponte_reconciler_outputs_published_total", "kind" => kind)
                    .increment(1);
                if kind == "changelog" {
                    let end = changelog_end.entry(d.partition).or_insert(0);
                    *end = (*end).max(d.offset + 1);
                }
            }
            Err(_) => failed.push(k.clone()),
        }
    }
    for (p, end) in changelog_end {
        if read_marker(store, p)?.is_none_or(|m| m < end) {
            w.put(&marker_key(p), &end.to_be_bytes());
        }
    }
    w.commit()?;
    Ok(failed)
}

fn startup(e: impl std::fmt::Display) -> ReconcilerError {
    ReconcilerError::Startup(e.to_string())
}

/// Checks that the local state of partition `p` is the changelog's latest, and when it is not
/// (a new or lost disk, or another instance owned `p` since this one last wrote it) drops it
/// and rebuilds it from the changelog: every state entry and the consumed offsets it was
/// derived from. Inputs after those offsets are then consumed as usual.
fn ensure_current(
    store: &Store,
    kafka: &KafkaConfig,
    changelog: &str,
    p: i32,
) -> Result<(), ReconcilerError> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let consumer: BaseConsumer = kafka
        .client_config("ponte-reconciler-restore")
        .set("enable.auto.commit", "false")
        .set("group.id", "ponte-reconciler-restore")
        .create()
        .map_err(|e| startup(format!("restore consumer: {e}")))?;
    let timeout = Duration::from_secs(30);
    let (low, high) = crate::while_topic_settles(
        &format!("changelog {changelog} partition {p}"),
        || false,
        || {
            // Ask for the topic's metadata on every attempt: right after a broker restart its
            // first answer may lack the partition, and the client would go on answering
            // "unknown partition" from that cached answer until its next periodic refresh
            // (minutes) — the reconciler then gave up preparing the partition and stopped
            // (issue 13, a broker-restart test failing under load).
            consumer
                .fetch_metadata(Some(changelog), timeout)
                .map_err(|e| e.to_string())?;
            consumer
                .fetch_watermarks(changelog, p, timeout)
                .map_err(|e| e.to_string())
        },
    )?
    .ok_or_else(|| startup("changelog watermarks: gave up"))?;
    let marker = read_marker(store, p)?.unwrap_or(0);
    if marker == high {
        tracing::info!(
            partition = p,
            changelog_end = high,
            "local state is current"
        );
        return Ok(());
    }
    let started = Instant::now();
    tracing::info!(
        partition = p,
        local = marker,
        changelog_end = high,
        "local state missing or stale; rebuilding the partition from the changelog"
    );
    // Drop the partition: state, offsets, pending outputs.
    let mut w = store.batch();
    w.delete_prefix(&partition_prefix(p));
    for (topic, partition, _) in store.offsets()? {
        if partition == p {
            w.delete_offset(&topic, partition);
        }
    }
    for (k, v) in store.scan_prefix(OUTBOX)? {
        if OutboxEntry::decode(v.as_slice()).is_ok_and(|e| e.partition == p) {
            w.delete(&k);
        }
    }
    w.delete(&marker_key(p));
    w.commit()?;

    let mut restored = 0u64;
    if high > low {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(changelog, p, Offset::Offset(low))
            .map_err(startup)?;
        consumer
            .assign(&tpl)
            .map_err(|e| startup(format!("changelog assign: {e}")))?;
        let mut w = store.batch();
        let deadline = Instant::now() + Duration::from_secs(3600);
        let mut next = low;
        while next < high {
            if Instant::now() > deadline {
                return Err(startup(
                    "changelog restore did not finish in an hour".to_owned(),
                ));
            }
            let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let msg = msg.map_err(|e| startup(format!("changelog read: {e}")))?;
            next = msg.offset() + 1;
            let key = msg.key().unwrap_or_default();
            if let Some(topic) = key.strip_prefix(CHANGELOG_OFFSET.as_bytes()) {
                if let Some(arr) = msg.payload().and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                    w.set_offset(&String::from_utf8_lossy(topic), p, i64::from_be_bytes(arr));
                }
            } else if key_partition(key) == Some(p) {
                match msg.payload() {
                    Some(v) => w.put(key, v),
                    None => w.delete(key),
                }
            } else {
                tracing::warn!(
                    partition = p,
                    offset = msg.offset(),
                    "changelog entry of another partition ignored"
                );
                continue;
            }
            restored += 1;
            if w.len() >= 10_000 {
                std::mem::replace(&mut w, store.batch()).commit()?;
            }
        }
        w.commit()?;
    }
    let mut w = store.batch();
    w.put(&marker_key(p), &high.to_be_bytes());
    w.commit()?;
    metrics::counter!("ponte_reconciler_restored_entries_total").increment(restored);
    metrics::counter!("ponte_reconciler_partition_restores_total").increment(1);
    tracing::info!(
        partition = p,
        restored,
        seconds = started.elapsed().as_secs_f64(),
        "partition restored from the changelog"
    );
    Ok(())
}

fn refresh_gauges(
    store: &Store,
    read: &Store,
    assignment: &ponte_bus::consume::Assignment,
    readiness: &Readiness,
    read_model_ready: bool,
    parked: &ParkedCount,
    topic_count: usize,
) {
    let owned = assignment.partitions().len();
    metrics::gauge!("ponte_reconciler_assigned_partitions").set(owned as f64);
    metrics::gauge!("ponte_reconciler_state_bytes").set(store.approximate_size_bytes() as f64);
    metrics::gauge!("ponte_reconciler_read_model_bytes").set(read.approximate_size_bytes() as f64);
    for (name, s) in [("state", store), ("read_model", read)] {
        let (cache, memtables, readers) = s.memory_bytes();
        for (kind, v) in [
            ("block_cache", cache),
            ("memtables", memtables),
            ("table_readers", readers),
        ] {
            metrics::gauge!("ponte_reconciler_store_memory_bytes", "store" => name, "kind" => kind)
                .set(v as f64);
        }
    }
    metrics::gauge!("ponte_reconciler_parked_records").set(parked.total() as f64);
    // Outcomes by conditionality and status, summed over municipalities and periods (from the
    // read model, which holds every partition's views).
    if let Ok(rows) = read.scan_prefix(b"i/") {
        let mut sums: BTreeMap<(String, &'static str), u64> = Default::default();
        for (k, v) in rows {
            let key = String::from_utf8_lossy(&k).into_owned();
            let Some(cond) = key.split('/').nth(2) else {
                continue;
            };
            let Ok(c) = serde_json::from_slice::<ponte_domain::indicators::Counts>(&v) else {
                continue;
            };
            for (status, n) in [
                ("COMPLIANT", c.compliant),
                ("NON_COMPLIANT", c.non_compliant),
                ("NOT_FOLLOWED", c.public.saturating_sub(c.followed)),
            ] {
                *sums.entry((cond.to_owned(), status)).or_default() += n;
            }
        }
        for ((cond, status), n) in sums {
            metrics::gauge!("ponte_reconciler_outcomes", "conditionality" => cond, "status" => status).set(n as f64);
        }
    }
    // Every owned partition number must come with all the subscribed topics (they are
    // co-partitioned and the range assignor keeps equal numbers together): with one missing, a
    // stage of the topology does not run for those partitions.
    let numbers = assignment.partition_numbers().len();
    let incomplete = owned != numbers * topic_count;
    metrics::gauge!("ponte_reconciler_assignment_incomplete").set(f64::from(u8::from(incomplete)));
    if owned == 0 {
        readiness.set_not_ready("no partitions assigned yet");
    } else if incomplete {
        readiness.set_not_ready(
            "assignment lacks some subscribed topics (not yet in the group leader's metadata)",
        );
    } else if !read_model_ready {
        readiness.set_not_ready("read model catching up with the changes topic");
    } else {
        readiness.set_ready();
    }
}

/// The partition count shared by the input topics (they must be co-partitioned).
fn input_partitions(kafka: &KafkaConfig, inputs: &[String]) -> Result<i32, ReconcilerError> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let consumer: BaseConsumer = kafka
        .client_config("ponte-reconciler-metadata")
        .create()
        .map_err(startup)?;
    let mut counts = BTreeMap::new();
    for t in inputs {
        let n = crate::while_topic_settles(
            &format!("input topic {t} (created by `ponte topics ensure`)"),
            || false,
            || {
                let md = consumer
                    .fetch_metadata(Some(t), Duration::from_secs(30))
                    .map_err(|e| e.to_string())?;
                md.topics()
                    .first()
                    .filter(|m| m.error().is_none() && !m.partitions().is_empty())
                    .map(|m| m.partitions().len())
                    .ok_or_else(|| "does not exist".to_owned())
            },
        )?
        .ok_or_else(|| startup(format!("input topic {t}: gave up")))?;
        counts.insert(t.clone(), n);
    }
    let distinct: BTreeSet<usize> = counts.values().copied().collect();
    if distinct.len() != 1 {
        return Err(startup(format!(
            "the input topics must be co-partitioned (one partition count): {counts:?}"
        )));
    }
    let n = distinct.into_iter().next().unwrap_or(1);
    i32::try_from(n).map_err(startup)
}

/// Largest gRPC request message accepted, in bytes.
const MAX_GRPC_REQUEST_BYTES: usize = 64 * 1024;
/// Most HTTP/2 streams (calls) open at once on one gRPC connection.
const GRPC_MAX_CONCURRENT_STREAMS: u32 = 256;

/// Runs the reconciler until `shutdown` is cancelled.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    cfg: &ReconcilerConfig,
    kafka: &KafkaConfig,
    topics: &TopicsConfig,
    tls: &ponte_edge::TlsConfig,
    access: &ponte_edge::AccessConfig,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), ReconcilerError> {
    let topology = topology_from(cfg)?;
    tracing::info!(rule_set = %topology.rules().reference(), from = %cfg.monitor_from, to = %cfg.monitor_to, "rule set loaded");
    // The access policy is checked against the rule set's conditionalities before anything
    // connects: a misspelt id stops the start instead of silently denying.
    let known: Vec<&str> = topology
        .rules()
        .conditionalities
        .iter()
        .map(|c| c.id.as_str())
        .collect();
    let gate = Arc::new(
        ponte_edge::Gate::new("grpc", access, tls.is_insecure(), &known)
            .map_err(|e| startup(format!("access: {e}")))?,
    );
    let durability = match cfg.durability.as_str() {
        "process" => Durability::Process,
        "machine" => Durability::Machine,
        other => {
            return Err(ReconcilerError::Startup(format!(
                "reconciler.durability: {other:?} is not `process` or `machine`"
            )));
        }
    };
    let state_dir = cfg.state_dir.join("state");
    let read_dir = cfg.state_dir.join("read");
    for dir in [&state_dir, &read_dir] {
        std::fs::create_dir_all(dir)
            .map_err(|e| startup(format!("creating {}: {e}", dir.display())))?;
    }
    let store = Store::open_with(&state_dir, durability, Memory::mib(cfg.state_memory_mb))?;
    // The read model is rebuilt from the changes topic whenever it is lost: no fsync needed.
    let read = Store::open_with(
        &read_dir,
        Durability::Process,
        Memory::mib(cfg.read_model_memory_mb),
    )?;
    tracing::info!(state_dir = %cfg.state_dir.display(), "state store and read model open");
    let group = cfg.group_id.as_str();
    let inputs = Inputs::new(topics, group);
    let shared: Vec<String> = inputs
        .by_topic
        .iter()
        .filter(|(_, i)| !i.is_internal())
        .map(|(t, _)| t.clone())
        .collect();
    let partitions = {
        let (k, topics) = (kafka.clone(), shared.clone());
        tokio::task::spawn_blocking(move || input_partitions(&k, &topics))
            .await
            .map_err(startup)??
    };
    // The group's own topics: changelog and repartition topics, co-partitioned with the inputs.
    let reports = ponte_bus::topics::ensure_specs(
        kafka,
        topics.reconciler_catalogue(group, partitions)?,
        Duration::from_secs(30),
    )
    .await?;
    for r in &reports {
        for w in &r.warnings {
            tracing::warn!(topic = %r.spec.name, "{w}");
        }
    }
    let publisher = Publisher::new(kafka, "reconciler")?;
    let out = OutTopics {
        changes: topics.name(Topic::ComplianceChanges),
        alerts: topics.name(Topic::ComplianceAlerts),
        changelog: topics.reconciler_name(Topic::ReconcilerChangelog, group),
        crosswalk: topics.reconciler_name(Topic::ReconcilerCrosswalk, group),
        health_by_nis: topics.reconciler_name(Topic::ReconcilerHealthByNis, group),
        members: topics.reconciler_name(Topic::ReconcilerMembers, group),
        deadletter: topics.name(Topic::DeadLetter),
    };

    // The read model: every instance follows the whole changes topic, so it can answer for
    // every person and family, whichever instance owns their partition.
    let (caught_up_tx, caught_up) = tokio::sync::watch::channel(false);
    let read_task = tokio::spawn(crate::readmodel::run(
        kafka.clone(),
        out.changes.clone(),
        read.clone(),
        caught_up_tx,
        shutdown.clone(),
    ));

    // The consumer: its assignment is also what ListParked reports on. It subscribes once the
    // broker shows every topic, its own just created ones included: a group whose leader does
    // not see a topic yet leaves it out of the assignment until a metadata refresh, and the
    // identity and family stages would not run meanwhile (issue 13: the group's repartition
    // topics missing from a scale-out test's assignment for over a minute).
    {
        let (k, names) = (
            kafka.clone(),
            inputs
                .by_topic
                .iter()
                .map(|(t, _)| t.clone())
                .collect::<Vec<_>>(),
        );
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            ponte_bus::consume::wait_for_topics(&k, &refs, Duration::from_secs(60))
        })
        .await
        .map_err(startup)??;
    }
    let input_refs: Vec<&str> = inputs.by_topic.iter().map(|(t, _)| t.as_str()).collect();
    let (consumer, assignment) = group_consumer(
        kafka,
        group,
        "ponte-reconciler",
        &input_refs,
        Arc::new(StoreOffsets {
            store: store.clone(),
            kafka: kafka.clone(),
            changelog: out.changelog.clone(),
        }),
        ponte_bus::consume::Membership {
            session_timeout_ms: cfg.session_timeout_ms,
            instance_id: Some(cfg.instance_id.as_str()).filter(|id| !id.is_empty()),
        },
    )?;

    // gRPC: the compliance API, health and reflection.
    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ponte_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| startup(format!("reflection: {e}")))?;
    let listener = ponte_edge::EdgeListener::bind(
        "grpc",
        &cfg.grpc_listen,
        tls,
        &[ponte_access::tls::Alpn::H2],
        access.handshake_timeout(),
    )
    .await
    .map_err(|e| startup(format!("reconciler.grpc_listen {:?}: {e}", cfg.grpc_listen)))?;
    let local = listener.local_addr().map_err(startup)?;
    let tls_on = listener.is_tls();
    gate.spawn_reloader(
        Duration::from_secs(access.reload_check_secs.max(1)),
        shutdown.clone(),
    );
    let api = ComplianceServiceServer::new(ComplianceApi::new(
        read.clone(),
        store.clone(),
        assignment.clone(),
        topology.rules().clone(),
        kafka.clone(),
        out.changes.clone(),
        Arc::clone(&gate),
    ))
    // Requests are a NIS, a code or a page token: nothing legitimate comes near this.
    .max_decoding_message_size(MAX_GRPC_REQUEST_BYTES);
    health
        .set_serving::<ComplianceServiceServer<ComplianceApi>>()
        .await;
    let grpc_stop = shutdown.clone();
    let grpc = tokio::spawn(async move {
        tonic::transport::Server::builder()
            // Limits of one connection: streams open at once, and pings so that a vanished
            // client's streams (WatchChanges) are closed.
            .max_concurrent_streams(Some(GRPC_MAX_CONCURRENT_STREAMS))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(api)
            .serve_with_incoming_shutdown(
                // The edge listener completes TLS handshakes (with a deadline) and sets
                // TCP_NODELAY: with Nagle's algorithm on, a reply waited for the client's
                // delayed ACK (about 40 ms) in a fifth to a third of calls
                // (docs/benchmarks.md, "Queries under load").
                listener.incoming(grpc_stop.clone()),
                async move { grpc_stop.cancelled().await },
            )
            .await
    });
    tracing::info!(%local, tls = tls_on, "gRPC ComplianceService listening (health and reflection on)");

    // The consumer loop. Work consumed under an older assignment generation is dropped
    // uncommitted (its partitions may belong to another instance now); what the store holds
    // is then consumed again from the stored offsets, which is harmless.
    let linger = Duration::from_millis(cfg.batch_linger_ms);
    let mut tx = Tx::new(&store);
    let mut offsets = BTreeMap::new();
    let mut stats = BatchStats::default();
    let mut last_gauges = Instant::now() - Duration::from_secs(60);
    let mut generation = assignment.generation();
    let mut owned = assignment.partition_numbers();
    let mut parked = ParkedCount::default();
    parked.reassign(&store, &owned)?;
    let mut outbox = Outbox::new(store.clone(), publisher.clone(), out);
    let mut batch_started = Instant::now();
    let result: Result<(), ReconcilerError> = loop {
        if let Some(why) = assignment.failure() {
            break Err(ReconcilerError::Startup(format!(
                "partitions could not be prepared: {why}"
            )));
        }
        if last_gauges.elapsed() >= Duration::from_secs(1) {
            refresh_gauges(
                &store,
                &read,
                &assignment,
                &readiness,
                *caught_up.borrow(),
                &parked,
                inputs.by_topic.len(),
            );
            last_gauges = Instant::now();
        }
        let next = if offsets.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                m = consumer.recv() => Some(m),
                _ = tokio::time::sleep(Duration::from_secs(1)) => None,
            }
        } else {
            // The batch is committed `batch_linger_ms` after its first event at the latest,
            // however steadily events keep arriving.
            let left = linger.saturating_sub(batch_started.elapsed());
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                m = tokio::time::timeout(left, consumer.recv()) => m.ok(),
            }
        };
        if assignment.generation() != generation {
            if !offsets.is_empty() {
                tracing::info!(
                    events = stats.events,
                    "assignment changed: uncommitted work dropped, consumed again from the store's offsets"
                );
            }
            drop(tx);
            tx = Tx::new(&store);
            offsets.clear();
            stats = BatchStats::default();
            generation = assignment.generation();
            owned = assignment.partition_numbers();
            parked.reassign(&store, &owned)?;
            // Outputs left by an earlier run or owner of these partitions go out first.
            if !outbox
                .drain_all(&owned, (&assignment, generation), &shutdown)
                .await?
            {
                continue;
            }
            // The message (if any) was fetched under the new assignment: it is applied below.
        }
        match next {
            Some(Ok(msg)) => {
                if offsets.is_empty() {
                    batch_started = Instant::now();
                }
                apply_message(&topology, &inputs, &mut tx, &mut offsets, &mut stats, &msg)?;
                if stats.events >= cfg.batch_max {
                    commit(
                        &store,
                        &mut tx,
                        &mut offsets,
                        &mut stats,
                        &mut parked,
                        &consumer,
                    )?;
                    outbox
                        .drain_all(&owned, (&assignment, generation), &shutdown)
                        .await?;
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "consumer error");
                metrics::counter!("ponte_reconciler_consumer_errors_total").increment(1);
            }
            None => {
                commit(
                    &store,
                    &mut tx,
                    &mut offsets,
                    &mut stats,
                    &mut parked,
                    &consumer,
                )?;
                outbox
                    .drain_all(&owned, (&assignment, generation), &shutdown)
                    .await?;
            }
        }
    };
    if result.is_ok() && assignment.generation() == generation {
        // Whatever was applied in memory is committed with its offsets; nothing is half-written.
        commit(
            &store,
            &mut tx,
            &mut offsets,
            &mut stats,
            &mut parked,
            &consumer,
        )?;
        let _ = outbox.drain(&owned).await;
    }
    drop(tx);
    readiness.set_not_ready("shutting down");
    health
        .set_not_serving::<ComplianceServiceServer<ComplianceApi>>()
        .await;
    drop(consumer);
    shutdown.cancel();
    match grpc.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "gRPC server failed"),
        Err(e) => tracing::error!(error = %e, "gRPC task failed"),
    }
    match read_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "read model failed"),
        Err(e) => tracing::error!(error = %e, "read model task failed"),
    }
    let p = publisher.clone();
    let _ = tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(10))).await;
    // A restart then opens without replaying the write-ahead logs.
    for (name, s) in [("state store", &store), ("read model", &read)] {
        if let Err(e) = s.flush() {
            tracing::warn!(error = %e, "flushing the {name} at shutdown");
        }
    }
    tracing::info!("reconciler stopped");
    result
}
