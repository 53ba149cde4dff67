//! Household-achievement rule sets as data: the achievements a programme follows, who in the
//! household each concerns, which evidence of which source establishes it, and the exit
//! criteria — loaded from TOML and validated, with errors of the form `<file>: <key>: <problem>`
//! as for conditionality rule sets ([`crate::rules`]).
//!
//! The engine knows *how* to read evidence (value lists, comparisons with a threshold or a
//! household figure), *how* members' states make the household's (every applicable member, any
//! member, a count) and *which kinds* of exit criterion exist (an achievement reached, weighted
//! deprivations below a cut-off, prerequisite achievements). Which achievements, items, ages,
//! thresholds and weights exist is the file's business. The format is described in
//! `docs/rules.md`, "Household-achievement rule sets".

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::household::Zone;
use super::value::{Decimal, Value};
use crate::period::Date;
use crate::records::Sex;
use crate::rules::{RuleSetError, RuleSetRef, parse_toml};

// ---------------------------------------------------------------------------------------------
// Raw TOML shape
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    rule_set: RawHeader,
    public: RawPublic,
    states: RawStates,
    #[serde(default)]
    dimension: Vec<RawDimension>,
    #[serde(default)]
    source: Vec<RawSource>,
    #[serde(default)]
    achievement: Vec<RawAchievement>,
    exit: RawExit,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    id: String,
    programme: String,
    version: String,
    title: String,
    country: String,
    status: Status,
    effective_from: String,
    effective_until: Option<String>,
    age_reference: AgeReference,
    evidence_max_age_months: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPublic {
    #[serde(default)]
    household_member_of: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStates {
    reached: Vec<String>,
    not_reached: Vec<String>,
    not_applicable: Vec<String>,
    unknown: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDimension {
    id: String,
    label: String,
    local_label: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    id: String,
    sector: Sector,
    adapter: Adapter,
    carries: String,
    #[serde(default)]
    items: Vec<String>,
    #[serde(default)]
    derived_items: Vec<DerivedItem>,
    #[serde(default)]
    figures: Vec<String>,
    #[serde(default)]
    recorded_states: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAchievement {
    id: String,
    number: u32,
    label: String,
    dimension: String,
    concerns: Concerns,
    age_min: Option<u32>,
    age_max_exclusive: Option<u32>,
    sex: Option<Sex>,
    has_disability: Option<bool>,
    at_nutritional_risk: Option<bool>,
    completed_secondary: Option<bool>,
    household_rule: Option<RawHouseholdRule>,
    prerequisite: bool,
    ipm_indicator: Option<String>,
    basis: Basis,
    #[serde(default)]
    evidence: Vec<RawEvidence>,
    #[serde(default)]
    thresholds: BTreeMap<String, RawThreshold>,
    count: Option<RawCount>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawHouseholdRule {
    AllApplicable,
    AnyMember,
    Count,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvidence {
    source: String,
    item: String,
    zone: Option<Zone>,
    #[serde(default)]
    reached: Vec<Value>,
    #[serde(default)]
    not_reached: Vec<Value>,
    #[serde(default)]
    not_applicable: Vec<Value>,
    compare: Option<String>,
    reached_when: Option<Direction>,
    recorded_after: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawThreshold {
    Fixed(Decimal),
    ByMinors(RawByMinors),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawByMinors {
    adults_only: Decimal,
    with_minors: Decimal,
    minors_under: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCount {
    all_reached_up_to: u32,
    min_reached_above: u32,
    every_member_under: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExit {
    name: String,
    local_name: Option<String>,
    requires: Vec<CriterionKind>,
    income: Option<RawIncome>,
    ipm: Option<RawIpm>,
    prerequisites: Option<RawPrerequisites>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIncome {
    achievement: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIpm {
    cutoff: Decimal,
    #[serde(default)]
    indicator: Vec<RawIpmIndicator>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIpmIndicator {
    id: String,
    dimension: String,
    weight: Decimal,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrerequisites {
    achievements: Vec<String>,
    not_applicable_counts_as_reached: bool,
}

// ---------------------------------------------------------------------------------------------
// Validated rule set
// ---------------------------------------------------------------------------------------------

/// How settled a rule set's content is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Parts rest on assumptions still to be checked against the programme's documents.
    Draft,
    /// Checked against the programme's documents.
    Final,
}

/// The day ages are computed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgeReference {
    /// The day the household is evaluated.
    EvaluationDate,
}

/// The kind of system a source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sector {
    /// A household or programme register.
    Registry,
    /// Social assistance (the social workers' visits).
    Assistance,
    /// The education sector.
    Education,
    /// The health sector.
    Health,
}

/// The Ponte adapter a source's records arrive through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Adapter {
    /// Assistance adapter.
    Assistance,
    /// Education adapter.
    Education,
    /// Health adapter.
    Health,
}

/// An item the engine computes itself from the registry's profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DerivedItem {
    /// Whether the member holds the identity document meant for their age on the evaluation
    /// day: `expected_document`, `document_not_for_age` or `no_document`
    /// ([`crate::colombia::PersonIdentity::document_for_age`]).
    IdentityDocumentForAge,
}

impl DerivedItem {
    /// The item's name in rule files.
    pub fn name(self) -> &'static str {
        match self {
            DerivedItem::IdentityDocumentForAge => "identity_document_for_age",
        }
    }
}

/// Where evidence comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceSource {
    /// Id, used by records and by achievements.
    pub id: String,
    /// Kind of system.
    pub sector: Sector,
    /// Adapter its records arrive through.
    pub adapter: Adapter,
    /// What it carries, for a human reader.
    pub carries: String,
    /// Items its records carry.
    pub items: BTreeSet<String>,
    /// Items the engine derives for it from the registry's profile.
    pub derived_items: BTreeSet<DerivedItem>,
    /// Household figures it supplies on the registry's profile.
    pub figures: BTreeSet<String>,
    /// Its records may carry an achievement's state as recorded in the field, under the item
    /// `achievement:<id>`, with a name of `[states]`.
    pub recorded_states: bool,
}

/// The four states of an achievement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AchievementState {
    /// Reached.
    Reached,
    /// Not reached (on evidence saying so).
    NotReached,
    /// Does not concern the household or member.
    NotApplicable,
    /// Not known: no evidence in time, or evidence that does not decide.
    Unknown,
}

/// The names the programme's information system gives the states.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateNames {
    /// Names meaning reached.
    pub reached: Vec<String>,
    /// Names meaning not reached.
    pub not_reached: Vec<String>,
    /// Names meaning not applicable.
    pub not_applicable: Vec<String>,
    /// Names meaning unknown.
    pub unknown: Vec<String>,
}

impl StateNames {
    /// The state a name means (`Unknown` for an unknown name too).
    pub fn state_of(&self, name: &str) -> AchievementState {
        let name = name.trim();
        let is = |list: &[String]| list.iter().any(|n| n.eq_ignore_ascii_case(name));
        if is(&self.reached) {
            AchievementState::Reached
        } else if is(&self.not_reached) {
            AchievementState::NotReached
        } else if is(&self.not_applicable) {
            AchievementState::NotApplicable
        } else {
            AchievementState::Unknown
        }
    }
}

/// A family dimension achievements belong to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dimension {
    /// Id.
    pub id: String,
    /// Label.
    pub label: String,
    /// Label in the programme's language.
    pub local_label: Option<String>,
}

/// Whom an achievement concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Concerns {
    /// The household as a whole.
    Household,
    /// Every member.
    EachMember,
    /// The members the selector picks.
    Members,
}

/// Which members an achievement concerns; every given criterion must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemberSelector {
    /// Minimum age in completed years (inclusive).
    pub age_min: Option<u32>,
    /// Age the selection ends at (exclusive).
    pub age_max_exclusive: Option<u32>,
    /// Sex.
    pub sex: Option<Sex>,
    /// Facts about the member, read from evidence items of the same name (`has_disability`,
    /// `at_nutritional_risk`, `completed_secondary`), with the value required.
    pub facts: Vec<(String, bool)>,
}

impl MemberSelector {
    fn is_empty(&self) -> bool {
        self.age_min.is_none()
            && self.age_max_exclusive.is_none()
            && self.sex.is_none()
            && self.facts.is_empty()
    }
}

/// The household rule `count`: reached when enough of the concerned members are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountRule {
    /// With this many concerned members or fewer, all must be reached.
    pub all_reached_up_to: u32,
    /// With more, at least this many.
    pub min_reached_above: u32,
    /// Any concerned member under this age not reached leaves the household not reached.
    pub every_member_under: Option<u32>,
}

