//! Property tests: identifier validity and single-digit-change rejection; evaluation is
//! independent of record order and idempotent under replay.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ponte_domain::ids::{Cpf, IBGE_CHECK_DIGIT_EXCEPTIONS, IbgeMunicipality, Nis};
use ponte_domain::outcome::Outcome;
use ponte_domain::records::{
    Attendance, HealthRecord, PersonRecord, PersonState, SchoolAttendanceMonth, Sex,
};
use proptest::prelude::*;

fn digits(s: &str) -> Vec<u32> {
    s.bytes().map(|b| u32::from(b - b'0')).collect()
}

fn nis_remainder(body: &[u32]) -> u32 {
    body.iter()
        .zip([3, 2, 9, 8, 7, 6, 5, 4, 3, 2])
        .map(|(d, w)| d * w)
        .sum::<u32>()
        % 11
}

fn cpf_remainder(body: &[u32]) -> u32 {
    let n = body.len() as u32 + 1;
    body.iter()
        .enumerate()
        .map(|(i, d)| d * (n - i as u32))
        .sum::<u32>()
        % 11
}

/// Replaces digit `pos` of `s` by `(digit + delta) mod 10`, delta in 1..=9.
fn change(s: &str, pos: usize, delta: u8) -> String {
    s.bytes()
        .enumerate()
        .map(|(i, b)| {
            if i == pos {
                char::from(b'0' + (b - b'0' + delta) % 10)
            } else {
                char::from(b)
            }
        })
        .collect()
}

fn body(len: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(0u8..10, len)
        .prop_map(|v| v.into_iter().map(|d| char::from(b'0' + d)).collect())
}

proptest! {
    #[test]
    fn generated_nis_validates_with_and_without_punctuation(b in body(10)) {
        prop_assume!(!b.bytes().all(|c| c == b.as_bytes()[0]));
        if let Ok(n) = Nis::with_check_digit(&b) {
            let s = n.as_str();
            prop_assert_eq!(Nis::parse(s).unwrap(), n);
            let punct = format!("{}.{}.{}-{}", &s[..3], &s[3..8], &s[8..10], &s[10..]);
            prop_assert_eq!(Nis::parse(&punct).unwrap(), n);
        }
    }

    /// Any single-digit change of a valid NIS is rejected, except the one blind spot of the
    /// published rule: DV 10 and 11 both map to 0, so a change that moves the weighted-sum
    /// remainder between 0 and 1 keeps DV 0 (docs/rules.md, "NIS").
    #[test]
    fn single_digit_change_of_nis_is_rejected(b in body(10), pos in 0usize..11, delta in 1u8..10) {
        let Ok(n) = Nis::with_check_digit(&b) else { return Ok(()) };
        let changed = change(n.as_str(), pos, delta);
        if Nis::parse(&changed).is_ok() {
            let r0 = nis_remainder(&digits(&n.as_str()[..10]));
            let r1 = nis_remainder(&digits(&changed[..10]));
            prop_assert!(pos < 10 && r0.min(r1) == 0 && r0.max(r1) == 1, "{} -> {} accepted", n, changed);
        }
    }

    #[test]
    fn generated_cpf_validates(b in body(9)) {
        if let Ok(c) = Cpf::with_check_digits(&b) {
            prop_assert_eq!(Cpf::parse(c.as_str()).unwrap(), c);
        }
    }

    /// Same blind spot as the NIS (r < 2 → 0): a change can only be accepted if it swaps the
    /// first check digit's remainder between 0 and 1 (the second digit cannot save it on its own;
    /// note its weight for the first digit is 11 ≡ 0, so it never sees a change there).
    #[test]
    fn single_digit_change_of_cpf_is_rejected(b in body(9), pos in 0usize..11, delta in 1u8..10) {
        let Ok(c) = Cpf::with_check_digits(&b) else { return Ok(()) };
        let changed = change(c.as_str(), pos, delta);
        if Cpf::parse(&changed).is_ok() {
            let (o, x) = (digits(c.as_str()), digits(&changed));
            let (r0, r1) = (cpf_remainder(&o[..9]), cpf_remainder(&x[..9]));
            prop_assert!(pos < 9 && r0.min(r1) == 0 && r0.max(r1) == 1, "{} -> {} accepted", c, changed);
        }
    }

    #[test]
    fn generated_ibge_validates(uf in prop::sample::select(ponte_domain::ids::UF_CODES.to_vec()), rest in body(4)) {
        let code = IbgeMunicipality::with_check_digit(&format!("{uf}{rest}")).unwrap();
        prop_assert_eq!(IbgeMunicipality::parse(code.as_str()).unwrap(), code);
    }

    /// Any single-digit change of a valid IBGE code is rejected, unless it lands on one of the
    /// nine official exceptions.
    #[test]
    fn single_digit_change_of_ibge_is_rejected(uf in prop::sample::select(ponte_domain::ids::UF_CODES.to_vec()), rest in body(4), pos in 0usize..7, delta in 1u8..10) {
        let code = IbgeMunicipality::with_check_digit(&format!("{uf}{rest}")).unwrap();
        let changed = change(code.as_str(), pos, delta);
        if IbgeMunicipality::parse(&changed).is_ok() {
            prop_assert!(IBGE_CHECK_DIGIT_EXCEPTIONS.contains(&changed.as_str()), "{} -> {}", code, changed);
        }
    }
}

