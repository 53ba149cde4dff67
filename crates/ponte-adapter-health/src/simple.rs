//! The simple JSON form, for health systems without FHIR: one record per person per semester,
//! as the Bolsa Família health follow-up is filed (identifier, semester, vaccination up to date,
//! weight, height, prenatal). Layout in `docs/integration/health.md`.
use std::time::SystemTime;

use ponte_domain::period::{Date, Semester};
use ponte_proto::events::v1::{Event, HealthFollowUp, event::Record};
use serde::Deserialize;

use crate::record::{
    IdentifierKind, RecordError, Subject, ValidRecord, date_time, grams, millimetres, millis,
    not_future, parse_instant,
};

/// One person's health follow-up in one semester.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowUpInput {
    /// Exactly one of `cns`, `cpf`, `nis`; punctuation is accepted.
    #[serde(default)]
    pub cns: Option<String>,
    #[serde(default)]
    pub cpf: Option<String>,
    #[serde(default)]
    pub nis: Option<String>,
    /// `YYYY-Sn`; may be left out when `encounter_date` is given.
    #[serde(default)]
    pub semester: Option<String>,
    /// Date of the (last) follow-up in the semester, `YYYY-MM-DD`.
    #[serde(default)]
    pub encounter_date: Option<String>,
    #[serde(default)]
    pub vaccination_up_to_date: Option<bool>,
    /// Weight in kilograms.
    #[serde(default)]
    pub weight_kg: Option<f64>,
    /// Height in centimetres.
    #[serde(default)]
    pub height_cm: Option<f64>,
    #[serde(default)]
    pub pregnant: Option<bool>,
    #[serde(default)]
    pub prenatal_care: Option<bool>,
    /// Date of the last menstrual period (DUM), `YYYY-MM-DD`.
    #[serde(default)]
    pub last_menstruation_date: Option<String>,
    /// Version at the source; a correction must carry a higher one.
    #[serde(default)]
    pub version: Option<u64>,
    /// When the health system recorded it (RFC 3339); its milliseconds are the version when
    /// `version` is not given.
    #[serde(default)]
    pub recorded_at: Option<String>,
    /// True to withdraw the record of this person and semester.
    #[serde(default)]
    pub retraction: bool,
}

