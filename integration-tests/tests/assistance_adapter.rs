//! The assistance adapter as a real process against the real broker: every record kind lands
//! on its topic with its key and its stable record id, invalid records are answered with their
//! position, field and reason and land on the dead-letter topic with their original bytes, a
//! CSV upload larger than one publishing chunk is streamed whole, size limits answer 413, and
//! an unreachable broker gives 503 + Retry-After and an unready adapter.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use ponte_integration_tests::{Stack, free_port, metric, read_topic, wait_ready};
use ponte_proto::events::v1::event::Record;
use ponte_proto::events::v1::{DeadLetter, Event};
use prost::Message as _;
use serde_json::{Value, json};

const SERVICE: &str = "assistance-adapter";
// Valid vectors from docs/rules.md#test-vectors (NIS check digit) and the IBGE code of São Paulo.
const NIS: &str = "26827649960";
const NIS2: &str = "46952280637";
const IBGE: &str = "3550308";

struct Reply {
    status: u16,
    body: Value,
    retry_after: Option<String>,
}

async fn post(stack: &Stack, path: &str, content_type: &str, body: impl Into<Vec<u8>>) -> Reply {
    let resp = stack
        .client_for(SERVICE)
        .post(stack.url(SERVICE, path))
        .header("content-type", content_type)
        .body(body.into())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    Reply {
        status,
        body,
        retry_after,
    }
}

/// Events of a topic by record id, with their Kafka key.
fn events(stack: &Stack, base: &str, min: usize) -> BTreeMap<String, (String, Event)> {
    read_topic(&stack.topic(base), min, Duration::from_secs(20))
        .into_iter()
        .map(|(key, payload)| {
            let e = Event::decode(payload.as_slice()).unwrap();
            (e.record_id.clone(), (String::from_utf8(key).unwrap(), e))
        })
        .collect()
}

/// NIS with its check digit (docs/rules.md#identifiers: weights 3,2,9,8,7,6,5,4,3,2; 10 and 11
/// become 0).
fn nis_from(body: u64) -> String {
    let body = format!("{body:010}");
    let weights = [3, 2, 9, 8, 7, 6, 5, 4, 3, 2];
    let sum: u32 = body
        .bytes()
        .zip(weights)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    let dv = match 11 - sum % 11 {
        10 | 11 => 0,
        d => d,
    };
    format!("{body}{dv}")
}

