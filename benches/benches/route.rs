//! The decision loop, timed: `route` a request, then `report` the decision with a success.
//!
//! For 10, 100 and 1,000 endpoints and each of the ten strategies:
//!
//! - `route_report_1t/<strategy>/<n>`: one thread, one route + report per iteration;
//! - `route_1t/<strategy>/<n>`: one thread, `route` alone (the decision is dropped, which gives
//!   its in-flight slot back without recording an outcome), to split the cost of `report` out;
//! - `route_report_2t/<strategy>/<n>`: two threads sharing one router, each doing `iters`
//!   route + report (the two threads live for the whole benchmark and spin between samples,
//!   so spawning, waking and placing them is not timed); the time reported per iteration is
//!   wall time / (2 · iters), from the first thread's start to the last one's finish, i.e. the
//!   inverse of the combined throughput. Two threads scale perfectly when this is half the
//!   one-thread figure; "two threads ≥ 1.8× one thread" means `1t / 2t ≥ 1.8`;
//! - `route_report_2t_private/<strategy>/<n>`: the same with one router per thread (nothing
//!   shared): the control, i.e. how far the machine lets this workload scale at that moment.
//!
//! The fleet: `n` endpoints spread over four chat models (different prices), alternating between
//! the regions `us-east` and `eu-west`, weights 1, 2 and 3 in turn, capacity 1,000 (checked on
//! every pick, never reached), each with a latency EWMA seeded from a distinct sample. Requests
//! ask for model type chat, prefer `eu-west`, name the strategy, and carry an affinity key from
//! a pre-built set of 256 (no allocation in the timed loop apart from what `route` itself does).
//! Every benchmark has a router of its own, so its figure does not depend on which benchmarks
//! ran before it.
//!
//! ```text
//! cargo bench -p router-benches --bench route                      # everything, ~5-6 min
//! cargo bench -p router-benches --bench route -- route_report_1t   # one thread only
//! cargo bench -p router-benches --bench route -- 'hybrid/1000'     # one strategy and size
//! ```
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use router_benches::{fleet_latencies as latencies, fleet_requests as requests, KEYS};
use router_core::{Outcome, RouteRequest, Router, StrategyKind};

/// Fleet sizes.
const SIZES: [usize; 3] = [10, 100, 1_000];

/// A router with `n` endpoints over four chat models, each endpoint with a latency sample.
/// Each benchmark builds its own: on a router shared with the benchmarks before it, a scan's
/// figure would depend on which of them ran (what they reported to which endpoints), so a
/// filter would change it.
fn router(n: usize) -> Router {
    router_benches::fleet_router(n, true)
}

/// One route + report.
#[inline]
fn step(router: &Router, reqs: &[RouteRequest], lats: &[f64], k: usize) {
    let d = router.route(black_box(&reqs[k % KEYS])).expect("route");
    router.report(&d, Outcome::success(lats[k % KEYS])).expect("report");
}

fn one_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_report_1t");
    g.throughput(Throughput::Elements(1));
    let lats = latencies();
    for n in SIZES {
        for kind in StrategyKind::ALL {
            let router = router(n);
            let reqs = requests(kind);
            g.bench_with_input(BenchmarkId::new(kind.as_str(), n), &n, |b, _| {
                let mut k = 0usize;
                b.iter(|| {
                    step(&router, &reqs, &lats, k);
                    k = k.wrapping_add(1);
                });
            });
        }
    }
    g.finish();
}

fn route_only(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_1t");
    g.throughput(Throughput::Elements(1));
    for n in SIZES {
        for kind in StrategyKind::ALL {
            let router = router(n);
            let reqs = requests(kind);
            g.bench_with_input(BenchmarkId::new(kind.as_str(), n), &n, |b, _| {
                let mut k = 0usize;
                b.iter(|| {
                    // Dropping the decision gives its in-flight slot back (no outcome recorded).
                    drop(black_box(router.route(black_box(&reqs[k % KEYS])).expect("route")));
                    k = k.wrapping_add(1);
                });
            });
        }
    }
    g.finish();
}

