//! Several routers in one process, each with its own RedisStore (as separate instances would
//! be), sharing one redis-server.

#[macro_use]
mod common;

use common::*;
use router_core::{
    Endpoint, ErrorClass, Event, HeadStatus, HeadStatusUpdate, Outcome, Policy, Router, Rule, StateStore, StoreStatus,
    WorkspaceConfig,
};
use router_redis::RedisStore;
use std::sync::Arc;
use std::time::Duration;

const WITHIN: Duration = Duration::from_millis(100);

fn fleet(srv_url: &str, p: &str, n: usize, policy: Policy) -> Vec<(Arc<RedisStore>, Router)> {
    (0..n)
        .map(|_| {
            let s = store(srv_url, p);
            let r = router(&s, policy.clone());
            ready(&s);
            (s, r)
        })
        .collect()
}

fn rule(id: &str, priority: i64) -> Rule {
    serde_json::from_value(serde_json::json!({
        "id": id, "name": id, "priority": priority, "target_models": [{"model_id": "m"}]
    }))
    .unwrap()
}

on_both!(
    heads,
    a_head_registered_on_one_instance_is_routable_on_the_others_within_100ms,
    heads_are_routable_on_the_others_within_100ms_on_a_cluster
);

/// (a) A head registered on A is routable on B and C within 100 ms.
fn heads(srv: &dyn Backend) {
    let f = fleet(&srv.url(), &prefix("heads"), 3, policy(1));
    let (a, b, c) = (&f[0].1, &f[1].1, &f[2].1);
    for (i, from) in [a, b, c].into_iter().enumerate() {
        let id = format!("new{i}");
        from.register_endpoint(Endpoint::new(&id, "m", format!("http://{id}")))
            .unwrap();
        for (j, (_, other)) in f.iter().enumerate() {
            let took = eventually(Duration::from_secs(2), || routes_to(other, &id, 8));
            let took = took.unwrap_or_else(|| panic!("{id} never routable on instance {j}"));
            assert!(took <= WITHIN, "{id} routable on instance {j} after {took:?}");
        }
    }
    // Head status travels too: offline on A, unroutable on B and C.
    a.update_head_status(&HeadStatusUpdate::new("new0", HeadStatus::Offline))
        .unwrap();
    for (_, other) in &f[1..] {
        let took = eventually(Duration::from_secs(2), || {
            other.endpoint_status("new0").unwrap().status == HeadStatus::Offline
        });
        assert!(took.is_some_and(|t| t <= WITHIN), "{took:?}");
        assert!(!routes_to(other, "new0", 16));
    }
    // A deregistration as well.
    b.deregister_endpoint("new1").unwrap();
    assert!(eventually(WITHIN * 3, || a.endpoint("new1").is_none()
        && c.endpoint("new1").is_none())
    .is_some());
}

on_both!(
    policy_changes,
    policy_changes_on_one_instance_are_live_on_the_others_within_100ms,
    policy_changes_are_live_on_the_others_within_100ms_on_a_cluster
);

