//! The Redis store against the in-memory store, in the same run: `route` + `report` (the
//! default mode: zero Redis round trips per decision; the store only receives the published
//! changes, in the background), and the round trip of a strict `try_add` (p50 / p99 on
//! loopback, printed after the Criterion groups). The bench starts its own `redis-server`
//! (`redis-server` on the PATH, or `$REDIS_SERVER`) on a free loopback port and stops it at the
//! end.
//!
//! Then the same on a Redis Cluster the bench builds (6 `redis-server`s: 3 masters, 3
//! replicas, `redis-cli --cluster create`): `route` + `report` with the cluster store in its
//! default mode against in-memory, and the strict `try_add` round trip (p50 / p99), also
//! with `replica_acks` 1 (a `WAIT` for one replica after each admitted add).
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn redis_bin() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// 3 masters and 3 replicas; returns the servers and the cluster URL.
fn start_cluster(dir: &std::path::Path) -> (Vec<Server>, String) {
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let servers: Vec<Server> = ports
        .iter()
        .map(|p| {
            let child = Command::new(redis_bin())
                .args(["--bind", "127.0.0.1", "--port", &p.to_string()])
                .args(["--cluster-enabled", "yes", "--cluster-port", &free_port().to_string()])
                .args(["--cluster-config-file", &format!("nodes-{p}.conf")])
                .args(["--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no"])
                .args(["--repl-diskless-sync-delay", "0"])
                .arg("--dir")
                .arg(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server");
            Server(child)
        })
        .collect();
    for p in &ports {
        let client = redis::Client::open(format!("redis://127.0.0.1:{p}")).expect("url");
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.get_connection().is_err() {
            assert!(Instant::now() < deadline, "a cluster node did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let cli = std::path::Path::new(&redis_bin()).with_file_name("redis-cli");
    let cli = if cli.is_file() { cli } else { "redis-cli".into() };
    let ok = Command::new(cli)
        .args(["--cluster", "create"])
        .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("redis-cli");
    assert!(ok.success(), "redis-cli --cluster create failed");
    let deadline = Instant::now() + Duration::from_secs(20);
    'wait: loop {
        assert!(Instant::now() < deadline, "the cluster never became ok");
        std::thread::sleep(Duration::from_millis(100));
        for p in &ports {
            let Ok(mut con) = redis::Client::open(format!("redis://127.0.0.1:{p}")).and_then(|c| c.get_connection())
            else {
                continue 'wait;
            };
            let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut con).unwrap_or_default();
            let repl: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut con)
                .unwrap_or_default();
            if !info.contains("cluster_state:ok")
                || !(repl.contains("role:master") || repl.contains("master_link_status:up"))
            {
                continue 'wait;
            }
        }
        break;
    }
    let seeds: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    (servers, format!("redis+cluster://{}", seeds.join(",")))
}

/// p50 / p99 / max of `n` calls of `f`, µs.
fn percentiles(n: usize, mut f: impl FnMut()) -> (f64, f64, f64) {
    let mut lat: Vec<u128> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos()
        })
        .collect();
    lat.sort_unstable();
    let at = |q: usize| lat[lat.len() * q / 100] as f64 / 1_000.0;
    (at(50), at(99), *lat.last().expect("samples") as f64 / 1_000.0)
}

fn start_redis() -> (Server, String) {
    let port = free_port();
    let child = Command::new(redis_bin())
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

    let dir = std::env::temp_dir().join(format!("mr-bench-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let (_cluster, cluster_url) = start_cluster(&dir);
    let cluster =
        Arc::new(RedisStore::connect(RedisConfig::new(&cluster_url).with_prefix("bench:")).expect("cluster store"));
    let cluster_acks = Arc::new(
        RedisStore::connect(
            RedisConfig::new(&cluster_url)
                .with_prefix("bench-acks:")
                .with_replica_acks(1),
        )
        .expect("cluster store"),
    );

    let mut g = c.benchmark_group("store_route_report");
    for kind in [StrategyKind::PowerOfTwo, StrategyKind::LeastLoaded] {
        let rq = RouteRequest {
            model: Some("m".into()),
            strategy: Some(kind),
            ..Default::default()
        };
        let n = 100;
        let stores: [(&str, Arc<dyn StateStore>); 3] = [
            ("memory", Arc::new(InMemoryStore::new())),
            ("redis", redis.clone()),
            ("cluster", cluster.clone()),
        ];
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
    for (label, store) in [("redis", &redis), ("cluster", &cluster)] {
        g.bench_function(label, |b| {
            b.iter(|| store.try_add("{ws:bench}:budget", 1, i64::MAX, 0).expect("strict add"))
        });
    }
    g.finish();
    c.final_summary();

    // Spread over 100 workspaces (all three masters).
    let mut i = 0u64;
    for (label, store) in [("cluster", &cluster), ("cluster, replica_acks 1", &cluster_acks)] {
        let (p50, p99, max) = percentiles(20_000, || {
            i += 1;
            let key = format!("{{ws:b{}}}:p99", i % 100);
            black_box(store.try_add(&key, 1, i64::MAX, 0).expect("strict add"));
        });
        println!(
            "strict try_add round trip on a loopback cluster ({label}), 20,000 calls: \
             p50 {p50:.1} µs, p99 {p99:.1} µs, max {max:.1} µs"
        );
    }
    drop((cluster, cluster_acks));
    let _ = std::fs::remove_dir_all(&dir);

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
