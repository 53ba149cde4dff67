//! What every record kind shares: the rejection type, the record kinds and where each is
//! published, the version/recording-time envelope, and field validators that name the field
//! they check.
//!
//! Validators never "correct" a value: an identifier that fails its check digit is rejected
//! with the rule that failed, never guessed at. Nothing here performs I/O or reads the clock;
//! the time of reception is passed in.
use std::time::{Duration, SystemTime};

use ponte_domain::ids::{Cns, Cpf, IbgeMunicipality, Inep, Nis};
use ponte_domain::period::{Date, Month};
use ponte_proto::events::v1::{Event, event};

/// Why a record was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct RecordError {
    /// The field at fault, or `record` when the record as a whole is malformed.
    pub field: String,
    /// What rule failed, for a person to act on.
    pub reason: String,
    /// Low-cardinality class: `malformed`, `invalid_identifier`, `invalid_period`,
    /// `invalid_value`, `missing_field`.
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

    pub(crate) fn value(field: &str, reason: impl std::fmt::Display) -> Self {
        Self::new(field, "invalid_value", reason)
    }

    /// A record whose shape does not match the layout (wrong type, unknown field, bad CSV).
    pub fn malformed(reason: impl std::fmt::Display) -> Self {
        Self::new("record", "malformed", reason)
    }

    /// A required field that is absent or empty.
    pub fn missing(field: &str) -> Self {
        Self::new(field, "missing_field", "required")
    }
}

/// The kinds of record the assistance side sends, one endpoint each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Registry person profile (the monitored public and the id crosswalk).
    Person,
    /// One month of SCFV attendance of one child.
    ScfvAttendance,
    /// Family follow-up (acompanhamento familiar), with any interruption of effects.
    FamilyFollowUp,
    /// Appeal (recurso) and its decision.
    Appeal,
    /// An order to erase a person (LGPD).
    Erasure,
    /// A household's profile in the household registry (Unidos).
    HouseholdProfile,
    /// Evidence about a household: a social worker's visit, a dated registry item (Unidos).
    HouseholdEvidence,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 7] = [
        Kind::Person,
        Kind::ScfvAttendance,
        Kind::FamilyFollowUp,
        Kind::Appeal,
        Kind::Erasure,
        Kind::HouseholdProfile,
        Kind::HouseholdEvidence,
    ];

    /// Where records of this kind are published.
    pub fn destination(self) -> Destination {
        match self {
            Kind::Person | Kind::Erasure => Destination::RegistryPersons,
            Kind::ScfvAttendance => Destination::AssistancePerson,
            // A household is the family-level unit of household-accompaniment programmes.
            Kind::FamilyFollowUp
            | Kind::Appeal
            | Kind::HouseholdProfile
            | Kind::HouseholdEvidence => Destination::AssistanceFamily,
        }
    }

    /// Short name, used in record ids and logs.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Person => "person",
            Kind::ScfvAttendance => "scfv",
            Kind::FamilyFollowUp => "follow-up",
            Kind::Appeal => "appeal",
            Kind::Erasure => "erasure",
            Kind::HouseholdProfile => "household-profile",
            Kind::HouseholdEvidence => "household-evidence",
        }
    }
}

/// The topic a record goes to (the service maps it to the configured topic name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    /// `registry.persons.v1`, keyed by NIS.
    RegistryPersons,
    /// `assistance.person.v1`, keyed by NIS.
    AssistancePerson,
    /// `assistance.family.v1`, keyed by family id (household id for household records).
    AssistanceFamily,
}

/// A validated record, ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRecord {
    pub destination: Destination,
    /// Kafka key: the NIS, the family id or the household id.
    pub key: String,
    pub event: Event,
}

