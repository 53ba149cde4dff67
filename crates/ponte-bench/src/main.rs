//! `ponte-bench`: Ponte's benchmarks as a program that prints figures (never a test that asserts
//! timings). Every run starts from a `ponte-sim` population (seeded, so reruns see the same
//! records):
//!
//! - `reconciler`: the topology alone, in-process over RocksDB, one thread (events/s per core);
//! - `broker`: the bare-broker baseline, the same records produced and consumed with rdkafka;
//! - `e2e`: the real processes end to end (`ponte ingest` → adapters → Kafka → reconciler →
//!   committed view), then the bare-broker baseline in the same run, and the ratio;
//! - `queries`: `GetPerson` and `ListPersons` of that complete view under load with `ghz`, beside
//!   a trivial tonic service loaded the same way.
//!
//! Build in release mode (`cargo build --release -p ponte -p ponte-bench`); see
//! `docs/benchmarks.md` for the commands and the figures measured.

/// mimalloc instead of glibc's allocator: the reconciler allocates and frees many small
/// buffers per event (decoded records, views, keys), and with glibc's allocator that was about
/// a third of its time (docs/benchmarks.md, "Where the time goes").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ponte_domain::period::{Bimester, Semester};
use ponte_reconciler::config::StateCompaction;
use prost::Message as _;

mod broker;
mod e2e;
mod events;
mod floor;
mod paced_reads;
mod queries;
mod reconciler;

#[derive(Debug, Parser)]
#[command(name = "ponte-bench", about = "Ponte's benchmarks: print figures")]
struct Cli {
    #[command(flatten)]
    data: DataArgs,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, clap::Args)]
struct DataArgs {
    /// About this many people in the simulated population.
    #[arg(long, global = true, default_value_t = 100_000)]
    people: u64,
    #[arg(long, global = true, default_value_t = 1)]
    seed: u64,
    /// Bimesters of school attendance, comma-separated.
    #[arg(long, global = true, value_delimiter = ',', default_value = "2025-B2")]
    bimesters: Vec<String>,
    /// Health semesters, comma-separated.
    #[arg(long, global = true, value_delimiter = ',', default_value = "2025-S1")]
    semesters: Vec<String>,
    /// Work directory (simulated files, state, logs); a temporary one when absent. Files of an
    /// earlier run with the same settings in it are reused.
    #[arg(long, global = true)]
    work: Option<PathBuf>,
    /// The programme of the simulated population: `bolsa-familia` (people, the three sectors'
    /// records of `--bimesters` and `--semesters`) or `unidos` (Colombian households and the
    /// social workers' visits, evaluated on the day of the run; the reconciler follows them
    /// with rules/unidos-2021.toml).
    #[arg(long, global = true, default_value = "bolsa-familia")]
    programme: Programme,
}

