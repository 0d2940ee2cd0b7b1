//! Strategies: distributions, fairness, tie-breaking, region spill, stickiness, bounded load.

mod common;

use common::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use router_core::*;
use std::collections::HashMap;

fn frac(s: &HashMap<String, usize>, id: &str, n: usize) -> f64 {
    *s.get(id).unwrap_or(&0) as f64 / n as f64
}

/// Weighted strategies converge to their weights within 2% over 100,000 picks: smooth WRR
/// within 2% of each weight (it is exact), weighted random within 2 percentage points and
/// within 4 standard deviations of the binomial (a tighter relative bound on a 10% weight would
/// be a 2σ bound, which any unbiased sampler fails one run in twenty).
#[test]
fn weighted_strategies_converge_to_weights() {
    seed_thread(1);
    let weights = [0.7, 0.2, 0.1, 0.0];
    let r = router(weighted(&weights), clock());
    let n = 100_000;
    let s = shares(&r, &req(StrategyKind::WeightedRoundRobin), n);
    for (i, w) in weights.iter().enumerate() {
        let got = frac(&s, &format!("e{i}"), n);
        assert!((got - w).abs() <= 0.02 * w, "wrr: e{i} got {got}, want {w}");
    }
    let s = shares(&r, &req(StrategyKind::WeightedRandom), n);
    for (i, w) in weights.iter().enumerate() {
        let got = frac(&s, &format!("e{i}"), n);
        let sigma = (w * (1.0 - w) / n as f64).sqrt();
        assert!(
            (got - w).abs() <= 0.02_f64.min(4.0 * sigma + 1e-9),
            "weighted_random: e{i} got {got}, want {w}"
        );
    }
    assert_eq!(s.get("e3"), None, "weight 0 means no traffic");
}

/// Round robin is exactly fair.
#[test]
fn round_robin_is_exactly_fair() {
    let r = router(weighted(&[1.0, 5.0, 1.0, 1.0, 1.0]), clock());
    let s = shares(&r, &req(StrategyKind::RoundRobin), 5 * 1_000);
    assert_eq!(s.len(), 5);
    assert!(s.values().all(|&c| c == 1_000), "{s:?}");
}

/// RELIABILITY 12: smooth WRR is exact ({5,1,1} → a a b a c a a) and instances do not start in
/// lockstep.
#[test]
fn smooth_wrr_is_exact_and_not_in_lockstep() {
    let r = router(weighted(&[5.0, 1.0, 1.0]), clock());
    let picks: Vec<String> = (0..70)
        .map(|_| {
            r.route(&req(StrategyKind::WeightedRoundRobin))
                .unwrap()
                .endpoint_id()
                .to_owned()
        })
        .collect();
    for w in picks.windows(7) {
        let count = |id: &str| w.iter().filter(|x| *x == id).count();
        assert_eq!((count("e0"), count("e1"), count("e2")), (5, 1, 1), "{w:?}");
    }
    let letters: String = picks
        .iter()
        .map(|p| (b'a' + p[1..].parse::<u8>().unwrap()) as char)
        .collect();
    assert!("aabacaa".repeat(11).contains(&letters[..14]), "{letters}");
    // Twenty instances: their first slots are not all equal.
    let slots: std::collections::HashSet<u64> = (0..20)
        .map(|_| {
            let r = router(weighted(&[5.0, 1.0, 1.0]), clock());
            match r.route(&req(StrategyKind::WeightedRoundRobin)).unwrap().detail() {
                Detail::Slot { slot } => slot % 7,
                d => panic!("{d:?}"),
            }
        })
        .collect();
    assert!(slots.len() > 1);
}

