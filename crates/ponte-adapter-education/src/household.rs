//! Household evidence from a sector adapter (Colombia's Unidos, issue 17 point 3): the
//! education and health systems' results about the members of a household-accompaniment
//! programme's households, posted to their own adapter's `POST /v1/household-evidence` and
//! published there as `HouseholdEvidence` events keyed by household id.
//!
//! The layout and its checks are the assistance adapter's
//! ([`ponte_adapter_assistance::household::validate_evidence`]: household id, subject, dates,
//! who recorded it, the form of every item name and value, version and retraction); this module
//! adds what differs for a sector adapter:
//! - the **source** is the one source of the rule set that arrives through this adapter
//!   (`education` or `health` in `rules/unidos-2021.toml`): a body may leave it out, and one
//!   naming another source is refused;
//! - only the **items** that source declares in the rule set are accepted (read from the rule
//!   set with [`AchievementRuleSet::from_toml_str`], never listed here).
//!
//! The health adapter uses this module too (it depends on this crate's parsers only), so both
//! sectors answer alike.
//!
//! A sector system sends results already matched to the household id of the programme's
//! registry (Prosperidad Social's cross-matches by identity document), so no adapter keeps a
//! document → household index.
use std::collections::BTreeSet;
use std::time::SystemTime;

use ponte_adapter_assistance::RecordError;
use ponte_adapter_assistance::household::{EVIDENCE_SOURCES, validate_evidence};
use ponte_domain::achievements::AchievementRuleSet;
use ponte_domain::achievements::rules::Adapter;
use ponte_proto::events::v1::{Event, event::Record};

pub use ponte_adapter_assistance::household::EvidenceInput;

/// The rule set whose sources say which evidence the sector adapters carry, as named in
/// errors.
pub const UNIDOS_RULES_FILE: &str = "rules/unidos-2021.toml";
/// Its text, built in (as the reconciler builds in its default rule set).
const UNIDOS_RULES: &str = include_str!("../../../rules/unidos-2021.toml");

/// The evidence one sector adapter carries: its rule-set source and that source's items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectorEvidence {
    adapter: &'static str,
    rules_file: String,
    source: String,
    items: BTreeSet<String>,
    recorded_states: bool,
}

/// A validated evidence record: the Kafka key (the household id) and the event.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidEvidence {
    /// The household id.
    pub key: String,
    pub event: Event,
}

fn adapter_name(adapter: Adapter) -> &'static str {
    match adapter {
        Adapter::Assistance => "assistance",
        Adapter::Education => "education",
        Adapter::Health => "health",
    }
}

fn invalid(field: String, reason: String) -> RecordError {
    RecordError {
        field,
        reason,
        error_type: "invalid_value",
    }
}

impl SectorEvidence {
    /// The evidence `adapter` carries in `rules` (read from `rules_file`): the one source the
    /// rule set routes through it. Errors when the rule set routes none or several.
    pub fn from_rule_set(
        rules: &AchievementRuleSet,
        rules_file: &str,
        adapter: Adapter,
    ) -> Result<SectorEvidence, String> {
        let name = adapter_name(adapter);
        let ours: Vec<_> = rules
            .sources
            .iter()
            .filter(|s| s.adapter == adapter)
            .collect();
        let [source] = ours.as_slice() else {
            return Err(format!(
                "{rules_file}: {} sources arrive through the {name} adapter; it carries exactly one",
                ours.len()
            ));
        };
        Ok(SectorEvidence {
            adapter: name,
            rules_file: rules_file.to_owned(),
            source: source.id.clone(),
            items: source.items.clone(),
            recorded_states: source.recorded_states,
        })
    }

    /// The evidence `adapter` carries in Unidos's rule set (`rules/unidos-2021.toml`).
    pub fn unidos(adapter: Adapter) -> Result<SectorEvidence, String> {
        let rules = AchievementRuleSet::from_toml_str(UNIDOS_RULES_FILE, UNIDOS_RULES)
            .map_err(|e| e.to_string())?;
        SectorEvidence::from_rule_set(&rules, UNIDOS_RULES_FILE, adapter)
    }

