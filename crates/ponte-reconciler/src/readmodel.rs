//! The read model: the views of every person, family and followed household, for the gRPC
//! reads of any instance.
//!
//! Reconciler instances share the input partitions of a consumer group, so the state of one
//! instance holds only the persons of its partitions. Every instance therefore also consumes
//! *all* partitions of the compacted `compliance.changes.v1` topic (assigned explicitly, never as
//! a member of a group) into a store of its own, and answers GetPerson, GetFamily, ListPersons
//! and GetIndicators from it.
//!
//! Store layout (the `state` column family of the read store):
//!
//! | key | value |
//! |---|---|
//! | `v/p/<nis>` | the person's view (`ponte.compliance.v1.Person`) |
//! | `v/f/<family id>` | the family's view (`ponte.compliance.v1.Family`) |
//! | `m/<municipality>/<nis>` | index of the persons of a municipality (empty value) |
//! | `i/<municipality>/<conditionality>/<period>` | outcome counts (format byte 2, then `ponte.reconciler.v1.IndicatorCounts`; format 1, still read and rewritten in format 2 when the row changes, was JSON [`Counts`]); a row whose counts are all zero is not kept |
//! | `v/h/<household id>` | a followed household's view (`ponte.compliance.v1.Household`; deployments with household achievements) |
//! | `hm/<DIVIPOLA municipality>/<household id>` | index of the households of a municipality (empty value) |
//!
//! A view is stored as the bytes that arrived in the change — decoded once, whole, to check it
//! when it was read from the topic ([`Origin`]); one from the instance's own epochs is decoded
//! only for what the index and counts need — and the view held is read back only for that
//! (`ponte.reconciler.v1.PersonCounted`, which skips the evidence unread) instead of being
//! decoded whole, and the new one is not encoded again (docs/benchmarks.md, issue 15). The
//! views a batch replaces are read in one batched lookup before its records are applied.
//!
//! Each batch of change records is written in one atomic store write together with the next
//! offset of every partition read, so after a restart the read model resumes exactly where it
//! stopped. A view is replaced only by a higher `view_version`: redeliveries, and versions
//! re-emitted by the new owner of a partition, change nothing.
//!
//! When the read model fails — a batch cannot be written, a read of its store errs — it is
//! marked failed ([`ReadPath`]): readiness turns to 503 and every read is answered
//! `UNAVAILABLE`, rather than answering from a store that no longer follows the changes topic.
//! The write path goes on; a restart of the process opens the store again and resumes.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ponte_bus::KafkaConfig;
use ponte_bus::brokers::Watched;
use ponte_domain::ids::Nis;
use ponte_domain::indicators::Counts;
use ponte_domain::outcome::Status;
use ponte_proto::compliance::v1 as api;
use ponte_proto::reconciler::v1::change_as_stored::View;
use ponte_proto::reconciler::v1::{ChangeAsStored, FamilyCounted, OutcomeCounted, PersonCounted};
use ponte_store::Store;
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::ReconcilerError;
use crate::feed::{Batch, FeedReceiver, Routing};
use crate::topology::{Kv, domain_status};

/// How the read model's store is laid out: its views (about 2.5 KiB each with the evidence)
/// are replaced on every change, so they live in blob files and the keys are compacted by
/// size tiers ([`ponte_store::Layout::LargeValues`]); index entries and counts rows stay in
/// the tables. Four runs of a size are merged at once, not two: at the scale of the 10 M people
/// load (`ponte-bench read-model`) that merged each key 7.9 times per change instead of 28.4
/// and halved the compactions' CPU, with person reads no slower (docs/benchmarks.md).
pub const LAYOUT: ponte_store::Layout = ponte_store::Layout::LargeValues {
    min_blob_bytes: 256,
    merge_width: 4,
    space_amp_percent: 200,
    blob_gc_age_percent: 25,
};

/// Whether the read path can be trusted: once failed, it stays failed until the process
/// restarts (a store that refused a write or a read is not trusted again in place).
#[derive(Debug, Clone, Default)]
pub struct ReadPath {
    failure: Arc<Mutex<Option<String>>>,
}

impl ReadPath {
    /// Marks the read path failed (the first reason is kept), counted and logged once.
    pub fn fail(&self, reason: impl Into<String>) {
        let reason = reason.into();
        let mut failure = self
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if failure.is_none() {
            tracing::error!(
                reason = %ponte_runtime::telemetry::mask_ids_in(&reason),
                "read model failed: readiness is 503 and reads are refused until a restart"
            );
            metrics::gauge!("ponte_reconciler_read_model_failed").set(1.0);
            metrics::gauge!("ponte_reconciler_read_model_caught_up").set(0.0);
            *failure = Some(reason);
        }
    }

    /// Why the read path failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// A test-only fault: `PONTE_TEST_READ_MODEL_FAULT=<n>` makes the read model's `n`-th batch
/// fail as a store that refuses a write would (for the readiness tests; never set it in a
/// deployment).
fn injected_fault() -> Result<Option<u64>, ReconcilerError> {
    match std::env::var("PONTE_TEST_READ_MODEL_FAULT") {
        Err(_) => Ok(None),
        Ok(n) => n.parse().map(Some).map_err(|_| {
            ReconcilerError::Startup(format!("PONTE_TEST_READ_MODEL_FAULT: {n:?} is not a count"))
        }),
    }
}

/// One consumed change record: partition, offset, key, payload (`None`: a tombstone).
pub type ChangeRecord = (i32, i64, String, Option<Vec<u8>>);

/// What applying a batch of change records did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Views stored: new, or newer than the one held.
    pub applied: u64,
    /// Views removed by a tombstone.
    pub deleted: u64,
    /// Records that changed nothing: a view not newer than the one held, or a tombstone for a
    /// view not held.
    pub duplicates: u64,
    /// Records that cannot be applied (undecodable payload, unknown key, key and payload
    /// naming different views): logged with partition and offset, and skipped.
    pub invalid: u64,
}

impl ApplyStats {
    /// Adds what another batch did.
    pub fn add(&mut self, other: ApplyStats) {
        self.applied += other.applied;
        self.deleted += other.deleted;
        self.duplicates += other.duplicates;
        self.invalid += other.invalid;
    }
}

fn key(parts: &[&str]) -> Vec<u8> {
    parts.join("/").into_bytes()
}

fn corrupt(key: &[u8], e: impl std::fmt::Display) -> ReconcilerError {
    ReconcilerError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    }
}

// ---- applying change records ---------------------------------------------------------------

/// The writes of a batch so far over the committed store: reads see the batch's own writes.
struct Overlay<'a> {
    base: &'a Store,
    /// Values of the committed store read ahead for the whole batch (the views its records
    /// replace), so that they are looked up in one batched read instead of one each.
    read: HashMap<Vec<u8>, Option<Vec<u8>>>,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Overlay<'a> {
    fn new(base: &'a Store) -> Self {
        Self {
            base,
            read: HashMap::new(),
            writes: BTreeMap::new(),
        }
    }

    /// Reads `keys` of the committed store ahead, in one batched read.
    fn read_ahead(&mut self, mut keys: Vec<Vec<u8>>) -> Result<(), ReconcilerError> {
        keys.sort_unstable();
        keys.dedup();
        let values = self.base.get_many(&keys)?;
        self.read.extend(keys.into_iter().zip(values));
        Ok(())
    }

    /// `f` applied to the value of `key` where it is held, without copying it (a view is
    /// about 2.5 KiB, and only what the index and counts need is decoded of it).
    fn with_value<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<R, ReconcilerError> {
        match self.writes.get(key).or_else(|| self.read.get(key)) {
            Some(v) => Ok(f(v.as_deref())),
            None => Ok(f(self.base.get(key)?.as_deref())),
        }
    }

    fn get_proto<M: prost::Message + Default>(
        &self,
        key: &[u8],
    ) -> Result<Option<M>, ReconcilerError> {
        self.with_value(key, |b| {
            b.map(|b| M::decode(b).map_err(|e| corrupt(key, e)))
                .transpose()
        })?
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }
}

/// The view a change record is keyed by.
enum Target {
    Person(Nis),
    Family(String),
    Household(String),
}

impl Target {
    /// Where the view is stored.
    fn view_key(&self) -> Vec<u8> {
        match self {
            Target::Person(nis) => key(&["v", "p", nis.as_str()]),
            Target::Family(id) => key(&["v", "f", id]),
            Target::Household(id) => key(&["v", "h", id]),
        }
    }
}

fn target(key: &str) -> Result<Target, String> {
    if let Some(nis) = key.strip_prefix("person:") {
        return Nis::parse(nis)
            .map(Target::Person)
            .map_err(|e| format!("key: person NIS: {e}"));
    }
    if let Some(id) = key.strip_prefix("family:") {
        if id.is_empty() || id.contains('/') {
            return Err("key: family id empty or containing '/'".into());
        }
        return Ok(Target::Family(id.to_owned()));
    }
    if let Some(id) = key.strip_prefix("household:") {
        if id.is_empty() || id.contains('/') {
            return Err("key: household id empty or containing '/'".into());
        }
        return Ok(Target::Household(id.to_owned()));
    }
    Err("key: none of person:<nis>, family:<id>, household:<id>".into())
}

