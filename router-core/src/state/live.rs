//! Live per-endpoint state: atomics only, shared by every snapshot that contains the endpoint.
//!
//! An [`EndpointState`] outlives configuration changes: when the registry builds a new snapshot
//! it hands the same `Arc<EndpointState>` to the endpoint's new entry, so in-flight counts,
//! latency and health carry over. Decisions hold it too, so a report after a deregistration
//! still lands somewhere (and changes nothing anyone routes to).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::sync::AtomicBool as GuardFlag;

use super::writer_lock::{take_flag, WriterLock};
use crate::breaker::Breaker;
use crate::endpoint::HeadStatus;
use crate::limits::Gcra;

/// Smoothing factor of the latency EWMA: each sample has this weight.
pub const LATENCY_EWMA_ALPHA: f64 = 0.2;
/// Smoothing factor of the success-rate EWMA.
pub const SUCCESS_EWMA_ALPHA: f64 = 0.1;
/// Decay time constant of the peak-EWMA latency, in milliseconds (Finagle's default, 10 s).
pub const PEAK_EWMA_DECAY_MS: f64 = 10_000.0;

const NO_SAMPLE: u64 = u64::MAX;

/// A peak-EWMA latency `v` last updated at `ts_ms`, decayed to `now_ms`.
#[inline]
pub(crate) fn peak_decayed(v: f64, ts_ms: u64, now_ms: u64) -> f64 {
    let elapsed = now_ms.saturating_sub(ts_ms);
    if elapsed == 0 {
        return v;
    }
    v * peak_decay(elapsed)
}

/// Entries of each of the two [`DecayTables`].
pub(crate) const DECAY_STEPS: usize = 4096;
/// Elapsed times covered by the tables (4096² ms, 4.7 hours, 1,677 decay time constants);
/// beyond, the decay is 0, as `exp()` has it from 745 time constants on.
pub(crate) const DECAY_SPAN_MS: u64 = (DECAY_STEPS * DECAY_STEPS) as u64;

/// e^(-t/τ) for whole milliseconds t, τ = [`PEAK_EWMA_DECAY_MS`], as a product of two
/// lookups: t = 4096·a + b gives e^(-4096·a/τ) · e^(-b/τ).
pub(crate) struct DecayTables {
    pub(crate) coarse: [f64; DECAY_STEPS],
    pub(crate) fine: [f64; DECAY_STEPS],
    /// `fine[k] · (1 - 1e-9)`: the hybrid scan's lower bound of the decay, ready.
    pub(crate) fine_lo: [f64; DECAY_STEPS],
}

/// The tables of [`peak_decay`], built on first use (96 KiB).
#[inline]
pub(crate) fn decay_tables() -> &'static DecayTables {
    static TABLES: std::sync::OnceLock<Box<DecayTables>> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| {
        let mut t = Box::new(DecayTables {
            coarse: [0.0; DECAY_STEPS],
            fine: [0.0; DECAY_STEPS],
            fine_lo: [0.0; DECAY_STEPS],
        });
        for k in 0..DECAY_STEPS {
            t.coarse[k] = (-((k * DECAY_STEPS) as f64) / PEAK_EWMA_DECAY_MS).exp();
            t.fine[k] = (-(k as f64) / PEAK_EWMA_DECAY_MS).exp();
            t.fine_lo[k] = t.fine[k] * (1.0 - 1e-9);
        }
        t
    })
}

/// The peak EWMA's decay after `elapsed_ms`: e^(-elapsed/τ), **defined** as the product of
/// [`DecayTables`]' two entries (within a few units in the last place of `exp()`, plus the
/// relative (t/τ)·ε by which the rounding of `exp()`'s argument moves it; exactly `exp()` for
/// 0 and 1 ms). Two loads and a multiplication instead of an `exp()` call: the hybrid
/// scan computes it for every near-tie that may take a place in its list, P2C for each of its
/// two samples, a report for its endpoint. One definition for all of them, so that a scan's
/// bounds and the exact score they stand for agree.
// Out of line: inlined into P2C's cost (where the elapsed time is nearly always 0 and this
// is not reached) it cost P2C 5-10 ns per decision.
#[inline(never)]
pub(crate) fn peak_decay(elapsed_ms: u64) -> f64 {
    decay_from(decay_tables(), elapsed_ms)
}

