//! `reconciler.instance_id` (Kafka static membership): a reconciler killed with `kill -9` and
//! started again under the same name gets its partitions back at once, not after the session
//! timeout, and goes on applying new input. Real broker, real processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use ponte_integration_tests::workload::{persons, produce, workload};
use ponte_integration_tests::{Stack, eventually, parse_metric, wait_ready};

/// Topic-partitions the group consumes: 5 input topics and 3 repartition topics, 3 partitions
/// each (the stack's `topics.partitions`).
const TOPIC_PARTITIONS: f64 = 24.0;
/// Far longer than the test waits for the partitions to come back: without static membership
/// the restarted process could not own anything before this.
const SESSION_TIMEOUT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_instance_gets_its_partitions_back_without_waiting_for_the_session_timeout() {
    let stack = Stack::new("static");
    assert!(stack.ponte(&["topics", "ensure"]).0.success());
    produce(&stack, &workload(0..100)).await;

    let mut r = stack.spawn_instance(
        "reconciler",
        "reconciler",
        &[
            (
                "PONTE__RECONCILER__INSTANCE_ID",
                format!("{}reconciler-1", stack.prefix),
            ),
            (
                "PONTE__RECONCILER__SESSION_TIMEOUT_MS",
                SESSION_TIMEOUT.as_millis().to_string(),
            ),
        ],
    );
    wait_ready(&mut r).await;
    let port = stack.port("reconciler");
    eventually(
        "the first 100 persons",
        Duration::from_secs(120),
        || async { persons(port).await.filter(|m| m.len() == 100) },
    )
    .await;

    let admin = r.admin_port();
    r.kill9();
    let restarted = Instant::now();
    r.restart();
    eventually(
        "the restarted instance to own every partition again",
        SESSION_TIMEOUT / 3,
        || async {
            // The admin endpoint is not up during the first moments of the process.
            let text = reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            (parse_metric(&text, "ponte_reconciler_assigned_partitions", &[]) == TOPIC_PARTITIONS)
                .then_some(())
        },
    )
    .await;
    println!(
        "partitions back {:.1} s after the restart (session timeout {} s)",
        restarted.elapsed().as_secs_f64(),
        SESSION_TIMEOUT.as_secs()
    );

    // It owns them for real: new input is applied.
    produce(&stack, &workload(100..200)).await;
    eventually("all 200 persons", Duration::from_secs(120), || async {
        persons(port).await.filter(|m| m.len() == 200)
    })
    .await;
    r.terminate();
}
