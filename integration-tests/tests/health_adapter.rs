//! The health adapter as a real process against the real broker: FHIR bundles (the FHIR R4
//! sample resources among them) answered with an OperationOutcome, records on
//! `health.records.v1` keyed by the CNS or CPF they arrived with, bad entries dead-lettered with
//! their bytes, re-sent bundles mapping to the same ids and versions, the simple JSON form, the
//! request size limit, 503 without a broker, and pull mode against a FHIR server started here
//! (the outside system), surviving a restart without skipping or re-publishing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ponte_integration_tests::{Stack, eventually, read_topic, repo_root, wait_ready};
use ponte_proto::events::v1::{DeadLetter, Event, HealthFollowUp, event::Record, health_follow_up};
use prost::Message as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const SERVICE: &str = "health-adapter";
const CNS: &str = "268276499600008"; // derived from NIS 26827649960 (ponte-domain CNS vectors)
const CPF: &str = "52998224725";

fn sample(name: &str) -> String {
    std::fs::read_to_string(
        repo_root()
            .join("crates/ponte-adapter-health/tests/data/fhir")
            .join(name),
    )
    .unwrap()
}

fn patient_with_cns() -> Value {
    let mut p: Value = serde_json::from_str(&sample("patient-example.json")).unwrap();
    p["identifier"].as_array_mut().unwrap().push(json!({
        "system": "http://rnds.saude.gov.br/fhir/r4/NamingSystem/cns", "value": CNS
    }));
    p
}

fn bundle(kind: &str, entries: &[String]) -> String {
    format!(
        r#"{{"resourceType":"Bundle","type":"{kind}","entry":[{}]}}"#,
        entries.join(",")
    )
}

fn entry(resource: &Value) -> String {
    json!({ "resource": resource }).to_string()
}

async fn post(stack: &Stack, path: &str, body: String) -> (u16, Value, Option<String>, String) {
    let resp = stack
        .client_for(SERVICE)
        .post(stack.url(SERVICE, path))
        .header("content-type", "application/fhir+json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = resp.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, value, retry, ctype)
}

fn ext(oo: &Value, name: &str) -> i64 {
    oo["extension"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["url"].as_str().unwrap().ends_with(name))
        .and_then(|e| e["valueInteger"].as_i64())
        .unwrap()
}

fn errors(oo: &Value) -> Vec<&Value> {
    oo["issue"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["severity"] == "error")
        .collect()
}

/// Reads the topic until at least `min` records are there (a fresh topic's metadata can lag
/// behind a busy broker, so an empty read is retried), or 60 s pass.
fn read_at_least(topic: &str, min: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = read_topic(topic, min, Duration::from_secs(5));
        if got.len() >= min || std::time::Instant::now() > deadline {
            return got;
        }
    }
}

fn events(stack: &Stack, min: usize) -> Vec<(String, Event)> {
    read_at_least(&stack.topic("health.records.v1"), min)
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8(k).unwrap(),
                Event::decode(v.as_slice()).unwrap(),
            )
        })
        .collect()
}

fn follow(e: &Event) -> &HealthFollowUp {
    match e.record.as_ref().unwrap() {
        Record::HealthFollowUp(f) => f,
        other => panic!("{other:?}"),
    }
}

fn letters(stack: &Stack, min: usize) -> Vec<DeadLetter> {
    read_at_least(&stack.topic("deadletter.v1"), min)
        .into_iter()
        .map(|(_, v)| DeadLetter::decode(v.as_slice()).unwrap())
        .collect()
}

async fn start(stack: &Stack) -> ponte_integration_tests::Service {
    let (status, out, err) = stack.ponte(&["topics", "ensure"]);
    assert!(status.success(), "topics ensure failed: {out}{err}");
    let mut adapter = stack.spawn(SERVICE);
    wait_ready(&mut adapter).await;
    adapter
}

