//! Unidos (rules/unidos-2021.toml) on the household-achievement engine: what the file carries,
//! each achievement, the exit criteria, and the load errors.
//!
//! Every case cites its source: an entry of docs/sources.md (`dps-unidos-logros-scripts` is
//! docs/sources.md#dps-unidos-logros-scripts; a number after it is the script's file id there),
//! or a decision of docs/rules.md, "Unidos" (U1 … U16). The evaluation day is 2025-06-30 and
//! evidence counts from 2024-06-30 (U6).
#![allow(clippy::unwrap_used)]

mod common;

use common::date;
use common::unidos::*;
use ponte_domain::achievements::exit::{CriterionDetail, CriterionState};
use ponte_domain::achievements::rules::{
    Basis, Concerns, CriterionKind, HouseholdRule, Reference, Sector, Threshold,
};
use ponte_domain::achievements::{AchievementRuleSet, AchievementState, Decimal, Zone};
use ponte_domain::records::Sex::{Female, Male};

use AchievementState::{NotApplicable, NotReached, Reached, Unknown};

/// One case of an achievement: what it shows, where the rule comes from, the household, the
/// state expected.
struct Case {
    what: &'static str,
    source: &'static str,
    household: Hh,
    expected: AchievementState,
}

fn case(
    what: &'static str,
    source: &'static str,
    household: Hh,
    expected: AchievementState,
) -> Case {
    Case {
        what,
        source,
        household,
        expected,
    }
}

fn check(achievement: &str, cases: Vec<Case>) {
    let rs = unidos();
    for c in cases {
        let eval = c.household.eval_with(&rs);
        let got = eval.achievement(achievement).unwrap();
        assert_eq!(
            got.state, c.expected,
            "{achievement}: {} [{}]\n{:#?}",
            c.what, c.source, got
        );
    }
}

// ---- What the file carries -------------------------------------------------------------------

#[test]
fn the_rule_set_carries_the_sources() {
    let rs = unidos();
    assert_eq!(rs.id, "unidos-2021");
    assert_eq!(rs.reference().to_string(), "unidos-2021@2021.1");
    // U1: in force from the day Resolución 2002 de 2021 was issued (dps-res-2002-2021).
    assert_eq!(rs.effective_from.to_string(), "2021-09-13");
    assert!(!rs.in_force_on(date("2021-09-12")));
    assert!(rs.in_force_on(date("2021-09-13")));
    // U6: evidence older than 12 months is ignored.
    assert_eq!(rs.evidence_max_age_months, 12);
    // dps-unidos-logros-scripts (40702994806): 28 achievements numbered 01–28.
    let numbers: Vec<u32> = rs.achievements.iter().map(|a| a.number).collect();
    assert_eq!(numbers, (1..=28).collect::<Vec<_>>());
    // The 11 the fichas would define and could not be read are assumed (sources.md, "What could
    // not be found or read").
    let assumed: Vec<&str> = rs
        .achievements
        .iter()
        .filter(|a| a.basis == Basis::Assumed)
        .map(|a| a.id.as_str())
        .collect();
    assert_eq!(
        assumed,
        [
            "L01", "L03", "L05", "L12", "L13", "L14", "L16", "L19", "L20", "L24", "L26"
        ]
    );
    // U4: the 11 prerequisites are the achievements mirroring an IPM indicator.
    let prerequisites = rs.exit.prerequisites.as_ref().unwrap();
    assert_eq!(
        prerequisites.achievements,
        [
            "L02", "L06", "L07", "L08", "L09", "L10", "L17", "L21", "L22", "L23", "L25"
        ]
    );
    let mirroring: Vec<&str> = rs
        .achievements
        .iter()
        .filter(|a| a.ipm_indicator.is_some())
        .map(|a| a.id.as_str())
        .collect();
    assert_eq!(mirroring, prerequisites.achievements);
    // dane-ipm, dnp-ipm-2011: 15 indicators in 5 equally weighted dimensions; U9: cut-off 0.33.
    let ipm = rs.exit.ipm.as_ref().unwrap();
    assert_eq!(ipm.indicators.len(), 15);
    assert_eq!(ipm.cutoff, Decimal::from_thousandths(330));
    let mut by_dimension = std::collections::BTreeMap::<&str, i64>::new();
    for i in &ipm.indicators {
        *by_dimension.entry(&i.dimension).or_default() += i.weight.thousandths();
    }
    assert_eq!(by_dimension.len(), 5);
    assert!(by_dimension.values().all(|w| *w == 200), "{by_dimension:?}");
    // The three criteria of issue 17 (U1); income is achievement 11 (U8).
    assert_eq!(
        rs.exit.requires,
        [
            CriterionKind::Income,
            CriterionKind::Ipm,
            CriterionKind::Prerequisites
        ]
    );
    assert_eq!(rs.exit.income_achievement.as_deref(), Some("L11"));
    // Evidence from more than one sector: L02 health first, then the visit (U11).
    let l02 = rs.achievement("L02").unwrap();
    let sources: Vec<(&str, Sector)> = l02
        .evidence
        .iter()
        .map(|e| (e.source.as_str(), rs.source(&e.source).unwrap().sector))
        .collect();
    assert_eq!(
        sources,
        [("health", Sector::Health), ("visit", Sector::Assistance)]
    );
    // L27's household rule is the 2021 script's count (31349111767).
    let l27 = rs.achievement("L27").unwrap();
    assert!(matches!(l27.household_rule, Some(HouseholdRule::Count(_))));
    assert_eq!(l27.concerns, Concerns::Members);
    // L15's threshold depends on minors in the household (31501374472).
    let l15 = rs.achievement("L15").unwrap();
    let compare = l15.evidence[0].compare.as_ref().unwrap();
    assert!(matches!(
        compare.reference,
        Reference::Threshold(Threshold::ByMinors {
            minors_under: 18,
            ..
        })
    ));
    // Achievements with no visit rule read states recorded in the field last (decision U11).
    let l03 = rs.achievement("L03").unwrap();
    assert_eq!(l03.evidence.last().unwrap().source, "visit");
    assert_eq!(
        l03.evidence.last().unwrap().recorded_state_item.as_deref(),
        Some("achievement:L03")
    );
}

// ---- Each achievement --------------------------------------------------------------------------

