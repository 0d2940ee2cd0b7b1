//! Properties (proptest): convergence, fairness, eligibility, no panics, in-flight accounting.

mod common;

use common::*;
use proptest::prelude::*;
use router_core::*;
use std::collections::HashMap;

fn strategy_kind() -> impl Strategy<Value = StrategyKind> {
    prop::sample::select(StrategyKind::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    /// Weighted strategies converge to their weights over 100,000 picks, whatever the weights
    /// and their order.
    #[test]
    fn weighted_strategies_converge(weights in prop::collection::vec(0u32..10, 2..6), seed in any::<u64>()) {
        prop_assume!(weights.iter().any(|&w| w > 0));
        seed_thread(seed);
        let w: Vec<f64> = weights.iter().map(|&x| f64::from(x)).collect();
        let total: f64 = w.iter().sum();
        let r = router(weighted(&w), clock());
        let n = 100_000;
        for k in [StrategyKind::WeightedRandom, StrategyKind::WeightedRoundRobin] {
            let s = shares(&r, &req(k), n);
            for (i, wi) in w.iter().enumerate() {
                let p = wi / total;
                let got = *s.get(&format!("e{i}")).unwrap_or(&0) as f64 / n as f64;
                let sigma = (p * (1.0 - p) / n as f64).sqrt();
                prop_assert!((got - p).abs() <= 0.02_f64.min(5.0 * sigma + 1e-4), "{} e{} got {} want {}", k, i, got, p);
                if *wi == 0.0 {
                    prop_assert_eq!(got, 0.0);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Round robin is exactly fair: n endpoints, k rounds, each gets exactly k.
    #[test]
    fn round_robin_exactly_fair(n in 1usize..20, k in 1usize..30) {
        let r = router(weighted(&vec![1.0; n]), clock());
        let s = shares(&r, &req(StrategyKind::RoundRobin), n * k);
        prop_assert_eq!(s.len(), n);
        prop_assert!(s.values().all(|&c| c == k));
    }

    /// No decision ever picks an endpoint that is deregistered, inactive, expired, not serving
    /// or of weight 0; degraded ones only when no healthy one is eligible.
    #[test]
    fn never_picks_an_ineligible_endpoint(
        eps in prop::collection::vec((0u8..3, 0u8..5, any::<bool>(), any::<bool>(), any::<bool>()), 1..12),
        inactive_model in any::<bool>(),
        kind in strategy_kind(),
        seed in any::<u64>(),
    ) {
        seed_thread(seed);
        let clk = clock();
        let mut p = weighted(&vec![1.0; eps.len()]);
        p.settings.heartbeat_ttl_ms = 1_000;
        p.models.push(Model::new("m2", "p"));
        if inactive_model {
            p.models[1].status = ModelStatus::Inactive;
        }
        for (i, e) in eps.iter().enumerate() {
            p.endpoints[i].weight = f64::from(e.0); // 0, 1 or 2
            if e.4 {
                p.endpoints[i].model_id = "m2".into();
            }
        }
        let r = router(p, clk.clone());
        let statuses = [HeadStatus::Healthy, HeadStatus::Degraded, HeadStatus::Unhealthy, HeadStatus::Draining, HeadStatus::Offline];
        clk.advance(600);
        let mut gone = Vec::new();
        for (i, e) in eps.iter().enumerate() {
            let id = format!("e{i}");
            r.update_head_status(&HeadStatusUpdate::new(&id, statuses[e.1 as usize])).unwrap();
            if e.2 {
                r.deregister_endpoint(&id).unwrap();
                gone.push(id);
            }
        }
        // A status report is a sign of life too: heads marked to miss their heartbeat are last
        // heard from now (t = 600) and expire by t = 1,800; the others beat at t = 1,200.
        clk.advance(600);
        for (i, e) in eps.iter().enumerate() {
            if !e.3 && !e.2 {
                r.heartbeat(&format!("e{i}")).unwrap();
            }
        }
        clk.advance(600);
        // Tiers: 0 healthy only, 1 degraded too, 2 panic (reported unhealthy too).
        let ok = |i: usize, tier: u8| {
            let e = eps[i];
            let model_ok = !(e.4 && inactive_model);
            let status_ok = e.1 == 0 || (e.1 == 1 && tier >= 1) || (e.1 == 2 && tier == 2);
            e.0 > 0 && !e.2 && !e.3 && model_ok && status_ok
        };
        let tier = (0..3u8).find(|&t| (0..eps.len()).any(|i| ok(i, t)));
        for _ in 0..20 {
            let rq = RouteRequest { user_id: Some(format!("u{seed}")), strategy: Some(kind), ..Default::default() };
            match (r.route(&rq), tier) {
                (Ok(d), Some(t)) => {
                    let i: usize = d.endpoint_id()[1..].parse().unwrap();
                    prop_assert!(ok(i, t), "{} picked {} ({:?})", kind, d.endpoint_id(), eps[i]);
                    prop_assert_eq!(d.is_degraded(), t > 0);
                    prop_assert_eq!(d.is_panic(), t == 2);
                    for f in d.fallbacks() {
                        let j: usize = f.endpoint_id[1..].parse().unwrap();
                        prop_assert!(ok(j, t), "fallback {} ineligible", f.endpoint_id);
                    }
                }
                (Ok(d), None) => prop_assert!(false, "{} picked {} although nothing was eligible", kind, d.endpoint_id()),
                (Err(e), Some(_)) => prop_assert!(false, "{} failed with {} although an endpoint was eligible", kind, e),
                (Err(e), None) => {
                    prop_assert!(matches!(e.kind(), "no_healthy_endpoint" | "no_candidate_model"), "{}", e);
                }
            }
        }
    }

    /// `route` and `explain` never panic, whatever the request.
    #[test]
    fn route_never_panics(
        model in prop::option::of(prop_oneof![Just("m".to_string()), Just("m2".to_string()), ".{0,12}"]),
        model_type in prop::option::of(prop_oneof![Just("chat".to_string()), ".{0,8}"]),
        strings in prop::collection::vec(prop::option::of(".{0,40}"), 6),
        kind in prop::option::of(strategy_kind()),
        content_length in prop::option::of(any::<u64>()),
        estimated_tokens in prop::option::of(any::<u64>()),
        caps in prop::collection::vec(".{0,10}", 0..3),
    ) {
        let mut p = weighted(&[1.0, 0.0, 3.0]);
        p.models.push(Model::new("m2", "p").with_capability("text", Some(10)));
        p.endpoints.push(Endpoint::new("x", "m2", "http://x").with_region("eu"));
        let r = router(p, clock());
        let rq = RouteRequest {
            request_id: strings[0].clone(),
            model,
            model_type: model_type.map(ModelType::from),
            agent_type: strings[1].clone(),
            request_type: strings[2].clone(),
            workspace_id: strings[3].clone(),
            user_id: strings[4].clone(),
            region_preference: strings[5].clone(),
            strategy: kind,
            affinity_key: None,
            api_key: strings[0].clone(),
            content_length,
            estimated_tokens,
            required_capabilities: caps,
            metadata: Default::default(),
        };
        let _ = r.route(&rq);
        let _ = r.explain(&rq);
    }

    /// Parsing never panics on arbitrary JSON-ish input.
    #[test]
    fn parsing_never_panics(s in ".{0,200}") {
        let _ = RouteRequest::from_json(&s);
        let _ = Policy::from_json(&s);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// RELIABILITY 14 (LiteLLM #25323/#39322): random route / report / drop sequences keep every
    /// in-flight counter equal to the decisions still held at every step, and at zero when idle.
    /// 200 cases × 5,000 operations = 10^6 operations.
    #[test]
    fn in_flight_matches_held_decisions(ops in prop::collection::vec((0u8..4, any::<u16>()), 5_000), kind in strategy_kind()) {
        let r = router(weighted(&[1.0, 2.0, 1.0, 0.5]), clock());
        let mut held: Vec<Decision> = Vec::new();
        let mut counts: HashMap<String, u32> = HashMap::new();
        for (op, x) in ops {
            match op {
                0 | 1 => {
                    let rq = RouteRequest { user_id: Some(format!("u{}", x % 17)), ..req(kind) };
                    let d = r.route(&rq).unwrap();
                    *counts.entry(d.endpoint_id().to_owned()).or_default() += 1;
                    held.push(d);
                }
                2 if !held.is_empty() => {
                    let d = held.swap_remove(x as usize % held.len());
                    *counts.get_mut(d.endpoint_id()).unwrap() -= 1;
                    let o = if x % 2 == 0 { Outcome::success(f64::from(x)) } else { Outcome::from_status(503, 1.0, None) };
                    r.report(&d, o).unwrap();
                    prop_assert!(r.report(&d, Outcome::success(1.0)).is_err());
                }
                3 if !held.is_empty() => {
                    let d = held.swap_remove(x as usize % held.len());
                    *counts.get_mut(d.endpoint_id()).unwrap() -= 1;
                    drop(d);
                }
                _ => {}
            }
            if x % 64 == 0 {
                for s in r.endpoint_statuses() {
                    prop_assert_eq!(s.in_flight, *counts.get(&s.endpoint_id).unwrap_or(&0));
                }
            }
        }
        drop(held);
        prop_assert!(r.endpoint_statuses().iter().all(|s| s.in_flight == 0));
    }
}
