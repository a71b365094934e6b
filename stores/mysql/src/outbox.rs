//! The transactional outbox on MySQL/MariaDB: messages enqueued in your transaction, and the
//! table side of the relay that publishes them. See [`oncely_core::outbox`] for the guarantees
//! and `oncely_postgres::outbox` for the design; what differs here is how the locks are taken.
//!
//! ```no_run
//! # async fn place(pool: sqlx::MySqlPool) -> Result<(), Box<dyn std::error::Error>> {
//! use oncely_mysql::outbox::{MySqlOutbox, Outbox, OutboxMessage};
//!
//! let mut tx = pool.begin().await?;
//! sqlx::query("INSERT INTO orders (id, item) VALUES ('o-1001', 'apple')").execute(&mut *tx).await?;
//! let event = OutboxMessage::new("o-1001", br#"{"type":"OrderPlaced"}"#.to_vec());
//! Outbox::new().enqueue(&mut tx, &event).await?;
//! tx.commit().await?; // the order and its event, together
//! # Ok(()) }
//! ```
//!
//! **Enqueue** first upserts the aggregate's row in `oncely_outbox_aggregates`, which holds
//! that row's lock until your transaction ends: a second transaction enqueueing for the same
//! aggregate waits, so one aggregate's rows commit in id order. Then it inserts the message.
//!
//! **Relays** hold aggregates with named locks (`GET_LOCK`, one per aggregate, named after a
//! SHA-1 of the database and the aggregate), taken with no wait, so a relay skips the
//! aggregates another holds. A named lock belongs to the relay's connection: MySQL drops it
//! when the connection dies (kill -9 included), and the next relay takes the aggregate over.
//! A batch's connection is closed, not returned to the pool, if the batch is dropped
//! unfinished, so no lock outlives its batch. Enqueue and relays never wait on each other.

use std::time::Duration;

use oncely_core::outbox::{
    AfterParked, Backlog, OutboxBatch, OutboxId, OutboxRow, OutboxStore, OutboxTransaction,
    ParkedColumns, ParkedRow, Refused,
};
pub use oncely_core::outbox::{Outbox, OutboxMessage};
use oncely_core::url::redact_password;
use oncely_core::{Error, Result, async_trait};
use sqlx::mysql::{MySqlPool, MySqlRow};
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, MySql, MySqlConnection, Row};

use crate::MySqlStore;
use crate::driver::is_unavailable;

/// The outbox on a MySQL transaction: `outbox.enqueue(&mut tx, &message)`.
#[async_trait]
pub trait MySqlOutbox {
    /// Inserts `message` in the transaction `conn` belongs to (pass `&mut tx`); answers its id.
    /// Waits while another open transaction holds an unsent row of the same aggregate.
    async fn enqueue(
        &self,
        conn: &mut MySqlConnection,
        message: &OutboxMessage,
    ) -> Result<OutboxId>;
}

#[async_trait]
impl MySqlOutbox for Outbox {
    async fn enqueue(
        &self,
        conn: &mut MySqlConnection,
        message: &OutboxMessage,
    ) -> Result<OutboxId> {
        self.enqueue_in(&mut EnqueueTx(conn), message).await
    }
}

struct EnqueueTx<'c>(&'c mut MySqlConnection);

#[async_trait]
impl OutboxTransaction for EnqueueTx<'_> {
    async fn insert(&mut self, message: &OutboxMessage, encoded_headers: &str) -> Result<OutboxId> {
        let failed = |e: sqlx::Error| Error::Backend {
            store: "mysql (your transaction)".into(),
            source: format!("enqueueing to oncely_outbox: {e} (is the schema migrated?)").into(),
        };
        sqlx::query(
            "INSERT INTO oncely_outbox_aggregates (aggregate) VALUES (?) \
             ON DUPLICATE KEY UPDATE aggregate = aggregate",
        )
        .bind(message.aggregate().as_bytes())
        .execute(&mut *self.0)
        .await
        .map_err(failed)?;
        let done = sqlx::query(
            "INSERT INTO oncely_outbox (aggregate, destination, payload, headers) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(message.aggregate().as_bytes())
        .bind(message.destination())
        .bind(message.payload())
        .bind(encoded_headers)
        .execute(&mut *self.0)
        .await
        .map_err(failed)?;
        Ok(done.last_insert_id() as OutboxId)
    }
}

