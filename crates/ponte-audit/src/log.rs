//! The audit log on Kafka: one writer per process, appending its chain to `<prefix>audit.v1`
//! keyed by the writer (so its entries keep their order on one partition), and the walk that
//! verifies the whole topic.
use std::time::{Duration, SystemTime};

use ponte_bus::{BusError, KafkaConfig, Publisher};
use ponte_proto::audit::v1::{Read, Refusal, Start, Write, audit_entry::Body, read::Subject};
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::Mutex;

use crate::{Chain, Keys, Report, Signer, SubjectKey, Verifier};

/// A seal after this many entries (and at [`AuditLog::seal`], which a service calls on a
/// timer and at shutdown): an entry forged after the last seal shows at the next one.
pub const SEAL_EVERY: u64 = 100;

fn now() -> ponte_proto::Timestamp {
    ponte_bus::publish::timestamp(SystemTime::now())
}

/// A process's audit writer.
#[derive(Debug)]
pub struct AuditLog {
    publisher: Publisher,
    topic: String,
    signer: Signer,
    service: String,
    chain: Mutex<Writer>,
}

/// The chain being written, whether its `Start` entry was sent yet, and whether an entry of it
/// was lost (then the next entry starts a new chain rather than link to an entry that is not
/// on the topic).
#[derive(Debug)]
struct Writer {
    chain: Chain,
    started: bool,
    broken: bool,
}

/// `<service>/<random boot id>`: a new writer name for every chain.
fn writer_name(service: &str) -> String {
    format!("{service}/{}", uuid::Uuid::new_v4().simple())
}

impl AuditLog {
    /// Starts a new chain for `service` (writer `<service>/<random boot id>`). Its first entry,
    /// the `Start`, goes out with the first entry recorded and is acknowledged with it: a
    /// service starts while the broker is away (unready, answering 503) and records nothing
    /// until it has something to record.
    pub async fn start(
        publisher: Publisher,
        topic: &str,
        service: &str,
        signer: Signer,
    ) -> Result<Self, BusError> {
        let log = Self {
            publisher,
            topic: topic.to_owned(),
            chain: Mutex::new(Writer {
                chain: Chain::new(&writer_name(service)),
                started: false,
                broken: false,
            }),
            signer,
            service: service.to_owned(),
        };
        Ok(log)
    }

    fn start_body(&self) -> Body {
        Body::Start(Start {
            service: self.service.clone(),
            key_id: self.signer.key_id().to_owned(),
        })
    }

    /// The writer's name.
    pub async fn writer(&self) -> String {
        self.chain.lock().await.chain.writer().to_owned()
    }

    /// Appends `body` and waits until the broker acknowledged it (and the seal that follows
    /// it every [`SEAL_EVERY`] entries). Concurrent callers are ordered by the chain's lock,
    /// held only while their entries are enqueued.
    ///
    /// When an entry is lost (not enqueued, or its delivery failed for good), the chain is
    /// marked broken and the next entry starts a new chain (a new writer name and a `Start`),
    /// so the entries written after the loss do not link to an entry missing from the topic.
    /// (Entries enqueued by other requests before the loss was known still do: `verify`
    /// reports the gap there.)
    pub async fn record(&self, body: Body) -> Result<(), BusError> {
        let result = self.try_record(body).await;
        if result.is_err() {
            self.chain.lock().await.broken = true;
        }
        result
    }

    async fn try_record(&self, body: Body) -> Result<(), BusError> {
        let pending = {
            let mut w = self.chain.lock().await;
            let mut pending = Vec::with_capacity(3);
            if w.broken {
                w.chain = Chain::new(&writer_name(&self.service));
                w.broken = false;
                w.started = false;
            }
            if !w.started {
                let key = w.chain.writer().to_owned();
                let bytes = w.chain.append(self.start_body(), now());
                pending.push(self.enqueue(&key, &bytes));
                w.started = true;
            }
            let key = w.chain.writer().to_owned();
            let bytes = w.chain.append(body, now());
            pending.push(self.enqueue(&key, &bytes));
            if w.chain.unsealed() >= SEAL_EVERY {
                let bytes = w.chain.seal(&self.signer, now());
                pending.push(self.enqueue(&key, &bytes));
            }
            pending
        };
        for p in pending {
            p?.await?;
        }
        Ok(())
    }

    /// Seals what was appended since the last seal (nothing when nothing was).
    pub async fn seal(&self) -> Result<(), BusError> {
        let pending = {
            let mut w = self.chain.lock().await;
            if w.chain.unsealed() == 0 || w.broken {
                return Ok(());
            }
            let key = w.chain.writer().to_owned();
            let bytes = w.chain.seal(&self.signer, now());
            self.enqueue(&key, &bytes)
        };
        let result = match pending {
            Ok(p) => p.await.map(|_| ()),
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.chain.lock().await.broken = true;
        }
        result
    }

