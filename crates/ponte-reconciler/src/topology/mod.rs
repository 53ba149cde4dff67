//! The reconciliation topology, as a pure function of (state, event) → (state changes, outputs).
//!
//! Driven by the service's consumer loop with the RocksDB store as state, and by property tests
//! with a map, so the guarantees are tested without a broker. Never reads the clock: the times
//! written into views come from the events.
//!
//! Three stages, each keyed so that everything it joins is on one partition — the unit an
//! instance owns, restores and hands over (Kafka Streams' sub-topologies):
//!
//! 1. **Identity** (keyed by CNS/CPF: the health topic and the group's `crosswalk.v1`): a
//!    health record is forwarded, re-keyed by NIS, to `health-by-nis.v1` when the crosswalk
//!    maps its identifier; otherwise it is parked (never dropped) until a profile claims the
//!    identifier. A claim moves the records that arrived under it (withdrawn from the previous
//!    holder), a release parks them again. Records that arrive with a NIS go straight through.
//! 2. **Person** (keyed by NIS: registry, education, person-level assistance,
//!    `health-by-nis.v1`): the person's records and view; a profile's identifiers go to
//!    `crosswalk.v1` as claims and releases, and the person's outcomes to the family's
//!    partition through `members.v1`.
//! 3. **Family** (keyed by family id: family-level assistance, `members.v1`): the members'
//!    outcomes, follow-up, appeals and the effects ladder.
//! 4. **Household** (keyed by household id: household profiles and evidence on the assistance
//!    family, education and health topics), only with a household-achievement rule set:
//!    each achievement's state and the exit test (`household.rs`).
//!
//! State layout (keys in the store's `state` column family, each under the prefix of its input
//! partition, [`partition_prefix`]; each prefix is one typed table of `tables.rs`, which holds
//! the key layout and the value's encoding):
//!
//! | key | value |
//! |---|---|
//! | `x/<cns:…\|cpf:…>` | crosswalk: the NIS an alternate identifier belongs to |
//! | `a/<alt>` | every health record that arrived as `<alt>` ([`HeldHealthRecords`]): forwarded while `x/<alt>` maps the identifier, parked while it maps to no one |
//! | `n/parked` | how many health records of the partition are parked ([`ParkedCount`]) |
//! | `p/<nis>` | the person ([`PersonEntry`], format 3: protobuf throughout): records (every entry, tombstones included), their sources, the digest of the last published view, the identifiers the profile carries |
//! | `f/<family id>` | the family's assistance records (JSON) |
//! | `fm/<family id>` | the family's members and their non-compliant outcomes, the digest of the last family view ([`FamilyMembersEntry`]) |
//! | `h/<household id>` | a followed household (Unidos): its profile and evidence entries, their sources, the last evaluation day, the view's digest and time, and what the household index holds of it (JSON) |
//! | `mi/<municipality>/<nis>` | the municipality index: the partition's persons whose view names the municipality (empty value; `index.rs`) |
//! | `ic/<municipality>/<conditionality>/<period>` | the partition's outcome counts of the municipality (`IndicatorCounts`; `index.rs`) |
//! | `hx/<DIVIPOLA municipality>/<household id>` | the household index: the partition's followed households of the municipality, and what their indicators count (`HouseholdCounted`; `index.rs`) |
//!
//! The last three are derived from the persons' digests and the households' docs and kept in
//! the local store only, never on the changelog: a restore derives them from the `p/` and `h/`
//! entries it applies (`index.rs`).
//!
//! An event changes one key of its stage, so an epoch writes (and sends to the changelog) one
//! entry per person or family it touched. Stores written before this layout kept the digests
//! under `d/p/`, `d/f/` (or whole views under `v/p/`, `v/f/`) and the identifiers under `xo/`;
//! they are read when the `p/` or `fm/` value is in that format (JSON), and deleted with its
//! next write. Stores written before `a/` kept one key per health record, `e/<alt>/<record id>`
//! when forwarded and `k/<alt>/<record id>` when parked (so a claim or a release moved each
//! record between them, two changelog entries a record); those are moved into `a/<alt>` the
//! next time the identifier is touched, and `n/parked` is first counted from the `k/` keys.
//!
//! Views go out on `compliance.changes.v1`. Reads of an owned partition are computed from this
//! state (a person's, family's or household's view, a municipality's persons and counts from the
//! index), those of other partitions asked of their owners ([`crate::peers`]).
//!
//! Files: this one routes an event to its stage; `identity.rs`, `person.rs` and `family.rs`
//! are the stages; `state.rs` the epoch's view of the state ([`Tx`]) and its partitions;
//! `tables.rs` the typed tables the stages keep in it; `parked.rs` the parked records of the
//! owned partitions, counted, and the scans of the layout before `a/` skipped where a partition
//! holds none; `person_format.rs` a person's records in the binary form `p/` values hold;
//! `convert.rs` the mapping of wire records to domain records; `views.rs` the published views
//! and the digests kept of them; `index.rs` the municipality index and outcome counts. The repartition
//! messages, digests and state entries are defined in `proto/ponte/reconciler/v1`.
use std::collections::{BTreeMap, BTreeSet};

