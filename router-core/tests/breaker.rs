//! Circuit breakers, cooldowns, ejection, panic and failover through the router
//! (RELIABILITY 1-9), on a manual clock.

mod common;

use common::*;
use router_core::breaker::{BreakerState, TripReason};
use router_core::*;
use std::sync::Mutex;

const FAIL: fn() -> Outcome = || Outcome::from_status(503, 20.0, None);
const OK: fn() -> Outcome = || Outcome::success(20.0);

/// Count window 10, min calls 10, 50%, no jitter, no consecutive-failure ejection, panic fails.
fn strict(weights: &[f64]) -> Policy {
    let mut p = weighted(weights);
    p.settings.breaker.window_size = 10;
    p.settings.breaker.min_calls = 10;
    p.settings.breaker.consecutive_failures = 0;
    p.settings.breaker.jitter = 0.0;
    p.settings.breaker.max_ejection_percent = 100.0;
    p.settings.panic_mode = PanicMode::Fail;
    p
}

fn breaker(r: &Router, id: &str) -> BreakerState {
    r.endpoint_status(id).unwrap().breaker
}

/// RELIABILITY 1: thresholds are inclusive and gated by the minimum number of calls.
#[test]
fn r1_failure_rate_threshold_inclusive_and_gated() {
    for (fails, oks, open) in [(5, 5, true), (4, 6, false), (9, 0, false)] {
        let r = router(strict(&[1.0]), clock());
        for _ in 0..fails {
            r.report_endpoint("e0", FAIL()).unwrap();
        }
        for _ in 0..oks {
            r.report_endpoint("e0", OK()).unwrap();
        }
        assert_eq!(
            breaker(&r, "e0") == BreakerState::Open,
            open,
            "{fails} failures + {oks} successes"
        );
    }
}

/// RELIABILITY 2: slow calls trip alone, reason `slow_call_rate`, at a 0% failure rate.
#[test]
fn r2_slow_calls_trip_alone() {
    let mut p = strict(&[1.0]);
    p.settings.breaker.slow_call_duration_ms = 2_000.0;
    p.settings.breaker.slow_call_rate_threshold = 0.5;
    let r = router(p, clock());
    let events = r.events().subscribe(64, false);
    for _ in 0..5 {
        r.report_endpoint("e0", Outcome::success(2_500.0)).unwrap();
    }
    for _ in 0..5 {
        r.report_endpoint("e0", Outcome::success(100.0)).unwrap();
    }
    assert_eq!(breaker(&r, "e0"), BreakerState::Open);
    assert!(events.drain().iter().any(|e| matches!(
        e,
        Event::BreakerOpened {
            reason: TripReason::SlowCallRate,
            ..
        }
    )));
}

fn trip(r: &Router, id: &str) {
    for _ in 0..10 {
        r.report_endpoint(id, FAIL()).unwrap();
    }
    assert_eq!(breaker(r, id), BreakerState::Open);
}

/// RELIABILITY 3: half-open admits exactly N probes, even to 16 threads at once; 3 successes +
/// 1 failure close it, 2 + 2 reopen it; one transition, one event.
#[test]
fn r3_half_open_admits_exactly_n_probes() {
    let clk = clock();
    let r = router(strict(&[1.0]), clk.clone());
    let events = r.events().subscribe(256, false);
    for (ok, bad, closes) in [(2, 2, false), (3, 1, true)] {
        if breaker(&r, "e0") == BreakerState::Closed {
            trip(&r, "e0");
        }
        clk.advance(300_001);
        let probes = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| {
                    if let Ok(d) = r.route(&req(StrategyKind::RoundRobin)) {
                        assert!(d.is_probe());
                        probes.lock().unwrap().push(d);
                    }
                });
            }
        });
        let probes = probes.into_inner().unwrap();
        assert_eq!(probes.len(), 4, "exactly the permits");
        assert_eq!(breaker(&r, "e0"), BreakerState::HalfOpen);
        for (k, d) in probes.iter().enumerate() {
            r.report(d, if k < ok { OK() } else { FAIL() }).unwrap();
        }
        assert_eq!(ok + bad, 4);
        assert_eq!(breaker(&r, "e0") == BreakerState::Closed, closes, "{ok} + {bad}");
    }
    let kinds: Vec<&str> = events
        .drain()
        .iter()
        .map(Event::kind)
        .filter(|k| k.starts_with("breaker"))
        .collect();
    assert_eq!(
        kinds,
        vec![
            "breaker_opened",
            "breaker_half_open",
            "breaker_opened",
            "breaker_half_open",
            "breaker_closed"
        ]
    );
}

