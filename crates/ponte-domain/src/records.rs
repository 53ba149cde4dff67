//! Input records from the three sectors and the registry, and the per-person / per-family state
//! that accumulates them.
//!
//! Every record carries a stable `record_id` (source system + source key), a monotonic `version`
//! from its source and a `retracted` flag. [`RecordSet`] applies them so that the result does not
//! depend on arrival order and replays change nothing:
//! - a higher version of the same record id replaces the stored one (a correction);
//! - a retraction is stored as a tombstone, so a late older version cannot resurrect the record;
//! - a lower version is ignored, an equal version is a duplicate.
//!
//! This module holds data only; it never decides compliance.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{Cns, Cpf, IbgeMunicipality, Inep, Nis};
use crate::period::{Date, Month, Period, Semester};

/// Family identifier as published by the registry (código familiar). Opaque to the engine.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FamilyId(pub String);

impl FamilyId {
    /// The identifier text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for FamilyId {
    fn from(s: &str) -> Self {
        FamilyId(s.to_owned())
    }
}

impl fmt::Display for FamilyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Sex as recorded in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sex {
    /// Female.
    Female,
    /// Male.
    Male,
}

/// A pregnancy declared in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Pregnancy {
    /// Expected delivery date, when known.
    pub expected_delivery: Option<Date>,
}

/// A person's registry profile: what the registry side publishes per person.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PersonProfile {
    /// Stable record id.
    pub record_id: String,
    /// Source version; higher replaces lower.
    pub version: u64,
    /// True when this event withdraws the record.
    pub retracted: bool,
    /// Beneficiary id.
    pub nis: Nis,
    /// Family id.
    pub family_id: FamilyId,
    /// Birth date.
    pub birth_date: Date,
    /// Sex.
    pub sex: Sex,
    /// Municipality of residence.
    pub municipality: IbgeMunicipality,
    /// School, if known.
    pub school: Option<Inep>,
    /// Health card numbers known for the person (a person may hold several CNS: a provisional
    /// and a definitive one, or duplicates issued over the years); every one resolves the
    /// person's health records.
    #[serde(default, deserialize_with = "one_or_many")]
    pub cns: Vec<Cns>,
    /// CPF, if known.
    pub cpf: Option<Cpf>,
    /// Pregnancy declared in the registry.
    pub pregnancy: Option<Pregnancy>,
    /// Whether the person has completed basic education (educação básica).
    pub basic_education_completed: bool,
    /// Programme markers the registry assigns (e.g. `PBF`, `PETI`); rule sets select on them.
    pub programmes: BTreeSet<String>,
}

/// Reads a list of identifiers, or one or none as profiles stored before lists were (a single
/// value or `null`).
fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        Many(Vec<T>),
        One(T),
    }
    Ok(match Option::<OneOrMany<T>>::deserialize(d)? {
        Some(OneOrMany::Many(v)) => v,
        Some(OneOrMany::One(x)) => vec![x],
        None => Vec::new(),
    })
}

/// An attendance figure for one month: either a percentage, or counts of units (days, classes
/// or hours) given and attended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attendance {
    /// Attendance percentage, 0–100, as recorded by the source.
    Percent(u8),
    /// Units given and attended in the month.
    Counts {
        /// Days, classes or hours given.
        given: u32,
        /// Days, classes or hours attended.
        attended: u32,
    },
}

/// Why an attendance figure is impossible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttendanceError {
    /// Percentage above 100.
    #[error("attendance percent must be between 0 and 100, got {0}")]
    Percent(u8),
    /// More units attended than given.
    #[error("attended ({attended}) must not exceed given ({given})")]
    Counts {
        /// Units given.
        given: u32,
        /// Units attended.
        attended: u32,
    },
}

impl Attendance {
    /// Checks the figure is possible (adapters call this before publishing).
    pub fn validate(&self) -> Result<(), AttendanceError> {
        match *self {
            Attendance::Percent(p) if p > 100 => Err(AttendanceError::Percent(p)),
            Attendance::Counts { given, attended } if attended > given => {
                Err(AttendanceError::Counts { given, attended })
            }
            _ => Ok(()),
        }
    }