/// [`peak_decay`] from `tables`, inline (a scan looks the tables up once).
#[inline(always)]
pub(crate) fn decay_from(tables: &DecayTables, elapsed_ms: u64) -> f64 {
    if elapsed_ms < DECAY_STEPS as u64 {
        // Under 4.1 s (the common case by far) the coarse entry is e^0 = 1: the fine one
        // alone is the same product.
        tables.fine[elapsed_ms as usize]
    } else if elapsed_ms < DECAY_SPAN_MS {
        tables.coarse[(elapsed_ms / DECAY_STEPS as u64) as usize]
            * tables.fine[(elapsed_ms % DECAY_STEPS as u64) as usize]
    } else {
        0.0
    }
}

/// e^(−1 ms / [`PEAK_EWMA_DECAY_MS`]): the peak-EWMA weight of samples at most a millisecond
/// apart (the common case under load), without calling `exp`.
const PEAK_EWMA_ONE_MS: f64 = 0.999_900_004_999_833_3;

/// A float stored in an `AtomicU64` (its writers hold the endpoint's writer lock).
#[derive(Debug)]
struct AtomicF64(AtomicU64);

impl AtomicF64 {
    fn new(v: f64) -> Self {
        AtomicF64(AtomicU64::new(v.to_bits()))
    }
    fn empty() -> Self {
        AtomicF64(AtomicU64::new(NO_SAMPLE))
    }
    fn get(&self) -> Option<f64> {
        match self.0.load(Ordering::Relaxed) {
            NO_SAMPLE => None,
            bits => Some(f64::from_bits(bits)),
        }
    }
    /// Overwrite (writers hold the endpoint's writer lock, so a plain store is enough).
    fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
}

/// The live state of one endpoint. Every field is an atomic: the decision path reads it without
/// locks. The in-flight count, the status and the breaker's admission move with atomic
/// read-modify-writes; the statistics that reports fold in (counters, EWMAs, sample times) have
/// one writer at a time, serialised by a per-endpoint lock, and are published with plain atomic
/// stores: one lock round trip per report instead of a CAS loop or `fetch_add` per field.
///
/// Aligned to 128 bytes so two endpoints never share a cache line (adjacent-line prefetch
/// included), which keeps threads routing to different endpoints from slowing each other. Laid
/// out in declaration order (`repr(C)`): what a pick reads comes first.
#[derive(Debug)]
#[repr(C, align(128))]
pub struct EndpointState {
    // What a scan's common case reads, in the first 64 bytes (one cache line): the in-flight
    // count, the summary of the fields that keep an endpoint off the common case, the
    // latencies the scores read, the heartbeat, and the breaker, whose state and cooldown
    // come first in it (offsets 40 and 56).
    in_flight: crate::sync::AtomicU32,
    /// [`Summary`] bits: which of the fields below keep the endpoint off the common case, kept
    /// by their writers, so a scan tests them with one load.
    summary: AtomicU32,
    latency_ewma: AtomicF64,
    peak_ewma: AtomicF64,
    peak_ts_ms: AtomicU64,
    last_seen_ms: AtomicU64,
    pub(crate) breaker: Breaker,
    // What the full eligibility check and the health score read.
    reported_load: AtomicU32,
    in_flight_at_report: AtomicU32,
    consecutive_failures: AtomicU32,
    status: AtomicU8,
    health_status: AtomicU8,
    expired: AtomicBool,
    load_report_ms: AtomicU64,
    success_ewma: AtomicF64,
    samples: AtomicU64,
    last_sample_ms: AtomicU64,
    // Read on reports, probes and status queries.
    /// Serialises the writers of the statistics below and above (readers never take it).
    writer: WriterLock,
    status_ts_ms: AtomicU64,
    ttft_ewma: AtomicF64,
    requests: AtomicU64,
    failures: AtomicU64,
    tokens_in: AtomicU64,
    tokens_out: AtomicU64,
    last_probe_ms: AtomicU64,
    /// GCRA theoretical arrival times of the endpoint's own rpm and tpm caps, µs.
    rpm_tat_us: AtomicU64,
    tpm_tat_us: AtomicU64,
    /// Holt forecasts of arrivals and in-flight ([`crate::predict`]).
    pub(crate) forecast: crate::predict::Forecaster,
}

