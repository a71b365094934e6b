//! # oncely-redis
//!
//! A [`Store`] on Redis, single node or Redis Cluster, for services that already run Redis and
//! want dedup decisions in about a millisecond, shared by every instance.
//!
//! ## When to use it
//!
//! Pick Redis when claims must be fast and shared across many instances, and your Redis is
//! durable enough for the dedup window you need (AOF with `appendfsync everysec` loses at most
//! about a second of acknowledged claims on a crash; a cache-only Redis with eviction loses
//! records silently — give oncely a `noeviction` database). If the dedup record must commit
//! together with your business writes, use a SQL store's transactional inbox instead.
//!
//! ## How it works
//!
//! - **Atomic by Lua.** `claim_many`, `complete`, `release`, `extend` and `apply_if_newer` each
//!   run as one server-side script (EVALSHA, loaded on first use), so the read-decide-write of
//!   S2's rules happens with no other client in between. The scripts implement the rules of
//!   [`oncely_core::lifecycle`]; the answers are built on the client by those very functions.
//! - **One slot per scope.** Every key of a scope carries the scope as its hash tag
//!   (`oncely:{orders}:r:evt-1`), so each script touches one slot and works unchanged on Redis
//!   Cluster. A batch spanning several scopes becomes one script call per scope, sent together,
//!   answered in request order.
//! - **Your clock, not Redis's.** Stores never read a clock: lease and retention are decided
//!   against the `now` the caller passes. Redis's own expiry is only a memory backstop (see
//!   *Expiry* below).
//! - **Purge in small steps.** Each scope keeps its records in a sorted set by `expires_at`;
//!   purge walks the scopes and removes at most 128 records per script call, so it never blocks
//!   claims for long.
//!
//! ## URLs
//!
//! | URL | meaning |
//! |---|---|
//! | `redis://[user:password@]host[:port][/db]` | one server (database `db`, default 0) |
//! | `redis+unix:///path/redis.sock` | one server over a Unix socket |
//! | `redis+cluster://[user:password@]h1:p1,h2:p2,...` | a Redis Cluster, from any of its nodes |
//!
//! Query parameters: `prefix=NAME` puts every key under `NAME` (default `oncely`; no braces), so
//! several applications or test runs share one Redis; `ttl_grace=SECONDS|off` sets the expiry
//! backstop's grace (default 3600). TLS (`rediss://`) is not built in.
//!
//! ## Expiry
//!
//! A record counts as expired when `expires_at < now` for the caller's `now`, decided inside the
//! scripts with exact integer comparison. Redis's native TTL plays no part in that decision: it
//! is set on each record only as a backstop, so memory is reclaimed even if nobody runs purge.
//! It is *relative*: `expires_at - now + grace` (a claim) or `expires_at - claimed_at + grace`
//! (a completion or a lease renewal, whose `now` the store is not told; `claimed_at` is
//! earlier, so that is longer, never shorter). A record can therefore vanish natively only
//! `grace` after it expired by the caller's clock, provided the caller's clock does not run
//! slower than the Redis server's by more than `grace` over the record's life. A vanished
//! expired record answers as purged: the next claim is `New` (attempt 1), its old holder gets
//! `ClaimLost(Missing)`.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use oncely_core::{Key, Oncely, Scope};
//! use oncely_redis::RedisStore;
//!
//! let store = RedisStore::connect("redis://127.0.0.1:6379/0?prefix=billing").await?;
//! let oncely = Oncely::new(Arc::new(store));
//! let out = oncely
//!     .run(&Scope::new("payments")?, &Key::new("evt-42")?, None, || async {
//!         Ok::<_, std::io::Error>(b"charged".to_vec())
//!     })
//!     .await?;
//! assert!(!out.was_replayed());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod keys;
mod scripts;
mod url;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use oncely_core::group::DEFAULT_MAX_BATCH;
use oncely_core::lifecycle::decide_claim;
use oncely_core::lifecycle::decide_version;
use oncely_core::{
    Claim, ClaimOutcome, ClaimRequest, Completion, Error, Fingerprint, GroupCommit, Key,
    LostReason, Record, RecordState, Result, Scope, Store, StoreStats, Timestamp, VersionCheck,
    async_trait,
};

/// Claim batches on their way to the server at once. Single completes are not coalesced: each
/// is one short script, and the multiplexed connection already pipelines concurrent ones.
/// `complete_many` sends one script per scope and [`COMPLETE_CHUNK_BYTES`] of outcomes.
const CLAIM_BATCHES_IN_FLIGHT: usize = 4;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, ScriptInvocation, Value,
};

