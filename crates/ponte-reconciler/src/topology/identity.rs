//! Stage 1, identity (keyed by CNS/CPF): health records forwarded to their NIS, or parked
//! until a profile claims their identifier; claims and releases moving them.
use super::*;

impl Topology {
    // ---- identity resolution (keyed by CNS/CPF) ---------------------------------------------

    pub(super) fn apply_health(
        &self,
        tx: &mut Tx<'_>,
        event: &Event,
        h: &ev::HealthFollowUp,
    ) -> Result<Applied, ReconcilerError> {
        let alt = match &h.subject {
            Some(Subject::Nis(n)) => {
                // Already a NIS: straight on to the person (the person stage checks versions).
                let nis = match Nis::parse(n) {
                    Ok(n) => n,
                    Err(e) => return Ok(invalid("nis", e)),
                };
                self.forward_health(tx, nis.as_str(), &format!("nis:{nis}"), event);
                return Ok(Applied::Changed);
            }
            Some(Subject::Cns(c)) => match Cns::parse(c) {
                Ok(c) => format!("cns:{c}"),
                Err(e) => return Ok(invalid("cns", e)),
            },
            Some(Subject::Cpf(c)) => match Cpf::parse(c) {
                Ok(c) => format!("cpf:{c}"),
                Err(e) => return Ok(invalid("cpf", e)),
            },
            None => return Ok(invalid("subject", "health record names no person")),
        };
        let ekey = key(&["e", &alt, &event.record_id]);
        let kkey = key(&["k", &alt, &event.record_id]);
        let held: Option<Event> = match tx.get_proto(&ekey)? {
            Some(e) => Some(e),
            None => tx.get_proto(&kkey)?,
        };
        if held.is_some_and(|held| held.version >= event.version) {
            return Ok(Applied::Unchanged);
        }
        match tx.get(&key(&["x", &alt]))? {
            Some(nis) => {
                let nis = String::from_utf8_lossy(&nis).into_owned();
                tx.put(ekey, event.encode_to_vec());
                self.forward_health(tx, &nis, &alt, event);
                Ok(Applied::Changed)
            }
            None => {
                tx.put(kkey, event.encode_to_vec());
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
        if let Err(e) = Nis::parse(&c.nis) {
            return Ok(invalid("nis", e));
        }
        let xkey = key(&["x", &c.alt]);
        let current = tx
            .get(&xkey)?
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let resolved_prefix = key(&["e", &c.alt, ""]);
        let parked_prefix = key(&["k", &c.alt, ""]);
        if c.carried {
            if current.as_deref() == Some(c.nis.as_str()) {
                return Ok(Applied::Unchanged);
            }
            // Records are held as resolved (`e/`) only while the identifier maps to someone:
            // a first claim has nothing resolved to move, only what is parked.
            let resolved = match &current {
                Some(_) => tx.scan(&resolved_prefix)?,
                None => Vec::new(),
            };
            if let Some(prev) = &current {
                for (k, _) in &resolved {
                    let rid = String::from_utf8_lossy(&k[resolved_prefix.len()..]).into_owned();
                    self.withdraw_health(tx, prev, &c.alt, &rid, c.at);
                }
            }
            tx.put(xkey, c.nis.as_bytes().to_vec());
            let mut all = resolved;
            for (k, v) in tx.scan(&parked_prefix)? {
                let rid = &k[parked_prefix.len()..];
                tx.delete(k.clone());
                let ekey = [resolved_prefix.as_slice(), rid].concat();
                tx.put(ekey.clone(), v.clone());
                all.push((ekey, v));
            }
            for (k, v) in all {
                let event = Event::decode(v.as_slice()).map_err(|e| corrupt(&k, e))?;
                self.forward_health(tx, &c.nis, &c.alt, &event);
            }
            Ok(Applied::Changed)
        } else {
            if current.as_deref() != Some(c.nis.as_str()) {
                return Ok(Applied::Unchanged);
            }
            tx.delete(xkey);
            for (k, v) in tx.scan(&resolved_prefix)? {
                let rid = String::from_utf8_lossy(&k[resolved_prefix.len()..]).into_owned();
                tx.delete(k);
                tx.put([parked_prefix.as_slice(), rid.as_bytes()].concat(), v);
                self.withdraw_health(tx, &c.nis, &c.alt, &rid, c.at);
            }
            Ok(Applied::Changed)
        }
    }
}
