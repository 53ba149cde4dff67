//! One person across the documents they hold over time.
//!
//! A Colombian is registered at birth with a NUIP, which the tarjeta de identidad and the cédula
//! de ciudadanía carry on (docs/sources.md#registraduria-nuip): the NUIP is the person's key, and
//! a document of the Registraduría with the same number continues the identity. A foreigner's
//! cédula de extranjería and PPT carry numbers of their own, so a foreigner is keyed by the
//! registry's member id and each document continues the identity only when the registry links it
//! to that member; so does a Colombian document whose number differs from the key (a cédula
//! issued to someone whose tarjeta predates the NUIP). Decision U12 in docs/rules.md.
//!
//! Whatever links a document, it must fit the person: not dated before their birth, not a type
//! issued only from an age they had not reached, and never out of the order registro civil →
//! tarjeta de identidad → cédula de ciudadanía. Messages never repeat a document number.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::documents::{Document, DocumentNumber, DocumentType};
use crate::period::Date;

/// The stable key of a person in the household registry.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PersonKey {
    /// The number the person's Registraduría documents carry: the NUIP (for a Colombian whose
    /// first document predates the NUIP, that document's number). Written `nuip:<digits>`.
    Nuip(DocumentNumber),
    /// The registry's own id of the member (foreigners, and anyone without a Colombian
    /// document). Written `registry:<id>`.
    Registry(String),
}

impl PersonKey {
    /// Parses `nuip:<digits>` or `registry:<id>`.
    pub fn parse(input: &str) -> Result<PersonKey, String> {
        if let Some(n) = input.strip_prefix("nuip:") {
            // Any number a Registraduría document may carry.
            [
                DocumentType::RegistroCivil,
                DocumentType::TarjetaIdentidad,
                DocumentType::CedulaCiudadania,
            ]
            .into_iter()
            .find_map(|t| DocumentNumber::parse(t, n).ok())
            .map(PersonKey::Nuip)
            .ok_or_else(|| {
                "person key nuip: must be followed by the number of a registro civil, tarjeta \
                 de identidad or cédula de ciudadanía"
                    .to_owned()
            })
        } else if let Some(id) = input.strip_prefix("registry:") {
            if id.trim().is_empty() {
                Err("person key registry: must be followed by the registry's member id".to_owned())
            } else {
                Ok(PersonKey::Registry(id.to_owned()))
            }
        } else {
            Err(format!(
                "person key must start with nuip: or registry:, got {:?}",
                input.split(':').next().unwrap_or_default()
            ))
        }
    }

    /// A form safe for logs (the NUIP masked).
    pub fn masked(&self) -> String {
        match self {
            PersonKey::Nuip(n) => format!("nuip:{}", n.masked()),
            PersonKey::Registry(id) => format!("registry:{id}"),
        }
    }
}

impl fmt::Display for PersonKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PersonKey::Nuip(n) => write!(f, "nuip:{n}"),
            PersonKey::Registry(id) => write!(f, "registry:{id}"),
        }
    }
}

impl fmt::Debug for PersonKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PersonKey({self})")
    }
}

impl FromStr for PersonKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PersonKey::parse(s)
    }
}

impl Serialize for PersonKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PersonKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        PersonKey::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A document a person holds from a date (its issue date, or the day the registry first
/// recorded it when the issue date is unknown).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HeldDocument {
    /// The document.
    pub document: Document,
    /// Held from.
    pub from: Date,
}

/// How a new document continues an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Continuity {
    /// The identity already holds this document (a renewal keeps the earliest date).
    AlreadyHeld,
    /// A Registraduría document carrying the person's NUIP.
    CarriesNuip,
    /// The registry links the document to the person's member id.
    LinkedByRegistry,
}