/// Parses one JSON record of `kind` and validates it into an event of `source_system`,
/// received at `now`.
pub fn parse_json(
    kind: Kind,
    json: &str,
    source_system: &str,
    now: SystemTime,
) -> Result<ValidRecord, RecordError> {
    let malformed = |e: serde_json::Error| RecordError::malformed(e.to_string());
    match kind {
        Kind::Person => crate::person::validate(
            &serde_json::from_str(json).map_err(malformed)?,
            source_system,
            now,
        ),
        Kind::ScfvAttendance => crate::scfv::validate(
            &serde_json::from_str(json).map_err(malformed)?,
            source_system,
            now,
        ),
        Kind::FamilyFollowUp => crate::family::validate_follow_up(
            &serde_json::from_str(json).map_err(malformed)?,
            source_system,
            now,
        ),
        Kind::Appeal => crate::family::validate_appeal(
            &serde_json::from_str(json).map_err(malformed)?,
            source_system,
            now,
        ),
        Kind::Erasure => crate::erasure::validate(
            &serde_json::from_str(json).map_err(malformed)?,
            source_system,
            now,
        ),
        Kind::HouseholdProfile => crate::household::validate_profile(
            &serde_json::from_str(json).map_err(malformed)?,
            source_system,
            now,
        ),
        Kind::HouseholdEvidence => crate::household::validate_evidence(
            &serde_json::from_str(json).map_err(malformed)?,
            source_system,
            now,
        ),
    }
}

// The body layout is the one of every adapter.
pub use ponte_edge::json::{is_json_array, split_json_body};

/// The version fields every input carries, validated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Envelope {
    pub(crate) version: u64,
    pub(crate) recorded_at: Option<SystemTime>,
}

/// Validates `version` and `recorded_at`. Without a version, a later recording time is a later
/// version (its epoch milliseconds); without either, the version is 1.
pub(crate) fn envelope(
    version: Option<u64>,
    recorded_at: Option<&str>,
    now: SystemTime,
) -> Result<Envelope, RecordError> {
    let recorded_at = recorded_at
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| parse_rfc3339("recorded_at", s))
        .transpose()?;
    if let Some(t) = recorded_at
        && t > now + Duration::from_secs(300)
    {
        return Err(RecordError::value("recorded_at", "is in the future"));
    }
    let version = match (version, recorded_at) {
        (Some(0), _) => return Err(RecordError::value("version", "must be >= 1")),
        (Some(v), _) => v,
        (None, Some(t)) => t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(1)
            .max(1),
        (None, None) => 1,
    };
    Ok(Envelope {
        version,
        recorded_at,
    })
}

impl Envelope {
    /// Wraps a record into the bus envelope.
    pub(crate) fn event(
        &self,
        record_id: String,
        source_system: &str,
        now: SystemTime,
        retraction: bool,
        record: event::Record,
    ) -> Event {
        Event {
            record_id,
            version: self.version,
            source_system: source_system.to_owned(),
            event_time: Some(timestamp(self.recorded_at.unwrap_or(now))),
            ingest_time: Some(timestamp(now)),
            retraction,
            // Provenance: stamped with the request's by the ingestor.
            sender: String::new(),
            request_id: String::new(),
            record: Some(record),
        }
    }
}

/// Protobuf timestamp of a point in time (as `ponte_bus::publish::timestamp`; repeated here so
/// the parsers build without the Kafka client).
pub(crate) fn timestamp(t: SystemTime) -> ponte_proto::Timestamp {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    ponte_proto::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn parse_rfc3339(field: &str, s: &str) -> Result<SystemTime, RecordError> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| RecordError::value(field, format!("not an RFC 3339 time ({e})")))?;
    let nanos = t.unix_timestamp_nanos();
    if nanos < 0 {
        return Err(RecordError::value(field, "before 1970"));
    }
    let nanos =
        u64::try_from(nanos).map_err(|_| RecordError::value(field, "too far in the future"))?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos))
}

/// The calendar day of `now` (UTC).
pub(crate) fn today(now: SystemTime) -> Result<Date, RecordError> {
    let days = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0);
    i64::try_from(days)
        .ok()
        .and_then(|d| Date::from_days(d).ok())
        .ok_or_else(|| RecordError::value("record", "the adapter's clock is out of range"))
}

/// Trimmed, non-empty text of an optional field.
pub(crate) fn present(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|s| !s.is_empty())
}

/// A required field's trimmed text.
pub(crate) fn required<'a>(field: &str, value: Option<&'a str>) -> Result<&'a str, RecordError> {
    present(value).ok_or_else(|| RecordError::missing(field))
}

pub(crate) fn nis(field: &str, s: &str) -> Result<Nis, RecordError> {
    Nis::parse(s).map_err(|e| RecordError::new(field, "invalid_identifier", e))
}

pub(crate) fn cpf(field: &str, s: &str) -> Result<Cpf, RecordError> {
    Cpf::parse(s).map_err(|e| RecordError::new(field, "invalid_identifier", e))
}

