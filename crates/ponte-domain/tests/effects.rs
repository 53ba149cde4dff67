//! Family effects over multi-period histories: both ladders, the window, cancellation,
//! interruption during family follow-up, appeals and the adolescent exception.
//!
//! Source keys: `[S8]` is `docs/sources.md#s8`, and so on; decisions are in `docs/rules.md`.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ponte_domain::effects::{EffectStatus, FamilyEffects};
use ponte_domain::ids::Nis;
use ponte_domain::outcome::Outcome;
use ponte_domain::records::{AppealStatus, FamilyState, PersonRecord, Sex};
use ponte_domain::rules::{MoneyEffect, RuleSet};

/// Outcomes of a student born `born`, with attendance 50% in the first month of each listed
/// bimester and 100% in every other bimester month of `years`.
fn student(rs: &RuleSet, n: Nis, born: &str, low: &[&str], years: (i32, i32)) -> Vec<Outcome> {
    let mut recs = Vec::new();
    for y in years.0..=years.1 {
        for b in 1..=5 {
            let bim = format!("{y}-B{b}");
            let first = period(&bim).first_month().to_string();
            let pct = if low.contains(&bim.as_str()) { 10 } else { 20 };
            recs.push(PersonRecord::School(school(n, &first, 20, pct, None)));
        }
    }
    let p = person(profile(n, "FAM", born, Sex::Male), recs);
    rs.evaluate_person_between(
        &p,
        month(&format!("{}-01", years.0)),
        month(&format!("{}-12", years.1)),
    )
}

fn ladder(e: &FamilyEffects) -> Vec<(String, String, EffectStatus)> {
    e.family
        .iter()
        .map(|x| (x.repercussion_month.to_string(), x.name.clone(), x.status))
        .collect()
}

fn steps(v: &[(&str, &str, EffectStatus)]) -> Vec<(String, String, EffectStatus)> {
    v.iter()
        .map(|(m, n, s)| ((*m).to_owned(), (*n).to_owned(), *s))
        .collect()
}

use EffectStatus::{Applied, Interrupted};

#[test]
fn ladder_2025_alert_block_suspension_repeats() {
    // Portaria 1.058/2025 [S8]: 1st alert, 2nd block (1 month), 3rd and later suspension
    // (2 months); results of a bimester applied two months after it ends (Apr–May → July) [S8].
    let rs = bf2023();
    let outs = student(
        &rs,
        nis(1),
        "2015-01-01",
        &["2025-B1", "2025-B2", "2025-B3", "2025-B4"],
        (2025, 2025),
    );
    let e = rs.evaluate_family(&family("FAM"), &outs);
    assert_eq!(
        ladder(&e),
        steps(&[
            ("2025-05", "alert", Applied),
            ("2025-07", "block", Applied),
            ("2025-09", "suspension", Applied),
            ("2025-11", "suspension", Applied),
        ])
    );
    assert_eq!(e.family[1].money, MoneyEffect::Block);
    assert_eq!(e.family[1].months, 1);
    assert_eq!(e.family[2].months, 2);
    // Block only in its repercussion month; suspension covers two months.
    assert_eq!(
        e.family_effect_in(month("2025-07"))
            .map(|x| x.name.as_str()),
        Some("block")
    );
    assert_eq!(e.family_effect_in(month("2025-08")), None);
    assert_eq!(
        e.family_effect_in(month("2025-10"))
            .map(|x| x.name.as_str()),
        Some("suspension")
    );
    assert!(e.family_non_compliant_in(&period("2025-B3")));
    assert!(!e.family_non_compliant_in(&period("2025-B5")));
}

#[test]
fn window_of_six_months_decides_successive() {
    // docs/rules.md, decision 5: successive when the new non-compliant period ends within six
    // months of the previous one (2012 window kept as default [S5]).
    let rs = bf2023();
    // B1 ends March, B4 ends September: 6 months → successive → block.
    let outs = student(
        &rs,
        nis(2),
        "2015-01-01",
        &["2025-B1", "2025-B4"],
        (2025, 2025),
    );
    let names: Vec<_> = rs
        .evaluate_family(&family("FAM"), &outs)
        .family
        .iter()
        .map(|x| x.name.clone())
        .collect();
    assert_eq!(names, ["alert", "block"]);
    // B1 ends March, B5 ends November: 8 months → starts again at the alert.
    let outs = student(
        &rs,
        nis(2),
        "2015-01-01",
        &["2025-B1", "2025-B5"],
        (2025, 2025),
    );
    let names: Vec<_> = rs
        .evaluate_family(&family("FAM"), &outs)
        .family
        .iter()
        .map(|x| x.name.clone())
        .collect();
    assert_eq!(names, ["alert", "alert"]);
}

