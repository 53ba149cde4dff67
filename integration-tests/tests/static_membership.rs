//! `reconciler.instance_id` (Kafka static membership): a reconciler killed with `kill -9` and
//! started again under the same name gets its partitions back at once, not after the session
//! timeout, and goes on applying new input; and `ponte_bus::consume`'s group membership under
//! both rebalance protocols: a member closed in the middle of a rebalance leaves at once, and
//! under the cooperative one only the partitions that move are prepared. Real broker, real
//! processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ponte_bus::KafkaConfig;
use ponte_bus::consume::{Membership, PartitionSetup, group_consumer};
use ponte_integration_tests::workload::{persons, produce, workload};
use ponte_integration_tests::{Stack, broker, create_topic, eventually, parse_metric, wait_ready};
use rdkafka::Message;
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

/// Records the partitions of each preparation it is asked for.
#[derive(Default)]
struct RecordPreparations(Mutex<Vec<BTreeSet<i32>>>);

impl RecordPreparations {
    fn prepared(&self) -> Vec<BTreeSet<i32>> {
        self.0.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

impl PartitionSetup for RecordPreparations {
    fn prepare(
        &self,
        assigned: &BTreeMap<(String, i32), Option<i64>>,
        _: &dyn Fn() -> bool,
    ) -> Result<(), String> {
        let partitions = assigned.keys().map(|(_, p)| *p).collect();
        self.0.lock().unwrap().push(partitions);
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
    closed_while_rebalancing("close", BTreeMap::new()).await;
}

/// The same under the cooperative protocol (`partition.assignment.strategy=cooperative-sticky`
/// in `kafka.properties`): the member keeps its partition through the other's leaving, and the
/// partition handed back to it is the assignment its close serves.
#[tokio::test(flavor = "multi_thread")]
async fn a_cooperative_consumer_closed_while_its_group_rebalances_leaves_the_group_at_once() {
    closed_while_rebalancing("coopclose", cooperative()).await;
}

fn cooperative() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "partition.assignment.strategy".to_owned(),
        "cooperative-sticky".to_owned(),
    )])
}

