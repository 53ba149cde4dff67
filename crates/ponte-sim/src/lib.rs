//! `ponte-sim`: deterministic synthetic Bolsa Família populations and the records the three
//! sectors would send about them, written in the adapters' own input formats — for demos, system
//! tests and benchmarks (`ponte sim`); and Colombian Unidos households with their cogestores'
//! visits ([`unidos`], `ponte sim --programme unidos`).
//!
//! - [`population`]: families and people, each a pure function of (seed, family index), shaped
//!   by the programme's published figures (age structure, family size, CNS/CPF coverage;
//!   `docs/sources.md#s13`, the key S13 below).
//! - [`generate`]: one pass over the families, writing every chosen period's records to files as
//!   it goes (bounded memory: one family at a time plus buffered writers), so the national figure
//!   (54 M people) needs disk, not RAM.
//!
//! Output files (see [`Summary::files`] and `manifest.tsv`), each for one adapter endpoint:
//! `registry-persons.csv` (assistance `/v1/persons`, CSV), `education-<YYYY-Bn>.csv`
//! (education `/v1/attendance`, CSV), `health-<YYYY-Sn>-NNNN.json` (health `/v1/health`, the
//! simple JSON form), `scfv-<YYYY-Bn>-NNNN.json`, `family-follow-ups-NNNN.json` and
//! `appeals-NNNN.json` (assistance JSON). JSON files are arrays of at most
//! [`SimConfig::json_chunk_records`] records, to stay under the adapters' body limit.
//! [`unidos::generate`] writes `household-profiles-NNNN.json` (assistance
//! `/v1/household-profiles`) and `household-visits-NNNN.json` (`/v1/household-evidence`),
//! chunked and listed in `manifest.tsv` the same way.
//!
//! The generator never reads the clock: periods are chosen by the caller, and must lie in the
//! past for the adapters to accept their dates.
//!
//! Per-period follow-up and compliance rates ([`rates`]) come from the sources' figures where
//! they exist (education follow-up ≈86 %, compliance ≈95 %, children's health follow-up ≈61 %,
//! women's ≈89 %, prenatal ≈99.9 %); the rest are marked ASSUMPTION.
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};

use ponte_domain::period::{Bimester, Date, Semester};

pub mod places;
pub mod population;
pub mod rng;
pub mod unidos;

use population::{Family, Person, Population, Sex};
use rng::Rng;

/// Follow-up and compliance rates per period.
pub mod rates {
    /// Pupils of the education public with attendance recorded: 86.03 % (Oct–Nov 2024), 86.35 %
    /// (Jun–Jul 2025) [S13].
    pub const EDUCATION_FOLLOWED: f64 = 0.86;
    /// Of those, compliant: ~95 % [S13].
    pub const EDUCATION_COMPLIANT: f64 = 0.95;
    /// A followed pupil has only one of the bimester's two months recorded. ASSUMPTION.
    pub const EDUCATION_ONE_MONTH: f64 = 0.05;
    /// A compliant pupil has a low month with an exempting reason (code 1). ASSUMPTION.
    pub const EDUCATION_EXEMPTED_LOW: f64 = 0.03;
    /// Children < 7 followed in health: 61.1–61.2 % (2024-S2, 2025-S1) [S13].
    pub const HEALTH_CHILD_FOLLOWED: f64 = 0.611;
    /// Women followed in health: 88.89 % (2025-S1) [S13].
    pub const HEALTH_WOMAN_FOLLOWED: f64 = 0.889;
    /// Pregnant women followed. ASSUMPTION (not published separately).
    pub const HEALTH_PREGNANT_FOLLOWED: f64 = 0.95;
    /// Followed pregnant women with prenatal care: 99.9 % (2025-S1) [S13].
    pub const PRENATAL: f64 = 0.999;
    /// Followed children with vaccination up to date; with weight / height recorded. ASSUMPTION.
    pub const VACCINATED: f64 = 0.93;
    pub const MEASURED: f64 = 0.97;
    /// PETI children's SCFV months at or above 85 %. ASSUMPTION.
    pub const SCFV_COMPLIANT: f64 = 0.90;
    /// Families in family follow-up (acompanhamento familiar); of those with an interruption of
    /// effects requested. ASSUMPTION.
    pub const FAMILY_FOLLOW_UP: f64 = 0.02;
    pub const INTERRUPTION: f64 = 0.30;
    /// Families filing an appeal (recurso) about the first bimester; decisions. ASSUMPTION.
    pub const APPEAL: f64 = 0.005;
    pub const APPEAL_ACCEPTED: f64 = 0.5;
    pub const APPEAL_REJECTED: f64 = 0.3;
}

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid simulation settings: {0}")]
    Config(String),
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// About this many people (families = people / 2.63).
    pub people: u64,
    /// School bimesters to emit attendance (and SCFV) for.
    pub bimesters: Vec<Bimester>,
    /// Health semesters to emit follow-up for.
    pub semesters: Vec<Semester>,
    /// Share of records (0–1) written malformed (an identifier, date or period the adapter must
    /// reject); every file counts its own.
    pub malformed_share: f64,
    /// Records per JSON file.
    pub json_chunk_records: usize,
}

