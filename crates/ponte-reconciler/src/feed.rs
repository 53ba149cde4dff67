//! The read model fed by this instance's own epochs.
//!
//! Every instance's read model holds the views of every partition ([`crate::readmodel`]). The
//! changes of the partitions this instance owns it has just published itself: reading them back
//! from the changes topic fetched and decoded each view (about 2.6 KiB) a second time, 1.2
//! messages consumed per input at 10 M people (docs/benchmarks.md, issue 15). So once an epoch
//! is committed, its changes go to the read model from memory, each with the offset the broker
//! gave it, and the read model stops consuming the partitions they cover.
//!
//! What makes that safe: the changes topic is co-partitioned with the inputs, and a change is
//! published in the partition of the input that produced it ([`crate::epoch::Routes`]), so the
//! owner of input partition *P* is the only writer of changes partition *P* (another instance
//! writing to it is fenced: its epochs are aborted and never read). Per partition, the read
//! model is either
//!
//! - **topic**: consuming the partition, as every partition starts; or
//! - **epochs**: applying this instance's committed changes of it, the partition unassigned.
//!
//! A partition goes from topic to epochs on a batch of its changes starting at offset *a* when
//! this instance owns it and the consumer's position is at or past *a* — everything before the
//! batch was consumed (an earlier owner's changes, and this instance's own up to then); the
//! batch's changes from the position on are applied. It goes back to topic, consumed from the
//! next offset the read model holds, when this instance no longer owns it (the write path's
//! assignment, published on every change and emptied when the write path stops) or when a batch
//! was lost (the batches are numbered; one that could not be handed over in time is dropped
//! rather than hold up the write path for ever). Either way nothing is skipped: the changes
//! topic holds every committed change, and the read model resumes at the offset it holds.
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::readmodel::ChangeRecord;

/// Committed epochs handed over at most this many ahead of the read model: a batch is an
/// epoch's changes (about 2,500 views, 6.4 MiB, at 10 M people), and the write path waits for
/// room rather than buffer the read model's lag in memory.
const BATCHES_AHEAD: usize = 2;

/// How long the write path waits for room before it drops a batch (the read model then reads
/// those partitions from the topic until it catches up): a read model that stopped applying
/// must not stop the write path.
const HAND_OVER_WAIT: Duration = Duration::from_secs(10);

/// One committed epoch's changes, in the order published, with the offsets they were given.
#[derive(Debug)]
pub struct Batch {
    /// Numbered from 0 by the write path, dropped batches included.
    pub(crate) seq: u64,
    /// When the epoch's messages were sent, milliseconds since the Unix epoch.
    pub(crate) sent_ms: i64,
    pub(crate) records: Vec<ChangeRecord>,
}

/// The write path's end: hands committed changes over and says which partitions it owns.
#[derive(Debug)]
pub struct FeedSender {
    batches: mpsc::Sender<Batch>,
    owned: watch::Sender<BTreeSet<i32>>,
    seq: u64,
}

/// The read model's end.
#[derive(Debug)]
pub struct FeedReceiver {
    pub(crate) batches: mpsc::Receiver<Batch>,
    pub(crate) owned: watch::Receiver<BTreeSet<i32>>,
}

/// A feed from the write path to the read model.
pub fn channel() -> (FeedSender, FeedReceiver) {
    let (batches, batches_rx) = mpsc::channel(BATCHES_AHEAD);
    let (owned, owned_rx) = watch::channel(BTreeSet::new());
    (
        FeedSender {
            batches,
            owned,
            seq: 0,
        },
        FeedReceiver {
            batches: batches_rx,
            owned: owned_rx,
        },
    )
}

impl FeedSender {
    /// Hands a committed epoch's changes over, waiting for room at most [`HAND_OVER_WAIT`]; a
    /// batch not taken by then (or with the read model gone) is dropped and counted.
    pub async fn send(&mut self, sent_ms: i64, records: Vec<ChangeRecord>) {
        if records.is_empty() {
            return;
        }
        let seq = self.seq;
        self.seq += 1;
        let batch = Batch {
            seq,
            sent_ms,
            records,
        };
        if let Err(e) = self.batches.send_timeout(batch, HAND_OVER_WAIT).await {
            let why = match e {
                mpsc::error::SendTimeoutError::Timeout(_) => "timeout",
                mpsc::error::SendTimeoutError::Closed(_) => "closed",
            };
            metrics::counter!("ponte_reconciler_read_model_batches_dropped_total", "why" => why)
                .increment(1);
            tracing::warn!(
                why,
                "an epoch's changes were not handed to the read model; it reads them from the changes topic"
            );
        }
    }

