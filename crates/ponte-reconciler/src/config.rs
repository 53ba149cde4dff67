//! The `[reconciler]` section of the configuration, typed and checked when it is loaded: a
//! month that does not parse, a window that ends before it starts, a timeout Kafka would refuse
//! or a zero batch stops `ponte` before anything connects, naming the key.
use std::path::PathBuf;
use std::time::Duration;

use ponte_domain::achievements::AchievementRuleSet;
use ponte_domain::period::Month;
use ponte_domain::rules::RuleSet;
use serde::Deserialize;

use crate::ReconcilerError;
use crate::topology::Topology;

/// The `[reconciler]` section of the configuration (keys and defaults in
/// `crates/ponte/config/default.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct ReconcilerConfig {
    /// Address of the gRPC API, e.g. `127.0.0.1:50051`.
    pub grpc_listen: String,
    /// Address of the admin endpoint (metrics, health).
    pub admin_listen: String,
    /// Directory of the embedded state store (one per instance; never shared).
    pub state_dir: PathBuf,
    /// Kafka consumer group of the reconciler instances.
    pub group_id: String,
    /// Most events in one epoch (`batch_max`, at least 1): messages the consumer loop takes,
    /// input records and repartition messages alike.
    pub batch_max: usize,
    /// How long after its first event a partly filled epoch is committed at the latest
    /// (`batch_linger_ms`).
    pub batch_linger: Duration,
    /// Larger, longer epochs while the consumer is behind.
    pub behind: Behind,
    /// Threads applying an epoch's partitions at once (`apply_threads`, 1 to 64): one per
    /// core the reconciler may use.
    pub apply_threads: usize,
    /// How long an epoch's Kafka transaction may stay open before the broker aborts it: also
    /// how long a stalled or crashed instance's unfinished epoch can hold up the partitions'
    /// next owner and `read_committed` readers (`transaction_timeout_ms`, 1 s to 15 min — the
    /// broker's default `transaction.max.timeout.ms`).
    pub transaction_timeout: Duration,
    /// Consumer group session timeout: how long the partitions of an instance that died
    /// without leaving the group wait before another instance takes them
    /// (`session_timeout_ms`, 6 s to 30 min — the broker's default group limits).
    pub session_timeout: Duration,
    /// A stable name of this instance in the consumer group (Kafka static membership); empty
    /// for a new member on every start. See docs/operations.md, "Restarts".
    pub instance_id: String,
    /// Rule-set TOML file; empty for the built-in Bolsa Família 2023 rule set.
    pub rules_file: String,
    /// Household-achievement rule-set TOML file (`rules/unidos-2021.toml`): the reconciler
    /// also follows households with it. Empty: no household stage (household records are
    /// dead-lettered as unsupported).
    pub achievement_rules_file: String,
    /// First month of the monitoring window: every period overlapping the window is evaluated
    /// for every registered person.
    pub monitor_from: Month,
    /// Last month of the monitoring window (not before `monitor_from`).
    pub monitor_to: Month,
    /// Memory of the state store (RocksDB block cache with the memtables charged to it), MiB.
    pub state_memory_mb: usize,
    /// How the state store is compacted (`state_compaction`).
    pub state_compaction: StateCompaction,
    /// Reads of the partitions other instances own, asked of them (`[reconciler.peer]`).
    pub peer: PeerConfig,
    /// Keys set that this version does not use (logged at startup): `read_model_memory_mb`,
    /// of versions that kept a read model.
    pub ignored: Vec<&'static str>,
}

/// `[reconciler.peer]`: how an instance reads the persons and families of the partitions
/// another instance owns from that instance, and is read from (docs/operations.md, "Reads
/// across instances").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// `host:port` at which the other instances reach this instance's gRPC listener (its
    /// server certificate must name the host). `None` (`advertise = ""`): this instance
    /// neither asks nor is asked, and answers `UNAVAILABLE` for partitions it does not own.
    pub advertise: Option<String>,
    /// The CA bundle the other instances' server certificates chain to (`ca_file`).
    pub ca_file: PathBuf,
    /// This instance's client certificate for peer reads, naming a principal with the `peer`
    /// right (`cert_file`), and its key (`key_file`).
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// How long a peer read may take before it is given up and answered another way
    /// (`timeout_ms`, 10 ms to 10 s); a peer that failed is not asked again for `refresh`.
    pub timeout: Duration,
    /// How often the group's description (who owns which partition, at which address) is
    /// read again (`refresh_ms`, 100 ms to 60 s).
    pub refresh: Duration,
}

