//! The simulator's files, read back: the same seed gives the same bytes, the population has the
//! published shape, every valid record passes the adapters' own validators, and the malformed
//! share is what was asked for.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime};

use ponte_domain::period::{Bimester, Semester};
use ponte_sim::population::{Population, Sex};
use ponte_sim::{SimConfig, Summary, generate, in_education_public, in_health_public};

fn config(seed: u64, people: u64, malformed_share: f64) -> SimConfig {
    SimConfig {
        seed,
        people,
        bimesters: vec![Bimester::parse("2025-B2").unwrap()],
        semesters: vec![Semester::parse("2025-S1").unwrap()],
        malformed_share,
        json_chunk_records: 1000,
    }
}

fn run(cfg: &SimConfig, dir: &Path) -> Summary {
    generate(cfg, dir, &mut |_, _| {}).unwrap()
}

/// 2026-01-01T00:00:00Z: after every simulated date, as the adapters' clock would be.
fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600)
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn the_same_seed_writes_the_same_bytes() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    run(&config(7, 3000, 0.01), a.path());
    run(&config(7, 3000, 0.01), b.path());
    run(&config(8, 3000, 0.01), c.path());
    let (fa, fb, fc) = (files(a.path()), files(b.path()), files(c.path()));
    assert!(fa.len() >= 6, "files: {:?}", fa.keys());
    assert_eq!(fa, fb);
    assert_ne!(fa, fc);
}

/// Outcome of validating every record of one file with its adapter: (accepted, rejected).
fn validate_file(dir: &Path, f: &ponte_sim::FileSummary) -> (u64, u64) {
    let bytes = std::fs::read(dir.join(&f.file)).unwrap();
    let text = String::from_utf8(bytes).unwrap();
    let mut ok = 0;
    let mut bad = 0;
    let mut count = |r: bool| if r { ok += 1 } else { bad += 1 };
    match f.endpoint {
        "/v1/persons" => {
            use ponte_adapter_assistance::csv;
            let mut lines = text.lines();
            let header = csv::Header::parse(lines.next().unwrap()).unwrap();
            for l in lines {
                let row = csv::parse_row(&header, l, "assistance", now());
                if let Ok(valid) = &row {
                    // Members of the programme: without the marker nobody is in any public.
                    match &valid.event.record {
                        Some(ponte_proto::events::v1::event::Record::PersonProfile(p)) => {
                            assert!(p.memberships.contains(&"PBF".to_owned()), "{l}");
                        }
                        other => panic!("not a profile: {other:?}"),
                    }
                }
                count(row.is_ok());
            }
        }
        "/v1/attendance" => {
            use ponte_adapter_education::{csv, record};
            let mut lines = text.lines();
            let header = csv::Header::parse(lines.next().unwrap().as_bytes()).unwrap();
            for l in lines {
                let input = header.parse_row(l.as_bytes()).unwrap();
                count(record::validate(&input, "education", now()).is_ok());
            }
        }
        "/v1/health" => {
            use ponte_adapter_health::simple;
            for input in serde_json::from_str::<Vec<simple::FollowUpInput>>(&text).unwrap() {
                count(simple::validate(&input, "health", now()).is_ok());
            }
        }
        "/v1/scfv-attendance" => {
            use ponte_adapter_assistance::scfv;
            for input in serde_json::from_str::<Vec<scfv::ScfvInput>>(&text).unwrap() {
                count(scfv::validate(&input, "assistance", now()).is_ok());
            }
        }
        "/v1/family-follow-ups" => {
            use ponte_adapter_assistance::family;
            for input in serde_json::from_str::<Vec<family::FollowUpInput>>(&text).unwrap() {
                count(family::validate_follow_up(&input, "assistance", now()).is_ok());
            }
        }
        "/v1/appeals" => {
            use ponte_adapter_assistance::family;
            for input in serde_json::from_str::<Vec<family::AppealInput>>(&text).unwrap() {
                count(family::validate_appeal(&input, "assistance", now()).is_ok());
            }
        }
        other => panic!("unexpected endpoint {other}"),
    }
    (ok, bad)
}

#[test]
fn every_record_passes_the_adapters_validators_without_malformed_share() {
    let dir = tempfile::tempdir().unwrap();
    let summary = run(&config(11, 10_000, 0.0), dir.path());
    let endpoints: BTreeSet<_> = summary.files.iter().map(|f| f.endpoint).collect();
    assert_eq!(
        endpoints.len(),
        6,
        "every kind of record is written: {endpoints:?}"
    );
    for f in &summary.files {
        let (ok, bad) = validate_file(dir.path(), f);
        assert_eq!(bad, 0, "{}: {bad} records rejected", f.file);
        assert_eq!(ok, f.records, "{}", f.file);
        assert!(ok > 0, "{} is empty", f.file);
    }
}

