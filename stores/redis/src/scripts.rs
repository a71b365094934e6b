//! The server-side Lua scripts. Each runs atomically on the node that owns its scope's slot, so
//! every read-decide-write of the record lifecycle happens without another client in between.
//!
//! Conventions shared by all of them:
//! - every key a script touches carries its scope's hash tag, so a script never crosses a slot
//!   and runs unchanged on Redis Cluster;
//! - timestamps, tokens and versions travel and are stored as decimal strings and are compared
//!   as integers *by their digits* (`lt`, `ult`): Lua numbers are doubles, which lose u64 tokens
//!   and i64 timestamps near their limits;
//! - a record is a hash: `s` state (`p` in progress, `d` done), `f` fingerprint (absent if none),
//!   `t` token, `a` attempt, `c` created_at, `e` expires_at, `o` outcome (once done);
//! - the scope's expiry index (`x`, every record by `expires_at`) and completed index (`c`, done
//!   records by `expires_at`) are kept in step with the hashes, for purge and stats.

use std::sync::LazyLock;

use redis::Script;

/// Integer comparison of canonical decimal strings (what Rust's `to_string` writes).
const COMPARE: &str = r#"
local function ult(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local function lt(a, b)
  local an, bn = string.sub(a, 1, 1) == '-', string.sub(b, 1, 1) == '-'
  if an ~= bn then return an end
  if an then return ult(string.sub(b, 2), string.sub(a, 2)) end
  return ult(a, b)
end
"#;

/// Claims a batch of one scope, in order.
///
/// KEYS: expiry index, completed index, then the record of each request.
/// ARGV: now, then per request: key, fingerprint (`''` = none), token, lease_until, native TTL
/// in ms (`''` = none).
///
/// Answers 8 values per request. A live record (`expires_at >= now`) is left alone and returned
/// as `'r', s, f, t, a, c, e, o` for the caller to turn into Duplicate / InProgress / Conflict
/// by the shared rules; anything else (absent, or expired: lease ran out, retention ended) is
/// replaced by a fresh in-progress claim and answered `'n', -, -, -, attempt, -, -, -`.
/// Later requests of the batch see the earlier ones' writes, so a key twice is New then
/// InProgress.
const CLAIM: &str = r#"
local now = ARGV[1]
local out, n = {}, 0
local indexed = {}
for i = 1, #KEYS - 2 do
  local rec = KEYS[2 + i]
  local base = 1 + 5 * (i - 1)
  local member, fp, token, lease_until, ttl =
    ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4], ARGV[base + 5]
  local h = redis.call('HMGET', rec, 's', 'f', 't', 'a', 'c', 'e')
  if h[1] and h[6] and not lt(h[6], now) then
    local o = false
    if h[1] == 'd' then o = redis.call('HGET', rec, 'o') end
    out[n + 1], out[n + 2], out[n + 3], out[n + 4] = 'r', h[1], h[2], h[3]
    out[n + 5], out[n + 6], out[n + 7], out[n + 8] = h[4], h[5], h[6], o
  else
    local attempt = 1
    if h[1] then
      -- An expired record is replaced whole; an absent one has nothing to clear.
      attempt = math.min((tonumber(h[4]) or 0) + 1, 4294967295)
      redis.call('DEL', rec)
      redis.call('ZREM', KEYS[2], member)
    end
    attempt = string.format('%d', attempt)
    if fp == '' then
      redis.call('HSET', rec, 's', 'p', 't', token, 'a', attempt, 'c', now, 'e', lease_until)
    else
      redis.call('HSET', rec, 's', 'p', 'f', fp, 't', token, 'a', attempt, 'c', now, 'e', lease_until)
    end
    if ttl ~= '' then redis.call('PEXPIRE', rec, ttl) end
    indexed[#indexed + 1] = lease_until
    indexed[#indexed + 1] = member
    out[n + 1], out[n + 2], out[n + 3], out[n + 4] = 'n', false, false, false
    out[n + 5], out[n + 6], out[n + 7], out[n + 8] = attempt, false, false, false
  end
  n = n + 8
end
zadd_all(KEYS[1], indexed)
return out
"#;

/// Completes a batch of held claims of one scope, in order: single completes too, coalesced.
///
/// KEYS: expiry index, completed index, then the record of each item. ARGV: per item token,
/// outcome, expires_at, key, native TTL in ms (`''` = none). Answers per item `ok`, or why the
/// claim is not held (`check_holder`'s rule): `missing`, `taken` (another token), `done`
/// (already completed). One item's answer does not stop the others.
const COMPLETE_MANY: &str = r#"
local out = {}
local indexed = {}
for i = 1, #KEYS - 2 do
  local rec = KEYS[2 + i]
  local base = 5 * (i - 1)
  local token, outcome, expires_at, member, ttl =
    ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4], ARGV[base + 5]
  local h = redis.call('HMGET', rec, 's', 't')
  if not h[1] then
    out[i] = 'missing'
  elseif h[2] ~= token then
    out[i] = 'taken'
  elseif h[1] == 'd' then
    out[i] = 'done'
  else
    redis.call('HSET', rec, 's', 'd', 'o', outcome, 'e', expires_at)
    if ttl == '' then
      redis.call('PERSIST', rec)
    else
      redis.call('PEXPIRE', rec, ttl)
    end
    indexed[#indexed + 1] = expires_at
    indexed[#indexed + 1] = member
    out[i] = 'ok'
  end
end
zadd_all(KEYS[1], indexed)
zadd_all(KEYS[2], indexed)
return out
"#;

/// Releases a held claim: the record goes, so the next delivery is New.
///
/// KEYS: record, expiry index, completed index. ARGV: token, key. Answers like [`COMPLETE_MANY`] does per item.
const RELEASE: &str = r#"
local h = redis.call('HMGET', KEYS[1], 's', 't')
if not h[1] then return 'missing' end
if h[2] ~= ARGV[1] then return 'taken' end
if h[1] == 'd' then return 'done' end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return 'ok'
"#;

/// Removes a record, in progress or completed, if its token is still ARGV[1].
///
/// KEYS: record, expiry index, completed index. ARGV: token, key. Answers 1 if it removed it.
const FORGET: &str = r#"
if redis.call('HGET', KEYS[1], 't') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return 1
"#;

/// Renews a held claim's lease: [`COMPLETE_MANY`]'s check, then the new deadline.
///
/// KEYS: record, expiry index. ARGV: token, lease_until, key, native TTL in ms (`''` = none).
/// Answers like [`COMPLETE_MANY`] does per item. The native TTL is set again, as a claim sets it, so the backstop
/// never removes a record before the deadline it was renewed to.
const EXTEND: &str = r#"
local h = redis.call('HMGET', KEYS[1], 's', 't')
if not h[1] then return 'missing' end
if h[2] ~= ARGV[1] then return 'taken' end
if h[1] == 'd' then return 'done' end
redis.call('HSET', KEYS[1], 'e', ARGV[2])
if ARGV[4] == '' then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 'ok'
"#;

/// Removes up to ARGV[2] records of one scope whose expires_at < ARGV[1], oldest first.
///
/// KEYS: expiry index, completed index. ARGV: expired_before, batch size, the scope's record
/// key prefix (record keys are that prefix + key; they carry the same hash tag, so the script
/// stays in its slot). Answers `{removed, looked_at}`. An index entry whose hash is already gone
/// (the native-expiry backstop took it) is removed and counted: stats counted it as a record.
const PURGE: &str = r#"
local before = ARGV[1]
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. before, 'LIMIT', 0, ARGV[2])
local removed = 0
for _, m in ipairs(members) do
  local rec = ARGV[3] .. m
  local e = redis.call('HGET', rec, 'e')
  -- The score is a double; the stored digits decide.
  if not e or lt(e, before) then
    redis.call('DEL', rec)
    redis.call('ZREM', KEYS[1], m)
    redis.call('ZREM', KEYS[2], m)
    removed = removed + 1
  end
end
return {removed, #members}
"#;

/// One scope's counts at ARGV[1] (now), from the indexes, in one consistent snapshot.
///
/// KEYS: expiry index, completed index. Answers `{records, live, live_completed}`.
const STATS: &str = r#"
return {
  redis.call('ZCARD', KEYS[1]),
  redis.call('ZCOUNT', KEYS[1], ARGV[1], '+inf'),
  redis.call('ZCOUNT', KEYS[2], ARGV[1], '+inf'),
}
"#;

/// The version guard: stores ARGV[1] if greater than the stored version (`decide_version`).
///
/// KEYS: the entity's version key. Answers `{applied (0/1), previous or nil}`.
const VERSION: &str = r#"
local current = redis.call('GET', KEYS[1])
if current and not ult(current, ARGV[1]) then return {0, current} end
redis.call('SET', KEYS[1], ARGV[1])
return {1, current}
"#;

/// `ZADD key score member ...` of a flat list of pairs, in as few calls as Lua's stack allows:
/// one call costs the server far more than one more pair in it. The scripts that index many
/// records collect their pairs and add them once, at the end: no command in between reads the
/// index, and one member never gets two scores in one script.
const ZADD_ALL: &str = r#"
local function zadd_all(key, pairs)
  for i = 1, #pairs, 2000 do
    redis.call('ZADD', key, unpack(pairs, i, math.min(i + 1999, #pairs)))
  end
end
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{COMPARE}{ZADD_ALL}{body}"))
}

pub(crate) static CLAIM_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(CLAIM));
pub(crate) static COMPLETE_MANY_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(COMPLETE_MANY));
pub(crate) static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(RELEASE));
pub(crate) static FORGET_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(FORGET));
pub(crate) static EXTEND_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(EXTEND));
pub(crate) static PURGE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(PURGE));
pub(crate) static STATS_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(STATS));
pub(crate) static VERSION_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(VERSION));
