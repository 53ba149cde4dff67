//! Family-level records of the social assistance network, published to `assistance.family.v1`
//! keyed by family id:
//! - family follow-up (acompanhamento familiar), opened and closed, with any request to
//!   interrupt the effects of non-compliance (interrupção de efeitos);
//! - appeals (recursos) against an effect, and their decisions.
//!
//! What a follow-up or an accepted appeal does to a family's effects is the rule set's
//! business; this module only checks that the record is coherent.
use std::time::SystemTime;

use ponte_domain::period::{Date, Period};
use ponte_proto::events::v1::{Appeal, FamilyFollowUp, event::Record};
use serde::Deserialize;

use crate::record::{self, Destination, RecordError, ValidRecord, present, required};

/// Conditionalities an appeal may target, with the calendar their periods are written in.
pub const CONDITIONALITIES: [(&str, &str); 3] = [
    ("education", "bimester"),
    ("health", "semester"),
    ("assistance", "bimester"),
];

/// Decisions an appeal may carry (none, or `PENDING`, while undecided).
pub const DECISIONS: [&str; 2] = ["ACCEPTED", "REJECTED"];

/// A family follow-up as the assistance system sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowUpInput {
    /// Family code in the registry.
    pub family_id: Option<String>,
    /// The source's own number for the follow-up, if it has one.
    pub follow_up_id: Option<String>,
    /// `YYYY-MM-DD` the follow-up was opened.
    pub opened_on: Option<String>,
    /// `YYYY-MM-DD` it was closed; absent while active.
    pub closed_on: Option<String>,
    /// True when the interruption of effects was requested.
    pub interrupt_effects: Option<bool>,
    /// `YYYY-MM-DD` the interruption was requested.
    pub interruption_requested_on: Option<String>,
    /// IBGE code of the municipality following the family.
    pub municipality: Option<String>,
    /// Version at the source.
    pub version: Option<u64>,
    /// When the source recorded this version (RFC 3339).
    pub recorded_at: Option<String>,
    /// True to withdraw the follow-up (keys only: `family_id` and `follow_up_id` or
    /// `opened_on`).
    #[serde(default)]
    pub retraction: bool,
}

/// An appeal as the assistance system sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppealInput {
    /// Family code in the registry.
    pub family_id: Option<String>,
    /// The source's own number for the appeal, if it has one.
    pub appeal_id: Option<String>,
    /// Period of the non-compliance appealed, `YYYY-Bn` or `YYYY-Sn`.
    pub period: Option<String>,
    /// Member concerned, if member-specific.
    pub nis: Option<String>,
    /// `education`, `health` or `assistance`; absent for the family's effect as a whole.
    pub conditionality: Option<String>,
    /// `YYYY-MM-DD` the appeal was filed.
    pub filed_on: Option<String>,
    /// `ACCEPTED`, `REJECTED`, or absent / `PENDING` while undecided.
    pub decision: Option<String>,
    /// `YYYY-MM-DD` of the decision; required exactly when decided.
    pub decided_on: Option<String>,
    /// Version at the source; a decision must carry a higher one than the filing.
    pub version: Option<u64>,
    /// When the source recorded this version (RFC 3339).
    pub recorded_at: Option<String>,
    /// True to withdraw the appeal (keys only).
    #[serde(default)]
    pub retraction: bool,
}

