//! Issue 9: adaptive model choice and adaptive experiments (fake clock, simulated outcomes,
//! seeded generators, no sleeps).

mod common;

use proptest::prelude::*;
use router_core::*;
use serde_json::json;
use std::sync::{Arc, Mutex};

/// Models `m0..` with one endpoint each, equal prices, adaptive choice on by default.
fn policy(models: usize, adaptive: serde_json::Value) -> Policy {
    let mut p = json!({
        "models": (0..models).map(|i| json!({"id": format!("m{i}"), "provider": "p",
            "pricing": {"input_per_1k": 0.001, "output_per_1k": 0.002}})).collect::<Vec<_>>(),
        "endpoints": (0..models).map(|i| json!({"id": format!("e{i}"), "model_id": format!("m{i}"),
            "url": format!("http://e{i}")})).collect::<Vec<_>>(),
        "adaptive": {"enabled": true},
        "usage": {"enabled": false},
    });
    for (k, v) in adaptive.as_object().unwrap() {
        p["adaptive"][k] = v.clone();
    }
    Policy::from_json(&p.to_string()).unwrap()
}

fn chat() -> RouteRequest {
    RouteRequest {
        agent_type: Some("support".into()),
        ..Default::default()
    }
}

/// Route and report one request whose model succeeds with probability `rate(model index)`;
/// returns the model index.
fn step(r: &Router, g: &mut u64, rate: impl Fn(usize) -> f64) -> usize {
    let d = r.route(&chat()).unwrap();
    let m: usize = d.model_id()[1..].parse().unwrap();
    *g = g.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let u = (*g >> 11) as f64 / (1u64 << 53) as f64;
    let o = if u < rate(m) {
        Outcome::success(500.0)
    } else {
        Outcome::failure(ErrorClass::Server { status: 500 }, 500.0)
    };
    r.report(&d, o).unwrap();
    m
}

#[test]
fn the_best_model_gets_most_traffic_and_no_model_starves() {
    let rates = [0.99, 0.95, 0.90];
    let mut worst_best = 1.0f64;
    for seed in 0..5u64 {
        seed_thread(seed);
        let r = common::router(policy(3, json!({})), common::clock());
        let mut g = seed;
        let mut last = [0usize; 3];
        for i in 0..3_000 {
            let m = step(&r, &mut g, |m| rates[m]);
            if i >= 2_000 {
                last[m] += 1;
            }
        }
        let best = last[0] as f64 / 1_000.0;
        worst_best = worst_best.min(best);
        assert!(best >= 0.85, "seed {seed}: {last:?}");
        // Floor 2%: at least 20 of 1,000 each, less binomial slack (sd ≈ 4.4).
        assert!(last[1] >= 12 && last[2] >= 12, "seed {seed}: {last:?}");
    }
    eprintln!("lowest share of the best model over 5 seeds: {worst_best}");
}

#[test]
fn a_degrading_model_loses_the_majority_within_1500_requests() {
    for seed in 0..5u64 {
        seed_thread(100 + seed);
        let r = common::router(policy(3, json!({})), common::clock());
        let mut g = seed;
        let mut lost_at = None;
        let mut recent = std::collections::VecDeque::new();
        for i in 0..4_500 {
            let m = step(&r, &mut g, |m| match m {
                0 if i >= 3_000 => 0.80,
                0 => 0.99,
                1 => 0.95,
                _ => 0.90,
            });
            recent.push_back(m == 0);
            if recent.len() > 200 {
                recent.pop_front();
            }
            let share = recent.iter().filter(|&&b| b).count() as f64 / recent.len() as f64;
            if i >= 3_000 && lost_at.is_none() && recent.len() == 200 && share < 0.5 {
                lost_at = Some(i - 3_000);
            }
            if i == 2_999 {
                assert!(share > 0.8, "seed {seed}: not the best before the change ({share})");
            }
        }
        let share = recent.iter().filter(|&&b| b).count() as f64 / 200.0;
        eprintln!("seed {seed}: m0 lost the majority of a 200-request window {lost_at:?} requests after the change; last 200: {share}");
        assert!(lost_at.is_some_and(|k| k <= 1_500), "seed {seed}");
        assert!(share < 0.5, "seed {seed}: {share}");
    }
}

