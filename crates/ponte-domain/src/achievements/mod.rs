//! Household achievements: programmes in which social workers accompany households and follow
//! achievements in several dimensions, with evidence from more than one sector, until the
//! household meets the exit criteria — Colombia's Estrategia Unidos (`rules/unidos-2021.toml`)
//! is the first.
//!
//! The engine is generic: the achievements, whom they concern, the items and sources that
//! establish them and the exit criteria are data ([`rules`]); the household is the registry's
//! profile plus versioned evidence records ([`household`]); evaluation gives each achievement's
//! state with the evidence used, per member and for the household, and the exit test
//! ([`evaluate`], [`exit`]). Nothing here is shared with, or changes, the evaluation of
//! conditionalities ([`crate::outcome`], [`crate::effects`]).
//!
//! Like the rest of the crate, this module does no I/O and never reads the clock: the
//! evaluation day is passed in.

pub mod evaluate;
pub mod exit;
pub mod household;
pub mod rules;
pub mod value;

pub use evaluate::{AchievementOutcome, EvidenceUsed, HouseholdEvaluation, MemberOutcome};
pub use exit::{CriterionOutcome, CriterionState, ExitOutcome, MissingEvidence};
pub use household::{
    EvidenceRecord, HouseholdId, HouseholdProfile, HouseholdRecord, HouseholdState, Member,
    Subject, Zone,
};
pub use rules::{AchievementRuleSet, AchievementState};
pub use value::{Decimal, Value};