/// `[reconciler.peer]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    #[serde(default)]
    advertise: String,
    #[serde(default)]
    ca_file: PathBuf,
    #[serde(default)]
    cert_file: PathBuf,
    #[serde(default)]
    key_file: PathBuf,
    #[serde(default = "default_peer_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_peer_refresh_ms")]
    refresh_ms: u64,
}

impl Default for RawPeer {
    fn default() -> Self {
        RawPeer {
            advertise: String::new(),
            ca_file: PathBuf::new(),
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            timeout_ms: default_peer_timeout_ms(),
            refresh_ms: default_peer_refresh_ms(),
        }
    }
}

fn default_peer_timeout_ms() -> u64 {
    1_000
}

fn default_peer_refresh_ms() -> u64 {
    2_000
}

impl TryFrom<RawPeer> for PeerConfig {
    type Error = String;

    fn try_from(raw: RawPeer) -> Result<Self, String> {
        let advertise = match raw.advertise.trim() {
            "" => None,
            a => {
                let port = a
                    .rsplit_once(':')
                    .map(|(host, port)| (host, port.parse::<u16>()));
                if !matches!(port, Some((host, Ok(p))) if !host.is_empty() && p > 0) {
                    return Err(format!(
                        "reconciler.peer.advertise: {a:?} is not host:port (e.g. reconciler-1.ponte:50051)"
                    ));
                }
                if a.contains(';') || a.contains('/') || a.chars().any(char::is_whitespace) {
                    return Err(format!(
                        "reconciler.peer.advertise: {a:?} holds ';', '/' or spaces: write host:port"
                    ));
                }
                Some(a.to_owned())
            }
        };
        Ok(PeerConfig {
            advertise,
            ca_file: raw.ca_file,
            cert_file: raw.cert_file,
            key_file: raw.key_file,
            timeout: millis("peer.timeout_ms", raw.timeout_ms, 10, 10_000)?,
            refresh: millis("peer.refresh_ms", raw.refresh_ms, 100, 60_000)?,
        })
    }
}

/// The epochs of a consumer that is behind: an epoch is *behind* once a message fetched for it
/// was created more than `after` before it was fetched (a backlog: a bulk upload, a restart, an
/// instance taking over partitions). It is then committed at `batch_max` events or `linger`
/// after its first event, in place of `batch_max`/`batch_linger`: a backlog is worked off in
/// fewer, larger transactions, each key written and sent once per epoch, while records that
/// arrive at the pace they are made still wait at most `batch_linger` (docs/operations.md,
/// "Epochs").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Behind {
    /// `behind_after_ms`, 100 ms to 1 h.
    pub after: Duration,
    /// `behind_batch_max`, at least 1.
    pub batch_max: usize,
    /// `behind_linger_ms`, 0 to 60 s.
    pub linger: Duration,
}

/// How the state store is compacted: the trade between the CPU its compactions take and the
/// disk it holds (docs/operations.md, "Epochs").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateCompaction {
    /// By size tiers (`"tiers"`, the default): each value rewritten fewer times, the store up
    /// to about three times its live size on disk before a whole merge.
    Tiers,
    /// Level by level (`"levels"`): more CPU and disk writes, the store about its live size.
    Levels,
}

impl StateCompaction {
    /// The store layout it stands for.
    pub fn layout(self) -> ponte_store::Layout {
        match self {
            StateCompaction::Tiers => crate::topology::STATE_LAYOUT,
            StateCompaction::Levels => ponte_store::Layout::Leveled,
        }
    }
}

/// The section as written; [`ReconcilerConfig`] is what it means.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    grpc_listen: String,
    admin_listen: String,
    state_dir: PathBuf,
    group_id: String,
    batch_max: usize,
    batch_linger_ms: u64,
    #[serde(default = "default_behind_after_ms")]
    behind_after_ms: u64,
    #[serde(default = "default_behind_batch_max")]
    behind_batch_max: usize,
    #[serde(default = "default_behind_linger_ms")]
    behind_linger_ms: u64,
    #[serde(default = "default_apply_threads")]
    apply_threads: usize,
    transaction_timeout_ms: u64,
    session_timeout_ms: u64,
    instance_id: String,
    rules_file: String,
    #[serde(default)]
    achievement_rules_file: String,
    monitor_from: Month,
    monitor_to: Month,
    state_memory_mb: usize,
    /// The read model's memory, of versions that kept one: accepted so that their files
    /// load, and ignored ([`ReconcilerConfig::ignored`]).
    #[serde(default)]
    read_model_memory_mb: Option<usize>,
    #[serde(default = "default_state_compaction")]
    state_compaction: String,
    #[serde(default)]
    peer: RawPeer,
}