/// (b) Rules, workspace configuration, whole policies and cooldowns set on A are live on B
/// within 100 ms.
fn policy_changes(srv: &dyn Backend) {
    let f = fleet(&srv.url(), &prefix("policy"), 2, policy(2));
    let (a, b) = (&f[0].1, &f[1].1);

    a.add_rule(rule("r1", 5)).unwrap();
    let took = eventually(Duration::from_secs(2), || b.rules().iter().any(|r| r.id == "r1"));
    assert!(took.is_some_and(|t| t <= WITHIN), "rule: {took:?}");

    let ws = WorkspaceConfig {
        model_restrictions: vec!["m".into()],
        ..Default::default()
    };
    a.set_workspace_config("ws-1", ws.clone()).unwrap();
    let took = eventually(Duration::from_secs(2), || {
        b.workspace_config("ws-1") == Some(ws.clone())
    });
    assert!(took.is_some_and(|t| t <= WITHIN), "workspace: {took:?}");

    let mut p = policy(3);
    p.settings.max_fallbacks = 1;
    a.load_policy(p).unwrap();
    let took = eventually(Duration::from_secs(2), || b.policy() == a.policy());
    assert!(took.is_some_and(|t| t <= WITHIN), "load_policy: {took:?}");
    assert_eq!(b.policy().settings.max_fallbacks, 1);
    assert!(b.workspace_config("ws-1").is_none());

    // A 429 on A cools the endpoint down on B.
    let d = a.route(&req()).unwrap();
    let e = d.endpoint_id().to_owned();
    a.report(
        &d,
        Outcome::failure(
            ErrorClass::RateLimited {
                retry_after_ms: Some(30_000),
            },
            10.0,
        ),
    )
    .unwrap();
    let until = a.endpoint_status(&e).unwrap().cooldown_until_ms;
    assert!(until > 0);
    let took = eventually(Duration::from_secs(2), || {
        b.endpoint_status(&e).unwrap().cooldown_until_ms == until
    });
    assert!(took.is_some_and(|t| t <= WITHIN), "cooldown: {took:?}");
}

on_both!(
    restart,
    a_restarted_instance_rebuilds_its_state_from_redis,
    a_restarted_instance_rebuilds_its_state_on_a_cluster
);

/// (f) A restarted instance rebuilds its state (policy, head status) from Redis, whatever
/// policy it was started with.
fn restart(srv: &dyn Backend) {
    let p = prefix("restart");
    let f = fleet(&srv.url(), &p, 1, policy(2));
    let a = &f[0].1;
    a.add_rule(rule("r1", 1)).unwrap();
    a.set_workspace_config("ws-9", WorkspaceConfig::default()).unwrap();
    a.update_head_status(&HeadStatusUpdate::new("e1", HeadStatus::Degraded))
        .unwrap();
    assert!(f[0].0.flush(Duration::from_secs(2)));
    let expected = a.policy();
    drop(f);

    // Started with another (empty) policy: the stored one wins, at once.
    let s = store(&srv.url(), &p);
    let r = router(&s, Policy::default());
    assert_eq!(r.policy(), expected);
    assert_eq!(r.endpoint_status("e1").unwrap().status, HeadStatus::Degraded);
    ready(&s);
    assert_eq!(s.health().config_version, expected_version(srv, &p));
}

fn expected_version(srv: &dyn Backend, p: &str) -> u64 {
    redis::cmd("GET")
        .arg(format!("{p}{{cfg}}:version"))
        .query(&mut srv.conn())
        .unwrap()
}

/// Notifications lost while an instance was cut off are caught up when it reconnects; the
/// router hears store_degraded and store_recovered.
#[test]
fn changes_missed_while_disconnected_are_caught_up() {
    let srv = RedisServer::start();
    let proxy = Proxy::start(srv.port);
    let p = prefix("gap");
    let sa = store(&srv.url(), &p);
    let a = router(&sa, policy(1));
    ready(&sa);
    let sb = Arc::new(RedisStore::connect(config(&proxy.url(), &p).with_timeout(Duration::from_millis(50))).unwrap());
    let b = router(&sb, Policy::default());
    ready(&sb);
    assert_eq!(b.policy(), a.policy());
    let events = b.events().subscribe(64, false);

    proxy.swallow_replies(true);
    proxy.cut();
    assert!(eventually(Duration::from_secs(1), || matches!(
        sb.status(),
        StoreStatus::Degraded { .. }
    ))
    .is_some());
    for i in 0..5 {
        a.register_endpoint(Endpoint::new(format!("late{i}"), "m", "http://late"))
            .unwrap();
    }
    // B keeps routing from what it has.
    assert!(b.route(&req()).is_ok());
    assert!(b.endpoint("late0").is_none());
    proxy.swallow_replies(false);
    assert!(eventually(Duration::from_secs(3), || b.policy() == a.policy()).is_some());
    ready(&sb);
    // The store says healthy just before its sinks hear of it (so that a sink's callback sees
    // the new status), so the recovery's event can follow `ready`: wait for it.
    let mut kinds: Vec<&str> = Vec::new();
    eventually(Duration::from_secs(3), || {
        kinds.extend(std::iter::from_fn(|| events.try_recv()).filter_map(|e| match e {
            Event::StoreDegraded { .. } => Some("degraded"),
            Event::StoreRecovered { .. } => Some("recovered"),
            _ => None,
        }));
        kinds.last() == Some(&"recovered")
    });
    assert_eq!(kinds.first(), Some(&"degraded"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"recovered"), "{kinds:?}");
}

