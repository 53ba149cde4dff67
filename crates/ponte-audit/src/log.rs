//! The audit log on Kafka: one writer per process, appending its chain to `<prefix>audit.v1`
//! keyed by the writer (so its entries keep their order on one partition), and the walk that
//! verifies the whole topic.
use std::time::{Duration, SystemTime};

use ponte_bus::{BusError, KafkaConfig, Publisher};
use ponte_proto::audit::v1::{Start, audit_entry::Body};
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::Mutex;

use crate::{Chain, Keys, Report, Signer, Verifier};

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
    chain: Mutex<Chain>,
}

impl AuditLog {
    /// Starts a new chain for `service` (writer `<service>/<random boot id>`) with its first
    /// entry, acknowledged before this returns.
    pub async fn start(
        publisher: Publisher,
        topic: &str,
        service: &str,
        signer: Signer,
    ) -> Result<Self, BusError> {
        let boot = ring_boot_id();
        let log = Self {
            publisher,
            topic: topic.to_owned(),
            chain: Mutex::new(Chain::new(&format!("{service}/{boot}"))),
            signer,
        };
        let start = Body::Start(Start {
            service: service.to_owned(),
            key_id: log.signer.key_id().to_owned(),
        });
        log.record(start).await?;
        Ok(log)
    }

    /// The writer's name.
    pub async fn writer(&self) -> String {
        self.chain.lock().await.writer().to_owned()
    }

    /// Appends `body` and waits until the broker acknowledged it (and the seal that follows
    /// it every [`SEAL_EVERY`] entries). Concurrent callers are ordered by the chain's lock,
    /// held only while their entries are enqueued.
    pub async fn record(&self, body: Body) -> Result<(), BusError> {
        let (entry, seal) = {
            let mut chain = self.chain.lock().await;
            let key = chain.writer().to_owned();
            let bytes = chain.append(body, now());
            let entry = self.enqueue(&key, &bytes)?;
            let seal = if chain.unsealed() >= SEAL_EVERY {
                let bytes = chain.seal(&self.signer, now());
                Some(self.enqueue(&key, &bytes)?)
            } else {
                None
            };
            (entry, seal)
        };
        entry.await?;
        if let Some(seal) = seal {
            seal.await?;
        }
        Ok(())
    }

    /// Seals what was appended since the last seal (nothing when nothing was).
    pub async fn seal(&self) -> Result<(), BusError> {
        let pending = {
            let mut chain = self.chain.lock().await;
            if chain.unsealed() == 0 {
                return Ok(());
            }
            let key = chain.writer().to_owned();
            let bytes = chain.seal(&self.signer, now());
            self.enqueue(&key, &bytes)?
        };
        pending.await.map(|_| ())
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

/// A random id for this process's chain.
fn ring_boot_id() -> String {
    let mut bytes = [0u8; 8];
    // SystemRandom fails only when the OS has no randomness; the time is unique enough then.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        bytes = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            .to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the whole audit topic as it is now (committed entries, every partition from its
/// start to its current end) through a [`Verifier`] with `keys`.
pub fn verify_topic(kafka: &KafkaConfig, topic: &str, keys: Keys) -> Result<Report, BusError> {
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
    let mut verifier = Verifier::new(keys);
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
                    verifier.check(&position, m.payload().unwrap_or_default());
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
    Ok(verifier.finish())
}
