//! [`Oncely`]: the lifecycle over any [`Store`], with a clock, a lease and a retention.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::panic::catch_unwind;
use crate::telemetry;
use crate::time::{Measure, StoreOffset};
use crate::trace::SpanKeys;
use crate::{
    Claim, ClaimOutcome, ClaimRequest, Clock, Completion, Error, Fingerprint, ForgetOutcome, Key,
    OutcomeUnknown, Record, Result, Scope, Store, StoreStats, SystemClock, Timestamp, VersionCheck,
};

/// Default lease: long enough for most handlers, short enough that a crash costs little.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// Default retention of completed records: 7 days, longer than most brokers' redelivery window.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The claim -> complete / release lifecycle over a store.
///
/// Cheap to clone; clones share the store and the clock.
///
/// Leases are decided by the store's clock where the store has one
/// ([`Store::server_time`]: PostgreSQL, MySQL, Redis): the host's clock corrected by the offset
/// measured at the first claim and again every [`CLOCK_RESYNC`](crate::CLOCK_RESYNC), to within
/// half a round trip. Otherwise a host whose clock runs ahead would see other hosts' live leases
/// as run out and execute their keys again. An offset over a second is logged as a warning.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> oncely_core::Result<()> {
/// use oncely_core::{ClaimOutcome, Key, Oncely, Scope};
/// let store = std::sync::Arc::new(oncely_memory::MemoryStore::default());
/// let oncely = Oncely::new(store);
/// let (scope, key) = (Scope::new("payments")?, Key::new("evt-42")?);
///
/// match oncely.claim(&scope, &key, None).await? {
///     ClaimOutcome::New(claim) => {
///         // ... charge the card, then record what happened ...
///         oncely.complete(&claim, b"charge ch_1").await?;
///     }
///     ClaimOutcome::Duplicate(record) => assert_eq!(record.outcome(), Some(&b"charge ch_1"[..])),
///     ClaimOutcome::InProgress { retry_after } => { /* nack, redeliver after retry_after */ }
///     ClaimOutcome::Conflict { .. } => { /* same key, different payload: reject */ }
/// }
/// // The second delivery of evt-42 is a duplicate, with the stored outcome.
/// assert!(matches!(oncely.claim(&scope, &key, None).await?, ClaimOutcome::Duplicate(_)));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Oncely {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// `None`: the clock is taken as it is.
    follow: Option<Arc<StoreOffset>>,
    lease: Duration,
    retention: Duration,
    span_keys: SpanKeys,
    counters: Arc<telemetry::ClaimCounters>,
}

/// An offset to the store's clock above this is logged: the hosts' clocks need looking at.
const SKEW_WARNING: i64 = 1_000;

impl Oncely {
    /// The lifecycle over `store`, with the system clock, [`DEFAULT_LEASE`] and [`DEFAULT_RETENTION`].
    pub fn new(store: Arc<dyn Store>) -> Self {
        Oncely {
            store,
            clock: Arc::new(SystemClock),
            follow: Some(Arc::default()),
            lease: DEFAULT_LEASE,
            retention: DEFAULT_RETENTION,
            span_keys: SpanKeys::Plain,
            counters: Arc::default(),
        }
    }

