//! A Kafka broker run the way a production cluster should be: SASL_SSL with SCRAM-SHA-512 and
//! ACLs, one principal per Ponte service (`PONTE_KAFKA_SECURE=1 deploy/local/kafka.sh start`,
//! docs/security.md "Kafka: SASL_SSL and ACLs"), and `ponte` processes that reach it with their
//! own principal's credentials.
//!
//! The broker is one test's alone, on its own ports, and its run directory (certificates,
//! passwords, data) is removed when the [`SecureBroker`] is dropped. Nothing here uses the shared
//! plaintext broker, so a test built on it runs with no `PONTE_TEST_BOOTSTRAP`.
//!
//! The ACLs name topics by prefix, so the broker is started for one topic prefix and one
//! reconciler consumer group; [`SecureStack`] uses the same two. Its services' own listeners run
//! as in every other system test: TLS with the test process' development PKI, callers
//! authenticated, the development access policy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;

use crate::{free_port, http_client, pki, ponte_bin, repo_root, sender_of};

/// The principals `kafka.sh` creates, admin first.
pub const PRINCIPALS: [&str; 5] = [
    "admin",
    "education-adapter",
    "health-adapter",
    "assistance-adapter",
    "reconciler",
];

/// A SASL_SSL broker with ACLs on two free ports; reset (stopped, run directory deleted) on drop.
#[derive(Debug)]
pub struct SecureBroker {
    pub port: u16,
    pub controller_port: u16,
    /// The topic prefix the ACLs were written for (`<prefix><base name>`).
    pub topic_prefix: String,
    /// The reconciler's consumer group the ACLs allow (a prefixed pattern).
    pub reconciler_group: String,
    run_dir: PathBuf,
}

impl SecureBroker {
    /// Starts a broker whose ACLs are written for topics named `<topic_prefix><base>` and the
    /// reconciler group `reconciler_group`, and waits until the ACLs are in place.
    pub fn start(topic_prefix: &str, reconciler_group: &str) -> Self {
        let port = free_port();
        let cache = std::env::var_os("PONTE_CACHE_DIR")
            .map(PathBuf::from)
            .map(|p| {
                if p.is_absolute() {
                    p
                } else {
                    repo_root().join(p)
                }
            })
            .unwrap_or_else(|| repo_root().join(".cache"));
        let b = SecureBroker {
            port,
            controller_port: free_port(),
            topic_prefix: topic_prefix.to_owned(),
            reconciler_group: reconciler_group.to_owned(),
            run_dir: cache.join(format!("kafka-run-{port}")),
        };
        let status = b
            .script("start")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .expect("running deploy/local/kafka.sh start (secure)");
        assert!(
            status.success(),
            "deploy/local/kafka.sh start (secure) failed"
        );
        b
    }

    fn script(&self, action: &str) -> Command {
        let mut cmd = Command::new(repo_root().join("deploy/local/kafka.sh"));
        cmd.arg(action)
            .current_dir(repo_root())
            .env("PONTE_KAFKA_SECURE", "1")
            .env("PONTE_KAFKA_PORT", self.port.to_string())
            .env(
                "PONTE_KAFKA_CONTROLLER_PORT",
                self.controller_port.to_string(),
            )
            .env("PONTE_KAFKA_HEAP", "512m")
            .env("PONTE_KAFKA_TOPIC_PREFIX", &self.topic_prefix)
            .env("PONTE_KAFKA_RECONCILER_GROUP", &self.reconciler_group);
        if let Some(cache) = self.run_dir.parent() {
            cmd.env("PONTE_CACHE_DIR", cache);
        }
        cmd
    }

    /// `127.0.0.1:<port>`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's run directory (`.cache/kafka-run-<port>`).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The ACL rules `kafka.sh` applied, one binding a line
    /// (`principal resource-type pattern-type name operation`).
    pub fn acl_rules(&self) -> String {
        std::fs::read_to_string(self.run_dir.join("secure/acls.txt")).unwrap()
    }

