//! Stage 2, persons (keyed by NIS): the person's records, outcomes and view; the profile's
//! identifiers to the crosswalk and the outcomes to the family's partition.
use super::*;

impl Topology {
    // ---- persons (keyed by NIS) -------------------------------------------------------------

    /// The person's stored doc (`None` for a person never seen), with the digest and the
    /// identifiers that a store in format 1 kept under keys of their own.
    pub(super) fn load_person_doc(
        &self,
        tx: &Tx<'_>,
        nis: Nis,
    ) -> Result<Option<PersonDoc>, ReconcilerError> {
        let Some(mut doc) = PERSONS.get(tx, &[nis.as_str()])? else {
            return Ok(None);
        };
        if doc.format1 {
            doc.digest = person_digest(tx, nis.as_str())?;
            doc.carried = CARRIED_IDS.get(tx, &[nis.as_str()])?.unwrap_or_default();
        }
        Ok(Some(doc))
    }

    pub(super) fn load_person(
        &self,
        tx: &Tx<'_>,
        nis: Nis,
    ) -> Result<(PersonState, PersonDoc), ReconcilerError> {
        let mut doc = self.load_person_doc(tx, nis)?.unwrap_or_default();
        let state = person_state(nis, &mut doc);
        self.upgrade_digest(&state, &mut doc);
        Ok((state, doc))
    }

    /// Publishes the person's view if it changed ([`Topology::refresh_person`]) and writes
    /// the person: records, digest and identifiers in one value.
    pub(super) fn save_person(
        &self,
        tx: &mut Tx<'_>,
        state: PersonState,
        doc: &mut PersonDoc,
        at: Option<Timestamp>,
    ) -> Result<(), ReconcilerError> {
        let indexed = doc.digest.as_ref().and_then(Indexed::of_digest);
        self.refresh_person(tx, &state, doc, at)?;
        let nis = state.nis();
        index::reindex(
            tx,
            nis.as_str(),
            indexed.as_ref(),
            doc.digest.as_ref().and_then(Indexed::of_digest).as_ref(),
        )?;
        let id = [nis.as_str()];
        if std::mem::take(&mut doc.format1) {
            PERSON_DIGESTS.delete(tx, &id);
            PERSON_VIEWS_BEFORE_DIGESTS.delete(tx, &id);
            CARRIED_IDS.delete(tx, &id);
        }
        let PersonState {
            profiles,
            school,
            scfv,
            health,
            ..
        } = state;
        let mut records: Vec<PersonRecord> = Vec::new();
        records.extend(profiles.into_entries().map(PersonRecord::Profile));
        records.extend(school.into_entries().map(PersonRecord::School));
        records.extend(scfv.into_entries().map(PersonRecord::Scfv));
        records.extend(health.into_entries().map(PersonRecord::Health));
        doc.records = records;
        PERSONS.put(tx, &id, doc)
    }

    pub(super) fn apply_person_record(
        &self,
        tx: &mut Tx<'_>,
        record: PersonRecord,
        source: Source,
        arrived_as: Option<String>,
        at: Option<Timestamp>,
    ) -> Result<Applied, ReconcilerError> {
        let nis = record.nis();
        let (mut state, mut doc) = self.load_person(tx, nis)?;
        let record_id = record.record_id().to_owned();
        let rid = matches!(record, PersonRecord::Health(_)).then(|| record_id.clone());
        let applied = state
            .apply(record)
            .map_err(|e| ReconcilerError::Misrouted(e.to_string()))?;
        let arrived_changed = match (&rid, &arrived_as) {
            (Some(rid), Some(alt)) => doc.health_arrived_as.get(rid) != Some(alt),
            _ => false,
        };
        if !applied.changed() && !arrived_changed {
            return Ok(Applied::Unchanged);
        }
        if let (Some(rid), Some(alt)) = (rid, arrived_as) {
            doc.health_arrived_as.insert(rid, alt);
        }
        if applied.changed() {
            doc.sources.insert(record_id, source);
        }
        self.save_person(tx, state, &mut doc, at)?;
        Ok(Applied::Changed)
    }

