//! Registry: models, endpoints, head status, heartbeats, filters, events, shared store.

mod common;

use common::*;
use router_core::*;
use std::sync::Arc;

fn two_models() -> Policy {
    let mut p = weighted(&[1.0, 1.0]);
    p.models[0].tags = vec!["fast".into()];
    p.models.push(Model::new("emb", "acme").with_type(ModelType::Embedding));
    p.endpoints
        .push(Endpoint::new("emb-0", "emb", "http://emb").with_region("eu-west"));
    p.endpoints[0].region = Some("us-east".into());
    p
}

#[test]
fn register_update_deregister_and_filter() {
    let r = router(two_models(), clock());
    let events = r.events().subscribe(64, false);
    let id = r
        .register_model(Model::new("claude", "anthropic").with_capability("vision", Some(200_000)))
        .unwrap();
    assert_eq!(id, "claude");
    assert_eq!(
        r.register_model(Model::new("claude", "x")).unwrap_err().kind(),
        "already_exists"
    );
    r.register_endpoint(Endpoint::new("c1", "claude", "http://c1").with_region("eu-west"))
        .unwrap();
    assert_eq!(
        r.list_models(&ModelFilter {
            provider: Some("anthropic".into()),
            ..Default::default()
        })
        .len(),
        1
    );
    assert_eq!(
        r.list_models(&ModelFilter {
            tag: Some("fast".into()),
            ..Default::default()
        })[0]
            .id,
        "m"
    );
    let eu: Vec<String> = r
        .list_models(&ModelFilter {
            region: Some("eu-west".into()),
            ..Default::default()
        })
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(eu, vec!["emb", "claude"]);
    assert_eq!(
        r.list_models(&ModelFilter {
            model_type: Some(ModelType::Embedding),
            ..Default::default()
        })
        .len(),
        1
    );
    assert_eq!(
        r.list_endpoints(&EndpointFilter {
            region: Some("eu-west".into()),
            ..Default::default()
        })
        .len(),
        2
    );
    assert_eq!(
        r.list_endpoints(&EndpointFilter {
            model_id: Some("m".into()),
            ..Default::default()
        })
        .len(),
        2
    );

    let mut c1 = r.endpoint("c1").unwrap();
    c1.weight = 3.0;
    r.update_endpoint(c1).unwrap();
    assert_eq!(r.endpoint("c1").unwrap().weight, 3.0);
    assert_eq!(
        r.update_endpoint(Endpoint::new("nope", "m", "u")).unwrap_err().kind(),
        "not_found"
    );

    r.deregister_model("claude").unwrap();
    assert!(r.endpoint("c1").is_none());
    let kinds: Vec<&str> = events
        .drain()
        .iter()
        .map(Event::kind)
        .filter(|k| *k != "policy_changed")
        .collect();
    assert_eq!(
        kinds,
        vec![
            "model_registered",
            "head_registered",
            "head_deregistered",
            "model_deregistered"
        ]
    );
}

