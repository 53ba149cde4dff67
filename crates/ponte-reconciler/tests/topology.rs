//! The topology driven in-process (no broker): identity resolution, outcomes, family effects,
//! and the two properties the architecture requires — the final view does not depend on the
//! interleaving of the sources, and replaying any prefix changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{MapKv, PARTITIONS, fnv1a, partition_of};

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ponte_domain::period::Month;
use ponte_domain::rules::RuleSet;
use ponte_proto::compliance::v1::{self as api, OutcomeStatus};
use ponte_proto::events::v1::{self as ev, Event, event::Record, health_follow_up::Subject};
use ponte_proto::reconciler::v1::IndicatorCounts;
use ponte_reconciler::topology::{
    Applied, FamilyMembersEntry, HeldHealthRecords, Input, ListFilter, Output, OutputKind,
    ParkedCounts, Pending, PersonEntry, READ_AHEAD_RUN, Rederive, Screened, Topology, Tx, Writes,
    is_derived, key_partition, parked_after, person_value_in_format_2, read_parked,
};
use proptest::prelude::*;
use prost::Message as _;

const RULES: &str = include_str!("../../../rules/bolsa-familia-2023.toml");
// Valid vectors from docs/rules.md#test-vectors and ponte-domain's id tests.
const CHILD: &str = "26827649960";
const MOTHER: &str = "46952280637";
const CHILD_CNS: &str = "700000000000005";
const MOTHER_CPF: &str = "52998224725";
const FAMILY: &str = "F-0001";

/// The Kafka key the adapters give an input event.
fn key_of(input: Input, e: &Event) -> String {
    match (&e.record, input) {
        (Some(Record::PersonProfile(p)), _) => p.nis.clone(),
        (Some(Record::SchoolAttendance(a)), _) => a.nis.clone(),
        (Some(Record::ScfvAttendance(a)), _) => a.nis.clone(),
        (Some(Record::HealthFollowUp(h)), _) => match &h.subject {
            Some(Subject::Cns(s) | Subject::Cpf(s) | Subject::Nis(s)) => s.clone(),
            None => String::new(),
        },
        (Some(Record::FamilyFollowUp(f)), _) => f.family_id.clone(),
        (Some(Record::Appeal(a)), _) => a.family_id.clone(),
        (Some(Record::PersonErasure(e)), _) => e.nis.clone(),
        _ => String::new(),
    }
}

/// The topology over a map, with the repartition topics as FIFO queues per partition, the way
/// Kafka orders them; the read side is the latest change per key, like the compacted topic.
struct Harness {
    kv: MapKv,
    topology: Topology,
    outputs: Vec<(OutputKind, String, Vec<u8>)>,
    /// (internal input, partition) → messages not yet delivered, in order.
    pending: Queued,
    /// The latest change per key (`person:<nis>`, `family:<id>`).
    views: BTreeMap<String, api::ComplianceChange>,
    /// The parked records, counted from each commit's writes as the service's consumer loop
    /// keeps them; the epochs read the state through them ([`Screened`]), as the service's
    /// do, and [`Harness::parked`] checks the counts against a scan.
    parked: ParkedCounts,
    /// Every state key written or deleted, commit after commit.
    written: Vec<Vec<u8>>,
    /// With epochs pipelined as the consumer loop does: the epoch sent and not yet committed,
    /// which the next epoch is applied over ([`Pending`]); it is committed (its writes stored,
    /// its outputs delivered) only once the next one has been applied.
    in_flight: Option<(Writes, Vec<Output>)>,
    pipelined: bool,
    /// Set by tests that rewrite the state by hand (as an older store left it): the views read
    /// from it are then no longer the views this harness published, and are not compared.
    state_rewritten: bool,
    /// Every state write sent to the changelog (the derived tables' are not), commit after
    /// commit, with the store as it stood before each commit: what a restore reads.
    changelog: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// Repartition messages not delivered yet, per (topic, partition), oldest first: (Kafka key,
/// payload).
type Queued = BTreeMap<(Input, i32), VecDeque<(String, Vec<u8>)>>;

/// Takes the oldest pending message of the `n`-th non-empty queue.
fn pending_of(pending: &mut Queued, n: usize) -> Option<(Input, i32, String, Vec<u8>)> {
    let queues: Vec<(Input, i32)> = pending
        .iter()
        .filter(|(_, q)| !q.is_empty())
        .map(|(k, _)| *k)
        .collect();
    if queues.is_empty() {
        return None;
    }
    let (input, partition) = queues[n % queues.len()];
    let (key, payload) = pending.get_mut(&(input, partition))?.pop_front()?;
    Some((input, partition, key, payload))
}

impl Harness {
    fn new() -> Self {
        let rules = RuleSet::from_toml_str("bolsa-familia-2023.toml", RULES).unwrap();
        let parked = ParkedCounts::default();
        parked
            .reassign(&MapKv::default(), &(0..PARTITIONS).collect())
            .unwrap();
        Harness {
            kv: MapKv::default(),
            topology: Topology::new(
                rules,
                Month::parse("2025-01").unwrap(),
                Month::parse("2025-12").unwrap(),
            ),
            outputs: Vec::new(),
            pending: BTreeMap::new(),
            views: BTreeMap::new(),
            parked,
            written: Vec::new(),
            in_flight: None,
            pipelined: false,
            state_rewritten: false,
            changelog: Vec::new(),
        }
    }

    /// Commits a transaction and routes its outputs, as the service does for a batch of one.
    fn commit(&mut self, (writes, outputs): (Writes, Vec<Output>)) {
        let parked = parked_after(&writes).unwrap();
        let mut map = self.kv.0.lock().unwrap();
        for (k, v) in writes {
            self.written.push(k.clone());
            if !is_derived(&k) {
                self.changelog.push((k.clone(), v.clone()));
            }
            match v {
                Some(v) => map.insert(k, v),
                None => map.remove(&k),
            };
        }
        drop(map);
        self.parked.follow(&parked);
        for o in outputs {
            let internal = match o.kind {
                OutputKind::Crosswalk => Some(Input::Crosswalk),
                OutputKind::HealthByNis => Some(Input::HealthByNis),
                OutputKind::Member => Some(Input::Members),
                OutputKind::Change => {
                    match &o.payload {
                        Some(p) => {
                            let change = api::ComplianceChange::decode(p.as_slice()).unwrap();
                            self.views.insert(o.key.clone(), change);
                        }
                        None => {
                            self.views.remove(&o.key);
                        }
                    }
                    None
                }
                OutputKind::Alert | OutputKind::DeadLetter => None,
            };
            if let Some(input) = internal {
                self.pending
                    .entry((input, partition_of(&o.key)))
                    .or_default()
                    .push_back((o.key.clone(), o.payload.clone().unwrap_or_default()));
            }
            self.outputs
                .push((o.kind, o.key, o.payload.unwrap_or_default()));
        }
        self.views_read_from_the_state_are_the_views_published();
        self.the_index_is_its_persons_recounted();
    }

    /// After every commit, each partition's municipality index and outcome counts are what
    /// counting its persons' digests again gives.
    fn the_index_is_its_persons_recounted(&self) {
        let kept = self.kv.derived();
        // Read from a copy, so that the reads the epochs make are counted alone.
        let state = self.kv.copy();
        let mut recounted = BTreeMap::new();
        for p in 0..PARTITIONS {
            recounted.extend(self.topology.recount_index(&state, p).unwrap());
        }
        assert_eq!(
            readable(&kept),
            readable(&recounted),
            "the index kept by the epochs against a recount"
        );
    }

    /// Restores every partition from the changelog entries from `from` on, over `start` (a
    /// copy of the store as it stood before them), in batches of `batch` entries, the index
    /// derived as the service's restore derives it ([`Rederive`]); returns the store restored.
    fn restored(&self, start: BTreeMap<Vec<u8>, Vec<u8>>, from: usize, batch: usize) -> MapKv {
        let kv = MapKv(std::sync::Mutex::new(start), Default::default());
        assert!(
            common::restore(&kv, &self.changelog[from..], batch),
            "every digest says what the index holds"
        );
        kv
    }

    /// A restore from the whole changelog into an empty store, and one of its tail into the
    /// store as it stood `tail` entries before the end (the derived entries of an older store
    /// included), both end in the index the epochs kept.
    fn restores_derive_the_index_kept(&self, snapshot: (BTreeMap<Vec<u8>, Vec<u8>>, usize)) {
        let kept = readable(&self.kv.derived());
        for batch in [1, 3, 1000] {
            let full = self.restored(BTreeMap::new(), 0, batch);
            assert_eq!(
                readable(&full.derived()),
                kept,
                "full restore, batches of {batch}"
            );
            let tail = self.restored(snapshot.0.clone(), snapshot.1, batch);
            assert_eq!(
                readable(&tail.derived()),
                kept,
                "tail restore, batches of {batch}"
            );
        }
    }

    /// The store and the changelog's length now: where a later tail restore starts.
    fn snapshot(&self) -> (BTreeMap<Vec<u8>, Vec<u8>>, usize) {
        (self.kv.0.lock().unwrap().clone(), self.changelog.len())
    }

