//! Router instances in separate processes. The test binary runs itself again as a child
//! instance (`child_instance`, which does nothing unless `MR_CHILD_URL` is set) and drives it
//! through stdin/stdout, one command per line; the child's answers start with `@@`.

#[macro_use]
mod common;

use common::*;
use router_core::limits::Gcra;
use router_core::{Endpoint, HeadStatus, HeadStatusUpdate, Policy, StateStore, WorkspaceConfig};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Spend on a strict budget until 20 denials in a row; returns what was admitted.
fn spend(s: &dyn StateStore, limit: i64) -> i64 {
    let (mut sum, mut denied, mut i) = (0, 0, 0i64);
    while denied < 20 {
        let cost = 1_000 + (i % 9) * 1_000;
        i += 1;
        if s.try_add("{ws:p}:budget", cost, limit, 0).unwrap().admitted {
            sum += cost;
            denied = 0;
        } else {
            denied += 1;
        }
    }
    sum
}

fn gcra(s: &dyn StateStore, attempts: u32) -> u64 {
    let g = Gcra::per_period(100, 60_000, 100).unwrap();
    (0..attempts)
        .filter(|_| s.gcra("{ws:p}:rpm", g, 1, false, 0).unwrap().allowed)
        .count() as u64
}

/// The child side. Not a test of its own: returns at once unless run as a child.
#[test]
fn child_instance() {
    let Ok(url) = std::env::var("MR_CHILD_URL") else {
        return;
    };
    let p = std::env::var("MR_CHILD_PREFIX").unwrap();
    let s = store(&url, &p);
    let r = router(&s, Policy::default());
    ready(&s);
    println!("@@ ready");
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let args: Vec<&str> = line.split_whitespace().collect();
        let wait = |f: &mut dyn FnMut() -> bool| match eventually(Duration::from_secs(3), f) {
            Some(_) => format!("seen {}", unix_ms()),
            None => "timeout".into(),
        };
        let answer = match args.as_slice() {
            ["wait_route", id] => wait(&mut || routes_to(&r, id, 8)),
            ["wait_ws", id] => wait(&mut || r.workspace_config(id).is_some()),
            ["has", id] => format!("{}", r.endpoint(id).is_some()),
            ["status", id] => format!("{:?}", r.endpoint_status(id).map(|s| s.status).ok()),
            ["spend", limit] => format!("spent {}", spend(&*s, limit.parse().unwrap())),
            ["gcra", n] => format!("admitted {}", gcra(&*s, n.parse().unwrap())),
            ["quit"] => break,
            _ => format!("unknown {line}"),
        };
        println!("@@ {answer}");
    }
}

struct ChildInstance {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
}

impl ChildInstance {
    fn spawn(url: &str, prefix: &str) -> ChildInstance {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["child_instance", "--exact", "--nocapture", "--test-threads=1"])
            .env("MR_CHILD_URL", url)
            .env("MR_CHILD_PREFIX", prefix)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut c = ChildInstance { child, stdin, out };
        assert_eq!(c.answer(), "ready");
        c
    }

    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn answer(&mut self) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(self.out.read_line(&mut line).unwrap() > 0, "the child exited");
            // The harness may print `test child_instance ... ` in front on the same line.
            if let Some(at) = line.find("@@ ") {
                return line[at + 3..].trim_end().to_owned();
            }
        }
    }

    fn ask(&mut self, cmd: &str) -> String {
        self.send(cmd);
        self.answer()
    }

    /// When the child saw what it waited for, Unix ms.
    fn seen(&mut self) -> u64 {
        let a = self.answer();
        a.strip_prefix("seen ")
            .unwrap_or_else(|| panic!("child answered {a}"))
            .parse()
            .unwrap()
    }
}

impl Drop for ChildInstance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

on_both!(
    processes_share_heads,
    separate_processes_share_heads_and_policy_within_100ms,
    separate_processes_share_heads_and_policy_on_a_cluster
);