    /// The source's id (`education`).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The items the source declares.
    pub fn items(&self) -> &BTreeSet<String> {
        &self.items
    }

    /// Parses one JSON record of the household-evidence layout and validates it.
    pub fn parse_json(
        &self,
        json: &str,
        source_system: &str,
        now: SystemTime,
    ) -> Result<ValidEvidence, RecordError> {
        let input: EvidenceInput =
            serde_json::from_str(json).map_err(|e| RecordError::malformed(e.to_string()))?;
        self.validate(&input, source_system, now)
    }

    /// Validates an evidence record as the assistance adapter does, for this adapter's source
    /// and items, into a `HouseholdEvidence` event keyed by household id. Record id:
    /// `<source system>:household-evidence:<household>:<evidence_id>`, or
    /// `…:<household>:<source>:<subject>:<recorded_on>` when the sender has no id for it.
    pub fn validate(
        &self,
        input: &EvidenceInput,
        source_system: &str,
        now: SystemTime,
    ) -> Result<ValidEvidence, RecordError> {
        let given = input.source.as_deref().map(str::trim);
        if let Some(s) = given.filter(|s| !s.is_empty())
            && s != self.source
        {
            return Err(invalid(
                "source".to_owned(),
                format!(
                    "{s:?} is not a source the {} adapter carries ({}); send it to the adapter of its sector",
                    self.adapter, self.source
                ),
            ));
        }
        // The shared checks take the assistance adapter's sources only: they run on the record
        // under one of those, which is then replaced by ours wherever it went (the event's
        // source, and the record id of a record without the sender's id).
        let stand_in = EVIDENCE_SOURCES[0];
        let mut as_assistance = input.clone();
        as_assistance.source = Some(stand_in.to_owned());
        let valid = validate_evidence(&as_assistance, source_system, now)?;
        if !input.retraction {
            for name in input.items.iter().flat_map(|i| i.keys()) {
                let declared = self.items.contains(name)
                    || (self.recorded_states && name.starts_with("achievement:"));
                if !declared {
                    return Err(invalid(
                        format!("items.{name}"),
                        format!(
                            "{name:?} is not an item of the {} source in {} ({})",
                            self.source,
                            self.rules_file,
                            self.items
                                .iter()
                                .map(String::as_str)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
        }
        let mut event = valid.event;
        let prefix = format!("{source_system}:household-evidence:{}:", valid.key);
        if let Some(tail) = event
            .record_id
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_prefix(stand_in))
            .and_then(|rest| rest.strip_prefix(':'))
        {
            event.record_id = format!("{prefix}{}:{tail}", self.source);
        }
        if let Some(Record::HouseholdEvidence(e)) = &mut event.record
            && !event.retraction
        {
            e.source.clone_from(&self.source);
        }
        Ok(ValidEvidence {
            key: valid.key,
            event,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ponte_adapter_assistance::household::evidence_from_proto;
    use ponte_domain::achievements::{HouseholdRecord, HouseholdState, Subject};
    use ponte_proto::events::v1::evidence_item::Value as V;
    use serde_json::{Value as Json, json};
    use std::time::Duration;

    /// 2026-01-01T00:00:00Z.
    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600)
    }

    fn education() -> SectorEvidence {
        SectorEvidence::unidos(Adapter::Education).unwrap()
    }

    fn health() -> SectorEvidence {
        SectorEvidence::unidos(Adapter::Health).unwrap()
    }

    /// The school year's enrolment of the son of the assistance adapter's example household,
    /// as the Ministry of Education's cross-match with Prosperidad Social gives it.
    fn enrolment() -> Json {
        json!({"household_id": "HH-52001-0001", "evidence_id": "SIMAT-2025-000123",
               "subject": "nuip:1023456789", "recorded_on": "2025-03-15",
               "recorded_by": "simat:MEN", "items": {"enrolled_current_year": true}})
    }

    fn run(s: &SectorEvidence, j: &Json) -> Result<ValidEvidence, RecordError> {
        s.parse_json(&j.to_string(), s.source(), now())
    }

    #[test]
    fn the_sources_and_items_are_the_rule_sets() {
        let e = education();
        assert_eq!(e.source(), "education");
        assert_eq!(
            e.items().iter().map(String::as_str).collect::<Vec<_>>(),
            [
                "completed_secondary",
                "enrolled_current_year",
                "enrolled_early_education",
                "enrolled_or_graduated_higher_education"
            ]
        );
        let h = health();
        assert_eq!(h.source(), "health");
        assert_eq!(
            h.items().iter().map(String::as_str).collect::<Vec<_>>(),
            [
                "consultation",
                "disability_registered",
                "health_affiliation_regime",
                "vaccination_up_to_date",
                "weight_and_height_recorded"
            ]
        );
        // The assistance adapter carries several sources: not a sector adapter's.
        let err = SectorEvidence::unidos(Adapter::Assistance).unwrap_err();
        assert!(
            err.starts_with(
                "rules/unidos-2021.toml: 4 sources arrive through the assistance adapter"
            ),
            "{err}"
        );
    }

    #[test]
    fn an_enrolment_is_published_under_the_education_source_keyed_by_household() {
        let v = run(&education(), &enrolment()).unwrap();
        assert_eq!(v.key, "HH-52001-0001");
        assert_eq!(
            v.event.record_id,
            "education:household-evidence:HH-52001-0001:SIMAT-2025-000123"
        );
        assert_eq!(v.event.source_system, "education");
        let Some(Record::HouseholdEvidence(e)) = &v.event.record else {
            panic!("{v:?}")
        };
        assert_eq!(
            (
                e.household_id.as_str(),
                e.source.as_str(),
                e.subject.as_str(),
                e.recorded_on.as_str(),
                e.recorded_by.as_str()
            ),
            (
                "HH-52001-0001",
                "education",
                "nuip:1023456789",
                "2025-03-15",
                "simat:MEN"
            )
        );
        assert_eq!(e.items.len(), 1);
        assert_eq!(
            (e.items[0].name.as_str(), e.items[0].value.clone()),
            ("enrolled_current_year", Some(V::Flag(true)))
        );
        // The source may be given, when it is ours.
        let mut j = enrolment();
        j["source"] = json!("education");
        assert_eq!(run(&education(), &j).unwrap(), v);
    }

    #[test]
    fn a_record_without_the_senders_id_is_identified_by_our_source() {
        let mut j = enrolment();
        j.as_object_mut().unwrap().remove("evidence_id");
        let v = run(&education(), &j).unwrap();
        assert_eq!(
            v.event.record_id,
            "education:household-evidence:HH-52001-0001:education:nuip:1023456789:2025-03-15"
        );
        // A retraction of it needs the same keys and gets the same id.
        let r = json!({"household_id": "HH-52001-0001", "subject": "nuip:1023456789",
                       "recorded_on": "2025-03-15", "retraction": true, "version": 2});
        let r = run(&education(), &r).unwrap();
        assert!(r.event.retraction);
        assert_eq!(r.event.record_id, v.event.record_id);
        // An evidence id that happens to be a source's name is only an id.
        let mut j = enrolment();
        j["evidence_id"] = json!(EVIDENCE_SOURCES[0]);
        assert_eq!(
            run(&education(), &j).unwrap().event.record_id,
            format!(
                "education:household-evidence:HH-52001-0001:{}",
                EVIDENCE_SOURCES[0]
            )
        );
    }

    #[test]
    fn another_source_or_an_undeclared_item_is_refused_with_field_and_reason() {
        let mut j = enrolment();
        j["source"] = json!("visit");
        let e = run(&education(), &j).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.error_type, e.reason.as_str()),
            (
                "source",
                "invalid_value",
                "\"visit\" is not a source the education adapter carries (education); send it to the adapter of its sector"
            )
        );
        let mut j = enrolment();
        j["source"] = json!("education");
        let e = run(&health(), &j).unwrap_err();
        assert_eq!(e.field, "source");
        assert!(
            e.reason
                .starts_with("\"education\" is not a source the health adapter carries (health)"),
            "{}",
            e.reason
        );

        let mut j = enrolment();
        j["items"] = json!({"enrolled_current_year": true, "attends_school": true});
        let e = run(&education(), &j).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.error_type, e.reason.as_str()),
            (
                "items.attends_school",
                "invalid_value",
                "\"attends_school\" is not an item of the education source in rules/unidos-2021.toml (completed_secondary, enrolled_current_year, enrolled_early_education, enrolled_or_graduated_higher_education)"
            )
        );
        // The education and health sources record no achievement states.
        let mut j = enrolment();
        j["items"] = json!({"achievement:L08": "ALCANZADO"});
        assert_eq!(
            run(&education(), &j).unwrap_err().field,
            "items.achievement:L08"
        );
        // The health source's items are not the education source's.
        let mut j = enrolment();
        j["items"] = json!({"vaccination_up_to_date": true});
        assert_eq!(
            run(&education(), &j).unwrap_err().field,
            "items.vaccination_up_to_date"
        );
        assert!(run(&health(), &j).is_ok());
    }

    #[test]
    fn the_assistance_adapters_checks_apply() {
        let cases: Vec<(&str, Json, &str, &str)> = vec![
            ("household_id", Json::Null, "household_id", "required"),
            (
                "subject",
                json!("cc:52123456"),
                "subject",
                "person key must start with nuip: or registry:, got \"cc\"",
            ),
            (
                "recorded_on",
                json!("2026-02-01"),
                "recorded_on",
                "in the future",
            ),
            ("recorded_by", Json::Null, "recorded_by", "required"),
            ("items", json!({}), "items", "required"),
            (
                "items",
                json!({"enrolled_current_year": null}),
                "items.enrolled_current_year",
                "null is not a value",
            ),
            (
                "items",
                json!({"Enrolled": true}),
                "items.Enrolled",
                "is not a name",
            ),
            ("version", json!(0), "version", "must be >= 1"),
        ];
        for (at, value, field, reason) in cases {
            let mut j = enrolment();
            if value.is_null() {
                j.as_object_mut().unwrap().remove(at);
            } else {
                j[at] = value.clone();
            }
            let e = run(&education(), &j).unwrap_err();
            assert_eq!(e.field, field, "{at} = {value}");
            assert!(e.reason.contains(reason), "{at} = {value}: {}", e.reason);
        }
        // The layout is the assistance adapter's: an unknown field is refused.
        let mut j = enrolment();
        j["school"] = json!("x");
        let e = run(&education(), &j).unwrap_err();
        assert_eq!((e.field.as_str(), e.error_type), ("record", "malformed"));
    }

    #[test]
    fn what_is_published_reads_back_into_the_engine() {
        let mut j = enrolment();
        j["subject"] = json!("household");
        let v = run(&health(), &{
            let mut h = j.clone();
            h["items"] = json!({"health_affiliation_regime": "subsidiado", "consultation": true});
            h
        })
        .unwrap();
        let Some(Record::HouseholdEvidence(e)) = &v.event.record else {
            panic!()
        };
        let record = evidence_from_proto(&v.event, e).unwrap();
        assert_eq!(record.source, "health");
        assert_eq!(record.subject, Subject::Household);
        let mut state = HouseholdState::new(record.household_id.clone());
        state.apply(HouseholdRecord::Evidence(record)).unwrap();
    }
}
