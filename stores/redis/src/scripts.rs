//! The server-side Lua scripts. Each runs atomically on the node that owns its scope's slot, so
//! every read-decide-write of the record lifecycle happens without another client in between.
//!
//! Conventions shared by all of them:
//! - every key a script touches carries its scope's hash tag, so a script never crosses a slot
//!   and runs unchanged on Redis Cluster;
//! - timestamps, tokens and versions travel and are stored as decimal strings and are compared
//!   as integers *by their digits* (`lt`, `ult`): Lua numbers are doubles, which lose u64 tokens
//!   and i64 timestamps near their limits;
//! - a record is one string (see [`crate::record`]): `<state> <expires_at> <token> <attempt>
//!   <created_at> <fingerprint><outcome>`, so a claim of a new key is one `SET ... NX GET PX`
//!   and a completion one `GET` and one `SET ... PX`, with no index to keep in step: retention is the native TTL, and purge and
//!   stats walk the records with `SCAN`;
//! - records an earlier version wrote as hashes (`s f t a c e o`, indexed in the scope's
//!   sorted sets `x` and `c`) are still read, answered and replaced, so processes of both
//!   versions can share a Redis during a rolling upgrade.

use std::sync::LazyLock;

use redis::Script;

/// Shared functions: integer comparison of canonical decimal strings (what Rust's `to_string`
/// writes), and reading a record in either format.
const COMMON: &str = r#"
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
-- A record string's state, expires_at and token, and where the token ends.
local function head(v)
  local e_end = string.find(v, ' ', 3, true)
  local t_end = string.find(v, ' ', e_end + 1, true)
  return string.sub(v, 1, 1), string.sub(v, 3, e_end - 1), string.sub(v, e_end + 1, t_end - 1), t_end, e_end
end
-- The error of a command on a legacy hash (WRONGTYPE) is the answer 'a hash is there'; any other
-- error is raised.
local function hash_there(reply)
  if type(reply) ~= 'table' then return false end
  if not string.find(reply.err, 'WRONGTYPE', 1, true) then error(reply.err) end
  return true
end
-- A legacy record hash, as a record string (false if there is none).
local function legacy(rec)
  local h = redis.call('HMGET', rec, 's', 'e', 't', 'a', 'c', 'f', 'o')
  if not h[1] then return false end
  local fp = '-'
  if h[6] then fp = 'F' .. h[6] end
  return h[1] .. ' ' .. h[2] .. ' ' .. h[3] .. ' ' .. h[4] .. ' ' .. h[5] .. ' ' .. fp .. (h[7] or '')
end
-- The record at rec as a string (false if none), and whether it is a legacy hash.
local function read(rec)
  local v = redis.pcall('GET', rec)
  if hash_there(v) then return legacy(rec), true end
  return v, false
end
-- Removes a legacy record and its entries in the legacy indexes.
local function drop_legacy(rec, expiry, completed, member)
  redis.call('DEL', rec)
  redis.call('ZREM', expiry, member)
  redis.call('ZREM', completed, member)
end
-- Whether `token` holds the claim on rec: 'ok' and the record, else why not (check_holder's
-- rule: 'missing', 'taken', 'done'; `100` is `d`). A legacy hash is always another's: this
-- version never writes one.
local function held(v, token)
  -- As head() does, without the fields it does not need: this runs for every completion.
  local e_end = string.find(v, ' ', 3, true)
  local t_end = string.find(v, ' ', e_end + 1, true)
  if string.sub(v, e_end + 1, t_end - 1) ~= token then return 'taken' end
  if string.byte(v, 1) == 100 then return 'done' end
  return 'ok', v, e_end
end
local function holder(rec, token)
  local v = redis.pcall('GET', rec)
  if hash_there(v) then return 'taken' end
  if not v then return 'missing' end
  return held(v, token)
end
local function set(rec, value, ttl)
  if ttl == '' then
    redis.call('SET', rec, value)
  else
    redis.call('SET', rec, value, 'PX', ttl)
  end
end
"#;