#[test]
fn l01_identification() {
    let src = "U5; registraduria-tarjeta-identidad, cedula-extranjeria, ppt";
    check(
        "L01",
        vec![
            case(
                "child of 4 with the registro civil",
                src,
                hh().person_docs(
                    "c",
                    Some("2021-01-01"),
                    Some(Female),
                    &[("RC", "1123456789", "2021-01-10")],
                ),
                Reached,
            ),
            case(
                "child of 8 with the registro civil only: not the document for the age",
                src,
                hh().person_docs(
                    "c",
                    Some("2017-01-01"),
                    Some(Male),
                    &[("RC", "1098765432", "2017-01-05")],
                ),
                NotReached,
            ),
            case(
                "adult with the cédula, child of 8 with the tarjeta",
                src,
                hh().person_docs(
                    "a",
                    Some("1995-01-01"),
                    Some(Female),
                    &[("CC", "52123456", "2013-02-01")],
                )
                .person_docs(
                    "c",
                    Some("2017-01-01"),
                    Some(Male),
                    &[
                        ("RC", "1098765432", "2017-01-05"),
                        ("TI", "1098765432", "2024-02-01"),
                    ],
                ),
                Reached,
            ),
            case(
                "an adult without any document",
                src,
                hh().person("a", "1995-01-01", Female),
                NotReached,
            ),
            case(
                "19 with the tarjeta; the cédula is dated after the evaluation day",
                src,
                hh().person_docs(
                    "y",
                    Some("2006-01-01"),
                    Some(Male),
                    &[
                        ("TI", "1006543210", "2014-03-01"),
                        ("CC", "1006543210", "2025-08-01"),
                    ],
                ),
                NotReached,
            ),
            case(
                "a Venezuelan adult with a PPT",
                src,
                hh().person_docs(
                    "v",
                    Some("1990-05-05"),
                    Some(Female),
                    &[("PT", "4512345", "2022-01-15")],
                ),
                Reached,
            ),
            case(
                "birth date unknown: the document expected cannot be said (U3)",
                src,
                hh().person_docs("a", None, Some(Female), &[("CC", "52123456", "2013-02-01")]),
                Unknown,
            ),
        ],
    );
}

#[test]
fn l02_health_affiliation() {
    let src = "dps-unidos-logros-scripts (31488249301): F02 answers 1–3; U11 sector first";
    let adult = || hh().person("a", "1995-01-01", Female);
    check(
        "L02",
        vec![
            case(
                "the health sector records a subsidised affiliation",
                src,
                adult().rec(
                    "health",
                    "a",
                    "2025-03-01",
                    &[("health_affiliation_regime", text("subsidiado"))],
                ),
                Reached,
            ),
            case(
                "no health record; the visit says not affiliated",
                src,
                adult().visit(
                    "a",
                    "2025-03-01",
                    &[("health_affiliation_regime", text("none"))],
                ),
                NotReached,
            ),
            case(
                "the health sector says not affiliated; a later visit says affiliated: the sector decides (U11)",
                src,
                adult()
                    .rec(
                        "health",
                        "a",
                        "2025-01-10",
                        &[("health_affiliation_regime", text("none"))],
                    )
                    .visit(
                        "a",
                        "2025-05-01",
                        &[("health_affiliation_regime", text("subsidiado"))],
                    ),
                NotReached,
            ),
            case(
                "the health record is 13 months old: the visit in the window decides (U6)",
                src,
                adult()
                    .rec(
                        "health",
                        "a",
                        "2024-05-30",
                        &[("health_affiliation_regime", text("none"))],
                    )
                    .visit(
                        "a",
                        "2025-05-01",
                        &[("health_affiliation_regime", text("contributivo"))],
                    ),
                Reached,
            ),
            case(
                "the latest visit decides among visits",
                src,
                adult()
                    .visit(
                        "a",
                        "2025-05-01",
                        &[("health_affiliation_regime", text("especial"))],
                    )
                    .visit(
                        "a",
                        "2024-12-01",
                        &[("health_affiliation_regime", text("none"))],
                    ),
                Reached,
            ),
            case(
                "no record: unknown, never not reached (U3)",
                src,
                adult(),
                Unknown,
            ),
            case(
                "the answer 99 (does not know) decides nothing (U3)",
                src,
                adult().visit(
                    "a",
                    "2025-03-01",
                    &[("health_affiliation_regime", text("99"))],
                ),
                Unknown,
            ),
            case(
                "a record dated after the evaluation day is not yet known",
                src,
                adult().visit(
                    "a",
                    "2025-07-01",
                    &[("health_affiliation_regime", text("subsidiado"))],
                ),
                Unknown,
            ),
            case(
                "one member affiliated, one not: not reached (U10)",
                src,
                adult()
                    .person("b", "1993-01-01", Male)
                    .visit(
                        "a",
                        "2025-03-01",
                        &[("health_affiliation_regime", text("subsidiado"))],
                    )
                    .visit(
                        "b",
                        "2025-03-01",
                        &[("health_affiliation_regime", text("none"))],
                    ),
                NotReached,
            ),
        ],
    );
}

#[test]
fn l03_vaccination() {
    let src = "ASSUMED (unidos-2017 fichas not read): children under 6, PAI up to date";
    check(
        "L03",
        vec![
            case(
                "child of 3 up to date",
                src,
                hh().person("c", "2022-01-01", Male).rec(
                    "health",
                    "c",
                    "2025-02-01",
                    &[("vaccination_up_to_date", yes())],
                ),
                Reached,
            ),
            case(
                "child of 3 not up to date",
                src,
                hh().person("c", "2022-01-01", Male).rec(
                    "health",
                    "c",
                    "2025-02-01",
                    &[("vaccination_up_to_date", no())],
                ),
                NotReached,
            ),
            case(
                "no child under 6",
                src,
                hh().person("c", "2019-01-01", Male),
                NotApplicable,
            ),
            case(
                "the cogestor recorded GESTIONADO (referred, not yet achieved): not reached (U3)",
                src,
                hh().person("c", "2022-01-01", Male).visit(
                    "c",
                    "2025-02-01",
                    &[("achievement:L03", text("GESTIONADO"))],
                ),
                NotReached,
            ),
        ],
    );
}

