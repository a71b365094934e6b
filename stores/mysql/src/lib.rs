//! # oncely-mysql
//!
//! A [`Store`] on MySQL (8.0+) or MariaDB (10.6+), for services that already run one and for many
//! instances sharing one dedup history.
//!
//! - **Atomic under concurrency**: a batch of claims runs in one READ COMMITTED transaction.
//!   Every key is inserted with `INSERT ... ON DUPLICATE KEY UPDATE` that changes nothing, which
//!   either inserts the claim or takes an exclusive lock on the existing row (waiting for a
//!   concurrent inserter of the same key first); one `SELECT ... FOR UPDATE` then reads every
//!   row, and a row carrying this batch's token is one it inserted. Decisions follow the rules
//!   every store shares (`oncely_core::batch`, `oncely_core::lifecycle`). Keys are taken in
//!   sorted order; a deadlock InnoDB still reports (error 1213, it rolls the transaction back) is
//!   retried.
//! - **Purge never blocks claims**: it deletes oldest-first in bounded batches, skipping rows a
//!   claim has locked (`FOR UPDATE SKIP LOCKED`).
//! - **Group commit**: concurrent single `claim` and `complete` calls share transactions
//!   ([`oncely_core::GroupCommit`]): up to two claim batches and two complete batches in
//!   flight over the pool of eight connections (`?oncely_group_batches=N` sets how many of each). A batch of completes locks its rows in key order,
//!   decides each item by the rule every store shares and writes them back in one statement.
//! - **Versioned migrations**, applied on first use under `GET_LOCK`, or by you from
//!   `migrations/` (open with `?oncely_migrate=false`).
//! - **Claims inside your transaction**: [`inbox`]; consumer offsets saved with the effect:
//!   [`offsets`].
//!
//! Why READ COMMITTED: under REPEATABLE READ (InnoDB's default) the inserts would also lock the
//! gaps between keys, and concurrent batches of neighbouring keys would deadlock far more often.
//! The store sets it on its own connections; it changes nothing for yours.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> oncely_core::Result<()> {
//! use std::sync::Arc;
//! use oncely_core::Oncely;
//! use oncely_mysql::MySqlStore;
//!
//! let store = MySqlStore::connect("mysql://root@127.0.0.1:3306/test").await?;
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
mod sql;
mod store;

#[doc(hidden)]
pub use claim_tx::{read_back_with_select, reads_back_with_returning};
pub use driver::is_unavailable;
pub use store::MySqlStore;

/// The sqlx this crate is built on, so your transactions are the inbox's type.
pub use sqlx;

/// The schema migrations, in order: `(version, sql)`.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/0001_records.sql")),
    (2, include_str!("../migrations/0002_outbox.sql")),
    (3, include_str!("../migrations/0003_offsets.sql")),
    (4, include_str!("../migrations/0004_outbox_parking.sql")),
];
