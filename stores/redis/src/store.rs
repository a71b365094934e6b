//! The store: claims, completions and the rest as scripts, one call per scope.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use oncely_core::group::DEFAULT_MAX_BATCH;
use oncely_core::lifecycle::decide_claim;
use oncely_core::lifecycle::decide_version;
use oncely_core::{
    Claim, ClaimOutcome, ClaimRequest, Completion, Error, GroupCommit, Key, LostReason, Record,
    Result, Scope, Store, StoreStats, Timestamp, VersionCheck, async_trait,
};
use redis::{RedisError, ScriptInvocation, Value};

use crate::connection::{Connection, Node};
use crate::keys::Layout;
use crate::options;
use crate::record;
use crate::scripts::{
    CLAIM_SCRIPT, COMPLETE_MANY_SCRIPT, EXTEND_SCRIPT, FORGET_SCRIPT, GET_SCRIPT,
    LEGACY_PURGE_SCRIPT, LEGACY_STATS_SCRIPT, PURGE_SCRIPT, RELEASE_SCRIPT, STATS_SCRIPT,
    VERSION_SCRIPT,
};

/// Batches of single calls on their way to the server at once, per kind (claims, completes).
/// Concurrent single completes are coalesced like claims: a script call costs the server far
/// more than one more item in a script's loop. `complete_many` sends one script per scope and
/// [`COMPLETE_CHUNK_BYTES`] of outcomes.
const BATCHES_IN_FLIGHT: usize = 4;

/// How many records one purge or stats script call reads at most (and one `SCAN` page asks
/// for): small, so they never hold the server (single-threaded for commands) long enough to
/// delay claims noticeably.
const PURGE_BATCH: usize = 128;

/// Outcome bytes one `complete_many` script call carries at most (a single larger outcome goes
/// alone): well under Redis's 1 GiB query buffer limit, and short enough not to hold the
/// single-threaded server long.
const COMPLETE_CHUNK_BYTES: usize = 16 << 20;

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
    /// Per node, where the last purge's walk stopped, so the next goes on from there: purge is
    /// called for a small batch at a time, and starting each walk over would pass the same
    /// live records again and again.
    purge_cursors: Mutex<HashMap<Node, u64>>,
    /// Concurrent single claims and completes go to the server as one script per scope and batch.
    group: GroupCommit,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Whether the server answered that it cannot serve yet: still loading its data after a
/// restart (`LOADING`), or a cluster or replica between masters (`TRYAGAIN`, `CLUSTERDOWN`,
/// `MASTERDOWN`). An outage like a refused connection: a completion that meets one is retried
/// while its lease lasts, where a `Backend` error would leave the key to run again after it.
fn not_ready(e: &RedisError) -> bool {
    use redis::ServerErrorKind;
    matches!(
        e.kind(),
        redis::ErrorKind::Server(
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
        )
    )
}

impl RedisStore {
    /// Connects to the server or cluster a URL names (see the crate docs for the forms).
    ///
    /// A server that cannot be reached is reported at once as [`Error::Unavailable`], with the
    /// password removed from the URL shown.
    pub async fn connect(url: &str) -> Result<Self> {
        let opts = options::parse(url)?;
        let conn = Connection::open(&opts.target, opts.tls_root.as_deref(), &opts.shown).await?;
        Ok(RedisStore {
            conn,
            layout: Layout::new(&opts.prefix),
            ttl_grace_ms: opts.ttl_grace.map(|g| g.as_millis() as i128),
            group: GroupCommit::new(&opts.shown, BATCHES_IN_FLIGHT, DEFAULT_MAX_BATCH),
            url: opts.shown,
            known_scopes: Mutex::new(HashMap::new()),
            purge_cursors: Mutex::new(HashMap::new()),
        })
    }