impl EndpointState {
    /// A fresh state: healthy, seen at `now_ms`, no samples.
    pub fn new(now_ms: u64) -> Self {
        EndpointState {
            in_flight: crate::sync::AtomicU32::new(0),
            summary: AtomicU32::new(0),
            reported_load: AtomicU32::new(0),
            in_flight_at_report: AtomicU32::new(0),
            load_report_ms: AtomicU64::new(now_ms),
            status: AtomicU8::new(HeadStatus::Healthy.to_u8()),
            status_ts_ms: AtomicU64::new(0),
            last_seen_ms: AtomicU64::new(now_ms),
            expired: AtomicBool::new(false),
            latency_ewma: AtomicF64::empty(),
            peak_ewma: AtomicF64::empty(),
            peak_ts_ms: AtomicU64::new(now_ms),
            ttft_ewma: AtomicF64::empty(),
            success_ewma: AtomicF64::new(1.0),
            consecutive_failures: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            tokens_in: AtomicU64::new(0),
            tokens_out: AtomicU64::new(0),
            last_sample_ms: AtomicU64::new(now_ms),
            health_status: AtomicU8::new(HeadStatus::Healthy.to_u8()),
            samples: AtomicU64::new(0),
            last_probe_ms: AtomicU64::new(0),
            rpm_tat_us: AtomicU64::new(0),
            tpm_tat_us: AtomicU64::new(0),
            breaker: Breaker::default(),
            writer: WriterLock::default(),
            forecast: Default::default(),
        }
    }

    /// The endpoint's circuit breaker.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// The status computed from health scores (healthy, degraded or unhealthy).
    #[inline]
    pub fn health_status(&self) -> HeadStatus {
        HeadStatus::from_u8(self.health_status.load(Ordering::Relaxed))
    }

    /// Set the computed status; returns the previous one when it changed.
    pub(crate) fn set_health_status(&self, s: HeadStatus) -> Option<HeadStatus> {
        if self.health_status.load(Ordering::Relaxed) == s.to_u8() {
            return None;
        }
        let prev = HeadStatus::from_u8(self.health_status.swap(s.to_u8(), Ordering::AcqRel));
        self.sync(Summary::COMPUTED, || self.health_status() != HeadStatus::Healthy);
        (prev != s).then_some(prev)
    }

