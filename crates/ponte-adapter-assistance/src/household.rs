//! Households of a household-accompaniment programme (Colombia's Unidos, issue 17): the
//! household registry's profile and the dated evidence about a household — the social workers'
//! (cogestores') visits with their answers and the achievements' states recorded in the field,
//! and the registry's own dated items. Both are published to `assistance.family.v1` keyed by
//! household id (a household is the family-level unit of these programmes), as
//! `HouseholdProfile` and `HouseholdEvidence` events.
//!
//! Identity documents, DIVIPOLA codes and Sisbén IV groups are validated with
//! [`ponte_domain::colombia`]: each document's number by its type, each document against the
//! member's age on the day it is held from, and the member's documents against each other (one
//! person keeps one key from the registro civil to the cédula). Errors never repeat a document
//! number (decision U14 in docs/rules.md). The records are built as the household-achievement
//! engine's types ([`ponte_domain::achievements`]) and mapped to the bus contract from them, so
//! what is published is exactly what the engine can read back ([`profile_from_proto`],
//! [`evidence_from_proto`]).
//!
//! Which items a source carries and what they mean is the rule set's business
//! (`rules/unidos-2021.toml`); this module checks the form of names and values only.
use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use ponte_domain::achievements::{
    Decimal, EvidenceRecord, HouseholdId, HouseholdProfile, Member, Subject, Value, Zone,
};
use ponte_domain::colombia::{
    Divipola, Document, DocumentType, HeldDocument, IdentityConflict, PersonIdentity, PersonKey,
    SisbenGroup,
};
use ponte_domain::period::Date;
use ponte_domain::records::Sex;
use ponte_proto::events::v1::{self as pb, Event, event::Record};
use serde::Deserialize;

use crate::record::{self, Destination, RecordError, ValidRecord, present, required};

/// The evidence sources that arrive through the assistance adapter: the sources of
/// `rules/unidos-2021.toml` whose `adapter` is `assistance` (a unit test keeps them equal).
pub const EVIDENCE_SOURCES: [&str; 4] = [
    "visit",
    "registry",
    "familias_en_accion",
    "jovenes_en_accion",
];

/// Most members one household may list.
const MAX_MEMBERS: usize = 40;
/// Most identity documents one member may list.
const MAX_DOCUMENTS: usize = 8;
/// Most programme markers, figures or IPM indicators of one profile (each).
const MAX_NAMED: usize = 64;
/// Most items one evidence record may carry.
const MAX_ITEMS: usize = 200;
/// Longest item, figure or indicator name.
const MAX_NAME: usize = 64;
/// Longest coded answer.
const MAX_TEXT: usize = 128;

/// A household profile as the registry sends it. See `docs/integration/assistance.md`,
/// "Households".
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileInput {
    /// Household id in the registry.
    pub household_id: Option<String>,
    /// DIVIPOLA municipality code, 5 digits.
    pub municipality: Option<String>,
    /// `urban` or `rural`.
    pub zone: Option<String>,
    /// Sisbén IV group (`B4`).
    pub sisben_group: Option<String>,
    /// Programme markers (`UNIDOS`).
    pub programmes: Option<Vec<String>>,
    /// The members.
    pub members: Option<Vec<MemberInput>>,
    /// Household figures by name, numbers with at most three decimals.
    pub figures: Option<BTreeMap<String, serde_json::Value>>,
    /// IPM indicators by id: `true` deprived.
    pub ipm_deprivations: Option<BTreeMap<String, bool>>,
    /// Version at the source; a change must carry a higher one.
    pub version: Option<u64>,
    /// When the registry recorded this version (RFC 3339).
    pub recorded_at: Option<String>,
    /// True to withdraw the household's profile (only `household_id` is needed).
    #[serde(default)]
    pub retraction: bool,
}

/// One member of a household profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberInput {
    /// The registry's own id of the member.
    pub member_id: Option<String>,
    /// `YYYY-MM-DD`.
    pub birth_date: Option<String>,
    /// `F` or `M`.
    pub sex: Option<String>,
    /// Identity documents held.
    pub documents: Option<Vec<DocumentInput>>,
}

/// One identity document of a member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentInput {
    /// `RC`, `TI`, `CC`, `CE`, `PT` (or `PPT`).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The number; `.`, `-` and spaces accepted.
    pub number: Option<String>,
    /// `YYYY-MM-DD` the member holds it from (issue date, or when the registry recorded it).
    pub from: Option<String>,
}

/// Evidence about a household as the assistance side sends it: a visit, or a dated registry
/// item. See `docs/integration/assistance.md`, "Households".
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceInput {
    /// Household id in the registry.
    pub household_id: Option<String>,
    /// The sender's own id of the record (a visit number), if it has one.
    pub evidence_id: Option<String>,
    /// One of [`EVIDENCE_SOURCES`].
    pub source: Option<String>,
    /// `household`, or a member's person key (`nuip:…`, `registry:…`).
    pub subject: Option<String>,
    /// `YYYY-MM-DD` the facts were recorded.
    pub recorded_on: Option<String>,
    /// Who recorded them (the cogestor's id).
    pub recorded_by: Option<String>,
    /// The items by name: `true`/`false`, a number, or a string.
    pub items: Option<BTreeMap<String, serde_json::Value>>,
    /// Version at the source.
    pub version: Option<u64>,
    /// When the source recorded this version (RFC 3339).
    pub recorded_at: Option<String>,
    /// True to withdraw the record (keys only).
    #[serde(default)]
    pub retraction: bool,
}

fn identifier(field: &str, e: impl std::fmt::Display) -> RecordError {
    RecordError::new(field, "invalid_identifier", e)
}

fn sex(field: &str, s: &str) -> Result<Sex, RecordError> {
    match s {
        "F" | "f" => Ok(Sex::Female),
        "M" | "m" => Ok(Sex::Male),
        other => Err(RecordError::value(
            field,
            format!("{other:?} is not `F` or `M`"),
        )),
    }
}

fn sex_code(s: Sex) -> &'static str {
    match s {
        Sex::Female => "F",
        Sex::Male => "M",
    }
}

fn zone(field: &str, s: &str) -> Result<Zone, RecordError> {
    match s.to_ascii_lowercase().as_str() {
        "urban" => Ok(Zone::Urban),
        "rural" => Ok(Zone::Rural),
        _ => Err(RecordError::value(
            field,
            format!("{s:?} is not `urban` or `rural`"),
        )),
    }
}