/// A programme the simulator has a population of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Programme {
    BolsaFamilia,
    Unidos,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The reconciler's topology alone, in-process, one thread, RocksDB state.
    Reconciler {
        /// Events per committed batch (the service's `reconciler.batch_max`).
        #[arg(long, default_value_t = 5000)]
        batch: usize,
        /// Applies each event with point reads of its state, as the service did before it
        /// read the keys of a run of events at once (for comparisons in one build).
        #[arg(long)]
        no_read_ahead: bool,
        /// Looks for health records in the layout before `a/` (`e/`, `k/`) under every
        /// identifier touched, as the service does in a partition that still holds some, instead
        /// of screening those scans out (for comparisons in one build).
        #[arg(long)]
        no_screen: bool,
        /// Compacts the state store level by level, as the service did before it compacted
        /// it by size tiers (`reconciler.state_compaction = "levels"`; for comparisons in one
        /// build).
        #[arg(long)]
        state_leveled: bool,
        /// Keeps state values of at least this many bytes in blob files of their own, the
        /// tables holding keys and references, compacted by size tiers (for comparisons in one
        /// build).
        #[arg(long)]
        state_blobs: Option<u64>,
    },
    /// The bare-broker baseline alone.
    Broker {
        #[command(flatten)]
        kafka: KafkaArgs,
    },
    /// End to end through the real processes, then the bare-broker baseline in the same run.
    E2e {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// The `ponte` binary to run (build it with --release).
        #[arg(long, default_value = "target/release/ponte")]
        ponte: PathBuf,
        /// Also load the reconciler's gRPC server with this `ghz` binary once the view is
        /// complete: gRPC health Check (the bare tonic stack) and GetPerson; then (at a
        /// rate) GetPerson at the same rate from the bench's own client.
        #[arg(long)]
        ghz: Option<PathBuf>,
        /// ghz: requests per second (0 = as fast as it can).
        #[arg(long, default_value_t = 5000)]
        ghz_rps: u32,
        /// ghz: seconds per call.
        #[arg(long, default_value_t = 20)]
        ghz_seconds: u32,
        /// ghz: concurrent workers.
        #[arg(long, default_value_t = 50)]
        ghz_concurrency: u32,
        /// The repository's proto directory (ghz needs the .proto files).
        #[arg(long, default_value = "proto")]
        protos: PathBuf,
        /// Once the view is complete (after ghz), restart the reconciler on its state, first
        /// after SIGTERM, then after SIGKILL, then after SIGKILL with its state directory
        /// deleted (a lost disk): shutdown time, time until ready and until GetPerson answers,
        /// state on disk, RSS, what it restored.
        #[arg(long)]
        restart: bool,
        /// Give up when the view is not complete this many minutes after the ingest began
        /// (10 M people take hours on 2 cores).
        #[arg(long, default_value_t = 60)]
        view_timeout_min: u64,
        /// Once the view is complete, send the next bimester's attendance of the first pupils
        /// at this many records per second, in small requests on a fixed schedule, and measure
        /// their ingest-to-view latency alone (0 = no paced follow-up).
        #[arg(long, default_value_t = 0)]
        paced_rate: u32,
        /// How long the paced follow-up sends (records = rate × seconds).
        #[arg(long, default_value_t = 60)]
        paced_seconds: u32,
        /// Records per request of the paced follow-up.
        #[arg(long, default_value_t = 10)]
        paced_batch: u32,
        /// Run the services with TLS and client certificates (a development PKI in the work
        /// directory), each sector's `ponte ingest` presenting its system's certificate. Only
        /// the bulk load: not with --ghz, --restart or --paced-rate.
        #[arg(long)]
        tls: bool,
        /// Run the services with the audit log on (signing keys and a subject key made in
        /// the work directory) and report its entries and bytes per input record.
        #[arg(long)]
        audit: bool,
    },
    /// The view of an end-to-end run under query load: ghz against the reconciler's GetPerson
    /// and ListPersons, and against a trivial tonic service, at full speed and paced.
    Queries {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// The `ponte` binary to run (build it with --release).
        #[arg(long, default_value = "target/release/ponte")]
        ponte: PathBuf,
        /// The `ghz` binary (`GOBIN=$PWD/.cache/go-bin go install
        /// github.com/bojand/ghz/cmd/ghz@v0.120.0`; docs/benchmarks.md).
        #[arg(long, default_value = ".cache/go-bin/ghz")]
        ghz: PathBuf,
        /// The repository's proto directory (ghz needs the .proto files).
        #[arg(long, default_value = "proto")]
        protos: PathBuf,
        /// How long each ghz run lasts (ghz -z: `20s`, `1m`).
        #[arg(long, default_value = "20s")]
        duration: String,
        /// ghz workers.
        #[arg(long, default_value_t = 50)]
        concurrency: u32,
        /// ghz connections.
        #[arg(long, default_value_t = 2)]
        connections: u32,
        /// GetPerson requests per second asked in the paced runs.
        #[arg(long, default_value_t = 5000)]
        rps: u32,
        /// ListPersons requests per second asked in the paced runs.
        #[arg(long, default_value_t = 100)]
        list_rps: u32,
        /// ListPersons page size.
        #[arg(long, default_value_t = 100)]
        page_size: u32,
        /// Municipality (IBGE code) listed; the one with the most people when absent.
        #[arg(long)]
        municipality: Option<String>,
        /// Also load variants of the trivial service: with TCP_NODELAY, with each answer built on
        /// a blocking thread as the reconciler reads its store, and with both.
        #[arg(long)]
        variants: bool,
        /// Then restart the reconciler with TLS and client certificates (a development PKI in
        /// the work directory) and load it again, ghz presenting the federal reader's
        /// certificate: TLS and authentication on beside off, in the same run.
        #[arg(long)]
        tls: bool,
        /// Then restart the reconciler with the audit log on (a signing key and a subject key
        /// made in the work directory) and load it again: every read recorded beside none, in
        /// the same run, with the audit bytes per read.
        #[arg(long)]
        audit: bool,
        /// Then start a second reconciler instance in the group, every listener on TLS with
        /// client certificates, and load the first with GetPerson and ListPersons: the second's
        /// persons asked of it and lists gathered from both (reads across instances), then, both
        /// restarted without, the second's persons unavailable to the first; the CPU of both
        /// counted.
        #[arg(long)]
        peers: bool,
    },
}

