//! The household stage (Unidos) driven in-process: a household's records through the topology
//! to its view and exit test; evidence accepted only on the topic of its source's adapter; the
//! view independent of the order records arrive in; retractions and deployments without a
//! household-achievement rule set; after every epoch, the views and indicators read from the
//! state are those published, and the household index is the one its households give.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{MapKv, partition_of};

use std::collections::BTreeMap;

use ponte_adapter_assistance::household::{evidence_to_proto, profile_to_proto};
use ponte_domain::achievements::{
    AchievementRuleSet, Decimal, EvidenceRecord, HouseholdId, HouseholdProfile, Member, Subject,
    Value, Zone,
};
use ponte_domain::colombia::{Divipola, Document, HeldDocument, PersonIdentity, SisbenGroup};
use ponte_domain::period::{Date, Month};
use ponte_domain::records::Sex;
use ponte_domain::rules::RuleSet;
use ponte_proto::Timestamp;
use ponte_proto::compliance::v1::{self as api, AchievementState, CriterionState};
use ponte_proto::events::v1::{Event, event::Record};
use ponte_reconciler::topology::{
    Applied, Input, Kv as _, OutputKind, Topology, Tx, index_prefixes, is_derived,
};
use proptest::prelude::*;
use prost::Message as _;

const BOLSA: &str = include_str!("../../../rules/bolsa-familia-2023.toml");
const UNIDOS: &str = include_str!("../../../rules/unidos-2021.toml");
const HOUSEHOLD: &str = "HH-52001-0007";

fn unidos() -> AchievementRuleSet {
    AchievementRuleSet::from_toml_str("unidos-2021.toml", UNIDOS).unwrap()
}

fn topology(with_unidos: bool) -> Topology {
    let t = Topology::new(
        RuleSet::from_toml_str("bolsa-familia-2023.toml", BOLSA).unwrap(),
        Month::parse("2025-01").unwrap(),
        Month::parse("2025-12").unwrap(),
    );
    if with_unidos {
        t.with_achievements(unidos())
    } else {
        t
    }
}

fn date(s: &str) -> Date {
    Date::parse(s).unwrap()
}

/// Noon UTC of a day, as an acceptance time.
fn noon(day: &str) -> Timestamp {
    Timestamp {
        seconds: date(day).to_days() * 86_400 + 12 * 3600,
        nanos: 0,
    }
}

fn member(id: &str, born: &str, sex: Sex, docs: &[(&str, &str, &str)]) -> Member {
    let documents = docs
        .iter()
        .map(|(t, n, from)| HeldDocument {
            document: Document::parse_coded(t, n).unwrap(),
            from: date(from),
        })
        .collect();
    Member {
        identity: PersonIdentity::from_documents(Some(date(born)), Some(id.to_owned()), documents)
            .unwrap(),
        sex: Some(sex),
    }
}

/// A household of Pasto: a mother with her cédula and a daughter who went from the registro
/// civil to the tarjeta de identidad (one NUIP), with no IPM deprivation.
fn profile(version: u64) -> HouseholdProfile {
    let ipm = unidos().exit.ipm.unwrap().indicators;
    HouseholdProfile {
        record_id: format!("unidos-registry:household-profile:{HOUSEHOLD}"),
        version,
        retracted: false,
        household_id: HouseholdId(HOUSEHOLD.to_owned()),
        municipality: Divipola::parse("52001").unwrap(),
        zone: Some(Zone::Urban),
        sisben_group: Some(SisbenGroup::parse("A2").unwrap()),
        programmes: ["UNIDOS".to_owned()].into(),
        members: vec![
            member(
                "a",
                "1985-01-01",
                Sex::Female,
                &[("CC", "27123456", "2003-02-01")],
            ),
            member(
                "c",
                "2015-01-01",
                Sex::Female,
                &[
                    ("RC", "1085123456", "2015-01-10"),
                    ("TI", "1085123456", "2022-03-01"),
                ],
            ),
        ],
        figures: [(
            "extreme_poverty_line".to_owned(),
            Decimal::from_int(227_220).unwrap(),
        )]
        .into(),
        ipm_deprivations: ipm.into_iter().map(|i| (i.id, false)).collect(),
    }
}

fn flag(b: bool) -> Value {
    Value::Bool(b)
}
fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}
fn num(n: i64) -> Value {
    Value::Number(Decimal::from_int(n).unwrap())
}