    /// True when the attendance is at or above `threshold` percent.
    ///
    /// `attended × 100 / given ≥ threshold` is evaluated as `attended × 100 ≥ threshold × given`
    /// in integers, so no rounding can move a value across the threshold. A month with nothing
    /// given (holidays) places no requirement and is met.
    pub fn meets(&self, threshold: u8) -> bool {
        match *self {
            Attendance::Percent(p) => p >= threshold,
            Attendance::Counts { given, attended } => {
                u64::from(attended) * 100 >= u64::from(threshold) * u64::from(given)
            }
        }
    }

    /// The percentage, in hundredths of a percent (rounded down), when defined.
    pub fn percent_hundredths(&self) -> Option<u32> {
        match *self {
            Attendance::Percent(p) => Some(u32::from(p) * 100),
            Attendance::Counts { given: 0, .. } => None,
            Attendance::Counts { given, attended } => {
                u32::try_from(u64::from(attended) * 10_000 / u64::from(given)).ok()
            }
        }
    }
}

/// One month of school attendance for a student (Sistema Presença).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SchoolAttendanceMonth {
    /// Stable record id.
    pub record_id: String,
    /// Source version.
    pub version: u64,
    /// True when this event withdraws the record.
    pub retracted: bool,
    /// Student.
    pub nis: Nis,
    /// School that recorded the attendance, if given.
    pub inep: Option<Inep>,
    /// Month the attendance refers to.
    pub month: Month,
    /// Attendance figure.
    pub attendance: Attendance,
    /// Low-attendance reason code (motivo de baixa frequência), e.g. `1a`, `58`.
    pub reason_code: Option<String>,
}

/// One month of attendance in the SCFV service (Serviço de Convivência e Fortalecimento de
/// Vínculos), recorded by the municipality.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ScfvAttendanceMonth {
    /// Stable record id.
    pub record_id: String,
    /// Source version.
    pub version: u64,
    /// True when this event withdraws the record.
    pub retracted: bool,
    /// Child or adolescent.
    pub nis: Nis,
    /// Month the attendance refers to.
    pub month: Month,
    /// Hours given and attended (or a percentage).
    pub attendance: Attendance,
    /// Reason code for low attendance, if any.
    pub reason_code: Option<String>,
}

/// A health follow-up record (Sistema BFA / e-SUS APS), already resolved to a NIS.
///
/// Records that could not be resolved to a NIS never reach the engine; the person stays
/// `NOT_FOLLOWED` until they are.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HealthRecord {
    /// Stable record id.
    pub record_id: String,
    /// Source version.
    pub version: u64,
    /// True when this event withdraws the record.
    pub retracted: bool,
    /// Person followed.
    pub nis: Nis,
    /// Date of the follow-up (data do atendimento), when the source gave one; places the
    /// record in a period. `None` for a record filed for a whole semester only.
    pub recorded_on: Option<Date>,
    /// The semester (vigência) the record was filed for. Absent in records stored before it
    /// existed; then [`HealthRecord::semester`] derives it from `recorded_on`.
    #[serde(default)]
    pub semester: Option<Semester>,
    /// The health team's "vaccination up to date" flag, accepted as given.
    pub vaccination_up_to_date: Option<bool>,
    /// Weight, grams.
    pub weight_grams: Option<u32>,
    /// Height, millimetres.
    pub height_mm: Option<u32>,
    /// Pregnancy as seen by the health team (gestante).
    pub pregnant: Option<bool>,
    /// Date of last menstruation (DUM).
    pub last_menstruation: Option<Date>,
    /// Prenatal care recorded (pré-natal).
    pub prenatal: Option<bool>,
    /// References to FHIR Immunization resources, kept as evidence only.
    pub immunization_refs: Vec<String>,
}

