//! Benchmarks of evaluating one person and one family under the 2023 Bolsa Família rule set,
//! and of writing an outcome's evidence as JSON.
//! Prints figures; asserts nothing about time.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeSet;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ponte_domain::ids::{IbgeMunicipality, Nis};
use ponte_domain::outcome::Outcome;
use ponte_domain::period::{Date, Month, Period};
use ponte_domain::records::{
    Attendance, FamilyId, FamilyState, HealthRecord, PersonProfile, PersonRecord, PersonState,
    SchoolAttendanceMonth, Sex,
};
use ponte_domain::rules::RuleSet;

const RULES: &str = include_str!("../../../rules/bolsa-familia-2023.toml");

fn nis(i: u64) -> Nis {
    Nis::with_check_digit(&format!("{:010}", 1_000_000_000 + i)).unwrap()
}

/// A member with a year of monthly school attendance (one low month) and two health visits.
fn member(i: u64, born: &str, sex: Sex) -> PersonState {
    let n = nis(i);
    let mut p = PersonState::new(n);
    p.apply(PersonRecord::Profile(PersonProfile {
        record_id: format!("cad:{i}"),
        version: 1,
        retracted: false,
        nis: n,
        family_id: FamilyId::from("FAM"),
        birth_date: Date::parse(born).unwrap(),
        sex,
        municipality: IbgeMunicipality::parse("3550308").unwrap(),
        school: None,
        cns: Vec::new(),
        cpf: None,
        pregnancy: None,
        basic_education_completed: false,
        programmes: BTreeSet::from(["PBF".to_owned()]),
    }))
    .unwrap();
    for m in 2..=11u8 {
        p.apply(PersonRecord::School(SchoolAttendanceMonth {
            record_id: format!("s:{i}:{m}"),
            version: 1,
            retracted: false,
            nis: n,
            inep: None,
            month: Month::new(2025, m).unwrap(),
            attendance: Attendance::Counts {
                given: 20,
                attended: if m == 5 { 10 } else { 19 },
            },
            reason_code: None,
        }))
        .unwrap();
    }
    for m in [3u8, 9] {
        p.apply(PersonRecord::Health(HealthRecord {
            record_id: format!("h:{i}:{m}"),
            version: 1,
            retracted: false,
            nis: n,
            recorded_on: Some(Date::new(2025, m, 10).unwrap()),
            semester: None,
            vaccination_up_to_date: Some(true),
            weight_grams: Some(20_000),
            height_mm: Some(1_100),
            pregnant: None,
            last_menstruation: None,
            prenatal: None,
            immunization_refs: vec![],
        }))
        .unwrap();
    }
    p
}

fn benches(c: &mut Criterion) {
    let rs = RuleSet::from_toml_str("bolsa-familia-2023.toml", RULES).unwrap();
    let child = member(1, "2015-03-01", Sex::Male);
    let b2 = Period::parse("2025-B2").unwrap();
    let (jan, dec) = (
        Month::parse("2025-01").unwrap(),
        Month::parse("2025-12").unwrap(),
    );

    c.bench_function("person: one bimester (education)", |b| {
        b.iter(|| black_box(rs.evaluate_person(black_box(&child), b2)))
    });
    c.bench_function("person: whole year (5 bimesters + 2 semesters)", |b| {
        b.iter(|| black_box(rs.evaluate_person_between(black_box(&child), jan, dec)))
    });

    let members = [
        member(1, "2015-03-01", Sex::Male),
        member(2, "2008-06-01", Sex::Female),
        member(3, "2021-01-01", Sex::Female),
        member(4, "1990-01-01", Sex::Female),
    ];
    let family = FamilyState::new(FamilyId::from("FAM"));
    let outcomes: Vec<Outcome> = members
        .iter()
        .flat_map(|m| rs.evaluate_person_between(m, jan, dec))
        .collect();
    c.bench_function("family: effects ladder over a year (4 members)", |b| {
        b.iter(|| black_box(rs.evaluate_family(black_box(&family), black_box(&outcomes))))
    });
    c.bench_function("family: evaluate 4 members + effects over a year", |b| {
        b.iter(|| {
            let outs: Vec<Outcome> = members
                .iter()
                .flat_map(|m| rs.evaluate_person_between(m, jan, dec))
                .collect();
            black_box(rs.evaluate_family(&family, &outs))
        })
    });
    // The evidence of a year of the child's outcomes as JSON (each person's view carries it
    // once per outcome): through serde_json, and as the reconciler writes it.
    let year = rs.evaluate_person_between(&child, jan, dec);
    c.bench_function("evidence JSON of a year: serde_json", |b| {
        b.iter(|| {
            for o in black_box(&year) {
                black_box(serde_json::to_string(&o.evidence).unwrap());
            }
        })
    });
    c.bench_function("evidence JSON of a year: Evidence::to_json", |b| {
        b.iter(|| {
            for o in black_box(&year) {
                black_box(o.evidence.to_json());
            }
        })
    });
    c.bench_function("ids: parse NIS", |b| {
        b.iter(|| black_box(Nis::parse(black_box("268.27649.96-0"))))
    });
}

criterion_group!(domain, benches);
criterion_main!(domain);
