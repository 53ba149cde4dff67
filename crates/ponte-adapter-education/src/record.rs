//! The JSON record layout the education system sends, and its validation into an event.
use std::time::SystemTime;

use ponte_domain::ids::{Inep, Nis};
use ponte_domain::period::{Bimester, Month};
use ponte_proto::events::v1::{AttendanceUnit, Event, SchoolAttendance, event::Record};
use serde::Deserialize;

/// One month of attendance of one pupil, as the education system sends it. See
/// `docs/integration/education.md` for the layout.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttendanceInput {
    /// The pupil's NIS; punctuation is accepted.
    pub nis: String,
    /// INEP code of the school.
    pub inep_school_code: String,
    /// Reference month, `YYYY-MM`.
    pub month: String,
    /// Optional: the bimester the school files the month under; must contain `month`.
    #[serde(default)]
    pub bimester: Option<String>,
    /// `days` or `classes`; required with `given`/`attended`.
    #[serde(default)]
    pub unit: Option<String>,
    /// Days or classes given in the month.
    #[serde(default)]
    pub given: Option<u32>,
    /// Days or classes attended.
    #[serde(default)]
    pub attended: Option<u32>,
    /// Attendance percentage as reported (0–100), instead of counts.
    #[serde(default)]
    pub attendance_percent: Option<f64>,
    /// Low-attendance reason code (motivo de baixa frequência), if any.
    #[serde(default)]
    pub low_attendance_reason: Option<String>,
    /// Version of this record at the source; a correction must carry a higher one.
    #[serde(default)]
    pub version: Option<u64>,
    /// When the school recorded it (RFC 3339).
    #[serde(default)]
    pub recorded_at: Option<String>,
    /// True to withdraw the record with these keys.
    #[serde(default)]
    pub retraction: bool,
}

/// Why a record was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct RecordError {
    /// The field at fault, or `record` when the record as a whole is malformed.
    pub field: String,
    /// What rule failed.
    pub reason: String,
    /// Low-cardinality class: `malformed`, `invalid_identifier`, `invalid_period`, `invalid_value`.
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

    /// A record whose JSON does not match the layout (wrong type, unknown or missing field).
    pub fn malformed(reason: impl std::fmt::Display) -> Self {
        Self::new("record", "malformed", reason)
    }
}

// The body layout is the one of every adapter.
pub use ponte_edge::json::{is_json_array, split_json_body};

/// A validated record, ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRecord {
    /// Kafka key: the NIS.
    pub key: String,
    pub event: Event,
}

/// Attendance in basis points from counts: floor(attended × 10000 / given).
fn basis_points(attended: u32, given: u32) -> u32 {
    // given > 0 is checked by the caller; u64 avoids overflow.
    u32::try_from(u64::from(attended) * 10_000 / u64::from(given)).unwrap_or(10_000)
}

fn parse_rfc3339(field: &str, s: &str) -> Result<SystemTime, RecordError> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            RecordError::new(
                field,
                "invalid_value",
                format!("not an RFC 3339 time ({e})"),
            )
        })?;
    let nanos = t.unix_timestamp_nanos();
    if nanos < 0 {
        return Err(RecordError::new(field, "invalid_value", "before 1970"));
    }
    let nanos = u64::try_from(nanos)
        .map_err(|_| RecordError::new(field, "invalid_value", "too far in the future"))?;
    Ok(SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(nanos))
}

