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
#[derive(Clone, PartialEq, prost::Message)]
struct OutboxEntry {
    /// 1 = change, 2 = alert.
    #[prost(int32, tag = "1")]
    kind: i32,
    #[prost(string, tag = "2")]
    key: String,
    #[prost(bytes = "vec", tag = "3")]
    payload: Vec<u8>,
}

const OUTBOX: &[u8] = b"o/";
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
    if !outputs.is_empty() {
        let mut seq = store
            .get(OUTBOX_SEQ)?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        for o in outputs {
            seq += 1;
            let entry = OutboxEntry {
                kind: match o.kind {
                    OutputKind::Change => 1,
                    OutputKind::Alert => 2,
                },
                key: o.key,
                payload: o.payload,
            };
            let mut k = OUTBOX.to_vec();
            k.extend_from_slice(format!("{seq:020}").as_bytes());
            w.put(&k, &entry.encode_to_vec());
        }
        w.put(OUTBOX_SEQ, &seq.to_be_bytes());
    }
    for ((topic, partition), next) in offsets.iter() {
        w.set_offset(topic, *partition, *next);
    }
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

/// Publishes every outbox entry and deletes the acknowledged ones. Returns how many remain.
async fn drain_outbox(
    store: &Store,
    publisher: &Publisher,
    changes_topic: &str,
    alerts_topic: &str,
) -> Result<usize, ReconcilerError> {
    let entries = store.scan_prefix(OUTBOX)?;
    if entries.is_empty() {
        return Ok(0);
    }
    let sends = entries.iter().map(|(k, v)| async move {
        let entry = OutboxEntry::decode(v.as_slice()).map_err(|e| ReconcilerError::Corrupt {
            key: String::from_utf8_lossy(k).into_owned(),
            reason: e.to_string(),
        })?;
        let (topic, kind) = if entry.kind == 2 {
            (alerts_topic, "compliance_alert")
        } else {
            (changes_topic, "compliance_change")
        };
        let res = publisher
            .publish_bytes(topic, &entry.key, &entry.payload, kind, "")
            .await;
        Ok::<_, ReconcilerError>((k.clone(), res.is_ok(), kind))
    });
    let results = futures::future::join_all(sends).await;
    let mut w = store.batch();
    let mut remaining = 0;
    for r in results {
        let (k, ok, kind) = r?;
        if ok {
            w.delete(&k);
            metrics::counter!("ponte_reconciler_outputs_published_total", "kind" => kind)
                .increment(1);
        } else {
            remaining += 1;
        }
    }
    w.commit()?;
    if remaining > 0 {
        tracing::warn!(
            remaining,
            "outputs not acknowledged; retrying with the next batch"
        );
    }
    Ok(remaining)
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
                ("NOT_FOLLOWED", c.public - c.followed),
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
    let changes_topic = topics.name(Topic::ComplianceChanges);
    let alerts_topic = topics.name(Topic::ComplianceAlerts);

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
    let api = ComplianceServiceServer::new(ComplianceApi::new(store.clone()));
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
    drain_outbox(&store, &publisher, &changes_topic, &alerts_topic).await?;

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
                    commit(&store, &mut tx, &mut offsets, &mut stats, &consumer)?;
                    drain_outbox(&store, &publisher, &changes_topic, &alerts_topic).await?;
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "consumer error");
                metrics::counter!("ponte_reconciler_consumer_errors_total").increment(1);
            }
            None => {
                commit(&store, &mut tx, &mut offsets, &mut stats, &consumer)?;
                drain_outbox(&store, &publisher, &changes_topic, &alerts_topic).await?;
            }
        }
    }
    // Whatever was applied in memory is committed with its offsets; nothing is half-written.
    commit(&store, &mut tx, &mut offsets, &mut stats, &consumer)?;
    drop(tx);
    let _ = drain_outbox(&store, &publisher, &changes_topic, &alerts_topic).await;
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
