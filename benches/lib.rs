//! What the benchmarks in `benches/` share.

use router_core::{
    BudgetLimits, Endpoint, LimitScope, Model, ModelType, Outcome, Policy, RateLimit, RouteRequest, Router,
    RouterConfig, StrategyKind, WorkspaceConfig,
};

/// Distinct requests (affinity keys) and latencies the `route` bench and `hotloop` cycle
/// through; a power of two.
pub const KEYS: usize = 256;

/// A router on [`fleet`]`(n)` (usage aggregation as `usage` says), each endpoint with a
/// latency sample ([`seed_latencies`]).
pub fn fleet_router(n: usize, usage: bool) -> Router {
    let mut policy = fleet(n);
    policy.settings.usage.enabled = usage;
    let router = Router::new(policy).expect("valid bench policy");
    seed_latencies(&router, n);
    router
}

/// Report one latency sample (50-450 ms, distinct in turn) for each of [`fleet`]`(n)`'s
/// endpoints, so latency-aware strategies have something to compare.
pub fn seed_latencies(router: &Router, n: usize) {
    for i in 0..n {
        let ms = 50.0 + ((i * 37) % 400) as f64;
        router
            .report_endpoint(&format!("ep-{i}"), Outcome::success(ms))
            .expect("endpoint exists");
    }
}

/// The [`KEYS`] requests cycled through for one strategy: model type chat, prefer `eu-west`,
/// the strategy named, an affinity key each.
pub fn fleet_requests(kind: StrategyKind) -> Vec<RouteRequest> {
    (0..KEYS)
        .map(|k| RouteRequest {
            model_type: Some(ModelType::Chat),
            region_preference: Some("eu-west".into()),
            affinity_key: Some(format!("user-{k}")),
            strategy: Some(kind),
            ..Default::default()
        })
        .collect()
}

/// The [`KEYS`] latencies reported, cycled through (50-450 ms).
pub fn fleet_latencies() -> Vec<f64> {
    (0..KEYS).map(|k| 50.0 + ((k * 97) % 400) as f64).collect()
}

/// A router on [`one_endpoint_per_model`]`(models)` with adaptive choice on or off and usage
/// aggregation off: the adaptive bench's.
pub fn adaptive_router(models: usize, adaptive: bool) -> Router {
    let mut settings = RouterConfig::default();
    settings.adaptive.enabled = adaptive;
    settings.usage.enabled = false;
    Router::new(Policy {
        settings,
        ..one_endpoint_per_model(models)
    })
    .expect("valid bench policy")
}

/// `n` endpoints spread over four chat models with different prices (`model-0` cheapest),
/// alternating between the regions `us-east` and `eu-west`, weights 1, 2 and 3 in turn,
/// capacity 1,000 (checked on every pick, never reached).
pub fn fleet(n: usize) -> Policy {
    let models = (0..4)
        .map(|k| {
            Model::new(format!("model-{k}"), format!("provider-{k}"))
                .with_type(ModelType::Chat)
                .with_pricing(0.001 * (k + 1) as f64, 0.002 * (k + 1) as f64)
        })
        .collect();
    let endpoints = (0..n)
        .map(|i| {
            Endpoint::new(
                format!("ep-{i}"),
                format!("model-{}", i % 4),
                format!("http://10.{}.{}.{}/v1", i / 65_536, (i / 256) % 256, i % 256),
            )
            .with_region(if i % 2 == 0 { "us-east" } else { "eu-west" })
            .with_weight((1 + i % 3) as f64)
            .with_capacity(1_000)
        })
        .collect();
    Policy {
        models,
        endpoints,
        ..Default::default()
    }
}

/// `models` chat models of one endpoint each (`model-k` served by `ep-k`), equal prices: the
/// adaptive-choice fleet.
pub fn one_endpoint_per_model(models: usize) -> Policy {
    Policy {
        models: (0..models)
            .map(|k| {
                Model::new(format!("model-{k}"), "p")
                    .with_type(ModelType::Chat)
                    .with_pricing(0.001, 0.002)
            })
            .collect(),
        endpoints: (0..models)
            .map(|k| Endpoint::new(format!("ep-{k}"), format!("model-{k}"), format!("http://ep-{k}/v1")))
            .collect(),
        ..Default::default()
    }
}

