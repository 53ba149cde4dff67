//! The bare-broker baseline: the same records (keys and encoded events, as the adapters would
//! publish them) produced with the producer settings Ponte uses (idempotent, `acks=all`, lz4,
//! `linger.ms=5`) and consumed back, with no Ponte logic in between.
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// Figures of one run.
#[derive(Debug)]
pub(crate) struct Figures {
    pub(crate) records: u64,
    pub(crate) bytes: u64,
    pub(crate) produce: Duration,
    pub(crate) consume: Duration,
}

impl Figures {
    /// Records through the broker per second: each record produced (acknowledged) and
    /// consumed once, the two phases one after the other.
    pub(crate) fn rate(&self) -> f64 {
        self.records as f64 / (self.produce + self.consume).as_secs_f64().max(1e-9)
    }
}

pub(crate) async fn create_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let res = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    for r in res {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    Ok(())
}

pub(crate) async fn delete_topics(bootstrap: &str, topics: &[String]) -> anyhow::Result<()> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    admin
        .delete_topics(
            &names,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    Ok(())
}

/// Produces `records` to a new topic of `partitions` partitions, then consumes them all back.
pub(crate) async fn run(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    records: &[(String, Vec<u8>)],
) -> anyhow::Result<Figures> {
    create_topic(bootstrap, topic, partitions).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create()?;
    let bytes: u64 = records
        .iter()
        .map(|(k, v)| (k.len() + v.len()) as u64)
        .sum();
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for (key, payload) in records {
        let mut record = FutureRecord::to(topic)
            .key(key.as_str())
            .payload(payload.as_slice());
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    in_flight.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    match in_flight.next().await {
                        Some(res) => check(res)?,
                        None => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
                Err((e, _)) => anyhow::bail!("produce: {e}"),
            }
        }
        if in_flight.len() >= 100_000
            && let Some(res) = in_flight.next().await
        {
            check(res)?;
        }
    }
    while let Some(res) = in_flight.next().await {
        check(res)?;
    }
    let produce = started.elapsed();

    let consumer = reader(bootstrap, topic, partitions)?;
    let started = Instant::now();
    let mut seen = 0u64;
    let deadline = started + Duration::from_secs(600);
    while seen < records.len() as u64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "consumed {seen} of {} records in 600 s",
            records.len()
        );
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m?;
            std::hint::black_box(m.payload());
            seen += 1;
        }
    }
    let consume = started.elapsed();
    Ok(Figures {
        records: seen,
        bytes,
        produce,
        consume,
    })
}

/// A consumer of every partition of `topic` from the beginning (`read_committed`).
pub(crate) fn reader(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<BaseConsumer> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    Ok(c)
}

type Delivery = Result<OwnedDeliveryResult, futures::channel::oneshot::Canceled>;

fn check(res: Delivery) -> anyhow::Result<()> {
    match res {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(anyhow::anyhow!("produce: {e}")),
        Err(_) => Err(anyhow::anyhow!("produce: delivery cancelled")),
    }
}
