//! Rule sets as data: who is monitored, thresholds, exempting reason codes, the effects ladder
//! and the indicator formulas, loaded from TOML and validated.
//!
//! The engine only knows *methods* (monthly attendance against a threshold; health checks) and
//! *calendars* (month, bimester, semester). Everything a programme decides — which
//! conditionalities exist, ages, thresholds, codes, ladders, windows, weights — is in a rule set.
//! No Bolsa Família figure may be written in Rust where a rule set can carry it.
//!
//! This module does no I/O: callers read the files and pass the text with a name for errors.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::period::{Date, PeriodKind};
use crate::records::Sex;

/// A rule set failed to load. Display: `<file>: <key>: <problem>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {key}: {problem}")]
pub struct RuleSetError {
    /// File (or other name) given by the caller.
    pub file: String,
    /// Key path inside the file (`conditionality[education].band[age-4-5].threshold_percent`),
    /// or a line/column position for syntax errors.
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

// ---------------------------------------------------------------------------------------------
// Raw TOML shape
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    rule_set: RawHeader,
    public: RawPublic,
    #[serde(default)]
    conditionality: Vec<RawConditionality>,
    effects: RawEffects,
    #[serde(default)]
    indicators: RawIndicators,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    id: String,
    programme: String,
    version: String,
    title: String,
    effective_from: String,
    effective_until: Option<String>,
    age_reference: AgeReference,
    pregnancy_days: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPublic {
    #[serde(default)]
    member_of: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConditionality {
    id: String,
    label: String,
    method: Method,
    source: Source,
    period: PeriodKind,
    repercussion_lag_months: u32,
    #[serde(default)]
    exempting_reason_codes: Vec<String>,
    #[serde(default)]
    band: Vec<RawBand>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBand {
    id: String,
    age_min: Option<u32>,
    age_max_exclusive: Option<u32>,
    sex: Option<Sex>,
    pregnant: Option<bool>,
    basic_education_completed: Option<bool>,
    #[serde(default)]
    member_of: Vec<String>,
    threshold_percent: Option<u32>,
    #[serde(default)]
    requires: Vec<HealthItem>,
    effects: EffectScope,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEffects {
    window_months: u32,
    #[serde(default)]
    step: Vec<RawStep>,
    cancellation: Option<RawCancellation>,
    interruption: Option<RawInterruption>,
    #[serde(default = "default_true")]
    accepted_appeal_removes_from_history: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: String,
    local_name: Option<String>,
    money: MoneyEffect,
    months: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCancellation {
    name: String,
    local_name: Option<String>,
    months: u32,
    counted_from: CancellationClock,
    requires_active_follow_up: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterruption {
    max_months: u32,
    advances_ladder: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIndicators {
    #[serde(default)]
    follow_up_rate: Vec<RawRate>,
    #[serde(default)]
    fator_i: Vec<RawWeight>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    name: String,
    conditionality: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeight {
    rate: String,
    weight: f64,
}

// ---------------------------------------------------------------------------------------------
// Validated rule set
// ---------------------------------------------------------------------------------------------

/// Which date of a period ages are computed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgeReference {
    /// First day of the period.
    PeriodStart,
    /// Last day of the period.
    PeriodEnd,
}

/// How a conditionality is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Each recorded month must meet the band's threshold (unless exempted by reason code).
    MonthlyAttendance,
    /// The health items the matching bands require must be recorded in the period.
    HealthChecks,
}

/// Which input records a conditionality reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// [`crate::records::SchoolAttendanceMonth`].
    SchoolAttendance,
    /// [`crate::records::ScfvAttendanceMonth`].
    ScfvAttendance,
    /// [`crate::records::HealthRecord`].
    Health,
}

/// A health item a band can require.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthItem {
    /// The health team's "vaccination up to date" flag is yes (latest record in the period).
    VaccinationUpToDate,
    /// A weight was recorded in the period.
    Weight,
    /// A height was recorded in the period.
    Height,
    /// Prenatal care was recorded in the period.
    Prenatal,
    /// The date of last menstruation (DUM) was recorded in the period.
    LastMenstruation,
}

/// Whose benefit a non-compliance affects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EffectScope {
    /// The whole family's benefit.
    Family,
    /// Only this member's own benefit component (e.g. the adolescent's variable benefit).
    Member,
    /// No effect (followed for information only).
    None,
}

/// Money effect of a ladder step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoneyEffect {
    /// No effect on money (a written alert / warning).
    None,
    /// Payment held and released later.
    Block,
    /// Payment not generated for the step's months.
    Suspend,
    /// Benefit cancelled.
    Cancel,
}

/// From when the cancellation clock runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancellationClock {
    /// From the first suspension of the current uninterrupted run of suspensions.
    SuspensionStart,
    /// From the start of the family follow-up (which must overlap a suspension).
    FollowUpStart,
}

/// Who a band selects; every given criterion must hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    /// Minimum age in completed years (inclusive).
    pub age_min: Option<u32>,
    /// Age the band ends at (exclusive).
    pub age_max_exclusive: Option<u32>,
    /// Sex.
    pub sex: Option<Sex>,
    /// Pregnancy in the period.
    pub pregnant: Option<bool>,
    /// Basic education completed.
    pub basic_education_completed: Option<bool>,
    /// Registry programme markers the person must carry.
    pub member_of: Vec<String>,
}

