//! Issue 6 (c) and (d) at the router level: budgets and rate limits set in the policy, spent by
//! three routers (each with its own RedisStore, as separate instances) sharing one redis-server.

#[macro_use]
mod common;

use common::*;
use router_core::{BudgetScope, BudgetWindow, Error, Outcome, Policy, RouteRequest, Router};
use std::sync::atomic::{AtomicUsize, Ordering};

fn priced(extra: serde_json::Value) -> Policy {
    let mut p = serde_json::json!({
        "models": [{"id": "m", "provider": "p", "pricing": {"input_per_1k": 0.01, "output_per_1k": 0.03}}],
        "endpoints": [{"id": "e0", "model_id": "m", "url": "http://e0"}],
        "usage": {"default_output_tokens": 256}
    });
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    Policy::from_json(&p.to_string()).unwrap()
}

fn fleet(url: &str, p: &str, policy: Policy) -> Vec<Router> {
    (0..3)
        .map(|_| {
            let s = store(url, p);
            let r = router(&s, policy.clone());
            ready(&s);
            r
        })
        .collect()
}

on_both!(
    strict_workspace_budget,
    a_strict_workspace_budget_holds_across_instances,
    a_strict_workspace_budget_holds_on_a_cluster
);

/// (c) A $1.00 workspace budget, strict, spent by 3 instances at once: never more than $1.00
/// plus one request's cost.
fn strict_workspace_budget(srv: &dyn Backend) {
    let policy = priced(serde_json::json!({
        "workspaces": {"ws": {"budgetLimits": {"daily": 1.0, "consistency": "strict"}}}
    }));
    let routers = fleet(&srv.url(), &prefix("budget"), policy);
    let admitted = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for r in &routers {
            for _ in 0..2 {
                let admitted = &admitted;
                s.spawn(move || loop {
                    let req = RouteRequest {
                        model: Some("m".into()),
                        workspace_id: Some("ws".into()),
                        estimated_tokens: Some(2000),
                        ..Default::default()
                    };
                    match r.route(&req) {
                        Ok(d) => {
                            admitted.fetch_add(1, Ordering::Relaxed);
                            r.report(&d, Outcome::success(1.0).with_tokens(2000, 256)).unwrap();
                        }
                        Err(Error::BudgetExceeded { window, .. }) => {
                            assert_eq!(window, BudgetWindow::Daily);
                            break;
                        }
                        Err(e) => panic!("{e}"),
                    }
                });
            }
        }
    });
    let one = 0.01 * 2.0 + 0.03 * 0.256;
    // Settlements are batched: wait for the flushes, then read the shared total.
    let spent = || {
        routers[0]
            .budget_status(BudgetScope::Workspace, "ws")
            .first()
            .map(|s| s.spent)
            .unwrap()
    };
    let want = admitted.load(Ordering::Relaxed) as f64 * one;
    assert!(
        eventually(std::time::Duration::from_secs(2), || (spent() - want).abs() < 1e-6).is_some(),
        "spent {} vs {want}",
        spent()
    );
    assert!(spent() <= 1.0 + 1e-9, "strict: spent {}", spent());
    assert!(spent() > 1.0 - one - 1e-9, "stopped early: {}", spent());
}

on_both!(
    shared_rate_limit,
    a_shared_rate_limit_admits_its_limit_across_instances,
    a_shared_rate_limit_admits_its_limit_on_a_cluster
);

/// (d) A 100-per-minute limit shared by 3 instances (strict: in Redis, Redis TIME as the
/// clock) admits 100 ± 1.
fn shared_rate_limit(srv: &dyn Backend) {
    let policy = priced(serde_json::json!({
        "rate_limits": [{"scope": "user", "rpm": 100, "consistency": "strict"}]
    }));
    let routers = fleet(&srv.url(), &prefix("limit"), policy);
    let admitted = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for r in &routers {
            let admitted = &admitted;
            s.spawn(move || {
                for _ in 0..100 {
                    let req = RouteRequest {
                        model: Some("m".into()),
                        user_id: Some("bob".into()),
                        ..Default::default()
                    };
                    match r.route(&req) {
                        Ok(_) => {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(Error::RateLimited { key, retry_after_ms }) => {
                            assert_eq!(key, "user:bob:rpm");
                            assert!(retry_after_ms <= 600, "{retry_after_ms}");
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            });
        }
    });
    let n = admitted.load(Ordering::Relaxed);
    assert!((99..=101).contains(&n), "admitted {n}");
}

/// A batched workspace budget (the default) spent by 3 instances: each adds through its counter
/// cell without waiting on Redis; the flushes bring every instance to the same total, and a
/// dropped decision's reservation comes back.
#[test]
fn a_batched_workspace_budget_converges_across_instances() {
    let srv = RedisServer::start();
    let policy = priced(serde_json::json!({
        "workspaces": {"ws": {"budgetLimits": {"daily": 100.0}}}
    }));
    let routers = fleet(&srv.url(), &prefix("batched"), policy);
    let req = RouteRequest {
        model: Some("m".into()),
        workspace_id: Some("ws".into()),
        ..Default::default()
    };
    std::thread::scope(|s| {
        for r in &routers {
            let req = &req;
            s.spawn(move || {
                for _ in 0..50 {
                    let d = r.route(req).unwrap();
                    r.report(&d, Outcome::success(1.0).with_tokens(1000, 1000)).unwrap();
                    drop(r.route(req).unwrap());
                }
            });
        }
    });
    // $0.04 per reported request, nothing for the dropped ones.
    let want = 150.0 * 0.04;
    for (i, r) in routers.iter().enumerate() {
        let spent = || r.budget_status(BudgetScope::Workspace, "ws")[0].spent;
        assert!(
            eventually(std::time::Duration::from_secs(5), || (spent() - want).abs() < 1e-6).is_some(),
            "router {i}: spent {} vs {want}",
            spent()
        );
    }
}
