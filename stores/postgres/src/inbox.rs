//! The transactional inbox: a claim taken inside your own transaction.
//!
//! [`PostgresInbox::claim`] writes the dedup record, already completed, in the transaction you pass.
//! Your business writes go in the same transaction, so both commit or both roll back: there is
//! no window in which the effect is durable and the record is not, or the other way round.
//!
//! A concurrent delivery of the same key blocks on the key's unique index until the first
//! transaction ends, then answers [`InboxClaim::Duplicate`] if it committed, or claims the key
//! itself if it rolled back. The business code never runs twice.
//!
//! **Isolation.** Use READ COMMITTED (PostgreSQL's default). After waiting on the key, the
//! inbox reads the row the other transaction committed, which READ COMMITTED allows. Under
//! REPEATABLE READ or SERIALIZABLE, PostgreSQL instead fails the waiting transaction with a
//! serialization error (SQLSTATE 40001); the inbox reports it as [`Error::Backend`] and nothing
//! is lost, but you must retry the whole transaction.
//!
//! ```no_run
//! # async fn handle(pool: sqlx::PgPool, event_id: &str) -> Result<(), Box<dyn std::error::Error>> {
//! use oncely_core::{Key, Scope};
//! use oncely_postgres::inbox::{Inbox, InboxClaim, PostgresInbox};
//!
//! let inbox = Inbox::new(Scope::new("orders-consumer")?);
//! let mut tx = pool.begin().await?;
//! if let InboxClaim::New = inbox.claim(&mut tx, &Key::new(event_id)?, None).await? {
//!     sqlx::query("UPDATE stock SET qty = qty - 1 WHERE item = 'apple'").execute(&mut *tx).await?;
//! }
//! tx.commit().await?; // the dedup record and the stock change, together
//! # Ok(()) }
//! ```

use oncely_core::inbox::InboxTransaction;
pub use oncely_core::inbox::{Inbox, InboxClaim};
use oncely_core::{Error, Fingerprint, Key, Record, Result, Scope, VersionCheck, async_trait};
use sqlx::PgConnection;

use crate::claim_tx::ClaimTx;
use crate::driver::record_from_row;
use crate::store::{INSERT_VERSION, LOCK_ONE, LOCK_VERSION, SET_VERSION};

const STORE: &str = "postgres (your transaction)";

/// The inbox on a PostgreSQL transaction: `inbox.claim(&mut tx, ...)`. See the module docs.
#[async_trait]
pub trait PostgresInbox {
    /// Claims `key` in the transaction `conn` belongs to (pass `&mut tx`).
    async fn claim(
        &self,
        conn: &mut PgConnection,
        key: &Key,
        fingerprint: Option<Fingerprint>,
    ) -> Result<InboxClaim>;

    /// Claims every key of `items` in the transaction `conn` belongs to, with two statements
    /// whatever their number (insert the new keys, lock the others), answering in order. For a
    /// consumer that takes messages in batches: one transaction for the batch's records and its
    /// effects. Keys are written in sorted order, so concurrent batches seldom deadlock; when
    /// PostgreSQL does break a deadlock, your transaction is rolled back and this answers
    /// [`Error::Backend`]: run the transaction again.
    ///
    /// ```no_run
    /// # async fn handle(pool: sqlx::PgPool, ids: Vec<String>) -> Result<(), Box<dyn std::error::Error>> {
    /// use oncely_core::{Key, Scope};
    /// use oncely_postgres::inbox::{Inbox, InboxClaim, PostgresInbox};
    ///
    /// let inbox = Inbox::new(Scope::new("orders-consumer")?);
    /// let items = ids.iter().map(|id| Ok((Key::new(id)?, None))).collect::<oncely_core::Result<Vec<_>>>()?;
    /// let mut tx = pool.begin().await?;
    /// for (id, claim) in ids.iter().zip(inbox.claim_many(&mut tx, &items).await?) {
    ///     if claim == InboxClaim::New {
    ///         sqlx::query("INSERT INTO orders (id) VALUES ($1)").bind(id).execute(&mut *tx).await?;
    ///     }
    /// }
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    async fn claim_many(
        &self,
        conn: &mut PgConnection,
        items: &[(Key, Option<Fingerprint>)],
    ) -> Result<Vec<InboxClaim>>;

    /// Stores `outcome` with a key claimed as [`InboxClaim::New`] in the same transaction, to be
    /// replayed to duplicates.
    async fn record_outcome(
        &self,
        conn: &mut PgConnection,
        key: &Key,
        outcome: &[u8],
    ) -> Result<()>;

    /// The version guard in the transaction `conn` belongs to ([`Inbox::apply_if_newer_in`]):
    /// `version` is stored for `entity` if greater than the stored one, and commits or rolls
    /// back with your update. The store's `apply_if_newer` shares the history.
    ///
    /// ```no_run
    /// # async fn handle(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// use oncely_core::{Key, Scope, VersionCheck};
    /// use oncely_postgres::inbox::{Inbox, PostgresInbox};
    ///
    /// let inbox = Inbox::new(Scope::new("orders")?);
    /// let mut tx = pool.begin().await?;
    /// if let VersionCheck::Applied { .. } = inbox.apply_if_newer(&mut tx, &Key::new("order-7")?, 4).await? {
    ///     sqlx::query("UPDATE orders SET status = 'shipped' WHERE id = 'order-7'").execute(&mut *tx).await?;
    /// }
    /// tx.commit().await?; // the version and the update, together
    /// # Ok(()) }
    /// ```
    async fn apply_if_newer(
        &self,
        conn: &mut PgConnection,
        entity: &Key,
        version: u64,
    ) -> Result<VersionCheck>;
}