/// A slice of a conditionality's public with its own requirement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Band {
    /// Band id, unique within the conditionality.
    pub id: String,
    /// Who is in the band.
    pub selection: Selection,
    /// Attendance threshold (monthly attendance only), percent.
    pub threshold_percent: Option<u8>,
    /// Health items required (health checks only).
    pub requires: Vec<HealthItem>,
    /// Whose benefit a non-compliance affects.
    pub effects: EffectScope,
}

/// One conditionality of a programme.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conditionality {
    /// Id, unique within the rule set (e.g. `education`).
    pub id: String,
    /// Human label.
    pub label: String,
    /// Evaluation method.
    pub method: Method,
    /// Input records read.
    pub source: Source,
    /// Monitoring calendar.
    pub period: PeriodKind,
    /// Months between the period's last month and the month its effects are applied.
    pub repercussion_lag_months: u32,
    /// Low-attendance reason codes that neutralise a below-threshold month.
    pub exempting_reason_codes: BTreeSet<String>,
    /// Bands, in order; for monthly attendance the first matching band applies.
    pub bands: Vec<Band>,
}

/// A step of the effects ladder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Name in English (`alert`, `block`, `suspension`).
    pub name: String,
    /// Name in the programme's language (`alerta`, `bloqueio`, `suspensão`).
    pub local_name: Option<String>,
    /// Money effect.
    pub money: MoneyEffect,
    /// Months the money effect lasts.
    pub months: u32,
}

/// When a family's benefit may be cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancellationRule {
    /// Name (`cancellation`).
    pub name: String,
    /// Local name (`cancelamento`).
    pub local_name: Option<String>,
    /// Months the clock must have run.
    pub months: u32,
    /// Which clock.
    pub counted_from: CancellationClock,
    /// Whether an active family follow-up is required.
    pub requires_active_follow_up: bool,
}

/// Interruption of effects during family follow-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterruptionRule {
    /// Months after the request during which new effects are not applied.
    pub max_months: u32,
    /// Whether interrupted non-compliance still moves the family up the ladder.
    pub advances_ladder: bool,
}

/// The effects ladder and its windows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectsRule {
    /// A new non-compliance is "successive" when its reference month is at most this many months
    /// after the previous one; otherwise the ladder restarts.
    pub window_months: u32,
    /// Steps; the last one repeats.
    pub steps: Vec<Step>,
    /// Cancellation, if the programme cancels.
    pub cancellation: Option<CancellationRule>,
    /// Interruption during follow-up, if the programme allows it.
    pub interruption: Option<InterruptionRule>,
    /// Whether an accepted appeal also removes the non-compliance from the ladder history.
    pub accepted_appeal_removes_from_history: bool,
}

/// A follow-up rate computed from one conditionality (e.g. TAFE from education).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateRule {
    /// Rate name.
    pub name: String,
    /// Conditionality it is computed from.
    pub conditionality: String,
}

/// A weighted term of the Fator I formula.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightRule {
    /// Rate name (a follow-up rate, or one supplied by the caller such as TAC).
    pub rate: String,
    /// Weight.
    pub weight: f64,
}

/// Indicator formulas.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct IndicatorRules {
    /// Follow-up rates.
    pub follow_up_rates: Vec<RateRule>,
    /// Fator I terms; weights sum to 1.
    pub fator_i: Vec<WeightRule>,
}

