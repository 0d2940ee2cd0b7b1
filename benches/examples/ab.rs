//! Interleaved A/B timing of the `adaptive` and `predict` benches' decisions, for a noisy
//! machine: chunks of iterations alternate between two configurations in one process, so both
//! see the same interference, and the median of the per-chunk differences is the figure.
//! Criterion runs one benchmark after the other, and on a shared 2-core VM their difference
//! (20 ns in 500) drowns in the drift between them.
//!
//! ```text
//! cargo run --release -p router-benches --example ab -- ab p2c/off p2c/on 4000 250
//! cargo run --release -p router-benches --example ab -- ab weighted/20 adaptive/20 2000 250
//! # one configuration N times (for instruction counts under `valgrind --tool=callgrind`):
//! cargo run --release -p router-benches --example ab -- run adaptive/20 20000
//! ```
//!
//! Configurations: `weighted/<n>` and `adaptive/<n>` are `benches/adaptive.rs`'s (n chat models
//! of one endpoint, P2C, one agent type, model k fails every (10 + k)-th call);
//! `p2c/off`, `p2c/on`, `ll/off`, `ll/on` are `benches/predict.rs`'s (two models of five
//! endpoints, capacity 1000, prediction off or on); `route/<mix>` and `route_report/<mix>` are
//! `benches/accounting.rs`'s (`<mix>`: `no_usage`, `plain`, `usage`, `budget_limit`, and `limit`
//! or `budget` for either half of `budget_limit`, `workspaces` for `usage` with its workspaces
//! configured but no budget; `route` drops the decision, `route_report` reports a success with
//! token counts):
//!
//! ```text
//! cargo run --release -p router-benches --example ab -- ab route/usage route/budget_limit 4000 250
//! ```
//!
//! The `floor` mix is `usage` plus the least a budget and a limit can add, done beside the
//! router in the example itself ([`Floor`]): against `usage`, it shows how far any
//! implementation of those semantics must stay above it, and so how much of `budget_limit`'s
//! extra time is the router's own:
//!
//! ```text
//! cargo run --release -p router-benches --example ab -- ab route/usage/round_robin/10 route/floor/round_robin/10 2000 250
//! ```
//!
//! `route/<mix>/<strategy>/<endpoints>` names another strategy and fleet size (default
//! `power_of_two` on 100). `sweep` compares `budget_limit` and `floor` with `usage`, and
//! `budget_limit` with `plain`, for every
//! strategy at 10, 100 and 1,000 endpoints (scans at 100 and more time chunks a tenth as long):
//!
//! ```text
//! cargo run --release -p router-benches --example ab -- sweep route_report 400 200
//! ```
#![allow(missing_docs)]

use router_core::*;
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

fn predict_router(prediction: bool) -> Router {
    let mut settings = RouterConfig::default();
    settings.usage.enabled = false;
    settings.prediction.enabled = prediction;
    Router::new(Policy {
        settings,
        ..router_benches::two_models_of_five()
    })
    .expect("valid policy")
}

/// A router, its requests (taken in turn), how the decisions end, and the iteration count.
struct Case(Router, Vec<RouteRequest>, End, usize, Option<Floor>);

/// A short id (up to 16 bytes) as one number, read as two overlapping words (no `memcpy`).
fn packed(id: &str) -> u128 {
    let b = id.as_bytes();
    let n = b.len();
    assert!(
        (8..=16).contains(&n) || (4..8).contains(&n),
        "a bench id of 4 to 16 bytes"
    );
    let (head, tail) = if n >= 8 {
        let w = |s: &[u8]| u64::from_le_bytes(s.try_into().expect("8 bytes"));
        (w(&b[..8]), w(&b[n - 8..]))
    } else {
        let w = |s: &[u8]| u64::from(u32::from_le_bytes(s.try_into().expect("4 bytes")));
        (w(&b[..4]), w(&b[n - 4..]))
    };
    (u128::from(head) | u128::from(tail) << 64) ^ (n as u128) << 120
}

/// One multiply-rotate round per word (FxHash's), for [`packed`] ids.
#[derive(Default, Clone, Copy)]
struct FxBuild;
impl std::hash::BuildHasher for FxBuild {
    type Hasher = FxHasher;
    fn build_hasher(&self) -> FxHasher {
        FxHasher(0)
    }
}
struct FxHasher(u64);
impl std::hash::Hasher for FxHasher {
    fn write(&mut self, _: &[u8]) {
        unreachable!("ids are hashed as packed numbers")
    }
    fn write_u128(&mut self, v: u128) {
        for w in [v as u64, (v >> 64) as u64] {
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0xf135_7aea_2e62_a9c5);
        }
    }
    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

