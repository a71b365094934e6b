//! The transactional inbox: a claim taken inside the caller's own database transaction.
//!
//! A claim through a [`Store`](crate::Store) commits on its own, so between the effect's commit
//! and the claim's completion there is a window in which a crash leaves the effect done and the
//! key unrecorded (the next delivery then waits out the lease and redoes nothing only if the
//! handler is itself idempotent). When the effect lives in the same database as the records, the
//! inbox closes that window: the record is written, already completed, in the transaction that
//! does the work, so both commit or both roll back.
//!
//! A concurrent delivery of the same key blocks on the key's row until the first transaction
//! ends, then sees [`InboxClaim::Duplicate`] if it committed, or claims the key itself if it
//! rolled back. The work never runs twice.
//!
//! This module holds what every SQL store's inbox shares: the settings ([`Inbox`]), the answer
//! ([`InboxClaim`]), and the sequence of steps ([`Inbox::claim_in`]). Each SQL store crate
//! implements [`InboxTransaction`] for its connection type and exposes `claim(&mut tx, ...)`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::batch::{ClaimTransaction, decide_in_transaction};
use crate::lifecycle::{decide_claim, decide_version};
use crate::{
    ClaimOutcome, ClaimRequest, Clock, DEFAULT_RETENTION, Error, Fingerprint, Key, Record,
    RecordState, Result, Scope, SystemClock, VersionCheck,
};

/// What an inbox claim answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InboxClaim {
    /// First delivery: the record is written in your transaction. Do the work, then commit.
    New,
    /// Already done by a committed transaction: skip the work.
    Duplicate(Record),
    /// Held by a claim made outside a transaction (through the store) whose lease is live.
    InProgress {
        /// Time left on that lease.
        retry_after: Duration,
    },
    /// The key is known with another fingerprint.
    Conflict {
        /// The stored fingerprint.
        stored: Option<Fingerprint>,
    },
}

/// Claims keys inside callers' transactions: a scope, how long records are kept, and the clock
/// that measures it. Cheap to clone. The SQL store crates add `claim` and `record_outcome` for
/// their connection types.
#[derive(Clone, Debug)]
pub struct Inbox {
    scope: Scope,
    retention: Duration,
    clock: Arc<dyn Clock>,
}

/// The statements one SQL dialect runs for [`Inbox::claim_in`], inside the caller's transaction.
#[async_trait]
pub trait InboxTransaction: Send {
    /// Inserts `record` (completed) unless its key exists; answers whether it did. If the key
    /// exists, its row is locked (or waited for) before this returns.
    async fn insert_completed(&mut self, record: &Record) -> Result<bool>;

    /// Reads the row of (scope, key), locked until the transaction ends.
    async fn lock(&mut self, scope: &Scope, key: &Key) -> Result<Option<Record>>;

    /// Overwrites the locked row of `record`'s key with `record`.
    async fn take_over(&mut self, record: &Record) -> Result<()>;

    /// Sets the stored outcome of (scope, key) if its record is completed; answers whether it
    /// was.
    async fn set_outcome(&mut self, scope: &Scope, key: &Key, outcome: &[u8]) -> Result<bool>;

    /// The version stored for (scope, entity), its row locked until the transaction ends; if
    /// there is none, stores `version` as the first and answers `None`.
    async fn lock_version(
        &mut self,
        scope: &Scope,
        entity: &Key,
        version: u64,
    ) -> Result<Option<u64>>;

    /// Overwrites the version of (scope, entity), whose row this transaction holds locked.
    async fn set_version(&mut self, scope: &Scope, entity: &Key, version: u64) -> Result<()>;
}

/// How often the key may vanish (purged, released) between insert and lock before giving up.
const ROUNDS: usize = 16;

impl Inbox {
    /// An inbox for `scope`, keeping records for [`DEFAULT_RETENTION`] by the system clock.
    pub fn new(scope: Scope) -> Self {
        Inbox {
            scope,
            retention: DEFAULT_RETENTION,
            clock: Arc::new(SystemClock),
        }
    }

