//! Test harness: a private `redis-server` per test on a free loopback port (never 6379),
//! killed by PID when the guard drops (also on panic); a TCP proxy that can swallow replies;
//! fixtures.
#![allow(dead_code, unreachable_pub, unused_macros)]

/// A test body run against one redis-server and against the shared cluster.
macro_rules! on_both {
    ($body:ident, $single:ident, $cluster:ident) => {
        #[test]
        fn $single() {
            $body(&RedisServer::start());
        }
        #[test]
        fn $cluster() {
            $body(shared_cluster());
        }
    };
}

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
        // The port from `free_port` is let go before the server binds it, and another process
        // can take it in between: a first start that exits at once moves to another port.
        for _ in 0..5 {
            s.run();
            if s.answers() {
                return s;
            }
            s.kill9();
            s.port = free_port();
        }
        s.spawn();
        s
    }

    /// Start the server and wait until it answers (a restart keeps its port).
    fn spawn(&mut self) {
        self.run();
        assert!(self.answers(), "redis-server did not answer on port {}", self.port);
    }

    /// Whether the server answers within 10 s; false at once if it exits first.
    fn answers(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if ping(self.port) {
                return true;
            }
            if self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_)))) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn run(&mut self) {
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

/// A connection for assertions, to one Redis or to a cluster.
pub enum AnyCon {
    Single(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl redis::ConnectionLike for AnyCon {
    fn req_packed_command(&mut self, cmd: &[u8]) -> redis::RedisResult<redis::Value> {
        match self {
            AnyCon::Single(c) => c.req_packed_command(cmd),
            AnyCon::Cluster(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<redis::Value>> {
        match self {
            AnyCon::Single(c) => c.req_packed_commands(cmd, offset, count),
            AnyCon::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }
    fn req_command(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        match self {
            AnyCon::Single(c) => c.req_command(cmd),
            AnyCon::Cluster(c) => c.req_command(cmd),
        }
    }
    fn get_db(&self) -> i64 {
        0
    }
    fn check_connection(&mut self) -> bool {
        match self {
            AnyCon::Single(c) => c.check_connection(),
            AnyCon::Cluster(c) => c.check_connection(),
        }
    }
    fn is_open(&self) -> bool {
        match self {
            AnyCon::Single(c) => c.is_open(),
            AnyCon::Cluster(c) => c.is_open(),
        }
    }
}

/// What a test body runs against: one redis-server or a cluster.
pub trait Backend: Sync {
    /// The store's `redis_url`.
    fn url(&self) -> String;
    /// A connection for assertions.
    fn conn(&self) -> AnyCon;
    fn is_cluster(&self) -> bool;
    /// A plain connection to one node (for pub/sub: on a cluster, any node hears every
    /// PUBLISH).
    fn node_con(&self) -> redis::Connection;
}

impl Backend for RedisServer {
    fn url(&self) -> String {
        RedisServer::url(self)
    }
    fn conn(&self) -> AnyCon {
        AnyCon::Single(self.con())
    }
    fn is_cluster(&self) -> bool {
        false
    }
    fn node_con(&self) -> redis::Connection {
        self.con()
    }
}

/// GET a key as an integer.
pub fn get_int(b: &dyn Backend, key: &str) -> Option<i64> {
    redis::cmd("GET").arg(key).query(&mut b.conn()).unwrap()
}

/// One node of a cluster.
pub struct Node {
    pub port: u16,
    child: Option<Child>,
}

/// A Redis Cluster of 3 masters and 3 replicas on free loopback ports (`cluster-node-timeout`
/// 2,000 ms, no persistence), made with `redis-cli --cluster create`; every node is killed by
/// PID on drop.
pub struct RedisCluster {
    pub nodes: Vec<Node>,
    dir: PathBuf,
}

pub const NODE_TIMEOUT_MS: u64 = 2_000;

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = std::env::temp_dir().join(format!("mr-redis-cluster-{}-{}", std::process::id(), rand_u64()));
        std::fs::create_dir_all(&dir).unwrap();
        // A node's port comes from `free_port`, which lets it go before the node binds it:
        // another process can take it in between. A node that exits before it answers is
        // started again on other ports.
        let spawn = |port: u16| {
            Command::new(redis_server_bin())
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--cluster-enabled", "yes"])
                // The bus port is port + 10,000 unless set: it could be taken, or above 65,535.
                .args(["--cluster-port", &free_port().to_string()])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                .args(["--save", "", "--appendonly", "no"])
                // Replicas sync at once (the default waits 5 s for more replicas).
                .args(["--repl-diskless-sync-delay", "0"])
                .args(["--dir", dir.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("cannot start redis-server")
        };
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = free_port();
            nodes.push(Node {
                port,
                child: Some(spawn(port)),
            });
        }
        for n in &mut nodes {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut restarts = 0;
            while !ping(n.port) {
                assert!(Instant::now() < deadline, "cluster node {} did not start", n.port);
                let exited = n.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
                if exited && restarts < 5 {
                    restarts += 1;
                    n.port = free_port();
                    n.child = Some(spawn(n.port));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let c = RedisCluster { nodes, dir };
        let cli = redis_server_bin().with_file_name("redis-cli");
        let cli = if cli.is_file() { cli } else { PathBuf::from("redis-cli") };
        let out = Command::new(cli)
            .arg("--cluster")
            .arg("create")
            .args(c.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        c.wait_ok(Duration::from_secs(20));
        c
    }

    /// Wait until every live node says `cluster_state:ok` and sees 3 masters, and every
    /// replica has synced with its master.
    pub fn wait_ok(&self, within: Duration) {
        let ok = eventually(within, || {
            self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                let Ok(mut con) =
                    redis::Client::open(format!("redis://127.0.0.1:{}", n.port)).and_then(|c| c.get_connection())
                else {
                    return false;
                };
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut con).unwrap_or_default();
                let repl: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(&mut con)
                    .unwrap_or_default();
                info.contains("cluster_state:ok")
                    && info.contains("cluster_size:3")
                    && (repl.contains("role:master") || repl.contains("master_link_status:up"))
            })
        });
        assert!(ok.is_some(), "cluster never reached cluster_state:ok");
    }

    /// The port of the master serving `slot`.
    pub fn master_of(&self, slot: u16) -> u16 {
        self.try_master_of(slot)
            .unwrap_or_else(|| panic!("slot {slot} not served"))
    }

    /// The port of the master serving `slot`, as a live node sees it.
    pub fn try_master_of(&self, slot: u16) -> Option<u16> {
        let mut con = self.conn();
        let v: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER").arg("SLOTS").query(&mut con).ok()?;
        for range in v {
            let start: i64 = redis::from_redis_value(range.first()?.clone()).ok()?;
            let end: i64 = redis::from_redis_value(range.get(1)?.clone()).ok()?;
            if (start..=end).contains(&i64::from(slot)) {
                let master: Vec<redis::Value> = redis::from_redis_value(range.get(2)?.clone()).ok()?;
                let port: i64 = redis::from_redis_value(master.get(1)?.clone()).ok()?;
                return Some(port as u16);
            }
        }
        None
    }

    pub fn keyslot(&self, key: &str) -> u16 {
        let v: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.conn())
            .unwrap();
        v as u16
    }

    /// `kill -9` the node on `port`.
    pub fn kill9(&mut self, port: u16) {
        let n = self.nodes.iter_mut().find(|n| n.port == port).expect("a node");
        if let Some(mut c) = n.child.take() {
            let _ = Command::new("kill").args(["-9", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }

    /// `CLUSTER NODES` as a live node sees it (for failure messages).
    pub fn describe(&self) -> String {
        let port = self.live_ports()[0];
        redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("CLUSTER").arg("NODES").query::<String>(&mut c))
            .unwrap_or_else(|e| e.to_string())
    }

    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }
}

impl Backend for RedisCluster {
    fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis+cluster://{}", seeds.join(","))
    }
    fn conn(&self) -> AnyCon {
        let seeds: Vec<String> = self
            .live_ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect();
        let con = redis::cluster::ClusterClient::new(seeds)
            .unwrap()
            .get_connection()
            .unwrap();
        AnyCon::Cluster(Box::new(con))
    }
    fn is_cluster(&self) -> bool {
        true
    }
    fn node_con(&self) -> redis::Connection {
        let port = self.live_ports()[0];
        redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for p in self.live_ports() {
            self.kill9(p);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One cluster shared by the tests of a test binary that do not kill nodes (each uses its own
/// key prefix). A static is never dropped: a watchdog shell kills the nodes by PID when this
/// process exits.
pub fn shared_cluster() -> &'static RedisCluster {
    static CLUSTER: std::sync::OnceLock<RedisCluster> = std::sync::OnceLock::new();
    CLUSTER.get_or_init(|| {
        let c = RedisCluster::start();
        let pids: Vec<String> = c
            .nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(|c| c.id().to_string()))
            .collect();
        let script = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 0.2; done; kill -9 {pids} 2>/dev/null; rm -rf '{dir}'",
            me = std::process::id(),
            pids = pids.join(" "),
            dir = c.dir.display()
        );
        // Not waited for: it outlives this process by design.
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("watchdog");
        c
    })
}
