//! The education adapter (`ponte education-adapter`): the education system pushes monthly school
//! attendance (frequência escolar) as JSON; the adapter validates every record, maps it to a
//! `ponte.events.v1.SchoolAttendance` event keyed by NIS, and answers only once the broker has
//! acknowledged it. Invalid records are answered with the field and the reason and land on the
//! dead-letter topic with their original bytes.
//!
//! The parsers ([`record`], [`csv`]) need no I/O; the HTTP service and its Kafka client are the
//! default feature `service`, so the fuzz targets (`fuzz/`) build without librdkafka.
//!
//! For household-accompaniment programmes (Colombia's Unidos), the education system's results
//! about a household's members — enrolment, completed secondary — are taken as household
//! evidence ([`household`], `POST /v1/household-evidence`) and published as
//! `ponte.events.v1.HouseholdEvidence` keyed by household id.
//!
//! This crate never decides compliance: a low attendance is published as it is; thresholds and
//! reason codes are the reconciler's and the rule set's business.
pub mod csv;
pub mod household;
pub mod record;
#[cfg(feature = "service")]
pub mod service;

#[cfg(feature = "service")]
pub use service::{EducationAdapterConfig, run};
