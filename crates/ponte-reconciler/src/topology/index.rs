//! A partition's municipality index and outcome counts: what `ListPersons` and `GetIndicators`
//! read of the persons an instance owns, kept by the person stage from each view it publishes.
//!
//! | key | value |
//! |---|---|
//! | `mi/<municipality>/<nis>` | the person's view names the municipality (empty value) |
//! | `ic/<municipality>/<conditionality>/<period>` | outcome counts of the partition's persons (format byte 2, then `IndicatorCounts`); a row all zero is not kept |
//! | `hx/<DIVIPOLA municipality>/<household id>` | a followed household's view names the municipality; the value is what `GetHouseholdIndicators` counts of it (`HouseholdCounted`) |
//!
//! Derived, never a source of truth: each person's digest keeps what the index holds of them
//! ([`Indexed`]: the view's municipality and its outcomes in the public), and each household's
//! doc what it holds of the household ([`HouseholdIndexed`]), so a new view moves the index
//! from the old digest to the new one without the old view. The tables are written
//! with the epoch into the local store and **never to the changelog** (an index entry per new
//! person would be half a produced message more per input): a restore derives them from the
//! `p/` and `h/` entries it applies, the local value read first ([`Rederive`]); a partition
//! whose index is not whole — never built, or a restore met a digest without what the index
//! needs (one written before it) — is built from its `p/` and `h/` entries before it is served
//! ([`Topology::build_index`]). `meta/index/<p>` marks a partition's index whole with its state
//! at a changelog offset, written with the partition's restore marker by every epoch and
//! restore ([`index_marker`]).
use std::collections::HashMap;

use ponte_domain::indicators::Counts;
use ponte_proto::reconciler::v1::{
    HouseholdCounted, IndicatorCounts, OutcomeCounted, PersonEntryDigest,
};

pub use super::household::HouseholdIndexed;
use super::*;

/// The version of the index `meta/index/<p>` names: a partition marked with another is built
/// again.
/// Version 2 added the households (`hx/`).
const INDEX_VERSION: u8 = 2;

/// `mi/<municipality>/<nis>`: the persons of a municipality.
const MUNICIPALITY_INDEX: &str = "mi";
/// `ic/<municipality>/<conditionality>/<period>`: the outcome counts of a municipality.
const OUTCOME_COUNTS: &str = "ic";
/// `hx/<municipality>/<household id>`: the followed households of a municipality.
const HOUSEHOLD_INDEX: &str = "hx";
/// The derived tables' prefixes: state keys written locally, never to the changelog.
pub(super) const DERIVED: [&str; 3] = [MUNICIPALITY_INDEX, OUTCOME_COUNTS, HOUSEHOLD_INDEX];

/// Whether a full state key (partition prefix included) is of a derived table: written to the
/// local store with its epoch, never sent to the changelog.
pub fn is_derived(key: &[u8]) -> bool {
    DERIVED.contains(&table_of(key))
}

/// The key marking partition `p`'s index whole.
pub fn index_marker_key(p: i32) -> Vec<u8> {
    format!("meta/index/{p}").into_bytes()
}

/// The marker's value: the index (of this version) is whole with the partition's state at
/// changelog offset `changelog` (the partition's restore marker when it was written). Every
/// epoch writes both together, so a build that does not keep the index (an older version run
/// on the same store in between) leaves them apart, and the index is built again.
pub fn index_marker(changelog: i64) -> Vec<u8> {
    let mut v = vec![INDEX_VERSION];
    v.extend_from_slice(&changelog.to_be_bytes());
    v
}

/// Whether `value` (of [`index_marker_key`]) marks an index of this version whole with the
/// state at changelog offset `changelog`.
pub fn index_is_whole(value: Option<&[u8]>, changelog: i64) -> bool {
    value == Some(index_marker(changelog).as_slice())
}

/// The prefixes (full keys) of partition `p`'s derived tables, to clear them before a build.
pub fn index_prefixes(p: i32) -> Vec<Vec<u8>> {
    DERIVED
        .iter()
        .map(|t| [partition_prefix(p), format!("{t}/").into_bytes()].concat())
        .collect()
}

fn local_key(table: &str, parts: &[&str]) -> Vec<u8> {
    let mut k = String::from(table);
    for p in parts {
        k.push('/');
        k.push_str(p);
    }
    k.into_bytes()
}

/// The domain status of a view's outcome status (`None`: unspecified or unknown).
pub(crate) fn domain_status(s: i32) -> Option<Status> {
    match api::OutcomeStatus::try_from(s).ok()? {
        api::OutcomeStatus::Compliant => Some(Status::Compliant),
        api::OutcomeStatus::NonCompliant => Some(Status::NonCompliant),
        api::OutcomeStatus::NotFollowed => Some(Status::NotFollowed),
        api::OutcomeStatus::NotRequired => Some(Status::NotRequired),
        api::OutcomeStatus::Unspecified => None,
    }
}

