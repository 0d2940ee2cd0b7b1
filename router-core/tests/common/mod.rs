//! Shared fixtures for the integration tests.
#![allow(dead_code, unreachable_pub)]

use router_core::{Endpoint, ManualClock, Model, Policy, RouteRequest, Router, RouterConfig, StrategyKind};
use std::collections::HashMap;
use std::sync::Arc;

pub const T0: u64 = 1_700_000_000_000;

pub fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(T0))
}

/// One model `m` with endpoints `e0..` of the given weights.
pub fn weighted(weights: &[f64]) -> Policy {
    Policy {
        models: vec![Model::new("m", "p")],
        endpoints: weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Endpoint::new(format!("e{i}"), "m", format!("http://e{i}")).with_weight(w))
            .collect(),
        settings: RouterConfig::default(),
        ..Default::default()
    }
}

pub fn router(policy: Policy, clock: Arc<ManualClock>) -> Router {
    Router::builder().policy(policy).clock(clock).build().unwrap()
}

pub fn req(strategy: StrategyKind) -> RouteRequest {
    RouteRequest {
        model: Some("m".into()),
        strategy: Some(strategy),
        ..Default::default()
    }
}

/// Route `n` times, dropping each decision at once, and count endpoints.
pub fn shares(r: &Router, req: &RouteRequest, n: usize) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for _ in 0..n {
        let d = r.route(req).unwrap();
        *out.entry(d.endpoint_id().to_owned()).or_default() += 1;
    }
    out
}
