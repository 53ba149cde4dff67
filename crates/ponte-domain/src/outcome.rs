//! Public derivation and per-person outcomes.
//!
//! From a registry profile and a rule set: who must be followed in which conditionality and
//! period (the "public"); from the person's records: whether each conditionality was met, with
//! the evidence an auditor needs (records, months, threshold, band, rule-set version).
//!
//! Evaluation is a pure function of the rule set and the *set* of live records, so it does not
//! depend on the order records arrived in.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::ids::{IbgeMunicipality, Nis};
use crate::period::{Date, Month, Period, PeriodKind};
use crate::records::{Attendance, FamilyId, HealthRecord, PersonProfile, PersonState};
use crate::rules::{
    AgeReference, Band, Conditionality, EffectScope, HealthItem, Method, RuleSet, RuleSetRef,
    Selection, Source,
};

/// Outcome of one conditionality for one person in one period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// In the public, followed, requirement met.
    Compliant,
    /// In the public, followed, requirement not met.
    NonCompliant,
    /// In the public, but no record arrived: counts against follow-up rates, never as
    /// non-compliance.
    NotFollowed,
    /// Not in the public for this conditionality and period.
    NotRequired,
}

impl Status {
    /// True when the person was followed (a record arrived).
    pub fn followed(self) -> bool {
        matches!(self, Status::Compliant | Status::NonCompliant)
    }

    /// True when the person is in the public.
    pub fn in_public(self) -> bool {
        self != Status::NotRequired
    }
}

/// One attendance record considered for a month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonthEvidence {
    /// Month.
    pub month: Month,
    /// Record id.
    pub record_id: String,
    /// Record version.
    pub version: u64,
    /// Attendance as recorded.
    pub attendance: Attendance,
    /// Reason code as recorded.
    pub reason_code: Option<String>,
    /// At or above the threshold.
    pub met: bool,
    /// Below the threshold but neutralised by an exempting reason code.
    pub exempted: bool,
    /// Below the threshold with a missing or non-exempting code: social assistance should be
    /// told.
    pub signals_assistance: bool,
}

/// Health evidence for a period.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HealthEvidence {
    /// Records in the period (record id, version, date — `None` for a record filed for the
    /// whole semester without a date).
    pub records: Vec<(String, u64, Option<Date>)>,
    /// Items the matching bands require.
    pub required: Vec<HealthItem>,
    /// Required items not recorded.
    pub missing: Vec<HealthItem>,
    /// Pregnant per the registry in this period.
    pub pregnant_per_registry: bool,
    /// Pregnant per a health record in this period.
    pub pregnant_per_health: bool,
    /// Latest weight recorded, grams.
    pub weight_grams: Option<u32>,
    /// Latest height recorded, millimetres.
    pub height_mm: Option<u32>,
    /// FHIR Immunization references kept as evidence.
    pub immunization_refs: Vec<String>,
}

/// Why an outcome is what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// Date the age was computed at.
    pub reference_date: Date,
    /// Age in completed years at the reference date (`None` if born after it).
    pub age: Option<u32>,
    /// Bands of the rule set the person fell in.
    pub bands: Vec<String>,
    /// Threshold applied (monthly attendance).
    pub threshold_percent: Option<u8>,
    /// Attendance records considered (monthly attendance).
    pub months: Vec<MonthEvidence>,
    /// Months of the period below threshold without exemption.
    pub months_below: Vec<Month>,
    /// Months of the period with no record.
    pub months_missing: Vec<Month>,
    /// Health evidence (health checks).
    pub health: Option<HealthEvidence>,
    /// One sentence for a human reader.
    pub note: String,
}

impl Evidence {
    /// Evidence with the age and its reference date only: what an outcome carries where the
    /// details are not needed (or not yet known).
    pub fn bare(reference_date: Date, age: Option<u32>) -> Self {
        Evidence {
            reference_date,
            age,
            bands: Vec::new(),
            threshold_percent: None,
            months: Vec::new(),
            months_below: Vec::new(),
            months_missing: Vec::new(),
            health: None,
            note: String::new(),
        }
    }
}

