//! Router-wide settings: part of the policy document.

use serde::{Deserialize, Serialize};

use crate::adaptive::AdaptiveConfig;
use crate::breaker::BreakerConfig;
use crate::budget::ScopedBudget;
use crate::error::{Error, Result};
use crate::experiment::Experiment;
use crate::health::HealthConfig;
use crate::limits::RateLimit;
use crate::predict::PredictionConfig;
use crate::strategy::{HybridWeights, StrategyKind, MAX_FALLBACKS};
use crate::usage::UsageConfig;

/// Settings that apply to every decision unless a request or model overrides them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouterConfig {
    /// The strategy used when neither the request nor the model names one.
    #[serde(alias = "defaultStrategy")]
    pub default_strategy: StrategyKind,
    /// A head that sends no heartbeat (or status report) for this long stops getting traffic;
    /// `0` turns heartbeats off.
    #[serde(alias = "heartbeatTtlMs")]
    pub heartbeat_ttl_ms: u64,
    /// How many fallbacks a decision carries (at most 3).
    #[serde(alias = "maxFallbacks")]
    pub max_fallbacks: usize,
    /// Latency assumed for an endpoint with no sample yet (P2C, latency, hybrid).
    #[serde(alias = "defaultLatencyMs")]
    pub default_latency_ms: f64,
    /// Exponent of the peak-EWMA latency in the power-of-two cost, (load + 1) · latency^β:
    /// 1 is Finagle's and tower's cost, 0 ignores latency. Default 0.25: LLM latencies are
    /// heavy-tailed (they follow the output length), and the full factor turns that noise into
    /// load imbalance between equal endpoints (docs/strategies.md has the figures), while load
    /// already grows on a slow endpoint (Little's law) and health catches failing ones.
    #[serde(alias = "p2cLatencyExponent")]
    pub p2c_latency_exponent: f64,
    /// Relative difference under which two scores count as a tie, broken at random
    /// (latency, cost, hybrid).
    #[serde(alias = "nearTieTolerance")]
    pub near_tie_tolerance: f64,
    /// Region preferred when the request gives none (geo, hybrid).
    #[serde(alias = "defaultRegion", skip_serializing_if = "Option::is_none")]
    pub default_region: Option<String>,
    /// Points per endpoint on the consistent-hash ring.
    #[serde(alias = "consistentHashVnodes")]
    pub consistent_hash_vnodes: u32,
    /// Bounded-load factor of consistent hashing (≥ 1; infinity turns the bound off).
    #[serde(alias = "consistentHashBalance")]
    pub consistent_hash_balance: f64,
    /// Weights of the hybrid score.
    pub hybrid: HybridWeights,
    /// Circuit breakers, cooldowns and ejection.
    pub breaker: BreakerConfig,
    /// Health thresholds.
    pub health: HealthConfig,
    /// What happens when every endpoint of the candidates is open, ejected, cooling down or
    /// unhealthy (a model's `panic_mode` overrides it).
    #[serde(alias = "panicMode")]
    pub panic_mode: PanicMode,
    /// Retries through the fallback chain ([`Router::next_fallback`](crate::Router::next_fallback)).
    pub failover: FailoverConfig,
    /// How many policy versions to keep for `policy_at` and `rollback`.
    #[serde(alias = "versionsKept")]
    pub versions_kept: usize,
    /// Usage and cost accounting.
    pub usage: UsageConfig,
    /// Budgets on models and providers (workspace budgets are in the workspace configuration).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<ScopedBudget>,
    /// Rate limits per workspace, API key, user or model.
    #[serde(alias = "rateLimits", skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimit>,
    /// A/B and canary experiments.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub experiments: Vec<Experiment>,
    /// Admin overrides: requests forced to a model or an endpoint, first match wins.
    #[serde(alias = "forcedRoutes", skip_serializing_if = "Vec::is_empty")]
    pub forced_routes: Vec<crate::overrides::ForcedRoute>,
    /// Adaptive model choice (Thompson sampling over the candidate models).
    pub adaptive: AdaptiveConfig,
    /// Load prediction (Holt forecasts of arrivals and in-flight) and pre-emptive spill-over.
    pub prediction: PredictionConfig,
}

/// What to do when no endpoint is eligible because of breakers, cooldowns or health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PanicMode {
    /// Route to the least bad endpoint anyway (Envoy's panic routing); the reason says "panic".
    #[default]
    Route,
    /// Fail with `NoHealthyEndpoint`.
    Fail,
}

