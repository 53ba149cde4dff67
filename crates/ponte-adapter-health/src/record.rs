//! What the FHIR and the simple JSON forms share: the rejection type, the subject identifier,
//! configuration of the identifier systems and codes, and the finished record.
//!
//! Nothing here resolves a health identifier to a NIS: a record keeps the CNS or CPF it arrived
//! with, and the reconciler resolves it against the registry's crosswalk.
use std::time::SystemTime;

use ponte_domain::ids::{Cns, Cpf, Nis};
use ponte_domain::period::Date;
use ponte_proto::events::v1::{Event, health_follow_up};
use serde::Deserialize;

/// Why a record (a bundle entry, or a JSON record) was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct RecordError {
    /// The element at fault (`Observation.valueQuantity`, `cns`…), or `record`/`Bundle` when
    /// the whole thing is malformed.
    pub field: String,
    /// What rule failed, for a person to act on.
    pub reason: String,
    /// Low-cardinality class: `malformed`, `invalid_identifier`, `invalid_period`,
    /// `invalid_value`, `unsupported`, `unresolved_reference`.
    pub error_type: &'static str,
}

impl RecordError {
    pub(crate) fn new(
        field: &str,
        error_type: &'static str,
        reason: impl std::fmt::Display,
    ) -> Self {
        Self {
            field: field.to_owned(),
            reason: reason.to_string(),
            error_type,
        }
    }

    /// A record that does not have the expected structure.
    pub fn malformed(field: &str, reason: impl std::fmt::Display) -> Self {
        Self::new(field, "malformed", reason)
    }
}

/// The identifier a health record arrived with. The Kafka key is its digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// Cartão Nacional de Saúde, 15 digits.
    Cns(String),
    /// CPF, 11 digits.
    Cpf(String),
    /// NIS, 11 digits, when the health system happens to know it.
    Nis(String),
}

impl Subject {
    /// Parses `value` as an identifier of `kind`, checking its check digits.
    pub fn parse(kind: IdentifierKind, value: &str) -> Result<Subject, String> {
        match kind {
            IdentifierKind::Cns => Cns::parse(value)
                .map(|c| Subject::Cns(c.as_str().to_owned()))
                .map_err(|e| e.to_string()),
            IdentifierKind::Cpf => Cpf::parse(value)
                .map(|c| Subject::Cpf(c.as_str().to_owned()))
                .map_err(|e| e.to_string()),
            IdentifierKind::Nis => Nis::parse(value)
                .map(|c| Subject::Nis(c.as_str().to_owned()))
                .map_err(|e| e.to_string()),
        }
    }

    /// The digits: the Kafka key.
    pub fn key(&self) -> &str {
        match self {
            Subject::Cns(s) | Subject::Cpf(s) | Subject::Nis(s) => s,
        }
    }

    /// `cns`, `cpf` or `nis`.
    pub fn kind(&self) -> &'static str {
        match self {
            Subject::Cns(_) => "cns",
            Subject::Cpf(_) => "cpf",
            Subject::Nis(_) => "nis",
        }
    }

    /// Preference when a patient carries several: CNS, then CPF, then NIS (the health topic is
    /// keyed by CNS or CPF; a NIS is the fallback).
    pub(crate) fn rank(&self) -> u8 {
        match self {
            Subject::Cns(_) => 0,
            Subject::Cpf(_) => 1,
            Subject::Nis(_) => 2,
        }
    }

    pub(crate) fn to_proto(&self) -> health_follow_up::Subject {
        match self {
            Subject::Cns(s) => health_follow_up::Subject::Cns(s.clone()),
            Subject::Cpf(s) => health_follow_up::Subject::Cpf(s.clone()),
            Subject::Nis(s) => health_follow_up::Subject::Nis(s.clone()),
        }
    }
}

/// Which identifier a FHIR identifier system carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentifierKind {
    Cns,
    Cpf,
    Nis,
}