/// What the index holds of one person: the municipality their view names (none: not indexed)
/// and the outcomes it counts, in (conditionality, period) order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Indexed {
    municipality: String,
    counted: Vec<(String, String, Status)>,
}

impl Indexed {
    /// What the index holds of a person whose view is `view`.
    pub(super) fn of_view(view: &api::Person) -> Indexed {
        let mut counted: Vec<(String, String, Status)> = view
            .outcomes
            .iter()
            .filter_map(|o| {
                let status = domain_status(o.status).filter(|s| s.in_public())?;
                Some((o.conditionality.clone(), o.period.clone(), status))
            })
            .collect();
        counted.sort();
        Indexed {
            municipality: view.municipality.clone(),
            counted,
        }
    }

    /// What `digest` says the index holds of its person; `None` for a digest written before the
    /// index (it does not say).
    pub(super) fn of_digest(digest: &PersonDigest) -> Option<Indexed> {
        if !digest.indexed {
            return None;
        }
        Some(Indexed {
            municipality: digest.municipality.clone(),
            counted: digest
                .counted
                .iter()
                .filter_map(|o| {
                    Some((
                        o.conditionality.clone(),
                        o.period.clone(),
                        domain_status(o.status)?,
                    ))
                })
                .collect(),
        })
    }

    /// Keeps this in `digest`.
    pub(super) fn keep_in(&self, digest: &mut PersonDigest) {
        digest.indexed = true;
        digest.municipality = self.municipality.clone();
        digest.counted = self
            .counted
            .iter()
            .map(|(c, p, s)| OutcomeCounted {
                conditionality: c.clone(),
                period: p.clone(),
                status: status_view(*s) as i32,
            })
            .collect();
    }

    /// What a `p/` value's digest says, read without decoding the records: `Ok(None)` for a
    /// value without a digest (no view published), `Err` for one that does not say (a digest
    /// written before the index, a value in format 1) or does not decode.
    pub fn of_stored_person(value: &[u8]) -> Result<Option<Indexed>, String> {
        match value.first() {
            Some(2 | 3) => {}
            _ => return Err("a person value in a format without the index's digest".to_owned()),
        }
        let entry = PersonEntryDigest::decode(&value[1..]).map_err(|e| e.to_string())?;
        match entry.digest {
            None => Ok(None),
            Some(d) => Indexed::of_digest(&d)
                .map(Some)
                .ok_or_else(|| "a digest written before the index".to_owned()),
        }
    }
}

/// A write of a full key: `Some` to put, `None` to delete.
pub type StoreWrite = (Vec<u8>, Option<Vec<u8>>);

/// Which persons a list keeps (`ListPersons`'s filter): those with an outcome matching every
/// part set; everyone when none is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// A period (`2025-B2`); empty for any.
    pub period: String,
    /// A conditionality; empty for any.
    pub conditionality: String,
    /// A status; unspecified for any.
    pub status: api::OutcomeStatus,
}

impl ListFilter {
    /// Whether the filter keeps the person whose view is `p`.
    pub fn keeps(&self, p: &api::Person) -> bool {
        !self.filters()
            || p.outcomes.iter().any(|o| {
                (self.period.is_empty() || o.period == self.period)
                    && (self.conditionality.is_empty() || o.conditionality == self.conditionality)
                    && (self.status == api::OutcomeStatus::Unspecified
                        || o.status == self.status as i32)
            })
    }

    fn filters(&self) -> bool {
        !(self.period.is_empty()
            && self.conditionality.is_empty()
            && self.status == api::OutcomeStatus::Unspecified)
    }

    /// Whether what the index holds of a person can tell that the filter does not keep them:
    /// when it asks for a status the index counts (every one in the public).
    fn screens(&self) -> bool {
        domain_status(self.status as i32).is_some_and(|s| s.in_public())
    }

    /// False when the person (what the index holds of them) has no counted outcome the filter
    /// keeps, so their view, whose outcomes in that status are those counted, has none either.
    fn may_keep(&self, indexed: &Indexed) -> bool {
        indexed.counted.iter().any(|(c, p, s)| {
            (self.period.is_empty() || *p == self.period)
                && (self.conditionality.is_empty() || *c == self.conditionality)
                && status_view(*s) == self.status
        })
    }
}

/// A change of the four counts of a row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Shift([i64; 4]);

