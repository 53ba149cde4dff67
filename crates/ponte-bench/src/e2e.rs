//! End to end through the real processes: `ponte topics ensure`, the three adapters and the
//! reconciler started as in production (own topic prefix, ports and state directory), the
//! simulator's files sent with `ponte ingest`, and the clock stopped when the reconciler has
//! consumed every valid record from the input topics, committed everything it consumed
//! (`ponte_reconciler_batch_events_sum`, recorded after each atomic commit; it counts the
//! repartition topics' messages too), published every output and gone quiet: the records have
//! been through all three stages, and readable: `GetPerson` answers from the state of the
//! instance owning a record's partition, so a record is in its answers once its epoch committed.
//! Latency percentiles come from the reconciler's `ponte_reconciler_ingest_to_view_seconds`
//! histogram.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ponte_integration_tests::free_port;
use ponte_proto::compliance::v1::GetPersonRequest;
use ponte_proto::compliance::v1::compliance_service_client::ComplianceServiceClient;

use crate::events::ManifestEntry;

/// A service process and its admin port.
struct Service {
    name: &'static str,
    child: Child,
    admin: u16,
    /// What this process's environment changes of the pipeline's (another reconciler
    /// instance's state directory and ports, an advertised address).
    own_env: BTreeMap<String, String>,
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            // Already exited (and reaped): its pid may belong to someone else by now.
            return;
        }
        // SIGTERM for a graceful stop; the process is ours (spawned above).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The steps of a commit, in order (`phase` of `ponte_reconciler_commit_phase_seconds`).
const COMMIT_PHASES: [&str; 5] = ["send", "acknowledged", "offsets", "commit", "store"];

/// Figures of one run.
#[derive(Debug)]
pub(crate) struct Figures {
    pub(crate) records: u64,
    pub(crate) ingest: Duration,
    pub(crate) to_view: Duration,
    /// Share of the whole machine's cores busy from the first record sent until the view was
    /// complete (every process, not only ours).
    pub(crate) busy_to_view: Option<f64>,
    /// CPU seconds of the broker's processes over the same time.
    pub(crate) broker_cpu_to_view: Option<f64>,
    /// Ingest-to-view of the whole load.
    pub(crate) latency: Latency,
    /// CPU seconds (user + system) per process.
    pub(crate) cpu: Vec<(String, f64)>,
    pub(crate) batches: f64,
    /// Events the epochs held in all (`ponte_reconciler_batch_events`): input records and
    /// repartition messages (a batch's entries) alike.
    pub(crate) epoch_events: f64,
    /// Messages the reconciler produced, by kind (`ponte_reconciler_outputs_published_total`).
    pub(crate) produced: Vec<(String, f64)>,
    /// Repartition messages the reconciler produced, by kind, batched or not
    /// (`ponte_reconciler_repartition_entries_published_total`): what its batches of each kind
    /// (counted in `produced` as one message each) held.
    pub(crate) repartitioned: Vec<(String, f64)>,
    /// Changelog entries the reconciler produced, by state table
    /// (`ponte_reconciler_changelog_entries_total`).
    pub(crate) changelog: Vec<(String, f64)>,
    /// Messages the reconciler consumed, by what they are: the input records, each internal
    /// topic and the changelog entries it restored. Reads consume nothing: they are answered
    /// from the state of the instance owning the partition.
    pub(crate) consumed: Vec<(String, f64)>,
    pub(crate) commit_seconds: f64,
    /// Seconds the consumer loop spent applying events (`ponte_reconciler_epoch_apply_seconds`).
    pub(crate) apply_seconds: f64,
    /// Seconds of the commits by step (`ponte_reconciler_commit_phase_seconds`), in commit order.
    pub(crate) commit_phases: Vec<(String, f64)>,
    pub(crate) state_bytes: f64,
    /// The outcome gauges' counts until the view was complete and the seconds they took in all
    /// (`ponte_reconciler_outcome_count_seconds`): a scan of every counts row, off the loop.
    pub(crate) outcome_counts: (f64, f64),
    /// `ghz` summaries: (call, text).
    pub(crate) ghz: Vec<(String, String)>,
    /// `GetPerson` at ghz's rate from this process's own client, after ghz.
    pub(crate) paced_reads: Option<crate::paced_reads::Outcome>,
    /// Restarts of the reconciler on its state (with `Setup::restart`), in the order run.
    pub(crate) restarts: Vec<Restart>,
    /// The paced follow-up (with `Setup::paced`).
    pub(crate) paced: Option<PacedFigures>,
    /// The audit log's entries and bytes once the view was complete (with `Setup::audit`).
    pub(crate) audit: Option<(u64, u64)>,
}

/// A paced follow-up once the bulk load is in the view: a later bimester's attendance of the
/// first pupils, sent as small CSV requests on a fixed schedule (as a sectoral system pushing
/// records as they happen). The bulk load measures throughput, and its ingest-to-view latency
/// is the backlog's; this measures the path under a load the reconciler keeps up with, on the
/// state the bulk load left. Each request is answered only once its records are on the bus,
/// and the adapter stamps them with the time the request arrived.
#[derive(Debug, Clone)]
pub(crate) struct Paced {
    /// An education CSV of the same population (header first); its first `records` lines are sent.
    pub(crate) source: PathBuf,
    pub(crate) records: u64,
    /// Records per second.
    pub(crate) rate: u32,
    /// Records per request.
    pub(crate) batch: u32,
}

/// Figures of the paced follow-up.
#[derive(Debug)]
pub(crate) struct PacedFigures {
    pub(crate) records: u64,
    pub(crate) rate: u32,
    pub(crate) batch: u32,
    /// From the first request until the adapter acknowledged the last record.
    pub(crate) ingest: Duration,
    /// Adapter answers (request sent → 200 with every record accepted): p50, p99, slowest.
    pub(crate) answer: (Duration, Duration, Duration),
    /// From the first request until the view was complete again.
    pub(crate) to_view: Duration,
    /// Ingest-to-view of these records only (the histogram's buckets after minus before).
    pub(crate) latency: Latency,
    /// Reconciler CPU seconds spent meanwhile.
    pub(crate) reconciler_cpu: f64,
}

/// Quantiles of a Prometheus histogram, by interpolation inside buckets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Latency {
    pub(crate) p50: Option<f64>,
    pub(crate) p90: Option<f64>,
    pub(crate) p99: Option<f64>,
    pub(crate) count: f64,
}

impl Latency {
    fn of(buckets: &[(f64, f64)]) -> Latency {
        Latency {
            p50: quantile(buckets, 0.50),
            p90: quantile(buckets, 0.90),
            p99: quantile(buckets, 0.99),
            count: buckets.last().map(|b| b.1).unwrap_or(0.0),
        }
    }
}

