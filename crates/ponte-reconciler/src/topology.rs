//! The reconciliation topology, as a pure function of (state, event) → (state changes, outputs).
//!
//! Driven by the service's consumer loop with the RocksDB store as state, and by property tests
//! with a map, so the guarantees are tested without a broker. Never reads the clock: the times
//! written into views come from the events.
//!
//! Three stages, each keyed so that everything it joins is on one partition — the unit an
//! instance owns, restores and hands over (Kafka Streams' sub-topologies):
//!
//! 1. **Identity** (keyed by CNS/CPF: the health topic and the group's `crosswalk.v1`): a
//!    health record is forwarded, re-keyed by NIS, to `health-by-nis.v1` when the crosswalk
//!    maps its identifier; otherwise it is parked (never dropped) until a profile claims the
//!    identifier. A claim moves the records that arrived under it (withdrawn from the previous
//!    holder), a release parks them again. Records that arrive with a NIS go straight through.
//! 2. **Person** (keyed by NIS: registry, education, person-level assistance,
//!    `health-by-nis.v1`): the person's records and view; a profile's identifiers go to
//!    `crosswalk.v1` as claims and releases, and the person's outcomes to the family's
//!    partition through `members.v1`.
//! 3. **Family** (keyed by family id: family-level assistance, `members.v1`): the members'
//!    outcomes, follow-up, appeals and the effects ladder.
//!
//! State layout (keys in the store's `state` column family, each under the prefix of its input
//! partition, [`partition_prefix`]):
//!
//! | key | value |
//! |---|---|
//! | `x/<cns:…\|cpf:…>` | crosswalk: the NIS an alternate identifier belongs to |
//! | `e/<alt>/<record id>` | a health record that arrived as `<alt>` and was forwarded (`Event`) |
//! | `k/<alt>/<record id>` | a parked health record (`Event`) |
//! | `p/<nis>` | the person's records (JSON: every entry, tombstones included) |
//! | `xo/<nis>` | the alternate identifiers the person's profile currently carries (JSON) |
//! | `d/p/<nis>` | digest of the person's last published view ([`PersonDigest`]) |
//! | `f/<family id>` | the family's assistance records (JSON) |
//! | `fm/<family id>` | the family's members and their non-compliant outcomes (JSON) |
//! | `d/f/<family id>` | digest of the family's last published view ([`FamilyDigest`]) |
//!
//! Views go out on `compliance.changes.v1`; what answers queries is the read model built from
//! that topic ([`crate::readmodel`]), so every instance can answer for every person.
use std::collections::{BTreeMap, BTreeSet};

use ponte_domain::effects::{Effect as DomainEffect, FamilyEffects};
use ponte_domain::ids::{Cns, Cpf, IbgeMunicipality, Inep, Nis};
use ponte_domain::outcome::{Outcome, Status};
use ponte_domain::period::{Date, Month, Period, Semester};
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
    /// The input partition whose state produced it.
    pub partition: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OutputKind {
    /// `compliance.changes.v1`: a `ComplianceChange`.
    Change,
    /// `compliance.alerts.v1`: a `ComplianceAlert`.
    Alert,
    /// The group's `crosswalk.v1`: a [`CrosswalkChange`].
    Crosswalk,
    /// The group's `health-by-nis.v1`: a [`HealthByNis`].
    HealthByNis,
    /// The group's `members.v1`: a [`MemberOutcomes`].
    Member,
    /// `deadletter.v1`: a `DeadLetter` for an event that cannot be applied, keyed by its
    /// source system.
    DeadLetter,
}

impl OutputKind {
    /// The `kind` label of `ponte_reconciler_outputs_published_total`.
    pub fn label(self) -> &'static str {
        match self {
            OutputKind::Change => "change",
            OutputKind::Alert => "alert",
            OutputKind::Crosswalk => "crosswalk",
            OutputKind::HealthByNis => "health_by_nis",
            OutputKind::Member => "member",
            OutputKind::DeadLetter => "dead_letter",
        }
    }

    /// The `ponte-event-type` header of the published message.
    pub fn event_type(self) -> &'static str {
        match self {
            OutputKind::Change => "compliance_change",
            OutputKind::Alert => "compliance_alert",
            other => other.label(),
        }
    }

    /// The `ponte-schema` header: the protobuf package of the payload.
    pub fn schema(self) -> &'static str {
        match self {
            OutputKind::Change | OutputKind::Alert => "ponte.compliance.v1",
            OutputKind::DeadLetter => ponte_proto::EVENTS_SCHEMA,
            OutputKind::Crosswalk | OutputKind::HealthByNis | OutputKind::Member => INTERNAL_SCHEMA,
        }
    }
}

/// The `ponte-schema` header of the reconciler's repartition messages.
pub const INTERNAL_SCHEMA: &str = ponte_proto::RECONCILER_SCHEMA;
/// What repartition messages written before `proto/ponte/reconciler/v1` carried: the same
/// encoding under another name, still read.
const INTERNAL_SCHEMA_UNVERSIONED: &str = "ponte.reconciler";

