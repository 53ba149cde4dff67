//! Embedded state store for Ponte's stateful services, on RocksDB.
//!
//! The one guarantee this crate exists for: **state and the input offsets that produced it are
//! written in one atomic batch**. A service that applies a batch of consumed records writes the
//! resulting state changes *and* the next offset of every partition it read into one
//! [`Batch`], and [`Store::commit`] writes that batch atomically through RocksDB's write-ahead
//! log. After a crash the store holds either the whole batch or none of it, so seeking the
//! consumer to [`Store::offset`] resumes exactly where the state stops — no record is applied
//! twice into a different state, none is skipped.
//!
//! Layout: two column families, `state` (service-defined keys) and `offsets`
//! (`<topic>\0<partition>` → next offset to consume, big-endian `i64`).
//!
//! This crate must never interpret state values: it stores bytes.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Direction,
    IteratorMode, Options, ReadOptions, WriteBatch, WriteBufferManager, WriteOptions,
};

const CF_STATE: &str = "state";
const CF_OFFSETS: &str = "offsets";

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB refused an operation (disk full, corruption, lock held by another process…).
    #[error("state store at {path}: {source}")]
    Rocks {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },
    /// A value in the offsets column family is not an 8-byte offset: the store was written by
    /// something else or is corrupt.
    #[error("state store at {path}: offset for {topic}/{partition} is malformed")]
    MalformedOffset {
        path: PathBuf,
        topic: String,
        partition: i32,
    },
}

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Durability of commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Each commit is in the write-ahead log in the OS page cache before `commit` returns:
    /// survives a process crash (`kill -9`), not a power loss of the machine.
    Process,
    /// Each commit is fsynced: survives a power loss, at a cost in throughput.
    Machine,
    /// Commits skip the write-ahead log: they are in memory until RocksDB flushes its
    /// memtables (all column families at one point, `atomic_flush`). After a crash the store
    /// holds a prefix of its commits — every commit up to some point, none after it, no commit
    /// in part — and the owner rebuilds the rest from where it keeps its source of truth (the
    /// reconciler: its changelog topic, from the position recorded in the last commit kept).
    Rebuildable,
}

/// How much memory one store may use for RocksDB's block cache and memtables together.
///
/// One LRU cache holds the data, index and bloom-filter blocks read from disk, and the
/// memtables are charged to the same cache (RocksDB's write-buffer manager), so the store's
/// memory stays near `cache_bytes` however large the state on disk grows. Every table has a
/// bloom filter (10 bits per key, ≈ 1 % false positives): a read of a key that does not exist
/// — the first record of a new person — is answered without reading a data block of every
/// level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Block cache, memtables included.
    pub cache_bytes: usize,
    /// Memtables may use up to this share of `cache_bytes` before they are flushed.
    pub memtable_bytes: usize,
}

impl Memory {
    /// `mib` MiB in all, half of it at most for memtables.
    pub fn mib(mib: usize) -> Self {
        let cache_bytes = mib.max(16) << 20;
        Self {
            cache_bytes,
            memtable_bytes: cache_bytes / 2,
        }
    }
}

impl Default for Memory {
    fn default() -> Self {
        Self::mib(128)
    }
}

/// How the `state` family is laid out on disk, for the workload of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// Leveled compaction, values beside their keys: small values read by key and by key
    /// range (the reconciler's state). Keys are grouped by their first three `/`-separated
    /// segments ([`SCAN_GROUP_SEGMENTS`], e.g. `0003/k/cns:1/` of `0003/k/cns:1/r9`): each
    /// table's filter also holds those groups, so a scan of one group skips, without reading
    /// an index or data block, every sorted run that holds none of it ([`Store::scan_prefix`]).
    #[default]
    Leveled,
    /// As [`Layout::Leveled`] (values beside their keys, scan groups in the filters), but
    /// compacted by size tiers (universal compaction): each key is rewritten about
    /// log_width(keys / keys per flush) times instead of about ten times per level, for more
    /// sorted runs to probe on each read (their filters rule most out).
    Tiered {
        /// As [`Layout::LargeValues`]'s `merge_width`.
        merge_width: u32,
        /// As [`Layout::LargeValues`]'s `space_amp_percent`; here the tables hold the values,
        /// so the store may take up to this much more disk before a whole merge.
        space_amp_percent: u32,
    },
    /// Large values overwritten often (the read model's views): values of at least
    /// `min_blob_bytes` go to LZ4-compressed blob files of their own, the tables holding only
    /// a reference (RocksDB's integrated BlobDB), and the keys are compacted by size tiers
    /// (universal compaction) instead of level by level. Leveled compaction merged every
    /// flush into the whole key set, and rewrote the values with it: at 1 M people that was
    /// about a fifth of the reconciler's CPU (docs/benchmarks.md). Still-live values are
    /// relocated only out of the oldest quarter of blob files; the space the rest of the
    /// garbage holds is freed as its blob files empty.
    LargeValues {
        min_blob_bytes: u64,
        /// Sorted runs of similar size merged at once (universal compaction's
        /// `min_merge_width`; RocksDB's default is 2). Each merge moves a key into a run about
        /// `merge_width` times larger, so a key is rewritten about log_width(keys / keys per
        /// flush) times, and up to `merge_width - 1` runs wait in each tier (a point read
        /// probes each run's filter).
        merge_width: u32,
        /// How much larger than the oldest run the newer runs may grow, in percent, before all
        /// are merged into one (universal compaction's `max_size_amplification_percent`;
        /// RocksDB's default is 200). While the store grows, these whole merges rewrite every
        /// key about log_(1 + percent/100)(keys / keys per flush) times; the tables hold only keys
        /// and blob references, so a larger percent costs little disk there, but a value's blob
        /// file is freed later.
        space_amp_percent: u32,
        /// Blob garbage collection: compactions relocate the still-live values of the oldest
        /// `blob_gc_age_percent` percent of blob files, so the space of overwritten values is
        /// reclaimed even where their files hold live ones too (RocksDB's
        /// `blob_garbage_collection_age_cutoff`; 0 turns it off, 25 is RocksDB's default).
        blob_gc_age_percent: u32,
    },
}

/// How many leading `/`-separated segments of a key form its scan group in a
/// [`Layout::Leveled`] store: the prefix filters hold `a/b/c/` for every key `a/b/c/…`; keys
/// with fewer segments belong to no group.
pub const SCAN_GROUP_SEGMENTS: usize = 3;

