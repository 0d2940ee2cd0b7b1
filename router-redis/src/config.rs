//! [`RedisConfig`]: where Redis is and how the store behaves when it is slow or gone.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use router_core::{Error, Result};

/// What a strict counter ([`StateStore::try_add`](router_core::StateStore::try_add),
/// [`StateStore::gcra`](router_core::StateStore::gcra)) answers while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Decide from local state: `try_add` checks this instance's view of the counter and, when
    /// Redis was known to be down (the call was never sent), counts the delta locally so that
    /// it is flushed on reconnect; `gcra` uses a limiter local to this instance. Requests keep
    /// flowing; the shared limit may be overshot by what the other instances admit meanwhile.
    #[default]
    Open,
    /// Refuse: the call returns [`Error::Store`]. No request passes unchecked.
    Closed,
}

/// How to reach Redis and how the store behaves.
///
/// Every field has a default ([`RedisConfig::new`]); [`RedisConfig::validate`] names the field
/// that is wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisConfig {
    /// One Redis: `redis://[user:password@]host:port[/db]` (or `rediss://`, `redis+unix:///path`).
    /// A Redis Cluster: `redis+cluster://[user:password@]host:port[,host:port...]` (or
    /// `rediss+cluster://`), some of its nodes as seeds.
    pub url: String,
    /// Put in front of every key and channel (default `mr:`). Must not contain `{` or `}`:
    /// hash tags are the store's to choose.
    pub prefix: String,
    /// The longest any Redis call may take, connecting included (default 100 ms). No caller
    /// waits longer than this on the store.
    #[serde(with = "millis")]
    pub timeout: Duration,
    /// How often batched counter deltas and queued publications are flushed (default 5 ms).
    #[serde(with = "millis")]
    pub flush_interval: Duration,
    /// How many writes (publications, audit records) may wait while Redis is unreachable, and
    /// how many distinct batched counters may hold unflushed deltas (default 10,000 each).
    /// Beyond that, writes are dropped and counted ([`Health::overflow`](crate::Health)).
    pub queue_capacity: usize,
    /// Strict counters while Redis is unreachable (default fail open).
    pub fail_mode: FailMode,
    /// How often every instance checks the stored configuration version against its own, to
    /// catch changes whose notification it missed (default 1 s).
    #[serde(with = "millis")]
    pub anti_entropy_interval: Duration,
    /// How long head status and heartbeat keys live without a refresh (default 60 s).
    #[serde(with = "millis")]
    pub head_ttl: Duration,
    /// How many configuration log entries are kept before the stored snapshot (default 1,000):
    /// an instance further behind than this reloads the snapshot.
    pub log_retention: u64,
    /// How long a flush id (and a configuration change's id) is remembered, so that a write
    /// retried after a timeout is not applied twice (default 1 h).
    #[serde(with = "millis")]
    pub idempotency_ttl: Duration,
    /// On a Redis Cluster: how many replicas of a master must have a batched flush (and a
    /// strict `try_add`) before it counts as written (`WAIT`; default 0). With 1, a master
    /// killed before replicating loses nothing: the flush is replayed, exactly once, on the
    /// promoted replica. Costs one more round trip per flush and per strict `try_add`.
    pub replica_acks: u32,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "mr:".into(),
            timeout: Duration::from_millis(100),
            flush_interval: Duration::from_millis(5),
            queue_capacity: 10_000,
            fail_mode: FailMode::Open,
            anti_entropy_interval: Duration::from_secs(1),
            head_ttl: Duration::from_secs(60),
            log_retention: 1_000,
            idempotency_ttl: Duration::from_secs(3_600),
            replica_acks: 0,
        }
    }
}

impl RedisConfig {
    /// The defaults, with this URL.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            ..Default::default()
        }
    }

    /// Use this key prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Use this per-call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Answer strict counters this way while Redis is unreachable.
    pub fn with_fail_mode(mut self, mode: FailMode) -> Self {
        self.fail_mode = mode;
        self
    }

    /// Wait for this many replicas on a cluster (see [`RedisConfig::replica_acks`]).
    pub fn with_replica_acks(mut self, n: u32) -> Self {
        self.replica_acks = n;
        self
    }

    /// Check every field; the error names the first wrong one.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, reason: &str| {
            Err(Error::InvalidConfig {
                field: field.into(),
                reason: reason.into(),
            })
        };
        if self.prefix.contains(['{', '}']) {
            return bad(
                "prefix",
                "must not contain `{` or `}` (the store chooses the hash tags)",
            );
        }
        if self.timeout.is_zero() {
            return bad("timeout", "must be positive");
        }
        if self.flush_interval.is_zero() || self.flush_interval > Duration::from_secs(1) {
            return bad("flush_interval", "must be between 1 ms and 1 s");
        }
        if self.queue_capacity == 0 {
            return bad("queue_capacity", "must be at least 1");
        }
        if self.anti_entropy_interval.is_zero() {
            return bad("anti_entropy_interval", "must be positive");
        }
        if self.head_ttl < Duration::from_millis(1) {
            return bad("head_ttl", "must be at least 1 ms");
        }
        if self.idempotency_ttl < Duration::from_secs(1) {
            return bad("idempotency_ttl", "must be at least 1 s");
        }
        Ok(())
    }
}

/// Durations as integer milliseconds in JSON.
mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        assert!(RedisConfig::default().validate().is_ok());
        let e = RedisConfig::default().with_prefix("{x}").validate().unwrap_err();
        assert_eq!(e.field(), Some("prefix"));
        let e = RedisConfig::default()
            .with_timeout(Duration::ZERO)
            .validate()
            .unwrap_err();
        assert_eq!(e.field(), Some("timeout"));
    }

    #[test]
    fn json_round_trip_in_millis() {
        let c = RedisConfig::new("redis://h:1").with_timeout(Duration::from_millis(70));
        let j = serde_json::to_value(&c).unwrap();
        assert_eq!(j["timeout"], 70);
        assert_eq!(j["fail_mode"], "open");
        let back: RedisConfig = serde_json::from_value(j).unwrap();
        assert_eq!(back, c);
    }
}
