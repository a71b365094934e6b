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

use std::sync::Arc;
use std::time::Duration;

use oncely_core::outbox::{
    AfterParked, Backlog, Enqueued, OutboxBatch, OutboxId, OutboxRow, OutboxStore,
    OutboxTransaction, ParkedColumns, ParkedRow, Refused,
};
pub use oncely_core::outbox::{Outbox, OutboxMessage};
use oncely_core::url::redact_password;
use oncely_core::{Error, Result, async_trait};
use sqlx::postgres::{PgListener, PgPool, PgRow};
use sqlx::{PgConnection, Postgres, Row, Transaction};
use tokio::sync::Notify;

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

/// The rows a relay may take: unsent, not parked, and, unless $N says the aggregate goes on,
/// before any parked row of their aggregate.
macro_rules! takeable {
    ($go_on:literal) => {
        concat!(
            "sent_at IS NULL AND parked_at IS NULL AND (", $go_on, " OR NOT EXISTS (\
             SELECT 1 FROM oncely_outbox parked WHERE parked.aggregate = oncely_outbox.aggregate \
             AND parked.parked_at IS NOT NULL AND parked.id < oncely_outbox.id))"
        )
    };
}

/// Locks (for the transaction) aggregates with rows to take that no other relay holds, oldest
/// first, at most $2 of them. The try-lock is volatile, so PostgreSQL neither pushes it into
/// the subquery (which has a LIMIT) nor evaluates it past the outer LIMIT.
const TAKE_AGGREGATES: &str = concat!(
    "SELECT aggregate FROM (\
         SELECT aggregate, min(id) AS first FROM oncely_outbox WHERE ",
    takeable!("$3"),
    " GROUP BY aggregate ORDER BY first LIMIT $1) AS waiting \
     WHERE pg_try_advisory_xact_lock(\
         hashtextextended(aggregate, 'oncely_outbox'::regclass::oid::int8 * 2 + 1)) \
     LIMIT $2"
);
/// The rows to take of the locked aggregates, in id order. A statement of its own, after the
/// locks: its snapshot sees whatever the previous holder committed before letting go.
const UNSENT_ROWS: &str = concat!(
    "SELECT id, aggregate, destination, payload, headers::text FROM oncely_outbox WHERE ",
    takeable!("$3"),
    " AND aggregate = ANY($1) ORDER BY id LIMIT $2"
);
const MARK_SENT: &str =
    "UPDATE oncely_outbox SET sent_at = now() WHERE id = ANY($1) AND sent_at IS NULL";
/// One refusal more; parked at $3 refusals. Answers whether it is parked now.
const REFUSED: &str = "UPDATE oncely_outbox SET attempts = attempts + 1, last_error = $2, \
     parked_at = CASE WHEN attempts + 1 >= $3 THEN now() END \
     WHERE id = $1 AND sent_at IS NULL AND parked_at IS NULL RETURNING parked_at IS NOT NULL";
const PARKED: &str = "SELECT id, aggregate, destination, attempts::int8, coalesce(last_error, ''), \
     extract(epoch FROM now() - parked_at)::float8, octet_length(payload)::int8 \
     FROM oncely_outbox WHERE parked_at IS NOT NULL ORDER BY id LIMIT $1";
const RETRY_PARKED: &str = "UPDATE oncely_outbox SET parked_at = NULL, attempts = 0, \
     last_error = NULL WHERE id = ANY($1) AND parked_at IS NOT NULL";
const DROP_PARKED: &str = "DELETE FROM oncely_outbox WHERE id = ANY($1) AND parked_at IS NOT NULL";
const PURGE: &str = "DELETE FROM oncely_outbox WHERE id IN (\
         SELECT id FROM oncely_outbox WHERE sent_at < now() - make_interval(secs => $1) \
         ORDER BY sent_at LIMIT $2)";
/// The channel the outbox's trigger notifies (`migrations/0004_outbox_wake.sql`): one per
/// schema, the outbox's own.
const WAKE_CHANNEL: &str = "SELECT 'oncely_outbox.' || n.nspname FROM pg_class c \
     JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = 'oncely_outbox'::regclass";
const BACKLOG: &str = "SELECT count(*), \
     extract(epoch FROM clock_timestamp() - min(created_at))::float8 \
     FROM oncely_outbox WHERE sent_at IS NULL";