/// How members' states make the household's (decision U10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "rule")]
pub enum HouseholdRule {
    /// Reached when every applicable member is; not reached when one is not.
    AllApplicable,
    /// Reached when one applicable member is.
    AnyMember,
    /// Reached when enough applicable members are.
    Count(CountRule),
}

/// Whether an achievement's definition was read in the sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// Read in the sources.
    Observed,
    /// Not found; Ponte's proposal.
    Assumed,
}

/// Direction of a comparison that makes an achievement reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// value < reference.
    Below,
    /// value ≤ reference.
    AtOrBelow,
    /// value ≥ reference.
    AtOrAbove,
    /// value > reference.
    Above,
}

impl Direction {
    /// Whether `value` is reached against `reference`.
    pub fn holds(self, value: Decimal, reference: Decimal) -> bool {
        match self {
            Direction::Below => value < reference,
            Direction::AtOrBelow => value <= reference,
            Direction::AtOrAbove => value >= reference,
            Direction::Above => value > reference,
        }
    }
}

/// A number evidence is compared with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Threshold {
    /// One value.
    Fixed(Decimal),
    /// One value for households of adults only, another for households with members under
    /// `minors_under`.
    ByMinors {
        /// Households of adults only.
        adults_only: Decimal,
        /// Households with minors.
        with_minors: Decimal,
        /// Age under which a member is a minor.
        minors_under: u32,
    },
}