/// Why a document cannot continue an identity. Display names the documents by type and date,
/// never by number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityConflict {
    /// Dated before the person was born.
    #[error("a {kind} dated {from} cannot belong to a person born on {birth_date}")]
    BeforeBirth {
        /// Document type.
        kind: DocumentType,
        /// Its date.
        from: Date,
        /// The person's birth date.
        birth_date: Date,
    },
    /// Held at an age the type is not issued at.
    #[error("a {kind} is issued from age {min}; the person was {age} on {from}")]
    TooYoung {
        /// Document type.
        kind: DocumentType,
        /// Its date.
        from: Date,
        /// The person's age then.
        age: u32,
        /// The type's first age.
        min: u32,
    },
    /// Out of the order registro civil → tarjeta de identidad → cédula de ciudadanía.
    #[error(
        "the {kind} dated {from} is out of order with the {held} dated {held_from}: a Colombian holds the registro civil, then the tarjeta de identidad, then the cédula de ciudadanía"
    )]
    OutOfOrder {
        /// The new document's type.
        kind: DocumentType,
        /// Its date.
        from: Date,
        /// The held document's type.
        held: DocumentType,
        /// Its date.
        held_from: Date,
    },
    /// A Registraduría document whose number is not the person's NUIP, without a registry link.
    #[error(
        "a {kind} whose number differs from the person's NUIP continues the identity only when the registry links it to the same member"
    )]
    DifferentNuip {
        /// Document type.
        kind: DocumentType,
    },
    /// A document of a person keyed by the registry, without the registry's link.
    #[error(
        "a {kind} continues the identity of a person keyed by the registry only when the registry links it to the same member"
    )]
    NotLinked {
        /// Document type.
        kind: DocumentType,
    },
    /// The registry links the document to another member.
    #[error(
        "the registry links this {kind} to member {found:?}, but the identity is member {expected:?}'s"
    )]
    MemberMismatch {
        /// Document type.
        kind: DocumentType,
        /// The identity's member id.
        expected: String,
        /// The member id given with the document.
        found: String,
    },
    /// No national document and no registry member id to key the person by.
    #[error(
        "a person without a registro civil, tarjeta de identidad or cédula de ciudadanía needs the registry's member id as key"
    )]
    NoKey,
}

/// Whether a person holds the identity document expected at their age on a given day
/// (decision U5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum DocumentForAge {
    /// A document valid at the person's age.
    Expected {
        /// The document.
        document: Document,
        /// Age that day.
        age: u32,
    },
    /// Documents held, none of them for the person's age (a tarjeta de identidad at 19).
    NotForAge {
        /// The latest document held.
        latest: Document,
        /// Age that day.
        age: u32,
    },
    /// No document held that day.
    NoDocument,
    /// Birth date unknown (or after the day): which document is expected cannot be said.
    AgeUnknown,
}

/// A person's identity: a stable key, the birth date, the registry's member id if known, and the
/// documents held over time (in date order).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "RawIdentity")]
pub struct PersonIdentity {
    key: PersonKey,
    birth_date: Option<Date>,
    registry_member: Option<String>,
    documents: Vec<HeldDocument>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    #[allow(dead_code)]
    key: Option<PersonKey>,
    birth_date: Option<Date>,
    registry_member: Option<String>,
    #[serde(default)]
    documents: Vec<HeldDocument>,
}

impl TryFrom<RawIdentity> for PersonIdentity {
    type Error = IdentityConflict;
    fn try_from(raw: RawIdentity) -> Result<Self, Self::Error> {
        // The key is derived again from the documents, so a stored identity cannot carry a key
        // its documents contradict.
        PersonIdentity::from_documents(raw.birth_date, raw.registry_member, raw.documents)
    }
}

impl PersonIdentity {
    /// A person known to the registry by member id, with no document yet.
    pub fn without_documents(member: &str, birth_date: Option<Date>) -> PersonIdentity {
        PersonIdentity {
            key: PersonKey::Registry(member.to_owned()),
            birth_date,
            registry_member: Some(member.to_owned()),
            documents: Vec::new(),
        }
    }

    /// Builds an identity from every document the person holds, in any order: keyed by the
    /// earliest Registraduría document's number, or else by `registry_member`; each document is
    /// then added in date order and must continue the identity.
    pub fn from_documents(
        birth_date: Option<Date>,
        registry_member: Option<String>,
        mut documents: Vec<HeldDocument>,
    ) -> Result<PersonIdentity, IdentityConflict> {
        documents.sort_by_key(|d| (d.from, d.document.kind.national_rank(), d.document.clone()));
        let key = match documents.iter().find(|d| d.document.kind.is_national()) {
            Some(first) => PersonKey::Nuip(first.document.number.clone()),
            None => PersonKey::Registry(registry_member.clone().ok_or(IdentityConflict::NoKey)?),
        };
        let mut identity = PersonIdentity {
            key,
            birth_date,
            registry_member: registry_member.clone(),
            documents: Vec::new(),
        };
        for d in documents {
            identity.add(d, registry_member.as_deref())?;
        }
        Ok(identity)
    }

    /// The stable key.
    pub fn key(&self) -> &PersonKey {
        &self.key
    }

    /// Birth date, if known.
    pub fn birth_date(&self) -> Option<Date> {
        self.birth_date
    }