/// RELIABILITY 11: weighted random does not depend on the order of the candidates
/// (LiteLLM #33329): weights {3,1,1}, 100,000 picks with the endpoint list reshuffled for each
/// router instance, χ² p > 0.01.
#[test]
fn weighted_random_is_order_independent() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    seed_thread(11);
    let mut counts: HashMap<String, f64> = HashMap::new();
    let total = 100_000;
    for _ in 0..1_000 {
        let mut p = weighted(&[3.0, 1.0, 1.0]);
        p.endpoints.shuffle(&mut rng);
        let r = router(p, clock());
        for (id, c) in shares(&r, &req(StrategyKind::WeightedRandom), total / 1_000) {
            *counts.entry(id).or_default() += c as f64;
        }
    }
    let expected = [("e0", 0.6), ("e1", 0.2), ("e2", 0.2)];
    let chi2: f64 = expected
        .iter()
        .map(|(id, p)| {
            let e = p * total as f64;
            (counts[*id] - e).powi(2) / e
        })
        .sum();
    // χ²(2 d.o.f.) critical value at p = 0.01 is 9.21.
    assert!(chi2 < 9.21, "chi2 = {chi2}, counts {counts:?}");
}

/// Least loaded avoids busy endpoints and spreads ties at random.
#[test]
fn least_loaded_prefers_idle_and_breaks_ties_randomly() {
    seed_thread(3);
    let r = router(weighted(&[1.0, 1.0, 1.0]), clock());
    let held: Vec<Decision> = (0..2)
        .map(|_| r.route(&req(StrategyKind::LeastLoaded)).unwrap())
        .collect();
    assert_ne!(held[0].endpoint_id(), held[1].endpoint_id());
    let third = r.route(&req(StrategyKind::LeastLoaded)).unwrap();
    assert!(held.iter().all(|h| h.endpoint_id() != third.endpoint_id()));
    drop((held, third));
    let s = shares(&r, &req(StrategyKind::LeastLoaded), 30_000);
    for c in s.values() {
        assert!((9_000..11_000).contains(c), "{s:?}");
    }
    // Capacity: an endpoint at capacity takes nothing.
    let mut p = weighted(&[1.0, 1.0]);
    p.endpoints[0].capacity = std::num::NonZeroU32::new(1);
    let r = router(p, clock());
    let d = r
        .route(&RouteRequest {
            strategy: Some(StrategyKind::RoundRobin),
            ..req(StrategyKind::RoundRobin)
        })
        .unwrap();
    let _held = if d.endpoint_id() == "e0" {
        d
    } else {
        r.route(&req(StrategyKind::RoundRobin)).unwrap()
    };
    for k in StrategyKind::ALL {
        assert_eq!(r.route(&req(k)).unwrap().endpoint_id(), "e1", "{k}");
    }
}

/// Latency based picks the fastest; near-ties (within 5%) are shared.
#[test]
fn latency_based_prefers_fast_endpoints() {
    seed_thread(4);
    let r = router(weighted(&[1.0, 1.0, 1.0]), clock());
    for (id, ms) in [("e0", 100.0), ("e1", 102.0), ("e2", 400.0)] {
        r.report_endpoint(id, Outcome::success(ms)).unwrap();
    }
    let s = shares(&r, &req(StrategyKind::LatencyBased), 10_000);
    assert_eq!(s.get("e2"), None);
    assert!(frac(&s, "e0", 10_000) > 0.4 && frac(&s, "e1", 10_000) > 0.4, "{s:?}");
    // A fast endpoint that fails loses to a slower one that works.
    for _ in 0..20 {
        r.report_endpoint("e0", Outcome::from_status(500, 1.0, None)).unwrap();
        r.report_endpoint("e1", Outcome::from_status(500, 1.0, None)).unwrap();
    }
    assert_eq!(r.route(&req(StrategyKind::LatencyBased)).unwrap().endpoint_id(), "e2");
}

/// Cost based picks the cheapest model of the type (and endpoint pricing overrides the model's).
#[test]
fn cost_based_prefers_cheap_models() {
    let p = Policy {
        models: vec![
            Model::new("gpt-4", "openai").with_pricing(0.01, 0.03),
            Model::new("haiku", "anthropic").with_pricing(0.00025, 0.00125),
            Model::new("sonnet", "anthropic").with_pricing(0.003, 0.015),
        ],
        endpoints: vec![
            Endpoint::new("g", "gpt-4", "http://g"),
            Endpoint::new("h", "haiku", "http://h"),
            Endpoint::new("s", "sonnet", "http://s"),
        ],
        ..Default::default()
    };
    let r = router(p, clock());
    let rq = RouteRequest {
        strategy: Some(StrategyKind::CostBased),
        ..Default::default()
    };
    let d = r.route(&rq).unwrap();
    assert_eq!(d.model_id(), "haiku");
    assert!(d.reason().contains("price"), "{}", d.reason());
    let fb: Vec<String> = d.fallbacks().map(|f| f.model_id).collect();
    assert_eq!(fb, vec!["sonnet", "gpt-4"]);
    let mut g = r.endpoint("g").unwrap();
    g.pricing = Some(Pricing {
        input_per_1k: 0.0,
        output_per_1k: 0.0,
        per_request: 0.0,
    });
    r.update_endpoint(g).unwrap();
    assert_eq!(r.route(&rq).unwrap().endpoint_id(), "g");
}