const CANDIDATES: i64 = 1000;
/// The rows a relay may take: unsent, not parked, and, unless the `?` says the aggregate goes
/// on, before any parked row of their aggregate.
macro_rules! takeable {
    () => {
        "sent_at IS NULL AND parked_at IS NULL AND (? OR NOT EXISTS (\
         SELECT 1 FROM oncely_outbox parked WHERE parked.aggregate = oncely_outbox.aggregate \
         AND parked.parked_at IS NOT NULL AND parked.id < oncely_outbox.id))"
    };
}
/// Takes (no wait) the named locks of aggregates with rows to take, oldest first, at most ? of
/// them. A lock taken on a row the LIMIT then cuts is released with the batch.
const TAKE_AGGREGATES: &str = concat!(
    "SELECT aggregate FROM (\
         SELECT aggregate, MIN(id) AS first FROM oncely_outbox WHERE ",
    takeable!(),
    " GROUP BY aggregate ORDER BY first LIMIT ?) AS waiting \
     WHERE GET_LOCK(CONCAT('oncely_outbox_', SHA1(CONCAT(DATABASE(), 0x00, aggregate))), 0) = 1 \
     LIMIT ?"
);
/// One refusal more; parked at ? refusals (`parked_at` first: MySQL assigns left to right).
const REFUSED: &str = "UPDATE oncely_outbox SET \
     parked_at = CASE WHEN attempts + 1 >= ? THEN NOW(6) END, last_error = ?, \
     attempts = attempts + 1 WHERE id = ? AND sent_at IS NULL AND parked_at IS NULL";
const PARKED: &str = "SELECT id, CONVERT(aggregate USING utf8mb4), destination, \
     CAST(attempts AS SIGNED), COALESCE(last_error, ''), \
     CAST(TIMESTAMPDIFF(MICROSECOND, parked_at, NOW(6)) / 1e6 AS DOUBLE), \
     CAST(LENGTH(payload) AS SIGNED) \
     FROM oncely_outbox WHERE parked_at IS NOT NULL ORDER BY id LIMIT ?";
const PURGE: &str = "DELETE FROM oncely_outbox WHERE sent_at < NOW(6) - INTERVAL ? MICROSECOND \
     ORDER BY sent_at LIMIT ?";
const BACKLOG: &str = "SELECT count(*), \
     CAST(TIMESTAMPDIFF(MICROSECOND, min(created_at), NOW(6)) / 1e6 AS DOUBLE) \
     FROM oncely_outbox WHERE sent_at IS NULL";

/// The outbox table of a MySQL/MariaDB database, as relays read it. Cheap to clone.
#[derive(Clone)]
pub struct MySqlOutboxStore {
    pool: MySqlPool,
    url: String,
}

impl std::fmt::Debug for MySqlOutboxStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MySqlOutboxStore")
            .field("url", &self.url)
            .finish()
    }
}

impl MySqlOutboxStore {
    /// Connects as [`MySqlStore::connect`] does, applying the migrations (the outbox tables
    /// among them) unless the URL says `oncely_migrate=false`.
    pub async fn connect(url: &str) -> Result<Self> {
        let store = MySqlStore::connect(url).await?;
        Ok(MySqlOutboxStore {
            pool: store.pool.clone(),
            url: store.url.clone(),
        })
    }

    /// The outbox of the database `pool` connects to, as it is. `url` is only for messages.
    pub fn from_pool(pool: MySqlPool, url: &str) -> Self {
        MySqlOutboxStore {
            pool,
            url: redact_password(url),
        }
    }

    fn err(&self, what: &str, e: sqlx::Error) -> Error {
        Error::driver(&self.url, is_unavailable(&e), format!("{what}: {e}").into())
    }

    fn row(&self, row: &MySqlRow) -> Result<OutboxRow> {
        let corrupt = |detail: String| Error::Corrupt {
            store: self.url.clone(),
            detail,
        };
        let get = |e: sqlx::Error| corrupt(e.to_string());
        let aggregate: Vec<u8> = row.try_get(1).map_err(get)?;
        let headers: String = row.try_get(4).map_err(get)?;
        Ok(OutboxRow {
            id: row.try_get(0).map_err(get)?,
            aggregate: String::from_utf8(aggregate).map_err(|e| corrupt(e.to_string()))?,
            destination: row.try_get(2).map_err(get)?,
            payload: row.try_get(3).map_err(get)?,
            headers: oncely_core::outbox::decode_headers(&headers).map_err(corrupt)?,
        })
    }
}

/// A batch a relay holds: the connection holding its aggregates' named locks, and their rows.
pub struct MySqlOutboxBatch {
    /// `None` once finished.
    conn: Option<PoolConnection<MySql>>,
    rows: Vec<OutboxRow>,
    store: MySqlOutboxStore,
}

impl std::fmt::Debug for MySqlOutboxBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MySqlOutboxBatch")
            .field("rows", &self.rows.len())
            .finish_non_exhaustive()
    }
}

impl Drop for MySqlOutboxBatch {
    /// Unfinished: closes the connection (detached from the pool), which drops its locks.
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}

/// `?, ?, ?` for `n` values.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

