//! The state tables: each a key prefix and the type of its values, the value knowing its own
//! encoding ([`Stored`]). The stages read and write state only through these, so a key's
//! layout and its codec are written once, here (the layout is listed in the module docs).
use std::marker::PhantomData;

use super::*;

/// Everything the person stage keeps of one person (`p/<nis>`): one key, so an event writes
/// one value and one changelog entry. Stored in format 3 ([`PersonEntry`] with the records in
/// protobuf, `person_format.rs`); format 2 (the records as JSON in the entry) and format 1 (the
/// JSON alone, with the digest and the identifiers under keys of their own) are still read.
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
    /// The digest of the last view published; `None` until one was.
    #[serde(skip)]
    pub(super) digest: Option<PersonDigest>,
    /// The alternate identifiers the live profile carries (`cns:…`, `cpf:…`).
    #[serde(skip)]
    pub(super) carried: BTreeSet<String>,
    /// Read in format 1: the digest and identifiers are under `d/p/`, `v/p/` and `xo/`
    /// ([`Topology::load_person_doc`] reads them), which the next write deletes.
    #[serde(skip)]
    pub(super) format1: bool,
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

/// What the family stage keeps of a family's members (`fm/<family id>`): the members and the
/// digest of the last family view, under one key. Format 2 is [`FamilyMembersEntry`]; format 1
/// (the members' JSON alone, the digest under `d/f/`) is still read.
#[derive(Debug, Default)]
pub(super) struct MembersDoc {
    pub(super) members: Members,
    pub(super) digest: Option<FamilyDigest>,
    /// Read in format 1: the digest is under `d/f/` or `v/f/`, which the next write deletes.
    pub(super) format1: bool,
    /// Not stored: the family had no members entry.
    pub(super) absent: bool,
}

/// The first byte of a state value in format 2, a protobuf entry after it. Format 1 values are
/// JSON objects, whose first byte is `{`.
const FORMAT_2: u8 = 2;
/// The first byte of a person's value in format 3: a [`PersonEntry`] with its records in
/// protobuf.
const FORMAT_3: u8 = 3;

/// `entry` encoded after its format byte (the state's values, the index's counts rows).
pub(crate) fn with_format(format: u8, entry: &impl prost::Message) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(1 + entry.encoded_len());
    bytes.push(format);
    entry.encode_raw(&mut bytes);
    bytes
}

/// A state value's format: 1 (JSON), or 2 or 3 (the protobuf after the first byte).
fn format_of(bytes: &[u8]) -> Result<u8, String> {
    match bytes.first() {
        Some(b'{') => Ok(1),
        Some(&f @ (FORMAT_2 | FORMAT_3)) => Ok(f),
        Some(other) => Err(format!(
            "unknown state value format (first byte {other:#04x})"
        )),
        None => Err("empty state value".to_owned()),
    }
}

impl PersonDoc {
    /// The value as format 2 wrote it (records as JSON): what stores written before format 3
    /// hold, for the tests that read them ([`super::person_value_in_format_2`]).
    pub(super) fn to_format_2(&self) -> Result<Vec<u8>, String> {
        Ok(with_format(
            FORMAT_2,
            &PersonEntry {
                records_json: serde_json::to_vec(self).map_err(|e| e.to_string())?,
                digest: self.digest.clone(),
                carried: self.carried.iter().cloned().collect(),
                ..PersonEntry::default()
            },
        ))
    }
}

impl Stored for PersonDoc {
    fn to_stored(&self) -> Result<Vec<u8>, String> {
        let mut entry = PersonEntry {
            digest: self.digest.clone(),
            carried: self.carried.iter().cloned().collect(),
            ..PersonEntry::default()
        };
        super::person_format::encode_records(self, &mut entry)?;
        Ok(with_format(FORMAT_3, &entry))
    }
    fn from_stored(bytes: &[u8]) -> Result<Self, String> {
        let json = |b: &[u8]| serde_json::from_slice::<PersonDoc>(b).map_err(|e| e.to_string());
        let format = format_of(bytes)?;
        if format == 1 {
            return Ok(PersonDoc {
                format1: true,
                ..json(bytes)?
            });
        }
        let mut entry = PersonEntry::decode(&bytes[1..]).map_err(|e| e.to_string())?;
        let digest = entry.digest.take();
        let carried = std::mem::take(&mut entry.carried).into_iter().collect();
        let records = if format == FORMAT_2 {
            json(&entry.records_json)?
        } else {
            super::person_format::decode_records(entry)?
        };
        Ok(PersonDoc {
            digest,
            carried,
            ..records
        })
    }
}

