//! The transactional outbox on SQLite: messages enqueued in your transaction, and the table side
//! of the relay that publishes them. See [`oncely_core::outbox`] for the guarantees.
//!
//! [`SqliteOutbox::enqueue`] inserts a row into `oncely_outbox` in the sqlx transaction you pass,
//! next to your business writes: both commit or neither does. A relay (`oncely_relay::Relay`, or
//! `oncely relay --outbox sqlite:PATH --to nats://...`) reads the committed rows through
//! [`SqliteOutboxStore`], publishes them, and marks them sent once the broker has confirmed them.
//!
//! ```no_run
//! # async fn place(pool: oncely_sqlite::sqlx::SqlitePool) -> Result<(), Box<dyn std::error::Error>> {
//! use oncely_sqlite::outbox::{Outbox, OutboxMessage, SqliteOutbox};
//!
//! let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
//! sqlx::query("INSERT INTO orders (id, item) VALUES ('o-1001', 'apple')").execute(&mut *tx).await?;
//! let event = OutboxMessage::new("o-1001", br#"{"type":"OrderPlaced"}"#.to_vec());
//! Outbox::new().enqueue(&mut tx, &event).await?;
//! tx.commit().await?; // the order and its event, together
//! # Ok(()) }
//! # use oncely_sqlite::sqlx;
//! ```
//!
//! **Enqueue** as you [claim in the inbox](crate::inbox): begin with `BEGIN IMMEDIATE`, so the
//! transaction takes SQLite's write lock up front, waiting on the busy timeout (a deferred
//! transaction that read first answers busy at the insert instead). SQLite has one writer at a
//! time, so transactions that enqueue commit one after the other, in id order: a relay never sees
//! a later row of an aggregate while an earlier one may still commit. On a file without the
//! outbox table, the first enqueue applies the schema in your transaction.
//!
//! ## How relays share the file: one lease
//!
//! SQLite has no lock that belongs to a connection and dies with it (PostgreSQL's advisory locks,
//! MySQL's named locks), and a write transaction held while a batch is published would stop
//! every enqueue for that long. So the relays of one file share a **lease**, the single row of
//! `oncely_outbox_lease`: one relay publishes at a time, the others wait as standbys.
//!
//! - A relay takes the lease once it has expired, in a short `BEGIN IMMEDIATE` transaction that
//!   adds one to its `token`: the relay's **fencing token**. A relay killed with `kill -9` is
//!   replaced once its lease expires ([`DEFAULT_LEASE`], [`SqliteOutboxStore::lease`]).
//! - The holder renews the lease when it takes a batch and half of the lease has gone by, and
//!   whenever it finishes one. It reads the first unsent rows in id order and publishes them
//!   outside any transaction, so enqueueing never waits on the broker.
//! - It marks rows sent in a `BEGIN IMMEDIATE` transaction that first checks the token is still
//!   its own. A relay whose lease was taken over can therefore neither mark rows sent (its
//!   [`finish`](OutboxBatch::finish) fails; the rows stay unsent for the new holder, which
//!   publishes them again with the same message ids) nor take another batch.
//!
//! **The limit.** The token fences the table, not the broker. A relay that stalls in the middle
//! of publishing a batch (a long pause, a broker that hangs) for longer than the lease loses it
//! to the next relay, which publishes the same rows again and moves on; if the stalled relay
//! then wakes and publishes the rest of its batch, its copies interleave with the new holder's
//! for that window: duplicates (same message ids, dropped by JetStream's duplicate window or by
//! consumers deduplicating by message id) and, per aggregate, late copies of earlier rows after
//! later ones. Deduplicated by message id, first copy kept, the order per aggregate holds. Keep
//! the lease well above the time a batch takes to publish.
//!
//! A clone of a [`SqliteOutboxStore`] is another relay: it shares the connection pool but holds
//! (or waits for) the lease on its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oncely_core::outbox::{
    AfterParked, Backlog, OutboxBatch, OutboxId, OutboxRow, OutboxStore, OutboxTransaction,
    ParkedColumns, ParkedRow, Refused,
};
pub use oncely_core::outbox::{Outbox, OutboxMessage};
use oncely_core::{Error, Result, async_trait};
use sqlx::sqlite::{SqliteConnection, SqlitePool, SqliteRow};
use sqlx::{Connection, Row};