impl HealthRecord {
    /// The semester the record belongs to: the one it was filed for, else the one containing
    /// its date. `None` only for a record that has neither (never built by the mapping).
    pub fn semester(&self) -> Option<Semester> {
        self.semester
            .or_else(|| self.recorded_on.map(|d| Semester::containing(d.month_of())))
    }

    /// True when the record counts for `period`: its date lies in the period, or — for a
    /// record known only by its semester — the period covers the whole semester (a
    /// semester-only record says nothing about which month of it the follow-up happened).
    pub fn counts_for(&self, period: &Period) -> bool {
        match (self.recorded_on, self.semester) {
            (Some(d), _) => period.contains(d.month_of()),
            (None, Some(s)) => {
                period.contains(s.first_day().month_of())
                    && period.contains(s.last_day().month_of())
            }
            (None, None) => false,
        }
    }
}

/// Family follow-up by social assistance (acompanhamento familiar), optionally with a request
/// to interrupt effects (interrupção temporária dos efeitos).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FamilyFollowUp {
    /// Stable record id.
    pub record_id: String,
    /// Source version.
    pub version: u64,
    /// True when this event withdraws the record.
    pub retracted: bool,
    /// Family followed.
    pub family_id: FamilyId,
    /// Start of the follow-up.
    pub started_on: Date,
    /// End of the follow-up, if it ended.
    pub ended_on: Option<Date>,
    /// When the interruption of effects was requested, if it was.
    pub interruption_requested_on: Option<Date>,
}

impl FamilyFollowUp {
    /// True when the follow-up is active on `date`.
    pub fn active_on(&self, date: Date) -> bool {
        self.started_on <= date && self.ended_on.is_none_or(|end| date <= end)
    }
}

/// Status of an appeal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppealStatus {
    /// Filed, not decided.
    Pending,
    /// Accepted: the targeted effect is removed.
    Accepted,
    /// Rejected.
    Rejected,
}

/// An appeal (recurso) against the effect of a non-compliance.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Appeal {
    /// Stable record id.
    pub record_id: String,
    /// Source version.
    pub version: u64,
    /// True when this event withdraws the record.
    pub retracted: bool,
    /// Family.
    pub family_id: FamilyId,
    /// Member whose non-compliance is appealed; `None` for every member.
    pub nis: Option<Nis>,
    /// Conditionality appealed; `None` for every conditionality.
    pub conditionality: Option<String>,
    /// Period of the non-compliance appealed.
    pub period: Period,
    /// Decision.
    pub status: AppealStatus,
}

// ---- tombstones ---------------------------------------------------------------------------
//
// A retraction needs only the record id, its version and the subject (the NIS or family id the
// record is routed by): sources send nothing else, or whatever they had. What a retraction
// leaves behind is a tombstone whose other fields have one fixed value, so that equal
// retractions are equal records whatever else the source sent with them — the state stays the
// same in any arrival order — and no half-filled field of a withdrawn record is ever parsed.
// Tombstones are never read as facts ([`RecordSet::live`] skips them).

impl PersonProfile {
    /// The tombstone of a withdrawn registry profile: the person leaves the public.
    pub fn tombstone(record_id: String, version: u64, nis: Nis) -> Self {
        PersonProfile {
            record_id,
            version,
            retracted: true,
            nis,
            family_id: FamilyId(String::new()),
            birth_date: Date::MIN,
            sex: Sex::Female,
            municipality: IbgeMunicipality::NONE,
            school: None,
            cns: Vec::new(),
            cpf: None,
            pregnancy: None,
            basic_education_completed: false,
            programmes: BTreeSet::new(),
        }
    }
}

impl SchoolAttendanceMonth {
    /// The tombstone of a withdrawn school attendance month.
    pub fn tombstone(record_id: String, version: u64, nis: Nis) -> Self {
        SchoolAttendanceMonth {
            record_id,
            version,
            retracted: true,
            nis,
            inep: None,
            month: Month::MIN,
            attendance: Attendance::Percent(0),
            reason_code: None,
        }
    }
}