    /// Uses `clock`, as it is, for every lease and retention decision: nothing corrects it to
    /// the store's clock (a [`ManualClock`](crate::ManualClock) in tests).
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self.follow = None;
        self
    }

    /// Uses `clock` as this host's clock, corrected to the store's as the system clock is (see
    /// [`Oncely`]): how a test gives one instance a clock that is off.
    pub fn with_host_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self.follow = Some(Arc::default());
        self
    }

    /// How long a claim is held before a redelivery may take it over. At least 1 ms.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(1));
        self
    }

    /// How long a completed record is kept and replayed.
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// How spans name keys (the lifecycle's, and those of the HTTP layer and the consumer that
    /// run on this instance): as they are (the default) or hashed. See [`SpanKeys`].
    pub fn with_span_keys(mut self, span_keys: SpanKeys) -> Self {
        self.span_keys = span_keys;
        self
    }

    /// How spans name keys (see [`with_span_keys`](Self::with_span_keys)).
    pub fn span_keys(&self) -> SpanKeys {
        self.span_keys
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The clock leases and retention are measured by (uncorrected to the store's).
    pub(crate) fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// The configured lease.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// The configured retention.
    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// Now, by this instance's clock: corrected to the store's by the offset last measured.
    pub fn now(&self) -> Timestamp {
        self.corrected(self.clock.now())
    }

    /// `host`, a reading of this instance's clock, corrected to the store's.
    fn corrected(&self, host: Timestamp) -> Timestamp {
        match &self.follow {
            Some(follow) => {
                Timestamp::from_millis(host.as_millis().saturating_add(follow.offset()))
            }
            None => host,
        }
    }

    /// [`now`](Self::now), after measuring the offset to the store's clock if it is due: before
    /// the first decision, then every [`CLOCK_RESYNC`](crate::CLOCK_RESYNC).
    async fn synced_now(&self) -> Result<Timestamp> {
        let Some(follow) = &self.follow else {
            return Ok(self.clock.now());
        };
        // One reading serves both the check and the answer: the hot path reads the clock once.
        let host = self.clock.now();
        let due = follow.due(host);
        if matches!(due, Measure::No) {
            return Ok(self.corrected(host));
        }
        let before = self.clock.now();
        match telemetry::timed!("server_time", self.store.server_time()).await {
            Ok(server) => {
                let offset = follow.record(before, server, self.clock.now());
                if offset.abs() > SKEW_WARNING {
                    tracing::warn!(offset_ms = offset, store = ?self.store,
                        "this host's clock is off the store's; leases are decided by the store's");
                }
            }
            Err(error) if matches!(due, Measure::First) => return Err(error),
            // The offset measured before serves until the next try.
            Err(error) => tracing::debug!(%error, "could not read the store's clock"),
        }
        Ok(self.now())
    }

    /// Claims (scope, key). See [`ClaimOutcome`] for the four answers.
    #[tracing::instrument(name = "oncely.claim", level = "info", skip_all,
        fields(%scope, key = %self.span_keys.show(key), outcome))]
    pub async fn claim(
        &self,
        scope: &Scope,
        key: &Key,
        fingerprint: Option<Fingerprint>,
    ) -> Result<ClaimOutcome> {
        let request = ClaimRequest::new(scope.clone(), key.clone(), fingerprint, self.lease);
        let outcome = match self.synced_now().await {
            Ok(now) => telemetry::timed!("claim", self.store.claim(&request, now)).await,
            Err(error) => Err(error),
        };
        if let Ok(outcome) = &outcome {
            self.counters.claimed(scope, outcome);
        }
        tracing::Span::current().record("outcome", outcome_name(&outcome));
        outcome
    }

    /// Claims a batch in one round trip, answering in order. A key twice in one batch is `New`
    /// the first time and `InProgress` the second.
    pub async fn claim_many<I>(&self, items: I) -> Result<Vec<ClaimOutcome>>
    where
        I: IntoIterator<Item = (Scope, Key, Option<Fingerprint>)>,
    {
        let requests: Vec<_> = items
            .into_iter()
            .map(|(scope, key, fp)| ClaimRequest::new(scope, key, fp, self.lease))
            .collect();
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.synced_now().await?;
        let outcomes =
            telemetry::timed!("claim_many", self.store.claim_many(&requests, now)).await?;
        for (request, outcome) in requests.iter().zip(&outcomes) {
            self.counters.claimed(&request.scope, outcome);
        }
        Ok(outcomes)
    }

    /// Records the work of `claim` as done with `outcome`, replayed to duplicates until retention ends.
    ///
    /// Fails with [`Error::ClaimLost`] if the lease ran out and another delivery took the key over.
    #[tracing::instrument(name = "oncely.complete", level = "info", skip_all,
        fields(scope = %claim.scope, key = %self.span_keys.show(&claim.key), attempt = claim.attempt))]
    pub async fn complete(&self, claim: &Claim, outcome: &[u8]) -> Result<()> {
        let expires_at = self.now().saturating_add(self.retention);
        telemetry::timed!("complete", self.store.complete(claim, outcome, expires_at)).await
    }

    /// [`complete`](Self::complete), retrying while the store is [unavailable](Error::Unavailable)
    /// and the claim's lease lasts (waits of 50 ms doubling to 1 s): the work is done, and a
    /// store that restarts or drops a connection for a moment must not leave the key to be
    /// executed again once the lease ends. Other errors, and the last one when the lease ran
    /// out, are returned.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use oncely_core::{ClaimOutcome, Key, Oncely, Scope};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> oncely_core::Result<()> {
    /// # let oncely = Oncely::new(Arc::new(oncely_memory::MemoryStore::default()));
    /// # let (scope, key) = (Scope::new("charges").unwrap(), Key::new("c-1").unwrap());
    /// if let ClaimOutcome::New(claim) = oncely.claim(&scope, &key, None).await? {
    ///     // ... the charge is made ...
    ///     oncely.complete_within_lease(&claim, b"charged").await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn complete_within_lease(&self, claim: &Claim, outcome: &[u8]) -> Result<()> {
        let mut wait = Duration::from_millis(50);
        loop {
            match self.complete(claim, outcome).await {
                Err(Error::Unavailable { .. })
                    if self.now().saturating_add(wait) < claim.lease_until =>
                {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
                done => return done,
            }
        }
    }

    /// Completes a batch of held claims, each with its outcome, in one round trip where the
    /// store allows it (one transaction on PostgreSQL and MySQL): the batch counterpart of
    /// [`complete`](Oncely::complete), with the same retention for every item.
    ///
    /// Answers one result per item, in order: a claim that is no longer held fails alone with
    /// [`Error::ClaimLost`] and the others still complete. The outer error means the batch as a
    /// whole failed (see [`Store::complete_many`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> oncely_core::Result<()> {
    /// use oncely_core::{ClaimOutcome, Key, Oncely, Scope};
    /// let oncely = Oncely::new(std::sync::Arc::new(oncely_memory::MemoryStore::default()));
    /// let keys = ["evt-1", "evt-2", "evt-1"].map(|k| Key::new(k).unwrap());
    ///
    /// let outcomes = oncely
    ///     .claim_many(keys.iter().map(|k| (Scope::default(), k.clone(), None)))
    ///     .await?;
    /// // ... do the work of each new claim, then record it, all in one call ...
    /// let done = outcomes
    ///     .into_iter()
    ///     .filter_map(ClaimOutcome::into_new)
    ///     .map(|claim| (claim, b"done".to_vec()));
    /// let results = oncely.complete_many(done).await?;
    /// assert_eq!(results.len(), 2); // evt-1 a second time in one batch is InProgress
    /// assert!(results.iter().all(Result::is_ok));
    /// assert!(matches!(
    ///     oncely.claim(&Scope::default(), &keys[1], None).await?,
    ///     ClaimOutcome::Duplicate(_)
    /// ));
    /// # Ok(()) }
    /// ```
    pub async fn complete_many<I>(&self, items: I) -> Result<Vec<Result<()>>>
    where
        I: IntoIterator<Item = (Claim, Vec<u8>)>,
    {
        let expires_at = self.now().saturating_add(self.retention);
        let items: Vec<_> = items
            .into_iter()
            .map(|(claim, outcome)| Completion {
                claim,
                outcome,
                expires_at,
            })
            .collect();
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let results = telemetry::timed!("complete_many", self.store.complete_many(&items)).await?;
        for error in results.iter().filter_map(|r| r.as_ref().err()) {
            telemetry::failed("complete", error);
        }
        Ok(results)
    }

    /// Gives the key back after a failure, so the next delivery gets `New` and can retry.
    #[tracing::instrument(name = "oncely.release", level = "info", skip_all,
        fields(scope = %claim.scope, key = %self.span_keys.show(&claim.key), attempt = claim.attempt))]
    pub async fn release(&self, claim: &Claim) -> Result<()> {
        telemetry::timed!("release", self.store.release(claim)).await
    }

    /// Renews `claim`'s lease: no other delivery can take the key over for another
    /// [`lease`](Oncely::lease) from now. `claim.lease_until` is updated.
    ///
    /// Fails with [`Error::ClaimLost`] if the key was taken over (the lease ran out first),
    /// completed or released: the holder must then stop and not complete.
    #[tracing::instrument(name = "oncely.extend", level = "info", skip_all,
        fields(scope = %claim.scope, key = %self.span_keys.show(&claim.key), attempt = claim.attempt))]
    pub async fn extend(&self, claim: &mut Claim) -> Result<()> {
        let lease_until = self.now().saturating_add(self.lease);
        telemetry::timed!("extend", self.store.extend(claim, lease_until)).await?;
        telemetry::renewed(&claim.scope);
        claim.lease_until = claim.lease_until.max(lease_until);
        Ok(())
    }

    /// Runs `work` while keeping `claim`'s lease alive, so a handler slower than its lease is
    /// not taken over while it runs: the lease is renewed ([`extend`](Oncely::extend)) every
    /// third of the lease until `work` ends.
    ///
    /// If a renewal finds the claim lost (a pause longer than the lease let another delivery
    /// take the key over), `work` is dropped at its next `.await` and the answer is
    /// [`Error::ClaimLost`]: its outcome must not be stored. A renewal that fails otherwise (the
    /// store is briefly unreachable) is logged and tried again at the next third; if none
    /// succeeds before the lease ends, the claim may be taken over and the next renewal reports
    /// it lost.
    ///
    /// Crash-safe by construction: a holder that dies stops renewing, and the key is taken over
    /// one lease after its last renewal. Needs a Tokio runtime with its time driver.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> oncely_core::Result<()> {
    /// use std::time::Duration;
    /// use oncely_core::{ClaimOutcome, Key, Oncely, Scope};
    /// let store = std::sync::Arc::new(oncely_memory::MemoryStore::default());
    /// let oncely = Oncely::new(store).with_lease(Duration::from_millis(60));
    /// let (scope, key) = (Scope::default(), Key::new("export-2026-12")?);
    ///
    /// let Some(mut claim) = oncely.claim(&scope, &key, None).await?.into_new() else {
    ///     unreachable!("the first claim is new")
    /// };
    /// // Work three leases long: without renewal, a redelivery would take the key over.
    /// let rival = oncely.clone();
    /// let work = async {
    ///     tokio::time::sleep(Duration::from_millis(90)).await;
    ///     let redelivery = rival.claim(&scope, &key, None).await.unwrap();
    ///     assert!(matches!(redelivery, ClaimOutcome::InProgress { .. }));
    ///     tokio::time::sleep(Duration::from_millis(90)).await;
    ///     b"exported".to_vec()
    /// };
    /// let outcome = oncely.renewing(&mut claim, work).await?;
    /// oncely.complete(&claim, &outcome).await?;
    /// # Ok(()) }
    /// ```
    pub async fn renewing<F: Future>(&self, claim: &mut Claim, work: F) -> Result<F::Output> {
        let every = (self.lease / 3).max(Duration::from_millis(1));
        let renewals = async {
            loop {
                tokio::time::sleep(every).await;
                match self.extend(claim).await {
                    Ok(()) => {}
                    Err(lost @ Error::ClaimLost { .. }) => return lost,
                    Err(error) => {
                        tracing::warn!(scope = %claim.scope, key = %claim.key, %error,
                            "could not renew the lease; trying again at the next third of it");
                    }
                }
            }
        };
        let work = std::pin::pin!(work);
        let renewals = std::pin::pin!(renewals);
        match futures_select(work, renewals).await {
            Either::Left(output) => Ok(output),
            Either::Right(lost) => Err(lost),
        }
    }

    /// The live record for (scope, key): `None` if there is none or it expired.
    pub async fn get(&self, scope: &Scope, key: &Key) -> Result<Option<Record>> {
        let now = self.synced_now().await?;
        Ok(telemetry::timed!("get", self.store.get(scope, key))
            .await?
            .filter(|rec| !rec.is_expired(now)))
    }

    /// Removes the record of (scope, key), so that the next delivery of the key runs the work
    /// again: a mistake corrected, a poisoned answer dropped.
    ///
    /// A completed record goes at once. An in-progress one goes only with `force`: its holder
    /// may still be doing the work, and its effect may then happen twice (its completion fails
    /// with [`Error::ClaimLost`](crate::Error::ClaimLost)). Without `force` it stays and the
    /// answer is [`ForgetOutcome::Held`]. The record removed is the one decided on: one claimed
    /// anew meanwhile is decided on again. The steps a [`run_steps`](Self::run_steps) of the key
    /// recorded are forgotten with it (unless it is held): its next run does every step again.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> oncely_core::Result<()> {
    /// use oncely_core::{ClaimOutcome, ForgetOutcome, Key, Oncely, Scope};
    /// # let oncely = Oncely::new(std::sync::Arc::new(oncely_memory::MemoryStore::default()));
    /// let (scope, key) = (Scope::default(), Key::new("order-7")?);
    /// let claim = oncely.claim(&scope, &key, None).await?.into_new().expect("a first claim");
    /// oncely.complete(&claim, b"charged").await?;
    ///
    /// assert_eq!(oncely.forget(&scope, &key, false).await?, ForgetOutcome::Completed);
    /// assert!(matches!(oncely.claim(&scope, &key, None).await?, ClaimOutcome::New(_)));
    /// // In progress now: kept unless forced.
    /// assert!(matches!(oncely.forget(&scope, &key, false).await?, ForgetOutcome::Held { .. }));
    /// assert_eq!(oncely.forget(&scope, &key, true).await?, ForgetOutcome::InProgress);
    /// assert_eq!(oncely.forget(&scope, &key, false).await?, ForgetOutcome::Absent);
    /// # Ok(()) }
    /// ```
    #[tracing::instrument(name = "oncely.forget", level = "info", skip_all,
        fields(%scope, key = %self.span_keys.show(key), force, outcome))]
    pub async fn forget(&self, scope: &Scope, key: &Key, force: bool) -> Result<ForgetOutcome> {
        // Each turn of the loop means the record changed between the read and the removal: a
        // new claim took the key (the only change of token), so decide again on that one.
        loop {
            let now = self.synced_now().await?;
            let Some(record) = telemetry::timed!("get", self.store.get(scope, key)).await? else {
                self.forget_steps(scope, key).await?;
                return Ok(forgotten(ForgetOutcome::Absent));
            };
            let answer = if record.is_expired(now) {
                ForgetOutcome::Absent
            } else if record.is_completed() {
                ForgetOutcome::Completed
            } else if force {
                ForgetOutcome::InProgress
            } else {
                return Ok(forgotten(ForgetOutcome::Held {
                    lease_until: record.expires_at,
                }));
            };
            // The steps a run of the key recorded (`run_steps`) go first: a crash in between
            // leaves the record, and forgetting it again finishes the job.
            self.forget_steps(scope, key).await?;
            if telemetry::timed!("forget", self.store.forget(scope, key, record.token)).await? {
                return Ok(forgotten(answer));
            }
        }
    }

    /// Removes at most `limit` records that expired more than `older_than` ago.
    pub async fn purge(&self, older_than: Duration, limit: usize) -> Result<usize> {
        let before = self.synced_now().await?.saturating_sub(older_than);
        let purged = telemetry::timed!("purge", self.store.purge(before, limit)).await?;
        metrics::counter!(telemetry::PURGED).increment(purged as u64);
        Ok(purged)
    }

    /// Removes every record that expired more than `older_than` ago, in batches of `batch`,
    /// as the only purger among all the instances sharing the store.
    ///
    /// Exclusion is a lease on a reserved key ([`PURGE_SCOPE`]/[`PURGE_KEY`]) taken with the
    /// ordinary claim, so it works the same on every store, and a purger that dies only holds it
    /// until its lease runs out. A run stops after half its lease, so it never outlives it;
    /// `finished: false` then says to call again.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> oncely_core::Result<()> {
    /// use std::time::Duration;
    /// use oncely_core::{Oncely, PurgeRun};
    /// # let oncely = Oncely::new(std::sync::Arc::new(oncely_memory::MemoryStore::default()));
    /// match oncely.purge_all(Duration::ZERO, 10_000).await? {
    ///     PurgeRun::Done { purged, finished } => println!("purged {purged} (finished: {finished})"),
    ///     PurgeRun::AnotherPurger { retry_after } => println!("busy; retry in {retry_after:?}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn purge_all(&self, older_than: Duration, batch: usize) -> Result<PurgeRun> {
        self.purge_all_reporting(older_than, batch, |_| {}).await
    }

    /// [`purge_all`](Self::purge_all), calling `progress` with the number removed after each
    /// batch (for a progress display).
    pub async fn purge_all_reporting(
        &self,
        older_than: Duration,
        batch: usize,
        mut progress: impl FnMut(usize) + Send,
    ) -> Result<PurgeRun> {
        let (scope, key) = purge_lock();
        let lease = PURGE_LEASE;
        let request = ClaimRequest::new(scope, key, None, lease);
        let now = self.synced_now().await?;
        let claim = match telemetry::timed!("claim", self.store.claim(&request, now)).await? {
            ClaimOutcome::New(claim) => claim,
            ClaimOutcome::InProgress { retry_after } => {
                return Ok(PurgeRun::AnotherPurger { retry_after });
            }
            // The lock is only ever claimed and released, never completed or fingerprinted.
            other => {
                return Err(Error::Corrupt {
                    store: format!("{:?}", self.store),
                    detail: format!("the purge lock answered {}", other.kind()),
                });
            }
        };
        let stop_at = self.now().saturating_add(lease / 2);
        let batch = batch.max(1);
        let mut purged = 0;
        let finished = loop {
            let removed = self.purge(older_than, batch).await;
            let removed = match removed {
                Ok(n) => n,
                Err(e) => {
                    let _ = self.release(&claim).await;
                    return Err(e);
                }
            };
            purged += removed;
            progress(removed);
            if removed < batch {
                break true;
            }
            if self.now() >= stop_at {
                break false;
            }
        };
        self.release(&claim).await?;
        metrics::counter!(telemetry::PURGE_RUNS).increment(1);
        Ok(PurgeRun::Done { purged, finished })
    }

    /// Purges in the background: every `every`, [`purge_all`](Self::purge_all) of the records
    /// that expired (in batches of `batch`), as long as the returned future runs. Spawn it, or
    /// select on it with your service: a store then stays bounded without a cron job. With
    /// several instances on one store, one purges at a time (the purge lock) and the others
    /// find it taken and wait for the next turn. A store error is logged and the next turn
    /// tries again; the future never ends on its own.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// # let oncely = oncely_core::Oncely::new(std::sync::Arc::new(oncely_memory::MemoryStore::default()));
    /// let purging = tokio::spawn(oncely.clone().purge_every(Duration::from_secs(600), 10_000));
    /// // ... serve ...
    /// purging.abort();
    /// # }
    /// ```
    pub async fn purge_every(self, every: Duration, batch: usize) {
        loop {
            tokio::time::sleep(every).await;
            // A run stops at half the lock's lease: the rest follows at once.
            loop {
                match self.purge_all(Duration::ZERO, batch).await {
                    Ok(PurgeRun::Done { purged, finished }) => {
                        if purged > 0 {
                            tracing::info!(purged, "purged expired records");
                        }
                        if finished {
                            break;
                        }
                    }
                    Ok(PurgeRun::AnotherPurger { .. }) => break,
                    Err(error) => {
                        tracing::warn!(%error, "could not purge expired records; trying again in {every:?}");
                        break;
                    }
                }
            }
        }
    }

    /// What the store holds now.
    pub async fn stats(&self) -> Result<StoreStats> {
        let now = self.synced_now().await?;
        telemetry::timed!("stats", self.store.stats(now)).await
    }

    /// The version guard: stores `version` for `entity` if it is strictly greater than the one
    /// stored, atomically. An event carrying a version at or below the stored one is stale:
    /// apply your update only on [`VersionCheck::Applied`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> oncely_core::Result<()> {
    /// use oncely_core::{Key, Oncely, Scope, VersionCheck};
    /// # let oncely = Oncely::new(std::sync::Arc::new(oncely_memory::MemoryStore::default()));
    /// let (scope, order) = (Scope::default(), Key::new("order-7")?);
    /// assert_eq!(oncely.apply_if_newer(&scope, &order, 3).await?, VersionCheck::Applied { previous: None });
    /// assert_eq!(oncely.apply_if_newer(&scope, &order, 2).await?, VersionCheck::Stale { current: 3 });
    /// # Ok(()) }
    /// ```
    pub async fn apply_if_newer(
        &self,
        scope: &Scope,
        entity: &Key,
        version: u64,
    ) -> Result<VersionCheck> {
        telemetry::timed!(
            "apply_if_newer",
            self.store.apply_if_newer(scope, entity, version),
        )
        .await
    }

    /// Claim -> handler -> complete, or release if the handler fails or panics, unless its
    /// error says the outcome is unknown ([`OutcomeUnknown`]).
    ///
    /// The handler returns the outcome bytes to store; a duplicate gets them back as
    /// [`RunOutcome::Replayed`] without running the handler.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use oncely_core::{Key, Oncely, RunOutcome, Scope};
    /// # let oncely = Oncely::new(std::sync::Arc::new(oncely_memory::MemoryStore::default()));
    /// let key = Key::new("email-welcome-user-9").unwrap();
    /// let send = || async { Ok::<_, std::io::Error>(b"sent".to_vec()) };
    ///
    /// let first = oncely.run(&Scope::default(), &key, None, send).await.unwrap();
    /// let again = oncely.run(&Scope::default(), &key, None, send).await.unwrap();
    /// assert_eq!(first, RunOutcome::Executed(b"sent".to_vec()));
    /// assert_eq!(again, RunOutcome::Replayed(b"sent".to_vec()));
    /// # }
    /// ```
    ///
    /// While the handler runs, the claim's lease is renewed (see [`renewing`](Oncely::renewing)),
    /// so a handler slower than its lease is not run a second time by a redelivery. If a
    /// renewal finds the key taken over anyway, the handler is dropped and the answer is
    /// `RunError::Store(Error::ClaimLost)`.
    ///
    /// If the future returned by `run` is dropped while the handler runs, the claim is left to
    /// its lease (no longer renewed): the next delivery after the lease takes it over.
    ///
    /// A handler's error releases the key, so the next delivery runs the handler again: the
    /// handler reports that its effect did not happen. When it cannot know (it called another
    /// process and the answer never came), its error is [`OutcomeUnknown`], itself or boxed as
    /// a [`BoxError`](crate::BoxError): then the claim is **kept**, no longer renewed, and
    /// `run` answers `RunError::Handler(err)` all the same. Until the lease ends (at most one
    /// lease after the error, at least two thirds of one, as it was renewed every third), the
    /// key is `InProgress`, so no retry runs the handler meanwhile; then a redelivery takes it
    /// over and runs it again.
    pub async fn run<F, Fut, E>(
        &self,
        scope: &Scope,
        key: &Key,
        fingerprint: Option<Fingerprint>,
        handler: F,
    ) -> Result<RunOutcome, RunError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>>,
        E: 'static,
    {
        match self.claim_to_run(scope, key, fingerprint).await? {
            Ok(claim) => self.run_claimed(claim, handler()).await,
            Err(answered) => Ok(answered),
        }
    }

    /// The claim [`run`](Self::run) starts with: the new claim, or (as `Err`) the answer of a
    /// duplicate; the other outcomes are `run`'s errors.
    pub(crate) async fn claim_to_run<E>(
        &self,
        scope: &Scope,
        key: &Key,
        fingerprint: Option<Fingerprint>,
    ) -> Result<Result<Claim, RunOutcome>, RunError<E>> {
        match self
            .claim(scope, key, fingerprint)
            .await
            .map_err(RunError::Store)?
        {
            ClaimOutcome::New(claim) => Ok(Ok(claim)),
            ClaimOutcome::Duplicate(record) => Ok(Err(RunOutcome::Replayed(
                record.outcome().unwrap_or_default().to_vec(),
            ))),
            ClaimOutcome::InProgress { retry_after } => Err(RunError::InProgress { retry_after }),
            ClaimOutcome::Conflict { stored } => Err(RunError::Conflict { stored }),
        }
    }

    /// The rest of [`run`](Self::run), once `claim` is held: the work under a renewed lease,
    /// then complete, keep (outcome unknown) or release.
    pub(crate) async fn run_claimed<Fut, E>(
        &self,
        claim: Claim,
        work: Fut,
    ) -> Result<RunOutcome, RunError<E>>
    where
        Fut: Future<Output = Result<Vec<u8>, E>>,
        E: 'static,
    {
        let mut claim = claim;
        let worked = match self.renewing(&mut claim, catch_unwind(work)).await {
            Ok(worked) => worked,
            // Another delivery holds the key now: it runs (or ran) the work; ours is not stored.
            Err(lost) => return Err(RunError::Store(lost)),
        };
        match worked {
            Ok(Ok(outcome)) => {
                self.complete_within_lease(&claim, &outcome)
                    .await
                    .map_err(RunError::Store)?;
                Ok(RunOutcome::Executed(outcome))
            }
            Ok(Err(err)) if OutcomeUnknown::is_in(&err) => {
                // The effect may have happened (or be happening): the key stays held, and only
                // a redelivery after the lease runs the handler again.
                tracing::debug!(scope = %claim.scope, key = %claim.key,
                    "outcome unknown; the claim is kept until its lease ends");
                Err(RunError::Handler(err))
            }
            Ok(Err(err)) => {
                // The handler's error is what the caller needs; a failed release only means the
                // key waits for its lease, which is logged by the store's own error path.
                let _ = self.release(&claim).await;
                Err(RunError::Handler(err))
            }
            Err(panic) => {
                let _ = self.release(&claim).await;
                Err(RunError::Panicked(panic))
            }
        }
    }
}

