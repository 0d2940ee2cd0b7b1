//! The Lua scripts. Each touches the keys of one hash tag only (one Redis Cluster slot).
//!
//! Scripts run with EVALSHA; the script cache empties when Redis restarts, fails over or runs
//! `SCRIPT FLUSH`, so every caller reloads on NOSCRIPT and retries: single calls through
//! `redis::Script::invoke`, pipelines by reloading every script and resending the commands that
//! failed (every pipelined write is idempotent).

use redis::Script;

/// Extend a key's expiry to the absolute Unix ms `at` (0: leave it); never shortens it.
const EXPIRE_FN: &str = r#"
local function expire_at(k, at)
  if tonumber(at) > 0 then
    if redis.call('PTTL', k) == -1 then
      redis.call('PEXPIREAT', k, at)
    else
      redis.call('PEXPIREAT', k, at, 'GT')
    end
  end
end
"#;

/// A configuration change: versioned, logged, snapshotted when the publisher was up to date,
/// and published, atomically; applied at most once per op id.
///
/// KEYS: version, log, snapshot, op id. ARGV: base version (-1: unknown), store id, origin,
/// change JSON, policy JSON ('' for none), channel, op id TTL ms, log retention.
/// Returns {version, clean} (clean 2: this op was already applied).
const CFG_PUBLISH: &str = r#"
local done = redis.call('GET', KEYS[4])
if done then return {tonumber(done), 2} end
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
local v = redis.call('INCR', KEYS[1])
local clean = 0
if tonumber(ARGV[1]) == head then clean = 1 end
redis.call('XADD', KEYS[2], v .. '-1', 'store', ARGV[2], 'origin', ARGV[3], 'clean', clean, 'change', ARGV[4])
if clean == 1 and ARGV[5] ~= '' then
  redis.call('HSET', KEYS[3], 'version', v, 'policy', ARGV[5])
  local keep = tonumber(ARGV[8])
  if v > keep then redis.call('XTRIM', KEYS[2], 'MINID', (v - keep) .. '-0') end
end
redis.call('SET', KEYS[4], v, 'PX', ARGV[7])
redis.call('PUBLISH', ARGV[6], '{"v":' .. v .. ',"clean":' .. clean .. ',"store":' .. ARGV[2] ..
  ',"origin":' .. ARGV[3] .. ',"change":' .. ARGV[4] .. '}')
return {v, clean}
"#;

/// Store the whole policy at version ARGV[1].
///
/// KEYS: version, snapshot, log. ARGV: version, policy JSON, mode, log retention.
/// mode `seed`: only when Redis knows an older version than ours (empty, or restarted without
/// persistence); sets the version too. mode `compact`: only when the version is the current
/// one and the snapshot is older. Returns 1 when written.
const CFG_SNAPSHOT: &str = r#"
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
local sv = tonumber(redis.call('HGET', KEYS[2], 'version') or '0')
local v = tonumber(ARGV[1])
if ARGV[3] == 'seed' then
  if head >= v then return 0 end
  redis.call('SET', KEYS[1], ARGV[1])
else
  if head ~= v or sv >= v then return 0 end
  local keep = tonumber(ARGV[4])
  if v > keep then redis.call('XTRIM', KEYS[3], 'MINID', (v - keep) .. '-0') end
end
redis.call('HSET', KEYS[2], 'version', ARGV[1], 'policy', ARGV[2])
return 1
"#;

/// Live state of one head (status, heartbeat, cooldown) and its notification.
///
/// KEYS: the head key. ARGV: value, mode, ms, channel, message. mode `px`: set with a TTL of
/// ms; `max_px`: set only when the value grows, TTL ms; `max_at`: set only when the value grows,
/// expiring at the absolute Unix ms.
const LIVE: &str = r#"
local m = ARGV[2]
if m == 'px' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
else
  local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tonumber(ARGV[1]) > cur then
    if m == 'max_px' then
      redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
    else
      redis.call('SET', KEYS[1], ARGV[1])
      redis.call('PEXPIREAT', KEYS[1], ARGV[3])
    end
  end
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"#;

/// One batched flush of the counters of one hash tag, applied at most once per flush id.
///
/// KEYS: flush id, counters... ARGV: flush id TTL ms, then (delta, expires_at_ms) per counter.
/// Returns each counter's value after the flush.
const FLUSH: &str = r#"
local fresh = redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1])
local out = {}
for i = 2, #KEYS do
  local d = ARGV[2 * i - 2]
  local v
  if fresh and tonumber(d) ~= 0 then
    v = redis.call('INCRBY', KEYS[i], d)
    expire_at(KEYS[i], ARGV[2 * i - 1])
  else
    v = tonumber(redis.call('GET', KEYS[i]) or '0')
  end
  out[#out + 1] = v
end
return out
"#;

/// Strict add under a limit. KEYS: counter. ARGV: delta, limit, expires_at_ms.
/// Returns {admitted, total}.
const TRY_ADD: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur + tonumber(ARGV[1]) <= tonumber(ARGV[2]) then
  local total = redis.call('INCRBY', KEYS[1], ARGV[1])
  expire_at(KEYS[1], ARGV[3])
  return {1, total}
end
return {0, cur}
"#;

/// GCRA on Redis `TIME` (µs), the arithmetic of `router_core::limits::Gcra::check`.
/// KEYS: the limiter. ARGV: emission interval µs, burst, n, charge only (0/1).
/// Returns {allowed, retry_after_us (-1: never), remaining}.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local T = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local tau = burst * T
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local base = math.max(tat, now)
local new_tat = base + n * T
local ahead = new_tat - now
local function keep(x)
  redis.call('SET', KEYS[1], string.format('%.0f', x), 'PX', string.format('%.0f', math.max(1, math.ceil((x - now) / 1000))))
end
if ARGV[4] == '1' then
  keep(new_tat)
  if ahead <= tau then return {1, 0, math.floor((tau - ahead) / T)} end
  return {1, ahead - tau, 0}
end
if ahead <= tau then
  keep(new_tat)
  return {1, 0, math.floor((tau - ahead) / T)}
end
local retry = -1
if n <= burst then retry = ahead - tau end
return {0, retry, math.floor(math.max(0, tau - (base - now)) / T)}
"#;

/// Every script the store runs.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) cfg_publish: Script,
    pub(crate) cfg_snapshot: Script,
    pub(crate) live: Script,
    pub(crate) flush: Script,
    pub(crate) try_add: Script,
    pub(crate) gcra: Script,
}

impl Scripts {
    pub(crate) fn new() -> Scripts {
        Scripts {
            cfg_publish: Script::new(CFG_PUBLISH),
            cfg_snapshot: Script::new(CFG_SNAPSHOT),
            live: Script::new(LIVE),
            flush: Script::new(&format!("{EXPIRE_FN}{FLUSH}")),
            try_add: Script::new(&format!("{EXPIRE_FN}{TRY_ADD}")),
            gcra: Script::new(GCRA),
        }
    }

    pub(crate) fn all(&self) -> [&Script; 6] {
        [
            &self.cfg_publish,
            &self.cfg_snapshot,
            &self.live,
            &self.flush,
            &self.try_add,
            &self.gcra,
        ]
    }
}
