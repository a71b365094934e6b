//! What a store keeps per (scope, key), and what a claim answers.

use std::time::Duration;

use crate::{Fingerprint, Key, Scope, Timestamp};

/// Where a record is in its lifecycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordState {
    /// Claimed; the holder is doing the work. `expires_at` is the lease deadline.
    InProgress,
    /// Done; `outcome` is replayed to duplicates. `expires_at` is the end of retention.
    Completed {
        /// The bytes the holder completed with (a response, a result id; possibly empty).
        outcome: Vec<u8>,
    },
}

/// A stored record of one operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The namespace.
    pub scope: Scope,
    /// The operation's key.
    pub key: Key,
    /// In progress or completed.
    pub state: RecordState,
    /// The payload digest the first claim arrived with, if it gave one.
    pub fingerprint: Option<Fingerprint>,
    /// The fencing token of the current holder: only a claim carrying it may complete or release.
    pub token: u64,
    /// 1 for the first claim, +1 for each takeover of an expired lease.
    pub attempt: u32,
    /// When the record was first claimed.
    pub created_at: Timestamp,
    /// Lease deadline while in progress; end of retention once completed.
    pub expires_at: Timestamp,
}

/// A record as the SQL stores keep it: one column each, in types every SQL database has.
/// Decoding it ([`RecordRow::into_record`]) is the same for all of them.
#[derive(Clone, Debug, Default)]
pub struct RecordRow {
    /// The scope's UTF-8 bytes.
    pub scope: Vec<u8>,
    /// The key's UTF-8 bytes.
    pub key: Vec<u8>,
    /// Completed, or in progress.
    pub completed: bool,
    /// The fencing token, its u64 bits.
    pub token: i64,
    /// The attempt.
    pub attempt: i32,
    /// 32 bytes, or none.
    pub fingerprint: Option<Vec<u8>>,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Milliseconds since the Unix epoch.
    pub expires_at: i64,
    /// The stored outcome of a completed record.
    pub outcome: Option<Vec<u8>>,
}

impl RecordRow {
    /// The record; the error says what was wrong with the row.
    pub fn into_record(self) -> Result<Record, String> {
        let text = |bytes: Vec<u8>, column: &str| {
            String::from_utf8(bytes).map_err(|_| format!("{column} is not UTF-8"))
        };
        let fingerprint = match self.fingerprint {
            None => None,
            Some(bytes) => Some(
                Fingerprint::from_slice(&bytes)
                    .ok_or_else(|| format!("fingerprint is {} bytes, expected 32", bytes.len()))?,
            ),
        };
        Ok(Record {
            scope: Scope::new(text(self.scope, "scope")?).map_err(|e| e.to_string())?,
            key: Key::new(text(self.key, "key")?).map_err(|e| e.to_string())?,
            state: if self.completed {
                RecordState::Completed {
                    outcome: self.outcome.unwrap_or_default(),
                }
            } else {
                RecordState::InProgress
            },
            fingerprint,
            token: self.token as u64,
            attempt: self.attempt as u32,
            created_at: Timestamp::from_millis(self.created_at),
            expires_at: Timestamp::from_millis(self.expires_at),
        })
    }
}

impl Record {
    /// Whether the record no longer counts at `now`: its lease or retention ended before `now`.
    /// A record is live through its `expires_at` millisecond inclusive.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at < now
    }

    /// The stored outcome, if completed.
    pub fn outcome(&self) -> Option<&[u8]> {
        match &self.state {
            RecordState::Completed { outcome } => Some(outcome),
            RecordState::InProgress => None,
        }
    }

    /// Whether the record is completed.
    pub fn is_completed(&self) -> bool {
        matches!(self.state, RecordState::Completed { .. })
    }
}

/// A request to claim one key: what [`Store::claim_many`](crate::Store::claim_many) takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRequest {
    /// The namespace.
    pub scope: Scope,
    /// The operation's key.
    pub key: Key,
    /// The payload digest, if the caller wants conflicts detected.
    pub fingerprint: Option<Fingerprint>,
    /// How long the claim is held before another delivery may take it over.
    pub lease: Duration,
    /// The fencing token this claim will hold if it is granted. Random, so a holder whose
    /// record was taken over (or purged and claimed anew) can never match the new holder.
    pub token: u64,
}

impl ClaimRequest {
    /// A request with a fresh random token.
    pub fn new(scope: Scope, key: Key, fingerprint: Option<Fingerprint>, lease: Duration) -> Self {
        ClaimRequest {
            scope,
            key,
            fingerprint,
            lease,
            token: new_token(),
        }
    }
}

/// A fresh fencing token. Never 0, so 0 can mean "no holder" in stores that need it.
pub fn new_token() -> u64 {
    fastrand::u64(1..=i64::MAX as u64)
}

