//! Agent preferences and workspace configuration: filters applied to every decision.
//!
//! The seed's "Set Agent Preferences" and "Set Workspace Config" bodies parse as written
//! (`router-core/tests/fixtures/`). Budgets are stored here and enforced by the cost module.

use serde::{Deserialize, Serialize};

use crate::budget::BudgetLimits;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::state::{hash_id, same_bytes, SmallStr};

/// What an agent type prefers and requires.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentPreferences {
    /// Models tried first when no rule matches (in the requested type).
    #[serde(alias = "preferredModels", skip_serializing_if = "Vec::is_empty")]
    pub preferred_models: Vec<String>,
    /// Models used when no preferred model can serve.
    #[serde(alias = "fallbackModels", skip_serializing_if = "Vec::is_empty")]
    pub fallback_models: Vec<String>,
    /// Capabilities every candidate model must declare.
    #[serde(alias = "requiredCapabilities", skip_serializing_if = "Vec::is_empty")]
    pub required_capabilities: Vec<String>,
    /// Quality and price bounds.
    #[serde(alias = "performanceRequirements", skip_serializing_if = "Option::is_none")]
    pub performance_requirements: Option<PerformanceRequirements>,
    /// How the model is chosen among this agent type's candidates when no rule with its own
    /// `model_selection` matched (default: the router's `adaptive.enabled`).
    #[serde(alias = "modelSelection", skip_serializing_if = "Option::is_none")]
    pub model_selection: Option<crate::adaptive::ModelSelection>,
}

/// An agent's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PerformanceRequirements {
    /// Endpoints slower than this (latency EWMA, ms) are left out.
    #[serde(alias = "maxLatency", skip_serializing_if = "Option::is_none")]
    pub max_latency: Option<f64>,
    /// Endpoints with a lower success rate are left out.
    #[serde(alias = "minSuccessRate", skip_serializing_if = "Option::is_none")]
    pub min_success_rate: Option<f64>,
    /// Models dearer than this per token (blended price per 1k / 1,000) are left out.
    #[serde(alias = "maxCostPerToken", skip_serializing_if = "Option::is_none")]
    pub max_cost_per_token: Option<f64>,
}

/// The workspaces' configurations as a router keeps them: hashed, as every decision with a
/// workspace id looks its workspace up (a policy document keeps them in id order). Each entry
/// keeps its id inline (up to 22 bytes) and its hash, so that a lookup compares the id in the
/// entry it then returns, without following the id's pointer or calling `memcmp`.
#[derive(Debug, Clone, Default)]
pub(crate) struct WorkspaceMap {
    entries: hashbrown::HashTable<WorkspaceEntry>,
    /// How many of the workspaces have a budget with a limit set: with none, a decision
    /// reads no accounting plan for its workspace.
    budgeted: usize,
}

#[derive(Debug, Clone)]
struct WorkspaceEntry {
    hash: u64,
    key: SmallStr<22>,
    id: String,
    cfg: WorkspaceConfig,
}

impl WorkspaceMap {
    /// The configuration of workspace `id`.
    #[inline]
    pub(crate) fn get(&self, id: &str) -> Option<&WorkspaceConfig> {
        if self.entries.is_empty() {
            return None;
        }
        let id = id.as_bytes();
        self.entries
            .find(hash_id(id), |e| same_bytes(e.key.as_bytes(), id))
            .map(|e| &e.cfg)
    }

    /// Set the configuration of workspace `id`; the one it replaces.
    pub(crate) fn insert(&mut self, id: String, cfg: WorkspaceConfig) -> Option<WorkspaceConfig> {
        let hash = hash_id(id.as_bytes());
        let same = |e: &WorkspaceEntry| same_bytes(e.key.as_bytes(), id.as_bytes());
        self.budgeted += usize::from(cfg.has_budget());
        match self.entries.entry(hash, same, |e| e.hash) {
            hashbrown::hash_table::Entry::Occupied(mut e) => {
                let old = std::mem::replace(&mut e.get_mut().cfg, cfg);
                self.budgeted -= usize::from(old.has_budget());
                Some(old)
            }
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(WorkspaceEntry {
                    hash,
                    key: SmallStr::new(&id),
                    id,
                    cfg,
                });
                None
            }
        }
    }

    /// Remove workspace `id`; its configuration.
    pub(crate) fn remove(&mut self, id: &str) -> Option<WorkspaceConfig> {
        let hash = hash_id(id.as_bytes());
        let e = self
            .entries
            .find_entry(hash, |e| same_bytes(e.key.as_bytes(), id.as_bytes()));
        let cfg = e.ok().map(|e| e.remove().0.cfg)?;
        self.budgeted -= usize::from(cfg.has_budget());
        Some(cfg)
    }

    /// The workspaces and their configurations, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &WorkspaceConfig)> {
        self.entries.iter().map(|e| (&e.id, &e.cfg))
    }

    /// Whether any workspace has a budget with a limit set.
    #[inline]
    pub(crate) fn any_budget(&self) -> bool {
        self.budgeted != 0
    }
}

impl FromIterator<(String, WorkspaceConfig)> for WorkspaceMap {
    fn from_iter<I: IntoIterator<Item = (String, WorkspaceConfig)>>(iter: I) -> Self {
        let mut m = WorkspaceMap::default();
        for (id, cfg) in iter {
            m.insert(id, cfg);
        }
        m
    }
}