    /// Claim the probe due at `now_ms` if the last one is at least `interval_ms` old.
    pub(crate) fn claim_probe(&self, now_ms: u64, interval_ms: u64) -> bool {
        let last = self.last_probe_ms.load(Ordering::Relaxed);
        (last == 0 || now_ms.saturating_sub(last) >= interval_ms)
            && self
                .last_probe_ms
                .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// Health samples recorded (calls, probes, pushed reports).
    pub fn samples(&self) -> u64 {
        self.samples.load(Ordering::Relaxed)
    }

    /// The success rate at `now_ms`: the EWMA's deficit halves every `half_life_ms` without
    /// a new sample.
    #[inline]
    pub fn success_rate_at(&self, now_ms: u64, half_life_ms: f64) -> f64 {
        let r = self.success_rate();
        if r >= 1.0 {
            return 1.0;
        }
        let age = now_ms.saturating_sub(self.last_sample_ms.load(Ordering::Relaxed)) as f64;
        1.0 - (1.0 - r) * (-age * std::f64::consts::LN_2 / half_life_ms).exp()
    }

    /// Fold one health sample (success or endpoint failure) into the success-rate EWMA.
    pub(crate) fn health_sample(&self, ok: bool, now_ms: u64) {
        let _w = self.writer.lock();
        self.health_sample_locked(ok, now_ms);
    }

    fn health_sample_locked(&self, ok: bool, now_ms: u64) {
        let s = if ok { 1.0 } else { 0.0 };
        let old = self.success_ewma.get().unwrap_or(1.0);
        self.set_success(old + SUCCESS_EWMA_ALPHA * (s - old));
        store_max(&self.last_sample_ms, now_ms);
        bump(&self.samples, 1);
    }

    /// Overwrite the success rate (a pushed health report's error rate).
    pub(crate) fn set_success_rate(&self, rate: f64, now_ms: u64) {
        let _w = self.writer.lock();
        self.set_success(rate.clamp(0.0, 1.0));
        store_max(&self.last_sample_ms, now_ms);
        bump(&self.samples, 1);
    }

    /// Fold a latency sample (successful call or probe) into the EWMAs.
    pub(crate) fn latency_sample(&self, rtt: f64, now_ms: u64) {
        let _w = self.writer.lock();
        self.latency_sample_locked(rtt, now_ms);
    }

    fn latency_sample_locked(&self, rtt: f64, now_ms: u64) {
        let ewma = match self.latency_ewma.get() {
            None => rtt,
            Some(o) => o + LATENCY_EWMA_ALPHA * (rtt - o),
        };
        self.latency_ewma.set(ewma);
        // Peak-EWMA: the stored value decays with the time since the last sample; a slower
        // sample replaces it at once, a faster one is blended in with the same decay weight.
        let next = match self.peak_ewma.get() {
            Some(v) => {
                let elapsed = now_ms.saturating_sub(self.peak_ts_ms.load(Ordering::Relaxed));
                let w = if elapsed <= 1 {
                    PEAK_EWMA_ONE_MS
                } else {
                    peak_decay(elapsed)
                };
                let decayed = if elapsed == 0 { v } else { v * w };
                if rtt <= decayed {
                    decayed * w + rtt * (1.0 - w)
                } else {
                    rtt
                }
            }
            None => rtt,
        };
        self.peak_ewma.set(next);
        store_max(&self.peak_ts_ms, now_ms);
    }

    /// Requests routed here and not yet reported or dropped.
    #[inline]
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn acquire(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the endpoint's own rpm / tpm caps leave no room for one more request now.
    pub(crate) fn caps_saturated(&self, rpm: Option<u32>, tpm: Option<u32>, now_us: u64) -> bool {
        let full = |tat: &AtomicU64, cap: Option<u32>| {
            cap.and_then(|c| Gcra::per_period(u64::from(c), 60_000, 0).ok())
                .is_some_and(|g| {
                    let mut t = tat.load(Ordering::Relaxed);
                    !g.check(&mut t, now_us, 1).allowed
                })
        };
        full(&self.rpm_tat_us, rpm) || full(&self.tpm_tat_us, tpm)
    }

    /// Count one request and `tokens` (negative: give back an over-estimate) against the
    /// endpoint's own caps.
    pub(crate) fn charge_caps(&self, rpm: Option<u32>, tpm: Option<u32>, requests: i64, tokens: i64, now_us: u64) {
        let charge = |tat: &AtomicU64, cap: Option<u32>, n: i64| {
            let Some(g) = cap.and_then(|c| Gcra::per_period(u64::from(c), 60_000, 0).ok()) else {
                return;
            };
            if n == 0 {
                return;
            }
            let _ = tat.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                let base = i128::from(t.max(now_us));
                let next = base + i128::from(n) * i128::from(g.emission_interval_us);
                Some(next.clamp(i128::from(now_us), i128::from(u64::MAX)) as u64)
            });
        };
        charge(&self.rpm_tat_us, rpm, requests);
        charge(&self.tpm_tat_us, tpm, tokens);
    }

    /// Release one in-flight slot. Saturates at zero, so a bug elsewhere can never make the
    /// count negative (LiteLLM #25323).
    pub(crate) fn release(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }

    /// The load the head last reported (`current_load`).
    #[inline]
    pub fn reported_load(&self) -> u32 {
        self.reported_load.load(Ordering::Relaxed)
    }

