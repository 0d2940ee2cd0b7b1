//! Quickstart: every routing strategy on the same small fleet, side by side.
//!
//! Builds a [`Router`] with three chat models (gpt-4 / openai, claude-3-sonnet / anthropic,
//! llama-3-70b / meta, priced differently) and six endpoints in two regions (us-east, eu-west)
//! with different weights, capacities and speeds. Then, for each of the ten strategies in
//! [`StrategyKind::ALL`], it routes 10,000 chat requests (preferred region `eu-west`, an affinity
//! key drawn from 200 user ids, the strategy given as a request override) through a small
//! simulation:
//!
//! - requests arrive about every 25 ms of simulated time (a [`ManualClock`] moved by hand, so
//!   the run takes a few real milliseconds and decaying statistics such as peak-EWMA latency
//!   still see time pass);
//! - each decision stays in flight until its endpoint would have answered (per-endpoint base
//!   latency with jitter), so capacities and in-flight counts matter; then it is reported with a
//!   synthetic [`Outcome`];
//! - `llama-eu-west` is fast and cheap but fails half of its requests with a quick 503 (a fast
//!   failure also frees capacity quickly, so it looks idle). The router learns that from the
//!   reports (health score and status, circuit breaker; docs/health.md) and holds it back
//!   whatever the strategy; the `share` and `failures` columns show how much still reaches it.
//!
//! For each strategy it prints every endpoint's share of the traffic, its failures, and the
//! p50 / p99 of the wall time of the `route()` call itself, measured with
//! [`std::time::Instant`] around each call (this includes the ~20-40 ns that reading the clock
//! twice costs). Each strategy gets a fresh router, so one's learning does not leak into the next.
//!
//! ```text
//! cargo run --release -p router-core --example quickstart
//! ```

use std::sync::Arc;
use std::time::Instant;

use router_core::{
    Decision, Endpoint, ErrorClass, ManualClock, Model, ModelType, Outcome, Policy, RouteRequest, Router, StrategyKind,
};

/// Requests routed per strategy.
const REQUESTS: usize = 10_000;
/// Distinct users (affinity keys).
const USERS: usize = 200;
/// Mean gap between two arrivals, simulated ms.
const MEAN_ARRIVAL_GAP_MS: f64 = 25.0;

/// One endpoint of the fleet and how the simulation makes it behave.
struct Spec {
    id: &'static str,
    model: &'static str,
    region: &'static str,
    weight: f64,
    capacity: u32,
    /// Typical latency of a successful request, ms.
    base_latency_ms: f64,
    /// Share of requests that fail with a 503.
    failure_rate: f64,
}

const FLEET: [Spec; 6] = [
    Spec {
        id: "gpt4-us-east",
        model: "gpt-4",
        region: "us-east",
        weight: 2.0,
        capacity: 16,
        base_latency_ms: 900.0,
        failure_rate: 0.0,
    },
    Spec {
        id: "gpt4-eu-west",
        model: "gpt-4",
        region: "eu-west",
        weight: 1.0,
        capacity: 8,
        base_latency_ms: 1_000.0,
        failure_rate: 0.0,
    },
    Spec {
        id: "claude-us-east",
        model: "claude-3-sonnet",
        region: "us-east",
        weight: 1.0,
        capacity: 12,
        base_latency_ms: 700.0,
        failure_rate: 0.0,
    },
    Spec {
        id: "claude-eu-west",
        model: "claude-3-sonnet",
        region: "eu-west",
        weight: 1.5,
        capacity: 12,
        base_latency_ms: 650.0,
        failure_rate: 0.0,
    },
    Spec {
        id: "llama-us-east",
        model: "llama-3-70b",
        region: "us-east",
        weight: 1.0,
        capacity: 6,
        base_latency_ms: 400.0,
        failure_rate: 0.0,
    },
    Spec {
        id: "llama-eu-west",
        model: "llama-3-70b",
        region: "eu-west",
        weight: 0.5,
        capacity: 6,
        base_latency_ms: 380.0,
        failure_rate: 0.5,
    },
];

/// A tiny deterministic generator (splitmix64) for the simulation, so runs are repeatable.
struct Sim(u64);

impl Sim {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

fn policy() -> Policy {
    Policy {
        models: vec![
            Model::new("gpt-4", "openai")
                .with_type(ModelType::Chat)
                .with_pricing(0.03, 0.06),
            Model::new("claude-3-sonnet", "anthropic")
                .with_type(ModelType::Chat)
                .with_pricing(0.003, 0.015),
            Model::new("llama-3-70b", "meta")
                .with_type(ModelType::Chat)
                .with_pricing(0.0009, 0.0009),
        ],
        endpoints: FLEET
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Endpoint::new(s.id, s.model, format!("http://10.0.0.{}/v1", i + 1))
                    .with_region(s.region)
                    .with_weight(s.weight)
                    .with_capacity(s.capacity)
            })
            .collect(),
        ..Default::default()
    }
}

