//! Queries under load: `GetPerson` and the municipal list (`ListPersons`) served by the
//! reconciler from its complete view, loaded with `ghz` (a real gRPC load tool), beside a
//! trivial tonic service that implements the same `ComplianceService` from memory and is loaded
//! the same way. For each call, load and server: requests per second reached, p50/p90/p99
//! latency, errors, the server's CPU per request and how busy the machine was.
//!
//! The trivial service holds in memory copies of real views, read once from the reconciler before
//! the load (1 000 persons answered by `GetPerson`, and the listed municipality's persons), and
//! answers from them in turn: `GetPerson` with the next person (under the NIS asked), and
//! `ListPersons` with the next `page_size` persons of the municipality — the same messages, so
//! the difference is the reconciler's work (store read, decoding, the hop to a blocking thread).
//! It is served as the reconciler serves (tonic's default server over a stream of accepted
//! connections, so without `TCP_NODELAY`), in this process.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context as _;
use futures::Stream;
use ponte_proto::compliance::v1::compliance_service_client::ComplianceServiceClient;
use ponte_proto::compliance::v1::compliance_service_server::{
    ComplianceService, ComplianceServiceServer,
};
use ponte_proto::compliance::v1::{
    GetFamilyRequest, GetFamilyResponse, GetHouseholdIndicatorsRequest,
    GetHouseholdIndicatorsResponse, GetHouseholdRequest, GetHouseholdResponse,
    GetIndicatorsRequest, GetIndicatorsResponse, GetPersonRequest, GetPersonResponse,
    ListParkedRequest, ListParkedResponse, ListPersonsItem, ListPersonsRequest, Person,
    WatchChangesRequest, WatchedChange,
};
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::e2e;

const GET_PERSON: &str = "ponte.compliance.v1.ComplianceService/GetPerson";
const LIST_PERSONS: &str = "ponte.compliance.v1.ComplianceService/ListPersons";

/// How `ponte-bench queries` loads the servers.
#[derive(Debug, Clone)]
pub(crate) struct Args {
    /// The `ghz` binary.
    pub(crate) ghz: PathBuf,
    /// The repository's `proto/` directory.
    pub(crate) protos: PathBuf,
    /// ghz `-z`: how long each run lasts (`20s`, `1m`).
    pub(crate) duration: String,
    /// ghz workers.
    pub(crate) concurrency: u32,
    /// ghz connections (the workers are spread over them).
    pub(crate) connections: u32,
    /// Requests per second asked of `GetPerson` in the paced runs.
    pub(crate) rps: u32,
    /// Requests per second asked of `ListPersons` in the paced runs.
    pub(crate) list_rps: u32,
    /// `ListPersons` page size.
    pub(crate) page_size: u32,
    /// The municipality listed; the one with the most people when absent.
    pub(crate) municipality: Option<String>,
    /// Also load variants of the trivial service: with `TCP_NODELAY` on its connections, with
    /// each answer built on a blocking thread (`spawn_blocking`, as the reconciler reads its
    /// store), and with both.
    pub(crate) variants: bool,
    /// Then restart the reconciler with TLS and client certificates and load it again.
    pub(crate) tls: bool,
    /// Then restart the reconciler with the audit log on and load it again.
    pub(crate) audit: bool,
    /// Then start a second reconciler instance in the group, every listener on TLS, and load
    /// the first with `GetPerson`: the persons of the partitions the second owns asked of it
    /// (`reconciler.peer.advertise` on both), then unavailable to the first (both restarted
    /// without: only the owner's state holds them).
    pub(crate) peers: bool,
}

/// A server ghz loads: its name in the table, address, processes (the one asked, and those it
/// asks) and ghz's TLS arguments (`--insecure` for plaintext).
struct Target {
    name: String,
    addr: String,
    pids: Vec<u32>,
    tls: Vec<String>,
}