/// RELIABILITY 4: open duration 30, 60, 120, 240, 300, 300 s (each within its jitter); after
/// closing, 30 s again.
#[test]
fn r4_open_duration_backs_off_with_a_cap() {
    let clk = clock();
    let mut p = strict(&[1.0]);
    p.settings.breaker.min_calls = 1;
    p.settings.breaker.window_size = 1;
    p.settings.breaker.half_open_permits = 1;
    p.settings.breaker.jitter = 0.1;
    let r = router(p, clk.clone());
    let open_for = |r: &Router| {
        let st = r.endpoint_status("e0").unwrap();
        assert_eq!(st.breaker, BreakerState::Open);
        r.events();
        st
    };
    let events = r.events().subscribe(64, false);
    r.report_endpoint("e0", FAIL()).unwrap();
    let mut seen = Vec::new();
    for _ in 0..6 {
        let _ = open_for(&r);
        let d = events.drain().into_iter().find_map(|e| match e {
            Event::BreakerOpened { open_for_ms, .. } => Some(open_for_ms),
            _ => None,
        });
        let d = d.unwrap();
        seen.push(d);
        clk.advance(d);
        let probe = r.route(&req(StrategyKind::RoundRobin)).unwrap();
        assert!(probe.is_probe());
        r.report(&probe, FAIL()).unwrap();
    }
    for (d, want) in seen
        .iter()
        .zip([30_000.0, 60_000.0, 120_000.0, 240_000.0, 300_000.0, 300_000.0])
    {
        assert!((*d as f64 - want).abs() <= want * 0.1 + 1.0, "{seen:?}");
    }
    // Close it, then trip again: back to the base duration.
    let d = events.drain().into_iter().find_map(|e| match e {
        Event::BreakerOpened { open_for_ms, .. } => Some(open_for_ms),
        _ => None,
    });
    clk.advance(d.unwrap());
    let probe = r.route(&req(StrategyKind::RoundRobin)).unwrap();
    r.report(&probe, OK()).unwrap();
    assert_eq!(breaker(&r, "e0"), BreakerState::Closed);
    r.report_endpoint("e0", FAIL()).unwrap();
    let d = events.drain().into_iter().find_map(|e| match e {
        Event::BreakerOpened { open_for_ms, .. } => Some(open_for_ms),
        _ => None,
    });
    assert!((27_000..=33_000).contains(&d.unwrap()), "{d:?}");
}

/// RELIABILITY 5: no stuck half-open (GoModel #480): a dropped probe frees its permit at once; a
/// probe that never reports is abandoned after the open duration.
#[test]
fn r5_no_stuck_half_open() {
    let clk = clock();
    let mut p = strict(&[1.0]);
    p.settings.breaker.half_open_permits = 1;
    let r = router(p, clk.clone());
    trip(&r, "e0");
    clk.advance(30_000);
    let probe = r.route(&req(StrategyKind::RoundRobin)).unwrap();
    assert!(
        r.route(&req(StrategyKind::RoundRobin)).is_err(),
        "the only permit is out"
    );
    drop(probe);
    let probe = r
        .route(&req(StrategyKind::RoundRobin))
        .expect("the dropped probe's permit came back");
    std::mem::forget(probe); // never reported, never dropped
    clk.advance(29_999);
    assert!(r.route(&req(StrategyKind::RoundRobin)).is_err());
    clk.advance(1);
    let probe = r
        .route(&req(StrategyKind::RoundRobin))
        .expect("the lost probe was abandoned");
    r.report(&probe, OK()).unwrap();
    assert_eq!(breaker(&r, "e0"), BreakerState::Closed);
}