#[test]
fn l04_children_at_nutritional_risk() {
    let src = "dps-unidos-logros-scripts (31564844011): under 5 with risk signs; U7";
    let child = || hh().person("c", "2022-01-01", Female);
    check(
        "L04",
        vec![
            case(
                "risk recorded, then a health consultation",
                src,
                child()
                    .visit("c", "2025-02-01", &[("at_nutritional_risk", yes())])
                    .rec("health", "c", "2025-03-01", &[("consultation", yes())]),
                Reached,
            ),
            case(
                "a consultation before the risk was recorded does not count (U7)",
                src,
                child()
                    .rec("health", "c", "2025-01-10", &[("consultation", yes())])
                    .visit("c", "2025-02-01", &[("at_nutritional_risk", yes())]),
                Unknown,
            ),
            case(
                "no risk signs: not applicable",
                src,
                child().visit("c", "2025-02-01", &[("at_nutritional_risk", no())]),
                NotApplicable,
            ),
            case(
                "a child of 6 is outside the ages",
                src,
                hh().person("c", "2019-01-01", Female).visit(
                    "c",
                    "2025-02-01",
                    &[("at_nutritional_risk", yes())],
                ),
                NotApplicable,
            ),
        ],
    );
}

#[test]
fn l05_growth_monitoring() {
    let src = "ASSUMED: children under 6 with weight and height recorded";
    check(
        "L05",
        vec![
            case(
                "weight and height recorded",
                src,
                hh().person("c", "2021-01-01", Male).rec(
                    "health",
                    "c",
                    "2025-04-01",
                    &[("weight_and_height_recorded", yes())],
                ),
                Reached,
            ),
            case(
                "not recorded",
                src,
                hh().person("c", "2021-01-01", Male).rec(
                    "health",
                    "c",
                    "2025-04-01",
                    &[("weight_and_height_recorded", no())],
                ),
                NotReached,
            ),
        ],
    );
}

#[test]
fn l06_early_education() {
    let src = "dps-unidos-logros-scripts (31488249301): G01 = 1, ages 2–4; U11";
    check(
        "L06",
        vec![
            case(
                "enrolled in early education per the education sector",
                src,
                hh().person("c", "2022-01-01", Male).rec(
                    "education",
                    "c",
                    "2025-02-15",
                    &[("enrolled_early_education", yes())],
                ),
                Reached,
            ),
            case(
                "the visit says the child of 3 does not attend",
                src,
                hh().person("c", "2022-01-01", Male).visit(
                    "c",
                    "2025-02-15",
                    &[("early_childhood_care", text("does_not_attend"))],
                ),
                NotReached,
            ),
            case(
                "a child of 5 is outside the ages",
                src,
                hh().person("c", "2020-01-01", Male),
                NotApplicable,
            ),
        ],
    );
}

#[test]
fn l07_school() {
    let src = "dps-unidos-logros-scripts (31393679536): H03 = 1 ages 5–17, completed secondary not applicable";
    check(
        "L07",
        vec![
            case(
                "enrolled this year per the education sector",
                src,
                hh().person("c", "2015-01-01", Female).rec(
                    "education",
                    "c",
                    "2025-02-15",
                    &[("enrolled_current_year", yes())],
                ),
                Reached,
            ),
            case(
                "the visit says the child of 10 does not attend",
                src,
                hh().person("c", "2015-01-01", Female).visit(
                    "c",
                    "2025-02-15",
                    &[("attends_school", text("does_not_attend"))],
                ),
                NotReached,
            ),
            case(
                "17, not enrolled, completed secondary: not applicable",
                src,
                hh().person("y", "2008-01-01", Male).rec(
                    "education",
                    "y",
                    "2025-02-15",
                    &[("enrolled_current_year", text("completed_secondary"))],
                ),
                NotApplicable,
            ),
            case(
                "one child not attending, another without evidence: not reached (U10)",
                src,
                hh().person("c", "2015-01-01", Female)
                    .person("d", "2013-01-01", Male)
                    .visit(
                        "c",
                        "2025-02-15",
                        &[("attends_school", text("does_not_attend"))],
                    ),
                NotReached,
            ),
            case(
                "one child attending, another without evidence: unknown (U10)",
                src,
                hh().person("c", "2015-01-01", Female)
                    .person("d", "2013-01-01", Male)
                    .visit("c", "2025-02-15", &[("attends_school", text("attends"))]),
                Unknown,
            ),
        ],
    );
}

#[test]
fn l08_no_child_labour() {
    let src = "dps-unidos-logros-scripts (31488249301): I01 not 1 or 2, ages 8–17";
    check(
        "L08",
        vec![
            case(
                "studying",
                src,
                hh().person("c", "2012-01-01", Male).visit(
                    "c",
                    "2025-02-15",
                    &[("main_activity_last_week", text("studying"))],
                ),
                Reached,
            ),
            case(
                "working",
                src,
                hh().person("c", "2012-01-01", Male).visit(
                    "c",
                    "2025-02-15",
                    &[("main_activity_last_week", text("working"))],
                ),
                NotReached,
            ),
            case(
                "a child of 7 is outside the ages",
                src,
                hh().person("c", "2018-01-01", Male),
                NotApplicable,
            ),
        ],
    );
}

#[test]
fn l09_water() {
    let src = "dps-unidos-logros-scripts (31488249301): urban B06_5 = 1, rural C09 in 1, 2, 6";
    check(
        "L09",
        vec![
            case(
                "urban dwelling on the aqueduct",
                src,
                hh().visit("household", "2025-01-20", &[("aqueduct_connection", yes())]),
                Reached,
            ),
            case(
                "rural household without an improved source",
                src,
                hh().zone(Some(Zone::Rural)).visit(
                    "household",
                    "2025-01-20",
                    &[("water_source_improved", no())],
                ),
                NotReached,
            ),
            case(
                "rural household: the urban question decides nothing",
                src,
                hh().zone(Some(Zone::Rural)).visit(
                    "household",
                    "2025-01-20",
                    &[("aqueduct_connection", yes())],
                ),
                Unknown,
            ),
            case(
                "zone unknown: which question applies cannot be said",
                src,
                hh().zone(None)
                    .visit("household", "2025-01-20", &[("aqueduct_connection", yes())]),
                Unknown,
            ),
        ],
    );
}

