//! `kill -9` of the reconciler at random points of a run, repeatedly, ends in exactly the view
//! an uninterrupted run over the same input gives. Real broker, real processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use ponte_integration_tests::workload::{
    indicators, persons, produce, produce_to, stack_with_reference, workload,
};
use ponte_integration_tests::{
    Service, Stack, client_replaced, clients_replaced, eventually, wait_ready,
};

const PERSONS: u64 = 1500;

/// Waits until the reference deployment (instance `reference`) has applied the whole workload
/// of `n` persons, then until the instance under test (`reconciler`, `what`) shows exactly its
/// view — versions included, so a record applied twice shows — and returns that view.
async fn the_reference_view(
    stack: &Stack,
    n: u64,
    what: &str,
) -> BTreeMap<String, ponte_proto::compliance::v1::Person> {
    let expected = eventually(
        "the uninterrupted run to apply everything",
        Duration::from_secs(300),
        || async {
            persons(stack.port("reference")).await.filter(|m| {
                m.len() as u64 == n
                    && m.values()
                        .all(|p| p.school_attendance.len() == 4 && p.health_records.len() == 1)
            })
        },
    )
    .await;
    let view = eventually(
        &format!("{what} to reach the same view"),
        Duration::from_secs(300),
        || async {
            persons(stack.port("reconciler"))
                .await
                .filter(|m| *m == expected)
        },
    )
    .await;
    // The municipality's counts, which each instance keeps per partition from its own state
    // (derived again from the changelog after every restart), agree too.
    let counts = indicators(stack.port("reference")).await.unwrap();
    assert!(!counts.is_empty());
    assert_eq!(
        indicators(stack.port("reconciler")).await,
        Some(counts),
        "{what}: GetIndicators"
    );
    view
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_points_ends_in_the_view_of_an_uninterrupted_run() {
    let (stack, reference_env) = stack_with_reference("crash");

    let events = workload(0..PERSONS);
    let total = events.len();
    produce(&stack, &events).await;
    produce_to(&reference_env[0].1, &events).await;

    // The uninterrupted run: a deployment of its own with the same input.
    let mut reference = stack.spawn_instance("reconciler", "reference", &reference_env);
    // The crashing run.
    let mut crashing: Service = stack.spawn("reconciler");
    wait_ready(&mut crashing).await;

    // Kill -9 at pseudo-random points (seeded, printed, so a failure can be replayed).
    let seed: u64 = std::env::var("PONTE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
                .into()
        });
    println!("crash seed {seed} (PONTE_CRASH_SEED to replay), {total} events");
    let mut x = seed | 1;
    let mut kills = 0;
    for _ in 0..5 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        tokio::time::sleep(Duration::from_millis(200 + x % 1500)).await;
        let consumed = ponte_integration_tests::metric(
            crashing.admin_port(),
            "ponte_reconciler_events_consumed_total",
            &[],
        )
        .await;
        println!("kill -9 after {consumed} events consumed since the last start");
        crashing.kill9();
        kills += 1;
        crashing.restart();
        wait_ready(&mut crashing).await;
    }
    println!("{kills} kills");

    wait_ready(&mut reference).await;
    let got = the_reference_view(&stack, PERSONS, "the crashed run").await;
    assert_eq!(got.len() as u64, PERSONS);
    assert!(crashing.terminate().success());
    assert!(reference.terminate().success());
}