/// The outcome of one conditionality for one person in one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Person.
    pub nis: Nis,
    /// Family.
    pub family_id: FamilyId,
    /// Municipality (for indicators and scoping).
    pub municipality: IbgeMunicipality,
    /// Conditionality id from the rule set.
    pub conditionality: String,
    /// Period evaluated.
    pub period: Period,
    /// Status.
    pub status: Status,
    /// Whose benefit a non-compliance affects.
    pub effects: EffectScope,
    /// Rule set used.
    pub rule_set: RuleSetRef,
    /// Evidence.
    pub evidence: Evidence,
}

/// A person must be followed in a conditionality and period (registry-based derivation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Conditionality id.
    pub conditionality: String,
    /// Period.
    pub period: Period,
    /// Bands matched.
    pub bands: Vec<String>,
    /// Whose benefit a non-compliance would affect.
    pub effects: EffectScope,
    /// Age at the reference date.
    pub age: u32,
}

/// The periods of `kind` that overlap the months `from..=to`, in order.
pub fn periods_between(kind: PeriodKind, from: Month, to: Month) -> Vec<Period> {
    let mut out: Vec<Period> = Vec::new();
    let mut m = from;
    while m <= to {
        if let Some(p) = Period::containing(kind, m)
            && out.last() != Some(&p)
        {
            out.push(p);
        }
        match m.add_months(1) {
            Ok(next) => m = next,
            Err(_) => break,
        }
    }
    out
}

fn normalise_code(code: &str) -> String {
    code.trim().to_ascii_lowercase()
}

impl RuleSet {
    fn reference_date(&self, period: &Period) -> Date {
        match self.age_reference {
            AgeReference::PeriodStart => period.first_day(),
            AgeReference::PeriodEnd => period.last_day(),
        }
    }

    /// Whether the registry declares the person pregnant at some point of `period`.
    fn registry_pregnant(&self, profile: &PersonProfile, period: &Period) -> bool {
        match &profile.pregnancy {
            None => false,
            Some(p) => match p.expected_delivery {
                // No date: the registry's flag is taken as current for any period evaluated.
                None => true,
                Some(d) => {
                    let start = d.add_days(-i64::from(self.pregnancy_days)).ok();
                    d >= period.first_day() && start.is_none_or(|s| s <= period.last_day())
                }
            },
        }
    }

    fn selects(
        &self,
        s: &Selection,
        profile: &PersonProfile,
        age: Option<u32>,
        pregnant: bool,
    ) -> bool {
        let Some(age) = age else { return false };
        s.age_min.is_none_or(|a| age >= a)
            && s.age_max_exclusive.is_none_or(|a| age < a)
            && s.sex.is_none_or(|x| x == profile.sex)
            && s.pregnant.is_none_or(|p| p == pregnant)
            && s.basic_education_completed
                .is_none_or(|b| b == profile.basic_education_completed)
            && s.member_of.iter().all(|m| profile.programmes.contains(m))
    }

    fn in_programme(&self, profile: &PersonProfile) -> bool {
        self.member_of
            .iter()
            .all(|m| profile.programmes.contains(m))
    }

