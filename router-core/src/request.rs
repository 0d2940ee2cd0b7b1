//! What the host asks for: a [`RouteRequest`].

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::ModelType;
use crate::strategy::StrategyKind;

/// The most characters an id-like field of a request may have.
pub const MAX_REQUEST_FIELD_LEN: usize = 1024;

/// A request to route. Every field is optional; an empty request routes to any active chat model.
///
/// The seed's `/api/route` body parses as written: `id` is the request id, and a `requestType`
/// inside `metadata` counts as the request type when the top-level field is absent.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteRequest {
    /// The caller's request id, echoed in the decision.
    #[serde(alias = "id", alias = "requestId", skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// An explicit model id: only this model is considered.
    #[serde(alias = "model_id", alias = "modelId", skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The model type wanted when no model is named (default: chat).
    #[serde(alias = "modelType", skip_serializing_if = "Option::is_none")]
    pub model_type: Option<ModelType>,
    /// The calling agent's type, e.g. `creative`.
    #[serde(alias = "agentType", skip_serializing_if = "Option::is_none")]
    pub agent_type: Option<String>,
    /// The request type, e.g. `completion`.
    #[serde(alias = "requestType", skip_serializing_if = "Option::is_none")]
    pub request_type: Option<String>,
    /// The tenant's workspace.
    #[serde(alias = "workspaceId", skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    /// The end user.
    #[serde(alias = "userId", skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Preferred region: `geo_preferred` and `hybrid` favour endpoints there.
    #[serde(
        alias = "regionPreference",
        alias = "region",
        skip_serializing_if = "Option::is_none"
    )]
    pub region_preference: Option<String>,
    /// Use this strategy instead of the model's or the router's default.
    #[serde(
        alias = "routing_strategy",
        alias = "routingStrategy",
        skip_serializing_if = "Option::is_none"
    )]
    pub strategy: Option<StrategyKind>,
    /// Key for session stickiness (`consistent_hash`); defaults to the user id, then the workspace.
    #[serde(
        alias = "affinityKey",
        alias = "session_id",
        alias = "sessionId",
        skip_serializing_if = "Option::is_none"
    )]
    pub affinity_key: Option<String>,
    /// The caller's API key (or its id), for per-key rate limits.
    #[serde(alias = "apiKey", skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Length of the prompt in characters.
    #[serde(alias = "contentLength", skip_serializing_if = "Option::is_none")]
    pub content_length: Option<u64>,
    /// Estimated prompt tokens; when absent, `content_length / 4`.
    #[serde(alias = "estimatedTokens", skip_serializing_if = "Option::is_none")]
    pub estimated_tokens: Option<u64>,
    /// Capabilities the model must declare, e.g. `vision`.
    #[serde(alias = "requiredCapabilities", skip_serializing_if = "Vec::is_empty")]
    pub required_capabilities: Vec<String>,
    /// Anything else; rules match on it.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl RouteRequest {
    /// A request for any model of this type.
    pub fn for_type(model_type: ModelType) -> Self {
        RouteRequest {
            model_type: Some(model_type),
            ..Default::default()
        }
    }

    /// A request for one model by id.
    pub fn for_model(model: impl Into<String>) -> Self {
        RouteRequest {
            model: Some(model.into()),
            ..Default::default()
        }
    }

    /// Parse a request from JSON; errors name the field (`content_length: invalid type ...`).
    pub fn from_json(json: &str) -> Result<Self> {
        crate::parse_json(json, "route request")
    }

    /// The request type, from the field or from `metadata.requestType` / `metadata.request_type`.
    pub fn effective_request_type(&self) -> Option<&str> {
        self.request_type.as_deref().or_else(|| {
            ["request_type", "requestType"]
                .iter()
                .find_map(|k| self.metadata.get(*k).and_then(|v| v.as_str()))
        })
    }

    /// Estimated prompt tokens: the given estimate, else `content_length / 4` (about four
    /// characters a token in English text).
    pub fn token_estimate(&self) -> Option<u64> {
        self.estimated_tokens.or(self.content_length.map(|c| c.div_ceil(4)))
    }

    /// The key `consistent_hash` uses: the affinity key, else the user id, else the workspace.
    pub fn affinity(&self) -> Option<&str> {
        self.affinity_key
            .as_deref()
            .or(self.user_id.as_deref())
            .or(self.workspace_id.as_deref())
    }

    /// Reject requests that no honest caller sends (oversized ids).
    pub(crate) fn validate(&self) -> Result<()> {
        // The common case in one pass without branches: every field within its limit.
        let long = |v: &Option<String>| v.as_ref().map_or(0, String::len) > MAX_REQUEST_FIELD_LEN;
        let any_long = long(&self.api_key)
            | long(&self.request_id)
            | long(&self.model)
            | long(&self.agent_type)
            | long(&self.request_type)
            | long(&self.workspace_id)
            | long(&self.user_id)
            | long(&self.region_preference)
            | long(&self.affinity_key);
        if !any_long && self.required_capabilities.len() <= 64 {
            return Ok(());
        }
        let fields: [(&'static str, Option<&str>); 9] = [
            ("api_key", self.api_key.as_deref()),
            ("request_id", self.request_id.as_deref()),
            ("model", self.model.as_deref()),
            ("agent_type", self.agent_type.as_deref()),
            ("request_type", self.request_type.as_deref()),
            ("workspace_id", self.workspace_id.as_deref()),
            ("user_id", self.user_id.as_deref()),
            ("region_preference", self.region_preference.as_deref()),
            ("affinity_key", self.affinity_key.as_deref()),
        ];
        for (name, v) in fields {
            if let Some(v) = v {
                if v.len() > MAX_REQUEST_FIELD_LEN {
                    return Err(Error::request(
                        name,
                        format!("is {} bytes long; the limit is {MAX_REQUEST_FIELD_LEN}", v.len()),
                    ));
                }
            }
        }
        if self.required_capabilities.len() > 64 {
            return Err(Error::request("required_capabilities", "more than 64 entries"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_route_body_parses() {
        let r = RouteRequest::from_json(
            r#"{"id": "req-12345", "agentType": "creative", "workspaceId": "ws-marketing-001",
                "userId": "user-123", "prompt": "Generate a creative marketing message",
                "parameters": {"temperature": 0.8, "maxTokens": 500},
                "metadata": {"requestType": "completion", "priority": "normal"}}"#,
        )
        .unwrap();
        assert_eq!(r.request_id.as_deref(), Some("req-12345"));
        assert_eq!(r.agent_type.as_deref(), Some("creative"));
        assert_eq!(r.effective_request_type(), Some("completion"));
        assert_eq!(r.affinity(), Some("user-123"));
    }

    #[test]
    fn webhook_routing_decision_body_parses() {
        let r = RouteRequest::from_json(
            r#"{"model_type": "chat", "region_preference": "eu-west", "routing_strategy": "least_loaded"}"#,
        )
        .unwrap();
        assert_eq!(r.strategy, Some(StrategyKind::LeastLoaded));
        assert_eq!(r.region_preference.as_deref(), Some("eu-west"));
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = RouteRequest::from_json(r#"{"content_length": "long"}"#).unwrap_err();
        assert_eq!(e.kind(), "parse");
        assert!(e.to_string().contains("content_length"), "{e}");
        let e = RouteRequest::from_json(r#"{"strategy": "fastest"}"#).unwrap_err();
        assert!(e.to_string().contains("strategy"), "{e}");
    }

    #[test]
    fn token_estimate_falls_back_to_length() {
        let r = RouteRequest {
            content_length: Some(401),
            ..Default::default()
        };
        assert_eq!(r.token_estimate(), Some(101));
    }
}