impl Shift {
    fn of(status: Status, sign: i64) -> Shift {
        let mut c = Counts::default();
        c.add(status);
        Shift([
            sign * c.public as i64,
            sign * c.followed as i64,
            sign * c.compliant as i64,
            sign * c.non_compliant as i64,
        ])
    }

    fn add(&mut self, other: Shift) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    fn is_zero(&self) -> bool {
        self.0 == [0; 4]
    }

    /// `counts` shifted (never below zero).
    fn applied(&self, counts: Counts) -> Counts {
        let at = |v: u64, d: i64| (v as i64 + d).max(0) as u64;
        Counts {
            public: at(counts.public, self.0[0]),
            followed: at(counts.followed, self.0[1]),
            compliant: at(counts.compliant, self.0[2]),
            non_compliant: at(counts.non_compliant, self.0[3]),
        }
    }
}

/// What moving a person (or a household) from `before` to `after` changes: index entries
/// (local key, the value after; `None`: deleted) and counts rows (local key, shift).
#[derive(Debug, Default)]
struct Moves {
    index: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    counts: BTreeMap<Vec<u8>, Shift>,
}

impl Moves {
    fn between(nis: &str, before: Option<&Indexed>, after: Option<&Indexed>) -> Moves {
        let mut moves = Moves::default();
        let (old, new) = (
            before.map_or("", |i| i.municipality.as_str()),
            after.map_or("", |i| i.municipality.as_str()),
        );
        if old != new {
            if !old.is_empty() {
                moves
                    .index
                    .push((local_key(MUNICIPALITY_INDEX, &[old, nis]), None));
            }
            if !new.is_empty() {
                moves
                    .index
                    .push((local_key(MUNICIPALITY_INDEX, &[new, nis]), Some(Vec::new())));
            }
        }
        for (side, sign) in [(before, -1), (after, 1)] {
            let Some(ix) = side.filter(|i| !i.municipality.is_empty()) else {
                continue;
            };
            for (cond, period, status) in &ix.counted {
                moves
                    .counts
                    .entry(local_key(OUTCOME_COUNTS, &[&ix.municipality, cond, period]))
                    .or_default()
                    .add(Shift::of(*status, sign));
            }
        }
        moves.counts.retain(|_, s| !s.is_zero());
        moves
    }

    /// Household `id` from `before` to `after`: its entry moves with its municipality, and is
    /// rewritten when what it counts changed.
    fn of_household(
        id: &str,
        before: Option<&HouseholdIndexed>,
        after: Option<&HouseholdIndexed>,
    ) -> Moves {
        let mut moves = Moves::default();
        if before == after {
            return moves;
        }
        let entry = |ix: &HouseholdIndexed| local_key(HOUSEHOLD_INDEX, &[&ix.municipality, id]);
        if let Some(old) = before
            && after.is_none_or(|new| new.municipality != old.municipality)
        {
            moves.index.push((entry(old), None));
        }
        if let Some(new) = after {
            moves
                .index
                .push((entry(new), Some(new.counted().encode_to_vec())));
        }
        moves
    }
}

/// A counts row as stored: format byte 2, then `IndicatorCounts`.
pub(crate) fn counts_to_stored(c: &Counts) -> Vec<u8> {
    with_format(2, &indicator_counts(c))
}

/// Counts as the wire and the stored rows carry them.
pub(crate) fn indicator_counts(c: &Counts) -> IndicatorCounts {
    IndicatorCounts {
        public: c.public,
        followed: c.followed,
        compliant: c.compliant,
        non_compliant: c.non_compliant,
    }
}

/// Counts from the wire or a stored row.
pub(crate) fn counts_of(c: &IndicatorCounts) -> Counts {
    Counts {
        public: c.public,
        followed: c.followed,
        compliant: c.compliant,
        non_compliant: c.non_compliant,
    }
}

/// One outcome counts row of a partition, as stored.
pub(crate) struct CountsRow {
    /// The row's full key (partition prefix included).
    pub(crate) key: Vec<u8>,
    pub(crate) conditionality: String,
    pub(crate) period: String,
    /// The counts, or why the value does not decode as them.
    pub(crate) counts: Result<Counts, String>,
}

