//! The health records parked in the partitions an instance owns: how many (the
//! `ponte_reconciler_parked_records` gauge, [`ParkedCounts`]), which ([`read_parked`]), and the
//! scans of the layout before `a/` answered without the store where a partition holds none of
//! its keys ([`Screened`]).
//!
//! Every epoch that parks a record or takes one out of parking writes the partition's count
//! (`n/parked`), so the gauge follows the committed writes and a new assignment reads one key
//! per partition; a scan of the parked records for the gauge every second took 58 % of the
//! reconciler's CPU with 3 M records parked while 10 M people were loaded at once
//! (docs/benchmarks.md).
//!
//! Stores written before `a/<alt>` held one key per record under `e/<alt>/` (forwarded) and
//! `k/<alt>/` (parked), moved into `a/<alt>` when the identifier is next touched
//! (`identity.rs`). Looking for them costs a scan per identifier touched, an iterator opened
//! over every memtable and sorted run of the store (15 % of the consumer loop's time in a
//! profile at 1 M people, docs/benchmarks.md): a partition found without any when it is taken
//! has those scans answered at once, since nothing writes such keys any more.
use super::*;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// How many parked records of the layout before `a/` a partition's count is taken from per
/// read of the store, when it has no count yet (3 M were parked part way through the 10 M
/// people load).
const COUNT_PAGE: usize = 10_000;

/// A full key split at its partition prefix: (partition, key within the partition).
fn split_partition(full_key: &[u8]) -> Option<(i32, &[u8])> {
    let p = key_partition(full_key)?;
    let slash = full_key.iter().position(|&b| b == b'/')?;
    Some((p, &full_key[slash + 1..]))
}

/// The prefixes of the tables of the layout before `a/` ([`FORWARDED_BEFORE_HELD`],
/// [`PARKED_BEFORE_HELD`]), without building them: every scan an epoch makes is checked
/// against them.
const BEFORE_HELD_PREFIXES: [&[u8]; 2] = [b"e/", b"k/"];

/// The partition of a scan of a table of the layout before `a/`; `None` for any other scan.
fn before_held_scan(full_prefix: &[u8]) -> Option<i32> {
    let (p, local) = split_partition(full_prefix)?;
    BEFORE_HELD_PREFIXES
        .iter()
        .any(|table| local.starts_with(table))
        .then_some(p)
}

/// What the committed state of one owned partition parks.
#[derive(Debug, Default, Clone, Copy)]
struct PartitionParked {
    records: i64,
    /// The partition holds keys of the layout before `a/` (or did when it was taken).
    before_held: bool,
}

/// The parked records of the owned partitions, counted per partition (see the module
/// documentation). Shared by the consumer loop, which keeps it, and the [`Screened`] state its
/// epochs read, hence the lock (never contended: one thread uses both).
#[derive(Default)]
pub struct ParkedCounts(Mutex<BTreeMap<i32, PartitionParked>>);

impl std::fmt::Debug for ParkedCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ParkedCounts")
            .field(&*self.partitions())
            .finish()
    }
}

impl ParkedCounts {
    fn partitions(&self) -> MutexGuard<'_, BTreeMap<i32, PartitionParked>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets the partitions not in `owned` and reads the count of those not read yet from
    /// the committed state `kv`, with whether they hold keys of the layout before `a/`.
    pub fn reassign(&self, kv: &dyn Kv, owned: &BTreeSet<i32>) -> Result<(), ReconcilerError> {
        let mut partitions = self.partitions();
        partitions.retain(|p, _| owned.contains(p));
        for &p in owned {
            if partitions.contains_key(&p) {
                continue;
            }
            let scope = partition_prefix(p);
            let mut before_held = false;
            for table in BEFORE_HELD_PREFIXES {
                let prefix = [scope.as_slice(), table].concat();
                before_held |= !kv.scan_after(&prefix, &prefix, 1)?.is_empty();
            }
            let records = match stored_count(kv, &scope)? {
                Some(records) => records,
                None if before_held => count_before_held(kv, &scope)?,
                None => 0,
            };
            partitions.insert(
                p,
                PartitionParked {
                    records,
                    before_held,
                },
            );
        }
        Ok(())
    }