on_both!(
    converge,
    concurrent_changes_converge_on_every_instance,
    concurrent_changes_converge_on_a_cluster
);

/// Concurrent changes on several instances converge: every instance, and one started later,
/// ends with the same policy (the order Redis versioned them in).
fn converge(srv: &dyn Backend) {
    let p = prefix("converge");
    let f = fleet(&srv.url(), &p, 3, policy(1));
    let threads: Vec<_> = f
        .iter()
        .enumerate()
        .map(|(i, (_, r))| {
            let r = r.clone();
            std::thread::spawn(move || {
                for k in 0..20 {
                    let ws = WorkspaceConfig {
                        model_restrictions: vec![format!("from-{i}-{k}")],
                        ..Default::default()
                    };
                    r.set_workspace_config("shared", ws).unwrap();
                    r.add_rule(rule(&format!("r{i}-{k}"), k)).unwrap();
                    if k % 5 == 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let same = || {
        let p0 = canonical(&f[0].1);
        f.iter().all(|(_, r)| canonical(r) == p0)
    };
    if eventually(Duration::from_secs(5), same).is_none() {
        for (i, (s, r)) in f.iter().enumerate() {
            let p = r.policy();
            let ids: Vec<_> = p.rules.iter().map(|r| r.id.clone()).collect();
            eprintln!(
                "instance {i}: {:?} ws={:?} rules={ids:?}",
                s.health().config_version,
                p.workspaces
            );
        }
        panic!("instances diverged");
    }
    assert_eq!(f[0].1.rules().len(), 60);
    // The stored snapshot (rewritten by anti-entropy when needed) matches too.
    let late_store = store(&srv.url(), &p);
    let late = router(&late_store, Policy::default());
    assert!(eventually(Duration::from_secs(3), || canonical(&late) == canonical(&f[0].1)).is_some());
}

/// The policy with its lists in id order: instances that learnt of concurrent additions in
/// different orders list them differently (rules are evaluated by priority, then id, so the
/// order of the list means nothing).
fn canonical(r: &Router) -> Policy {
    let mut p = r.policy();
    p.rules.sort_by(|a, b| a.id.cmp(&b.id));
    p.models.sort_by(|a, b| a.id.cmp(&b.id));
    p.endpoints.sort_by(|a, b| a.id.cmp(&b.id));
    p
}

on_both!(
    audit,
    decisions_are_published_on_the_audit_channel,
    decisions_are_published_on_the_audit_channel_on_a_cluster
);

/// Decisions are published on the audit channel.
fn audit(srv: &dyn Backend) {
    let p = prefix("audit");
    let s = store(&srv.url(), &p);
    let r = router(&s, policy(1));
    ready(&s);
    let mut sub = srv.node_con();
    let mut ps = sub.as_pubsub();
    ps.subscribe(format!("{p}audit:routing:logs")).unwrap();
    ps.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.forward_decisions(&r);
    let d = r.route(&req()).unwrap();
    let msg = ps.get_message().unwrap();
    let record: serde_json::Value = serde_json::from_slice(msg.get_payload_bytes()).unwrap();
    assert_eq!(record["decision_id"], d.record().decision_id);
    assert_eq!(record["endpoint_id"], "e0");
}