#[test]
fn l10_sanitation() {
    let src = "dps-unidos-logros-scripts (31488249301): urban B06_2 = 1, rural C05 in 1, 2";
    check(
        "L10",
        vec![
            case(
                "urban dwelling without sewer",
                src,
                hh().visit("household", "2025-01-20", &[("sewer_connection", no())]),
                NotReached,
            ),
            case(
                "rural household with adequate sanitation",
                src,
                hh().zone(Some(Zone::Rural)).visit(
                    "household",
                    "2025-01-20",
                    &[("sanitation_adequate", yes())],
                ),
                Reached,
            ),
        ],
    );
}

#[test]
fn l11_sufficient_income() {
    let src = "dps-unidos-logros-scripts (32045636265), dane-pobreza-monetaria; U8, U11";
    let income = |n| hh().visit("household", "2025-03-01", &[("per_capita_income", num(n))]);
    check(
        "L11",
        vec![
            case("above the line", src, income(250_000), Reached),
            case("exactly the line (U8)", src, income(LINE), Reached),
            case("one peso below the line", src, income(LINE - 1), NotReached),
            case(
                "the registry gave no line: unknown",
                src,
                income(250_000).figure("extreme_poverty_line", None),
                Unknown,
            ),
            case(
                "no visit: the registry's per-capita income counts",
                src,
                hh().rec(
                    "registry",
                    "household",
                    "2025-01-31",
                    &[("per_capita_income", num(300_000))],
                ),
                Reached,
            ),
            case(
                "the visit comes first (U11)",
                src,
                income(100_000).rec(
                    "registry",
                    "household",
                    "2025-05-31",
                    &[("per_capita_income", num(300_000))],
                ),
                NotReached,
            ),
        ],
    );
}

#[test]
fn l12_military_situation() {
    let src = "ASSUMED: men from 18 with the military situation defined";
    check(
        "L12",
        vec![
            case(
                "a man of 19 with it defined",
                src,
                hh().person("m", "2006-01-01", Male).rec(
                    "registry",
                    "m",
                    "2025-01-31",
                    &[("military_situation_defined", yes())],
                ),
                Reached,
            ),
            case(
                "women only",
                src,
                hh().person("w", "1990-01-01", Female),
                NotApplicable,
            ),
            case(
                "an adult whose sex is not recorded, without evidence",
                src,
                hh().person_docs("x", Some("1990-01-01"), None, &[]),
                Unknown,
            ),
        ],
    );
}

#[test]
fn l13_l14_disability() {
    let src = "ASSUMED: members with a disability; registered (13), supported (14)";
    let member = || {
        hh().person("p", "1980-01-01", Female).rec(
            "registry",
            "p",
            "2025-01-31",
            &[("has_disability", yes())],
        )
    };
    check(
        "L13",
        vec![
            case(
                "registered",
                src,
                member().rec(
                    "health",
                    "p",
                    "2025-02-01",
                    &[("disability_registered", yes())],
                ),
                Reached,
            ),
            case(
                "no disability: not applicable",
                src,
                hh().person("p", "1980-01-01", Female).rec(
                    "registry",
                    "p",
                    "2025-01-31",
                    &[("has_disability", no())],
                ),
                NotApplicable,
            ),
        ],
    );
    check(
        "L14",
        vec![case(
            "without the support needed",
            src,
            member().visit("p", "2025-02-01", &[("assistive_support_available", no())]),
            NotReached,
        )],
    );
}

#[test]
fn l15_food_security() {
    let src = "dps-unidos-logros-scripts (31501374472): not reached at 4 \"yes\" (adults only), 6 (with minors)";
    let answers = |h: Hh, n| {
        h.visit(
            "household",
            "2025-03-01",
            &[("food_insecurity_yes_answers", num(n))],
        )
    };
    let adults = || {
        hh().person("a", "1980-01-01", Female)
            .person("b", "1978-01-01", Male)
    };
    let with_child = || adults().person("c", "2015-01-01", Female);
    check(
        "L15",
        vec![
            case("adults only, 3", src, answers(adults(), 3), Reached),
            case("adults only, 4", src, answers(adults(), 4), NotReached),
            case("with a child, 5", src, answers(with_child(), 5), Reached),
            case("with a child, 6", src, answers(with_child(), 6), NotReached),
            case(
                "a member of unknown age and no known minor: the threshold is unknown",
                src,
                answers(adults().person_docs("x", None, Some(Male), &[]), 5),
                Unknown,
            ),
            case("all 15 questions unanswered", src, adults(), Unknown),
        ],
    );
}

#[test]
fn l16_l19_l20_l24_l26_assumed_achievements() {
    let src = "ASSUMED: definitions not found (sources.md, What could not be found)";
    check(
        "L16",
        vec![case(
            "a member of 15 with access",
            src,
            hh().person("y", "2010-01-01", Female).visit(
                "y",
                "2025-02-01",
                &[("reproductive_health_access", yes())],
            ),
            Reached,
        )],
    );
    check(
        "L19",
        vec![
            case(
                "the household uses digital tools",
                src,
                hh().visit("household", "2025-02-01", &[("uses_digital_tools", yes())]),
                Reached,
            ),
            case(
                "a later state recorded in the field wins over an earlier answer (U11)",
                src,
                hh().visit("household", "2025-01-01", &[("uses_digital_tools", no())])
                    .visit(
                        "household",
                        "2025-04-01",
                        &[("achievement:L19", text("ALCANZADO"))],
                    ),
                Reached,
            ),
            case(
                "NO DETERMINADO recorded in the field decides nothing (U3)",
                src,
                hh().visit(
                    "household",
                    "2025-04-01",
                    &[("achievement:L19", text("NO DETERMINADO"))],
                ),
                Unknown,
            ),
        ],
    );
    check(
        "L20",
        vec![case(
            "one adult of two took financial education (any member)",
            src,
            hh().person("a", "1980-01-01", Female)
                .person("b", "1978-01-01", Male)
                .visit("a", "2025-02-01", &[("financial_education_taken", yes())])
                .visit("b", "2025-02-01", &[("financial_education_taken", no())]),
            Reached,
        )],
    );
    check(
        "L24",
        vec![
            case(
                "a member of 65 with a pension",
                src,
                hh().person("o", "1960-01-01", Male).rec(
                    "registry",
                    "o",
                    "2025-01-31",
                    &[("receives_pension_or_old_age_transfer", yes())],
                ),
                Reached,
            ),
            case(
                "nobody of 60 or over",
                src,
                hh().person("a", "1980-01-01", Female),
                NotApplicable,
            ),
        ],
    );
    check(
        "L26",
        vec![case(
            "tenure not secure",
            src,
            hh().visit("household", "2025-02-01", &[("tenure_secure", no())]),
            NotReached,
        )],
    );
}