/// Starts the real processes with the population in the view (as `e2e` does), then loads the
/// reconciler and the trivial service with ghz and prints the figures.
pub(crate) async fn run(setup: &e2e::Setup<'_>, a: &Args) -> anyhow::Result<()> {
    // The bench's own client runs as long as a ghz run: refused before the load, not after.
    duration_seconds(&a.duration)?;
    let mut pipeline = e2e::start(setup).await?;
    if a.tls || a.audit {
        // Off and on each measured on a reconciler freshly restarted on the same state, so that
        // neither inherits the other's warm caches or the bulk load's compactions.
        pipeline.restart_reconciler_with(setup, &[]).await?;
        println!(
            "== baseline         the reconciler restarted on its state: plaintext, no audit log"
        );
    }
    let f = &pipeline.figures;
    println!(
        "== view complete    {} records in the reconciler's view after {:.1} s (ingest {:.1} s), state {:.1} MiB",
        f.records,
        f.to_view.as_secs_f64(),
        f.ingest.as_secs_f64(),
        f.state_bytes / 1048576.0
    );
    let reconciler_pid = pipeline
        .pid("reconciler")
        .context("no reconciler process")?;

    let nis = e2e::nis_sample(setup.data, 10_000)?;
    let get_data = setup.work.join("get-person.json");
    write_get_person_data(&get_data, &nis)?;
    let municipality = match &a.municipality {
        Some(m) => m.clone(),
        None => largest_municipality(setup.data)?,
    };
    let real = sample_reconciler(&pipeline.grpc, &nis[..nis.len().min(1000)], &municipality)
        .await
        .context("reading a sample of the reconciler's view")?;
    let tokens: Vec<String> = real.list.iter().map(|i| i.page_token.clone()).collect();
    let starts = page_starts(&tokens, a.page_size as usize);
    let list_data = setup.work.join("list-persons.json");
    let bodies: Vec<serde_json::Value> = starts
        .iter()
        .map(|t| {
            serde_json::json!({
                "municipality": municipality,
                "page_size": a.page_size,
                "page_token": t,
            })
        })
        .collect();
    std::fs::write(&list_data, serde_json::to_vec(&bodies)?)?;

    println!(
        "GetPerson          {} NIS round-robin; {} of {} sampled found: {:.0} bytes, {:.1} outcomes, {:.1} attendance and {:.1} health records per person on average",
        nis.len(),
        real.persons.len(),
        real.sampled,
        avg(&real.persons, |p| GetPersonResponse {
            person: Some(p.clone())
        }
        .encoded_len()),
        avg(&real.persons, |p| p.outcomes.len()),
        avg(&real.persons, |p| p.school_attendance.len()),
        avg(&real.persons, |p| p.health_records.len()),
    );
    println!(
        "ListPersons        municipality {municipality} ({} persons in the view), page_size {}, {} different pages round-robin; items of {:.0} bytes on average",
        real.list.len(),
        a.page_size,
        starts.len(),
        avg(&real.list, |i| i.encoded_len()),
    );
    anyhow::ensure!(
        !real.persons.is_empty() && !real.list.is_empty(),
        "no view to copy for the trivial service (no person found, or municipality {municipality} empty)"
    );
    let copies = Arc::new(Copies {
        persons: real.persons,
        list: real.list,
    });

    let variants: &[(&str, bool, bool)] = match a.variants {
        false => &[("trivial", false, false)],
        true => &[
            ("trivial", false, false),
            ("trivial+nodelay", true, false),
            ("trivial+blocking", false, true),
            ("trivial+blk+nodelay", true, true),
        ],
    };
    let own_pid = std::process::id();
    let mut trivial = Vec::new();
    let mut targets = vec![("reconciler", pipeline.grpc.clone(), reconciler_pid)];
    for (name, nodelay, blocking) in variants {
        let server = TrivialServer::start(copies.clone(), *nodelay, *blocking).await?;
        targets.push((name, server.addr.clone(), own_pid));
        trivial.push(server);
    }
    let (import, compliance) = ghz_protos(&a.protos, setup.work)?;
    println!(
        "ghz                {} per run, {} workers, {} connections, --duration-stop wait; on the same cores as the servers",
        a.duration, a.concurrency, a.connections
    );

    let targets: Vec<Target> = targets
        .into_iter()
        .map(|(name, addr, pid)| Target {
            name: name.to_owned(),
            addr,
            pids: vec![pid],
            tls: vec!["--insecure".to_owned()],
        })
        .collect();
    let calls = Calls {
        get: &get_data,
        list: &list_data,
        import: &import,
        compliance: &compliance,
    };
    let mut rows = measure(setup, a, &calls, &targets).await?;
    paced_client(a, &targets, &nis).await?;
    // The reconciler as last measured: the audit run changes only the audit log.
    let mut reconciler = Target {
        name: "reconciler".to_owned(),
        addr: pipeline.grpc.clone(),
        pids: vec![reconciler_pid],
        tls: vec!["--insecure".to_owned()],
    };
    if a.tls {
        // The same reconciler, state and view, restarted with TLS and authentication on.
        let pki = Pki::new(setup)?;
        let pid = pipeline
            .restart_reconciler_with(setup, &pki.listener_env())
            .await?;
        println!(
            "== TLS on           the reconciler restarted with TLS 1.3 and required client certificates; ghz presents the federal reader's"
        );
        reconciler = Target {
            name: "reconciler+tls".to_owned(),
            addr: pipeline.grpc.clone(),
            pids: vec![pid],
            tls: pki.ghz_args("federal")?,
        };
        rows.extend(measure(setup, a, &calls, std::slice::from_ref(&reconciler)).await?);
    }
    if a.audit {
        let env = e2e::audit_env(&setup.work.join("audit-keys"))?;
        let before = audit_bytes(setup).await?;
        let pid = pipeline.restart_reconciler_with(setup, &env).await?;
        println!(
            "== audit on         the reconciler restarted with the audit log on: every read recorded (hash-chained, sealed every second) before it is answered"
        );
        reconciler = Target {
            name: format!("{}+audit", reconciler.name),
            pids: vec![pid],
            ..reconciler
        };
        rows.extend(measure(setup, a, &calls, std::slice::from_ref(&reconciler)).await?);
        paced_client(a, std::slice::from_ref(&reconciler), &nis).await?;
        let after = audit_bytes(setup).await?;
        let reads = after.reads - before.reads;
        println!(
            "audit log          {reads} reads recorded in {} entries, {} bytes: {:.1} bytes per read ({:.1} for the read entry itself, the rest starts and seals)",
            after.entries - before.entries,
            after.bytes - before.bytes,
            (after.bytes - before.bytes) as f64 / reads.max(1) as f64,
            (after.read_bytes - before.read_bytes) as f64 / reads.max(1) as f64,
        );
    }
    if a.peers {
        anyhow::ensure!(
            !a.tls && !a.audit,
            "--peers runs on the plaintext pipeline: not with --tls or --audit"
        );
        rows.extend(two_instances(setup, a, &calls, &mut pipeline).await?);
    }
    print_table(&rows);
    drop(trivial);
    drop(pipeline);
    Ok(())
}

