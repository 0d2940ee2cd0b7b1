//! Health: scores, hysteresis, pushed reports, active probes and their events.

mod common;

use common::*;
use router_core::*;

fn no_breakers(weights: &[f64]) -> Policy {
    let mut p = weighted(weights);
    p.settings.breaker.enabled = false;
    p
}

#[test]
fn one_sample_cannot_flap_the_status() {
    let clk = clock();
    let r = router(no_breakers(&[1.0, 1.0]), clk.clone());
    let events = r.events().subscribe(64, false);
    for _ in 0..4 {
        r.report_endpoint("e0", Outcome::from_status(500, 1.0, None)).unwrap();
    }
    assert_eq!(
        r.endpoint_status("e0").unwrap().health_status,
        HeadStatus::Healthy,
        "below min samples"
    );
    r.report_endpoint("e0", Outcome::from_status(500, 1.0, None)).unwrap();
    let st = r.endpoint_status("e0").unwrap();
    assert_eq!(
        st.health_status,
        HeadStatus::Degraded,
        "0.9^5 = 0.59: score {}",
        st.health
    );
    // Held back while a healthy endpoint exists.
    for _ in 0..50 {
        assert_eq!(r.route(&req(StrategyKind::RoundRobin)).unwrap().endpoint_id(), "e1");
    }
    // One success does not bring it back.
    r.report_endpoint("e0", Outcome::success(10.0)).unwrap();
    assert_eq!(r.endpoint_status("e0").unwrap().health_status, HeadStatus::Degraded);
    let kinds: Vec<&str> = events.drain().iter().map(Event::kind).collect();
    assert_eq!(kinds, vec!["health_changed"]);
}

#[test]
fn a_failing_endpoint_earns_traffic_back_as_its_failures_age() {
    let clk = clock();
    let r = router(no_breakers(&[1.0, 1.0]), clk.clone());
    for _ in 0..6 {
        r.report_endpoint("e0", Outcome::from_status(500, 1.0, None)).unwrap();
    }
    assert!(!shares(&r, &req(StrategyKind::RoundRobin), 20).contains_key("e0"));
    // Recovery half-life 10 s: after a minute the deficit is ~1/64.
    clk.advance(60_000);
    let s = shares(&r, &req(StrategyKind::RoundRobin), 20);
    assert_eq!(s.get("e0"), Some(&10), "{s:?}");
    assert!(r.endpoint_status("e0").unwrap().health > 0.95);
}

#[test]
fn pushed_health_reports_apply_to_endpoints_and_models() {
    let clk = clock();
    let r = router(no_breakers(&[1.0, 1.0]), clk.clone());
    let report: HealthReport =
        serde_json::from_str(r#"{"status": "healthy", "responseTime": 500, "errorRate": 0.6, "availability": 99.9}"#)
            .unwrap();
    for _ in 0..5 {
        assert_eq!(r.report_health("e0", &report).unwrap(), 1);
    }
    let st = r.endpoint_status("e0").unwrap();
    assert!((st.health - 0.4).abs() < 1e-9, "{}", st.health);
    assert_eq!(st.health_status, HeadStatus::Unhealthy);
    assert_eq!(st.latency_ewma_ms, Some(500.0));
    let down = HealthReport {
        status: Some(HeadStatus::Unhealthy),
        ..Default::default()
    };
    assert_eq!(
        r.report_health("m", &down).unwrap(),
        2,
        "a model id reaches all its endpoints"
    );
    assert_eq!(r.endpoint_status("e1").unwrap().status, HeadStatus::Unhealthy);
    let bad = HealthReport {
        error_rate: Some(1.5),
        ..Default::default()
    };
    assert_eq!(r.report_health("e0", &bad).unwrap_err().field(), Some("error_rate"));
    assert_eq!(r.report_health("ghost", &report).unwrap_err().kind(), "not_found");
}

#[test]
fn active_probes_are_scheduled_and_recorded() {
    let clk = clock();
    let mut p = no_breakers(&[1.0, 1.0]);
    p.endpoints[0].health_check_url = Some("http://e0/health".into());
    let r = router(p, clk.clone());
    let due = r.probe_targets();
    assert_eq!(
        due,
        vec![ProbeTarget {
            endpoint_id: "e0".into(),
            url: "http://e0/health".into()
        }]
    );
    assert!(r.probe_targets().is_empty(), "handed out once per interval");
    clk.advance(10_000);
    assert_eq!(r.probe_targets().len(), 1);
    for _ in 0..7 {
        r.record_probe("e0", false, 3.0).unwrap();
    }
    assert_eq!(
        r.endpoint_status("e0").unwrap().health_status,
        HeadStatus::Unhealthy,
        "0.9^7 = 0.48"
    );
    for _ in 0..30 {
        r.record_probe("e0", true, 42.0).unwrap();
    }
    let st = r.endpoint_status("e0").unwrap();
    assert_eq!(st.health_status, HeadStatus::Healthy);
    assert!(st.latency_ewma_ms.unwrap() > 40.0);
    assert_eq!(st.requests, 0, "probes are not traffic");
    assert_eq!(
        r.record_probe("e0", true, f64::NAN).unwrap_err().field(),
        Some("latency_ms")
    );
}

#[test]
fn explain_shows_breakers_and_cooldowns() {
    let clk = clock();
    let mut p = weighted(&[1.0, 1.0, 1.0]);
    p.settings.breaker.consecutive_failures = 3;
    let r = router(p, clk.clone());
    for _ in 0..3 {
        r.report_endpoint("e0", Outcome::from_status(502, 1.0, None)).unwrap();
    }
    r.report_endpoint("e1", Outcome::from_status(429, 1.0, Some(5_000)))
        .unwrap();
    let x = r.explain(&req(StrategyKind::RoundRobin));
    let v: Vec<Verdict> = x.endpoints.iter().map(|e| e.verdict).collect();
    assert_eq!(v, vec![Verdict::BreakerOpen, Verdict::CoolingDown, Verdict::Eligible]);
    assert_eq!(x.decision.unwrap().endpoint_id, "e2");
}
