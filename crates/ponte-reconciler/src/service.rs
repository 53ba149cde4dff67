//! Wiring of the reconciler process: store, consumer loop, gRPC server.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ponte_bus::consume::{OffsetSource, group_consumer};
use ponte_bus::{KafkaConfig, Topic, TopicsConfig};
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
use crate::view::{self, Pending};

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
}

struct StoreOffsets(Store);

impl OffsetSource for StoreOffsets {
    fn next_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, String> {
        self.0.offset(topic, partition).map_err(|e| e.to_string())
    }
}

/// The batch being built: view changes plus the next offset of each partition read.
struct Batch {
    pending: Pending,
    offsets: std::collections::BTreeMap<(String, i32), i64>,
    events: usize,
    ingest_times: Vec<SystemTime>,
}

impl Batch {
    fn new() -> Self {
        Self {
            pending: Pending::default(),
            offsets: Default::default(),
            events: 0,
            ingest_times: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }
}

fn apply_message(
    store: &Store,
    batch: &mut Batch,
    msg: &BorrowedMessage<'_>,
) -> Result<(), ReconcilerError> {
    let topic = msg.topic().to_owned();
    metrics::counter!("ponte_reconciler_events_consumed_total", "topic" => topic.clone())
        .increment(1);
    batch
        .offsets
        .insert((topic.clone(), msg.partition()), msg.offset() + 1);
    batch.events += 1;
    let Some(payload) = msg.payload() else {
        metrics::counter!("ponte_reconciler_events_ignored_total", "topic" => topic, "reason" => "empty_payload").increment(1);
        return Ok(());
    };
    let event = match Event::decode(payload) {
        Ok(e) => e,
        Err(e) => {
            // Adapters only publish valid events; anything else here is counted and logged with
            // its position so an operator can inspect it with a console consumer.
            tracing::error!(%topic, partition = msg.partition(), offset = msg.offset(), error = %e, "undecodable event");
            metrics::counter!("ponte_reconciler_events_ignored_total", "topic" => topic, "reason" => "undecodable").increment(1);
            return Ok(());
        }
    };
    let applied = view::apply(store, &mut batch.pending, &event)?;
    if applied.changed() {
        metrics::counter!("ponte_reconciler_events_applied_total", "topic" => topic.clone(), "result" => applied.label()).increment(1);
        if let Some(t) = event.ingest_time {
            let ts = SystemTime::UNIX_EPOCH
                + Duration::new(
                    u64::try_from(t.seconds).unwrap_or(0),
                    u32::try_from(t.nanos).unwrap_or(0),
                );
            batch.ingest_times.push(ts);
        }
    } else {
        metrics::counter!("ponte_reconciler_events_ignored_total", "topic" => topic, "reason" => applied.label()).increment(1);
    }
    Ok(())
}

fn commit(
    store: &Store,
    batch: &mut Batch,
    consumer: &impl rdkafka::consumer::Consumer<ponte_bus::consume::SeekingContext>,
) -> Result<(), ReconcilerError> {
    if batch.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let mut w = store.batch();
    for (k, v) in batch.pending.writes() {
        w.put(k, v);
    }
    for ((topic, partition), next) in &batch.offsets {
        w.set_offset(topic, *partition, *next);
    }
    w.commit()?;
    metrics::histogram!("ponte_reconciler_batch_commit_seconds")
        .record(started.elapsed().as_secs_f64());
    metrics::histogram!("ponte_reconciler_batch_events").record(batch.events as f64);
    let now = SystemTime::now();
    for t in batch.ingest_times.drain(..) {
        if let Ok(lat) = now.duration_since(t) {
            metrics::histogram!("ponte_reconciler_ingest_to_view_seconds")
                .record(lat.as_secs_f64());
        }
    }

    // Informational commit to Kafka so lag tools see progress; positions come from the store.
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), next) in &batch.offsets {
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next));
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        tracing::debug!(error = %e, "async offset commit not sent");
    }
    batch.pending.clear();
    batch.offsets.clear();
    batch.events = 0;
    Ok(())
}

/// Runs the reconciler until `shutdown` is cancelled.
pub async fn run(
    cfg: &ReconcilerConfig,
    kafka: &KafkaConfig,
    topics: &TopicsConfig,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), ReconcilerError> {
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
            .serve_with_incoming_shutdown(tokio_stream_listener(listener), async move {
                grpc_stop.cancelled().await
            })
            .await
    });
    tracing::info!(%local, "gRPC ComplianceService listening (health and reflection on)");

    // The consumer loop.
    let input_topics = [topics.name(Topic::EducationAttendance)];
    let input_refs: Vec<&str> = input_topics.iter().map(String::as_str).collect();
    let (consumer, assignment) = group_consumer(
        kafka,
        &cfg.group_id,
        "ponte-reconciler",
        &input_refs,
        Arc::new(StoreOffsets(store.clone())),
        cfg.session_timeout_ms,
    )?;
    let linger = Duration::from_millis(cfg.batch_linger_ms);
    let mut batch = Batch::new();
    let mut last_gauges = Instant::now() - Duration::from_secs(60);
    loop {
        if last_gauges.elapsed() >= Duration::from_secs(1) {
            let owned = assignment.partitions().len();
            metrics::gauge!("ponte_reconciler_assigned_partitions").set(owned as f64);
            metrics::gauge!("ponte_reconciler_state_bytes")
                .set(store.approximate_size_bytes() as f64);
            if owned > 0 {
                readiness.set_ready();
            } else {
                readiness.set_not_ready("no partitions assigned yet");
            }
            last_gauges = Instant::now();
        }
        let next = if batch.is_empty() {
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
                apply_message(&store, &mut batch, &msg)?;
                if batch.events >= cfg.batch_max {
                    commit(&store, &mut batch, &consumer)?;
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "consumer error");
                metrics::counter!("ponte_reconciler_consumer_errors_total").increment(1);
            }
            None => commit(&store, &mut batch, &consumer)?,
        }
    }
    // Whatever was applied in memory is committed with its offsets; nothing is half-written.
    commit(&store, &mut batch, &consumer)?;
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
    tracing::info!("reconciler stopped");
    Ok(())
}

fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> tokio_stream::wrappers::TcpListenerStream {
    tokio_stream::wrappers::TcpListenerStream::new(listener)
}