    /// Forgets every partition: their state may have changed since they were read (a
    /// partition revoked and assigned again was restored, perhaps after another instance
    /// wrote it). The next [`ParkedCounts::reassign`] reads them again.
    pub fn clear(&self) {
        self.partitions().clear();
    }

    /// Follows a committed epoch: `after` is the counts its writes left ([`parked_after`]).
    /// Partitions not read are left to their next [`ParkedCounts::reassign`].
    pub fn follow(&self, after: &ParkedAfter) {
        let mut partitions = self.partitions();
        for (p, &records) in &after.0 {
            if let Some(parked) = partitions.get_mut(p) {
                parked.records = records;
            }
        }
    }

    /// Parked records in all partitions read.
    pub fn total(&self) -> i64 {
        self.partitions().values().map(|p| p.records).sum()
    }

    /// Parked records in partition `p`; `None` when it is not read.
    pub fn records(&self, p: i32) -> Option<i64> {
        self.partitions().get(&p).map(|parked| parked.records)
    }

    /// True when `full_prefix` is a scan of a table of the layout before `a/` in a partition
    /// read without any of its keys.
    fn rules_out(&self, full_prefix: &[u8]) -> bool {
        let Some(p) = before_held_scan(full_prefix) else {
            return false;
        };
        self.partitions()
            .get(&p)
            .is_some_and(|parked| !parked.before_held)
    }
}

/// The count a `n/parked` value holds.
fn count_of(key: &[u8], value: &[u8]) -> Result<i64, ReconcilerError> {
    let count = ParkedCount::from_stored(value).map_err(|e| corrupt(key, e))?;
    i64::try_from(count.records).map_err(|e| corrupt(key, e))
}

/// The count a partition's `n/parked` holds (`scope`: its prefix); `None` when it has none.
fn stored_count(kv: &dyn Kv, scope: &[u8]) -> Result<Option<i64>, ReconcilerError> {
    let key = [scope, &PARKED_COUNT.key(&[PARKED_COUNT_ID])].concat();
    kv.get(&key)?.map(|v| count_of(&key, &v)).transpose()
}

/// The parked records of a partition of the layout before `a/` that has no count yet: its
/// `k/` keys, a page at a time.
fn count_before_held(kv: &dyn Kv, scope: &[u8]) -> Result<i64, ReconcilerError> {
    let mut records = 0;
    in_pages(
        kv,
        &[scope, &PARKED_BEFORE_HELD.key_prefix()].concat(),
        COUNT_PAGE,
        |page| {
            records += page.len() as i64;
            Ok(true)
        },
    )?;
    Ok(records)
}

/// The entries under `prefix` in key order, `page` of them at a time, given to `each` until it
/// returns false or none are left.
fn in_pages(
    kv: &dyn Kv,
    prefix: &[u8],
    page: usize,
    mut each: impl FnMut(&[Entry]) -> Result<bool, ReconcilerError>,
) -> Result<(), ReconcilerError> {
    let mut after = prefix.to_vec();
    loop {
        let entries = kv.scan_after(prefix, &after, page)?;
        let Some((last, _)) = entries.last() else {
            return Ok(());
        };
        after.clone_from(last);
        if !each(&entries)? || entries.len() < page {
            return Ok(());
        }
    }
}

/// The parked counts an epoch's writes leave, per partition whose count they change.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ParkedAfter(BTreeMap<i32, i64>);

/// The parked counts `writes` leave: the `n/parked` entries among them.
pub fn parked_after(writes: &Writes) -> Result<ParkedAfter, ReconcilerError> {
    let count_key = PARKED_COUNT.key(&[PARKED_COUNT_ID]);
    let mut after = ParkedAfter::default();
    for (k, v) in writes {
        match split_partition(k) {
            Some((p, local)) if local == count_key.as_slice() => {
                let records = match v {
                    Some(v) => count_of(k, v)?,
                    None => 0,
                };
                after.0.insert(p, records);
            }
            _ => {}
        }
    }
    Ok(after)
}

