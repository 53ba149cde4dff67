//! Ponte's compliance engine for conditional cash transfer programmes.
//!
//! Identifiers, periods, rule sets, per-person outcomes, family effects and indicators.
//! This crate is pure: no I/O, no async, no Kafka, no clock reads — dates are passed in and rule
//! files are read by the caller and handed over as text. It must never hard-code a programme's
//! figures where a rule set can carry them.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod ids;
pub mod period;
