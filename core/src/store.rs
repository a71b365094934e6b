//! The store trait: the few primitives a backend must provide.

use async_trait::async_trait;

use crate::{
    Claim, ClaimOutcome, ClaimRequest, Completion, Key, Record, Result, Scope, StoreStats,
    Timestamp, VersionCheck,
};

/// Where records live. One trait for every backend; [`Oncely`](crate::Oncely) builds the
/// lifecycle on top of it.
///
/// Stores never read a clock to decide: the caller passes `now`, so one injectable clock drives
/// every lease and retention decision, and tests move time instead of sleeping. A store many
/// hosts share tells that clock its own time ([`server_time`](Store::server_time)).
///
/// Every implementation must pass `oncely-conformance`, which checks the lifecycle's guarantees with
/// real concurrency. The short version of the contract:
///
/// - `claim_many` is atomic per request: among any number of concurrent claims of one
///   (scope, key), at most one is `New` while its lease is live. Requests in one batch are
///   decided in order, so a key twice in one batch is `New` then `InProgress`.
/// - `complete`, `release` and `extend` succeed only for the current holder (same token);
///   otherwise they fail with [`Error::ClaimLost`](crate::Error::ClaimLost) and change nothing.
/// - a record whose `expires_at` is before `now` counts as absent.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Claims each request, in order, in one round trip where the backend allows it.
    /// Answers one outcome per request, in the same order.
    async fn claim_many(
        &self,
        requests: &[ClaimRequest],
        now: Timestamp,
    ) -> Result<Vec<ClaimOutcome>>;

    /// Claims one key. Backends that can coalesce concurrent single claims into one round trip
    /// (group commit) do it behind this call.
    async fn claim(&self, request: &ClaimRequest, now: Timestamp) -> Result<ClaimOutcome> {
        let mut outcomes = self.claim_many(std::slice::from_ref(request), now).await?;
        Ok(outcomes
            .pop()
            .expect("claim_many answers one outcome per request"))
    }

    /// Marks a held claim completed with `outcome`, kept until `expires_at`.
    async fn complete(&self, claim: &Claim, outcome: &[u8], expires_at: Timestamp) -> Result<()>;

    /// Completes each item as [`complete`](Store::complete) would, in order, in one round trip
    /// where the backend allows it.
    ///
    /// Answers one result per item, in the same order: one claim that is no longer held
    /// ([`Error::ClaimLost`](crate::Error::ClaimLost)) does not fail the others. The outer
    /// error means the batch as a whole failed (the store was unreachable, the transaction
    /// rolled back): none of it took effect, as far as the store could tell.
    ///
    /// The default calls `complete` per item; server stores override it with one transaction,
    /// which is what lets [`GroupCommit`](crate::GroupCommit) share a commit between callers.
    async fn complete_many(&self, items: &[Completion]) -> Result<Vec<Result<()>>> {
        let mut results = Vec::with_capacity(items.len());
        for item in items {
            results.push(
                self.complete(&item.claim, &item.outcome, item.expires_at)
                    .await,
            );
        }
        Ok(results)
    }

    /// Gives up a held claim so the next delivery gets `New`.
    async fn release(&self, claim: &Claim) -> Result<()>;

    /// Renews a held claim's lease: the in-progress record's deadline becomes `lease_until`.
    ///
    /// Fenced like [`complete`](Store::complete): only the current holder (same token) of a
    /// record still in progress may extend it; otherwise it fails with
    /// [`Error::ClaimLost`](crate::Error::ClaimLost) and changes nothing. A holder whose lease
    /// ran out may still extend as long as nobody took the key over, as it may still complete.
    async fn extend(&self, claim: &Claim, lease_until: Timestamp) -> Result<()>;

    /// Removes the record of (scope, key), in progress or completed, if its fencing token is
    /// still `token`; answers whether it did.
    ///
    /// What [`Oncely::forget`](crate::Oncely::forget) builds on: it reads the record, decides,
    /// then removes exactly the record it read. A record claimed anew in between carries another
    /// token and stays. A holder whose in-progress record was removed so can no longer complete,
    /// release or extend it ([`Error::ClaimLost`](crate::Error::ClaimLost)).
    async fn forget(&self, scope: &Scope, key: &Key, token: u64) -> Result<bool>;

    /// The record stored for (scope, key), expired or not.
    async fn get(&self, scope: &Scope, key: &Key) -> Result<Option<Record>>;

    /// Removes at most `limit` records that expired before `expired_before`; answers how many.
    async fn purge(&self, expired_before: Timestamp, limit: usize) -> Result<usize>;

    /// Counts of what the store holds at `now`.
    async fn stats(&self, now: Timestamp) -> Result<StoreStats>;

    /// The store server's clock, read now, for stores that many hosts share: leases are decided
    /// by it (see [`Oncely`](crate::Oncely)), so hosts whose clocks disagree agree on them.
    ///
    /// The default, `None`, is for stores whose clients all run on one host and share its clock
    /// (in memory, SQLite).
    async fn server_time(&self) -> Result<Option<Timestamp>> {
        Ok(None)
    }

    /// Stores `version` for (scope, entity) if it is greater than the stored one, atomically.
    async fn apply_if_newer(
        &self,
        scope: &Scope,
        entity: &Key,
        version: u64,
    ) -> Result<VersionCheck>;
}
