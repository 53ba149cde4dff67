//! A Unidos household (Colombia) through the three adapters to its exit, on a deployment
//! configured for Unidos (`reconciler.achievement_rules_file = rules/unidos-2021.toml`): the
//! registry's profile and a social worker's visits through the assistance adapter, school
//! enrolment through the education adapter, health affiliation through the health adapter; the
//! reconciler's household view over gRPC, on the change topic and in the municipal indicators.
//! Evidence dates are days before today, since the household is evaluated on the day its
//! newest record was accepted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ponte_domain::period::Date;
use ponte_integration_tests::{
    Stack, achievement_state, metric, read_topic_to_end, repo_root, wait_ready,
};
use ponte_proto::compliance::v1::{
    AchievementState, ComplianceChange, CriterionState, GetHouseholdIndicatorsRequest,
    compliance_change::View,
};
use prost::Message as _;
use serde_json::{Value, json};

const HOUSEHOLD: &str = "HH-52001-0107";
const MOTHER: &str = "nuip:27123456";
const DAUGHTER: &str = "nuip:1085123456";

/// `days` days before today (UTC), `YYYY-MM-DD`.
fn days_ago(days: i64) -> String {
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        / 86_400;
    Date::from_days(today - days).unwrap().to_string()
}

/// A household of Pasto linked to Unidos: a mother with her cédula and a daughter of about ten
/// who went from the registro civil to the tarjeta de identidad (one NUIP), no IPM deprivation.
fn profile(ipm: &[String]) -> Value {
    let born = days_ago(10 * 365 + 40);
    let ti_from = days_ago(3 * 365);
    json!({
        "household_id": HOUSEHOLD,
        "municipality": "52001",
        "zone": "urban",
        "sisben_group": "A2",
        "programmes": ["UNIDOS"],
        "members": [
            {"member_id": "M1", "birth_date": "1985-01-01", "sex": "F",
             "documents": [{"type": "CC", "number": "27123456", "from": "2003-02-01"}]},
            {"member_id": "M2", "birth_date": born, "sex": "F",
             "documents": [{"type": "RC", "number": "1085123456", "from": born},
                           {"type": "TI", "number": "1085123456", "from": ti_from}]}
        ],
        "figures": {"extreme_poverty_line": 227220},
        "ipm_deprivations": ipm.iter().map(|i| (i.clone(), json!(false))).collect::<serde_json::Map<_, _>>(),
    })
}