#[test]
fn the_reason_and_explain_show_every_arm() {
    seed_thread(3);
    let r = common::router(policy(3, json!({})), common::clock());
    let d = r.route(&chat()).unwrap();
    let reason = d.reason();
    assert!(reason.contains("adaptive choice of"), "{reason}");
    assert!(reason.contains("context `agent=support,request_type=*`"), "{reason}");
    for m in ["m0", "m1", "m2"] {
        assert!(reason.contains(&format!("`{m}` mean")), "{reason}");
    }
    // The other models' endpoints are the fallbacks.
    assert_eq!(d.fallbacks().count(), 2);
    r.report(&d, Outcome::success(10.0)).unwrap();
    let x = r.explain(&chat());
    let a = x.adaptive.expect("adaptive in explain");
    assert_eq!(a.arms.len(), 3);
    assert!(a.arms.iter().any(|arm| arm.samples > 0.99));
    assert_eq!(x.decision.unwrap().model_id, a.chosen);
    // A named model is never chosen adaptively; nor is a rule's `weighted` selection.
    let named = r
        .route(&RouteRequest {
            model: Some("m1".into()),
            ..chat()
        })
        .unwrap();
    assert!(!named.reason().contains("adaptive"));
    r.add_rule(
        serde_json::from_value(
            json!({"id": "w", "target_models": [{"model_id": "m0"}, {"model_id": "m1"}],
            "model_selection": "weighted"}),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(!r.route(&chat()).unwrap().reason().contains("adaptive"));
}

/// The choices follow the probabilities the reason and explain show: each model's share of
/// the decisions is `floor + (1 − k·floor) · P(best)`, Thompson sampling's distribution over
/// the posteriors plus the exploration floor.
#[test]
fn choices_follow_the_probabilities_of_best() {
    seed_thread(21);
    let r = common::router(policy(3, json!({})), common::clock());
    let mut g = 21;
    for _ in 0..300 {
        step(&r, &mut g, |m| [0.96, 0.95, 0.94][m]);
    }
    // Decisions dropped without a report update no arm: the posteriors stay as they are.
    let x = r.explain(&chat()).adaptive.expect("adaptive");
    let expect: Vec<f64> = x
        .arms
        .iter()
        .map(|a| 0.02 + (1.0 - 3.0 * 0.02) * a.probability)
        .collect();
    assert!((x.arms.iter().map(|a| a.probability).sum::<f64>() - 1.0).abs() < 1e-9);
    let n = 20_000;
    let mut counts = [0usize; 3];
    for _ in 0..n {
        let d = r.route(&chat()).unwrap();
        counts[d.model_id()[1..].parse::<usize>().unwrap()] += 1;
    }
    for (m, (&k, &e)) in counts.iter().zip(&expect).enumerate() {
        let share = k as f64 / n as f64;
        let sd = (e * (1.0 - e) / n as f64).sqrt();
        assert!(
            (share - e).abs() <= 4.0 * sd + 1e-3,
            "m{m}: {share} vs {e} ({counts:?}, {x:?})"
        );
    }
    assert!(expect[0] > 0.3, "the posteriors should not be flat: {expect:?}");
}

#[test]
fn agent_preferences_and_rules_turn_it_on() {
    let mut p = policy(3, json!({}));
    p.settings.adaptive.enabled = false;
    let r = common::router(p, common::clock());
    assert!(!r.route(&chat()).unwrap().reason().contains("adaptive"));
    r.set_agent_preferences(
        "support",
        serde_json::from_value(json!({"model_selection": "adaptive"})).unwrap(),
    )
    .unwrap();
    assert!(r.route(&chat()).unwrap().reason().contains("adaptive"));
    r.remove_agent_preferences("support").unwrap();
    r.add_rule(
        serde_json::from_value(
            json!({"id": "a", "target_models": [{"model_id": "m0"}, {"model_id": "m2"}],
            "modelSelection": "adaptive"}),
        )
        .unwrap(),
    )
    .unwrap();
    let d = r.route(&chat()).unwrap();
    assert!(
        d.reason().contains("rule `a`") && d.reason().contains("adaptive"),
        "{}",
        d.reason()
    );
    assert!(!d.reason().contains("`m1` mean"));
}

#[test]
fn share_changes_are_events() {
    seed_thread(9);
    let r = common::router(
        policy(2, json!({"share_window": 200, "share_threshold": 0.2})),
        common::clock(),
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    r.events().on_event(false, move |e: &Event| {
        if let Event::AdaptiveShareChanged { model_id, from, to, .. } = e {
            sink.lock().unwrap().push((model_id.clone(), *from, *to));
        }
    });
    let mut g = 1;
    // m1 is the better model, then m0 is.
    for i in 0..3_000 {
        step(&r, &mut g, |m| if (m == 0) == (i >= 1_000) { 0.99 } else { 0.7 });
    }
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().any(|(m, from, to)| m == "m0" && to - from >= 0.2),
        "{seen:?}"
    );
    assert!(
        Event::AdaptiveShareChanged {
            context: String::new(),
            model_id: String::new(),
            from: 0.0,
            to: 0.0,
            window: 0,
            at_ms: 0
        }
        .kind()
            == "adaptive_share_changed"
    );
}

#[test]
fn invalid_adaptive_settings_name_their_field() {
    for (extra, field) in [
        (json!({"discount": 1.5}), "adaptive.discount"),
        (json!({"floor": -0.1}), "adaptive.floor"),
        (json!({"context": "metadata"}), "adaptive.context_key"),
    ] {
        let e = Router::new(policy(2, extra)).unwrap_err();
        assert_eq!(e.field(), Some(field), "{e}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Shares respect the floor (less binomial slack), and a model removed from the policy is
    /// never chosen again.
    #[test]
    fn floors_hold_and_removed_models_are_never_chosen(
        models in 2usize..6,
        floor in 0.02f64..0.15,
        rates in proptest::collection::vec(0.6f64..1.0, 6),
        seed in any::<u64>(),
    ) {
        seed_thread(seed);
        // Breakers off: floors are shares among the models that can take traffic, and a 60%
        // success rate would open a breaker now and then.
        let mut p = policy(models, json!({"floor": floor, "discount": 0.99}));
        p.settings.breaker.enabled = false;
        let r = common::router(p, common::clock());
        let mut g = seed;
        let n = 1_200usize;
        let mut counts = vec![0usize; models];
        for _ in 0..n {
            counts[step(&r, &mut g, |m| rates[m])] += 1;
        }
        let eff = floor.min(1.0 / models as f64);
        let expect = eff * n as f64;
        for (m, &k) in counts.iter().enumerate() {
            prop_assert!(k as f64 >= expect - 4.0 * expect.sqrt() - 1.0, "m{m}: {k} < floor {expect} ({counts:?})");
        }
        let gone = format!("m{}", seed as usize % models);
        r.deregister_model(&gone).unwrap();
        for _ in 0..300 {
            let m = step(&r, &mut g, |m| rates[m]);
            prop_assert_ne!(format!("m{m}"), gone.clone());
        }
    }
}

/// An adaptive experiment between `a` (on m0) and `b` (on m1) with these success rates, run for
/// at most `horizon` requests of distinct users: the winner it names, and when.
fn run_experiment(seed: u64, rates: [f64; 2], horizon: usize, promote: bool) -> (Router, Option<(String, usize)>) {
    seed_thread(seed);
    let mut p = policy(2, json!({}));
    p.settings.adaptive.enabled = false;
    p.settings.experiments = vec![serde_json::from_value(json!({
        "id": "ab", "adaptive": true, "promote_winner": promote, "min_samples": 200,
        "variants": [{"name": "a", "model_id": "m0", "weight": 50}, {"name": "b", "model_id": "m1", "weight": 50}]
    }))
    .unwrap()];
    let r = common::router(p, common::clock());
    let won = Arc::new(Mutex::new(None));
    let sink = won.clone();
    r.events().on_event(false, move |e: &Event| {
        if let Event::ExperimentConcluded { winner, .. } = e {
            sink.lock().unwrap().get_or_insert(winner.clone());
        }
    });
    let mut g = seed ^ 0x5555;
    for u in 0..horizon {
        let d = r
            .route(&RouteRequest {
                user_id: Some(format!("u{u}")),
                ..Default::default()
            })
            .unwrap();
        let m: usize = d.model_id()[1..].parse().unwrap();
        g = g.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let x = (g >> 11) as f64 / (1u64 << 53) as f64;
        let o = if x < rates[m] {
            Outcome::success(300.0)
        } else {
            Outcome::failure(ErrorClass::Server { status: 500 }, 300.0)
        };
        r.report(&d, o).unwrap();
        if let Some(w) = won.lock().unwrap().clone() {
            return (r, Some((w, u + 1)));
        }
    }
    (r, None)
}

#[test]
fn an_adaptive_experiment_shifts_traffic_concludes_and_promotes() {
    let (r, won) = run_experiment(7, [0.90, 0.97], 20_000, true);
    let (w, at) = won.expect("concluded");
    assert_eq!(w, "b");
    eprintln!("0.90 vs 0.97: concluded for b after {at} requests");
    // Promoted: a new configuration with b at 100%, adaptation off.
    let x = &r.config().experiments[0];
    assert_eq!(
        (x.variants[0].weight, x.variants[1].weight, x.adaptive),
        (0.0, 100.0, false)
    );
    for u in 0..50 {
        let d = r
            .route(&RouteRequest {
                user_id: Some(format!("z{u}")),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(d.model_id(), "m1");
    }
    let res = r.experiment_results("ab").unwrap();
    assert_eq!(res.winner.as_deref(), Some("b"));
    assert!(res.verdict.contains("mSPRT"), "{}", res.verdict);
    // Traffic had shifted: b served most of it.
    assert!(
        res.variants[1].requests > 2 * res.variants[0].requests,
        "{:?}",
        res.variants
    );
}

#[test]
fn adaptive_assignment_is_sticky_while_the_weights_stay() {
    let (r, _) = run_experiment(11, [0.9, 0.9], 100, false);
    let res = r.experiment_results("ab").unwrap();
    let a = res.adaptive.expect("adaptive results");
    assert!((a.weights.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    assert!(res.winner.is_none());
    for u in 0..200 {
        let req = RouteRequest {
            user_id: Some(format!("s{u}")),
            ..Default::default()
        };
        let first = r.route(&req).unwrap().model_id().to_owned();
        for _ in 0..3 {
            assert_eq!(r.route(&req).unwrap().model_id(), first);
        }
    }
}

/// 100 seeded runs with a real difference (0.95 vs 0.90) and 100 with none (0.92 vs 0.92),
/// 20,000 requests at most each. Release only (`cargo test --release -p router-core --test
/// adaptive -- --ignored`): about 2 million decisions.
#[test]
#[cfg_attr(debug_assertions, ignore = "release only: cargo test --release -- --ignored")]
fn adaptive_experiment_error_rates() {
    let t = std::time::Instant::now();
    let mut right = 0;
    let mut wrong = 0;
    let mut at = Vec::new();
    for seed in 0..100 {
        match run_experiment(1_000 + seed, [0.90, 0.95], 20_000, false).1 {
            Some((w, n)) if w == "b" => {
                right += 1;
                at.push(n)
            }
            Some(_) => wrong += 1,
            None => {}
        }
    }
    let mut false_winners = 0;
    for seed in 0..100 {
        false_winners += usize::from(run_experiment(5_000 + seed, [0.92, 0.92], 20_000, false).1.is_some());
    }
    at.sort_unstable();
    eprintln!(
        "0.90 vs 0.95: right {right}, wrong {wrong}, median requests to conclude {:?}; 0.92 vs 0.92: false winners {false_winners}; {:?}",
        at.get(at.len() / 2),
        t.elapsed()
    );
    assert!(right >= 95, "{right}");
    assert!(false_winners <= 5, "{false_winners}");
}
