//! RELIABILITY 20: loom models of the in-flight guard, the breaker, the flush queue's counter
//! cells and the snapshot swap.
//!
//! Built only with `RUSTFLAGS="--cfg loom"`, where the protocols' atomics are loom's
//! ([`crate::sync`]), so loom explores every interleaving of the code the decision path runs:
//!
//! - the in-flight guard: an endpoint's in-flight count and writer lock, a decision's
//!   `released` flag; a report ([`EndpointState::release_and_record`]), a cancel
//!   ([`EndpointState::release_once`]) and the decision's drop
//!   ([`EndpointState::release_on_drop`]), against each other and against new decisions on the
//!   same endpoint;
//! - the breaker: callers racing for half-open permits, and a probe racing a trip;
//! - the flush queue's and the budgets' counter cells: additions racing a store taking their
//!   deltas; reservations racing for a budget's last room;
//! - the snapshot swap: [`Registry::mutate`] stores a snapshot and publishes its generation;
//!   [`Registry::with`] runs on the thread's cached snapshot while its generation is the one
//!   published, and loads the serving one otherwise (`arc-swap` is replaced by a loom mutex
//!   over the `Arc`: loom cannot see arc-swap's own atomics, and a load or store being one
//!   step is what arc-swap guarantees).
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom \
//!     cargo test -p router-core --lib --release loom_models
//! ```

use loom::sync::Arc;
use loom::thread;

use super::writer_lock::WriterLock;
use super::{CounterCell, EndpointState};
use crate::breaker::{Breaker, BreakerConfig, BreakerState};
use crate::registry::Registry;
use crate::sync::{AtomicBool, AtomicU32};
use crate::Outcome;
use crate::RouterConfig;
use std::sync::atomic::Ordering;

/// A report and a cancel race for one decision, which is dropped after both: exactly one of
/// the three gives the in-flight slot back, the count ends at zero, and the report's
/// statistics count exactly when the report won.
#[test]
fn report_cancel_and_drop_give_the_slot_back_once() {
    loom::model(|| {
        let st = Arc::new(EndpointState::new(0));
        st.acquire();
        let flag = Arc::new(AtomicBool::new(false));
        let reporter = {
            let (st, flag) = (st.clone(), flag.clone());
            thread::spawn(move || st.release_and_record(&flag, &Outcome::success(10.0), 1))
        };
        let canceller = {
            let (st, flag) = (st.clone(), flag.clone());
            thread::spawn(move || st.release_once(&flag))
        };
        let reported = reporter.join().expect("reporter");
        let cancelled = canceller.join().expect("canceller");
        let mut flag = Arc::try_unwrap(flag).expect("the decision's flag, alone");
        let dropped = st.release_on_drop(&mut flag);
        assert_eq!(
            u32::from(reported) + u32::from(cancelled) + u32::from(dropped),
            1,
            "reported {reported}, cancelled {cancelled}, dropped {dropped}"
        );
        assert!(!dropped, "one of the two racing calls always wins");
        assert_eq!(st.in_flight(), 0);
        assert_eq!(
            st.totals().0,
            u64::from(reported),
            "the report's statistics count iff it won"
        );
    });
}

/// Two decisions on one endpoint, each finished on its own thread (one reported, one
/// cancelled and then dropped) while a third is routed to the endpoint: the count never
/// loses or doubles a slot and ends at the one decision still held.
#[test]
fn concurrent_decisions_keep_the_count_exact() {
    loom::model(|| {
        let st = Arc::new(EndpointState::new(0));
        st.acquire();
        st.acquire();
        let first = Arc::new(AtomicBool::new(false));
        let second = AtomicBool::new(false);
        let a = {
            let (st, flag) = (st.clone(), first.clone());
            thread::spawn(move || assert!(st.release_and_record(&flag, &Outcome::success(5.0), 1)))
        };
        let b = {
            let (st, mut flag) = (st.clone(), second);
            thread::spawn(move || {
                assert!(st.release_once(&flag));
                assert!(!st.release_on_drop(&mut flag), "released already");
            })
        };
        // A third decision, routed meanwhile.
        st.acquire();
        a.join().expect("first");
        b.join().expect("second");
        assert_eq!(st.in_flight(), 1);
        let mut third = AtomicBool::new(false);
        assert!(st.release_on_drop(&mut third));
        assert_eq!(st.in_flight(), 0);
        drop(first);
    });
}

