//! The reconciler alone: the topology applied in-process to the simulator's events, in batches
//! committed to RocksDB as the service does (state writes in one atomic batch per `batch`
//! events), without Kafka. The messages the topology sends itself through its repartition
//! topics (crosswalk claims, health records re-keyed by NIS, members' outcomes for the family)
//! are applied too, after the batch that produced them, on the partition their key hashes to.
//! One thread, so the rate is per core.
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use ponte_domain::period::Month;
use ponte_domain::rules::RuleSet;
use ponte_proto::events::v1::Event;
use ponte_reconciler::topology::{
    Applied, Input, Kv, OutputKind, ParkedCounts, READ_AHEAD_RUN, Screened, Topology, Tx,
    batch_bytes, key_partition, parked_after,
};
use ponte_store::{Durability, Layout, Memory, Store, WriteStats};

const RULES: &str = include_str!("../../../rules/bolsa-familia-2023.toml");

/// Figures of one run.
#[derive(Debug, Default)]
pub(crate) struct Figures {
    pub(crate) events: u64,
    pub(crate) changed: u64,
    pub(crate) parked: u64,
    pub(crate) unchanged: u64,
    pub(crate) invalid: u64,
    pub(crate) outputs: u64,
    /// Messages through the repartition topics (applied like events, counted apart).
    pub(crate) internal: u64,
    pub(crate) apply: Duration,
    pub(crate) commit: Duration,
    pub(crate) rejected_by_adapters: u64,
    pub(crate) state_bytes: u64,
    /// State writes (each one changelog entry in the service) by table: the key's part between
    /// the partition prefix and the next `/` (`p`, `fm`, `x`, `e`, `k`, `f`, `h`).
    pub(crate) writes_by_table: std::collections::BTreeMap<String, u64>,
    /// Bytes of those writes (key and value; a delete its key), by table.
    pub(crate) bytes_by_table: std::collections::BTreeMap<String, u64>,
    /// What the state store's flushes and compactions wrote.
    pub(crate) state_writes: Option<WriteStats>,
}

/// Partitions of the simulated topics (the default `topics.partitions`).
const PARTITIONS: u32 = 6;

fn partition_of(key: &str) -> i32 {
    // Any stable hash spreads keys as the broker's partitioner does.
    let h = key.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    (h % PARTITIONS) as i32
}

/// The table of a state key: `0003/p/<nis>` → `p`.
fn table_of(key: &[u8]) -> String {
    let mut parts = key.split(|&b| b == b'/');
    let first = parts.next().unwrap_or_default();
    let table = if key_partition(key).is_some() {
        parts.next().unwrap_or_default()
    } else {
        first
    };
    String::from_utf8_lossy(table).into_owned()
}

/// Which of the consumer loop's ways of reading the state the run uses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct How {
    /// The state keys of each run of messages read at once before they are applied.
    pub(crate) read_ahead: bool,
    /// Scans of the layout before `a/` answered at once in partitions that hold none of it.
    pub(crate) screened: bool,
    /// How the state store is laid out.
    pub(crate) state_layout: Layout,
}