/// An item, figure or indicator name: lower-case letters, digits and `_`; an item may also be
/// an achievement's state recorded in the field, `achievement:<id>`.
fn name(field: &str, s: &str, achievement_states: bool) -> Result<String, RecordError> {
    let plain = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    let ok = s.len() <= MAX_NAME
        && (plain(s)
            || (achievement_states
                && s.strip_prefix("achievement:").is_some_and(|id| {
                    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                })));
    if !ok {
        let also = if achievement_states {
            ", or achievement:<id>"
        } else {
            ""
        };
        return Err(RecordError::value(
            field,
            format!(
                "{s:?} is not a name (lower-case letters, digits and `_`{also}; at most {MAX_NAME})"
            ),
        ));
    }
    Ok(s.to_owned())
}

fn number(field: &str, v: &serde_json::Number) -> Result<Decimal, RecordError> {
    let n = if let Some(i) = v.as_i64() {
        Decimal::from_int(i).ok_or_else(|| format!("{i} is too large"))
    } else if v.is_u64() {
        Err(format!("{v} is too large"))
    } else {
        Decimal::from_f64(v.as_f64().unwrap_or(f64::NAN))
    };
    n.map_err(|e| RecordError::value(field, e))
}

fn value(field: &str, v: &serde_json::Value) -> Result<Value, RecordError> {
    match v {
        serde_json::Value::Bool(b) => Ok(Value::Bool(*b)),
        serde_json::Value::Number(n) => number(field, n).map(Value::Number),
        serde_json::Value::String(s) => {
            let t = s.trim();
            if t.is_empty() || t.chars().count() > MAX_TEXT || t.chars().any(char::is_control) {
                return Err(RecordError::value(
                    field,
                    format!("a coded answer must be 1 to {MAX_TEXT} printable characters"),
                ));
            }
            Ok(Value::Text(t.to_owned()))
        }
        other => Err(RecordError::value(
            field,
            format!(
                "{} is not a value (true/false, a number or a string)",
                match other {
                    serde_json::Value::Null => "null",
                    serde_json::Value::Array(_) => "a list",
                    _ => "an object",
                }
            ),
        )),
    }
}

fn programmes(listed: &[String]) -> Result<BTreeSet<String>, RecordError> {
    if listed.len() > MAX_NAMED {
        return Err(RecordError::value(
            "programmes",
            format!("{} programmes, at most {MAX_NAMED}", listed.len()),
        ));
    }
    listed
        .iter()
        .map(|p| {
            let code = p.trim().to_ascii_uppercase();
            if code.is_empty()
                || code.len() > 16
                || !code.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(RecordError::value(
                    "programmes",
                    format!("{p:?} is not a programme code (letters, digits and `_`, at most 16)"),
                ));
            }
            Ok(code)
        })
        .collect()
}

/// One member's identity from the documents sent: each number by its type, each document
/// against the member's birth date and the others (decision U12).
fn member(i: usize, m: &MemberInput, now: SystemTime) -> Result<Member, RecordError> {
    let at = |f: &str| format!("members[{i}].{f}");
    let member_id = present(m.member_id.as_deref())
        .map(|s| record::source_key(&at("member_id"), s, 64, &['-', '_', '.', '/']))
        .transpose()?;
    let birth_date = present(m.birth_date.as_deref())
        .map(|s| record::past_date(&at("birth_date"), s, now))
        .transpose()?;
    let sex = present(m.sex.as_deref())
        .map(|s| sex(&at("sex"), s))
        .transpose()?;
    let listed = m.documents.as_deref().unwrap_or_default();
    if listed.len() > MAX_DOCUMENTS {
        return Err(RecordError::value(
            &at("documents"),
            format!("{} documents, at most {MAX_DOCUMENTS}", listed.len()),
        ));
    }
    let mut documents = Vec::with_capacity(listed.len());
    for (j, d) in listed.iter().enumerate() {
        let at = |f: &str| format!("members[{i}].documents[{j}].{f}");
        let kind = DocumentType::parse(required(&at("type"), d.kind.as_deref())?)
            .map_err(|e| identifier(&at("type"), e))?;
        let document = Document::parse(kind, required(&at("number"), d.number.as_deref())?)
            .map_err(|e| identifier(&at("number"), e))?;
        let from = record::past_date(&at("from"), required(&at("from"), d.from.as_deref())?, now)?;
        documents.push(HeldDocument { document, from });
    }
    let identity =
        PersonIdentity::from_documents(birth_date, member_id, documents).map_err(|e| match e {
            IdentityConflict::NoKey => RecordError::new(&at("member_id"), "missing_field", e),
            e => RecordError::value(&at("documents"), e),
        })?;
    Ok(Member { identity, sex })
}

/// Validates a household profile and maps it to a `HouseholdProfile` event keyed by household
/// id, with record id `<source>:household-profile:<household id>`.
pub fn validate_profile(
    input: &ProfileInput,
    source_system: &str,
    now: SystemTime,
) -> Result<ValidRecord, RecordError> {
    let household = record::family_id(
        "household_id",
        required("household_id", input.household_id.as_deref())?,
    )?;
    let env = record::envelope(input.version, input.recorded_at.as_deref(), now)?;
    let record_id = format!("{source_system}:household-profile:{household}");
    let profile = if input.retraction {
        pb::HouseholdProfile {
            household_id: household.clone(),
            ..Default::default()
        }
    } else {
        profile_to_proto(&domain_profile(
            input,
            &household,
            record_id.clone(),
            env.version,
            now,
        )?)
    };
    Ok(ValidRecord {
        destination: Destination::AssistanceFamily,
        key: household,
        event: env.event(
            record_id,
            source_system,
            now,
            input.retraction,
            Record::HouseholdProfile(profile),
        ),
    })
}