fn default_behind_after_ms() -> u64 {
    1_000
}

fn default_behind_batch_max() -> usize {
    10_000
}

fn default_behind_linger_ms() -> u64 {
    150
}

fn default_apply_threads() -> usize {
    2
}

fn default_state_compaction() -> String {
    "tiers".to_owned()
}

/// `value` in milliseconds when it lies in `min..=max`, else what the key must be.
fn millis(key: &str, value: u64, min: u64, max: u64) -> Result<Duration, String> {
    if (min..=max).contains(&value) {
        Ok(Duration::from_millis(value))
    } else {
        Err(format!(
            "reconciler.{key}: {value} is outside {min}..={max} ms"
        ))
    }
}

/// Smallest store memory that still holds the memtables of every column family, MiB.
const MIN_STORE_MEMORY_MB: usize = 16;

impl TryFrom<RawConfig> for ReconcilerConfig {
    type Error = String;

    fn try_from(raw: RawConfig) -> Result<Self, String> {
        if raw.batch_max == 0 {
            return Err("reconciler.batch_max: must be at least 1".to_owned());
        }
        if raw.behind_batch_max == 0 {
            return Err("reconciler.behind_batch_max: must be at least 1".to_owned());
        }
        if !(1..=64).contains(&raw.apply_threads) {
            return Err(format!(
                "reconciler.apply_threads: {} is outside 1..=64",
                raw.apply_threads
            ));
        }
        if raw.monitor_from > raw.monitor_to {
            return Err(format!(
                "reconciler.monitor_from: {} is after monitor_to {}",
                raw.monitor_from, raw.monitor_to
            ));
        }
        if raw.group_id.trim().is_empty() {
            return Err("reconciler.group_id: must not be empty".to_owned());
        }
        if raw.state_memory_mb < MIN_STORE_MEMORY_MB {
            return Err(format!(
                "reconciler.state_memory_mb: {} is below {MIN_STORE_MEMORY_MB} MiB",
                raw.state_memory_mb
            ));
        }
        let state_compaction = match raw.state_compaction.as_str() {
            "tiers" => StateCompaction::Tiers,
            "levels" => StateCompaction::Levels,
            other => {
                return Err(format!(
                    "reconciler.state_compaction: {other:?} is not \"tiers\" or \"levels\""
                ));
            }
        };
        Ok(Self {
            state_compaction,
            peer: PeerConfig::try_from(raw.peer)?,
            batch_linger: millis("batch_linger_ms", raw.batch_linger_ms, 0, 60_000)?,
            behind: Behind {
                after: millis("behind_after_ms", raw.behind_after_ms, 100, 3_600_000)?,
                batch_max: raw.behind_batch_max,
                linger: millis("behind_linger_ms", raw.behind_linger_ms, 0, 60_000)?,
            },
            transaction_timeout: millis(
                "transaction_timeout_ms",
                raw.transaction_timeout_ms,
                1_000,
                900_000,
            )?,
            session_timeout: millis(
                "session_timeout_ms",
                raw.session_timeout_ms,
                6_000,
                1_800_000,
            )?,
            grpc_listen: raw.grpc_listen,
            admin_listen: raw.admin_listen,
            state_dir: raw.state_dir,
            group_id: raw.group_id,
            batch_max: raw.batch_max,
            apply_threads: raw.apply_threads,
            instance_id: raw.instance_id,
            rules_file: raw.rules_file,
            achievement_rules_file: raw.achievement_rules_file,
            monitor_from: raw.monitor_from,
            monitor_to: raw.monitor_to,
            state_memory_mb: raw.state_memory_mb,
            ignored: raw
                .read_model_memory_mb
                .map(|_| "reconciler.read_model_memory_mb")
                .into_iter()
                .collect(),
        })
    }
}

