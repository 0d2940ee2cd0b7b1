//! The subscriber thread: applies other instances' changes in version order, catches up from
//! the log (or the snapshot) when it finds a gap, resyncs after every reconnect and polls the
//! version periodically (anti-entropy).

use redis::RedisResult;
use serde::Deserialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use router_core::{HeadStatusUpdate, Policy, StateChange, StateSink};

use crate::conn::Conn;
use crate::keys::HeadKey;
use crate::shared::{items, text, unix_ms, Shared};

/// How long the subscriber waits for a message before checking its timers.
const POLL: Duration = Duration::from_millis(50);
/// A local change made this soon after a change from elsewhere was applied is not assumed to
/// have been made on top of it (the snapshot it would write might be in the wrong order).
const FOREIGN_WINDOW_MS: u64 = 100;

/// A notification (and a log entry).
#[derive(Debug, Deserialize)]
pub(crate) struct Envelope {
    /// The configuration version (0: live state, not versioned).
    pub(crate) v: u64,
    #[serde(default)]
    pub(crate) clean: u8,
    pub(crate) store: u64,
    #[allow(dead_code)]
    pub(crate) origin: u64,
    pub(crate) change: StateChange,
}

impl Shared {
    /// The base version to publish a local configuration change with (-1: unknown).
    pub(crate) fn publish_base(&self) -> i64 {
        let foreign = self.foreign_at.load(Ordering::SeqCst);
        if foreign != 0 && self.tick_ms().saturating_sub(foreign) < FOREIGN_WINDOW_MS {
            return -1;
        }
        self.applied.load(Ordering::SeqCst) as i64
    }

    /// Apply one versioned entry to the local sinks. Own changes that were versioned right
    /// after what this instance had applied are already in place; others (including own
    /// changes that raced with another instance's) are applied, in version order.
    fn apply_entry(&self, store: u64, clean: bool, change: &StateChange) {
        if store == self.id && clean {
            return;
        }
        if store != self.id {
            self.foreign_at.store(self.tick_ms(), Ordering::SeqCst);
        }
        self.deliver(change, None);
    }