    /// The registry's member id, if known.
    pub fn registry_member(&self) -> Option<&str> {
        self.registry_member.as_deref()
    }

    /// Documents, in date order.
    pub fn documents(&self) -> &[HeldDocument] {
        &self.documents
    }

    /// True when the person holds (or held) `document`.
    pub fn holds(&self, document: &Document) -> bool {
        self.documents.iter().any(|d| d.document == *document)
    }

    /// Decides whether `new` continues this identity. `registry_member` is the member id the
    /// registry gives with the document, if any.
    pub fn continues(
        &self,
        new: &HeldDocument,
        registry_member: Option<&str>,
    ) -> Result<Continuity, IdentityConflict> {
        let kind = new.document.kind;
        if let (Some(expected), Some(found)) = (&self.registry_member, registry_member)
            && expected != found
        {
            return Err(IdentityConflict::MemberMismatch {
                kind,
                expected: expected.clone(),
                found: found.to_owned(),
            });
        }
        if self.holds(&new.document) {
            return Ok(Continuity::AlreadyHeld);
        }
        if let Some(birth_date) = self.birth_date {
            let Some(age) = birth_date.age_on(new.from) else {
                return Err(IdentityConflict::BeforeBirth {
                    kind,
                    from: new.from,
                    birth_date,
                });
            };
            let min = kind.ages().min;
            if age < min {
                return Err(IdentityConflict::TooYoung {
                    kind,
                    from: new.from,
                    age,
                    min,
                });
            }
        }
        if let Some(rank) = kind.national_rank() {
            for held in &self.documents {
                let Some(held_rank) = held.document.kind.national_rank() else {
                    continue;
                };
                if (rank < held_rank && new.from > held.from)
                    || (rank > held_rank && new.from < held.from)
                {
                    return Err(IdentityConflict::OutOfOrder {
                        kind,
                        from: new.from,
                        held: held.document.kind,
                        held_from: held.from,
                    });
                }
            }
        }
        let linked = registry_member.is_some() && registry_member == self.registry_member();
        match &self.key {
            PersonKey::Nuip(n) if kind.is_national() && new.document.number == *n => {
                Ok(Continuity::CarriesNuip)
            }
            _ if linked => Ok(Continuity::LinkedByRegistry),
            PersonKey::Nuip(_) if kind.is_national() => {
                Err(IdentityConflict::DifferentNuip { kind })
            }
            _ => Err(IdentityConflict::NotLinked { kind }),
        }
    }

    /// Adds `new` if it continues the identity (see [`PersonIdentity::continues`]). A document
    /// already held keeps the earlier of its two dates.
    pub fn add(
        &mut self,
        new: HeldDocument,
        registry_member: Option<&str>,
    ) -> Result<Continuity, IdentityConflict> {
        let how = self.continues(&new, registry_member)?;
        if self.registry_member.is_none() {
            self.registry_member = registry_member.map(str::to_owned);
        }
        match self
            .documents
            .iter_mut()
            .find(|d| d.document == new.document)
        {
            Some(held) => held.from = held.from.min(new.from),
            None => self.documents.push(new),
        }
        self.documents
            .sort_by_key(|d| (d.from, d.document.kind.national_rank(), d.document.clone()));
        Ok(how)
    }

