//! Repartition messages sent in batches: the messages one epoch sends one partition of a
//! repartition topic go out as one Kafka message (`ponte.reconciler.v1.RepartitionBatch`)
//! instead of one each, and are applied one by one where they arrive, as if sent alone.
//!
//! An epoch's repartition messages were 1.49 of the 4.86 messages the reconciler produced per
//! input record, and 1.49 of the 2.49 it consumed (docs/benchmarks.md): each one handed to
//! librdkafka, stored by the broker, fetched, and given its own `BorrowedMessage`. As a batch
//! they cost that once per partition and epoch.
//!
//! The wire format is the message's, written here without building it: field 1 holds each
//! entry's encoding (`CrosswalkChange`, `HealthByNis`, `MemberOutcomes`), field 2 the Kafka
//! key the entry would have had alone, in the same order. Each entry goes to the partition
//! librdkafka's default partitioner gives its key ([`ponte_bus::partition::of_key`]), so a
//! batch holds only keys of its partition, as the topics the adapters fill.
use std::collections::BTreeMap;

use prost::encoding::{
    DecodeContext, WireType, decode_key, decode_varint, encode_key, encode_varint,
};

use super::OutputKind;

/// True when a repartition topic's message with this `ponte-event-type` header is a batch
/// (as [`OutputKind::event_type`] names them).
/// Messages without the header are single entries, as instances before batches sent them.
pub fn is_batch(event_type: Option<&[u8]>) -> bool {
    event_type.is_some_and(|t| t.ends_with(b"_batch"))
}

/// A batch is sent once its entries reach this many bytes, well under the broker's default
/// largest message (1 MiB, `message.max.bytes`); the epoch's last batch of each partition is
/// sent with the epoch.
const BATCH_BYTES: usize = 256 * 1024;

/// One batch being filled: the entries' field and the keys' field, joined when sent.
#[derive(Debug, Default)]
struct Open {
    entries: Vec<u8>,
    keys: Vec<u8>,
    count: usize,
}

impl Open {
    fn push(&mut self, key: &[u8], entry: &[u8]) {
        encode_key(1, WireType::LengthDelimited, &mut self.entries);
        encode_varint(entry.len() as u64, &mut self.entries);
        self.entries.extend_from_slice(entry);
        encode_key(2, WireType::LengthDelimited, &mut self.keys);
        encode_varint(key.len() as u64, &mut self.keys);
        self.keys.extend_from_slice(key);
        self.count += 1;
    }

    fn bytes(&self) -> usize {
        self.entries.len() + self.keys.len()
    }

    fn into_batch(self, kind: OutputKind, partition: i32) -> Batch {
        let Open {
            mut entries,
            keys,
            count,
        } = self;
        entries.extend_from_slice(&keys);
        Batch {
            kind,
            partition,
            payload: entries,
            entries: count,
        }
    }
}

/// A batch ready to send: `payload` is a `RepartitionBatch` of `entries` entries for
/// `partition` of `kind`'s topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub kind: OutputKind,
    pub partition: i32,
    pub payload: Vec<u8>,
    pub entries: usize,
}

/// The repartition messages of an epoch, gathered into batches per topic and partition in
/// the order they were emitted.
#[derive(Debug)]
pub struct Batcher {
    partitions: i32,
    open: BTreeMap<(OutputKind, i32), Open>,
    full: Vec<Batch>,
}

impl Batcher {
    /// For repartition topics of `partitions` partitions (the inputs' count).
    pub fn new(partitions: i32) -> Self {
        Self {
            partitions,
            open: BTreeMap::new(),
            full: Vec::new(),
        }
    }

    /// Adds a message of `kind` keyed `key` to the batch of its key's partition.
    pub fn push(&mut self, kind: OutputKind, key: &[u8], entry: &[u8]) {
        let partition = ponte_bus::partition::of_key(key, self.partitions);
        let open = self.open.entry((kind, partition)).or_default();
        open.push(key, entry);
        if open.bytes() >= BATCH_BYTES
            && let Some(open) = self.open.remove(&(kind, partition))
        {
            self.full.push(open.into_batch(kind, partition));
        }
    }

    /// Every batch, in the order each partition's filled (a partition's batches in order).
    pub fn finish(self) -> Vec<Batch> {
        let mut batches = self.full;
        batches.extend(
            self.open
                .into_iter()
                .map(|((kind, partition), open)| open.into_batch(kind, partition)),
        );
        batches
    }
}

/// A batch's entries and their keys, in order, borrowed from its payload.
#[derive(Debug, PartialEq, Eq)]
pub struct Entries<'m> {
    pub keys: Vec<&'m [u8]>,
    pub entries: Vec<&'m [u8]>,
}

/// Reads a `RepartitionBatch` without copying its entries. Fields it does not know are
/// skipped (a newer writer's); a batch whose framing is broken or whose keys do not match its
/// entries one for one is refused whole.
pub fn entries_of(payload: &[u8]) -> Result<Entries<'_>, String> {
    let mut out = Entries {
        keys: Vec::new(),
        entries: Vec::new(),
    };
    fields_of(payload, |tag, field| {
        if tag == 1 {
            out.entries.push(field);
        } else {
            out.keys.push(field);
        }
    })?;
    if out.keys.len() != out.entries.len() {
        return Err(format!(
            "{} entries and {} keys",
            out.entries.len(),
            out.keys.len()
        ));
    }
    Ok(out)
}

