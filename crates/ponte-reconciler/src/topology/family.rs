//! Stage 3, families (keyed by family id): the members' outcomes, follow-up, appeals and the
//! effects ladder.
use super::*;

impl Topology {
    // ---- families (keyed by family id) ------------------------------------------------------

    pub(super) fn apply_member(
        &self,
        tx: &mut Tx<'_>,
        m: &MemberOutcomes,
    ) -> Result<Applied, ReconcilerError> {
        if let Err(e) = Nis::parse(&m.nis) {
            return Ok(invalid("nis", e));
        }
        let fid = FamilyId(m.family_id.clone());
        let mut members = self.load_members(tx, &fid)?;
        if m.erased {
            return self.erase_member(tx, &fid, members, &m.nis, m.at);
        }
        if m.member {
            let outcomes: Vec<Outcome> = match serde_json::from_slice(&m.outcomes_json) {
                Ok(o) => o,
                Err(e) => return Ok(invalid("outcomes_json", e)),
            };
            if members.members.get(&m.nis) == Some(&outcomes) {
                return Ok(Applied::Unchanged);
            }
            members.members.insert(m.nis.clone(), outcomes);
        } else if members.members.remove(&m.nis).is_none() {
            return Ok(Applied::Unchanged);
        }
        self.save_members(tx, &fid, &mut members, true, m.at)?;
        Ok(Applied::Changed)
    }

    /// The family's members entry (an empty one, marked `absent`, when none is stored), with
    /// the digest a store in format 1 kept under a key of its own.
    fn load_members(&self, tx: &Tx<'_>, fid: &FamilyId) -> Result<MembersDoc, ReconcilerError> {
        let Some(mut members) = MEMBERS.get(tx, &[fid.as_str()])? else {
            return Ok(MembersDoc {
                absent: true,
                ..MembersDoc::default()
            });
        };
        if members.format1 {
            members.digest = family_digest(tx, fid.as_str())?;
        }
        Ok(members)
    }

    /// Publishes the family's view if it changed ([`Topology::refresh_family`]) and writes
    /// the members entry with the view's digest, in one value — unless neither the members
    /// (`members_changed`) nor the digest changed.
    fn save_members(
        &self,
        tx: &mut Tx<'_>,
        fid: &FamilyId,
        members: &mut MembersDoc,
        members_changed: bool,
        at: Option<Timestamp>,
    ) -> Result<(), ReconcilerError> {
        let published = self.refresh_family(tx, fid, members, at)?;
        let migrated = std::mem::take(&mut members.format1);
        if migrated {
            FAMILY_DIGESTS.delete(tx, &[fid.as_str()]);
            FAMILY_VIEWS_BEFORE_DIGESTS.delete(tx, &[fid.as_str()]);
        }
        if members_changed || published || migrated {
            MEMBERS.put(tx, &[fid.as_str()], members)?;
        }
        Ok(())
    }

    /// An erased person leaves the family: with the appeals that name them. A family left
    /// with no member and no record has its view deleted (a tombstone) instead of an empty one.
    fn erase_member(
        &self,
        tx: &mut Tx<'_>,
        fid: &FamilyId,
        mut members: MembersDoc,
        nis: &str,
        at: Option<Timestamp>,
    ) -> Result<Applied, ReconcilerError> {
        let was_member = members.members.remove(nis).is_some();
        let mut doc: FamilyDoc = FAMILIES.get(tx, &[fid.as_str()])?.unwrap_or_default();
        let names_them = |r: &FamilyRecord| matches!(r, FamilyRecord::Appeal(a) if a.nis.as_ref().is_some_and(|n| n.as_str() == nis));
        let dropped: Vec<String> = doc
            .records
            .iter()
            .filter(|r| names_them(r))
            .map(|r| r.record_id().to_owned())
            .collect();
        if !was_member && dropped.is_empty() {
            return Ok(Applied::Unchanged);
        }
        doc.records.retain(|r| !names_them(r));
        for id in &dropped {
            doc.sources.remove(id);
        }
        if doc.records.is_empty() {
            FAMILIES.delete(tx, &[fid.as_str()]);
        } else {
            FAMILIES.put(tx, &[fid.as_str()], &doc)?;
        }
        if members.members.is_empty() && doc.records.is_empty() {
            MEMBERS.delete(tx, &[fid.as_str()]);
            FAMILY_DIGESTS.delete(tx, &[fid.as_str()]);
            FAMILY_VIEWS_BEFORE_DIGESTS.delete(tx, &[fid.as_str()]);
            tx.emit_tombstone(OutputKind::Change, format!("family:{fid}"));
        } else {
            self.save_members(tx, fid, &mut members, was_member, at)?;
        }
        Ok(Applied::Erased)
    }

