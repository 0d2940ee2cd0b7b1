//! Models: the logical models a request can be routed to.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::strategy::StrategyKind;

/// A logical model (`gpt-4`, `claude-3-sonnet`): what a request asks for. Its serving instances
/// are [`Endpoint`](crate::Endpoint)s.
///
/// Fields are snake_case; the camelCase names of the routing-service API (`modelType`,
/// `maxTokens`, ...) are accepted too, so the seed's "Register Model" body parses as written.
/// When `id` is empty the registry uses `version`, then `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Model {
    /// Unique id, used by requests, rules and endpoints.
    pub id: String,
    /// Display name, e.g. `GPT-4 Turbo`.
    pub name: String,
    /// Provider's version string, e.g. `gpt-4-1106-preview`.
    pub version: String,
    /// Provider, e.g. `openai`.
    pub provider: String,
    /// What kind of model it is.
    #[serde(alias = "modelType", alias = "type")]
    pub model_type: ModelType,
    /// What it can do, with token limits.
    pub capabilities: Vec<Capability>,
    /// Price per 1,000 tokens.
    pub pricing: Pricing,
    /// Lifecycle status: only `active` models are chosen by type; `deprecated` ones only when
    /// asked for by id; `inactive` ones never.
    pub status: ModelStatus,
    /// Free-form tags, e.g. `high-quality`.
    pub tags: Vec<String>,
    /// Compliance labels such as `gdpr`, `hipaa`.
    #[serde(alias = "complianceLabels", alias = "compliance")]
    pub compliance_labels: Vec<String>,
    /// Default generation parameters, passed through untouched.
    pub parameters: serde_json::Map<String, serde_json::Value>,
    /// The strategy used for this model's endpoints when the request names none.
    #[serde(
        alias = "routingStrategy",
        alias = "strategy",
        skip_serializing_if = "Option::is_none"
    )]
    pub routing_strategy: Option<StrategyKind>,
    /// Overrides the router's `panic_mode` for this model.
    #[serde(alias = "panicMode", skip_serializing_if = "Option::is_none")]
    pub panic_mode: Option<crate::PanicMode>,
}

impl Model {
    /// A chat model with the given id and provider, active, with no pricing.
    pub fn new(id: impl Into<String>, provider: impl Into<String>) -> Self {
        Model {
            id: id.into(),
            provider: provider.into(),
            ..Default::default()
        }
    }

    /// Set the model type.
    pub fn with_type(mut self, model_type: ModelType) -> Self {
        self.model_type = model_type;
        self
    }

    /// Set the price per 1,000 input and output tokens.
    pub fn with_pricing(mut self, input_per_1k: f64, output_per_1k: f64) -> Self {
        self.pricing = Pricing {
            input_per_1k,
            output_per_1k,
            per_request: 0.0,
        };
        self
    }

    /// Add a capability.
    pub fn with_capability(mut self, kind: impl Into<String>, max_tokens: Option<u32>) -> Self {
        self.capabilities.push(Capability {
            kind: kind.into(),
            max_tokens,
        });
        self
    }

    /// Fill the id from version or name when empty, then check every field.
    pub(crate) fn normalize(&mut self) -> Result<()> {
        if self.id.trim().is_empty() {
            self.id = if !self.version.trim().is_empty() {
                self.version.clone()
            } else {
                self.name.clone()
            };
        }
        check_id(&self.id, "id")?;
        self.pricing.validate().map_err(|e| e.at("pricing"))?;
        for (i, c) in self.capabilities.iter().enumerate() {
            if c.kind.trim().is_empty() {
                return Err(Error::config(format!("capabilities[{i}].kind"), "must not be empty"));
            }
        }
        Ok(())
    }

    /// Whether the model declares a capability of this kind.
    pub fn has_capability(&self, kind: &str) -> bool {
        self.capabilities.iter().any(|c| c.kind == kind)
    }

    /// The largest token limit the model declares, if it declares any.
    pub fn max_tokens(&self) -> Option<u32> {
        self.capabilities.iter().filter_map(|c| c.max_tokens).max()
    }
}

