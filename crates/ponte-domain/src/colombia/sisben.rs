//! Sisbén IV groups: registry data about a household, not a criterion of any rule set here.
//!
//! Sisbén IV classifies households in four groups, each split in subgroups: A extreme poverty
//! (A1–A5), B moderate poverty (B1–B7), C vulnerable (C1–C18), D neither poor nor vulnerable
//! (D1–D21); there is no score, only groups (docs/sources.md#sisben-iv). Subgroups are ordered
//! from the poorest: A1 < A2 < … < D21.

use std::fmt;
use std::str::FromStr;

use super::CoIdError;

/// What a Sisbén IV group says about a household.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SisbenClass {
    /// Group A.
    ExtremePoverty,
    /// Group B.
    ModeratePoverty,
    /// Group C.
    Vulnerable,
    /// Group D.
    NeitherPoorNorVulnerable,
}

/// A Sisbén IV group and subgroup, such as `B4`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SisbenGroup {
    letter: u8,
    subgroup: u8,
}

/// Subgroups per group letter (docs/sources.md#sisben-iv).
const SUBGROUPS: [(u8, u8); 4] = [(b'A', 5), (b'B', 7), (b'C', 18), (b'D', 21)];

impl SisbenGroup {
    /// Parses `A1` … `D21`; the letter may be lower case and the number may have a leading zero
    /// (`b04`), surrounding spaces are ignored.
    pub fn parse(input: &str) -> Result<SisbenGroup, CoIdError> {
        let format = || CoIdError::SisbenFormat {
            input: input.to_owned(),
        };
        let s = input.trim();
        let mut chars = s.chars();
        let letter = chars.next().ok_or_else(format)?.to_ascii_uppercase();
        let number = chars.as_str();
        let max = SUBGROUPS
            .iter()
            .find(|(l, _)| char::from(*l) == letter)
            .map(|(_, m)| *m)
            .ok_or_else(format)?;
        if number.is_empty() || number.len() > 2 || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format());
        }
        let subgroup: u8 = number.parse().map_err(|_| format())?;
        if subgroup == 0 || subgroup > max {
            return Err(CoIdError::SisbenSubgroup {
                input: input.to_owned(),
                letter,
                max,
            });
        }
        Ok(SisbenGroup {
            letter: letter as u8,
            subgroup,
        })
    }

    /// The group letter, `A`–`D`.
    pub fn letter(&self) -> char {
        char::from(self.letter)
    }

    /// The subgroup number within the group.
    pub fn subgroup(&self) -> u8 {
        self.subgroup
    }

    /// What the group says.
    pub fn class(&self) -> SisbenClass {
        match self.letter {
            b'A' => SisbenClass::ExtremePoverty,
            b'B' => SisbenClass::ModeratePoverty,
            b'C' => SisbenClass::Vulnerable,
            _ => SisbenClass::NeitherPoorNorVulnerable,
        }
    }
}

impl fmt::Debug for SisbenGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SisbenGroup({self})")
    }
}

impl fmt::Display for SisbenGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.letter(), self.subgroup)
    }
}

impl FromStr for SisbenGroup {
    type Err = CoIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SisbenGroup::parse(s)
    }
}

impl serde::Serialize for SisbenGroup {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SisbenGroup {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        SisbenGroup::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups() {
        // docs/sources.md#sisben-iv: A1–A5, B1–B7, C1–C18, D1–D21.
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("A1", Ok("A1")),
            ("A5", Ok("A5")),
            ("b7", Ok("B7")),
            ("C18", Ok("C18")),
            (" D21 ", Ok("D21")),
            ("B04", Ok("B4")),
            (
                "A6",
                Err("Sisbén IV group \"A6\": group A has subgroups A1 to A5"),
            ),
            (
                "B8",
                Err("Sisbén IV group \"B8\": group B has subgroups B1 to B7"),
            ),
            (
                "C19",
                Err("Sisbén IV group \"C19\": group C has subgroups C1 to C18"),
            ),
            (
                "D0",
                Err("Sisbén IV group \"D0\": group D has subgroups D1 to D21"),
            ),
            (
                "E1",
                Err(
                    "Sisbén IV group \"E1\": expected a group letter A, B, C or D followed by a subgroup number, e.g. B4",
                ),
            ),
            (
                "A",
                Err(
                    "Sisbén IV group \"A\": expected a group letter A, B, C or D followed by a subgroup number, e.g. B4",
                ),
            ),
            (
                "A-1",
                Err(
                    "Sisbén IV group \"A-1\": expected a group letter A, B, C or D followed by a subgroup number, e.g. B4",
                ),
            ),
            (
                "",
                Err(
                    "Sisbén IV group \"\": expected a group letter A, B, C or D followed by a subgroup number, e.g. B4",
                ),
            ),
        ];
        for (input, expected) in cases {
            let got = SisbenGroup::parse(input)
                .map(|g| g.to_string())
                .map_err(|e| e.to_string());
            assert_eq!(
                got,
                expected.map(str::to_owned).map_err(str::to_owned),
                "{input:?}"
            );
        }
    }

    #[test]
    fn order_and_class() {
        // Poorest first (docs/sources.md#sisben-iv); Familias en Acción enrols A1–B4.
        let g = |s| SisbenGroup::parse(s).unwrap();
        assert!(g("A5") < g("B1"));
        assert!(g("C2") < g("C10"));
        assert!(g("B4") < g("B5"));
        let cases = [
            ("A3", SisbenClass::ExtremePoverty),
            ("B1", SisbenClass::ModeratePoverty),
            ("C12", SisbenClass::Vulnerable),
            ("D1", SisbenClass::NeitherPoorNorVulnerable),
        ];
        for (s, class) in cases {
            assert_eq!(g(s).class(), class, "{s}");
        }
        // 5 + 7 + 18 + 21 groups in all.
        let all: usize = ["A", "B", "C", "D"]
            .iter()
            .map(|l| {
                (0..30)
                    .filter(|n| SisbenGroup::parse(&format!("{l}{n}")).is_ok())
                    .count()
            })
            .sum();
        assert_eq!(all, 51);
    }
}