/// What happened to one strategy's 10,000 requests.
struct Run {
    picks: [u64; FLEET.len()],
    failures: [u64; FLEET.len()],
    route_ns: Vec<u64>,
    errors: u64,
}

fn run(kind: StrategyKind, seed: u64) -> Run {
    router_core::seed_thread(seed);
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let router = Router::builder()
        .policy(policy())
        .clock(clock.clone())
        .build()
        .expect("the quickstart policy is valid");

    // One request per user, built before the loop: only route() is timed.
    let requests: Vec<RouteRequest> = (0..USERS)
        .map(|u| RouteRequest {
            model_type: Some(ModelType::Chat),
            region_preference: Some("eu-west".into()),
            affinity_key: Some(format!("user-{u:03}")),
            strategy: Some(kind),
            ..Default::default()
        })
        .collect();

    let mut sim = Sim(seed);
    let mut now_ms: u64 = 0;
    let mut arrival_ms = 0.0;
    // Decisions in flight: (simulated time it completes, decision, outcome).
    let mut in_flight: Vec<(u64, Decision, Outcome)> = Vec::new();
    let mut out = Run {
        picks: [0; FLEET.len()],
        failures: [0; FLEET.len()],
        route_ns: Vec::with_capacity(REQUESTS),
        errors: 0,
    };

    for _ in 0..REQUESTS {
        // Move simulated time to the next arrival (exponential gaps) ...
        arrival_ms += -(1.0 - sim.unit()).ln() * MEAN_ARRIVAL_GAP_MS;
        let t = arrival_ms as u64;
        clock.advance(t - now_ms);
        now_ms = t;
        // ... and report every request that has finished by then.
        let mut k = 0;
        while k < in_flight.len() {
            if in_flight[k].0 <= now_ms {
                let (_, d, outcome) = in_flight.swap_remove(k);
                router.report(&d, outcome).expect("each decision is reported once");
            } else {
                k += 1;
            }
        }

        let req = &requests[sim.below(USERS)];
        let t0 = Instant::now();
        let routed = router.route(req);
        out.route_ns.push(t0.elapsed().as_nanos() as u64);
        let d = match routed {
            Ok(d) => d,
            Err(_) => {
                out.errors += 1;
                continue;
            }
        };

        let e = FLEET
            .iter()
            .position(|s| s.id == d.endpoint_id())
            .expect("the router only picks fleet endpoints");
        out.picks[e] += 1;
        let spec = &FLEET[e];
        let (done_in_ms, outcome) = if sim.unit() < spec.failure_rate {
            out.failures[e] += 1;
            let ms = 30.0 + 20.0 * sim.unit();
            (ms, Outcome::failure(ErrorClass::Server { status: 503 }, ms))
        } else {
            let ms = spec.base_latency_ms * (0.8 + 0.5 * sim.unit());
            (ms, Outcome::success(ms).with_tokens(400, 150))
        };
        in_flight.push((now_ms + done_in_ms as u64, d, outcome));
    }
    for (_, d, outcome) in in_flight.drain(..) {
        router.report(&d, outcome).expect("each decision is reported once");
    }
    out
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn main() {
    println!(
        "{} models, {} endpoints; {REQUESTS} chat requests per strategy, region preference eu-west, \
         {USERS} users; llama-eu-west fails half of its requests.",
        policy().models.len(),
        FLEET.len()
    );
    let started = Instant::now();
    for (k, kind) in StrategyKind::ALL.into_iter().enumerate() {
        let mut r = run(kind, 42 + k as u64);
        r.route_ns.sort_unstable();
        let routed: u64 = r.picks.iter().sum();
        println!();
        println!(
            "== {kind} ==  route() p50 {} ns, p99 {} ns; {routed} routed, {} refused",
            percentile(&r.route_ns, 0.50),
            percentile(&r.route_ns, 0.99),
            r.errors
        );
        println!(
            "  {:<16} {:<8} {:>6} {:>4} {:>8} {:>7} {:>9}",
            "endpoint", "region", "weight", "cap", "base ms", "share", "failures"
        );
        for (i, s) in FLEET.iter().enumerate() {
            let share = if routed == 0 {
                0.0
            } else {
                100.0 * r.picks[i] as f64 / routed as f64
            };
            println!(
                "  {:<16} {:<8} {:>6} {:>4} {:>8} {:>6.1}% {:>9}",
                s.id, s.region, s.weight, s.capacity, s.base_latency_ms, share, r.failures[i]
            );
        }
    }
    println!();
    println!(
        "route() times are wall-clock per call (Instant around route(), so ~20-40 ns of clock reads \
         included); total run {:.2} s.",
        started.elapsed().as_secs_f64()
    );
}
