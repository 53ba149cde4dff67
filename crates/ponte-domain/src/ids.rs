//! Validated identifiers: NIS, CPF, CNS, IBGE municipality code and INEP school code.
//!
//! Every identifier is parsed once at the edge and carried as a type that cannot hold an invalid
//! value. Parsing accepts the usual punctuation (`.`, `-`, `/`, spaces) and stores only the
//! digits. A value that fails a rule is rejected with an [`IdError`] naming the rule; this module
//! never "corrects" an identifier (a wrong check digit is a wrong identifier, and the record goes
//! to the dead-letter topic with the reason).
//!
//! The rules and their sources: `docs/rules.md#identifiers` and `docs/sources.md` (`#nis`, `#cpf`,
//! `#cns`, `#ibge-municipality`, `#inep`).

use std::fmt;
use std::str::FromStr;

/// Which kind of identifier an [`IdError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdKind {
    /// Número de Identificação Social.
    Nis,
    /// Cadastro de Pessoas Físicas.
    Cpf,
    /// Cartão Nacional de Saúde.
    Cns,
    /// IBGE municipality code.
    IbgeMunicipality,
    /// INEP school code.
    Inep,
}

impl IdKind {
    fn label(self) -> &'static str {
        match self {
            IdKind::Nis => "NIS",
            IdKind::Cpf => "CPF",
            IdKind::Cns => "CNS",
            IdKind::IbgeMunicipality => "IBGE municipality code",
            IdKind::Inep => "INEP school code",
        }
    }
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Why an identifier was rejected. The Display text names the rule that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// A character that is neither a digit nor accepted punctuation.
    #[error("{kind} contains invalid character {found:?} at position {position}")]
    InvalidCharacter {
        /// Identifier kind.
        kind: IdKind,
        /// The offending character.
        found: char,
        /// Character position in the input (0-based).
        position: usize,
    },
    /// Wrong number of digits (punctuation is not counted).
    #[error("{kind} must have {expected} digits, got {got}")]
    Length {
        /// Identifier kind.
        kind: IdKind,
        /// Required number of digits.
        expected: usize,
        /// Digits found.
        got: usize,
    },
    /// Every digit is the same (e.g. `00000000000`), which passes some check-digit rules.
    #[error("{kind} must not be all the same digit")]
    AllSameDigit {
        /// Identifier kind.
        kind: IdKind,
    },
    /// A check digit does not match the one computed from the other digits.
    #[error("{kind} check digit mismatch: expected {expected}, found {found}")]
    CheckDigit {
        /// Identifier kind.
        kind: IdKind,
        /// Check digit computed from the body.
        expected: u8,
        /// Check digit present in the input.
        found: u8,
    },
    /// The first digit is not one the scheme allows.
    #[error("{kind} must start with one of {allowed}, got {found}")]
    LeadingDigit {
        /// Identifier kind.
        kind: IdKind,
        /// Allowed leading digits, human readable.
        allowed: &'static str,
        /// Leading digit found.
        found: u8,
    },
    /// The CNS weighted sum is not a multiple of 11.
    #[error("CNS weighted digit sum must be divisible by 11, remainder is {remainder}")]
    CnsChecksum {
        /// Weighted sum mod 11.
        remainder: u8,
    },
    /// A definitive CNS (starting 1 or 2) must be derived from an 11-digit PIS; it is not.
    #[error(
        "CNS starting with 1 or 2 must end in the digits derived from its first 11 digits: expected {expected}, found {found}"
    )]
    CnsDefinitive {
        /// Expected last four digits.
        expected: String,
        /// Last four digits found.
        found: String,
    },
    /// The two-digit state (UF) prefix of an IBGE code is not in the IBGE list.
    #[error("IBGE municipality code has unknown state (UF) prefix {prefix}")]
    UnknownUf {
        /// The prefix found.
        prefix: u8,
    },
}

