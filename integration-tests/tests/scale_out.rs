//! Scale-out: two reconciler instances in one consumer group split the partitions; killing one
//! moves its partitions and their state to the other; a returning instance finds its local
//! state stale and rebuilds it from the changelog. Every person and family is answerable from
//! every instance (each computes the views of the partitions it owns from its state, and asks
//! the other instance for the others'), except while no instance can answer for a partition
//! (its owner stopped: `UNAVAILABLE`, never a stale or missing view), and the views are exactly
//! those of a single uninterrupted instance. Real broker, real processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use ponte_integration_tests::workload::{
    attendance, families, family, indicators, persons, produce, produce_to, stack_with_reference,
    workload,
};
use ponte_integration_tests::{Service, Stack, eventually, grpc_client, metric, wait_ready};
use ponte_proto::compliance::v1::{Family, GetPersonRequest, Person};

const PERSONS: u64 = 600;
/// Topic-partitions the group consumes: 5 input topics and 3 repartition topics, 3 partitions
/// each (the stack's `topics.partitions`).
const TOPIC_PARTITIONS: f64 = 24.0;

/// An instance of the scaled deployment (group `scaled`) with its own state directory, and
/// `extra` environment.
fn instance(stack: &Stack, name: &str, extra: &[(&str, String)]) -> Service {
    let mut env = vec![
        (
            "PONTE__RECONCILER__GROUP_ID",
            format!("{}scaled", stack.prefix),
        ),
        (
            "PONTE__RECONCILER__STATE_DIR",
            stack.dir.path().join(name).display().to_string(),
        ),
    ];
    env.extend(extra.iter().cloned());
    stack.spawn_instance("reconciler", name, &env)
}

/// Waits until `a` and `b` share every topic-partition; returns how many each owns.
async fn split(a: &Service, b: &Service) -> (f64, f64) {
    eventually(
        "the group to split the partitions between a and b",
        Duration::from_secs(60),
        || async {
            let (x, y) = (assigned(a).await, assigned(b).await);
            (x > 0.0 && y > 0.0 && x + y == TOPIC_PARTITIONS).then_some((x, y))
        },
    )
    .await
}

async fn assigned(s: &Service) -> f64 {
    metric(s.admin_port(), "ponte_reconciler_assigned_partitions", &[]).await
}

/// The reference's persons and families once it has applied everything up to `persons` people
/// with `check` true of every person.
async fn reference_views(
    stack: &Stack,
    persons_count: u64,
    families_ids: &[String],
    check: impl Fn(&Person) -> bool,
) -> (BTreeMap<String, Person>, BTreeMap<String, Family>) {
    let p = eventually(
        "the reference instance to apply everything",
        Duration::from_secs(300),
        || async {
            persons(stack.port("reference"))
                .await
                .filter(|m| m.len() as u64 == persons_count && m.values().all(&check))
        },
    )
    .await;
    // Family views follow the persons' through the members topic: wait until they are still.
    let f = eventually(
        "the reference's families to settle",
        Duration::from_secs(120),
        || async {
            let now = families(stack.port("reference"), families_ids).await?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            let again = families(stack.port("reference"), families_ids).await?;
            (now == again).then_some(again)
        },
    )
    .await;
    (p, f)
}

/// The persons `nis` as `GetPerson` answers them on the instance at `port` (normalised like
/// [`persons`]).
async fn get_persons<'a>(
    port: u16,
    nis: impl Iterator<Item = &'a String>,
) -> BTreeMap<String, Person> {
    let (answered, unavailable) = get_persons_or_unavailable(port, nis).await;
    assert!(unavailable.is_empty(), "UNAVAILABLE: {unavailable:?}");
    answered
}

/// [`get_persons`], and the persons answered `UNAVAILABLE` (any other error fails).
async fn get_persons_or_unavailable<'a>(
    port: u16,
    nis: impl Iterator<Item = &'a String>,
) -> (BTreeMap<String, Person>, Vec<String>) {
    let mut client = grpc_client(port, "federal").await.unwrap();
    let mut out = BTreeMap::new();
    let mut unavailable = Vec::new();
    for n in nis {
        match client.get_person(GetPersonRequest { nis: n.clone() }).await {
            Ok(r) => {
                let mut p = r.into_inner().person.unwrap();
                p.view_version = 0;
                p.updated_time = None;
                out.insert(n.clone(), p);
            }
            Err(s) if s.code() == tonic::Code::Unavailable => unavailable.push(n.clone()),
            Err(s) => panic!("GetPerson {n}: {s}"),
        }
    }
    (out, unavailable)
}

