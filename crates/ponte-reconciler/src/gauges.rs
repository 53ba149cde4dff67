//! The reconciler's gauges, refreshed about once a second by the consumer driver, and its
//! readiness, which follows from them.
use std::collections::BTreeMap;

use ponte_runtime::Readiness;
use ponte_store::Store;

/// Whether the read model may answer: not once it failed, nor before it caught up.
pub(crate) fn read_state(path: &crate::readmodel::ReadPath, caught_up: bool) -> Result<(), String> {
    match path.failure() {
        Some(why) => Err(format!("read model failed, reads refused: {why}")),
        None if !caught_up => Err("read model catching up with the changes topic".to_owned()),
        None => Ok(()),
    }
}

pub(crate) fn refresh_gauges(
    store: &Store,
    read: &Store,
    assignment: &ponte_bus::consume::Assignment,
    readiness: &Readiness,
    read_model: Result<(), String>,
    parked: &crate::topology::ParkedCounts,
    topic_count: usize,
) {
    let owned = assignment.partitions().len();
    metrics::gauge!("ponte_reconciler_assigned_partitions").set(owned as f64);
    metrics::gauge!("ponte_reconciler_state_bytes").set(store.approximate_size_bytes() as f64);
    metrics::gauge!("ponte_reconciler_read_model_bytes").set(read.approximate_size_bytes() as f64);
    for (name, s) in [("state", store), ("read_model", read)] {
        let (cache, memtables, readers) = s.memory_bytes();
        for (kind, v) in [
            ("block_cache", cache),
            ("memtables", memtables),
            ("table_readers", readers),
        ] {
            metrics::gauge!("ponte_reconciler_store_memory_bytes", "store" => name, "kind" => kind)
                .set(v as f64);
        }
    }
    metrics::gauge!("ponte_reconciler_parked_records").set(parked.total() as f64);
    // Outcomes by conditionality and status, summed over municipalities and periods (from the
    // read model, which holds every partition's views).
    if let Ok(rows) = read.scan_prefix(b"i/") {
        let mut sums: BTreeMap<(String, &'static str), u64> = Default::default();
        for (k, v) in rows {
            let key = String::from_utf8_lossy(&k).into_owned();
            let Some(cond) = key.split('/').nth(2) else {
                continue;
            };
            let Ok(c) = serde_json::from_slice::<ponte_domain::indicators::Counts>(&v) else {
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
        for ((cond, status), n) in sums {
            metrics::gauge!("ponte_reconciler_outcomes", "conditionality" => cond, "status" => status).set(n as f64);
        }
    }
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
    } else if let Err(why) = read_model {
        readiness.set_not_ready(why);
    } else {
        readiness.set_ready();
    }
}