    pub(super) fn apply_health_by_nis(
        &self,
        tx: &mut Tx<'_>,
        m: &HealthByNis,
    ) -> Result<Applied, ReconcilerError> {
        let nis = match Nis::parse(&m.nis) {
            Ok(n) => n,
            Err(e) => return Ok(invalid("nis", e)),
        };
        let Some(event) = &m.event else {
            return self.withdraw(tx, nis, &m.withdraw_record_id, m.at);
        };
        match &event.record {
            Some(Record::HealthFollowUp(h)) => match health(event, h, nis) {
                Ok(r) => self.apply_person_record(
                    tx,
                    PersonRecord::Health(r),
                    source_of(event),
                    Some(m.arrived_as.clone()),
                    m.at.or(event.ingest_time),
                ),
                Err(e) => Ok(e),
            },
            _ => Ok(malformed("health-by-nis message without a health record")),
        }
    }

    /// Removes health record `record_id` from `nis` (its identifier moved to someone else or
    /// to no one).
    pub(super) fn withdraw(
        &self,
        tx: &mut Tx<'_>,
        nis: Nis,
        record_id: &str,
        at: Option<Timestamp>,
    ) -> Result<Applied, ReconcilerError> {
        let (state, mut doc) = self.load_person(tx, nis)?;
        if !state.health.entries().any(|r| r.record_id == record_id) {
            return Ok(Applied::Unchanged);
        }
        let mut kept = PersonState::new(nis);
        let records = state
            .profiles
            .entries()
            .cloned()
            .map(PersonRecord::Profile)
            .chain(state.school.entries().cloned().map(PersonRecord::School))
            .chain(state.scfv.entries().cloned().map(PersonRecord::Scfv))
            .chain(
                state
                    .health
                    .entries()
                    .filter(|r| r.record_id != record_id)
                    .cloned()
                    .map(PersonRecord::Health),
            );
        for r in records {
            let _ = kept.apply(r);
        }
        doc.health_arrived_as.remove(record_id);
        doc.sources.remove(record_id);
        self.save_person(tx, kept, &mut doc, at)?;
        Ok(Applied::Changed)
    }

    pub(super) fn apply_profile(
        &self,
        tx: &mut Tx<'_>,
        profile: dr::PersonProfile,
        source: Source,
        at: Option<Timestamp>,
    ) -> Result<Applied, ReconcilerError> {
        let nis = profile.nis;
        let (mut state, mut doc) = self.load_person(tx, nis)?;
        let record_id = profile.record_id.clone();
        let applied = state
            .apply(PersonRecord::Profile(profile))
            .map_err(|e| ReconcilerError::Misrouted(e.to_string()))?;
        if !applied.changed() {
            return Ok(Applied::Unchanged);
        }
        doc.sources.insert(record_id, source);

        // Crosswalk: identifiers the live profile carries now versus before, to the identity
        // stage (keyed by the identifier).
        let now: BTreeSet<String> = state.profile().map(alt_ids).unwrap_or_default();
        let before = std::mem::replace(&mut doc.carried, now.clone());
        let changes = before
            .difference(&now)
            .map(|a| (a, false))
            .chain(now.difference(&before).map(|a| (a, true)));
        for (alt, carried) in changes {
            let msg = CrosswalkChange {
                alt: alt.clone(),
                nis: nis.to_string(),
                carried,
                at,
                erased: false,
            };
            tx.emit(
                OutputKind::Crosswalk,
                alt_key(alt).to_owned(),
                msg.encode_to_vec(),
            );
        }
        self.save_person(tx, state, &mut doc, at)?;
        Ok(Applied::Changed)
    }

    /// Erases the person (LGPD, docs/privacy.md): their records, digest, identifiers and view
    /// go from this partition; the identity stage is told to delete what it holds under the
    /// person's identifiers (forwarded and parked health records) and the family stage to drop
    /// them, and the appeals naming them, from the family's view. The view's key gets a
    /// tombstone, which compaction turns into nothing. Records of the person that arrive
    /// afterwards start a new person: the sources must stop sending first.
    pub(super) fn apply_erasure(
        &self,
        tx: &mut Tx<'_>,
        nis: Nis,
        at: Option<Timestamp>,
    ) -> Result<Applied, ReconcilerError> {
        let id = [nis.as_str()];
        let Some(mut doc) = self.load_person_doc(tx, nis)? else {
            return Ok(Applied::Unchanged);
        };
        if doc.digest.as_ref().is_some_and(|d| !d.indexed) {
            let state = person_state(nis, &mut doc);
            self.upgrade_digest(&state, &mut doc);
        }
        let indexed = doc.digest.as_ref().and_then(Indexed::of_digest);
        index::reindex(tx, nis.as_str(), indexed.as_ref(), None)?;
        let PersonDoc {
            health_arrived_as,
            digest,
            carried,
            format1,
            ..
        } = doc;
        // Every identifier records were held under: the profile's, and those the person's
        // health records arrived as (a NIS is not held by the identity stage).
        let mut alts: BTreeSet<String> = carried;
        alts.extend(
            health_arrived_as
                .into_values()
                .filter(|a| !a.starts_with("nis:")),
        );
        PERSONS.delete(tx, &id);
        if format1 {
            CARRIED_IDS.delete(tx, &id);
            PERSON_DIGESTS.delete(tx, &id);
            PERSON_VIEWS_BEFORE_DIGESTS.delete(tx, &id);
        }
        for alt in alts {
            let msg = CrosswalkChange {
                alt: alt.clone(),
                nis: nis.to_string(),
                carried: false,
                at,
                erased: true,
            };
            tx.emit(
                OutputKind::Crosswalk,
                alt_key(&alt).to_owned(),
                msg.encode_to_vec(),
            );
        }
        if let Some(family) = digest.map(|d| d.family_id).filter(|f| !f.is_empty()) {
            let leave = MemberOutcomes {
                family_id: family.clone(),
                nis: nis.to_string(),
                member: false,
                outcomes_json: Vec::new(),
                at,
                erased: true,
            };
            tx.emit(OutputKind::Member, family, leave.encode_to_vec());
        }
        tx.emit_tombstone(OutputKind::Change, format!("person:{nis}"));
        Ok(Applied::Erased)
    }

