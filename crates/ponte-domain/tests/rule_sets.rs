//! Loading rule sets: every file under `rules/` loads; malformed or inconsistent ones fail with
//! a message naming the file, the key and the problem; selection by effective date.
//!
//! Source keys: `[S1]` is `docs/sources.md#s1`, and so on.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ponte_domain::achievements::AchievementRuleSet;
use ponte_domain::rule_file::RuleFile;
use ponte_domain::rules::{EffectScope, Method, RuleBook, RuleSet};

#[test]
fn every_rule_file_loads() {
    // Each file with the loader its content calls for: conditionality rule sets with
    // `RuleSet`, household-achievement rule sets (`[[achievement]]`) with
    // `AchievementRuleSet`.
    let mut names = Vec::new();
    let mut achievement_sets = Vec::new();
    for entry in std::fs::read_dir(rules_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.display().to_string();
            match RuleFile::from_toml_str(&name, &text).unwrap_or_else(|e| panic!("{e}")) {
                RuleFile::Conditionalities(rs) => {
                    assert_eq!(
                        RuleSet::from_toml_str(&name, &text).as_ref(),
                        Ok(rs.as_ref())
                    );
                    names.push(rs.id);
                }
                RuleFile::Achievements(rs) => {
                    assert_eq!(
                        AchievementRuleSet::from_toml_str(&name, &text).as_ref(),
                        Ok(rs.as_ref())
                    );
                    achievement_sets.push(rs.id);
                }
            }
        }
    }
    names.sort();
    assert_eq!(
        names,
        [
            "bolsa-familia-2012",
            "bolsa-familia-2023",
            "example-cct-2024"
        ]
    );
    assert_eq!(achievement_sets, ["unidos-2021"]);
}

#[test]
fn each_loader_refuses_the_other_engines_files() {
    // The conditionality loader refuses Unidos, naming the first key it does not know; the
    // achievement loader refuses Bolsa Família the same way.
    let unidos = std::fs::read_to_string(rules_dir().join("unidos-2021.toml")).unwrap();
    let e = RuleSet::from_toml_str("rules/unidos-2021.toml", &unidos)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("rules/unidos-2021.toml: "), "{e}");
    assert!(e.contains("unknown field `achievement`"), "{e}");
    let bf = std::fs::read_to_string(rules_dir().join("bolsa-familia-2023.toml")).unwrap();
    let e = AchievementRuleSet::from_toml_str("rules/bolsa-familia-2023.toml", &bf)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("rules/bolsa-familia-2023.toml: "), "{e}");
    assert!(e.contains("unknown field"), "{e}");
}

#[test]
fn bolsa_familia_2023_carries_the_law() {
    let rs = bf2023();
    let edu = rs.conditionality("education").unwrap();
    assert_eq!(edu.method, Method::MonthlyAttendance);
    // Lei 14.601/2023 art. 10 IV [S1]: 60% for 4 to <6, 75% for 6 to <18.
    let t: Vec<_> = edu
        .bands
        .iter()
        .map(|b| {
            (
                b.selection.age_min,
                b.selection.age_max_exclusive,
                b.threshold_percent,
                b.effects,
            )
        })
        .collect();
    assert_eq!(
        t,
        [
            (Some(4), Some(6), Some(60), EffectScope::Family),
            (Some(6), Some(16), Some(75), EffectScope::Family),
            // 16–17 affect only the adolescent's benefit [S8][S3][S5].
            (Some(16), Some(18), Some(75), EffectScope::Member),
        ]
    );
    // The SCFV condition is not in the 2023 law [S1].
    assert!(rs.conditionality("assistance").is_none());
    // 2025 ladder [S8]: alert, block (1 month), suspension (2 months).
    let steps: Vec<_> = rs
        .effects
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.months))
        .collect();
    assert_eq!(steps, [("alert", 0), ("block", 1), ("suspension", 2)]);
}

#[test]
fn rule_book_selects_by_effective_date() {
    let book = RuleBook::new(vec![bf2012(), bf2023(), load("example-cct")]).unwrap();
    let pick = |d: &str| book.select("bolsa-familia", date(d)).map(|r| r.id.as_str());
    assert_eq!(pick("2012-12-11"), None);
    assert_eq!(pick("2015-06-01"), Some("bolsa-familia-2012"));
    assert_eq!(pick("2023-03-01"), Some("bolsa-familia-2012"));
    assert_eq!(pick("2023-03-02"), Some("bolsa-familia-2023"));
    assert_eq!(pick("2025-04-01"), Some("bolsa-familia-2023"));
    assert_eq!(
        book.select("example-cct", date("2025-01-01"))
            .map(|r| r.id.as_str()),
        Some("example-cct-2024")
    );
}

