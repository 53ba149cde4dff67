//! The synthetic population: families and people, each a pure function of (seed, family
//! index), so any family can be regenerated on demand and nothing needs to be held in memory.
//!
//! Shape (figures of February 2025 from `docs/sources.md#s13`, key [S13], unless marked
//! ASSUMPTION):
//! - 54 M people in 20.56 M families → 2.63 people per family on average. The distribution of
//!   family sizes around that mean is an ASSUMPTION ([`FAMILY_SIZE`]).
//! - 9.12 M children 0–6, 12.3 M aged 7–<16, 2.6 M aged 16–<18, the rest (≈30 M) adults; every
//!   family has one adult responsible, so the other 33.4 M members split 9.12 : 12.3 : 2.6 :
//!   9.42 ([`OTHER_MEMBER_BANDS`]).
//! - 839 k pregnant women among ≈22 M women 14–44 in the health public → 3.8 % ([`PREGNANT`]).
//! - CNS coverage "much worse for children than women" [S11] (`docs/sources.md#s11`); the rates
//!   are ASSUMPTIONS
//!   ([`CNS_KNOWN`], [`CPF_KNOWN`]).
//! - PETI: ~820 k children up to 16 in 2010 (`docs/sources.md#peti-scfv-2010`); 5 % of 6–15
//!   year-olds is an ASSUMPTION.
use ponte_domain::ids::{Cpf, Nis};
use ponte_domain::period::Date;

use crate::places::{MUNICIPALITIES, cumulative_weights};
use crate::rng::Rng;

/// People per family, 54 M / 20.56 M [S13].
pub const PEOPLE_PER_FAMILY: f64 = 54.0 / 20.56;
/// P(size = 1..=7). ASSUMPTION shaped to the mean of 2.63 (sum of i·p = 2.64).
pub const FAMILY_SIZE: [f64; 7] = [0.26, 0.25, 0.24, 0.14, 0.07, 0.03, 0.01];
/// Members other than the responsible adult, by age band: 0–6, 7–15, 16–17, 18+ (millions,
/// Feb 2025 [S13]; adults = 54 − 9.12 − 12.3 − 2.6 − 20.56 responsible).
pub const OTHER_MEMBER_BANDS: [f64; 4] = [9.12, 12.3, 2.6, 9.42];
/// Share of responsible adults who are women. ASSUMPTION (not in the sources).
pub const RESPONSIBLE_FEMALE: f64 = 0.84;
/// Pregnant among women 14–44: 839 k / ≈22 M [S13].
pub const PREGNANT: f64 = 0.038;
/// The registry knows the person's CNS: children 0–6, 7–17, adults. ASSUMPTION.
pub const CNS_KNOWN: [f64; 3] = [0.60, 0.75, 0.90];
/// The registry knows the person's CPF: children 0–6, 7–17, adults. ASSUMPTION.
pub const CPF_KNOWN: [f64; 3] = [0.35, 0.60, 0.97];
/// The registry knows the school of a pupil. ASSUMPTION.
pub const SCHOOL_KNOWN: f64 = 0.90;
/// PETI membership among 6–15 year-olds. ASSUMPTION.
pub const PETI: f64 = 0.05;
/// Pupils per school, for the number of schools per municipality (≈19 M pupils in ≈180 k
/// schools of the school census; ASSUMPTION for the ratio).
pub const PUPILS_PER_SCHOOL: f64 = 100.0;

/// Sex as registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sex {
    F,
    M,
}

/// One person of a family.
#[derive(Debug, Clone)]
pub struct Person {
    pub nis: String,
    pub birth_date: Date,
    pub sex: Sex,
    /// The person's CNS (the health side always knows one).
    pub cns: String,
    /// The person's CPF.
    pub cpf: String,
    /// Whether the registry's profile carries the CNS / CPF.
    pub registry_has_cns: bool,
    pub registry_has_cpf: bool,
    /// The school the pupil attends (pupils 4–17 only), and whether the registry knows it.
    pub school: Option<String>,
    pub registry_has_school: bool,
    /// Expected delivery date of a pregnancy recorded by the registry.
    pub expected_delivery: Option<Date>,
    pub peti: bool,
    pub basic_education_completed: bool,
}

