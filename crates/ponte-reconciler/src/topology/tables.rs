//! The state tables: each a key prefix and the type of its values, the value knowing its own
//! encoding ([`Stored`]). The stages read and write state only through these, so a key's
//! layout and its codec are written once, here (the layout is listed in the module docs).
use std::marker::PhantomData;

use super::*;

/// The records of one person as persisted.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct PersonDoc {
    pub(super) records: Vec<PersonRecord>,
    /// Record id → the identifier a health record arrived as (`cns:…`).
    #[serde(default)]
    pub(super) health_arrived_as: BTreeMap<String, String>,
    /// Record id → where the record came from (absent for records applied before provenance
    /// was kept).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) sources: BTreeMap<String, Source>,
}

/// Where a record came from: the provenance its envelope carried when it last changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Source {
    pub(super) version: u64,
    pub(super) record_type: String,
    pub(super) source_system: String,
    pub(super) sender: String,
    pub(super) request_id: String,
    /// When the adapter received it: seconds and nanoseconds since the epoch.
    pub(super) received: Option<(i64, i32)>,
}

/// The records of one family as persisted.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct FamilyDoc {
    pub(super) records: Vec<FamilyRecord>,
    /// Record id → where the record came from.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) sources: BTreeMap<String, Source>,
}

/// The members of a family with their latest non-compliant outcomes, as the members topic
/// delivered them.
pub(super) type Members = BTreeMap<String, Vec<Outcome>>;

/// A value kept in the state, and how it is encoded there.
pub(super) trait Stored: Sized {
    fn to_stored(&self) -> Result<Vec<u8>, String>;
    fn from_stored(bytes: &[u8]) -> Result<Self, String>;
}

/// Values kept as JSON (the domain's records and outcomes, which are serde types).
macro_rules! stored_as_json {
    ($($t:ty),*) => {$(
        impl Stored for $t {
            fn to_stored(&self) -> Result<Vec<u8>, String> {
                serde_json::to_vec(self).map_err(|e| e.to_string())
            }
            fn from_stored(bytes: &[u8]) -> Result<Self, String> {
                serde_json::from_slice(bytes).map_err(|e| e.to_string())
            }
        }
    )*};
}

/// Values kept as protobuf (events as they arrived, digests, views of older stores).
macro_rules! stored_as_proto {
    ($($t:ty),*) => {$(
        impl Stored for $t {
            fn to_stored(&self) -> Result<Vec<u8>, String> {
                Ok(self.encode_to_vec())
            }
            fn from_stored(bytes: &[u8]) -> Result<Self, String> {
                <$t as prost::Message>::decode(bytes).map_err(|e| e.to_string())
            }
        }
    )*};
}

stored_as_json!(PersonDoc, FamilyDoc, Members, BTreeSet<String>);
stored_as_proto!(Event, PersonDigest, FamilyDigest, api::Person, api::Family);

/// A NIS, kept as its digits.
impl Stored for Nis {
    fn to_stored(&self) -> Result<Vec<u8>, String> {
        Ok(self.as_str().as_bytes().to_vec())
    }
    fn from_stored(bytes: &[u8]) -> Result<Self, String> {
        let s = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
        Nis::parse(s).map_err(|e| e.to_string())
    }
}

/// One table: values of type `V` under `<prefix>/<id part>/<id part>…`.
#[derive(Debug)]
pub(super) struct Table<V> {
    prefix: &'static str,
    value: PhantomData<fn() -> V>,
}

impl<V: Stored> Table<V> {
    const fn new(prefix: &'static str) -> Self {
        Self {
            prefix,
            value: PhantomData,
        }
    }

    /// The key of the entry `id` (its parts joined by `/`), within the partition.
    pub(super) fn key(&self, id: &[&str]) -> Vec<u8> {
        let mut k = String::with_capacity(
            self.prefix.len() + 1 + id.iter().map(|p| p.len() + 1).sum::<usize>(),
        );
        k.push_str(self.prefix);
        for part in id {
            k.push('/');
            k.push_str(part);
        }
        k.into_bytes()
    }

    /// The prefix of every key of the table, within a partition.
    pub(super) fn key_prefix(&self) -> Vec<u8> {
        format!("{}/", self.prefix).into_bytes()
    }

    pub(super) fn get(&self, tx: &Tx<'_>, id: &[&str]) -> Result<Option<V>, ReconcilerError> {
        let key = self.key(id);
        tx.get(&key)?
            .map(|b| V::from_stored(&b).map_err(|e| corrupt(&key, e)))
            .transpose()
    }

    pub(super) fn put(
        &self,
        tx: &mut Tx<'_>,
        id: &[&str],
        value: &V,
    ) -> Result<(), ReconcilerError> {
        let key = self.key(id);
        let bytes = value.to_stored().map_err(|e| corrupt(&key, e))?;
        tx.put(key, bytes);
        Ok(())
    }

