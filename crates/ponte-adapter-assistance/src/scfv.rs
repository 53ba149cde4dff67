//! Monthly attendance of a child or adolescent in the Serviço de Convivência e Fortalecimento de
//! Vínculos (SCFV), as the municipality records it: hours offered and hours attended. Published
//! to `assistance.person.v1`, keyed by NIS, with record id `<source>:scfv:<nis>:<month>`.
//!
//! Hours are published as recorded; the 85 % threshold and which months count belong to the
//! rule set, never to this module.
use std::time::SystemTime;

use ponte_proto::events::v1::{ScfvAttendance, event::Record};
use serde::Deserialize;

use crate::record::{self, Destination, RecordError, ValidRecord, required};

/// More hours than a month has (31 × 24) cannot be offered.
const MAX_HOURS_IN_MONTH: u32 = 744;

/// One month of SCFV attendance as the municipality sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScfvInput {
    /// The child's NIS; punctuation accepted.
    pub nis: Option<String>,
    /// Reference month, `YYYY-MM`.
    pub month: Option<String>,
    /// Hours of the service offered to the child in the month.
    pub hours_offered: Option<u32>,
    /// Hours the child attended.
    pub hours_attended: Option<u32>,
    /// Low-attendance reason code, if any.
    pub low_attendance_reason: Option<String>,
    /// Version at the source; a correction must carry a higher one.
    pub version: Option<u64>,
    /// When the municipality recorded it (RFC 3339).
    pub recorded_at: Option<String>,
    /// True to withdraw the record with these keys (`nis`, `month`).
    #[serde(default)]
    pub retraction: bool,
}