    /// After every commit, the view a read computes from the committed state of a person or
    /// a family — of every one the state or the changes name — is the latest change published
    /// for it, counters included, or nothing when its latest change is a tombstone.
    fn views_read_from_the_state_are_the_views_published(&self) {
        if self.state_rewritten {
            return;
        }
        // Read from a copy, so that the reads the epochs make are counted alone.
        let state = self.kv.copy();
        let mut keys: BTreeSet<String> = self.views.keys().cloned().collect();
        keys.extend(
            self.outputs
                .iter()
                .filter(|(kind, _, _)| *kind == OutputKind::Change)
                .map(|(_, key, _)| key.clone()),
        );
        for key in keys {
            let read = match key.split_once(':') {
                Some(("person", nis)) => self
                    .topology
                    .read_person(
                        &state,
                        partition_of(nis),
                        ponte_domain::ids::Nis::parse(nis).unwrap(),
                    )
                    .unwrap()
                    .map(api::compliance_change::View::Person),
                Some(("family", id)) => self
                    .topology
                    .read_family(&state, partition_of(id), id)
                    .unwrap()
                    .map(api::compliance_change::View::Family),
                // Households: tests/households.rs.
                _ => continue,
            };
            let published = self.views.get(&key).and_then(|c| c.view.clone());
            assert_eq!(read, published, "{key}: the view read from the state");
        }
    }

    /// Applies one input event on its partition, without delivering what it sends onwards.
    fn apply_only(&mut self, (input, event): &(Input, Event)) -> Applied {
        let state = Screened::new(&self.kv, &self.parked);
        let mut tx = Tx::new(&state);
        tx.set_partition(partition_of(&key_of(*input, event)));
        let applied = self.topology.apply(&mut tx, *input, event).unwrap();
        self.topology.finish(&mut tx).unwrap();
        let taken = tx.take();
        self.commit(taken);
        applied
    }

    /// Delivers the oldest pending message of the `n`-th non-empty queue; false when none.
    fn deliver(&mut self, n: usize) -> bool {
        if self.pending.values().all(VecDeque::is_empty) {
            return false;
        }
        self.epoch(&[], &[Step::Deliver(n)]);
        true
    }

    /// Delivers every pending internal message (and what they send onwards).
    fn settle(&mut self) {
        while self.deliver(0) {}
    }

    /// Applies one input event and lets the topology settle.
    fn apply(&mut self, e: &(Input, Event)) -> Applied {
        let applied = self.apply_only(e);
        self.settle();
        applied
    }

    /// The parked records, after checking that the count kept from the commits and the
    /// stored counts agree with them, and that a listing cut short is their beginning.
    fn parked(&self) -> Vec<(String, Event)> {
        let all: Vec<i32> = (0..PARTITIONS).collect();
        let parked = read_parked(&self.kv, &all, usize::MAX).unwrap();
        assert_eq!(parked.total, parked.records.len() as u64, "stored counts");
        for p in 0..PARTITIONS {
            let scanned = read_parked(&self.kv, &[p], usize::MAX)
                .unwrap()
                .records
                .len();
            let kept = self.parked.records(p).unwrap();
            assert_eq!(kept, scanned as i64, "parked records of partition {p}");
        }
        for limit in [0, 1, 2] {
            let cut = read_parked(&self.kv, &all, limit).unwrap();
            assert_eq!(cut.total, parked.total);
            let first: Vec<_> = parked.records.iter().take(limit).cloned().collect();
            assert_eq!(cut.records, first, "the first {limit} parked");
        }
        parked.records
    }

    fn person(&self, nis: &str) -> api::Person {
        match self
            .views
            .get(&format!("person:{nis}"))
            .and_then(|c| c.view.clone())
        {
            Some(api::compliance_change::View::Person(p)) => p,
            other => panic!("person {nis} not in view: {other:?}"),
        }
    }

    fn family(&self, id: &str) -> api::Family {
        match self
            .views
            .get(&format!("family:{id}"))
            .and_then(|c| c.view.clone())
        {
            Some(api::compliance_change::View::Family(f)) => f,
            other => panic!("family {id} not in view: {other:?}"),
        }
    }

    fn outcome(&self, nis: &str, conditionality: &str, period: &str) -> OutcomeStatus {
        let p = self.person(nis);
        let o = p
            .outcomes
            .iter()
            .find(|o| o.conditionality == conditionality && o.period == period)
            .unwrap_or_else(|| panic!("no {conditionality} {period} outcome in {:?}", p.outcomes));
        OutcomeStatus::try_from(o.status).unwrap()
    }

    /// Every piece of state, with views stripped of their version counters and change times
    /// (which count how the view got there).
    fn normalised(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.kv
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let local = &k[5..]; // after the `NNNN/` partition prefix
                let v = if local.starts_with(b"p/") {
                    let mut p = person_entry(v);
                    if let Some(d) = &mut p.digest {
                        d.view_version = 0;
                    }
                    p.encode_to_vec()
                } else if local.starts_with(b"fm/") {
                    let mut f = members_entry(v);
                    if let Some(d) = &mut f.digest {
                        d.view_version = 0;
                    }
                    f.encode_to_vec()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect()
    }
}

/// Derived entries, keys and counts rows decoded, for a readable comparison.
fn readable(entries: &BTreeMap<Vec<u8>, Vec<u8>>) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| {
            let v = if v.is_empty() {
                String::new()
            } else {
                format!("{:?}", IndicatorCounts::decode(&v[1..]).unwrap())
            };
            (String::from_utf8_lossy(k).into_owned(), v)
        })
        .collect()
}

/// A `p/` value in format 3: the byte 3, then a `PersonEntry` with the records in protobuf.
fn person_entry(v: &[u8]) -> PersonEntry {
    assert_eq!(v[0], 3, "p/ values are written in format 3");
    let entry = PersonEntry::decode(&v[1..]).unwrap();
    assert!(entry.records_json.is_empty(), "format 3 has no JSON");
    entry
}

/// An `fm/` value in format 2: the byte 2, then a `FamilyMembersEntry`.
fn members_entry(v: &[u8]) -> FamilyMembersEntry {
    assert_eq!(v[0], 2, "fm/ values are written in format 2");
    FamilyMembersEntry::decode(&v[1..]).unwrap()
}

fn event(record_id: &str, version: u64, record: Record) -> Event {
    Event {
        record_id: record_id.to_owned(),
        version,
        source_system: "test".to_owned(),
        record: Some(record),
        ..Default::default()
    }
}

fn profile(
    nis: &str,
    birth: &str,
    sex: &str,
    cns: &[&str],
    cpf: &str,
    version: u64,
) -> (Input, Event) {
    (
        Input::Registry,
        event(
            &format!("registry:{nis}"),
            version,
            Record::PersonProfile(ev::PersonProfile {
                nis: nis.into(),
                family_id: FAMILY.into(),
                birth_date: birth.into(),
                sex: sex.into(),
                municipality: "3550308".into(),
                cns: cns.iter().map(|s| (*s).to_owned()).collect(),
                cpf: cpf.into(),
                memberships: vec!["PBF".into()],
                ..Default::default()
            }),
        ),
    )
}

fn attendance(nis: &str, month: &str, given: u32, attended: u32, version: u64) -> (Input, Event) {
    (
        Input::Education,
        event(
            &format!("education:35012345:{nis}:{month}"),
            version,
            Record::SchoolAttendance(ev::SchoolAttendance {
                nis: nis.into(),
                inep_school_code: "35012345".into(),
                month: month.into(),
                given,
                attended,
                unit: ev::AttendanceUnit::Days as i32,
                attendance_bp: attended * 10_000 / given,
                ..Default::default()
            }),
        ),
    )
}

fn health(id: &str, subject: Subject, date: &str, version: u64) -> (Input, Event) {
    (
        Input::Health,
        event(
            id,
            version,
            Record::HealthFollowUp(ev::HealthFollowUp {
                subject: Some(subject),
                encounter_date: date.into(),
                vaccination_up_to_date: Some(true),
                weight_grams: Some(25_000),
                height_mm: Some(1_250),
                ..Default::default()
            }),
        ),
    )
}

#[test]
fn a_low_attendance_month_makes_the_bimester_non_compliant_and_alerts_the_family() {
    let mut h = Harness::new();
    h.apply(&profile(CHILD, "2017-03-10", "M", &[CHILD_CNS], "", 1));
    // 2023 rules: 75% for 6 to <18 (Lei 14.601/2023 art. 10 IV, rules/bolsa-familia-2023.toml).
    h.apply(&attendance(CHILD, "2025-04", 20, 14, 1)); // 70%
    h.apply(&attendance(CHILD, "2025-05", 20, 20, 1));
    assert_eq!(
        h.outcome(CHILD, "education", "2025-B2"),
        OutcomeStatus::NonCompliant
    );
    // A bimester with no record for a child of the public is not followed, never non-compliant.
    assert_eq!(
        h.outcome(CHILD, "education", "2025-B3"),
        OutcomeStatus::NotFollowed
    );
    let alerts: Vec<api::ComplianceAlert> = h
        .outputs
        .iter()
        .filter(|(k, _, _)| *k == OutputKind::Alert)
        .map(|(_, _, p)| api::ComplianceAlert::decode(p.as_slice()).unwrap())
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(
        (alerts[0].nis.as_str(), alerts[0].period.as_str()),
        (CHILD, "2025-B2")
    );
    let family = h.family(FAMILY);
    assert_eq!(family.members, vec![CHILD.to_owned()]);
    assert!(family.non_compliant_periods.contains(&"2025-B2".to_owned()));
    assert!(
        !family.effects.is_empty(),
        "the first non-compliance reaches the ladder"
    );

    // A correction raises the month to 90%: compliant, and the family's effect goes away.
    h.apply(&attendance(CHILD, "2025-04", 20, 18, 2));
    assert_eq!(
        h.outcome(CHILD, "education", "2025-B2"),
        OutcomeStatus::Compliant
    );
    assert!(h.family(FAMILY).effects.is_empty());
}