    /// Whether, on `on`, the person holds a document meant for their age: the documents held
    /// that day (dated on or before it) against their age that day.
    pub fn document_for_age(&self, on: Date) -> DocumentForAge {
        let Some(age) = self.birth_date.and_then(|b| b.age_on(on)) else {
            return DocumentForAge::AgeUnknown;
        };
        let held: Vec<&HeldDocument> = self.documents.iter().filter(|d| d.from <= on).collect();
        if let Some(d) = held
            .iter()
            .rev()
            .find(|d| d.document.kind.ages().contains(age))
        {
            return DocumentForAge::Expected {
                document: d.document.clone(),
                age,
            };
        }
        match held.last() {
            Some(d) => DocumentForAge::NotForAge {
                latest: d.document.clone(),
                age,
            },
            None => DocumentForAge::NoDocument,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: &str) -> Date {
        Date::parse(s).unwrap()
    }

    fn held(code: &str, number: &str, from: &str) -> HeldDocument {
        HeldDocument {
            document: Document::parse_coded(code, number).unwrap(),
            from: date(from),
        }
    }

    const NUIP: &str = "1023456789";

    /// A Colombian born 2010-03-04 with the registro civil of their birth.
    fn child() -> PersonIdentity {
        PersonIdentity::from_documents(
            Some(date("2010-03-04")),
            Some("hh1-2".to_owned()),
            vec![held("RC", NUIP, "2010-03-20")],
        )
        .unwrap()
    }

    #[test]
    fn registro_civil_tarjeta_cedula_is_one_person() {
        // docs/sources.md#registraduria-nuip: the NUIP is carried from the registro civil to the
        // tarjeta de identidad (from 7) and the cédula (from 18).
        let mut p = child();
        assert_eq!(p.key().to_string(), format!("nuip:{NUIP}"));
        assert_eq!(
            p.add(held("TI", NUIP, "2017-05-02"), None),
            Ok(Continuity::CarriesNuip)
        );
        assert_eq!(
            p.add(held("CC", NUIP, "2028-04-01"), None),
            Ok(Continuity::CarriesNuip)
        );
        assert_eq!(p.documents().len(), 3);
        assert_eq!(p.key().to_string(), format!("nuip:{NUIP}"));
        // The same identity whatever order the documents are given in.
        let mut docs = p.documents().to_vec();
        docs.reverse();
        let q = PersonIdentity::from_documents(p.birth_date(), Some("hh1-2".into()), docs).unwrap();
        assert_eq!(p, q);
    }

    #[test]
    fn whether_a_new_document_continues_the_identity() {
        // The child above: born 2010-03-04, RC from 2010-03-20, registry member hh1-2.
        // Decision U12 (docs/rules.md): NUIP carried, or the registry's link; ages from
        // docs/sources.md#registraduria-tarjeta-identidad and #cedula-extranjeria.
        type Case<'a> = (
            &'a str,
            HeldDocument,
            Option<&'a str>,
            Result<Continuity, &'a str>,
        );
        let cases: &[Case<'_>] = &[
            (
                "the same registro civil again",
                held("RC", NUIP, "2012-01-01"),
                None,
                Ok(Continuity::AlreadyHeld),
            ),
            (
                "tarjeta with the NUIP at 7",
                held("TI", NUIP, "2017-03-04"),
                None,
                Ok(Continuity::CarriesNuip),
            ),
            (
                "tarjeta with the NUIP at 6",
                held("TI", NUIP, "2017-03-03"),
                None,
                Err("a tarjeta de identidad is issued from age 7; the person was 6 on 2017-03-03"),
            ),
            (
                "cédula at 17",
                held("CC", NUIP, "2027-06-01"),
                None,
                Err(
                    "a cédula de ciudadanía is issued from age 18; the person was 17 on 2027-06-01",
                ),
            ),
            (
                "a document before birth",
                held("PT", "4512345", "2009-12-31"),
                Some("hh1-2"),
                Err("a PPT dated 2009-12-31 cannot belong to a person born on 2010-03-04"),
            ),
            (
                "tarjeta with another number, no registry link",
                held("TI", "1098765432", "2018-01-10"),
                None,
                Err(
                    "a tarjeta de identidad whose number differs from the person's NUIP continues the identity only when the registry links it to the same member",
                ),
            ),
            (
                "tarjeta with another number, linked by the registry",
                held("TI", "1098765432", "2018-01-10"),
                Some("hh1-2"),
                Ok(Continuity::LinkedByRegistry),
            ),
            (
                "linked to another member",
                held("TI", NUIP, "2018-01-10"),
                Some("hh9-1"),
                Err(
                    "the registry links this tarjeta de identidad to member \"hh9-1\", but the identity is member \"hh1-2\"'s",
                ),
            ),
            (
                "a PPT without the registry's link",
                held("PT", "4512345", "2021-06-01"),
                None,
                Err(
                    "a PPT continues the identity of a person keyed by the registry only when the registry links it to the same member",
                ),
            ),
            (
                "a registro civil dated before the one held: still in order",
                held("RC", "1023456790", "2010-03-10"),
                Some("hh1-2"),
                Ok(Continuity::LinkedByRegistry),
            ),
        ];
        let p = child();
        for (what, doc, member, expected) in cases {
            assert_eq!(
                p.continues(doc, *member).map_err(|e| e.to_string()),
                expected.map_err(str::to_owned),
                "{what}"
            );
        }
    }

