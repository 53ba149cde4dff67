//! The three sectors through real processes: a health record keyed by CNS arrives before the
//! registry knows the CNS (parked), the registry profile arrives through the assistance adapter
//! (released), school attendance below the threshold arrives through the education adapter, and
//! the reconciler's views, alerts and family effects follow — including an accepted appeal that
//! revokes the effect visibly and its retraction by id, a semester-only health record, a registry
//! retraction with only the NIS, and events the reconciler cannot apply, which are dead-lettered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ponte_integration_tests::{
    Stack, eventually, grpc_client, metric, read_topic, read_topic_until, sender_of, wait_ready,
};
use ponte_proto::compliance::v1::{
    ComplianceAlert, ComplianceChange, Family, GetFamilyRequest, GetPersonRequest,
    ListParkedRequest, OutcomeStatus, Person,
};
use ponte_proto::events::v1::{DeadLetter, Event, PersonProfile, event::Record};
use ponte_proto::reconciler::v1::{MemberOutcomes, RepartitionBatch};
use prost::Message as _;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

const CHILD: &str = "26827649960"; // docs/rules.md#test-vectors
const MOTHER: &str = "46952280637";
const CHILD_CNS: &str = "700000000000005"; // provisional CNS, ponte-domain's vector
const FAMILY: &str = "1234567890";

/// `ponte_reconciler_parked_records` (kept from the commits, refreshed every second).
async fn parked_gauge_reaches(admin_port: u16, want: f64) {
    eventually(
        &format!("ponte_reconciler_parked_records {want}"),
        Duration::from_secs(30),
        || async {
            (metric(admin_port, "ponte_reconciler_parked_records", &[]).await == want).then_some(())
        },
    )
    .await;
}

async fn person_where(stack: &Stack, nis: &str, pred: impl Fn(&Person) -> bool) -> Person {
    eventually(
        &format!("person {nis}"),
        Duration::from_secs(60),
        || async {
            let mut c = stack.grpc().await.ok()?;
            let p = c
                .get_person(GetPersonRequest { nis: nis.into() })
                .await
                .ok()?
                .into_inner()
                .person?;
            pred(&p).then_some(p)
        },
    )
    .await
}

async fn family_where(stack: &Stack, pred: impl Fn(&Family) -> bool) -> Family {
    eventually("the family", Duration::from_secs(60), || async {
        let mut c = stack.grpc().await.ok()?;
        let f = c
            .get_family(GetFamilyRequest {
                family_id: FAMILY.into(),
            })
            .await
            .ok()?
            .into_inner()
            .family?;
        pred(&f).then_some(f)
    })
    .await
}

