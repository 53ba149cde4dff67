//! Evaluating a household: each achievement's state with the evidence used, per member and for
//! the household, then the exit test ([`super::exit`]).
//!
//! Evaluation is a pure function of the rule set, the registry's profile, the *set* of live
//! evidence records and the evaluation day, so it does not depend on the order records arrived
//! in. How evidence is chosen and read (docs/rules.md, "Unidos", decisions U3, U6, U10, U11):
//! - only records dated in the window — from `evidence_max_age_months` before the evaluation day
//!   to the day itself — count;
//! - evidence rules are tried in the file's order; for a rule, the latest record of its source
//!   about the subject that carries the item (or the achievement's state as recorded in the
//!   field) decides, by the date it states (then by record id); a value in none of the rule's
//!   lists decides nothing and the next rule is tried;
//! - a member is not reached only on an explicit negative record; no record, or a value that
//!   decides nothing, leaves them unknown;
//! - the household's state is unknown exactly when some way of completing the missing evidence
//!   would change it.

use std::collections::BTreeSet;

use serde::Serialize;

use super::exit::{ExitOutcome, exit_outcome};
use super::household::{
    EvidenceRecord, HouseholdId, HouseholdProfile, HouseholdState, Member, Subject,
};
use super::rules::{
    Achievement, AchievementRuleSet, AchievementState, Comparison, Concerns, DerivedItem,
    Direction, EvidenceRule, HouseholdRule, MemberSelector, Reference, Sector, Threshold,
};
use super::value::{Decimal, Value};
use crate::colombia::{Divipola, DocumentForAge, PersonKey, SisbenGroup};
use crate::period::Date;
use crate::rules::RuleSetRef;

/// The record (or the registry-derived fact) an achievement's state rests on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EvidenceUsed {
    /// Source id.
    pub source: String,
    /// The source's sector.
    pub sector: Sector,
    /// Record id (the registry profile's for derived items).
    pub record_id: String,
    /// Record version.
    pub version: u64,
    /// The day it states (the evaluation day for derived items).
    pub recorded_on: Date,
    /// Who recorded it.
    pub recorded_by: String,
    /// The item read.
    pub item: String,
    /// Its value.
    pub value: Value,
    /// For a numeric item: what it was compared with.
    pub compared_with: Option<ComparedWith>,
}

/// The reference a numeric item was compared with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComparedWith {
    /// Threshold or figure name.
    pub name: String,
    /// Its value for this household.
    pub value: Decimal,
    /// Direction that is reached.
    pub reached_when: Direction,
}

/// One member's state for one achievement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberOutcome {
    /// The member.
    pub person: PersonKey,
    /// Age on the evaluation day, if the birth date is known.
    pub age: Option<u32>,
    /// State.
    pub state: AchievementState,
    /// Evidence the state rests on.
    pub evidence: Option<EvidenceUsed>,
    /// Why, for a human reader.
    pub note: String,
}

/// One achievement's state for the household.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AchievementOutcome {
    /// Achievement id.
    pub achievement: String,
    /// Its number.
    pub number: u32,
    /// Its dimension.
    pub dimension: String,
    /// Whether it is a prerequisite for leaving.
    pub prerequisite: bool,
    /// The household's state.
    pub state: AchievementState,
    /// Evidence (achievements of the household as a whole).
    pub evidence: Option<EvidenceUsed>,
    /// Every member's state (achievements that concern members), in the registry's order.
    pub members: Vec<MemberOutcome>,
    /// Why, for a human reader.
    pub note: String,
}

/// A household's evaluation on one day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HouseholdEvaluation {
    /// Household.
    pub household_id: HouseholdId,
    /// Municipality.
    pub municipality: Divipola,
    /// Sisbén IV group, as registry data.
    pub sisben_group: Option<SisbenGroup>,
    /// Rule set used.
    pub rule_set: RuleSetRef,
    /// Evaluation day (ages are computed at it).
    pub evaluated_on: Date,
    /// First day of the evidence window.
    pub evidence_since: Date,
    /// Achievements, in the rule set's order.
    pub achievements: Vec<AchievementOutcome>,
    /// The exit test.
    pub exit: ExitOutcome,
}

