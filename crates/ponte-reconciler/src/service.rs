//! Wiring of the reconciler process: store, consumer loop and its epochs, gRPC server.
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ponte_bus::consume::{PartitionSetup, group_consumer};
use ponte_bus::headers::EventHeaders;
use ponte_bus::{KafkaConfig, Topic, TopicsConfig};
use ponte_domain::period::Month;
use ponte_domain::rules::RuleSet;
use ponte_proto::compliance::v1::compliance_service_server::ComplianceServiceServer;
use ponte_proto::events::v1::{DeadLetter, Event};
use ponte_runtime::Readiness;
use ponte_store::{Durability, Memory, Store};
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::message::BorrowedMessage;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::epoch::{Committer, Consumed, Faults, Outcome, Routes};
use crate::grpc::ComplianceApi;
use crate::topology::{Applied, Input, OutputKind, Topology, Tx, Unapplicable};
use crate::{ReconcilerError, startup};

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
    /// How long an epoch's Kafka transaction may stay open before the broker aborts it: also
    /// how long a stalled or crashed instance's unfinished epoch can hold up the partitions'
    /// next owner and `read_committed` readers.
    pub transaction_timeout_ms: u64,
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

/// On every assignment, brings the local state of each newly assigned partition up to the
/// changelog ([`crate::restore`]).
struct PartitionRestore {
    store: Store,
    kafka: KafkaConfig,
    changelog: String,
}

