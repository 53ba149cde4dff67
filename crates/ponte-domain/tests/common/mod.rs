//! Shared builders for the integration tests: rule files, people and records.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::BTreeSet;

pub mod unidos;

use ponte_domain::ids::{IbgeMunicipality, Nis};
use ponte_domain::outcome::{Outcome, Status};
use ponte_domain::period::{Date, Month, Period};
use ponte_domain::records::{
    Appeal, AppealStatus, Attendance, FamilyFollowUp, FamilyId, FamilyRecord, FamilyState,
    HealthRecord, PersonProfile, PersonRecord, PersonState, Pregnancy, ScfvAttendanceMonth,
    SchoolAttendanceMonth, Sex,
};
use ponte_domain::rules::RuleSet;

pub fn rules_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules")
}

/// Loads `rules/<name>.toml`.
pub fn load(name: &str) -> RuleSet {
    let path = rules_dir().join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path).unwrap();
    RuleSet::from_toml_str(&format!("rules/{name}.toml"), &text).unwrap()
}

pub fn bf2023() -> RuleSet {
    load("bolsa-familia-2023")
}

pub fn bf2012() -> RuleSet {
    load("bolsa-familia-2012")
}

/// A valid NIS derived from a small number.
pub fn nis(i: u64) -> Nis {
    Nis::with_check_digit(&format!("{:010}", 1_000_000_000 + i)).unwrap()
}

pub fn date(s: &str) -> Date {
    Date::parse(s).unwrap()
}

pub fn month(s: &str) -> Month {
    Month::parse(s).unwrap()
}

pub fn period(s: &str) -> Period {
    Period::parse(s).unwrap()
}

pub fn sao_paulo() -> IbgeMunicipality {
    IbgeMunicipality::parse("3550308").unwrap()
}

pub fn maceio() -> IbgeMunicipality {
    IbgeMunicipality::parse("2704302").unwrap()
}

pub fn profile(n: Nis, family: &str, born: &str, sex: Sex) -> PersonProfile {
    PersonProfile {
        record_id: format!("cadunico:{}", n),
        version: 1,
        retracted: false,
        nis: n,
        family_id: FamilyId::from(family),
        birth_date: date(born),
        sex,
        municipality: sao_paulo(),
        school: None,
        cns: Vec::new(),
        cpf: None,
        pregnancy: None,
        basic_education_completed: false,
        programmes: ["PBF".to_owned()].into_iter().collect::<BTreeSet<_>>(),
    }
}

pub fn pregnant(mut p: PersonProfile, expected: Option<&str>) -> PersonProfile {
    p.pregnancy = Some(Pregnancy {
        expected_delivery: expected.map(date),
    });
    p
}

pub fn with_programmes(mut p: PersonProfile, programmes: &[&str]) -> PersonProfile {
    p.programmes = programmes.iter().map(|s| (*s).to_owned()).collect();
    p
}

pub fn school(
    n: Nis,
    m: &str,
    given: u32,
    attended: u32,
    code: Option<&str>,
) -> SchoolAttendanceMonth {
    SchoolAttendanceMonth {
        record_id: format!("presenca:{n}:{m}"),
        version: 1,
        retracted: false,
        nis: n,
        inep: None,
        month: month(m),
        attendance: Attendance::Counts { given, attended },
        reason_code: code.map(str::to_owned),
    }
}

pub fn scfv(n: Nis, m: &str, hours: u32, attended: u32) -> ScfvAttendanceMonth {
    ScfvAttendanceMonth {
        record_id: format!("sicon-scfv:{n}:{m}"),
        version: 1,
        retracted: false,
        nis: n,
        month: month(m),
        attendance: Attendance::Counts {
            given: hours,
            attended,
        },
        reason_code: None,
    }
}

pub fn health(n: Nis, on: &str) -> HealthRecord {
    HealthRecord {
        record_id: format!("bfa:{n}:{on}"),
        version: 1,
        retracted: false,
        nis: n,
        recorded_on: Some(date(on)),
        semester: None,
        vaccination_up_to_date: None,
        weight_grams: None,
        height_mm: None,
        pregnant: None,
        last_menstruation: None,
        prenatal: None,
        immunization_refs: Vec::new(),
    }
}

/// A complete child visit: vaccination up to date, weight and height.
pub fn child_visit(n: Nis, on: &str) -> HealthRecord {
    HealthRecord {
        vaccination_up_to_date: Some(true),
        weight_grams: Some(15_000),
        height_mm: Some(1_000),
        ..health(n, on)
    }
}

pub fn person(p: PersonProfile, records: Vec<PersonRecord>) -> PersonState {
    let mut s = PersonState::new(p.nis);
    s.apply(PersonRecord::Profile(p)).unwrap();
    for r in records {
        s.apply(r).unwrap();
    }
    s
}

pub fn outcome_of<'a>(outcomes: &'a [Outcome], conditionality: &str, p: &str) -> &'a Outcome {
    outcomes
        .iter()
        .find(|o| o.conditionality == conditionality && o.period == period(p))
        .unwrap_or_else(|| panic!("no outcome for {conditionality} {p}"))
}

pub fn status_of(outcomes: &[Outcome], conditionality: &str, p: &str) -> Status {
    outcome_of(outcomes, conditionality, p).status
}

pub fn family(id: &str) -> FamilyState {
    FamilyState::new(FamilyId::from(id))
}

pub fn follow_up(family: &str, started: &str, interruption: Option<&str>) -> FamilyRecord {
    FamilyRecord::FollowUp(FamilyFollowUp {
        record_id: format!("sicon-af:{family}:{started}"),
        version: 1,
        retracted: false,
        family_id: FamilyId::from(family),
        started_on: date(started),
        ended_on: None,
        interruption_requested_on: interruption.map(date),
    })
}

pub fn appeal(family: &str, p: &str, status: AppealStatus) -> FamilyRecord {
    FamilyRecord::Appeal(Appeal {
        record_id: format!("sicon-recurso:{family}:{p}"),
        version: 1,
        retracted: false,
        family_id: FamilyId::from(family),
        nis: None,
        conditionality: None,
        period: period(p),
        status,
    })
}