/// A `ghz` load run against the reconciler's gRPC server while the view is complete.
#[derive(Debug, Clone)]
pub(crate) struct Ghz {
    pub(crate) bin: PathBuf,
    /// Requests per second asked for (0 = as fast as possible).
    pub(crate) rps: u32,
    pub(crate) seconds: u32,
    pub(crate) concurrency: u32,
    /// The repository's `proto/` directory.
    pub(crate) protos: PathBuf,
}

/// The standard gRPC health service definition (grpc/grpc `doc/health-checking.md`), the
/// `Check` method only.
const HEALTH_PROTO: &str = r#"syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
service Health { rpc Check(HealthCheckRequest) returns (HealthCheckResponse); }
"#;

pub(crate) struct Setup<'a> {
    pub(crate) ponte: &'a Path,
    pub(crate) bootstrap: &'a str,
    pub(crate) prefix: &'a str,
    pub(crate) partitions: i32,
    pub(crate) work: &'a Path,
    pub(crate) data: &'a Path,
    pub(crate) ghz: Option<Ghz>,
    /// Once the view is complete (and after `ghz`), restart the reconciler on its state: after
    /// SIGTERM, then after SIGKILL.
    pub(crate) restart: bool,
    /// Give up when the view is not complete this long after the ingest began.
    pub(crate) view_timeout: Duration,
    /// Once the view is complete (before `ghz` and the restarts), a paced follow-up.
    pub(crate) paced: Option<Paced>,
    /// TLS and client certificates on every listener (bulk load only).
    pub(crate) tls: bool,
    /// The audit log on (keys made in the work directory).
    pub(crate) audit: bool,
}

/// The processes of a run, started, fed the population and with the view complete; dropping it
/// stops them (SIGTERM).
pub(crate) struct Pipeline {
    services: Vec<Service>,
    /// The environment every `ponte` process was started with (its whole configuration).
    env: BTreeMap<String, String>,
    /// The reconciler's gRPC address (`host:port`).
    pub(crate) grpc: String,
    /// The figures measured up to the complete view (`ghz` empty).
    pub(crate) figures: Figures,
}

impl Pipeline {
    /// Process id of the `ponte` service `name` (`reconciler`, `education-adapter`, ...).
    pub(crate) fn pid(&self, name: &str) -> Option<u32> {
        self.services
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.child.id())
    }
}

/// End to end, then (with `s.ghz`) ghz against the reconciler's complete view, and at a rate
/// the same `GetPerson` calls from this process's own client ([`crate::paced_reads`]).
pub(crate) async fn run(s: &Setup<'_>) -> anyhow::Result<Figures> {
    let mut pipeline = start(s).await?;
    if let Some(p) = &s.paced {
        pipeline.figures.paced = Some(pipeline.paced(s, p).await?);
    }
    if let Some(g) = &s.ghz {
        pipeline.figures.ghz = load(s, g, &pipeline.grpc)?;
        if g.rps > 0 {
            let pace = crate::paced_reads::Pace {
                rate: g.rps,
                seconds: g.seconds,
                connections: 2,
            };
            let nis = nis_sample(s.data, 10_000)?;
            let server: Vec<u32> = pipeline.pid("reconciler").into_iter().collect();
            pipeline.figures.paced_reads =
                Some(crate::paced_reads::get_person(&pipeline.grpc, &nis, pace, &server).await?);
        }
    }
    if s.restart {
        let nis = known_nis(s.data, &pipeline.grpc).await?;
        for stop in [Stop::Graceful, Stop::Crash, Stop::LostDisk] {
            let r = pipeline.restart_reconciler(s, stop, &nis).await?;
            pipeline.figures.restarts.push(r);
        }
    }
    let Pipeline {
        services, figures, ..
    } = pipeline;
    drop(services);
    Ok(figures)
}

