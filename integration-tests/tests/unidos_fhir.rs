//! Unidos household evidence as FHIR through the health adapter (issue 17 point 3, "FHIR where
//! the source is FHIR"), as real processes against the real broker, on a deployment configured
//! for Unidos: the registry's profile of a household (assistance adapter), then the health
//! system's answer to the cross-match — a FHIR Bundle with the household as a `Group`, its
//! members as `Patient`s identified by their Colombian documents, their `Coverage`s and the
//! child's vaccination-status `Observation` — posted as `application/fhir+json` to the health
//! adapter's `POST /v1/household-evidence`. The household's affiliation (L02) and vaccination
//! (L03) achievements turn reached in the reconciler's `GetHousehold` view, resting on the
//! health source's records; a result about a patient outside the household's Group is refused
//! by entry and dead-lettered with its bytes, the valid entries of the bundle kept; the same
//! Observation sent again `entered-in-error` withdraws the vaccination evidence.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ponte_domain::period::Date;
use ponte_integration_tests::{Stack, achievement_state, read_topic, repo_root, wait_ready};
use ponte_proto::compliance::v1::{AchievementState, Household};
use ponte_proto::events::v1::DeadLetter;
use prost::Message as _;
use serde_json::{Value, json};

const HOUSEHOLD: &str = "HH-52001-0311";
const MOTHER: &str = "nuip:27123456";
const SON: &str = "nuip:1085123477";
const RDA_DOCUMENT_TYPES: &str =
    "https://fhir.minsalud.gov.co/rda/CodeSystem/ColombianPersonIdentifier";

/// `days` days before today (UTC), `YYYY-MM-DD`.
fn days_ago(days: i64) -> String {
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        / 86_400;
    Date::from_days(today - days).unwrap().to_string()
}

/// A household of Pasto linked to Unidos: a mother with her cédula and a son of three with his
/// registro civil.
fn profile() -> Value {
    let born = days_ago(3 * 365 + 20);
    json!({
        "household_id": HOUSEHOLD,
        "municipality": "52001",
        "zone": "urban",
        "sisben_group": "A2",
        "programmes": ["UNIDOS"],
        "members": [
            {"member_id": "M1", "birth_date": "1985-01-01", "sex": "F",
             "documents": [{"type": "CC", "number": "27123456", "from": "2003-02-01"}]},
            {"member_id": "M2", "birth_date": born, "sex": "M",
             "documents": [{"type": "RC", "number": "1085123477", "from": born}]}
        ],
    })
}

fn patient(id: &str, code: &str, number: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "identifier": [{
        "type": {"coding": [{"system": RDA_DOCUMENT_TYPES, "code": code}]},
        "system": "https://fhir.minsalud.gov.co/rda/NamingSystem/RNEC", "value": number}]})
}

fn coverage(id: &str, patient: &str, updated: &str) -> Value {
    json!({"resourceType": "Coverage", "id": id, "status": "active",
           "meta": {"versionId": "1", "lastUpdated": format!("{updated}T10:00:00-05:00")},
           "type": {"coding": [{"system": "urn:ponte:unidos:CodeSystem:health-regime", "code": "subsidiado"}]},
           "beneficiary": {"reference": format!("Patient/{patient}")},
           "payor": [{"display": "EPS037"}]})
}

fn vaccination(patient: &str, on: &str, status: &str, version: &str) -> Value {
    json!({"resourceType": "Observation", "id": format!("vac-{patient}"), "status": status,
           "meta": {"versionId": version},
           "code": {"coding": [{"system": "urn:ponte:fhir:CodeSystem:health", "code": "vaccination-up-to-date"}]},
           "subject": {"reference": format!("Patient/{patient}")},
           "effectiveDateTime": on, "valueBoolean": true})
}

fn bundle(resources: &[Value]) -> String {
    json!({"resourceType": "Bundle", "type": "collection",
           "entry": resources.iter().map(|r| json!({"resource": r})).collect::<Vec<_>>()})
    .to_string()
}

fn household_group(members: &[&str]) -> Value {
    json!({"resourceType": "Group", "id": "household", "type": "person", "actual": true,
           "identifier": [{"system": "urn:ponte:unidos:household", "value": HOUSEHOLD}],
           "member": members.iter().map(|m| json!({"entity": {"reference": format!("Patient/{m}")}})).collect::<Vec<_>>()})
}

async fn post_fhir(stack: &Stack, body: String) -> (u16, Value) {
    let resp = stack
        .client_for("health-adapter")
        .post(stack.url("health-adapter", "/v1/household-evidence"))
        .header("content-type", "application/fhir+json")
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

fn count(outcome: &Value, what: &str) -> i64 {
    outcome["extension"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["url"]
                .as_str()
                .unwrap()
                .ends_with(&format!("{what}-count"))
        })
        .and_then(|e| e["valueInteger"].as_i64())
        .unwrap()
}