fn domain_profile(
    input: &ProfileInput,
    household: &str,
    record_id: String,
    version: u64,
    now: SystemTime,
) -> Result<HouseholdProfile, RecordError> {
    let municipality = Divipola::parse(required("municipality", input.municipality.as_deref())?)
        .map_err(|e| identifier("municipality", e))?;
    let zone = present(input.zone.as_deref())
        .map(|s| zone("zone", s))
        .transpose()?;
    let sisben_group = present(input.sisben_group.as_deref())
        .map(|s| SisbenGroup::parse(s).map_err(|e| RecordError::value("sisben_group", e)))
        .transpose()?;
    let programmes = programmes(input.programmes.as_deref().unwrap_or_default())?;

    let listed = input.members.as_deref().unwrap_or_default();
    if listed.is_empty() {
        return Err(RecordError::missing("members"));
    }
    if listed.len() > MAX_MEMBERS {
        return Err(RecordError::value(
            "members",
            format!("{} members, at most {MAX_MEMBERS}", listed.len()),
        ));
    }
    let mut members: Vec<Member> = Vec::with_capacity(listed.len());
    for (i, m) in listed.iter().enumerate() {
        let m = member(i, m, now)?;
        for (j, other) in members.iter().enumerate() {
            if other.key() == m.key() {
                return Err(RecordError::value(
                    &format!("members[{i}]"),
                    format!("the same person as members[{j}] (the same key)"),
                ));
            }
            if let Some(d) = m
                .identity
                .documents()
                .iter()
                .find(|d| other.identity.holds(&d.document))
            {
                return Err(RecordError::value(
                    &format!("members[{i}].documents"),
                    format!("members[{j}] holds the same {}", d.document.kind),
                ));
            }
        }
        members.push(m);
    }

    let figures = input.figures.as_ref().map_or(Ok(BTreeMap::new()), |f| {
        if f.len() > MAX_NAMED {
            return Err(RecordError::value(
                "figures",
                format!("{} figures, at most {MAX_NAMED}", f.len()),
            ));
        }
        f.iter()
            .map(|(k, v)| {
                let field = format!("figures.{k}");
                let k = name(&field, k, false)?;
                match v {
                    serde_json::Value::Number(n) => Ok((k, number(&field, n)?)),
                    _ => Err(RecordError::value(&field, "must be a number")),
                }
            })
            .collect()
    })?;
    let ipm_deprivations = input
        .ipm_deprivations
        .as_ref()
        .map_or(Ok(BTreeMap::new()), |m| {
            if m.len() > MAX_NAMED {
                return Err(RecordError::value(
                    "ipm_deprivations",
                    format!("{} indicators, at most {MAX_NAMED}", m.len()),
                ));
            }
            m.iter()
                .map(|(k, v)| Ok((name(&format!("ipm_deprivations.{k}"), k, false)?, *v)))
                .collect()
        })?;

    Ok(HouseholdProfile {
        record_id,
        version,
        retracted: false,
        household_id: HouseholdId(household.to_owned()),
        municipality,
        zone,
        sisben_group,
        programmes,
        members,
        figures,
        ipm_deprivations,
    })
}

/// Validates an evidence record and maps it to a `HouseholdEvidence` event keyed by household
/// id. Record id: `<source system>:household-evidence:<household>:<evidence_id>`, or
/// `…:<household>:<source>:<subject>:<recorded_on>` when the sender has no id for it.
pub fn validate_evidence(
    input: &EvidenceInput,
    source_system: &str,
    now: SystemTime,
) -> Result<ValidRecord, RecordError> {
    let household = record::family_id(
        "household_id",
        required("household_id", input.household_id.as_deref())?,
    )?;
    let evidence_id = present(input.evidence_id.as_deref())
        .map(|s| record::source_key("evidence_id", s, 64, &['-', '_', '.', '/']))
        .transpose()?;
    let env = record::envelope(input.version, input.recorded_at.as_deref(), now)?;
    let source = present(input.source.as_deref())
        .map(|s| {
            EVIDENCE_SOURCES
                .into_iter()
                .find(|known| *known == s)
                .ok_or_else(|| {
                    RecordError::value(
                        "source",
                        format!(
                            "{s:?} is not a source the assistance adapter carries ({})",
                            EVIDENCE_SOURCES.join(", ")
                        ),
                    )
                })
        })
        .transpose()?;
    let subject = present(input.subject.as_deref())
        .map(|s| {
            if s == "household" {
                Ok(Subject::Household)
            } else {
                PersonKey::parse(s)
                    .map(Subject::Member)
                    .map_err(|e| identifier("subject", e))
            }
        })
        .transpose()?;
    let recorded_on = present(input.recorded_on.as_deref())
        .map(|s| record::past_date("recorded_on", s, now))
        .transpose()?;
    let key = match (&evidence_id, source, &subject, recorded_on) {
        (Some(id), ..) => id.clone(),
        (None, Some(src), Some(subject), Some(day)) => format!("{src}:{subject}:{day}"),
        (None, None, ..) => return Err(RecordError::missing("source")),
        (None, _, None, _) => return Err(RecordError::missing("subject")),
        (None, ..) => return Err(RecordError::missing("recorded_on")),
    };
    let record_id = format!("{source_system}:household-evidence:{household}:{key}");
    let evidence = if input.retraction {
        pb::HouseholdEvidence {
            household_id: household.clone(),
            ..Default::default()
        }
    } else {
        let source = source.ok_or_else(|| RecordError::missing("source"))?;
        let subject = subject.ok_or_else(|| RecordError::missing("subject"))?;
        let recorded_on = recorded_on.ok_or_else(|| RecordError::missing("recorded_on"))?;
        let recorded_by = record::source_key(
            "recorded_by",
            required("recorded_by", input.recorded_by.as_deref())?,
            64,
            &['-', '_', '.', '/', ':', '@'],
        )?;
        let listed = input.items.as_ref().filter(|i| !i.is_empty());
        let listed = listed.ok_or_else(|| RecordError::missing("items"))?;
        if listed.len() > MAX_ITEMS {
            return Err(RecordError::value(
                "items",
                format!("{} items, at most {MAX_ITEMS}", listed.len()),
            ));
        }
        let items = listed
            .iter()
            .map(|(k, v)| {
                let field = format!("items.{k}");
                Ok((name(&field, k, true)?, value(&field, v)?))
            })
            .collect::<Result<BTreeMap<_, _>, RecordError>>()?;
        evidence_to_proto(&EvidenceRecord {
            record_id: record_id.clone(),
            version: env.version,
            retracted: false,
            household_id: HouseholdId(household.clone()),
            source: source.to_owned(),
            subject,
            recorded_on,
            recorded_by,
            items,
        })
    };
    Ok(ValidRecord {
        destination: Destination::AssistanceFamily,
        key: household,
        event: env.event(
            record_id,
            source_system,
            now,
            input.retraction,
            Record::HouseholdEvidence(evidence),
        ),
    })
}