impl Stored for MembersDoc {
    fn to_stored(&self) -> Result<Vec<u8>, String> {
        Ok(with_format(
            FORMAT_2,
            &FamilyMembersEntry {
                members_json: serde_json::to_vec(&self.members).map_err(|e| e.to_string())?,
                digest: self.digest,
            },
        ))
    }
    fn from_stored(bytes: &[u8]) -> Result<Self, String> {
        let json = |b: &[u8]| serde_json::from_slice::<Members>(b).map_err(|e| e.to_string());
        match format_of(bytes)? {
            1 => {
                return Ok(MembersDoc {
                    members: json(bytes)?,
                    format1: true,
                    ..MembersDoc::default()
                });
            }
            FORMAT_2 => {}
            other => return Err(format!("format {other} is not one of a family's members")),
        }
        let entry = FamilyMembersEntry::decode(&bytes[1..]).map_err(|e| e.to_string())?;
        Ok(MembersDoc {
            members: json(&entry.members_json)?,
            digest: entry.digest,
            ..MembersDoc::default()
        })
    }
}

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

stored_as_json!(
    FamilyDoc,
    Members,
    BTreeSet<String>,
    household::HouseholdDoc
);
stored_as_proto!(
    Event,
    PersonDigest,
    FamilyDigest,
    api::Person,
    api::Family,
    HeldHealthRecords,
    ParkedCount
);

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
        tx.get_with(&key, V::from_stored)?
            .transpose()
            .map_err(|e| corrupt(&key, e))
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
    /// (the rest of the id, the encoded value).
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

    /// Decodes a value of this table's type, `id` naming it in the error.
    pub(super) fn decode(&self, id: &[&str], bytes: &[u8]) -> Result<V, ReconcilerError> {
        V::from_stored(bytes).map_err(|e| corrupt(&self.key(id), e))
    }
}

/// `x/<cns:…|cpf:…>`: the NIS an alternate identifier belongs to.
pub(super) const CROSSWALK: Table<Nis> = Table::new("x");
/// `a/<alt>`: every health record that arrived as `<alt>`, forwarded while `x/<alt>` maps it,
/// parked while it maps to no one.
pub(super) const HELD: Table<HeldHealthRecords> = Table::new("a");
/// `n/parked`: how many health records of the partition are parked.
pub(super) const PARKED_COUNT: Table<ParkedCount> = Table::new("n");
/// The id of the one entry of [`PARKED_COUNT`].
pub(super) const PARKED_COUNT_ID: &str = "parked";
/// `e/<alt>/<record id>`: a health record that arrived as `<alt>` and was forwarded, as stores
/// kept it before [`HELD`] (moved there when its identifier is next touched).
pub(super) const FORWARDED_BEFORE_HELD: Table<Event> = Table::new("e");
/// `k/<alt>/<record id>`: a parked health record, as stores kept it before [`HELD`] (moved
/// there when its identifier is next touched).
pub(super) const PARKED_BEFORE_HELD: Table<Event> = Table::new("k");
/// `p/<nis>`: the person's records, every entry, tombstones included; the digest of the last
/// view and the identifiers the profile carries.
pub(super) const PERSONS: Table<PersonDoc> = Table::new("p");
/// `xo/<nis>`: the alternate identifiers the person's profile carried, as stores kept them
/// before format 2 of `p/` (read once, then deleted).
pub(super) const CARRIED_IDS: Table<BTreeSet<String>> = Table::new("xo");
/// `d/p/<nis>`: digest of the person's last published view, as stores kept it before format 2
/// of `p/` (read once, then deleted).
pub(super) const PERSON_DIGESTS: Table<PersonDigest> = Table::new("d/p");
/// `v/p/<nis>`: the whole last view, as stores written before digests kept it (read once,
/// then replaced by the digest).
pub(super) const PERSON_VIEWS_BEFORE_DIGESTS: Table<api::Person> = Table::new("v/p");
/// `f/<family id>`: the family's assistance records.
pub(super) const FAMILIES: Table<FamilyDoc> = Table::new("f");
/// `fm/<family id>`: the family's members and their non-compliant outcomes, and the digest of
/// the last family view.
pub(super) const MEMBERS: Table<MembersDoc> = Table::new("fm");
/// `d/f/<family id>`: digest of the family's last published view, as stores kept it before
/// format 2 of `fm/` (read once, then deleted).
pub(super) const FAMILY_DIGESTS: Table<FamilyDigest> = Table::new("d/f");
/// `v/f/<family id>`: the whole last family view of stores written before digests.
pub(super) const FAMILY_VIEWS_BEFORE_DIGESTS: Table<api::Family> = Table::new("v/f");