/// The reconciler with a second instance in its group, the first loaded with `GetPerson` and
/// `ListPersons` (its CPU and the second's counted together), every listener on TLS with client
/// certificates (a peer read needs the reconciler's), with reads across instances on: the
/// persons of the second's partitions asked of it, lists gathered from both. Prints where the
/// first read its views from: its state, the owner, or unavailable.
async fn two_instances(
    setup: &e2e::Setup<'_>,
    a: &Args,
    calls: &Calls<'_>,
    pipeline: &mut e2e::Pipeline,
) -> anyhow::Result<Vec<Row>> {
    const ADVERTISE: &str = "PONTE__RECONCILER__PEER__ADVERTISE";
    let pki = Pki::new(setup)?;
    let peer = pki.client("reconciler")?;
    let first = pipeline.grpc.clone();
    let advertising = |addr: &str| BTreeMap::from([(ADVERTISE.to_owned(), addr.to_owned())]);
    pipeline.set_own_env("reconciler", advertising(&first))?;
    let mut env = pki.listener_env();
    env.extend([
        (
            "PONTE__RECONCILER__PEER__CA_FILE",
            Some(path(&pki.0.ca.cert)),
        ),
        ("PONTE__RECONCILER__PEER__CERT_FILE", Some(path(&peer.cert))),
        ("PONTE__RECONCILER__PEER__KEY_FILE", Some(path(&peer.key))),
    ]);
    pipeline.restart_reconciler_with(setup, &env).await?;
    let (_, second_pid) = pipeline.add_instance(setup, advertising).await?;
    // The owners are read from the group's description every 2 s.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let tls = pki.ghz_args("federal")?;
    let mut rows = Vec::new();
    let label = "2 inst+tls, peers";
    pipeline.instances_ready().await?;
    let pids = vec![
        pipeline
            .pid("reconciler")
            .context("no reconciler process")?,
        pipeline.pid("reconciler-2").unwrap_or(second_pid),
    ];
    println!(
        "== {label:<22} a second instance in the group; the first asked over TLS as the federal reader, its CPU and the second's counted: the second's persons asked of it"
    );
    let before = pipeline.metrics_of("reconciler").await?;
    let target = Target {
        name: label.to_owned(),
        addr: first.clone(),
        pids,
        tls: tls.clone(),
    };
    rows.extend(
        measure_methods(
            setup,
            a,
            calls,
            std::slice::from_ref(&target),
            &[GET_PERSON, LIST_PERSONS],
        )
        .await?,
    );
    let after = pipeline.metrics_of("reconciler").await?;
    let reads = |view: &str, from: &str| {
        let (view, from) = (format!("view=\"{view}\""), format!("from=\"{from}\""));
        let of = |text: &str| {
            e2e::metric_where(text, "ponte_reconciler_view_reads_total", |l| {
                l.contains(&view) && l.contains(&from)
            })
        };
        of(&after) - of(&before)
    };
    println!(
        "views read         by the first instance: {:.0} from its state, {:.0} from the second, {:.0} unavailable",
        reads("person", "state"),
        reads("person", "owner"),
        reads("person", "unavailable")
    );
    println!(
        "lists read         by the first instance: {:.0} from its state, {:.0} from both states, {:.0} unavailable",
        reads("list", "state"),
        reads("list", "owner"),
        reads("list", "unavailable")
    );
    Ok(rows)
}

/// A path as an environment value.
fn path(p: &Path) -> String {
    p.display().to_string()
}

/// The development PKI of a run (in its work directory).
struct Pki(ponte_access::pki::DevPkiManifest);

