//! Colombia's Estrategia Unidos: synthetic households accompanied by *cogestores sociales*, and
//! the evidence their visits record, in the assistance adapter's input layouts
//! (`docs/integration/assistance.md`, "Households"): household profiles for
//! `POST /v1/household-profiles` and visit records for `POST /v1/household-evidence`.
//!
//! Every household is a pure function of (seed, household index), like the Bolsa Família
//! families of [`crate::population`]; dates are relative to an evaluation day the caller gives
//! (the generator never reads the clock). Each household has:
//! - an id, a DIVIPOLA municipality among a handful of real codes ([`MUNICIPALITIES`]), a zone,
//!   a Sisbén IV group (mostly A and B), the programme marker `UNIDOS`;
//! - members with birth dates, sex and the Colombian documents a person of their age holds
//!   (docs/sources.md#registraduria-nuip, #registraduria-tarjeta-identidad): a registro civil
//!   with the NUIP from birth, the tarjeta de identidad from 7 and the cédula de ciudadanía from
//!   18 with the same number (adults born before the NUIP: an 11-digit tarjeta and a cédula the
//!   registry links, or a cédula only); migrants a PPT or a cédula de extranjería (#ppt,
//!   #cedula-extranjeria), keyed by the registry's member id. A document whose date would fall
//!   after the evaluation day is not held yet — a child of 7 still waiting for the tarjeta holds
//!   only the registro civil (achievement L01 not reached);
//! - the extreme poverty line (`figures.extreme_poverty_line`) and the 15 IPM deprivations;
//! - cogestor visits (source `visit` of `rules/unidos-2021.toml`): a characterisation and
//!   follow-ups, each a household record and one record per member, with only the items the
//!   rule set's `visit` source declares (and achievements' states recorded in the field).
//!
//! Whether a household may leave is not drawn: each household is *ready* (every prerequisite
//! achievement reached, income at or above the line, few IPM deprivations) or *working* (facts
//! drawn one by one, so usually something is not reached), and its evidence is *complete* (the
//! last visit in the evidence window records everything) or *incomplete* (the characterisation
//! is older than the window and the follow-up in it recorded the household's items only), and
//! the visits record those facts. Evaluating them with the rule set then gives households that
//! may leave, households that may not, and households whose exit is unknown (the tests check the
//! mix). Every rate below is an ASSUMPTION: docs/sources.md gives none of them for Unidos.
use std::path::Path;

use ponte_domain::achievements::Zone;
use ponte_domain::period::Date;

use crate::population::{Sex, cumulative};
use crate::rng::Rng;
use crate::{FileSummary, SimError, Sink, Summary, bad_date, salt, write_manifest};

/// Rates of the Unidos population. None is published in the sources read
/// (docs/sources.md#unidos-colombia); each is an ASSUMPTION.
pub mod rates {
    /// Households whose every prerequisite achievement, income and IPM are met. ASSUMPTION.
    pub const READY: f64 = 0.35;
    /// Households whose last visit in the evidence window recorded every item. ASSUMPTION.
    pub const EVIDENCE_COMPLETE: f64 = 0.85;
    /// Profiles carrying the IPM deprivations (the others leave the IPM unknown). ASSUMPTION.
    pub const IPM_SUPPLIED: f64 = 0.97;
    /// Households of Venezuelan migrants (PPT or cédula de extranjería). ASSUMPTION.
    pub const MIGRANT_HOUSEHOLD: f64 = 0.08;
    /// Migrants of 7 and over holding a cédula de extranjería rather than a PPT. ASSUMPTION.
    pub const CEDULA_EXTRANJERIA: f64 = 0.15;
    /// Children of migrant households under this age were born in Colombia (registro civil).
    /// ASSUMPTION.
    pub const MIGRANT_BORN_HERE_UNDER: u32 = 5;
    /// Sisbén IV group of the household: A, B, C. ASSUMPTION ("mostly A and B": Unidos
    /// accompanies households in extreme poverty, docs/sources.md#dps-unidos-piloto-2019).
    pub const SISBEN_GROUP: [f64; 3] = [0.70, 0.25, 0.05];
    /// Responsible adult is a woman. ASSUMPTION.
    pub const HEAD_FEMALE: f64 = 0.60;
    /// Follow-up visits after the characterisation (0, 1, 2), complete households. ASSUMPTION.
    pub const FOLLOW_UPS: [f64; 3] = [0.35, 0.40, 0.25];
    /// A follow-up records the state of a housing achievement in the field. ASSUMPTION.
    pub const RECORDED_STATE: f64 = 0.5;
    /// A ready household's characterisation, before improvements: earth floor, no improved
    /// water. ASSUMPTION.
    pub const IMPROVED_FLOOR: f64 = 0.3;
    pub const IMPROVED_WATER: f64 = 0.2;

    /// Working households (facts drawn one by one). ASSUMPTION, each.
    pub const NOT_AFFILIATED: f64 = 0.06;
    pub const EARLY_CARE: f64 = 0.60;
    pub const ATTENDS_SCHOOL: f64 = 0.88;
    pub const CHILD_WORKING: f64 = 0.05;
    pub const CHILD_LOOKING_FOR_WORK: f64 = 0.02;
    pub const READS: f64 = 0.88;
    pub const ADULT_PAID_WORK: f64 = 0.50;
    pub const UNABLE_TO_WORK: f64 = 0.04;
    /// Urban, rural.
    pub const WATER: [f64; 2] = [0.85, 0.55];
    pub const SANITATION: [f64; 2] = [0.80, 0.50];
    pub const FLOOR_NOT_EARTH: [f64; 2] = [0.90, 0.60];
    pub const WALLS_ADEQUATE: [f64; 2] = [0.85, 0.70];
    /// Per-capita income below the extreme poverty line. ASSUMPTION.
    pub const INCOME_BELOW_LINE: f64 = 0.60;