/// Claims a batch of one scope, in order.
///
/// KEYS: the scope's legacy expiry and completed indexes, then the record of each request.
/// ARGV: now, the length of the scope's record-key prefix, then per request: the record a
/// first attempt writes (built by the client, so the common case concatenates nothing here)
/// and its native TTL in ms (`''` = none).
///
/// Answers one value per request: a live record (`expires_at >= now`) is left alone and
/// answered as its string, for the caller to turn into Duplicate / InProgress / Conflict by the
/// shared rules; anything else (absent, or expired: lease ran out, retention ended) is replaced
/// by a fresh in-progress claim and answered as its attempt, an integer. Later requests of the
/// batch see the earlier ones' writes, so a key twice is New then InProgress.
const CLAIM: &str = r#"
local now, plen = ARGV[1], tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS - 2 do
  local rec, first, ttl = KEYS[2 + i], ARGV[1 + 2 * i], ARGV[2 + 2 * i]
  -- The common case, a key not seen before, in one command: written unless a record is there,
  -- which then comes back instead.
  local v
  if ttl == '' then
    v = redis.pcall('SET', rec, first, 'NX', 'GET')
  else
    v = redis.pcall('SET', rec, first, 'NX', 'GET', 'PX', ttl)
  end
  local old = false
  if hash_there(v) then v, old = legacy(rec), true end
  if not v then
    if old then
      -- A hash with no state: nothing to answer with, so it is replaced like an absent record.
      drop_legacy(rec, KEYS[1], KEYS[2], string.sub(rec, plen + 1))
      set(rec, first, ttl)
    end
    out[i] = 1
  else
    local _, e, _, t_end = head(v)
    if not lt(e, now) then
      out[i] = v
    else
      local a_end = string.find(v, ' ', t_end + 1, true)
      local attempt = math.min(tonumber(string.sub(v, t_end + 1, a_end - 1)) + 1, 4294967295)
      if old then drop_legacy(rec, KEYS[1], KEYS[2], string.sub(rec, plen + 1)) end
      local _, _, _, f_end = head(first)
      set(rec, string.sub(first, 1, f_end) .. string.format('%d', attempt) .. string.sub(first, f_end + 2), ttl)
      out[i] = attempt
    end
  end
end
return out
"#;

/// Completes a batch of held claims of one scope, in order: single completes too, coalesced.
///
/// KEYS: the record of each item. ARGV: the native TTL's grace in ms (`''` = none) and its
/// longest TTL, then per item: token, the completed record string, native TTL in ms (`''` =
/// none). Answers per item `ok`, or why the claim is not held: `missing`, `taken` (another
/// token), `done` (already completed). One item's answer does not stop the others.
///
/// A held claim is the common case, so the completed record is written first (`SET ... XX
/// GET`: one command) and the record it replaced checked after. If the claim was not held,
/// that record is put back as it was, with the native TTL it was written with (from its own
/// times: no shorter than what it had left); no other client sees the step in between.
const COMPLETE_MANY: &str = r#"
local grace, longest = ARGV[1], tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS do
  local rec, base = KEYS[i], 3 * i
  local v
  if ARGV[base + 2] == '' then
    v = redis.pcall('SET', rec, ARGV[base + 1], 'XX', 'GET')
  else
    v = redis.pcall('SET', rec, ARGV[base + 1], 'XX', 'GET', 'PX', ARGV[base + 2])
  end
  if hash_there(v) then
    out[i] = 'taken'
  elseif not v then
    out[i] = 'missing'
  else
    out[i] = held(v, ARGV[base])
    if out[i] ~= 'ok' then
      local _, e, _, t_end = head(v)
      local a_end = string.find(v, ' ', t_end + 1, true)
      local c_end = string.find(v, ' ', a_end + 1, true)
      local ttl = math.max(tonumber(e) - tonumber(string.sub(v, a_end + 1, c_end - 1)), 0)
      if grace == '' or ttl + tonumber(grace) > longest then
        redis.call('SET', rec, v)
      else
        redis.call('SET', rec, v, 'PX', string.format('%d', ttl + tonumber(grace)))
      end
    end
  end
end
return out
"#;

/// Releases a held claim: the record goes, so the next delivery is New.
///
/// KEYS: record. ARGV: token. Answers like [`COMPLETE_MANY`] does per item.
const RELEASE: &str = r#"
local answer = holder(KEYS[1], ARGV[1])
if answer == 'ok' then redis.call('DEL', KEYS[1]) end
return answer
"#;

/// Removes a record, in progress or completed, if its token is still ARGV[1].
///
/// KEYS: record, legacy expiry index, legacy completed index. ARGV: token, key. Answers 1 if it
/// removed it.
const FORGET: &str = r#"
local v, old = read(KEYS[1])
if not v then return 0 end
local _, _, t = head(v)
if t ~= ARGV[1] then return 0 end
if old then drop_legacy(KEYS[1], KEYS[2], KEYS[3], ARGV[2]) else redis.call('DEL', KEYS[1]) end
return 1
"#;