    /// The Ponte config file (`--config` / `PONTE_CONFIG`) of `principal`: its `[kafka]`
    /// section with the bootstrap address and the SASL_SSL properties.
    pub fn config_file(&self, principal: &str) -> PathBuf {
        assert!(PRINCIPALS.contains(&principal), "no principal {principal}");
        self.run_dir.join(format!("clients/{principal}.toml"))
    }

    /// The librdkafka properties of `principal` (bootstrap servers included): security
    /// protocol, SASL mechanism, username, password and CA file.
    pub fn properties(&self, principal: &str) -> Vec<(String, String)> {
        assert!(PRINCIPALS.contains(&principal), "no principal {principal}");
        let path = self.run_dir.join(format!("clients/{principal}.properties"));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.split_once('=').expect("key=value");
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }

    /// A librdkafka config authenticated as `principal`.
    pub fn client_config(&self, principal: &str) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        for (k, v) in self.properties(principal) {
            cfg.set(k, v);
        }
        cfg
    }

    /// The environment that makes a `ponte` process use `principal`'s credentials. Ponte's
    /// `PONTE__SECTION__KEY` variables cannot carry librdkafka's dotted keys (the loader
    /// splits keys at dots as well), so this names `principal`'s config file in `PONTE_CONFIG`.
    pub fn env(&self, principal: &str) -> Vec<(String, String)> {
        vec![(
            "PONTE_CONFIG".to_owned(),
            self.config_file(principal).display().to_string(),
        )]
    }
}

impl Drop for SecureBroker {
    fn drop(&mut self) {
        let _ = self
            .script("reset")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// One test's Ponte deployment against a [`SecureBroker`]: a work directory, ports per service,
/// and every process started with the credentials of the principal it is given.
#[derive(Debug)]
pub struct SecureStack<'b> {
    pub broker: &'b SecureBroker,
    pub dir: tempfile::TempDir,
    /// Added to every process' environment last (e.g. listener settings).
    pub extra_env: BTreeMap<String, String>,
    ports: std::sync::Mutex<BTreeMap<String, (u16, u16)>>,
}

impl<'b> SecureStack<'b> {
    pub fn new(broker: &'b SecureBroker) -> Self {
        let stack = SecureStack {
            broker,
            dir: tempfile::tempdir().unwrap(),
            extra_env: BTreeMap::new(),
            ports: Default::default(),
        };
        std::fs::write(stack.policy_file(), ponte_access::policy::dev_policy_toml()).unwrap();
        stack
    }

    /// The access policy file of the stack's services (the development policy).
    pub fn policy_file(&self) -> PathBuf {
        self.dir.path().join("policy.toml")
    }

    /// Full name of a topic by its base name.
    pub fn topic(&self, base: &str) -> String {
        format!("{}{base}", self.broker.topic_prefix)
    }

    /// The (main, admin) ports of a service, allocated on first use.
    pub fn ports(&self, service: &str) -> (u16, u16) {
        *self
            .ports
            .lock()
            .unwrap()
            .entry(service.to_owned())
            .or_insert_with(|| (free_port(), free_port()))
    }

    /// URL on an adapter's HTTPS API.
    pub fn url(&self, service: &str, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.ports(service).0)
    }

    /// An HTTP client presenting the certificate of the sector system that sends to `service`.
    pub fn client_for(&self, service: &str) -> reqwest::Client {
        http_client(sender_of(service))
    }