/// What a numeric item is compared with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reference {
    /// A threshold of the achievement.
    Threshold(Threshold),
    /// A household figure the registry supplies.
    Figure,
}

/// A comparison of a numeric item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comparison {
    /// Name of the threshold or figure.
    pub name: String,
    /// What it is.
    pub reference: Reference,
    /// Direction that is reached.
    pub reached_when: Direction,
}

/// One way of establishing an achievement's state, in order of preference (decision U11).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceRule {
    /// Source id.
    pub source: String,
    /// The item read; `None` for the rule that reads only states recorded in the field.
    pub item: Option<String>,
    /// Only for households in this zone.
    pub zone: Option<Zone>,
    /// Values meaning reached.
    pub reached: Vec<Value>,
    /// Values meaning not reached.
    pub not_reached: Vec<Value>,
    /// Values taking the member or household out of the achievement.
    pub not_applicable: Vec<Value>,
    /// Comparison of a numeric value.
    pub compare: Option<Comparison>,
    /// Only records dated on or after the record establishing this selector fact count.
    pub recorded_after: Option<String>,
    /// The item under which the source records the achievement's state in the field, if it
    /// does (`achievement:<id>`).
    pub recorded_state_item: Option<String>,
}

/// One achievement (logro).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Achievement {
    /// Id (`L07`).
    pub id: String,
    /// Number in the programme's list.
    pub number: u32,
    /// Label in the programme's language.
    pub label: String,
    /// Dimension id.
    pub dimension: String,
    /// Whom it concerns.
    pub concerns: Concerns,
    /// Which members (`concerns = members`).
    pub selector: MemberSelector,
    /// How members make the household (`None` for household achievements).
    pub household_rule: Option<HouseholdRule>,
    /// A prerequisite for leaving.
    pub prerequisite: bool,
    /// The IPM indicator it mirrors.
    pub ipm_indicator: Option<String>,
    /// Whether its definition was found.
    pub basis: Basis,
    /// Evidence rules in order of preference; a source recording states in the field comes
    /// last when the file names no rule of it.
    pub evidence: Vec<EvidenceRule>,
}

/// A kind of exit criterion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CriterionKind {
    /// Out of extreme income poverty: an achievement reached.
    Income,
    /// Out of multidimensional poverty: weighted deprivations below the cut-off.
    Ipm,
    /// The prerequisite achievements reached.
    Prerequisites,
}

/// An IPM indicator with its weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpmIndicator {
    /// Id.
    pub id: String,
    /// IPM dimension.
    pub dimension: String,
    /// Weight; the weights sum to 1.
    pub weight: Decimal,
}

/// Out of multidimensional poverty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpmCriterion {
    /// Poor at or above this weighted sum.
    pub cutoff: Decimal,
    /// Indicators.
    pub indicators: Vec<IpmIndicator>,
}

/// The prerequisite achievements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrerequisitesCriterion {
    /// Achievement ids.
    pub achievements: Vec<String>,
    /// A prerequisite that does not apply counts as reached.
    pub not_applicable_counts_as_reached: bool,
}