    /// The load used by load-aware strategies at `now_ms`: this instance's own in-flight count,
    /// plus the other instances' share of the head's last reported load, decayed with the age
    /// of the report.
    ///
    /// A report of `current_load` R received when this instance had `own₀` in flight says the
    /// other instances had R − own₀ there. Those requests finish at the endpoint's pace, so
    /// their expected remainder after `age` ms is (R − own₀)·e^(−age/τ), τ being the endpoint's
    /// latency EWMA (`default_latency_ms` before any sample). New requests from the other
    /// instances are spread evenly and add the same to every endpoint, so they do not change
    /// the comparison. Taking the stale report at face value instead makes every instance
    /// chase the same endpoint until the next report: the herding of RELIABILITY 10.
    #[inline]
    pub fn load_at(&self, now_ms: u64, default_latency_ms: f64) -> u32 {
        let own = self.in_flight();
        let reported = self.reported_load();
        if reported == 0 {
            return own;
        }
        let others = f64::from(reported.saturating_sub(self.in_flight_at_report.load(Ordering::Relaxed)));
        let age = now_ms.saturating_sub(self.load_report_ms.load(Ordering::Relaxed)) as f64;
        let tau = self.latency_ewma_ms().unwrap_or(default_latency_ms).max(1.0);
        let decayed = if age == 0.0 {
            others
        } else {
            others * (-age / tau).exp()
        };
        own.saturating_add(crate::num::round(decayed) as u32)
    }

    /// The reported status.
    #[inline]
    pub fn status(&self) -> HeadStatus {
        HeadStatus::from_u8(self.status.load(Ordering::Relaxed))
    }

    /// Apply a status report. Returns the previous status, or `None` when the report was older
    /// than the last applied one and was ignored.
    pub(crate) fn set_status(
        &self,
        status: HeadStatus,
        load: Option<u32>,
        ts_ms: u64,
        received_ms: u64,
    ) -> Option<HeadStatus> {
        let prev_ts = self.status_ts_ms.fetch_max(ts_ms, Ordering::AcqRel);
        if ts_ms < prev_ts {
            return None;
        }
        if let Some(l) = load {
            self.in_flight_at_report.store(self.in_flight(), Ordering::Relaxed);
            self.load_report_ms.store(received_ms, Ordering::Relaxed);
            self.reported_load.store(l, Ordering::Relaxed);
            self.sync(Summary::REPORTED, || self.reported_load() != 0);
        }
        let prev = HeadStatus::from_u8(self.status.swap(status.to_u8(), Ordering::AcqRel));
        self.sync(Summary::STATUS, || self.status() != HeadStatus::Healthy);
        Some(prev)
    }