impl SimConfig {
    pub fn validate(&self) -> Result<(), SimError> {
        if !(0.0..=1.0).contains(&self.malformed_share) {
            return Err(SimError::Config(format!(
                "malformed share {} is not between 0 and 1",
                self.malformed_share
            )));
        }
        if self.people == 0 {
            return Err(SimError::Config("people must be at least 1".to_owned()));
        }
        // Identifier slots: 16 per family, NIS bodies below 2·10⁹ (see population::nis).
        if self.people > 500_000_000 {
            return Err(SimError::Config(
                "at most 500 M people (identifier space)".to_owned(),
            ));
        }
        if self.json_chunk_records == 0 {
            return Err(SimError::Config(
                "json_chunk_records must be at least 1".to_owned(),
            ));
        }
        Ok(())
    }

    /// Ages and registry dates are relative to 1 January of the earliest period's year (2025
    /// without periods).
    pub fn reference(&self) -> Date {
        let year = self
            .bimesters
            .iter()
            .map(Bimester::year)
            .chain(self.semesters.iter().map(Semester::year))
            .min()
            .unwrap_or(2025);
        Date::new(year, 1, 1).unwrap_or(Date::MAX)
    }
}

/// One file written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSummary {
    /// File name inside the output directory.
    pub file: String,
    /// `education`, `health` or `assistance`.
    pub sector: &'static str,
    /// Adapter endpoint path.
    pub endpoint: &'static str,
    pub content_type: &'static str,
    pub records: u64,
    /// Records written malformed on purpose.
    pub malformed: u64,
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub families: u64,
    pub people: u64,
    pub files: Vec<FileSummary>,
}

impl Summary {
    pub fn records(&self) -> u64 {
        self.files.iter().map(|f| f.records).sum()
    }
    pub fn malformed(&self) -> u64 {
        self.files.iter().map(|f| f.malformed).sum()
    }
}

/// A stream of records to one kind of file: one CSV file, or JSON arrays split in chunks.
struct Sink {
    dir: PathBuf,
    base: String,
    csv_header: Option<&'static str>,
    chunk: usize,
    sector: &'static str,
    endpoint: &'static str,
    content_type: &'static str,
    current: Option<(BufWriter<File>, FileSummary, PathBuf)>,
    /// Bytes written to the current file.
    bytes: u64,
    /// A record that would take the current file past this many bytes starts a new one.
    max_bytes: u64,
    files: u32,
    done: Vec<FileSummary>,
}

impl Sink {
    fn csv(
        dir: &Path,
        base: String,
        header: &'static str,
        sector: &'static str,
        endpoint: &'static str,
    ) -> Self {
        Sink {
            dir: dir.to_owned(),
            base,
            csv_header: Some(header),
            chunk: usize::MAX,
            sector,
            endpoint,
            content_type: "text/csv",
            current: None,
            bytes: 0,
            max_bytes: u64::MAX,
            files: 0,
            done: Vec::new(),
        }
    }

    fn json(
        dir: &Path,
        base: String,
        chunk: usize,
        sector: &'static str,
        endpoint: &'static str,
    ) -> Self {
        Sink {
            dir: dir.to_owned(),
            base,
            csv_header: None,
            chunk,
            sector,
            endpoint,
            content_type: "application/json",
            current: None,
            bytes: 0,
            max_bytes: u64::MAX,
            files: 0,
            done: Vec::new(),
        }
    }

