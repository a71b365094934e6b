//! The transactional inbox: a claim taken inside your own SQLite transaction.
//!
//! # Inbox or store?
//!
//! [`SqliteStore`](crate::SqliteStore) claims a key in oncely's own transaction, then you do
//! the work, then you complete the claim: three steps, so a crash between the work and the
//! completion leaves the work done and the key claimable again once its lease runs out. That is
//! the right tool when the effect is outside this database (an e-mail, an HTTP call, a payment
//! API): the lease stops a second delivery from running it concurrently, and the work should be
//! idempotent on its own, or cheap to repeat.
//!
//! When the effect is a write to **the same SQLite file** (an order row, a stock counter), use
//! the inbox instead. [`SqliteInbox::claim`] writes the dedup record, already completed, in the
//! transaction you pass; your business writes go in the same transaction, so both commit or
//! both roll back. There is no window in which the effect is durable and the record is not, or
//! the other way round, and no lease to run out.
//!
//! Both share one history: a key done through the inbox is a `Duplicate` to the store and the
//! other way round; a key the store has in flight is [`InboxClaim::InProgress`] to the inbox
//! while its lease is live, and taken over (the old holder fenced out) once it has run out.
//!
//! # Isolation: begin with `BEGIN IMMEDIATE`
//!
//! SQLite transactions are serializable: one writer at a time, and a transaction's reads see
//! one snapshot. A plain `BEGIN` (what `pool.begin()` sends) is *deferred*: it takes no lock
//! until the first statement, a read lock (a snapshot) for a read, and tries to upgrade to the
//! write lock at the first write. That upgrade cannot wait: if another connection holds the
//! write lock, or committed since the snapshot was taken, SQLite answers `SQLITE_BUSY` (or
//! `SQLITE_BUSY_SNAPSHOT`) at once, whatever the busy timeout, because waiting could never
//! make the snapshot current. So under concurrent deliveries a deferred transaction that reads
//! anything (even one of your own tables) before the claim fails at the claim; with 64
//! concurrent deliveries, most of them did.
//!
//! Begin every transaction that claims with `BEGIN IMMEDIATE`, which takes the write lock up
//! front and waits for it on the connection's busy timeout (sqlx's default: 5 s):
//!
//! ```text
//! let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
//! ```
//!
//! Transactions that claim then run one after another, each seeing everything committed before
//! it, and a concurrent duplicate finds the first delivery's record and answers
//! [`InboxClaim::Duplicate`]; it never waits on a lease and never runs the business code.
//! Readers are not blocked (in WAL mode, which [`migrate`] and the store switch the file to).
//!
//! If SQLite still answers busy inside a claim (a deferred transaction that read first, or a
//! busy timeout that ran out), the claim fails with [`Error::Backend`] saying so and naming
//! `BEGIN IMMEDIATE`: nothing was recorded; roll back and retry the whole transaction.
//!
//! A full disk, an I/O error or a file that cannot be opened is [`Error::Unavailable`]: an
//! outage, as in the store. Roll back; the same transaction succeeds once there is space.
//!
//! # Schema
//!
//! The inbox uses the store's tables (`migrations/`, tracked in `PRAGMA user_version`). Run
//! [`migrate`] once at start-up, as the example does, or open a `SqliteStore` on the file. A
//! claim on a file that has no oncely tables yet applies the schema itself, inside your
//! transaction; [`migrate`] also switches the file to WAL, as the store does.
//!
//! ```no_run
//! # async fn handle(event_id: &str) -> Result<(), Box<dyn std::error::Error>> {
//! use oncely_core::{Key, Scope};
//! use oncely_sqlite::inbox::{self, Inbox, InboxClaim, SqliteInbox};
//! use oncely_sqlite::sqlx;
//! use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
//!
//! let options = SqliteConnectOptions::new()
//!     .filename("shop.db")
//!     .create_if_missing(true)
//!     .busy_timeout(std::time::Duration::from_secs(5));
//! let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
//! inbox::migrate(&mut *pool.acquire().await?).await?;
//!
//! let inbox = Inbox::new(Scope::new("orders-consumer")?);
//! let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
//! if let InboxClaim::New = inbox.claim(&mut tx, &Key::new(event_id)?, None).await? {
//!     sqlx::query("UPDATE stock SET qty = qty - 1 WHERE item = 'apple'").execute(&mut *tx).await?;
//!     inbox.record_outcome(&mut tx, &Key::new(event_id)?, b"reserved").await?;
//! }
//! tx.commit().await?; // the dedup record and the stock change, together
//! # Ok(()) }
//! ```