/// An evidence record of `source` about `subject` (`household`, or a member's index in the
/// profile).
fn evidence(
    n: u32,
    source: &str,
    subject: &str,
    on: &str,
    items: &[(&str, Value)],
) -> EvidenceRecord {
    let p = profile(1);
    let subject = match subject {
        "household" => Subject::Household,
        i => Subject::Member(p.members[i.parse::<usize>().unwrap()].key().clone()),
    };
    EvidenceRecord {
        record_id: format!("{source}:household-evidence:{HOUSEHOLD}:E{n}"),
        version: 1,
        retracted: false,
        household_id: HouseholdId(HOUSEHOLD.to_owned()),
        source: source.to_owned(),
        subject,
        recorded_on: date(on),
        recorded_by: format!("{source}-recorder"),
        items: items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    }
}

fn envelope(record_id: &str, version: u64, retraction: bool, at: &str, record: Record) -> Event {
    Event {
        record_id: record_id.to_owned(),
        version,
        source_system: "unidos".to_owned(),
        event_time: Some(noon(at)),
        ingest_time: Some(noon(at)),
        retraction,
        sender: "principal:test".to_owned(),
        request_id: format!("req-{record_id}"),
        record: Some(record),
    }
}

fn profile_event(p: &HouseholdProfile, at: &str) -> (Input, Event) {
    (
        Input::AssistanceFamily,
        envelope(
            &p.record_id,
            p.version,
            false,
            at,
            Record::HouseholdProfile(profile_to_proto(p)),
        ),
    )
}

fn evidence_event(input: Input, e: &EvidenceRecord, at: &str) -> (Input, Event) {
    (
        input,
        envelope(
            &e.record_id,
            e.version,
            e.retracted,
            at,
            Record::HouseholdEvidence(evidence_to_proto(e)),
        ),
    )
}

/// The records of a household's accompaniment (rules/unidos-2021.toml; the same history as
/// ponte-domain's `a_household_through_its_accompaniment_to_its_exit`): a characterisation
/// visit in August 2024, a follow-up visit and the school and health sectors' records in 2025.
fn accompaniment() -> Vec<(Input, Event)> {
    let first = "2024-08-01";
    vec![
        profile_event(&profile(1), first),
        evidence_event(
            Input::AssistanceFamily,
            &evidence(
                1,
                "visit",
                "household",
                first,
                &[
                    ("per_capita_income", num(120_000)),
                    ("aqueduct_connection", flag(true)),
                    ("sewer_connection", flag(true)),
                    ("floor_material", text("earth")),
                    ("walls_adequate_urban", flag(true)),
                    ("persons_per_sleeping_room", num(2)),
                ],
            ),
            first,
        ),
        evidence_event(
            Input::AssistanceFamily,
            &evidence(
                2,
                "visit",
                "0",
                first,
                &[
                    ("reads_and_writes", flag(true)),
                    ("occupation", text("day_labourer")),
                    ("health_affiliation_regime", text("subsidiado")),
                ],
            ),
            first,
        ),
        evidence_event(
            Input::AssistanceFamily,
            &evidence(
                3,
                "visit",
                "1",
                first,
                &[
                    ("attends_school", text("attends")),
                    ("main_activity_last_week", text("studying")),
                    ("health_affiliation_regime", text("subsidiado")),
                ],
            ),
            first,
        ),
        evidence_event(
            Input::AssistanceFamily,
            &evidence(
                4,
                "visit",
                "household",
                "2025-05-20",
                &[
                    ("floor_material", text("other_than_earth")),
                    ("per_capita_income", num(240_000)),
                ],
            ),
            "2025-05-21",
        ),
        evidence_event(
            Input::Education,
            &evidence(
                5,
                "education",
                "1",
                "2025-02-10",
                &[("enrolled_current_year", flag(true))],
            ),
            "2025-02-11",
        ),
        evidence_event(
            Input::Health,
            &evidence(
                6,
                "health",
                "0",
                "2025-03-05",
                &[("health_affiliation_regime", text("subsidiado"))],
            ),
            "2025-03-06",
        ),
        evidence_event(
            Input::Health,
            &evidence(
                7,
                "health",
                "1",
                "2025-03-05",
                &[("health_affiliation_regime", text("subsidiado"))],
            ),
            "2025-06-30",
        ),
    ]
}