/// Extracts the digits from `input`, accepting `.`, `-`, `/` and whitespace as punctuation.
fn digits<const N: usize>(kind: IdKind, input: &str) -> Result<[u8; N], IdError> {
    let mut out = [0u8; N];
    let mut got = 0usize;
    for (position, c) in input.chars().enumerate() {
        match c {
            '0'..='9' => {
                if got < N {
                    out[got] = c as u8 - b'0';
                }
                got += 1;
            }
            '.' | '-' | '/' | ' ' | '\t' => {}
            found => {
                return Err(IdError::InvalidCharacter {
                    kind,
                    found,
                    position,
                });
            }
        }
    }
    if got != N {
        return Err(IdError::Length {
            kind,
            expected: N,
            got,
        });
    }
    Ok(out)
}

fn all_same(d: &[u8]) -> bool {
    d.windows(2).all(|w| w[0] == w[1])
}

fn weighted_sum(d: &[u8], weights: &[u32]) -> u32 {
    d.iter().zip(weights).map(|(&x, &w)| u32::from(x) * w).sum()
}

fn to_ascii<const N: usize>(d: [u8; N]) -> [u8; N] {
    d.map(|x| x + b'0')
}

fn ascii_str(bytes: &[u8]) -> &str {
    // Only ASCII digits are ever stored, so this cannot fail; an empty string is a safe fallback.
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// Implements Display, FromStr, Serialize and Deserialize through the string form.
/// `string_form!(T, also CONST)` also reads back `CONST`, a value `parse` refuses.
macro_rules! string_form {
    ($t:ty) => {
        string_form!($t, also);
    };
    ($t:ty, also $($extra:expr)?) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $t {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <$t>::parse(s)
            }
        }
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $(if s == $extra.as_str() {
                    return Ok($extra);
                })?
                <$t>::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// NIS
// ---------------------------------------------------------------------------------------------

const NIS_WEIGHTS: [u32; 10] = [3, 2, 9, 8, 7, 6, 5, 4, 3, 2];

/// Computes the NIS check digit and the weighted-sum remainder from the first ten digits.
///
/// DV = 11 − (Σ mod 11), where 10 and 11 become 0 (docs/rules.md#identifiers; jquery-validation
/// `nit_pis_pasepBR.js`, poliquin/brazilnum: docs/sources.md#nis).
fn nis_check(body: &[u8]) -> (u8, u8) {
    let r = (weighted_sum(body, &NIS_WEIGHTS) % 11) as u8;
    let dv = 11 - r;
    (if dv >= 10 { 0 } else { dv }, r)
}

/// Social identification number (Número de Identificação Social, = PIS/PASEP/NIT), 11 digits.
///
/// The beneficiary key of the whole hub.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nis([u8; 11]);

impl Nis {
    /// Parses a NIS, accepting punctuation such as `268.27649.96-0`.
    pub fn parse(input: &str) -> Result<Nis, IdError> {
        let kind = IdKind::Nis;
        let d: [u8; 11] = digits(kind, input)?;
        if all_same(&d) {
            return Err(IdError::AllSameDigit { kind });
        }
        let (expected, _) = nis_check(&d[..10]);
        if d[10] != expected {
            return Err(IdError::CheckDigit {
                kind,
                expected,
                found: d[10],
            });
        }
        Ok(Nis(to_ascii(d)))
    }

    /// Builds the NIS whose first ten digits are `body`, appending the check digit (for
    /// synthetic populations and generators).
    pub fn with_check_digit(body: &str) -> Result<Nis, IdError> {
        let d: [u8; 10] = digits(IdKind::Nis, body).map_err(|e| match e {
            IdError::Length { got, .. } => IdError::Length {
                kind: IdKind::Nis,
                expected: 10,
                got,
            },
            other => other,
        })?;
        let (dv, _) = nis_check(&d);
        let full: [u8; 11] = std::array::from_fn(|i| if i < 10 { d[i] } else { dv });
        if all_same(&full) {
            return Err(IdError::AllSameDigit { kind: IdKind::Nis });
        }
        Ok(Nis(to_ascii(full)))
    }

    /// The 11 digits.
    pub fn as_str(&self) -> &str {
        ascii_str(&self.0)
    }

    /// True when the weighted-sum remainder is 1, i.e. the raw check digit would be 10 and was
    /// mapped to 0. Some implementations reject these numbers (erpbrasil); we accept them, as the
    /// sources do not settle which rule the issuer uses, and let callers count them.
    pub fn check_digit_from_remainder_one(&self) -> bool {
        let body: [u8; 10] = std::array::from_fn(|i| self.0[i] - b'0');
        nis_check(&body).1 == 1
    }

    /// A form safe for logs: only the last four digits are shown (`*******9960`).
    pub fn masked(&self) -> String {
        mask(self.as_str(), 4)
    }
}

impl fmt::Debug for Nis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nis({})", self.as_str())
    }
}