// ---- the engine's types and the bus contract ---------------------------------------------------

/// The bus form of a household profile (the record id, version and retraction are the
/// envelope's).
pub fn profile_to_proto(p: &HouseholdProfile) -> pb::HouseholdProfile {
    pb::HouseholdProfile {
        household_id: p.household_id.0.clone(),
        municipality: p.municipality.as_str().to_owned(),
        zone: match p.zone {
            None => pb::HouseholdZone::Unspecified,
            Some(Zone::Urban) => pb::HouseholdZone::Urban,
            Some(Zone::Rural) => pb::HouseholdZone::Rural,
        }
        .into(),
        sisben_group: p.sisben_group.map(|g| g.to_string()).unwrap_or_default(),
        programmes: p.programmes.iter().cloned().collect(),
        members: p
            .members
            .iter()
            .map(|m| pb::HouseholdMember {
                person_key: m.key().to_string(),
                registry_member_id: m.identity.registry_member().unwrap_or_default().to_owned(),
                birth_date: m
                    .identity
                    .birth_date()
                    .map(|d| d.to_string())
                    .unwrap_or_default(),
                sex: m.sex.map(sex_code).unwrap_or_default().to_owned(),
                documents: m
                    .identity
                    .documents()
                    .iter()
                    .map(|d| pb::IdentityDocument {
                        document_type: d.document.kind.code().to_owned(),
                        number: d.document.number.as_str().to_owned(),
                        held_from: d.from.to_string(),
                    })
                    .collect(),
            })
            .collect(),
        figures: p
            .figures
            .iter()
            .map(|(name, v)| pb::HouseholdFigure {
                name: name.clone(),
                thousandths: v.thousandths(),
            })
            .collect(),
        ipm_deprivations: p
            .ipm_deprivations
            .iter()
            .map(|(indicator, deprived)| pb::IpmDeprivation {
                indicator: indicator.clone(),
                deprived: *deprived,
            })
            .collect(),
    }
}

/// The bus form of an evidence record.
pub fn evidence_to_proto(e: &EvidenceRecord) -> pb::HouseholdEvidence {
    use pb::evidence_item::Value as V;
    pb::HouseholdEvidence {
        household_id: e.household_id.0.clone(),
        source: e.source.clone(),
        subject: e.subject.to_string(),
        recorded_on: e.recorded_on.to_string(),
        recorded_by: e.recorded_by.clone(),
        items: e
            .items
            .iter()
            .map(|(name, v)| pb::EvidenceItem {
                name: name.clone(),
                value: Some(match v {
                    Value::Bool(b) => V::Flag(*b),
                    Value::Number(n) => V::Thousandths(n.thousandths()),
                    Value::Text(t) => V::Text(t.clone()),
                }),
            })
            .collect(),
    }
}

fn date(field: &str, s: &str) -> Result<Date, RecordError> {
    Date::parse(s).map_err(|e| RecordError::value(field, e))
}

/// A published household profile read back as the engine's type, checked again (what the
/// reconciler applies). A retraction carries no profile to read: use the envelope's record id.
pub fn profile_from_proto(
    event: &Event,
    p: &pb::HouseholdProfile,
) -> Result<HouseholdProfile, RecordError> {
    let members = p
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let at = |f: &str| format!("members[{i}].{f}");
            let documents = m
                .documents
                .iter()
                .enumerate()
                .map(|(j, d)| {
                    let at = |f: &str| format!("members[{i}].documents[{j}].{f}");
                    Ok(HeldDocument {
                        document: Document::parse_coded(&d.document_type, &d.number)
                            .map_err(|e| identifier(&at("number"), e))?,
                        from: date(&at("held_from"), &d.held_from)?,
                    })
                })
                .collect::<Result<Vec<_>, RecordError>>()?;
            let birth = present(Some(&m.birth_date))
                .map(|s| date(&at("birth_date"), s))
                .transpose()?;
            let member_id = present(Some(&m.registry_member_id)).map(str::to_owned);
            let identity = PersonIdentity::from_documents(birth, member_id, documents)
                .map_err(|e| RecordError::value(&at("documents"), e))?;
            if identity.key().to_string() != m.person_key {
                return Err(identifier(
                    &at("person_key"),
                    format!(
                        "the documents give the key {}, not the one published",
                        identity.key().masked()
                    ),
                ));
            }
            let sex = present(Some(&m.sex))
                .map(|s| sex(&at("sex"), s))
                .transpose()?;
            Ok(Member { identity, sex })
        })
        .collect::<Result<Vec<_>, RecordError>>()?;
    Ok(HouseholdProfile {
        record_id: event.record_id.clone(),
        version: event.version,
        retracted: event.retraction,
        household_id: HouseholdId(p.household_id.clone()),
        municipality: Divipola::parse(&p.municipality)
            .map_err(|e| identifier("municipality", e))?,
        zone: match pb::HouseholdZone::try_from(p.zone) {
            Ok(pb::HouseholdZone::Unspecified) => None,
            Ok(pb::HouseholdZone::Urban) => Some(Zone::Urban),
            Ok(pb::HouseholdZone::Rural) => Some(Zone::Rural),
            Err(_) => {
                return Err(RecordError::value(
                    "zone",
                    format!("unknown zone {}", p.zone),
                ));
            }
        },
        sisben_group: present(Some(&p.sisben_group))
            .map(|s| SisbenGroup::parse(s).map_err(|e| RecordError::value("sisben_group", e)))
            .transpose()?,
        programmes: p.programmes.iter().cloned().collect(),
        members,
        figures: p
            .figures
            .iter()
            .map(|f| (f.name.clone(), Decimal::from_thousandths(f.thousandths)))
            .collect(),
        ipm_deprivations: p
            .ipm_deprivations
            .iter()
            .map(|d| (d.indicator.clone(), d.deprived))
            .collect(),
    })
}

