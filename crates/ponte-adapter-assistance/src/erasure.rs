//! Erasure orders: the controller's decision that a person's data be deleted (LGPD art. 18,
//! docs/privacy.md), sent by a principal the access policy lets send `erasure` records — in
//! practice `ponte erase <nis>` run by the operator. Published to `registry.persons.v1`, keyed
//! by NIS, with record id `<source>:erasure:<nis>` and, as version, the time of reception in
//! milliseconds (a later order is a later version). The reconciler removes the person
//! everywhere it keeps them; this adapter only checks the order and makes it durable.
use std::time::{Duration, SystemTime};

use ponte_proto::events::v1::{PersonErasure, event::Record};
use serde::Deserialize;

use crate::record::{self, Destination, Envelope, RecordError, ValidRecord, present, required};

/// Longest `reference` taken.
const MAX_REFERENCE_CHARS: usize = 128;

/// One erasure order as `POST /v1/erasures` takes it. See `docs/privacy.md`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasureInput {
    /// NIS of the person to erase; punctuation accepted.
    pub nis: Option<String>,
    /// The controller's reference for the request (a case number), never personal data.
    pub reference: Option<String>,
}

/// Validates one order into a `PersonErasure` event received at `now`.
pub fn validate(
    input: &ErasureInput,
    source_system: &str,
    now: SystemTime,
) -> Result<ValidRecord, RecordError> {
    let nis = record::nis("nis", required("nis", input.nis.as_deref())?)?;
    let reference = present(input.reference.as_deref()).unwrap_or_default();
    if reference.chars().count() > MAX_REFERENCE_CHARS {
        return Err(RecordError::value(
            "reference",
            format!("longer than {MAX_REFERENCE_CHARS} characters"),
        ));
    }
    if reference.chars().any(char::is_control) {
        return Err(RecordError::value("reference", "holds a control character"));
    }
    let millis = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis();
    let env = Envelope {
        version: u64::try_from(millis).unwrap_or(u64::MAX).max(1),
        recorded_at: None,
    };
    Ok(ValidRecord {
        destination: Destination::RegistryPersons,
        key: nis.as_str().to_owned(),
        event: env.event(
            format!("{source_system}:erasure:{}", nis.as_str()),
            source_system,
            now,
            false,
            Record::PersonErasure(PersonErasure {
                nis: nis.as_str().to_owned(),
                reference: reference.to_owned(),
            }),
        ),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn order(json: &str) -> Result<ValidRecord, RecordError> {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
        crate::parse_json(crate::Kind::Erasure, json, "operator", now)
    }

    #[test]
    fn an_order_goes_to_the_registry_topic_keyed_by_the_nis_versioned_by_its_reception() {
        let v = order(r#"{"nis": "268.27649.96-0", "reference": "SIC 2026-0042"}"#).unwrap();
        assert_eq!(v.destination, Destination::RegistryPersons);
        assert_eq!(v.key, "26827649960");
        assert_eq!(v.event.record_id, "operator:erasure:26827649960");
        assert_eq!(v.event.version, 1_780_000_000_000);
        assert_eq!(
            v.event.record,
            Some(Record::PersonErasure(PersonErasure {
                nis: "26827649960".into(),
                reference: "SIC 2026-0042".into(),
            }))
        );
    }

    #[test]
    fn a_bad_order_names_the_field_and_the_rule() {
        let e = order(r#"{"reference": "x"}"#).unwrap_err();
        assert_eq!((e.field.as_str(), e.error_type), ("nis", "missing_field"));
        let e = order(r#"{"nis": "26827649961"}"#).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.error_type),
            ("nis", "invalid_identifier")
        );
        let long = "x".repeat(129);
        let e = order(&format!(
            r#"{{"nis": "26827649960", "reference": "{long}"}}"#
        ))
        .unwrap_err();
        assert_eq!(e.field, "reference");
        let e = order(r#"{"nis": "26827649960", "reason": "x"}"#).unwrap_err();
        assert_eq!(e.error_type, "malformed");
    }
}
