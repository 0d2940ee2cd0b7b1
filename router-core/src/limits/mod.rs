//! Rate limiting by GCRA (the generic cell rate algorithm of ATM networks, as governor and
//! redis-cell implement it).
//!
//! A limit of `count` per `period` with a burst of `burst` admits `burst` units at once and then
//! one unit every *emission interval* `T = period / count`. The whole state of one key is one
//! number, its *theoretical arrival time* (TAT): a request of `n` units at `now` is admitted when
//! `max(TAT, now) + n·T − now ≤ burst·T`, and then `TAT = max(TAT, now) + n·T`. A denied request
//! learns exactly when it would be admitted (`retry_after`): asking again at that instant
//! succeeds (governor's `accurate_not_until`). State that has fallen behind `now` is the same as
//! no state, so idle keys can be forgotten.
//!
//! The same arithmetic runs in the in-memory store (this module) and in the Redis store's Lua
//! script, in integer microseconds.

use serde::{Deserialize, Serialize};

use crate::budget::{Consistency, OnStoreError};
use crate::error::{Error, Result};

mod local;

pub(crate) use local::{GcraCell, LimiterKey, LimiterMaps, LimiterView, Limiters, Maps};

/// What a rate limit counts per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    /// Per workspace (the request's `workspace_id`).
    Workspace,
    /// Per API key (the request's `api_key`).
    ApiKey,
    /// Per user (the request's `user_id`).
    User,
    /// Per model (the chosen model).
    Model,
}

impl LimitScope {
    /// The scope's name.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::Workspace => "workspace",
            LimitScope::ApiKey => "api_key",
            LimitScope::User => "user",
            LimitScope::Model => "model",
        }
    }
}

/// A rate limit (`rate_limits` in the router settings): requests per second or minute and
/// tokens per minute, per workspace, API key, user or model, by GCRA.
///
/// Tokens are counted at route time from the request's estimate (prompt tokens plus the
/// default completion tokens) and corrected by the real count when it is reported (a request
/// that used more makes later ones wait).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// What it counts per.
    pub scope: LimitScope,
    /// Only this workspace / key / user / model; every one separately when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Requests per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rps: Option<u64>,
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Burst, in the unit of each limit (default: the limit itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// `batched` (default) keeps the limiter in this instance; `strict` checks it in the
    /// shared store on each request, so that every instance shares one limit.
    #[serde(default)]
    pub consistency: Consistency,
    /// For strict limits: what to do when the store cannot answer.
    #[serde(default)]
    pub on_store_error: OnStoreError,
}

impl RateLimit {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.rps.is_none() && self.rpm.is_none() && self.tpm.is_none() {
            return Err(Error::config("rps", "a rate limit needs at least one of rps, rpm, tpm"));
        }
        for (f, v) in [
            ("rps", self.rps),
            ("rpm", self.rpm),
            ("tpm", self.tpm),
            ("burst", self.burst),
        ] {
            if v == Some(0) {
                return Err(Error::config(f, "must be positive"));
            }
        }
        if let Some(id) = &self.id {
            crate::model::check_id(id, "id")?;
        }
        Ok(())
    }

    /// The limiters of this rule: (unit, GCRA).
    pub(crate) fn limiters(&self) -> impl Iterator<Item = (Unit, Gcra)> + '_ {
        [
            (Unit::Rps, self.rps, 1_000),
            (Unit::Rpm, self.rpm, 60_000),
            (Unit::Tpm, self.tpm, 60_000),
        ]
        .into_iter()
        .filter_map(move |(unit, n, period)| {
            let n = n?;
            Gcra::per_period(n, period, self.burst.unwrap_or(n))
                .ok()
                .map(|g| (unit, g))
        })
    }
}

/// What a limiter counts: requests per second or minute, or tokens per minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    Rps,
    Rpm,
    Tpm,
}

impl Unit {
    /// The unit's name, as it ends the limiter's key.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Unit::Rps => "rps",
            Unit::Rpm => "rpm",
            Unit::Tpm => "tpm",
        }
    }

    /// Whether it counts tokens (else requests).
    pub(crate) fn counts_tokens(self) -> bool {
        self == Unit::Tpm
    }
}

/// One GCRA limit: `burst` units at once, then one unit per `emission_interval_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Gcra {
    /// Microseconds between two units at the sustained rate (`period / count`).
    pub emission_interval_us: u64,
    /// Units admitted at once from idle (at least 1).
    pub burst: u64,
}

/// The answer of a GCRA check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcraVerdict {
    /// Whether the units were admitted (and counted).
    pub allowed: bool,
    /// When denied: how long until the same request would be admitted, µs (0 when allowed).
    pub retry_after_us: u64,
    /// Units that could still be admitted at once after this answer.
    pub remaining: u64,
}