impl PartitionSetup for PartitionRestore {
    fn prepare(&self, assigned: &BTreeMap<(String, i32), Option<i64>>) -> Result<(), String> {
        let partitions: BTreeSet<i32> = assigned.keys().map(|(_, p)| *p).collect();
        for p in partitions {
            crate::restore::restore_partition(&self.store, &self.kafka, &self.changelog, p)
                .map_err(|e| format!("partition {p}: {e}"))?;
        }
        Ok(())
    }
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
    stats: &mut Consumed,
    msg: &BorrowedMessage<'_>,
) -> Result<(), ReconcilerError> {
    let topic = msg.topic().to_owned();
    metrics::counter!("ponte_reconciler_events_consumed_total", "topic" => topic.clone())
        .increment(1);
    stats.record(&topic, msg.partition(), msg.offset());
    let Some(input) = inputs.input(&topic) else {
        // Only the subscribed topics are ever delivered.
        metrics::counter!("ponte_reconciler_events_ignored_total", "topic" => topic.clone(), "reason" => "unknown_topic").increment(1);
        return Ok(());
    };
    tx.set_partition(msg.partition());
    let payload = msg.payload().unwrap_or_default();
    // A message without the header is read as its topic's schema (tools that produce by hand
    // rarely set headers); one that names another schema is not guessed at.
    let schema = EventHeaders::value(msg.headers(), ponte_bus::headers::SCHEMA)
        .filter(|s| !input.reads_schema(s));
    let (applied, event) = if let Some(schema) = schema {
        (
            Applied::Invalid(Unapplicable::of_event(
                "unknown_schema",
                format!(
                    "schema {:?} on a topic of {}",
                    String::from_utf8_lossy(schema),
                    input.schema()
                ),
            )),
            None,
        )
    } else if payload.is_empty() {
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

/// Sends an event that cannot be applied to the dead-letter topic, in the epoch's transaction
/// (so it is out exactly when the epoch's offsets are committed), counted by class and logged
/// with its identifiers masked.
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

/// The instance's transactional id: `<group>.<instance_id>` for a named instance, else
/// `<group>.<random>` drawn once and kept in the state directory. A restarted instance takes
/// its id back, which aborts whatever transaction its previous process left open at once
/// (instead of after `transaction_timeout_ms`); two instances never share one, or the second
/// would fence the first.
fn transactional_id(cfg: &ReconcilerConfig) -> Result<String, ReconcilerError> {
    let group = &cfg.group_id;
    if !cfg.instance_id.is_empty() {
        return Ok(format!("{group}.{}", cfg.instance_id));
    }
    let file = cfg.state_dir.join("transactional-id");
    if let Ok(id) = std::fs::read_to_string(&file)
        && !id.trim().is_empty()
    {
        return Ok(id.trim().to_owned());
    }
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let id = format!("{group}.{:x}{:x}", std::process::id(), nanos);
    std::fs::write(&file, &id).map_err(|e| startup(format!("writing {}: {e}", file.display())))?;
    Ok(id)
}

/// Whether the read model may answer: not once it failed, nor before it caught up.
fn read_state(path: &crate::readmodel::ReadPath, caught_up: bool) -> Result<(), String> {
    match path.failure() {
        Some(why) => Err(format!("read model failed, reads refused: {why}")),
        None if !caught_up => Err("read model catching up with the changes topic".to_owned()),
        None => Ok(()),
    }
}

fn refresh_gauges(
    store: &Store,
    read: &Store,
    assignment: &ponte_bus::consume::Assignment,
    readiness: &Readiness,
    read_model: Result<(), String>,
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
    } else if let Err(why) = read_model {
        readiness.set_not_ready(why);
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
    let state_dir = cfg.state_dir.join("state");
    let read_dir = cfg.state_dir.join("read");
    for dir in [&state_dir, &read_dir] {
        std::fs::create_dir_all(dir)
            .map_err(|e| startup(format!("creating {}: {e}", dir.display())))?;
    }
    // No write-ahead log: the changelog is the state's durability, the store a cache of it.
    let store = Store::open_with(
        &state_dir,
        Durability::Rebuildable,
        Memory::mib(cfg.state_memory_mb),
    )?;
    // The read model is rebuilt from the changes topic whenever it is lost: no fsync needed.
    let read = Store::open_with(
        &read_dir,
        Durability::Process,
        Memory::mib(cfg.read_model_memory_mb),
    )?;
    {
        // What a version before epochs left: its outbox, read by nothing now.
        let mut w = store.batch();
        w.delete_prefix(b"o/");
        w.delete(b"meta/outbox_seq");
        w.commit()?;
    }
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
    let routes = Routes::new(topics, group);
    let mut committer = Committer::new(
        store.clone(),
        kafka.clone(),
        routes.clone(),
        transactional_id(cfg)?,
        Duration::from_millis(cfg.transaction_timeout_ms),
        Faults::from_env()?,
    );
    committer.init()?;

    // The read model: every instance follows the whole changes topic, so it can answer for
    // every person and family, whichever instance owns their partition.
    let (caught_up_tx, caught_up) = tokio::sync::watch::channel(false);
    let read_path = crate::readmodel::ReadPath::default();
    let read_task = tokio::spawn(crate::readmodel::run(
        kafka.clone(),
        routes.changes().to_owned(),
        read.clone(),
        caught_up_tx,
        read_path.clone(),
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
        Arc::new(PartitionRestore {
            store: store.clone(),
            kafka: kafka.clone(),
            changelog: routes.changelog().to_owned(),
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
    let api = ComplianceServiceServer::new(ComplianceApi {
        read: read.clone(),
        state: store.clone(),
        assignment: assignment.clone(),
        rules: topology.rules().clone(),
        kafka: kafka.clone(),
        changes_topic: routes.changes().to_owned(),
        gate: Arc::clone(&gate),
        path: read_path.clone(),
    })
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

    // The consumer loop: events are applied to an in-memory epoch over the local state and
    // committed together ([`crate::epoch`]). Work consumed under an older assignment generation
    // is dropped uncommitted (its partitions may belong to another instance now); it is
    // consumed again from the group's committed offsets, which is harmless.
    let linger = Duration::from_millis(cfg.batch_linger_ms);
    let mut tx = Tx::new(&store);
    let mut consumed = Consumed::default();
    let mut last_gauges = Instant::now() - Duration::from_secs(60);
    let mut generation = assignment.generation();
    let mut owned = assignment.partition_numbers();
    let mut parked = ParkedCount::default();
    parked.reassign(&store, &owned)?;
    let mut batch_started = Instant::now();
    // Set on every event: the handle is looked up once, not per event.
    let uncommitted = metrics::gauge!("ponte_reconciler_uncommitted_events");
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
                read_state(&read_path, *caught_up.borrow()),
                &parked,
                inputs.by_topic.len(),
            );
            last_gauges = Instant::now();
        }
        let next = if consumed.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                m = consumer.recv() => Some(m),
                _ = tokio::time::sleep(Duration::from_secs(1)) => None,
            }
        } else {
            // The epoch is committed `batch_linger_ms` after its first event at the latest,
            // however steadily events keep arriving.
            let left = linger.saturating_sub(batch_started.elapsed());
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                m = tokio::time::timeout(left, consumer.recv()) => m.ok(),
            }
        };
        if assignment.generation() != generation {
            if !consumed.is_empty() {
                tracing::info!(
                    events = consumed.events,
                    "assignment changed: the open epoch is dropped and consumed again from the committed offsets"
                );
            }
            drop(tx);
            tx = Tx::new(&store);
            consumed = Consumed::default();
            uncommitted.set(0.0);
            generation = assignment.generation();
            owned = assignment.partition_numbers();
            parked.reassign(&store, &owned)?;
            // The message (if any) was fetched under the new assignment: it is applied below.
        }
        let commit_now = match next {
            Some(Ok(msg)) => {
                if consumed.is_empty() {
                    batch_started = Instant::now();
                }
                apply_message(&topology, &inputs, &mut tx, &mut consumed, &msg)?;
                uncommitted.set(consumed.events as f64);
                consumed.events >= cfg.batch_max
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "consumer error");
                metrics::counter!("ponte_reconciler_consumer_errors_total").increment(1);
                false
            }
            None => true,
        };
        if commit_now {
            let (outcome, delta) = committer.commit(&mut tx, &mut consumed, &consumer).await?;
            if outcome == Outcome::Committed {
                parked.add(delta);
            }
            uncommitted.set(0.0);
        }
    };
    if result.is_ok() && assignment.generation() == generation {
        // Whatever was applied in memory is committed with its offsets; nothing is half-written.
        committer.commit(&mut tx, &mut consumed, &consumer).await?;
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
    // A restart then opens without replaying the write-ahead logs.
    for (name, s) in [("state store", &store), ("read model", &read)] {
        if let Err(e) = s.flush() {
            tracing::warn!(error = %e, "flushing the {name} at shutdown");
        }
    }
    tracing::info!("reconciler stopped");
    result
}