/// A workspace's configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkspaceConfig {
    /// The only models the workspace may use (empty: any).
    #[serde(alias = "modelRestrictions", skip_serializing_if = "Vec::is_empty")]
    pub model_restrictions: Vec<String>,
    /// Spending limits (enforced by the cost module).
    #[serde(alias = "budgetLimits", skip_serializing_if = "Option::is_none")]
    pub budget_limits: Option<BudgetLimits>,
    /// Quality floor for the endpoints it uses.
    #[serde(alias = "qualityRequirements", skip_serializing_if = "Option::is_none")]
    pub quality_requirements: Option<QualityRequirements>,
    /// Labels every model it uses must carry (e.g. `gdpr`, `hipaa`).
    #[serde(alias = "complianceRequirements", skip_serializing_if = "Vec::is_empty")]
    pub compliance_requirements: Vec<String>,
}

/// A workspace's quality floor.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct QualityRequirements {
    /// Endpoints with a lower success rate are left out.
    #[serde(alias = "minSuccessRate", skip_serializing_if = "Option::is_none")]
    pub min_success_rate: Option<f64>,
    /// Endpoints slower than this (latency EWMA, ms) are left out.
    #[serde(alias = "maxLatency", skip_serializing_if = "Option::is_none")]
    pub max_latency: Option<f64>,
}

fn check(field: &str, v: Option<f64>, unit: bool) -> Result<()> {
    match v {
        Some(x) if !x.is_finite() || x < 0.0 || (unit && x > 1.0) => Err(Error::config(
            field.to_owned(),
            if unit {
                format!("must be in [0, 1], got {x}")
            } else {
                format!("must be a finite number >= 0, got {x}")
            },
        )),
        _ => Ok(()),
    }
}

impl AgentPreferences {
    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(p) = &self.performance_requirements {
            check("performance_requirements.max_latency", p.max_latency, false)?;
            check("performance_requirements.min_success_rate", p.min_success_rate, true)?;
            check(
                "performance_requirements.max_cost_per_token",
                p.max_cost_per_token,
                false,
            )?;
        }
        Ok(())
    }
}

impl WorkspaceConfig {
    /// Whether it sets a budget with a limit in some window.
    pub(crate) fn has_budget(&self) -> bool {
        self.budget_limits.as_ref().is_some_and(BudgetLimits::is_set)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(b) = &self.budget_limits {
            b.validate().map_err(|e| e.at("budget_limits"))?;
        }
        if let Some(q) = &self.quality_requirements {
            check("quality_requirements.min_success_rate", q.min_success_rate, true)?;
            check("quality_requirements.max_latency", q.max_latency, false)?;
        }
        Ok(())
    }
}

/// Why a model is filtered out for a request's agent and workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TenancyDrop {
    Restricted,
    MissingCompliance,
    MissingCapability,
    TooCostly,
}

/// Whether `model` passes the agent's and the workspace's model-level filters.
pub(crate) fn model_filter(
    model: &Model,
    agent: Option<&AgentPreferences>,
    ws: Option<&WorkspaceConfig>,
) -> Option<TenancyDrop> {
    if let Some(ws) = ws {
        if !ws.model_restrictions.is_empty() && !ws.model_restrictions.contains(&model.id) {
            return Some(TenancyDrop::Restricted);
        }
        if !ws
            .compliance_requirements
            .iter()
            .all(|c| model.compliance_labels.iter().any(|l| l == c))
        {
            return Some(TenancyDrop::MissingCompliance);
        }
    }
    if let Some(a) = agent {
        if !a.required_capabilities.iter().all(|c| model.has_capability(c)) {
            return Some(TenancyDrop::MissingCapability);
        }
        if let Some(max) = a.performance_requirements.and_then(|p| p.max_cost_per_token) {
            if model.pricing.blended_per_1k() / 1000.0 > max {
                return Some(TenancyDrop::TooCostly);
            }
        }
    }
    None
}

/// The quality floor for endpoints: the stricter of the agent's and the workspace's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Quality {
    pub(crate) min_success_rate: f64,
    pub(crate) max_latency_ms: f64,
}

pub(crate) fn quality(agent: Option<&AgentPreferences>, ws: Option<&WorkspaceConfig>) -> Option<Quality> {
    let a = agent.and_then(|a| a.performance_requirements);
    let w = ws.and_then(|w| w.quality_requirements);
    let min = [a.and_then(|p| p.min_success_rate), w.and_then(|q| q.min_success_rate)]
        .into_iter()
        .flatten()
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    let max = [a.and_then(|p| p.max_latency), w.and_then(|q| q.max_latency)]
        .into_iter()
        .flatten()
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.min(x))));
    (min.is_some() || max.is_some()).then(|| Quality {
        min_success_rate: min.unwrap_or(0.0),
        max_latency_ms: max.unwrap_or(f64::INFINITY),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(daily: Option<f64>) -> WorkspaceConfig {
        WorkspaceConfig {
            budget_limits: Some(BudgetLimits {
                daily,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_map_counts_its_budgeted_workspaces_through_every_change() {
        let mut m: WorkspaceMap = [
            ("a".to_owned(), cfg(None)),
            ("b".to_owned(), WorkspaceConfig::default()),
        ]
        .into_iter()
        .collect();
        assert!(!m.any_budget(), "a budget with no window set is no budget");
        m.insert("a".into(), cfg(Some(1.0)));
        assert!(m.any_budget());
        m.insert("b".into(), cfg(Some(2.0)));
        m.insert("a".into(), cfg(Some(3.0)));
        m.insert("a".into(), WorkspaceConfig::default());
        assert!(m.any_budget(), "b still has one");
        assert!(m.remove("b").is_some());
        assert!(!m.any_budget());
        assert!(m.remove("b").is_none());
        assert!(!m.any_budget());
        m.insert("c".into(), cfg(Some(1.0)));
        assert!(m.get("c").is_some_and(|c| c.budget_limits.is_some()));
        assert!(m.any_budget());
    }
}