/// Validates a follow-up and maps it to a `FamilyFollowUp` event. Record id:
/// `<source>:follow-up:<family>:<follow_up_id>`, or `…:<family>:opened-<opened_on>` when the
/// source has no number for it.
pub fn validate_follow_up(
    input: &FollowUpInput,
    source_system: &str,
    now: SystemTime,
) -> Result<ValidRecord, RecordError> {
    let family = record::family_id(
        "family_id",
        required("family_id", input.family_id.as_deref())?,
    )?;
    let follow_up_id = present(input.follow_up_id.as_deref())
        .map(|s| record::source_key("follow_up_id", s, 64, &['-', '_', '.', '/']))
        .transpose()?;
    let env = record::envelope(input.version, input.recorded_at.as_deref(), now)?;
    let opened = present(input.opened_on.as_deref())
        .map(|s| record::past_date("opened_on", s, now))
        .transpose()?;
    let key = match (&follow_up_id, opened) {
        (Some(id), _) => id.clone(),
        (None, Some(d)) => format!("opened-{d}"),
        (None, None) => return Err(RecordError::missing("opened_on")),
    };
    let mut follow_up = FamilyFollowUp {
        family_id: family.clone(),
        opened_on: opened.as_ref().map(Date::to_string).unwrap_or_default(),
        ..Default::default()
    };
    if !input.retraction {
        let opened = opened.ok_or_else(|| RecordError::missing("opened_on"))?;
        let closed = present(input.closed_on.as_deref())
            .map(|s| record::past_date("closed_on", s, now))
            .transpose()?;
        if let Some(c) = closed
            && c < opened
        {
            return Err(RecordError::value(
                "closed_on",
                format!("{c} is before opened_on {opened}"),
            ));
        }
        let requested = present(input.interruption_requested_on.as_deref())
            .map(|s| record::past_date("interruption_requested_on", s, now))
            .transpose()?;
        let interrupt = match (input.interrupt_effects, requested) {
            (Some(true), None) => {
                return Err(RecordError::missing("interruption_requested_on"));
            }
            (Some(false), Some(_)) => {
                return Err(RecordError::value(
                    "interruption_requested_on",
                    "given, but interrupt_effects is false",
                ));
            }
            (_, Some(d)) => {
                if d < opened || closed.is_some_and(|c| d > c) {
                    return Err(RecordError::value(
                        "interruption_requested_on",
                        format!(
                            "{d} is outside the follow-up ({opened} to {})",
                            closed.map_or_else(|| "now".to_owned(), |c| c.to_string())
                        ),
                    ));
                }
                true
            }
            (_, None) => false,
        };
        let municipality = present(input.municipality.as_deref())
            .map(|s| record::ibge("municipality", s))
            .transpose()?;
        follow_up.closed_on = closed.as_ref().map(Date::to_string).unwrap_or_default();
        follow_up.interrupt_effects = interrupt;
        follow_up.interruption_requested_on =
            requested.as_ref().map(Date::to_string).unwrap_or_default();
        follow_up.municipality = municipality
            .map(|m| m.as_str().to_owned())
            .unwrap_or_default();
    }
    Ok(ValidRecord {
        destination: Destination::AssistanceFamily,
        key: family.clone(),
        event: env.event(
            format!("{source_system}:follow-up:{family}:{key}"),
            source_system,
            now,
            input.retraction,
            Record::FamilyFollowUp(follow_up),
        ),
    })
}

fn conditionality(s: &str, period: Period) -> Result<String, RecordError> {
    let c = s.to_ascii_lowercase();
    let Some((name, calendar)) = CONDITIONALITIES.iter().find(|(n, _)| *n == c) else {
        return Err(RecordError::value(
            "conditionality",
            format!(
                "{s:?} is not one of {}",
                CONDITIONALITIES.map(|(n, _)| n).join(", ")
            ),
        ));
    };
    let matches = matches!(
        (period, *calendar),
        (Period::Bimester(_), "bimester") | (Period::Semester(_), "semester")
    );
    if !matches {
        return Err(RecordError::new(
            "period",
            "invalid_period",
            format!("{name} is followed per {calendar}, but {period} is not one"),
        ));
    }
    Ok((*name).to_owned())
}

