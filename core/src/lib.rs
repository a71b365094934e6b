//! # oncely-core
//!
//! The contract of oncely: an *exactly-once effect* over at-least-once delivery.
//!
//! Brokers redeliver and clients retry, so a handler sees the same message more than once. Before
//! doing the work, a handler **claims** the message's [`Key`] in a [`Scope`]; the store answers
//! exactly one [`ClaimOutcome`]:
//!
//! | answer | meaning | what to do |
//! |---|---|---|
//! | `New(claim)` | first delivery, or the previous holder's lease ran out | do the work, then [`Oncely::complete`] (or [`Oncely::release`] on failure) |
//! | `Duplicate(record)` | already done | ack; replay `record.outcome()` |
//! | `InProgress { retry_after }` | another delivery holds a live lease | nack / retry later |
//! | `Conflict { .. }` | same key, different payload | reject: a client bug or a key collision |
//!
//! A claim holds a **lease**. If the holder crashes, the next delivery after the lease takes the
//! key over, and the crashed holder can no longer complete it (**fencing**: its token no longer
//! matches). Completed records are kept for a **retention** period and then purged.
//!
//! This crate has no I/O. Stores live in their own crates (`oncely-memory`, `oncely-sqlite`, ...)
//! and implement [`Store`]; [`Oncely`] runs the lifecycle over any of them; [`lifecycle`] holds
//! the decision rules every store shares.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use oncely_core::{Key, Oncely, RunOutcome, Scope};
//!
//! let oncely = Oncely::new(Arc::new(oncely_memory::MemoryStore::default()));
//! let scope = Scope::new("stock-consumer")?;
//! let stock = &std::cell::Cell::new(10);
//!
//! // The same event delivered three times decrements stock once.
//! let mut outcomes = Vec::new();
//! for _ in 0..3 {
//!     let key = Key::new("evt-order-1001")?;
//!     let decrement = || async move {
//!         stock.set(stock.get() - 1);
//!         Ok::<_, std::io::Error>(b"reserved".to_vec())
//!     };
//!     outcomes.push(oncely.run(&scope, &key, None, decrement).await?);
//! }
//! assert_eq!(stock.get(), 9);
//! assert!(!outcomes[0].was_replayed() && outcomes[1].was_replayed() && outcomes[2].was_replayed());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod batch;
mod canonical;
pub mod consumer;
pub mod duration;
mod error;
mod fingerprint;
pub mod fresh;
pub mod group;
pub mod inbox;
mod key;
pub mod lifecycle;
mod oncely;
pub mod outbox;
pub mod panic;
mod record;
pub mod redrive;
mod select;
mod steps;
mod store;
mod strategy;
pub mod telemetry;
mod time;
pub mod trace;
pub mod url;

pub use canonical::{canonical_json, canonical_json_text};
pub use error::{BoxError, Error, KeyError, LostReason, OutcomeUnknown, Result};
pub use fingerprint::{Fingerprint, FingerprintError, FingerprintSpecError, PayloadFingerprint};
pub use group::GroupCommit;
pub use key::{Key, MAX_KEY_BYTES, MAX_SCOPE_BYTES, Scope};
pub use oncely::{
    DEFAULT_LEASE, DEFAULT_RETENTION, Oncely, PURGE_KEY, PURGE_LEASE, PURGE_SCOPE, PurgeRun,
    RunError, RunOutcome,
};
pub use record::{
    Claim, ClaimOutcome, ClaimRequest, Completion, ForgetOutcome, Record, RecordRow, RecordState,
    StoreStats, VersionCheck, new_token,
};
pub use select::Selector;
pub use steps::Steps;
pub use store::Store;
pub use strategy::{CompositeKey, ExtractError, JsonKeyError, KeySpecError, payload_hash_key};
pub use time::{CLOCK_RESYNC, Clock, ManualClock, SystemClock, Timestamp};

/// Re-exported so stores implement [`Store`] with the same macro version.
pub use async_trait::async_trait;
