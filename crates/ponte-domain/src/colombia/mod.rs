//! Colombian identity and geography: identity documents and their numbers, a person's identity
//! across the documents they hold as they grow up, DIVIPOLA municipality codes and Sisbén IV
//! groups.
//!
//! As in [`crate::ids`], every value is parsed once at the edge into a type that cannot hold an
//! invalid one; parsing accepts the usual punctuation of document numbers (`.`, `-`, spaces) and
//! never "corrects" a value (a zero-padded number or a municipality code that lost its leading
//! zero is refused with a message saying so, and the record goes to the dead-letter topic).
//!
//! The sources say which document a person carries at which age and that the NUIP stays with a
//! Colombian for life; they give no length or check digit for any document number. The lengths
//! below are Ponte's decisions (`docs/rules.md`, "Unidos", decisions U12 and U14–U16); the
//! sources are `docs/sources.md#registraduria-nuip`, `#registraduria-tarjeta-identidad`,
//! `#cedula-extranjeria`, `#ppt`, `#divipola` and `#sisben-iv`.
//!
//! Error messages name the rule and the offending part. Codes (document types, DIVIPOLA, Sisbén
//! groups) are quoted in full; a document number never is, because it identifies a person and
//! error messages reach dead-letter reasons and logs (decision U14).

mod divipola;
mod documents;
mod identity;
mod sisben;

pub use divipola::{DEPARTMENTS, Department, Divipola};
pub use documents::{AgeRange, Document, DocumentNumber, DocumentType};
pub use identity::{
    Continuity, DocumentForAge, HeldDocument, IdentityConflict, PersonIdentity, PersonKey,
};
pub use sisben::{SisbenClass, SisbenGroup};

/// Why a Colombian identifier or code was rejected. The Display text names the rule that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoIdError {
    /// The document type code is not one Ponte knows.
    #[error(
        "unknown identity document type {found:?}: expected one of RC, TI, CC, CE, PT (or PPT)"
    )]
    DocumentType {
        /// The code given.
        found: String,
    },
    /// A character that is neither a digit nor accepted punctuation.
    #[error("{kind} number contains invalid character {found:?} at position {position}")]
    InvalidCharacter {
        /// Document type.
        kind: DocumentType,
        /// The offending character.
        found: char,
        /// Character position in the input (0-based).
        position: usize,
    },
    /// Too few or too many digits for the document type.
    #[error("{kind} number must have {} digits, got {got}", range(*min, *max))]
    Length {
        /// Document type.
        kind: DocumentType,
        /// Fewest digits accepted.
        min: usize,
        /// Most digits accepted.
        max: usize,
        /// Digits found.
        got: usize,
    },
    /// Document numbers are integers issued in sequence; a leading zero is padding.
    #[error("{kind} number must not start with 0 (document numbers are not zero-padded)")]
    LeadingZero {
        /// Document type.
        kind: DocumentType,
    },
    /// A DIVIPOLA code with a character other than a digit.
    #[error(
        "DIVIPOLA municipality code {input:?} contains invalid character {found:?} at position {position}"
    )]
    DivipolaCharacter {
        /// The input.
        input: String,
        /// The offending character.
        found: char,
        /// Character position (0-based).
        position: usize,
    },
    /// A DIVIPOLA municipality code that does not have 5 digits.
    #[error("DIVIPOLA municipality code {input:?} must have 5 digits, got {got}{hint}")]
    DivipolaLength {
        /// The input.
        input: String,
        /// Digits found.
        got: usize,
        /// A hint for the usual cause (a code stored as a number loses its leading zero).
        hint: &'static str,
    },
    /// The first two digits are not one of DANE's department codes.
    #[error(
        "DIVIPOLA municipality code {input:?}: department {department:02} is not one of DANE's 33 department codes"
    )]
    UnknownDepartment {
        /// The input.
        input: String,
        /// The department code found.
        department: u8,
    },
    /// `ddd000` names a department, not a municipality.
    #[error(
        "DIVIPOLA municipality code {input:?}: the municipality part must not be 000 (that names the department itself)"
    )]
    MunicipalityZero {
        /// The input.
        input: String,
    },
    /// A Sisbén IV group that is not a letter followed by a number.
    #[error(
        "Sisbén IV group {input:?}: expected a group letter A, B, C or D followed by a subgroup number, e.g. B4"
    )]
    SisbenFormat {
        /// The input.
        input: String,
    },
    /// A Sisbén IV subgroup outside its group's range.
    #[error("Sisbén IV group {input:?}: group {letter} has subgroups {letter}1 to {letter}{max}")]
    SisbenSubgroup {
        /// The input.
        input: String,
        /// The group letter.
        letter: char,
        /// Last subgroup of the group.
        max: u8,
    },
}

fn range(min: usize, max: usize) -> String {
    if min == max {
        min.to_string()
    } else {
        format!("{min} to {max}")
    }
}
