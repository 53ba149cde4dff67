//! Registry person profiles: who is in the monitored public, with the identifiers other sectors
//! use for them (the CNS/CPF crosswalk) and the facts the rule set selects on (birth date, sex,
//! pregnancy, PETI and other memberships). Published to `registry.persons.v1`, keyed by NIS; a
//! newer version replaces the whole profile, a retraction removes the person from the public.
//!
//! This module never decides who is monitored for what: that is the rule set's job.
use std::collections::BTreeSet;
use std::time::SystemTime;

use ponte_domain::period::Date;
use ponte_proto::events::v1::{PersonProfile, event::Record};
use serde::Deserialize;

use crate::record::{self, Destination, RecordError, ValidRecord, present, required};

/// Most CNS numbers one profile may carry (a person may hold a few cards; more is a data error).
const MAX_CNS: usize = 8;
/// Most memberships one profile may carry.
const MAX_MEMBERSHIPS: usize = 16;
/// The membership the PETI flag stands for.
pub const PETI: &str = "PETI";

/// One CNS or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn items(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// One person profile as the registry sends it. See `docs/integration/assistance.md`.
///
/// Every field is optional in the layout so that a missing one is reported by its name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonInput {
    /// NIS; punctuation accepted.
    pub nis: Option<String>,
    /// Family code in the registry (código familiar).
    pub family_id: Option<String>,
    /// `YYYY-MM-DD`.
    pub birth_date: Option<String>,
    /// `F` or `M`.
    pub sex: Option<String>,
    /// IBGE municipality code of residence.
    pub municipality: Option<String>,
    /// INEP code of the school, if known.
    pub inep_school_code: Option<String>,
    /// CNS number(s), if known.
    pub cns: Option<OneOrMany>,
    /// CPF, if known.
    pub cpf: Option<String>,
    /// True when the registry records a pregnancy.
    pub pregnant: Option<bool>,
    /// Expected delivery date when pregnant.
    pub expected_delivery_date: Option<String>,
    /// Shorthand for the `PETI` membership (child-labour eradication programme).
    pub peti: Option<bool>,
    /// Programme or service memberships as rule-set codes (`PETI`, …).
    pub memberships: Option<Vec<String>>,
    /// True when the person completed basic education.
    pub basic_education_completed: Option<bool>,
    /// Version at the source; a change must carry a higher one.
    pub version: Option<u64>,
    /// When the registry recorded this version (RFC 3339).
    pub recorded_at: Option<String>,
    /// True to remove the person from the monitored public (only `nis` is needed).
    #[serde(default)]
    pub retraction: bool,
}

fn sex(s: &str) -> Result<&'static str, RecordError> {
    match s {
        "F" | "f" => Ok("F"),
        "M" | "m" => Ok("M"),
        other => Err(RecordError::value(
            "sex",
            format!("{other:?} is not `F` or `M`"),
        )),
    }
}

fn memberships(input: &PersonInput) -> Result<Vec<String>, RecordError> {
    let listed = input.memberships.as_deref().unwrap_or_default();
    if listed.len() > MAX_MEMBERSHIPS {
        return Err(RecordError::value(
            "memberships",
            format!("{} memberships, at most {MAX_MEMBERSHIPS}", listed.len()),
        ));
    }
    let mut set = BTreeSet::new();
    for m in listed {
        let code = m.trim().to_ascii_uppercase();
        if code.is_empty()
            || code.len() > 16
            || !code.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(RecordError::value(
                "memberships",
                format!("{m:?} is not a membership code (letters, digits and `_`, at most 16)"),
            ));
        }
        set.insert(code);
    }
    match input.peti {
        Some(true) => {
            set.insert(PETI.to_owned());
        }
        Some(false) if set.contains(PETI) => {
            return Err(RecordError::value(
                "peti",
                "false, but `memberships` lists PETI",
            ));
        }
        _ => {}
    }
    Ok(set.into_iter().collect())
}

