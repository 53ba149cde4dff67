//! An epoch applied on several threads at once ("lanes").
//!
//! The state of each input partition is its own — every state key carries its partition's
//! prefix ([`crate::topology::partition_prefix`]) and an event reads and writes only the state of
//! the partition it was consumed from — so the events of different partitions can be applied at
//! the same time, each lane in a transaction ([`Tx`]) of its own over the same committed state.
//! Within an epoch a partition stays on one lane — the one with the fewest messages when the
//! partition's first arrived, the busiest partitions shared out first — and its events are
//! applied there in the order they were fetched: what each partition's state and outputs become
//! is what one thread applying every event would give. Before the epoch is sent, the other
//! lanes' writes and outputs are moved into the first ([`Lanes::merged`]), and the next epoch
//! shares its partitions out afresh.
//!
//! Only partitions fetched together can be applied together: the reconciler's consumer takes
//! at most 256 KiB of a partition per fetch (`max.partition.fetch.bytes`), so that an epoch
//! holds several (ponte_bus::consume).
use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::ReconcilerError;
use crate::topology::{Kv, Topology, Tx};

/// The open epoch's transactions, one per lane, and the ingest times of what each applied.
pub(crate) struct Lanes<'a> {
    txs: Vec<Tx<'a>>,
    ingest_times: Vec<Vec<SystemTime>>,
    /// The open epoch's partitions: the lane of each.
    lane_of: BTreeMap<i32, usize>,
    /// The messages each lane was given in the open epoch.
    load: Vec<usize>,
}

impl std::fmt::Debug for Lanes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lanes").field("txs", &self.txs).finish()
    }
}

impl<'a> Lanes<'a> {
    /// `lanes` transactions (at least one) over `base`.
    pub(crate) fn new(base: &'a dyn Kv, lanes: usize) -> Self {
        let lanes = lanes.max(1);
        Self {
            txs: (0..lanes).map(|_| Tx::new(base)).collect(),
            ingest_times: vec![Vec::new(); lanes],
            lane_of: BTreeMap::new(),
            load: vec![0; lanes],
        }
    }

    /// Applies `run` (messages in the order they were fetched; `partition` tells each one's):
    /// `apply` is called once per lane that has messages, with the lane's transaction, where
    /// the ingest times of what it applied go, and the lane's messages in their order. Lanes
    /// run on threads of their own when more than one has messages; the first error is
    /// returned once every lane has stopped.
    pub(crate) fn apply<M, F>(
        &mut self,
        run: &[M],
        partition: impl Fn(&M) -> i32,
        apply: F,
    ) -> Result<(), ReconcilerError>
    where
        M: Sync,
        F: Fn(&mut Tx<'a>, &mut Vec<SystemTime>, &[&M]) -> Result<(), ReconcilerError> + Sync,
    {
        // Partitions new to the epoch are shared out by their messages, the busiest first,
        // each to the lane with the fewest messages so far; the others stay where they are.
        let mut counts: BTreeMap<i32, usize> = BTreeMap::new();
        for m in run {
            *counts.entry(partition(m)).or_default() += 1;
        }
        let mut busiest: Vec<(i32, usize)> = counts.into_iter().collect();
        busiest.sort_by_key(|&(p, n)| (std::cmp::Reverse(n), p));
        for (p, n) in busiest {
            let lane = match self.lane_of.get(&p) {
                Some(&lane) => lane,
                None => {
                    let (lane, _) = self
                        .load
                        .iter()
                        .enumerate()
                        .min_by_key(|&(i, l)| (*l, i))
                        .expect("Lanes::new makes at least one lane");
                    self.lane_of.insert(p, lane);
                    lane
                }
            };
            self.load[lane] += n;
        }
        let mut by_lane: Vec<Vec<&M>> = vec![Vec::new(); self.txs.len()];
        for m in run {
            by_lane[self.lane_of[&partition(m)]].push(m);
        }
        let work = self
            .txs
            .iter_mut()
            .zip(self.ingest_times.iter_mut())
            .zip(&by_lane)
            .filter(|(_, msgs)| !msgs.is_empty())
            .map(|((tx, times), msgs)| (tx, times, msgs.as_slice()));
        in_parallel(work, |(tx, times, msgs)| apply(tx, times, msgs))
    }

    /// Evaluates the deferred views ([`Topology::finish`]) of each lane that applied messages
    /// in the open epoch, the lanes at once.
    pub(crate) fn finish(&mut self, topology: &Topology) -> Result<(), ReconcilerError> {
        let used = self
            .txs
            .iter_mut()
            .zip(&self.load)
            .filter(|(_, messages)| **messages > 0)
            .map(|(tx, _)| tx);
        in_parallel(used, |tx| topology.finish(tx))
    }

    /// The ingest times of what was applied since the last call, every lane's.
    pub(crate) fn take_ingest_times(&mut self) -> impl Iterator<Item = SystemTime> + '_ {
        self.ingest_times.iter_mut().flat_map(|t| t.drain(..))
    }