use ponte_domain::effects::{Effect as DomainEffect, FamilyEffects};
use ponte_domain::ids::{Cns, Cpf, IbgeMunicipality, Inep, Nis};
use ponte_domain::outcome::{Outcome, Status};
use ponte_domain::period::{Date, Month, Period, Semester};
use ponte_domain::records::{
    self as dr, Appeal, AppealStatus, Attendance, FamilyFollowUp, FamilyId, FamilyRecord,
    FamilyState, PersonRecord, PersonState, Pregnancy, Sex,
};
use ponte_domain::rules::{EffectScope, RuleSet};
use ponte_proto::Timestamp;
use ponte_proto::compliance::v1 as api;
use ponte_proto::events::v1::{self as ev, Event, event::Record, health_follow_up::Subject};
use prost::Message as _;
use serde::{Deserialize, Serialize};

use crate::ReconcilerError;

pub use ponte_store::Entry;

mod batch;
mod convert;
mod family;
mod household;
mod identity;
mod index;
mod parked;
mod person;
mod person_format;
mod state;
mod tables;
mod views;

pub use batch::{Batch, Batcher, Entries, entries_in, entries_of, is_batch};
use convert::*;
#[cfg(test)]
pub(crate) use index::counts_to_stored;
pub(crate) use index::{
    CountsRow, add_counts, add_household_indicators, counts_of, counts_rows, indicator_counts,
};
pub use index::{
    HouseholdIndexed, Indexed, ListFilter, Rederive, StoreWrite, index_is_whole, index_marker,
    index_marker_key, index_prefixes, is_derived,
};
pub use parked::*;
pub use state::*;
pub use tables::table_of;
pub(crate) use tables::with_format;
use tables::*;
use views::*;

/// How the state store is laid out: values beside their keys with the scan groups in the
/// filters, compacted by size tiers, four runs of a size merged at once. At 10 M people,
/// in-process (`ponte-bench … reconciler --state-leveled` against the default), level-by-level
/// compaction wrote 4.0 times what the flushes did and took 184 s; by size tiers 2.5 times and
/// 104 s, for 7 % more time in the topology (more sorted runs to probe) and a store up to
/// three times its live size on disk before a whole merge. End to end at 10 M people the
/// compactions took a third less CPU and the rate did not change (the consumer loop sets it on
/// a host with cores to spare). `reconciler.state_compaction = "levels"` opens the store
/// [`ponte_store::Layout::Leveled`] instead (docs/benchmarks.md, issue 15).
pub const STATE_LAYOUT: ponte_store::Layout = ponte_store::Layout::Tiered {
    merge_width: 4,
    space_amp_percent: 200,
};

/// At most this many messages already fetched are applied as one run, their state keys read
/// at once first ([`Topology::keys_read`], [`Tx::read_ahead`]).
pub const READ_AHEAD_RUN: usize = 256;

