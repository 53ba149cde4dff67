//! The read model's store alone, at the scale of a whole population: `changes` view changes of
//! `persons` people and `families` families applied through `readmodel::apply` — the service's
//! write path, index entries and outcome counts included — in batches of the service's
//! [`readmodel::BATCH_MAX`], to a store laid out as asked. The views are real ones: those of
//! a small simulated population run through the topology in-process, each written again under
//! a NIS or family id of its own, with its version. What RocksDB's compactions did is read from
//! the store's own `LOG`, and persons are read as `GetPerson` reads them once the compactions
//! have settled.
//!
//! The read model's disk work of a 10 M people load takes minutes this way instead of the
//! end-to-end run's hour, so its layout can be compared (docs/benchmarks.md). One thread
//! applies, as in the service; RocksDB's flushes and compactions run on their own threads.
use std::path::Path;
use std::time::{Duration, Instant};

use ponte_domain::ids::Nis;
use ponte_proto::compliance::v1 as api;
use ponte_proto::reconciler::v1::ChangeAsStored;
use ponte_proto::reconciler::v1::change_as_stored::View;
use ponte_reconciler::readmodel::{self, ChangeRecord};
use ponte_store::{Durability, Layout, Memory, Store};
use prost::Message as _;

/// How many views, and how often they change.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scale {
    pub(crate) persons: u64,
    pub(crate) families: u64,
    pub(crate) changes: u64,
}

/// What RocksDB's compactions of the store did, from its `LOG`.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct Compactions {
    /// Compactions finished (both column families; the offsets family's are a handful).
    pub(crate) count: u64,
    /// Their CPU time, as RocksDB measured it.
    pub(crate) cpu: Duration,
    /// Entries read by the state family's compactions: each one a key merged once more.
    pub(crate) records_in: u64,
    /// Table bytes written by the state family's compactions (keys and blob references).
    pub(crate) table_mb_out: f64,
    /// Blob bytes written by the state family's compactions: live values relocated by blob
    /// garbage collection.
    pub(crate) blob_mb_out: f64,
    /// Memtable flushes finished.
    pub(crate) flushes: u64,
}

/// Figures of one run.
#[derive(Debug, Default)]
pub(crate) struct Figures {
    pub(crate) templates: (usize, usize),
    pub(crate) stats: readmodel::ApplyStats,
    pub(crate) changes: u64,
    /// Wall time of the whole load, generating the changes included.
    pub(crate) load: Duration,
    /// Of it, inside `readmodel::apply` (the service's work).
    pub(crate) apply: Duration,
    /// From the last batch until no flush or compaction was running.
    pub(crate) settle: Duration,
    /// The process's CPU over the load and the settling (RocksDB's threads included), and of
    /// it the generating of the changes (the benchmark's, not the store's).
    pub(crate) cpu: f64,
    pub(crate) generate: Duration,
    pub(crate) compactions: Compactions,
    /// Once settled: table and blob file bytes, sorted runs.
    pub(crate) table_bytes: u64,
    pub(crate) blob_bytes: u64,
    pub(crate) sorted_runs: u64,
    /// Person reads (key lookup and decode, as GetPerson reads), sorted.
    pub(crate) reads: Vec<Duration>,
}

/// The NIS of synthetic person `i`.
fn nis(i: u64) -> anyhow::Result<Nis> {
    Nis::with_check_digit(&(3_000_000_000 + i).to_string())
        .or_else(|_| Nis::with_check_digit(&(5_000_000_000 + i).to_string()))
        .map_err(|e| anyhow::anyhow!("synthetic NIS {i}: {e}"))
}

