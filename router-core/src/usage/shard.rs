//! Where a report's usage goes first: per-key cells, and per-thread shards that batch samples
//! and keep the recent requests.
//!
//! A **cell** is one key of one dimension (a model, an endpoint, a workspace, ...): its
//! aggregates behind their own lock, created once (when the key is first recorded) and never
//! removed, so a cell can be cached wherever its key is known: the endpoint's
//! [`Slot`](crate::Slot) caches its model's and its own cell for its life (which spans
//! snapshots while its endpoint is unchanged), a shard caches the cells of the workspaces,
//! agent types and users it has seen.
//!
//! A **shard** belongs to the threads whose index maps to it (threads get consecutive
//! indices, so threads running at once have shards of their own; there are several shards per
//! CPU). It batches samples per cell and minute and keeps its own ring of recent requests.
//! Recording locks the shard only (uncontended); a batch reaches its cell when the cell's next
//! minute starts in this shard, when the shard holds [`MAX_BATCHES`] batches, or when a query
//! runs (queries flush every shard first).

use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use super::series::{Bucket, Series};
use super::{from_micros, LatencyHistogram, RequestRecord, Sample, UsageConfig};

/// The key that keys past `max_keys` are counted under.
pub(crate) const OTHER: &str = "_other";

/// Batches a shard holds before it hands them all to their cells.
pub(crate) const MAX_BATCHES: usize = 1024;

/// One key of one dimension and its aggregates.
#[derive(Debug)]
pub(crate) struct Cell {
    /// Index in [`Keys::cells`].
    pub(crate) id: u32,
    pub(crate) key: Arc<str>,
    /// The newest minute recorded for this key, Unix ms: a sample of an older minute is late
    /// and counts in this one (the newest bucket), as when samples were added one by one.
    /// A shard asks only for a sample newer than the batch it holds open for the key: a late
    /// sample that batch's minute covers joins it (with one shard, the same thing; with
    /// several, a late sample may count in its own shard's open minute, an older one than
    /// another shard has opened since).
    newest_minute: AtomicU64,
    pub(crate) series: Mutex<Series>,
}

impl Cell {
    /// The minute bucket a sample of minute `minute` goes to.
    fn minute_for(&self, minute: u64) -> u64 {
        let newest = self.newest_minute.load(Ordering::Relaxed);
        if minute > newest {
            // Written once per key and minute: the line stays shared between threads.
            minute.max(self.newest_minute.fetch_max(minute, Ordering::Relaxed))
        } else {
            newest
        }
    }
}

/// The model's and the endpoint's cell, cached in the endpoint's slot for the slot's life
/// (only cells of their own key: a key counted under `_other` is looked up every time, so it
/// gets its own cell as soon as `max_keys` allows).
#[derive(Default)]
pub(crate) struct SlotCells {
    model: OnceLock<Cached>,
    endpoint: OnceLock<Cached>,
}

/// A cached cell and its id, kept beside the pointer: a sample for a batch this shard holds
/// open reads neither the cell nor its cache line.
#[derive(Debug)]
struct Cached {
    cell: Arc<Cell>,
    id: u32,
}

impl std::fmt::Debug for SlotCells {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotCells").finish_non_exhaustive()
    }
}

/// Every key of every dimension (the router-wide part, locked when a shard meets a key it has
/// not cached and by queries).
#[derive(Debug, Default)]
pub(crate) struct Keys {
    pub(crate) dims: [FxHashMap<Arc<str>, Arc<Cell>>; 5],
    /// Every cell by id.
    pub(crate) cells: Vec<Arc<Cell>>,
}

impl Keys {
    /// The cell of `key`: its own while the dimension has room (`max_keys`), else `_other`.
    fn resolve(&mut self, dim: usize, key: &[u8], cfg: &UsageConfig) -> Arc<Cell> {
        // Copied from a `&str`, so never lossy.
        let key = &*String::from_utf8_lossy(key);
        if let Some(c) = self.dims[dim].get(key) {
            return c.clone();
        }
        let key = if self.dims[dim].len() < cfg.max_keys {
            key
        } else {
            OTHER
        };
        if let Some(c) = self.dims[dim].get(key) {
            return c.clone();
        }
        let cell = Arc::new(Cell {
            id: u32::try_from(self.cells.len()).expect("fewer than 2^32 keys"),
            key: Arc::from(key),
            newest_minute: AtomicU64::new(0),
            series: Mutex::new(Series::new(cfg)),
        });
        self.cells.push(cell.clone());
        self.dims[dim].insert(cell.key.clone(), cell.clone());
        cell
    }

    fn name(&self, id: u32) -> Option<String> {
        (id != NO_KEY).then(|| self.cells[id as usize].key.to_string())
    }
}

/// No cell: the request has no such key, or its key is counted under `_other` (then
/// [`Extra::names`] has it).
const NO_KEY: u32 = u32::MAX;

