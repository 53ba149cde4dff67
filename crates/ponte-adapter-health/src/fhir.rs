//! FHIR R4 `Bundle` → health follow-up records. Pure: bytes, configuration and the current time
//! in, one outcome per bundle entry out; no I/O, so the fuzz target drives it directly.
//!
//! One clinical resource is one record (`<source>:<Type>/<id>`, versioned by `meta.versionId`
//! or `meta.lastUpdated`), keyed by the CNS, CPF or NIS of its patient; the reconciler combines
//! a person's records of a semester. What is read:
//! - `Patient`: identity only (identifiers in the configured systems); produces no record.
//! - `Immunization`: a health contact on `occurrenceDateTime`, its vaccine kept as evidence.
//! - `Observation`: body weight (LOINC 29463-7), body height (8302-2, or 8306-3 lying), the
//!   health team's "vaccination up to date" flag (configured code, `valueBoolean`), pregnancy
//!   status (LOINC 82810-3) and last menstrual period (LOINC 8665-2).
//! - `Encounter`: a prenatal care consultation when a configured prenatal code is in its
//!   `type`, `serviceType` or `reasonCode`.
//!
//! Other resources, and observations or encounters with other codes, are ignored (listed in the
//! answer, not dead-lettered): they are not errors, just not Ponte's business. This module never
//! resolves a CNS or CPF to a NIS and never corrects a value.
//!
//! Documents (`Bundle.type` `document`, as RNDS sends its "Registro de Imunobiológico
//! Administrado") are read through the same paths. FHIR makes the first entry the `Composition`
//! (bdl-11); its `subject` says whom the document is about, so an entry its sections list that
//! names no patient of its own takes that subject, and one that names a different patient is
//! rejected rather than guessed at. Entries the sections do not list are read as in a
//! collection: with their own patient or not at all. An entry without `id` or business
//! identifier (RNDS forbids `Immunization.identifier` and reuses `urn:uuid:transient-N` full
//! URLs in every document) is known by the document's `Bundle.identifier` plus its `fullUrl`,
//! and versioned by `Bundle.timestamp` when it has no `meta`, so a re-sent document is a no-op
//! and two documents never collide on one record.
use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use ponte_domain::period::{Date, Semester};
use ponte_proto::events::v1::{Event, HealthFollowUp, event::Record};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::record::{
    IdentifierKind, MappingConfig, RecordError, Subject, ValidRecord, date_time, grams,
    millimetres, millis, not_future, parse_instant,
};

const LOINC: &str = "http://loinc.org";
const SNOMED: &str = "http://snomed.info/sct";
const UCUM: &str = "http://unitsofmeasure.org";
const BR_IMUNOBIOLOGICO: &str = "http://www.saude.gov.br/fhir/r4/CodeSystem/BRImunobiologico";

/// Where a bundle comes from: pushed bundles are `batch`, `transaction`, `collection` or
/// `document`; pull mode reads `searchset` pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleSource {
    Push,
    Search,
}

/// What became of one bundle entry.
#[derive(Debug, Clone, PartialEq)]
pub enum EntryOutcome {
    /// A clinical resource mapped to a record.
    Record(Box<ValidRecord>),
    /// A `Patient` that gives identity to the bundle's clinical resources, or a document's
    /// `Composition` whose subject its listed entries take.
    Identity(Subject),
    /// Not used by Ponte (another resource type, another observation code); the reason says
    /// which.
    Ignored(String),
    /// Invalid: answered, counted and dead-lettered.
    Rejected(RecordError),
}

/// One bundle entry and its outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryResult {
    /// 0-based index in `Bundle.entry` (FHIRPath `Bundle.entry[index]`).
    pub index: usize,
    /// `Type/id` of the resource, or what stands for it.
    pub label: String,
    /// `meta.lastUpdated` of the resource, when given (pull mode's watermark).
    pub last_updated: Option<String>,
    /// True for `search.mode = include` entries of a search page.
    pub included: bool,
    pub outcome: EntryOutcome,
    /// The entry's bytes as received.
    pub original: Vec<u8>,
}

/// A parsed bundle.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedBundle {
    /// `Bundle.type`.
    pub bundle_type: String,
    pub entries: Vec<EntryResult>,
    /// `Bundle.link` with relation `next`, if any (search pages).
    pub next: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct RawBundle<'a> {
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default, borrow)]
    entry: Option<Vec<&'a RawValue>>,
    #[serde(default)]
    link: Option<Vec<Value>>,
    /// A document's identity (FHIR bdl-9).
    #[serde(default)]
    identifier: Option<Value>,
    /// When a document was assembled (FHIR bdl-10).
    #[serde(default)]
    pub(crate) timestamp: Option<Value>,
}

pub(crate) fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

pub(crate) fn array_at<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Every (system, code) of a CodeableConcept.
pub(crate) fn codings(cc: &Value) -> impl Iterator<Item = (&str, &str)> {
    array_at(cc, "coding")
        .iter()
        .filter_map(|c| Some((str_at(c, "system").unwrap_or(""), str_at(c, "code")?)))
}

pub(crate) fn has_code(cc: &Value, system: &str, code: &str) -> bool {
    codings(cc).any(|(s, c)| s == system && c == code)
}

/// A bundle's entries, each with its own bytes and its parse (an entry that is not JSON is
/// answered by position, not for the whole bundle).
pub(crate) type Entries<'a> = Vec<(&'a RawValue, Result<Value, String>)>;

/// Reads a body as a FHIR `Bundle` of one of the `accepted` types and parses each entry once.
/// `Err` for the whole body: not JSON, not a Bundle (`hint` says what to send instead), or
/// another type (refused `here`, e.g. "for household evidence").
pub(crate) fn open_bundle<'a>(
    body: &'a [u8],
    accepted: &[&str],
    hint: &str,
    here: &str,
) -> Result<(RawBundle<'a>, Entries<'a>), RecordError> {
    let mut raw: RawBundle<'_> = serde_json::from_slice(body).map_err(|e| {
        RecordError::malformed("Bundle", format!("body is not a FHIR JSON resource: {e}"))
    })?;
    match raw.resource_type.as_deref() {
        Some("Bundle") => {}
        Some(other) => {
            return Err(RecordError::new(
                "Bundle.resourceType",
                "unsupported",
                format!("expected a Bundle, got {other}; {hint}"),
            ));
        }
        None => return Err(RecordError::malformed("Bundle.resourceType", "missing")),
    }
    let bundle_type = raw.kind.as_deref().unwrap_or_default();
    if !accepted.contains(&bundle_type) {
        return Err(RecordError::new(
            "Bundle.type",
            "unsupported",
            format!(
                "{bundle_type:?} is not accepted {here} (accepted: {})",
                accepted.join(", ")
            ),
        ));
    }
    let entries = raw
        .entry
        .take()
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            (
                r,
                serde_json::from_str::<Value>(r.get()).map_err(|e| e.to_string()),
            )
        })
        .collect();
    Ok((raw, entries))
}

/// Parses a bundle. `Err` means the body as a whole is unusable (not JSON, not a Bundle, wrong
/// bundle type); otherwise every entry has an outcome.
pub fn parse_bundle(
    body: &[u8],
    cfg: &MappingConfig,
    source_system: &str,
    source: BundleSource,
    now: SystemTime,
) -> Result<ParsedBundle, RecordError> {
    let allowed: &[&str] = match source {
        BundleSource::Push => &["batch", "transaction", "collection", "document"],
        BundleSource::Search => &["searchset"],
    };
    let (raw, entries) = open_bundle(
        body,
        allowed,
        "wrap resources in a batch, transaction or collection Bundle",
        "here",
    )?;
    let bundle_type = raw.kind.unwrap_or_default();
    let next = raw.link.unwrap_or_default().iter().find_map(|l| {
        (str_at(l, "relation") == Some("next"))
            .then(|| str_at(l, "url").map(str::to_owned))
            .flatten()
    });

    // Every entry parsed once (`open_bundle`); patients first so clinical resources can refer
    // to any of them.
    let mut patients: HashMap<String, (usize, Result<Subject, String>)> = HashMap::new();
    let mut identities: HashMap<usize, Result<Subject, RecordError>> = HashMap::new();
    for (i, (_, entry)) in entries.iter().enumerate() {
        let Ok(entry) = entry else { continue };
        let Some(res) = entry.get("resource") else {
            continue;
        };
        if str_at(res, "resourceType") != Some("Patient") {
            continue;
        }
        let identity = patient_identity(res, cfg);
        let short = identity.as_ref().map_err(|e| e.reason.clone()).cloned();
        if let Some(full) = str_at(entry, "fullUrl") {
            patients.insert(full.to_owned(), (i, short.clone()));
            if let Some(tail) = type_and_id(full) {
                patients.entry(tail).or_insert((i, short.clone()));
            }
        }
        if let Some(id) = str_at(res, "id") {
            patients.insert(format!("Patient/{id}"), (i, short));
        }
        identities.insert(i, identity);
    }

    let plain = Ctx {
        cfg,
        source_system,
        now,
        patients: &patients,
        document: None,
    };
    let (document, mut composition_outcome) = if bundle_type == "document" {
        let (d, o) = read_document(
            &entries,
            raw.identifier.as_ref(),
            raw.timestamp.as_ref(),
            &plain,
        )?;
        (Some(d), Some(o))
    } else {
        (None, None)
    };
    let ctx = Ctx {
        document: document.as_ref(),
        ..plain
    };
    let results = entries
        .iter()
        .enumerate()
        .map(|(index, (raw, entry))| {
            let original = raw.get().as_bytes().to_vec();
            let entry = match entry {
                Ok(e) if e.is_object() => e,
                Ok(_) => {
                    return EntryResult {
                        index,
                        label: format!("entry {}", index + 1),
                        last_updated: None,
                        included: false,
                        outcome: EntryOutcome::Rejected(RecordError::malformed(
                            "Bundle.entry",
                            "an entry must be a JSON object",
                        )),
                        original,
                    };
                }
                Err(e) => {
                    return EntryResult {
                        index,
                        label: format!("entry {}", index + 1),
                        last_updated: None,
                        included: false,
                        outcome: EntryOutcome::Rejected(RecordError::malformed("Bundle.entry", e)),
                        original,
                    };
                }
            };
            let res = entry.get("resource");
            let rtype = res.and_then(|r| str_at(r, "resourceType")).unwrap_or("");
            let label = match res.and_then(|r| str_at(r, "id")) {
                Some(id) => format!("{rtype}/{id}"),
                None => str_at(entry, "fullUrl")
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("entry {}", index + 1)),
            };
            let last_updated = res
                .and_then(|r| r.get("meta"))
                .and_then(|m| str_at(m, "lastUpdated"))
                .map(str::to_owned);
            let included = entry
                .get("search")
                .and_then(|s| str_at(s, "mode"))
                .is_some_and(|m| m == "include");
            let outcome = match identities.remove(&index) {
                Some(Ok(subject)) => EntryOutcome::Identity(subject),
                Some(Err(e)) => EntryOutcome::Rejected(e),
                None => match composition_outcome.take_if(|_| index == 0) {
                    Some(o) => o,
                    None => ctx.entry(index, entry),
                },
            };
            EntryResult {
                index,
                label,
                last_updated,
                included,
                outcome,
                original,
            }
        })
        .collect();
    Ok(ParsedBundle {
        bundle_type,
        entries: results,
        next,
    })
}