impl ScfvAttendanceMonth {
    /// The tombstone of a withdrawn SCFV attendance month.
    pub fn tombstone(record_id: String, version: u64, nis: Nis) -> Self {
        ScfvAttendanceMonth {
            record_id,
            version,
            retracted: true,
            nis,
            month: Month::MIN,
            attendance: Attendance::Percent(0),
            reason_code: None,
        }
    }
}

impl HealthRecord {
    /// The tombstone of a withdrawn health record.
    pub fn tombstone(record_id: String, version: u64, nis: Nis) -> Self {
        HealthRecord {
            record_id,
            version,
            retracted: true,
            nis,
            recorded_on: None,
            semester: None,
            vaccination_up_to_date: None,
            weight_grams: None,
            height_mm: None,
            pregnant: None,
            last_menstruation: None,
            prenatal: None,
            immunization_refs: Vec::new(),
        }
    }
}

impl FamilyFollowUp {
    /// The tombstone of a withdrawn family follow-up.
    pub fn tombstone(record_id: String, version: u64, family_id: FamilyId) -> Self {
        FamilyFollowUp {
            record_id,
            version,
            retracted: true,
            family_id,
            started_on: Date::MIN,
            ended_on: None,
            interruption_requested_on: None,
        }
    }
}

impl Appeal {
    /// The tombstone of a withdrawn appeal: the effect it removed is back.
    pub fn tombstone(record_id: String, version: u64, family_id: FamilyId) -> Self {
        Appeal {
            record_id,
            version,
            retracted: true,
            family_id,
            nis: None,
            conditionality: None,
            period: Period::Month(Month::MIN),
            status: AppealStatus::Pending,
        }
    }
}

/// Access to the version fields every record carries.
pub trait Versioned {
    /// Stable record id.
    fn record_id(&self) -> &str;
    /// Source version.
    fn version(&self) -> u64;
    /// True for a retraction.
    fn retracted(&self) -> bool;
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
versioned!(
    PersonProfile,
    SchoolAttendanceMonth,
    ScfvAttendanceMonth,
    HealthRecord,
    FamilyFollowUp,
    Appeal
);

/// What applying a record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A new record id.
    Inserted,
    /// A higher version replaced the stored one.
    Replaced,
    /// A higher version retracted the record (or a retraction arrived first).
    Retracted,
    /// A lower version than stored: ignored.
    Stale,
    /// The same version and content as stored: nothing changed.
    Duplicate,
}

impl Applied {
    /// True when the state changed.
    pub fn changed(self) -> bool {
        matches!(
            self,
            Applied::Inserted | Applied::Replaced | Applied::Retracted
        )
    }
}

/// Records of one type by record id, keeping for each id the highest version seen (including
/// retractions, as tombstones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSet<T> {
    by_id: BTreeMap<String, T>,
}

impl<T> Default for RecordSet<T> {
    fn default() -> Self {
        RecordSet {
            by_id: BTreeMap::new(),
        }
    }
}

impl<T: Versioned + Ord> RecordSet<T> {
    /// Applies one record. Order independent: for every record id the result is the maximum by
    /// (version, retracted, content), whatever the order of application. Equal versions with
    /// different content should not happen (versions are monotonic at the source); if they do,
    /// the retraction wins, then the greater content, so replicas still agree.
    pub fn apply(&mut self, record: T) -> Applied {
        match self.by_id.get_mut(record.record_id()) {
            None => {
                let retracted = record.retracted();
                self.by_id.insert(record.record_id().to_owned(), record);
                if retracted {
                    Applied::Retracted
                } else {
                    Applied::Inserted
                }
            }
            Some(stored) => {
                let new_key = (record.version(), record.retracted());
                let old_key = (stored.version(), stored.retracted());
                let wins = new_key > old_key || (new_key == old_key && record > *stored);
                if !wins {
                    return if new_key == old_key {
                        Applied::Duplicate
                    } else {
                        Applied::Stale
                    };
                }
                let retracted = record.retracted();
                *stored = record;
                if retracted {
                    Applied::Retracted
                } else {
                    Applied::Replaced
                }
            }
        }
    }

