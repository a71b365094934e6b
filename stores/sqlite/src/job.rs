//! The writer's queue: one job per store call, and the answer its transaction gives.
//!
//! The store queues jobs, the writer thread batches them into transactions, and `ops` runs
//! each one's SQL; all three use these types.

use oncely_core::{
    Claim, ClaimOutcome, ClaimRequest, Completion, Key, Record, Result, Scope, StoreStats,
    Timestamp, VersionCheck,
};
use tokio::sync::oneshot;

type Reply<T> = oneshot::Sender<Result<T>>;

/// One queued operation and where its answer goes.
pub(crate) enum Job {
    Claim {
        requests: Vec<ClaimRequest>,
        now: Timestamp,
        reply: Reply<Vec<ClaimOutcome>>,
    },
    Complete {
        claim: Claim,
        outcome: Vec<u8>,
        expires_at: Timestamp,
        reply: Reply<()>,
    },
    /// A whole `complete_many` batch, in one transaction.
    CompleteMany {
        items: Vec<Completion>,
        reply: Reply<Vec<Result<()>>>,
    },
    Release {
        claim: Claim,
        reply: Reply<()>,
    },
    Extend {
        claim: Claim,
        lease_until: Timestamp,
        reply: Reply<()>,
    },
    Forget {
        scope: Scope,
        key: Key,
        token: u64,
        reply: Reply<bool>,
    },
    Get {
        scope: Scope,
        key: Key,
        reply: Reply<Option<Record>>,
    },
    Purge {
        expired_before: Timestamp,
        limit: usize,
        reply: Reply<usize>,
    },
    Stats {
        now: Timestamp,
        reply: Reply<StoreStats>,
    },
    Version {
        scope: Scope,
        entity: Key,
        version: u64,
        reply: Reply<VersionCheck>,
    },
}

/// A job's answer, held until its transaction commits.
pub(crate) enum Answer {
    Claims(Vec<ClaimOutcome>),
    Done(Result<()>),
    Completions(Vec<Result<()>>),
    Record(Option<Record>),
    Forgotten(bool),
    Count(usize),
    Stats(StoreStats),
    Version(VersionCheck),
}
