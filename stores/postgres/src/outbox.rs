//! The transactional outbox on PostgreSQL: messages enqueued in your transaction, and the table
//! side of the relay that publishes them.
//!
//! [`PostgresOutbox::enqueue`] inserts a row into `oncely_outbox` in the transaction you pass,
//! next to your business writes: both commit or neither does. A relay
//! (`oncely_relay::Relay`, or `oncely relay --outbox postgres://...`) reads the committed rows
//! through [`PostgresOutboxStore`], publishes them, and marks them sent once the broker has
//! confirmed them. See [`oncely_core::outbox`] for the guarantees.
//!
//! ```no_run
//! # async fn place(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use oncely_postgres::outbox::{Outbox, OutboxMessage, PostgresOutbox};
//!
//! let outbox = Outbox::new();
//! let mut tx = pool.begin().await?;
//! sqlx::query("INSERT INTO orders (id, item) VALUES ('o-1001', 'apple')").execute(&mut *tx).await?;
//! let event = OutboxMessage::new("o-1001", br#"{"type":"OrderPlaced","orderId":"o-1001"}"#.to_vec())
//!     .with_header("Content-Type", "application/json");
//! outbox.enqueue(&mut tx, &event).await?;
//! tx.commit().await?; // the order and its event, together
//! # Ok(()) }
//! ```
//!
//! ## How relays share the table
//!
//! Each relay works in batches, each batch one transaction:
//!
//! 1. it takes a **transaction-scoped advisory lock per aggregate**
//!    (`pg_try_advisory_xact_lock` on a 64-bit hash of the aggregate and the table), for the
//!    aggregates with the oldest unsent rows, skipping those another relay holds;
//! 2. it reads those aggregates' unsent rows in id order, publishes them (one aggregate's rows
//!    one after the other), marks the confirmed ones sent, and commits, which lets go of the
//!    locks.
//!
//! Why not `SELECT ... FOR UPDATE SKIP LOCKED` on the rows: two relays would split one
//! aggregate's rows between them and publish them side by side, out of order. Why not leases
//! on aggregates (a column with an expiry): a relay that stalls past its lease (a long GC pause,
//! a slow broker) would share an aggregate with its successor. The advisory lock belongs to the
//! relay's database session: it lasts exactly as long as the relay is there, and PostgreSQL
//! drops it the moment the relay's connection dies (kill -9 included), so the next relay takes
//! the aggregate over with nothing to expire. The price is one open transaction per relay while
//! a batch is published; keep batches small enough to publish in well under any
//! `idle_in_transaction_session_timeout`.
//!
//! **Order within an aggregate.** Ids come from a sequence, which hands them out in insert
//! order, not in commit order: two transactions enqueueing for one aggregate could commit the
//! later id first, and a relay could publish it before the earlier one exists. So
//! [`enqueue`](PostgresOutbox::enqueue) also takes a transaction-scoped lock on the aggregate
//! (another key than the relays'): a second transaction enqueueing for the same aggregate waits
//! until the first commits or rolls back. One aggregate's rows thus commit in id order, and
//! enqueueing never waits on a relay. Transactions enqueueing for different aggregates do not
//! wait on each other.
//!
//! **Isolation.** Enqueue under any level. Relays use READ COMMITTED (their own transactions).

use std::time::Duration;

use oncely_core::outbox::{
    Backlog, OutboxBatch, OutboxId, OutboxRow, OutboxStore, OutboxTransaction,
};
pub use oncely_core::outbox::{Outbox, OutboxMessage};
use oncely_core::url::redact_password;
use oncely_core::{Error, Result, async_trait};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{PgConnection, Postgres, Row, Transaction};

use crate::PostgresStore;
use crate::driver::is_unavailable;

/// The outbox on a PostgreSQL transaction: `outbox.enqueue(&mut tx, &message)`. See the module
/// docs.
#[async_trait]
pub trait PostgresOutbox {
    /// Inserts `message` in the transaction `conn` belongs to (pass `&mut tx`); answers its id.
    /// Waits while another open transaction holds an unsent row of the same aggregate.
    async fn enqueue(&self, conn: &mut PgConnection, message: &OutboxMessage) -> Result<OutboxId>;
}

#[async_trait]
impl PostgresOutbox for Outbox {
    async fn enqueue(&self, conn: &mut PgConnection, message: &OutboxMessage) -> Result<OutboxId> {
        self.enqueue_in(&mut EnqueueTx(conn), message).await
    }
}

