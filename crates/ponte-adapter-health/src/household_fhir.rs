//! A household's health results for Colombia's Unidos as a FHIR R4 `Bundle` (issue 17 point 3:
//! "through the health adapter, FHIR where the source is FHIR"), posted to
//! `POST /v1/household-evidence` with `Content-Type: application/fhir+json`. Pure: bytes, the
//! rule set's health source, the mapping configuration and the current time in; one outcome
//! per entry out. `docs/integration/health.md`, "Household evidence as FHIR", is the contract.
//!
//! - **The household** is the bundle's one `Group`, identified by the Unidos household id under
//!   [`HOUSEHOLD_SYSTEM`]; its `member.entity` references name the `Patient`s the results are
//!   about. A sector system answers Prosperidad Social's cross-match household by household, so
//!   it returns the household id it was given: the adapter keeps no document → household index.
//! - **Patients** are identified by Colombian identity documents, the type coded on
//!   `Patient.identifier.type` in the Ministry of Health's code systems
//!   ([`DOCUMENT_TYPE_SYSTEMS`]: RDA's `ColombianPersonIdentifier`, IHCE's
//!   `IdspersonaColombia`) and each number checked by its type with
//!   [`ponte_domain::colombia`]. The subject is the member's person key as the household
//!   profile has it: `nuip:<number>` for a Registraduría document (RC, TI, CC: they carry the
//!   NUIP), `registry:<member id>` from an identifier under [`MEMBER_SYSTEM`] for a member with
//!   only a cédula de extranjería or a PPT (the registry keys foreigners by member id).
//! - **Resources → the `health` source's items** (the names are the rule set's; the validation
//!   is [`SectorEvidence::validate`], the JSON layout's, so both forms answer alike):
//!   `Coverage` → `health_affiliation_regime`; the configured vaccination-status `Observation` →
//!   `vaccination_up_to_date`; a finished `Encounter` → `consultation`; a body weight and a body
//!   height `Observation` of the same patient on the same day → `weight_and_height_recorded`.
//!   Anything else is ignored and says why.
//! - **Identity and version**: one evidence record per resource (per weight-and-height pair),
//!   its evidence id the resource's `Type/id` (or its business identifier / `urn:uuid:`
//!   `fullUrl`, hashed when it does not fit an evidence id), its version `meta.versionId`, else
//!   `meta.lastUpdated`, else `Bundle.timestamp` in milliseconds; `entered-in-error` (and a
//!   cancelled Coverage, Observation or Encounter) withdraws the record.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::SystemTime;

use ponte_adapter_education::household::{EvidenceInput, SectorEvidence, ValidEvidence};
use ponte_domain::colombia::{Document, DocumentType, PersonKey};
use ponte_domain::period::Date;
use serde_json::Value;

use crate::fhir::{
    array_at, codings, fhir_date, has_code, meta_of, observation_date, observation_withdrawn,
    open_bundle, quantity, refused_method, stable_key, str_at, type_and_id, valid_id, version_of,
};
use crate::record::{MappingConfig, RecordError, grams, millimetres, parse_instant};

/// The identifier system of the Unidos household id on the bundle's `Group`.
pub const HOUSEHOLD_SYSTEM: &str = "urn:ponte:unidos:household";
/// The identifier system of the Unidos registry's member id on a `Patient` (the person key of a
/// member without a Registraduría document).
pub const MEMBER_SYSTEM: &str = "urn:ponte:unidos:member";
/// The code system of the health regime on `Coverage.type`.
pub const REGIME_SYSTEM: &str = "urn:ponte:unidos:CodeSystem:health-regime";
/// The regimes of Colombia's health system a `Coverage` may name (the values the rule set's
/// L02 reads as reached).
pub const REGIMES: [&str; 3] = ["contributivo", "subsidiado", "especial"];
/// The code systems whose codes on `Patient.identifier.type` name a Colombian identity
/// document: the Ministry of Health's RDA guide (`ColombianPersonIdentifier`) and its earlier
/// IHCE guide (`IdspersonaColombia`). Codes RC, TI, CC, CE, PT (or PPT); other codes (passport,
/// diplomatic card…) are passed over.
pub const DOCUMENT_TYPE_SYSTEMS: [&str; 2] = [
    "https://fhir.minsalud.gov.co/rda/CodeSystem/ColombianPersonIdentifier",
    "https://www.minsalud.gov.co/ihc/fhir/CodeSystem/IdspersonaColombia",
];

const LOINC: &str = "http://loinc.org";
const BODY_WEIGHT: &str = "29463-7";
const BODY_HEIGHT: &str = "8302-2";

/// The FHIR → item mapping: the items of the rule set's `health` source this module fills.
/// Whether the rule set declares them is checked on every record ([`SectorEvidence::validate`]).
const AFFILIATION: &str = "health_affiliation_regime";
const VACCINATION: &str = "vaccination_up_to_date";
const CONSULTATION: &str = "consultation";
const GROWTH: &str = "weight_and_height_recorded";
/// Every item the mapping fills.
pub const MAPPED_ITEMS: [&str; 4] = [AFFILIATION, VACCINATION, CONSULTATION, GROWTH];

/// Longest evidence id the household-evidence layout takes.
const MAX_EVIDENCE_ID: usize = 64;

/// What became of one bundle entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// An evidence record to publish.
    Record(Box<ValidEvidence>),
    /// The household's `Group`, or a member's `Patient`: gives the household or the identity.
    Identity,
    /// A measurement that is part of the record of entry `index` (0-based): the other half of
    /// a weight-and-height pair.
    PartOf(usize),
    /// Not used; the reason says why.
    Ignored(String),
    /// Invalid: answered, counted and dead-lettered.
    Rejected(RecordError),
}

/// One entry and its outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryResult {
    /// 0-based index in `Bundle.entry`.
    pub index: usize,
    /// `Type/id`, the `fullUrl`, or `entry N`.
    pub label: String,
    pub outcome: Outcome,
    /// The entry's bytes as received.
    pub original: Vec<u8>,
}

/// A household bundle read.
#[derive(Debug, Clone, PartialEq)]
pub struct HouseholdBundle {
    /// The household id on the `Group`.
    pub household_id: String,
    pub entries: Vec<EntryResult>,
}

/// The bundle types a household's results may come in.
const BUNDLE_TYPES: [&str; 3] = ["collection", "batch", "transaction"];