/// Validates an appeal and maps it to an `Appeal` event. Record id:
/// `<source>:appeal:<family>:<appeal_id>`, or `…:<family>:<period>:<nis or family>:<conditionality or all>`
/// when the source has no number for it.
pub fn validate_appeal(
    input: &AppealInput,
    source_system: &str,
    now: SystemTime,
) -> Result<ValidRecord, RecordError> {
    let family = record::family_id(
        "family_id",
        required("family_id", input.family_id.as_deref())?,
    )?;
    let appeal_id = present(input.appeal_id.as_deref())
        .map(|s| record::source_key("appeal_id", s, 64, &['-', '_', '.', '/']))
        .transpose()?;
    let env = record::envelope(input.version, input.recorded_at.as_deref(), now)?;
    let period = present(input.period.as_deref())
        .map(|s| {
            let p = Period::parse(s).map_err(|e| RecordError::new("period", "invalid_period", e))?;
            match p {
                Period::Bimester(_) | Period::Semester(_) => Ok(p),
                Period::Month(_) => Err(RecordError::new(
                    "period",
                    "invalid_period",
                    format!("{s:?} is a month; appeals target a bimester (YYYY-Bn) or a semester (YYYY-Sn)"),
                )),
            }
        })
        .transpose()?;
    let nis = present(input.nis.as_deref())
        .map(|s| record::nis("nis", s))
        .transpose()?;
    let cond = match (present(input.conditionality.as_deref()), period) {
        (Some(c), Some(p)) => conditionality(c, p)?,
        (Some(_), None) => return Err(RecordError::missing("period")),
        (None, _) => String::new(),
    };
    let key = match (&appeal_id, period) {
        (Some(id), _) => id.clone(),
        (None, Some(p)) => format!(
            "{p}:{}:{}",
            nis.as_ref().map_or("family", |n| n.as_str()),
            if cond.is_empty() { "all" } else { &cond }
        ),
        (None, None) => return Err(RecordError::missing("period")),
    };
    let mut appeal = Appeal {
        family_id: family.clone(),
        period: period.map(|p| p.to_string()).unwrap_or_default(),
        nis: nis.map(|n| n.as_str().to_owned()).unwrap_or_default(),
        conditionality: cond,
        ..Default::default()
    };
    if !input.retraction {
        let first_day = period
            .ok_or_else(|| RecordError::missing("period"))?
            .first_day();
        let filed = record::past_date(
            "filed_on",
            required("filed_on", input.filed_on.as_deref())?,
            now,
        )?;
        if filed < first_day {
            return Err(RecordError::value(
                "filed_on",
                format!("{filed} is before the appealed period starts ({first_day})"),
            ));
        }
        let decision = match present(input.decision.as_deref()).map(str::to_ascii_uppercase) {
            None => String::new(),
            Some(d) if d == "PENDING" => String::new(),
            Some(d) if DECISIONS.contains(&d.as_str()) => d,
            Some(d) => {
                return Err(RecordError::value(
                    "decision",
                    format!("{d:?} is not one of PENDING, {}", DECISIONS.join(", ")),
                ));
            }
        };
        let decided = present(input.decided_on.as_deref())
            .map(|s| record::past_date("decided_on", s, now))
            .transpose()?;
        match (decision.is_empty(), decided) {
            (false, None) => return Err(RecordError::missing("decided_on")),
            (true, Some(_)) => {
                return Err(RecordError::value(
                    "decided_on",
                    "given, but the appeal has no decision",
                ));
            }
            (false, Some(d)) if d < filed => {
                return Err(RecordError::value(
                    "decided_on",
                    format!("{d} is before filed_on {filed}"),
                ));
            }
            _ => {}
        }
        appeal.filed_on = filed.to_string();
        appeal.decision = decision;
        appeal.decided_on = decided.as_ref().map(Date::to_string).unwrap_or_default();
    }
    Ok(ValidRecord {
        destination: Destination::AssistanceFamily,
        key: family.clone(),
        event: env.event(
            format!("{source_system}:appeal:{family}:{key}"),
            source_system,
            now,
            input.retraction,
            Record::Appeal(appeal),
        ),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::record::testing::now;
    use crate::record::{Kind, parse_json};

    fn follow_up(body: &str) -> Result<ValidRecord, RecordError> {
        parse_json(
            Kind::FamilyFollowUp,
            &format!("{{{body}}}"),
            "assistance",
            now(),
        )
    }

    fn appeal(body: &str) -> Result<ValidRecord, RecordError> {
        parse_json(Kind::Appeal, &format!("{{{body}}}"), "assistance", now())
    }

    #[test]
    fn a_follow_up_with_an_interruption_maps_every_field() {
        let v = follow_up(r#""family_id":"1234567890","follow_up_id":"CRAS-77/2025","opened_on":"2025-03-10","interrupt_effects":true,"interruption_requested_on":"2025-04-02","municipality":"3550308","version":2"#).unwrap();
        assert_eq!(v.destination, Destination::AssistanceFamily);
        assert_eq!(v.key, "1234567890");
        assert_eq!(
            v.event.record_id,
            "assistance:follow-up:1234567890:CRAS-77/2025"
        );
        let Some(Record::FamilyFollowUp(f)) = &v.event.record else {
            panic!("{v:?}")
        };
        assert_eq!(f.opened_on, "2025-03-10");
        assert_eq!(f.closed_on, "");
        assert!(f.interrupt_effects);
        assert_eq!(f.interruption_requested_on, "2025-04-02");
        assert_eq!(f.municipality, "3550308");
    }

    #[test]
    fn a_follow_up_without_a_source_number_is_identified_by_its_opening_and_closes_later() {
        let open = follow_up(r#""family_id":"1234567890","opened_on":"2025-03-10""#).unwrap();
        let closed = follow_up(
            r#""family_id":"1234567890","opened_on":"2025-03-10","closed_on":"2025-09-30","version":2"#,
        )
        .unwrap();
        assert_eq!(
            open.event.record_id,
            "assistance:follow-up:1234567890:opened-2025-03-10"
        );
        assert_eq!(open.event.record_id, closed.event.record_id);
        assert!(closed.event.version > open.event.version);
        // The interruption date alone implies the request.
        let v = follow_up(
            r#""family_id":"1","opened_on":"2025-03-10","interruption_requested_on":"2025-03-10""#,
        )
        .unwrap();
        let Some(Record::FamilyFollowUp(f)) = &v.event.record else {
            panic!("{v:?}")
        };
        assert!(f.interrupt_effects);
    }

    #[test]
    fn an_appeal_is_filed_then_decided_under_one_record_id() {
        let filed = appeal(r#""family_id":"1234567890","period":"2025-B2","nis":"26827649960","conditionality":"Education","filed_on":"2025-07-01","version":1"#).unwrap();
        let decided = appeal(r#""family_id":"1234567890","period":"2025-B2","nis":"26827649960","conditionality":"education","filed_on":"2025-07-01","decision":"accepted","decided_on":"2025-07-20","version":2"#).unwrap();
        assert_eq!(filed.key, "1234567890");
        assert_eq!(
            filed.event.record_id,
            "assistance:appeal:1234567890:2025-B2:26827649960:education"
        );
        assert_eq!(filed.event.record_id, decided.event.record_id);
        let Some(Record::Appeal(a)) = &decided.event.record else {
            panic!("{decided:?}")
        };
        assert_eq!(a.decision, "ACCEPTED");
        assert_eq!(a.decided_on, "2025-07-20");
        assert_eq!(a.conditionality, "education");
        let Some(Record::Appeal(a)) = &filed.event.record else {
            panic!("{filed:?}")
        };
        assert_eq!(a.decision, "");
        // A family-wide appeal on a health semester, with the source's own number.
        let v = appeal(r#""family_id":"1","appeal_id":"R-2025-000123","period":"2025-S1","filed_on":"2025-08-01","decision":"PENDING""#).unwrap();
        assert_eq!(v.event.record_id, "assistance:appeal:1:R-2025-000123");
    }

    #[test]
    fn retractions_need_only_the_keys() {
        let v = follow_up(r#""family_id":"1","follow_up_id":"F1","retraction":true,"version":5"#)
            .unwrap();
        assert!(v.event.retraction);
        assert_eq!(v.event.record_id, "assistance:follow-up:1:F1");
        let v =
            appeal(r#""family_id":"1","appeal_id":"R1","retraction":true,"version":5"#).unwrap();
        assert_eq!(v.event.record_id, "assistance:appeal:1:R1");
        let v =
            appeal(r#""family_id":"1","period":"2025-B2","retraction":true,"version":5"#).unwrap();
        assert_eq!(v.event.record_id, "assistance:appeal:1:2025-B2:family:all");
    }

    #[test]
    fn each_follow_up_rule_names_its_field() {
        let cases = [
            (r#""opened_on":"2025-03-10""#, "family_id", "required"),
            (
                r#""family_id":"1 2","opened_on":"2025-03-10""#,
                "family_id",
                "not a key",
            ),
            (r#""family_id":"1""#, "opened_on", "required"),
            (
                r#""family_id":"1","opened_on":"2025-02-29""#,
                "opened_on",
                "day",
            ),
            (
                r#""family_id":"1","opened_on":"2026-03-10""#,
                "opened_on",
                "future",
            ),
            (
                r#""family_id":"1","follow_up_id":"a b","opened_on":"2025-03-10""#,
                "follow_up_id",
                "not a key",
            ),
            (
                r#""family_id":"1","opened_on":"2025-03-10","closed_on":"2025-03-09""#,
                "closed_on",
                "before opened_on",
            ),
            (
                r#""family_id":"1","opened_on":"2025-03-10","interrupt_effects":true"#,
                "interruption_requested_on",
                "required",
            ),
            (
                r#""family_id":"1","opened_on":"2025-03-10","interrupt_effects":false,"interruption_requested_on":"2025-03-11""#,
                "interruption_requested_on",
                "interrupt_effects is false",
            ),
            (
                r#""family_id":"1","opened_on":"2025-03-10","interruption_requested_on":"2025-03-01""#,
                "interruption_requested_on",
                "outside the follow-up",
            ),
            (
                r#""family_id":"1","opened_on":"2025-03-10","closed_on":"2025-04-01","interruption_requested_on":"2025-04-02""#,
                "interruption_requested_on",
                "outside the follow-up",
            ),
            (
                r#""family_id":"1","opened_on":"2025-03-10","municipality":"3550307""#,
                "municipality",
                "check digit",
            ),
        ];
        for (body, field, reason) in cases {
            let err = follow_up(body).unwrap_err();
            assert_eq!(err.field, field, "{body}");
            assert!(err.reason.contains(reason), "{body}: {}", err.reason);
        }
    }

    #[test]
    fn each_appeal_rule_names_its_field() {
        let cases = [
            (
                r#""period":"2025-B2","filed_on":"2025-07-01""#,
                "family_id",
                "required",
            ),
            (
                r#""family_id":"1","filed_on":"2025-07-01""#,
                "period",
                "required",
            ),
            (
                r#""family_id":"1","period":"2025-B6","filed_on":"2025-07-01""#,
                "period",
                "",
            ),
            (
                r#""family_id":"1","period":"2025-04","filed_on":"2025-07-01""#,
                "period",
                "is a month",
            ),
            (
                r#""family_id":"1","period":"2025-S1","conditionality":"education","filed_on":"2025-07-01""#,
                "period",
                "per bimester",
            ),
            (
                r#""family_id":"1","period":"2025-B2","conditionality":"health","filed_on":"2025-07-01""#,
                "period",
                "per semester",
            ),
            (
                r#""family_id":"1","period":"2025-B2","conditionality":"housing","filed_on":"2025-07-01""#,
                "conditionality",
                "not one of education, health, assistance",
            ),
            (
                r#""family_id":"1","period":"2025-B2","nis":"26827649961","filed_on":"2025-07-01""#,
                "nis",
                "check digit",
            ),
            (
                r#""family_id":"1","period":"2025-B2""#,
                "filed_on",
                "required",
            ),
            (
                r#""family_id":"1","period":"2025-B2","filed_on":"2025-03-31""#,
                "filed_on",
                "before the appealed period",
            ),
            (
                r#""family_id":"1","period":"2025-B2","filed_on":"2026-07-01""#,
                "filed_on",
                "future",
            ),
            (
                r#""family_id":"1","period":"2025-B2","filed_on":"2025-07-01","decision":"MAYBE","decided_on":"2025-07-02""#,
                "decision",
                "not one of PENDING, ACCEPTED, REJECTED",
            ),
            (
                r#""family_id":"1","period":"2025-B2","filed_on":"2025-07-01","decision":"REJECTED""#,
                "decided_on",
                "required",
            ),
            (
                r#""family_id":"1","period":"2025-B2","filed_on":"2025-07-01","decided_on":"2025-07-02""#,
                "decided_on",
                "no decision",
            ),
            (
                r#""family_id":"1","period":"2025-B2","filed_on":"2025-07-01","decision":"REJECTED","decided_on":"2025-06-30""#,
                "decided_on",
                "before filed_on",
            ),
            (
                r#""family_id":"1","appeal_id":"R 1","period":"2025-B2","filed_on":"2025-07-01""#,
                "appeal_id",
                "not a key",
            ),
        ];
        for (body, field, reason) in cases {
            let err = appeal(body).unwrap_err();
            assert_eq!(err.field, field, "{body}");
            assert!(err.reason.contains(reason), "{body}: {}", err.reason);
        }
    }
}
