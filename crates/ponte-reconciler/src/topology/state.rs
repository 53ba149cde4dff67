//! The state a topology reads and writes: the store behind it ([`Kv`]), an epoch's
//! uncommitted writes and outputs ([`Tx`]) and the partition prefix of every key.
use super::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// State changes of a transaction: `Some` puts, `None` deletes.
pub type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// About how many bytes a store write batch of `writes` takes, with room for a few more small
/// entries (positions, offsets): what [`ponte_store::Store::batch_with_capacity`] is given.
pub fn batch_bytes(writes: &Writes) -> usize {
    // An entry's kind, column family and two lengths: at most 16 bytes for these sizes.
    const ENTRY: usize = 16;
    writes
        .iter()
        .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + ENTRY)
        .sum::<usize>()
        + 64 * 2 * ENTRY
}

/// Reads committed state. Shared by the threads that apply an epoch's partitions
/// ([`crate::lanes`]), hence `Sync`.
pub trait Kv: Sync {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReconcilerError>;
    /// The values of `keys`, in their order; a store may read them at once.
    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, ReconcilerError> {
        keys.iter().map(|k| self.get(k)).collect()
    }
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
    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, ReconcilerError> {
        Ok(ponte_store::Store::get_many(self, keys)?)
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

/// The state as the next epoch reads it while the epoch before is still being committed: that
/// epoch's writes — sent in its transaction, not yet acknowledged, committed or in the store —
/// over the committed state in `kv`. The consumer loop applies an epoch while the broker
/// acknowledges the one before ([`crate::driver`]): the writes are set when an epoch is sent
/// and cleared once they are in the store, or the epoch was aborted (and with it everything
/// applied over them).
pub struct Pending<'a> {
    kv: &'a dyn Kv,
    writes: Mutex<Arc<Writes>>,
}

impl std::fmt::Debug for Pending<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("writes", &self.writes().len())
            .finish_non_exhaustive()
    }
}

impl<'a> Pending<'a> {
    pub fn new(kv: &'a dyn Kv) -> Self {
        Self {
            kv,
            writes: Mutex::new(Arc::new(Writes::new())),
        }
    }

    /// Reads `writes` over the committed state from now on.
    pub fn set(&self, writes: Arc<Writes>) {
        *self.lock() = writes;
    }