/// The writer lock excludes: two writers' load-then-store increments, each under the lock,
/// lose nothing, and the lock is free after both.
#[test]
fn the_writer_lock_serialises_writers() {
    loom::model(|| {
        let lock = Arc::new(WriterLock::default());
        let n = Arc::new(AtomicU32::new(0));
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let (lock, n) = (lock.clone(), n.clone());
                thread::spawn(move || {
                    let _held = lock.lock();
                    n.store(n.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                })
            })
            .collect();
        for w in writers {
            w.join().expect("writer");
        }
        assert_eq!(n.load(Ordering::Relaxed), 2);
        drop(lock.lock());
    });
}

/// A reader routes while the configuration changes: its snapshots never go back a generation,
/// and once it has seen the change published (through anything that orders after
/// `Registry::mutate`, here a flag) it runs on the new snapshot, not on the one its thread
/// cached before.
#[test]
fn readers_follow_the_published_snapshot() {
    loom::model(|| {
        let registry = Arc::new(Registry::new(RouterConfig::default()).expect("a valid configuration"));
        let changed = Arc::new(AtomicBool::new(false));
        let writer = {
            let (registry, changed) = (registry.clone(), changed.clone());
            thread::spawn(move || {
                registry.mutate(1, |_| Ok(())).expect("a change");
                changed.store(true, Ordering::Release);
            })
        };
        let reader = {
            let (registry, changed) = (registry.clone(), changed.clone());
            thread::spawn(move || {
                let first = registry.with(|s| s.generation);
                let seen = changed.load(Ordering::Acquire);
                let second = registry.with(|s| s.generation);
                assert!(second >= first, "went back from {first} to {second}");
                if seen {
                    assert_eq!(second, 1, "the change was seen, its snapshot was not");
                }
            })
        };
        writer.join().expect("writer");
        reader.join().expect("reader");
        assert_eq!(registry.with(|s| s.generation), 1);
        assert_eq!(registry.load().generation, 1);
    });
}

/// A breaker configuration that opens on two failures out of two calls and admits one probe.
fn one_permit() -> BreakerConfig {
    BreakerConfig {
        window_size: 2,
        min_calls: 2,
        half_open_permits: 1,
        jitter: 0.0,
        ..BreakerConfig::default()
    }
}

/// Record `n` failed calls at `now_ms`.
fn fail(breaker: &Breaker, cfg: &BreakerConfig, n: usize, now_ms: u64) {
    for _ in 0..n {
        breaker.on_call(true, 10.0, false, 0, now_ms, cfg, || true, || 0.5);
    }
}

/// A time after any open duration of `cfg` has run out.
fn past_any_open_duration(cfg: &BreakerConfig) -> u64 {
    10 * cfg.max_open_duration_ms.max(cfg.open_duration_ms)
}

/// RELIABILITY 3 under every interleaving: an expired open breaker with one half-open permit,
/// two threads trying to probe at once: exactly one probe is admitted.
#[test]
fn half_open_admits_exactly_its_permits() {
    loom::model(|| {
        let cfg = one_permit();
        let breaker = Arc::new(Breaker::default());
        fail(&breaker, &cfg, 2, 0);
        assert_eq!(breaker.state(), BreakerState::Open);
        let now = past_any_open_duration(&cfg);
        let probes: Vec<_> = (0..2)
            .map(|_| {
                let (breaker, cfg) = (breaker.clone(), cfg.clone());
                thread::spawn(move || breaker.try_probe(now, &cfg).0)
            })
            .collect();
        let admitted: u32 = probes.into_iter().map(|p| u32::from(p.join().expect("probe"))).sum();
        assert_eq!(admitted, 1, "one permit, {admitted} probes admitted");
    });
}