/// `e` as an adapter stamps it: sent by `sender` in request `request`, received now.
fn sent_by((input, mut e): (Input, Event), sender: &str, request: &str) -> (Input, Event) {
    e.sender = sender.to_owned();
    e.request_id = request.to_owned();
    e.ingest_time = Some(ponte_proto::Timestamp {
        seconds: 1_751_000_000,
        nanos: 0,
    });
    (input, e)
}

#[test]
fn the_view_says_who_sent_each_record_it_uses_and_in_which_request() {
    let mut h = Harness::new();
    const REGISTRY: &str = "urn:ponte:principal:cadunico";
    const SCHOOL: &str = "urn:ponte:principal:education-sp";
    const CLINIC: &str = "urn:ponte:principal:health-sp";
    h.apply(&sent_by(
        profile(CHILD, "2017-03-10", "M", &[CHILD_CNS], "", 1),
        REGISTRY,
        "r-profile",
    ));
    h.apply(&sent_by(
        attendance(CHILD, "2025-04", 20, 14, 1),
        SCHOOL,
        "r-april",
    ));
    // A health record by CNS: parked or forwarded through the identity stage, it keeps the
    // provenance of its own envelope.
    h.apply(&sent_by(
        health("h-1", Subject::Cns(CHILD_CNS.into()), "2025-03-02", 1),
        CLINIC,
        "r-clinic",
    ));
    // A correction from another request replaces the month's provenance.
    h.apply(&sent_by(
        attendance(CHILD, "2025-04", 20, 18, 2),
        SCHOOL,
        "r-april-fixed",
    ));
    // A stale re-send changes nothing, its request included.
    h.apply(&sent_by(
        attendance(CHILD, "2025-04", 20, 18, 2),
        SCHOOL,
        "r-april-again",
    ));
    let person = h.person(CHILD);
    let sources: Vec<(&str, &str, &str, u64)> = person
        .sources
        .iter()
        .map(|s| {
            (
                s.record_type.as_str(),
                s.sender.as_str(),
                s.request_id.as_str(),
                s.version,
            )
        })
        .collect();
    assert_eq!(
        sources.len(),
        3,
        "one source per record the view uses: {sources:?}"
    );
    for want in [
        ("person_profile", REGISTRY, "r-profile", 1),
        ("school_attendance", SCHOOL, "r-april-fixed", 2),
        ("health_follow_up", CLINIC, "r-clinic", 1),
    ] {
        assert!(sources.contains(&want), "{want:?} not in {sources:?}");
    }
    // Every record an outcome's evidence names has its source in the view.
    for o in &person.outcomes {
        for id in &o.record_ids {
            assert!(
                person.sources.iter().any(|s| &s.record_id == id),
                "{id} of {} has no source",
                o.conditionality
            );
        }
    }
    assert!(
        person.sources.iter().all(|s| s.received_time.is_some()),
        "each says when its adapter received it"
    );
}

/// The full key of a state entry of `local` key (`p/<nis>`), found by its end.
fn state_key(h: &Harness, local: &str) -> Vec<u8> {
    let map = h.kv.0.lock().unwrap();
    map.keys()
        .find(|k| &k[5..] == local.as_bytes())
        .cloned()
        .unwrap_or_else(|| panic!("no {local} in the state"))
}

/// Rewrites a person's `p/` value as a store in format 1 kept it: the records' JSON alone, the
/// identifiers under `xo/` and, by `legacy`, the digest under `d/p/` or the whole view (version
/// 5) under `v/p/`. Returns the keys written.
fn to_format_1(h: &mut Harness, nis: &str, legacy: &str) -> Vec<Vec<u8>> {
    h.state_rewritten = true;
    let key = state_key(h, &format!("p/{nis}"));
    let prefix = key[..5].to_vec();
    let view = h.person(nis);
    let mut map = h.kv.0.lock().unwrap();
    let format_2 = person_value_in_format_2(&map[&key]).unwrap();
    assert_eq!(format_2[0], 2);
    let entry = PersonEntry::decode(&format_2[1..]).unwrap();
    map.insert(key.clone(), entry.records_json.clone());
    let carried = [prefix.as_slice(), format!("xo/{nis}").as_bytes()].concat();
    map.insert(carried.clone(), serde_json::to_vec(&entry.carried).unwrap());
    let mut digest = entry.digest.expect("a view was published");
    digest.view_version = 5;
    let old = if legacy == "d/p" {
        let k = [prefix.as_slice(), format!("d/p/{nis}").as_bytes()].concat();
        map.insert(k.clone(), digest.encode_to_vec());
        k
    } else {
        let k = [prefix.as_slice(), format!("v/p/{nis}").as_bytes()].concat();
        let mut v = view;
        v.view_version = 5;
        map.insert(k.clone(), v.encode_to_vec());
        k
    };
    vec![carried, old]
}

#[test]
fn a_store_in_format_1_goes_on_numbering_views_and_is_rewritten_in_format_2() {
    // Both older layouts: a digest under `d/p/`, and before digests the whole view under `v/p/`.
    for legacy in ["d/p", "v/p"] {
        let mut h = Harness::new();
        h.apply(&profile(CHILD, "2017-03-10", "M", &[CHILD_CNS], "", 1));
        let old_keys = to_format_1(&mut h, CHILD, legacy);
        // The same profile again: nothing published, nothing written.
        let published = h.outputs.len();
        h.apply(&profile(CHILD, "2017-03-10", "M", &[CHILD_CNS], "", 1));
        assert_eq!(h.outputs.len(), published, "{legacy}");
        // A change: numbered after the old view; the profile's identifiers are known (no
        // claim or release of the CNS goes out); the old keys are gone.
        h.apply(&attendance(CHILD, "2025-04", 20, 20, 1));
        assert_eq!(h.person(CHILD).view_version, 6, "{legacy}");
        assert!(
            h.outputs[published..]
                .iter()
                .all(|(kind, _, _)| *kind != OutputKind::Crosswalk),
            "{legacy}: the identifiers were read from xo/"
        );
        let key = state_key(&h, &format!("p/{CHILD}"));
        let map = h.kv.0.lock().unwrap();
        for k in &old_keys {
            assert!(!map.contains_key(k), "{legacy}: {k:?} left");
        }
        let entry = person_entry(&map[&key]);
        let digest = entry.digest.unwrap();
        assert_eq!(digest.view_version, 6, "{legacy}");
        assert_eq!(digest.family_id, FAMILY, "{legacy}");
        assert_eq!(entry.carried, vec![format!("cns:{CHILD_CNS}")], "{legacy}");
    }
}

#[test]
fn a_person_in_format_2_is_read_and_rewritten_in_format_3() {
    let mut h = Harness::new();
    h.apply(&profile(CHILD, "2017-03-10", "M", &[CHILD_CNS], "", 1));
    h.apply(&attendance(CHILD, "2025-04", 20, 20, 1));
    let view = h.person(CHILD);
    let key = state_key(&h, &format!("p/{CHILD}"));
    {
        let mut map = h.kv.0.lock().unwrap();
        let two = person_value_in_format_2(&map[&key]).unwrap();
        assert_eq!(two[0], 2);
        map.insert(key.clone(), two);
    }
    // The same records again: known from the format-2 value, nothing changes or goes out.
    let published = h.outputs.len();
    assert_eq!(
        h.apply(&attendance(CHILD, "2025-04", 20, 20, 1)),
        Applied::Unchanged
    );
    assert_eq!(
        h.apply(&profile(CHILD, "2017-03-10", "M", &[CHILD_CNS], "", 1)),
        Applied::Unchanged
    );
    assert_eq!(h.outputs.len(), published);
    // A change: numbered after the view, evaluated over every record format 2 held, and the
    // person written in format 3.
    h.apply(&attendance(CHILD, "2025-05", 20, 2, 1));
    let after = h.person(CHILD);
    assert_eq!(after.view_version, view.view_version + 1);
    let months: Vec<&str> = after
        .school_attendance
        .iter()
        .map(|a| a.month.as_str())
        .collect();
    assert_eq!(months, ["2025-04", "2025-05"]);
    assert_eq!(after.sources.len(), view.sources.len() + 1);
    let map = h.kv.0.lock().unwrap();
    let entry = person_entry(&map[&key]);
    assert_eq!((entry.profiles.len(), entry.school.len()), (1, 2));
    assert_eq!(entry.carried, vec![format!("cns:{CHILD_CNS}")]);
}

