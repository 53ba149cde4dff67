//! Builders for Unidos households: the registry's profile, members with identities and the
//! evidence records of each source.

use std::collections::BTreeMap;

use ponte_domain::achievements::{
    AchievementRuleSet, AchievementState, Decimal, EvidenceRecord, HouseholdEvaluation,
    HouseholdId, HouseholdProfile, HouseholdRecord, HouseholdState, Member, Subject, Value, Zone,
};
use ponte_domain::colombia::{
    Divipola, Document, HeldDocument, PersonIdentity, PersonKey, SisbenGroup,
};
use ponte_domain::records::Sex;

use super::{date, rules_dir};

/// The evaluation day of the tests; evidence counts from 2024-06-30 (12 months, decision U6).
pub const ON: &str = "2025-06-30";

/// The extreme poverty line the tests' registry supplies: 2024, national (227,220 pesos per
/// person per month; docs/sources.md#dane-pobreza-monetaria).
pub const LINE: i64 = 227_220;

/// Loads `rules/unidos-2021.toml`.
pub fn unidos() -> AchievementRuleSet {
    let text = std::fs::read_to_string(rules_dir().join("unidos-2021.toml")).unwrap();
    AchievementRuleSet::from_toml_str("rules/unidos-2021.toml", &text)
        .unwrap_or_else(|e| panic!("{e}"))
}

pub fn num(n: i64) -> Value {
    Value::Number(Decimal::from_int(n).unwrap())
}

pub fn dec(x: f64) -> Value {
    Value::Number(Decimal::from_f64(x).unwrap())
}

pub fn text(s: &str) -> Value {
    Value::from(s)
}

pub fn yes() -> Value {
    Value::Bool(true)
}

pub fn no() -> Value {
    Value::Bool(false)
}

/// A household under construction: Pasto (52001), urban, Sisbén A2, linked to Unidos, the 2024
/// extreme poverty line, no members, no evidence.
#[derive(Debug, Clone)]
pub struct Hh {
    pub profile: HouseholdProfile,
    pub records: Vec<EvidenceRecord>,
}

pub fn hh() -> Hh {
    Hh {
        profile: HouseholdProfile {
            record_id: "unidos-registry:hh1".to_owned(),
            version: 1,
            retracted: false,
            household_id: HouseholdId::from("hh1"),
            municipality: Divipola::parse("52001").unwrap(),
            zone: Some(Zone::Urban),
            sisben_group: Some(SisbenGroup::parse("A2").unwrap()),
            programmes: ["UNIDOS".to_owned()].into(),
            members: Vec::new(),
            figures: [(
                "extreme_poverty_line".to_owned(),
                Decimal::from_int(LINE).unwrap(),
            )]
            .into(),
            ipm_deprivations: BTreeMap::new(),
        },
        records: Vec::new(),
    }
}

impl Hh {
    pub fn zone(mut self, zone: Option<Zone>) -> Self {
        self.profile.zone = zone;
        self
    }

    /// A member keyed by the registry (`registry:<id>`), with no document.
    pub fn person(self, id: &str, born: &str, sex: Sex) -> Self {
        self.person_docs(id, Some(born), Some(sex), &[])
    }

    /// A member with documents `(type, number, from)`; keyed by the NUIP when one is national.
    pub fn person_docs(
        mut self,
        id: &str,
        born: Option<&str>,
        sex: Option<Sex>,
        docs: &[(&str, &str, &str)],
    ) -> Self {
        let documents = docs
            .iter()
            .map(|(t, n, from)| HeldDocument {
                document: Document::parse_coded(t, n).unwrap(),
                from: date(from),
            })
            .collect();
        let identity =
            PersonIdentity::from_documents(born.map(date), Some(id.to_owned()), documents).unwrap();
        self.profile.members.push(Member { identity, sex });
        self
    }

    pub fn figure(mut self, name: &str, value: Option<i64>) -> Self {
        match value {
            Some(v) => {
                self.profile
                    .figures
                    .insert(name.to_owned(), Decimal::from_int(v).unwrap());
            }
            None => {
                self.profile.figures.remove(name);
            }
        }
        self
    }

    pub fn ipm(mut self, indicators: &[(&str, bool)]) -> Self {
        for (id, deprived) in indicators {
            self.profile
                .ipm_deprivations
                .insert((*id).to_owned(), *deprived);
        }
        self
    }

    /// The key of the member whose registry id is `id`.
    pub fn key(&self, id: &str) -> PersonKey {
        self.profile
            .members
            .iter()
            .find(|m| m.identity.registry_member() == Some(id))
            .unwrap_or_else(|| panic!("no member {id}"))
            .key()
            .clone()
    }

    /// A record of `source` about `subject` (`household` or a member's registry id).
    pub fn rec(mut self, source: &str, subject: &str, on: &str, items: &[(&str, Value)]) -> Self {
        let subject = if subject == "household" {
            Subject::Household
        } else {
            Subject::Member(self.key(subject))
        };
        let n = self.records.len();
        self.records.push(EvidenceRecord {
            record_id: format!("{source}:{n}"),
            version: 1,
            retracted: false,
            household_id: self.profile.household_id.clone(),
            source: source.to_owned(),
            subject,
            recorded_on: date(on),
            recorded_by: match source {
                "visit" => "cogestor-17",
                "education" => "simat",
                "health" => "ips-52001",
                _ => "unidos-registry",
            }
            .to_owned(),
            items: items
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        });
        self
    }

    pub fn visit(self, subject: &str, on: &str, items: &[(&str, Value)]) -> Self {
        self.rec("visit", subject, on, items)
    }

    pub fn state(&self) -> HouseholdState {
        let mut s = HouseholdState::new(self.profile.household_id.clone());
        s.apply(HouseholdRecord::Profile(self.profile.clone()))
            .unwrap();
        for r in &self.records {
            s.apply(HouseholdRecord::Evidence(r.clone())).unwrap();
        }
        s
    }

    pub fn eval_with(&self, rs: &AchievementRuleSet) -> HouseholdEvaluation {
        rs.evaluate(&self.state(), date(ON))
            .expect("the household is in the programme")
    }

    pub fn eval(&self) -> HouseholdEvaluation {
        self.eval_with(&unidos())
    }

    /// The household's state for an achievement.
    pub fn achievement(&self, id: &str) -> AchievementState {
        self.eval()
            .achievement(id)
            .unwrap_or_else(|| panic!("no achievement {id}"))
            .state
    }
}
