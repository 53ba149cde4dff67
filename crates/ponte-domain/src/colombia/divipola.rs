//! DIVIPOLA municipality codes (DANE's División Político-Administrativa de Colombia).
//!
//! A municipality code has 5 digits: the 2 of its department (which may start with 0) and 3 of
//! its own; there is no check digit (docs/sources.md#divipola). The department must be one of
//! DANE's 33 (32 departments and Bogotá D.C.), listed below; whether the municipality itself
//! exists is checked against the published list only where a deployment provides it (decision
//! U13), since that list changes from year to year.

use std::fmt;
use std::str::FromStr;

use super::CoIdError;

/// A department (or Bogotá D.C.) of DANE's codification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Department {
    /// Two-digit code (5 is written `05`).
    pub code: u8,
    /// Name.
    pub name: &'static str,
}

const fn dep(code: u8, name: &'static str) -> Department {
    Department { code, name }
}

/// DANE's 33 department codes, in code order (docs/sources.md#divipola: 32 departments and
/// Bogotá D.C. in the 2019 list; the codes as several independent copies of DANE's department
/// column agree on them).
pub const DEPARTMENTS: [Department; 33] = [
    dep(5, "Antioquia"),
    dep(8, "Atlántico"),
    dep(11, "Bogotá, D.C."),
    dep(13, "Bolívar"),
    dep(15, "Boyacá"),
    dep(17, "Caldas"),
    dep(18, "Caquetá"),
    dep(19, "Cauca"),
    dep(20, "Cesar"),
    dep(23, "Córdoba"),
    dep(25, "Cundinamarca"),
    dep(27, "Chocó"),
    dep(41, "Huila"),
    dep(44, "La Guajira"),
    dep(47, "Magdalena"),
    dep(50, "Meta"),
    dep(52, "Nariño"),
    dep(54, "Norte de Santander"),
    dep(63, "Quindío"),
    dep(66, "Risaralda"),
    dep(68, "Santander"),
    dep(70, "Sucre"),
    dep(73, "Tolima"),
    dep(76, "Valle del Cauca"),
    dep(81, "Arauca"),
    dep(85, "Casanare"),
    dep(86, "Putumayo"),
    dep(
        88,
        "Archipiélago de San Andrés, Providencia y Santa Catalina",
    ),
    dep(91, "Amazonas"),
    dep(94, "Guainía"),
    dep(95, "Guaviare"),
    dep(97, "Vaupés"),
    dep(99, "Vichada"),
];

fn department(code: u8) -> Option<&'static Department> {
    DEPARTMENTS
        .binary_search_by_key(&code, |d| d.code)
        .ok()
        .map(|i| &DEPARTMENTS[i])
}

/// A DIVIPOLA municipality code, 5 digits (`05001` Medellín, `11001` Bogotá, `52001` Pasto).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Divipola([u8; 5]);

impl Divipola {
    /// `00000`, no municipality: what the tombstone of a record stands on
    /// ([`crate::achievements::HouseholdProfile::retraction`]), never read.
    pub(crate) const NONE: Divipola = Divipola(*b"00000");

    /// Parses a 5-digit municipality code. Nothing but digits is accepted (the code is not
    /// punctuated), and a 4-digit code is refused rather than padded: it is usually a code of
    /// department 05 or 08 stored as a number, but padding would guess.
    pub fn parse(input: &str) -> Result<Divipola, CoIdError> {
        let mut d = [0u8; 5];
        let mut got = 0usize;
        for (position, c) in input.chars().enumerate() {
            if !c.is_ascii_digit() {
                return Err(CoIdError::DivipolaCharacter {
                    input: input.to_owned(),
                    found: c,
                    position,
                });
            }
            if got < 5 {
                d[got] = c as u8;
            }
            got += 1;
        }
        if got != 5 {
            return Err(CoIdError::DivipolaLength {
                input: input.to_owned(),
                got,
                hint: if got == 4 {
                    " (a code of a department below 10, such as 05 Antioquia, loses its leading \
                     zero when stored as a number)"
                } else {
                    ""
                },
            });
        }
        let department_code = (d[0] - b'0') * 10 + (d[1] - b'0');
        if department(department_code).is_none() {
            return Err(CoIdError::UnknownDepartment {
                input: input.to_owned(),
                department: department_code,
            });
        }
        if &d[2..] == b"000" {
            return Err(CoIdError::MunicipalityZero {
                input: input.to_owned(),
            });
        }
        Ok(Divipola(d))
    }

