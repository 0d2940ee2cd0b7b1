//! Batched counters: local deltas, flushed by the writer thread in batches that carry an id.
//!
//! A key's view is `global + inflight + pending`: `global` is the total Redis returned at the
//! last flush that included the key, `inflight` the deltas of the batch being written (or
//! retried), `pending` what was added since. Each key's view and pending deltas live in a
//! tracking [`CounterCell`], which the router may hold and add to without the lock
//! ([`router_core::StateStore::counter_cell`]); the lock guards the rest. A batch that failed is retried as it is, with the
//! same id and the same deltas (Redis may have applied it: the flush script ignores an id it has
//! seen), and no new batch is cut until it is acknowledged. Memory is bounded by the number of
//! distinct keys, not by the number of additions.

use std::sync::Arc;

use router_core::CounterCell;
use rustc_hash::FxHashMap;

use crate::keys::{hash_tag, Keys};

#[derive(Debug)]
struct Entry {
    /// The view (`global + inflight + pending`) and the pending deltas; read since the last
    /// flush (the next flush then fetches its total).
    cell: Arc<CounterCell>,
    global: i64,
    inflight: i64,
    expires_at_ms: u64,
    /// Used since the last sweep (through the store; a cell held elsewhere counts as used).
    used: bool,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            cell: Arc::new(CounterCell::tracking(0)),
            global: 0,
            inflight: 0,
            expires_at_ms: 0,
            used: false,
        }
    }
}

/// The counters of one hash tag in one batch.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub(crate) flush_key: String,
    /// The router's keys.
    pub(crate) keys: Vec<String>,
    pub(crate) redis_keys: Vec<String>,
    pub(crate) deltas: Vec<i64>,
    pub(crate) expiries: Vec<u64>,
}

/// One flush: an id and the deltas it carries.
#[derive(Debug, Clone)]
pub(crate) struct Batch {
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) id: u64,
    pub(crate) groups: Vec<Group>,
    /// Sends that failed so far (a retry is a replay).
    pub(crate) attempts: u32,
}

#[derive(Debug)]
pub(crate) struct Counters {
    map: FxHashMap<String, Entry>,
    inflight: Option<Batch>,
    cap: usize,
}

impl Counters {
    pub(crate) fn new(cap: usize) -> Counters {
        Counters {
            map: FxHashMap::default(),
            inflight: None,
            cap,
        }
    }

    fn entry(&mut self, key: &str) -> Option<&mut Entry> {
        if !self.map.contains_key(key) {
            if self.map.len() >= self.cap {
                return None;
            }
            self.map.insert(key.to_owned(), Entry::default());
        }
        self.map.get_mut(key)
    }

    /// Add a delta; `None` when the key is new and the map is full (the delta is dropped).
    pub(crate) fn add(&mut self, key: &str, delta: i64, expires_at_ms: u64) -> Option<i64> {
        let e = self.entry(key)?;
        e.expires_at_ms = e.expires_at_ms.max(expires_at_ms);
        e.used = true;
        Some(e.cell.add(delta))
    }

    /// The key's cell (`None` when the key is new and the map is full).
    pub(crate) fn cell(&mut self, key: &str, expires_at_ms: u64) -> Option<Arc<CounterCell>> {
        let e = self.entry(key)?;
        e.expires_at_ms = e.expires_at_ms.max(expires_at_ms);
        e.used = true;
        Some(Arc::clone(&e.cell))
    }

    /// This instance's view; marks the key for a refresh at the next flush.
    pub(crate) fn get(&mut self, key: &str) -> i64 {
        match self.entry(key) {
            Some(e) => {
                e.used = true;
                e.cell.get()
            }
            None => 0,
        }
    }

    /// The view without marking anything.
    pub(crate) fn view(&self, key: &str) -> i64 {
        self.map.get(key).map_or(0, |e| e.cell.value())
    }

    /// A strict call learnt the total.
    pub(crate) fn learn(&mut self, key: &str, total: i64) {
        if let Some(e) = self.map.get_mut(key) {
            e.cell.rebase(total - e.global);
            e.global = total;
        }
    }

    /// The batch to send: the unacknowledged one again, or a new one (`None`: nothing to do).
    pub(crate) fn batch(&mut self, keys: &Keys) -> Option<Batch> {
        if let Some(b) = &self.inflight {
            return Some(b.clone());
        }
        let mut groups: FxHashMap<String, Group> = FxHashMap::default();
        for (k, e) in self.map.iter_mut() {
            // Both marks are taken: a delta or a read after this belongs to the next batch.
            let read = e.cell.take_read();
            let pending = e.cell.take_pending();
            if pending == 0 && !read {
                continue;
            }
            let redis_key = keys.counter(k);
            let tag = hash_tag(&redis_key).expect("counter keys carry a tag").to_owned();
            let g = groups.entry(tag).or_insert_with(|| Group {
                flush_key: String::new(),
                keys: Vec::new(),
                redis_keys: Vec::new(),
                deltas: Vec::new(),
                expiries: Vec::new(),
            });
            g.keys.push(k.clone());
            g.redis_keys.push(redis_key);
            g.deltas.push(pending);
            g.expiries.push(e.expires_at_ms);
            e.inflight += pending;
        }
        if groups.is_empty() {
            return None;
        }
        let id: u64 = rand::random();
        let groups = groups
            .into_iter()
            .map(|(tag, mut g)| {
                g.flush_key = keys.flush_id(&tag, id);
                g
            })
            .collect();
        let b = Batch {
            id,
            groups,
            attempts: 0,
        };
        self.inflight = Some(b.clone());
        Some(b)
    }

