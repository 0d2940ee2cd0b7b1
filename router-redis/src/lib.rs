//! # router-redis
//!
//! A [`StateStore`] over Redis: any number of router instances, in any process or binding,
//! act as one. The configuration (the policy document) is stored versioned and every change
//! reaches every instance in order; head status, heartbeats and cooldowns are mirrored; shared
//! counters are exact (strict, one round trip) or batched (flushed every few milliseconds).
//!
//! ```no_run
//! use std::sync::Arc;
//! use router_core::{Endpoint, Model, Router};
//! use router_redis::{RedisConfig, RedisStore};
//!
//! let store = Arc::new(RedisStore::connect(RedisConfig::new("redis://127.0.0.1:6379"))?);
//! let a = Router::builder().store(store.clone()).build()?;
//! a.register_model(Model::new("gpt-4", "openai"))?;
//! a.register_endpoint(Endpoint::new("gpt4-east", "gpt-4", "http://10.0.0.1/v1"))?;
//! // Any other instance connected to the same Redis (and prefix) now routes to gpt4-east.
//! assert!(store.health().connected);
//! # Ok::<(), router_core::Error>(())
//! ```
//!
//! The decision path never waits on Redis (except strict counters): Redis work runs on the
//! store's two threads. A writer thread sends, every `flush_interval`, one pipeline with the
//! queued publications and the batched counter deltas, and pings when idle; a subscriber thread
//! applies the changes other instances publish, in version order, and resyncs after a
//! reconnect, after a gap, and on a periodic anti-entropy poll. When Redis is lost the store
//! reports [`StoreStatus::Degraded`] to its routers (they emit `store_degraded`), keeps
//! deciding from local state, queues writes (bounded; overflow counted in [`Health`]) and
//! replays them exactly once when Redis is back. Key schema, consistency and failure behaviour:
//! `docs/redis.md`.
//!
//! Redis ≥ 7.0 (the scripts use `PEXPIREAT ... GT`).

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
#![deny(rustdoc::broken_intra_doc_links)]

mod config;
mod conn;
mod counters;
mod keys;
mod scripts;
mod shared;
mod sync;
mod writer;

pub use config::{FailMode, RedisConfig};

/// The README's example, compiled as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

use parking_lot::Mutex;
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use router_core::limits::{Gcra, GcraVerdict};
use router_core::{
    CounterCell, DecisionRecord, Error, Event, Result, Router, StateChange, StateSink, StateStore, StoreStatus,
    SubscriptionId, TryAdd,
};

use crate::conn::{is_transient, Conn, Target};
use crate::keys::HeadKey;
use crate::shared::{Shared, Write};

/// The Redis store. Create it once per process (or per router), share it as
/// `Arc<dyn StateStore>`; dropping the last handle stops its threads after a last flush.
pub struct RedisStore {
    sh: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.sh.fmt(f)
    }
}

/// What the store tells a readiness probe: more than a PING.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    /// Healthy, or degraded and why.
    pub status: StoreStatus,
    /// The writer's connection is up.
    pub connected: bool,
    /// The subscriber is subscribed and has resynced.
    pub subscribed: bool,
    /// The stored configuration was loaded (or seeded) into the attached routers (true while
    /// none is attached).
    pub config_loaded: bool,
    /// The configuration version this instance has applied.
    pub config_version: u64,
    /// When the version was last checked against Redis, Unix ms (0: never).
    pub last_sync_ms: u64,
    /// Writes waiting (queued, or sent and not yet acknowledged).
    pub queue_depth: usize,
    /// The bound of the queue.
    pub queue_capacity: usize,
    /// Batched counters holding deltas Redis has not acknowledged.
    pub unflushed_counters: usize,
    /// Writes and counter deltas dropped because the queue (or the counter map) was full.
    pub overflow: u64,
    /// Counter batches Redis acknowledged.
    pub flushes: u64,
    /// Of which, batches acknowledged after a failed send (replays).
    pub replayed_flushes: u64,
    /// With `replica_acks` on a cluster: counter groups acknowledged by a master that had
    /// fewer replicas connected than asked (e.g. a promoted replica whose old master is gone).
    pub unreplicated_flushes: u64,
    /// Writes Redis refused (and that were dropped: they would be refused again).
    pub write_errors: u64,
    /// How many times the store went degraded.
    pub degraded_count: u64,
}