    /// Whether this store talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.conn, Connection::Cluster(_))
    }

    fn err(&self, e: RedisError) -> Error {
        // No route to a node is the cluster's way of saying a server is down.
        let no_node = e.kind() == redis::ErrorKind::ClusterConnectionNotFound;
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || no_node
            || not_ready(&e)
        {
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

    /// Where the next purge walk of `node` starts; `Some(cursor)` also saves that.
    fn purge_cursor(&self, node: Node, save: Option<u64>) -> u64 {
        let mut cursors = self.purge_cursors.lock().expect("purge cursors");
        match save {
            Some(cursor) => {
                cursors.insert(node, cursor);
                cursor
            }
            None => cursors.get(&node).copied().unwrap_or(0),
        }
    }

    /// The next page of a walk with a record in it, as groups that one script call may take
    /// (on a cluster, one per scope, since a script's keys must share a slot); `None` once the
    /// walk has covered every key.
    async fn next_page(&self, walk: &mut RecordWalk) -> Result<Option<Vec<Vec<Vec<u8>>>>> {
        let pattern = self.layout.all_records_pattern();
        while let Some(cursor) = walk.cursor {
            let (next, page) = self
                .conn
                .scan_strings(walk.node, cursor, &pattern, PURGE_BATCH)
                .await
                .map_err(|e| self.err(e))?;
            walk.page_start = cursor;
            walk.cursor = if next != 0 {
                Some(next)
            } else if walk.wrap {
                walk.wrap = false;
                Some(0)
            } else {
                None
            };
            let mut groups: Vec<Vec<Vec<u8>>> = Vec::new();
            let mut group_of: HashMap<Vec<u8>, usize> = HashMap::new();
            for key in page {
                let Some(scope) = self.layout.scope_of_record(&key) else {
                    continue;
                };
                let tag = if self.is_cluster() { scope } else { &[][..] };
                let g = *group_of.entry(tag.to_vec()).or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
                groups[g].push(key);
            }
            if !groups.is_empty() {
                return Ok(Some(groups));
            }
        }
        Ok(None)
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
            .arg(now.as_millis().to_string())
            .arg(self.layout.records(scope.as_str()).len());
        for &i in idx {
            let req = &requests[i];
            let lease_until = now.saturating_add(req.lease);
            call.key(self.layout.record(scope, &req.key))
                .arg(record::first_claim(
                    lease_until,
                    req.token,
                    now,
                    req.fingerprint.as_ref(),
                ))
                .arg(self.native_ttl(lease_until.as_millis() as i128 - now.as_millis() as i128));
        }
        let reply: Vec<Value> = call
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.err(e))?;
        if reply.len() != idx.len() {
            return Err(self.corrupt(format!(
                "claim script answered {} values for {} requests",
                reply.len(),
                idx.len()
            )));
        }
        idx.iter()
            .zip(&reply)
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
        call.arg(self.ttl_grace_ms.map_or(String::new(), |g| g.to_string()))
            .arg(MAX_NATIVE_TTL_MS.to_string());
        for &i in idx {
            let Completion {
                claim,
                outcome,
                expires_at,
            } = &items[i];
            call.key(self.layout.record(scope, &claim.key))
                .arg(claim.token.to_string())
                .arg(record::completed(claim, outcome, *expires_at))
                .arg(self.native_ttl_since_claim(claim, *expires_at));
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

    /// Turns one request's script answer into its outcome: its attempt if it claimed the key,
    /// else the live record it found.
    fn claim_answer(&self, req: &ClaimRequest, v: &Value, now: Timestamp) -> Result<ClaimOutcome> {
        match v {
            Value::Int(attempt) => {
                let attempt = u32::try_from(*attempt).map_err(|_| {
                    self.corrupt(format!("claim script answered attempt {attempt}"))
                })?;
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
            Value::BulkString(found) => {
                let live =
                    record::decode(&req.scope, &req.key, found).map_err(|d| self.corrupt(d))?;
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

/// A walk with `SCAN` over the record keys of every scope on one node: purge and stats walk
/// each node once, whatever the number of scopes. `SCAN` returns every key present for the
/// whole walk at least once; one may come twice if Redis resizes its table meanwhile, so purge
/// and stats are exact only on a keyspace that holds still.
struct RecordWalk {
    node: Node,
    /// Where the next page starts; `None` once the walk is over.
    cursor: Option<u64>,
    /// Where the page last returned started.
    page_start: u64,
    /// Whether to go round once more from cursor 0 at the end (a walk that started midway).
    wrap: bool,
}

impl RecordWalk {
    /// A walk of `node` from cursor `from`; one that starts midway goes round once more from
    /// the start, so it covers every key.
    fn new(node: Node, from: u64) -> Self {
        RecordWalk {
            node,
            cursor: Some(from),
            page_start: from,
            wrap: from != 0,
        }
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
        self.group.complete(self, claim, outcome, expires_at).await
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
        self.run_held(
            claim,
            RELEASE_SCRIPT
                .key(self.layout.record(&claim.scope, &claim.key))
                .arg(claim.token.to_string()),
        )
        .await
    }

    async fn extend(&self, claim: &Claim, lease_until: Timestamp) -> Result<()> {
        self.run_held(
            claim,
            EXTEND_SCRIPT
                .key(self.layout.record(&claim.scope, &claim.key))
                .arg(claim.token.to_string())
                .arg(lease_until.as_millis().to_string())
                .arg(self.native_ttl_since_claim(claim, lease_until)),
        )
        .await
    }

    async fn forget(&self, scope: &Scope, key: &Key, token: u64) -> Result<bool> {
        let removed: i64 = FORGET_SCRIPT
            .key(self.layout.record(scope, key))
            .key(self.layout.expiry_index(scope.as_str()))
            .key(self.layout.completed_index(scope.as_str()))
            .arg(token.to_string())
            .arg(key.as_str())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.err(e))?;
        Ok(removed == 1)
    }

    async fn get(&self, scope: &Scope, key: &Key) -> Result<Option<Record>> {
        let found: Option<Vec<u8>> = GET_SCRIPT
            .key(self.layout.record(scope, key))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.err(e))?;
        found
            .map(|v| record::decode(scope, key, &v).map_err(|d| self.corrupt(d)))
            .transpose()
    }

    async fn purge(&self, expired_before: Timestamp, limit: usize) -> Result<usize> {
        if limit == 0 {
            return Ok(0);
        }
        let before = expired_before.as_millis().to_string();
        let mut purged = 0;
        for scope in self.scopes().await? {
            // Records an earlier version wrote, by their index.
            loop {
                let want = (limit - purged).min(PURGE_BATCH);
                if want == 0 {
                    return Ok(purged);
                }
                let (removed, looked_at): (usize, usize) = LEGACY_PURGE_SCRIPT
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
        for node in self.conn.nodes().await.map_err(|e| self.err(e))? {
            let mut walk = RecordWalk::new(node, self.purge_cursor(node, None));
            while let Some(groups) = self.next_page(&mut walk).await? {
                for group in groups {
                    let mut rest = &group[..];
                    while !rest.is_empty() {
                        let want = (limit - purged).min(PURGE_BATCH);
                        if want == 0 {
                            // This page is not done: the next purge starts with it again.
                            self.purge_cursor(node, Some(walk.page_start));
                            return Ok(purged);
                        }
                        let (these, later) = rest.split_at(want.min(rest.len()));
                        let removed: usize = PURGE_SCRIPT
                            .key(these)
                            .arg(&before)
                            .invoke_async(&mut self.conn.clone())
                            .await
                            .map_err(|e| self.err(e))?;
                        purged += removed;
                        rest = later;
                    }
                }
            }
            self.purge_cursor(node, Some(0));
        }
        Ok(purged)
    }

    /// `TIME`: seconds and microseconds by the server's clock.
    async fn server_time(&self) -> Result<Option<Timestamp>> {
        let (secs, micros): (i64, i64) = redis::cmd("TIME")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.err(e))?;
        Ok(Some(Timestamp::from_millis(secs * 1_000 + micros / 1_000)))
    }

    async fn stats(&self, now: Timestamp) -> Result<StoreStats> {
        let now_arg = now.as_millis().to_string();
        let mut stats = StoreStats::default();
        let mut count = |(records, live, live_completed): (u64, u64, u64)| {
            stats.records += records;
            stats.completed += live_completed;
            stats.in_progress += live.saturating_sub(live_completed);
            stats.expired += records.saturating_sub(live);
        };
        for scope in self.scopes().await? {
            count(
                LEGACY_STATS_SCRIPT
                    .key(self.layout.expiry_index(&scope))
                    .key(self.layout.completed_index(&scope))
                    .arg(&now_arg)
                    .invoke_async(&mut self.conn.clone())
                    .await
                    .map_err(|e| self.err(e))?,
            );
        }
        for node in self.conn.nodes().await.map_err(|e| self.err(e))? {
            let mut walk = RecordWalk::new(node, 0);
            while let Some(groups) = self.next_page(&mut walk).await? {
                for group in groups {
                    count(
                        STATS_SCRIPT
                            .key(group)
                            .arg(&now_arg)
                            .invoke_async(&mut self.conn.clone())
                            .await
                            .map_err(|e| self.err(e))?,
                    );
                }
            }
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