#[test]
fn a_family_in_format_1_goes_on_numbering_its_view() {
    let mut h = Harness::new();
    h.apply(&profile(CHILD, "2017-03-10", "M", &[CHILD_CNS], "", 1));
    assert_eq!(h.family(FAMILY).members, vec![CHILD.to_owned()]);
    let key = state_key(&h, &format!("fm/{FAMILY}"));
    let digest_key = [&key[..5], format!("d/f/{FAMILY}").as_bytes()].concat();
    h.state_rewritten = true;
    {
        let mut map = h.kv.0.lock().unwrap();
        let entry = members_entry(&map[&key]);
        let mut digest = entry.digest.unwrap();
        digest.view_version = 7;
        map.insert(key.clone(), entry.members_json);
        map.insert(digest_key.clone(), digest.encode_to_vec());
    }
    h.apply(&profile(MOTHER, "1990-05-05", "F", &[], MOTHER_CPF, 1));
    let family = h.family(FAMILY);
    assert_eq!(family.members.len(), 2);
    assert_eq!(family.view_version, 8);
    let map = h.kv.0.lock().unwrap();
    assert!(!map.contains_key(&digest_key));
    assert_eq!(members_entry(&map[&key]).digest.unwrap().view_version, 8);
}

#[test]
fn digests_hashed_with_fnv_before_xxh3_still_recognise_their_views() {
    let mut h = Harness::new();
    h.apply(&profile(CHILD, "2017-03-10", "M", &[CHILD_CNS], "", 1));
    let person_key = state_key(&h, &format!("p/{CHILD}"));
    let family_key = state_key(&h, &format!("fm/{FAMILY}"));
    {
        // The digests as a store written before XXH3 holds them: FNV-1a of the same views.
        let mut person = h.person(CHILD);
        let mut family = h.family(FAMILY);
        (person.view_version, person.updated_time) = (0, None);
        (family.view_version, family.updated_time) = (0, None);
        let mut map = h.kv.0.lock().unwrap();
        let mut entry = person_entry(&map[&person_key]);
        let d = entry.digest.as_mut().unwrap();
        assert_eq!(d.hash_kind, 1, "digests are written as XXH3-64");
        (d.hash, d.hash_kind) = (fnv1a(&person.encode_to_vec()), 0);
        map.insert(
            person_key.clone(),
            [&[3u8][..], &entry.encode_to_vec()].concat(),
        );
        let mut entry = members_entry(&map[&family_key]);
        let d = entry.digest.as_mut().unwrap();
        assert_eq!(d.hash_kind, 1, "digests are written as XXH3-64");
        (d.hash, d.hash_kind) = (fnv1a(&family.encode_to_vec()), 0);
        map.insert(
            family_key.clone(),
            [&[2u8][..], &entry.encode_to_vec()].concat(),
        );
    }
    // A retraction of a health record the child never had changes the records held (a
    // tombstone) but not the view: the FNV digest recognises it, nothing goes out.
    let published = h.outputs.len();
    let retraction = health_retraction("health:none", Subject::Nis(CHILD.into()), "2025-S1", 1);
    assert_eq!(h.apply(&retraction), Applied::Changed);
    assert!(
        h.outputs[published..]
            .iter()
            .all(|(kind, _, _)| *kind != OutputKind::Change),
        "an unchanged view was published again"
    );
    // A digest of another view does not match: the view is published, numbered after it, and
    // its digest is XXH3 from then on.
    let (person_version, family_version) =
        (h.person(CHILD).view_version, h.family(FAMILY).view_version);
    h.apply(&attendance(CHILD, "2025-05", 20, 2, 1));
    assert_eq!(h.person(CHILD).view_version, person_version + 1);
    assert_eq!(h.family(FAMILY).view_version, family_version + 1);
    let map = h.kv.0.lock().unwrap();
    assert_eq!(person_entry(&map[&person_key]).digest.unwrap().hash_kind, 1);
    assert_eq!(
        members_entry(&map[&family_key]).digest.unwrap().hash_kind,
        1
    );
}

#[test]
fn an_event_writes_one_state_value_for_its_person_and_one_for_its_family() {
    let mut h = Harness::new();
    h.apply(&profile(CHILD, "2017-03-10", "M", &[CHILD_CNS], "", 1));
    h.apply(&attendance(CHILD, "2025-04", 20, 20, 1));
    let family_version = h.family(FAMILY).view_version;
    h.written.clear();
    // Low attendance for the whole bimester: the child's view changes, and the family's.
    h.apply(&attendance(CHILD, "2025-05", 20, 2, 1));
    assert!(
        h.family(FAMILY).view_version > family_version,
        "the family view changed"
    );
    let (derived, written): (Vec<String>, Vec<String>) = h
        .written
        .iter()
        .map(|k| String::from_utf8_lossy(&k[5..]).into_owned())
        .partition(|k| k.starts_with("ic/") || k.starts_with("mi/"));
    // The person (records, digest) on the person's commit, the family's members entry
    // (members, digest) on the family's: one value each.
    assert_eq!(written, vec![format!("p/{CHILD}"), format!("fm/{FAMILY}")]);
    // Locally (never to the changelog) the outcome counts row of the bimester that turned
    // non-compliant: the municipality's index entry was written when the person joined it.
    assert_eq!(derived, vec!["ic/3550308/education/2025-B2".to_owned()]);
}

#[test]
fn health_records_by_cns_are_parked_until_the_registry_knows_the_cns() {
    let mut h = Harness::new();
    let rec = health(
        "health:enc-1",
        Subject::Cns(CHILD_CNS.into()),
        "2025-03-15",
        1,
    );
    assert_eq!(h.apply(&rec), Applied::Parked);
    let parked = h.parked();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].0, format!("cns:{CHILD_CNS}"));
    // Re-delivery of the same parked record is a no-op.
    assert_eq!(h.apply(&rec), Applied::Unchanged);

    h.apply(&profile(CHILD, "2020-01-01", "F", &[CHILD_CNS], "", 1));
    assert!(h.parked().is_empty(), "released when the mapping arrived");
    let p = h.person(CHILD);
    assert_eq!(p.health_records.len(), 1);
    assert_eq!(p.health_records[0].arrived_as, format!("cns:{CHILD_CNS}"));
    // Child under 7 with vaccination, weight and height recorded in S1 (docs/rules.md, "How an
    // outcome is decided").
    assert_eq!(
        h.outcome(CHILD, "health", "2025-S1"),
        OutcomeStatus::Compliant
    );
    assert_eq!(
        h.outcome(CHILD, "health", "2025-S2"),
        OutcomeStatus::NotFollowed
    );
}

#[test]
fn every_cns_of_a_profile_resolves_the_records_that_arrived_under_it() {
    // A second CNS (a definitive card beside the provisional one): records under either reach
    // the person; before, only the first CNS entered the crosswalk and the others stayed
    // parked forever.
    const SECOND_CNS: &str = "898001634957018";
    let mut h = Harness::new();
    h.apply(&health(
        "health:enc-second",
        Subject::Cns(SECOND_CNS.into()),
        "2025-03-15",
        1,
    ));
    assert_eq!(h.parked().len(), 1);
    h.apply(&profile(
        CHILD,
        "2021-05-01",
        "M",
        &[CHILD_CNS, SECOND_CNS],
        "",
        1,
    ));
    assert!(h.parked().is_empty(), "{:?}", h.parked());
    h.apply(&health(
        "health:enc-first",
        Subject::Cns(CHILD_CNS.into()),
        "2025-09-15",
        1,
    ));
    let records: Vec<(String, String)> = h
        .person(CHILD)
        .health_records
        .iter()
        .map(|r| (r.record_id.clone(), r.arrived_as.clone()))
        .collect();
    assert_eq!(
        records,
        [
            ("health:enc-first".to_owned(), format!("cns:{CHILD_CNS}")),
            ("health:enc-second".to_owned(), format!("cns:{SECOND_CNS}")),
        ]
    );
    // A profile that drops the second CNS parks its record again.
    h.apply(&profile(CHILD, "2021-05-01", "M", &[CHILD_CNS], "", 2));
    assert_eq!(h.parked().len(), 1);
    assert_eq!(h.person(CHILD).health_records.len(), 1);
}

#[test]
fn a_changed_mapping_moves_the_records_that_arrived_under_it() {
    let mut h = Harness::new();
    h.apply(&profile(CHILD, "2020-01-01", "F", &[CHILD_CNS], "", 1));
    h.apply(&health(
        "health:enc-1",
        Subject::Cns(CHILD_CNS.into()),
        "2025-03-15",
        1,
    ));
    assert_eq!(h.person(CHILD).health_records.len(), 1);

    // The registry corrects: the CNS was the mother's.
    h.apply(&profile(CHILD, "2020-01-01", "F", &[], "", 2));
    assert!(h.person(CHILD).health_records.is_empty());
    assert_eq!(h.parked().len(), 1, "parked again until someone carries it");
    h.apply(&profile(
        MOTHER,
        "1990-06-01",
        "F",
        &[CHILD_CNS],
        MOTHER_CPF,
        1,
    ));
    assert_eq!(h.person(MOTHER).health_records.len(), 1);
    assert!(h.parked().is_empty());

    // And a CPF-keyed record resolves through the CPF.
    h.apply(&health(
        "health:enc-2",
        Subject::Cpf(MOTHER_CPF.into()),
        "2025-08-01",
        1,
    ));
    assert_eq!(h.person(MOTHER).health_records.len(), 2);
}

