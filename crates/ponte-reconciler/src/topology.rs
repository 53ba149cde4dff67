//! The reconciliation topology, as a pure function of (state, event) → (state changes, outputs).
//!
//! Driven by the service's consumer loop with the RocksDB store as state, and by property tests
//! with a map, so the guarantees are tested without a broker. Never reads the clock: the times
//! written into views come from the events.
//!
//! State layout (keys in the store's `state` column family):
//!
//! | key | value |
//! |---|---|
//! | `p/<nis>` | the person's records (JSON: every entry, tombstones included) |
//! | `v/p/<nis>` | the person's view (`ponte.compliance.v1.Person`) |
//! | `x/<cns:…\|cpf:…>` | crosswalk: the NIS an alternate identifier belongs to |
//! | `xo/<nis>` | the alternate identifiers the person's profile currently carries (JSON) |
//! | `h/<alt>/<record id>` | the NIS a health record that arrived as `<alt>` was applied to |
//! | `k/<alt>/<record id>` | a parked health record (`ponte.events.v1.Event`) |
//! | `pf/<nis>` | the family the person belongs to |
//! | `f/<family id>` | the family's assistance records (JSON) |
//! | `fm/<family id>` | the family's members (JSON) |
//! | `v/f/<family id>` | the family's view (`ponte.compliance.v1.Family`) |
//! | `i/<municipality>/<conditionality>/<period>` | outcome counts for indicators (JSON) |
//! | `m/<municipality>/<nis>` | index of the persons of a municipality (empty value) |
//!
//! Identity resolution: a health record keyed by CNS or CPF is applied to the NIS the registry's
//! crosswalk gives; without one it is parked (never dropped) and applied when a profile carrying
//! that identifier arrives. A profile that stops carrying an identifier, or a second profile
//! that claims it, moves the records that arrived under it.
use std::collections::{BTreeMap, BTreeSet};

use ponte_domain::effects::{Effect as DomainEffect, FamilyEffects};
use ponte_domain::ids::{Cns, Cpf, IbgeMunicipality, Inep, Nis};
use ponte_domain::indicators::Counts;
use ponte_domain::outcome::{Outcome, Status};
use ponte_domain::period::{Date, Month, Period};
use ponte_domain::records::{
    self as dr, Appeal, AppealStatus, Attendance, FamilyFollowUp, FamilyId, FamilyRecord,
    FamilyState, PersonRecord, PersonState, Pregnancy, Sex,
};
use ponte_domain::rules::{EffectScope, RuleSet};
use ponte_proto::Timestamp;
use ponte_proto::compliance::v1 as api;
use ponte_proto::events::v1::{self as ev, Event, event::Record, health_follow_up::Subject};
use prost::Message as _;
use serde::{Deserialize, Serialize};

use crate::ReconcilerError;

pub use ponte_store::Entry;

/// State changes of a transaction: `Some` puts, `None` deletes.
pub type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Reads committed state.
pub trait Kv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReconcilerError>;
    /// Entries whose key starts with `prefix`, in key order.
    fn scan(&self, prefix: &[u8]) -> Result<Vec<Entry>, ReconcilerError>;
    /// Up to `limit` entries under `prefix` with keys greater than `after`.
    fn scan_after(
        &self,
        prefix: &[u8],
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, ReconcilerError> {
        Ok(self
            .scan(prefix)?
            .into_iter()
            .filter(|(k, _)| k.as_slice() > after)
            .take(limit)
            .collect())
    }
}

impl Kv for ponte_store::Store {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReconcilerError> {
        Ok(ponte_store::Store::get(self, key)?)
    }
    fn scan(&self, prefix: &[u8]) -> Result<Vec<Entry>, ReconcilerError> {
        Ok(self.scan_prefix(prefix)?)
    }
    fn scan_after(
        &self,
        prefix: &[u8],
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, ReconcilerError> {
        Ok(self.scan_prefix_after(prefix, after, limit)?)
    }
}

/// A message to publish once the batch that produced it is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub kind: OutputKind,
    pub key: String,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OutputKind {
    /// `compliance.changes.v1`: a `ComplianceChange`.
    Change,
    /// `compliance.alerts.v1`: a `ComplianceAlert`.
    Alert,
}

/// Uncommitted state changes of a batch, readable before the commit.
pub struct Tx<'a> {
    base: &'a dyn Kv,
    writes: Writes,
    outputs: Vec<Output>,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("writes", &self.writes.len())
            .field("outputs", &self.outputs.len())
            .finish()
    }
}

impl<'a> Tx<'a> {
    pub fn new(base: &'a dyn Kv) -> Self {
        Self {
            base,
            writes: BTreeMap::new(),
            outputs: Vec::new(),
        }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReconcilerError> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }

    pub fn scan(&self, prefix: &[u8]) -> Result<Vec<Entry>, ReconcilerError> {
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = self.base.scan(prefix)?.into_iter().collect();
        for (k, v) in self.writes.range(prefix.to_vec()..) {
            if !k.starts_with(prefix) {
                break;
            }
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        Ok(merged.into_iter().collect())
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    /// The state changes: `Some` to put, `None` to delete.
    pub fn writes(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.writes
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_deref()))
    }

    pub fn outputs(&self) -> &[Output] {
        &self.outputs
    }

    /// Takes the changes and outputs, leaving the transaction empty.
    pub fn take(&mut self) -> (Writes, Vec<Output>) {
        (
            std::mem::take(&mut self.writes),
            std::mem::take(&mut self.outputs),
        )
    }

    fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, ReconcilerError> {
        self.get(key)?
            .map(|b| serde_json::from_slice(&b).map_err(|e| corrupt(key, e)))
            .transpose()
    }