/// Locks the aggregate for the transaction, then inserts (a materialized CTE runs before the
/// insert that reads it, so the id is drawn only once the lock is held). The lock key is a
/// 64-bit hash of the aggregate seeded with the table's OID doubled (the relays' seed is one
/// more): the two locks never meet, and outboxes in other schemas use other keys.
const INSERT: &str = "WITH serialized AS MATERIALIZED (\
         SELECT pg_advisory_xact_lock(hashtextextended($1, 'oncely_outbox'::regclass::oid::int8 * 2))) \
     INSERT INTO oncely_outbox (aggregate, destination, payload, headers) \
     SELECT $1, $2, $3, $4::jsonb FROM serialized RETURNING id";

struct EnqueueTx<'c>(&'c mut PgConnection);

#[async_trait]
impl OutboxTransaction for EnqueueTx<'_> {
    async fn insert(&mut self, message: &OutboxMessage, encoded_headers: &str) -> Result<OutboxId> {
        sqlx::query_scalar(INSERT)
            .bind(message.aggregate())
            .bind(message.destination())
            .bind(message.payload())
            .bind(encoded_headers)
            .fetch_one(&mut *self.0)
            .await
            .map_err(|e| Error::Backend {
                store: "postgres (your transaction)".into(),
                source: format!("enqueueing to oncely_outbox: {e} (is the schema migrated?)")
                    .into(),
            })
    }
}

/// How many aggregates with unsent rows a relay looks at per batch, oldest first, to find some
/// no other relay holds.
const CANDIDATES: i64 = 1000;

/// Locks (for the transaction) aggregates with unsent rows that no other relay holds, oldest
/// first, at most $2 of them. The try-lock is volatile, so PostgreSQL neither pushes it into
/// the subquery (which has a LIMIT) nor evaluates it past the outer LIMIT.
const TAKE_AGGREGATES: &str = "SELECT aggregate FROM (\
         SELECT aggregate, min(id) AS first FROM oncely_outbox WHERE sent_at IS NULL \
         GROUP BY aggregate ORDER BY first LIMIT $1) AS waiting \
     WHERE pg_try_advisory_xact_lock(\
         hashtextextended(aggregate, 'oncely_outbox'::regclass::oid::int8 * 2 + 1)) \
     LIMIT $2";
/// The unsent rows of the locked aggregates, in id order. A statement of its own, after the
/// locks: its snapshot sees whatever the previous holder committed before letting go.
const UNSENT_ROWS: &str = "SELECT id, aggregate, destination, payload, headers::text \
     FROM oncely_outbox WHERE sent_at IS NULL AND aggregate = ANY($1) ORDER BY id LIMIT $2";
const MARK_SENT: &str =
    "UPDATE oncely_outbox SET sent_at = now() WHERE id = ANY($1) AND sent_at IS NULL";
const PURGE: &str = "DELETE FROM oncely_outbox WHERE id IN (\
         SELECT id FROM oncely_outbox WHERE sent_at < now() - make_interval(secs => $1) \
         ORDER BY sent_at LIMIT $2)";
const BACKLOG: &str = "SELECT count(*), \
     extract(epoch FROM clock_timestamp() - min(created_at))::float8 \
     FROM oncely_outbox WHERE sent_at IS NULL";

/// The outbox table of a PostgreSQL database, as relays read it: an
/// [`OutboxStore`]. Cheap to clone.
///
/// ```no_run
/// # async fn example() -> oncely_core::Result<()> {
/// use oncely_core::outbox::OutboxStore;
/// use oncely_postgres::outbox::PostgresOutboxStore;
///
/// let outbox = PostgresOutboxStore::connect("postgres://postgres@127.0.0.1/test").await?;
/// if let Some(batch) = outbox.take(100).await? {
///     // ... publish, then batch.finish(&confirmed_ids) ...
/// #   drop(batch);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresOutboxStore {
    pool: PgPool,
    url: String,
}

impl std::fmt::Debug for PostgresOutboxStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOutboxStore")
            .field("url", &self.url)
            .finish()
    }
}

impl PostgresOutboxStore {
    /// Connects with a `postgres://` URL as [`PostgresStore::connect`] does, applying the
    /// migrations (the outbox table among them) unless the URL says `oncely_migrate=false`.
    pub async fn connect(url: &str) -> Result<Self> {
        let store = PostgresStore::connect(url).await?;
        Ok(PostgresOutboxStore {
            pool: store.pool.clone(),
            url: store.url.clone(),
        })
    }