fn family_id(i: u64) -> String {
    format!("{:011}", 20_000_000_000 + i)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A stride that visits every one of `n` keys once, spread over the key space, as the changes
/// of a load arrive: a step near the golden ratio of `n`, coprime with it.
fn stride(n: u64) -> u64 {
    let mut s = ((n as f64) * 0.618_033_988_75) as u64 | 1;
    while gcd(s, n) != 1 {
        s += 2;
    }
    s.max(1)
}

/// The views of `views` (change payloads by key, as the topology sent them), decoded.
fn templates(
    views: &std::collections::HashMap<String, Vec<u8>>,
) -> anyhow::Result<(Vec<api::Person>, Vec<api::Family>)> {
    let mut persons = Vec::new();
    let mut families = Vec::new();
    let mut keys: Vec<&String> = views.keys().collect();
    keys.sort();
    for key in keys {
        match ChangeAsStored::decode(views[key].as_slice())?.view {
            Some(View::Person(b)) => persons.push(api::Person::decode(b.as_slice())?),
            Some(View::Family(b)) => families.push(api::Family::decode(b.as_slice())?),
            _ => {}
        }
    }
    anyhow::ensure!(
        !persons.is_empty() && !families.is_empty(),
        "the simulated population gave {} person and {} family views; both are needed",
        persons.len(),
        families.len()
    );
    Ok((persons, families))
}

/// The `j`-th change of the load: which view, in which version.
fn change(
    j: u64,
    scale: &Scale,
    step: u64,
    persons: &[api::Person],
    families: &[api::Family],
) -> anyhow::Result<ChangeRecord> {
    let keys = scale.persons + scale.families;
    let pass = j / keys;
    let i = (j % keys)
        .wrapping_mul(step)
        .wrapping_add(pass * (keys / 3))
        % keys;
    let version = pass + 1;
    let (key, view) = if i < scale.persons {
        let mut p = persons[(i % persons.len() as u64) as usize].clone();
        let nis = nis(i)?;
        p.nis = nis.as_str().to_owned();
        p.view_version = version;
        (
            format!("person:{}", nis.as_str()),
            View::Person(p.encode_to_vec()),
        )
    } else {
        let f_index = i - scale.persons;
        let mut f = families[(f_index % families.len() as u64) as usize].clone();
        f.family_id = family_id(f_index);
        f.view_version = version;
        (
            format!("family:{}", f.family_id),
            View::Family(f.encode_to_vec()),
        )
    };
    let payload = ChangeAsStored { view: Some(view) }.encode_to_vec();
    Ok((0, j as i64, key, Some(payload)))
}

pub(crate) fn run(
    views: &std::collections::HashMap<String, Vec<u8>>,
    dir: &Path,
    scale: Scale,
    layout: Layout,
    reads: usize,
) -> anyhow::Result<Figures> {
    let (persons, families) = templates(views)?;
    let mut figures = Figures {
        templates: (persons.len(), families.len()),
        ..Default::default()
    };
    anyhow::ensure!(scale.persons > 0, "--persons must be above zero");
    // The reconciler's default `read_model_memory_mb`, no write-ahead log, as the service.
    let store = Store::open_with_layout(dir, Durability::Rebuildable, Memory::mib(128), layout)?;
    let pid = std::process::id();
    let cpu_start = crate::e2e::cpu_seconds(pid).unwrap_or(0.0);
    let step = stride(scale.persons + scale.families);
    let started = Instant::now();
    let mut report = Instant::now();
    let mut batch: Vec<ChangeRecord> = Vec::with_capacity(readmodel::BATCH_MAX);
    let mut j = 0;
    while j < scale.changes {
        let generating = Instant::now();
        batch.clear();
        while batch.len() < readmodel::BATCH_MAX && j < scale.changes {
            batch.push(change(j, &scale, step, &persons, &families)?);
            j += 1;
        }
        let applying = Instant::now();
        figures.generate += applying - generating;
        let stats = readmodel::apply(&store, "changes", &batch)?;
        figures.apply += applying.elapsed();
        figures.stats.add(stats);
        figures.changes += batch.len() as u64;
        if report.elapsed() >= Duration::from_secs(30) {
            report = Instant::now();
            println!(
                "[{:>6.0} s] {} of {} changes applied",
                started.elapsed().as_secs_f64(),
                figures.changes,
                scale.changes
            );
        }
    }
    figures.load = started.elapsed();
    let loaded = Instant::now();
    store.flush()?;
    // Settled once nothing ran for a second: RocksDB schedules a compaction as soon as a flush
    // or compaction makes one due (`rocksdb.compaction-pending` may stay 1 for runs its picker
    // will not merge yet).
    let busy = |name: &str| store.state_property(name).unwrap_or(0) > 0;
    let mut idle_since: Option<Instant> = None;
    loop {
        let running = busy("rocksdb.num-running-compactions")
            || busy("rocksdb.num-running-flushes")
            || busy("rocksdb.mem-table-flush-pending");
        match (running, idle_since) {
            (true, _) => idle_since = None,
            (false, None) => idle_since = Some(Instant::now()),
            (false, Some(t)) if t.elapsed() >= Duration::from_secs(1) => break,
            (false, Some(_)) => {}
        }
        anyhow::ensure!(
            loaded.elapsed() < Duration::from_secs(3600),
            "compactions still running an hour after the load"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    figures.settle = idle_since.map_or(loaded.elapsed(), |t| t - loaded);
    figures.cpu = crate::e2e::cpu_seconds(pid).unwrap_or(0.0) - cpu_start;
    figures.table_bytes = store
        .state_property("rocksdb.total-sst-files-size")
        .unwrap_or(0);
    figures.blob_bytes = store
        .state_property("rocksdb.total-blob-file-size")
        .unwrap_or(0);
    figures.sorted_runs = (0..7)
        .map(|level| {
            let files = store
                .state_property(&format!("rocksdb.num-files-at-level{level}"))
                .unwrap_or(0);
            // Universal compaction: every level-0 file is a sorted run, and so is every
            // other level that holds files.
            if level == 0 { files } else { files.min(1) }
        })
        .sum();
    // Persons read at random, as GetPerson reads them.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..reads {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let nis = nis(x % scale.persons)?;
        let t = Instant::now();
        let person = readmodel::read_person(&store, &nis)?;
        figures.reads.push(t.elapsed());
        anyhow::ensure!(
            person.is_some() || scale.changes < scale.persons + scale.families,
            "person {} not in the read model after the load",
            nis.as_str()
        );
    }
    figures.reads.sort();
    drop(store);
    let log = std::fs::read_to_string(dir.join("LOG"))?;
    figures.compactions = compactions(&log);
    Ok(figures)
}

fn after<'a>(text: &'a str, pattern: &str) -> Option<&'a str> {
    text.find(pattern).map(|i| &text[i + pattern.len()..])
}