/// `h/<household id>`: a followed household's records, their sources, the last evaluation day
/// and the digest of its last view.
pub(super) const HOUSEHOLDS: Table<household::HouseholdDoc> = Table::new("h");

/// Every table's prefix (a key matches one only with the `/` that follows it).
const PREFIXES: [&str; 17] = [
    PERSON_DIGESTS.prefix,
    PERSON_VIEWS_BEFORE_DIGESTS.prefix,
    FAMILY_DIGESTS.prefix,
    FAMILY_VIEWS_BEFORE_DIGESTS.prefix,
    CARRIED_IDS.prefix,
    CROSSWALK.prefix,
    HELD.prefix,
    PARKED_COUNT.prefix,
    FORWARDED_BEFORE_HELD.prefix,
    PARKED_BEFORE_HELD.prefix,
    PERSONS.prefix,
    FAMILIES.prefix,
    MEMBERS.prefix,
    HOUSEHOLDS.prefix,
    super::index::DERIVED[0],
    super::index::DERIVED[1],
    super::index::DERIVED[2],
];

/// The table a full state key (partition prefix included) belongs to, by its prefix (`p`,
/// `fm`, …), as the metrics label it; `other` for a key of none.
pub fn table_of(key: &[u8]) -> &'static str {
    let within = key
        .iter()
        .position(|&b| b == b'/')
        .map_or(key, |slash| &key[slash + 1..]);
    PREFIXES
        .into_iter()
        .find(|p| within.starts_with(p.as_bytes()) && within.get(p.len()) == Some(&b'/'))
        .unwrap_or("other")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_join_the_prefix_and_the_id_parts() {
        assert_eq!(PERSONS.key(&["12345678901"]), b"p/12345678901");
        assert_eq!(PERSON_DIGESTS.key(&["1"]), b"d/p/1");
        assert_eq!(FORWARDED_BEFORE_HELD.key(&["cns:7", "r1"]), b"e/cns:7/r1");
        assert_eq!(PARKED_BEFORE_HELD.key_prefix(), b"k/");
        assert_eq!(HELD.key(&["cns:7"]), b"a/cns:7");
        assert_eq!(PARKED_COUNT.key(&[PARKED_COUNT_ID]), b"n/parked");
    }

    #[test]
    fn a_full_key_is_labelled_with_its_table() {
        let full = |key: Vec<u8>| -> Vec<u8> {
            let mut k = partition_prefix(7);
            k.extend(key);
            k
        };
        assert_eq!(table_of(&full(PERSONS.key(&["1"]))), "p");
        assert_eq!(table_of(&full(MEMBERS.key(&["f1"]))), "fm");
        assert_eq!(table_of(&full(FAMILIES.key(&["f1"]))), "f");
        assert_eq!(table_of(&full(CROSSWALK.key(&["cns:1"]))), "x");
        assert_eq!(table_of(b"0007/xo/1"), "xo");
        assert_eq!(table_of(b"0007/d/p/1"), "d/p");
        assert_eq!(table_of(b"0007/d/f/1"), "d/f");
        assert_eq!(
            table_of(&full(FORWARDED_BEFORE_HELD.key(&["cns:1", "r"]))),
            "e"
        );
        assert_eq!(table_of(&full(HELD.key(&["cns:1"]))), "a");
        assert_eq!(table_of(&full(PARKED_COUNT.key(&[PARKED_COUNT_ID]))), "n");
        assert_eq!(table_of(b"0007/pp/1"), "other");
        assert_eq!(table_of(b"meta/x"), "other");
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