/// Reads a household bundle. `Err` when the body as a whole is unusable: not a FHIR Bundle, a
/// type other than collection, batch or transaction, or not exactly one `Group` carrying a
/// valid household id (without it no entry can be placed). Otherwise every entry has an
/// outcome.
pub fn parse_household_bundle(
    body: &[u8],
    evidence: &SectorEvidence,
    cfg: &MappingConfig,
    source_system: &str,
    now: SystemTime,
) -> Result<HouseholdBundle, RecordError> {
    let (raw, entries) = open_bundle(
        body,
        &BUNDLE_TYPES,
        "send the household's Group, Patients and results in a collection, batch or transaction Bundle",
        "for household evidence",
    )?;
    let timestamp = match raw.timestamp {
        None | Some(Value::Null) => None,
        Some(t) => Some(
            t.as_str()
                .filter(|s| parse_instant(s).is_some())
                .map(str::to_owned)
                .ok_or_else(|| {
                    RecordError::new(
                        "Bundle.timestamp",
                        "invalid_value",
                        format!("{t} is not a FHIR instant"),
                    )
                })?,
        ),
    };
    let resource = |i: usize| {
        entries[i]
            .1
            .as_ref()
            .ok()
            .and_then(|e| e.get("resource"))
            .filter(|r| r.is_object())
    };
    let rtype_of = |i: usize| resource(i).and_then(|r| str_at(r, "resourceType"));

    // The household: the one Group.
    let groups: Vec<usize> = (0..entries.len())
        .filter(|&i| rtype_of(i) == Some("Group"))
        .collect();
    let group_index = match groups.as_slice() {
        [g] => *g,
        [] => {
            return Err(RecordError::malformed(
                "Bundle.entry",
                format!(
                    "no Group: a household's results come with the household as a Group identified by its Unidos household id (identifier system {HOUSEHOLD_SYSTEM}) listing the Patients as members"
                ),
            ));
        }
        more => {
            return Err(RecordError::new(
                "Bundle.entry",
                "unsupported",
                format!(
                    "{} Groups (entries {}): one bundle is one household's results; send each household in its own bundle",
                    more.len(),
                    more.iter()
                        .map(|i| (i + 1).to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    };
    let group = resource(group_index).cloned().unwrap_or(Value::Null);
    let household_id = household_of(&group, group_index, evidence, source_system, now)?;

    // Every Patient by what a reference to it may say, with its person key or why it has none.
    let mut by_ref: HashMap<String, usize> = HashMap::new();
    let mut keys: HashMap<usize, Result<String, RecordError>> = HashMap::new();
    for (i, (_, entry)) in entries.iter().enumerate() {
        if rtype_of(i) != Some("Patient") {
            continue;
        }
        let Ok(entry) = entry else { continue };
        if let Some(full) = str_at(entry, "fullUrl") {
            by_ref.entry(full.to_owned()).or_insert(i);
            if let Some(tail) = type_and_id(full) {
                by_ref.entry(tail).or_insert(i);
            }
        }
        if let Some(id) = resource(i).and_then(|r| str_at(r, "id")) {
            by_ref.entry(format!("Patient/{id}")).or_insert(i);
        }
        keys.insert(i, person_key(resource(i).unwrap_or(&Value::Null)));
    }
    let resolve = |reference: &str| {
        by_ref
            .get(reference)
            .or_else(|| type_and_id(reference).and_then(|k| by_ref.get(&k)))
            .copied()
    };
    let members: HashSet<usize> = array_at(&group, "member")
        .iter()
        .filter(|m| m.get("inactive").and_then(Value::as_bool) != Some(true))
        .filter_map(|m| m.get("entity").and_then(|e| str_at(e, "reference")))
        .filter_map(resolve)
        .collect();

    let ctx = Ctx {
        evidence,
        cfg,
        source_system,
        now,
        household_id: &household_id,
        group_index,
        timestamp: timestamp.as_deref(),
        keys: &keys,
        members: &members,
        resolve: &resolve,
    };
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(entries.len());
    let mut measures: Vec<Measure> = Vec::new();
    for (index, (_, entry)) in entries.iter().enumerate() {
        let outcome = match entry {
            Ok(e) if e.is_object() => match ctx.entry(index, e) {
                Read::Done(o) => o,
                Read::Measure(m) => {
                    measures.push(m);
                    // Placed once the pairs are known.
                    Outcome::Identity
                }
            },
            Ok(_) => Outcome::Rejected(RecordError::malformed(
                "Bundle.entry",
                "an entry must be a JSON object",
            )),
            Err(e) => Outcome::Rejected(RecordError::malformed("Bundle.entry", e)),
        };
        outcomes.push(outcome);
    }
    for (index, outcome) in ctx.pairs(measures) {
        outcomes[index] = outcome;
    }

    let results = entries
        .iter()
        .zip(outcomes)
        .enumerate()
        .map(|(index, ((raw, entry), outcome))| {
            let entry = entry.as_ref().ok();
            let res = entry.and_then(|e| e.get("resource"));
            let rtype = res.and_then(|r| str_at(r, "resourceType")).unwrap_or("");
            let label = match res.and_then(|r| str_at(r, "id")) {
                Some(id) => format!("{rtype}/{id}"),
                None => entry
                    .and_then(|e| str_at(e, "fullUrl"))
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("entry {}", index + 1)),
            };
            EntryResult {
                index,
                label,
                outcome,
                original: raw.get().as_bytes().to_vec(),
            }
        })
        .collect();
    Ok(HouseholdBundle {
        household_id,
        entries: results,
    })
}

/// The household id on the Group, checked as the household-evidence layout checks it (a
/// withdrawal of a record of the household is validated: it needs nothing but the keys).
fn household_of(
    group: &Value,
    index: usize,
    evidence: &SectorEvidence,
    source_system: &str,
    now: SystemTime,
) -> Result<String, RecordError> {
    let field = format!("Bundle.entry[{index}].resource.identifier");
    let ids: Vec<&str> = array_at(group, "identifier")
        .iter()
        .filter(|i| str_at(i, "system") == Some(HOUSEHOLD_SYSTEM))
        .filter_map(|i| str_at(i, "value"))
        .collect();
    let id = match ids.as_slice() {
        [id] => (*id).to_owned(),
        [] => {
            return Err(RecordError::malformed(
                &field,
                format!(
                    "the Group (entry {}) carries no identifier with system {HOUSEHOLD_SYSTEM}: the Unidos household id the cross-match gave is needed",
                    index + 1
                ),
            ));
        }
        _ => {
            return Err(RecordError::new(
                &field,
                "invalid_value",
                format!(
                    "the Group (entry {}) carries {} household ids ({HOUSEHOLD_SYSTEM}): one bundle is one household",
                    index + 1,
                    ids.len()
                ),
            ));
        }
    };
    let probe = EvidenceInput {
        household_id: Some(id.clone()),
        evidence_id: Some("Group".to_owned()),
        retraction: true,
        ..EvidenceInput::default()
    };
    evidence.validate(&probe, source_system, now).map_err(|e| {
        RecordError::new(&field, e.error_type, format!("household id: {}", e.reason))
    })?;
    Ok(id)
}

/// A Patient's person key in the Unidos registry, from its Colombian identity documents (or
/// the registry's member id). A document whose number fails its type's rule rejects the
/// Patient: it is never passed over.
fn person_key(res: &Value) -> Result<String, RecordError> {
    let mut national: Vec<Document> = Vec::new();
    let mut foreign: Vec<DocumentType> = Vec::new();
    let mut member: Option<String> = None;
    let mut passed_over: Vec<String> = Vec::new();
    for (i, ident) in array_at(res, "identifier").iter().enumerate() {
        let field = format!("Patient.identifier[{i}]");
        let value = str_at(ident, "value").map(str::trim).unwrap_or("");
        if str_at(ident, "system") == Some(MEMBER_SYSTEM) {
            let key = PersonKey::parse(&format!("registry:{value}"))
                .map_err(|e| RecordError::new(&field, "invalid_identifier", e))?;
            member = Some(key.to_string());
            continue;
        }
        let code = ident.get("type").and_then(|t| {
            codings(t)
                .find(|(s, _)| DOCUMENT_TYPE_SYSTEMS.contains(s))
                .map(|(_, c)| c)
        });
        let Some(code) = code else { continue };
        let Ok(kind) = DocumentType::parse(code) else {
            // A passport, a diplomatic card…: not a document the registry keys members by.
            passed_over.push(code.to_owned());
            continue;
        };
        if value.is_empty() {
            return Err(RecordError::malformed(
                &format!("{field}.value"),
                format!("missing: the number of the {kind}"),
            ));
        }
        let document = Document::parse(kind, value)
            .map_err(|e| RecordError::new(&format!("{field}.value"), "invalid_identifier", e))?;
        if kind.is_national() {
            national.push(document);
        } else {
            foreign.push(kind);
        }
    }
    let mut numbers: Vec<&str> = national.iter().map(|d| d.number.as_str()).collect();
    numbers.dedup();
    match numbers.as_slice() {
        [n] => return Ok(format!("nuip:{n}")),
        [] => {}
        _ => {
            return Err(RecordError::new(
                "Patient.identifier",
                "invalid_identifier",
                format!(
                    "Registraduría documents with different numbers ({}): a member is keyed by the NUIP they carry, and which one that is cannot be told here; send the document the Unidos registry holds",
                    national
                        .iter()
                        .map(|d| d.kind.code())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    if let Some(m) = member {
        return Ok(m);
    }
    let reason = if foreign.is_empty() {
        let also = if passed_over.is_empty() {
            String::new()
        } else {
            format!(
                " (document types passed over: {}; the registry keys no member by them)",
                passed_over.join(", ")
            )
        };
        format!(
            "no registro civil, tarjeta de identidad, cédula de ciudadanía, cédula de extranjería or PPT with its type coded in {} or {}, and no Unidos member id ({MEMBER_SYSTEM}){also}",
            DOCUMENT_TYPE_SYSTEMS[0], DOCUMENT_TYPE_SYSTEMS[1]
        )
    } else {
        format!(
            "a {} does not key a member in the Unidos registry: a member without a Registraduría document is keyed by the registry's member id; add the identifier with system {MEMBER_SYSTEM} the cross-match gave",
            foreign[0]
        )
    };
    Err(RecordError::new(
        "Patient.identifier",
        "invalid_identifier",
        reason,
    ))
}

/// What one entry reads to, before weight-and-height pairs are formed.
enum Read {
    Done(Outcome),
    Measure(Measure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MeasureKind {
    Weight,
    Height,
}

impl MeasureKind {
    fn name(self) -> &'static str {
        match self {
            MeasureKind::Weight => "weight",
            MeasureKind::Height => "height",
        }
    }
}

/// A valid body weight or height (or its withdrawal), waiting for its pair.
struct Measure {
    index: usize,
    kind: MeasureKind,
    subject: String,
    day: Date,
    withdrawn: bool,
    key: String,
    version: u64,
    recorded_at: Option<String>,
}

/// What a resource says, before it is validated as household evidence.
struct Fact {
    rtype: &'static str,
    evidence_id: String,
    /// `None`: the record is withdrawn.
    value: Option<Value>,
    item: &'static str,
    subject: String,
    subject_field: String,
    recorded_on: Date,
    date_field: String,
    value_field: &'static str,
    version: u64,
    recorded_at: Option<String>,
}

type Resolve<'a> = dyn Fn(&str) -> Option<usize> + 'a;

struct Ctx<'a> {
    evidence: &'a SectorEvidence,
    cfg: &'a MappingConfig,
    source_system: &'a str,
    now: SystemTime,
    household_id: &'a str,
    group_index: usize,
    timestamp: Option<&'a str>,
    keys: &'a HashMap<usize, Result<String, RecordError>>,
    members: &'a HashSet<usize>,
    resolve: &'a Resolve<'a>,
}

impl Ctx<'_> {
    fn entry(&self, index: usize, entry: &Value) -> Read {
        let done = Read::Done;
        if let Some(method) = entry.get("request").and_then(|r| str_at(r, "method"))
            && let Some(reason) = refused_method(method)
        {
            return done(Outcome::Rejected(RecordError::new(
                "Bundle.entry.request.method",
                "unsupported",
                reason,
            )));
        }
        let Some(res) = entry.get("resource").filter(|r| r.is_object()) else {
            return done(Outcome::Rejected(RecordError::malformed(
                "Bundle.entry.resource",
                "missing: every entry must carry a resource",
            )));
        };
        let result = match str_at(res, "resourceType").unwrap_or("") {
            "Group" => return done(Outcome::Identity),
            "Patient" => {
                return done(match self.keys.get(&index) {
                    Some(Err(e)) => Outcome::Rejected(e.clone()),
                    _ if self.members.contains(&index) => Outcome::Identity,
                    _ => Outcome::Ignored(format!(
                        "not a member of the household's Group (entry {}): nothing is recorded about it",
                        self.group_index + 1
                    )),
                });
            }
            "Coverage" => self.coverage(entry, res),
            "Observation" => self.observation(index, entry, res),
            "Encounter" => self.encounter(entry, res),
            "Immunization" => {
                return done(Outcome::Ignored(
                    "a dose given is not whether the schedule is up to date for the child's age: send the health team's vaccination-status Observation (vaccination_up_to_date)".to_owned(),
                ));
            }
            "" => Err(RecordError::malformed("resource.resourceType", "missing")),
            other => {
                return done(Outcome::Ignored(format!(
                    "{other} is not read as Unidos household evidence (accepted: Group, Patient, Coverage, Observation, Encounter)"
                )));
            }
        };
        result.unwrap_or_else(|e| done(Outcome::Rejected(e)))
    }

    /// The person key of the member a resource is about: a reference to a `Patient` of the
    /// bundle that the Group lists.
    fn member(&self, res: &Value, rtype: &str, key: &str) -> Result<(String, String), RecordError> {
        let field = format!("{rtype}.{key}");
        let node = res.get(key);
        // Coverage.beneficiary is one reference; Observation.subject and Encounter.subject too.
        let Some(reference) = node.and_then(|r| str_at(r, "reference")) else {
            let why = if node.and_then(|r| r.get("identifier")).is_some() {
                "a logical reference (identifier) is not enough: refer to the Patient entry the household's Group lists"
            } else {
                "missing: the member the result is about is needed (a reference to a Patient the household's Group lists)"
            };
            return Err(RecordError::malformed(&field, why));
        };
        let Some(i) = (self.resolve)(reference) else {
            return Err(RecordError::new(
                &field,
                "unresolved_reference",
                format!(
                    "{reference} is not a Patient of this bundle: include the Patient, listed as a member of the household's Group"
                ),
            ));
        };
        match self.keys.get(&i) {
            Some(Ok(_)) if !self.members.contains(&i) => Err(RecordError::new(
                &field,
                "invalid_value",
                format!(
                    "{reference} (entry {}) is not a member of the household's Group (entry {}): a bundle carries the results of one household's members",
                    i + 1,
                    self.group_index + 1
                ),
            )),
            Some(Ok(k)) => Ok((k.clone(), field)),
            Some(Err(e)) => Err(RecordError::new(
                &field,
                "invalid_identifier",
                format!(
                    "{reference} (entry {}) has no usable identifier: {}: {}",
                    i + 1,
                    e.field,
                    e.reason
                ),
            )),
            None => Err(RecordError::new(
                &field,
                "unresolved_reference",
                format!("{reference} is not a Patient"),
            )),
        }
    }

    /// The evidence id, version and version time of a resource.
    fn identity(
        &self,
        entry: &Value,
        res: &Value,
        rtype: &'static str,
    ) -> Result<(String, u64, Option<String>), RecordError> {
        let key = match str_at(res, "id") {
            Some(id) if valid_id(id) => format!("{rtype}/{id}"),
            Some(id) => {
                return Err(RecordError::new(
                    &format!("{rtype}.id"),
                    "invalid_value",
                    format!("{id:?} is not a FHIR id (1–64 of A–Z a–z 0–9 - .)"),
                ));
            }
            None => stable_key(entry, res, rtype, None)?,
        };
        let (version_id, last_updated) = meta_of(res, rtype)?;
        // Without meta, a resource is as of the bundle: the cross-match answer's timestamp.
        let bundle_time = self.timestamp.and_then(parse_instant);
        let version = version_of(version_id, last_updated.or(bundle_time));
        let recorded_at = res
            .get("meta")
            .and_then(|m| str_at(m, "lastUpdated"))
            .or(self.timestamp)
            .map(str::to_owned);
        Ok((evidence_id(rtype, &key), version, recorded_at))
    }

    fn coverage(&self, entry: &Value, res: &Value) -> Result<Read, RecordError> {
        const T: &str = "Coverage";
        let withdrawn = match str_at(res, "status").unwrap_or("") {
            "active" => false,
            // A cancelled coverage says this affiliation no longer holds, not that the member
            // has none (a new one may replace it): its record is withdrawn.
            "cancelled" | "entered-in-error" => true,
            "draft" => {
                return Ok(Read::Done(Outcome::Ignored(
                    "a draft Coverage is not in force: nothing is recorded until it is active"
                        .to_owned(),
                )));
            }
            other => {
                return Err(RecordError::new(
                    "Coverage.status",
                    "invalid_value",
                    format!(
                        "{other:?} is not a Coverage status (active, cancelled, draft, entered-in-error)"
                    ),
                ));
            }
        };
        let (subject, subject_field) = self.member(res, T, "beneficiary")?;
        let (evidence_id, version, recorded_at) = self.identity(entry, res, T)?;
        // As of when the sector's record was last updated (or the bundle was assembled), or the
        // day it ended if that is earlier.
        let (as_of, date_field) = match (
            res.get("meta").and_then(|m| str_at(m, "lastUpdated")),
            self.timestamp,
        ) {
            (Some(s), _) => (
                fhir_date("Coverage.meta.lastUpdated", s)?,
                "Coverage.meta.lastUpdated",
            ),
            (None, Some(s)) => (fhir_date("Bundle.timestamp", s)?, "Bundle.timestamp"),
            (None, None) => {
                return Err(RecordError::malformed(
                    "Coverage.meta.lastUpdated",
                    "missing: the day the affiliation was known is needed (meta.lastUpdated, or the Bundle's timestamp)",
                ));
            }
        };
        let (recorded_on, date_field) = match res.get("period").and_then(|p| str_at(p, "end")) {
            Some(end) => {
                let end = fhir_date("Coverage.period.end", end)?;
                if end < as_of {
                    (end, "Coverage.period.end")
                } else {
                    (as_of, date_field)
                }
            }
            None => (as_of, date_field),
        };
        let value = if withdrawn {
            None
        } else {
            let ours: Vec<&str> = res
                .get("type")
                .map(|t| {
                    codings(t)
                        .filter(|(s, _)| *s == REGIME_SYSTEM)
                        .map(|(_, c)| c)
                        .collect()
                })
                .unwrap_or_default();
            let regime = match ours.as_slice() {
                [c] if REGIMES.contains(c) => *c,
                [c] => {
                    return Err(RecordError::new(
                        "Coverage.type",
                        "invalid_value",
                        format!(
                            "{c:?} is not a regime of {REGIME_SYSTEM} ({})",
                            REGIMES.join(", ")
                        ),
                    ));
                }
                [] => {
                    return Err(RecordError::malformed(
                        "Coverage.type",
                        format!(
                            "missing: the regime is a coding of {REGIME_SYSTEM} ({})",
                            REGIMES.join(", ")
                        ),
                    ));
                }
                _ => {
                    return Err(RecordError::new(
                        "Coverage.type",
                        "invalid_value",
                        format!("several codings of {REGIME_SYSTEM}: one regime per Coverage"),
                    ));
                }
            };
            Some(Value::String(regime.to_owned()))
        };
        self.fact(Fact {
            rtype: T,
            evidence_id,
            value,
            item: AFFILIATION,
            subject,
            subject_field,
            recorded_on,
            date_field: date_field.to_owned(),
            value_field: "Coverage.type",
            version,
            recorded_at,
        })
        .map(Read::Done)
    }

    fn observation(&self, index: usize, entry: &Value, res: &Value) -> Result<Read, RecordError> {
        const T: &str = "Observation";
        let code = res.get("code").cloned().unwrap_or(Value::Null);
        enum Kind {
            Measure(MeasureKind),
            Vaccination,
        }
        let kind = if has_code(&code, LOINC, BODY_WEIGHT) {
            Kind::Measure(MeasureKind::Weight)
        } else if has_code(&code, LOINC, BODY_HEIGHT) {
            Kind::Measure(MeasureKind::Height)
        } else if codings(&code).any(|(s, c)| self.cfg.is_vaccination_status(s, c)) {
            Kind::Vaccination
        } else {
            return Ok(Read::Done(Outcome::Ignored(format!(
                "Observation code is not one read as Unidos household evidence (body weight LOINC {BODY_WEIGHT}, body height {BODY_HEIGHT}, vaccination status)"
            ))));
        };
        let withdrawn = observation_withdrawn(res)?;
        let (subject, subject_field) = self.member(res, T, "subject")?;
        let (day, date_field) =
            observation_date(res, "missing: the day of the result dates the evidence")?;
        let (evidence_id, version, recorded_at) = self.identity(entry, res, T)?;
        match kind {
            Kind::Measure(kind) => {
                if !withdrawn {
                    let (v, unit) = quantity(res)?;
                    // Checked as plausible; the value itself is not evidence.
                    let _ = match kind {
                        MeasureKind::Weight => grams("Observation.valueQuantity", v, &unit)?,
                        MeasureKind::Height => millimetres("Observation.valueQuantity", v, &unit)?,
                    };
                }
                Ok(Read::Measure(Measure {
                    index,
                    kind,
                    subject,
                    day,
                    withdrawn,
                    key: evidence_id,
                    version,
                    recorded_at,
                }))
            }
            Kind::Vaccination => {
                let value = if withdrawn {
                    None
                } else {
                    Some(Value::Bool(
                        res.get("valueBoolean")
                            .and_then(Value::as_bool)
                            .ok_or_else(|| {
                                RecordError::malformed(
                                    "Observation.valueBoolean",
                                    "missing: the vaccination status is a valueBoolean",
                                )
                            })?,
                    ))
                };
                self.fact(Fact {
                    rtype: T,
                    evidence_id,
                    value,
                    item: VACCINATION,
                    subject,
                    subject_field,
                    recorded_on: day,
                    date_field: date_field.to_owned(),
                    value_field: "Observation.valueBoolean",
                    version,
                    recorded_at,
                })
                .map(Read::Done)
            }
        }
    }

    fn encounter(&self, entry: &Value, res: &Value) -> Result<Read, RecordError> {
        const T: &str = "Encounter";
        let withdrawn = match str_at(res, "status").unwrap_or("") {
            "finished" => false,
            "cancelled" | "entered-in-error" => true,
            s @ ("planned" | "arrived" | "triaged" | "in-progress" | "onleave") => {
                return Ok(Read::Done(Outcome::Ignored(format!(
                    "Encounter status {s:?}: a consultation counts once it is finished; send it again then"
                ))));
            }
            other => {
                return Err(RecordError::new(
                    "Encounter.status",
                    "unsupported",
                    format!(
                        "{other:?} is not an Encounter status Ponte reads (finished; cancelled or entered-in-error withdraw; planned, arrived, triaged, in-progress, onleave are not yet a consultation)"
                    ),
                ));
            }
        };
        let (subject, subject_field) = self.member(res, T, "subject")?;
        let period = res.get("period");
        let (date_str, date_field) = match (
            period.and_then(|p| str_at(p, "start")),
            period.and_then(|p| str_at(p, "end")),
        ) {
            (Some(s), _) => (s, "Encounter.period.start"),
            (None, Some(e)) => (e, "Encounter.period.end"),
            (None, None) => {
                return Err(RecordError::malformed(
                    "Encounter.period",
                    "missing: the day of the consultation dates the evidence",
                ));
            }
        };
        let day = fhir_date(date_field, date_str)?;
        let (evidence_id, version, recorded_at) = self.identity(entry, res, T)?;
        self.fact(Fact {
            rtype: T,
            evidence_id,
            value: (!withdrawn).then_some(Value::Bool(true)),
            item: CONSULTATION,
            subject,
            subject_field,
            recorded_on: day,
            date_field: date_field.to_owned(),
            value_field: "Encounter.status",
            version,
            recorded_at,
        })
        .map(Read::Done)
    }

    /// Validates a fact as household evidence of the health source (the JSON layout's checks,
    /// the item's name against the rule set), naming the FHIR element at fault.
    fn fact(&self, f: Fact) -> Result<Outcome, RecordError> {
        let input = EvidenceInput {
            household_id: Some(self.household_id.to_owned()),
            evidence_id: Some(f.evidence_id),
            source: None,
            subject: Some(f.subject),
            recorded_on: Some(f.recorded_on.to_string()),
            recorded_by: Some(self.source_system.to_owned()),
            items: f
                .value
                .as_ref()
                .map(|v| BTreeMap::from([(f.item.to_owned(), v.clone())])),
            version: Some(f.version),
            recorded_at: f.recorded_at,
            retraction: f.value.is_none(),
        };
        self.evidence
            .validate(&input, self.source_system, self.now)
            .map(|v| Outcome::Record(Box::new(v)))
            .map_err(|e| {
                let field = match e.field.as_str() {
                    "household_id" => "Group.identifier".to_owned(),
                    "evidence_id" => format!("{}.id", f.rtype),
                    "subject" => f.subject_field.clone(),
                    "recorded_on" => f.date_field.clone(),
                    "recorded_at" => format!("{}.meta.lastUpdated", f.rtype),
                    "version" => format!("{}.meta.versionId", f.rtype),
                    s if s.starts_with("items") => f.value_field.to_owned(),
                    other => other.to_owned(),
                };
                RecordError::new(&field, e.error_type, e.reason)
            })
    }

    /// Pairs each patient's weight and height of one day into one
    /// `weight_and_height_recorded` record: the first weight with the first height (in entry
    /// order). The pair's record goes on the earlier entry and the other is part of it; a
    /// measurement without its pair, or beyond the first pair, is ignored with the reason.
    fn pairs(&self, measures: Vec<Measure>) -> Vec<(usize, Outcome)> {
        let mut days: BTreeMap<(String, Date), Vec<Measure>> = BTreeMap::new();
        for m in measures {
            days.entry((m.subject.clone(), m.day)).or_default().push(m);
        }
        let mut out = Vec::new();
        for ((subject, day), ms) in days {
            let weight = ms.iter().find(|m| m.kind == MeasureKind::Weight);
            let height = ms.iter().find(|m| m.kind == MeasureKind::Height);
            let (Some(w), Some(h)) = (weight, height) else {
                for m in &ms {
                    let other = match m.kind {
                        MeasureKind::Weight => MeasureKind::Height,
                        MeasureKind::Height => MeasureKind::Weight,
                    };
                    out.push((
                        m.index,
                        Outcome::Ignored(format!(
                            "a {} without a {} of the same member on {day} in this bundle: {GROWTH} needs both, sent together",
                            m.kind.name(),
                            other.name()
                        )),
                    ));
                }
                continue;
            };
            let (first, second) = if w.index < h.index { (w, h) } else { (h, w) };
            for m in &ms {
                if m.index != w.index && m.index != h.index {
                    out.push((
                        m.index,
                        Outcome::Ignored(format!(
                            "another {} of the same member on {day}: entries {} and {} record {GROWTH} for that day",
                            m.kind.name(),
                            first.index + 1,
                            second.index + 1
                        )),
                    ));
                }
            }
            let later = if w.version >= h.version { w } else { h };
            let fact = Fact {
                rtype: "Observation",
                evidence_id: pair_id(&w.key, &h.key),
                value: (!w.withdrawn && !h.withdrawn).then_some(Value::Bool(true)),
                item: GROWTH,
                subject: subject.clone(),
                subject_field: "Observation.subject".to_owned(),
                recorded_on: day,
                date_field: "Observation.effective[x]".to_owned(),
                value_field: "Observation.code",
                version: w.version.max(h.version),
                recorded_at: later.recorded_at.clone(),
            };
            let outcome = self.fact(fact).unwrap_or_else(Outcome::Rejected);
            let partner = if matches!(outcome, Outcome::Rejected(_)) {
                outcome.clone()
            } else {
                Outcome::PartOf(first.index)
            };
            out.push((first.index, outcome));
            out.push((second.index, partner));
        }
        out
    }
}

/// An evidence id (letters, digits, `-_./`, at most 64) for a resource key: the key itself when
/// it fits (`Coverage/cov-1`), else `<Type>/sha256-<first 32 hex digits>` of it — stable for the
/// same resource, distinct for different ones.
fn evidence_id(rtype: &str, key: &str) -> String {
    let fits = key.len() <= MAX_EVIDENCE_ID
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if fits {
        key.to_owned()
    } else {
        format!("{rtype}/sha256-{}", digest(key))
    }
}

/// The evidence id of a weight-and-height pair: `Observation/<weight id>/<height id>` when both
/// are plain ids and it fits, else a digest of both keys.
fn pair_id(weight: &str, height: &str) -> String {
    let plain = |k: &str| {
        k.strip_prefix("Observation/")
            .filter(|id| !id.contains('/'))
            .map(str::to_owned)
    };
    if let (Some(w), Some(h)) = (plain(weight), plain(height)) {
        let id = format!("Observation/{w}/{h}");
        if id.len() <= MAX_EVIDENCE_ID {
            return id;
        }
    }
    format!(
        "Observation/sha256-{}",
        digest(&format!("{weight}\n{height}"))
    )
}

/// The first 128 bits of the SHA-256 of `s`, in hex.
fn digest(s: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    d.as_ref()
        .iter()
        .take(16)
        .fold(String::new(), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use ponte_domain::achievements::rules::Adapter;
    use ponte_proto::events::v1::event::Record;
    use ponte_proto::events::v1::evidence_item::Value as V;
    use serde_json::json;
    use std::time::Duration;

    const HH: &str = "HH-52001-0001";
    const RDA: &str = DOCUMENT_TYPE_SYSTEMS[0];

    /// 2026-01-01T00:00:00Z.
    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600)
    }

    fn health() -> SectorEvidence {
        SectorEvidence::unidos(Adapter::Health).unwrap()
    }

    fn doc(code: &str, number: &str) -> Value {
        json!({"type": {"coding": [{"system": RDA, "code": code}]},
               "system": "https://fhir.minsalud.gov.co/rda/NamingSystem/RNEC", "value": number})
    }

    fn patient(id: &str, identifiers: Value) -> Value {
        json!({"resourceType": "Patient", "id": id, "identifier": identifiers})
    }

    fn group(members: &[&str]) -> Value {
        json!({"resourceType": "Group", "id": "hh", "type": "person", "actual": true,
               "identifier": [{"system": HOUSEHOLD_SYSTEM, "value": HH}],
               "member": members.iter().map(|m| json!({"entity": {"reference": format!("Patient/{m}")}})).collect::<Vec<_>>()})
    }

    fn coverage(id: &str, patient: &str, regime: &str) -> Value {
        json!({"resourceType": "Coverage", "id": id, "status": "active",
               "meta": {"versionId": "3", "lastUpdated": "2025-05-02T10:00:00-05:00"},
               "type": {"coding": [{"system": REGIME_SYSTEM, "code": regime}]},
               "beneficiary": {"reference": format!("Patient/{patient}")},
               "payor": [{"display": "EPS037"}]})
    }

    fn vaccination(id: &str, patient: &str, up_to_date: bool) -> Value {
        json!({"resourceType": "Observation", "id": id, "status": "final",
               "code": {"coding": [{"system": "urn:ponte:fhir:CodeSystem:health", "code": "vaccination-up-to-date"}]},
               "subject": {"reference": format!("Patient/{patient}")},
               "effectiveDateTime": "2025-04-10", "valueBoolean": up_to_date})
    }

    fn encounter(id: &str, patient: &str) -> Value {
        json!({"resourceType": "Encounter", "id": id, "status": "finished",
               "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
               "subject": {"reference": format!("Patient/{patient}")},
               "period": {"start": "2025-03-01T08:00:00-05:00", "end": "2025-03-01T08:30:00-05:00"}})
    }

    fn measure(id: &str, patient: &str, loinc: &str, value: f64, unit: &str) -> Value {
        json!({"resourceType": "Observation", "id": id, "status": "final",
               "code": {"coding": [{"system": LOINC, "code": loinc}]},
               "subject": {"reference": format!("Patient/{patient}")},
               "effectiveDateTime": "2025-05-02T09:00:00-05:00",
               "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": unit}})
    }

    /// The household of the assistance adapter's example: a mother with her cédula and a son of
    /// four with his registro civil.
    fn household(results: Vec<Value>) -> Vec<Value> {
        let mut all = vec![
            group(&["mother", "son"]),
            patient("mother", json!([doc("CC", "52123456")])),
            patient("son", json!([doc("RC", "1023456789")])),
        ];
        all.extend(results);
        all
    }

    fn bundle(resources: &[Value]) -> Vec<u8> {
        json!({"resourceType": "Bundle", "type": "collection",
               "timestamp": "2025-06-01T12:00:00-05:00",
               "entry": resources.iter().map(|r| json!({"resource": r})).collect::<Vec<_>>()})
        .to_string()
        .into_bytes()
    }

    fn parse(body: &[u8]) -> Result<HouseholdBundle, RecordError> {
        parse_household_bundle(body, &health(), &MappingConfig::default(), "health", now())
    }

    fn outcomes(resources: &[Value]) -> Vec<Outcome> {
        parse(&bundle(resources))
            .unwrap()
            .entries
            .into_iter()
            .map(|e| e.outcome)
            .collect()
    }

    fn record(o: &Outcome) -> &ValidEvidence {
        match o {
            Outcome::Record(v) => v,
            other => panic!("not a record: {other:?}"),
        }
    }

    fn rejected(o: &Outcome) -> &RecordError {
        match o {
            Outcome::Rejected(e) => e,
            other => panic!("not rejected: {other:?}"),
        }
    }

    /// (subject, recorded_on, recorded_by, the one item) of a record.
    fn said(v: &ValidEvidence) -> (String, String, String, String, Option<V>) {
        let Some(Record::HouseholdEvidence(e)) = &v.event.record else {
            panic!("{v:?}")
        };
        assert_eq!(e.items.len(), 1, "{e:?}");
        (
            e.subject.clone(),
            e.recorded_on.clone(),
            e.recorded_by.clone(),
            e.items[0].name.clone(),
            e.items[0].value.clone(),
        )
    }

    /// The worked example of docs/integration/health.md, "Household evidence as FHIR".
    #[test]
    fn the_documented_example_reads_as_documented() {
        let body = include_bytes!("../tests/data/unidos/household-bundle.json");
        let parsed = parse(body).unwrap();
        assert_eq!(parsed.household_id, HH);
        let got: Vec<(usize, String)> = parsed
            .entries
            .iter()
            .map(|e| {
                let what = match &e.outcome {
                    Outcome::Record(v) => {
                        let (subject, day, _, item, value) = said(v);
                        format!(
                            "{} v{} {subject} {day} {item}={value:?}",
                            v.event.record_id, v.event.version
                        )
                    }
                    other => format!("{other:?}"),
                };
                (e.index, what)
            })
            .collect();
        let want = [
            "Identity",
            "Identity",
            "Identity",
            "health:household-evidence:HH-52001-0001:Coverage/bdua-52123456 v2 nuip:52123456 2025-05-02 health_affiliation_regime=Some(Text(\"subsidiado\"))",
            "health:household-evidence:HH-52001-0001:Observation/pai-88120 v1748797200000 nuip:1023456789 2025-05-02 vaccination_up_to_date=Some(Flag(true))",
            "health:household-evidence:HH-52001-0001:Observation/w-5511/h-5512 v1748797200000 nuip:1023456789 2025-05-02 weight_and_height_recorded=Some(Flag(true))",
            "PartOf(5)",
            "health:household-evidence:HH-52001-0001:Encounter/rips-77 v1748797200000 nuip:1023456789 2025-05-02 consultation=Some(Flag(true))",
            "Ignored(\"Practitioner is not read as Unidos household evidence (accepted: Group, Patient, Coverage, Observation, Encounter)\")",
        ];
        assert_eq!(got.len(), want.len());
        for ((i, g), w) in got.iter().zip(want) {
            assert_eq!(g, w, "entry {i}");
        }
    }

    #[test]
    fn the_mapped_items_are_the_rule_sets() {
        let h = health();
        for item in MAPPED_ITEMS {
            assert!(h.items().contains(item), "{item} is not an item of {h:?}");
        }
    }

    #[test]
    fn each_resource_maps_to_its_item() {
        // (result, evidence id, version, subject, day, item, value)
        let cases: Vec<(Value, &str, u64, &str, &str, &str, V)> = vec![
            (
                coverage("cov-1", "mother", "subsidiado"),
                "Coverage/cov-1",
                3,
                "nuip:52123456",
                "2025-05-02",
                "health_affiliation_regime",
                V::Text("subsidiado".into()),
            ),
            (
                vaccination("vac-1", "son", false),
                "Observation/vac-1",
                1_748_797_200_000, // Bundle.timestamp: no meta
                "nuip:1023456789",
                "2025-04-10",
                "vaccination_up_to_date",
                V::Flag(false),
            ),
            (
                encounter("enc-1", "son"),
                "Encounter/enc-1",
                1_748_797_200_000,
                "nuip:1023456789",
                "2025-03-01",
                "consultation",
                V::Flag(true),
            ),
        ];
        for (resource, id, version, subject, day, item, value) in cases {
            let all = household(vec![resource.clone()]);
            let out = outcomes(&all);
            assert_eq!(
                out[..3],
                [Outcome::Identity, Outcome::Identity, Outcome::Identity]
            );
            let v = record(&out[3]);
            assert_eq!(v.key, HH, "{resource}");
            assert_eq!(
                v.event.record_id,
                format!("health:household-evidence:{HH}:{id}")
            );
            assert_eq!(
                (v.event.version, v.event.retraction),
                (version, false),
                "{id}"
            );
            assert_eq!(
                said(v),
                (
                    subject.to_owned(),
                    day.to_owned(),
                    "health".to_owned(),
                    item.to_owned(),
                    Some(value)
                ),
                "{id}"
            );
        }

        // A weight and a height of the same day: one record, on the first of the two.
        let out = outcomes(&household(vec![
            measure("w1", "son", BODY_WEIGHT, 16.2, "kg"),
            encounter("enc-1", "son"),
            measure("h1", "son", BODY_HEIGHT, 102.0, "cm"),
        ]));
        let v = record(&out[3]);
        assert_eq!(
            v.event.record_id,
            format!("health:household-evidence:{HH}:Observation/w1/h1")
        );
        assert_eq!(
            said(v),
            (
                "nuip:1023456789".to_owned(),
                "2025-05-02".to_owned(),
                "health".to_owned(),
                "weight_and_height_recorded".to_owned(),
                Some(V::Flag(true))
            )
        );
        assert_eq!(out[5], Outcome::PartOf(3));
        assert_eq!(said(record(&out[4])).3, "consultation");
    }

    #[test]
    fn errors_name_the_entry_field_and_reason() {
        let mut bad_type = coverage("cov-1", "mother", "subsidiado");
        bad_type["type"]["coding"][0]["code"] = json!("privado");
        let mut no_type = coverage("cov-1", "mother", "subsidiado");
        no_type.as_object_mut().unwrap().remove("type");
        let mut no_value = vaccination("vac-1", "son", true);
        no_value.as_object_mut().unwrap().remove("valueBoolean");
        let mut preliminary = vaccination("vac-1", "son", true);
        preliminary["status"] = json!("preliminary");
        let mut no_period = encounter("enc-1", "son");
        no_period.as_object_mut().unwrap().remove("period");
        let mut future = vaccination("vac-1", "son", true);
        future["effectiveDateTime"] = json!("2026-03-01");
        let mut logical = vaccination("vac-1", "son", true);
        logical["subject"] = json!({"identifier": {"system": "x", "value": "1023456789"}});
        let mut stranger = vaccination("vac-1", "son", true);
        stranger["subject"]["reference"] = json!("Patient/nobody");
        let mut bad_id = encounter("enc 1", "son");
        bad_id["id"] = json!("enc 1");
        // (result, field, error_type, reason contains)
        let cases: Vec<(Value, &str, &str, &str)> = vec![
            (
                bad_type,
                "Coverage.type",
                "invalid_value",
                "\"privado\" is not a regime of urn:ponte:unidos:CodeSystem:health-regime (contributivo, subsidiado, especial)",
            ),
            (
                no_type,
                "Coverage.type",
                "malformed",
                "missing: the regime is a coding of",
            ),
            (
                no_value,
                "Observation.valueBoolean",
                "malformed",
                "valueBoolean",
            ),
            (
                preliminary,
                "Observation.status",
                "unsupported",
                "only final, amended or corrected",
            ),
            (
                no_period,
                "Encounter.period",
                "malformed",
                "the day of the consultation",
            ),
            (
                future,
                "Observation.effectiveDateTime",
                "invalid_value",
                "is in the future",
            ),
            (
                logical,
                "Observation.subject",
                "malformed",
                "a logical reference (identifier) is not enough",
            ),
            (
                stranger,
                "Observation.subject",
                "unresolved_reference",
                "Patient/nobody is not a Patient of this bundle",
            ),
            (bad_id, "Encounter.id", "invalid_value", "is not a FHIR id"),
            (
                measure("w1", "son", BODY_WEIGHT, 900.0, "kg"),
                "Observation.valueQuantity",
                "invalid_value",
                "not plausible",
            ),
        ];
        for (resource, field, error_type, reason) in cases {
            // The bad result comes fifth, after a valid one: it is named by its index and the
            // valid one is kept.
            let out = outcomes(&household(vec![
                coverage("ok", "son", "subsidiado"),
                resource.clone(),
            ]));
            record(&out[3]);
            let e = rejected(&out[4]);
            assert_eq!(
                (e.field.as_str(), e.error_type),
                (field, error_type),
                "{resource}: {e:?}"
            );
            assert!(e.reason.contains(reason), "{resource}: {}", e.reason);
        }

        // A method that is not a record, and an entry that is not an object.
        let mut body: Value = serde_json::from_slice(&bundle(&household(vec![]))).unwrap();
        body["entry"]
            .as_array_mut()
            .unwrap()
            .push(json!({"request": {"method": "DELETE", "url": "Coverage/cov-1"}}));
        body["entry"].as_array_mut().unwrap().push(json!(7));
        let parsed = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.entries[3].index, 3);
        assert_eq!(
            rejected(&parsed.entries[3].outcome).field,
            "Bundle.entry.request.method"
        );
        assert_eq!(rejected(&parsed.entries[4].outcome).error_type, "malformed");
        assert_eq!(parsed.entries[4].original, b"7");
    }

    #[test]
    fn an_entry_naming_a_patient_not_in_the_group_is_refused() {
        let mut all = household(vec![
            vaccination("vac-1", "cousin", true),
            vaccination("vac-2", "son", true),
        ]);
        all.push(patient("cousin", json!([doc("RC", "1099999999")])));
        let out = outcomes(&all);
        let e = rejected(&out[3]);
        assert_eq!(
            (e.field.as_str(), e.error_type),
            ("Observation.subject", "invalid_value")
        );
        assert_eq!(
            e.reason,
            "Patient/cousin (entry 6) is not a member of the household's Group (entry 1): a bundle carries the results of one household's members"
        );
        record(&out[4]);
        // The stranger's Patient itself is ignored, with the reason.
        assert!(
            matches!(&out[5], Outcome::Ignored(r) if r.starts_with("not a member of the household's Group")),
            "{:?}",
            out[5]
        );
        // A member marked inactive in the Group is no longer a member.
        let mut g = group(&["mother", "son"]);
        g["member"][1]["inactive"] = json!(true);
        let mut all = household(vec![vaccination("vac-2", "son", true)]);
        all[0] = g;
        assert_eq!(rejected(&outcomes(&all)[3]).field, "Observation.subject");
    }

    #[test]
    fn patients_are_keyed_as_the_registry_keys_them() {
        let member = |v: &str| json!({"system": MEMBER_SYSTEM, "value": v});
        let ihce = json!({"type": {"coding": [{"system": DOCUMENT_TYPE_SYSTEMS[1], "code": "TI"}]}, "value": "1.023.456.789"});
        // (identifiers, person key or rejection reason)
        let cases: Vec<(Value, Result<&str, &str>)> = vec![
            (json!([doc("RC", "1023456789")]), Ok("nuip:1023456789")),
            (
                json!([doc("RC", "1023456789"), doc("TI", "1023456789")]),
                Ok("nuip:1023456789"),
            ),
            (json!([ihce]), Ok("nuip:1023456789")),
            (
                json!([doc("CE", "123456"), member("M3")]),
                Ok("registry:M3"),
            ),
            (
                json!([doc("PPT", "1234567"), member("M4")]),
                Ok("registry:M4"),
            ),
            (json!([member("M5")]), Ok("registry:M5")),
            (
                json!([doc("CC", "52123456"), member("M1")]),
                Ok("nuip:52123456"),
            ),
            (
                json!([doc("CE", "123456")]),
                Err("a cédula de extranjería does not key a member in the Unidos registry"),
            ),
            (
                json!([doc("PA", "AB123456")]),
                Err("document types passed over: PA"),
            ),
            (
                json!([{"system": "https://fhir.minsalud.gov.co/rda/NamingSystem/RNEC", "value": "1023456789"}]),
                Err("no registro civil, tarjeta de identidad"),
            ),
            (
                json!([doc("RC", "1023456789"), doc("CC", "52123456")]),
                Err("Registraduría documents with different numbers (RC, CC)"),
            ),
            (
                json!([doc("TI", "12AB")]),
                Err("tarjeta de identidad number contains invalid character"),
            ),
            (
                json!([doc("RC", "0123456789")]),
                Err("must not start with 0"),
            ),
        ];
        for (identifiers, expected) in cases {
            let got = person_key(&patient("p", identifiers.clone()));
            match (expected, got) {
                (Ok(k), Ok(got)) => assert_eq!(got, k, "{identifiers}"),
                (Err(why), Err(e)) => {
                    assert_eq!(e.error_type, "invalid_identifier", "{identifiers}");
                    assert!(e.reason.contains(why), "{identifiers}: {}", e.reason);
                    // Never the number in the reason (decision U14).
                    assert!(
                        !e.reason.contains("1023456789") && !e.reason.contains("52123456"),
                        "{}",
                        e.reason
                    );
                }
                (expected, got) => panic!("{identifiers}: expected {expected:?}, got {got:?}"),
            }
        }
        // A Patient with an invalid document is rejected, and so is every result about it.
        let mut all = household(vec![vaccination("vac-1", "son", true)]);
        all[2] = patient("son", json!([doc("TI", "12AB")]));
        let out = outcomes(&all);
        assert_eq!(rejected(&out[2]).field, "Patient.identifier[0].value");
        let e = rejected(&out[3]);
        assert_eq!(
            (e.field.as_str(), e.error_type),
            ("Observation.subject", "invalid_identifier")
        );
        assert!(
            e.reason
                .starts_with("Patient/son (entry 3) has no usable identifier"),
            "{}",
            e.reason
        );
    }

    #[test]
    fn a_resent_bundle_maps_to_the_same_ids_and_versions() {
        let mut by_identifier = coverage("x", "mother", "contributivo");
        by_identifier.as_object_mut().unwrap().remove("id");
        by_identifier.as_object_mut().unwrap().remove("meta");
        by_identifier["identifier"] =
            json!([{"system": "https://adres.gov.co/bdua", "value": "EPS037-52123456-2025"}]);
        let mut long_id = encounter("x", "son");
        long_id["id"] = json!("e".repeat(60));
        let all = household(vec![
            coverage("cov-1", "mother", "subsidiado"),
            by_identifier,
            long_id,
            measure("w1", "son", BODY_WEIGHT, 16.2, "kg"),
            measure("h1", "son", BODY_HEIGHT, 102.0, "cm"),
        ]);
        let first = parse(&bundle(&all)).unwrap();
        let again = parse(&bundle(&all)).unwrap();
        let ids = |b: &HouseholdBundle| -> Vec<(String, u64)> {
            b.entries
                .iter()
                .filter_map(|e| match &e.outcome {
                    Outcome::Record(v) => Some((v.event.record_id.clone(), v.event.version)),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(ids(&first), ids(&again));
        assert_eq!(ids(&first).len(), 4);
        let hashed = &ids(&first)[1].0;
        let tail = hashed
            .strip_prefix(&format!("health:household-evidence:{HH}:"))
            .unwrap();
        assert!(
            tail.starts_with("Coverage/sha256-") && tail.len() <= MAX_EVIDENCE_ID,
            "{tail}"
        );
        assert!(
            ids(&first)[2].0.contains("Encounter/sha256-"),
            "{:?}",
            ids(&first)
        );
        // A later answer (another timestamp) is a later version of the same records without
        // meta; a resource with meta keeps its own.
        let mut later: Value = serde_json::from_slice(&bundle(&all)).unwrap();
        later["timestamp"] = json!("2025-07-01T12:00:00-05:00");
        let later = parse(later.to_string().as_bytes()).unwrap();
        let (a, b) = (ids(&first), ids(&later));
        assert_eq!(a[0], b[0]);
        for i in 1..4 {
            assert_eq!(a[i].0, b[i].0);
            assert!(b[i].1 > a[i].1, "{:?} {:?}", a[i], b[i]);
        }
    }

    #[test]
    fn entered_in_error_withdraws_the_record() {
        // Versions kept one way (meta.versionId) for every resource, as the sender must.
        let v1 = |mut r: Value| {
            r["meta"] = json!({"versionId": "1"});
            r
        };
        let mut cov = coverage("cov-1", "mother", "subsidiado");
        let mut vac = v1(vaccination("vac-1", "son", true));
        let mut enc = v1(encounter("enc-1", "son"));
        let mut w = v1(measure("w1", "son", BODY_WEIGHT, 16.2, "kg"));
        let h = v1(measure("h1", "son", BODY_HEIGHT, 102.0, "cm"));
        let recorded = outcomes(&household(vec![
            cov.clone(),
            vac.clone(),
            enc.clone(),
            w.clone(),
            h.clone(),
        ]));
        cov["status"] = json!("entered-in-error");
        cov["meta"]["versionId"] = json!("4");
        vac["status"] = json!("entered-in-error");
        vac["meta"] = json!({"versionId": "2"});
        enc["status"] = json!("entered-in-error");
        enc["meta"] = json!({"versionId": "2"});
        w["status"] = json!("entered-in-error");
        w["meta"] = json!({"versionId": "2"});
        let withdrawn = outcomes(&household(vec![cov.clone(), vac, enc, w, h]));
        for i in 3..7 {
            let (was, now) = (record(&recorded[i]), record(&withdrawn[i]));
            assert_eq!(was.event.record_id, now.event.record_id);
            assert!(now.event.retraction && !was.event.retraction, "{now:?}");
            assert!(now.event.version > was.event.version, "{was:?} {now:?}");
        }
        assert_eq!(record(&withdrawn[3]).event.version, 4);
        assert_eq!(record(&withdrawn[6]).event.version, 2);
        // A cancelled coverage withdraws its record too; it never reads as "none".
        cov["status"] = json!("cancelled");
        let out = outcomes(&household(vec![cov]));
        let v = record(&out[3]);
        assert!(v.event.retraction);
        let Some(Record::HouseholdEvidence(e)) = &v.event.record else {
            panic!()
        };
        assert!(e.items.is_empty(), "{e:?}");
    }

    #[test]
    fn what_is_not_evidence_is_ignored_with_the_reason() {
        let mut draft = coverage("cov-1", "mother", "subsidiado");
        draft["status"] = json!("draft");
        let mut ongoing = encounter("enc-1", "son");
        ongoing["status"] = json!("in-progress");
        let other_code = measure("bmi", "son", "39156-5", 15.4, "kg/m2");
        let cases: Vec<(Value, &str)> = vec![
            (
                json!({"resourceType": "Immunization", "id": "i1", "status": "completed"}),
                "vaccination-status Observation",
            ),
            (
                json!({"resourceType": "Practitioner", "id": "pr1"}),
                "Practitioner is not read as Unidos household evidence",
            ),
            (other_code, "Observation code is not one read"),
            (ongoing, "counts once it is finished"),
            (draft, "not in force"),
            (
                measure("w1", "son", BODY_WEIGHT, 16.2, "kg"),
                "a weight without a height of the same member on 2025-05-02",
            ),
        ];
        for (resource, why) in cases {
            let out = outcomes(&household(vec![resource.clone()]));
            assert!(
                matches!(&out[3], Outcome::Ignored(r) if r.contains(why)),
                "{resource}: {:?}",
                out[3]
            );
        }
        // A height of another day does not pair with the weight.
        let mut h = measure("h1", "son", BODY_HEIGHT, 102.0, "cm");
        h["effectiveDateTime"] = json!("2025-05-03");
        let out = outcomes(&household(vec![
            measure("w1", "son", BODY_WEIGHT, 16.2, "kg"),
            h,
        ]));
        assert!(
            matches!(
                (&out[3], &out[4]),
                (Outcome::Ignored(_), Outcome::Ignored(_))
            ),
            "{out:?}"
        );
    }

    #[test]
    fn the_household_is_the_one_group() {
        let no_group: Vec<Value> = household(vec![]).into_iter().skip(1).collect();
        let mut other_system = group(&["son"]);
        other_system["identifier"][0]["system"] = json!("urn:other");
        let mut bad_id = group(&["son"]);
        bad_id["identifier"][0]["value"] = json!("HH 52001");
        // (bundle, field, reason contains)
        let cases: Vec<(Vec<Value>, &str, &str)> = vec![
            (no_group, "Bundle.entry", "no Group"),
            (
                vec![group(&["son"]), group(&["mother"])],
                "Bundle.entry",
                "2 Groups (entries 1, 2)",
            ),
            (
                vec![other_system],
                "Bundle.entry[0].resource.identifier",
                "no identifier with system urn:ponte:unidos:household",
            ),
            (
                vec![bad_id],
                "Bundle.entry[0].resource.identifier",
                "household id: \"HH 52001\" is not a key",
            ),
        ];
        for (resources, field, why) in cases {
            let e = parse(&bundle(&resources)).unwrap_err();
            assert_eq!(e.field, field, "{e:?}");
            assert!(e.reason.contains(why), "{}", e.reason);
        }
        let mut doc_bundle: Value = serde_json::from_slice(&bundle(&household(vec![]))).unwrap();
        doc_bundle["type"] = json!("document");
        assert_eq!(
            parse(doc_bundle.to_string().as_bytes()).unwrap_err().field,
            "Bundle.type"
        );
        assert_eq!(parse(b"{nope").unwrap_err().field, "Bundle");
        assert_eq!(
            parse(br#"{"resourceType": "Patient"}"#)
                .unwrap_err()
                .error_type,
            "unsupported"
        );
        // Transactions and batches are read alike, their entries POST or PUT.
        for kind in ["batch", "transaction"] {
            let mut b: Value = serde_json::from_slice(&bundle(&household(vec![coverage(
                "cov-1", "mother", "especial",
            )])))
            .unwrap();
            b["type"] = json!(kind);
            b["entry"][3]["request"] = json!({"method": "PUT", "url": "Coverage/cov-1"});
            let parsed = parse(b.to_string().as_bytes()).unwrap();
            assert_eq!(parsed.household_id, HH);
            record(&parsed.entries[3].outcome);
        }
    }
}