impl HouseholdEvaluation {
    /// The outcome of one achievement.
    pub fn achievement(&self, id: &str) -> Option<&AchievementOutcome> {
        self.achievements.iter().find(|a| a.achievement == id)
    }
}

/// `on` minus `months` months, the day clamped to the shorter month (2025-03-31 − 1 month is
/// 2025-02-28).
fn months_before(on: Date, months: u32) -> Date {
    let Ok(m) = on
        .month_of()
        .add_months(-i32::try_from(months).unwrap_or(i32::MAX))
    else {
        return Date::MIN;
    };
    Date::new(m.year(), m.month(), on.day().min(m.last_day().day())).unwrap_or(Date::MIN)
}

impl AchievementRuleSet {
    /// Evaluates a household on `on`. `None` when the household has no live registry profile
    /// or is not in the programme (its profile lacks a marker of `household_member_of`).
    pub fn evaluate(&self, household: &HouseholdState, on: Date) -> Option<HouseholdEvaluation> {
        let profile = household.profile()?;
        self.evaluate_profile(profile, household.evidence.live(), on)
    }

    /// Evaluates a profile with its live evidence records (one per record id, retractions
    /// removed, as [`HouseholdState`] keeps them).
    pub fn evaluate_profile<'a>(
        &self,
        profile: &HouseholdProfile,
        evidence: impl IntoIterator<Item = &'a EvidenceRecord>,
        on: Date,
    ) -> Option<HouseholdEvaluation> {
        if !self
            .household_member_of
            .iter()
            .all(|m| profile.programmes.contains(m))
        {
            return None;
        }
        let since = months_before(on, self.evidence_max_age_months);
        let mut records: Vec<&EvidenceRecord> = evidence
            .into_iter()
            .filter(|r| {
                !r.retracted
                    && r.household_id == profile.household_id
                    && since <= r.recorded_on
                    && r.recorded_on <= on
            })
            .collect();
        // Oldest first: the latest of a kind is the last match.
        records.sort_by(|a, b| {
            (a.recorded_on, &a.record_id, a.version).cmp(&(b.recorded_on, &b.record_id, b.version))
        });
        let members = profile
            .members
            .iter()
            .map(|m| MemberCtx {
                member: m,
                age: m.identity.birth_date().and_then(|b| b.age_on(on)),
            })
            .collect();
        let eval = Eval {
            rs: self,
            profile,
            on,
            since,
            records,
            members,
        };
        let achievements: Vec<AchievementOutcome> = self
            .achievements
            .iter()
            .map(|a| eval.achievement(a))
            .collect();
        let exit = exit_outcome(self, profile, &achievements);
        Some(HouseholdEvaluation {
            household_id: profile.household_id.clone(),
            municipality: profile.municipality,
            sisben_group: profile.sisben_group,
            rule_set: self.reference(),
            evaluated_on: on,
            evidence_since: since,
            achievements,
            exit,
        })
    }
}

struct MemberCtx<'a> {
    member: &'a Member,
    age: Option<u32>,
}

struct Eval<'a> {
    rs: &'a AchievementRuleSet,
    profile: &'a HouseholdProfile,
    on: Date,
    since: Date,
    records: Vec<&'a EvidenceRecord>,
    members: Vec<MemberCtx<'a>>,
}

/// Whether an achievement concerns a member.
enum Applies {
    Yes,
    No(String),
    Unknown(String),
}

/// A subject's state from evidence.
struct Decision {
    state: AchievementState,
    evidence: Option<EvidenceUsed>,
    note: String,
}

fn state_word(s: AchievementState) -> &'static str {
    match s {
        AchievementState::Reached => "reached",
        AchievementState::NotReached => "not reached",
        AchievementState::NotApplicable => "not applicable",
        AchievementState::Unknown => "unknown",
    }
}

