//! What a configuration change costs at fleet sizes: a whole policy loaded, and one endpoint
//! registered then deregistered on a live router (two changes, each compiling a new serving
//! snapshot). The fleet is the `route` bench's ([`router_benches::fleet`]).
//!
//! ```text
//! cargo bench -p router-benches --bench registry
//! ```
#![allow(missing_docs)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use router_benches::fleet;
use router_core::{Endpoint, Router};

/// Fleet sizes.
const SIZES: [usize; 3] = [1_000, 10_000, 30_000];

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("registry");
    g.sample_size(10).warm_up_time(Duration::from_millis(500));
    for n in SIZES {
        let policy = fleet(n);
        g.bench_with_input(BenchmarkId::new("load_policy", n), &n, |b, _| {
            b.iter_batched(
                || policy.clone(),
                |p| Router::new(p).expect("valid bench policy"),
                BatchSize::LargeInput,
            );
        });
        let router = Router::new(policy.clone()).expect("valid bench policy");
        g.bench_with_input(BenchmarkId::new("register_deregister", n), &n, |b, _| {
            b.iter(|| {
                router
                    .register_endpoint(Endpoint::new("ep-new", "model-0", "http://10.255.0.1/v1"))
                    .expect("a new id");
                router.deregister_endpoint("ep-new").expect("registered");
            });
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
