//! The contract between the sector adapters and the reconciler: whatever an adapter accepts —
//! answers 2xx for, and so publishes — the reconciler can apply. A record that comes back
//! `Applied::Invalid` was acknowledged to its sender and then never reaches the view.
//!
//! Each test generates adapter *inputs* (JSON records, CSV lines, FHIR bundles) for one adapter,
//! across the record kinds and the combinations of optional fields the adapter takes, runs the
//! adapter's own mapping code on them (the functions its HTTP handlers call; CSV lines through
//! the CSV readers, which feed the same validation as JSON), and applies every
//! event it accepts to the topology — on the topic the adapter publishes to, through the
//! reconciler's own repartition topics (crosswalk, health by NIS, members) as the service does.
//! Every scenario starts from a fresh state holding the registry profile of one generated
//! person (carrying their CNS and CPF, so that health records by CNS or CPF resolve and reach
//! the person stage) and then sends one record and, sometimes, its retraction by key.
//!
//! Rather than stopping at the first failing case, each test tallies the outcomes by record kind
//! and fails with every kind that came back invalid, the reason and the shortest input seen,
//! and with the share of generated inputs the adapter accepted (so that the test cannot pass by
//! generating only inputs the adapters refuse). The random seed is fixed so that a failure list
//! reproduces exactly; `PROPTEST_RNG_SEED=<n>` explores another part of the space.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{MapKv, partition_of};

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use ponte_adapter_assistance::record::{Destination, Kind};
use ponte_adapter_education::csv as education_csv;
use ponte_adapter_education::record as education;
use ponte_adapter_health::fhir::{BundleSource, EntryOutcome, parse_bundle};
use ponte_adapter_health::record::MappingConfig;
use ponte_adapter_health::simple;
use ponte_domain::ids::{Cns, Cpf, IBGE_CHECK_DIGIT_EXCEPTIONS, IbgeMunicipality, Nis, UF_CODES};
use ponte_domain::period::Date;
use ponte_domain::rules::RuleSet;
use ponte_proto::events::v1::Event;
use ponte_reconciler::topology::{Applied, Input, Output, OutputKind, Topology, Tx, Writes};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use serde_json::{Map, Value, json};

const RULES: &str = include_str!("../../../rules/bolsa-familia-2023.toml");

/// Scenarios per test: each is a fresh state, a profile and one or two records.
const CASES: u32 = 256;
/// The default seed (overridden by `PROPTEST_RNG_SEED`).
const SEED: u64 = 0x5EED_0013;

/// The adapters' clock in every case: 2026-01-01T12:00:00Z. They refuse dates after it (with a
/// day of slack), so generated dates end on [`today`].
fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_268_800)
}

fn today() -> Date {
    Date::new(2026, 1, 1).unwrap()
}

fn day(y: i32, m: u8, d: u8) -> Date {
    Date::new(y, m, d).unwrap()
}

// ---- the reconciler over a map --------------------------------------------------------------

/// The topology with its state in a map and its repartition topics as one FIFO queue.
struct Reconciler {
    kv: MapKv,
    topology: Topology,
    pending: VecDeque<(Input, i32, Vec<u8>)>,
}

/// An event as an adapter publishes it: topic (by role), Kafka key, event.
#[derive(Debug, Clone)]
struct Published {
    input: Input,
    key: String,
    event: Event,
}

impl Reconciler {
    fn new(topology: &Topology) -> Self {
        Reconciler {
            kv: MapKv::default(),
            topology: topology.clone(),
            pending: VecDeque::new(),
        }
    }

    fn commit(&mut self, (writes, outputs): (Writes, Vec<Output>)) {
        let mut map = self.kv.0.lock().unwrap();
        for (k, v) in writes {
            match v {
                Some(v) => map.insert(k, v),
                None => map.remove(&k),
            };
        }
        drop(map);
        for o in outputs {
            let internal = match o.kind {
                OutputKind::Crosswalk => Input::Crosswalk,
                OutputKind::HealthByNis => Input::HealthByNis,
                OutputKind::Member => Input::Members,
                // Views, alerts and anything else for the world outside the topology.
                _ => continue,
            };
            self.pending.push_back((
                internal,
                partition_of(&o.key),
                o.payload.unwrap_or_default(),
            ));
        }
    }

    /// Applies one published event on the partition of its key, then everything it sends on
    /// through the repartition topics. Returns what could not be applied, and where.
    fn apply(&mut self, p: &Published) -> Vec<String> {
        let mut problems = Vec::new();
        let mut tx = Tx::new(&self.kv);
        tx.set_partition(partition_of(&p.key));
        match self.topology.apply(&mut tx, p.input, &p.event) {
            Ok(Applied::Invalid(reason)) => problems.push(format!("{:?}: {reason}", p.input)),
            Ok(_) => {
                self.topology.finish(&mut tx).unwrap();
                let taken = tx.take();
                self.commit(taken);
            }
            Err(e) => problems.push(format!("{:?}: error {e}", p.input)),
        }
        while let Some((input, partition, payload)) = self.pending.pop_front() {
            let mut tx = Tx::new(&self.kv);
            tx.set_partition(partition);
            match self.topology.apply_internal(&mut tx, input, &payload) {
                Ok((Applied::Invalid(reason), _)) => {
                    problems.push(format!("{:?} then {input:?}: {reason}", p.input));
                }
                Ok(_) => {
                    self.topology.finish(&mut tx).unwrap();
                    let taken = tx.take();
                    self.commit(taken);
                }
                Err(e) => problems.push(format!("{:?} then {input:?}: error {e}", p.input)),
            }
        }
        problems
    }
}

fn topology() -> Topology {
    let rules = RuleSet::from_toml_str("bolsa-familia-2023.toml", RULES).unwrap();
    let from = ponte_domain::period::Month::parse("2025-01").unwrap();
    let to = ponte_domain::period::Month::parse("2025-12").unwrap();
    Topology::new(rules, from, to)
}

// ---- adapter inputs and the adapters' own mapping ---------------------------------------------

/// One input as a sector system sends it to an adapter.
#[derive(Debug, Clone)]
enum AdapterInput {
    /// `POST /v1/attendance`, one JSON record.
    EducationJson(String),
    /// `POST /v1/attendance` as `text/csv`: the header and one line.
    EducationCsv { header: String, line: String },
    /// `POST /v1/health`, one record of the simple JSON form.
    HealthJson(String),
    /// `POST /fhir`: a bundle, with the record kind of each entry (`None` for a `Patient`).
    Fhir {
        body: String,
        labels: Vec<Option<String>>,
    },
    /// One JSON record to an assistance endpoint.
    Assistance { kind: Kind, json: String },
    /// `POST /v1/persons` as `text/csv`: the header and one line.
    PersonCsv { header: String, line: String },
}

/// One input and the record kind it stands for in the report.
#[derive(Debug, Clone)]
struct Step {
    label: String,
    input: AdapterInput,
}

/// What the adapter made of one input: per record, its kind, the input to show in a report,
/// and the published event or why it was rejected.
type Mapped = Vec<(String, String, Result<Published, String>)>;

fn run_adapter(step: &Step) -> Mapped {
    let one = |shown: String, r: Result<Published, String>| vec![(step.label.clone(), shown, r)];
    match &step.input {
        AdapterInput::EducationJson(json) => {
            let r = serde_json::from_str::<education::AttendanceInput>(json)
                .map_err(|e| format!("malformed: {e}"))
                .and_then(|input| {
                    education::validate(&input, "education", now()).map_err(|e| e.to_string())
                })
                .map(|v| Published {
                    input: Input::Education,
                    key: v.key,
                    event: v.event,
                });
            one(json.clone(), r)
        }
        AdapterInput::EducationCsv { header, line } => {
            let r = education_csv::Header::parse(header.as_bytes())
                .map_err(|e| e.to_string())
                .and_then(|h| h.parse_row(line.as_bytes()).map_err(|e| e.to_string()))
                .and_then(|input| {
                    education::validate(&input, "education", now()).map_err(|e| e.to_string())
                })
                .map(|v| Published {
                    input: Input::Education,
                    key: v.key,
                    event: v.event,
                });
            one(format!("{header}\\n{line}"), r)
        }
        AdapterInput::HealthJson(json) => {
            let r = serde_json::from_str::<simple::FollowUpInput>(json)
                .map_err(|e| format!("malformed: {e}"))
                .and_then(|input| {
                    simple::validate(&input, "health", now()).map_err(|e| e.to_string())
                })
                .map(|v| Published {
                    input: Input::Health,
                    key: v.key,
                    event: v.event,
                });
            one(json.clone(), r)
        }
        AdapterInput::Fhir { body, labels } => {
            let parsed = match parse_bundle(
                body.as_bytes(),
                &MappingConfig::default(),
                "health",
                BundleSource::Push,
                now(),
            ) {
                Ok(p) => p,
                Err(e) => return one(body.clone(), Err(format!("bundle: {e}"))),
            };
            let kind = parsed.bundle_type.clone();
            parsed
                .entries
                .into_iter()
                .filter_map(|entry| {
                    let label = labels.get(entry.index).cloned().flatten()?;
                    let shown = format!(
                        "entry {} of a {kind} bundle: {}",
                        entry.index + 1,
                        String::from_utf8_lossy(&entry.original)
                    );
                    let r = match entry.outcome {
                        EntryOutcome::Record(v) => Ok(Published {
                            input: Input::Health,
                            key: v.key,
                            event: v.event,
                        }),
                        EntryOutcome::Rejected(e) => Err(e.to_string()),
                        EntryOutcome::Ignored(why) => Err(format!("ignored: {why}")),
                        EntryOutcome::Identity(_) => Err("read as a Patient".to_owned()),
                    };
                    Some((label, shown, r))
                })
                .collect()
        }
        AdapterInput::Assistance { kind, json } => {
            let r = ponte_adapter_assistance::parse_json(*kind, json, "assistance", now())
                .map_err(|e| e.to_string())
                .map(|v| Published {
                    input: match v.destination {
                        Destination::RegistryPersons => Input::Registry,
                        Destination::AssistancePerson => Input::AssistancePerson,
                        Destination::AssistanceFamily => Input::AssistanceFamily,
                    },
                    key: v.key,
                    event: v.event,
                });
            one(json.clone(), r)
        }
        AdapterInput::PersonCsv { header, line } => {
            let r = ponte_adapter_assistance::csv::Header::parse(header)
                .and_then(|h| {
                    ponte_adapter_assistance::csv::parse_row(&h, line, "assistance", now())
                        .map_err(|e| e.to_string())
                })
                .map(|v| Published {
                    input: Input::Registry,
                    key: v.key,
                    event: v.event,
                });
            one(format!("{header}\\n{line}"), r)
        }
    }
}