/// A validated rule set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleSet {
    /// Id (`bolsa-familia-2023`).
    pub id: String,
    /// Programme the rule set belongs to; rule sets of one programme must not overlap in time.
    pub programme: String,
    /// Version of this rule set's text; recorded in every outcome.
    pub version: String,
    /// Title.
    pub title: String,
    /// First day in force.
    pub effective_from: Date,
    /// Last day in force, if superseded.
    pub effective_until: Option<Date>,
    /// Where ages are computed.
    pub age_reference: AgeReference,
    /// Days a pregnancy lasts when deriving it from an expected delivery date.
    pub pregnancy_days: u32,
    /// Registry markers a person must carry to be in any public.
    pub member_of: Vec<String>,
    /// Conditionalities, in order.
    pub conditionalities: Vec<Conditionality>,
    /// Effects ladder.
    pub effects: EffectsRule,
    /// Indicators.
    pub indicators: IndicatorRules,
}

/// Reference to the rule set an outcome was computed with.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RuleSetRef {
    /// Rule set id.
    pub id: String,
    /// Rule set version.
    pub version: String,
}

impl fmt::Display for RuleSetRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.version)
    }
}

struct Ctx<'a> {
    file: &'a str,
}

impl Ctx<'_> {
    fn err(&self, key: impl Into<String>, problem: impl Into<String>) -> RuleSetError {
        RuleSetError {
            file: self.file.to_owned(),
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// Deserialises a rule file, a syntax or shape error naming the file, where it is and what is
/// wrong (for every kind of rule set).
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(
    file: &str,
    text: &str,
) -> Result<T, RuleSetError> {
    toml::from_str(text).map_err(|e| RuleSetError {
        file: file.to_owned(),
        key: locate(text, e.span()),
        problem: e.message().trim().replace('\n', " "),
    })
}

/// Describes where a TOML error is: line, column and the dotted key written on that line.
fn locate(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return "(document)".to_owned();
    };
    let mut start = span.start.min(text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let before = &text[..start];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = start - line_start + 1;
    let line = text[line_start..].lines().next().unwrap_or("");
    let header = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').to_owned());
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().to_owned())
        .filter(|k| !k.is_empty() && !k.starts_with('#'));
    let path = match (header, key) {
        (Some(h), Some(k)) => format!("{h}.{k}"),
        (Some(h), None) => h,
        (None, Some(k)) => k,
        (None, None) => "(document)".to_owned(),
    };
    format!("{path} (line {line_no}, column {col})")
}

impl RuleSet {
    /// Parses and validates a rule set. `name_for_errors` (usually the file path) is the first
    /// part of every error message.
    pub fn from_toml_str(name_for_errors: &str, text: &str) -> Result<RuleSet, RuleSetError> {
        let raw: RawFile = parse_toml(name_for_errors, text)?;
        validate(
            &Ctx {
                file: name_for_errors,
            },
            raw,
        )
    }

    /// Reference recorded in outcomes.
    pub fn reference(&self) -> RuleSetRef {
        RuleSetRef {
            id: self.id.clone(),
            version: self.version.clone(),
        }
    }

    /// True when the rule set is in force on `date`.
    pub fn in_force_on(&self, date: Date) -> bool {
        self.effective_from <= date && self.effective_until.is_none_or(|u| date <= u)
    }

    /// The conditionality with this id.
    pub fn conditionality(&self, id: &str) -> Option<&Conditionality> {
        self.conditionalities.iter().find(|c| c.id == id)
    }
}

fn parse_date(ctx: &Ctx<'_>, key: &str, s: &str) -> Result<Date, RuleSetError> {
    Date::parse(s).map_err(|e| ctx.err(key, e.to_string()))
}

fn non_empty(ctx: &Ctx<'_>, key: &str, s: &str) -> Result<(), RuleSetError> {
    if s.trim().is_empty() {
        Err(ctx.err(key, "must not be empty"))
    } else {
        Ok(())
    }
}

fn validate(ctx: &Ctx<'_>, raw: RawFile) -> Result<RuleSet, RuleSetError> {
    let h = raw.rule_set;
    non_empty(ctx, "rule_set.id", &h.id)?;
    non_empty(ctx, "rule_set.programme", &h.programme)?;
    non_empty(ctx, "rule_set.version", &h.version)?;
    let effective_from = parse_date(ctx, "rule_set.effective_from", &h.effective_from)?;
    let effective_until = h
        .effective_until
        .as_deref()
        .map(|s| parse_date(ctx, "rule_set.effective_until", s))
        .transpose()?;
    if let Some(u) = effective_until
        && u < effective_from
    {
        return Err(ctx.err(
            "rule_set.effective_until",
            format!("must not be before effective_from ({effective_from}), got {u}"),
        ));
    }
    if h.pregnancy_days == 0 || h.pregnancy_days > 320 {
        return Err(ctx.err(
            "rule_set.pregnancy_days",
            format!("must be between 1 and 320, got {}", h.pregnancy_days),
        ));
    }

    if raw.conditionality.is_empty() {
        return Err(ctx.err("conditionality", "at least one conditionality is required"));
    }
    let mut ids = BTreeSet::new();
    let mut conditionalities = Vec::with_capacity(raw.conditionality.len());
    for (i, c) in raw.conditionality.into_iter().enumerate() {
        let key = format!(
            "conditionality[{}]",
            if c.id.is_empty() {
                i.to_string()
            } else {
                c.id.clone()
            }
        );
        non_empty(ctx, &format!("conditionality[{i}].id"), &c.id)?;
        if !ids.insert(c.id.clone()) {
            return Err(ctx.err(
                format!("{key}.id"),
                format!("duplicate conditionality id {:?}", c.id),
            ));
        }
        conditionalities.push(validate_conditionality(ctx, &key, c)?);
    }

    let effects = validate_effects(ctx, raw.effects)?;
    let indicators = validate_indicators(ctx, raw.indicators, &ids)?;

    Ok(RuleSet {
        id: h.id,
        programme: h.programme,
        version: h.version,
        title: h.title,
        effective_from,
        effective_until,
        age_reference: h.age_reference,
        pregnancy_days: h.pregnancy_days,
        member_of: raw.public.member_of,
        conditionalities,
        effects,
        indicators,
    })
}

fn validate_conditionality(
    ctx: &Ctx<'_>,
    key: &str,
    c: RawConditionality,
) -> Result<Conditionality, RuleSetError> {
    match (c.method, c.source) {
        (Method::MonthlyAttendance, Source::SchoolAttendance | Source::ScfvAttendance)
        | (Method::HealthChecks, Source::Health) => {}
        (m, s) => {
            return Err(ctx.err(
                format!("{key}.source"),
                format!("source {s:?} cannot be evaluated with method {m:?}"),
            ));
        }
    }
    if c.method == Method::HealthChecks && !c.exempting_reason_codes.is_empty() {
        return Err(ctx.err(
            format!("{key}.exempting_reason_codes"),
            "only monthly attendance conditionalities have reason codes",
        ));
    }
    if c.exempting_reason_codes
        .iter()
        .any(|code| code.trim().is_empty())
    {
        return Err(ctx.err(
            format!("{key}.exempting_reason_codes"),
            "must not contain an empty code",
        ));
    }
    if c.repercussion_lag_months > 24 {
        return Err(ctx.err(
            format!("{key}.repercussion_lag_months"),
            format!("must be at most 24, got {}", c.repercussion_lag_months),
        ));
    }
    if c.band.is_empty() {
        return Err(ctx.err(format!("{key}.band"), "at least one band is required"));
    }
    let mut band_ids = BTreeSet::new();
    let mut bands = Vec::with_capacity(c.band.len());
    for (j, b) in c.band.into_iter().enumerate() {
        let bkey = format!(
            "{key}.band[{}]",
            if b.id.is_empty() {
                j.to_string()
            } else {
                b.id.clone()
            }
        );
        non_empty(ctx, &format!("{key}.band[{j}].id"), &b.id)?;
        if !band_ids.insert(b.id.clone()) {
            return Err(ctx.err(
                format!("{bkey}.id"),
                format!("duplicate band id {:?}", b.id),
            ));
        }
        if let (Some(lo), Some(hi)) = (b.age_min, b.age_max_exclusive)
            && lo >= hi
        {
            return Err(ctx.err(
                format!("{bkey}.age_max_exclusive"),
                format!("must be greater than age_min ({lo}), got {hi}"),
            ));
        }
        let threshold_percent = match (c.method, b.threshold_percent) {
            (Method::MonthlyAttendance, None) => {
                return Err(ctx.err(
                    format!("{bkey}.threshold_percent"),
                    "is required for monthly attendance",
                ));
            }
            (Method::MonthlyAttendance, Some(t)) => {
                Some(u8::try_from(t).ok().filter(|t| *t <= 100).ok_or_else(|| {
                    ctx.err(
                        format!("{bkey}.threshold_percent"),
                        format!("must be between 0 and 100, got {t}"),
                    )
                })?)
            }
            (Method::HealthChecks, Some(_)) => {
                return Err(ctx.err(
                    format!("{bkey}.threshold_percent"),
                    "only monthly attendance bands have a threshold",
                ));
            }
            (Method::HealthChecks, None) => None,
        };
        if c.method == Method::MonthlyAttendance && !b.requires.is_empty() {
            return Err(ctx.err(
                format!("{bkey}.requires"),
                "only health bands require health items",
            ));
        }
        if b.requires.iter().collect::<BTreeSet<_>>().len() != b.requires.len() {
            return Err(ctx.err(format!("{bkey}.requires"), "lists an item twice"));
        }
        bands.push(Band {
            id: b.id,
            selection: Selection {
                age_min: b.age_min,
                age_max_exclusive: b.age_max_exclusive,
                sex: b.sex,
                pregnant: b.pregnant,
                basic_education_completed: b.basic_education_completed,
                member_of: b.member_of,
            },
            threshold_percent,
            requires: b.requires,
            effects: b.effects,
        });
    }
    if c.method == Method::MonthlyAttendance {
        // Overlapping age bands would make "first matching band" silently decide a threshold.
        for (x, a) in bands.iter().enumerate() {
            for b in &bands[x + 1..] {
                let (a0, a1) = (
                    a.selection.age_min.unwrap_or(0),
                    a.selection.age_max_exclusive.unwrap_or(u32::MAX),
                );
                let (b0, b1) = (
                    b.selection.age_min.unwrap_or(0),
                    b.selection.age_max_exclusive.unwrap_or(u32::MAX),
                );
                if a0 < b1 && b0 < a1 && a.selection.member_of == b.selection.member_of {
                    return Err(ctx.err(
                        format!("{key}.band[{}]", b.id),
                        format!("age range {b0}..{b1} overlaps band {:?} ({a0}..{a1})", a.id),
                    ));
                }
            }
        }
    }
    Ok(Conditionality {
        id: c.id,
        label: c.label,
        method: c.method,
        source: c.source,
        period: c.period,
        repercussion_lag_months: c.repercussion_lag_months,
        // Compared case-insensitively, without surrounding spaces (`1A` = `1a`).
        exempting_reason_codes: c
            .exempting_reason_codes
            .iter()
            .map(|code| code.trim().to_ascii_lowercase())
            .collect(),
        bands,
    })
}

fn validate_effects(ctx: &Ctx<'_>, e: RawEffects) -> Result<EffectsRule, RuleSetError> {
    if e.window_months == 0 {
        return Err(ctx.err("effects.window_months", "must be at least 1"));
    }
    if e.step.is_empty() {
        return Err(ctx.err("effects.step", "at least one ladder step is required"));
    }
    let mut steps = Vec::with_capacity(e.step.len());
    for (i, s) in e.step.into_iter().enumerate() {
        non_empty(ctx, &format!("effects.step[{i}].name"), &s.name)?;
        if s.money == MoneyEffect::Cancel {
            return Err(ctx.err(
                format!("effects.step[{i}].money"),
                "cancellation is not a ladder step; use [effects.cancellation]",
            ));
        }
        if s.money == MoneyEffect::None && s.months != 0 {
            return Err(ctx.err(
                format!("effects.step[{i}].months"),
                format!(
                    "a step without money effect lasts 0 months, got {}",
                    s.months
                ),
            ));
        }
        if s.money != MoneyEffect::None && s.months == 0 {
            return Err(ctx.err(
                format!("effects.step[{i}].months"),
                "a step with a money effect must last at least 1 month",
            ));
        }
        steps.push(Step {
            name: s.name,
            local_name: s.local_name,
            money: s.money,
            months: s.months,
        });
    }
    let cancellation = e
        .cancellation
        .map(|c| {
            non_empty(ctx, "effects.cancellation.name", &c.name)?;
            if c.months == 0 {
                return Err(ctx.err("effects.cancellation.months", "must be at least 1"));
            }
            if c.counted_from == CancellationClock::FollowUpStart && !c.requires_active_follow_up {
                return Err(ctx.err(
                    "effects.cancellation.requires_active_follow_up",
                    "must be true when counted_from = \"follow_up_start\"",
                ));
            }
            Ok(CancellationRule {
                name: c.name,
                local_name: c.local_name,
                months: c.months,
                counted_from: c.counted_from,
                requires_active_follow_up: c.requires_active_follow_up,
            })
        })
        .transpose()?;
    let interruption = e
        .interruption
        .map(|i| {
            if i.max_months == 0 {
                return Err(ctx.err("effects.interruption.max_months", "must be at least 1"));
            }
            Ok(InterruptionRule {
                max_months: i.max_months,
                advances_ladder: i.advances_ladder,
            })
        })
        .transpose()?;
    Ok(EffectsRule {
        window_months: e.window_months,
        steps,
        cancellation,
        interruption,
        accepted_appeal_removes_from_history: e.accepted_appeal_removes_from_history,
    })
}

fn validate_indicators(
    ctx: &Ctx<'_>,
    i: RawIndicators,
    conditionalities: &BTreeSet<String>,
) -> Result<IndicatorRules, RuleSetError> {
    let mut names = BTreeSet::new();
    let mut follow_up_rates = Vec::new();
    for r in i.follow_up_rate {
        let key = format!("indicators.follow_up_rate[{}]", r.name);
        non_empty(ctx, "indicators.follow_up_rate.name", &r.name)?;
        if !names.insert(r.name.clone()) {
            return Err(ctx.err(format!("{key}.name"), "duplicate rate name"));
        }
        if !conditionalities.contains(&r.conditionality) {
            return Err(ctx.err(
                format!("{key}.conditionality"),
                format!("no conditionality with id {:?}", r.conditionality),
            ));
        }
        follow_up_rates.push(RateRule {
            name: r.name,
            conditionality: r.conditionality,
        });
    }
    let mut fator_i = Vec::new();
    let mut sum = 0.0;
    let mut seen = BTreeSet::new();
    for w in i.fator_i {
        let key = format!("indicators.fator_i[{}].weight", w.rate);
        if !w.weight.is_finite() || w.weight < 0.0 {
            return Err(ctx.err(
                key,
                format!("must be a non-negative number, got {}", w.weight),
            ));
        }
        if !seen.insert(w.rate.clone()) {
            return Err(ctx.err(
                format!("indicators.fator_i[{}].rate", w.rate),
                "duplicate rate",
            ));
        }
        sum += w.weight;
        fator_i.push(WeightRule {
            rate: w.rate,
            weight: w.weight,
        });
    }
    if !fator_i.is_empty() && (sum - 1.0).abs() > 1e-9 {
        return Err(ctx.err(
            "indicators.fator_i",
            format!("weights must sum to 1, got {sum}"),
        ));
    }
    Ok(IndicatorRules {
        follow_up_rates,
        fator_i,
    })
}

/// Several rule sets, selected by programme and effective date.
#[derive(Debug, Clone, Default)]
pub struct RuleBook {
    sets: Vec<RuleSet>,
}

impl RuleBook {
    /// Builds a book, rejecting two rule sets of one programme in force on the same day.
    pub fn new(sets: Vec<RuleSet>) -> Result<RuleBook, RuleSetError> {
        for (i, a) in sets.iter().enumerate() {
            for b in &sets[i + 1..] {
                if a.programme != b.programme {
                    continue;
                }
                let a_end = a.effective_until.unwrap_or(Date::MAX);
                let b_end = b.effective_until.unwrap_or(Date::MAX);
                if a.effective_from <= b_end && b.effective_from <= a_end {
                    return Err(RuleSetError {
                        file: b.id.clone(),
                        key: "rule_set.effective_from".to_owned(),
                        problem: format!(
                            "in force at the same time as rule set {:?} of programme {:?}",
                            a.id, a.programme
                        ),
                    });
                }
            }
        }
        Ok(RuleBook { sets })
    }

    /// The rule set of `programme` in force on `date`.
    pub fn select(&self, programme: &str, date: Date) -> Option<&RuleSet> {
        self.sets
            .iter()
            .find(|s| s.programme == programme && s.in_force_on(date))
    }

    /// All rule sets.
    pub fn sets(&self) -> &[RuleSet] {
        &self.sets
    }
}