#[test]
fn cancellation_2025_after_twelve_months_in_suspension_with_follow_up() {
    // [S8] + docs/rules.md, decision 6: cancellation only after 12 consecutive months in
    // suspension, with active family follow-up and a new non-compliance.
    let rs = bf2023();
    let low = [
        "2025-B1", "2025-B2", "2025-B3", "2025-B4", "2025-B5", "2026-B1", "2026-B2", "2026-B3",
    ];
    let outs = student(&rs, nis(3), "2014-01-01", &low, (2025, 2026));
    // Without follow-up: suspension keeps repeating.
    let e = rs.evaluate_family(&family("FAM"), &outs);
    assert_eq!(e.family.last().unwrap().name, "suspension");
    assert_eq!(e.family.len(), 8);
    // With follow-up (no interruption): first suspension 2025-09; 2026-09 is 12 months later.
    let mut fam = family("FAM");
    fam.apply(follow_up("FAM", "2025-10-01", None)).unwrap();
    let e = rs.evaluate_family(&fam, &outs);
    let tail: Vec<_> = e
        .family
        .iter()
        .rev()
        .take(2)
        .map(|x| (x.repercussion_month.to_string(), x.name.clone()))
        .collect();
    assert_eq!(
        tail,
        [
            ("2026-09".to_owned(), "cancellation".to_owned()),
            ("2026-07".to_owned(), "suspension".to_owned())
        ]
    );
    assert_eq!(e.family.last().unwrap().money, MoneyEffect::Cancel);
    assert!(
        e.family_effect_in(month("2027-03"))
            .is_some_and(|x| x.money == MoneyEffect::Cancel)
    );
}

#[test]
fn interruption_during_follow_up_stops_new_effects_for_six_months() {
    // [S4 press][S7]: effects interrupted for up to six months while the family is followed.
    // DECISION: interrupted non-compliance still advances the ladder.
    let rs = bf2023();
    let outs = student(
        &rs,
        nis(4),
        "2015-01-01",
        &["2025-B1", "2025-B2", "2025-B3", "2025-B4", "2025-B5"],
        (2025, 2025),
    );
    let mut fam = family("FAM");
    fam.apply(follow_up("FAM", "2025-06-01", Some("2025-06-15")))
        .unwrap();
    let e = rs.evaluate_family(&fam, &outs);
    assert_eq!(
        ladder(&e),
        steps(&[
            ("2025-05", "alert", Applied),
            ("2025-07", "block", Interrupted),
            ("2025-09", "suspension", Interrupted),
            ("2025-11", "suspension", Interrupted),
            // 7 months after the request: effects resume.
            ("2026-01", "suspension", Applied),
        ])
    );
    assert_eq!(e.family_effect_in(month("2025-07")), None);
}

#[test]
fn accepted_appeal_removes_the_effect_and_its_place_in_history() {
    let rs = bf2023();
    let outs = student(
        &rs,
        nis(5),
        "2015-01-01",
        &["2025-B1", "2025-B2", "2025-B3"],
        (2025, 2025),
    );
    // Rejected or pending appeals change nothing.
    let mut fam = family("FAM");
    fam.apply(appeal("FAM", "2025-B2", AppealStatus::Rejected))
        .unwrap();
    let names: Vec<_> = rs
        .evaluate_family(&fam, &outs)
        .family
        .iter()
        .map(|x| x.name.clone())
        .collect();
    assert_eq!(names, ["alert", "block", "suspension"]);
    // Accepted (same record id, higher version): the B2 non-compliance leaves the history
    // (DECISION; docs/rules.md, decision 8: an accepted appeal removes the effect it targets).
    let mut accepted = appeal("FAM", "2025-B2", AppealStatus::Accepted);
    if let ponte_domain::records::FamilyRecord::Appeal(a) = &mut accepted {
        a.version = 2;
    }
    fam.apply(accepted).unwrap();
    let e = rs.evaluate_family(&fam, &outs);
    // The ladder goes on without B2 (B3 is the second step, a block); the effect the appeal
    // removed stays visible, revoked, at the step it would have been, naming the appeal.
    let steps: Vec<_> = e
        .family
        .iter()
        .map(|x| (x.name.as_str(), x.status, x.appeals.clone()))
        .collect();
    assert_eq!(
        steps,
        [
            ("alert", Applied, vec![]),
            (
                "block",
                EffectStatus::RevokedByAppeal,
                vec!["sicon-recurso:FAM:2025-B2".to_owned()]
            ),
            ("block", Applied, vec![]),
        ]
    );
    assert_eq!(e.family[1].causes[0].period, period("2025-B2"));
    assert_eq!(e.removed_by_appeal.len(), 1);
    assert_eq!(e.removed_by_appeal[0].period, period("2025-B2"));
    // Only applied effects are in force: B2's block never takes hold.
    assert_eq!(
        e.family_effect_in(e.family[1].repercussion_month),
        None,
        "the revoked block is not in force"
    );
}

#[test]
fn adolescent_non_compliance_affects_only_the_adolescent() {
    // [S8][S3 art. 17 §1][S5]: 16–17 affects only the adolescent's variable benefit.
    let rs = bf2023();
    let teen = nis(6);
    let outs = student(
        &rs,
        teen,
        "2008-06-01",
        &["2025-B1", "2025-B2"],
        (2025, 2025),
    );
    let e = rs.evaluate_family(&family("FAM"), &outs);
    assert!(e.family.is_empty());
    let member: Vec<_> = e.members[&teen].iter().map(|x| x.name.clone()).collect();
    assert_eq!(member, ["alert", "block"]);
}

