//! `ponte sim`: writes a deterministic synthetic population's sector records to a directory, in
//! the adapters' input formats, with a progress bar (see `ponte-sim`). Send them with
//! `ponte ingest` (the directory's `manifest.tsv` names each file's adapter endpoint).
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use ponte_domain::period::{Bimester, Semester};
use ponte_sim::SimConfig;

/// Arguments of `ponte sim`.
#[derive(Debug, clap::Args)]
pub(crate) struct SimArgs {
    /// Directory to write the files into (created if missing).
    #[arg(long, default_value = "ponte-sim-out")]
    pub(crate) out: PathBuf,
    /// Seed: the same seed and settings write the same bytes.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// About this many people (Brazil 2025: 54000000).
    #[arg(long, default_value_t = 100_000)]
    pub(crate) people: u64,
    /// School bimesters to write attendance for, comma-separated (`2025-B1,2025-B2`).
    #[arg(long, value_delimiter = ',', default_value = "2025-B2")]
    pub(crate) bimesters: Vec<String>,
    /// Health semesters to write follow-up for, comma-separated (`2025-S1`).
    #[arg(long, value_delimiter = ',', default_value = "2025-S1")]
    pub(crate) semesters: Vec<String>,
    /// Share of records written malformed on purpose (0–1), for the dead-letter paths.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) malformed: f64,
    /// Records per JSON file (each file is one request; the adapters take 16 MiB by default).
    #[arg(long, default_value_t = 20_000)]
    pub(crate) json_chunk_records: usize,
    /// No progress bar.
    #[arg(long)]
    pub(crate) no_progress: bool,
}

pub(crate) fn run(args: SimArgs) -> anyhow::Result<()> {
    let bimesters = args
        .bimesters
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| Bimester::parse(s).with_context(|| format!("bimester {s:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    let semesters = args
        .semesters
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| Semester::parse(s).with_context(|| format!("semester {s:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    let cfg = SimConfig {
        seed: args.seed,
        people: args.people,
        bimesters,
        semesters,
        malformed_share: args.malformed,
        json_chunk_records: args.json_chunk_records,
    };
    let bar = if args.no_progress {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} families {pos}/{len} [{bar:40}] {percent}% {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let started = Instant::now();
    let summary = ponte_sim::generate(&cfg, &args.out, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .with_context(|| format!("writing {}", args.out.display()))?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} families, {} people, {} records ({} malformed) in {:.1} s ({:.0} records/s)",
        summary.families,
        summary.people,
        summary.records(),
        summary.malformed(),
        secs,
        summary.records() as f64 / secs.max(1e-9)
    );
    println!(
        "{:<36} {:<11} {:<22} {:>10} {:>9}",
        "file", "sector", "endpoint", "records", "malformed"
    );
    for f in &summary.files {
        println!(
            "{:<36} {:<11} {:<22} {:>10} {:>9}",
            f.file, f.sector, f.endpoint, f.records, f.malformed
        );
    }
    println!("manifest   {}", args.out.join("manifest.tsv").display());
    Ok(())
}