/// The input topics, by role. The first five are the shared input topics; the last three are
/// the reconciler group's own repartition topics (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Input {
    Registry,
    Education,
    Health,
    AssistancePerson,
    AssistanceFamily,
    /// A person's profile claimed or released an alternate identifier (keyed by it).
    Crosswalk,
    /// A health record resolved to a NIS, or withdrawn from one (keyed by NIS).
    HealthByNis,
    /// A member's outcomes for the family view (keyed by family id).
    Members,
}

impl Input {
    /// True for the reconciler's own repartition topics, whose payloads are not `Event`s.
    pub fn is_internal(self) -> bool {
        matches!(self, Input::Crosswalk | Input::HealthByNis | Input::Members)
    }

    /// The `ponte-schema` header its messages carry: what the payload is encoded as (one
    /// definition with the header written on outputs, [`OutputKind::schema`]).
    pub fn schema(self) -> &'static str {
        if self.is_internal() {
            INTERNAL_SCHEMA
        } else {
            ponte_proto::EVENTS_SCHEMA
        }
    }

    /// Whether a message whose `ponte-schema` header is `schema` can be read from the topic.
    pub fn reads_schema(self, schema: &[u8]) -> bool {
        schema == self.schema().as_bytes()
            || (self.is_internal() && schema == INTERNAL_SCHEMA_UNVERSIONED.as_bytes())
    }

    /// The protobuf message type of the topic's payloads.
    pub fn message_type(self) -> &'static str {
        match self {
            Input::Registry
            | Input::Education
            | Input::Health
            | Input::AssistancePerson
            | Input::AssistanceFamily => "ponte.events.v1.Event",
            Input::Crosswalk => "ponte.reconciler.v1.CrosswalkChange",
            Input::HealthByNis => "ponte.reconciler.v1.HealthByNis",
            Input::Members => "ponte.reconciler.v1.MemberOutcomes",
        }
    }
}

/// What applying one event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The records held changed (views may or may not have changed).
    Changed,
    /// The event changed nothing (a duplicate or a lower version).
    Unchanged,
    /// A health record whose identifier is not in the crosswalk was parked.
    Parked,
    /// A person was erased (`PersonErasure`): their records, view and identifiers are gone.
    Erased,
    /// The event cannot be applied: it goes to the dead-letter topic with the reason
    /// (`crate::service`), never silently dropped.
    Invalid(Unapplicable),
}

/// Why an event cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unapplicable {
    /// Low-cardinality class, as the adapters' dead letters have: `invalid_identifier`,
    /// `invalid_period`, `invalid_value`, `malformed`, `unsupported`.
    pub error_type: &'static str,
    /// The field at fault; empty when no one field is.
    pub field: String,
    /// What is wrong, naming the rule that failed.
    pub reason: String,
}