impl Person {
    /// Age in completed years on `on` (0 before birth).
    pub fn age_on(&self, on: Date) -> u32 {
        self.birth_date.age_on(on).unwrap_or(0)
    }
}

/// One family.
#[derive(Debug, Clone)]
pub struct Family {
    pub index: u64,
    /// Family code (código familiar), 11 digits.
    pub id: String,
    /// Index into [`MUNICIPALITIES`].
    pub municipality: usize,
    pub members: Vec<Person>,
}

impl Family {
    pub fn municipality_code(&self) -> &'static str {
        MUNICIPALITIES[self.municipality].code
    }
}

/// Most members a family can have (identifiers reserve this many slots per family).
pub const MAX_MEMBERS: u64 = 16;

/// The population: how many families, from which seed, ages as of `reference`.
#[derive(Debug, Clone)]
pub struct Population {
    seed: u64,
    families: u64,
    reference: Date,
    municipality_weights: Vec<f64>,
    schools_per_municipality: Vec<u64>,
}

impl Population {
    /// About `people` people (families = people / 2.63), ages as of `reference`.
    pub fn new(seed: u64, people: u64, reference: Date) -> Self {
        let families = ((people as f64 / PEOPLE_PER_FAMILY).round() as u64).max(1);
        let weights = cumulative_weights();
        let total = weights.last().copied().unwrap_or(1.0);
        // Pupils ≈ 35 % of people (19.2 M of 54 M [S13]).
        let pupils = people as f64 * 19.2 / 54.0;
        let schools_per_municipality = MUNICIPALITIES
            .iter()
            .map(|m| ((pupils * m.weight / total / PUPILS_PER_SCHOOL).ceil() as u64).clamp(1, 9999))
            .collect();
        Population {
            seed,
            families,
            reference,
            municipality_weights: weights,
            schools_per_municipality,
        }
    }

