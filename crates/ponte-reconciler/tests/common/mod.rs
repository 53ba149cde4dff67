//! What the topology's tests share: the state as a map instead of RocksDB, and the partitioning
//! of keys.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Mutex;

use ponte_reconciler::ReconcilerError;
use ponte_reconciler::topology::{Entry, Kv, Rederive, is_derived, key_partition};

/// Committed state in a map, read as the service reads RocksDB; the keys read one at a time
/// (not in a batch, [`Kv::get_many`]) are recorded in the second field.
#[derive(Default)]
pub(crate) struct MapKv(
    pub(crate) Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    pub(crate) Mutex<Vec<Vec<u8>>>,
);

impl MapKv {
    /// A copy of the state, whose reads are not counted as the original's.
    pub(crate) fn copy(&self) -> MapKv {
        MapKv(
            Mutex::new(self.0.lock().unwrap().clone()),
            Default::default(),
        )
    }

    /// The entries of the derived tables (the partitions' index and counts).
    pub(crate) fn derived(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| is_derived(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl Kv for MapKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReconcilerError> {
        self.1.lock().unwrap().push(key.to_vec());
        Ok(self.0.lock().unwrap().get(key).cloned())
    }
    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, ReconcilerError> {
        let map = self.0.lock().unwrap();
        Ok(keys.iter().map(|k| map.get(k).cloned()).collect())
    }
    fn scan(&self, prefix: &[u8]) -> Result<Vec<Entry>, ReconcilerError> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// Partitions of every topic in the harnesses: enough that a person, their identifiers and
/// their family usually land on different partitions, as they do in a deployment.
pub(crate) const PARTITIONS: i32 = 4;

/// 64-bit FNV-1a (also how digests written before XXH3 hashed a view's encoding).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The partition of a Kafka key. FNV-1a: any stable hash does; the broker's partitioner is
/// another one.
pub(crate) fn partition_of(key: &str) -> i32 {
    i32::try_from(fnv1a(key.as_bytes()) % PARTITIONS as u64).unwrap()
}

/// Restores `changelog`'s entries into `kv` in batches of `batch` (every partition of the
/// harnesses), the index derived as the service's restore derives it ([`Rederive`]); false
/// when the restore says a partition's index is to be built again.
pub(crate) fn restore(kv: &MapKv, changelog: &[(Vec<u8>, Option<Vec<u8>>)], batch: usize) -> bool {
    let mut rederive: BTreeMap<i32, Rederive> =
        (0..PARTITIONS).map(|p| (p, Rederive::new(p))).collect();
    for chunk in changelog.chunks(batch) {
        for (k, v) in chunk {
            let p = key_partition(k).unwrap();
            rederive
                .get_mut(&p)
                .unwrap()
                .entry(kv, k, v.as_deref())
                .unwrap();
        }
        let mut derived = Vec::new();
        for r in rederive.values_mut() {
            derived.extend(r.finish_batch(kv).unwrap());
        }
        let mut map = kv.0.lock().unwrap();
        for (k, v) in chunk.iter().cloned().chain(derived) {
            match v {
                Some(v) => map.insert(k, v),
                None => map.remove(&k),
            };
        }
    }
    rederive.values().all(Rederive::whole)
}