/// Two chat models of five endpoints each, capacity 1,000: the load-prediction fleet.
pub fn two_models_of_five() -> Policy {
    Policy {
        models: (0..2)
            .map(|k| Model::new(format!("model-{k}"), "p").with_type(ModelType::Chat))
            .collect(),
        endpoints: (0..10)
            .map(|k| {
                Endpoint::new(
                    format!("ep-{k}"),
                    format!("model-{}", k % 2),
                    format!("http://ep-{k}/v1"),
                )
                .with_capacity(1000)
            })
            .collect(),
        ..Default::default()
    }
}

/// The `accounting` bench's mixes, by name: `no_usage`, `plain`, `usage`, `budget_limit` (see
/// `benches/accounting.rs`).
pub const ACCOUNTING_MIXES: [&str; 4] = ["no_usage", "plain", "usage", "budget_limit"];

/// Request keys of the `accounting` mixes: user `k`, workspace `k % 8`.
pub const ACCOUNTING_KEYS: usize = 256;

/// The policy of an `accounting` mix: [`fleet`]`(100)`; usage accounting off for `no_usage`;
/// for `budget_limit`, a per-user rpm limit and a daily budget on each of the workspaces
/// `ws-0` to `ws-7` (batched, neither ever reached). Two more mixes split `budget_limit`:
/// `limit` (the rate limit only) and `budget` (the budgets only); `workspaces` is `usage` with
/// the eight workspaces configured but no budget on any (the baseline of a deployment that
/// configures its workspaces).
pub fn accounting_policy(mix: &str) -> Policy {
    accounting_policy_of(mix, 100)
}

/// [`accounting_policy`] on [`fleet`]`(n)`.
pub fn accounting_policy_of(mix: &str, n: usize) -> Policy {
    assert!(
        ACCOUNTING_MIXES.contains(&mix) || ["limit", "budget", "workspaces"].contains(&mix),
        "unknown mix {mix}"
    );
    let mut policy = fleet(n);
    policy.settings.usage.enabled = mix != "no_usage";
    if mix == "budget_limit" || mix == "limit" {
        policy.settings.rate_limits = vec![RateLimit {
            scope: LimitScope::User,
            id: None,
            rps: None,
            rpm: Some(1_000_000_000),
            tpm: None,
            burst: None,
            consistency: Default::default(),
            on_store_error: Default::default(),
        }];
    }
    if ["budget_limit", "budget", "workspaces"].contains(&mix) {
        for w in 0..8 {
            let budget = BudgetLimits {
                daily: Some(1e12),
                ..Default::default()
            };
            policy.workspaces.insert(
                format!("ws-{w}"),
                WorkspaceConfig {
                    budget_limits: (mix != "workspaces").then_some(budget),
                    ..Default::default()
                },
            );
        }
    }
    policy
}

/// The requests of an `accounting` mix: chat, P2C; with a workspace and a user id but for
/// `no_usage` and `plain`.
pub fn accounting_requests(mix: &str) -> Vec<RouteRequest> {
    accounting_requests_of(mix, StrategyKind::PowerOfTwo)
}

/// [`accounting_requests`] naming the strategy `kind`.
pub fn accounting_requests_of(mix: &str, kind: StrategyKind) -> Vec<RouteRequest> {
    let tenant = !matches!(mix, "no_usage" | "plain");
    (0..ACCOUNTING_KEYS)
        .map(|k| RouteRequest {
            model_type: Some(ModelType::Chat),
            strategy: Some(kind),
            workspace_id: tenant.then(|| format!("ws-{}", k % 8)),
            user_id: tenant.then(|| format!("user-{k}")),
            ..Default::default()
        })
        .collect()
}
