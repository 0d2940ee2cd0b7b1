//! What adaptive model choice adds to the decision loop (issue 9: `route` + `report` with
//! adaptive choice on 3 and 20 models stays within 1.5× the same decision without it).
//!
//! N chat models with one endpoint each (equal prices), P2C, requests of one agent type (one
//! learning context). Each size twice, timed side by side in one run:
//!
//! - `weighted/<n>`: adaptive choice off: the strategy picks among every model's endpoints;
//! - `adaptive/<n>`: adaptive choice on: a Thompson draw per model, the strategy among the
//!   chosen model's endpoints, the arm updated on report.
//!
//! Outcomes: model k succeeds unless `iteration % (10 + k) == 0`, latency 50-450 ms, so the
//! arms differ a little and keep moving.
//!
//! ```text
//! cargo bench -p router-benches --bench adaptive
//! ```
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use router_core::{ErrorClass, ModelType, Outcome, RouteRequest, StrategyKind};

use router_benches::adaptive_router as router;

fn bench(c: &mut Criterion) {
    let req = RouteRequest {
        model_type: Some(ModelType::Chat),
        agent_type: Some("support".into()),
        strategy: Some(StrategyKind::PowerOfTwo),
        ..Default::default()
    };
    let mut g = c.benchmark_group("route_report");
    g.throughput(Throughput::Elements(1));
    for n in [3usize, 20] {
        for adaptive in [false, true] {
            let r = router(n, adaptive);
            let name = format!("{}/{n}", if adaptive { "adaptive" } else { "weighted" });
            let mut k = 0usize;
            g.bench_function(name, |b| {
                b.iter(|| {
                    k = k.wrapping_add(1);
                    let d = r.route(black_box(&req)).expect("route");
                    let m: usize = d.model_id()[6..].parse().unwrap_or(0);
                    let latency = 50.0 + (k % 400) as f64;
                    let o = if k % (10 + m) == 0 {
                        Outcome::failure(ErrorClass::Server { status: 500 }, latency)
                    } else {
                        Outcome::success(latency)
                    };
                    r.report(&d, o).expect("report");
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(std::time::Duration::from_secs(1)).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