/// The committed state as the topology reads it, with the [`ParkedCounts`] beside it: a scan
/// of a table of the layout before `a/` in a partition read without any of its keys answers
/// at once, without reading the store. Everything else is read from `kv`.
pub struct Screened<'a> {
    kv: &'a dyn Kv,
    parked: &'a ParkedCounts,
}

impl<'a> Screened<'a> {
    pub fn new(kv: &'a dyn Kv, parked: &'a ParkedCounts) -> Self {
        Self { kv, parked }
    }
}

impl std::fmt::Debug for Screened<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Screened")
            .field("parked", &self.parked)
            .finish_non_exhaustive()
    }
}

impl Kv for Screened<'_> {
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

/// How many identifiers' held records (`a/` entries) are read at a time when the parked ones
/// are listed.
const LIST_PAGE: usize = 1_000;

/// What [`read_parked`] found.
#[derive(Debug, Default)]
pub struct ParkedList {
    /// Up to the number asked for: (identifier, event), by partition and identifier.
    pub records: Vec<(String, Event)>,
    /// How many the partitions park in all: their counts (`n/parked`).
    pub total: u64,
}

/// Up to `limit` parked health records of the partitions `partitions`, and how many they park
/// in all. The records parked are those held under an identifier (`a/`) the crosswalk maps to no
/// one; they are looked for a page of identifiers at a time, with the crosswalk entries of the
/// page read at once, only in partitions whose count says they park any, and only until `limit`
/// are found — so what a call holds is a page and its answer, where reading every record held
/// under an identifier at once was millions of records at 10 M people. Records of the layout
/// before `a/` not moved yet (`k/<alt>/<record id>`) are listed after a partition's `a/` ones.
pub fn read_parked(
    kv: &dyn Kv,
    partitions: &[i32],
    limit: usize,
) -> Result<ParkedList, ReconcilerError> {
    let mut out = ParkedList::default();
    for &p in partitions {
        let scope = partition_prefix(p);
        let count = match stored_count(kv, &scope)? {
            Some(records) => records,
            None => count_before_held(kv, &scope)?,
        };
        out.total += u64::try_from(count).unwrap_or(0);
        if count <= 0 || out.records.len() >= limit {
            continue;
        }
        let held_prefix = [scope.as_slice(), &HELD.key_prefix()].concat();
        in_pages(kv, &held_prefix, LIST_PAGE, |page| {
            let alts: Vec<String> = page
                .iter()
                .map(|(k, _)| String::from_utf8_lossy(&k[held_prefix.len()..]).into_owned())
                .collect();
            let crosswalk: Vec<Vec<u8>> = alts
                .iter()
                .map(|alt| [scope.as_slice(), &CROSSWALK.key(&[alt])].concat())
                .collect();
            let mapped = kv.get_many(&crosswalk)?;
            for ((alt, (k, v)), mapped) in alts.into_iter().zip(page).zip(mapped) {
                if mapped.is_some() || out.records.len() >= limit {
                    continue;
                }
                let records = HeldHealthRecords::from_stored(v).map_err(|e| corrupt(k, e))?;
                let room = limit - out.records.len();
                out.records.extend(
                    records
                        .records
                        .into_iter()
                        .take(room)
                        .map(|e| (alt.clone(), e)),
                );
            }
            Ok(out.records.len() < limit)
        })?;
        if out.records.len() >= limit {
            continue;
        }
        let before_prefix = [scope.as_slice(), &PARKED_BEFORE_HELD.key_prefix()].concat();
        in_pages(kv, &before_prefix, LIST_PAGE, |page| {
            for (k, v) in page.iter().take(limit - out.records.len()) {
                let rest = &k[before_prefix.len()..];
                let alt = rest
                    .iter()
                    .position(|&b| b == b'/')
                    .map_or(rest, |end| &rest[..end]);
                out.records.push((
                    String::from_utf8_lossy(alt).into_owned(),
                    Event::from_stored(v).map_err(|e| corrupt(k, e))?,
                ));
            }
            Ok(out.records.len() < limit)
        })?;
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

    fn count(records: u64) -> Vec<u8> {
        ParkedCount { records }.to_stored().unwrap()
    }

    fn event(record_id: &str) -> Event {
        Event {
            record_id: record_id.to_owned(),
            version: 1,
            ..Event::default()
        }
    }

    #[test]
    fn parked_records_are_listed_a_page_at_a_time_up_to_the_limit_with_the_counts_total() {
        let mut committed = Committed::default();
        let mut put = |k: String, v: Vec<u8>| committed.0.insert(k.into_bytes(), v);
        // Partition 1: records held under 2,500 identifiers (more than two pages), those of
        // three parked (one holding two records), the others mapped by the crosswalk.
        let parked_ids = [3, 1500, 2499];
        for i in 0..2500 {
            let alt = format!("cns:{i:015}");
            let records = if i == 1500 {
                vec![event(&format!("r{i}a")), event(&format!("r{i}b"))]
            } else {
                vec![event(&format!("r{i}"))]
            };
            put(
                format!("0001/a/{alt}"),
                HeldHealthRecords { records }.to_stored().unwrap(),
            );
            if !parked_ids.contains(&i) {
                put(format!("0001/x/{alt}"), b"12345678901".to_vec());
            }
        }
        put("0001/n/parked".to_owned(), count(4));
        // Partition 2: records held, all mapped, nothing parked (no count, no `k/` keys).
        put(
            "0002/a/cns:1".to_owned(),
            HeldHealthRecords {
                records: vec![event("q")],
            }
            .to_stored()
            .unwrap(),
        );
        put("0002/x/cns:1".to_owned(), b"12345678901".to_vec());
        // Partition 3: the layout before `a/`, two records parked under `k/`, no count yet.
        for r in ["k1", "k2"] {
            put(format!("0003/k/cns:9/{r}"), event(r).to_stored().unwrap());
        }
        let listed = |partitions: &[i32], limit: usize| {
            let before = scans(&committed);
            let found = read_parked(&committed, partitions, limit).unwrap();
            let ids: Vec<String> = found
                .records
                .iter()
                .map(|(alt, e)| format!("{alt} {}", e.record_id))
                .collect();
            (ids, found.total, scans(&committed) - before)
        };
        let alt = |i: usize| format!("cns:{i:015}");
        let every = vec![
            format!("{} r3", alt(3)),
            format!("{} r1500a", alt(1500)),
            format!("{} r1500b", alt(1500)),
            format!("{} r2499", alt(2499)),
            "cns:9 k1".to_owned(),
            "cns:9 k2".to_owned(),
        ];
        let (ids, total, _) = listed(&[1, 2, 3], usize::MAX);
        assert_eq!((ids, total), (every.clone(), 6));
        // Cut short: the beginning of the same list (an identifier's records cut too), the
        // total still every partition's count; the pages after the limit are not read.
        let (ids, total, scans_made) = listed(&[1, 2, 3], 1);
        assert_eq!((ids, total), (every[..1].to_vec(), 6));
        // One page of partition 1; partition 2's `k/` keys counted (it has no count), and
        // nothing of it scanned for records; partition 3's counted.
        assert_eq!(scans_made, 3);
        let (ids, total, _) = listed(&[1, 2, 3], 2);
        assert_eq!((ids, total), (every[..2].to_vec(), 6));
        let (ids, _, _) = listed(&[1, 2, 3], 5);
        assert_eq!(ids, every[..5].to_vec());
        // A partition that parks nothing is not scanned for records at all.
        let (ids, total, scans_made) = listed(&[2], usize::MAX);
        assert_eq!((ids.len(), total, scans_made), (0, 0, 1));
        let (ids, total, _) = listed(&[], 10);
        assert_eq!((ids.len(), total), (0, 0));
    }

    #[test]
    fn only_scans_of_the_layout_before_held_records_are_screened() {
        assert_eq!(
            BEFORE_HELD_PREFIXES.map(<[u8]>::to_vec),
            [
                FORWARDED_BEFORE_HELD.key_prefix(),
                PARKED_BEFORE_HELD.key_prefix()
            ]
        );
        assert_eq!(before_held_scan(b"0001/e/cns:7/"), Some(1));
        assert_eq!(before_held_scan(b"0012/k/"), Some(12));
        assert_eq!(before_held_scan(b"0001/a/cns:7"), None);
        assert_eq!(before_held_scan(b"0001/x/cns:7"), None);
        assert_eq!(before_held_scan(b"0001/p/1"), None);
    }

    #[test]
    fn counts_are_read_or_taken_from_the_layout_before_held_records() {
        let mut committed = Committed::default();
        // Partition 1: written by this layout, with its count.
        committed.0.insert(b"0001/n/parked".to_vec(), count(2));
        committed
            .0
            .insert(b"0001/a/cns:1".to_vec(), b"held".to_vec());
        // Partition 2: the layout before, no count yet: every parked record is counted, a
        // page at a time.
        committed.0.extend(
            (0..2 * COUNT_PAGE + 1)
                .map(|i| (format!("0002/k/cns:3/{i:06}").into_bytes(), Vec::new())),
        );
        committed
            .0
            .insert(b"0002/e/cns:4/r1".to_vec(), b"forwarded".to_vec());
        // Partition 3: nothing held.
        committed.0.insert(b"0003/p/1".to_vec(), b"person".to_vec());
        let counts = ParkedCounts::default();
        counts
            .reassign(&committed, &BTreeSet::from([1, 2, 3]))
            .unwrap();
        assert_eq!(counts.records(1), Some(2));
        assert_eq!(counts.records(2), Some(2 * COUNT_PAGE as i64 + 1));
        assert_eq!(counts.records(3), Some(0));
        assert_eq!(counts.records(4), None, "not owned");
        assert_eq!(counts.total(), 2 * COUNT_PAGE as i64 + 3);

        let state = Screened::new(&committed, &counts);
        let before = scans(&committed);
        // Partitions without keys of the layout before: answered without the store.
        assert!(state.scan(b"0001/e/cns:1/").unwrap().is_empty());
        assert!(state.scan(b"0003/k/cns:1/").unwrap().is_empty());
        assert!(
            state
                .scan_after(b"0001/k/", b"0001/k/", 9)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            scans(&committed),
            before,
            "ruled out: the store is not read"
        );
        // One that holds them, one not read, and any other table: read from the store.
        assert_eq!(state.scan(b"0002/e/cns:4/").unwrap().len(), 1);
        assert!(state.scan(b"0004/e/cns:4/").unwrap().is_empty());
        assert_eq!(state.scan(b"0001/a/").unwrap().len(), 1);
        assert_eq!(scans(&committed), before + 3);
    }

    #[test]
    fn counts_follow_the_committed_writes_and_are_forgotten_on_clear() {
        let committed = Committed::default();
        let counts = ParkedCounts::default();
        counts
            .reassign(&committed, &BTreeSet::from([1, 2]))
            .unwrap();
        let writes: Writes = [
            (b"0001/n/parked".to_vec(), Some(count(3))),
            (b"0001/a/cns:1".to_vec(), Some(b"held".to_vec())),
            (b"0002/p/1".to_vec(), Some(b"person".to_vec())),
            (b"0005/n/parked".to_vec(), Some(count(7))),
        ]
        .into_iter()
        .collect();
        let after = parked_after(&writes).unwrap();
        assert_eq!(after.0, BTreeMap::from([(1, 3), (5, 7)]));
        counts.follow(&after);
        assert_eq!(counts.records(1), Some(3));
        assert_eq!(counts.records(2), Some(0), "its count not written");
        assert_eq!(
            counts.records(5),
            None,
            "not owned: left to its reassignment"
        );
        assert_eq!(counts.total(), 3);
        counts.clear();
        assert_eq!(counts.total(), 0);
        assert_eq!(counts.records(1), None);

        let bad: Writes = [(b"0001/n/parked".to_vec(), Some(vec![0xff]))]
            .into_iter()
            .collect();
        let err = parked_after(&bad).unwrap_err().to_string();
        assert!(err.contains("0001/n/parked"), "{err}");
    }
}