    #[test]
    fn documents_must_follow_the_national_order() {
        let mut p = child();
        p.add(held("CC", NUIP, "2028-04-01"), None).unwrap();
        // A tarjeta dated after the cédula.
        assert_eq!(
            p.continues(&held("TI", NUIP, "2029-01-01"), None)
                .unwrap_err()
                .to_string(),
            "the tarjeta de identidad dated 2029-01-01 is out of order with the cédula de ciudadanía dated 2028-04-01: a Colombian holds the registro civil, then the tarjeta de identidad, then the cédula de ciudadanía"
        );
        // The tarjeta held before the cédula is in order.
        assert_eq!(
            p.continues(&held("TI", NUIP, "2020-01-01"), None),
            Ok(Continuity::CarriesNuip)
        );
    }

    #[test]
    fn foreigners_are_keyed_by_the_registry() {
        // Decision U12: a foreigner's documents carry numbers of their own.
        let mut p = PersonIdentity::from_documents(
            Some(date("1990-01-01")),
            Some("hh3-1".into()),
            vec![held("PT", "4512345", "2022-01-15")],
        )
        .unwrap();
        assert_eq!(p.key(), &PersonKey::Registry("hh3-1".into()));
        assert_eq!(
            p.add(held("CE", "442113", "2024-02-01"), Some("hh3-1")),
            Ok(Continuity::LinkedByRegistry)
        );
        // Naturalised: a cédula de ciudadanía linked by the registry keeps the key.
        assert_eq!(
            p.add(held("CC", "1122334455", "2026-02-01"), Some("hh3-1")),
            Ok(Continuity::LinkedByRegistry)
        );
        assert_eq!(p.key(), &PersonKey::Registry("hh3-1".into()));
        // Without a national document nor a member id there is no key.
        assert_eq!(
            PersonIdentity::from_documents(None, None, vec![held("PT", "4512345", "2022-01-15")]),
            Err(IdentityConflict::NoKey)
        );
    }

    #[test]
    fn document_expected_for_the_age() {
        // Decision U5: registro civil under 7, tarjeta 7–17, cédula from 18; a PPT at any age.
        let mut p = child();
        p.add(held("TI", NUIP, "2017-05-02"), None).unwrap();
        let cases: &[(&str, &str)] = &[
            ("2010-03-10", "no_document"), // born, not registered yet
            ("2015-01-01", "expected RC"),
            ("2017-04-01", "not_for_age RC 7"), // 7 with the registro civil only
            ("2020-01-01", "expected TI"),
            ("2028-03-04", "not_for_age TI 18"), // 18 without a cédula
            ("2009-01-01", "age_unknown"),       // before birth
        ];
        for (on, expected) in cases {
            let got = match p.document_for_age(date(on)) {
                DocumentForAge::Expected { document, .. } => {
                    format!("expected {}", document.kind.code())
                }
                DocumentForAge::NotForAge { latest, age } => {
                    format!("not_for_age {} {age}", latest.kind.code())
                }
                DocumentForAge::NoDocument => "no_document".to_owned(),
                DocumentForAge::AgeUnknown => "age_unknown".to_owned(),
            };
            assert_eq!(got, *expected, "{on}");
        }
        let unknown_birth = PersonIdentity::without_documents("hh1-3", None);
        assert_eq!(
            unknown_birth.document_for_age(date("2020-01-01")),
            DocumentForAge::AgeUnknown
        );
    }

    #[test]
    fn person_keys_read_back_and_are_validated() {
        for k in ["nuip:1023456789", "registry:hh1-2", "nuip:52123456"] {
            assert_eq!(PersonKey::parse(k).unwrap().to_string(), k);
        }
        for (k, e) in [
            (
                "nuip:12",
                "person key nuip: must be followed by the number of a registro civil, tarjeta de identidad or cédula de ciudadanía",
            ),
            (
                "registry:",
                "person key registry: must be followed by the registry's member id",
            ),
            (
                "cc:52123456",
                "person key must start with nuip: or registry:, got \"cc\"",
            ),
        ] {
            assert_eq!(PersonKey::parse(k).unwrap_err(), e, "{k}");
        }
        assert_eq!(
            PersonKey::parse("nuip:1023456789").unwrap().masked(),
            "nuip:*******789"
        );
    }

    #[test]
    fn stored_identities_are_checked_again() {
        let p = child();
        let json = serde_json::to_value(&p).unwrap();
        let back: PersonIdentity = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, p);
        // A stored tarjeta at age 3 is refused when read back.
        let mut bad = json;
        bad["documents"][0]["document"]["type"] = serde_json::json!("TI");
        let e = serde_json::from_value::<PersonIdentity>(bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is issued from age 7"), "{e}");
    }
}