/// Error names a recent request keeps as a number.
const ERRORS: [&str; 5] = ["timeout", "connection", "rate_limited", "server", "client"];

/// What a recent request keeps besides numbers, when it has any (a request id, a key counted
/// under `_other`, an error name not in [`ERRORS`]).
#[derive(Debug, Clone, Default)]
struct Extra {
    request_id: Option<Box<str>>,
    names: [Option<Arc<str>>; 5],
    error: Option<&'static str>,
}

/// A finished request as a shard keeps it (88 bytes, no allocation for a request without a
/// request id); turned into a [`RequestRecord`] when asked for.
#[derive(Debug, Clone)]
pub(crate) struct Recent {
    decision_id: u64,
    pub(crate) at_ms: u64,
    latency_ms: f64,
    cost_micros: i64,
    tokens_in: u64,
    tokens_out: u64,
    /// Cells of the model, endpoint, workspace, agent type and user, or [`NO_KEY`].
    keys: [u32; 5],
    attempt: u32,
    /// 1 + index in [`ERRORS`]; 0: none.
    error: u8,
    success: bool,
    tokens_estimated: bool,
    extra: Option<Box<Extra>>,
}

impl Recent {
    pub(crate) fn record(&self, keys: &Keys) -> RequestRecord {
        let extra = self.extra.as_deref();
        let name = |d: usize| {
            keys.name(self.keys[d])
                .or_else(|| extra.and_then(|x| x.names[d].as_deref().map(str::to_owned)))
        };
        RequestRecord {
            decision_id: crate::decision::DecisionId(self.decision_id).to_string(),
            request_id: extra.and_then(|x| x.request_id.as_deref().map(str::to_owned)),
            model_id: name(0).unwrap_or_default(),
            endpoint_id: name(1).unwrap_or_default(),
            workspace_id: name(2),
            agent_type: name(3),
            user_id: name(4),
            success: self.success,
            error: match self.error {
                0 => extra.and_then(|x| x.error).map(str::to_owned),
                e => Some(ERRORS[usize::from(e - 1)].to_owned()),
            },
            latency_ms: self.latency_ms,
            tokens_in: self.tokens_in,
            tokens_out: self.tokens_out,
            tokens_estimated: self.tokens_estimated,
            cost: from_micros(self.cost_micros),
            attempt: self.attempt,
            at_ms: self.at_ms,
        }
    }
}

/// The widest latency window, in bins (1.02^512: latencies over a range of 25,000 to 1).
const MAX_WINDOW: usize = 512;

/// The samples of one cell and one minute held back in a shard: the counts and sums, and the
/// latency bins as counts over a window of consecutive bins (one indexed add per sample
/// instead of a search in a sorted list).
///
/// Everything a sample touches sits on one cache line (the minute as a minute number, the
/// request counts in 32 bits: one shard's samples of one key in one minute), so at 1,000
/// endpoints a report reads one cold line for its endpoint's batch, plus the window's. The
/// cell and the histogram that full counts carry into are in [`Spill`], read now and then.
///
/// A count is one byte: every 256th sample of a bin moves 256 into the spill's histogram, so a
/// window of the bench's latency spread (~140 bins) fills three cache lines, not nine, and a
/// shard's windows for 1,000 endpoints stay in a core's L2.
#[derive(Debug)]
#[repr(C, align(64))]
struct Batch {
    /// The start of its minute, in minutes since the epoch.
    minute: u32,
    requests: u32,
    successes: u32,
    /// The bin of `counts[0]`.
    lo: u16,
    tokens_in: u64,
    tokens_out: u64,
    cost_micros: i64,
    latency_sum_ms: f64,
    counts: Box<[u8]>,
}

/// What a batch needs only when it grows, carries a full count, or finishes.
#[derive(Debug)]
struct Spill {
    cell: Arc<Cell>,
    latency: LatencyHistogram,
}

/// Minutes since the epoch of a minute's start, ms (saturating, past the year 10,000).
fn minute_number(start_ms: u64) -> u32 {
    u32::try_from(start_ms / super::series::MINUTE).unwrap_or(u32::MAX)
}

impl Batch {
    fn at(start_ms: u64) -> Batch {
        Batch {
            minute: minute_number(start_ms),
            requests: 0,
            successes: 0,
            lo: 0,
            tokens_in: 0,
            tokens_out: 0,
            cost_micros: 0,
            latency_sum_ms: 0.0,
            counts: Box::default(),
        }
    }

    /// Whether a sample of the minute starting at `start_ms` joins this batch.
    #[inline]
    fn covers(&self, start_ms: u64) -> bool {
        u64::from(self.minute) * super::series::MINUTE >= start_ms
    }