#[test]
fn seed_payloads_register_as_written() {
    let r = router(Policy::default(), clock());
    let model: Model = serde_json::from_str(
        r#"{"name": "GPT-4 Turbo", "version": "gpt-4-1106-preview", "provider": "openai", "modelType": "chat",
            "capabilities": [{"type": "text-generation", "maxTokens": 4096}], "status": "active"}"#,
    )
    .unwrap();
    let id = r.register_model(model).unwrap();
    let mut ep: Endpoint = serde_json::from_str(
        r#"{"url": "https://api.openai.com/v1/chat/completions", "type": "primary", "weight": 1.0,
            "healthCheckUrl": "https://api.openai.com/v1/models"}"#,
    )
    .unwrap();
    ep.model_id = id.clone();
    let eid = r.register_endpoint(ep).unwrap();
    assert_eq!(eid, "gpt-4-1106-preview#0");
    let d = r
        .route(&RouteRequest::from_json(r#"{"id": "req-1", "agentType": "creative"}"#).unwrap())
        .unwrap();
    assert_eq!(d.model_id(), "gpt-4-1106-preview");
}

#[test]
fn bad_input_is_rejected_and_previous_state_keeps_serving() {
    let r = router(weighted(&[1.0, 1.0]), clock());
    let gen = r.generation();
    let e = r
        .register_endpoint(Endpoint::new("x", "m", "http://x").with_weight(-1.0))
        .unwrap_err();
    assert_eq!((e.kind(), e.field()), ("invalid_config", Some("weight")));
    let e = r
        .register_endpoint(Endpoint::new("x", "ghost", "http://x"))
        .unwrap_err();
    assert_eq!(e.field(), Some("model_id"));
    // All-or-nothing batch: the second entry is bad, so the first is not registered either.
    let e = r
        .register_endpoints(vec![
            Endpoint::new("ok", "m", "http://ok"),
            Endpoint::new("bad", "m", ""),
        ])
        .unwrap_err();
    assert_eq!(e.field(), Some("endpoints[1].url"));
    assert!(r.endpoint("ok").is_none());
    let e = r
        .set_model_statuses(&[ModelStatusUpdate {
            model_id: "ghost".into(),
            status: ModelStatus::Inactive,
        }])
        .unwrap_err();
    assert_eq!(e.field(), Some("updates[0].model_id"));
    let mut bad = weighted(&[1.0]);
    bad.endpoints[0].weight = f64::NAN;
    assert_eq!(r.load_policy(bad).unwrap_err().field(), Some("endpoints[0].weight"));
    let mut cfg = RouterConfig::default();
    cfg.hybrid.load = -1.0;
    assert_eq!(r.set_config(cfg).unwrap_err().field(), Some("hybrid.load"));
    assert_eq!(r.generation(), gen, "no rejected change produced a new configuration");
    assert_eq!(r.list_endpoints(&EndpointFilter::default()).len(), 2);
    r.route(&req(StrategyKind::RoundRobin)).unwrap();
}

#[test]
fn batch_status_update_takes_models_out_of_rotation() {
    let r = router(two_models(), clock());
    r.set_model_statuses(&[ModelStatusUpdate {
        model_id: "m".into(),
        status: ModelStatus::Inactive,
    }])
    .unwrap();
    let e = r.route(&RouteRequest::for_type(ModelType::Chat)).unwrap_err();
    assert_eq!(e.kind(), "no_candidate_model");
    assert_eq!(
        r.route(&RouteRequest::for_model("m")).unwrap_err().kind(),
        "no_candidate_model"
    );
    r.set_model_statuses(&[ModelStatusUpdate {
        model_id: "m".into(),
        status: ModelStatus::Deprecated,
    }])
    .unwrap();
    assert!(
        r.route(&RouteRequest::for_type(ModelType::Chat)).is_err(),
        "deprecated: not chosen by type"
    );
    assert!(
        r.route(&RouteRequest::for_model("m")).is_ok(),
        "deprecated: still served by id"
    );
}

#[test]
fn head_status_updates_apply_in_order_and_emit_events() {
    let clk = clock();
    let r = router(weighted(&[1.0, 1.0]), clk.clone());
    let events = r.events().subscribe(64, false);
    let u: HeadStatusUpdate = serde_json::from_str(&format!(
        r#"{{"head_id": "e0", "status": "unhealthy", "current_load": 5, "timestamp": {}}}"#,
        T0 + 10
    ))
    .unwrap();
    assert!(r.update_head_status(&u).unwrap());
    let stale = HeadStatusUpdate {
        status: HeadStatus::Healthy,
        timestamp: Some(T0 + 5),
        ..u.clone()
    };
    assert!(!r.update_head_status(&stale).unwrap(), "older report ignored");
    let st = r.endpoint_status("e0").unwrap();
    assert_eq!((st.status, st.reported_load), (HeadStatus::Unhealthy, 5));
    for _ in 0..100 {
        assert_eq!(r.route(&req(StrategyKind::RoundRobin)).unwrap().endpoint_id(), "e1");
    }
    let evs = events.drain();
    assert_eq!(evs.len(), 1);
    assert!(
        matches!(&evs[0], Event::HeadStatusChanged { endpoint_id, from: HeadStatus::Healthy, to: HeadStatus::Unhealthy, .. } if endpoint_id == "e0")
    );
    assert_eq!(
        r.update_head_status(&HeadStatusUpdate::new("ghost", HeadStatus::Healthy))
            .unwrap_err()
            .kind(),
        "not_found"
    );
}

#[test]
fn degraded_endpoints_serve_only_when_no_healthy_one_can() {
    let r = router(weighted(&[1.0, 1.0]), clock());
    r.update_head_status(&HeadStatusUpdate::new("e0", HeadStatus::Degraded))
        .unwrap();
    for k in StrategyKind::ALL {
        let d = r.route(&req(k)).unwrap();
        assert_eq!(d.endpoint_id(), "e1", "{k}");
        assert!(!d.is_degraded());
    }
    r.update_head_status(&HeadStatusUpdate::new("e1", HeadStatus::Draining))
        .unwrap();
    let d = r.route(&req(StrategyKind::PowerOfTwo)).unwrap();
    assert_eq!(d.endpoint_id(), "e0");
    assert!(d.is_degraded());
    assert!(d.reason().contains("degraded"), "{}", d.reason());
    r.update_head_status(&HeadStatusUpdate::new("e0", HeadStatus::Offline))
        .unwrap();
    let e = r.route(&req(StrategyKind::PowerOfTwo)).unwrap_err();
    assert_eq!(e.kind(), "no_healthy_endpoint");
    assert!(
        e.to_string().contains("status draining") && e.to_string().contains("status offline"),
        "{e}"
    );
}

#[test]
fn heartbeats_expire_heads_and_revive_them() {
    let clk = clock();
    let mut p = weighted(&[1.0, 1.0]);
    p.settings.heartbeat_ttl_ms = 10_000;
    let r = router(p, clk.clone());
    let events = r.events().subscribe(64, false);
    clk.advance(9_999);
    r.heartbeat("e1").unwrap();
    assert!(r.sweep().is_empty());
    clk.advance(2);
    // e0 was last seen at registration, 10,001 ms ago: expired, whether or not sweep ran.
    for _ in 0..50 {
        assert_eq!(r.route(&req(StrategyKind::WeightedRandom)).unwrap().endpoint_id(), "e1");
    }
    assert_eq!(r.sweep(), vec!["e0".to_string()]);
    assert!(r.sweep().is_empty(), "one event per expiry");
    assert!(r.endpoint_status("e0").unwrap().expired);
    r.heartbeat("e0").unwrap();
    assert!(!r.endpoint_status("e0").unwrap().expired);
    let kinds: Vec<&str> = events.drain().iter().map(Event::kind).collect();
    assert_eq!(kinds, vec!["head_expired", "head_revived"]);
    let seen = shares(&r, &req(StrategyKind::RoundRobin), 10);
    assert_eq!(seen.len(), 2);
    assert_eq!(r.heartbeat("ghost").unwrap_err().kind(), "not_found");
}

#[test]
fn live_state_survives_configuration_changes() {
    let r = router(weighted(&[1.0]), clock());
    let d = r.route(&req(StrategyKind::RoundRobin)).unwrap();
    r.report(&d, Outcome::success(120.0)).unwrap();
    let held = r.route(&req(StrategyKind::RoundRobin)).unwrap();
    r.register_model(Model::new("other", "p")).unwrap();
    let mut e0 = r.endpoint("e0").unwrap();
    e0.url = "http://moved".into();
    r.update_endpoint(e0).unwrap();
    let st = r.endpoint_status("e0").unwrap();
    assert_eq!((st.in_flight, st.requests), (1, 1));
    assert_eq!(st.latency_ewma_ms, Some(120.0));
    assert_eq!(r.route(&req(StrategyKind::RoundRobin)).unwrap().url(), "http://moved");
    drop(held);
    assert_eq!(r.endpoint_status("e0").unwrap().in_flight, 0);
}

#[test]
fn routers_sharing_a_store_act_as_one() {
    let store = Arc::new(InMemoryStore::new());
    let a = Router::builder()
        .policy(weighted(&[1.0, 1.0]))
        .store(store.clone())
        .build()
        .unwrap();
    let b = Router::builder()
        .policy(weighted(&[1.0, 1.0]))
        .store(store.clone())
        .build()
        .unwrap();
    a.update_head_status(&HeadStatusUpdate::new("e0", HeadStatus::Offline))
        .unwrap();
    assert_eq!(b.endpoint_status("e0").unwrap().status, HeadStatus::Offline);
    b.register_endpoint(Endpoint::new("e2", "m", "http://e2")).unwrap();
    assert!(a.endpoint("e2").is_some());
    a.deregister_endpoint("e1").unwrap();
    assert!(b.endpoint("e1").is_none());
    for _ in 0..20 {
        assert_eq!(b.route(&req(StrategyKind::RoundRobin)).unwrap().endpoint_id(), "e2");
    }
    // Configuration beyond the registry travels too.
    a.set_workspace_config("ws-1", WorkspaceConfig::default()).unwrap();
    assert!(b.workspace_config("ws-1").is_some());
    b.remove_workspace_config("ws-1").unwrap();
    assert!(a.workspace_config("ws-1").is_none());
    let mut p = weighted(&[1.0]);
    p.settings.max_fallbacks = 1;
    a.load_policy(p.clone()).unwrap();
    assert_eq!(b.policy(), a.policy());
    assert_eq!(b.policy().settings.max_fallbacks, 1);
    // A 429 on one instance cools the endpoint down on every instance.
    a.update_head_status(&HeadStatusUpdate::new("e0", HeadStatus::Healthy))
        .unwrap();
    let d = a.route(&req(StrategyKind::RoundRobin)).unwrap();
    a.report(
        &d,
        Outcome::failure(
            ErrorClass::RateLimited {
                retry_after_ms: Some(5_000),
            },
            10.0,
        ),
    )
    .unwrap();
    let until = a.endpoint_status("e0").unwrap().cooldown_until_ms;
    assert!(until > 0);
    assert_eq!(b.endpoint_status("e0").unwrap().cooldown_until_ms, until);
}

#[test]
fn policy_round_trips_through_export() {
    let r = router(two_models(), clock());
    let exported = r.policy();
    let json = exported.to_json();
    let r2 = router(Policy::from_json(&json).unwrap(), clock());
    assert_eq!(r2.policy(), exported);
}