use oncely_core::inbox::InboxTransaction;
pub use oncely_core::inbox::{Inbox, InboxClaim};
use oncely_core::{Error, Fingerprint, Key, Record, Result, Scope, VersionCheck, async_trait};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection, Row};

use crate::ops::{
    NAME_SCOPE, SELECT_CLAIM, SELECT_DONE, SELECT_SCOPE_ID, SELECT_VERSION, StoredKey, StoredRow,
    Table, UPSERT_VERSION, decode,
};
use crate::{MIGRATIONS, SqliteOptions};

const STORE: &str = "sqlite (your transaction)";

/// The inbox on a SQLite transaction: `inbox.claim(&mut tx, ...)`. See the module docs.
#[async_trait]
pub trait SqliteInbox {
    /// Claims `key` in the transaction `conn` belongs to (pass `&mut tx`, begun with
    /// `BEGIN IMMEDIATE`).
    async fn claim(
        &self,
        conn: &mut SqliteConnection,
        key: &Key,
        fingerprint: Option<Fingerprint>,
    ) -> Result<InboxClaim>;

    /// Claims every key of `items` in the transaction `conn` belongs to, answering in order, as
    /// many single claims would (a key repeated in `items` is a duplicate of its first
    /// occurrence). SQLite statements cost little next to the commit, so this runs one claim
    /// per key; the batch's worth is the one transaction, and so the one sync, for all of them.
    ///
    /// ```no_run
    /// # async fn handle(pool: sqlx::SqlitePool, ids: Vec<String>) -> Result<(), Box<dyn std::error::Error>> {
    /// use oncely_core::{Key, Scope};
    /// use oncely_sqlite::inbox::{Inbox, InboxClaim, SqliteInbox};
    ///
    /// let inbox = Inbox::new(Scope::new("orders-consumer")?);
    /// let items = ids.iter().map(|id| Ok((Key::new(id)?, None))).collect::<oncely_core::Result<Vec<_>>>()?;
    /// let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
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
        conn: &mut SqliteConnection,
        items: &[(Key, Option<Fingerprint>)],
    ) -> Result<Vec<InboxClaim>>;

    /// Stores `outcome` with a key claimed as [`InboxClaim::New`] in the same transaction, to be
    /// replayed to duplicates.
    async fn record_outcome(
        &self,
        conn: &mut SqliteConnection,
        key: &Key,
        outcome: &[u8],
    ) -> Result<()>;

    /// The version guard in the transaction `conn` belongs to (begun with `BEGIN IMMEDIATE`;
    /// [`Inbox::apply_if_newer_in`]): `version` is stored for `entity` if greater than the
    /// stored one, and commits or rolls back with your update. The store's `apply_if_newer`
    /// shares the history.
    async fn apply_if_newer(
        &self,
        conn: &mut SqliteConnection,
        entity: &Key,
        version: u64,
    ) -> Result<VersionCheck>;
}

#[async_trait]
impl SqliteInbox for Inbox {
    async fn claim(
        &self,
        conn: &mut SqliteConnection,
        key: &Key,
        fingerprint: Option<Fingerprint>,
    ) -> Result<InboxClaim> {
        let mut tx = InboxTx::new(conn);
        self.claim_in(&mut tx, key, fingerprint).await
    }

    async fn claim_many(
        &self,
        conn: &mut SqliteConnection,
        items: &[(Key, Option<Fingerprint>)],
    ) -> Result<Vec<InboxClaim>> {
        let mut claims = Vec::with_capacity(items.len());
        for (key, fingerprint) in items {
            claims.push(self.claim(&mut *conn, key, *fingerprint).await?);
        }
        Ok(claims)
    }

    async fn record_outcome(
        &self,
        conn: &mut SqliteConnection,
        key: &Key,
        outcome: &[u8],
    ) -> Result<()> {
        let mut tx = InboxTx::new(conn);
        self.record_outcome_in(&mut tx, key, outcome).await
    }

    async fn apply_if_newer(
        &self,
        conn: &mut SqliteConnection,
        entity: &Key,
        version: u64,
    ) -> Result<VersionCheck> {
        let mut tx = InboxTx::new(conn);
        self.apply_if_newer_in(&mut tx, entity, version).await
    }
}