/// Rewrites the health records held under identifiers as stores kept them before `a/<alt>`:
/// one key per record, `e/<alt>/<record id>` when the crosswalk maps the identifier and
/// `k/<alt>/<record id>` when it does not, and no parked count. Returns how many it rewrote.
fn to_per_record_keys(h: &mut Harness) -> usize {
    let mut map = h.kv.0.lock().unwrap();
    let held: Vec<(Vec<u8>, Vec<u8>)> = map
        .iter()
        .filter(|(k, _)| k[5..].starts_with(b"a/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut rewritten = 0;
    for (key, value) in held {
        let (prefix, alt) = (&key[..5], &key[7..]);
        let mapped = map.contains_key(&[prefix, b"x/", alt].concat());
        let table: &[u8] = if mapped { b"e/" } else { b"k/" };
        for record in HeldHealthRecords::decode(value.as_slice()).unwrap().records {
            let k = [prefix, table, alt, b"/", record.record_id.as_bytes()].concat();
            map.insert(k, record.encode_to_vec());
            rewritten += 1;
        }
        map.remove(&key);
    }
    map.retain(|k, _| &k[5..] != b"n/parked");
    rewritten
}

#[test]
fn health_records_kept_one_key_each_are_moved_into_their_identifiers_value() {
    // One record parked under the child's CNS, one forwarded through the mother's CPF.
    let steps = [
        health(
            "health:enc-1",
            Subject::Cns(CHILD_CNS.into()),
            "2025-03-15",
            1,
        ),
        health(
            "health:enc-2",
            Subject::Cpf(MOTHER_CPF.into()),
            "2025-03-20",
            1,
        ),
        profile(MOTHER, "1990-06-01", "F", &[], MOTHER_CPF, 1),
    ];
    let mut h = Harness::new();
    let mut reference = Harness::new();
    for step in &steps {
        h.apply(step);
        reference.apply(step);
    }
    assert_eq!(to_per_record_keys(&mut h), 2);
    // A new assignment reads the store: the parked count is taken from the `k/` keys.
    h.parked.clear();
    h.parked
        .reassign(&h.kv, &(0..PARTITIONS).collect())
        .unwrap();
    assert_eq!(h.parked().len(), 1);
    assert_eq!(h.parked.total(), 1);

    // The child's profile claims the CNS: the record parked one key each reaches the child,
    // and a newer version of the mother's record replaces the one forwarded one key each.
    let more = [
        profile(CHILD, "2020-01-01", "F", &[CHILD_CNS], "", 1),
        health(
            "health:enc-2",
            Subject::Cpf(MOTHER_CPF.into()),
            "2025-04-02",
            2,
        ),
    ];
    for step in &more {
        h.apply(step);
        reference.apply(step);
    }
    assert!(h.parked().is_empty());
    assert_eq!(h.person(CHILD).health_records.len(), 1);
    let mother = h.person(MOTHER);
    assert_eq!(mother.health_records.len(), 1);
    assert_eq!(mother.health_records[0].version, 2);
    let per_record: Vec<String> =
        h.kv.0
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k[5..].starts_with(b"e/") || k[5..].starts_with(b"k/"))
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
    assert!(per_record.is_empty(), "{per_record:?}");
    // The same state as a store that never kept them one key each.
    assert_eq!(h.normalised(), reference.normalised());
}

#[test]
fn unknown_record_types_and_bad_identifiers_are_reported_not_dropped_silently() {
    let mut h = Harness::new();
    let (_, e) = attendance(CHILD, "2025-04", 20, 20, 1);
    assert!(matches!(h.apply(&(Input::Health, e)), Applied::Invalid(_)));
    let bad = health("health:x", Subject::Cns("123".into()), "2025-03-15", 1);
    match h.apply(&bad) {
        Applied::Invalid(why) => assert!(why.to_string().starts_with("cns:"), "{why}"),
        other => panic!("{other:?}"),
    }
}

fn history() -> Vec<(Input, Event)> {
    vec![
        profile(CHILD, "2017-03-10", "M", &[CHILD_CNS], "", 1),
        profile(MOTHER, "1990-06-01", "F", &[], MOTHER_CPF, 1),
        attendance(CHILD, "2025-04", 20, 14, 1),
        attendance(CHILD, "2025-05", 20, 19, 1),
        attendance(CHILD, "2025-04", 20, 18, 2),
        attendance(CHILD, "2025-08", 20, 10, 1),
        health(
            "health:enc-1",
            Subject::Cns(CHILD_CNS.into()),
            "2025-03-15",
            1,
        ),
        health(
            "health:enc-2",
            Subject::Cpf(MOTHER_CPF.into()),
            "2025-09-01",
            1,
        ),
        health(
            "health:enc-2",
            Subject::Cpf(MOTHER_CPF.into()),
            "2025-09-02",
            2,
        ),
        (
            Input::AssistanceFamily,
            event(
                "assistance:fu-1",
                1,
                Record::FamilyFollowUp(ev::FamilyFollowUp {
                    family_id: FAMILY.into(),
                    opened_on: "2025-06-01".into(),
                    interrupt_effects: true,
                    ..Default::default()
                }),
            ),
        ),
        (
            Input::AssistanceFamily,
            event(
                "assistance:appeal-1",
                1,
                Record::Appeal(ev::Appeal {
                    family_id: FAMILY.into(),
                    period: "2025-B2".into(),
                    filed_on: "2025-07-10".into(),
                    decision: "REJECTED".into(),
                    ..Default::default()
                }),
            ),
        ),
        // A record filed for its semester only, and retractions that carry only their keys:
        // the tombstones they leave must not depend on the order either.
        semester_only(CHILD_CNS, "2025-S2", 1),
        accepted_appeal("assistance:appeal:F-0001:R1", "2025-B4", 1),
        appeal_retraction("assistance:appeal:F-0001:R1", 2),
        health_retraction(
            "health:enc-3",
            Subject::Cpf(MOTHER_CPF.into()),
            "2025-S1",
            3,
        ),
    ]
}

/// A health record in the simple JSON form's semester-only shape: no encounter date.
fn semester_only(cns: &str, semester: &str, version: u64) -> (Input, Event) {
    (
        Input::Health,
        event(
            &format!("health:cns:{cns}:{semester}"),
            version,
            Record::HealthFollowUp(ev::HealthFollowUp {
                subject: Some(Subject::Cns(cns.into())),
                semester: semester.into(),
                vaccination_up_to_date: Some(true),
                weight_grams: Some(14_200),
                height_mm: Some(985),
                ..Default::default()
            }),
        ),
    )
}

/// A retraction as the health adapter publishes it: the subject and the semester, nothing else.
fn health_retraction(id: &str, subject: Subject, semester: &str, version: u64) -> (Input, Event) {
    let mut e = event(
        id,
        version,
        Record::HealthFollowUp(ev::HealthFollowUp {
            subject: Some(subject),
            semester: semester.into(),
            ..Default::default()
        }),
    );
    e.retraction = true;
    (Input::Health, e)
}

fn accepted_appeal(id: &str, period: &str, version: u64) -> (Input, Event) {
    (
        Input::AssistanceFamily,
        event(
            id,
            version,
            Record::Appeal(ev::Appeal {
                family_id: FAMILY.into(),
                period: period.into(),
                filed_on: "2025-10-01".into(),
                decision: "ACCEPTED".into(),
                decided_on: "2025-10-20".into(),
                ..Default::default()
            }),
        ),
    )
}

/// An appeal retraction by its id, as the assistance docs allow: no period.
fn appeal_retraction(id: &str, version: u64) -> (Input, Event) {
    let mut e = event(
        id,
        version,
        Record::Appeal(ev::Appeal {
            family_id: FAMILY.into(),
            ..Default::default()
        }),
    );
    e.retraction = true;
    (Input::AssistanceFamily, e)
}

#[test]
fn a_semester_only_health_record_counts_for_its_semester() {
    // Two children under 7 (the health public), the same follow-up sent for both: one with
    // only the semester, one also with the encounter date. Both are followed and compliant.
    let mut h = Harness::new();
    h.apply(&profile(CHILD, "2021-05-01", "M", &[CHILD_CNS], "", 1));
    h.apply(&profile(MOTHER, "2021-07-01", "F", &[], MOTHER_CPF, 1));
    assert_eq!(
        h.apply(&semester_only(CHILD_CNS, "2025-S1", 1)),
        Applied::Changed
    );
    let (input, mut dated) = semester_only(MOTHER_CPF, "2025-S1", 1);
    if let Some(Record::HealthFollowUp(f)) = &mut dated.record {
        f.subject = Some(Subject::Cpf(MOTHER_CPF.into()));
        f.encounter_date = "2025-03-10".into();
    }
    dated.record_id = format!("health:cpf:{MOTHER_CPF}:2025-S1");
    assert_eq!(h.apply(&(input, dated)), Applied::Changed);
    for nis in [CHILD, MOTHER] {
        assert_eq!(
            h.outcome(nis, "health", "2025-S1"),
            OutcomeStatus::Compliant,
            "{nis}"
        );
        assert_eq!(
            h.outcome(nis, "health", "2025-S2"),
            OutcomeStatus::NotFollowed
        );
    }
    let record = &h.person(CHILD).health_records[0];
    assert_eq!(
        (record.encounter_date.as_str(), record.semester.as_str()),
        ("", "2025-S1")
    );
    assert_eq!(h.person(MOTHER).health_records[0].semester, "2025-S1");
    // Its retraction, with only the subject and the semester, withdraws it.
    h.apply(&health_retraction(
        &format!("health:cns:{CHILD_CNS}:2025-S1"),
        Subject::Cns(CHILD_CNS.into()),
        "2025-S1",
        2,
    ));
    assert_eq!(
        h.outcome(CHILD, "health", "2025-S1"),
        OutcomeStatus::NotFollowed
    );
}

#[test]
fn a_registry_retraction_with_only_the_nis_takes_the_person_out_of_public_and_family() {
    let mut h = Harness::new();
    h.apply(&profile(CHILD, "2017-03-10", "M", &[CHILD_CNS], "", 1));
    h.apply(&profile(MOTHER, "1990-06-01", "F", &[], MOTHER_CPF, 1));
    h.apply(&attendance(CHILD, "2025-04", 20, 10, 1));
    assert_eq!(
        h.family(FAMILY).non_compliant_periods,
        vec!["2025-B2".to_owned()]
    );
    let mut retraction = event(
        &format!("registry:{CHILD}"),
        2,
        Record::PersonProfile(ev::PersonProfile {
            nis: CHILD.into(),
            ..Default::default()
        }),
    );
    retraction.retraction = true;
    assert_eq!(
        h.apply(&(Input::Registry, retraction.clone())),
        Applied::Changed
    );
    let child = h.person(CHILD);
    assert!(!child.registered);
    assert!(child.outcomes.is_empty(), "{:?}", child.outcomes);
    let family = h.family(FAMILY);
    assert_eq!(family.members, vec![MOTHER.to_owned()]);
    assert!(family.non_compliant_periods.is_empty());
    assert!(family.effects.is_empty());
    // Replayed, or with an older profile arriving late, nothing comes back.
    assert_eq!(h.apply(&(Input::Registry, retraction)), Applied::Unchanged);
    assert_eq!(
        h.apply(&profile(CHILD, "2017-03-10", "M", &[CHILD_CNS], "", 1)),
        Applied::Unchanged
    );
    assert!(!h.person(CHILD).registered);
}

fn erasure(nis: &str) -> (Input, Event) {
    (
        Input::Registry,
        event(
            &format!("operator:erasure:{nis}"),
            1,
            Record::PersonErasure(ev::PersonErasure {
                nis: nis.into(),
                reference: "SIC-2026-0042".into(),
            }),
        ),
    )
}

/// The state's keys and values (decoded as text where they are text) that hold `needle`.
fn state_holding(h: &Harness, needle: &str) -> Vec<String> {
    let holds = |b: &[u8]| b.windows(needle.len()).any(|w| w == needle.as_bytes());
    h.kv.0
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, v)| holds(k) || holds(v))
        .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
        .collect()
}

