//! Issue 10: the store on a real Redis Cluster (3 masters, 3 replicas, started by the test
//! harness): key slots, and a master killed under load.
//!
//! The tests shared with one Redis (store, routers, processes, accounting) run on the cluster
//! from their own files (`..._on_a_cluster`).

#[macro_use]
mod common;

use common::*;
use router_core::{Event, Outcome, Policy, RouteRequest, StateStore, StoreStatus};
use router_redis::RedisStore;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let len = key[open + 1..].find('}')?;
    (len > 0).then(|| &key[open + 1..open + 1 + len])
}

/// Every key under `p` on every master, with the master's port.
fn keys_by_master(c: &RedisCluster, p: &str) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    let masters: BTreeSet<u16> = [0u16, 5_500, 11_000].iter().map(|&s| c.master_of(s)).collect();
    for port in masters {
        let mut con = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .get_connection()
            .unwrap();
        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{p}*")).query(&mut con).unwrap();
        out.extend(keys.into_iter().map(|k| (port, k)));
    }
    out
}

/// The keys of one workspace (budget counters, flush ids) share one slot, and 100 workspaces
/// spread over the three masters; the configuration is one unit of its own.
#[test]
fn a_workspace_keys_share_one_slot_and_workspaces_spread_over_the_masters() {
    let c = shared_cluster();
    let p = prefix("slots");
    let mut ws = serde_json::Map::new();
    for i in 0..100 {
        ws.insert(
            format!("w{i}"),
            serde_json::json!({"budgetLimits": {"daily": 100.0, "monthly": 1000.0, "consistency": "strict"}}),
        );
    }
    let policy = Policy::from_json(
        &serde_json::json!({
            "models": [{"id": "m", "provider": "p", "pricing": {"input_per_1k": 0.01, "output_per_1k": 0.03}}],
            "endpoints": [{"id": "e0", "model_id": "m", "url": "http://e0"}],
            "workspaces": ws,
        })
        .to_string(),
    )
    .unwrap();
    let s = store(&c.url(), &p);
    let r = router(&s, policy);
    ready(&s);
    for i in 0..100 {
        let d = r
            .route(&RouteRequest {
                model: Some("m".into()),
                workspace_id: Some(format!("w{i}")),
                estimated_tokens: Some(1_000),
                ..Default::default()
            })
            .unwrap();
        r.report(&d, Outcome::success(1.0).with_tokens(1_000, 100)).unwrap();
    }
    assert!(s.flush(Duration::from_secs(5)));
    let keys = keys_by_master(c, &p);
    let mut by_tag: BTreeMap<String, Vec<(u16, String)>> = BTreeMap::new();
    for (port, k) in keys {
        let tag = hash_tag(&k).unwrap_or_else(|| panic!("{k} has no hash tag")).to_owned();
        by_tag.entry(tag).or_default().push((port, k));
    }
    let mut masters = BTreeSet::new();
    let mut workspaces = 0;
    for (tag, keys) in &by_tag {
        let slots: BTreeSet<u16> = keys.iter().map(|(_, k)| c.keyslot(k)).collect();
        assert_eq!(slots.len(), 1, "{tag}: {keys:?}");
        if tag.starts_with("ws:") {
            workspaces += 1;
            assert!(keys.len() >= 2, "{tag}: budget counters: {keys:?}");
            masters.insert(keys[0].0);
        }
    }
    assert_eq!(workspaces, 100, "{:?}", by_tag.keys().collect::<Vec<_>>());
    assert_eq!(masters.len(), 3, "100 workspaces on masters {masters:?}");
    assert!(
        by_tag.contains_key("cfg"),
        "the configuration unit: {:?}",
        by_tag.keys()
    );
}

const TIMEOUT: Duration = Duration::from_millis(100);
/// Scheduling slack on a shared 2-core machine.
const SLACK: Duration = Duration::from_millis(30);
/// Workspaces whose spend is counted (spread over the masters).
const WS: usize = 6;

#[derive(Default)]
struct Tally {
    decisions: u64,
    failed: u64,
    added: [i64; WS],
    worst_store_call: Duration,
    /// (when, Unix ms) of every decision.
    at_ms: Vec<u64>,
}