// ---- the tally and the verdict ------------------------------------------------------------------

#[derive(Default)]
struct KindTally {
    generated: u32,
    accepted: u32,
    /// The first reason the adapter gave for refusing an input of this kind.
    rejected_because: Option<String>,
    /// Why the reconciler could not apply it → (how often, the shortest input).
    invalid: BTreeMap<String, (u32, String)>,
}

#[derive(Default)]
struct Tally {
    kinds: BTreeMap<String, KindTally>,
}

/// Kinds of this prefix set the scene and are left out of the accepted share.
const SEED_PREFIX: &str = "(seed) ";

impl Tally {
    fn feed(&mut self, reconciler: &mut Reconciler, step: &Step) {
        for (label, shown, outcome) in run_adapter(step) {
            let k = self.kinds.entry(label).or_default();
            k.generated += 1;
            match outcome {
                Err(reason) => {
                    k.rejected_because.get_or_insert(reason);
                }
                Ok(published) => {
                    k.accepted += 1;
                    for problem in reconciler.apply(&published) {
                        let e = k.invalid.entry(problem).or_insert((0, shown.clone()));
                        e.0 += 1;
                        if shown.len() < e.1.len() {
                            e.1 = shown.clone();
                        }
                    }
                }
            }
        }
    }

    fn verdict(&self, adapter: &str) {
        let mut summary = String::new();
        let mut invalid = String::new();
        let mut never_accepted = String::new();
        let (mut generated, mut accepted) = (0, 0);
        for (label, k) in &self.kinds {
            writeln!(
                summary,
                "  {label}: {} of {} accepted",
                k.accepted, k.generated
            )
            .unwrap();
            if !label.starts_with(SEED_PREFIX) {
                generated += k.generated;
                accepted += k.accepted;
            }
            for (reason, (n, sample)) in &k.invalid {
                writeln!(
                    invalid,
                    "- [{label}] {n} of {} accepted came back Applied::Invalid: {reason}\n    \
                     e.g. {sample}",
                    k.accepted
                )
                .unwrap();
            }
            if k.accepted == 0 {
                writeln!(
                    never_accepted,
                    "- [{label}] e.g. {}",
                    k.rejected_because.as_deref().unwrap_or("?")
                )
                .unwrap();
            }
        }
        assert!(
            invalid.is_empty(),
            "{adapter}: inputs the adapter accepts (answers 2xx for) that the reconciler cannot \
             apply:\n{invalid}\nkinds generated:\n{summary}"
        );
        assert!(
            never_accepted.is_empty(),
            "{adapter}: kinds the adapter never accepted (the generator drifted from the \
             layout):\n{never_accepted}\nkinds generated:\n{summary}"
        );
        assert!(
            accepted * 10 >= generated * 6,
            "{adapter}: only {accepted} of {generated} generated inputs were accepted:\n{summary}"
        );
        // Shown with `--nocapture`: what was covered.
        eprintln!("{adapter}: {accepted} of {generated} inputs accepted, all applied\n{summary}");
    }
}

/// A generated person, whose registry profile opens every scenario.
#[derive(Debug, Clone)]
struct Person {
    nis: String,
    cns: String,
    cpf: String,
    family: String,
    municipality: String,
    birth: Date,
    female: bool,
}

#[derive(Debug, Clone)]
struct Scenario {
    person: Person,
    steps: Vec<Step>,
}

fn check(adapter: &str, scenarios: impl Strategy<Value = Scenario>) {
    let mut config = Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    };
    if config.rng_seed == RngSeed::Random {
        config.rng_seed = RngSeed::Fixed(SEED);
    }
    let mut runner = TestRunner::new(config);
    let topology = topology();
    let mut tally = Tally::default();
    for _ in 0..CASES {
        let scenario = scenarios
            .new_tree(&mut runner)
            .expect("a scenario")
            .current();
        let mut reconciler = Reconciler::new(&topology);
        tally.feed(&mut reconciler, &seed_profile(&scenario.person));
        for step in &scenario.steps {
            tally.feed(&mut reconciler, step);
        }
    }
    tally.verdict(adapter);
}

// ---- identifiers, dates, periods ----------------------------------------------------------

/// A valid NIS, as `integration-tests`' `valid_nis`.
fn valid_nis(n: u64) -> String {
    Nis::with_check_digit(&format!("{:010}", 1_000_000_000 + n))
        .expect("ten digits, not all equal")
        .to_string()
}

/// The definitive CNS derived from a NIS starting with 1 or 2 (the Ministry of Health's rule,
/// as `Cns::parse` checks it).
fn definitive_cns(nis: &str) -> String {
    let d: Vec<u32> = nis.bytes().map(|b| u32::from(b - b'0')).collect();
    let s: u32 = d.iter().zip((5..=15).rev()).map(|(x, w)| x * w).sum();
    let dv = |s: u32| match 11 - (s % 11) {
        11 => 0,
        dv => dv,
    };
    let cns = match dv(s) {
        10 => format!("{nis}001{}", dv(s + 2)),
        dv => format!("{nis}000{dv}"),
    };
    Cns::parse(&cns).expect("derived by the rule").to_string()
}

/// A provisional CNS (7, 8 or 9, Σ dᵢ·(15−i) ≡ 0 mod 11), when `body` allows one.
fn provisional_cns(first: u8, body: u64) -> Option<String> {
    let head = format!("{first}{:012}", body % 1_000_000_000_000);
    (0..10).find_map(|d13| {
        let digits = format!("{head}{d13}");
        let s: u32 = digits
            .bytes()
            .zip((2..=15).rev())
            .map(|(b, w)| u32::from(b - b'0') * w)
            .sum();
        let last = (11 - s % 11) % 11;
        (last < 10)
            .then(|| Cns::parse(&format!("{digits}{last}")).ok())
            .flatten()
            .map(|c| c.to_string())
    })
}

fn nis_strategy() -> impl Strategy<Value = String> {
    (0u64..90_000_000).prop_map(valid_nis)
}

fn cpf_strategy() -> impl Strategy<Value = String> {
    (1u32..999_999_999).prop_filter_map("a CPF body that is not all one digit", |b| {
        Cpf::with_check_digits(&format!("{b:09}"))
            .ok()
            .map(|c| c.to_string())
    })
}

fn municipality_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (0..UF_CODES.len(), 0u32..10_000).prop_map(|(uf, body)| {
            IbgeMunicipality::with_check_digit(&format!("{:02}{body:04}", UF_CODES[uf]))
                .unwrap()
                .to_string()
        }),
        1 => (0..IBGE_CHECK_DIGIT_EXCEPTIONS.len())
            .prop_map(|i| IBGE_CHECK_DIGIT_EXCEPTIONS[i].to_owned()),
    ]
}

fn family_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{10,11}",
        "F-[A-Z0-9]{1,8}",
        "[A-Za-z0-9][A-Za-z0-9-]{0,31}"
    ]
}

fn inep_strategy() -> impl Strategy<Value = String> {
    (10_000_000u32..100_000_000).prop_map(|i| i.to_string())
}

fn person_strategy() -> impl Strategy<Value = Person> {
    (
        0u64..90_000_000,
        any::<bool>(),
        7u8..=9,
        any::<u64>(),
        cpf_strategy(),
        family_strategy(),
        municipality_strategy(),
        date_between(day(1950, 1, 1), day(2024, 12, 31)),
        any::<bool>(),
    )
        .prop_filter_map(
            "a provisional CNS body with a check digit",
            |(n, definitive, first, body, cpf, family, municipality, birth, female)| {
                let nis = valid_nis(n);
                let cns = if definitive {
                    definitive_cns(&nis)
                } else {
                    provisional_cns(first, body)?
                };
                Some(Person {
                    nis,
                    cns,
                    cpf,
                    family,
                    municipality,
                    birth,
                    female,
                })
            },
        )
}

/// `nis` as written by hand now and then: `268.27649.96-0`.
fn punctuated_nis(nis: &str, punctuate: bool) -> String {
    if punctuate {
        format!(
            "{}.{}.{}-{}",
            &nis[..3],
            &nis[3..8],
            &nis[8..10],
            &nis[10..]
        )
    } else {
        nis.to_owned()
    }
}

fn punctuated_cpf(cpf: &str, punctuate: bool) -> String {
    if punctuate {
        format!("{}.{}.{}-{}", &cpf[..3], &cpf[3..6], &cpf[6..9], &cpf[9..])
    } else {
        cpf.to_owned()
    }
}

fn spaced_cns(cns: &str, space: bool) -> String {
    if space {
        format!(
            "{} {} {} {}",
            &cns[..3],
            &cns[3..7],
            &cns[7..11],
            &cns[11..]
        )
    } else {
        cns.to_owned()
    }
}

fn date_between(from: Date, to: Date) -> impl Strategy<Value = Date> {
    (from.to_days()..=to.to_days()).prop_map(|d| Date::from_days(d).unwrap())
}