async fn closed_while_rebalancing(name: &str, properties: BTreeMap<String, String>) {
    let cooperative = !properties.is_empty();
    let stack = Stack::new(name);
    let topic = stack.topic("closing.v1");
    create_topic(broker(), &topic, 2).await;
    let kafka = KafkaConfig {
        bootstrap_servers: broker().to_owned(),
        message_timeout_ms: 30_000,
        properties,
    };
    ponte_bus::consume::wait_for_topics(&kafka, &[&topic], Duration::from_secs(60)).unwrap();
    let observer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker())
        .create()
        .unwrap();
    for round in 0..5 {
        let group = format!("{}closing-{round}", stack.prefix);
        let setup = Arc::new(RecordPreparations::default());
        let membership = Membership {
            session_timeout_ms: 30_000,
            instance_id: None,
            advertised: None,
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
        let before_join = assignment.generation();
        let (other, other_assignment) = group_consumer(
            &kafka,
            &group,
            "closing-b",
            &[&topic],
            Arc::new(RecordPreparations::default()),
            membership,
        )
        .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (left, has_left) = tokio::sync::oneshot::channel::<()>();
        let other_ready = Arc::new(AtomicBool::new(false));
        let other_has_one = other_ready.clone();
        let other_loop = tokio::spawn(async move {
            poll_until(
                &other,
                &other_assignment,
                "the second member's partition",
                |a| a.prepared_partition_numbers().len() == 1,
            )
            .await;
            other_has_one.store(true, Ordering::SeqCst);
            let _ = stopped.await;
            other_assignment.close();
            drop(other);
            let _ = left.send(());
        });
        // Polled until it has answered every call the other's joining makes of it. librdkafka
        // hands each round's assignment to the application as an assign call — an empty one
        // when nothing is added — and a member still owing that call skips the group's next
        // rebalance ("skipping COOPERATIVE rebalance … awaiting assign call"): unpolled, it
        // would never rejoin when the other leaves, and the group would not settle. Eager, the
        // joining costs two calls (the revocation, the new assignment); cooperative, three
        // (the revocation of the partition given up, the empty assignment completing that
        // round, the empty assignment of the round that gives the other its partition).
        let calls = if cooperative { 3 } else { 2 };
        poll_until(&consumer, &assignment, "one partition", |a| {
            a.prepared_partition_numbers().len() == 1
                && other_ready.load(Ordering::SeqCst)
                && a.generation() >= before_join + calls
        })
        .await;
        let _ = stop.send(());
        if cooperative {
            // Nothing is revoked from this member when the other leaves: the other's
            // partition comes back in an assignment the group completes without this member
            // serving it, left unserved until the close.
            let _ = has_left.await;
            eventually(
                "the group to settle on the remaining member",
                Duration::from_secs(60),
                || async {
                    (group_state(&observer, &group).as_deref() == Some("Stable")).then_some(())
                },
            )
            .await;
        } else {
            // Served: the revocation of the rebalance the leaving member starts; the
            // assignment that follows it is left unserved.
            poll_until(&consumer, &assignment, "the revocation", |a| {
                a.partitions().is_empty()
            })
            .await;
        }
        other_loop.await.unwrap();
        let before = setup.count();

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
            setup.count(),
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

/// Under the cooperative protocol a member that a newcomer takes a partition from keeps the
/// other one flowing — not revoked, not paused, not prepared again — and when the newcomer
/// leaves, only the partition handed back is prepared. (Taken as eager, the assignment would
/// be answered with the wrong call and refused, and every partition prepared again.)
#[tokio::test(flavor = "multi_thread")]
async fn under_the_cooperative_protocol_only_the_partitions_that_move_are_prepared() {
    let stack = Stack::new("coop");
    let topic = stack.topic("coop.v1");
    create_topic(broker(), &topic, 2).await;
    let kafka = KafkaConfig {
        bootstrap_servers: broker().to_owned(),
        message_timeout_ms: 30_000,
        properties: cooperative(),
    };
    ponte_bus::consume::wait_for_topics(&kafka, &[&topic], Duration::from_secs(60)).unwrap();
    let group = format!("{}coop", stack.prefix);
    let membership = Membership {
        session_timeout_ms: 30_000,
        instance_id: None,
        advertised: None,
    };
    let setup = Arc::new(RecordPreparations::default());
    let (consumer, assignment) = group_consumer(
        &kafka,
        &group,
        "coop-a",
        &[&topic],
        setup.clone(),
        membership,
    )
    .unwrap();
    poll_until(&consumer, &assignment, "both partitions", |a| {
        a.prepared_partition_numbers().len() == 2
    })
    .await;
    assert_eq!(setup.prepared(), vec![BTreeSet::from([0, 1])]);

    let (other, other_assignment) = group_consumer(
        &kafka,
        &group,
        "coop-b",
        &[&topic],
        Arc::new(RecordPreparations::default()),
        membership,
    )
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let other_loop = tokio::spawn(async move {
        poll_until(&other, &other_assignment, "the newcomer's partition", |a| {
            a.prepared_partition_numbers().len() == 1
        })
        .await;
        let _ = stopped.await;
        other_assignment.close();
        drop(other);
    });
    poll_until(&consumer, &assignment, "one partition left", |a| {
        a.partition_numbers().len() == 1
    })
    .await;
    let kept = *assignment.partition_numbers().first().unwrap();
    assert_eq!(
        assignment.prepared_partition_numbers(),
        BTreeSet::from([kept])
    );
    assert_eq!(
        setup.prepared(),
        vec![BTreeSet::from([0, 1])],
        "the kept partition was prepared again"
    );

    // The kept partition flows: a record written to it now is delivered.
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker())
        .create()
        .unwrap();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&topic)
                .partition(kept)
                .key("k")
                .payload("after the newcomer joined"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let delivered = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let m = consumer.recv().await.unwrap();
            if m.payload() == Some(b"after the newcomer joined".as_slice()) {
                return m.partition();
            }
        }
    })
    .await
    .expect("a record of the kept partition to be delivered");
    assert_eq!(delivered, kept);

    // The newcomer leaves: its partition comes back, and only it is prepared.
    let _ = stop.send(());
    other_loop.await.unwrap();
    poll_until(&consumer, &assignment, "both partitions again", |a| {
        a.prepared_partition_numbers().len() == 2
    })
    .await;
    assert_eq!(
        setup.prepared(),
        vec![BTreeSet::from([0, 1]), BTreeSet::from([1 - kept])]
    );
    assert_eq!(assignment.failure(), None);
    tokio::task::spawn_blocking(move || {
        assignment.close();
        drop(consumer);
    })
    .await
    .unwrap();
}