    /// The 5 digits.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits are stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The department the municipality belongs to.
    pub fn department(&self) -> &'static Department {
        let code = (self.0[0] - b'0') * 10 + (self.0[1] - b'0');
        // Checked by `parse`, the only constructor; Antioquia is an unreachable fallback.
        department(code).unwrap_or(&DEPARTMENTS[0])
    }
}

impl fmt::Debug for Divipola {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Divipola({})", self.as_str())
    }
}

impl fmt::Display for Divipola {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Divipola {
    type Err = CoIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Divipola::parse(s)
    }
}

impl serde::Serialize for Divipola {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Divipola {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        if s.as_bytes() == Divipola::NONE.0 {
            // A stored tombstone's (never an input: `parse` refuses it).
            return Ok(Divipola::NONE);
        }
        Divipola::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn department_list_is_sorted_unique_and_complete() {
        // docs/sources.md#divipola: 33 departments with Bogotá D.C.
        assert_eq!(DEPARTMENTS.len(), 33);
        assert!(DEPARTMENTS.windows(2).all(|w| w[0].code < w[1].code));
    }

    #[test]
    fn municipality_codes() {
        // Rules: docs/sources.md#divipola (5 digits, the first 2 a department of DANE's list, no
        // check digit); decision U13 and U15 in docs/rules.md (no padding, no 000 part).
        type Case<'a> = (&'a str, Result<(&'a str, &'a str), &'a str>);
        let cases: &[Case<'_>] = &[
            // Pasto, as the Unidos scripts carry it (A03_1 = 52001).
            ("52001", Ok(("52001", "Nariño"))),
            ("05001", Ok(("05001", "Antioquia"))),
            ("11001", Ok(("11001", "Bogotá, D.C."))),
            (
                "88564",
                Ok((
                    "88564",
                    "Archipiélago de San Andrés, Providencia y Santa Catalina",
                )),
            ),
            ("99773", Ok(("99773", "Vichada"))),
            (
                "5001",
                Err(
                    "DIVIPOLA municipality code \"5001\" must have 5 digits, got 4 (a code of a department below 10, such as 05 Antioquia, loses its leading zero when stored as a number)",
                ),
            ),
            (
                "520011",
                Err("DIVIPOLA municipality code \"520011\" must have 5 digits, got 6"),
            ),
            (
                "34001",
                Err(
                    "DIVIPOLA municipality code \"34001\": department 34 is not one of DANE's 33 department codes",
                ),
            ),
            (
                "00001",
                Err(
                    "DIVIPOLA municipality code \"00001\": department 00 is not one of DANE's 33 department codes",
                ),
            ),
            (
                "52000",
                Err(
                    "DIVIPOLA municipality code \"52000\": the municipality part must not be 000 (that names the department itself)",
                ),
            ),
            (
                "52-001",
                Err(
                    "DIVIPOLA municipality code \"52-001\" contains invalid character '-' at position 2",
                ),
            ),
        ];
        for (input, expected) in cases {
            let got = Divipola::parse(input)
                .map(|d| (d.as_str().to_owned(), d.department().name.to_owned()))
                .map_err(|e| e.to_string());
            assert_eq!(
                got,
                expected
                    .map(|(c, n)| (c.to_owned(), n.to_owned()))
                    .map_err(str::to_owned),
                "{input}"
            );
        }
    }

    #[test]
    fn every_department_code_starts_a_valid_municipality_code() {
        for d in DEPARTMENTS {
            let code = format!("{:02}001", d.code);
            assert_eq!(Divipola::parse(&code).unwrap().department(), &d, "{code}");
        }
        let codes: Vec<u8> = DEPARTMENTS.iter().map(|d| d.code).collect();
        for c in 0..100u8 {
            let ok = Divipola::parse(&format!("{c:02}001")).is_ok();
            assert_eq!(ok, codes.contains(&c), "department {c:02}");
        }
    }
}
