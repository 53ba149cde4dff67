//! The education adapter's CSV batch upload and `ponte ingest`, with real processes and the
//! real broker: good and bad lines in one file (bad ones answered by line number and
//! dead-lettered with their bytes), a re-sent file publishing the same record ids and versions,
//! size and header errors, and the broker stopped and restarted in the middle of a batch with
//! every record in the reconciler's view exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ponte_integration_tests::{
    PrivateBroker, Stack, client_replaced, eventually, http_client, ingest_through_broker_restart,
    metric, read_committed_at, read_topic, read_topic_at, valid_nis, wait_for_leaders, wait_ready,
    within,
};
use ponte_proto::compliance::v1::GetPersonRequest;
use ponte_proto::events::v1::event::Record;
use ponte_proto::events::v1::{DeadLetter, Event};
use prost::Message as _;
use serde_json::Value;

const HEADER: &str = "nis,inep_school_code,month,unit,given,attended,low_attendance_reason";

async fn post_csv(url: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = http_client("education")
        .post(url)
        .header("content-type", "text/csv")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, value)
}

/// (record id, version) of every event on a topic, with its key.
fn events(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<(String, String, u64)> {
    records
        .iter()
        .map(|(k, v)| {
            let e = Event::decode(v.as_slice()).unwrap();
            (
                String::from_utf8(k.clone()).unwrap(),
                e.record_id,
                e.version,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_csv_upload_keeps_good_lines_lists_bad_ones_by_line_and_resends_as_a_no_op() {
    let mut stack = Stack::new("edu-csv");
    // Small chunks and limits, so one small file crosses several chunks and the limits are
    // reachable; a chunk is published one record at a time (`max_in_flight`), so good and bad
    // lines go out in windows of their own and still land in order.
    for (k, v) in [
        ("PONTE__EDUCATION_ADAPTER__CSV_CHUNK_RECORDS", "2"),
        ("PONTE__EDUCATION_ADAPTER__MAX_IN_FLIGHT", "1"),
        ("PONTE__EDUCATION_ADAPTER__MAX_CSV_BYTES", "4000"),
        ("PONTE__EDUCATION_ADAPTER__MAX_CSV_LINE_BYTES", "200"),
    ] {
        stack.extra_env.insert(k.into(), v.into());
    }
    assert!(stack.ponte(&["topics", "ensure"]).0.success());
    let mut adapter = stack.spawn("education-adapter");
    wait_ready(&mut adapter).await;
    let url = stack.url("education-adapter", "/v1/attendance");

    let good = [
        "268.27649.96-0,35012345,2025-04,days,20,15,62".to_owned(),
        format!("{},35012345,2025-04,days,20,20,", valid_nis(1)),
        format!("\"{}\",35012345,2025-05,classes,80,70,", valid_nis(2)),
        format!("{},35012345,2025-06,days,20,10,1a", valid_nis(3)),
    ];
    let bad = [
        // line 3: check digit
        "26827649961,35012345,2025-04,days,20,15,".to_owned(),
        // line 5: December is in no bimester
        format!("{},35012345,2025-12,days,20,15,", valid_nis(4)),
        // line 6: a field short
        format!("{},35012345,2025-04,days,20,15", valid_nis(5)),
        // line 8: too long for max_csv_line_bytes
        format!(
            "{},35012345,2025-04,days,20,15,{}",
            valid_nis(6),
            "x".repeat(300)
        ),
    ];
    // Line 1 header, 2 good, 3 bad, 4 good, 5 bad, 6 bad, 7 blank, 8 bad, 9 good, 10 good
    // (last line without a newline, with CRLF elsewhere).
    let lines = [
        HEADER, &good[0], &bad[0], &good[1], &bad[1], &bad[2], "", &bad[3], &good[2], &good[3],
    ];
    let file = lines.join("\r\n").into_bytes();

    let (code, answer) = post_csv(&url, file.clone()).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["accepted"], 4, "{answer}");
    assert_eq!(answer["rejected_total"], 4, "{answer}");
    assert_eq!(answer["lines"], 10, "{answer}");
    let rejected: Vec<(u64, String)> = answer["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap(),
                r["field"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rejected,
        vec![
            (3, "nis".to_owned()),
            (5, "month".to_owned()),
            (6, "record".to_owned()),
            (8, "record".to_owned())
        ]
    );
    assert!(
        answer["rejected"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("check digit"),
        "{answer}"
    );
    assert_eq!(answer["rejected"][0]["position"], "line 3");

    // Dead letters: exactly the bad lines, each with its original bytes (the long one cut at
    // the limit) and its line.
    let letters = read_topic(&stack.topic("deadletter.v1"), 4, Duration::from_secs(20));
    let mut letters: Vec<DeadLetter> = letters
        .iter()
        .map(|(_, v)| DeadLetter::decode(v.as_slice()).unwrap())
        .collect();
    letters.sort_by_key(|l| l.position.clone());
    assert_eq!(letters.len(), 4);
    let expect: BTreeMap<&str, Vec<u8>> = [
        ("line 3", bad[0].as_bytes().to_vec()),
        ("line 5", bad[1].as_bytes().to_vec()),
        ("line 6", bad[2].as_bytes().to_vec()),
        ("line 8", bad[3].as_bytes()[..200].to_vec()),
    ]
    .into_iter()
    .collect();
    for l in &letters {
        assert_eq!(l.content_type, "text/csv");
        assert_eq!(l.source_system, "education");
        assert_eq!(
            Some(&l.original),
            expect.get(l.position.as_str()),
            "{}",
            l.position
        );
    }

    // Records: the good lines, keyed by NIS.
    let topic = stack.topic("education.attendance.v1");
    let first = events(&read_topic(&topic, 4, Duration::from_secs(20)));
    assert_eq!(first.len(), 4);
    let keys: BTreeSet<String> = first.iter().map(|(k, _, _)| k.clone()).collect();
    let nis: BTreeSet<String> = [
        "26827649960".to_owned(),
        valid_nis(1),
        valid_nis(2),
        valid_nis(3),
    ]
    .into_iter()
    .collect();
    assert_eq!(keys, nis);
    for (key, id, version) in &first {
        assert!(id.contains(key.as_str()), "{id}");
        assert_eq!(*version, 1);
    }

    // The same file again, through `ponte ingest`: the same answer, and the same record ids
    // and versions on the topic, which the view ignores as redeliveries.
    let path = stack.dir.path().join("b2.csv");
    std::fs::write(&path, &file).unwrap();
    let (cert, key) = ponte_integration_tests::identity("education");
    let (status, out, err) = stack.ponte(&[
        "ingest",
        "education",
        path.to_str().unwrap(),
        "--url",
        &url,
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--no-progress",
    ]);
    assert!(status.success(), "{out}{err}");
    assert!(out.contains("accepted   4"), "{out}");
    assert!(out.contains("rejected   4"), "{out}");
    assert!(out.contains("line 3"), "{out}");
    assert!(out.contains("records/s"), "{out}");
    let both = events(&read_topic(&topic, 8, Duration::from_secs(20)));
    assert_eq!(both.len(), 8);
    let count = |evs: &[(String, String, u64)]| {
        let mut m: BTreeMap<(String, String, u64), usize> = BTreeMap::new();
        for e in evs {
            *m.entry(e.clone()).or_default() += 1;
        }
        m
    };
    let twice: BTreeMap<_, _> = count(&first).into_keys().map(|k| (k, 2)).collect();
    assert_eq!(
        count(&both),
        twice,
        "the resend publishes exactly the same ids"
    );

    // A header naming an unknown column refuses the file: 400, the header dead-lettered,
    // nothing published.
    let (code, answer) = post_csv(
        &url,
        b"nis,inep_school_code,month,presence\n26827649960,35012345,2025-04,90\n".to_vec(),
    )
    .await;
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("unknown column"),
        "{answer}"
    );
    assert_eq!(answer["accepted"], 0);
    assert_eq!(answer["rejected"][0]["line"], 1);

    // An empty body is refused.
    let (code, answer) = post_csv(&url, Vec::new()).await;
    assert_eq!(code, 400, "{answer}");

    // Over max_csv_bytes: refused with the knob named, before anything is published.
    let mut big = format!("{HEADER}\n").into_bytes();
    while big.len() <= 4000 {
        big.extend_from_slice(format!("{}\n", good[1]).as_bytes());
    }
    let (code, answer) = post_csv(&url, big).await;
    assert_eq!(code, 413, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("max_csv_bytes"),
        "{answer}"
    );
    assert_eq!(answer["accepted"], 0);

    let letters = read_topic(&stack.topic("deadletter.v1"), 9, Duration::from_secs(20));
    assert_eq!(letters.len(), 9, "4 + 4 resent + the bad header");
    assert_eq!(
        read_topic(&topic, 8, Duration::from_secs(10)).len(),
        8,
        "neither refused file published anything"
    );
    assert_eq!(
        metric(
            adapter.admin_port(),
            "ponte_adapter_requests_refused_total",
            &[("reason", "too_large")]
        )
        .await,
        1.0
    );
    assert!(adapter.terminate().success(), "{}", adapter.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_during_a_csv_batch_loses_and_duplicates_nothing() {
    // The broker this test stops is its own; the shared one is never touched.
    let broker = PrivateBroker::start();
    let mut stack = Stack::new("edu-restart");
    for (k, v) in [
        ("PONTE__KAFKA__BOOTSTRAP_SERVERS", broker.bootstrap()),
        ("PONTE__KAFKA__MESSAGE_TIMEOUT_MS", "3000".to_owned()),
        (
            "PONTE__EDUCATION_ADAPTER__CSV_CHUNK_RECORDS",
            "100".to_owned(),
        ),
        ("PONTE__EDUCATION_ADAPTER__RETRY_AFTER_SECS", "1".to_owned()),
    ] {
        stack.extra_env.insert(k.into(), v);
    }
    let (status, out, err) = stack.ponte(&["topics", "ensure"]);
    assert!(status.success(), "{out}{err}");
    // On a fresh broker, partitions of new topics get their leaders a moment after creation;
    // the reconciler reads its changelog's watermarks at start and exits if it has none.
    wait_for_leaders(&broker.bootstrap(), &stack.prefix).await;
    let mut adapter = stack.spawn("education-adapter");
    let mut reconciler = stack.spawn("reconciler");
    wait_ready(&mut adapter).await;
    wait_ready(&mut reconciler).await;

    // 2,000 pupils, one month each.
    const N: u64 = 2000;
    let mut file = format!("{HEADER}\n");
    for i in 0..N {
        file.push_str(&format!(
            "{},35012345,2025-0{},days,20,{},\n",
            valid_nis(1000 + i),
            4 + i % 5,
            i % 21
        ));
    }
    let path = stack.dir.path().join("national.csv");
    std::fs::write(&path, &file).unwrap();

    // Paced at 200 lines/s, the upload lasts about ten seconds: the broker goes down in it.
    let url = stack.url("education-adapter", "/v1/attendance");
    let (out, err) =
        ingest_through_broker_restart(&stack, &broker, &adapter, "education", &path, &url, 200)
            .await;
    assert!(out.contains(&format!("accepted   {N}")), "{out}");
    assert!(out.contains("rejected   0"), "{out}");
    assert!(
        err.contains("503"),
        "the broker stop hit the batch and the client retried: {err}"
    );

    // Every record is on the topic (some twice: the retried file re-sent them), always with the
    // same id and version.
    let topic = stack.topic("education.attendance.v1");
    let on_topic = read_topic_at(
        &broker.bootstrap(),
        &topic,
        N as usize,
        Duration::from_secs(30),
    );
    let ids: BTreeSet<(String, u64)> = on_topic
        .iter()
        .map(|(_, v)| {
            let e = Event::decode(v.as_slice()).unwrap();
            assert!(matches!(e.record, Some(Record::SchoolAttendance(_))));
            (e.record_id, e.version)
        })
        .collect();
    assert_eq!(ids.len(), N as usize);

    // In the view every pupil holds exactly their one record, applied exactly once
    // (view_version 1: the redelivered copies changed nothing).
    let client = eventually("the reconciler", Duration::from_secs(30), || async {
        stack.grpc().await.ok()
    })
    .await;
    for i in 0..N {
        let nis = valid_nis(1000 + i);
        let waited = within(Duration::from_secs(120), || {
            let mut c = client.clone();
            let nis = nis.clone();
            async move {
                c.get_person(GetPersonRequest { nis })
                    .await
                    .ok()
                    .and_then(|r| r.into_inner().person)
                    .filter(|p| !p.school_attendance.is_empty())
            }
        })
        .await;
        // Should it never come, the failure shows whether the reconciler committed a change of
        // the pupil (then the read path lost it) or not (then the write path did), and what the
        // reconciler did meanwhile.
        let Some(person) = waited else {
            let key = format!("person:{nis}");
            let committed = read_committed_at(
                &broker.bootstrap(),
                &stack.topic("compliance.changes.v1"),
                // All of it: read for the whole 10 s.
                usize::MAX,
                Duration::from_secs(10),
            )
            .iter()
            .filter(|(k, _)| k == key.as_bytes())
            .count();
            panic!(
                "pupil {nis} not in the view 120 s after the broker's restart; committed changes of the pupil on the changes topic: {committed}; reconciler log:\n{}",
                reconciler.log_text()
            )
        };
        assert_eq!(person.school_attendance.len(), 1, "{nis}");
        let a = &person.school_attendance[0];
        assert_eq!(a.version, 1, "{nis}");
        assert_eq!(a.month, format!("2025-0{}", 4 + i % 5), "{nis}");
        assert_eq!(a.attended, u32::try_from(i % 21).unwrap(), "{nis}");
        assert_eq!(person.view_version, 1, "{nis} applied more than once");
    }

    assert!(adapter.terminate().success(), "{}", adapter.log_text());
    assert!(
        reconciler.terminate().success(),
        "{}",
        reconciler.log_text()
    );
}

/// An adapter's producer that librdkafka left without any broker (it drops them all on a
/// metadata answer listing none, as a restarting broker can give, and never reconnects: issue
/// 15) is replaced at its next use — the readiness probe's, every 5 s, with no upload under
/// way — and the adapter goes on accepting, its records durable on the topic. The loss is stood
/// in for by `PONTE_TEST_FORGET_BROKERS` (the producer's statistics show no broker from its
/// second report on).
#[tokio::test(flavor = "multi_thread")]
async fn a_producer_that_lost_every_broker_is_replaced_and_the_adapter_goes_on_accepting() {
    let stack = Stack::new("edu-lost");
    assert!(stack.ponte(&["topics", "ensure"]).0.success());
    let mut adapter = stack.spawn_instance(
        "education-adapter",
        "education-adapter",
        &[(
            "PONTE_TEST_FORGET_BROKERS",
            "ponte-education/idempotent:2".to_owned(),
        )],
    );
    wait_ready(&mut adapter).await;
    let replaced = client_replaced(adapter.admin_port(), "ponte-education/idempotent").await;
    assert_eq!(
        replaced, 1.0,
        "only the first producer is made to lose its brokers"
    );

    let rows: Vec<String> = (0..5)
        .map(|i| format!("{},35012345,2025-04,days,20,{i},", valid_nis(700 + i)))
        .collect();
    let file = format!("{HEADER}\n{}\n", rows.join("\n")).into_bytes();
    let url = stack.url("education-adapter", "/v1/attendance");
    let (code, answer) = post_csv(&url, file).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["accepted"], 5, "{answer}");
    let on_topic = read_topic(
        &stack.topic("education.attendance.v1"),
        5,
        Duration::from_secs(30),
    );
    assert_eq!(on_topic.len(), 5);
    let log = adapter.log_text();
    assert!(log.contains("replaced"), "{log}");
    adapter.assert_running();
    assert!(adapter.terminate().success());
}
