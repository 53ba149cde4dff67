//! Wiring of the reconciler process: store, consumer loop and its epochs, gRPC server.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ponte_bus::consume::{PartitionSetup, group_consumer};
use ponte_bus::{KafkaConfig, TopicsConfig};
use ponte_proto::compliance::v1::compliance_service_server::ComplianceServiceServer;
use ponte_runtime::Readiness;
use ponte_store::{Durability, Memory, Store};
use tokio_util::sync::CancellationToken;

use crate::config::{ReconcilerConfig, topology_from};
use crate::driver::{Driver, Inputs};
use crate::epoch::{Committer, Faults, Routes};
use crate::grpc::ComplianceApi;
use crate::topology::Topology;
use crate::{ReconcilerError, startup};

/// On every assignment, brings the local state of each newly assigned partition up to the
/// changelog ([`crate::restore`]), on the consumer's preparation thread while the partitions
/// are paused.
struct PartitionRestore {
    store: Store,
    topology: Topology,
    kafka: KafkaConfig,
    changelog: String,
}

impl PartitionSetup for PartitionRestore {
    fn prepare(
        &self,
        assigned: &BTreeMap<(String, i32), Option<i64>>,
        still_wanted: &dyn Fn() -> bool,
    ) -> Result<(), String> {
        let partitions: BTreeSet<i32> = assigned.keys().map(|(_, p)| *p).collect();
        for p in partitions {
            crate::restore::restore_partition(
                &self.store,
                &self.kafka,
                &self.changelog,
                p,
                still_wanted,
            )
            .map_err(|e| format!("partition {p}: {e}"))?;
            crate::restore::ensure_index(&self.store, &self.topology, p, still_wanted)
                .map_err(|e| format!("partition {p}'s index: {e}"))?;
        }
        Ok(())
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

/// The partition count of each of `topics`, waiting while one does not exist yet.
fn partition_counts(
    kafka: &KafkaConfig,
    topics: &[String],
) -> Result<BTreeMap<String, usize>, ReconcilerError> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let consumer: BaseConsumer = kafka
        .client_config("ponte-reconciler-metadata")
        .create()
        .map_err(startup)?;
    let mut counts = BTreeMap::new();
    for t in topics {
        let n = crate::while_topic_settles(
            &format!("topic {t} (created by `ponte topics ensure`)"),
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
        .ok_or_else(|| startup(format!("topic {t}: gave up")))?;
        counts.insert(t.clone(), n);
    }
    Ok(counts)
}

/// The partition count shared by the input topics (they must be co-partitioned).
fn input_partitions(kafka: &KafkaConfig, inputs: &[String]) -> Result<i32, ReconcilerError> {
    let counts = partition_counts(kafka, inputs)?;
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

/// Deletes the read model an earlier version kept at `dir`: a copy of every person's view,
/// which nothing reads now and which is not kept longer than it is needed (docs/privacy.md).
fn remove_read_model(dir: &std::path::Path) -> Result<(), ReconcilerError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {
            tracing::info!(dir = %dir.display(), "removed the read model an earlier version left");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(startup(format!(
            "removing the read model an earlier version left at {}: {e}",
            dir.display()
        ))),
    }
}

/// Stops the partition preparation of `assignment` (a restore under way stops at its next step).
async fn close_assignment(assignment: &ponte_bus::consume::Assignment) {
    let assignment = assignment.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || assignment.close()).await {
        tracing::error!(error = %e, "stopping the partition preparation");
    }
}

/// Runs the reconciler until `shutdown` is cancelled.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    cfg: &ReconcilerConfig,
    kafka: &KafkaConfig,
    topics: &TopicsConfig,
    tls: &ponte_edge::TlsConfig,
    access: &ponte_edge::AccessConfig,
    audit: &ponte_audit::AuditConfig,
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
    std::fs::create_dir_all(&state_dir)
        .map_err(|e| startup(format!("creating {}: {e}", state_dir.display())))?;
    remove_read_model(&cfg.state_dir.join("read"))?;
    for key in &cfg.ignored {
        tracing::warn!(
            key,
            "set, and not used by this version: remove it from the configuration"
        );
    }
    // No write-ahead log: the changelog is the state's durability, the store a cache of it.
    let store = Store::open_with_layout(
        &state_dir,
        Durability::Rebuildable,
        Memory::mib(cfg.state_memory_mb),
        cfg.state_compaction.layout(),
    )?;
    {
        // What a version before epochs left: its outbox, read by nothing now.
        let mut w = store.batch();
        w.delete_prefix(b"o/");
        w.delete(b"meta/outbox_seq");
        w.commit()?;
    }
    tracing::info!(state_dir = %cfg.state_dir.display(), "state store open");
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
    // The changes topic co-partitioned with the inputs: each change goes to its input's
    // partition, so the owner of an input partition is the only writer of its changes
    // partition (and one that lost it is fenced).
    let changes = topics.name(ponte_bus::Topic::ComplianceChanges);
    let changes_partitions = {
        let (k, t) = (kafka.clone(), changes.clone());
        tokio::task::spawn_blocking(move || partition_counts(&k, std::slice::from_ref(&t)))
            .await
            .map_err(startup)??
            .remove(&changes)
            .unwrap_or_default()
    };
    let by_input = usize::try_from(partitions).is_ok_and(|n| n == changes_partitions);
    if !by_input {
        tracing::warn!(
            topic = %changes,
            partitions = changes_partitions,
            inputs = partitions,
            "the changes topic's partition count is not the inputs': changes are partitioned by key"
        );
    }
    // Repartition messages go out in batches placed as the producers of the inputs place keys.
    ponte_bus::partition::check_partitioner(&kafka.properties).map_err(startup)?;
    let routes = Routes::new(topics, group, partitions);
    let routes = if by_input {
        routes.changes_in_input_partitions()
    } else {
        routes
    };
    let mut committer = Committer::new(
        store.clone(),
        kafka.clone(),
        routes.clone(),
        transactional_id(cfg)?,
        cfg.transaction_timeout,
        Faults::from_env()?,
    );
    committer.init()?;
    // Reads are answered from the state (and refused once a read of it failed).
    let read_path = crate::grpc::ReadPath::from_env()?;

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
    let new_consumer = || {
        group_consumer(
            kafka,
            group,
            "ponte-reconciler",
            &input_refs,
            Arc::new(PartitionRestore {
                store: store.clone(),
                topology: topology.clone(),
                kafka: kafka.clone(),
                changelog: routes.changelog().to_owned(),
            }),
            ponte_bus::consume::Membership {
                session_timeout_ms: u32::try_from(cfg.session_timeout.as_millis())
                    .unwrap_or(u32::MAX),
                instance_id: Some(cfg.instance_id.as_str()).filter(|id| !id.is_empty()),
                advertised: cfg.peer.advertise.as_deref(),
            },
        )
    };
    let (mut consumer, mut assignment) = new_consumer()?;
    let (assignment_tx, assignment_rx) = tokio::sync::watch::channel(assignment.clone());

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
    // The audit log: every read is recorded in it before it is answered.
    let auditor = match audit.service_keys("reconciler").map_err(startup)? {
        Some(keys) => Some(
            ponte_audit::log::Auditor::start(
                kafka,
                &topics.name(ponte_bus::Topic::Audit),
                "reconciler",
                keys,
                audit.linger(),
                shutdown.clone(),
            )
            .await
            .map_err(|e| startup(format!("audit log: {e}")))?,
        ),
        // Disabled: `service_keys` said so.
        None => None,
    };
    if let Some(a) = &auditor {
        gate.record_refusals(Arc::new(ponte_audit::log::Refusals(Arc::clone(a))));
    }
    // Reads across instances: who owns which partition, from the group's description.
    let (peers, owners_thread) = match &cfg.peer.advertise {
        Some(own) => {
            let owners = Arc::new(crate::peers::Owners::default());
            let peers =
                crate::peers::Peers::new(&cfg.peer, tls.is_insecure(), Arc::clone(&owners))?;
            let thread = crate::peers::follow_owners(
                kafka,
                group,
                shared.iter().cloned().collect(),
                own.clone(),
                owners,
                cfg.peer.refresh,
                shutdown.clone(),
            )?;
            tracing::info!(advertised = %own, "reads of other instances' partitions are asked of their owners");
            if tls.is_insecure() {
                tracing::warn!(
                    "peer reads over plaintext listeners carry no client certificate: the other instances answer them only if their access.anonymous_principal has peer = true, and such reads are UNAVAILABLE otherwise"
                );
            }
            (Some(Arc::new(peers)), Some(thread))
        }
        None => (None, None),
    };
    let outcome_counter = crate::gauges::spawn_outcome_counter(
        store.clone(),
        assignment_rx.clone(),
        shutdown.clone(),
    );
    let api = ComplianceApi {
        state: store.clone(),
        assignment: assignment_rx,
        topology: Arc::new(topology.clone()),
        partitions,
        kafka: kafka.clone(),
        changes_topic: routes.changes().to_owned(),
        gate: Arc::clone(&gate),
        path: read_path.clone(),
        audit: auditor,
        peers,
    };
    // Requests are a NIS, a code or a page token: nothing legitimate comes near this.
    let peer_api = ponte_proto::reconciler::v1::peer_service_server::PeerServiceServer::new(
        crate::peers::PeerApi(api.clone()),
    )
    .max_decoding_message_size(MAX_GRPC_REQUEST_BYTES);
    let api = ComplianceServiceServer::new(api).max_decoding_message_size(MAX_GRPC_REQUEST_BYTES);
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
            .add_service(peer_api)
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

