//! The health records parked in the partitions an instance owns: how many (the
//! `ponte_reconciler_parked_records` gauge), and under which identifiers, so that a claim of an
//! identifier nothing is parked under reads nothing ([`ParkedIndex`], [`Indexed`]).
//!
//! Every claim of an identifier looks for the records parked under it (`k/<alt>/…`,
//! `identity.rs`). Nearly always there are none, and the scan still opened an iterator over
//! every memtable and sorted run of the store and sought in each: 15 % of the consumer loop's
//! time in a profile at 1 M people (docs/benchmarks.md). The index keeps, per owned partition,
//! how many records are parked under each identifier's 32-bit hash: built with one scan of the
//! partition's parked records when the partition is taken, kept from each committed epoch's
//! writes, and forgotten when the partition's state may have changed under it (at every new
//! assignment generation). Two identifiers whose hashes collide only cost the scan every claim
//! used to do. The count is kept the same way: scanning the parked records for the gauge every
//! second took 58 % of the reconciler's CPU with 3 M records parked while 10 M people were
//! loaded at once.
use super::*;
use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// How many parked records a partition's index is built from per read of the store: the
/// partition's parked records are not held in memory at once (3 M were parked part way through
/// the 10 M people load).
const INDEX_PAGE: usize = 10_000;

/// The hash an identifier is indexed under. Only held in memory, so any hash does.
fn alt_hash(alt: &[u8]) -> u32 {
    let mut h = std::hash::DefaultHasher::new();
    alt.hash(&mut h);
    // The low half: an identifier only shares it with others by chance.
    h.finish() as u32
}

/// A full key split at its partition prefix: (partition, key within the partition).
fn split_partition(full_key: &[u8]) -> Option<(i32, &[u8])> {
    let p = key_partition(full_key)?;
    let slash = full_key.iter().position(|&b| b == b'/')?;
    Some((p, &full_key[slash + 1..]))
}

/// The identifier a parked record's key (within its partition) is held under:
/// `k/<alt>/<record id>` → `<alt>`, and what follows it (`/<record id>`).
fn parked_alt(local_key: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = local_key.strip_prefix(PARKED_PREFIX)?;
    let end = rest.iter().position(|&b| b == b'/')?;
    Some((&rest[..end], &rest[end..]))
}

/// `k/`: the prefix of [`PARKED`]'s keys, without building it (for the checks of every key an
/// epoch writes).
const PARKED_PREFIX: &[u8] = b"k/";

/// The partition and identifier of a parked record's full key; `None` for every other key.
fn parked_key(full_key: &[u8]) -> Option<(i32, &[u8])> {
    let (p, local) = split_partition(full_key)?;
    let (alt, _) = parked_alt(local)?;
    Some((p, alt))
}

/// The partition and identifier of a scan of the records parked under one identifier
/// (`<partition>/k/<alt>/`, what [`Table::scan_under`] asks for); `None` for any other scan.
fn parked_group(full_prefix: &[u8]) -> Option<(i32, &[u8])> {
    let (p, local) = split_partition(full_prefix)?;
    match parked_alt(local)? {
        (alt, b"/") => Some((p, alt)),
        _ => None,
    }
}

/// What the committed state of one partition parks.
#[derive(Debug, Default)]
struct PartitionParked {
    records: i64,
    /// Records parked under each identifier hash (no entry: none).
    by_alt: HashMap<u32, u32>,
}

impl PartitionParked {
    fn add(&mut self, alt: u32, d: i64) {
        self.records += d;
        let held = self.by_alt.get(&alt).copied().map_or(0, i64::from) + d;
        debug_assert!(held >= 0, "more records unparked than were parked");
        match u32::try_from(held) {
            Ok(n) if n > 0 => {
                self.by_alt.insert(alt, n);
            }
            _ => {
                self.by_alt.remove(&alt);
            }
        }
    }
}

/// The parked records of the owned partitions, counted and indexed by identifier (see the
/// module documentation). Shared by the consumer loop, which keeps it, and the [`Indexed`]
/// state its epochs read, hence the lock (never contended: one thread uses both).
#[derive(Default)]
pub struct ParkedIndex(Mutex<BTreeMap<i32, PartitionParked>>);