/// The exit test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRule {
    /// Name (`promotion`).
    pub name: String,
    /// Local name (`promoción`).
    pub local_name: Option<String>,
    /// Criteria that must all hold, in order.
    pub requires: Vec<CriterionKind>,
    /// The achievement whose being reached means out of extreme income poverty.
    pub income_achievement: Option<String>,
    /// Out of multidimensional poverty.
    pub ipm: Option<IpmCriterion>,
    /// Prerequisites.
    pub prerequisites: Option<PrerequisitesCriterion>,
}

/// A validated household-achievement rule set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AchievementRuleSet {
    /// Id (`unidos-2021`).
    pub id: String,
    /// Programme.
    pub programme: String,
    /// Version of the file's content.
    pub version: String,
    /// Title.
    pub title: String,
    /// ISO country code.
    pub country: String,
    /// Draft or final.
    pub status: Status,
    /// First day in force.
    pub effective_from: Date,
    /// Last day in force.
    pub effective_until: Option<Date>,
    /// Where ages are computed.
    pub age_reference: AgeReference,
    /// Evidence older than this many months before the evaluation day is ignored.
    pub evidence_max_age_months: u32,
    /// Registry markers a household must carry to be evaluated.
    pub household_member_of: Vec<String>,
    /// Names of the states.
    pub states: StateNames,
    /// Dimensions.
    pub dimensions: Vec<Dimension>,
    /// Sources.
    pub sources: Vec<EvidenceSource>,
    /// Achievements, in the file's order.
    pub achievements: Vec<Achievement>,
    /// Exit test.
    pub exit: ExitRule,
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

    fn non_empty(&self, key: &str, s: &str) -> Result<(), RuleSetError> {
        if s.trim().is_empty() {
            Err(self.err(key, "must not be empty"))
        } else {
            Ok(())
        }
    }

    fn date(&self, key: &str, s: &str) -> Result<Date, RuleSetError> {
        Date::parse(s).map_err(|e| self.err(key, e.to_string()))
    }

    fn unique<'s>(
        &self,
        key: &str,
        what: &str,
        names: impl IntoIterator<Item = &'s String>,
    ) -> Result<(), RuleSetError> {
        let mut seen = BTreeSet::new();
        for n in names {
            self.non_empty(key, n)?;
            if !seen.insert(n) {
                return Err(self.err(key, format!("duplicate {what} {n:?}")));
            }
        }
        Ok(())
    }
}

impl AchievementRuleSet {
    /// Parses and validates a rule set. `name_for_errors` (usually the file path) is the first
    /// part of every error message.
    pub fn from_toml_str(
        name_for_errors: &str,
        text: &str,
    ) -> Result<AchievementRuleSet, RuleSetError> {
        let raw: RawFile = parse_toml(name_for_errors, text)?;
        validate(
            &Ctx {
                file: name_for_errors,
            },
            raw,
        )
    }

    /// Reference recorded in evaluations.
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

    /// The achievement with this id.
    pub fn achievement(&self, id: &str) -> Option<&Achievement> {
        self.achievements.iter().find(|a| a.id == id)
    }

    /// The source with this id.
    pub fn source(&self, id: &str) -> Option<&EvidenceSource> {
        self.sources.iter().find(|s| s.id == id)
    }
}

