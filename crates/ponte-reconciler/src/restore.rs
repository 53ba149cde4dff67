//! Bringing a partition's local state up to its changelog.
//!
//! The changelog topic is the state's source of truth: every state write of an epoch goes to
//! it in the epoch's Kafka transaction, to the changelog partition of the same number as the
//! input partition the state belongs to. The local store is a cache of it, written without a
//! write-ahead log after each committed transaction ([`ponte_store::Durability::Rebuildable`]):
//! after a crash it holds a prefix of its commits, each of which recorded how far into the
//! changelog it reaches (the partition's *marker*). So on every assignment a partition is made
//! current by reading its changelog from the marker to the end, with `read_committed` (aborted
//! transactions are skipped): after a clean stop that is nothing, after `kill -9` it is the
//! epochs the store had not flushed, after another instance owned the partition it is what that
//! instance wrote. With no usable marker — a new or lost disk, a changelog recreated, or a
//! marker too old to trust the changelog's tombstones — the partition is dropped and rebuilt
//! from the changelog's start.
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use ponte_bus::KafkaConfig;
use ponte_store::Store;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::topology::{
    Rederive, Topology, index_is_whole, index_marker, index_marker_key, index_prefixes,
    key_partition, partition_prefix,
};
use crate::{ReconcilerError, startup};

/// A marker older than this is not used: the changelog is compacted, and a tombstone is
/// removed `delete.retention.ms` (24 h by default) after it was written, so a store that has
/// been away longer could miss a deletion. Half of the default, to be safe.
const MARKER_MAX_AGE: Duration = Duration::from_secs(12 * 3600);

/// Changelog keys of consumed offsets, written by versions before epochs committed offsets in
/// their Kafka transaction: skipped.
const LEGACY_OFFSET_KEY: &[u8] = b"offset/";

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The restores running in this process, by the time each began (seconds since the epoch),
/// exported as two gauges: `ponte_reconciler_restoring_partitions`, how many, and
/// `ponte_reconciler_restore_started_timestamp_seconds`, when the oldest began (0 when none), so
/// that `time() - ponte_reconciler_restore_started_timestamp_seconds` is how long it has run.
static RESTORES_RUNNING: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// One partition's restore in [`RESTORES_RUNNING`] and its gauges, from its start until the
/// guard is dropped: however the restore ends (done, an error returned early, a panic).
struct Restoring {
    started: u64,
}

impl Restoring {
    fn start() -> Self {
        let started = unix_seconds();
        Self::change(|running| running.push(started));
        Self { started }
    }

    fn change(f: impl FnOnce(&mut Vec<u64>)) {
        let mut running = RESTORES_RUNNING
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(&mut running);
        metrics::gauge!("ponte_reconciler_restoring_partitions").set(running.len() as f64);
        metrics::gauge!("ponte_reconciler_restore_started_timestamp_seconds")
            .set(running.iter().min().map_or(0.0, |&t| t as f64));
    }
}

impl Drop for Restoring {
    fn drop(&mut self) {
        let started = self.started;
        Self::change(|running| {
            if let Some(i) = running.iter().position(|&t| t == started) {
                running.swap_remove(i);
            }
        });
    }
}

/// Where partition `p`'s local state stands in its changelog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// The changelog offset after the last entry the local state holds.
    pub offset: i64,
    /// When it was written (seconds since the epoch).
    pub written: u64,
}

impl Marker {
    pub fn now(offset: i64) -> Self {
        Self {
            offset,
            written: unix_seconds(),
        }
    }

    pub fn key(p: i32) -> Vec<u8> {
        format!("meta/changelog/{p}").into_bytes()
    }

    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.offset.to_be_bytes());
        b[8..].copy_from_slice(&self.written.to_be_bytes());
        b
    }

    /// The marker of `p`; one of another layout reads as absent (the partition is rebuilt).
    pub fn read(store: &Store, p: i32) -> Result<Option<Self>, ReconcilerError> {
        Ok(store.get(&Self::key(p))?.and_then(|b| {
            let b: [u8; 16] = b.as_slice().try_into().ok()?;
            Some(Self {
                offset: i64::from_be_bytes(b[..8].try_into().ok()?),
                written: u64::from_be_bytes(b[8..].try_into().ok()?),
            })
        }))
    }

    fn age(&self) -> Duration {
        Duration::from_secs(unix_seconds().saturating_sub(self.written))
    }
}

