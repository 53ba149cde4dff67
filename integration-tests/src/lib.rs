//! Harness for Ponte's system tests: a real Kafka broker and the real `ponte` binary run as
//! separate processes, as in production.
//!
//! The broker is started once per test run by `deploy/local/kafka.sh start` (idempotent: it
//! reuses a running broker), or taken from `PONTE_TEST_BOOTSTRAP`. If it cannot be reached the
//! tests fail — they never pass without Kafka. Each test gets its own topic prefix, consumer
//! group, ports and state directories, so tests run in parallel against one broker.
//!
//! Every service runs with TLS and authenticated callers, as in production: one development PKI
//! (`ponte_access::pki::generate_dev`) per test process, the development access policy copied
//! into each stack's directory (a test may rewrite it), and clients that present the
//! certificate of a development principal ([`http_client`], [`grpc_client`]).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

pub mod secure_broker;
pub mod workload;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// Root of the repository.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration-tests sits in the repo root")
        .to_path_buf()
}

/// The development PKI of this test process: a CA, the server certificate every service
/// presents, a client certificate per development principal, a JWKS and its signing key.
pub fn pki() -> &'static ponte_access::pki::DevPkiManifest {
    static PKI: OnceLock<ponte_access::pki::DevPkiManifest> = OnceLock::new();
    PKI.get_or_init(|| {
        // Kept for the life of the process (services of every test read it): a static is never
        // dropped, so the directory outlives the process. Each test process names its own after
        // its pid and removes those of processes that have ended, so keys do not pile up.
        remove_pki_of_ended_processes(&std::env::temp_dir());
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PKI_PREFIX}{}-", std::process::id()))
            .tempdir()
            .unwrap()
            .keep();
        ponte_access::pki::generate_dev(&dir.join("pki"), false).unwrap()
    })
}

const PKI_PREFIX: &str = "ponte-test-pki-";

/// Removes the PKI directories under `tmp` left by test processes that are no longer running
/// (`ponte-test-pki-<pid>-…` whose pid has no `/proc` entry). Where there is no `/proc`,
/// nothing is removed.
fn remove_pki_of_ended_processes(tmp: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PKI_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The development audit keys of this test process (a signing key per service and the subject
/// key), beside the PKI: every service of every stack writes the audit log, as a deployment's
/// must.
pub fn audit_keys() -> &'static ponte_audit::DevKeys {
    static KEYS: OnceLock<ponte_audit::DevKeys> = OnceLock::new();
    KEYS.get_or_init(|| ponte_audit::write_dev_keys(&pki().dir.join("audit")).unwrap())
}

/// The `[audit]` settings of a service with [`audit_keys`], as environment variables.
pub fn audit_env() -> Vec<(String, String)> {
    let keys = audit_keys();
    let mut env = vec![
        (
            "PONTE__AUDIT__KEY_DIR".to_owned(),
            keys.key_dir.display().to_string(),
        ),
        (
            "PONTE__AUDIT__SUBJECT_KEY_FILE".to_owned(),
            keys.subject_key_file.display().to_string(),
        ),
    ];
    for (id, key) in &keys.public {
        env.push((
            format!("PONTE__AUDIT__KEYS__{}", id.to_uppercase()),
            key.clone(),
        ));
    }
    env
}

/// (certificate, key) of the development principal `name` (`education`, `federal`, …).
pub fn identity(name: &str) -> (PathBuf, PathBuf) {
    let c = pki()
        .clients
        .iter()
        .find(|c| c.spec.name == name)
        .unwrap_or_else(|| panic!("no development principal {name:?}"));
    (c.files.cert.clone(), c.files.key.clone())
}

/// The development principal that sends to an adapter (`education-adapter` → `education`).
pub fn sender_of(service: &str) -> &'static str {
    match service {
        "education-adapter" => "education",
        "health-adapter" => "health",
        "assistance-adapter" => "assistance",
        other => panic!("{other} takes no records"),
    }
}

/// An HTTP client trusting the test CA, presenting the certificate of principal `name`.
pub fn http_client(name: &str) -> reqwest::Client {
    let (cert, key) = identity(name);
    let mut pem = std::fs::read(cert).unwrap();
    pem.push(b'\n');
    pem.extend(std::fs::read(key).unwrap());
    reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&pki().ca.cert).unwrap()).unwrap(),
        )
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .build()
        .unwrap()
}

/// An HTTP client trusting the test CA, presenting no certificate.
pub fn anonymous_http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&pki().ca.cert).unwrap()).unwrap(),
        )
        .build()
        .unwrap()
}

