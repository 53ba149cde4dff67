//! The audit log (issue 16), on the real broker: a writer's chain, written by 250 concurrent
//! records and sealed, verifies with `ponte audit verify`; copies of it with one entry deleted,
//! two reordered, one altered and one forged (its links recomputed, the seal after it left as
//! it was) are each refused, naming the problem and its position; a seal by a key the
//! deployment does not list is reported too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use ponte_audit::log::AuditLog;
use ponte_audit::{Signer, encode_key, hash};
use ponte_bus::{KafkaConfig, Publisher};
use ponte_integration_tests::{Stack, broker, read_topic};
use ponte_proto::audit::v1::{AuditEntry, Read, audit_entry::Body, read::Subject};
use prost::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};

const READS: usize = 250;

fn read(i: usize) -> Body {
    Body::Read(Read {
        principal: "urn:ponte:principal:municipality-sp".into(),
        rpc: "GetPerson".into(),
        subject: Some(Subject::Person(format!("hash-{i}").into_bytes())),
        returned: 1,
    })
}

/// Writes `entries` in order to a new one-partition topic of the stack; returns its name.
async fn copy(stack: &Stack, name: &str, entries: &[Vec<u8>]) -> String {
    let topic = stack.topic(&format!("audit-{name}.v1"));
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker())
        .create()
        .unwrap();
    let created = admin
        .create_topics(
            [&NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for e in entries {
        producer
            .send(
                FutureRecord::to(&topic).key("w").payload(e),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    topic
}

fn verify(stack: &Stack, topic: &str, key: &str) -> (bool, String) {
    let (status, out, err) =
        stack.ponte(&["audit", "verify", "--topic", topic, "--public-key", key]);
    (status.success(), format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_names_each_kind_of_tampering_with_its_position() {
    let stack = Stack::new("audit");
    assert!(stack.ponte(&["topics", "ensure"]).0.success());
    let topic = stack.topic("audit.v1");

    let signer = Signer::from_pkcs8("reconciler-1", &Signer::generate().unwrap()).unwrap();
    let key = format!("reconciler-1={}", encode_key(&signer.public_key()));
    let kafka = KafkaConfig {
        bootstrap_servers: broker().to_owned(),
        message_timeout_ms: 30_000,
        properties: Default::default(),
    };
    let log = Arc::new(
        AuditLog::start(
            Publisher::new(&kafka, "audit-test").unwrap(),
            &topic,
            "reconciler",
            signer,
        )
        .await
        .unwrap(),
    );
    let writes: Vec<_> = (0..READS)
        .map(|i| {
            let log = Arc::clone(&log);
            tokio::spawn(async move { log.record(read(i)).await })
        })
        .collect();
    for w in writes {
        w.await.unwrap().unwrap();
    }
    log.seal().await.unwrap();

    // The start, 250 reads, a seal every 100 entries and the last seal.
    let entries: Vec<Vec<u8>> = read_topic(&topic, READS + 4, Duration::from_secs(30))
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(entries.len(), READS + 4);
    let (ok, out) = verify(&stack, &topic, &key);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "{} entries from 1 writers, 3 seals, 0 problems",
            READS + 4
        )),
        "{out}"
    );

    // A deleted entry: the next one's sequence number is not the one due.
    let mut deleted = entries.clone();
    deleted.remove(10);
    let t = copy(&stack, "deleted", &deleted).await;
    let (ok, out) = verify(&stack, &t, &key);
    assert!(
        !ok && out.contains("partition 0 offset 10") && out.contains("1 entry is missing"),
        "{out}"
    );

    // Two entries swapped.
    let mut reordered = entries.clone();
    reordered.swap(20, 21);
    let t = copy(&stack, "reordered", &reordered).await;
    let (ok, out) = verify(&stack, &t, &key);
    assert!(
        !ok && out.contains("offset 21") && out.contains("reordered or replayed"),
        "{out}"
    );

    // An entry's content changed: the link of the entry after it breaks.
    let mut altered = entries.clone();
    let mut e = AuditEntry::decode(altered[30].as_slice()).unwrap();
    e.body = Some(read(9_999));
    altered[30] = e.encode_to_vec();
    let t = copy(&stack, "altered", &altered).await;
    let (ok, out) = verify(&stack, &t, &key);
    assert!(
        !ok && out.contains("offset 31: writer") && out.contains("broken link"),
        "{out}"
    );

    // A forged entry with every link after it recomputed: the next seal's signature fails.
    let mut forged: Vec<Vec<u8>> = entries[..40].to_vec();
    let mut last = hash(&entries[39]);
    for (i, original) in entries.iter().enumerate().skip(40) {
        let mut e = AuditEntry::decode(original.as_slice()).unwrap();
        if i == 40 {
            e.body = Some(read(123_456));
        }
        e.prev_hash = last.to_vec();
        let bytes = e.encode_to_vec();
        last = hash(&bytes);
        forged.push(bytes);
    }
    let first_seal_after = entries
        .iter()
        .enumerate()
        .skip(40)
        .find(|(_, b)| {
            matches!(
                AuditEntry::decode(b.as_slice()).unwrap().body,
                Some(Body::Seal(_))
            )
        })
        .map(|(i, _)| i)
        .unwrap();
    let t = copy(&stack, "forged", &forged).await;
    let (ok, out) = verify(&stack, &t, &key);
    assert!(
        !ok && out.contains(&format!("offset {first_seal_after}: writer"))
            && out.contains("bad signature"),
        "{out}"
    );

    // Sealed by a key the deployment does not list.
    let stranger = Signer::from_pkcs8("other", &Signer::generate().unwrap()).unwrap();
    let (ok, out) = verify(
        &stack,
        &topic,
        &format!("other={}", encode_key(&stranger.public_key())),
    );
    assert!(!ok && out.contains("does not list"), "{out}");
}
