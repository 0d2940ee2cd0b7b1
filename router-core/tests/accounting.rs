//! Issue 5: usage and cost, budgets, rate limits, experiments (with the fake clock).

mod common;

use router_core::*;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// 2026-11-23 00:00 UTC, a Monday.
const MON: u64 = 1_795_392_000_000;
const DAY: u64 = 86_400_000;

/// `big` ($0.01 in / $0.03 out per 1k) and `small` ($0.001 / $0.002), one endpoint each.
fn policy(extra: serde_json::Value) -> Policy {
    let mut p = json!({
        "models": [
            {"id": "big", "provider": "openai", "model_type": "chat",
             "pricing": {"input_per_1k": 0.01, "output_per_1k": 0.03}},
            {"id": "small", "provider": "acme", "model_type": "chat",
             "pricing": {"input_per_1k": 0.001, "output_per_1k": 0.002}}
        ],
        "endpoints": [
            {"id": "big-1", "model_id": "big", "url": "http://big"},
            {"id": "small-1", "model_id": "small", "url": "http://small"}
        ]
    });
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    Policy::from_json(&p.to_string()).unwrap()
}

fn at(ms: u64) -> Arc<ManualClock> {
    Arc::new(ManualClock::new(ms))
}

fn ws_req(ws: &str, model: &str) -> RouteRequest {
    RouteRequest {
        model: Some(model.into()),
        workspace_id: Some(ws.into()),
        ..Default::default()
    }
}

/// One request on `big` with 1,000 tokens in and out: $0.04.
fn spend_4_cents(r: &Router, ws: &str) -> Result<()> {
    let d = r.route(&ws_req(ws, "big"))?;
    r.report(&d, Outcome::success(10.0).with_tokens(1000, 1000))
}

fn workspace(limits: serde_json::Value) -> WorkspaceConfig {
    serde_json::from_value(json!({ "budgetLimits": limits })).unwrap()
}

fn spent(r: &Router, ws: &str, w: BudgetWindow) -> f64 {
    r.budget_status(BudgetScope::Workspace, ws)
        .into_iter()
        .find(|s| s.window == w)
        .unwrap()
        .spent
}

#[test]
fn cost_comes_from_pricing_and_estimates_are_replaced() {
    let clock = at(MON);
    let r = common::router(policy(json!({})), clock.clone());
    // Real counts.
    spend_4_cents(&r, "ws").unwrap();
    // Only a content length: 4,000 chars ≈ 1,000 prompt tokens, 256 completion tokens assumed.
    let d = r
        .route(&RouteRequest {
            content_length: Some(4_000),
            ..ws_req("ws", "big")
        })
        .unwrap();
    r.report(&d, Outcome::success(5.0)).unwrap();
    let recent = r.recent_requests(10);
    assert_eq!(recent.len(), 2);
    assert!(recent[0].tokens_estimated);
    assert_eq!((recent[0].tokens_in, recent[0].tokens_out), (1000, 256));
    assert!((recent[0].cost - (0.01 + 0.03 * 0.256)).abs() < 1e-9);
    assert!(!recent[1].tokens_estimated);
    assert!((recent[1].cost - 0.04).abs() < 1e-9);
    let a = r.analytics(Dimension::Workspace, "ws", "24h").unwrap();
    assert_eq!(a.totals.requests, 2);
    assert!((a.totals.cost - (0.04 + 0.01 + 0.03 * 0.256)).abs() < 1e-9);
    assert_eq!(a.totals.tokens_in, 2000);
    let m = r.analytics(Dimension::Model, "big", "7d").unwrap();
    assert_eq!(m.totals.requests, 2);
    assert!(m.totals.latency_p50_ms.is_some());
    assert_eq!(
        r.analytics(Dimension::Model, "big", "1y").unwrap_err().field(),
        Some("time_range")
    );
    assert_eq!(r.usage_keys(Dimension::Endpoint), ["big-1"]);
}

