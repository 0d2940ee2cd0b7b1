//! What usage accounting, a budget and a rate limit add to the decision loop (issue 5: `route`
//! with a budget and a rate limit on stays within 20% of the plain figures).
//!
//! `router_benches::fleet(100)` (100 endpoints over four chat models), P2C. Four request mixes
//! (`router_benches::accounting_policy` and `accounting_requests`), timed side by side in one run:
//!
//! - `no_usage`: usage accounting off (`usage.enabled: false`): the bare decision loop;
//! - `plain`: requests with no workspace, user or token estimate: only the per-model and
//!   per-endpoint usage aggregates and the recent-requests record at report time;
//! - `usage`: requests with a workspace and a user id: usage aggregated per model, endpoint,
//!   workspace and user, recent requests kept;
//! - `budget_limit`: the same, plus a workspace daily budget (batched, never reached) and a
//!   per-user rpm limit (never reached): a reservation per decision, a GCRA check per request.
//!
//! Each as `route/<mix>` (decision dropped: the reservation is given back) and
//! `route_report/<mix>` (route, then report a success with token counts).
//!
//! ```text
//! cargo bench -p router-benches --bench accounting
//! ```
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use router_core::{Outcome, Router};

const KEYS: usize = router_benches::ACCOUNTING_KEYS;

fn bench(c: &mut Criterion) {
    let mixes = router_benches::ACCOUNTING_MIXES.map(|name| {
        let r = Router::new(router_benches::accounting_policy(name)).expect("valid bench policy");
        (name, r, router_benches::accounting_requests(name))
    });
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Elements(1));
    for (name, r, reqs) in &mixes {
        let mut k = 0usize;
        g.bench_function(*name, |b| {
            b.iter(|| {
                k = k.wrapping_add(1);
                drop(black_box(r.route(black_box(&reqs[k % KEYS])).expect("route")));
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("route_report");
    g.throughput(Throughput::Elements(1));
    for (name, r, reqs) in &mixes {
        let mut k = 0usize;
        g.bench_function(*name, |b| {
            b.iter(|| {
                k = k.wrapping_add(1);
                let d = r.route(black_box(&reqs[k % KEYS])).expect("route");
                let latency = 50.0 + (k % 400) as f64;
                r.report(&d, Outcome::success(latency).with_tokens(500, 200))
                    .expect("report");
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(std::time::Duration::from_secs(1)).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