    /// When the head was last heard from (registration, heartbeat or status report), Unix ms.
    pub fn last_seen_ms(&self) -> u64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }

    /// Record a sign of life. Returns whether the endpoint had been marked expired.
    pub(crate) fn touch(&self, now_ms: u64) -> bool {
        self.last_seen_ms.fetch_max(now_ms, Ordering::AcqRel);
        self.expired.swap(false, Ordering::AcqRel)
    }

    /// Whether the heartbeat deadline has passed (`ttl_ms` 0 disables heartbeats).
    #[inline]
    pub fn is_expired(&self, now_ms: u64, ttl_ms: u64) -> bool {
        ttl_ms != 0 && now_ms.saturating_sub(self.last_seen_ms()) > ttl_ms
    }

    /// Mark as expired; true only for the call that made the transition (one event per expiry).
    pub(crate) fn mark_expired(&self) -> bool {
        !self.expired.swap(true, Ordering::AcqRel)
    }

    /// Latency EWMA in ms, if any success was reported.
    #[inline]
    pub fn latency_ewma_ms(&self) -> Option<f64> {
        self.latency_ewma.get()
    }

    /// [`EndpointState::latency_ewma_ms`] as stored: NaN without a sample (a scan compares it
    /// with a bound without a test for the sample first).
    #[inline]
    pub(crate) fn latency_ewma_or_nan(&self) -> f64 {
        f64::from_bits(self.latency_ewma.0.load(Ordering::Relaxed))
    }

    /// Time-to-first-token EWMA in ms, if any was reported.
    pub fn ttft_ewma_ms(&self) -> Option<f64> {
        self.ttft_ewma.get()
    }

    /// Peak-EWMA latency at `now_ms` (tower's `PeakEwma`): jumps up to a slower sample at once,
    /// decays towards faster ones with time constant [`PEAK_EWMA_DECAY_MS`].
    pub fn peak_ewma_ms(&self, now_ms: u64) -> Option<f64> {
        let (v, ts) = self.peak_ewma_raw()?;
        Some(peak_decayed(v, ts, now_ms))
    }

    /// The peak-EWMA latency as last updated and when, ms, before decay (a scan bounds the
    /// decay without computing it; [`peak_decayed`] gives [`EndpointState::peak_ewma_ms`]).
    #[inline]
    pub(crate) fn peak_ewma_raw(&self) -> Option<(f64, u64)> {
        let v = self.peak_ewma.get()?;
        Some((v, self.peak_ts_ms.load(Ordering::Relaxed)))
    }

    /// Overwrite the success-rate EWMA (writers hold the endpoint's writer lock).
    fn set_success(&self, rate: f64) {
        self.success_ewma.set(rate);
        // The negation of the quick check's former `success_rate() >= 1.0`, NaN included.
        let failing = rate < 1.0 || rate.is_nan();
        // Lock holders are its only writers, so the bit can be read first and left alone
        // when it is right (the common case: no read-modify-write per report).
        if (self.summary.load(Ordering::Relaxed) & Summary::FAILURES != 0) != failing {
            self.sync(Summary::FAILURES, || failing);
        }
    }

    /// Set summary bit `bit` when `on()` (read after the field's write) says so, else clear it
    /// and check again: a writer racing this one either sees the bit cleared and sets it, or
    /// wrote before the check, which then sets it. So once the writers are done, the bit is set
    /// whenever its field is off the common case (at worst it stays set a while longer, which
    /// only sends the endpoint through the full check).
    fn sync(&self, bit: u32, on: impl Fn() -> bool) {
        if on() {
            self.summary.fetch_or(bit, Ordering::SeqCst);
        } else {
            self.summary.fetch_and(!bit, Ordering::SeqCst);
            if on() {
                self.summary.fetch_or(bit, Ordering::SeqCst);
            }
        }
    }

    /// The [`Summary`] bits: 0 when the reported status and the computed status are healthy,
    /// the success rate is 1 and no head reported a load (one load instead of four).
    #[inline(always)]
    pub(crate) fn summary(&self) -> u32 {
        self.summary.load(Ordering::Relaxed)
    }

    /// Success-rate EWMA in [0, 1] (endpoint failures only; client errors do not count).
    #[inline]
    pub fn success_rate(&self) -> f64 {
        self.success_ewma.get().unwrap_or(1.0)
    }

    /// Failures in a row, reset by a success.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Counters since registration: (requests, endpoint failures, tokens in, tokens out).
    pub fn totals(&self) -> (u64, u64, u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
            self.tokens_in.load(Ordering::Relaxed),
            self.tokens_out.load(Ordering::Relaxed),
        )
    }

    /// Fold an outcome into the statistics (not the in-flight count).
    pub(crate) fn record(&self, outcome: &crate::Outcome, now_ms: u64) {
        let _w = self.writer.lock();
        self.record_locked(outcome, now_ms);
    }

    /// A decision's report: give its in-flight slot back and fold its outcome in, under one
    /// hold of the writer lock. `released` is the decision's flag, set here; when it was set
    /// already (reported or released before), nothing changes and this returns false.
    pub(crate) fn release_and_record(&self, released: &GuardFlag, outcome: &crate::Outcome, now_ms: u64) -> bool {
        let w = self.writer.lock();
        if !take_flag(&w, released) {
            return false;
        }
        self.release();
        self.record_locked(outcome, now_ms);
        true
    }

    /// Give a decision's in-flight slot back unless its flag `released` says it was (the flag
    /// is set under the writer lock, as by [`EndpointState::release_and_record`]). Returns
    /// whether this call gave it back.
    pub(crate) fn release_once(&self, released: &GuardFlag) -> bool {
        let w = self.writer.lock();
        if !take_flag(&w, released) {
            return false;
        }
        self.release();
        true
    }

    /// A dropped decision's release: give its in-flight slot back unless its flag says it was.
    /// Nothing else can reach a decision being dropped, so the flag is read and set without
    /// the lock or an atomic operation (the report or release that set it happened before, on
    /// whatever thread, and the drop's exclusive borrow orders after it). Returns whether
    /// this call gave the slot back.
    #[inline]
    pub(crate) fn release_on_drop(&self, released: &mut GuardFlag) -> bool {
        if crate::sync::replace_mut(released, true) {
            return false;
        }
        self.release();
        true
    }

    fn record_locked(&self, outcome: &crate::Outcome, now_ms: u64) {
        bump(&self.requests, 1);
        bump(&self.tokens_in, outcome.tokens_in);
        bump(&self.tokens_out, outcome.tokens_out);
        let failed = outcome.is_endpoint_failure();
        if failed {
            bump(&self.failures, 1);
            let c = self.consecutive_failures.load(Ordering::Relaxed);
            self.consecutive_failures.store(c.saturating_add(1), Ordering::Relaxed);
        } else if outcome.is_success() {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if outcome.error.is_none() || failed {
            self.health_sample_locked(!failed, now_ms);
        }
        if outcome.is_success() {
            self.latency_sample_locked(outcome.latency_ms, now_ms);
            if let Some(t) = outcome.ttft_ms {
                let next = match self.ttft_ewma.get() {
                    None => t,
                    Some(o) => o + LATENCY_EWMA_ALPHA * (t - o),
                };
                self.ttft_ewma.set(next);
            }
        }
    }
}