    /// Publishes the person's view, with the alerts and member messages it implies, if it is
    /// not the view last published; keeps its digest in `doc` (written by the caller).
    fn refresh_person(
        &self,
        tx: &mut Tx<'_>,
        state: &PersonState,
        doc: &mut PersonDoc,
        at: Option<Timestamp>,
    ) -> Result<(), ReconcilerError> {
        let nis = state.nis();
        let outcomes = self
            .rules
            .evaluate_person_between(state, self.from, self.to);
        let mut view = self.person_view(state, doc, &outcomes);
        let encoded = EncodedView::new(&view); // a fresh view: its counters are clear
        let hash = encoded.hash;
        let old = &doc.digest;
        if old
            .as_ref()
            .is_some_and(|o| encoded.is(o.hash_kind, o.hash))
        {
            return Ok(());
        }
        let (old_family, old_nc) = old
            .as_ref()
            .map(|o| (o.family_id.clone(), o.non_compliant.clone()))
            .unwrap_or_default();
        view.view_version = old.as_ref().map_or(0, |o| o.view_version) + 1;
        view.updated_time = at;
        let nc = non_compliant(&view.outcomes);
        // Alerts for members newly non-compliant.
        for o in &view.outcomes {
            let was = old_nc
                .iter()
                .any(|p| p.conditionality == o.conditionality && p.period == o.period);
            if o.status == api::OutcomeStatus::NonCompliant as i32 && !was {
                let alert = api::ComplianceAlert {
                    family_id: view.family_id.clone(),
                    nis: view.nis.clone(),
                    municipality: view.municipality.clone(),
                    conditionality: o.conditionality.clone(),
                    period: o.period.clone(),
                    effects: o.effects.clone(),
                    note: o.note.clone(),
                    event_ingest_time: at,
                };
                tx.emit(
                    OutputKind::Alert,
                    view.family_id.clone(),
                    alert.encode_to_vec(),
                );
            }
        }
        // The family view (on the family's partition) learns of joins, leaves and of changes
        // in what it reads of a member: the non-compliant outcomes.
        if old_family != view.family_id && !old_family.is_empty() {
            let leave = MemberOutcomes {
                family_id: old_family.clone(),
                nis: nis.to_string(),
                member: false,
                outcomes_json: Vec::new(),
                at,
                erased: false,
            };
            tx.emit(
                OutputKind::Member,
                old_family.clone(),
                leave.encode_to_vec(),
            );
        }
        if !view.family_id.is_empty() && (old_family != view.family_id || old_nc != nc) {
            let for_family = for_family(&outcomes);
            let join = MemberOutcomes {
                family_id: view.family_id.clone(),
                nis: nis.to_string(),
                member: true,
                outcomes_json: serde_json::to_vec(&for_family)
                    .map_err(|e| corrupt(&PERSONS.key(&[nis.as_str()]), e))?,
                at,
                erased: false,
            };
            tx.emit(
                OutputKind::Member,
                view.family_id.clone(),
                join.encode_to_vec(),
            );
        }
        let mut digest = PersonDigest {
            view_version: view.view_version,
            hash,
            hash_kind: HASH_XXH3,
            family_id: view.family_id.clone(),
            non_compliant: nc,
            updated_time: at,
            ..PersonDigest::default()
        };
        Indexed::of_view(&view).keep_in(&mut digest);
        let counters = api::Person {
            view_version: view.view_version,
            updated_time: view.updated_time,
            ..Default::default()
        };
        tx.emit(
            OutputKind::Change,
            format!("person:{nis}"),
            encoded.change(PERSON_FIELD, &counters),
        );
        doc.digest = Some(digest);
        Ok(())
    }