    /// Live (not retracted) records, by record id.
    pub fn live(&self) -> impl Iterator<Item = &T> {
        self.by_id.values().filter(|r| !r.retracted())
    }

    /// Number of live records.
    pub fn live_len(&self) -> usize {
        self.live().count()
    }

    /// Every stored entry, tombstones included (for persistence).
    pub fn entries(&self) -> impl Iterator<Item = &T> {
        self.by_id.values()
    }

    /// Every stored entry, tombstones included, by record id, taken out of the set.
    pub fn into_entries(self) -> impl Iterator<Item = T> {
        self.by_id.into_values()
    }
}

/// A record addressed to one person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum PersonRecord {
    /// Registry profile.
    Profile(PersonProfile),
    /// School attendance month.
    School(SchoolAttendanceMonth),
    /// SCFV attendance month.
    Scfv(ScfvAttendanceMonth),
    /// Health follow-up.
    Health(HealthRecord),
}

impl PersonRecord {
    /// The person the record is about.
    pub fn nis(&self) -> Nis {
        match self {
            PersonRecord::Profile(r) => r.nis,
            PersonRecord::School(r) => r.nis,
            PersonRecord::Scfv(r) => r.nis,
            PersonRecord::Health(r) => r.nis,
        }
    }

    /// The record's id.
    pub fn record_id(&self) -> &str {
        match self {
            PersonRecord::Profile(r) => &r.record_id,
            PersonRecord::School(r) => &r.record_id,
            PersonRecord::Scfv(r) => &r.record_id,
            PersonRecord::Health(r) => &r.record_id,
        }
    }
}

/// A record was addressed to the wrong key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The record's NIS is not the state's NIS.
    #[error("record {record_id} is for NIS {found}, not for this person")]
    WrongPerson {
        /// Record id.
        record_id: String,
        /// NIS in the record (masked).
        found: String,
    },
    /// The record's family id is not the state's family id.
    #[error("record {record_id} is for family {found}, not for this family")]
    WrongFamily {
        /// Record id.
        record_id: String,
        /// Family id in the record.
        found: String,
    },
}

/// Everything known about one person (keyed by NIS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonState {
    nis: Nis,
    /// Registry profiles (normally one record id).
    pub profiles: RecordSet<PersonProfile>,
    /// School attendance months.
    pub school: RecordSet<SchoolAttendanceMonth>,
    /// SCFV attendance months.
    pub scfv: RecordSet<ScfvAttendanceMonth>,
    /// Health records.
    pub health: RecordSet<HealthRecord>,
}

impl PersonState {
    /// Empty state for `nis`.
    pub fn new(nis: Nis) -> PersonState {
        PersonState {
            nis,
            profiles: RecordSet::default(),
            school: RecordSet::default(),
            scfv: RecordSet::default(),
            health: RecordSet::default(),
        }
    }

    /// The person's NIS.
    pub fn nis(&self) -> Nis {
        self.nis
    }

    /// Applies a record addressed to this person.
    pub fn apply(&mut self, record: PersonRecord) -> Result<Applied, RecordError> {
        if record.nis() != self.nis {
            let record_id = match &record {
                PersonRecord::Profile(r) => r.record_id.clone(),
                PersonRecord::School(r) => r.record_id.clone(),
                PersonRecord::Scfv(r) => r.record_id.clone(),
                PersonRecord::Health(r) => r.record_id.clone(),
            };
            return Err(RecordError::WrongPerson {
                record_id,
                found: record.nis().masked(),
            });
        }
        Ok(match record {
            PersonRecord::Profile(r) => self.profiles.apply(r),
            PersonRecord::School(r) => self.school.apply(r),
            PersonRecord::Scfv(r) => self.scfv.apply(r),
            PersonRecord::Health(r) => self.health.apply(r),
        })
    }

    /// The current profile: the live profile with the highest (version, record id).
    pub fn profile(&self) -> Option<&PersonProfile> {
        self.profiles
            .live()
            .max_by(|a, b| (a.version, &a.record_id).cmp(&(b.version, &b.record_id)))
    }
}

