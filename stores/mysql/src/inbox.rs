//! The transactional inbox on MySQL/MariaDB: a claim taken inside your own transaction.
//!
//! [`MySqlInbox::claim`] writes the dedup record, already completed, in the transaction you
//! pass; your business writes go in the same transaction, so both commit or both roll back. A
//! concurrent delivery of the same key waits on the key's row lock until the first transaction
//! ends, then answers [`InboxClaim::Duplicate`] if it committed, or claims the key itself if it
//! rolled back. See [`oncely_core::inbox`] for when to use the inbox rather than the store.
//!
//! **Isolation.** READ COMMITTED or REPEATABLE READ (InnoDB's default) both work: the inbox
//! only reads the key's row with locking reads (`FOR UPDATE`), which see the latest committed
//! row under either level. READ COMMITTED is recommended: under REPEATABLE READ, InnoDB also
//! locks the gaps next to the keys it inserts, so concurrent transactions on neighbouring keys
//! deadlock more often. Whatever the level, InnoDB may end a transaction as a deadlock victim
//! (error 1213, the whole transaction rolled back): the inbox reports it as
//! [`Error::Backend`] and nothing is kept, so run the
//! transaction again. Avoid SERIALIZABLE, which turns plain reads into shared locks.
//!
//! ```no_run
//! # async fn handle(pool: sqlx::MySqlPool, event_id: &str) -> Result<(), Box<dyn std::error::Error>> {
//! use oncely_core::{Key, Scope};
//! use oncely_mysql::inbox::{Inbox, InboxClaim, MySqlInbox};
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
use sqlx::MySqlConnection;

use crate::claim_tx::{ClaimTx, insert_or_lock};
use crate::driver::{is, record_from_row};
use crate::store::{DUPLICATE, INSERT_VERSION, LOCK_ONE, LOCK_VERSION, SET_VERSION};

const STORE: &str = "mysql (your transaction)";

/// The inbox on a MySQL transaction: `inbox.claim(&mut tx, ...)`. See the module docs.
#[async_trait]
pub trait MySqlInbox {
    /// Claims `key` in the transaction `conn` belongs to (pass `&mut tx`).
    async fn claim(
        &self,
        conn: &mut MySqlConnection,
        key: &Key,
        fingerprint: Option<Fingerprint>,
    ) -> Result<InboxClaim>;

    /// Claims every key of `items` in the transaction `conn` belongs to, with two statements
    /// whatever their number (insert the new keys, read every row back locked), answering in
    /// order. For a consumer that takes messages in batches: one transaction for the batch's
    /// records and its effects. Keys are written in sorted order, so concurrent batches seldom
    /// deadlock; when InnoDB does pick your transaction as a deadlock victim (error 1213), it is
    /// rolled back and this answers [`Error::Backend`]: run the transaction again.
    ///
    /// ```no_run
    /// # async fn handle(pool: sqlx::MySqlPool, ids: Vec<String>) -> Result<(), Box<dyn std::error::Error>> {
    /// use oncely_core::{Key, Scope};
    /// use oncely_mysql::inbox::{Inbox, InboxClaim, MySqlInbox};
    ///
    /// let inbox = Inbox::new(Scope::new("orders-consumer")?);
    /// let items = ids.iter().map(|id| Ok((Key::new(id)?, None))).collect::<oncely_core::Result<Vec<_>>>()?;
    /// let mut tx = pool.begin().await?;
    /// for (id, claim) in ids.iter().zip(inbox.claim_many(&mut tx, &items).await?) {
    ///     if claim == InboxClaim::New {
    ///         sqlx::query("INSERT INTO orders (id) VALUES (?)").bind(id).execute(&mut *tx).await?;
    ///     }
    /// }
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    async fn claim_many(
        &self,
        conn: &mut MySqlConnection,
        items: &[(Key, Option<Fingerprint>)],
    ) -> Result<Vec<InboxClaim>>;

    /// Stores `outcome` with a key claimed as [`InboxClaim::New`] in the same transaction, to be
    /// replayed to duplicates.
    async fn record_outcome(
        &self,
        conn: &mut MySqlConnection,
        key: &Key,
        outcome: &[u8],
    ) -> Result<()>;

    /// The version guard in the transaction `conn` belongs to ([`Inbox::apply_if_newer_in`]):
    /// `version` is stored for `entity` if greater than the stored one, and commits or rolls
    /// back with your update. The store's `apply_if_newer` shares the history. Under REPEATABLE
    /// READ two first versions of one entity at once can deadlock (error 1213, the transaction
    /// rolled back): run it again.
    async fn apply_if_newer(
        &self,
        conn: &mut MySqlConnection,
        entity: &Key,
        version: u64,
    ) -> Result<VersionCheck>;
}

#[async_trait]
impl MySqlInbox for Inbox {
    async fn claim(
        &self,
        conn: &mut MySqlConnection,
        key: &Key,
        fingerprint: Option<Fingerprint>,
    ) -> Result<InboxClaim> {
        let mut tx = InboxTx { conn, found: None };
        self.claim_in(&mut tx, key, fingerprint).await
    }