    /// Files of at most `max_bytes` bytes too (each file is one request, and the adapters
    /// refuse a body above their limit).
    fn max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    fn write(&mut self, record: &str, malformed: bool) -> Result<(), SimError> {
        let full = self.current.as_ref().is_some_and(|(_, s, _)| {
            s.records as usize >= self.chunk
                || self.bytes.saturating_add(record.len() as u64 + 2) > self.max_bytes
        });
        if full {
            self.finish_file()?;
        }
        if self.current.is_none() {
            self.open()?;
        }
        if let Some((w, summary, path)) = &mut self.current {
            let res = if self.csv_header.is_some() {
                w.write_all(record.as_bytes())
                    .and_then(|()| w.write_all(b"\n"))
            } else {
                let sep: &[u8] = if summary.records == 0 { b"" } else { b",\n" };
                w.write_all(sep)
                    .and_then(|()| w.write_all(record.as_bytes()))
            };
            res.map_err(|source| SimError::Io {
                path: path.clone(),
                source,
            })?;
            self.bytes += record.len() as u64 + 2;
            summary.records += 1;
            summary.malformed += u64::from(malformed);
        }
        Ok(())
    }

    fn open(&mut self) -> Result<(), SimError> {
        let file = match self.csv_header {
            Some(_) => format!("{}.csv", self.base),
            None => format!("{}-{:04}.json", self.base, self.files),
        };
        self.files += 1;
        let path = self.dir.join(&file);
        let io = |source| SimError::Io {
            path: path.clone(),
            source,
        };
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&path).map_err(io)?);
        match self.csv_header {
            Some(h) => writeln!(w, "{h}"),
            None => w.write_all(b"[\n"),
        }
        .map_err(io)?;
        // The opening and closing brackets.
        self.bytes = 4;
        self.current = Some((
            w,
            FileSummary {
                file,
                sector: self.sector,
                endpoint: self.endpoint,
                content_type: self.content_type,
                records: 0,
                malformed: 0,
            },
            path,
        ));
        Ok(())
    }

    fn finish_file(&mut self) -> Result<(), SimError> {
        if let Some((mut w, summary, path)) = self.current.take() {
            let io = |source| SimError::Io {
                path: path.clone(),
                source,
            };
            if self.csv_header.is_none() {
                w.write_all(b"\n]\n").map_err(io)?;
            }
            w.flush().map_err(io)?;
            self.done.push(summary);
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<FileSummary>, SimError> {
        self.finish_file()?;
        Ok(self.done)
    }
}

const PERSONS_HEADER: &str = "nis,family_id,birth_date,sex,municipality,inep_school_code,cns,cpf,pregnant,expected_delivery_date,peti,basic_education_completed,memberships,version";
const EDUCATION_HEADER: &str =
    "nis,inep_school_code,month,unit,given,attended,low_attendance_reason,version";

/// FNV-1a of a label, to give every period its own random stream.
fn salt(label: &str) -> u64 {
    label.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A NIS with its last digit cut: the adapters must refuse it (length).
fn broken(id: &str) -> &str {
    &id[..id.len().saturating_sub(1)]
}

/// Writes the records of `cfg` into `out_dir` (created if missing) and `manifest.tsv`;
/// `progress(done, total)` is called with families done as it goes.
pub fn generate(
    cfg: &SimConfig,
    out_dir: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Summary, SimError> {
    cfg.validate()?;
    std::fs::create_dir_all(out_dir).map_err(|source| SimError::Io {
        path: out_dir.to_owned(),
        source,
    })?;
    let pop = Population::new(cfg.seed, cfg.people, cfg.reference());
    let chunk = cfg.json_chunk_records;
    let mut persons = Sink::csv(
        out_dir,
        "registry-persons".into(),
        PERSONS_HEADER,
        "assistance",
        "/v1/persons",
    );
    let mut education: Vec<(Bimester, Sink, Sink)> = cfg
        .bimesters
        .iter()
        .map(|b| {
            (
                *b,
                Sink::csv(
                    out_dir,
                    format!("education-{b}"),
                    EDUCATION_HEADER,
                    "education",
                    "/v1/attendance",
                ),
                Sink::json(
                    out_dir,
                    format!("scfv-{b}"),
                    chunk,
                    "assistance",
                    "/v1/scfv-attendance",
                ),
            )
        })
        .collect();
    let mut health: Vec<(Semester, Sink)> = cfg
        .semesters
        .iter()
        .map(|s| {
            (
                *s,
                Sink::json(
                    out_dir,
                    format!("health-{s}"),
                    chunk,
                    "health",
                    "/v1/health",
                ),
            )
        })
        .collect();
    let mut follow_ups = Sink::json(
        out_dir,
        "family-follow-ups".into(),
        chunk,
        "assistance",
        "/v1/family-follow-ups",
    );
    let mut appeals = Sink::json(
        out_dir,
        "appeals".into(),
        chunk,
        "assistance",
        "/v1/appeals",
    );

    let total = pop.families();
    let mut people = 0u64;
    let bad_salt = salt("malformed");
    for f in 0..total {
        let family = pop.family(f);
        people += family.members.len() as u64;
        let mut bad = Rng::new(cfg.seed ^ bad_salt, f);
        let mut is_bad = || bad.chance(cfg.malformed_share);

        for p in &family.members {
            let b = is_bad();
            persons.write(&person_csv(&family, p, b), b)?;
        }
        for (bimester, edu, scfv) in &mut education {
            let mut rng = Rng::new(cfg.seed ^ salt(&bimester.to_string()), f);
            for p in &family.members {
                for line in education_lines(&mut rng, p, *bimester) {
                    let b = is_bad();
                    let line = if b {
                        line.replacen(&p.nis, broken(&p.nis), 1)
                    } else {
                        line
                    };
                    edu.write(&line, b)?;
                }
                for rec in scfv_records(&mut rng, p, *bimester) {
                    let b = is_bad();
                    let rec = if b {
                        rec.replacen(&p.nis, broken(&p.nis), 1)
                    } else {
                        rec
                    };
                    scfv.write(&rec, b)?;
                }
            }
        }
        for (semester, sink) in &mut health {
            let mut rng = Rng::new(cfg.seed ^ salt(&semester.to_string()), f);
            for p in &family.members {
                if let Some((id, rec)) = health_record(&mut rng, p, *semester) {
                    let b = is_bad();
                    let rec = if b {
                        rec.replacen(id, broken(id), 1)
                    } else {
                        rec
                    };
                    sink.write(&rec, b)?;
                }
            }
        }
        let mut rng = Rng::new(cfg.seed ^ salt("family"), f);
        if let Some(rec) = follow_up(&mut rng, &family, pop.reference()) {
            let b = is_bad();
            let rec = if b {
                bad_date(&rec, "\"opened_on\":\"")
            } else {
                rec
            };
            follow_ups.write(&rec, b)?;
        }
        if let Some(first) = cfg.bimesters.iter().min()
            && let Some(rec) = appeal(&mut rng, &family, *first)
        {
            let b = is_bad();
            let rec = if b {
                rec.replacen(
                    &format!("\"period\":\"{first}\""),
                    &format!("\"period\":\"{}-B9\"", first.year()),
                    1,
                )
            } else {
                rec
            };
            appeals.write(&rec, b)?;
        }
        if f % 4096 == 4095 {
            progress(f + 1, total);
        }
    }
    progress(total, total);

    let mut files = persons.finish()?;
    for (_, edu, scfv) in education {
        files.extend(edu.finish()?);
        files.extend(scfv.finish()?);
    }
    for (_, sink) in health {
        files.extend(sink.finish()?);
    }
    files.extend(follow_ups.finish()?);
    files.extend(appeals.finish()?);
    write_manifest(out_dir, &files)?;
    Ok(Summary {
        families: total,
        people,
        files,
    })
}

/// Replaces the date after `marker` by 30 February of its year (a date that does not exist).
fn bad_date(rec: &str, marker: &str) -> String {
    match rec.find(marker) {
        Some(i) => {
            let start = i + marker.len();
            let year = rec.get(start..start + 4).unwrap_or("2025");
            format!(
                "{}{year}-02-30{}",
                &rec[..start],
                rec.get(start + 10..).unwrap_or("")
            )
        }
        None => rec.to_owned(),
    }
}

fn write_manifest(dir: &Path, files: &[FileSummary]) -> Result<(), SimError> {
    let path = dir.join("manifest.tsv");
    let mut text = String::from("file\tsector\tendpoint\tcontent_type\trecords\tmalformed\n");
    for f in files {
        text.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\n",
            f.file, f.sector, f.endpoint, f.content_type, f.records, f.malformed
        ));
    }
    std::fs::write(&path, text).map_err(|source| SimError::Io { path, source })
}

fn person_csv(family: &Family, p: &Person, malformed: bool) -> String {
    let nis = if malformed { broken(&p.nis) } else { &p.nis };
    let sex = match p.sex {
        Sex::F => "F",
        Sex::M => "M",
    };
    let school = match (&p.school, p.registry_has_school) {
        (Some(s), true) => s.as_str(),
        _ => "",
    };
    let cns = if p.registry_has_cns {
        p.cns.as_str()
    } else {
        ""
    };
    let cpf = if p.registry_has_cpf {
        p.cpf.as_str()
    } else {
        ""
    };
    let (pregnant, edd) = match p.expected_delivery {
        Some(d) => ("true", d.to_string()),
        None => ("", String::new()),
    };
    // Every simulated family is a Bolsa Família family: the registry marks its members, which
    // is what puts them in the monitored public (rules/*.toml `[public] member_of`).
    format!(
        "{nis},{},{},{sex},{},{school},{cns},{cpf},{pregnant},{edd},{},{},PBF,1",
        family.id,
        p.birth_date,
        family.municipality_code(),
        if p.peti { "true" } else { "" },
        if p.basic_education_completed {
            "true"
        } else {
            ""
        },
    )
}

/// The education public of the 2023 rule set: 4 to <18 at the first day of the bimester,
/// basic education not completed.
pub fn in_education_public(p: &Person, bimester: Bimester) -> bool {
    (4..18).contains(&p.age_on(bimester.first_day())) && !p.basic_education_completed
}

/// The health public: children < 7, women 14–44, pregnant women (at the semester's first day).
pub fn in_health_public(p: &Person, semester: Semester) -> bool {
    let age = p.age_on(semester.first_day());
    age < 7 || (p.sex == Sex::F && (14..=44).contains(&age)) || p.expected_delivery.is_some()
}

/// Attendance lines of a pupil for a bimester: none (not followed), or one per recorded month.
fn education_lines(rng: &mut Rng, p: &Person, bimester: Bimester) -> Vec<String> {
    let (Some(school), true) = (&p.school, in_education_public(p, bimester)) else {
        return Vec::new();
    };
    if !rng.chance(rates::EDUCATION_FOLLOWED) {
        return Vec::new();
    }
    let months = bimester.months();
    let recorded: &[_] = if rng.chance(rates::EDUCATION_ONE_MONTH) {
        &months[..1]
    } else {
        &months[..]
    };
    let compliant = rng.chance(rates::EDUCATION_COMPLIANT);
    let low_month = rng.range(0, recorded.len() as u64 - 1) as usize;
    let exempted = compliant && rng.chance(rates::EDUCATION_EXEMPTED_LOW);
    recorded
        .iter()
        .enumerate()
        .map(|(i, month)| {
            let given = rng.range(18, 22);
            let (attended, reason) = if i == low_month && !compliant {
                // Below every threshold (60 % / 75 %), with a non-exempting reason or none.
                let reason = ["62", "7", "58", ""][rng.range(0, 3) as usize];
                (rng.range(0, given / 2), reason)
            } else if i == low_month && exempted {
                (rng.range(0, given / 2), "1")
            } else {
                (rng.range(given * 8 / 10 + 1, given), "")
            };
            format!(
                "{},{school},{month},days,{given},{attended},{reason},1",
                p.nis
            )
        })
        .collect()
}

/// SCFV months of a PETI child (≤ 15) in a bimester.
fn scfv_records(rng: &mut Rng, p: &Person, bimester: Bimester) -> Vec<String> {
    if !p.peti || p.age_on(bimester.first_day()) > 15 {
        return Vec::new();
    }
    bimester
        .months()
        .iter()
        .map(|month| {
            let offered = 40;
            let attended = if rng.chance(rates::SCFV_COMPLIANT) {
                rng.range(34, 40)
            } else {
                rng.range(5, 30)
            };
            format!(
                "{{\"nis\":\"{}\",\"month\":\"{month}\",\"hours_offered\":{offered},\"hours_attended\":{attended},\"version\":1}}",
                p.nis
            )
        })
        .collect()
}

/// A person's health follow-up in a semester, keyed as the health side knows them: the CNS the
/// registry carries, else the CPF, else a CNS the registry does not know (the record parks).
/// Returns the identifier used and the record.
fn health_record<'a>(
    rng: &mut Rng,
    p: &'a Person,
    semester: Semester,
) -> Option<(&'a str, String)> {
    if !in_health_public(p, semester) {
        return None;
    }
    let age = p.age_on(semester.first_day());
    let followed = if age < 7 {
        rates::HEALTH_CHILD_FOLLOWED
    } else if p.expected_delivery.is_some() {
        rates::HEALTH_PREGNANT_FOLLOWED
    } else {
        rates::HEALTH_WOMAN_FOLLOWED
    };
    if !rng.chance(followed) {
        return None;
    }
    let (field, id) = if p.registry_has_cns || !p.registry_has_cpf {
        ("cns", p.cns.as_str())
    } else {
        ("cpf", p.cpf.as_str())
    };
    let first = semester.first_day();
    let days = first.days_until(semester.last_day()).max(0) as u64;
    let date = first.add_days(rng.range(0, days) as i64).unwrap_or(first);
    let mut rec =
        format!("{{\"{field}\":\"{id}\",\"semester\":\"{semester}\",\"encounter_date\":\"{date}\"");
    if age < 7 {
        let vaccinated = rng.chance(rates::VACCINATED);
        rec.push_str(&format!(",\"vaccination_up_to_date\":{vaccinated}"));
        if rng.chance(rates::MEASURED) {
            let kg = 3.5 + 2.3 * age as f64 + rng.range(0, 20) as f64 / 10.0;
            let cm = 50.0 + 8.5 * age as f64 + rng.range(0, 60) as f64 / 10.0;
            rec.push_str(&format!(",\"weight_kg\":{kg:.1},\"height_cm\":{cm:.1}"));
        }
    } else {
        let kg = 50.0 + rng.range(0, 400) as f64 / 10.0;
        let cm = 150.0 + rng.range(0, 250) as f64 / 10.0;
        rec.push_str(&format!(",\"weight_kg\":{kg:.1},\"height_cm\":{cm:.1}"));
        if let Some(edd) = p.expected_delivery {
            let prenatal = rng.chance(rates::PRENATAL);
            let lmp = edd.add_days(-280).unwrap_or(edd);
            rec.push_str(&format!(
                ",\"pregnant\":true,\"prenatal_care\":{prenatal},\"last_menstruation_date\":\"{lmp}\""
            ));
        }
    }
    rec.push_str(",\"version\":1}");
    Some((id, rec))
}