/// The outcome counts rows of partition `p` in `kv`: `municipality`'s, or every municipality's
/// when `None`. A key that does not name a municipality, a conditionality and a period is no
/// such row and is left out.
pub(crate) fn counts_rows(
    kv: &dyn Kv,
    p: i32,
    municipality: Option<&str>,
) -> Result<Vec<CountsRow>, ReconcilerError> {
    let table = [partition_prefix(p), local_key(OUTCOME_COUNTS, &[""])].concat();
    let prefix = match municipality {
        Some(m) => [partition_prefix(p), local_key(OUTCOME_COUNTS, &[m, ""])].concat(),
        None => table.clone(),
    };
    let mut rows = Vec::new();
    for (key, value) in kv.scan(&prefix)? {
        let rest = String::from_utf8_lossy(&key[table.len()..]).into_owned();
        let mut parts = rest.splitn(3, '/');
        let (Some(_), Some(conditionality), Some(period)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        rows.push(CountsRow {
            conditionality: conditionality.to_owned(),
            period: period.to_owned(),
            counts: counts_from_stored(&value),
            key,
        });
    }
    Ok(rows)
}

/// Adds `c` to `sum`.
pub(crate) fn add_counts(sum: &mut Counts, c: &Counts) {
    sum.public += c.public;
    sum.followed += c.followed;
    sum.compliant += c.compliant;
    sum.non_compliant += c.non_compliant;
}

/// A counts row read back (format 2, [`counts_to_stored`]).
pub(crate) fn counts_from_stored(bytes: &[u8]) -> Result<Counts, String> {
    match bytes.split_first() {
        Some((2, row)) => {
            let row = IndicatorCounts::decode(row).map_err(|e| e.to_string())?;
            Ok(counts_of(&row))
        }
        _ => Err("not an outcome counts row of a known format".to_owned()),
    }
}

/// The value a counts row is left at: `None` (deleted) when all zero.
fn counts_row(c: &Counts) -> Option<Vec<u8>> {
    (*c != Counts::default()).then(|| counts_to_stored(c))
}

/// Moves the index of person `nis` in `tx`'s partition from `before` to `after`.
pub(super) fn reindex(
    tx: &mut Tx<'_>,
    nis: &str,
    before: Option<&Indexed>,
    after: Option<&Indexed>,
) -> Result<(), ReconcilerError> {
    if before == after {
        return Ok(());
    }
    let moves = Moves::between(nis, before, after);
    write_index(tx, moves.index);
    let p = tx.partition();
    for (k, shift) in moves.counts {
        tx.shifts.entry((p, k)).or_default().add(shift);
    }
    Ok(())
}

/// Moves household `id`'s index entry in `tx`'s partition from `before` to `after`.
pub(super) fn reindex_household(
    tx: &mut Tx<'_>,
    id: &str,
    before: Option<&HouseholdIndexed>,
    after: Option<&HouseholdIndexed>,
) {
    write_index(tx, Moves::of_household(id, before, after).index);
}

fn write_index(tx: &mut Tx<'_>, entries: Vec<(Vec<u8>, Option<Vec<u8>>)>) {
    for (k, value) in entries {
        match value {
            Some(v) => tx.put(k, v),
            None => tx.delete(k),
        }
    }
}

/// Moves the outcome counts rows by the epoch's shifts ([`reindex`]): each row read once, the
/// rows of the epoch in one batched lookup ([`Tx::read_ahead`]), and written once.
pub(super) fn finish(tx: &mut Tx<'_>) -> Result<(), ReconcilerError> {
    let mut shifts = std::mem::take(&mut tx.shifts);
    shifts.retain(|_, s| !s.is_zero());
    if shifts.is_empty() {
        return Ok(());
    }
    tx.read_ahead(shifts.keys().cloned())?;
    for ((p, k), shift) in shifts {
        tx.set_partition(p);
        let counts = tx
            .get_with(&k, counts_from_stored)?
            .transpose()
            .map_err(|e| corrupt(&k, e))?
            .unwrap_or_default();
        match counts_row(&shift.applied(counts)) {
            Some(v) => tx.put(k, v),
            None => tx.delete(k),
        }
    }
    Ok(())
}

/// Derives partition `p`'s index from the `p/` entries a restore applies, batch by batch: each
/// entry moves the index from the value it replaces (read from the store before the batch, or
/// from the batch's earlier entries) to its own. A value that does not say what the index holds
/// of its person (see [`Indexed::of_stored_person`]) makes the index not whole: the restore
/// unmarks it and the partition's index is built again.
#[derive(Debug)]
pub struct Rederive {
    p: i32,
    prefix: Vec<u8>,
    /// This batch's persons: full key → what the index holds of them after the batch so far.
    batch: HashMap<Vec<u8>, Option<Indexed>>,
    /// This batch's households, as `batch`.
    households: HashMap<Vec<u8>, Option<HouseholdIndexed>>,
    index: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    counts: BTreeMap<Vec<u8>, Shift>,
    whole: bool,
}

impl Rederive {
    pub fn new(p: i32) -> Self {
        Rederive {
            p,
            prefix: partition_prefix(p),
            batch: HashMap::new(),
            households: HashMap::new(),
            index: BTreeMap::new(),
            counts: BTreeMap::new(),
            whole: true,
        }
    }

    /// False once an entry did not say what the index holds of its person.
    pub fn whole(&self) -> bool {
        self.whole
    }

    /// Entry `key` (a full key of partition `p`) about to be set to `value` (`None`: deleted) in
    /// the batch; `base` is the store as it was before the batch.
    pub fn entry(
        &mut self,
        base: &dyn Kv,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), ReconcilerError> {
        if !self.whole {
            return Ok(());
        }
        let local = &key[self.prefix.len().min(key.len())..];
        if let Some(id) = local.strip_prefix(HOUSEHOLDS.key_prefix().as_slice()) {
            let id = String::from_utf8_lossy(id).into_owned();
            return self.household(base, key, &id, value);
        }
        let Some(nis) = local.strip_prefix(PERSONS.key_prefix().as_slice()) else {
            return Ok(());
        };
        let nis = String::from_utf8_lossy(nis).into_owned();
        let read = |v: Option<&[u8]>| -> Result<Option<Indexed>, String> {
            v.map(Indexed::of_stored_person)
                .transpose()
                .map(Option::flatten)
        };
        let before = match self.batch.get(key) {
            Some(b) => b.clone(),
            None => match read(base.get(key)?.as_deref()) {
                Ok(b) => b,
                Err(why) => {
                    self.not_whole(&nis, &why);
                    return Ok(());
                }
            },
        };
        let after = match read(value) {
            Ok(a) => a,
            Err(why) => {
                self.not_whole(&nis, &why);
                return Ok(());
            }
        };
        let moves = Moves::between(&nis, before.as_ref(), after.as_ref());
        self.index.extend(moves.index);
        for (k, shift) in moves.counts {
            self.counts.entry(k).or_default().add(shift);
        }
        self.batch.insert(key.to_vec(), after);
        Ok(())
    }

    /// [`Self::entry`] for household `id`'s `h/` entry.
    fn household(
        &mut self,
        base: &dyn Kv,
        key: &[u8],
        id: &str,
        value: Option<&[u8]>,
    ) -> Result<(), ReconcilerError> {
        let read = |v: Option<&[u8]>| -> Result<Option<HouseholdIndexed>, String> {
            v.map(HouseholdIndexed::of_stored_household)
                .transpose()
                .map(Option::flatten)
        };
        let before = match self.households.get(key) {
            Some(b) => Ok(b.clone()),
            None => read(base.get(key)?.as_deref()),
        };
        let (before, after) = match (before, read(value)) {
            (Ok(b), Ok(a)) => (b, a),
            (Err(why), _) | (_, Err(why)) => {
                self.not_whole(id, &why);
                return Ok(());
            }
        };
        self.index
            .extend(Moves::of_household(id, before.as_ref(), after.as_ref()).index);
        self.households.insert(key.to_vec(), after);
        Ok(())
    }

    /// `subject`: a NIS (masked in the log), or anything else (logged as a household, whose id
    /// is not logged either).
    fn not_whole(&mut self, subject: &str, why: &str) {
        let subject = Nis::parse(subject).map_or_else(|_| "a household".to_owned(), |n| n.masked());
        tracing::info!(
            partition = self.p,
            entry = %subject,
            reason = why,
            "the partition's index will be built again after the restore"
        );
        self.whole = false;
    }

    /// The derived writes of the batch (full keys; `None`: delete), the counts rows read from
    /// `base` (the store before the batch) and shifted; the next batch starts empty.
    pub fn finish_batch(&mut self, base: &dyn Kv) -> Result<Vec<StoreWrite>, ReconcilerError> {
        self.batch.clear();
        self.households.clear();
        let mut out = Vec::new();
        if !self.whole {
            self.index.clear();
            self.counts.clear();
            return Ok(out);
        }
        for (k, value) in std::mem::take(&mut self.index) {
            out.push(([self.prefix.as_slice(), &k].concat(), value));
        }
        for (k, shift) in std::mem::take(&mut self.counts) {
            if shift.is_zero() {
                continue;
            }
            let full = [self.prefix.as_slice(), &k].concat();
            let counts = match base.get(&full)? {
                Some(b) => counts_from_stored(&b).map_err(|e| corrupt(&full, e))?,
                None => Counts::default(),
            };
            out.push((full, counts_row(&shift.applied(counts))));
        }
        Ok(out)
    }
}

impl Topology {
    /// What the index holds of person `nis` of partition `partition` in `kv`: from the digest,
    /// or, for a digest written before the index, from the person's state evaluated (as the
    /// person's next change takes it, [`Topology::upgrade_digest`]). `None`: no view published.
    fn indexed_person(
        &self,
        kv: &dyn Kv,
        partition: i32,
        nis: Nis,
    ) -> Result<Option<Indexed>, ReconcilerError> {
        let mut tx = Tx::new(kv);
        tx.set_partition(partition);
        let Some(mut doc) = self.load_person_doc(&tx, nis)? else {
            return Ok(None);
        };
        let state = person::person_state(nis, &mut doc);
        self.upgrade_digest(&state, &mut doc);
        Ok(doc.digest.as_ref().and_then(Indexed::of_digest))
    }

    /// Fills in what the index holds of the person in a digest written before the index, from
    /// `state` (the records the digest's view was published from) evaluated.
    pub(super) fn upgrade_digest(&self, state: &PersonState, doc: &mut PersonDoc) {
        if doc.digest.as_ref().is_none_or(|d| d.indexed) {
            return;
        }
        let outcomes = self
            .rules
            .evaluate_person_between(state, self.from, self.to);
        let view = self.person_view(state, doc, &outcomes);
        if let Some(d) = doc.digest.as_mut() {
            Indexed::of_view(&view).keep_in(d);
        }
    }

    /// Builds partition `p`'s index from its `p/` and `h/` entries in `kv` (whose derived tables
    /// the caller cleared): the index entries handed to `write` a thousand persons (households)
    /// at a time, then the counts rows. Returns the persons indexed. The caller marks the index whole once every write is stored.
    pub fn build_index(
        &self,
        kv: &dyn Kv,
        p: i32,
        write: &mut dyn FnMut(Vec<StoreWrite>) -> Result<(), ReconcilerError>,
    ) -> Result<u64, ReconcilerError> {
        let mut counts: BTreeMap<Vec<u8>, Shift> = BTreeMap::new();
        let mut persons = 0u64;
        let prefix = [partition_prefix(p), PERSONS.key_prefix()].concat();
        in_pages(kv, &prefix, 1000, |page| {
            let mut writes = Vec::new();
            for (k, _) in page {
                let digits = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                let nis = Nis::parse(&digits).map_err(|e| corrupt(k, e))?;
                let Some(ix) = self.indexed_person(kv, p, nis)? else {
                    continue;
                };
                persons += 1;
                let moves = Moves::between(nis.as_str(), None, Some(&ix));
                for (k, v) in moves.index {
                    writes.push(([partition_prefix(p), k].concat(), v));
                }
                for (k, shift) in moves.counts {
                    counts.entry(k).or_default().add(shift);
                }
            }
            write(writes)
        })?;
        let prefix = [partition_prefix(p), HOUSEHOLDS.key_prefix()].concat();
        in_pages(kv, &prefix, 1000, |page| {
            let mut writes = Vec::new();
            for (k, _) in page {
                let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                let Some(ix) = self.indexed_household(kv, p, &id)? else {
                    continue;
                };
                for (k, v) in Moves::of_household(&id, None, Some(&ix)).index {
                    writes.push(([partition_prefix(p), k].concat(), v));
                }
            }
            write(writes)
        })?;
        let rows = counts
            .into_iter()
            .map(|(k, shift)| {
                (
                    [partition_prefix(p), k].concat(),
                    counts_row(&shift.applied(Counts::default())),
                )
            })
            .collect();
        write(rows)?;
        Ok(persons)
    }

    /// The derived entries partition `p`'s index should hold, counted from its persons' digests
    /// in `kv` (full keys): what the tests compare the index kept against.
    #[doc(hidden)]
    pub fn recount_index(
        &self,
        kv: &dyn Kv,
        p: i32,
    ) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, ReconcilerError> {
        let mut out = BTreeMap::new();
        self.build_index(kv, p, &mut |writes| {
            out.extend(writes.into_iter().filter_map(|(k, v)| Some((k, v?))));
            Ok(())
        })?;
        Ok(out)
    }

    /// Up to `limit` persons of `municipality` held in `partitions` of `kv`, in NIS order after
    /// `after`, that `filter` keeps: the partitions' index entries merged in NIS order, each
    /// person's view computed from the state ([`Topology::read_person`]) unless the digest
    /// already tells the filter cannot keep them ([`ListFilter::may_keep`]).
    pub fn list_persons(
        &self,
        kv: &dyn Kv,
        partitions: &[i32],
        municipality: &str,
        after: &str,
        limit: usize,
        filter: &ListFilter,
    ) -> Result<Vec<api::Person>, ReconcilerError> {
        struct Run {
            partition: i32,
            prefix: Vec<u8>,
            cursor: Vec<u8>,
            page: std::collections::VecDeque<String>,
            done: bool,
        }
        let mut runs: Vec<Run> = partitions
            .iter()
            .map(|&p| {
                let prefix = [
                    partition_prefix(p),
                    local_key(MUNICIPALITY_INDEX, &[municipality, ""]),
                ]
                .concat();
                Run {
                    partition: p,
                    cursor: [prefix.as_slice(), after.as_bytes()].concat(),
                    prefix,
                    page: Default::default(),
                    done: false,
                }
            })
            .collect();
        let mut out = Vec::new();
        while out.len() < limit {
            for run in runs.iter_mut().filter(|r| r.page.is_empty() && !r.done) {
                let page = kv.scan_after(&run.prefix, &run.cursor, 256)?;
                match page.last() {
                    None => run.done = true,
                    Some((last, _)) => run.cursor = last.clone(),
                }
                run.page
                    .extend(page.iter().map(|(k, _)| {
                        String::from_utf8_lossy(&k[run.prefix.len()..]).into_owned()
                    }));
            }
            let Some(next) = runs
                .iter_mut()
                .filter(|r| !r.page.is_empty())
                .min_by(|a, b| a.page[0].cmp(&b.page[0]))
            else {
                break;
            };
            let Some(digits) = next.page.pop_front() else {
                break;
            };
            let Ok(nis) = Nis::parse(&digits) else {
                continue;
            };
            if filter.screens() {
                let key = [partition_prefix(next.partition), PERSONS.key(&[&digits])].concat();
                if let Some(value) = kv.get(&key)?
                    && let Ok(Some(indexed)) = Indexed::of_stored_person(&value)
                    && !filter.may_keep(&indexed)
                {
                    continue;
                }
            }
            if let Some(p) = self.read_person(kv, next.partition, nis)?
                && filter.keeps(&p)
            {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// The outcome counts of `municipality` summed over `partitions` of `kv`, by
    /// (conditionality, period).
    pub fn read_indicators(
        &self,
        kv: &dyn Kv,
        partitions: &[i32],
        municipality: &str,
    ) -> Result<BTreeMap<(String, String), Counts>, ReconcilerError> {
        let mut out: BTreeMap<(String, String), Counts> = BTreeMap::new();
        for &p in partitions {
            for row in counts_rows(kv, p, Some(municipality))? {
                let c = row.counts.map_err(|e| corrupt(&row.key, e))?;
                add_counts(out.entry((row.conditionality, row.period)).or_default(), &c);
            }
        }
        Ok(out)
    }

    /// The household indicators of DIVIPOLA municipality `municipality` counted over the
    /// households of `partitions` in `kv`, from their index entries.
    pub fn household_indicators(
        &self,
        kv: &dyn Kv,
        partitions: &[i32],
        municipality: &str,
    ) -> Result<api::GetHouseholdIndicatorsResponse, ReconcilerError> {
        let mut out = api::GetHouseholdIndicatorsResponse {
            municipality: municipality.to_owned(),
            ..Default::default()
        };
        let mut dimensions: BTreeMap<String, api::DimensionIndicator> = BTreeMap::new();
        for &p in partitions {
            let prefix = [
                partition_prefix(p),
                local_key(HOUSEHOLD_INDEX, &[municipality, ""]),
            ]
            .concat();
            in_pages(kv, &prefix, 512, |page| {
                for (k, v) in page {
                    let h = HouseholdCounted::decode(v.as_slice()).map_err(|e| corrupt(k, e))?;
                    out.households += 1;
                    out.may_leave += u64::from(h.may_leave);
                    for a in h.achievements {
                        count_achievement(&mut dimensions, a.dimension, a.state);
                    }
                }
                Ok(())
            })?;
        }
        out.dimensions = dimensions.into_values().collect();
        Ok(out)
    }
}

/// Hands the entries of `prefix` in `kv` to `f`, `page` at a time, in key order.
fn in_pages(
    kv: &dyn Kv,
    prefix: &[u8],
    page: usize,
    mut f: impl FnMut(&[Entry]) -> Result<(), ReconcilerError>,
) -> Result<(), ReconcilerError> {
    let mut cursor = prefix.to_vec();
    loop {
        let entries = kv.scan_after(prefix, &cursor, page)?;
        let Some((last, _)) = entries.last() else {
            return Ok(());
        };
        cursor = last.clone();
        f(&entries)?;
    }
}

/// Counts an achievement of `dimension` in state `state` (`ponte.compliance.v1.AchievementState`).
pub(crate) fn count_achievement(
    dimensions: &mut BTreeMap<String, api::DimensionIndicator>,
    dimension: String,
    state: i32,
) {
    let d = dimensions
        .entry(dimension)
        .or_insert_with_key(|dimension| api::DimensionIndicator {
            dimension: dimension.clone(),
            ..Default::default()
        });
    match api::AchievementState::try_from(state) {
        Ok(api::AchievementState::AchievementReached) => d.reached += 1,
        Ok(api::AchievementState::AchievementNotReached) => d.not_reached += 1,
        Ok(api::AchievementState::AchievementNotApplicable) => d.not_applicable += 1,
        _ => d.unknown += 1,
    }
}

/// Adds `more`'s counts (another instance's households of the same municipality) to `sum`.
pub(crate) fn add_household_indicators(
    sum: &mut api::GetHouseholdIndicatorsResponse,
    more: api::GetHouseholdIndicatorsResponse,
) {
    sum.households += more.households;
    sum.may_leave += more.may_leave;
    let mut dimensions: BTreeMap<String, api::DimensionIndicator> =
        std::mem::take(&mut sum.dimensions)
            .into_iter()
            .map(|d| (d.dimension.clone(), d))
            .collect();
    for d in more.dimensions {
        let e = dimensions
            .entry(d.dimension.clone())
            .or_insert_with(|| api::DimensionIndicator {
                dimension: d.dimension.clone(),
                ..Default::default()
            });
        e.reached += d.reached;
        e.not_reached += d.not_reached;
        e.not_applicable += d.not_applicable;
        e.unknown += d.unknown;
    }
    sum.dimensions = dimensions.into_values().collect();
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ix(mun: &str, counted: &[(&str, &str, Status)]) -> Indexed {
        Indexed {
            municipality: mun.to_owned(),
            counted: counted
                .iter()
                .map(|(c, p, s)| ((*c).to_owned(), (*p).to_owned(), *s))
                .collect(),
        }
    }

    #[test]
    fn a_change_of_status_moves_one_count_and_a_move_of_municipality_moves_the_entry() {
        let a = ix("3550308", &[("education", "2025-B2", Status::NotFollowed)]);
        let b = ix("3550308", &[("education", "2025-B2", Status::Compliant)]);
        let m = Moves::between("1", Some(&a), Some(&b));
        assert!(m.index.is_empty(), "same municipality: no index write");
        assert_eq!(
            m.counts.into_iter().collect::<Vec<_>>(),
            vec![(
                b"ic/3550308/education/2025-B2".to_vec(),
                Shift([0, 1, 1, 0])
            )]
        );
        let c = ix("3304557", &[("education", "2025-B2", Status::Compliant)]);
        let m = Moves::between("1", Some(&b), Some(&c));
        assert_eq!(
            m.index,
            vec![
                (b"mi/3550308/1".to_vec(), None),
                (b"mi/3304557/1".to_vec(), Some(Vec::new()))
            ]
        );
        assert_eq!(m.counts.len(), 2);
        // A person without a municipality is neither listed nor counted.
        let m = Moves::between(
            "1",
            None,
            Some(&ix("", &[("health", "2025-S1", Status::Compliant)])),
        );
        assert!(m.index.is_empty() && m.counts.is_empty());
    }

    #[test]
    fn counts_never_go_below_zero_and_an_empty_row_is_deleted() {
        let c = Counts {
            public: 1,
            followed: 1,
            compliant: 1,
            non_compliant: 0,
        };
        let down = Shift::of(Status::Compliant, -1);
        assert_eq!(counts_row(&down.applied(c)), None);
        assert_eq!(down.applied(Counts::default()), Counts::default());
        let row = counts_row(&c).unwrap();
        assert_eq!(counts_from_stored(&row).unwrap(), c);
        assert!(counts_from_stored(b"\x07").is_err());
    }

    #[test]
    fn a_digest_written_before_the_index_does_not_say_what_it_holds() {
        let mut d = PersonDigest::default();
        assert_eq!(Indexed::of_digest(&d), None);
        let i = ix("3550308", &[("health", "2025-S1", Status::NonCompliant)]);
        i.keep_in(&mut d);
        assert_eq!(Indexed::of_digest(&d), Some(i.clone()));
        let entry = PersonEntry {
            digest: Some(d),
            ..Default::default()
        };
        let stored = with_format(3, &entry);
        assert_eq!(Indexed::of_stored_person(&stored).unwrap(), Some(i));
        let old = with_format(
            3,
            &PersonEntry {
                digest: Some(PersonDigest::default()),
                ..Default::default()
            },
        );
        assert!(Indexed::of_stored_person(&old).is_err());
        assert!(Indexed::of_stored_person(b"{\"records\":[]}").is_err());
        assert_eq!(
            Indexed::of_stored_person(&with_format(3, &PersonEntry::default())).unwrap(),
            None
        );
    }
}
