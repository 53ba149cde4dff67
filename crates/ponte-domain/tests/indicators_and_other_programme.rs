//! Indicators per municipality and period, and a non-Bolsa Família programme run by the same
//! engine from its rule file alone.
//!
//! Source keys: `[S12]` is `docs/sources.md#s12`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use ponte_domain::indicators::{IndicatorError, IndicatorTable};
use ponte_domain::outcome::Status;
use ponte_domain::records::{Attendance, PersonRecord, Sex};

#[test]
fn tafe_taas_compliance_rates_and_fator_i() {
    // [S12]: TAFE = followed in education / education public; TAAS likewise for health;
    // Fator I = 0.5·TAC + 0.25·TAFE + 0.25·TAAS (Portaria 1.041/2024).
    let rs = bf2023();
    let mut outs = Vec::new();
    // Four students in São Paulo: 2 compliant, 1 non-compliant, 1 not followed → TAFE 3/4,
    // compliance 2/3.
    for (i, attended) in [(1u64, Some(20)), (2, Some(18)), (3, Some(5)), (4, None)] {
        let n = nis(i);
        let recs = attended
            .map(|a| vec![PersonRecord::School(school(n, "2025-04", 20, a, None))])
            .unwrap_or_default();
        outs.extend(rs.evaluate_person(
            &person(profile(n, "F", "2015-01-01", Sex::Male), recs),
            period("2025-B2"),
        ));
    }
    // Two children in the health public: one followed → TAAS 1/2.
    for (i, rec) in [(10u64, true), (11, false)] {
        let n = nis(i);
        let recs = if rec {
            vec![PersonRecord::Health(child_visit(n, "2025-02-01"))]
        } else {
            vec![]
        };
        outs.extend(rs.evaluate_person(
            &person(profile(n, "F", "2022-01-01", Sex::Male), recs),
            period("2025-S1"),
        ));
    }
    // One student in Maceió does not leak into São Paulo's rows.
    let mut other = profile(nis(20), "G", "2015-01-01", Sex::Male);
    other.municipality = maceio();
    outs.extend(rs.evaluate_person(&person(other, vec![]), period("2025-B2")));

    let table = IndicatorTable::from_outcomes(&outs);
    let edu = table.get(sao_paulo(), "education", period("2025-B2"));
    assert_eq!(
        (edu.public, edu.followed, edu.compliant, edu.non_compliant),
        (4, 3, 2, 1)
    );
    assert_eq!(edu.follow_up_rate(), Some(0.75));
    assert_eq!(edu.compliance_rate(), Some(2.0 / 3.0));
    assert_eq!(
        table
            .get(maceio(), "education", period("2025-B2"))
            .follow_up_rate(),
        Some(0.0)
    );

    let rates = table.follow_up_rates(&rs, sao_paulo(), month("2025-07"));
    assert_eq!(rates["TAFE"], (period("2025-B2"), 0.75));
    assert_eq!(rates["TAAS"], (period("2025-S1"), 0.5));

    let mut named: BTreeMap<String, f64> = rates.into_iter().map(|(k, (_, v))| (k, v)).collect();
    assert_eq!(
        rs.fator_i(&named),
        Err(IndicatorError::MissingRate("TAC".to_owned()))
    );
    named.insert("TAC".to_owned(), 0.8);
    let fi = rs.fator_i(&named).unwrap();
    assert!(
        (fi - (0.5 * 0.8 + 0.25 * 0.75 + 0.25 * 0.5)).abs() < 1e-12,
        "{fi}"
    );

    // Incremental maintenance: removing an outcome undoes its count.
    let mut t2 = table.clone();
    let first = outs
        .iter()
        .find(|o| o.status == Status::NonCompliant)
        .unwrap();
    t2.remove(first);
    t2.add(first);
    assert_eq!(t2, table);
}

