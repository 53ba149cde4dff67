//! One attendance record through every layer, with real processes and the real broker:
//! education adapter (HTTP) → Kafka → reconciler (RocksDB state) → gRPC `GetPerson`,
//! including restarts of the reconciler (graceful and `kill -9`), corrections, stale versions,
//! and an invalid record answered with its field and reason and dead-lettered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ponte_integration_tests::{Stack, eventually, metric, read_topic, wait_ready};
use ponte_proto::compliance::v1::{GetPersonRequest, Person};
use ponte_proto::events::v1::DeadLetter;
use prost::Message as _;
use serde_json::{Value, json};
use tonic::Code;

const NIS: &str = "26827649960"; // valid vector from docs/rules.md#test-vectors
const OTHER_VALID_NIS: &str = "46952280637"; // docs/rules.md#test-vectors; never sent

async fn post(stack: &Stack, body: &str) -> (u16, Value, Option<String>) {
    let resp = stack
        .client_for("education-adapter")
        .post(stack.url("education-adapter", "/v1/attendance"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, value, retry)
}

async fn get_person(stack: &Stack, nis: &str) -> Result<Person, tonic::Status> {
    let mut client = stack
        .grpc()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    client
        .get_person(GetPersonRequest {
            nis: nis.to_owned(),
        })
        .await
        .map(|r| r.into_inner().person.expect("person set"))
}

/// Waits until the person's view satisfies `pred`.
async fn person_where(stack: &Stack, pred: impl Fn(&Person) -> bool) -> Person {
    eventually("the person's view", Duration::from_secs(60), || async {
        get_person(stack, NIS).await.ok().filter(|p| pred(p))
    })
    .await
}

fn record(version: u64, attended: u32) -> String {
    json!({
        "nis": "268.27649.96-0",
        "inep_school_code": "35012345",
        "month": "2025-04",
        "unit": "days",
        "given": 20,
        "attended": attended,
        "low_attendance_reason": "62",
        "version": version
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn attendance_travels_end_to_end_and_survives_reconciler_restarts() {
    let stack = Stack::new("e2e");
    let (status, out, err) = stack.ponte(&["topics", "ensure"]);
    assert!(status.success(), "topics ensure failed: {out}{err}");

    let mut adapter = stack.spawn("education-adapter");
    let mut reconciler = stack.spawn("reconciler");
    wait_ready(&mut adapter).await;
    wait_ready(&mut reconciler).await;

    // A valid record: 200 only once the broker acknowledged it.
    let (code, answer, _) = post(&stack, &record(1, 15)).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["accepted"], 1);
    assert_eq!(answer["rejected"], json!([]));

    // An invalid NIS: 4xx naming the field and the rule, and a dead letter with the bytes.
    let bad = record(1, 15).replace("268.27649.96-0", "26827649961");
    let (code, answer, _) = post(&stack, &bad).await;
    assert_eq!(code, 422, "{answer}");
    assert_eq!(answer["accepted"], 0);
    assert_eq!(answer["rejected"][0]["field"], "nis");
    let reason = answer["rejected"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("check digit"), "{reason}");
    let letters = read_topic(&stack.topic("deadletter.v1"), 1, Duration::from_secs(20));
    assert_eq!(
        letters.len(),
        1,
        "exactly the invalid record is dead-lettered"
    );
    let letter = DeadLetter::decode(letters[0].1.as_slice()).unwrap();
    assert_eq!(letter.field, "nis");
    assert!(letter.reason.contains("check digit"), "{}", letter.reason);
    assert_eq!(letter.original, bad.as_bytes());
    assert_eq!(letter.source_system, "education");

    // Nothing valid was lost: the valid record is on its topic, keyed by the NIS.
    let records = read_topic(
        &stack.topic("education.attendance.v1"),
        1,
        Duration::from_secs(20),
    );
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].0, NIS.as_bytes());

    // The reconciler serves it.
    let first = person_where(&stack, |p| !p.school_attendance.is_empty()).await;
    assert_eq!(first.nis, NIS);
    assert_eq!(first.view_version, 1);
    let a = &first.school_attendance[0];
    assert_eq!(a.record_id, "education:35012345:26827649960:2025-04");
    assert_eq!(
        (a.version, a.given, a.attended, a.attendance_bp),
        (1, 20, 15, 7500)
    );
    assert_eq!(
        (a.month.as_str(), a.bimester.as_str()),
        ("2025-04", "2025-B2")
    );
    assert_eq!(a.low_attendance_reason, "62");

    // Unknown and malformed ids.
    let e = get_person(&stack, OTHER_VALID_NIS).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = get_person(&stack, "123").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("nis:"), "{}", e.message());

    // Graceful restart: SIGTERM exits 0; the view is served again, identical, and the record
    // is not consumed again (the consumer resumes at the offset stored with the state).
    let status = reconciler.terminate();
    assert!(
        status.success(),
        "reconciler exit {status}; log:\n{}",
        reconciler.log_text()
    );
    reconciler.restart();
    wait_ready(&mut reconciler).await;
    assert_eq!(get_person(&stack, NIS).await.unwrap(), first);

    // A correction (same record id, higher version) replaces the record. It lands on the same
    // partition after the original, so once it is visible the consumer has passed the
    // original's offset: had it re-read the original, it would have counted two events.
    let (code, answer, _) = post(&stack, &record(2, 19)).await;
    assert_eq!(code, 200, "{answer}");
    let corrected = person_where(&stack, |p| p.view_version == 2).await;
    assert_eq!(corrected.school_attendance.len(), 1);
    assert_eq!(corrected.school_attendance[0].version, 2);
    assert_eq!(corrected.school_attendance[0].attendance_bp, 9500);
    let topic = stack.topic("education.attendance.v1");
    let consumed = metric(
        reconciler.admin_port(),
        "ponte_reconciler_events_consumed_total",
        &[("topic", topic.as_str())],
    )
    .await;
    assert_eq!(
        consumed, 1.0,
        "after the restart only the correction is consumed"
    );
    // From the adapter's acceptance to the view: timed for the correction.
    let timed = metric(
        reconciler.admin_port(),
        "ponte_reconciler_ingest_to_view_seconds_count",
        &[],
    )
    .await;
    assert!(timed >= 1.0, "ingest to view was not measured: {timed}");

    // A lower version arriving late is ignored.
    let (code, _, _) = post(&stack, &record(1, 15)).await;
    assert_eq!(code, 200);
    eventually(
        "the stale version to be counted",
        Duration::from_secs(30),
        || async {
            let n = metric(
                reconciler.admin_port(),
                "ponte_reconciler_events_ignored_total",
                &[("reason", "stale_version")],
            )
            .await;
            (n == 1.0).then_some(())
        },
    )
    .await;
    assert_eq!(get_person(&stack, NIS).await.unwrap(), corrected);

    // kill -9: the process dies wherever it is; what it committed is whole.
    reconciler.kill9();
    reconciler.restart();
    wait_ready(&mut reconciler).await;
    assert_eq!(get_person(&stack, NIS).await.unwrap(), corrected);

    // A retraction withdraws the record; the person stays known with an empty list.
    let retraction = json!({"nis": NIS, "inep_school_code": "35012345", "month": "2025-04",
                            "retraction": true, "version": 3})
    .to_string();
    let (code, answer, _) = post(&stack, &retraction).await;
    assert_eq!(code, 200, "{answer}");
    let withdrawn = person_where(&stack, |p| p.view_version == 3).await;
    assert!(withdrawn.school_attendance.is_empty());

    // grpcurl — a client no one here wrote — finds the services through reflection, checks
    // health and calls GetPerson.
    let addr = format!("localhost:{}", stack.port("reconciler"));
    let grpcurl = |args: &[&str]| {
        let out = std::process::Command::new(ponte_integration_tests::grpcurl())
            // TLS, as the federal reader.
            .args(ponte_integration_tests::grpcurl_tls_args("federal"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "grpcurl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let services = grpcurl(&[&addr, "list"]);
    assert!(
        services.contains("ponte.compliance.v1.ComplianceService"),
        "{services}"
    );
    assert!(services.contains("grpc.health.v1.Health"), "{services}");
    let health = grpcurl(&[&addr, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"), "{health}");
    let person = grpcurl(&[
        "-d",
        &format!("{{\"nis\": \"{NIS}\"}}"),
        &addr,
        "ponte.compliance.v1.ComplianceService/GetPerson",
    ]);
    let person: Value = serde_json::from_str(&person).unwrap();
    assert_eq!(person["person"]["nis"], NIS);
    assert_eq!(person["person"]["viewVersion"], "3");

    // A lost disk: the store is rebuilt from the changelog topic, not by re-reading inputs.
    assert!(reconciler.terminate().success());
    std::fs::remove_dir_all(stack.dir.path().join("reconciler")).unwrap();
    reconciler.restart();
    wait_ready(&mut reconciler).await;
    assert_eq!(get_person(&stack, NIS).await.unwrap(), withdrawn);
    let restored = metric(
        reconciler.admin_port(),
        "ponte_reconciler_restored_entries_total",
        &[],
    )
    .await;
    assert!(restored > 0.0, "nothing restored");
    let consumed = metric(
        reconciler.admin_port(),
        "ponte_reconciler_events_consumed_total",
        &[],
    )
    .await;
    assert_eq!(consumed, 0.0, "inputs were re-read instead of restoring");

    assert!(
        adapter.terminate().success(),
        "adapter log:\n{}",
        adapter.log_text()
    );
    assert!(reconciler.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_keeps_its_good_records_and_lists_the_bad_ones() {
    let stack = Stack::new("batch");
    assert!(stack.ponte(&["topics", "ensure"]).0.success());
    let mut adapter = stack.spawn("education-adapter");
    wait_ready(&mut adapter).await;

    let body = format!(
        "[{}, {}, {}]",
        record(1, 10),
        json!({"nis": NIS, "inep_school_code": "35012345", "month": "2025-12", "attendance_percent": 80}),
        json!({"nis": OTHER_VALID_NIS, "inep_school_code": "35012345", "month": "2025-05", "attendance_percent": 80}),
    );
    let (code, answer, _) = post(&stack, &body).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["accepted"], 2);
    assert_eq!(answer["rejected"].as_array().unwrap().len(), 1);
    assert_eq!(answer["rejected"][0]["position"], "record 2");
    assert_eq!(answer["rejected"][0]["field"], "month");

    let (code, answer, _) = post(&stack, "{not json").await;
    assert_eq!(code, 400, "{answer}");

    let letters = read_topic(&stack.topic("deadletter.v1"), 2, Duration::from_secs(20));
    assert_eq!(letters.len(), 2);
    let records = read_topic(
        &stack.topic("education.attendance.v1"),
        2,
        Duration::from_secs(20),
    );
    assert_eq!(records.len(), 2);
    assert_eq!(
        metric(
            adapter.admin_port(),
            "ponte_adapter_records_rejected_total",
            &[("reason", "invalid_period")]
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_broker_the_adapter_answers_503_and_never_2xx() {
    let mut stack = Stack::new("nobroker");
    // A port where no broker listens.
    let dead = ponte_integration_tests::free_port();
    stack.extra_env.insert(
        "PONTE__KAFKA__BOOTSTRAP_SERVERS".into(),
        format!("127.0.0.1:{dead}"),
    );
    stack
        .extra_env
        .insert("PONTE__KAFKA__MESSAGE_TIMEOUT_MS".into(), "2000".into());
    let mut adapter = stack.spawn("education-adapter");
    // Not ready: the broker is unreachable.
    let ready = format!("http://127.0.0.1:{}/health/ready", adapter.admin_port());
    let status = eventually("the admin endpoint", Duration::from_secs(30), || async {
        reqwest::get(&ready).await.ok().map(|r| r.status().as_u16())
    })
    .await;
    assert_eq!(status, 503);
    adapter.assert_running();

    let (code, answer, retry) = post(&stack, &record(1, 15)).await;
    assert_eq!(code, 503, "{answer}");
    assert_eq!(retry.as_deref(), Some("5"));
    assert_eq!(answer["accepted"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_ensure_creates_the_catalogue_once_and_compacts_the_view() {
    let stack = Stack::new("topics");
    let (status, first, err) = stack.ponte(&["topics", "ensure"]);
    assert!(status.success(), "{first}{err}");
    assert!(first.contains("13 topics, 13 changed"), "{first}");
    let (status, second, err) = stack.ponte(&["topics", "ensure"]);
    assert!(status.success(), "{second}{err}");
    assert!(second.contains("13 topics, 0 changed"), "{second}");

    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", ponte_integration_tests::broker())
        .create()
        .unwrap();
    // The reconciler group's own topics are named after the group.
    let group = format!("{}reconciler", stack.prefix);
    // Each keeps what it holds only as long as docs/privacy.md says: by time, or for a
    // compacted topic the tombstone's day and a bound on how long a removed value waits for
    // compaction.
    const WEEK: &str = "604800000";
    const MONTH: &str = "2592000000";
    for (base, policy, retention) in [
        (
            "compliance.changes.v1".to_owned(),
            "compact",
            ("max.compaction.lag.ms", WEEK),
        ),
        (
            format!("reconciler.{group}.changelog.v1"),
            "compact",
            ("delete.retention.ms", "86400000"),
        ),
        (
            format!("reconciler.{group}.crosswalk.v1"),
            "delete",
            ("retention.ms", WEEK),
        ),
        (
            "education.attendance.v1".to_owned(),
            "delete",
            ("retention.ms", WEEK),
        ),
        (
            "deadletter.v1".to_owned(),
            "delete",
            ("retention.ms", MONTH),
        ),
        (
            "compliance.alerts.v1".to_owned(),
            "delete",
            ("retention.ms", MONTH),
        ),
        (
            "audit.v1".to_owned(),
            "delete",
            ("retention.ms", "157680000000"),
        ),
    ] {
        let name = stack.topic(&base);
        let res = admin
            .describe_configs([&ResourceSpecifier::Topic(&name)], &AdminOptions::new())
            .await
            .unwrap();
        let res = res.into_iter().next().unwrap().unwrap();
        assert_eq!(
            res.get("cleanup.policy").and_then(|e| e.value.as_deref()),
            Some(policy),
            "{name}"
        );
        assert_eq!(
            res.get(retention.0).and_then(|e| e.value.as_deref()),
            Some(retention.1),
            "{name} {}",
            retention.0
        );
        let md = admin
            .inner()
            .fetch_metadata(Some(&name), Duration::from_secs(10))
            .unwrap();
        assert_eq!(md.topics()[0].partitions().len(), 3, "{name}");
    }

    // Drift is corrected: a compacted topic switched to delete is put back.
    let view = stack.topic("compliance.changes.v1");
    let alter = rdkafka::admin::AlterConfig::new(ResourceSpecifier::Topic(&view))
        .set("cleanup.policy", "delete");
    admin
        .alter_configs([&alter], &AdminOptions::new())
        .await
        .unwrap();
    // The broker applies the change from the controller's log a moment later: wait until it
    // reports it, as an operator's drift would be.
    eventually(
        "the drift to be visible",
        Duration::from_secs(30),
        || async {
            let res = admin
                .describe_configs([&ResourceSpecifier::Topic(&view)], &AdminOptions::new())
                .await
                .ok()?;
            let res = res.into_iter().next()?.ok()?;
            (res.get("cleanup.policy")?.value.as_deref() == Some("delete")).then_some(())
        },
    )
    .await;
    let (_, third, _) = stack.ponte(&["topics", "ensure"]);
    assert!(
        third.contains("cleanup.policy: delete -> compact"),
        "{third}"
    );
    assert!(third.contains("13 topics, 1 changed"), "{third}");
}

/// The reconciler sends repartition messages in batches to the partition each key would have
/// gone to alone (`ponte_bus::partition::of_key`), so they stay co-partitioned with the inputs
/// the adapters' producers place by key: librdkafka's default partitioner, asked here for
/// keys of every shape the topics carry, agrees with it on each.
#[tokio::test(flavor = "multi_thread")]
async fn the_default_partitioner_places_every_key_where_ponte_computes_it() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let stack = Stack::new("partitioner");
    let topic = stack.topic("keys.v1");
    ponte_integration_tests::create_topic(ponte_integration_tests::broker(), &topic, 6).await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", ponte_integration_tests::broker())
        .create()
        .unwrap();
    let keys: Vec<String> = (0..200u64)
        .map(|i| match i % 4 {
            0 => format!("{:011}", 12_000_000_000 + i * 7_919),
            1 => format!("{:015}", 700_000_000_000_000 + i * 104_729),
            2 => format!("fam-{i}"),
            _ => format!("household:{}", i * 31),
        })
        .collect();
    let mut spread = std::collections::BTreeSet::new();
    for key in &keys {
        let partition = producer
            .send(
                FutureRecord::to(&topic).key(key).payload("x"),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap()
            .partition;
        assert_eq!(
            partition,
            ponte_bus::partition::of_key(key.as_bytes(), 6),
            "key {key}"
        );
        spread.insert(partition);
    }
    assert_eq!(spread.len(), 6, "{spread:?}");
}

/// The adapters publish a request's records with `Publisher::publish_all`: all enqueued, then
/// one delivery report each, in the order given. Each report says where the broker put that
/// record (the partition of its key, offsets in the order sent), and a record the producer
/// refuses at once (larger than its limit) is reported refused without holding up the rest.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_is_reported_record_by_record_where_the_broker_put_each() {
    use ponte_bus::headers::EventHeaders;
    use ponte_bus::publish::Outgoing;
    use ponte_bus::{BusError, KafkaConfig, Publisher};
    use std::collections::BTreeMap;

    let stack = Stack::new("publish-all");
    let topic = stack.topic("batch.v1");
    ponte_integration_tests::create_topic(ponte_integration_tests::broker(), &topic, 3).await;
    let kafka = KafkaConfig {
        bootstrap_servers: ponte_integration_tests::broker().to_owned(),
        message_timeout_ms: 30_000,
        properties: Default::default(),
    };
    let publisher = Publisher::new(&kafka, "publish-all-test").unwrap();
    const TOO_LARGE: usize = 1_234;
    let sent: Vec<(String, Vec<u8>)> = (0..3_000)
        .map(|i| {
            let payload = if i == TOO_LARGE {
                vec![b'x'; 2 << 20] // above the producer's message.max.bytes (1,000,000)
            } else {
                format!("record {i}").into_bytes()
            };
            (format!("key-{}", i % 97), payload)
        })
        .collect();
    let reports = publisher
        .publish_all(
            sent.iter()
                .map(|(key, payload)| Outgoing {
                    topic: topic.clone(),
                    key: key.clone(),
                    payload: payload.clone(),
                    headers: EventHeaders::kafka("test", "test.v1", "it", ""),
                })
                .collect(),
        )
        .await;
    assert_eq!(reports.len(), sent.len());
    assert!(
        matches!(reports[TOO_LARGE], Err(BusError::Rejected(_))),
        "{:?}",
        reports[TOO_LARGE]
    );
    /// A record as read back: its key and payload.
    type Record = (Vec<u8>, Vec<u8>);
    let mut by_partition: BTreeMap<i32, Vec<(i64, Record)>> = BTreeMap::new();
    for (i, (report, (key, payload))) in reports.iter().zip(&sent).enumerate() {
        if i == TOO_LARGE {
            continue;
        }
        let at = report
            .as_ref()
            .unwrap_or_else(|e| panic!("record {i}: {e}"));
        assert_eq!(
            at.partition,
            ponte_bus::partition::of_key(key.as_bytes(), 3),
            "record {i}"
        );
        by_partition
            .entry(at.partition)
            .or_default()
            .push((at.offset, (key.clone().into_bytes(), payload.clone())));
    }
    // A new topic: each partition holds exactly these records, at offsets 0, 1, 2… in the
    // order they were given.
    for (partition, records) in &by_partition {
        let offsets: Vec<i64> = records.iter().map(|(o, _)| *o).collect();
        let expected: Vec<i64> = (0..records.len() as i64).collect();
        assert_eq!(offsets, expected, "partition {partition}");
    }
    let expected: Vec<Record> = by_partition
        .into_values()
        .flatten()
        .map(|(_, record)| record)
        .collect();
    assert_eq!(
        ponte_integration_tests::read_topic_to_end(&topic, Duration::from_secs(60)),
        expected
    );
}
