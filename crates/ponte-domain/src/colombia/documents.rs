//! Colombian identity documents: their types, the ages each is the identity document for, and
//! their numbers.
//!
//! The Registraduría issues the registro civil de nacimiento (with the NUIP) at birth, the
//! tarjeta de identidad from 7 to 17 and the cédula de ciudadanía from 18
//! (docs/sources.md#registraduria-nuip, #registraduria-tarjeta-identidad); Migración Colombia
//! issues the cédula de extranjería to residents from 7 (#cedula-extranjeria) and the PPT to
//! Venezuelan migrants of any age (#ppt). No source gives a length or a check digit for any of
//! the numbers: the lengths are decision U14 (docs/rules.md).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::CoIdError;

/// A Colombian identity document type, with the code the health and social protection systems
/// use for it (`RC`, `TI`, `CC`, `CE`, `PT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DocumentType {
    /// Registro civil de nacimiento, identified by the NUIP (Número Único de Identificación
    /// Personal).
    RegistroCivil,
    /// Tarjeta de identidad, 7 to 17 years.
    TarjetaIdentidad,
    /// Cédula de ciudadanía, from 18.
    CedulaCiudadania,
    /// Cédula de extranjería, resident foreigners from 7.
    CedulaExtranjeria,
    /// Permiso por Protección Temporal, Venezuelan migrants of any age.
    Ppt,
}

/// Ages in completed years `min..max_exclusive` (`None`: no upper bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AgeRange {
    /// First age included.
    pub min: u32,
    /// First age no longer included.
    pub max_exclusive: Option<u32>,
}

impl AgeRange {
    /// True when `age` is in the range.
    pub fn contains(&self, age: u32) -> bool {
        age >= self.min && self.max_exclusive.is_none_or(|m| age < m)
    }
}

impl fmt::Display for AgeRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.max_exclusive {
            Some(m) => write!(f, "{} to {}", self.min, m - 1),
            None if self.min == 0 => f.write_str("any age"),
            None => write!(f, "{} and over", self.min),
        }
    }
}

impl DocumentType {
    /// Every type, national documents first in the order a Colombian holds them.
    pub const ALL: [DocumentType; 5] = [
        DocumentType::RegistroCivil,
        DocumentType::TarjetaIdentidad,
        DocumentType::CedulaCiudadania,
        DocumentType::CedulaExtranjeria,
        DocumentType::Ppt,
    ];

    /// Parses a type code, without regard to case: `RC`, `TI`, `CC`, `CE`, `PT` (also `PPT`).
    pub fn parse(code: &str) -> Result<DocumentType, CoIdError> {
        match code.trim().to_ascii_uppercase().as_str() {
            "RC" => Ok(DocumentType::RegistroCivil),
            "TI" => Ok(DocumentType::TarjetaIdentidad),
            "CC" => Ok(DocumentType::CedulaCiudadania),
            "CE" => Ok(DocumentType::CedulaExtranjeria),
            "PT" | "PPT" => Ok(DocumentType::Ppt),
            _ => Err(CoIdError::DocumentType {
                found: code.to_owned(),
            }),
        }
    }

    /// The type code.
    pub fn code(self) -> &'static str {
        match self {
            DocumentType::RegistroCivil => "RC",
            DocumentType::TarjetaIdentidad => "TI",
            DocumentType::CedulaCiudadania => "CC",
            DocumentType::CedulaExtranjeria => "CE",
            DocumentType::Ppt => "PT",
        }
    }

    /// The document's Spanish name, as messages use it.
    pub fn name(self) -> &'static str {
        match self {
            DocumentType::RegistroCivil => "registro civil (NUIP)",
            DocumentType::TarjetaIdentidad => "tarjeta de identidad",
            DocumentType::CedulaCiudadania => "cédula de ciudadanía",
            DocumentType::CedulaExtranjeria => "cédula de extranjería",
            DocumentType::Ppt => "PPT",
        }
    }

    /// True for the Registraduría's documents of Colombians, which carry the NUIP.
    pub fn is_national(self) -> bool {
        self.national_rank().is_some()
    }

    /// Position in the sequence registro civil → tarjeta de identidad → cédula de ciudadanía.
    pub(super) fn national_rank(self) -> Option<u8> {
        match self {
            DocumentType::RegistroCivil => Some(0),
            DocumentType::TarjetaIdentidad => Some(1),
            DocumentType::CedulaCiudadania => Some(2),
            DocumentType::CedulaExtranjeria | DocumentType::Ppt => None,
        }
    }

    /// The ages for which this is a person's identity document: registro civil under 7,
    /// tarjeta de identidad 7–17, cédula de ciudadanía from 18
    /// (docs/sources.md#registraduria-tarjeta-identidad), cédula de extranjería from 7
    /// (#cedula-extranjeria), PPT at any age (#ppt; decision U5).
    pub fn ages(self) -> AgeRange {
        let (min, max_exclusive) = match self {
            DocumentType::RegistroCivil => (0, Some(7)),
            DocumentType::TarjetaIdentidad => (7, Some(18)),
            DocumentType::CedulaCiudadania => (18, None),
            DocumentType::CedulaExtranjeria => (7, None),
            DocumentType::Ppt => (0, None),
        };
        AgeRange { min, max_exclusive }
    }

    /// The number of digits a number of this type may have (decision U14).
    pub fn digits(self) -> (usize, usize) {
        match self {
            // NUIPs have 10 digits; tarjetas issued before the NUIP carried 11.
            DocumentType::RegistroCivil | DocumentType::TarjetaIdentidad => (10, 11),
            // Cédulas are numbered in sequence since 1952: old ones are short.
            DocumentType::CedulaCiudadania => (3, 10),
            DocumentType::CedulaExtranjeria => (3, 8),
            DocumentType::Ppt => (5, 10),
        }
    }
}