impl Eval<'_> {
    fn achievement(&self, a: &Achievement) -> AchievementOutcome {
        let mut out = AchievementOutcome {
            achievement: a.id.clone(),
            number: a.number,
            dimension: a.dimension.clone(),
            prerequisite: a.prerequisite,
            state: AchievementState::Unknown,
            evidence: None,
            members: Vec::new(),
            note: String::new(),
        };
        let Some(rule) = a.household_rule else {
            let d = self.decide(a, &Subject::Household, None);
            out.state = d.state;
            out.evidence = d.evidence;
            out.note = d.note;
            return out;
        };
        let mut possibilities = Vec::with_capacity(self.members.len());
        for m in &self.members {
            let (outcome, possible) = self.member(a, m);
            let under = match rule {
                HouseholdRule::Count(c) => match (c.every_member_under, m.age) {
                    (None, _) => Some(false),
                    (Some(x), Some(age)) => Some(age < x),
                    (Some(_), None) => None,
                },
                _ => Some(false),
            };
            possibilities.push((possible, under));
            out.members.push(outcome);
        }
        out.state = combine(rule, &possibilities);
        let count = |s| out.members.iter().filter(|m| m.state == s).count();
        let concerned = out.members.len() - count(AchievementState::NotApplicable);
        out.note = if concerned == 0 {
            "concerns no member of the household".to_owned()
        } else {
            format!(
                "{concerned} member(s) concerned or possibly concerned: {} reached, {} not reached, {} unknown",
                count(AchievementState::Reached),
                count(AchievementState::NotReached),
                count(AchievementState::Unknown)
            )
        };
        out
    }

    /// A member's outcome and the states it may really be in (one when known).
    fn member(
        &self,
        a: &Achievement,
        m: &MemberCtx<'_>,
    ) -> (MemberOutcome, BTreeSet<AchievementState>) {
        let key = m.member.key().clone();
        let applies = match a.concerns {
            Concerns::Members => self.applies(&a.selector, m),
            Concerns::EachMember | Concerns::Household => Applies::Yes,
        };
        let why_unknown = match applies {
            Applies::No(why) => {
                let outcome = MemberOutcome {
                    person: key,
                    age: m.age,
                    state: AchievementState::NotApplicable,
                    evidence: None,
                    note: why,
                };
                return (outcome, [AchievementState::NotApplicable].into());
            }
            Applies::Yes => None,
            Applies::Unknown(why) => Some(why),
        };
        let d = self.decide(a, &Subject::Member(key.clone()), Some(m));
        let mut possible: BTreeSet<AchievementState> = match d.state {
            AchievementState::Unknown => {
                let mut p: BTreeSet<_> =
                    [AchievementState::Reached, AchievementState::NotReached].into();
                if may_be_not_applicable(a) {
                    p.insert(AchievementState::NotApplicable);
                }
                p
            }
            s => [s].into(),
        };
        let mut note = d.note;
        if let Some(why) = why_unknown {
            possible.insert(AchievementState::NotApplicable);
            note = format!("whether it concerns this member is unknown ({why}); {note}");
        }
        let state = if possible.len() == 1 {
            possible
                .first()
                .copied()
                .unwrap_or(AchievementState::Unknown)
        } else {
            AchievementState::Unknown
        };
        let outcome = MemberOutcome {
            person: key,
            age: m.age,
            state,
            evidence: d.evidence,
            note,
        };
        (outcome, possible)
    }

    fn applies(&self, s: &MemberSelector, m: &MemberCtx<'_>) -> Applies {
        let mut unknown = Vec::new();
        if s.age_min.is_some() || s.age_max_exclusive.is_some() {
            match m.age {
                None => unknown.push("age unknown".to_owned()),
                Some(age) => {
                    if s.age_min.is_some_and(|lo| age < lo)
                        || s.age_max_exclusive.is_some_and(|hi| age >= hi)
                    {
                        return Applies::No(format!("age {age} is outside the ages concerned"));
                    }
                }
            }
        }
        if let Some(sex) = s.sex {
            match m.member.sex {
                None => unknown.push("sex unknown".to_owned()),
                Some(x) if x != sex => {
                    return Applies::No(format!("concerns {sex:?} members only"));
                }
                Some(_) => {}
            }
        }
        for (fact, want) in &s.facts {
            match self.fact(m.member.key(), fact) {
                None => unknown.push(format!("no record of {fact} since {}", self.since)),
                Some((v, r)) if v != *want => {
                    return Applies::No(format!(
                        "{fact} is {v} per {} record {}",
                        r.source, r.record_id
                    ));
                }
                Some(_) => {}
            }
        }
        if unknown.is_empty() {
            Applies::Yes
        } else {
            Applies::Unknown(unknown.join(", "))
        }
    }

    /// The latest yes/no value of a member fact in the window, from a source that carries it.
    fn fact(&self, key: &PersonKey, name: &str) -> Option<(bool, &EvidenceRecord)> {
        self.records.iter().rev().find_map(|r| {
            let about = matches!(&r.subject, Subject::Member(k) if k == key);
            let carried = self
                .rs
                .source(&r.source)
                .is_some_and(|s| s.items.contains(name));
            match r.items.get(name) {
                Some(Value::Bool(b)) if about && carried => Some((*b, *r)),
                _ => None,
            }
        })
    }

    fn decide(&self, a: &Achievement, subject: &Subject, m: Option<&MemberCtx<'_>>) -> Decision {
        let mut notes: Vec<String> = Vec::new();
        for rule in &a.evidence {
            if let Some(zone) = rule.zone {
                match self.profile.zone {
                    None => {
                        notes.push(format!(
                            "the household's zone is unknown ({zone:?} evidence not chosen)"
                        ));
                        continue;
                    }
                    Some(z) if z != zone => continue,
                    Some(_) => {}
                }
            }
            let Some(source) = self.rs.source(&rule.source) else {
                continue;
            };
            let what = rule.item.as_deref().unwrap_or("a recorded state");
            if let (Some(item), Some(m)) = (&rule.item, m)
                && let Some(d) = source.derived_items.iter().find(|d| d.name() == item)
            {
                match self.derived(*d, m) {
                    Some((value, held)) => {
                        let used = EvidenceUsed {
                            source: source.id.clone(),
                            sector: source.sector,
                            record_id: self.profile.record_id.clone(),
                            version: self.profile.version,
                            recorded_on: self.on,
                            recorded_by: "derived from the registry's profile".to_owned(),
                            item: item.clone(),
                            value,
                            compared_with: None,
                        };
                        match read(rule, &used.value) {
                            AchievementState::Unknown => {
                                notes.push(format!(
                                    "{item} is {}, which decides nothing",
                                    used.value
                                ));
                            }
                            state => {
                                return Decision {
                                    state,
                                    note: format!(
                                        "{}: {item} = {}{held}",
                                        state_word(state),
                                        used.value
                                    ),
                                    evidence: Some(used),
                                };
                            }
                        }
                    }
                    None => notes.push(format!("{item} cannot be derived: age unknown")),
                }
                continue;
            }
            let after = match &rule.recorded_after {
                None => None,
                Some(fact) => match m.and_then(|m| self.fact(m.member.key(), fact)) {
                    Some((_, r)) => Some(r.recorded_on),
                    None => {
                        notes.push(format!("no {fact} record to date {what} from"));
                        continue;
                    }
                },
            };
            let carries = |r: &EvidenceRecord| {
                rule.item.as_ref().is_some_and(|i| r.items.contains_key(i))
                    || rule
                        .recorded_state_item
                        .as_ref()
                        .is_some_and(|i| r.items.contains_key(i))
            };
            let Some(r) = self.records.iter().rev().copied().find(|r| {
                r.source == rule.source
                    && r.subject == *subject
                    && after.is_none_or(|d| r.recorded_on >= d)
                    && carries(r)
            }) else {
                notes.push(match after {
                    Some(d) => format!("no {} record of {what} since {d}", source.id),
                    None => format!("no {} record of {what} since {}", source.id, self.since),
                });
                continue;
            };
            let (item, value, recorded_state) = match rule
                .item
                .as_ref()
                .and_then(|i| r.items.get(i).map(|v| (i, v)))
            {
                Some((i, v)) => (i.clone(), v.clone(), false),
                None => {
                    let i = rule.recorded_state_item.clone().unwrap_or_default();
                    let v = r.items.get(&i).cloned().unwrap_or(Value::Bool(false));
                    (i, v, true)
                }
            };
            let mut used = EvidenceUsed {
                source: source.id.clone(),
                sector: source.sector,
                record_id: r.record_id.clone(),
                version: r.version,
                recorded_on: r.recorded_on,
                recorded_by: r.recorded_by.clone(),
                item: item.clone(),
                value,
                compared_with: None,
            };
            let state = if recorded_state {
                match &used.value {
                    Value::Text(name) => self.rs.states.state_of(name),
                    _ => AchievementState::Unknown,
                }
            } else {
                match (read(rule, &used.value), &rule.compare, &used.value) {
                    (AchievementState::Unknown, Some(c), Value::Number(x)) => {
                        match self.reference(c) {
                            Ok(reference) => {
                                used.compared_with = Some(ComparedWith {
                                    name: c.name.clone(),
                                    value: reference,
                                    reached_when: c.reached_when,
                                });
                                if c.reached_when.holds(*x, reference) {
                                    AchievementState::Reached
                                } else {
                                    AchievementState::NotReached
                                }
                            }
                            Err(why) => {
                                notes.push(why);
                                AchievementState::Unknown
                            }
                        }
                    }
                    (s, _, _) => s,
                }
            };
            if state == AchievementState::Unknown {
                notes.push(format!(
                    "{} record {} of {} says {item} = {}, which decides nothing",
                    source.id, r.record_id, r.recorded_on, used.value
                ));
                continue;
            }
            let compared = used
                .compared_with
                .as_ref()
                .map(|c| format!(" against {} {}", c.name, c.value))
                .unwrap_or_default();
            return Decision {
                state,
                note: format!(
                    "{}: {} record {} of {} by {}: {item} = {}{compared}",
                    state_word(state),
                    source.id,
                    r.record_id,
                    r.recorded_on,
                    r.recorded_by,
                    used.value
                ),
                evidence: Some(used),
            };
        }
        Decision {
            state: AchievementState::Unknown,
            evidence: None,
            note: if notes.is_empty() {
                "no evidence".to_owned()
            } else {
                notes.join("; ")
            },
        }
    }

    /// A derived item's value for a member, with a note on what it rests on (never a document
    /// number).
    fn derived(&self, d: DerivedItem, m: &MemberCtx<'_>) -> Option<(Value, String)> {
        match d {
            DerivedItem::IdentityDocumentForAge => {
                match m.member.identity.document_for_age(self.on) {
                    DocumentForAge::Expected { document, age } => Some((
                        Value::from("expected_document"),
                        format!(" ({} at {age})", document.kind),
                    )),
                    DocumentForAge::NotForAge { latest, age } => Some((
                        Value::from("document_not_for_age"),
                        format!(" (latest document a {} at {age})", latest.kind),
                    )),
                    DocumentForAge::NoDocument => Some((Value::from("no_document"), String::new())),
                    DocumentForAge::AgeUnknown => None,
                }
            }
        }
    }

    fn reference(&self, c: &Comparison) -> Result<Decimal, String> {
        match &c.reference {
            Reference::Figure => self
                .profile
                .figures
                .get(&c.name)
                .copied()
                .ok_or_else(|| format!("the registry gave no {}", c.name)),
            Reference::Threshold(Threshold::Fixed(x)) => Ok(*x),
            Reference::Threshold(Threshold::ByMinors {
                adults_only,
                with_minors,
                minors_under,
            }) => {
                if self
                    .members
                    .iter()
                    .any(|m| m.age.is_some_and(|a| a < *minors_under))
                {
                    Ok(*with_minors)
                } else if self.members.iter().any(|m| m.age.is_none()) {
                    Err(format!(
                        "{}: whether the household has members under {minors_under} is unknown",
                        c.name
                    ))
                } else {
                    Ok(*adults_only)
                }
            }
        }
    }
}