/// The scan group of `key` (its first [`SCAN_GROUP_SEGMENTS`] segments, the last `/`
/// included), if it has one.
fn scan_group(key: &[u8]) -> Option<&[u8]> {
    let mut seen = 0;
    for (i, b) in key.iter().enumerate() {
        if *b == b'/' {
            seen += 1;
            if seen == SCAN_GROUP_SEGMENTS {
                return Some(&key[..=i]);
            }
        }
    }
    None
}

/// RocksDB's prefix extractor for scan groups: called only on keys [`in_scan_group`] says
/// have one.
fn scan_group_of(key: &[u8]) -> &[u8] {
    scan_group(key).unwrap_or(key)
}

fn in_scan_group(key: &[u8]) -> bool {
    scan_group(key).is_some()
}

fn options(memory: Memory, durability: Durability, layout: Layout) -> (Options, Options, Options) {
    let cache = Cache::new_lru_cache(memory.cache_bytes);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&cache);
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    // Partitioned index and filters: with 10 M people a whole table's filter block (hundreds
    // of KiB) was evicted from the bounded cache and read back, checksummed and parsed for most
    // point reads (22 % of the reconciler's CPU). Now a read loads only the 4 KiB partition it
    // needs; the top levels stay pinned in the cache.
    table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_partition_filters(true);
    table.set_metadata_block_size(4096);
    table.set_pin_top_level_index_and_filter(true);
    let mut db = Options::default();
    db.create_if_missing(true);
    db.create_missing_column_families(true);
    // With two column families, the write-ahead log could not be recycled until the small
    // offsets family flushed too: at 1 M people 1.5 GiB of log piled up and every restart
    // replayed it (10 s). Past this size the families holding the oldest log are flushed.
    db.set_max_total_wal_size((2 * memory.memtable_bytes).max(64 << 20) as u64);
    if durability == Durability::Rebuildable {
        // Without a log, only flushes persist: both families flush at the same point, so what
        // survives a crash is one prefix of the commits, state and offsets together.
        db.set_atomic_flush(true);
    }
    db.set_write_buffer_manager(&WriteBufferManager::new_write_buffer_manager_with_cache(
        memory.memtable_bytes,
        false,
        cache.clone(),
    ));
    let mut cf = Options::default();
    // Compression on the bottommost level only, where nearly all the data ends up: the upper
    // levels are rewritten by every compaction and read most often, and compressing them buys
    // little disk (compaction threads took 23 % of the reconciler's CPU at 1 M people;
    // docs/benchmarks.md, issue 15).
    cf.set_compression_type(rocksdb::DBCompressionType::None);
    cf.set_bottommost_compression_type(rocksdb::DBCompressionType::Lz4);
    cf.set_block_based_table_factory(&table);
    cf.set_write_buffer_size((memory.memtable_bytes / 2).clamp(4 << 20, 64 << 20));
    // Up to four memtables per family while flushes catch up: with two, a store without a log
    // (both families flushed together) stopped its writes ten times while the read model was
    // rebuilt at 1 M people ("Stopping writes because we have 2 immutable memtables"). The
    // write-buffer manager above still bounds the memtables' memory as a whole.
    cf.set_max_write_buffer_number(4);
    cf.set_level_compaction_dynamic_level_bytes(true);
    let offsets = cf.clone();
    let mut state = cf;
    // Scan groups in the filters (the whole keys stay there too, for point reads): the
    // reconciler's identity stage scans for health records kept one key each under an
    // identifier, as stores before its `a/` values kept them, and nearly always finds none;
    // without them every such scan seeked an index and a data block in each sorted run
    // (docs/benchmarks.md, issue 15). Tables written before hold no groups and are scanned
    // as before.
    state.set_prefix_extractor(rocksdb::SliceTransform::create(
        "ponte.scan-group.3",
        scan_group_of,
        Some(in_scan_group),
    ));
    state.set_memtable_prefix_bloom_ratio(0.02);
    let tiers = match layout {
        Layout::Leveled => None,
        Layout::Tiered {
            merge_width,
            space_amp_percent,
        }
        | Layout::LargeValues {
            merge_width,
            space_amp_percent,
            ..
        } => Some((merge_width, space_amp_percent)),
    };
    if let Some((merge_width, space_amp_percent)) = tiers {
        let width = merge_width.max(2);
        let mut universal = rocksdb::UniversalCompactOptions::default();
        universal.set_min_merge_width(width as i32);
        universal.set_max_size_amplification_percent(space_amp_percent.max(1) as i32);
        state.set_compaction_style(rocksdb::DBCompactionStyle::Universal);
        state.set_universal_compaction_options(&universal);
        // A merge waits for `width` runs of a size; writes slow down only well past the runs
        // that many tiers can hold.
        let trigger = (2 * width).max(4) as i32;
        state.set_level_zero_file_num_compaction_trigger(trigger);
        state.set_level_zero_slowdown_writes_trigger((5 * trigger).max(20));
        state.set_level_zero_stop_writes_trigger((8 * trigger).max(36));
    }
    if let Layout::LargeValues {
        min_blob_bytes,
        blob_gc_age_percent,
        ..
    } = layout
    {
        state.set_enable_blob_files(true);
        state.set_min_blob_size(min_blob_bytes);
        state.set_blob_compression_type(rocksdb::DBCompressionType::Lz4);
        state.set_enable_blob_gc(blob_gc_age_percent > 0);
        state.set_blob_gc_age_cutoff(f64::from(blob_gc_age_percent.clamp(1, 100)) / 100.0);
        state.set_blob_cache(&cache);
    }
    (db, state, offsets)
}

/// What a store's flushes and compactions wrote ([`Store::write_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WriteStats {
    /// Bytes the flushes wrote: the memtables' contents as tables (and blob files).
    pub flushed_bytes: u64,
    /// Bytes flushes and compactions wrote together (RocksDB counts a flush as a compaction
    /// into level 0).
    pub written_bytes: u64,
    /// Seconds flushes and compactions took together (their threads' wall time).
    pub seconds: f64,
    /// Seconds the store's writers were slowed down or stopped while flushes or compactions
    /// caught up (the whole database's, both families).
    pub stall_seconds: f64,
}

impl WriteStats {
    /// Written bytes per flushed byte: how many times compactions rewrote what was flushed,
    /// plus the flush itself.
    pub fn amplification(&self) -> f64 {
        self.written_bytes as f64 / self.flushed_bytes.max(1) as f64
    }

