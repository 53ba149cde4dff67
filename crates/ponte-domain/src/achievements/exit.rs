//! The exit test: each criterion the rule set requires, met, not met or unknown, and whether the
//! household may leave — only when every required criterion is met; an unknown criterion keeps
//! the household in, and the outcome lists the evidence that is missing (decision U3).

use serde::Serialize;

use super::evaluate::AchievementOutcome;
use super::household::HouseholdProfile;
use super::rules::{AchievementRuleSet, AchievementState, CriterionKind};
use super::value::Decimal;
use crate::colombia::PersonKey;

/// A criterion's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CriterionState {
    /// Holds.
    Met,
    /// Does not hold.
    NotMet,
    /// Cannot be said with the evidence at hand.
    Unknown,
}

/// What a criterion's result rests on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CriterionDetail {
    /// Out of extreme income poverty: the state of the income achievement.
    Income {
        /// Achievement id.
        achievement: String,
        /// Its state.
        achievement_state: AchievementState,
    },
    /// Out of multidimensional poverty.
    Ipm {
        /// Poor at or above this weighted sum.
        cutoff: Decimal,
        /// Sum of the weights of the indicators the household is deprived in.
        deprived_weight: Decimal,
        /// Sum of the weights of the indicators not supplied.
        unknown_weight: Decimal,
        /// Indicators deprived.
        deprived: Vec<String>,
        /// Indicators not supplied.
        unknown: Vec<String>,
    },
    /// The prerequisite achievements.
    Prerequisites {
        /// Not reached (or not applicable, where that does not count as reached).
        not_reached: Vec<String>,
        /// Unknown.
        unknown: Vec<String>,
        /// Not applicable, counted as reached.
        not_applicable: Vec<String>,
    },
}

/// One exit criterion's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CriterionOutcome {
    /// Which criterion.
    pub criterion: CriterionKind,
    /// Result.
    pub state: CriterionState,
    /// What it rests on.
    pub detail: CriterionDetail,
}

/// Evidence whose absence leaves a criterion unknown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MissingEvidence {
    /// The criterion left unknown.
    pub criterion: CriterionKind,
    /// The achievement, if any.
    pub achievement: Option<String>,
    /// The member, if any.
    pub person: Option<PersonKey>,
    /// What is missing.
    pub what: String,
}

/// The exit test's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExitOutcome {
    /// Name (`promotion`).
    pub name: String,
    /// Local name (`promoción`).
    pub local_name: Option<String>,
    /// True when every required criterion is met.
    pub may_leave: bool,
    /// Each required criterion, in the rule set's order.
    pub criteria: Vec<CriterionOutcome>,
    /// What is missing for the criteria that are unknown.
    pub missing: Vec<MissingEvidence>,
}