/// The TLS settings of a gRPC client trusting the test CA, presenting `name`'s certificate
/// (none for `None`).
pub fn grpc_tls(name: Option<&str>) -> tonic::transport::ClientTlsConfig {
    let ca = std::fs::read(&pki().ca.cert).unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .domain_name("localhost");
    match name {
        Some(name) => {
            let (cert, key) = identity(name);
            tls.identity(tonic::transport::Identity::from_pem(
                std::fs::read(cert).unwrap(),
                std::fs::read(key).unwrap(),
            ))
        }
        None => tls,
    }
}

/// A gRPC channel to the reconciler at `port` as principal `name`.
pub async fn grpc_channel(
    port: u16,
    name: Option<&str>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{port}"))?
        .tls_config(grpc_tls(name))?
        .connect()
        .await
}

/// A compliance client of the reconciler at `port` as principal `name` (`federal`,
/// `operator`, `municipality-3550308`, …).
pub async fn grpc_client(
    port: u16,
    name: &str,
) -> Result<
    ponte_proto::compliance::v1::compliance_service_client::ComplianceServiceClient<
        tonic::transport::Channel,
    >,
    tonic::transport::Error,
> {
    grpc_channel(port, Some(name))
        .await
        .map(ponte_proto::compliance::v1::compliance_service_client::ComplianceServiceClient::new)
}

/// A rustls client configuration trusting `ca`, presenting `identity` (certificate, key) if
/// given, offering HTTP/1.1.
pub fn rustls_client(
    ca: &Path,
    identity: Option<(PathBuf, PathBuf)>,
) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(ponte_access::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some((cert, key)) => b
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    std::sync::Arc::new(cfg)
}

/// A TLS connection to `127.0.0.1:port` as principal `name`, for tests that write HTTP by hand.
pub async fn tls_connect(
    port: u16,
    name: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(rustls_client(&pki().ca.cert, Some(identity(name))))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// `grpcurl` arguments for TLS as principal `name`.
pub fn grpcurl_tls_args(name: &str) -> Vec<String> {
    let (cert, key) = identity(name);
    vec![
        "-cacert".into(),
        pki().ca.cert.display().to_string(),
        "-cert".into(),
        cert.display().to_string(),
        "-key".into(),
        key.display().to_string(),
    ]
}

/// Bootstrap address of the test broker, started on first use.
pub fn broker() -> &'static str {
    static BROKER: OnceLock<String> = OnceLock::new();
    BROKER.get_or_init(|| {
        let addr = match std::env::var("PONTE_TEST_BOOTSTRAP") {
            Ok(a) if !a.is_empty() => a,
            _ => {
                let out = Command::new(repo_root().join("deploy/local/kafka.sh"))
                    .arg("start")
                    .stderr(Stdio::inherit())
                    .output()
                    .expect("running deploy/local/kafka.sh start");
                assert!(out.status.success(), "deploy/local/kafka.sh start failed");
                String::from_utf8(out.stdout)
                    .unwrap()
                    .lines()
                    .last()
                    .expect("kafka.sh prints the bootstrap address")
                    .trim()
                    .to_owned()
            }
        };
        // Prove the broker answers the Kafka protocol before any test relies on it.
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &addr)
            .create()
            .unwrap();
        consumer
            .fetch_metadata(None, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("Kafka at {addr} does not answer: {e}"));
        addr
    })
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                repo_root().join(p)
            }
        })
        .unwrap_or_else(|| repo_root().join("target"))
}

/// The `ponte` binary, built (once per run) with the same cargo that runs the tests — or the
/// one `PONTE_TEST_PONTE_BIN` names, built beforehand (deploy/local/stress.sh runs a frozen copy,
/// so edits made while it runs are not picked up half-way).
pub fn ponte_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("PONTE_TEST_PONTE_BIN") {
            let bin = PathBuf::from(bin);
            assert!(
                bin.exists(),
                "PONTE_TEST_PONTE_BIN {} not found",
                bin.display()
            );
            return bin;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args(["build", "-p", "ponte", "--bin", "ponte"])
            .current_dir(repo_root())
            .status()
            .expect("running cargo build -p ponte");
        assert!(status.success(), "building the ponte binary failed");
        let bin = target_dir().join("debug").join("ponte");
        assert!(bin.exists(), "{} not found", bin.display());
        bin
    })
}