#[test]
fn overlapping_rule_sets_of_one_programme_are_rejected() {
    let mut other = bf2023();
    other.id = "bolsa-familia-2023-copy".to_owned();
    let e = RuleBook::new(vec![bf2023(), other])
        .unwrap_err()
        .to_string();
    assert!(e.contains("in force at the same time"), "{e}");
}

/// Takes the 2023 file, applies a textual edit, and returns the load error.
fn broken(edit: impl Fn(String) -> String) -> String {
    let text = std::fs::read_to_string(rules_dir().join("bolsa-familia-2023.toml")).unwrap();
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit must change the file");
    RuleSet::from_toml_str("rules/broken.toml", &edited)
        .unwrap_err()
        .to_string()
}

#[test]
fn malformed_rule_sets_name_file_key_and_problem() {
    // (what, text replaced in the 2023 file, replacement, expected error)
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "threshold above 100",
            "threshold_percent = 60",
            "threshold_percent = 160",
            "rules/broken.toml: conditionality[education].band[age-4-5].threshold_percent: must be between 0 and 100, got 160",
        ),
        (
            "missing threshold",
            "threshold_percent = 60\n",
            "",
            "rules/broken.toml: conditionality[education].band[age-4-5].threshold_percent: is required for monthly attendance",
        ),
        (
            "overlapping age bands",
            "age_min = 6\n",
            "age_min = 5\n",
            "rules/broken.toml: conditionality[education].band[age-6-15]: age range 5..16 overlaps band \"age-4-5\" (4..6)",
        ),
        (
            "empty age band",
            "age_max_exclusive = 6\n",
            "age_max_exclusive = 4\n",
            "rules/broken.toml: conditionality[education].band[age-4-5].age_max_exclusive: must be greater than age_min (4), got 4",
        ),
        (
            "method and source disagree",
            "source = \"health\"",
            "source = \"school_attendance\"",
            "rules/broken.toml: conditionality[health].source: source SchoolAttendance cannot be evaluated with method HealthChecks",
        ),
        (
            "bad date",
            "effective_from = \"2023-03-02\"",
            "effective_from = \"2023-02-30\"",
            "rules/broken.toml: rule_set.effective_from: day must be between 1 and 28 for 2023-02, got 30",
        ),
        (
            "weights do not sum to one",
            "weight = 0.5",
            "weight = 0.6",
            "rules/broken.toml: indicators.fator_i: weights must sum to 1, got 1.1",
        ),
        (
            "rate from unknown conditionality",
            "conditionality = \"health\"",
            "conditionality = \"saude\"",
            "rules/broken.toml: indicators.follow_up_rate[TAAS].conditionality: no conditionality with id \"saude\"",
        ),
        (
            "duplicate conditionality",
            "id = \"health\"",
            "id = \"education\"",
            "rules/broken.toml: conditionality[education].id: duplicate conditionality id \"education\"",
        ),
        (
            "money step without months",
            "money = \"block\"\nmonths = 1",
            "money = \"block\"\nmonths = 0",
            "rules/broken.toml: effects.step[1].months: a step with a money effect must last at least 1 month",
        ),
    ];
    for (what, from, to, expected) in cases {
        assert_eq!(broken(|t| t.replacen(from, to, 1)), *expected, "{what}");
    }
}

#[test]
fn type_and_syntax_errors_name_the_line_and_key() {
    // Unknown key: the toml error is located at the key.
    let e = broken(|t| t.replacen("threshold_percent = 60", "treshold_percent = 60", 1));
    assert!(
        e.starts_with("rules/broken.toml: conditionality.band.treshold_percent (line "),
        "{e}"
    );
    assert!(e.contains("unknown field `treshold_percent`"), "{e}");
    // Wrong type.
    let e = broken(|t| t.replacen("threshold_percent = 60", "threshold_percent = \"60\"", 1));
    assert!(
        e.starts_with("rules/broken.toml: conditionality.band.threshold_percent (line "),
        "{e}"
    );
    // Unknown enum value.
    let e = broken(|t| t.replacen("period = \"bimester\"", "period = \"fortnight\"", 1));
    assert!(e.contains("conditionality.period"), "{e}");
    assert!(e.contains("fortnight"), "{e}");
    // Syntax error.
    let e = RuleSet::from_toml_str("x.toml", "[rule_set\nid = 1").unwrap_err();
    assert_eq!(e.file, "x.toml");
    assert!(e.key.contains("line 1"), "{e}");
    // Missing table.
    let e = RuleSet::from_toml_str("x.toml", "")
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing field `rule_set`"), "{e}");
}
