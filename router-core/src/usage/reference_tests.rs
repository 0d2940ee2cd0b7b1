//! The sharded, batched recording against the plain sequential model it replaced (every
//! sample added to its key's series under one lock, one recent-requests ring): same buckets,
//! same keys, same recent requests, whatever the order of minutes, late samples, overflowing
//! keys, trimmed rings and queries in between.

use std::collections::VecDeque;

use proptest::prelude::*;
use rustc_hash::FxHashMap;

use super::series::{Bucket, DAY, HOUR, MINUTE};
use super::shard::{SlotCells, OTHER};
use super::*;

/// The reference: the implementation before sharding, sample by sample.
#[derive(Default)]
struct Reference {
    dims: [FxHashMap<String, [VecDeque<Bucket>; 3]>; 5],
    recent: VecDeque<RequestRecord>,
}

fn ring_add(ring: &mut VecDeque<Bucket>, width: u64, cap: usize, s: &Sample<'_>, bin: u16) {
    let start = s.at_ms - s.at_ms % width;
    match ring.back_mut() {
        Some(b) if b.start_ms >= start => b.add(s, bin),
        _ => {
            let mut b = Bucket::at(start);
            b.add(s, bin);
            ring.push_back(b);
            trim(ring, width, cap, start);
        }
    }
}

fn ring_fold(ring: &mut VecDeque<Bucket>, width: u64, cap: usize, closed: &Bucket) {
    let start = closed.start_ms - closed.start_ms % width;
    match ring.back_mut() {
        Some(b) if b.start_ms >= start => b.merge(closed),
        _ => {
            let mut b = closed.clone();
            b.start_ms = start;
            ring.push_back(b);
            trim(ring, width, cap, start);
        }
    }
}

fn trim(ring: &mut VecDeque<Bucket>, width: u64, cap: usize, start: u64) {
    let span = width * cap as u64;
    while ring.len() > cap || ring.front().is_some_and(|b| b.start_ms + span <= start) {
        ring.pop_front();
    }
}

impl Reference {
    fn record(&mut self, s: &Sample<'_>, cfg: &UsageConfig) {
        let bin = histogram::bin_of(s.latency_ms);
        for (i, key) in s.keys.iter().enumerate() {
            let Some(key) = key.map(|k| std::str::from_utf8(k).expect("UTF-8")) else {
                continue;
            };
            let dim = &mut self.dims[i];
            let key = if dim.contains_key(key) || dim.len() < cfg.max_keys {
                key
            } else {
                OTHER
            };
            let rings = dim.entry(key.to_owned()).or_default();
            let start = s.at_ms - s.at_ms % MINUTE;
            let [minutes, hours, days] = rings;
            if let Some(open) = minutes.back().filter(|b| b.start_ms < start) {
                ring_fold(hours, HOUR, cfg.hour_buckets, open);
                ring_fold(days, DAY, cfg.day_buckets, open);
            }
            ring_add(minutes, MINUTE, cfg.minute_buckets, s, bin);
        }
        if cfg.recent_requests > 0 {
            while self.recent.len() >= cfg.recent_requests {
                self.recent.pop_front();
            }
            let name = |i: usize| s.keys[i].map(|k| String::from_utf8(k.to_vec()).expect("UTF-8"));
            self.recent.push_back(RequestRecord {
                decision_id: crate::decision::DecisionId(s.decision_id).to_string(),
                request_id: s.request_id.map(str::to_owned),
                model_id: name(0).unwrap_or_default(),
                endpoint_id: name(1).unwrap_or_default(),
                workspace_id: name(2),
                agent_type: name(3),
                user_id: name(4),
                success: s.success,
                error: s.error.map(str::to_owned),
                latency_ms: s.latency_ms,
                tokens_in: s.tokens_in,
                tokens_out: s.tokens_out,
                tokens_estimated: s.tokens_estimated,
                cost: from_micros(s.cost_micros),
                attempt: s.attempt,
                at_ms: s.at_ms,
            });
        }
    }
}

fn view(b: &Bucket) -> (u64, UsageTotals) {
    (b.start_ms, b.totals(true))
}

/// Compare every key of every dimension, ring by ring, and the recent requests.
fn assert_same(u: &Usage, r: &Reference) -> Result<(), TestCaseError> {
    u.flush();
    let all = [
        Dimension::Model,
        Dimension::Endpoint,
        Dimension::Workspace,
        Dimension::AgentType,
        Dimension::User,
    ];
    for (d, dim) in all.into_iter().zip(&r.dims) {
        let mut want: Vec<&String> = dim.keys().collect();
        want.sort();
        prop_assert_eq!(u.keys(d), want.iter().map(|k| k.to_string()).collect::<Vec<_>>());
        for (k, rings) in dim {
            let cell = u.keys.lock().dims[d as usize][k.as_str()].clone();
            let s = cell.series.lock();
            for (got, want) in s.rings.iter().zip(rings) {
                let got: Vec<_> = got.buckets.iter().map(view).collect();
                let want: Vec<_> = want.iter().map(view).collect();
                prop_assert_eq!(got, want, "{:?} {}", d, k);
            }
        }
    }
    let want: Vec<_> = r.recent.iter().rev().cloned().collect();
    prop_assert_eq!(u.recent(usize::MAX), want);
    Ok(())
}