    /// Both kinds of household. ASSUMPTION, each.
    pub const DISABILITY: f64 = 0.06;
    pub const ASSISTIVE_SUPPORT: f64 = 0.5;
    pub const NUTRITIONAL_RISK: [f64; 2] = [0.02, 0.08];
    pub const REPRODUCTIVE_HEALTH: f64 = 0.7;
    pub const FINANCIAL_EDUCATION: f64 = 0.3;
    pub const DIGITAL_TOOLS: f64 = 0.6;
    pub const TENURE_SECURE: f64 = 0.5;
    /// IPM indicators no achievement mirrors, deprived: ready, working households.
    pub const LOW_EDUCATIONAL_ATTAINMENT: [f64; 2] = [0.15, 0.5];
    pub const SCHOOL_LAG: [f64; 2] = [0.10, 0.4];
    pub const INFORMAL_WORK: [f64; 2] = [0.50, 0.8];
    pub const HEALTH_ACCESS_BARRIERS: [f64; 2] = [0.10, 0.3];
}

/// The extreme poverty line, 2024: 227,220 pesos per person per month nationally
/// (docs/sources.md#dane-pobreza-monetaria). The lines per domain (higher in municipal heads,
/// lower in rural areas) were not read, so every household carries the national one.
pub const EXTREME_POVERTY_LINE: i64 = 227_220;

/// P(household size = 1..=8). ASSUMPTION (mean 3.59; Colombia's households average about 3,
/// poor ones are larger).
pub const HOUSEHOLD_SIZE: [f64; 8] = [0.10, 0.18, 0.24, 0.21, 0.13, 0.08, 0.04, 0.02];
/// Members other than the responsible adult by age: 0–6, 7–17, 18–59, 60–85. ASSUMPTION.
pub const OTHER_MEMBER_BANDS: [f64; 4] = [0.25, 0.35, 0.30, 0.10];
/// Identifier slots per household (at most 8 members are drawn).
pub const MAX_MEMBERS: u64 = 16;
/// Most households: identifier slots stay below 80 M, so an 8-digit cédula (10 M + slot)
/// keeps 8 digits.
pub const MAX_HOUSEHOLDS: u64 = 5_000_000;

/// Largest file written, under the assistance adapter's default body limit of 16 MiB
/// (`assistance_adapter.max_body_bytes`): a profile takes about 1.2 KB, so the default
/// `json_chunk_records` of `ponte sim` (20 000) would not fit.
pub const MAX_FILE_BYTES: u64 = 15 << 20;

/// People per household, the mean of [`HOUSEHOLD_SIZE`].
pub fn people_per_household() -> f64 {
    HOUSEHOLD_SIZE
        .iter()
        .enumerate()
        .map(|(i, p)| (i + 1) as f64 * p)
        .sum()
}

/// A municipality: DIVIPOLA code, name, weight, share of households in rural areas.
#[derive(Debug, Clone, Copy)]
pub struct Municipality {
    pub code: &'static str,
    pub name: &'static str,
    /// Relative number of accompanied households. ASSUMPTION (no per-municipality figure was
    /// read): rough, tilted to the poorer Caribbean and Pacific municipalities.
    pub weight: f64,
    /// Share of households in centros poblados and rural disperso. ASSUMPTION.
    pub rural: f64,
}

const fn m(code: &'static str, name: &'static str, weight: f64, rural: f64) -> Municipality {
    Municipality {
        code,
        name,
        weight,
        rural,
    }
}

/// Real DIVIPOLA municipality codes (docs/sources.md#divipola; each department code is one of
/// DANE's 33, checked by the tests with `ponte_domain::colombia::Divipola`).
pub const MUNICIPALITIES: &[Municipality] = &[
    m("11001", "Bogotá, D.C.", 900.0, 0.01),
    m("05001", "Medellín", 450.0, 0.02),
    m("76001", "Cali", 500.0, 0.02),
    m("08001", "Barranquilla", 400.0, 0.01),
    m("13001", "Cartagena de Indias", 380.0, 0.05),
    m("54001", "Cúcuta", 350.0, 0.03),
    m("47001", "Santa Marta", 250.0, 0.07),
    m("23001", "Montería", 260.0, 0.22),
    m("20001", "Valledupar", 230.0, 0.13),
    m("70001", "Sincelejo", 170.0, 0.06),
    m("52001", "Pasto", 150.0, 0.17),
    m("19001", "Popayán", 140.0, 0.10),
    m("44001", "Riohacha", 180.0, 0.22),
    m("44430", "Maicao", 170.0, 0.35),
    m("44847", "Uribia", 200.0, 0.93),
    m("27001", "Quibdó", 160.0, 0.25),
    m("76109", "Buenaventura", 220.0, 0.10),
    m("52835", "San Andrés de Tumaco", 190.0, 0.45),
];

/// What the simulator is asked for.
#[derive(Debug, Clone)]
pub struct UnidosConfig {
    pub seed: u64,
    /// About this many people (households = people / [`people_per_household`]).
    pub people: u64,
    /// The day the households would be evaluated: every date lies on or before it, visits in
    /// the 12 months before it (the rule set's evidence window) unless the evidence is
    /// incomplete. Must not be in the future when the files are sent.
    pub evaluated_on: Date,
    /// Share of records (0–1) written malformed (a 4-digit municipality code, a date that does
    /// not exist).
    pub malformed_share: f64,
    /// Records per JSON file.
    pub json_chunk_records: usize,
}