    /// Reads the cumulative figures of a `rocksdb.cfstats` report (the lines `Flush(GB):
    /// cumulative <GB>, …` and `Cumulative compaction: <GB> GB write, …, <s> seconds`) and of a
    /// `rocksdb.dbstats` report (`Cumulative stall: <HH:MM:SS.mmm> H:M:S, …`).
    fn parse(report: &str, db_report: &str) -> Option<Self> {
        const GB: f64 = (1u64 << 30) as f64;
        let number = |s: &str| s.trim().parse::<f64>().ok();
        let mut flushed = None;
        let mut written = None;
        let mut seconds = None;
        for line in report.lines() {
            if let Some(rest) = line.strip_prefix("Flush(GB): cumulative ") {
                flushed = number(rest.split(',').next()?);
            } else if let Some(rest) = line.strip_prefix("Cumulative compaction: ") {
                let mut fields = rest.split(',');
                written = number(fields.next()?.strip_suffix("GB write")?);
                seconds = number(fields.next_back()?.strip_suffix("seconds")?);
            }
        }
        let stall = db_report.lines().find_map(|line| {
            let hms = line.strip_prefix("Cumulative stall: ")?.split(' ').next()?;
            let mut parts = hms.split(':');
            let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
            Some(number(h)? * 3600.0 + number(m)? * 60.0 + number(s)?)
        });
        Some(Self {
            flushed_bytes: (flushed? * GB) as u64,
            written_bytes: (written? * GB) as u64,
            seconds: seconds?,
            stall_seconds: stall?,
        })
    }
}

/// A RocksDB-backed state store. Cheap to clone; all clones share one database.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    path: PathBuf,
    durability: Durability,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("durability", &self.durability)
            .finish()
    }
}

/// A set of state changes and offsets to commit atomically.
#[derive(Default)]
pub struct Batch {
    inner: WriteBatch,
    ops: usize,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("ops", &self.ops).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store in directory `path`, with the default [`Memory`].
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<Self, StoreError> {
        Self::open_with(path, durability, Memory::default())
    }

    /// Opens (creating if needed) the store in directory `path`, within `memory`.
    pub fn open_with(
        path: impl AsRef<Path>,
        durability: Durability,
        memory: Memory,
    ) -> Result<Self, StoreError> {
        Self::open_with_layout(path, durability, memory, Layout::Leveled)
    }

    /// Opens (creating if needed) the store in directory `path`, within `memory`, its state
    /// laid out as `layout` says. A store written [`Layout::Leveled`] opens as
    /// [`Layout::LargeValues`]: what it holds is read as before and compacted into the new
    /// shape as the store is written (the way back is not tested).
    pub fn open_with_layout(
        path: impl AsRef<Path>,
        durability: Durability,
        memory: Memory,
        layout: Layout,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let (opts, state, offsets) = options(memory, durability, layout);
        let cfs = [
            ColumnFamilyDescriptor::new(CF_STATE, state),
            ColumnFamilyDescriptor::new(CF_OFFSETS, offsets),
        ];
        let db =
            DB::open_cf_descriptors(&opts, &path, cfs).map_err(|source| StoreError::Rocks {
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            db: Arc::new(db),
            path,
            durability,
        })
    }