/// Check an id: non-empty, at most 256 bytes, no control characters.
pub(crate) fn check_id(id: &str, field: &'static str) -> Result<()> {
    if id.trim().is_empty() {
        return Err(Error::config(field, "must not be empty"));
    }
    if id.len() > 256 {
        return Err(Error::config(
            field,
            format!("is {} bytes long; the limit is 256", id.len()),
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(Error::config(field, "must not contain control characters"));
    }
    Ok(())
}

/// What kind of model: `chat`, `completion`, `embedding`, ... or any other name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum ModelType {
    /// Chat completion.
    #[default]
    Chat,
    /// Text completion.
    Completion,
    /// Embeddings.
    Embedding,
    /// Image generation.
    Image,
    /// Speech or audio.
    Audio,
    /// Reranking.
    Rerank,
    /// Moderation.
    Moderation,
    /// Any other type, by name.
    Other(Arc<str>),
}

impl ModelType {
    /// The type's name as it appears in documents.
    pub fn as_str(&self) -> &str {
        match self {
            ModelType::Chat => "chat",
            ModelType::Completion => "completion",
            ModelType::Embedding => "embedding",
            ModelType::Image => "image",
            ModelType::Audio => "audio",
            ModelType::Rerank => "rerank",
            ModelType::Moderation => "moderation",
            ModelType::Other(s) => s,
        }
    }
}

impl From<&str> for ModelType {
    fn from(s: &str) -> Self {
        match s.trim().to_ascii_lowercase().as_str() {
            "chat" => ModelType::Chat,
            "completion" | "text" => ModelType::Completion,
            "embedding" | "embeddings" => ModelType::Embedding,
            "image" => ModelType::Image,
            "audio" => ModelType::Audio,
            "rerank" => ModelType::Rerank,
            "moderation" => ModelType::Moderation,
            other => ModelType::Other(Arc::from(other)),
        }
    }
}

impl From<String> for ModelType {
    fn from(s: String) -> Self {
        ModelType::from(s.as_str())
    }
}

impl From<ModelType> for String {
    fn from(t: ModelType) -> Self {
        t.as_str().to_owned()
    }
}

impl fmt::Display for ModelType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing a model can do (`text-generation`, `vision`, `function-calling`), with its limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capability {
    /// The capability's name.
    #[serde(rename = "kind", alias = "type")]
    pub kind: String,
    /// The most tokens a request may carry for it.
    #[serde(default, alias = "maxTokens", skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
}

/// Prices in the account's currency (USD by convention).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Pricing {
    /// Price per 1,000 prompt tokens.
    #[serde(alias = "inputPer1k", alias = "input")]
    pub input_per_1k: f64,
    /// Price per 1,000 completion tokens.
    #[serde(alias = "outputPer1k", alias = "output")]
    pub output_per_1k: f64,
    /// A fixed fee per request.
    #[serde(alias = "perRequest")]
    pub per_request: f64,
}

impl Pricing {
    /// The cost of a request with these token counts.
    pub fn cost(&self, tokens_in: u64, tokens_out: u64) -> f64 {
        self.per_request
            + self.input_per_1k * tokens_in as f64 / 1000.0
            + self.output_per_1k * tokens_out as f64 / 1000.0
    }

    /// One number to compare prices by: input and output per 1k, averaged, plus the fee.
    pub fn blended_per_1k(&self) -> f64 {
        (self.input_per_1k + self.output_per_1k) / 2.0 + self.per_request
    }

    pub(crate) fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("input_per_1k", self.input_per_1k),
            ("output_per_1k", self.output_per_1k),
            ("per_request", self.per_request),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(Error::config(name, format!("must be a finite number >= 0, got {v}")));
            }
        }
        Ok(())
    }
}

/// A model's lifecycle status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelStatus {
    /// Serving traffic.
    #[default]
    Active,
    /// Never chosen.
    Inactive,
    /// Chosen only when a request names it by id.
    Deprecated,
}

impl ModelStatus {
    /// The status's name as it appears in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelStatus::Active => "active",
            ModelStatus::Inactive => "inactive",
            ModelStatus::Deprecated => "deprecated",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_register_model_body_parses() {
        let body = r#"{
          "name": "GPT-4 Turbo", "version": "gpt-4-1106-preview", "provider": "openai",
          "modelType": "chat",
          "capabilities": [{"type": "text-generation", "maxTokens": 4096}],
          "parameters": {"temperature": 0.7, "maxTokens": 4096},
          "status": "active", "tags": ["gpt-4", "high-quality", "reasoning"]
        }"#;
        let mut m: Model = serde_json::from_str(body).unwrap();
        m.normalize().unwrap();
        assert_eq!(m.id, "gpt-4-1106-preview");
        assert_eq!(m.model_type, ModelType::Chat);
        assert_eq!(m.max_tokens(), Some(4096));
        assert!(m.has_capability("text-generation"));
        let back: Model = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn negative_price_names_its_field() {
        let mut m = Model::new("m", "p").with_pricing(-1.0, 0.0);
        let e = m.normalize().unwrap_err();
        assert_eq!(e.field(), Some("pricing.input_per_1k"));
    }

    #[test]
    fn other_model_types_round_trip() {
        let t: ModelType = serde_json::from_str("\"video\"").unwrap();
        assert_eq!(t.as_str(), "video");
        assert_eq!(serde_json::to_string(&ModelType::Embedding).unwrap(), "\"embedding\"");
    }
}