/// The least a budget and a limit can add to `usage`, with none of the router's generality:
/// the user's GCRA found by its id (hash lookup) and moved by a compare-and-swap, the
/// workspace's counter found by its id, an estimate added to it at route time and taken back
/// (dropped) or corrected (reported) after. Ids are packed into numbers ([`packed`]), so a
/// lookup neither calls `memcpy` nor `memcmp`. The `floor` mix runs it beside `usage`'s
/// requests on `usage`'s router.
struct Floor {
    users: HashMap<u128, Arc<AtomicU64>, FxBuild>,
    workspaces: HashMap<u128, Arc<AtomicI64>, FxBuild>,
    now_us: u64,
}

/// A workspace counter and the reservation on it.
type Held<'a> = (&'a AtomicI64, i64);

impl Floor {
    fn new() -> Floor {
        Floor {
            users: (0..router_benches::ACCOUNTING_KEYS)
                .map(|k| (packed(&format!("user-{k}")), Arc::default()))
                .collect(),
            workspaces: (0..8).map(|w| (packed(&format!("ws-{w}")), Arc::default())).collect(),
            now_us: 1,
        }
    }

    /// The limit (one request per 60 µs, a second's burst) and the reservation.
    fn admit(&mut self, req: &RouteRequest) -> Held<'_> {
        self.now_us += 1;
        let now = self.now_us;
        let cell = &self.users[&packed(req.user_id.as_deref().expect("a user"))];
        let (t, tau) = (60, 1_000_000);
        let mut cur = cell.load(Ordering::Acquire);
        loop {
            let tat = cur.max(now) + t;
            assert!(tat - now <= tau + t, "within the limit");
            match cell.compare_exchange_weak(cur, tat, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(c) => cur = c,
            }
        }
        let ws = &self.workspaces[&packed(req.workspace_id.as_deref().expect("a workspace"))];
        let micros = (black_box(0.001f64) * 700.0 * 1e3) as i64;
        let total = ws.fetch_add(micros, Ordering::Relaxed) + micros;
        assert!(total < i64::MAX / 2, "within the budget");
        (ws, micros)
    }
}

/// What becomes of a decision.
#[derive(Clone, Copy, PartialEq)]
enum End {
    /// Reported a success.
    Report,
    /// Reported, failing as in the adaptive bench.
    Failing,
    /// Reported a success with token counts (the accounting bench).
    Tokens,
    /// Dropped.
    Drop,
}

impl Case {
    fn new(name: &str) -> Case {
        let (kind, arg) = name.split_once('/').expect("<kind>/<arg>");
        match kind {
            "weighted" | "adaptive" => Case(
                router_benches::adaptive_router(arg.parse().expect("models"), kind == "adaptive"),
                vec![RouteRequest {
                    model_type: Some(ModelType::Chat),
                    agent_type: Some("support".into()),
                    strategy: Some(StrategyKind::PowerOfTwo),
                    ..Default::default()
                }],
                End::Failing,
                0,
                None,
            ),
            "p2c" | "ll" => Case(
                predict_router(arg == "on"),
                vec![RouteRequest {
                    model_type: Some(ModelType::Chat),
                    strategy: Some(if kind == "p2c" {
                        StrategyKind::PowerOfTwo
                    } else {
                        StrategyKind::LeastLoaded
                    }),
                    ..Default::default()
                }],
                End::Report,
                0,
                None,
            ),
            "route" | "route_report" => {
                // `<mix>`, or `<mix>/<strategy>/<endpoints>` (default P2C on 100).
                let mut parts = arg.split('/');
                let mix = parts.next().expect("a mix");
                let strategy = parts
                    .next()
                    .map_or(StrategyKind::PowerOfTwo, |s| s.parse().expect("a strategy"));
                let n = parts.next().map_or(100, |n| n.parse().expect("an endpoint count"));
                let floor = (mix == "floor").then(Floor::new);
                let mix = if mix == "floor" { "usage" } else { mix };
                Case(
                    Router::new(router_benches::accounting_policy_of(mix, n)).expect("valid policy"),
                    router_benches::accounting_requests_of(mix, strategy),
                    if kind == "route" { End::Drop } else { End::Tokens },
                    0,
                    floor,
                )
            }
            _ => panic!("unknown configuration {name}"),
        }
    }