struct InboxTx<'c> {
    conn: &'c mut SqliteConnection,
    /// Which table `lock` found the key in: a takeover of a store claim must fence it out.
    found_in: Option<Table>,
    /// The id of the scope this transaction last looked up (an inbox has one scope), read once.
    scope_id: Option<(Scope, i64)>,
}

impl<'c> InboxTx<'c> {
    fn new(conn: &'c mut SqliteConnection) -> Self {
        InboxTx {
            conn,
            found_in: None,
            scope_id: None,
        }
    }

    /// The id of `scope` in `oncely_scopes`; with `name`, named first if it has none (which also
    /// takes the write lock), else `None` while no record of it was ever written.
    async fn scope_id(&mut self, scope: &Scope, name: bool) -> sqlx::Result<Option<i64>> {
        if let Some((known, id)) = &self.scope_id
            && known == scope
        {
            return Ok(Some(*id));
        }
        if name {
            sqlx::query(NAME_SCOPE)
                .bind(scope.as_str())
                .execute(&mut *self.conn)
                .await?;
        }
        let id: Option<i64> = sqlx::query_scalar(SELECT_SCOPE_ID)
            .bind(scope.as_str())
            .fetch_optional(&mut *self.conn)
            .await?;
        // Kept for this transaction only: it is the one that may have named it.
        self.scope_id = id.map(|id| (scope.clone(), id));
        Ok(id)
    }