    /// The batch failed to send (it stays in flight and is replayed as it is).
    pub(crate) fn failed(&mut self) {
        if let Some(b) = &mut self.inflight {
            b.attempts += 1;
        }
    }

    /// Redis acknowledged group `i` of the batch in flight with these totals. Returns whether
    /// the whole batch is now acknowledged, and whether it was a replay.
    pub(crate) fn ack_group(&mut self, i: usize, totals: &[i64]) -> Option<(bool, bool)> {
        let b = self.inflight.as_mut()?;
        let g = b.groups.get_mut(i)?;
        if g.keys.is_empty() {
            return None;
        }
        for ((k, d), t) in g.keys.iter().zip(&g.deltas).zip(totals) {
            if let Some(e) = self.map.get_mut(k) {
                // The view loses the acknowledged deltas and the old total, gains the new one.
                e.cell.rebase(t - e.global - d);
                e.inflight -= d;
                e.global = *t;
            }
        }
        g.keys.clear();
        let done = b.groups.iter().all(|g| g.keys.is_empty());
        let replay = b.attempts > 0;
        if done {
            self.inflight = None;
        }
        Some((done, replay))
    }

    /// Keys holding deltas Redis has not acknowledged.
    pub(crate) fn unflushed(&self) -> usize {
        self.map
            .values()
            .filter(|e| e.cell.pending() != 0 || e.inflight != 0)
            .count()
    }

    pub(crate) fn has_inflight(&self) -> bool {
        self.inflight.is_some()
    }

    /// Forget keys that expired or went unused since the last sweep and hold nothing unflushed.
    pub(crate) fn sweep(&mut self, now_ms: u64) {
        self.map.retain(|_, e| {
            let idle = e.cell.pending() == 0 && e.inflight == 0;
            let expired = e.expires_at_ms != 0 && e.expires_at_ms <= now_ms;
            let used = e.used || Arc::strong_count(&e.cell) > 1;
            let keep = !idle || (used && !expired);
            e.used = false;
            if !keep {
                e.cell.retire();
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_batch_is_replayed_unchanged() {
        let keys = Keys::new("mr:");
        let mut c = Counters::new(10);
        assert_eq!(c.add("{ws:a}:b", 5, 0), Some(5));
        c.add("{ws:b}:b", 1, 0);
        let b1 = c.batch(&keys).unwrap();
        assert_eq!(b1.groups.len(), 2);
        c.failed();
        assert_eq!(c.add("{ws:a}:b", 2, 0), Some(7));
        let b2 = c.batch(&keys).unwrap();
        assert_eq!(b2.id, b1.id);
        assert_eq!(b2.attempts, 1);
        let ia = b2.groups.iter().position(|g| g.keys[0] == "{ws:a}:b").unwrap();
        assert_eq!(b2.groups[ia].deltas, vec![5]);
        assert_eq!(c.ack_group(ia, &[105]), Some((false, true)));
        assert_eq!(c.view("{ws:a}:b"), 107);
        assert_eq!(c.ack_group(1 - ia, &[1]), Some((true, true)));
        let b3 = c.batch(&keys).unwrap();
        assert_ne!(b3.id, b1.id);
        assert_eq!(b3.groups[0].deltas, vec![2]);
    }

    #[test]
    fn cells_are_the_counters_of_their_keys() {
        let keys = Keys::new("mr:");
        let mut c = Counters::new(10);
        let cell = c.cell("{ws:a}:b", 0).unwrap();
        assert_eq!(cell.add(5), 5);
        assert_eq!(c.add("{ws:a}:b", 2, 0), Some(7));
        let b = c.batch(&keys).unwrap();
        assert_eq!(b.groups[0].deltas, vec![7]);
        assert_eq!(cell.add(1), 8);
        // Redis had 100 from other instances.
        assert_eq!(c.ack_group(0, &[107]), Some((true, false)));
        assert_eq!(cell.value(), 108);
        assert_eq!(c.view("{ws:a}:b"), 108);
        c.learn("{ws:a}:b", 200);
        assert_eq!(cell.value(), 201);
        assert_eq!(c.batch(&keys).unwrap().groups[0].deltas, vec![1]);
        // A cell held elsewhere keeps its key through sweeps until it expires.
        c.ack_group(0, &[201]);
        c.sweep(0);
        c.sweep(0);
        assert!(!cell.is_retired());
        assert_eq!(c.view("{ws:a}:b"), 201);
        drop(cell);
        c.sweep(0);
        assert_eq!(c.view("{ws:a}:b"), 0);
    }

    #[test]
    fn bounded_by_keys() {
        let mut c = Counters::new(1);
        assert!(c.add("a", 1, 0).is_some());
        assert!(c.add("a", 1, 0).is_some());
        assert!(c.add("b", 1, 0).is_none());
        assert_eq!(c.get("b"), 0);
    }
}