pub use url::{DEFAULT_PREFIX, DEFAULT_TTL_GRACE};

use keys::Layout;
use scripts::{
    CLAIM_SCRIPT, COMPLETE_MANY_SCRIPT, COMPLETE_SCRIPT, EXTEND_SCRIPT, PURGE_SCRIPT,
    RELEASE_SCRIPT, STATS_SCRIPT, VERSION_SCRIPT,
};
use url::Target;

/// How many records one purge script call removes at most: small, so a purge never holds the
/// server (single-threaded for commands) long enough to delay claims noticeably.
const PURGE_BATCH: usize = 128;

/// Outcome bytes one `complete_many` script call carries at most (a single larger outcome goes
/// alone): well under Redis's 1 GiB query buffer limit, and short enough not to hold the
/// single-threaded server long.
const COMPLETE_CHUNK_BYTES: usize = 16 << 20;

/// How long a command may take before it is reported as unavailable. Generous: a 1 MiB outcome
/// on a busy two-core machine is well under it, a dead server is well over it.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Native TTLs longer than this (about 100 years) are not set at all: Redis rejects expiry
/// times that overflow, and such a record needs no backstop.
const MAX_NATIVE_TTL_MS: i128 = 100 * 365 * 24 * 3600 * 1000;

/// How long a scope counts as registered before a claim adds it to the registry again.
const REREGISTER_AFTER: Duration = Duration::from_secs(300);

/// The Redis store. See the crate docs.
pub struct RedisStore {
    conn: Connection,
    layout: Layout,
    ttl_grace_ms: Option<i128>,
    url: String,
    /// Scopes this process registered, and when: a claim adds its scope once per
    /// [`REREGISTER_AFTER`], so a registry lost to a `FLUSHDB` or a failover is soon whole again.
    known_scopes: Mutex<HashMap<Scope, Instant>>,
    /// Concurrent single claims go to the server as one script per scope and batch.
    group: GroupCommit,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// One server (reconnecting on failure) or a cluster: both behind the redis crate's
/// connection trait, so every command and script is written once.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

impl RedisStore {
    /// Connects to the server or cluster a URL names (see the crate docs for the forms).
    ///
    /// A server that cannot be reached is reported at once as [`Error::Unavailable`], with the
    /// password removed from the URL shown.
    pub async fn connect(url: &str) -> Result<Self> {
        let opts = url::parse(url)?;
        let shown = opts.shown.clone();
        let invalid = |e: RedisError| Error::InvalidUrl {
            url: shown.clone(),
            reason: e.to_string(),
        };
        let unavailable = |e: RedisError| Error::Unavailable {
            store: shown.clone(),
            source: format!("{e} (is Redis running? see README \"Stores\")").into(),
        };
        let conn = match &opts.target {
            Target::Single(url) => {
                let client = redis::Client::open(url.as_str()).map_err(invalid)?;
                // One direct connection first: a refused connection or a bad password is then
                // reported at once and as itself, not after the manager's reconnect backoff.
                let mut probe = client
                    .get_multiplexed_async_connection_with_config(
                        &AsyncConnectionConfig::new()
                            .set_connection_timeout(Some(CONNECT_TIMEOUT))
                            .set_response_timeout(Some(CONNECT_TIMEOUT)),
                    )
                    .await
                    .map_err(unavailable)?;
                redis::cmd("PING")
                    .query_async::<()>(&mut probe)
                    .await
                    .map_err(unavailable)?;
                drop(probe);
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(3);
                Connection::Single(
                    ConnectionManager::new_with_config(client, config)
                        .await
                        .map_err(unavailable)?,
                )
            }
            Target::Cluster(nodes) => {
                let client = ClusterClient::builder(nodes.iter().map(String::as_str))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(3)
                    .build()
                    .map_err(invalid)?;
                let mut conn = client.get_async_connection().await.map_err(unavailable)?;
                redis::cmd("PING")
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(unavailable)?;
                Connection::Cluster(conn)
            }
        };
        Ok(RedisStore {
            conn,
            layout: Layout::new(&opts.prefix),
            ttl_grace_ms: opts.ttl_grace.map(|g| g.as_millis() as i128),
            group: GroupCommit::new(&opts.shown, CLAIM_BATCHES_IN_FLIGHT, DEFAULT_MAX_BATCH),
            url: opts.shown,
            known_scopes: Mutex::new(HashMap::new()),
        })
    }