    /// The person's view as last published, computed from the state `tx` reads: the records
    /// evaluated again, with the version and time the digest of the view published keeps.
    /// `None` when no view of the person is published (never seen, or erased).
    pub(super) fn published_person(
        &self,
        tx: &Tx<'_>,
        nis: Nis,
    ) -> Result<Option<api::Person>, ReconcilerError> {
        let Some(mut doc) = self.load_person_doc(tx, nis)? else {
            return Ok(None);
        };
        let Some(digest) = doc.digest.take() else {
            return Ok(None);
        };
        let state = person_state(nis, &mut doc);
        let outcomes = self
            .rules
            .evaluate_person_between(&state, self.from, self.to);
        let mut view = self.person_view(&state, &doc, &outcomes);
        view.view_version = digest.view_version;
        view.updated_time = digest.updated_time;
        Ok(Some(view))
    }

    pub(super) fn person_view(
        &self,
        state: &PersonState,
        doc: &PersonDoc,
        outcomes: &[Outcome],
    ) -> api::Person {
        let profile = state.profile();
        let mut school: Vec<api::AttendanceRecord> = state
            .school
            .live()
            .map(|r| {
                let (given, attended) = match r.attendance {
                    Attendance::Counts { given, attended } => (given, attended),
                    Attendance::Percent(_) => (0, 0),
                };
                api::AttendanceRecord {
                    record_id: r.record_id.clone(),
                    version: r.version,
                    source_system: r.record_id.split(':').next().unwrap_or_default().to_owned(),
                    inep_school_code: r.inep.map(|i| i.to_string()).unwrap_or_default(),
                    month: r.month.to_string(),
                    bimester: ponte_domain::period::Bimester::containing(r.month)
                        .map(|b| b.to_string())
                        .unwrap_or_default(),
                    attendance_bp: r.attendance.percent_hundredths().unwrap_or(10_000),
                    given,
                    attended,
                    low_attendance_reason: r.reason_code.clone().unwrap_or_default(),
                    event_time: None,
                }
            })
            .collect();
        school
            .sort_by(|a, b| (&a.month, &a.inep_school_code).cmp(&(&b.month, &b.inep_school_code)));
        let health_records = state
            .health
            .live()
            .map(|h| api::HealthRecordView {
                record_id: h.record_id.clone(),
                version: h.version,
                arrived_as: doc
                    .health_arrived_as
                    .get(&h.record_id)
                    .cloned()
                    .unwrap_or_default(),
                encounter_date: h.recorded_on.map(|d| d.to_string()).unwrap_or_default(),
                semester: h.semester().map(|s| s.to_string()).unwrap_or_default(),
                vaccination_up_to_date: h.vaccination_up_to_date,
                weight_grams: h.weight_grams,
                height_mm: h.height_mm,
                pregnant: h.pregnant.unwrap_or(false),
                prenatal_care: h.prenatal.unwrap_or(false),
            })
            .collect();
        api::Person {
            nis: state.nis().to_string(),
            school_attendance: school,
            view_version: 0,
            updated_time: None,
            family_id: profile.map(|p| p.family_id.to_string()).unwrap_or_default(),
            municipality: profile
                .map(|p| p.municipality.to_string())
                .unwrap_or_default(),
            registered: profile.is_some(),
            outcomes: outcomes.iter().map(outcome_view).collect(),
            health_records,
            sources: sources_view(
                &doc.sources,
                state
                    .profiles
                    .live()
                    .map(|r| r.record_id.as_str())
                    .chain(state.school.live().map(|r| r.record_id.as_str()))
                    .chain(state.scfv.live().map(|r| r.record_id.as_str()))
                    .chain(state.health.live().map(|r| r.record_id.as_str())),
            ),
        }
    }
}

/// The person's state: the records of `doc` moved into it (`save_person` puts them back).
pub(super) fn person_state(nis: Nis, doc: &mut PersonDoc) -> PersonState {
    let mut state = PersonState::new(nis);
    for r in std::mem::take(&mut doc.records) {
        // Records were checked against this NIS when first applied.
        let _ = state.apply(r);
    }
    state
}