/// Outcome of one record: a change to the stats, or why it was skipped.
type RecordResult = Result<Result<ApplyStats, String>, ReconcilerError>;

/// A person's view as the change carried it: its encoding, stored as it is, and what the index
/// and counts read of it.
struct PersonBytes {
    encoded: Vec<u8>,
    counted: PersonCounted,
}

/// Where change records come from, which says what is checked of their views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The changes topic, which any producer with access could have written: each view is
    /// decoded whole before it is stored (every `GetPerson` of a view that cannot be decoded
    /// would fail).
    Topic,
    /// This process' own committed epochs ([`crate::feed`]): views its topology has just
    /// encoded. Only what the index and counts need is decoded, as of the views replaced.
    Epochs,
}

impl Origin {
    /// The `from` label of `ponte_reconciler_read_model_changes_total`.
    fn label(self) -> &'static str {
        match self {
            Origin::Topic => "topic",
            Origin::Epochs => "epochs",
        }
    }
}

/// A change whose payload or view cannot be decoded: skipped, with why.
fn undecodable(e: prost::DecodeError) -> RecordResult {
    Ok(Err(format!("payload: {e}")))
}

/// Applies one record to the view `target` stored under `vkey` (its [`Target::view_key`]).
fn apply_record(
    ov: &mut Overlay<'_>,
    target: Target,
    vkey: Vec<u8>,
    payload: Option<&[u8]>,
    origin: Origin,
) -> RecordResult {
    let change = match payload.map(ChangeAsStored::decode).transpose() {
        Ok(c) => c,
        Err(e) => return undecodable(e),
    };
    match (target, change.map(|c| c.view)) {
        (Target::Person(nis), None) => apply_person(ov, vkey, nis, None).map(Ok),
        (Target::Person(nis), Some(Some(View::Person(encoded)))) if origin == Origin::Epochs => {
            let counted = match PersonCounted::decode(encoded.as_slice()) {
                Ok(c) => c,
                Err(e) => return undecodable(e),
            };
            if Nis::parse(&counted.nis).ok() != Some(nis) {
                return Ok(Err("payload: the person's NIS is not the key's".into()));
            }
            apply_person(ov, vkey, nis, Some(PersonBytes { encoded, counted })).map(Ok)
        }
        (Target::Person(nis), Some(Some(View::Person(encoded)))) => {
            // The whole view is decoded once, to check it (a view stored here is read back by
            // every GetPerson, and one that cannot be decoded would fail the read path); what
            // the index and counts need is taken from that decode.
            let p = match api::Person::decode(encoded.as_slice()) {
                Ok(p) => p,
                Err(e) => return undecodable(e),
            };
            if Nis::parse(&p.nis).ok() != Some(nis) {
                return Ok(Err("payload: the person's NIS is not the key's".into()));
            }
            let counted = PersonCounted {
                nis: p.nis,
                view_version: p.view_version,
                municipality: p.municipality,
                outcomes: p
                    .outcomes
                    .into_iter()
                    .map(|o| OutcomeCounted {
                        conditionality: o.conditionality,
                        period: o.period,
                        status: o.status,
                    })
                    .collect(),
            };
            apply_person(ov, vkey, nis, Some(PersonBytes { encoded, counted })).map(Ok)
        }
        (Target::Family(_), None) => apply_family(ov, vkey, None).map(Ok),
        (Target::Family(id), Some(Some(View::Family(encoded)))) => {
            let (family_id, view_version) = match origin {
                Origin::Epochs => match FamilyCounted::decode(encoded.as_slice()) {
                    Ok(f) => (f.family_id, f.view_version),
                    Err(e) => return undecodable(e),
                },
                Origin::Topic => match api::Family::decode(encoded.as_slice()) {
                    Ok(f) => (f.family_id, f.view_version),
                    Err(e) => return undecodable(e),
                },
            };
            if family_id != id {
                return Ok(Err("payload: the family id is not the key's".into()));
            }
            apply_family(ov, vkey, Some((encoded, view_version))).map(Ok)
        }
        (Target::Household(id), None) => apply_household(ov, vkey, &id, None).map(Ok),
        (Target::Household(id), Some(Some(View::Household(encoded)))) => {
            let h = match api::Household::decode(encoded.as_slice()) {
                Ok(h) => h,
                Err(e) => return undecodable(e),
            };
            if h.household_id != id {
                return Ok(Err("payload: the household id is not the key's".into()));
            }
            if h.municipality.is_empty() || h.municipality.contains('/') {
                return Ok(Err(
                    "payload: the household's municipality is empty or has '/'".into(),
                ));
            }
            apply_household(ov, vkey, &id, Some(h)).map(Ok)
        }
        (_, Some(None)) => Ok(Err("payload: the change carries no view".into())),
        (_, Some(Some(_))) => Ok(Err("payload: the view is not of the key's kind".into())),
    }
}

/// Replaces (`Some`) or deletes (`None`) a person's view, with its index entry and counts. The
/// view held is read only for what the index and counts need, and the new one is stored as it
/// arrived.
fn apply_person(
    ov: &mut Overlay<'_>,
    vkey: Vec<u8>,
    nis: Nis,
    new: Option<PersonBytes>,
) -> Result<ApplyStats, ReconcilerError> {
    let old: Option<PersonCounted> = ov.get_proto(&vkey)?;
    let duplicate = match (&old, &new) {
        (Some(old), Some(new)) => new.counted.view_version <= old.view_version,
        (None, None) => true,
        _ => false,
    };
    if duplicate {
        return Ok(ApplyStats {
            duplicates: 1,
            ..Default::default()
        });
    }
    update_counts(ov, old.as_ref(), new.as_ref().map(|n| &n.counted))?;
    let old_mun = old.as_ref().map(|o| o.municipality.as_str()).unwrap_or("");
    let new_mun = new
        .as_ref()
        .map(|n| n.counted.municipality.as_str())
        .unwrap_or("");
    // The index entry is written only when the municipality changed: rewriting the same
    // empty entry on every change of the view was as many store writes as the views (each
    // one merged again by every compaction until it met its older copy).
    if old_mun != new_mun {
        if !old_mun.is_empty() {
            ov.delete(key(&["m", old_mun, nis.as_str()]));
        }
        if !new_mun.is_empty() {
            ov.put(key(&["m", new_mun, nis.as_str()]), Vec::new());
        }
    }
    Ok(match new {
        Some(new) => {
            ov.put(vkey, new.encoded);
            ApplyStats {
                applied: 1,
                ..Default::default()
            }
        }
        None => {
            ov.delete(vkey);
            ApplyStats {
                deleted: 1,
                ..Default::default()
            }
        }
    })
}

/// Moves the counts from the old view's outcomes to the new view's: every old outcome removed,
/// every new one added, one read and write per counts row. A row left all zero is deleted, so
/// the rows held depend only on the views held, not on the order they arrived in.
fn update_counts(
    ov: &mut Overlay<'_>,
    old: Option<&PersonCounted>,
    new: Option<&PersonCounted>,
) -> Result<(), ReconcilerError> {
    let mut delta: BTreeMap<Vec<u8>, Vec<(Status, bool)>> = BTreeMap::new();
    for (person, add) in [(old, false), (new, true)] {
        let Some(person) = person else { continue };
        for o in &person.outcomes {
            if let Some(status) = domain_status(o.status) {
                delta
                    .entry(key(&[
                        "i",
                        &person.municipality,
                        &o.conditionality,
                        &o.period,
                    ]))
                    .or_default()
                    .push((status, add));
            }
        }
    }
    for (k, mut changes) in delta {
        // An outcome whose status did not change (most of a view's, when one record changed)
        // removes and adds the same status: the row is left alone, unread and unwritten.
        let mut i = 0;
        while i < changes.len() {
            let (status, add) = changes[i];
            match changes[i + 1..]
                .iter()
                .position(|&(s, a)| s == status && a != add)
            {
                Some(j) => {
                    changes.remove(i + 1 + j);
                    changes.remove(i);
                }
                None => i += 1,
            }
        }
        if changes.is_empty() {
            continue;
        }
        let mut counts: Counts = ov.with_value(&k, |b| match b {
            Some(b) => decode_counts(&k, b),
            None => Ok(Counts::default()),
        })??;
        for (status, add) in changes {
            if add {
                counts.add(status);
            } else {
                counts.remove(status);
            }
        }
        if counts == Counts::default() {
            ov.delete(k);
        } else {
            ov.put(k, encode_counts(&counts));
        }
    }
    Ok(())
}

/// An outcome counts row as stored (the format a partition's counts rows have too).
fn encode_counts(c: &Counts) -> Vec<u8> {
    crate::topology::counts_to_stored(c)
}

/// An outcome counts row read back: format 2, or format 1 (JSON).
fn decode_counts(key: &[u8], bytes: &[u8]) -> Result<Counts, ReconcilerError> {
    crate::topology::counts_from_stored(bytes).map_err(|e| corrupt(key, e))
}