    /// Whether this store talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.conn, Connection::Cluster(_))
    }

    fn err(&self, e: RedisError) -> Error {
        // No route to a node is the cluster's way of saying a server is down.
        let no_node = e.kind() == redis::ErrorKind::ClusterConnectionNotFound;
        if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || no_node {
            let hint = if e.is_connection_refusal() {
                " (is Redis running? see README \"Stores\")"
            } else {
                ""
            };
            Error::Unavailable {
                store: self.url.clone(),
                source: format!("{e}{hint}").into(),
            }
        } else {
            Error::Backend {
                store: self.url.clone(),
                source: e.into(),
            }
        }
    }

    fn corrupt(&self, detail: impl Into<String>) -> Error {
        Error::Corrupt {
            store: self.url.clone(),
            detail: detail.into(),
        }
    }

    /// The native TTL of a record `claim` holds until `until` (completed or its lease renewed):
    /// the store is not told `now`, and `claimed_at` is no later, so the TTL is no shorter.
    fn native_ttl_since_claim(&self, claim: &Claim, until: Timestamp) -> String {
        self.native_ttl(until.as_millis() as i128 - claim.claimed_at.as_millis() as i128)
    }

    /// The native TTL for a record that expires `span_ms` after the moment it is written:
    /// the span plus the grace, or `""` for none (backstop off, or too far out to matter).
    fn native_ttl(&self, span_ms: i128) -> String {
        match self.ttl_grace_ms {
            Some(grace) => {
                let ttl = span_ms.max(0) + grace;
                if ttl > MAX_NATIVE_TTL_MS {
                    String::new()
                } else {
                    ttl.to_string()
                }
            }
            None => String::new(),
        }
    }

    /// Adds scopes this process has not registered yet to the registry. Done *before* their
    /// records are written, so purge and stats can always find a scope that has records.
    async fn register(&self, scopes: &[&Scope]) -> Result<()> {
        let missing: Vec<&Scope> = {
            let known = self.known_scopes.lock().expect("scope cache");
            scopes
                .iter()
                .copied()
                .filter(|s| {
                    known
                        .get(*s)
                        .is_none_or(|at| at.elapsed() > REREGISTER_AFTER)
                })
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let mut sadd = redis::cmd("SADD");
        sadd.arg(self.layout.registry());
        for scope in &missing {
            sadd.arg(scope.as_str());
        }
        sadd.query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(|e| self.err(e))?;
        let at = Instant::now();
        self.known_scopes
            .lock()
            .expect("scope cache")
            .extend(missing.into_iter().map(|s| (s.clone(), at)));
        Ok(())
    }

    /// Every registered scope, read in pages so a large registry never blocks the server.
    async fn scopes(&self) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        let mut cursor = 0u64;
        let mut seen = HashSet::new();
        loop {
            let (next, page): (u64, Vec<Vec<u8>>) = redis::cmd("SSCAN")
                .arg(self.layout.registry())
                .arg(cursor)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.err(e))?;
            for scope in page {
                let scope = String::from_utf8(scope)
                    .map_err(|_| self.corrupt("a registered scope is not UTF-8"))?;
                seen.insert(scope);
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(seen.into_iter().collect())
    }

    /// Claims the requests at `idx` (all of `scope`) in one script call, in order.
    async fn claim_scope(
        &self,
        scope: &Scope,
        idx: &[usize],
        requests: &[ClaimRequest],
        now: Timestamp,
    ) -> Result<Vec<ClaimOutcome>> {
        let mut call = CLAIM_SCRIPT.prepare_invoke();
        call.key(self.layout.expiry_index(scope.as_str()))
            .key(self.layout.completed_index(scope.as_str()))
            .arg(now.as_millis().to_string());
        for &i in idx {
            let req = &requests[i];
            let lease_until = now.saturating_add(req.lease);
            call.key(self.layout.record(scope, &req.key))
                .arg(req.key.as_str())
                .arg(req.fingerprint.as_ref().map_or(&[][..], |f| f.as_bytes()))
                .arg(req.token.to_string())
                .arg(lease_until.as_millis().to_string())
                .arg(self.native_ttl(lease_until.as_millis() as i128 - now.as_millis() as i128));
        }
        let reply: Vec<Value> = call
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.err(e))?;
        if reply.len() != idx.len() * 8 {
            return Err(self.corrupt(format!(
                "claim script answered {} values for {} requests",
                reply.len(),
                idx.len()
            )));
        }
        idx.iter()
            .zip(reply.chunks(8))
            .map(|(&i, answer)| self.claim_answer(&requests[i], answer, now))
            .collect()
    }