    pub fn families(&self) -> u64 {
        self.families
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn reference(&self) -> Date {
        self.reference
    }

    /// The family with index `f` (0-based), always the same for the same seed.
    pub fn family(&self, f: u64) -> Family {
        let mut rng = Rng::new(self.seed, f);
        let municipality = rng.pick(&self.municipality_weights);
        let size = cumulative(&FAMILY_SIZE);
        let size = rng.pick(&size) + 1;
        let bands = cumulative(&OTHER_MEMBER_BANDS);
        let mut members = Vec::with_capacity(size);
        for m in 0..size as u64 {
            let (age, sex) = if m == 0 {
                let sex = if rng.chance(RESPONSIBLE_FEMALE) {
                    Sex::F
                } else {
                    Sex::M
                };
                (rng.range(18, 64), sex)
            } else {
                let age = match rng.pick(&bands) {
                    0 => rng.range(0, 6),
                    1 => rng.range(7, 15),
                    2 => rng.range(16, 17),
                    _ => rng.range(18, 80),
                };
                (age, if rng.chance(0.5) { Sex::F } else { Sex::M })
            };
            members.push(self.person(&mut rng, f, municipality, m, age, sex));
        }
        Family {
            index: f,
            id: format!("{:011}", 10_000_000_000 + f),
            municipality,
            members,
        }
    }

    fn person(
        &self,
        rng: &mut Rng,
        f: u64,
        municipality: usize,
        m: u64,
        age: u64,
        sex: Sex,
    ) -> Person {
        let slot = f * MAX_MEMBERS + m;
        // Born `age` years and 0–364 days before the reference date.
        let days_back = (age as f64 * 365.2425) as i64 + rng.range(0, 364) as i64;
        let birth_date = self
            .reference
            .add_days(-days_back)
            .unwrap_or(self.reference);
        let band = match age {
            0..=6 => 0,
            7..=17 => 1,
            _ => 2,
        };
        let registry_has_cns = rng.chance(CNS_KNOWN[band]);
        let registry_has_cpf = rng.chance(CPF_KNOWN[band]);
        let (school, registry_has_school) = if (4..=17).contains(&age) {
            let n = self.schools_per_municipality[municipality];
            let uf = &MUNICIPALITIES[municipality].code[..2];
            let school = format!("{uf}{municipality:02}{:04}", rng.range(0, n - 1));
            (Some(school), rng.chance(SCHOOL_KNOWN))
        } else {
            (None, false)
        };
        let expected_delivery = (sex == Sex::F && (14..=44).contains(&age) && rng.chance(PREGNANT))
            .then(|| self.reference.add_days(rng.range(20, 270) as i64).ok())
            .flatten();
        let peti = (6..=15).contains(&age) && rng.chance(PETI);
        let basic_education_completed = match age {
            17 => rng.chance(0.15),
            16 => rng.chance(0.05),
            _ => false,
        };
        Person {
            nis: nis(slot),
            birth_date,
            sex,
            cns: cns(slot),
            cpf: cpf(slot),
            registry_has_cns,
            registry_has_cpf,
            school,
            registry_has_school,
            expected_delivery,
            peti,
            basic_education_completed,
        }
    }
}

/// Running sums of `weights`.
pub(crate) fn cumulative(weights: &[f64]) -> Vec<f64> {
    let mut acc = 0.0;
    weights
        .iter()
        .map(|w| {
            acc += w;
            acc
        })
        .collect()
}

/// The NIS of identifier slot `slot`: ten digits `1 000 000 000 + slot` and the check digit; the
/// rare body that would be all one digit moves to the `2…` range, which no slot reaches
/// (slots stay below 10⁹ for 62 M families).
pub fn nis(slot: u64) -> String {
    Nis::with_check_digit(&format!("{}", 1_000_000_000 + slot))
        .or_else(|_| Nis::with_check_digit(&format!("{}", 2_000_000_000 + slot)))
        .map(|n| n.as_str().to_owned())
        .unwrap_or_default()
}

/// The CPF of slot `slot` (nine digits `100 000 000 + slot`, then the check digits; an
/// all-same-digit body moves to the `5…` range).
pub fn cpf(slot: u64) -> String {
    Cpf::with_check_digits(&format!("{}", 100_000_000 + slot % 400_000_000))
        .or_else(|_| Cpf::with_check_digits(&format!("{}", 500_000_000 + slot % 400_000_000)))
        .map(|c| c.as_str().to_owned())
        .unwrap_or_default()
}

/// A definitive CNS (first digit 2) for slot `slot`: eleven digits, then the four the published
/// routine derives from them (`000d`, or `001d` when the first check value is 10).
pub fn cns(slot: u64) -> String {
    let body = format!("{}", 20_000_000_000 + slot % 10_000_000_000);
    let sum: u32 = body
        .bytes()
        .zip((5..=15).rev())
        .map(|(b, w)| u32::from(b - b'0') * w)
        .sum();
    let dv = (11 - sum % 11) % 11;
    if dv == 10 {
        let dv = (11 - (sum + 2) % 11) % 11;
        format!("{body}001{dv}")
    } else {
        format!("{body}000{dv}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ponte_domain::ids::Cns;

    #[test]
    fn identifiers_pass_their_check_digit_rules() {
        for slot in (0..5_000).chain([111_111_111, 11_111_111, 327_999_999]) {
            assert!(Nis::parse(&nis(slot)).is_ok(), "nis {slot}");
            assert!(Cpf::parse(&cpf(slot)).is_ok(), "cpf {slot}");
            assert!(Cns::parse(&cns(slot)).is_ok(), "cns {slot}: {}", cns(slot));
        }
    }

    #[test]
    fn identifiers_are_unique_per_slot() {
        let mut all: Vec<String> = (0..20_000).map(nis).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 20_000);
    }

    #[test]
    fn a_family_is_a_function_of_seed_and_index() {
        let reference = Date::new(2025, 1, 1).unwrap_or(Date::MAX);
        let p = Population::new(42, 1000, reference);
        let a = p.family(17);
        let b = p.family(17);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        let q = Population::new(43, 1000, reference);
        assert_ne!(format!("{a:?}"), format!("{:?}", q.family(17)));
    }
}