#[test]
fn l17_literacy() {
    let src = "dps-unidos-logros-scripts (31488249301): H01 1 reached, 2 not, 99 unknown, from 15";
    check(
        "L17",
        vec![
            case(
                "an adult who cannot read and write",
                src,
                hh().person("a", "1970-01-01", Female).visit(
                    "a",
                    "2025-02-01",
                    &[("reads_and_writes", no())],
                ),
                NotReached,
            ),
            case(
                "an adult and a 15-year-old who can",
                src,
                hh().person("a", "1970-01-01", Female)
                    .person("y", "2010-01-01", Male)
                    .visit("a", "2025-02-01", &[("reads_and_writes", yes())])
                    .visit("y", "2025-02-01", &[("reads_and_writes", yes())]),
                Reached,
            ),
            case(
                "a child of 14 is outside the ages",
                src,
                hh().person("c", "2011-01-01", Male),
                NotApplicable,
            ),
        ],
    );
}

#[test]
fn l18_postsecondary() {
    let src = "dps-unidos-logros-scripts (31488249301): from 15 with the schooling, any member";
    let two = || {
        hh().person("a", "2006-01-01", Female)
            .person("b", "2003-01-01", Male)
            .rec(
                "education",
                "a",
                "2025-01-15",
                &[("completed_secondary", yes())],
            )
            .rec(
                "education",
                "b",
                "2025-01-15",
                &[("completed_secondary", yes())],
            )
    };
    check(
        "L18",
        vec![
            case(
                "one of two attends higher education",
                src,
                two()
                    .visit("a", "2025-02-01", &[("higher_education", text("none"))])
                    .visit("b", "2025-02-01", &[("higher_education", text("attends"))]),
                Reached,
            ),
            case(
                "neither",
                src,
                two()
                    .visit("a", "2025-02-01", &[("higher_education", text("none"))])
                    .visit("b", "2025-02-01", &[("higher_education", text("none"))]),
                NotReached,
            ),
            case(
                "nobody completed secondary",
                src,
                hh().person("a", "2006-01-01", Female).visit(
                    "a",
                    "2025-01-15",
                    &[("completed_secondary", no())],
                ),
                NotApplicable,
            ),
        ],
    );
}

#[test]
fn l21_l22_dwelling() {
    let src = "dps-unidos-logros-scripts (31488249301): B03 not 5 (floors), B02 by zone (walls)";
    check(
        "L21",
        vec![
            case(
                "earth floor",
                src,
                hh().visit(
                    "household",
                    "2025-02-01",
                    &[("floor_material", text("earth"))],
                ),
                NotReached,
            ),
            case(
                "other than earth",
                src,
                hh().visit(
                    "household",
                    "2025-02-01",
                    &[("floor_material", text("other_than_earth"))],
                ),
                Reached,
            ),
        ],
    );
    check(
        "L22",
        vec![
            case(
                "urban, adequate walls",
                src,
                hh().visit(
                    "household",
                    "2025-02-01",
                    &[("walls_adequate_urban", yes())],
                ),
                Reached,
            ),
            case(
                "rural, inadequate walls",
                src,
                hh().zone(Some(Zone::Rural)).visit(
                    "household",
                    "2025-02-01",
                    &[("walls_adequate_rural", no())],
                ),
                NotReached,
            ),
        ],
    );
}

#[test]
fn l23_crowding() {
    let src = "dps-unidos-logros-scripts (31488249301): C03, not reached at ≥ 3 urban, > 3 rural";
    let room = |zone, x| {
        hh().zone(Some(zone)).visit(
            "household",
            "2025-02-01",
            &[("persons_per_sleeping_room", dec(x))],
        )
    };
    check(
        "L23",
        vec![
            case("urban 2.5", src, room(Zone::Urban, 2.5), Reached),
            case("urban 3", src, room(Zone::Urban, 3.0), NotReached),
            case("rural 3", src, room(Zone::Rural, 3.0), Reached),
            case("rural 3.5", src, room(Zone::Rural, 3.5), NotReached),
        ],
    );
}

#[test]
fn l25_productive_activity() {
    let src =
        "dps-unidos-logros-scripts (31488249301): J01 1–7 or 10 reached, I01 = 7 not applicable";
    check(
        "L25",
        vec![
            case(
                "one of two adults works independently",
                src,
                hh().person("a", "1980-01-01", Female)
                    .person("b", "1978-01-01", Male)
                    .visit("a", "2025-02-01", &[("occupation", text("not_working"))])
                    .visit("b", "2025-02-01", &[("occupation", text("independent"))]),
                Reached,
            ),
            case(
                "nobody works",
                src,
                hh().person("a", "1980-01-01", Female).visit(
                    "a",
                    "2025-02-01",
                    &[("occupation", text("unpaid_family_worker"))],
                ),
                NotReached,
            ),
            case(
                "the only adult is unable to work",
                src,
                hh().person("a", "1980-01-01", Female).visit(
                    "a",
                    "2025-02-01",
                    &[("occupation", text("unable_to_work"))],
                ),
                NotApplicable,
            ),
            case(
                "a member of 65 is outside the ages",
                src,
                hh().person("o", "1960-01-01", Male),
                NotApplicable,
            ),
        ],
    );
}

