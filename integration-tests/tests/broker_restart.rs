//! The broker stopped and restarted in the middle of a registry upload (assistance adapter,
//! streamed CSV), and again in the middle of a stream of health records by CNS (health
//! adapter): nothing is lost and nothing is applied twice in the reconciler's view. A private broker: the shared one is never
//! stopped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ponte_integration_tests::workload::list_municipality;
use ponte_integration_tests::{
    PrivateBroker, Stack, eventually, ingest_through_broker_restart, metric, metrics_text,
    valid_cns, valid_nis, wait_for_leaders, wait_ready, within,
};
use serde_json::json;

const N: u64 = 1000;
const MUNICIPALITY: &str = "3550308";

#[tokio::test(flavor = "multi_thread")]
async fn registry_and_health_batches_survive_a_broker_restart() {
    let broker = PrivateBroker::start();
    let mut stack = Stack::new("restart-sectors");
    for (k, v) in [
        ("PONTE__KAFKA__BOOTSTRAP_SERVERS", broker.bootstrap()),
        ("PONTE__KAFKA__MESSAGE_TIMEOUT_MS", "3000".to_owned()),
        (
            "PONTE__ASSISTANCE_ADAPTER__CSV_CHUNK_RECORDS",
            "100".to_owned(),
        ),
        (
            "PONTE__ASSISTANCE_ADAPTER__RETRY_AFTER_SECS",
            "1".to_owned(),
        ),
    ] {
        stack.extra_env.insert(k.into(), v);
    }
    let (status, out, err) = stack.ponte(&["topics", "ensure"]);
    assert!(status.success(), "{out}{err}");
    wait_for_leaders(&broker.bootstrap(), &stack.prefix).await;
    let mut assistance = stack.spawn("assistance-adapter");
    let mut health = stack.spawn("health-adapter");
    let mut reconciler = stack.spawn("reconciler");
    for s in [&mut assistance, &mut health, &mut reconciler] {
        wait_ready(s).await;
    }

    // The registry: N children, each with a CNS, streamed as CSV while the broker goes away.
    let mut csv = String::from("nis,family_id,birth_date,sex,municipality,cns,memberships\n");
    for i in 0..N {
        csv.push_str(&format!(
            "{},F{},2020-02-0{},F,{MUNICIPALITY},{},PBF\n",
            valid_nis(7000 + i),
            i / 2,
            1 + i % 9,
            valid_cns(i)
        ));
    }
    let path = stack.dir.path().join("registry.csv");
    std::fs::write(&path, csv).unwrap();
    let url = stack.url("assistance-adapter", "/v1/persons");
    let (out, err) =
        ingest_through_broker_restart(&stack, &broker, &assistance, "assistance", &path, &url, 100)
            .await;
    assert!(out.contains(&format!("accepted   {N}")), "{out}");
    assert!(err.contains("503"), "the broker stop hit the batch: {err}");

    // Health: one record per child by CNS, one request each, sent by a client that re-sends on
    // 503 after Retry-After — while the broker goes away a second time.
    let health_url = stack.url("health-adapter", "/v1/health");
    let client = stack.client_for("health-adapter");
    let sender = tokio::spawn(async move {
        let mut retried = 0u32;
        for i in 0..N {
            let body = json!({"cns": valid_cns(i), "encounter_date": "2025-03-10",
                              "vaccination_up_to_date": true, "weight_kg": 17.0,
                              "height_cm": 105.0});
            loop {
                let resp = client.post(&health_url).json(&body).send().await.unwrap();
                match resp.status().as_u16() {
                    200 => break,
                    503 => {
                        retried += 1;
                        let wait: u64 = resp
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok()?.parse().ok())
                            .expect("503 carries Retry-After");
                        tokio::time::sleep(Duration::from_secs(wait.min(2))).await;
                    }
                    other => panic!("health answered {other}: {}", resp.text().await.unwrap()),
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        retried
    });
    eventually(
        "the first health record",
        Duration::from_secs(60),
        || async {
            let n = metric(
                health.admin_port(),
                "ponte_adapter_records_accepted_total",
                &[],
            )
            .await;
            (n > 0.0).then_some(())
        },
    )
    .await;
    broker.stop();
    eventually(
        "a failed health publish",
        Duration::from_secs(120),
        || async {
            let n = metric(
                health.admin_port(),
                "ponte_adapter_publish_failures_total",
                &[],
            )
            .await;
            (n > 0.0).then_some(())
        },
    )
    .await;
    broker.restart();
    let retried = sender.await.unwrap();
    assert!(retried > 0, "the broker stop hit the health batch");

    // Every child is in the view once, with their profile and their health record. Should
    // one be missing, the failure says who and shows the reconciler's log.
    let seen = std::sync::Mutex::new(String::from("no answer from the reconciler"));
    let complete = within(Duration::from_secs(180), || async {
        let all = list_municipality(stack.port("reconciler"), MUNICIPALITY).await?;
        let done = all.len() as u64 == N && all.iter().all(|p| p.health_records.len() == 1);
        if !done {
            *seen.lock().unwrap() = missing(&all);
        }
        done.then_some(all)
    })
    .await;
    let Some(persons) = complete else {
        let counters = metrics_text(reconciler.admin_port()).await;
        let counters: Vec<&str> = counters
            .lines()
            .filter(|l| l.starts_with("ponte_reconciler_") && !l.contains("_bucket"))
            .collect();
        panic!(
            "after 180 s the view still lacks children: {}\nreconciler metrics:\n{}\nreconciler log:\n{}",
            seen.lock().unwrap(),
            counters.join("\n"),
            reconciler.log_text()
        )
    };
    for p in &persons {
        assert!(p.registered, "{}", p.nis);
        assert_eq!(p.health_records.len(), 1, "{}", p.nis);
        assert_eq!(p.health_records[0].version, 1, "{}", p.nis);
    }

    for s in [assistance, health, reconciler] {
        let mut s = s;
        assert!(s.terminate().success(), "{}", s.log_text());
    }
}

/// Which of the N children `view` lacks, or lacks the health record of.
fn missing(view: &[ponte_proto::compliance::v1::Person]) -> String {
    let by_nis: std::collections::BTreeMap<&str, usize> = view
        .iter()
        .map(|p| (p.nis.as_str(), p.health_records.len()))
        .collect();
    let absent: Vec<String> = (0..N)
        .map(|i| valid_nis(7000 + i))
        .filter(|nis| !by_nis.contains_key(nis.as_str()))
        .collect();
    let without: Vec<&str> = by_nis
        .iter()
        .filter(|(_, h)| **h != 1)
        .map(|(nis, _)| *nis)
        .collect();
    format!(
        "{} of {N} in the view; absent {} (first: {:?}); without exactly one health record {} (first: {:?})",
        view.len(),
        absent.len(),
        absent.iter().take(5).collect::<Vec<_>>(),
        without.len(),
        without.iter().take(5).collect::<Vec<_>>()
    )
}

/// An abort the broker's absence cut short goes on inside librdkafka, which refuses every other
/// transactional call ("Conflicting abort_transaction API call is already in progress") until
/// the abort is called again and finishes. Before the producer did that, a reconciler whose
/// abort timed out while the broker restarted aborted every epoch after it, for good.
#[tokio::test(flavor = "multi_thread")]
async fn an_abort_the_broker_cut_short_is_finished_before_the_next_transaction() {
    use ponte_bus::transact::Transactional;
    let broker = PrivateBroker::start();
    let bootstrap = broker.bootstrap();
    let topic = "it-abort-resumed";
    ponte_integration_tests::create_topic(&bootstrap, topic, 1).await;
    let kafka = ponte_bus::KafkaConfig {
        bootstrap_servers: bootstrap,
        message_timeout_ms: 3000,
        properties: Default::default(),
    };
    // A fresh broker creates its transaction state topic at the first registration, which
    // can take longer than the short operation timeout the abort below is cut off by: one
    // registration first with time to spare.
    let producer = |id: &str, op_timeout: u64| {
        tokio::task::block_in_place(|| {
            Transactional::new(
                &kafka,
                "it-abort",
                id,
                Duration::from_secs(60),
                Duration::from_secs(op_timeout),
            )
        })
        .unwrap_or_else(|e| panic!("registering {id}: {e}"))
    };
    drop(producer("it-abort-first", 60));
    let tx = producer("it-abort-resumed", 5);
    tx.begin().unwrap();
    tx.send(topic, Some(0), b"k", Some(b"aborted"), None)
        .unwrap();
    broker.stop();
    // The coordinator is gone: the abort times out after the operation timeout (5 s).
    tokio::task::block_in_place(|| tx.abort());
    broker.restart();

    let began = within(Duration::from_secs(60), || async {
        match tokio::task::block_in_place(|| tx.begin()) {
            Ok(()) => Some(Ok(())),
            Err(e) if e.is_fatal() => Some(Err(e)),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                None
            }
        }
    })
    .await;
    match began {
        Some(Ok(())) => {}
        Some(Err(e)) => panic!("the producer failed for good instead of finishing its abort: {e}"),
        None => panic!("no transaction began within 60 s of the broker's return"),
    }
    tx.send(topic, Some(0), b"k", Some(b"committed"), None)
        .unwrap();
    tx.acknowledged().await.unwrap();
    tokio::task::block_in_place(|| tx.commit()).unwrap();
}