/// A read of the state that fails (here the second, failing as an erring store would:
/// `PONTE_TEST_READ_PATH_FAULT`) turns readiness to 503 and every read to `UNAVAILABLE`, rather
/// than answering from a store that is not trusted any more; the write path goes on publishing
/// views.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_read_path_turns_readiness_to_503_and_refuses_reads() {
    use ponte_integration_tests::workload::{MUNICIPALITY, nis};
    use ponte_proto::compliance::v1::{GetIndicatorsRequest, GetPersonRequest, ListPersonsRequest};

    let stack = ponte_integration_tests::Stack::new("readfail");
    assert!(stack.ponte(&["topics", "ensure"]).0.success());
    let mut reconciler = stack.spawn_instance(
        "reconciler",
        "reconciler",
        &[("PONTE_TEST_READ_PATH_FAULT", "2".to_owned())],
    );
    wait_ready(&mut reconciler).await;
    let ready = format!("http://127.0.0.1:{}/health/ready", reconciler.admin_port());
    let get = |n: String| {
        let stack = &stack;
        async move {
            let mut client = stack.grpc().await.unwrap();
            client.get_person(GetPersonRequest { nis: n }).await
        }
    };
    // The first read is answered (nothing known yet).
    assert_eq!(get(nis(0)).await.unwrap_err().code(), tonic::Code::NotFound);
    produce(&stack, &workload(0..1)).await;
    let changed = |i: u64| {
        let key = format!("person:{}", nis(i));
        ponte_integration_tests::read_topic_until(
            &stack.topic("compliance.changes.v1"),
            Duration::from_secs(30),
            move |k, _| k == key.as_bytes(),
        );
    };
    changed(0);
    // The second fails: UNAVAILABLE, and the read path is not trusted again.
    let failed = get(nis(0)).await.unwrap_err();
    assert_eq!(failed.code(), tonic::Code::Unavailable, "{failed:?}");
    let body = eventually(
        "readiness 503 after a read of the state failed",
        Duration::from_secs(30),
        || async {
            let r = reqwest::get(&ready).await.ok()?;
            (r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE).then_some(())?;
            r.text().await.ok()
        },
    )
    .await;
    assert!(body.contains("read path failed"), "{body}");
    let refused = get(nis(0)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let mut client = stack.grpc().await.unwrap();
    let refused = client
        .list_persons(ListPersonsRequest {
            municipality: MUNICIPALITY.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let refused = client
        .get_indicators(GetIndicatorsRequest {
            municipality: MUNICIPALITY.into(),
            period: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(
        ponte_integration_tests::metric(
            reconciler.admin_port(),
            "ponte_reconciler_read_path_failed",
            &[]
        )
        .await,
        1.0
    );
    // The write path still publishes views.
    produce(&stack, &workload(1..2)).await;
    changed(1);
    reconciler.assert_running();
}

/// A consumer that librdkafka left without any broker (it drops them all on a metadata answer
/// listing none, as a restarting broker can give, and never reconnects: issue 15) is replaced,
/// with the transactional producer, and the run ends in the view of an uninterrupted one —
/// nothing lost, nothing applied twice. The loss is stood in for by
/// `PONTE_TEST_FORGET_BROKERS` (the consumer's statistics show no broker from its second
/// report on), as a single broker's restart gives it only now and then.
#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_that_lost_every_broker_is_replaced_and_the_view_is_an_uninterrupted_runs() {
    const N: u64 = 300;
    let (stack, reference_env) = stack_with_reference("lostbrokers");
    let (before, after) = (workload(0..N / 2), workload(N / 2..N));
    produce(&stack, &before).await;
    produce_to(&reference_env[0].1, &workload(0..N)).await;

    let mut reference = stack.spawn_instance("reconciler", "reference", &reference_env);
    let mut reconciler = stack.spawn_instance(
        "reconciler",
        "reconciler",
        &[(
            "PONTE_TEST_FORGET_BROKERS",
            "ponte-reconciler/consumer:2".to_owned(),
        )],
    );
    wait_ready(&mut reconciler).await;
    let port = reconciler.admin_port();
    let consumers = client_replaced(port, "ponte-reconciler/consumer").await;
    assert_eq!(
        consumers, 1.0,
        "only the first consumer is made to lose its brokers"
    );
    assert_eq!(
        clients_replaced(port, "ponte-reconciler/transactional").await,
        1.0,
        "the producer is replaced with it"
    );
    produce(&stack, &after).await;

    wait_ready(&mut reference).await;
    let got = the_reference_view(&stack, N, "the run with a replaced consumer").await;
    assert_eq!(got.len() as u64, N);
    let log = reconciler.log_text();
    assert!(
        log.contains("replacing the Kafka consumer and producer"),
        "{log}"
    );
    reconciler.assert_running();
    assert!(reconciler.terminate().success());
    assert!(reference.terminate().success());
}