fn validate(ctx: &Ctx<'_>, raw: RawFile) -> Result<AchievementRuleSet, RuleSetError> {
    let h = raw.rule_set;
    ctx.non_empty("rule_set.id", &h.id)?;
    ctx.non_empty("rule_set.programme", &h.programme)?;
    ctx.non_empty("rule_set.version", &h.version)?;
    if h.country.len() != 2 || !h.country.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ctx.err(
            "rule_set.country",
            format!(
                "must be a two-letter ISO country code such as \"CO\", got {:?}",
                h.country
            ),
        ));
    }
    let effective_from = ctx.date("rule_set.effective_from", &h.effective_from)?;
    let effective_until = h
        .effective_until
        .as_deref()
        .map(|s| ctx.date("rule_set.effective_until", s))
        .transpose()?;
    if let Some(u) = effective_until
        && u < effective_from
    {
        return Err(ctx.err(
            "rule_set.effective_until",
            format!("must not be before effective_from ({effective_from}), got {u}"),
        ));
    }
    if !(1..=120).contains(&h.evidence_max_age_months) {
        return Err(ctx.err(
            "rule_set.evidence_max_age_months",
            format!(
                "must be between 1 and 120, got {}",
                h.evidence_max_age_months
            ),
        ));
    }

    let states = validate_states(ctx, raw.states)?;

    ctx.unique(
        "dimension.id",
        "dimension id",
        raw.dimension.iter().map(|d| &d.id),
    )?;
    let dimensions: Vec<Dimension> = raw
        .dimension
        .into_iter()
        .map(|d| Dimension {
            id: d.id,
            label: d.label,
            local_label: d.local_label,
        })
        .collect();

    ctx.unique("source.id", "source id", raw.source.iter().map(|s| &s.id))?;
    let mut sources = Vec::with_capacity(raw.source.len());
    for s in raw.source {
        let key = format!("source[{}]", s.id);
        ctx.unique(&format!("{key}.items"), "item", &s.items)?;
        ctx.unique(&format!("{key}.figures"), "figure", &s.figures)?;
        if let Some(clash) = s
            .derived_items
            .iter()
            .find(|d| s.items.iter().any(|i| i == d.name()))
        {
            return Err(ctx.err(
                format!("{key}.items"),
                format!(
                    "{:?} is derived by the engine and cannot also be carried by records",
                    clash.name()
                ),
            ));
        }
        sources.push(EvidenceSource {
            id: s.id,
            sector: s.sector,
            adapter: s.adapter,
            carries: s.carries,
            items: s.items.into_iter().collect(),
            derived_items: s.derived_items.into_iter().collect(),
            figures: s.figures.into_iter().collect(),
            recorded_states: s.recorded_states,
        });
    }

    if raw.achievement.is_empty() {
        return Err(ctx.err("achievement", "at least one achievement is required"));
    }
    ctx.unique(
        "achievement.id",
        "achievement id",
        raw.achievement.iter().map(|a| &a.id),
    )?;
    let mut numbers = BTreeSet::new();
    let ipm_ids: Option<BTreeSet<&String>> = raw
        .exit
        .ipm
        .as_ref()
        .map(|i| i.indicator.iter().map(|x| &x.id).collect());
    let mut achievements = Vec::with_capacity(raw.achievement.len());
    for a in raw.achievement {
        let key = format!("achievement[{}]", a.id);
        if !numbers.insert(a.number) {
            return Err(ctx.err(
                format!("{key}.number"),
                format!("duplicate achievement number {}", a.number),
            ));
        }
        if !dimensions.iter().any(|d| d.id == a.dimension) {
            return Err(ctx.err(
                format!("{key}.dimension"),
                format!("no dimension with id {:?}", a.dimension),
            ));
        }
        if let Some(ind) = &a.ipm_indicator {
            match &ipm_ids {
                None => {
                    return Err(ctx.err(
                        format!("{key}.ipm_indicator"),
                        "the exit test has no [exit.ipm] indicators to mirror",
                    ));
                }
                Some(ids) if !ids.contains(ind) => {
                    return Err(ctx.err(
                        format!("{key}.ipm_indicator"),
                        format!("no [[exit.ipm.indicator]] with id {ind:?}"),
                    ));
                }
                Some(_) => {}
            }
        }
        achievements.push(validate_achievement(ctx, &key, a, &sources)?);
    }

    let exit = validate_exit(ctx, raw.exit, &achievements)?;

    Ok(AchievementRuleSet {
        id: h.id,
        programme: h.programme,
        version: h.version,
        title: h.title,
        country: h.country,
        status: h.status,
        effective_from,
        effective_until,
        age_reference: h.age_reference,
        evidence_max_age_months: h.evidence_max_age_months,
        household_member_of: raw.public.household_member_of,
        states,
        dimensions,
        sources,
        achievements,
        exit,
    })
}

fn validate_states(ctx: &Ctx<'_>, s: RawStates) -> Result<StateNames, RuleSetError> {
    let mut seen = BTreeSet::new();
    for (list, names) in [
        ("reached", &s.reached),
        ("not_reached", &s.not_reached),
        ("not_applicable", &s.not_applicable),
        ("unknown", &s.unknown),
    ] {
        if names.is_empty() && list != "unknown" {
            return Err(ctx.err(format!("states.{list}"), "must name at least one state"));
        }
        for n in names {
            ctx.non_empty(&format!("states.{list}"), n)?;
            if !seen.insert(n.trim().to_ascii_uppercase()) {
                return Err(ctx.err(format!("states.{list}"), format!("{n:?} is listed twice")));
            }
        }
    }
    Ok(StateNames {
        reached: s.reached,
        not_reached: s.not_reached,
        not_applicable: s.not_applicable,
        unknown: s.unknown,
    })
}