impl Pki {
    fn new(setup: &e2e::Setup<'_>) -> anyhow::Result<Pki> {
        Ok(Pki(ponte_access::pki::generate_dev(
            &setup.work.join("pki"),
            true,
        )?))
    }

    /// The certificate files of development principal `name`.
    fn client(&self, name: &str) -> anyhow::Result<&ponte_access::pki::CertFiles> {
        self.0
            .clients
            .iter()
            .find(|c| c.spec.name == name)
            .map(|c| &c.files)
            .with_context(|| format!("the development PKI has no {name}"))
    }

    /// The environment changes that put the reconciler's listener on TLS with required client
    /// certificates.
    fn listener_env(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("PONTE__TLS__INSECURE", None),
            ("PONTE__ACCESS__ANONYMOUS_PRINCIPAL", None),
            ("PONTE__TLS__CERT_FILE", Some(path(&self.0.server.cert))),
            ("PONTE__TLS__KEY_FILE", Some(path(&self.0.server.key))),
            ("PONTE__TLS__CLIENT_CA_FILE", Some(path(&self.0.ca.cert))),
        ]
    }

    /// ghz's TLS arguments as principal `name`.
    fn ghz_args(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let c = self.client(name)?;
        Ok(vec![
            "--cacert".to_owned(),
            path(&self.0.ca.cert),
            "--cert".to_owned(),
            path(&c.cert),
            "--key".to_owned(),
            path(&c.key),
            "--cname".to_owned(),
            "localhost".to_owned(),
        ])
    }
}

/// Seconds of a ghz `-z` duration: `20s`, `1m`.
fn duration_seconds(z: &str) -> anyhow::Result<u32> {
    match z.split_at(z.len().saturating_sub(1)) {
        (n, "s") => n.parse().ok(),
        (n, "m") => n.parse::<u32>().ok().map(|m| m * 60),
        _ => None,
    }
    .with_context(|| format!("--duration {z:?}: seconds or minutes (20s, 1m)"))
}

/// `GetPerson` at `a.rps` from the bench's own client ([`crate::paced_reads`]), for as long
/// as a ghz run, against each plaintext target in turn.
async fn paced_client(a: &Args, targets: &[Target], nis: &[String]) -> anyhow::Result<()> {
    let seconds = duration_seconds(&a.duration)?;
    for t in targets.iter().filter(|t| t.tls == ["--insecure"]) {
        let pace = crate::paced_reads::Pace {
            rate: a.rps,
            seconds,
            connections: a.connections,
        };
        // The trivial services run in this process: their CPU is in the client's.
        let servers: Vec<u32> = t
            .pids
            .iter()
            .copied()
            .filter(|p| *p != std::process::id())
            .collect();
        let o = crate::paced_reads::get_person(&t.addr, nis, pace, &servers).await?;
        println!(
            "== GetPerson at {}/s from ponte-bench's own client (tonic; open loop), {}",
            a.rps, t.name
        );
        print!("{}", o.report());
    }
    Ok(())
}

/// What the audit topic holds: entries, bytes, and the read entries among them.
#[derive(Debug, Default, Clone, Copy)]
struct AuditBytes {
    entries: u64,
    bytes: u64,
    reads: u64,
    read_bytes: u64,
}

async fn audit_bytes(setup: &e2e::Setup<'_>) -> anyhow::Result<AuditBytes> {
    use ponte_proto::audit::v1::{AuditEntry, audit_entry::Body};
    let kafka = ponte_bus::KafkaConfig {
        bootstrap_servers: setup.bootstrap.to_owned(),
        message_timeout_ms: 30_000,
        properties: Default::default(),
    };
    let topic = format!("{}audit.v1", setup.prefix);
    let counted = tokio::task::spawn_blocking(move || {
        let mut c = AuditBytes::default();
        ponte_audit::log::scan_topic(&kafka, &topic, |_, b| {
            c.entries += 1;
            c.bytes += b.len() as u64;
            if matches!(
                AuditEntry::decode(b).map(|e| e.body),
                Ok(Some(Body::Read(_)))
            ) {
                c.reads += 1;
                c.read_bytes += b.len() as u64;
            }
        })
        .map(|()| c)
    })
    .await??;
    Ok(counted)
}

/// The data files and protos of the ghz runs.
struct Calls<'a> {
    get: &'a Path,
    list: &'a Path,
    import: &'a Path,
    compliance: &'a Path,
}

/// Loads every target with ghz: each call at full speed, then paced.
async fn measure(
    setup: &e2e::Setup<'_>,
    a: &Args,
    calls: &Calls<'_>,
    targets: &[Target],
) -> anyhow::Result<Vec<Row>> {
    measure_methods(setup, a, calls, targets, &[GET_PERSON, LIST_PERSONS]).await
}