/// Bounds of the failover loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FailoverConfig {
    /// Attempts in all, the first included.
    #[serde(alias = "maxAttempts")]
    pub max_attempts: u32,
    /// Time from the first decision after which no more attempts are made, ms.
    #[serde(alias = "deadlineMs")]
    pub deadline_ms: u64,
    /// Delay before the second attempt, ms; doubles with each attempt.
    #[serde(alias = "backoffBaseMs")]
    pub backoff_base_ms: u64,
    /// Cap of the delay, ms.
    #[serde(alias = "backoffMaxMs")]
    pub backoff_max_ms: u64,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            max_attempts: 3,
            deadline_ms: 120_000,
            backoff_base_ms: 100,
            backoff_max_ms: 5_000,
        }
    }
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            default_strategy: StrategyKind::PowerOfTwo,
            heartbeat_ttl_ms: 0,
            max_fallbacks: 2,
            default_latency_ms: 500.0,
            p2c_latency_exponent: 0.25,
            near_tie_tolerance: 0.05,
            default_region: None,
            consistent_hash_vnodes: 160,
            consistent_hash_balance: 1.25,
            hybrid: HybridWeights::default(),
            breaker: BreakerConfig::default(),
            health: HealthConfig::default(),
            panic_mode: PanicMode::default(),
            failover: FailoverConfig::default(),
            versions_kept: 20,
            usage: UsageConfig::default(),
            budgets: Vec::new(),
            rate_limits: Vec::new(),
            experiments: Vec::new(),
            forced_routes: Vec::new(),
            adaptive: AdaptiveConfig::default(),
            prediction: PredictionConfig::default(),
        }
    }
}

impl RouterConfig {
    /// Check every setting.
    pub fn validate(&self) -> Result<()> {
        if self.max_fallbacks > MAX_FALLBACKS {
            return Err(Error::config(
                "max_fallbacks",
                format!("must be at most {MAX_FALLBACKS}, got {}", self.max_fallbacks),
            ));
        }
        if !self.default_latency_ms.is_finite() || self.default_latency_ms < 0.0 {
            return Err(Error::config(
                "default_latency_ms",
                format!("must be a finite number >= 0, got {}", self.default_latency_ms),
            ));
        }
        if !(0.0..=1.0).contains(&self.p2c_latency_exponent) {
            return Err(Error::config(
                "p2c_latency_exponent",
                format!("must be in [0, 1], got {}", self.p2c_latency_exponent),
            ));
        }
        if !(0.0..1.0).contains(&self.near_tie_tolerance) {
            return Err(Error::config(
                "near_tie_tolerance",
                format!("must be in [0, 1), got {}", self.near_tie_tolerance),
            ));
        }
        if !(1..=1000).contains(&self.consistent_hash_vnodes) {
            return Err(Error::config(
                "consistent_hash_vnodes",
                format!("must be in 1..=1000, got {}", self.consistent_hash_vnodes),
            ));
        }
        if self.consistent_hash_balance.is_nan() || self.consistent_hash_balance < 1.0 {
            return Err(Error::config(
                "consistent_hash_balance",
                format!("must be >= 1, got {}", self.consistent_hash_balance),
            ));
        }
        if self.failover.max_attempts == 0 {
            return Err(Error::config("failover.max_attempts", "must be > 0"));
        }
        self.usage.validate()?;
        for (i, b) in self.budgets.iter().enumerate() {
            b.validate().map_err(|e| e.at(&format!("budgets[{i}]")))?;
        }
        for (i, r) in self.rate_limits.iter().enumerate() {
            r.validate().map_err(|e| e.at(&format!("rate_limits[{i}]")))?;
        }
        for (i, x) in self.experiments.iter().enumerate() {
            x.validate().map_err(|e| e.at(&format!("experiments[{i}]")))?;
            if self.experiments[..i].iter().any(|o| o.id == x.id) {
                return Err(Error::config(
                    format!("experiments[{i}].id"),
                    format!("duplicate experiment `{}`", x.id),
                ));
            }
        }
        for (i, f) in self.forced_routes.iter().enumerate() {
            f.validate().map_err(|e| e.at(&format!("forced_routes[{i}]")))?;
        }
        self.adaptive.validate().map_err(|e| e.at("adaptive"))?;
        self.prediction.validate().map_err(|e| e.at("prediction"))?;
        self.breaker.validate().map_err(|e| e.at("breaker"))?;
        self.health.validate().map_err(|e| e.at("health"))?;
        self.hybrid.validate().map_err(|e| e.at("hybrid"))
    }
}
