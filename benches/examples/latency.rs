//! Per-call latency of `route` + `report` (or of `route` alone): the p50 that issue 2's O(1)
//! target names, with p90, p99 and the mean, for each strategy at 10, 100 and 1,000 endpoints.
//!
//! Criterion (`benches/route.rs`) times batches of calls, so its figure is a mean per call. A
//! median needs each call timed on its own. Here every call is timed with the CPU's time-stamp
//! counter (`quanta::Clock::raw`, a few ns to read where the TSC is invariant, as on this
//! machine). The counter moves in steps of 10 ns here; quantiles are interpolated between them
//! ([`quantile`]).
//!
//! Nothing is subtracted for the reads: an empty timed region measures ~10 ns (printed as
//! `empty`), but around a call the reads overlap the call's own work. The mean of the timed
//! calls agrees with criterion's figure for the same benchmark within its noise, so the
//! figures are the calls' own, with the reads' cost included where it does not overlap.
//!
//! The fleet and requests are those of the `route` bench (`router_benches::fleet`, prefer
//! `eu-west`, 256 affinity keys, latencies 50-450 ms). Each round builds a router, routes and
//! reports untimed for `warmup` seconds (1 by default: criterion measures after 0.5-2 s of the
//! same loop, when the fleet's latencies have settled), then times `calls` calls; a figure is
//! the median over `rounds` rounds.
//!
//! ```text
//! cargo run --release -p router-benches --example latency                  # everything
//! cargo run --release -p router-benches --example latency -- power_of_two  # one strategy
//! cargo run --release -p router-benches --example latency -- all 300000 5 1 route   # route alone
//! #                                   [strategy|all] [calls] [rounds] [warm-up s] [route_report|route]
//! ```
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use router_benches::{fleet_latencies, fleet_requests, fleet_router, KEYS};
use router_core::{Outcome, StrategyKind};

/// Fleet sizes.
const SIZES: [usize; 3] = [10, 100, 1_000];

/// Per-call figures of one round, ns: p50, p90, p99, mean.
#[derive(Debug, Clone, Copy)]
struct Figures {
    p50: f64,
    p90: f64,
    p99: f64,
    mean: f64,
}

/// The `p` quantile of sorted samples, interpolated.
///
/// The counter moves in steps (26 ticks, 10 ns, on this machine), so the samples take a few
/// distinct values and the nearest-rank quantile jumps by a whole step. Each distinct value's
/// samples are taken as spread evenly between the midpoints to its neighbours, and the
/// quantile is read off that piecewise-linear distribution: within a step of the true one.
fn quantile(sorted: &[u64], p: f64) -> f64 {
    let target = p * sorted.len() as f64;
    let mut below = 0usize;
    let mut k = 0usize;
    let mut prev: Option<u64> = None;
    while k < sorted.len() {
        let v = sorted[k];
        let count = sorted[k..].partition_point(|&x| x == v);
        let next = sorted.get(k + count).copied();
        let lo = prev.map_or(v as f64, |u| (u + v) as f64 / 2.0);
        let hi = next.map_or(v as f64, |u| (u + v) as f64 / 2.0);
        if (below + count) as f64 >= target {
            return lo + (target - below as f64) / count as f64 * (hi - lo);
        }
        below += count;
        prev = Some(v);
        k += count;
    }
    sorted.last().map_or(0.0, |&v| v as f64)
}

/// Figures of `ticks` (time-stamp counter deltas), in ns.
fn figures(clock: &quanta::Clock, ticks: &mut [u64]) -> Figures {
    ticks.sort_unstable();
    // ns per tick, from a long interval (delta_as_nanos takes whole ticks).
    let per_tick = clock.delta_as_nanos(0, 1 << 40) as f64 / (1u64 << 40) as f64;
    let ns = |t: f64| t * per_tick;
    let sum: u128 = ticks.iter().map(|&t| u128::from(t)).sum();
    Figures {
        p50: ns(quantile(ticks, 0.50)),
        p90: ns(quantile(ticks, 0.90)),
        p99: ns(quantile(ticks, 0.99)),
        mean: ns(sum as f64 / ticks.len() as f64),
    }
}

/// The p50 of an empty timed region, ns: what reading the counter twice costs on its own.
fn empty(clock: &quanta::Clock, calls: usize) -> f64 {
    let mut ticks = vec![0u64; calls];
    for t in ticks.iter_mut() {
        let start = clock.raw();
        let end = clock.raw();
        *t = end.saturating_sub(start);
    }
    figures(clock, &mut ticks).p50
}

/// What a timed call covers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Span {
    /// `route`, then `report` (the `route` bench's `route_report_1t`).
    RouteReport,
    /// `route` alone; the decision is still reported, untimed, so the fleet's state moves as
    /// under `RouteReport`.
    Route,
}