impl UnidosConfig {
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
        if households_for(self.people) > MAX_HOUSEHOLDS {
            return Err(SimError::Config(format!(
                "at most {MAX_HOUSEHOLDS} Unidos households (identifier space)"
            )));
        }
        if self.json_chunk_records == 0 {
            return Err(SimError::Config(
                "json_chunk_records must be at least 1".to_owned(),
            ));
        }
        if self.evaluated_on.year() < 1950 {
            return Err(SimError::Config(format!(
                "evaluation day {} is before 1950",
                self.evaluated_on
            )));
        }
        Ok(())
    }
}

fn households_for(people: u64) -> u64 {
    ((people as f64 / people_per_household()).round() as u64).max(1)
}

/// One identity document as the profile lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc {
    /// `RC`, `TI`, `CC`, `CE`, `PT`.
    pub kind: &'static str,
    pub number: String,
    pub from: Date,
}

/// What a member's visit records say (by age on the evaluation day; `None`: not asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberFacts {
    pub health_affiliation_regime: &'static str,
    pub early_childhood_care: Option<bool>,
    pub attends_school: Option<&'static str>,
    pub main_activity_last_week: Option<&'static str>,
    pub reads_and_writes: Option<bool>,
    pub occupation: Option<&'static str>,
    pub reproductive_health_access: Option<bool>,
    pub financial_education_taken: Option<bool>,
    pub has_disability: bool,
    pub assistive_support_available: Option<bool>,
    pub at_nutritional_risk: Option<bool>,
    pub completed_secondary: Option<bool>,
    pub higher_education: Option<&'static str>,
}

/// One member of a household.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnidosMember {
    /// The registry's id of the member.
    pub member_id: String,
    pub birth_date: Date,
    pub sex: Sex,
    pub documents: Vec<Doc>,
    /// The person key the adapter derives (`nuip:…` or `registry:…`), which evidence names.
    pub key: String,
    pub facts: MemberFacts,
}

impl UnidosMember {
    /// Age in completed years on `on`.
    pub fn age_on(&self, on: Date) -> u32 {
        self.birth_date.age_on(on).unwrap_or(0)
    }
}

/// What the household's visit records say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeFacts {
    /// Aqueduct (urban) or improved water source (rural).
    pub water: bool,
    /// Sewer (urban) or adequate sanitation (rural).
    pub sanitation: bool,
    pub floor_not_earth: bool,
    pub walls_adequate: bool,
    /// Persons per room used for sleeping, in thousandths.
    pub persons_per_sleeping_room: i64,
    /// Monthly per-capita income, pesos.
    pub per_capita_income: i64,
    pub food_insecurity_yes_answers: u32,
    pub uses_digital_tools: bool,
    pub tenure_secure: bool,
}

/// One visit: its date, who recorded it, and whether it recorded the members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visit {
    pub number: u32,
    pub on: Date,
    pub members: bool,
    /// The household's facts on that day.
    pub home: HomeFacts,
    /// Achievements' states recorded in the field (`L21` → `GESTIONADO`).
    pub recorded_states: Vec<(&'static str, &'static str)>,
}

/// One Unidos household.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Household {
    pub index: u64,
    pub id: String,
    /// Index into [`MUNICIPALITIES`].
    pub municipality: usize,
    pub zone: Zone,
    pub sisben_group: String,
    pub migrant: bool,
    /// Every prerequisite, income and IPM drawn as met.
    pub ready: bool,
    /// The last visit in the window recorded every item.
    pub complete: bool,
    pub members: Vec<UnidosMember>,
    pub cogestor: String,
    /// IPM indicators by id (`None`: the profile carries no IPM).
    pub ipm_deprivations: Option<Vec<(&'static str, bool)>>,
    /// Visits, oldest first.
    pub visits: Vec<Visit>,
}

/// The IPM-Colombia indicators, in `rules/unidos-2021.toml`'s order (docs/sources.md#dane-ipm).
pub const IPM_INDICATORS: [&str; 15] = [
    "bajo_logro_educativo",
    "analfabetismo",
    "inasistencia_escolar",
    "rezago_escolar",
    "barreras_primera_infancia",
    "trabajo_infantil",
    "desempleo_larga_duracion",
    "trabajo_informal",
    "sin_aseguramiento_salud",
    "barreras_acceso_salud",
    "sin_acceso_fuente_agua_mejorada",
    "inadecuada_eliminacion_excretas",
    "material_inadecuado_pisos",
    "material_inadecuado_paredes",
    "hacinamiento_critico",
];

const PAID: [&str; 5] = [
    "employee",
    "day_labourer",
    "independent",
    "employer",
    "other_paid",
];

