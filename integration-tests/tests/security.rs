//! Trust at the edges (issue 14), on real TLS handshakes against the real services and broker:
//! who may connect, who may send what, who may read where, and what one caller can cost.
#![allow(clippy::unwrap_used)]
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ponte_access::token::dev::{DEV_AUDIENCE, DEV_ISSUER, DEV_KID, DevSigner, unix_now};
use ponte_integration_tests::{
    Stack, anonymous_http_client, eventually, grpc_channel, grpc_client, http_client, metric, pki,
    read_topic, read_topic_until, rustls_client, tls_connect, valid_nis, wait_ready,
};
use ponte_proto::compliance::v1::compliance_service_client::ComplianceServiceClient;
use ponte_proto::compliance::v1::{
    GetIndicatorsRequest, GetPersonRequest, ListParkedRequest, ListPersonsRequest,
    WatchChangesRequest, compliance_change::View,
};
use ponte_proto::events::v1::DeadLetter;
use ponte_proto::reconciler::v1::ReadPersonRequest;
use ponte_proto::reconciler::v1::peer_service_client::PeerServiceClient;
use prost::Message as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;

/// São Paulo city: the development municipal reader's municipality.
const SAO_PAULO: &str = "3550308";
/// Rio de Janeiro: someone else's.
const RIO: &str = "3304557";

fn signer() -> DevSigner {
    let pem = std::fs::read_to_string(&pki().token_signing_key).unwrap();
    DevSigner::from_pkcs8_pem(DEV_KID, &pem).unwrap()
}

fn token(principal: &str, audience: &str, exp_offset: i64) -> String {
    let now = unix_now() as i64;
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), principal.into());
    claims.insert("iss".into(), DEV_ISSUER.into());
    claims.insert("aud".into(), audience.into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + exp_offset).into());
    signer().sign(&claims).unwrap()
}

fn principal(name: &str) -> String {
    ponte_access::pki::principal_uri(name)
}

