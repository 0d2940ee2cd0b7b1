//! What load prediction adds to the decision loop (issue 9: "load prediction on adds ≤ 20 ns
//! per decision").
//!
//! Two chat models of five endpoints each (capacity 1000, so the spill-over check runs but no
//! model spills), requests by type (both models are candidates), the system clock (buckets
//! roll over every second as in production). Timed side by side in one run:
//!
//! - `<strategy>/off`: prediction off (the default);
//! - `<strategy>/on`: forecasts kept and the spill-over check made on every decision;
//! - `<strategy>/on_predicted_load`: the same, and the strategy ranks by predicted in-flight.
//!
//! ```text
//! cargo bench -p router-benches --bench predict
//! ```
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use router_core::{ModelType, Outcome, Policy, PredictionConfig, RouteRequest, Router, RouterConfig, StrategyKind};

fn router(prediction: Option<bool>) -> Router {
    let mut settings = RouterConfig::default();
    settings.usage.enabled = false;
    if let Some(predicted_load) = prediction {
        settings.prediction = PredictionConfig {
            enabled: true,
            predicted_load,
            ..Default::default()
        };
    }
    Router::new(Policy {
        settings,
        ..router_benches::two_models_of_five()
    })
    .expect("valid bench policy")
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("predict_route_report");
    g.throughput(Throughput::Elements(1));
    for strategy in [StrategyKind::PowerOfTwo, StrategyKind::LeastLoaded] {
        let req = RouteRequest {
            model_type: Some(ModelType::Chat),
            strategy: Some(strategy),
            ..Default::default()
        };
        for (name, prediction) in [("off", None), ("on", Some(false)), ("on_predicted_load", Some(true))] {
            let r = router(prediction);
            let mut k = 0usize;
            g.bench_function(format!("{strategy}/{name}"), |b| {
                b.iter(|| {
                    k = k.wrapping_add(1);
                    let d = r.route(black_box(&req)).expect("route");
                    r.report(&d, Outcome::success(50.0 + (k % 400) as f64)).expect("report");
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
