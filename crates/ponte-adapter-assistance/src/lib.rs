//! The assistance adapter (`ponte assistance-adapter`), for the specific-conditionality system:
//! the social assistance side pushes
//! - registry person profiles (the monitored public and the CNS/CPF crosswalk, PETI
//!   membership, pregnancy) → `PersonProfile` on `registry.persons.v1`, keyed by NIS;
//! - monthly SCFV attendance of PETI children → `ScfvAttendance` on `assistance.person.v1`,
//!   keyed by NIS;
//! - family follow-up with interruption of effects, and appeals with their decisions →
//!   `FamilyFollowUp` / `Appeal` on `assistance.family.v1`, keyed by family id;
//! - erasure orders (LGPD) → `PersonErasure` on `registry.persons.v1`, keyed by NIS;
//! - for household-accompaniment programmes (Colombia's Unidos), household profiles and the
//!   evidence about households (social workers' visits, dated registry items) →
//!   `HouseholdProfile` / `HouseholdEvidence` on `assistance.family.v1`, keyed by household id.
//!
//! Every record is validated (identifiers by their check digits, dates, hours, decisions) and
//! answered only once the broker has acknowledged it; invalid records are answered with the
//! field and the reason and land on the dead-letter topic with their original bytes.
//!
//! This crate never decides compliance or effects: a low attendance, an interruption request or
//! an accepted appeal is published as it is; what it means is the rule set's business.
//!
//! Without the default `service` feature the crate is only the parsers (for the fuzz targets).
pub mod csv;
pub mod erasure;
pub mod family;
pub mod household;
pub mod person;
pub mod record;
pub mod scfv;
#[cfg(feature = "service")]
pub mod service;

pub use record::{Destination, Kind, RecordError, ValidRecord, parse_json};
#[cfg(feature = "service")]
pub use service::{AssistanceAdapterConfig, run};