/// A date of the last two years, up to the adapters' today.
fn recent_date() -> impl Strategy<Value = Date> {
    date_between(day(2024, 1, 1), today())
}

/// `Date` plus `extra` days, at most `until`.
fn later(d: Date, extra: i64, until: Date) -> Date {
    Date::from_days((d.to_days() + extra).min(until.to_days())).unwrap()
}

/// An RFC 3339 recording time before the adapters' clock.
fn recorded_at_strategy() -> impl Strategy<Value = String> {
    (
        date_between(day(2024, 1, 1), day(2025, 12, 31)),
        0u32..86_400,
        prop_oneof![Just("Z"), Just("-03:00"), Just("+00:00")],
    )
        .prop_map(|(d, s, zone)| {
            format!("{d}T{:02}:{:02}:{:02}{zone}", s / 3600, s / 60 % 60, s % 60)
        })
}

/// `version` and `recorded_at` as a source gives them: either, both or neither.
#[derive(Debug, Clone)]
struct Versioning {
    version: Option<u64>,
    recorded_at: Option<String>,
}

fn versioning() -> impl Strategy<Value = Versioning> {
    (option::of(1u64..1000), option::of(recorded_at_strategy())).prop_map(
        |(version, recorded_at)| Versioning {
            version,
            recorded_at,
        },
    )
}

impl Versioning {
    /// What a later correction or retraction of the same record carries: a higher version.
    fn next(&self) -> Versioning {
        match (&self.version, &self.recorded_at) {
            (Some(v), _) => Versioning {
                version: Some(v + 1),
                recorded_at: None,
            },
            // Recorded at most on 2025-12-31 (any zone): the next day is later and not future.
            (None, Some(_)) => Versioning {
                version: None,
                recorded_at: Some("2026-01-01T06:00:00Z".to_owned()),
            },
            (None, None) => Versioning {
                version: Some(2),
                recorded_at: None,
            },
        }
    }

    fn put(&self, o: &mut Map<String, Value>) {
        if let Some(v) = self.version {
            o.insert("version".into(), json!(v));
        }
        if let Some(t) = &self.recorded_at {
            o.insert("recorded_at".into(), json!(t));
        }
    }

    fn columns(&self, cols: &mut Vec<(&'static str, String)>) {
        if let Some(v) = self.version {
            cols.push(("version", v.to_string()));
        }
        if let Some(t) = &self.recorded_at {
            cols.push(("recorded_at", t.clone()));
        }
    }
}

fn reason_code_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1".to_owned()),
        Just("1a".to_owned()),
        Just("7".to_owned()),
        Just("62".to_owned()),
        "[A-Za-z0-9]{1,8}",
        Just(String::new()),
    ]
}

/// How a record is laid out in a CSV file: delimiter, column order, quoting, header case, and
/// whether absent optional fields appear as empty cells.
#[derive(Debug, Clone, Copy)]
struct CsvStyle {
    semicolon: bool,
    rotate: usize,
    quoted: u32,
    upper: u32,
    empty_cells: bool,
}

fn csv_style() -> impl Strategy<Value = CsvStyle> {
    (
        any::<bool>(),
        0usize..16,
        any::<u32>(),
        any::<u32>(),
        any::<bool>(),
    )
        .prop_map(|(semicolon, rotate, quoted, upper, empty_cells)| CsvStyle {
            semicolon,
            rotate,
            quoted,
            upper,
            empty_cells,
        })
}

impl CsvStyle {
    fn delimiter(&self) -> char {
        if self.semicolon { ';' } else { ',' }
    }