    /// The first lane's transaction with every other lane's writes and outputs moved into it:
    /// the epoch, to send ([`crate::epoch::Committer::send`]).
    pub(crate) fn merged(&mut self) -> &mut Tx<'a> {
        let (first, rest) = self
            .txs
            .split_first_mut()
            .expect("Lanes::new makes at least one lane");
        for tx in rest {
            first.absorb(tx);
        }
        self.lane_of.clear();
        self.load.fill(0);
        first
    }

    /// Drops what every lane applied: the epoch is not committed.
    pub(crate) fn discard(&mut self) {
        for tx in &mut self.txs {
            tx.discard();
        }
        for times in &mut self.ingest_times {
            times.clear();
        }
        self.lane_of.clear();
        self.load.fill(0);
    }
}

/// Runs `f` on every item, the first on this thread and the others on threads of their own
/// when there are several; the first error (in item order) once all have returned. A panic
/// in one is raised again here.
fn in_parallel<I, F>(items: impl IntoIterator<Item = I>, f: F) -> Result<(), ReconcilerError>
where
    I: Send,
    F: Fn(I) -> Result<(), ReconcilerError> + Sync,
{
    let mut items = items.into_iter();
    let Some(first) = items.next() else {
        return Ok(());
    };
    let rest: Vec<I> = items.collect();
    if rest.is_empty() {
        return f(first);
    }
    let f = &f;
    std::thread::scope(|s| {
        let others: Vec<_> = rest.into_iter().map(|i| s.spawn(move || f(i))).collect();
        let mut result = f(first);
        for h in others {
            let r = h
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            result = result.and(r);
        }
        result
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::topology::{OutputKind, Sorted};
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// A message: partition and value. Applying it appends the value to its partition's
    /// `log` key and emits the log so far (so the result depends on every partition's order).
    type Msg = (i32, u8);

    fn apply_one(tx: &mut Tx<'_>, (p, v): &Msg) -> Result<(), ReconcilerError> {
        tx.set_partition(*p);
        let mut log = tx.get(b"log")?.unwrap_or_default();
        log.push(*v);
        tx.put(b"log".to_vec(), log.clone());
        tx.emit(OutputKind::Change, format!("log:{p}"), log);
        Ok(())
    }

    fn messages() -> Vec<Msg> {
        // Five partitions interleaved, as fetched.
        (0..60u8).map(|i| (i32::from(i % 5 * 7 % 5), i)).collect()
    }

    /// What an epoch holds once merged: its writes, and the outputs of each partition in order.
    type Epoch = (crate::topology::Writes, BTreeMap<i32, Vec<Vec<u8>>>);

    fn result(tx: &mut Tx<'_>) -> Epoch {
        let (writes, outputs) = tx.take();
        let mut by_partition: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
        for o in outputs {
            by_partition
                .entry(o.partition)
                .or_default()
                .push(o.payload.unwrap());
        }
        (writes, by_partition)
    }

    #[test]
    fn lanes_end_where_one_thread_applying_every_event_ends() {
        let base = Sorted::default();
        let mut serial = Tx::new(&base);
        for m in &messages() {
            apply_one(&mut serial, m).unwrap();
        }
        let expected = result(&mut serial);
        for lanes in [1, 2, 3, 8] {
            let mut l = Lanes::new(&base, lanes);
            // In runs of 7: a partition stays on the lane it was first given.
            for run in messages().chunks(7) {
                l.apply(
                    run,
                    |m| m.0,
                    |tx, _, msgs| msgs.iter().try_for_each(|m| apply_one(tx, m)),
                )
                .unwrap();
            }
            assert_eq!(result(l.merged()), expected, "{lanes} lanes");
            // And all at once, as the driver hands an epoch.
            l.apply(
                &messages(),
                |m| m.0,
                |tx, _, msgs| msgs.iter().try_for_each(|m| apply_one(tx, m)),
            )
            .unwrap();
            assert_eq!(result(l.merged()), expected, "{lanes} lanes, one run");
        }
    }

    /// The partitions each thread applied, in one call.
    fn threads_of(l: &mut Lanes<'_>, run: &[Msg]) -> Vec<std::collections::BTreeSet<i32>> {
        let by_thread = Mutex::new(std::collections::HashMap::new());
        l.apply(
            run,
            |m| m.0,
            |_, _, msgs| {
                let mut map = by_thread.lock().unwrap();
                let mine: &mut std::collections::BTreeSet<i32> =
                    map.entry(std::thread::current().id()).or_default();
                mine.extend(msgs.iter().map(|m| m.0));
                Ok(())
            },
        )
        .unwrap();
        let mut sets: Vec<_> = by_thread.into_inner().unwrap().into_values().collect();
        sets.sort();
        sets
    }

    #[test]
    fn partitions_are_shared_out_by_their_messages_one_thread_per_busy_lane() {
        let base = Sorted::default();
        // Partition 0 has as many messages as 1, 2 and 3 together.
        let run: Vec<Msg> = [(0, 30), (1, 10), (2, 10), (3, 10)]
            .iter()
            .flat_map(|&(p, n)| (0..n).map(move |i| (p, i)))
            .collect();
        let mut l = Lanes::new(&base, 2);
        assert_eq!(threads_of(&mut l, &run), vec![[0].into(), [1, 2, 3].into()]);
        // Within the epoch a partition stays on its lane, however many messages come.
        let more: Vec<Msg> = (0..50).map(|i| (1, i)).chain([(0, 0), (4, 0)]).collect();
        let sets = threads_of(&mut l, &more);
        assert_eq!(sets.len(), 2);
        assert!(
            sets.iter().any(|s| s.contains(&1) && !s.contains(&0)),
            "{sets:?}"
        );
        // The next epoch shares them out afresh: 1 is now the busiest.
        l.merged();
        let sets = threads_of(&mut l, &more);
        assert_eq!(sets, vec![[0, 4].into(), [1].into()]);
        // One lane, or one partition: no other thread.
        let mut one = Lanes::new(&base, 1);
        assert_eq!(threads_of(&mut one, &run).len(), 1);
        assert_eq!(threads_of(&mut l, &run[..30]).len(), 1);
        // More lanes than partitions: one thread per partition.
        let mut eight = Lanes::new(&base, 8);
        assert_eq!(threads_of(&mut eight, &run).len(), 4);
    }

    #[test]
    fn an_error_in_one_lane_is_returned_after_every_lane_stopped_and_discard_empties_them() {
        let base = Sorted::default();
        let mut l = Lanes::new(&base, 2);
        let applied = Mutex::new(0);
        let err = l
            .apply(
                &messages(),
                |m| m.0,
                |tx, times, msgs| {
                    for m in msgs {
                        if m.0 == 3 {
                            return Err(ReconcilerError::Misrouted(format!("value {}", m.1)));
                        }
                        apply_one(tx, m)?;
                        times.push(SystemTime::UNIX_EPOCH);
                        *applied.lock().unwrap() += 1;
                    }
                    Ok(())
                },
            )
            .unwrap_err();
        // The second lane (partitions 1 and 3) stopped at partition 3's first message, value
        // 4, after partition 1's first; the first lane applied all of 0, 2 and 4.
        assert!(err.to_string().contains("value 4"), "{err}");
        assert_eq!(*applied.lock().unwrap(), 37);
        assert_eq!(l.take_ingest_times().count(), 37);
        l.discard();
        let (writes, outputs) = l.merged().take();
        assert!(writes.is_empty() && outputs.is_empty());
    }
}