/// Protobuf timestamp for a point in time (as `ponte_bus::publish::timestamp`; kept here so
/// that parsing needs no Kafka client, e.g. in the fuzz targets).
fn timestamp(t: SystemTime) -> ponte_proto::Timestamp {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(std::time::Duration::ZERO);
    ponte_proto::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Validates one input record and maps it to an event of `source_system`, received at `now`.
pub fn validate(
    input: &AttendanceInput,
    source_system: &str,
    now: SystemTime,
) -> Result<ValidRecord, RecordError> {
    let nis =
        Nis::parse(&input.nis).map_err(|e| RecordError::new("nis", "invalid_identifier", e))?;
    let inep = Inep::parse(&input.inep_school_code)
        .map_err(|e| RecordError::new("inep_school_code", "invalid_identifier", e))?;
    let month =
        Month::parse(&input.month).map_err(|e| RecordError::new("month", "invalid_period", e))?;
    let bimester = Bimester::containing(month).ok_or_else(|| {
        RecordError::new(
            "month",
            "invalid_period",
            format!("{month} is in no school bimester (bimesters run February to November)"),
        )
    })?;
    if let Some(b) = &input.bimester {
        let stated =
            Bimester::parse(b).map_err(|e| RecordError::new("bimester", "invalid_period", e))?;
        if stated != bimester {
            return Err(RecordError::new(
                "bimester",
                "invalid_period",
                format!("{month} belongs to {bimester}, not {stated}"),
            ));
        }
    }

    let recorded_at = input
        .recorded_at
        .as_deref()
        .map(|s| parse_rfc3339("recorded_at", s))
        .transpose()?;
    if let Some(t) = recorded_at
        && t > now + std::time::Duration::from_secs(300)
    {
        return Err(RecordError::new(
            "recorded_at",
            "invalid_value",
            "is in the future",
        ));
    }
    let version = match (input.version, recorded_at) {
        (Some(0), _) => {
            return Err(RecordError::new("version", "invalid_value", "must be >= 1"));
        }
        (Some(v), _) => v,
        // Without an explicit version, a later recording time is a later version.
        (None, Some(t)) => t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(1)
            .max(1),
        (None, None) => 1,
    };

    let reason = input
        .low_attendance_reason
        .as_deref()
        .map(str::trim)
        .unwrap_or("")
        .to_owned();
    if reason.len() > 8 || !reason.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(RecordError::new(
            "low_attendance_reason",
            "invalid_value",
            format!("{reason:?} is not a reason code (letters and digits, at most 8)"),
        ));
    }

    let mut record = SchoolAttendance {
        nis: nis.as_str().to_owned(),
        inep_school_code: inep.as_str().to_owned(),
        month: month.to_string(),
        bimester: bimester.to_string(),
        low_attendance_reason: reason,
        ..Default::default()
    };
    if !input.retraction {
        match (input.given, input.attended, input.attendance_percent) {
            (Some(given), Some(attended), None) => {
                if given == 0 {
                    return Err(RecordError::new("given", "invalid_value", "must be > 0"));
                }
                if attended > given {
                    return Err(RecordError::new(
                        "attended",
                        "invalid_value",
                        format!("{attended} attended is more than {given} given"),
                    ));
                }
                let unit = match input.unit.as_deref() {
                    Some("days") => AttendanceUnit::Days,
                    Some("classes") => AttendanceUnit::Classes,
                    Some(other) => {
                        return Err(RecordError::new(
                            "unit",
                            "invalid_value",
                            format!("{other:?} is not `days` or `classes`"),
                        ));
                    }
                    None => {
                        return Err(RecordError::new(
                            "unit",
                            "invalid_value",
                            "required with given/attended: `days` or `classes`",
                        ));
                    }
                };
                record.unit = unit as i32;
                record.given = given;
                record.attended = attended;
                record.attendance_bp = basis_points(attended, given);
            }
            (None, None, Some(pct)) => {
                if !pct.is_finite() || !(0.0..=100.0).contains(&pct) {
                    return Err(RecordError::new(
                        "attendance_percent",
                        "invalid_value",
                        format!("{pct} is not a percentage between 0 and 100"),
                    ));
                }
                // In range 0..=100 by the check above, so the cast cannot truncate.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let bp = (pct * 100.0).round() as u32;
                record.attendance_bp = bp;
            }
            (None, None, None) => {
                return Err(RecordError::new(
                    "attendance_percent",
                    "invalid_value",
                    "missing: give either given+attended or attendance_percent",
                ));
            }
            _ => {
                return Err(RecordError::new(
                    "attendance_percent",
                    "invalid_value",
                    "give either given+attended or attendance_percent, not a mix",
                ));
            }
        }
    }

    let record_id = format!(
        "{source_system}:{}:{}:{}",
        record.inep_school_code, record.nis, record.month
    );
    let event = Event {
        record_id,
        version,
        source_system: source_system.to_owned(),
        event_time: Some(timestamp(recorded_at.unwrap_or(now))),
        ingest_time: Some(timestamp(now)),
        retraction: input.retraction,
        // Provenance: stamped with the request's by the ingestor.
        sender: String::new(),
        request_id: String::new(),
        record: Some(Record::SchoolAttendance(record)),
    };
    Ok(ValidRecord {
        key: nis.as_str().to_owned(),
        event,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn input(json: &str) -> AttendanceInput {
        serde_json::from_str(json).unwrap()
    }

    fn attendance(v: &ValidRecord) -> &SchoolAttendance {
        match v.event.record.as_ref().unwrap() {
            Record::SchoolAttendance(a) => a,
            other => panic!("unexpected {other:?}"),
        }
    }

    const NOW: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(NOW)
    }

    #[test]
    fn a_valid_record_maps_to_a_keyed_event_with_a_stable_id() {
        let v = validate(
            &input(r#"{"nis":"268.27649.96-0","inep_school_code":"35012345","month":"2025-04","unit":"days","given":20,"attended":15,"low_attendance_reason":"62","version":3}"#),
            "education",
            now(),
        )
        .unwrap();
        assert_eq!(v.key, "26827649960");
        assert_eq!(v.event.record_id, "education:35012345:26827649960:2025-04");
        assert_eq!(v.event.version, 3);
        let a = attendance(&v);
        assert_eq!(a.bimester, "2025-B2"); // April is in B2 (docs/rules.md#periods-and-ages)
        assert_eq!(a.attendance_bp, 7500);
        assert_eq!(a.low_attendance_reason, "62");
    }

    #[test]
    fn percentages_round_to_basis_points_and_counts_floor() {
        let v = validate(
            &input(r#"{"nis":"26827649960","inep_school_code":"35012345","month":"2025-10","attendance_percent":87.456}"#),
            "education",
            now(),
        )
        .unwrap();
        assert_eq!(attendance(&v).attendance_bp, 8746);
        let v = validate(
            &input(r#"{"nis":"26827649960","inep_school_code":"35012345","month":"2025-10","unit":"classes","given":3,"attended":2}"#),
            "education",
            now(),
        )
        .unwrap();
        assert_eq!(attendance(&v).attendance_bp, 6666);
    }

    #[test]
    fn without_a_version_a_later_recording_is_a_later_version() {
        let early = validate(
            &input(r#"{"nis":"26827649960","inep_school_code":"35012345","month":"2025-04","attendance_percent":50,"recorded_at":"2025-05-01T00:00:00Z"}"#),
            "education",
            now(),
        )
        .unwrap();
        let late = validate(
            &input(r#"{"nis":"26827649960","inep_school_code":"35012345","month":"2025-04","attendance_percent":90,"recorded_at":"2025-05-02T00:00:00Z"}"#),
            "education",
            now(),
        )
        .unwrap();
        assert_eq!(early.event.record_id, late.event.record_id);
        assert!(late.event.version > early.event.version);
    }

    #[test]
    fn each_rule_names_its_field() {
        let cases = [
            (
                r#""nis":"26827649961","inep_school_code":"35012345","month":"2025-04","attendance_percent":90"#,
                "nis",
                "check digit",
            ),
            (
                r#""nis":"26827649960","inep_school_code":"3501234","month":"2025-04","attendance_percent":90"#,
                "inep_school_code",
                "8 digits",
            ),
            (
                r#""nis":"26827649960","inep_school_code":"35012345","month":"2025-12","attendance_percent":90"#,
                "month",
                "no school bimester",
            ),
            (
                r#""nis":"26827649960","inep_school_code":"35012345","month":"2025-13","attendance_percent":90"#,
                "month",
                "",
            ),
            (
                r#""nis":"26827649960","inep_school_code":"35012345","month":"2025-04","bimester":"2025-B3","attendance_percent":90"#,
                "bimester",
                "belongs to 2025-B2",
            ),
            (
                r#""nis":"26827649960","inep_school_code":"35012345","month":"2025-04","attendance_percent":100.5"#,
                "attendance_percent",
                "between 0 and 100",
            ),
            (
                r#""nis":"26827649960","inep_school_code":"35012345","month":"2025-04","unit":"days","given":10,"attended":11"#,
                "attended",
                "more than",
            ),
            (
                r#""nis":"26827649960","inep_school_code":"35012345","month":"2025-04","unit":"days","given":0,"attended":0"#,
                "given",
                "> 0",
            ),
            (
                r#""nis":"26827649960","inep_school_code":"35012345","month":"2025-04","given":10,"attended":9"#,
                "unit",
                "required",
            ),
            (
                r#""nis":"26827649960","inep_school_code":"35012345","month":"2025-04""#,
                "attendance_percent",
                "missing",
            ),
            (
                r#""nis":"26827649960","inep_school_code":"35012345","month":"2025-04","attendance_percent":90,"version":0"#,
                "version",
                ">= 1",
            ),
            (
                r#""nis":"26827649960","inep_school_code":"35012345","month":"2025-04","attendance_percent":90,"recorded_at":"yesterday""#,
                "recorded_at",
                "RFC 3339",
            ),
            (
                r#""nis":"26827649960","inep_school_code":"35012345","month":"2025-04","attendance_percent":90,"recorded_at":"2030-01-01T00:00:00Z""#,
                "recorded_at",
                "future",
            ),
            (
                r##""nis":"26827649960","inep_school_code":"35012345","month":"2025-04","attendance_percent":90,"low_attendance_reason":"1 a""##,
                "low_attendance_reason",
                "not a reason code",
            ),
        ];
        for (body, field, reason) in cases {
            let err = validate(&input(&format!("{{{body}}}")), "education", now()).unwrap_err();
            assert_eq!(err.field, field, "{body}");
            assert!(err.reason.contains(reason), "{body}: {}", err.reason);
        }
    }

    #[test]
    fn a_retraction_needs_only_the_keys() {
        let v = validate(
            &input(r#"{"nis":"26827649960","inep_school_code":"35012345","month":"2025-04","retraction":true,"version":9}"#),
            "education",
            now(),
        )
        .unwrap();
        assert!(v.event.retraction);
        assert_eq!(v.event.record_id, "education:35012345:26827649960:2025-04");
    }

    #[test]
    fn unknown_fields_are_rejected_by_the_layout() {
        let err = serde_json::from_str::<AttendanceInput>(
            r#"{"nis":"26827649960","inep_school_code":"35012345","month":"2025-04","presence":90}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("presence"));
    }
}