string_form!(Nis);

fn mask(s: &str, visible: usize) -> String {
    let n = s.len().saturating_sub(visible);
    s.char_indices()
        .map(|(i, c)| if i < n { '*' } else { c })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// CPF
// ---------------------------------------------------------------------------------------------

/// CPF check digit over `body` with weights `len+1 .. 2`: r = Σ mod 11; DV = 0 if r < 2 else 11 − r.
fn cpf_dv(body: &[u8]) -> u8 {
    let n = body.len() as u32 + 1;
    let sum: u32 = body
        .iter()
        .enumerate()
        .map(|(i, &x)| u32::from(x) * (n - i as u32))
        .sum();
    let r = (sum % 11) as u8;
    if r < 2 { 0 } else { 11 - r }
}

/// Individual taxpayer number (Cadastro de Pessoas Físicas), 11 digits with two check digits.
///
/// Used on the health side to identify people.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cpf([u8; 11]);

impl Cpf {
    /// Parses a CPF, accepting punctuation such as `529.982.247-25`.
    pub fn parse(input: &str) -> Result<Cpf, IdError> {
        let kind = IdKind::Cpf;
        let d: [u8; 11] = digits(kind, input)?;
        if all_same(&d) {
            return Err(IdError::AllSameDigit { kind });
        }
        let dv1 = cpf_dv(&d[..9]);
        if d[9] != dv1 {
            return Err(IdError::CheckDigit {
                kind,
                expected: dv1,
                found: d[9],
            });
        }
        let dv2 = cpf_dv(&d[..10]);
        if d[10] != dv2 {
            return Err(IdError::CheckDigit {
                kind,
                expected: dv2,
                found: d[10],
            });
        }
        Ok(Cpf(to_ascii(d)))
    }

    /// Builds the CPF whose first nine digits are `body`, appending both check digits.
    pub fn with_check_digits(body: &str) -> Result<Cpf, IdError> {
        let d: [u8; 9] = digits(IdKind::Cpf, body)?;
        let mut full = [0u8; 11];
        full[..9].copy_from_slice(&d);
        full[9] = cpf_dv(&full[..9]);
        full[10] = cpf_dv(&full[..10]);
        if all_same(&full) {
            return Err(IdError::AllSameDigit { kind: IdKind::Cpf });
        }
        Ok(Cpf(to_ascii(full)))
    }

    /// The 11 digits.
    pub fn as_str(&self) -> &str {
        ascii_str(&self.0)
    }

    /// A form safe for logs: only the last four digits are shown.
    pub fn masked(&self) -> String {
        mask(self.as_str(), 4)
    }
}

impl fmt::Debug for Cpf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cpf({})", self.as_str())
    }
}

string_form!(Cpf);

// ---------------------------------------------------------------------------------------------
// CNS
// ---------------------------------------------------------------------------------------------