/// Validates one month and maps it to a `ScfvAttendance` event.
pub fn validate(
    input: &ScfvInput,
    source_system: &str,
    now: SystemTime,
) -> Result<ValidRecord, RecordError> {
    let nis = record::nis("nis", required("nis", input.nis.as_deref())?)?;
    let month = record::month("month", required("month", input.month.as_deref())?)?;
    let current = record::today(now)?.month_of();
    if month > current {
        return Err(RecordError::new(
            "month",
            "invalid_period",
            format!("{month} is in the future (received in {current})"),
        ));
    }
    let env = record::envelope(input.version, input.recorded_at.as_deref(), now)?;
    let mut scfv = ScfvAttendance {
        nis: nis.as_str().to_owned(),
        month: month.to_string(),
        low_attendance_reason: record::reason_code(
            "low_attendance_reason",
            input.low_attendance_reason.as_deref(),
        )?,
        ..Default::default()
    };
    if !input.retraction {
        let offered = input
            .hours_offered
            .ok_or_else(|| RecordError::missing("hours_offered"))?;
        let attended = input
            .hours_attended
            .ok_or_else(|| RecordError::missing("hours_attended"))?;
        if offered == 0 {
            return Err(RecordError::value(
                "hours_offered",
                "must be > 0 (a month without the service is not recorded)",
            ));
        }
        if offered > MAX_HOURS_IN_MONTH {
            return Err(RecordError::value(
                "hours_offered",
                format!("{offered} is more hours than a month has ({MAX_HOURS_IN_MONTH})"),
            ));
        }
        if attended > offered {
            return Err(RecordError::value(
                "hours_attended",
                format!("{attended} attended is more than {offered} offered"),
            ));
        }
        scfv.hours_offered = offered;
        scfv.hours_attended = attended;
    }
    let record_id = format!("{source_system}:scfv:{}:{}", scfv.nis, scfv.month);
    Ok(ValidRecord {
        destination: Destination::AssistancePerson,
        key: nis.as_str().to_owned(),
        event: env.event(
            record_id,
            source_system,
            now,
            input.retraction,
            Record::ScfvAttendance(scfv),
        ),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::record::testing::now;
    use crate::record::{Kind, parse_json};

    fn parse(body: &str) -> Result<ValidRecord, RecordError> {
        parse_json(
            Kind::ScfvAttendance,
            &format!("{{{body}}}"),
            "assistance",
            now(),
        )
    }

    #[test]
    fn a_month_maps_to_a_keyed_event_with_a_stable_id() {
        let v = parse(r#""nis":"268.27649.96-0","month":"2025-04","hours_offered":40,"hours_attended":33,"low_attendance_reason":"7","version":2"#).unwrap();
        assert_eq!(v.destination, Destination::AssistancePerson);
        assert_eq!(v.key, "26827649960");
        assert_eq!(v.event.record_id, "assistance:scfv:26827649960:2025-04");
        assert_eq!(v.event.version, 2);
        let Some(Record::ScfvAttendance(a)) = &v.event.record else {
            panic!("{v:?}")
        };
        assert_eq!((a.hours_offered, a.hours_attended), (40, 33));
        assert_eq!(a.low_attendance_reason, "7");
        // Equal hours are allowed (the ≤ rule).
        parse(r#""nis":"26827649960","month":"2025-12","hours_offered":40,"hours_attended":40"#)
            .unwrap();
    }

    #[test]
    fn a_retraction_needs_only_the_keys() {
        let v = parse(r#""nis":"26827649960","month":"2025-04","retraction":true,"version":3"#)
            .unwrap();
        assert!(v.event.retraction);
        assert_eq!(v.event.record_id, "assistance:scfv:26827649960:2025-04");
    }

    #[test]
    fn each_rule_names_its_field() {
        let cases = [
            (
                r#""nis":"26827649961","month":"2025-04","hours_offered":40,"hours_attended":30"#,
                "nis",
                "check digit",
            ),
            (
                r#""month":"2025-04","hours_offered":40,"hours_attended":30"#,
                "nis",
                "required",
            ),
            (
                r#""nis":"26827649960","month":"2025-4","hours_offered":40,"hours_attended":30"#,
                "month",
                "YYYY-MM",
            ),
            (
                r#""nis":"26827649960","month":"2025-13","hours_offered":40,"hours_attended":30"#,
                "month",
                "between 1 and 12",
            ),
            // Received 2026-01-01: February 2026 is in the future.
            (
                r#""nis":"26827649960","month":"2026-02","hours_offered":40,"hours_attended":30"#,
                "month",
                "future",
            ),
            (
                r#""nis":"26827649960","hours_offered":40,"hours_attended":30"#,
                "month",
                "required",
            ),
            (
                r#""nis":"26827649960","month":"2025-04","hours_attended":30"#,
                "hours_offered",
                "required",
            ),
            (
                r#""nis":"26827649960","month":"2025-04","hours_offered":40"#,
                "hours_attended",
                "required",
            ),
            (
                r#""nis":"26827649960","month":"2025-04","hours_offered":0,"hours_attended":0"#,
                "hours_offered",
                "> 0",
            ),
            (
                r#""nis":"26827649960","month":"2025-04","hours_offered":745,"hours_attended":0"#,
                "hours_offered",
                "more hours than a month",
            ),
            (
                r#""nis":"26827649960","month":"2025-04","hours_offered":40,"hours_attended":41"#,
                "hours_attended",
                "more than 40 offered",
            ),
            (
                r#""nis":"26827649960","month":"2025-04","hours_offered":40,"hours_attended":30,"low_attendance_reason":"7 b""#,
                "low_attendance_reason",
                "not a reason code",
            ),
            (
                r#""nis":"26827649960","month":"2025-04","hours_offered":40,"hours_attended":30,"version":0"#,
                "version",
                ">= 1",
            ),
            (
                r#""nis":"26827649960","month":"2025-04","hours_offered":-1,"hours_attended":30"#,
                "record",
                "invalid value",
            ),
            (
                r#""nis":"26827649960","month":"2025-04","hours":40"#,
                "record",
                "unknown field",
            ),
        ];
        for (body, field, reason) in cases {
            let err = parse(body).unwrap_err();
            assert_eq!(err.field, field, "{body}");
            assert!(err.reason.contains(reason), "{body}: {}", err.reason);
        }
    }
}