/// A granted claim: the right, and the duty, to do the work and then complete or release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The namespace.
    pub scope: Scope,
    /// The operation's key.
    pub key: Key,
    /// The fencing token checked by complete and release.
    pub token: u64,
    /// 1 for a first claim, more for a takeover of an expired lease.
    pub attempt: u32,
    /// The payload digest the claim was made with.
    pub fingerprint: Option<Fingerprint>,
    /// When the claim was granted (the record's `created_at`).
    pub claimed_at: Timestamp,
    /// Until when no other delivery can take the key.
    pub lease_until: Timestamp,
}

impl Claim {
    /// The idempotency key to send to another service for one `step` of this claim's work:
    /// [`Key::derive`] of its scope and key, the same on every attempt of the key.
    ///
    /// ```
    /// # use oncely_core::{Claim, Key, Scope, Timestamp};
    /// # let claim = Claim { scope: Scope::new("orders")?, key: Key::new("order-42")?, token: 7,
    /// #     attempt: 2, fingerprint: None, claimed_at: Timestamp::from_millis(0),
    /// #     lease_until: Timestamp::from_millis(30_000) };
    /// // A retry after a crash holds another claim (another token, attempt 2) of the same key:
    /// assert_eq!(claim.derive("charge"), claim.key.derive(&claim.scope, "charge"));
    /// assert_eq!(claim.derive("charge").as_str(), "61fe2fc6-c363-809f-978c-7f6be86354a4");
    /// # Ok::<(), oncely_core::KeyError>(())
    /// ```
    pub fn derive(&self, step: &str) -> Key {
        self.key.derive(&self.scope, step)
    }
}

/// One completion in a batch: what [`Store::complete_many`](crate::Store::complete_many) takes
/// per item, the arguments of [`Store::complete`](crate::Store::complete) owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The held claim to complete.
    pub claim: Claim,
    /// The bytes replayed to duplicates.
    pub outcome: Vec<u8>,
    /// The end of retention.
    pub expires_at: Timestamp,
}

/// What a claim answers: exactly one of four things.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Nobody did this yet (or a previous holder's lease ran out): do the work, then
    /// complete or release the claim.
    New(Claim),
    /// The work was done; the record carries the stored outcome to replay.
    Duplicate(Record),
    /// Another holder's lease is live; try again after `retry_after`.
    InProgress {
        /// Time left on the live lease.
        retry_after: Duration,
    },
    /// The key is known with a different fingerprint: the same key for a different payload.
    Conflict {
        /// The fingerprint stored with the key.
        stored: Option<Fingerprint>,
    },
}

impl ClaimOutcome {
    /// The granted claim, if this is `New`.
    pub fn into_new(self) -> Option<Claim> {
        match self {
            ClaimOutcome::New(claim) => Some(claim),
            _ => None,
        }
    }

    /// A short name for logs and metrics: `new`, `duplicate`, `in_progress`, `conflict`.
    pub fn kind(&self) -> &'static str {
        match self {
            ClaimOutcome::New(_) => "new",
            ClaimOutcome::Duplicate(_) => "duplicate",
            ClaimOutcome::InProgress { .. } => "in_progress",
            ClaimOutcome::Conflict { .. } => "conflict",
        }
    }
}

/// What [`Oncely::forget`](crate::Oncely::forget) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForgetOutcome {
    /// A completed record was removed: the next delivery of the key runs the work again.
    Completed,
    /// An in-progress record was removed, as asked (`force`): the next delivery runs the work
    /// again, while its holder may still be doing it. That holder's completion then fails
    /// ([`Error::ClaimLost`](crate::Error::ClaimLost)), but its effect may already have happened.
    InProgress,
    /// A holder's claim is in progress and `force` was not given: nothing was removed.
    Held {
        /// The holder's lease deadline.
        lease_until: Timestamp,
    },
    /// No live record: nothing to forget (an expired one, if any, was removed).
    Absent,
}

impl ForgetOutcome {
    /// A short name for output and logs: `completed`, `in_progress`, `held`, `absent`.
    pub fn kind(&self) -> &'static str {
        match self {
            ForgetOutcome::Completed => "completed",
            ForgetOutcome::InProgress => "in_progress",
            ForgetOutcome::Held { .. } => "held",
            ForgetOutcome::Absent => "absent",
        }
    }

    /// Whether a record the key had was removed.
    pub fn removed(&self) -> bool {
        matches!(self, ForgetOutcome::Completed | ForgetOutcome::InProgress)
    }
}

/// What the version guard answers (see [`Oncely::apply_if_newer`](crate::Oncely::apply_if_newer)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionCheck {
    /// The version was newer and is now the stored one: apply the update.
    Applied {
        /// The version stored before, if any.
        previous: Option<u64>,
    },
    /// The version was not newer than the stored one: the update is stale, do not apply it.
    Stale {
        /// The version stored.
        current: u64,
    },
}

/// Counts a store reports about itself (`oncely stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// All records, live or expired-but-not-purged.
    pub records: u64,
    /// Records whose lease is live.
    pub in_progress: u64,
    /// Completed records still within retention.
    pub completed: u64,
    /// Records past their lease or retention, waiting for purge.
    pub expired: u64,
    /// Bytes the store occupies, where the store can tell (file size, memory estimate).
    pub bytes: Option<u64>,
}