/// National health card number (Cartão Nacional de Saúde), 15 digits.
///
/// Definitive numbers start with 1 or 2 and are derived from an 11-digit PIS; provisional numbers
/// start with 7, 8 or 9. Both satisfy Σ dᵢ·(15−i) ≡ 0 (mod 11) (Ministry of Health validation
/// routine, reproduced in `docs/rules.md`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cns([u8; 15]);

const CNS_WEIGHTS: [u32; 15] = [15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1];

impl Cns {
    /// Parses a CNS, accepting spaces and punctuation (`898 0016 3298 4713`).
    pub fn parse(input: &str) -> Result<Cns, IdError> {
        let kind = IdKind::Cns;
        let d: [u8; 15] = digits(kind, input)?;
        if all_same(&d) {
            return Err(IdError::AllSameDigit { kind });
        }
        match d[0] {
            1 | 2 => {
                // Definitive: regenerate the last four digits from the first eleven.
                let s = weighted_sum(&d[..11], &CNS_WEIGHTS[..11]);
                let mut dv = 11 - (s % 11);
                if dv == 11 {
                    dv = 0;
                }
                let expected = if dv == 10 {
                    let dv = 11 - ((s + 2) % 11);
                    let dv = if dv == 11 { 0 } else { dv };
                    format!("001{dv}")
                } else {
                    format!("000{dv}")
                };
                let found: String = d[11..].iter().map(|x| char::from(x + b'0')).collect();
                if expected != found {
                    return Err(IdError::CnsDefinitive { expected, found });
                }
            }
            7..=9 => {
                let r = (weighted_sum(&d, &CNS_WEIGHTS) % 11) as u8;
                if r != 0 {
                    return Err(IdError::CnsChecksum { remainder: r });
                }
            }
            found => {
                return Err(IdError::LeadingDigit {
                    kind,
                    allowed: "1, 2, 7, 8, 9",
                    found,
                });
            }
        }
        Ok(Cns(to_ascii(d)))
    }

    /// The 15 digits.
    pub fn as_str(&self) -> &str {
        ascii_str(&self.0)
    }

    /// True for provisional numbers (starting 7, 8 or 9).
    pub fn is_provisional(&self) -> bool {
        self.0[0] >= b'7'
    }

    /// A form safe for logs: only the last four digits are shown.
    pub fn masked(&self) -> String {
        mask(self.as_str(), 4)
    }
}

impl fmt::Debug for Cns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cns({})", self.as_str())
    }
}

string_form!(Cns);

// ---------------------------------------------------------------------------------------------
// IBGE municipality code
// ---------------------------------------------------------------------------------------------

/// IBGE state (UF) codes; they run 11–53 and are not contiguous
/// (docs/sources.md#ibge-municipality).
pub const UF_CODES: [u8; 27] = [
    11, 12, 13, 14, 15, 16, 17, // North
    21, 22, 23, 24, 25, 26, 27, 28, 29, // North-east
    31, 32, 33, 35, // South-east
    41, 42, 43, // South
    50, 51, 52, 53, // Centre-west
];

/// The nine official municipality codes that violate the check-digit rule and are valid anyway
/// (poliquin/brazilnum `muni.py`, citing SEFAZ NT2008.004; docs/sources.md#ibge-municipality).
pub const IBGE_CHECK_DIGIT_EXCEPTIONS: [&str; 9] = [
    "2201919", "2201988", "2202251", "2611533", "3117836", "3152131", "4305871", "5203939",
    "5203962",
];

/// IBGE check digit: weights 1,2,1,2,1,2 on the first six digits; a product ≥ 10 contributes the
/// sum of its digits; DV = (10 − Σ mod 10) mod 10.
fn ibge_dv(body: &[u8]) -> u8 {
    let s: u32 = body
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let p = u32::from(x) * if i % 2 == 0 { 1 } else { 2 };
            if p >= 10 { 1 + p % 10 } else { p }
        })
        .sum();
    ((10 - s % 10) % 10) as u8
}