    fn put_json<T: Serialize>(&mut self, key: Vec<u8>, value: &T) -> Result<(), ReconcilerError> {
        let bytes = serde_json::to_vec(value).map_err(|e| corrupt(&key, e))?;
        self.put(key, bytes);
        Ok(())
    }

    fn get_proto<M: prost::Message + Default>(
        &self,
        key: &[u8],
    ) -> Result<Option<M>, ReconcilerError> {
        self.get(key)?
            .map(|b| M::decode(b.as_slice()).map_err(|e| corrupt(key, e)))
            .transpose()
    }
}

fn corrupt(key: &[u8], e: impl std::fmt::Display) -> ReconcilerError {
    ReconcilerError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    }
}

/// The input topics, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Input {
    Registry,
    Education,
    Health,
    AssistancePerson,
    AssistanceFamily,
}

/// What applying one event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The records held changed (views may or may not have changed).
    Changed,
    /// The event changed nothing (a duplicate or a lower version).
    Unchanged,
    /// A health record whose identifier is not in the crosswalk was parked.
    Parked,
    /// The event cannot be applied: counted and logged, never silently dropped.
    Invalid(String),
}

impl Applied {
    pub fn label(&self) -> &'static str {
        match self {
            Applied::Changed => "changed",
            Applied::Unchanged => "unchanged",
            Applied::Parked => "parked",
            Applied::Invalid(_) => "invalid",
        }
    }
}