/// The topology over a map; the latest change per key, as the compacted topic keeps it.
struct Harness {
    kv: MapKv,
    topology: Topology,
    views: BTreeMap<String, Option<api::ComplianceChange>>,
    changes: usize,
    /// The state writes sent to the changelog (derived ones are not), in order.
    changelog: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Harness {
    fn new(with_unidos: bool) -> Self {
        Harness {
            kv: MapKv::default(),
            topology: topology(with_unidos),
            views: BTreeMap::new(),
            changes: 0,
            changelog: Vec::new(),
        }
    }

    fn apply(&mut self, e: &(Input, Event)) -> Applied {
        self.epoch(std::slice::from_ref(e)).remove(0)
    }

    /// Applies `events` in one epoch (one transaction, the household evaluated at its end),
    /// as the service does with a batch.
    fn epoch(&mut self, events: &[(Input, Event)]) -> Vec<Applied> {
        let mut tx = Tx::new(&self.kv);
        let mut applied = Vec::new();
        for (input, event) in events {
            let key = match &event.record {
                Some(Record::HouseholdProfile(p)) => p.household_id.clone(),
                Some(Record::HouseholdEvidence(e)) => e.household_id.clone(),
                _ => String::new(),
            };
            tx.set_partition(partition_of(&key));
            applied.push(self.topology.apply(&mut tx, *input, event).unwrap());
        }
        self.topology.finish(&mut tx).unwrap();
        let (writes, outputs) = tx.take();
        let mut map = self.kv.0.lock().unwrap();
        for (k, v) in writes {
            if !is_derived(&k) {
                self.changelog.push((k.clone(), v.clone()));
            }
            match v {
                Some(v) => map.insert(k, v),
                None => map.remove(&k),
            };
        }
        drop(map);
        for o in outputs {
            assert_eq!(
                o.kind,
                OutputKind::Change,
                "a household emits view changes only"
            );
            self.changes += 1;
            let change = o
                .payload
                .map(|p| api::ComplianceChange::decode(p.as_slice()).unwrap());
            self.views.insert(o.key, change);
        }
        self.reads_from_the_state_are_what_was_published();
        assert_eq!(
            self.kv.derived(),
            self.recount(&self.kv),
            "the household index kept by the epochs against a recount"
        );
        applied
    }

    /// The derived entries a build from `kv`'s households gives.
    fn recount(&self, kv: &MapKv) -> BTreeMap<Vec<u8>, Vec<u8>> {
        (0..common::PARTITIONS)
            .flat_map(|p| self.topology.recount_index(kv, p).unwrap())
            .collect()
    }

    /// Every household's view read from the state (from its partition) is the latest one
    /// published, counters included, or none after a tombstone; each municipality's
    /// indicators read from the state (every partition) are those its published views give.
    fn reads_from_the_state_are_what_was_published(&self) {
        let state = self.kv.copy();
        let mut published: BTreeMap<String, Vec<api::Household>> = BTreeMap::new();
        for (key, change) in &self.views {
            let id = key.strip_prefix("household:").unwrap();
            let view = match change {
                Some(api::ComplianceChange {
                    view: Some(api::compliance_change::View::Household(h)),
                }) => Some(h.clone()),
                _ => None,
            };
            let read = self
                .topology
                .read_household(&state, partition_of(id), id)
                .unwrap();
            assert_eq!(read, view, "{key}: the view read from the state");
            if let Some(h) = view {
                published.entry(h.municipality.clone()).or_default().push(h);
            }
        }
        let partitions: Vec<i32> = (0..common::PARTITIONS).collect();
        for (municipality, views) in published {
            let read = self
                .topology
                .household_indicators(&state, &partitions, &municipality)
                .unwrap();
            assert_eq!(read.households, views.len() as u64, "{municipality}");
            let may_leave = views
                .iter()
                .filter(|h| h.exit.as_ref().is_some_and(|e| e.may_leave))
                .count();
            assert_eq!(read.may_leave, may_leave as u64, "{municipality}");
            let mut counted: BTreeMap<(String, i32), u64> = BTreeMap::new();
            for a in views.iter().flat_map(|h| &h.achievements) {
                *counted.entry((a.dimension.clone(), a.state)).or_default() += 1;
            }
            let mut read_counts: BTreeMap<(String, i32), u64> = BTreeMap::new();
            for d in &read.dimensions {
                for (state, n) in [
                    (AchievementState::AchievementReached, d.reached),
                    (AchievementState::AchievementNotReached, d.not_reached),
                    (AchievementState::AchievementNotApplicable, d.not_applicable),
                    (AchievementState::AchievementUnknown, d.unknown),
                ] {
                    if n > 0 {
                        read_counts.insert((d.dimension.clone(), state as i32), n);
                    }
                }
            }
            assert_eq!(
                read_counts, counted,
                "{municipality}: achievements by dimension"
            );
        }
    }

    /// The state restored from the changelog into an empty store in batches of `batch`, the
    /// index derived as the service's restore derives it; `None` when the restore says the
    /// index is to be built again.
    fn restored(&self, batch: usize) -> Option<MapKv> {
        let kv = MapKv::default();
        common::restore(&kv, &self.changelog, batch).then_some(kv)
    }

    fn household(&self) -> Option<api::Household> {
        match self.views.get(&format!("household:{HOUSEHOLD}"))? {
            Some(api::ComplianceChange {
                view: Some(api::compliance_change::View::Household(h)),
            }) => Some(h.clone()),
            None => None,
            other => panic!("not a household view: {other:?}"),
        }
    }
}

fn state_of(h: &api::Household, achievement: &str) -> AchievementState {
    let a = h
        .achievements
        .iter()
        .find(|a| a.achievement == achievement)
        .unwrap_or_else(|| panic!("no achievement {achievement}"));
    AchievementState::try_from(a.state).unwrap()
}

#[test]
fn a_household_is_followed_from_its_characterisation_visit_to_its_exit() {
    let records = accompaniment();
    let mut h = Harness::new(true);
    for r in &records[..4] {
        assert_eq!(h.apply(r), Applied::Changed);
    }
    let first = h.household().expect("a view after the first visit");
    assert_eq!(first.municipality, "52001");
    assert_eq!(first.sisben_group, "A2");
    assert_eq!(first.rule_set, "unidos-2021@2021.1");
    assert_eq!(first.evaluated_on, "2024-08-01");
    assert_eq!(first.members.len(), 2);
    assert_eq!(
        state_of(&first, "L01"),
        AchievementState::AchievementReached
    );
    assert_eq!(
        state_of(&first, "L21"),
        AchievementState::AchievementNotReached
    );
    assert_eq!(
        state_of(&first, "L11"),
        AchievementState::AchievementNotReached
    );
    let exit = first.exit.as_ref().unwrap();
    assert!(!exit.may_leave);
    assert!(
        exit.criteria
            .iter()
            .any(|c| c.criterion == "income" && c.state == CriterionState::CriterionNotMet as i32)
    );
    // The floor's evidence names the visit, its day and who recorded it.
    let l21 = first
        .achievements
        .iter()
        .find(|a| a.achievement == "L21")
        .unwrap();
    let used = l21.evidence.as_ref().unwrap();
    assert_eq!(
        (
            used.source.as_str(),
            used.recorded_on.as_str(),
            used.item.as_str()
        ),
        ("visit", "2024-08-01", "floor_material")
    );
    assert_eq!(used.recorded_by, "visit-recorder");

    for r in &records[4..] {
        assert_eq!(h.apply(r), Applied::Changed);
    }
    let last = h.household().unwrap();
    assert!(last.exit.as_ref().unwrap().may_leave, "{:#?}", last.exit);
    assert_eq!(last.evaluated_on, "2025-06-30");
    assert_eq!(state_of(&last, "L21"), AchievementState::AchievementReached);
    assert!(last.view_version > first.view_version);
    // Every record the view uses is listed with where it came from.
    assert_eq!(last.sources.len(), records.len());
    assert!(last.sources.iter().all(|s| s.sender == "principal:test"));
    assert!(
        last.sources
            .iter()
            .any(|s| s.record_type == "household_evidence" && s.record_id.starts_with("health:"))
    );

    // A redelivered record changes nothing and publishes nothing.
    let changes = h.changes;
    assert_eq!(h.apply(&records[5]), Applied::Unchanged);
    assert_eq!(h.changes, changes);
}

#[test]
fn an_epoch_evaluates_a_household_once_and_publishes_one_view() {
    let records = accompaniment();
    let mut one_by_one = Harness::new(true);
    for r in &records {
        one_by_one.apply(r);
    }
    let mut epoch = Harness::new(true);
    let applied = epoch.epoch(&records);
    assert!(applied.iter().all(|a| *a == Applied::Changed));
    assert_eq!(epoch.changes, 1, "one view for the epoch's eight records");
    assert_eq!(
        epoch.household().map(normalised),
        one_by_one.household().map(normalised)
    );
    assert_eq!(epoch.household().unwrap().view_version, 1);
}

#[test]
fn evidence_is_taken_only_from_the_topic_of_its_sources_adapter() {
    let mut h = Harness::new(true);
    h.apply(&profile_event(&profile(1), "2025-03-01"));
    let visit = evidence(
        1,
        "visit",
        "household",
        "2025-03-01",
        &[("floor_material", text("earth"))],
    );
    match h.apply(&evidence_event(Input::Education, &visit, "2025-03-01")) {
        Applied::Invalid(u) => {
            assert_eq!(u.field, "source");
            assert!(u.reason.contains("assistance adapter"), "{}", u.reason);
        }
        other => panic!("a visit on the education topic was {other:?}"),
    }
    let unknown = evidence(
        2,
        "census",
        "household",
        "2025-03-01",
        &[("floor_material", text("earth"))],
    );
    match h.apply(&evidence_event(
        Input::AssistanceFamily,
        &unknown,
        "2025-03-01",
    )) {
        Applied::Invalid(u) => assert!(u.reason.contains("not a source"), "{}", u.reason),
        other => panic!("an unknown source was {other:?}"),
    }
    let school = evidence(
        3,
        "education",
        "1",
        "2025-02-10",
        &[("enrolled_current_year", flag(true))],
    );
    assert_eq!(
        h.apply(&evidence_event(Input::Education, &school, "2025-03-02")),
        Applied::Changed
    );
}

#[test]
fn without_a_household_rule_set_household_records_are_unsupported() {
    let mut h = Harness::new(false);
    match h.apply(&profile_event(&profile(1), "2025-03-01")) {
        Applied::Invalid(u) => {
            assert_eq!(u.error_type, "unsupported");
            assert!(u.reason.contains("achievement_rules_file"), "{}", u.reason);
        }
        other => panic!("{other:?}"),
    }
    assert!(h.views.is_empty());
}

#[test]
fn a_retracted_profile_withdraws_the_view_and_a_lower_version_does_not_bring_it_back() {
    let mut h = Harness::new(true);
    h.apply(&profile_event(&profile(2), "2025-03-01"));
    assert!(h.household().is_some());
    let p = profile(3);
    let retraction = (
        Input::AssistanceFamily,
        envelope(
            &p.record_id,
            3,
            true,
            "2025-03-02",
            Record::HouseholdProfile(ponte_proto::events::v1::HouseholdProfile {
                household_id: HOUSEHOLD.to_owned(),
                ..Default::default()
            }),
        ),
    );
    assert_eq!(h.apply(&retraction), Applied::Changed);
    assert_eq!(h.household(), None, "a tombstone");
    assert!(h.views.contains_key(&format!("household:{HOUSEHOLD}")));
    assert_eq!(
        h.apply(&profile_event(&profile(1), "2025-03-03")),
        Applied::Unchanged
    );
    assert_eq!(h.household(), None);
}

/// A view without the counters that say how it got there.
fn normalised(mut h: api::Household) -> api::Household {
    h.view_version = 0;
    h.updated_time = None;
    h
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The household's view does not depend on the order its records arrive in, on how
    /// they are cut into epochs, nor on redeliveries.
    #[test]
    fn the_view_does_not_depend_on_the_order_of_the_records(
        order in Just((0..accompaniment().len()).collect::<Vec<_>>()).prop_shuffle(),
        again in proptest::collection::vec(0..accompaniment().len(), 0..4),
        cuts in proptest::collection::vec(1usize..4, 1..8),
    ) {
        let records = accompaniment();
        let mut straight = Harness::new(true);
        for r in &records {
            straight.apply(r);
        }
        let mut shuffled = Harness::new(true);
        let sequence: Vec<(Input, Event)> = order
            .iter()
            .chain(&again)
            .map(|&i| records[i].clone())
            .collect();
        let mut rest = sequence.as_slice();
        for &n in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at(n.min(rest.len()));
            shuffled.epoch(now);
            rest = later;
        }
        prop_assert_eq!(
            straight.household().map(normalised),
            shuffled.household().map(normalised)
        );
    }
}

