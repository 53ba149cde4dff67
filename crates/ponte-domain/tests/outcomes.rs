//! Per-person outcomes: education, health and SCFV attendance under the 2012 and 2023 rule sets,
//! the public derivation, and corrections/retractions.
//!
//! Source keys: `[S1]` is `docs/sources.md#s1`, and so on; decisions are in `docs/rules.md`.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ponte_domain::outcome::Status::{self, *};
use ponte_domain::records::{PersonRecord, Sex};
use ponte_domain::rules::{EffectScope, HealthItem, RuleSet};

type Month<'a> = (&'a str, u32, u32, Option<&'a str>);
/// (case, birth date, bimester, months recorded, expected status, expected scope)
type Case<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a [Month<'a>],
    Status,
    EffectScope,
);

/// Evaluates education in `bim` for a student born on `born` with the given months.
fn education(rs: &RuleSet, born: &str, bim: &str, months: &[Month<'_>]) -> (Status, EffectScope) {
    let n = nis(1);
    let recs = months
        .iter()
        .map(|(m, g, a, c)| PersonRecord::School(school(n, m, *g, *a, *c)))
        .collect();
    let p = person(profile(n, "F1", born, Sex::Female), recs);
    let o = rs.evaluate_person(&p, period(bim));
    let o = outcome_of(&o, "education", bim);
    (o.status, o.effects)
}

#[test]
fn education_2023_table() {
    let rs = bf2023();
    // (case, birth date, bimester, months recorded, expected status, expected scope)
    // Ages are taken at the bimester's first day (docs/rules.md, decision 1).
    let cases: &[Case<'_>] = &[
        // Age 4 → 60% [S1]: 12/20 = 60% meets, 11/20 = 55% does not.
        (
            "4y at threshold",
            "2020-05-10",
            "2025-B2",
            &[("2025-04", 20, 12, None), ("2025-05", 20, 12, None)],
            Compliant,
            EffectScope::Family,
        ),
        (
            "4y one month below",
            "2020-05-10",
            "2025-B2",
            &[("2025-04", 20, 12, None), ("2025-05", 20, 11, None)],
            NonCompliant,
            EffectScope::Family,
        ),
        // Exempting code 1a (student's health) neutralises the month (docs/rules.md, decision 2).
        (
            "4y below, code 1a",
            "2020-05-10",
            "2025-B2",
            &[("2025-05", 20, 11, Some("1a"))],
            Compliant,
            EffectScope::Family,
        ),
        (
            "4y below, code 2",
            "2020-05-10",
            "2025-B2",
            &[("2025-05", 20, 11, Some("2"))],
            Compliant,
            EffectScope::Family,
        ),
        // Codes 58 / 65 / 7 are not exempting (docs/rules.md, decision 2).
        (
            "4y below, code 58",
            "2020-05-10",
            "2025-B2",
            &[("2025-05", 20, 11, Some("58"))],
            NonCompliant,
            EffectScope::Family,
        ),
        (
            "4y below, code 65",
            "2020-05-10",
            "2025-B2",
            &[("2025-05", 20, 11, Some("65"))],
            NonCompliant,
            EffectScope::Family,
        ),
        (
            "4y below, code 7",
            "2020-05-10",
            "2025-B2",
            &[("2025-05", 20, 11, Some("7"))],
            NonCompliant,
            EffectScope::Family,
        ),
        // At least one month recorded → followed (docs/rules.md, "How an outcome is decided").
        (
            "one month only",
            "2020-05-10",
            "2025-B2",
            &[("2025-05", 20, 20, None)],
            Compliant,
            EffectScope::Family,
        ),
        // In the public, nothing recorded → NOT_FOLLOWED, never non-compliance (docs/rules.md).
        (
            "no record",
            "2020-05-10",
            "2025-B2",
            &[],
            NotFollowed,
            EffectScope::Family,
        ),
        // Age 3 → not in the 2023 education public [S1].
        (
            "3y",
            "2021-05-10",
            "2025-B2",
            &[("2025-04", 20, 0, None)],
            NotRequired,
            EffectScope::None,
        ),
        // Turns 6 on 2 April: age 5 on 1 April → 60% band (age at period start, DECISION).
        (
            "5y at start",
            "2019-04-02",
            "2025-B2",
            &[("2025-04", 20, 13, None)],
            Compliant,
            EffectScope::Family,
        ),
        // Age 10 → 75% [S1]: 15/20 = 75% meets; 14/20 = 70% does not.
        (
            "10y at 75%",
            "2015-01-01",
            "2025-B2",
            &[("2025-04", 20, 15, None)],
            Compliant,
            EffectScope::Family,
        ),
        (
            "10y at 70%",
            "2015-01-01",
            "2025-B2",
            &[("2025-04", 20, 14, None)],
            NonCompliant,
            EffectScope::Family,
        ),
        // Age 17 → 75%, effect on the adolescent's own benefit only [S8][S3][S5].
        (
            "17y at 70%",
            "2008-01-01",
            "2025-B2",
            &[("2025-04", 20, 14, None)],
            NonCompliant,
            EffectScope::Member,
        ),
        // Age 18 → out of the public [S1].
        (
            "18y",
            "2007-01-01",
            "2025-B2",
            &[("2025-04", 20, 0, None)],
            NotRequired,
            EffectScope::None,
        ),
        // Classes instead of days (MEC calculation [S9]): 150/200 = 75%.
        (
            "classes",
            "2012-01-01",
            "2025-B4",
            &[("2025-08", 200, 150, None), ("2025-09", 180, 135, None)],
            Compliant,
            EffectScope::Family,
        ),
    ];
    for (case, born, bim, months, status, scope) in cases {
        assert_eq!(
            education(&rs, born, bim, months),
            (*status, *scope),
            "{case}"
        );
    }
}

#[test]
fn education_2012_table() {
    let rs = bf2012();
    // Portaria 251/2012 rule set [S6][S9]: 6–15 at 85%, 16–17 at 75%, 4–5 not monitored.
    let cases: &[Case<'_>] = &[
        (
            "10y at 80%",
            "2005-01-01",
            "2015-B2",
            &[("2015-04", 20, 16, None)],
            NonCompliant,
            EffectScope::Family,
        ),
        (
            "10y at 85%",
            "2005-01-01",
            "2015-B2",
            &[("2015-04", 20, 17, None)],
            Compliant,
            EffectScope::Family,
        ),
        (
            "16y at 75%",
            "1999-01-01",
            "2015-B2",
            &[("2015-04", 20, 15, None)],
            Compliant,
            EffectScope::Member,
        ),
        (
            "16y at 70%",
            "1999-01-01",
            "2015-B2",
            &[("2015-04", 20, 14, None)],
            NonCompliant,
            EffectScope::Member,
        ),
        (
            "5y",
            "2010-01-01",
            "2015-B2",
            &[("2015-04", 20, 0, None)],
            NotRequired,
            EffectScope::None,
        ),
    ];
    for (case, born, bim, months, status, scope) in cases {
        assert_eq!(
            education(&rs, born, bim, months),
            (*status, *scope),
            "{case}"
        );
    }
}

#[test]
fn completed_basic_education_leaves_the_2023_public() {
    // Lei 14.601/2023 art. 10 IV: only those who have not finished basic education [S1].
    let rs = bf2023();
    let n = nis(2);
    let mut prof = profile(n, "F1", "2008-01-01", Sex::Male);
    prof.basic_education_completed = true;
    let p = person(prof, vec![]);
    assert_eq!(
        status_of(
            &rs.evaluate_person(&p, period("2025-B2")),
            "education",
            "2025-B2"
        ),
        NotRequired
    );
}

#[test]
fn education_evidence_names_records_months_threshold_and_rule_set() {
    let rs = bf2023();
    let n = nis(3);
    let p = person(
        profile(n, "F1", "2015-01-01", Sex::Male),
        vec![
            PersonRecord::School(school(n, "2025-04", 20, 20, None)),
            PersonRecord::School(school(n, "2025-05", 20, 10, Some("58"))),
        ],
    );
    let outs = rs.evaluate_person(&p, period("2025-B2"));
    let o = outcome_of(&outs, "education", "2025-B2");
    assert_eq!(o.status, NonCompliant);
    assert_eq!(o.rule_set.to_string(), "bolsa-familia-2023@2025.1");
    assert_eq!(o.evidence.threshold_percent, Some(75));
    assert_eq!(o.evidence.bands, ["age-6-15"]);
    assert_eq!(o.evidence.age, Some(10));
    assert_eq!(o.evidence.months_below, [month("2025-05")]);
    assert_eq!(o.evidence.months.len(), 2);
    let may = &o.evidence.months[1];
    assert_eq!(may.record_id, format!("presenca:{n}:2025-05"));
    assert!(!may.met && !may.exempted && may.signals_assistance);
    assert!(o.evidence.note.contains("2025-05"), "{}", o.evidence.note);
}

#[test]
fn corrections_and_retractions_change_the_outcome() {
    let rs = bf2023();
    let n = nis(4);
    let mut p = person(profile(n, "F1", "2015-01-01", Sex::Male), vec![]);
    let low = school(n, "2025-04", 20, 10, None);
    p.apply(PersonRecord::School(low.clone())).unwrap();
    let st = |p: &_| {
        status_of(
            &rs.evaluate_person(p, period("2025-B2")),
            "education",
            "2025-B2",
        )
    };
    assert_eq!(st(&p), NonCompliant);
    // Correction: same record id, higher version.
    let fixed = ponte_domain::records::SchoolAttendanceMonth {
        version: 2,
        attendance: ponte_domain::records::Attendance::Percent(90),
        ..low.clone()
    };
    p.apply(PersonRecord::School(fixed.clone())).unwrap();
    assert_eq!(st(&p), Compliant);
    // A late lower version is ignored.
    p.apply(PersonRecord::School(low.clone())).unwrap();
    assert_eq!(st(&p), Compliant);
    // Retraction removes it: back to not followed.
    p.apply(PersonRecord::School(
        ponte_domain::records::SchoolAttendanceMonth {
            version: 3,
            retracted: true,
            ..fixed
        },
    ))
    .unwrap();
    assert_eq!(st(&p), NotFollowed);
}

#[test]
fn transfer_month_with_two_schools_is_met_if_either_record_is() {
    // DECISION (docs/rules.md): several records for one month — any record meeting the
    // threshold suffices; effects are never based on ambiguous data.
    let rs = bf2023();
    let n = nis(5);
    let mut second = school(n, "2025-04", 10, 10, None);
    second.record_id = "presenca:new-school".to_owned();
    let p = person(
        profile(n, "F1", "2015-01-01", Sex::Male),
        vec![
            PersonRecord::School(school(n, "2025-04", 10, 2, Some("59"))),
            PersonRecord::School(second),
        ],
    );
    assert_eq!(
        status_of(
            &rs.evaluate_person(&p, period("2025-B2")),
            "education",
            "2025-B2"
        ),
        Compliant
    );
}

fn health_status(
    rs: &RuleSet,
    prof: ponte_domain::records::PersonProfile,
    recs: Vec<ponte_domain::records::HealthRecord>,
    sem: &str,
) -> (Status, EffectScope, Vec<HealthItem>) {
    let p = person(prof, recs.into_iter().map(PersonRecord::Health).collect());
    let outs = rs.evaluate_person(&p, period(sem));
    let o = outcome_of(&outs, "health", sem);
    (
        o.status,
        o.effects,
        o.evidence
            .health
            .as_ref()
            .map(|h| h.missing.clone())
            .unwrap_or_default(),
    )
}

#[test]
fn health_2023_table() {
    let rs = bf2023();
    let n = nis(6);
    let child = || profile(n, "F1", "2021-03-01", Sex::Male);
    let woman = |born: &str| profile(n, "F1", born, Sex::Female);
    use EffectScope::{Family, None as NoEffect};
    use HealthItem::*;
    // Child < 7: vaccination up to date + weight and height in the semester [S1][S11].
    assert_eq!(
        health_status(&rs, child(), vec![child_visit(n, "2025-03-10")], "2025-S1"),
        (Compliant, Family, vec![])
    );
    let mut no_height = child_visit(n, "2025-03-10");
    no_height.height_mm = None;
    assert_eq!(
        health_status(&rs, child(), vec![no_height], "2025-S1"),
        (NonCompliant, Family, vec![Height])
    );
    // Flags recorded on different visits of the same semester combine.
    let weigh = ponte_domain::records::HealthRecord {
        weight_grams: Some(14_000),
        height_mm: Some(990),
        ..health(n, "2025-02-01")
    };
    let vacc = ponte_domain::records::HealthRecord {
        vaccination_up_to_date: Some(true),
        ..health(n, "2025-05-01")
    };
    assert_eq!(
        health_status(&rs, child(), vec![weigh.clone(), vacc], "2025-S1"),
        (Compliant, Family, vec![])
    );
    // The latest vaccination flag wins (the team's flag is accepted as given, docs/rules.md,
    // decision 19).
    let late_no = ponte_domain::records::HealthRecord {
        vaccination_up_to_date: Some(false),
        ..health(n, "2025-06-01")
    };
    assert_eq!(
        health_status(
            &rs,
            child(),
            vec![child_visit(n, "2025-03-10"), late_no],
            "2025-S1"
        ),
        (NonCompliant, Family, vec![VaccinationUpToDate])
    );
    // A record in the other semester does not count: not followed in S1.
    assert_eq!(
        health_status(&rs, child(), vec![weigh], "2025-S2").0,
        NotFollowed
    );
    assert_eq!(
        health_status(&rs, child(), vec![], "2025-S1"),
        (NotFollowed, Family, vec![])
    );
    // Woman 14–44 not pregnant: followed is compliant; no effect (docs/rules.md, decision 4).
    assert_eq!(
        health_status(
            &rs,
            woman("1995-01-01"),
            vec![health(n, "2025-02-02")],
            "2025-S1"
        ),
        (Compliant, NoEffect, vec![])
    );
    assert_eq!(
        health_status(&rs, woman("1995-01-01"), vec![], "2025-S1").0,
        NotFollowed
    );
    // Woman 45+ and men are outside the health public (DECISION 14–44).
    assert_eq!(
        health_status(
            &rs,
            woman("1979-01-01"),
            vec![health(n, "2025-02-02")],
            "2025-S1"
        )
        .0,
        NotRequired
    );
    assert_eq!(
        health_status(
            &rs,
            profile(n, "F1", "1990-01-01", Sex::Male),
            vec![],
            "2025-S1"
        )
        .0,
        NotRequired
    );
    // Pregnant per the registry: prenatal required [S1][S11].
    let preg = || pregnant(woman("1995-01-01"), Some("2025-05-01"));
    let prenatal = ponte_domain::records::HealthRecord {
        prenatal: Some(true),
        ..health(n, "2025-02-02")
    };
    assert_eq!(
        health_status(&rs, preg(), vec![prenatal], "2025-S1"),
        (Compliant, Family, vec![])
    );
    assert_eq!(
        health_status(&rs, preg(), vec![health(n, "2025-02-02")], "2025-S1"),
        (NonCompliant, Family, vec![Prenatal])
    );
    // Pregnant per the health record only (docs/rules.md, "How an outcome is decided"): prenatal
    // required too.
    let says_pregnant = ponte_domain::records::HealthRecord {
        pregnant: Some(true),
        ..health(n, "2025-02-02")
    };
    assert_eq!(
        health_status(&rs, woman("1995-01-01"), vec![says_pregnant], "2025-S1"),
        (NonCompliant, Family, vec![Prenatal])
    );
    // Registry pregnancy with delivery before the semester: not pregnant in it.
    assert_eq!(
        health_status(
            &rs,
            pregnant(woman("1995-01-01"), Some("2024-12-01")),
            vec![health(n, "2025-02-02")],
            "2025-S1"
        ),
        (Compliant, NoEffect, vec![])
    );
    // A pregnant 13-year-old is in the public through the pregnancy band.
    assert_eq!(
        health_status(&rs, pregnant(woman("2011-06-01"), None), vec![], "2025-S1"),
        (NotFollowed, Family, vec![])
    );
}

#[test]
fn scfv_is_monitored_by_2012_and_not_by_2023() {
    // 2012 rule set: PETI children up to 15 must attend ≥ 85% of monthly SCFV hours
    // (Agência Brasil, June 2010; docs/sources.md#peti-scfv-2010). 2023 law has no such
    // condition [S1].
    let n = nis(7);
    let peti = || with_programmes(profile(n, "F1", "2005-01-01", Sex::Male), &["PBF", "PETI"]);
    let rs = bf2012();
    let run = |rs: &RuleSet, prof, hours: u32, attended: u32| {
        let p = person(
            prof,
            vec![PersonRecord::Scfv(scfv(n, "2015-04", hours, attended))],
        );
        rs.evaluate_person(&p, period("2015-B2"))
    };
    assert_eq!(
        status_of(&run(&rs, peti(), 40, 34), "assistance", "2015-B2"),
        Compliant
    ); // 85%
    assert_eq!(
        status_of(&run(&rs, peti(), 40, 33), "assistance", "2015-B2"),
        NonCompliant
    ); // 82.5%
    // Not in PETI → not in the SCFV public.
    assert_eq!(
        status_of(
            &run(&rs, profile(n, "F1", "2005-01-01", Sex::Male), 40, 0),
            "assistance",
            "2015-B2"
        ),
        NotRequired
    );
    // 2023: no assistance conditionality at all.
    let outs = run(&bf2023(), peti(), 40, 0);
    assert!(outs.iter().all(|o| o.conditionality != "assistance"));
}

#[test]
fn public_derivation_lists_conditionalities_and_periods() {
    // A child born 2019-06-15 in 2025 under the 2023 rules: education from age 4 (60%), 6 (75%);
    // health as a child under 7 in both semesters.
    let rs = bf2023();
    let prof = profile(nis(8), "F1", "2019-06-15", Sex::Female);
    let got: Vec<(String, String, Vec<String>, u32)> = rs
        .public(&prof, month("2025-01"), month("2025-12"))
        .into_iter()
        .map(|a| (a.conditionality, a.period.to_string(), a.bands, a.age))
        .collect();
    let want = [
        ("education", "2025-B1", "age-4-5", 5),
        ("education", "2025-B2", "age-4-5", 5),
        ("education", "2025-B3", "age-4-5", 5),
        ("education", "2025-B4", "age-6-15", 6),
        ("education", "2025-B5", "age-6-15", 6),
        ("health", "2025-S1", "child-under-7", 5),
        ("health", "2025-S2", "child-under-7", 6),
    ];
    let want: Vec<_> = want
        .iter()
        .map(|(c, p, b, a)| ((*c).to_owned(), (*p).to_owned(), vec![(*b).to_owned()], *a))
        .collect();
    assert_eq!(got, want);
    // Not a programme member → no public at all.
    let outsider = with_programmes(prof, &[]);
    assert!(
        rs.public(&outsider, month("2025-01"), month("2025-12"))
            .is_empty()
    );
}

#[test]
fn no_profile_no_outcome() {
    let rs = bf2023();
    let n = nis(9);
    let mut p = ponte_domain::records::PersonState::new(n);
    p.apply(PersonRecord::School(school(n, "2025-04", 20, 0, None)))
        .unwrap();
    assert!(rs.evaluate_person(&p, period("2025-B2")).is_empty());
    // A record for another person is refused.
    assert!(
        p.apply(PersonRecord::School(school(
            nis(10),
            "2025-04",
            20,
            0,
            None
        )))
        .is_err()
    );
}