#[test]
fn budget_windows_roll_over_at_utc_boundaries() {
    // A Sunday 23:59:59.999 UTC, the last instant of the week of 2026-11-16 and of its day.
    let sunday_end = MON - 1;
    for (window, limits, rollover) in [
        (BudgetWindow::Daily, json!({"daily": 0.08}), MON),
        (BudgetWindow::Weekly, json!({"weekly": 0.08}), MON),
        // December 2026 starts on a Tuesday.
        (BudgetWindow::Monthly, json!({"monthly": 0.08}), MON + 8 * DAY),
    ] {
        let clock = at(rollover - 60_000);
        let r = common::router(policy(json!({})), clock.clone());
        r.set_workspace_config("ws", workspace(limits)).unwrap();
        spend_4_cents(&r, "ws").unwrap();
        spend_4_cents(&r, "ws").unwrap();
        let e = spend_4_cents(&r, "ws").unwrap_err();
        match &e {
            Error::BudgetExceeded {
                window: w,
                resets_at_ms,
                ..
            } => {
                assert_eq!(*w, window);
                assert_eq!(*resets_at_ms, rollover);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(e.kind(), "budget_exceeded");
        clock.set(rollover - 1);
        assert!(spend_4_cents(&r, "ws").is_err(), "{window}: still the old window");
        clock.set(rollover);
        spend_4_cents(&r, "ws").unwrap();
        assert!((spent(&r, "ws", window) - 0.04).abs() < 1e-9);
    }
    let _ = sunday_end;
}

#[test]
fn eight_threads_lose_no_spend() {
    let r = common::router(policy(json!({})), at(MON));
    r.set_workspace_config("ws", workspace(json!({"daily": 1e9, "mode": "shadow"})))
        .unwrap();
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let r = r.clone();
            s.spawn(move || {
                for i in 0..500u64 {
                    let d = r
                        .route(&ws_req("ws", if i % 2 == 0 { "big" } else { "small" }))
                        .unwrap();
                    r.report(&d, Outcome::success(1.0).with_tokens(100 + t, 37 + i % 5))
                        .unwrap();
                }
            });
        }
    });
    // The exact total in micro-units, computed independently.
    let mut want = 0i64;
    for t in 0..8u64 {
        for i in 0..500u64 {
            let (inp, out) = (100 + t, 37 + i % 5);
            let c = if i % 2 == 0 {
                0.01 * inp as f64 / 1000.0 + 0.03 * out as f64 / 1000.0
            } else {
                0.001 * inp as f64 / 1000.0 + 0.002 * out as f64 / 1000.0
            };
            want += (c * 1e6).round() as i64;
        }
    }
    let got = spent(&r, "ws", BudgetWindow::Daily);
    assert_eq!((got * 1e6).round() as i64, want);
    let a = r.analytics(Dimension::Workspace, "ws", "1h").unwrap();
    assert_eq!(a.totals.requests, 4000);
    assert_eq!((a.totals.cost * 1e6).round() as i64, want);
}

/// `n` routers of the empty policy at Monday's clock, sharing `store`.
fn routers_sharing(store: &Arc<dyn StateStore>, n: usize) -> Vec<Router> {
    (0..n)
        .map(|_| {
            Router::builder()
                .policy(policy(json!({})))
                .clock(at(MON))
                .store(store.clone())
                .build()
                .unwrap()
        })
        .collect()
}

#[test]
fn strict_budget_shared_by_three_routers_never_overshoots() {
    let store: Arc<dyn StateStore> = Arc::new(InMemoryStore::new());
    let routers = routers_sharing(&store, 3);
    routers[0]
        .set_workspace_config("ws", workspace(json!({"daily": 1.0, "consistency": "strict"})))
        .unwrap();
    let admitted = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for r in &routers {
            for _ in 0..2 {
                let admitted = &admitted;
                s.spawn(move || loop {
                    // Estimated: 2,000 prompt tokens + 256 completion on `big` ≈ $0.028.
                    let req = RouteRequest {
                        estimated_tokens: Some(2000),
                        ..ws_req("ws", "big")
                    };
                    match r.route(&req) {
                        Ok(d) => {
                            admitted.fetch_add(1, Ordering::Relaxed);
                            r.report(&d, Outcome::success(1.0).with_tokens(2000, 256)).unwrap();
                        }
                        Err(Error::BudgetExceeded { .. }) => break,
                        Err(e) => panic!("{e}"),
                    }
                });
            }
        }
    });
    let total = spent(&routers[1], "ws", BudgetWindow::Daily);
    let one = 0.01 * 2.0 + 0.03 * 0.256;
    assert!(total <= 1.0 + 1e-9, "strict: spent {total}");
    assert!(total > 1.0 - one - 1e-9, "stopped early: {total}");
    assert_eq!(admitted.load(Ordering::Relaxed), (1.0 / one) as usize);
}

/// Give workspace `ws` a daily budget of $0.05, route a request reserving about $0.038, check
/// that a second one does not fit beside it, drop the first and check that its reservation
/// is given back. Returns the request.
fn reserve_and_drop(r: &Router) -> RouteRequest {
    r.set_workspace_config("ws", workspace(json!({"daily": 0.05}))).unwrap();
    let req = RouteRequest {
        estimated_tokens: Some(3000),
        ..ws_req("ws", "big")
    };
    let d = r.route(&req).unwrap();
    assert!(spent(r, "ws", BudgetWindow::Daily) > 0.0);
    assert!(matches!(r.route(&req), Err(Error::BudgetExceeded { .. })));
    drop(d);
    assert_eq!(spent(r, "ws", BudgetWindow::Daily), 0.0);
    req
}