#[test]
fn the_nis_blind_spot_exists() {
    // Documents why the property above has an exception: two valid NIS one digit apart.
    let mut found = None;
    'outer: for i in 0..100_000u64 {
        let n = Nis::with_check_digit(&format!("{:010}", 1_000_000_000 + i)).unwrap();
        for pos in 0..10 {
            for delta in 1..10 {
                let c = change(n.as_str(), pos, delta);
                if Nis::parse(&c).is_ok() {
                    found = Some((n, c));
                    break 'outer;
                }
            }
        }
    }
    let (a, b) = found.unwrap();
    assert!(
        a.check_digit_from_remainder_one()
            || Nis::parse(&b).unwrap().check_digit_from_remainder_one()
    );
}

// --- Evaluation: order independence and idempotence -------------------------------------------

fn school_strategy(n: Nis) -> impl Strategy<Value = PersonRecord> {
    (
        0u8..4,
        1u64..4,
        prop::bool::weighted(0.15),
        2u8..12,
        0u32..=20,
        prop::sample::select(vec![None, Some("1a"), Some("58")]),
    )
        .prop_map(move |(id, version, retracted, m, attended, code)| {
            PersonRecord::School(SchoolAttendanceMonth {
                record_id: format!("s{id}"),
                version,
                retracted,
                nis: n,
                inep: None,
                month: ponte_domain::period::Month::new(2025, m).unwrap(),
                attendance: Attendance::Counts {
                    given: 20,
                    attended,
                },
                reason_code: code.map(str::to_owned),
            })
        })
}

fn health_strategy(n: Nis) -> impl Strategy<Value = PersonRecord> {
    (
        0u8..3,
        1u64..4,
        prop::bool::weighted(0.15),
        1u8..13,
        any::<Option<bool>>(),
        any::<bool>(),
        any::<Option<bool>>(),
    )
        .prop_map(
            move |(id, version, retracted, m, vacc, measured, prenatal)| {
                PersonRecord::Health(HealthRecord {
                    record_id: format!("h{id}"),
                    version,
                    retracted,
                    nis: n,
                    recorded_on: Some(ponte_domain::period::Date::new(2025, m, 10).unwrap()),
                    semester: None,
                    vaccination_up_to_date: vacc,
                    weight_grams: measured.then_some(15_000),
                    height_mm: measured.then_some(990),
                    pregnant: None,
                    last_menstruation: None,
                    prenatal,
                    immunization_refs: vec![],
                })
            },
        )
}

fn records() -> impl Strategy<Value = Vec<PersonRecord>> {
    let n = nis(42);
    proptest::collection::vec(prop_oneof![school_strategy(n), health_strategy(n)], 0..24)
}

fn evaluate(records: &[PersonRecord], born: &str) -> Vec<Outcome> {
    let rs = bf2023();
    let mut p = PersonState::new(nis(42));
    p.apply(PersonRecord::Profile(profile(
        nis(42),
        "F",
        born,
        Sex::Female,
    )))
    .unwrap();
    for r in records {
        p.apply(r.clone()).unwrap();
    }
    rs.evaluate_person_between(&p, month("2025-01"), month("2025-12"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The final view is the same whatever order the records arrive in.
    #[test]
    fn evaluation_is_order_independent(
        (recs, shuffled) in records().prop_flat_map(|r| (Just(r.clone()), Just(r).prop_shuffle())),
        born in prop::sample::select(vec!["2021-03-01", "2015-05-05", "2008-07-07", "1990-01-01"]),
    ) {
        prop_assert_eq!(evaluate(&recs, born), evaluate(&shuffled, born));
    }

    /// Replaying any part of the input changes nothing.
    #[test]
    fn replay_is_idempotent(recs in records(), replay in proptest::collection::vec(any::<prop::sample::Index>(), 0..12)) {
        let once = evaluate(&recs, "2015-05-05");
        let mut twice = recs.clone();
        if !recs.is_empty() {
            twice.extend(replay.iter().map(|i| recs[i.index(recs.len())].clone()));
        }
        prop_assert_eq!(once, evaluate(&twice, "2015-05-05"));
    }

    /// Family effects do not depend on the order of members' outcomes.
    #[test]
    fn family_effects_are_order_independent(
        low in proptest::collection::btree_set(prop::sample::select(vec!["2025-02", "2025-04", "2025-06", "2025-08", "2025-10"]), 0..5),
        seed in any::<u64>(),
    ) {
        let rs = bf2023();
        let mut outs = Vec::new();
        for (i, born) in ["2015-01-01", "2008-01-01", "2012-01-01"].iter().enumerate() {
            let n = nis(100 + i as u64);
            let recs = low.iter().map(|m| PersonRecord::School(school(n, m, 20, if (i + m.len()) % 2 == 0 { 5 } else { 20 }, None))).collect();
            let p = person(profile(n, "FAM", born, Sex::Male), recs);
            outs.extend(rs.evaluate_person_between(&p, month("2025-01"), month("2025-12")));
        }
        let a = rs.evaluate_family(&family("FAM"), &outs);
        // Deterministic shuffle from the seed.
        let mut shuffled = outs.clone();
        let len = shuffled.len();
        let mut s = seed;
        for i in (1..len).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        prop_assert_eq!(a, rs.evaluate_family(&family("FAM"), &shuffled));
    }
}

#[test]
fn health_record_for_unknown_period_is_ignored_not_fatal() {
    // A record outside every evaluated period simply does not count.
    let n = nis(42);
    let outs = evaluate(
        &[PersonRecord::Health(HealthRecord {
            recorded_on: Some(date("2030-01-01")),
            semester: None,
            ..health(n, "2030-01-01")
        })],
        "2021-03-01",
    );
    assert!(
        outs.iter()
            .all(|o| o.status != ponte_domain::outcome::Status::Compliant)
    );
}