#[test]
fn l27_familias_en_accion() {
    let src = "dps-unidos-logros-scripts (31349111767), familias-en-accion-fase-iv: 1–3 children all, 4+ at least 3, none under 6 left out";
    let enrolled = |h: Hh, id: &str, v: bool| {
        h.rec(
            "familias_en_accion",
            id,
            "2025-01-31",
            &[("enrolled", v.into())],
        )
    };
    let four = |youngest: &str| {
        hh().person("c1", "2013-01-01", Male)
            .person("c2", "2014-01-01", Female)
            .person("c3", "2015-01-01", Male)
            .person("c4", youngest, Female)
    };
    let three_of_four = |youngest: &str| {
        let h = four(youngest);
        let h = enrolled(h, "c1", true);
        let h = enrolled(h, "c2", true);
        let h = enrolled(h, "c3", true);
        enrolled(h, "c4", false)
    };
    check(
        "L27",
        vec![
            case(
                "two children, both enrolled",
                src,
                enrolled(
                    enrolled(
                        hh().person("c1", "2013-01-01", Male)
                            .person("c2", "2015-01-01", Female),
                        "c1",
                        true,
                    ),
                    "c2",
                    true,
                ),
                Reached,
            ),
            case(
                "two children, one enrolled",
                src,
                enrolled(
                    enrolled(
                        hh().person("c1", "2013-01-01", Male)
                            .person("c2", "2015-01-01", Female),
                        "c1",
                        true,
                    ),
                    "c2",
                    false,
                ),
                NotReached,
            ),
            case(
                "four children, three enrolled, the fourth 9",
                src,
                three_of_four("2016-01-01"),
                Reached,
            ),
            case(
                "four children, three enrolled, the fourth under 6",
                src,
                three_of_four("2021-01-01"),
                NotReached,
            ),
            case(
                "no children",
                src,
                hh().person("a", "1980-01-01", Female),
                NotApplicable,
            ),
        ],
    );
}

#[test]
fn l28_jovenes_en_accion() {
    let src = "dps-unidos-logros-scripts (31892930869): 14–28 with secondary completed";
    check(
        "L28",
        vec![
            case(
                "19, secondary completed, enrolled",
                src,
                hh().person("y", "2006-01-01", Female)
                    .rec(
                        "education",
                        "y",
                        "2025-01-15",
                        &[("completed_secondary", yes())],
                    )
                    .rec(
                        "jovenes_en_accion",
                        "y",
                        "2025-02-28",
                        &[("enrolled", yes())],
                    ),
                Reached,
            ),
            case(
                "30 is outside the ages",
                src,
                hh().person("a", "1995-01-01", Female),
                NotApplicable,
            ),
        ],
    );
}

#[test]
fn member_outcomes_carry_the_evidence_used() {
    // U11: the record that decided, with its date and who recorded it.
    let h = hh()
        .person("a", "1995-01-01", Female)
        .rec(
            "health",
            "a",
            "2025-03-01",
            &[("health_affiliation_regime", text("subsidiado"))],
        )
        .visit(
            "a",
            "2025-04-01",
            &[("health_affiliation_regime", text("none"))],
        );
    let eval = h.eval();
    let l02 = eval.achievement("L02").unwrap();
    let m = &l02.members[0];
    assert_eq!(m.person, h.key("a"));
    assert_eq!(m.age, Some(30));
    let ev = m.evidence.as_ref().unwrap();
    assert_eq!(
        (
            ev.source.as_str(),
            ev.sector,
            ev.record_id.as_str(),
            ev.recorded_on.to_string(),
            ev.recorded_by.as_str(),
            ev.item.as_str()
        ),
        (
            "health",
            Sector::Health,
            "health:0",
            "2025-03-01".to_owned(),
            "ips-52001",
            "health_affiliation_regime"
        )
    );
    // A comparison names what the value was compared with.
    let eval = hh()
        .visit(
            "household",
            "2025-03-01",
            &[("per_capita_income", num(200_000))],
        )
        .eval();
    let used = eval.achievement("L11").unwrap().evidence.clone().unwrap();
    let with = used.compared_with.unwrap();
    assert_eq!(
        (with.name.as_str(), with.value),
        ("extreme_poverty_line", Decimal::from_int(LINE).unwrap())
    );
    // The identity evidence names the document type, never its number.
    let eval = hh()
        .person_docs(
            "c",
            Some("2017-01-01"),
            Some(Male),
            &[("RC", "1098765432", "2017-01-05")],
        )
        .eval();
    let note = &eval.achievement("L01").unwrap().members[0].note;
    assert!(note.contains("registro civil"), "{note}");
    assert!(!note.contains("1098765432"), "{note}");
}

// ---- Exit ----------------------------------------------------------------------------------------

/// Every IPM indicator supplied, none deprived.
fn ipm_clear(h: Hh) -> Hh {
    let ids: Vec<String> = unidos()
        .exit
        .ipm
        .unwrap()
        .indicators
        .into_iter()
        .map(|i| i.id)
        .collect();
    let pairs: Vec<(&str, bool)> = ids.iter().map(|i| (i.as_str(), false)).collect();
    h.ipm(&pairs)
}

/// A household of two adults and a child of 10 that meets every exit criterion: income above
/// the line, no IPM deprivation, every prerequisite reached or not applicable.
fn ready_to_leave() -> Hh {
    let h = hh()
        .person("a", "1985-01-01", Female)
        .person("b", "1983-01-01", Male)
        .person("c", "2015-01-01", Female);
    let h = ipm_clear(h)
        .visit(
            "household",
            "2025-03-01",
            &[
                ("per_capita_income", num(260_000)),
                ("aqueduct_connection", yes()),
                ("sewer_connection", yes()),
                ("floor_material", text("other_than_earth")),
                ("walls_adequate_urban", yes()),
                ("persons_per_sleeping_room", dec(1.5)),
            ],
        )
        .rec(
            "education",
            "c",
            "2025-02-15",
            &[("enrolled_current_year", yes())],
        )
        .visit(
            "c",
            "2025-03-01",
            &[("main_activity_last_week", text("studying"))],
        );
    let mut h = h;
    for m in ["a", "b", "c"] {
        h = h.rec(
            "health",
            m,
            "2025-01-20",
            &[("health_affiliation_regime", text("subsidiado"))],
        );
    }
    for m in ["a", "b"] {
        h = h.visit(m, "2025-03-01", &[("reads_and_writes", yes())]);
    }
    h.visit("a", "2025-03-01", &[("occupation", text("employee"))])
}