/// [`measure`] of `methods` only.
async fn measure_methods(
    setup: &e2e::Setup<'_>,
    a: &Args,
    calls: &Calls<'_>,
    targets: &[Target],
    methods: &[&str],
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (get_rps, list_rps) in [(0, 0), (a.rps, a.list_rps)] {
        for (call, data, rps) in [
            (GET_PERSON, calls.get, get_rps),
            (LIST_PERSONS, calls.list, list_rps),
        ]
        .into_iter()
        .filter(|(call, _, _)| methods.contains(call))
        {
            for t in targets {
                let (server, addr, pids) = (&t.name, &t.addr, &t.pids);
                let method = call.rsplit('/').next().unwrap_or(call);
                let load = match rps {
                    0 => "max".to_owned(),
                    r => format!("{r}/s"),
                };
                let out = setup.work.join(format!(
                    "ghz-{method}-{}-{server}.json",
                    load.replace("/s", "rps")
                ));
                let busy0 = e2e::machine_jiffies();
                let cpu0 = e2e::cpu_seconds_of(pids);
                let ghz0 = children_cpu_seconds();
                let started = Instant::now();
                let mut c = tokio::process::Command::new(&a.ghz);
                c.arg("--proto")
                    .arg(calls.compliance)
                    .arg("--import-paths")
                    .arg(calls.import)
                    .args(&t.tls)
                    .args(["--call", call, "-z", &a.duration])
                    .args(["--duration-stop", "wait"])
                    .args(["-c", &a.concurrency.to_string()])
                    .args(["--connections", &a.connections.to_string()])
                    .arg("-D")
                    .arg(data)
                    .args(["-O", "json", "-o"])
                    .arg(&out);
                if rps > 0 {
                    c.args(["--rps", &rps.to_string()]);
                }
                let status = c.arg(addr).output().await.context("running ghz")?;
                let wall = started.elapsed().as_secs_f64();
                anyhow::ensure!(
                    status.status.success(),
                    "ghz {call} against {server}: {}{}",
                    String::from_utf8_lossy(&status.stdout),
                    String::from_utf8_lossy(&status.stderr)
                );
                let report = parse_report(
                    &std::fs::read_to_string(&out)
                        .with_context(|| format!("reading {}", out.display()))?,
                )
                .with_context(|| format!("parsing {}", out.display()))?;
                let cpu = match (cpu0, e2e::cpu_seconds_of(pids)) {
                    (Some(a), Some(b)) => b - a,
                    _ => f64::NAN,
                };
                let client_cpu = match (ghz0, children_cpu_seconds()) {
                    (Some(a), Some(b)) => b - a,
                    _ => f64::NAN,
                };
                let busy = match (busy0, e2e::machine_jiffies()) {
                    (Some((b0, t0)), Some((b1, t1))) => (b1 - b0) as f64 / (t1 - t0).max(1) as f64,
                    _ => f64::NAN,
                };
                let row = Row {
                    method: method.to_owned(),
                    load,
                    server: server.clone(),
                    report,
                    server_cpu: cpu,
                    client_cpu,
                    busy,
                };
                println!("{}   (wall {wall:.1} s)", row.line());
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

/// One ghz run.
#[derive(Debug)]
struct Row {
    method: String,
    load: String,
    server: String,
    report: Report,
    /// Server CPU seconds (user + system) during the run.
    server_cpu: f64,
    /// ghz's CPU seconds.
    client_cpu: f64,
    /// Share of the whole machine busy during the run.
    busy: f64,
}

const HEADER: &str = "call         load     server               requests/s      p50      p90      p99   errors  CPU/request: server     ghz  machine busy";

impl Row {
    fn line(&self) -> String {
        let r = &self.report;
        let pct = |p| r.percentile(p).map(ms).unwrap_or_else(|| "-".to_owned());
        format!(
            "{:<12} {:<8} {:<20} {:>10.0} {:>8} {:>8} {:>8} {:>8}  {:>19} {:>7}  {:>11.0} %",
            self.method,
            self.load,
            self.server,
            r.rps,
            pct(50),
            pct(90),
            pct(99),
            r.errors(),
            format!("{:.0} µs", self.cpu_per_request() * 1e6),
            format!(
                "{:.0} µs",
                self.client_cpu / self.report.count.max(1) as f64 * 1e6
            ),
            self.busy * 100.0
        )
    }

    fn cpu_per_request(&self) -> f64 {
        self.server_cpu / self.report.count.max(1) as f64
    }
}

fn print_table(rows: &[Row]) {
    println!("== queries under load (ghz; requests/s over all calls, latency of the OK ones)");
    println!("{HEADER}");
    for r in rows {
        println!("{}", r.line());
    }
    for r in rows.iter().filter(|r| r.server == "reconciler") {
        for t in rows
            .iter()
            .filter(|t| t.server != "reconciler" && t.method == r.method && t.load == r.load)
        {
            let ratio = |p| match (r.report.percentile(p), t.report.percentile(p)) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.1}×", a / b),
                _ => "-".to_owned(),
            };
            println!(
                "ratio reconciler/{:<19} {:<12} {:<8} requests/s {:.2}×, p50 {}, p99 {}, server CPU/request {:.1}×",
                t.server,
                r.method,
                r.load,
                r.report.rps / t.report.rps.max(1e-9),
                ratio(50),
                ratio(99),
                r.cpu_per_request() / t.cpu_per_request().max(1e-12)
            );
        }
    }
    for r in rows.iter().filter(|r| r.report.errors() > 0) {
        println!(
            "errors             {} {} {}: {:?} {:?}",
            r.method, r.load, r.server, r.report.statuses, r.report.error_kinds
        );
    }
}

/// User + system CPU seconds of this process's children that have been waited for (ghz, run
/// and waited for one at a time), from `/proc/self/stat` (clock ticks of 100 Hz).
fn children_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let cutime: f64 = fields.get(13)?.parse().ok()?;
    let cstime: f64 = fields.get(14)?.parse().ok()?;
    Some((cutime + cstime) / 100.0)
}

/// A latency in seconds as milliseconds.
fn ms(s: f64) -> String {
    if s < 0.01 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} ms", s * 1e3)
    }
}

