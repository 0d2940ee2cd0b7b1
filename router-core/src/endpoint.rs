//! Endpoints ("heads"): the serving instances of a model, and the status they report.

use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;

use crate::error::{Error, Result};
use crate::model::{check_id, Pricing};

/// One serving instance of a model: a *head* in the routing-service API.
///
/// The seed's "Register Endpoint" body parses as written (`type`, `healthCheckUrl`); the model
/// id may come from the URL path instead of the body. When `id` is empty the registry names the
/// endpoint `<model_id>#<n>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Unique id (the head id).
    #[serde(default, alias = "head_id", alias = "headId")]
    pub id: String,
    /// The model it serves.
    #[serde(default, alias = "modelId")]
    pub model_id: String,
    /// Where requests go.
    pub url: String,
    /// Primary, canary or fallback.
    #[serde(default, alias = "type")]
    pub kind: EndpointKind,
    /// Relative share of traffic for the weighted strategies; `0` means no traffic at all.
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// Region, e.g. `us-east`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The most requests it takes at once; at capacity it gets no new traffic. The load compared
    /// with it is this instance's in-flight plus the other instances' share of the head's last
    /// reported load, decayed with the report's age.
    #[serde(
        default,
        alias = "maxConcurrent",
        alias = "max_concurrent",
        skip_serializing_if = "Option::is_none"
    )]
    pub capacity: Option<NonZeroU32>,
    /// Where the host's active probes go.
    #[serde(default, alias = "healthCheckUrl", skip_serializing_if = "Option::is_none")]
    pub health_check_url: Option<String>,
    /// Requests per minute this deployment accepts (its provider's quota): while saturated it
    /// takes no traffic. Counted per router instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// Tokens per minute this deployment accepts, counted like `rpm` from the requests' token
    /// estimates and corrected by the reported counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u32>,
    /// Pricing of this deployment when it differs from its model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Pricing>,
    /// Free-form metadata, passed through untouched.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

fn default_weight() -> f64 {
    1.0
}

impl Endpoint {
    /// A primary endpoint of weight 1 with no region.
    pub fn new(id: impl Into<String>, model_id: impl Into<String>, url: impl Into<String>) -> Self {
        Endpoint {
            id: id.into(),
            model_id: model_id.into(),
            url: url.into(),
            kind: EndpointKind::Primary,
            weight: 1.0,
            region: None,
            capacity: None,
            health_check_url: None,
            rpm: None,
            tpm: None,
            pricing: None,
            metadata: serde_json::Map::new(),
        }
    }

    /// Set the weight.
    pub fn with_weight(mut self, weight: f64) -> Self {
        self.weight = weight;
        self
    }

    /// Set the region.
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Set the capacity (max concurrent requests); `0` means no limit.
    pub fn with_capacity(mut self, capacity: u32) -> Self {
        self.capacity = NonZeroU32::new(capacity);
        self
    }

    /// Set the kind.
    pub fn with_kind(mut self, kind: EndpointKind) -> Self {
        self.kind = kind;
        self
    }

    /// Check every field.
    pub(crate) fn validate(&self) -> Result<()> {
        check_id(&self.id, "id")?;
        check_id(&self.model_id, "model_id")?;
        if self.url.trim().is_empty() {
            return Err(Error::config("url", "must not be empty"));
        }
        if !self.weight.is_finite() || self.weight < 0.0 {
            return Err(Error::config(
                "weight",
                format!("must be a finite number >= 0, got {}", self.weight),
            ));
        }
        if let Some(p) = &self.pricing {
            p.validate().map_err(|e| e.at("pricing"))?;
        }
        Ok(())
    }
}

/// The role of an endpoint in a model's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointKind {
    /// Normal traffic.
    #[default]
    Primary,
    /// A new version taking a share of traffic.
    Canary,
    /// Used when primaries cannot take the request.
    Fallback,
}

impl EndpointKind {
    /// The kind's name as it appears in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointKind::Primary => "primary",
            EndpointKind::Canary => "canary",
            EndpointKind::Fallback => "fallback",
        }
    }
}

