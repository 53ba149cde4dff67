//! The reconciler's gauges, refreshed about once a second by the consumer driver (the outcome
//! counts every 30 s by a task of their own), and its readiness, which follows from them.
use std::collections::{BTreeMap, BTreeSet};

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
const OUTCOMES_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Counts the outcome gauges ([`count_outcomes`]) at once and then every [`OUTCOMES_EVERY`],
/// for the partitions the current assignment has prepared, on a blocking thread: off the
/// consumer loop, whose epochs a scan of every counts row would hold up. Ends with `shutdown`.
pub(crate) fn spawn_outcome_counter(
    store: Store,
    assignment: tokio::sync::watch::Receiver<ponte_bus::consume::Assignment>,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(OUTCOMES_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = every.tick() => {}
            }
            let owned = assignment.borrow().prepared_partition_numbers();
            let store = store.clone();
            if let Err(e) =
                tokio::task::spawn_blocking(move || count_outcomes(&store, &owned)).await
            {
                tracing::warn!(error = %e, "counting the outcome gauges failed");
            }
        }
    })
}

/// A series of `ponte_reconciler_outcomes`: the conditionality and the status.
type OutcomeSeries = (String, &'static str);

/// The outcomes the counts rows of the `owned` partitions hold (`ic/`, [`crate::topology`]),
/// summed over their municipalities and periods by conditionality and status. A row that does
/// not decode is left out, logged by its key (a municipality, a conditionality and a period).
fn outcome_sums(
    store: &Store,
    owned: &BTreeSet<i32>,
) -> Result<BTreeMap<OutcomeSeries, u64>, crate::ReconcilerError> {
    let mut sums: BTreeMap<OutcomeSeries, u64> = BTreeMap::new();
    for &p in owned {
        for crate::topology::CountsRow {
            key,
            conditionality,
            counts,
            ..
        } in crate::topology::counts_rows(store, p, None)?
        {
            let Ok(c) = counts else {
                tracing::warn!(row = %String::from_utf8_lossy(&key), "an outcome counts row is not one: left out of ponte_reconciler_outcomes");
                continue;
            };
            for (status, n) in [
                ("COMPLIANT", c.compliant),
                ("NON_COMPLIANT", c.non_compliant),
                ("NOT_FOLLOWED", c.public.saturating_sub(c.followed)),
            ] {
                *sums.entry((conditionality.clone(), status)).or_default() += n;
            }
        }
    }
    Ok(sums)
}

/// The values to set: every series counted now, and zero for each one set before and not
/// counted now (its partitions went to another instance: left at its last value, the
/// instances' sum would count it twice).
fn outcome_gauges(
    before: &[OutcomeSeries],
    sums: BTreeMap<OutcomeSeries, u64>,
) -> Vec<(OutcomeSeries, f64)> {
    let gone: Vec<_> = before
        .iter()
        .filter(|s| !sums.contains_key(*s))
        .map(|s| (s.clone(), 0.0))
        .collect();
    gone.into_iter()
        .chain(sums.into_iter().map(|(s, n)| (s, n as f64)))
        .collect()
}

/// Sets `ponte_reconciler_outcomes{conditionality, status}` from the counts rows of the owned
/// partitions: this instance's share (sum the instances for the whole view). A store that
/// cannot be read leaves the gauges as they were (the read path's failure is reported where
/// the reads are). How long each count took is `ponte_reconciler_outcome_count_seconds`: the
/// scan reads every counts row of the owned partitions, a number that grows with the
/// municipalities, conditionalities and periods the state holds.
fn count_outcomes(store: &Store, owned: &BTreeSet<i32>) {
    let started = std::time::Instant::now();
    let sums = outcome_sums(store, owned);
    metrics::histogram!("ponte_reconciler_outcome_count_seconds")
        .record(started.elapsed().as_secs_f64());
    let sums = match sums {
        Ok(sums) => sums,
        Err(e) => {
            tracing::warn!(error = %e, "outcome counts not read: ponte_reconciler_outcomes left as they were");
            return;
        }
    };
    static SET: std::sync::Mutex<Vec<OutcomeSeries>> = std::sync::Mutex::new(Vec::new());
    let mut set = SET
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let counted: Vec<OutcomeSeries> = sums.keys().cloned().collect();
    for ((cond, status), v) in outcome_gauges(&set, sums) {
        metrics::gauge!("ponte_reconciler_outcomes", "conditionality" => cond, "status" => status)
            .set(v);
    }
    *set = counted;
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::topology::{counts_to_stored, partition_prefix};
    use ponte_domain::indicators::Counts;

    fn row(store: &Store, partition: i32, key: &str, value: &[u8]) {
        let mut batch = store.batch();
        batch.put(
            &[partition_prefix(partition), key.as_bytes().to_vec()].concat(),
            value,
        );
        batch.commit().unwrap();
    }

    fn counts(public: u64, followed: u64, compliant: u64, non_compliant: u64) -> Vec<u8> {
        counts_to_stored(&Counts {
            public,
            followed,
            compliant,
            non_compliant,
        })
    }

    #[test]
    fn the_outcomes_are_summed_from_the_owned_partitions_counts_rows_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), ponte_store::Durability::Process).unwrap();
        row(
            &store,
            0,
            "ic/3550308/EDUCATION/2025-B2",
            &counts(10, 8, 6, 2),
        );
        row(
            &store,
            0,
            "ic/3304557/EDUCATION/2025-B3",
            &counts(5, 5, 4, 1),
        );
        row(
            &store,
            0,
            "ic/3550308/VACCINATION/2025-S1",
            &counts(3, 1, 1, 0),
        );
        // Not a counts row: left out, the others still counted.
        row(
            &store,
            0,
            "ic/3550308/HEALTH_CHECKUP/2025-S1",
            b"{\"public\":1}",
        );
        // Another partition's rows, and a person of the owned one (not under `ic/`).
        row(
            &store,
            1,
            "ic/3550308/EDUCATION/2025-B2",
            &counts(100, 100, 100, 0),
        );
        row(&store, 0, "mi/3550308/12345678901", b"");

        let sums = outcome_sums(&store, &BTreeSet::from([0])).unwrap();
        let series = |cond: &str, status: &'static str| (cond.to_owned(), status);
        assert_eq!(
            sums,
            BTreeMap::from([
                (series("EDUCATION", "COMPLIANT"), 10),
                (series("EDUCATION", "NON_COMPLIANT"), 3),
                (series("EDUCATION", "NOT_FOLLOWED"), 2),
                (series("VACCINATION", "COMPLIANT"), 1),
                (series("VACCINATION", "NON_COMPLIANT"), 0),
                (series("VACCINATION", "NOT_FOLLOWED"), 2),
            ])
        );
        let both = outcome_sums(&store, &BTreeSet::from([0, 1])).unwrap();
        assert_eq!(both[&series("EDUCATION", "COMPLIANT")], 110);
        assert!(outcome_sums(&store, &BTreeSet::new()).unwrap().is_empty());
    }

    #[test]
    fn a_series_no_longer_counted_is_set_to_zero_once() {
        let series = |cond: &str, status: &'static str| (cond.to_owned(), status);
        let before = vec![
            series("EDUCATION", "COMPLIANT"),
            series("VACCINATION", "COMPLIANT"),
        ];
        let now = BTreeMap::from([(series("EDUCATION", "COMPLIANT"), 7)]);
        assert_eq!(
            outcome_gauges(&before, now),
            vec![
                (series("VACCINATION", "COMPLIANT"), 0.0),
                (series("EDUCATION", "COMPLIANT"), 7.0),
            ]
        );
        assert_eq!(outcome_gauges(&[], BTreeMap::new()), vec![]);
    }
}