/// The state a value means under a rule's lists (`Unknown`: in none of them).
fn read(rule: &EvidenceRule, value: &Value) -> AchievementState {
    if rule.reached.contains(value) {
        AchievementState::Reached
    } else if rule.not_reached.contains(value) {
        AchievementState::NotReached
    } else if rule.not_applicable.contains(value) {
        AchievementState::NotApplicable
    } else {
        AchievementState::Unknown
    }
}

/// Whether missing evidence could take a member out of the achievement.
fn may_be_not_applicable(a: &Achievement) -> bool {
    a.evidence
        .iter()
        .any(|r| !r.not_applicable.is_empty() || r.recorded_state_item.is_some())
}

/// The household's state from the states each member may be in (decision U10): every way of
/// completing the unknown members is followed (as counts of reached and not-reached members,
/// and whether a member under the count rule's age is not reached); the household is unknown
/// when they do not all give the same state.
fn combine(
    rule: HouseholdRule,
    members: &[(BTreeSet<AchievementState>, Option<bool>)],
) -> AchievementState {
    let mut tallies: BTreeSet<(u32, u32, bool)> = [(0, 0, false)].into();
    for (possible, under) in members {
        let unders: &[bool] = match under {
            Some(true) => &[true],
            Some(false) => &[false],
            None => &[false, true],
        };
        let mut next = BTreeSet::new();
        for &(reached, not_reached, fail) in &tallies {
            for s in possible {
                match s {
                    AchievementState::Reached => {
                        next.insert((reached + 1, not_reached, fail));
                    }
                    AchievementState::NotReached => {
                        for u in unders {
                            next.insert((reached, not_reached + 1, fail || *u));
                        }
                    }
                    AchievementState::NotApplicable | AchievementState::Unknown => {
                        next.insert((reached, not_reached, fail));
                    }
                }
            }
        }
        tallies = next;
    }
    let outcomes: BTreeSet<AchievementState> = tallies
        .iter()
        .map(|&(reached, not_reached, fail)| household_state(rule, reached, not_reached, fail))
        .collect();
    match (outcomes.len(), outcomes.first()) {
        (1, Some(s)) => *s,
        _ => AchievementState::Unknown,
    }
}