/// `Type/id` from a reference or full URL (`Patient/1`, `http://x/fhir/Patient/1/_history/2`).
pub(crate) fn type_and_id(reference: &str) -> Option<String> {
    let r = match reference.find("/_history/") {
        Some(i) => &reference[..i],
        None => reference,
    };
    let mut parts = r.rsplit('/');
    let id = parts.next()?;
    let rtype = parts.next()?;
    (!id.is_empty() && rtype.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
        .then(|| format!("{rtype}/{id}"))
}

/// What a document bundle contributes beyond its entries: its Composition's subject, which
/// entries its sections list, and its own identity and time.
pub(crate) struct Document {
    /// `Bundle.identifier` as `system|value`, when both are given.
    identifier: Option<String>,
    /// `Bundle.timestamp`.
    timestamp: Option<SystemTime>,
    /// The Composition's subject, or why it cannot be used.
    subject: Result<Subject, String>,
    /// Indices of the entries the Composition's sections list.
    listed: HashSet<usize>,
}

type RawEntries<'a> = [(&'a RawValue, Result<Value, String>)];

/// Reads a document's Composition (its first entry) and resolves its sections' references.
/// `Err` when there is no Composition first: FHIR makes that the document (bdl-11), and without
/// it nothing says whom the entries are about or which belong together. Otherwise the
/// Composition's own outcome: the identity it gives, or why it is rejected (its subject is
/// unusable, or a section lists a resource the document does not carry).
fn read_document(
    entries: &RawEntries<'_>,
    identifier: Option<&Value>,
    timestamp: Option<&Value>,
    ctx: &Ctx<'_>,
) -> Result<(Document, EntryOutcome), RecordError> {
    let first = entries.first().and_then(|(_, e)| e.as_ref().ok());
    let first_res = first.and_then(|e| e.get("resource"));
    let Some(composition) = first_res.filter(|r| str_at(r, "resourceType") == Some("Composition"))
    else {
        let found = match (
            entries.is_empty(),
            first_res.and_then(|r| str_at(r, "resourceType")),
        ) {
            (true, _) => "here it has no entries".to_owned(),
            (false, Some(t)) => format!("here the first entry is {t}"),
            (false, None) => "here the first entry carries no resource".to_owned(),
        };
        return Err(RecordError::malformed(
            "Bundle.entry[0]",
            format!(
                "a document must start with its Composition, which says whom the document is about and lists its content (FHIR bdl-11); {found}"
            ),
        ));
    };
    let timestamp = match timestamp {
        None | Some(Value::Null) => None,
        Some(t) => Some(t.as_str().and_then(parse_instant).ok_or_else(|| {
            RecordError::new(
                "Bundle.timestamp",
                "invalid_value",
                format!("{t} is not a FHIR instant"),
            )
        })?),
    };
    let identifier = identifier.and_then(|i| match (str_at(i, "system"), str_at(i, "value")) {
        (Some(s), Some(v)) if !s.is_empty() && !v.is_empty() => Some(format!("{s}|{v}")),
        _ => None,
    });

    // Every entry by what a reference to it may say: its fullUrl, or Type/id.
    let mut by_ref: HashMap<String, usize> = HashMap::new();
    for (i, (_, e)) in entries.iter().enumerate() {
        let Ok(e) = e else { continue };
        if let Some(full) = str_at(e, "fullUrl") {
            by_ref.entry(full.to_owned()).or_insert(i);
            if let Some(tail) = type_and_id(full) {
                by_ref.entry(tail).or_insert(i);
            }
        }
        if let Some(res) = e.get("resource")
            && let (Some(t), Some(id)) = (str_at(res, "resourceType"), str_at(res, "id"))
        {
            by_ref.entry(format!("{t}/{id}")).or_insert(i);
        }
    }
    let mut refs = Vec::new();
    section_refs(composition, "Composition", &mut refs);
    let mut listed = HashSet::new();
    let mut unresolved: Vec<(String, String)> = Vec::new();
    for (path, reference) in refs {
        let found = reference.and_then(|r| {
            by_ref
                .get(r)
                .or_else(|| type_and_id(r).and_then(|k| by_ref.get(&k)))
        });
        match found {
            Some(&i) => {
                listed.insert(i);
            }
            None => unresolved.push((
                path,
                reference.map_or_else(|| "(no reference)".to_owned(), str::to_owned),
            )),
        }
    }
    // The Composition gives identity as a Patient entry does: whom its listed entries are about.
    let subject = ctx.subject(composition, "subject");
    let outcome = match (&subject, unresolved.first()) {
        (Err(e), _) => EntryOutcome::Rejected(e.clone()),
        (Ok(_), Some((path, _))) => {
            let all: Vec<&str> = unresolved.iter().map(|(_, r)| r.as_str()).collect();
            EntryOutcome::Rejected(RecordError::new(
                path,
                "unresolved_reference",
                format!(
                    "{} listed in the sections but not an entry of this document: a document carries every resource its sections list, referred to by the entry's fullUrl or Type/id (the entries it does carry are still read)",
                    all.join(", ")
                ),
            ))
        }
        (Ok(s), None) => EntryOutcome::Identity(s.clone()),
    };
    let document = Document {
        identifier,
        timestamp,
        subject: subject.map_err(|e| format!("{}: {}", e.field, e.reason)),
        listed,
    };
    Ok((document, outcome))
}

/// Every `entry` reference of a Composition's sections, nested sections included, with the
/// FHIRPath of the section entry (`Composition.section[0].entry[1]`).
fn section_refs<'a>(node: &'a Value, path: &str, out: &mut Vec<(String, Option<&'a str>)>) {
    for (i, section) in array_at(node, "section").iter().enumerate() {
        let here = format!("{path}.section[{i}]");
        for (j, e) in array_at(section, "entry").iter().enumerate() {
            out.push((format!("{here}.entry[{j}]"), str_at(e, "reference")));
        }
        section_refs(section, &here, out);
    }
}

/// `CNS …2018`: the kind and the last four digits, enough to tell two identifiers apart in an
/// answer without repeating them whole.
fn describe(s: &Subject) -> String {
    let key = s.key();
    let tail = key.get(key.len().saturating_sub(4)..).unwrap_or(key);
    format!("{} …{tail}", s.kind().to_uppercase())
}

/// The identity a `Patient` gives: its best identifier in a configured system (CNS, then CPF,
/// then NIS). Any identifier in a configured system that fails validation rejects the patient:
/// an identifier is never silently passed over.
fn patient_identity(res: &Value, cfg: &MappingConfig) -> Result<Subject, RecordError> {
    let mut found: Vec<Subject> = Vec::new();
    let mut systems_seen: Vec<String> = Vec::new();
    for (i, ident) in array_at(res, "identifier").iter().enumerate() {
        let field = format!("Patient.identifier[{i}]");
        match classify(ident, cfg) {
            Classified::Subject(s) => found.push(s),
            Classified::Invalid(reason) => {
                return Err(RecordError::new(&field, "invalid_identifier", reason));
            }
            Classified::Other(system) => systems_seen.push(system),
        }
    }
    found.sort_by_key(Subject::rank);
    found.into_iter().next().ok_or_else(|| {
        RecordError::new(
            "Patient.identifier",
            "invalid_identifier",
            if systems_seen.is_empty() {
                "no identifier: a CNS, CPF or NIS is needed".to_owned()
            } else {
                format!(
                    "no CNS, CPF or NIS in a configured identifier system (found systems: {})",
                    systems_seen.join(", ")
                )
            },
        )
    })
}

enum Classified {
    Subject(Subject),
    Invalid(String),
    /// Not a configured system (the system, or `(none)`).
    Other(String),
}

