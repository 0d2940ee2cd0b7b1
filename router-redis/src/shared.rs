//! What the store's threads and its callers share: configuration, queues, status, sinks.

use parking_lot::{Condvar, Mutex};
use redis::{RedisResult, Value};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use router_core::{InMemoryStore, StateChange, StateSink, StoreStatus};

use crate::config::RedisConfig;
use crate::conn::{Conn, Target};
use crate::counters::Counters;
use crate::keys::Keys;
use crate::scripts::Scripts;

/// A write waiting for the writer thread. Every one is idempotent, so that it can be resent
/// after a timeout or a NOSCRIPT.
#[derive(Debug, Clone)]
pub(crate) enum Write {
    /// A configuration change (versioned by the `cfg_publish` script).
    Config {
        op: u64,
        /// The configuration version this instance had applied when it made the change; -1
        /// when another instance's change may have been applied around it.
        base: i64,
        origin: u64,
        change: String,
        /// The whole policy after the change, for the snapshot.
        policy: Option<String>,
    },
    /// Head status, heartbeat or cooldown: a key and a notification.
    Live {
        key: String,
        value: String,
        mode: &'static str,
        ms: u64,
        message: String,
    },
    /// An audit record.
    Audit(String),
}

/// Counters of what the store did, for [`crate::Health`].
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) flushes: AtomicU64,
    pub(crate) replayed_flushes: AtomicU64,
    pub(crate) unreplicated_flushes: AtomicU64,
    pub(crate) write_errors: AtomicU64,
    pub(crate) degraded_count: AtomicU64,
    pub(crate) last_sync_ms: AtomicU64,
    pub(crate) bad_messages: AtomicU64,
    pub(crate) resyncs: AtomicU64,
}

pub(crate) struct Shared {
    pub(crate) cfg: RedisConfig,
    pub(crate) target: Target,
    /// Cluster nodes to subscribe on (`redis://` URLs): the seeds, then what `CLUSTER SLOTS`
    /// lists.
    pub(crate) nodes: Mutex<Vec<String>>,
    /// This store's id (random): tells its own notifications from others'.
    pub(crate) id: u64,
    pub(crate) keys: Keys,
    pub(crate) scripts: Scripts,
    pub(crate) sinks: Mutex<Vec<(u64, Weak<dyn StateSink>)>>,
    pub(crate) queue: Mutex<VecDeque<Write>>,
    /// Writes taken from the queue and not yet acknowledged.
    pub(crate) unacked: AtomicUsize,
    pub(crate) counters: Mutex<Counters>,
    pub(crate) overflow: AtomicU64,
    pub(crate) writer_up: AtomicBool,
    pub(crate) sub_up: AtomicBool,
    pub(crate) healthy: AtomicBool,
    pub(crate) last_error: Mutex<String>,
    /// Serialises status transitions and their delivery to the sinks (in order).
    status_lock: Mutex<Option<bool>>,
    /// Serialises applying configuration changes and moving `applied`.
    pub(crate) apply_lock: Mutex<()>,
    /// The configuration version every attached sink reflects.
    pub(crate) applied: AtomicU64,
    /// Whether the stored configuration was loaded into the attached sinks.
    pub(crate) loaded: AtomicBool,
    /// When (ms since `started`, +1) a change from another instance was last applied.
    pub(crate) foreign_at: AtomicU64,
    pub(crate) started: Instant,
    pub(crate) stop: AtomicBool,
    wake: (Mutex<bool>, Condvar),
    pub(crate) pool: Mutex<Vec<Conn>>,
    /// The fail-open limiter.
    pub(crate) local_limits: InMemoryStore,
    pub(crate) stats: Stats,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.cfg.prefix)
            .field("healthy", &self.healthy.load(Ordering::Relaxed))
            .field("applied", &self.applied.load(Ordering::Relaxed))
            .finish()
    }
}