impl Household {
    pub fn municipality_code(&self) -> &'static str {
        MUNICIPALITIES[self.municipality].code
    }

    /// The household's crowding achievement (L23) as the rule set reads it: below 3 persons
    /// per sleeping room in urban areas, at most 3 in rural ones.
    pub fn crowded(&self, home: &HomeFacts) -> bool {
        match self.zone {
            Zone::Urban => home.persons_per_sleeping_room >= 3000,
            Zone::Rural => home.persons_per_sleeping_room > 3000,
        }
    }

    /// The profile as `POST /v1/household-profiles` takes it (one JSON object).
    pub fn profile_json(&self) -> String {
        let zone = match self.zone {
            Zone::Urban => "urban",
            Zone::Rural => "rural",
        };
        let mut s = format!(
            "{{\"household_id\":\"{}\",\"municipality\":\"{}\",\"zone\":\"{zone}\",\"sisben_group\":\"{}\",\"programmes\":[\"UNIDOS\"],\"members\":[",
            self.id,
            self.municipality_code(),
            self.sisben_group
        );
        for (i, m) in self.members.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let sex = match m.sex {
                Sex::F => "F",
                Sex::M => "M",
            };
            s.push_str(&format!(
                "{{\"member_id\":\"{}\",\"birth_date\":\"{}\",\"sex\":\"{sex}\",\"documents\":[",
                m.member_id, m.birth_date
            ));
            for (j, d) in m.documents.iter().enumerate() {
                if j > 0 {
                    s.push(',');
                }
                s.push_str(&format!(
                    "{{\"type\":\"{}\",\"number\":\"{}\",\"from\":\"{}\"}}",
                    d.kind, d.number, d.from
                ));
            }
            s.push_str("]}");
        }
        s.push_str(&format!(
            "],\"figures\":{{\"extreme_poverty_line\":{EXTREME_POVERTY_LINE}}}"
        ));
        if let Some(ipm) = &self.ipm_deprivations {
            s.push_str(",\"ipm_deprivations\":{");
            for (i, (id, deprived)) in ipm.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&format!("\"{id}\":{deprived}"));
            }
            s.push('}');
        }
        s.push_str(",\"version\":1}");
        s
    }

    /// The visits' evidence records as `POST /v1/household-evidence` takes them: per visit, the
    /// household's record, then one per member when the visit recorded the members.
    pub fn evidence_json(&self) -> Vec<String> {
        let mut out = Vec::new();
        for v in &self.visits {
            let mut items: Vec<(String, Item)> = Vec::new();
            let h = &v.home;
            match self.zone {
                Zone::Urban => {
                    items.push(("aqueduct_connection".into(), Item::Bool(h.water)));
                    items.push(("sewer_connection".into(), Item::Bool(h.sanitation)));
                    items.push(("walls_adequate_urban".into(), Item::Bool(h.walls_adequate)));
                }
                Zone::Rural => {
                    items.push(("water_source_improved".into(), Item::Bool(h.water)));
                    items.push(("sanitation_adequate".into(), Item::Bool(h.sanitation)));
                    items.push(("walls_adequate_rural".into(), Item::Bool(h.walls_adequate)));
                }
            }
            let floor = if h.floor_not_earth {
                "other_than_earth"
            } else {
                "earth"
            };
            items.push(("floor_material".into(), Item::Code(floor)));
            items.push((
                "persons_per_sleeping_room".into(),
                Item::Thousandths(h.persons_per_sleeping_room),
            ));
            items.push((
                "per_capita_income".into(),
                Item::Thousandths(h.per_capita_income * 1000),
            ));
            items.push((
                "food_insecurity_yes_answers".into(),
                Item::Thousandths(i64::from(h.food_insecurity_yes_answers) * 1000),
            ));
            items.push((
                "uses_digital_tools".into(),
                Item::Bool(h.uses_digital_tools),
            ));
            items.push(("tenure_secure".into(), Item::Bool(h.tenure_secure)));
            for (id, state) in &v.recorded_states {
                items.push((format!("achievement:{id}"), Item::Code(state)));
            }
            out.push(self.evidence_record(v, "H", "household", &items));
            if !v.members {
                continue;
            }
            for (i, m) in self.members.iter().enumerate() {
                let f = &m.facts;
                let mut items: Vec<(String, Item)> = vec![(
                    "health_affiliation_regime".into(),
                    Item::Code(f.health_affiliation_regime),
                )];
                let mut flag = |name: &str, v: Option<bool>| {
                    if let Some(b) = v {
                        items.push((name.into(), Item::Bool(b)));
                    }
                };
                flag("has_disability", Some(f.has_disability));
                flag("assistive_support_available", f.assistive_support_available);
                flag("at_nutritional_risk", f.at_nutritional_risk);
                flag("completed_secondary", f.completed_secondary);
                flag("reads_and_writes", f.reads_and_writes);
                flag("reproductive_health_access", f.reproductive_health_access);
                flag("financial_education_taken", f.financial_education_taken);
                let mut code = |name: &str, v: Option<&'static str>| {
                    if let Some(c) = v {
                        items.push((name.into(), Item::Code(c)));
                    }
                };
                code(
                    "early_childhood_care",
                    f.early_childhood_care
                        .map(|a| if a { "attends" } else { "does_not_attend" }),
                );
                code("attends_school", f.attends_school);
                code("main_activity_last_week", f.main_activity_last_week);
                code("occupation", f.occupation);
                code("higher_education", f.higher_education);
                out.push(self.evidence_record(v, &format!("M{}", i + 1), &m.key, &items));
            }
        }
        out
    }

    fn evidence_record(
        &self,
        v: &Visit,
        part: &str,
        subject: &str,
        items: &[(String, Item)],
    ) -> String {
        let mut s = format!(
            "{{\"household_id\":\"{}\",\"evidence_id\":\"V{}-{part}\",\"source\":\"visit\",\"subject\":\"{subject}\",\"recorded_on\":\"{}\",\"recorded_by\":\"{}\",\"items\":{{",
            self.id, v.number, v.on, self.cogestor
        );
        for (i, (name, value)) in items.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&format!("\"{name}\":{value}"));
        }
        s.push_str("},\"version\":1}");
        s
    }
}

