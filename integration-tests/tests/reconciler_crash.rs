//! `kill -9` of the reconciler at random points of a run, repeatedly, ends in exactly the view
//! an uninterrupted run over the same input gives. Real broker, real processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use ponte_domain::ids::Nis;
use ponte_integration_tests::{Service, Stack, broker, eventually, valid_cns, wait_ready};
use ponte_proto::compliance::v1::compliance_service_client::ComplianceServiceClient;
use ponte_proto::compliance::v1::{ListPersonsRequest, Person};
use ponte_proto::events::v1::{self as ev, Event, event::Record, health_follow_up::Subject};
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

const PERSONS: u64 = 1500;
const MUNICIPALITY: &str = "3550308";

fn nis(i: u64) -> String {
    Nis::with_check_digit(&format!("{:010}", 1_000_000_000 + i * 7))
        .unwrap()
        .to_string()
}

fn event(record_id: String, record: Record) -> Event {
    Event {
        record_id,
        version: 1,
        source_system: "crash-test".into(),
        record: Some(record),
        ..Default::default()
    }
}

/// Every input of the run: per person a registry profile, four months of attendance and a
/// health record keyed by CNS (half of them sent before the profile, so they are parked).
fn workload() -> Vec<(&'static str, String, Event)> {
    let mut out = Vec::new();
    for i in 0..PERSONS {
        let n = nis(i);
        let c = valid_cns(i);
        let health = (
            "health.records.v1",
            c.clone(),
            event(
                format!("health:enc-{i}"),
                Record::HealthFollowUp(ev::HealthFollowUp {
                    subject: Some(Subject::Cns(c.clone())),
                    encounter_date: "2025-03-10".into(),
                    vaccination_up_to_date: Some(i % 3 != 0),
                    weight_grams: Some(20_000),
                    height_mm: Some(1_100),
                    ..Default::default()
                }),
            ),
        );
        if i % 2 == 0 {
            out.push(health.clone());
        }
        out.push((
            "registry.persons.v1",
            n.clone(),
            event(
                format!("registry:{n}"),
                Record::PersonProfile(ev::PersonProfile {
                    nis: n.clone(),
                    family_id: format!("F{}", i / 3),
                    birth_date: format!("{}-05-01", 2012 + (i % 12)),
                    sex: if i % 2 == 0 { "F".into() } else { "M".into() },
                    municipality: MUNICIPALITY.into(),
                    cns: vec![c.clone()],
                    memberships: vec!["PBF".into()],
                    ..Default::default()
                }),
            ),
        ));
        for (m, month) in ["2025-04", "2025-05", "2025-06", "2025-07"]
            .iter()
            .enumerate()
        {
            let attended = 10 + ((i + m as u64) % 11) as u32;
            out.push((
                "education.attendance.v1",
                n.clone(),
                event(
                    format!("education:35012345:{n}:{month}"),
                    Record::SchoolAttendance(ev::SchoolAttendance {
                        nis: n.clone(),
                        inep_school_code: "35012345".into(),
                        month: (*month).into(),
                        given: 20,
                        attended,
                        unit: ev::AttendanceUnit::Days as i32,
                        attendance_bp: attended * 500,
                        ..Default::default()
                    }),
                ),
            ));
        }
        if i % 2 == 1 {
            out.push(health);
        }
    }
    out
}

async fn persons(port: u16) -> Option<BTreeMap<String, Person>> {
    let mut client = ComplianceServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .ok()?;
    let mut stream = client
        .list_persons(ListPersonsRequest {
            municipality: MUNICIPALITY.into(),
            page_size: 100_000,
            ..Default::default()
        })
        .await
        .ok()?
        .into_inner();
    let mut out = BTreeMap::new();
    while let Some(item) = stream.message().await.ok()? {
        let mut p = item.person?;
        // How many changes led to a view depends on how batches were cut; the view does not.
        p.view_version = 0;
        p.updated_time = None;
        out.insert(p.nis.clone(), p);
    }
    Some(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_points_ends_in_the_view_of_an_uninterrupted_run() {
    let stack = Stack::new("crash");
    assert!(stack.ponte(&["topics", "ensure"]).0.success());

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .create()
        .unwrap();
    let events = workload();
    let total = events.len();
    let sends = events.iter().map(|(topic, key, e)| {
        let topic = stack.topic(topic);
        let payload = e.encode_to_vec();
        let producer = producer.clone();
        let key = key.clone();
        async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        }
    });
    for r in futures::future::join_all(sends).await {
        r.unwrap();
    }

    // The uninterrupted run: its own consumer group and state.
    let mut reference = stack.spawn_instance(
        "reconciler",
        "reference",
        &[
            (
                "PONTE__RECONCILER__GROUP_ID",
                format!("{}reference", stack.prefix),
            ),
            (
                "PONTE__RECONCILER__STATE_DIR",
                stack.dir.path().join("reference").display().to_string(),
            ),
        ],
    );
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
    let expected = eventually(
        "the uninterrupted run to apply everything",
        Duration::from_secs(300),
        || async {
            persons(stack.port("reference")).await.filter(|m| {
                m.len() as u64 == PERSONS
                    && m.values()
                        .all(|p| p.school_attendance.len() == 4 && p.health_records.len() == 1)
            })
        },
    )
    .await;
    let got = eventually(
        "the crashed run to reach the same view",
        Duration::from_secs(300),
        || async {
            persons(stack.port("reconciler"))
                .await
                .filter(|m| *m == expected)
        },
    )
    .await;
    assert_eq!(got.len() as u64, PERSONS);
    assert!(crashing.terminate().success());
    assert!(reference.terminate().success());
}
