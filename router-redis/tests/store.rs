//! Store-level tests against a real redis-server: shared counters, GCRA, scripts, failures.

#[macro_use]
mod common;

use common::*;
use router_core::limits::Gcra;
use router_core::{StateStore, StoreStatus};
use router_redis::{FailMode, RedisConfig, RedisStore};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const BUDGET: i64 = 1_000_000; // $1.00 in micro-dollars

fn get(b: &dyn Backend, key: &str) -> Option<i64> {
    get_int(b, key)
}

on_both!(
    strict_budget,
    strict_budget_never_overshoots_across_three_instances,
    strict_budget_never_overshoots_on_a_cluster
);

/// RELIABILITY 17, strict: $1.00 spent by 3 instances at once never exceeds $1.00.
fn strict_budget(srv: &dyn Backend) {
    let p = prefix("strict");
    let stores: Vec<_> = (0..3).map(|_| store(&srv.url(), &p)).collect();
    let admitted = Arc::new(AtomicI64::new(0));
    let barrier = Arc::new(Barrier::new(6));
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let s = stores[t % 3].clone();
            let (admitted, barrier) = (admitted.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut denied_in_a_row = 0;
                let mut i = 0u64;
                while denied_in_a_row < 20 {
                    // Costs 1,000-9,000 micro-dollars.
                    let cost = 1_000 + ((i * 7_919 + t as u64 * 104_729) % 9) as i64 * 1_000;
                    i += 1;
                    let r = s.try_add("{ws:w1}:budget:daily", cost, BUDGET, 0).unwrap();
                    assert!(r.total <= BUDGET);
                    if r.admitted {
                        admitted.fetch_add(cost, Ordering::SeqCst);
                        denied_in_a_row = 0;
                    } else {
                        denied_in_a_row += 1;
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let spent = admitted.load(Ordering::SeqCst);
    let stored = get(srv, &format!("{p}{{ws:w1}}:budget:daily")).unwrap();
    assert_eq!(stored, spent, "Redis holds exactly what was admitted");
    assert!(spent <= BUDGET, "spent {spent}");
    assert!(spent > BUDGET - 9_000, "the budget was used up: {spent}");
}

on_both!(
    batched_adds,
    batched_adds_from_three_instances_total_exactly,
    batched_adds_total_exactly_on_a_cluster
);

/// RELIABILITY 17, batched: adds from 3 instances total exactly after flush; each instance's
/// view is within the documented bound before.
fn batched_adds(srv: &dyn Backend) {
    let p = prefix("batched");
    let stores: Vec<_> = (0..3).map(|_| store(&srv.url(), &p)).collect();
    let expires = router_core_now_ms() + 3_600_000;
    let threads: Vec<_> = stores
        .iter()
        .cloned()
        .enumerate()
        .map(|(t, s)| {
            std::thread::spawn(move || {
                let mut sum = 0;
                for i in 0..3_000 {
                    let d = 1 + (i % 7) as i64 + t as i64;
                    s.add("{ws:w2}:spend", d, expires).unwrap();
                    s.add("{ws:other}:spend", 1, expires).unwrap();
                    sum += d;
                    if i % 500 == 0 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                sum
            })
        })
        .collect();
    let total: i64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    for s in &stores {
        assert!(s.flush(Duration::from_secs(5)));
    }
    assert_eq!(get(srv, &format!("{p}{{ws:w2}}:spend")), Some(total));
    assert_eq!(get(srv, &format!("{p}{{ws:other}}:spend")), Some(9_000));
    // Every instance reads the global total once a flush refreshed it.
    for s in &stores {
        s.get("{ws:w2}:spend").unwrap();
        assert!(s.flush(Duration::from_secs(5)));
        assert!(eventually(Duration::from_secs(2), || s.get("{ws:w2}:spend").unwrap() == total).is_some());
    }
    // The key expires at the absolute time given.
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{p}{{ws:w2}}:spend"))
        .query(&mut srv.conn())
        .unwrap();
    assert!(pttl > 3_500_000 && pttl <= 3_600_000, "pttl {pttl}");
}

fn router_core_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

on_both!(
    shared_gcra,
    shared_gcra_admits_the_limit_with_skewed_clocks,
    shared_gcra_admits_the_limit_on_a_cluster
);

/// RELIABILITY 16: 3 instances share a 100/min GCRA limit on Redis TIME: 100 ± 1 admitted,
/// whatever the instances' own clocks say (skewed ±5 s).
fn shared_gcra(srv: &dyn Backend) {
    let p = prefix("gcra");
    let stores: Vec<_> = (0..3).map(|_| store(&srv.url(), &p)).collect();
    let g = Gcra::per_period(100, 60_000, 100).unwrap();
    let admitted = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(3));
    let now_us = router_core_now_ms() * 1000;
    let skews: [i64; 3] = [-5_000_000, 0, 5_000_000];
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let (s, admitted, barrier) = (stores[t].clone(), admitted.clone(), barrier.clone());
            let skewed = (now_us as i64 + skews[t]) as u64;
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..80 {
                    if s.gcra("{ws:w3}:rpm", g, 1, false, skewed).unwrap().allowed {
                        admitted.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    for t in threads {
        t.join().unwrap();
    }
    let n = admitted.load(Ordering::SeqCst);
    // One more unit is earned every 600 ms.
    let refills = (t0.elapsed().as_millis() / 600) as u64;
    assert!((100..=101 + refills).contains(&n), "admitted {n} (refills {refills})");
    let v = stores[0].gcra("{ws:w3}:rpm", g, 1, false, 0).unwrap();
    assert!(!v.allowed);
    assert!(v.retry_after_us > 0 && v.retry_after_us <= 600_000, "{v:?}");
    // Oversized requests never pass; charge-only counts without checking.
    let v = stores[1].gcra("{ws:w3}:rpm", g, 101, false, 0).unwrap();
    assert_eq!(v.retry_after_us, u64::MAX);
    let v = stores[2].gcra("{ws:w3b}:tpm", g, 150, true, 0).unwrap();
    assert!(v.allowed);
    assert!(v.retry_after_us > 29_000_000 && v.retry_after_us <= 30_000_000, "{v:?}");
}

on_both!(
    noscript,
    noscript_after_script_flush_never_reaches_a_caller,
    noscript_never_reaches_a_caller_on_a_cluster
);

/// The script cache empties on restart, failover or SCRIPT FLUSH: NOSCRIPT never reaches a
/// caller, through single calls or the writer's pipelines.
fn noscript(srv: &dyn Backend) {
    let p = prefix("noscript");
    let s = store(&srv.url(), &p);
    ready(&s);
    let g = Gcra::per_period(10, 1_000, 10).unwrap();
    for round in 0..3 {
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut srv.conn()).unwrap();
        assert!(s.try_add("{ws:n}:b", 1, 100, 0).unwrap().admitted, "round {round}");
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut srv.conn()).unwrap();
        assert!(s.gcra("{ws:n}:r", g, 1, false, 0).unwrap().allowed);
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut srv.conn()).unwrap();
        s.add("{ws:n}:batched", 5, 0).unwrap();
        assert!(s.flush(Duration::from_secs(5)));
    }
    assert_eq!(get(srv, &format!("{p}{{ws:n}}:b")), Some(3));
    assert_eq!(get(srv, &format!("{p}{{ws:n}}:batched")), Some(15));
    let h = s.health();
    assert_eq!(h.write_errors, 0);
    assert_eq!(h.status, StoreStatus::Healthy);
}

/// RELIABILITY 18: a flush that timed out after Redis applied it is replayed with the same id
/// and not applied twice.
#[test]
fn a_flush_that_timed_out_after_being_applied_is_not_applied_twice() {
    let srv = RedisServer::start();
    let proxy = Proxy::start(srv.port);
    let p = prefix("replay");
    let cfg = config(&proxy.url(), &p).with_timeout(Duration::from_millis(60));
    let s = Arc::new(RedisStore::connect(cfg).unwrap());
    ready(&s);
    s.add("{ws:r}:spend", 10, 0).unwrap();
    assert!(s.flush(Duration::from_secs(2)));
    // Redis receives and applies the next flush; its reply is lost.
    proxy.swallow_replies(true);
    s.add("{ws:r}:spend", 7, 0).unwrap();
    assert!(
        eventually(Duration::from_secs(2), || get(&srv, &format!("{p}{{ws:r}}:spend"))
            == Some(17))
        .is_some(),
        "Redis applied the flush"
    );
    assert!(eventually(Duration::from_secs(2), || !s.health().connected).is_some());
    assert!(matches!(s.status(), StoreStatus::Degraded { .. }));
    s.add("{ws:r}:spend", 1, 0).unwrap();
    proxy.swallow_replies(false);
    assert!(s.flush(Duration::from_secs(5)), "{:?}", s.health());
    assert_eq!(
        get(&srv, &format!("{p}{{ws:r}}:spend")),
        Some(18),
        "7 applied once, 1 once"
    );
    let h = s.health();
    assert!(h.replayed_flushes >= 1, "{h:?}");
    assert!(eventually(Duration::from_secs(2), || s.status() == StoreStatus::Healthy).is_some());
}

/// Redis unreachable: strict counters follow the fail mode, and no call waits past the
/// timeout even when Redis accepts connections and never answers.
#[test]
fn unreachable_redis_fails_open_or_closed_within_the_timeout() {
    let timeout = Duration::from_millis(80);
    // Nothing listens on this port.
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let closed = RedisStore::connect(
        RedisConfig::new(&dead)
            .with_timeout(timeout)
            .with_fail_mode(FailMode::Closed),
    )
    .unwrap();
    let e = closed.try_add("{ws:x}:b", 1, 10, 0).unwrap_err();
    assert_eq!(e.kind(), "store");
    let g = Gcra::per_period(2, 1_000, 2).unwrap();
    assert_eq!(closed.gcra("{ws:x}:r", g, 1, false, 0).unwrap_err().kind(), "store");
    let open = RedisStore::connect(RedisConfig::new(&dead).with_timeout(timeout)).unwrap();
    assert!(open.try_add("{ws:x}:b", 6, 10, 0).unwrap().admitted);
    assert!(!open.try_add("{ws:x}:b", 6, 10, 0).unwrap().admitted, "counted locally");
    assert!(open.gcra("{ws:x}:r", g, 2, false, 0).unwrap().allowed);
    assert!(!open.gcra("{ws:x}:r", g, 1, false, 0).unwrap().allowed, "local limiter");
    assert!(matches!(open.status(), StoreStatus::Degraded { .. }));

    // A Redis that swallows every reply: calls end at the timeout.
    let srv = RedisServer::start();
    let proxy = Proxy::start(srv.port);
    let s = RedisStore::connect(
        config(&proxy.url(), &prefix("hang"))
            .with_timeout(timeout)
            .with_fail_mode(FailMode::Closed),
    )
    .unwrap();
    ready(&s);
    proxy.swallow_replies(true);
    let mut worst = Duration::ZERO;
    let mut timed = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        worst = worst.max(t.elapsed());
    };
    for _ in 0..5 {
        timed(&mut || assert!(s.try_add("{ws:h}:b", 1, 10, 0).is_err()));
        timed(&mut || assert!(s.gcra("{ws:h}:r", g, 1, false, 0).is_err()));
        timed(&mut || assert!(s.add("{ws:h}:c", 1, 0).is_ok()));
    }
    assert!(worst <= timeout + Duration::from_millis(20), "worst {worst:?}");
    assert!(eventually(timeout * 3, || matches!(s.status(), StoreStatus::Degraded { .. })).is_some());
}

#[test]
fn invalid_configuration_is_named() {
    let e = RedisStore::connect(RedisConfig::new("not a url")).unwrap_err();
    assert_eq!(e.field(), Some("url"));
    let e = RedisStore::connect(RedisConfig::new("redis://127.0.0.1:1").with_prefix("a{b}")).unwrap_err();
    assert_eq!(e.field(), Some("prefix"));
}