impl Gcra {
    /// `count` units per `period_ms`, with a burst of `burst` (0 means `count`).
    pub fn per_period(count: u64, period_ms: u64, burst: u64) -> Result<Gcra> {
        if count == 0 {
            return Err(Error::config("count", "a rate limit must admit at least one unit"));
        }
        if period_ms == 0 {
            return Err(Error::config("period_ms", "the period must be positive"));
        }
        let emission_interval_us = (period_ms * 1000 / count).max(1);
        Ok(Gcra {
            emission_interval_us,
            burst: if burst == 0 { count } else { burst },
        })
    }

    /// The delay tolerance `burst · T`, µs.
    pub fn tolerance_us(&self) -> u64 {
        self.burst.saturating_mul(self.emission_interval_us)
    }

    /// Check `n` units at `now_us` against the state `tat_us` (0 for a new key), updating it
    /// when admitted. `n` larger than the burst is never admitted.
    pub fn check(&self, tat_us: &mut u64, now_us: u64, n: u64) -> GcraVerdict {
        let t = self.emission_interval_us;
        let tau = self.tolerance_us();
        match self.admit(*tat_us, now_us, n) {
            Ok(new_tat) => {
                *tat_us = new_tat;
                GcraVerdict {
                    allowed: true,
                    retry_after_us: 0,
                    remaining: (tau - (new_tat - now_us)) / t,
                }
            }
            Err(retry_after_us) => GcraVerdict {
                allowed: false,
                retry_after_us,
                remaining: tau.saturating_sub((*tat_us).max(now_us) - now_us) / t,
            },
        }
    }

    /// [`check`](Self::check) without the `remaining` count (no division): the new state when
    /// admitted, else the wait in µs (`u64::MAX` when `n` is larger than the burst).
    #[inline]
    pub(crate) fn admit(&self, tat_us: u64, now_us: u64, n: u64) -> std::result::Result<u64, u64> {
        let tau = self.tolerance_us();
        let new_tat = tat_us
            .max(now_us)
            .saturating_add(n.saturating_mul(self.emission_interval_us));
        let ahead = new_tat - now_us;
        if ahead <= tau {
            Ok(new_tat)
        } else if n > self.burst {
            Err(u64::MAX)
        } else {
            Err(ahead - tau)
        }
    }

    /// Count `n` units without checking (the real token count of a request admitted on an
    /// estimate): later requests wait for them.
    pub fn charge(&self, tat_us: &mut u64, now_us: u64, n: u64) {
        *tat_us = (*tat_us)
            .max(now_us)
            .saturating_add(n.saturating_mul(self.emission_interval_us));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1000;

    /// RELIABILITY 15: 100/min, burst 100.
    #[test]
    fn burst_then_rate() {
        let g = Gcra::per_period(100, 60_000, 100).unwrap();
        let mut tat = 0;
        for i in 0..100 {
            assert!(g.check(&mut tat, 0, 1).allowed, "unit {i} of the burst");
        }
        let v = g.check(&mut tat, 0, 1);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_us, 600 * MS);
        assert!(!g.check(&mut tat, 600 * MS - 1, 1).allowed);
        assert!(g.check(&mut tat, 600 * MS, 1).allowed);
        assert!(!g.check(&mut tat, 600 * MS, 1).allowed);
        // A minute idle refills the whole burst.
        let later = 600 * MS + 60_000 * MS;
        for _ in 0..100 {
            assert!(g.check(&mut tat, later, 1).allowed);
        }
        assert!(!g.check(&mut tat, later, 1).allowed);
    }

    #[test]
    fn oversized_requests_never_pass() {
        let g = Gcra::per_period(10, 1000, 5).unwrap();
        let mut tat = 0;
        let v = g.check(&mut tat, 0, 6);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_us, u64::MAX);
        assert_eq!(tat, 0);
        assert!(g.check(&mut tat, 0, 5).allowed);
    }

    #[test]
    fn rejects_zero_rates() {
        assert_eq!(Gcra::per_period(0, 1000, 0).unwrap_err().field(), Some("count"));
        assert_eq!(Gcra::per_period(1, 0, 0).unwrap_err().field(), Some("period_ms"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]
        /// No positive answer comes before the promised wait, and one comes exactly at it.
        #[test]
        fn retry_after_is_exact(
            count in 1u64..500, period_ms in 1u64..120_000, burst in 1u64..50,
            steps in proptest::collection::vec((0u64..5_000_000, 1u64..4), 1..60),
        ) {
            let g = Gcra::per_period(count, period_ms, burst).unwrap();
            let mut tat = 0u64;
            let mut now = 0u64;
            for (dt, n) in steps {
                now += dt;
                let before = tat;
                let v = g.check(&mut tat, now, n);
                if v.allowed {
                    continue;
                }
                prop_assert_eq!(tat, before, "a denial must not change the state");
                if v.retry_after_us == u64::MAX {
                    prop_assert!(n > g.burst);
                    continue;
                }
                let wait = v.retry_after_us;
                prop_assert!(wait > 0);
                let mut probe = tat;
                prop_assert!(!g.check(&mut probe, now + wait - 1, n).allowed);
                let mut probe = tat;
                prop_assert!(g.check(&mut probe, now + wait, n).allowed);
            }
        }
    }
}