/// A record addressed to one family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum FamilyRecord {
    /// Family follow-up.
    FollowUp(FamilyFollowUp),
    /// Appeal.
    Appeal(Appeal),
}

impl FamilyRecord {
    /// The family the record is about.
    pub fn family_id(&self) -> &FamilyId {
        match self {
            FamilyRecord::FollowUp(r) => &r.family_id,
            FamilyRecord::Appeal(r) => &r.family_id,
        }
    }

    /// The record's id.
    pub fn record_id(&self) -> &str {
        match self {
            FamilyRecord::FollowUp(r) => &r.record_id,
            FamilyRecord::Appeal(r) => &r.record_id,
        }
    }
}

/// Family-level assistance records (keyed by family id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyState {
    family_id: FamilyId,
    /// Family follow-ups.
    pub follow_ups: RecordSet<FamilyFollowUp>,
    /// Appeals.
    pub appeals: RecordSet<Appeal>,
}

impl FamilyState {
    /// Empty state for `family_id`.
    pub fn new(family_id: FamilyId) -> FamilyState {
        FamilyState {
            family_id,
            follow_ups: RecordSet::default(),
            appeals: RecordSet::default(),
        }
    }

    /// The family id.
    pub fn family_id(&self) -> &FamilyId {
        &self.family_id
    }

