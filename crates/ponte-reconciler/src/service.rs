//! Wiring of the reconciler process: store, consumer loop, outbox, gRPC server.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ponte_bus::consume::{OffsetSource, group_consumer};
use ponte_bus::{KafkaConfig, Publisher, Topic, TopicsConfig};
use ponte_domain::period::Month;
use ponte_domain::rules::RuleSet;
use ponte_proto::compliance::v1::compliance_service_server::ComplianceServiceServer;
use ponte_proto::events::v1::Event;
use ponte_runtime::Readiness;
use ponte_store::{Durability, Store};
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::CommitMode;
use rdkafka::message::BorrowedMessage;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::ReconcilerError;
use crate::grpc::ComplianceApi;
use crate::topology::{Applied, Input, Kv as _, OutputKind, Topology, Tx};

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
    /// How long a partly filled batch waits for more events before it is committed.
    pub batch_linger_ms: u64,
    /// `process` (survives kill -9) or `machine` (fsync: survives power loss).
    pub durability: String,
    /// Consumer group session timeout: how long the partitions of an instance that died
    /// without leaving the group wait before another instance takes them.
    pub session_timeout_ms: u32,
    /// Rule-set TOML file; empty for the built-in Bolsa Família 2023 rule set.
    pub rules_file: String,
    /// First month of the monitoring window (`YYYY-MM`): every period overlapping the window
    /// is evaluated for every registered person.
    pub monitor_from: String,
    /// Last month of the monitoring window (`YYYY-MM`).
    pub monitor_to: String,
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

struct StoreOffsets(Store);

impl OffsetSource for StoreOffsets {
    fn next_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, String> {
        self.0.offset(topic, partition).map_err(|e| e.to_string())
    }
}

/// An output waiting in the store until the broker acknowledged it (transactional outbox):
/// written in the same atomic batch as the state that produced it, deleted after the ack.
/// Besides view changes and alerts, every state write and every consumed offset goes to the
/// changelog topic this way, so an instance whose disk is lost can rebuild its store.
#[derive(Clone, PartialEq, prost::Message)]
struct OutboxEntry {
    /// See the `KIND_*` constants.
    #[prost(int32, tag = "1")]
    kind: i32,
    #[prost(string, tag = "2")]
    key: String,
    #[prost(bytes = "vec", tag = "3")]
    payload: Vec<u8>,
}

const OUTBOX: &[u8] = b"o/";
const KIND_CHANGE: i32 = 1;
const KIND_ALERT: i32 = 2;
const KIND_STATE_PUT: i32 = 3;
const KIND_STATE_DELETE: i32 = 4;
/// Published only once every state entry before it is acknowledged, so a restored store's
/// offsets are never ahead of its state (re-applying inputs is harmless; skipping is not).
const KIND_OFFSET: i32 = 5;
/// Changelog key prefix of consumed offsets: `<group>|offset/<partition>/<topic>` (every
/// changelog key starts with the consumer group, `<group>|<state key>`).
const CHANGELOG_OFFSET: &str = "offset/";
const OUTBOX_SEQ: &[u8] = b"meta/outbox_seq";

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
    fn new(topics: &TopicsConfig) -> Self {
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

fn apply_message(
    topology: &Topology,
    inputs: &Inputs,
    tx: &mut Tx<'_>,
    offsets: &mut std::collections::BTreeMap<(String, i32), i64>,
    stats: &mut BatchStats,
    msg: &BorrowedMessage<'_>,
) -> Result<(), ReconcilerError> {
    let topic = msg.topic().to_owned();
    metrics::counter!("ponte_reconciler_events_consumed_total", "topic" => topic.clone())
        .increment(1);
    offsets.insert((topic.clone(), msg.partition()), msg.offset() + 1);
    stats.events += 1;
    let ignore = |reason: &'static str| {
        metrics::counter!("ponte_reconciler_events_ignored_total", "topic" => topic.clone(), "reason" => reason).increment(1);
    };
    let Some(input) = inputs.input(&topic) else {
        ignore("unknown_topic");
        return Ok(());
    };
    let Some(payload) = msg.payload() else {
        ignore("empty_payload");
        return Ok(());
    };
    let event = match Event::decode(payload) {
        Ok(e) => e,
        Err(e) => {
            // Adapters only publish valid events; anything else is counted and logged with its
            // position so an operator can inspect it with a console consumer.
            tracing::error!(%topic, partition = msg.partition(), offset = msg.offset(), error = %e, "undecodable event");
            ignore("undecodable");
            return Ok(());
        }
    };
    match topology.apply(tx, input, &event)? {
        Applied::Changed => {
            metrics::counter!("ponte_reconciler_events_applied_total", "topic" => topic.clone())
                .increment(1);
            if let Some(t) = event.ingest_time {
                stats.ingest_times.push(
                    SystemTime::UNIX_EPOCH
                        + Duration::new(
                            u64::try_from(t.seconds).unwrap_or(0),
                            u32::try_from(t.nanos).unwrap_or(0),
                        ),
                );
            }
        }
        Applied::Unchanged => ignore("stale_version"),
        Applied::Parked => {
            metrics::counter!("ponte_reconciler_events_parked_total", "topic" => topic.clone())
                .increment(1);
        }
        Applied::Invalid(reason) => {
            tracing::error!(%topic, partition = msg.partition(), offset = msg.offset(), record_id = %event.record_id, %reason, "event cannot be applied");
            ignore("invalid_record");
        }
    }
    Ok(())
}