    /// The header and the line of `cols`, with `absent` columns as empty cells if the style
    /// says so.
    fn render(
        &self,
        mut cols: Vec<(&'static str, String)>,
        absent: &[&'static str],
    ) -> (String, String) {
        if self.empty_cells {
            for name in absent {
                if !cols.iter().any(|(n, _)| n == name) {
                    cols.push((name, String::new()));
                }
            }
        }
        let r = self.rotate % cols.len();
        cols.rotate_left(r);
        let d = self.delimiter().to_string();
        let header = cols
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                if self.upper >> (i % 32) & 1 == 1 {
                    name.to_ascii_uppercase()
                } else {
                    (*name).to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(&d);
        let line = cols
            .iter()
            .enumerate()
            .map(|(i, (_, v))| {
                if self.quoted >> (i % 32) & 1 == 1 {
                    format!("\"{}\"", v.replace('"', "\"\""))
                } else {
                    v.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(&d);
        (header, line)
    }
}

fn obj(o: Map<String, Value>) -> String {
    Value::Object(o).to_string()
}

/// The first day of a bimester (`B1` February–March … `B5` October–November) or semester.
fn period_first_day(year: i32, semester: bool, number: u8) -> Date {
    if semester {
        day(year, if number == 1 { 1 } else { 7 }, 1)
    } else {
        day(year, number * 2, 1)
    }
}

fn semester_of(d: Date) -> String {
    format!("{}-S{}", d.year(), if d.month() <= 6 { 1 } else { 2 })
}

// ---- the registry profile every scenario starts with ------------------------------------------

fn seed_profile(p: &Person) -> Step {
    let json = json!({
        "nis": p.nis, "family_id": p.family, "birth_date": p.birth.to_string(),
        "sex": if p.female { "F" } else { "M" }, "municipality": p.municipality,
        "cns": [p.cns], "cpf": p.cpf, "memberships": ["PBF"], "version": 1,
    });
    Step {
        label: format!("{SEED_PREFIX}registry json profile of the scenario's person"),
        input: AdapterInput::Assistance {
            kind: Kind::Person,
            json: json.to_string(),
        },
    }
}

// ---- education ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum EducationForm {
    Counts {
        unit: &'static str,
        given: u32,
        attended: u32,
    },
    /// Hundredths of a percent.
    Percent(u32),
    None,
}

#[derive(Debug, Clone)]
struct EducationRecord {
    nis: String,
    inep: String,
    month: (i32, u8),
    bimester: bool,
    form: EducationForm,
    reason: Option<String>,
    versioning: Versioning,
    retraction: Option<bool>,
}

fn education_form() -> impl Strategy<Value = EducationForm> {
    prop_oneof![
        (
            prop_oneof![Just("days"), Just("classes")],
            1u32..=200,
            0u32..=100
        )
            .prop_map(|(unit, given, share)| EducationForm::Counts {
                unit,
                given,
                attended: given * share / 100,
            }),
        (0u32..=10_000).prop_map(EducationForm::Percent),
    ]
}

fn education_record(nis: String) -> impl Strategy<Value = EducationRecord> {
    (
        any::<bool>(),
        inep_strategy(),
        2024i32..=2026,
        2u8..=11,
        any::<bool>(),
        education_form(),
        option::of(reason_code_strategy()),
        versioning(),
        prop_oneof![
            3 => Just(None),
            1 => Just(Some(false)),
            2 => Just(Some(true)),
        ],
        prop_oneof![Just(true), Just(false)],
    )
        .prop_map(
            move |(
                punct,
                inep,
                year,
                month,
                bimester,
                form,
                reason,
                versioning,
                retraction,
                keys_only,
            )| {
                EducationRecord {
                    nis: punctuated_nis(&nis, punct),
                    inep,
                    month: (year, month),
                    bimester,
                    // A retraction needs only the keys; it may still carry the figures.
                    form: if retraction == Some(true) && keys_only {
                        EducationForm::None
                    } else {
                        form
                    },
                    reason,
                    versioning,
                    retraction,
                }
            },
        )
}

impl EducationRecord {
    fn label(&self, channel: &str) -> String {
        let form = match self.form {
            EducationForm::Counts { .. } => "counts",
            EducationForm::Percent(_) => "percentage",
            EducationForm::None => "keys only",
        };
        let reason = if self.reason.as_deref().is_some_and(|r| !r.is_empty()) {
            ", reason code"
        } else {
            ""
        };
        if self.retraction == Some(true) {
            format!("education {channel} retraction ({form})")
        } else {
            format!("education {channel} {form}{reason}")
        }
    }

    /// The same record's retraction by its keys, with a higher version.
    fn retraction_by_keys(&self) -> EducationRecord {
        EducationRecord {
            nis: self.nis.clone(),
            inep: self.inep.clone(),
            month: self.month,
            bimester: false,
            form: EducationForm::None,
            reason: None,
            versioning: self.versioning.next(),
            retraction: Some(true),
        }
    }

    fn bimester_text(&self) -> String {
        format!("{}-B{}", self.month.0, self.month.1 / 2)
    }

    fn json(&self) -> String {
        let mut o = Map::new();
        o.insert("nis".into(), json!(self.nis));
        o.insert("inep_school_code".into(), json!(self.inep));
        o.insert(
            "month".into(),
            json!(format!("{}-{:02}", self.month.0, self.month.1)),
        );
        if self.bimester {
            o.insert("bimester".into(), json!(self.bimester_text()));
        }
        match &self.form {
            EducationForm::Counts {
                unit,
                given,
                attended,
            } => {
                o.insert("unit".into(), json!(unit));
                o.insert("given".into(), json!(given));
                o.insert("attended".into(), json!(attended));
            }
            EducationForm::Percent(h) => {
                o.insert("attendance_percent".into(), json!(f64::from(*h) / 100.0));
            }
            EducationForm::None => {}
        }
        if let Some(r) = &self.reason {
            o.insert("low_attendance_reason".into(), json!(r));
        }
        self.versioning.put(&mut o);
        if let Some(r) = self.retraction {
            o.insert("retraction".into(), json!(r));
        }
        obj(o)
    }

    fn csv(&self, style: CsvStyle) -> (String, String) {
        let mut cols: Vec<(&'static str, String)> = vec![
            ("nis", self.nis.clone()),
            ("inep_school_code", self.inep.clone()),
            ("month", format!("{}-{:02}", self.month.0, self.month.1)),
        ];
        if self.bimester {
            cols.push(("bimester", self.bimester_text()));
        }
        match &self.form {
            EducationForm::Counts {
                unit,
                given,
                attended,
            } => {
                cols.push(("unit", (*unit).to_owned()));
                cols.push(("given", given.to_string()));
                cols.push(("attended", attended.to_string()));
            }
            EducationForm::Percent(h) => {
                let decimal = if style.semicolon && h % 2 == 0 {
                    ','
                } else {
                    '.'
                };
                cols.push((
                    "attendance_percent",
                    format!("{}{decimal}{:02}", h / 100, h % 100),
                ));
            }
            EducationForm::None => {}
        }
        if let Some(r) = &self.reason {
            cols.push(("low_attendance_reason", r.clone()));
        }
        self.versioning.columns(&mut cols);
        if let Some(r) = self.retraction {
            cols.push(("retraction", if r { "true" } else { "0" }.to_owned()));
        }
        style.render(
            cols,
            &[
                "bimester",
                "unit",
                "given",
                "attended",
                "attendance_percent",
                "low_attendance_reason",
                "version",
                "recorded_at",
                "retraction",
            ],
        )
    }

    fn step(&self, csv: Option<CsvStyle>) -> Step {
        match csv {
            None => Step {
                label: self.label("json"),
                input: AdapterInput::EducationJson(self.json()),
            },
            Some(style) => {
                let (header, line) = self.csv(style);
                Step {
                    label: self.label("csv"),
                    input: AdapterInput::EducationCsv { header, line },
                }
            }
        }
    }
}

fn education_scenario() -> impl Strategy<Value = Scenario> {
    person_strategy().prop_flat_map(|person| {
        (
            Just(person.clone()),
            education_record(person.nis.clone()),
            option::of(csv_style()),
            any::<bool>(),
        )
            .prop_map(|(person, record, csv, retract)| {
                let mut steps = vec![record.step(csv)];
                if retract && record.retraction != Some(true) {
                    steps.push(record.retraction_by_keys().step(csv));
                }
                Scenario { person, steps }
            })
    })
}

// ---- health: the simple JSON form ------------------------------------------------------------

#[derive(Debug, Clone)]
enum When {
    SemesterOnly(Date),
    DateOnly(Date),
    Both(Date),
}

#[derive(Debug, Clone)]
struct HealthRecord {
    /// `cns`, `cpf` or `nis`, and the value as written.
    id: (&'static str, String),
    when: When,
    vaccination: Option<bool>,
    weight_tenths_kg: Option<u32>,
    height_tenths_cm: Option<u32>,
    pregnant: Option<bool>,
    prenatal: Option<bool>,
    last_menstruation: Option<Date>,
    versioning: Versioning,
    retraction: Option<bool>,
}

fn health_identifier(p: &Person) -> impl Strategy<Value = (&'static str, String)> + use<> {
    let (nis, cns, cpf) = (p.nis.clone(), p.cns.clone(), p.cpf.clone());
    (0u8..3, any::<bool>()).prop_map(move |(which, punct)| match which {
        0 => ("cns", spaced_cns(&cns, punct)),
        1 => ("cpf", punctuated_cpf(&cpf, punct)),
        _ => ("nis", punctuated_nis(&nis, punct)),
    })
}

fn health_record(p: &Person) -> impl Strategy<Value = HealthRecord> + use<> {
    (
        health_identifier(p),
        (0u8..3, recent_date()).prop_map(|(w, d)| match w {
            0 => When::SemesterOnly(d),
            1 => When::DateOnly(d),
            _ => When::Both(d),
        }),
        option::of(any::<bool>()),
        option::of(5u32..=1500),
        option::of(300u32..=2100),
        // Prenatal care with `pregnant: false` is refused; the other combinations are taken.
        prop_oneof![
            Just((None, None)),
            Just((Some(true), None)),
            Just((Some(false), None)),
            Just((None, Some(true))),
            Just((Some(true), Some(true))),
            Just((None, Some(false))),
            Just((Some(false), Some(false))),
        ],
        option::of(recent_date()),
        versioning(),
        prop_oneof![3 => Just(None), 1 => Just(Some(false)), 2 => Just(Some(true))],
    )
        .prop_map(
            |(
                id,
                when,
                vaccination,
                weight,
                height,
                (pregnant, prenatal),
                dum,
                versioning,
                retraction,
            )| {
                HealthRecord {
                    id,
                    when,
                    vaccination,
                    weight_tenths_kg: weight,
                    height_tenths_cm: height,
                    pregnant,
                    prenatal,
                    last_menstruation: dum,
                    versioning,
                    retraction,
                }
            },
        )
}

impl HealthRecord {
    fn label(&self) -> String {
        let when = match self.when {
            When::SemesterOnly(_) => "semester only",
            When::DateOnly(_) => "encounter_date only",
            When::Both(_) => "semester and encounter_date",
        };
        let what = if self.retraction == Some(true) {
            "retraction, "
        } else {
            ""
        };
        format!("health json {what}{} {when}", self.id.0)
    }

    fn retraction_by_keys(&self) -> HealthRecord {
        let d = match self.when {
            When::SemesterOnly(d) | When::DateOnly(d) | When::Both(d) => d,
        };
        HealthRecord {
            id: self.id.clone(),
            // The keys of the record: the person and the semester.
            when: When::SemesterOnly(d),
            vaccination: None,
            weight_tenths_kg: None,
            height_tenths_cm: None,
            pregnant: None,
            prenatal: None,
            last_menstruation: None,
            versioning: self.versioning.next(),
            retraction: Some(true),
        }
    }

    fn step(&self) -> Step {
        let mut o = Map::new();
        o.insert(self.id.0.into(), json!(self.id.1));
        match self.when {
            When::SemesterOnly(d) => {
                o.insert("semester".into(), json!(semester_of(d)));
            }
            When::DateOnly(d) => {
                o.insert("encounter_date".into(), json!(d.to_string()));
            }
            When::Both(d) => {
                o.insert("semester".into(), json!(semester_of(d)));
                o.insert("encounter_date".into(), json!(d.to_string()));
            }
        }
        if let Some(v) = self.vaccination {
            o.insert("vaccination_up_to_date".into(), json!(v));
        }
        if let Some(w) = self.weight_tenths_kg {
            o.insert("weight_kg".into(), json!(f64::from(w) / 10.0));
        }
        if let Some(h) = self.height_tenths_cm {
            o.insert("height_cm".into(), json!(f64::from(h) / 10.0));
        }
        if let Some(p) = self.pregnant {
            o.insert("pregnant".into(), json!(p));
        }
        if let Some(p) = self.prenatal {
            o.insert("prenatal_care".into(), json!(p));
        }
        if let Some(d) = self.last_menstruation {
            o.insert("last_menstruation_date".into(), json!(d.to_string()));
        }
        self.versioning.put(&mut o);
        if let Some(r) = self.retraction {
            o.insert("retraction".into(), json!(r));
        }
        Step {
            label: self.label(),
            input: AdapterInput::HealthJson(obj(o)),
        }
    }
}

fn health_json_scenario() -> impl Strategy<Value = Scenario> {
    person_strategy().prop_flat_map(|person| {
        (Just(person.clone()), health_record(&person), any::<bool>()).prop_map(
            |(person, record, retract)| {
                let mut steps = vec![record.step()];
                if retract && record.retraction != Some(true) {
                    steps.push(record.retraction_by_keys().step());
                }
                Scenario { person, steps }
            },
        )
    })
}

// ---- health: FHIR R4 bundles -----------------------------------------------------------------

const LOINC: &str = "http://loinc.org";
const SNOMED: &str = "http://snomed.info/sct";
const UCUM: &str = "http://unitsofmeasure.org";
const CNS_SYSTEMS: [&str; 2] = [
    "http://rnds.saude.gov.br/fhir/r4/NamingSystem/cns",
    "http://www.saude.gov.br/fhir/r4/NamingSystem/cns",
];
const CPF_SYSTEMS: [&str; 2] = [
    "http://rnds.saude.gov.br/fhir/r4/NamingSystem/cpf",
    "http://www.saude.gov.br/fhir/r4/NamingSystem/cpf",
];
const TYPED_SYSTEM: &str = "http://www.saude.gov.br/fhir/r4/StructureDefinition/BRIndividuo-1.0";
const BR_IMUNOBIOLOGICO: &str = "http://www.saude.gov.br/fhir/r4/CodeSystem/BRImunobiologico";
const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const BR_TIPO_DOCUMENTO: &str = "http://www.saude.gov.br/fhir/r4/CodeSystem/BRTipoDocumento";
const BRRNDS: &str = "http://www.saude.gov.br/fhir/r4/NamingSystem/BRRNDS-90217";
const PATIENT_URN: &str = "urn:uuid:0d5c4a3e-8d0b-4f4e-9a36-2f1f6c1d7e01";

/// A FHIR date or dateTime of `d`, in one of the forms health systems write.
fn fhir_when(d: Date, form: u8) -> String {
    match form % 4 {
        0 => d.to_string(),
        1 => format!("{d}T09:30:00-03:00"),
        2 => format!("{d}T12:00:00Z"),
        _ => format!("{d}T00:00:00.000+00:00"),
    }
}

fn fhir_instant(d: Date) -> String {
    format!("{d}T10:15:00Z")
}

/// One of the person's identifiers as a FHIR `Identifier`.
fn fhir_identifier(p: &Person) -> impl Strategy<Value = Value> + use<> {
    let (nis, cns, cpf) = (p.nis.clone(), p.cns.clone(), p.cpf.clone());
    (0u8..7, any::<bool>(), any::<bool>()).prop_map(move |(which, second, punct)| {
        let typed = |code: &str, value: String| {
            json!({"system": TYPED_SYSTEM, "value": value, "type": {"coding": [{
                "system": "http://www.saude.gov.br/fhir/r4/CodeSystem/BRTipoDocumentoIndividuo",
                "code": code}]}})
        };
        match which {
            0 => json!({"system": CNS_SYSTEMS[usize::from(second)],
                "value": spaced_cns(&cns, punct)}),
            1 => json!({"system": CPF_SYSTEMS[usize::from(second)],
                "value": punctuated_cpf(&cpf, punct)}),
            2 => typed("HC", cns.clone()),
            3 => typed("TAX", punctuated_cpf(&cpf, punct)),
            4 => typed("SS", punctuated_nis(&nis, punct)),
            5 => json!({"system": TYPED_SYSTEM, "value": cns.clone()}),
            _ => json!({"system": TYPED_SYSTEM, "value": cpf.clone()}),
        }
    })
}

/// A clinical resource without its subject and identity, and its record kind.
fn fhir_clinical() -> impl Strategy<Value = (String, Value)> {
    prop_oneof![immunization(), observation(), encounter(),]
}

fn immunization() -> impl Strategy<Value = (String, Value)> {
    (
        prop_oneof![
            3 => Just("completed"),
            1 => Just("not-done"),
            1 => Just("entered-in-error"),
        ],
        recent_date(),
        any::<u8>(),
        option::of(any::<bool>()),
        prop_oneof![
            ("[0-9]{2}").prop_map(|c| json!({"coding": [{
                "system": BR_IMUNOBIOLOGICO, "code": c}]})),
            Just(
                json!({"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "08"}],
                "text": "Hep B"})
            ),
        ],
        any::<bool>(),
    )
        .prop_map(|(status, d, form, subpotent, code, keep_code)| {
            let mut r = json!({"resourceType": "Immunization", "status": status,
                "occurrenceDateTime": fhir_when(d, form)});
            if status == "completed" || keep_code {
                r["vaccineCode"] = code;
            }
            if let Some(s) = subpotent {
                r["isSubpotent"] = json!(s);
            }
            let label = if status == "completed" {
                "fhir Immunization".to_owned()
            } else {
                "fhir Immunization withdrawn".to_owned()
            };
            (label, r)
        })
}

fn observation() -> impl Strategy<Value = (String, Value)> {
    let coded = |system: &str, code: &str| json!({"coding": [{"system": system, "code": code}]});
    let weight = prop_oneof![
        (5u32..=1500).prop_map(
            |t| json!({"value": f64::from(t) / 10.0, "unit": "kg", "system": UCUM, "code": "kg"})
        ),
        (500u32..=150_000)
            .prop_map(|g| json!({"value": g, "unit": "g", "system": UCUM, "code": "g"})),
        (2u32..=300)
            .prop_map(|lb| json!({"value": lb, "unit": "lbs", "system": UCUM, "code": "[lb_av]"})),
        (5u32..=1500).prop_map(|t| json!({"value": f64::from(t) / 10.0, "unit": "kg"})),
    ];
    let height = prop_oneof![
        (300u32..=2100).prop_map(
            |t| json!({"value": f64::from(t) / 10.0, "unit": "cm", "system": UCUM, "code": "cm"})
        ),
        (30u32..=210).prop_map(
            |c| json!({"value": f64::from(c) / 100.0, "unit": "m", "system": UCUM, "code": "m"})
        ),
        (300u32..=2100)
            .prop_map(|mm| json!({"value": mm, "unit": "mm", "system": UCUM, "code": "mm"})),
        (12u32..=84)
            .prop_map(|i| json!({"value": i, "unit": "in", "system": UCUM, "code": "[in_i]"})),
    ];
    let what = prop_oneof![
        weight.prop_map(move |q| ("weight", coded(LOINC, "29463-7"), ("valueQuantity", q))),
        (height, prop_oneof![Just("8302-2"), Just("8306-3")]).prop_map(move |(q, code)| (
            "height",
            coded(LOINC, code),
            ("valueQuantity", q)
        )),
        any::<bool>().prop_map(move |b| (
            "vaccination status",
            coded("urn:ponte:fhir:CodeSystem:health", "vaccination-up-to-date"),
            ("valueBoolean", json!(b)),
        )),
        prop_oneof![Just("77386006"), Just("60001007")].prop_map(move |c| (
            "pregnancy",
            coded(LOINC, "82810-3"),
            ("valueCodeableConcept", coded(SNOMED, c)),
        )),
        (recent_date(), any::<u8>()).prop_map(move |(d, form)| (
            "last menstrual period",
            coded(LOINC, "8665-2"),
            ("valueDateTime", json!(fhir_when(d, form))),
        )),
    ];
    (
        what,
        prop_oneof![
            2 => Just("final"),
            1 => Just("amended"),
            1 => Just("corrected"),
            1 => Just("entered-in-error"),
            1 => Just("cancelled"),
        ],
        recent_date(),
        0u8..3,
        any::<u8>(),
        any::<bool>(),
    )
        .prop_map(
            |((kind, code, (vkey, value)), status, d, eff, form, keep_value)| {
                let mut r = json!({"resourceType": "Observation", "status": status, "code": code});
                match eff {
                    0 => r["effectiveDateTime"] = json!(fhir_when(d, form)),
                    1 => r["effectivePeriod"] = json!({"start": fhir_when(d, form)}),
                    _ => r["effectiveInstant"] = json!(fhir_instant(d)),
                }
                let withdrawn = matches!(status, "entered-in-error" | "cancelled");
                if !withdrawn || keep_value {
                    r[vkey] = value;
                }
                let label = if withdrawn {
                    format!("fhir Observation {kind} withdrawn")
                } else {
                    format!("fhir Observation {kind}")
                };
                (label, r)
            },
        )
}

fn encounter() -> impl Strategy<Value = (String, Value)> {
    (
        prop_oneof![
            Just((SNOMED, "424441002")),
            Just((SNOMED, "424619006")),
            Just(("http://hl7.org/fhir/sid/icd-10", "Z34.0")),
            Just(("http://hl7.org/fhir/sid/icd-10", "Z35.9")),
            Just(("http://www.saude.gov.br/fhir/r4/CodeSystem/BRCID10", "Z340")),
            Just(("http://www.saude.gov.br/fhir/r4/CodeSystem/BRCID10", "Z359")),
        ],
        0u8..3,
        prop_oneof![
            2 => Just("finished"),
            1 => Just("in-progress"),
            1 => Just("cancelled"),
            1 => Just("entered-in-error"),
        ],
        recent_date(),
        any::<u8>(),
    )
        .prop_map(|((system, code), place, status, d, form)| {
            let cc = json!({"coding": [{"system": system, "code": code}]});
            let mut r = json!({"resourceType": "Encounter", "status": status,
                "class": {"system": ACT_CODE, "code": "AMB"},
                "period": {"start": fhir_when(d, form)}});
            match place {
                0 => r["type"] = json!([cc]),
                1 => r["serviceType"] = cc,
                _ => r["reasonCode"] = json!([cc]),
            }
            let label = if matches!(status, "cancelled" | "entered-in-error") {
                "fhir Encounter prenatal withdrawn"
            } else {
                "fhir Encounter prenatal"
            };
            (label.to_owned(), r)
        })
}

/// How a clinical resource names its patient, is identified, and is versioned.
#[derive(Debug, Clone)]
struct FhirPlacement {
    /// 0–2: a reference to the bundle's Patient (when there is one), 3: a logical reference.
    subject: u8,
    logical: Value,
    /// 0–5: an `id`; 6: a business identifier; 7: a `urn:uuid:` full URL.
    identity: u8,
    version_id: Option<u8>,
    last_updated: Option<Date>,
    method: Option<&'static str>,
}

fn fhir_placement(p: &Person) -> impl Strategy<Value = FhirPlacement> + use<> {
    (
        0u8..4,
        fhir_identifier(p),
        0u8..8,
        option::of(1u8..=20),
        option::of(recent_date()),
        prop_oneof![Just(None), Just(Some("POST")), Just(Some("PUT"))],
    )
        .prop_map(
            |(subject, logical, identity, version_id, last_updated, method)| FhirPlacement {
                subject,
                logical,
                identity,
                version_id,
                last_updated,
                method,
            },
        )
}

/// The bundle's `Patient`: its identifiers, whether it has a `urn:uuid:` full URL, and whether
/// it also carries an identifier of a system Ponte does not read.
type FhirPatient = (Vec<Value>, bool, bool);

/// What a `document` bundle adds (the form RNDS sends doses in): its `Composition`'s subject,
/// which entries its sections list (bit `i` of `listed`), which listed entries still name
/// their patient (the same one; bit `i` of `own`), nested sections, whether sections refer to
/// entries by `Type/id` rather than full URL, and `Bundle.timestamp`.
#[derive(Debug, Clone)]
struct FhirDocument {
    subject: Value,
    subject_is_patient_entry: bool,
    listed: u8,
    own: u8,
    nested: bool,
    by_id: bool,
    timestamp: Option<Date>,
}

fn fhir_document(p: &Person) -> impl Strategy<Value = FhirDocument> + use<> {
    (
        fhir_identifier(p),
        any::<bool>(),
        any::<u8>(),
        any::<u8>(),
        any::<bool>(),
        any::<bool>(),
        option::of(recent_date()),
    )
        .prop_map(
            |(subject, subject_is_patient_entry, listed, own, nested, by_id, timestamp)| {
                FhirDocument {
                    subject,
                    subject_is_patient_entry,
                    listed,
                    own,
                    nested,
                    by_id,
                    timestamp,
                }
            },
        )
}

fn fhir_scenario() -> impl Strategy<Value = Scenario> {
    person_strategy().prop_flat_map(|person| {
        let resources = vec((fhir_clinical(), fhir_placement(&person)), 1..=4);
        let patient = (
            vec(fhir_identifier(&person), 1..=3),
            any::<bool>(),
            any::<bool>(),
        );
        (
            Just(person.clone()),
            prop_oneof![
                Just("batch"),
                Just("transaction"),
                Just("collection"),
                Just("document"),
            ],
            option::of(patient),
            resources,
            fhir_document(&person),
        )
            .prop_map(|(person, kind, patient, resources, document)| {
                let document = (kind == "document").then_some(document);
                Scenario {
                    person,
                    steps: vec![fhir_bundle(
                        kind,
                        patient.as_ref(),
                        resources,
                        document.as_ref(),
                    )],
                }
            })
    })
}

fn fhir_bundle(
    kind: &str,
    patient: Option<&FhirPatient>,
    resources: Vec<((String, Value), FhirPlacement)>,
    document: Option<&FhirDocument>,
) -> Step {
    let mut entries = Vec::new();
    let mut labels = Vec::new();
    // A document's subject, as its Composition and the entries that agree with it name it.
    let document_subject = document.map(|d| match patient {
        Some(_) if d.subject_is_patient_entry => json!({"reference": "Patient/p1"}),
        _ => json!({"identifier": d.subject}),
    });
    let mut section_refs = Vec::new();
    if let Some(d) = document {
        // The Composition comes first (FHIR bdl-11); its sections are filled in below.
        entries.push(json!({"fullUrl": "urn:uuid:transient-0", "resource": {
            "resourceType": "Composition", "status": "final",
            "type": {"coding": [{"system": BR_TIPO_DOCUMENTO, "code": "RIA"}]},
            "subject": document_subject, "date": fhir_instant(d.timestamp.unwrap_or(today())),
            "title": "Registro de Imunobiologico Administrado"}}));
        labels.push(None);
    }
    if let Some((identifiers, full_url, noise)) = patient {
        let mut ids = identifiers.clone();
        if *noise {
            ids.push(json!({"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}));
        }
        let mut e = json!({"resource": {"resourceType": "Patient", "id": "p1", "identifier": ids}});
        if *full_url {
            e["fullUrl"] = json!(PATIENT_URN);
        }
        entries.push(e);
        labels.push(None);
    }
    for (i, ((label, mut res), place)) in resources.into_iter().enumerate() {
        let field = if res["resourceType"] == "Immunization" {
            "patient"
        } else {
            "subject"
        };
        let listed = document.filter(|d| d.listed >> i & 1 == 1);
        res[field] = match (patient, place.subject) {
            (Some(_), 0) => json!({"reference": "Patient/p1"}),
            (Some(_), 1) => json!({"reference": "http://example.org/fhir/Patient/p1"}),
            (Some((_, true, _)), 2) => json!({"reference": PATIENT_URN}),
            _ => json!({"identifier": place.logical}),
        };
        if let (Some(d), Some(subject)) = (listed, &document_subject) {
            // Listed in the document: it takes the Composition's subject, or names the same.
            if d.own >> i & 1 == 1 {
                res[field] = subject.clone();
            } else if let Some(o) = res.as_object_mut() {
                o.remove(field);
            }
        }
        let mut entry = Map::new();
        let rtype = res["resourceType"].as_str().unwrap_or_default().to_owned();
        match place.identity {
            0..=5 => res["id"] = json!(format!("r{i}-{}", place.identity)),
            6 => {
                let value = format!("rec-{i}");
                res["identifier"] = json!([{"system": "urn:ponte:test:records", "value": value}]);
            }
            _ if document.is_some() => {}
            _ => {
                let url = format!("urn:uuid:7c1e2f00-0000-4000-8000-{i:012}");
                entry.insert("fullUrl".into(), json!(url));
            }
        }
        if let Some(d) = document {
            // RNDS numbers a document's entries `urn:uuid:transient-N`, in every document.
            let url = format!("urn:uuid:transient-{}", i + 1);
            if listed.is_some() {
                let reference = match &res["id"] {
                    Value::String(id) if d.by_id => format!("{rtype}/{id}"),
                    _ => url.clone(),
                };
                section_refs.push(json!({"reference": reference}));
            }
            entry.insert("fullUrl".into(), json!(url));
        }
        let mut meta = Map::new();
        if let Some(v) = place.version_id {
            meta.insert("versionId".into(), json!(v.to_string()));
        }
        if let Some(d) = place.last_updated {
            meta.insert("lastUpdated".into(), json!(fhir_instant(d)));
        }
        if !meta.is_empty() {
            res["meta"] = Value::Object(meta);
        }
        if let (Some(method), "batch" | "transaction") = (place.method, kind) {
            entry.insert("request".into(), json!({"method": method, "url": rtype}));
        }
        entry.insert("resource".into(), res);
        entries.push(Value::Object(entry));
        labels.push(Some(label));
    }
    let mut body = json!({"resourceType": "Bundle", "type": kind, "entry": entries});
    if let Some(d) = document {
        let section = json!({"title": "Imunizacao", "entry": section_refs});
        body["entry"][0]["resource"]["section"] = if d.nested {
            json!([{"title": "Registro", "section": [section]}])
        } else {
            json!([section])
        };
        body["identifier"] = json!({"system": BRRNDS, "value": "ponte-contract-document"});
        if let Some(t) = d.timestamp {
            body["timestamp"] = json!(format!("{t}T09:41:12-03:00"));
        }
    }
    Step {
        label: "fhir bundle".to_owned(),
        input: AdapterInput::Fhir {
            body: body.to_string(),
            labels,
        },
    }
}

// ---- assistance: registry profiles -------------------------------------------------------------

#[derive(Debug, Clone)]
enum CnsField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default)]
struct Profile {
    nis: String,
    family: Option<String>,
    birth: Option<Date>,
    sex: Option<&'static str>,
    municipality: Option<String>,
    inep: Option<String>,
    cns: Option<CnsField>,
    cpf: Option<String>,
    pregnant: Option<bool>,
    expected_delivery: Option<Date>,
    peti: Option<bool>,
    memberships: Option<Vec<String>>,
    basic_education_completed: Option<bool>,
    versioning: Option<Versioning>,
    retraction: Option<bool>,
    /// What a retraction carries besides `nis`, for the report.
    retraction_shape: &'static str,
}

fn cns_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..90_000_000).prop_map(|n| definitive_cns(&valid_nis(n))),
        (7u8..=9, any::<u64>())
            .prop_filter_map("a provisional CNS", |(f, b)| provisional_cns(f, b)),
    ]
}

fn profile_strategy(p: &Person) -> impl Strategy<Value = Profile> + use<> {
    let person = p.clone();
    (
        (
            prop_oneof![Just(None), nis_strategy().prop_map(Some)],
            any::<bool>(),
            family_strategy(),
            date_between(day(1920, 1, 1), today()),
            prop_oneof![Just("F"), Just("M"), Just("f"), Just("m")],
            municipality_strategy(),
        ),
        (
            option::of(inep_strategy()),
            option::of(prop_oneof![
                cns_strategy().prop_map(CnsField::One),
                vec(cns_strategy(), 0..=3).prop_map(CnsField::Many),
            ]),
            option::of(cpf_strategy()),
            option::of(any::<bool>()),
            option::of(1i64..280),
            option::of(any::<bool>()),
            option::of(vec(
                prop_oneof![Just("PBF"), Just("PETI"), Just("bpc"), Just("SCFV_1")],
                0..=3,
            )),
            option::of(any::<bool>()),
            option::of(versioning()),
        ),
        prop_oneof![
            4 => Just("no"),
            1 => Just("retraction: false"),
            1 => Just("nis only"),
            1 => Just("nis and family_id"),
            1 => Just("the whole profile"),
        ],
    )
        .prop_map(
            move |(
                (other_nis, punct, family, birth, sex, municipality),
                (inep, cns, cpf, pregnant, edd_in, peti, memberships, basic, versioning),
                retraction,
            )| {
                let female = matches!(sex, "F" | "f");
                let nis = punctuated_nis(other_nis.as_deref().unwrap_or(&person.nis), punct);
                let mut memberships: Option<Vec<String>> =
                    memberships.map(|m| m.into_iter().map(str::to_owned).collect());
                // `peti: false` with PETI listed is refused; keep it coherent.
                if peti == Some(false)
                    && let Some(m) = &mut memberships
                {
                    m.retain(|c| !c.eq_ignore_ascii_case("PETI"));
                }
                let pregnant = pregnant.map(|p| p && female);
                let full = Profile {
                    nis: nis.clone(),
                    family: Some(family.clone()),
                    birth: Some(birth),
                    sex: Some(sex),
                    municipality: Some(municipality),
                    inep,
                    cns,
                    cpf,
                    pregnant,
                    expected_delivery: edd_in
                        .filter(|_| pregnant == Some(true))
                        .map(|d| later(today(), d, day(2026, 12, 31))),
                    peti,
                    memberships,
                    basic_education_completed: basic,
                    versioning: versioning.clone(),
                    retraction: None,
                    retraction_shape: "",
                };
                match retraction {
                    "no" => full,
                    "retraction: false" => Profile {
                        retraction: Some(false),
                        ..full
                    },
                    "nis only" => Profile {
                        nis,
                        versioning,
                        retraction: Some(true),
                        retraction_shape: "nis only",
                        ..Profile::default()
                    },
                    "nis and family_id" => Profile {
                        nis,
                        family: Some(family),
                        versioning,
                        retraction: Some(true),
                        retraction_shape: "nis and family_id",
                        ..Profile::default()
                    },
                    shape => Profile {
                        retraction: Some(true),
                        retraction_shape: shape,
                        ..full
                    },
                }
            },
        )
}

fn yes_no(b: bool, style: u32) -> &'static str {
    match (b, style % 5) {
        (true, 0) => "true",
        (true, 1) => "1",
        (true, 2) => "S",
        (true, 3) => "sim",
        (true, _) => "yes",
        (false, 0) => "false",
        (false, 1) => "0",
        (false, 2) => "N",
        (false, 3) => "não",
        (false, _) => "no",
    }
}

impl Profile {
    fn label(&self, channel: &str) -> String {
        if self.retraction == Some(true) {
            format!("registry {channel} retraction ({})", self.retraction_shape)
        } else {
            format!("registry {channel} profile")
        }
    }

    fn retraction_by_keys(&self) -> Profile {
        Profile {
            nis: self.nis.clone(),
            versioning: Some(
                self.versioning
                    .clone()
                    .unwrap_or(Versioning {
                        version: None,
                        recorded_at: None,
                    })
                    .next(),
            ),
            retraction: Some(true),
            retraction_shape: "nis only",
            ..Profile::default()
        }
    }

    fn json(&self) -> String {
        let mut o = Map::new();
        o.insert("nis".into(), json!(self.nis));
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                o.insert(k.into(), v);
            }
        };
        put("family_id", self.family.as_ref().map(|v| json!(v)));
        put("birth_date", self.birth.map(|d| json!(d.to_string())));
        put("sex", self.sex.map(|v| json!(v)));
        put("municipality", self.municipality.as_ref().map(|v| json!(v)));
        put("inep_school_code", self.inep.as_ref().map(|v| json!(v)));
        put(
            "cns",
            self.cns.as_ref().map(|c| match c {
                CnsField::One(s) => json!(s),
                CnsField::Many(v) => json!(v),
            }),
        );
        put("cpf", self.cpf.as_ref().map(|v| json!(v)));
        put("pregnant", self.pregnant.map(|v| json!(v)));
        put(
            "expected_delivery_date",
            self.expected_delivery.map(|d| json!(d.to_string())),
        );
        put("peti", self.peti.map(|v| json!(v)));
        put("memberships", self.memberships.as_ref().map(|v| json!(v)));
        put(
            "basic_education_completed",
            self.basic_education_completed.map(|v| json!(v)),
        );
        put("retraction", self.retraction.map(|v| json!(v)));
        if let Some(v) = &self.versioning {
            v.put(&mut o);
        }
        obj(o)
    }

    fn csv(&self, style: CsvStyle) -> (String, String) {
        let b = |v: bool| yes_no(v, style.quoted).to_owned();
        let mut cols: Vec<(&'static str, String)> = vec![("nis", self.nis.clone())];
        let mut put = |k: &'static str, v: Option<String>| {
            if let Some(v) = v {
                cols.push((k, v));
            }
        };
        put("family_id", self.family.clone());
        put("birth_date", self.birth.map(|d| d.to_string()));
        put("sex", self.sex.map(str::to_owned));
        put("municipality", self.municipality.clone());
        put("inep_school_code", self.inep.clone());
        put(
            "cns",
            self.cns.as_ref().map(|c| match c {
                CnsField::One(s) => s.clone(),
                CnsField::Many(v) => v.join("|"),
            }),
        );
        put("cpf", self.cpf.clone());
        put("pregnant", self.pregnant.map(b));
        put(
            "expected_delivery_date",
            self.expected_delivery.map(|d| d.to_string()),
        );
        put("peti", self.peti.map(b));
        put(
            "memberships",
            self.memberships.as_ref().map(|m| m.join("|")),
        );
        put(
            "basic_education_completed",
            self.basic_education_completed.map(b),
        );
        put("retraction", self.retraction.map(b));
        if let Some(v) = &self.versioning {
            v.columns(&mut cols);
        }
        style.render(
            cols,
            &[
                "inep_school_code",
                "cpf",
                "pregnant",
                "expected_delivery_date",
                "peti",
                "basic_education_completed",
            ],
        )
    }

    fn step(&self, csv: Option<CsvStyle>) -> Step {
        match csv {
            None => Step {
                label: self.label("json"),
                input: AdapterInput::Assistance {
                    kind: Kind::Person,
                    json: self.json(),
                },
            },
            Some(style) => {
                let (header, line) = self.csv(style);
                Step {
                    label: self.label("csv"),
                    input: AdapterInput::PersonCsv { header, line },
                }
            }
        }
    }
}

fn registry_scenario() -> impl Strategy<Value = Scenario> {
    person_strategy().prop_flat_map(|person| {
        (
            Just(person.clone()),
            profile_strategy(&person),
            option::of(csv_style()),
            any::<bool>(),
        )
            .prop_map(|(person, profile, csv, retract)| {
                let mut steps = vec![profile.step(csv)];
                if retract && profile.retraction != Some(true) {
                    steps.push(profile.retraction_by_keys().step(csv));
                }
                Scenario { person, steps }
            })
    })
}

// ---- assistance: SCFV months -----------------------------------------------------------------

#[derive(Debug, Clone)]
struct ScfvMonth {
    nis: String,
    month: (i32, u8),
    hours: Option<(u32, u32)>,
    reason: Option<String>,
    versioning: Versioning,
    retraction: Option<bool>,
}

impl ScfvMonth {
    fn step(&self) -> Step {
        let mut o = Map::new();
        o.insert("nis".into(), json!(self.nis));
        o.insert(
            "month".into(),
            json!(format!("{}-{:02}", self.month.0, self.month.1)),
        );
        if let Some((offered, attended)) = self.hours {
            o.insert("hours_offered".into(), json!(offered));
            o.insert("hours_attended".into(), json!(attended));
        }
        if let Some(r) = &self.reason {
            o.insert("low_attendance_reason".into(), json!(r));
        }
        self.versioning.put(&mut o);
        if let Some(r) = self.retraction {
            o.insert("retraction".into(), json!(r));
        }
        let label = match (self.retraction == Some(true), self.hours.is_some()) {
            (false, _) => "scfv month",
            (true, false) => "scfv retraction (nis and month only)",
            (true, true) => "scfv retraction (with hours)",
        };
        Step {
            label: label.to_owned(),
            input: AdapterInput::Assistance {
                kind: Kind::ScfvAttendance,
                json: obj(o),
            },
        }
    }
}

fn scfv_scenario() -> impl Strategy<Value = Scenario> {
    person_strategy().prop_flat_map(|person| {
        let nis = person.nis.clone();
        (
            Just(person.clone()),
            any::<bool>(),
            prop_oneof![
                20 => (2024i32..=2025, 1u8..=12),
                1 => Just((2026, 1)),
            ],
            (1u32..=744, 0u32..=100).prop_map(|(o, share)| (o, o * share / 100)),
            option::of(reason_code_strategy()),
            versioning(),
            prop_oneof![3 => Just(None), 1 => Just(Some(false)), 2 => Just(Some(true))],
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                move |(
                    person,
                    punct,
                    month,
                    hours,
                    reason,
                    versioning,
                    retraction,
                    keys_only,
                    retract,
                )| {
                    let record = ScfvMonth {
                        nis: punctuated_nis(&nis, punct),
                        month,
                        hours: (retraction != Some(true) || !keys_only).then_some(hours),
                        reason,
                        versioning,
                        retraction,
                    };
                    let mut steps = vec![record.step()];
                    if retract && retraction != Some(true) {
                        let r = ScfvMonth {
                            nis: record.nis.clone(),
                            month,
                            hours: None,
                            reason: None,
                            versioning: record.versioning.next(),
                            retraction: Some(true),
                        };
                        steps.push(r.step());
                    }
                    Scenario { person, steps }
                },
            )
    })
}

// ---- assistance: family follow-up ------------------------------------------------------------

#[derive(Debug, Clone)]
struct FollowUp {
    family: String,
    id: Option<String>,
    opened: Option<Date>,
    closed: Option<Date>,
    interrupt: Option<bool>,
    requested: Option<Date>,
    municipality: Option<String>,
    versioning: Versioning,
    retraction: Option<bool>,
}

impl FollowUp {
    fn label(&self) -> String {
        let by = match (&self.id, self.opened) {
            (Some(_), Some(_)) if self.retraction == Some(true) => "follow_up_id and opened_on",
            (Some(_), _) => "follow_up_id",
            (None, _) => "opened_on",
        };
        if self.retraction == Some(true) {
            format!("family follow-up retraction by {by}")
        } else {
            format!("family follow-up identified by {by}")
        }
    }