    /// Handle one notification.
    fn on_message(&self, payload: &[u8], con: &mut Conn) -> RedisResult<()> {
        let env: Envelope = match serde_json::from_slice(payload) {
            Ok(e) => e,
            Err(_) => {
                self.stats.bad_messages.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        };
        if env.v == 0 {
            if env.store != self.id {
                self.deliver(&env.change, None);
            }
            return Ok(());
        }
        let _g = self.apply_lock.lock();
        if !self.loaded.load(Ordering::SeqCst) {
            return self.catch_up(con);
        }
        let applied = self.applied.load(Ordering::SeqCst);
        if env.v <= applied {
            return Ok(());
        }
        if env.v == applied + 1 {
            self.apply_entry(env.store, env.clean == 1, &env.change);
            self.applied.store(env.v, Ordering::SeqCst);
            return Ok(());
        }
        // A gap: notifications were lost.
        self.catch_up(con)
    }

    /// Bring the local configuration to Redis' version: from the log when it holds every
    /// missing entry, else from the snapshot and the log after it. Seeds Redis with the local
    /// configuration when Redis holds an older one (empty, or restarted without persistence).
    /// The caller holds `apply_lock`.
    pub(crate) fn catch_up(&self, con: &mut Conn) -> RedisResult<()> {
        let sinks = self.live_sinks();
        let Some((_, first)) = sinks.first() else {
            return Ok(());
        };
        self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
        let k = &self.keys;
        let head: Option<u64> = redis::cmd("GET").arg(&k.cfg_version).query(con)?;
        let head = head.unwrap_or(0);
        let loaded = self.loaded.load(Ordering::SeqCst);
        let applied = if loaded { self.applied.load(Ordering::SeqCst) } else { 0 };
        if head < applied || head == 0 {
            // Redis knows less than we do: store ours.
            let v = applied.max(1);
            let policy = serde_json::to_string(&first.policy()).unwrap_or_default();
            if self.write_snapshot(con, v, &policy, "seed")? {
                self.applied.store(v, Ordering::SeqCst);
                self.loaded.store(true, Ordering::SeqCst);
                return Ok(());
            }
            // Someone else seeded first: load theirs.
            return self.catch_up(con);
        }
        if loaded && head == applied {
            return Ok(());
        }
        if loaded {
            let entries = self.read_log(con, applied + 1)?;
            let contiguous = entries.iter().enumerate().all(|(i, e)| e.v == applied + 1 + i as u64);
            if contiguous && entries.last().is_some_and(|e| e.v >= head) {
                for e in entries {
                    self.apply_entry(e.store, e.clean == 1, &e.change);
                    self.applied.store(e.v, Ordering::SeqCst);
                }
                return Ok(());
            }
        }
        // The snapshot, then the log after it.
        let (sv, policy): (Option<u64>, Option<String>) = redis::cmd("HMGET")
            .arg(&k.cfg_snapshot)
            .arg("version")
            .arg("policy")
            .query(con)?;
        let mut at = 0;
        if let (Some(sv), Some(policy)) = (sv, policy) {
            if let Ok(p) = serde_json::from_str::<Policy>(&policy) {
                self.deliver(&StateChange::PolicyReplaced(Box::new(p)), None);
                at = sv;
            }
        }
        for e in self.read_log(con, at + 1)? {
            // Without a snapshot, every entry is applied as it comes.
            self.deliver(&e.change, None);
            at = e.v;
        }
        self.applied.store(at.max(head), Ordering::SeqCst);
        self.loaded.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Run the snapshot script (`seed` or `compact`); whether it wrote.
    fn write_snapshot(&self, con: &mut Conn, v: u64, policy: &str, mode: &str) -> RedisResult<bool> {
        let k = &self.keys;
        let wrote: i64 = self
            .scripts
            .cfg_snapshot
            .key(&k.cfg_version)
            .key(&k.cfg_snapshot)
            .key(&k.cfg_log)
            .arg(v)
            .arg(policy)
            .arg(mode)
            .arg(self.cfg.log_retention.max(1))
            .invoke(con)?;
        Ok(wrote == 1)
    }

    /// Log entries from version `from` on.
    fn read_log(&self, con: &mut Conn, from: u64) -> RedisResult<Vec<Envelope>> {
        let reply: redis::Value = redis::cmd("XRANGE")
            .arg(&self.keys.cfg_log)
            .arg(format!("{from}-0"))
            .arg("+")
            .query(con)?;
        let mut out = Vec::new();
        for entry in items(&reply) {
            let parts = items(entry);
            let (Some(id), Some(fields)) = (parts.first().and_then(text), parts.get(1)) else {
                continue;
            };
            let v: u64 = id.split('-').next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let fields = items(fields);
            let field = |name: &str| {
                fields
                    .chunks(2)
                    .find(|kv| text(&kv[0]).as_deref() == Some(name))
                    .and_then(|kv| kv.get(1))
                    .and_then(text)
            };
            let (Some(store), Some(origin), Some(change)) = (field("store"), field("origin"), field("change")) else {
                continue;
            };
            let Ok(change) = serde_json::from_str::<StateChange>(&change) else {
                self.stats.bad_messages.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            out.push(Envelope {
                v,
                clean: field("clean").and_then(|c| c.parse().ok()).unwrap_or(0),
                store: store.parse().unwrap_or(0),
                origin: origin.parse().unwrap_or(0),
                change,
            });
        }
        Ok(out)
    }

    /// Every head's stored status, heartbeat and cooldown, as changes to apply.
    pub(crate) fn read_heads(&self, con: &mut Conn) -> RedisResult<Vec<StateChange>> {
        let pattern = self.keys.head_pattern();
        let mut found = Vec::new();
        // On a cluster, every master holds its own slots' keys: SCAN each.
        let (masters, _) = con.topology()?;
        let nodes: Vec<Option<(String, u16)>> = if masters.is_empty() {
            vec![None]
        } else {
            masters.into_iter().map(Some).collect()
        };
        for node in nodes {
            self.scan_heads(con, node.as_ref(), &pattern, &mut found)?;
        }
        // Status before heartbeats, so that a revived head is not marked stale again.
        found.sort_by_key(|c| !matches!(c, StateChange::HeadStatus(_)));
        Ok(found)
    }

    /// The head keys of one node (`None`: the only one).
    fn scan_heads(
        &self,
        con: &mut Conn,
        node: Option<&(String, u16)>,
        pattern: &str,
        found: &mut Vec<StateChange>,
    ) -> RedisResult<()> {
        let mut cursor: u64 = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000);
            let reply = match node {
                Some((host, port)) => con.on_node(host, *port, &scan)?,
                None => scan.query(con)?,
            };
            let (next, keys): (u64, Vec<String>) = redis::FromRedisValue::from_redis_value(reply)?;
            if !keys.is_empty() {
                // One GET per head tag on a cluster would do as well: redis-rs splits an MGET
                // by slot.
                let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(con)?;
                for (key, value) in keys.iter().zip(values) {
                    let (Some((id, what)), Some(value)) = (self.keys.parse_head(key), value) else {
                        continue;
                    };
                    let change = match what {
                        HeadKey::Status => match serde_json::from_str::<HeadStatusUpdate>(&value) {
                            Ok(u) => StateChange::HeadStatus(u),
                            Err(_) => continue,
                        },
                        HeadKey::Heartbeat => StateChange::Heartbeat {
                            endpoint_id: id.to_owned(),
                            at_ms: value.parse().unwrap_or(0),
                        },
                        HeadKey::Cooldown => StateChange::EndpointCooldown {
                            endpoint_id: id.to_owned(),
                            until_ms: value.parse().unwrap_or(0),
                        },
                    };
                    found.push(change);
                }
            }
            cursor = next;
            if cursor == 0 {
                return Ok(());
            }
        }
    }

    /// Full resync: configuration, then live state, into every local sink.
    fn resync(&self, con: &mut Conn) -> RedisResult<()> {
        {
            let _g = self.apply_lock.lock();
            self.catch_up(con)?;
        }
        for c in self.read_heads(con)? {
            self.deliver(&c, None);
        }
        self.stats.last_sync_ms.store(unix_ms(), Ordering::Relaxed);
        Ok(())
    }

    /// The periodic check: the stored version against ours; a stale snapshot is rewritten by
    /// an instance that is up to date.
    fn anti_entropy(&self, con: &mut Conn) -> RedisResult<()> {
        let k = &self.keys;
        let (head, sv): (Option<u64>, Option<u64>) = redis::pipe()
            .cmd("GET")
            .arg(&k.cfg_version)
            .cmd("HGET")
            .arg(&k.cfg_snapshot)
            .arg("version")
            .query(con)?;
        let (head, sv) = (head.unwrap_or(0), sv.unwrap_or(0));
        let _g = self.apply_lock.lock();
        let applied = self.applied.load(Ordering::SeqCst);
        if !self.loaded.load(Ordering::SeqCst) || head != applied {
            self.catch_up(con)?;
        } else if sv < head {
            if let Some((_, s)) = self.live_sinks().first() {
                let policy = serde_json::to_string(&s.policy()).unwrap_or_default();
                self.write_snapshot(con, head, &policy, "compact")?;
            }
        }
        self.stats.last_sync_ms.store(unix_ms(), Ordering::Relaxed);
        Ok(())
    }

    /// Load the stored configuration and live state into a sink that just attached: from
    /// Redis when it is the first, else from a sink already attached.
    pub(crate) fn attach_sink(&self, origin: u64, sink: std::sync::Weak<dyn StateSink>) {
        let _g = self.apply_lock.lock();
        let others = self.live_sinks();
        self.sinks.lock().push((origin, sink.clone()));
        let Some(new) = sink.upgrade() else { return };
        if let (Some((_, other)), true) = (others.first(), self.loaded.load(Ordering::SeqCst)) {
            new.apply(&StateChange::PolicyReplaced(Box::new(other.policy())));
        } else {
            self.loaded.store(false, Ordering::SeqCst);
            let Ok(mut con) = self.connect(self.cfg.timeout) else {
                // The subscriber loads it when Redis is back.
                return;
            };
            if self.catch_up(&mut con).is_err() {
                return;
            }
        }
        if let Ok(mut con) = self.connect(self.cfg.timeout) {
            if let Ok(heads) = self.read_heads(&mut con) {
                for c in heads {
                    new.apply(&c);
                }
            }
        }
    }

    /// Remember every node of the cluster (to subscribe on another one when one fails).
    fn learn_nodes(&self, con: &mut Conn) {
        if let Ok((_, all)) = con.topology() {
            let mut nodes = self.nodes.lock();
            for (host, port) in all {
                let url = format!("redis://{host}:{port}");
                if !nodes.contains(&url) {
                    nodes.push(url);
                }
            }
        }
    }

    /// The subscriber thread's loop.
    pub(crate) fn run_subscriber(self: Arc<Self>) {
        let timeout = self.cfg.timeout;
        let mut sub_node = rand::random::<u32>() as usize;
        while !self.stopping() {
            // On a cluster, subscribe on one node (a PUBLISH reaches every node); after a
            // failure, on the next one.
            let nodes = self.nodes.lock().clone();
            let conns = self.connect(timeout).and_then(|mut con| {
                self.learn_nodes(&mut con);
                Ok((self.target.connect_pubsub(timeout, &nodes, sub_node)?, con))
            });
            let (mut sub, mut con) = match conns {
                Ok(c) => c,
                Err(e) => {
                    sub_node = sub_node.wrapping_add(1);
                    self.set_up(false, false, Some(format!("redis: {e}")));
                    std::thread::sleep(POLL);
                    continue;
                }
            };
            let mut ps = sub.as_pubsub();
            let ready = ps
                .subscribe(&self.keys.changes)
                .and_then(|_| ps.set_read_timeout(Some(POLL)))
                .and_then(|_| self.resync(&mut con));
            if let Err(e) = ready {
                sub_node = sub_node.wrapping_add(1);
                self.set_up(false, false, Some(format!("redis: {e}")));
                std::thread::sleep(POLL);
                continue;
            }
            self.set_up(false, true, None);
            let mut next_check = Instant::now() + self.cfg.anti_entropy_interval;
            while !self.stopping() {
                let r = match ps.get_message() {
                    Ok(msg) => self.on_message(msg.get_payload_bytes(), &mut con),
                    Err(e) if e.is_timeout() => Ok(()),
                    Err(e) => Err(e),
                };
                let r = r.and_then(|_| {
                    if Instant::now() >= next_check {
                        next_check = Instant::now() + self.cfg.anti_entropy_interval;
                        self.anti_entropy(&mut con)
                    } else {
                        Ok(())
                    }
                });
                if let Err(e) = r {
                    sub_node = sub_node.wrapping_add(1);
                    self.set_up(false, false, Some(format!("redis: {e}")));
                    break;
                }
            }
        }
    }
}