fn classify(ident: &Value, cfg: &MappingConfig) -> Classified {
    let system = str_at(ident, "system").unwrap_or("");
    let value = str_at(ident, "value").unwrap_or("");
    let kind = if let Some(k) = cfg.kind_of(system) {
        k
    } else if cfg.is_typed(system) {
        let ty = ident.get("type");
        let code = ty.and_then(|t| codings(t).map(|(_, c)| c).next());
        match code {
            Some("HC") => IdentifierKind::Cns,
            Some("TAX") => IdentifierKind::Cpf,
            Some("SS") => IdentifierKind::Nis,
            // Another document (RG, passport…): not one Ponte can use.
            Some(_) => return Classified::Other(format!("{system} (type {})", code.unwrap_or(""))),
            None => match value.chars().filter(char::is_ascii_digit).count() {
                15 => IdentifierKind::Cns,
                11 => IdentifierKind::Cpf,
                n => {
                    return Classified::Invalid(format!(
                        "{system}: without Identifier.type, a value must have 15 digits (CNS) or 11 (CPF), got {n}"
                    ));
                }
            },
        }
    } else {
        return Classified::Other(if system.is_empty() {
            "(none)".to_owned()
        } else {
            system.to_owned()
        });
    };
    match Subject::parse(kind, value) {
        Ok(s) => Classified::Subject(s),
        Err(e) => Classified::Invalid(format!("{system}: {e}")),
    }
}

struct Ctx<'a> {
    cfg: &'a MappingConfig,
    source_system: &'a str,
    now: SystemTime,
    patients: &'a HashMap<String, (usize, Result<Subject, String>)>,
    /// Set when the bundle is a document.
    document: Option<&'a Document>,
}

/// What a clinical resource says, before the common envelope is built.
#[derive(Default)]
struct Facts {
    follow: HealthFollowUp,
}

impl Ctx<'_> {
    fn entry(&self, index: usize, entry: &Value) -> EntryOutcome {
        if let Some(method) = entry.get("request").and_then(|r| str_at(r, "method"))
            && let Some(reason) = refused_method(method)
        {
            return EntryOutcome::Rejected(RecordError::new(
                "Bundle.entry.request.method",
                "unsupported",
                reason,
            ));
        }
        let Some(res) = entry.get("resource").filter(|r| r.is_object()) else {
            return EntryOutcome::Rejected(RecordError::malformed(
                "Bundle.entry.resource",
                "missing: every entry must carry a resource",
            ));
        };
        let rtype = str_at(res, "resourceType").unwrap_or("");
        let mapped = match rtype {
            "Immunization" => self.immunization(res),
            "Observation" => self.observation(res),
            "Encounter" => self.encounter(res),
            "" => Err(RecordError::malformed("resource.resourceType", "missing")),
            other => {
                return EntryOutcome::Ignored(format!(
                    "{other} is not used by Ponte (accepted: Patient, Immunization, Observation, Encounter)"
                ));
            }
        };
        match mapped {
            Ok(Some((facts, retraction, subject_field, date, date_field))) => {
                match self.finish(
                    index,
                    entry,
                    res,
                    rtype,
                    facts,
                    retraction,
                    &subject_field,
                    date,
                    &date_field,
                ) {
                    Ok(r) => EntryOutcome::Record(Box::new(r)),
                    Err(e) => EntryOutcome::Rejected(e),
                }
            }
            Ok(None) => EntryOutcome::Ignored(ignored_reason(rtype)),
            Err(e) => EntryOutcome::Rejected(e),
        }
    }

    /// The subject of a clinical resource: a reference to a patient of the bundle, or a logical
    /// reference carrying the identifier itself.
    fn subject(&self, res: &Value, key: &str) -> Result<Subject, RecordError> {
        let rtype = str_at(res, "resourceType").unwrap_or("");
        let field = format!("{rtype}.{key}");
        let Some(r) = res.get(key).filter(|r| r.is_object()) else {
            return Err(RecordError::malformed(
                &field,
                "missing: the patient is needed",
            ));
        };
        if r.get("identifier").is_none()
            && r.get("reference").is_none()
            && array_at(r, "extension")
                .iter()
                .any(|e| str_at(e, "url").is_some_and(|u| u.contains("BRIndividuoNaoIdentificado")))
        {
            return Err(RecordError::new(
                &field,
                "invalid_identifier",
                "the person is recorded as unidentified (BRIndividuoNaoIdentificado): Ponte keeps a record only under a CNS, CPF or NIS",
            ));
        }
        if let Some(ident) = r.get("identifier") {
            return match classify(ident, self.cfg) {
                Classified::Subject(s) => Ok(s),
                Classified::Invalid(reason) => {
                    Err(RecordError::new(&field, "invalid_identifier", reason))
                }
                Classified::Other(system) => Err(RecordError::new(
                    &field,
                    "invalid_identifier",
                    format!(
                        "identifier system {system} is not a configured CNS, CPF or NIS system"
                    ),
                )),
            };
        }
        let Some(reference) = str_at(r, "reference") else {
            return Err(RecordError::malformed(
                &field,
                "neither reference nor identifier given",
            ));
        };
        let found = self
            .patients
            .get(reference)
            .or_else(|| type_and_id(reference).and_then(|k| self.patients.get(&k)));
        match found {
            Some((_, Ok(s))) => Ok(s.clone()),
            Some((i, Err(reason))) => Err(RecordError::new(
                &field,
                "invalid_identifier",
                format!(
                    "{reference} (entry {}) has no usable identifier: {reason}",
                    i + 1
                ),
            )),
            None => Err(RecordError::new(
                &field,
                "unresolved_reference",
                format!(
                    "{reference} is not in the bundle and the reference carries no identifier; include the Patient or use a logical reference with its CNS or CPF"
                ),
            )),
        }
    }

    fn immunization(&self, res: &Value) -> Mapped {
        let status = str_at(res, "status").unwrap_or("");
        let retraction = match status {
            "completed" => false,
            // No dose given, or a mistake: either way the record is withdrawn.
            "not-done" | "entered-in-error" => true,
            other => {
                return Err(RecordError::new(
                    "Immunization.status",
                    "invalid_value",
                    format!(
                        "{other:?} is not an Immunization status (completed, not-done, entered-in-error)"
                    ),
                ));
            }
        };
        let date_str = match (
            str_at(res, "occurrenceDateTime"),
            str_at(res, "occurrenceString"),
        ) {
            (Some(d), _) => d,
            // FHIR allows a free-text occurrence ("last spring"); it names no day.
            (None, Some(text)) => {
                return Err(RecordError::new(
                    "Immunization.occurrenceString",
                    "invalid_period",
                    format!(
                        "the occurrence is given only as a string ({text:?}) without a date: send occurrenceDateTime, the date the dose was given, which places the record in a semester"
                    ),
                ));
            }
            (None, None) => {
                return Err(RecordError::malformed(
                    "Immunization.occurrenceDateTime",
                    "missing: the date the dose was given places the record in a semester",
                ));
            }
        };
        let date = fhir_date("Immunization.occurrenceDateTime", date_str)?;
        let mut facts = Facts::default();
        let subpotent = res.get("isSubpotent").and_then(Value::as_bool) == Some(true);
        if !retraction && !subpotent {
            let code = res
                .get("vaccineCode")
                .and_then(|cc| {
                    let all: Vec<(&str, &str)> = codings(cc).collect();
                    all.iter()
                        .find(|(s, _)| *s == BR_IMUNOBIOLOGICO)
                        .map(|(_, c)| (*c).to_owned())
                        .or_else(|| all.first().map(|(s, c)| format!("{s}|{c}")))
                })
                .ok_or_else(|| {
                    RecordError::malformed(
                        "Immunization.vaccineCode",
                        "missing: no coding with a code",
                    )
                })?;
            facts.follow.vaccines.push(code);
        }
        Ok(Some((
            facts,
            retraction,
            "patient".to_owned(),
            date,
            "Immunization.occurrenceDateTime".to_owned(),
        )))
    }

    fn observation(&self, res: &Value) -> Mapped {
        let code = res.get("code").cloned().unwrap_or(Value::Null);
        let kind = if has_code(&code, LOINC, "29463-7") {
            ObsKind::Weight
        } else if has_code(&code, LOINC, "8302-2") || has_code(&code, LOINC, "8306-3") {
            ObsKind::Height
        } else if has_code(&code, LOINC, "82810-3") {
            ObsKind::Pregnancy
        } else if has_code(&code, LOINC, "8665-2") {
            ObsKind::LastMenstruation
        } else if codings(&code).any(|(s, c)| self.cfg.is_vaccination_status(s, c)) {
            ObsKind::VaccinationStatus
        } else {
            return Ok(None);
        };
        let retraction = observation_withdrawn(res)?;
        let (date, date_field) = observation_date(
            res,
            "missing: the date of the measurement places the record in a semester",
        )?;
        let mut facts = Facts::default();
        if !retraction {
            let f = &mut facts.follow;
            match kind {
                ObsKind::Weight => {
                    let (v, unit) = quantity(res)?;
                    f.weight_grams = Some(grams("Observation.valueQuantity", v, &unit)?);
                }
                ObsKind::Height => {
                    let (v, unit) = quantity(res)?;
                    f.height_mm = Some(millimetres("Observation.valueQuantity", v, &unit)?);
                }
                ObsKind::VaccinationStatus => {
                    let b = res
                        .get("valueBoolean")
                        .and_then(Value::as_bool)
                        .ok_or_else(|| {
                            RecordError::malformed(
                                "Observation.valueBoolean",
                                "missing: the vaccination status is a valueBoolean",
                            )
                        })?;
                    f.vaccination_up_to_date = Some(b);
                }
                ObsKind::Pregnancy => {
                    let v = res
                        .get("valueCodeableConcept")
                        .cloned()
                        .unwrap_or(Value::Null);
                    if has_code(&v, SNOMED, "77386006") {
                        f.pregnant = true;
                    } else if has_code(&v, SNOMED, "60001007") {
                        f.pregnant = false;
                    } else {
                        return Err(RecordError::new(
                            "Observation.valueCodeableConcept",
                            "invalid_value",
                            "pregnancy status must be SNOMED CT 77386006 (pregnant) or 60001007 (not pregnant)",
                        ));
                    }
                }
                ObsKind::LastMenstruation => {
                    let s = str_at(res, "valueDateTime").ok_or_else(|| {
                        RecordError::malformed(
                            "Observation.valueDateTime",
                            "missing: the last menstrual period is a valueDateTime",
                        )
                    })?;
                    let d = fhir_date("Observation.valueDateTime", s)?;
                    not_future("Observation.valueDateTime", d, self.now)?;
                    f.last_menstruation_date = d.to_string();
                }
            }
        }
        Ok(Some((
            facts,
            retraction,
            "subject".to_owned(),
            date,
            date_field.to_owned(),
        )))
    }

    fn encounter(&self, res: &Value) -> Mapped {
        let prenatal = ["type", "reasonCode"]
            .iter()
            .flat_map(|k| array_at(res, k).iter())
            .chain(res.get("serviceType"))
            .any(|cc| codings(cc).any(|(s, c)| self.cfg.is_prenatal(s, c)));
        if !prenatal {
            return Ok(None);
        }
        let retraction = match str_at(res, "status").unwrap_or("") {
            "finished" | "in-progress" => false,
            "cancelled" | "entered-in-error" => true,
            other => {
                return Err(RecordError::new(
                    "Encounter.status",
                    "unsupported",
                    format!(
                        "{other:?}: only a held consultation (finished or in-progress) is recorded"
                    ),
                ));
            }
        };
        let date_str = res
            .get("period")
            .and_then(|p| str_at(p, "start"))
            .ok_or_else(|| {
                RecordError::malformed(
                    "Encounter.period.start",
                    "missing: the date of the consultation places the record in a semester",
                )
            })?;
        let date = fhir_date("Encounter.period.start", date_str)?;
        let mut facts = Facts::default();
        if !retraction {
            facts.follow.prenatal_care = true;
            facts.follow.pregnant = true;
        }
        Ok(Some((
            facts,
            retraction,
            "subject".to_owned(),
            date,
            "Encounter.period.start".to_owned(),
        )))
    }

    /// The patient of a clinical resource. In a document, an entry the Composition's sections
    /// list takes the Composition's subject when it names none, and is rejected when it names
    /// another person: a document is about one patient, and which of two is right is not
    /// Ponte's guess. Entries the sections do not list need their own patient, as in a
    /// collection.
    fn record_subject(&self, index: usize, res: &Value, key: &str) -> Result<Subject, RecordError> {
        let Some(doc) = self.document else {
            return self.subject(res, key);
        };
        let rtype = str_at(res, "resourceType").unwrap_or("");
        let field = format!("{rtype}.{key}");
        let own_given = res.get(key).is_some_and(Value::is_object);
        if !doc.listed.contains(&index) {
            if own_given {
                return self.subject(res, key);
            }
            return Err(RecordError::malformed(
                &field,
                "missing: the patient is needed; this entry is not listed in the Composition's sections, so it does not take the document's subject",
            ));
        }
        if !own_given {
            return doc.subject.clone().map_err(|reason| {
                RecordError::new(
                    &field,
                    "invalid_identifier",
                    format!(
                        "not given, and the document's subject (Composition, entry 1) cannot be used: {reason}"
                    ),
                )
            });
        }
        let own = self.subject(res, key)?;
        match &doc.subject {
            Ok(theirs) if *theirs != own => {
                let hint = if theirs.kind() == own.kind() {
                    ""
                } else {
                    " (Ponte cannot tell whether two different identifiers belong to one person)"
                };
                Err(RecordError::new(
                    &field,
                    "invalid_identifier",
                    format!(
                        "names {} but the document's Composition (entry 1) is about {}{hint}: a document is about one patient; correct the wrong one, or leave {field} out so the entry takes the Composition's subject",
                        describe(&own),
                        describe(theirs)
                    ),
                ))
            }
            // Agreeing, or nothing usable to compare with (the Composition is rejected on its
            // own entry): the entry's own patient stands, as in a collection.
            _ => Ok(own),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        index: usize,
        entry: &Value,
        res: &Value,
        rtype: &str,
        facts: Facts,
        retraction: bool,
        subject_field: &str,
        date: Date,
        date_field: &str,
    ) -> Result<ValidRecord, RecordError> {
        let subject = self.record_subject(index, res, subject_field)?;
        not_future(date_field, date, self.now)?;
        let local_id = match str_at(res, "id") {
            Some(id) if valid_id(id) => format!("{rtype}/{id}"),
            Some(id) => {
                return Err(RecordError::new(
                    &format!("{rtype}.id"),
                    "invalid_value",
                    format!("{id:?} is not a FHIR id (1–64 of A–Z a–z 0–9 - .)"),
                ));
            }
            None => stable_key(entry, res, rtype, self.document)?,
        };
        let (version_id, last_updated) = meta_of(res, rtype)?;
        // In a document, a resource without meta is as of the document's timestamp: a re-sent
        // document is the same version, a later one replaces it.
        let last_updated = last_updated.or(self.document.and_then(|d| d.timestamp));
        let version = version_of(version_id, last_updated);
        let mut follow = facts.follow;
        follow.subject = Some(subject.to_proto());
        follow.semester = Semester::containing(date.month_of()).to_string();
        follow.encounter_date = date.to_string();
        follow.fhir_refs.push(match version_id {
            Some(v) if !v.is_empty() => format!("{local_id}/_history/{v}"),
            _ => local_id.clone(),
        });
        let record_id = format!("{}:{local_id}", self.source_system);
        Ok(ValidRecord {
            key: subject.key().to_owned(),
            event: Event {
                record_id,
                version,
                source_system: self.source_system.to_owned(),
                event_time: Some(crate::record::timestamp(
                    last_updated.unwrap_or_else(|| date_time(date)),
                )),
                ingest_time: Some(crate::record::timestamp(self.now)),
                retraction,
                // Provenance: stamped with the request's by the ingestor.
                sender: String::new(),
                request_id: String::new(),
                record: Some(Record::HealthFollowUp(follow)),
            },
        })
    }
}