/// The bits of [`EndpointState::summary`]: each says that one field keeps the endpoint off the
/// common case of a scan's eligibility check.
pub(crate) struct Summary;

impl Summary {
    /// The reported status is not healthy.
    pub(crate) const STATUS: u32 = 1;
    /// The computed status is not healthy.
    pub(crate) const COMPUTED: u32 = 2;
    /// The success rate is not 1 (below it, or NaN).
    pub(crate) const FAILURES: u32 = 4;
    /// A head reported a load (other instances' requests count).
    pub(crate) const REPORTED: u32 = 8;
}

/// Add `n` to a counter that only lock holders write.
#[inline]
fn bump(a: &AtomicU64, n: u64) {
    a.store(a.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Raise a timestamp that only lock holders write.
#[inline]
fn store_max(a: &AtomicU64, v: u64) {
    if v > a.load(Ordering::Relaxed) {
        a.store(v, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Outcome;

    /// What a scan's common case reads sits in the state's first cache line.
    #[test]
    fn the_common_case_reads_one_cache_line() {
        let s = EndpointState::new(0);
        let base = &s as *const EndpointState as usize;
        let offset = |p: *const u8| p as usize - base;
        for (name, at, size) in [
            ("in_flight", offset(&s.in_flight as *const _ as *const u8), 4),
            ("summary", offset(&s.summary as *const _ as *const u8), 4),
            ("latency_ewma", offset(&s.latency_ewma as *const _ as *const u8), 8),
            ("peak_ts_ms", offset(&s.peak_ts_ms as *const _ as *const u8), 8),
            ("last_seen_ms", offset(&s.last_seen_ms as *const _ as *const u8), 8),
            ("breaker state", offset(s.breaker.state_ptr()), 1),
            ("cooldown", offset(s.breaker.cooldown_ptr()), 8),
        ] {
            assert!(at + size <= 64, "{name} at {at}");
        }
    }

    /// The summary word is 0 exactly when the four fields it stands for are in the common case.
    #[test]
    fn summary_follows_its_fields() {
        let s = EndpointState::new(0);
        let common = |s: &EndpointState| {
            s.status() == HeadStatus::Healthy
                && s.health_status() == HeadStatus::Healthy
                && s.success_rate() >= 1.0
                && s.reported_load() == 0
        };
        let check = |s: &EndpointState| assert_eq!(s.summary() == 0, common(s), "{:b}", s.summary());
        check(&s);
        s.set_status(HeadStatus::Degraded, None, 1, 1);
        check(&s);
        s.set_status(HeadStatus::Healthy, Some(3), 2, 2);
        check(&s);
        s.set_status(HeadStatus::Healthy, Some(0), 3, 3);
        check(&s);
        s.record(&Outcome::from_status(503, 1.0, None), 4);
        check(&s);
        s.set_health_status(HeadStatus::Unhealthy);
        check(&s);
        s.set_success_rate(1.0, 5);
        check(&s);
        s.set_health_status(HeadStatus::Healthy);
        check(&s);
        s.health_sample(false, 6);
        check(&s);
        for k in 0..2_000 {
            s.record(&Outcome::success(10.0), 7 + k);
        }
        check(&s);
    }

    #[test]
    fn the_one_millisecond_weight_is_exp() {
        assert_eq!(PEAK_EWMA_ONE_MS, (-1.0 / PEAK_EWMA_DECAY_MS).exp());
        assert_eq!(peak_decay(1), PEAK_EWMA_ONE_MS);
        assert_eq!(peak_decay(0), 1.0);
    }

    /// The tables' product is `exp()` to within a few units in the last place plus what the
    /// rounding of `exp()`'s own argument x = -t/τ moves it by (a relative |x|·ε), at every
    /// elapsed time, and 0 where `exp()` is.
    #[test]
    fn the_peak_decay_is_exp_within_a_few_ulps() {
        let mut e = 0u64;
        while e < 2 * DECAY_SPAN_MS {
            let x = e as f64 / PEAK_EWMA_DECAY_MS;
            let exact = (-x).exp();
            let d = peak_decay(e);
            assert!(
                (d - exact).abs() <= exact * (4.0 + x) * f64::EPSILON,
                "{e}: {d} against {exact}"
            );
            e += 1 + e / 97;
        }
        assert_eq!((-(DECAY_SPAN_MS as f64) / PEAK_EWMA_DECAY_MS).exp(), 0.0);
    }

    #[test]
    fn in_flight_saturates_at_zero() {
        let s = EndpointState::new(0);
        s.release();
        assert_eq!(s.in_flight(), 0);
        s.acquire();
        s.acquire();
        s.release();
        assert_eq!(s.in_flight(), 1);
    }

    #[test]
    fn stale_status_reports_are_ignored() {
        let s = EndpointState::new(0);
        assert_eq!(
            s.set_status(HeadStatus::Degraded, Some(3), 2_000, 0),
            Some(HeadStatus::Healthy)
        );
        assert_eq!(s.set_status(HeadStatus::Unhealthy, Some(9), 1_000, 0), None);
        assert_eq!(s.status(), HeadStatus::Degraded);
        assert_eq!(s.reported_load(), 3);
        assert_eq!(s.load_at(0, 500.0), 3);
        assert_eq!(s.load_at(500, 500.0), 1, "3·e^-1 ≈ 1.1");
        s.acquire();
        assert_eq!(s.load_at(5_000, 500.0), 1, "own in-flight stays exact");
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays() {
        let s = EndpointState::new(0);
        s.record(&Outcome::success(100.0), 0);
        s.record(&Outcome::success(500.0), 10);
        assert_eq!(s.peak_ewma_ms(10), Some(500.0));
        let later = s.peak_ewma_ms(10_010).unwrap();
        assert!((later - 500.0 / std::f64::consts::E).abs() < 1e-6, "{later}");
        s.record(&Outcome::success(100.0), 10_010);
        assert!(s.peak_ewma_ms(10_010).unwrap() < later);
        assert!(s.latency_ewma_ms().unwrap() > 100.0);
    }

    #[test]
    fn client_errors_do_not_hurt_health() {
        let s = EndpointState::new(0);
        s.record(&Outcome::from_status(404, 1.0, None), 0);
        assert_eq!(s.success_rate(), 1.0);
        assert_eq!(s.consecutive_failures(), 0);
        s.record(&Outcome::from_status(503, 1.0, None), 0);
        assert!(s.success_rate() < 1.0);
        assert_eq!(s.consecutive_failures(), 1);
        assert_eq!(s.totals(), (2, 1, 0, 0));
    }

    #[test]
    fn expiry_is_one_transition() {
        let s = EndpointState::new(0);
        assert!(!s.is_expired(1_000, 1_000));
        assert!(s.is_expired(1_001, 1_000));
        assert!(!s.is_expired(1_001_000, 0));
        assert!(s.mark_expired());
        assert!(!s.mark_expired());
        assert!(s.touch(2_000));
        assert!(!s.is_expired(2_500, 1_000));
    }
}
