//! What the engine knows about a household: the registry's profile (members with their
//! identities, geography, Sisbén group, household figures, IPM deprivations) and the evidence
//! records of every sector, each dated and signed by who recorded it.
//!
//! Records are versioned like every other record of Ponte ([`crate::records::RecordSet`]): a
//! higher version replaces, a retraction is remembered, a lower version is ignored, so the
//! state — and every evaluation of it — does not depend on the order records arrive in.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::value::{Decimal, Value};
use crate::colombia::{Divipola, PersonIdentity, PersonKey, SisbenGroup};
use crate::period::Date;
use crate::records::{Applied, RecordSet, Sex, Versioned};

/// Household identifier as the registry publishes it. Opaque to the engine.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HouseholdId(pub String);

impl From<&str> for HouseholdId {
    fn from(s: &str) -> Self {
        HouseholdId(s.to_owned())
    }
}

impl fmt::Display for HouseholdId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where the dwelling is: a municipal head, or populated centres and dispersed rural areas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Zone {
    /// Cabecera municipal.
    Urban,
    /// Centros poblados y rural disperso.
    Rural,
}

/// A member of the household as the registry lists them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Member {
    /// Identity: key, birth date, documents over time.
    pub identity: PersonIdentity,
    /// Sex, when recorded.
    pub sex: Option<Sex>,
}

impl Member {
    /// The member's key.
    pub fn key(&self) -> &PersonKey {
        self.identity.key()
    }
}

/// The registry's record of a household.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HouseholdProfile {
    /// Stable record id.
    pub record_id: String,
    /// Source version; higher replaces lower.
    pub version: u64,
    /// True when this event withdraws the record.
    pub retracted: bool,
    /// Household.
    pub household_id: HouseholdId,
    /// Municipality of residence.
    pub municipality: Divipola,
    /// Urban or rural, when known.
    pub zone: Option<Zone>,
    /// Sisbén IV group, when known (registry data; no rule set here decides on it).
    pub sisben_group: Option<SisbenGroup>,
    /// Programme markers (`UNIDOS`: linked to the strategy).
    pub programmes: BTreeSet<String>,
    /// Members.
    pub members: Vec<Member>,
    /// Household figures the registry supplies by name (`extreme_poverty_line`: the line of the
    /// household's year and domain, pesos per person per month).
    #[serde(default)]
    pub figures: BTreeMap<String, Decimal>,
    /// IPM indicators by id: `true` deprived, `false` not deprived; an indicator absent is
    /// unknown.
    #[serde(default)]
    pub ipm_deprivations: BTreeMap<String, bool>,
}

impl HouseholdProfile {
    /// The tombstone of a profile: a retraction carries only the record id and version that
    /// withdraw it (the rest is empty and never read).
    pub fn retraction(record_id: String, version: u64, household_id: HouseholdId) -> Self {
        HouseholdProfile {
            record_id,
            version,
            retracted: true,
            household_id,
            municipality: crate::colombia::Divipola::NONE,
            zone: None,
            sisben_group: None,
            programmes: BTreeSet::new(),
            members: Vec::new(),
            figures: BTreeMap::new(),
            ipm_deprivations: BTreeMap::new(),
        }
    }

    /// The member with this key.
    pub fn member(&self, key: &PersonKey) -> Option<&Member> {
        self.members.iter().find(|m| m.key() == key)
    }

    /// The member holding `document` (how a sector record that names a person by document is
    /// placed in the household).
    pub fn member_holding(&self, document: &crate::colombia::Document) -> Option<&Member> {
        self.members.iter().find(|m| m.identity.holds(document))
    }
}

/// Whom an evidence record is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// The household as a whole (housing, income, food). Written `household`.
    Household,
    /// One member, by key (`nuip:…`, `registry:…`).
    Member(PersonKey),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Household => f.write_str("household"),
            Subject::Member(k) => write!(f, "{k}"),
        }
    }
}

impl Serialize for Subject {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        if s == "household" {
            Ok(Subject::Household)
        } else {
            PersonKey::parse(&s)
                .map(Subject::Member)
                .map_err(serde::de::Error::custom)
        }
    }
}

/// A piece of evidence: what one source recorded about the household or a member on one day.
/// A visit answers many questions at once, so a record carries several items.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EvidenceRecord {
    /// Stable record id.
    pub record_id: String,
    /// Source version; higher replaces lower.
    pub version: u64,
    /// True when this event withdraws the record.
    pub retracted: bool,
    /// Household.
    pub household_id: HouseholdId,
    /// The rule set's source id (`visit`, `education`, `health`, `registry`, …).
    pub source: String,
    /// Whom it is about.
    pub subject: Subject,
    /// The day the source says the facts were recorded.
    pub recorded_on: Date,
    /// Who recorded them (a cogestor's id, a school, a health provider).
    pub recorded_by: String,
    /// Items recorded, by name.
    pub items: BTreeMap<String, Value>,
}

macro_rules! versioned {
    ($($t:ty),*) => {$(
        impl Versioned for $t {
            fn record_id(&self) -> &str { &self.record_id }
            fn version(&self) -> u64 { self.version }
            fn retracted(&self) -> bool { self.retracted }
        }
    )*};
}
versioned!(HouseholdProfile, EvidenceRecord);

/// A record addressed to one household.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum HouseholdRecord {
    /// The registry's profile.
    Profile(HouseholdProfile),
    /// Evidence from any source.
    Evidence(EvidenceRecord),
}

impl HouseholdRecord {
    /// The household the record is about.
    pub fn household_id(&self) -> &HouseholdId {
        match self {
            HouseholdRecord::Profile(r) => &r.household_id,
            HouseholdRecord::Evidence(r) => &r.household_id,
        }
    }

    /// The record's id.
    pub fn record_id(&self) -> &str {
        match self {
            HouseholdRecord::Profile(r) => &r.record_id,
            HouseholdRecord::Evidence(r) => &r.record_id,
        }
    }
}

/// A record was addressed to another household.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {record_id} is for household {found}, not for this household")]
pub struct WrongHousehold {
    /// Record id.
    pub record_id: String,
    /// Household id in the record.
    pub found: String,
}

/// Everything known about one household.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HouseholdState {
    household_id: HouseholdId,
    /// Registry profiles (normally one record id).
    pub profiles: RecordSet<HouseholdProfile>,
    /// Evidence of every source.
    pub evidence: RecordSet<EvidenceRecord>,
}

impl HouseholdState {
    /// Empty state for `household_id`.
    pub fn new(household_id: HouseholdId) -> HouseholdState {
        HouseholdState {
            household_id,
            profiles: RecordSet::default(),
            evidence: RecordSet::default(),
        }
    }

    /// The household id.
    pub fn household_id(&self) -> &HouseholdId {
        &self.household_id
    }

    /// Applies a record addressed to this household.
    pub fn apply(&mut self, record: HouseholdRecord) -> Result<Applied, WrongHousehold> {
        if *record.household_id() != self.household_id {
            return Err(WrongHousehold {
                record_id: record.record_id().to_owned(),
                found: record.household_id().to_string(),
            });
        }
        Ok(match record {
            HouseholdRecord::Profile(r) => self.profiles.apply(r),
            HouseholdRecord::Evidence(r) => self.evidence.apply(r),
        })
    }

    /// The current profile: the live profile with the highest (version, record id).
    pub fn profile(&self) -> Option<&HouseholdProfile> {
        self.profiles
            .live()
            .max_by(|a, b| (a.version, &a.record_id).cmp(&(b.version, &b.record_id)))
    }
}