type Mapped = Result<Option<(Facts, bool, String, Date, String)>, RecordError>;

/// A resource's `meta.versionId` and `meta.lastUpdated` (parsed; an unparsable instant is an
/// error naming `<Type>.meta.lastUpdated`).
pub(crate) fn meta_of<'a>(
    res: &'a Value,
    rtype: &str,
) -> Result<(Option<&'a str>, Option<SystemTime>), RecordError> {
    let meta = res.get("meta");
    let version_id = meta.and_then(|m| str_at(m, "versionId"));
    let last_updated = meta
        .and_then(|m| str_at(m, "lastUpdated"))
        .map(|s| {
            parse_instant(s).ok_or_else(|| {
                RecordError::new(
                    &format!("{rtype}.meta.lastUpdated"),
                    "invalid_value",
                    format!("{s:?} is not a FHIR instant"),
                )
            })
        })
        .transpose()?;
    Ok((version_id, last_updated))
}

/// A record's version: `meta.versionId` when it is a number from 1, else `meta.lastUpdated` in
/// milliseconds, else 1 — so a re-sent resource is the same version and a new one replaces it.
pub(crate) fn version_of(version_id: Option<&str>, last_updated: Option<SystemTime>) -> u64 {
    match (version_id.and_then(|v| v.parse::<u64>().ok()), last_updated) {
        (Some(v), _) if v >= 1 => v,
        (_, Some(t)) => millis(t),
        _ => 1,
    }
}

#[derive(Clone, Copy)]
enum ObsKind {
    Weight,
    Height,
    VaccinationStatus,
    Pregnancy,
    LastMenstruation,
}

/// Why an entry with this `request.method` is refused, or `None` for POST and PUT (a resource
/// to record). Each says what to send instead.
pub(crate) fn refused_method(method: &str) -> Option<String> {
    match method {
        "POST" | "PUT" => None,
        "GET" | "HEAD" => Some(format!(
            "a {method} entry is a read request, not a record: send the resource itself (an entry with the resource, and POST or PUT if a request is given)"
        )),
        "DELETE" => Some(
            "DELETE entries are not accepted; to withdraw a record send the resource with status entered-in-error"
                .to_owned(),
        ),
        "PATCH" => Some(
            "a PATCH entry carries a change, not a record: send the whole resource (POST or PUT)"
                .to_owned(),
        ),
        other => Some(format!(
            "{other:?} is not a FHIR request method (GET, HEAD, POST, PUT, DELETE, PATCH): send the resource with POST or PUT"
        )),
    }
}

fn ignored_reason(rtype: &str) -> String {
    match rtype {
        "Observation" => "Observation code is not one Ponte records (body weight 29463-7, body height 8302-2/8306-3, pregnancy status 82810-3, last menstrual period 8665-2, vaccination status)".to_owned(),
        "Encounter" => "Encounter is not a prenatal care consultation (no configured prenatal code in type, serviceType or reasonCode)".to_owned(),
        other => format!("{other} is not used by Ponte"),
    }
}