    /// The input partitions the write path owns now.
    pub fn owned(&self, partitions: &BTreeSet<i32>) {
        self.owned.send_if_modified(|held| {
            let changed = held != partitions;
            if changed {
                held.clone_from(partitions);
            }
            changed
        });
    }
}

impl Drop for FeedSender {
    /// The write path stopped: it owns nothing any more.
    fn drop(&mut self) {
        self.owned.send_replace(BTreeSet::new());
    }
}

/// What the read model does with a batch ([`Routing::batch`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Routed {
    /// The changes to apply, in order.
    pub(crate) apply: Vec<ChangeRecord>,
    /// Partitions now consumed from the topic again (to assign at the offset held).
    pub(crate) to_topic: Vec<i32>,
    /// Per partition now taken from the epochs (to unassign): the position the consumer had
    /// passed.
    pub(crate) passed: BTreeMap<i32, i64>,
}

impl Routed {
    /// The partitions now taken from the epochs.
    pub(crate) fn to_epochs(&self) -> Vec<i32> {
        self.passed.keys().copied().collect()
    }
}

/// Which partitions the read model takes from the epochs (the others from the topic).
#[derive(Debug, Default)]
pub(crate) struct Routing {
    epochs: BTreeSet<i32>,
    expected: u64,
}

impl Routing {
    /// Whether `partition` is taken from the epochs (its consumed records are not applied).
    pub(crate) fn takes_from_epochs(&self, partition: i32) -> bool {
        self.epochs.contains(&partition)
    }

    /// How many partitions are taken from the epochs.
    pub(crate) fn epoch_partitions(&self) -> usize {
        self.epochs.len()
    }

    /// A batch of committed changes: what of it to apply, and which partitions change hands.
    /// `owned` is the write path's latest assignment, `position` the consumer's position in a
    /// partition read from the topic (the next offset to read; past transaction markers).
    pub(crate) fn batch(
        &mut self,
        batch: Batch,
        owned: &BTreeSet<i32>,
        position: impl Fn(i32) -> Option<i64>,
    ) -> Routed {
        let mut routed = Routed::default();
        if batch.seq != self.expected {
            // A batch was dropped: what it held is only in the topic now.
            routed.to_topic = std::mem::take(&mut self.epochs).into_iter().collect();
        }
        self.expected = batch.seq + 1;
        // The first offset of each partition in the batch.
        let mut firsts: BTreeMap<i32, i64> = BTreeMap::new();
        for (p, offset, _, _) in &batch.records {
            let first = firsts.entry(*p).or_insert(*offset);
            *first = (*first).min(*offset);
        }
        for (p, first) in firsts {
            if self.epochs.contains(&p) || !owned.contains(&p) {
                continue;
            }
            if let Some(at) = position(p).filter(|at| *at >= first) {
                self.epochs.insert(p);
                routed.passed.insert(p, at);
            }
        }
        routed.apply = batch
            .records
            .into_iter()
            .filter(|(p, offset, _, _)| {
                self.epochs.contains(p) && routed.passed.get(p).is_none_or(|at| offset >= at)
            })
            .collect();
        routed
    }