/// RELIABILITY 6: cooldown deadlines only extend (LiteLLM #40130): a 429 with Retry-After 1 s,
/// then one without (60 s default) 0.5 s later: unroutable until t = 60.5 s.
#[test]
fn r6_cooldowns_only_extend() {
    let clk = clock();
    let r = router(strict(&[1.0]), clk.clone());
    r.report_endpoint("e0", Outcome::from_status(429, 5.0, Some(1_000)))
        .unwrap();
    clk.advance(500);
    r.report_endpoint("e0", Outcome::from_status(429, 5.0, None)).unwrap();
    r.report_endpoint("e0", Outcome::from_status(429, 5.0, Some(1_000)))
        .unwrap();
    clk.set(T0 + 60_499);
    let e = r.route(&req(StrategyKind::RoundRobin)).unwrap_err();
    assert!(e.to_string().contains("cooling down"), "{e}");
    clk.set(T0 + 60_500);
    r.route(&req(StrategyKind::RoundRobin)).unwrap();
    assert_eq!(
        breaker(&r, "e0"),
        BreakerState::Closed,
        "429s cool down; they do not trip the breaker"
    );
}

/// RELIABILITY 7: every attempt counts (LiteLLM #32574): a request that fails on its first
/// endpoint and on two fallbacks records exactly 3 failures; a client 4xx records none.
#[test]
fn r7_every_attempt_counts() {
    let mut p = strict(&[1.0; 4]);
    p.settings.max_fallbacks = 3;
    let r = router(p, clock());
    let first = r.route(&req(StrategyKind::RoundRobin)).unwrap();
    let second = r.next_fallback(&first, FAIL()).unwrap();
    assert_eq!(second.decision.attempt(), 2);
    assert_ne!(second.decision.endpoint_id(), first.endpoint_id());
    assert!(second.delay_ms <= 100);
    let third = r.next_fallback(&second.decision, FAIL()).unwrap();
    assert!(third.decision.reason().contains("attempt 3"));
    let e = r.next_fallback(&third.decision, FAIL()).unwrap_err();
    assert_eq!(e.kind(), "fallbacks_exhausted");
    let st = r.endpoint_statuses();
    assert_eq!(st.iter().map(|s| s.failures).sum::<u64>(), 3);
    assert!(st.iter().all(|s| s.in_flight == 0));

    let r = router(strict(&[1.0; 4]), clock());
    let d = r.route(&req(StrategyKind::RoundRobin)).unwrap();
    let next = r.next_fallback(&d, Outcome::from_status(400, 3.0, None)).unwrap();
    r.report(&next.decision, Outcome::from_status(422, 3.0, None)).unwrap();
    assert_eq!(r.endpoint_statuses().iter().map(|s| s.failures).sum::<u64>(), 0);
    assert!(r.endpoint_statuses().iter().all(|s| s.health == 1.0));
}

/// A decision's fallback chain is resolved against the configuration serving when it fails
/// over: an endpoint deregistered meanwhile is skipped, and the chain still reads as it was.
#[test]
fn fallbacks_deregistered_meanwhile_are_skipped() {
    let mut p = strict(&[1.0; 4]);
    p.settings.max_fallbacks = 3;
    let r = router(p, clock());
    let first = r.route(&req(StrategyKind::RoundRobin)).unwrap();
    let chain: Vec<FallbackTarget> = first.fallbacks().collect();
    assert_eq!(chain.len(), 3);
    assert!(chain
        .iter()
        .all(|t| t.model_id == "m" && t.url == format!("http://{}", t.endpoint_id)));
    r.deregister_endpoint(&chain[0].endpoint_id).unwrap();
    let next = r.next_fallback(&first, FAIL()).unwrap();
    assert_eq!(
        next.decision.endpoint_id(),
        chain[1].endpoint_id,
        "the deregistered one is skipped"
    );
    let rest: Vec<String> = next.decision.fallbacks().map(|t| t.endpoint_id).collect();
    assert_eq!(rest, vec![chain[2].endpoint_id.clone()]);
    assert_eq!(
        first.fallbacks().collect::<Vec<_>>(),
        chain,
        "the record of the chain stays"
    );
}

