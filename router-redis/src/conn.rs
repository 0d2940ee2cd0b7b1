//! One Redis or a Redis Cluster, behind one connection type.
//!
//! `redis_url` chooses: `redis://…` (or `rediss://`, `redis+unix://`) is one Redis;
//! `redis+cluster://[user:password@]host:port[,host:port…]` (or `rediss+cluster://`) is a
//! Redis Cluster reached through the listed seed nodes (any subset of the cluster: the client
//! learns the rest from `CLUSTER SLOTS`). On a cluster, redis-rs's synchronous cluster client
//! routes each command by the slot of its first key, follows `MOVED` / `ASK`, and refreshes
//! its slot map after a failover.

use redis::cluster::{ClusterClient, ClusterConnection};
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Connection, ConnectionLike, RedisResult, Value};
use std::time::Duration;

use router_core::{Error, Result};

use crate::shared::{int, items, text};

/// Where Redis is.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    Single(redis::Client),
    /// The seed nodes, as `redis://` URLs.
    Cluster(Vec<String>),
}

/// How many times the cluster client retries a command (a redirection, a `TRYAGAIN`, a
/// reconnection). Each attempt gets a third of the call's time, so that a call with one retry
/// and a slot-map refresh in between stays within the timeout.
const CLUSTER_RETRIES: u32 = 1;
const CLUSTER_ATTEMPTS: u32 = 3;

impl Target {
    /// Parse `redis_url`; the error names the field.
    pub(crate) fn parse(url: &str) -> Result<Target> {
        let bad = |reason: String| Error::InvalidConfig {
            field: "url".into(),
            reason,
        };
        for (scheme, node_scheme) in [("redis+cluster://", "redis://"), ("rediss+cluster://", "rediss://")] {
            let Some(rest) = url.strip_prefix(scheme) else {
                continue;
            };
            let (auth, hosts) = match rest.rsplit_once('@') {
                Some((a, h)) => (format!("{a}@"), h),
                None => (String::new(), rest),
            };
            let hosts = hosts.trim_end_matches('/');
            let seeds: Vec<String> = hosts
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(|h| format!("{node_scheme}{auth}{h}"))
                .collect();
            if seeds.is_empty() {
                return Err(bad("a cluster URL lists at least one host:port".into()));
            }
            for s in &seeds {
                redis::Client::open(s.as_str()).map_err(|e| bad(format!("{s}: {e}")))?;
            }
            return Ok(Target::Cluster(seeds));
        }
        redis::Client::open(url)
            .map(Target::Single)
            .map_err(|e| bad(e.to_string()))
    }

    /// A connection whose every read and write times out after `timeout` (on a cluster: the
    /// whole call, retries included, within about `timeout`).
    pub(crate) fn connect(&self, timeout: Duration) -> RedisResult<Conn> {
        let timeout = timeout.max(Duration::from_millis(1));
        match self {
            Target::Single(client) => {
                let c = client.get_connection_with_timeout(timeout)?;
                c.set_read_timeout(Some(timeout))?;
                c.set_write_timeout(Some(timeout))?;
                Ok(Conn::Single(c))
            }
            Target::Cluster(seeds) => {
                let per = (timeout / CLUSTER_ATTEMPTS).max(Duration::from_millis(1));
                let client = ClusterClient::builder(seeds.iter().map(String::as_str))
                    .connection_timeout(per)
                    .response_timeout(per)
                    .retries(CLUSTER_RETRIES)
                    .min_retry_wait(1)
                    .max_retry_wait(5)
                    .build()?;
                let c = client.get_connection()?;
                c.set_read_timeout(Some(per))?;
                c.set_write_timeout(Some(per))?;
                Ok(Conn::Cluster(Box::new(c)))
            }
        }
    }

    /// A plain connection to one node, for pub/sub: on a cluster, the `n`-th of `nodes` (a
    /// `PUBLISH` reaches every node of a cluster, so any node will do).
    pub(crate) fn connect_pubsub(&self, timeout: Duration, nodes: &[String], n: usize) -> RedisResult<Connection> {
        let timeout = timeout.max(Duration::from_millis(1));
        let c = match self {
            Target::Single(client) => client.get_connection_with_timeout(timeout)?,
            Target::Cluster(_) => {
                let url = &nodes[n % nodes.len().max(1)];
                redis::Client::open(url.as_str())?.get_connection_with_timeout(timeout)?
            }
        };
        c.set_read_timeout(Some(timeout))?;
        c.set_write_timeout(Some(timeout))?;
        Ok(c)
    }

    /// The seed URLs (none for a single Redis).
    pub(crate) fn seeds(&self) -> Vec<String> {
        match self {
            Target::Single(_) => Vec::new(),
            Target::Cluster(s) => s.clone(),
        }
    }
}