#[test]
fn dropped_decisions_give_their_reservation_back() {
    let r = common::router(policy(json!({})), at(MON));
    let req = reserve_and_drop(&r);
    let d = r.route(&req).unwrap();
    r.report(&d, Outcome::success(1.0).with_tokens(10, 10)).unwrap();
    assert!((spent(&r, "ws", BudgetWindow::Daily) - 0.0004).abs() < 1e-9);
}

#[test]
fn downgrade_prefers_the_cheapest_fitting_model_and_says_so() {
    let r = common::router(policy(json!({})), at(MON));
    r.set_workspace_config(
        "ws",
        workspace(json!({"daily": 0.10, "mode": "downgrade", "downgrade_at": 0.5})),
    )
    .unwrap();
    let by_type = RouteRequest {
        workspace_id: Some("ws".into()),
        strategy: Some(StrategyKind::RoundRobin),
        ..Default::default()
    };
    // Below the share: both models serve.
    let models: std::collections::HashSet<String> = (0..10)
        .map(|_| r.route(&by_type).unwrap().model_id().to_owned())
        .collect();
    assert_eq!(models.len(), 2);
    spend_4_cents(&r, "ws").unwrap();
    spend_4_cents(&r, "ws").unwrap();
    for _ in 0..10 {
        let d = r.route(&by_type).unwrap();
        assert_eq!(d.model_id(), "small");
        assert!(d.reason().contains("budget downgrade"), "{}", d.reason());
    }
    let x = r.explain(&by_type);
    assert!(
        x.accounting.iter().any(|n| n.contains("cheapest models only")),
        "{:?}",
        x.accounting
    );
    // Past the limit, downgrade still serves (it never rejects).
    for _ in 0..3 {
        spend_4_cents(&r, "ws").unwrap();
    }
    assert_eq!(r.route(&by_type).unwrap().model_id(), "small");
}

/// A router whose workspace `ws` has the budget `limits`, and a stream of its events.
fn with_budget(limits: serde_json::Value) -> (Router, EventStream) {
    let r = common::router(policy(json!({})), at(MON));
    let stream = r.events().subscribe(64, false);
    r.set_workspace_config("ws", workspace(limits)).unwrap();
    (r, stream)
}

#[test]
fn shadow_counts_and_tells_only() {
    let (r, stream) = with_budget(json!({"daily": 0.05, "mode": "shadow", "alert_at": [0.5]}));
    for _ in 0..3 {
        spend_4_cents(&r, "ws").unwrap();
    }
    let kinds: Vec<&str> = std::iter::from_fn(|| stream.try_recv()).map(|e| e.kind()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "budget_threshold_crossed").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "budget_exceeded").count(),
        1,
        "{kinds:?}"
    );
}

/// Each alert threshold fires once, in order, also when one report crosses two of them.
#[test]
fn alert_thresholds_fire_once_each_in_order() {
    let (r, stream) = with_budget(json!({"daily": 0.10, "mode": "shadow", "alert_at": [0.9, 0.2, 0.3]}));
    let mut fired = Vec::new();
    for _ in 0..4 {
        spend_4_cents(&r, "ws").unwrap();
        let thresholds: Vec<f64> = std::iter::from_fn(|| stream.try_recv())
            .filter_map(|e| match e {
                Event::BudgetThresholdCrossed { threshold, .. } => Some(threshold),
                _ => None,
            })
            .collect();
        fired.push(thresholds);
    }
    // Spent 0.04 (past 0.02 and 0.03), 0.08, 0.12 (past 0.09), 0.16.
    assert_eq!(fired, [vec![0.2, 0.3], vec![], vec![0.9], vec![]]);
}

#[test]
fn spent_model_budgets_remove_their_models() {
    let r = common::router(
        policy(json!({"budgets": [{"scope": "model", "id": "big", "daily": 0.04}]})),
        at(MON),
    );
    let by_type = RouteRequest {
        strategy: Some(StrategyKind::RoundRobin),
        ..Default::default()
    };
    spend_4_cents(&r, "ws").unwrap();
    for _ in 0..6 {
        assert_eq!(r.route(&by_type).unwrap().model_id(), "small");
    }
    let x = r.explain(&by_type);
    assert!(x.accounting.iter().any(|n| n.contains("model `big` left out")));
    let big = x.models.iter().find(|m| m.model_id == "big").unwrap();
    assert_eq!(big.verdict, ModelVerdict::BudgetExhausted);
    // Asking for the spent model by name fails with a clear error.
    assert!(matches!(
        r.route(&RouteRequest::for_model("big")),
        Err(Error::NoCandidateModel { .. })
    ));
    assert_eq!(
        Router::new(policy(
            json!({"budgets": [{"scope": "model", "id": "big", "daily": -1.0}]})
        ))
        .unwrap_err()
        .field(),
        Some("budgets[0].daily")
    );
}

