//! Ponte's compliance engine for conditional cash transfer programmes.
//!
//! Identifiers, periods, rule sets, per-person outcomes, family effects and indicators.
//! This crate is pure: no I/O, no async, no Kafka, no clock reads — dates are passed in and rule
//! files are read by the caller and handed over as text. It must never hard-code a programme's
//! figures where a rule set can carry them.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod achievements;
pub mod colombia;
pub mod effects;
mod evidence_json;
pub mod ids;
pub mod indicators;
pub mod outcome;
pub mod period;
pub mod records;
pub mod rule_file;
pub mod rules;

/// Any error of this crate. Every one is bad input (a record or a rule file): a retry cannot
/// help; a record that fails goes to the dead-letter topic with this message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// An identifier failed validation.
    #[error(transparent)]
    Id(#[from] ids::IdError),
    /// A Colombian identifier or code failed validation.
    #[error(transparent)]
    ColombianId(#[from] colombia::CoIdError),
    /// A document does not continue a person's identity.
    #[error(transparent)]
    Identity(#[from] colombia::IdentityConflict),
    /// A date or period failed validation.
    #[error(transparent)]
    Period(#[from] period::PeriodError),
    /// A rule set failed to load.
    #[error(transparent)]
    RuleSet(#[from] rules::RuleSetError),
    /// A record was addressed to the wrong person or family.
    #[error(transparent)]
    Record(#[from] records::RecordError),
    /// A record was addressed to the wrong household.
    #[error(transparent)]
    Household(#[from] achievements::household::WrongHousehold),
    /// An attendance figure is impossible.
    #[error(transparent)]
    Attendance(#[from] records::AttendanceError),
    /// An indicator could not be computed.
    #[error(transparent)]
    Indicator(#[from] indicators::IndicatorError),
}
