//! Stage 4, households (keyed by household id): programmes in which social workers accompany
//! households and follow achievements until the household may leave — Colombia's Estrategia
//! Unidos, with the rule set of `reconciler.achievement_rules_file`.
//!
//! The registry's profile and the social workers' visits arrive on the assistance family topic,
//! the education and health sectors' evidence on their own topics, all keyed by household id:
//! the topics are co-partitioned, so every record of a household is applied on the partition
//! that holds its state (`h/<household id>`). At the end of each epoch in which its records
//! changed ([`Topology::finish`]), the household is evaluated once with
//! [`AchievementRuleSet::evaluate`] on the day of the newest event that changed it (UTC; the
//! stage never reads the clock), and the view is published on the change topic under
//! `household:<household id>` when it differs from the last one published.
use ponte_domain::achievements::rules::Adapter;
use ponte_domain::achievements::{
    AchievementOutcome, AchievementRuleSet, AchievementState, CriterionState, EvidenceRecord,
    EvidenceUsed, HouseholdEvaluation, HouseholdId, HouseholdProfile, HouseholdRecord,
    HouseholdState, MemberOutcome, Subject,
};

use ponte_proto::reconciler::v1::{AchievementCounted, HouseholdCounted};

use super::*;

/// Everything the household stage keeps of one household (`h/<household id>`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct HouseholdDoc {
    /// Every profile entry (tombstones included, so a lower version stays refused).
    #[serde(default)]
    pub(super) profiles: Vec<HouseholdProfile>,
    /// Every evidence entry, tombstones included. Kept apart from the profiles rather than as
    /// one list of tagged records: serde buffers an internally tagged enum whole before it
    /// decodes it, which cost about a tenth of the stage's time (docs/benchmarks.md).
    #[serde(default)]
    pub(super) evidence: Vec<EvidenceRecord>,
    /// Record id → where the record came from.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) sources: BTreeMap<String, Source>,
    /// The latest day the household was evaluated on: evaluation never goes back in time.
    #[serde(default)]
    pub(super) evaluated_on: Option<Date>,
    /// The digest of the last view published, (view version, hash); `None` when none is (or it
    /// was withdrawn).
    #[serde(default)]
    pub(super) digest: Option<(u64, u64)>,
    /// How the digest's hash was computed (absent, so FNV-1a, in docs written before XXH3).
    #[serde(default)]
    pub(super) digest_hash_kind: u32,
    /// What the household index holds of the view published (`Some` exactly when `digest` is;
    /// absent in docs written before the index: [`Topology::upgrade_household`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) indexed: Option<HouseholdIndexed>,
    /// The `updated_time` of the view published (seconds, nanoseconds), so that a read
    /// computing the view from the state gives the one published; absent in docs written
    /// before reads did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) updated: Option<(i64, i32)>,
}

/// What a partition's household index holds of a household: the municipality its view names
/// and what `GetHouseholdIndicators` counts of it (`hx/<municipality>/<household id>`,
/// [`super::index`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HouseholdIndexed {
    pub(super) municipality: String,
    pub(super) may_leave: bool,
    /// Each achievement's dimension and state (`ponte.compliance.v1.AchievementState`), in
    /// the view's order.
    pub(super) achievements: Vec<(String, i32)>,
}

impl HouseholdIndexed {
    /// What the index holds of a household whose view is `view`.
    pub(super) fn of_view(view: &api::Household) -> HouseholdIndexed {
        HouseholdIndexed {
            municipality: view.municipality.clone(),
            may_leave: view.exit.as_ref().is_some_and(|e| e.may_leave),
            achievements: view
                .achievements
                .iter()
                .map(|a| (a.dimension.clone(), a.state))
                .collect(),
        }
    }

    /// The index entry's value.
    pub(super) fn counted(&self) -> HouseholdCounted {
        HouseholdCounted {
            may_leave: self.may_leave,
            achievements: self
                .achievements
                .iter()
                .map(|(dimension, state)| AchievementCounted {
                    dimension: dimension.clone(),
                    state: *state,
                })
                .collect(),
        }
    }

