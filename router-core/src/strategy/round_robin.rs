//! Round robin: each eligible endpoint in turn.
//!
//! The classic cyclic scheduler, as in sgl-router's `policies/round_robin.rs`: one atomic
//! cursor per candidate pool, advanced by `fetch_add`, so the pick is O(1) and lock-free. Each
//! pool's cursor starts at a random offset, so router instances are not in lockstep. Ineligible
//! members are skipped by walking on from the cursor; with every member eligible, n picks visit
//! each member exactly once. A thread claims eight positions per `fetch_add` (`Cursor::next`),
//! so threads sharing a pool do not write its cursor on every pick; every position is still
//! handed out once.

use rand::RngCore;
use std::sync::atomic::Ordering;

use super::{Candidates, Detail, Pick, Strategy};

/// Round robin over eligible endpoints.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundRobin;

impl Strategy for RoundRobin {
    fn pick(&self, c: &Candidates<'_>, _rng: &mut dyn RngCore) -> Option<Pick> {
        let n = c.len();
        if n == 0 {
            return None;
        }
        let slot = if c.dry_run {
            c.pool.rr_cursor.load(Ordering::Relaxed)
        } else {
            c.pool.rr_cursor.next()
        };
        let i = c.first_eligible_from(slot % n)?;
        Some(Pick::new(
            i,
            c.next_eligible_after(i),
            Detail::Slot { slot: slot as u64 },
        ))
    }
}