    fn step(&self) -> Step {
        let mut o = Map::new();
        o.insert("family_id".into(), json!(self.family));
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                o.insert(k.into(), v);
            }
        };
        put("follow_up_id", self.id.as_ref().map(|v| json!(v)));
        put("opened_on", self.opened.map(|d| json!(d.to_string())));
        put("closed_on", self.closed.map(|d| json!(d.to_string())));
        put("interrupt_effects", self.interrupt.map(|v| json!(v)));
        put(
            "interruption_requested_on",
            self.requested.map(|d| json!(d.to_string())),
        );
        put("municipality", self.municipality.as_ref().map(|v| json!(v)));
        put("retraction", self.retraction.map(|v| json!(v)));
        self.versioning.put(&mut o);
        Step {
            label: self.label(),
            input: AdapterInput::Assistance {
                kind: Kind::FamilyFollowUp,
                json: obj(o),
            },
        }
    }

    /// Its retraction by the keys: `follow_up_id` when it has one (`by` 0), else or also
    /// `opened_on`.
    fn retraction_by_keys(&self, by: u8) -> FollowUp {
        let (id, opened) = match (&self.id, by % 2) {
            (Some(id), 0) => (Some(id.clone()), None),
            (Some(id), _) => (Some(id.clone()), self.opened),
            (None, _) => (None, self.opened),
        };
        FollowUp {
            family: self.family.clone(),
            id,
            opened,
            closed: None,
            interrupt: None,
            requested: None,
            municipality: None,
            versioning: self.versioning.next(),
            retraction: Some(true),
        }
    }
}