/// A node's host and port.
pub(crate) type NodeAddr = (String, u16);

/// A connection to one Redis or to a cluster.
pub(crate) enum Conn {
    Single(Connection),
    Cluster(Box<ClusterConnection>),
}

impl Conn {
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// Bound every read and write (on a cluster: every attempt gets a third).
    pub(crate) fn set_timeout(&mut self, d: Duration) -> RedisResult<()> {
        let d = d.max(Duration::from_millis(1));
        match self {
            Conn::Single(c) => {
                c.set_read_timeout(Some(d))?;
                c.set_write_timeout(Some(d))
            }
            Conn::Cluster(c) => {
                let per = (d / CLUSTER_ATTEMPTS).max(Duration::from_millis(1));
                c.set_read_timeout(Some(per))?;
                c.set_write_timeout(Some(per))
            }
        }
    }

    /// Run `cmd` on the master of the slot of `key` (on one Redis: on it).
    pub(crate) fn on_slot_of(&mut self, key: &str, cmd: &Cmd) -> RedisResult<Value> {
        match self {
            Conn::Single(c) => c.req_command(cmd),
            Conn::Cluster(c) => {
                let route = Route::new(key_slot(key.as_bytes()), SlotAddr::Master);
                c.route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)))
            }
        }
    }

    /// Run `cmd` on one node, by address.
    pub(crate) fn on_node(&mut self, host: &str, port: u16, cmd: &Cmd) -> RedisResult<Value> {
        match self {
            Conn::Single(c) => c.req_command(cmd),
            Conn::Cluster(c) => c.route_command(
                cmd,
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.to_owned(),
                    port,
                }),
            ),
        }
    }

    /// The masters and every node (`host`, `port`) of the cluster, from `CLUSTER SLOTS`;
    /// one Redis: empty.
    pub(crate) fn topology(&mut self) -> RedisResult<(Vec<NodeAddr>, Vec<NodeAddr>)> {
        if !self.is_cluster() {
            return Ok((Vec::new(), Vec::new()));
        }
        let v: Value = redis::cmd("CLUSTER").arg("SLOTS").query(self)?;
        let (mut masters, mut all) = (Vec::new(), Vec::new());
        for range in items(&v) {
            for (i, node) in items(range).iter().skip(2).enumerate() {
                let n = items(node);
                let (Some(host), Some(port)) = (n.first().and_then(text), n.get(1).and_then(int)) else {
                    continue;
                };
                let addr = (host, port as u16);
                if i == 0 && !masters.contains(&addr) {
                    masters.push(addr.clone());
                }
                if !all.contains(&addr) {
                    all.push(addr);
                }
            }
        }
        Ok((masters, all))
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands(&mut self, cmd: &[u8], offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn req_command(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        match self {
            Conn::Single(c) => c.req_command(cmd),
            Conn::Cluster(c) => c.req_command(cmd),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }

    fn check_connection(&mut self) -> bool {
        match self {
            Conn::Single(c) => c.check_connection(),
            Conn::Cluster(c) => c.check_connection(),
        }
    }

    fn is_open(&self) -> bool {
        match self {
            Conn::Single(c) => c.is_open(),
            Conn::Cluster(c) => c.is_open(),
        }
    }
}

/// The Redis Cluster slot of a key: CRC16 (XMODEM) of its hash tag (or of the whole key) mod
/// 16,384.
pub(crate) fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let len = key[open + 1..].iter().position(|&b| b == b'}')?;
        (len > 0).then(|| &key[open + 1..open + 1 + len])
    });
    crc16(tagged.unwrap_or(key)) % 16_384
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Whether an error means "try again later" (the connection, or the cluster, is not serving
/// this slot right now) rather than "Redis refuses this command".
pub(crate) fn is_transient(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind as S};
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound | ErrorKind::Server(S::MasterDown | S::ReadOnly | S::BusyLoading)
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` (Redis 7.0).
        assert_eq!(key_slot(b"foo"), 12_182);
        assert_eq!(key_slot(b"mr:{ws:a}:budget"), key_slot(b"ws:a"));
        assert_eq!(key_slot(b"{}x"), key_slot(b"{}x"));
        assert_eq!(crc16(b"123456789"), 0x31c3);
    }

    #[test]
    fn cluster_urls() {
        let Target::Cluster(s) = Target::parse("redis+cluster://u:p@h1:7000,h2:7001/").unwrap() else {
            panic!("a cluster")
        };
        assert_eq!(s, vec!["redis://u:p@h1:7000", "redis://u:p@h2:7001"]);
        assert!(matches!(Target::parse("redis://h:1").unwrap(), Target::Single(_)));
        assert_eq!(Target::parse("redis+cluster://").unwrap_err().field(), Some("url"));
    }
}