/// The `[health_adapter.mapping]` section: which FHIR identifier systems and codes mean what.
/// Defaults are the Brazilian RNDS ones (see `docs/integration/health.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    /// `Identifier.system` values whose value is a CNS.
    pub cns_systems: Vec<String>,
    /// `Identifier.system` values whose value is a CPF.
    pub cpf_systems: Vec<String>,
    /// `Identifier.system` values whose value is a NIS.
    pub nis_systems: Vec<String>,
    /// Systems shared by several document kinds, where `Identifier.type` says which (RNDS
    /// BRTipoDocumentoIndividuo: `HC` CNS, `TAX` CPF, `SS` NIS); without a type, 15 digits
    /// are a CNS and 11 a CPF.
    pub typed_systems: Vec<String>,
    /// Codes marking an `Encounter` as a prenatal care consultation, `system|code`; a code
    /// ending in `*` matches every code starting with what precedes it.
    pub prenatal_codes: Vec<String>,
    /// `Observation.code` values (`system|code`) of the health team's "vaccination up to date"
    /// judgement, with `valueBoolean`.
    pub vaccination_status_codes: Vec<String>,
}

impl Default for MappingConfig {
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        MappingConfig {
            cns_systems: s(&[
                "http://rnds.saude.gov.br/fhir/r4/NamingSystem/cns",
                "http://www.saude.gov.br/fhir/r4/NamingSystem/cns",
            ]),
            cpf_systems: s(&[
                "http://rnds.saude.gov.br/fhir/r4/NamingSystem/cpf",
                "http://www.saude.gov.br/fhir/r4/NamingSystem/cpf",
            ]),
            nis_systems: Vec::new(),
            typed_systems: s(&[
                "http://www.saude.gov.br/fhir/r4/StructureDefinition/BRIndividuo-1.0",
            ]),
            prenatal_codes: s(&[
                "http://snomed.info/sct|424441002",
                "http://snomed.info/sct|424619006",
                "http://hl7.org/fhir/sid/icd-10|Z34*",
                "http://hl7.org/fhir/sid/icd-10|Z35*",
                "http://www.saude.gov.br/fhir/r4/CodeSystem/BRCID10|Z34*",
                "http://www.saude.gov.br/fhir/r4/CodeSystem/BRCID10|Z35*",
            ]),
            vaccination_status_codes: s(&[
                "urn:ponte:fhir:CodeSystem:health|vaccination-up-to-date",
            ]),
        }
    }
}

impl MappingConfig {
    /// The kind of identifier `system` carries, if it is a configured one (not typed).
    pub(crate) fn kind_of(&self, system: &str) -> Option<IdentifierKind> {
        if self.cns_systems.iter().any(|s| s == system) {
            Some(IdentifierKind::Cns)
        } else if self.cpf_systems.iter().any(|s| s == system) {
            Some(IdentifierKind::Cpf)
        } else if self.nis_systems.iter().any(|s| s == system) {
            Some(IdentifierKind::Nis)
        } else {
            None
        }
    }

    pub(crate) fn is_typed(&self, system: &str) -> bool {
        self.typed_systems.iter().any(|s| s == system)
    }

    pub(crate) fn is_prenatal(&self, system: &str, code: &str) -> bool {
        self.prenatal_codes
            .iter()
            .any(|c| code_matches(c, system, code))
    }

    pub(crate) fn is_vaccination_status(&self, system: &str, code: &str) -> bool {
        self.vaccination_status_codes
            .iter()
            .any(|c| code_matches(c, system, code))
    }
}

fn code_matches(pattern: &str, system: &str, code: &str) -> bool {
    let Some((psys, pcode)) = pattern.rsplit_once('|') else {
        return false;
    };
    if psys != system {
        return false;
    }
    match pcode.strip_suffix('*') {
        Some(prefix) => code.starts_with(prefix),
        None => pcode == code,
    }
}

/// A validated record, ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRecord {
    /// Kafka key: the CNS, CPF or NIS digits.
    pub key: String,
    pub event: Event,
}

/// Today's date (UTC) at `now`.
pub(crate) fn today(now: SystemTime) -> Option<Date> {
    let t = time::OffsetDateTime::from(now);
    Date::new(t.year(), u8::from(t.month()), t.day()).ok()
}

/// Rejects dates more than a day after `now` (a day of slack for time zones).
pub(crate) fn not_future(field: &str, date: Date, now: SystemTime) -> Result<(), RecordError> {
    if let Some(today) = today(now)
        && date.to_days() > today.to_days() + 1
    {
        return Err(RecordError::new(
            field,
            "invalid_period",
            format!("{date} is in the future"),
        ));
    }
    Ok(())
}