pub(crate) fn run(
    data: &Path,
    state: &Path,
    batch: usize,
    now: SystemTime,
    how: How,
) -> anyhow::Result<Figures> {
    let How {
        read_ahead,
        screened,
        state_layout,
    } = how;
    let rules = RuleSet::from_toml_str("bolsa-familia-2023.toml", RULES)?;
    let mut topology = Topology::new(rules, Month::parse("2025-01")?, Month::parse("2025-12")?);
    if crate::events::follows_households(data)? {
        topology = topology.with_achievements(
            ponte_domain::achievements::AchievementRuleSet::from_toml_str(
                "unidos-2021.toml",
                crate::events::UNIDOS_RULES,
            )?,
        );
    }
    // The reconciler's default `state_memory_mb`, and its durability: no write-ahead log (the
    // service's state is the changelog's; a log here would be work the service does not do).
    let store = Store::open_with_layout(
        state,
        Durability::Rebuildable,
        Memory::mib(256),
        state_layout,
    )?;
    // The parked counts the consumer loop keeps (every partition is this process'), and the
    // store read through them.
    let parked = ParkedCounts::default();
    parked.reassign(&store, &(0..PARTITIONS as i32).collect())?;
    let screened_store = Screened::new(&store, &parked);
    let state_read: &dyn Kv = if screened { &screened_store } else { &store };
    let mut figures = Figures::default();
    // Events waiting for the next batch: (topic, partition, Kafka key, event).
    let mut pending: Vec<(Input, i32, String, Event)> = Vec::with_capacity(batch);
    // Internal messages waiting for the next batch: (topic, partition, Kafka key, payload).
    let mut internal: Vec<(Input, i32, String, Vec<u8>)> = Vec::new();
    let flush = |pending: &mut Vec<(Input, i32, String, Event)>,
                 internal: &mut Vec<(Input, i32, String, Vec<u8>)>,
                 figures: &mut Figures|
     -> anyhow::Result<()> {
        let started = Instant::now();
        let mut tx = Tx::new(state_read);
        let count = |applied: Applied, figures: &mut Figures| match applied {
            Applied::Changed | Applied::Erased => figures.changed += 1,
            Applied::Unchanged => figures.unchanged += 1,
            Applied::Parked => figures.parked += 1,
            Applied::Invalid(_) => figures.invalid += 1,
        };
        // As the service's consumer loop does: the state keys of each run of messages read at
        // once before they are applied.
        for run in internal.chunks(READ_AHEAD_RUN) {
            if read_ahead {
                tx.read_ahead(run.iter().flat_map(|(input, partition, key, payload)| {
                    let keys = topology.keys_read(*input, key.as_bytes(), payload);
                    keys.into_iter().map(|k| (*partition, k))
                }))?;
            }
            for (input, partition, _, payload) in run {
                tx.set_partition(*partition);
                let (applied, _) = topology.apply_internal(&mut tx, *input, payload)?;
                count(applied, figures);
                figures.internal += 1;
            }
        }
        internal.clear();
        for run in pending.chunks(READ_AHEAD_RUN) {
            if read_ahead {
                tx.read_ahead(run.iter().flat_map(|(input, partition, key, event)| {
                    let keys = topology.keys_read_of_event(*input, key.as_bytes(), event);
                    keys.into_iter().map(|k| (*partition, k))
                }))?;
            }
            for (input, partition, _, event) in run {
                tx.set_partition(*partition);
                count(topology.apply(&mut tx, *input, event)?, figures);
                figures.events += 1;
            }
        }
        pending.clear();
        topology.finish(&mut tx)?;
        let (writes, outputs) = tx.take();
        let applied = Instant::now();
        for (k, v) in &writes {
            let table = table_of(k);
            *figures.bytes_by_table.entry(table.clone()).or_default() +=
                (k.len() + v.as_ref().map_or(0, Vec::len)) as u64;
            *figures.writes_by_table.entry(table).or_default() += 1;
        }
        // The parked counts the commit leaves, as the service's commit takes them.
        let parked_after = parked_after(&writes)?;
        let mut w = store.batch_with_capacity(batch_bytes(&writes));
        for (k, v) in &writes {
            match v {
                Some(v) => w.put(k, v),
                None => w.delete(k),
            }
        }
        w.commit()?;
        parked.follow(&parked_after);
        let committed = Instant::now();
        for o in outputs {
            figures.outputs += 1;
            let to = match o.kind {
                OutputKind::Crosswalk => Input::Crosswalk,
                OutputKind::HealthByNis => Input::HealthByNis,
                OutputKind::Member => Input::Members,
                OutputKind::Change | OutputKind::Alert | OutputKind::DeadLetter => continue,
            };
            internal.push((
                to,
                partition_of(&o.key),
                o.key,
                o.payload.unwrap_or_default(),
            ));
        }
        figures.apply += applied - started;
        figures.commit += committed - applied;
        Ok(())
    };
    figures.rejected_by_adapters = crate::events::for_each(data, now, |input, key, event| {
        pending.push((input, partition_of(&key), key, event));
        if pending.len() >= batch {
            flush(&mut pending, &mut internal, &mut figures)?;
        }
        Ok(())
    })?;
    // The last batch and whatever the repartition topics still carry.
    loop {
        flush(&mut pending, &mut internal, &mut figures)?;
        if internal.is_empty() {
            break;
        }
    }
    figures.state_bytes = store.approximate_size_bytes();
    figures.state_writes = store.write_stats();
    Ok(figures)
}