/// Unix time, ms.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Shared {
    pub(crate) fn new(cfg: RedisConfig, target: Target) -> Shared {
        let keys = Keys::new(&cfg.prefix);
        let cap = cfg.queue_capacity;
        Shared {
            cfg,
            nodes: Mutex::new(target.seeds()),
            target,
            id: rand::random::<u64>() >> 11,
            keys,
            scripts: Scripts::new(),
            sinks: Mutex::new(Vec::new()),
            queue: Mutex::new(VecDeque::new()),
            unacked: AtomicUsize::new(0),
            counters: Mutex::new(Counters::new(cap)),
            overflow: AtomicU64::new(0),
            writer_up: AtomicBool::new(false),
            sub_up: AtomicBool::new(false),
            healthy: AtomicBool::new(false),
            last_error: Mutex::new("not connected yet".into()),
            status_lock: Mutex::new(None),
            apply_lock: Mutex::new(()),
            applied: AtomicU64::new(0),
            loaded: AtomicBool::new(false),
            foreign_at: AtomicU64::new(0),
            started: Instant::now(),
            stop: AtomicBool::new(false),
            wake: (Mutex::new(false), Condvar::new()),
            pool: Mutex::new(Vec::new()),
            local_limits: InMemoryStore::new(),
            stats: Stats::default(),
        }
    }

    /// A connection whose every read and write times out after `timeout`.
    pub(crate) fn connect(&self, timeout: Duration) -> RedisResult<Conn> {
        self.target.connect(timeout)
    }

    /// The sinks still alive (the lock is not held while calling them).
    pub(crate) fn live_sinks(&self) -> Vec<(u64, Arc<dyn StateSink>)> {
        let mut sinks = self.sinks.lock();
        sinks.retain(|(_, s)| s.strong_count() > 0);
        sinks.iter().filter_map(|(o, s)| Some((*o, s.upgrade()?))).collect()
    }

    /// Apply a change to every local sink but `except`.
    pub(crate) fn deliver(&self, change: &StateChange, except: Option<u64>) {
        for (o, s) in self.live_sinks() {
            if Some(o) != except {
                s.apply(change);
            }
        }
    }

    /// Queue a write; a full queue drops it and counts the drop.
    pub(crate) fn enqueue(&self, w: Write) {
        let mut q = self.queue.lock();
        if q.len() >= self.cfg.queue_capacity {
            drop(q);
            self.overflow.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.push_back(w);
    }

    /// Wake the writer thread now (a flush was asked for, or the store is stopping).
    pub(crate) fn kick(&self) {
        let (m, cv) = &self.wake;
        *m.lock() = true;
        cv.notify_all();
    }

    /// Sleep up to `d`, or until kicked.
    pub(crate) fn nap(&self, d: Duration) {
        let (m, cv) = &self.wake;
        let mut kicked = m.lock();
        if !*kicked {
            cv.wait_for(&mut kicked, d);
        }
        *kicked = false;
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Record that the writer's (`writer`) or the subscriber's connection is up or down, and
    /// tell the sinks when the store's status changes.
    pub(crate) fn set_up(&self, writer: bool, up: bool, error: Option<String>) {
        let flag = if writer { &self.writer_up } else { &self.sub_up };
        let failed = error.is_some();
        if let Some(e) = error {
            *self.last_error.lock() = e;
        }
        flag.store(up, Ordering::SeqCst);
        self.refresh_status(failed);
    }

    fn refresh_status(&self, failed: bool) {
        let mut reported = self.status_lock.lock();
        let healthy = self.writer_up.load(Ordering::SeqCst) && self.sub_up.load(Ordering::SeqCst);
        self.healthy.store(healthy, Ordering::SeqCst);
        match *reported {
            Some(h) if h == healthy => return,
            // Starting up is not news: the first report is a failure, or nothing.
            None if healthy => {
                *reported = Some(true);
                return;
            }
            None if !failed => return,
            _ => {}
        }
        *reported = Some(healthy);
        let status = self.status();
        if !healthy {
            self.stats.degraded_count.fetch_add(1, Ordering::Relaxed);
        }
        // Delivered while holding the lock, so that transitions arrive in order.
        for (_, s) in self.live_sinks() {
            s.store_status(&status);
        }
    }

    pub(crate) fn status(&self) -> StoreStatus {
        if self.healthy.load(Ordering::SeqCst) {
            StoreStatus::Healthy
        } else {
            StoreStatus::Degraded {
                reason: self.last_error.lock().clone(),
            }
        }
    }

    /// Milliseconds since the store started, +1 (0 means never).
    pub(crate) fn tick_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }
}

/// A Redis reply as text.
pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// A Redis reply as an integer (integer replies and numeric strings).
pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

/// A Redis array reply's items.
pub(crate) fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}
