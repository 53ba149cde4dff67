//! The person view and the rules for applying an event to it.
//!
//! Layout in the store (state column family):
//! - `person/<nis>/meta` → `ponte.compliance.v1.Person` with no records (view version, time)
//! - `person/<nis>/rec/<record_id>` → the latest `ponte.events.v1.Event` for that record,
//!   retractions included (a retraction is kept as a tombstone with its version, so a late
//!   copy of the record it withdrew cannot bring it back).
//!
//! Applying an event: a version higher than the stored one replaces it (correction) or
//! withdraws it (retraction); an equal or lower version is ignored. That makes applying
//! idempotent and independent of redelivery.
use std::collections::HashMap;

use ponte_proto::compliance::v1::{AttendanceRecord, Person};
use ponte_proto::events::v1::{Event, event::Record};
use prost::Message as _;

use crate::ReconcilerError;

/// What applying one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A new record entered the view.
    Inserted,
    /// A higher version replaced the held one.
    Replaced,
    /// A retraction withdrew the record.
    Retracted,
    /// The event's version is not higher than the held one: nothing changed.
    Stale,
    /// The event carries no record this view holds.
    Unsupported,
}

impl Applied {
    /// Low-cardinality label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Applied::Inserted => "inserted",
            Applied::Replaced => "replaced",
            Applied::Retracted => "retracted",
            Applied::Stale => "stale_version",
            Applied::Unsupported => "unsupported_record",
        }
    }

    /// True when the view changed.
    pub fn changed(self) -> bool {
        matches!(
            self,
            Applied::Inserted | Applied::Replaced | Applied::Retracted
        )
    }
}

pub(crate) fn meta_key(nis: &str) -> Vec<u8> {
    format!("person/{nis}/meta").into_bytes()
}

pub(crate) fn record_key(nis: &str, record_id: &str) -> Vec<u8> {
    format!("person/{nis}/rec/{record_id}").into_bytes()
}

pub(crate) fn records_prefix(nis: &str) -> Vec<u8> {
    format!("person/{nis}/rec/").into_bytes()
}

/// Reads state; the store in production, a map in tests.
pub trait StateRead {
    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReconcilerError>;
}

impl StateRead for ponte_store::Store {
    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReconcilerError> {
        Ok(self.get(key)?)
    }
}

/// State changes of a batch not yet committed, readable before the commit so that several
/// events for one person in one batch see each other.
#[derive(Debug, Default)]
pub struct Pending {
    writes: HashMap<Vec<u8>, Vec<u8>>,
}

impl Pending {
    fn read(&self, base: &dyn StateRead, key: &[u8]) -> Result<Option<Vec<u8>>, ReconcilerError> {
        match self.writes.get(key) {
            Some(v) => Ok(Some(v.clone())),
            None => base.read(key),
        }
    }