    /// The outbox of the database `pool` connects to, as it is (no migration). `url` is only
    /// used in messages.
    pub fn from_pool(pool: PgPool, url: &str) -> Self {
        PostgresOutboxStore {
            pool,
            url: redact_password(url),
        }
    }

    fn err(&self, what: &str, e: sqlx::Error) -> Error {
        Error::driver(&self.url, is_unavailable(&e), format!("{what}: {e}").into())
    }

    fn row(&self, row: &PgRow) -> Result<OutboxRow> {
        let corrupt = |detail: String| Error::Corrupt {
            store: self.url.clone(),
            detail,
        };
        let headers: String = row.try_get(4).map_err(|e| corrupt(e.to_string()))?;
        Ok(OutboxRow {
            id: row.try_get(0).map_err(|e| corrupt(e.to_string()))?,
            aggregate: row.try_get(1).map_err(|e| corrupt(e.to_string()))?,
            destination: row.try_get(2).map_err(|e| corrupt(e.to_string()))?,
            payload: row.try_get(3).map_err(|e| corrupt(e.to_string()))?,
            headers: oncely_core::outbox::decode_headers(&headers).map_err(corrupt)?,
        })
    }
}

/// A batch a relay holds: its transaction (holding the aggregates' locks) and their rows.
pub struct PostgresOutboxBatch {
    tx: Transaction<'static, Postgres>,
    rows: Vec<OutboxRow>,
    store: PostgresOutboxStore,
}

impl std::fmt::Debug for PostgresOutboxBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOutboxBatch")
            .field("rows", &self.rows.len())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl OutboxStore for PostgresOutboxStore {
    type Batch = PostgresOutboxBatch;

    async fn origin(&self) -> Result<String> {
        sqlx::query_scalar("SELECT origin FROM oncely_outbox_origin LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err("reading oncely_outbox_origin (is the schema migrated?)", e))?
            .ok_or_else(|| Error::Corrupt {
                store: self.url.clone(),
                detail: "oncely_outbox_origin is empty: run migrations/0002_outbox.sql".into(),
            })
    }

    async fn take(&self, limit: usize) -> Result<Option<PostgresOutboxBatch>> {
        let limit = limit.max(1) as i64;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| self.err("beginning a relay batch", e))?;
        let aggregates: Vec<String> = sqlx::query_scalar(TAKE_AGGREGATES)
            .bind(CANDIDATES)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| self.err("locking aggregates of oncely_outbox", e))?;
        if aggregates.is_empty() {
            tx.rollback()
                .await
                .map_err(|e| self.err("ending an empty relay batch", e))?;
            return Ok(None);
        }
        let rows = sqlx::query(UNSENT_ROWS)
            .bind(&aggregates)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| self.err("reading unsent rows of oncely_outbox", e))?;
        let rows = rows
            .iter()
            .map(|row| self.row(row))
            .collect::<Result<Vec<_>>>()?;
        if rows.is_empty() {
            // Sent by the relay that held them until just now. Ended here, not by dropping `tx`:
            // sqlx would roll back only when the connection is next used, and until then the
            // aggregates' advisory locks would keep other relays away from them.
            tx.rollback()
                .await
                .map_err(|e| self.err("ending an empty relay batch", e))?;
            return Ok(None);
        }
        Ok(Some(PostgresOutboxBatch {
            tx,
            rows,
            store: self.clone(),
        }))
    }

    async fn purge(&self, retention: Duration, limit: usize) -> Result<u64> {
        let done = sqlx::query(PURGE)
            .bind(retention.as_secs_f64())
            .bind(limit as i64)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err("purging sent rows of oncely_outbox", e))?;
        Ok(done.rows_affected())
    }

    async fn backlog(&self) -> Result<Backlog> {
        let (unsent, oldest): (i64, Option<f64>) = sqlx::query_as(BACKLOG)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err("counting unsent rows of oncely_outbox", e))?;
        Ok(Backlog::from_count_and_age(unsent, oldest))
    }
}

#[async_trait]
impl OutboxBatch for PostgresOutboxBatch {
    fn rows(&self) -> &[OutboxRow] {
        &self.rows
    }

    async fn finish(mut self, sent: &[OutboxId]) -> Result<()> {
        if !sent.is_empty() {
            sqlx::query(MARK_SENT)
                .bind(sent)
                .execute(&mut *self.tx)
                .await
                .map_err(|e| self.store.err("marking rows of oncely_outbox sent", e))?;
        }
        self.tx
            .commit()
            .await
            .map_err(|e| self.store.err("committing a relay batch", e))
    }
}
