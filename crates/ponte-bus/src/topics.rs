//! The topic catalogue: every topic Ponte uses, and [`ensure`], which creates the missing ones
//! and corrects drifted settings so that running it twice changes nothing.
//!
//! Person-level topics are keyed by NIS and family-level topics by family id; topics the
//! reconciler joins must be co-partitioned, so they share one partition count
//! (`topics.partitions`) unless an operator overrides it deliberately.
use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use serde::Deserialize;

use crate::{BusError, KafkaConfig};

/// A topic of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// Monthly school attendance, keyed by NIS.
    EducationAttendance,
    /// Health follow-up records, keyed by the CNS or CPF they arrived with.
    HealthRecords,
    /// Registry person profiles (the monitored public and the id crosswalk), keyed by NIS.
    RegistryPersons,
    /// Person-level assistance records (SCFV attendance), keyed by NIS.
    AssistancePerson,
    /// Family-level assistance records (follow-up, interruption, appeals), keyed by family id.
    AssistanceFamily,
    /// The compliance view: latest state per person and family (compacted).
    ComplianceChanges,
    /// Newly non-compliant families and members for social assistance to act on.
    ComplianceAlerts,
    /// Records adapters could not accept, with the original bytes and the reason.
    DeadLetter,
    /// The audit log (`ponte.audit.v1`): every write, refusal and read, hash-chained per
    /// writer (crate ponte-audit).
    Audit,
    /// The reconciler's state changelog, one per consumer group and partition of the inputs,
    /// to rebuild a lost local store or hand a partition's state to another instance
    /// (compacted).
    ReconcilerChangelog,
    /// Reconciler-internal repartition topic: registry identifiers (CNS/CPF) claimed or released
    /// by a person, keyed by the identifier, co-partitioned with the health records.
    ReconcilerCrosswalk,
    /// Reconciler-internal repartition topic: health records resolved to a NIS (or withdrawn
    /// from one), keyed by NIS.
    ReconcilerHealthByNis,
    /// Reconciler-internal repartition topic: a member's outcomes for the family view, keyed by
    /// family id.
    ReconcilerMembers,
}

/// Cleanup policy of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    /// Segments are deleted after the retention time.
    Delete,
    /// The latest record per key is kept forever.
    Compact,
}

impl Cleanup {
    fn as_kafka(self) -> &'static str {
        match self {
            Cleanup::Delete => "delete",
            Cleanup::Compact => "compact",
        }
    }
}

impl Topic {
    /// Every shared topic, in catalogue order.
    pub const ALL: [Topic; 9] = [
        Topic::EducationAttendance,
        Topic::HealthRecords,
        Topic::RegistryPersons,
        Topic::AssistancePerson,
        Topic::AssistanceFamily,
        Topic::ComplianceChanges,
        Topic::ComplianceAlerts,
        Topic::DeadLetter,
        Topic::Audit,
    ];

    /// The topics private to one reconciler consumer group (named after the group, see
    /// [`TopicsConfig::reconciler_name`]), co-partitioned with the input topics.
    pub const RECONCILER: [Topic; 4] = [
        Topic::ReconcilerChangelog,
        Topic::ReconcilerCrosswalk,
        Topic::ReconcilerHealthByNis,
        Topic::ReconcilerMembers,
    ];