/// Replaces (`Some`: its encoding and version) or deletes (`None`) a family's view.
fn apply_family(
    ov: &mut Overlay<'_>,
    vkey: Vec<u8>,
    new: Option<(Vec<u8>, u64)>,
) -> Result<ApplyStats, ReconcilerError> {
    let old: Option<FamilyCounted> = ov.get_proto(&vkey)?;
    Ok(match (old, new) {
        (Some(old), Some((_, version))) if version <= old.view_version => ApplyStats {
            duplicates: 1,
            ..Default::default()
        },
        (None, None) => ApplyStats {
            duplicates: 1,
            ..Default::default()
        },
        (_, Some((encoded, _))) => {
            ov.put(vkey, encoded);
            ApplyStats {
                applied: 1,
                ..Default::default()
            }
        }
        (Some(_), None) => {
            ov.delete(vkey);
            ApplyStats {
                deleted: 1,
                ..Default::default()
            }
        }
    })
}

/// Replaces (`Some`) or deletes (`None`) a household's view, with its municipality index entry.
fn apply_household(
    ov: &mut Overlay<'_>,
    vkey: Vec<u8>,
    household_id: &str,
    new: Option<api::Household>,
) -> Result<ApplyStats, ReconcilerError> {
    let old: Option<api::Household> = ov.get_proto(&vkey)?;
    if let (Some(old), Some(new)) = (&old, &new)
        && new.view_version <= old.view_version
    {
        return Ok(ApplyStats {
            duplicates: 1,
            ..Default::default()
        });
    }
    // As for persons: the index entry is written only when the municipality changed.
    let old_mun = old.as_ref().map(|o| o.municipality.as_str());
    let new_mun = new.as_ref().map(|n| n.municipality.as_str());
    if old_mun != new_mun {
        if let Some(m) = old_mun {
            ov.delete(key(&["hm", m, household_id]));
        }
        if let Some(m) = new_mun {
            ov.put(key(&["hm", m, household_id]), Vec::new());
        }
    }
    Ok(match new {
        Some(new) => {
            ov.put(vkey, new.encode_to_vec());
            ApplyStats {
                applied: 1,
                ..Default::default()
            }
        }
        None if old.is_some() => {
            ov.delete(vkey);
            ApplyStats {
                deleted: 1,
                ..Default::default()
            }
        }
        None => ApplyStats {
            duplicates: 1,
            ..Default::default()
        },
    })
}

/// Applies change records of `topic` (read from the changes topic: [`Origin::Topic`]) to the
/// read model in one atomic write, together with the next offset of every partition in
/// `records`.
///
/// Records are applied in order, each seeing the ones before it. A view not newer than the one
/// held is ignored; a tombstone deletes the view with its index entry and counts. A record that
/// cannot be applied is logged and skipped (its offset is still consumed); only a store failure
/// or a corrupt stored value is an error, and then nothing of the batch is written.
pub fn apply(
    store: &Store,
    topic: &str,
    records: &[ChangeRecord],
) -> Result<ApplyStats, ReconcilerError> {
    apply_from(store, topic, records, Origin::Topic)
}

/// [`apply`] for records of `origin`.
pub fn apply_from(
    store: &Store,
    topic: &str,
    records: &[ChangeRecord],
    origin: Origin,
) -> Result<ApplyStats, ReconcilerError> {
    let (writes, next, stats) = stage(store, topic, records, origin)?;
    let mut w = store.batch_with_capacity(crate::topology::batch_bytes(&writes));
    for (k, v) in &writes {
        match v {
            Some(v) => w.put(k, v),
            None => w.delete(k),
        }
    }
    for (partition, next) in next {
        w.set_offset(topic, partition, next);
    }
    if !w.is_empty() {
        w.commit()?;
    }
    Ok(stats)
}

/// The store writes (`None`: a delete) and next offsets applying `records` leads to, and what
/// it did; nothing is written yet.
type Staged = (
    BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    BTreeMap<i32, i64>,
    ApplyStats,
);

fn stage(
    store: &Store,
    topic: &str,
    records: &[ChangeRecord],
    origin: Origin,
) -> Result<Staged, ReconcilerError> {
    let mut ov = Overlay::new(store);
    // Every record replaces a view held, or finds none: its key is parsed once, and all the
    // views are read at once (docs/benchmarks.md: one point read each was two thirds of the
    // applying thread once views were being overwritten).
    let targets: Vec<Result<(Target, Vec<u8>), String>> = records
        .iter()
        .map(|(_, _, key, _)| {
            target(key).map(|t| {
                let vkey = t.view_key();
                (t, vkey)
            })
        })
        .collect();
    ov.read_ahead(
        targets
            .iter()
            .filter_map(|t| t.as_ref().ok())
            .map(|(_, vkey)| vkey.clone())
            .collect(),
    )?;
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut stats = ApplyStats::default();
    for ((partition, offset, _, payload), target) in records.iter().zip(targets) {
        let n = next.entry(*partition).or_insert(offset + 1);
        *n = (*n).max(offset + 1);
        let applied = match target {
            Ok((target, vkey)) => apply_record(&mut ov, target, vkey, payload.as_deref(), origin)?,
            Err(reason) => Err(reason),
        };
        match applied {
            Ok(s) => stats.add(s),
            Err(reason) => {
                tracing::error!(
                    topic,
                    partition,
                    offset,
                    reason,
                    "change record cannot be applied to the read model; skipped"
                );
                stats.invalid += 1;
            }
        }
    }
    Ok((ov.writes, next, stats))
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

/// The stored view of a household.
pub fn read_household(
    kv: &dyn Kv,
    household_id: &str,
) -> Result<Option<api::Household>, ReconcilerError> {
    let k = key(&["v", "h", household_id]);
    kv.get(&k)?
        .map(|b| api::Household::decode(b.as_slice()).map_err(|e| corrupt(&k, e)))
        .transpose()
}

/// The household indicators of a DIVIPOLA municipality, counted over its households' views
/// (read, not kept as counts: a municipality holds thousands of followed households, not
/// millions of persons).
pub fn household_indicators(
    kv: &dyn Kv,
    municipality: &str,
) -> Result<api::GetHouseholdIndicatorsResponse, ReconcilerError> {
    let prefix = key(&["hm", municipality, ""]);
    let mut out = api::GetHouseholdIndicatorsResponse {
        municipality: municipality.to_owned(),
        ..Default::default()
    };
    let mut dimensions: BTreeMap<String, api::DimensionIndicator> = BTreeMap::new();
    let mut cursor = prefix.clone();
    loop {
        let page = kv.scan_after(&prefix, &cursor, 512)?;
        let Some((last, _)) = page.last() else { break };
        cursor = last.clone();
        for (k, _) in &page {
            let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let Some(h) = read_household(kv, &id)? else {
                continue;
            };
            out.households += 1;
            out.may_leave += u64::from(h.exit.as_ref().is_some_and(|e| e.may_leave));
            for a in h.achievements {
                crate::topology::count_achievement(&mut dimensions, a.dimension, a.state);
            }
        }
    }
    out.dimensions = dimensions.into_values().collect();
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
        out.push((cond.to_owned(), period.to_owned(), decode_counts(&k, &v)?));
    }
    Ok(out)
}

// ---- consuming the changes topic -----------------------------------------------------------

/// Most records applied in one store write.
pub const BATCH_MAX: usize = 2000;
/// How long a started batch waits for more records.
const BATCH_LINGER: Duration = Duration::from_millis(20);
/// How often the lag gauge is refreshed (it asks the brokers for the high watermarks).
const LAG_EVERY: Duration = Duration::from_secs(10);
/// How often the loop asks whether its consumer still knows a broker (its statistics come
/// every 5 s).
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Per partition: the next offset the read model holds, and the high watermark at start.
#[derive(Debug, Default)]
struct Progress {
    next: BTreeMap<i32, i64>,
    target: BTreeMap<i32, i64>,
}

impl Progress {
    fn caught_up(&self) -> bool {
        self.target
            .iter()
            .all(|(p, high)| self.next.get(p).is_some_and(|n| n >= high))
    }

    fn advance(&mut self, partition: i32, next: i64) {
        let n = self.next.entry(partition).or_insert(next);
        *n = (*n).max(next);
    }
}

/// The partitions of `topic`, each at the offset the store holds (or the beginning), and the
/// starting progress; an error while the topic or its partition leaders are not there yet
/// (right after the topic is created) or no broker answers. Blocking.
fn assignment(
    consumer: &ReadConsumer,
    topic: &str,
    store: &Store,
) -> Result<(TopicPartitionList, Progress), String> {
    let timeout = Duration::from_secs(10);
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| format!("metadata: {e}"))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or("topic not in the metadata")?;
    if let Some(e) = t.error() {
        return Err(format!("topic metadata: {e:?}"));
    }
    if t.partitions().is_empty() {
        return Err("topic has no partitions".into());
    }
    let mut tpl = TopicPartitionList::new();
    let mut progress = Progress::default();
    for p in t.partitions() {
        if p.leader() < 0 {
            return Err(format!("partition {} has no leader", p.id()));
        }
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), timeout)
            .map_err(|e| format!("partition {} watermarks: {e}", p.id()))?;
        let stored = store
            .offset(topic, p.id())
            .map_err(|e| format!("stored offset: {e}"))?;
        let offset = stored.map_or(Offset::Beginning, Offset::Offset);
        tpl.add_partition_offset(topic, p.id(), offset)
            .map_err(|e| e.to_string())?;
        progress.next.insert(p.id(), stored.unwrap_or(low).max(low));
        progress.target.insert(p.id(), high);
    }
    Ok((tpl, progress))
}