fn follow_up_scenario() -> impl Strategy<Value = Scenario> {
    person_strategy().prop_flat_map(|person| {
        let family = person.family.clone();
        (
            Just(person.clone()),
            option::of("[A-Za-z0-9][A-Za-z0-9._/-]{0,20}"),
            date_between(day(2024, 1, 1), today()),
            option::of(0i64..400),
            (0u8..4, 0i64..400),
            option::of(municipality_strategy()),
            versioning(),
            prop_oneof![3 => Just(None), 1 => Just(Some(false)), 2 => Just(Some(true))],
            any::<bool>(),
            option::of(0u8..2),
        )
            .prop_map(
                move |(
                    person,
                    id,
                    opened,
                    closed_after,
                    (interrupt, requested_after),
                    municipality,
                    versioning,
                    retraction,
                    keys_only,
                    retract,
                )| {
                    let closed = closed_after.map(|k| later(opened, k, today()));
                    let requested = later(opened, requested_after, closed.unwrap_or(today()));
                    let (interrupt, requested) = match interrupt {
                        0 => (None, None),
                        1 => (Some(true), Some(requested)),
                        2 => (None, Some(requested)),
                        _ => (Some(false), None),
                    };
                    let record = if retraction == Some(true) && keys_only && id.is_some() {
                        FollowUp {
                            family: family.clone(),
                            id: id.clone(),
                            opened: None,
                            closed: None,
                            interrupt: None,
                            requested: None,
                            municipality: None,
                            versioning: versioning.clone(),
                            retraction,
                        }
                    } else {
                        FollowUp {
                            family: family.clone(),
                            id,
                            opened: Some(opened),
                            closed,
                            interrupt,
                            requested,
                            municipality,
                            versioning,
                            retraction,
                        }
                    };
                    let mut steps = vec![record.step()];
                    if let (Some(by), false) = (retract, retraction == Some(true)) {
                        steps.push(record.retraction_by_keys(by).step());
                    }
                    Scenario { person, steps }
                },
            )
    })
}

