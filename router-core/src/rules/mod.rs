//! Routing rules: a condition over the request, target models with weights and fallback order,
//! an optional primary/canary traffic split, a priority.
//!
//! The seed's "Add Routing Rule" body is a valid [`Rule`]. Rules are compiled when they are
//! accepted (every regex once) and indexed by agent type; the decision path walks the rules
//! that can apply to the request's agent type in priority order and stops at the first match.
//! The highest-priority enabled matching rule wins; equal priorities are broken by id, so the
//! choice is deterministic.

mod condition;

pub(crate) use condition::CompiledCondition;
pub use condition::{Condition, LengthRange, MatchOp, Matcher, Mismatch};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::strategy::StrategyKind;

/// A routing rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// Unique id; assigned (`rule-<n>`) when empty.
    #[serde(default)]
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// When the rule applies; an empty condition matches every request.
    #[serde(default)]
    pub condition: Condition,
    /// The models it sends traffic to.
    #[serde(alias = "targetModels")]
    pub target_models: Vec<TargetModel>,
    /// Share of traffic for canaries, in percent.
    #[serde(default, alias = "trafficSplit", skip_serializing_if = "Option::is_none")]
    pub traffic_split: Option<TrafficSplit>,
    /// Higher wins.
    #[serde(default)]
    pub priority: i64,
    /// Disabled rules never match.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The strategy for requests this rule matches (a request override still wins).
    #[serde(default, alias = "routingStrategy", skip_serializing_if = "Option::is_none")]
    pub strategy: Option<StrategyKind>,
    /// How the model is chosen among the targets (default: the router's `adaptive.enabled`).
    #[serde(default, alias = "modelSelection", skip_serializing_if = "Option::is_none")]
    pub model_selection: Option<crate::adaptive::ModelSelection>,
}

fn yes() -> bool {
    true
}

/// A model a rule sends traffic to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetModel {
    /// The model.
    #[serde(alias = "modelId")]
    pub model_id: String,
    /// Its share of the rule's traffic, relative to the other targets.
    #[serde(default = "one")]
    pub weight: f64,
    /// Its place in the failover order (lower first).
    #[serde(default, alias = "fallbackOrder", skip_serializing_if = "Option::is_none")]
    pub fallback_order: Option<u32>,
    /// Whether this model is the canary of the rule's traffic split.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub canary: bool,
}

fn one() -> f64 {
    1.0
}

/// A primary/canary split in percent; the two add up to 100.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrafficSplit {
    /// Percent to primary endpoints.
    pub primary: f64,
    /// Percent to canaries: endpoints of kind `canary`, and target models marked `canary`.
    pub canary: f64,
}

impl Rule {
    /// Check the rule against the known model ids and compile its condition.
    pub(crate) fn compile(&self, model_exists: impl Fn(&str) -> bool) -> Result<CompiledCondition> {
        if self.target_models.is_empty() {
            return Err(Error::config("target_models", "a rule needs at least one target model"));
        }
        for (i, t) in self.target_models.iter().enumerate() {
            if !model_exists(&t.model_id) {
                return Err(Error::config(
                    format!("target_models[{i}].model_id"),
                    format!("unknown model `{}`", t.model_id),
                ));
            }
            if !t.weight.is_finite() || t.weight < 0.0 {
                return Err(Error::config(
                    format!("target_models[{i}].weight"),
                    format!("must be a finite number >= 0, got {}", t.weight),
                ));
            }
        }
        if self.target_models.iter().all(|t| t.weight == 0.0) {
            return Err(Error::config("target_models", "at least one target needs a weight > 0"));
        }
        if let Some(s) = self.traffic_split {
            let ok = |v: f64| v.is_finite() && (0.0..=100.0).contains(&v);
            if !ok(s.primary) || !ok(s.canary) || (s.primary + s.canary - 100.0).abs() > 1e-9 {
                return Err(Error::config(
                    "traffic_split",
                    format!(
                        "primary and canary must be percentages adding up to 100, got {} + {}",
                        s.primary, s.canary
                    ),
                ));
            }
        }
        self.condition.compile().map_err(|e| e.at("condition"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_rule_parses_and_validates() {
        let r: Rule = serde_json::from_str(include_str!("../../tests/fixtures/seed_rule.json")).unwrap();
        assert_eq!(r.target_models.len(), 2);
        assert_eq!(
            r.traffic_split,
            Some(TrafficSplit {
                primary: 80.0,
                canary: 20.0
            })
        );
        assert!(r.enabled);
        r.compile(|_| true).unwrap();
        let e = r.compile(|m| m != "gpt-4").unwrap_err();
        assert_eq!(e.field(), Some("target_models[1].model_id"));
    }

    #[test]
    fn bad_rules_name_their_field() {
        let mut r: Rule = serde_json::from_str(include_str!("../../tests/fixtures/seed_rule.json")).unwrap();
        r.traffic_split = Some(TrafficSplit {
            primary: 80.0,
            canary: 30.0,
        });
        assert_eq!(r.compile(|_| true).unwrap_err().field(), Some("traffic_split"));
        r.traffic_split = None;
        r.target_models[0].weight = f64::NAN;
        assert_eq!(
            r.compile(|_| true).unwrap_err().field(),
            Some("target_models[0].weight")
        );
        r.target_models.clear();
        assert_eq!(r.compile(|_| true).unwrap_err().field(), Some("target_models"));
    }
}
