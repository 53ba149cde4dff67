//! What the edge costs: the same trivial ingest route served plaintext with an anonymous
//! principal and over TLS with client certificates (mutual TLS), in one process, measured in
//! the same run. Prints figures; asserts nothing about time.
//!
//! `cargo bench -p ponte-edge --bench edge [-- SECONDS CONCURRENCY CONNECTIONS]`
//! (defaults 10 s, 32 concurrent requests, 1,000 new connections).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use ponte_edge::http::{guard, may_send, serve};
use ponte_edge::{AccessConfig, Adapter, EdgeListener, Gate, RecordKind, TlsConfig};
use tokio_util::sync::CancellationToken;

struct Server {
    url: String,
}

async fn start(
    pki: &ponte_access::pki::DevPkiManifest,
    policy: &std::path::Path,
    tls_on: bool,
    stop: CancellationToken,
) -> Server {
    let tls = if tls_on {
        TlsConfig {
            cert_file: Some(pki.server.cert.clone()),
            key_file: Some(pki.server.key.clone()),
            client_ca_file: Some(pki.ca.cert.clone()),
            ..TlsConfig::default()
        }
    } else {
        TlsConfig {
            insecure: true,
            ..TlsConfig::default()
        }
    };
    let access = AccessConfig {
        policy_file: policy.to_path_buf(),
        tokens: None,
        anonymous_principal: if tls_on {
            String::new()
        } else {
            ponte_access::policy::dev_principal("education")
        },
        handshake_timeout_ms: 10_000,
        header_read_timeout_ms: 10_000,
        body_idle_timeout_ms: 30_000,
        max_concurrent_requests: 100_000,
        retry_after_secs: 1,
        reload_check_secs: 3600,
    };
    let gate = Arc::new(Gate::new("bench", &access, !tls_on, &[]).unwrap());
    let app = Router::new().route(
        "/v1/attendance",
        post(|body: axum::body::Bytes| async move {
            format!("{{\"accepted\":1,\"bytes\":{}}}", body.len())
        })
        .layer(axum::middleware::from_fn(may_send(
            Arc::clone(&gate),
            Adapter::Education,
            RecordKind::Attendance,
        ))),
    );
    let listener = EdgeListener::bind(
        "bench",
        "127.0.0.1:0",
        &tls,
        &[ponte_access::tls::Alpn::Http11],
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let port = listener.local_addr().unwrap().port();
    let incoming = listener.incoming(stop.clone());
    tokio::spawn(serve(
        incoming,
        guard(app, gate),
        access.timeouts(),
        stop,
        Duration::from_secs(1),
    ));
    let scheme = if tls_on { "https" } else { "http" };
    Server {
        url: format!("{scheme}://localhost:{port}/v1/attendance"),
    }
}

fn client(pki: &ponte_access::pki::DevPkiManifest, tls_on: bool, pooled: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder().use_rustls_tls();
    if !pooled {
        b = b.pool_max_idle_per_host(0);
    }
    if tls_on {
        let edu = pki
            .clients
            .iter()
            .find(|c| c.spec.name == "education")
            .unwrap();
        let mut pem = std::fs::read(&edu.files.cert).unwrap();
        pem.push(b'\n');
        pem.extend(std::fs::read(&edu.files.key).unwrap());
        b = b
            .add_root_certificate(
                reqwest::Certificate::from_pem(&std::fs::read(&pki.ca.cert).unwrap()).unwrap(),
            )
            .identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

const BODY: &str = r#"{"nis":"26827649960","inep_school_code":"35012345","month":"2025-04","attendance_percent":80}"#;

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// `concurrency` loops on one pooled client for `secs`: requests/s and latency quantiles.
async fn keep_alive(
    c: &reqwest::Client,
    url: &str,
    secs: u64,
    concurrency: usize,
) -> (f64, Vec<Duration>) {
    let until = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (c, url) = (c.clone(), url.to_owned());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < until {
                    let t = Instant::now();
                    let r = c.post(&url).body(BODY).send().await.unwrap();
                    assert_eq!(r.status().as_u16(), 200);
                    r.bytes().await.unwrap();
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    all.sort();
    (rate, all)
}

/// `n` requests one after another, each on a new connection: time per request.
async fn new_connections(c: &reqwest::Client, url: &str, n: usize) -> Vec<Duration> {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = c.post(url).body(BODY).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.bytes().await.unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    lat
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let secs: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(10);
    let concurrency: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(32);
    let connections: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let pki = ponte_access::pki::generate_dev(&dir.path().join("pki"), false).unwrap();
        let policy = dir.path().join("policy.toml");
        std::fs::write(&policy, ponte_access::policy::dev_policy_toml()).unwrap();
        let stop = CancellationToken::new();
        let plain = start(&pki, &policy, false, stop.clone()).await;
        let tls = start(&pki, &policy, true, stop.clone()).await;
        println!(
            "edge bench: {secs} s per keep-alive run, {concurrency} concurrent requests, {connections} new connections; server and client in one process on {} cores",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let mut rates = Vec::new();
        for (name, on, s) in [("plaintext, anonymous", false, &plain), ("TLS 1.3 + client certificate", true, &tls)] {
            let c = client(&pki, on, true);
            // Warm up: connections, TLS sessions, allocator.
            let _ = keep_alive(&c, &s.url, 1, concurrency).await;
            let (rate, lat) = keep_alive(&c, &s.url, secs, concurrency).await;
            rates.push(rate);
            println!(
                "keep-alive   {name:<30} {rate:>9.0} req/s  p50 {}  p99 {}",
                ms(quantile(&lat, 0.5)),
                ms(quantile(&lat, 0.99))
            );
        }
        println!("ratio        TLS + mTLS / plaintext = {:.2} (requests/s over kept-alive connections)", rates[1] / rates[0]);
        let mut medians = Vec::new();
        for (name, on, s) in [("plaintext, anonymous", false, &plain), ("TLS 1.3 + client certificate", true, &tls)] {
            let c = client(&pki, on, false);
            let lat = new_connections(&c, &s.url, connections).await;
            medians.push(quantile(&lat, 0.5));
            println!(
                "new conn     {name:<30} p50 {}  p99 {}  per request on a fresh connection",
                ms(quantile(&lat, 0.5)),
                ms(quantile(&lat, 0.99))
            );
        }
        println!(
            "handshake    ≈ {} per new connection (median difference, client and server together)",
            ms(medians[1].saturating_sub(medians[0]))
        );
        stop.cancel();
    });
}