/// What the two worker threads of one benchmark share.
struct Pair {
    /// Bumped once per sample; workers start when it changes.
    generation: AtomicU64,
    iters: AtomicU64,
    quit: AtomicBool,
    done: Barrier,
    spans: Mutex<Vec<(Instant, Instant)>>,
}

impl Pair {
    fn new() -> Self {
        Pair {
            generation: AtomicU64::new(0),
            iters: AtomicU64::new(0),
            quit: AtomicBool::new(false),
            done: Barrier::new(3),
            spans: Mutex::new(Vec::with_capacity(2)),
        }
    }

    /// One sample: both workers do `iters` steps; the wall time from the first start to the
    /// last finish.
    fn run(&self, iters: u64) -> Duration {
        self.spans.lock().expect("spans").clear();
        self.iters.store(iters, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.done.wait();
        let spans = self.spans.lock().expect("spans");
        let first = spans.iter().map(|s| s.0).min().expect("two spans");
        let last = spans.iter().map(|s| s.1).max().expect("two spans");
        last - first
    }

    /// Wait (spinning, so the thread keeps its core) for the next sample; `None` to quit.
    fn next(&self, seen: &mut u64) -> Option<u64> {
        let mut spins = 0u32;
        loop {
            if self.quit.load(Ordering::SeqCst) {
                return None;
            }
            let g = self.generation.load(Ordering::SeqCst);
            if g != *seen {
                *seen = g;
                return Some(self.iters.load(Ordering::SeqCst));
            }
            spins = spins.wrapping_add(1);
            if spins % 1024 == 0 {
                // Let criterion's own thread run between samples.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// Two threads, each doing route + report. The workers live for the whole benchmark and spin
/// between samples instead of sleeping, so waking them is not timed. With `shared`, both use one router (`route_report_2t`); without, each has its
/// own identical router (`route_report_2t_private`): nothing is shared, so that group shows
/// how far the machine itself lets this workload scale at that moment.
fn two_threads_group(c: &mut Criterion, group: &str, shared: bool) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    let lats = latencies();
    for n in SIZES {
        for kind in StrategyKind::ALL {
            let routers = if shared {
                vec![router(n)]
            } else {
                vec![router(n), router(n)]
            };
            let reqs = requests(kind);
            let pair = Pair::new();
            std::thread::scope(|s| {
                for t in 0..2usize {
                    let router = &routers[t % routers.len()];
                    let (reqs, lats, pair) = (&reqs, &lats, &pair);
                    s.spawn(move || {
                        // The two threads walk the keys from different offsets.
                        let mut k = t * (KEYS / 2);
                        let mut seen = 0;
                        while let Some(iters) = pair.next(&mut seen) {
                            let t0 = Instant::now();
                            for _ in 0..iters {
                                step(router, reqs, lats, k);
                                k = k.wrapping_add(1);
                            }
                            let t1 = Instant::now();
                            pair.spans.lock().expect("spans").push((t0, t1));
                            pair.done.wait();
                        }
                    });
                }
                g.bench_with_input(BenchmarkId::new(kind.as_str(), n), &n, |b, _| {
                    // 2 · iters operations in the wall time: report the pair's time per operation.
                    b.iter_custom(|iters| pair.run(iters) / 2);
                });
                pair.quit.store(true, Ordering::SeqCst);
            });
        }
    }
    g.finish();
}

fn two_threads(c: &mut Criterion) {
    two_threads_group(c, "route_report_2t", true);
}

fn two_threads_private(c: &mut Criterion) {
    two_threads_group(c, "route_report_2t_private", false);
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1_500))
        .sample_size(25)
}

criterion_group! {
    name = benches;
    config = config();
    targets = one_thread, route_only, two_threads, two_threads_private
}
criterion_main!(benches);
