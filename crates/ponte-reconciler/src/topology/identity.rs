//! Stage 1, identity (keyed by CNS/CPF): health records forwarded to their NIS, or parked
//! until a profile claims their identifier; claims and releases moving them.
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

/// The state keys [`Topology::apply_health`] reads for `event`: the record as forwarded and as
/// parked under the identifier it arrived as, and the identifier's crosswalk entry. None for a
/// record named by NIS (it reads nothing) or one that cannot be applied.
pub(super) fn health_keys_read(event: &Event) -> Vec<Vec<u8>> {
    match &event.record {
        Some(Record::HealthFollowUp(h)) => match arrived_as(h) {
            Ok(Arrived::Alt(alt)) => {
                let id = [alt.as_str(), event.record_id.as_str()];
                vec![FORWARDED.key(&id), PARKED.key(&id), CROSSWALK.key(&[&alt])]
            }
            Ok(Arrived::Nis(_)) | Err(_) => Vec::new(),
        },
        _ => Vec::new(),
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
        let id = [alt.as_str(), event.record_id.as_str()];
        let held: Option<Event> = match FORWARDED.get(tx, &id)? {
            Some(e) => Some(e),
            None => PARKED.get(tx, &id)?,
        };
        if held.is_some_and(|held| held.version >= event.version) {
            return Ok(Applied::Unchanged);
        }
        match CROSSWALK.get(tx, &[&alt])? {
            Some(nis) => {
                FORWARDED.put(tx, &id, event)?;
                self.forward_health(tx, nis.as_str(), &alt, event);
                Ok(Applied::Changed)
            }
            None => {
                PARKED.put(tx, &id, event)?;
                Ok(Applied::Parked)
            }
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
        if c.erased {
            // The person was erased: what is held under their identifier goes, unless the
            // identifier already belongs to someone else (then what is held is theirs).
            if current.as_deref().is_some_and(|held| held != nis.as_str()) {
                return Ok(Applied::Unchanged);
            }
            let forwarded = FORWARDED.scan_under(tx, alt)?;
            let parked = PARKED.scan_under(tx, alt)?;
            if current.is_none() && forwarded.is_empty() && parked.is_empty() {
                return Ok(Applied::Unchanged);
            }
            CROSSWALK.delete(tx, &[alt]);
            for (rid, _) in forwarded {
                FORWARDED.delete(tx, &[alt, &rid]);
            }
            for (rid, _) in parked {
                PARKED.delete(tx, &[alt, &rid]);
            }
            return Ok(Applied::Erased);
        }
        if c.carried {
            if current.as_deref() == Some(nis.as_str()) {
                return Ok(Applied::Unchanged);
            }
            // Records are held as resolved (`e/`) only while the identifier maps to someone:
            // a first claim has nothing resolved to move, only what is parked.
            let resolved = match &current {
                Some(_) => FORWARDED.scan_under(tx, alt)?,
                None => Vec::new(),
            };
            if let Some(prev) = &current {
                for (rid, _) in &resolved {
                    self.withdraw_health(tx, prev, alt, rid, c.at);
                }
            }
            CROSSWALK.put(tx, &[alt], &nis)?;
            let mut all = resolved;
            for (rid, v) in PARKED.scan_under(tx, alt)? {
                PARKED.delete(tx, &[alt, &rid]);
                FORWARDED.put_encoded(tx, &[alt, &rid], v.clone());
                all.push((rid, v));
            }
            for (rid, v) in all {
                let event = FORWARDED.decode(&[alt, &rid], &v)?;
                self.forward_health(tx, nis.as_str(), alt, &event);
            }
            Ok(Applied::Changed)
        } else {
            if current.as_deref() != Some(nis.as_str()) {
                return Ok(Applied::Unchanged);
            }
            CROSSWALK.delete(tx, &[alt]);
            for (rid, v) in FORWARDED.scan_under(tx, alt)? {
                FORWARDED.delete(tx, &[alt, &rid]);
                PARKED.put_encoded(tx, &[alt, &rid], v);
                self.withdraw_health(tx, nis.as_str(), alt, &rid, c.at);
            }
            Ok(Applied::Changed)
        }
    }
}