    // The consumer loop: see [`crate::driver`]. A consumer that lost every broker for good
    // ([`ponte_bus::brokers`]) is replaced, and the transactional producer with it: the loop
    // starts again from the group's committed offsets, as after a rebalance.
    let result = loop {
        let result = Driver {
            topology: &topology,
            inputs: &inputs,
            store: &store,
            consumer: &consumer,
            assignment: &assignment,
            committer: &mut committer,
            readiness: &readiness,
            read_path: &read_path,
            limits: crate::driver::EpochLimits {
                batch_max: cfg.batch_max,
                batch_linger: cfg.batch_linger,
                behind: cfg.behind,
            },
            apply_threads: cfg.apply_threads,
            shutdown: &shutdown,
        }
        .run()
        .await;
        let lost = match &result {
            Err(ReconcilerError::ClientLost(why)) if !shutdown.is_cancelled() => why,
            _ => {
                committer.abort_open();
                break result;
            }
        };
        tracing::error!(reason = %lost, "replacing the Kafka consumer and producer");
        readiness.set_not_ready("replacing a Kafka client that lost every broker");
        // A transaction left open is aborted by the new producer's registration of the id.
        committer.replace_producer();
        close_assignment(&assignment).await;
        // Closing a consumer that cannot reach its group coordinator may wait for it: the old
        // one is closed aside, and the new one joins meanwhile.
        let (fresh, fresh_assignment) = match new_consumer() {
            Ok(c) => c,
            Err(e) => break Err(e.into()),
        };
        let lost = std::mem::replace(&mut consumer, fresh);
        let client = rdkafka::consumer::Consumer::context(&lost)
            .client()
            .to_owned();
        ponte_bus::brokers::destroy_aside(lost);
        assignment = fresh_assignment;
        assignment_tx.send_replace(assignment.clone());
        ponte_bus::brokers::replaced(&client);
    };
    readiness.set_not_ready("shutting down");
    close_assignment(&assignment).await;
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
    if let Some(t) = owners_thread {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    if let Err(e) = outcome_counter.await {
        tracing::warn!(error = %e, "the outcome gauges' task failed");
    }
    // A restart then opens without restoring what was not flushed.
    if let Err(e) = store.flush() {
        tracing::warn!(error = %e, "flushing the state store at shutdown");
    }
    tracing::info!("reconciler stopped");
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_read_model_an_earlier_version_left_is_removed_and_none_is_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let read = dir.path().join("read");
        std::fs::create_dir_all(read.join("blobs")).unwrap();
        std::fs::write(read.join("blobs/000001.blob"), b"views of every person").unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        remove_read_model(&read).unwrap();
        assert!(!read.exists());
        assert!(dir.path().join("state").exists(), "the state is kept");
        remove_read_model(&read).unwrap();
    }
}