/// An item's value as JSON.
enum Item {
    Bool(bool),
    Code(&'static str),
    /// A number in thousandths, written with at most three decimals.
    Thousandths(i64),
}

impl std::fmt::Display for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Item::Bool(b) => write!(f, "{b}"),
            Item::Code(c) => write!(f, "\"{c}\""),
            Item::Thousandths(t) => {
                let (int, frac) = (t / 1000, (t % 1000).abs());
                if frac == 0 {
                    write!(f, "{int}")
                } else {
                    let frac = format!("{frac:03}");
                    write!(f, "{int}.{}", frac.trim_end_matches('0'))
                }
            }
        }
    }
}

/// The date `years` years after `birth` (1 March for 29 February in a common year).
fn anniversary(birth: Date, years: u32) -> Date {
    let y = birth.year() + years as i32;
    Date::new(y, birth.month(), birth.day())
        .or_else(|_| Date::new(y, 3, 1))
        .unwrap_or(Date::MAX)
}

fn later(rng: &mut Rng, base: Date, lo: u64, hi: u64) -> Date {
    base.add_days(rng.range(lo, hi) as i64).unwrap_or(Date::MAX)
}

/// The NUIP of identifier slot `slot`: 10 digits.
fn nuip(slot: u64) -> String {
    (1_000_000_000 + slot).to_string()
}

/// The Unidos population: how many households, from which seed, dated relative to the
/// evaluation day.
#[derive(Debug, Clone)]
pub struct Households {
    seed: u64,
    households: u64,
    evaluated_on: Date,
    weights: Vec<f64>,
}

impl Households {
    /// About `people` people, dated relative to `evaluated_on`.
    pub fn new(seed: u64, people: u64, evaluated_on: Date) -> Self {
        let weights: Vec<f64> = MUNICIPALITIES.iter().map(|m| m.weight).collect();
        Households {
            seed,
            households: households_for(people),
            evaluated_on,
            weights: cumulative(&weights),
        }
    }

    pub fn households(&self) -> u64 {
        self.households
    }

    pub fn evaluated_on(&self) -> Date {
        self.evaluated_on
    }

    /// The household with index `h` (0-based), always the same for the same seed and day.
    pub fn household(&self, h: u64) -> Household {
        let eval = self.evaluated_on;
        let mut rng = Rng::new(self.seed ^ salt("unidos"), h);
        let municipality = rng.pick(&self.weights);
        let place = &MUNICIPALITIES[municipality];
        let zone = if rng.chance(place.rural) {
            Zone::Rural
        } else {
            Zone::Urban
        };
        let sisben_group = match rng.pick(&cumulative(&rates::SISBEN_GROUP)) {
            0 => format!("A{}", rng.range(1, 5)),
            1 => format!("B{}", rng.range(1, 7)),
            _ => format!("C{}", rng.range(1, 18)),
        };
        let migrant = rng.chance(rates::MIGRANT_HOUSEHOLD);
        let ready = rng.chance(rates::READY);
        let complete = rng.chance(rates::EVIDENCE_COMPLETE);
        let ipm_supplied = rng.chance(rates::IPM_SUPPLIED);
        let size = rng.pick(&cumulative(&HOUSEHOLD_SIZE)) + 1;
        let bands = cumulative(&OTHER_MEMBER_BANDS);
        let id = format!("HH-{}-{h:07}", place.code);
        let cogestor = format!("cogestor:CG-{}-{:03}", place.code, rng.range(1, 120));

        let mut members = Vec::with_capacity(size);
        for m in 0..size as u64 {
            let (age, sex) = if m == 0 {
                let sex = if rng.chance(rates::HEAD_FEMALE) {
                    Sex::F
                } else {
                    Sex::M
                };
                (rng.range(18, 75), sex)
            } else {
                let age = match rng.pick(&bands) {
                    0 => rng.range(0, 6),
                    1 => rng.range(7, 17),
                    2 => rng.range(18, 59),
                    _ => rng.range(60, 85),
                };
                (age, if rng.chance(0.5) { Sex::F } else { Sex::M })
            };
            let slot = h * MAX_MEMBERS + m;
            let days_back = (age as f64 * 365.2425) as i64 + rng.range(0, 364) as i64;
            let birth_date = eval.add_days(-days_back).unwrap_or(eval);
            let age = birth_date.age_on(eval).unwrap_or(0);
            let member_id = format!("{id}-{}", m + 1);
            let documents = documents(&mut rng, slot, birth_date, age, migrant, eval);
            let key = documents
                .iter()
                .find(|d| matches!(d.kind, "RC" | "TI" | "CC"))
                .map(|d| format!("nuip:{}", d.number))
                .unwrap_or_else(|| format!("registry:{member_id}"));
            let facts = member_facts(&mut rng, age, ready);
            members.push(UnidosMember {
                member_id,
                birth_date,
                sex,
                documents,
                key,
                facts,
            });
        }
        // A ready household has someone of working age in paid work, if it has anyone of
        // working age.
        if ready
            && !members
                .iter()
                .any(|m| m.facts.occupation.is_some_and(|o| PAID.contains(&o)))
            && let Some(m) = members.iter_mut().find(|m| m.facts.occupation.is_some())
        {
            m.facts.occupation = Some(PAID[rng.range(0, 4) as usize]);
        }

        let home = home_facts(&mut rng, zone, ready, members.len());
        let mut household = Household {
            index: h,
            id,
            municipality,
            zone,
            sisben_group,
            migrant,
            ready,
            complete,
            members,
            cogestor,
            ipm_deprivations: None,
            visits: Vec::new(),
        };
        if ipm_supplied {
            household.ipm_deprivations = Some(ipm(&mut rng, &household, &home));
        }
        household.visits = visits(&mut rng, &household, home, eval);
        household
    }
}