pub(super) fn exit_outcome(
    rs: &AchievementRuleSet,
    profile: &HouseholdProfile,
    achievements: &[AchievementOutcome],
) -> ExitOutcome {
    let find = |id: &str| achievements.iter().find(|a| a.achievement == id);
    let mut criteria = Vec::new();
    let mut missing = Vec::new();
    for kind in &rs.exit.requires {
        let outcome = match kind {
            CriterionKind::Income => {
                let id = rs.exit.income_achievement.clone().unwrap_or_default();
                let a = find(&id);
                let achievement_state = a.map_or(AchievementState::Unknown, |a| a.state);
                let state = match achievement_state {
                    AchievementState::Reached => CriterionState::Met,
                    AchievementState::NotReached => CriterionState::NotMet,
                    AchievementState::NotApplicable | AchievementState::Unknown => {
                        CriterionState::Unknown
                    }
                };
                if state == CriterionState::Unknown {
                    missing.push(MissingEvidence {
                        criterion: *kind,
                        achievement: Some(id.clone()),
                        person: None,
                        what: a.map_or_else(|| "no outcome".to_owned(), |a| a.note.clone()),
                    });
                }
                CriterionOutcome {
                    criterion: *kind,
                    state,
                    detail: CriterionDetail::Income {
                        achievement: id,
                        achievement_state,
                    },
                }
            }
            CriterionKind::Ipm => {
                let Some(ipm) = &rs.exit.ipm else { continue };
                let (mut deprived_weight, mut unknown_weight) = (Decimal::ZERO, Decimal::ZERO);
                let (mut deprived, mut unknown) = (Vec::new(), Vec::new());
                for ind in &ipm.indicators {
                    match profile.ipm_deprivations.get(&ind.id) {
                        Some(true) => {
                            deprived_weight = deprived_weight
                                .checked_add(ind.weight)
                                .unwrap_or(Decimal::ONE);
                            deprived.push(ind.id.clone());
                        }
                        Some(false) => {}
                        None => {
                            unknown_weight = unknown_weight
                                .checked_add(ind.weight)
                                .unwrap_or(Decimal::ONE);
                            unknown.push(ind.id.clone());
                        }
                    }
                }
                let most = deprived_weight
                    .checked_add(unknown_weight)
                    .unwrap_or(Decimal::ONE);
                // Poor at or above the cut-off (decision U9).
                let state = if deprived_weight >= ipm.cutoff {
                    CriterionState::NotMet
                } else if most < ipm.cutoff {
                    CriterionState::Met
                } else {
                    CriterionState::Unknown
                };
                if state == CriterionState::Unknown {
                    for id in &unknown {
                        missing.push(MissingEvidence {
                            criterion: *kind,
                            achievement: None,
                            person: None,
                            what: format!("IPM indicator {id} not supplied by the registry"),
                        });
                    }
                }
                CriterionOutcome {
                    criterion: *kind,
                    state,
                    detail: CriterionDetail::Ipm {
                        cutoff: ipm.cutoff,
                        deprived_weight,
                        unknown_weight,
                        deprived,
                        unknown,
                    },
                }
            }
            CriterionKind::Prerequisites => {
                let Some(p) = &rs.exit.prerequisites else {
                    continue;
                };
                let (mut not_reached, mut unknown, mut not_applicable) =
                    (Vec::new(), Vec::new(), Vec::new());
                for id in &p.achievements {
                    let Some(a) = find(id) else { continue };
                    match a.state {
                        AchievementState::Reached => {}
                        AchievementState::NotApplicable if p.not_applicable_counts_as_reached => {
                            not_applicable.push(id.clone());
                        }
                        AchievementState::NotApplicable | AchievementState::NotReached => {
                            not_reached.push(id.clone());
                        }
                        AchievementState::Unknown => unknown.push(id.clone()),
                    }
                }
                let state = if !not_reached.is_empty() {
                    CriterionState::NotMet
                } else if !unknown.is_empty() {
                    CriterionState::Unknown
                } else {
                    CriterionState::Met
                };
                if state == CriterionState::Unknown {
                    for a in achievements
                        .iter()
                        .filter(|a| unknown.contains(&a.achievement))
                    {
                        if a.members.is_empty() {
                            missing.push(MissingEvidence {
                                criterion: *kind,
                                achievement: Some(a.achievement.clone()),
                                person: None,
                                what: a.note.clone(),
                            });
                        }
                        for m in a
                            .members
                            .iter()
                            .filter(|m| m.state == AchievementState::Unknown)
                        {
                            missing.push(MissingEvidence {
                                criterion: *kind,
                                achievement: Some(a.achievement.clone()),
                                person: Some(m.person.clone()),
                                what: m.note.clone(),
                            });
                        }
                    }
                }
                CriterionOutcome {
                    criterion: *kind,
                    state,
                    detail: CriterionDetail::Prerequisites {
                        not_reached,
                        unknown,
                        not_applicable,
                    },
                }
            }
        };
        criteria.push(outcome);
    }
    ExitOutcome {
        name: rs.exit.name.clone(),
        local_name: rs.exit.local_name.clone(),
        may_leave: !criteria.is_empty() && criteria.iter().all(|c| c.state == CriterionState::Met),
        criteria,
        missing,
    }
}