/// A free TCP port on 127.0.0.1, never the same twice in one test process, and below the
/// kernel's ephemeral range. Asking the kernel for port 0 and releasing it gave the same port
/// to two calls in a row (CI: an adapter's API and admin listeners on one port, "Address
/// already in use"), and a port from the ephemeral range can be taken by any outgoing
/// connection — a Kafka client's — before the service that was given it binds it.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    const LOWEST: u16 = 10_000;
    // (A kernel whose ephemeral range starts lower leaves 10000–10999, some of them in it.)
    let span = u128::from(ephemeral_port_start().saturating_sub(LOWEST).max(1_000));
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        // Random, so that test processes running side by side (deploy/local/stress.sh) rarely
        // try the same ports.
        let candidate = LOWEST + (uuid::Uuid::new_v4().as_u128() % span) as u16;
        if handed.contains(&candidate) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            handed.insert(candidate);
            return candidate;
        }
    }
}

/// Creates `topic` with `partitions` partitions (replication 1) on the broker at `bootstrap`,
/// asserting that the broker created it.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let created = admin
        .create_topics(
            [&NewTopic::new(
                topic,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
}

/// The first port of the kernel's ephemeral range (outgoing connections' local ports).
fn ephemeral_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Everything one test's Ponte deployment needs: a topic prefix, ports and a work directory.
#[derive(Debug)]
pub struct Stack {
    pub prefix: String,
    pub dir: tempfile::TempDir,
    ports: std::sync::Mutex<BTreeMap<String, (u16, u16)>>,
    pub extra_env: BTreeMap<String, String>,
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Config section of a service subcommand (`education-adapter` → `education_adapter`).
fn section(service: &str) -> String {
    service.replace('-', "_")
}

/// The key of a service's main listener in its config section.
fn listen_key(service: &str) -> &'static str {
    if service == "reconciler" {
        "grpc_listen"
    } else {
        "listen"
    }
}

impl Stack {
    pub fn new(name: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let stack = Stack {
            prefix: format!("it-{name}-{}.ponte.", &id[..8]),
            dir: tempfile::tempdir().unwrap(),
            ports: Default::default(),
            extra_env: BTreeMap::new(),
        };
        std::fs::write(stack.policy_file(), ponte_access::policy::dev_policy_toml()).unwrap();
        stack
    }

    /// The access policy file of this stack's services (the development policy at first; a
    /// running service reloads it when it changes).
    pub fn policy_file(&self) -> PathBuf {
        self.dir.path().join("policy.toml")
    }

    /// An HTTP client presenting the certificate of the principal that sends to `service`.
    pub fn client_for(&self, service: &str) -> reqwest::Client {
        http_client(sender_of(service))
    }

    /// Polls the reconciler (as the federal reader) until household `id`'s view satisfies
    /// `pred`, for up to a minute.
    pub async fn household_where(
        &self,
        id: &str,
        what: &str,
        pred: impl Fn(&ponte_proto::compliance::v1::Household) -> bool,
    ) -> ponte_proto::compliance::v1::Household {
        eventually(what, Duration::from_secs(60), || async {
            let mut c = self.grpc().await.ok()?;
            let h = c
                .get_household(ponte_proto::compliance::v1::GetHouseholdRequest {
                    household_id: id.into(),
                })
                .await
                .ok()?
                .into_inner()
                .household?;
            pred(&h).then_some(h)
        })
        .await
    }

    /// A compliance client of this stack's reconciler as the federal reader.
    pub async fn grpc(
        &self,
    ) -> Result<
        ponte_proto::compliance::v1::compliance_service_client::ComplianceServiceClient<
            tonic::transport::Channel,
        >,
        tonic::transport::Error,
    > {
        grpc_client(self.port("reconciler"), "federal").await
    }

    /// The (main, admin) ports of a service of this stack, allocated on first use.
    pub fn ports(&self, service: &str) -> (u16, u16) {
        *self
            .ports
            .lock()
            .unwrap()
            .entry(service.to_owned())
            .or_insert_with(|| (free_port(), free_port()))
    }

    /// Port of a service's main listener (HTTP for adapters, gRPC for the reconciler).
    pub fn port(&self, service: &str) -> u16 {
        self.ports(service).0
    }

    /// Port of a service's admin endpoint (`/metrics`, `/health/*`).
    pub fn admin_port(&self, service: &str) -> u16 {
        self.ports(service).1
    }

    /// The environment under which reconciler instance `instance` advertises its gRPC
    /// listener, answers the other instances' reads of its partitions and reads theirs from
    /// them (`reconciler.peer`), as the development PKI's `reconciler` principal.
    pub fn peer_env(&self, instance: &str) -> Vec<(&'static str, String)> {
        let (cert, key) = identity("reconciler");
        vec![
            (
                "PONTE__RECONCILER__PEER__ADVERTISE",
                format!("127.0.0.1:{}", self.port(instance)),
            ),
            (
                "PONTE__RECONCILER__PEER__CA_FILE",
                pki().ca.cert.display().to_string(),
            ),
            (
                "PONTE__RECONCILER__PEER__CERT_FILE",
                cert.display().to_string(),
            ),
            (
                "PONTE__RECONCILER__PEER__KEY_FILE",
                key.display().to_string(),
            ),
        ]
    }

    /// Full name of a topic by its base name.
    pub fn topic(&self, base: &str) -> String {
        format!("{}{base}", self.prefix)
    }

    /// The environment every `ponte` process of this stack gets.
    pub fn env(&self) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = [
            ("PONTE__KAFKA__BOOTSTRAP_SERVERS", broker().to_owned()),
            ("PONTE__KAFKA__MESSAGE_TIMEOUT_MS", "10000".to_owned()),
            ("PONTE__TOPICS__PREFIX", self.prefix.clone()),
            ("PONTE__TOPICS__PARTITIONS", "3".to_owned()),
            (
                "PONTE__RECONCILER__STATE_DIR",
                self.dir.path().join("reconciler").display().to_string(),
            ),
            (
                "PONTE__RECONCILER__GROUP_ID",
                format!("{}reconciler", self.prefix),
            ),
            ("PONTE__RECONCILER__SESSION_TIMEOUT_MS", "6000".to_owned()),
            ("RUST_LOG", "info,librdkafka=warn".to_owned()),
            // TLS and authentication on, with the test process' development PKI.
            ("PONTE__TLS__CERT_FILE", path(&pki().server.cert)),
            ("PONTE__TLS__KEY_FILE", path(&pki().server.key)),
            ("PONTE__TLS__CLIENT_CA_FILE", path(&pki().ca.cert)),
            ("PONTE__TLS__CLIENT_AUTH", "optional".to_owned()),
            ("PONTE__ACCESS__POLICY_FILE", path(&self.policy_file())),
            ("PONTE__ACCESS__TOKENS__JWKS_FILE", path(&pki().jwks)),
            (
                "PONTE__ACCESS__TOKENS__ISSUER",
                ponte_access::token::dev::DEV_ISSUER.to_owned(),
            ),
            (
                "PONTE__ACCESS__TOKENS__AUDIENCE",
                ponte_access::token::dev::DEV_AUDIENCE.to_owned(),
            ),
            ("PONTE__ACCESS__RELOAD_CHECK_SECS", "1".to_owned()),
            // `ponte ingest` / `ponte query` run by a test trust the test CA.
            ("PONTE_CLIENT_CA", path(&pki().ca.cert)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        env.extend(audit_env());
        env.extend(self.extra_env.clone());
        env
    }

    /// The environment of one service process: the stack's, plus its own listen addresses.
    pub fn service_env(&self, service: &str) -> BTreeMap<String, String> {
        self.instance_env(service, service)
    }

    /// The environment of one instance of a service; instances of one service get their own
    /// ports (allocated under the instance's name).
    pub fn instance_env(&self, service: &str, instance: &str) -> BTreeMap<String, String> {
        let mut env = self.env();
        let (main, admin) = self.ports(instance);
        let sec = section(service).to_uppercase();
        env.insert(
            format!("PONTE__{sec}__{}", listen_key(service).to_uppercase()),
            format!("127.0.0.1:{main}"),
        );
        env.insert(
            format!("PONTE__{sec}__ADMIN_LISTEN"),
            format!("127.0.0.1:{admin}"),
        );
        // Anything the test set explicitly wins.
        env.extend(self.extra_env.clone());
        env
    }

    /// Runs a `ponte` command to completion and returns (status, stdout, stderr).
    pub fn ponte(&self, args: &[&str]) -> (ExitStatus, String, String) {
        self.ponte_with(args, &[])
    }

    /// [`Stack::ponte`] with `overrides` on top of the stack's environment.
    pub fn ponte_with(
        &self,
        args: &[&str],
        overrides: &[(&str, String)],
    ) -> (ExitStatus, String, String) {
        let out = Command::new(ponte_bin())
            .args(args)
            .envs(self.env())
            .envs(overrides.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts a long-running `ponte <service>`; its log goes to a file in the stack's directory.
    pub fn spawn(&self, service: &str) -> Service {
        Service::start(self, service, service, &[])
    }

    /// Starts another instance of `ponte <service>` with its own ports and `overrides` on top
    /// of the stack's environment (e.g. its own state directory or consumer group).
    pub fn spawn_instance(
        &self,
        service: &str,
        instance: &str,
        overrides: &[(&str, String)],
    ) -> Service {
        Service::start(self, service, instance, overrides)
    }

    /// Posts `body` as the sector system of `service`; returns the request id it was answered
    /// (`x-request-id`), which the records it brought carry.
    pub async fn post(&self, service: &str, path: &str, body: serde_json::Value) -> String {
        let resp = self
            .client_for(service)
            .post(self.url(service, path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let request_id = resp
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{service} {path}: {status} {text}");
        assert!(!request_id.is_empty(), "{service} {path}: no x-request-id");
        request_id
    }

    /// URL on an adapter's HTTP API, e.g. `stack.url("education-adapter", "/v1/attendance")`.
    pub fn url(&self, service: &str, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port(service))
    }
}

/// A running `ponte` service process. Killed when dropped.
#[derive(Debug)]
pub struct Service {
    /// The subcommand (`reconciler`).
    pub name: String,
    /// The instance (`reconciler`, `reconciler-b`): names its ports and log files.
    pub instance: String,
    child: Option<Child>,
    pub log: PathBuf,
    starts: u32,
    env: BTreeMap<String, String>,
    admin_port: u16,
    cwd: PathBuf,
}

impl Service {
    fn start(stack: &Stack, service: &str, instance: &str, overrides: &[(&str, String)]) -> Self {
        let mut env = stack.instance_env(service, instance);
        env.extend(overrides.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        let mut s = Service {
            name: service.to_owned(),
            instance: instance.to_owned(),
            child: None,
            log: PathBuf::new(),
            starts: 0,
            env,
            admin_port: stack.admin_port(instance),
            cwd: stack.dir.path().to_path_buf(),
        };
        s.restart();
        s
    }

    /// Starts the process again (after `terminate` or `kill9`).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is still running", self.name);
        self.starts += 1;
        self.log = self
            .cwd
            .join(format!("{}.{}.log", self.instance, self.starts));
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(ponte_bin())
            .arg(&self.name)
            .envs(&self.env)
            .current_dir(&self.cwd)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// SIGTERM, then waits for a graceful exit and returns its status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("-TERM");
        self.wait(Duration::from_secs(30))
    }

    /// SIGHUP: a service reloads its access policy and JWKS.
    pub fn hangup(&self) {
        self.signal("-HUP");
    }

    /// SIGSTOP: the process stops where it is, its sockets open, answering nothing.
    pub fn signal_stop(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT: a process stopped with SIGSTOP goes on.
    pub fn signal_continue(&self) {
        self.signal("-CONT");
    }

    /// SIGKILL: the process dies wherever it is.
    pub fn kill9(&mut self) {
        self.signal("-KILL");
        let _ = self.wait(Duration::from_secs(10));
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "{} did not exit within {timeout:?}; log: {}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Port of the service's admin endpoint.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// The current run's log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait().unwrap()
        {
            panic!(
                "{} exited with {status}; log:\n{}",
                self.name,
                self.log_text()
            );
        }
    }
}

impl Drop for Stack {
    /// A failed test's process logs would go with its temporary directory: when
    /// `PONTE_TEST_KEEP_LOGS` names a directory (deploy/local/stress.sh sets it), they are
    /// copied there first, under the stack's topic prefix.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Some(keep) = std::env::var_os("PONTE_TEST_KEEP_LOGS") else {
            return;
        };
        let dest = PathBuf::from(keep).join(self.prefix.trim_end_matches('.'));
        if std::fs::create_dir_all(&dest).is_err() {
            return;
        }
        for entry in std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = entry.path();
            if path.extension().is_some_and(|x| x == "log") {
                let _ = std::fs::copy(&path, dest.join(entry.file_name()));
            }
        }
        eprintln!("logs of the failed test kept in {}", dest.display());
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The state of `achievement` in a household's view (it must be listed).
pub fn achievement_state(
    h: &ponte_proto::compliance::v1::Household,
    achievement: &str,
) -> ponte_proto::compliance::v1::AchievementState {
    let a = h
        .achievements
        .iter()
        .find(|a| a.achievement == achievement)
        .unwrap_or_else(|| panic!("achievement {achievement} not in the household's view"));
    ponte_proto::compliance::v1::AchievementState::try_from(a.state)
        .unwrap_or_else(|_| panic!("achievement {achievement}: unknown state {}", a.state))
}

/// Polls `check` every 100 ms until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    within(timeout, check)
        .await
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// [`eventually`] that returns `None` when `timeout` passes, for a caller that then says more
/// about what was missing than [`eventually`]'s panic does.
pub async fn within<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the service's `GET /health/ready` answers 200.
pub async fn wait_ready(service: &mut Service) {
    let url = format!("http://127.0.0.1:{}/health/ready", service.admin_port);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        service.assert_running();
        if let Ok(r) = client.get(&url).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} not ready after 60 s; log:\n{}",
            service.name,
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of a Prometheus sample `name{labels}` from `GET /metrics`, summed over series
/// whose labels include every `label="value"` given; 0 when absent.
pub async fn metric(admin_port: u16, name: &str, labels: &[(&str, &str)]) -> f64 {
    parse_metric(&metrics_text(admin_port).await, name, labels)
}

/// Kafka clients labelled `client` the service replaced because they knew no broker any more
/// (`ponte_bus_clients_replaced_total`).
pub async fn clients_replaced(admin_port: u16, client: &str) -> f64 {
    metric(
        admin_port,
        "ponte_bus_clients_replaced_total",
        &[("client", client)],
    )
    .await
}

/// Waits until the service replaced its client labelled `client` (the system tests' stand-in
/// `PONTE_TEST_FORGET_BROKERS` shows statistics every 5 s, the second without brokers, then
/// 30 s without); returns how many it replaced.
pub async fn client_replaced(admin_port: u16, client: &str) -> f64 {
    eventually(
        &format!("the {client} client without brokers replaced"),
        Duration::from_secs(120),
        || async {
            let n = clients_replaced(admin_port, client).await;
            (n >= 1.0).then_some(n)
        },
    )
    .await
}

/// The whole `GET /metrics` answer of the service whose admin port is `admin_port`.
pub async fn metrics_text(admin_port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Sums the samples of `name` matching `labels` in Prometheus text format.
pub fn parse_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.find('{') {
                Some(i) => (&series[..i], &series[i..]),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Reads every record currently on `topic` (all partitions, from the beginning), waiting up
/// to `timeout` for at least `min` of them. Returns (key, payload) pairs.
pub fn read_topic(topic: &str, min: usize, timeout: Duration) -> Vec<(Vec<u8>, Vec<u8>)> {
    read_topic_at(broker(), topic, min, timeout)
}

/// Every committed message of `topic` as it is now: each partition read from its start to its
/// current end (`read_committed`, so the outputs of aborted transactions are not among them),
/// in partition order. Unlike [`read_topic`], which stops once `min` messages came and one poll
/// was empty — enough for a test that knows what to wait for, but short of the end on a busy
/// machine — this answers "what does the topic hold".
pub fn read_topic_to_end(topic: &str, timeout: Duration) -> Vec<(Vec<u8>, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("group.id", format!("it-reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    for p in md.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .unwrap();
        if high <= low {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p.id(), Offset::Offset(low))
            .unwrap();
        consumer.assign(&tpl).unwrap();
        loop {
            // The position also passes transaction markers and aborted messages, never delivered.
            let at = consumer.position().ok().and_then(|l| {
                l.find_partition(topic, p.id())
                    .and_then(|e| e.offset().to_raw())
            });
            if at.is_some_and(|o| o >= high) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{topic} partition {}: not read to its end {high} within {timeout:?}",
                p.id()
            );
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                out.push((
                    m.key().unwrap_or_default().to_vec(),
                    m.payload().unwrap_or_default().to_vec(),
                ));
            }
        }
    }
    out
}

/// The messages of `topic` once one of them is `wanted`: the topic read to its end again
/// (every 200 ms) until it holds such a message, for up to `timeout`. A test looking for one
/// message among several must not use [`read_topic`] with a smaller `min`: on a busy machine
/// its first fetch can bring other partitions' messages and an empty poll before the one
/// sought, and it returns without it.
pub fn read_topic_until(
    topic: &str,
    timeout: Duration,
    wanted: impl Fn(&[u8], &[u8]) -> bool,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let all = read_topic_to_end(topic, left.max(Duration::from_secs(10)));
        if all.iter().any(|(k, v)| wanted(k, v)) {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}: none of its {} messages is the one sought within {timeout:?}",
            all.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A Kafka broker of one test alone, on its own ports (`deploy/local/kafka.sh` with
/// `PONTE_KAFKA_PORT`/`PONTE_KAFKA_CONTROLLER_PORT`), for tests that stop and restart the
/// broker without disturbing the shared one. The broker jars are the shared cache's; the run
/// directory (`.cache/kafka-run-<port>`) is removed when the value is dropped.
#[derive(Debug)]
pub struct PrivateBroker {
    pub port: u16,
    pub controller_port: u16,
}

impl PrivateBroker {
    /// Starts a broker on two free ports and waits until it answers.
    pub fn start() -> Self {
        let b = PrivateBroker {
            port: free_port(),
            controller_port: free_port(),
        };
        b.run("start");
        b
    }

    /// `127.0.0.1:<port>`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn run(&self, action: &str) {
        let out = Command::new(repo_root().join("deploy/local/kafka.sh"))
            .arg(action)
            .env("PONTE_KAFKA_PORT", self.port.to_string())
            .env(
                "PONTE_KAFKA_CONTROLLER_PORT",
                self.controller_port.to_string(),
            )
            .env("PONTE_KAFKA_HEAP", "512m")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .unwrap_or_else(|e| panic!("running deploy/local/kafka.sh {action}: {e}"));
        assert!(out.success(), "deploy/local/kafka.sh {action} failed");
    }

    /// Stops the broker (SIGTERM, waits for it to exit); its data stays for `restart`.
    pub fn stop(&self) {
        self.run("stop");
    }

    /// Starts it again on the same ports and data, and waits until it answers.
    pub fn restart(&self) {
        self.run("start");
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("deploy/local/kafka.sh"))
            .arg("reset")
            .env("PONTE_KAFKA_PORT", self.port.to_string())
            .env(
                "PONTE_KAFKA_CONTROLLER_PORT",
                self.controller_port.to_string(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Like [`read_topic`], on the broker at `bootstrap`.
pub fn read_topic_at(
    bootstrap: &str,
    topic: &str,
    min: usize,
    timeout: Duration,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    read_topic_as(bootstrap, topic, min, timeout, "read_uncommitted")
}

/// [`read_topic_at`] as a `read_committed` reader: only messages of committed transactions (and
/// those written outside one), as downstream consumers (WatchChanges) see the topic.
pub fn read_committed_at(
    bootstrap: &str,
    topic: &str,
    min: usize,
    timeout: Duration,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    read_topic_as(bootstrap, topic, min, timeout, "read_committed")
}

fn read_topic_as(
    bootstrap: &str,
    topic: &str,
    min: usize,
    timeout: Duration,
    isolation: &str,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("it-reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            out.push((
                m.key().unwrap_or_default().to_vec(),
                m.payload().unwrap_or_default().to_vec(),
            ));
        } else if out.len() >= min {
            break;
        }
    }
    out
}

/// A valid NIS (docs/rules.md#identifiers: weights 3,2,9,8,7,6,5,4,3,2; DV = 11 − Σ mod 11,
/// 10 and 11 → 0) for each `n` below 9·10⁹; distinct `n` give distinct NIS.
pub fn valid_nis(n: u64) -> String {
    ponte_domain::ids::Nis::with_check_digit(&format!("{:010}", 1_000_000_000 + n))
        .expect("ten digits, not all equal")
        .to_string()
}

/// `grpcurl`, a gRPC client no one here wrote, installed by `deploy/local/setup.sh` into
/// `.cache/go-bin` (or named by `PONTE_GRPCURL`).
pub fn grpcurl() -> PathBuf {
    let path = std::env::var_os("PONTE_GRPCURL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache/go-bin/grpcurl"));
    assert!(
        path.exists(),
        "{} not found: run deploy/local/setup.sh",
        path.display()
    );
    path
}

/// Waits until every partition of the topics named `prefix*` answers a watermark query from
/// its leader.
pub async fn wait_for_leaders(bootstrap: &str, prefix: &str) {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    eventually("partition leaders", Duration::from_secs(60), || {
        let answered = consumer
            .fetch_metadata(None, Duration::from_secs(5))
            .ok()
            .and_then(|md| {
                let ours: Vec<(String, i32)> = md
                    .topics()
                    .iter()
                    .filter(|t| t.name().starts_with(prefix))
                    .flat_map(|t| t.partitions().iter().map(|p| (t.name().to_owned(), p.id())))
                    .collect();
                let all = !ours.is_empty()
                    && ours.iter().all(|(t, p)| {
                        consumer
                            .fetch_watermarks(t, *p, Duration::from_secs(5))
                            .is_ok()
                    });
                all.then_some(())
            });
        async move { answered }
    })
    .await;
}

/// Sends `file` with `ponte ingest <sector> FILE --url URL` paced at `rate` lines per second,
/// stops `broker` once `adapter` has acknowledged a first chunk, restarts it once a chunk has
/// failed, and returns the client's stdout and stderr after it finished successfully (it
/// re-sends on 503 until everything is acknowledged).
pub async fn ingest_through_broker_restart(
    stack: &Stack,
    broker: &PrivateBroker,
    adapter: &Service,
    sector: &str,
    file: &Path,
    url: &str,
    rate: u32,
) -> (String, String) {
    let out_path = stack.dir.path().join(format!("ingest-{sector}.out"));
    let rate = rate.to_string();
    let mut ingest = Command::new(ponte_bin())
        .args([
            "ingest",
            sector,
            file.to_str().expect("utf-8 path"),
            "--url",
            url,
            "--rate",
            &rate,
            "--retries",
            "100",
            "--max-wait-secs",
            "2",
            "--no-progress",
        ])
        .envs(stack.env())
        .env("PONTE_CLIENT_CERT", identity(sector).0)
        .env("PONTE_CLIENT_KEY", identity(sector).1)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Once the first chunk is acknowledged the batch is under way: stop the broker.
    eventually("the first chunk", Duration::from_secs(60), || async {
        let n = metric(
            adapter.admin_port(),
            "ponte_adapter_records_accepted_total",
            &[],
        )
        .await;
        (n > 0.0).then_some(())
    })
    .await;
    broker.stop();
    // The adapter fails a chunk while the broker is away (and answers 503)...
    eventually("a failed chunk", Duration::from_secs(120), || async {
        let n = metric(
            adapter.admin_port(),
            "ponte_adapter_publish_failures_total",
            &[],
        )
        .await;
        (n > 0.0).then_some(())
    })
    .await;
    // ...and the broker comes back.
    broker.restart();

    // `None`: still running at the deadline, then killed.
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(s) = ingest.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = ingest.kill();
            let _ = ingest.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // What the client said (each attempt and why it was retried) and the adapter's log, for
    // whoever reads a failure.
    let out = std::fs::read_to_string(&out_path).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut ingest.stderr.take().unwrap(), &mut err).unwrap();
    let Some(status) = status else {
        panic!(
            "ponte ingest did not finish within 300 s of the broker's restart\n{out}\n{err}\nadapter:\n{}",
            adapter.log_text()
        );
    };
    assert!(
        status.success(),
        "{out}\n{err}\nadapter:\n{}",
        adapter.log_text()
    );
    (out, err)
}

/// A provisional CNS (starts with 7) whose weighted sum is a multiple of 11.
pub fn valid_cns(i: u64) -> String {
    let body = format!("7{:013}", i);
    let digits: Vec<u32> = body.chars().map(|c| c.to_digit(10).unwrap()).collect();
    let sum: u32 = digits
        .iter()
        .enumerate()
        .map(|(k, d)| d * (15 - k as u32))
        .sum();
    // The last digit has weight 1: choose it so the total is ≡ 0 (mod 11); skip bodies
    // needing 10.
    let last = (11 - sum % 11) % 11;
    if last == 10 {
        return valid_cns(i + 1_000_000);
    }
    let s = format!("{body}{last}");
    ponte_domain::ids::Cns::parse(&s)
        .expect("a valid CNS by construction")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pki_directories_of_ended_test_processes_are_removed_and_no_other() {
        let tmp = tempfile::tempdir().unwrap();
        let names = [
            format!("{PKI_PREFIX}{}-live", std::process::id()),
            format!("{PKI_PREFIX}999999999-ended"),
            format!("{PKI_PREFIX}nopid"),
            "someone-else-999999999-x".to_owned(),
        ];
        for n in &names {
            std::fs::create_dir_all(tmp.path().join(n).join("pki")).unwrap();
        }
        remove_pki_of_ended_processes(tmp.path());
        let left: Vec<bool> = names.iter().map(|n| tmp.path().join(n).exists()).collect();
        if Path::new("/proc/self").exists() {
            assert_eq!(left, vec![true, false, true, true]);
        } else {
            assert_eq!(left, vec![true; 4]);
        }
    }

    #[test]
    fn free_ports_are_never_handed_out_twice_and_stay_below_the_ephemeral_range() {
        let ephemeral_from = ephemeral_port_start();
        let ports: Vec<u16> = (0..500).map(|_| free_port()).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        assert!(
            ephemeral_from <= 11_000 || ports.iter().all(|&p| p < ephemeral_from),
            "a port in the ephemeral range (from {ephemeral_from}): {ports:?}"
        );
        // Each is free: a listener can take it.
        for p in &ports[..20] {
            TcpListener::bind(("127.0.0.1", *p)).unwrap();
        }
    }
}