/// How many entries a batch holds, read without keeping them (1 for a batch that cannot be
/// read: it is one dead letter).
pub fn entries_in(payload: &[u8]) -> usize {
    let mut n = 0;
    fields_of(payload, |tag, _| n += usize::from(tag == 1)).map_or(1, |()| n.max(1))
}

/// Hands each entry (tag 1) and key (tag 2) of a `RepartitionBatch` to `f`, in order,
/// skipping fields it does not know.
fn fields_of<'m>(payload: &'m [u8], mut f: impl FnMut(u32, &'m [u8])) -> Result<(), String> {
    let mut buf = payload;
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf).map_err(|e| e.to_string())?;
        if matches!(tag, 1 | 2) && wire_type == WireType::LengthDelimited {
            let len = decode_varint(&mut buf).map_err(|e| e.to_string())?;
            let len = usize::try_from(len)
                .ok()
                .filter(|l| *l <= buf.len())
                .ok_or_else(|| format!("field {tag} runs past the end of the batch"))?;
            let (field, rest) = buf.split_at(len);
            buf = rest;
            f(tag, field);
        } else {
            prost::encoding::skip_field(wire_type, tag, &mut buf, DecodeContext::default())
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn a_batch_reads_back_as_its_entries_in_order_and_as_the_proto_message() {
        let mut b = Batcher::new(1);
        b.push(OutputKind::Member, b"fam-1", b"first");
        b.push(OutputKind::Member, b"fam-2", b"");
        b.push(OutputKind::Member, b"fam-1", b"third");
        let batches = b.finish();
        assert_eq!(batches.len(), 1);
        let batch = &batches[0];
        assert_eq!(
            (batch.kind, batch.partition, batch.entries),
            (OutputKind::Member, 0, 3)
        );
        let read = entries_of(&batch.payload).unwrap();
        assert_eq!(read.entries, vec![&b"first"[..], b"", b"third"]);
        assert_eq!(entries_in(&batch.payload), 3);
        assert_eq!(read.keys, vec![&b"fam-1"[..], b"fam-2", b"fam-1"]);
        let msg = ponte_proto::reconciler::v1::RepartitionBatch::decode(batch.payload.as_slice())
            .unwrap();
        assert_eq!(
            msg.entries,
            vec![b"first".to_vec(), Vec::new(), b"third".to_vec()]
        );
    }

    #[test]
    fn entries_go_to_their_keys_partition_per_topic() {
        let mut b = Batcher::new(6);
        let keys: Vec<String> = (0..60).map(|i| format!("{:011}", 12_345_678 + i)).collect();
        for k in &keys {
            b.push(OutputKind::HealthByNis, k.as_bytes(), k.as_bytes());
            b.push(OutputKind::Member, k.as_bytes(), b"m");
        }
        let batches = b.finish();
        let mut seen = 0;
        for batch in &batches {
            let read = entries_of(&batch.payload).unwrap();
            for key in &read.keys {
                assert_eq!(ponte_bus::partition::of_key(key, 6), batch.partition);
            }
            if batch.kind == OutputKind::HealthByNis {
                // Each entry is the key it was pushed with, in the order pushed.
                let order: Vec<&[u8]> = keys
                    .iter()
                    .map(|k| k.as_bytes())
                    .filter(|k| ponte_bus::partition::of_key(k, 6) == batch.partition)
                    .collect();
                assert_eq!(read.entries, order);
            }
            seen += batch.entries;
        }
        assert_eq!(seen, 120);
        assert!(
            batches.len() > 2 && batches.len() <= 12,
            "{}",
            batches.len()
        );
    }

    #[test]
    fn a_batch_is_sent_once_it_reaches_its_size_and_the_rest_at_the_end() {
        let mut b = Batcher::new(1);
        let entry = vec![7u8; 1000];
        let n = 2 * BATCH_BYTES / 1000 + 10;
        for _ in 0..n {
            b.push(OutputKind::Crosswalk, b"12345678901", &entry);
        }
        let batches = b.finish();
        assert_eq!(batches.len(), 3);
        assert!(
            batches
                .iter()
                .all(|x| x.payload.len() <= BATCH_BYTES + 1100)
        );
        assert_eq!(batches.iter().map(|x| x.entries).sum::<usize>(), n);
    }

    #[test]
    fn a_broken_batch_is_refused_whole_and_unknown_fields_are_skipped() {
        let mut b = Batcher::new(1);
        b.push(OutputKind::Crosswalk, b"1", b"entry");
        let good = b.finish().remove(0).payload;
        // Cut in the middle of an entry.
        assert!(entries_of(&good[..4]).is_err());
        assert!(entries_of(b"\xff\xff\xff").is_err());
        // Counted as one event, the dead letter it becomes.
        assert_eq!(entries_in(b"\xff\xff\xff"), 1);
        // A key without its entry.
        let mut unmatched = good.clone();
        unmatched.extend_from_slice(&[0x12, 0x01, b'2']);
        assert_eq!(entries_of(&unmatched).unwrap_err(), "1 entries and 2 keys");
        // A field a newer writer added (3, a varint) is skipped.
        let mut newer = good.clone();
        newer.extend_from_slice(&[0x18, 0x2a]);
        assert_eq!(entries_of(&newer).unwrap().entries, vec![&b"entry"[..]]);
        assert!(is_batch(Some(b"member_batch")));
        assert!(!is_batch(Some(b"member")) && !is_batch(None));
    }
}
