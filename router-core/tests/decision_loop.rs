//! The decision loop: route, report, in-flight guards, explain, events, threads.

mod common;

use common::*;
use router_core::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[test]
fn one_decision_reported_and_released_from_many_threads_counts_once() {
    // Reports and releases race for the decision's flag (taken under the endpoint's writer
    // lock): exactly one wins, the in-flight count goes back once, one request is counted.
    let r = router(weighted(&[1.0]), clock());
    for round in 0..50 {
        let d = r.route(&req(StrategyKind::RoundRobin)).unwrap();
        let wins = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..4 {
                let (r, d, wins) = (&r, &d, &wins);
                s.spawn(move || {
                    let won = if t % 2 == 0 {
                        r.report(d, Outcome::success(10.0)).is_ok()
                    } else {
                        d.release()
                    };
                    if won {
                        wins.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(wins.load(Ordering::Relaxed), 1, "round {round}");
        assert!(d.is_released());
        assert_eq!(r.endpoint_status("e0").unwrap().in_flight, 0, "round {round}");
    }
    let st = r.endpoint_status("e0").unwrap();
    assert!(st.requests <= 50, "only winning reports count: {}", st.requests);
}

#[test]
fn route_report_and_guard_lifecycle() {
    let r = router(weighted(&[1.0]), clock());
    let d = r.route(&req(StrategyKind::RoundRobin)).unwrap();
    assert_eq!((d.model_id(), d.endpoint_id(), d.url()), ("m", "e0", "http://e0"));
    assert_eq!(r.endpoint_status("e0").unwrap().in_flight, 1);
    r.report(&d, Outcome::success(250.0).with_tokens(25, 100).with_ttft(40.0))
        .unwrap();
    assert_eq!(r.endpoint_status("e0").unwrap().in_flight, 0);
    let e = r.report(&d, Outcome::success(1.0)).unwrap_err();
    assert_eq!(e.kind(), "already_reported");
    drop(d);
    let st = r.endpoint_status("e0").unwrap();
    assert_eq!(
        (st.in_flight, st.requests, st.tokens_in, st.tokens_out),
        (0, 1, 25, 100)
    );
    assert_eq!(st.ttft_ewma_ms, Some(40.0));

    // Dropped without a report: the slot comes back.
    let d = r.route(&req(StrategyKind::RoundRobin)).unwrap();
    drop(d);
    assert_eq!(r.endpoint_status("e0").unwrap().in_flight, 0);

    // An invalid outcome is rejected and the slot stays held until a valid report or drop.
    let d = r.route(&req(StrategyKind::RoundRobin)).unwrap();
    let e = r.report(&d, Outcome::success(-5.0)).unwrap_err();
    assert_eq!((e.kind(), e.field()), ("invalid_request", Some("latency_ms")));
    assert_eq!(r.endpoint_status("e0").unwrap().in_flight, 1);
    assert!(d.release());
    assert!(!d.release());
    assert_eq!(r.endpoint_status("e0").unwrap().in_flight, 0);
}

#[test]
fn decisions_outlive_deregistration() {
    let r = router(weighted(&[1.0, 1.0]), clock());
    let d = r
        .route(&RouteRequest {
            ..req(StrategyKind::RoundRobin)
        })
        .unwrap();
    let id = d.endpoint_id().to_owned();
    r.deregister_endpoint(&id).unwrap();
    r.report(&d, Outcome::success(10.0)).unwrap();
    for _ in 0..20 {
        assert_ne!(r.route(&req(StrategyKind::RoundRobin)).unwrap().endpoint_id(), id);
    }
}

#[test]
fn errors_are_typed() {
    let r = router(weighted(&[1.0]), clock());
    let e = r.route(&RouteRequest::for_model("ghost")).unwrap_err();
    assert_eq!(
        e,
        Error::NotFound {
            kind: "model",
            id: "ghost".into()
        }
    );
    let e = r.route(&RouteRequest::for_type(ModelType::Embedding)).unwrap_err();
    assert_eq!(e.kind(), "no_candidate_model");
    let e = r
        .route(&RouteRequest {
            required_capabilities: vec!["vision".into()],
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(e.kind(), "no_candidate_model");
    let e = r
        .route(&RouteRequest {
            user_id: Some("x".repeat(5_000)),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(e.field(), Some("user_id"));
    r.register_model(Model::new("empty", "p")).unwrap();
    let e = r.route(&RouteRequest::for_model("empty")).unwrap_err();
    assert_eq!(e.kind(), "no_healthy_endpoint");
    assert!(e.to_string().contains("no endpoint registered"), "{e}");
}

#[test]
fn capabilities_and_token_limits_filter_models() {
    let p = Policy {
        models: vec![
            Model::new("small", "p").with_capability("text-generation", Some(4_096)),
            Model::new("vision", "p")
                .with_capability("text-generation", Some(128_000))
                .with_capability("vision", None),
        ],
        endpoints: vec![
            Endpoint::new("s", "small", "http://s"),
            Endpoint::new("v", "vision", "http://v"),
        ],
        ..Default::default()
    };
    let r = router(p, clock());
    let rq = RouteRequest {
        required_capabilities: vec!["vision".into()],
        ..Default::default()
    };
    for _ in 0..20 {
        assert_eq!(r.route(&rq).unwrap().model_id(), "vision");
    }
    let long = RouteRequest {
        content_length: Some(40_000),
        ..Default::default()
    };
    for _ in 0..20 {
        assert_eq!(r.route(&long).unwrap().model_id(), "vision");
    }
    let huge = RouteRequest {
        estimated_tokens: Some(1_000_000),
        ..Default::default()
    };
    assert_eq!(r.route(&huge).unwrap_err().kind(), "no_candidate_model");
    let x = r.explain(&long);
    let verdicts: Vec<(String, ModelVerdict)> = x.models.iter().map(|m| (m.model_id.clone(), m.verdict)).collect();
    assert_eq!(
        verdicts,
        vec![
            ("small".into(), ModelVerdict::TooManyTokens),
            ("vision".into(), ModelVerdict::Kept)
        ]
    );
}

#[test]
fn strategy_precedence_request_model_default() {
    let mut p = weighted(&[1.0, 1.0]);
    p.settings.default_strategy = StrategyKind::LeastLoaded;
    let r = router(p, clock());
    let d = r.route(&RouteRequest::for_model("m")).unwrap();
    assert_eq!(d.strategy(), StrategyKind::LeastLoaded);
    assert!(d.reason().contains("router default"), "{}", d.reason());
    let mut m = r.model("m").unwrap();
    m.routing_strategy = Some(StrategyKind::CostBased);
    r.update_model(m).unwrap();
    let d = r.route(&RouteRequest::for_model("m")).unwrap();
    assert_eq!(d.strategy(), StrategyKind::CostBased);
    assert!(d.reason().contains("model setting"));
    let d = r.route(&req(StrategyKind::Hybrid)).unwrap();
    assert_eq!(d.strategy(), StrategyKind::Hybrid);
    assert!(d.reason().contains("request override"));
}

#[test]
fn explain_lists_every_candidate_and_changes_nothing() {
    let mut p = weighted(&[1.0, 0.0, 1.0, 1.0]);
    p.models.push(Model::new("old", "p"));
    p.models[1].status = ModelStatus::Deprecated;
    p.models.push(Model::new("emb", "p").with_type(ModelType::Embedding));
    let r = router(p, clock());
    r.update_head_status(&HeadStatusUpdate::new("e2", HeadStatus::Unhealthy))
        .unwrap();
    r.update_head_status(&HeadStatusUpdate::new("e3", HeadStatus::Degraded))
        .unwrap();
    let rq = RouteRequest {
        strategy: Some(StrategyKind::RoundRobin),
        ..Default::default()
    };
    let before = r.route(&rq).unwrap().detail();
    let x = r.explain(&rq);
    let x2 = r.explain(&rq);
    assert_eq!(
        x.decision.as_ref().unwrap().endpoint_id,
        x2.decision.as_ref().unwrap().endpoint_id,
        "no cursor moved"
    );
    let after = r.route(&rq).unwrap().detail();
    match (before, after) {
        (Detail::Slot { slot: a }, Detail::Slot { slot: b }) => assert_eq!(b, a + 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(x.strategy, StrategyKind::RoundRobin);
    let models: Vec<(&str, ModelVerdict)> = x.models.iter().map(|m| (m.model_id.as_str(), m.verdict)).collect();
    assert_eq!(
        models,
        vec![
            ("m", ModelVerdict::Kept),
            ("old", ModelVerdict::Deprecated),
            ("emb", ModelVerdict::WrongType)
        ]
    );
    let eps: Vec<(&str, bool, Verdict)> = x
        .endpoints
        .iter()
        .map(|e| (e.endpoint_id.as_str(), e.kept, e.verdict))
        .collect();
    assert_eq!(
        eps,
        vec![
            ("e0", true, Verdict::Eligible),
            ("e1", false, Verdict::ZeroWeight),
            ("e2", false, Verdict::NotServing(HeadStatus::Unhealthy)),
            ("e3", false, Verdict::DegradedHeldBack),
        ]
    );
    assert_eq!(x.decision.unwrap().endpoint_id, "e0");
    assert_eq!(r.endpoint_status("e0").unwrap().in_flight, 0);
    let json = serde_json::to_value(r.explain(&RouteRequest::for_model("ghost"))).unwrap();
    assert_eq!(json["error"]["kind"], "not_found");
}

#[test]
fn decision_events_and_records() {
    let r = router(weighted(&[1.0, 1.0]), clock());
    let _quiet = r.route(&req(StrategyKind::RoundRobin)).unwrap();
    let stream = r.events().subscribe(16, true);
    let counted = Arc::new(AtomicUsize::new(0));
    let c2 = counted.clone();
    let sub = r.events().on_event(true, move |e| {
        if matches!(e, Event::Decision(_)) {
            c2.fetch_add(1, Ordering::Relaxed);
        }
    });
    let d = r
        .route(&RouteRequest {
            request_id: Some("req-1".into()),
            ..req(StrategyKind::RoundRobin)
        })
        .unwrap();
    match stream.try_recv() {
        Some(Event::Decision(rec)) => {
            assert_eq!(rec.decision_id, d.id().to_string());
            assert_eq!(rec.fallbacks.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    r.events().unsubscribe(sub);
    r.route(&req(StrategyKind::RoundRobin)).unwrap();
    assert_eq!(counted.load(Ordering::Relaxed), 1);
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["endpoint_id"], d.endpoint_id());
    assert_eq!(json["strategy"], "round_robin");
    assert!(json["reason"].as_str().unwrap().contains("round_robin"));
}

/// In-flight counts return to zero once every guard is reported or dropped, from 8 threads.
#[test]
fn eight_threads_route_and_report_with_exact_counters() {
    let r = router(weighted(&[1.0; 8]), clock());
    let per_thread = 5_000;
    std::thread::scope(|s| {
        for t in 0..8 {
            let r = r.clone();
            s.spawn(move || {
                let mut held = Vec::new();
                for i in 0..per_thread {
                    let k = StrategyKind::ALL[(i + t) % StrategyKind::ALL.len()];
                    let rq = RouteRequest {
                        user_id: Some(format!("u{}", i % 50)),
                        ..req(k)
                    };
                    let d = r.route(&rq).unwrap();
                    match i % 3 {
                        0 => r.report(&d, Outcome::success(10.0).with_tokens(1, 2)).unwrap(),
                        1 => drop(d),
                        _ => held.push(d),
                    }
                    if held.len() > 20 {
                        let d = held.remove(0);
                        r.report(&d, Outcome::from_status(500, 5.0, None)).unwrap();
                    }
                }
                for d in held {
                    r.report(&d, Outcome::success(1.0)).unwrap();
                }
            });
        }
    });
    let st = r.endpoint_statuses();
    assert!(st.iter().all(|s| s.in_flight == 0), "{st:?}");
    let reported: u64 = st.iter().map(|s| s.requests).sum();
    let dropped = (0..per_thread).filter(|i| i % 3 == 1).count() as u64 * 8;
    assert_eq!(reported, 8 * per_thread as u64 - dropped);
    let tokens: u64 = st.iter().map(|s| s.tokens_out).sum();
    assert_eq!(tokens, 2 * 8 * (0..per_thread).filter(|i| i % 3 == 0).count() as u64);
}
