//! The simulator's files turned into the events the adapters would publish, with the adapters'
//! own parsers and validators (no HTTP, no Kafka), in manifest order: registry first.
use std::io::BufRead as _;
use std::path::Path;
use std::time::SystemTime;

use anyhow::Context as _;
use ponte_proto::events::v1::Event;
use ponte_reconciler::topology::Input;

/// One file of the simulator's manifest.
#[derive(Debug, Clone)]
pub(crate) struct ManifestEntry {
    pub(crate) file: String,
    pub(crate) sector: String,
    pub(crate) endpoint: String,
    pub(crate) content_type: String,
    pub(crate) records: u64,
    pub(crate) malformed: u64,
}

pub(crate) fn manifest(dir: &Path) -> anyhow::Result<Vec<ManifestEntry>> {
    let path = dir.join("manifest.tsv");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let [file, sector, endpoint, content_type, records, malformed] = f[..] else {
                anyhow::bail!("{}: bad line {l:?}", path.display());
            };
            Ok(ManifestEntry {
                file: file.to_owned(),
                sector: sector.to_owned(),
                endpoint: endpoint.to_owned(),
                content_type: content_type.to_owned(),
                records: records.parse()?,
                malformed: malformed.parse()?,
            })
        })
        .collect()
}

/// The household-achievement rule set the bench runs Unidos populations with.
pub(crate) const UNIDOS_RULES: &str = include_str!("../../../rules/unidos-2021.toml");

/// Whether the simulated population is of a household-accompaniment programme (Unidos): its
/// manifest lists household profiles, which need a reconciler with [`UNIDOS_RULES`].
pub(crate) fn follows_households(dir: &Path) -> anyhow::Result<bool> {
    Ok(manifest(dir)?
        .iter()
        .any(|e| e.endpoint == "/v1/household-profiles"))
}

/// Calls `f(input, key, event)` for every valid record of every file, in manifest order;
/// returns how many records were rejected.
pub(crate) fn for_each(
    dir: &Path,
    now: SystemTime,
    mut f: impl FnMut(Input, String, Event) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    use ponte_adapter_assistance::{Kind, parse_json};
    let mut rejected = 0u64;
    for entry in manifest(dir)? {
        let path = dir.join(&entry.file);
        let open = || {
            std::fs::File::open(&path)
                .map(std::io::BufReader::new)
                .with_context(|| format!("opening {}", path.display()))
        };
        match entry.endpoint.as_str() {
            "/v1/persons" => {
                use ponte_adapter_assistance::csv;
                let mut lines = open()?.lines();
                let head = lines.next().context("empty file")??;
                let header = csv::Header::parse(&head).map_err(|e| anyhow::anyhow!(e))?;
                for line in lines {
                    match csv::parse_row(&header, &line?, "assistance", now) {
                        Ok(r) => f(Input::Registry, r.key, r.event)?,
                        Err(_) => rejected += 1,
                    }
                }
            }
            "/v1/attendance" => {
                use ponte_adapter_education::{csv, record};
                let mut lines = open()?.lines();
                let head = lines.next().context("empty file")??;
                let header = csv::Header::parse(head.as_bytes())?;
                for line in lines {
                    let line = line?;
                    match header
                        .parse_row(line.as_bytes())
                        .and_then(|i| record::validate(&i, "education", now))
                    {
                        Ok(r) => f(Input::Education, r.key, r.event)?,
                        Err(_) => rejected += 1,
                    }
                }
            }
            "/v1/health" => {
                use ponte_adapter_health::simple;
                let inputs: Vec<simple::FollowUpInput> =
                    serde_json::from_reader(open()?).context("health JSON")?;
                for input in inputs {
                    match simple::validate(&input, "health", now) {
                        Ok(r) => f(Input::Health, r.key, r.event)?,
                        Err(_) => rejected += 1,
                    }
                }
            }
            endpoint => {
                let (kind, input) = match endpoint {
                    "/v1/scfv-attendance" => (Kind::ScfvAttendance, Input::AssistancePerson),
                    "/v1/family-follow-ups" => (Kind::FamilyFollowUp, Input::AssistanceFamily),
                    "/v1/appeals" => (Kind::Appeal, Input::AssistanceFamily),
                    "/v1/household-profiles" => (Kind::HouseholdProfile, Input::AssistanceFamily),
                    "/v1/household-evidence" => (Kind::HouseholdEvidence, Input::AssistanceFamily),
                    other => anyhow::bail!("unknown endpoint {other} in the manifest"),
                };
                let raws: Vec<Box<serde_json::value::RawValue>> =
                    serde_json::from_reader(open()?).context("assistance JSON")?;
                for raw in raws {
                    match parse_json(kind, raw.get(), "assistance", now) {
                        Ok(r) => f(input, r.key, r.event)?,
                        Err(_) => rejected += 1,
                    }
                }
            }
        }
    }
    Ok(rejected)
}