/// Renews a held claim's lease: [`COMPLETE_MANY`]'s check, then the new deadline.
///
/// KEYS: record. ARGV: token, lease_until, native TTL in ms (`''` = none). Answers like
/// [`COMPLETE_MANY`] does per item. The native TTL is set again, as a claim sets it, so the
/// backstop never removes a record before the deadline it was renewed to.
const EXTEND: &str = r#"
local answer, v, e_end = holder(KEYS[1], ARGV[1])
if answer == 'ok' then set(KEYS[1], 'p ' .. ARGV[2] .. string.sub(v, e_end), ARGV[3]) end
return answer
"#;

/// The record at KEYS[1] as a string, in either format; nil if there is none.
const GET: &str = r#"
local v = read(KEYS[1])
return v
"#;

/// Removes the records among KEYS (one scope's, from a `SCAN` page) whose expires_at < ARGV[1].
/// Answers how many it removed. Legacy hashes are left to [`LEGACY_PURGE`].
const PURGE: &str = r#"
local removed = 0
for i = 1, #KEYS do
  local v = redis.pcall('GET', KEYS[i])
  if type(v) == 'string' then
    local _, e = head(v)
    if lt(e, ARGV[1]) then
      redis.call('DEL', KEYS[i])
      removed = removed + 1
    end
  end
end
return removed
"#;

/// Counts the records among KEYS (one scope's, from a `SCAN` page) at ARGV[1] (now). Answers
/// `{records, live, live_completed}`. Legacy hashes are left to [`LEGACY_STATS`].
const STATS: &str = r#"
local records, live, done = 0, 0, 0
for i = 1, #KEYS do
  local v = redis.pcall('GET', KEYS[i])
  if type(v) == 'string' then
    local s, e = head(v)
    records = records + 1
    if not lt(e, ARGV[1]) then
      live = live + 1
      if s == 'd' then done = done + 1 end
    end
  end
end
return {records, live, done}
"#;

/// Removes up to ARGV[2] legacy records of one scope whose expires_at < ARGV[1], oldest first.
///
/// KEYS: legacy expiry index, legacy completed index. ARGV: expired_before, batch size, the
/// scope's record key prefix. Answers `{removed, looked_at}`. An index entry whose hash is
/// gone (native expiry took it) is removed and counted: stats counted it as a record. Once
/// every legacy record is gone, so are the indexes (Redis drops an empty sorted set).
const LEGACY_PURGE: &str = r#"
local before = ARGV[1]
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. before, 'LIMIT', 0, ARGV[2])
local removed = 0
for _, m in ipairs(members) do
  local rec = ARGV[3] .. m
  local e = redis.pcall('HGET', rec, 'e')
  if not e then
    -- Expired natively: stats counted it as a record, so it counts as purged.
    redis.call('ZREM', KEYS[1], m)
    redis.call('ZREM', KEYS[2], m)
    removed = removed + 1
  elseif type(e) ~= 'string' then
    redis.call('ZREM', KEYS[1], m)
    redis.call('ZREM', KEYS[2], m)
  elseif lt(e, before) then
    drop_legacy(rec, KEYS[1], KEYS[2], m)
    removed = removed + 1
  end
end
return {removed, #members}
"#;

/// One scope's legacy records counted at ARGV[1] (now), from the legacy indexes.
///
/// KEYS: legacy expiry index, legacy completed index. Answers `{records, live, live_completed}`.
const LEGACY_STATS: &str = r#"
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

fn script(body: &str) -> Script {
    Script::new(&format!("{COMMON}{body}"))
}

pub(crate) static CLAIM_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(CLAIM));
pub(crate) static COMPLETE_MANY_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(COMPLETE_MANY));
pub(crate) static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(RELEASE));
pub(crate) static FORGET_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(FORGET));
pub(crate) static EXTEND_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(EXTEND));
pub(crate) static GET_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(GET));
pub(crate) static PURGE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(PURGE));
pub(crate) static STATS_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(STATS));
pub(crate) static LEGACY_PURGE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(LEGACY_PURGE));
pub(crate) static LEGACY_STATS_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(LEGACY_STATS));
pub(crate) static VERSION_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(VERSION));