/// RELIABILITY 18 on a cluster: the master of a workspace's slot killed (`kill -9`) under
/// ~1,000 decisions/s across 3 instances: no decision fails, no store call blocks past the
/// timeout, the replica is promoted, and every batched increment is applied exactly once
/// (flushes wait for a replica: `replica_acks` 1).
#[test]
fn a_master_killed_under_load_loses_nothing() {
    let mut c = RedisCluster::start();
    let p = prefix("failover");
    let fleet: Vec<_> = (0..3)
        .map(|_| {
            let cfg = config(&c.url(), &p).with_timeout(TIMEOUT).with_replica_acks(1);
            let s = Arc::new(RedisStore::connect(cfg).unwrap());
            let r = router(&s, policy(4));
            ready(&s);
            let events = r.events().subscribe(4_096, false);
            (s, r, events)
        })
        .collect();
    let key = |w: usize| format!("{{ws:f{w}}}:spend");
    let victim_slot = c.keyslot(&format!("{p}{}", key(0)));
    let victim = c.master_of(victim_slot);
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
                    let decided = r.route(&req());
                    t.decisions += 1;
                    t.at_ms.push(unix_ms());
                    match decided {
                        Ok(d) => r.report(&d, Outcome::success(20.0)).unwrap(),
                        Err(_) => t.failed += 1,
                    }
                    let w = (n as usize + i) % WS;
                    let cost = 1 + (n % 5) as i64 + i as i64;
                    let c0 = Instant::now();
                    s.add(&format!("{{ws:f{w}}}:spend"), cost, 0).unwrap();
                    t.added[w] += cost;
                    if n.is_multiple_of(10) {
                        let _ = s.try_add(&format!("{{ws:f{w}}}:strict"), 1, i64::MAX, 0);
                    }
                    t.worst_store_call = t.worst_store_call.max(c0.elapsed());
                }
                t
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(1_000));
    let killed_at = unix_ms();
    c.kill9(victim);
    let promoted = eventually(Duration::from_secs(15), || {
        c.try_master_of(victim_slot).is_some_and(|m| m != victim)
    })
    .unwrap_or_else(|| panic!("the replica of :{victim} was never promoted:\n{}", c.describe()));
    let promoted_at = unix_ms();
    c.wait_ok(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1_000));
    stop.store(true, Ordering::SeqCst);
    let tallies: Vec<Tally> = workers.into_iter().map(|w| w.join().unwrap()).collect();

    let flushed_in = Instant::now();
    for (s, _, events) in &fleet {
        if !s.flush(Duration::from_secs(10)) {
            let last = std::iter::from_fn(|| events.try_recv())
                .filter(|e| matches!(e, Event::StoreDegraded { .. }))
                .last();
            panic!("not flushed: {:?}; last: {last:?}", s.health());
        }
    }
    let flushed_in = flushed_in.elapsed();
    let decisions: u64 = tallies.iter().map(|t| t.decisions).sum();
    let failed: u64 = tallies.iter().map(|t| t.failed).sum();
    let during: usize = tallies
        .iter()
        .map(|t| {
            t.at_ms
                .iter()
                .filter(|&&at| at >= killed_at && at <= promoted_at)
                .count()
        })
        .sum();
    let worst = tallies.iter().map(|t| t.worst_store_call).max().unwrap();
    let mut degraded_after = Vec::new();
    for (s, _, events) in &fleet {
        let evs: Vec<Event> = std::iter::from_fn(|| events.try_recv()).collect();
        if let Some(at) = evs.iter().find_map(|e| match e {
            Event::StoreDegraded { at_ms, .. } => Some(*at_ms),
            _ => None,
        }) {
            degraded_after.push(at.saturating_sub(killed_at));
        }
        assert!(
            eventually(Duration::from_secs(5), || s.status() == StoreStatus::Healthy).is_some(),
            "{:?}",
            s.health()
        );
        assert_eq!(s.health().overflow, 0);
    }
    let mut stored = Vec::new();
    for w in 0..WS {
        let want: i64 = tallies.iter().map(|t| t.added[w]).sum();
        let got = get_int(&c, &format!("{p}{}", key(w))).unwrap_or(0);
        stored.push((want, got));
    }
    let replays: u64 = fleet.iter().map(|(s, _, _)| s.health().replayed_flushes).sum();
    eprintln!(
        "master :{victim} killed: promoted after {promoted:?}; {decisions} decisions ({during} during the \
         failover), {failed} failed; worst store call {worst:?}; degraded after {degraded_after:?} ms; \
         flushed {flushed_in:?} after; {replays} replayed flushes; spend (added, stored) {stored:?}"
    );
    assert_eq!(failed, 0, "no decision fails");
    assert!(during > 0, "decisions went on during the failover");
    assert!(worst <= TIMEOUT + SLACK, "a store call took {worst:?}");
    for (want, got) in stored {
        assert_eq!(got, want, "every increment applied exactly once");
    }
}