// ---- assistance: appeals ---------------------------------------------------------------------

#[derive(Debug, Clone)]
struct AppealRecord {
    family: String,
    id: Option<String>,
    period: Option<String>,
    nis: Option<String>,
    conditionality: Option<String>,
    filed: Option<Date>,
    decision: Option<&'static str>,
    decided: Option<Date>,
    versioning: Versioning,
    retraction: Option<bool>,
}

impl AppealRecord {
    fn label(&self) -> String {
        if self.retraction == Some(true) {
            let by = match (&self.id, &self.period) {
                (Some(_), Some(_)) => "appeal_id and period",
                (Some(_), None) => "appeal_id",
                (None, _) => "period",
            };
            return format!("appeal retraction by {by}");
        }
        let by = if self.id.is_some() {
            "appeal_id"
        } else {
            "period"
        };
        let decided = match self.decision {
            None => "no decision",
            Some(d) if d.eq_ignore_ascii_case("PENDING") => "pending",
            Some(_) => "decided",
        };
        format!("appeal identified by {by}, {decided}")
    }

    fn step(&self) -> Step {
        let mut o = Map::new();
        o.insert("family_id".into(), json!(self.family));
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                o.insert(k.into(), v);
            }
        };
        put("appeal_id", self.id.as_ref().map(|v| json!(v)));
        put("period", self.period.as_ref().map(|v| json!(v)));
        put("nis", self.nis.as_ref().map(|v| json!(v)));
        put(
            "conditionality",
            self.conditionality.as_ref().map(|v| json!(v)),
        );
        put("filed_on", self.filed.map(|d| json!(d.to_string())));
        put("decision", self.decision.map(|v| json!(v)));
        put("decided_on", self.decided.map(|d| json!(d.to_string())));
        put("retraction", self.retraction.map(|v| json!(v)));
        self.versioning.put(&mut o);
        Step {
            label: self.label(),
            input: AdapterInput::Assistance {
                kind: Kind::Appeal,
                json: obj(o),
            },
        }
    }

    /// Its retraction by the keys: `appeal_id` when it has one (`by` 0), else or also the
    /// period, member and conditionality.
    fn retraction_by_keys(&self, by: u8) -> AppealRecord {
        let by_period = self.id.is_none() || by % 2 == 1;
        AppealRecord {
            family: self.family.clone(),
            id: self.id.clone(),
            period: self.period.clone().filter(|_| by_period),
            nis: self.nis.clone().filter(|_| by_period),
            conditionality: self.conditionality.clone().filter(|_| by_period),
            filed: None,
            decision: None,
            decided: None,
            versioning: self.versioning.next(),
            retraction: Some(true),
        }
    }
}

