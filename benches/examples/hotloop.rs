//! A fixed number of `route` + `report` iterations, for measuring CPU time per decision with
//! `perf stat -e task-clock` (CPU time counts only while the process runs, so it stays
//! meaningful on a machine shared with other work, where criterion's wall time does not).
//!
//! ```text
//! cargo build --release -p router-benches --example hotloop
//! perf stat -e task-clock target/release/examples/hotloop round_robin 10 3000000 usage 1
//! #                                    strategy endpoints iterations usage|nousage threads
//! perf stat -e task-clock target/release/examples/hotloop consistent_hash 1000 300000 usage 1 500
//! #                                    ... and decisions held in flight per thread
//! ```
//!
//! With a last argument `held`, each thread keeps its `held` most recent decisions in flight
//! and reports the oldest as it routes a new one, so endpoints carry load as under real
//! traffic (without it every decision is reported before the next: in-flight stays 0).
//!
//! CPU time per operation = task-clock / iterations. With two threads, perfect scaling keeps
//! it equal to one thread's; contention raises it. The fleet and requests are those of the
//! `route` bench (`router_benches::fleet`, prefer `eu-west`, 256 affinity keys).
#![allow(missing_docs)]

use router_core::{Outcome, StrategyKind};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage_line = "usage: hotloop <strategy> <endpoints> <iterations> [usage|nousage] [threads] [held]";
    let arg = |i: usize| args.get(i).map(String::as_str);
    let (Some(kind), Some(n), Some(iters)) = (arg(1), arg(2), arg(3)) else {
        eprintln!("{usage_line}");
        std::process::exit(2);
    };
    let kind: StrategyKind = kind.parse().expect("a strategy name");
    let n: usize = n.parse().expect("an endpoint count");
    let iters: usize = iters.parse().expect("an iteration count");
    let usage = arg(4) != Some("nousage");
    let threads: usize = arg(5).map_or(1, |t| t.parse().expect("a thread count"));
    let held: usize = arg(6).map_or(0, |h| h.parse().expect("a count of decisions held"));

    let router = router_benches::fleet_router(n, usage);
    let reqs = router_benches::fleet_requests(kind);
    let lats = router_benches::fleet_latencies();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (router, reqs, lats) = (&router, &reqs, &lats);
            s.spawn(move || {
                let mut in_flight = std::collections::VecDeque::with_capacity(held + 1);
                for k in 0..iters / threads {
                    let k = k + t * 7;
                    let d = router
                        .route(std::hint::black_box(&reqs[k % router_benches::KEYS]))
                        .expect("route");
                    let d = if held == 0 {
                        d
                    } else {
                        in_flight.push_back(d);
                        if in_flight.len() <= held {
                            continue;
                        }
                        in_flight.pop_front().expect("a decision")
                    };
                    router
                        .report(&d, Outcome::success(lats[k % router_benches::KEYS]))
                        .expect("report");
                }
            });
        }
    });
}
