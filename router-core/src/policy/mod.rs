//! The policy document: the whole routing configuration as one serde document.
//!
//! ```json
//! {"models": [...], "endpoints": [...], "default_strategy": "power_of_two", "heartbeat_ttl_ms": 30000}
//! ```
//!
//! Router settings ([`RouterConfig`]) sit at the top level beside `models` and `endpoints`.
//! Later versions add rules, agent preferences, workspaces and experiments here.

use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::rules::Rule;
use crate::RouterConfig;
use std::collections::BTreeMap;

mod tenancy;

pub(crate) use tenancy::{model_filter, quality, Quality, TenancyDrop, WorkspaceMap};
pub use tenancy::{AgentPreferences, PerformanceRequirements, QualityRequirements, WorkspaceConfig};

/// Every model, endpoint and router setting.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Policy {
    /// The models.
    #[serde(default)]
    pub models: Vec<Model>,
    /// Their endpoints; each names its model with `model_id`.
    #[serde(default, alias = "heads")]
    pub endpoints: Vec<Endpoint>,
    /// Routing rules; the highest-priority enabled match wins.
    #[serde(default, alias = "routingRules", skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// Preferences per agent type.
    #[serde(default, alias = "agentPreferences", skip_serializing_if = "BTreeMap::is_empty")]
    pub agents: BTreeMap<String, AgentPreferences>,
    /// Configuration per workspace id.
    #[serde(default, alias = "workspaceConfigs", skip_serializing_if = "BTreeMap::is_empty")]
    pub workspaces: BTreeMap<String, WorkspaceConfig>,
    /// Router-wide settings.
    #[serde(flatten)]
    pub settings: RouterConfig,
}

impl Policy {
    /// Parse a policy from JSON. Errors name the path of the offending field.
    pub fn from_json(json: &str) -> Result<Self> {
        crate::parse_json(json, "policy").map_err(|e| {
            // serde cannot track paths through the flattened settings: on failure, parse the
            // settings alone to name the field.
            let Ok(serde_json::Value::Object(mut doc)) = serde_json::from_str::<serde_json::Value>(json) else {
                return e;
            };
            for k in [
                "models",
                "endpoints",
                "heads",
                "rules",
                "routingRules",
                "agents",
                "agentPreferences",
                "workspaces",
                "workspaceConfigs",
            ] {
                doc.remove(k);
            }
            match serde_path_to_error::deserialize::<_, RouterConfig>(serde_json::Value::Object(doc)) {
                Err(se) if se.path().to_string() != "." => {
                    let path = se.path().to_string();
                    Error::Parse {
                        what: "policy",
                        message: format!("{path}: {}", se.into_inner()),
                    }
                }
                _ => e,
            }
        })
    }

    /// Parse a policy from YAML (the same document as JSON, written as YAML). Errors name the
    /// path of the offending field.
    pub fn from_yaml(yaml: &str) -> Result<Self> {
        let de = serde_yaml_ng::Deserializer::from_str(yaml);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            Error::Parse {
                what: "policy",
                message: if path == "." {
                    inner.to_string()
                } else {
                    format!("{path}: {inner}")
                },
            }
        })
    }

    /// Parse a policy from JSON or YAML: a document whose first non-blank character is `{`
    /// is JSON, anything else YAML.
    pub fn from_str_any(text: &str) -> Result<Self> {
        if text.trim_start().starts_with('{') {
            Self::from_json(text)
        } else {
            Self::from_yaml(text)
        }
    }

    /// Read a policy from a file: YAML for `.yaml` / `.yml`, JSON for `.json`, else by content.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::Parse {
            what: "policy",
            message: format!("cannot read {}: {e}", path.display()),
        })?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Self::from_yaml(&text),
            Some("json") => Self::from_json(&text),
            _ => Self::from_str_any(&text),
        }
    }

    /// The policy as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a policy always serialises")
    }

    /// The policy as YAML.
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).expect("a policy always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_example_parses() {
        let p = Policy::from_json(
            r#"{
            "models": [
                {"id": "gpt-4", "provider": "openai", "model_type": "chat",
                 "pricing": {"input_per_1k": 0.01, "output_per_1k": 0.03}},
                {"id": "claude-3-sonnet", "provider": "anthropic", "model_type": "chat",
                 "pricing": {"input_per_1k": 0.003, "output_per_1k": 0.015}}
            ],
            "endpoints": [
                {"id": "gpt4-east", "model_id": "gpt-4", "url": "http://10.0.0.1/v1", "region": "us-east"},
                {"id": "claude-east", "model_id": "claude-3-sonnet", "url": "http://10.0.0.3/v1"}
            ],
            "default_strategy": "power_of_two"
        }"#,
        )
        .unwrap();
        assert_eq!(p.models.len(), 2);
        assert_eq!(p.settings.default_strategy, crate::StrategyKind::PowerOfTwo);
        let back = Policy::from_json(&p.to_json()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn bad_types_name_their_path() {
        let e = Policy::from_json(r#"{"endpoints": [{"id": "e", "model_id": "m", "url": "u", "weight": "heavy"}]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("endpoints[0].weight"), "{e}");
        let e = Policy::from_json("{not json").unwrap_err();
        assert_eq!(e.kind(), "parse");
    }
}