    /// Where the store lives on disk.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn rocks(&self, source: rocksdb::Error) -> StoreError {
        StoreError::Rocks {
            path: self.path.clone(),
            source,
        }
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        // Both families are created in `open`; their absence is a bug in this crate.
        #[allow(clippy::expect_used)]
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    /// Reads one state value.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get_cf(self.cf(CF_STATE), key)
            .map_err(|e| self.rocks(e))
    }

    /// Reads many state values at once, answered in the order of `keys` (`None`: absent). One
    /// batched lookup (RocksDB's `MultiGet`, keys sorted first) shares the work a point read
    /// repeats per key — the version and table references, each file's filter and index
    /// probes, the reads of one blob file — so a batch of keys costs less than as many
    /// [`Store::get`]s.
    pub fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by(|&a, &b| keys[a].cmp(&keys[b]));
        let found =
            self.db
                .batched_multi_get_cf(self.cf(CF_STATE), order.iter().map(|&i| &keys[i]), true);
        let mut out = vec![None; keys.len()];
        for (i, value) in order.into_iter().zip(found) {
            out[i] = value.map_err(|e| self.rocks(e))?.map(|v| v.to_vec());
        }
        Ok(out)
    }

    /// All state entries whose key starts with `prefix`, in key order. Cheapest for a whole
    /// scan group of a [`Layout::Leveled`] store ([`SCAN_GROUP_SEGMENTS`]).
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        // Most scans find nothing (the identity stage looks for records parked under each
        // identifier a profile claims): without the upper bound each of them read a data block
        // of every level to learn the next key was someone else's, and without the groups in
        // the filters an index and a data block of every sorted run that could hold it.
        let iter = self.db.iterator_cf_opt(
            self.cf(CF_STATE),
            scan_options(prefix),
            IteratorMode::From(prefix, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(|e| self.rocks(e))?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    /// Up to `limit` entries whose key starts with `prefix` and is greater than `after`, in key
    /// order (for paging through large prefixes without re-reading earlier pages).
    pub fn scan_prefix_after(
        &self,
        prefix: &[u8],
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let start = if after < prefix { prefix } else { after };
        let mut out = Vec::new();
        let iter = self.db.iterator_cf_opt(
            self.cf(CF_STATE),
            scan_options(prefix),
            IteratorMode::From(start, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(|e| self.rocks(e))?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            if &*k == after {
                continue;
            }
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    /// The next offset to consume for `topic`/`partition`, if any batch recorded one.
    pub fn offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, StoreError> {
        let raw = self
            .db
            .get_cf(self.cf(CF_OFFSETS), offset_key(topic, partition))
            .map_err(|e| self.rocks(e))?;
        match raw {
            None => Ok(None),
            Some(bytes) => {
                let arr: [u8; 8] =
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| StoreError::MalformedOffset {
                            path: self.path.clone(),
                            topic: topic.to_owned(),
                            partition,
                        })?;
                Ok(Some(i64::from_be_bytes(arr)))
            }
        }
    }

    /// Every recorded offset: `(topic, partition, next offset)`.
    pub fn offsets(&self) -> Result<Vec<(String, i32, i64)>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_OFFSETS), IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| self.rocks(e))?;
            // `<topic>\0<partition: 4 bytes>`: the partition may contain zero bytes itself.
            let Some(split) = k.len().checked_sub(5) else {
                continue;
            };
            let topic = String::from_utf8_lossy(&k[..split]).into_owned();
            let (Ok(p), Ok(o)) = (
                <[u8; 4]>::try_from(&k[split + 1..]),
                <[u8; 8]>::try_from(v.as_ref()),
            ) else {
                return Err(StoreError::MalformedOffset {
                    path: self.path.clone(),
                    topic,
                    partition: -1,
                });
            };
            out.push((topic, i32::from_be_bytes(p), i64::from_be_bytes(o)));
        }
        Ok(out)
    }

    /// True when the store holds neither state nor offsets (a new or lost disk).
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        for cf in [CF_STATE, CF_OFFSETS] {
            let mut iter = self
                .db
                .iterator_cf_opt(self.cf(cf), total_order(), IteratorMode::Start);
            if let Some(item) = iter.next() {
                item.map_err(|e| self.rocks(e))?;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Commits a batch atomically: all of its state changes and offsets, or none.
    pub fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(self.durability == Durability::Machine);
        wo.disable_wal(self.durability == Durability::Rebuildable);
        self.db
            .write_opt(batch.inner, &wo)
            .map_err(|e| self.rocks(e))
    }

    /// Writes the memtables to table files, so the next open has no log to replay (a clean
    /// shutdown's last step; committed batches are durable without it).
    pub fn flush(&self) -> Result<(), StoreError> {
        let cfs = [self.cf(CF_STATE), self.cf(CF_OFFSETS)];
        self.db
            .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())
            .map_err(|e| self.rocks(e))
    }

    /// Approximate size of the live state in bytes (SST files, blob files and memtables), for
    /// metrics.
    pub fn approximate_size_bytes(&self) -> u64 {
        let cf = self.cf(CF_STATE);
        [
            "rocksdb.total-sst-files-size",
            "rocksdb.total-blob-file-size",
            "rocksdb.cur-size-all-mem-tables",
        ]
        .into_iter()
        .map(|p| {
            self.db
                .property_int_value_cf(cf, p)
                .ok()
                .flatten()
                .unwrap_or(0)
        })
        .sum()
    }

    /// What the state family's flushes and compactions wrote since the store was opened, from
    /// RocksDB's `rocksdb.cfstats` report (benchmarks: a store's write amplification and the
    /// background CPU it costs); `None` if the report does not hold the figures.
    pub fn write_stats(&self) -> Option<WriteStats> {
        let report = self
            .db
            .property_value_cf(self.cf(CF_STATE), "rocksdb.cfstats")
            .ok()
            .flatten()?;
        let db_report = self.db.property_value("rocksdb.dbstats").ok().flatten()?;
        WriteStats::parse(&report, &db_report)
    }

    /// An integer property of the state family (`rocksdb.compaction-pending`,
    /// `rocksdb.total-blob-file-size`, …; RocksDB's `include/rocksdb/db.h` lists them), for
    /// benchmarks and metrics; `None` if RocksDB does not know it.
    pub fn state_property(&self, name: &str) -> Option<u64> {
        self.db
            .property_int_value_cf(self.cf(CF_STATE), name)
            .ok()
            .flatten()
    }

    /// RocksDB's memory by use, in bytes, for metrics: `(block cache, memtables, table
    /// readers)`. The memtables are charged to the block cache too (see [`Memory`]).
    pub fn memory_bytes(&self) -> (u64, u64, u64) {
        // The cache is shared by both families: ask one of them (the database-level property
        // is the unused `default` family's).
        let cache = self
            .db
            .property_int_value_cf(self.cf(CF_STATE), "rocksdb.block-cache-usage")
            .ok()
            .flatten()
            .unwrap_or(0);
        let cf_sum = |name: &str| {
            [CF_STATE, CF_OFFSETS]
                .into_iter()
                .map(|cf| {
                    self.db
                        .property_int_value_cf(self.cf(cf), name)
                        .ok()
                        .flatten()
                        .unwrap_or(0)
                })
                .sum()
        };
        (
            cache,
            cf_sum("rocksdb.cur-size-all-mem-tables"),
            cf_sum("rocksdb.estimate-table-readers-mem"),
        )
    }

    /// Starts an empty batch bound to this store's column families.
    pub fn batch(&self) -> BatchWriter<'_> {
        BatchWriter {
            store: self,
            batch: Batch::default(),
        }
    }

    /// Starts an empty batch with room for about `bytes` of keys and values: a batch grows by
    /// copying itself whole into an allocation twice the size, which for an epoch's megabytes
    /// of state is a dozen copies and as many large allocations.
    pub fn batch_with_capacity(&self, bytes: usize) -> BatchWriter<'_> {
        BatchWriter {
            store: self,
            batch: Batch {
                // And the batch's 12-byte header.
                inner: WriteBatch::with_capacity_bytes(bytes.saturating_add(12)),
                ops: 0,
            },
        }
    }
}

/// Builds a [`Batch`] against a store (it needs the store's column family handles).
pub struct BatchWriter<'a> {
    store: &'a Store,
    batch: Batch,
}

impl std::fmt::Debug for BatchWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.batch.fmt(f)
    }
}

impl BatchWriter<'_> {
    /// Sets a state value.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.batch.inner.put_cf(self.store.cf(CF_STATE), key, value);
        self.batch.ops += 1;
    }

    /// Deletes a state value.
    pub fn delete(&mut self, key: &[u8]) {
        self.batch.inner.delete_cf(self.store.cf(CF_STATE), key);
        self.batch.ops += 1;
    }

    /// Records `next_offset` as the next offset to consume from `topic`/`partition`.
    pub fn set_offset(&mut self, topic: &str, partition: i32, next_offset: i64) {
        self.batch.inner.put_cf(
            self.store.cf(CF_OFFSETS),
            offset_key(topic, partition),
            next_offset.to_be_bytes(),
        );
        self.batch.ops += 1;
    }

    /// Deletes every state key starting with `prefix` (one range tombstone).
    pub fn delete_prefix(&mut self, prefix: &[u8]) {
        match prefix_end(prefix) {
            Some(end) => {
                self.batch
                    .inner
                    .delete_range_cf(self.store.cf(CF_STATE), prefix, end.as_slice())
            }
            None => self.batch.inner.delete_range_cf(
                self.store.cf(CF_STATE),
                prefix,
                [0xffu8; 64].as_slice(),
            ),
        }
        self.batch.ops += 1;
    }

    /// Forgets the next offset of `topic`/`partition`: it will be consumed from the beginning.
    pub fn delete_offset(&mut self, topic: &str, partition: i32) {
        self.batch
            .inner
            .delete_cf(self.store.cf(CF_OFFSETS), offset_key(topic, partition));
        self.batch.ops += 1;
    }

    /// Number of operations in the batch.
    pub fn len(&self) -> usize {
        self.batch.ops
    }

    /// True when nothing has been added.
    pub fn is_empty(&self) -> bool {
        self.batch.ops == 0
    }

    /// Commits the batch atomically.
    pub fn commit(self) -> Result<(), StoreError> {
        self.store.commit(self.batch)
    }
}

/// Read options of an iterator over every key in order: with a prefix extractor, RocksDB's
/// iterators otherwise only promise the order within one prefix.
fn total_order() -> ReadOptions {
    let mut opts = ReadOptions::default();
    opts.set_total_order_seek(true);
    opts
}

