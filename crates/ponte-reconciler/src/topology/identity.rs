//! Stage 1, identity (keyed by CNS/CPF): health records forwarded to their NIS, or parked
//! until a profile claims their identifier; claims and releases sending them on or taking
//! them back. The records held under an identifier are one value (`a/<alt>`) whether parked or
//! forwarded, so a claim or a release rewrites none of them.
use super::*;

/// Who a health record names: a NIS, or the alternate identifier (`cns:…`, `cpf:…`) it is
/// held under until the crosswalk maps it.
enum Arrived {
    Nis(Nis),
    Alt(String),
}

fn arrived_as(h: &ev::HealthFollowUp) -> Result<Arrived, Applied> {
    match &h.subject {
        Some(Subject::Nis(n)) => Nis::parse(n)
            .map(Arrived::Nis)
            .map_err(|e| invalid("nis", e)),
        Some(Subject::Cns(c)) => Cns::parse(c)
            .map(|c| Arrived::Alt(format!("cns:{c}")))
            .map_err(|e| invalid("cns", e)),
        Some(Subject::Cpf(c)) => Cpf::parse(c)
            .map(|c| Arrived::Alt(format!("cpf:{c}")))
            .map_err(|e| invalid("cpf", e)),
        None => Err(invalid("subject", "health record names no person")),
    }
}