fn validate_achievement(
    ctx: &Ctx<'_>,
    key: &str,
    a: RawAchievement,
    sources: &[EvidenceSource],
) -> Result<Achievement, RuleSetError> {
    ctx.non_empty(&format!("{key}.label"), &a.label)?;
    let mut facts = Vec::new();
    for (name, value) in [
        ("has_disability", a.has_disability),
        ("at_nutritional_risk", a.at_nutritional_risk),
        ("completed_secondary", a.completed_secondary),
    ] {
        if let Some(v) = value {
            if !sources.iter().any(|s| s.items.contains(name)) {
                return Err(ctx.err(
                    format!("{key}.{name}"),
                    format!("no [[source]] carries the item {name:?} this selection reads"),
                ));
            }
            facts.push((name.to_owned(), v));
        }
    }
    let selector = MemberSelector {
        age_min: a.age_min,
        age_max_exclusive: a.age_max_exclusive,
        sex: a.sex,
        facts,
    };
    if let (Some(lo), Some(hi)) = (a.age_min, a.age_max_exclusive)
        && lo >= hi
    {
        return Err(ctx.err(
            format!("{key}.age_max_exclusive"),
            format!("must be greater than age_min ({lo}), got {hi}"),
        ));
    }
    match a.concerns {
        Concerns::Household | Concerns::EachMember if !selector.is_empty() => {
            return Err(ctx.err(
                format!("{key}.concerns"),
                "member selection keys (ages, sex, facts) need concerns = \"members\"",
            ));
        }
        Concerns::Members if selector.is_empty() => {
            return Err(ctx.err(
                format!("{key}.concerns"),
                "concerns = \"members\" needs at least one selection key; use \"each_member\" for everyone",
            ));
        }
        _ => {}
    }
    let household_rule = match (a.concerns, a.household_rule, a.count) {
        (Concerns::Household, None, None) => None,
        (Concerns::Household, Some(_), _) => {
            return Err(ctx.err(
                format!("{key}.household_rule"),
                "a household achievement has no household rule",
            ));
        }
        (Concerns::Household, None, Some(_)) => {
            return Err(ctx.err(
                format!("{key}.count"),
                "a household achievement has no household rule to count with",
            ));
        }
        (_, None, _) => {
            return Err(ctx.err(
                format!("{key}.household_rule"),
                "is required for an achievement that concerns members",
            ));
        }
        (_, Some(RawHouseholdRule::Count), Some(c)) => {
            if c.min_reached_above == 0 || c.min_reached_above > c.all_reached_up_to + 1 {
                return Err(ctx.err(
                    format!("{key}.count.min_reached_above"),
                    format!(
                        "must be between 1 and all_reached_up_to + 1 ({}), got {}",
                        c.all_reached_up_to + 1,
                        c.min_reached_above
                    ),
                ));
            }
            Some(HouseholdRule::Count(CountRule {
                all_reached_up_to: c.all_reached_up_to,
                min_reached_above: c.min_reached_above,
                every_member_under: c.every_member_under,
            }))
        }
        (_, Some(RawHouseholdRule::Count), None) => {
            return Err(ctx.err(
                format!("{key}.count"),
                "household_rule = \"count\" needs an [achievement.count] table",
            ));
        }
        (_, Some(_), Some(_)) => {
            return Err(ctx.err(
                format!("{key}.count"),
                "only household_rule = \"count\" takes an [achievement.count] table",
            ));
        }
        (_, Some(RawHouseholdRule::AllApplicable), None) => Some(HouseholdRule::AllApplicable),
        (_, Some(RawHouseholdRule::AnyMember), None) => Some(HouseholdRule::AnyMember),
    };

    if a.evidence.is_empty() {
        return Err(ctx.err(
            format!("{key}.evidence"),
            "at least one [[achievement.evidence]] is required",
        ));
    }
    let mut thresholds_used = BTreeSet::new();
    let mut evidence = Vec::with_capacity(a.evidence.len() + 1);
    for (i, e) in a.evidence.into_iter().enumerate() {
        let ekey = format!("{key}.evidence[{i}]");
        let Some(source) = sources.iter().find(|s| s.id == e.source) else {
            return Err(ctx.err(
                format!("{ekey}.source"),
                format!("no [[source]] with id {:?}", e.source),
            ));
        };
        let derived = source.derived_items.iter().any(|d| d.name() == e.item);
        if !derived && !source.items.contains(&e.item) {
            return Err(ctx.err(
                format!("{ekey}.item"),
                format!(
                    "source {:?} does not carry the item {:?} (add it to its items)",
                    source.id, e.item
                ),
            ));
        }
        if a.concerns == Concerns::Household && derived {
            return Err(ctx.err(
                format!("{ekey}.item"),
                format!("{:?} is a member's item, not a household's", e.item),
            ));
        }
        let mut seen = BTreeSet::new();
        for v in e
            .reached
            .iter()
            .chain(&e.not_reached)
            .chain(&e.not_applicable)
        {
            if !seen.insert(v) {
                return Err(ctx.err(ekey.clone(), format!("the value {v} is listed twice")));
            }
        }
        let compare = match (e.compare, e.reached_when) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(ctx.err(format!("{ekey}.reached_when"), "is required with compare"));
            }
            (None, Some(_)) => {
                return Err(ctx.err(
                    format!("{ekey}.compare"),
                    "reached_when needs compare (a threshold or a figure to compare with)",
                ));
            }
            (Some(name), Some(reached_when)) => {
                let reference = if let Some(t) = a.thresholds.get(&name) {
                    thresholds_used.insert(name.clone());
                    Reference::Threshold(match t {
                        RawThreshold::Fixed(x) => Threshold::Fixed(*x),
                        RawThreshold::ByMinors(b) => Threshold::ByMinors {
                            adults_only: b.adults_only,
                            with_minors: b.with_minors,
                            minors_under: b.minors_under,
                        },
                    })
                } else if sources.iter().any(|s| s.figures.contains(&name)) {
                    Reference::Figure
                } else {
                    return Err(ctx.err(
                        format!("{ekey}.compare"),
                        format!(
                            "{name:?} is neither a key of [achievement.thresholds] nor a figure a [[source]] supplies"
                        ),
                    ));
                };
                Some(Comparison {
                    name,
                    reference,
                    reached_when,
                })
            }
        };
        if compare.is_none() && e.reached.is_empty() && e.not_reached.is_empty() {
            return Err(ctx.err(
                ekey.clone(),
                "needs reached or not_reached values, or a comparison",
            ));
        }
        if let Some(fact) = &e.recorded_after
            && !selector.facts.iter().any(|(f, v)| f == fact && *v)
        {
            return Err(ctx.err(
                format!("{ekey}.recorded_after"),
                format!("{fact:?} is not a fact this achievement selects on (as true)"),
            ));
        }
        evidence.push(EvidenceRule {
            source: e.source,
            item: Some(e.item),
            zone: e.zone,
            reached: e.reached,
            not_reached: e.not_reached,
            not_applicable: e.not_applicable,
            compare,
            recorded_after: e.recorded_after,
            recorded_state_item: source
                .recorded_states
                .then(|| format!("achievement:{}", a.id)),
        });
    }
    if let Some(unused) = a.thresholds.keys().find(|k| !thresholds_used.contains(*k)) {
        return Err(ctx.err(
            format!("{key}.thresholds.{unused}"),
            "no evidence rule compares with it",
        ));
    }
    // A source recording states in the field, with no rule of its own here, comes last.
    for s in sources.iter().filter(|s| s.recorded_states) {
        if !evidence.iter().any(|e| e.source == s.id) {
            evidence.push(EvidenceRule {
                source: s.id.clone(),
                item: None,
                zone: None,
                reached: Vec::new(),
                not_reached: Vec::new(),
                not_applicable: Vec::new(),
                compare: None,
                recorded_after: None,
                recorded_state_item: Some(format!("achievement:{}", a.id)),
            });
        }
    }
    Ok(Achievement {
        id: a.id,
        number: a.number,
        label: a.label,
        dimension: a.dimension,
        concerns: a.concerns,
        selector,
        household_rule,
        prerequisite: a.prerequisite,
        ipm_indicator: a.ipm_indicator,
        basis: a.basis,
        evidence,
    })
}