/// Commits the batch: state changes, outbox entries and offsets in one atomic write.
fn commit(
    store: &Store,
    tx: &mut Tx<'_>,
    offsets: &mut std::collections::BTreeMap<(String, i32), i64>,
    stats: &mut BatchStats,
    consumer: &impl rdkafka::consumer::Consumer<ponte_bus::consume::SeekingContext>,
    scope: &str,
) -> Result<(), ReconcilerError> {
    if offsets.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let (writes, outputs) = tx.take();
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
    let mut outbox = |w: &mut ponte_store::BatchWriter<'_>, entry: OutboxEntry| {
        seq += 1;
        let mut k = OUTBOX.to_vec();
        k.extend_from_slice(format!("{seq:020}").as_bytes());
        w.put(&k, &entry.encode_to_vec());
    };
    for o in outputs {
        let kind = match o.kind {
            OutputKind::Change => KIND_CHANGE,
            OutputKind::Alert => KIND_ALERT,
        };
        outbox(
            &mut w,
            OutboxEntry {
                kind,
                key: o.key,
                payload: o.payload,
            },
        );
    }
    for (k, v) in &writes {
        let key = format!("{scope}|{}", String::from_utf8_lossy(k));
        let entry = match v {
            Some(v) => OutboxEntry {
                kind: KIND_STATE_PUT,
                key,
                payload: v.clone(),
            },
            None => OutboxEntry {
                kind: KIND_STATE_DELETE,
                key,
                payload: Vec::new(),
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
                key: format!("{scope}|{CHANGELOG_OFFSET}{partition}/{topic}"),
                payload: next.to_be_bytes().to_vec(),
            },
        );
    }
    w.put(OUTBOX_SEQ, &seq.to_be_bytes());
    w.commit()?;
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
}

/// Publishes every outbox entry and deletes the acknowledged ones, offsets last. Returns how
/// many remain.
async fn drain_outbox(
    store: &Store,
    publisher: &Publisher,
    out: &OutTopics,
) -> Result<usize, ReconcilerError> {
    let entries = store.scan_prefix(OUTBOX)?;
    if entries.is_empty() {
        return Ok(0);
    }
    let mut decoded = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let entry = OutboxEntry::decode(v.as_slice()).map_err(|e| ReconcilerError::Corrupt {
            key: String::from_utf8_lossy(&k).into_owned(),
            reason: e.to_string(),
        })?;
        decoded.push((k, entry));
    }
    let (offsets, others): (Vec<_>, Vec<_>) = decoded
        .into_iter()
        .partition(|(_, e)| e.kind == KIND_OFFSET);
    let mut remaining = publish_entries(store, publisher, out, others).await?;
    if remaining == 0 {
        remaining += publish_entries(store, publisher, out, offsets).await?;
    } else {
        remaining += offsets.len();
    }
    if remaining > 0 {
        tracing::warn!(
            remaining,
            "outputs not acknowledged; retrying with the next batch"
        );
    }
    Ok(remaining)
}