    async fn claim_many(
        &self,
        conn: &mut MySqlConnection,
        items: &[(Key, Option<Fingerprint>)],
    ) -> Result<Vec<InboxClaim>> {
        let mut tx = ClaimTx {
            conn,
            store: STORE,
            failed: None,
        };
        self.claim_many_in(&mut tx, STORE, items).await
    }

    async fn record_outcome(
        &self,
        conn: &mut MySqlConnection,
        key: &Key,
        outcome: &[u8],
    ) -> Result<()> {
        let mut tx = InboxTx { conn, found: None };
        self.record_outcome_in(&mut tx, key, outcome).await
    }

    async fn apply_if_newer(
        &self,
        conn: &mut MySqlConnection,
        entity: &Key,
        version: u64,
    ) -> Result<VersionCheck> {
        let mut tx = InboxTx { conn, found: None };
        self.apply_if_newer_in(&mut tx, entity, version).await
    }
}

struct InboxTx<'c> {
    conn: &'c mut MySqlConnection,
    /// The row `insert_completed` found and locked, handed to the `lock` that follows.
    found: Option<Record>,
}

#[async_trait]
impl InboxTransaction for InboxTx<'_> {
    async fn insert_completed(&mut self, record: &Record) -> Result<bool> {
        let rows = insert_or_lock(self.conn, &[record])
            .await
            .map_err(backend)?;
        let Some(row) = rows.first() else {
            // Deleted between the insert and the read: the caller tries again.
            return Ok(false);
        };
        let found = record_from_row(row).map_err(corrupt)?;
        if found.token == record.token {
            return Ok(true);
        }
        self.found = Some(found);
        Ok(false)
    }

    async fn lock(&mut self, scope: &Scope, key: &Key) -> Result<Option<Record>> {
        if let Some(found) = self.found.take() {
            return Ok(Some(found));
        }
        let row = sqlx::query(LOCK_ONE)
            .bind(scope.as_str().as_bytes())
            .bind(key.as_str().as_bytes())
            .fetch_optional(&mut *self.conn)
            .await
            .map_err(backend)?;
        row.map(|row| record_from_row(&row).map_err(corrupt))
            .transpose()
    }

    async fn take_over(&mut self, record: &Record) -> Result<()> {
        sqlx::query(
            "UPDATE oncely_records SET completed = true, token = ?, attempt = ?, fingerprint = ?, \
             created_at = ?, expires_at = ?, outcome = '' WHERE scope = ? AND `key` = ?",
        )
        .bind(record.token as i64)
        .bind(record.attempt as i32)
        .bind(record.fingerprint.map(|f| f.as_bytes().to_vec()))
        .bind(record.created_at.as_millis())
        .bind(record.expires_at.as_millis())
        .bind(record.scope.as_str().as_bytes())
        .bind(record.key.as_str().as_bytes())
        .execute(&mut *self.conn)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn set_outcome(&mut self, scope: &Scope, key: &Key, outcome: &[u8]) -> Result<bool> {
        // sqlx asks for found rows, so an outcome equal to the stored one still counts.
        let done = sqlx::query(
            "UPDATE oncely_records SET outcome = ? WHERE scope = ? AND `key` = ? AND completed",
        )
        .bind(outcome)
        .bind(scope.as_str().as_bytes())
        .bind(key.as_str().as_bytes())
        .execute(&mut *self.conn)
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
        let lock = async |conn: &mut MySqlConnection| {
            sqlx::query_scalar::<_, i64>(LOCK_VERSION)
                .bind(scope)
                .bind(entity)
                .fetch_optional(conn)
                .await
                .map_err(backend)
        };
        if let Some(stored) = lock(&mut *self.conn).await? {
            return Ok(Some(stored as u64));
        }
        let inserted = sqlx::query(INSERT_VERSION)
            .bind(version as i64)
            .bind(scope)
            .bind(entity)
            .execute(&mut *self.conn)
            .await;
        match inserted {
            Ok(_) => Ok(None),
            // A first version another transaction inserted meanwhile (it waited for it to
            // commit): only this statement failed, so read that one, locked.
            Err(e) if is(&e, DUPLICATE) => match lock(&mut *self.conn).await? {
                Some(stored) => Ok(Some(stored as u64)),
                None => Err(Error::Corrupt {
                    store: STORE.into(),
                    detail: "a version's row refused as a duplicate, then not found".into(),
                }),
            },
            Err(e) => Err(backend(e)),
        }
    }

    async fn set_version(&mut self, scope: &Scope, entity: &Key, version: u64) -> Result<()> {
        sqlx::query(SET_VERSION)
            .bind(version as i64)
            .bind(scope.as_str().as_bytes())
            .bind(entity.as_str().as_bytes())
            .execute(&mut *self.conn)
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

fn corrupt(detail: String) -> Error {
    Error::Corrupt {
        store: "mysql".into(),
        detail,
    }
}