pub(crate) fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// A resource without a server id (a transaction's POST): its first business identifier, or
/// its `urn:uuid:` full URL (stable only if the sender reuses it). In a document, the full URL
/// is only unique within the document (RNDS numbers entries `urn:uuid:transient-N` in every
/// one), so the document's `Bundle.identifier` goes with it.
pub(crate) fn stable_key(
    entry: &Value,
    res: &Value,
    rtype: &str,
    document: Option<&Document>,
) -> Result<String, RecordError> {
    if let Some(ident) = array_at(res, "identifier").first()
        && let (Some(system), Some(value)) = (str_at(ident, "system"), str_at(ident, "value"))
        && !value.is_empty()
    {
        return Ok(format!("{rtype}?identifier={system}|{value}"));
    }
    if let Some(doc) = document {
        let field = format!("{rtype}.id");
        return match (doc.identifier.as_deref(), str_at(entry, "fullUrl")) {
            (Some(d), Some(full)) if !full.is_empty() => {
                Ok(format!("{rtype}?document={d}&entry={full}"))
            }
            (None, _) => Err(RecordError::malformed(
                &field,
                "missing: an entry of a document without an id or identifier is known by the document's Bundle.identifier and its fullUrl, and this Bundle has no identifier with system and value (FHIR requires one for a document, bdl-9)",
            )),
            (Some(_), _) => Err(RecordError::malformed(
                &field,
                "missing: without an id, an identifier or a fullUrl the entry has no stable identity in the document, and a re-sent document would duplicate it",
            )),
        };
    }
    if let Some(full) = str_at(entry, "fullUrl")
        && full.starts_with("urn:uuid:")
    {
        return Ok(format!("{rtype}/{full}"));
    }
    Err(RecordError::malformed(
        &format!("{rtype}.id"),
        "missing: without an id, an identifier or a urn:uuid fullUrl the record has no stable identity, and a re-sent bundle would duplicate it",
    ))
}

/// Whether an `Observation` withdraws its record (`entered-in-error`, `cancelled`) or records
/// it (`final`, `amended`, `corrected`); any other status is refused.
pub(crate) fn observation_withdrawn(res: &Value) -> Result<bool, RecordError> {
    match str_at(res, "status").unwrap_or("") {
        "final" | "amended" | "corrected" => Ok(false),
        "entered-in-error" | "cancelled" => Ok(true),
        other => Err(RecordError::new(
            "Observation.status",
            "unsupported",
            format!(
                "{other:?}: only final, amended or corrected results are recorded (entered-in-error or cancelled withdraw one)"
            ),
        )),
    }
}

/// The day of an `Observation`: `effectiveDateTime`, `effectivePeriod.start` or
/// `effectiveInstant`, with the field it was read from; `missing` says why one is needed when
/// there is none.
pub(crate) fn observation_date(
    res: &Value,
    missing: &str,
) -> Result<(Date, &'static str), RecordError> {
    let (date_str, date_field) = if let Some(s) = str_at(res, "effectiveDateTime") {
        (s, "Observation.effectiveDateTime")
    } else if let Some(s) = res.get("effectivePeriod").and_then(|p| str_at(p, "start")) {
        (s, "Observation.effectivePeriod.start")
    } else if let Some(s) = str_at(res, "effectiveInstant") {
        (s, "Observation.effectiveInstant")
    } else {
        return Err(RecordError::malformed("Observation.effective[x]", missing));
    };
    Ok((fhir_date(date_field, date_str)?, date_field))
}

/// The date part of a FHIR `date`/`dateTime` (`2025-03-10`, `2025-03-10T09:00:00-03:00`), as
/// written: the local date of the health unit, not converted to UTC.
pub(crate) fn fhir_date(field: &str, s: &str) -> Result<Date, RecordError> {
    let bad = |why: &str| RecordError::new(field, "invalid_period", format!("{s:?}: {why}"));
    let day = s
        .get(..10)
        .ok_or_else(|| bad("a full date (YYYY-MM-DD) is needed"))?;
    let rest = &s[10..];
    if !rest.is_empty() && !rest.starts_with('T') {
        return Err(bad("not a FHIR date or dateTime"));
    }
    Date::parse(day).map_err(|e| bad(&e.to_string()))
}

