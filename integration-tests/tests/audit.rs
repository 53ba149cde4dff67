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
use ponte_integration_tests::{Stack, broker, create_topic, read_topic};
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
    create_topic(broker(), &topic, 1).await;
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

/// With `[audit]` configured, the services record what happens: the education adapter a
/// write (its principal, endpoint, request id and the keyed hash of the record id) once the
/// record is on the bus, the reconciler every read of the person — two principals each
/// listed — before answering, both their refusals (401 and 403 over HTTP, 403 over gRPC);
/// the chains verify, and no identifier is in the log in clear.
#[tokio::test(flavor = "multi_thread")]
async fn writes_and_reads_are_recorded_before_they_are_answered() {
    use ponte_audit::SubjectKey;
    use ponte_integration_tests::{grpc_client, valid_nis, wait_ready};
    use ponte_proto::audit::v1::{Write, read::Subject};
    use ponte_proto::compliance::v1::GetPersonRequest;

    let mut stack = Stack::new("auditon");
    let keys = tempfile::tempdir().unwrap();
    let mut public = Vec::new();
    for service in ["education", "reconciler"] {
        let pkcs8 = Signer::generate().unwrap();
        std::fs::write(keys.path().join(format!("{service}.pk8")), &pkcs8).unwrap();
        let s = Signer::from_pkcs8(service, &pkcs8).unwrap();
        public.push(format!("{service}={}", encode_key(&s.public_key())));
    }
    let secret = [42u8; 32];
    let subject_file = keys.path().join("subject.key");
    std::fs::write(&subject_file, secret).unwrap();
    stack.extra_env.insert(
        "PONTE__AUDIT__KEY_DIR".into(),
        keys.path().display().to_string(),
    );
    stack.extra_env.insert(
        "PONTE__AUDIT__SUBJECT_KEY_FILE".into(),
        subject_file.display().to_string(),
    );
    assert!(stack.ponte(&["topics", "ensure"]).0.success());
    let mut services = vec![stack.spawn("education-adapter"), stack.spawn("reconciler")];
    for s in &mut services {
        wait_ready(s).await;
    }

    // A pupil's month, sent by the education system; the person is not registered, but the
    // record makes a view of them.
    let nis = valid_nis(77);
    let resp = stack
        .client_for("education-adapter")
        .post(stack.url("education-adapter", "/v1/attendance"))
        .json(
            &serde_json::json!({"nis": nis, "inep_school_code": "35012345", "month": "2025-04",
            "unit": "days", "given": 20, "attended": 18, "version": 1}),
        )
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();

    // Read by the federal reader (until the view has the person) and by the operator's
    // colleague of São Paulo state, who is refused (the person is not placed) — still a read.
    let mut federal = grpc_client(stack.port("reconciler"), "federal")
        .await
        .unwrap();
    ponte_integration_tests::eventually("the person in the view", Duration::from_secs(60), || {
        let mut c = federal.clone();
        let nis = nis.clone();
        async move {
            c.get_person(GetPersonRequest { nis })
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await;
    let mut state = grpc_client(stack.port("reconciler"), "state-sp")
        .await
        .unwrap();
    let refused = state
        .get_person(GetPersonRequest { nis: nis.clone() })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    federal
        .get_person(GetPersonRequest { nis: nis.clone() })
        .await
        .unwrap();
    // Refused at the edge: no certificate (401), a principal outside its rights over HTTP
    // (403) and over gRPC (ListParked is the operator's).
    let record = serde_json::json!({"nis": nis, "inep_school_code": "35012345",
        "month": "2025-05", "unit": "days", "given": 20, "attended": 18, "version": 1});
    let anonymous = ponte_integration_tests::anonymous_http_client()
        .post(stack.url("education-adapter", "/v1/attendance"))
        .json(&record)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let outside = stack
        .client_for("assistance-adapter")
        .post(stack.url("education-adapter", "/v1/attendance"))
        .json(&record)
        .send()
        .await
        .unwrap();
    assert_eq!(outside.status().as_u16(), 403);
    let denied = state
        .list_parked(ponte_proto::compliance::v1::ListParkedRequest { limit: 1 })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    // Refusals are recorded without holding up the answer: give them a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for s in &mut services {
        assert!(s.terminate().success(), "{}", s.log_text());
    }

    let topic = stack.topic("audit.v1");
    let entries: Vec<AuditEntry> = read_topic(&topic, 4, Duration::from_secs(20))
        .into_iter()
        .map(|(_, v)| AuditEntry::decode(v.as_slice()).unwrap())
        .collect();
    let subjects = SubjectKey::new(&secret).unwrap();
    let writes: Vec<&Write> = entries
        .iter()
        .filter_map(|e| match &e.body {
            Some(Body::Write(w)) => Some(w),
            _ => None,
        })
        .collect();
    assert_eq!(writes.len(), 1, "{entries:?}");
    assert_eq!(writes[0].principal, "urn:ponte:principal:education");
    assert_eq!(writes[0].endpoint, "POST /v1/attendance");
    assert_eq!(writes[0].request_id, request_id);
    assert_eq!((writes[0].accepted, writes[0].rejected), (1, 0));
    assert_eq!(
        writes[0].record_ids,
        vec![subjects.hash("record", &format!("education:35012345:{nis}:2025-04"))]
    );
    // Who read the person: every principal, each read listed (the federal reader's polling
    // included), the refused one with nothing returned.
    let person = subjects.hash("nis", &nis);
    let mut readers: Vec<(String, u32)> = entries
        .iter()
        .filter_map(|e| match &e.body {
            Some(Body::Read(r)) if r.subject == Some(Subject::Person(person.clone())) => {
                Some((r.principal.clone(), r.returned))
            }
            _ => None,
        })
        .collect();
    readers.dedup();
    assert!(
        readers.contains(&("urn:ponte:principal:federal".to_owned(), 1))
            && readers.contains(&("urn:ponte:principal:state-sp".to_owned(), 0)),
        "{readers:?}"
    );
    let mut refusals: Vec<(String, String, String)> = entries
        .iter()
        .filter_map(|e| match &e.body {
            Some(Body::Refusal(r)) => {
                Some((r.principal.clone(), r.reason.clone(), r.endpoint.clone()))
            }
            _ => None,
        })
        .collect();
    refusals.sort();
    assert_eq!(
        refusals,
        vec![
            (
                String::new(),
                "no_credentials".to_owned(),
                "POST /v1/attendance".to_owned()
            ),
            (
                "urn:ponte:principal:assistance".to_owned(),
                "forbidden".to_owned(),
                "POST /v1/attendance".to_owned()
            ),
            (
                "urn:ponte:principal:state-sp".to_owned(),
                "forbidden".to_owned(),
                "ListParked".to_owned()
            ),
        ]
    );
    // No identifier in clear anywhere in the log.
    for (_, raw) in read_topic(&topic, entries.len(), Duration::from_secs(5)) {
        assert!(!raw.windows(nis.len()).any(|w| w == nis.as_bytes()));
    }
    // Both chains verify with the services' public keys.
    let mut args = vec!["audit", "verify", "--topic", topic.as_str()];
    for k in &public {
        args.extend(["--public-key", k.as_str()]);
    }
    let (status, out, err) = stack.ponte(&args);
    assert!(status.success(), "{out}{err}");
    assert!(
        out.contains("from 2 writers") && out.contains(", 0 problems"),
        "{out}"
    );

    // Who read the person, and which request brought the record — as an operator holding the
    // subject key (the stack's configuration names it).
    let (status, out, err) = stack.ponte(&["audit", "who-read", &nis, "--topic", &topic]);
    assert!(status.success(), "{out}{err}");
    assert!(
        out.contains("read by urn:ponte:principal:federal (GetPerson, 1 returned)")
            && out.contains("read by urn:ponte:principal:state-sp (GetPerson, 0 returned)"),
        "{out}"
    );
    assert!(!out.contains(&nis), "the answer masks the NIS: {out}");
    let (status, out, err) = stack.ponte(&[
        "audit",
        "trace",
        &format!("education:35012345:{nis}:2025-04"),
        "--topic",
        &topic,
    ]);
    assert!(status.success(), "{out}{err}");
    assert!(
        out.contains(&format!(
            "sent by urn:ponte:principal:education to POST /v1/attendance in request {request_id} (1 accepted, 0 rejected)"
        )) && out.contains("1 writes of the record"),
        "{out}"
    );
    // Without the subject key no one can look a person up.
    let (status, _, err) = stack.ponte_with(
        &["audit", "who-read", &nis, "--topic", &topic],
        &[("PONTE__AUDIT__SUBJECT_KEY_FILE", String::new())],
    );
    assert!(
        !status.success() && err.contains("subject_key_file"),
        "{err}"
    );
}

/// An entry lost because the broker was down past its delivery timeout does not leave a gap
/// in the middle of a chain: the writer goes on with a new chain, and the log still verifies
/// (the first chain simply ends before the lost entry). A broker of this test alone, stopped
/// and started again.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_entry_starts_a_new_chain_and_the_log_still_verifies() {
    use ponte_audit::Keys;
    use ponte_audit::log::verify_topic;

    let broker = ponte_integration_tests::PrivateBroker::start();
    let topic = "audit-lost.v1".to_owned();
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .unwrap();
    admin
        .create_topics(
            [&NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    let kafka = KafkaConfig {
        bootstrap_servers: broker.bootstrap(),
        message_timeout_ms: 3_000,
        properties: Default::default(),
    };
    let signer = Signer::from_pkcs8("reconciler", &Signer::generate().unwrap()).unwrap();
    let mut keys = Keys::default();
    keys.insert("reconciler", signer.public_key()).unwrap();
    let log = AuditLog::start(
        Publisher::new(&kafka, "audit-lost").unwrap(),
        &topic,
        "reconciler",
        signer,
    )
    .await
    .unwrap();
    log.record(read(1)).await.unwrap();
    let first = log.writer().await;

    broker.stop();
    assert!(
        log.record(read(2)).await.is_err(),
        "an entry cannot be stored while the broker is down"
    );
    broker.restart();
    // Once the broker answers again, the next entry goes out on a new chain.
    let mut stored = false;
    for _ in 0..20 {
        if log.record(read(3)).await.is_ok() {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(stored, "no entry stored after the broker came back");
    assert_ne!(log.writer().await, first, "a new chain");
    log.seal().await.unwrap();

    let report = tokio::task::spawn_blocking(move || verify_topic(&kafka, &topic, keys))
        .await
        .unwrap()
        .unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.writers >= 2, "{report:?}");
}

/// kill -9 of an adapter in the middle of many writes: every write entry in the audit log names
/// records that are on the input topic (an entry is written only after the broker acknowledged
/// the records), and every request answered 2xx has its entry (the answer waits for it). Some
/// requests are cut off by the kill — their records may be on the bus without an entry, which
/// is allowed: they were never acknowledged to the sender, who sends them again.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_adapter_leaves_no_entry_without_records_and_no_answer_without_an_entry() {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ponte_audit::SubjectKey;
    use ponte_integration_tests::{read_topic_to_end, valid_nis, wait_ready};
    use ponte_proto::events::v1::Event;

    const WORKERS: usize = 12;
    // Workers send until the kill, so requests are in flight when it comes however fast the
    // adapter answers: with 400 requests in all, an adapter on an idle machine answered every
    // one between two looks at `answered`, and the kill cut nothing. This only bounds a
    // runaway test.
    const REQUESTS: usize = 100_000;
    const RECORDS: usize = 25;

    // The harness' audit keys: the adapter records every write.
    let stack = Stack::new("auditkill");
    let secret = std::fs::read(&ponte_integration_tests::audit_keys().subject_key_file).unwrap();
    assert!(stack.ponte(&["topics", "ensure"]).0.success());
    let mut adapter = stack.spawn("education-adapter");
    wait_ready(&mut adapter).await;

    let stack = Arc::new(stack);
    let next = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (stack, next, answered, killed) = (
            stack.clone(),
            next.clone(),
            answered.clone(),
            killed.clone(),
        );
        workers.push(tokio::spawn(async move {
            let client = stack.client_for("education-adapter");
            let url = stack.url("education-adapter", "/v1/attendance");
            // (request number, Some(request id) when answered 2xx, None when cut off)
            let mut outcomes: Vec<(usize, Option<String>)> = Vec::new();
            loop {
                let r = next.fetch_add(1, Ordering::SeqCst);
                // Only requests sent before the kill: those that fail were cut off by it.
                if r >= REQUESTS || killed.load(Ordering::SeqCst) {
                    return outcomes;
                }
                let records: Vec<serde_json::Value> = (0..RECORDS)
                    .map(|i| {
                        serde_json::json!({"nis": valid_nis((r * RECORDS + i) as u64 + 1),
                            "inep_school_code": "35012345", "month": "2025-04", "unit": "days",
                            "given": 20, "attended": 18, "version": 1})
                    })
                    .collect();
                match client.post(&url).json(&records).send().await {
                    Ok(resp) if resp.status().is_success() => {
                        let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
                        answered.fetch_add(1, Ordering::SeqCst);
                        outcomes.push((r, Some(id)));
                    }
                    Ok(resp) => panic!("request {r}: {}", resp.status()),
                    Err(_) => outcomes.push((r, None)),
                }
            }
        }));
    }
    // Kill once some writes are through and others are in flight.
    while answered.load(Ordering::SeqCst) < 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    killed.store(true, Ordering::SeqCst);
    adapter.kill9();
    let mut outcomes = Vec::new();
    for w in workers {
        outcomes.extend(w.await.unwrap());
    }
    let acked: Vec<String> = outcomes.iter().filter_map(|(_, id)| id.clone()).collect();
    let cut = outcomes.iter().filter(|(_, id)| id.is_none()).count();
    assert!(acked.len() >= 20, "{} answered", acked.len());
    assert!(
        cut > 0,
        "no request was in flight at the kill ({} answered): the test proves nothing",
        acked.len()
    );

    // The records on the bus, as the audit log names them (keyed hashes of their ids).
    let subjects = SubjectKey::new(&secret).unwrap();
    let on_bus: BTreeSet<Vec<u8>> = read_topic_to_end(
        &stack.topic("education.attendance.v1"),
        Duration::from_secs(30),
    )
    .into_iter()
    .map(|(_, v)| subjects.hash("record", &Event::decode(v.as_slice()).unwrap().record_id))
    .collect();
    let writes: Vec<ponte_proto::audit::v1::Write> =
        read_topic_to_end(&stack.topic("audit.v1"), Duration::from_secs(30))
            .into_iter()
            .filter_map(
                |(_, v)| match AuditEntry::decode(v.as_slice()).unwrap().body {
                    Some(Body::Write(w)) => Some(w),
                    _ => None,
                },
            )
            .collect();
    // No entry for a write that is not on the bus.
    for w in &writes {
        assert_eq!(w.record_ids.len(), RECORDS, "{w:?}");
        for id in &w.record_ids {
            assert!(
                on_bus.contains(id),
                "request {}: a record not on the bus",
                w.request_id
            );
        }
    }
    // No acknowledged write without its entry.
    let recorded: BTreeSet<&str> = writes.iter().map(|w| w.request_id.as_str()).collect();
    for id in &acked {
        assert!(
            recorded.contains(id.as_str()),
            "request {id} answered 2xx with no entry"
        );
    }
    eprintln!(
        "{} requests answered, {cut} cut off by the kill, {} write entries, {} records on the bus",
        acked.len(),
        writes.len(),
        on_bus.len()
    );
}

/// The audit log is on by default: a service without its keys does not start, naming them;
/// only `audit.disabled = true` runs one without the log, said in its log and in
/// `ponte_audit_disabled`.
#[tokio::test(flavor = "multi_thread")]
async fn a_service_without_audit_keys_refuses_to_start_unless_disabled_out_loud() {
    use ponte_integration_tests::{metric, wait_ready};

    let mut stack = Stack::new("auditreq");
    assert!(stack.ponte(&["topics", "ensure"]).0.success());
    stack
        .extra_env
        .insert("PONTE__AUDIT__KEY_DIR".into(), String::new());
    let out = std::process::Command::new(ponte_integration_tests::ponte_bin())
        .arg("education-adapter")
        .envs(stack.service_env("education-adapter"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("audit.key_dir is not set") && err.contains("audit.disabled = true"),
        "{err}"
    );

    stack
        .extra_env
        .insert("PONTE__AUDIT__DISABLED".into(), "true".into());
    let mut education = stack.spawn("education-adapter");
    wait_ready(&mut education).await;
    assert_eq!(
        metric(
            education.admin_port(),
            "ponte_audit_disabled",
            &[("service", "education")]
        )
        .await,
        1.0
    );
    assert!(education.log_text().contains("audit log DISABLED"));
}