/// A family follow-up opened in the reference year, some with an interruption of effects.
fn follow_up(rng: &mut Rng, family: &Family, reference: Date) -> Option<String> {
    if !rng.chance(rates::FAMILY_FOLLOW_UP) {
        return None;
    }
    let opened = reference.add_days(rng.range(0, 200) as i64).ok()?;
    let interruption = if rng.chance(rates::INTERRUPTION) {
        let d = opened.add_days(rng.range(1, 30) as i64).ok()?;
        format!(",\"interruption_requested_on\":\"{d}\"")
    } else {
        String::new()
    };
    Some(format!(
        "{{\"family_id\":\"{}\",\"follow_up_id\":\"AF-{}\",\"opened_on\":\"{opened}\"{interruption},\"municipality\":\"{}\",\"version\":1}}",
        family.id,
        family.index,
        family.municipality_code()
    ))
}

/// An appeal about `bimester`: for a pupil's education outcome, or the family's effect.
fn appeal(rng: &mut Rng, family: &Family, bimester: Bimester) -> Option<String> {
    if !rng.chance(rates::APPEAL) {
        return None;
    }
    let member = family
        .members
        .iter()
        .find(|p| in_education_public(p, bimester))
        .map(|p| format!(",\"nis\":\"{}\",\"conditionality\":\"education\"", p.nis))
        .unwrap_or_default();
    let filed = bimester
        .last_day()
        .add_days(rng.range(10, 40) as i64)
        .ok()?;
    let x = rng.unit();
    let decision = if x < rates::APPEAL_ACCEPTED {
        Some("ACCEPTED")
    } else if x < rates::APPEAL_ACCEPTED + rates::APPEAL_REJECTED {
        Some("REJECTED")
    } else {
        None
    };
    let decision = match decision {
        Some(d) => {
            let on = filed.add_days(rng.range(5, 30) as i64).ok()?;
            format!(",\"decision\":\"{d}\",\"decided_on\":\"{on}\"")
        }
        None => String::new(),
    };
    Some(format!(
        "{{\"family_id\":\"{}\",\"appeal_id\":\"R-{}-{bimester}\",\"period\":\"{bimester}\"{member},\"filed_on\":\"{filed}\"{decision},\"version\":1}}",
        family.id, family.index
    ))
}