fn household_state(
    rule: HouseholdRule,
    reached: u32,
    not_reached: u32,
    fail: bool,
) -> AchievementState {
    use AchievementState::*;
    match rule {
        HouseholdRule::AllApplicable => {
            if not_reached > 0 {
                NotReached
            } else if reached > 0 {
                Reached
            } else {
                NotApplicable
            }
        }
        HouseholdRule::AnyMember => {
            if reached > 0 {
                Reached
            } else if not_reached > 0 {
                NotReached
            } else {
                NotApplicable
            }
        }
        HouseholdRule::Count(c) => {
            let n = reached + not_reached;
            if n == 0 {
                NotApplicable
            } else if fail {
                NotReached
            } else {
                let needed = if n <= c.all_reached_up_to {
                    n
                } else {
                    c.min_reached_above
                };
                if reached >= needed {
                    Reached
                } else {
                    NotReached
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::achievements::rules::CountRule;
    use AchievementState::*;

    fn known(s: AchievementState) -> (BTreeSet<AchievementState>, Option<bool>) {
        ([s].into(), Some(false))
    }

    fn unknown() -> (BTreeSet<AchievementState>, Option<bool>) {
        ([Reached, NotReached].into(), Some(false))
    }

    #[test]
    fn household_state_from_members() {
        // Decision U10 (docs/rules.md): a known failure wins for "every applicable member"; a
        // success wins for "any member"; unknown only when the missing evidence could change it.
        let all = HouseholdRule::AllApplicable;
        let any = HouseholdRule::AnyMember;
        let cases: &[(&str, HouseholdRule, Vec<_>, AchievementState)] = &[
            (
                "all reached",
                all,
                vec![known(Reached), known(Reached)],
                Reached,
            ),
            (
                "one not reached",
                all,
                vec![known(Reached), known(NotReached)],
                NotReached,
            ),
            (
                "not reached beats unknown",
                all,
                vec![unknown(), known(NotReached)],
                NotReached,
            ),
            (
                "unknown keeps reached open",
                all,
                vec![known(Reached), unknown()],
                Unknown,
            ),
            (
                "none concerned",
                all,
                vec![known(NotApplicable)],
                NotApplicable,
            ),
            ("no members", all, vec![], NotApplicable),
            (
                "any: one reached",
                any,
                vec![known(NotReached), known(Reached)],
                Reached,
            ),
            (
                "any: reached beats unknown",
                any,
                vec![unknown(), known(Reached)],
                Reached,
            ),
            (
                "any: none reached",
                any,
                vec![known(NotReached), known(NotApplicable)],
                NotReached,
            ),
            (
                "any: unknown open",
                any,
                vec![known(NotReached), unknown()],
                Unknown,
            ),
        ];
        for (what, rule, members, expected) in cases {
            assert_eq!(combine(*rule, members), *expected, "{what}");
        }
    }

    #[test]
    fn count_rule_of_achievement_27() {
        // dps-unidos-logros-scripts (docs/sources.md), achievement 27: 1–3 children all enrolled,
        // 4 or more at least 3, any child under 6 not enrolled is not reached.
        let count = HouseholdRule::Count(CountRule {
            all_reached_up_to: 3,
            min_reached_above: 3,
            every_member_under: Some(6),
        });
        let child = |s, under6| ([s].into(), Some(under6));
        let cases: &[(&str, Vec<_>, AchievementState)] = &[
            ("no children", vec![known(NotApplicable)], NotApplicable),
            (
                "2 of 2",
                vec![child(Reached, false), child(Reached, false)],
                Reached,
            ),
            (
                "1 of 2",
                vec![child(Reached, false), child(NotReached, false)],
                NotReached,
            ),
            (
                "3 of 4, the fourth 10 years old",
                vec![
                    child(Reached, false),
                    child(Reached, false),
                    child(Reached, false),
                    child(NotReached, false),
                ],
                Reached,
            ),
            (
                "3 of 4, the fourth under 6",
                vec![
                    child(Reached, false),
                    child(Reached, false),
                    child(Reached, false),
                    child(NotReached, true),
                ],
                NotReached,
            ),
            (
                "3 of 4 known, the fourth (10) unknown: reached either way",
                vec![
                    child(Reached, false),
                    child(Reached, false),
                    child(Reached, false),
                    ([Reached, NotReached].into(), Some(false)),
                ],
                Reached,
            ),
            (
                "3 known, the fourth of unknown age unknown",
                vec![
                    child(Reached, false),
                    child(Reached, false),
                    child(Reached, false),
                    ([Reached, NotReached, NotApplicable].into(), None),
                ],
                Unknown,
            ),
        ];
        for (what, members, expected) in cases {
            assert_eq!(combine(count, members), *expected, "{what}");
        }
    }

    #[test]
    fn evidence_window() {
        let d = |s| Date::parse(s).unwrap();
        // Decision U6: 12 months before the evaluation day, the day clamped to the month.
        assert_eq!(months_before(d("2025-06-15"), 12), d("2024-06-15"));
        assert_eq!(months_before(d("2025-03-31"), 1), d("2025-02-28"));
        assert_eq!(months_before(d("2024-02-29"), 12), d("2023-02-28"));
    }
}
