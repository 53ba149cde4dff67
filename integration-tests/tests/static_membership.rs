//! `reconciler.instance_id` (Kafka static membership): a reconciler killed with `kill -9` and
//! started again under the same name gets its partitions back at once, not after the session
//! timeout, and goes on applying new input; and a group member closed in the middle of a
//! rebalance leaves at once (`ponte_bus::consume`). Real broker, real processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ponte_bus::KafkaConfig;
use ponte_bus::consume::{Membership, PartitionSetup, group_consumer};
use ponte_integration_tests::workload::{persons, produce, workload};
use ponte_integration_tests::{Stack, broker, create_topic, eventually, parse_metric, wait_ready};
use rdkafka::consumer::{BaseConsumer, Consumer};

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

/// Counts the preparations it is asked for.
#[derive(Default)]
struct CountPreparations(AtomicUsize);

impl PartitionSetup for CountPreparations {
    fn prepare(
        &self,
        _: &BTreeMap<(String, i32), Option<i64>>,
        _: &dyn Fn() -> bool,
    ) -> Result<(), String> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// The state of `group` as the broker reports it ("Stable", "Empty", …).
fn group_state(client: &BaseConsumer, group: &str) -> Option<String> {
    let list = client
        .fetch_group_list(Some(group), Duration::from_secs(5))
        .ok()?;
    Some(list.groups().first()?.state().to_owned())
}

/// Polls `consumer` (resuming what its preparation finished) until `until` holds.
async fn poll_until(
    consumer: &rdkafka::consumer::StreamConsumer<ponte_bus::consume::SeekingContext>,
    assignment: &ponte_bus::consume::Assignment,
    what: &str,
    until: impl Fn(&ponte_bus::consume::Assignment) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !until(assignment) {
        assert!(Instant::now() < deadline, "waiting for {what}");
        let _ = tokio::time::timeout(Duration::from_millis(1), consumer.recv()).await;
        assignment.resume_prepared(consumer).unwrap();
    }
}

/// A member closed while its group rebalances — another member just left, this one served
/// the revocation and its new assignment is on its way (a SIGTERM right after a scale-in) —
/// closes and leaves at once, taking no partition: a closing consumer cannot read the group's
/// committed offsets, and asking for them held the close until their 120 s timeout (seen in
/// CI: a reconciler that did not exit within 30 s of SIGTERM).
#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_closed_while_its_group_rebalances_leaves_the_group_at_once() {
    let stack = Stack::new("close");
    let topic = stack.topic("closing.v1");
    create_topic(broker(), &topic, 2).await;
    let kafka = KafkaConfig {
        bootstrap_servers: broker().to_owned(),
        message_timeout_ms: 30_000,
        properties: BTreeMap::new(),
    };
    ponte_bus::consume::wait_for_topics(&kafka, &[&topic], Duration::from_secs(60)).unwrap();
    let observer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker())
        .create()
        .unwrap();
    for round in 0..5 {
        let group = format!("{}closing-{round}", stack.prefix);
        let setup = Arc::new(CountPreparations::default());
        let membership = Membership {
            session_timeout_ms: 30_000,
            instance_id: None,
        };
        let (consumer, assignment) = group_consumer(
            &kafka,
            &group,
            "closing-a",
            &[&topic],
            setup.clone(),
            membership,
        )
        .unwrap();
        poll_until(&consumer, &assignment, "both partitions", |a| {
            a.prepared_partition_numbers().len() == 2
        })
        .await;
        // A second member joins, is given one partition, and leaves again.
        let (other, other_assignment) = group_consumer(
            &kafka,
            &group,
            "closing-b",
            &[&topic],
            Arc::new(CountPreparations::default()),
            membership,
        )
        .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let other_loop = tokio::spawn(async move {
            poll_until(
                &other,
                &other_assignment,
                "the second member's partition",
                |a| a.prepared_partition_numbers().len() == 1,
            )
            .await;
            let _ = stopped.await;
            other_assignment.close();
            drop(other);
        });
        poll_until(&consumer, &assignment, "one partition", |a| {
            a.prepared_partition_numbers().len() == 1
        })
        .await;
        let _ = stop.send(());
        // Served: the revocation of the rebalance the leaving member starts; the assignment
        // that follows it is left unserved.
        poll_until(&consumer, &assignment, "the revocation", |a| {
            a.partitions().is_empty()
        })
        .await;
        other_loop.await.unwrap();
        let before = setup.0.load(Ordering::SeqCst);

        let closed = tokio::task::spawn_blocking(move || {
            assignment.close();
            let started = Instant::now();
            drop(consumer);
            started.elapsed()
        });
        let took = tokio::time::timeout(Duration::from_secs(30), closed)
            .await
            .expect("the consumer's close to return (it waited for the group's committed offsets)")
            .unwrap();
        println!("round {round}: closed in {:.2} s", took.as_secs_f64());
        assert_eq!(
            setup.0.load(Ordering::SeqCst),
            before,
            "a closing consumer prepared partitions"
        );
        eventually(
            "the members to leave the group",
            Duration::from_secs(30),
            || async { (group_state(&observer, &group).as_deref() == Some("Empty")).then_some(()) },
        )
        .await;
    }
}
