//! The writer thread: every flush interval, one pipeline with the queued writes and the batched
//! counter deltas; pings when idle; reconnects and replays after a failure.

use redis::{Cmd, ErrorKind, RedisResult, ServerErrorKind, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::conn::{is_transient, Conn};
use crate::counters::Batch;
use crate::shared::{int, items, Shared, Write};

/// Writes taken from the queue per pipeline at most.
const MAX_WRITES_PER_FLUSH: usize = 1_024;
/// Pause between two connection attempts.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);

fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

/// EVALSHA of `script` with these keys and arguments.
pub(crate) fn evalsha(script: &redis::Script, keys: &[&str], args: &[&str]) -> Cmd {
    let mut c = redis::cmd("EVALSHA");
    c.arg(script.get_hash()).arg(keys.len()).arg(keys).arg(args);
    c
}

impl Shared {
    /// Load every script (after connecting, and after a NOSCRIPT).
    pub(crate) fn load_scripts(&self, con: &mut Conn) -> RedisResult<()> {
        for s in self.scripts.all() {
            s.prepare_invoke().load(con)?;
        }
        Ok(())
    }

    fn write_cmd(&self, w: &Write) -> Cmd {
        match w {
            Write::Config {
                op,
                base,
                origin,
                change,
                policy,
            } => {
                let k = &self.keys;
                let op_key = k.cfg_op(*op);
                evalsha(
                    &self.scripts.cfg_publish,
                    &[&k.cfg_version, &k.cfg_log, &k.cfg_snapshot, &op_key],
                    &[
                        &base.to_string(),
                        &self.id.to_string(),
                        &origin.to_string(),
                        change,
                        policy.as_deref().unwrap_or(""),
                        &k.changes,
                        &(self.cfg.idempotency_ttl.as_millis() as u64).to_string(),
                        &self.cfg.log_retention.max(1).to_string(),
                    ],
                )
            }
            Write::Live {
                key,
                value,
                mode,
                ms,
                message,
            } => evalsha(
                &self.scripts.live,
                &[key],
                &[value, mode, &ms.to_string(), &self.keys.changes, message],
            ),
            Write::Audit(record) => {
                let mut c = redis::cmd("PUBLISH");
                c.arg(&self.keys.audit).arg(record);
                c
            }
        }
    }

    fn flush_cmd(&self, b: &Batch, i: usize) -> Cmd {
        let g = &b.groups[i];
        let mut keys: Vec<&str> = vec![&g.flush_key];
        keys.extend(g.redis_keys.iter().map(String::as_str));
        let mut args = vec![(self.cfg.idempotency_ttl.as_millis() as u64).to_string()];
        for (d, e) in g.deltas.iter().zip(&g.expiries) {
            args.push(d.to_string());
            args.push(e.to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        evalsha(&self.scripts.flush, &keys, &args)
    }

    /// Send the writes and the batch; on success, acknowledge them. An error means the
    /// connection is unusable: nothing acknowledged stays acknowledged-not, and is resent.
    fn send(&self, con: &mut Conn, writes: &mut Vec<Write>, batch: Option<&Batch>) -> RedisResult<()> {
        if con.is_cluster() {
            return self.send_cluster(con, writes, batch);
        }
        // Only the last configuration change of a pipeline carries the policy document: the
        // snapshot it writes covers the ones before.
        if let Some(last) = writes.iter().rposition(|w| matches!(w, Write::Config { .. })) {
            for w in &mut writes[..last] {
                if let Write::Config { policy, .. } = w {
                    *policy = None;
                }
            }
        }
        // What each pipelined command is: a write (its index) or a counter group.
        #[derive(Clone, Copy)]
        enum Item {
            Write(usize),
            Group(usize),
        }
        let mut todo: Vec<Item> = (0..writes.len()).map(Item::Write).collect();
        if let Some(b) = batch {
            todo.extend(
                (0..b.groups.len())
                    .filter(|&i| !b.groups[i].keys.is_empty())
                    .map(Item::Group),
            );
        }
        for _attempt in 0..3 {
            if todo.is_empty() {
                break;
            }
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for it in &todo {
                pipe.add_command(match *it {
                    Item::Write(i) => self.write_cmd(&writes[i]),
                    Item::Group(i) => self.flush_cmd(batch.expect("groups come from a batch"), i),
                });
            }
            let replies: Vec<RedisResult<Value>> = pipe.query(con)?;
            let mut again = Vec::new();
            for (it, r) in todo.iter().zip(replies) {
                match r {
                    Err(e) if is_noscript(&e) => again.push(*it),
                    Err(_) => {
                        // A write Redis refuses (wrong type, ...) would be refused forever.
                        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                        if let Item::Group(i) = *it {
                            let n = batch.map_or(0, |b| b.groups[i].keys.len());
                            self.counters.lock().ack_group(i, &vec![0; n]);
                        }
                    }
                    Ok(v) => {
                        if let Item::Group(i) = *it {
                            let totals: Vec<i64> = items(&v).iter().map(|x| int(x).unwrap_or(0)).collect();
                            if let Some((done, replay)) = self.counters.lock().ack_group(i, &totals) {
                                if done {
                                    self.stats.flushes.fetch_add(1, Ordering::Relaxed);
                                    if replay {
                                        self.stats.replayed_flushes.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                            }
                        }
                    }
                }
            }
            if !again.is_empty() {
                self.load_scripts(con)?;
            }
            todo = again;
        }
        writes.clear();
        Ok(())
    }

    /// The cluster's `send`: one command at a time, each routed to its slot's master (a
    /// pipeline goes to one node), acknowledged one by one. Stops at the first command that
    /// could not be delivered (a master down, a failover under way): what was acknowledged
    /// stays so, the rest is resent later (counter groups with the same flush id). With
    /// `replica_acks`, a counter group counts as acknowledged only once that many replicas of
    /// its master have it (`WAIT`), so that a failover cannot lose it.
    fn send_cluster(&self, con: &mut Conn, writes: &mut Vec<Write>, batch: Option<&Batch>) -> RedisResult<()> {
        let acks = self.cfg.replica_acks;
        // Within one attempt's read timeout (a third of the timeout).
        let wait_ms = (self.cfg.timeout.as_millis() as u64 / 6).max(1);
        // A NOSCRIPT (a script cache emptied: restart, failover, SCRIPT FLUSH) reloads the
        // scripts and resends; one that persists ends this send like a lost connection (the
        // rest is resent later), never as a refusal.
        let mut reloads = 0;
        let mut noscript = |con: &mut Conn, e: redis::RedisError| -> RedisResult<()> {
            reloads += 1;
            if reloads > 3 {
                return Err(e);
            }
            self.load_scripts(con)
        };
        // Writes first, in order.
        let mut sent = 0;
        let mut failure = None;
        while sent < writes.len() {
            let cmd = self.write_cmd(&writes[sent]);
            match cmd.query::<Value>(con) {
                Ok(_) => sent += 1,
                Err(e) if is_noscript(&e) => {
                    if let Err(e) = noscript(con, e) {
                        failure = Some(e);
                        break;
                    }
                }
                Err(e) if is_transient(&e) => {
                    failure = Some(e);
                    break;
                }
                Err(_) => {
                    self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    sent += 1;
                }
            }
        }
        writes.drain(..sent);
        if let Some(e) = failure {
            return Err(e);
        }
        let Some(b) = batch else { return Ok(()) };
        for i in 0..b.groups.len() {
            let g = &b.groups[i];
            if g.keys.is_empty() {
                continue;
            }
            let cmd = self.flush_cmd(b, i);
            let mut r = cmd.query::<Value>(con);
            while let Err(e) = r {
                if !is_noscript(&e) {
                    r = Err(e);
                    break;
                }
                noscript(con, e)?;
                r = cmd.query::<Value>(con);
            }
            match r {
                Ok(v) => {
                    if acks > 0 {
                        let mut wait = redis::cmd("WAIT");
                        wait.arg(acks).arg(wait_ms);
                        let got = int(&con.on_slot_of(&g.flush_key, &wait)?).unwrap_or(0);
                        if got < i64::from(acks) {
                            // A master with fewer replicas than asked (a promoted replica whose
                            // old master is gone) cannot do better: accept, and count it.
                            let role = con.on_slot_of(&g.flush_key, &redis::cmd("ROLE"))?;
                            let replicas = items(&role).get(2).map_or(0, |r| items(r).len()) as i64;
                            if got < replicas.min(i64::from(acks)) {
                                return Err(redis::RedisError::from((
                                    ErrorKind::Io,
                                    "replicas did not acknowledge a flush",
                                    format!("WAIT {acks}: {got} of {replicas}"),
                                )));
                            }
                            self.stats.unreplicated_flushes.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let totals: Vec<i64> = items(&v).iter().map(|x| int(x).unwrap_or(0)).collect();
                    if let Some((true, replay)) = self.counters.lock().ack_group(i, &totals) {
                        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
                        if replay {
                            self.stats.replayed_flushes.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Err(e) if is_transient(&e) => return Err(e),
                Err(_) => {
                    self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    self.counters.lock().ack_group(i, &vec![0; g.keys.len()]);
                }
            }
        }
        Ok(())
    }

    /// The writer thread's loop.
    pub(crate) fn run_writer(self: Arc<Self>) {
        let timeout = self.cfg.timeout;
        let ping_every = (timeout / 2).max(Duration::from_millis(5));
        let mut con: Option<Conn> = None;
        let mut writes: Vec<Write> = Vec::new();
        let mut last_ok = Instant::now();
        let mut next_connect = Instant::now();
        loop {
            let stopping = self.stopping();
            if con.is_none() && Instant::now() >= next_connect {
                match self
                    .connect(timeout)
                    .and_then(|mut c| self.load_scripts(&mut c).map(|_| c))
                {
                    Ok(c) => {
                        con = Some(c);
                        last_ok = Instant::now();
                        self.set_up(true, true, None);
                    }
                    Err(e) => {
                        next_connect = Instant::now() + RECONNECT_PAUSE;
                        self.set_up(true, false, Some(format!("redis: {e}")));
                    }
                }
            }
            if let Some(c) = con.as_mut() {
                {
                    let mut q = self.queue.lock();
                    let n = q.len().min(MAX_WRITES_PER_FLUSH);
                    writes.extend(q.drain(..n));
                }
                self.unacked.store(writes.len(), Ordering::SeqCst);
                let batch = self.counters.lock().batch(&self.keys);
                let result = if writes.is_empty() && batch.is_none() {
                    if last_ok.elapsed() >= ping_every {
                        redis::cmd("PING").query::<String>(c).map(|_| ())
                    } else {
                        Ok(())
                    }
                } else {
                    self.send(c, &mut writes, batch.as_ref())
                };
                match result {
                    Ok(()) => {
                        last_ok = Instant::now();
                        self.unacked.store(0, Ordering::SeqCst);
                        if !self.writer_up.load(Ordering::SeqCst) {
                            // A strict call had given up on Redis; it answers again.
                            self.set_up(true, true, None);
                        }
                    }
                    Err(e) => {
                        con = None;
                        self.counters.lock().failed();
                        self.set_up(true, false, Some(format!("redis: {e}")));
                        next_connect = Instant::now();
                    }
                }
            }
            if stopping {
                break;
            }
            self.nap(self.cfg.flush_interval);
        }
    }
}
