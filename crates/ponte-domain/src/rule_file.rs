//! A rule file of either engine: conditionalities ([`crate::rules::RuleSet`]) or household
//! achievements ([`crate::achievements::AchievementRuleSet`]). A file with `[[achievement]]`
//! blocks is read as the latter; any other as the former, so a conditionality file keeps
//! exactly the errors it had.

use crate::achievements::AchievementRuleSet;
use crate::rules::{RuleSet, RuleSetError, parse_toml};

/// A loaded rule file.
#[derive(Debug, Clone)]
pub enum RuleFile {
    /// Conditionalities, effects and indicators (Bolsa Família and the example programme).
    Conditionalities(Box<RuleSet>),
    /// Household achievements and exit criteria (Unidos).
    Achievements(Box<AchievementRuleSet>),
}

impl RuleFile {
    /// Parses a rule file with the loader its content calls for.
    pub fn from_toml_str(name_for_errors: &str, text: &str) -> Result<RuleFile, RuleSetError> {
        let table: toml::Table = parse_toml(name_for_errors, text)?;
        if table.contains_key("achievement") {
            AchievementRuleSet::from_toml_str(name_for_errors, text)
                .map(|r| RuleFile::Achievements(Box::new(r)))
        } else {
            RuleSet::from_toml_str(name_for_errors, text)
                .map(|r| RuleFile::Conditionalities(Box::new(r)))
        }
    }

    /// The rule set's id.
    pub fn id(&self) -> &str {
        match self {
            RuleFile::Conditionalities(r) => &r.id,
            RuleFile::Achievements(r) => &r.id,
        }
    }
}