/// What came of assigning the read model's consumer ([`assign_or_replace`]).
enum Assigning {
    Assigned(Progress),
    Stopped,
    /// The consumer knew no broker for [`ponte_bus::brokers::LOST_AFTER`] while it was being
    /// assigned: a new one took its place, to be assigned in turn.
    Replaced,
}

/// Assigns `consumer` every partition of `topic` ([`assignment`]), trying again while the topic
/// settles (as [`crate::while_topic_settles`] does; each try may wait 10 s for a broker), unless the consumer loses every broker meanwhile: librdkafka never reconnects such
/// a client, whose metadata requests fail until the tries run out, so it is replaced by a new
/// one (logged and counted as the loop replaces one lost later). Between tries the consumer is
/// polled, which is what delivers its statistics (nothing is fetched before it is assigned).
async fn assign_or_replace(
    consumer: &mut Arc<ReadConsumer>,
    kafka: &KafkaConfig,
    topic: &str,
    store: &Store,
    shutdown: &CancellationToken,
) -> Result<Assigning, ReconcilerError> {
    for tries in 1.. {
        if shutdown.is_cancelled() {
            return Ok(Assigning::Stopped);
        }
        if let Some(lost) = consumer.context().lost(Instant::now()) {
            replace(consumer, kafka, topic, lost)?;
            return Ok(Assigning::Replaced);
        }
        let (c, t, s) = (Arc::clone(consumer), topic.to_owned(), store.clone());
        let tried = tokio::task::spawn_blocking(move || assignment(&c, &t, &s))
            .await
            .map_err(|e| ReconcilerError::Startup(format!("read model assign task: {e}")))?;
        let error = match tried {
            Ok((tpl, progress)) => {
                consumer
                    .assign(&tpl)
                    .map_err(|e| ReconcilerError::Startup(format!("read model assign: {e}")))?;
                return Ok(Assigning::Assigned(progress));
            }
            Err(e) => e,
        };
        if tries > crate::SETTLE_TRIES {
            return Err(ReconcilerError::Startup(format!(
                "read model: changes topic {topic}: {error}"
            )));
        }
        tracing::info!(
            error,
            "read model: changes topic {topic}: not ready yet; retrying"
        );
        // Unassigned, the consumer fetches nothing: polling it only serves its events (an
        // error event ends a poll early, hence the loop).
        let until = tokio::time::Instant::now() + crate::SETTLE_PAUSE;
        while tokio::time::Instant::now() < until && !shutdown.is_cancelled() {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::timeout_at(until, consumer.recv()) => {}
            }
        }
    }
    unreachable!("the loop returns")
}

/// Puts a new consumer, assigned nothing yet, in the place of `consumer`, which has known no
/// broker for `lost` and never will again (librdkafka never reconnects such a client): logged
/// and counted, the old one destroyed aside.
fn replace(
    consumer: &mut Arc<ReadConsumer>,
    kafka: &KafkaConfig,
    topic: &str,
    lost: Duration,
) -> Result<(), ReconcilerError> {
    tracing::error!(
        topic,
        seconds = lost.as_secs(),
        "the read model's consumer has known no Kafka broker for a while and never will again: replaced"
    );
    let old = std::mem::replace(consumer, Arc::new(read_consumer(kafka)?));
    ponte_bus::brokers::destroy_aside(old);
    ponte_bus::brokers::replaced(READ_CLIENT);
    Ok(())
}

/// Sum over partitions of the high watermark minus the next offset held (`None` if a broker
/// did not answer).
fn lag(consumer: &ReadConsumer, topic: &str, next: &BTreeMap<i32, i64>) -> Option<i64> {
    let mut total = 0;
    for (p, n) in next {
        let (_, high) = consumer
            .fetch_watermarks(topic, *p, Duration::from_secs(2))
            .ok()?;
        total += (high - n).max(0);
    }
    Some(total)
}

/// Keeps the read model in `store` up to date with every partition of `topic` until
/// `shutdown`.
///
/// Partitions are assigned, not subscribed to: no consumer group is joined and no offsets are
/// committed to Kafka (they live in the store, written with the views). `caught_up` is set to
/// `true` once every partition reached the high watermark it had at start (at once when the
/// topic is empty). With a `feed`, the partitions this instance's write path owns are taken
/// from its committed epochs instead of the topic ([`crate::feed`]).
pub async fn run(
    kafka: KafkaConfig,
    topic: String,
    store: Store,
    caught_up: tokio::sync::watch::Sender<bool>,
    path: ReadPath,
    feed: Option<FeedReceiver>,
    shutdown: CancellationToken,
) -> Result<(), ReconcilerError> {
    metrics::gauge!("ponte_reconciler_read_model_failed").set(0.0);
    let result = follow(kafka, topic, store, caught_up, feed, shutdown).await;
    if let Err(e) = &result {
        path.fail(format!(
            "the read model stopped following the changes topic: {e}"
        ));
    }
    result
}

/// What the read model's loop waited for.
enum Next {
    Stop,
    Consumed(
        Result<ChangeRecord, rdkafka::error::KafkaError>,
        Option<i64>,
    ),
    Batch(Batch),
    Owned(BTreeSet<i32>),
    /// The write path's feed ended: it owns nothing.
    FeedClosed,
    Tick,
}

/// A consumed message as a change record, with its Kafka timestamp (when the reconciler sent
/// it).
fn consumed(m: &rdkafka::message::BorrowedMessage<'_>) -> (ChangeRecord, Option<i64>) {
    (
        (
            m.partition(),
            m.offset(),
            String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            m.payload().map(<[u8]>::to_vec),
        ),
        m.timestamp().to_millis(),
    )
}

/// The read model's consumer, its statistics watched for a client librdkafka left without any
/// broker ([`ponte_bus::brokers`]).
type ReadConsumer = StreamConsumer<Watched>;

/// The client label of the read model's consumer in metrics.
const READ_CLIENT: &str = "ponte-reconciler-read/consumer";

/// A new consumer of the changes topic, assigned nothing yet.
fn read_consumer(kafka: &KafkaConfig) -> Result<ReadConsumer, ReconcilerError> {
    let context = Watched::new(READ_CLIENT).map_err(|e| ReconcilerError::Startup(e.to_string()))?;
    kafka
        .client_config("ponte-reconciler-read")
        // Required by librdkafka for a consumer; never joined (partitions are assigned).
        .set("group.id", "ponte-reconciler-read-model")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_committed")
        // Prefetch at most 16 MiB (librdkafka's default, 64 MiB, is resident memory for
        // nothing: the read model applies changes far faster than that buffer drains).
        .set("queued.max.messages.kbytes", "16384")
        // A fetch that finds nothing committed waits at most 20 ms at the broker (librdkafka's
        // default, 500 ms, left a change readable up to 348 ms after its view at p99; 91 ms
        // with this, for 5 % more CPU at 1,000 records/s: docs/benchmarks.md).
        .set("fetch.wait.max.ms", "20")
        // Statistics only for whether the client still knows a broker.
        .set("statistics.interval.ms", "5000")
        .create_with_context(context)
        .map_err(|e| ReconcilerError::Startup(format!("read model consumer: {e}")))
}