impl fmt::Display for DocumentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DocumentType {
    type Err = CoIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DocumentType::parse(s)
    }
}

impl Serialize for DocumentType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for DocumentType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DocumentType::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A document number, digits only, valid for its type. It is only ever built together with its
/// type (see [`Document`]), since the rules depend on the type.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct DocumentNumber(String);

impl DocumentNumber {
    /// Parses the number of a document of type `kind`, accepting `.`, `-` and spaces
    /// (`1.023.456.789`).
    pub fn parse(kind: DocumentType, input: &str) -> Result<DocumentNumber, CoIdError> {
        let mut digits = String::with_capacity(input.len());
        for (position, c) in input.chars().enumerate() {
            match c {
                '0'..='9' => digits.push(c),
                '.' | '-' | ' ' | '\t' => {}
                found => {
                    return Err(CoIdError::InvalidCharacter {
                        kind,
                        found,
                        position,
                    });
                }
            }
        }
        let (min, max) = kind.digits();
        if !(min..=max).contains(&digits.len()) {
            return Err(CoIdError::Length {
                kind,
                min,
                max,
                got: digits.len(),
            });
        }
        if digits.starts_with('0') {
            return Err(CoIdError::LeadingZero { kind });
        }
        Ok(DocumentNumber(digits))
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A form safe for logs: only the last three digits are shown.
    pub fn masked(&self) -> String {
        let n = self.0.len().saturating_sub(3);
        self.0
            .char_indices()
            .map(|(i, c)| if i < n { '*' } else { c })
            .collect()
    }
}

impl fmt::Debug for DocumentNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocumentNumber({})", self.0)
    }
}

impl fmt::Display for DocumentNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An identity document: its type and its number, validated together.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "RawDocument")]
pub struct Document {
    /// Type.
    #[serde(rename = "type")]
    pub kind: DocumentType,
    /// Number.
    pub number: DocumentNumber,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocument {
    #[serde(rename = "type")]
    kind: DocumentType,
    number: String,
}

impl TryFrom<RawDocument> for Document {
    type Error = CoIdError;
    fn try_from(raw: RawDocument) -> Result<Self, Self::Error> {
        Document::parse(raw.kind, &raw.number)
    }
}

impl Document {
    /// Parses a number for a document of type `kind`.
    pub fn parse(kind: DocumentType, number: &str) -> Result<Document, CoIdError> {
        Ok(Document {
            kind,
            number: DocumentNumber::parse(kind, number)?,
        })
    }

    /// Parses a type code and a number (`"TI"`, `"1.023.456.789"`).
    pub fn parse_coded(code: &str, number: &str) -> Result<Document, CoIdError> {
        Document::parse(DocumentType::parse(code)?, number)
    }

