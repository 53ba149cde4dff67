//! The floor: the least broker work any correct reconciler has to do for the same input, run as
//! a concurrent pipeline on the same broker in the same run — a fairer yardstick than the bare
//! broker, which only produces and consumes the inputs.
//!
//! Three stages run at once, with Ponte's producer settings (idempotent, `acks=all`, lz4,
//! `linger.ms=5`) and no logic beyond routing:
//! 1. the inputs (the same keys and encoded events as the adapters publish) are produced;
//! 2. a consumer reads them and, for each, produces one view change of `view_bytes` (Ponte's
//!    measured average in the same run) — or, for a record that arrives under an alternate
//!    identifier (a health record keyed by CNS or CPF, not NIS), one repartition message
//!    re-keyed by person instead;
//! 3. a consumer of the repartition topic produces the view change of each of those.
//!
//! The run ends when every view change is acknowledged; throughput is inputs per second from the
//! first input produced.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};

use crate::broker::{create_topic, reader};

/// Figures of one floor run.
#[derive(Debug)]
pub(crate) struct Figures {
    pub(crate) inputs: u64,
    pub(crate) repartitioned: u64,
    pub(crate) view_bytes: usize,
    pub(crate) elapsed: Duration,
}

impl Figures {
    pub(crate) fn rate(&self) -> f64 {
        self.inputs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Counts acknowledged deliveries; a failed one stops the run.
struct Acks {
    acked: AtomicU64,
    failed: AtomicBool,
}

/// The producers' context: counts into shared [`Acks`].
struct AckContext(Arc<Acks>);

impl rdkafka::ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.0.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => self.0.failed.store(true, Ordering::Relaxed),
        }
    }
}

fn producer(bootstrap: &str, acks: &Arc<Acks>) -> anyhow::Result<ThreadedProducer<AckContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create_with_context(AckContext(Arc::clone(acks)))?)
}

fn send(
    p: &ThreadedProducer<AckContext>,
    topic: &str,
    key: &[u8],
    payload: &[u8],
) -> anyhow::Result<()> {
    let mut record = BaseRecord::to(topic).key(key).payload(payload);
    loop {
        match p.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => anyhow::bail!("produce: {e}"),
        }
    }
}

/// True for an encoded event that reaches its person through the identity stage: a health
/// record whose subject is a CNS or CPF rather than a NIS.
fn needs_identity(payload: &[u8]) -> bool {
    use ponte_proto::events::v1::{Event, event::Record, health_follow_up::Subject};
    use prost::Message as _;
    matches!(
        Event::decode(payload).ok().and_then(|e| e.record),
        Some(Record::HealthFollowUp(h)) if matches!(h.subject, Some(Subject::Cns(_) | Subject::Cpf(_)))
    )
}

/// Runs the floor pipeline over `records` on topics `<prefix>floor.{in,rep,out}`.
pub(crate) async fn run(
    bootstrap: &str,
    prefix: &str,
    partitions: i32,
    records: &[(String, Vec<u8>)],
    view_bytes: usize,
) -> anyhow::Result<Figures> {
    let (t_in, t_rep, t_out) = (
        format!("{prefix}floor.in"),
        format!("{prefix}floor.rep"),
        format!("{prefix}floor.out"),
    );
    for t in [&t_in, &t_rep, &t_out] {
        create_topic(bootstrap, t, partitions).await?;
    }
    let inputs = records.len() as u64;
    let repartitioned = records.iter().filter(|(_, v)| needs_identity(v)).count() as u64;
    // A view of the measured size, as compressible as a JSON-free protobuf view is: the
    // input's own bytes repeated.
    let view =
        |payload: &[u8]| -> Vec<u8> { payload.iter().copied().cycle().take(view_bytes).collect() };
    let deadline = Instant::now() + Duration::from_secs(3600);
    let input_acks = Arc::new(Acks {
        acked: AtomicU64::new(0),
        failed: AtomicBool::new(false),
    });
    let out_acks = Arc::new(Acks {
        acked: AtomicU64::new(0),
        failed: AtomicBool::new(false),
    });
    let produce_inputs = || -> anyhow::Result<()> {
        let p = producer(bootstrap, &input_acks)?;
        for (k, v) in records {
            send(&p, &t_in, k.as_bytes(), v)?;
        }
        p.flush(Duration::from_secs(600))?;
        anyhow::ensure!(
            !input_acks.failed.load(Ordering::Relaxed),
            "an input was not acknowledged"
        );
        Ok(())
    };
    // Stages 2 and 3: a view change per input, or a repartition message.
    let stage = |from: &str, repartition: bool, expect: u64| -> anyhow::Result<()> {
        let c = reader(bootstrap, from, partitions)?;
        let p = producer(bootstrap, &out_acks)?;
        let mut seen = 0u64;
        while seen < expect {
            anyhow::ensure!(
                Instant::now() < deadline,
                "floor stage on {from}: {seen} of {expect} in an hour"
            );
            let Some(m) = c.poll(Duration::from_millis(100)) else {
                continue;
            };
            let m = m?;
            seen += 1;
            let key = m.key().unwrap_or_default();
            let payload = m.payload().unwrap_or_default();
            if repartition && needs_identity(payload) {
                send(&p, &t_rep, key, payload)?;
            } else {
                send(&p, &t_out, key, &view(payload))?;
            }
        }
        p.flush(Duration::from_secs(600))?;
        Ok(())
    };
    let started = Instant::now();
    tokio::task::block_in_place(|| {
        std::thread::scope(|scope| -> anyhow::Result<()> {
            let handles = [
                scope.spawn(produce_inputs),
                scope.spawn(|| stage(&t_in, true, inputs)),
                scope.spawn(|| stage(&t_rep, false, repartitioned)),
            ];
            for h in handles {
                h.join()
                    .map_err(|_| anyhow::anyhow!("floor thread panicked"))??;
            }
            Ok(())
        })
    })?;
    anyhow::ensure!(
        !out_acks.failed.load(Ordering::Relaxed),
        "an output was not acknowledged"
    );
    Ok(Figures {
        inputs,
        repartitioned,
        view_bytes,
        elapsed: started.elapsed(),
    })
}

/// The average payload size of up to `n` messages of `topic`, read from the beginning.
pub(crate) fn average_payload_blocking(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    n: u64,
) -> anyhow::Result<usize> {
    let c = reader(bootstrap, topic, partitions)?;
    let (mut count, mut bytes) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(30);
    while count < n && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m?;
            count += 1;
            bytes += m.payload().map_or(0, <[u8]>::len) as u64;
        } else if count > 0 {
            break;
        }
    }
    anyhow::ensure!(count > 0, "no message on {topic} to measure");
    Ok((bytes / count) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_records_under_a_cns_need_the_identity_stage_and_others_do_not() {
        use ponte_proto::events::v1::{
            Event, HealthFollowUp, SchoolAttendance, event::Record, health_follow_up::Subject,
        };
        use prost::Message as _;
        let health = |subject| {
            Event {
                record: Some(Record::HealthFollowUp(HealthFollowUp {
                    subject: Some(subject),
                    ..Default::default()
                })),
                ..Default::default()
            }
            .encode_to_vec()
        };
        assert!(needs_identity(&health(Subject::Cns(
            "898001160345678".into()
        ))));
        assert!(!needs_identity(&health(Subject::Nis("12345678901".into()))));
        let school = Event {
            record: Some(Record::SchoolAttendance(SchoolAttendance::default())),
            ..Default::default()
        }
        .encode_to_vec();
        assert!(!needs_identity(&school));
    }
}