    /// What an `h/` value says the index holds of its household, read without its records:
    /// `Ok(None)` when no view is published, `Err` for a doc written before the index (it does
    /// not say) or one that does not decode.
    pub fn of_stored_household(value: &[u8]) -> Result<Option<HouseholdIndexed>, String> {
        /// The two fields of a [`HouseholdDoc`] the index needs; the others are skipped.
        #[derive(Deserialize)]
        struct Head {
            #[serde(default)]
            digest: Option<(u64, u64)>,
            #[serde(default)]
            indexed: Option<HouseholdIndexed>,
        }
        let head: Head = serde_json::from_slice(value).map_err(|e| e.to_string())?;
        match (head.digest, head.indexed) {
            (None, _) => Ok(None),
            (Some(_), Some(ix)) => Ok(Some(ix)),
            (Some(_), None) => Err("a household written before the index".to_owned()),
        }
    }
}

/// The error of a household record that cannot be read, as the adapters name it.
fn record_error(e: ponte_adapter_assistance::record::RecordError) -> Applied {
    Applied::Invalid(Unapplicable {
        error_type: e.error_type,
        field: e.field,
        reason: e.reason,
    })
}

/// A household id as the adapters accept it (also a key part: never empty, never `/`).
fn household_id(id: &str) -> Result<HouseholdId, Applied> {
    if id.is_empty() || id.len() > 32 || id.contains('/') {
        return Err(invalid(
            "household_id",
            format!("{id:?} is not a household id (1 to 32 characters, no '/')"),
        ));
    }
    Ok(HouseholdId(id.to_owned()))
}

/// The registry's profile (or its retraction) as the engine's record.
pub(super) fn household_profile(
    e: &Event,
    p: &ev::HouseholdProfile,
) -> Result<HouseholdRecord, Applied> {
    let id = household_id(&p.household_id)?;
    if e.retraction {
        return Ok(HouseholdRecord::Profile(HouseholdProfile::retraction(
            e.record_id.clone(),
            e.version,
            id,
        )));
    }
    ponte_adapter_assistance::household::profile_from_proto(e, p)
        .map(HouseholdRecord::Profile)
        .map_err(record_error)
}

/// A source's evidence (or its retraction) as the engine's record.
pub(super) fn household_evidence(
    e: &Event,
    x: &ev::HouseholdEvidence,
) -> Result<HouseholdRecord, Applied> {
    let id = household_id(&x.household_id)?;
    if e.retraction {
        return Ok(HouseholdRecord::Evidence(EvidenceRecord {
            record_id: e.record_id.clone(),
            version: e.version,
            retracted: true,
            household_id: id,
            source: x.source.clone(),
            subject: Subject::Household,
            recorded_on: Date::MIN,
            recorded_by: String::new(),
            items: BTreeMap::new(),
        }));
    }
    ponte_adapter_assistance::household::evidence_from_proto(e, x)
        .map(HouseholdRecord::Evidence)
        .map_err(record_error)
}

/// The adapter whose topic `input` is.
fn adapter_of(input: Input) -> Option<Adapter> {
    match input {
        Input::AssistanceFamily | Input::AssistancePerson | Input::Registry => {
            Some(Adapter::Assistance)
        }
        Input::Education => Some(Adapter::Education),
        Input::Health => Some(Adapter::Health),
        Input::Crosswalk | Input::HealthByNis | Input::Members => None,
    }
}

/// The UTC day of an acceptance time (1970-01-01 when the event has none).
fn day_of(at: Option<Timestamp>) -> Date {
    let seconds = at.map_or(0, |t| t.seconds);
    Date::from_days(seconds.div_euclid(86_400)).unwrap_or(Date::MIN)
}

