//! # oncely-postgres
//!
//! A [`Store`] on PostgreSQL, for services that already run one and for many instances sharing
//! one dedup history.
//!
//! - **Atomic under concurrency**: a batch of claims runs in one READ COMMITTED transaction.
//!   Fresh keys are inserted with `ON CONFLICT DO NOTHING` (which waits for a concurrent inserter
//!   of the same key and then sees its row); the rest are locked with `SELECT ... FOR UPDATE`, so
//!   every decision is taken on the latest committed row, by the same rules every store shares
//!   (`oncely_core::lifecycle`). Keys are inserted, then locked, in sorted order; a deadlock
//!   PostgreSQL still detects between two batches (it rolls one back whole) is retried.
//! - **Purge never blocks claims**: it deletes oldest-first in bounded batches and skips rows that
//!   a claim has locked (`FOR UPDATE SKIP LOCKED`).
//! - **Group commit**: concurrent single `claim` and `complete` calls share transactions
//!   ([`oncely_core::GroupCommit`]): up to two claim batches and two complete batches in
//!   flight over the pool of eight connections (`?oncely_group_batches=N` sets how many of each). A batch of completes is one guarded
//!   `UPDATE ... FROM unnest(...) RETURNING`, committed on its own (no `BEGIN` and `COMMIT`
//!   round trips around it), and a claim it did not complete is explained by
//!   reading the record back, by the rule every store shares.
//! - **Versioned migrations**, applied on first use under an advisory lock, or by you from
//!   `migrations/` (open with `?oncely_migrate=false`).
//! - **Optional time partitions** (`?oncely_partitions=daily|hourly`), so purge drops whole
//!   partitions instead of deleting rows: see [`partitions`].
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> oncely_core::Result<()> {
//! use std::sync::Arc;
//! use oncely_core::Oncely;
//! use oncely_postgres::PostgresStore;
//!
//! let store = PostgresStore::connect("postgres://postgres@127.0.0.1/test").await?;
//! let oncely = Oncely::new(Arc::new(store));
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

// What the crate docs link to.
#[cfg(doc)]
use oncely_core::Store;

mod claim_tx;
mod driver;
pub mod inbox;
pub mod offsets;
mod options;
pub mod outbox;
pub mod partitions;
mod store;

pub use driver::is_unavailable;
pub use store::PostgresStore;

/// The sqlx this crate is built on, so your transactions are the inbox's type.
pub use sqlx;

/// The schema migrations, in order: `(version, sql)`.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/0001_records.sql")),
    (2, include_str!("../migrations/0002_outbox.sql")),
    (3, include_str!("../migrations/0003_offsets.sql")),
    (4, include_str!("../migrations/0004_outbox_wake.sql")),
    (5, include_str!("../migrations/0005_outbox_parking.sql")),
];