/// Starts the processes, sends the population and waits until the view is complete.
pub(crate) async fn start(s: &Setup<'_>) -> anyhow::Result<Pipeline> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut set = |k: &str, v: String| env.insert(k.to_owned(), v);
    set("PONTE__KAFKA__BOOTSTRAP_SERVERS", s.bootstrap.to_owned());
    set("PONTE__TOPICS__PREFIX", s.prefix.to_owned());
    set("PONTE__TOPICS__PARTITIONS", s.partitions.to_string());
    set("PONTE__LOG__FILTER", "warn".to_owned());
    set(
        "PONTE__RECONCILER__STATE_DIR",
        reconciler_state_dir(s.work).display().to_string(),
    );
    set(
        "PONTE__RECONCILER__GROUP_ID",
        format!("{}reconciler", s.prefix),
    );
    // Without --tls the pipeline runs plaintext and unauthenticated (as before issue 14):
    // explicit `insecure`, with each process' callers acting as its development principal of
    // the development access policy. With --tls, every listener has TLS and every caller its
    // client certificate.
    if crate::events::follows_households(s.data)? {
        // A Unidos population: the reconciler follows households with the Unidos rule set.
        let rules = s.work.join("unidos-2021.toml");
        std::fs::write(&rules, crate::events::UNIDOS_RULES)
            .with_context(|| format!("writing {}", rules.display()))?;
        set(
            "PONTE__RECONCILER__ACHIEVEMENT_RULES_FILE",
            rules.display().to_string(),
        );
    }
    let policy = s.work.join("access-policy.toml");
    std::fs::write(&policy, ponte_access::policy::dev_policy_toml())
        .with_context(|| format!("writing {}", policy.display()))?;
    set("PONTE__ACCESS__POLICY_FILE", policy.display().to_string());
    if s.audit {
        for (k, v) in audit_env(&s.work.join("audit-keys"))? {
            if let Some(v) = v {
                set(k, v);
            }
        }
    } else {
        // The baseline: no log (the services warn and say so in ponte_audit_disabled).
        set("PONTE__AUDIT__DISABLED", "true".to_owned());
    }
    let pki = if s.tls {
        anyhow::ensure!(
            s.ghz.is_none() && !s.restart && s.paced.is_none(),
            "--tls measures the bulk load only: not with --ghz, --restart or --paced-rate"
        );
        let pki = ponte_access::pki::generate_dev(&s.work.join("pki"), true)?;
        set(
            "PONTE__TLS__CERT_FILE",
            pki.server.cert.display().to_string(),
        );
        set("PONTE__TLS__KEY_FILE", pki.server.key.display().to_string());
        set(
            "PONTE__TLS__CLIENT_CA_FILE",
            pki.ca.cert.display().to_string(),
        );
        Some(pki)
    } else {
        set("PONTE__TLS__INSECURE", "true".to_owned());
        set(
            "PONTE__ACCESS__ANONYMOUS_PRINCIPAL",
            ponte_access::policy::dev_principal("federal"),
        );
        None
    };
    // Ports below the kernel's ephemeral range, never the same twice (the system tests'
    // choice): a port the kernel picks for port 0 can be taken by an outgoing connection (a
    // Kafka client's) before the process given it binds it — a 10 M people run was lost so.
    let grpc = format!("127.0.0.1:{}", free_port());
    set("PONTE__RECONCILER__GRPC_LISTEN", grpc.clone());
    let mut listen = BTreeMap::new();
    let mut admin = BTreeMap::new();
    for svc in [
        "education_adapter",
        "health_adapter",
        "assistance_adapter",
        "reconciler",
    ] {
        let a = free_port();
        admin.insert(svc, a);
        set(
            &format!("PONTE__{}__ADMIN_LISTEN", svc.to_uppercase()),
            format!("127.0.0.1:{a}"),
        );
        if svc != "reconciler" {
            let l = free_port();
            listen.insert(svc, l);
            set(
                &format!("PONTE__{}__LISTEN", svc.to_uppercase()),
                format!("127.0.0.1:{l}"),
            );
        }
    }
    let command = |args: &[&str]| {
        let mut c = Command::new(s.ponte);
        c.args(args).envs(&env);
        c
    };
    let out = command(&["topics", "ensure"]).output()?;
    anyhow::ensure!(
        out.status.success(),
        "ponte topics ensure: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut services = Vec::new();
    for (name, svc) in [
        ("education-adapter", "education_adapter"),
        ("health-adapter", "health_adapter"),
        ("assistance-adapter", "assistance_adapter"),
        ("reconciler", "reconciler"),
    ] {
        let log = std::fs::File::create(s.work.join(format!("{name}.log")))?;
        let mut command = command(&[name]);
        if let Some(sector) = name.strip_suffix("-adapter")
            && pki.is_none()
        {
            command.env(
                "PONTE__ACCESS__ANONYMOUS_PRINCIPAL",
                ponte_access::policy::dev_principal(sector),
            );
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting ponte {name}"))?;
        services.push(Service {
            name,
            child,
            admin: admin[svc],
            own_env: BTreeMap::new(),
        });
    }
    for svc in &services {
        wait_ready(svc).await?;
    }

    let manifest = crate::events::manifest(s.data)?;
    let expected: u64 = manifest.iter().map(|e| e.records - e.malformed).sum();
    let port_of = |e: &ManifestEntry| match e.sector.as_str() {
        "education" => listen["education_adapter"],
        "health" => listen["health_adapter"],
        _ => listen["assistance_adapter"],
    };
    let ingest = |e: &ManifestEntry| -> anyhow::Result<Child> {
        let scheme = if pki.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{}{}", port_of(e), e.endpoint);
        let file = s.data.join(&e.file);
        let mut c = command(&["ingest", &e.sector]);
        if let Some(pki) = &pki {
            let client = pki
                .clients
                .iter()
                .find(|c| c.spec.name == e.sector)
                .with_context(|| format!("no development principal for {}", e.sector))?;
            c.arg("--ca")
                .arg(&pki.ca.cert)
                .arg("--cert")
                .arg(&client.files.cert)
                .arg("--key")
                .arg(&client.files.key);
        }
        Ok(c.arg(&file)
            .args([
                "--url",
                &url,
                "--content-type",
                &e.content_type,
                "--no-progress",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?)
    };
    let started = Instant::now();
    let jiffies_at_start = machine_jiffies();
    let broker_at_start = broker_cpu_seconds();
    // The registry first (as a programme's public precedes its follow-up), then every sector
    // at once, each sector's files one after the other.
    let (registry, rest): (Vec<_>, Vec<_>) =
        manifest.iter().partition(|e| e.endpoint == "/v1/persons");
    for e in &registry {
        let status = ingest(e)?.wait()?;
        anyhow::ensure!(status.success(), "ponte ingest {} failed", e.file);
    }
    let mut by_sector: BTreeMap<&str, Vec<&ManifestEntry>> = BTreeMap::new();
    for e in rest {
        by_sector.entry(e.endpoint.as_str()).or_default().push(e);
    }
    let sectors: Vec<Vec<&ManifestEntry>> = by_sector.into_values().collect();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let joins: Vec<_> = sectors
            .iter()
            .map(|files| {
                let ingest = &ingest;
                scope.spawn(move || -> anyhow::Result<()> {
                    for e in files {
                        let status = ingest(e)?.wait()?;
                        anyhow::ensure!(status.success(), "ponte ingest {} failed", e.file);
                    }
                    Ok(())
                })
            })
            .collect();
        for j in joins {
            j.join()
                .map_err(|_| anyhow::anyhow!("ingest thread panicked"))??;
        }
        Ok(())
    })?;
    let ingest_time = started.elapsed();

    let rec_admin = admin["reconciler"];
    let (metrics, done) = wait_settled(
        rec_admin,
        expected as f64,
        started,
        started + s.view_timeout,
    )
    .await?;
    let to_view = done - started;
    let busy_to_view = busy_since(jiffies_at_start);
    let broker_cpu_to_view = broker_at_start
        .zip(broker_cpu_seconds())
        .map(|(before, after)| after - before);
    let buckets = histogram(&metrics, LATENCY);
    let cpu = services
        .iter()
        .map(|svc| {
            (
                svc.name.to_owned(),
                cpu_seconds(svc.child.id()).unwrap_or(f64::NAN),
            )
        })
        .collect();
    let figures = Figures {
        records: expected,
        ingest: ingest_time,
        to_view,
        busy_to_view,
        broker_cpu_to_view,
        latency: Latency::of(&buckets),
        cpu,
        batches: metric(&metrics, "ponte_reconciler_batch_events_count"),
        epoch_events: metric(&metrics, "ponte_reconciler_batch_events_sum"),
        produced: by_label(&metrics, "ponte_reconciler_outputs_published_total", "kind"),
        repartitioned: by_label(
            &metrics,
            "ponte_reconciler_repartition_entries_published_total",
            "kind",
        ),
        changelog: by_label(
            &metrics,
            "ponte_reconciler_changelog_entries_total",
            "table",
        ),
        consumed: consumed_by_kind(&metrics),
        commit_seconds: metric(&metrics, "ponte_reconciler_batch_commit_seconds_sum"),
        apply_seconds: metric(&metrics, "ponte_reconciler_epoch_apply_seconds_sum"),
        commit_phases: commit_phases(&metrics),
        state_bytes: metric(&metrics, "ponte_reconciler_state_bytes"),
        outcome_counts: (
            metric(&metrics, "ponte_reconciler_outcome_count_seconds_count"),
            metric(&metrics, "ponte_reconciler_outcome_count_seconds_sum"),
        ),
        ghz: Vec::new(),
        paced_reads: None,
        restarts: Vec::new(),
        paced: None,
        audit: if s.audit {
            let kafka = ponte_bus::KafkaConfig {
                bootstrap_servers: s.bootstrap.to_owned(),
                message_timeout_ms: 30_000,
                properties: Default::default(),
            };
            let topic = format!("{}audit.v1", s.prefix);
            let counted = tokio::task::spawn_blocking(move || {
                let (mut entries, mut bytes) = (0u64, 0u64);
                ponte_audit::log::scan_topic(&kafka, &topic, |_, b| {
                    entries += 1;
                    bytes += b.len() as u64;
                })
                .map(|()| (entries, bytes))
            })
            .await??;
            Some(counted)
        } else {
            None
        },
    };
    Ok(Pipeline {
        services,
        env,
        grpc,
        figures,
    })
}

/// The reconciler's state directory in a run's work directory.
fn reconciler_state_dir(work: &Path) -> PathBuf {
    work.join("reconciler")
}

/// Deletes the reconciler's state of the run whose work directory is `work` (its stores: GBs
/// at millions of people, useless once the run's topics are gone), a second instance's too;
/// the logs stay.
pub(crate) fn delete_reconciler_state(work: &Path) {
    for dir in [reconciler_state_dir(work), work.join("reconciler-2")] {
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("deleting {}: {e}", dir.display());
        }
    }
}

/// Polls the reconciler's metrics every 100 ms until it has consumed `inputs` records from the
/// input topics, committed everything it consumed, published every output and then consumed
/// nothing for 300 ms (the repartition topics are empty too): the metrics then, and when it
/// went quiet. A progress line a minute; an error at `deadline`.
async fn wait_settled(
    admin: u16,
    inputs: f64,
    started: Instant,
    deadline: Instant,
) -> anyhow::Result<(String, Instant)> {
    let mut progress = Instant::now();
    let mut quiet_since: Option<(f64, Instant)> = None;
    loop {
        let text = scrape(admin).await?;
        let consumed = metric(&text, "ponte_reconciler_events_consumed_total");
        let consumed_inputs = inputs_consumed(&text);
        let settled = consumed_inputs >= inputs
            && metric(&text, "ponte_reconciler_uncommitted_events") == 0.0;
        match (settled, quiet_since) {
            (true, Some((n, since))) if n == consumed => {
                if since.elapsed() >= Duration::from_millis(300) {
                    // The view was complete when it went quiet, not when we noticed.
                    return Ok((text, since));
                }
            }
            (true, _) => quiet_since = Some((consumed, Instant::now())),
            (false, _) => quiet_since = None,
        }
        if progress.elapsed() >= Duration::from_secs(60) {
            progress = Instant::now();
            eprintln!(
                "[{:>6.0} s] {consumed_inputs:.0} of {inputs:.0} input records consumed, {consumed:.0} messages in all, {:.0} not committed yet",
                started.elapsed().as_secs_f64(),
                metric(&text, "ponte_reconciler_uncommitted_events"),
            );
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the view did not catch up in {} s",
            (deadline - started).as_secs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Records the reconciler consumed from the input topics (not its own repartition topics,
/// `<prefix>reconciler.<group>.…`).
fn inputs_consumed(metrics: &str) -> f64 {
    metric_where(
        metrics,
        "ponte_reconciler_events_consumed_total",
        |labels| !labels.contains(".reconciler."),
    )
}

/// The samples of `name` summed by the value of `label`.
fn by_label(text: &str, name: &str, label: &str) -> Vec<(String, f64)> {
    let mut sums: std::collections::BTreeMap<String, f64> = Default::default();
    let needle = format!("{label}=\"");
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = l.rsplit_once(' ') else {
            continue;
        };
        let Some((metric, labels)) = series.split_once('{') else {
            continue;
        };
        let (Some(start), Ok(v)) = (labels.find(&needle), value.parse::<f64>()) else {
            continue;
        };
        if metric != name {
            continue;
        }
        let rest = &labels[start + needle.len()..];
        let kind = rest.split('"').next().unwrap_or_default().to_owned();
        *sums.entry(kind).or_default() += v;
    }
    sums.into_iter().collect()
}

/// What the reconciler consumed: input records, each internal topic (by its base name), and the
/// changelog entries it restored.
fn consumed_by_kind(metrics: &str) -> Vec<(String, f64)> {
    let mut out = vec![("input records".to_owned(), inputs_consumed(metrics))];
    for internal in ["crosswalk", "health-by-nis", "members", "changelog"] {
        let n = metric_where(
            metrics,
            "ponte_reconciler_events_consumed_total",
            |labels| labels.contains(&format!(".{internal}.v1")),
        );
        out.push((internal.to_owned(), n));
    }
    out.push((
        "changelog restore".to_owned(),
        metric(metrics, "ponte_reconciler_restored_entries_total"),
    ));
    out
}

/// The header and the first `n` records (lines) of the CSV `src`.
fn csv_records(src: &Path, n: u64) -> anyhow::Result<(String, Vec<String>)> {
    use std::io::BufRead as _;
    let input = std::fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let mut lines = std::io::BufReader::new(input).lines();
    let header = lines.next().context("empty CSV")??;
    let records = lines
        .take(usize::try_from(n)?)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((header, records))
}

/// The `q` quantile of `sorted` (nearest rank), zero when empty.
pub(crate) fn nearest_rank(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Bucket by bucket, `after` minus `before` (cumulative counts of the same histogram, scraped
/// twice): the distribution of what was observed in between.
fn buckets_between(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(le, n)| {
            let earlier = before
                .iter()
                .find(|b| b.0 == le)
                .map(|b| b.1)
                .unwrap_or(0.0);
            (le, n - earlier)
        })
        .collect()
}

const LATENCY: &str = "ponte_reconciler_ingest_to_view_seconds";

impl Pipeline {
    /// Sends `p`'s records to the education adapter, `p.batch` per request at `p.rate` records
    /// per second on a fixed schedule (a slow answer does not delay the next request), and
    /// waits until the view is complete again; the latency of those records alone.
    async fn paced(&mut self, s: &Setup<'_>, p: &Paced) -> anyhow::Result<PacedFigures> {
        anyhow::ensure!(
            p.rate > 0 && p.batch > 0,
            "paced rate and batch must be positive"
        );
        let (header, lines) = csv_records(&p.source, p.records)?;
        let records = lines.len() as u64;
        let bodies: Vec<String> = lines
            .chunks(p.batch as usize)
            .map(|chunk| {
                let mut body = header.clone();
                for l in chunk {
                    body.push('\n');
                    body.push_str(l);
                }
                body.push('\n');
                body
            })
            .collect();
        let reconciler = self
            .services
            .iter()
            .find(|x| x.name == "reconciler")
            .context("no reconciler process")?;
        let (admin, pid) = (reconciler.admin, reconciler.child.id());
        let url = format!(
            "http://{}/v1/attendance",
            self.env
                .get("PONTE__EDUCATION_ADAPTER__LISTEN")
                .context("no education adapter address")?
        );
        let before = scrape(admin).await?;
        let inputs_before = inputs_consumed(&before);
        let cpu_before = cpu_seconds(pid).unwrap_or(f64::NAN);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let period = Duration::from_secs_f64(f64::from(p.batch) / f64::from(p.rate));
        let started = Instant::now();
        let mut sends = tokio::task::JoinSet::new();
        for (i, body) in bodies.into_iter().enumerate() {
            tokio::time::sleep_until((started + period * i as u32).into()).await;
            let (client, url) = (client.clone(), url.clone());
            let n = body.lines().count() - 1;
            sends.spawn(async move {
                let sent = Instant::now();
                let answer = client
                    .post(&url)
                    .header("content-type", "text/csv")
                    .body(body)
                    .send()
                    .await?;
                let status = answer.status();
                let text = answer.text().await?;
                let accepted = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.get("accepted").and_then(serde_json::Value::as_u64));
                anyhow::ensure!(
                    status.is_success() && accepted == Some(n as u64),
                    "paced request {i}: {status} {text}"
                );
                Ok::<_, anyhow::Error>(sent.elapsed())
            });
        }
        let mut answers = Vec::new();
        while let Some(joined) = sends.join_next().await {
            answers.push(joined??);
        }
        let ingest = started.elapsed();
        answers.sort();
        let (after, done) = wait_settled(
            admin,
            inputs_before + records as f64,
            started,
            started + s.view_timeout,
        )
        .await?;
        let between = buckets_between(&histogram(&before, LATENCY), &histogram(&after, LATENCY));
        Ok(PacedFigures {
            records,
            rate: p.rate,
            batch: p.batch,
            ingest,
            answer: (
                nearest_rank(&answers, 0.5),
                nearest_rank(&answers, 0.99),
                answers.last().copied().unwrap_or_default(),
            ),
            to_view: done - started,
            latency: Latency::of(&between),
            reconciler_cpu: cpu_seconds(pid).unwrap_or(f64::NAN) - cpu_before,
        })
    }
}

/// How the reconciler is stopped before it is started again on its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// SIGTERM, and wait for the process to exit (as an orchestrator stops it).
    Graceful,
    /// SIGKILL (`kill -9`): a crash, nothing flushed or left cleanly.
    Crash,
    /// SIGKILL, then the state directory deleted: a lost disk or a new machine. Every
    /// partition is rebuilt from the changelog.
    LostDisk,
}

impl Stop {
    pub(crate) fn signal(self) -> &'static str {
        match self {
            Stop::Graceful => "SIGTERM",
            Stop::Crash => "SIGKILL",
            Stop::LostDisk => "SIGKILL and a lost disk",
        }
    }

    /// For file names.
    fn slug(self) -> &'static str {
        match self {
            Stop::Graceful => "sigterm",
            Stop::Crash => "sigkill",
            Stop::LostDisk => "lost-disk",
        }
    }
}

/// One restart of the reconciler on its own state directory, with the same configuration and
/// ports, measured from the spawn.
#[derive(Debug)]
pub(crate) struct Restart {
    pub(crate) stop: Stop,
    /// Peak RSS (`VmHWM`, bytes) of the process stopped, read just before the signal.
    pub(crate) stopped_peak_rss: Option<u64>,
    /// From the signal until the process had exited.
    pub(crate) shutdown: Duration,
    /// How it exited (`exit status: 0`, `signal: 9 (SIGKILL)`).
    pub(crate) exit: String,
    /// The state store on disk between the stop and the start.
    pub(crate) state_at_stop: Disk,
    /// The same once ready and serving (RocksDB replays and flushes its write-ahead log on open).
    pub(crate) state_serving: Disk,
    /// Until `/health/ready` answered 200 (the reconciler updates its readiness once a second).
    pub(crate) ready: Duration,
    /// Until `GetPerson` of `nis` answered with that person.
    pub(crate) serving: Duration,
    pub(crate) nis: String,
    /// What `/health/ready` answered before it was ready, each with when it was first seen.
    pub(crate) not_ready: Vec<(Duration, String)>,
    /// What `GetPerson` answered before it answered with the person, likewise.
    pub(crate) not_serving: Vec<(Duration, String)>,
    /// `VmRSS` and `VmHWM` (bytes) of the restarted process once ready and serving.
    pub(crate) rss: Option<u64>,
    pub(crate) peak_rss: Option<u64>,
    /// Its counters then: partitions rebuilt from the changelog and the entries they restored,
    /// and messages consumed from the input and repartition topics (consumed again, the view
    /// being complete before the stop).
    pub(crate) partition_restores: u64,
    pub(crate) restored_entries: u64,
    pub(crate) events_consumed: u64,
    /// The restarted process' log, and its WARN and ERROR lines.
    pub(crate) log: PathBuf,
    pub(crate) log_warnings: Vec<String>,
}

impl Pipeline {
    /// Stops the reconciler as `stop` says, starts it again with the same environment (so the
    /// same configuration, state directory and ports) and measures until it is ready and
    /// `GetPerson` of `nis` answers with that person. The new process replaces the old one.
    /// Stops the reconciler gracefully and starts it again on the same state with `changes`
    /// to its environment (`None` removes a variable); returns once it is ready, with its pid.
    pub(crate) async fn restart_reconciler_with(
        &mut self,
        s: &Setup<'_>,
        changes: &[(&str, Option<String>)],
    ) -> anyhow::Result<u32> {
        let i = self.stop_instance("reconciler")?;
        for (k, v) in changes {
            match v {
                Some(v) => self.env.insert((*k).to_owned(), v.clone()),
                None => self.env.remove(*k),
            };
        }
        let pid = self.respawn_reconciler(s, i, "reconciler-reconfigured.log")?;
        wait_ready(&self.services[i]).await?;
        Ok(pid)
    }

    /// Starts the reconciler again in slot `i` with the pipeline's environment (the old process
    /// has exited: dropping it sends nothing), its log in `log`; returns its pid.
    fn respawn_reconciler(&mut self, s: &Setup<'_>, i: usize, log: &str) -> anyhow::Result<u32> {
        let (name, admin, own_env) = {
            let old = &self.services[i];
            (old.name, old.admin, old.own_env.clone())
        };
        let child = Command::new(s.ponte)
            .arg("reconciler")
            .envs(&self.env)
            .envs(&own_env)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(s.work.join(log))?))
            .spawn()
            .context("starting ponte reconciler again")?;
        let pid = child.id();
        self.services[i] = Service {
            name,
            child,
            admin,
            own_env,
        };
        Ok(pid)
    }

    /// Stops process `name` gracefully (SIGTERM) and waits for it; returns its slot.
    fn stop_instance(&mut self, name: &str) -> anyhow::Result<usize> {
        let i = self
            .services
            .iter()
            .position(|x| x.name == name)
            .with_context(|| format!("no process {name}"))?;
        let old = &mut self.services[i].child;
        let sent = Command::new("kill")
            .args(["-TERM", &old.id().to_string()])
            .status()?;
        anyhow::ensure!(sent.success(), "kill -TERM {} failed", old.id());
        old.wait()?;
        Ok(i)
    }

    /// Sets what process `name`'s environment changes of the pipeline's, from its next start.
    pub(crate) fn set_own_env(
        &mut self,
        name: &str,
        own_env: BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        let svc = self
            .services
            .iter_mut()
            .find(|x| x.name == name)
            .with_context(|| format!("no process {name}"))?;
        svc.own_env = own_env;
        Ok(())
    }

    /// Waits until every reconciler instance is ready.
    pub(crate) async fn instances_ready(&self) -> anyhow::Result<()> {
        for svc in self
            .services
            .iter()
            .filter(|x| x.name.starts_with("reconciler"))
        {
            wait_ready(svc).await?;
        }
        Ok(())
    }

    /// Starts a second reconciler instance, `reconciler-2`, in the same group with a state
    /// directory and ports of its own (and `own_env`); returns its gRPC address and pid once
    /// it is ready.
    pub(crate) async fn add_instance(
        &mut self,
        s: &Setup<'_>,
        own_env: impl Fn(&str) -> BTreeMap<String, String>,
    ) -> anyhow::Result<(String, u32)> {
        const NAME: &str = "reconciler-2";
        let grpc = format!("127.0.0.1:{}", free_port());
        let admin = free_port();
        let mut env = own_env(&grpc);
        env.insert("PONTE__RECONCILER__GRPC_LISTEN".into(), grpc.clone());
        env.insert(
            "PONTE__RECONCILER__ADMIN_LISTEN".into(),
            format!("127.0.0.1:{admin}"),
        );
        env.insert(
            "PONTE__RECONCILER__STATE_DIR".into(),
            s.work.join(NAME).display().to_string(),
        );
        let child = Command::new(s.ponte)
            .arg("reconciler")
            .envs(&self.env)
            .envs(&env)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(
                s.work.join(format!("{NAME}.log")),
            )?))
            .spawn()
            .context("starting a second ponte reconciler")?;
        let pid = child.id();
        self.services.push(Service {
            name: NAME,
            child,
            admin,
            own_env: env,
        });
        self.instances_ready().await?;
        Ok((grpc, pid))
    }

    /// The metrics of process `name`.
    pub(crate) async fn metrics_of(&self, name: &str) -> anyhow::Result<String> {
        let svc = self
            .services
            .iter()
            .find(|x| x.name == name)
            .with_context(|| format!("no process {name}"))?;
        scrape(svc.admin).await
    }

    async fn restart_reconciler(
        &mut self,
        s: &Setup<'_>,
        stop: Stop,
        nis: &str,
    ) -> anyhow::Result<Restart> {
        let i = self
            .services
            .iter()
            .position(|x| x.name == "reconciler")
            .context("no reconciler process")?;
        let admin = self.services[i].admin;
        let old = &mut self.services[i].child;
        let stopped_peak_rss = proc_status_bytes(old.id(), "VmHWM");
        let signalled = Instant::now();
        let exit = match stop {
            Stop::Graceful => {
                let sent = Command::new("kill")
                    .args(["-TERM", &old.id().to_string()])
                    .status()?;
                anyhow::ensure!(sent.success(), "kill -TERM {} failed", old.id());
                let deadline = signalled + Duration::from_secs(120);
                loop {
                    if let Some(status) = old.try_wait()? {
                        break status.to_string();
                    }
                    if Instant::now() > deadline {
                        old.kill()?;
                        break format!("still running after 120 s, killed: {}", old.wait()?);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            Stop::Crash | Stop::LostDisk => {
                old.kill()?;
                old.wait()?.to_string()
            }
        };
        let shutdown = signalled.elapsed();

        let dir = reconciler_state_dir(s.work);
        let state = dir.join("state");
        let state_at_stop = Disk::of(&state)?;
        if stop == Stop::LostDisk {
            std::fs::remove_dir_all(&dir).with_context(|| format!("deleting {}", dir.display()))?;
        }
        let log_name = format!("reconciler-after-{}.log", stop.slug());
        let log = s.work.join(&log_name);
        let spawned = Instant::now();
        let pid = self.respawn_reconciler(s, i, &log_name)?;
        let deadline = spawned + Duration::from_secs(3600);
        let child = &mut self.services[i].child;
        let ((ready, not_ready), (serving, not_serving)) = tokio::select! {
            both = async {
                tokio::join!(
                    until_ready(admin, spawned, deadline),
                    until_serving(&self.grpc, nis, spawned, deadline),
                )
            } => (both.0?, both.1?),
            exited = async {
                loop {
                    match child.try_wait() {
                        Ok(Some(status)) => break status.to_string(),
                        Ok(None) => tokio::time::sleep(Duration::from_millis(200)).await,
                        Err(e) => break e.to_string(),
                    }
                }
            } => anyhow::bail!(
                "the restarted reconciler exited ({exited}) before serving; see {}",
                log.display()
            ),
        };
        let rss = proc_status_bytes(pid, "VmRSS");
        let peak_rss = proc_status_bytes(pid, "VmHWM");
        let text = scrape(admin).await?;
        let count = |name: &str| metric(&text, name) as u64;
        let log_warnings = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .map(str::to_owned)
            .collect();
        Ok(Restart {
            stop,
            stopped_peak_rss,
            shutdown,
            exit,
            state_at_stop,
            state_serving: Disk::of(&state)?,
            ready,
            serving,
            nis: nis.to_owned(),
            not_ready,
            not_serving,
            rss,
            peak_rss,
            partition_restores: count("ponte_reconciler_partition_restores_total"),
            restored_entries: count("ponte_reconciler_restored_entries_total"),
            events_consumed: count("ponte_reconciler_events_consumed_total"),
            log,
            log_warnings,
        })
    }
}

/// Polls `/health/ready` every 50 ms until it answers 200: the time since `spawned`, and every
/// different answer before it with when it was first seen.
async fn until_ready(
    admin: u16,
    spawned: Instant,
    deadline: Instant,
) -> anyhow::Result<(Duration, Vec<(Duration, String)>)> {
    let url = format!("http://127.0.0.1:{admin}/health/ready");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let mut seen: Vec<(Duration, String)> = Vec::new();
    loop {
        let answer = match client.get(&url).send().await {
            Ok(r) if r.status().is_success() => return Ok((spawned.elapsed(), seen)),
            Ok(r) => r.text().await.unwrap_or_default().trim().to_owned(),
            Err(_) => "no answer".to_owned(),
        };
        if seen.last().is_none_or(|(_, a)| *a != answer) {
            seen.push((spawned.elapsed(), answer));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the restarted reconciler was not ready in an hour"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asks `GetPerson` of `nis` every 50 ms, on a new connection each time (as a client that lost
/// the old one), until it answers with that person: the time since `spawned`, and every
/// different answer before it with when it was first seen.
async fn until_serving(
    grpc: &str,
    nis: &str,
    spawned: Instant,
    deadline: Instant,
) -> anyhow::Result<(Duration, Vec<(Duration, String)>)> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2));
    let mut seen: Vec<(Duration, String)> = Vec::new();
    loop {
        let answer = match endpoint.connect().await {
            Err(_) => "no connection".to_owned(),
            Ok(channel) => {
                let request = GetPersonRequest {
                    nis: nis.to_owned(),
                };
                match ComplianceServiceClient::new(channel)
                    .get_person(request)
                    .await
                {
                    Ok(r) if r.get_ref().person.as_ref().is_some_and(|p| p.nis == nis) => {
                        return Ok((spawned.elapsed(), seen));
                    }
                    Ok(_) => "another person".to_owned(),
                    Err(status) => format!("{:?}: {}", status.code(), status.message()),
                }
            }
        };
        if seen.last().is_none_or(|(_, a)| *a != answer) {
            seen.push((spawned.elapsed(), answer));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the restarted reconciler did not answer GetPerson in an hour"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first NIS of the registry file that the reconciler's view holds (asked over gRPC).
async fn known_nis(data: &Path, grpc: &str) -> anyhow::Result<String> {
    let mut client = ComplianceServiceClient::connect(format!("http://{grpc}")).await?;
    for nis in nis_sample(data, 100)? {
        let request = GetPersonRequest { nis: nis.clone() };
        match client.get_person(request).await {
            Ok(r) if r.get_ref().person.as_ref().is_some_and(|p| p.nis == nis) => return Ok(nis),
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(s.into()),
        }
    }
    anyhow::bail!("none of the first 100 NIS of the registry is in the view")
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.split(':').next() == Some(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Bytes on disk of a RocksDB directory: all its files, and its write-ahead log (`*.log`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Disk {
    pub(crate) bytes: u64,
    pub(crate) wal: u64,
}

impl Disk {
    /// Apparent sizes of the files under `dir` (symbolic links not followed).
    fn of(dir: &Path) -> anyhow::Result<Disk> {
        let mut d = Disk::default();
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                let sub = Disk::of(&entry.path())?;
                d.bytes += sub.bytes;
                d.wal += sub.wal;
            } else {
                d.bytes += meta.len();
                if entry.path().extension().is_some_and(|e| e == "log") {
                    d.wal += meta.len();
                }
            }
        }
        Ok(d)
    }
}

/// ghz against the reconciler: gRPC health `Check` (the bare tonic stack of the same server) and
/// `GetPerson` over the first 10 000 NIS of the registry; ghz's own summaries.
fn load(s: &Setup<'_>, g: &Ghz, grpc: &str) -> anyhow::Result<Vec<(String, String)>> {
    let nis = nis_sample(s.data, 10_000)?;
    let data = s.work.join("get-person.json");
    crate::queries::write_get_person_data(&data, &nis)?;
    // ghz speaks the older reflection API only: give it the protos.
    let health = s.work.join("health.proto");
    std::fs::write(&health, HEALTH_PROTO)?;
    let (protos, compliance) = crate::queries::ghz_protos(&g.protos, s.work)?;
    let mut ghz = Vec::new();
    for (call, proto, data_arg) in [
        ("grpc.health.v1.Health/Check", &health, None),
        (
            "ponte.compliance.v1.ComplianceService/GetPerson",
            &compliance,
            Some(&data),
        ),
    ] {
        let mut c = Command::new(&g.bin);
        c.arg("--proto")
            .arg(proto)
            .arg("--import-paths")
            .arg(&protos);
        c.args([
            "--insecure",
            "--call",
            call,
            "-z",
            &format!("{}s", g.seconds),
            // Let the calls in flight at the end finish rather than count them as errors.
            "--duration-stop",
            "wait",
        ])
        .args(["-c", &g.concurrency.to_string(), "--connections", "2"]);
        if g.rps > 0 {
            c.args(["--rps", &g.rps.to_string()]);
        }
        match data_arg {
            Some(d) => c.arg("-D").arg(d),
            None => c.args(["-d", "{}"]),
        };
        let out = c.arg(grpc).output().context("running ghz")?;
        ghz.push((
            call.to_owned(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        ));
    }
    Ok(ghz)
}

/// The first `n` NIS of the registry file.
pub(crate) fn nis_sample(data: &Path, n: usize) -> anyhow::Result<Vec<String>> {
    use std::io::BufRead as _;
    let file = std::fs::File::open(data.join("registry-persons.csv"))?;
    let mut out = Vec::with_capacity(n);
    for line in std::io::BufReader::new(file).lines().skip(1).take(n) {
        if let Some(nis) = line?.split(',').next() {
            out.push(nis.to_owned());
        }
    }
    Ok(out)
}

async fn wait_ready(svc: &Service) -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:{}/health/ready", svc.admin);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = reqwest::get(&url).await
            && r.status().is_success()
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{} not ready in 120 s", svc.name);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn scrape(port: u16) -> anyhow::Result<String> {
    Ok(reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await?
        .text()
        .await?)
}

/// Seconds of the commits by step, in [`COMMIT_PHASES`] order.
fn commit_phases(metrics: &str) -> Vec<(String, f64)> {
    COMMIT_PHASES
        .iter()
        .map(|&p| {
            let phase = format!("phase=\"{p}\"");
            let took = metric_where(metrics, "ponte_reconciler_commit_phase_seconds_sum", |l| {
                l.contains(&phase)
            });
            (p.to_owned(), took)
        })
        .collect()
}

/// Sum of the samples of `name` (any labels).
fn metric(text: &str, name: &str) -> f64 {
    metric_where(text, name, |_| true)
}

/// Sum of the samples of `name` whose label text (`{…}`, empty without labels) `keep` accepts.
pub(crate) fn metric_where(text: &str, name: &str, keep: impl Fn(&str) -> bool) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && keep(labels))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Cumulative buckets (upper bound, count) of a Prometheus histogram, `+Inf` last.
fn histogram(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut out: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = l.rsplit_once(' ')?.1.parse().ok()?;
            Some((le, count))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The `q` quantile by linear interpolation inside the bucket that holds it (as Prometheus'
/// `histogram_quantile` does).
pub(crate) fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                // Beyond the largest bound: infinite, the caller says "above".
                return Some(f64::INFINITY);
            }
            let width = count - prev.1;
            let frac = if width > 0.0 {
                (rank - prev.1) / width
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, count);
    }
    None
}

/// User + system CPU seconds of a process, from `/proc/<pid>/stat` (clock ticks of 100 Hz).
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// CPU seconds of the processes `pids` together, if each is there.
pub(crate) fn cpu_seconds_of(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|p| cpu_seconds(*p)).sum()
}

/// CPU seconds of every Kafka broker process on this machine (`kafka.Kafka`), if there is one.
fn broker_cpu_seconds() -> Option<f64> {
    let mut total = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let is_broker = std::fs::read(entry.path().join("cmdline"))
            .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| arg == b"kafka.Kafka"));
        if is_broker && let Some(cpu) = cpu_seconds(pid) {
            *total.get_or_insert(0.0) += cpu;
        }
    }
    total
}

