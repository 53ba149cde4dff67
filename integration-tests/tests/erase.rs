//! `ponte erase` (issue 16, LGPD), through real processes on the real broker: a child of a
//! family with a non-compliance, a health record under their CNS and an appeal naming them is
//! erased by the operator. Afterwards the child answers NOT_FOUND, the family's view goes on
//! with the mother only; after forced compaction (small segments and no tombstone retention on
//! the compacted topics, traffic of other persons rolling the segments) no key or value of the
//! view topic or the reconciler's changelog holds the child's NIS or CNS, nor does any entry of
//! the reconciler's state or read store. A sector system may not order an erasure (403), and
//! the audit log keeps the act — who ordered it, in which request — and the refusal, never the
//! NIS in clear.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ponte_audit::SubjectKey;
use ponte_integration_tests::{
    Stack, audit_keys, eventually, identity, read_topic_to_end, valid_nis, wait_ready,
};
use ponte_proto::audit::v1::{AuditEntry, audit_entry::Body};
use ponte_proto::compliance::v1::{GetFamilyRequest, GetPersonRequest};
use prost::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use serde_json::json;

const CHILD: &str = "26827649960"; // docs/rules.md#test-vectors
const MOTHER: &str = "46952280637";
const CHILD_CNS: &str = "700000000000005";
const FAMILY: &str = "1234567890";

/// Makes a compacted topic compact at once: segments rolled every second, any dirty share
/// cleanable, tombstones dropped by the next cleaning (the catalogue keeps them a day).
async fn compact_eagerly(topic: &str) {
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", ponte_integration_tests::broker())
        .create()
        .unwrap();
    let config = AlterConfig::new(ResourceSpecifier::Topic(topic))
        .set("cleanup.policy", "compact")
        .set("segment.ms", "1000")
        .set("min.cleanable.dirty.ratio", "0.01")
        .set("min.compaction.lag.ms", "0")
        .set("max.compaction.lag.ms", "1000")
        .set("delete.retention.ms", "0");
    let altered = admin
        .alter_configs([&config], &AdminOptions::new())
        .await
        .unwrap();
    assert!(altered.iter().all(Result::is_ok), "{topic}: {altered:?}");
}

