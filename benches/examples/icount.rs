//! `route` + `report` on the `route` bench's fleet with a manual clock: for instruction counts
//! under valgrind, and for A/B timings that do not depend on how fast the machine runs.
//!
//! The other examples and the benches read the wall clock, so the fleet they measure depends on
//! the speed of the run: peak-EWMA latencies decay with time, and under valgrind (50 times
//! slower) a scan sees a different fleet than natively. Here the clock moves 1 ms every
//! `per_ms` decisions (330 is about what `hybrid` at 1,000 endpoints does natively), so a
//! native run and a valgrind run decide on the same fleet, and two builds compared with each
//! other see the same one too (up to the router's random draws).
//!
//! `pre` names strategies to run first, `pre_calls` decisions each (the clock moving 1 ms
//! every 5,000), on the same router: the fleet a scan decides on when other strategies keep
//! reporting to every endpoint (until session 11, `cargo bench --bench route` shared one
//! router per fleet size between all ten strategies, in [`StrategyKind::ALL`]'s order, so a
//! scan there decided on such a fleet; now every benchmark has a router of its own).
//!
//! ```text
//! cargo build --release -p router-benches --example icount
//! # time per decision: the printed `timed` over the iterations
//! target/release/examples/icount hybrid 1000 100000 300000 330
//! # instructions per decision: the difference of two runs over the difference of iterations
//! valgrind --tool=cachegrind --cache-sim=no target/release/examples/icount hybrid 1000 60000 10000 330
//! valgrind --tool=cachegrind --cache-sim=no target/release/examples/icount hybrid 1000 60000 20000 330
//! # as criterion's full run leaves the fleet for latency_based
//! target/release/examples/icount latency_based 1000 100000 300000 330 \
//!     round_robin,weighted_round_robin,weighted_random,least_loaded,power_of_two 2000000
//! ```
//!
//! Arguments: `<strategy> <endpoints> <warm-up decisions> <timed decisions> <per_ms> [pre
//! pre_calls]`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use router_core::{ManualClock, Outcome, Router, StrategyKind};

/// `route` + `report` for `calls` decisions of `kind`, the clock moving 1 ms every `per_ms`.
fn decide(router: &Router, clock: &ManualClock, kind: StrategyKind, calls: usize, per_ms: usize) {
    let reqs = router_benches::fleet_requests(kind);
    let lats = router_benches::fleet_latencies();
    for k in 0..calls {
        if k % per_ms == 0 {
            clock.advance(1);
        }
        let d = router.route(black_box(&reqs[k % router_benches::KEYS])).expect("route");
        router
            .report(&d, Outcome::success(lats[k % router_benches::KEYS]))
            .expect("report");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: icount <strategy> <endpoints> <warm-up> <timed> <per_ms> [pre pre_calls]";
    let arg = |i: usize| args.get(i).map(String::as_str);
    let (Some(kind), Some(n), Some(warm), Some(timed), Some(per_ms)) = (arg(1), arg(2), arg(3), arg(4), arg(5)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let kind: StrategyKind = kind.parse().expect("a strategy name");
    let n: usize = n.parse().expect("an endpoint count");
    let warm: usize = warm.parse().expect("a decision count");
    let timed: usize = timed.parse().expect("a decision count");
    let per_ms: usize = per_ms.parse().expect("decisions per millisecond");

    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let mut policy = router_benches::fleet(n);
    policy.settings.usage.enabled = true;
    let router = Router::builder()
        .policy(policy)
        .clock(clock.clone())
        .build()
        .expect("valid bench policy");
    router_benches::seed_latencies(&router, n);
    if let (Some(pre), Some(calls)) = (arg(6), arg(7)) {
        let calls: usize = calls.parse().expect("a decision count");
        for p in pre.split(',') {
            decide(&router, &clock, p.parse().expect("a strategy name"), calls, 5_000);
        }
    }
    decide(&router, &clock, kind, warm, per_ms);
    let start = Instant::now();
    decide(&router, &clock, kind, timed, per_ms);
    let t = start.elapsed();
    println!(
        "{kind}/{n}: timed {t:?}, {:.1} ns per decision",
        t.as_nanos() as f64 / timed.max(1) as f64
    );
}