/// (a), (b) and (f) across processes: heads and policy changes made in this process are live
/// in two others within 100 ms; a restarted process rebuilds its state from Redis.
fn processes_share_heads(srv: &dyn Backend) {
    let p = prefix("procs");
    let s = store(&srv.url(), &p);
    let a = router(&s, policy(1));
    ready(&s);
    let mut children = [
        ChildInstance::spawn(&srv.url(), &p),
        ChildInstance::spawn(&srv.url(), &p),
    ];
    for c in &mut children {
        assert_eq!(c.ask("has e0"), "true");
    }

    for c in &mut children {
        c.send("wait_route x1");
    }
    std::thread::sleep(Duration::from_millis(50));
    let t = unix_ms();
    a.register_endpoint(Endpoint::new("x1", "m", "http://x1")).unwrap();
    for c in &mut children {
        let dt = c.seen().saturating_sub(t);
        assert!(dt <= 100, "head routable in the child after {dt} ms");
    }

    for c in &mut children {
        c.send("wait_ws ws-p");
    }
    std::thread::sleep(Duration::from_millis(50));
    let t = unix_ms();
    a.set_workspace_config("ws-p", WorkspaceConfig::default()).unwrap();
    for c in &mut children {
        let dt = c.seen().saturating_sub(t);
        assert!(dt <= 100, "workspace live in the child after {dt} ms");
    }

    // A whole policy.
    for c in &mut children {
        c.send("wait_route y1");
    }
    std::thread::sleep(Duration::from_millis(50));
    let mut next = policy(1);
    next.endpoints.push(Endpoint::new("y1", "m", "http://y1"));
    let t = unix_ms();
    a.load_policy(next).unwrap();
    for c in &mut children {
        let dt = c.seen().saturating_sub(t);
        assert!(dt <= 100, "policy live in the child after {dt} ms");
    }

    // (f) A process restarted: its state comes from Redis.
    a.update_head_status(&HeadStatusUpdate::new("y1", HeadStatus::Degraded))
        .unwrap();
    assert!(s.flush(Duration::from_secs(2)));
    children[0].send("quit");
    let _ = children[0].child.wait();
    children[0] = ChildInstance::spawn(&srv.url(), &p);
    assert_eq!(children[0].ask("has y1"), "true");
    assert_eq!(children[0].ask("has x1"), "false");
    assert_eq!(
        children[0].ask("status y1"),
        format!("{:?}", Some(HeadStatus::Degraded))
    );
}

on_both!(
    processes_share_limits,
    separate_processes_share_strict_budgets_and_rate_limits,
    separate_processes_share_budgets_and_limits_on_a_cluster
);

/// (c) and (d) across processes: a strict $1.00 budget and a 100/min GCRA limit shared by
/// three processes.
fn processes_share_limits(srv: &dyn Backend) {
    let p = prefix("procs-limits");
    let s = store(&srv.url(), &p);
    ready(&s);
    let mut children = [
        ChildInstance::spawn(&srv.url(), &p),
        ChildInstance::spawn(&srv.url(), &p),
    ];

    for c in &mut children {
        c.send("spend 1000000");
    }
    let mine = spend(&*s, 1_000_000);
    let theirs: i64 = children
        .iter_mut()
        .map(|c| c.answer().strip_prefix("spent ").unwrap().parse::<i64>().unwrap())
        .sum();
    let stored: i64 = redis::cmd("GET")
        .arg(format!("{p}{{ws:p}}:budget"))
        .query(&mut srv.conn())
        .unwrap();
    assert_eq!(stored, mine + theirs);
    assert!(stored <= 1_000_000 && stored > 1_000_000 - 9_000, "spent {stored}");

    let t0 = Instant::now();
    for c in &mut children {
        c.send("gcra 80");
    }
    let mine = gcra(&*s, 80);
    let theirs: u64 = children
        .iter_mut()
        .map(|c| c.answer().strip_prefix("admitted ").unwrap().parse::<u64>().unwrap())
        .sum();
    let refills = (t0.elapsed().as_millis() / 600) as u64;
    let n = mine + theirs;
    assert!((100..=101 + refills).contains(&n), "admitted {n}");
}

/// Issue 10: 8 router processes spend one $10.00 workspace budget at once (strict, on a
/// cluster): they stop within one request's cost of it, never above.
#[test]
fn eight_processes_spend_one_budget_on_a_cluster() {
    const LIMIT: i64 = 10_000_000;
    let cluster = shared_cluster();
    let p = prefix("procs8");
    let t0 = Instant::now();
    let mut children: Vec<ChildInstance> = (0..8).map(|_| ChildInstance::spawn(&cluster.url(), &p)).collect();
    let started = t0.elapsed();
    for c in &mut children {
        c.send(&format!("spend {LIMIT}"));
    }
    let each: Vec<i64> = children
        .iter_mut()
        .map(|c| c.answer().strip_prefix("spent ").unwrap().parse::<i64>().unwrap())
        .collect();
    let stored: i64 = redis::cmd("GET")
        .arg(format!("{p}{{ws:p}}:budget"))
        .query(&mut cluster.conn())
        .unwrap();
    eprintln!(
        "8 processes: started in {started:?}, spent {each:?} = {stored} of {LIMIT} in {:?}",
        t0.elapsed() - started
    );
    assert_eq!(
        stored,
        each.iter().sum::<i64>(),
        "Redis holds exactly what was admitted"
    );
    assert!(each.iter().all(|&e| e > 0), "every process spent: {each:?}");
    // The costs are 1,000..=9,000 micro-dollars: one request's cost at most is left.
    assert!(stored <= LIMIT && stored > LIMIT - 9_000, "spent {stored}");
}
