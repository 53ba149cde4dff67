//! Kafka least privilege (issue 14): a broker of this test alone with SASL_SSL (SCRAM-SHA-512)
//! and ACLs, one principal per Ponte service (`PONTE_KAFKA_SECURE=1 deploy/local/kafka.sh`).
//!
//! - No service principal can create a topic, not even in its own topic family: `ponte topics
//!   ensure` fails for them and leaves nothing behind; admin's succeeds; a reconciler whose
//!   group's topics admin has not created stops at start.
//! - The education adapter's principal can write its attendance topic but can neither write
//!   nor see the registry topic, nor read back what it wrote.
//! - On the topics admin created, the education adapter and the reconciler run with their own
//!   principals: a record posted over HTTPS (as the education system) reaches the reconciler's view, an invalid one and an
//!   undecodable one are dead-lettered (by the adapter and by the reconciler), and neither
//!   service logs an authorization failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use ponte_integration_tests::secure_broker::{SecureBroker, SecureStack};
use ponte_integration_tests::{eventually, metric};
use ponte_proto::events::v1::DeadLetter;
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::{Value, json};

const NIS: &str = "26827649960"; // valid vector from docs/rules.md#test-vectors
const RECONCILER_GROUP: &str = "ponte-reconciler";
/// What the education adapter's principal writes straight to its topic: no event.
const PROBE: &str = "written by the education adapter's principal";

fn record(nis: &str) -> String {
    json!({
        "nis": nis,
        "inep_school_code": "35012345",
        "month": "2025-04",
        "unit": "days",
        "given": 20,
        "attended": 15,
        "low_attendance_reason": "62",
        "version": 1
    })
    .to_string()
}

/// Names of the topics `principal` sees in the cluster's metadata (Kafka lists only the topics
/// a principal may describe).
fn visible_topics(broker: &SecureBroker, principal: &str, prefix: &str) -> Vec<String> {
    let consumer: BaseConsumer = broker.client_config(principal).create().unwrap();
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("metadata as {principal}: {e}"));
    let mut names: Vec<String> = md
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// A consumer as `principal` assigned every partition of `topic` from the beginning (librdkafka
/// wants a group id even for an assignment; nothing is committed).
fn assigned_consumer(broker: &SecureBroker, principal: &str, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = broker
        .client_config(principal)
        .set(
            "group.id",
            format!("it-acls-reader-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("metadata of {topic} as {principal}: {e}"));
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
        }
    }
    assert!(tpl.count() > 0, "{topic} has no partitions for {principal}");
    consumer.assign(&tpl).unwrap();
    consumer
}

/// Every record on `topic` read as `principal`, waiting up to `timeout` for at least `min`.
fn read_as(
    broker: &SecureBroker,
    principal: &str,
    topic: &str,
    min: usize,
    timeout: Duration,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let consumer = assigned_consumer(broker, principal, topic);
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push((
                m.key().unwrap_or_default().to_vec(),
                m.payload().unwrap_or_default().to_vec(),
            )),
            Some(Err(e)) => panic!("reading {topic} as {principal}: {e}"),
            None if out.len() >= min => break,
            None => {}
        }
    }
    out
}

/// Tries to read `topic` as `principal` until the broker refuses the fetch with
/// `TopicAuthorizationFailed` (`Ok`) or `timeout` passes; a record read is an `Err`. Other
/// errors on the way (such as the group coordinator refusing a principal without group
/// rights) are returned alongside.
fn read_refused(
    broker: &SecureBroker,
    principal: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<KafkaError>, String> {
    let consumer = assigned_consumer(broker, principal, topic);
    let mut others = Vec::new();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                return Err(format!(
                    "{principal} read {topic} partition {} offset {}",
                    m.partition(),
                    m.offset()
                ));
            }
            Some(Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::TopicAuthorizationFailed,
            ))) => return Ok(others),
            Some(Err(e)) => others.push(e),
            None => {}
        }
    }
    Err(format!(
        "no TopicAuthorizationFailed reading {topic} as {principal} in {timeout:?}; errors: {others:?}"
    ))
}