fn outcome_name(outcome: &Result<ClaimOutcome>) -> &'static str {
    match outcome {
        Ok(ClaimOutcome::New(_)) => "new",
        Ok(ClaimOutcome::Duplicate(_)) => "duplicate",
        Ok(ClaimOutcome::InProgress { .. }) => "in_progress",
        Ok(ClaimOutcome::Conflict { .. }) => "conflict",
        Err(_) => "error",
    }
}

/// The scope of the purge lock's key (see [`Oncely::purge_all`]).
pub const PURGE_SCOPE: &str = "oncely.purge";
/// The purge lock's key.
pub const PURGE_KEY: &str = "purger";
/// How long a purger holds the lock; a run stops after half of it.
pub const PURGE_LEASE: Duration = Duration::from_secs(300);

fn purge_lock() -> (Scope, Key) {
    (
        Scope::new(PURGE_SCOPE).expect("a valid scope"),
        Key::new(PURGE_KEY).expect("a valid key"),
    )
}

/// What [`Oncely::purge_all`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PurgeRun {
    /// This instance purged.
    Done {
        /// Records removed.
        purged: usize,
        /// Whether nothing expired is left; `false` if the run stopped at half its lease.
        finished: bool,
    },
    /// Another instance is purging; nothing was done.
    AnotherPurger {
        /// When its lease ends at the latest.
        retry_after: Duration,
    },
}