#[test]
fn gcra_admits_the_burst_then_the_rate() {
    let clock = at(MON);
    let r = common::router(
        policy(json!({"rate_limits": [{"scope": "user", "rpm": 100}]})),
        clock.clone(),
    );
    let bob = RouteRequest {
        user_id: Some("bob".into()),
        ..RouteRequest::for_model("small")
    };
    for _ in 0..100 {
        r.route(&bob).unwrap();
    }
    match r.route(&bob) {
        Err(Error::RateLimited { key, retry_after_ms }) => {
            assert_eq!(key, "user:bob:rpm");
            assert_eq!(retry_after_ms, 600);
        }
        other => panic!("{other:?}"),
    }
    // Another user has a limit of their own.
    r.route(&RouteRequest {
        user_id: Some("ann".into()),
        ..RouteRequest::for_model("small")
    })
    .unwrap();
    clock.advance(599);
    assert!(r.route(&bob).is_err());
    clock.advance(1);
    r.route(&bob).unwrap();
    assert!(r.route(&bob).is_err());
}

#[test]
fn tokens_per_minute_are_corrected_by_the_real_counts() {
    let clock = at(MON);
    let r = common::router(
        policy(json!({
            "usage": {"default_output_tokens": 0},
            "rate_limits": [{"scope": "workspace", "tpm": 1000}]
        })),
        clock.clone(),
    );
    let req = RouteRequest {
        estimated_tokens: Some(100),
        ..ws_req("ws", "small")
    };
    let d = r.route(&req).unwrap();
    // It used 1,000 tokens, not the 100 estimated: the minute is spent.
    r.report(&d, Outcome::success(1.0).with_tokens(900, 100)).unwrap();
    assert!(matches!(r.route(&req), Err(Error::RateLimited { .. })));
    clock.advance(6_000);
    r.route(&req).unwrap();
}

#[test]
fn endpoint_caps_make_it_ineligible_while_saturated() {
    let clock = at(MON);
    let mut p = policy(json!({}));
    p.endpoints.push(Endpoint::new("big-2", "big", "http://big2"));
    p.endpoints[0].rpm = Some(2);
    let r = common::router(p, clock.clone());
    let req = RouteRequest {
        strategy: Some(StrategyKind::RoundRobin),
        ..RouteRequest::for_model("big")
    };
    let picks: Vec<String> = (0..8)
        .map(|_| r.route(&req).unwrap().endpoint_id().to_owned())
        .collect();
    assert_eq!(picks.iter().filter(|e| *e == "big-1").count(), 2, "{picks:?}");
    let x = r.explain(&req);
    let e = x.endpoints.iter().find(|e| e.endpoint_id == "big-1").unwrap();
    assert_eq!(e.verdict, Verdict::RateLimited);
    clock.advance(30_000);
    assert!((0..4).any(|_| r.route(&req).unwrap().endpoint_id() == "big-1"));
}

fn ab(extra: serde_json::Value) -> Policy {
    let mut x = json!({
        "id": "ab", "variants": [
            {"name": "control", "model_id": "big", "weight": 50},
            {"name": "treatment", "model_id": "small", "weight": 50}
        ],
        "min_samples": 200
    });
    for (k, v) in extra.as_object().unwrap() {
        x[k] = v.clone();
    }
    policy(json!({ "experiments": [x] }))
}

#[test]
fn experiment_assignment_is_sticky_and_weighted() {
    let r = common::router(ab(json!({})), at(MON));
    let user = |u: usize| RouteRequest {
        user_id: Some(format!("user-{u}")),
        ..Default::default()
    };
    let mut small = 0;
    for u in 0..2_000 {
        let first = r.route(&user(u)).unwrap().model_id().to_owned();
        for _ in 0..3 {
            assert_eq!(r.route(&user(u)).unwrap().model_id(), first);
        }
        small += usize::from(first == "small");
    }
    assert!((900..1100).contains(&small), "{small}");
    let d = r.route(&user(1)).unwrap();
    assert!(d.reason().contains("experiment `ab`"), "{}", d.reason());
    // No user id: not in the experiment.
    assert!(!r
        .route(&RouteRequest::default())
        .unwrap()
        .reason()
        .contains("experiment"));
}