fn status(p: &Person, conditionality: &str, period: &str) -> Option<OutcomeStatus> {
    p.outcomes
        .iter()
        .find(|o| o.conditionality == conditionality && o.period == period)
        .and_then(|o| OutcomeStatus::try_from(o.status).ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn three_sectors_meet_in_one_view() {
    let stack = Stack::new("sectors");
    let (ok, out, err) = stack.ponte(&["topics", "ensure"]);
    assert!(ok.success(), "{out}{err}");
    let mut services = Vec::new();
    for s in [
        "education-adapter",
        "health-adapter",
        "assistance-adapter",
        "reconciler",
    ] {
        services.push(stack.spawn(s));
    }
    for s in &mut services {
        wait_ready(s).await;
    }

    // Health first: the CNS is unknown, so the record is parked.
    let health_request = stack
        .post(
            "health-adapter",
            "/v1/health",
            json!({"cns": CHILD_CNS, "encounter_date": "2025-03-10", "vaccination_up_to_date": true,
               "weight_kg": 18.5, "height_cm": 108.0, "version": 1}),
        )
        .await;
    eventually(
        "the health record to be parked",
        Duration::from_secs(60),
        || async {
            // Parked records carry raw CNS/CPF: only the operator may list them.
            let mut c = grpc_client(stack.port("reconciler"), "operator")
                .await
                .ok()?;
            let r = c
                .list_parked(ListParkedRequest { limit: 10 })
                .await
                .ok()?
                .into_inner();
            (r.total == 1 && r.parked[0].identifier == format!("cns:{CHILD_CNS}")).then_some(())
        },
    )
    .await;
    let admin = stack.admin_port("reconciler");
    parked_gauge_reaches(admin, 1.0).await;

    // The registry: a five-year-old (education band 4–5: 60 %, health: child under 7) and her
    // mother, both in the programme.
    let registry_request = stack.post("assistance-adapter",
        "/v1/persons",
        json!([
            {"nis": CHILD, "family_id": FAMILY, "birth_date": "2020-01-15", "sex": "F",
             "municipality": "3550308", "cns": [CHILD_CNS], "memberships": ["PBF"], "version": 1},
            {"nis": MOTHER, "family_id": FAMILY, "birth_date": "1995-06-01", "sex": "F",
             "municipality": "3550308", "memberships": ["PBF"], "version": 1}
        ]),
    )
    .await;
    // Education: April 2025 at 50 %, below the 60 % of the 4–5 band (Lei 14.601/2023 art. 10).
    let education_request = stack
        .post(
            "education-adapter",
            "/v1/attendance",
            json!({"nis": CHILD, "inep_school_code": "35012345", "month": "2025-04", "unit": "days",
               "given": 20, "attended": 10, "low_attendance_reason": "62", "version": 1}),
        )
        .await;

    let child = person_where(&stack, CHILD, |p| {
        status(p, "education", "2025-B2") == Some(OutcomeStatus::NonCompliant)
            && status(p, "health", "2025-S1") == Some(OutcomeStatus::Compliant)
    })
    .await;
    assert_eq!(child.family_id, FAMILY);
    assert!(child.registered);
    assert_eq!(child.health_records.len(), 1);
    assert_eq!(
        child.health_records[0].arrived_as,
        format!("cns:{CHILD_CNS}")
    );
    // Each record the view uses says who sent it (the principal of the client certificate)
    // and in which request (the x-request-id its sender was answered).
    let mut sources: Vec<(String, String, String)> = child
        .sources
        .iter()
        .map(|s| {
            (
                s.record_type.clone(),
                s.sender.clone(),
                s.request_id.clone(),
            )
        })
        .collect();
    sources.sort();
    let principal = |service| format!("urn:ponte:principal:{}", sender_of(service));
    assert_eq!(
        sources,
        vec![
            (
                "health_follow_up".to_owned(),
                principal("health-adapter"),
                health_request
            ),
            (
                "person_profile".to_owned(),
                principal("assistance-adapter"),
                registry_request
            ),
            (
                "school_attendance".to_owned(),
                principal("education-adapter"),
                education_request
            ),
        ]
    );
    // No record in the next bimester: not followed, never non-compliant.
    assert_eq!(
        status(&child, "education", "2025-B3"),
        Some(OutcomeStatus::NotFollowed)
    );
    let mut c = grpc_client(stack.port("reconciler"), "operator")
        .await
        .unwrap();
    let parked = c
        .list_parked(ListParkedRequest { limit: 10 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(parked.total, 0, "released when the profile brought the CNS");
    parked_gauge_reaches(admin, 0.0).await;

    let family = family_where(&stack, |f| !f.effects.is_empty()).await;
    assert_eq!(family.members, vec![CHILD.to_owned(), MOTHER.to_owned()]);
    assert!(family.non_compliant_periods.contains(&"2025-B2".to_owned()));
    assert_eq!(family.effects[0].sequence, 1, "first rung of the ladder");

    // The alert for social assistance, and the view on the compacted changes topic.
    let child_alert = |_: &[u8], v: &[u8]| ComplianceAlert::decode(v).is_ok_and(|a| a.nis == CHILD);
    let alert = read_topic_until(
        &stack.topic("compliance.alerts.v1"),
        Duration::from_secs(30),
        child_alert,
    )
    .iter()
    .map(|(_, v)| ComplianceAlert::decode(v.as_slice()).unwrap())
    .find(|a| a.nis == CHILD)
    .expect("an alert for the child");
    assert_eq!(
        (alert.family_id.as_str(), alert.period.as_str()),
        (FAMILY, "2025-B2")
    );
    // The child's person view is on the changes topic (the read fails when it never comes).
    read_topic_until(
        &stack.topic("compliance.changes.v1"),
        Duration::from_secs(30),
        |k, v| {
            k == format!("person:{CHILD}").as_bytes()
                && matches!(
                    ComplianceChange::decode(v).map(|c| c.view),
                    Ok(Some(
                        ponte_proto::compliance::v1::compliance_change::View::Person(_)
                    ))
                )
        },
    );

    // The mother's health follow-up sent for the semester only (no encounter date): it counts
    // for 2025-S2 like a dated record would.
    stack
        .post(
            "health-adapter",
            "/v1/health",
            json!({"nis": MOTHER, "semester": "2025-S2", "version": 1}),
        )
        .await;
    let mother = person_where(&stack, MOTHER, |p| {
        status(p, "health", "2025-S2") == Some(OutcomeStatus::Compliant)
    })
    .await;
    assert_eq!(mother.health_records[0].semester, "2025-S2");
    assert_eq!(mother.health_records[0].encounter_date, "");

    // An accepted appeal revokes the effect (both Bolsa Família rule sets): it stays visible
    // with its status and the appeal's record id.
    stack
        .post(
            "assistance-adapter",
            "/v1/appeals",
            json!({"family_id": FAMILY, "appeal_id": "R-2025-1", "period": "2025-B2", "nis": CHILD,
               "conditionality": "education", "filed_on": "2025-07-01", "decision": "ACCEPTED",
               "decided_on": "2025-07-20", "version": 2}),
        )
        .await;
    let appeal_id = format!("assistance:appeal:{FAMILY}:R-2025-1");
    let revoked = family_where(&stack, |f| {
        !f.effects.is_empty() && f.effects.iter().all(|e| e.status == "revoked_by_appeal")
    })
    .await;
    assert_eq!(
        revoked.effects[0].appeal_record_ids,
        vec![appeal_id.clone()]
    );
    // Its retraction by id alone brings the effect back.
    stack
        .post(
            "assistance-adapter",
            "/v1/appeals",
            json!({"family_id": FAMILY, "appeal_id": "R-2025-1", "retraction": true, "version": 3}),
        )
        .await;
    family_where(&stack, |f| {
        !f.effects.is_empty() && f.effects.iter().all(|e| e.status == "applied")
    })
    .await;

    // A registry retraction with only the NIS takes the mother out of the public and the family.
    stack
        .post(
            "assistance-adapter",
            "/v1/persons",
            json!({"nis": MOTHER, "retraction": true, "version": 2}),
        )
        .await;
    person_where(&stack, MOTHER, |p| !p.registered && p.outcomes.is_empty()).await;
    family_where(&stack, |f| f.members == vec![CHILD.to_owned()]).await;

    // What the reconciler cannot apply is dead-lettered with record id, source and reason:
    // a profile written straight to the registry topic with a municipality that fails its
    // check digit, bytes that are no event at all, a well-formed event whose header names a
    // schema the topic does not carry, and bytes on one of the reconciler's own repartition
    // topics that are no repartition message.
    let bad = Event {
        record_id: "registry:bad-municipality".to_owned(),
        version: 1,
        source_system: "someone-else".to_owned(),
        record: Some(Record::PersonProfile(PersonProfile {
            nis: CHILD.to_owned(),
            family_id: FAMILY.to_owned(),
            birth_date: "2020-01-15".to_owned(),
            sex: "F".to_owned(),
            municipality: "3550307".to_owned(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", ponte_integration_tests::broker())
        .create()
        .unwrap();
    let registry = stack.topic("registry.persons.v1");
    for payload in [bad.encode_to_vec(), b"not a protobuf event \xff".to_vec()] {
        producer
            .send(
                FutureRecord::to(&registry).key(CHILD).payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let mut future = bad.clone();
    future.record_id = "registry:future-schema".to_owned();
    if let Some(Record::PersonProfile(p)) = future.record.as_mut() {
        p.municipality = "3550308".to_owned();
    }
    let future_payload = future.encode_to_vec();
    producer
        .send(
            FutureRecord::to(&registry)
                .key(CHILD)
                .payload(&future_payload)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "ponte-schema",
                    value: Some("ponte.events.v2"),
                })),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let members = stack.topic(&format!("reconciler.{}reconciler.members.v1", stack.prefix));
    producer
        .send(
            FutureRecord::to(&members)
                .key(FAMILY)
                .payload(b"\xff\xff no member outcomes"),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    // Repartition messages travel in batches, one Kafka message per partition and epoch: an
    // entry that cannot be applied is dead-lettered alone with its place in the batch, the
    // entries around it are applied, and a batch whose framing is broken goes whole.
    let harmless = MemberOutcomes {
        family_id: "batch-test-family".to_owned(),
        nis: MOTHER.to_owned(),
        member: false,
        ..Default::default()
    }
    .encode_to_vec();
    let bad_entry = MemberOutcomes {
        family_id: FAMILY.to_owned(),
        nis: CHILD.to_owned(),
        member: true,
        outcomes_json: b"not json".to_vec(),
        ..Default::default()
    }
    .encode_to_vec();
    let batch = RepartitionBatch {
        entries: vec![harmless, bad_entry.clone()],
        keys: vec![b"batch-test-family".to_vec(), FAMILY.as_bytes().to_vec()],
    }
    .encode_to_vec();
    let broken = b"\x0a\x40 cut short".to_vec();
    for payload in [&batch, &broken] {
        producer
            .send(
                FutureRecord::<[u8], _>::to(&members)
                    .payload(payload)
                    .headers(
                        OwnedHeaders::new()
                            .insert(Header {
                                key: "ponte-schema",
                                value: Some("ponte.reconciler.v1"),
                            })
                            .insert(Header {
                                key: "ponte-event-type",
                                value: Some("member_batch"),
                            }),
                    ),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let letters: Vec<DeadLetter> =
        read_topic(&stack.topic("deadletter.v1"), 6, Duration::from_secs(60))
            .iter()
            .map(|(_, v)| DeadLetter::decode(v.as_slice()).unwrap())
            .collect();
    // Not decoded as what it does not claim to be: kept whole, with the schema it named.
    let unknown = letters
        .iter()
        .find(|l| l.error_type == "unknown_schema")
        .unwrap_or_else(|| panic!("no dead letter for the unknown schema: {letters:?}"));
    assert!(
        unknown.position.starts_with(&registry),
        "{}",
        unknown.position
    );
    assert!(
        unknown.reason.contains("ponte.events.v2"),
        "{}",
        unknown.reason
    );
    assert_eq!(unknown.original, future_payload);
    let internal = letters
        .iter()
        // A whole message's letter (the batch's entry has its own below).
        .find(|l| l.position.starts_with(&members) && !l.position.contains(" entry "))
        .unwrap_or_else(|| panic!("no dead letter from {members}: {letters:?}"));
    assert_eq!(
        (
            internal.error_type.as_str(),
            internal.source_system.as_str()
        ),
        ("malformed", "reconciler"),
        "{internal:?}"
    );
    let entry = letters
        .iter()
        .find(|l| l.position.ends_with(" entry 1"))
        .unwrap_or_else(|| panic!("no dead letter for the batch's entry: {letters:?}"));
    assert!(entry.position.starts_with(&members), "{}", entry.position);
    assert_eq!(
        (entry.error_type.as_str(), entry.field.as_str()),
        ("invalid_value", "outcomes_json")
    );
    assert_eq!(entry.original, bad_entry);
    let whole = letters
        .iter()
        .find(|l| l.reason.contains("RepartitionBatch"))
        .unwrap_or_else(|| panic!("no dead letter for the broken batch: {letters:?}"));
    assert_eq!(
        (whole.error_type.as_str(), whole.original.as_slice()),
        ("malformed", broken.as_slice())
    );
    assert!(!whole.position.contains("entry"), "{}", whole.position);
    let invalid = letters
        .iter()
        .find(|l| l.record_id == "registry:bad-municipality")
        .unwrap_or_else(|| panic!("no dead letter for the bad profile: {letters:?}"));
    assert_eq!(invalid.source_system, "someone-else");
    assert_eq!(
        (invalid.error_type.as_str(), invalid.field.as_str()),
        ("invalid_identifier", "municipality")
    );
    assert!(
        invalid.position.starts_with(&registry),
        "{}",
        invalid.position
    );
    assert_eq!(invalid.original, bad.encode_to_vec());
    assert!(
        letters
            .iter()
            .any(|l| l.error_type == "malformed" && l.source_system == "reconciler"),
        "{letters:?}"
    );
    assert_eq!(
        metric(
            admin,
            "ponte_reconciler_events_dead_lettered_total",
            &[("error_type", "invalid_identifier")]
        )
        .await,
        1.0
    );
    // The child's view is untouched by the profile that could not be applied.
    assert_eq!(
        person_where(&stack, CHILD, |p| p.registered)
            .await
            .municipality,
        "3550308"
    );
    // The outcome gauges count the owned partitions' outcomes (every 30 s): the child's
    // non-compliant bimester among them.
    eventually(
        "the outcome gauges to count the child's education outcomes",
        Duration::from_secs(45),
        || async {
            let n = metric(
                admin,
                "ponte_reconciler_outcomes",
                &[("conditionality", "education"), ("status", "NON_COMPLIANT")],
            )
            .await;
            (n >= 1.0).then_some(())
        },
    )
    .await;
    // Each count's time is kept beside them (what the scan of the counts rows costs).
    assert!(
        metric(admin, "ponte_reconciler_outcome_count_seconds_count", &[]).await >= 1.0,
        "the outcome gauges were counted without their time kept"
    );

    for s in &mut services {
        assert!(s.terminate().success(), "{} log:\n{}", s.name, s.log_text());
    }
    // No service logged an input identifier in clear (docs/operations.md, "Logs"): record ids,
    // keys, reasons and errors pass through the masking writer.
    for s in &services {
        let log = s.log_text();
        for id in [CHILD, MOTHER, CHILD_CNS] {
            let leaks: Vec<&str> = log.lines().filter(|l| l.contains(id)).collect();
            assert!(
                leaks.is_empty(),
                "{} logs {id} in clear:\n{}",
                s.name,
                leaks.join("\n")
            );
        }
    }
}