/// The outbox table of a PostgreSQL database, as relays read it: an
/// [`OutboxStore`]. Cheap to clone.
///
/// ```no_run
/// # async fn example() -> oncely_core::Result<()> {
/// use oncely_core::outbox::{AfterParked, OutboxStore};
/// use oncely_postgres::outbox::PostgresOutboxStore;
///
/// let outbox = PostgresOutboxStore::connect("postgres://postgres@127.0.0.1/test").await?;
/// if let Some(batch) = outbox.take(100, AfterParked::Wait).await? {
///     // ... publish, then batch.finish(&confirmed_ids, &refused) ...
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
    /// used in messages. A relay on it holds one of the pool's connections for as long as it
    /// runs, to LISTEN for enqueued rows: give the pool at least two.
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

    async fn take(
        &self,
        limit: usize,
        after_parked: AfterParked,
    ) -> Result<Option<PostgresOutboxBatch>> {
        let go_on = after_parked == AfterParked::GoOn;
        let limit = limit.max(1) as i64;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| self.err("beginning a relay batch", e))?;
        let aggregates: Vec<String> = sqlx::query_scalar(TAKE_AGGREGATES)
            .bind(CANDIDATES)
            .bind(limit)
            .bind(go_on)
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
            .bind(go_on)
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

    async fn parked(&self, limit: usize) -> Result<Vec<ParkedRow>> {
        let rows: Vec<ParkedColumns> = sqlx::query_as(PARKED)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err("reading parked rows of oncely_outbox", e))?;
        Ok(rows.into_iter().map(ParkedRow::from_columns).collect())
    }

    async fn retry_parked(&self, ids: &[OutboxId]) -> Result<u64> {
        let done = sqlx::query(RETRY_PARKED)
            .bind(ids)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err("retrying parked rows of oncely_outbox", e))?;
        Ok(done.rows_affected())
    }

    async fn drop_parked(&self, ids: &[OutboxId]) -> Result<u64> {
        let done = sqlx::query(DROP_PARKED)
            .bind(ids)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err("dropping parked rows of oncely_outbox", e))?;
        Ok(done.rows_affected())
    }

    /// LISTENs, on a connection of the pool held for it, to the channel the outbox's insert
    /// trigger notifies on commit. A connection lost is reconnected, and the relay woken then
    /// too: rows may have come while nobody listened.
    async fn enqueued(&self) -> Result<Option<Enqueued>> {
        let channel: String = sqlx::query_scalar(WAKE_CHANNEL)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err("finding oncely_outbox's schema", e))?;
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(|e| self.err("connecting to listen for enqueued rows", e))?;
        listener
            .listen(&channel)
            .await
            .map_err(|e| self.err("listening for enqueued rows", e))?;
        let signal = Arc::new(Notify::new());
        let wake = signal.clone();
        let listening = tokio::spawn(async move {
            loop {
                match listener.try_recv().await {
                    Ok(_) => wake.notify_one(),
                    // The pool is closed or cannot connect: polling goes on meanwhile.
                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            }
        });
        Ok(Some(Enqueued::new(signal, AbortOnDrop(listening))))
    }
}

/// Ends the listening task with the [`Enqueued`] that keeps it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[async_trait]
impl OutboxBatch for PostgresOutboxBatch {
    fn rows(&self) -> &[OutboxRow] {
        &self.rows
    }

    async fn finish(mut self, sent: &[OutboxId], refused: &[Refused]) -> Result<u64> {
        if !sent.is_empty() {
            sqlx::query(MARK_SENT)
                .bind(sent)
                .execute(&mut *self.tx)
                .await
                .map_err(|e| self.store.err("marking rows of oncely_outbox sent", e))?;
        }
        let mut parked = 0;
        for row in refused {
            let now_parked: Option<bool> = sqlx::query_scalar(REFUSED)
                .bind(row.id)
                .bind(&row.error)
                .bind(row.park_after.max(1) as i32)
                .fetch_optional(&mut *self.tx)
                .await
                .map_err(|e| self.store.err("counting a refused row of oncely_outbox", e))?;
            parked += u64::from(now_parked == Some(true));
        }
        self.tx
            .commit()
            .await
            .map_err(|e| self.store.err("committing a relay batch", e))?;
        Ok(parked)
    }
}