fn validate_exit(
    ctx: &Ctx<'_>,
    e: RawExit,
    achievements: &[Achievement],
) -> Result<ExitRule, RuleSetError> {
    ctx.non_empty("exit.name", &e.name)?;
    if e.requires.is_empty() {
        return Err(ctx.err("exit.requires", "must name at least one criterion"));
    }
    let required: BTreeSet<CriterionKind> = e.requires.iter().copied().collect();
    if required.len() != e.requires.len() {
        return Err(ctx.err("exit.requires", "names a criterion twice"));
    }
    for (kind, present, table) in [
        (CriterionKind::Income, e.income.is_some(), "exit.income"),
        (CriterionKind::Ipm, e.ipm.is_some(), "exit.ipm"),
        (
            CriterionKind::Prerequisites,
            e.prerequisites.is_some(),
            "exit.prerequisites",
        ),
    ] {
        match (required.contains(&kind), present) {
            (true, false) => {
                return Err(ctx.err(
                    "exit.requires",
                    format!("requires {kind:?} but the file has no [{table}]"),
                ));
            }
            (false, true) => {
                return Err(ctx.err(table, "is not listed in exit.requires"));
            }
            _ => {}
        }
    }
    let exists = |id: &str| achievements.iter().any(|a| a.id == id);
    let income_achievement = match e.income {
        None => None,
        Some(i) => {
            if !exists(&i.achievement) {
                return Err(ctx.err(
                    "exit.income.achievement",
                    format!("no achievement with id {:?}", i.achievement),
                ));
            }
            Some(i.achievement)
        }
    };
    let ipm = match e.ipm {
        None => None,
        Some(i) => {
            if i.cutoff <= Decimal::ZERO || i.cutoff > Decimal::ONE {
                return Err(ctx.err(
                    "exit.ipm.cutoff",
                    format!("must be above 0 and at most 1, got {}", i.cutoff),
                ));
            }
            if i.indicator.is_empty() {
                return Err(ctx.err("exit.ipm.indicator", "at least one indicator is required"));
            }
            ctx.unique(
                "exit.ipm.indicator.id",
                "indicator id",
                i.indicator.iter().map(|x| &x.id),
            )?;
            let mut sum = Decimal::ZERO;
            for x in &i.indicator {
                if x.weight <= Decimal::ZERO {
                    return Err(ctx.err(
                        format!("exit.ipm.indicator[{}].weight", x.id),
                        format!("must be above 0, got {}", x.weight),
                    ));
                }
                sum = sum.checked_add(x.weight).unwrap_or(Decimal::ONE);
            }
            if sum != Decimal::ONE {
                return Err(ctx.err(
                    "exit.ipm.indicator",
                    format!("weights must sum to 1, got {sum}"),
                ));
            }
            Some(IpmCriterion {
                cutoff: i.cutoff,
                indicators: i
                    .indicator
                    .into_iter()
                    .map(|x| IpmIndicator {
                        id: x.id,
                        dimension: x.dimension,
                        weight: x.weight,
                    })
                    .collect(),
            })
        }
    };
    let prerequisites = match e.prerequisites {
        None => {
            if let Some(a) = achievements.iter().find(|a| a.prerequisite) {
                return Err(ctx.err(
                    format!("achievement[{}].prerequisite", a.id),
                    "is true but the exit test has no [exit.prerequisites]",
                ));
            }
            None
        }
        Some(p) => {
            ctx.unique(
                "exit.prerequisites.achievements",
                "achievement",
                &p.achievements,
            )?;
            for id in &p.achievements {
                let Some(a) = achievements.iter().find(|a| a.id == *id) else {
                    return Err(ctx.err(
                        "exit.prerequisites.achievements",
                        format!("no achievement with id {id:?}"),
                    ));
                };
                if !a.prerequisite {
                    return Err(ctx.err(
                        format!("achievement[{id}].prerequisite"),
                        "is false but exit.prerequisites.achievements lists it; the two must agree",
                    ));
                }
            }
            if let Some(a) = achievements
                .iter()
                .find(|a| a.prerequisite && !p.achievements.contains(&a.id))
            {
                return Err(ctx.err(
                    format!("achievement[{}].prerequisite", a.id),
                    "is true but exit.prerequisites.achievements does not list it; the two must agree",
                ));
            }
            Some(PrerequisitesCriterion {
                achievements: p.achievements,
                not_applicable_counts_as_reached: p.not_applicable_counts_as_reached,
            })
        }
    };
    Ok(ExitRule {
        name: e.name,
        local_name: e.local_name,
        requires: e.requires,
        income_achievement,
        ipm,
        prerequisites,
    })
}