#[tokio::test(flavor = "multi_thread")]
async fn fhir_bundles_are_published_by_cns_and_bad_entries_are_answered_and_dead_lettered() {
    let stack = Stack::new("health-fhir");
    let mut adapter = start(&stack).await;

    // The FHIR R4 samples with a CNS added to the patient, a potent dose, a weight that cannot
    // be a person's, and a resource Ponte does not use.
    let mut immunization: Value =
        serde_json::from_str(&sample("immunization-example.json")).unwrap();
    immunization["isSubpotent"] = json!(false);
    immunization["meta"]["versionId"] = json!("2");
    let observation: Value = serde_json::from_str(&sample("observation-example.json")).unwrap();
    let mut heavy = observation.clone();
    heavy["id"] = json!("heavy");
    heavy["valueQuantity"] =
        json!({"value": 900, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"});
    let bad_entry = entry(&heavy);
    let body = bundle(
        "batch",
        &[
            entry(&patient_with_cns()),
            entry(&immunization),
            entry(&observation),
            bad_entry.clone(),
            entry(&json!({"resourceType": "Practitioner", "id": "example"})),
        ],
    );
    let (code, oo, _, ctype) = post(&stack, "/fhir", body.clone()).await;
    assert_eq!(code, 200, "{oo}");
    assert_eq!(ctype, "application/fhir+json");
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(
        (
            ext(&oo, "accepted-count"),
            ext(&oo, "rejected-count"),
            ext(&oo, "ignored-count")
        ),
        (2, 1, 1)
    );
    let errs = errors(&oo);
    assert_eq!(errs.len(), 1, "{oo}");
    assert_eq!(
        errs[0]["expression"][0],
        "Bundle.entry[3].resource.valueQuantity"
    );
    let diag = errs[0]["diagnostics"].as_str().unwrap();
    assert!(
        diag.starts_with("entry 4 (Observation/heavy)") && diag.contains("plausible"),
        "{diag}"
    );

    // Records keyed by the CNS they arrived with — no NIS resolution in the adapter.
    let published = events(&stack, 2);
    assert_eq!(published.len(), 2);
    let ids: BTreeSet<(String, u64)> = published
        .iter()
        .map(|(_, e)| (e.record_id.clone(), e.version))
        .collect();
    assert_eq!(
        ids,
        [
            ("health:Immunization/example".to_owned(), 2),
            ("health:Observation/example".to_owned(), 1)
        ]
        .into()
    );
    for (key, e) in &published {
        assert_eq!(key, CNS);
        assert_eq!(
            follow(e).subject,
            Some(health_follow_up::Subject::Cns(CNS.into()))
        );
    }
    let weight = published
        .iter()
        .find(|(_, e)| e.record_id.ends_with("Observation/example"))
        .unwrap();
    assert_eq!(follow(&weight.1).weight_grams, Some(83_915)); // 185 [lb_av]
    assert_eq!(follow(&weight.1).semester, "2016-S1");
    let dose = published
        .iter()
        .find(|(_, e)| e.record_id.ends_with("Immunization/example"))
        .unwrap();
    assert_eq!(
        follow(&dose.1).vaccines,
        vec!["urn:oid:1.2.36.1.2001.1005.17|FLUVAX".to_owned()]
    );
    assert_eq!(
        follow(&dose.1).fhir_refs,
        vec!["Immunization/example/_history/2".to_owned()]
    );

    // The bad entry is a dead letter with its own bytes, its position and the reason.
    let dl = letters(&stack, 1);
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].original, bad_entry.as_bytes());
    assert_eq!(dl[0].position, "entry 4");
    assert_eq!(dl[0].field, "Observation.valueQuantity");
    assert_eq!(dl[0].content_type, "application/fhir+json");
    assert_eq!(dl[0].source_system, "health");

    // Re-sent: the same record ids and versions, so it is a no-op downstream.
    let (code, oo, _, _) = post(&stack, "/fhir/Bundle", body).await;
    assert_eq!(code, 200, "{oo}");
    let again = events(&stack, 4);
    assert_eq!(again.len(), 4);
    let again_ids: BTreeSet<(String, u64)> = again
        .iter()
        .map(|(_, e)| (e.record_id.clone(), e.version))
        .collect();
    assert_eq!(again_ids, ids);

    // The samples as they are: the patient has only an Australian MRN, so nothing is usable,
    // and every entry says why.
    let samples = bundle(
        "collection",
        &[
            entry(&serde_json::from_str(&sample("patient-example.json")).unwrap()),
            entry(&serde_json::from_str(&sample("immunization-example.json")).unwrap()),
            entry(&serde_json::from_str(&sample("observation-example.json")).unwrap()),
        ],
    );
    let (code, oo, _, _) = post(&stack, "/fhir", samples).await;
    assert_eq!(code, 422, "{oo}");
    let errs = errors(&oo);
    assert_eq!(errs.len(), 3, "{oo}");
    assert!(
        errs[0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("urn:oid:1.2.36.146.595.217.0.1")
    );
    assert!(
        errs[2]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("Patient/example (entry 1) has no usable identifier")
    );

    // A bare resource is not a bundle: 400, and the body is dead-lettered whole.
    let bare = sample("patient-example.json");
    let (code, oo, _, _) = post(&stack, "/fhir", bare.clone()).await;
    assert_eq!(code, 400, "{oo}");
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("expected a Bundle"),
        "{oo}"
    );
    let dl = letters(&stack, 6);
    assert_eq!(
        dl.len(),
        6,
        "the bad entry twice (sent, re-sent), 3 sample entries, the bare body"
    );
    assert!(
        dl.iter()
            .any(|d| d.position == "body" && d.original == bare.as_bytes())
    );

    assert!(
        adapter.terminate().success(),
        "log:\n{}",
        adapter.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_simple_json_form_and_the_size_limit() {
    let mut stack = Stack::new("health-json");
    stack.extra_env.insert(
        "PONTE__HEALTH_ADAPTER__MAX_BODY_BYTES".into(),
        "4096".into(),
    );
    let mut adapter = start(&stack).await;

    let body = json!([
        {"cpf": "529.982.247-25", "semester": "2025-S1", "encounter_date": "2025-03-10",
         "vaccination_up_to_date": true, "weight_kg": 14.2, "height_cm": 98.5, "version": 1},
        {"cns": "268276499600009", "semester": "2025-S1"}
    ])
    .to_string();
    let (code, answer, _, _) = post(&stack, "/v1/health", body).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["accepted"], 1);
    assert_eq!(answer["rejected"][0]["position"], "record 2");
    assert_eq!(answer["rejected"][0]["field"], "cns");
    let published = events(&stack, 1);
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].0, CPF);
    assert_eq!(
        published[0].1.record_id,
        format!("health:cpf:{CPF}:2025-S1")
    );
    let f = follow(&published[0].1);
    assert_eq!(
        (f.weight_grams, f.height_mm, f.vaccination_up_to_date),
        (Some(14_200), Some(985), Some(true))
    );

    // Over the limit: 413 with a clear answer in each route's own format.
    let big = bundle(
        "batch",
        &[entry(
            &json!({"resourceType": "Basic", "id": "x".repeat(5000)}),
        )],
    );
    let (code, oo, _, _) = post(&stack, "/fhir", big.clone()).await;
    assert_eq!(code, 413);
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(oo["issue"][0]["code"], "too-costly");
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("max_body_bytes")
    );
    let (code, answer, _, _) = post(&stack, "/v1/health", big).await;
    assert_eq!(code, 413);
    assert!(
        answer["error"].as_str().unwrap().contains("4096 bytes"),
        "{answer}"
    );

    assert!(
        adapter.terminate().success(),
        "log:\n{}",
        adapter.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_broker_the_health_adapter_answers_503_with_retry_after() {
    let mut stack = Stack::new("health-nobroker");
    let dead = ponte_integration_tests::free_port();
    stack.extra_env.insert(
        "PONTE__KAFKA__BOOTSTRAP_SERVERS".into(),
        format!("127.0.0.1:{dead}"),
    );
    stack
        .extra_env
        .insert("PONTE__KAFKA__MESSAGE_TIMEOUT_MS".into(), "2000".into());
    let mut adapter = stack.spawn(SERVICE);
    let ready = format!("http://127.0.0.1:{}/health/ready", adapter.admin_port());
    let status = eventually("the admin endpoint", Duration::from_secs(30), || async {
        reqwest::get(&ready).await.ok().map(|r| r.status().as_u16())
    })
    .await;
    assert_eq!(status, 503);
    adapter.assert_running();

    let body = bundle(
        "batch",
        &[
            entry(&patient_with_cns()),
            entry(&serde_json::from_str(&sample("observation-example.json")).unwrap()),
        ],
    );
    let (code, oo, retry, _) = post(&stack, "/fhir", body).await;
    assert_eq!(code, 503, "{oo}");
    assert_eq!(retry.as_deref(), Some("5"));
    assert_eq!(oo["issue"][0]["code"], "transient");
}

// ---------------------------------------------------------------------------------------------
// Pull mode against a FHIR server started by the test
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct FakeFhir {
    observations: Vec<Value>,
    requests: Vec<String>,
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// A minimal FHIR search endpoint over plain HTTP/1.1: `GET /fhir/<Type>?_lastUpdated=ge<t>`
/// answers a searchset of the Observations updated at or after `t` (UTC instants compare as
/// strings), and an empty searchset for other types.
async fn serve_fhir(state: Arc<Mutex<FakeFhir>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                break;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                let ge = query
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(k, _)| *k == "_lastUpdated")
                    .map(|(_, v)| percent_decode(v).trim_start_matches("ge").to_owned());
                let entries: Vec<Value> = {
                    let mut s = state.lock().unwrap();
                    s.requests.push(target.clone());
                    if path.ends_with("/Observation") {
                        let mut hits: Vec<Value> = s
                            .observations
                            .iter()
                            .filter(|o| {
                                let t = o["meta"]["lastUpdated"].as_str().unwrap();
                                ge.as_deref().is_none_or(|g| t >= g)
                            })
                            .cloned()
                            .collect();
                        hits.sort_by(|a, b| {
                            a["meta"]["lastUpdated"]
                                .as_str()
                                .cmp(&b["meta"]["lastUpdated"].as_str())
                        });
                        hits.into_iter()
                            .map(|o| json!({"resource": o, "search": {"mode": "match"}}))
                            .collect()
                    } else {
                        Vec::new()
                    }
                };
                let body = json!({"resourceType": "Bundle", "type": "searchset", "entry": entries})
                    .to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    format!("http://{addr}/fhir")
}

fn weight(id: &str, grams: u32, last_updated: &str) -> Value {
    json!({
        "resourceType": "Observation", "id": id, "status": "final",
        "meta": {"versionId": "1", "lastUpdated": last_updated},
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"identifier": {"system": "http://rnds.saude.gov.br/fhir/r4/NamingSystem/cpf", "value": CPF}},
        "effectiveDateTime": "2025-03-01",
        "valueQuantity": {"value": grams, "system": "http://unitsofmeasure.org", "code": "g"}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_mode_polls_a_fhir_server_and_resumes_from_its_watermark() {
    let fhir = Arc::new(Mutex::new(FakeFhir::default()));
    fhir.lock().unwrap().observations = vec![
        weight("w1", 10_000, "2025-03-01T10:00:00Z"),
        weight("w2", 11_000, "2025-03-01T11:00:00Z"),
        weight("w3", 12_000, "2025-03-01T12:00:00Z"),
    ];
    let base = serve_fhir(fhir.clone()).await;
    let mut stack = Stack::new("health-pull");
    let wm = stack.dir.path().join("pull-watermark.json");
    for (k, v) in [
        ("PONTE__HEALTH_ADAPTER__PULL__BASE_URL", base.clone()),
        ("PONTE__HEALTH_ADAPTER__PULL__INTERVAL_SECS", "1".to_owned()),
        (
            "PONTE__HEALTH_ADAPTER__PULL__WATERMARK_FILE",
            wm.display().to_string(),
        ),
    ] {
        stack.extra_env.insert(k.into(), v);
    }
    let mut adapter = start(&stack).await;

    let first = events(&stack, 3);
    assert_eq!(first.len(), 3, "log:\n{}", adapter.log_text());
    assert!(first.iter().all(|(k, _)| k == CPF));
    eventually("the watermark file", Duration::from_secs(20), || async {
        std::fs::read_to_string(&wm)
            .ok()
            .filter(|s| s.contains("2025-03-01T12:00:00Z"))
    })
    .await;

    // Restart: a few polling cycles later nothing was published again.
    assert!(
        adapter.terminate().success(),
        "log:\n{}",
        adapter.log_text()
    );
    let seen = fhir.lock().unwrap().requests.len();
    adapter.restart();
    wait_ready(&mut adapter).await;
    eventually(
        "two more polling cycles",
        Duration::from_secs(30),
        || async { (fhir.lock().unwrap().requests.len() >= seen + 6).then_some(()) },
    )
    .await;
    assert_eq!(events(&stack, 3).len(), 3, "a restart must not re-publish");
    let last = fhir
        .lock()
        .unwrap()
        .requests
        .iter()
        .rev()
        .find(|r| r.starts_with("/fhir/Observation"))
        .cloned()
        .unwrap();
    assert!(last.contains("_lastUpdated=ge2025-03-01T12"), "{last}");

    // A resource updated in the watermark's very instant, and a later one, both arrive once.
    fhir.lock()
        .unwrap()
        .observations
        .push(weight("w4", 13_000, "2025-03-01T12:00:00Z"));
    fhir.lock()
        .unwrap()
        .observations
        .push(weight("w5", 14_000, "2025-03-02T08:00:00Z"));
    let all = eventually("the new resources", Duration::from_secs(30), || async {
        let e = events(&stack, 5);
        (e.len() >= 5).then_some(e)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all_after = events(&stack, 5);
    assert_eq!(
        all_after.len(),
        5,
        "{:?}",
        all.iter().map(|(_, e)| &e.record_id).collect::<Vec<_>>()
    );
    let ids: BTreeSet<String> = all_after.iter().map(|(_, e)| e.record_id.clone()).collect();
    assert_eq!(ids.len(), 5);
    assert!(ids.contains("health:Observation/w4") && ids.contains("health:Observation/w5"));

    assert!(
        adapter.terminate().success(),
        "log:\n{}",
        adapter.log_text()
    );
}