#[test]
fn not_followed_never_counts_as_non_compliance() {
    // docs/rules.md, "How an outcome is decided": NOT_FOLLOWED counts against follow-up rates,
    // never as non-compliance.
    let rs = bf2023();
    let n = nis(7);
    let p = person(profile(n, "FAM", "2015-01-01", Sex::Male), vec![]);
    let outs = rs.evaluate_person_between(&p, month("2025-01"), month("2025-12"));
    assert!(
        outs.iter()
            .any(|o| o.status == ponte_domain::outcome::Status::NotFollowed)
    );
    let e = rs.evaluate_family(&family("FAM"), &outs);
    assert!(e.family.is_empty() && e.members.is_empty());
}

#[test]
fn family_non_compliance_aggregates_members_and_conditionalities() {
    // [S5]: any member failing any condition makes the family non-compliant. Health S1 (ends
    // June, lag 3) and education B3 (ends July, lag 2) are repercussed together in September
    // (DECISION), so they form one step.
    let rs = bf2023();
    let kid = nis(8);
    let toddler = nis(9);
    let mut outs = student(&rs, kid, "2015-01-01", &["2025-B3"], (2025, 2025));
    let p = person(
        profile(toddler, "FAM", "2023-01-01", Sex::Female),
        vec![PersonRecord::Health(health(toddler, "2025-03-01"))],
    );
    outs.extend(rs.evaluate_person(&p, period("2025-S1")));
    let e = rs.evaluate_family(&family("FAM"), &outs);
    assert_eq!(e.family.len(), 1);
    assert_eq!(e.family[0].repercussion_month, month("2025-09"));
    assert_eq!(e.family[0].name, "alert");
    let who: Vec<_> = e.family[0].causes.iter().map(|c| c.nis).collect();
    assert!(who.contains(&kid) && who.contains(&toddler));
    // Outcomes of another family are ignored.
    assert!(
        rs.evaluate_family(&family("OTHER"), &outs)
            .family
            .is_empty()
    );
}

fn member_of_family(state: &FamilyState) -> String {
    state.family_id().to_string()
}

#[test]
fn ladder_2012_wording_and_cancellation_from_follow_up_start() {
    // Portaria 251/2012 [S5][S6]: advertência, bloqueio (30 days), suspensão (60 days), repeated;
    // cancellation only with acompanhamento familiar in Sicon, a suspension before/during it,
    // and another non-compliance with effect 12 months after the Sicon registration [S5].
    let rs = bf2012();
    let low = [
        "2014-B1", "2014-B2", "2014-B3", "2014-B4", "2014-B5", "2015-B1",
    ];
    let outs = student(&rs, nis(10), "2005-01-01", &low, (2014, 2015));
    let e = rs.evaluate_family(&family("FAM"), &outs);
    let names: Vec<_> = e
        .family
        .iter()
        .map(|x| x.local_name.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        [
            "advertência",
            "bloqueio",
            "suspensão",
            "suspensão",
            "suspensão",
            "suspensão"
        ]
    );
    // Follow-up registered 2014-03-01: 2015-05 (B1 2015 + 2) is ≥ 12 months later → cancel.
    let mut fam = family("FAM");
    fam.apply(follow_up("FAM", "2014-03-01", None)).unwrap();
    assert_eq!(member_of_family(&fam), "FAM");
    let e = rs.evaluate_family(&fam, &outs);
    let last = e.family.last().unwrap();
    assert_eq!(
        (last.repercussion_month.to_string(), last.name.as_str()),
        ("2015-05".to_owned(), "cancellation")
    );
    // Registered 2014-09-01: only 8 months before 2015-05 → still suspension.
    let mut fam = family("FAM");
    fam.apply(follow_up("FAM", "2014-09-01", None)).unwrap();
    assert_eq!(
        rs.evaluate_family(&fam, &outs).family.last().unwrap().name,
        "suspension"
    );
}

#[test]
fn scfv_non_compliance_follows_the_same_ladder_in_2012() {
    // Agência Brasil (June 2010), docs/sources.md#peti-scfv-2010: same graduated effects.
    let rs = bf2012();
    let n = nis(11);
    let prof = with_programmes(profile(n, "FAM", "2005-01-01", Sex::Male), &["PBF", "PETI"]);
    let p = person(
        prof,
        vec![
            PersonRecord::Scfv(scfv(n, "2015-02", 40, 20)),
            PersonRecord::Scfv(scfv(n, "2015-04", 40, 20)),
        ],
    );
    let outs = rs.evaluate_person_between(&p, month("2015-01"), month("2015-06"));
    let e = rs.evaluate_family(&family("FAM"), &outs);
    let names: Vec<_> = e.family.iter().map(|x| x.name.clone()).collect();
    assert_eq!(names, ["warning", "block"]);
}