    /// Add a sample; returns a latency bin and a count that go to the spill's histogram (a
    /// full count, or a bin the window cannot take).
    #[inline]
    fn add(&mut self, s: &Sample<'_>, bin: u16) -> Option<(u16, u32)> {
        self.requests += 1;
        self.successes += u32::from(s.success);
        self.tokens_in += s.tokens_in;
        self.tokens_out += s.tokens_out;
        self.cost_micros += s.cost_micros;
        self.latency_sum_ms += s.latency_ms;
        let i = usize::from(bin).wrapping_sub(usize::from(self.lo));
        if let Some(c) = self.counts.get_mut(i) {
            *c = c.wrapping_add(1);
            return (*c == 0).then_some((bin, 256));
        }
        self.grow(bin)
    }

    #[cold]
    fn grow(&mut self, bin: u16) -> Option<(u16, u32)> {
        let (lo, hi) = if self.counts.is_empty() {
            (bin.saturating_sub(16), usize::from(bin) + 16)
        } else {
            let hi = usize::from(self.lo) + self.counts.len();
            (self.lo.min(bin.saturating_sub(16)), hi.max(usize::from(bin) + 16))
        };
        let hi = hi.min(usize::from(u16::MAX) + 1);
        if hi - usize::from(lo) > MAX_WINDOW {
            return Some((bin, 1));
        }
        let mut counts = vec![0; hi - usize::from(lo)].into_boxed_slice();
        if !self.counts.is_empty() {
            let shift = usize::from(self.lo - lo);
            counts[shift..shift + self.counts.len()].copy_from_slice(&self.counts);
        }
        counts[usize::from(bin - lo)] = 1;
        self.lo = lo;
        self.counts = counts;
        None
    }

    /// The finished bucket, its counts drained into `latency`; the batch starts again at
    /// `next_minute`, its window keeping its range (the next minute's latencies are most
    /// likely in it), zeroed.
    fn finish(&mut self, latency: &mut LatencyHistogram, next_minute: u64) -> Bucket {
        let mut h = std::mem::take(latency);
        for (i, n) in self.counts.iter_mut().enumerate() {
            if *n > 0 {
                h.record_bins(self.lo + i as u16, u32::from(*n));
                *n = 0;
            }
        }
        let b = Bucket::from_sums(
            u64::from(self.minute) * super::series::MINUTE,
            [
                u64::from(self.requests),
                u64::from(self.successes),
                self.tokens_in,
                self.tokens_out,
            ],
            self.cost_micros,
            self.latency_sum_ms,
            h,
        );
        *self = Batch {
            lo: self.lo,
            counts: std::mem::take(&mut self.counts),
            ..Batch::at(next_minute)
        };
        b
    }
}

/// Samples held back per cell, one minute each.
#[derive(Debug, Default)]
struct Batches {
    /// By cell id: the index in `open` (and `spill`) of the cell's batch, or `NONE`.
    index: Vec<u32>,
    open: Vec<Batch>,
    spill: Vec<Spill>,
}

const NONE: u32 = u32::MAX;

impl Batches {
    /// Add a sample of minute `minute` for `cell` (whose id is `id`). A sample not newer than
    /// the minute of the batch this shard holds open for the cell joins it at once, without
    /// reading the cell; else the minute is the cell's newest ([`Cell::minute_for`]).
    #[inline]
    fn add(&mut self, cell: &Arc<Cell>, id: u32, s: &Sample<'_>, bin: u16, minute: u64) {
        let id = id as usize;
        if let Some(&k) = self.index.get(id) {
            if let Some(b) = self.open.get_mut(k as usize) {
                if b.covers(minute) {
                    if let Some((bin, n)) = b.add(s, bin) {
                        self.spill[k as usize].latency.record_bins(bin, n);
                    }
                    return;
                }
            }
        }
        self.add_slow(cell, id, s, bin, minute);
    }

    #[inline(never)]
    fn add_slow(&mut self, cell: &Arc<Cell>, id: usize, s: &Sample<'_>, bin: u16, minute: u64) {
        let minute = cell.minute_for(minute);
        if id >= self.index.len() {
            self.index.resize(id + 1, NONE);
        }
        let k = self.index[id] as usize;
        let Some(b) = self.open.get_mut(k) else {
            let mut b = Batch::at(minute);
            let mut spill = Spill {
                cell: cell.clone(),
                latency: LatencyHistogram::default(),
            };
            if let Some((bin, n)) = b.add(s, bin) {
                spill.latency.record_bins(bin, n);
            }
            self.index[id] = self.open.len() as u32;
            self.open.push(b);
            self.spill.push(spill);
            return;
        };
        let spill = &mut self.spill[k];
        if !b.covers(minute) {
            // The key's next minute: the finished one goes to the cell.
            let done = b.finish(&mut spill.latency, minute);
            spill.cell.series.lock().place(done);
        }
        if let Some((bin, n)) = b.add(s, bin) {
            spill.latency.record_bins(bin, n);
        }
    }