/// Waits until the instance `name` serves exactly `expected`; on timeout, fails naming the
/// first person or family that differs.
async fn serves(
    stack: &Stack,
    name: &str,
    expected: &(BTreeMap<String, Person>, BTreeMap<String, Family>),
    families_ids: &[String],
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let got_p = persons(stack.port(name)).await.unwrap_or_default();
        let got_f = families(stack.port(name), families_ids)
            .await
            .unwrap_or_default();
        if got_p == expected.0 && got_f == expected.1 {
            return;
        }
        if std::time::Instant::now() > deadline {
            let p = expected
                .0
                .iter()
                .find(|(k, v)| got_p.get(*k) != Some(*v))
                .map(|(k, v)| format!("person {k}: expected {v:?}, got {:?}", got_p.get(k)));
            let f = expected
                .1
                .iter()
                .find(|(k, v)| got_f.get(*k) != Some(*v))
                .map(|(k, v)| {
                    let members: Vec<String> = v
                        .members
                        .iter()
                        .map(|m| {
                            let outcomes: Vec<String> = got_p
                                .get(m)
                                .map(|p| {
                                    p.outcomes
                                        .iter()
                                        .map(|o| {
                                            format!(
                                                "{}/{}={}",
                                                o.conditionality, o.period, o.status
                                            )
                                        })
                                        .collect()
                                })
                                .unwrap_or_default();
                            format!("{m}: {outcomes:?}")
                        })
                        .collect();
                    format!(
                        "family {k}: expected {:?}, got {:?}; members now {members:?}",
                        v.non_compliant_periods,
                        got_f.get(k).map(|f| &f.non_compliant_periods)
                    )
                });
            panic!(
                "{name} serves {} persons and {} families unlike the reference: {p:?} {f:?}",
                got_p.len(),
                got_f.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_split_the_partitions_and_the_survivor_takes_over() {
    let (stack, reference_env) = stack_with_reference("scale");
    let reference_prefix = reference_env[0].1.clone();
    let send = |events: Vec<_>| {
        let stack = &stack;
        let reference_prefix = &reference_prefix;
        async move {
            produce(stack, &events).await;
            produce_to(reference_prefix, &events).await;
        }
    };
    let half = PERSONS / 2;
    let families_of = |n: u64| -> Vec<String> {
        let mut f: Vec<String> = (0..n).map(family).collect();
        f.dedup();
        f
    };
    let complete = |p: &Person| p.school_attendance.len() == 4 && p.health_records.len() == 1;

    // One uninterrupted instance, a deployment of its own with the same input: the views to
    // compare with.
    let mut reference = stack.spawn_instance("reconciler", "reference", &reference_env);
    // Two instances in one group, each reading the other's partitions from it.
    let mut a = instance(&stack, "a", &stack.peer_env("a"));
    let mut b = instance(&stack, "b", &stack.peer_env("b"));
    wait_ready(&mut a).await;
    wait_ready(&mut b).await;
    wait_ready(&mut reference).await;
    let shares = split(&a, &b).await;
    println!("a owns {} topic-partitions, b owns {}", shares.0, shares.1);

    // 1. Half the population while both run: each applies its share; both answer for all.
    send(workload(0..half)).await;
    println!("phase 1: both instances");
    let first = reference_views(&stack, half, &families_of(half), complete).await;
    serves(&stack, "a", &first, &families_of(half)).await;
    serves(&stack, "b", &first, &families_of(half)).await;

    // 2. b stops answering (SIGSTOP), then dies without leaving the group. While the group
    //    still gives b its partitions, a's reads of b's persons time out and are answered
    //    UNAVAILABLE (a holds no copy of them), a's own persons as before. After the session
    //    timeout a owns everything, rebuilds b's partitions from the changelog, and applies the
    //    other half.
    let peer_failures = || async {
        metric(
            a.admin_port(),
            "ponte_reconciler_peer_reads_total",
            &[("result", "failed")],
        )
        .await
    };
    let failed_before = peer_failures().await;
    b.signal_stop();
    let (answered, unavailable) = get_persons_or_unavailable(stack.port("a"), first.0.keys()).await;
    assert!(
        !answered.is_empty() && !unavailable.is_empty(),
        "a answered {} persons, {} UNAVAILABLE: each should own some",
        answered.len(),
        unavailable.len()
    );
    for (nis, p) in &answered {
        assert_eq!(
            Some(p),
            first.0.get(nis),
            "a: GetPerson {nis} while b answers nothing"
        );
    }
    assert!(
        peer_failures().await > failed_before,
        "a asked the stopped b nothing (its owners left b out already?)"
    );
    b.kill9();
    eventually(
        "a to own every partition",
        Duration::from_secs(60),
        || async { (assigned(&a).await == TOPIC_PARTITIONS).then_some(()) },
    )
    .await;
    send(workload(half..PERSONS)).await;
    println!("phase 2: a alone");
    let second = reference_views(&stack, PERSONS, &families_of(PERSONS), complete).await;
    serves(&stack, "a", &second, &families_of(PERSONS)).await;
    let restores = metric(
        a.admin_port(),
        "ponte_reconciler_partition_restores_total",
        &[],
    )
    .await;
    assert!(
        restores > 0.0,
        "a took b's partitions without restoring them"
    );

    // 3. b returns with the state it had before: stale for the partitions a wrote since. It
    //    must rebuild them, and both must agree with the reference after more changes
    //    (corrections that raise April's attendance of everyone).
    b.restart();
    wait_ready(&mut b).await;
    split(&a, &b).await;
    let corrections: Vec<_> = (0..PERSONS)
        .map(|i| attendance(i, "2025-04", 20, 2))
        .collect();
    send(corrections).await;
    println!("phase 3: b back");
    let corrected = |p: &Person| {
        complete(p)
            && p.school_attendance
                .iter()
                .any(|r| r.month == "2025-04" && r.attended == 20 && r.version == 2)
    };
    let third = reference_views(&stack, PERSONS, &families_of(PERSONS), corrected).await;
    serves(&stack, "a", &third, &families_of(PERSONS)).await;
    serves(&stack, "b", &third, &families_of(PERSONS)).await;
    let restores = metric(
        b.admin_port(),
        "ponte_reconciler_partition_restores_total",
        &[],
    )
    .await;
    assert!(
        restores > 0.0,
        "b came back to partitions a had written and kept its stale state"
    );
    // GetPerson agrees on both instances: each computes the persons of the partitions it owns
    // from its state, and asks the other for the others' (GetFamily likewise, in `serves`).
    for (name, s) in [("a", &a), ("b", &b)] {
        let before = metric(
            s.admin_port(),
            "ponte_reconciler_peer_reads_total",
            &[("result", "answered")],
        )
        .await;
        assert_eq!(
            get_persons(stack.port(name), third.0.keys()).await,
            third.0,
            "{name}: GetPerson"
        );
        // Lists and counts of the municipality: gathered from both instances' partitions.
        assert_eq!(
            indicators(stack.port(name)).await,
            indicators(stack.port("reference")).await,
            "{name}: GetIndicators"
        );
        for (view, from) in [
            ("person", "state"),
            ("person", "owner"),
            ("family", "owner"),
            ("list", "owner"),
            ("indicators", "owner"),
        ] {
            let n = metric(
                s.admin_port(),
                "ponte_reconciler_view_reads_total",
                &[("view", view), ("from", from)],
            )
            .await;
            assert!(n > 0.0, "{name} read no {view}'s view from its {from}");
        }
        let answered = metric(
            s.admin_port(),
            "ponte_reconciler_peer_reads_total",
            &[("result", "answered")],
        )
        .await;
        assert!(
            answered > before,
            "{name}'s GetPerson of every person asked the other instance nothing"
        );
    }
    let unavailable = metric(
        a.admin_port(),
        "ponte_reconciler_view_reads_total",
        &[("view", "person"), ("from", "unavailable")],
    )
    .await;
    assert!(unavailable > 0.0, "a counted no read it could not answer");

    assert!(a.terminate().success());
    assert!(b.terminate().success());
    assert!(reference.terminate().success());
}
