//! RELIABILITY 18: redis-server killed (`kill -9`) under ~1,000 decisions/s across 3
//! instances, then restarted on the same port: no decision fails, no store call blocks past the
//! timeout, a degraded event arrives within 2× the timeout, and every queued increment is
//! applied exactly once (totals exact).
//!
//! The default run kills Redis for 2 s; `outage_of_10_seconds` (ignored: ~13 s) is the full
//! length of the reliability check: `cargo test -p router-redis --test outage -- --ignored`.

#[macro_use]
mod common;

use common::*;
use router_core::{Event, Outcome, StateStore, StoreStatus};
use router_redis::RedisStore;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const TIMEOUT: Duration = Duration::from_millis(100);
/// Scheduling slack on a shared 2-core machine.
const SLACK: Duration = Duration::from_millis(30);

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

#[derive(Default)]
struct Tally {
    decisions: u64,
    failed: u64,
    added: i64,
    worst_store_call: Duration,
    latencies_us: Vec<u64>,
}

fn run(outage: Duration) {
    let mut srv = RedisServer::start_persistent();
    let p = prefix("outage");
    let fleet: Vec<_> = (0..3)
        .map(|_| {
            let s = Arc::new(RedisStore::connect(config(&srv.url(), &p).with_timeout(TIMEOUT)).unwrap());
            let r = router(&s, policy(4));
            ready(&s);
            let events = r.events().subscribe(1_024, false);
            (s, r, events)
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = fleet
        .iter()
        .enumerate()
        .map(|(i, (s, r, _))| {
            let (s, r, stop) = (s.clone(), r.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut t = Tally::default();
                let start = Instant::now();
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    // ~333 decisions/s per instance.
                    let due = start + Duration::from_micros(n * 3_000);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    n += 1;
                    let t0 = Instant::now();
                    let decided = r.route(&req());
                    t.latencies_us.push(t0.elapsed().as_micros() as u64);
                    t.decisions += 1;
                    match decided {
                        Ok(d) => {
                            r.report(&d, Outcome::success(20.0)).unwrap();
                        }
                        Err(_) => t.failed += 1,
                    }
                    // Spend recorded on a batched counter, plus a strict check now and then.
                    let cost = 1 + (n % 5) as i64 + i as i64;
                    let c0 = Instant::now();
                    s.add("{ws:o}:spend", cost, 0).unwrap();
                    t.added += cost;
                    if n.is_multiple_of(10) {
                        let _ = s.try_add("{ws:o}:strict", 1, i64::MAX, 0);
                    }
                    t.worst_store_call = t.worst_store_call.max(c0.elapsed());
                }
                t
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(1_000));
    let killed_at = unix_ms();
    srv.kill9();
    std::thread::sleep(outage);
    srv.restart();
    std::thread::sleep(Duration::from_millis(1_000));
    stop.store(true, Ordering::SeqCst);
    let tallies: Vec<Tally> = workers.into_iter().map(|w| w.join().unwrap()).collect();

    for (s, _, _) in &fleet {
        assert!(s.flush(Duration::from_secs(5)), "not flushed: {:?}", s.health());
    }
    let decisions: u64 = tallies.iter().map(|t| t.decisions).sum();
    let failed: u64 = tallies.iter().map(|t| t.failed).sum();
    let added: i64 = tallies.iter().map(|t| t.added).sum();
    let worst = tallies.iter().map(|t| t.worst_store_call).max().unwrap();
    let mut lat: Vec<u64> = tallies.iter().flat_map(|t| t.latencies_us.iter().copied()).collect();
    lat.sort_unstable();
    let p99 = lat[lat.len() * 99 / 100];
    let stored: i64 = redis::cmd("GET")
        .arg(format!("{p}{{ws:o}}:spend"))
        .query(&mut srv.con())
        .unwrap();
    let mut degraded_after = Vec::new();
    for (s, _, events) in &fleet {
        // A flush needs only the writer back; the recovery (writer and subscriber) can come
        // later on a loaded machine, so its event is waited for.
        let mut evs: Vec<Event> = Vec::new();
        let recovered = eventually(Duration::from_secs(10), || {
            evs.extend(std::iter::from_fn(|| events.try_recv()));
            evs.iter().any(|e| matches!(e, Event::StoreRecovered { .. }))
        });
        let degraded = evs.iter().find_map(|e| match e {
            Event::StoreDegraded { at_ms, .. } => Some(*at_ms),
            _ => None,
        });
        let at = degraded.expect("a store_degraded event");
        assert!(recovered.is_some(), "a store_recovered event: {:?}", s.health());
        degraded_after.push(at.saturating_sub(killed_at));
        assert_eq!(s.status(), StoreStatus::Healthy);
        assert_eq!(s.health().overflow, 0);
    }
    eprintln!(
        "outage {outage:?}: {decisions} decisions, {failed} failed, decision p99 {p99} µs, \
         worst store call {worst:?}, degraded after {degraded_after:?} ms, added {added}, stored {stored}"
    );
    assert_eq!(failed, 0, "no decision fails");
    assert!(
        decisions as f64 >= 0.8 * 1_000.0 * (2.0 + outage.as_secs_f64()),
        "{decisions} decisions"
    );
    assert!(worst <= TIMEOUT + SLACK, "a store call took {worst:?}");
    for d in degraded_after {
        assert!(d as u128 <= (2 * TIMEOUT + SLACK).as_millis(), "degraded after {d} ms");
    }
    assert_eq!(stored, added, "every increment applied exactly once");
}

#[test]
fn redis_killed_for_2_seconds_under_load_loses_nothing() {
    run(Duration::from_secs(2));
}

#[test]
#[ignore = "13 s: the full-length check of RELIABILITY 18"]
fn outage_of_10_seconds() {
    run(Duration::from_secs(10));
}