async fn publish_entries(
    store: &Store,
    publisher: &Publisher,
    out: &OutTopics,
    entries: Vec<(Vec<u8>, OutboxEntry)>,
) -> Result<usize, ReconcilerError> {
    let sends = entries.iter().map(|(k, e)| async move {
        let (res, kind) = match e.kind {
            KIND_ALERT => (
                publisher
                    .publish_bytes(&out.alerts, &e.key, &e.payload, "compliance_alert", "")
                    .await,
                "alert",
            ),
            KIND_STATE_DELETE => (
                publisher.publish_tombstone(&out.changelog, &e.key).await,
                "changelog",
            ),
            KIND_STATE_PUT | KIND_OFFSET => (
                publisher
                    .publish_bytes(&out.changelog, &e.key, &e.payload, "state", "")
                    .await,
                "changelog",
            ),
            _ => (
                publisher
                    .publish_bytes(&out.changes, &e.key, &e.payload, "compliance_change", "")
                    .await,
                "change",
            ),
        };
        (k, res.is_ok(), kind)
    });
    let results = futures::future::join_all(sends).await;
    let mut w = store.batch();
    let mut remaining = 0;
    for (k, ok, kind) in results {
        if ok {
            w.delete(k);
            metrics::counter!("ponte_reconciler_outputs_published_total", "kind" => kind)
                .increment(1);
        } else {
            remaining += 1;
        }
    }
    w.commit()?;
    Ok(remaining)
}

/// Rebuilds an empty store from the changelog topic: every state entry and the consumed
/// offsets it was derived from. Inputs after those offsets are then consumed as usual.
fn restore_from_changelog(
    store: &Store,
    kafka: &KafkaConfig,
    changelog: &str,
    scope: &str,
) -> Result<u64, ReconcilerError> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let consumer: BaseConsumer = kafka
        .client_config("ponte-reconciler-restore")
        .set("enable.auto.commit", "false")
        .set("group.id", "ponte-reconciler-restore")
        .create()
        .map_err(|e| ReconcilerError::Startup(format!("restore consumer: {e}")))?;
    let timeout = Duration::from_secs(30);
    let md = consumer
        .fetch_metadata(Some(changelog), timeout)
        .map_err(|e| ReconcilerError::Startup(format!("changelog metadata: {e}")))?;
    let mut tpl = TopicPartitionList::new();
    let mut pending: std::collections::BTreeMap<i32, i64> = Default::default();
    for t in md.topics() {
        for p in t.partitions() {
            // Right after a topic is created its partitions may not have a leader yet: retry.
            let mut attempt = 0;
            let (low, high) = loop {
                match consumer.fetch_watermarks(changelog, p.id(), timeout) {
                    Ok(w) => break w,
                    Err(e) if attempt < 60 => {
                        attempt += 1;
                        tracing::info!(partition = p.id(), error = %e, "changelog not ready; retrying");
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    Err(e) => {
                        return Err(ReconcilerError::Startup(format!(
                            "changelog watermarks: {e}"
                        )));
                    }
                }
            };
            if high > low {
                pending.insert(p.id(), high);
                let _ = tpl.add_partition_offset(changelog, p.id(), Offset::Beginning);
            }
        }
    }
    if pending.is_empty() {
        return Ok(0);
    }
    consumer
        .assign(&tpl)
        .map_err(|e| ReconcilerError::Startup(format!("changelog assign: {e}")))?;
    let mut restored = 0u64;
    let mut w = store.batch();
    let deadline = Instant::now() + Duration::from_secs(3600);
    while !pending.is_empty() {
        if Instant::now() > deadline {
            return Err(ReconcilerError::Startup(
                "changelog restore did not finish in an hour".into(),
            ));
        }
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let msg = msg.map_err(|e| ReconcilerError::Startup(format!("changelog read: {e}")))?;
        let full = String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned();
        if msg.offset() + 1 >= pending.get(&msg.partition()).copied().unwrap_or(0) {
            pending.remove(&msg.partition());
        }
        // Entries are scoped by consumer group: another deployment's state is not ours.
        let Some(key) = full.strip_prefix(&format!("{scope}|")).map(str::to_owned) else {
            continue;
        };
        if let Some(rest) = key.strip_prefix(CHANGELOG_OFFSET) {
            if let (Some((partition, topic)), Some(bytes)) = (rest.split_once('/'), msg.payload())
                && let (Ok(partition), Ok(arr)) =
                    (partition.parse::<i32>(), <[u8; 8]>::try_from(bytes))
            {
                w.set_offset(topic, partition, i64::from_be_bytes(arr));
            }
        } else {
            match msg.payload() {
                Some(v) => w.put(key.as_bytes(), v),
                None => w.delete(key.as_bytes()),
            }
        }
        restored += 1;
        if w.len() >= 10_000 {
            std::mem::replace(&mut w, store.batch()).commit()?;
        }
    }
    w.commit()?;
    metrics::counter!("ponte_reconciler_restored_entries_total").increment(restored);
    Ok(restored)
}