/// What ghz's `--format json` report says (the per-request `details` are ignored).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Report {
    /// Calls made, errors included.
    pub(crate) count: u64,
    /// Wall time of the run, seconds.
    pub(crate) total: f64,
    /// `count / total`.
    pub(crate) rps: f64,
    /// Percentile (10, 25, 50, 75, 90, 95, 99) → latency in seconds, over the OK calls.
    pub(crate) latency: BTreeMap<u32, f64>,
    /// gRPC status name (`OK`, `Unavailable`, ...) → calls.
    pub(crate) statuses: BTreeMap<String, u64>,
    /// Error message → calls.
    pub(crate) error_kinds: BTreeMap<String, u64>,
}

impl Report {
    /// Calls that did not end with `OK`.
    pub(crate) fn errors(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(k, _)| k.as_str() != "OK")
            .map(|(_, v)| v)
            .sum()
    }

    pub(crate) fn percentile(&self, p: u32) -> Option<f64> {
        self.latency.get(&p).copied()
    }
}

/// Parses ghz's JSON report (durations in nanoseconds).
pub(crate) fn parse_report(json: &str) -> anyhow::Result<Report> {
    let v: serde_json::Value = serde_json::from_str(json)?;
    let num = |key: &str| {
        v.get(key)
            .and_then(serde_json::Value::as_f64)
            .with_context(|| format!("ghz report without {key:?}"))
    };
    let counts = |key: &str| -> BTreeMap<String, u64> {
        v.get(key)
            .and_then(serde_json::Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let latency = v
        .get("latencyDistribution")
        .and_then(serde_json::Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|d| {
                    let p = d.get("percentage")?.as_u64()?;
                    let ns = d.get("latency")?.as_f64()?;
                    Some((u32::try_from(p).ok()?, ns / 1e9))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Report {
        count: num("count")? as u64,
        total: num("total")? / 1e9,
        rps: num("rps")?,
        latency,
        statuses: counts("statusCodeDistribution"),
        error_kinds: counts("errorDistribution"),
    })
}

/// ghz's proto parser refuses proto3 `optional`; for decoding, a copy without the keyword is
/// equivalent (the label changes presence tracking, not the wire format). Writes the copy under
/// `work/protos` and returns (import directory, path of `compliance.proto`).
pub(crate) fn ghz_protos(repo_protos: &Path, work: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let original =
        std::fs::read_to_string(repo_protos.join("ponte/compliance/v1/compliance.proto"))?;
    let stripped: String = original
        .lines()
        .map(|l| match l.trim_start().strip_prefix("optional ") {
            Some(rest) => format!("  {rest}\n"),
            None => format!("{l}\n"),
        })
        .collect();
    let protos = work.join("protos");
    std::fs::create_dir_all(protos.join("ponte/compliance/v1"))?;
    let compliance = protos.join("ponte/compliance/v1/compliance.proto");
    std::fs::write(&compliance, stripped)?;
    Ok((protos, compliance))
}

/// A ghz data file (`-D`): a JSON array of `GetPersonRequest`s, which ghz cycles through.
pub(crate) fn write_get_person_data(path: &Path, nis: &[String]) -> anyhow::Result<()> {
    let bodies: Vec<serde_json::Value> = nis
        .iter()
        .map(|n| serde_json::json!({ "nis": n }))
        .collect();
    std::fs::write(path, serde_json::to_vec(&bodies)?)?;
    Ok(())
}

/// The page tokens to start from so that every page is full: the beginning (empty), then the
/// token of every `page_size`-th person.
pub(crate) fn page_starts(tokens: &[String], page_size: usize) -> Vec<String> {
    let page_size = page_size.max(1);
    let mut out = vec![String::new()];
    let mut k = 1;
    while (k + 1) * page_size <= tokens.len() {
        out.push(tokens[k * page_size - 1].clone());
        k += 1;
    }
    out
}

/// The municipality of the registry file with the most people.
fn largest_municipality(data: &Path) -> anyhow::Result<String> {
    use std::io::BufRead as _;
    let file = std::fs::File::open(data.join("registry-persons.csv"))?;
    let mut lines = std::io::BufReader::new(file).lines();
    let header = lines.next().context("empty registry file")??;
    let column = header
        .split(',')
        .position(|c| c == "municipality")
        .context("no municipality column in the registry file")?;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for line in lines {
        if let Some(m) = line?.split(',').nth(column) {
            *counts.entry(m.to_owned()).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(m, _)| m)
        .context("no person in the registry file")
}

/// Real views read once from the reconciler before the load.
#[derive(Debug)]
struct RealSample {
    /// NIS asked.
    sampled: usize,
    /// The persons found.
    persons: Vec<Person>,
    /// Every person of the municipality, in order, as `ListPersons` streams them.
    list: Vec<ListPersonsItem>,
}

fn avg<T>(items: &[T], f: impl Fn(&T) -> usize) -> f64 {
    items.iter().map(f).sum::<usize>() as f64 / items.len().max(1) as f64
}

async fn sample_reconciler(
    addr: &str,
    nis: &[String],
    municipality: &str,
) -> anyhow::Result<RealSample> {
    let mut client = ComplianceServiceClient::connect(format!("http://{addr}")).await?;
    let mut persons = Vec::new();
    for n in nis {
        match client.get_person(GetPersonRequest { nis: n.clone() }).await {
            Ok(r) => persons.extend(r.into_inner().person),
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(s.into()),
        }
    }
    let mut stream = client
        .list_persons(ListPersonsRequest {
            municipality: municipality.to_owned(),
            page_size: 100_000,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut list = Vec::new();
    while let Some(item) = stream.message().await? {
        list.push(item);
    }
    Ok(RealSample {
        sampled: nis.len(),
        persons,
        list,
    })
}

type ItemStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Copies of real views the trivial service answers from.
#[derive(Debug)]
struct Copies {
    persons: Vec<Person>,
    list: Vec<ListPersonsItem>,
}

/// `ComplianceService` from memory: copies of real views, in turn.
#[derive(Debug, Clone)]
struct Trivial {
    copies: Arc<Copies>,
    /// Calls answered so far (picks the next copy).
    calls: Arc<AtomicUsize>,
    /// Build each answer on a blocking thread, as the reconciler reads its store.
    blocking: bool,
}

impl Trivial {
    /// Runs `f` here, or on a blocking thread (`spawn_blocking`) in the blocking variant.
    /// `f` gets the copies and the number of this call.
    async fn answer<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Copies, usize) -> T + Send + 'static,
    ) -> Result<T, Status> {
        let copies = self.copies.clone();
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        match self.blocking {
            false => Ok(f(&copies, call)),
            true => tokio::task::spawn_blocking(move || f(&copies, call))
                .await
                .map_err(|e| Status::internal(e.to_string())),
        }
    }
}

#[tonic::async_trait]
impl ComplianceService for Trivial {
    type ListPersonsStream = ItemStream<ListPersonsItem>;
    type WatchChangesStream = ItemStream<WatchedChange>;

    async fn get_person(
        &self,
        request: Request<GetPersonRequest>,
    ) -> Result<Response<GetPersonResponse>, Status> {
        let nis = request.into_inner().nis;
        let person = self
            .answer(move |c, call| Person {
                nis,
                ..Person::clone(&c.persons[call % c.persons.len()])
            })
            .await?;
        Ok(Response::new(GetPersonResponse {
            person: Some(person),
        }))
    }

    async fn list_persons(
        &self,
        request: Request<ListPersonsRequest>,
    ) -> Result<Response<Self::ListPersonsStream>, Status> {
        let n = match request.into_inner().page_size {
            0 => 1000,
            n => n.min(100_000),
        };
        // Built whole before streaming, as the reconciler does.
        let items: Vec<_> = self
            .answer(move |c, call| {
                let start = call * n as usize;
                (start..start + n as usize)
                    .map(|i| Ok(c.list[i % c.list.len()].clone()))
                    .collect()
            })
            .await?;
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    async fn get_family(
        &self,
        _: Request<GetFamilyRequest>,
    ) -> Result<Response<GetFamilyResponse>, Status> {
        Err(Status::unimplemented("trivial benchmark service"))
    }

    async fn list_parked(
        &self,
        _: Request<ListParkedRequest>,
    ) -> Result<Response<ListParkedResponse>, Status> {
        Err(Status::unimplemented("trivial benchmark service"))
    }

    async fn get_indicators(
        &self,
        _: Request<GetIndicatorsRequest>,
    ) -> Result<Response<GetIndicatorsResponse>, Status> {
        Err(Status::unimplemented("trivial benchmark service"))
    }

    async fn get_household(
        &self,
        _: Request<GetHouseholdRequest>,
    ) -> Result<Response<GetHouseholdResponse>, Status> {
        Err(Status::unimplemented("trivial benchmark service"))
    }

    async fn get_household_indicators(
        &self,
        _: Request<GetHouseholdIndicatorsRequest>,
    ) -> Result<Response<GetHouseholdIndicatorsResponse>, Status> {
        Err(Status::unimplemented("trivial benchmark service"))
    }

    async fn watch_changes(
        &self,
        _: Request<WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        Err(Status::unimplemented("trivial benchmark service"))
    }
}

/// The trivial service, served in this process on a free port until dropped.
#[derive(Debug)]
struct TrivialServer {
    addr: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl TrivialServer {
    /// Serves as the reconciler does (tonic's default server over a stream of accepted
    /// connections, which leaves `TCP_NODELAY` off); with `nodelay`, sets it on every connection;
    /// with `blocking`, builds every answer on a blocking thread.
    async fn start(copies: Arc<Copies>, nodelay: bool, blocking: bool) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let incoming = Box::pin(futures::stream::unfold(listener, move |l| async move {
            let accepted = l.accept().await.and_then(|(s, _)| {
                if nodelay {
                    s.set_nodelay(true)?;
                }
                Ok(s)
            });
            Some((accepted, l))
        }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = ComplianceServiceServer::new(Trivial {
            copies,
            calls: Arc::new(AtomicUsize::new(0)),
            blocking,
        });
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                eprintln!("trivial gRPC service: {e}");
            }
        });
        Ok(Self { addr, _stop: stop })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ghz_duration_is_seconds_or_minutes() {
        assert_eq!(duration_seconds("20s").ok(), Some(20));
        assert_eq!(duration_seconds("2m").ok(), Some(120));
        for bad in ["", "20", "1h", "xs", "-1s"] {
            assert!(duration_seconds(bad).is_err(), "{bad}");
        }
    }

    /// A real `ghz --format json` report of a GetPerson run, trimmed (`options`, `histogram`
    /// and `details` shortened) and with one error added.
    const SAMPLE: &str = r#"{"date":"2026-11-29T22:17:14Z","endReason":"timeout","options":{"call":"ponte.compliance.v1.ComplianceService/GetPerson","concurrency":50,"connections":2,"CPUs":2},"count":9694,"total":3044759316,"average":14829546,"fastest":433072,"slowest":165753410,"rps":3183.5028631208893,"errorDistribution":{"rpc error: code = Unavailable desc = transport is closing":1},"statusCodeDistribution":{"OK":9693,"Unavailable":1},"latencyDistribution":[{"percentage":10,"latency":2533611},{"percentage":25,"latency":3583699},{"percentage":50,"latency":6173597},{"percentage":75,"latency":13718544},{"percentage":90,"latency":47951255},{"percentage":95,"latency":51831831},{"percentage":99,"latency":71535539}],"histogram":[{"mark":0.000433072,"count":1,"frequency":0.00010316723408645414},{"mark":0.016965105799999998,"count":7512,"frequency":0.7749922624574436}],"details":[{"timestamp":"2026-11-29T22:17:11.110773228Z","latency":3552722,"error":"","status":"OK"}]}"#;

    #[test]
    fn ghz_json_report_is_read() {
        let r = parse_report(SAMPLE).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.count, 9694);
        assert!((r.total - 3.044759316).abs() < 1e-9);
        assert!((r.rps - 3183.5028631208893).abs() < 1e-9);
        let near = |p, x: f64| r.percentile(p).is_some_and(|v| (v - x).abs() < 1e-12);
        assert!(
            near(50, 0.006173597) && near(90, 0.047951255) && near(99, 0.071535539),
            "{:?}",
            r.latency
        );
        assert_eq!(r.errors(), 1);
        assert_eq!(r.statuses.get("OK"), Some(&9693));
        assert_eq!(r.error_kinds.len(), 1);
    }

    #[test]
    fn a_report_where_everything_failed_has_no_latencies() {
        let json = r#"{"count":10,"total":1000000000,"rps":10,"latencyDistribution":null,"statusCodeDistribution":{"Unavailable":10},"errorDistribution":{"connection refused":10}}"#;
        let r = parse_report(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.percentile(50), None);
        assert_eq!(r.errors(), 10);
        assert!(parse_report("{}").is_err());
    }

    #[test]
    fn pages_start_where_a_full_page_follows() {
        let tokens: Vec<String> = (0..250).map(|i| i.to_string()).collect();
        assert_eq!(page_starts(&tokens, 100), vec!["", "99"]);
        assert_eq!(page_starts(&tokens[..99], 100), vec![""]);
        assert_eq!(page_starts(&tokens, 50).len(), 5);
    }
}
