//! # router-core
//!
//! The engine of model-router: decides in well under a microsecond which model and which
//! endpoint takes an AI request, and learns from what happened. No I/O, no async runtime:
//! every binding (Python, Node, uniffi) and the example server wrap this crate.
//!
//! ```
//! use router_core::{Endpoint, Model, ModelType, Outcome, Policy, RouteRequest, Router, StrategyKind};
//!
//! let router = Router::new(Policy {
//!     models: vec![Model::new("gpt-4", "openai").with_pricing(0.01, 0.03)],
//!     endpoints: vec![
//!         Endpoint::new("gpt4-east", "gpt-4", "http://10.0.0.1/v1").with_region("us-east"),
//!         Endpoint::new("gpt4-west", "gpt-4", "http://10.0.0.2/v1").with_region("eu-west"),
//!     ],
//!     ..Default::default()
//! })?;
//!
//! let req = RouteRequest {
//!     model_type: Some(ModelType::Chat),
//!     region_preference: Some("eu-west".into()),
//!     strategy: Some(StrategyKind::GeoPreferred),
//!     ..Default::default()
//! };
//! let decision = router.route(&req)?;
//! assert_eq!(decision.endpoint_id(), "gpt4-west");
//! println!("{} -> {} ({})", decision.model_id(), decision.url(), decision.reason());
//! router.report(&decision, Outcome::success(812.0).with_tokens(25, 100))?;
//! # Ok::<(), router_core::Error>(())
//! ```
//!
//! The pieces: [`Model`]s and their [`Endpoint`]s (heads) live in the router's registry; a
//! [`RouteRequest`] resolves to candidate models and endpoints; a [`StrategyKind`] picks one;
//! the [`Decision`] says where to go and why, and holds the endpoint's in-flight slot until it
//! is reported with an [`Outcome`] or dropped. [`Router::explain`] shows every candidate kept or
//! dropped. Changes are published through a [`StateStore`] so many instances act as one.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
#![deny(rustdoc::broken_intra_doc_links)]

mod accounting;
pub mod adaptive;
pub mod breaker;
pub mod budget;
mod clock;
mod config;
mod decision;
mod endpoint;
mod error;
mod events;
pub mod experiment;
pub mod health;
mod history;
pub mod limits;
mod model;
mod num;
mod outcome;
pub mod overrides;
mod policy;
pub mod predict;
mod registry;
mod request;
mod rng;
mod router;
pub mod rules;
pub mod state;
pub mod stats;
pub mod strategy;
mod sync;
pub mod usage;
mod watch;

pub use adaptive::{AdaptiveConfig, AdaptiveContext, AdaptiveExplanation, ArmDraw, ModelSelection, RewardWeights};
pub use budget::{BudgetLimits, BudgetMode, BudgetScope, BudgetStatus, Consistency, OnStoreError, ScopedBudget};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{FailoverConfig, PanicMode, RouterConfig};
pub use decision::{Decision, DecisionId, DecisionRecord, FallbackTarget, ModelChoice, StrategySource};
pub use endpoint::{Endpoint, EndpointKind, HeadStatus, HeadStatusUpdate};
pub use error::{Error, Problem, Result};
pub use events::{Event, EventBus, EventStream, SubscriptionId};
pub use experiment::{
    AdaptiveResults, AssignmentKey, Comparison, Experiment, ExperimentResults, Variant, VariantResults,
};
pub use health::{HealthConfig, HealthReport, ProbeTarget};
pub use history::PolicyVersion;
pub use limits::{LimitScope, RateLimit};
pub use model::{Capability, Model, ModelStatus, ModelType, Pricing};
pub use outcome::{ErrorClass, Outcome};
pub use policy::{AgentPreferences, PerformanceRequirements, Policy, QualityRequirements, WorkspaceConfig};
pub use predict::{ModelForecast, PredictionConfig, PredictionExplanation};
pub use registry::{EndpointFilter, ModelFilter, ModelStatusUpdate, Slot};
pub use request::{RouteRequest, MAX_REQUEST_FIELD_LEN};
pub use rng::seed_thread;
pub use router::{
    EndpointStatus, ExplainedEndpoint, ExplainedError, ExplainedModel, ExplainedRule, ExplainedScore, Explanation,
    ModelHealth, ModelVerdict, Retry, Router, RouterBuilder,
};
pub use rules::{Rule, TargetModel, TrafficSplit};
pub use state::{CounterCell, InMemoryStore, StateChange, StateSink, StateStore, StoreStatus, TryAdd};
pub use strategy::{Detail, StrategyKind, Tier, Verdict};
pub use usage::{parse_time_range, Analytics, BudgetWindow, Dimension, RequestRecord, UsageConfig, UsageTotals};
pub use watch::{PolicyWatcher, WatchHandle};

/// The repository README's Rust example, compiled and run as a doctest.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// Parse JSON into `T`, naming the path of the offending field on error.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(json: &str, what: &'static str) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        };
        Error::Parse { what, message }
    })
}
