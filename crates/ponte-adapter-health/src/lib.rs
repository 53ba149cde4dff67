//! The health adapter (`ponte health-adapter`): health systems push FHIR R4 bundles
//! (`POST /fhir/Bundle`) or simple JSON follow-up records (`POST /v1/health`), or the adapter
//! polls a FHIR server's search API (pull mode). Every record is validated, mapped to a
//! `ponte.events.v1.HealthFollowUp` keyed by the CNS, CPF or NIS it arrived with, and answered
//! only once the broker has acknowledged it. Invalid records are answered with the bundle entry
//! (or record position) and the reason, and land on the dead-letter topic with their original
//! bytes.
//!
//! This crate never resolves a CNS or CPF to a NIS (the reconciler does) and never decides
//! compliance.
pub mod fhir;
#[cfg(feature = "service")]
pub mod household_fhir;
#[cfg(feature = "service")]
pub mod pull;
pub mod record;
#[cfg(feature = "service")]
pub mod service;
pub mod simple;
pub mod watermark;

#[cfg(feature = "service")]
pub use service::{HealthAdapterConfig, run};