pub(crate) fn quantity(res: &Value) -> Result<(f64, String), RecordError> {
    let q = res.get("valueQuantity").ok_or_else(|| {
        RecordError::malformed(
            "Observation.valueQuantity",
            "missing: a measurement needs a value",
        )
    })?;
    let value = q.get("value").and_then(Value::as_f64).ok_or_else(|| {
        RecordError::malformed("Observation.valueQuantity.value", "missing or not a number")
    })?;
    let unit = match (str_at(q, "system"), str_at(q, "code")) {
        (Some(UCUM) | None, Some(code)) => code,
        _ => str_at(q, "unit").ok_or_else(|| {
            RecordError::malformed("Observation.valueQuantity", "no UCUM code or unit")
        })?,
    };
    Ok((value, unit.to_owned()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use ponte_proto::events::v1::health_follow_up::Subject as PSubject;

    const PATIENT: &str = include_str!("../tests/data/fhir/patient-example.json");
    const IMMUNIZATION: &str = include_str!("../tests/data/fhir/immunization-example.json");
    const OBSERVATION: &str = include_str!("../tests/data/fhir/observation-example.json");
    const CNS: &str = "268276499600008"; // derived from NIS 26827649960 (ponte-domain vectors)

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600) // 2026-01-01
    }

    fn bundle(kind: &str, resources: &[String]) -> String {
        let entries: Vec<String> = resources
            .iter()
            .map(|r| format!(r#"{{"resource": {r}}}"#))
            .collect();
        format!(
            r#"{{"resourceType":"Bundle","type":"{kind}","entry":[{}]}}"#,
            entries.join(",")
        )
    }

    fn parse(body: &str) -> ParsedBundle {
        parse_bundle(
            body.as_bytes(),
            &MappingConfig::default(),
            "health",
            BundleSource::Push,
            now(),
        )
        .unwrap()
    }

    /// The sample Patient with a CNS added in the RNDS system.
    fn patient_with_cns() -> String {
        let mut p: Value = serde_json::from_str(PATIENT).unwrap();
        p["identifier"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "system": "http://rnds.saude.gov.br/fhir/r4/NamingSystem/cns", "value": CNS
            }));
        p.to_string()
    }

    fn follow(r: &EntryResult) -> (&ValidRecord, &HealthFollowUp) {
        match &r.outcome {
            EntryOutcome::Record(v) => match v.event.record.as_ref().unwrap() {
                Record::HealthFollowUp(f) => (v, f),
                other => panic!("{other:?}"),
            },
            other => panic!("entry {} not a record: {other:?}", r.index),
        }
    }

    fn rejected(r: &EntryResult) -> &RecordError {
        match &r.outcome {
            EntryOutcome::Rejected(e) => e,
            other => panic!("entry {} not rejected: {other:?}", r.index),
        }
    }

    #[test]
    fn a_bare_sample_resource_is_not_a_bundle() {
        for sample in [PATIENT, IMMUNIZATION, OBSERVATION] {
            let e = parse_bundle(
                sample.as_bytes(),
                &MappingConfig::default(),
                "health",
                BundleSource::Push,
                now(),
            )
            .unwrap_err();
            assert_eq!(e.field, "Bundle.resourceType");
            assert!(e.reason.contains("expected a Bundle"), "{e}");
        }
    }

    #[test]
    fn the_sample_patient_has_no_brazilian_identifier_so_its_records_are_rejected() {
        let b = parse(&bundle(
            "collection",
            &[
                PATIENT.to_owned(),
                IMMUNIZATION.to_owned(),
                OBSERVATION.to_owned(),
            ],
        ));
        assert_eq!(b.entries.len(), 3);
        // The Patient: its only identifier is an Australian MRN (urn:oid:1.2.36.146.595.217.0.1).
        let e = rejected(&b.entries[0]);
        assert_eq!(e.error_type, "invalid_identifier");
        assert!(e.reason.contains("urn:oid:1.2.36.146.595.217.0.1"), "{e}");
        // Both clinical resources point at it and inherit the reason, naming the entry.
        for r in &b.entries[1..] {
            let e = rejected(r);
            assert_eq!(e.error_type, "invalid_identifier");
            assert!(
                e.reason
                    .contains("Patient/example (entry 1) has no usable identifier"),
                "{e}"
            );
        }
        assert_eq!(b.entries[2].label, "Observation/example");
    }

    #[test]
    fn with_a_cns_the_sample_immunization_and_weight_are_accepted() {
        let b = parse(&bundle(
            "batch",
            &[
                patient_with_cns(),
                IMMUNIZATION.to_owned(),
                OBSERVATION.to_owned(),
            ],
        ));
        assert_eq!(
            b.entries[0].outcome,
            EntryOutcome::Identity(Subject::Cns(CNS.into()))
        );

        let (v, f) = follow(&b.entries[1]);
        assert_eq!(v.key, CNS);
        assert_eq!(v.event.record_id, "health:Immunization/example");
        assert_eq!(v.event.version, 1); // no meta.versionId nor lastUpdated in the sample
        assert!(!v.event.retraction);
        assert_eq!(f.subject, Some(PSubject::Cns(CNS.into())));
        assert_eq!(f.semester, "2013-S1"); // occurrenceDateTime 2013-01-10
        assert_eq!(f.encounter_date, "2013-01-10");
        // The sample dose is subpotent (isSubpotent: true): not listed as a vaccine given.
        assert!(f.vaccines.is_empty());
        assert_eq!(f.fhir_refs, vec!["Immunization/example".to_owned()]);
        assert_eq!(f.vaccination_up_to_date, None);

        let (v, f) = follow(&b.entries[2]);
        assert_eq!(v.event.record_id, "health:Observation/example");
        assert_eq!(f.semester, "2016-S1"); // effectiveDateTime 2016-03-28
        assert_eq!(f.weight_grams, Some(83_915)); // 185 [lb_av]
        assert_eq!(f.height_mm, None);
    }

    #[test]
    fn a_potent_dose_lists_its_vaccine_and_rnds_codes_stay_bare() {
        let mut imm: Value = serde_json::from_str(IMMUNIZATION).unwrap();
        imm["isSubpotent"] = Value::Bool(false);
        let b = parse(&bundle("batch", &[patient_with_cns(), imm.to_string()]));
        assert_eq!(
            follow(&b.entries[1]).1.vaccines,
            vec!["urn:oid:1.2.36.1.2001.1005.17|FLUVAX".to_owned()]
        );

        imm["vaccineCode"] =
            serde_json::json!({"coding": [{"system": BR_IMUNOBIOLOGICO, "code": "22"}]});
        imm["meta"] = serde_json::json!({"versionId": "3"});
        let b = parse(&bundle("batch", &[patient_with_cns(), imm.to_string()]));
        let (v, f) = follow(&b.entries[1]);
        assert_eq!(f.vaccines, vec!["22".to_owned()]);
        assert_eq!(v.event.version, 3);
        assert_eq!(
            f.fhir_refs,
            vec!["Immunization/example/_history/3".to_owned()]
        );
    }

    #[test]
    fn entered_in_error_withdraws_and_not_done_withdraws() {
        let mut imm: Value = serde_json::from_str(IMMUNIZATION).unwrap();
        for status in ["entered-in-error", "not-done"] {
            imm["status"] = Value::String(status.into());
            let b = parse(&bundle("batch", &[patient_with_cns(), imm.to_string()]));
            let (v, f) = follow(&b.entries[1]);
            assert!(v.event.retraction, "{status}");
            assert_eq!(f.subject, Some(PSubject::Cns(CNS.into())));
        }
    }

    #[test]
    fn a_re_sent_bundle_maps_to_the_same_ids_and_versions() {
        let body = bundle(
            "batch",
            &[
                patient_with_cns(),
                IMMUNIZATION.to_owned(),
                OBSERVATION.to_owned(),
            ],
        );
        let ids = |b: ParsedBundle| -> Vec<(String, u64)> {
            b.entries
                .iter()
                .filter_map(|e| match &e.outcome {
                    EntryOutcome::Record(v) => Some((v.event.record_id.clone(), v.event.version)),
                    _ => None,
                })
                .collect()
        };
        let later = now() + std::time::Duration::from_secs(3600);
        let again = parse_bundle(
            body.as_bytes(),
            &MappingConfig::default(),
            "health",
            BundleSource::Push,
            later,
        )
        .unwrap();
        assert_eq!(ids(parse(&body)), ids(again));
    }

    fn obs(code: &str, value: Value, subject: Value) -> String {
        let mut o = serde_json::json!({
            "resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "subject": subject, "effectiveDateTime": "2025-08-14T10:00:00-03:00",
            "meta": {"lastUpdated": "2025-08-14T13:00:00Z"}
        });
        for (k, v) in value.as_object().unwrap() {
            o[k] = v.clone();
        }
        o.to_string()
    }

    fn cpf_ref() -> Value {
        serde_json::json!({"identifier": {"system": "http://rnds.saude.gov.br/fhir/r4/NamingSystem/cpf", "value": "529.982.247-25"}})
    }

    #[test]
    fn logical_references_carry_the_cpf_and_height_converts() {
        let b = parse(&bundle(
            "transaction",
            &[obs(
                "8302-2",
                serde_json::json!({"valueQuantity": {"value": 87.3, "unit": "cm", "system": UCUM, "code": "cm"}}),
                cpf_ref(),
            )],
        ));
        let (v, f) = follow(&b.entries[0]);
        assert_eq!(v.key, "52998224725");
        assert_eq!(f.subject, Some(PSubject::Cpf("52998224725".into())));
        assert_eq!(f.height_mm, Some(873));
        assert_eq!(f.semester, "2025-S2"); // the local date, 2025-08-14
        // Without versionId the lastUpdated instant in milliseconds is the version.
        assert_eq!(v.event.version, 1_755_176_400_000);
    }

    #[test]
    fn the_vaccination_flag_pregnancy_and_last_menstruation_are_read() {
        let flag = serde_json::json!({
            "resourceType": "Observation", "id": "v1", "status": "final",
            "code": {"coding": [{"system": "urn:ponte:fhir:CodeSystem:health", "code": "vaccination-up-to-date"}]},
            "subject": cpf_ref(), "effectiveDateTime": "2025-02-01", "valueBoolean": true
        });
        let preg = obs(
            "82810-3",
            serde_json::json!({"valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "77386006"}]}}),
            cpf_ref(),
        );
        let dum = obs(
            "8665-2",
            serde_json::json!({"valueDateTime": "2025-06-01"}),
            cpf_ref(),
        );
        let b = parse(&bundle("batch", &[flag.to_string(), preg, dum]));
        assert_eq!(follow(&b.entries[0]).1.vaccination_up_to_date, Some(true));
        assert!(follow(&b.entries[1]).1.pregnant);
        assert_eq!(follow(&b.entries[2]).1.last_menstruation_date, "2025-06-01");
    }

    #[test]
    fn a_prenatal_encounter_is_prenatal_care_and_other_encounters_are_ignored() {
        let enc = |code: &str| {
            serde_json::json!({
                "resourceType": "Encounter", "id": format!("e{code}"), "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "type": [{"coding": [{"system": SNOMED, "code": code}]}],
                "subject": cpf_ref(), "period": {"start": "2025-03-03T08:00:00-03:00"}
            })
            .to_string()
        };
        let b = parse(&bundle("batch", &[enc("424619006"), enc("185349003")]));
        let (_, f) = follow(&b.entries[0]);
        assert!(f.prenatal_care && f.pregnant);
        assert_eq!(f.semester, "2025-S1");
        assert!(
            matches!(&b.entries[1].outcome, EntryOutcome::Ignored(r) if r.contains("prenatal"))
        );
    }

    #[test]
    fn each_rule_names_its_element() {
        let cases: Vec<(String, &str, &str)> = vec![
            (
                obs(
                    "29463-7",
                    serde_json::json!({"valueQuantity": {"value": 600, "code": "kg", "system": UCUM}}),
                    cpf_ref(),
                ),
                "Observation.valueQuantity",
                "plausible",
            ),
            (
                obs(
                    "29463-7",
                    serde_json::json!({"valueQuantity": {"value": 6, "code": "cm", "system": UCUM}}),
                    cpf_ref(),
                ),
                "Observation.valueQuantity",
                "weight unit",
            ),
            (
                obs(
                    "29463-7",
                    serde_json::json!({"status": "preliminary", "valueQuantity": {"value": 6, "code": "kg"}}),
                    cpf_ref(),
                ),
                "Observation.status",
                "final",
            ),
            (
                obs(
                    "29463-7",
                    serde_json::json!({"effectiveDateTime": "2025", "valueQuantity": {"value": 6, "code": "kg"}}),
                    cpf_ref(),
                ),
                "Observation.effectiveDateTime",
                "full date",
            ),
            (
                obs(
                    "29463-7",
                    serde_json::json!({"effectiveDateTime": "2027-01-01", "valueQuantity": {"value": 6, "code": "kg"}}),
                    cpf_ref(),
                ),
                "Observation.effectiveDateTime",
                "future",
            ),
            (
                obs(
                    "29463-7",
                    serde_json::json!({"valueQuantity": {"value": 6, "code": "kg"}}),
                    serde_json::json!({"identifier": {"system": "http://rnds.saude.gov.br/fhir/r4/NamingSystem/cpf", "value": "52998224726"}}),
                ),
                "Observation.subject",
                "check digit",
            ),
            (
                obs(
                    "29463-7",
                    serde_json::json!({"valueQuantity": {"value": 6, "code": "kg"}}),
                    serde_json::json!({"reference": "Patient/nowhere"}),
                ),
                "Observation.subject",
                "not in the bundle",
            ),
        ];
        for (resource, field, reason) in cases {
            let b = parse(&bundle("batch", std::slice::from_ref(&resource)));
            let e = rejected(&b.entries[0]);
            assert_eq!(e.field, field, "{resource}");
            assert!(e.reason.contains(reason), "{reason:?} not in {e}");
        }
    }

    #[test]
    fn typed_rnds_identifiers_and_other_resources() {
        let patient = serde_json::json!({
            "resourceType": "Patient", "id": "p1",
            "identifier": [
                {"system": "http://www.saude.gov.br/fhir/r4/StructureDefinition/BRIndividuo-1.0",
                 "type": {"coding": [{"system": "http://www.saude.gov.br/fhir/r4/CodeSystem/BRTipoIdentificador", "code": "SS"}]},
                 "value": "268.27649.96-0"}
            ]
        });
        let obs = obs(
            "29463-7",
            serde_json::json!({"valueQuantity": {"value": 12.5, "code": "kg"}}),
            serde_json::json!({"reference": "urn:uuid:6b6c7c2e-0f3a-4c1e-9d4b-8f0e1a2b3c4d"}),
        );
        let body = format!(
            r#"{{"resourceType":"Bundle","type":"transaction","entry":[
              {{"fullUrl":"urn:uuid:6b6c7c2e-0f3a-4c1e-9d4b-8f0e1a2b3c4d","resource":{patient},"request":{{"method":"POST","url":"Patient"}}}},
              {{"resource":{obs},"request":{{"method":"POST","url":"Observation"}}}},
              {{"resource":{{"resourceType":"Practitioner","id":"x"}}}},
              {{"request":{{"method":"DELETE","url":"Observation/1"}}}},
              7
            ]}}"#
        );
        let b = parse(&body);
        assert_eq!(
            b.entries[0].outcome,
            EntryOutcome::Identity(Subject::Nis("26827649960".into()))
        );
        assert_eq!(follow(&b.entries[1]).0.key, "26827649960");
        assert!(matches!(&b.entries[2].outcome, EntryOutcome::Ignored(_)));
        assert_eq!(rejected(&b.entries[3]).error_type, "unsupported");
        assert_eq!(rejected(&b.entries[4]).error_type, "malformed");
        assert_eq!(b.entries[4].original, b"7");
    }

    #[test]
    fn bundle_level_errors() {
        let cfg = MappingConfig::default();
        let p = |s: &str| parse_bundle(s.as_bytes(), &cfg, "health", BundleSource::Push, now());
        assert_eq!(p("{nope").unwrap_err().error_type, "malformed");
        assert!(
            p(r#"{"resourceType":"Bundle","type":"searchset"}"#)
                .unwrap_err()
                .reason
                .contains("not accepted here")
        );
        assert_eq!(
            p(r#"{"resourceType":"Bundle","type":"batch"}"#)
                .unwrap()
                .entries
                .len(),
            0
        );
        assert_eq!(p("[]").unwrap_err().error_type, "malformed");
    }

    // -----------------------------------------------------------------------------------------
    // RNDS documents (tests/data/rnds/README.md)
    // -----------------------------------------------------------------------------------------

    const RIA_ROTINA: &str = include_str!("../tests/data/rnds/ria-rotina.json");
    const RIA_CAMPANHA: &str = include_str!("../tests/data/rnds/ria-campanha.json");
    const CNS_ROTINA: &str = "204318567230007";
    const CNS_CAMPANHA: &str = "898001634957018";
    /// Another valid CNS, for a patient who is not the document's.
    const CNS_OTHER: &str = "702148003512018";
    const RNDS_CNS: &str = "http://rnds.saude.gov.br/fhir/r4/NamingSystem/cns";

    fn json(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    fn instant_millis(s: &str) -> u64 {
        millis(parse_instant(s).unwrap())
    }

    #[test]
    fn the_test_documents_use_valid_cns_numbers() {
        for cns in [CNS_ROTINA, CNS_CAMPANHA, CNS_OTHER, "162031458900009"] {
            let parsed = ponte_domain::ids::Cns::parse(cns).unwrap();
            assert_eq!(parsed.as_str(), cns);
        }
    }

    #[test]
    fn an_rnds_routine_dose_document_is_accepted() {
        let b = parse(RIA_ROTINA);
        assert_eq!(b.bundle_type, "document");
        assert_eq!(b.entries.len(), 2);
        // The Composition gives the document's subject, like a Patient entry.
        assert_eq!(
            b.entries[0].outcome,
            EntryOutcome::Identity(Subject::Cns(CNS_ROTINA.into()))
        );
        assert_eq!(b.entries[1].label, "urn:uuid:transient-1");
        let (v, f) = follow(&b.entries[1]);
        assert_eq!(v.key, CNS_ROTINA);
        assert_eq!(f.subject, Some(PSubject::Cns(CNS_ROTINA.into())));
        assert_eq!(f.vaccines, vec!["22".to_owned()]);
        assert_eq!(f.encounter_date, "2025-03-10");
        assert_eq!(f.semester, "2025-S1");
        assert!(!v.event.retraction);
        // No id and no identifier (the profile forbids it): the document's identifier and the
        // entry's fullUrl make the record, the document's timestamp its version.
        let local = "Immunization?document=http://www.saude.gov.br/fhir/r4/NamingSystem/BRRNDS-90217|ponte-ria-rotina-6f1d2c3a-58e4-4b7e-9a41-0c2b7d9e5f10&entry=urn:uuid:transient-1";
        assert_eq!(f.fhir_refs, vec![local.to_owned()]);
        assert_eq!(v.event.record_id, format!("health:{local}"));
        assert_eq!(v.event.version, instant_millis("2025-03-10T09:41:12-03:00"));
    }

    #[test]
    fn an_rnds_campaign_dose_document_is_accepted() {
        let b = parse(RIA_CAMPANHA);
        // The subject is in the BRIndividuo system without a type: 15 digits are a CNS.
        assert_eq!(
            b.entries[0].outcome,
            EntryOutcome::Identity(Subject::Cns(CNS_CAMPANHA.into()))
        );
        let (v, f) = follow(&b.entries[1]);
        assert_eq!(v.key, CNS_CAMPANHA);
        assert_eq!(f.subject, Some(PSubject::Cns(CNS_CAMPANHA.into())));
        assert_eq!(f.vaccines, vec!["24".to_owned()]);
        assert_eq!(f.encounter_date, "2024-11-09");
        assert_eq!(f.semester, "2024-S2");
        assert_eq!(
            f.fhir_refs,
            vec!["Immunization?document=http://www.saude.gov.br/fhir/r4/NamingSystem/BRRNDS-90217|ponte-ria-campanha-0b9e4d71-2c5a-4f38-8d16-7a3e90c4b2e5&entry=urn:uuid:transient-1".to_owned()]
        );
        assert_eq!(v.event.version, instant_millis("2024-11-09T15:02:47-03:00"));
    }

    #[test]
    fn two_documents_reusing_transient_full_urls_are_two_records_and_a_resent_one_is_the_same() {
        let a = parse(RIA_ROTINA);
        let b = parse(RIA_CAMPANHA);
        assert_ne!(
            follow(&a.entries[1]).0.event.record_id,
            follow(&b.entries[1]).0.event.record_id
        );
        let again = parse(RIA_ROTINA);
        assert_eq!(follow(&a.entries[1]).0, follow(&again.entries[1]).0);
    }

    #[test]
    fn an_immunization_whose_patient_disagrees_with_the_composition_is_rejected() {
        let mut doc = json(RIA_ROTINA);
        doc["entry"][1]["resource"]["patient"]["identifier"]["value"] = CNS_OTHER.into();
        let b = parse(&doc.to_string());
        // The Composition itself is fine; the entry that contradicts it is not.
        assert_eq!(
            b.entries[0].outcome,
            EntryOutcome::Identity(Subject::Cns(CNS_ROTINA.into()))
        );
        let e = rejected(&b.entries[1]);
        assert_eq!(e.field, "Immunization.patient");
        assert_eq!(e.error_type, "invalid_identifier");
        assert!(
            e.reason.contains(
                "names CNS …2018 but the document's Composition (entry 1) is about CNS …0007"
            ),
            "{e}"
        );
        assert!(e.reason.contains("a document is about one patient"), "{e}");

        // A CPF against the Composition's CNS: maybe the same person, but Ponte cannot tell.
        doc["entry"][1]["resource"]["patient"] = cpf_ref();
        let b = parse(&doc.to_string());
        let e = rejected(&b.entries[1]);
        assert!(e.reason.contains("names CPF …4725"), "{e}");
        assert!(e.reason.contains("cannot tell"), "{e}");
    }

    #[test]
    fn a_listed_entry_without_a_patient_takes_the_composition_subject() {
        let mut doc = json(RIA_CAMPANHA);
        doc["entry"][1]["resource"]
            .as_object_mut()
            .unwrap()
            .remove("patient");
        // A second clinical entry listed in another section: a weight, with no subject either.
        doc["entry"].as_array_mut().unwrap().push(serde_json::json!({
            "fullUrl": "urn:uuid:transient-2",
            "resource": json(&obs(
                "29463-7",
                serde_json::json!({"valueQuantity": {"value": 14.2, "code": "kg", "system": UCUM}}),
                Value::Null,
            )),
        }));
        doc["entry"][2]["resource"]
            .as_object_mut()
            .unwrap()
            .remove("subject");
        doc["entry"][0]["resource"]["section"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"entry": [{"reference": "Observation/o1"}]}));
        let b = parse(&doc.to_string());
        let (v, f) = follow(&b.entries[1]);
        assert_eq!(v.key, CNS_CAMPANHA);
        assert_eq!(f.vaccines, vec!["24".to_owned()]);
        let (v, f) = follow(&b.entries[2]);
        assert_eq!(v.key, CNS_CAMPANHA);
        assert_eq!(f.weight_grams, Some(14_200));
        // It has an id: that is its record, versioned by its own meta.lastUpdated.
        assert_eq!(v.event.record_id, "health:Observation/o1");
        assert_eq!(v.event.version, instant_millis("2025-08-14T13:00:00Z"));
    }

    #[test]
    fn a_listed_entry_without_a_patient_is_rejected_when_the_composition_subject_is_unusable() {
        let mut doc = json(RIA_ROTINA);
        // A CNS with a wrong check digit on the Composition.
        doc["entry"][0]["resource"]["subject"]["identifier"]["value"] = "204318567230008".into();
        doc["entry"][1]["resource"]
            .as_object_mut()
            .unwrap()
            .remove("patient");
        let b = parse(&doc.to_string());
        let e = rejected(&b.entries[0]);
        assert_eq!(e.field, "Composition.subject");
        assert_eq!(e.error_type, "invalid_identifier");
        let e = rejected(&b.entries[1]);
        assert_eq!(e.field, "Immunization.patient");
        assert!(
            e.reason
                .contains("the document's subject (Composition, entry 1) cannot be used"),
            "{e}"
        );
    }

    #[test]
    fn an_unidentified_person_is_named_as_such() {
        let mut doc = json(RIA_ROTINA);
        doc["entry"][0]["resource"]["subject"] = serde_json::json!({"extension": [{
            "url": "http://www.saude.gov.br/fhir/r4/StructureDefinition/BRIndividuoNaoIdentificado-1.0",
            "extension": [{"url": "birthYear", "valueInteger": 2023}]
        }]});
        let b = parse(&doc.to_string());
        let e = rejected(&b.entries[0]);
        assert!(e.reason.contains("recorded as unidentified"), "{e}");
        // The Immunization names its own patient: it stands, as in a collection.
        assert_eq!(follow(&b.entries[1]).0.key, CNS_ROTINA);
    }

    #[test]
    fn a_document_without_its_composition_first_is_refused_whole() {
        let cfg = MappingConfig::default();
        let p = |s: &str| parse_bundle(s.as_bytes(), &cfg, "health", BundleSource::Push, now());

        let mut doc = json(RIA_ROTINA);
        doc["entry"].as_array_mut().unwrap().remove(0);
        let e = p(&doc.to_string()).unwrap_err();
        assert_eq!(e.field, "Bundle.entry[0]");
        assert_eq!(e.error_type, "malformed");
        assert!(
            e.reason
                .contains("a document must start with its Composition"),
            "{e}"
        );
        assert!(
            e.reason.contains("here the first entry is Immunization"),
            "{e}"
        );

        // The Composition present but not first: still refused (FHIR bdl-11).
        let mut doc = json(RIA_ROTINA);
        doc["entry"].as_array_mut().unwrap().reverse();
        assert!(
            p(&doc.to_string())
                .unwrap_err()
                .reason
                .contains("must start with its Composition")
        );

        let e = p(r#"{"resourceType":"Bundle","type":"document","entry":[]}"#).unwrap_err();
        assert!(e.reason.contains("no entries"), "{e}");
    }

    #[test]
    fn entries_the_sections_do_not_list_are_read_as_in_a_collection() {
        let mut doc = json(RIA_ROTINA);
        let entries = doc["entry"].as_array_mut().unwrap();
        // Listed nowhere but carrying its own patient: recorded.
        entries.push(serde_json::json!({"resource": json(&obs(
            "8302-2",
            serde_json::json!({"valueQuantity": {"value": 87.3, "code": "cm", "system": UCUM}}),
            cpf_ref(),
        ))}));
        // Listed nowhere and without a patient: not given the document's subject.
        let mut unlisted = entries[1].clone();
        unlisted["fullUrl"] = "urn:uuid:transient-9".into();
        unlisted["resource"]
            .as_object_mut()
            .unwrap()
            .remove("patient");
        entries.push(unlisted);
        let b = parse(&doc.to_string());
        assert_eq!(follow(&b.entries[1]).0.key, CNS_ROTINA);
        let (v, f) = follow(&b.entries[2]);
        assert_eq!(v.key, "52998224725");
        assert_eq!(f.height_mm, Some(873));
        let e = rejected(&b.entries[3]);
        assert_eq!(e.field, "Immunization.patient");
        assert!(
            e.reason
                .contains("not listed in the Composition's sections, so it does not take the document's subject"),
            "{e}"
        );
    }

    #[test]
    fn a_section_listing_a_resource_the_document_lacks_rejects_the_composition_only() {
        let mut doc = json(RIA_ROTINA);
        doc["entry"][0]["resource"]["section"][0]["entry"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"reference": "urn:uuid:transient-7"}));
        let b = parse(&doc.to_string());
        let e = rejected(&b.entries[0]);
        assert_eq!(e.field, "Composition.section[0].entry[1]");
        assert_eq!(e.error_type, "unresolved_reference");
        assert!(e.reason.contains("urn:uuid:transient-7"), "{e}");
        // The dose it does carry is still read, with the Composition's subject.
        assert_eq!(follow(&b.entries[1]).0.key, CNS_ROTINA);
    }

    #[test]
    fn sections_may_refer_by_type_and_id_and_patients_by_reference() {
        // A generic FHIR document: a Patient entry, the Composition's subject a reference to it,
        // the Immunization with an id and no patient, listed as Immunization/<id>.
        let mut doc = json(RIA_ROTINA);
        let entries = doc["entry"].as_array_mut().unwrap();
        entries[0]["resource"]["subject"] =
            serde_json::json!({"reference": "urn:uuid:7d0c5b1e-3a2f-4e6d-9b8c-1f2e3d4c5b6a"});
        entries[0]["resource"]["section"][0]["entry"][0]["reference"] =
            "Immunization/dose-1".into();
        entries[1]["resource"]["id"] = "dose-1".into();
        entries[1]["resource"]
            .as_object_mut()
            .unwrap()
            .remove("patient");
        entries.push(serde_json::json!({
            "fullUrl": "urn:uuid:7d0c5b1e-3a2f-4e6d-9b8c-1f2e3d4c5b6a",
            "resource": {"resourceType": "Patient", "identifier": [
                {"system": RNDS_CNS, "value": CNS_OTHER}]}
        }));
        let b = parse(&doc.to_string());
        assert_eq!(
            b.entries[0].outcome,
            EntryOutcome::Identity(Subject::Cns(CNS_OTHER.into()))
        );
        let (v, f) = follow(&b.entries[1]);
        assert_eq!(v.key, CNS_OTHER);
        assert_eq!(v.event.record_id, "health:Immunization/dose-1");
        assert_eq!(f.fhir_refs, vec!["Immunization/dose-1".to_owned()]);
    }

    #[test]
    fn an_id_less_entry_of_a_document_without_bundle_identifier_is_rejected() {
        let mut doc = json(RIA_ROTINA);
        doc.as_object_mut().unwrap().remove("identifier");
        let b = parse(&doc.to_string());
        let e = rejected(&b.entries[1]);
        assert_eq!(e.field, "Immunization.id");
        assert!(e.reason.contains("bdl-9"), "{e}");
    }

    #[test]
    fn a_document_timestamp_that_is_no_instant_refuses_the_document() {
        let mut doc = json(RIA_ROTINA);
        doc["timestamp"] = "10/03/2025".into();
        let e = parse_bundle(
            doc.to_string().as_bytes(),
            &MappingConfig::default(),
            "health",
            BundleSource::Push,
            now(),
        )
        .unwrap_err();
        assert_eq!(e.field, "Bundle.timestamp");
    }

    #[test]
    fn a_document_is_not_a_search_page() {
        let e = parse_bundle(
            RIA_ROTINA.as_bytes(),
            &MappingConfig::default(),
            "health",
            BundleSource::Search,
            now(),
        )
        .unwrap_err();
        assert!(e.reason.contains("not accepted here"), "{e}");
    }

    // -----------------------------------------------------------------------------------------
    // Rejection messages name the real reason
    // -----------------------------------------------------------------------------------------

    #[test]
    fn a_get_entry_is_a_read_request_not_a_record() {
        let body = r#"{"resourceType":"Bundle","type":"batch","entry":[
            {"request":{"method":"GET","url":"Immunization?patient=Patient/1"}},
            {"request":{"method":"HEAD","url":"Patient/1"}},
            {"request":{"method":"DELETE","url":"Observation/1"}},
            {"request":{"method":"PATCH","url":"Observation/1"}},
            {"request":{"method":"FETCH","url":"Observation/1"}}
        ]}"#;
        let b = parse(body);
        let e = rejected(&b.entries[0]);
        assert_eq!(e.field, "Bundle.entry.request.method");
        assert_eq!(e.error_type, "unsupported");
        assert_eq!(
            e.reason,
            "a GET entry is a read request, not a record: send the resource itself (an entry with the resource, and POST or PUT if a request is given)"
        );
        assert!(!e.reason.contains("entered-in-error"), "{e}");
        assert!(
            rejected(&b.entries[1])
                .reason
                .starts_with("a HEAD entry is a read request, not a record")
        );
        // DELETE keeps its message: withdrawing is done with a status.
        assert_eq!(
            rejected(&b.entries[2]).reason,
            "DELETE entries are not accepted; to withdraw a record send the resource with status entered-in-error"
        );
        assert!(
            rejected(&b.entries[3])
                .reason
                .contains("a PATCH entry carries a change, not a record")
        );
        assert!(
            rejected(&b.entries[4])
                .reason
                .contains("\"FETCH\" is not a FHIR request method")
        );
    }

    #[test]
    fn an_occurrence_given_only_as_a_string_says_so() {
        let mut imm = json(IMMUNIZATION);
        imm.as_object_mut().unwrap().remove("occurrenceDateTime");
        imm["occurrenceString"] = "last winter, at the school campaign".into();
        let b = parse(&bundle("batch", &[patient_with_cns(), imm.to_string()]));
        let e = rejected(&b.entries[1]);
        assert_eq!(e.field, "Immunization.occurrenceString");
        assert_eq!(e.error_type, "invalid_period");
        assert_eq!(
            e.reason,
            "the occurrence is given only as a string (\"last winter, at the school campaign\") without a date: send occurrenceDateTime, the date the dose was given, which places the record in a semester"
        );

        // With neither, the date is simply missing.
        imm.as_object_mut().unwrap().remove("occurrenceString");
        let b = parse(&bundle("batch", &[patient_with_cns(), imm.to_string()]));
        let e = rejected(&b.entries[1]);
        assert_eq!(e.field, "Immunization.occurrenceDateTime");
        assert!(e.reason.starts_with("missing"), "{e}");
    }
}