/// The key prefix of partition `p`'s state: every key of the state of one input partition
/// starts with it, so a partition's state can be dropped, restored or handed over as a whole.
pub fn partition_prefix(p: i32) -> Vec<u8> {
    format!("{p:04}/").into_bytes()
}

/// The input partition a full state key belongs to: the digits before its first `/`, as
/// [`partition_prefix`] writes them; `None` for keys outside every partition (`meta/…`).
pub fn key_partition(key: &[u8]) -> Option<i32> {
    let slash = key.iter().position(|&b| b == b'/')?;
    let digits = &key[..slash];
    if digits.len() < 4 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Uncommitted state changes of a batch, readable before the commit.
///
/// A transaction is scoped to one input partition at a time ([`Tx::set_partition`]): the
/// topology reads and writes plain keys (`p/<nis>`), stored under the partition's prefix.
pub struct Tx<'a> {
    base: &'a dyn Kv,
    writes: Writes,
    outputs: Vec<Output>,
    partition: i32,
    scope: Vec<u8>,
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
            partition: 0,
            scope: partition_prefix(0),
        }
    }

    /// Scopes the following reads, writes and outputs to input partition `p`.
    pub fn set_partition(&mut self, p: i32) {
        if p != self.partition {
            self.partition = p;
            self.scope = partition_prefix(p);
        }
    }

    fn scoped(&self, key: &[u8]) -> Vec<u8> {
        [self.scope.as_slice(), key].concat()
    }

    /// The value of `key` in the current partition.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReconcilerError> {
        let full = self.scoped(key);
        match self.writes.get(&full) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(&full),
        }
    }

    /// Entries of the current partition under `prefix` (keys without the partition prefix).
    pub fn scan(&self, prefix: &[u8]) -> Result<Vec<Entry>, ReconcilerError> {
        let full = self.scoped(prefix);
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = self.base.scan(&full)?.into_iter().collect();
        for (k, v) in self.writes.range(full.clone()..) {
            if !k.starts_with(&full) {
                break;
            }
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        let skip = self.scope.len();
        Ok(merged
            .into_iter()
            .map(|(k, v)| (k[skip..].to_vec(), v))
            .collect())
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        let full = self.scoped(&key);
        self.writes.insert(full, Some(value));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        let full = self.scoped(&key);
        self.writes.insert(full, None);
    }

    /// Records an output of the current partition, published after the commit.
    pub fn emit(&mut self, kind: OutputKind, key: String, payload: Vec<u8>) {
        self.outputs.push(Output {
            kind,
            key,
            payload,
            partition: self.partition,
        });
    }

    /// The state changes (full keys, partition prefix included): `Some` to put, `None` to
    /// delete.
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

/// The input topics, by role. The first five are the shared input topics; the last three are
/// the reconciler group's own repartition topics (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Input {
    Registry,
    Education,
    Health,
    AssistancePerson,
    AssistanceFamily,
    /// A person's profile claimed or released an alternate identifier (keyed by it).
    Crosswalk,
    /// A health record resolved to a NIS, or withdrawn from one (keyed by NIS).
    HealthByNis,
    /// A member's outcomes for the family view (keyed by family id).
    Members,
}

impl Input {
    /// True for the reconciler's own repartition topics, whose payloads are not `Event`s.
    pub fn is_internal(self) -> bool {
        matches!(self, Input::Crosswalk | Input::HealthByNis | Input::Members)
    }

    /// The `ponte-schema` header its messages carry: what the payload is encoded as (one
    /// definition with the header written on outputs, [`OutputKind::schema`]).
    pub fn schema(self) -> &'static str {
        if self.is_internal() {
            INTERNAL_SCHEMA
        } else {
            ponte_proto::EVENTS_SCHEMA
        }
    }

    /// Whether a message whose `ponte-schema` header is `schema` can be read from the topic.
    pub fn reads_schema(self, schema: &[u8]) -> bool {
        schema == self.schema().as_bytes()
            || (self.is_internal() && schema == INTERNAL_SCHEMA_UNVERSIONED.as_bytes())
    }

    /// The protobuf message type of the topic's payloads.
    pub fn message_type(self) -> &'static str {
        match self {
            Input::Registry
            | Input::Education
            | Input::Health
            | Input::AssistancePerson
            | Input::AssistanceFamily => "ponte.events.v1.Event",
            Input::Crosswalk => "ponte.reconciler.v1.CrosswalkChange",
            Input::HealthByNis => "ponte.reconciler.v1.HealthByNis",
            Input::Members => "ponte.reconciler.v1.MemberOutcomes",
        }
    }
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
    /// The event cannot be applied: it goes to the dead-letter topic with the reason
    /// (`crate::service`), never silently dropped.
    Invalid(Unapplicable),
}

/// Why an event cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unapplicable {
    /// Low-cardinality class, as the adapters' dead letters have: `invalid_identifier`,
    /// `invalid_period`, `invalid_value`, `malformed`, `unsupported`.
    pub error_type: &'static str,
    /// The field at fault; empty when no one field is.
    pub field: String,
    /// What is wrong, naming the rule that failed.
    pub reason: String,
}