/// IBGE municipality code, 7 digits: state (2) + municipality (4) + check digit.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IbgeMunicipality([u8; 7]);

impl IbgeMunicipality {
    /// `0000000`: no municipality. Only the fixed content of tombstones
    /// ([`crate::records`]); never the result of parsing.
    pub const NONE: IbgeMunicipality = IbgeMunicipality(*b"0000000");

    /// Parses a 7-digit IBGE municipality code.
    pub fn parse(input: &str) -> Result<IbgeMunicipality, IdError> {
        let kind = IdKind::IbgeMunicipality;
        let d: [u8; 7] = digits(kind, input)?;
        let ascii = to_ascii(d);
        if IBGE_CHECK_DIGIT_EXCEPTIONS.contains(&ascii_str(&ascii)) {
            return Ok(IbgeMunicipality(ascii));
        }
        let prefix = d[0] * 10 + d[1];
        if !UF_CODES.contains(&prefix) {
            return Err(IdError::UnknownUf { prefix });
        }
        let expected = ibge_dv(&d[..6]);
        if d[6] != expected {
            return Err(IdError::CheckDigit {
                kind,
                expected,
                found: d[6],
            });
        }
        Ok(IbgeMunicipality(ascii))
    }

    /// Builds the code whose first six digits are `body`, appending the check digit. The UF
    /// prefix is still checked.
    pub fn with_check_digit(body: &str) -> Result<IbgeMunicipality, IdError> {
        let d: [u8; 6] = digits(IdKind::IbgeMunicipality, body)?;
        let prefix = d[0] * 10 + d[1];
        if !UF_CODES.contains(&prefix) {
            return Err(IdError::UnknownUf { prefix });
        }
        let full: [u8; 7] = std::array::from_fn(|i| if i < 6 { d[i] } else { ibge_dv(&d) });
        Ok(IbgeMunicipality(to_ascii(full)))
    }

    /// The 7 digits.
    pub fn as_str(&self) -> &str {
        ascii_str(&self.0)
    }

    /// The state (UF) code, 11–53.
    pub fn uf(&self) -> u8 {
        (self.0[0] - b'0') * 10 + (self.0[1] - b'0')
    }
}

impl fmt::Debug for IbgeMunicipality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IbgeMunicipality({})", self.as_str())
    }
}

// The tombstones' `NONE` is stored and must read back.
string_form!(IbgeMunicipality, also IbgeMunicipality::NONE);

// ---------------------------------------------------------------------------------------------
// INEP
// ---------------------------------------------------------------------------------------------

/// INEP school code, 8 digits. No check digit is published, so only the length and the
/// all-zero value are checked (length itself is UNCERTAIN in the sources; see `docs/rules.md`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Inep([u8; 8]);

impl Inep {
    /// Parses an 8-digit INEP school code.
    pub fn parse(input: &str) -> Result<Inep, IdError> {
        let kind = IdKind::Inep;
        let d: [u8; 8] = digits(kind, input)?;
        if d.iter().all(|&x| x == 0) {
            return Err(IdError::AllSameDigit { kind });
        }
        Ok(Inep(to_ascii(d)))
    }

    /// The 8 digits.
    pub fn as_str(&self) -> &str {
        ascii_str(&self.0)
    }
}

impl fmt::Debug for Inep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Inep({})", self.as_str())
    }
}