/// The state keys [`Topology::apply_health`] reads for `event`: the records held under the
/// identifier it arrived as, the identifier's crosswalk entry and the partition's parked count.
/// None for a record named by NIS (it reads nothing) or one that cannot be applied.
pub(super) fn health_keys_read(event: &Event) -> Vec<Vec<u8>> {
    match &event.record {
        Some(Record::HealthFollowUp(h)) => match arrived_as(h) {
            Ok(Arrived::Alt(alt)) => identifier_keys_read(&alt),
            Ok(Arrived::Nis(_)) | Err(_) => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// The state keys a health record or a claim of `alt` reads: what is held under it, its
/// crosswalk entry, and the parked count either may change.
pub(super) fn identifier_keys_read(alt: &str) -> Vec<Vec<u8>> {
    vec![
        HELD.key(&[alt]),
        CROSSWALK.key(&[alt]),
        PARKED_COUNT.key(&[PARKED_COUNT_ID]),
    ]
}

/// Keeps `event` among `held` (in record id order) unless a version as new is held already:
/// `None` when it was not kept, `Some(true)` when it is a record not held before.
fn hold(held: &mut HeldHealthRecords, event: Event) -> Option<bool> {
    match held
        .records
        .binary_search_by(|r| r.record_id.as_str().cmp(&event.record_id))
    {
        Ok(i) if held.records[i].version >= event.version => None,
        Ok(i) => {
            held.records[i] = event;
            Some(false)
        }
        Err(i) => {
            held.records.insert(i, event);
            Some(true)
        }
    }
}

impl Topology {
    // ---- identity resolution (keyed by CNS/CPF) ---------------------------------------------

    pub(super) fn apply_health(
        &self,
        tx: &mut Tx<'_>,
        event: &Event,
        h: &ev::HealthFollowUp,
    ) -> Result<Applied, ReconcilerError> {
        let alt = match arrived_as(h) {
            Ok(Arrived::Nis(nis)) => {
                // Already a NIS: straight on to the person (the person stage checks versions).
                self.forward_health(tx, nis.as_str(), &format!("nis:{nis}"), event);
                return Ok(Applied::Changed);
            }
            Ok(Arrived::Alt(alt)) => alt,
            Err(invalid) => return Ok(invalid),
        };
        let (mut held, moved) = self.held(tx, &alt)?;
        let Some(new) = hold(&mut held, event.clone()) else {
            if moved {
                HELD.put(tx, &[&alt], &held)?;
            }
            return Ok(Applied::Unchanged);
        };
        HELD.put(tx, &[&alt], &held)?;
        match CROSSWALK.get(tx, &[&alt])? {
            Some(nis) => {
                self.forward_health(tx, nis.as_str(), &alt, event);
                Ok(Applied::Changed)
            }
            None => {
                if new {
                    self.count_parked(tx, 1)?;
                }
                Ok(Applied::Parked)
            }
        }
    }

    /// The health records held under `alt`, with those a store of the layout before `a/`
    /// keeps under `e/<alt>/` and `k/<alt>/` moved in (their keys deleted): true when any were,
    /// and then the caller writes what it returns. Where a partition holds no such keys the
    /// scans are answered without reading the store ([`Screened`]).
    fn held(
        &self,
        tx: &mut Tx<'_>,
        alt: &str,
    ) -> Result<(HeldHealthRecords, bool), ReconcilerError> {
        let mut held = HELD.get(tx, &[alt])?.unwrap_or_default();
        let mut moved = false;
        for table in [&FORWARDED_BEFORE_HELD, &PARKED_BEFORE_HELD] {
            let before = table.scan_under(tx, alt)?;
            if before.is_empty() {
                continue;
            }
            if !moved {
                // Counted from the `k/` keys before the first of them goes.
                self.parked_count(tx)?;
                moved = true;
            }
            for (rid, v) in before {
                let event = table.decode(&[alt, &rid], &v)?;
                table.delete(tx, &[alt, &rid]);
                hold(&mut held, event);
            }
        }
        Ok((held, moved))
    }

    /// The health records of the current partition that are parked. A store of the layout
    /// before `a/` has no count yet: it is taken from its `k/` keys, and written.
    fn parked_count(&self, tx: &mut Tx<'_>) -> Result<u64, ReconcilerError> {
        if let Some(count) = PARKED_COUNT.get(tx, &[PARKED_COUNT_ID])? {
            return Ok(count.records);
        }
        let records = tx.scan(&PARKED_BEFORE_HELD.key_prefix())?.len() as u64;
        if records > 0 {
            PARKED_COUNT.put(tx, &[PARKED_COUNT_ID], &ParkedCount { records })?;
        }
        Ok(records)
    }

    /// `d` more health records of the current partition are parked (fewer when negative).
    fn count_parked(&self, tx: &mut Tx<'_>, d: i64) -> Result<(), ReconcilerError> {
        if d == 0 {
            return Ok(());
        }
        let before = self.parked_count(tx)?;
        let records = before.checked_add_signed(d).ok_or_else(|| {
            corrupt(
                &PARKED_COUNT.key(&[PARKED_COUNT_ID]),
                format!("{before} parked records, {d} more"),
            )
        })?;
        // None parked is no entry, whichever order the records came and went in (and a
        // store of the layout before `a/` then has no `k/` keys to count either).
        if records == 0 {
            PARKED_COUNT.delete(tx, &[PARKED_COUNT_ID]);
            Ok(())
        } else {
            PARKED_COUNT.put(tx, &[PARKED_COUNT_ID], &ParkedCount { records })
        }
    }

    pub(super) fn forward_health(
        &self,
        tx: &mut Tx<'_>,
        nis: &str,
        arrived_as: &str,
        event: &Event,
    ) {
        let msg = HealthByNis {
            nis: nis.to_owned(),
            arrived_as: arrived_as.to_owned(),
            event: Some(event.clone()),
            withdraw_record_id: String::new(),
            at: event.ingest_time,
        };
        tx.emit(OutputKind::HealthByNis, nis.to_owned(), msg.encode_to_vec());
    }

    pub(super) fn withdraw_health(
        &self,
        tx: &mut Tx<'_>,
        nis: &str,
        alt: &str,
        record_id: &str,
        at: Option<Timestamp>,
    ) {
        let msg = HealthByNis {
            nis: nis.to_owned(),
            arrived_as: alt.to_owned(),
            event: None,
            withdraw_record_id: record_id.to_owned(),
            at,
        };
        tx.emit(OutputKind::HealthByNis, nis.to_owned(), msg.encode_to_vec());
    }

    /// A profile claimed or released `alt`: records that arrived under it follow the mapping.
    /// The latest claim wins; a release only counts from the person the identifier maps to.
    pub(super) fn apply_crosswalk(
        &self,
        tx: &mut Tx<'_>,
        c: &CrosswalkChange,
    ) -> Result<Applied, ReconcilerError> {
        let nis = match Nis::parse(&c.nis) {
            Ok(n) => n,
            Err(e) => return Ok(invalid("nis", e)),
        };
        let alt = c.alt.as_str();
        let current = CROSSWALK.get(tx, &[alt])?.map(|n| n.as_str().to_owned());
        let (held, moved) = self.held(tx, alt)?;
        let records = i64::try_from(held.records.len()).unwrap_or(i64::MAX);
        // A change that changes nothing still writes what [`Topology::held`] moved.
        let unchanged = |tx: &mut Tx<'_>| -> Result<Applied, ReconcilerError> {
            if moved {
                HELD.put(tx, &[alt], &held)?;
            }
            Ok(Applied::Unchanged)
        };
        if c.erased {
            // The person was erased: what is held under their identifier goes, unless the
            // identifier already belongs to someone else (then what is held is theirs).
            if current.as_deref().is_some_and(|held| held != nis.as_str()) {
                return unchanged(tx);
            }
            if current.is_none() && held.records.is_empty() {
                return Ok(Applied::Unchanged);
            }
            if current.is_some() {
                CROSSWALK.delete(tx, &[alt]);
            } else {
                self.count_parked(tx, -records)?;
            }
            if !held.records.is_empty() {
                HELD.delete(tx, &[alt]);
            }
            return Ok(Applied::Erased);
        }
        if c.carried {
            if current.as_deref() == Some(nis.as_str()) {
                return unchanged(tx);
            }
            match &current {
                // What was forwarded to the previous holder is withdrawn from them.
                Some(prev) => {
                    for r in &held.records {
                        self.withdraw_health(tx, prev, alt, &r.record_id, c.at);
                    }
                }
                // What was parked is parked no more.
                None => self.count_parked(tx, -records)?,
            }
            CROSSWALK.put(tx, &[alt], &nis)?;
            for r in &held.records {
                self.forward_health(tx, nis.as_str(), alt, r);
            }
            if moved {
                HELD.put(tx, &[alt], &held)?;
            }
            Ok(Applied::Changed)
        } else {
            if current.as_deref() != Some(nis.as_str()) {
                return unchanged(tx);
            }
            CROSSWALK.delete(tx, &[alt]);
            for r in &held.records {
                self.withdraw_health(tx, nis.as_str(), alt, &r.record_id, c.at);
            }
            self.count_parked(tx, records)?;
            if moved {
                HELD.put(tx, &[alt], &held)?;
            }
            Ok(Applied::Changed)
        }
    }
}