#[derive(Debug, Clone)]
enum Op {
    /// Move the clock by this many ms (negative: it steps back) and report.
    Report {
        dt: i64,
        endpoint: usize,
        workspace: Option<usize>,
        agent: Option<usize>,
        user: Option<usize>,
        success: bool,
        latency: u32,
    },
    /// Run a query (every shard hands its batches over).
    Query,
}

fn op() -> impl Strategy<Value = Op> {
    let dt = prop_oneof![
        4 => Just(0i64),
        4 => 0i64..60_000,
        2 => Just(60_000i64),
        1 => -180_000i64..0,
        1 => Just(45 * 60_000i64),
        1 => Just(5 * HOUR as i64),
        1 => Just(30 * HOUR as i64),
    ];
    let report = (
        dt,
        0usize..5,
        prop::option::of(0usize..4),
        prop::option::of(0usize..2),
        prop::option::of(0usize..6),
        any::<bool>(),
        // Quarter milliseconds; now and then 0 or 1,000 s (bins too far apart for one window).
        prop_oneof![8 => 1u32..500, 1 => Just(0u32), 1 => Just(4_000_000u32)],
    )
        .prop_map(|(dt, endpoint, workspace, agent, user, success, latency)| Op::Report {
            dt,
            endpoint,
            workspace,
            agent,
            user,
            success,
            latency,
        });
    prop_oneof![8 => report, 1 => Just(Op::Query)]
}

const MODELS: [&str; 3] = ["m0", "m1", "m2"];
const ENDPOINTS: [&str; 5] = ["e0", "e1", "e2", "e3", "e4"];
const WORKSPACES: [&str; 4] = ["w0", "w1", "w2", "w3"];
const AGENTS: [&str; 2] = ["a0", "a1"];
const USERS: [&str; 6] = ["u0", "u1", "u2", "u3", "u4", "u5"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn sharded_recording_matches_the_sequential_model(
        ops in prop::collection::vec(op(), 1..120),
        max_keys in 1usize..5,
        recent in 0usize..6,
        slot_cells in any::<bool>(),
    ) {
        let cfg = UsageConfig {
            max_keys,
            recent_requests: recent,
            minute_buckets: 3,
            hour_buckets: 2,
            day_buckets: 2,
            ..Default::default()
        };
        let u = Usage::default();
        let mut r = Reference::default();
        // One slot per endpoint (endpoint e serves model e % 3), as the router passes them.
        let cells: Vec<SlotCells> = ENDPOINTS.iter().map(|_| SlotCells::default()).collect();
        let mut t: i64 = 1_795_392_000_000;
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                Op::Query => assert_same(&u, &r)?,
                Op::Report { dt, endpoint, workspace, agent, user, success, latency } => {
                    t += dt;
                    let s = Sample {
                        keys: [
                            Some(MODELS[endpoint % 3].as_bytes()),
                            Some(ENDPOINTS[endpoint].as_bytes()),
                            workspace.map(|w| WORKSPACES[w].as_bytes()),
                            agent.map(|a| AGENTS[a].as_bytes()),
                            user.map(|x| USERS[x].as_bytes()),
                        ],
                        cells: slot_cells.then(|| &cells[endpoint]),
                        decision_id: i as u64,
                        request_id: (i % 3 == 0).then_some("req"),
                        success,
                        error: (!success).then_some("timeout"),
                        latency_ms: f64::from(latency) / 4.0,
                        tokens_in: u64::from(latency),
                        tokens_out: 7,
                        tokens_estimated: i % 2 == 0,
                        cost_micros: i64::from(latency) * 3,
                        attempt: 1,
                        at_ms: t as u64,
                    };
                    u.record(&s, &cfg);
                    r.record(&s, &cfg);
                }
            }
        }
        assert_same(&u, &r)?;
    }
}

/// A batch that another thread held back while the key moved on lands in its own minute,
/// hour and day, not in the newest ones.
#[test]
fn a_held_back_batch_lands_in_its_own_minute() {
    let cfg = UsageConfig::default();
    let u = Usage::default();
    let t0 = 1_795_392_000_000;
    let sample = |at_ms| Sample {
        keys: [Some(b"m"), None, None, None, None],
        cells: None,
        decision_id: 0,
        request_id: None,
        success: true,
        error: None,
        latency_ms: 1.0,
        tokens_in: 1,
        tokens_out: 1,
        tokens_estimated: false,
        cost_micros: 1,
        attempt: 1,
        at_ms,
    };
    // This thread's shard holds a batch of minute 0...
    u.shards[0].0.lock().record(&u.keys, &sample(t0), &cfg);
    // ...while another shard takes the key through minutes 1 to 90 (hour 1 opens).
    for m in 1..=90 {
        u.shards[1].0.lock().record(&u.keys, &sample(t0 + m * MINUTE), &cfg);
    }
    let a = u.analytics(Dimension::Model, "m", 3 * HOUR, t0 + 90 * MINUTE, &cfg);
    assert_eq!(a.bucket_ms, HOUR);
    let per_hour: Vec<(u64, u64)> = a.series.iter().map(|(s, t)| (s - t0, t.requests)).collect();
    assert_eq!(per_hour, [(0, 60), (HOUR, 31)]);
    let a = u.analytics(Dimension::Model, "m", 2 * HOUR, t0 + 90 * MINUTE, &cfg);
    assert_eq!(a.series.first().map(|(s, t)| (s - t0, t.requests)), Some((0, 1)));
}