/// The documents a member holds on `eval` (a document dated after it is not held yet).
fn documents(
    rng: &mut Rng,
    slot: u64,
    birth: Date,
    age: u32,
    migrant: bool,
    eval: Date,
) -> Vec<Doc> {
    let mut docs = Vec::new();
    let mut push = |kind, number: String, from: Date| {
        if from <= eval {
            docs.push(Doc { kind, number, from });
        }
    };
    if migrant && age >= rates::MIGRANT_BORN_HERE_UNDER {
        if age >= 7 && rng.chance(rates::CEDULA_EXTRANJERIA) {
            // From 7, with a visa of more than three months (docs/sources.md#cedula-extranjeria);
            // issued since 2018 to this household. ASSUMPTION.
            let base = anniversary(birth, 7).max(Date::new(2018, 1, 1).unwrap_or(Date::MIN));
            push(
                "CE",
                (100_000 + slot).to_string(),
                later(rng, base, 0, 1500),
            );
        } else {
            // PPTs issued from 2022 (Decreto 216 de 2021, docs/sources.md#ppt); the day is an
            // ASSUMPTION.
            let base = birth
                .add_days(30)
                .unwrap_or(birth)
                .max(Date::new(2022, 1, 1).unwrap_or(Date::MIN));
            push(
                "PT",
                (2_000_000 + slot).to_string(),
                later(rng, base, 0, 700),
            );
        }
        return docs;
    }
    if birth.year() >= 2000 {
        // The NUIP (in use since March 2000; from January here, ASSUMPTION) from the registro
        // civil on (docs/sources.md#registraduria-nuip); delays
        // after birth and the birthdays are ASSUMPTIONS.
        let n = nuip(slot);
        push("RC", n.clone(), later(rng, birth, 1, 90));
        if age >= 7 {
            push("TI", n.clone(), later(rng, anniversary(birth, 7), 0, 540));
        }
        if age >= 18 {
            push("CC", n, later(rng, anniversary(birth, 18), 0, 400));
        }
    } else if birth.year() >= 1990 {
        // A tarjeta issued before the NUIP (11 digits), then a cédula with its own number that
        // the registry links to the member (decision U12).
        let ti = format!(
            "{:02}{:02}{:02}{:05}",
            birth.year() % 100,
            birth.month(),
            birth.day(),
            slot % 100_000
        );
        push("TI", ti, later(rng, anniversary(birth, 7), 0, 540));
        if age >= 18 {
            push("CC", nuip(slot), later(rng, anniversary(birth, 18), 0, 400));
        }
    } else {
        // A cédula only: 8 digits for the older ones (numbered in sequence since 1952).
        let number = if birth.year() < 1985 {
            (10_000_000 + slot).to_string()
        } else {
            nuip(slot)
        };
        push("CC", number, later(rng, anniversary(birth, 18), 0, 400));
    }
    docs
}

fn pick<T: Copy>(rng: &mut Rng, xs: &[T]) -> T {
    xs[rng.range(0, xs.len() as u64 - 1) as usize]
}

/// A member's answers, by age on the evaluation day.
fn member_facts(rng: &mut Rng, age: u32, ready: bool) -> MemberFacts {
    let w = usize::from(!ready);
    let health_affiliation_regime = if !ready && rng.chance(rates::NOT_AFFILIATED) {
        "none"
    } else if rng.chance(0.85) {
        "subsidiado"
    } else if rng.chance(0.9) {
        "contributivo"
    } else {
        "especial"
    };
    let completed_secondary = (age >= 14).then(|| match age {
        14..=16 => false,
        17 => rng.chance(0.2),
        18..=29 => rng.chance(0.45),
        _ => rng.chance(0.25),
    });
    let higher_education = (completed_secondary == Some(true)).then(|| {
        let x = rng.unit();
        if x < 0.15 {
            "attends"
        } else if x < 0.25 {
            "completed"
        } else {
            "none"
        }
    });
    let attends_school = (5..=17).contains(&age).then(|| {
        if completed_secondary == Some(true) {
            "completed_secondary"
        } else if ready || rng.chance(rates::ATTENDS_SCHOOL) {
            "attends"
        } else {
            "does_not_attend"
        }
    });
    let main_activity_last_week = (8..=17).contains(&age).then(|| {
        if !ready && rng.chance(rates::CHILD_WORKING) {
            "working"
        } else if !ready && rng.chance(rates::CHILD_LOOKING_FOR_WORK) {
            "looking_for_work"
        } else {
            pick(rng, &["studying", "studying", "household_chores", "other"])
        }
    });
    let occupation = (18..=64).contains(&age).then(|| {
        if rng.chance(rates::UNABLE_TO_WORK) {
            "unable_to_work"
        } else if rng.chance(rates::ADULT_PAID_WORK) {
            pick(rng, &PAID)
        } else {
            pick(
                rng,
                &[
                    "not_working",
                    "not_working",
                    "unpaid_family_worker",
                    "unpaid_other",
                ],
            )
        }
    });
    let has_disability = rng.chance(rates::DISABILITY);
    MemberFacts {
        health_affiliation_regime,
        early_childhood_care: (2..=4)
            .contains(&age)
            .then(|| ready || rng.chance(rates::EARLY_CARE)),
        attends_school,
        main_activity_last_week,
        reads_and_writes: (age >= 15).then(|| ready || rng.chance(rates::READS)),
        occupation,
        reproductive_health_access: (age >= 14).then(|| rng.chance(rates::REPRODUCTIVE_HEALTH)),
        financial_education_taken: (age >= 18).then(|| rng.chance(rates::FINANCIAL_EDUCATION)),
        has_disability,
        assistive_support_available: has_disability.then(|| rng.chance(rates::ASSISTIVE_SUPPORT)),
        at_nutritional_risk: (age < 5).then(|| rng.chance(rates::NUTRITIONAL_RISK[w])),
        completed_secondary,
        higher_education,
    }
}