/// `PONTE_TEST_RESTORE_DELAY_MS`, for tests only: every partition's restore first waits this
/// long (a restore of a state far larger than a test can build).
fn test_delay() -> Result<Option<Duration>, ReconcilerError> {
    static DELAY: OnceLock<Result<Option<Duration>, String>> = OnceLock::new();
    DELAY
        .get_or_init(|| match std::env::var("PONTE_TEST_RESTORE_DELAY_MS") {
            Err(_) => Ok(None),
            Ok(ms) => {
                let ms: u64 = ms
                    .parse()
                    .map_err(|_| format!("PONTE_TEST_RESTORE_DELAY_MS: {ms:?} is not a number"))?;
                tracing::warn!(
                    ms,
                    "test restore delay armed: every partition's restore waits this long first"
                );
                Ok(Some(Duration::from_millis(ms)))
            }
        })
        .clone()
        .map_err(startup)
}

/// The error of a restore stopped because its partition was revoked.
fn no_longer_wanted(p: i32) -> ReconcilerError {
    startup(format!(
        "restore of partition {p} stopped: no longer assigned"
    ))
}

/// Makes the local state of partition `p` the changelog's latest (see the module docs). Stops
/// with an error as soon as `still_wanted` turns false (the partition was revoked meanwhile):
/// what it wrote until then is kept, and the next restore goes on from the marker, which is
/// written only when a restore ends.
pub fn restore_partition(
    store: &Store,
    kafka: &KafkaConfig,
    changelog: &str,
    p: i32,
    still_wanted: &dyn Fn() -> bool,
) -> Result<(), ReconcilerError> {
    let _restoring = Restoring::start();
    if let Some(delay) = test_delay()? {
        let until = Instant::now() + delay;
        while Instant::now() < until {
            if !still_wanted() {
                return Err(no_longer_wanted(p));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mut cfg = kafka.client_config("ponte-reconciler-restore");
    cfg.set("enable.auto.commit", "false")
        .set("group.id", "ponte-reconciler-restore")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        // The end of the partition is known when a fetch comes back empty: without this the
        // broker holds an empty fetch for 500 ms, and every restore waited that long per
        // partition (a restart with 3 partitions took 4.5 s to be ready at 1 M people).
        .set("fetch.wait.max.ms", "10");
    let consumer: BaseConsumer<ponte_bus::consume::ReadToEnd> = cfg
        .create_with_context(ponte_bus::consume::ReadToEnd)
        .map_err(|e| startup(format!("restore consumer: {e}")))?;
    let timeout = Duration::from_secs(30);
    let (low, high) = crate::while_topic_settles(
        &format!("changelog {changelog} partition {p}"),
        || !still_wanted(),
        || {
            // Ask for the topic's metadata on every attempt: right after a broker restart its
            // first answer may lack the partition, and the client would go on answering
            // "unknown partition" from that cached answer until its next periodic refresh
            // (minutes) — the reconciler then gave up preparing the partition and stopped
            // (issue 13, a broker-restart test failing under load).
            consumer
                .fetch_metadata(Some(changelog), timeout)
                .map_err(|e| e.to_string())?;
            consumer
                .fetch_watermarks(changelog, p, timeout)
                .map_err(|e| e.to_string())
        },
    )?
    .ok_or_else(|| no_longer_wanted(p))?;
    let marker = Marker::read(store, p)?;
    let usable = marker.filter(|m| m.offset >= low && m.offset <= high && m.age() < MARKER_MAX_AGE);
    if let Some(m) = usable
        && m.offset == high
    {
        tracing::info!(
            partition = p,
            changelog_end = high,
            "local state is current"
        );
        return Ok(());
    }
    let started = Instant::now();
    let from = match usable {
        Some(m) => {
            tracing::info!(
                partition = p,
                from = m.offset,
                changelog_end = high,
                "reading the changelog's tail into the local state"
            );
            m.offset
        }
        None => {
            tracing::info!(
                partition = p,
                local = ?marker.map(|m| m.offset),
                changelog_start = low,
                changelog_end = high,
                "local state missing, stale or too old; rebuilding the partition from the changelog"
            );
            let mut w = store.batch();
            w.delete_prefix(&partition_prefix(p));
            w.delete(&Marker::key(p));
            w.delete(&index_marker_key(p));
            w.commit()?;
            low
        }
    };
    // The index is derived along (below) where it is whole at the restore's start: a rebuild
    // starts from nothing, a tail from the store, whose index an epoch of this version marked
    // at the same offset (another build's epochs leave the markers apart).
    let index_whole_at_start = match usable {
        None => true,
        Some(m) => index_is_whole(store.get(&index_marker_key(p))?.as_deref(), m.offset),
    };

    let mut restored = 0u64;
    let mut next = from;
    if high > from {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(changelog, p, Offset::Offset(from))
            .map_err(startup)?;
        consumer
            .assign(&tpl)
            .map_err(|e| startup(format!("changelog assign: {e}")))?;
        let mut w = store.batch();
        let mut index = Rederive::new(p);
        let deadline = Instant::now() + Duration::from_secs(3600);
        // To the end of what is committed: librdkafka signals the partition's end (its last
        // stable offset under read_committed) once it has fetched past the last committed
        // entry and the transaction markers after it.
        loop {
            if Instant::now() > deadline {
                return Err(startup("changelog restore did not finish in an hour"));
            }
            if !still_wanted() {
                return Err(no_longer_wanted(p));
            }
            let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let msg = match msg {
                Ok(m) => m,
                Err(KafkaError::PartitionEOF(_)) => break,
                Err(e) => return Err(startup(format!("changelog read: {e}"))),
            };
            next = msg.offset() + 1;
            let key = msg.key().unwrap_or_default();
            if key_partition(key) == Some(p) {
                index.entry(store, key, msg.payload())?;
                match msg.payload() {
                    Some(v) => w.put(key, v),
                    None => w.delete(key),
                }
                restored += 1;
            } else if !key.starts_with(LEGACY_OFFSET_KEY) {
                tracing::warn!(
                    partition = p,
                    offset = msg.offset(),
                    "changelog entry of another partition ignored"
                );
            }
            if w.len() >= 10_000 {
                with_index(&mut w, &mut index, store, p)?;
                std::mem::replace(&mut w, store.batch()).commit()?;
            }
        }
        // The marker goes with the last entries: a crash mid-restore resumes from where the
        // store stopped.
        with_index(&mut w, &mut index, store, p)?;
        let end = next.max(from);
        w.put(&Marker::key(p), &Marker::now(end).encode());
        if index_whole_at_start && index.whole() {
            w.put(&index_marker_key(p), &index_marker(end));
        }
        w.commit()?;
    } else {
        let mut w = store.batch();
        w.put(&Marker::key(p), &Marker::now(high).encode());
        if index_whole_at_start {
            w.put(&index_marker_key(p), &index_marker(high));
        }
        w.commit()?;
    }
    metrics::counter!("ponte_reconciler_restored_entries_total").increment(restored);
    metrics::counter!("ponte_reconciler_partition_restores_total", "kind" => if usable.is_some() { "tail" } else { "full" }).increment(1);
    tracing::info!(
        partition = p,
        restored,
        seconds = started.elapsed().as_secs_f64(),
        "partition restored from the changelog"
    );
    Ok(())
}

/// Adds the index writes the batch's entries lead to ([`Rederive`]) to the batch, or, once an
/// entry did not say what the index holds of its person, unmarks the partition's index (built
/// again by [`ensure_index`]) in the same write.
fn with_index(
    w: &mut ponte_store::BatchWriter<'_>,
    index: &mut Rederive,
    store: &Store,
    p: i32,
) -> Result<(), ReconcilerError> {
    for (k, v) in index.finish_batch(store)? {
        match v {
            Some(v) => w.put(&k, &v),
            None => w.delete(&k),
        }
    }
    if !index.whole() {
        // Unmarked with the entries, so a crash before the restore ends leaves it unmarked.
        w.delete(&index_marker_key(p));
    }
    Ok(())
}

/// Builds partition `p`'s municipality index and outcome counts from its persons unless they
/// are marked whole at the partition's changelog position (`meta/index/<p>`): not after an
/// upgrade from a version without them, nor after such a version ran on the store, nor after a
/// restore that met a digest written by one. Runs after the partition's restore, before it is served; stops
/// as the restore does when the partition is revoked (the next assignment builds again). True
/// when it built.
pub fn ensure_index(
    store: &Store,
    topology: &Topology,
    p: i32,
    still_wanted: &dyn Fn() -> bool,
) -> Result<bool, ReconcilerError> {
    let changelog = Marker::read(store, p)?.map_or(0, |m| m.offset);
    if index_is_whole(store.get(&index_marker_key(p))?.as_deref(), changelog) {
        return Ok(false);
    }
    let started = Instant::now();
    tracing::info!(
        partition = p,
        "building the partition's municipality index and outcome counts from its persons"
    );
    let mut w = store.batch();
    for prefix in index_prefixes(p) {
        w.delete_prefix(&prefix);
    }
    w.commit()?;
    let persons = topology.build_index(store, p, &mut |writes| {
        if !still_wanted() {
            return Err(no_longer_wanted(p));
        }
        let mut w = store.batch();
        for (k, v) in writes {
            match v {
                Some(v) => w.put(&k, &v),
                None => w.delete(&k),
            }
        }
        w.commit()?;
        Ok(())
    })?;
    let mut w = store.batch();
    w.put(&index_marker_key(p), &index_marker(changelog));
    w.commit()?;
    metrics::counter!("ponte_reconciler_index_builds_total").increment(1);
    tracing::info!(
        partition = p,
        persons,
        seconds = started.elapsed().as_secs_f64(),
        "partition index built"
    );
    Ok(true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};

    use super::*;

    #[test]
    fn a_state_key_names_its_partition_and_nothing_else_does() {
        assert_eq!(key_partition(b"0003/p/123"), Some(3));
        assert_eq!(key_partition(b"0012/"), Some(12));
        assert_eq!(key_partition(b"offset/ponte.registry"), None);
        assert_eq!(key_partition(b"meta/changelog/3"), None);
        assert_eq!(key_partition(b"003/p"), None);
    }

    #[test]
    fn a_marker_reads_back_and_one_of_the_old_layout_reads_as_absent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), ponte_store::Durability::Rebuildable).unwrap();
        let m = Marker::now(42);
        let mut w = store.batch();
        w.put(&Marker::key(1), &m.encode());
        w.put(&Marker::key(2), &7i64.to_be_bytes());
        w.commit().unwrap();
        assert_eq!(Marker::read(&store, 1).unwrap(), Some(m));
        assert_eq!(Marker::read(&store, 2).unwrap(), None);
        assert_eq!(Marker::read(&store, 3).unwrap(), None);
    }

    /// A partition's index is built when it is not marked whole at the partition's changelog
    /// position — as after an older version, which keeps no index, ran epochs on the store —
    /// and not otherwise.
    #[test]
    fn an_index_not_marked_at_the_partitions_position_is_built_again() {
        use crate::topology::{Input, Tx, is_derived, partition_prefix};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), ponte_store::Durability::Process).unwrap();
        let topology = Topology::new(
            ponte_domain::rules::RuleSet::from_toml_str(
                "bolsa-familia-2023.toml",
                include_str!("../../../rules/bolsa-familia-2023.toml"),
            )
            .unwrap(),
            ponte_domain::period::Month::parse("2025-01").unwrap(),
            ponte_domain::period::Month::parse("2025-12").unwrap(),
        );
        // An epoch of this version: three children of partition 0 applied, the markers
        // written together.
        let mut tx = Tx::new(&store);
        tx.set_partition(0);
        for body in ["1234567000", "1234567001", "1234567002"] {
            let nis = ponte_domain::ids::Nis::with_check_digit(body).unwrap();
            let profile = ponte_proto::events::v1::Event {
                record_id: format!("registry:{nis}"),
                version: 1,
                record: Some(ponte_proto::events::v1::event::Record::PersonProfile(
                    ponte_proto::events::v1::PersonProfile {
                        nis: nis.as_str().into(),
                        family_id: "F-1".into(),
                        birth_date: "2017-03-10".into(),
                        sex: "M".into(),
                        municipality: "3550308".into(),
                        memberships: vec!["PBF".into()],
                        ..Default::default()
                    },
                )),
                ..Default::default()
            };
            topology.apply(&mut tx, Input::Registry, &profile).unwrap();
        }
        topology.finish(&mut tx).unwrap();
        let (writes, _) = tx.take();
        let mut w = store.batch();
        for (k, v) in &writes {
            w.put(k, v.as_deref().unwrap());
        }
        w.put(&Marker::key(0), &Marker::now(5).encode());
        w.put(&index_marker_key(0), &index_marker(5));
        w.commit().unwrap();
        let index = || -> Vec<(Vec<u8>, Vec<u8>)> {
            store
                .scan_prefix(&partition_prefix(0))
                .unwrap()
                .into_iter()
                .filter(|(k, _)| is_derived(k))
                .collect()
        };
        let kept = index();
        assert_eq!(
            kept.iter()
                .filter(|(k, _)| k.starts_with(b"0000/mi/"))
                .count(),
            3
        );
        assert!(!ensure_index(&store, &topology, 0, &|| true).unwrap());
        // An older version's epoch: the changelog position moves, the index does not follow
        // (here: loses an entry).
        let mut w = store.batch();
        w.put(&Marker::key(0), &Marker::now(7).encode());
        w.delete(&kept[0].0);
        w.commit().unwrap();
        assert!(ensure_index(&store, &topology, 0, &|| true).unwrap());
        assert_eq!(index(), kept);
        assert!(!ensure_index(&store, &topology, 0, &|| true).unwrap());
    }

    /// A recorder of gauges by name (labels ignored), for a test's thread.
    #[derive(Default)]
    struct Gauges(Mutex<BTreeMap<String, Arc<AtomicU64>>>);

    impl Gauges {
        fn get(&self, name: &str) -> Option<f64> {
            let g = self.0.lock().unwrap();
            g.get(name)
                .map(|v| f64::from_bits(v.load(Ordering::Relaxed)))
        }
    }

    impl metrics::Recorder for Gauges {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::noop()
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            let mut g = self.0.lock().unwrap();
            Gauge::from_arc(g.entry(key.name().to_owned()).or_default().clone())
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[test]
    fn the_restore_gauges_count_running_restores_and_keep_the_oldest_start() {
        let gauges = Gauges::default();
        metrics::with_local_recorder(&gauges, || {
            let count = || gauges.get("ponte_reconciler_restoring_partitions");
            let oldest = || gauges.get("ponte_reconciler_restore_started_timestamp_seconds");
            let before = unix_seconds() as f64;
            let first = Restoring::start();
            assert_eq!(count(), Some(1.0));
            let began = oldest().unwrap();
            assert!(began >= before && began <= unix_seconds() as f64);
            // A restore that ends with an error leaves the gauges as well.
            let failing = || -> Result<(), ReconcilerError> {
                let _restoring = Restoring::start();
                assert_eq!(count(), Some(2.0));
                Err(startup("changelog read: broker down"))
            };
            assert!(failing().is_err());
            assert_eq!(count(), Some(1.0));
            assert_eq!(oldest(), Some(began));
            drop(first);
            assert_eq!(count(), Some(0.0));
            assert_eq!(oldest(), Some(0.0));
        });
    }
}