impl Unapplicable {
    /// A fault of the event as a whole (no one field to blame).
    pub fn of_event(error_type: &'static str, reason: impl Into<String>) -> Self {
        Unapplicable {
            error_type,
            field: String::new(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Unapplicable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
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

pub use ponte_proto::reconciler::v1::{
    CrosswalkChange, FamilyDigest, HealthByNis, MemberOutcomes, NonCompliant, PersonDigest,
};

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

/// The members of a family with their latest non-compliant outcomes, as the members topic
/// delivered them.
type Members = BTreeMap<String, Vec<Outcome>>;

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

/// An event whose `field` breaks a rule; the class follows from the field.
fn invalid(field: &str, e: impl std::fmt::Display) -> Applied {
    let error_type = match field {
        "nis" | "cns" | "cpf" | "municipality" | "inep_school_code" => "invalid_identifier",
        "month" | "period" | "semester" => "invalid_period",
        _ => "invalid_value",
    };
    Applied::Invalid(Unapplicable {
        error_type,
        field: field.to_owned(),
        reason: e.to_string(),
    })
}

fn malformed(reason: impl Into<String>) -> Applied {
    Applied::Invalid(Unapplicable::of_event("malformed", reason))
}

/// The Kafka key of an alternate identifier (`cns:123` → `123`): the digits, as the health
/// adapter keys the records, so both land on the same partition.
fn alt_key(alt: &str) -> &str {
    alt.split_once(':').map_or(alt, |(_, digits)| digits)
}

impl Topology {
    /// `from..=to` is the monitoring window: every period overlapping it is evaluated.
    pub fn new(rules: RuleSet, from: Month, to: Month) -> Self {
        Self { rules, from, to }
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Applies one event from a shared input topic to the state in `tx`, recording outputs.
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
            (None, _) => Ok(malformed("event carries no record")),
            (Some(_), input) => Ok(Applied::Invalid(Unapplicable::of_event(
                "unsupported",
                format!("record type not expected on the {input:?} topic"),
            ))),
        }
    }

    /// Applies one message of the reconciler's own repartition topics. Returns what it did and
    /// the ingest time of the source event behind it.
    pub fn apply_internal(
        &self,
        tx: &mut Tx<'_>,
        input: Input,
        payload: &[u8],
    ) -> Result<(Applied, Option<Timestamp>), ReconcilerError> {
        let undecodable = |e: prost::DecodeError| malformed(format!("undecodable: {e}"));
        match input {
            Input::Crosswalk => match CrosswalkChange::decode(payload) {
                Ok(c) => Ok((self.apply_crosswalk(tx, &c)?, c.at)),
                Err(e) => Ok((undecodable(e), None)),
            },
            Input::HealthByNis => match HealthByNis::decode(payload) {
                Ok(h) => Ok((self.apply_health_by_nis(tx, &h)?, h.at)),
                Err(e) => Ok((undecodable(e), None)),
            },
            Input::Members => match MemberOutcomes::decode(payload) {
                Ok(m) => Ok((self.apply_member(tx, &m)?, m.at)),
                Err(e) => Ok((undecodable(e), None)),
            },
            other => Ok((
                Applied::Invalid(Unapplicable::of_event(
                    "unsupported",
                    format!("{other:?} is not an internal topic"),
                )),
                None,
            )),
        }
    }

    // ---- identity resolution (keyed by CNS/CPF) ---------------------------------------------

    fn apply_health(
        &self,
        tx: &mut Tx<'_>,
        event: &Event,
        h: &ev::HealthFollowUp,
    ) -> Result<Applied, ReconcilerError> {
        let alt = match &h.subject {
            Some(Subject::Nis(n)) => {
                // Already a NIS: straight on to the person (the person stage checks versions).
                let nis = match Nis::parse(n) {
                    Ok(n) => n,
                    Err(e) => return Ok(invalid("nis", e)),
                };
                self.forward_health(tx, nis.as_str(), &format!("nis:{nis}"), event);
                return Ok(Applied::Changed);
            }
            Some(Subject::Cns(c)) => match Cns::parse(c) {
                Ok(c) => format!("cns:{c}"),
                Err(e) => return Ok(invalid("cns", e)),
            },
            Some(Subject::Cpf(c)) => match Cpf::parse(c) {
                Ok(c) => format!("cpf:{c}"),
                Err(e) => return Ok(invalid("cpf", e)),
            },
            None => return Ok(invalid("subject", "health record names no person")),
        };
        let ekey = key(&["e", &alt, &event.record_id]);
        let kkey = key(&["k", &alt, &event.record_id]);
        let held: Option<Event> = match tx.get_proto(&ekey)? {
            Some(e) => Some(e),
            None => tx.get_proto(&kkey)?,
        };
        if held.is_some_and(|held| held.version >= event.version) {
            return Ok(Applied::Unchanged);
        }
        match tx.get(&key(&["x", &alt]))? {
            Some(nis) => {
                let nis = String::from_utf8_lossy(&nis).into_owned();
                tx.put(ekey, event.encode_to_vec());
                self.forward_health(tx, &nis, &alt, event);
                Ok(Applied::Changed)
            }
            None => {
                tx.put(kkey, event.encode_to_vec());
                Ok(Applied::Parked)
            }
        }
    }

    fn forward_health(&self, tx: &mut Tx<'_>, nis: &str, arrived_as: &str, event: &Event) {
        let msg = HealthByNis {
            nis: nis.to_owned(),
            arrived_as: arrived_as.to_owned(),
            event: Some(event.clone()),
            withdraw_record_id: String::new(),
            at: event.ingest_time,
        };
        tx.emit(OutputKind::HealthByNis, nis.to_owned(), msg.encode_to_vec());
    }

    fn withdraw_health(
        &self,
        tx: &mut Tx<'_>,
        nis: &str,
        alt: &str,
        record_id: &str,
        at: Option<Timestamp>,
    ) {
        let msg = HealthByNis {
            nis: nis.to_owned(),
            arrived_as: alt.to_owned(),
            event: None,
            withdraw_record_id: record_id.to_owned(),
            at,
        };
        tx.emit(OutputKind::HealthByNis, nis.to_owned(), msg.encode_to_vec());
    }

    /// A profile claimed or released `alt`: records that arrived under it follow the mapping.
    /// The latest claim wins; a release only counts from the person the identifier maps to.
    fn apply_crosswalk(
        &self,
        tx: &mut Tx<'_>,
        c: &CrosswalkChange,
    ) -> Result<Applied, ReconcilerError> {
        if let Err(e) = Nis::parse(&c.nis) {
            return Ok(invalid("nis", e));
        }
        let xkey = key(&["x", &c.alt]);
        let current = tx
            .get(&xkey)?
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let resolved_prefix = key(&["e", &c.alt, ""]);
        let parked_prefix = key(&["k", &c.alt, ""]);
        if c.carried {
            if current.as_deref() == Some(c.nis.as_str()) {
                return Ok(Applied::Unchanged);
            }
            // Records are held as resolved (`e/`) only while the identifier maps to someone:
            // a first claim has nothing resolved to move, only what is parked.
            let resolved = match &current {
                Some(_) => tx.scan(&resolved_prefix)?,
                None => Vec::new(),
            };
            if let Some(prev) = &current {
                for (k, _) in &resolved {
                    let rid = String::from_utf8_lossy(&k[resolved_prefix.len()..]).into_owned();
                    self.withdraw_health(tx, prev, &c.alt, &rid, c.at);
                }
            }
            tx.put(xkey, c.nis.as_bytes().to_vec());
            let mut all = resolved;
            for (k, v) in tx.scan(&parked_prefix)? {
                let rid = &k[parked_prefix.len()..];
                tx.delete(k.clone());
                let ekey = [resolved_prefix.as_slice(), rid].concat();
                tx.put(ekey.clone(), v.clone());
                all.push((ekey, v));
            }
            for (k, v) in all {
                let event = Event::decode(v.as_slice()).map_err(|e| corrupt(&k, e))?;
                self.forward_health(tx, &c.nis, &c.alt, &event);
            }
            Ok(Applied::Changed)
        } else {
            if current.as_deref() != Some(c.nis.as_str()) {
                return Ok(Applied::Unchanged);
            }
            tx.delete(xkey);
            for (k, v) in tx.scan(&resolved_prefix)? {
                let rid = String::from_utf8_lossy(&k[resolved_prefix.len()..]).into_owned();
                tx.delete(k);
                tx.put([parked_prefix.as_slice(), rid.as_bytes()].concat(), v);
                self.withdraw_health(tx, &c.nis, &c.alt, &rid, c.at);
            }
            Ok(Applied::Changed)
        }
    }

    // ---- persons (keyed by NIS) -------------------------------------------------------------

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
        let arrived_changed = match (&rid, &arrived_as) {
            (Some(rid), Some(alt)) => doc.health_arrived_as.get(rid) != Some(alt),
            _ => false,
        };
        if !applied.changed() && !arrived_changed {
            return Ok(Applied::Unchanged);
        }
        if let (Some(rid), Some(alt)) = (rid, arrived_as) {
            doc.health_arrived_as.insert(rid, alt);
        }
        self.save_person(tx, &state, &mut doc)?;
        self.refresh_person(tx, &state, &doc, at)?;
        Ok(Applied::Changed)
    }

    fn apply_health_by_nis(
        &self,
        tx: &mut Tx<'_>,
        m: &HealthByNis,
    ) -> Result<Applied, ReconcilerError> {
        let nis = match Nis::parse(&m.nis) {
            Ok(n) => n,
            Err(e) => return Ok(invalid("nis", e)),
        };
        let Some(event) = &m.event else {
            return self.withdraw(tx, nis, &m.withdraw_record_id, m.at);
        };
        match &event.record {
            Some(Record::HealthFollowUp(h)) => match health(event, h, nis) {
                Ok(r) => self.apply_person_record(
                    tx,
                    PersonRecord::Health(r),
                    Some(m.arrived_as.clone()),
                    m.at.or(event.ingest_time),
                ),
                Err(e) => Ok(e),
            },
            _ => Ok(malformed("health-by-nis message without a health record")),
        }
    }

    /// Removes health record `record_id` from `nis` (its identifier moved to someone else or
    /// to no one).
    fn withdraw(
        &self,
        tx: &mut Tx<'_>,
        nis: Nis,
        record_id: &str,
        at: Option<Timestamp>,
    ) -> Result<Applied, ReconcilerError> {
        let (state, mut doc) = self.load_person(tx, nis)?;
        if !state.health.entries().any(|r| r.record_id == record_id) {
            return Ok(Applied::Unchanged);
        }
        let mut kept = PersonState::new(nis);
        let records = state
            .profiles
            .entries()
            .cloned()
            .map(PersonRecord::Profile)
            .chain(state.school.entries().cloned().map(PersonRecord::School))
            .chain(state.scfv.entries().cloned().map(PersonRecord::Scfv))
            .chain(
                state
                    .health
                    .entries()
                    .filter(|r| r.record_id != record_id)
                    .cloned()
                    .map(PersonRecord::Health),
            );
        for r in records {
            let _ = kept.apply(r);
        }
        doc.health_arrived_as.remove(record_id);
        self.save_person(tx, &kept, &mut doc)?;
        self.refresh_person(tx, &kept, &doc, at)?;
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
        let applied = state
            .apply(PersonRecord::Profile(profile))
            .map_err(|e| ReconcilerError::Misrouted(e.to_string()))?;
        if !applied.changed() {
            return Ok(Applied::Unchanged);
        }
        self.save_person(tx, &state, &mut doc)?;

        // Crosswalk: identifiers the live profile carries now versus before, to the identity
        // stage (keyed by the identifier).
        let now: BTreeSet<String> = state.profile().map(alt_ids).unwrap_or_default();
        let before: BTreeSet<String> = tx
            .get_json(&key(&["xo", nis.as_str()]))?
            .unwrap_or_default();
        tx.put_json(key(&["xo", nis.as_str()]), &now)?;
        let changes = before
            .difference(&now)
            .map(|a| (a, false))
            .chain(now.difference(&before).map(|a| (a, true)));
        for (alt, carried) in changes {
            let msg = CrosswalkChange {
                alt: alt.clone(),
                nis: nis.to_string(),
                carried,
                at,
            };
            tx.emit(
                OutputKind::Crosswalk,
                alt_key(alt).to_owned(),
                msg.encode_to_vec(),
            );
        }
        self.refresh_person(tx, &state, &doc, at)?;
        Ok(Applied::Changed)
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
        let hash = view_hash(&view); // a fresh view: its counters are clear
        let (old, legacy) = person_digest(tx, nis.as_str())?;
        if old.as_ref().is_some_and(|o| o.hash == hash) {
            return Ok(());
        }
        let vkey = key(&["d", "p", nis.as_str()]);
        let (old_family, old_nc) = old
            .as_ref()
            .map(|o| (o.family_id.clone(), o.non_compliant.clone()))
            .unwrap_or_default();
        view.view_version = old.as_ref().map_or(0, |o| o.view_version) + 1;
        view.updated_time = at;
        let nc = non_compliant(&view.outcomes);
        // Alerts for members newly non-compliant.
        for o in &view.outcomes {
            let was = old_nc
                .iter()
                .any(|p| p.conditionality == o.conditionality && p.period == o.period);
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
                tx.emit(
                    OutputKind::Alert,
                    view.family_id.clone(),
                    alert.encode_to_vec(),
                );
            }
        }
        // The family view (on the family's partition) learns of joins, leaves and of changes
        // in what it reads of a member: the non-compliant outcomes.
        if old_family != view.family_id && !old_family.is_empty() {
            let leave = MemberOutcomes {
                family_id: old_family.clone(),
                nis: nis.to_string(),
                member: false,
                outcomes_json: Vec::new(),
                at,
            };
            tx.emit(
                OutputKind::Member,
                old_family.clone(),
                leave.encode_to_vec(),
            );
        }
        if !view.family_id.is_empty() && (old_family != view.family_id || old_nc != nc) {
            let for_family = for_family(&outcomes);
            let join = MemberOutcomes {
                family_id: view.family_id.clone(),
                nis: nis.to_string(),
                member: true,
                outcomes_json: serde_json::to_vec(&for_family).map_err(|e| corrupt(&vkey, e))?,
                at,
            };
            tx.emit(
                OutputKind::Member,
                view.family_id.clone(),
                join.encode_to_vec(),
            );
        }
        let digest = PersonDigest {
            view_version: view.view_version,
            hash,
            family_id: view.family_id.clone(),
            non_compliant: nc,
        };
        tx.emit(
            OutputKind::Change,
            format!("person:{nis}"),
            api::ComplianceChange {
                view: Some(api::compliance_change::View::Person(view)),
            }
            .encode_to_vec(),
        );
        tx.put(vkey, digest.encode_to_vec());
        if legacy {
            tx.delete(key(&["v", "p", nis.as_str()]));
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
                encounter_date: h.recorded_on.map(|d| d.to_string()).unwrap_or_default(),
                semester: h.semester().map(|s| s.to_string()).unwrap_or_default(),
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

    // ---- families (keyed by family id) ------------------------------------------------------

    fn apply_member(
        &self,
        tx: &mut Tx<'_>,
        m: &MemberOutcomes,
    ) -> Result<Applied, ReconcilerError> {
        if let Err(e) = Nis::parse(&m.nis) {
            return Ok(invalid("nis", e));
        }
        let fid = FamilyId(m.family_id.clone());
        let k = key(&["fm", fid.as_str()]);
        let mut members: Members = tx.get_json(&k)?.unwrap_or_default();
        if m.member {
            let outcomes: Vec<Outcome> = match serde_json::from_slice(&m.outcomes_json) {
                Ok(o) => o,
                Err(e) => return Ok(invalid("outcomes_json", e)),
            };
            if members.get(&m.nis) == Some(&outcomes) {
                return Ok(Applied::Unchanged);
            }
            members.insert(m.nis.clone(), outcomes);
        } else if members.remove(&m.nis).is_none() {
            return Ok(Applied::Unchanged);
        }
        if members.is_empty() {
            tx.delete(k);
        } else {
            tx.put_json(k, &members)?;
        }
        self.refresh_family(tx, &fid, m.at)?;
        Ok(Applied::Changed)
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
        let members: Members = tx
            .get_json(&key(&["fm", fid.as_str()]))?
            .unwrap_or_default();
        let names: BTreeSet<String> = members.keys().cloned().collect();
        let outcomes: Vec<Outcome> = members.into_values().flatten().collect();
        let effects = self.rules.evaluate_family(&state, &outcomes);
        let mut view = family_view(fid, &names, &effects, &outcomes);
        let hash = view_hash(&view); // a fresh view: its counters are clear
        let (old, legacy) = family_digest(tx, fid.as_str())?;
        if old.as_ref().is_some_and(|o| o.hash == hash) {
            return Ok(());
        }
        view.view_version = old.as_ref().map_or(0, |o| o.view_version) + 1;
        view.updated_time = at;
        let digest = FamilyDigest {
            view_version: view.view_version,
            hash,
        };
        tx.emit(
            OutputKind::Change,
            format!("family:{fid}"),
            api::ComplianceChange {
                view: Some(api::compliance_change::View::Family(view)),
            }
            .encode_to_vec(),
        );
        tx.put(key(&["d", "f", fid.as_str()]), digest.encode_to_vec());
        if legacy {
            tx.delete(key(&["v", "f", fid.as_str()]));
        }
        Ok(())
    }
}

// ---- reads of the local (partitioned) state ------------------------------------------------

/// How many health records are parked in the partitions `partitions`.
pub fn count_parked(kv: &dyn Kv, partitions: &[i32]) -> Result<usize, ReconcilerError> {
    let mut n = 0;
    for &p in partitions {
        n += kv
            .scan(&[partition_prefix(p).as_slice(), b"k/"].concat())?
            .len();
    }
    Ok(n)
}

/// How a batch's `writes` change the number of parked health records per partition, against
/// the committed state `base` they are about to be written over. Lets the service keep the
/// count from each commit instead of scanning the parked records ([`count_parked`] is for a
/// partition just taken): with 10 M people loaded at once, 3 M records were parked and the
/// scan took most of the reconciler's time.
pub fn parked_delta(base: &dyn Kv, writes: &Writes) -> Result<BTreeMap<i32, i64>, ReconcilerError> {
    let mut delta = BTreeMap::new();
    for (k, v) in writes {
        let Some(p) = parked_partition(k) else {
            continue;
        };
        let before = i64::from(base.get(k)?.is_some());
        let after = i64::from(v.is_some());
        if after != before {
            *delta.entry(p).or_insert(0) += after - before;
        }
    }
    Ok(delta)
}

/// The partition of a parked health record's key (the full key, partition prefix included);
/// `None` for every other key.
fn parked_partition(full_key: &[u8]) -> Option<i32> {
    let p = key_partition(full_key)?;
    full_key[partition_prefix(p).len()..]
        .starts_with(b"k/")
        .then_some(p)
}

/// Parked health records of the partitions `partitions`: (identifier, event).
pub fn read_parked(
    kv: &dyn Kv,
    partitions: &[i32],
) -> Result<Vec<(String, Event)>, ReconcilerError> {
    let mut out = Vec::new();
    for &p in partitions {
        let prefix = [partition_prefix(p).as_slice(), b"k/"].concat();
        for (k, v) in kv.scan(&prefix)? {
            let rest = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let alt = rest.split('/').next().unwrap_or_default().to_owned();
            out.push((
                alt,
                Event::decode(v.as_slice()).map_err(|e| corrupt(&k, e))?,
            ));
        }
    }
    Ok(out)
}

// ---- mapping between the wire and the domain -------------------------------------------

fn alt_ids(p: &dr::PersonProfile) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for c in &p.cns {
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
    if e.retraction {
        return Ok(dr::PersonProfile::tombstone(
            e.record_id.clone(),
            e.version,
            nis,
        ));
    }
    let municipality =
        IbgeMunicipality::parse(&p.municipality).map_err(|x| invalid("municipality", x))?;
    let school = if p.inep_school_code.is_empty() {
        None
    } else {
        Some(Inep::parse(&p.inep_school_code).map_err(|x| invalid("inep_school_code", x))?)
    };
    let cns = p
        .cns
        .iter()
        .map(|c| Cns::parse(c).map_err(|x| invalid("cns", x)))
        .collect::<Result<Vec<_>, _>>()?;
    let cpf = if p.cpf.is_empty() {
        None
    } else {
        Some(Cpf::parse(&p.cpf).map_err(|x| invalid("cpf", x))?)
    };
    let sex = match p.sex.as_str() {
        "F" | "f" => Sex::Female,
        "M" | "m" => Sex::Male,
        other => return Err(invalid("sex", format!("{other:?} is not F or M"))),
    };
    Ok(dr::PersonProfile {
        record_id: e.record_id.clone(),
        version: e.version,
        retracted: false,
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
    let nis = Nis::parse(&a.nis).map_err(|x| invalid("nis", x))?;
    if e.retraction {
        return Ok(dr::SchoolAttendanceMonth::tombstone(
            e.record_id.clone(),
            e.version,
            nis,
        ));
    }
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
        retracted: false,
        nis,
        inep: Inep::parse(&a.inep_school_code).ok(),
        month: Month::parse(&a.month).map_err(|x| invalid("month", x))?,
        attendance,
        reason_code: (!a.low_attendance_reason.is_empty()).then(|| a.low_attendance_reason.clone()),
    })
}

fn scfv(e: &Event, a: &ev::ScfvAttendance) -> Result<dr::ScfvAttendanceMonth, Applied> {
    let nis = Nis::parse(&a.nis).map_err(|x| invalid("nis", x))?;
    if e.retraction {
        return Ok(dr::ScfvAttendanceMonth::tombstone(
            e.record_id.clone(),
            e.version,
            nis,
        ));
    }
    Ok(dr::ScfvAttendanceMonth {
        record_id: e.record_id.clone(),
        version: e.version,
        retracted: false,
        nis,
        month: Month::parse(&a.month).map_err(|x| invalid("month", x))?,
        attendance: Attendance::Counts {
            given: a.hours_offered,
            attended: a.hours_attended,
        },
        reason_code: (!a.low_attendance_reason.is_empty()).then(|| a.low_attendance_reason.clone()),
    })
}

fn health(e: &Event, h: &ev::HealthFollowUp, nis: Nis) -> Result<dr::HealthRecord, Applied> {
    if e.retraction {
        return Ok(dr::HealthRecord::tombstone(
            e.record_id.clone(),
            e.version,
            nis,
        ));
    }
    // A record is placed by its date, or by the semester it was filed for when the source
    // gave no date (the simple JSON form allows either).
    let recorded_on = opt_date("encounter_date", &h.encounter_date)?;
    let semester = if h.semester.is_empty() {
        None
    } else {
        Some(Semester::parse(&h.semester).map_err(|x| invalid("semester", x))?)
    };
    match (recorded_on, semester) {
        (None, None) => {
            return Err(invalid(
                "semester",
                "neither semester nor encounter_date is given",
            ));
        }
        (Some(d), Some(s)) if Semester::containing(d.month_of()) != s => {
            return Err(invalid(
                "semester",
                format!("encounter_date {d} is not in {s}"),
            ));
        }
        _ => {}
    }
    Ok(dr::HealthRecord {
        record_id: e.record_id.clone(),
        version: e.version,
        retracted: false,
        nis,
        recorded_on,
        semester,
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

fn follow_up(e: &Event, f: &ev::FamilyFollowUp) -> Result<FamilyFollowUp, Applied> {
    if e.retraction {
        return Ok(FamilyFollowUp::tombstone(
            e.record_id.clone(),
            e.version,
            FamilyId(f.family_id.clone()),
        ));
    }
    let started_on = date("opened_on", &f.opened_on)?;
    Ok(FamilyFollowUp {
        record_id: e.record_id.clone(),
        version: e.version,
        retracted: false,
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
    if e.retraction {
        return Ok(Appeal::tombstone(
            e.record_id.clone(),
            e.version,
            FamilyId(a.family_id.clone()),
        ));
    }
    let status = match a.decision.as_str() {
        "" => AppealStatus::Pending,
        "ACCEPTED" => AppealStatus::Accepted,
        "REJECTED" => AppealStatus::Rejected,
        other => {
            return Err(invalid(
                "decision",
                format!("{other:?} is not ACCEPTED or REJECTED"),
            ));
        }
    };
    Ok(Appeal {
        record_id: e.record_id.clone(),
        version: e.version,
        retracted: false,
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

fn scope(s: EffectScope) -> &'static str {
    match s {
        EffectScope::Family => "family",
        EffectScope::Member => "member",
        EffectScope::None => "none",
    }
}

/// What the family evaluation reads of a member's outcomes, as the view shows them: the
/// non-compliant ones, with their effect scope.
/// What the family stage and the alerts read of a person's view: the non-compliant outcomes'
/// conditionality, period and scope of effects, in the view's order.
fn non_compliant(outcomes: &[api::ConditionalityOutcome]) -> Vec<NonCompliant> {
    outcomes
        .iter()
        .filter(|o| o.status == api::OutcomeStatus::NonCompliant as i32)
        .map(|o| NonCompliant {
            conditionality: o.conditionality.clone(),
            period: o.period.clone(),
            effects: o.effects.clone(),
        })
        .collect()
}

/// 64-bit FNV-1a of a view's encoding: equal views, equal hashes, across processes and builds
/// (prost encodes fields in tag order). The view's counters (`view_version`, `updated_time`)
/// must be clear: they say how the view got there, not what it is.
fn view_hash(view: &impl prost::Message) -> u64 {
    view.encode_to_vec()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// The digest at `d/<kind>/<id>`, or one derived from the full view at `v/<kind>/<id>` that a
/// store written before digests holds (then `true`: the old key is deleted with the next write).
fn read_digest<D: prost::Message + Default, V: prost::Message + Default>(
    tx: &Tx<'_>,
    kind: &str,
    id: &str,
    from_view: impl FnOnce(V) -> D,
) -> Result<(Option<D>, bool), ReconcilerError> {
    if let Some(d) = tx.get_proto::<D>(&key(&["d", kind, id]))? {
        return Ok((Some(d), false));
    }
    Ok(match tx.get_proto::<V>(&key(&["v", kind, id]))? {
        Some(v) => (Some(from_view(v)), true),
        None => (None, false),
    })
}

fn person_digest(tx: &Tx<'_>, nis: &str) -> Result<(Option<PersonDigest>, bool), ReconcilerError> {
    read_digest(tx, "p", nis, |mut v: api::Person| {
        let view_version = std::mem::take(&mut v.view_version);
        v.updated_time = None;
        PersonDigest {
            view_version,
            hash: view_hash(&v),
            non_compliant: non_compliant(&v.outcomes),
            family_id: v.family_id,
        }
    })
}

fn family_digest(tx: &Tx<'_>, fid: &str) -> Result<(Option<FamilyDigest>, bool), ReconcilerError> {
    read_digest(tx, "f", fid, |mut v: api::Family| {
        let view_version = std::mem::take(&mut v.view_version);
        v.updated_time = None;
        FamilyDigest {
            view_version,
            hash: view_hash(&v),
        }
    })
}

/// A member's outcomes as the family stage needs them: only the non-compliant ones (the only
/// ones the effects ladder and the family view read), without the evidence, which stays in the
/// person's view.
fn for_family(outcomes: &[Outcome]) -> Vec<Outcome> {
    outcomes
        .iter()
        .filter(|o| o.status == Status::NonCompliant)
        .map(|o| Outcome {
            evidence: ponte_domain::outcome::Evidence::bare(
                o.evidence.reference_date,
                o.evidence.age,
            ),
            ..o.clone()
        })
        .collect()
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
        appeal_record_ids: e.appeals.clone(),
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Repartition messages already on the bus when the formats moved into
    /// `proto/ponte/reconciler/v1` (hand-written prost structs before) still decode: the bytes
    /// below are what the old `MemberOutcomes` and `CrosswalkChange` encoded.
    #[test]
    fn messages_written_before_the_proto_definitions_still_decode() {
        let member = [
            0x0a, 0x02, b'f', b'1', // family_id = "f1"
            0x12, 0x01, b'7', // nis = "7"
            0x18, 0x01, // member = true
            0x22, 0x02, b'[', b']', // outcomes_json = "[]"
        ];
        let m = MemberOutcomes::decode(member.as_slice()).unwrap();
        assert_eq!(
            (m.family_id.as_str(), m.nis.as_str(), m.member),
            ("f1", "7", true)
        );
        assert_eq!(m.outcomes_json, b"[]");
        let crosswalk = [
            0x0a, 0x05, b'c', b'n', b's', b':', b'1', 0x12, 0x01, b'7', 0x18, 0x01,
        ];
        let c = CrosswalkChange::decode(crosswalk.as_slice()).unwrap();
        assert_eq!(
            (c.alt.as_str(), c.nis.as_str(), c.carried),
            ("cns:1", "7", true)
        );
    }

    #[test]
    fn a_topic_reads_its_own_schema_and_repartition_topics_also_the_unversioned_name() {
        assert!(Input::Registry.reads_schema(b"ponte.events.v1"));
        assert!(!Input::Registry.reads_schema(b"ponte.events.v2"));
        assert!(!Input::Registry.reads_schema(b"ponte.reconciler"));
        for internal in [Input::Crosswalk, Input::HealthByNis, Input::Members] {
            assert!(internal.reads_schema(b"ponte.reconciler.v1"));
            assert!(internal.reads_schema(b"ponte.reconciler"));
            assert!(!internal.reads_schema(b"ponte.events.v1"));
        }
        for kind in [
            OutputKind::Crosswalk,
            OutputKind::HealthByNis,
            OutputKind::Member,
        ] {
            assert_eq!(kind.schema(), "ponte.reconciler.v1");
        }
    }
}
