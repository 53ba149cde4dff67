//! `ponte sim`: writes a deterministic synthetic population's sector records to a directory, in
//! the adapters' input formats, with a progress bar (see `ponte-sim`). Send them with
//! `ponte ingest` (the directory's `manifest.tsv` names each file's adapter endpoint).
//! `--programme unidos` writes Colombian Unidos households and their cogestores' visits instead
//! (`ponte_sim::unidos`).
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use ponte_domain::period::{Bimester, Date, Semester};
use ponte_sim::SimConfig;
use ponte_sim::unidos::UnidosConfig;

/// The programme whose population is simulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Programme {
    /// Brazil's Bolsa Família: registry profiles and every sector's records.
    BolsaFamilia,
    /// Colombia's Unidos: household profiles and cogestores' visits (assistance adapter).
    Unidos,
}

/// Arguments of `ponte sim`.
#[derive(Debug, clap::Args)]
pub(crate) struct SimArgs {
    /// Programme: `bolsa-familia` (the default) or `unidos`.
    #[arg(long, value_enum, default_value = "bolsa-familia")]
    pub(crate) programme: Programme,
    /// Unidos: the day the households would be evaluated (`YYYY-MM-DD`); visits fall in the 12
    /// months before it. Must not be in the future when the files are sent.
    #[arg(long, default_value = "2025-06-30")]
    pub(crate) evaluated_on: String,
    /// Directory to write the files into (created if missing).
    #[arg(long, default_value = "ponte-sim-out")]
    pub(crate) out: PathBuf,
    /// Seed: the same seed and settings write the same bytes.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// About this many people (Brazil 2025: 54000000).
    #[arg(long, default_value_t = 100_000)]
    pub(crate) people: u64,
    /// School bimesters to write attendance for, comma-separated (`2025-B1,2025-B2`); Bolsa
    /// Família only.
    #[arg(long, value_delimiter = ',', default_value = "2025-B2")]
    pub(crate) bimesters: Vec<String>,
    /// Health semesters to write follow-up for, comma-separated (`2025-S1`); Bolsa Família only.
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
    let bar = if args.no_progress {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    let unit = match args.programme {
        Programme::BolsaFamilia => "families",
        Programme::Unidos => "households",
    };
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {unit} {{pos}}/{{len}} [{{bar:40}}] {{percent}}% {{per_sec}} eta {{eta}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut progress = |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let started = Instant::now();
    let summary = match args.programme {
        Programme::BolsaFamilia => {
            ponte_sim::generate(&bolsa_familia(&args)?, &args.out, &mut progress)
        }
        Programme::Unidos => {
            let cfg = UnidosConfig {
                seed: args.seed,
                people: args.people,
                evaluated_on: Date::parse(&args.evaluated_on)
                    .with_context(|| format!("evaluation day {:?}", args.evaluated_on))?,
                malformed_share: args.malformed,
                json_chunk_records: args.json_chunk_records,
            };
            ponte_sim::unidos::generate(&cfg, &args.out, &mut progress)
        }
    }
    .with_context(|| format!("writing {}", args.out.display()))?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} {unit}, {} people, {} records ({} malformed) in {:.1} s ({:.0} records/s)",
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

/// The Bolsa Família settings of the arguments.
fn bolsa_familia(args: &SimArgs) -> anyhow::Result<SimConfig> {
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
    Ok(SimConfig {
        seed: args.seed,
        people: args.people,
        bimesters,
        semesters,
        malformed_share: args.malformed,
        json_chunk_records: args.json_chunk_records,
    })
}