    /// Name without the configurable prefix.
    pub fn base_name(self) -> &'static str {
        match self {
            Topic::EducationAttendance => "education.attendance.v1",
            Topic::HealthRecords => "health.records.v1",
            Topic::RegistryPersons => "registry.persons.v1",
            Topic::AssistancePerson => "assistance.person.v1",
            Topic::AssistanceFamily => "assistance.family.v1",
            Topic::ComplianceChanges => "compliance.changes.v1",
            Topic::ComplianceAlerts => "compliance.alerts.v1",
            Topic::DeadLetter => "deadletter.v1",
            Topic::Audit => "audit.v1",
            Topic::ReconcilerChangelog => "changelog.v1",
            Topic::ReconcilerCrosswalk => "crosswalk.v1",
            Topic::ReconcilerHealthByNis => "health-by-nis.v1",
            Topic::ReconcilerMembers => "members.v1",
        }
    }

    /// What the Kafka key of the topic is.
    pub fn key(self) -> &'static str {
        match self {
            Topic::RegistryPersons | Topic::AssistancePerson | Topic::ReconcilerHealthByNis => {
                "NIS"
            }
            Topic::EducationAttendance => "NIS, or household id (household evidence)",
            Topic::HealthRecords => "CNS or CPF, or household id (household evidence)",
            Topic::ReconcilerCrosswalk => "CNS or CPF",
            Topic::AssistanceFamily => "family id or household id",
            Topic::ComplianceAlerts | Topic::ReconcilerMembers => "family id",
            Topic::ReconcilerChangelog => "state key",
            Topic::ComplianceChanges => "NIS, family id or household id",
            Topic::DeadLetter => "source system",
            Topic::Audit => "writer",
        }
    }

    /// The cleanup policy the topic needs.
    pub fn cleanup(self) -> Cleanup {
        match self {
            Topic::ComplianceChanges | Topic::ReconcilerChangelog => Cleanup::Compact,
            _ => Cleanup::Delete,
        }
    }

    /// How long the topic keeps what it holds: the topic configs Ponte sets so that no personal
    /// data stays longer than docs/privacy.md says. On a topic deleted by time, `retention.ms`;
    /// on a compacted one (a key's latest value is kept until the key is deleted), how long a
    /// deletion's tombstone stays readable (`delete.retention.ms`) and how long a superseded
    /// or deleted value may wait for compaction (`max.compaction.lag.ms`), which bounds how
    /// long an erased person's data stays on the broker's disks. `[topics.overrides]` wins.
    pub fn retention(self) -> &'static [(&'static str, &'static str)] {
        // 604800000 ms = 7 days, 2592000000 ms = 30 days, 86400000 ms = 1 day.
        match self {
            // The sector records: read by the reconciler within seconds; kept a week to ride
            // out an outage of the reconcilers. The sectors' own systems are their record.
            Topic::EducationAttendance
            | Topic::HealthRecords
            | Topic::RegistryPersons
            | Topic::AssistancePerson
            | Topic::AssistanceFamily
            // Repartition messages: consumed within seconds by the same deployment.
            | Topic::ReconcilerCrosswalk
            | Topic::ReconcilerHealthByNis
            | Topic::ReconcilerMembers => &[("retention.ms", "604800000")],
            // Alerts for social assistance to act on, and records that could not be applied:
            // a month to act on them.
            Topic::ComplianceAlerts | Topic::DeadLetter => &[("retention.ms", "2592000000")],
            // Who sent and who read what: kept five years (157680000000 ms) so a person can
            // learn who accessed their data over several programme cycles; identifiers in it
            // are keyed hashes. The controller decides the period (docs/privacy.md).
            Topic::Audit => &[("retention.ms", "157680000000")],
            // The view and the reconciler's state: every person's latest until erased. A
            // tombstone stays a day (a restore reads the changelog's tail within 12 h), and a
            // removed value is compacted away within a week.
            Topic::ComplianceChanges | Topic::ReconcilerChangelog => &[
                ("delete.retention.ms", "86400000"),
                ("max.compaction.lag.ms", "604800000"),
            ],
        }
    }

    /// The configs Ponte manages on the topic: its cleanup policy and its retention.
    fn managed_configs(self) -> BTreeMap<String, String> {
        let mut configs: BTreeMap<String, String> = self
            .retention()
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        configs.insert(
            "cleanup.policy".to_owned(),
            self.cleanup().as_kafka().to_owned(),
        );
        configs
    }
}

/// Per-topic overrides in `[topics.overrides."<base name>"]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicOverride {
    /// Partition count for this topic instead of `topics.partitions`.
    pub partitions: Option<i32>,
    /// Extra topic configs (`retention.ms`, `min.insync.replicas`, …).
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

/// The `[topics]` section of Ponte's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// Prepended to every topic name (`ponte.` gives `ponte.deadletter.v1`).
    pub prefix: String,
    /// Partition count of every topic unless overridden. Joined topics must share it.
    pub partitions: i32,
    /// Replication factor of every topic (1 for a local single broker, 3 in production).
    pub replication_factor: i32,
    #[serde(default)]
    pub overrides: BTreeMap<String, TopicOverride>,
}

/// The full specification of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub topic: Topic,
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// Topic configs Ponte manages, `cleanup.policy` always among them.
    pub configs: BTreeMap<String, String>,
}

impl TopicsConfig {
    /// Full name of a shared topic.
    pub fn name(&self, topic: Topic) -> String {
        format!("{}{}", self.prefix, topic.base_name())
    }

    /// Full name of a topic private to reconciler consumer group `group`:
    /// `<prefix>reconciler.<group>.<base name>`.
    pub fn reconciler_name(&self, topic: Topic, group: &str) -> String {
        format!("{}reconciler.{group}.{}", self.prefix, topic.base_name())
    }