    pub(super) fn delete(&self, tx: &mut Tx<'_>, id: &[&str]) {
        tx.delete(self.key(id));
    }

    /// The entries whose id starts with `first` (a two-part id's first part), in key order, as
    /// (the rest of the id, the encoded value): for moving entries between tables of one
    /// value type without decoding them.
    pub(super) fn scan_under(
        &self,
        tx: &Tx<'_>,
        first: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, ReconcilerError> {
        let prefix = self.key(&[first, ""]);
        Ok(tx
            .scan(&prefix)?
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k[prefix.len()..]).into_owned(), v))
            .collect())
    }

    /// Puts a value already encoded by a table of the same type ([`Table::scan_under`]).
    pub(super) fn put_encoded(&self, tx: &mut Tx<'_>, id: &[&str], bytes: Vec<u8>) {
        tx.put(self.key(id), bytes);
    }

    /// Decodes a value of this table's type, `id` naming it in the error.
    pub(super) fn decode(&self, id: &[&str], bytes: &[u8]) -> Result<V, ReconcilerError> {
        V::from_stored(bytes).map_err(|e| corrupt(&self.key(id), e))
    }
}

/// `x/<cns:…|cpf:…>`: the NIS an alternate identifier belongs to.
pub(super) const CROSSWALK: Table<Nis> = Table::new("x");
/// `e/<alt>/<record id>`: a health record that arrived as `<alt>` and was forwarded.
pub(super) const FORWARDED: Table<Event> = Table::new("e");
/// `k/<alt>/<record id>`: a parked health record.
pub(super) const PARKED: Table<Event> = Table::new("k");
/// `p/<nis>`: the person's records, every entry, tombstones included.
pub(super) const PERSONS: Table<PersonDoc> = Table::new("p");
/// `xo/<nis>`: the alternate identifiers the person's profile currently carries.
pub(super) const CARRIED_IDS: Table<BTreeSet<String>> = Table::new("xo");
/// `d/p/<nis>`: digest of the person's last published view.
pub(super) const PERSON_DIGESTS: Table<PersonDigest> = Table::new("d/p");
/// `v/p/<nis>`: the whole last view, as stores written before digests kept it (read once,
/// then replaced by the digest).
pub(super) const PERSON_VIEWS_BEFORE_DIGESTS: Table<api::Person> = Table::new("v/p");
/// `f/<family id>`: the family's assistance records.
pub(super) const FAMILIES: Table<FamilyDoc> = Table::new("f");
/// `fm/<family id>`: the family's members and their non-compliant outcomes.
pub(super) const MEMBERS: Table<Members> = Table::new("fm");
/// `d/f/<family id>`: digest of the family's last published view.
pub(super) const FAMILY_DIGESTS: Table<FamilyDigest> = Table::new("d/f");
/// `v/f/<family id>`: the whole last family view of stores written before digests.
pub(super) const FAMILY_VIEWS_BEFORE_DIGESTS: Table<api::Family> = Table::new("v/f");

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_join_the_prefix_and_the_id_parts() {
        assert_eq!(PERSONS.key(&["12345678901"]), b"p/12345678901");
        assert_eq!(PERSON_DIGESTS.key(&["1"]), b"d/p/1");
        assert_eq!(FORWARDED.key(&["cns:7", "r1"]), b"e/cns:7/r1");
        assert_eq!(PARKED.key_prefix(), b"k/");
    }

    #[test]
    fn a_value_that_does_not_decode_is_reported_with_its_key() {
        let base = std::collections::BTreeMap::<Vec<u8>, Vec<u8>>::new();
        struct Empty(std::collections::BTreeMap<Vec<u8>, Vec<u8>>);
        impl Kv for Empty {
            fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReconcilerError> {
                Ok(self.0.get(key).cloned())
            }
            fn scan(&self, _: &[u8]) -> Result<Vec<Entry>, ReconcilerError> {
                Ok(Vec::new())
            }
        }
        let empty = Empty(base);
        let mut tx = Tx::new(&empty);
        tx.put(PERSONS.key(&["1"]), b"not json".to_vec());
        let err = PERSONS.get(&tx, &["1"]).unwrap_err().to_string();
        assert!(err.contains("p/1"), "{err}");
        CROSSWALK
            .put(
                &mut tx,
                &["cns:7"],
                &Nis::with_check_digit("1234567890").unwrap(),
            )
            .unwrap();
        assert_eq!(
            CROSSWALK.get(&tx, &["cns:7"]).unwrap().unwrap().as_str(),
            Nis::with_check_digit("1234567890").unwrap().as_str()
        );
    }
}
