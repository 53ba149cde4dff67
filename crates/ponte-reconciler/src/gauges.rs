//! The reconciler's gauges, refreshed about once a second by the consumer driver, and its
//! readiness, which follows from them.
use std::collections::BTreeMap;

use ponte_runtime::Readiness;
use ponte_store::Store;

/// Whether reads may be answered: not once the read path failed.
pub(crate) fn read_state(path: &crate::grpc::ReadPath) -> Result<(), String> {
    match path.failure() {
        Some(why) => Err(format!("read path failed, reads refused: {why}")),
        None => Ok(()),
    }
}

/// How often the outcome gauges are counted again: each is a scan of every owned partition's
/// counts rows (a row per municipality, conditionality and period).
pub(crate) const OUTCOMES_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Sets `ponte_reconciler_outcomes{conditionality, status}` from the counts rows of the owned
/// partitions (`ic/`, [`crate::topology`]): this instance's share, summed over its partitions'
/// municipalities and periods (sum the instances for the whole view).
pub(crate) fn count_outcomes(store: &Store, owned: &std::collections::BTreeSet<i32>) {
    let mut sums: BTreeMap<(String, &'static str), u64> = Default::default();
    for &p in owned {
        let prefix = [crate::topology::partition_prefix(p), b"ic/".to_vec()].concat();
        let Ok(rows) = store.scan_prefix(&prefix) else {
            return;
        };
        for (k, v) in rows {
            let key = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let Some(cond) = key.split('/').nth(1) else {
                continue;
            };
            let Ok(c) = crate::topology::counts_from_stored(&v) else {
                continue;
            };
            for (status, n) in [
                ("COMPLIANT", c.compliant),
                ("NON_COMPLIANT", c.non_compliant),
                ("NOT_FOLLOWED", c.public.saturating_sub(c.followed)),
            ] {
                *sums.entry((cond.to_owned(), status)).or_default() += n;
            }
        }
    }
    // A series set before and not counted now (its partitions went to another instance) is
    // set to zero, not left at its last value: the instances' sum would count it twice.
    static SET: std::sync::Mutex<Vec<(String, &'static str)>> = std::sync::Mutex::new(Vec::new());
    let mut set = SET
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for gone in set.iter().filter(|k| !sums.contains_key(*k)) {
        metrics::gauge!("ponte_reconciler_outcomes", "conditionality" => gone.0.clone(), "status" => gone.1)
            .set(0.0);
    }
    set.clear();
    for ((cond, status), n) in sums {
        set.push((cond.clone(), status));
        metrics::gauge!("ponte_reconciler_outcomes", "conditionality" => cond, "status" => status)
            .set(n as f64);
    }
}

pub(crate) fn refresh_gauges(
    store: &Store,
    assignment: &ponte_bus::consume::Assignment,
    readiness: &Readiness,
    read_path: Result<(), String>,
    parked: &crate::topology::ParkedCounts,
    topic_count: usize,
) {
    let owned = assignment.partitions().len();
    metrics::gauge!("ponte_reconciler_assigned_partitions").set(owned as f64);
    metrics::gauge!("ponte_reconciler_state_bytes").set(store.approximate_size_bytes() as f64);
    let (cache, memtables, readers) = store.memory_bytes();
    for (kind, v) in [
        ("block_cache", cache),
        ("memtables", memtables),
        ("table_readers", readers),
    ] {
        metrics::gauge!("ponte_reconciler_store_memory_bytes", "store" => "state", "kind" => kind)
            .set(v as f64);
    }
    metrics::gauge!("ponte_reconciler_parked_records").set(parked.total() as f64);
    // Every owned partition number must come with all the subscribed topics (they are
    // co-partitioned and the range assignor keeps equal numbers together): with one missing, a
    // stage of the topology does not run for those partitions.
    let numbers = assignment.partition_numbers().len();
    let incomplete = owned != numbers * topic_count;
    metrics::gauge!("ponte_reconciler_assignment_incomplete").set(f64::from(u8::from(incomplete)));
    let restoring = assignment.preparing_partition_numbers().len();
    if owned == 0 {
        readiness.set_not_ready("no partitions assigned yet");
    } else if restoring > 0 {
        readiness.set_not_ready(format!(
            "restoring {restoring} partition(s) from the changelog"
        ));
    } else if incomplete {
        readiness.set_not_ready(
            "assignment lacks some subscribed topics (not yet in the group leader's metadata)",
        );
    } else if let Err(why) = read_path {
        readiness.set_not_ready(why);
    } else {
        readiness.set_ready();
    }
}