/// The records of one person as persisted.
#[derive(Debug, Default, Serialize, Deserialize)]
struct PersonDoc {
    records: Vec<PersonRecord>,
    /// Record id → the identifier a health record arrived as (`cns:…`).
    #[serde(default)]
    health_arrived_as: BTreeMap<String, String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct FamilyDoc {
    records: Vec<FamilyRecord>,
}

/// The topology with its configuration: one rule set and the monitoring window.
#[derive(Debug, Clone)]
pub struct Topology {
    rules: RuleSet,
    from: Month,
    to: Month,
}

fn key(parts: &[&str]) -> Vec<u8> {
    parts.join("/").into_bytes()
}

fn invalid(what: &str, e: impl std::fmt::Display) -> Applied {
    Applied::Invalid(format!("{what}: {e}"))
}

impl Topology {
    /// `from..=to` is the monitoring window: every period overlapping it is evaluated.
    pub fn new(rules: RuleSet, from: Month, to: Month) -> Self {
        Self { rules, from, to }
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Applies one event from `input` to the state in `tx`, recording outputs.
    pub fn apply(
        &self,
        tx: &mut Tx<'_>,
        input: Input,
        event: &Event,
    ) -> Result<Applied, ReconcilerError> {
        let at = event.ingest_time;
        match (&event.record, input) {
            (Some(Record::PersonProfile(p)), Input::Registry) => match profile(event, p) {
                Ok(profile) => self.apply_profile(tx, profile, at),
                Err(e) => Ok(e),
            },
            (Some(Record::SchoolAttendance(a)), Input::Education) => match school(event, a) {
                Ok(r) => self.apply_person_record(tx, PersonRecord::School(r), None, at),
                Err(e) => Ok(e),
            },
            (Some(Record::ScfvAttendance(a)), Input::AssistancePerson) => match scfv(event, a) {
                Ok(r) => self.apply_person_record(tx, PersonRecord::Scfv(r), None, at),
                Err(e) => Ok(e),
            },
            (Some(Record::HealthFollowUp(h)), Input::Health) => self.apply_health(tx, event, h),
            (Some(Record::FamilyFollowUp(f)), Input::AssistanceFamily) => match follow_up(event, f)
            {
                Ok(r) => self.apply_family_record(tx, FamilyRecord::FollowUp(r), at),
                Err(e) => Ok(e),
            },
            (Some(Record::Appeal(a)), Input::AssistanceFamily) => match appeal(event, a) {
                Ok(r) => self.apply_family_record(tx, FamilyRecord::Appeal(r), at),
                Err(e) => Ok(e),
            },
            (None, _) => Ok(Applied::Invalid("event carries no record".into())),
            (Some(_), input) => Ok(Applied::Invalid(format!(
                "record type not expected on the {input:?} topic"
            ))),
        }
    }

    // ---- persons -------------------------------------------------------------------------

    fn load_person(
        &self,
        tx: &Tx<'_>,
        nis: Nis,
    ) -> Result<(PersonState, PersonDoc), ReconcilerError> {
        let doc: PersonDoc = tx.get_json(&key(&["p", nis.as_str()]))?.unwrap_or_default();
        let mut state = PersonState::new(nis);
        for r in &doc.records {
            // Records were checked against this NIS when first applied.
            let _ = state.apply(r.clone());
        }
        Ok((state, doc))
    }

    fn save_person(
        &self,
        tx: &mut Tx<'_>,
        state: &PersonState,
        doc: &mut PersonDoc,
    ) -> Result<(), ReconcilerError> {
        let mut records: Vec<PersonRecord> = Vec::new();
        records.extend(state.profiles.entries().cloned().map(PersonRecord::Profile));
        records.extend(state.school.entries().cloned().map(PersonRecord::School));
        records.extend(state.scfv.entries().cloned().map(PersonRecord::Scfv));
        records.extend(state.health.entries().cloned().map(PersonRecord::Health));
        doc.records = records;
        tx.put_json(key(&["p", state.nis().as_str()]), doc)
    }

    fn apply_person_record(
        &self,
        tx: &mut Tx<'_>,
        record: PersonRecord,
        arrived_as: Option<String>,
        at: Option<Timestamp>,
    ) -> Result<Applied, ReconcilerError> {
        let nis = record.nis();
        let (mut state, mut doc) = self.load_person(tx, nis)?;
        let rid = match &record {
            PersonRecord::Health(h) => Some(h.record_id.clone()),
            _ => None,
        };
        let applied = state
            .apply(record)
            .map_err(|e| ReconcilerError::Misrouted(e.to_string()))?;
        if !applied.changed() {
            return Ok(Applied::Unchanged);
        }
        if let (Some(rid), Some(alt)) = (rid, arrived_as) {
            doc.health_arrived_as.insert(rid, alt);
        }
        self.save_person(tx, &state, &mut doc)?;
        self.refresh_person(tx, &state, &doc, at)?;
        Ok(Applied::Changed)
    }

    fn apply_profile(
        &self,
        tx: &mut Tx<'_>,
        profile: dr::PersonProfile,
        at: Option<Timestamp>,
    ) -> Result<Applied, ReconcilerError> {
        let nis = profile.nis;
        let (mut state, mut doc) = self.load_person(tx, nis)?;
        let old_family = state.profile().map(|p| p.family_id.clone());
        let applied = state
            .apply(PersonRecord::Profile(profile))
            .map_err(|e| ReconcilerError::Misrouted(e.to_string()))?;
        if !applied.changed() {
            return Ok(Applied::Unchanged);
        }
        self.save_person(tx, &state, &mut doc)?;

        // Family membership.
        let new_family = state.profile().map(|p| p.family_id.clone());
        if old_family != new_family {
            if let Some(f) = &old_family {
                self.set_member(tx, f, nis, false)?;
            }
            match &new_family {
                Some(f) => {
                    self.set_member(tx, f, nis, true)?;
                    tx.put(key(&["pf", nis.as_str()]), f.as_str().as_bytes().to_vec());
                }
                None => tx.delete(key(&["pf", nis.as_str()])),
            }
        }

        // Crosswalk: identifiers the live profile carries now versus before.
        let now: BTreeSet<String> = state.profile().map(alt_ids).unwrap_or_default();
        let before: BTreeSet<String> = tx
            .get_json(&key(&["xo", nis.as_str()]))?
            .unwrap_or_default();
        tx.put_json(key(&["xo", nis.as_str()]), &now)?;
        for alt in before.difference(&now) {
            // This person no longer carries `alt`: unmap it and park what arrived under it.
            let xkey = key(&["x", alt]);
            if tx.get(&xkey)?.as_deref() == Some(nis.as_str().as_bytes()) {
                tx.delete(xkey);
            }
            self.unresolve(tx, alt, nis, at)?;
        }
        // Unresolving may have removed records: refresh from what is stored now.
        let (state, doc) = self.load_person(tx, nis)?;
        self.refresh_person(tx, &state, &doc, at)?;
        for alt in now.difference(&before) {
            let xkey = key(&["x", alt]);
            if let Some(prev) = tx.get(&xkey)?
                && prev != nis.as_str().as_bytes()
                && let Ok(prev) = Nis::parse(&String::from_utf8_lossy(&prev))
            {
                // Another person carried it before: their records under `alt` move here.
                self.unresolve(tx, alt, prev, at)?;
            }
            tx.put(xkey, nis.as_str().as_bytes().to_vec());
            self.release_parked(tx, alt, nis, at)?;
        }
        if let Some(f) = &old_family
            && Some(f) != new_family.as_ref()
        {
            self.refresh_family(tx, f, at)?;
        }
        if let Some(f) = &new_family {
            self.refresh_family(tx, f, at)?;
        }
        Ok(Applied::Changed)
    }

    /// Removes the health records that arrived as `alt` from `nis` and parks them again.
    fn unresolve(
        &self,
        tx: &mut Tx<'_>,
        alt: &str,
        nis: Nis,
        at: Option<Timestamp>,
    ) -> Result<(), ReconcilerError> {
        let prefix = key(&["h", alt, ""]);
        let moved: Vec<String> = tx
            .scan(&prefix)?
            .into_iter()
            .filter(|(_, v)| v == nis.as_str().as_bytes())
            .map(|(k, _)| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
            .collect();
        if moved.is_empty() {
            return Ok(());
        }
        let (state, mut doc) = self.load_person(tx, nis)?;
        let mut kept = PersonState::new(nis);
        for r in state.health.entries() {
            if moved.contains(&r.record_id) {
                // Park the record again, as an event, so it follows the identifier.
                let event = health_event_from(r, alt);
                tx.put(key(&["k", alt, &r.record_id]), event.encode_to_vec());
                tx.delete(key(&["h", alt, &r.record_id]));
                doc.health_arrived_as.remove(&r.record_id);
            } else {
                let _ = kept.apply(PersonRecord::Health(r.clone()));
            }
        }
        for r in state.profiles.entries() {
            let _ = kept.apply(PersonRecord::Profile(r.clone()));
        }
        for r in state.school.entries() {
            let _ = kept.apply(PersonRecord::School(r.clone()));
        }
        for r in state.scfv.entries() {
            let _ = kept.apply(PersonRecord::Scfv(r.clone()));
        }
        self.save_person(tx, &kept, &mut doc)?;
        self.refresh_person(tx, &kept, &doc, at)
    }

    /// Applies the records parked under `alt` to `nis`.
    fn release_parked(
        &self,
        tx: &mut Tx<'_>,
        alt: &str,
        nis: Nis,
        at: Option<Timestamp>,
    ) -> Result<(), ReconcilerError> {
        let parked = tx.scan(&key(&["k", alt, ""]))?;
        for (k, bytes) in parked {
            tx.delete(k);
            let event = Event::decode(bytes.as_slice()).map_err(|e| corrupt(b"k/", e))?;
            if let Some(Record::HealthFollowUp(h)) = &event.record {
                match health(&event, h, nis) {
                    Ok(r) => {
                        tx.put(
                            key(&["h", alt, &r.record_id]),
                            nis.as_str().as_bytes().to_vec(),
                        );
                        self.apply_person_record(
                            tx,
                            PersonRecord::Health(r),
                            Some(alt.to_owned()),
                            at.or(event.ingest_time),
                        )?;
                    }
                    Err(e) => tracing::warn!(reason = ?e, "parked record cannot be applied"),
                }
            }
        }
        Ok(())
    }

    fn apply_health(
        &self,
        tx: &mut Tx<'_>,
        event: &Event,
        h: &ev::HealthFollowUp,
    ) -> Result<Applied, ReconcilerError> {
        let alt = match &h.subject {
            Some(Subject::Nis(n)) => {
                let nis = match Nis::parse(n) {
                    Ok(n) => n,
                    Err(e) => return Ok(invalid("nis", e)),
                };
                return match health(event, h, nis) {
                    Ok(r) => self.apply_person_record(
                        tx,
                        PersonRecord::Health(r),
                        Some(format!("nis:{nis}")),
                        event.ingest_time,
                    ),
                    Err(e) => Ok(e),
                };
            }
            Some(Subject::Cns(c)) => match Cns::parse(c) {
                Ok(c) => format!("cns:{c}"),
                Err(e) => return Ok(invalid("cns", e)),
            },
            Some(Subject::Cpf(c)) => match Cpf::parse(c) {
                Ok(c) => format!("cpf:{c}"),
                Err(e) => return Ok(invalid("cpf", e)),
            },
            None => return Ok(Applied::Invalid("health record names no person".into())),
        };
        let resolved = tx
            .get(&key(&["x", &alt]))?
            .and_then(|b| Nis::parse(&String::from_utf8_lossy(&b)).ok());
        match resolved {
            Some(nis) => match health(event, h, nis) {
                Ok(r) => {
                    tx.put(
                        key(&["h", &alt, &r.record_id]),
                        nis.as_str().as_bytes().to_vec(),
                    );
                    self.apply_person_record(
                        tx,
                        PersonRecord::Health(r),
                        Some(alt),
                        event.ingest_time,
                    )
                }
                Err(e) => Ok(e),
            },
            None => {
                let pkey = key(&["k", &alt, &event.record_id]);
                let held: Option<Event> = tx.get_proto(&pkey)?;
                if held.is_some_and(|held| held.version >= event.version) {
                    return Ok(Applied::Unchanged);
                }
                tx.put(pkey, event.encode_to_vec());
                Ok(Applied::Parked)
            }
        }
    }

    fn refresh_person(
        &self,
        tx: &mut Tx<'_>,
        state: &PersonState,
        doc: &PersonDoc,
        at: Option<Timestamp>,
    ) -> Result<(), ReconcilerError> {
        let nis = state.nis();
        let outcomes = self
            .rules
            .evaluate_person_between(state, self.from, self.to);
        let mut view = self.person_view(state, doc, &outcomes);
        let vkey = key(&["v", "p", nis.as_str()]);
        let old: Option<api::Person> = tx.get_proto(&vkey)?;
        let old_outcomes = old.as_ref().map(|o| o.outcomes.clone()).unwrap_or_default();
        if let Some(old) = &old {
            let mut cmp = old.clone();
            cmp.view_version = 0;
            cmp.updated_time = None;
            if cmp == view {
                return Ok(());
            }
        }
        view.view_version = old.as_ref().map_or(0, |o| o.view_version) + 1;
        view.updated_time = at;
        self.update_indicators(tx, old.as_ref(), &view)?;
        // Municipality index for listing.
        let old_mun = old
            .as_ref()
            .map(|o| o.municipality.clone())
            .unwrap_or_default();
        if old_mun != view.municipality {
            if !old_mun.is_empty() {
                tx.delete(key(&["m", &old_mun, nis.as_str()]));
            }
            if !view.municipality.is_empty() {
                tx.put(key(&["m", &view.municipality, nis.as_str()]), Vec::new());
            }
        }
        // Alerts for members newly non-compliant.
        for o in &view.outcomes {
            let was = old_outcomes.iter().any(|p| {
                p.conditionality == o.conditionality && p.period == o.period && p.status == o.status
            });
            if o.status == api::OutcomeStatus::NonCompliant as i32 && !was {
                let alert = api::ComplianceAlert {
                    family_id: view.family_id.clone(),
                    nis: view.nis.clone(),
                    municipality: view.municipality.clone(),
                    conditionality: o.conditionality.clone(),
                    period: o.period.clone(),
                    effects: o.effects.clone(),
                    note: o.note.clone(),
                    event_ingest_time: at,
                };
                tx.outputs.push(Output {
                    kind: OutputKind::Alert,
                    key: view.family_id.clone(),
                    payload: alert.encode_to_vec(),
                });
            }
        }
        tx.outputs.push(Output {
            kind: OutputKind::Change,
            key: format!("person:{nis}"),
            payload: api::ComplianceChange {
                view: Some(api::compliance_change::View::Person(view.clone())),
            }
            .encode_to_vec(),
        });
        tx.put(vkey, view.encode_to_vec());
        if old_outcomes != view.outcomes
            && let Some(p) = state.profile()
        {
            self.refresh_family(tx, &p.family_id.clone(), at)?;
        }
        Ok(())
    }

    fn update_indicators(
        &self,
        tx: &mut Tx<'_>,
        old: Option<&api::Person>,
        new: &api::Person,
    ) -> Result<(), ReconcilerError> {
        let mut delta: BTreeMap<Vec<u8>, Vec<(i32, bool)>> = BTreeMap::new();
        if let Some(old) = old {
            for o in &old.outcomes {
                delta
                    .entry(key(&["i", &old.municipality, &o.conditionality, &o.period]))
                    .or_default()
                    .push((o.status, false));
            }
        }
        for o in &new.outcomes {
            delta
                .entry(key(&["i", &new.municipality, &o.conditionality, &o.period]))
                .or_default()
                .push((o.status, true));
        }
        for (k, changes) in delta {
            let mut counts: Counts = tx.get_json(&k)?.unwrap_or_default();
            for (status, add) in changes {
                let Some(status) = domain_status(status) else {
                    continue;
                };
                if add {
                    counts.add(status);
                } else {
                    counts.remove(status);
                }
            }
            tx.put_json(k, &counts)?;
        }
        Ok(())
    }

    fn person_view(
        &self,
        state: &PersonState,
        doc: &PersonDoc,
        outcomes: &[Outcome],
    ) -> api::Person {
        let profile = state.profile();
        let mut school: Vec<api::AttendanceRecord> = state
            .school
            .live()
            .map(|r| {
                let (given, attended) = match r.attendance {
                    Attendance::Counts { given, attended } => (given, attended),
                    Attendance::Percent(_) => (0, 0),
                };
                api::AttendanceRecord {
                    record_id: r.record_id.clone(),
                    version: r.version,
                    source_system: r.record_id.split(':').next().unwrap_or_default().to_owned(),
                    inep_school_code: r.inep.map(|i| i.to_string()).unwrap_or_default(),
                    month: r.month.to_string(),
                    bimester: ponte_domain::period::Bimester::containing(r.month)
                        .map(|b| b.to_string())
                        .unwrap_or_default(),
                    attendance_bp: r.attendance.percent_hundredths().unwrap_or(10_000),
                    given,
                    attended,
                    low_attendance_reason: r.reason_code.clone().unwrap_or_default(),
                    event_time: None,
                }
            })
            .collect();
        school
            .sort_by(|a, b| (&a.month, &a.inep_school_code).cmp(&(&b.month, &b.inep_school_code)));
        let health_records = state
            .health
            .live()
            .map(|h| api::HealthRecordView {
                record_id: h.record_id.clone(),
                version: h.version,
                arrived_as: doc
                    .health_arrived_as
                    .get(&h.record_id)
                    .cloned()
                    .unwrap_or_default(),
                encounter_date: h.recorded_on.to_string(),
                vaccination_up_to_date: h.vaccination_up_to_date,
                weight_grams: h.weight_grams,
                height_mm: h.height_mm,
                pregnant: h.pregnant.unwrap_or(false),
                prenatal_care: h.prenatal.unwrap_or(false),
            })
            .collect();
        api::Person {
            nis: state.nis().to_string(),
            school_attendance: school,
            view_version: 0,
            updated_time: None,
            family_id: profile.map(|p| p.family_id.to_string()).unwrap_or_default(),
            municipality: profile
                .map(|p| p.municipality.to_string())
                .unwrap_or_default(),
            registered: profile.is_some(),
            outcomes: outcomes.iter().map(outcome_view).collect(),
            health_records,
        }
    }

    // ---- families ------------------------------------------------------------------------

    fn set_member(
        &self,
        tx: &mut Tx<'_>,
        family: &FamilyId,
        nis: Nis,
        member: bool,
    ) -> Result<(), ReconcilerError> {
        let k = key(&["fm", family.as_str()]);
        let mut members: BTreeSet<String> = tx.get_json(&k)?.unwrap_or_default();
        if member {
            members.insert(nis.to_string());
        } else {
            members.remove(nis.as_str());
        }
        tx.put_json(k, &members)
    }

    fn apply_family_record(
        &self,
        tx: &mut Tx<'_>,
        record: FamilyRecord,
        at: Option<Timestamp>,
    ) -> Result<Applied, ReconcilerError> {
        let fid = match &record {
            FamilyRecord::FollowUp(r) => r.family_id.clone(),
            FamilyRecord::Appeal(r) => r.family_id.clone(),
        };
        let (mut state, _) = self.load_family(tx, &fid)?;
        let applied = state
            .apply(record)
            .map_err(|e| ReconcilerError::Misrouted(e.to_string()))?;
        if !applied.changed() {
            return Ok(Applied::Unchanged);
        }
        let mut records: Vec<FamilyRecord> = state
            .follow_ups
            .entries()
            .cloned()
            .map(FamilyRecord::FollowUp)
            .collect();
        records.extend(state.appeals.entries().cloned().map(FamilyRecord::Appeal));
        tx.put_json(key(&["f", fid.as_str()]), &FamilyDoc { records })?;
        self.refresh_family(tx, &fid, at)?;
        Ok(Applied::Changed)
    }

    fn load_family(
        &self,
        tx: &Tx<'_>,
        fid: &FamilyId,
    ) -> Result<(FamilyState, FamilyDoc), ReconcilerError> {
        let doc: FamilyDoc = tx.get_json(&key(&["f", fid.as_str()]))?.unwrap_or_default();
        let mut state = FamilyState::new(fid.clone());
        for r in &doc.records {
            let _ = state.apply(r.clone());
        }
        Ok((state, doc))
    }

    fn refresh_family(
        &self,
        tx: &mut Tx<'_>,
        fid: &FamilyId,
        at: Option<Timestamp>,
    ) -> Result<(), ReconcilerError> {
        let (state, _) = self.load_family(tx, fid)?;
        let members: BTreeSet<String> = tx
            .get_json(&key(&["fm", fid.as_str()]))?
            .unwrap_or_default();
        let mut outcomes = Vec::new();
        for m in &members {
            if let Ok(nis) = Nis::parse(m) {
                let (ps, _) = self.load_person(tx, nis)?;
                outcomes.extend(self.rules.evaluate_person_between(&ps, self.from, self.to));
            }
        }
        let effects = self.rules.evaluate_family(&state, &outcomes);
        let mut view = family_view(fid, &members, &effects, &outcomes);
        let vkey = key(&["v", "f", fid.as_str()]);
        let old: Option<api::Family> = tx.get_proto(&vkey)?;
        if let Some(old) = &old {
            let mut cmp = old.clone();
            cmp.view_version = 0;
            cmp.updated_time = None;
            if cmp == view {
                return Ok(());
            }
        }
        view.view_version = old.as_ref().map_or(0, |o| o.view_version) + 1;
        view.updated_time = at;
        tx.outputs.push(Output {
            kind: OutputKind::Change,
            key: format!("family:{fid}"),
            payload: api::ComplianceChange {
                view: Some(api::compliance_change::View::Family(view.clone())),
            }
            .encode_to_vec(),
        });
        tx.put(vkey, view.encode_to_vec());
        Ok(())
    }
}

// ---- reads ---------------------------------------------------------------------------------

/// The stored view of a person.
pub fn read_person(kv: &dyn Kv, nis: &Nis) -> Result<Option<api::Person>, ReconcilerError> {
    let k = key(&["v", "p", nis.as_str()]);
    kv.get(&k)?
        .map(|b| api::Person::decode(b.as_slice()).map_err(|e| corrupt(&k, e)))
        .transpose()
}

/// The stored view of a family.
pub fn read_family(kv: &dyn Kv, family_id: &str) -> Result<Option<api::Family>, ReconcilerError> {
    let k = key(&["v", "f", family_id]);
    kv.get(&k)?
        .map(|b| api::Family::decode(b.as_slice()).map_err(|e| corrupt(&k, e)))
        .transpose()
}

/// Parked health records: (identifier, event).
pub fn read_parked(kv: &dyn Kv) -> Result<Vec<(String, Event)>, ReconcilerError> {
    let mut out = Vec::new();
    for (k, v) in kv.scan(b"k/")? {
        let s = String::from_utf8_lossy(&k).into_owned();
        let alt = s.split('/').nth(1).unwrap_or_default().to_owned();
        out.push((
            alt,
            Event::decode(v.as_slice()).map_err(|e| corrupt(&k, e))?,
        ));
    }
    Ok(out)
}

/// Up to `limit` persons of a municipality with NIS after `after`, in NIS order, that `keep`
/// accepts.
pub fn list_persons(
    kv: &dyn Kv,
    municipality: &str,
    after: &str,
    limit: usize,
    keep: &dyn Fn(&api::Person) -> bool,
) -> Result<Vec<api::Person>, ReconcilerError> {
    let prefix = key(&["m", municipality, ""]);
    let mut cursor = [prefix.as_slice(), after.as_bytes()].concat();
    let mut out = Vec::new();
    loop {
        let page = kv.scan_after(&prefix, &cursor, 512)?;
        let Some((last, _)) = page.last() else { break };
        cursor = last.clone();
        for (k, _) in &page {
            let nis = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let Ok(n) = Nis::parse(&nis) else { continue };
            if let Some(p) = read_person(kv, &n)?
                && keep(&p)
            {
                out.push(p);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
    }
    Ok(out)
}

/// Rebuilds every indicator count from the stored person views (after a restore from the
/// changelog, which holds the latest value of each key but not one consistent cut across keys).
pub fn rebuild_indicators(store: &ponte_store::Store) -> Result<(), ReconcilerError> {
    let mut counts: BTreeMap<Vec<u8>, Counts> = BTreeMap::new();
    for (k, v) in store.scan_prefix(b"v/p/")? {
        let p = api::Person::decode(v.as_slice()).map_err(|e| corrupt(&k, e))?;
        for o in &p.outcomes {
            if let Some(status) = domain_status(o.status) {
                counts
                    .entry(key(&["i", &p.municipality, &o.conditionality, &o.period]))
                    .or_default()
                    .add(status);
            }
        }
    }
    let mut w = store.batch();
    for (k, _) in store.scan_prefix(b"i/")? {
        w.delete(&k);
    }
    for (k, c) in &counts {
        let bytes = serde_json::to_vec(c).map_err(|e| corrupt(k, e))?;
        w.put(k, &bytes);
    }
    w.commit()?;
    Ok(())
}

/// Outcome counts for a municipality, per (conditionality, period).
pub fn read_indicators(
    kv: &dyn Kv,
    municipality: &str,
) -> Result<Vec<(String, String, Counts)>, ReconcilerError> {
    let prefix = key(&["i", municipality, ""]);
    let mut out = Vec::new();
    for (k, v) in kv.scan(&prefix)? {
        let rest = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        let Some((cond, period)) = rest.split_once('/') else {
            continue;
        };
        let counts: Counts = serde_json::from_slice(&v).map_err(|e| corrupt(&k, e))?;
        out.push((cond.to_owned(), period.to_owned(), counts));
    }
    Ok(out)
}

// ---- mapping between the wire and the domain -------------------------------------------

fn alt_ids(p: &dr::PersonProfile) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Some(c) = &p.cns {
        out.insert(format!("cns:{c}"));
    }
    if let Some(c) = &p.cpf {
        out.insert(format!("cpf:{c}"));
    }
    out
}

fn date(field: &str, s: &str) -> Result<Date, Applied> {
    Date::parse(s).map_err(|e| invalid(field, e))
}

fn opt_date(field: &str, s: &str) -> Result<Option<Date>, Applied> {
    if s.is_empty() {
        Ok(None)
    } else {
        date(field, s).map(Some)
    }
}

fn profile(e: &Event, p: &ev::PersonProfile) -> Result<dr::PersonProfile, Applied> {
    let nis = Nis::parse(&p.nis).map_err(|x| invalid("nis", x))?;
    let municipality =
        IbgeMunicipality::parse(&p.municipality).map_err(|x| invalid("municipality", x))?;
    let school = if p.inep_school_code.is_empty() {
        None
    } else {
        Some(Inep::parse(&p.inep_school_code).map_err(|x| invalid("inep_school_code", x))?)
    };
    let cns = match p.cns.first() {
        Some(c) => Some(Cns::parse(c).map_err(|x| invalid("cns", x))?),
        None => None,
    };
    let cpf = if p.cpf.is_empty() {
        None
    } else {
        Some(Cpf::parse(&p.cpf).map_err(|x| invalid("cpf", x))?)
    };
    let sex = match p.sex.as_str() {
        "F" | "f" => Sex::Female,
        "M" | "m" => Sex::Male,
        other => return Err(Applied::Invalid(format!("sex: {other:?} is not F or M"))),
    };
    Ok(dr::PersonProfile {
        record_id: e.record_id.clone(),
        version: e.version,
        retracted: e.retraction,
        nis,
        family_id: FamilyId(p.family_id.clone()),
        birth_date: date("birth_date", &p.birth_date)?,
        sex,
        municipality,
        school,
        cns,
        cpf,
        pregnancy: p.pregnant.then(|| Pregnancy {
            expected_delivery: Date::parse(&p.expected_delivery_date).ok(),
        }),
        basic_education_completed: p.basic_education_completed,
        programmes: p.memberships.iter().cloned().collect(),
    })
}

fn school(e: &Event, a: &ev::SchoolAttendance) -> Result<dr::SchoolAttendanceMonth, Applied> {
    let attendance = if a.given > 0 {
        Attendance::Counts {
            given: a.given,
            attended: a.attended,
        }
    } else {
        // Basis points to a whole percentage, rounded down: a threshold is met only when the
        // reported figure is at or above it.
        Attendance::Percent(u8::try_from(a.attendance_bp / 100).unwrap_or(100))
    };
    Ok(dr::SchoolAttendanceMonth {
        record_id: e.record_id.clone(),
        version: e.version,
        retracted: e.retraction,
        nis: Nis::parse(&a.nis).map_err(|x| invalid("nis", x))?,
        inep: Inep::parse(&a.inep_school_code).ok(),
        month: Month::parse(&a.month).map_err(|x| invalid("month", x))?,
        attendance,
        reason_code: (!a.low_attendance_reason.is_empty()).then(|| a.low_attendance_reason.clone()),
    })
}

fn scfv(e: &Event, a: &ev::ScfvAttendance) -> Result<dr::ScfvAttendanceMonth, Applied> {
    Ok(dr::ScfvAttendanceMonth {
        record_id: e.record_id.clone(),
        version: e.version,
        retracted: e.retraction,
        nis: Nis::parse(&a.nis).map_err(|x| invalid("nis", x))?,
        month: Month::parse(&a.month).map_err(|x| invalid("month", x))?,
        attendance: Attendance::Counts {
            given: a.hours_offered,
            attended: a.hours_attended,
        },
        reason_code: (!a.low_attendance_reason.is_empty()).then(|| a.low_attendance_reason.clone()),
    })
}

fn health(e: &Event, h: &ev::HealthFollowUp, nis: Nis) -> Result<dr::HealthRecord, Applied> {
    Ok(dr::HealthRecord {
        record_id: e.record_id.clone(),
        version: e.version,
        retracted: e.retraction,
        nis,
        recorded_on: date("encounter_date", &h.encounter_date)?,
        vaccination_up_to_date: h.vaccination_up_to_date,
        weight_grams: h.weight_grams,
        height_mm: h.height_mm,
        pregnant: h.pregnant.then_some(true),
        last_menstruation: opt_date("last_menstruation_date", &h.last_menstruation_date)?,
        prenatal: h.prenatal_care.then_some(true),
        // FHIR Immunization references are kept as evidence; the vaccines (RNDS codes) too
        // when a system sent no FHIR.
        immunization_refs: if h.fhir_refs.is_empty() {
            h.vaccines.clone()
        } else {
            h.fhir_refs.clone()
        },
    })
}

/// Rebuilds the event of a health record, to park it again under the identifier it arrived as.
fn health_event_from(r: &dr::HealthRecord, alt: &str) -> Event {
    let subject = match alt.split_once(':') {
        Some(("cpf", v)) => Subject::Cpf(v.to_owned()),
        Some(("cns", v)) => Subject::Cns(v.to_owned()),
        _ => Subject::Nis(r.nis.to_string()),
    };
    Event {
        record_id: r.record_id.clone(),
        version: r.version,
        retraction: r.retracted,
        record: Some(Record::HealthFollowUp(ev::HealthFollowUp {
            subject: Some(subject),
            encounter_date: r.recorded_on.to_string(),
            vaccination_up_to_date: r.vaccination_up_to_date,
            weight_grams: r.weight_grams,
            height_mm: r.height_mm,
            pregnant: r.pregnant.unwrap_or(false),
            prenatal_care: r.prenatal.unwrap_or(false),
            vaccines: r.immunization_refs.clone(),
            last_menstruation_date: r
                .last_menstruation
                .map(|d| d.to_string())
                .unwrap_or_default(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn follow_up(e: &Event, f: &ev::FamilyFollowUp) -> Result<FamilyFollowUp, Applied> {
    let started_on = date("opened_on", &f.opened_on)?;
    Ok(FamilyFollowUp {
        record_id: e.record_id.clone(),
        version: e.version,
        retracted: e.retraction,
        family_id: FamilyId(f.family_id.clone()),
        started_on,
        ended_on: opt_date("closed_on", &f.closed_on)?,
        // Without a request date, the interruption counts from the opening of the follow-up.
        interruption_requested_on: if f.interrupt_effects {
            Some(
                opt_date("interruption_requested_on", &f.interruption_requested_on)?
                    .unwrap_or(started_on),
            )
        } else {
            None
        },
    })
}

fn appeal(e: &Event, a: &ev::Appeal) -> Result<Appeal, Applied> {
    let status = match a.decision.as_str() {
        "" => AppealStatus::Pending,
        "ACCEPTED" => AppealStatus::Accepted,
        "REJECTED" => AppealStatus::Rejected,
        other => {
            return Err(Applied::Invalid(format!(
                "decision: {other:?} is not ACCEPTED or REJECTED"
            )));
        }
    };
    Ok(Appeal {
        record_id: e.record_id.clone(),
        version: e.version,
        retracted: e.retraction,
        family_id: FamilyId(a.family_id.clone()),
        nis: if a.nis.is_empty() {
            None
        } else {
            Some(Nis::parse(&a.nis).map_err(|x| invalid("nis", x))?)
        },
        conditionality: (!a.conditionality.is_empty()).then(|| a.conditionality.clone()),
        period: Period::parse(&a.period).map_err(|x| invalid("period", x))?,
        status,
    })
}

fn status_view(s: Status) -> api::OutcomeStatus {
    match s {
        Status::Compliant => api::OutcomeStatus::Compliant,
        Status::NonCompliant => api::OutcomeStatus::NonCompliant,
        Status::NotFollowed => api::OutcomeStatus::NotFollowed,
        Status::NotRequired => api::OutcomeStatus::NotRequired,
    }
}

fn domain_status(s: i32) -> Option<Status> {
    match api::OutcomeStatus::try_from(s).ok()? {
        api::OutcomeStatus::Compliant => Some(Status::Compliant),
        api::OutcomeStatus::NonCompliant => Some(Status::NonCompliant),
        api::OutcomeStatus::NotFollowed => Some(Status::NotFollowed),
        api::OutcomeStatus::NotRequired => Some(Status::NotRequired),
        api::OutcomeStatus::Unspecified => None,
    }
}

fn scope(s: EffectScope) -> &'static str {
    match s {
        EffectScope::Family => "family",
        EffectScope::Member => "member",
        EffectScope::None => "none",
    }
}

fn outcome_view(o: &Outcome) -> api::ConditionalityOutcome {
    let mut record_ids: Vec<String> = o
        .evidence
        .months
        .iter()
        .map(|m| m.record_id.clone())
        .collect();
    if let Some(h) = &o.evidence.health {
        record_ids.extend(h.records.iter().map(|(id, _, _)| id.clone()));
    }
    record_ids.sort();
    record_ids.dedup();
    api::ConditionalityOutcome {
        conditionality: o.conditionality.clone(),
        period: o.period.to_string(),
        status: status_view(o.status) as i32,
        effects: scope(o.effects).to_owned(),
        rule_set: format!("{}@{}", o.rule_set.id, o.rule_set.version),
        threshold_percent: o.evidence.threshold_percent.map(u32::from).unwrap_or(0),
        months_below: o
            .evidence
            .months_below
            .iter()
            .map(ToString::to_string)
            .collect(),
        months_missing: o
            .evidence
            .months_missing
            .iter()
            .map(ToString::to_string)
            .collect(),
        record_ids,
        note: o.evidence.note.clone(),
        evidence_json: serde_json::to_string(&o.evidence).unwrap_or_default(),
    }
}

fn effect_view(e: &DomainEffect) -> api::Effect {
    api::Effect {
        repercussion_month: e.repercussion_month.to_string(),
        sequence: e.sequence,
        name: e.name.clone(),
        money: serde_json::to_value(e.money)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        months: e.months,
        status: serde_json::to_value(e.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        causes: e
            .causes
            .iter()
            .map(|c| format!("{}/{}/{}", c.nis, c.conditionality, c.period))
            .collect(),
    }
}

fn family_view(
    fid: &FamilyId,
    members: &BTreeSet<String>,
    effects: &FamilyEffects,
    outcomes: &[Outcome],
) -> api::Family {
    let mut periods: BTreeSet<String> = BTreeSet::new();
    for o in outcomes {
        if o.status == Status::NonCompliant && o.effects == EffectScope::Family {
            periods.insert(o.period.to_string());
        }
    }
    api::Family {
        family_id: fid.to_string(),
        members: members.iter().cloned().collect(),
        rule_set: format!("{}@{}", effects.rule_set.id, effects.rule_set.version),
        effects: effects.family.iter().map(effect_view).collect(),
        member_effects: effects
            .members
            .iter()
            .map(|(nis, list)| api::MemberEffects {
                nis: nis.to_string(),
                effects: list.iter().map(effect_view).collect(),
            })
            .collect(),
        non_compliant_periods: periods.into_iter().collect(),
        view_version: 0,
        updated_time: None,
        effects_json: serde_json::to_string(effects).unwrap_or_default(),
    }
}