/// The household's facts on the evaluation day.
fn home_facts(rng: &mut Rng, zone: Zone, ready: bool, members: usize) -> HomeFacts {
    let z = usize::from(zone == Zone::Rural);
    let n = members as u64;
    let rooms = if ready {
        // At most 2 per room: not crowded in either zone.
        n.div_ceil(2) + rng.range(0, 1)
    } else {
        rng.range(1, n.div_ceil(2) + 1)
    };
    let persons_per_sleeping_room = ((n * 1000 + rooms / 2) / rooms) as i64;
    let line = EXTREME_POVERTY_LINE as f64;
    let income = if !ready && rng.chance(rates::INCOME_BELOW_LINE) {
        line * (0.2 + 0.75 * rng.unit())
    } else {
        line * (1.0 + 1.5 * rng.unit())
    };
    let mut per_capita_income = (income / 100.0).round() as i64 * 100;
    if ready {
        // Rounding must not take a ready household below the line.
        per_capita_income = per_capita_income.max(EXTREME_POVERTY_LINE);
    }
    HomeFacts {
        water: ready || rng.chance(rates::WATER[z]),
        sanitation: ready || rng.chance(rates::SANITATION[z]),
        floor_not_earth: ready || rng.chance(rates::FLOOR_NOT_EARTH[z]),
        walls_adequate: ready || rng.chance(rates::WALLS_ADEQUATE[z]),
        persons_per_sleeping_room,
        per_capita_income,
        food_insecurity_yes_answers: if ready {
            rng.range(0, 3) as u32
        } else {
            rng.range(0, 12) as u32
        },
        uses_digital_tools: rng.chance(rates::DIGITAL_TOOLS),
        tenure_secure: rng.chance(rates::TENURE_SECURE),
    }
}

/// The registry's IPM deprivations, consistent with the facts the achievements mirror; the
/// four indicators no achievement mirrors are drawn.
fn ipm(rng: &mut Rng, h: &Household, home: &HomeFacts) -> Vec<(&'static str, bool)> {
    let w = usize::from(!h.ready);
    let any = |f: &dyn Fn(&MemberFacts) -> bool| h.members.iter().any(|m| f(&m.facts));
    let working_age = any(&|f| f.occupation.is_some_and(|o| o != "unable_to_work"));
    let deprived = |id: &str, rng: &mut Rng| match id {
        "bajo_logro_educativo" => rng.chance(rates::LOW_EDUCATIONAL_ATTAINMENT[w]),
        "analfabetismo" => any(&|f| f.reads_and_writes == Some(false)),
        "inasistencia_escolar" => any(&|f| f.attends_school == Some("does_not_attend")),
        "rezago_escolar" => rng.chance(rates::SCHOOL_LAG[w]),
        "barreras_primera_infancia" => any(&|f| f.early_childhood_care == Some(false)),
        "trabajo_infantil" => any(&|f| {
            matches!(
                f.main_activity_last_week,
                Some("working" | "looking_for_work")
            )
        }),
        "desempleo_larga_duracion" => {
            working_age && !any(&|f| f.occupation.is_some_and(|o| PAID.contains(&o)))
        }
        "trabajo_informal" => rng.chance(rates::INFORMAL_WORK[w]),
        "sin_aseguramiento_salud" => any(&|f| f.health_affiliation_regime == "none"),
        "barreras_acceso_salud" => rng.chance(rates::HEALTH_ACCESS_BARRIERS[w]),
        "sin_acceso_fuente_agua_mejorada" => !home.water,
        "inadecuada_eliminacion_excretas" => !home.sanitation,
        "material_inadecuado_pisos" => !home.floor_not_earth,
        "material_inadecuado_paredes" => !home.walls_adequate,
        _ => h.crowded(home),
    };
    IPM_INDICATORS
        .iter()
        .map(|id| (*id, deprived(id, rng)))
        .collect()
}