/// The built-in rule set (rules/bolsa-familia-2023.toml).
const BUILTIN_RULES: &str = include_str!("../../../rules/bolsa-familia-2023.toml");

/// Builds the topology from the configuration: rule set and monitoring window.
pub fn topology_from(cfg: &ReconcilerConfig) -> Result<Topology, ReconcilerError> {
    let (name, text) = if cfg.rules_file.is_empty() {
        (
            "rules/bolsa-familia-2023.toml".to_owned(),
            BUILTIN_RULES.to_owned(),
        )
    } else {
        let text = std::fs::read_to_string(&cfg.rules_file).map_err(|e| {
            ReconcilerError::Startup(format!("reconciler.rules_file {}: {e}", cfg.rules_file))
        })?;
        (cfg.rules_file.clone(), text)
    };
    let rules = RuleSet::from_toml_str(&name, &text)
        .map_err(|e| ReconcilerError::Startup(e.to_string()))?;
    let topology = Topology::new(rules, cfg.monitor_from, cfg.monitor_to);
    if cfg.achievement_rules_file.is_empty() {
        return Ok(topology);
    }
    let file = &cfg.achievement_rules_file;
    let text = std::fs::read_to_string(file).map_err(|e| {
        ReconcilerError::Startup(format!("reconciler.achievement_rules_file {file}: {e}"))
    })?;
    let achievements = AchievementRuleSet::from_toml_str(file, &text)
        .map_err(|e| ReconcilerError::Startup(e.to_string()))?;
    Ok(topology.with_achievements(achievements))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn section(overrides: &[(&str, &str)]) -> String {
        let mut keys: Vec<(String, String)> = [
            ("grpc_listen", "\"127.0.0.1:50051\""),
            ("admin_listen", "\"127.0.0.1:9190\""),
            ("state_dir", "\"x\""),
            ("group_id", "\"ponte-reconciler\""),
            ("batch_max", "5000"),
            ("batch_linger_ms", "50"),
            ("transaction_timeout_ms", "10000"),
            ("session_timeout_ms", "45000"),
            ("instance_id", "\"\""),
            ("rules_file", "\"\""),
            ("monitor_from", "\"2025-01\""),
            ("monitor_to", "\"2025-12\""),
            ("state_memory_mb", "256"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        for (k, v) in overrides {
            keys.retain(|(key, _)| key != k);
            keys.push(((*k).to_owned(), (*v).to_owned()));
        }
        keys.iter().map(|(k, v)| format!("{k} = {v}\n")).collect()
    }

    fn parse(overrides: &[(&str, &str)]) -> Result<ReconcilerConfig, String> {
        toml::from_str(&section(overrides)).map_err(|e| e.to_string())
    }

    #[test]
    fn the_defaults_load_as_durations_and_months() {
        let cfg = parse(&[]).unwrap();
        assert_eq!(cfg.batch_linger, Duration::from_millis(50));
        assert_eq!(cfg.transaction_timeout, Duration::from_secs(10));
        assert_eq!(cfg.session_timeout, Duration::from_secs(45));
        assert_eq!(cfg.monitor_from, Month::parse("2025-01").unwrap());
        assert_eq!(cfg.state_compaction, StateCompaction::Tiers);
        assert_eq!(cfg.apply_threads, 2);
        assert_eq!(
            cfg.behind,
            Behind {
                after: Duration::from_secs(1),
                batch_max: 10_000,
                linger: Duration::from_millis(150),
            }
        );
        assert!(topology_from(&cfg).is_ok());
    }

    #[test]
    fn an_instance_reads_other_partitions_from_their_owners_only_when_it_advertises_itself() {
        let off = parse(&[]).unwrap().peer;
        assert_eq!(off.advertise, None);
        assert_eq!(off.timeout, Duration::from_secs(1));
        assert_eq!(off.refresh, Duration::from_secs(2));
        let on = parse(&[(
            "peer",
            "{ advertise = \"reconciler-1.ponte:50051\", ca_file = \"ca.pem\", \
             cert_file = \"r.pem\", key_file = \"r-key.pem\", timeout_ms = 200 }",
        )])
        .unwrap()
        .peer;
        assert_eq!(on.advertise.as_deref(), Some("reconciler-1.ponte:50051"));
        assert_eq!(on.cert_file, PathBuf::from("r.pem"));
        assert_eq!(on.timeout, Duration::from_millis(200));
    }

    #[test]
    fn the_state_store_is_compacted_by_size_tiers_unless_levels_are_asked_for() {
        let levels = parse(&[("state_compaction", "\"levels\"")]).unwrap();
        assert_eq!(levels.state_compaction, StateCompaction::Levels);
        assert_eq!(
            levels.state_compaction.layout(),
            ponte_store::Layout::Leveled
        );
        let tiers = parse(&[("state_compaction", "\"tiers\"")]).unwrap();
        assert_eq!(
            tiers.state_compaction.layout(),
            crate::topology::STATE_LAYOUT
        );
        assert!(matches!(
            crate::topology::STATE_LAYOUT,
            ponte_store::Layout::Tiered { .. }
        ));
    }

    #[test]
    fn a_file_of_a_version_with_a_read_model_loads_and_its_memory_key_is_named_ignored() {
        assert!(parse(&[]).unwrap().ignored.is_empty());
        let old = parse(&[("read_model_memory_mb", "128")]).unwrap();
        assert_eq!(old.ignored, vec!["reconciler.read_model_memory_mb"]);
    }

    #[test]
    fn an_achievement_rule_set_loads_and_a_broken_one_stops_the_start_naming_the_file() {
        let unidos = concat!(env!("CARGO_MANIFEST_DIR"), "/../../rules/unidos-2021.toml");
        let cfg = parse(&[("achievement_rules_file", &format!("{unidos:?}"))]).unwrap();
        assert_eq!(cfg.achievement_rules_file, unidos);
        assert!(topology_from(&cfg).unwrap().follows_households());
        assert!(
            !topology_from(&parse(&[]).unwrap())
                .unwrap()
                .follows_households()
        );
        let dir = tempfile::tempdir().unwrap();
        let broken = dir.path().join("broken.toml");
        std::fs::write(&broken, "[rule_set]\nid = 1\n").unwrap();
        let cfg = parse(&[("achievement_rules_file", &format!("{broken:?}"))]).unwrap();
        let err = topology_from(&cfg).unwrap_err().to_string();
        assert!(err.contains("broken.toml"), "{err}");
    }

    #[test]
    fn a_value_kafka_or_the_window_would_refuse_stops_the_load_naming_its_key() {
        for (key, value, says) in [
            ("batch_max", "0", "reconciler.batch_max"),
            ("apply_threads", "0", "reconciler.apply_threads"),
            ("behind_batch_max", "0", "reconciler.behind_batch_max"),
            ("behind_after_ms", "10", "reconciler.behind_after_ms"),
            ("behind_linger_ms", "60001", "reconciler.behind_linger_ms"),
            ("apply_threads", "65", "reconciler.apply_threads"),
            ("monitor_from", "\"2025-13\"", "monitor_from"),
            ("monitor_to", "\"2024-12\"", "reconciler.monitor_from"),
            (
                "transaction_timeout_ms",
                "500",
                "reconciler.transaction_timeout_ms",
            ),
            (
                "transaction_timeout_ms",
                "3600000",
                "reconciler.transaction_timeout_ms",
            ),
            (
                "session_timeout_ms",
                "1000",
                "reconciler.session_timeout_ms",
            ),
            ("state_memory_mb", "1", "reconciler.state_memory_mb"),
            (
                "state_compaction",
                "\"sideways\"",
                "reconciler.state_compaction",
            ),
            ("group_id", "\" \"", "reconciler.group_id"),
            ("batch_lingr_ms", "5", "batch_lingr_ms"),
            (
                "peer",
                "{ advertise = \"r1\" }",
                "reconciler.peer.advertise",
            ),
            (
                "peer",
                "{ advertise = \":50051\" }",
                "reconciler.peer.advertise",
            ),
            (
                "peer",
                "{ advertise = \"https://r1:50051\" }",
                "reconciler.peer.advertise",
            ),
            ("peer", "{ timeout_ms = 5 }", "reconciler.peer.timeout_ms"),
            ("peer", "{ refresh_ms = 0 }", "reconciler.peer.refresh_ms"),
            ("peer", "{ advertize = \"r1:50051\" }", "advertize"),
        ] {
            let err = parse(&[(key, value)]).unwrap_err();
            assert!(err.contains(says), "{key} = {value}: {err}");
        }
    }
}