    /// The topics private to reconciler group `group`, with `partitions` partitions (the
    /// partition count of the input topics they are co-partitioned with).
    pub fn reconciler_catalogue(
        &self,
        group: &str,
        partitions: i32,
    ) -> Result<Vec<TopicSpec>, BusError> {
        if group.is_empty()
            || !group
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(BusError::Config(format!(
                "reconciler.group_id {group:?}: names the reconciler's topics, so only ASCII \
                 letters, digits, '.', '_' and '-' are allowed"
            )));
        }
        if partitions < 1 || self.replication_factor < 1 {
            return Err(BusError::Config(
                "partitions and replication_factor must be >= 1".to_owned(),
            ));
        }
        Ok(Topic::RECONCILER
            .iter()
            .map(|&topic| TopicSpec {
                topic,
                name: self.reconciler_name(topic, group),
                partitions,
                replication_factor: self.replication_factor,
                configs: topic.managed_configs(),
            })
            .collect())
    }

    /// The catalogue: the specification of every topic Ponte uses.
    pub fn catalogue(&self) -> Result<Vec<TopicSpec>, BusError> {
        for key in self.overrides.keys() {
            if !Topic::ALL.iter().any(|t| t.base_name() == key) {
                return Err(BusError::Config(format!(
                    "topics.overrides.\"{key}\": no such topic; known: {}",
                    Topic::ALL.map(Topic::base_name).join(", ")
                )));
            }
        }
        Topic::ALL
            .iter()
            .map(|&topic| {
                let ov = self.overrides.get(topic.base_name());
                let partitions = ov.and_then(|o| o.partitions).unwrap_or(self.partitions);
                if partitions < 1 || self.replication_factor < 1 {
                    return Err(BusError::Config(format!(
                        "topic {}: partitions and replication_factor must be >= 1",
                        topic.base_name()
                    )));
                }
                // Retention from the catalogue unless overridden; the cleanup policy always.
                let mut configs = topic.managed_configs();
                if let Some(o) = ov {
                    configs.extend(o.configs.clone());
                }
                configs.insert(
                    "cleanup.policy".to_owned(),
                    topic.cleanup().as_kafka().to_owned(),
                );
                Ok(TopicSpec {
                    topic,
                    name: self.name(topic),
                    partitions,
                    replication_factor: self.replication_factor,
                    configs,
                })
            })
            .collect()
    }
}

/// What [`ensure`] did to one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicAction {
    /// The topic did not exist and was created.
    Created,
    /// The topic existed with the right settings.
    Unchanged,
    /// The topic existed; these managed configs were corrected (`key: old -> new`).
    ConfigsUpdated(Vec<String>),
}

/// The outcome of [`ensure`] for one topic.
#[derive(Debug, Clone)]
pub struct TopicReport {
    pub spec: TopicSpec,
    pub action: TopicAction,
    /// Settings that differ and that `ensure` does not change on its own (partition count,
    /// replication): changing them re-partitions keyed data, an operator decision.
    pub warnings: Vec<String>,
}

fn admin_err(topic: &str, reason: impl std::fmt::Display) -> BusError {
    BusError::Admin {
        topic: topic.to_owned(),
        reason: reason.to_string(),
    }
}

/// Makes the cluster match the catalogue: creates missing topics, corrects managed configs of
/// existing ones, and reports partition-count drift without touching it. Idempotent.
pub async fn ensure(
    kafka: &KafkaConfig,
    topics: &TopicsConfig,
    timeout: Duration,
) -> Result<Vec<TopicReport>, BusError> {
    ensure_specs(kafka, topics.catalogue()?, timeout).await
}

/// The managed settings of `spec` that `current` does not hold, as `key: have -> want`.
fn drift_of(
    spec: &TopicSpec,
    current: &std::collections::HashMap<&str, &rdkafka::admin::ConfigEntry>,
) -> Vec<String> {
    spec.configs
        .iter()
        .filter_map(|(k, want)| {
            let have = current.get(k.as_str()).and_then(|e| e.value.as_deref());
            (have != Some(want.as_str()))
                .then(|| format!("{k}: {} -> {want}", have.unwrap_or("(unset)")))
        })
        .collect()
}

fn refuse_no_settings(topic: &str, empty: bool, what: &str) -> Result<(), BusError> {
    if empty {
        return Err(admin_err(
            topic,
            format!(
                "{what}: the broker returned no settings (not authorized to describe its configs?)"
            ),
        ));
    }
    Ok(())
}