use crate::SqliteOptions;
use crate::inbox::{apply_migrations, backend, driver, is_missing_schema, open_pool};

/// How long a relay's lease on the outbox lasts without renewal, unless told otherwise: how long
/// a relay that died holds up the others.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// The outbox on a SQLite transaction: `outbox.enqueue(&mut tx, &message)`. See the module docs.
#[async_trait]
pub trait SqliteOutbox {
    /// Inserts `message` in the transaction `conn` belongs to (pass `&mut tx`, begun with
    /// `BEGIN IMMEDIATE`); answers its id.
    async fn enqueue(
        &self,
        conn: &mut SqliteConnection,
        message: &OutboxMessage,
    ) -> Result<OutboxId>;
}

#[async_trait]
impl SqliteOutbox for Outbox {
    async fn enqueue(
        &self,
        conn: &mut SqliteConnection,
        message: &OutboxMessage,
    ) -> Result<OutboxId> {
        self.enqueue_in(&mut EnqueueTx(conn), message).await
    }
}

const INSERT: &str = "INSERT INTO oncely_outbox \
     (aggregate, destination, payload, headers, created_at) VALUES (?1, ?2, ?3, ?4, ?5) \
     RETURNING id";

struct EnqueueTx<'c>(&'c mut SqliteConnection);

impl EnqueueTx<'_> {
    async fn insert_row(&mut self, message: &OutboxMessage, headers: &str) -> sqlx::Result<i64> {
        sqlx::query_scalar(INSERT)
            .bind(message.aggregate())
            .bind(message.destination())
            .bind(message.payload())
            .bind(headers)
            .bind(now_ms())
            .fetch_one(&mut *self.0)
            .await
    }
}

#[async_trait]
impl OutboxTransaction for EnqueueTx<'_> {
    async fn insert(&mut self, message: &OutboxMessage, encoded_headers: &str) -> Result<OutboxId> {
        // SQLite's single writer is the lock per aggregate the contract asks for: the insert
        // takes the write lock (if BEGIN IMMEDIATE has not already), held until the commit.
        match self.insert_row(message, encoded_headers).await {
            Err(e) if is_missing_schema(&e) => {
                apply_migrations(self.0).await?;
                self.insert_row(message, encoded_headers).await
            }
            other => other,
        }
        .map_err(backend)
    }
}

const READ_LEASE: &str = "SELECT token, expires_at FROM oncely_outbox_lease WHERE id = 1";
const WRITE_LEASE: &str =
    "UPDATE oncely_outbox_lease SET token = ?1, holder = ?2, expires_at = ?3 WHERE id = 1";
/// The first rows to take: unsent, not parked, and, unless ?2 says the aggregate goes on,
/// before any parked row of their aggregate.
const UNSENT_ROWS: &str = "SELECT id, aggregate, destination, payload, headers \
     FROM oncely_outbox WHERE sent_at IS NULL AND parked_at IS NULL AND (?2 OR NOT EXISTS (\
         SELECT 1 FROM oncely_outbox parked WHERE parked.aggregate = oncely_outbox.aggregate \
         AND parked.parked_at IS NOT NULL AND parked.id < oncely_outbox.id)) \
     ORDER BY id LIMIT ?1";
/// One refusal more; parked (at ?4, ms) at ?3 refusals. Answers whether it is parked now.
const REFUSED: &str = "UPDATE oncely_outbox SET attempts = attempts + 1, last_error = ?2, \
     parked_at = CASE WHEN attempts + 1 >= ?3 THEN ?4 END \
     WHERE id = ?1 AND sent_at IS NULL AND parked_at IS NULL \
     RETURNING parked_at IS NOT NULL";
const PARKED: &str = "SELECT id, aggregate, destination, attempts, coalesce(last_error, ''), \
     (?2 - parked_at) / 1000.0, length(CAST(payload AS BLOB)) \
     FROM oncely_outbox WHERE parked_at IS NOT NULL ORDER BY id LIMIT ?1";
const RETRY_PARKED: &str = "UPDATE oncely_outbox SET parked_at = NULL, attempts = 0, \
     last_error = NULL WHERE id IN (SELECT value FROM json_each(?1)) AND parked_at IS NOT NULL";
const DROP_PARKED: &str = "DELETE FROM oncely_outbox \
     WHERE id IN (SELECT value FROM json_each(?1)) AND parked_at IS NOT NULL";