#[test]
fn exit_criteria() {
    let src_exit = "issue 17 via U1; dane-ipm, dnp-ipm-2011 weights; U3, U4, U8, U9";
    // (what, household, income, ipm, prerequisites, may leave)
    use CriterionState::{Met, NotMet, Unknown as Open};
    let cases: Vec<(&str, Hh, [CriterionState; 3], bool)> = vec![
        (
            "every criterion met",
            ready_to_leave(),
            [Met, Met, Met],
            true,
        ),
        (
            "income below the line",
            ready_to_leave().visit(
                "household",
                "2025-05-01",
                &[("per_capita_income", num(150_000))],
            ),
            [NotMet, Met, Met],
            false,
        ),
        (
            "income unknown: the line is missing (U3)",
            ready_to_leave().figure("extreme_poverty_line", None),
            [Open, Met, Met],
            false,
        ),
        (
            "IPM deprivations summing to exactly 0.33: poor (U9)",
            ready_to_leave().ipm(&[
                ("inasistencia_escolar", true),
                ("material_inadecuado_pisos", true),
                ("hacinamiento_critico", true),
                ("trabajo_informal", true),
                ("barreras_acceso_salud", true),
            ]),
            [Met, NotMet, Met],
            false,
        ),
        (
            "IPM deprivations of 0.29, every indicator known: out",
            ready_to_leave().ipm(&[
                ("inasistencia_escolar", true),
                ("material_inadecuado_pisos", true),
                ("trabajo_informal", true),
                ("barreras_acceso_salud", true),
            ]),
            [Met, Met, Met],
            true,
        ),
        (
            "IPM 0.29 with a 0.04 indicator missing: could reach 0.33, unknown",
            {
                let mut h = ready_to_leave().ipm(&[
                    ("inasistencia_escolar", true),
                    ("material_inadecuado_pisos", true),
                    ("trabajo_informal", true),
                    ("barreras_acceso_salud", true),
                ]);
                h.profile.ipm_deprivations.remove("hacinamiento_critico");
                h
            },
            [Met, Open, Met],
            false,
        ),
        (
            "IPM 0.25 with a 0.04 indicator missing: at most 0.29, out",
            {
                let mut h = ready_to_leave().ipm(&[
                    ("material_inadecuado_pisos", true),
                    ("trabajo_informal", true),
                    ("barreras_acceso_salud", true),
                ]);
                h.profile.ipm_deprivations.remove("hacinamiento_critico");
                h
            },
            [Met, Met, Met],
            true,
        ),
        (
            "a prerequisite not reached: an earth floor",
            ready_to_leave().visit(
                "household",
                "2025-05-01",
                &[("floor_material", text("earth"))],
            ),
            [Met, Met, NotMet],
            false,
        ),
        (
            "a prerequisite unknown: a new member without evidence",
            ready_to_leave().person("d", "1990-01-01", Male),
            [Met, Met, Open],
            false,
        ),
    ];
    let rs = unidos();
    for (what, h, expected, may_leave) in cases {
        let eval = h.eval_with(&rs);
        let got: Vec<CriterionState> = eval.exit.criteria.iter().map(|c| c.state).collect();
        assert_eq!(got, expected, "{what} [{src_exit}]\n{:#?}", eval.exit);
        assert_eq!(eval.exit.may_leave, may_leave, "{what}");
    }
}