async fn post_with(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let resp = client.post(url).json(body).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn profile(nis: &str, family: &str, municipality: &str) -> Value {
    json!({"nis": nis, "family_id": family, "birth_date": "2016-03-01", "sex": "F",
           "municipality": municipality, "memberships": ["PBF"], "version": 1})
}

fn attendance(nis: &str) -> Value {
    json!({"nis": nis, "inep_school_code": "35012345", "month": "2025-04", "unit": "days",
           "given": 20, "attended": 19, "version": 1})
}

/// The stack's attendance topic holds one record for each NIS of `expected`, and nothing else.
fn attendance_topic_holds_exactly(stack: &Stack, expected: &BTreeSet<String>) {
    let topic = stack.topic("education.attendance.v1");
    let events = read_topic(&topic, expected.len(), Duration::from_secs(60));
    let keys: Vec<String> = events
        .iter()
        .map(|(k, _)| String::from_utf8(k.clone()).unwrap())
        .collect();
    assert_eq!(keys.len(), expected.len(), "each record exactly once");
    assert_eq!(&keys.into_iter().collect::<BTreeSet<_>>(), expected);
}

/// Reads until the server closes the connection; how long that took (`None`: not within 10 s).
async fn closed_within(mut io: impl tokio::io::AsyncRead + Unpin) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = vec![0u8; 4096];
    let deadline = Duration::from_secs(10);
    loop {
        match tokio::time::timeout(deadline.saturating_sub(start.elapsed()), io.read(&mut buf))
            .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_authenticated_callers_within_their_rights_get_in() {
    let mut stack = Stack::new("security");
    for (k, v) in [
        ("PONTE__ACCESS__HANDSHAKE_TIMEOUT_MS", "1000"),
        ("PONTE__ACCESS__HEADER_READ_TIMEOUT_MS", "1000"),
        ("PONTE__ACCESS__BODY_IDLE_TIMEOUT_MS", "1000"),
    ] {
        stack.extra_env.insert(k.into(), v.into());
    }
    assert_eq!(
        stack.ponte(&["topics", "ensure"]).0.code(),
        Some(0),
        "topics ensure"
    );
    let mut education = stack.spawn("education-adapter");
    let mut assistance = stack.spawn("assistance-adapter");
    let mut reconciler = stack.spawn("reconciler");
    wait_ready(&mut education).await;
    wait_ready(&mut assistance).await;
    wait_ready(&mut reconciler).await;
    let edu_url = stack.url("education-adapter", "/v1/attendance");
    let persons_url = stack.url("assistance-adapter", "/v1/persons");
    let grpc_port = stack.port("reconciler");
    assert_eq!(
        metric(
            education.admin_port(),
            "ponte_listener_insecure",
            &[("listener", "education")]
        )
        .await,
        0.0
    );

    // --- Who gets in -----------------------------------------------------------------------

    // No credentials: 401 over HTTP, UNAUTHENTICATED over gRPC.
    let (status, body) = post_with(
        &anonymous_http_client(),
        &edu_url,
        &attendance(&valid_nis(1)),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("no credentials"),
        "{body}"
    );
    let mut anonymous = ComplianceServiceClient::new(grpc_channel(grpc_port, None).await.unwrap());
    let err = anonymous
        .get_person(GetPersonRequest { nis: valid_nis(1) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // A certificate from another CA: the handshake fails; nothing reaches a handler.
    let other = tempfile::tempdir().unwrap();
    let other_pki = ponte_access::pki::generate_dev(&other.path().join("pki"), false).unwrap();
    let other_edu = other_pki
        .clients
        .iter()
        .find(|c| c.spec.name == "education")
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", stack.port("education-adapter")))
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(rustls_client(
        &pki().ca.cert,
        Some((other_edu.files.cert.clone(), other_edu.files.key.clone())),
    ));
    let refused = match connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
    {
        // TLS 1.3: the client's last flight is not answered; the refusal shows on first use.
        Ok(mut tls) => {
            let _ = tls
                .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await;
            let mut buf = [0u8; 64];
            tls.read(&mut buf).await.map(|n| n == 0).unwrap_or(true)
        }
        Err(_) => true,
    };
    assert!(
        refused,
        "a certificate of another CA must fail the handshake"
    );
    assert!(
        metric(
            education.admin_port(),
            "ponte_listener_handshake_failures_total",
            &[("listener", "education")]
        )
        .await
            >= 1.0
    );

    // Bearer tokens: expired or for another audience → 401; a good one → in.
    for (bad, why) in [
        (
            token(&principal("education"), DEV_AUDIENCE, -3600),
            "expired",
        ),
        (
            token(&principal("education"), "urn:someone-else", 600),
            "audience",
        ),
    ] {
        let resp = anonymous_http_client()
            .post(&edu_url)
            .bearer_auth(&bad)
            .json(&attendance(&valid_nis(2)))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{why}");
        let text = resp.text().await.unwrap();
        assert!(!text.contains(&bad), "the answer must not echo the token");
    }
    let good = token(&principal("education"), DEV_AUDIENCE, 600);
    let resp = anonymous_http_client()
        .post(&edu_url)
        .bearer_auth(&good)
        .json(&attendance(&valid_nis(3)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    // --- Who may send what -----------------------------------------------------------------

    // The education system posting a registry profile: 403, nothing published, no dead letter.
    let (status, body) = post_with(
        &http_client("education"),
        &persons_url,
        &profile(&valid_nis(900), "F-X", SAO_PAULO),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // The assistance system sends the registry: one person here, one in Rio.
    let here = valid_nis(10);
    let there = valid_nis(11);
    let (status, body) = post_with(
        &http_client("assistance"),
        &persons_url,
        &json!([
            profile(&here, "F-SP", SAO_PAULO),
            profile(&there, "F-RJ", RIO)
        ]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for nis in [&here, &there] {
        let (status, _) = post_with(&http_client("education"), &edu_url, &attendance(nis)).await;
        assert_eq!(status, 200);
    }

    // --- Who may read where ----------------------------------------------------------------

    let mut federal = grpc_client(grpc_port, "federal").await.unwrap();
    for nis in [&here, &there] {
        eventually("both persons in the view", Duration::from_secs(60), || {
            let mut c = federal.clone();
            let nis = nis.clone();
            async move {
                let p = c
                    .get_person(GetPersonRequest { nis })
                    .await
                    .ok()?
                    .into_inner()
                    .person?;
                (!p.school_attendance.is_empty() && !p.municipality.is_empty()).then_some(())
            }
        })
        .await;
    }
    // The registry topic holds the assistance system's two profiles and nothing from education.
    let registry = read_topic(
        &stack.topic("registry.persons.v1"),
        2,
        Duration::from_secs(20),
    );
    assert_eq!(registry.len(), 2);
    assert!(registry.iter().all(|(k, _)| k != valid_nis(900).as_bytes()));

    let mut municipal = grpc_client(grpc_port, "municipality-3550308")
        .await
        .unwrap();
    let own = municipal
        .get_person(GetPersonRequest { nis: here.clone() })
        .await
        .unwrap()
        .into_inner()
        .person
        .unwrap();
    assert_eq!(own.municipality, SAO_PAULO);
    // Another municipality's person and a NIS no one has: the same answer.
    let other_place = municipal
        .get_person(GetPersonRequest { nis: there.clone() })
        .await
        .unwrap_err();
    let nobody = municipal
        .get_person(GetPersonRequest {
            nis: valid_nis(777),
        })
        .await
        .unwrap_err();
    assert_eq!(other_place.code(), Code::PermissionDenied);
    assert_eq!(nobody.code(), Code::PermissionDenied);
    assert_eq!(other_place.message(), nobody.message());
    // The federal reader may learn that a NIS is not in the view.
    assert_eq!(
        federal
            .get_person(GetPersonRequest {
                nis: valid_nis(777)
            })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    // Listing and indicators: only the caller's municipality.
    let err = municipal
        .list_persons(ListPersonsRequest {
            municipality: RIO.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut listed = municipal
        .list_persons(ListPersonsRequest {
            municipality: SAO_PAULO.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(item) = listed.message().await.unwrap() {
        seen.push(item.person.unwrap().nis);
    }
    assert_eq!(seen, vec![here.clone()]);
    let err = municipal
        .get_indicators(GetIndicatorsRequest {
            municipality: RIO.into(),
            period: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    municipal
        .get_indicators(GetIndicatorsRequest {
            municipality: SAO_PAULO.into(),
            period: String::new(),
        })
        .await
        .unwrap();

    // Watching: the federal reader sees both persons; the municipal one only its own.
    let persons_seen = |mut c: ComplianceServiceClient<tonic::transport::Channel>| async move {
        let mut stream = c
            .watch_changes(WatchChangesRequest {
                from: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut seen = BTreeSet::new();
        let until = Instant::now() + Duration::from_secs(8);
        while let Ok(Ok(Some(change))) = tokio::time::timeout(
            until.saturating_duration_since(Instant::now()),
            stream.message(),
        )
        .await
        {
            if let Some(View::Person(p)) = change.change.and_then(|c| c.view) {
                seen.insert(p.nis);
            }
        }
        seen
    };
    let all = persons_seen(federal.clone()).await;
    assert!(all.contains(&here) && all.contains(&there), "{all:?}");
    let mine = persons_seen(municipal.clone()).await;
    assert_eq!(mine, BTreeSet::from([here.clone()]));
    // At most max_watch_streams (2 in the development policy) streams per principal.
    let _w1 = municipal
        .watch_changes(WatchChangesRequest { from: "end".into() })
        .await
        .unwrap();
    let _w2 = municipal
        .watch_changes(WatchChangesRequest { from: "end".into() })
        .await
        .unwrap();
    let third = municipal
        .watch_changes(WatchChangesRequest { from: "end".into() })
        .await
        .unwrap_err();
    assert_eq!(third.code(), Code::ResourceExhausted, "{third:?}");

    // Parked records (raw CNS/CPF): the operator only.
    let err = federal
        .list_parked(ListParkedRequest { limit: 10 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    grpc_client(grpc_port, "operator")
        .await
        .unwrap()
        .list_parked(ListParkedRequest { limit: 10 })
        .await
        .unwrap();

    // A bearer token works on gRPC too.
    let mut by_token =
        ComplianceServiceClient::with_interceptor(grpc_channel(grpc_port, None).await.unwrap(), {
            let value: tonic::metadata::MetadataValue<_> =
                format!("Bearer {}", token(&principal("federal"), DEV_AUDIENCE, 600))
                    .parse()
                    .unwrap();
            move |mut req: tonic::Request<()>| {
                req.metadata_mut().insert("authorization", value.clone());
                Ok(req)
            }
        });
    by_token
        .get_person(GetPersonRequest { nis: there.clone() })
        .await
        .unwrap();

    // The peer service (reads one reconciler instance asks of another) answers only the
    // reconciler's own certificate: not a reader, not a bearer token naming the reconciler.
    let peer_read = |channel: tonic::transport::Channel, nis: String| async move {
        PeerServiceClient::new(channel)
            .read_person(ReadPersonRequest { nis })
            .await
    };
    let as_reconciler = peer_read(
        grpc_channel(grpc_port, Some("reconciler")).await.unwrap(),
        here.clone(),
    )
    .await
    .unwrap()
    .into_inner()
    .person
    .unwrap();
    assert_eq!(as_reconciler.nis, here, "the owner's unfiltered view");
    let err = peer_read(
        grpc_channel(grpc_port, Some("federal")).await.unwrap(),
        here.clone(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = PeerServiceClient::with_interceptor(grpc_channel(grpc_port, None).await.unwrap(), {
        let value: tonic::metadata::MetadataValue<_> = format!(
            "Bearer {}",
            token(&principal("reconciler"), DEV_AUDIENCE, 600)
        )
        .parse()
        .unwrap();
        move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", value.clone());
            Ok(req)
        }
    })
    .read_person(ReadPersonRequest { nis: here.clone() })
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // The reconciler calls no method of the public API.
    let err = grpc_client(grpc_port, "reconciler")
        .await
        .unwrap()
        .get_person(GetPersonRequest { nis: here.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // The policy file changes: the municipal reader loses GetPerson without a restart.
    let policy = std::fs::read_to_string(stack.policy_file()).unwrap();
    let narrowed = policy.replace(
        "[principals.\"urn:ponte:principal:municipality-3550308\"]\nread = { scopes = [\"municipality:3550308\"], rpcs = [\"GetPerson\", ",
        "[principals.\"urn:ponte:principal:municipality-3550308\"]\nread = { scopes = [\"municipality:3550308\"], rpcs = [",
    );
    assert_ne!(policy, narrowed, "the development policy's layout changed");
    std::fs::write(stack.policy_file(), narrowed).unwrap();
    eventually("the policy reloaded", Duration::from_secs(20), || {
        let mut c = municipal.clone();
        let nis = here.clone();
        async move {
            let r = c.get_person(GetPersonRequest { nis }).await;
            matches!(r, Err(s) if s.code() == Code::PermissionDenied).then_some(())
        }
    })
    .await;

    // --- What one caller can cost ----------------------------------------------------------

    // A connection that never starts its handshake, one that stops in the middle of its
    // headers and one that stops in the middle of its body: all closed after the deadline.
    let port = stack.port("education-adapter");
    let silent = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let headers_half = {
        let mut tls = tls_connect(port, "education").await;
        tls.write_all(b"POST /v1/attendance HTTP/1.1\r\nHost: localhost\r\nContent-Ty")
            .await
            .unwrap();
        tls
    };
    let body_half = {
        let mut tls = tls_connect(port, "education").await;
        tls.write_all(
            b"POST /v1/attendance HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"nis\": ",
        )
        .await
        .unwrap();
        tls
    };
    let (a, b, c) = tokio::join!(
        closed_within(silent),
        closed_within(headers_half),
        closed_within(body_half)
    );
    for (what, t) in [("no handshake", a), ("half headers", b), ("half body", c)] {
        let t = t.unwrap_or_else(|| panic!("{what}: the connection stayed open"));
        assert!(
            t >= Duration::from_millis(500),
            "{what}: closed after {t:?}"
        );
    }

    // A 16 MiB malformed body: 400, and its dead letter keeps only its start (a dead letter
    // must fit in one Kafka message: before the cap the client got 500 on every retry).
    let big = vec![b'{'; 16 * 1024 * 1024];
    let resp = http_client("education")
        .post(&edu_url)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        400,
        "{}",
        resp.text().await.unwrap()
    );
    let big_body = |l: &DeadLetter| l.reason.contains("16777216 bytes");
    let letters = read_topic_until(
        &stack.topic("deadletter.v1"),
        Duration::from_secs(20),
        |_, v| DeadLetter::decode(v).is_ok_and(|l| big_body(&l)),
    );
    let letter = letters
        .iter()
        .map(|(_, v)| DeadLetter::decode(v.as_slice()).unwrap())
        .find(big_body)
        .expect("the big body's dead letter");
    assert_eq!(letter.source_system, "education");
    assert!(
        letter.original.len() < 1024 * 1024,
        "{}",
        letter.original.len()
    );
    assert!(letter.original.iter().all(|b| *b == b'{'));

    // Everything valid sent in this test is on the topic once; nothing else is.
    let expected: BTreeSet<String> = [valid_nis(3), here.clone(), there.clone()].into();
    attendance_topic_holds_exactly(&stack, &expected);

    education.assert_running();
    assistance.assert_running();
    reconciler.assert_running();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listener_without_tls_is_explicit_and_visible() {
    let mut stack = Stack::new("insecure");
    stack
        .extra_env
        .insert("PONTE__TLS__INSECURE".into(), "true".into());
    stack.extra_env.insert(
        "PONTE__ACCESS__ANONYMOUS_PRINCIPAL".into(),
        principal("education"),
    );
    let mut education = stack.spawn("education-adapter");
    wait_ready(&mut education).await;
    assert_eq!(
        metric(
            education.admin_port(),
            "ponte_listener_insecure",
            &[("listener", "education")]
        )
        .await,
        1.0
    );
    assert!(education.log_text().contains("PLAINTEXT"));

    // Without insecure = true and without certificates, a service does not start.
    let out = std::process::Command::new(ponte_integration_tests::ponte_bin())
        .arg("education-adapter")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "PONTE__ACCESS__POLICY_FILE",
            stack.policy_file().display().to_string(),
        )
        .env("PONTE__EDUCATION_ADAPTER__LISTEN", "127.0.0.1:0")
        .env("PONTE__EDUCATION_ADAPTER__ADMIN_LISTEN", "127.0.0.1:0")
        // (the audit log's keys are required too: audit.rs tests that)
        .env("PONTE__AUDIT__DISABLED", "true")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("insecure = true"), "{err}");
}

/// 2,000 concurrent requests from one principal: over its limit (64 in the development policy)
/// the answer is 429 with Retry-After, never a dropped record; re-sent, every one is accepted,
/// exactly once. (Default deadlines here: the other test's 1 s handshake deadline is for
/// slowloris connections, not for 2,000 handshakes at once on two cores.)
#[tokio::test(flavor = "multi_thread")]
async fn one_principal_over_its_limit_is_told_to_retry_and_loses_nothing() {
    let stack = Stack::new("busy");
    assert_eq!(stack.ponte(&["topics", "ensure"]).0.code(), Some(0));
    let mut education = stack.spawn("education-adapter");
    wait_ready(&mut education).await;
    let edu_url = stack.url("education-adapter", "/v1/attendance");
    let client = http_client("education");
    let first = 5_000u64;
    let n = 2_000u64;
    let answers = futures::future::join_all((first..first + n).map(|i| {
        let (client, url) = (client.clone(), edu_url.clone());
        async move {
            let resp = client
                .post(&url)
                .json(&attendance(&valid_nis(i)))
                .send()
                .await
                .unwrap();
            let retry_after = resp.headers().get("retry-after").is_some();
            (i, resp.status().as_u16(), retry_after)
        }
    }))
    .await;
    let mut limited = Vec::new();
    for (i, status, retry_after) in &answers {
        match status {
            200 => {}
            429 => {
                assert!(retry_after, "429 without Retry-After");
                limited.push(*i);
            }
            other => panic!("record {i}: answered {other}"),
        }
    }
    assert!(
        !limited.is_empty(),
        "2,000 at once never met the limit of 64"
    );
    for i in &limited {
        let (status, body) = post_with(&client, &edu_url, &attendance(&valid_nis(*i))).await;
        assert_eq!(status, 200, "{body}");
    }
    assert!(
        metric(
            education.admin_port(),
            "ponte_access_refused_total",
            &[("listener", "education"), ("reason", "principal_busy")]
        )
        .await
            >= limited.len() as f64
    );
    let expected: BTreeSet<String> = (first..first + n).map(valid_nis).collect();
    attendance_topic_holds_exactly(&stack, &expected);
    education.assert_running();
}

/// SIGHUP reloads the access policy at once (here the file is not polled for an hour): the
/// education system, taken out of the policy, is refused from then on, and put back, admitted.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_puts_a_new_policy_in_force() {
    let mut stack = Stack::new("sighup");
    stack
        .extra_env
        .insert("PONTE__ACCESS__RELOAD_CHECK_SECS".into(), "3600".into());
    assert_eq!(stack.ponte(&["topics", "ensure"]).0.code(), Some(0));
    let mut education = stack.spawn("education-adapter");
    wait_ready(&mut education).await;
    let url = stack.url("education-adapter", "/v1/attendance");
    let client = http_client("education");
    assert_eq!(
        post_with(&client, &url, &attendance(&valid_nis(1))).await.0,
        200
    );

    let original = std::fs::read_to_string(stack.policy_file()).unwrap();
    let without = original.replace(
        "[principals.\"urn:ponte:principal:education\"]\nsend = { adapter = \"education\", records = [\"attendance\", \"household-evidence\"], source_system = \"education\" }\n",
        "",
    );
    assert_ne!(original, without, "the development policy's layout changed");
    std::fs::write(stack.policy_file(), &without).unwrap();
    // Not polled: the old policy stays in force until the signal.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        post_with(&client, &url, &attendance(&valid_nis(2))).await.0,
        200
    );
    education.hangup();
    eventually(
        "the policy reloaded on SIGHUP",
        Duration::from_secs(20),
        || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let (status, body) = post_with(&client, &url, &attendance(&valid_nis(3))).await;
                (status == 403 && body["error"].as_str()?.contains("not in the access policy"))
                    .then_some(())
            }
        },
    )
    .await;
    // A policy that does not parse leaves the one in force.
    std::fs::write(stack.policy_file(), "this is not toml [").unwrap();
    education.hangup();
    eventually(
        "the failed reload counted",
        Duration::from_secs(20),
        || async {
            (metric(
                education.admin_port(),
                "ponte_access_policy_reloads_total",
                &[("result", "error")],
            )
            .await
                >= 1.0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        post_with(&client, &url, &attendance(&valid_nis(4))).await.0,
        403
    );
    std::fs::write(stack.policy_file(), &original).unwrap();
    education.hangup();
    eventually(
        "the education system back in",
        Duration::from_secs(20),
        || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                (post_with(&client, &url, &attendance(&valid_nis(5))).await.0 == 200).then_some(())
            }
        },
    )
    .await;
    education.assert_running();
}
