//! Family effects (repercussão): aggregating members' outcomes and walking the rule set's
//! effects ladder, with family follow-up, interruption of effects and appeals.
//!
//! Pure function of the rule set, the members' outcomes and the family's assistance records;
//! it never reads the clock and never applies money effects itself — it says what follows.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::Nis;
use crate::outcome::{Outcome, Status};
use crate::period::{Month, Period};
use crate::records::{AppealStatus, FamilyFollowUp, FamilyId, FamilyState};
use crate::rules::{CancellationClock, EffectScope, MoneyEffect, RuleSet, RuleSetRef};

/// One member's non-compliance that feeds the ladder.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cause {
    /// Member.
    pub nis: Nis,
    /// Conditionality.
    pub conditionality: String,
    /// Period of the non-compliance.
    pub period: Period,
}

/// Whether an effect takes hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EffectStatus {
    /// Applied.
    Applied,
    /// Not applied: the family is in follow-up with an interruption of effects.
    Interrupted,
    /// Not applied: an accepted appeal targets every cause. Where the rule set removes
    /// appealed non-compliance from the history, the effect is shown at the step it would
    /// have been and the ladder goes on without it.
    RevokedByAppeal,
}

/// One rung reached on the ladder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effect {
    /// Month the effect is applied (last month of the latest period + the conditionality's lag).
    pub repercussion_month: Month,
    /// Last month of the latest non-compliant period in this group (for the window).
    pub reference_month: Month,
    /// Position in the current run of successive non-compliance (1-based).
    pub sequence: u32,
    /// Step name (`alert`, `block`, `suspension`, or the cancellation name).
    pub name: String,
    /// Local name.
    pub local_name: Option<String>,
    /// Money effect.
    pub money: MoneyEffect,
    /// Months the money effect lasts.
    pub months: u32,
    /// Whether the effect takes hold.
    pub status: EffectStatus,
    /// The non-compliance behind it.
    pub causes: Vec<Cause>,
    /// Record ids of the accepted appeals that revoked it (set exactly when `status` is
    /// `RevokedByAppeal`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub appeals: Vec<String>,
}

/// Everything that follows for one family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FamilyEffects {
    /// Family.
    pub family_id: FamilyId,
    /// Rule set used.
    pub rule_set: RuleSetRef,
    /// Family-benefit ladder, in order.
    pub family: Vec<Effect>,
    /// Member-benefit ladders (e.g. the adolescent's own benefit), by member.
    pub members: BTreeMap<Nis, Vec<Effect>>,
    /// Non-compliance removed from the history by accepted appeals.
    pub removed_by_appeal: Vec<Cause>,
}

impl FamilyEffects {
    /// True when the family is non-compliant in `period` (some member with family-scope effects
    /// is non-compliant in it, before appeals).
    pub fn family_non_compliant_in(&self, period: &Period) -> bool {
        self.family
            .iter()
            .flat_map(|e| &e.causes)
            .chain(&self.removed_by_appeal)
            .any(|c| c.period == *period)
    }

    /// The family-benefit effect in force in `month`, if any: an applied step with a money effect
    /// whose months cover `month`, or a cancellation from its month on.
    pub fn family_effect_in(&self, month: Month) -> Option<&Effect> {
        self.family.iter().rev().find(|e| {
            e.status == EffectStatus::Applied
                && match e.money {
                    MoneyEffect::None => false,
                    MoneyEffect::Cancel => e.repercussion_month <= month,
                    MoneyEffect::Block | MoneyEffect::Suspend => {
                        let d = e.repercussion_month.months_until(month);
                        d >= 0 && d < i64::from(e.months)
                    }
                }
        })
    }
}

struct Group {
    repercussion: Month,
    reference: Month,
    causes: Vec<Cause>,
    revoked: bool,
    /// The accepted appeals targeting its causes.
    appeals: BTreeSet<String>,
}

/// Accepted appeals by the cause they target (record ids).
type Revoked = BTreeMap<Cause, Vec<String>>;

fn lag_of(rules: &RuleSet, conditionality: &str) -> u32 {
    rules
        .conditionality(conditionality)
        .map_or(0, |c| c.repercussion_lag_months)
}

fn group(rules: &RuleSet, causes: BTreeSet<Cause>, revoked: &Revoked) -> Vec<Group> {
    let mut by_month: BTreeMap<Month, Group> = BTreeMap::new();
    for c in causes {
        let last = c.period.last_month();
        let Ok(rep) = last.add_months(i32::try_from(lag_of(rules, &c.conditionality)).unwrap_or(0))
        else {
            continue;
        };
        let g = by_month.entry(rep).or_insert(Group {
            repercussion: rep,
            reference: last,
            causes: Vec::new(),
            revoked: true,
            appeals: BTreeSet::new(),
        });
        g.reference = g.reference.max(last);
        match revoked.get(&c) {
            Some(appeals) => g.appeals.extend(appeals.iter().cloned()),
            None => g.revoked = false,
        }
        g.causes.push(c);
    }
    by_month.into_values().collect()
}

/// Record ids of the accepted appeals that target `cause`.
fn appeals_targeting(family: &FamilyState, cause: &Cause) -> Vec<String> {
    family
        .appeals
        .live()
        .filter(|a| {
            a.status == AppealStatus::Accepted
                && a.period == cause.period
                && a.nis.is_none_or(|n| n == cause.nis)
                && a.conditionality
                    .as_deref()
                    .is_none_or(|c| c == cause.conditionality)
        })
        .map(|a| a.record_id.clone())
        .collect()
}

fn active_follow_ups(family: &FamilyState, month: Month) -> impl Iterator<Item = &FamilyFollowUp> {
    family
        .follow_ups
        .live()
        .filter(move |f| f.active_on(month.first_day()))
}

