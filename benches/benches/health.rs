//! The cost of breakers and health: `route` + `report` with breakers and health on (the
//! default) against breakers off, in the same run, for three strategies at 10, 100 and 1,000
//! endpoints. Issue target: on stays within 20% of off.
//!
//! ```text
//! cargo bench -p router-benches --bench health
//! ```
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use router_core::{Endpoint, Model, Outcome, Policy, RouteRequest, Router, RouterConfig, StrategyKind};

fn fleet(n: usize, breakers: bool) -> Router {
    let mut settings = RouterConfig::default();
    settings.breaker.enabled = breakers;
    let endpoints = (0..n)
        .map(|i| Endpoint::new(format!("e{i}"), "m", format!("http://e{i}")))
        .collect();
    Router::new(Policy {
        models: vec![Model::new("m", "p")],
        endpoints,
        settings,
        ..Default::default()
    })
    .expect("valid")
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("health");
    for kind in [
        StrategyKind::RoundRobin,
        StrategyKind::PowerOfTwo,
        StrategyKind::LeastLoaded,
    ] {
        let rq = RouteRequest {
            model: Some("m".into()),
            strategy: Some(kind),
            ..Default::default()
        };
        for n in [10, 100, 1_000] {
            for (label, on) in [("on", true), ("off", false)] {
                let r = fleet(n, on);
                g.bench_with_input(BenchmarkId::new(format!("{kind}/{label}"), n), &n, |b, _| {
                    b.iter(|| {
                        let d = r.route(black_box(&rq)).expect("routes");
                        r.report(&d, Outcome::success(120.0)).expect("reports");
                    })
                });
            }
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(25).warm_up_time(std::time::Duration::from_millis(400)).measurement_time(std::time::Duration::from_millis(1200));
    targets = bench
}
criterion_main!(benches);
