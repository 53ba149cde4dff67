//! Unidos household evidence through the sector adapters (issue 17 point 3), as real processes
//! against the real broker: the education and health systems post their results about a
//! household's members to their own adapter's `POST /v1/household-evidence`; each lands on that
//! adapter's records topic as a `HouseholdEvidence` event of its source, keyed by household id —
//! on the partition number a cogestor's visit of the same household takes on
//! `assistance.family.v1`, so the reconciler's co-partitioned household stage finds them
//! together. A record naming another source or an item its source does not declare is refused
//! with the field and the reason and dead-lettered, and the valid record of the same request is
//! kept.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ponte_integration_tests::{Stack, broker, read_topic, wait_ready};
use ponte_proto::events::v1::event::Record;
use ponte_proto::events::v1::evidence_item::Value as V;
use ponte_proto::events::v1::{DeadLetter, Event, HouseholdEvidence};
use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};

const HOUSEHOLD: &str = "HH-52001-0001";

async fn post(stack: &Stack, service: &str, content_type: &str, body: String) -> (u16, Value) {
    let resp = stack
        .client_for(service)
        .post(stack.url(service, "/v1/household-evidence"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

/// Every message of `topic` as (partition, key, event), waiting up to 20 s for `min` of them.
fn events(stack: &Stack, base: &str, min: usize) -> Vec<(i32, String, Event)> {
    let topic = stack.topic(base);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("group.id", format!("it-reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics().iter().flat_map(|t| t.partitions()) {
        tpl.add_partition_offset(&topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => out.push((
                m.partition(),
                String::from_utf8(m.key().unwrap_or_default().to_vec()).unwrap(),
                Event::decode(m.payload().unwrap_or_default()).unwrap(),
            )),
            _ if out.len() >= min => break,
            _ => {}
        }
    }
    out
}

fn evidence(e: &Event) -> &HouseholdEvidence {
    match &e.record {
        Some(Record::HouseholdEvidence(h)) => h,
        other => panic!("not household evidence: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sector_evidence_lands_on_each_adapters_topic_keyed_by_household() {
    let stack = Stack::new("unidos-sector");
    let (status, out, err) = stack.ponte(&["topics", "ensure"]);
    assert!(status.success(), "topics ensure failed: {out}{err}");
    let mut education = stack.spawn("education-adapter");
    let mut health = stack.spawn("health-adapter");
    let mut assistance = stack.spawn("assistance-adapter");
    wait_ready(&mut education).await;
    wait_ready(&mut health).await;
    wait_ready(&mut assistance).await;

    // The son's enrolment for the school year, from the Ministry of Education's cross-match
    // with the Unidos registry (the source left out: it is the adapter's), and a record naming
    // the cogestores' source, which is not the education adapter's.
    let enrolment = json!({"household_id": HOUSEHOLD, "evidence_id": "SIMAT-2025-000123",
        "subject": "nuip:1023456789", "recorded_on": "2025-03-15", "recorded_by": "simat:MEN",
        "items": {"enrolled_current_year": true}})
    .to_string();
    let not_ours = json!({"household_id": HOUSEHOLD, "source": "visit", "subject": "household",
        "recorded_on": "2025-03-15", "recorded_by": "simat:MEN",
        "items": {"enrolled_current_year": true}})
    .to_string();
    let (status, body) = post(
        &stack,
        "education-adapter",
        "application/json",
        format!("[{enrolment},{not_ours}]"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 1, "{body}");
    let rejected = &body["rejected"][0];
    assert_eq!(
        (
            &rejected["position"],
            &rejected["field"],
            &rejected["error_type"]
        ),
        (
            &json!("record 2"),
            &json!("source"),
            &json!("invalid_value")
        ),
        "{body}"
    );
    assert_eq!(
        rejected["reason"],
        "\"visit\" is not a source the education adapter carries (education); send it to the adapter of its sector"
    );
    // JSON only.
    let (status, _) = post(
        &stack,
        "education-adapter",
        "text/csv",
        "household_id\nHH-1\n".into(),
    )
    .await;
    assert_eq!(status, 415);

    // The same member's vaccination from the health side, and a record carrying an education
    // item (refused: 422, nothing valid in it).
    let vaccination = json!({"household_id": HOUSEHOLD, "source": "health",
        "subject": "nuip:1023456789", "recorded_on": "2025-05-02", "recorded_by": "eps:EPS037",
        "items": {"vaccination_up_to_date": true, "health_affiliation_regime": "subsidiado"}})
    .to_string();
    let (status, body) = post(&stack, "health-adapter", "application/json", vaccination).await;
    assert_eq!((status, &body["accepted"]), (200, &json!(1)), "{body}");
    let wrong_item = json!({"household_id": HOUSEHOLD, "subject": "nuip:1023456789",
        "recorded_on": "2025-05-02", "recorded_by": "eps:EPS037",
        "items": {"enrolled_current_year": true}})
    .to_string();
    let (status, body) = post(
        &stack,
        "health-adapter",
        "application/json",
        wrong_item.clone(),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["rejected"][0]["field"], "items.enrolled_current_year");
    assert!(
        body["rejected"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("\"enrolled_current_year\" is not an item of the health source in rules/unidos-2021.toml"),
        "{body}"
    );

    // A cogestor's visit of the same household, through the assistance adapter.
    let visit = json!({"household_id": HOUSEHOLD, "evidence_id": "V-2025-0042",
        "source": "visit", "subject": "household", "recorded_on": "2025-06-10",
        "recorded_by": "cogestor:CG-5201-017", "items": {"floor_material": "earth"}})
    .to_string();
    let (status, body) = post(&stack, "assistance-adapter", "application/json", visit).await;
    assert_eq!(status, 200, "{body}");

    let schooling = events(&stack, "education.attendance.v1", 1);
    assert_eq!(schooling.len(), 1, "{schooling:?}");
    let (edu_partition, key, e) = &schooling[0];
    assert_eq!(key, HOUSEHOLD);
    assert_eq!(
        e.record_id,
        "education:household-evidence:HH-52001-0001:SIMAT-2025-000123"
    );
    assert!(!e.sender.is_empty() && !e.request_id.is_empty(), "{e:?}");
    let h = evidence(e);
    assert_eq!(
        (
            h.source.as_str(),
            h.subject.as_str(),
            h.recorded_on.as_str()
        ),
        ("education", "nuip:1023456789", "2025-03-15")
    );
    assert_eq!(h.items[0].name, "enrolled_current_year");
    assert_eq!(h.items[0].value, Some(V::Flag(true)));

    let health_events = events(&stack, "health.records.v1", 1);
    assert_eq!(health_events.len(), 1, "{health_events:?}");
    let (health_partition, key, e) = &health_events[0];
    assert_eq!(key, HOUSEHOLD);
    assert_eq!(
        e.record_id,
        "health:household-evidence:HH-52001-0001:health:nuip:1023456789:2025-05-02"
    );
    let h = evidence(e);
    assert_eq!(h.source, "health");
    let items: BTreeMap<&str, Option<V>> = h
        .items
        .iter()
        .map(|i| (i.name.as_str(), i.value.clone()))
        .collect();
    assert_eq!(
        items["health_affiliation_regime"],
        Some(V::Text("subsidiado".into()))
    );
    assert_eq!(items["vaccination_up_to_date"], Some(V::Flag(true)));

    // Co-partitioned: one household, one partition number on every topic.
    let family = events(&stack, "assistance.family.v1", 1);
    assert_eq!(family.len(), 1, "{family:?}");
    assert_eq!(family[0].1, HOUSEHOLD);
    assert_eq!(
        (*edu_partition, *health_partition),
        (family[0].0, family[0].0)
    );

    // Exactly the two refused records are dead letters, with their original bytes, field and
    // reason.
    let letters: Vec<DeadLetter> =
        read_topic(&stack.topic("deadletter.v1"), 2, Duration::from_secs(20))
            .into_iter()
            .map(|(_, p)| DeadLetter::decode(p.as_slice()).unwrap())
            .collect();
    assert_eq!(letters.len(), 2, "{letters:?}");
    let education_letter = letters
        .iter()
        .find(|l| l.original == not_ours.as_bytes())
        .expect("the education record naming another source is dead-lettered");
    assert_eq!(
        (
            education_letter.source_system.as_str(),
            education_letter.position.as_str(),
            education_letter.field.as_str(),
            education_letter.error_type.as_str()
        ),
        ("education", "record 2", "source", "invalid_value")
    );
    assert!(
        education_letter
            .reason
            .contains("is not a source the education adapter carries"),
        "{education_letter:?}"
    );
    let health_letter = letters
        .iter()
        .find(|l| l.original == wrong_item.as_bytes())
        .expect("the health record with an education item is dead-lettered");
    assert_eq!(
        (
            health_letter.source_system.as_str(),
            health_letter.field.as_str()
        ),
        ("health", "items.enrolled_current_year")
    );
    assert!(
        health_letter
            .reason
            .contains("is not an item of the health source"),
        "{health_letter:?}"
    );
}