#[test]
fn experiment_names_a_winner_only_when_significant() {
    let r = common::router(ab(json!({})), at(MON));
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    r.events().on_event(false, move |e: &Event| {
        if let Event::ExperimentConcluded { winner, .. } = e {
            sink.lock().unwrap().push(winner.clone());
        }
    });
    let mut u = 0;
    // The treatment succeeds 95% of the time, the control 80%.
    let mut n = [0usize; 2];
    while n.iter().any(|&k| k < 400) {
        u += 1;
        let d = r
            .route(&RouteRequest {
                user_id: Some(format!("u{u}")),
                ..Default::default()
            })
            .unwrap();
        let t = usize::from(d.model_id() == "small");
        n[t] += 1;
        let ok = if t == 1 { n[t] % 20 != 0 } else { n[t] % 5 != 0 };
        let o = if ok {
            Outcome::success(100.0 + (n[t] % 7) as f64)
        } else {
            Outcome::failure(ErrorClass::Server { status: 500 }, 50.0)
        };
        r.report(&d, o).unwrap();
        if n.iter().all(|&k| k < 150) {
            assert_eq!(r.experiment_results("ab").unwrap().winner, None, "too early");
        }
    }
    let res = r.experiment_results("ab").unwrap();
    assert!(res.min_samples_reached);
    assert_eq!(res.winner.as_deref(), Some("treatment"), "{}", res.verdict);
    let c = res.comparisons[0].success_rate.as_ref().unwrap();
    assert!(c.p_value < 0.05 && c.diff > 0.0 && c.ci_low > 0.0);
    assert_eq!(events.lock().unwrap().as_slice(), ["treatment"]);
    assert_eq!(r.experiment_results("nope").unwrap_err().kind(), "not_found");
}

#[test]
fn invalid_accounting_settings_name_their_field() {
    for (extra, field) in [
        (json!({"rate_limits": [{"scope": "user"}]}), "rate_limits[0].rps"),
        (
            json!({"rate_limits": [{"scope": "user", "rpm": 0}]}),
            "rate_limits[0].rpm",
        ),
        (
            json!({"experiments": [{"id": "x", "variants": [{"name": "a", "model_id": "big", "weight": 1}]}]}),
            "experiments[0].variants",
        ),
        (
            json!({"experiments": [{"id": "x", "variants": [
                {"name": "a", "model_id": "big", "weight": -1},
                {"name": "b", "model_id": "small", "weight": 1}]}]}),
            "experiments[0].variants[0].weight",
        ),
        (json!({"usage": {"max_keys": 0}}), "usage.max_keys"),
    ] {
        let e = Router::new(policy(extra)).unwrap_err();
        assert_eq!(e.field(), Some(field), "{e}");
    }
    let r = common::router(policy(json!({})), at(MON));
    let e = r
        .set_workspace_config("ws", workspace(json!({"daily": 1.0, "downgrade_at": 2.0})))
        .unwrap_err();
    assert_eq!(e.field(), Some("budget_limits.downgrade_at"));
}

/// A store without counter cells (the trait's default): the router adds through `add`.
#[derive(Debug, Default)]
struct NoCells(InMemoryStore);

impl StateStore for NoCells {
    fn name(&self) -> &'static str {
        "no-cells"
    }
    fn publish(&self, origin: u64, change: &StateChange) -> Result<()> {
        self.0.publish(origin, change)
    }
    fn attach(&self, origin: u64, sink: std::sync::Weak<dyn StateSink>) {
        self.0.attach(origin, sink)
    }
    fn add(&self, key: &str, delta: i64, expires_at_ms: u64) -> Result<i64> {
        self.0.add(key, delta, expires_at_ms)
    }
    fn get(&self, key: &str) -> Result<i64> {
        self.0.get(key)
    }
    fn try_add(&self, key: &str, delta: i64, limit: i64, expires_at_ms: u64) -> Result<TryAdd> {
        self.0.try_add(key, delta, limit, expires_at_ms)
    }
    fn gcra(
        &self,
        key: &str,
        limit: limits::Gcra,
        n: u64,
        charge_only: bool,
        now_us: u64,
    ) -> Result<limits::GcraVerdict> {
        self.0.gcra(key, limit, n, charge_only, now_us)
    }
}