/// The status a head reports about itself (the `/webhook/head-status` payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadStatus {
    /// Serving normally.
    #[default]
    #[serde(alias = "active", alias = "up", alias = "online", alias = "ok")]
    Healthy,
    /// Serving, but worse than usual: used only when no healthy endpoint can take the request.
    Degraded,
    /// Not serving: no traffic.
    #[serde(alias = "down", alias = "failed")]
    Unhealthy,
    /// Finishing its in-flight requests: no new traffic.
    Draining,
    /// Gone: no traffic.
    #[serde(alias = "inactive")]
    Offline,
}

impl HeadStatus {
    /// The status's name as it appears in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            HeadStatus::Healthy => "healthy",
            HeadStatus::Degraded => "degraded",
            HeadStatus::Unhealthy => "unhealthy",
            HeadStatus::Draining => "draining",
            HeadStatus::Offline => "offline",
        }
    }

    /// Whether an endpoint in this status may take new requests at all.
    pub fn takes_traffic(self) -> bool {
        matches!(self, HeadStatus::Healthy | HeadStatus::Degraded)
    }

    pub(crate) fn to_u8(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => HeadStatus::Healthy,
            1 => HeadStatus::Degraded,
            2 => HeadStatus::Unhealthy,
            3 => HeadStatus::Draining,
            _ => HeadStatus::Offline,
        }
    }
}

/// A head's report of its own status: `POST /webhook/head-status`
/// (`{"head_id", "status", "current_load", "timestamp"}`).
///
/// An update whose `timestamp` is older than the last one applied is ignored (reports can
/// arrive out of order from several instances).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadStatusUpdate {
    /// The endpoint (head) id.
    #[serde(alias = "headId", alias = "endpoint_id", alias = "endpointId")]
    pub head_id: String,
    /// Its status.
    pub status: HeadStatus,
    /// Requests it is serving now, as it counts them.
    #[serde(default, alias = "currentLoad", skip_serializing_if = "Option::is_none")]
    pub current_load: Option<u32>,
    /// When the head measured this, in Unix milliseconds (seconds are accepted and scaled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
}

impl HeadStatusUpdate {
    /// An update with no load and no timestamp.
    pub fn new(head_id: impl Into<String>, status: HeadStatus) -> Self {
        HeadStatusUpdate {
            head_id: head_id.into(),
            status,
            current_load: None,
            timestamp: None,
        }
    }

    /// The timestamp in milliseconds: values below 10^11 are taken as seconds.
    pub(crate) fn timestamp_ms(&self) -> Option<u64> {
        self.timestamp
            .map(|t| if t < 100_000_000_000 { t.saturating_mul(1000) } else { t })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_register_endpoint_body_parses() {
        let body = r#"{"url": "https://api.openai.com/v1/chat/completions", "type": "primary",
                       "weight": 1.0, "healthCheckUrl": "https://api.openai.com/v1/models"}"#;
        let e: Endpoint = serde_json::from_str(body).unwrap();
        assert_eq!(e.kind, EndpointKind::Primary);
        assert_eq!(e.health_check_url.as_deref(), Some("https://api.openai.com/v1/models"));
        assert_eq!(e.weight, 1.0);
    }

    #[test]
    fn head_status_payload_parses_and_rejects_negative_load() {
        let u: HeadStatusUpdate = serde_json::from_str(
            r#"{"head_id": "h1", "status": "degraded", "current_load": 7, "timestamp": 1700000000}"#,
        )
        .unwrap();
        assert_eq!(u.status, HeadStatus::Degraded);
        assert_eq!(u.timestamp_ms(), Some(1_700_000_000_000));
        assert!(serde_json::from_str::<HeadStatusUpdate>(
            r#"{"head_id": "h1", "status": "healthy", "current_load": -1}"#
        )
        .is_err());
        for s in [
            HeadStatus::Healthy,
            HeadStatus::Degraded,
            HeadStatus::Unhealthy,
            HeadStatus::Draining,
            HeadStatus::Offline,
        ] {
            assert_eq!(HeadStatus::from_u8(s.to_u8()), s);
        }
    }

    #[test]
    fn weight_must_be_finite_and_non_negative() {
        let e = Endpoint::new("e", "m", "http://x")
            .with_weight(-0.5)
            .validate()
            .unwrap_err();
        assert_eq!(e.field(), Some("weight"));
        assert!(Endpoint::new("e", "m", "http://x")
            .with_weight(f64::NAN)
            .validate()
            .is_err());
        assert!(Endpoint::new("e", "m", "http://x").with_weight(0.0).validate().is_ok());
    }
}
