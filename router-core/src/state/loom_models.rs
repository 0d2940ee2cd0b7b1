//! RELIABILITY 20: loom models of the in-flight guard.
//!
//! Built only with `RUSTFLAGS="--cfg loom"`, where the guard's atomics (an endpoint's in-flight
//! count and writer lock, a decision's `released` flag) are loom's ([`crate::sync`]), so loom
//! explores every interleaving of the code the decision path runs: a report
//! ([`EndpointState::release_and_record`]), a cancel ([`EndpointState::release_once`]) and the
//! decision's drop ([`EndpointState::release_on_drop`]), against each other and against new
//! decisions on the same endpoint.
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom \
//!     cargo test -p router-core --lib --release loom_models
//! ```

use loom::sync::Arc;
use loom::thread;

use super::writer_lock::WriterLock;
use super::EndpointState;
use crate::sync::{AtomicBool, AtomicU32};
use crate::Outcome;
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