fn walk(rules: &RuleSet, family: &FamilyState, groups: Vec<Group>) -> Vec<Effect> {
    let fx = &rules.effects;
    let mut out = Vec::new();
    let mut stage: u32 = 0;
    let mut prev_reference: Option<Month> = None;
    let mut suspension_since: Option<Month> = None;
    for g in groups {
        if prev_reference.is_some_and(|p| p.months_until(g.reference) > i64::from(fx.window_months))
        {
            stage = 0;
            suspension_since = None;
        }
        let interrupted = fx.interruption.as_ref().is_some_and(|rule| {
            active_follow_ups(family, g.repercussion).any(|f| {
                f.interruption_requested_on.is_some_and(|d| {
                    let since = d.month_of().months_until(g.repercussion);
                    since >= 0 && since < i64::from(rule.max_months)
                })
            })
        });
        let advances = !interrupted || fx.interruption.as_ref().is_some_and(|r| r.advances_ladder);
        let sequence = if advances { stage + 1 } else { stage.max(1) };
        let idx = (sequence as usize).min(fx.steps.len()).saturating_sub(1);
        let Some(step) = fx.steps.get(idx) else { break };

        let cancel = fx.cancellation.as_ref().filter(|c| {
            let Some(since) = suspension_since else {
                return false;
            };
            let follow_ups: Vec<&FamilyFollowUp> =
                active_follow_ups(family, g.repercussion).collect();
            if c.requires_active_follow_up && follow_ups.is_empty() {
                return false;
            }
            let months = i64::from(c.months);
            match c.counted_from {
                CancellationClock::SuspensionStart => since.months_until(g.repercussion) >= months,
                CancellationClock::FollowUpStart => follow_ups
                    .iter()
                    .any(|f| f.started_on.month_of().months_until(g.repercussion) >= months),
            }
        });

        let status = if g.revoked {
            EffectStatus::RevokedByAppeal
        } else if interrupted {
            EffectStatus::Interrupted
        } else {
            EffectStatus::Applied
        };
        let appeals: Vec<String> = if g.revoked {
            g.appeals.into_iter().collect()
        } else {
            Vec::new()
        };
        let effect = match cancel {
            Some(c) => Effect {
                repercussion_month: g.repercussion,
                reference_month: g.reference,
                sequence,
                name: c.name.clone(),
                local_name: c.local_name.clone(),
                money: MoneyEffect::Cancel,
                months: 0,
                status,
                causes: g.causes,
                appeals,
            },
            None => Effect {
                repercussion_month: g.repercussion,
                reference_month: g.reference,
                sequence,
                name: step.name.clone(),
                local_name: step.local_name.clone(),
                money: step.money,
                months: step.months,
                status,
                causes: g.causes,
                appeals,
            },
        };
        let cancelled =
            effect.money == MoneyEffect::Cancel && effect.status == EffectStatus::Applied;
        out.push(effect);
        if cancelled {
            break;
        }
        if advances {
            stage = sequence;
            prev_reference = Some(g.reference);
            if step.money == MoneyEffect::Suspend && suspension_since.is_none() {
                suspension_since = Some(g.repercussion);
            }
        }
    }
    out
}

impl RuleSet {
    /// Aggregates the members' outcomes of one family and walks the effects ladder.
    ///
    /// `outcomes` are all known outcomes of the family's members (any periods, any order).
    /// Only `NON_COMPLIANT` outcomes carrying effects count; `NOT_FOLLOWED` never does.
    pub fn evaluate_family(&self, family: &FamilyState, outcomes: &[Outcome]) -> FamilyEffects {
        let mut family_causes = BTreeSet::new();
        let mut member_causes: BTreeMap<Nis, BTreeSet<Cause>> = BTreeMap::new();
        let mut revoked = Revoked::new();
        for o in outcomes {
            if o.status != Status::NonCompliant || o.family_id != *family.family_id() {
                continue;
            }
            let cause = Cause {
                nis: o.nis,
                conditionality: o.conditionality.clone(),
                period: o.period,
            };
            let appeals = appeals_targeting(family, &cause);
            if !appeals.is_empty() {
                revoked.insert(cause.clone(), appeals);
            }
            match o.effects {
                EffectScope::Family => {
                    family_causes.insert(cause);
                }
                EffectScope::Member => {
                    member_causes.entry(o.nis).or_default().insert(cause);
                }
                EffectScope::None => {}
            }
        }
        let removes = self.effects.accepted_appeal_removes_from_history;
        let ladder = |causes: BTreeSet<Cause>| -> Vec<Effect> {
            if !removes {
                return walk(self, family, group(self, causes, &revoked));
            }
            // The ladder goes on as if the appealed non-compliance never happened; the effects
            // the appeals removed stay visible, revoked, at the step each would have been.
            let kept = causes
                .iter()
                .filter(|c| !revoked.contains_key(*c))
                .cloned()
                .collect();
            let mut out = walk(self, family, group(self, kept, &revoked));
            out.extend(
                walk(self, family, group(self, causes, &revoked))
                    .into_iter()
                    .filter(|e| e.status == EffectStatus::RevokedByAppeal),
            );
            out.sort_by_key(|e| e.repercussion_month);
            out
        };
        let family_effects = ladder(family_causes);
        let members = member_causes
            .into_iter()
            .map(|(nis, causes)| (nis, ladder(causes)))
            .collect();
        let removed = if removes {
            revoked.keys().cloned().collect()
        } else {
            Vec::new()
        };
        FamilyEffects {
            family_id: family.family_id().clone(),
            rule_set: self.reference(),
            family: family_effects,
            members,
            removed_by_appeal: removed,
        }
    }
}