#[test]
fn unknown_exit_criteria_name_the_missing_evidence() {
    // U3: an unknown criterion keeps the household in, and the evaluation says what is missing.
    let h = ready_to_leave().person("d", "1990-01-01", Male);
    let eval = h.eval();
    assert!(!eval.exit.may_leave);
    let missing: Vec<(Option<&str>, String)> = eval
        .exit
        .missing
        .iter()
        .map(|m| {
            (
                m.achievement.as_deref(),
                m.person
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            )
        })
        .collect();
    // The new adult has no health affiliation, literacy or occupation record; occupation is
    // "any member" and another adult works, so only L02 and L17 need his evidence.
    assert_eq!(
        missing,
        [
            (Some("L02"), "registry:d".to_owned()),
            (Some("L17"), "registry:d".to_owned())
        ]
    );
    let prerequisites = eval
        .exit
        .criteria
        .iter()
        .find(|c| c.criterion == CriterionKind::Prerequisites)
        .unwrap();
    match &prerequisites.detail {
        CriterionDetail::Prerequisites {
            not_reached,
            unknown,
            not_applicable,
        } => {
            assert!(not_reached.is_empty());
            assert_eq!(unknown, &["L02", "L17"]);
            // No child of 2–4: early education does not apply and counts as reached (U4).
            assert_eq!(not_applicable, &["L06"]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_household_through_its_accompaniment_to_its_exit() {
    // A household of Pasto linked to Unidos: a characterisation visit finds an earth floor and no
    // income above the line; a year later the floor is fixed, the income is above the line and
    // the school and health sectors have recorded the child and everyone's affiliation.
    let rs = unidos();
    let first_visit = hh()
        .person_docs(
            "a",
            Some("1985-01-01"),
            Some(Female),
            &[("CC", "27123456", "2003-02-01")],
        )
        .person_docs(
            "c",
            Some("2015-01-01"),
            Some(Female),
            &[
                ("RC", "1085123456", "2015-01-10"),
                ("TI", "1085123456", "2022-03-01"),
            ],
        );
    let first_visit = ipm_clear(first_visit)
        .visit(
            "household",
            "2024-08-01",
            &[
                ("per_capita_income", num(120_000)),
                ("aqueduct_connection", yes()),
                ("sewer_connection", yes()),
                ("floor_material", text("earth")),
                ("walls_adequate_urban", yes()),
                ("persons_per_sleeping_room", dec(2.0)),
            ],
        )
        .visit(
            "a",
            "2024-08-01",
            &[
                ("reads_and_writes", yes()),
                ("occupation", text("day_labourer")),
            ],
        )
        .visit(
            "c",
            "2024-08-01",
            &[
                ("attends_school", text("attends")),
                ("main_activity_last_week", text("studying")),
            ],
        )
        .visit(
            "a",
            "2024-08-01",
            &[("health_affiliation_regime", text("subsidiado"))],
        )
        .visit(
            "c",
            "2024-08-01",
            &[("health_affiliation_regime", text("subsidiado"))],
        );
    let on_first = rs
        .evaluate(&first_visit.state(), date("2024-08-02"))
        .unwrap();
    assert!(!on_first.exit.may_leave);
    assert_eq!(on_first.achievement("L21").unwrap().state, NotReached);
    assert_eq!(on_first.achievement("L11").unwrap().state, NotReached);
    assert_eq!(on_first.achievement("L01").unwrap().state, Reached);

    let follow_up = first_visit
        .visit(
            "household",
            "2025-05-20",
            &[
                ("floor_material", text("other_than_earth")),
                ("per_capita_income", num(240_000)),
            ],
        )
        .rec(
            "education",
            "c",
            "2025-02-10",
            &[("enrolled_current_year", yes())],
        )
        .rec(
            "health",
            "a",
            "2025-03-05",
            &[("health_affiliation_regime", text("subsidiado"))],
        )
        .rec(
            "health",
            "c",
            "2025-03-05",
            &[("health_affiliation_regime", text("subsidiado"))],
        );
    let eval = follow_up.eval_with(&rs);
    assert!(eval.exit.may_leave, "{:#?}", eval.exit);
    assert_eq!(eval.sisben_group.unwrap().to_string(), "A2");
    assert_eq!(eval.municipality.as_str(), "52001");
    // The first visit's answers are still within 12 months of 2025-06-30 (U6) and carry the
    // member achievements the sectors did not record.
    assert_eq!(eval.achievement("L17").unwrap().state, Reached);
    // A year and a half later, with no new evidence, the visit has aged out: unknown again.
    let later = rs.evaluate(&follow_up.state(), date("2026-12-01")).unwrap();
    assert!(!later.exit.may_leave);
    assert_eq!(later.achievement("L21").unwrap().state, Unknown);
}

#[test]
fn households_outside_the_programme_are_not_evaluated() {
    // U1: households the registry marks as linked (UNIDOS).
    let mut h = ready_to_leave();
    h.profile.programmes.clear();
    assert!(unidos().evaluate(&h.state(), date(ON)).is_none());
}

// ---- Load errors ---------------------------------------------------------------------------------

fn broken(edit: impl Fn(String) -> String) -> String {
    let text = std::fs::read_to_string(common::rules_dir().join("unidos-2021.toml")).unwrap();
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit must change the file");
    AchievementRuleSet::from_toml_str("rules/unidos.toml", &edited)
        .unwrap_err()
        .to_string()
}

#[test]
fn malformed_unidos_files_name_file_key_and_problem() {
    // (what, text replaced, replacement, expected error)
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "an item no source carries",
            "item = \"reads_and_writes\"",
            "item = \"reads_and_wirtes\"",
            "rules/unidos.toml: achievement[L17].evidence[0].item: source \"visit\" does not carry the item \"reads_and_wirtes\" (add it to its items)",
        ),
        (
            "IPM weights not summing to one",
            "id = \"hacinamiento_critico\"\ndimension = \"vivienda_servicios\"\nweight = 0.04",
            "id = \"hacinamiento_critico\"\ndimension = \"vivienda_servicios\"\nweight = 0.05",
            "rules/unidos.toml: exit.ipm.indicator: weights must sum to 1, got 1.01",
        ),
        (
            "an unknown dimension",
            "dimension = \"identificacion\"\nconcerns = \"each_member\"",
            "dimension = \"identity\"\nconcerns = \"each_member\"",
            "rules/unidos.toml: achievement[L01].dimension: no dimension with id \"identity\"",
        ),
        (
            "a comparison with nothing",
            "compare = \"crowding_threshold\"\nreached_when = \"below\"",
            "compare = \"crowding_treshold\"\nreached_when = \"below\"",
            "rules/unidos.toml: achievement[L23].evidence[0].compare: \"crowding_treshold\" is neither a key of [achievement.thresholds] nor a figure a [[source]] supplies",
        ),
        (
            "an unknown IPM indicator",
            "ipm_indicator = \"analfabetismo\"",
            "ipm_indicator = \"analfabetism\"",
            "rules/unidos.toml: achievement[L17].ipm_indicator: no [[exit.ipm.indicator]] with id \"analfabetism\"",
        ),
        (
            "a duplicate number",
            "number = 28",
            "number = 27",
            "rules/unidos.toml: achievement[L28].number: duplicate achievement number 27",
        ),
        (
            "a household achievement with an age",
            "id = \"L09\"\nnumber = 9\nlabel = \"Acceso a agua\"\ndimension = \"habitabilidad\"\nconcerns = \"household\"",
            "id = \"L09\"\nnumber = 9\nlabel = \"Acceso a agua\"\ndimension = \"habitabilidad\"\nconcerns = \"household\"\nage_min = 3",
            "rules/unidos.toml: achievement[L09].concerns: member selection keys (ages, sex, facts) need concerns = \"members\"",
        ),
        (
            "recorded_after a fact not selected on",
            "recorded_after = \"at_nutritional_risk\"",
            "recorded_after = \"has_disability\"",
            "rules/unidos.toml: achievement[L04].evidence[0].recorded_after: \"has_disability\" is not a fact this achievement selects on (as true)",
        ),
        (
            "a criterion named twice",
            "requires = [\"income\", \"ipm\", \"prerequisites\"]",
            "requires = [\"income\", \"ipm\", \"prerequisites\", \"income\"]",
            "rules/unidos.toml: exit.requires: names a criterion twice",
        ),
        (
            "a state named twice",
            "unknown = [\"NO DETERMINADO\", \"SIN DATO\"]",
            "unknown = [\"NO DETERMINADO\", \"ALCANZADO\"]",
            "rules/unidos.toml: states.unknown: \"ALCANZADO\" is listed twice",
        ),
        (
            "an unknown key",
            "reached_when = \"at_or_above\"",
            "reached_wen = \"at_or_above\"",
            "rules/unidos.toml: achievement.evidence.reached_wen (line",
        ),
        (
            "a cut-off above one",
            "cutoff = 0.33",
            "cutoff = 1.33",
            "rules/unidos.toml: exit.ipm.cutoff: must be above 0 and at most 1, got 1.33",
        ),
    ];
    for (what, from, to, expected) in cases {
        let e = broken(|t| t.replacen(from, to, 1));
        assert!(e.starts_with(expected), "{what}: {e}");
    }
}

#[test]
fn the_prerequisite_flag_and_list_must_agree() {
    // The two places that say which achievements are prerequisites (U4) must agree.
    let e = broken(|t| {
        t.replacen(
            "label = \"Leer y escribir\"\ndimension = \"educacion\"\nconcerns = \"members\"\nage_min = 15\nhousehold_rule = \"all_applicable\"\nprerequisite = true",
            "label = \"Leer y escribir\"\ndimension = \"educacion\"\nconcerns = \"members\"\nage_min = 15\nhousehold_rule = \"all_applicable\"\nprerequisite = false",
            1,
        )
    });
    assert_eq!(
        e,
        "rules/unidos.toml: achievement[L17].prerequisite: is false but exit.prerequisites.achievements lists it; the two must agree"
    );
}