    /// The writes, to put into a store batch.
    pub fn writes(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.writes
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    pub fn clear(&mut self) {
        self.writes.clear();
    }
}

fn decode<M: prost::Message + Default>(key: &[u8], bytes: &[u8]) -> Result<M, ReconcilerError> {
    M::decode(bytes).map_err(|e| ReconcilerError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

/// Applies one event to the view, recording the changes in `pending`.
pub fn apply(
    base: &dyn StateRead,
    pending: &mut Pending,
    event: &Event,
) -> Result<Applied, ReconcilerError> {
    let nis = match &event.record {
        Some(Record::SchoolAttendance(a)) => a.nis.clone(),
        _ => return Ok(Applied::Unsupported),
    };
    let rkey = record_key(&nis, &event.record_id);
    let held: Option<Event> = pending
        .read(base, &rkey)?
        .map(|b| decode(&rkey, &b))
        .transpose()?;
    let outcome = match &held {
        Some(h) if h.version >= event.version => return Ok(Applied::Stale),
        _ if event.retraction => Applied::Retracted,
        Some(h) if !h.retraction => Applied::Replaced,
        _ => Applied::Inserted,
    };
    pending.writes.insert(rkey, event.encode_to_vec());

    let mkey = meta_key(&nis);
    let mut meta: Person = pending
        .read(base, &mkey)?
        .map(|b| decode(&mkey, &b))
        .transpose()?
        .unwrap_or_else(|| Person {
            nis: nis.clone(),
            ..Default::default()
        });
    meta.view_version += 1;
    meta.updated_time = event.ingest_time;
    pending.writes.insert(mkey, meta.encode_to_vec());
    Ok(outcome)
}

/// Reads one person's view from the store; `None` when the view has never seen the person.
pub fn read_person(
    store: &ponte_store::Store,
    nis: &str,
) -> Result<Option<Person>, ReconcilerError> {
    let mkey = meta_key(nis);
    let Some(meta) = store.get(&mkey)? else {
        return Ok(None);
    };
    let mut person: Person = decode(&mkey, &meta)?;
    for (key, bytes) in store.scan_prefix(&records_prefix(nis))? {
        let event: Event = decode(&key, &bytes)?;
        if event.retraction {
            continue;
        }
        if let Some(Record::SchoolAttendance(a)) = event.record {
            person.school_attendance.push(AttendanceRecord {
                record_id: event.record_id,
                version: event.version,
                source_system: event.source_system,
                inep_school_code: a.inep_school_code,
                month: a.month,
                bimester: a.bimester,
                attendance_bp: a.attendance_bp,
                given: a.given,
                attended: a.attended,
                low_attendance_reason: a.low_attendance_reason,
                event_time: event.event_time,
            });
        }
    }
    person
        .school_attendance
        .sort_by(|a, b| (&a.month, &a.inep_school_code).cmp(&(&b.month, &b.inep_school_code)));
    Ok(Some(person))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ponte_proto::events::v1::SchoolAttendance;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct MapState(BTreeMap<Vec<u8>, Vec<u8>>);

    impl StateRead for MapState {
        fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReconcilerError> {
            Ok(self.0.get(key).cloned())
        }
    }

    impl MapState {
        fn apply(&mut self, e: &Event) -> Applied {
            let mut p = Pending::default();
            let a = apply(self, &mut p, e).unwrap();
            for (k, v) in p.writes() {
                self.0.insert(k.to_vec(), v.to_vec());
            }
            a
        }

        /// The records held, without view metadata (whose version counts applications).
        fn records(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
            self.0
                .iter()
                .filter(|(k, _)| !k.ends_with(b"/meta"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }
    }

    fn event(nis: &str, month: &str, version: u64, bp: u32, retraction: bool) -> Event {
        Event {
            record_id: format!("education:35012345:{nis}:{month}"),
            version,
            source_system: "education".into(),
            retraction,
            record: Some(Record::SchoolAttendance(SchoolAttendance {
                nis: nis.into(),
                inep_school_code: "35012345".into(),
                month: month.into(),
                attendance_bp: bp,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn corrections_replace_lower_versions_are_ignored_retractions_stick() {
        let mut s = MapState::default();
        assert_eq!(
            s.apply(&event("26827649960", "2025-04", 1, 5000, false)),
            Applied::Inserted
        );
        assert_eq!(
            s.apply(&event("26827649960", "2025-04", 1, 5000, false)),
            Applied::Stale
        );
        assert_eq!(
            s.apply(&event("26827649960", "2025-04", 2, 9000, false)),
            Applied::Replaced
        );
        assert_eq!(
            s.apply(&event("26827649960", "2025-04", 1, 5000, false)),
            Applied::Stale
        );
        assert_eq!(
            s.apply(&event("26827649960", "2025-04", 3, 0, true)),
            Applied::Retracted
        );
        // A late copy of the withdrawn record does not bring it back.
        assert_eq!(
            s.apply(&event("26827649960", "2025-04", 2, 9000, false)),
            Applied::Stale
        );
        assert_eq!(
            s.apply(&event("26827649960", "2025-04", 4, 7000, false)),
            Applied::Inserted
        );
    }

    #[test]
    fn events_in_one_batch_see_each_other() {
        let s = MapState::default();
        let mut p = Pending::default();
        assert_eq!(
            apply(&s, &mut p, &event("26827649960", "2025-04", 1, 1, false)).unwrap(),
            Applied::Inserted
        );
        assert_eq!(
            apply(&s, &mut p, &event("26827649960", "2025-04", 1, 1, false)).unwrap(),
            Applied::Stale
        );
        assert_eq!(
            apply(&s, &mut p, &event("26827649960", "2025-04", 2, 1, false)).unwrap(),
            Applied::Replaced
        );
    }

    fn arb_events() -> impl Strategy<Value = Vec<Event>> {
        let nis = prop::sample::select(vec!["26827649960", "46952280637"]);
        let month = prop::sample::select(vec!["2025-04", "2025-05"]);
        // One version of a record always has one content, as sources guarantee: the content
        // (and whether it is a retraction) is a function of the version.
        prop::collection::vec((nis, month, 1u64..6), 0..24).prop_map(|v| {
            v.into_iter()
                .map(|(n, m, ver)| {
                    let bp = u32::try_from(ver).unwrap() * 1000;
                    event(n, m, ver, bp, ver % 3 == 0)
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn records_held_do_not_depend_on_arrival_order(events in arb_events(), seed in any::<u64>()) {
            let mut a = MapState::default();
            for e in &events { a.apply(e); }
            let mut shuffled = events.clone();
            // Deterministic shuffle from the seed.
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                let j = usize::try_from(x % (i as u64 + 1)).unwrap();
                shuffled.swap(i, j);
            }
            let mut b = MapState::default();
            for e in &shuffled { b.apply(e); }
            prop_assert_eq!(a.records(), b.records());
        }

        #[test]
        fn replaying_any_prefix_changes_nothing(events in arb_events(), cut in 0usize..24) {
            let mut once = MapState::default();
            for e in &events { once.apply(e); }
            let mut again = MapState::default();
            for e in &events { again.apply(e); }
            for e in events.iter().take(cut) { again.apply(e); }
            prop_assert_eq!(once.0, again.0);
        }
    }
}