/// The group's description tells who owns which partitions and at which address each member
/// answers (`Membership::advertised`, carried in its client id): what a reconciler instance
/// forwards a read of another instance's partition by.
#[tokio::test(flavor = "multi_thread")]
async fn the_groups_description_names_each_members_partitions_and_advertised_address() {
    let stack = Stack::new("members");
    let (a_topic, b_topic) = (stack.topic("members-a.v1"), stack.topic("members-b.v1"));
    create_topic(broker(), &a_topic, 4).await;
    create_topic(broker(), &b_topic, 4).await;
    let kafka = KafkaConfig {
        bootstrap_servers: broker().to_owned(),
        message_timeout_ms: 30_000,
        properties: BTreeMap::new(),
    };
    let topics = [a_topic.as_str(), b_topic.as_str()];
    ponte_bus::consume::wait_for_topics(&kafka, &topics, Duration::from_secs(60)).unwrap();
    let group = format!("{}members", stack.prefix);
    let member = |client: &str, advertised: Option<&'static str>| {
        group_consumer(
            &kafka,
            &group,
            client,
            &topics,
            Arc::new(RecordPreparations::default()),
            Membership {
                session_timeout_ms: 30_000,
                instance_id: None,
                advertised,
            },
        )
        .unwrap()
    };
    let (first, first_assignment) = member("members-a", Some("127.0.0.1:50051"));
    poll_until(&first, &first_assignment, "all four partitions", |a| {
        a.prepared_partition_numbers().len() == 4
    })
    .await;
    let (second, second_assignment) = member("members-b", None);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let second_loop = tokio::spawn(async move {
        poll_until(&second, &second_assignment, "two partitions", |a| {
            a.prepared_partition_numbers().len() == 2
        })
        .await;
        let mine = second_assignment.partitions();
        // Kept polling so the member stays in the group while it is described.
        let mut stopped = stopped;
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = tokio::time::timeout(Duration::from_millis(50), second.recv()) => {}
            }
        }
        second_assignment.close();
        drop(second);
        mine
    });
    poll_until(&first, &first_assignment, "two partitions left", |a| {
        a.prepared_partition_numbers().len() == 2
    })
    .await;
    let observer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker())
        .create()
        .unwrap();
    let view = eventually("a stable group of two", Duration::from_secs(30), || async {
        let v = ponte_bus::members::describe(&observer, &group, Duration::from_secs(5)).ok()?;
        (v.stable && v.members.len() == 2).then_some(v)
    })
    .await;
    let _ = stop.send(());
    let second_partitions = second_loop.await.unwrap();
    let sorted = |mut v: Vec<(String, i32)>| {
        v.sort();
        v
    };
    let advertising = view
        .members
        .iter()
        .find(|m| m.advertised.is_some())
        .unwrap();
    assert_eq!(advertising.advertised.as_deref(), Some("127.0.0.1:50051"));
    assert_eq!(
        sorted(advertising.partitions.clone()),
        sorted(first_assignment.partitions())
    );
    let silent = view
        .members
        .iter()
        .find(|m| m.advertised.is_none())
        .unwrap();
    assert_eq!(sorted(silent.partitions.clone()), sorted(second_partitions));
    // The range assignor keeps co-partitioned topics together: each member has the same
    // partition numbers of both topics.
    for m in &view.members {
        let of = |t: &str| -> BTreeSet<i32> {
            m.partitions
                .iter()
                .filter(|(topic, _)| topic == t)
                .map(|(_, p)| *p)
                .collect()
        };
        assert_eq!(of(&a_topic), of(&b_topic));
        assert_eq!(of(&a_topic).len(), 2);
    }
    tokio::task::spawn_blocking(move || {
        first_assignment.close();
        drop(first);
    })
    .await
    .unwrap();
}
