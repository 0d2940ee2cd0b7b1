//! Test harness: a private `redis-server` per test on a free loopback port (never 6379),
//! killed by PID when the guard drops (also on panic); a TCP proxy that can swallow replies;
//! fixtures.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use router_core::{Endpoint, Model, Policy, RouteRequest, Router, RouterConfig, StrategyKind};
use router_redis::{RedisConfig, RedisStore};

/// The `redis-server` binary: `$REDIS_SERVER`, or the one on the PATH. Missing is a test
/// failure, never a skip (scripts/test installs it).
pub fn redis_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("REDIS_SERVER") {
        return PathBuf::from(p);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = PathBuf::from(dir).join("redis-server");
        if p.is_file() {
            return p;
        }
    }
    for p in [
        "/usr/bin/redis-server",
        "/usr/local/bin/redis-server",
        "/usr/sbin/redis-server",
    ] {
        if std::path::Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!("redis-server not found: install it (apt-get install -y redis-server) or set REDIS_SERVER");
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    assert_ne!(port, 6379);
    port
}

/// A redis-server of this test's own.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    persistent: bool,
}

impl RedisServer {
    /// No persistence (`--save '' --appendonly no`).
    pub fn start() -> RedisServer {
        Self::launch(false)
    }

    /// With an append-only file fsynced on every write, so that a `kill -9` loses nothing
    /// Redis acknowledged (and a restart finds it).
    pub fn start_persistent() -> RedisServer {
        Self::launch(true)
    }

    fn launch(persistent: bool) -> RedisServer {
        let dir = std::env::temp_dir().join(format!("mr-redis-test-{}-{}", std::process::id(), rand_u64()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = RedisServer {
            child: None,
            port: free_port(),
            dir,
            persistent,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(redis_server_bin());
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", ""])
            .args(["--dir", self.dir.to_str().unwrap()]);
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if ping(self.port) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-9", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }

    /// Start again on the same port (and directory).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// A plain connection for assertions.
    pub fn con(&self) -> redis::Connection {
        redis::Client::open(self.url()).unwrap().get_connection().unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

/// A unique key prefix per test.
pub fn prefix(test: &str) -> String {
    format!("t:{test}:{:x}:", rand_u64() & 0xffff_ffff)
}

pub fn config(url: &str, prefix: &str) -> RedisConfig {
    RedisConfig::new(url).with_prefix(prefix)
}

pub fn store(url: &str, prefix: &str) -> Arc<RedisStore> {
    Arc::new(RedisStore::connect(config(url, prefix)).unwrap())
}

/// Wait until `f` holds, at most `within`; returns how long it took.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    loop {
        if f() {
            return Some(t.elapsed());
        }
        if t.elapsed() > within {
            return None;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Wait until the store is connected, subscribed and loaded.
pub fn ready(s: &RedisStore) {
    assert!(
        eventually(Duration::from_secs(5), || s.health().ready()).is_some(),
        "store never ready: {:?}",
        s.health()
    );
}

/// One model `m` with endpoints `e0..e{n-1}`.
pub fn policy(n: usize) -> Policy {
    Policy {
        models: vec![Model::new("m", "p")],
        endpoints: (0..n)
            .map(|i| Endpoint::new(format!("e{i}"), "m", format!("http://e{i}")))
            .collect(),
        settings: RouterConfig::default(),
        ..Default::default()
    }
}

pub fn router(store: &Arc<RedisStore>, policy: Policy) -> Router {
    Router::builder().policy(policy).store(store.clone()).build().unwrap()
}

pub fn req() -> RouteRequest {
    RouteRequest {
        model: Some("m".into()),
        strategy: Some(StrategyKind::RoundRobin),
        ..Default::default()
    }
}

/// Whether `r` routes to `endpoint` within `n` round-robin decisions.
pub fn routes_to(r: &Router, endpoint: &str, n: usize) -> bool {
    (0..n).any(|_| r.route(&req()).is_ok_and(|d| d.endpoint_id() == endpoint))
}

/// A TCP proxy in front of Redis that can swallow Redis' replies (the commands still reach
/// Redis and run: a write that times out after Redis applied it).
pub struct Proxy {
    pub port: u16,
    swallow: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    conns: Arc<parking_lot::Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let swallow = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<parking_lot::Mutex<Vec<TcpStream>>> = Arc::default();
        let (sw, st, cs) = (swallow.clone(), stop.clone(), conns.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                            continue;
                        };
                        cs.lock().push(client.try_clone().unwrap());
                        cs.lock().push(server.try_clone().unwrap());
                        let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                        pump(client, server, None);
                        pump(s2, c2, Some(sw.clone()));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Proxy {
            port,
            swallow,
            stop,
            conns,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Swallow (or pass again) everything Redis sends back.
    pub fn swallow_replies(&self, on: bool) {
        self.swallow.store(on, Ordering::SeqCst);
    }

    /// Cut every open connection (the clients see a reset; new ones are accepted).
    pub fn cut(&self) {
        for c in self.conns.lock().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, swallow: Option<Arc<AtomicBool>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if swallow.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
                continue;
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}