/// The Pasto household's profile as household `id` of `municipality`.
fn profile_of(id: &str, municipality: &str, version: u64) -> HouseholdProfile {
    let mut p = profile(version);
    p.record_id = format!("unidos-registry:household-profile:{id}");
    p.household_id = HouseholdId(id.to_owned());
    p.municipality = Divipola::parse(municipality).unwrap();
    p
}

/// Strips what the index needs from every household doc and drops the index, as a store
/// written before the index held them.
fn to_store_before_the_index(kv: &MapKv) {
    let mut map = kv.0.lock().unwrap();
    map.retain(|k, _| !is_derived(k));
    for (k, v) in map.iter_mut() {
        if !k.windows(3).any(|w| w == b"/h/") {
            continue;
        }
        let mut doc: serde_json::Value = serde_json::from_slice(v).unwrap();
        doc.as_object_mut().unwrap().remove("indexed");
        *v = serde_json::to_vec(&doc).unwrap();
    }
}

#[test]
fn households_are_indexed_by_municipality_and_the_index_is_derived_again_by_a_restore() {
    let mut h = Harness::new(true);
    // Three households in two municipalities, then one moves, one is retracted, and the
    // followed one gets its accompaniment (its achievements change many times).
    h.epoch(&[
        profile_event(&profile_of("HH-A", "52001", 1), "2025-03-01"),
        profile_event(&profile_of("HH-B", "52001", 1), "2025-03-01"),
        profile_event(&profile_of("HH-C", "05001", 1), "2025-03-01"),
    ]);
    let partitions: Vec<i32> = (0..common::PARTITIONS).collect();
    let pasto = |h: &Harness| {
        h.topology
            .household_indicators(&h.kv.copy(), &partitions, "52001")
            .unwrap()
            .households
    };
    assert_eq!(pasto(&h), 2);
    h.apply(&profile_event(
        &profile_of("HH-B", "05001", 2),
        "2025-03-02",
    ));
    assert_eq!(
        pasto(&h),
        1,
        "a move takes the household out of its old municipality"
    );
    let retracted = profile_of("HH-C", "05001", 3);
    h.apply(&(
        Input::AssistanceFamily,
        envelope(
            &retracted.record_id,
            3,
            true,
            "2025-03-03",
            Record::HouseholdProfile(ponte_proto::events::v1::HouseholdProfile {
                household_id: "HH-C".to_owned(),
                ..Default::default()
            }),
        ),
    ));
    for r in &accompaniment() {
        h.apply(r);
    }
    assert_eq!(pasto(&h), 2, "HH-A and the accompanied household");
    let medellin = h
        .topology
        .household_indicators(&h.kv.copy(), &partitions, "05001")
        .unwrap();
    assert_eq!(medellin.households, 1, "HH-B; HH-C withdrawn");
    assert!(!medellin.dimensions.is_empty());

    // A restore derives the index the epochs kept, whatever its batches.
    let kept = h.kv.derived();
    assert!(kept.keys().any(|k| k.windows(4).any(|w| w == b"/hx/")));
    for batch in [1, 3, 1000] {
        let restored = h
            .restored(batch)
            .expect("every household says what the index holds");
        assert_eq!(restored.derived(), kept, "batches of {batch}");
    }

    // A store written before the index: a restore meeting it says the index is to be built;
    // the build gives the index the epochs kept, and later epochs keep it.
    to_store_before_the_index(&h.kv);
    h.changelog =
        h.kv.0
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect();
    assert!(h.restored(1000).is_none(), "a doc without the index's part");
    for p in 0..common::PARTITIONS {
        for prefix in index_prefixes(p) {
            assert!(h.kv.scan(&prefix).unwrap().is_empty());
        }
    }
    let built = h.recount(&h.kv);
    assert_eq!(built, kept, "the build from docs written before the index");
    h.kv.0.lock().unwrap().extend(built);
    h.apply(&profile_event(
        &profile_of("HH-A", "05001", 2),
        "2025-03-04",
    ));
    assert_eq!(pasto(&h), 1, "the upgraded doc moves its entry");
}