    /// The environment of a `ponte` process run as Kafka principal `principal`: its config
    /// file, the stack's topic prefix and reconciler group, every service's listen addresses,
    /// and the listeners' TLS and access settings.
    pub fn env(&self, principal: &str) -> BTreeMap<String, String> {
        let path = |p: &Path| p.display().to_string();
        let mut env: BTreeMap<String, String> = self.broker.env(principal).into_iter().collect();
        for (k, v) in [
            ("PONTE__KAFKA__MESSAGE_TIMEOUT_MS", "10000".to_owned()),
            ("PONTE__TOPICS__PREFIX", self.broker.topic_prefix.clone()),
            ("PONTE__TOPICS__PARTITIONS", "3".to_owned()),
            (
                "PONTE__RECONCILER__GROUP_ID",
                self.broker.reconciler_group.clone(),
            ),
            (
                "PONTE__RECONCILER__STATE_DIR",
                self.dir.path().join("reconciler").display().to_string(),
            ),
            ("PONTE__RECONCILER__SESSION_TIMEOUT_MS", "6000".to_owned()),
            ("RUST_LOG", "info,librdkafka=warn".to_owned()),
            ("PONTE__TLS__CERT_FILE", path(&pki().server.cert)),
            ("PONTE__TLS__KEY_FILE", path(&pki().server.key)),
            ("PONTE__TLS__CLIENT_CA_FILE", path(&pki().ca.cert)),
            ("PONTE__ACCESS__POLICY_FILE", path(&self.policy_file())),
        ] {
            env.insert(k.to_owned(), v);
        }
        env.extend(crate::audit_env());
        for service in [
            "education-adapter",
            "health-adapter",
            "assistance-adapter",
            "reconciler",
        ] {
            let (main, admin) = self.ports(service);
            let sec = service.replace('-', "_").to_uppercase();
            let listen = if service == "reconciler" {
                "GRPC_LISTEN"
            } else {
                "LISTEN"
            };
            env.insert(
                format!("PONTE__{sec}__{listen}"),
                format!("127.0.0.1:{main}"),
            );
            env.insert(
                format!("PONTE__{sec}__ADMIN_LISTEN"),
                format!("127.0.0.1:{admin}"),
            );
        }
        env.extend(self.extra_env.clone());
        env
    }

    /// Runs `ponte <args>` as `principal` to completion: (status, stdout, stderr).
    pub fn ponte(&self, principal: &str, args: &[&str]) -> (ExitStatus, String, String) {
        self.ponte_with(principal, args, &[])
    }

    /// [`SecureStack::ponte`] with `overrides` on top of the environment; fails the test if the
    /// command has not finished within 60 s (a service that should stop at start but runs on).
    pub fn ponte_with(
        &self,
        principal: &str,
        args: &[&str],
        overrides: &[(&str, String)],
    ) -> (ExitStatus, String, String) {
        let name = args.join("-");
        let (out_path, err_path) = (
            self.dir.path().join(format!("run-{name}.out")),
            self.dir.path().join(format!("run-{name}.err")),
        );
        let mut child = Command::new(ponte_bin())
            .args(args)
            .env_remove("PONTE_CONFIG")
            .envs(self.env(principal))
            .envs(overrides.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(self.dir.path())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "ponte {args:?} as {principal} still running after 60 s; stderr:\n{}",
                    std::fs::read_to_string(&err_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        (
            status,
            std::fs::read_to_string(&out_path).unwrap_or_default(),
            std::fs::read_to_string(&err_path).unwrap_or_default(),
        )
    }

    /// Starts `ponte <service>` as `principal`; its log goes to `<service>.log` in the stack's
    /// directory.
    pub fn spawn(&self, service: &str, principal: &str) -> SecureService {
        let log = self.dir.path().join(format!("{service}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(ponte_bin())
            .arg(service)
            .env_remove("PONTE_CONFIG")
            .envs(self.env(principal))
            .current_dir(self.dir.path())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        SecureService {
            name: service.to_owned(),
            child,
            log,
            admin_port: self.ports(service).1,
        }
    }
}

/// A running `ponte` service process of a [`SecureStack`]. Killed when dropped.
#[derive(Debug)]
pub struct SecureService {
    pub name: String,
    child: Child,
    pub log: PathBuf,
    admin_port: u16,
}

impl SecureService {
    /// Port of the service's admin endpoint (`/metrics`, `/health/*`).
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// The process' log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "{} exited with {status}; log:\n{}",
                self.name,
                self.log_text()
            );
        }
    }

    /// Waits until `GET /health/ready` answers 200 (the service reaches the broker).
    pub async fn wait_ready(&mut self) {
        let url = format!("http://127.0.0.1:{}/health/ready", self.admin_port);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.assert_running();
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready after 60 s; log:\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for SecureService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