/// The cogestor's visits. Complete evidence: a characterisation 4–11 months before the
/// evaluation day and 0–2 follow-ups after it, the last recording the current facts. Incomplete:
/// the characterisation 13–24 months before (outside the rule set's 12-month window) and one
/// follow-up in the window that recorded the household's items only.
fn visits(rng: &mut Rng, h: &Household, home: HomeFacts, eval: Date) -> Vec<Visit> {
    let on = |back: u64| eval.add_days(-(back as i64)).unwrap_or(eval);
    let (first, follow_ups) = if h.complete {
        (
            rng.range(120, 330),
            rng.pick(&cumulative(&rates::FOLLOW_UPS)) as u64,
        )
    } else {
        (rng.range(400, 730), 1)
    };
    // The characterisation saw the household before any improvement.
    let mut initial = home.clone();
    if follow_ups > 0 && h.ready {
        initial.floor_not_earth &= !rng.chance(rates::IMPROVED_FLOOR);
        initial.water &= !rng.chance(rates::IMPROVED_WATER);
        initial.per_capita_income = initial.per_capita_income * 7 / 10 / 100 * 100;
    }
    let mut out = vec![Visit {
        number: 1,
        on: on(first),
        members: true,
        home: if follow_ups > 0 {
            initial
        } else {
            home.clone()
        },
        recorded_states: Vec::new(),
    }];
    let mut back = first.min(365);
    for k in 0..follow_ups {
        // Spread the follow-ups over what is left of the window, the last one no later than
        // the evaluation day.
        let left = follow_ups - k;
        back = rng.range(back.saturating_sub(back / left).max(left - 1), back - 1);
        let mut recorded_states = Vec::new();
        if rng.chance(rates::RECORDED_STATE) {
            for (id, reached) in [
                ("L09", home.water),
                ("L10", home.sanitation),
                ("L21", home.floor_not_earth),
                ("L22", home.walls_adequate),
                ("L23", !h.crowded(&home)),
            ] {
                recorded_states.push((id, if reached { "ALCANZADO" } else { "GESTIONADO" }));
            }
        }
        out.push(Visit {
            number: 2 + k as u32,
            on: on(back),
            members: h.complete,
            home: home.clone(),
            recorded_states,
        });
    }
    out
}

/// Writes the profiles and visits of `cfg` into `out_dir` (created if missing) as
/// `household-profiles-NNNN.json` and `household-visits-NNNN.json`, and `manifest.tsv`;
/// `progress(done, total)` is called with households done as it goes.
pub fn generate(
    cfg: &UnidosConfig,
    out_dir: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Summary, SimError> {
    cfg.validate()?;
    std::fs::create_dir_all(out_dir).map_err(|source| SimError::Io {
        path: out_dir.to_owned(),
        source,
    })?;
    let pop = Households::new(cfg.seed, cfg.people, cfg.evaluated_on);
    let chunk = cfg.json_chunk_records;
    let mut profiles = Sink::json(
        out_dir,
        "household-profiles".into(),
        chunk,
        "assistance",
        "/v1/household-profiles",
    )
    .max_bytes(MAX_FILE_BYTES);
    let mut visits = Sink::json(
        out_dir,
        "household-visits".into(),
        chunk,
        "assistance",
        "/v1/household-evidence",
    )
    .max_bytes(MAX_FILE_BYTES);
    let total = pop.households();
    let mut people = 0u64;
    let bad_salt = salt("unidos-malformed");
    for h in 0..total {
        let household = pop.household(h);
        people += household.members.len() as u64;
        let mut bad = Rng::new(cfg.seed ^ bad_salt, h);
        let mut is_bad = || bad.chance(cfg.malformed_share);
        let b = is_bad();
        let profile = household.profile_json();
        let profile = if b {
            // A code stored as a number: 4 digits (or a department's leading digit lost).
            let code = household.municipality_code();
            profile.replacen(
                &format!("\"municipality\":\"{code}\""),
                &format!("\"municipality\":\"{}\"", &code[1..]),
                1,
            )
        } else {
            profile
        };
        profiles.write(&profile, b)?;
        for rec in household.evidence_json() {
            let b = is_bad();
            let rec = if b {
                bad_date(&rec, "\"recorded_on\":\"")
            } else {
                rec
            };
            visits.write(&rec, b)?;
        }
        if h % 4096 == 4095 {
            progress(h + 1, total);
        }
    }
    progress(total, total);
    let mut files: Vec<FileSummary> = profiles.finish()?;
    files.extend(visits.finish()?);
    write_manifest(out_dir, &files)?;
    Ok(Summary {
        families: total,
        people,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ponte_domain::colombia::{Divipola, SisbenGroup};

    fn eval() -> Date {
        Date::new(2025, 6, 30).unwrap_or(Date::MAX)
    }

    #[test]
    fn municipality_codes_are_valid_divipola_and_unique() {
        let mut codes: Vec<_> = MUNICIPALITIES.iter().map(|m| m.code).collect();
        for m in MUNICIPALITIES {
            assert!(Divipola::parse(m.code).is_ok(), "{} ({})", m.code, m.name);
            assert!((0.0..=1.0).contains(&m.rural), "{}", m.name);
        }
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), MUNICIPALITIES.len());
    }

    #[test]
    fn a_household_is_a_function_of_seed_and_index() {
        let p = Households::new(5, 10_000, eval());
        assert_eq!(p.household(17), p.household(17));
        let q = Households::new(6, 10_000, eval());
        assert_ne!(p.household(17), q.household(17));
    }

    #[test]
    fn groups_dates_and_documents_fit() {
        let p = Households::new(9, 20_000, eval());
        for h in 0..p.households() {
            let hh = p.household(h);
            assert!(SisbenGroup::parse(&hh.sisben_group).is_ok());
            for v in &hh.visits {
                assert!(v.on <= eval(), "{} visit {}", hh.id, v.number);
            }
            assert!(hh.visits.windows(2).all(|w| w[0].on < w[1].on), "{}", hh.id);
            for m in &hh.members {
                for d in &m.documents {
                    assert!(
                        d.from <= eval() && d.from >= m.birth_date,
                        "{}",
                        m.member_id
                    );
                }
            }
        }
    }
}
