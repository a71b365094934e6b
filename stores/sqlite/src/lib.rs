//! # oncely-sqlite
//!
//! The embedded default store: one SQLite file, nothing to set up.
//!
//! - **Durable**: WAL journal with `synchronous=FULL`. A claim or completion is acknowledged only
//!   after its transaction is committed and synced, so it survives `kill -9` and power loss.
//! - **Group commit**: one writer thread owns the connection. Operations from any number of tasks
//!   queue up while a commit is syncing and the next transaction takes all of them (up to
//!   `batch`), so concurrent single claims share one sync without changing what each answers.
//! - **Many processes, one file**: every decision is taken inside `BEGIN IMMEDIATE`, so several
//!   processes on one file still grant each key once.
//! - **Layout**: in-flight claims live in a small table of their own and move to the records
//!   table when completed, so a random key costs one random page write in the large table, not
//!   two; canonical UUID keys are stored as 16 bytes, and each scope's name once (records hold
//!   its id). The schema is in `migrations/` (applied on
//!   open unless `migrate=false`); why each choice was made, with figures, is in BENCHMARKS.md.
//! - **Transactional inbox**: when the effect is a write to the same file, [`inbox`] claims the
//!   key inside your own sqlx transaction, so the record and the effect commit together.
//! - **Transactional outbox**: [`outbox`] enqueues messages in your own sqlx transaction, and
//!   `oncely relay --outbox sqlite:PATH` publishes them to NATS JetStream or RabbitMQ.
//! - **Consumer offsets**: [`offsets`] saves a Kafka message's position in your own sqlx
//!   transaction, with its effect.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> oncely_core::Result<()> {
//! use std::sync::Arc;
//! use oncely_core::{Key, Oncely, RunOutcome, Scope};
//! use oncely_sqlite::{SqliteOptions, SqliteStore};
//!
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("oncely.db");
//! let store = SqliteStore::open(SqliteOptions::new(&path))?;
//! let oncely = Oncely::new(Arc::new(store));
//! let key = Key::new("invoice-2026-17")?;
//! let send = || async { Ok::<_, std::io::Error>(b"mailed".to_vec()) };
//! let first = oncely.run(&Scope::default(), &key, None, send).await.unwrap();
//! assert_eq!(first, RunOutcome::Executed(b"mailed".to_vec()));
//! # drop(oncely);
//!
//! // Reopened (after a restart, or a crash): the record is still there.
//! let oncely = Oncely::new(Arc::new(SqliteStore::open(SqliteOptions::new(&path))?));
//! let again = oncely.run(&Scope::default(), &key, None, send).await.unwrap();
//! assert_eq!(again, RunOutcome::Replayed(b"mailed".to_vec()));
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod inbox;
mod job;
pub mod offsets;
mod ops;
mod options;
pub mod outbox;
mod store;
mod writer;

pub use options::{
    DEFAULT_CACHE_MIB, DEFAULT_PAGE_SIZE, DEFAULT_WAL_AUTOCHECKPOINT, SqliteOptions,
};
pub use store::SqliteStore;

/// The sqlx the [`inbox`] is built on, so your transactions are the inbox's type.
pub use sqlx;

/// The schema migrations, in order: `(version, sql)`. Applied on open unless `migrate=false`.
pub const MIGRATIONS: &[(u32, &str)] = &[
    (1, include_str!("../migrations/0001_records.sql")),
    (2, include_str!("../migrations/0002_outbox.sql")),
    (3, include_str!("../migrations/0003_offsets.sql")),
    (4, include_str!("../migrations/0004_outbox_parking.sql")),
    (5, include_str!("../migrations/0005_scope_ids.sql")),
];