    /// Route (and report) `n` requests.
    fn run(&mut self, n: usize) {
        let Case(r, reqs, end, k, floor) = self;
        for _ in 0..n {
            *k = k.wrapping_add(1);
            let req = black_box(&reqs[*k % reqs.len()]);
            let held = floor.as_mut().map(|f| f.admit(req));
            let d = r.route(req).expect("route");
            let latency = 50.0 + (*k % 400) as f64;
            let o = match *end {
                End::Drop => {
                    drop(black_box(d));
                    if let Some((ws, micros)) = held {
                        ws.fetch_sub(micros, Ordering::Relaxed);
                    }
                    continue;
                }
                End::Tokens => Outcome::success(latency).with_tokens(500, 200),
                End::Failing if *k % (10 + d.model_id()[6..].parse::<usize>().unwrap_or(0)) == 0 => {
                    Outcome::failure(ErrorClass::Server { status: 500 }, latency)
                }
                _ => Outcome::success(latency),
            };
            r.report(&d, o).expect("report");
            if let Some((ws, micros)) = held {
                ws.fetch_add(black_box(1_200) - micros, Ordering::Relaxed);
            }
        }
    }

    /// Nanoseconds per iteration over `n` iterations.
    fn time(&mut self, n: usize) -> f64 {
        let t = std::time::Instant::now();
        self.run(n);
        t.elapsed().as_nanos() as f64 / n as f64
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    match arg(0) {
        "run" => Case::new(arg(1)).run(arg(2).parse().expect("iterations")),
        "ab" => {
            let (mut a, mut b) = (Case::new(arg(1)), Case::new(arg(2)));
            let rounds: usize = arg(3).parse().expect("rounds");
            let chunk: usize = arg(4).parse().expect("chunk");
            a.run(50_000);
            b.run(50_000);
            let (mut ta, mut tb, mut d) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..rounds {
                // Alternate which goes first.
                let (x, y) = if i % 2 == 0 {
                    let x = a.time(chunk);
                    (x, b.time(chunk))
                } else {
                    let y = b.time(chunk);
                    (a.time(chunk), y)
                };
                ta.push(x);
                tb.push(y);
                d.push(y - x);
            }
            println!(
                "{} {:.1} ns, {} {:.1} ns, median of B - A {:+.1} ns, ratio of medians {:.2}",
                arg(1),
                median(&mut ta),
                arg(2),
                median(&mut tb),
                median(&mut d),
                median(&mut tb) / median(&mut ta)
            );
        }
        "sweep" => {
            // `<span>` (route or route_report) with a budget and a limit against the same
            // requests without them, for every strategy at 10, 100 and 1,000 endpoints.
            let span = arg(1);
            let rounds: usize = arg(2).parse().expect("rounds");
            let chunk: usize = arg(3).parse().expect("chunk");
            println!("{span}: budget_limit and floor against usage, and budget_limit against plain (no tenant), per strategy and size");
            for kind in StrategyKind::ALL {
                for n in [10, 100, 1_000] {
                    let name = |mix: &str| format!("{span}/{mix}/{}/{n}", kind.as_str());
                    let scans = !matches!(
                        kind,
                        StrategyKind::RoundRobin
                            | StrategyKind::WeightedRoundRobin
                            | StrategyKind::WeightedRandom
                            | StrategyKind::PowerOfTwo
                            | StrategyKind::ConsistentHash
                    );
                    let chunk = if scans && n >= 100 { (chunk / 10).max(1) } else { chunk };
                    let mut cases = ["plain", "usage", "budget_limit", "floor"].map(|mix| Case::new(&name(mix)));
                    for c in cases.iter_mut() {
                        c.run(20 * chunk);
                    }
                    let mut t: [Vec<f64>; 4] = Default::default();
                    for i in 0..rounds {
                        for j in 0..4 {
                            let j = (i + j) % 4;
                            t[j].push(cases[j].time(chunk));
                        }
                    }
                    let [plain, usage, limited, floor] = t.map(|mut v| median(&mut v));
                    println!(
                        "{:<22} {:>5}  plain {:>8.0} ns  usage {:>8.0} ns  budget_limit {:>8.0} ns  floor {:>8.0} ns  /usage {:.2}  floor/usage {:.2}  /plain {:.2}",
                        kind.as_str(),
                        n,
                        plain,
                        usage,
                        limited,
                        floor,
                        limited / usage,
                        floor / usage,
                        limited / plain
                    );
                }
            }
        }
        _ => eprintln!("usage: ab ab <A> <B> <rounds> <chunk> | ab run <config> <iterations> | ab sweep <route|route_report> <rounds> <chunk>"),
    }
}
