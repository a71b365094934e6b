//! Time partitions: an opt-in layout in which purge drops whole partitions.
//!
//! In the default layout one table holds every record and purge deletes expired rows in bounded
//! batches. At very large volumes those deletes bloat the table and keep vacuum busy. With
//! `?oncely_partitions=daily` (or `hourly`) in the URL, `oncely_records` is instead partitioned by
//! RANGE on `expires_at`, one partition per UTC day (or hour), and purge drops a partition as a
//! whole once every record in it has expired.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> oncely_core::Result<()> {
//! use oncely_postgres::PostgresStore;
//!
//! let store =
//!     PostgresStore::connect("postgres://postgres@127.0.0.1/test?oncely_partitions=daily").await?;
//! # Ok(()) }
//! ```
//!
//! # When to use it
//!
//! When purge's row deletes cost you: millions of records expiring a day, a table that bloats
//! between vacuums. Otherwise stay with the default layout: it is simpler and each claim is a
//! little cheaper (see the trade-offs).
//!
//! - `oncely_partitions=daily|hourly|off` (`off` by default). Pick a width so that your retention
//!   spans a handful to a few dozen partitions: `daily` for the default 7-day retention, `hourly`
//!   for retentions of a day or less.
//! - `oncely_partitions_ahead=N`: partitions kept ready ahead of now (default 8 daily, 48
//!   hourly). Cover your retention: a record expiring beyond the last partition lands in the
//!   DEFAULT partition (an insert never fails) and is moved into its own partition when that one
//!   is created, which costs a row move.
//!
//! # How (scope, key) stays unique
//!
//! PostgreSQL only enforces a unique constraint on a partitioned table if it includes the
//! partition key, so the database would accept one (scope, key) in two partitions. The store does
//! not rely on a constraint: every write of a key (claim, takeover, complete, release, extend)
//! first takes `pg_advisory_xact_lock` on a 64-bit hash of (scope, key), for a batch in ascending
//! hash order (so batches cannot deadlock; a hash collision only makes two keys wait for each
//! other), and only then reads the key across all partitions (`SELECT ... FOR UPDATE`, which also
//! keeps purge off the row) and inserts or rewrites it. Complete, release and extend (a lease
//! renewal) stay guarded by the holder's token (fencing), as in the default layout.
//!
//! Completing a record, renewing its lease or taking it over moves its `expires_at`, and
//! PostgreSQL moves the row into the partition of its new `expires_at`. So a partition whose
//! upper bound is at or before purge's cut-off holds only records that expired before it,
//! whatever happened to them.
//!
//! # Purge
//!
//! Each purge call first creates the partitions ahead of its cut-off and ahead of now by the system
//! clock (one instance at a time, under an advisory lock; claims pause briefly while a partition
//! is created, once per partition width), then drops, oldest first, every partition whose upper bound is at or before
//! the cut-off: under a short `lock_timeout` it locks `oncely_records` (a brief pause for claims,
//! once per partition), counts the partition's rows and drops it. The rest of the limit goes to
//! the usual bounded row delete (`FOR UPDATE SKIP LOCKED`), which covers the one partition the
//! cut-off falls in, and the DEFAULT partition.
//!
//! Purge still removes **at most `limit` records**, as every store does: a partition is dropped
//! only if its rows fit in what is left of the limit; otherwise its rows are deleted one batch at
//! a time like any others. A drop costs the same whatever the partition holds, so give purge a
//! limit above the records of one partition (`oncely purge --batch 100000000`) to get drops. And
//! run it shortly after each partition boundary: the records of the current partition that
//! expired since its start are deleted row by row.
//!
//! Measured on this project's test machine (2 cores, shared with other builds; PostgreSQL 15;
//! `cargo run -p oncely-postgres --example purge_partitions`), 1,000,000 records expired in
//! one day: the default layout purged them in batches of 10,000 in 33 s; the daily layout, in
//! one purge call, in 2.1 s (a drop), while claims running beside it waited at most 159 ms (the
//! table lock held for the count and the drop). Purged in batches of 10,000, too small to drop
//! the partition, the daily layout took 45 s: row deletes cost more here than in one table.
//!
//! # Trade-offs
//!
//! - A claim reads the key in every partition (one index probe each), and locks every partition
//!   it touches: keep the number of partitions to dozens, not thousands.
//! - A claim takes one advisory lock per key; very large batches on many connections need room
//!   in PostgreSQL's lock table (`max_locks_per_transaction`).
//! - Completing a record moves its row to another partition (a delete and an insert); the dead
//!   row goes away when its partition is dropped.
//! - The transactional inbox ([`crate::inbox`]) relies on a unique index on (scope, key), so it is
//!   not available in this layout: its claims fail with a backend error.
//!
//! # Choosing the layout is final
//!
//! The layout is fixed when the schema is created (by the first instance that migrates it).
//! Opening it with the other layout, or another granularity, is an [`Error::InvalidUrl`] saying
//! what the schema holds. To switch, create the new layout in a fresh schema or database and let
//! the old one age out (or copy the live records across).

// What the module docs link to.
#[cfg(doc)]
use oncely_core::Error;

mod layout;
mod maintenance;
mod ops;

pub use layout::{Granularity, Partitioning};
pub(crate) use maintenance::{check_layout, is_partitioned, migrate};

/// The schema migrations of the partitioned layout, in order: `(version, sql)`. Version numbers
/// are shared with [`crate::MIGRATIONS`]: version N of either layout brings a schema to the same
/// point.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        include_str!("../../migrations/0001_records_partitioned.sql"),
    ),
    // The outbox is the same table in both layouts.
    (2, include_str!("../../migrations/0002_outbox.sql")),
    // So are the consumer offsets.
    (3, include_str!("../../migrations/0003_offsets.sql")),
    // And the relays' wake-up.
    (4, include_str!("../../migrations/0004_outbox_wake.sql")),
    (5, include_str!("../../migrations/0005_outbox_parking.sql")),
];
