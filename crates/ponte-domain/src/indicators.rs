//! Indicators per municipality and period: follow-up rates (TAFE, TAAS, … as the rule set names
//! them), compliance rates, and Fator I of the IGD-M.
//!
//! Counting is a fold over outcomes, so it can run incrementally (add the new outcome, subtract
//! the old one) in the reconciler. Rates are ratios of counts; nothing here is a Bolsa Família
//! constant — names, source conditionalities and weights come from the rule set.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::IbgeMunicipality;
use crate::outcome::{Outcome, Status};
use crate::period::{Month, Period};
use crate::rules::RuleSet;

/// Key of a counts row.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IndicatorKey {
    /// Municipality.
    pub municipality: IbgeMunicipality,
    /// Conditionality id.
    pub conditionality: String,
    /// Period.
    pub period: Period,
}

/// Counts of people by outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counts {
    /// In the public (every status but `NOT_REQUIRED`).
    pub public: u64,
    /// Followed (`COMPLIANT` + `NON_COMPLIANT`).
    pub followed: u64,
    /// `COMPLIANT`.
    pub compliant: u64,
    /// `NON_COMPLIANT`.
    pub non_compliant: u64,
}

impl Counts {
    /// Adds one outcome status.
    pub fn add(&mut self, status: Status) {
        if status.in_public() {
            self.public += 1;
        }
        if status.followed() {
            self.followed += 1;
        }
        match status {
            Status::Compliant => self.compliant += 1,
            Status::NonCompliant => self.non_compliant += 1,
            Status::NotFollowed | Status::NotRequired => {}
        }
    }

    /// Removes one outcome status previously added (for incremental maintenance).
    pub fn remove(&mut self, status: Status) {
        if status.in_public() {
            self.public = self.public.saturating_sub(1);
        }
        if status.followed() {
            self.followed = self.followed.saturating_sub(1);
        }
        match status {
            Status::Compliant => self.compliant = self.compliant.saturating_sub(1),
            Status::NonCompliant => self.non_compliant = self.non_compliant.saturating_sub(1),
            Status::NotFollowed | Status::NotRequired => {}
        }
    }

    /// Followed / public (`None` when the public is empty).
    pub fn follow_up_rate(&self) -> Option<f64> {
        ratio(self.followed, self.public)
    }

    /// Compliant / followed (`None` when nobody was followed).
    pub fn compliance_rate(&self) -> Option<f64> {
        ratio(self.compliant, self.followed)
    }
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// Counts per municipality, conditionality and period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndicatorTable {
    /// Rows.
    pub rows: BTreeMap<IndicatorKey, Counts>,
}

/// A rate the Fator I formula needs was not available.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IndicatorError {
    /// No value for a rate.
    #[error("rate {0} is needed by Fator I but was not provided or computed")]
    MissingRate(String),
    /// The rule set has no Fator I formula.
    #[error("rule set {0} defines no Fator I formula")]
    NoFormula(String),
}

impl IndicatorTable {
    /// Tallies outcomes.
    pub fn from_outcomes<'a>(outcomes: impl IntoIterator<Item = &'a Outcome>) -> IndicatorTable {
        let mut t = IndicatorTable::default();
        for o in outcomes {
            t.add(o);
        }
        t
    }

    /// Adds one outcome.
    pub fn add(&mut self, o: &Outcome) {
        self.rows.entry(key(o)).or_default().add(o.status);
    }

    /// Removes one outcome previously added.
    pub fn remove(&mut self, o: &Outcome) {
        if let Some(c) = self.rows.get_mut(&key(o)) {
            c.remove(o.status);
        }
    }

    /// Counts for one row.
    pub fn get(
        &self,
        municipality: IbgeMunicipality,
        conditionality: &str,
        period: Period,
    ) -> Counts {
        self.rows
            .get(&IndicatorKey {
                municipality,
                conditionality: conditionality.to_owned(),
                period,
            })
            .copied()
            .unwrap_or_default()
    }

    /// The rule set's follow-up rates (e.g. TAFE, TAAS) for a municipality, each from the latest
    /// period of its conditionality that ends on or before `at` and has a non-empty public.
    pub fn follow_up_rates(
        &self,
        rules: &RuleSet,
        municipality: IbgeMunicipality,
        at: Month,
    ) -> BTreeMap<String, (Period, f64)> {
        let mut out = BTreeMap::new();
        for r in &rules.indicators.follow_up_rates {
            let latest = self
                .rows
                .iter()
                .filter(|(k, c)| {
                    k.municipality == municipality
                        && k.conditionality == r.conditionality
                        && k.period.last_month() <= at
                        && c.public > 0
                })
                .max_by_key(|(k, _)| k.period.last_month());
            if let Some((k, c)) = latest
                && let Some(rate) = c.follow_up_rate()
            {
                out.insert(r.name.clone(), (k.period, rate));
            }
        }
        out
    }
}

fn key(o: &Outcome) -> IndicatorKey {
    IndicatorKey {
        municipality: o.municipality,
        conditionality: o.conditionality.clone(),
        period: o.period,
    }
}

impl RuleSet {
    /// Fator I = Σ weightᵢ · rateᵢ over the rule set's terms. `rates` holds every rate by name
    /// (computed follow-up rates and those supplied by the registry side, such as TAC).
    pub fn fator_i(&self, rates: &BTreeMap<String, f64>) -> Result<f64, IndicatorError> {
        if self.indicators.fator_i.is_empty() {
            return Err(IndicatorError::NoFormula(self.id.clone()));
        }
        self.indicators.fator_i.iter().try_fold(0.0, |acc, w| {
            rates
                .get(&w.rate)
                .map(|r| acc + w.weight * r)
                .ok_or_else(|| IndicatorError::MissingRate(w.rate.clone()))
        })
    }
}