/// What [`Oncely::run`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// The handler ran now; its outcome was stored.
    Executed(Vec<u8>),
    /// A duplicate: the handler did not run; this is the stored outcome of the first run.
    Replayed(Vec<u8>),
}

impl RunOutcome {
    /// The outcome bytes, executed or replayed.
    pub fn into_inner(self) -> Vec<u8> {
        match self {
            RunOutcome::Executed(o) | RunOutcome::Replayed(o) => o,
        }
    }

    /// Whether this was a replay.
    pub fn was_replayed(&self) -> bool {
        matches!(self, RunOutcome::Replayed(_))
    }
}

/// Why [`Oncely::run`] did not produce an outcome.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError<E> {
    /// The handler failed. The claim was released so a redelivery can retry, unless the error
    /// is an [`OutcomeUnknown`]: then the claim is kept until its lease ends.
    #[error("handler failed: {0}")]
    Handler(E),
    /// The handler panicked; the claim was released.
    #[error("handler panicked (claim released for retry): {0}")]
    Panicked(String),
    /// Another delivery holds a live lease on the key.
    #[error("in progress elsewhere; retry after {retry_after:?}")]
    InProgress {
        /// Time left on that lease.
        retry_after: Duration,
    },
    /// The key was used with a different payload.
    #[error("key reused with a different payload")]
    Conflict {
        /// The stored fingerprint.
        stored: Option<Fingerprint>,
    },
    /// The store failed, or the claim was lost before it could be completed.
    #[error(transparent)]
    Store(Error),
}

enum Either<L, R> {
    Left(L),
    Right(R),
}

/// The first of two futures to finish, the other dropped; the left one is polled first.
async fn futures_select<L: Future, R: Future>(
    mut left: std::pin::Pin<&mut L>,
    mut right: std::pin::Pin<&mut R>,
) -> Either<L::Output, R::Output> {
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(out) = left.as_mut().poll(cx) {
            return std::task::Poll::Ready(Either::Left(out));
        }
        right.as_mut().poll(cx).map(Either::Right)
    })
    .await
}

/// Records what a forget did, on its span and in [`telemetry::FORGOTTEN`], and answers it.
fn forgotten(outcome: ForgetOutcome) -> ForgetOutcome {
    tracing::Span::current().record("outcome", outcome.kind());
    metrics::counter!(telemetry::FORGOTTEN, "outcome" => outcome.kind()).increment(1);
    outcome
}