/// A serde enum's name as it is written in rule files and JSON (`reached`, `education`).
fn name_of(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

fn state_view(s: AchievementState) -> api::AchievementState {
    match s {
        AchievementState::Reached => api::AchievementState::AchievementReached,
        AchievementState::NotReached => api::AchievementState::AchievementNotReached,
        AchievementState::NotApplicable => api::AchievementState::AchievementNotApplicable,
        AchievementState::Unknown => api::AchievementState::AchievementUnknown,
    }
}

fn evidence_view(e: &EvidenceUsed) -> api::AchievementEvidence {
    api::AchievementEvidence {
        source: e.source.clone(),
        sector: name_of(&e.sector),
        record_id: e.record_id.clone(),
        version: e.version,
        recorded_on: e.recorded_on.to_string(),
        recorded_by: e.recorded_by.clone(),
        item: e.item.clone(),
        value: e.value.to_string(),
        compared_with: e.compared_with.as_ref().map_or_else(String::new, |c| {
            format!(
                "{} {} (reached when {})",
                c.name,
                c.value,
                name_of(&c.reached_when)
            )
        }),
    }
}

fn member_view(m: &MemberOutcome) -> api::MemberAchievement {
    api::MemberAchievement {
        person_key: m.person.to_string(),
        age: m.age,
        state: state_view(m.state) as i32,
        evidence: m.evidence.as_ref().map(evidence_view),
        note: m.note.clone(),
    }
}

fn achievement_view(a: &AchievementOutcome) -> api::HouseholdAchievement {
    api::HouseholdAchievement {
        achievement: a.achievement.clone(),
        number: a.number,
        dimension: a.dimension.clone(),
        prerequisite: a.prerequisite,
        state: state_view(a.state) as i32,
        evidence: a.evidence.as_ref().map(evidence_view),
        members: a.members.iter().map(member_view).collect(),
        note: a.note.clone(),
    }
}

/// The published view of a household's evaluation (counters clear, sources empty).
pub(super) fn household_view(
    eval: &HouseholdEvaluation,
    profile: &HouseholdProfile,
) -> api::Household {
    let exit = &eval.exit;
    api::Household {
        household_id: eval.household_id.to_string(),
        municipality: eval.municipality.to_string(),
        sisben_group: eval
            .sisben_group
            .map_or_else(String::new, |g| g.to_string()),
        rule_set: eval.rule_set.to_string(),
        evaluated_on: eval.evaluated_on.to_string(),
        evidence_since: eval.evidence_since.to_string(),
        members: profile
            .members
            .iter()
            .map(|m| m.key().to_string())
            .collect(),
        achievements: eval.achievements.iter().map(achievement_view).collect(),
        exit: Some(api::HouseholdExit {
            name: exit.name.clone(),
            local_name: exit.local_name.clone().unwrap_or_default(),
            may_leave: exit.may_leave,
            criteria: exit
                .criteria
                .iter()
                .map(|c| api::ExitCriterion {
                    criterion: name_of(&c.criterion),
                    state: match c.state {
                        CriterionState::Met => api::CriterionState::CriterionMet,
                        CriterionState::NotMet => api::CriterionState::CriterionNotMet,
                        CriterionState::Unknown => api::CriterionState::CriterionUnknown,
                    } as i32,
                    detail_json: serde_json::to_string(&c.detail).unwrap_or_default(),
                })
                .collect(),
            missing: exit
                .missing
                .iter()
                .map(|m| api::MissingEvidence {
                    criterion: name_of(&m.criterion),
                    achievement: m.achievement.clone().unwrap_or_default(),
                    person_key: m
                        .person
                        .as_ref()
                        .map_or_else(String::new, ToString::to_string),
                    what: m.what.clone(),
                })
                .collect(),
        }),
        view_version: 0,
        updated_time: None,
        sources: Vec::new(),
    }
}

impl Topology {
    /// Applies a household record that arrived on `input`.
    pub(super) fn apply_household(
        &self,
        tx: &mut Tx<'_>,
        input: Input,
        event: &Event,
        record: Result<HouseholdRecord, Applied>,
    ) -> Result<Applied, ReconcilerError> {
        let Some(rules) = self.achievements.as_deref() else {
            return Ok(Applied::Invalid(Unapplicable::of_event(
                "unsupported",
                "household records need a household-achievement rule set \
                 (reconciler.achievement_rules_file), and this deployment has none",
            )));
        };
        let record = match record {
            Ok(r) => r,
            Err(invalid) => return Ok(invalid),
        };
        if let HouseholdRecord::Evidence(e) = &record
            && !e.retracted
            && let Some(refused) = misplaced_source(rules, &e.source, input)
        {
            return Ok(refused);
        }
        let hid = record.household_id().clone();
        let mut doc = HOUSEHOLDS.get(tx, &[hid.0.as_str()])?.unwrap_or_default();
        let mut state = HouseholdState::new(hid.clone());
        for p in std::mem::take(&mut doc.profiles) {
            let _ = state.apply(HouseholdRecord::Profile(p));
        }
        for e in std::mem::take(&mut doc.evidence) {
            let _ = state.apply(HouseholdRecord::Evidence(e));
        }
        self.upgrade_household(rules, &state, &mut doc);
        let record_id = record.record_id().to_owned();
        let applied = state
            .apply(record)
            .map_err(|e| ReconcilerError::Misrouted(e.to_string()))?;
        if !applied.changed() {
            return Ok(Applied::Unchanged);
        }
        doc.profiles = state.profiles.entries().cloned().collect();
        doc.evidence = state.evidence.entries().cloned().collect();
        doc.sources.insert(record_id, source_of(event));
        let on = day_of(event.ingest_time).max(doc.evaluated_on.unwrap_or(Date::MIN));
        doc.evaluated_on = Some(on);
        HOUSEHOLDS.put(tx, &[hid.0.as_str()], &doc)?;
        // Evaluated once per epoch, whatever number of its records the epoch brought.
        tx.defer(&hid.0, event.ingest_time);
        Ok(Applied::Changed)
    }

    /// Evaluates the households the epoch's events changed, each once, and publishes the views
    /// that changed ([`Topology::finish`]).
    pub(super) fn finish_households(&self, tx: &mut Tx<'_>) -> Result<(), ReconcilerError> {
        let deferred = tx.take_deferred();
        let Some(rules) = self.achievements.as_deref() else {
            return Ok(());
        };
        for ((partition, id), at) in deferred {
            tx.set_partition(partition);
            let Some(mut doc) = HOUSEHOLDS.get(tx, &[id.as_str()])? else {
                continue;
            };
            let state = Self::household_state(&id, &doc);
            let on = doc.evaluated_on.unwrap_or(Date::MIN);
            let before = (doc.digest, doc.indexed.clone());
            self.refresh_household(tx, rules, &state, &mut doc, on, at);
            if (doc.digest, &doc.indexed) != (before.0, &before.1) {
                HOUSEHOLDS.put(tx, &[id.as_str()], &doc)?;
            }
            index::reindex_household(tx, &id, before.1.as_ref(), doc.indexed.as_ref());
        }
        Ok(())
    }

    /// Fills in what the index holds of a household in a doc written before the index, from
    /// `state` (the records its view was published from) evaluated on the doc's day, as
    /// published.
    fn upgrade_household(
        &self,
        rules: &AchievementRuleSet,
        state: &HouseholdState,
        doc: &mut HouseholdDoc,
    ) {
        if doc.digest.is_none() || doc.indexed.is_some() {
            return;
        }
        let on = doc.evaluated_on.unwrap_or(Date::MIN);
        doc.indexed = state
            .profile()
            .and_then(|p| rules.evaluate(state, on).map(|e| household_view(&e, p)))
            .map(|view| HouseholdIndexed::of_view(&view));
    }

    /// The household's records in `doc` as the engine's state.
    fn household_state(id: &str, doc: &HouseholdDoc) -> HouseholdState {
        let mut state = HouseholdState::new(HouseholdId(id.to_owned()));
        for p in &doc.profiles {
            let _ = state.apply(HouseholdRecord::Profile(p.clone()));
        }
        for e in &doc.evidence {
            let _ = state.apply(HouseholdRecord::Evidence(e.clone()));
        }
        state
    }

    /// What the index holds of household `id` of partition `partition` in `kv` (as
    /// [`Self::upgrade_household`] for a doc written before the index); `None`: no view
    /// published.
    pub(super) fn indexed_household(
        &self,
        kv: &dyn Kv,
        partition: i32,
        id: &str,
    ) -> Result<Option<HouseholdIndexed>, ReconcilerError> {
        let Some(rules) = self.achievements.as_deref() else {
            return Ok(None);
        };
        let mut tx = Tx::new(kv);
        tx.set_partition(partition);
        let Some(mut doc) = HOUSEHOLDS.get(&tx, &[id])? else {
            return Ok(None);
        };
        let state = Self::household_state(id, &doc);
        self.upgrade_household(rules, &state, &mut doc);
        Ok(doc.indexed)
    }

    /// Household `id`'s view as last published, computed from the state of partition
    /// `partition` in `kv`: its records evaluated on the day they last were; `None` when no
    /// view is published (or the deployment follows no households).
    pub fn read_household(
        &self,
        kv: &dyn Kv,
        partition: i32,
        id: &str,
    ) -> Result<Option<api::Household>, ReconcilerError> {
        let Some(rules) = self.achievements.as_deref() else {
            return Ok(None);
        };
        let mut tx = Tx::new(kv);
        tx.set_partition(partition);
        let Some(doc) = HOUSEHOLDS.get(&tx, &[id])? else {
            return Ok(None);
        };
        let Some((view_version, _)) = doc.digest else {
            return Ok(None);
        };
        let state = Self::household_state(id, &doc);
        let on = doc.evaluated_on.unwrap_or(Date::MIN);
        let Some(mut view) = state
            .profile()
            .and_then(|p| rules.evaluate(&state, on).map(|e| household_view(&e, p)))
        else {
            return Ok(None);
        };
        view.sources = household_sources(&doc, &state);
        view.view_version = view_version;
        view.updated_time = doc
            .updated
            .map(|(seconds, nanos)| Timestamp { seconds, nanos });
        Ok(Some(view))
    }

    /// Publishes the household's view if it is not the one last published; withdraws it (a
    /// tombstone) when the household has no live profile or left the programme.
    fn refresh_household(
        &self,
        tx: &mut Tx<'_>,
        rules: &AchievementRuleSet,
        state: &HouseholdState,
        doc: &mut HouseholdDoc,
        on: Date,
        at: Option<Timestamp>,
    ) {
        let key = format!("household:{}", state.household_id());
        let evaluated = state
            .profile()
            .and_then(|p| rules.evaluate(state, on).map(|e| (p, e)));
        let Some((profile, eval)) = evaluated else {
            doc.indexed = None;
            if doc.digest.take().is_some() {
                tx.emit_tombstone(OutputKind::Change, key);
            }
            return;
        };
        let mut view = household_view(&eval, profile);
        view.sources = household_sources(doc, state);
        doc.indexed = Some(HouseholdIndexed::of_view(&view));
        let encoded = EncodedView::new(&view);
        if doc
            .digest
            .is_some_and(|(_, hash)| encoded.is(doc.digest_hash_kind, hash))
        {
            return;
        }
        let view_version = doc.digest.map_or(0, |(v, _)| v) + 1;
        let counters = api::Household {
            view_version,
            updated_time: at,
            ..Default::default()
        };
        doc.digest = Some((view_version, encoded.hash));
        doc.digest_hash_kind = HASH_XXH3;
        doc.updated = at.map(|t| (t.seconds, t.nanos));
        tx.emit(
            OutputKind::Change,
            key,
            encoded.change(HOUSEHOLD_FIELD, &counters),
        );
    }
}

/// The sources of a household's live records, as its view lists them.
fn household_sources(doc: &HouseholdDoc, state: &HouseholdState) -> Vec<api::RecordSource> {
    sources_view(
        &doc.sources,
        state
            .profiles
            .live()
            .map(|r| r.record_id.as_str())
            .chain(state.evidence.live().map(|r| r.record_id.as_str())),
    )
}

/// Why evidence of `source` cannot be taken from `input`'s topic: a source the rule set does
/// not declare, or one declared to arrive through another adapter.
fn misplaced_source(rules: &AchievementRuleSet, source: &str, input: Input) -> Option<Applied> {
    let Some(declared) = rules.sources.iter().find(|s| s.id == source) else {
        return Some(invalid(
            "source",
            format!(
                "{source:?} is not a source of rule set {}@{}",
                rules.id, rules.version
            ),
        ));
    };
    if adapter_of(input) != Some(declared.adapter) {
        return Some(invalid(
            "source",
            format!(
                "source {source:?} arrives through the {} adapter, not on the {input:?} topic",
                name_of(&declared.adapter)
            ),
        ));
    }
    None
}