    /// How long a record is kept.
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// The clock retention is measured by.
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Measures retention by `clock`, shared with whoever else holds it (an [`Oncely`]'s).
    ///
    /// [`Oncely`]: crate::Oncely
    pub(crate) fn with_shared_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The scope this inbox claims in.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// Claims `key` through `tx`, by the rules every store shares. Store crates call this.
    pub async fn claim_in<T: InboxTransaction + ?Sized>(
        &self,
        tx: &mut T,
        key: &Key,
        fingerprint: Option<Fingerprint>,
    ) -> Result<InboxClaim> {
        let now = self.clock.now();
        let request =
            ClaimRequest::new(self.scope.clone(), key.clone(), fingerprint, Duration::ZERO);
        let expires_at = now.saturating_add(self.retention);
        for _ in 0..ROUNDS {
            let fresh = completed(&request, 1, now, expires_at);
            if tx.insert_completed(&fresh).await? {
                return Ok(InboxClaim::New);
            }
            let Some(existing) = tx.lock(&self.scope, key).await? else {
                continue;
            };
            let outcome = decide_claim(Some(&existing), &request, now).outcome;
            if let ClaimOutcome::New(claim) = &outcome {
                // Expired: the key is ours again, completed with this transaction.
                let record = completed(&request, claim.attempt, now, expires_at);
                tx.take_over(&record).await?;
            }
            return Ok(outcome.into());
        }
        Err(Error::Backend {
            store: "inbox (your transaction)".into(),
            source: "the key kept vanishing between insert and lock".into(),
        })
    }

    /// Claims every key of `items` through `tx` as one batch, answering in order: the batch
    /// claim of a SQL store ([`ClaimTransaction`]), writing records completed on the spot.
    /// A key repeated in `items` is answered as its first occurrence left it (a `New` key's
    /// copies are [`InboxClaim::Duplicate`], or a conflict for another fingerprint). Store
    /// crates call this.
    pub async fn claim_many_in<T: ClaimTransaction>(
        &self,
        tx: &mut T,
        store: &str,
        items: &[(Key, Option<Fingerprint>)],
    ) -> Result<Vec<InboxClaim>> {
        let now = self.clock.now();
        let expires_at = now.saturating_add(self.retention);
        let requests: Vec<ClaimRequest> = items
            .iter()
            .map(|(key, fingerprint)| {
                ClaimRequest::new(
                    self.scope.clone(),
                    key.clone(),
                    *fingerprint,
                    Duration::ZERO,
                )
            })
            .collect();
        let outcomes = decide_in_transaction(tx, store, &requests, now, |claim| Record {
            // Empty until record_outcome, as for a single claim.
            state: RecordState::Completed {
                outcome: Vec::new(),
            },
            expires_at,
            ..claim
        })
        .await?;
        Ok(outcomes.into_iter().map(InboxClaim::from).collect())
    }

    /// The version guard in the caller's transaction: stores `version` for (this inbox's
    /// scope, `entity`) if it is greater than the stored one, by the rule the stores share
    /// ([`decide_version`]). The version is written by the transaction, so it commits with the
    /// update it guards, or rolls back with it: an update that fails leaves the version as it
    /// was, and the redelivery is `Applied` again rather than `Stale`. A concurrent transaction
    /// guarding the same entity waits on its row until this one ends. Store crates call this.
    pub async fn apply_if_newer_in<T: InboxTransaction + ?Sized>(
        &self,
        tx: &mut T,
        entity: &Key,
        version: u64,
    ) -> Result<VersionCheck> {
        let Some(stored) = tx.lock_version(&self.scope, entity, version).await? else {
            return Ok(VersionCheck::Applied { previous: None });
        };
        let check = decide_version(Some(stored), version);
        if let VersionCheck::Applied { .. } = check {
            tx.set_version(&self.scope, entity, version).await?;
        }
        Ok(check)
    }

    /// Stores `outcome` with a key claimed as [`InboxClaim::New`] in the same transaction. A key
    /// with no completed record (never claimed, or held by a claim made through the store) is
    /// an error: the outcome would be lost.
    pub async fn record_outcome_in<T: InboxTransaction + ?Sized>(
        &self,
        tx: &mut T,
        key: &Key,
        outcome: &[u8],
    ) -> Result<()> {
        if tx.set_outcome(&self.scope, key, outcome).await? {
            return Ok(());
        }
        Err(Error::Backend {
            store: "inbox (your transaction)".into(),
            source: format!(
                "no completed record of {}/{} to store an outcome with: claim the key in this transaction first",
                self.scope, key
            )
            .into(),
        })
    }
}

impl From<ClaimOutcome> for InboxClaim {
    fn from(outcome: ClaimOutcome) -> Self {
        match outcome {
            ClaimOutcome::New(_) => InboxClaim::New,
            ClaimOutcome::Duplicate(record) => InboxClaim::Duplicate(record),
            ClaimOutcome::InProgress { retry_after } => InboxClaim::InProgress { retry_after },
            ClaimOutcome::Conflict { stored } => InboxClaim::Conflict { stored },
        }
    }
}

fn completed(
    request: &ClaimRequest,
    attempt: u32,
    now: crate::Timestamp,
    expires_at: crate::Timestamp,
) -> Record {
    Record {
        scope: request.scope.clone(),
        key: request.key.clone(),
        // Empty until record_outcome: a duplicate that arrives first still sees "done".
        state: RecordState::Completed {
            outcome: Vec::new(),
        },
        fingerprint: request.fingerprint,
        token: request.token,
        attempt,
        created_at: now,
        expires_at,
    }
}