    /// The write path's assignment changed: the partitions it no longer owns are read from the
    /// topic again (returned).
    pub(crate) fn owned(&mut self, owned: &BTreeSet<i32>) -> Vec<i32> {
        let gone: Vec<i32> = self.epochs.difference(owned).copied().collect();
        for p in &gone {
            self.epochs.remove(p);
        }
        gone
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rec(p: i32, offset: i64) -> ChangeRecord {
        (p, offset, format!("person:{p}-{offset}"), Some(vec![1]))
    }

    fn batch(seq: u64, records: &[(i32, i64)]) -> Batch {
        Batch {
            seq,
            sent_ms: 0,
            records: records.iter().map(|(p, o)| rec(*p, *o)).collect(),
        }
    }

    fn owned(ps: &[i32]) -> BTreeSet<i32> {
        ps.iter().copied().collect()
    }

    fn offsets(r: &Routed) -> Vec<(i32, i64)> {
        r.apply.iter().map(|(p, o, _, _)| (*p, *o)).collect()
    }

    #[test]
    fn a_partition_is_taken_from_the_epochs_once_the_consumer_passed_the_batch_start() {
        let mut r = Routing::default();
        // The consumer is before the batch: the topic will deliver it.
        let routed = r.batch(batch(0, &[(0, 10), (0, 11)]), &owned(&[0]), |_| Some(8));
        assert_eq!(routed, Routed::default());
        assert!(!r.takes_from_epochs(0));
        // Caught up to the next batch's start (past the marker at 12): taken whole.
        let routed = r.batch(batch(1, &[(0, 13), (0, 14)]), &owned(&[0]), |_| Some(13));
        assert_eq!(offsets(&routed), vec![(0, 13), (0, 14)]);
        assert_eq!(routed.to_epochs(), vec![0]);
        assert!(r.takes_from_epochs(0));
        // From then on every batch is applied, whatever the consumer's position.
        let routed = r.batch(batch(2, &[(0, 16)]), &owned(&[0]), |_| None);
        assert_eq!(offsets(&routed), vec![(0, 16)]);
        assert!(routed.to_epochs().is_empty() && routed.to_topic.is_empty());
    }

    #[test]
    fn what_the_consumer_already_applied_of_a_batch_is_not_applied_again() {
        let mut r = Routing::default();
        let routed = r.batch(batch(0, &[(0, 5), (0, 6), (0, 7)]), &owned(&[0]), |_| {
            Some(7)
        });
        assert_eq!(offsets(&routed), vec![(0, 7)]);
        assert_eq!(routed.passed.get(&0), Some(&7));
        // Consumed all of it and the marker after it: nothing to apply, taken all the same.
        let mut r = Routing::default();
        let routed = r.batch(batch(0, &[(0, 5), (0, 6)]), &owned(&[0]), |_| Some(8));
        assert!(routed.apply.is_empty());
        assert_eq!(routed.to_epochs(), vec![0]);
    }

    #[test]
    fn partitions_not_owned_are_left_to_the_topic() {
        let mut r = Routing::default();
        let routed = r.batch(batch(0, &[(0, 5), (1, 5)]), &owned(&[1]), |_| Some(5));
        assert_eq!(offsets(&routed), vec![(1, 5)]);
        assert!(!r.takes_from_epochs(0) && r.takes_from_epochs(1));
    }

    #[test]
    fn a_partition_no_longer_owned_goes_back_to_the_topic() {
        let mut r = Routing::default();
        r.batch(batch(0, &[(0, 5), (1, 5)]), &owned(&[0, 1]), |_| Some(5));
        assert_eq!(r.epoch_partitions(), 2);
        assert_eq!(r.owned(&owned(&[1, 2])), vec![0]);
        assert!(!r.takes_from_epochs(0) && r.takes_from_epochs(1));
        // A batch of it committed before the revocation is left to the topic.
        let routed = r.batch(batch(1, &[(0, 7), (1, 7)]), &owned(&[1, 2]), |_| Some(7));
        assert_eq!(offsets(&routed), vec![(1, 7)]);
    }

    #[test]
    fn after_a_dropped_batch_every_partition_is_read_from_the_topic_until_caught_up() {
        let mut r = Routing::default();
        r.batch(batch(0, &[(0, 5), (1, 5)]), &owned(&[0, 1]), |_| Some(5));
        // Batch 1 was dropped: batch 2 is not applied, and both partitions go back.
        let routed = r.batch(batch(2, &[(0, 9), (1, 9)]), &owned(&[0, 1]), |_| Some(7));
        assert!(routed.apply.is_empty());
        assert_eq!(routed.to_topic, vec![0, 1]);
        assert_eq!(r.epoch_partitions(), 0);
        // Caught up again: taken from the epochs once more.
        let routed = r.batch(batch(3, &[(0, 11)]), &owned(&[0, 1]), |_| Some(11));
        assert_eq!(offsets(&routed), vec![(0, 11)]);
        assert_eq!(routed.to_epochs(), vec![0]);
    }

    #[tokio::test]
    async fn the_sender_numbers_batches_and_empties_its_assignment_when_dropped() {
        let (mut tx, mut rx) = channel();
        tx.owned(&owned(&[3]));
        tx.send(1, vec![rec(3, 1)]).await;
        tx.send(2, Vec::new()).await;
        tx.send(3, vec![rec(3, 2)]).await;
        assert_eq!(*rx.owned.borrow_and_update(), owned(&[3]));
        let seqs = [
            rx.batches.recv().await.unwrap().seq,
            rx.batches.recv().await.unwrap().seq,
        ];
        assert_eq!(seqs, [0, 1]);
        drop(tx);
        assert!(rx.owned.borrow_and_update().is_empty());
        assert!(rx.batches.recv().await.is_none());
    }
}