/// Validates one profile and maps it to a `PersonProfile` event, keyed by NIS, with record id
/// `<source>:person:<nis>`.
pub fn validate(
    input: &PersonInput,
    source_system: &str,
    now: SystemTime,
) -> Result<ValidRecord, RecordError> {
    let nis = record::nis("nis", required("nis", input.nis.as_deref())?)?;
    let env = record::envelope(input.version, input.recorded_at.as_deref(), now)?;
    let record_id = format!("{source_system}:person:{}", nis.as_str());
    let family_id = present(input.family_id.as_deref())
        .map(|f| record::family_id("family_id", f))
        .transpose()?;

    let profile = if input.retraction {
        PersonProfile {
            nis: nis.as_str().to_owned(),
            family_id: family_id.unwrap_or_default(),
            ..Default::default()
        }
    } else {
        let family_id = family_id.ok_or_else(|| RecordError::missing("family_id"))?;
        let birth = record::past_date(
            "birth_date",
            required("birth_date", input.birth_date.as_deref())?,
            now,
        )?;
        if birth.year() < 1900 {
            return Err(RecordError::value(
                "birth_date",
                format!("{birth} is before 1900"),
            ));
        }
        let sex = sex(required("sex", input.sex.as_deref())?)?;
        let municipality = record::ibge(
            "municipality",
            required("municipality", input.municipality.as_deref())?,
        )?;
        let inep = present(input.inep_school_code.as_deref())
            .map(|s| record::inep("inep_school_code", s))
            .transpose()?;
        let cpf = present(input.cpf.as_deref())
            .map(|s| record::cpf("cpf", s))
            .transpose()?;
        let mut cns = BTreeSet::new();
        for s in input.cns.as_ref().map(OneOrMany::items).unwrap_or_default() {
            if let Some(s) = present(Some(s)) {
                cns.insert(record::cns("cns", s)?.as_str().to_owned());
            }
        }
        if cns.len() > MAX_CNS {
            return Err(RecordError::value(
                "cns",
                format!("{} CNS numbers, at most {MAX_CNS}", cns.len()),
            ));
        }

        let pregnant = input.pregnant.unwrap_or(false);
        if pregnant && sex != "F" {
            return Err(RecordError::value("pregnant", "true, but sex is not `F`"));
        }
        let expected = present(input.expected_delivery_date.as_deref())
            .map(|s| record::date("expected_delivery_date", s))
            .transpose()?;
        if let Some(d) = expected {
            if !pregnant {
                return Err(RecordError::value(
                    "expected_delivery_date",
                    "given, but `pregnant` is not true",
                ));
            }
            if d <= birth {
                return Err(RecordError::value(
                    "expected_delivery_date",
                    format!("{d} is not after the birth date {birth}"),
                ));
            }
        }

        PersonProfile {
            nis: nis.as_str().to_owned(),
            family_id,
            birth_date: birth.to_string(),
            sex: sex.to_owned(),
            municipality: municipality.as_str().to_owned(),
            inep_school_code: inep.map(|i| i.as_str().to_owned()).unwrap_or_default(),
            cns: cns.into_iter().collect(),
            cpf: cpf.map(|c| c.as_str().to_owned()).unwrap_or_default(),
            pregnant,
            expected_delivery_date: expected.as_ref().map(Date::to_string).unwrap_or_default(),
            memberships: memberships(input)?,
            basic_education_completed: input.basic_education_completed.unwrap_or(false),
        }
    };

    Ok(ValidRecord {
        destination: Destination::RegistryPersons,
        key: nis.as_str().to_owned(),
        event: env.event(
            record_id,
            source_system,
            now,
            input.retraction,
            Record::PersonProfile(profile),
        ),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::record::testing::now;
    use crate::record::{Kind, parse_json};

    // Valid vectors: NIS 26827649960 and IBGE 3550308 (São Paulo) from
    // docs/rules.md#test-vectors; CPF 52998224725 and CNS 700000000000005 pass the published
    // check-digit rules (checked by ponte-domain's own tests of those rules).
    const BASE: &str = r#""nis":"268.27649.96-0","family_id":"1234567890","birth_date":"2014-03-09","sex":"F","municipality":"3550308""#;

    fn profile(v: &ValidRecord) -> &PersonProfile {
        match v.event.record.as_ref().unwrap() {
            Record::PersonProfile(p) => p,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn parse(extra: &str) -> Result<ValidRecord, RecordError> {
        let sep = if extra.is_empty() { "" } else { "," };
        parse_json(
            Kind::Person,
            &format!("{{{BASE}{sep}{extra}}}"),
            "assistance",
            now(),
        )
    }

    #[test]
    fn a_full_profile_maps_every_field() {
        let v = parse(
            r#""inep_school_code":"35012345","cns":["700000000000005"],"cpf":"529.982.247-25","pregnant":true,"expected_delivery_date":"2026-05-01","memberships":["peti","PBF"],"basic_education_completed":false,"version":4"#,
        )
        .unwrap();
        assert_eq!(v.destination, Destination::RegistryPersons);
        assert_eq!(v.key, "26827649960");
        assert_eq!(v.event.record_id, "assistance:person:26827649960");
        assert_eq!(v.event.version, 4);
        let p = profile(&v);
        assert_eq!(p.family_id, "1234567890");
        assert_eq!(p.birth_date, "2014-03-09");
        assert_eq!(p.municipality, "3550308");
        assert_eq!(p.inep_school_code, "35012345");
        assert_eq!(p.cns, ["700000000000005"]);
        assert_eq!(p.cpf, "52998224725");
        assert!(p.pregnant);
        assert_eq!(p.expected_delivery_date, "2026-05-01");
        // Codes are upper-cased and sorted so equal sets compare equal.
        assert_eq!(p.memberships, ["PBF", "PETI"]);
    }

    #[test]
    fn peti_flag_adds_the_membership_and_a_single_cns_string_is_accepted() {
        let v = parse(r#""peti":true,"cns":"700000000000005""#).unwrap();
        assert_eq!(profile(&v).memberships, [PETI]);
        assert_eq!(profile(&v).cns, ["700000000000005"]);
        let v = parse("").unwrap();
        assert!(profile(&v).memberships.is_empty());
        assert_eq!(v.event.version, 1);
    }

    #[test]
    fn a_retraction_needs_only_the_nis() {
        let v = parse_json(
            Kind::Person,
            r#"{"nis":"26827649960","retraction":true,"version":9}"#,
            "assistance",
            now(),
        )
        .unwrap();
        assert!(v.event.retraction);
        assert_eq!(v.event.record_id, "assistance:person:26827649960");
        assert_eq!(profile(&v).nis, "26827649960");
    }

    #[test]
    fn each_rule_names_its_field() {
        // (record fields replacing or added to BASE, field, reason fragment)
        let cases: &[(&str, &str, &str)] = &[
            (
                r#""nis":"26827649961","family_id":"1","birth_date":"2014-03-09","sex":"F","municipality":"3550308""#,
                "nis",
                "check digit",
            ),
            (
                r#""family_id":"1","birth_date":"2014-03-09","sex":"F","municipality":"3550308""#,
                "nis",
                "required",
            ),
            (
                r#""nis":"26827649960","birth_date":"2014-03-09","sex":"F","municipality":"3550308""#,
                "family_id",
                "required",
            ),
            (
                r#""nis":"26827649960","family_id":"12:3","birth_date":"2014-03-09","sex":"F","municipality":"3550308""#,
                "family_id",
                "not a key",
            ),
            (
                r#""nis":"26827649960","family_id":"1","sex":"F","municipality":"3550308""#,
                "birth_date",
                "required",
            ),
            (
                r#""nis":"26827649960","family_id":"1","birth_date":"2014-02-30","sex":"F","municipality":"3550308""#,
                "birth_date",
                "day",
            ),
            (
                r#""nis":"26827649960","family_id":"1","birth_date":"2027-01-01","sex":"F","municipality":"3550308""#,
                "birth_date",
                "future",
            ),
            (
                r#""nis":"26827649960","family_id":"1","birth_date":"1850-01-01","sex":"F","municipality":"3550308""#,
                "birth_date",
                "before 1900",
            ),
            (
                r#""nis":"26827649960","family_id":"1","birth_date":"2014-03-09","sex":"X","municipality":"3550308""#,
                "sex",
                "`F` or `M`",
            ),
            // 3550307: wrong IBGE check digit (docs/rules.md#test-vectors).
            (
                r#""nis":"26827649960","family_id":"1","birth_date":"2014-03-09","sex":"F","municipality":"3550307""#,
                "municipality",
                "check digit",
            ),
            (
                r#""nis":"26827649960","family_id":"1","birth_date":"2014-03-09","sex":"F""#,
                "municipality",
                "required",
            ),
        ];
        for (body, field, reason) in cases {
            let err =
                parse_json(Kind::Person, &format!("{{{body}}}"), "assistance", now()).unwrap_err();
            assert_eq!(err.field, *field, "{body}");
            assert!(err.reason.contains(reason), "{body}: {}", err.reason);
        }
        let added: &[(&str, &str, &str)] = &[
            (
                r#""inep_school_code":"3501234""#,
                "inep_school_code",
                "8 digits",
            ),
            (r#""cpf":"52998224724""#, "cpf", "check digit"),
            (r#""cns":["700000000000006"]"#, "cns", ""),
            (
                r#""pregnant":false,"expected_delivery_date":"2026-05-01""#,
                "expected_delivery_date",
                "pregnant",
            ),
            (
                r#""pregnant":true,"expected_delivery_date":"2010-05-01""#,
                "expected_delivery_date",
                "not after the birth date",
            ),
            (
                r#""memberships":["PE TI"]"#,
                "memberships",
                "not a membership code",
            ),
            (
                r#""peti":false,"memberships":["PETI"]"#,
                "peti",
                "lists PETI",
            ),
            (r#""version":0"#, "version", ">= 1"),
            (r#""recorded_at":"yesterday""#, "recorded_at", "RFC 3339"),
        ];
        for (extra, field, reason) in added {
            let err = parse(extra).unwrap_err();
            assert_eq!(err.field, *field, "{extra}");
            assert!(err.reason.contains(reason), "{extra}: {}", err.reason);
        }
        let male = BASE.replace(r#""sex":"F""#, r#""sex":"M""#);
        let err = parse_json(
            Kind::Person,
            &format!(r#"{{{male},"pregnant":true}}"#),
            "assistance",
            now(),
        )
        .unwrap_err();
        assert_eq!(err.field, "pregnant");
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_malformed() {
        let err = parse(r#""gender":"F""#).unwrap_err();
        assert_eq!(err.field, "record");
        assert!(err.reason.contains("gender"), "{}", err.reason);
        let err = parse(r#""pregnant":"yes""#).unwrap_err();
        assert_eq!(err.error_type, "malformed");
    }
}