/// Tries to create `topic` as `principal` and returns the broker's answer for it.
async fn create_topic_as(
    broker: &SecureBroker,
    principal: &str,
    topic: &str,
) -> Result<String, (String, RDKafkaErrorCode)> {
    let admin: AdminClient<DefaultClientContext> =
        broker.client_config(principal).create().unwrap();
    let results = admin
        .create_topics(
            [&NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        )
        .await
        .unwrap_or_else(|e| panic!("CreateTopics as {principal}: {e}"));
    results.into_iter().next().expect("one result")
}

async fn post(stack: &SecureStack<'_>, body: &str) -> (u16, Value) {
    let resp = stack
        .client_for("education-adapter")
        .post(stack.url("education-adapter", "/v1/attendance"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, value)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_service_principal_may_do_only_its_own_work() {
    let t0 = Instant::now();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("it-acls-{}.ponte.", &id[..8]);
    let broker = SecureBroker::start(&prefix, RECONCILER_GROUP);
    eprintln!("secure broker ready after {:?}", t0.elapsed());
    let stack = SecureStack::new(&broker);
    let registry = stack.topic("registry.persons.v1");
    let attendance = stack.topic("education.attendance.v1");
    let deadletter = stack.topic("deadletter.v1");

    // The ACLs are the ones documented: PREFIXED on `<prefix><family>.`, and no CREATE at all.
    let rules = broker.acl_rules();
    assert!(
        rules.contains(&format!(
            "User:education-adapter TOPIC PREFIXED {prefix}education. WRITE"
        )),
        "{rules}"
    );
    assert!(!rules.contains(" CREATE"), "{rules}");

    // (b) No service principal creates topics. The education adapter's `ponte topics ensure`
    // is refused by the broker...
    let (status, out, err) = stack.ponte("education-adapter", &["topics", "ensure"]);
    assert!(
        !status.success(),
        "topics ensure as education-adapter: {out}{err}"
    );
    assert!(err.contains("TopicAuthorizationFailed"), "{out}{err}");
    // ...and so is the reconciler's, in its own topic family, and the health adapter's in its.
    for (principal, topic) in [
        (
            "reconciler",
            stack.topic(&format!("reconciler.{RECONCILER_GROUP}.changelog.v1")),
        ),
        ("health-adapter", stack.topic("health.records.v1")),
    ] {
        let answer = create_topic_as(&broker, principal, &topic).await;
        assert_eq!(
            answer,
            Err((topic.clone(), RDKafkaErrorCode::TopicAuthorizationFailed)),
            "CreateTopics {topic} as {principal}"
        );
    }
    // Nothing was created.
    assert_eq!(
        visible_topics(&broker, "admin", &prefix),
        Vec::<String>::new()
    );

    // admin creates the catalogue, the reconciler group's own topics included.
    let (status, out, err) = stack.ponte("admin", &["topics", "ensure"]);
    assert!(status.success(), "topics ensure as admin: {out}{err}");
    assert!(out.contains("13 topics, 13 changed"), "{out}");
    // Once they exist, the reconciler sees every topic of the catalogue but may not read the
    // sector topics' settings (no DescribeConfigs): its `ponte topics ensure` is an error naming
    // the topic, never "unchanged" or "updated" (rdkafka does not pass the refusal on).
    let (status, out, err) = stack.ponte("reconciler", &["topics", "ensure"]);
    assert!(
        !status.success(),
        "topics ensure as reconciler after admin: {out}{err}"
    );
    assert!(err.contains("no settings"), "{out}{err}");
    assert!(!out.contains("updated"), "{out}");

    // A reconciler cannot create its own internal topics either: started for a group (one its
    // group ACL covers) whose topics admin has not created, it stops at start.
    let (status, out, err) = stack.ponte_with(
        "reconciler",
        &["reconciler"],
        &[
            (
                "PONTE__RECONCILER__GROUP_ID",
                format!("{RECONCILER_GROUP}-new"),
            ),
            (
                "PONTE__RECONCILER__STATE_DIR",
                stack
                    .dir
                    .path()
                    .join("reconciler-new")
                    .display()
                    .to_string(),
            ),
        ],
    );
    assert!(!status.success(), "reconciler of a new group: {out}{err}");
    assert!(
        err.contains("TopicAuthorizationFailed")
            && err.contains(&format!("reconciler.{RECONCILER_GROUP}-new.")),
        "{out}{err}"
    );

    // (a) The education adapter's principal: its own topic, not the registry's.
    let producer: FutureProducer = broker
        .client_config("education-adapter")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "15000")
        .create()
        .unwrap();
    let denied = producer
        .send(
            FutureRecord::to(&registry)
                .key(NIS)
                .payload("a forged registry profile"),
            Duration::from_secs(5),
        )
        .await;
    match denied {
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed), _)) => {}
        other => panic!("producing to {registry} as education-adapter: {other:?}"),
    }
    let delivered = producer
        .send(
            FutureRecord::to(&attendance).key(NIS).payload(PROBE),
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("producing to {attendance} as education-adapter: {e}"));
    assert!(delivered.offset >= 0);
    // It sees only the topics it may write (its records, dead letters and audit entries); the
    // registry topic is not even listed.
    assert_eq!(
        visible_topics(&broker, "education-adapter", &prefix),
        vec![
            stack.topic("audit.v1"),
            deadletter.clone(),
            attendance.clone()
        ]
    );
    // The record is on its topic (read as admin), but its writer may not read it back.
    let on_topic = read_as(&broker, "admin", &attendance, 1, Duration::from_secs(20));
    assert_eq!(on_topic.len(), 1);
    assert_eq!(on_topic[0].0, NIS.as_bytes());
    match read_refused(
        &broker,
        "education-adapter",
        &attendance,
        Duration::from_secs(30),
    ) {
        Ok(others) => eprintln!("education-adapter refused a read; other errors: {others:?}"),
        Err(e) => panic!("{e}"),
    }
    eprintln!("ACL checks done after {:?}", t0.elapsed());

    // (c) The services, each with its own principal, on the topics admin created.
    let mut adapter = stack.spawn("education-adapter", "education-adapter");
    let mut reconciler = stack.spawn("reconciler", "reconciler");
    let mut health = stack.spawn("health-adapter", "health-adapter");
    let mut assistance = stack.spawn("assistance-adapter", "assistance-adapter");
    adapter.wait_ready().await;
    reconciler.wait_ready().await;
    health.wait_ready().await;
    assistance.wait_ready().await;
    eprintln!("services ready after {:?}", t0.elapsed());

    let (code, answer) = post(&stack, &record("268.27649.96-0")).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["accepted"], 1, "{answer}");
    // The other two adapters write their own topics under their own principals (a 2xx means
    // the broker acknowledged the write).
    for (service, path, body) in [
        (
            "assistance-adapter",
            "/v1/persons",
            json!({"nis": NIS, "family_id": "F-1", "birth_date": "2019-01-15", "sex": "F",
                   "municipality": "3550308", "cns": ["700000000000005"],
                   "memberships": ["PBF"], "version": 1}),
        ),
        (
            "health-adapter",
            "/v1/health",
            json!({"cns": "700000000000005", "encounter_date": "2025-03-10",
                   "vaccination_up_to_date": true, "weight_kg": 18.5, "version": 1}),
        ),
    ] {
        let resp = stack
            .client_for(service)
            .post(stack.url(service, path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 200, "{service}: {text}");
    }
    // An invalid NIS is answered, and dead-lettered under the adapter's principal.
    let invalid = record("26827649961");
    let (code, answer) = post(&stack, &invalid).await;
    assert_eq!(code, 422, "{answer}");
    assert_eq!(answer["rejected"][0]["field"], "nis", "{answer}");

    // The reconciler consumed the record as `reconciler`. The probe written above is no event:
    // the reconciler dead-letters it, under its own principal too.
    let admin_port = reconciler.admin_port();
    eventually(
        "the record applied and the probe dead-lettered by the reconciler",
        Duration::from_secs(60),
        || async {
            let on_attendance = [("topic", attendance.as_str())];
            let applied = metric(
                admin_port,
                "ponte_reconciler_events_applied_total",
                &on_attendance,
            )
            .await;
            let dead = metric(
                admin_port,
                "ponte_reconciler_events_dead_lettered_total",
                &on_attendance,
            )
            .await;
            let registry_applied = metric(
                admin_port,
                "ponte_reconciler_events_applied_total",
                &[("topic", registry.as_str())],
            )
            .await;
            (applied >= 1.0 && dead >= 1.0 && registry_applied >= 1.0).then_some(())
        },
    )
    .await;
    let mut letters: Vec<(String, DeadLetter)> =
        read_as(&broker, "admin", &deadletter, 2, Duration::from_secs(30))
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8(k).unwrap(),
                    DeadLetter::decode(v.as_slice()).unwrap(),
                )
            })
            .collect();
    letters.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert_eq!(letters[0].0, "education");
    assert_eq!(letters[0].1.original, invalid.as_bytes());
    assert_eq!(letters[1].0, "reconciler");
    assert_eq!(letters[1].1.original, PROBE.as_bytes());
    eprintln!("record reached the reconciler after {:?}", t0.elapsed());
    adapter.assert_running();
    reconciler.assert_running();
    health.assert_running();
    assistance.assert_running();
    for s in [&adapter, &reconciler, &health, &assistance] {
        let log = s.log_text();
        assert!(
            !log.to_lowercase().contains("authorization failed"),
            "{} hit an ACL it lacks:\n{log}",
            s.name
        );
    }
}