impl std::fmt::Debug for ParkedIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The records per partition, not every identifier's hash.
        let records: BTreeMap<i32, i64> = self
            .partitions()
            .iter()
            .map(|(&p, parked)| (p, parked.records))
            .collect();
        f.debug_tuple("ParkedIndex").field(&records).finish()
    }
}

impl ParkedIndex {
    fn partitions(&self) -> MutexGuard<'_, BTreeMap<i32, PartitionParked>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets the partitions not in `owned` and indexes those not indexed yet, each from
    /// the committed state `kv` (one scan of its parked records, a page at a time).
    pub fn reassign(&self, kv: &dyn Kv, owned: &BTreeSet<i32>) -> Result<(), ReconcilerError> {
        let mut partitions = self.partitions();
        partitions.retain(|p, _| owned.contains(p));
        for &p in owned {
            if partitions.contains_key(&p) {
                continue;
            }
            let prefix = [partition_prefix(p), PARKED.key_prefix()].concat();
            let mut parked = PartitionParked::default();
            let mut after = prefix.clone();
            loop {
                let page = kv.scan_after(&prefix, &after, INDEX_PAGE)?;
                for (k, _) in &page {
                    if let Some((_, alt)) = parked_key(k) {
                        parked.add(alt_hash(alt), 1);
                    }
                }
                match page.last() {
                    Some((k, _)) if page.len() == INDEX_PAGE => after.clone_from(k),
                    _ => break,
                }
            }
            partitions.insert(p, parked);
        }
        Ok(())
    }

    /// Forgets every partition: their state may have changed since they were indexed (a
    /// partition revoked and assigned again was restored, perhaps after another instance
    /// wrote it). The next [`ParkedIndex::reassign`] indexes them again.
    pub fn clear(&self) {
        self.partitions().clear();
    }

    /// Follows a committed epoch: `delta` is what its writes did to the parked records
    /// ([`parked_delta`], taken before they were written). Partitions not indexed are left to
    /// their next [`ParkedIndex::reassign`].
    pub fn add(&self, delta: &ParkedDelta) {
        let mut partitions = self.partitions();
        for (&(p, alt), &d) in &delta.0 {
            if let Some(parked) = partitions.get_mut(&p) {
                parked.add(alt, d);
            }
        }
    }

    /// Parked records in all indexed partitions.
    pub fn total(&self) -> i64 {
        self.partitions().values().map(|p| p.records).sum()
    }

    /// Parked records in partition `p`; `None` when it is not indexed.
    pub fn records(&self, p: i32) -> Option<i64> {
        self.partitions().get(&p).map(|parked| parked.records)
    }

    /// True when `full_prefix` is a scan of the records parked under one identifier in an
    /// indexed partition, and none are (up to a hash collision, which answers false).
    fn rules_out(&self, full_prefix: &[u8]) -> bool {
        let Some((p, alt)) = parked_group(full_prefix) else {
            return false;
        };
        self.partitions()
            .get(&p)
            .is_some_and(|parked| !parked.by_alt.contains_key(&alt_hash(alt)))
    }
}

/// Where records are parked, as the index counts them: (partition, identifier hash).
type ParkedGroup = (i32, u32);

/// What an epoch's writes do to the parked records: per [`ParkedGroup`], records parked minus
/// records taken out of parking.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ParkedDelta(BTreeMap<ParkedGroup, i64>);

impl ParkedDelta {
    /// Records parked minus records taken out of parking, per partition.
    pub fn by_partition(&self) -> BTreeMap<i32, i64> {
        let mut out = BTreeMap::new();
        for (&(p, _), &d) in &self.0 {
            *out.entry(p).or_insert(0) += d;
        }
        out
    }
}