    /// Completes the items at `idx` (all of `scope`) in one script call, in order.
    async fn complete_scope(
        &self,
        scope: &Scope,
        idx: &[usize],
        items: &[Completion],
    ) -> Result<Vec<Result<()>>> {
        let mut call = COMPLETE_MANY_SCRIPT.prepare_invoke();
        call.key(self.layout.expiry_index(scope.as_str()))
            .key(self.layout.completed_index(scope.as_str()));
        for &i in idx {
            let Completion {
                claim,
                outcome,
                expires_at,
            } = &items[i];
            // As in `complete`: `claimed_at` is no later than now, so the TTL is no shorter.
            let span = expires_at.as_millis() as i128 - claim.claimed_at.as_millis() as i128;
            call.key(self.layout.record(&claim.scope, &claim.key))
                .arg(claim.token.to_string())
                .arg(&outcome[..])
                .arg(expires_at.as_millis().to_string())
                .arg(claim.key.as_str())
                .arg(self.native_ttl(span));
        }
        let answers: Vec<String> = call
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.err(e))?;
        if answers.len() != idx.len() {
            return Err(self.corrupt(format!(
                "complete script answered {} values for {} items",
                answers.len(),
                idx.len()
            )));
        }
        Ok(idx
            .iter()
            .zip(&answers)
            .map(|(&i, answer)| self.held(&items[i].claim, answer))
            .collect())
    }

    /// Turns one request's 8 script values into its outcome.
    fn claim_answer(
        &self,
        req: &ClaimRequest,
        v: &[Value],
        now: Timestamp,
    ) -> Result<ClaimOutcome> {
        let fields: Vec<Option<&[u8]>> = v.iter().map(bytes).collect();
        match fields[0] {
            Some(b"n") => {
                let attempt = parse(fields[4], "attempt").map_err(|d| self.corrupt(d))?;
                Ok(ClaimOutcome::New(Claim {
                    scope: req.scope.clone(),
                    key: req.key.clone(),
                    token: req.token,
                    attempt,
                    fingerprint: req.fingerprint,
                    claimed_at: now,
                    lease_until: now.saturating_add(req.lease),
                }))
            }
            Some(b"r") => {
                let live = decode_record(&req.scope, &req.key, &fields[1..])
                    .map_err(|d| self.corrupt(d))?;
                // The script found the record live; the shared rules now say what that means.
                let decision = decide_claim(Some(&live), req, now);
                if decision.write.is_some() {
                    return Err(self.corrupt(format!(
                        "claim script kept {}/{} as live, but it expired at {}",
                        req.scope, req.key, live.expires_at
                    )));
                }
                Ok(decision.outcome)
            }
            _ => Err(self.corrupt("claim script answered an unknown kind")),
        }
    }

    /// Maps a guarded script's answer: `ok`, or why the claim is no longer held.
    /// Runs a script that answers whether `claim` still held its key (`ok`, `missing`, `taken`
    /// or `done`): `Ok` if it did, else [`Error::ClaimLost`].
    async fn run_held(&self, claim: &Claim, script: &ScriptInvocation<'_>) -> Result<()> {
        let answer: String = script
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.err(e))?;
        self.held(claim, &answer)
    }

    fn held(&self, claim: &Claim, answer: &str) -> Result<()> {
        let reason = match answer {
            "ok" => return Ok(()),
            "missing" => LostReason::Missing,
            "taken" => LostReason::TakenOver,
            "done" => LostReason::AlreadyCompleted,
            other => return Err(self.corrupt(format!("script answered `{other}`"))),
        };
        Err(Error::ClaimLost {
            scope: claim.scope.clone(),
            key: claim.key.clone(),
            reason,
        })
    }
}