string_form!(Inep);

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors from docs/rules.md#test-vectors (rules: docs/sources.md#nis).
    #[test]
    fn nis_vectors() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            // docs/rules.md#test-vectors: valid
            ("26827649960", Ok("26827649960")),
            // the mask XXX.XXXXX.XX-D (docs/sources.md#nis): the same number punctuated
            ("268.27649.96-0", Ok("26827649960")),
            // docs/rules.md#test-vectors: valid
            ("46952280637", Ok("46952280637")),
            ("469.52280.63-7", Ok("46952280637")),
            // docs/rules.md#test-vectors: invalid (check digit)
            (
                "26827649961",
                Err("NIS check digit mismatch: expected 0, found 1"),
            ),
            // length rule (docs/rules.md#identifiers: 11 digits)
            ("2682764996", Err("NIS must have 11 digits, got 10")),
            ("268276499600", Err("NIS must have 11 digits, got 12")),
            ("", Err("NIS must have 11 digits, got 0")),
            // all-same-digit rule (docs/rules.md#identifiers); 00000000000 would pass the DV rule
            ("00000000000", Err("NIS must not be all the same digit")),
            ("11111111111", Err("NIS must not be all the same digit")),
            (
                "2682764996a",
                Err("NIS contains invalid character 'a' at position 10"),
            ),
        ];
        for (input, expected) in cases {
            let got = Nis::parse(input)
                .map(|n| n.as_str().to_owned())
                .map_err(|e| e.to_string());
            assert_eq!(
                got,
                expected.map(str::to_owned).map_err(str::to_owned),
                "{input}"
            );
        }
    }

    #[test]
    fn nis_remainder_one_is_accepted_and_flagged() {
        // docs/sources.md#nis: r = 1 (DV would be 10) maps to 0 and is accepted but flagged.
        // 1000000003x: Σ = 3·1 + 2·3 = 9 → r = 9; search a body with r = 1 instead.
        let body = find_body_with_remainder(1);
        let n = Nis::parse(&format!("{body}0")).unwrap();
        assert!(n.check_digit_from_remainder_one());
        assert!(
            !Nis::parse("26827649960")
                .unwrap()
                .check_digit_from_remainder_one()
        );
    }

    fn find_body_with_remainder(r: u32) -> String {
        (1_000_000_000u64..)
            .map(|n| n.to_string())
            .find(|s| {
                let d: Vec<u8> = s.bytes().map(|b| b - b'0').collect();
                weighted_sum(&d, &NIS_WEIGHTS) % 11 == r
            })
            .unwrap()
    }

    #[test]
    fn cpf_vectors() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            // Worked by hand in docs/rules.md (weights 10..2 then 11..2): 529.982.247-25 valid.
            ("529.982.247-25", Ok("52998224725")),
            ("52998224725", Ok("52998224725")),
            // Same body, wrong second digit.
            (
                "52998224726",
                Err("CPF check digit mismatch: expected 5, found 6"),
            ),
            // Wrong first digit.
            (
                "52998224735",
                Err("CPF check digit mismatch: expected 2, found 3"),
            ),
            ("111.111.111-11", Err("CPF must not be all the same digit")),
            ("5299822472", Err("CPF must have 11 digits, got 10")),
        ];
        for (input, expected) in cases {
            let got = Cpf::parse(input)
                .map(|n| n.as_str().to_owned())
                .map_err(|e| e.to_string());
            assert_eq!(
                got,
                expected.map(str::to_owned).map_err(str::to_owned),
                "{input}"
            );
        }
    }

    #[test]
    fn cns_vectors() {
        // Worked by hand with the Ministry of Health routine (docs/rules.md, "CNS"): a definitive
        // CNS is the PIS/NIS + "000"/"001" + DV; provisional ones satisfy Σ dᵢ·(15−i) ≡ 0 mod 11.
        let cases: &[(&str, Result<&str, &str>)] = &[
            // From NIS 26827649960: Σ = 586, 586 mod 11 = 3, DV = 8.
            ("268 2764 9960 0008", Ok("268276499600008")),
            // Σ of first eleven = 45 ≡ 1 → DV would be 10 → "001" branch: (45+2) mod 11 = 3, DV = 8.
            ("100000000060018", Ok("100000000060018")),
            // Provisional: 7·15 = 105 ≡ 6 → last digit 5.
            ("700000000000005", Ok("700000000000005")),
            (
                "268276499600009",
                Err(
                    "CNS starting with 1 or 2 must end in the digits derived from its first 11 digits: expected 0008, found 0009",
                ),
            ),
            (
                "700000000000006",
                Err("CNS weighted digit sum must be divisible by 11, remainder is 1"),
            ),
            (
                "300000000000005",
                Err("CNS must start with one of 1, 2, 7, 8, 9, got 3"),
            ),
            ("70000000000000", Err("CNS must have 15 digits, got 14")),
        ];
        for (input, expected) in cases {
            let got = Cns::parse(input)
                .map(|n| n.as_str().to_owned())
                .map_err(|e| e.to_string());
            assert_eq!(
                got,
                expected.map(str::to_owned).map_err(str::to_owned),
                "{input}"
            );
        }
        assert!(Cns::parse("700000000000005").unwrap().is_provisional());
        assert!(!Cns::parse("268276499600008").unwrap().is_provisional());
    }

    #[test]
    fn ibge_vectors() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            // docs/rules.md#test-vectors: worked vectors
            ("3550308", Ok("3550308")),
            ("2704302", Ok("2704302")),
            ("1100015", Ok("1100015")),
            (
                "3550307",
                Err("IBGE municipality code check digit mismatch: expected 8, found 7"),
            ),
            // official exception (docs/sources.md#ibge-municipality)
            ("2201919", Ok("2201919")),
            ("5203962", Ok("5203962")),
            // UF 10 is not an IBGE state code (docs/sources.md#ibge-municipality: 11–53, not
            // contiguous)
            (
                "1000007",
                Err("IBGE municipality code has unknown state (UF) prefix 10"),
            ),
            (
                "355030",
                Err("IBGE municipality code must have 7 digits, got 6"),
            ),
        ];
        for (input, expected) in cases {
            let got = IbgeMunicipality::parse(input)
                .map(|n| n.as_str().to_owned())
                .map_err(|e| e.to_string());
            assert_eq!(
                got,
                expected.map(str::to_owned).map_err(str::to_owned),
                "{input}"
            );
        }
        assert_eq!(IbgeMunicipality::parse("3550308").unwrap().uf(), 35);
    }

    #[test]
    fn every_ibge_exception_is_accepted_and_violates_the_rule() {
        for code in IBGE_CHECK_DIGIT_EXCEPTIONS {
            assert!(IbgeMunicipality::parse(code).is_ok(), "{code}");
            let d: Vec<u8> = code.bytes().map(|b| b - b'0').collect();
            assert_ne!(ibge_dv(&d[..6]), d[6], "{code} is listed as an exception");
        }
    }

    #[test]
    fn inep_vectors() {
        // docs/rules.md#identifiers: INEP identifies schools, 8 digits.
        assert_eq!(Inep::parse("35012345").unwrap().as_str(), "35012345");
        assert_eq!(
            Inep::parse("3501234").unwrap_err().to_string(),
            "INEP school code must have 8 digits, got 7"
        );
        assert!(Inep::parse("00000000").is_err());
    }

    #[test]
    fn serde_round_trip_uses_string_form() {
        let n = Nis::parse("268.27649.96-0").unwrap();
        let v = toml::Value::try_from(n).unwrap();
        assert_eq!(v.as_str(), Some("26827649960"));
        #[derive(serde::Deserialize)]
        struct W {
            nis: Nis,
        }
        let w: W = toml::from_str(r#"nis = "26827649960""#).unwrap();
        assert_eq!(w.nis, n);
        let e = toml::from_str::<W>(r#"nis = "26827649961""#)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("NIS check digit mismatch"), "{e}");
    }

    #[test]
    fn masked_hides_all_but_last_four() {
        assert_eq!(Nis::parse("26827649960").unwrap().masked(), "*******9960");
    }
}