    fn matching_bands<'a>(
        &self,
        c: &'a Conditionality,
        profile: &PersonProfile,
        age: Option<u32>,
        pregnant: bool,
    ) -> Vec<&'a Band> {
        if !self.in_programme(profile) {
            return Vec::new();
        }
        let mut bands = c
            .bands
            .iter()
            .filter(|b| self.selects(&b.selection, profile, age, pregnant));
        match c.method {
            // First matching band applies (bands may not overlap in age; see rules.rs).
            Method::MonthlyAttendance => bands.next().into_iter().collect(),
            Method::HealthChecks => bands.collect(),
        }
    }

    /// Who must be followed: the conditionalities and periods overlapping `from..=to` in which the
    /// registry profile puts the person in the public. Pregnancy comes from the registry only;
    /// evaluation also considers pregnancies reported by the health side.
    pub fn public(&self, profile: &PersonProfile, from: Month, to: Month) -> Vec<Assignment> {
        let mut out = Vec::new();
        for c in &self.conditionalities {
            for period in periods_between(c.period, from, to) {
                let age = profile.birth_date.age_on(self.reference_date(&period));
                let pregnant = self.registry_pregnant(profile, &period);
                let bands = self.matching_bands(c, profile, age, pregnant);
                if let (Some(age), false) = (age, bands.is_empty()) {
                    out.push(Assignment {
                        conditionality: c.id.clone(),
                        period,
                        bands: bands.iter().map(|b| b.id.clone()).collect(),
                        effects: strongest(bands.iter().map(|b| b.effects)),
                        age,
                    });
                }
            }
        }
        out
    }

    /// Evaluates every conditionality whose calendar is `period`'s for this person. Returns no
    /// outcome when the person has no live registry profile (the public is unknown).
    pub fn evaluate_person(&self, person: &PersonState, period: Period) -> Vec<Outcome> {
        let Some(profile) = person.profile() else {
            return Vec::new();
        };
        self.conditionalities
            .iter()
            .filter(|c| c.period == period.kind())
            .map(|c| self.evaluate(c, profile, person, period))
            .collect()
    }

    /// Evaluates every conditionality in every period overlapping `from..=to`.
    pub fn evaluate_person_between(
        &self,
        person: &PersonState,
        from: Month,
        to: Month,
    ) -> Vec<Outcome> {
        let Some(profile) = person.profile() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for c in &self.conditionalities {
            for period in periods_between(c.period, from, to) {
                out.push(self.evaluate(c, profile, person, period));
            }
        }
        out
    }

    /// Evaluates one conditionality for one period.
    pub fn evaluate(
        &self,
        c: &Conditionality,
        profile: &PersonProfile,
        person: &PersonState,
        period: Period,
    ) -> Outcome {
        let reference_date = self.reference_date(&period);
        let age = profile.birth_date.age_on(reference_date);
        let (status, effects, evidence) = match c.method {
            Method::MonthlyAttendance => {
                self.eval_attendance(c, profile, person, period, reference_date, age)
            }
            Method::HealthChecks => {
                self.eval_health(c, profile, person, period, reference_date, age)
            }
        };
        Outcome {
            nis: profile.nis,
            family_id: profile.family_id.clone(),
            municipality: profile.municipality,
            conditionality: c.id.clone(),
            period,
            status,
            effects,
            rule_set: self.reference(),
            evidence,
        }
    }

    fn eval_attendance(
        &self,
        c: &Conditionality,
        profile: &PersonProfile,
        person: &PersonState,
        period: Period,
        reference_date: Date,
        age: Option<u32>,
    ) -> (Status, EffectScope, Evidence) {
        let pregnant = self.registry_pregnant(profile, &period);
        let bands = self.matching_bands(c, profile, age, pregnant);
        let mut ev = Evidence {
            bands: bands.iter().map(|b| b.id.clone()).collect(),
            ..Evidence::bare(reference_date, age)
        };
        let Some((band, threshold)) = bands
            .first()
            .and_then(|b| b.threshold_percent.map(|t| (*b, t)))
        else {
            ev.note = format!("not in the public of {} for {period}", c.id);
            return (Status::NotRequired, EffectScope::None, ev);
        };
        ev.threshold_percent = Some(threshold);
        let records: Vec<(Month, &str, u64, Attendance, Option<&String>)> = match c.source {
            Source::SchoolAttendance => person
                .school
                .live()
                .filter(|r| period.contains(r.month))
                .map(|r| {
                    (
                        r.month,
                        r.record_id.as_str(),
                        r.version,
                        r.attendance,
                        r.reason_code.as_ref(),
                    )
                })
                .collect(),
            Source::ScfvAttendance => person
                .scfv
                .live()
                .filter(|r| period.contains(r.month))
                .map(|r| {
                    (
                        r.month,
                        r.record_id.as_str(),
                        r.version,
                        r.attendance,
                        r.reason_code.as_ref(),
                    )
                })
                .collect(),
            Source::Health => Vec::new(),
        };
        for (month, record_id, version, attendance, code) in records {
            let met = attendance.meets(threshold);
            let exempted = !met
                && code
                    .is_some_and(|code| c.exempting_reason_codes.contains(&normalise_code(code)));
            ev.months.push(MonthEvidence {
                month,
                record_id: record_id.to_owned(),
                version,
                attendance,
                reason_code: code.cloned(),
                met,
                exempted,
                signals_assistance: !met && !exempted,
            });
        }
        ev.months
            .sort_by(|a, b| (a.month, &a.record_id).cmp(&(b.month, &b.record_id)));
        for month in period.months() {
            let mut recs = ev.months.iter().filter(|m| m.month == month).peekable();
            if recs.peek().is_none() {
                ev.months_missing.push(month);
            } else if !recs.any(|m| m.met || m.exempted) {
                // With several records for a month (e.g. a school transfer), any record meeting
                // the threshold or exempted suffices: effects are never based on ambiguous data.
                ev.months_below.push(month);
            }
        }
        let status = if ev.months.is_empty() {
            ev.note = format!("no attendance recorded in {period}");
            Status::NotFollowed
        } else if !ev.months_below.is_empty() {
            ev.note = format!(
                "attendance below {threshold}% without exempting reason in {}",
                join(&ev.months_below)
            );
            Status::NonCompliant
        } else {
            ev.note = format!("every recorded month at or above {threshold}% or exempted");
            Status::Compliant
        };
        (status, band.effects, ev)
    }

    fn eval_health(
        &self,
        c: &Conditionality,
        profile: &PersonProfile,
        person: &PersonState,
        period: Period,
        reference_date: Date,
        age: Option<u32>,
    ) -> (Status, EffectScope, Evidence) {
        let mut records: Vec<&HealthRecord> = person
            .health
            .live()
            .filter(|r| r.counts_for(&period))
            .collect();
        // Latest last (records without a date first), deterministic whatever the arrival order.
        records.sort_by(|a, b| (a.recorded_on, &a.record_id).cmp(&(b.recorded_on, &b.record_id)));
        let pregnant_per_registry = self.registry_pregnant(profile, &period);
        let pregnant_per_health = records
            .iter()
            .any(|r| r.pregnant == Some(true) || r.prenatal == Some(true));
        let bands = self.matching_bands(
            c,
            profile,
            age,
            pregnant_per_registry || pregnant_per_health,
        );
        let mut hev = HealthEvidence {
            records: records
                .iter()
                .map(|r| (r.record_id.clone(), r.version, r.recorded_on))
                .collect(),
            pregnant_per_registry,
            pregnant_per_health,
            weight_grams: records.iter().rev().find_map(|r| r.weight_grams),
            height_mm: records.iter().rev().find_map(|r| r.height_mm),
            immunization_refs: records
                .iter()
                .flat_map(|r| r.immunization_refs.iter().cloned())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            ..HealthEvidence::default()
        };
        let mut ev = Evidence {
            bands: bands.iter().map(|b| b.id.clone()).collect(),
            ..Evidence::bare(reference_date, age)
        };
        if bands.is_empty() {
            ev.note = format!("not in the public of {} for {period}", c.id);
            ev.health = Some(hev);
            return (Status::NotRequired, EffectScope::None, ev);
        }
        let required: BTreeSet<HealthItem> = bands
            .iter()
            .flat_map(|b| b.requires.iter().copied())
            .collect();
        hev.required = required.iter().copied().collect();
        if records.is_empty() {
            ev.note = format!("no health record resolved to this person in {period}");
            ev.health = Some(hev);
            return (
                Status::NotFollowed,
                strongest(bands.iter().map(|b| b.effects)),
                ev,
            );
        }
        let has = |item: HealthItem| match item {
            HealthItem::VaccinationUpToDate => records
                .iter()
                .rev()
                .find_map(|r| r.vaccination_up_to_date)
                .unwrap_or(false),
            HealthItem::Weight => hev.weight_grams.is_some(),
            HealthItem::Height => hev.height_mm.is_some(),
            HealthItem::Prenatal => records.iter().any(|r| r.prenatal == Some(true)),
            HealthItem::LastMenstruation => records.iter().any(|r| r.last_menstruation.is_some()),
        };
        hev.missing = required.iter().copied().filter(|i| !has(*i)).collect();
        let (status, effects) = if hev.missing.is_empty() {
            ev.note = if required.is_empty() {
                "followed; nothing further required".to_owned()
            } else {
                "every required health item recorded".to_owned()
            };
            (
                Status::Compliant,
                strongest(bands.iter().map(|b| b.effects)),
            )
        } else {
            ev.note = format!("missing: {:?}", hev.missing);
            let failing = bands
                .iter()
                .filter(|b| b.requires.iter().any(|i| hev.missing.contains(i)))
                .map(|b| b.effects);
            (Status::NonCompliant, strongest(failing))
        };
        ev.health = Some(hev);
        (status, effects, ev)
    }
}

/// The widest scope: family before member before none.
fn strongest(scopes: impl Iterator<Item = EffectScope>) -> EffectScope {
    scopes.min().unwrap_or(EffectScope::None)
}

fn join(months: &[Month]) -> String {
    months
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