fn holds(bytes: &[u8], needle: &str) -> bool {
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The keys (as text) of `topic`'s records whose key or value holds `needle`.
fn records_holding(topic: &str, needle: &str) -> Vec<String> {
    read_topic_to_end(topic, Duration::from_secs(20))
        .into_iter()
        .filter(|(k, v)| holds(k, needle) || holds(v, needle))
        .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_erased_person_is_gone_from_views_topics_and_stores_and_the_act_is_audited() {
    // Every service records its writes, reads and refusals with the harness' audit keys.
    let stack = Stack::new("erase");
    let (ok, out, err) = stack.ponte(&["topics", "ensure"]);
    assert!(ok.success(), "{out}{err}");
    let mut services: Vec<_> = [
        "education-adapter",
        "health-adapter",
        "assistance-adapter",
        "reconciler",
    ]
    .into_iter()
    .map(|s| stack.spawn(s))
    .collect();
    for s in &mut services {
        wait_ready(s).await;
    }
    let changes = stack.topic("compliance.changes.v1");
    let changelog = format!(
        "{}reconciler.{}reconciler.changelog.v1",
        stack.prefix, stack.prefix
    );
    compact_eagerly(&changes).await;
    compact_eagerly(&changelog).await;

    // The family: a child with a CNS and a low-attendance bimester, the mother; a health
    // record under the child's CNS, an appeal naming the child.
    stack.post("assistance-adapter",
        "/v1/persons",
        json!([
            {"nis": CHILD, "family_id": FAMILY, "birth_date": "2015-01-15", "sex": "F",
             "municipality": "3550308", "cns": [CHILD_CNS], "memberships": ["PBF"], "version": 1},
            {"nis": MOTHER, "family_id": FAMILY, "birth_date": "1985-06-01", "sex": "F",
             "municipality": "3550308", "memberships": ["PBF"], "version": 1}
        ]),
    )
    .await;
    stack
        .post(
            "education-adapter",
            "/v1/attendance",
            json!({"nis": CHILD, "inep_school_code": "35012345", "month": "2025-04", "unit": "days",
               "given": 20, "attended": 10, "low_attendance_reason": "62", "version": 1}),
        )
        .await;
    stack
        .post(
            "health-adapter",
            "/v1/health",
            json!({"cns": CHILD_CNS, "encounter_date": "2025-03-10", "vaccination_up_to_date": true,
               "weight_kg": 30.5, "height_cm": 131.0, "version": 1}),
        )
        .await;
    stack
        .post(
            "assistance-adapter",
            "/v1/appeals",
            json!({"family_id": FAMILY, "appeal_id": "R-2025-9", "period": "2025-B2", "nis": CHILD,
               "conditionality": "education", "filed_on": "2025-07-01", "decision": "REJECTED",
               "decided_on": "2025-07-20", "version": 1}),
        )
        .await;
    let grpc = || async { stack.grpc().await.ok() };
    eventually(
        "the child's health record and the family's non-compliance",
        Duration::from_secs(60),
        || async {
            let mut c = grpc().await?;
            let p = c
                .get_person(GetPersonRequest { nis: CHILD.into() })
                .await
                .ok()?
                .into_inner()
                .person?;
            let f = c
                .get_family(GetFamilyRequest {
                    family_id: FAMILY.into(),
                })
                .await
                .ok()?
                .into_inner()
                .family?;
            (p.health_records.len() == 1
                && f.members.len() == 2
                && !f.non_compliant_periods.is_empty()
                && f.sources.iter().any(|s| s.record_id.contains("R-2025-9")))
            .then_some(())
        },
    )
    .await;

    // A sector system may not order an erasure; the operator may.
    let url = stack.url("assistance-adapter", "/v1/erasures");
    let as_principal = |name: &str| {
        let (cert, key) = identity(name);
        vec![
            ("PONTE_CLIENT_CERT", cert.display().to_string()),
            ("PONTE_CLIENT_KEY", key.display().to_string()),
        ]
    };
    let args = [
        "erase",
        CHILD,
        "--reference",
        "SIC-2026-0042",
        "--url",
        &url,
    ];
    let (status, out, err) = stack.ponte_with(&args, &as_principal("assistance"));
    assert!(!status.success() && out.contains("403"), "{out}{err}");
    let (status, out, err) = stack.ponte_with(&args, &as_principal("operator"));
    assert!(status.success(), "{out}{err}");
    let request_id = out
        .lines()
        .find_map(|l| l.strip_prefix("request    "))
        .unwrap_or_else(|| panic!("no request id in {out}"))
        .to_owned();

    // The child answers NOT_FOUND; the family goes on without them or the appeal naming them.
    eventually(
        "the child gone from the view",
        Duration::from_secs(60),
        || async {
            let mut c = grpc().await?;
            let e = c
                .get_person(GetPersonRequest { nis: CHILD.into() })
                .await
                .err()?;
            (e.code() == tonic::Code::NotFound).then_some(())
        },
    )
    .await;
    let family = eventually(
        "the family without the child",
        Duration::from_secs(60),
        || async {
            let mut c = grpc().await?;
            let f = c
                .get_family(GetFamilyRequest {
                    family_id: FAMILY.into(),
                })
                .await
                .ok()?
                .into_inner()
                .family?;
            (f.members == vec![MOTHER.to_owned()]).then_some(f)
        },
    )
    .await;
    assert!(!holds(&family.encode_to_vec(), CHILD), "{family:?}");
    assert!(family.non_compliant_periods.is_empty(), "{family:?}");

    // Compaction: other persons' records roll the segments; within two minutes nothing on the
    // compacted topics holds the child's NIS or CNS — the view's tombstone included.
    let mut round = 0u64;
    let left = eventually(
        "the compacted topics without the child",
        Duration::from_secs(180),
        || {
            round += 1;
            let batch: Vec<serde_json::Value> = (0..6)
                .map(|i| {
                    json!({"nis": valid_nis(5_000 + round * 10 + i), "inep_school_code": "35012345",
                           "month": "2025-04", "unit": "days", "given": 20, "attended": 19,
                           "version": 1})
                })
                .collect();
            let stack = &stack;
            let (changes, changelog) = (changes.clone(), changelog.clone());
            async move {
                stack
                    .post("education-adapter", "/v1/attendance", json!(batch))
                    .await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let left: Vec<String> = [&changes, &changelog]
                    .into_iter()
                    .flat_map(|t| {
                        let mut l = records_holding(t, CHILD);
                        l.extend(records_holding(t, CHILD_CNS));
                        l
                    })
                    .collect();
                if !left.is_empty() && round.is_multiple_of(10) {
                    eprintln!("round {round}: still holding the child: {left:?}");
                }
                left.is_empty().then_some(left)
            }
        },
    )
    .await;
    assert!(left.is_empty());
    // The mother is still there, on both topics.
    assert!(!records_holding(&changes, MOTHER).is_empty());
    assert!(!records_holding(&changelog, MOTHER).is_empty());

    // Nor in the reconciler's stores, once it has stopped.
    let mut reconciler = services.pop().unwrap();
    assert!(
        reconciler.terminate().success(),
        "{}",
        reconciler.log_text()
    );
    let state_dir = stack.dir.path().join("reconciler");
    assert!(
        !state_dir.join("read").exists(),
        "no read model: every view is computed from the state"
    );
    let s = ponte_store::Store::open(state_dir.join("state"), ponte_store::Durability::Process)
        .unwrap();
    let all = s.scan_prefix(b"").unwrap();
    assert!(!all.is_empty(), "the state store is empty");
    let holding: Vec<String> = all
        .iter()
        .filter(|(k, v)| {
            holds(k, CHILD) || holds(v, CHILD) || holds(k, CHILD_CNS) || holds(v, CHILD_CNS)
        })
        .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert_eq!(holding, Vec::<String>::new(), "the state store");
    assert!(
        reconciler.log_text().contains("erasure applied"),
        "{}",
        reconciler.log_text()
    );
    assert!(
        !reconciler.log_text().contains(CHILD),
        "the log masks the NIS"
    );

    // The audit log keeps the act and the refusal, not the person.
    for s in &mut services {
        s.terminate();
    }
    let audit = stack.topic("audit.v1");
    let entries: Vec<AuditEntry> = read_topic_to_end(&audit, Duration::from_secs(20))
        .into_iter()
        .map(|(_, v)| {
            assert!(!holds(&v, CHILD), "a NIS in clear in the audit log");
            AuditEntry::decode(v.as_slice()).unwrap()
        })
        .collect();
    let secret = std::fs::read(&audit_keys().subject_key_file).unwrap();
    let subjects = SubjectKey::new(&secret).unwrap();
    let erasure_id = subjects.hash("record", &format!("operator:erasure:{CHILD}"));
    let acts: Vec<_> = entries
        .iter()
        .filter_map(|e| match &e.body {
            Some(Body::Write(w)) if w.endpoint == "POST /v1/erasures" => Some(w),
            _ => None,
        })
        .collect();
    assert_eq!(acts.len(), 1, "{entries:?}");
    assert_eq!(acts[0].principal, "urn:ponte:principal:operator");
    assert_eq!(acts[0].request_id, request_id);
    assert_eq!(acts[0].record_ids, vec![erasure_id]);
    assert!(
        entries.iter().any(|e| matches!(&e.body,
            Some(Body::Refusal(r)) if r.principal == "urn:ponte:principal:assistance"
                && r.endpoint == "POST /v1/erasures" && r.reason == "forbidden")),
        "{entries:?}"
    );
    let (status, out, err) = stack.ponte(&[
        "audit",
        "trace",
        &format!("operator:erasure:{CHILD}"),
        "--topic",
        &audit,
    ]);
    assert!(status.success(), "{out}{err}");
    assert!(
        out.contains(&format!(
            "sent by urn:ponte:principal:operator to POST /v1/erasures in request {request_id}"
        )),
        "{out}"
    );
}