/// Geo preferred stays in the preferred region and spills when none there is available.
#[test]
fn geo_preferred_spills_when_region_is_unavailable() {
    let mut p = weighted(&[1.0, 1.0, 1.0]);
    p.endpoints[0].region = Some("us-east".into());
    p.endpoints[1].region = Some("eu-west".into());
    p.endpoints[2].region = Some("eu-west".into());
    p.settings.default_region = Some("us-east".into());
    let r = router(p, clock());
    let eu = RouteRequest {
        region_preference: Some("eu-west".into()),
        ..req(StrategyKind::GeoPreferred)
    };
    let s = shares(&r, &eu, 1_000);
    assert_eq!(s.get("e0"), None);
    assert_eq!(
        r.route(&req(StrategyKind::GeoPreferred)).unwrap().endpoint_id(),
        "e0",
        "default region"
    );
    for id in ["e1", "e2"] {
        r.update_head_status(&HeadStatusUpdate::new(id, HeadStatus::Unhealthy))
            .unwrap();
    }
    let d = r.route(&eu).unwrap();
    assert_eq!(d.endpoint_id(), "e0");
    assert!(d.reason().contains("spilled"), "{}", d.reason());
}

/// Consistent hashing is sticky per key and spreads keys.
#[test]
fn consistent_hash_is_sticky() {
    let r = router(weighted(&[1.0; 10]), clock());
    let mut owners = HashMap::new();
    for u in 0..1_000 {
        let rq = RouteRequest {
            user_id: Some(format!("user-{u}")),
            ..req(StrategyKind::ConsistentHash)
        };
        let first = r.route(&rq).unwrap().endpoint_id().to_owned();
        for _ in 0..3 {
            assert_eq!(r.route(&rq).unwrap().endpoint_id(), first);
        }
        *owners.entry(first).or_insert(0) += 1;
    }
    assert_eq!(owners.len(), 10);
    assert!(owners.values().all(|&c| (50..170).contains(&c)), "{owners:?}");
    // The affinity key wins over the user id; identical across router instances.
    let r2 = router(weighted(&[1.0; 10]), clock());
    let rq = RouteRequest {
        affinity_key: Some("session-9".into()),
        user_id: Some("u".into()),
        ..req(StrategyKind::ConsistentHash)
    };
    assert_eq!(
        r.route(&rq).unwrap().endpoint_id(),
        r2.route(&rq).unwrap().endpoint_id()
    );
}

/// Route `n` consistent-hash requests, 80% of them from 3 hot users, and keep the decisions
/// (in flight).
fn route_hot_keys(r: &Router, rng: &mut rand::rngs::StdRng, n: usize) -> Vec<Decision> {
    (0..n)
        .map(|_| {
            let u = if rng.random_bool(0.8) {
                rng.random_range(0..3)
            } else {
                rng.random_range(3..1_000)
            };
            let rq = RouteRequest {
                user_id: Some(format!("user-{u}")),
                ..req(StrategyKind::ConsistentHash)
            };
            r.route(&rq).unwrap()
        })
        .collect()
}

/// RELIABILITY 13: a balance factor of 1.25 keeps every endpoint ≤ 1.25 × the mean in flight,
/// even when a few hot keys carry most of the traffic.
#[test]
fn consistent_hash_bounded_load_caps_hot_keys() {
    let r = router(weighted(&[1.0; 10]), clock());
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let _held = route_hot_keys(&r, &mut rng, 10_000);
    let loads: Vec<u32> = r.endpoint_statuses().iter().map(|s| s.in_flight).collect();
    let mean = loads.iter().sum::<u32>() as f64 / loads.len() as f64;
    let max = *loads.iter().max().unwrap() as f64;
    assert!(max <= (1.25 * mean).ceil() + 1.0, "max {max}, mean {mean}, {loads:?}");
}