    pub(super) fn apply_family_record(
        &self,
        tx: &mut Tx<'_>,
        record: FamilyRecord,
        source: Source,
        at: Option<Timestamp>,
    ) -> Result<Applied, ReconcilerError> {
        let (fid, record_id) = (record.family_id().clone(), record.record_id().to_owned());
        let (mut state, mut doc) = self.load_family(tx, &fid)?;
        let applied = state
            .apply(record)
            .map_err(|e| ReconcilerError::Misrouted(e.to_string()))?;
        if !applied.changed() {
            return Ok(Applied::Unchanged);
        }
        let mut records: Vec<FamilyRecord> = state
            .follow_ups
            .entries()
            .cloned()
            .map(FamilyRecord::FollowUp)
            .collect();
        records.extend(state.appeals.entries().cloned().map(FamilyRecord::Appeal));
        doc.records = records;
        doc.sources.insert(record_id, source);
        FAMILIES.put(tx, &[fid.as_str()], &doc)?;
        let mut members = self.load_members(tx, &fid)?;
        self.save_members(tx, &fid, &mut members, false, at)?;
        Ok(Applied::Changed)
    }

    pub(super) fn load_family(
        &self,
        tx: &Tx<'_>,
        fid: &FamilyId,
    ) -> Result<(FamilyState, FamilyDoc), ReconcilerError> {
        let doc: FamilyDoc = FAMILIES.get(tx, &[fid.as_str()])?.unwrap_or_default();
        let mut state = FamilyState::new(fid.clone());
        for r in &doc.records {
            let _ = state.apply(r.clone());
        }
        Ok((state, doc))
    }

    /// Publishes the family's view if it is not the view last published, and then keeps its
    /// digest in `members` (written by the caller) and returns true.
    fn refresh_family(
        &self,
        tx: &mut Tx<'_>,
        fid: &FamilyId,
        members: &mut MembersDoc,
        at: Option<Timestamp>,
    ) -> Result<bool, ReconcilerError> {
        let (state, doc) = self.load_family(tx, fid)?;
        if std::mem::take(&mut members.absent) && !doc.records.is_empty() {
            // A family with records and no members entry: a store in format 1 may keep the
            // digest of its view under a key of its own.
            members.digest = family_digest(tx, fid.as_str())?;
            members.format1 = true;
        }
        let mut view = self.family_view_of(fid, &state, &doc, members);
        let encoded = EncodedView::new(&view); // a fresh view: its counters are clear
        let hash = encoded.hash;
        let old = &members.digest;
        if old
            .as_ref()
            .is_some_and(|o| encoded.is(o.hash_kind, o.hash))
        {
            return Ok(false);
        }
        view.view_version = old.as_ref().map_or(0, |o| o.view_version) + 1;
        view.updated_time = at;
        let digest = FamilyDigest {
            view_version: view.view_version,
            hash,
            hash_kind: HASH_XXH3,
            updated_time: at,
        };
        let counters = api::Family {
            view_version: view.view_version,
            updated_time: view.updated_time,
            ..Default::default()
        };
        tx.emit(
            OutputKind::Change,
            format!("family:{fid}"),
            encoded.change(FAMILY_FIELD, &counters),
        );
        members.digest = Some(digest);
        Ok(true)
    }

    /// The family's view, its counters clear: the members' outcomes and the family's records
    /// evaluated.
    fn family_view_of(
        &self,
        fid: &FamilyId,
        state: &FamilyState,
        doc: &FamilyDoc,
        members: &MembersDoc,
    ) -> api::Family {
        let names: BTreeSet<String> = members.members.keys().cloned().collect();
        let outcomes: Vec<Outcome> = members.members.values().flatten().cloned().collect();
        let effects = self.rules.evaluate_family(state, &outcomes);
        let mut view = family_view(fid, &names, &effects, &outcomes);
        view.sources = sources_view(
            &doc.sources,
            state
                .follow_ups
                .live()
                .map(|r| r.record_id.as_str())
                .chain(state.appeals.live().map(|r| r.record_id.as_str())),
        );
        view
    }

    /// The family's view as last published, computed from the state `tx` reads: what the
    /// family stage's digest says was published (version, time), evaluated again from the
    /// members and records it was evaluated from. `None` when no view of the family is
    /// published (none yet, or withdrawn by a tombstone).
    pub(super) fn published_family(
        &self,
        tx: &Tx<'_>,
        fid: &FamilyId,
    ) -> Result<Option<api::Family>, ReconcilerError> {
        let members = self.load_members(tx, fid)?;
        let (state, doc) = self.load_family(tx, fid)?;
        let digest = if members.absent && !doc.records.is_empty() {
            family_digest(tx, fid.as_str())?
        } else {
            members.digest
        };
        let Some(digest) = digest else {
            return Ok(None);
        };
        let mut view = self.family_view_of(fid, &state, &doc, &members);
        view.view_version = digest.view_version;
        view.updated_time = digest.updated_time;
        Ok(Some(view))
    }
}