/// What `writes` do to the parked records, against the committed state `base` they are about
/// to be written over (the parked keys among them read in one batched lookup).
pub fn parked_delta(base: &dyn Kv, writes: &Writes) -> Result<ParkedDelta, ReconcilerError> {
    // The parked keys written, and for each where it is parked and whether the epoch parks it;
    // each key parsed once.
    let (keys, parked): (Vec<Vec<u8>>, Vec<(ParkedGroup, bool)>) = writes
        .iter()
        .filter_map(|(k, v)| {
            let (p, alt) = parked_key(k)?;
            Some((k.clone(), ((p, alt_hash(alt)), v.is_some())))
        })
        .unzip();
    let mut delta = ParkedDelta::default();
    if keys.is_empty() {
        return Ok(delta);
    }
    for ((group, after), before) in parked.into_iter().zip(base.get_many(&keys)?) {
        let d = i64::from(after) - i64::from(before.is_some());
        if d != 0 {
            *delta.0.entry(group).or_insert(0) += d;
        }
    }
    delta.0.retain(|_, d| *d != 0);
    Ok(delta)
}

/// The committed state as the topology reads it, with a [`ParkedIndex`] beside it: a scan of
/// the records parked under one identifier that the index rules out answers at once, without
/// reading the store. Everything else is read from `kv`.
pub struct Indexed<'a> {
    kv: &'a dyn Kv,
    parked: &'a ParkedIndex,
}

impl<'a> Indexed<'a> {
    pub fn new(kv: &'a dyn Kv, parked: &'a ParkedIndex) -> Self {
        Self { kv, parked }
    }
}

impl std::fmt::Debug for Indexed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Indexed")
            .field("parked", &self.parked)
            .finish_non_exhaustive()
    }
}

impl Kv for Indexed<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReconcilerError> {
        self.kv.get(key)
    }
    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, ReconcilerError> {
        self.kv.get_many(keys)
    }
    fn scan(&self, prefix: &[u8]) -> Result<Vec<Entry>, ReconcilerError> {
        if self.parked.rules_out(prefix) {
            return Ok(Vec::new());
        }
        self.kv.scan(prefix)
    }
    fn scan_after(
        &self,
        prefix: &[u8],
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, ReconcilerError> {
        if self.parked.rules_out(prefix) {
            return Ok(Vec::new());
        }
        self.kv.scan_after(prefix, after, limit)
    }
}