pub(crate) fn cns(field: &str, s: &str) -> Result<Cns, RecordError> {
    Cns::parse(s).map_err(|e| RecordError::new(field, "invalid_identifier", e))
}

pub(crate) fn ibge(field: &str, s: &str) -> Result<IbgeMunicipality, RecordError> {
    IbgeMunicipality::parse(s).map_err(|e| RecordError::new(field, "invalid_identifier", e))
}

pub(crate) fn inep(field: &str, s: &str) -> Result<Inep, RecordError> {
    Inep::parse(s).map_err(|e| RecordError::new(field, "invalid_identifier", e))
}

pub(crate) fn date(field: &str, s: &str) -> Result<Date, RecordError> {
    Date::parse(s).map_err(|e| RecordError::new(field, "invalid_value", e))
}

pub(crate) fn month(field: &str, s: &str) -> Result<Month, RecordError> {
    Month::parse(s).map_err(|e| RecordError::new(field, "invalid_period", e))
}

/// A date that must not lie after the day the record was received.
pub(crate) fn past_date(field: &str, s: &str, now: SystemTime) -> Result<Date, RecordError> {
    let d = date(field, s)?;
    let today = today(now)?;
    // One day of slack for sources in time zones ahead of UTC.
    if d.days_until(today) < -1 {
        return Err(RecordError::value(
            field,
            format!("{d} is in the future (received on {today})"),
        ));
    }
    Ok(d)
}

/// The registry's family code (código familiar): opaque to Ponte, but it becomes a Kafka key
/// and part of record ids, so letters, digits and `-` only, at most 32.
pub(crate) fn family_id(field: &str, s: &str) -> Result<String, RecordError> {
    source_key(field, s, 32, &['-'])
}

/// A source's own key for a record (follow-up or appeal number): letters, digits and
/// `-_./`, at most `max` characters.
pub(crate) fn source_key(
    field: &str,
    s: &str,
    max: usize,
    extra: &[char],
) -> Result<String, RecordError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(RecordError::missing(field));
    }
    if s.chars().count() > max
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
    {
        let allowed: String = extra.iter().map(|c| format!(" `{c}`")).collect();
        return Err(RecordError::value(
            field,
            format!("{s:?} is not a key: letters, digits and{allowed} only, at most {max}"),
        ));
    }
    Ok(s.to_owned())
}

/// A reason code (letters and digits, at most 8), or empty.
pub(crate) fn reason_code(field: &str, s: Option<&str>) -> Result<String, RecordError> {
    let reason = s.map(str::trim).unwrap_or("");
    if reason.len() > 8 || !reason.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(RecordError::value(
            field,
            format!("{reason:?} is not a reason code (letters and digits, at most 8)"),
        ));
    }
    Ok(reason.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod testing {
    use std::time::{Duration, SystemTime};

    /// 2026-01-01T00:00:00Z, the reception time of every test record.
    pub(crate) fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::testing::now;
    use super::*;

    #[test]
    fn today_is_the_utc_day_of_reception() {
        assert_eq!(today(now()).unwrap().to_string(), "2026-01-01");
        assert_eq!(
            today(SystemTime::UNIX_EPOCH).unwrap().to_string(),
            "1970-01-01"
        );
    }

    #[test]
    fn versions_come_from_the_source_or_its_recording_time() {
        assert_eq!(envelope(Some(7), None, now()).unwrap().version, 7);
        assert_eq!(envelope(None, None, now()).unwrap().version, 1);
        // 2025-05-01T00:00:00Z = 1746057600 s.
        assert_eq!(
            envelope(None, Some("2025-05-01T00:00:00Z"), now())
                .unwrap()
                .version,
            1_746_057_600_000
        );
        assert_eq!(envelope(Some(0), None, now()).unwrap_err().field, "version");
        let err = envelope(None, Some("2027-01-01T00:00:00Z"), now()).unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.reason.as_str()),
            ("recorded_at", "is in the future")
        );
    }

    #[test]
    fn keys_refuse_separators_and_overlong_values() {
        assert_eq!(family_id("family_id", " 0123-45 ").unwrap(), "0123-45");
        for bad in ["a:b", "a b", "ação", &"9".repeat(33)] {
            let err = family_id("family_id", bad).unwrap_err();
            assert_eq!(err.field, "family_id", "{bad}");
        }
        assert_eq!(
            family_id("family_id", "  ").unwrap_err().error_type,
            "missing_field"
        );
    }
}