/// RELIABILITY 8: ten endpoints all failing: at most `max_ejection_percent` ejected, never
/// fewer than one; with every endpoint out, decisions spread over all of them with "panic" in
/// the reason, or fail with a typed error when so configured.
#[test]
fn r8_ejection_cap_and_panic() {
    let mut p = weighted(&[1.0; 10]);
    p.settings.breaker.consecutive_failures = 5;
    let r = router(p, clock());
    let events = r.events().subscribe(256, false);
    for i in 0..10 {
        for _ in 0..5 {
            r.report_endpoint(&format!("e{i}"), FAIL()).unwrap();
        }
    }
    let open = r
        .endpoint_statuses()
        .iter()
        .filter(|s| s.breaker == BreakerState::Open)
        .count();
    assert_eq!(open, 5, "50% cap");
    assert_eq!(
        events.drain().iter().filter(|e| e.kind() == "endpoint_ejected").count(),
        5
    );
    let mut p = weighted(&[1.0; 2]);
    p.settings.breaker.max_ejection_percent = 10.0;
    let r2 = router(p, clock());
    for _ in 0..5 {
        r2.report_endpoint("e0", FAIL()).unwrap();
        r2.report_endpoint("e1", FAIL()).unwrap();
    }
    assert_eq!(
        r2.endpoint_statuses()
            .iter()
            .filter(|s| s.breaker == BreakerState::Open)
            .count(),
        1,
        "never fewer than one"
    );
    // Take the rest out too: panic spreads over everything.
    for i in 0..10 {
        r.update_head_status(&HeadStatusUpdate::new(format!("e{i}"), HeadStatus::Unhealthy))
            .unwrap();
    }
    let s = shares(&r, &req(StrategyKind::RoundRobin), 1_000);
    assert_eq!(s.len(), 10, "{s:?}");
    let d = r.route(&req(StrategyKind::PowerOfTwo)).unwrap();
    assert!(d.is_panic() && d.reason().contains("panic"), "{}", d.reason());
    let mut m = r.model("m").unwrap();
    m.panic_mode = Some(PanicMode::Fail);
    r.update_model(m).unwrap();
    let e = r.route(&req(StrategyKind::PowerOfTwo)).unwrap_err();
    assert_eq!(e.kind(), "no_healthy_endpoint");
}

/// RELIABILITY 9 and the scenario: 4 endpoints under steady load with P2C; one answers
/// 5xx in 1 ms from t = 10 s to t = 20 s. It gets ≤ 2% of traffic over t = 10-20 s, only
/// half-open probes while its breaker is open, and 25% ± 3% within 60 s of its recovery.
#[test]
fn r9_fast_failures_lose_and_recovery_restores_the_share() {
    seed_thread(9);
    let clk = clock();
    let r = router(weighted(&[1.0; 4]), clk.clone());
    let mut held: Vec<(u64, Decision)> = Vec::new();
    let (mut bad_10_20, mut all_10_20, mut bad_late, mut all_late) = (0, 0, 0, 0);
    let mut bad_non_probe_while_open = 0;
    for t in (0..80_000u64).step_by(5) {
        clk.set(T0 + t);
        let (due, rest): (Vec<_>, Vec<_>) = held.into_iter().partition(|(at, _)| *at <= t);
        held = rest;
        for (_, d) in due {
            let failing = d.endpoint_id() == "e0" && (10_000..20_000).contains(&t);
            r.report(
                &d,
                if failing {
                    Outcome::from_status(500, 1.0, None)
                } else {
                    Outcome::success(100.0)
                },
            )
            .unwrap();
        }
        let open_before = breaker(&r, "e0") != BreakerState::Closed;
        let d = r.route(&req(StrategyKind::PowerOfTwo)).unwrap();
        let bad = d.endpoint_id() == "e0";
        if bad && open_before && !d.is_probe() {
            bad_non_probe_while_open += 1;
        }
        if (10_000..20_000).contains(&t) {
            all_10_20 += 1;
            bad_10_20 += usize::from(bad);
        }
        if (70_000..80_000).contains(&t) {
            all_late += 1;
            bad_late += usize::from(bad);
        }
        let latency = if bad && (10_000..20_000).contains(&t) { 1 } else { 100 };
        held.push((t + latency, d));
    }
    let early = bad_10_20 as f64 / all_10_20 as f64;
    let late = bad_late as f64 / all_late as f64;
    assert!(early <= 0.02, "failing endpoint got {early}");
    assert_eq!(
        bad_non_probe_while_open, 0,
        "only probes while the breaker is not closed"
    );
    assert!((late - 0.25).abs() <= 0.03, "share after recovery {late}");
}