/// One round of one strategy at one size: untimed calls for `warmup`, then `calls` timed ones.
fn run(clock: &quanta::Clock, kind: StrategyKind, n: usize, warmup: Duration, calls: usize, span: Span) -> Figures {
    let router = fleet_router(n, true);
    let reqs = fleet_requests(kind);
    let lats = fleet_latencies();
    let step = |k: usize| {
        let d = router.route(black_box(&reqs[k % KEYS])).expect("route");
        router.report(&d, Outcome::success(lats[k % KEYS])).expect("report");
    };
    // The fleet's latencies (and with them how many members a scan keeps) settle over the
    // first few hundred thousand decisions: warm up for as long as criterion does before it
    // measures, and continue the same sequence.
    let started = std::time::Instant::now();
    let mut k = 0usize;
    while started.elapsed() < warmup {
        step(k);
        k += 1;
    }
    let mut ticks = vec![0u64; calls];
    for (j, t) in ticks.iter_mut().enumerate() {
        let k = k + j;
        match span {
            Span::RouteReport => {
                let start = clock.raw();
                step(k);
                let end = clock.raw();
                *t = end.saturating_sub(start);
            }
            Span::Route => {
                let start = clock.raw();
                let d = router.route(black_box(&reqs[k % KEYS])).expect("route");
                let end = clock.raw();
                *t = end.saturating_sub(start);
                router.report(&d, Outcome::success(lats[k % KEYS])).expect("report");
            }
        }
    }
    figures(clock, &mut ticks)
}

/// The median of `v` (by p50; the other figures come from the same round).
fn median_round(mut v: Vec<Figures>) -> Figures {
    v.sort_by(|a, b| a.p50.total_cmp(&b.p50));
    v[v.len() / 2]
}

/// Whether the strategy scans every member (its time grows with the fleet).
fn scans(kind: StrategyKind) -> bool {
    use StrategyKind::*;
    matches!(kind, LeastLoaded | LatencyBased | CostBased | GeoPreferred | Hybrid)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map_or("all", String::as_str);
    let calls: usize = args.get(2).map_or(200_000, |c| c.parse().expect("a call count"));
    let rounds: usize = args.get(3).map_or(3, |r| r.parse().expect("a round count"));
    let warmup = Duration::from_secs_f64(args.get(4).map_or(1.0, |w| w.parse().expect("seconds of warm-up")));
    let span = match args.get(5).map(String::as_str) {
        None | Some("route_report") => Span::RouteReport,
        Some("route") => Span::Route,
        Some(other) => panic!("the span is `route_report` or `route`, got {other}"),
    };
    let kinds: Vec<StrategyKind> = if which == "all" {
        StrategyKind::ALL.to_vec()
    } else {
        vec![which.parse().expect("a strategy name or `all`")]
    };
    let clock = quanta::Clock::new();
    println!(
        "{} per call, ns, median of {rounds} rounds of {calls} calls (scans at 1,000: a tenth) after {} s",
        if span == Span::Route { "route" } else { "route + report" },
        warmup.as_secs_f64()
    );
    println!(
        "{:<22} {:>6} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "strategy", "n", "p50", "p90", "p99", "mean", "empty"
    );
    for kind in kinds {
        for n in SIZES {
            // Scans at 1,000 endpoints take microseconds: fewer calls keep a round short.
            let calls = if n >= 1_000 && scans(kind) { calls / 10 } else { calls };
            let mut runs = Vec::with_capacity(rounds);
            let mut over = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                over.push(empty(&clock, 100_000));
                runs.push(run(&clock, kind, n, warmup, calls, span));
            }
            over.sort_by(f64::total_cmp);
            let f = median_round(runs);
            println!(
                "{:<22} {:>6} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>9.0}",
                kind.as_str(),
                n,
                f.p50,
                f.p90,
                f.p99,
                f.mean,
                over[over.len() / 2]
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_interpolate_between_steps() {
        // Distinct values: the median is the middle one.
        assert_eq!(quantile(&[10, 20, 30, 40, 50], 0.5), 30.0);
        // Two steps, half the samples each: the median sits between them.
        let v = [100, 100, 100, 100, 110, 110, 110, 110];
        assert_eq!(quantile(&v, 0.5), 105.0);
        // Three quarters on the lower step: two thirds into its share, [100, 105].
        let v = [100, 100, 100, 110];
        assert_eq!(quantile(&v, 0.5), 100.0 + 2.0 / 3.0 * 5.0);
        // The extremes stay within the samples.
        assert_eq!(quantile(&v, 1.0), 110.0);
        assert!(quantile(&v, 0.0) >= 100.0);
    }
}