fn refresh_gauges(
    store: &Store,
    assignment: &ponte_bus::consume::Assignment,
    readiness: &Readiness,
) {
    let owned = assignment.partitions().len();
    metrics::gauge!("ponte_reconciler_assigned_partitions").set(owned as f64);
    metrics::gauge!("ponte_reconciler_state_bytes").set(store.approximate_size_bytes() as f64);
    if let Ok(parked) = store.scan(b"k/") {
        metrics::gauge!("ponte_reconciler_parked_records").set(parked.len() as f64);
    }
    if let Ok(outbox) = store.scan(OUTBOX) {
        metrics::gauge!("ponte_reconciler_outbox_pending").set(outbox.len() as f64);
    }
    // Outcomes by conditionality and status, summed over municipalities and periods.
    if let Ok(rows) = store.scan(b"i/") {
        let mut sums: std::collections::BTreeMap<(String, &'static str), u64> = Default::default();
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
    if owned > 0 {
        readiness.set_ready();
    } else {
        readiness.set_not_ready("no partitions assigned yet");
    }
}

/// Runs the reconciler until `shutdown` is cancelled.
pub async fn run(
    cfg: &ReconcilerConfig,
    kafka: &KafkaConfig,
    topics: &TopicsConfig,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), ReconcilerError> {
    let topology = topology_from(cfg)?;
    tracing::info!(rule_set = %topology.rules().reference(), from = %cfg.monitor_from, to = %cfg.monitor_to, "rule set loaded");
    let durability = match cfg.durability.as_str() {
        "process" => Durability::Process,
        "machine" => Durability::Machine,
        other => {
            return Err(ReconcilerError::Startup(format!(
                "reconciler.durability: {other:?} is not `process` or `machine`"
            )));
        }
    };
    std::fs::create_dir_all(&cfg.state_dir).map_err(|e| {
        ReconcilerError::Startup(format!("creating {}: {e}", cfg.state_dir.display()))
    })?;
    let store = Store::open(&cfg.state_dir, durability)?;
    tracing::info!(state_dir = %cfg.state_dir.display(), "state store open");
    let publisher = Publisher::new(kafka, "reconciler")?;
    let out = OutTopics {
        changes: topics.name(Topic::ComplianceChanges),
        alerts: topics.name(Topic::ComplianceAlerts),
        changelog: topics.name(Topic::ReconcilerChangelog),
    };
    if store.is_empty()? {
        readiness.set_not_ready("restoring state from the changelog");
        let (s, k, c, g) = (
            store.clone(),
            kafka.clone(),
            out.changelog.clone(),
            cfg.group_id.clone(),
        );
        let started = Instant::now();
        let restored = tokio::task::spawn_blocking(move || {
            let n = restore_from_changelog(&s, &k, &c, &g)?;
            // Derived counts are rebuilt from the restored views: the changelog holds the latest
            // value of every key, not one consistent cut across keys.
            crate::topology::rebuild_indicators(&s)?;
            Ok::<_, ReconcilerError>(n)
        })
        .await
        .map_err(|e| ReconcilerError::Startup(format!("restore task: {e}")))??;
        tracing::info!(
            restored,
            seconds = started.elapsed().as_secs_f64(),
            "store restored from the changelog"
        );
    }

    // gRPC: the compliance API, health and reflection.
    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ponte_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ReconcilerError::Startup(format!("reflection: {e}")))?;
    let addr: std::net::SocketAddr = cfg.grpc_listen.parse().map_err(|e| {
        ReconcilerError::Startup(format!("reconciler.grpc_listen {:?}: {e}", cfg.grpc_listen))
    })?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ReconcilerError::Startup(format!("binding {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| ReconcilerError::Startup(e.to_string()))?;
    let api = ComplianceServiceServer::new(ComplianceApi::new(
        store.clone(),
        topology.rules().clone(),
        kafka.clone(),
        out.changes.clone(),
    ));
    health
        .set_serving::<ComplianceServiceServer<ComplianceApi>>()
        .await;
    let grpc_stop = shutdown.clone();
    let grpc = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(api)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move { grpc_stop.cancelled().await },
            )
            .await
    });
    tracing::info!(%local, "gRPC ComplianceService listening (health and reflection on)");

    // Outputs left by a previous run (crash between commit and ack) go out first.
    drain_outbox(&store, &publisher, &out).await?;

    // The consumer loop.
    let inputs = Inputs::new(topics);
    let input_refs: Vec<&str> = inputs.by_topic.iter().map(|(t, _)| t.as_str()).collect();
    let (consumer, assignment) = group_consumer(
        kafka,
        &cfg.group_id,
        "ponte-reconciler",
        &input_refs,
        Arc::new(StoreOffsets(store.clone())),
        cfg.session_timeout_ms,
    )?;
    let linger = Duration::from_millis(cfg.batch_linger_ms);
    let mut tx = Tx::new(&store);
    let mut offsets = std::collections::BTreeMap::new();
    let mut stats = BatchStats::default();
    let mut last_gauges = Instant::now() - Duration::from_secs(60);
    loop {
        if last_gauges.elapsed() >= Duration::from_secs(1) {
            refresh_gauges(&store, &assignment, &readiness);
            last_gauges = Instant::now();
        }
        let next = if offsets.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                m = consumer.recv() => Some(m),
                _ = tokio::time::sleep(Duration::from_secs(1)) => None,
            }
        } else {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                m = tokio::time::timeout(linger, consumer.recv()) => m.ok(),
            }
        };
        match next {
            Some(Ok(msg)) => {
                apply_message(&topology, &inputs, &mut tx, &mut offsets, &mut stats, &msg)?;
                if stats.events >= cfg.batch_max {
                    commit(
                        &store,
                        &mut tx,
                        &mut offsets,
                        &mut stats,
                        &consumer,
                        &cfg.group_id,
                    )?;
                    drain_outbox(&store, &publisher, &out).await?;
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
                    &consumer,
                    &cfg.group_id,
                )?;
                drain_outbox(&store, &publisher, &out).await?;
            }
        }
    }
    // Whatever was applied in memory is committed with its offsets; nothing is half-written.
    commit(
        &store,
        &mut tx,
        &mut offsets,
        &mut stats,
        &consumer,
        &cfg.group_id,
    )?;
    drop(tx);
    let _ = drain_outbox(&store, &publisher, &out).await;
    readiness.set_not_ready("shutting down");
    health
        .set_not_serving::<ComplianceServiceServer<ComplianceApi>>()
        .await;
    drop(consumer);
    match grpc.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "gRPC server failed"),
        Err(e) => tracing::error!(error = %e, "gRPC task failed"),
    }
    let p = publisher.clone();
    let _ = tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(10))).await;
    tracing::info!("reconciler stopped");
    Ok(())
}