fn appeal_scenario() -> impl Strategy<Value = Scenario> {
    person_strategy().prop_flat_map(|person| {
        let (family, nis) = (person.family.clone(), person.nis.clone());
        (
            Just(person.clone()),
            option::of("[A-Za-z0-9][A-Za-z0-9._/-]{0,20}"),
            // Bimesters (education, assistance) and semesters (health) that have started.
            prop_oneof![
                (2024i32..=2025, 1u8..=5).prop_map(|(y, n)| (y, false, n)),
                (2024i32..=2025, 1u8..=2).prop_map(|(y, n)| (y, true, n)),
            ],
            (any::<bool>(), any::<bool>(), 0u8..4),
            (0i64..500, 0i64..200),
            prop_oneof![
                Just(None),
                Just(Some("PENDING")),
                Just(Some("pending")),
                Just(Some("ACCEPTED")),
                Just(Some("accepted")),
                Just(Some("REJECTED")),
                Just(Some("Rejected")),
            ],
            versioning(),
            prop_oneof![3 => Just(None), 1 => Just(Some(false)), 2 => Just(Some(true))],
            any::<bool>(),
            option::of(0u8..2),
        )
            .prop_map(
                move |(
                    person,
                    id,
                    (year, semester, number),
                    (with_nis, punct, cond),
                    (filed_after, decided_after),
                    decision,
                    versioning,
                    retraction,
                    keys_only,
                    retract,
                )| {
                    let period = if semester {
                        format!("{year}-S{number}")
                    } else {
                        format!("{year}-B{number}")
                    };
                    let conditionality = match (cond, semester) {
                        (0, _) => None,
                        (1, true) => Some("health"),
                        (2, true) => Some("Health"),
                        (1, false) => Some("education"),
                        (2, false) => Some("ASSISTANCE"),
                        (_, false) => Some("assistance"),
                        (_, true) => Some("health"),
                    };
                    let filed = later(
                        period_first_day(year, semester, number),
                        filed_after,
                        today(),
                    );
                    let decided = decision
                        .filter(|d| !d.eq_ignore_ascii_case("PENDING"))
                        .map(|_| later(filed, decided_after, today()));
                    let record = if retraction == Some(true) && keys_only && id.is_some() {
                        AppealRecord {
                            family: family.clone(),
                            id: id.clone(),
                            period: None,
                            nis: None,
                            conditionality: None,
                            filed: None,
                            decision: None,
                            decided: None,
                            versioning: versioning.clone(),
                            retraction,
                        }
                    } else {
                        AppealRecord {
                            family: family.clone(),
                            id,
                            period: Some(period),
                            nis: with_nis.then(|| punctuated_nis(&nis, punct)),
                            conditionality: conditionality.map(str::to_owned),
                            filed: Some(filed),
                            decision,
                            decided,
                            versioning,
                            retraction,
                        }
                    };
                    let mut steps = vec![record.step()];
                    if let (Some(by), false) = (retract, retraction == Some(true)) {
                        steps.push(record.retraction_by_keys(by).step());
                    }
                    Scenario { person, steps }
                },
            )
    })
}

// ---- the contract, adapter by adapter ---------------------------------------------------------

#[test]
fn every_attendance_record_the_education_adapter_accepts_applies() {
    check("education adapter (JSON and CSV)", education_scenario());
}

#[test]
fn every_simple_json_record_the_health_adapter_accepts_applies() {
    check("health adapter (simple JSON)", health_json_scenario());
}

#[test]
fn every_fhir_resource_the_health_adapter_accepts_applies() {
    check("health adapter (FHIR R4 bundles)", fhir_scenario());
}

#[test]
fn every_registry_profile_the_assistance_adapter_accepts_applies() {
    check(
        "assistance adapter: person profiles (JSON and CSV)",
        registry_scenario(),
    );
}

#[test]
fn every_scfv_month_the_assistance_adapter_accepts_applies() {
    check("assistance adapter: SCFV attendance", scfv_scenario());
}

#[test]
fn every_family_follow_up_the_assistance_adapter_accepts_applies() {
    check("assistance adapter: family follow-up", follow_up_scenario());
}

#[test]
fn every_appeal_the_assistance_adapter_accepts_applies() {
    check("assistance adapter: appeals", appeal_scenario());
}

/// The identifier generators produce what the domain accepts (else every case is rejected for
/// a reason that has nothing to do with the contract).
#[test]
fn generated_identifiers_pass_their_check_digits() {
    let mut runner = TestRunner::deterministic();
    for _ in 0..200 {
        let p = person_strategy().new_tree(&mut runner).unwrap().current();
        Nis::parse(&p.nis).unwrap();
        Cns::parse(&p.cns).unwrap();
        Cpf::parse(&p.cpf).unwrap();
        IbgeMunicipality::parse(&p.municipality).unwrap();
        Nis::parse(&punctuated_nis(&p.nis, true)).unwrap();
        Cpf::parse(&punctuated_cpf(&p.cpf, true)).unwrap();
        Cns::parse(&spaced_cns(&p.cns, true)).unwrap();
    }
}