/// The same on a ring of 200 endpoints, where a decision mostly uses the pool's last count of
/// the load instead of counting all 200 again: the cap holds.
#[test]
fn consistent_hash_bounded_load_holds_on_a_large_ring() {
    seed_thread(8);
    let r = router(weighted(&[1.0; 200]), clock());
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut held = Vec::new();
    for round in 0..3 {
        held.extend(route_hot_keys(&r, &mut rng, 10_000));
        let loads: Vec<u32> = r.endpoint_statuses().iter().map(|s| s.in_flight).collect();
        let mean = loads.iter().sum::<u32>() as f64 / loads.len() as f64;
        let max = *loads.iter().max().unwrap() as f64;
        assert!(
            max <= (1.25 * mean).ceil() + 1.0,
            "round {round}: max {max}, mean {mean}"
        );
        // Half of them finish: the count the bound uses goes down as well as up.
        for d in held.drain(..held.len() / 2) {
            r.report(&d, Outcome::success(10.0)).unwrap();
        }
    }
}

/// Power of two choices avoids endpoints with requests piling up and ones that fail fast.
#[test]
fn power_of_two_avoids_loaded_and_failing_endpoints() {
    seed_thread(6);
    let clk = clock();
    let r = router(weighted(&[1.0; 4]), clk.clone());
    for _ in 0..50 {
        for id in ["e1", "e2", "e3"] {
            r.report_endpoint(id, Outcome::success(100.0)).unwrap();
        }
        r.report_endpoint("e0", Outcome::from_status(503, 1.0, None)).unwrap();
        clk.advance(10);
    }
    let s = shares(&r, &req(StrategyKind::PowerOfTwo), 10_000);
    assert!(frac(&s, "e0", 10_000) <= 0.02, "{s:?}");
    for id in ["e1", "e2", "e3"] {
        assert!((frac(&s, id, 10_000) - 1.0 / 3.0).abs() < 0.05, "{s:?}");
    }
}

/// Hybrid weighs region, latency and health together.
#[test]
fn hybrid_balances_factors() {
    let mut p = weighted(&[1.0, 1.0, 1.0]);
    p.endpoints[0].region = Some("eu-west".into());
    p.endpoints[1].region = Some("us-east".into());
    p.endpoints[2].region = Some("eu-west".into());
    let r = router(p, clock());
    r.report_endpoint("e0", Outcome::success(3_000.0)).unwrap();
    r.report_endpoint("e1", Outcome::success(200.0)).unwrap();
    r.report_endpoint("e2", Outcome::success(250.0)).unwrap();
    let eu = RouteRequest {
        region_preference: Some("eu-west".into()),
        ..req(StrategyKind::Hybrid)
    };
    assert_eq!(r.route(&eu).unwrap().endpoint_id(), "e2");
    let mut cfg = r.config();
    cfg.hybrid.region = 0.0;
    cfg.hybrid.latency = 1.0;
    r.set_config(cfg).unwrap();
    assert_eq!(r.route(&eu).unwrap().endpoint_id(), "e1");
}

/// Fallbacks are distinct, eligible, and as many as configured.
#[test]
fn fallbacks_are_distinct_and_eligible() {
    let r = router(weighted(&[1.0; 6]), clock());
    r.update_head_status(&HeadStatusUpdate::new("e5", HeadStatus::Unhealthy))
        .unwrap();
    for k in StrategyKind::ALL {
        for _ in 0..50 {
            let rq = RouteRequest {
                user_id: Some("u1".into()),
                ..req(k)
            };
            let d = r.route(&rq).unwrap();
            let fb: Vec<String> = d.fallbacks().map(|f| f.endpoint_id).collect();
            assert_eq!(fb.len(), 2, "{k}: {fb:?}");
            assert!(!fb.contains(&d.endpoint_id().to_owned()), "{k}");
            assert!(!fb.contains(&"e5".to_owned()), "{k}");
            assert_ne!(fb[0], fb[1], "{k}");
        }
    }
}