fn number<T: std::str::FromStr>(text: &str) -> Option<T> {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    text[..end].parse().ok()
}

/// Sums what RocksDB's `LOG` says its compactions and flushes did.
pub(crate) fn compactions(log: &str) -> Compactions {
    let mut c = Compactions::default();
    for line in log.lines() {
        if line.contains("\"event\": \"compaction_finished\"") {
            c.count += 1;
            if let Some(us) = after(line, "\"compaction_time_cpu_micros\": ").and_then(number) {
                c.cpu += Duration::from_micros(us);
            }
        } else if line.contains("\"event\": \"flush_finished\"") {
            c.flushes += 1;
        } else if line.contains("[state] compacted to:") {
            // `... MB in(2.1, 0.0 +9.1 blob) filtered(0.0, 0.0) out(1.0 +9.1 blob), ...
            // records in: 102832, records dropped: 819 ...`
            if let Some(out) = after(line, "MB in(").and_then(|t| after(t, " out(")) {
                c.table_mb_out += number::<f64>(out).unwrap_or(0.0);
                c.blob_mb_out += after(out, " +").and_then(number).unwrap_or(0.0);
            }
            c.records_in += after(line, "records in: ").and_then(number).unwrap_or(0);
        }
    }
    c
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_log_of_a_compaction_is_summed() {
        let log = r#"2026/12/04-08:50:12.113222 647 (Original Log Time 2026/12/04-08:50:12.113086) [db/compaction/compaction_job.cc:981] [state] compacted to: files[0 0 0 0 0 0 1] max score 0.25, estimated pending compaction bytes 0, MB/sec: 16.6 rd, 14.9 wr, level 6, files in(4, 0) filtered(0, 0) out(1 +1 blob) MB in(2.1, 0.0 +9.1 blob) filtered(0.0, 0.0) out(1.0 +9.1 blob), read-write-amplify(1.9) write-amplify(0.9) OK, records in: 102832, records dropped: 819 output_compression: LZ4
2026/12/04-08:50:12.113230 647 (Original Log Time 2026/12/04-08:50:12.113120) EVENT_LOG_v1 {"time_micros": 1796374212113110, "job": 4, "event": "compaction_finished", "compaction_time_micros": 131000, "compaction_time_cpu_micros": 120500, "output_level": 6}
2026/12/04-08:50:11.394170 647 (Original Log Time 2026/12/04-08:50:11.391922) [db/compaction/compaction_job.cc:981] [offsets] compacted to: base level 6 files[0 0 0 0 0 0 1] max score 0.00, estimated pending compaction bytes 0, MB/sec: 1.0 rd, 0.2 wr, level 6, files in(4, 0) filtered(0, 0) out(1 +0 blob) MB in(0.0, 0.0 +0.0 blob) filtered(0.0, 0.0) out(0.5 +0.0 blob), read-write-amplify(1.2) write-amplify(0.2) OK, records in: 24, records dropped: 18 output_compression: LZ4
2026/12/04-08:50:11.394180 647 EVENT_LOG_v1 {"time_micros": 1796374211394170, "job": 3, "event": "compaction_finished", "compaction_time_micros": 900, "compaction_time_cpu_micros": 500, "output_level": 6}
2026/12/04-08:50:04.556619 648 (Original Log Time 2026/12/04-08:50:04.556611) EVENT_LOG_v1 {"time_micros": 1796374204556604, "job": 2, "event": "flush_finished", "output_compression": "NoCompression", "lsm_state": [0, 0, 0, 0, 0, 0, 0], "immutable_memtables": 1}"#;
        let c = compactions(log);
        assert_eq!(c.count, 2);
        assert_eq!(c.cpu, Duration::from_micros(121_000));
        assert_eq!(c.flushes, 1);
        // The state family's only: the offsets family's 24 records and 0.5 MB are not counted.
        assert_eq!(c.records_in, 102_832);
        assert!((c.table_mb_out - 1.0).abs() < 1e-9);
        assert!((c.blob_mb_out - 9.1).abs() < 1e-9);
    }

    #[test]
    fn the_changes_visit_every_key_once_per_pass_and_raise_its_version() {
        let scale = Scale {
            persons: 70,
            families: 30,
            changes: 250,
        };
        let person = api::Person {
            nis: "x".into(),
            municipality: "3550308".into(),
            ..Default::default()
        };
        let family = api::Family {
            family_id: "y".into(),
            ..Default::default()
        };
        let step = stride(100);
        let mut seen = std::collections::HashMap::<String, Vec<u64>>::new();
        for j in 0..scale.changes {
            let (_, offset, key, payload) = change(
                j,
                &scale,
                step,
                std::slice::from_ref(&person),
                std::slice::from_ref(&family),
            )
            .unwrap();
            assert_eq!(offset, j as i64);
            let version = match ChangeAsStored::decode(payload.unwrap().as_slice())
                .unwrap()
                .view
                .unwrap()
            {
                View::Person(b) => {
                    let p = api::Person::decode(b.as_slice()).unwrap();
                    assert_eq!(key, format!("person:{}", p.nis));
                    assert!(Nis::parse(&p.nis).is_ok());
                    assert_eq!(p.municipality, "3550308");
                    p.view_version
                }
                View::Family(b) => {
                    let f = api::Family::decode(b.as_slice()).unwrap();
                    assert_eq!(key, format!("family:{}", f.family_id));
                    f.view_version
                }
                View::Household(_) => unreachable!(),
            };
            seen.entry(key).or_default().push(version);
        }
        assert_eq!(seen.len(), 100, "every key written");
        assert_eq!(seen.keys().filter(|k| k.starts_with("person:")).count(), 70);
        // 250 changes of 100 keys: two passes and half a third, each pass one version more.
        assert_eq!(seen.values().filter(|v| *v == &[1, 2, 3]).count(), 50);
        assert_eq!(seen.values().filter(|v| *v == &[1, 2]).count(), 50);
    }

    #[test]
    fn the_stride_is_coprime_with_the_key_count() {
        for n in [1, 2, 10, 100, 1_000, 13_856_828, 24_857_863] {
            assert_eq!(gcd(stride(n), n), 1, "{n}");
        }
    }
}