/// [`ensure`] for any list of specifications (for example a reconciler group's own topics).
pub async fn ensure_specs(
    kafka: &KafkaConfig,
    specs: Vec<TopicSpec>,
    timeout: Duration,
) -> Result<Vec<TopicReport>, BusError> {
    let admin: AdminClient<DefaultClientContext> = kafka
        .client_config("ponte-topics")
        .create()
        .map_err(|e| BusError::Config(e.to_string()))?;
    let opts = AdminOptions::new()
        .request_timeout(Some(timeout))
        .operation_timeout(Some(timeout));

    let metadata = admin
        .inner()
        .fetch_metadata(None, timeout)
        .map_err(|e| BusError::Unavailable(format!("fetching cluster metadata: {e}")))?;
    let existing: BTreeMap<String, usize> = metadata
        .topics()
        .iter()
        .map(|t| (t.name().to_owned(), t.partitions().len()))
        .collect();

    let mut reports = Vec::with_capacity(specs.len());
    let missing: Vec<&TopicSpec> = specs
        .iter()
        .filter(|s| !existing.contains_key(&s.name))
        .collect();
    if !missing.is_empty() {
        let new_topics: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|s| {
                let mut nt = NewTopic::new(
                    &s.name,
                    s.partitions,
                    TopicReplication::Fixed(s.replication_factor),
                );
                for (k, v) in &s.configs {
                    nt = nt.set(k, v);
                }
                nt
            })
            .collect();
        let results = admin
            .create_topics(new_topics.iter(), &opts)
            .await
            .map_err(|e| BusError::Unavailable(format!("creating topics: {e}")))?;
        for result in results {
            match result {
                Ok(_) => {}
                // Created concurrently by another `ensure`: verified below like any other.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => return Err(admin_err(&name, code)),
            }
        }
    }

    for spec in &specs {
        if missing.iter().any(|m| m.name == spec.name) {
            reports.push(TopicReport {
                spec: spec.clone(),
                action: TopicAction::Created,
                warnings: Vec::new(),
            });
            continue;
        }
        let mut warnings = Vec::new();
        if let Some(&count) = existing.get(&spec.name)
            && count != spec.partitions as usize
        {
            warnings.push(format!(
                "has {count} partitions, the catalogue says {}; not changed (re-partitioning moves keys)",
                spec.partitions
            ));
        }
        let described = admin
            .describe_configs([&ResourceSpecifier::Topic(&spec.name)], &opts)
            .await
            .map_err(|e| BusError::Unavailable(format!("describing {}: {e}", spec.name)))?;
        let resource = described
            .into_iter()
            .next()
            .ok_or_else(|| admin_err(&spec.name, "no config description returned"))?
            .map_err(|code| admin_err(&spec.name, code))?;
        // A topic always has settings (defaults included): none means the broker refused the
        // description, whose error code rdkafka 0.38 does not pass on (e.g. a principal without
        // DescribeConfigs on the topic).
        refuse_no_settings(&spec.name, resource.entries.is_empty(), "describing")?;
        let drift = drift_of(spec, &resource.entry_map());
        let action = if drift.is_empty() {
            TopicAction::Unchanged
        } else {
            // AlterConfigs replaces the topic's dynamic configs as a whole, so send every
            // managed one, not just the drifted keys.
            let mut alter = AlterConfig::new(ResourceSpecifier::Topic(&spec.name));
            for (k, v) in &spec.configs {
                alter = alter.set(k, v);
            }
            let results = admin
                .alter_configs([&alter], &opts)
                .await
                .map_err(|e| BusError::Unavailable(format!("altering {}: {e}", spec.name)))?;
            for r in results {
                r.map_err(|(_, code)| admin_err(&spec.name, code))?;
            }
            // rdkafka 0.38 drops AlterConfigs' per-topic errors too: read the settings back and
            // report "updated" only when the broker applied them. A broker applies an accepted
            // change from the controller's log a moment later, so a first read may still show
            // the old value: read again until it shows the new one or `timeout` has passed.
            let deadline = std::time::Instant::now() + timeout;
            loop {
                let after = admin
                    .describe_configs([&ResourceSpecifier::Topic(&spec.name)], &opts)
                    .await
                    .map_err(|e| BusError::Unavailable(format!("describing {}: {e}", spec.name)))?
                    .into_iter()
                    .next()
                    .ok_or_else(|| admin_err(&spec.name, "no config description returned"))?
                    .map_err(|code| admin_err(&spec.name, code))?;
                let left = drift_of(spec, &after.entry_map());
                if left.is_empty() {
                    break;
                }
                if std::time::Instant::now() >= deadline {
                    return Err(admin_err(
                        &spec.name,
                        format!(
                            "the broker did not apply the settings within {timeout:?} (not authorized to alter them?): {}",
                            left.join(", ")
                        ),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            TopicAction::ConfigsUpdated(drift)
        };
        reports.push(TopicReport {
            spec: spec.clone(),
            action,
            warnings,
        });
    }
    Ok(reports)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cfg() -> TopicsConfig {
        TopicsConfig {
            prefix: "ponte.".into(),
            partitions: 6,
            replication_factor: 1,
            overrides: BTreeMap::new(),
        }
    }

    #[test]
    fn catalogue_names_every_architecture_topic_with_the_prefix() {
        let names: Vec<String> = cfg()
            .catalogue()
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        for expected in [
            "ponte.compliance.changes.v1",
            "ponte.compliance.alerts.v1",
            "ponte.deadletter.v1",
            "ponte.education.attendance.v1",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} missing from {names:?}"
            );
        }
    }

    #[test]
    fn the_view_and_the_changelog_are_compacted_and_inputs_are_not() {
        for spec in cfg().catalogue().unwrap() {
            let policy = spec.configs.get("cleanup.policy").unwrap();
            let want = match spec.topic {
                Topic::ComplianceChanges => "compact",
                _ => "delete",
            };
            assert_eq!(policy, want, "{}", spec.name);
        }
        let internal = cfg().reconciler_catalogue("g-1", 6).unwrap();
        for spec in internal {
            let policy = spec.configs.get("cleanup.policy").unwrap();
            let want = match spec.topic {
                Topic::ReconcilerChangelog => "compact",
                _ => "delete",
            };
            assert_eq!(policy, want, "{}", spec.name);
        }
    }

    #[test]
    fn reconciler_topics_are_named_after_the_group_which_must_be_a_topic_name() {
        let names: Vec<String> = cfg()
            .reconciler_catalogue("ponte-reconciler", 3)
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(
            names,
            [
                "ponte.reconciler.ponte-reconciler.changelog.v1",
                "ponte.reconciler.ponte-reconciler.crosswalk.v1",
                "ponte.reconciler.ponte-reconciler.health-by-nis.v1",
                "ponte.reconciler.ponte-reconciler.members.v1",
            ]
        );
        let err = cfg()
            .reconciler_catalogue("a/b", 3)
            .unwrap_err()
            .to_string();
        assert!(err.contains("group_id"), "{err}");
    }

    #[test]
    fn every_topic_says_how_long_it_keeps_what_it_holds() {
        let mut specs = cfg().catalogue().unwrap();
        specs.extend(cfg().reconciler_catalogue("g-1", 6).unwrap());
        for spec in specs {
            let get = |k: &str| spec.configs.get(k).map(String::as_str);
            match spec.topic.cleanup() {
                Cleanup::Delete => assert!(get("retention.ms").is_some(), "{}", spec.name),
                Cleanup::Compact => {
                    assert_eq!(
                        get("delete.retention.ms"),
                        Some("86400000"),
                        "{}",
                        spec.name
                    );
                    assert_eq!(
                        get("max.compaction.lag.ms"),
                        Some("604800000"),
                        "{}",
                        spec.name
                    );
                }
            }
            if spec.topic == Topic::DeadLetter {
                assert_eq!(get("retention.ms"), Some("2592000000"), "30 days");
            }
        }
    }

    #[test]
    fn joined_topics_are_co_partitioned_by_default() {
        let specs = cfg().catalogue().unwrap();
        assert!(specs.iter().all(|s| s.partitions == 6));
    }

    #[test]
    fn overrides_apply_and_unknown_override_names_are_rejected() {
        let mut c = cfg();
        c.overrides.insert(
            "deadletter.v1".into(),
            TopicOverride {
                partitions: Some(1),
                configs: [("retention.ms".to_owned(), "1000".to_owned())].into(),
            },
        );
        let dl = c
            .catalogue()
            .unwrap()
            .into_iter()
            .find(|s| s.topic == Topic::DeadLetter)
            .unwrap();
        assert_eq!(dl.partitions, 1);
        assert_eq!(
            dl.configs.get("retention.ms").map(String::as_str),
            Some("1000")
        );

        c.overrides
            .insert("no.such.v1".into(), TopicOverride::default());
        let err = c.catalogue().unwrap_err().to_string();
        assert!(err.contains("no.such.v1"), "{err}");
    }
}