/// Share of the whole machine's cores busy since `start` ([`machine_jiffies`] then).
pub(crate) fn busy_since(start: Option<(u64, u64)>) -> Option<f64> {
    let ((b0, t0), (b1, t1)) = start.zip(machine_jiffies())?;
    Some((b1 - b0) as f64 / (t1 - t0).max(1) as f64)
}

/// Busy and total jiffies of the whole machine, from `/proc/stat`.
pub(crate) fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?;
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Work directory helper: a fresh directory under `base`.
/// Development audit keys written into `dir`, as the environment that turns the log on (and
/// lifts `PONTE__AUDIT__DISABLED`, `None`).
pub(crate) fn audit_env(dir: &Path) -> anyhow::Result<Vec<(&'static str, Option<String>)>> {
    let keys = ponte_audit::write_dev_keys(dir)?;
    Ok(vec![
        ("PONTE__AUDIT__DISABLED", None),
        (
            "PONTE__AUDIT__KEY_DIR",
            Some(keys.key_dir.display().to_string()),
        ),
        (
            "PONTE__AUDIT__SUBJECT_KEY_FILE",
            Some(keys.subject_key_file.display().to_string()),
        ),
    ])
}

pub(crate) fn work_dir(base: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = base.join(name);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let b = [(0.1, 50.0), (0.2, 100.0), (f64::INFINITY, 100.0)];
        let p50 = quantile(&b, 0.5).unwrap_or(f64::NAN);
        assert!((p50 - 0.1).abs() < 1e-9, "{p50}");
        let p75 = quantile(&b, 0.75).unwrap_or(f64::NAN);
        assert!((p75 - 0.15).abs() < 1e-9, "{p75}");
        assert_eq!(quantile(&[(f64::INFINITY, 0.0)], 0.5), None);
    }

    #[test]
    fn latency_between_two_scrapes_counts_only_what_came_in_between() {
        // A bulk load left 1 000 observations beyond the largest bound (the backlog); then 100
        // paced records took between 0.1 and 1 s.
        let before = [(0.1, 0.0), (1.0, 0.0), (f64::INFINITY, 1000.0)];
        let after = [(0.1, 0.0), (1.0, 100.0), (f64::INFINITY, 1100.0)];
        let between = buckets_between(&before, &after);
        assert_eq!(
            between,
            vec![(0.1, 0.0), (1.0, 100.0), (f64::INFINITY, 100.0)]
        );
        let l = Latency::of(&between);
        assert_eq!(l.count, 100.0);
        let p50 = l.p50.unwrap_or(f64::NAN);
        assert!((p50 - 0.55).abs() < 1e-9, "{p50}");
        // The whole histogram would still say "above the largest bound".
        assert_eq!(Latency::of(&after).p50, Some(f64::INFINITY));
        // A bucket the first scrape did not have yet counts from zero.
        assert_eq!(buckets_between(&[], &after), after.to_vec());
    }

    #[test]
    fn csv_records_are_the_header_and_the_first_lines() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let src = dir.path().join("in.csv");
        std::fs::write(&src, "h1,h2\na,1\nb,2\nc,3\n")?;
        let (header, lines) = csv_records(&src, 2)?;
        assert_eq!(header, "h1,h2");
        assert_eq!(lines, vec!["a,1", "b,2"]);
        // Asking for more than there is gives everything.
        assert_eq!(csv_records(&src, 10)?.1.len(), 3);
        Ok(())
    }

    #[test]
    fn nearest_rank_quantiles() {
        let ms = |v: u64| Duration::from_millis(v);
        let sorted: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(nearest_rank(&sorted, 0.5), ms(50));
        assert_eq!(nearest_rank(&sorted, 0.99), ms(99));
        assert_eq!(nearest_rank(&sorted, 1.0), ms(100));
        assert_eq!(nearest_rank(&[ms(7)], 0.5), ms(7));
        assert_eq!(nearest_rank(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn commit_phases_are_read_in_commit_order() {
        let text = "ponte_reconciler_commit_phase_seconds_sum{phase=\"commit\"} 0.5\n\
                    ponte_reconciler_commit_phase_seconds_sum{phase=\"send\"} 2\n\
                    ponte_reconciler_commit_phase_seconds_count{phase=\"send\"} 9\n";
        let phases = commit_phases(text);
        let names: Vec<&str> = phases.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, COMMIT_PHASES);
        let took: Vec<f64> = phases.iter().map(|(_, s)| *s).collect();
        assert_eq!(took, vec![2.0, 0.0, 0.0, 0.5, 0.0]);
    }

    #[test]
    fn histogram_lines_are_read() {
        let text = "# TYPE x histogram\nx_bucket{le=\"0.5\"} 3\nx_bucket{le=\"+Inf\"} 4\nx_sum 1\nx_count 4\n";
        assert_eq!(histogram(text, "x"), vec![(0.5, 3.0), (f64::INFINITY, 4.0)]);
        assert_eq!(metric(text, "x_count"), 4.0);
    }

    #[test]
    fn process_memory_and_directory_sizes_are_read() -> anyhow::Result<()> {
        let rss = proc_status_bytes(std::process::id(), "VmRSS").unwrap_or(0);
        let peak = proc_status_bytes(std::process::id(), "VmHWM").unwrap_or(0);
        assert!(rss > 0 && peak >= rss, "{rss} {peak}");
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("sub"))?;
        std::fs::write(dir.path().join("a"), [0u8; 10])?;
        std::fs::write(dir.path().join("LOG"), [0u8; 3])?;
        std::fs::write(dir.path().join("sub").join("000001.log"), [0u8; 5])?;
        assert_eq!(Disk::of(dir.path())?, Disk { bytes: 18, wal: 5 });
        Ok(())
    }

    #[test]
    fn a_finished_run_loses_its_reconciler_state_and_keeps_its_logs() -> anyhow::Result<()> {
        let work = tempfile::tempdir()?;
        let state = reconciler_state_dir(work.path()).join("state");
        std::fs::create_dir_all(&state)?;
        std::fs::write(state.join("000001.sst"), [0u8; 10])?;
        std::fs::write(work.path().join("reconciler.log"), b"log")?;
        delete_reconciler_state(work.path());
        assert!(!reconciler_state_dir(work.path()).exists());
        assert!(work.path().join("reconciler.log").exists());
        // A run that never got as far as a state (or a second call) is no error.
        delete_reconciler_state(work.path());
        Ok(())
    }
}