const MARK_SENT: &str = "UPDATE oncely_outbox SET sent_at = ?1 \
     WHERE id IN (SELECT value FROM json_each(?2)) AND sent_at IS NULL";
const PURGE: &str = "DELETE FROM oncely_outbox WHERE id IN (\
         SELECT id FROM oncely_outbox WHERE sent_at < ?1 ORDER BY sent_at LIMIT ?2)";
const BACKLOG: &str = "SELECT count(*), (?1 - min(created_at)) / 1000.0 \
     FROM oncely_outbox WHERE sent_at IS NULL";

/// The outbox table of a SQLite file, as a relay reads it: an [`OutboxStore`]. See the module
/// docs for how relays share it.
///
/// ```no_run
/// # async fn example() -> oncely_core::Result<()> {
/// use std::time::Duration;
/// use oncely_core::outbox::{AfterParked, OutboxStore};
/// use oncely_sqlite::outbox::SqliteOutboxStore;
///
/// let outbox = SqliteOutboxStore::connect("sqlite:app.db").await?.lease(Duration::from_secs(30));
/// if let Some(batch) = outbox.take(100, AfterParked::Wait).await? {
///     // ... publish, then batch.finish(&confirmed_ids, &refused) ...
/// #   drop(batch);
/// }
/// # Ok(()) }
/// ```
pub struct SqliteOutboxStore {
    pool: SqlitePool,
    url: String,
    lease: Duration,
    holder: Arc<Holder>,
}

/// One relay's side of the lease.
#[derive(Debug)]
struct Holder {
    /// Written to the lease row, for people reading it.
    name: String,
    /// The fencing token of the lease this relay holds, if it holds it.
    token: Mutex<Option<i64>>,
    /// A batch is out: [`OutboxStore::take`] refuses another until it is finished or dropped.
    in_batch: AtomicBool,
}

impl Holder {
    fn new() -> Arc<Self> {
        let random: u64 = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos(),
            );
            h.finish()
        };
        Arc::new(Holder {
            name: format!("pid {} #{:08x}", std::process::id(), random as u32),
            token: Mutex::new(None),
            in_batch: AtomicBool::new(false),
        })
    }

    fn token(&self) -> Option<i64> {
        *self.token.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_token(&self, token: Option<i64>) {
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = token;
    }
}

impl Clone for SqliteOutboxStore {
    /// Another relay on the same file: the same pool, a lease of its own to take.
    fn clone(&self) -> Self {
        SqliteOutboxStore {
            pool: self.pool.clone(),
            url: self.url.clone(),
            lease: self.lease,
            holder: Holder::new(),
        }
    }
}

impl std::fmt::Debug for SqliteOutboxStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteOutboxStore")
            .field("url", &self.url)
            .field("lease", &self.lease)
            .field("holder", &self.holder.name)
            .finish()
    }
}

/// Now, in ms since the Unix epoch, as the tables store time.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