    /// A form safe for logs: `TI *******789`.
    pub fn masked(&self) -> String {
        format!("{} {}", self.kind.code(), self.number.masked())
    }
}

impl fmt::Display for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.code(), self.number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_numbers() {
        use DocumentType::*;
        // (type, input, expected digits or error). Rules: decision U14 in docs/rules.md (digits
        // only, lengths per type, no leading zero); punctuation as in ids.rs.
        let cases: &[(DocumentType, &str, Result<&str, &str>)] = &[
            // A NUIP of 10 digits, written with the thousands dots printed on the documents.
            (RegistroCivil, "1.023.456.789", Ok("1023456789")),
            (TarjetaIdentidad, "1023456789", Ok("1023456789")),
            // Tarjetas issued before the NUIP carried 11 digits.
            (TarjetaIdentidad, "95081512345", Ok("95081512345")),
            (
                TarjetaIdentidad,
                "102345678",
                Err("tarjeta de identidad number must have 10 to 11 digits, got 9"),
            ),
            (
                RegistroCivil,
                "102345678901",
                Err("registro civil (NUIP) number must have 10 to 11 digits, got 12"),
            ),
            // An old cédula: numbered in sequence since 1952.
            (CedulaCiudadania, "17.123", Ok("17123")),
            (CedulaCiudadania, "52 123 456", Ok("52123456")),
            (CedulaCiudadania, "1023456789", Ok("1023456789")),
            (
                CedulaCiudadania,
                "12",
                Err("cédula de ciudadanía number must have 3 to 10 digits, got 2"),
            ),
            (
                CedulaCiudadania,
                "0052123456",
                Err(
                    "cédula de ciudadanía number must not start with 0 (document numbers are not zero-padded)",
                ),
            ),
            (
                CedulaCiudadania,
                "52123456x",
                Err("cédula de ciudadanía number contains invalid character 'x' at position 8"),
            ),
            (CedulaExtranjeria, "442113", Ok("442113")),
            (
                CedulaExtranjeria,
                "123456789",
                Err("cédula de extranjería number must have 3 to 8 digits, got 9"),
            ),
            (Ppt, "4512345", Ok("4512345")),
            (
                Ppt,
                "PPT4512345",
                Err("PPT number contains invalid character 'P' at position 0"),
            ),
            (
                Ppt,
                "1234",
                Err("PPT number must have 5 to 10 digits, got 4"),
            ),
            (
                RegistroCivil,
                "",
                Err("registro civil (NUIP) number must have 10 to 11 digits, got 0"),
            ),
        ];
        for (kind, input, expected) in cases {
            let got = Document::parse(*kind, input)
                .map(|d| d.number.as_str().to_owned())
                .map_err(|e| e.to_string());
            assert_eq!(
                got,
                expected.map(str::to_owned).map_err(str::to_owned),
                "{kind:?} {input:?}"
            );
        }
    }

    #[test]
    fn errors_never_repeat_the_number() {
        // Decision U14: a document number identifies a person; messages name the rule only.
        for (kind, input) in [
            (DocumentType::CedulaCiudadania, "52123456789"),
            (DocumentType::CedulaCiudadania, "0052123456"),
            (DocumentType::TarjetaIdentidad, "521234567x"),
        ] {
            let e = Document::parse(kind, input).unwrap_err().to_string();
            assert!(!e.contains("52123"), "{e}");
        }
    }

    #[test]
    fn type_codes() {
        let cases: &[(&str, Result<DocumentType, &str>)] = &[
            ("RC", Ok(DocumentType::RegistroCivil)),
            ("ti", Ok(DocumentType::TarjetaIdentidad)),
            (" CC ", Ok(DocumentType::CedulaCiudadania)),
            ("CE", Ok(DocumentType::CedulaExtranjeria)),
            ("PT", Ok(DocumentType::Ppt)),
            ("PPT", Ok(DocumentType::Ppt)),
            (
                "PA",
                Err(
                    "unknown identity document type \"PA\": expected one of RC, TI, CC, CE, PT (or PPT)",
                ),
            ),
        ];
        for (code, expected) in cases {
            assert_eq!(
                DocumentType::parse(code).map_err(|e| e.to_string()),
                expected.map_err(str::to_owned),
                "{code:?}"
            );
        }
        for t in DocumentType::ALL {
            assert_eq!(DocumentType::parse(t.code()), Ok(t));
        }
    }

    #[test]
    fn ages_each_document_is_for() {
        use DocumentType::*;
        // (type, age, valid): registro civil under 7, tarjeta 7–17, cédula from 18
        // (docs/sources.md#registraduria-tarjeta-identidad); cédula de extranjería from 7
        // (#cedula-extranjeria); PPT any age (#ppt, decision U5).
        let cases = [
            (RegistroCivil, 0, true),
            (RegistroCivil, 6, true),
            (RegistroCivil, 7, false),
            (TarjetaIdentidad, 6, false),
            (TarjetaIdentidad, 7, true),
            (TarjetaIdentidad, 17, true),
            (TarjetaIdentidad, 18, false),
            (CedulaCiudadania, 17, false),
            (CedulaCiudadania, 18, true),
            (CedulaCiudadania, 90, true),
            (CedulaExtranjeria, 6, false),
            (CedulaExtranjeria, 7, true),
            (Ppt, 0, true),
            (Ppt, 70, true),
        ];
        for (kind, age, valid) in cases {
            assert_eq!(kind.ages().contains(age), valid, "{kind:?} at {age}");
        }
        assert_eq!(TarjetaIdentidad.ages().to_string(), "7 to 17");
        assert_eq!(CedulaCiudadania.ages().to_string(), "18 and over");
        assert_eq!(Ppt.ages().to_string(), "any age");
    }

    #[test]
    fn serde_validates_type_and_number() {
        let d: Document =
            serde_json::from_str(r#"{"type": "TI", "number": "1.023.456.789"}"#).unwrap();
        assert_eq!(d.to_string(), "TI 1023456789");
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            serde_json::json!({"type": "TI", "number": "1023456789"})
        );
        let e = serde_json::from_str::<Document>(r#"{"type": "CC", "number": "12"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("must have 3 to 10 digits, got 2"), "{e}");
        assert_eq!(d.masked(), "TI *******789");
    }
}