#[test]
fn the_test_nis_generator_matches_the_domain_vectors() {
    assert_eq!(nis_from(2_682_764_996), NIS);
    assert_eq!(nis_from(4_695_228_063), NIS2);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_record_kind_lands_on_its_topic_with_its_key_and_bad_records_are_dead_lettered() {
    let mut stack = Stack::new("assist");
    stack.extra_env.insert(
        "PONTE__ASSISTANCE_ADAPTER__MAX_BODY_BYTES".into(),
        "65536".into(),
    );
    stack.extra_env.insert(
        "PONTE__ASSISTANCE_ADAPTER__MAX_CSV_BYTES".into(),
        "100000".into(),
    );
    stack.extra_env.insert(
        "PONTE__ASSISTANCE_ADAPTER__CSV_CHUNK_RECORDS".into(),
        "1000".into(),
    );
    let (status, out, err) = stack.ponte(&["topics", "ensure"]);
    assert!(status.success(), "topics ensure failed: {out}{err}");
    let mut adapter = stack.spawn(SERVICE);
    wait_ready(&mut adapter).await;
    let mut dead: Vec<(&str, Vec<u8>, &str)> = Vec::new(); // (position, original, field)

    // Registry profiles as a JSON batch: one valid, one with a bad NIS check digit.
    let good_profile = json!({"nis": "268.27649.96-0", "family_id": "1234567890",
        "birth_date": "2014-03-09", "sex": "F", "municipality": IBGE, "peti": true,
        "cns": ["700000000000005"], "cpf": "529.982.247-25", "version": 2})
    .to_string();
    let bad_profile = good_profile.replace("268.27649.96-0", "26827649961");
    let r = post(
        &stack,
        "/v1/persons",
        "application/json",
        format!("[{good_profile},{bad_profile}]"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["accepted"], 1);
    assert_eq!(r.body["rejected"][0]["position"], "record 2");
    assert_eq!(r.body["rejected"][0]["field"], "nis");
    dead.push(("record 2", bad_profile.clone().into_bytes(), "nis"));

    // Registry profiles as CSV (`;`-delimited, CRLF): two valid rows, one bad IBGE code.
    let csv = format!(
        "nis;family_id;birth_date;sex;municipality;pregnant;expected_delivery_date;memberships\r\n\
         {NIS2};555;1999-01-02;F;{IBGE};S;2026-03-01;\r\n\
         {};555;2012-06-30;M;{IBGE};N;;PETI|PBF\r\n\
         {};555;2012-06-30;M;3550307;N;;\r\n",
        nis_from(1_000_000_001),
        nis_from(1_000_000_002),
    );
    let bad_line = csv
        .lines()
        .nth(3)
        .unwrap()
        .trim_end_matches('\r')
        .to_owned();
    let r = post(
        &stack,
        "/v1/persons",
        "text/csv; charset=utf-8",
        csv.clone(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["accepted"], 2);
    assert_eq!(r.body["rejected_total"], 1);
    assert_eq!(r.body["lines"], 4);
    assert_eq!(r.body["rejected"][0]["position"], "line 4");
    assert_eq!(r.body["rejected"][0]["field"], "municipality");
    dead.push(("line 4", bad_line.into_bytes(), "municipality"));

    // SCFV attendance: one valid month, one with more hours attended than offered (422).
    let scfv = json!({"nis": NIS, "month": "2025-04", "hours_offered": 40,
        "hours_attended": 30, "low_attendance_reason": "7"})
    .to_string();
    let r = post(&stack, "/v1/scfv-attendance", "application/json", scfv).await;
    assert_eq!(
        (r.status, &r.body["accepted"]),
        (200, &json!(1)),
        "{}",
        r.body
    );
    let bad_scfv =
        json!({"nis": NIS, "month": "2025-05", "hours_offered": 40, "hours_attended": 41})
            .to_string();
    let r = post(
        &stack,
        "/v1/scfv-attendance",
        "application/json",
        bad_scfv.clone(),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["rejected"][0]["position"], "body");
    assert_eq!(r.body["rejected"][0]["field"], "hours_attended");
    dead.push(("body", bad_scfv.into_bytes(), "hours_attended"));

    // Family follow-up with an interruption of effects.
    let follow_up = json!({"family_id": "1234567890", "follow_up_id": "CRAS-77",
        "opened_on": "2025-03-10", "interruption_requested_on": "2025-04-02",
        "municipality": IBGE})
    .to_string();
    let r = post(
        &stack,
        "/v1/family-follow-ups",
        "application/json",
        follow_up,
    )
    .await;
    assert_eq!(
        (r.status, &r.body["accepted"]),
        (200, &json!(1)),
        "{}",
        r.body
    );

    // An appeal decided, and one with a decision outside the allowed set.
    let appeal = json!({"family_id": "1234567890", "period": "2025-B2", "nis": NIS,
        "conditionality": "assistance", "filed_on": "2025-07-01", "decision": "ACCEPTED",
        "decided_on": "2025-07-20", "version": 2})
    .to_string();
    let bad_appeal = appeal.replace("ACCEPTED", "GRANTED");
    let r = post(
        &stack,
        "/v1/appeals",
        "application/json",
        format!("[{appeal},{bad_appeal}]"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["rejected"][0]["field"], "decision");
    dead.push(("record 2", bad_appeal.into_bytes(), "decision"));

    // A body that is not JSON: 400, dead-lettered whole.
    let r = post(&stack, "/v1/appeals", "application/json", "{not json").await;
    assert_eq!(r.status, 400, "{}", r.body);
    dead.push(("body", b"{not json".to_vec(), "record"));

    // CSV where only JSON is taken: 415, nothing stored.
    let r = post(&stack, "/v1/appeals", "text/csv", "family_id\n1\n").await;
    assert_eq!(r.status, 415, "{}", r.body);

    // Size limits: 413 with a message naming the setting; nothing stored.
    let big = format!("[{}]", vec![good_profile.as_str(); 400].join(","));
    assert!(big.len() > 65536);
    let r = post(&stack, "/v1/persons", "application/json", big).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(
        r.body["error"].as_str().unwrap().contains("max_body_bytes"),
        "{}",
        r.body
    );
    let r = post(&stack, "/v1/persons", "text/csv", vec![b'x'; 100_001]).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(
        r.body["error"].as_str().unwrap().contains("max_csv_bytes"),
        "{}",
        r.body
    );

    // Each kind on its topic, keyed by NIS or family id, with its stable record id.
    let persons = events(&stack, "registry.persons.v1", 3);
    assert_eq!(persons.len(), 3, "{persons:?}");
    let (key, e) = &persons["assistance:person:26827649960"];
    assert_eq!(key, NIS);
    assert_eq!(e.version, 2);
    let Some(Record::PersonProfile(p)) = &e.record else {
        panic!("{e:?}")
    };
    assert_eq!((p.family_id.as_str(), p.sex.as_str()), ("1234567890", "F"));
    assert_eq!(p.memberships, ["PETI"]);
    assert_eq!(p.cns, ["700000000000005"]);
    let (key, e) = &persons[&format!("assistance:person:{NIS2}")];
    assert_eq!(key, NIS2);
    let Some(Record::PersonProfile(p)) = &e.record else {
        panic!("{e:?}")
    };
    assert!(p.pregnant);
    assert_eq!(p.expected_delivery_date, "2026-03-01");
    let child = nis_from(1_000_000_001);
    let Some(Record::PersonProfile(p)) = &persons[&format!("assistance:person:{child}")].1.record
    else {
        panic!()
    };
    assert_eq!(p.memberships, ["PBF", "PETI"]);

    let person = events(&stack, "assistance.person.v1", 1);
    assert_eq!(person.len(), 1, "{person:?}");
    let (key, e) = &person["assistance:scfv:26827649960:2025-04"];
    assert_eq!(key, NIS);
    let Some(Record::ScfvAttendance(a)) = &e.record else {
        panic!("{e:?}")
    };
    assert_eq!((a.hours_offered, a.hours_attended), (40, 30));

    let family = events(&stack, "assistance.family.v1", 2);
    assert_eq!(family.len(), 2, "{family:?}");
    let (key, e) = &family["assistance:follow-up:1234567890:CRAS-77"];
    assert_eq!(key, "1234567890");
    let Some(Record::FamilyFollowUp(f)) = &e.record else {
        panic!("{e:?}")
    };
    assert!(f.interrupt_effects);
    assert_eq!(f.interruption_requested_on, "2025-04-02");
    let (key, e) = &family["assistance:appeal:1234567890:2025-B2:26827649960:assistance"];
    assert_eq!(key, "1234567890");
    let Some(Record::Appeal(a)) = &e.record else {
        panic!("{e:?}")
    };
    assert_eq!(
        (a.decision.as_str(), a.decided_on.as_str()),
        ("ACCEPTED", "2025-07-20")
    );

    // Exactly the invalid records are dead letters, with their original bytes.
    let letters: Vec<DeadLetter> = read_topic(
        &stack.topic("deadletter.v1"),
        dead.len(),
        Duration::from_secs(20),
    )
    .into_iter()
    .map(|(_, p)| DeadLetter::decode(p.as_slice()).unwrap())
    .collect();
    assert_eq!(letters.len(), dead.len(), "{letters:?}");
    for (position, original, field) in &dead {
        let l = letters
            .iter()
            .find(|l| &l.original == original)
            .unwrap_or_else(|| panic!("no dead letter for {}", String::from_utf8_lossy(original)));
        assert_eq!((l.position.as_str(), l.field.as_str()), (*position, *field));
        assert_eq!(l.source_system, "assistance");
        assert!(!l.reason.is_empty());
    }
    let csv_letter = letters.iter().find(|l| l.position == "line 4").unwrap();
    assert_eq!(csv_letter.content_type, "text/csv");

    let rejected = metric(
        adapter.admin_port(),
        "ponte_adapter_records_rejected_total",
        &[("adapter", "assistance")],
    )
    .await;
    assert_eq!(rejected, dead.len() as f64);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_csv_upload_larger_than_one_chunk_is_streamed_whole() {
    let mut stack = Stack::new("assist-csv");
    stack.extra_env.insert(
        "PONTE__ASSISTANCE_ADAPTER__CSV_CHUNK_RECORDS".into(),
        "500".into(),
    );
    let (status, out, err) = stack.ponte(&["topics", "ensure"]);
    assert!(status.success(), "topics ensure failed: {out}{err}");
    let mut adapter = stack.spawn(SERVICE);
    wait_ready(&mut adapter).await;

    const ROWS: u64 = 3000;
    let mut csv = String::from("nis,family_id,birth_date,sex,municipality,peti\n");
    for i in 0..ROWS {
        csv.push_str(&format!(
            "{},F{},2015-05-05,M,{IBGE},1\n",
            nis_from(2_000_000_000 + i),
            i / 4
        ));
    }
    // The last line breaks the quoting rules; the rows before it are unaffected.
    csv.push_str("\"26827649960,broken\n");
    let r = post(&stack, "/v1/persons", "text/csv", csv).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["accepted"], ROWS);
    assert_eq!(r.body["rejected_total"], 1);
    assert_eq!(
        r.body["rejected"][0]["position"],
        format!("line {}", ROWS + 2)
    );
    assert_eq!(r.body["rejected"][0]["field"], "record");

    let persons = events(&stack, "registry.persons.v1", ROWS as usize);
    assert_eq!(persons.len() as u64, ROWS);
    assert!(
        persons
            .iter()
            .all(|(id, (key, _))| id.ends_with(key.as_str()))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_broker_gives_503_with_retry_after_and_an_unready_adapter() {
    let mut stack = Stack::new("assist-down");
    // Nothing listens on this port: the adapter cannot get an acknowledgement.
    stack.extra_env.insert(
        "PONTE__KAFKA__BOOTSTRAP_SERVERS".into(),
        format!("127.0.0.1:{}", free_port()),
    );
    stack
        .extra_env
        .insert("PONTE__KAFKA__MESSAGE_TIMEOUT_MS".into(), "3000".into());
    stack.extra_env.insert(
        "PONTE__ASSISTANCE_ADAPTER__RETRY_AFTER_SECS".into(),
        "7".into(),
    );
    let mut adapter = stack.spawn(SERVICE);
    let admin = adapter.admin_port();

    // The API answers (it is up), but every push is refused with Retry-After.
    let body = json!({"nis": NIS, "month": "2025-04", "hours_offered": 40, "hours_attended": 30})
        .to_string();
    let api = format!("127.0.0.1:{}", stack.port(SERVICE));
    let mut up = false;
    for _ in 0..300 {
        adapter.assert_running();
        if std::net::TcpStream::connect(&api).is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        up,
        "the adapter's API never came up; log:\n{}",
        adapter.log_text()
    );
    let r = post(&stack, "/v1/scfv-attendance", "application/json", body).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.retry_after.as_deref(), Some("7"));
    assert!(
        r.body["error"].as_str().unwrap().contains("send it again"),
        "{}",
        r.body
    );
    assert_eq!(r.body["accepted"], 0);

    // Readiness follows the broker.
    let ready = reqwest::get(format!("http://127.0.0.1:{admin}/health/ready"))
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let failures = metric(
        admin,
        "ponte_adapter_publish_failures_total",
        &[("adapter", "assistance"), ("error_type", "unavailable")],
    )
    .await;
    assert!(failures >= 1.0, "{failures}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_csv_upload_over_the_limit_stores_and_counts_the_lines_read_before_it() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let mut stack = Stack::new("assist-limit");
    stack.extra_env.insert(
        "PONTE__ASSISTANCE_ADAPTER__MAX_CSV_BYTES".into(),
        "20000".into(),
    );
    stack.extra_env.insert(
        "PONTE__ASSISTANCE_ADAPTER__CSV_CHUNK_RECORDS".into(),
        "100".into(),
    );
    let (status, out, err) = stack.ponte(&["topics", "ensure"]);
    assert!(status.success(), "topics ensure failed: {out}{err}");
    let mut adapter = stack.spawn(SERVICE);
    wait_ready(&mut adapter).await;

    // No Content-Length (chunked), so the adapter only learns the size by reading: ~40 KB.
    let mut csv = String::from("nis,family_id,birth_date,sex,municipality\n");
    for i in 0..1000 {
        csv.push_str(&format!(
            "{},F{i},2015-05-05,M,{IBGE}\n",
            nis_from(3_000_000_000 + i)
        ));
    }
    let stream = ponte_integration_tests::tls_connect(stack.port(SERVICE), "assistance").await;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        let head = "POST /v1/persons HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/csv\r\n\
                    Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        wr.write_all(head.as_bytes()).await?;
        for chunk in csv.as_bytes().chunks(2000) {
            wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            wr.write_all(chunk).await?;
            wr.write_all(b"\r\n").await?;
        }
        wr.write_all(b"0\r\n\r\n").await
    });
    let mut raw = Vec::new();
    let _ = rd.read_to_end(&mut raw).await;
    let _ = writer.await;
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    let json_start = raw.find("\r\n\r\n").map(|i| i + 4).unwrap();
    // The body may itself be chunk-encoded: take the JSON object inside it.
    let body = &raw[json_start..];
    let body = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
    let answer: Value = serde_json::from_str(body).unwrap();
    let accepted = answer["accepted"].as_u64().unwrap();
    assert!((1..1000).contains(&accepted), "{answer}");
    assert_eq!(answer["lines"].as_u64().unwrap(), accepted + 1, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("max_csv_bytes"),
        "{answer}"
    );

    // What the answer counts is exactly what is on the topic.
    let persons = events(&stack, "registry.persons.v1", accepted as usize);
    assert_eq!(persons.len() as u64, accepted);
}

/// A Unidos household (issue 17): its registry profile and a cogestor's visit land on
/// `assistance.family.v1` keyed by household id as `HouseholdProfile` and `HouseholdEvidence`
/// events; a profile whose tarjeta de identidad predates the member's seventh birthday is
/// refused with the field and the reason, dead-lettered, and the valid profile of the same
/// request is kept.
#[tokio::test(flavor = "multi_thread")]
async fn unidos_households_and_visits_land_on_the_family_topic_keyed_by_household() {
    use ponte_proto::events::v1::evidence_item::Value as V;

    let stack = Stack::new("assist-household");
    let (status, out, err) = stack.ponte(&["topics", "ensure"]);
    assert!(status.success(), "topics ensure failed: {out}{err}");
    let mut adapter = stack.spawn(SERVICE);
    wait_ready(&mut adapter).await;

    // A household of Pasto (DIVIPOLA 52001): a mother with her cédula, a son whose registro
    // civil and tarjeta de identidad carry one NUIP, a relative with a PPT.
    let household = json!({"household_id": "HH-52001-0001", "municipality": "52001",
        "zone": "urban", "sisben_group": "A3", "programmes": ["UNIDOS"],
        "members": [
            {"member_id": "HH1-1", "birth_date": "1985-06-01", "sex": "F",
             "documents": [{"type": "CC", "number": "52.123.456", "from": "2003-07-01"}]},
            {"member_id": "HH1-2", "birth_date": "2014-03-04", "sex": "M",
             "documents": [{"type": "RC", "number": "1023456789", "from": "2014-03-20"},
                           {"type": "TI", "number": "1023456789", "from": "2021-04-01"}]},
            {"member_id": "HH1-3", "birth_date": "1990-01-01",
             "documents": [{"type": "PT", "number": "4512345", "from": "2022-01-15"}]}],
        "figures": {"extreme_poverty_line": 227220},
        "ipm_deprivations": {"material_inadecuado_pisos": true}, "version": 2})
    .to_string();
    // The same household under another id, its son's tarjeta dated at age 6.
    let bad_household = household
        .replace("HH-52001-0001", "HH-52001-0002")
        .replace("2021-04-01", "2020-04-01");
    let r = post(
        &stack,
        "/v1/household-profiles",
        "application/json",
        format!("[{household},{bad_household}]"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["accepted"], 1);
    let rejected = &r.body["rejected"][0];
    assert_eq!(rejected["position"], "record 2");
    assert_eq!(rejected["field"], "members[1].documents");
    assert_eq!(
        rejected["reason"],
        "a tarjeta de identidad is issued from age 7; the person was 6 on 2020-04-01",
        "{}",
        r.body
    );

    // A cogestor's visit about the household, and one naming a member by a cédula number
    // instead of a person key (refused: 422, nothing valid in it).
    let visit = json!({"household_id": "HH-52001-0001", "evidence_id": "V-2025-0042",
        "source": "visit", "subject": "household", "recorded_on": "2025-06-10",
        "recorded_by": "cogestor:CG-5201-017",
        "items": {"floor_material": "earth", "persons_per_sleeping_room": 2.5,
                  "achievement:L21": "POR ALCANZAR"}})
    .to_string();
    let r = post(&stack, "/v1/household-evidence", "application/json", visit).await;
    assert_eq!(
        (r.status, &r.body["accepted"]),
        (200, &json!(1)),
        "{}",
        r.body
    );
    let bad_visit = json!({"household_id": "HH-52001-0001", "source": "visit",
        "subject": "cc:52123456", "recorded_on": "2025-06-10", "recorded_by": "CG-17",
        "items": {"attends_school": true}})
    .to_string();
    let r = post(
        &stack,
        "/v1/household-evidence",
        "application/json",
        bad_visit.clone(),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["rejected"][0]["field"], "subject");
    assert_eq!(
        r.body["rejected"][0]["reason"],
        "person key must start with nuip: or registry:, got \"cc\""
    );

    let family = events(&stack, "assistance.family.v1", 2);
    assert_eq!(family.len(), 2, "{family:?}");
    let (key, e) = &family["assistance:household-profile:HH-52001-0001"];
    assert_eq!(key, "HH-52001-0001");
    assert_eq!((e.version, e.sender.is_empty()), (2, false));
    let Some(Record::HouseholdProfile(p)) = &e.record else {
        panic!("{e:?}")
    };
    assert_eq!(
        (p.municipality.as_str(), p.sisben_group.as_str()),
        ("52001", "A3")
    );
    let keys: Vec<&str> = p.members.iter().map(|m| m.person_key.as_str()).collect();
    assert_eq!(keys, ["nuip:52123456", "nuip:1023456789", "registry:HH1-3"]);
    assert_eq!(p.figures[0].thousandths, 227_220_000);
    let (key, e) = &family["assistance:household-evidence:HH-52001-0001:V-2025-0042"];
    assert_eq!(key, "HH-52001-0001");
    let Some(Record::HouseholdEvidence(v)) = &e.record else {
        panic!("{e:?}")
    };
    assert_eq!(
        (
            v.source.as_str(),
            v.subject.as_str(),
            v.recorded_by.as_str()
        ),
        ("visit", "household", "cogestor:CG-5201-017")
    );
    let items: Vec<(&str, Option<V>)> = v
        .items
        .iter()
        .map(|i| (i.name.as_str(), i.value.clone()))
        .collect();
    assert_eq!(
        items,
        [
            ("achievement:L21", Some(V::Text("POR ALCANZAR".into()))),
            ("floor_material", Some(V::Text("earth".into()))),
            ("persons_per_sleeping_room", Some(V::Thousandths(2500))),
        ]
    );

    // Exactly the two refused records are dead letters, with their reasons.
    let letters: Vec<DeadLetter> =
        read_topic(&stack.topic("deadletter.v1"), 2, Duration::from_secs(20))
            .into_iter()
            .map(|(_, p)| DeadLetter::decode(p.as_slice()).unwrap())
            .collect();
    assert_eq!(letters.len(), 2, "{letters:?}");
    let profile_letter = letters
        .iter()
        .find(|l| l.original == bad_household.as_bytes())
        .unwrap();
    assert_eq!(
        (
            profile_letter.position.as_str(),
            profile_letter.field.as_str()
        ),
        ("record 2", "members[1].documents")
    );
    assert!(
        profile_letter.reason.contains("issued from age 7"),
        "{profile_letter:?}"
    );
    let visit_letter = letters
        .iter()
        .find(|l| l.original == bad_visit.as_bytes())
        .unwrap();
    assert_eq!(
        (
            visit_letter.field.as_str(),
            visit_letter.error_type.as_str()
        ),
        ("subject", "invalid_identifier")
    );
}