    /// Runs INSERT_COMPLETED or REPLACE_COMPLETED for `record`, its scope named first; answers
    /// how many rows it wrote.
    async fn write_completed(
        &mut self,
        statement: &'static str,
        record: &Record,
    ) -> sqlx::Result<u64> {
        let scope_id = self.scope_id(&record.scope, true).await?;
        let done = sqlx::query(statement)
            .bind(scope_id)
            .bind(StoredKey::of(&record.key))
            .bind(record.token as i64)
            .bind(record.attempt)
            .bind(record.fingerprint.map(|f| f.as_bytes().to_vec()))
            .bind(record.created_at.as_millis())
            .bind(record.expires_at.as_millis())
            .execute(&mut *self.conn)
            .await?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl InboxTransaction for InboxTx<'_> {
    async fn insert_completed(&mut self, record: &Record) -> Result<bool> {
        // The common case: naming the scope (which also takes the write lock if the caller's
        // transaction does not hold it yet), then one insert.
        let inserted = match self.write_completed(INSERT_COMPLETED, record).await {
            Err(e) if is_missing_schema(&e) => {
                apply_migrations(self.conn).await?;
                self.write_completed(INSERT_COMPLETED, record).await
            }
            other => other,
        }
        .map_err(backend)?;
        Ok(inserted == 1)
    }

    async fn lock(&mut self, scope: &Scope, key: &Key) -> Result<Option<Record>> {
        // The caller's transaction holds the write lock since the insert: nothing can change.
        let scope_id = self.scope_id(scope, false).await.map_err(backend)?;
        Ok(select(self.conn, scope_id, scope, key)
            .await?
            .map(|(record, table)| {
                self.found_in = Some(table);
                record
            }))
    }

    async fn take_over(&mut self, record: &Record) -> Result<()> {
        // A store claim leaves oncely_claims, so its holder is fenced out.
        if self.found_in == Some(Table::Claims) {
            let scope_id = self.scope_id(&record.scope, false).await.map_err(backend)?;
            sqlx::query(DELETE_CLAIM)
                .bind(scope_id)
                .bind(StoredKey::of(&record.key))
                .execute(&mut *self.conn)
                .await
                .map_err(backend)?;
        }
        self.write_completed(REPLACE_COMPLETED, record)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn set_outcome(&mut self, scope: &Scope, key: &Key, outcome: &[u8]) -> Result<bool> {
        // oncely_records holds completed records only (claims are in oncely_claims).
        let scope_id = self.scope_id(scope, false).await.map_err(backend)?;
        let done = sqlx::query(UPDATE_OUTCOME)
            .bind(scope_id)
            .bind(StoredKey::of(key))
            .bind(outcome)
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
        // The caller's `BEGIN IMMEDIATE` holds the write lock: nothing changes between the two.
        let stored: Option<i64> = sqlx::query_scalar(SELECT_VERSION)
            .bind(scope.as_str())
            .bind(entity.as_str())
            .fetch_optional(&mut *self.conn)
            .await
            .map_err(backend)?;
        if stored.is_none() {
            self.set_version(scope, entity, version).await?;
        }
        Ok(stored.map(|v| v as u64))
    }

    async fn set_version(&mut self, scope: &Scope, entity: &Key, version: u64) -> Result<()> {
        sqlx::query(UPSERT_VERSION)
            .bind(scope.as_str())
            .bind(entity.as_str())
            .bind(version as i64)
            .execute(&mut *self.conn)
            .await
            .map_err(backend)?;
        Ok(())
    }
}

/// How often [`migrate`] tries to switch the file to WAL, 10 ms apart.
const WAL_SWITCH_TRIES: u32 = 500;

/// Brings the schema of the file `conn` is open on up to date (the store's migrations, tracked in
/// `PRAGMA user_version`), and switches it to WAL as the store does. Call it once at start-up on
/// a connection outside any transaction (`&mut *pool.acquire().await?`); on a connection inside
/// a transaction it applies the schema in that transaction and leaves the journal mode alone.
pub async fn migrate(conn: &mut SqliteConnection) -> Result<()> {
    let unavailable = |e: sqlx::Error| Error::Unavailable {
        store: "sqlite (your connection)".into(),
        source: e.into(),
    };
    if conn.is_in_transaction() {
        return apply_migrations(conn).await;
    }
    // The switch answers the mode the file is in; another connection reading at that moment
    // leaves it unchanged without an error, so try again for a while.
    let mut tries = 0;
    loop {
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode = WAL")
            .fetch_one(&mut *conn)
            .await
            .map_err(unavailable)?;
        if mode.eq_ignore_ascii_case("wal") {
            break;
        }
        tries += 1;
        if tries == WAL_SWITCH_TRIES {
            return Err(Error::Unavailable {
                store: "sqlite (your connection)".into(),
                source: format!(
                    "the file stayed in journal mode {mode}: other connections kept it busy; \
                     call migrate at start-up, before the pool is in use"
                )
                .into(),
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut tx = conn
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(unavailable)?;
    apply_migrations(&mut tx).await?;
    tx.commit().await.map_err(unavailable)
}

/// A pool of two connections on the file `options` name (created if missing), with its busy
/// timeout and `synchronous=FULL`, migrated as [`migrate`] does unless `options.migrate` is
/// false: what the outbox and the offsets open. `what` names the opener in errors.
pub(crate) async fn open_pool(options: &SqliteOptions, what: &str) -> Result<SqlitePool> {
    let unavailable = |e: sqlx::Error| Error::Unavailable {
        store: options.url(),
        source: format!("opening {what}: {e}").into(),
    };
    let connect = SqliteConnectOptions::new()
        .filename(&options.path)
        .create_if_missing(true)
        .busy_timeout(options.busy_timeout)
        .synchronous(SqliteSynchronous::Full);
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(connect)
        .await
        .map_err(unavailable)?;
    if options.migrate {
        let mut conn = pool.acquire().await.map_err(unavailable)?;
        migrate(&mut conn).await?;
    }
    Ok(pool)
}

/// Applies the migrations newer than the file's `user_version`, in the current transaction.
pub(crate) async fn apply_migrations(conn: &mut SqliteConnection) -> Result<()> {
    let unavailable = |e: sqlx::Error| Error::Unavailable {
        store: "sqlite (your connection)".into(),
        source: e.into(),
    };
    let latest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    let current: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *conn)
        .await
        .map_err(unavailable)?;
    if current > i64::from(latest) {
        return Err(Error::Unavailable {
            store: "sqlite (your connection)".into(),
            source: format!(
                "schema version {current} is newer than this oncely understands ({latest}); upgrade oncely"
            )
            .into(),
        });
    }
    for (_, sql) in MIGRATIONS.iter().filter(|(v, _)| i64::from(*v) > current) {
        sqlx::raw_sql(*sql)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
    }
    if current < i64::from(latest) {
        sqlx::raw_sql(AssertSqlSafe(format!("PRAGMA user_version = {latest}")))
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
    }
    Ok(())
}

// Both take the claimant's columns as ?1..?7 and write the record as completed in the caller's
// transaction, with an empty outcome until `record_outcome`: a first insert (only if the key is
// not in flight either), or the takeover of an expired record.
const INSERT_COMPLETED: &str = "INSERT INTO oncely_records \
     (scope_id, key, token, attempt, fingerprint, lifetime, expires_at, outcome) \
     SELECT ?1, ?2, ?3, ?4, ?5, ?7 - ?6, ?7, x'' \
     WHERE NOT EXISTS (SELECT 1 FROM oncely_claims WHERE scope_id = ?1 AND key = ?2) \
     ON CONFLICT DO NOTHING";
const REPLACE_COMPLETED: &str = "INSERT OR REPLACE INTO oncely_records \
     (scope_id, key, token, attempt, fingerprint, lifetime, expires_at, outcome) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?7 - ?6, ?7, x'')";
const DELETE_CLAIM: &str = "DELETE FROM oncely_claims WHERE scope_id = ?1 AND key = ?2";
const UPDATE_OUTCOME: &str =
    "UPDATE oncely_records SET outcome = ?3 WHERE scope_id = ?1 AND key = ?2";

/// The record of (scope, key), from whichever table holds it; none while the scope has no id.
async fn select(
    conn: &mut SqliteConnection,
    scope_id: Option<i64>,
    scope: &Scope,
    key: &Key,
) -> Result<Option<(Record, Table)>> {
    let Some(scope_id) = scope_id else {
        return Ok(None);
    };
    for (statement, table) in [(SELECT_CLAIM, Table::Claims), (SELECT_DONE, Table::Records)] {
        let row = sqlx::query(statement)
            .bind(scope_id)
            .bind(StoredKey::of(key))
            .fetch_optional(&mut *conn)
            .await
            .map_err(backend)?;
        if let Some(row) = row {
            let columns: StoredRow = (|| {
                Ok::<_, sqlx::Error>((
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                    row.try_get(4)?,
                    match table {
                        Table::Records => row.try_get(5)?,
                        Table::Claims => None,
                    },
                ))
            })()
            .map_err(backend)?;
            return Ok(Some((decode(scope, key, table, columns, STORE)?, table)));
        }
    }
    Ok(None)
}

/// Whether `e` says oncely's tables are not there yet (a fresh file).
pub(crate) fn is_missing_schema(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|db| db.message().contains("no such table: oncely_"))
}

/// A driver error of a pool the crate opened on the file `url` (the outbox's, the offsets'),
/// while doing `what`: [`Error::Unavailable`] if the file could not be reached.
pub(crate) fn driver(url: &str, what: &str, e: sqlx::Error) -> Error {
    let unreachable = matches!(
        e,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
    );
    Error::driver(url, unreachable, format!("{what}: {e}").into())
}

pub(crate) fn backend(e: sqlx::Error) -> Error {
    // The primary result code; extended codes carry it in the low byte.
    let code = e
        .as_database_error()
        .and_then(|db| db.code())
        .and_then(|code| code.parse::<i32>().ok())
        .map(|code| code & 0xff);
    // SQLITE_IOERR (10), SQLITE_FULL (13), SQLITE_CANTOPEN (14): the file cannot be written
    // for now, an outage as in the store (`ops::backend`); the caller rolls back and the
    // message comes back later, no attempt counted.
    if matches!(code, Some(10 | 13 | 14)) {
        return Error::Unavailable {
            store: STORE.into(),
            source: Box::new(e),
        };
    }
    // SQLITE_BUSY (5) and SQLITE_LOCKED (6): this transaction did not take the write lock.
    let busy = matches!(code, Some(5 | 6));
    Error::Backend {
        store: STORE.into(),
        source: if busy { Box::new(Busy(e)) } else { Box::new(e) },
    }
}

/// SQLite was busy inside a claim: the caller's transaction did not hold the write lock.
#[derive(Debug)]
struct Busy(sqlx::Error);

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: this transaction could not take SQLite's write lock (another connection holds \
             it, or committed since this transaction's snapshot; a deferred transaction that read \
             before claiming cannot wait for it); nothing was recorded. Roll back and retry, and \
             begin transactions that claim, enqueue or save offsets with BEGIN IMMEDIATE \
             (pool.begin_with(\"BEGIN IMMEDIATE\")) so the lock is taken, waiting on the busy \
             timeout, before anything is read",
            self.0
        )
    }
}

impl std::error::Error for Busy {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}