impl SqliteOutboxStore {
    /// Opens the file of a `sqlite:PATH` URL (the store's URL forms and parameters, of which
    /// `busy_timeout_ms` and `migrate` apply), creating it if needed and applying the
    /// migrations (the outbox tables among them) unless the URL says `migrate=false`.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::open(url.parse()?).await
    }

    /// Opens the file `options` name, as [`connect`](Self::connect) does.
    pub async fn open(options: SqliteOptions) -> Result<Self> {
        let pool = open_pool(&options, "the outbox").await?;
        Ok(Self::from_pool(pool, &options.url()))
    }

    /// The outbox of the file `pool` is open on, as it is (no migration). `url` is only used in
    /// messages. Give the pool a busy timeout: the relay's transactions wait on it.
    pub fn from_pool(pool: SqlitePool, url: &str) -> Self {
        SqliteOutboxStore {
            pool,
            url: url.to_owned(),
            lease: DEFAULT_LEASE,
            holder: Holder::new(),
        }
    }

    /// Leases last `lease` without renewal (at least 1 s; [`DEFAULT_LEASE`] unless told): how
    /// long a dead relay holds up the others, and how long a batch may take to publish before
    /// another relay may take over (see the module docs).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_secs(1));
        self
    }

    fn err(&self, what: &str, e: sqlx::Error) -> Error {
        driver(&self.url, what, e)
    }

    fn row(&self, row: &SqliteRow) -> Result<OutboxRow> {
        let corrupt = |detail: String| Error::Corrupt {
            store: self.url.clone(),
            detail,
        };
        let get = |e: sqlx::Error| corrupt(e.to_string());
        let headers: String = row.try_get(4).map_err(get)?;
        Ok(OutboxRow {
            id: row.try_get(0).map_err(get)?,
            aggregate: row.try_get(1).map_err(get)?,
            destination: row.try_get(2).map_err(get)?,
            payload: row.try_get(3).map_err(get)?,
            headers: oncely_core::outbox::decode_headers(&headers).map_err(corrupt)?,
        })
    }

    fn lease_ms(&self) -> i64 {
        self.lease.as_millis() as i64
    }

    /// Makes sure this relay holds the lease, renewing it if half of it has gone by or taking it
    /// over if it has expired; answers its token, or `None` while another relay holds it.
    async fn hold(&self) -> Result<Option<i64>> {
        let mine = self.holder.token();
        let (token, expires_at): (i64, i64) = sqlx::query_as(READ_LEASE)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err("reading oncely_outbox_lease (is the schema migrated?)", e))?;
        let now = now_ms();
        if mine == Some(token) && expires_at - now > self.lease_ms() / 2 {
            return Ok(Some(token));
        }
        if mine != Some(token) && expires_at > now {
            self.holder.set_token(None);
            return Ok(None);
        }
        // Renew, or take over: decided again under the write lock.
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| self.err("acquiring a connection for the relay's lease", e))?;
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| self.err("taking the write lock for the relay's lease", e))?;
        let (token, expires_at): (i64, i64) = sqlx::query_as(READ_LEASE)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.err("reading oncely_outbox_lease", e))?;
        let now = now_ms();
        let held = if mine == Some(token) {
            token
        } else if expires_at <= now {
            token + 1
        } else {
            self.holder.set_token(None);
            return Ok(None);
        };
        sqlx::query(WRITE_LEASE)
            .bind(held)
            .bind(&self.holder.name)
            .bind(now + self.lease_ms())
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err("writing oncely_outbox_lease", e))?;
        tx.commit()
            .await
            .map_err(|e| self.err("committing the relay's lease", e))?;
        self.holder.set_token(Some(held));
        Ok(Some(held))
    }
}

/// A batch a relay holds: the first unsent rows, and the lease token they were read under.
pub struct SqliteOutboxBatch {
    rows: Vec<OutboxRow>,
    token: i64,
    store: SqliteOutboxStore,
}

impl std::fmt::Debug for SqliteOutboxBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteOutboxBatch")
            .field("rows", &self.rows.len())
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl Drop for SqliteOutboxBatch {
    /// Finished or not, the relay may take its next batch (unfinished rows are taken again).
    fn drop(&mut self) {
        self.store.holder.in_batch.store(false, Ordering::Release);
    }
}

#[async_trait]
impl OutboxStore for SqliteOutboxStore {
    type Batch = SqliteOutboxBatch;

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