#[derive(Debug, clap::Args)]
struct KafkaArgs {
    #[arg(long, default_value = "127.0.0.1:19092")]
    bootstrap: String,
    /// Partitions of every topic (Ponte's `topics.partitions`).
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Keep the benchmark's topics on the broker afterwards, and the end-to-end run's
    /// reconciler state beside its logs (deleted otherwise: ~15 GB at 10 M people).
    #[arg(long)]
    keep_topics: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let temp = tempfile::tempdir()?;
    let work = cli
        .data
        .work
        .clone()
        .unwrap_or_else(|| temp.path().to_owned());
    std::fs::create_dir_all(&work)?;
    machine();
    let data = simulate(&cli.data, &work)?;
    let now = SystemTime::now();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("bench-{}.ponte.", &id[..8]);
    match cli.command {
        Cmd::Reconciler {
            batch,
            no_read_ahead,
            no_screen,
            state_leveled,
            state_blobs,
        } => {
            let state = e2e::work_dir(&work, &format!("reconciler-state-{}", &id[..8]))?;
            let load = machine_load_start();
            let started = Instant::now();
            let how = reconciler::How {
                read_ahead: !no_read_ahead,
                screened: !no_screen,
                state_layout: match (state_leveled, state_blobs) {
                    (true, _) => StateCompaction::Levels.layout(),
                    (false, None) => StateCompaction::Tiers.layout(),
                    (false, Some(min_blob_bytes)) => ponte_store::Layout::LargeValues {
                        min_blob_bytes,
                        merge_width: 4,
                        space_amp_percent: 200,
                        blob_gc_age_percent: 25,
                    },
                },
            };
            let cpu_before = e2e::cpu_seconds(std::process::id());
            let f = reconciler::run(&data, &state, batch, now, how)?;
            let wall = started.elapsed().as_secs_f64();
            let cpu = e2e::cpu_seconds(std::process::id())
                .zip(cpu_before)
                .map(|(after, before)| after - before);
            let busy = f.apply + f.commit;
            println!("== reconciler alone (in-process, 1 thread, RocksDB, batches of {batch})");
            println!("events             {}", f.events);
            println!(
                "applied            {} changed, {} parked, {} unchanged, {} invalid; {} outputs",
                f.changed, f.parked, f.unchanged, f.invalid, f.outputs
            );
            println!(
                "repartition msgs   {} (applied too; the per-event figures below include them)",
                f.internal
            );
            println!(
                "topology.apply     {:.2} s  ({:.1} µs/event)",
                f.apply.as_secs_f64(),
                f.apply.as_secs_f64() * 1e6 / f.events.max(1) as f64
            );
            println!(
                "store commit       {:.2} s  ({:.1} µs/event)",
                f.commit.as_secs_f64(),
                f.commit.as_secs_f64() * 1e6 / f.events.max(1) as f64
            );
            let per_input = |n: u64| n as f64 / f.events.max(1) as f64;
            println!(
                "state writes       {:.2} per input event, each a changelog entry in the service ({})",
                per_input(f.writes_by_table.values().sum()),
                f.writes_by_table
                    .iter()
                    .map(|(t, n)| format!("{t}/ {:.2}", per_input(*n)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            println!(
                "state write bytes  {} per write by table",
                f.bytes_by_table
                    .iter()
                    .map(|(t, b)| format!(
                        "{t}/ {:.0}",
                        *b as f64 / f.writes_by_table.get(t).copied().unwrap_or(1).max(1) as f64
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            match f.state_writes {
                Some(w) => println!(
                    "state      store   flushes wrote {:.1} MiB; flushes and compactions {:.1} MiB ({:.1}× what was flushed) in {:.1} s; writes stalled {:.1} s",
                    w.flushed_bytes as f64 / 1048576.0,
                    w.written_bytes as f64 / 1048576.0,
                    w.amplification(),
                    w.seconds,
                    w.stall_seconds
                ),
                None => println!("state      store   no compaction report"),
            }
            println!(
                "throughput         {:.0} events/s per core (apply + commit); wall {:.1} s incl. parsing",
                f.events as f64 / busy.as_secs_f64().max(1e-9),
                wall
            );
            println!(
                "state on disk      {:.1} MiB",
                f.state_bytes as f64 / 1048576.0
            );
            if let Some(cpu) = cpu {
                println!(
                    "process CPU        {cpu:.1} s over {wall:.1} s: the loop's thread (at most {wall:.1} s) and RocksDB's (at least {:.1} s)",
                    (cpu - wall).max(0.0)
                );
            }
            machine_load_end(load, wall);
            let _ = std::fs::remove_dir_all(&state);
        }
        Cmd::Broker { kafka } => {
            let records = encoded(&data, now)?;
            let topic = format!("{prefix}bare");
            let f = broker::run(&kafka.bootstrap, &topic, kafka.partitions, &records).await?;
            print_broker(&f);
            if !kafka.keep_topics {
                broker::delete_topics(&kafka.bootstrap, &[topic]).await?;
            }
        }
        Cmd::E2e {
            kafka,
            ponte,
            ghz,
            ghz_rps,
            ghz_seconds,
            ghz_concurrency,
            protos,
            restart,
            view_timeout_min,
            paced_rate,
            paced_seconds,
            paced_batch,
            tls,
            audit,
        } => {
            let paced = if paced_rate > 0 {
                // Checked now, not after a bulk load that may take hours.
                anyhow::ensure!(paced_batch > 0, "--paced-batch must be at least 1");
                let (bimester, dir) = follow_up(&cli.data, &work)?;
                Some(e2e::Paced {
                    source: dir.join(format!("education-{bimester}.csv")),
                    records: u64::from(paced_rate) * u64::from(paced_seconds),
                    rate: paced_rate,
                    batch: paced_batch,
                })
            } else {
                None
            };
            let protos = std::fs::canonicalize(&protos)?;
            let ponte = std::fs::canonicalize(&ponte).with_context(|| {
                format!(
                    "{} (build it with cargo build --release -p ponte)",
                    ponte.display()
                )
            })?;
            let run_dir = e2e::work_dir(&work, &format!("e2e-{}", &id[..8]))?;
            broker_load(&kafka.bootstrap);
            let load = machine_load_start();
            let started = Instant::now();
            let f = e2e::run(&e2e::Setup {
                ponte: &ponte,
                bootstrap: &kafka.bootstrap,
                prefix: &prefix,
                partitions: kafka.partitions,
                work: &run_dir,
                data: &data,
                ghz: ghz.map(|bin| e2e::Ghz {
                    bin,
                    rps: ghz_rps,
                    seconds: ghz_seconds,
                    concurrency: ghz_concurrency,
                    protos: protos.clone(),
                }),
                restart,
                view_timeout: Duration::from_secs(view_timeout_min * 60),
                paced,
                tls,
                audit,
            })
            .await;
            let wall = started.elapsed().as_secs_f64();
            let f = match f {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("logs in {}", run_dir.display());
                    if !kafka.keep_topics {
                        cleanup(&kafka.bootstrap, &prefix).await;
                        e2e::delete_reconciler_state(&run_dir);
                    }
                    return Err(e);
                }
            };
            let e2e_rate = f.records as f64 / f.to_view.as_secs_f64().max(1e-9);
            println!(
                "== end to end (ponte ingest → adapters → Kafka → reconciler → committed view)"
            );
            println!(
                "records            {} (valid records of the population)",
                f.records
            );
            println!(
                "ingest done        {:.1} s ({:.0} records/s acknowledged by the adapters)",
                f.ingest.as_secs_f64(),
                f.records as f64 / f.ingest.as_secs_f64().max(1e-9)
            );
            println!("in the view        {:.1} s", f.to_view.as_secs_f64());
            if let Some(busy) = f.busy_to_view {
                println!(
                    "machine busy       {:.0} % of its cores until then (every process, not only ours)",
                    busy * 100.0
                );
            }
            println!("throughput         {e2e_rate:.0} records/s end to end");
            print_latency(&f.latency);
            println!(
                "reconciler         {} epochs, {:.0} input records and {:.0} events (input records and repartition messages) per epoch, commit {:.2} s in all, state {:.1} MiB",
                f.batches,
                f.records as f64 / f.batches.max(1.0),
                f.epoch_events / f.batches.max(1.0),
                f.commit_seconds,
                f.state_bytes / 1048576.0
            );
            let phases: Vec<String> = f
                .commit_phases
                .iter()
                .map(|(p, s)| format!("{p} {s:.2}"))
                .collect();
            println!(
                "consumer loop      applying {:.2} s, committing {:.2} s ({} s), the rest waiting for input",
                f.apply_seconds,
                f.commit_seconds,
                phases.join(", ")
            );
            let (counts, counting) = f.outcome_counts;
            println!(
                "outcome gauges     counted {counts:.0} times, {counting:.2} s in all ({:.1} ms each; a task beside the loop)",
                counting * 1e3 / counts.max(1.0)
            );
            for (name, cpu) in &f.cpu {
                println!("cpu                {name:<20} {cpu:.1} s");
                if name == "reconciler" {
                    println!(
                        "                   {:.1} µs of reconciler CPU per input record",
                        cpu * 1e6 / f.records.max(1) as f64
                    );
                }
            }
            if let Some(cpu) = f.broker_cpu_to_view {
                println!(
                    "cpu                {:<20} {cpu:.1} s (kafka.Kafka processes, from the first record sent until the view)",
                    "broker"
                );
            }
            let per_input = |v: &[(String, f64)]| {
                let total: f64 = v.iter().map(|(_, n)| n).sum();
                let parts: Vec<String> = v
                    .iter()
                    .filter(|(_, n)| *n > 0.0)
                    .map(|(k, n)| format!("{k} {:.2}", n / f.records.max(1) as f64))
                    .collect();
                format!(
                    "{:.2} per input record ({})",
                    total / f.records.max(1) as f64,
                    parts.join(", ")
                )
            };
            println!("produced           {}", per_input(&f.produced));
            if !f.repartitioned.is_empty() {
                println!(
                    "repartition        {} (in the batches counted above)",
                    per_input(&f.repartitioned)
                );
            }
            if !f.changelog.is_empty() {
                println!(
                    "changelog          {} (by state table, counted above)",
                    per_input(&f.changelog)
                );
            }
            println!("consumed           {}", per_input(&f.consumed));
            if let Some((entries, bytes)) = f.audit {
                println!(
                    "audit log          {entries} entries, {bytes} bytes: {:.1} bytes per input record",
                    bytes as f64 / f.records.max(1) as f64
                );
            }
            machine_load_end(load, wall);
            if let Some(p) = &f.paced {
                print_paced(p);
            }
            for (call, text) in &f.ghz {
                println!("== ghz {call}");
                print!("{text}");
            }
            if let Some(o) = &f.paced_reads {
                println!("== GetPerson from ponte-bench's own paced client (tonic; open loop)");
                print!("{}", o.report());
            }
            for r in &f.restarts {
                print_restart(r);
            }

            let records = encoded(&data, now)?;
            let topic = format!("{prefix}bare");
            let b = broker::run(&kafka.bootstrap, &topic, kafka.partitions, &records).await?;
            print_broker(&b);
            println!(
                "ratio              Ponte end to end = {:.2} × the bare broker ({e2e_rate:.0} / {:.0} records/s)",
                e2e_rate / b.rate(),
                b.rate()
            );
            let changes = format!("{prefix}compliance.changes.v1");
            let view_bytes = tokio::task::block_in_place(|| {
                floor::average_payload_blocking(
                    &kafka.bootstrap,
                    &changes,
                    kafka.partitions,
                    10_000,
                )
            })?;
            let fl = floor::run(
                &kafka.bootstrap,
                &prefix,
                kafka.partitions,
                &records,
                view_bytes,
            )
            .await?;
            println!(
                "== floor (inputs produced, consumed, one {} B view change each, one repartition message for {} of them; concurrent)",
                fl.view_bytes, fl.repartitioned
            );
            println!(
                "floor              {} inputs in {:.1} s: {:.0} records/s",
                fl.inputs,
                fl.elapsed.as_secs_f64(),
                fl.rate()
            );
            println!(
                "ratio              Ponte end to end = {:.2} × the floor ({e2e_rate:.0} / {:.0} records/s)",
                e2e_rate / fl.rate(),
                fl.rate()
            );
            if !kafka.keep_topics {
                cleanup(&kafka.bootstrap, &prefix).await;
                e2e::delete_reconciler_state(&run_dir);
            }
        }
        Cmd::Queries {
            kafka,
            ponte,
            ghz,
            protos,
            duration,
            concurrency,
            connections,
            rps,
            list_rps,
            page_size,
            municipality,
            variants,
            tls,
            audit,
            peers,
        } => {
            let ponte = std::fs::canonicalize(&ponte).with_context(|| {
                format!(
                    "{} (build it with cargo build --release -p ponte)",
                    ponte.display()
                )
            })?;
            let ghz = std::fs::canonicalize(&ghz).with_context(|| {
                format!(
                    "{} (go install github.com/bojand/ghz/cmd/ghz@v0.120.0, docs/benchmarks.md)",
                    ghz.display()
                )
            })?;
            let args = queries::Args {
                ghz,
                protos: std::fs::canonicalize(&protos)?,
                duration,
                concurrency,
                connections,
                rps,
                list_rps,
                page_size,
                municipality,
                variants,
                tls,
                audit,
                peers,
            };
            let run_dir = e2e::work_dir(&work, &format!("queries-{}", &id[..8]))?;
            let load = machine_load_start();
            let started = Instant::now();
            let done = queries::run(
                &e2e::Setup {
                    ponte: &ponte,
                    bootstrap: &kafka.bootstrap,
                    prefix: &prefix,
                    partitions: kafka.partitions,
                    work: &run_dir,
                    data: &data,
                    ghz: None,
                    restart: false,
                    view_timeout: Duration::from_secs(3600),
                    paced: None,
                    tls: false,
                    audit: false,
                },
                &args,
            )
            .await;
            if done.is_err() {
                eprintln!("logs and ghz reports in {}", run_dir.display());
            }
            machine_load_end(load, started.elapsed().as_secs_f64());
            if !kafka.keep_topics {
                cleanup(&kafka.bootstrap, &prefix).await;
            }
            done?;
        }
    }
    Ok(())
}

/// A latency in seconds; beyond the histogram's largest bucket (60 s) only "above" is known.
fn seconds(s: f64) -> String {
    if s.is_finite() {
        format!("{s:.3} s")
    } else {
        "> 60 s (above the largest bucket)".to_owned()
    }
}

fn print_latency(l: &e2e::Latency) {
    print_quantiles("ingest → view     ", "events", l);
}

/// A histogram's quantiles on one line headed `what` (18 columns).
fn print_quantiles(what: &str, of: &str, l: &e2e::Latency) {
    match (l.p50, l.p90, l.p99) {
        (Some(p50), Some(p90), Some(p99)) => println!(
            "{what} p50 {}, p90 {}, p99 {} ({} {of}, histogram interpolation)",
            seconds(p50),
            seconds(p90),
            seconds(p99),
            l.count
        ),
        _ => println!("{what} no latency samples"),
    }
}

fn print_paced(p: &e2e::PacedFigures) {
    println!(
        "== paced follow-up (the next bimester's attendance of the first pupils, {} records/s in requests of {}, on the state of the run above)",
        p.rate, p.batch
    );
    println!(
        "sent               {} records in {:.1} s ({:.0} records/s acknowledged by the adapter)",
        p.records,
        p.ingest.as_secs_f64(),
        p.records as f64 / p.ingest.as_secs_f64().max(1e-9)
    );
    println!(
        "adapter answers    p50 {:.1} ms, p99 {:.1} ms, slowest {:.1} ms (records on the bus)",
        p.answer.0.as_secs_f64() * 1e3,
        p.answer.1.as_secs_f64() * 1e3,
        p.answer.2.as_secs_f64() * 1e3
    );
    println!(
        "in the view        {:.1} s after the first was sent ({:.2} s after the last was acknowledged)",
        p.to_view.as_secs_f64(),
        p.to_view.saturating_sub(p.ingest).as_secs_f64()
    );
    print_latency(&p.latency);
    println!(
        "reconciler cpu     {:.1} s meanwhile ({:.0} µs per record, repartition included)",
        p.reconciler_cpu,
        p.reconciler_cpu * 1e6 / p.records.max(1) as f64
    );
}

/// Bytes as MiB, or `?` when they could not be read.
fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("?".to_owned(), |b| {
        format!("{:.1} MiB", b as f64 / 1048576.0)
    })
}

fn print_restart(r: &e2e::Restart) {
    println!(
        "== restart after {} (same config, state directory and ports; clock from the spawn)",
        r.stop.signal()
    );
    println!(
        "stopped            {:.2} s from {} to exit ({}); its peak RSS {} (VmHWM)",
        r.shutdown.as_secs_f64(),
        r.stop.signal(),
        r.exit,
        mib(r.stopped_peak_rss)
    );
    let disk = |state: e2e::Disk| {
        format!(
            "{} state store ({} of it write-ahead log)",
            mib(Some(state.bytes)),
            mib(Some(state.wal))
        )
    };
    println!("state at the stop  {}", disk(r.state_at_stop));
    println!(
        "ready              {:.2} s (/health/ready 200, polled every 50 ms)",
        r.ready.as_secs_f64()
    );
    for (at, answer) in &r.not_ready {
        println!("  from {:>7.2} s    {answer}", at.as_secs_f64());
    }
    println!(
        "serving            {:.2} s (GetPerson {} answered with that person, new connection every 50 ms)",
        r.serving.as_secs_f64(),
        r.nis
    );
    for (at, answer) in &r.not_serving {
        println!("  from {:>7.2} s    {answer}", at.as_secs_f64());
    }
    println!("state once serving {}", disk(r.state_serving));
    println!(
        "memory             RSS {} once ready and serving (VmRSS), peak {} (VmHWM)",
        mib(r.rss),
        mib(r.peak_rss)
    );
    println!(
        "restored           {} partitions rebuilt from the changelog ({} entries); {} messages consumed again",
        r.partition_restores, r.restored_entries, r.events_consumed
    );
    println!(
        "log                {} ({} WARN/ERROR lines)",
        r.log.display(),
        r.log_warnings.len()
    );
    for line in r.log_warnings.iter().take(5) {
        println!("  {line}");
    }
}

fn print_broker(f: &broker::Figures) {
    println!(
        "== bare broker (rdkafka, idempotent acks=all lz4 linger 5 ms; same keys and payloads)"
    );
    println!(
        "records            {} ({:.0} bytes each on average)",
        f.records,
        f.bytes as f64 / f.records.max(1) as f64
    );
    println!(
        "produce            {:.2} s ({:.0} records/s, acknowledged)",
        f.produce.as_secs_f64(),
        f.records as f64 / f.produce.as_secs_f64().max(1e-9)
    );
    println!(
        "consume            {:.2} s ({:.0} records/s)",
        f.consume.as_secs_f64(),
        f.records as f64 / f.consume.as_secs_f64().max(1e-9)
    );
    println!(
        "through            {:.0} records/s (produce then consume)",
        f.rate()
    );
}

/// Prints what the broker already holds before the run: partitions left by other runs (the
/// integration tests' `it-…` topics on a long-lived local broker) made the same builds' runs
/// both slower and far more spread out (docs/benchmarks.md, 2026-12-03).
fn broker_load(bootstrap: &str) {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let metadata = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create::<BaseConsumer>()
        .and_then(|c| c.fetch_metadata(None, std::time::Duration::from_secs(10)));
    match metadata {
        Ok(m) => {
            let partitions: usize = m.topics().iter().map(|t| t.partitions().len()).sum();
            println!(
                "broker             {} topics, {partitions} partitions before the run{}",
                m.topics().len(),
                if partitions > 500 {
                    " (other runs' topics load the broker; `deploy/local/kafka.sh reset` starts an empty one)"
                } else {
                    ""
                }
            );
        }
        Err(e) => eprintln!("broker metadata: {e}"),
    }
}

/// Deletes every topic of this run (its prefix) from the shared broker.
async fn cleanup(bootstrap: &str, prefix: &str) {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let topics: Vec<String> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create::<BaseConsumer>()
        .and_then(|c| c.fetch_metadata(None, std::time::Duration::from_secs(10)))
        .map(|m| {
            m.topics()
                .iter()
                .map(|t| t.name().to_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    if let Err(e) = broker::delete_topics(bootstrap, &topics).await {
        eprintln!("deleting topics {prefix}*: {e}");
    }
}

/// Every valid record as (key, encoded event), as the adapters would publish them.
fn encoded(data: &Path, now: SystemTime) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    events::for_each(data, now, |_, key, event| {
        out.push((key, event.encode_to_vec()));
        Ok(())
    })?;
    Ok(out)
}

/// The population of `args` with only the bimester after its last one (no health semester):
/// the same people (a family is a function of the seed and its index), their next attendance.
fn follow_up(args: &DataArgs, work: &Path) -> anyhow::Result<(Bimester, PathBuf)> {
    let last = bimesters(args)?
        .into_iter()
        .max()
        .context("no bimester to follow")?;
    let next = last.next()?;
    let follow = DataArgs {
        bimesters: vec![next.to_string()],
        semesters: Vec::new(),
        ..args.clone()
    };
    Ok((next, simulate(&follow, work)?))
}

/// The bimesters `args` names.
fn bimesters(args: &DataArgs) -> anyhow::Result<Vec<Bimester>> {
    args.bimesters
        .iter()
        .map(|s| Bimester::parse(s).with_context(|| format!("bimester {s:?}")))
        .collect()
}

/// Writes (or reuses) the population's files under `work`.
fn simulate(args: &DataArgs, work: &Path) -> anyhow::Result<PathBuf> {
    if args.programme == Programme::Unidos {
        return simulate_unidos(args, work);
    }
    let bimesters = bimesters(args)?;
    let semesters = args
        .semesters
        .iter()
        .map(|s| Semester::parse(s).with_context(|| format!("semester {s:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    let dir = work.join(format!(
        "sim-{}-{}-{}-{}",
        args.people,
        args.seed,
        args.bimesters.join("_"),
        args.semesters.join("_")
    ));
    if dir.join("manifest.tsv").exists() {
        println!("population         {} (reused)", dir.display());
        return Ok(dir);
    }
    let cfg = ponte_sim::SimConfig {
        seed: args.seed,
        people: args.people,
        bimesters,
        semesters,
        malformed_share: 0.0,
        json_chunk_records: 20_000,
    };
    let started = Instant::now();
    let s = ponte_sim::generate(&cfg, &dir, &mut |_, _| {})?;
    println!(
        "population         {} people, {} families, {} records written in {:.1} s ({})",
        s.people,
        s.families,
        s.records(),
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(dir)
}

/// A Unidos population evaluated today (UTC): its visits fall in the rule set's evidence window
/// of the day the reconciler evaluates them on, the day they are accepted.
fn simulate_unidos(args: &DataArgs, work: &Path) -> anyhow::Result<PathBuf> {
    let days = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        / 86_400;
    let today = ponte_domain::period::Date::from_days(i64::try_from(days)?)?;
    let dir = work.join(format!("sim-unidos-{}-{}-{today}", args.people, args.seed));
    if dir.join("manifest.tsv").exists() {
        println!("population         {} (reused)", dir.display());
        return Ok(dir);
    }
    let cfg = ponte_sim::unidos::UnidosConfig {
        seed: args.seed,
        people: args.people,
        evaluated_on: today,
        malformed_share: 0.0,
        json_chunk_records: 20_000,
    };
    let started = Instant::now();
    let s = ponte_sim::unidos::generate(&cfg, &dir, &mut |_, _| {})?;
    println!(
        "population         Unidos: {} people, {} households, {} records written in {:.1} s ({})",
        s.people,
        s.families,
        s.records(),
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(dir)
}

/// Prints the machine: cores, memory, CPU model.
fn machine() {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_owned())
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1048576.0)
        .unwrap_or(0.0);
    println!("machine            {cpus} cores, {mem:.1} GiB, {model}");
}

fn machine_load_start() -> Option<(u64, u64)> {
    e2e::machine_jiffies()
}

/// Prints how busy the whole machine was during the run (ours and anyone else's processes).
fn machine_load_end(start: Option<(u64, u64)>, wall: f64) {
    if let Some(busy) = e2e::busy_since(start) {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        println!(
            "machine busy       {:.0} % of {cpus} cores over {wall:.1} s (every process, not only ours)",
            busy * 100.0
        );
    }
}