#[async_trait]
impl PostgresInbox for Inbox {
    async fn claim(
        &self,
        conn: &mut PgConnection,
        key: &Key,
        fingerprint: Option<Fingerprint>,
    ) -> Result<InboxClaim> {
        self.claim_in(&mut InboxTx(conn), key, fingerprint).await
    }

    async fn claim_many(
        &self,
        conn: &mut PgConnection,
        items: &[(Key, Option<Fingerprint>)],
    ) -> Result<Vec<InboxClaim>> {
        let mut tx = ClaimTx { conn, store: STORE };
        self.claim_many_in(&mut tx, STORE, items).await
    }

    async fn record_outcome(
        &self,
        conn: &mut PgConnection,
        key: &Key,
        outcome: &[u8],
    ) -> Result<()> {
        self.record_outcome_in(&mut InboxTx(conn), key, outcome)
            .await
    }

    async fn apply_if_newer(
        &self,
        conn: &mut PgConnection,
        entity: &Key,
        version: u64,
    ) -> Result<VersionCheck> {
        self.apply_if_newer_in(&mut InboxTx(conn), entity, version)
            .await
    }
}

struct InboxTx<'c>(&'c mut PgConnection);

// Both take the record's columns as $1..$7 and write it, completed, in the caller's
// transaction: a first insert, or a takeover of an expired record.
const INSERT_COMPLETED: &str = "INSERT INTO oncely_records \
     (scope, key, completed, token, attempt, fingerprint, created_at, expires_at, outcome) \
     VALUES ($1, $2, true, $3, $4, $5, $6, $7, ''::bytea) ON CONFLICT (scope, key) DO NOTHING";
const TAKE_OVER_COMPLETED: &str = "UPDATE oncely_records SET completed = true, token = $3, \
     attempt = $4, fingerprint = $5, created_at = $6, expires_at = $7, outcome = ''::bytea \
     WHERE scope = $1 AND key = $2";

impl InboxTx<'_> {
    /// Runs INSERT_COMPLETED or TAKE_OVER_COMPLETED; answers how many rows it wrote.
    async fn write(&mut self, statement: &'static str, record: &Record) -> Result<u64> {
        let done = sqlx::query(statement)
            .bind(record.scope.as_str().as_bytes())
            .bind(record.key.as_str().as_bytes())
            .bind(record.token as i64)
            .bind(record.attempt as i32)
            .bind(record.fingerprint.map(|f| f.as_bytes().to_vec()))
            .bind(record.created_at.as_millis())
            .bind(record.expires_at.as_millis())
            .execute(&mut *self.0)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl InboxTransaction for InboxTx<'_> {
    async fn insert_completed(&mut self, record: &Record) -> Result<bool> {
        Ok(self.write(INSERT_COMPLETED, record).await? == 1)
    }

    async fn lock(&mut self, scope: &Scope, key: &Key) -> Result<Option<Record>> {
        let row = sqlx::query(LOCK_ONE)
            .bind(scope.as_str().as_bytes())
            .bind(key.as_str().as_bytes())
            .fetch_optional(&mut *self.0)
            .await
            .map_err(backend)?;
        row.map(|row| {
            record_from_row(&row).map_err(|detail| Error::Corrupt {
                store: "postgres".into(),
                detail,
            })
        })
        .transpose()
    }

    async fn take_over(&mut self, record: &Record) -> Result<()> {
        self.write(TAKE_OVER_COMPLETED, record).await.map(drop)
    }

    async fn set_outcome(&mut self, scope: &Scope, key: &Key, outcome: &[u8]) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE oncely_records SET outcome = $3 WHERE scope = $1 AND key = $2 AND completed",
        )
        .bind(scope.as_str().as_bytes())
        .bind(key.as_str().as_bytes())
        .bind(outcome)
        .execute(&mut *self.0)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn lock_version(
        &mut self,
        scope: &Scope,
        entity: &Key,
        version: u64,
    ) -> Result<Option<u64>> {
        let (scope, entity) = (scope.as_str().as_bytes(), entity.as_str().as_bytes());
        let inserted = sqlx::query(INSERT_VERSION)
            .bind(scope)
            .bind(entity)
            .bind(version as i64)
            .execute(&mut *self.0)
            .await
            .map_err(backend)?;
        if inserted.rows_affected() == 1 {
            return Ok(None);
        }
        let stored: i64 = sqlx::query_scalar(LOCK_VERSION)
            .bind(scope)
            .bind(entity)
            .fetch_one(&mut *self.0)
            .await
            .map_err(backend)?;
        Ok(Some(stored as u64))
    }

    async fn set_version(&mut self, scope: &Scope, entity: &Key, version: u64) -> Result<()> {
        sqlx::query(SET_VERSION)
            .bind(scope.as_str().as_bytes())
            .bind(entity.as_str().as_bytes())
            .bind(version as i64)
            .execute(&mut *self.0)
            .await
            .map_err(backend)?;
        Ok(())
    }
}

fn backend(e: sqlx::Error) -> Error {
    Error::Backend {
        store: STORE.into(),
        source: e.into(),
    }
}