/// A published evidence record read back as the engine's type, checked again.
pub fn evidence_from_proto(
    event: &Event,
    e: &pb::HouseholdEvidence,
) -> Result<EvidenceRecord, RecordError> {
    use pb::evidence_item::Value as V;
    let subject = if e.subject == "household" {
        Subject::Household
    } else {
        Subject::Member(PersonKey::parse(&e.subject).map_err(|x| identifier("subject", x))?)
    };
    let items = e
        .items
        .iter()
        .map(|i| {
            let v = match &i.value {
                Some(V::Flag(b)) => Value::Bool(*b),
                Some(V::Thousandths(t)) => Value::Number(Decimal::from_thousandths(*t)),
                Some(V::Text(t)) => Value::Text(t.clone()),
                None => {
                    return Err(RecordError::missing(&format!("items.{}", i.name)));
                }
            };
            Ok((i.name.clone(), v))
        })
        .collect::<Result<BTreeMap<_, _>, RecordError>>()?;
    Ok(EvidenceRecord {
        record_id: event.record_id.clone(),
        version: event.version,
        retracted: event.retraction,
        household_id: HouseholdId(e.household_id.clone()),
        source: e.source.clone(),
        subject,
        recorded_on: date("recorded_on", &e.recorded_on)?,
        recorded_by: e.recorded_by.clone(),
        items,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::record::testing::now;
    use crate::record::{Kind, is_json_array, parse_json, split_json_body};
    use ponte_domain::achievements::HouseholdState;
    use ponte_domain::achievements::{AchievementRuleSet, AchievementState, HouseholdRecord};
    use serde_json::{Value as Json, json};

    const RULES: &str = include_str!("../../../rules/unidos-2021.toml");
    const NUIP: &str = "1023456789";

    /// A household of Pasto (DIVIPOLA 52001): a mother with her cédula, a son who went from the
    /// registro civil to the tarjeta de identidad at 7 (one NUIP, one key), and a Venezuelan
    /// relative with a PPT (keyed by the registry's member id; decision U12).
    fn household() -> Json {
        json!({
            "household_id": "HH-52001-0001",
            "municipality": "52001",
            "zone": "urban",
            "sisben_group": "a3",
            "programmes": ["unidos"],
            "members": [
                {"member_id": "HH1-1", "birth_date": "1985-06-01", "sex": "F",
                 "documents": [{"type": "CC", "number": "52.123.456", "from": "2003-07-01"}]},
                {"member_id": "HH1-2", "birth_date": "2014-03-04", "sex": "M",
                 "documents": [{"type": "RC", "number": NUIP, "from": "2014-03-20"},
                               {"type": "TI", "number": "1.023.456.789", "from": "2021-04-01"}]},
                {"member_id": "HH1-3", "birth_date": "1990-01-01",
                 "documents": [{"type": "PPT", "number": "4512345", "from": "2022-01-15"}]}
            ],
            "figures": {"extreme_poverty_line": 227220},
            "ipm_deprivations": {"analfabetismo": false, "material_inadecuado_pisos": true},
            "version": 3
        })
    }

    fn visit() -> Json {
        json!({
            "household_id": "HH-52001-0001",
            "evidence_id": "V-2025-0042",
            "source": "visit",
            "subject": "household",
            "recorded_on": "2025-06-10",
            "recorded_by": "cogestor:CG-5201-017",
            "items": {"floor_material": "earth", "persons_per_sleeping_room": 2.5,
                      "per_capita_income": 180000, "achievement:L21": "POR ALCANZAR"}
        })
    }

    fn profile(j: &Json) -> Result<ValidRecord, RecordError> {
        parse_json(Kind::HouseholdProfile, &j.to_string(), "assistance", now())
    }

    fn evidence(j: &Json) -> Result<ValidRecord, RecordError> {
        parse_json(Kind::HouseholdEvidence, &j.to_string(), "assistance", now())
    }

    /// `base` with `value` set at the JSON pointer `at` (created when missing).
    fn with(mut base: Json, at: &str, value: Json) -> Json {
        let (parent, last) = at.rsplit_once('/').unwrap();
        let target = if parent.is_empty() {
            &mut base
        } else {
            base.pointer_mut(parent).unwrap()
        };
        match target {
            Json::Array(a) => a[last.parse::<usize>().unwrap()] = value,
            Json::Object(o) => {
                if value.is_null() {
                    o.remove(last);
                } else {
                    o.insert(last.to_owned(), value);
                }
            }
            _ => panic!("{at}"),
        }
        base
    }

    #[test]
    fn a_household_profile_maps_every_field_keyed_by_household() {
        let v = profile(&household()).unwrap();
        assert_eq!(v.destination, Destination::AssistanceFamily);
        assert_eq!(v.key, "HH-52001-0001");
        assert_eq!(
            v.event.record_id,
            "assistance:household-profile:HH-52001-0001"
        );
        assert_eq!(v.event.version, 3);
        let Some(Record::HouseholdProfile(p)) = &v.event.record else {
            panic!("{v:?}")
        };
        assert_eq!(p.municipality, "52001");
        assert_eq!(p.zone(), pb::HouseholdZone::Urban);
        assert_eq!(p.sisben_group, "A3");
        assert_eq!(p.programmes, ["UNIDOS"]);
        let keys: Vec<&str> = p.members.iter().map(|m| m.person_key.as_str()).collect();
        assert_eq!(keys, ["nuip:52123456", "nuip:1023456789", "registry:HH1-3"]);
        let son = &p.members[1];
        assert_eq!(
            (son.birth_date.as_str(), son.sex.as_str()),
            ("2014-03-04", "M")
        );
        let docs: Vec<(&str, &str, &str)> = son
            .documents
            .iter()
            .map(|d| {
                (
                    d.document_type.as_str(),
                    d.number.as_str(),
                    d.held_from.as_str(),
                )
            })
            .collect();
        assert_eq!(
            docs,
            [("RC", NUIP, "2014-03-20"), ("TI", NUIP, "2021-04-01")]
        );
        assert_eq!(p.members[2].documents[0].document_type, "PT");
        assert_eq!(p.members[2].sex, "");
        assert_eq!(
            p.figures,
            [pb::HouseholdFigure {
                name: "extreme_poverty_line".into(),
                thousandths: 227_220_000
            }]
        );
        assert_eq!(
            p.ipm_deprivations
                .iter()
                .map(|d| (d.indicator.as_str(), d.deprived))
                .collect::<Vec<_>>(),
            [
                ("analfabetismo", false),
                ("material_inadecuado_pisos", true)
            ]
        );
    }

    #[test]
    fn a_visit_maps_every_item_with_its_value() {
        use pb::evidence_item::Value as V;
        let v = evidence(&visit()).unwrap();
        assert_eq!(v.destination, Destination::AssistanceFamily);
        assert_eq!(v.key, "HH-52001-0001");
        assert_eq!(
            v.event.record_id,
            "assistance:household-evidence:HH-52001-0001:V-2025-0042"
        );
        let Some(Record::HouseholdEvidence(e)) = &v.event.record else {
            panic!("{v:?}")
        };
        assert_eq!(
            (
                e.source.as_str(),
                e.subject.as_str(),
                e.recorded_on.as_str()
            ),
            ("visit", "household", "2025-06-10")
        );
        assert_eq!(e.recorded_by, "cogestor:CG-5201-017");
        let items: Vec<(&str, V)> = e
            .items
            .iter()
            .map(|i| (i.name.as_str(), i.value.clone().unwrap()))
            .collect();
        assert_eq!(
            items,
            [
                ("achievement:L21", V::Text("POR ALCANZAR".into())),
                ("floor_material", V::Text("earth".into())),
                ("per_capita_income", V::Thousandths(180_000_000)),
                ("persons_per_sleeping_room", V::Thousandths(2500)),
            ]
        );
        // A member's record without the sender's id: identified by source, subject and day.
        let j = with(visit(), "/evidence_id", Json::Null);
        let j = with(j, "/subject", json!(format!("nuip:{NUIP}")));
        let j = with(j, "/items", json!({"attends_school": true}));
        let v = evidence(&j).unwrap();
        assert_eq!(
            v.event.record_id,
            format!("assistance:household-evidence:HH-52001-0001:visit:nuip:{NUIP}:2025-06-10")
        );
        // Registry items arrive the same way, under their source.
        let j = with(visit(), "/source", json!("registry"));
        assert!(evidence(&j).is_ok());
    }

    #[test]
    fn retractions_need_only_the_keys() {
        let v =
            profile(&json!({"household_id": "HH-1", "retraction": true, "version": 9})).unwrap();
        assert!(v.event.retraction);
        assert_eq!(v.event.record_id, "assistance:household-profile:HH-1");
        let v = evidence(
            &json!({"household_id": "HH-1", "evidence_id": "V1", "retraction": true, "version": 2}),
        )
        .unwrap();
        assert_eq!(v.event.record_id, "assistance:household-evidence:HH-1:V1");
        let err = evidence(&json!({"household_id": "HH-1", "retraction": true})).unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.error_type),
            ("source", "missing_field")
        );
    }

    #[test]
    fn each_document_type_with_a_good_and_a_bad_number() {
        // One adult member born 1980-01-01 holding one document from a day their age allows
        // (decision U5), with the registry's member id (a foreigner's documents need it, U12).
        // Number rules: decision U14 in docs/rules.md.
        let cases: &[(&str, &str, &str, Result<&str, &str>)] = &[
            ("RC", "1023456789", "1980-02-01", Ok("nuip:1023456789")),
            (
                "RC",
                "102345678",
                "1980-02-01",
                Err("registro civil (NUIP) number must have 10 to 11 digits, got 9"),
            ),
            ("TI", "1.023.456.789", "1990-01-01", Ok("nuip:1023456789")),
            ("TI", "95081512345", "1990-01-01", Ok("nuip:95081512345")),
            (
                "TI",
                "0123456789",
                "1990-01-01",
                Err(
                    "tarjeta de identidad number must not start with 0 (document numbers are not zero-padded)",
                ),
            ),
            ("CC", "52 123 456", "1998-01-01", Ok("nuip:52123456")),
            (
                "CC",
                "12",
                "1998-01-01",
                Err("cédula de ciudadanía number must have 3 to 10 digits, got 2"),
            ),
            ("CE", "442113", "2000-01-01", Ok("registry:M1")),
            (
                "CE",
                "123456789",
                "2000-01-01",
                Err("cédula de extranjería number must have 3 to 8 digits, got 9"),
            ),
            ("PT", "4512345", "2022-01-01", Ok("registry:M1")),
            (
                "PPT",
                "PPT4512345",
                "2022-01-01",
                Err("PPT number contains invalid character 'P' at position 0"),
            ),
            (
                "PA",
                "123456",
                "2022-01-01",
                Err(
                    "unknown identity document type \"PA\": expected one of RC, TI, CC, CE, PT (or PPT)",
                ),
            ),
        ];
        for (kind, number, from, expected) in cases {
            let j = with(
                household(),
                "/members",
                json!([{"member_id": "M1", "birth_date": "1980-01-01",
                        "documents": [{"type": kind, "number": number, "from": from}]}]),
            );
            match (profile(&j), expected) {
                (Ok(v), Ok(key)) => {
                    let Some(Record::HouseholdProfile(p)) = &v.event.record else {
                        panic!()
                    };
                    assert_eq!(p.members[0].person_key, *key, "{kind} {number}");
                }
                (Err(e), Err(reason)) => {
                    let field = if e.reason.starts_with("unknown identity document type") {
                        "members[0].documents[0].type"
                    } else {
                        "members[0].documents[0].number"
                    };
                    assert_eq!(
                        (e.field.as_str(), e.error_type, e.reason.as_str()),
                        (field, "invalid_identifier", *reason),
                        "{kind} {number}"
                    );
                    // Decision U14: the number is never repeated.
                    assert!(!e.reason.contains("2345678"), "{}", e.reason);
                }
                (got, expected) => panic!("{kind} {number}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn documents_must_fit_the_members_age_and_each_other() {
        // Born 2010-03-04 (the child of docs/rules.md's worked example); ages: decision U5,
        // docs/sources.md#registraduria-tarjeta-identidad; order and keys: decision U12.
        let child = |docs: Json, member_id: Json| {
            let mut m = json!({"birth_date": "2010-03-04", "documents": docs});
            if !member_id.is_null() {
                m["member_id"] = member_id;
            }
            with(household(), "/members", json!([m]))
        };
        let rc = json!({"type": "RC", "number": NUIP, "from": "2010-03-20"});
        type Case<'a> = (&'a str, Json, Json, Result<(), (&'a str, &'a str, &'a str)>);
        let cases: Vec<Case<'_>> = vec![
            (
                "a tarjeta at 7",
                json!([rc, {"type": "TI", "number": NUIP, "from": "2017-03-04"}]),
                Json::Null,
                Ok(()),
            ),
            (
                "a tarjeta at 6",
                json!([rc, {"type": "TI", "number": NUIP, "from": "2017-03-03"}]),
                Json::Null,
                Err((
                    "members[0].documents",
                    "invalid_value",
                    "a tarjeta de identidad is issued from age 7; the person was 6 on 2017-03-03",
                )),
            ),
            (
                "a cédula at 15",
                json!([rc, {"type": "CC", "number": NUIP, "from": "2025-06-01"}]),
                Json::Null,
                Err((
                    "members[0].documents",
                    "invalid_value",
                    "a cédula de ciudadanía is issued from age 18; the person was 15 on 2025-06-01",
                )),
            ),
            (
                "a document dated before the birth",
                json!([{"type": "RC", "number": NUIP, "from": "2010-03-01"}]),
                Json::Null,
                Err((
                    "members[0].documents",
                    "invalid_value",
                    "a registro civil (NUIP) dated 2010-03-01 cannot belong to a person born on 2010-03-04",
                )),
            ),
            (
                "a document dated after the record was received",
                json!([{"type": "RC", "number": NUIP, "from": "2026-03-01"}]),
                Json::Null,
                Err((
                    "members[0].documents[0].from",
                    "invalid_value",
                    "2026-03-01 is in the future (received on 2026-01-01)",
                )),
            ),
            (
                "a tarjeta with another number, not linked by the registry",
                json!([rc, {"type": "TI", "number": "1098765432", "from": "2018-01-10"}]),
                Json::Null,
                Err((
                    "members[0].documents",
                    "invalid_value",
                    "a tarjeta de identidad whose number differs from the person's NUIP continues the identity only when the registry links it to the same member",
                )),
            ),
            (
                "the same, linked by the registry's member id",
                json!([rc, {"type": "TI", "number": "1098765432", "from": "2018-01-10"}]),
                json!("HH1-2"),
                Ok(()),
            ),
            (
                "a PPT without the registry's member id",
                json!([{"type": "PT", "number": "4512345", "from": "2021-06-01"}]),
                Json::Null,
                Err((
                    "members[0].member_id",
                    "missing_field",
                    "a person without a registro civil, tarjeta de identidad or cédula de ciudadanía needs the registry's member id as key",
                )),
            ),
            (
                "a document without its date",
                json!([{"type": "RC", "number": NUIP}]),
                Json::Null,
                Err(("members[0].documents[0].from", "missing_field", "required")),
            ),
        ];
        for (what, docs, member_id, expected) in cases {
            let got = profile(&child(docs, member_id))
                .map(|_| ())
                .map_err(|e| (e.field, e.error_type, e.reason));
            assert_eq!(
                got,
                expected.map_err(|(f, t, r)| (f.to_owned(), t, r.to_owned())),
                "{what}"
            );
        }
        // A birth date after the day the record was received.
        let err = profile(&with(
            household(),
            "/members/0/birth_date",
            json!("2026-02-01"),
        ))
        .unwrap_err();
        assert_eq!(err.field, "members[0].birth_date");
        assert!(err.reason.contains("in the future"), "{}", err.reason);
    }

    #[test]
    fn each_profile_rule_names_its_field() {
        let cases: Vec<(&str, Json, &str, &str)> = vec![
            (
                "/household_id",
                json!("HH 1"),
                "household_id",
                "is not a key",
            ),
            ("/household_id", Json::Null, "household_id", "required"),
            ("/municipality", Json::Null, "municipality", "required"),
            (
                "/municipality",
                json!("5001"),
                "municipality",
                "must have 5 digits, got 4 (a code of a department below 10, such as 05 Antioquia, loses its leading zero when stored as a number)",
            ),
            (
                "/municipality",
                json!("34001"),
                "municipality",
                "department 34 is not one of DANE's 33 department codes",
            ),
            (
                "/municipality",
                json!("52000"),
                "municipality",
                "the municipality part must not be 000",
            ),
            (
                "/municipality",
                json!("52-001"),
                "municipality",
                "contains invalid character '-' at position 2",
            ),
            (
                "/sisben_group",
                json!("A6"),
                "sisben_group",
                "group A has subgroups A1 to A5",
            ),
            (
                "/sisben_group",
                json!("E1"),
                "sisben_group",
                "expected a group letter A, B, C or D followed by a subgroup number",
            ),
            ("/zone", json!("town"), "zone", "is not `urban` or `rural`"),
            (
                "/members/0/sex",
                json!("X"),
                "members[0].sex",
                "is not `F` or `M`",
            ),
            ("/members", json!([]), "members", "required"),
            (
                "/programmes",
                json!(["UNIDOS 2"]),
                "programmes",
                "is not a programme code",
            ),
            (
                "/figures",
                json!({"extreme_poverty_line": 2.3333}),
                "figures.extreme_poverty_line",
                "has more than 3 decimals",
            ),
            (
                "/figures",
                json!({"extreme_poverty_line": "227220"}),
                "figures.extreme_poverty_line",
                "must be a number",
            ),
            (
                "/ipm_deprivations",
                json!({"Analfabetismo": true}),
                "ipm_deprivations.Analfabetismo",
                "is not a name",
            ),
            // Two members who are one person, or who share a document.
            (
                "/members/2",
                json!({"member_id": "HH1-9", "documents": [{"type": "CC", "number": "52123456", "from": "2010-01-01"}]}),
                "members[2]",
                "the same person as members[0]",
            ),
            (
                "/members/0",
                json!({"member_id": "HH1-8", "documents": [{"type": "PT", "number": "4512345", "from": "2022-01-15"}]}),
                "members[2].documents",
                "members[0] holds the same PPT",
            ),
        ];
        for (at, value, field, reason) in cases {
            let err = profile(&with(household(), at, value.clone())).unwrap_err();
            assert_eq!(err.field, field, "{at} = {value}");
            assert!(
                err.reason.contains(reason),
                "{at} = {value}: {}",
                err.reason
            );
        }
        assert_eq!(
            profile(&with(
                household(),
                "/members/0/documents/0/kind",
                json!("CC")
            ))
            .unwrap_err()
            .error_type,
            "malformed"
        );
    }

    #[test]
    fn each_evidence_rule_names_its_field() {
        let cases: Vec<(&str, Json, &str, &str)> = vec![
            (
                "/source",
                json!("education"),
                "source",
                "\"education\" is not a source the assistance adapter carries (visit, registry, familias_en_accion, jovenes_en_accion)",
            ),
            ("/source", Json::Null, "source", "required"),
            (
                "/subject",
                json!("cc:52123456"),
                "subject",
                "person key must start with nuip: or registry:, got \"cc\"",
            ),
            (
                "/subject",
                json!("nuip:12"),
                "subject",
                "person key nuip: must be followed by the number of a registro civil",
            ),
            (
                "/recorded_on",
                json!("2026-02-01"),
                "recorded_on",
                "in the future",
            ),
            ("/recorded_on", json!("2025-02-30"), "recorded_on", "day"),
            ("/recorded_by", Json::Null, "recorded_by", "required"),
            (
                "/recorded_by",
                json!("cogestor 17"),
                "recorded_by",
                "is not a key",
            ),
            ("/evidence_id", json!("V 1"), "evidence_id", "is not a key"),
            ("/items", json!({}), "items", "required"),
            (
                "/items",
                json!({"floor_material": null}),
                "items.floor_material",
                "null is not a value",
            ),
            (
                "/items",
                json!({"floor_material": ["earth"]}),
                "items.floor_material",
                "a list is not a value",
            ),
            (
                "/items",
                json!({"persons_per_sleeping_room": 2.3333}),
                "items.persons_per_sleeping_room",
                "has more than 3 decimals",
            ),
            (
                "/items",
                json!({"floor_material": "  "}),
                "items.floor_material",
                "a coded answer must be 1 to 128 printable characters",
            ),
            (
                "/items",
                json!({"Floor": "earth"}),
                "items.Floor",
                "is not a name",
            ),
            (
                "/items",
                json!({"achievement:": "ALCANZADO"}),
                "items.achievement:",
                "is not a name",
            ),
        ];
        for (at, value, field, reason) in cases {
            let err = evidence(&with(visit(), at, value.clone())).unwrap_err();
            assert_eq!(err.field, field, "{at} = {value}");
            assert!(
                err.reason.contains(reason),
                "{at} = {value}: {}",
                err.reason
            );
        }
    }

    #[test]
    fn a_mixed_request_keeps_the_valid_records_and_names_the_invalid_one() {
        // What the service does with a JSON array (`json_records`): each record on its own; the
        // valid ones are published, the invalid ones answered and dead-lettered with their
        // position, field and reason.
        let second = with(
            with(household(), "/household_id", json!("HH-52001-0002")),
            "/members/1/documents/1/from",
            json!("2017-03-03"),
        );
        let third = with(household(), "/household_id", json!("HH-52001-0003"));
        let body = format!("[{},{second},{third}]", household());
        assert!(is_json_array(body.as_bytes()));
        let outcomes: Vec<Result<String, (usize, RecordError)>> = split_json_body(body.as_bytes())
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, raw)| {
                parse_json(Kind::HouseholdProfile, raw.get(), "assistance", now())
                    .map(|v| v.event.record_id)
                    .map_err(|e| (i + 1, e))
            })
            .collect();
        let accepted: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
        assert_eq!(
            accepted,
            [
                "assistance:household-profile:HH-52001-0001",
                "assistance:household-profile:HH-52001-0003"
            ]
        );
        let rejected: Vec<&(usize, RecordError)> =
            outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
        assert_eq!(rejected.len(), 1);
        let (position, e) = rejected[0];
        assert_eq!(*position, 2);
        assert_eq!(
            e.to_string(),
            "members[1].documents: a tarjeta de identidad is issued from age 7; the person was 2 on 2017-03-03"
        );
    }

    #[test]
    fn what_is_published_reads_back_into_the_engine() {
        // The bus form is the engine's: read back, the profile and the visit are the records
        // the adapter built, and the Unidos rule set evaluates them.
        let p = profile(&household()).unwrap().event;
        let Some(Record::HouseholdProfile(pp)) = &p.record else {
            panic!()
        };
        let domain = profile_from_proto(&p, pp).unwrap();
        assert_eq!(&profile_to_proto(&domain), pp);
        assert_eq!(domain.record_id, p.record_id);
        assert_eq!(domain.sisben_group.unwrap().to_string(), "A3");
        let v = evidence(&visit()).unwrap().event;
        let Some(Record::HouseholdEvidence(ve)) = &v.record else {
            panic!()
        };
        let visit_record = evidence_from_proto(&v, ve).unwrap();
        assert_eq!(&evidence_to_proto(&visit_record), ve);
        assert_eq!(visit_record.subject, Subject::Household);

        let rs = AchievementRuleSet::from_toml_str("rules/unidos-2021.toml", RULES).unwrap();
        let mut state = HouseholdState::new(domain.household_id.clone());
        state.apply(HouseholdRecord::Profile(domain)).unwrap();
        state
            .apply(HouseholdRecord::Evidence(visit_record))
            .unwrap();
        let eval = rs
            .evaluate(&state, Date::parse("2025-07-01").unwrap())
            .unwrap();
        // L21 (no earth floors): the visit recorded an earth floor.
        assert_eq!(
            eval.achievement("L21").unwrap().state,
            AchievementState::NotReached
        );
        // L01 (identification): each member's document for their age, from the profile.
        assert_eq!(
            eval.achievement("L01").unwrap().state,
            AchievementState::Reached
        );
    }

    #[test]
    fn the_evidence_sources_are_the_rule_sets_assistance_sources() {
        use ponte_domain::achievements::rules::Adapter;
        let rs = AchievementRuleSet::from_toml_str("rules/unidos-2021.toml", RULES).unwrap();
        let mut assistance: Vec<&str> = rs
            .sources
            .iter()
            .filter(|s| s.adapter == Adapter::Assistance)
            .map(|s| s.id.as_str())
            .collect();
        assistance.sort_unstable();
        let mut ours = EVIDENCE_SOURCES;
        ours.sort_unstable();
        assert_eq!(assistance, ours);
    }
}