/// Parked health records of the partitions `partitions`: (identifier, event).
pub fn read_parked(
    kv: &dyn Kv,
    partitions: &[i32],
) -> Result<Vec<(String, Event)>, ReconcilerError> {
    let mut out = Vec::new();
    for &p in partitions {
        let prefix = [partition_prefix(p), PARKED.key_prefix()].concat();
        for (k, v) in kv.scan(&prefix)? {
            let alt = parked_key(&k).map_or_else(String::new, |(_, alt)| {
                String::from_utf8_lossy(alt).into_owned()
            });
            out.push((
                alt,
                <Event as prost::Message>::decode(v.as_slice()).map_err(|e| corrupt(&k, e))?,
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Committed state in a map; counts the scans that reached it.
    #[derive(Default)]
    struct Committed(BTreeMap<Vec<u8>, Vec<u8>>, Mutex<usize>);

    impl Kv for Committed {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReconcilerError> {
            Ok(self.0.get(key).cloned())
        }
        fn scan(&self, prefix: &[u8]) -> Result<Vec<Entry>, ReconcilerError> {
            *self.1.lock().unwrap() += 1;
            Ok(super::super::state::scan_map(&self.0, prefix))
        }
    }

    fn scans(kv: &Committed) -> usize {
        *kv.1.lock().unwrap()
    }

    #[test]
    fn the_prefix_is_the_parked_tables() {
        assert_eq!(PARKED.key_prefix(), PARKED_PREFIX);
        assert_eq!(
            parked_group(&[b"0001/".as_slice(), &PARKED.key(&["cns:7", ""])].concat()),
            Some((1, b"cns:7".as_slice()))
        );
        assert_eq!(parked_group(b"0001/k/"), None, "the whole table");
        assert_eq!(parked_group(b"0001/k/cns:7/r1"), None, "one record");
        assert_eq!(parked_group(b"0001/e/cns:7/"), None, "another table");
        assert_eq!(
            parked_key(b"0012/k/cpf:5/rec/1"),
            Some((12, b"cpf:5".as_slice()))
        );
    }

    #[test]
    fn a_scan_under_an_identifier_is_ruled_out_only_where_nothing_is_parked_under_it() {
        let mut committed = Committed::default();
        for key in ["0001/k/cns:1/r1", "0001/k/cns:1/r2", "0002/k/cns:2/r3"] {
            committed.0.insert(key.as_bytes().to_vec(), b"e".to_vec());
        }
        // Every parked record is found, a page at a time.
        committed.0.extend(
            (0..2 * INDEX_PAGE + 1)
                .map(|i| (format!("0003/k/cns:3/{i:06}").into_bytes(), Vec::new())),
        );
        let index = ParkedIndex::default();
        index.reassign(&committed, &BTreeSet::from([1, 3])).unwrap();
        assert_eq!(index.records(1), Some(2));
        assert_eq!(index.records(2), None, "not owned");
        assert_eq!(index.records(3), Some(2 * INDEX_PAGE as i64 + 1));
        assert_eq!(index.total(), 2 * INDEX_PAGE as i64 + 3);
        let state = Indexed::new(&committed, &index);
        let before = scans(&committed);

        assert_eq!(state.scan(b"0001/k/cns:1/").unwrap().len(), 2);
        assert_eq!(scans(&committed), before + 1);
        assert!(state.scan(b"0001/k/cns:9/").unwrap().is_empty());
        assert_eq!(
            scans(&committed),
            before + 1,
            "ruled out: the store is not read"
        );
        // Not indexed, or not one identifier's records: read from the store.
        assert_eq!(state.scan(b"0002/k/cns:2/").unwrap().len(), 1);
        assert_eq!(state.scan(b"0001/k/").unwrap().len(), 2);
        assert!(state.scan(b"0001/e/cns:9/").unwrap().is_empty());
        assert_eq!(scans(&committed), before + 4);
    }

    #[test]
    fn the_index_follows_the_committed_writes_and_forgets_on_clear() {
        let mut committed = Committed::default();
        committed
            .0
            .insert(b"0001/k/cns:1/r1".to_vec(), b"e".to_vec());
        let index = ParkedIndex::default();
        index.reassign(&committed, &BTreeSet::from([1])).unwrap();
        // An epoch moves cns:1's record out of parking and parks one under cns:2 (twice
        // written: counted once), and writes what is not parked.
        let writes: Writes = [
            (b"0001/k/cns:1/r1".to_vec(), None),
            (b"0001/k/cns:2/r2".to_vec(), Some(b"e".to_vec())),
            (b"0001/k/cns:2/r3".to_vec(), None),
            (b"0001/e/cns:1/r1".to_vec(), Some(b"e".to_vec())),
            (b"0001/p/1".to_vec(), Some(b"p".to_vec())),
        ]
        .into_iter()
        .collect();
        let delta = parked_delta(&committed, &writes).unwrap();
        assert_eq!(delta.by_partition(), BTreeMap::from([(1, 0)]));
        for (k, v) in writes {
            match v {
                Some(v) => committed.0.insert(k, v),
                None => committed.0.remove(&k),
            };
        }
        index.add(&delta);
        let state = Indexed::new(&committed, &index);
        let before = scans(&committed);
        assert!(state.scan(b"0001/k/cns:1/").unwrap().is_empty());
        assert_eq!(
            scans(&committed),
            before,
            "nothing parked under cns:1 any more"
        );
        assert_eq!(state.scan(b"0001/k/cns:2/").unwrap().len(), 1);
        assert_eq!(index.records(1), Some(1));
        // Forgotten, the partition is read from the store until indexed again.
        index.clear();
        assert!(state.scan(b"0001/k/cns:1/").unwrap().is_empty());
        assert_eq!(scans(&committed), before + 2);
        assert_eq!(index.total(), 0);
    }
}