#[test]
fn malformed_records_are_exactly_those_the_adapters_reject() {
    let dir = tempfile::tempdir().unwrap();
    let share = 0.05;
    let summary = run(&config(12, 10_000, share), dir.path());
    let mut rejected = 0;
    for f in &summary.files {
        let (ok, bad) = validate_file(dir.path(), f);
        assert_eq!(bad, f.malformed, "{}", f.file);
        assert_eq!(ok + bad, f.records, "{}", f.file);
        rejected += bad;
    }
    let observed = rejected as f64 / summary.records() as f64;
    assert!(
        (observed - share).abs() < 0.01,
        "malformed share {observed:.4}, asked {share}"
    );
    // The manifest lists the same counts.
    let manifest = std::fs::read_to_string(dir.path().join("manifest.tsv")).unwrap();
    assert_eq!(manifest.lines().count(), summary.files.len() + 1);
}

/// Ratios on 10 k people against the figures of February 2025 (docs/sources.md#s13).
#[test]
fn the_population_has_the_published_shape() {
    let cfg = config(21, 10_000, 0.0);
    let dir = tempfile::tempdir().unwrap();
    let summary = run(&cfg, dir.path());
    let pop = Population::new(cfg.seed, cfg.people, cfg.reference());
    let bimester = cfg.bimesters[0];
    let semester = cfg.semesters[0];
    let (mut people, mut child06, mut age7_15, mut age16_17) = (0u64, 0u64, 0u64, 0u64);
    let (mut children, mut children_cns, mut adults, mut adults_cns) = (0u64, 0u64, 0u64, 0u64);
    let mut edu_public = BTreeSet::new();
    let mut health_children = BTreeMap::new();
    let mut pregnant = 0u64;
    for f in 0..pop.families() {
        for p in pop.family(f).members {
            people += 1;
            match p.age_on(cfg.reference()) {
                0..=6 => child06 += 1,
                7..=15 => age7_15 += 1,
                16..=17 => age16_17 += 1,
                _ => {}
            }
            if p.age_on(cfg.reference()) < 7 {
                children += 1;
                children_cns += u64::from(p.registry_has_cns);
            } else if p.age_on(cfg.reference()) >= 18 {
                adults += 1;
                adults_cns += u64::from(p.registry_has_cns);
            }
            pregnant += u64::from(p.expected_delivery.is_some());
            if in_education_public(&p, bimester) {
                edu_public.insert(p.nis.clone());
            }
            if in_health_public(&p, semester) && p.age_on(semester.first_day()) < 7 {
                health_children.insert(p.cns.clone(), p.cpf.clone());
            }
            assert!(p.sex == Sex::F || p.expected_delivery.is_none());
        }
    }
    assert_eq!(people, summary.people);
    let near = |what: &str, got: f64, want: f64, tol: f64| {
        assert!(
            (got - want).abs() <= tol,
            "{what}: {got:.4}, expected {want} ± {tol}"
        );
    };
    let n = people as f64;
    near(
        "people per family",
        n / pop.families() as f64,
        54.0 / 20.56,
        0.08,
    );
    near("children 0-6", child06 as f64 / n, 9.12 / 54.0, 0.015);
    near("aged 7-15", age7_15 as f64 / n, 12.3 / 54.0, 0.015);
    near("aged 16-17", age16_17 as f64 / n, 2.6 / 54.0, 0.008);
    near("pregnant", pregnant as f64 / n, 0.839 / 54.0, 0.006);
    assert!(
        (children_cns as f64 / children as f64) < (adults_cns as f64 / adults as f64) - 0.2,
        "CNS coverage must be worse for children"
    );

    // Education: pupils with a record / public, and the compliant share of them.
    let text =
        std::fs::read_to_string(dir.path().join(format!("education-{bimester}.csv"))).unwrap();
    let mut pupils: BTreeMap<String, bool> = BTreeMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let (given, attended): (u32, u32) = (f[4].parse().unwrap(), f[5].parse().unwrap());
        let low = attended * 100 < given * 75 && f[6] != "1";
        *pupils.entry(f[0].to_owned()).or_insert(false) |= low;
    }
    assert!(pupils.keys().all(|n| edu_public.contains(n)));
    let followed = pupils.len() as f64 / edu_public.len() as f64;
    near("education follow-up", followed, 0.86, 0.025);
    let compliant = pupils.values().filter(|low| !**low).count() as f64 / pupils.len() as f64;
    near("education compliance", compliant, 0.95, 0.015);
    near(
        "education public",
        edu_public.len() as f64 / n,
        19.2 / 54.0,
        0.03,
    );

    // Health: children < 7 with a record / children < 7.
    let mut with_record = 0u64;
    for f in summary.files.iter().filter(|f| f.endpoint == "/v1/health") {
        let text = std::fs::read_to_string(dir.path().join(&f.file)).unwrap();
        let recs: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        for r in recs {
            let id = r
                .get("cns")
                .or_else(|| r.get("cpf"))
                .unwrap()
                .as_str()
                .unwrap();
            if health_children.contains_key(id) || health_children.values().any(|c| c == id) {
                with_record += 1;
            }
        }
    }
    near(
        "children's health follow-up",
        with_record as f64 / health_children.len() as f64,
        0.611,
        0.035,
    );
}
