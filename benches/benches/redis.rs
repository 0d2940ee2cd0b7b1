//! The Redis store against the in-memory store, in the same run: `route` + `report` (the
//! default mode: zero Redis round trips per decision; the store only receives the published
//! changes, in the background), and the round trip of a strict `try_add` (p50 / p99 on
//! loopback, printed after the Criterion groups). The bench starts its own `redis-server`
//! (`redis-server` on the PATH, or `$REDIS_SERVER`) on a free loopback port and stops it at the
//! end.
//!
//! ```text
//! cargo bench -p router-benches --bench redis
//! ```
#![allow(missing_docs)]

use std::hint::black_box;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use router_core::{Endpoint, InMemoryStore, Model, Outcome, Policy, RouteRequest, Router, StateStore, StrategyKind};
use router_redis::{RedisConfig, RedisStore};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> (Server, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let child = Command::new(bin)
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server on the PATH (apt-get install -y redis-server)");
    let server = Server(child);
    let url = format!("redis://127.0.0.1:{port}");
    let client = redis::Client::open(url.as_str()).expect("url");
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get_connection().is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, url)
}

fn policy(n: usize) -> Policy {
    Policy {
        models: vec![Model::new("m", "p")],
        endpoints: (0..n)
            .map(|i| Endpoint::new(format!("e{i}"), "m", format!("http://e{i}")))
            .collect(),
        ..Default::default()
    }
}

fn main() {
    let (_server, url) = start_redis();
    let redis = Arc::new(RedisStore::connect(RedisConfig::new(&url).with_prefix("bench:")).expect("store"));
    let mut c = Criterion::default()
        .sample_size(25)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .configure_from_args();

    let mut g = c.benchmark_group("store_route_report");
    for kind in [StrategyKind::PowerOfTwo, StrategyKind::LeastLoaded] {
        let rq = RouteRequest {
            model: Some("m".into()),
            strategy: Some(kind),
            ..Default::default()
        };
        let n = 100;
        let stores: [(&str, Arc<dyn StateStore>); 2] =
            [("memory", Arc::new(InMemoryStore::new())), ("redis", redis.clone())];
        for (label, store) in stores {
            let r = Router::builder()
                .policy(policy(n))
                .store(store)
                .build()
                .expect("router");
            g.bench_with_input(BenchmarkId::new(format!("{kind}/{label}"), n), &n, |b, _| {
                b.iter(|| {
                    let d = r.route(black_box(&rq)).expect("routes");
                    r.report(&d, Outcome::success(120.0)).expect("reports");
                })
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("store_try_add");
    let mut i = 0i64;
    g.bench_function("redis", |b| {
        b.iter(|| {
            i += 1;
            redis.try_add("{ws:bench}:budget", 1, i64::MAX, 0).expect("strict add")
        })
    });
    g.finish();
    c.final_summary();

    // p50 / p99 of one strict round trip.
    let mut lat: Vec<u128> = (0..20_000)
        .map(|_| {
            let t = Instant::now();
            black_box(redis.try_add("{ws:bench}:p99", 1, i64::MAX, 0).expect("strict add"));
            t.elapsed().as_nanos()
        })
        .collect();
    lat.sort_unstable();
    let at = |q: usize| lat[lat.len() * q / 100] as f64 / 1_000.0;
    println!(
        "strict try_add round trip on loopback, 20,000 calls: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        at(50),
        at(99),
        *lat.last().expect("samples") as f64 / 1_000.0
    );
}