#[test]
fn an_erased_person_leaves_nothing_in_the_state_and_their_family_goes_on_without_them() {
    let mut h = Harness::new();
    for e in history() {
        h.apply(&e);
    }
    // An appeal naming the child, and a health record under the child's CNS; the child is a
    // non-compliant member of the family.
    h.apply(&(
        Input::AssistanceFamily,
        event(
            "assistance:appeal-child",
            1,
            Record::Appeal(ev::Appeal {
                family_id: FAMILY.into(),
                nis: CHILD.into(),
                period: "2025-B4".into(),
                filed_on: "2025-09-10".into(),
                decision: "REJECTED".into(),
                ..Default::default()
            }),
        ),
    ));
    let before = h.family(FAMILY);
    assert!(before.members.contains(&CHILD.to_owned()));
    assert!(!before.non_compliant_periods.is_empty());
    assert!(!state_holding(&h, CHILD).is_empty());
    assert!(!state_holding(&h, CHILD_CNS).is_empty());

    assert_eq!(h.apply(&erasure(CHILD)), Applied::Erased);

    // No key or value of the state holds the child's NIS or CNS.
    assert_eq!(state_holding(&h, CHILD), Vec::<String>::new());
    assert_eq!(state_holding(&h, CHILD_CNS), Vec::<String>::new());
    // The person's view is a tombstone; the family's view goes on with the mother only, with
    // neither the child's outcomes nor the appeal naming them.
    assert!(!h.views.contains_key(&format!("person:{CHILD}")));
    assert!(h.outputs.iter().any(|(k, key, p)| *k == OutputKind::Change
        && *key == format!("person:{CHILD}")
        && p.is_empty()));
    let family = h.family(FAMILY);
    assert_eq!(family.members, vec![MOTHER.to_owned()]);
    let encoded = family.encode_to_vec();
    assert!(
        !encoded.windows(CHILD.len()).any(|w| w == CHILD.as_bytes()),
        "{family:?}"
    );
    assert!(family.non_compliant_periods.is_empty(), "{family:?}");
    assert!(h.person(MOTHER).registered);

    // Erasing again changes nothing; a record that arrives afterwards under the child's CNS
    // belongs to no one and is parked.
    assert_eq!(h.apply(&erasure(CHILD)), Applied::Unchanged);
    assert_eq!(
        h.apply(&semester_only(CHILD_CNS, "2025-S1", 7)),
        Applied::Parked
    );
}

#[test]
fn erasing_a_family_s_only_member_deletes_the_family_view() {
    let mut h = Harness::new();
    h.apply(&profile(CHILD, "2017-03-10", "M", &[CHILD_CNS], "", 1));
    h.apply(&attendance(CHILD, "2025-04", 20, 10, 1));
    assert_eq!(h.family(FAMILY).members, vec![CHILD.to_owned()]);
    assert_eq!(h.apply(&erasure(CHILD)), Applied::Erased);
    assert!(!h.views.contains_key(&format!("family:{FAMILY}")));
    assert!(!h.views.contains_key(&format!("person:{CHILD}")));
    assert_eq!(state_holding(&h, CHILD), Vec::<String>::new());
    assert_eq!(state_holding(&h, FAMILY), Vec::<String>::new());
}

#[test]
fn an_accepted_appeal_revokes_the_effect_visibly_and_its_retraction_by_id_restores_it() {
    let mut h = Harness::new();
    h.apply(&profile(CHILD, "2017-03-10", "M", &[CHILD_CNS], "", 1));
    h.apply(&attendance(CHILD, "2025-04", 20, 10, 1));
    let applied = h.family(FAMILY).effects;
    assert_eq!(applied.len(), 1, "{applied:?}");
    assert_eq!(applied[0].status, "applied");

    let id = "assistance:appeal:F-0001:R-2025-000123";
    h.apply(&accepted_appeal(id, "2025-B2", 1));
    let revoked = h.family(FAMILY).effects;
    assert_eq!(
        revoked.len(),
        1,
        "the revoked effect stays visible: {revoked:?}"
    );
    assert_eq!(
        (revoked[0].name.as_str(), revoked[0].status.as_str()),
        (applied[0].name.as_str(), "revoked_by_appeal")
    );
    assert_eq!(revoked[0].appeal_record_ids, vec![id.to_owned()]);
    assert_eq!(revoked[0].causes, applied[0].causes);

    assert_eq!(h.apply(&appeal_retraction(id, 2)), Applied::Changed);
    let restored = h.family(FAMILY).effects;
    assert_eq!(restored, applied);
}

#[test]
fn the_history_spans_several_partitions_so_the_stages_really_are_apart() {
    let used: std::collections::BTreeSet<i32> = history()
        .iter()
        .map(|(i, e)| partition_of(&key_of(*i, e)))
        .chain([partition_of(FAMILY)])
        .collect();
    assert!(used.len() >= 2, "{used:?}");
    // The child's CNS and the child's NIS are on different partitions: the health record
    // must travel through the repartition topics to reach the person.
    assert_ne!(partition_of(CHILD_CNS), partition_of(CHILD));
}

/// One step of an epoch in [`Harness::epoch`].
#[derive(Debug, Clone, Copy)]
enum Step {
    /// The `i`-th source event.
    Source(usize),
    /// A delivery from the `n`-th non-empty repartition queue.
    Deliver(usize),
}

impl Harness {
    /// Applies `steps` in one transaction committed once at the end, as the service's epochs
    /// do: later steps read the earlier ones' uncommitted writes, and what the epoch sends
    /// onwards is delivered only after its commit.
    ///
    /// As the service's consumer loop, the epoch's messages are applied in runs of at most
    /// [`READ_AHEAD_RUN`] (here `run`), each run's state keys read ahead at once first.
    fn epoch(&mut self, events: &[(Input, Event)], steps: &[Step]) {
        self.epoch_in_runs(events, steps, READ_AHEAD_RUN);
    }