#[test]
fn a_different_programme_runs_from_its_rule_file_alone() {
    // rules/example-cct.toml (illustrative): monthly calendar, 80% for 5–14 (family), 70% for
    // 15–18 (member), ages at period end, ladder warning → suspension with a 3-month window,
    // no cancellation, appeals revoke without rewriting history.
    let rs = load("example-cct");
    let n = nis(1);
    let mut prof = profile(n, "H", "2015-06-30", Sex::Female);
    prof.programmes = ["CCT-X".to_owned()].into_iter().collect();
    let recs = vec![
        PersonRecord::School(school(n, "2025-03", 20, 15, None)), // 75% < 80%
        PersonRecord::School(school(n, "2025-04", 20, 16, None)), // 80%
        PersonRecord::School(school(n, "2025-05", 20, 10, Some("HEALTH"))), // exempted
        PersonRecord::School(school(n, "2025-06", 20, 10, None)), // 50%
        PersonRecord::School(school(n, "2025-11", 20, 0, None)),
    ];
    let p = person(prof.clone(), recs);
    let outs = rs.evaluate_person_between(&p, month("2025-03"), month("2025-11"));
    let st = |m: &str| status_of(&outs, "school", m);
    assert_eq!(st("2025-03"), Status::NonCompliant);
    assert_eq!(st("2025-04"), Status::Compliant);
    assert_eq!(st("2025-05"), Status::Compliant);
    assert_eq!(st("2025-06"), Status::NonCompliant);
    assert_eq!(st("2025-07"), Status::NotFollowed);
    // Ages at period end: born 2015-06-30 → 10 at the end of June.
    assert_eq!(
        outcome_of(&outs, "school", "2025-06").evidence.age,
        Some(10)
    );
    // Bolsa Família markers mean nothing here: a PBF-only person is outside the public.
    let pbf = person(profile(nis(2), "H", "2015-06-30", Sex::Female), vec![]);
    assert!(
        rs.evaluate_person(&pbf, period("2025-04"))
            .iter()
            .all(|o| o.status == Status::NotRequired)
    );

    // Ladder: Mar (rep Apr) warning; Jun (rep Jul, 3 months later) suspension; Nov (rep Dec,
    // 5 months after June > 3) starts again at the warning.
    let mut fam = family("H");
    let e = rs.evaluate_family(&fam, &outs);
    let names: Vec<_> = e
        .family
        .iter()
        .map(|x| (x.repercussion_month.to_string(), x.name.clone()))
        .collect();
    assert_eq!(
        names,
        [
            ("2025-04".to_owned(), "warning".to_owned()),
            ("2025-07".to_owned(), "suspension".to_owned()),
            ("2025-12".to_owned(), "warning".to_owned()),
        ]
    );
    // An accepted appeal revokes the June effect but keeps it in the history.
    fam.apply(appeal(
        "H",
        "2025-06",
        ponte_domain::records::AppealStatus::Accepted,
    ))
    .unwrap();
    let e = rs.evaluate_family(&fam, &outs);
    assert_eq!(
        e.family[1].status,
        ponte_domain::effects::EffectStatus::RevokedByAppeal
    );
    assert_eq!(e.family.len(), 3);

    // Health: only vaccination for under-5s, semester calendar.
    let baby = nis(3);
    let mut bp = profile(baby, "H", "2024-01-01", Sex::Male);
    bp.programmes = ["CCT-X".to_owned()].into_iter().collect();
    let visit = ponte_domain::records::HealthRecord {
        vaccination_up_to_date: Some(true),
        ..health(baby, "2025-02-01")
    };
    let outs = rs.evaluate_person(
        &person(bp, vec![PersonRecord::Health(visit)]),
        period("2025-S1"),
    );
    assert_eq!(
        status_of(&outs, "child-health", "2025-S1"),
        Status::Compliant
    );

    // Percent-based attendance works too.
    let mut r = school(n, "2025-08", 0, 0, None);
    r.attendance = Attendance::Percent(79);
    let outs = rs.evaluate_person(
        &person(prof, vec![PersonRecord::School(r)]),
        period("2025-08"),
    );
    assert_eq!(status_of(&outs, "school", "2025-08"), Status::NonCompliant);
}