#[test]
fn a_store_without_cells_counts_the_same() {
    let clock = at(MON - 60_000);
    let r = Router::builder()
        .policy(policy(json!({})))
        .clock(clock.clone())
        .store(Arc::new(NoCells::default()))
        .build()
        .unwrap();
    let req = reserve_and_drop(&r);
    spend_4_cents(&r, "ws").unwrap();
    assert!(matches!(r.route(&req), Err(Error::BudgetExceeded { .. })));
    clock.set(MON);
    spend_4_cents(&r, "ws").unwrap();
    assert!((spent(&r, "ws", BudgetWindow::Daily) - 0.04).abs() < 1e-9);
}

#[test]
fn a_batched_budget_is_shared_by_routers_on_one_store() {
    let store: Arc<dyn StateStore> = Arc::new(InMemoryStore::new());
    let routers = routers_sharing(&store, 2);
    // The configuration reaches the second router through the store.
    routers[0]
        .set_workspace_config("ws", workspace(json!({"daily": 0.08})))
        .unwrap();
    spend_4_cents(&routers[0], "ws").unwrap();
    spend_4_cents(&routers[1], "ws").unwrap();
    for r in &routers {
        assert!((spent(r, "ws", BudgetWindow::Daily) - 0.08).abs() < 1e-9);
        assert!(matches!(spend_4_cents(r, "ws"), Err(Error::BudgetExceeded { .. })));
    }
}

#[test]
fn a_budget_change_applies_to_the_next_request() {
    let r = common::router(policy(json!({})), at(MON));
    r.set_workspace_config("ws", workspace(json!({"daily": 1.0}))).unwrap();
    spend_4_cents(&r, "ws").unwrap();
    spend_4_cents(&r, "ws").unwrap();
    r.set_workspace_config("ws", workspace(json!({"daily": 0.08}))).unwrap();
    // Same window, same counter: the spend so far counts against the new limit.
    assert!(matches!(spend_4_cents(&r, "ws"), Err(Error::BudgetExceeded { .. })));
    r.set_workspace_config("ws", workspace(json!({"daily": 0.08, "mode": "shadow"})))
        .unwrap();
    spend_4_cents(&r, "ws").unwrap();
    assert!((spent(&r, "ws", BudgetWindow::Daily) - 0.12).abs() < 1e-9);
    // A model budget added later removes its model at once.
    let mut settings = r.policy().settings;
    settings.budgets = vec![serde_json::from_value(json!({"scope": "model", "id": "big", "daily": 0.01})).unwrap()];
    r.set_config(settings).unwrap();
    spend_4_cents(&r, "other").unwrap();
    assert!(matches!(
        r.route(&RouteRequest::for_model("big")),
        Err(Error::NoCandidateModel { .. })
    ));
}

/// Workspaces without a budget need no accounting plan; the first budget set on one (by
/// replacing its configuration) applies to its next request, and one taken away (replaced or
/// removed) stops applying.
#[test]
fn a_budget_set_on_a_configured_workspace_applies_and_one_taken_away_stops() {
    let r = common::router(policy(json!({})), at(MON));
    let unbudgeted: WorkspaceConfig = serde_json::from_value(json!({"modelRestrictions": ["big"]})).unwrap();
    r.set_workspace_config("ws", unbudgeted.clone()).unwrap();
    r.set_workspace_config("other", unbudgeted.clone()).unwrap();
    for _ in 0..3 {
        spend_4_cents(&r, "ws").unwrap();
    }
    // The restriction still applies without a budget.
    assert!(r.route(&ws_req("ws", "small")).is_err());

    let mut budgeted = workspace(json!({"daily": 0.08}));
    budgeted.model_restrictions = vec!["big".into()];
    r.set_workspace_config("ws", budgeted.clone()).unwrap();
    // The budget counts from when it was set.
    spend_4_cents(&r, "ws").unwrap();
    spend_4_cents(&r, "ws").unwrap();
    assert!(matches!(spend_4_cents(&r, "ws"), Err(Error::BudgetExceeded { .. })));
    spend_4_cents(&r, "other").unwrap();

    r.set_workspace_config("ws", unbudgeted).unwrap();
    spend_4_cents(&r, "ws").unwrap();

    r.set_workspace_config("other", budgeted).unwrap();
    spend_4_cents(&r, "other").unwrap();
    spend_4_cents(&r, "other").unwrap();
    assert!(matches!(spend_4_cents(&r, "other"), Err(Error::BudgetExceeded { .. })));
    r.remove_workspace_config("other").unwrap();
    spend_4_cents(&r, "other").unwrap();
}