    /// Applies a record addressed to this family.
    pub fn apply(&mut self, record: FamilyRecord) -> Result<Applied, RecordError> {
        let (id, rid) = match &record {
            FamilyRecord::FollowUp(r) => (&r.family_id, &r.record_id),
            FamilyRecord::Appeal(r) => (&r.family_id, &r.record_id),
        };
        if *id != self.family_id {
            return Err(RecordError::WrongFamily {
                record_id: rid.clone(),
                found: id.to_string(),
            });
        }
        Ok(match record {
            FamilyRecord::FollowUp(r) => self.follow_ups.apply(r),
            FamilyRecord::Appeal(r) => self.appeals.apply(r),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_stored_with_one_cns_or_none_read_back_as_lists() {
        let nis = Nis::parse("26827649960").unwrap();
        let mut p = PersonProfile::tombstone("registry:1".into(), 1, nis);
        let cns = Cns::parse("700000000000005").unwrap();
        p.cns = vec![cns];
        let list = serde_json::to_value(&p).unwrap();
        assert_eq!(list["cns"], serde_json::json!(["700000000000005"]));
        for (old, want) in [
            (serde_json::json!("700000000000005"), vec![cns]),
            (serde_json::Value::Null, vec![]),
        ] {
            let mut v = list.clone();
            v["cns"] = old;
            let back: PersonProfile = serde_json::from_value(v).unwrap();
            assert_eq!(back.cns, want);
        }
        let mut v = list;
        v.as_object_mut().unwrap().remove("cns");
        assert!(
            serde_json::from_value::<PersonProfile>(v)
                .unwrap()
                .cns
                .is_empty()
        );
    }

    #[test]
    fn tombstones_are_equal_whatever_the_retraction_carried_and_read_back() {
        let nis = Nis::parse("26827649960").unwrap();
        let a = PersonProfile::tombstone("registry:1".into(), 2, nis);
        let b = PersonProfile::tombstone("registry:1".into(), 2, nis);
        assert_eq!(a, b);
        let stored = serde_json::to_string(&PersonRecord::Profile(a.clone())).unwrap();
        let back: PersonRecord = serde_json::from_str(&stored).unwrap();
        assert_eq!(back, PersonRecord::Profile(a));
        let appeal = Appeal::tombstone("appeal:F:R1".into(), 3, FamilyId::from("F"));
        let stored = serde_json::to_string(&FamilyRecord::Appeal(appeal.clone())).unwrap();
        let back: FamilyRecord = serde_json::from_str(&stored).unwrap();
        assert_eq!(back, FamilyRecord::Appeal(appeal));
        let mut family = FamilyState::new(FamilyId::from("F"));
        let _ = family.apply(FamilyRecord::Appeal(Appeal::tombstone(
            "appeal:F:R1".into(),
            3,
            FamilyId::from("F"),
        )));
        assert_eq!(family.appeals.live_len(), 0);
    }

    #[test]
    fn a_semester_only_health_record_counts_for_periods_covering_its_semester() {
        let mut r = HealthRecord::tombstone("h".into(), 1, Nis::parse("26827649960").unwrap());
        r.retracted = false;
        r.semester = Some(Semester::parse("2025-S1").unwrap());
        assert!(r.counts_for(&Period::parse("2025-S1").unwrap()));
        assert!(!r.counts_for(&Period::parse("2025-S2").unwrap()));
        // A month or a bimester inside the semester: which month is unknown, so it does not
        // count there.
        assert!(!r.counts_for(&Period::parse("2025-03").unwrap()));
        assert!(!r.counts_for(&Period::parse("2025-B2").unwrap()));
        r.recorded_on = Some(Date::parse("2025-03-10").unwrap());
        assert!(r.counts_for(&Period::parse("2025-03").unwrap()));
        assert_eq!(r.semester(), Some(Semester::parse("2025-S1").unwrap()));
        r.semester = None;
        assert_eq!(r.semester(), Some(Semester::parse("2025-S1").unwrap()));
    }

    fn rec(id: &str, version: u64, retracted: bool, pct: u8) -> SchoolAttendanceMonth {
        SchoolAttendanceMonth {
            record_id: id.to_owned(),
            version,
            retracted,
            nis: Nis::parse("26827649960").unwrap(),
            inep: None,
            month: Month::parse("2025-04").unwrap(),
            attendance: Attendance::Percent(pct),
            reason_code: None,
        }
    }

    #[test]
    fn corrections_retractions_and_stale_versions() {
        // architecture.md "Bus contract": same record id + higher version replaces; retraction
        // removes; lower version ignored; redelivery is a no-op.
        let mut s = RecordSet::default();
        assert_eq!(s.apply(rec("a", 1, false, 50)), Applied::Inserted);
        assert_eq!(s.apply(rec("a", 1, false, 50)), Applied::Duplicate);
        assert_eq!(s.apply(rec("a", 2, false, 90)), Applied::Replaced);
        assert_eq!(s.apply(rec("a", 1, false, 50)), Applied::Stale);
        assert_eq!(s.live().next().unwrap().attendance, Attendance::Percent(90));
        assert_eq!(s.apply(rec("a", 3, true, 90)), Applied::Retracted);
        assert_eq!(s.live_len(), 0);
        // A late older version does not resurrect a retracted record.
        assert_eq!(s.apply(rec("a", 2, false, 90)), Applied::Stale);
        assert_eq!(s.live_len(), 0);
    }

    #[test]
    fn attendance_threshold_is_exact() {
        // docs/rules.md, "How an outcome is decided": % = attended × 100 / given; met when at or
        // above the threshold.
        assert!(
            Attendance::Counts {
                given: 20,
                attended: 15
            }
            .meets(75)
        ); // exactly 75%
        assert!(
            !Attendance::Counts {
                given: 20,
                attended: 14
            }
            .meets(75)
        ); // 70%
        assert!(
            !Attendance::Counts {
                given: 3,
                attended: 2
            }
            .meets(67)
        ); // 66.67%
        assert!(
            Attendance::Counts {
                given: 3,
                attended: 2
            }
            .meets(66)
        );
        assert!(
            Attendance::Counts {
                given: 0,
                attended: 0
            }
            .meets(85)
        );
        assert!(Attendance::Percent(60).meets(60));
        assert!(!Attendance::Percent(59).meets(60));
        assert_eq!(
            Attendance::Counts {
                given: 3,
                attended: 2
            }
            .percent_hundredths(),
            Some(6666)
        );
        assert!(Attendance::Percent(101).validate().is_err());
        assert!(
            Attendance::Counts {
                given: 1,
                attended: 2
            }
            .validate()
            .is_err()
        );
    }
}