    fn enqueue(
        &self,
        key: &str,
        bytes: &[u8],
    ) -> Result<
        impl std::future::Future<Output = Result<ponte_bus::Delivered, BusError>> + Send + 'static,
        BusError,
    > {
        self.publisher.enqueue(
            &self.topic,
            key,
            bytes,
            "audit_entry",
            ponte_proto::AUDIT_SCHEMA,
        )
    }
}

/// What a service records: its [`AuditLog`] and the key identifiers are hashed under.
#[derive(Debug)]
pub struct Auditor {
    log: AuditLog,
    subjects: SubjectKey,
}

impl Auditor {
    /// Starts `service`'s chain, its producer lingering `linger` ([`crate::AuditConfig`]'s
    /// `linger_ms`); a task seals what is unsealed every second until `stop`.
    pub async fn start(
        kafka: &KafkaConfig,
        topic: &str,
        service: &str,
        (signer, subjects): (Signer, SubjectKey),
        linger: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<std::sync::Arc<Self>, BusError> {
        let publisher = Publisher::with_linger(kafka, &format!("{service}-audit"), linger)?;
        let log = AuditLog::start(publisher, topic, service, signer).await?;
        let auditor = std::sync::Arc::new(Self { log, subjects });
        let sealer = std::sync::Arc::clone(&auditor);
        tokio::spawn(async move {
            loop {
                let stopped = tokio::select! {
                    _ = stop.cancelled() => true,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => false,
                };
                if let Err(e) = sealer.log.seal().await {
                    tracing::warn!(error = %e, "sealing the audit chain");
                }
                if stopped {
                    break;
                }
            }
        });
        Ok(auditor)
    }

    /// The keyed hash of identifier `id` of `kind` (`nis`, `family`, `record`).
    pub fn hash(&self, kind: &str, id: &str) -> Vec<u8> {
        self.subjects.hash(kind, id)
    }

    /// A write whose records are all acknowledged; `record_ids` of the accepted ones.
    pub async fn write(
        &self,
        principal: &str,
        endpoint: &str,
        request_id: &str,
        accepted: usize,
        rejected: usize,
        record_ids: &[&str],
    ) -> Result<(), BusError> {
        self.log
            .record(Body::Write(Write {
                principal: principal.to_owned(),
                endpoint: endpoint.to_owned(),
                request_id: request_id.to_owned(),
                accepted: u32::try_from(accepted).unwrap_or(u32::MAX),
                rejected: u32::try_from(rejected).unwrap_or(u32::MAX),
                record_ids: record_ids.iter().map(|r| self.hash("record", r)).collect(),
            }))
            .await
    }

    /// A caller refused at the edge.
    pub async fn refusal(
        &self,
        principal: &str,
        listener: &str,
        reason: &str,
        endpoint: &str,
    ) -> Result<(), BusError> {
        self.log
            .record(Body::Refusal(Refusal {
                principal: principal.to_owned(),
                listener: listener.to_owned(),
                reason: reason.to_owned(),
                endpoint: endpoint.to_owned(),
            }))
            .await
    }

    /// A read of the view about `subject`, `returned` views handed out.
    pub async fn read(
        &self,
        principal: &str,
        rpc: &str,
        subject: ReadSubject<'_>,
        returned: usize,
    ) -> Result<(), BusError> {
        let subject = match subject {
            ReadSubject::Person(nis) => Some(Subject::Person(self.hash("nis", nis))),
            ReadSubject::Family(id) => Some(Subject::Family(self.hash("family", id))),
            ReadSubject::Household(id) => Some(Subject::Household(self.hash("household", id))),
            ReadSubject::Municipality(code) => Some(Subject::Municipality(code.to_owned())),
            ReadSubject::None => None,
        };
        self.log
            .record(Body::Read(Read {
                principal: principal.to_owned(),
                rpc: rpc.to_owned(),
                subject,
                returned: u32::try_from(returned).unwrap_or(u32::MAX),
            }))
            .await
    }
}

impl ponte_bus::ingest::WriteAudit for Auditor {
    fn write<'a>(
        &'a self,
        origin: &'a ponte_bus::ingest::Origin<'a>,
        accepted: usize,
        rejected: usize,
        record_ids: &'a [String],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BusError>> + Send + 'a>>
    {
        Box::pin(async move {
            let ids: Vec<&str> = record_ids.iter().map(String::as_str).collect();
            Auditor::write(
                self,
                origin.sender,
                origin.endpoint,
                origin.request_id,
                accepted,
                rejected,
                &ids,
            )
            .await
        })
    }
}

/// Records the refusals of an edge ([`ponte_edge::Gate::record_refusals`]) in the audit log,
/// each in a task of its own so the refusal is not held up (a failure is logged).
#[derive(Debug)]
pub struct Refusals(pub std::sync::Arc<Auditor>);

impl ponte_edge::RefusalAudit for Refusals {
    fn refused(&self, listener: &str, principal: &str, reason: &str, endpoint: &str) {
        let auditor = std::sync::Arc::clone(&self.0);
        let (listener, principal, reason, endpoint) = (
            listener.to_owned(),
            principal.to_owned(),
            reason.to_owned(),
            endpoint.to_owned(),
        );
        tokio::spawn(async move {
            if let Err(e) = auditor
                .refusal(&principal, &listener, &reason, &endpoint)
                .await
            {
                tracing::warn!(error = %e, %reason, "a refusal could not be written to the audit log");
            }
        });
    }
}

/// What a read was about.
#[derive(Debug, Clone, Copy)]
pub enum ReadSubject<'a> {
    Person(&'a str),
    Family(&'a str),
    /// A followed household (Unidos), by household id.
    Household(&'a str),
    Municipality(&'a str),
    /// A stream of changes or a list of parked records: no one subject.
    None,
}

/// Reads the whole audit topic as it is now (committed entries, every partition from its
/// start to its current end) through a [`Verifier`] with `keys`.
pub fn verify_topic(kafka: &KafkaConfig, topic: &str, keys: Keys) -> Result<Report, BusError> {
    let mut verifier = Verifier::new(keys);
    scan_topic(kafka, topic, |position, bytes| {
        verifier.check(position, bytes)
    })?;
    Ok(verifier.finish())
}

/// Calls `each` with the position and bytes of every committed entry of `topic`, partition by
/// partition, from its start to its end as it is now.
pub fn scan_topic(
    kafka: &KafkaConfig,
    topic: &str,
    mut each: impl FnMut(&str, &[u8]),
) -> Result<(), BusError> {
    let consumer: BaseConsumer = kafka
        .client_config("ponte-audit-verify")
        .set("group.id", "ponte-audit-verify")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(|e| BusError::Config(e.to_string()))?;
    let timeout = Duration::from_secs(30);
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| BusError::Unavailable(e.to_string()))?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(BusError::Config(format!("topic {topic} not found")));
    }
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        if high <= low {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(low))
            .map_err(|e| BusError::Config(e.to_string()))?;
        consumer
            .assign(&tpl)
            .map_err(|e| BusError::Config(e.to_string()))?;
        let mut next = low;
        while next < high {
            match consumer.poll(timeout) {
                Some(Ok(m)) => {
                    next = m.offset() + 1;
                    let position = format!("{topic} partition {p} offset {}", m.offset());
                    each(&position, m.payload().unwrap_or_default());
                }
                Some(Err(e)) => return Err(BusError::Unavailable(e.to_string())),
                None => {
                    // Past the last committed entry (transaction markers or aborted writes
                    // are not delivered): the position says so.
                    let pos = consumer
                        .position()
                        .ok()
                        .and_then(|l| l.find_partition(topic, p).and_then(|e| e.offset().to_raw()));
                    if pos.is_some_and(|o| o >= high) {
                        break;
                    }
                    return Err(BusError::Unavailable(format!(
                        "{topic} partition {p}: no entry within {timeout:?} at offset {next} (end {high})"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The ingestor of the adapter whose edge is `gate` (publishing with `publisher`, dead letters to the catalogue's topic,
/// at most `max_in_flight` records unacknowledged), recording every write — and every refusal
/// of its `gate` — in the adapter's audit log when `[audit]` configures one (`audit.key_dir`);
/// otherwise with a warning that nothing is recorded.
pub async fn adapter_ingestor(
    publisher: Publisher,
    max_in_flight: usize,
    cfg: &crate::AuditConfig,
    kafka: &KafkaConfig,
    topics: &ponte_bus::TopicsConfig,
    gate: &ponte_edge::Gate,
    stop: tokio_util::sync::CancellationToken,
) -> Result<ponte_bus::ingest::Ingestor, String> {
    use ponte_bus::Topic;
    // The adapter's name: its edge's listener (`education`, `health`, `assistance`).
    let adapter = gate.listener();
    let ingestor = ponte_bus::ingest::Ingestor::new(
        publisher,
        adapter,
        &topics.name(Topic::DeadLetter),
        max_in_flight,
    );
    let topic = topics.name(Topic::Audit);
    let service = adapter;
    match cfg.service_keys(service).map_err(|e| e.to_string())? {
        Some(keys) => {
            let auditor = Auditor::start(kafka, &topic, service, keys, cfg.linger(), stop)
                .await
                .map_err(|e| format!("audit log: {e}"))?;
            gate.record_refusals(std::sync::Arc::new(Refusals(std::sync::Arc::clone(
                &auditor,
            ))));
            Ok(ingestor.with_audit(auditor))
        }
        // Disabled: `service_keys` said so.
        None => Ok(ingestor),
    }
}