    /// Hand every batch to its cell.
    fn flush(&mut self) {
        for (mut b, mut spill) in self.open.drain(..).zip(self.spill.drain(..)) {
            self.index[spill.cell.id as usize] = NONE;
            let done = b.finish(&mut spill.latency, 0);
            spill.cell.series.lock().place(done);
        }
    }
}

/// A shard: cached cells, batches and recent requests of the threads that map to it.
#[derive(Debug, Default)]
pub(crate) struct Shard {
    /// Cells of keys this shard has met, per dimension (own-key cells only: at most
    /// `max_keys` per dimension).
    names: [FxHashMap<Box<[u8]>, Arc<Cell>>; 5],
    batches: Batches,
    /// Recent requests, oldest first, at most `recent_cap`.
    pub(crate) recent: VecDeque<Recent>,
    /// `usage.recent_requests` when the last record came.
    pub(crate) recent_cap: usize,
}

impl Shard {
    /// Record one sample: into the batch of each key's cell and, if kept, the recent ring.
    pub(crate) fn record(&mut self, keys: &Mutex<Keys>, s: &Sample<'_>, cfg: &UsageConfig) {
        let bin = super::histogram::bin_of(s.latency_ms);
        let minute = s.at_ms - s.at_ms % super::series::MINUTE;
        let mut rec = [NO_KEY; 5];
        let mut extra: Option<Box<Extra>> = None;
        for (d, key) in s.keys.iter().enumerate() {
            let Some(key) = *key else { continue };
            let cached = match (d, s.cells) {
                (0, Some(c)) => c.model.get().map(|c| (&c.cell, c.id)),
                (1, Some(c)) => c.endpoint.get().map(|c| (&c.cell, c.id)),
                _ => self.names[d].get(key).map(|c| (c, c.id)),
            };
            if let Some((c, id)) = cached {
                rec[d] = id;
                self.batches.add(c, id, s, bin, minute);
                continue;
            }
            let cell = keys.lock().resolve(d, key, cfg);
            if cell.key.as_bytes() == key {
                rec[d] = cell.id;
                let cached = || Cached {
                    cell: cell.clone(),
                    id: cell.id,
                };
                match (d, s.cells) {
                    (0, Some(c)) => drop(c.model.set(cached())),
                    (1, Some(c)) => drop(c.endpoint.set(cached())),
                    _ => drop(self.names[d].insert(key.into(), cell.clone())),
                }
            } else {
                extra.get_or_insert_with(Default::default).names[d] = Some(Arc::from(String::from_utf8_lossy(key)));
            }
            self.batches.add(&cell, cell.id, s, bin, minute);
        }
        if self.batches.open.len() >= MAX_BATCHES {
            self.batches.flush();
        }
        if cfg.recent_requests > 0 {
            let error = match s.error {
                None => 0,
                Some(e) => match ERRORS.iter().position(|n| *n == e) {
                    Some(i) => i as u8 + 1,
                    None => {
                        extra.get_or_insert_with(Default::default).error = Some(e);
                        0
                    }
                },
            };
            if let Some(r) = s.request_id {
                extra.get_or_insert_with(Default::default).request_id = Some(Box::from(r));
            }
            self.recent_cap = cfg.recent_requests;
            while self.recent.len() >= cfg.recent_requests {
                self.recent.pop_front();
            }
            self.recent.push_back(Recent {
                decision_id: s.decision_id,
                at_ms: s.at_ms,
                latency_ms: s.latency_ms,
                cost_micros: s.cost_micros,
                tokens_in: s.tokens_in,
                tokens_out: s.tokens_out,
                keys: rec,
                attempt: s.attempt,
                error,
                success: s.success,
                tokens_estimated: s.tokens_estimated,
                extra,
            });
        }
    }

    /// Hand every batch to its cell.
    pub(crate) fn flush(&mut self) {
        self.batches.flush();
    }
}

/// A lock alone on its cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

/// This thread's shard index (before masking): consecutive per thread, from first use.
pub(crate) fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
    }
    INDEX
        .try_with(|i| match i.get() {
            usize::MAX => {
                let v = NEXT.fetch_add(1, Ordering::Relaxed);
                i.set(v);
                v
            }
            v => v,
        })
        .unwrap_or(0)
}

/// Shards per router: four per CPU, a power of two, 4 to 256.
pub(crate) fn shard_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
        (cpus * 4).next_power_of_two().clamp(4, 256)
    })
}

// A recent request fills at most 88 bytes of its shard's ring.
const _: () = assert!(std::mem::size_of::<Recent>() <= 88);

// What a sample touches in its batch is one cache line.
const _: () = assert!(std::mem::size_of::<Batch>() == 64);