/// Validates one record and maps it to an event of `source_system`, received at `now`.
pub fn validate(
    input: &FollowUpInput,
    source_system: &str,
    now: SystemTime,
) -> Result<ValidRecord, RecordError> {
    let ids = [
        ("cns", IdentifierKind::Cns, &input.cns),
        ("cpf", IdentifierKind::Cpf, &input.cpf),
        ("nis", IdentifierKind::Nis, &input.nis),
    ];
    let given: Vec<_> = ids.iter().filter(|(_, _, v)| v.is_some()).collect();
    let subject = match given.as_slice() {
        [(field, kind, Some(value))] => Subject::parse(*kind, value)
            .map_err(|e| RecordError::new(field, "invalid_identifier", e))?,
        [] => {
            return Err(RecordError::new(
                "cns",
                "invalid_identifier",
                "missing: give one of cns, cpf or nis",
            ));
        }
        _ => {
            return Err(RecordError::new(
                "cns",
                "invalid_identifier",
                "give exactly one of cns, cpf or nis (the record keeps the identifier it arrived with)",
            ));
        }
    };

    let date = input
        .encounter_date
        .as_deref()
        .map(|s| {
            Date::parse(s).map_err(|e| RecordError::new("encounter_date", "invalid_period", e))
        })
        .transpose()?;
    if let Some(d) = date {
        not_future("encounter_date", d, now)?;
    }
    let stated = input
        .semester
        .as_deref()
        .map(|s| Semester::parse(s).map_err(|e| RecordError::new("semester", "invalid_period", e)))
        .transpose()?;
    let semester = match (stated, date) {
        (Some(s), Some(d)) => {
            let of_date = Semester::containing(d.month_of());
            if of_date != s {
                return Err(RecordError::new(
                    "semester",
                    "invalid_period",
                    format!("encounter_date {d} belongs to {of_date}, not {s}"),
                ));
            }
            s
        }
        (Some(s), None) => {
            if let Some(today) = crate::record::today(now)
                && s.first_day() > today
            {
                return Err(RecordError::new(
                    "semester",
                    "invalid_period",
                    format!("{s} has not started"),
                ));
            }
            s
        }
        (None, Some(d)) => Semester::containing(d.month_of()),
        (None, None) => {
            return Err(RecordError::new(
                "semester",
                "invalid_period",
                "missing: give semester or encounter_date",
            ));
        }
    };

    let recorded_at = input
        .recorded_at
        .as_deref()
        .map(|s| {
            parse_instant(s).ok_or_else(|| {
                RecordError::new("recorded_at", "invalid_value", "not an RFC 3339 time")
            })
        })
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
        (Some(0), _) => return Err(RecordError::new("version", "invalid_value", "must be >= 1")),
        (Some(v), _) => v,
        (None, Some(t)) => millis(t),
        (None, None) => 1,
    };

    let mut follow = HealthFollowUp {
        subject: Some(subject.to_proto()),
        semester: semester.to_string(),
        encounter_date: date.map(|d| d.to_string()).unwrap_or_default(),
        ..Default::default()
    };
    if !input.retraction {
        follow.vaccination_up_to_date = input.vaccination_up_to_date;
        follow.weight_grams = input
            .weight_kg
            .map(|w| grams("weight_kg", w, "kg"))
            .transpose()?;
        follow.height_mm = input
            .height_cm
            .map(|h| millimetres("height_cm", h, "cm"))
            .transpose()?;
        follow.prenatal_care = input.prenatal_care.unwrap_or(false);
        follow.pregnant = input.pregnant.unwrap_or(false) || follow.prenatal_care;
        if input.pregnant == Some(false) && follow.prenatal_care {
            return Err(RecordError::new(
                "pregnant",
                "invalid_value",
                "false, but prenatal_care is true",
            ));
        }
        if let Some(s) = &input.last_menstruation_date {
            let d = Date::parse(s)
                .map_err(|e| RecordError::new("last_menstruation_date", "invalid_period", e))?;
            not_future("last_menstruation_date", d, now)?;
            follow.last_menstruation_date = d.to_string();
        }
    }

    let record_id = format!(
        "{source_system}:{}:{}:{semester}",
        subject.kind(),
        subject.key()
    );
    let event_time = recorded_at.or_else(|| date.map(date_time)).unwrap_or(now);
    Ok(ValidRecord {
        key: subject.key().to_owned(),
        event: Event {
            record_id,
            version,
            source_system: source_system.to_owned(),
            event_time: Some(crate::record::timestamp(event_time)),
            ingest_time: Some(crate::record::timestamp(now)),
            retraction: input.retraction,
            // Provenance: stamped with the request's by the ingestor.
            sender: String::new(),
            request_id: String::new(),
            record: Some(Record::HealthFollowUp(follow)),
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600) // 2026-01-01
    }

    fn run(json: &str) -> Result<ValidRecord, RecordError> {
        let input: FollowUpInput = serde_json::from_str(json).unwrap();
        validate(&input, "health", now())
    }

    fn follow(v: &ValidRecord) -> &HealthFollowUp {
        match v.event.record.as_ref().unwrap() {
            Record::HealthFollowUp(f) => f,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_child_record_maps_with_a_person_semester_id() {
        let v = run(r#"{"cns":"268 2764 9960 0008","semester":"2025-S2","encounter_date":"2025-09-02","vaccination_up_to_date":true,"weight_kg":14.2,"height_cm":98.5,"version":2}"#).unwrap();
        assert_eq!(v.key, "268276499600008");
        assert_eq!(v.event.record_id, "health:cns:268276499600008:2025-S2");
        assert_eq!(v.event.version, 2);
        let f = follow(&v);
        assert_eq!((f.weight_grams, f.height_mm), (Some(14_200), Some(985)));
        assert_eq!(f.vaccination_up_to_date, Some(true));
        assert_eq!(f.encounter_date, "2025-09-02");
    }

    #[test]
    fn the_semester_follows_from_the_date_and_prenatal_implies_pregnant() {
        let v =
            run(r#"{"cpf":"529.982.247-25","encounter_date":"2025-03-01","prenatal_care":true}"#)
                .unwrap();
        let f = follow(&v);
        assert_eq!(f.semester, "2025-S1");
        assert!(f.pregnant && f.prenatal_care);
    }

    #[test]
    fn each_rule_names_its_field() {
        let cases = [
            (r#"{"semester":"2025-S1"}"#, "cns", "missing"),
            (
                r#"{"cns":"268276499600008","cpf":"52998224725","semester":"2025-S1"}"#,
                "cns",
                "exactly one",
            ),
            (
                r#"{"cpf":"52998224726","semester":"2025-S1"}"#,
                "cpf",
                "check digit",
            ),
            (
                r#"{"nis":"26827649961","semester":"2025-S1"}"#,
                "nis",
                "check digit",
            ),
            (r#"{"nis":"26827649960"}"#, "semester", "missing"),
            (
                r#"{"nis":"26827649960","semester":"2025-S3"}"#,
                "semester",
                "",
            ),
            (
                r#"{"nis":"26827649960","semester":"2025-S1","encounter_date":"2025-07-01"}"#,
                "semester",
                "belongs to 2025-S2",
            ),
            (
                r#"{"nis":"26827649960","semester":"2026-S2"}"#,
                "semester",
                "not started",
            ),
            (
                r#"{"nis":"26827649960","semester":"2025-S1","weight_kg":0}"#,
                "weight_kg",
                "plausible",
            ),
            (
                r#"{"nis":"26827649960","semester":"2025-S1","height_cm":400}"#,
                "height_cm",
                "plausible",
            ),
            (
                r#"{"nis":"26827649960","semester":"2025-S1","pregnant":false,"prenatal_care":true}"#,
                "pregnant",
                "prenatal_care",
            ),
            (
                r#"{"nis":"26827649960","semester":"2025-S1","version":0}"#,
                "version",
                ">= 1",
            ),
        ];
        for (json, field, reason) in cases {
            let e = run(json).unwrap_err();
            assert_eq!(e.field, field, "{json}");
            assert!(e.reason.contains(reason), "{json}: {e}");
        }
    }

    #[test]
    fn unknown_fields_are_malformed() {
        assert!(serde_json::from_str::<FollowUpInput>(r#"{"nis":"1","peso":3}"#).is_err());
    }
}
