//! # oncely-cache
//!
//! A bounded in-process cache of **completed** records in front of any oncely store, so that a
//! duplicate of work this process has seen done is answered without a round trip to a remote
//! store (PostgreSQL, MySQL, Redis).
//!
//! What it answers, and what it never does:
//! - It caches a record when this process completes it, and when the store answers a claim
//!   with `Duplicate`. A completed record does not change until it expires or is forgotten.
//! - A claim of a cached key is decided by the same rules as every store
//!   ([`decide_claim`]): `Duplicate` (the stored
//!   outcome) or `Conflict` (another payload) while the record is live. Anything else goes to
//!   the store: the cache **never answers `New`**, so it can never let work run twice, and it
//!   never hides from a claim a record another process completed (it only ever holds
//!   completed ones).
//! - `forget` in this process removes the key from the cache first; so does a `purge` here
//!   that removed anything (it empties the cache). A `forget` or an early `purge` **in another
//!   process** is seen here only once the entry leaves the cache: eventually consistent,
//!   within [`CacheOptions::ttl`].
//! - Outcomes larger than [`MAX_CACHED_OUTCOME`] are not cached, so memory stays below
//!   `capacity` times that.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use oncely_cache::{CacheOptions, CachedStore};
//! use oncely_core::{Oncely, Scope, Key, ClaimOutcome};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> oncely_core::Result<()> {
//! let remote = Arc::new(oncely_memory::MemoryStore::new()); // PostgreSQL, Redis, ...
//! let store = CachedStore::new(remote, CacheOptions::new(10_000, Duration::from_secs(60)));
//! let oncely = Oncely::new(Arc::new(store));
//! let (scope, key) = (Scope::default(), Key::new("evt-1")?);
//! let ClaimOutcome::New(claim) = oncely.claim(&scope, &key, None).await? else { panic!() };
//! oncely.complete(&claim, b"done").await?;
//! // Answered from the cache: no round trip.
//! assert!(matches!(oncely.claim(&scope, &key, None).await?, ClaimOutcome::Duplicate(_)));
//! # Ok(())
//! # }
//! ```
//!
//! With [`oncely::connect`](https://docs.rs/oncely), `?cache=ENTRIES` (and `&cache_ttl=SECONDS`)
//! on any store URL puts this cache in front of it.

#![warn(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use oncely_core::lifecycle::decide_claim;
use oncely_core::{
    Claim, ClaimOutcome, ClaimRequest, Completion, Key, Record, RecordState, Result, Scope, Store,
    StoreStats, Timestamp, VersionCheck, async_trait,
};

/// Outcomes larger than this (64 KiB) are not cached.
pub const MAX_CACHED_OUTCOME: usize = 64 * 1024;

/// How long an entry stays by default: how long a `forget` in another process may go unseen.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

/// The cache's size and how long an entry stays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheOptions {
    /// Most records held; the least recently used go first.
    pub capacity: u64,
    /// How long an entry stays, at most: a record forgotten or purged early by another process
    /// may still answer `Duplicate` here for that long.
    pub ttl: Duration,
}

impl CacheOptions {
    /// `capacity` records, each kept at most `ttl`.
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        CacheOptions { capacity, ttl }
    }
}

/// A store with a cache of completed records in front (see the crate docs).
pub struct CachedStore {
    inner: Arc<dyn Store>,
    records: Cache<(Scope, Key), Record>,
    options: CacheOptions,
}

impl std::fmt::Debug for CachedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedStore")
            .field("inner", &self.inner)
            .field("options", &self.options)
            .field("entries", &self.records.entry_count())
            .finish()
    }
}

impl CachedStore {
    /// `inner` with a cache of `options.capacity` completed records in front.
    pub fn new(inner: Arc<dyn Store>, options: CacheOptions) -> Self {
        CachedStore {
            inner,
            records: Cache::builder()
                .max_capacity(options.capacity)
                .time_to_live(options.ttl)
                .build(),
            options,
        }
    }