fn evidence(id: &str, source: &str, subject: &str, on: &str, items: Value) -> Value {
    json!({
        "household_id": HOUSEHOLD,
        "evidence_id": id,
        "source": source,
        "subject": subject,
        "recorded_on": on,
        "recorded_by": format!("{source}-recorder-1"),
        "items": items,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unidos_household_through_the_three_adapters_to_its_exit() {
    let mut stack = Stack::new("unidos");
    let rules = repo_root().join("rules/unidos-2021.toml");
    stack.extra_env.insert(
        "PONTE__RECONCILER__ACHIEVEMENT_RULES_FILE".into(),
        rules.display().to_string(),
    );
    let ipm: Vec<String> = ponte_domain::achievements::AchievementRuleSet::from_toml_str(
        "unidos-2021.toml",
        &std::fs::read_to_string(&rules).unwrap(),
    )
    .unwrap()
    .exit
    .ipm
    .unwrap()
    .indicators
    .into_iter()
    .map(|i| i.id)
    .collect();

    let (ok, out, err) = stack.ponte(&["topics", "ensure"]);
    assert!(ok.success(), "{out}{err}");
    let mut services: Vec<_> = [
        "assistance-adapter",
        "education-adapter",
        "health-adapter",
        "reconciler",
    ]
    .into_iter()
    .map(|s| stack.spawn(s))
    .collect();
    for s in &mut services {
        wait_ready(s).await;
    }

    // The characterisation visit: an earth floor and an income below the extreme poverty line.
    let first = days_ago(200);
    stack
        .post(
            "assistance-adapter",
            "/v1/household-profiles",
            json!([profile(&ipm)]),
        )
        .await;
    stack
        .post(
            "assistance-adapter",
            "/v1/household-evidence",
            json!([
                evidence(
                    "V1",
                    "visit",
                    "household",
                    &first,
                    json!({
                    "per_capita_income": 120000, "aqueduct_connection": true,
                    "sewer_connection": true, "floor_material": "earth",
                    "walls_adequate_urban": true, "persons_per_sleeping_room": 2.0})
                ),
                evidence(
                    "V2",
                    "visit",
                    MOTHER,
                    &first,
                    json!({
                    "reads_and_writes": true, "occupation": "day_labourer",
                    "health_affiliation_regime": "subsidiado"})
                ),
                evidence(
                    "V3",
                    "visit",
                    DAUGHTER,
                    &first,
                    json!({
                    "attends_school": "attends", "main_activity_last_week": "studying",
                    "health_affiliation_regime": "subsidiado"})
                ),
            ]),
        )
        .await;
    let before = stack
        .household_where(HOUSEHOLD, "the household after its first visit", |h| {
            h.sources.len() == 4
        })
        .await;
    assert_eq!(before.municipality, "52001");
    assert_eq!(before.members, [MOTHER, DAUGHTER]);
    assert_eq!(
        achievement_state(&before, "L21"),
        AchievementState::AchievementNotReached
    );
    let exit = before.exit.as_ref().unwrap();
    assert!(!exit.may_leave);
    assert!(
        exit.criteria
            .iter()
            .any(|c| c.criterion == "income" && c.state == CriterionState::CriterionNotMet as i32),
        "{exit:?}"
    );

    // The school and health sectors, then the follow-up visit: the floor fixed, the income above
    // the line.
    stack
        .post(
            "education-adapter",
            "/v1/household-evidence",
            json!([evidence(
                "SIMAT-1",
                "education",
                DAUGHTER,
                &days_ago(100),
                json!({"enrolled_current_year": true})
            )]),
        )
        .await;
    stack
        .post(
            "health-adapter",
            "/v1/household-evidence",
            json!([
                evidence(
                    "ADRES-1",
                    "health",
                    MOTHER,
                    &days_ago(60),
                    json!({"health_affiliation_regime": "subsidiado"})
                ),
                evidence(
                    "ADRES-2",
                    "health",
                    DAUGHTER,
                    &days_ago(60),
                    json!({"health_affiliation_regime": "subsidiado"})
                ),
            ]),
        )
        .await;
    stack
        .post(
            "assistance-adapter",
            "/v1/household-evidence",
            json!([evidence(
                "V4",
                "visit",
                "household",
                &days_ago(20),
                json!({
                "floor_material": "other_than_earth", "per_capita_income": 240000})
            )]),
        )
        .await;
    let after = stack
        .household_where(HOUSEHOLD, "the household ready to leave", |h| {
            h.exit.as_ref().is_some_and(|e| e.may_leave)
        })
        .await;
    assert_eq!(
        achievement_state(&after, "L21"),
        AchievementState::AchievementReached
    );
    assert!(after.view_version > before.view_version);
    let systems: std::collections::BTreeSet<&str> = after
        .sources
        .iter()
        .map(|s| s.source_system.as_str())
        .collect();
    assert_eq!(
        systems.len(),
        3,
        "records of the three adapters: {systems:?}"
    );
    // The enrolment the education adapter brought is the evidence of an achievement.
    assert!(
        after.achievements.iter().any(|a| a
            .members
            .iter()
            .any(|m| m.evidence.as_ref().is_some_and(|e| e.source == "education"))),
        "no achievement rests on the education sector's record"
    );

    // The municipality's indicators count it.
    let mut c = stack.grpc().await.unwrap();
    let ind = c
        .get_household_indicators(GetHouseholdIndicatorsRequest {
            municipality: "52001".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ind.households, ind.may_leave), (1, 1));
    assert!(ind.dimensions.iter().any(|d| d.reached > 0));
    // A malformed DIVIPOLA code is refused naming the field.
    let err = c
        .get_household_indicators(GetHouseholdIndicatorsRequest {
            municipality: "5201".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("municipality"), "{}", err.message());

    // The change topic holds the same view under the household's key.
    let changes = read_topic_to_end(
        &stack.topic("compliance.changes.v1"),
        Duration::from_secs(30),
    );
    let key = format!("household:{HOUSEHOLD}");
    let latest = changes
        .iter()
        .rev()
        .find(|(k, _)| k == key.as_bytes())
        .map(|(_, v)| ComplianceChange::decode(v.as_slice()).unwrap())
        .expect("the household on the change topic");
    match latest.view {
        Some(View::Household(h)) => {
            assert!(h.exit.as_ref().unwrap().may_leave);
            // The reconciler owns every partition: the household and its municipality's
            // indicators are read from its state, the view as published.
            assert_eq!(
                h, after,
                "the view read from the state is the one published"
            );
        }
        other => panic!("{other:?}"),
    }
    let admin = stack.admin_port("reconciler");
    for view in ["household", "household_indicators"] {
        let from_state = metric(
            admin,
            "ponte_reconciler_view_reads_total",
            &[("view", view), ("from", "state")],
        )
        .await;
        assert!(
            from_state > 0.0,
            "{view} reads from the state: {from_state}"
        );
    }
}