    /// The first unsent rows of the whole outbox, in id order, while this relay holds the lease;
    /// `None` while another relay holds it. One batch at a time per relay.
    async fn take(
        &self,
        limit: usize,
        after_parked: AfterParked,
    ) -> Result<Option<SqliteOutboxBatch>> {
        if self.holder.in_batch.load(Ordering::Acquire) {
            return Err(Error::Backend {
                store: self.url.clone(),
                source: "this relay's previous batch is still out: finish or drop it before \
                         taking the next (a clone of the store is another relay)"
                    .into(),
            });
        }
        let Some(token) = self.hold().await? else {
            return Ok(None);
        };
        let rows = sqlx::query(UNSENT_ROWS)
            .bind(limit.max(1) as i64)
            .bind(after_parked == AfterParked::GoOn)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err("reading unsent rows of oncely_outbox", e))?;
        let rows = rows
            .iter()
            .map(|row| self.row(row))
            .collect::<Result<Vec<_>>>()?;
        if rows.is_empty() {
            return Ok(None);
        }
        self.holder.in_batch.store(true, Ordering::Release);
        Ok(Some(SqliteOutboxBatch {
            rows,
            token,
            store: SqliteOutboxStore {
                pool: self.pool.clone(),
                url: self.url.clone(),
                lease: self.lease,
                holder: self.holder.clone(),
            },
        }))
    }

    async fn purge(&self, retention: Duration, limit: usize) -> Result<u64> {
        let done = sqlx::query(PURGE)
            .bind(now_ms() - retention.as_millis() as i64)
            .bind(limit as i64)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err("purging sent rows of oncely_outbox", e))?;
        Ok(done.rows_affected())
    }

    async fn backlog(&self) -> Result<Backlog> {
        let (unsent, oldest): (i64, Option<f64>) = sqlx::query_as(BACKLOG)
            .bind(now_ms())
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err("counting unsent rows of oncely_outbox", e))?;
        Ok(Backlog::from_count_and_age(unsent, oldest))
    }

    async fn parked(&self, limit: usize) -> Result<Vec<ParkedRow>> {
        let rows: Vec<ParkedColumns> = sqlx::query_as(PARKED)
            .bind(limit as i64)
            .bind(now_ms())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err("reading parked rows of oncely_outbox", e))?;
        Ok(rows.into_iter().map(ParkedRow::from_columns).collect())
    }

    async fn retry_parked(&self, ids: &[OutboxId]) -> Result<u64> {
        let done = sqlx::query(RETRY_PARKED)
            .bind(json_ids(ids))
            .execute(&self.pool)
            .await
            .map_err(|e| self.err("retrying parked rows of oncely_outbox", e))?;
        Ok(done.rows_affected())
    }

    async fn drop_parked(&self, ids: &[OutboxId]) -> Result<u64> {
        let done = sqlx::query(DROP_PARKED)
            .bind(json_ids(ids))
            .execute(&self.pool)
            .await
            .map_err(|e| self.err("dropping parked rows of oncely_outbox", e))?;
        Ok(done.rows_affected())
    }
}

/// Row ids as the JSON array `json_each` reads.
fn json_ids(ids: &[OutboxId]) -> String {
    format!(
        "[{}]",
        ids.iter()
            .map(|id| id.to_string())
            .collect::<Vec<_>>()
            .join(",")
    )
}

#[async_trait]
impl OutboxBatch for SqliteOutboxBatch {
    fn rows(&self) -> &[OutboxRow] {
        &self.rows
    }

    /// Marks `sent` sent and renews the lease, only if the lease is still this batch's token.
    async fn finish(self, sent: &[OutboxId], refused: &[Refused]) -> Result<u64> {
        let store = &self.store;
        let mut conn = store
            .pool
            .acquire()
            .await
            .map_err(|e| store.err("acquiring a connection to mark rows sent", e))?;
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| store.err("taking the write lock to mark rows sent", e))?;
        let (token, _): (i64, i64) = sqlx::query_as(READ_LEASE)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| store.err("reading oncely_outbox_lease", e))?;
        if token != self.token {
            store.holder.set_token(None);
            return Err(Error::Backend {
                store: store.url.clone(),
                source: format!(
                    "this relay's lease on the outbox was taken over (token {} is now {token}) \
                     while it published: {} published rows not marked sent; the relay holding \
                     the lease publishes them again with the same message ids. Use a lease \
                     well above the time a batch takes to publish",
                    self.token,
                    sent.len()
                )
                .into(),
            });
        }
        let now = now_ms();
        if !sent.is_empty() {
            sqlx::query(MARK_SENT)
                .bind(now)
                .bind(json_ids(sent))
                .execute(&mut *tx)
                .await
                .map_err(|e| store.err("marking rows of oncely_outbox sent", e))?;
        }
        let mut parked = 0;
        for row in refused {
            let now_parked: Option<bool> = sqlx::query_scalar(REFUSED)
                .bind(row.id)
                .bind(&row.error)
                .bind(row.park_after.max(1) as i64)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| store.err("counting a refused row of oncely_outbox", e))?;
            parked += u64::from(now_parked == Some(true));
        }
        sqlx::query(WRITE_LEASE)
            .bind(token)
            .bind(&store.holder.name)
            .bind(now + store.lease_ms())
            .execute(&mut *tx)
            .await
            .map_err(|e| store.err("renewing the relay's lease", e))?;
        tx.commit()
            .await
            .map_err(|e| store.err("committing a relay batch", e))?;
        Ok(parked)
    }
}