    /// Reads the committed state alone again.
    pub fn clear(&self) {
        self.set(Arc::new(Writes::new()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Arc<Writes>> {
        // The lock guards a pointer swap: a panic while holding it leaves nothing half-done.
        self.writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn writes(&self) -> Arc<Writes> {
        Arc::clone(&self.lock())
    }
}

/// The writes of `pending` to keys under `prefix` and greater than `after`, in key order.
fn pending_under<'w>(
    pending: &'w Writes,
    prefix: &[u8],
    after: Option<&[u8]>,
) -> Vec<(&'w Vec<u8>, &'w Option<Vec<u8>>)> {
    pending
        .range::<[u8], _>((
            std::ops::Bound::Included(prefix),
            std::ops::Bound::Unbounded,
        ))
        .take_while(|(k, _)| k.starts_with(prefix))
        .filter(|(k, _)| after.is_none_or(|a| k.as_slice() > a))
        .collect()
}

impl Kv for Pending<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReconcilerError> {
        match self.writes().get(key) {
            Some(v) => Ok(v.clone()),
            None => self.kv.get(key),
        }
    }
    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, ReconcilerError> {
        let writes = self.writes();
        if writes.is_empty() {
            return self.kv.get_many(keys);
        }
        let missing: Vec<Vec<u8>> = keys
            .iter()
            .filter(|k| !writes.contains_key(*k))
            .cloned()
            .collect();
        let mut read = self.kv.get_many(&missing)?.into_iter();
        keys.iter()
            .map(|k| match writes.get(k) {
                Some(v) => Ok(v.clone()),
                None => Ok(read.next().flatten()),
            })
            .collect()
    }
    fn scan(&self, prefix: &[u8]) -> Result<Vec<Entry>, ReconcilerError> {
        let writes = self.writes();
        let mine = pending_under(&writes, prefix, None);
        let base = self.kv.scan(prefix)?;
        if mine.is_empty() {
            return Ok(base);
        }
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = base.into_iter().collect();
        for (k, v) in mine {
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        Ok(merged.into_iter().collect())
    }
    fn scan_after(
        &self,
        prefix: &[u8],
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, ReconcilerError> {
        let writes = self.writes();
        let mine = pending_under(&writes, prefix, Some(after));
        if mine.is_empty() {
            return self.kv.scan_after(prefix, after, limit);
        }
        // Each pending delete may hide one committed entry: read that many more, and merge
        // only up to the last committed key read unless the committed entries ran out (a
        // pending put beyond it may come after committed entries not read).
        let deletes = mine.iter().filter(|(_, v)| v.is_none()).count();
        let base = self.kv.scan_after(prefix, after, limit + deletes)?;
        let horizon = match base.last() {
            Some((last, _)) if base.len() == limit + deletes => Some(last.clone()),
            _ => None,
        };
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = base.into_iter().collect();
        for (k, v) in mine {
            if horizon.as_ref().is_some_and(|last| k > last) {
                break;
            }
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        Ok(merged.into_iter().take(limit).collect())
    }
}

/// A message to publish once the batch that produced it is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub kind: OutputKind,
    pub key: String,
    /// `None`: a tombstone (an erased person's view).
    pub payload: Option<Vec<u8>>,
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

    /// True for the reconciler's own repartition topics, which only it reads.
    pub fn is_internal(self) -> bool {
        matches!(
            self,
            OutputKind::Crosswalk | OutputKind::HealthByNis | OutputKind::Member
        )
    }

    /// The `ponte-event-type` header of the published message. Repartition messages go out in
    /// batches (`topology::batch`), whose type says so.
    pub fn event_type(self) -> &'static str {
        match self {
            OutputKind::Change => "compliance_change",
            OutputKind::Alert => "compliance_alert",
            OutputKind::Crosswalk => "crosswalk_batch",
            OutputKind::HealthByNis => "health_by_nis_batch",
            OutputKind::Member => "member_batch",
            OutputKind::DeadLetter => "dead_letter",
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
pub(super) const INTERNAL_SCHEMA_UNVERSIONED: &str = "ponte.reconciler";

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
    /// Keys whose view is computed once at the end of the epoch ([`Topology::finish`]), by
    /// (partition, id), with the acceptance time of the latest event that changed them.
    deferred: BTreeMap<(i32, String), Option<Timestamp>>,
    /// Committed values read ahead for the events to come ([`Tx::read_ahead`]), by full key:
    /// what `base` held when they were read, which nothing but this epoch's commit changes.
    read: HashMap<Vec<u8>, Option<Vec<u8>>, foldhash::fast::RandomState>,
    /// Changes of the partitions' outcome counts rows, by (partition, key), applied to the
    /// rows once at the end of the epoch ([`Topology::finish`]).
    pub(super) shifts: BTreeMap<(i32, Vec<u8>), super::index::Shift>,
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
            deferred: BTreeMap::new(),
            read: HashMap::default(),
            shifts: BTreeMap::new(),
        }
    }

    /// Reads the committed values of `keys` (partition, key without its partition prefix) in
    /// one batched lookup ([`Kv::get_many`]), for the [`Tx::get`]s of the events about to be
    /// applied: a point read per event costs the filter, index and data-block probes of every
    /// sorted run once per key, a batch shares them. Keys this epoch already wrote or read
    /// ahead are skipped; a key read ahead and never asked for costs only its read.
    pub fn read_ahead(
        &mut self,
        keys: impl IntoIterator<Item = (i32, Vec<u8>)>,
    ) -> Result<(), ReconcilerError> {
        let mut wanted: Vec<Vec<u8>> = Vec::new();
        let mut prefix = (self.partition, self.scope.clone());
        for (p, key) in keys {
            if p != prefix.0 {
                prefix = (p, partition_prefix(p));
            }
            let full = [prefix.1.as_slice(), key.as_slice()].concat();
            if !self.writes.contains_key(&full) && !self.read.contains_key(&full) {
                wanted.push(full);
            }
        }
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(());
        }
        let values = self.base.get_many(&wanted)?;
        self.read.extend(wanted.into_iter().zip(values));
        Ok(())
    }

    /// Marks `id` of the current partition for evaluation at the end of the epoch, as changed
    /// by an event accepted at `at`.
    pub(super) fn defer(&mut self, id: &str, at: Option<Timestamp>) {
        let latest = self
            .deferred
            .entry((self.partition, id.to_owned()))
            .or_insert(at);
        if at.map(|t| (t.seconds, t.nanos)) > latest.map(|t| (t.seconds, t.nanos)) {
            *latest = at;
        }
    }

    /// Takes the keys marked with [`Tx::defer`].
    pub(super) fn take_deferred(&mut self) -> BTreeMap<(i32, String), Option<Timestamp>> {
        std::mem::take(&mut self.deferred)
    }

    /// The input partition reads and writes are scoped to.
    pub(super) fn partition(&self) -> i32 {
        self.partition
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
        self.get_with(key, <[u8]>::to_vec)
    }

    /// `f` of the value of `key` in the current partition, without copying a value this
    /// epoch wrote or read ahead.
    pub fn get_with<T>(
        &self,
        key: &[u8],
        f: impl FnOnce(&[u8]) -> T,
    ) -> Result<Option<T>, ReconcilerError> {
        let full = self.scoped(key);
        match self.writes.get(&full).or_else(|| self.read.get(&full)) {
            Some(v) => Ok(v.as_deref().map(f)),
            None => Ok(self.base.get(&full)?.as_deref().map(f)),
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
            payload: Some(payload),
            partition: self.partition,
        });
    }

    /// Records a tombstone for `key` (its view is deleted), published after the commit.
    pub fn emit_tombstone(&mut self, kind: OutputKind, key: String) {
        self.outputs.push(Output {
            kind,
            key,
            payload: None,
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

    /// Moves what `other` applied — writes, outputs, keys still to evaluate — into this
    /// transaction, and forgets what `other` read ahead (the epoch's commit changes it).
    /// `other` must have applied other partitions than this one: a key of both would keep
    /// `other`'s write.
    pub fn absorb(&mut self, other: &mut Tx<'_>) {
        self.writes.append(&mut other.writes);
        self.outputs.append(&mut other.outputs);
        self.deferred.append(&mut other.deferred);
        self.shifts.append(&mut other.shifts);
        other.read.clear();
    }

    /// Drops everything applied since the last [`Tx::take`]: the epoch is not committed.
    pub fn discard(&mut self) {
        self.writes.clear();
        self.outputs.clear();
        self.deferred.clear();
        self.shifts.clear();
        self.read.clear();
    }

    /// Takes the changes and outputs, leaving the transaction empty. [`Topology::finish`] must
    /// have run first: what it would publish is not in the outputs yet.
    pub fn take(&mut self) -> (Writes, Vec<Output>) {
        debug_assert!(
            self.deferred.is_empty() && self.shifts.is_empty(),
            "Topology::finish was not called before the epoch was taken"
        );
        // The writes are about to change the committed state the values were read from.
        self.read.clear();
        (
            std::mem::take(&mut self.writes),
            std::mem::take(&mut self.outputs),
        )
    }
}

pub(super) fn corrupt(key: &[u8], e: impl std::fmt::Display) -> ReconcilerError {
    ReconcilerError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    }
}

/// The entries of `map` whose key starts with `prefix`, in key order: the scan of the maps
/// the tests keep committed state in.
#[cfg(test)]
pub(super) fn scan_map(map: &BTreeMap<Vec<u8>, Vec<u8>>, prefix: &[u8]) -> Vec<Entry> {
    map.range(prefix.to_vec()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Committed state in a map, scanned in key order: the store of the tests.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Sorted(pub(crate) BTreeMap<Vec<u8>, Vec<u8>>);

#[cfg(test)]
impl Kv for Sorted {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReconcilerError> {
        Ok(self.0.get(key).cloned())
    }
    fn scan(&self, prefix: &[u8]) -> Result<Vec<Entry>, ReconcilerError> {
        Ok(scan_map(&self.0, prefix))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// The committed values, and how many values were asked for.
    type Counted = (BTreeMap<Vec<u8>, Vec<u8>>, usize);

    /// Committed state in a map; counts the values it was asked for.
    #[derive(Default)]
    struct Committed(Mutex<Counted>);

    impl Kv for Committed {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReconcilerError> {
            let mut state = self.0.lock().unwrap();
            state.1 += 1;
            Ok(state.0.get(key).cloned())
        }
        fn scan(&self, _: &[u8]) -> Result<Vec<Entry>, ReconcilerError> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn values_read_ahead_answer_until_the_epoch_is_taken_and_writes_come_first() {
        let base = Committed::default();
        base.0
            .lock()
            .unwrap()
            .0
            .insert(b"0001/p/1".to_vec(), b"old".to_vec());
        let mut tx = Tx::new(&base);
        tx.read_ahead([
            (1, b"p/1".to_vec()),
            (1, b"p/2".to_vec()),
            (1, b"p/1".to_vec()),
        ])
        .unwrap();
        assert_eq!(base.0.lock().unwrap().1, 2, "each key read once");
        tx.set_partition(1);
        assert_eq!(tx.get(b"p/1").unwrap(), Some(b"old".to_vec()));
        assert_eq!(tx.get(b"p/2").unwrap(), None);
        assert_eq!(
            base.0.lock().unwrap().1,
            2,
            "answered from what was read ahead"
        );
        // The epoch's own write answers before what was read ahead.
        tx.put(b"p/1".to_vec(), b"new".to_vec());
        assert_eq!(tx.get(b"p/1").unwrap(), Some(b"new".to_vec()));
        // Committed (here, by hand), the epoch's writes are the state: nothing read ahead
        // before answers for the next epoch of the same transaction.
        let (writes, _) = tx.take();
        for (k, v) in writes {
            base.0.lock().unwrap().0.insert(k, v.unwrap());
        }
        base.0
            .lock()
            .unwrap()
            .0
            .insert(b"0001/p/2".to_vec(), b"two".to_vec());
        assert_eq!(tx.get(b"p/1").unwrap(), Some(b"new".to_vec()));
        assert_eq!(tx.get(b"p/2").unwrap(), Some(b"two".to_vec()));
        // Keys written in the epoch are not read ahead.
        tx.put(b"p/3".to_vec(), b"three".to_vec());
        let asked = base.0.lock().unwrap().1;
        tx.read_ahead([(1, b"p/3".to_vec())]).unwrap();
        assert_eq!(base.0.lock().unwrap().1, asked);
    }

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn pending_writes_are_read_over_the_committed_state_until_cleared() {
        let mut committed = Sorted::default();
        for k in [
            "0001/k/a/1",
            "0001/k/a/2",
            "0001/k/a/3",
            "0001/k/b/1",
            "0001/p/1",
        ] {
            committed.0.insert(b(k), b("old"));
        }
        let pending = Pending::new(&committed);
        let writes: Writes = [
            (b("0001/k/a/2"), None),
            (b("0001/k/a/25"), Some(b("new"))),
            (b("0001/k/a/4"), Some(b("new"))),
            (b("0001/p/1"), Some(b("new"))),
            (b("0001/p/2"), Some(b("two"))),
        ]
        .into_iter()
        .collect();
        pending.set(Arc::new(writes));
        assert_eq!(pending.get(b"0001/p/1").unwrap(), Some(b("new")));
        assert_eq!(pending.get(b"0001/k/a/2").unwrap(), None, "deleted");
        assert_eq!(pending.get(b"0001/k/b/1").unwrap(), Some(b("old")));
        assert_eq!(
            pending
                .get_many(&[
                    b("0001/p/2"),
                    b("0001/k/b/1"),
                    b("0001/k/a/2"),
                    b("0001/p/1")
                ])
                .unwrap(),
            vec![Some(b("two")), Some(b("old")), None, Some(b("new"))]
        );
        let keys = |entries: Vec<Entry>| -> Vec<String> {
            entries
                .into_iter()
                .map(|(k, _)| String::from_utf8(k).unwrap())
                .collect()
        };
        assert_eq!(
            keys(pending.scan(b"0001/k/a/").unwrap()),
            ["0001/k/a/1", "0001/k/a/25", "0001/k/a/3", "0001/k/a/4"]
        );
        // Paged: every page as the merged state has it, whatever the page size.
        for limit in 1..6 {
            let mut seen = Vec::new();
            let mut after = b("0001/k/a/");
            loop {
                let page = pending.scan_after(b"0001/k/a/", &after, limit).unwrap();
                assert!(page.len() <= limit);
                let full = page.len() == limit;
                if let Some((k, _)) = page.last() {
                    after.clone_from(k);
                }
                seen.extend(keys(page));
                if !full {
                    break;
                }
            }
            assert_eq!(
                seen,
                ["0001/k/a/1", "0001/k/a/25", "0001/k/a/3", "0001/k/a/4"],
                "pages of {limit}"
            );
        }
        pending.clear();
        assert_eq!(pending.get(b"0001/p/1").unwrap(), Some(b("old")));
        assert_eq!(
            keys(pending.scan(b"0001/k/a/").unwrap()),
            ["0001/k/a/1", "0001/k/a/2", "0001/k/a/3"]
        );
    }

    #[test]
    fn a_discarded_epoch_leaves_nothing_behind() {
        let base = Committed::default();
        let mut tx = Tx::new(&base);
        tx.set_partition(1);
        tx.put(b"p/1".to_vec(), b"new".to_vec());
        tx.emit(OutputKind::Change, "person:1".into(), b"view".to_vec());
        tx.defer("1", None);
        tx.read_ahead([(1, b"p/2".to_vec())]).unwrap();
        tx.discard();
        assert_eq!(tx.writes().count(), 0);
        assert!(tx.outputs().is_empty());
        assert!(tx.take_deferred().is_empty());
        assert_eq!(tx.get(b"p/1").unwrap(), None);
        let asked = base.0.lock().unwrap().1;
        tx.get(b"p/2").unwrap();
        assert_eq!(
            base.0.lock().unwrap().1,
            asked + 1,
            "nothing read ahead is kept"
        );
    }
}