/// A decision routed by an event handler while another decision of the same thread is under
/// way (and holds this thread's cached view): one on the same configuration reads the cached
/// view; one after a budget change builds the new plan; the next one refreshes the cache.
#[test]
fn a_decision_nested_in_another_sees_a_budget_change_made_in_between() {
    let r = Arc::new(common::router(
        policy(json!({"rate_limits": [{"scope": "user", "rpm": 1_000, "burst": 5}]})),
        at(MON),
    ));
    r.set_workspace_config("ws", workspace(json!({"daily": 1.0}))).unwrap();
    let nested: Arc<Mutex<Vec<std::result::Result<(), String>>>> = Arc::default();
    let weak = Arc::downgrade(&r);
    let out = Arc::clone(&nested);
    let calls = AtomicUsize::new(0);
    let busy = std::sync::atomic::AtomicBool::new(false);
    r.events().on_event(true, move |e| {
        let Event::Decision(_) = e else { return };
        let Some(r) = weak.upgrade() else { return };
        // The nested decision's own event comes back here: only outer ones route.
        if busy.swap(true, Ordering::SeqCst) {
            return;
        }
        let call = calls.fetch_add(1, Ordering::SeqCst);
        let user_req = RouteRequest {
            user_id: Some("u".into()),
            ..ws_req("ws", "big")
        };
        let push = |res: Result<Decision>| {
            out.lock()
                .unwrap()
                .push(res.map(drop).map_err(|e| e.kind().to_string()))
        };
        match call {
            // The outer decision's configuration: admitted on the cached view.
            0 => push(r.route(&user_req)),
            // After a change: the nested decision must see the new budget (it builds the new
            // plan, which makes the cached view stale), and so must the next ones, which find
            // the cache stale and refresh it.
            1 => {
                r.set_workspace_config("ws", workspace(json!({"daily": 0.001})))
                    .unwrap();
                push(r.route(&user_req));
                push(r.route(&RouteRequest {
                    user_id: Some("v".into()),
                    ..ws_req("other", "big")
                }));
                push(r.route(&user_req));
            }
            _ => {}
        }
        busy.store(false, Ordering::SeqCst);
    });
    let user_req = RouteRequest {
        user_id: Some("u".into()),
        ..ws_req("ws", "big")
    };
    // Each outer decision emits its event (and so runs the handler) before it returns.
    r.route(&user_req).unwrap();
    r.route(&user_req).unwrap();
    let got = nested.lock().unwrap().clone();
    let exceeded = Err("budget_exceeded".to_string());
    assert_eq!(got, vec![Ok(()), exceeded.clone(), Ok(()), exceeded], "{got:?}");
    // The user's limiter counted all five of `u`'s decisions, nested ones included: its burst
    // is spent.
    assert!(matches!(
        r.route(&RouteRequest {
            user_id: Some("u".into()),
            ..ws_req("other", "big")
        }),
        Err(Error::RateLimited { .. })
    ));
}

#[test]
fn eight_threads_reserving_and_dropping_leave_nothing_reserved() {
    let r = common::router(
        policy(json!({"rate_limits": [{"scope": "user", "rpm": 1_000_000, "tpm": 100_000_000}]})),
        at(MON),
    );
    r.set_workspace_config("ws", workspace(json!({"daily": 1e6, "weekly": 1e6})))
        .unwrap();
    std::thread::scope(|s| {
        for t in 0..8 {
            let r = r.clone();
            s.spawn(move || {
                for i in 0..500 {
                    let req = RouteRequest {
                        user_id: Some(format!("u{}", (t * 500 + i) % 97)),
                        estimated_tokens: Some(1000),
                        ..ws_req("ws", "big")
                    };
                    drop(r.route(&req).unwrap());
                }
            });
        }
    });
    assert_eq!(spent(&r, "ws", BudgetWindow::Daily), 0.0);
    assert_eq!(spent(&r, "ws", BudgetWindow::Weekly), 0.0);
}

#[test]
fn sweeping_forgets_past_windows_only() {
    let clock = at(MON - 1_000);
    let r = common::router(policy(json!({})), clock.clone());
    r.set_workspace_config("ws", workspace(json!({"daily": 0.08}))).unwrap();
    spend_4_cents(&r, "ws").unwrap();
    r.sweep();
    assert!((spent(&r, "ws", BudgetWindow::Daily) - 0.04).abs() < 1e-9);
    clock.set(MON);
    r.sweep();
    spend_4_cents(&r, "ws").unwrap();
    r.sweep();
    spend_4_cents(&r, "ws").unwrap();
    assert!((spent(&r, "ws", BudgetWindow::Daily) - 0.08).abs() < 1e-9);
    assert!(matches!(spend_4_cents(&r, "ws"), Err(Error::BudgetExceeded { .. })));
}