    /// The store behind the cache.
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }

    /// The answer the cache can give alone: `Duplicate` or `Conflict` from a live cached record.
    fn answer(&self, request: &ClaimRequest, now: Timestamp) -> Option<ClaimOutcome> {
        let record = self
            .records
            .get(&(request.scope.clone(), request.key.clone()))?;
        match decide_claim(Some(&record), request, now).outcome {
            outcome @ (ClaimOutcome::Duplicate(_) | ClaimOutcome::Conflict { .. }) => Some(outcome),
            // Expired here: the store decides (a takeover writes, so it is never ours to answer).
            _ => None,
        }
    }

    fn keep(&self, record: &Record) {
        if let RecordState::Completed { outcome } = &record.state
            && outcome.len() <= MAX_CACHED_OUTCOME
        {
            self.records
                .insert((record.scope.clone(), record.key.clone()), record.clone());
        }
    }

    fn keep_answers(&self, outcomes: &[ClaimOutcome]) {
        for outcome in outcomes {
            if let ClaimOutcome::Duplicate(record) = outcome {
                self.keep(record);
            }
        }
    }

    fn keep_completed(&self, claim: &Claim, outcome: &[u8], expires_at: Timestamp) {
        self.keep(&Record {
            scope: claim.scope.clone(),
            key: claim.key.clone(),
            state: RecordState::Completed {
                outcome: outcome.to_vec(),
            },
            fingerprint: claim.fingerprint,
            token: claim.token,
            attempt: claim.attempt,
            created_at: claim.claimed_at,
            expires_at,
        });
    }
}

#[async_trait]
impl Store for CachedStore {
    async fn claim_many(
        &self,
        requests: &[ClaimRequest],
        now: Timestamp,
    ) -> Result<Vec<ClaimOutcome>> {
        let cached: Vec<Option<ClaimOutcome>> =
            requests.iter().map(|r| self.answer(r, now)).collect();
        if cached.iter().all(Option::is_none) {
            let outcomes = self.inner.claim_many(requests, now).await?;
            self.keep_answers(&outcomes);
            return Ok(outcomes);
        }
        // Answered keys write nothing, so the rest keep their order among themselves.
        let rest: Vec<ClaimRequest> = requests
            .iter()
            .zip(&cached)
            .filter(|(_, c)| c.is_none())
            .map(|(r, _)| r.clone())
            .collect();
        let mut from_store = if rest.is_empty() {
            Vec::new()
        } else {
            self.inner.claim_many(&rest, now).await?
        };
        self.keep_answers(&from_store);
        from_store.reverse();
        Ok(cached
            .into_iter()
            .map(|c| {
                c.unwrap_or_else(|| {
                    from_store
                        .pop()
                        .expect("the store answers one outcome per request")
                })
            })
            .collect())
    }

    async fn claim(&self, request: &ClaimRequest, now: Timestamp) -> Result<ClaimOutcome> {
        if let Some(outcome) = self.answer(request, now) {
            return Ok(outcome);
        }
        // The store's own single claim: it may share a round trip with others (group commit).
        let outcome = self.inner.claim(request, now).await?;
        self.keep_answers(std::slice::from_ref(&outcome));
        Ok(outcome)
    }

    async fn complete(&self, claim: &Claim, outcome: &[u8], expires_at: Timestamp) -> Result<()> {
        self.inner.complete(claim, outcome, expires_at).await?;
        self.keep_completed(claim, outcome, expires_at);
        Ok(())
    }

    async fn complete_many(&self, items: &[Completion]) -> Result<Vec<Result<()>>> {
        let results = self.inner.complete_many(items).await?;
        for (item, result) in items.iter().zip(&results) {
            if result.is_ok() {
                self.keep_completed(&item.claim, &item.outcome, item.expires_at);
            }
        }
        Ok(results)
    }

    async fn release(&self, claim: &Claim) -> Result<()> {
        self.inner.release(claim).await
    }

    async fn extend(&self, claim: &Claim, lease_until: Timestamp) -> Result<()> {
        self.inner.extend(claim, lease_until).await
    }

    async fn forget(&self, scope: &Scope, key: &Key, token: u64) -> Result<bool> {
        // First, so no claim here is answered from the record once the store has let it go.
        self.records.invalidate(&(scope.clone(), key.clone()));
        self.inner.forget(scope, key, token).await
    }

    async fn get(&self, scope: &Scope, key: &Key) -> Result<Option<Record>> {
        self.inner.get(scope, key).await
    }

    async fn purge(&self, expired_before: Timestamp, limit: usize) -> Result<usize> {
        let purged = self.inner.purge(expired_before, limit).await?;
        if purged > 0 {
            // A purge may remove records still live (expired_before in the future).
            self.records.invalidate_all();
        }
        Ok(purged)
    }

    async fn stats(&self, now: Timestamp) -> Result<StoreStats> {
        self.inner.stats(now).await
    }

    async fn server_time(&self) -> Result<Option<Timestamp>> {
        self.inner.server_time().await
    }

    async fn apply_if_newer(
        &self,
        scope: &Scope,
        entity: &Key,
        version: u64,
    ) -> Result<VersionCheck> {
        self.inner.apply_if_newer(scope, entity, version).await
    }
}