#[async_trait]
impl OutboxStore for MySqlOutboxStore {
    type Batch = MySqlOutboxBatch;

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
    ) -> Result<Option<MySqlOutboxBatch>> {
        let go_on = after_parked == AfterParked::GoOn;
        let limit = limit.max(1);
        let conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| self.err("acquiring a connection for a relay batch", e))?;
        let mut batch = MySqlOutboxBatch {
            conn: Some(conn),
            rows: Vec::new(),
            store: self.clone(),
        };
        let conn = batch.conn.as_mut().expect("just set");
        let aggregates: Vec<Vec<u8>> = sqlx::query_scalar(TAKE_AGGREGATES)
            .bind(go_on)
            .bind(CANDIDATES)
            .bind(limit as i64)
            .fetch_all(&mut **conn)
            .await
            .map_err(|e| self.err("locking aggregates of oncely_outbox", e))?;
        if aggregates.is_empty() {
            batch.finish_on_conn(&[], &[]).await?;
            return Ok(None);
        }
        let sql = format!(
            "SELECT id, aggregate, destination, payload, headers FROM oncely_outbox \
             WHERE {} AND aggregate IN ({}) ORDER BY id LIMIT ?",
            takeable!(),
            placeholders(aggregates.len())
        );
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(go_on);
        for aggregate in &aggregates {
            query = query.bind(aggregate.as_slice());
        }
        let rows = query
            .bind(limit as i64)
            .fetch_all(&mut **conn)
            .await
            .map_err(|e| self.err("reading unsent rows of oncely_outbox", e))?;
        batch.rows = rows
            .iter()
            .map(|row| self.row(row))
            .collect::<Result<Vec<_>>>()?;
        if batch.rows.is_empty() {
            batch.finish_on_conn(&[], &[]).await?;
            return Ok(None);
        }
        Ok(Some(batch))
    }

    async fn purge(&self, retention: Duration, limit: usize) -> Result<u64> {
        let done = sqlx::query(PURGE)
            .bind(retention.as_micros() as i64)
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
        self.parked_ids(
            "UPDATE oncely_outbox SET parked_at = NULL, attempts = 0, last_error = NULL",
            ids,
        )
        .await
        .map_err(|e| self.err("retrying parked rows of oncely_outbox", e))
    }

    async fn drop_parked(&self, ids: &[OutboxId]) -> Result<u64> {
        self.parked_ids("DELETE FROM oncely_outbox", ids)
            .await
            .map_err(|e| self.err("dropping parked rows of oncely_outbox", e))
    }
}

impl MySqlOutboxStore {
    /// Runs `statement` on the parked rows among `ids`; answers how many it changed.
    async fn parked_ids(&self, statement: &str, ids: &[OutboxId]) -> sqlx::Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            "{statement} WHERE parked_at IS NOT NULL AND id IN ({})",
            placeholders(ids.len())
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for id in ids {
            query = query.bind(id);
        }
        Ok(query.execute(&self.pool).await?.rows_affected())
    }
}

impl MySqlOutboxBatch {
    /// Marks `sent`, counts `refused`, releases the locks, and gives the connection back to
    /// the pool. Answers how many of `refused` are parked now.
    async fn finish_on_conn(&mut self, sent: &[OutboxId], refused: &[Refused]) -> Result<u64> {
        let store = self.store.clone();
        let conn: &mut MySqlConnection = self.conn.as_mut().expect("not finished yet");
        let mut parked = 0;
        for row in refused {
            sqlx::query(REFUSED)
                .bind(row.park_after.max(1) as i64)
                .bind(&row.error)
                .bind(row.id)
                .execute(&mut *conn)
                .await
                .map_err(|e| store.err("counting a refused row of oncely_outbox", e))?;
            let now_parked: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM oncely_outbox WHERE id = ? AND parked_at IS NOT NULL",
            )
            .bind(row.id)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| store.err("reading a refused row of oncely_outbox", e))?;
            parked += now_parked as u64;
        }
        if !sent.is_empty() {
            let sql = format!(
                "UPDATE oncely_outbox SET sent_at = NOW(6) WHERE sent_at IS NULL AND id IN ({})",
                placeholders(sent.len())
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for id in sent {
                query = query.bind(id);
            }
            query
                .execute(&mut *conn)
                .await
                .map_err(|e| store.err("marking rows of oncely_outbox sent", e))?;
        }
        sqlx::query("DO RELEASE_ALL_LOCKS()")
            .execute(&mut *conn)
            .await
            .map_err(|e| store.err("releasing the relay's aggregate locks", e))?;
        // Released: back to the pool.
        self.conn = None;
        Ok(parked)
    }
}

#[async_trait]
impl OutboxBatch for MySqlOutboxBatch {
    fn rows(&self) -> &[OutboxRow] {
        &self.rows
    }

    async fn finish(mut self, sent: &[OutboxId], refused: &[Refused]) -> Result<u64> {
        self.finish_on_conn(sent, refused).await
    }
}