/// Indexes grouped by scope, scopes in first-seen order, each group in the given order.
fn by_scope<'a>(scopes: impl Iterator<Item = &'a Scope>) -> Vec<(&'a Scope, Vec<usize>)> {
    let mut groups: Vec<(&Scope, Vec<usize>)> = Vec::new();
    let mut group_of: HashMap<&Scope, usize> = HashMap::new();
    for (i, scope) in scopes.enumerate() {
        let g = *group_of.entry(scope).or_insert_with(|| {
            groups.push((scope, Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(i);
    }
    groups
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn parse<T: std::str::FromStr>(field: Option<&[u8]>, what: &str) -> Result<T, String> {
    let text = field.ok_or_else(|| format!("{what} is missing"))?;
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("{what} `{}` is not a number", String::from_utf8_lossy(text)))
}

/// Builds a record from its hash fields `s f t a c e o`; the error says what was wrong.
fn decode_record(scope: &Scope, key: &Key, f: &[Option<&[u8]>]) -> Result<Record, String> {
    let state = match f[0] {
        Some(b"p") => RecordState::InProgress,
        Some(b"d") => RecordState::Completed {
            outcome: f[6].unwrap_or_default().to_vec(),
        },
        _ => return Err(format!("{scope}/{key} has an unknown state")),
    };
    let fingerprint = match f[1] {
        None => None,
        Some(b) => Some(
            Fingerprint::from_slice(b)
                .ok_or_else(|| format!("fingerprint is {} bytes, expected 32", b.len()))?,
        ),
    };
    Ok(Record {
        scope: scope.clone(),
        key: key.clone(),
        state,
        fingerprint,
        token: parse(f[2], "token")?,
        attempt: parse(f[3], "attempt")?,
        created_at: Timestamp::from_millis(parse(f[4], "created_at")?),
        expires_at: Timestamp::from_millis(parse(f[5], "expires_at")?),
    })
}

#[async_trait]
impl Store for RedisStore {
    async fn claim_many(
        &self,
        requests: &[ClaimRequest],
        now: Timestamp,
    ) -> Result<Vec<ClaimOutcome>> {
        let groups = by_scope(requests.iter().map(|req| &req.scope));
        let scopes: Vec<&Scope> = groups.iter().map(|(s, _)| *s).collect();
        self.register(&scopes).await?;
        // One script per scope (one slot each), all in flight at once: the multiplexed
        // connection pipelines them, and on a cluster each goes to its scope's node.
        let answers = try_join_all(
            groups
                .iter()
                .map(|(scope, idx)| self.claim_scope(scope, idx, requests, now)),
        )
        .await?;
        let mut outcomes: Vec<Option<ClaimOutcome>> = vec![None; requests.len()];
        for ((_, idx), answer) in groups.iter().zip(answers) {
            for (&i, outcome) in idx.iter().zip(answer) {
                outcomes[i] = Some(outcome);
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("every request is in one group"))
            .collect())
    }

    async fn claim(&self, request: &ClaimRequest, now: Timestamp) -> Result<ClaimOutcome> {
        self.group.claim(self, request, now).await
    }

    async fn complete(&self, claim: &Claim, outcome: &[u8], expires_at: Timestamp) -> Result<()> {
        let scope = claim.scope.as_str();
        self.run_held(
            claim,
            COMPLETE_SCRIPT
                .key(self.layout.record(&claim.scope, &claim.key))
                .key(self.layout.expiry_index(scope))
                .key(self.layout.completed_index(scope))
                .arg(claim.token.to_string())
                .arg(outcome)
                .arg(expires_at.as_millis().to_string())
                .arg(claim.key.as_str())
                .arg(self.native_ttl_since_claim(claim, expires_at)),
        )
        .await
    }

    /// One script per scope (one slot each) and 16 MiB of outcomes, all in flight at once, as
    /// in `claim_many`. Each script is atomic; with items of several scopes (or more than 16 MiB
    /// of outcomes), an outer error may come after some scripts ran.
    async fn complete_many(&self, items: &[Completion]) -> Result<Vec<Result<()>>> {
        let mut groups: Vec<(&Scope, Vec<usize>)> = Vec::new();
        for (scope, idx) in by_scope(items.iter().map(|item| &item.claim.scope)) {
            let mut chunk = Vec::new();
            let mut bytes = 0;
            for i in idx {
                let len = items[i].outcome.len();
                if !chunk.is_empty() && bytes + len > COMPLETE_CHUNK_BYTES {
                    groups.push((scope, std::mem::take(&mut chunk)));
                    bytes = 0;
                }
                chunk.push(i);
                bytes += len;
            }
            groups.push((scope, chunk));
        }
        let answers = try_join_all(
            groups
                .iter()
                .map(|(scope, idx)| self.complete_scope(scope, idx, items)),
        )
        .await?;
        let mut results: Vec<Option<Result<()>>> = (0..items.len()).map(|_| None).collect();
        for ((_, idx), answer) in groups.iter().zip(answers) {
            for (&i, result) in idx.iter().zip(answer) {
                results[i] = Some(result);
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.expect("every item is in one group"))
            .collect())
    }

    async fn release(&self, claim: &Claim) -> Result<()> {
        let scope = claim.scope.as_str();
        self.run_held(
            claim,
            RELEASE_SCRIPT
                .key(self.layout.record(&claim.scope, &claim.key))
                .key(self.layout.expiry_index(scope))
                .key(self.layout.completed_index(scope))
                .arg(claim.token.to_string())
                .arg(claim.key.as_str()),
        )
        .await
    }

    async fn extend(&self, claim: &Claim, lease_until: Timestamp) -> Result<()> {
        self.run_held(
            claim,
            EXTEND_SCRIPT
                .key(self.layout.record(&claim.scope, &claim.key))
                .key(self.layout.expiry_index(claim.scope.as_str()))
                .arg(claim.token.to_string())
                .arg(lease_until.as_millis().to_string())
                .arg(claim.key.as_str())
                .arg(self.native_ttl_since_claim(claim, lease_until)),
        )
        .await
    }

    async fn get(&self, scope: &Scope, key: &Key) -> Result<Option<Record>> {
        let fields: Vec<Value> = redis::cmd("HMGET")
            .arg(self.layout.record(scope, key))
            .arg(&["s", "f", "t", "a", "c", "e", "o"])
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.err(e))?;
        let fields: Vec<Option<&[u8]>> = fields.iter().map(bytes).collect();
        if fields.len() != 7 {
            return Err(self.corrupt("HMGET answered the wrong number of fields"));
        }
        if fields[0].is_none() {
            return Ok(None);
        }
        decode_record(scope, key, &fields)
            .map(Some)
            .map_err(|d| self.corrupt(d))
    }

    async fn purge(&self, expired_before: Timestamp, limit: usize) -> Result<usize> {
        if limit == 0 {
            return Ok(0);
        }
        let before = expired_before.as_millis().to_string();
        let mut purged = 0;
        for scope in self.scopes().await? {
            loop {
                let want = (limit - purged).min(PURGE_BATCH);
                if want == 0 {
                    return Ok(purged);
                }
                let (removed, looked_at): (usize, usize) = PURGE_SCRIPT
                    .key(self.layout.expiry_index(&scope))
                    .key(self.layout.completed_index(&scope))
                    .arg(&before)
                    .arg(want)
                    .arg(self.layout.records(&scope))
                    .invoke_async(&mut self.conn.clone())
                    .await
                    .map_err(|e| self.err(e))?;
                purged += removed;
                if looked_at < want || removed == 0 {
                    break;
                }
            }
        }
        Ok(purged)
    }

    async fn stats(&self, now: Timestamp) -> Result<StoreStats> {
        let now_arg = now.as_millis().to_string();
        let mut stats = StoreStats::default();
        for scope in self.scopes().await? {
            let (records, live, live_completed): (u64, u64, u64) = STATS_SCRIPT
                .key(self.layout.expiry_index(&scope))
                .key(self.layout.completed_index(&scope))
                .arg(&now_arg)
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(|e| self.err(e))?;
            stats.records += records;
            stats.completed += live_completed;
            stats.in_progress += live.saturating_sub(live_completed);
            stats.expired += records.saturating_sub(live);
        }
        Ok(stats)
    }

    async fn apply_if_newer(
        &self,
        scope: &Scope,
        entity: &Key,
        version: u64,
    ) -> Result<VersionCheck> {
        let (applied, previous): (u8, Option<String>) = VERSION_SCRIPT
            .key(self.layout.version(scope, entity))
            .arg(version.to_string())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.err(e))?;
        let previous = previous
            .map(|p| {
                p.parse::<u64>()
                    .map_err(|_| self.corrupt(format!("stored version `{p}` is not a u64")))
            })
            .transpose()?;
        // The script applied iff the version is newer; the shared rule builds the answer.
        let check = decide_version(previous, version);
        if matches!(check, VersionCheck::Applied { .. }) != (applied == 1) {
            return Err(self.corrupt(format!(
                "version script and rule disagree on {version} over {previous:?}"
            )));
        }
        Ok(check)
    }
}