impl Unapplicable {
    /// A fault of the event as a whole (no one field to blame).
    pub fn of_event(error_type: &'static str, reason: impl Into<String>) -> Self {
        Unapplicable {
            error_type,
            field: String::new(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Unapplicable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

impl Applied {
    pub fn label(&self) -> &'static str {
        match self {
            Applied::Changed => "changed",
            Applied::Unchanged => "unchanged",
            Applied::Parked => "parked",
            Applied::Erased => "erased",
            Applied::Invalid(_) => "invalid",
        }
    }
}

pub use ponte_proto::reconciler::v1::{
    CrosswalkChange, FamilyDigest, FamilyMembersEntry, HealthByNis, HeldHealthRecords,
    MemberOutcomes, NonCompliant, ParkedCount, PersonDigest, PersonEntry,
};

/// The topology with its configuration: one rule set and the monitoring window, and the
/// household-achievement rule set of deployments that follow households (Unidos).
#[derive(Debug, Clone)]
pub struct Topology {
    rules: RuleSet,
    from: Month,
    to: Month,
    achievements: Option<std::sync::Arc<ponte_domain::achievements::AchievementRuleSet>>,
}

/// An event whose `field` breaks a rule; the class follows from the field.
fn invalid(field: &str, e: impl std::fmt::Display) -> Applied {
    let error_type = match field {
        "nis" | "cns" | "cpf" | "municipality" | "inep_school_code" => "invalid_identifier",
        "month" | "period" | "semester" => "invalid_period",
        _ => "invalid_value",
    };
    Applied::Invalid(Unapplicable {
        error_type,
        field: field.to_owned(),
        reason: e.to_string(),
    })
}

fn malformed(reason: impl Into<String>) -> Applied {
    Applied::Invalid(Unapplicable::of_event("malformed", reason))
}

/// The Kafka key of an alternate identifier (`cns:123` → `123`): the digits, as the health
/// adapter keys the records, so both land on the same partition.
fn alt_key(alt: &str) -> &str {
    alt.split_once(':').map_or(alt, |(_, digits)| digits)
}

/// A person's `p/` value rewritten as format 2 held it (the records as JSON): for tests of
/// stores written before format 3.
#[doc(hidden)]
pub fn person_value_in_format_2(value: &[u8]) -> Result<Vec<u8>, String> {
    PersonDoc::from_stored(value)?.to_format_2()
}

impl Topology {
    /// `from..=to` is the monitoring window: every period overlapping it is evaluated.
    pub fn new(rules: RuleSet, from: Month, to: Month) -> Self {
        Self {
            rules,
            from,
            to,
            achievements: None,
        }
    }

    /// Also follows households with this household-achievement rule set (stage 4,
    /// `household.rs`); without one, household records are dead-lettered as unsupported.
    pub fn with_achievements(
        mut self,
        rules: ponte_domain::achievements::AchievementRuleSet,
    ) -> Self {
        self.achievements = Some(std::sync::Arc::new(rules));
        self
    }

    /// True when the topology follows households (a household-achievement rule set).
    pub fn follows_households(&self) -> bool {
        self.achievements.is_some()
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// The view last published of person `nis`, computed from the committed state of input
    /// partition `partition` in `kv` (the one the person's records are keyed to): what a read
    /// of a person this instance owns answers, as current as the last epoch stored. `None`
    /// when no view of the person is published.
    pub fn read_person(
        &self,
        kv: &dyn Kv,
        partition: i32,
        nis: Nis,
    ) -> Result<Option<api::Person>, ReconcilerError> {
        let mut tx = Tx::new(kv);
        tx.set_partition(partition);
        self.published_person(&tx, nis)
    }

    /// As [`Topology::read_person`], for family `family_id` (keyed to `partition`).
    pub fn read_family(
        &self,
        kv: &dyn Kv,
        partition: i32,
        family_id: &str,
    ) -> Result<Option<api::Family>, ReconcilerError> {
        let mut tx = Tx::new(kv);
        tx.set_partition(partition);
        self.published_family(&tx, &FamilyId(family_id.to_owned()))
    }

    /// Completes the epoch in `tx`; call before it is taken ([`Tx::take`]): the households its
    /// events changed are evaluated, each once, and the partitions' outcome counts rows moved,
    /// each read (in one batched lookup) and written once.
    pub fn finish(&self, tx: &mut Tx<'_>) -> Result<(), ReconcilerError> {
        self.finish_households(tx)?;
        index::finish(tx)
    }

    /// Applies one event from a shared input topic to the state in `tx`, recording outputs.
    pub fn apply(
        &self,
        tx: &mut Tx<'_>,
        input: Input,
        event: &Event,
    ) -> Result<Applied, ReconcilerError> {
        let at = event.ingest_time;
        match (&event.record, input) {
            (Some(Record::PersonProfile(p)), Input::Registry) => match profile(event, p) {
                Ok(profile) => self.apply_profile(tx, profile, source_of(event), at),
                Err(e) => Ok(e),
            },
            (Some(Record::SchoolAttendance(a)), Input::Education) => match school(event, a) {
                Ok(r) => self.apply_person_record(
                    tx,
                    PersonRecord::School(r),
                    source_of(event),
                    None,
                    at,
                ),
                Err(e) => Ok(e),
            },
            (Some(Record::ScfvAttendance(a)), Input::AssistancePerson) => match scfv(event, a) {
                Ok(r) => {
                    self.apply_person_record(tx, PersonRecord::Scfv(r), source_of(event), None, at)
                }
                Err(e) => Ok(e),
            },
            (Some(Record::HealthFollowUp(h)), Input::Health) => self.apply_health(tx, event, h),
            (Some(Record::PersonErasure(e)), Input::Registry) => match Nis::parse(&e.nis) {
                Ok(nis) => self.apply_erasure(tx, nis, at),
                Err(x) => Ok(invalid("nis", x)),
            },
            (Some(Record::FamilyFollowUp(f)), Input::AssistanceFamily) => match follow_up(event, f)
            {
                Ok(r) => {
                    self.apply_family_record(tx, FamilyRecord::FollowUp(r), source_of(event), at)
                }
                Err(e) => Ok(e),
            },
            (Some(Record::Appeal(a)), Input::AssistanceFamily) => match appeal(event, a) {
                Ok(r) => {
                    self.apply_family_record(tx, FamilyRecord::Appeal(r), source_of(event), at)
                }
                Err(e) => Ok(e),
            },
            (Some(Record::HouseholdProfile(p)), Input::AssistanceFamily) => {
                self.apply_household(tx, input, event, household::household_profile(event, p))
            }
            (
                Some(Record::HouseholdEvidence(x)),
                Input::AssistanceFamily | Input::Education | Input::Health,
            ) => self.apply_household(tx, input, event, household::household_evidence(event, x)),
            (None, _) => Ok(malformed("event carries no record")),
            (Some(_), input) => Ok(Applied::Invalid(Unapplicable::of_event(
                "unsupported",
                format!("record type not expected on the {input:?} topic"),
            ))),
        }
    }

    /// The state keys applying a message of `input` keyed `key` reads first: the person, the
    /// family or the identifier the topic is keyed by, for the consumer loop to read a run of
    /// messages' keys at once ([`Tx::read_ahead`]). Taken from the Kafka key (and, for a
    /// crosswalk change, whose key holds only the identifier's digits, from the payload),
    /// never trusted: a key read ahead and not asked for, or one asked for and not read
    /// ahead, costs a read and changes nothing else. A health record's keys name the record and
    /// the kind of identifier it arrived as, which only the event gives: it is decoded for them
    /// (once more when applied; a lookup of its own costs more than a decode).
    pub fn keys_read(&self, input: Input, key: &[u8], payload: &[u8]) -> Vec<Vec<u8>> {
        match input {
            Input::Health => Event::decode(payload)
                .map(|e| identity::health_keys_read(&e))
                .unwrap_or_default(),
            _ => self.keys_read_of_key(input, key, payload),
        }
    }

    /// As [`Topology::keys_read`] for an input record already decoded (`ponte-bench`'s
    /// in-process run holds events, not payloads).
    pub fn keys_read_of_event(&self, input: Input, key: &[u8], event: &Event) -> Vec<Vec<u8>> {
        match input {
            Input::Health => identity::health_keys_read(event),
            _ => self.keys_read_of_key(input, key, &[]),
        }
    }

    /// The keys read for a message of any topic but the health topic: taken from its Kafka key
    /// (and a crosswalk change's payload).
    fn keys_read_of_key(&self, input: Input, key: &[u8], payload: &[u8]) -> Vec<Vec<u8>> {
        let Ok(id) = std::str::from_utf8(key) else {
            return Vec::new();
        };
        match input {
            Input::Registry | Input::Education | Input::AssistancePerson | Input::HealthByNis => {
                vec![PERSONS.key(&[id])]
            }
            // A family with records and no members entry yet may hold the digest of its view
            // where stores in format 1 kept it: looked for under both keys.
            Input::AssistanceFamily => vec![
                FAMILIES.key(&[id]),
                MEMBERS.key(&[id]),
                FAMILY_DIGESTS.key(&[id]),
                FAMILY_VIEWS_BEFORE_DIGESTS.key(&[id]),
            ],
            Input::Members => vec![FAMILIES.key(&[id]), MEMBERS.key(&[id])],
            Input::Crosswalk => CrosswalkChange::decode(payload)
                .map(|c| identity::identifier_keys_read(&c.alt))
                .unwrap_or_default(),
            // Named by the event, not the key: `keys_read`, `keys_read_of_event`.
            Input::Health => Vec::new(),
        }
    }

    /// Applies one message of the reconciler's own repartition topics. Returns what it did and
    /// the ingest time of the source event behind it.
    pub fn apply_internal(
        &self,
        tx: &mut Tx<'_>,
        input: Input,
        payload: &[u8],
    ) -> Result<(Applied, Option<Timestamp>), ReconcilerError> {
        let undecodable = |e: prost::DecodeError| malformed(format!("undecodable: {e}"));
        match input {
            Input::Crosswalk => match CrosswalkChange::decode(payload) {
                Ok(c) => Ok((self.apply_crosswalk(tx, &c)?, c.at)),
                Err(e) => Ok((undecodable(e), None)),
            },
            Input::HealthByNis => match HealthByNis::decode(payload) {
                Ok(h) => Ok((self.apply_health_by_nis(tx, &h)?, h.at)),
                Err(e) => Ok((undecodable(e), None)),
            },
            Input::Members => match MemberOutcomes::decode(payload) {
                Ok(m) => Ok((self.apply_member(tx, &m)?, m.at)),
                Err(e) => Ok((undecodable(e), None)),
            },
            other => Ok((
                Applied::Invalid(Unapplicable::of_event(
                    "unsupported",
                    format!("{other:?} is not an internal topic"),
                )),
                None,
            )),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Repartition messages already on the bus when the formats moved into
    /// `proto/ponte/reconciler/v1` (hand-written prost structs before) still decode: the bytes
    /// below are what the old `MemberOutcomes` and `CrosswalkChange` encoded.
    #[test]
    fn messages_written_before_the_proto_definitions_still_decode() {
        let member = [
            0x0a, 0x02, b'f', b'1', // family_id = "f1"
            0x12, 0x01, b'7', // nis = "7"
            0x18, 0x01, // member = true
            0x22, 0x02, b'[', b']', // outcomes_json = "[]"
        ];
        let m = MemberOutcomes::decode(member.as_slice()).unwrap();
        assert_eq!(
            (m.family_id.as_str(), m.nis.as_str(), m.member),
            ("f1", "7", true)
        );
        assert_eq!(m.outcomes_json, b"[]");
        let crosswalk = [
            0x0a, 0x05, b'c', b'n', b's', b':', b'1', 0x12, 0x01, b'7', 0x18, 0x01,
        ];
        let c = CrosswalkChange::decode(crosswalk.as_slice()).unwrap();
        assert_eq!(
            (c.alt.as_str(), c.nis.as_str(), c.carried),
            ("cns:1", "7", true)
        );
    }

    #[test]
    fn a_topic_reads_its_own_schema_and_repartition_topics_also_the_unversioned_name() {
        assert!(Input::Registry.reads_schema(b"ponte.events.v1"));
        assert!(!Input::Registry.reads_schema(b"ponte.events.v2"));
        assert!(!Input::Registry.reads_schema(b"ponte.reconciler"));
        for internal in [Input::Crosswalk, Input::HealthByNis, Input::Members] {
            assert!(internal.reads_schema(b"ponte.reconciler.v1"));
            assert!(internal.reads_schema(b"ponte.reconciler"));
            assert!(!internal.reads_schema(b"ponte.events.v1"));
        }
        for kind in [
            OutputKind::Crosswalk,
            OutputKind::HealthByNis,
            OutputKind::Member,
        ] {
            assert_eq!(kind.schema(), "ponte.reconciler.v1");
        }
    }
}