async fn follow(
    kafka: KafkaConfig,
    topic: String,
    store: Store,
    caught_up: tokio::sync::watch::Sender<bool>,
    mut feed: Option<FeedReceiver>,
    shutdown: CancellationToken,
) -> Result<(), ReconcilerError> {
    let mut fault = injected_fault()?;
    let mut consumer = Arc::new(read_consumer(&kafka)?);
    let mut progress = loop {
        match assign_or_replace(&mut consumer, &kafka, &topic, &store, &shutdown).await? {
            Assigning::Assigned(progress) => break progress,
            Assigning::Stopped => return Ok(()),
            Assigning::Replaced => {}
        }
    };
    tracing::info!(
        topic,
        partitions = progress.target.len(),
        fed = feed.is_some(),
        "read model consuming every partition of the changes topic"
    );
    metrics::gauge!("ponte_reconciler_read_model_caught_up").set(0.0);
    let epoch_partitions = metrics::gauge!("ponte_reconciler_read_model_epoch_partitions");
    epoch_partitions.set(0.0);
    let mut reported = false;
    let mut last_lag = Instant::now() - LAG_EVERY;
    let mut last_watch = Instant::now();
    let mut routing = Routing::default();
    let mut owned: BTreeSet<i32> = BTreeSet::new();

    loop {
        if !reported && progress.caught_up() {
            reported = true;
            caught_up.send_replace(true);
            metrics::gauge!("ponte_reconciler_read_model_caught_up").set(1.0);
            tracing::info!(topic, "read model caught up with the changes topic");
        }
        if last_watch.elapsed() >= WATCH_EVERY {
            last_watch = Instant::now();
            if let Some(lost) = consumer.context().lost(last_watch) {
                // A new consumer, assigned the partitions read from the topic at the offsets
                // held. What the old one fetched and was not applied is fetched again.
                replace(&mut consumer, &kafka, &topic, lost)?;
                assign_topic_partitions(&consumer, &topic, &routing, &progress)?;
            }
        }
        if last_lag.elapsed() >= LAG_EVERY {
            last_lag = Instant::now();
            // Partitions taken from the epochs have nothing to read.
            let n: BTreeMap<i32, i64> = progress
                .next
                .iter()
                .filter(|(p, _)| !routing.takes_from_epochs(**p))
                .map(|(p, n)| (*p, *n))
                .collect();
            let (c, t) = (Arc::clone(&consumer), topic.clone());
            if let Ok(Some(lag)) = tokio::task::spawn_blocking(move || lag(&c, &t, &n)).await {
                metrics::gauge!("ponte_reconciler_read_model_lag").set(lag as f64);
            }
        }

        let next = {
            let (batches, assignment) = match feed.as_mut() {
                Some(f) => (Some(&mut f.batches), Some(&mut f.owned)),
                None => (None, None),
            };
            let batches = async {
                match batches {
                    Some(b) => b.recv().await,
                    None => std::future::pending().await,
                }
            };
            let assignment = async {
                match assignment {
                    Some(o) => o.changed().await.map(|()| o.borrow_and_update().clone()),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => Next::Stop,
                m = consumer.recv() => {
                    let m = m.map(|m| consumed(&m));
                    match m {
                        Ok((r, sent)) => Next::Consumed(Ok(r), sent),
                        Err(e) => Next::Consumed(Err(e), None),
                    }
                }
                b = batches => b.map_or(Next::FeedClosed, Next::Batch),
                o = assignment => o.map_or(Next::FeedClosed, Next::Owned),
                // Until caught up, look at the position often: the last record of a partition is
                // usually an epoch's transaction marker, never delivered, so only the position
                // shows the read model has passed it.
                _ = tokio::time::sleep(if reported { Duration::from_secs(1) } else { Duration::from_millis(50) }) => Next::Tick,
            }
        };
        // Partitions that change hands between the epochs and the topic.
        let mut moved = false;
        match next {
            Next::Stop => break,
            Next::Tick => {}
            Next::Consumed(Err(e), _) => {
                tracing::warn!(topic, error = %e, "read model consumer error");
                metrics::counter!("ponte_reconciler_read_model_consumer_errors_total").increment(1);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
            Next::Consumed(Ok(first), sent) => {
                // Each with when it was sent (its Kafka timestamp, set by the reconciler).
                let mut records = vec![(first, sent)];
                let deadline = tokio::time::Instant::now() + BATCH_LINGER;
                while records.len() < BATCH_MAX {
                    match tokio::time::timeout_at(deadline, consumer.recv()).await {
                        Ok(Ok(m)) => records.push(consumed(&m)),
                        Ok(Err(e)) => {
                            tracing::warn!(topic, error = %e, "read model consumer error");
                            metrics::counter!("ponte_reconciler_read_model_consumer_errors_total")
                                .increment(1);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                metrics::counter!("ponte_reconciler_read_model_consumed_total")
                    .increment(records.len() as u64);
                // Fetched before their partition was taken from the epochs, or before it was
                // assigned again at an earlier offset: applied already, or to be.
                records.retain(|((p, offset, _, _), _)| {
                    !routing.takes_from_epochs(*p)
                        && progress.next.get(p).is_none_or(|next| offset >= next)
                });
                let (records, sent): (Vec<ChangeRecord>, Vec<Option<i64>>) =
                    records.into_iter().unzip();
                let sent: Vec<i64> = sent.into_iter().flatten().collect();
                apply_changes(
                    &store,
                    &topic,
                    records,
                    &sent,
                    Origin::Topic,
                    &mut progress,
                    &mut fault,
                )
                .await?;
            }
            Next::Batch(batch) => {
                let sent_ms = batch.sent_ms;
                let positions = positions(&consumer, &topic, &progress);
                let routed = routing.batch(batch, &owned, |p| positions.get(&p).copied());
                for (p, at) in &routed.passed {
                    progress.advance(*p, *at);
                }
                moved = !routed.passed.is_empty() || !routed.to_topic.is_empty();
                if moved {
                    tracing::info!(
                        topic,
                        from_epochs = ?routed.to_epochs(),
                        from_topic = ?routed.to_topic,
                        "read model: partitions change hands"
                    );
                }
                let sent = vec![sent_ms; routed.apply.len()];
                apply_changes(
                    &store,
                    &topic,
                    routed.apply,
                    &sent,
                    Origin::Epochs,
                    &mut progress,
                    &mut fault,
                )
                .await?;
            }
            Next::Owned(now) => {
                owned = now;
                let gone = routing.owned(&owned);
                if !gone.is_empty() {
                    tracing::info!(topic, partitions = ?gone, "read model: partitions no longer owned are read from the topic");
                    moved = true;
                }
            }
            Next::FeedClosed => {
                feed = None;
                owned.clear();
                let gone = routing.owned(&owned);
                moved = !gone.is_empty();
                tracing::info!(
                    topic,
                    "read model: the write path stopped; every partition is read from the topic"
                );
            }
        }
        if moved {
            assign_topic_partitions(&consumer, &topic, &routing, &progress)?;
            epoch_partitions.set(routing.epoch_partitions() as f64);
        }
        // The consumer's position also moves past records never delivered (transaction
        // markers), which matters for reaching the high watermark.
        if !reported {
            for (p, at) in positions(&consumer, &topic, &progress) {
                progress.advance(p, at);
            }
        }
    }
    tracing::info!(topic, "read model stopped");
    Ok(())
}

/// Applies `records` (taken from the topic or the epochs, `from`) in one store write, and
/// advances the progress past them. `sent`: when each was sent, for the delay histogram;
/// `fault`: the batches left until the test fault ([`injected_fault`]).
async fn apply_changes(
    store: &Store,
    topic: &str,
    records: Vec<ChangeRecord>,
    sent: &[i64],
    origin: Origin,
    progress: &mut Progress,
    fault: &mut Option<u64>,
) -> Result<(), ReconcilerError> {
    if records.is_empty() {
        return Ok(());
    }
    if let Some(n) = fault.as_mut() {
        *n = n.saturating_sub(1);
        if *n == 0 {
            return Err(ReconcilerError::Startup(
                "injected fault (PONTE_TEST_READ_MODEL_FAULT): the store refused the batch"
                    .to_owned(),
            ));
        }
    }
    metrics::counter!("ponte_reconciler_read_model_changes_total", "from" => origin.label())
        .increment(records.len() as u64);
    let positions: Vec<(i32, i64)> = records.iter().map(|r| (r.0, r.1 + 1)).collect();
    let (s, t) = (store.clone(), topic.to_owned());
    let stats = tokio::task::spawn_blocking(move || apply_from(&s, &t, &records, origin))
        .await
        .map_err(|e| ReconcilerError::Startup(format!("read model apply task: {e}")))??;
    for (p, n) in positions {
        progress.advance(p, n);
    }
    // How stale `GetPerson` is: from a change's sending in its epoch (before the epoch's
    // commit) to its view being readable here.
    let now = unix_millis();
    let delay = metrics::histogram!("ponte_reconciler_read_model_delay_seconds");
    for ms in sent {
        delay.record((now - ms).max(0) as f64 / 1000.0);
    }
    metrics::counter!("ponte_reconciler_read_model_applied_total")
        .increment(stats.applied + stats.deleted);
    metrics::counter!("ponte_reconciler_read_model_duplicates_total").increment(stats.duplicates);
    metrics::counter!("ponte_reconciler_read_model_invalid_total").increment(stats.invalid);
    Ok(())
}

/// Per partition read from the topic: the next offset the read model will see from it — the
/// consumer's position (past transaction markers) or, when that is not known yet, the next
/// offset held.
fn positions(consumer: &ReadConsumer, topic: &str, progress: &Progress) -> BTreeMap<i32, i64> {
    let mut at = progress.next.clone();
    if let Ok(tpl) = consumer.position() {
        for e in tpl.elements_for_topic(topic) {
            if let Offset::Offset(o) = e.offset() {
                let held = at.entry(e.partition()).or_insert(o);
                *held = (*held).max(o);
            }
        }
    }
    at
}

/// Assigns the consumer the partitions read from the topic, each at the next offset held.
fn assign_topic_partitions(
    consumer: &ReadConsumer,
    topic: &str,
    routing: &Routing,
    progress: &Progress,
) -> Result<(), ReconcilerError> {
    let mut tpl = TopicPartitionList::new();
    for p in progress
        .target
        .keys()
        .filter(|p| !routing.takes_from_epochs(**p))
    {
        let at = progress
            .next
            .get(p)
            .map_or(Offset::Beginning, |n| Offset::Offset(*n));
        tpl.add_partition_offset(topic, *p, at)
            .map_err(|e| ReconcilerError::Startup(format!("read model assign: {e}")))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| ReconcilerError::Startup(format!("read model assign: {e}")))
}

/// Milliseconds since the Unix epoch (a Kafka timestamp's unit).
pub(crate) fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ponte_store::Durability;

    const TOPIC: &str = "ponte.compliance.changes.v1";
    const SP: &str = "3550308";
    const RJ: &str = "3304557";

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("read"), Durability::Process).unwrap();
        (dir, store)
    }

    fn nis(body: &str) -> Nis {
        Nis::with_check_digit(body).unwrap()
    }

    fn outcome(cond: &str, period: &str, status: api::OutcomeStatus) -> api::ConditionalityOutcome {
        api::ConditionalityOutcome {
            conditionality: cond.into(),
            period: period.into(),
            status: status as i32,
            ..Default::default()
        }
    }

    fn person(
        nis: Nis,
        version: u64,
        municipality: &str,
        outcomes: Vec<api::ConditionalityOutcome>,
    ) -> api::Person {
        api::Person {
            nis: nis.to_string(),
            view_version: version,
            municipality: municipality.into(),
            family_id: "F1".into(),
            registered: true,
            outcomes,
            ..Default::default()
        }
    }

    fn person_change(p: &api::Person) -> Option<Vec<u8>> {
        Some(
            api::ComplianceChange {
                view: Some(api::compliance_change::View::Person(p.clone())),
            }
            .encode_to_vec(),
        )
    }

    fn family_change(f: &api::Family) -> Option<Vec<u8>> {
        Some(
            api::ComplianceChange {
                view: Some(api::compliance_change::View::Family(f.clone())),
            }
            .encode_to_vec(),
        )
    }

    fn rec(offset: i64, p: &api::Person) -> ChangeRecord {
        (0, offset, format!("person:{}", p.nis), person_change(p))
    }

    fn listed(store: &Store, mun: &str) -> Vec<String> {
        list_persons(store, mun, "", 1000, &|_| true)
            .unwrap()
            .into_iter()
            .map(|p| p.nis)
            .collect()
    }

    fn counts(store: &Store, mun: &str) -> BTreeMap<(String, String), Counts> {
        read_indicators(store, mun)
            .unwrap()
            .into_iter()
            .map(|(c, p, n)| ((c, p), n))
            .collect()
    }

    /// Every counts row recomputed from the stored person views.
    fn recount(store: &Store) -> BTreeMap<Vec<u8>, Counts> {
        let mut out: BTreeMap<Vec<u8>, Counts> = BTreeMap::new();
        for (_, v) in store.scan_prefix(b"v/p/").unwrap() {
            let p = api::Person::decode(v.as_slice()).unwrap();
            for o in &p.outcomes {
                if let Some(s) = domain_status(o.status) {
                    out.entry(key(&["i", &p.municipality, &o.conditionality, &o.period]))
                        .or_default()
                        .add(s);
                }
            }
        }
        out.retain(|_, c| *c != Counts::default());
        out
    }

    fn stored_counts(store: &Store) -> BTreeMap<Vec<u8>, Counts> {
        store
            .scan_prefix(b"i/")
            .unwrap()
            .into_iter()
            .map(|(k, v)| {
                let c = decode_counts(&k, &v).unwrap();
                (k, c)
            })
            .collect()
    }

    use api::OutcomeStatus::{Compliant, NonCompliant, NotFollowed, NotRequired};

    #[test]
    fn lower_or_equal_versions_are_ignored() {
        let (_d, s) = store();
        let a = nis("1234567890");
        let v2 = person(a, 2, SP, vec![outcome("education", "2025-B1", Compliant)]);
        let stats = apply(&s, TOPIC, &[rec(0, &v2)]).unwrap();
        assert_eq!(stats.applied, 1);

        // The same version again (redelivery) and an older one change nothing.
        let mut same = v2.clone();
        same.outcomes = vec![outcome("education", "2025-B1", NonCompliant)];
        let v1 = person(a, 1, RJ, vec![outcome("education", "2025-B1", NotFollowed)]);
        let stats = apply(&s, TOPIC, &[rec(1, &v2), rec(2, &same), rec(3, &v1)]).unwrap();
        assert_eq!(
            stats,
            ApplyStats {
                duplicates: 3,
                ..Default::default()
            }
        );
        assert_eq!(read_person(&s, &a).unwrap(), Some(v2));
        assert_eq!(listed(&s, SP), [a.to_string()]);
        assert!(listed(&s, RJ).is_empty());
        let c = counts(&s, SP)[&("education".to_owned(), "2025-B1".to_owned())];
        assert_eq!((c.public, c.followed, c.compliant), (1, 1, 1));
        assert!(counts(&s, RJ).is_empty());
    }

    #[test]
    fn moving_municipality_moves_the_index_entry_and_the_counts() {
        let (_d, s) = store();
        let a = nis("1234567890");
        let b = nis("2234567890");
        let out = vec![outcome("education", "2025-B1", NonCompliant)];
        apply(
            &s,
            TOPIC,
            &[
                rec(0, &person(a, 1, SP, out.clone())),
                rec(1, &person(b, 1, SP, out.clone())),
            ],
        )
        .unwrap();
        apply(&s, TOPIC, &[rec(2, &person(a, 2, RJ, out.clone()))]).unwrap();
        assert_eq!(listed(&s, SP), [b.to_string()]);
        assert_eq!(listed(&s, RJ), [a.to_string()]);
        let key = ("education".to_owned(), "2025-B1".to_owned());
        assert_eq!(counts(&s, SP)[&key].non_compliant, 1);
        assert_eq!(counts(&s, RJ)[&key].non_compliant, 1);
        assert_eq!(stored_counts(&s), recount(&s));
    }

    #[test]
    fn a_new_version_writes_its_index_entry_only_when_the_municipality_changed() {
        let (_d, s) = store();
        let a = nis("1234567890");
        let written = |records: &[ChangeRecord]| -> Vec<String> {
            let (writes, _, _) = stage(&s, TOPIC, records, Origin::Topic).unwrap();
            writes
                .iter()
                .map(|(k, v)| {
                    let k = String::from_utf8_lossy(k);
                    if v.is_some() {
                        format!("put {k}")
                    } else {
                        format!("delete {k}")
                    }
                })
                .collect()
        };
        let v1 = person(a, 1, SP, vec![outcome("education", "2025-B1", Compliant)]);
        apply(&s, TOPIC, &[rec(0, &v1)]).unwrap();
        // Same municipality, one outcome changed: the view and the counts row, no index entry.
        let v2 = person(
            a,
            2,
            SP,
            vec![outcome("education", "2025-B1", NonCompliant)],
        );
        assert_eq!(
            written(&[rec(1, &v2)]),
            [
                format!("put i/{SP}/education/2025-B1"),
                format!("put v/p/{a}"),
            ]
        );
        apply(&s, TOPIC, &[rec(1, &v2)]).unwrap();
        assert_eq!(listed(&s, SP), [a.to_string()]);
        // Another municipality: the entry moves.
        let v3 = person(
            a,
            3,
            RJ,
            vec![outcome("education", "2025-B1", NonCompliant)],
        );
        assert_eq!(
            written(&[rec(2, &v3)]),
            [
                format!("put i/{RJ}/education/2025-B1"),
                format!("delete i/{SP}/education/2025-B1"),
                format!("put m/{RJ}/{a}"),
                format!("delete m/{SP}/{a}"),
                format!("put v/p/{a}"),
            ]
        );
        apply(&s, TOPIC, &[rec(2, &v3)]).unwrap();
        assert!(listed(&s, SP).is_empty());
        assert_eq!(listed(&s, RJ), [a.to_string()]);
    }

    /// A deterministic mix of updates, redeliveries, moves and tombstones of five people, in
    /// 60 batches of three.
    fn mixed_batches() -> Vec<Vec<ChangeRecord>> {
        let people: Vec<Nis> = (1..=5).map(|i| nis(&format!("{i}234567890"))).collect();
        let statuses = [Compliant, NonCompliant, NotFollowed, NotRequired];
        let muns = [SP, RJ];
        let mut version: BTreeMap<Nis, u64> = BTreeMap::new();
        let mut offset = 0;
        let mut batches = Vec::new();
        for step in 0..60usize {
            let mut batch = Vec::new();
            for j in 0..3usize {
                let who = people[(step * 7 + j * 3) % people.len()];
                let kind = (step + j) % 6;
                let payload = if kind == 5 && step % 4 == 0 {
                    // A tombstone: the versions start again.
                    version.insert(who, 0);
                    None
                } else {
                    let v = version.entry(who).or_insert(0);
                    // Kind 4 redelivers the version held (with other content: ignored).
                    if !(kind == 4 && *v > 0) {
                        *v += 1;
                    }
                    let outcomes = (0..(step + j) % 4)
                        .map(|k| {
                            outcome(
                                ["education", "health"][k % 2],
                                ["2025-B1", "2025-B2"][(k + step) % 2],
                                statuses[(step + j + k) % statuses.len()],
                            )
                        })
                        .collect();
                    person_change(&person(who, *v, muns[(step / 3 + j) % 2], outcomes))
                };
                batch.push((0, offset, format!("person:{who}"), payload));
                offset += 1;
            }
            batches.push(batch);
        }
        batches
    }

    #[test]
    fn counts_equal_a_recount_after_a_sequence_of_updates() {
        let (_d, s) = store();
        for (step, batch) in mixed_batches().iter().enumerate() {
            apply(&s, TOPIC, batch).unwrap();
            assert_eq!(stored_counts(&s), recount(&s), "after step {step}");
        }
        assert!(!stored_counts(&s).is_empty());
    }

    #[test]
    fn counts_rows_in_json_are_read_and_rewritten_in_format_2_when_they_change() {
        // The same changes into two stores; one has its rows rewritten halfway in JSON, as the
        // read model wrote them before format 2.
        let (_d1, earlier) = store();
        let (_d2, fresh) = store();
        let rows = |s: &Store| s.scan_prefix(b"i/").unwrap();
        let batches = mixed_batches();
        for (step, batch) in batches.iter().enumerate() {
            if step == batches.len() / 2 {
                let mut w = earlier.batch_with_capacity(0);
                for (k, v) in rows(&earlier) {
                    let c = decode_counts(&k, &v).unwrap();
                    w.put(&k, &serde_json::to_vec(&c).unwrap());
                }
                w.commit().unwrap();
                assert!(!rows(&earlier).is_empty());
                assert!(rows(&earlier).iter().all(|(_, v)| v[0] == b'{'));
                for mun in [SP, RJ] {
                    assert_eq!(counts(&earlier, mun), counts(&fresh, mun), "JSON rows read");
                }
            }
            apply(&earlier, TOPIC, batch).unwrap();
            apply(&fresh, TOPIC, batch).unwrap();
            assert_eq!(
                stored_counts(&earlier),
                recount(&earlier),
                "after step {step}"
            );
        }
        assert_eq!(stored_counts(&earlier), stored_counts(&fresh));
        assert!(rows(&earlier).iter().any(|(_, v)| v[0] == 2));
        assert!(rows(&fresh).iter().all(|(_, v)| v[0] == 2));
        // A row in neither format is an error naming it.
        let mut w = fresh.batch_with_capacity(0);
        w.put(format!("i/{SP}/education/2025-B1").as_bytes(), b"\x07");
        w.commit().unwrap();
        match read_indicators(&fresh, SP) {
            Err(ReconcilerError::Corrupt { key, .. }) => {
                assert_eq!(key, format!("i/{SP}/education/2025-B1"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn two_updates_of_one_key_in_one_batch() {
        let (_d, s) = store();
        let a = nis("1234567890");
        let v1 = person(a, 1, SP, vec![outcome("health", "2025-S1", NotFollowed)]);
        let v2 = person(a, 2, RJ, vec![outcome("health", "2025-S1", Compliant)]);
        let stats = apply(&s, TOPIC, &[rec(0, &v1), rec(1, &v2), rec(2, &v1)]).unwrap();
        assert_eq!((stats.applied, stats.duplicates), (2, 1));
        assert_eq!(read_person(&s, &a).unwrap(), Some(v2));
        assert!(listed(&s, SP).is_empty());
        assert_eq!(listed(&s, RJ), [a.to_string()]);
        assert!(counts(&s, SP).is_empty());
        let c = counts(&s, RJ)[&("health".to_owned(), "2025-S1".to_owned())];
        assert_eq!((c.public, c.followed, c.compliant), (1, 1, 1));
        assert_eq!(stored_counts(&s), recount(&s));
    }

    #[test]
    fn families_are_stored_and_replaced_by_newer_versions() {
        let (_d, s) = store();
        let f1 = api::Family {
            family_id: "F1".into(),
            members: vec![nis("1234567890").to_string()],
            view_version: 1,
            ..Default::default()
        };
        let mut f2 = f1.clone();
        f2.view_version = 2;
        f2.non_compliant_periods = vec!["2025-B1".into()];
        let stats = apply(
            &s,
            TOPIC,
            &[
                (1, 0, "family:F1".into(), family_change(&f1)),
                (1, 1, "family:F1".into(), family_change(&f2)),
                (1, 2, "family:F1".into(), family_change(&f1)),
            ],
        )
        .unwrap();
        assert_eq!((stats.applied, stats.duplicates), (2, 1));
        assert_eq!(read_family(&s, "F1").unwrap(), Some(f2));
        assert_eq!(read_family(&s, "F2").unwrap(), None);
        // A family tombstone removes the view.
        apply(&s, TOPIC, &[(1, 3, "family:F1".into(), None)]).unwrap();
        assert_eq!(read_family(&s, "F1").unwrap(), None);
    }

    #[test]
    fn a_tombstone_removes_the_view_its_index_entry_and_its_counts() {
        let (_d, s) = store();
        let a = nis("1234567890");
        let b = nis("2234567890");
        let out = vec![outcome("education", "2025-B1", Compliant)];
        apply(
            &s,
            TOPIC,
            &[
                rec(0, &person(a, 3, SP, out.clone())),
                rec(1, &person(b, 1, SP, out.clone())),
            ],
        )
        .unwrap();
        let stats = apply(&s, TOPIC, &[(0, 2, format!("person:{a}"), None)]).unwrap();
        assert_eq!(stats.deleted, 1);
        assert_eq!(read_person(&s, &a).unwrap(), None);
        assert_eq!(listed(&s, SP), [b.to_string()]);
        let key = ("education".to_owned(), "2025-B1".to_owned());
        assert_eq!(counts(&s, SP)[&key].compliant, 1);
        // Once the last contribution goes, so does the row.
        apply(&s, TOPIC, &[(0, 3, format!("person:{b}"), None)]).unwrap();
        assert!(listed(&s, SP).is_empty());
        assert!(counts(&s, SP).is_empty());
        // A tombstone for a view not held changes nothing; after one, any version is new.
        let stats = apply(&s, TOPIC, &[(0, 4, format!("person:{a}"), None)]).unwrap();
        assert_eq!(stats.duplicates, 1);
        apply(&s, TOPIC, &[rec(5, &person(a, 1, RJ, out))]).unwrap();
        assert_eq!(listed(&s, RJ), [a.to_string()]);
        assert_eq!(stored_counts(&s), recount(&s));
    }

    #[test]
    fn offsets_are_stored_with_the_batch() {
        let (_d, s) = store();
        assert_eq!(s.offset(TOPIC, 0).unwrap(), None);
        let a = nis("1234567890");
        let b = nis("2234567890");
        apply(
            &s,
            TOPIC,
            &[
                (
                    0,
                    10,
                    format!("person:{a}"),
                    person_change(&person(a, 1, SP, vec![])),
                ),
                (
                    3,
                    7,
                    format!("person:{b}"),
                    person_change(&person(b, 1, SP, vec![])),
                ),
                (0, 11, format!("person:{a}"), None),
                // Skipped records are consumed too.
                (3, 8, "person:nonsense".into(), Some(vec![1, 2, 3])),
            ],
        )
        .unwrap();
        assert_eq!(s.offset(TOPIC, 0).unwrap(), Some(12));
        assert_eq!(s.offset(TOPIC, 3).unwrap(), Some(9));
        assert_eq!(s.offset(TOPIC, 1).unwrap(), None);
    }

    #[test]
    fn undecodable_or_mismatched_records_are_skipped() {
        let (_d, s) = store();
        let a = nis("1234567890");
        let b = nis("2234567890");
        let f = api::Family {
            family_id: "F1".into(),
            view_version: 1,
            ..Default::default()
        };
        let stats = apply(
            &s,
            TOPIC,
            &[
                (0, 0, format!("person:{a}"), Some(vec![0xff, 0xff, 0xff])),
                (
                    0,
                    1,
                    "nobody".into(),
                    person_change(&person(a, 1, SP, vec![])),
                ),
                (
                    0,
                    2,
                    format!("person:{b}"),
                    person_change(&person(a, 1, SP, vec![])),
                ),
                (0, 3, format!("person:{a}"), family_change(&f)),
                (0, 4, "family:F1/x".into(), family_change(&f)),
                (0, 5, format!("person:{a}"), Some(Vec::new())),
                (
                    0,
                    6,
                    format!("person:{b}"),
                    person_change(&person(b, 1, SP, vec![])),
                ),
            ],
        )
        .unwrap();
        assert_eq!((stats.invalid, stats.applied), (6, 1));
        assert_eq!(read_person(&s, &a).unwrap(), None);
        assert_eq!(listed(&s, SP), [b.to_string()]);
        assert_eq!(s.offset(TOPIC, 0).unwrap(), Some(7));
    }

    #[test]
    fn a_view_is_stored_as_it_arrived_and_only_if_it_decodes_whole() {
        let (_d, s) = store();
        let a = nis("1234567890");
        let mut p = person(
            a,
            1,
            SP,
            vec![outcome(
                "education",
                "2025-B2",
                api::OutcomeStatus::NonCompliant,
            )],
        );
        p.outcomes[0].evidence_json = "{\"months\":[]}".into();
        p.outcomes[0].note = "Attendance below 85 %.".into();
        let change = person_change(&p).unwrap();
        // What the index and counts read of the view decodes, but the view does not: a record
        // source (field 10) that is not a message.
        let mut broken = person(a, 2, SP, vec![]).encode_to_vec();
        broken.extend_from_slice(&[0x52, 0x01, 0xff]);
        // ComplianceChange field 1 (the person), length-delimited.
        let mut broken_change = vec![0x0a, u8::try_from(broken.len()).unwrap()];
        broken_change.extend_from_slice(&broken);
        assert!(PersonCounted::decode(broken.as_slice()).is_ok());
        let stats = apply(
            &s,
            TOPIC,
            &[
                (0, 0, format!("person:{a}"), Some(change)),
                (0, 1, format!("person:{a}"), Some(broken_change)),
            ],
        )
        .unwrap();
        assert_eq!((stats.applied, stats.invalid), (1, 1));
        assert_eq!(read_person(&s, &a).unwrap(), Some(p.clone()));
        assert_eq!(
            s.get(&key(&["v", "p", a.as_str()])).unwrap(),
            Some(p.encode_to_vec()),
            "the bytes that arrived are the bytes stored"
        );
        assert_eq!(counts(&s, SP).len(), 1);
    }

    #[test]
    fn changes_from_the_epochs_end_where_the_same_changes_from_the_topic_end() {
        let (a, b) = (nis("1234567890"), nis("2345678901"));
        let nc = |p: &str| outcome("education", p, api::OutcomeStatus::NonCompliant);
        let f = api::Family {
            family_id: "F1".into(),
            view_version: 1,
            ..Default::default()
        };
        let records = vec![
            rec(0, &person(a, 1, SP, vec![nc("2025-B1")])),
            rec(1, &person(b, 1, SP, vec![nc("2025-B1"), nc("2025-B2")])),
            (0, 2, "family:F1".into(), family_change(&f)),
            // Moves to another municipality; an older version is ignored.
            rec(3, &person(a, 3, RJ, vec![nc("2025-B2")])),
            rec(4, &person(a, 2, SP, vec![])),
            (0, 5, format!("person:{b}"), None),
            // A view under another person's key is refused either way.
            (
                0,
                6,
                format!("person:{b}"),
                person_change(&person(a, 9, SP, vec![])),
            ),
        ];
        let everything = |s: &Store| s.scan_prefix(b"").unwrap();
        let (_d1, topic) = store();
        let from_topic = apply(&topic, TOPIC, &records).unwrap();
        let (_d2, epochs) = store();
        let from_epochs = apply_from(&epochs, TOPIC, &records, Origin::Epochs).unwrap();
        assert_eq!(
            (
                from_epochs.applied,
                from_epochs.duplicates,
                from_epochs.invalid
            ),
            (
                from_topic.applied,
                from_topic.duplicates,
                from_topic.invalid
            )
        );
        assert_eq!(from_epochs.invalid, 1);
        assert_eq!(everything(&epochs), everything(&topic));
        assert_eq!(listed(&epochs, RJ), [a.to_string()]);
        assert_eq!(stored_counts(&epochs), recount(&epochs));
    }

    /// A consumer that loses every broker while it is being assigned is replaced, from the
    /// statistics polled between tries. The loss is stood in for by
    /// `PONTE_TEST_FORGET_BROKERS`, which a process reads when it creates the client and a test
    /// cannot set in its own process (no `unsafe`): the test runs itself again with it. No
    /// broker listens at the bootstrap address, so every try fails as a lost client's do.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_consumer_lost_while_it_is_being_assigned_is_replaced() {
        const CHILD: &str = "PONTE_TEST_READ_MODEL_ASSIGN_CHILD";
        const NAME: &str =
            "readmodel::tests::a_consumer_lost_while_it_is_being_assigned_is_replaced";
        if std::env::var_os(CHILD).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([NAME, "--exact", "--nocapture"])
                .env(CHILD, "1")
                .env("PONTE_TEST_FORGET_BROKERS", format!("{READ_CLIENT}:1"))
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                text.contains("1 passed"),
                "the test ran in the child: {text}"
            );
            return;
        }
        let kafka = KafkaConfig {
            // The discard port: nothing listens there.
            bootstrap_servers: "127.0.0.1:9".into(),
            message_timeout_ms: 5_000,
            properties: BTreeMap::new(),
        };
        let (_dir, store) = store();
        let mut consumer = Arc::new(read_consumer(&kafka).unwrap());
        let first = Arc::clone(&consumer);
        let started = Instant::now();
        let shutdown = CancellationToken::new();
        let got = assign_or_replace(&mut consumer, &kafka, "changes", &store, &shutdown)
            .await
            .unwrap();
        assert!(matches!(got, Assigning::Replaced), "replaced, not given up");
        assert!(started.elapsed() >= ponte_bus::brokers::LOST_AFTER);
        assert!(
            !Arc::ptr_eq(&first, &consumer),
            "a new consumer took its place"
        );
        assert!(
            first.context().lost(Instant::now()).is_some(),
            "the old one had lost its brokers"
        );
        // The new one is tried in turn, and the shutdown ends the tries.
        shutdown.cancel();
        let got = assign_or_replace(&mut consumer, &kafka, "changes", &store, &shutdown)
            .await
            .unwrap();
        assert!(matches!(got, Assigning::Stopped));
    }

    #[test]
    fn progress_is_caught_up_at_the_start_watermarks() {
        let mut p = Progress::default();
        assert!(p.caught_up(), "an empty topic is caught up");
        p.target.insert(0, 5);
        p.target.insert(1, 0);
        p.next.insert(0, 0);
        p.next.insert(1, 0);
        assert!(!p.caught_up());
        p.advance(0, 5);
        p.advance(0, 3);
        assert!(p.caught_up());
    }

    fn household(id: &str, version: u64, mun: &str, may_leave: bool) -> api::Household {
        api::Household {
            household_id: id.into(),
            municipality: mun.into(),
            view_version: version,
            achievements: vec![
                api::HouseholdAchievement {
                    achievement: "L01".into(),
                    dimension: "identificacion".into(),
                    state: api::AchievementState::AchievementReached as i32,
                    ..Default::default()
                },
                api::HouseholdAchievement {
                    achievement: "L21".into(),
                    dimension: "habitabilidad".into(),
                    state: if may_leave {
                        api::AchievementState::AchievementReached
                    } else {
                        api::AchievementState::AchievementUnknown
                    } as i32,
                    ..Default::default()
                },
            ],
            exit: Some(api::HouseholdExit {
                may_leave,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn household_change(h: &api::Household) -> Option<Vec<u8>> {
        Some(
            api::ComplianceChange {
                view: Some(api::compliance_change::View::Household(h.clone())),
            }
            .encode_to_vec(),
        )
    }

    #[test]
    fn households_are_indexed_by_municipality_counted_and_withdrawn_by_a_tombstone() {
        let (_d, s) = store();
        let h1 = household("H1", 1, "52001", false);
        let h1b = household("H1", 2, "52001", true);
        let h2 = household("H2", 1, "52001", false);
        let h3 = household("H3", 1, "05001", true);
        let recs: Vec<ChangeRecord> = [&h1, &h2, &h3, &h1b, &h1]
            .iter()
            .enumerate()
            .map(|(i, h)| {
                (
                    0,
                    i as i64,
                    format!("household:{}", h.household_id),
                    household_change(h),
                )
            })
            .collect();
        let stats = apply(&s, TOPIC, &recs).unwrap();
        assert_eq!((stats.applied, stats.duplicates), (4, 1));
        assert_eq!(read_household(&s, "H1").unwrap(), Some(h1b.clone()));
        let pasto = household_indicators(&s, "52001").unwrap();
        assert_eq!((pasto.households, pasto.may_leave), (2, 1));
        let habitabilidad = pasto
            .dimensions
            .iter()
            .find(|d| d.dimension == "habitabilidad")
            .unwrap();
        assert_eq!((habitabilidad.reached, habitabilidad.unknown), (1, 1));
        assert_eq!(household_indicators(&s, "05001").unwrap().households, 1);
        // Moving to another municipality moves the index entry.
        let moved = household("H2", 2, "05001", false);
        apply(
            &s,
            TOPIC,
            &[(0, 5, "household:H2".into(), household_change(&moved))],
        )
        .unwrap();
        assert_eq!(household_indicators(&s, "52001").unwrap().households, 1);
        assert_eq!(household_indicators(&s, "05001").unwrap().households, 2);
        // A tombstone removes the view and its index entry.
        let stats = apply(&s, TOPIC, &[(0, 6, "household:H1".into(), None)]).unwrap();
        assert_eq!(stats.deleted, 1);
        assert_eq!(read_household(&s, "H1").unwrap(), None);
        assert_eq!(household_indicators(&s, "52001").unwrap().households, 0);
        // A payload of another household than the key's is skipped.
        let stats = apply(
            &s,
            TOPIC,
            &[(0, 7, "household:H9".into(), household_change(&h3))],
        )
        .unwrap();
        assert_eq!(stats.invalid, 1);
    }
}