/// The source and record id a member's state of `achievement` rests on.
fn evidence_of(h: &Household, achievement: &str, member: &str) -> Option<(String, String)> {
    h.achievements
        .iter()
        .find(|a| a.achievement == achievement)?
        .members
        .iter()
        .find(|m| m.person_key == member)?
        .evidence
        .as_ref()
        .map(|e| (e.source.clone(), e.record_id.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_households_fhir_bundle_reaches_its_health_achievements() {
    let mut stack = Stack::new("unidos-fhir");
    stack.extra_env.insert(
        "PONTE__RECONCILER__ACHIEVEMENT_RULES_FILE".into(),
        repo_root()
            .join("rules/unidos-2021.toml")
            .display()
            .to_string(),
    );
    let (ok, out, err) = stack.ponte(&["topics", "ensure"]);
    assert!(ok.success(), "{out}{err}");
    let mut services: Vec<_> = ["assistance-adapter", "health-adapter", "reconciler"]
        .into_iter()
        .map(|s| stack.spawn(s))
        .collect();
    for s in &mut services {
        wait_ready(s).await;
    }

    stack
        .post(
            "assistance-adapter",
            "/v1/household-profiles",
            json!([profile()]),
        )
        .await;
    let before = stack
        .household_where(HOUSEHOLD, "the household from its profile", |h| {
            h.members.len() == 2
        })
        .await;
    assert_eq!(before.members, [MOTHER, SON]);
    assert_eq!(
        achievement_state(&before, "L02"),
        AchievementState::AchievementUnknown
    );
    assert_eq!(
        achievement_state(&before, "L03"),
        AchievementState::AchievementUnknown
    );

    // The health system's answer for the household: both members' affiliation, the son's
    // vaccination status, a result about a child who is not in the household's Group (refused)
    // and a practitioner (ignored).
    let on = days_ago(30);
    let stranger = vaccination("cousin", &on, "final", "1");
    let resources = vec![
        household_group(&["mother", "son"]),
        patient("mother", "CC", "27123456"),
        patient("son", "RC", "1085123477"),
        patient("cousin", "RC", "1085999999"),
        coverage("cov-mother", "mother", &on),
        coverage("cov-son", "son", &on),
        vaccination("son", &on, "final", "1"),
        stranger.clone(),
        json!({"resourceType": "Practitioner", "id": "nurse-1"}),
    ];
    let (status, outcome) = post_fhir(&stack, bundle(&resources)).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(
        (
            count(&outcome, "accepted"),
            count(&outcome, "rejected"),
            count(&outcome, "ignored")
        ),
        (3, 1, 2),
        "{outcome}"
    );
    let error = outcome["issue"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["severity"] == "error")
        .unwrap();
    assert_eq!(
        error["expression"][0], "Bundle.entry[7].resource.subject",
        "{error}"
    );
    assert!(
        error["diagnostics"]
            .as_str()
            .unwrap()
            .starts_with("entry 8 (Observation/vac-cousin): Observation.subject: Patient/cousin (entry 4) is not a member of the household's Group"),
        "{error}"
    );

    let after = stack
        .household_where(HOUSEHOLD, "affiliation and vaccination reached", |h| {
            achievement_state(h, "L02") == AchievementState::AchievementReached
                && achievement_state(h, "L03") == AchievementState::AchievementReached
        })
        .await;
    assert_eq!(
        evidence_of(&after, "L03", SON),
        Some((
            "health".to_owned(),
            format!("health:household-evidence:{HOUSEHOLD}:Observation/vac-son")
        ))
    );
    assert_eq!(
        evidence_of(&after, "L02", MOTHER),
        Some((
            "health".to_owned(),
            format!("health:household-evidence:{HOUSEHOLD}:Coverage/cov-mother")
        ))
    );

    // The refused entry is a dead letter: its bytes, its position and the reason.
    let letters: Vec<DeadLetter> =
        read_topic(&stack.topic("deadletter.v1"), 1, Duration::from_secs(20))
            .into_iter()
            .map(|(_, p)| DeadLetter::decode(p.as_slice()).unwrap())
            .collect();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(
        (
            letter.source_system.as_str(),
            letter.position.as_str(),
            letter.field.as_str()
        ),
        ("health", "entry 8", "Observation.subject")
    );
    let original: Value = serde_json::from_slice(&letter.original).unwrap();
    assert_eq!(original["resource"], stranger);

    // The same Observation sent again, entered in error: the son's vaccination is no longer
    // known.
    let resources = vec![
        household_group(&["mother", "son"]),
        patient("son", "RC", "1085123477"),
        vaccination("son", &on, "entered-in-error", "2"),
    ];
    let (status, outcome) = post_fhir(&stack, bundle(&resources)).await;
    assert_eq!((status, count(&outcome, "accepted")), (200, 1), "{outcome}");
    let withdrawn = stack
        .household_where(HOUSEHOLD, "the vaccination withdrawn", |h| {
            achievement_state(h, "L03") == AchievementState::AchievementUnknown
        })
        .await;
    assert_eq!(
        achievement_state(&withdrawn, "L02"),
        AchievementState::AchievementReached
    );
    assert!(withdrawn.view_version > after.view_version);
}