    fn epoch_in_runs(&mut self, events: &[(Input, Event)], steps: &[Step], run: usize) {
        // What each step delivers; the queues do not change before the commit.
        enum Message<'e> {
            Source(Input, &'e Event),
            Internal(Input, Vec<u8>),
        }
        let messages: Vec<(i32, String, Message<'_>)> = steps
            .iter()
            .filter_map(|step| match *step {
                Step::Source(i) => {
                    let (input, event) = &events[i];
                    let key = key_of(*input, event);
                    Some((partition_of(&key), key, Message::Source(*input, event)))
                }
                Step::Deliver(n) => {
                    let (input, partition, key, payload) = pending_of(&mut self.pending, n)?;
                    Some((partition, key, Message::Internal(input, payload)))
                }
            })
            .collect();
        let state = Screened::new(&self.kv, &self.parked);
        let pending = Pending::new(&state);
        if let Some((writes, _)) = &self.in_flight {
            pending.set(std::sync::Arc::new(writes.clone()));
        }
        let mut tx = Tx::new(&pending);
        for chunk in messages.chunks(run.max(1)) {
            tx.read_ahead(chunk.iter().flat_map(|(partition, key, message)| {
                let keys = match message {
                    Message::Source(input, event) => {
                        self.topology
                            .keys_read(*input, key.as_bytes(), &event.encode_to_vec())
                    }
                    Message::Internal(input, payload) => {
                        self.topology.keys_read(*input, key.as_bytes(), payload)
                    }
                };
                keys.into_iter().map(|k| (*partition, k))
            }))
            .unwrap();
            for (partition, _, message) in chunk {
                tx.set_partition(*partition);
                match message {
                    Message::Source(input, event) => {
                        self.topology.apply(&mut tx, *input, event).unwrap();
                    }
                    Message::Internal(input, payload) => {
                        let (applied, _) = self
                            .topology
                            .apply_internal(&mut tx, *input, payload)
                            .unwrap();
                        assert!(
                            !matches!(applied, Applied::Invalid(_)),
                            "{input:?}: {applied:?}"
                        );
                    }
                }
            }
        }
        self.topology.finish(&mut tx).unwrap();
        let taken = tx.take();
        drop(tx);
        drop(pending);
        if !self.pipelined {
            self.commit(taken);
            return;
        }
        // The epoch before commits now, after this one was applied over it.
        if let Some(before) = self.in_flight.replace(taken) {
            self.commit(before);
        }
    }

    /// Commits the epoch in flight, if any; false when there was none.
    fn complete_in_flight(&mut self) -> bool {
        match self.in_flight.take() {
            Some(epoch) => {
                self.commit(epoch);
                true
            }
            None => false,
        }
    }
}

/// The tables of the keys the state was read one key at a time since `from` (of all reads).
fn tables_read_one_by_one(h: &Harness, from: usize) -> BTreeSet<String> {
    h.kv.1.lock().unwrap()[from..]
        .iter()
        .map(|k| {
            let local = &k[5..]; // after the `NNNN/` partition prefix
            let table = local.split(|b| *b == b'/').next().unwrap();
            String::from_utf8_lossy(table).into_owned()
        })
        .collect()
}

#[test]
fn applying_a_run_reads_nothing_one_by_one() {
    // The whole history in one epoch, in runs as the consumer loop applies them: every person
    // and family it touches was read ahead, and so were the health records that arrived by CNS
    // or CPF (held under the record's id, and the identifier's mapping, which their events name).
    let events = history();
    assert!(
        events.iter().any(|(_, e)| matches!(
            &e.record,
            Some(Record::HealthFollowUp(h)) if matches!(h.subject, Some(Subject::Cns(_)))
        )),
        "the history has health records by CNS"
    );
    let mut h = Harness::new();
    let steps: Vec<Step> = (0..events.len()).map(Step::Source).collect();
    h.epoch(&events, &steps);
    assert_eq!(tables_read_one_by_one(&h, 0), BTreeSet::new());
    // The repartition topics' messages (identifier claims, health records by NIS, members'
    // outcomes) name every key they read first.
    let from = h.kv.1.lock().unwrap().len();
    let mut delivered = 0;
    while !h.pending.values().all(VecDeque::is_empty) {
        let queued: usize = h.pending.values().map(VecDeque::len).sum();
        delivered += queued;
        h.epoch(&events, &vec![Step::Deliver(0); queued]);
    }
    assert!(delivered > 10, "{delivered} messages delivered");
    assert_eq!(tables_read_one_by_one(&h, from), BTreeSet::new());
}

#[test]
fn an_event_already_decoded_names_the_keys_its_payload_would() {
    // `ponte-bench`'s in-process run reads ahead from events it holds decoded: a health record
    // by CNS or CPF names its identifier's keys there as it does from its payload.
    let h = Harness::new();
    let mut by_identifier = 0;
    for (input, event) in history() {
        let key = key_of(input, &event);
        let from_payload = h
            .topology
            .keys_read(input, key.as_bytes(), &event.encode_to_vec());
        let from_event = h.topology.keys_read_of_event(input, key.as_bytes(), &event);
        assert_eq!(from_event, from_payload, "{}", event.record_id);
        if input == Input::Health && !from_event.is_empty() {
            by_identifier += 1;
        }
    }
    assert!(
        by_identifier > 0,
        "the history has health records by identifier"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any order of the sources, and any interleaving of the repartition topics' deliveries
    /// with them (each partition stays in order, as in Kafka), ends in the same state.
    #[test]
    fn the_final_view_does_not_depend_on_the_interleaving_of_sources(
        order in Just((0..history().len()).collect::<Vec<_>>()).prop_shuffle(),
        steps in proptest::collection::vec(0usize..8, 0..64),
    ) {
        let events = history();
        let mut straight = Harness::new();
        for e in &events {
            let applied = straight.apply(e);
            prop_assert!(!matches!(applied, Applied::Invalid(_)), "{}: {:?}", e.1.record_id, applied);
        }
        let mut shuffled = Harness::new();
        let mut next = order.iter();
        for step in steps {
            // 0..=3: the next source event; otherwise a delivery from some partition's queue.
            if step <= 3 {
                if let Some(&i) = next.next() { shuffled.apply_only(&events[i]); }
            } else {
                shuffled.deliver(step);
            }
            // The parked count kept from the commits agrees with a scan at every step.
            shuffled.parked();
        }
        let snapshot = shuffled.snapshot();
        for &i in next { shuffled.apply_only(&events[i]); }
        shuffled.settle();
        shuffled.parked();
        shuffled.restores_derive_the_index_kept(snapshot);
        prop_assert_eq!(straight.normalised(), shuffled.normalised());
        let views = |h: &Harness| -> BTreeMap<String, Vec<u8>> {
            h.views.iter().map(|(k, c)| {
                let mut c = c.clone();
                match &mut c.view {
                    Some(api::compliance_change::View::Person(p)) => { p.view_version = 0; p.updated_time = None; }
                    Some(api::compliance_change::View::Family(f)) => { f.view_version = 0; f.updated_time = None; }
                    Some(api::compliance_change::View::Household(h)) => { h.view_version = 0; h.updated_time = None; }
                    None => {}
                }
                (k.clone(), c.encode_to_vec())
            }).collect()
        };
        prop_assert_eq!(views(&straight), views(&shuffled), "the published views agree too");
    }

    /// The same holds when events are applied in epochs of any size — several events, of any
    /// partitions, in one transaction over the uncommitted state of the earlier ones, and
    /// repartition messages delivered only after their epoch's commit — as the reconciler's
    /// epochs do, each applied in runs of any length whose state keys are read ahead, and
    /// the parked counts read again from the store every few epochs, as a new
    /// assignment generation has it, and (`pipelined`) each epoch applied over the writes of
    /// the one before while that one is still uncommitted, as the consumer loop pipelines them.
    #[test]
    fn epochs_of_any_size_end_in_the_views_of_one_event_at_a_time(
        order in Just((0..history().len()).collect::<Vec<_>>()).prop_shuffle(),
        sizes in proptest::collection::vec(1usize..12, 1..24),
        picks in proptest::collection::vec(0usize..8, 64),
        run in 1usize..8,
        reindex_every in 0usize..4,
        pipelined in any::<bool>(),
    ) {
        let events = history();
        let mut one_at_a_time = Harness::new();
        for e in &events { one_at_a_time.apply(e); }
        let mut epochs = Harness::new();
        epochs.pipelined = pipelined;
        let mut next = order.iter().copied();
        let mut pick = picks.iter().copied().cycle();
        let mut reindexed = 0;
        for size in sizes.iter().copied().cycle() {
            let mut steps: Vec<Step> = (0..size)
                .filter_map(|_| {
                    let p = pick.next().unwrap_or(0);
                    if p <= 4 { next.next().map(Step::Source) } else { Some(Step::Deliver(p)) }
                })
                .collect();
            if next.len() == 0 && steps.iter().all(|s| matches!(s, Step::Deliver(_))) {
                if epochs.pending.values().all(VecDeque::is_empty) {
                    // What the epoch in flight sends onwards is delivered once it commits.
                    if epochs.complete_in_flight() {
                        continue;
                    }
                    break;
                }
                steps.push(Step::Deliver(0));
            }
            epochs.epoch_in_runs(&events, &steps, run);
            epochs.parked();
            reindexed += 1;
            if reindex_every > 0 && reindexed % reindex_every == 0 {
                epochs.parked.clear();
                epochs.parked.reassign(&epochs.kv, &(0..PARTITIONS).collect()).unwrap();
            }
        }
        epochs.complete_in_flight();
        prop_assert_eq!(one_at_a_time.normalised(), epochs.normalised());
    }

    #[test]
    fn replaying_any_prefix_changes_nothing(cut in 0usize..16) {
        let events = history();
        let mut once = Harness::new();
        for e in &events { once.apply(e); }
        let before = once.kv.0.lock().unwrap().clone();
        let outputs_before = once.outputs.len();
        for e in events.iter().take(cut) { once.apply(e); }
        prop_assert_eq!(&before, &*once.kv.0.lock().unwrap());
        prop_assert_eq!(outputs_before, once.outputs.len(), "nothing is emitted again");
    }
}

#[test]
fn municipal_lists_and_indicators_follow_the_outcomes() {
    let mut h = Harness::new();
    let events = history();
    let mut snapshot = h.snapshot();
    for (i, e) in events.iter().enumerate() {
        if i == events.len() / 2 {
            snapshot = h.snapshot();
        }
        h.apply(e);
    }
    h.restores_derive_the_index_kept(snapshot);
    // The reference: the latest view published for each person, as a reader of the compacted
    // changes topic holds them.
    let published: Vec<api::Person> = h
        .views
        .values()
        .filter_map(|c| match &c.view {
            Some(api::compliance_change::View::Person(p)) if p.municipality == "3550308" => {
                Some((p.nis.clone(), p.clone()))
            }
            _ => None,
        })
        .collect::<BTreeMap<_, _>>()
        .into_values()
        .collect();
    let list_persons = |after: &str, limit: usize, keep: &dyn Fn(&api::Person) -> bool| {
        published
            .iter()
            .filter(|p| p.nis.as_str() > after && keep(p))
            .take(limit)
            .cloned()
            .collect::<Vec<_>>()
    };
    let non_compliant_b4 = |p: &api::Person| {
        p.outcomes.iter().any(|o| {
            o.period == "2025-B4"
                && o.conditionality == "education"
                && o.status == OutcomeStatus::NonCompliant as i32
        })
    };
    // August at 50% makes the child non-compliant in 2025-B4; the mother is not in that public.
    let listed = list_persons("", 10, &non_compliant_b4);
    assert_eq!(
        listed.iter().map(|p| p.nis.as_str()).collect::<Vec<_>>(),
        [CHILD]
    );
    let everyone = list_persons("", 10, &|_| true);
    assert_eq!(everyone.len(), 2);
    // Paging resumes after the token (the NIS), in NIS order.
    let first = list_persons("", 1, &|_| true);
    let rest = list_persons(&first[0].nis, 10, &|_| true);
    assert_eq!(first.len() + rest.len(), 2);
    assert!(first[0].nis < rest[0].nis);

    // The counts of the published views' outcomes in the public.
    let mut rows: BTreeMap<(String, String), ponte_domain::indicators::Counts> = BTreeMap::new();
    for o in published.iter().flat_map(|p| &p.outcomes) {
        let status = OutcomeStatus::try_from(o.status).unwrap();
        if status == OutcomeStatus::NotRequired {
            continue;
        }
        let c = rows
            .entry((o.conditionality.clone(), o.period.clone()))
            .or_default();
        c.public += 1;
        c.followed += u64::from(status != OutcomeStatus::NotFollowed);
        c.compliant += u64::from(status == OutcomeStatus::Compliant);
        c.non_compliant += u64::from(status == OutcomeStatus::NonCompliant);
    }
    let row = |cond: &str, period: &str| {
        *rows
            .get(&(cond.to_owned(), period.to_owned()))
            .unwrap_or_else(|| panic!("no {cond} {period} row"))
    };
    // Education 2025-B2: the child is in the public, followed and (after the correction)
    // compliant; the mother (35) is not in the education public.
    let b2 = row("education", "2025-B2");
    assert_eq!((b2.public, b2.followed, b2.compliant), (1, 1, 1));
    let b4 = row("education", "2025-B4");
    assert_eq!((b4.public, b4.non_compliant), (1, 1));
    // Health 2025-S2: the mother (woman 14–44) was followed in September.
    let s2 = row("health", "2025-S2");
    assert!(s2.followed >= 1, "{s2:?}");

    // The partitions' index and counts, read from the state, answer the same.
    let all: Vec<i32> = (0..PARTITIONS).collect();
    let any = ListFilter::default();
    let from_state = |after: &str, limit: usize, filter: &ListFilter| {
        h.topology
            .list_persons(&h.kv, &all, "3550308", after, limit, filter)
            .unwrap()
    };
    let b4 = ListFilter {
        period: "2025-B4".into(),
        conditionality: "education".into(),
        status: OutcomeStatus::NonCompliant,
    };
    assert!(listed.iter().all(|p| b4.keeps(p) && non_compliant_b4(p)));
    assert_eq!(from_state("", 10, &b4), listed);
    assert_eq!(from_state("", 10, &any), everyone);
    assert_eq!(from_state("", 1, &any), first);
    assert_eq!(from_state(&first[0].nis, 10, &any), rest);
    assert!(from_state(&rest[0].nis, 10, &any).is_empty());
    assert!(
        h.topology
            .list_persons(&h.kv, &all, "3304557", "", 10, &any)
            .unwrap()
            .is_empty()
    );
    // Every filter lists from the state whom the published views give: those the digests
    // screen out (statuses the index counts) included.
    for status in [
        OutcomeStatus::Unspecified,
        OutcomeStatus::Compliant,
        OutcomeStatus::NonCompliant,
        OutcomeStatus::NotFollowed,
        OutcomeStatus::NotRequired,
    ] {
        for conditionality in ["", "education", "health"] {
            for period in ["", "2025-B2", "2025-B4", "2025-S2"] {
                let filter = ListFilter {
                    period: period.into(),
                    conditionality: conditionality.into(),
                    status,
                };
                assert_eq!(
                    from_state("", 10, &filter),
                    list_persons("", 10, &|p| filter.keeps(p)),
                    "{filter:?}"
                );
            }
        }
    }
    let counted = h.topology.read_indicators(&h.kv, &all, "3550308").unwrap();
    assert_eq!(counted, rows);
    // Each partition counts only its own persons: the sum over them is the whole.
    let mut summed: BTreeMap<(String, String), u64> = BTreeMap::new();
    for p in 0..PARTITIONS {
        for (k, c) in h.topology.read_indicators(&h.kv, &[p], "3550308").unwrap() {
            *summed.entry(k).or_default() += c.public;
        }
    }
    assert_eq!(
        summed,
        counted.iter().map(|(k, c)| (k.clone(), c.public)).collect()
    );
}

#[test]
fn a_store_written_before_the_index_gets_it_built_and_then_kept() {
    let mut h = Harness::new();
    let events = history();
    let (first, rest) = events.split_at(events.len() / 2);
    for e in first {
        h.apply(e);
    }
    let kept = readable(&h.kv.derived());
    assert!(kept.keys().any(|k| k.contains("/mi/3550308/")), "{kept:?}");
    assert!(kept.keys().any(|k| k.contains("/ic/3550308/")), "{kept:?}");
    // As a version before the index left the store: digests that do not say what the index
    // holds, and no index.
    let legacy = {
        let mut map = h.kv.0.lock().unwrap();
        map.retain(|k, _| !is_derived(k));
        let mut legacy = None;
        for (k, v) in map.iter_mut() {
            if k[5..].starts_with(b"p/") {
                let mut entry = person_entry(v);
                if let Some(d) = &mut entry.digest {
                    assert!(d.indexed);
                    d.indexed = false;
                    d.municipality.clear();
                    d.counted.clear();
                }
                *v = [vec![3], entry.encode_to_vec()].concat();
                legacy = Some((k.clone(), v.clone()));
            }
        }
        legacy.unwrap()
    };
    // A restore that meets such a value cannot derive the index from it.
    let p = key_partition(&legacy.0).unwrap();
    let mut rederive = Rederive::new(p);
    rederive
        .entry(&MapKv::default(), &legacy.0, Some(&legacy.1))
        .unwrap();
    assert!(!rederive.whole());
    // Built from the persons, their records evaluated: the index the epochs kept.
    for p in 0..PARTITIONS {
        let built = h.topology.recount_index(&h.kv, p).unwrap();
        h.kv.0.lock().unwrap().extend(built);
    }
    assert_eq!(readable(&h.kv.derived()), kept);
    // And kept from then on (checked against a recount after every commit) as the persons
    // with old digests change.
    for e in rest {
        h.apply(e);
    }
    let map = h.kv.0.lock().unwrap();
    assert!(
        map.iter()
            .filter(|(k, _)| k[5..].starts_with(b"p/"))
            .any(|(_, v)| person_entry(v).digest.is_some_and(|d| d.indexed)),
        "changed persons' digests say what the index holds"
    );
}
