//! The reconciler alone: the topology applied in-process to the simulator's events, in batches
//! committed to RocksDB as the service does (state writes in one atomic batch per `batch`
//! events), without Kafka. One thread, so the rate is per core.
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use ponte_domain::period::Month;
use ponte_domain::rules::RuleSet;
use ponte_proto::events::v1::Event;
use ponte_reconciler::topology::{Applied, Input, Topology, Tx};
use ponte_store::{Durability, Store};

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
    pub(crate) apply: Duration,
    pub(crate) commit: Duration,
    pub(crate) rejected_by_adapters: u64,
    pub(crate) state_bytes: u64,
}

pub(crate) fn run(
    data: &Path,
    state: &Path,
    batch: usize,
    now: SystemTime,
) -> anyhow::Result<Figures> {
    let rules = RuleSet::from_toml_str("bolsa-familia-2023.toml", RULES)?;
    let topology = Topology::new(rules, Month::parse("2025-01")?, Month::parse("2025-12")?);
    let store = Store::open(state, Durability::Process)?;
    let mut figures = Figures::default();
    let mut pending: Vec<(Input, Event)> = Vec::with_capacity(batch);
    let flush = |pending: &mut Vec<(Input, Event)>, figures: &mut Figures| -> anyhow::Result<()> {
        let started = Instant::now();
        let mut tx = Tx::new(&store);
        for (input, event) in pending.drain(..) {
            match topology.apply(&mut tx, input, &event)? {
                Applied::Changed => figures.changed += 1,
                Applied::Unchanged => figures.unchanged += 1,
                Applied::Parked => figures.parked += 1,
                Applied::Invalid(_) => figures.invalid += 1,
            }
            figures.events += 1;
        }
        let (writes, outputs) = tx.take();
        let applied = Instant::now();
        let mut w = store.batch();
        for (k, v) in &writes {
            match v {
                Some(v) => w.put(k, v),
                None => w.delete(k),
            }
        }
        w.commit()?;
        figures.outputs += outputs.len() as u64;
        figures.apply += applied - started;
        figures.commit += applied.elapsed();
        Ok(())
    };
    figures.rejected_by_adapters = crate::events::for_each(data, now, |input, _key, event| {
        pending.push((input, event));
        if pending.len() >= batch {
            flush(&mut pending, &mut figures)?;
        }
        Ok(())
    })?;
    flush(&mut pending, &mut figures)?;
    figures.state_bytes = store.approximate_size_bytes();
    Ok(figures)
}