/// A breaker trips while another thread tries to probe it: the prober is never admitted
/// before the new open duration is over (it must not read the new open state with the old,
/// expired deadline).
#[test]
fn a_breaker_tripping_is_not_probed_before_its_deadline() {
    loom::model(|| {
        let cfg = one_permit();
        let breaker = Arc::new(Breaker::default());
        fail(&breaker, &cfg, 1, 0);
        assert_eq!(breaker.state(), BreakerState::Closed);
        let now = 1_000;
        let tripper = {
            let (breaker, cfg) = (breaker.clone(), cfg.clone());
            thread::spawn(move || breaker.on_call(true, 10.0, false, 0, now, &cfg, || true, || 0.5))
        };
        let prober = {
            let (breaker, cfg) = (breaker.clone(), cfg.clone());
            thread::spawn(move || breaker.try_probe(now, &cfg).0)
        };
        assert!(
            tripper.join().expect("tripper").is_some(),
            "the second failure trips it"
        );
        assert!(
            !prober.join().expect("prober"),
            "probed before the open duration was over"
        );
        assert_eq!(breaker.state(), BreakerState::Open);
    });
}

/// The flush queue's cell: two instances' worth of additions (a plain add and a limited one)
/// race a store's flush taking the pending deltas twice, and a rebase from the shared total:
/// no delta is lost or sent twice, and the view is the start, plus every addition, plus the
/// rebase.
#[test]
fn a_flush_takes_every_delta_once() {
    loom::model(|| {
        let cell = Arc::new(CounterCell::tracking(100));
        let adder = {
            let cell = cell.clone();
            thread::spawn(move || {
                cell.add(3);
                cell.add(-1);
            })
        };
        let limited = {
            let cell = cell.clone();
            thread::spawn(move || u64::from(cell.try_add(5, 1_000).admitted))
        };
        let flusher = {
            let cell = cell.clone();
            thread::spawn(move || {
                let first = cell.take_pending();
                cell.rebase(10);
                first + cell.take_pending()
            })
        };
        adder.join().expect("adder");
        let admitted = limited.join().expect("limited") as i64;
        let flushed = flusher.join().expect("flusher");
        assert_eq!(admitted, 1, "far below the limit");
        let added = 3 - 1 + 5;
        assert_eq!(flushed + cell.take_pending(), added, "every delta flushed once");
        assert_eq!(cell.value(), 100 + added + 10);
    });
}

/// A budget's reservation counter near its limit (RELIABILITY 17 on one instance): two
/// decisions reserve at once where only one fits, and an earlier decision gives its
/// reservation back meanwhile. Exactly one is admitted whatever the order, no admission sees a
/// total above the limit, and the total ends at what is still reserved.
#[test]
fn reservations_never_overshoot_the_limit() {
    loom::model(|| {
        let cell = Arc::new(CounterCell::new(0));
        assert!(cell.try_add(30, 100).admitted);
        let reservers: Vec<_> = (0..2)
            .map(|_| {
                let cell = cell.clone();
                thread::spawn(move || {
                    let t = cell.try_add(60, 100);
                    assert!(!t.admitted || t.total <= 100, "admitted at {}", t.total);
                    t.admitted
                })
            })
            .collect();
        let releaser = {
            let cell = cell.clone();
            thread::spawn(move || cell.add(-30))
        };
        let mut admitted = 0;
        for r in reservers {
            admitted += i64::from(r.join().expect("reserver"));
        }
        releaser.join().expect("releaser");
        assert_eq!(admitted, 1);
        assert_eq!(cell.value(), 60);
    });
}

/// RELIABILITY 5 under every interleaving: a half-open breaker with one permit; a probe is
/// dropped without a report (its permit goes back) while another caller tries to probe. The
/// permit is never lost or doubled: at the end it is either free or held by the second
/// caller, and no more probes are out than were taken.
#[test]
fn a_dropped_probe_gives_its_permit_back() {
    loom::model(|| {
        let cfg = one_permit();
        let breaker = Arc::new(Breaker::default());
        fail(&breaker, &cfg, 2, 0);
        let now = past_any_open_duration(&cfg);
        assert!(breaker.try_probe(now, &cfg).0, "the first probe");
        let dropper = {
            let breaker = breaker.clone();
            thread::spawn(move || breaker.release_probe())
        };
        let second = {
            let (breaker, cfg) = (breaker.clone(), cfg.clone());
            thread::spawn(move || breaker.try_probe(now, &cfg).0)
        };
        dropper.join().expect("dropper");
        let took = second.join().expect("second");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        let (permits, out) = breaker.probe_counts();
        assert_eq!(
            permits + out,
            1,
            "permits {permits}, probes out {out}, second took {took}"
        );
        assert_eq!(out, u32::from(took));
    });
}