/// One thread deciding for more routers than it keeps views of (each has its own budgets and
/// limiters): every router sees its own counters, and a change reaches the next request.
#[test]
fn one_thread_many_routers_keep_their_own_budgets_and_limits() {
    let limit = json!({"rate_limits": [{"scope": "user", "rpm": 3, "burst": 3}]});
    let routers: Vec<Router> = (0..6)
        .map(|_| {
            let r = common::router(policy(limit.clone()), at(MON));
            r.set_workspace_config("ws", workspace(json!({"daily": 0.08}))).unwrap();
            r
        })
        .collect();
    let user_req = |u: &str| RouteRequest {
        user_id: Some(u.into()),
        ..ws_req("ws", "small")
    };
    for round in 0..3 {
        for r in &routers {
            drop(r.route(&user_req("u")).unwrap_or_else(|e| panic!("round {round}: {e}")));
        }
    }
    for (i, r) in routers.iter().enumerate() {
        assert!(
            matches!(r.route(&user_req("u")), Err(Error::RateLimited { .. })),
            "router {i}"
        );
        spend_4_cents(r, "ws").unwrap();
    }
    routers[2]
        .set_workspace_config("ws", workspace(json!({"daily": 0.04})))
        .unwrap();
    for (i, r) in routers.iter().enumerate() {
        assert!((spent(r, "ws", BudgetWindow::Daily) - 0.04).abs() < 1e-9, "router {i}");
        let second = spend_4_cents(r, "ws");
        assert_eq!(
            matches!(second, Err(Error::BudgetExceeded { .. })),
            i == 2,
            "router {i}"
        );
    }
}

/// A decision may outlive its router: dropping it later gives its reservation back to a store
/// someone still holds, and does nothing once the store is gone.
#[test]
fn a_decision_outliving_its_router_releases_into_a_live_store() {
    let store: Arc<dyn StateStore> = Arc::new(InMemoryStore::new());
    let r = Router::builder()
        .policy(policy(json!({})))
        .clock(at(MON))
        .store(store.clone())
        .build()
        .unwrap();
    r.set_workspace_config("ws", workspace(json!({"daily": 1.0}))).unwrap();
    let d = r.route(&ws_req("ws", "big")).unwrap();
    let key = "{ws:ws}:budget:20261123";
    assert!(store.get(key).unwrap() > 0, "reserved");
    drop(r);
    drop(d);
    assert_eq!(store.get(key).unwrap(), 0, "given back");
    // This thread's cache of views holds the plan, which does not keep the store alive.
    let weak = Arc::downgrade(&store);
    drop(store);
    assert!(weak.upgrade().is_none(), "the store went with its router");
    let r = common::router(policy(json!({})), at(MON));
    r.set_workspace_config("ws", workspace(json!({"daily": 1.0}))).unwrap();
    let d = r.route(&ws_req("ws", "big")).unwrap();
    drop(r);
    drop(d);
}

/// Reservations of many budgets (more than a thread keeps handles of), taken on one thread
/// and given back or settled on others, and across a configuration change: every budget ends
/// at its exact spend.
#[test]
fn reservations_of_many_budgets_dropped_anywhere_come_back() {
    let r = common::router(policy(json!({})), at(MON));
    let ids: Vec<String> = (0..40).map(|i| format!("ws-{i}")).collect();
    for id in &ids {
        r.set_workspace_config(id, workspace(json!({"daily": 1e6}))).unwrap();
    }
    let req = |id: &str| RouteRequest {
        estimated_tokens: Some(1000),
        ..ws_req(id, "big")
    };
    for round in 0..3 {
        let held: Vec<Decision> = ids.iter().map(|id| r.route(&req(id)).unwrap()).collect();
        assert!(ids.iter().all(|id| spent(&r, id, BudgetWindow::Daily) > 0.0));
        // Dropped on other threads, half of them reported first.
        std::thread::scope(|s| {
            for (k, d) in held.into_iter().enumerate() {
                let r = &r;
                s.spawn(move || {
                    if k % 2 == 0 {
                        r.report(&d, Outcome::success(1.0).with_tokens(1000, 1000)).unwrap();
                    }
                });
            }
        });
        for (k, id) in ids.iter().enumerate() {
            let want = if k % 2 == 0 { 0.04 * f64::from(round + 1) } else { 0.0 };
            assert!(
                (spent(&r, id, BudgetWindow::Daily) - want).abs() < 1e-9,
                "{id} round {round}"
            );
        }
        // Dropped here, in an order that reuses this thread's handles.
        for id in ids.iter().rev() {
            drop(r.route(&req(id)).unwrap());
        }
        // A new configuration: a new plan, whose budgets replace the kept handles.
        r.set_workspace_config("other", workspace(json!({"daily": 1.0})))
            .unwrap();
    }
}