/// Parses an RFC 3339 instant (FHIR `instant`, or a `dateTime` with a time).
pub(crate) fn parse_instant(s: &str) -> Option<SystemTime> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    let nanos = u64::try_from(t.unix_timestamp_nanos()).ok()?;
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(nanos))
}

/// Protobuf timestamp for a point in time.
pub(crate) fn timestamp(t: SystemTime) -> ponte_proto::Timestamp {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(std::time::Duration::ZERO);
    ponte_proto::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Milliseconds since the epoch, at least 1 (a version).
pub(crate) fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(1)
        .max(1)
}

/// Midnight UTC of `date`.
pub(crate) fn date_time(date: Date) -> SystemTime {
    let days = date.to_days() - Date::new(1970, 1, 1).map(|d| d.to_days()).unwrap_or(0);
    match u64::try_from(days) {
        Ok(d) => SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(d * 86_400),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}

/// Weight in grams from a value and a UCUM unit, checked to be plausible (up to 500 kg).
pub(crate) fn grams(field: &str, value: f64, unit: &str) -> Result<u32, RecordError> {
    let factor = match unit {
        "g" => 1.0,
        "kg" => 1000.0,
        "[lb_av]" | "lb" | "lbs" => 453.592_37,
        "[oz_av]" | "oz" => 28.349_523_125,
        other => {
            return Err(RecordError::new(
                field,
                "invalid_value",
                format!("unit {other:?} is not a weight unit (g, kg, [lb_av], [oz_av])"),
            ));
        }
    };
    bounded(field, value * factor, 500_000.0, "weight", "g")
}

/// Height in millimetres from a value and a UCUM unit, checked to be plausible (up to 3 m).
pub(crate) fn millimetres(field: &str, value: f64, unit: &str) -> Result<u32, RecordError> {
    let factor = match unit {
        "mm" => 1.0,
        "cm" => 10.0,
        "m" => 1000.0,
        "[in_i]" | "[in_us]" | "in" => 25.4,
        "[ft_i]" | "ft" => 304.8,
        other => {
            return Err(RecordError::new(
                field,
                "invalid_value",
                format!("unit {other:?} is not a length unit (mm, cm, m, [in_i], [ft_i])"),
            ));
        }
    };
    bounded(field, value * factor, 3_000.0, "height", "mm")
}

fn bounded(field: &str, v: f64, max: f64, what: &str, unit: &str) -> Result<u32, RecordError> {
    if !v.is_finite() || v <= 0.0 || v > max {
        return Err(RecordError::new(
            field,
            "invalid_value",
            format!(
                "{what} {v:.0} {unit} is not plausible (must be above 0 and at most {max:.0} {unit})"
            ),
        ));
    }
    // In (0, max] by the check above, so the cast cannot truncate or wrap.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let r = v.round().max(1.0) as u32;
    Ok(r)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn units_convert_and_implausible_values_are_rejected() {
        // 185 [lb_av] × 453.59237 g = 83 914.59 g (the FHIR R4 Observation example).
        assert_eq!(grams("w", 185.0, "[lb_av]").unwrap(), 83_915);
        assert_eq!(grams("w", 12.5, "kg").unwrap(), 12_500);
        assert_eq!(millimetres("h", 87.3, "cm").unwrap(), 873);
        assert_eq!(millimetres("h", 1.1, "m").unwrap(), 1_100);
        assert!(
            grams("w", 600.0, "kg")
                .unwrap_err()
                .reason
                .contains("plausible")
        );
        assert!(grams("w", -1.0, "kg").is_err());
        assert!(grams("w", f64::NAN, "kg").is_err());
        assert!(
            millimetres("h", 10.0, "kg")
                .unwrap_err()
                .reason
                .contains("length unit")
        );
    }

    #[test]
    fn code_patterns_match_exactly_or_by_prefix() {
        let m = MappingConfig::default();
        assert!(m.is_prenatal("http://snomed.info/sct", "424619006"));
        assert!(m.is_prenatal("http://hl7.org/fhir/sid/icd-10", "Z34.0"));
        assert!(!m.is_prenatal("http://hl7.org/fhir/sid/icd-10", "Z36"));
        assert!(!m.is_prenatal("http://loinc.org", "424619006"));
    }

    #[test]
    fn dates_map_to_midnight_utc() {
        let d = Date::new(1970, 1, 2).unwrap();
        assert_eq!(millis(date_time(d)), 86_400_000);
    }
}