impl Health {
    /// Ready to serve as part of the fleet: connected, subscribed, configuration loaded, and
    /// nothing dropped for lack of room in the queue.
    pub fn ready(&self) -> bool {
        self.connected
            && self.subscribed
            && self.config_loaded
            && self.queue_depth < self.queue_capacity
            && self.status == StoreStatus::Healthy
    }
}

/// Why a strict call did not get an answer from Redis.
enum Unanswered {
    /// Not sent: Redis was known to be down, or no connection could be made.
    NotSent(String),
    /// Sent, and the answer did not come (Redis may have applied it).
    MaybeSent(String),
}

const POOL_IDLE_MAX: usize = 16;

impl RedisStore {
    /// Connect to Redis and start the store's threads.
    ///
    /// Fails only on an invalid configuration or URL. An unreachable Redis is not an error: the
    /// store starts degraded, routers built on it decide from their own policy, and it connects
    /// (and loads or seeds the stored configuration) as soon as Redis answers.
    pub fn connect(config: RedisConfig) -> Result<RedisStore> {
        config.validate()?;
        let target = Target::parse(&config.url)?;
        let sh = Arc::new(Shared::new(config, target));
        // A first connection before returning, so that a store on a reachable Redis starts
        // healthy and its first router loads the stored configuration at once.
        if let Ok(mut c) = sh.connect(sh.cfg.timeout) {
            if sh.load_scripts(&mut c).is_ok() {
                sh.pool.lock().push(c);
                sh.writer_up.store(true, Ordering::SeqCst);
            }
        }
        let w = sh.clone();
        let s = sh.clone();
        let threads = vec![
            std::thread::Builder::new()
                .name("router-redis-writer".into())
                .spawn(move || w.run_writer())
                .map_err(|e| store_error(format!("cannot start the writer thread: {e}")))?,
            std::thread::Builder::new()
                .name("router-redis-subscriber".into())
                .spawn(move || s.run_subscriber())
                .map_err(|e| store_error(format!("cannot start the subscriber thread: {e}")))?,
        ];
        Ok(RedisStore {
            sh,
            threads: Mutex::new(threads),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &RedisConfig {
        &self.sh.cfg
    }

    /// What a readiness probe needs to know.
    pub fn health(&self) -> Health {
        let sh = &self.sh;
        Health {
            status: sh.status(),
            connected: sh.writer_up.load(Ordering::SeqCst),
            subscribed: sh.sub_up.load(Ordering::SeqCst),
            config_loaded: sh.loaded.load(Ordering::SeqCst) || sh.live_sinks().is_empty(),
            config_version: sh.applied.load(Ordering::SeqCst),
            last_sync_ms: sh.stats.last_sync_ms.load(Ordering::Relaxed),
            queue_depth: sh.queue.lock().len() + sh.unacked.load(Ordering::SeqCst),
            queue_capacity: sh.cfg.queue_capacity,
            unflushed_counters: sh.counters.lock().unflushed(),
            overflow: sh.overflow.load(Ordering::Relaxed),
            flushes: sh.stats.flushes.load(Ordering::Relaxed),
            replayed_flushes: sh.stats.replayed_flushes.load(Ordering::Relaxed),
            unreplicated_flushes: sh.stats.unreplicated_flushes.load(Ordering::Relaxed),
            write_errors: sh.stats.write_errors.load(Ordering::Relaxed),
            degraded_count: sh.stats.degraded_count.load(Ordering::Relaxed),
        }
    }

    /// Wait until every queued write and batched delta is acknowledged by Redis, at most
    /// `timeout`. Returns whether everything was.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let done = {
                let c = self.sh.counters.lock();
                c.unflushed() == 0 && !c.has_inflight()
            } && self.sh.queue.lock().is_empty()
                && self.sh.unacked.load(Ordering::SeqCst) == 0;
            if done {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.sh.kick();
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Publish a decision on the audit channel (`<prefix>audit:routing:logs`) as JSON. Never
    /// blocks: the record is queued and sent with the next flush (dropped and counted in
    /// [`Health::overflow`] when the queue is full). Delivery is at most once: pub/sub keeps
    /// nothing for subscribers that are not listening.
    pub fn audit(&self, record: &DecisionRecord) {
        if let Ok(json) = serde_json::to_string(record) {
            self.sh.enqueue(Write::Audit(json));
        }
    }

    /// Publish every decision `router` makes on the audit channel (see [`RedisStore::audit`]).
    /// Returns the event subscription (`router.events().unsubscribe(id)` stops it). The
    /// record is serialised on the deciding thread (about a microsecond).
    pub fn forward_decisions(self: &Arc<Self>, router: &Router) -> SubscriptionId {
        let store: Weak<RedisStore> = Arc::downgrade(self);
        router.events().on_event(true, move |e| {
            if let (Event::Decision(d), Some(s)) = (e, store.upgrade()) {
                s.audit(d);
            }
        })
    }

    /// Run a strict call on a pooled connection, within the timeout.
    fn strict<T>(&self, f: impl FnOnce(&mut Conn) -> redis::RedisResult<T>) -> Result<T, Unanswered> {
        let sh = &self.sh;
        if !sh.writer_up.load(Ordering::SeqCst) {
            return Err(Unanswered::NotSent(format!(
                "redis unreachable ({})",
                sh.last_error.lock()
            )));
        }
        let deadline = Instant::now() + sh.cfg.timeout;
        let pooled = sh.pool.lock().pop();
        let mut con = match pooled {
            Some(c) => c,
            // redis-rs applies the timeout to each read of its connection handshake (several
            // commands): a quarter of ours keeps the whole call within it.
            None => sh.connect(sh.cfg.timeout / 4).map_err(|e| {
                let why = format!("redis: {e}");
                sh.set_up(true, false, Some(why.clone()));
                Unanswered::NotSent(why)
            })?,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Unanswered::NotSent("redis: connecting took the whole timeout".into()));
        }
        let _ = con.set_timeout(left);
        match f(&mut con) {
            Ok(v) => {
                let mut pool = sh.pool.lock();
                if pool.len() < POOL_IDLE_MAX {
                    pool.push(con);
                }
                Ok(v)
            }
            Err(e) if is_transient(&e) => {
                // Until the writer gets an answer again, strict calls do not wait on Redis.
                let why = format!("redis: {e}");
                sh.set_up(true, false, Some(why.clone()));
                sh.kick();
                Err(Unanswered::MaybeSent(why))
            }
            Err(e) => Err(Unanswered::MaybeSent(format!("redis refused the call: {e}"))),
        }
    }

    fn fail(&self, why: Unanswered) -> Error {
        store_error(match why {
            Unanswered::NotSent(r) | Unanswered::MaybeSent(r) => r,
        })
    }
}

fn store_error(reason: String) -> Error {
    Error::Store { store: "redis", reason }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.sh.stop.store(true, Ordering::SeqCst);
        self.sh.kick();
        let me = std::thread::current().id();
        for t in self.threads.lock().drain(..) {
            // The last handle may be dropped by one of the store's own threads (a router it
            // was delivering to went away): that thread ends by itself.
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }
}

impl StateStore for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn publish(&self, origin: u64, change: &StateChange) -> Result<()> {
        let sh = &self.sh;
        // Other routers on this very store hear it at once, as with the in-memory store.
        sh.deliver(change, Some(origin));
        let json = serde_json::to_string(change).map_err(|e| store_error(format!("cannot serialise: {e}")))?;
        if change.is_config() {
            let base = sh.publish_base();
            let policy = if base >= 0 {
                sh.live_sinks()
                    .into_iter()
                    .find(|(o, _)| *o == origin)
                    .and_then(|(_, s)| serde_json::to_string(&s.policy()).ok())
            } else {
                None
            };
            sh.enqueue(Write::Config {
                op: rand::random(),
                base,
                origin,
                change: json,
                policy,
            });
            return Ok(());
        }
        let ttl = sh.cfg.head_ttl.as_millis() as u64;
        let (key, value, mode, ms) = match change {
            StateChange::HeadStatus(u) => (sh.keys.head(&u.head_id, HeadKey::Status), json.clone(), "px", ttl),
            StateChange::Heartbeat { endpoint_id, at_ms } => (
                sh.keys.head(endpoint_id, HeadKey::Heartbeat),
                at_ms.to_string(),
                "max_px",
                ttl,
            ),
            StateChange::EndpointCooldown { endpoint_id, until_ms } => (
                sh.keys.head(endpoint_id, HeadKey::Cooldown),
                until_ms.to_string(),
                "max_at",
                *until_ms,
            ),
            _ => unreachable!("configuration changes are handled above"),
        };
        let message = format!(
            r#"{{"v":0,"clean":1,"store":{},"origin":{origin},"change":{json}}}"#,
            sh.id
        );
        sh.enqueue(Write::Live {
            key,
            value,
            mode,
            ms,
            message,
        });
        Ok(())
    }

    fn attach(&self, origin: u64, sink: Weak<dyn StateSink>) {
        self.sh.attach_sink(origin, sink);
    }

    fn add(&self, key: &str, delta: i64, expires_at_ms: u64) -> Result<i64> {
        match self.sh.counters.lock().add(key, delta, expires_at_ms) {
            Some(v) => Ok(v),
            None => {
                self.sh.overflow.fetch_add(1, Ordering::Relaxed);
                Ok(delta)
            }
        }
    }

    fn get(&self, key: &str) -> Result<i64> {
        Ok(self.sh.counters.lock().get(key))
    }

    fn counter_cell(&self, key: &str, expires_at_ms: u64) -> Option<Arc<CounterCell>> {
        self.sh.counters.lock().cell(key, expires_at_ms)
    }

    fn try_add(&self, key: &str, delta: i64, limit: i64, expires_at_ms: u64) -> Result<TryAdd> {
        let sh = &self.sh;
        let redis_key = sh.keys.counter(key);
        let r = self.strict(|con| {
            let v = sh
                .scripts
                .try_add
                .key(&redis_key)
                .arg(delta)
                .arg(limit)
                .arg(expires_at_ms)
                .invoke::<(i64, i64)>(con)?;
            if sh.cfg.replica_acks > 0 && con.is_cluster() && v.0 == 1 {
                // Best effort: the answer stands either way (the add was made on the master).
                let mut wait = redis::cmd("WAIT");
                wait.arg(sh.cfg.replica_acks)
                    .arg((sh.cfg.timeout.as_millis() as u64 / 6).max(1));
                let _ = con.on_slot_of(&redis_key, &wait);
            }
            Ok(v)
        });
        match r {
            Ok((admitted, total)) => {
                sh.counters.lock().learn(key, total);
                Ok(TryAdd {
                    admitted: admitted == 1,
                    total,
                })
            }
            Err(why) if sh.cfg.fail_mode == FailMode::Closed => Err(self.fail(why)),
            Err(Unanswered::NotSent(_)) => {
                // Count locally; the delta is flushed when Redis is back.
                let mut c = sh.counters.lock();
                let view = c.view(key);
                if view + delta <= limit && c.add(key, delta, expires_at_ms).is_some() {
                    Ok(TryAdd {
                        admitted: true,
                        total: view + delta,
                    })
                } else {
                    Ok(TryAdd {
                        admitted: false,
                        total: view,
                    })
                }
            }
            Err(Unanswered::MaybeSent(_)) => {
                // Redis may have counted it: admit without counting it again.
                let view = sh.counters.lock().view(key);
                Ok(TryAdd {
                    admitted: view + delta <= limit,
                    total: view,
                })
            }
        }
    }

    fn gcra(&self, key: &str, limit: Gcra, n: u64, charge_only: bool, now_us: u64) -> Result<GcraVerdict> {
        let sh = &self.sh;
        let redis_key = sh.keys.counter(key);
        let r = self.strict(|con| {
            sh.scripts
                .gcra
                .key(&redis_key)
                .arg(limit.emission_interval_us)
                .arg(limit.burst)
                .arg(n)
                .arg(u8::from(charge_only))
                .invoke::<(i64, i64, i64)>(con)
        });
        match r {
            Ok((allowed, retry, remaining)) => Ok(GcraVerdict {
                allowed: allowed == 1,
                retry_after_us: if retry < 0 { u64::MAX } else { retry as u64 },
                remaining: remaining.max(0) as u64,
            }),
            Err(why) if sh.cfg.fail_mode == FailMode::Closed => Err(self.fail(why)),
            Err(_) => sh.local_limits.gcra(key, limit, n, charge_only, now_us),
        }
    }

    fn status(&self) -> StoreStatus {
        self.sh.status()
    }

    fn sweep(&self, now_ms: u64) {
        self.sh.counters.lock().sweep(now_ms);
        self.sh.local_limits.sweep(now_ms);
    }
}