/// Read options of a scan of the keys starting with `prefix`. Bounded above by the first key
/// past the prefix: a level whose next file starts past it is not opened at all. When `prefix`
/// is a whole scan group (`a/b/c/`), the scan is a prefix seek, which consults the groups in
/// the filters and skips every sorted run that holds none of the group; any other prefix is
/// scanned in total order.
fn scan_options(prefix: &[u8]) -> ReadOptions {
    let mut opts = if scan_group(prefix) == Some(prefix) {
        let mut opts = ReadOptions::default();
        opts.set_prefix_same_as_start(true);
        opts
    } else {
        total_order()
    };
    if let Some(end) = prefix_end(prefix) {
        opts.set_iterate_upper_bound(end);
    }
    opts
}

/// The smallest key greater than every key starting with `prefix`, if there is one.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn offset_key(topic: &str, partition: i32) -> Vec<u8> {
    let mut key = Vec::with_capacity(topic.len() + 5);
    key.extend_from_slice(topic.as_bytes());
    key.push(0);
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn open(dir: &Path) -> Store {
        Store::open(dir, Durability::Process).unwrap()
    }

    #[test]
    fn write_stats_count_what_flushes_and_compactions_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let before = store.write_stats().unwrap();
        assert_eq!(before.flushed_bytes, 0);
        assert_eq!(before.written_bytes, 0);
        // Three flushed tables (fewer than trigger a compaction), then one compaction of them
        // all: what the compaction wrote comes on top of what the flushes did. RocksDB reports
        // gigabytes to two decimals, so the tables are large; the values do not compress (the
        // compaction's output, on the last level, is compressed).
        let mut seed = 0x9e37_79b9_u32;
        for round in 0..3u32 {
            let mut b = store.batch();
            for k in 0..2000u32 {
                let value: Vec<u8> = (0..4096)
                    .map(|_| {
                        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        (seed >> 24) as u8
                    })
                    .collect();
                // Interleaved keys: the tables overlap, so the compaction rewrites them all.
                b.put(format!("0001/p/{:06}", k * 3 + round).as_bytes(), &value);
            }
            b.commit().unwrap();
            store.flush().unwrap();
        }
        let flushed = store.write_stats().unwrap();
        assert!(
            flushed.flushed_bytes > 3 * 2000 * 4096 / 2,
            "{flushed:?}: three flushes of 8 MB"
        );
        store
            .db
            .compact_range_cf(store.cf(CF_STATE), None::<&[u8]>, None::<&[u8]>);
        let compacted = store.write_stats().unwrap();
        assert_eq!(compacted.flushed_bytes, flushed.flushed_bytes);
        assert!(
            compacted.written_bytes > flushed.written_bytes,
            "{flushed:?} then {compacted:?}"
        );
        assert!(compacted.amplification() > 1.0, "{compacted:?}");
    }

    #[test]
    fn write_stats_are_read_from_rocksdbs_report() {
        let report = "Uptime(secs): 10.0 total, 10.0 interval\n\
                      Flush(GB): cumulative 2.500, interval 0.100\n\
                      AddFile(GB): cumulative 0.000, interval 0.000\n\
                      Cumulative compaction: 7.50 GB write, 1.00 MB/s write, 5.00 GB read, 0.50 MB/s read, 42.5 seconds\n\
                      Interval compaction: 0.10 GB write, 1.00 MB/s write, 0.10 GB read, 0.50 MB/s read, 1.0 seconds\n";
        let db_report = "Cumulative WAL: 0 writes, 0 syncs, 0.00 writes per sync, written: 0.00 GB, 0.00 MB/s\n\
                         Cumulative stall: 01:02:03.500 H:M:S, 4.2 percent\n\
                         Interval stall: 00:00:1.000 H:M:S, 0.1 percent\n";
        let stats = WriteStats::parse(report, db_report).unwrap();
        assert_eq!(stats.flushed_bytes, 5 << 29);
        assert_eq!(stats.written_bytes, 15 << 29);
        assert_eq!(stats.seconds, 42.5);
        assert_eq!(stats.stall_seconds, 3723.5);
        assert_eq!(stats.amplification(), 3.0);
        assert_eq!(
            WriteStats::parse("Uptime(secs): 1.0 total\n", db_report),
            None
        );
        assert_eq!(WriteStats::parse(report, "Uptime(secs): 1.0 total\n"), None);
    }

    #[test]
    fn a_scan_of_a_group_finds_what_a_scan_in_key_order_finds() {
        a_scan_of_a_group_finds_what_a_scan_in_key_order_finds_in(Layout::Leveled);
    }

    #[test]
    fn a_scan_of_a_group_finds_what_a_scan_in_key_order_finds_when_tiered() {
        a_scan_of_a_group_finds_what_a_scan_in_key_order_finds_in(Layout::Tiered {
            merge_width: 2,
            space_amp_percent: 200,
        });
    }

    fn a_scan_of_a_group_finds_what_a_scan_in_key_order_finds_in(layout: Layout) {
        // Keys of several groups over several sorted runs (the memtable, then flushed tables),
        // with deletes, groups that share the start of their last segment, keys too short to
        // have a group, and groups ending in 0xff.
        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::open_with_layout(dir.path(), Durability::Process, Memory::default(), layout)
                .unwrap();
        let groups: [&[u8]; 6] = [
            b"0001/k/cns:1/",
            b"0001/k/cns:12/",
            b"0001/e/cns:1/",
            b"0002/k/cns:1/",
            b"0001/k/\xff/",
            b"0001/k/\xff\xff/",
        ];
        let mut written = BTreeMap::new();
        for round in 0..4u8 {
            let mut b = store.batch();
            for (g, group) in groups.iter().enumerate() {
                for r in 0..3u8 {
                    let key = [
                        *group,
                        format!("r{}", (usize::from(round) * 7 + g + usize::from(r)) % 5)
                            .as_bytes(),
                    ]
                    .concat();
                    if (usize::from(round) + g + usize::from(r)).is_multiple_of(4) {
                        b.delete(&key);
                        written.remove(&key);
                    } else {
                        b.put(&key, &[round, r]);
                        written.insert(key, vec![round, r]);
                    }
                }
            }
            for short in [b"0001/x/cns:1".as_slice(), b"0001/p/7", b"0001/k/cns:1"] {
                b.put(short, &[round]);
                written.insert(short.to_vec(), vec![round]);
            }
            b.commit().unwrap();
            if round < 3 {
                store.flush().unwrap();
            }
        }
        let expected = |prefix: &[u8]| -> Vec<Entry> {
            written
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let prefixes: Vec<&[u8]> = groups
            .iter()
            .copied()
            .chain([
                b"0001/k/cns:".as_slice(),
                b"0001/k/cns:1",
                b"0001/k/",
                b"0001/",
                b"",
                b"0001/k/cns:9/",
            ])
            .collect();
        for prefix in prefixes {
            let found = store.scan_prefix(prefix).unwrap();
            assert_eq!(
                found,
                expected(prefix),
                "{}",
                String::from_utf8_lossy(prefix)
            );
            let page = store.scan_prefix_after(prefix, b"", 2).unwrap();
            assert_eq!(
                page,
                expected(prefix).into_iter().take(2).collect::<Vec<_>>()
            );
            if let Some((first, _)) = expected(prefix).first() {
                let after = store.scan_prefix_after(prefix, first, 100).unwrap();
                assert_eq!(
                    after,
                    expected(prefix).into_iter().skip(1).collect::<Vec<_>>()
                );
            }
        }
        assert!(!store.is_empty().unwrap());
    }

    #[test]
    fn a_scan_of_an_absent_group_reads_fewer_blocks_than_one_in_key_order() {
        // Ten flushes, each holding keys of groups on both sides of the one scanned, so every
        // table's key range covers it: scanned in key order, a table's index and a data block
        // are read to learn it holds none of it; as a group, its filter says so (without the
        // groups in the filters both scans read the same blocks).
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for t in 0..10 {
            let mut b = store.batch();
            for i in 0..200 {
                b.put(format!("0001/k/cns:{i:03}a/r{t}").as_bytes(), b"v");
                b.put(format!("0001/k/cns:{i:03}c/r{t}").as_bytes(), b"v");
            }
            b.commit().unwrap();
            store.flush().unwrap();
        }
        let blocks_read = |prefix: &[u8]| {
            rocksdb::perf::set_perf_stats(rocksdb::perf::PerfStatsLevel::EnableCount);
            let mut context = rocksdb::perf::PerfContext::default();
            context.reset();
            assert!(store.scan_prefix(prefix).unwrap().is_empty());
            let n = context.metric(rocksdb::perf::PerfMetric::BlockCacheHitCount)
                + context.metric(rocksdb::perf::PerfMetric::BlockReadCount);
            rocksdb::perf::set_perf_stats(rocksdb::perf::PerfStatsLevel::Disable);
            n
        };
        // `0001/k/cns:100b` is not a group (no third `/`): scanned in key order.
        let in_key_order = blocks_read(b"0001/k/cns:100b");
        let as_group = blocks_read(b"0001/k/cns:100b/");
        assert!(
            as_group * 2 <= in_key_order,
            "{as_group} blocks as a group, {in_key_order} in key order"
        );
    }

    #[test]
    fn many_values_are_read_at_once_in_the_order_asked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_layout(
            dir.path(),
            Durability::Rebuildable,
            Memory::mib(16),
            Layout::LargeValues {
                min_blob_bytes: 256,
                merge_width: 4,
                space_amp_percent: 200,
                blob_gc_age_percent: 25,
            },
        )
        .unwrap();
        let value = |i: u32| {
            format!("{i:04}")
                .repeat(i as usize % 3 * 100 + 1)
                .into_bytes()
        };
        let mut b = store.batch();
        for i in (0..300u32).step_by(2) {
            b.put(format!("k/{i:04}").as_bytes(), &value(i));
        }
        b.commit().unwrap();
        // Some in tables and blob files, some still in the memtable, one deleted there.
        store.flush().unwrap();
        let mut b = store.batch();
        for i in (1..300u32).step_by(6) {
            b.put(format!("k/{i:04}").as_bytes(), &value(i));
        }
        b.delete(b"k/0100");
        b.commit().unwrap();
        // Unsorted, with a repeated key.
        let keys: Vec<Vec<u8>> = [299u32, 7, 0, 100, 298, 3, 7, 151, 1]
            .iter()
            .map(|i| format!("k/{i:04}").into_bytes())
            .collect();
        let got = store.get_many(&keys).unwrap();
        let one_by_one: Vec<Option<Vec<u8>>> = keys.iter().map(|k| store.get(k).unwrap()).collect();
        assert_eq!(got, one_by_one);
        let present = |i: u32| (i.is_multiple_of(2) && i != 100) || i % 6 == 1;
        for (k, v) in keys.iter().zip(&got) {
            let i: u32 = std::str::from_utf8(&k[2..]).unwrap().parse().unwrap();
            assert_eq!(v.clone(), present(i).then(|| value(i)), "k/{i:04}");
        }
        assert!(store.get_many(&[]).unwrap().is_empty());
    }

    #[test]
    fn memory_is_reported_for_the_stores_own_cache_and_memtables() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), Durability::Process, Memory::mib(16)).unwrap();
        let mut b = store.batch();
        for i in 0..1000u32 {
            b.put(format!("p/{i:06}").as_bytes(), &[7u8; 100]);
        }
        b.commit().unwrap();
        let (_, memtables, _) = store.memory_bytes();
        assert!(memtables > 100_000, "memtables {memtables}");
        store.flush().unwrap();
        assert_eq!(
            store.get(b"p/000500").unwrap().as_deref(),
            Some(&[7u8; 100][..])
        );
        let (cache, _, _) = store.memory_bytes();
        assert!(
            cache > 0,
            "a read from a table file goes through the block cache"
        );
    }

    #[test]
    fn the_large_values_layout_reaches_rocksdb_as_given() {
        // What RocksDB was opened with, from the options file it writes beside its data: the
        // `state` family's section.
        let state_options = |layout| {
            let dir = tempfile::tempdir().unwrap();
            drop(
                Store::open_with_layout(
                    dir.path(),
                    Durability::Rebuildable,
                    Memory::mib(16),
                    layout,
                )
                .unwrap(),
            );
            let file = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with("OPTIONS-")
                })
                .max()
                .unwrap();
            let text = std::fs::read_to_string(file).unwrap();
            let section = text
                .split("[CFOptions \"state\"]")
                .nth(1)
                .unwrap()
                .to_owned();
            section.split("\n[").next().unwrap().to_owned()
        };
        let opened_with = |layout: Layout, settings: &[&str]| {
            let section = state_options(layout);
            for setting in settings {
                assert!(
                    section
                        .split(['\n', ';', '{'])
                        .any(|s| s.trim() == *setting),
                    "{setting} in\n{section}"
                );
            }
        };
        opened_with(
            Layout::LargeValues {
                min_blob_bytes: 512,
                merge_width: 4,
                space_amp_percent: 800,
                blob_gc_age_percent: 0,
            },
            &[
                "compaction_style=kCompactionStyleUniversal",
                "min_merge_width=4",
                "max_size_amplification_percent=800",
                "level0_file_num_compaction_trigger=8",
                "level0_slowdown_writes_trigger=40",
                "level0_stop_writes_trigger=64",
                "enable_blob_files=true",
                "min_blob_size=512",
                "enable_blob_garbage_collection=false",
            ],
        );
        opened_with(
            Layout::Tiered {
                merge_width: 4,
                space_amp_percent: 200,
            },
            &[
                "compaction_style=kCompactionStyleUniversal",
                "min_merge_width=4",
                "max_size_amplification_percent=200",
                "level0_file_num_compaction_trigger=8",
                "prefix_extractor=ponte.scan-group.3",
                "enable_blob_files=false",
            ],
        );
        // Width 2 keeps RocksDB's own triggers; the garbage collection's age is a share.
        opened_with(
            Layout::LargeValues {
                min_blob_bytes: 256,
                merge_width: 2,
                space_amp_percent: 200,
                blob_gc_age_percent: 10,
            },
            &[
                "min_merge_width=2",
                "max_size_amplification_percent=200",
                "level0_file_num_compaction_trigger=4",
                "level0_slowdown_writes_trigger=20",
                "level0_stop_writes_trigger=36",
                "enable_blob_garbage_collection=true",
                "blob_garbage_collection_age_cutoff=0.100000",
            ],
        );
    }

    #[test]
    fn a_leveled_store_reopened_for_large_values_keeps_them_in_blob_files_and_reads_every_value() {
        let dir = tempfile::tempdir().unwrap();
        let blob_files = |store: &Store| {
            store
                .db
                .property_int_value_cf(store.cf(CF_STATE), "rocksdb.num-blob-files")
                .unwrap()
                .unwrap()
        };
        let large = |i: u32| format!("{i:06}").repeat(100).into_bytes();
        let open = |layout| {
            Store::open_with_layout(dir.path(), Durability::Rebuildable, Memory::mib(16), layout)
                .unwrap()
        };
        {
            // Written as every store was before layouts: values in the tables.
            let store = open(Layout::Leveled);
            let mut b = store.batch();
            for i in 0..500u32 {
                b.put(format!("v/{i:06}").as_bytes(), &large(i));
            }
            b.commit().unwrap();
            store.flush().unwrap();
            // Down to the bottommost level, as a long-running store's data is.
            store
                .db
                .compact_range_cf(store.cf(CF_STATE), None::<&[u8]>, None::<&[u8]>);
            let level = |l: u32| {
                store
                    .db
                    .property_value_cf(
                        store.cf(CF_STATE),
                        &format!("rocksdb.num-files-at-level{l}"),
                    )
                    .unwrap()
                    .unwrap()
            };
            assert_eq!((level(0), level(6)), ("0".to_owned(), "1".to_owned()));
            assert_eq!(blob_files(&store), 0);
        }
        let store = open(Layout::LargeValues {
            min_blob_bytes: 256,
            merge_width: 2,
            space_amp_percent: 200,
            blob_gc_age_percent: 25,
        });
        let mut b = store.batch();
        for i in 500..1000u32 {
            b.put(format!("v/{i:06}").as_bytes(), &large(i));
            b.put(format!("m/{i:06}").as_bytes(), b"");
        }
        b.put(b"v/000001", b"small now");
        b.set_offset("changes", 0, 1000);
        b.commit().unwrap();
        store.flush().unwrap();
        assert!(blob_files(&store) > 0, "large values went to blob files");
        let property = |name: &str| {
            store
                .db
                .property_int_value_cf(store.cf(CF_STATE), name)
                .unwrap()
                .unwrap()
        };
        let (sst, blobs) = (
            property("rocksdb.total-sst-files-size"),
            property("rocksdb.total-blob-file-size"),
        );
        assert!(blobs > 0);
        assert!(
            store.approximate_size_bytes() >= sst + blobs,
            "the blob files are counted"
        );
        // Values of either layout, overwritten ones as their newest version, by key and by scan.
        assert_eq!(store.get(b"v/000002").unwrap(), Some(large(2)));
        assert_eq!(store.get(b"v/000999").unwrap(), Some(large(999)));
        assert_eq!(
            store.get(b"v/000001").unwrap().as_deref(),
            Some(&b"small now"[..])
        );
        assert_eq!(store.get(b"m/000999").unwrap().as_deref(), Some(&b""[..]));
        let scanned = store.scan_prefix(b"v/").unwrap();
        assert_eq!(scanned.len(), 1000);
        assert_eq!(scanned[700], (b"v/000700".to_vec(), large(700)));
        assert_eq!(store.offset("changes", 0).unwrap(), Some(1000));
        drop(store);
        // And again after a reopen.
        let store = open(Layout::LargeValues {
            min_blob_bytes: 256,
            merge_width: 2,
            space_amp_percent: 200,
            blob_gc_age_percent: 25,
        });
        assert_eq!(store.get(b"v/000998").unwrap(), Some(large(998)));
        assert_eq!(store.scan_prefix(b"v/").unwrap().len(), 1000);
    }

    #[test]
    fn a_leveled_store_reopened_tiered_and_back_reads_and_scans_every_value() {
        let dir = tempfile::tempdir().unwrap();
        let open = |layout| {
            Store::open_with_layout(dir.path(), Durability::Rebuildable, Memory::mib(16), layout)
                .unwrap()
        };
        let tiered = Layout::Tiered {
            merge_width: 2,
            space_amp_percent: 200,
        };
        {
            let store = open(Layout::Leveled);
            let mut b = store.batch();
            for i in 0..500u32 {
                b.put(
                    format!("0001/k/cns:{}/r{i:04}", i % 7).as_bytes(),
                    &i.to_le_bytes(),
                );
            }
            b.set_offset("in", 1, 500);
            b.commit().unwrap();
            store.flush().unwrap();
            // On the bottommost level, as a long-running leveled store's data is.
            store
                .db
                .compact_range_cf(store.cf(CF_STATE), None::<&[u8]>, None::<&[u8]>);
        }
        {
            let store = open(tiered);
            // Overwrites and deletes in new sorted runs over the leveled ones.
            for round in 0..3u32 {
                let mut b = store.batch();
                for i in (round..500).step_by(50) {
                    b.put(
                        format!("0001/k/cns:{}/r{i:04}", i % 7).as_bytes(),
                        &(i + 1000 * (round + 1)).to_le_bytes(),
                    );
                }
                b.delete(format!("0001/k/cns:3/r{:04}", 3 + 7 * round).as_bytes());
                b.commit().unwrap();
                store.flush().unwrap();
            }
        }
        let store = open(tiered);
        let value = |i: u32| {
            let rounds = (0..3u32)
                .filter(|r| i >= *r && (i - r).is_multiple_of(50))
                .max();
            rounds
                .map_or(i, |r| i + 1000 * (r + 1))
                .to_le_bytes()
                .to_vec()
        };
        let deleted = [3u32, 10, 17];
        for group in 0..7u32 {
            let found = store
                .scan_prefix(format!("0001/k/cns:{group}/").as_bytes())
                .unwrap();
            let expected: Vec<Entry> = (0..500u32)
                .filter(|i| i % 7 == group && !deleted.contains(i))
                .map(|i| (format!("0001/k/cns:{group}/r{i:04}").into_bytes(), value(i)))
                .collect();
            assert_eq!(found, expected, "group {group}");
        }
        assert_eq!(
            store.get(b"0001/k/cns:2/r0100").unwrap(),
            Some(value(100)),
            "overwritten in round 0"
        );
        assert_eq!(store.get(b"0001/k/cns:3/r0010").unwrap(), None);
        assert_eq!(store.offset("in", 1).unwrap(), Some(500));
        drop(store);
        // And back: level by level over the tiers' sorted runs.
        let store = open(Layout::Leveled);
        assert_eq!(store.get(b"0001/k/cns:2/r0100").unwrap(), Some(value(100)));
        let mut b = store.batch();
        b.put(b"0001/k/cns:2/r0100", b"leveled");
        b.commit().unwrap();
        store.flush().unwrap();
        store
            .db
            .compact_range_cf(store.cf(CF_STATE), None::<&[u8]>, None::<&[u8]>);
        assert_eq!(
            store.get(b"0001/k/cns:2/r0100").unwrap().as_deref(),
            Some(&b"leveled"[..])
        );
        assert_eq!(
            store.scan_prefix(b"0001/k/cns:4/").unwrap().len(),
            (0..500u32).filter(|i| i % 7 == 4).count()
        );
    }

    #[test]
    fn state_and_offsets_survive_reopen_together() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            let mut b = store.batch();
            b.put(b"p/1", b"one");
            b.put(b"p/2", b"two");
            b.set_offset("topic-a", 3, 42);
            b.commit().unwrap();
        }
        let store = open(dir.path());
        assert_eq!(store.get(b"p/1").unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(store.offset("topic-a", 3).unwrap(), Some(42));
        assert_eq!(store.offset("topic-a", 2).unwrap(), None);
        assert_eq!(store.offset("topic-b", 3).unwrap(), None);
    }

    #[test]
    fn a_partition_can_be_dropped_by_prefix_with_its_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut b = store.batch();
        for k in [&b"0001/a"[..], b"0001/b/c", b"0002/a", b"0000/z"] {
            b.put(k, b"v");
        }
        b.set_offset("in", 1, 7);
        b.set_offset("in", 2, 9);
        b.set_offset("other", 1, 3);
        b.commit().unwrap();
        assert_eq!(
            store.offsets().unwrap(),
            vec![
                ("in".to_owned(), 1, 7),
                ("in".to_owned(), 2, 9),
                ("other".to_owned(), 1, 3)
            ]
        );
        let mut b = store.batch();
        b.delete_prefix(b"0001/");
        b.delete_offset("in", 1);
        b.delete_offset("other", 1);
        b.commit().unwrap();
        let keys: Vec<Vec<u8>> = store
            .scan_prefix(b"")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![b"0000/z".to_vec(), b"0002/a".to_vec()]);
        assert_eq!(store.offsets().unwrap(), vec![("in".to_owned(), 2, 9)]);
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }

    #[test]
    fn a_store_is_empty_until_state_or_an_offset_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        assert!(store.is_empty().unwrap());
        let mut b = store.batch();
        b.set_offset("t", 0, 1);
        b.commit().unwrap();
        assert!(!store.is_empty().unwrap());
    }

    #[test]
    fn uncommitted_batch_leaves_no_trace() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        {
            let mut b = store.batch();
            b.put(b"k", b"v");
            b.set_offset("t", 0, 7);
            drop(b);
        }
        assert_eq!(store.get(b"k").unwrap(), None);
        assert_eq!(store.offset("t", 0).unwrap(), None);
    }

    #[test]
    fn prefix_scan_stops_at_prefix_end_and_sees_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut b = store.batch();
        for k in ["a/1", "a/2", "a/3", "ab/1", "b/1"] {
            b.put(k.as_bytes(), k.as_bytes());
        }
        b.commit().unwrap();
        let mut b = store.batch();
        b.delete(b"a/2");
        b.commit().unwrap();
        let keys: Vec<_> = store
            .scan_prefix(b"a/")
            .unwrap()
            .into_iter()
            .map(|(k, _)| String::from_utf8(k).unwrap())
            .collect();
        assert_eq!(keys, ["a/1", "a/3"]);
    }

    #[test]
    fn a_prefix_ending_in_0xff_scans_up_to_the_next_shorter_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut b = store.batch();
        for k in [
            &b"a\xff"[..],
            b"a\xff\x00",
            b"a\xff\xff\x01",
            b"b",
            b"\xff\xff",
        ] {
            b.put(k, b"");
        }
        b.commit().unwrap();
        let keys = |prefix: &[u8]| -> Vec<Vec<u8>> {
            store
                .scan_prefix(prefix)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(
            keys(b"a\xff"),
            [&b"a\xff"[..], b"a\xff\x00", b"a\xff\xff\x01"]
        );
        assert_eq!(keys(b"\xff"), [b"\xff\xff"]);
        assert_eq!(keys(b"").len(), 5);
    }

    #[test]
    fn paging_resumes_after_the_last_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut b = store.batch();
        for k in ["m/1/a", "m/1/b", "m/1/c", "m/2/a"] {
            b.put(k.as_bytes(), b"");
        }
        b.commit().unwrap();
        let page = |after: &str| -> Vec<String> {
            store
                .scan_prefix_after(b"m/1/", after.as_bytes(), 2)
                .unwrap()
                .into_iter()
                .map(|(k, _)| String::from_utf8(k).unwrap())
                .collect()
        };
        assert_eq!(page(""), ["m/1/a", "m/1/b"]);
        assert_eq!(page("m/1/b"), ["m/1/c"]);
        assert!(page("m/1/c").is_empty());
    }

    #[test]
    fn a_second_process_cannot_open_the_same_store() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open(dir.path());
        let err = Store::open(dir.path(), Durability::Process).unwrap_err();
        assert!(err.to_string().contains(&dir.path().display().to_string()));
    }
}
