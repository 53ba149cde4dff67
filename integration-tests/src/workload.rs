//! A reconciler workload shared by the crash and scale-out tests: persons of one municipality
//! in families of three, each with a registry profile, monthly school attendance and a health
//! record keyed by CNS (half of them sent before the profile, so they are parked first), sent
//! straight to the input topics; and readers of the resulting views over gRPC.
use std::collections::BTreeMap;
use std::time::Duration;

use ponte_domain::ids::Nis;
use ponte_proto::compliance::v1::{
    Family, GetFamilyRequest, GetIndicatorsRequest, IndicatorRow, ListPersonsRequest, Person,
};
use ponte_proto::events::v1::{self as ev, Event, event::Record, health_follow_up::Subject};
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::{Stack, broker, valid_cns};

/// The municipality every person of the workload lives in.
pub const MUNICIPALITY: &str = "3550308";

/// The NIS of person `i`.
pub fn nis(i: u64) -> String {
    Nis::with_check_digit(&format!("{:010}", 1_000_000_000 + i * 7))
        .unwrap_or_else(|e| panic!("NIS for person {i}: {e}"))
        .to_string()
}

/// The family of person `i` (three persons per family).
pub fn family(i: u64) -> String {
    format!("F{}", i / 3)
}

fn event(record_id: String, version: u64, record: Record) -> Event {
    Event {
        record_id,
        version,
        source_system: "workload".into(),
        record: Some(record),
        ..Default::default()
    }
}

/// `attendance` of person `i` in `month` at `version` (days attended out of 20).
pub fn attendance(
    i: u64,
    month: &str,
    attended: u32,
    version: u64,
) -> (&'static str, String, Event) {
    let n = nis(i);
    (
        "education.attendance.v1",
        n.clone(),
        event(
            format!("education:35012345:{n}:{month}"),
            version,
            Record::SchoolAttendance(ev::SchoolAttendance {
                nis: n,
                inep_school_code: "35012345".into(),
                month: month.into(),
                given: 20,
                attended,
                unit: ev::AttendanceUnit::Days as i32,
                attendance_bp: attended * 500,
                ..Default::default()
            }),
        ),
    )
}

/// Every input for persons `range`: (base topic, key, event).
pub fn workload(range: std::ops::Range<u64>) -> Vec<(&'static str, String, Event)> {
    let mut out = Vec::new();
    for i in range {
        let n = nis(i);
        let c = valid_cns(i);
        let health = (
            "health.records.v1",
            c.clone(),
            event(
                format!("health:enc-{i}"),
                1,
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
                1,
                Record::PersonProfile(ev::PersonProfile {
                    nis: n.clone(),
                    family_id: family(i),
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
            out.push(attendance(i, month, attended, 1));
        }
        if i % 2 == 1 {
            out.push(health);
        }
    }
    out
}

/// Sends `events` to the stack's topics and waits for every acknowledgement.
pub async fn produce(stack: &Stack, events: &[(&'static str, String, Event)]) {
    produce_to(&stack.prefix, events).await;
}

/// A separate deployment on the same broker (its own topics, consumer group and state), to run
/// an uninterrupted reference beside the deployment under test: both get the same input, and
/// their outputs (their changes topics) never mix.
pub fn reference_deployment(stack: &Stack) -> Vec<(&'static str, String)> {
    vec![
        ("PONTE__TOPICS__PREFIX", format!("{}ref.", stack.prefix)),
        (
            "PONTE__RECONCILER__GROUP_ID",
            format!("{}reference", stack.prefix),
        ),
        (
            "PONTE__RECONCILER__STATE_DIR",
            stack.dir.path().join("reference").display().to_string(),
        ),
    ]
}

/// A stack for test `name` beside a [`reference_deployment`] on the same broker, the topics of
/// both created: returns the stack and the reference's environment.
pub fn stack_with_reference(name: &str) -> (Stack, Vec<(&'static str, String)>) {
    let stack = Stack::new(name);
    let reference_env = reference_deployment(&stack);
    assert!(stack.ponte(&["topics", "ensure"]).0.success());
    assert!(
        stack
            .ponte_with(&["topics", "ensure"], &reference_env)
            .0
            .success()
    );
    (stack, reference_env)
}

/// Sends `events` to the topics under `prefix` and waits for every acknowledgement.
pub async fn produce_to(prefix: &str, events: &[(&'static str, String, Event)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .create()
        .unwrap_or_else(|e| panic!("producer: {e}"));
    let sends = events.iter().map(|(topic, key, e)| {
        let topic = format!("{prefix}{topic}");
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
        if let Err(e) = r {
            panic!("producing the workload: {e}");
        }
    }
}

/// Every person of `municipality` as the reconciler at `port` serves them (one `ListPersons`
/// stream); `None` while it does not answer.
pub async fn list_municipality(port: u16, municipality: &str) -> Option<Vec<Person>> {
    let mut client = crate::grpc_client(port, "federal").await.ok()?;
    let mut stream = client
        .list_persons(ListPersonsRequest {
            municipality: municipality.into(),
            page_size: 100_000,
            ..Default::default()
        })
        .await
        .ok()?
        .into_inner();
    let mut out = Vec::new();
    while let Some(item) = stream.message().await.ok()? {
        out.push(item.person?);
    }
    Some(out)
}

/// Every person of the workload's municipality as the instance at `port` serves them, without
/// the version counters and change times (how many changes led to a view depends on how
/// batches were cut; the view does not). `None` while the instance does not answer.
pub async fn persons(port: u16) -> Option<BTreeMap<String, Person>> {
    let listed = list_municipality(port, MUNICIPALITY).await?;
    Some(
        listed
            .into_iter()
            .map(|mut p| {
                p.view_version = 0;
                p.updated_time = None;
                (p.nis.clone(), p)
            })
            .collect(),
    )
}

/// The outcome counts of the workload's municipality as the instance at `port` serves them, by
/// conditionality and period; `None` while the instance does not answer.
pub async fn indicators(port: u16) -> Option<BTreeMap<(String, String), IndicatorRow>> {
    let mut client = crate::grpc_client(port, "federal").await.ok()?;
    let rows = client
        .get_indicators(GetIndicatorsRequest {
            municipality: MUNICIPALITY.into(),
            period: String::new(),
        })
        .await
        .ok()?
        .into_inner()
        .rows;
    Some(
        rows.into_iter()
            .map(|r| ((r.conditionality.clone(), r.period.clone()), r))
            .collect(),
    )
}

/// The families `ids` as the instance at `port` serves them (normalised like [`persons`]);
/// `None` while one of them is missing.
pub async fn families(port: u16, ids: &[String]) -> Option<BTreeMap<String, Family>> {
    let mut client = crate::grpc_client(port, "federal").await.ok()?;
    let mut out = BTreeMap::new();
    for id in ids {
        let mut f = client
            .get_family(GetFamilyRequest {
                family_id: id.clone(),
            })
            .await
            .ok()?
            .into_inner()
            .family?;
        f.view_version = 0;
        f.updated_time = None;
        out.insert(id.clone(), f);
    }
    Some(out)
}
