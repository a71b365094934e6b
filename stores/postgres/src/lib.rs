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
//!   `UPDATE ... FROM unnest(...) RETURNING`, and a claim it did not complete is explained by
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

pub mod inbox;
pub mod offsets;
pub mod outbox;
pub mod partitions;

/// The sqlx this crate is built on, so your transactions are the inbox's type.
pub use sqlx;

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use oncely_core::batch::{
    ClaimTransaction, RecordId, Taken, claim_in_transaction, claimed_any, merge_settled,
    settle_by_read,
};
use oncely_core::group::DEFAULT_MAX_BATCH;
use oncely_core::lifecycle::{claim_lost, decide_version};
use oncely_core::url::{count_param, flag_param, redact_password};
use oncely_core::{
    Claim, ClaimOutcome, ClaimRequest, Completion, Error, GroupCommit, Key, Record, RecordRow,
    Result, Scope, Store, StoreStats, Timestamp, VersionCheck, async_trait,
};
use sqlx::Connection;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};

/// The schema migrations, in order: `(version, sql)`.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/0001_records.sql")),
    (2, include_str!("../migrations/0002_outbox.sql")),
    (3, include_str!("../migrations/0003_offsets.sql")),
];

/// Connections in the store's pool.
const POOL_SIZE: u32 = 8;
/// Claim batches in flight at once, and as many complete batches. Fewer, larger batches did
/// better than one per connection in `oncely bench` here (BENCHMARKS.md); the other connections
/// serve release, get, purge and explicit `claim_many` calls.
const GROUP_IN_FLIGHT: usize = 2;
/// SQLSTATE deadlock_detected: PostgreSQL rolled the transaction back to break a lock cycle.
const DEADLOCK: &str = "40P01";
/// How often a batch rolled back by a deadlock is run again.
const RETRIES: usize = 8;

/// The PostgreSQL store. See the crate docs.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    url: String,
    partitioned: Option<partitions::Partitioning>,
    group: GroupCommit,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.url)
            .finish()
    }
}

const SELECT_ONE: &str = "SELECT scope, key, completed, token, attempt, fingerprint, created_at, \
     expires_at, outcome FROM oncely_records WHERE scope = $1 AND key = $2";
pub(crate) const LOCK_ONE: &str = "SELECT scope, key, completed, token, attempt, fingerprint, created_at, \
     expires_at, outcome FROM oncely_records WHERE scope = $1 AND key = $2 FOR UPDATE";
const SELECT_MANY: &str = "SELECT scope, key, completed, token, attempt, fingerprint, created_at, \
     expires_at, outcome FROM oncely_records \
     WHERE (scope, key) IN (SELECT * FROM unnest($1::bytea[], $2::bytea[]))";
const STATS: &str = "SELECT count(*) AS records, \
     count(*) FILTER (WHERE NOT completed AND expires_at >= $1) AS in_progress, \
     count(*) FILTER (WHERE completed AND expires_at >= $1) AS completed, \
     count(*) FILTER (WHERE expires_at < $1) AS expired, \
     pg_total_relation_size('oncely_records') AS bytes FROM oncely_records";
const STATS_PARTITIONED: &str = "SELECT count(*) AS records, \
     count(*) FILTER (WHERE NOT completed AND expires_at >= $1) AS in_progress, \
     count(*) FILTER (WHERE completed AND expires_at >= $1) AS completed, \
     count(*) FILTER (WHERE expires_at < $1) AS expired, \
     (SELECT coalesce(sum(pg_total_relation_size(relid)), 0)::int8 \
      FROM pg_partition_tree('oncely_records')) AS bytes FROM oncely_records";
const LOCK_MANY: &str = "SELECT scope, key, completed, token, attempt, fingerprint, created_at, \
     expires_at, outcome FROM oncely_records \
     WHERE (scope, key) IN (SELECT * FROM unnest($1::bytea[], $2::bytea[])) \
     ORDER BY scope, key FOR UPDATE";

impl PostgresStore {
    /// Connects with a `postgres://` URL and applies the migrations unless the URL carries
    /// `oncely_migrate=false`, in the layout `oncely_partitions` asks for (see [`partitions`]).
    /// Other query parameters are PostgreSQL's own (`sslmode`, `options`, ...).
    pub async fn connect(url: &str) -> Result<Self> {
        let (url, migrate) = flag_param(url, "oncely_migrate", true)?;
        let (url, partitioning) = partitions::Partitioning::from_url(&url)?;
        let (url, batches) = count_param(&url, "oncely_group_batches", GROUP_IN_FLIGHT)?;
        let options = PgConnectOptions::from_str(&url).map_err(|e| Error::InvalidUrl {
            url: redact_password(&url),
            reason: e.to_string(),
        })?;
        let mut store = Self::connect_with_layout(options, &url, migrate, partitioning).await?;
        store.group = GroupCommit::new(&store.url, batches, DEFAULT_MAX_BATCH);
        Ok(store)
    }

    /// Connects with ready-made options (a test can set `search_path`, for instance).
    pub async fn connect_with(options: PgConnectOptions, url: &str, migrate: bool) -> Result<Self> {
        Self::connect_with_layout(options, url, migrate, None).await
    }

    /// Like [`connect_with`](Self::connect_with), in the partitioned layout if `partitioning`
    /// is given. Opening a schema created in the other layout is an [`Error::InvalidUrl`].
    pub async fn connect_with_layout(
        options: PgConnectOptions,
        url: &str,
        migrate: bool,
        partitioning: Option<partitions::Partitioning>,
    ) -> Result<Self> {
        let shown = redact_password(url);
        let unavailable = |e: sqlx::Error| Error::Unavailable {
            store: shown.clone(),
            source: format!("{e} (is PostgreSQL running? see README \"Stores\")").into(),
        };
        // One direct connection first: a refused connection or a bad password is then reported
        // at once and as itself, not as a pool timing out after retrying for half a minute.
        PgConnection::connect_with(&options)
            .await
            .map_err(unavailable)?
            .close()
            .await
            .map_err(unavailable)?;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options);
        let group = GroupCommit::new(&shown, GROUP_IN_FLIGHT, DEFAULT_MAX_BATCH);
        let store = PostgresStore {
            pool,
            url: shown,
            partitioned: partitioning,
            group,
        };
        if migrate {
            store.migrate().await?;
        }
        partitions::check_layout(&store).await?;
        Ok(store)
    }

    /// Applies the migrations this database has not seen yet, one instance at a time.
    pub async fn migrate(&self) -> Result<()> {
        if let Some(layout) = self.partitioned {
            return partitions::migrate(self, layout).await;
        }
        let mut tx = self.begin().await?;
        // Any constant works as long as every oncely instance uses the same one.
        sqlx::query("SELECT pg_advisory_xact_lock(7216540419)")
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        sqlx::query("CREATE TABLE IF NOT EXISTS oncely_schema_version (version integer NOT NULL)")
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        let current: Option<i32> =
            sqlx::query_scalar("SELECT max(version) FROM oncely_schema_version")
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
        let current = current.unwrap_or(0);
        // A partitioned schema takes only its own migrations; opening it reports the mismatch.
        let partitioned = partitions::is_partitioned(&mut tx)
            .await
            .map_err(|e| self.err(e))?;
        for (version, sql) in MIGRATIONS
            .iter()
            .filter(|(v, _)| *v > current && !partitioned)
        {
            sqlx::raw_sql(*sql)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
            sqlx::query("INSERT INTO oncely_schema_version (version) VALUES ($1)")
                .bind(version)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
        }
        tx.commit().await.map_err(|e| self.err(e))
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        self.pool.begin().await.map_err(|e| self.err(e))
    }

    fn err(&self, e: sqlx::Error) -> Error {
        error(&self.url, e)
    }

    /// The records of the requests' keys, read without a lock.
    async fn read_many(
        &self,
        conn: &mut PgConnection,
        requests: &[ClaimRequest],
    ) -> Result<HashMap<RecordId, Record>> {
        let rows = sqlx::query(SELECT_MANY)
            .bind(
                requests
                    .iter()
                    .map(|r| r.scope.as_str().as_bytes())
                    .collect::<Vec<_>>(),
            )
            .bind(
                requests
                    .iter()
                    .map(|r| r.key.as_str().as_bytes())
                    .collect::<Vec<_>>(),
            )
            .fetch_all(conn)
            .await
            .map_err(|e| self.err(e))?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in &rows {
            let record = self.record(row)?;
            found.insert((record.scope.clone(), record.key.clone()), record);
        }
        Ok(found)
    }

    fn record(&self, row: &PgRow) -> Result<Record> {
        record_from_row(row).map_err(|detail| self.corrupt(detail))
    }

    fn corrupt(&self, detail: String) -> Error {
        Error::Corrupt {
            store: self.url.clone(),
            detail,
        }
    }

    async fn select(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        scope: &Scope,
        key: &Key,
        lock: bool,
    ) -> Result<Option<Record>> {
        let row = sqlx::query(if lock { LOCK_ONE } else { SELECT_ONE })
            .bind(scope.as_str().as_bytes())
            .bind(key.as_str().as_bytes())
            .fetch_optional(&mut **tx)
            .await
            .map_err(|e| self.err(e))?;
        row.map(|r| self.record(&r)).transpose()
    }

    /// One transaction completing `items`: one guarded `UPDATE` for all, then, for the items it
    /// did not complete, one read that says why. A driver error is answered as itself (the
    /// caller retries a deadlock); the inner result is the batch's answer.
    async fn complete_batch(
        &self,
        items: &[Completion],
    ) -> std::result::Result<Result<Vec<Result<()>>>, sqlx::Error> {
        // The first item per claim goes to the UPDATE; a repeat of it is answered by the
        // read-back (completed by then), as if the items ran one after another. Sorted, so
        // concurrent batches take row locks in one order.
        let mut seen = HashSet::new();
        let mut first: Vec<usize> = (0..items.len())
            .filter(|&i| {
                let c = &items[i].claim;
                seen.insert((&c.scope, &c.key, c.token))
            })
            .collect();
        first.sort_by_key(|&i| (&items[i].claim.scope, &items[i].claim.key));
        let claim = |i: &usize| &items[*i].claim;
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "UPDATE oncely_records AS r SET completed = true, outcome = u.o, expires_at = u.e \
             FROM unnest($1::bytea[], $2::bytea[], $3::int8[], $4::bytea[], $5::int8[]) AS u(s, k, t, o, e) \
             WHERE r.scope = u.s AND r.key = u.k AND r.token = u.t AND NOT r.completed \
             RETURNING r.scope, r.key, r.token",
        )
        .bind(first.iter().map(|i| claim(i).scope.as_str().as_bytes()).collect::<Vec<_>>())
        .bind(first.iter().map(|i| claim(i).key.as_str().as_bytes()).collect::<Vec<_>>())
        .bind(first.iter().map(|i| claim(i).token as i64).collect::<Vec<_>>())
        .bind(first.iter().map(|&i| items[i].outcome.as_slice()).collect::<Vec<_>>())
        .bind(first.iter().map(|&i| items[i].expires_at.as_millis()).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        let mut done = HashSet::with_capacity(rows.len());
        for row in &rows {
            let scope: Vec<u8> = row.try_get(0)?;
            let key: Vec<u8> = row.try_get(1)?;
            let token: i64 = row.try_get(2)?;
            done.insert((scope, key, token as u64));
        }
        // Which items completed: the first of each claim that the UPDATE matched.
        let mut completed = vec![false; items.len()];
        for &i in &first {
            let c = claim(&i);
            completed[i] = done.contains(&(
                c.scope.as_str().as_bytes().to_vec(),
                c.key.as_str().as_bytes().to_vec(),
                c.token,
            ));
        }
        // The rest: why each one's claim is no longer held, by the rule every store shares.
        let lost: Vec<usize> = (0..items.len()).filter(|&i| !completed[i]).collect();
        let mut found: HashMap<(Scope, Key), Record> = HashMap::new();
        if !lost.is_empty() {
            let rows = sqlx::query(SELECT_MANY)
                .bind(
                    lost.iter()
                        .map(|i| claim(i).scope.as_str().as_bytes())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    lost.iter()
                        .map(|i| claim(i).key.as_str().as_bytes())
                        .collect::<Vec<_>>(),
                )
                .fetch_all(&mut *tx)
                .await?;
            for row in &rows {
                match self.record(row) {
                    Ok(record) => {
                        found.insert((record.scope.clone(), record.key.clone()), record);
                    }
                    Err(e) => return Ok(Err(e)),
                }
            }
        }
        tx.commit().await?;
        Ok(Ok((0..items.len())
            .map(|i| {
                if completed[i] {
                    return Ok(());
                }
                let c = claim(&i);
                let existing = found.get(&(c.scope.clone(), c.key.clone()));
                Err(claim_lost(&self.url, existing, c))
            })
            .collect()))
    }

    /// Why `claim` no longer holds its record, read after a guarded statement changed nothing.
    async fn lost(&self, tx: &mut Transaction<'static, Postgres>, claim: &Claim) -> Result<Error> {
        let existing = self.select(tx, &claim.scope, &claim.key, false).await?;
        Ok(claim_lost(&self.url, existing.as_ref(), claim))
    }

    /// Runs `write` (from [`guarded`]) in a transaction of its own; in the partitioned layout
    /// under the key's advisory lock first, as every write of a key. If it changed no row, the
    /// claim was lost: [`Error::ClaimLost`], with the reason read in the same transaction.
    async fn write_guarded(
        &self,
        claim: &Claim,
        write: Query<'static, Postgres, PgArguments>,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        if self.partitioned.is_some() {
            // No unique index serializes the key across partitions: its advisory lock does (and
            // a takeover moving the row cannot then race this write).
            self.lock_key(&mut tx, claim).await?;
        }
        let done = write.execute(&mut *tx).await.map_err(|e| self.err(e))?;
        if done.rows_affected() != 1 {
            return Err(self.lost(&mut tx, claim).await?);
        }
        tx.commit().await.map_err(|e| self.err(e))
    }
}

/// `statement` (a `DELETE` or `UPDATE` of `oncely_records`) on `claim`'s record, guarded by its
/// token (fencing) and not yet completed: `$1`, `$2` and `$3` are bound to the scope, key and
/// token, further parameters (from `$4`) are the caller's to bind. Run by
/// [`PostgresStore::write_guarded`].
fn guarded(statement: &str, claim: &Claim) -> Query<'static, Postgres, PgArguments> {
    sqlx::query(AssertSqlSafe(format!(
        "{statement} WHERE scope = $1 AND key = $2 AND token = $3 AND NOT completed"
    )))
    .bind(claim.scope.as_str().as_bytes())
    .bind(claim.key.as_str().as_bytes())
    .bind(claim.token as i64)
}

/// Whether a store error is a deadlock PostgreSQL broke by rolling this transaction back.
fn deadlocked(e: &Error) -> bool {
    match e {
        Error::Backend { source, .. } => source
            .downcast_ref::<sqlx::Error>()
            .is_some_and(is_deadlock),
        _ => false,
    }
}

fn is_deadlock(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| code == DEADLOCK)
}

/// Decodes a whole-record row; the error is what was wrong with it.
pub(crate) fn record_from_row(row: &PgRow) -> std::result::Result<Record, String> {
    let get = |e: sqlx::Error| e.to_string();
    RecordRow {
        scope: row.try_get("scope").map_err(get)?,
        key: row.try_get("key").map_err(get)?,
        completed: row.try_get("completed").map_err(get)?,
        token: row.try_get("token").map_err(get)?,
        attempt: row.try_get("attempt").map_err(get)?,
        fingerprint: row.try_get("fingerprint").map_err(get)?,
        created_at: row.try_get("created_at").map_err(get)?,
        expires_at: row.try_get("expires_at").map_err(get)?,
        outcome: row.try_get("outcome").map_err(get)?,
    }
    .into_record()
}

/// A driver error as the store reports it; `store` names the store (its URL).
pub(crate) fn error(store: &str, e: sqlx::Error) -> Error {
    Error::driver(store, unreachable(&e), e.into())
}

/// Whether `e` says the server could not be reached, rather than answering with an error.
pub(crate) fn unreachable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
    )
}

/// A claim batch's transaction; the statements are PostgreSQL's, the orchestration the core's.
/// The store's own transaction for `claim_many`, the caller's for the inbox.
pub(crate) struct ClaimTx<'a> {
    pub(crate) conn: &'a mut PgConnection,
    /// Names the store in errors.
    pub(crate) store: &'a str,
}

impl ClaimTx<'_> {
    fn err(&self, e: sqlx::Error) -> Error {
        error(self.store, e)
    }

    fn record(&self, row: &PgRow) -> Result<Record> {
        record_from_row(row).map_err(|detail| Error::Corrupt {
            store: self.store.to_owned(),
            detail,
        })
    }
}

fn bytes(records: &[Record], column: impl Fn(&Record) -> &str) -> Vec<&[u8]> {
    records.iter().map(|r| column(r).as_bytes()).collect()
}

#[async_trait]
impl ClaimTransaction for ClaimTx<'_> {
    async fn take(&mut self, fresh: &[Record]) -> Result<Taken> {
        // ON CONFLICT DO NOTHING waits for a concurrent inserter of the same key, then skips it.
        // A record with an outcome (the inbox's) is written completed.
        let rows = sqlx::query(
            "INSERT INTO oncely_records (scope, key, completed, token, attempt, fingerprint, created_at, expires_at, outcome) \
             SELECT s, k, o IS NOT NULL, t, 1, f, c, e, o \
             FROM unnest($1::bytea[], $2::bytea[], $3::int8[], $4::bytea[], $5::int8[], $6::int8[], $7::bytea[]) AS u(s, k, t, f, c, e, o) \
             ON CONFLICT (scope, key) DO NOTHING RETURNING scope, key",
        )
        .bind(bytes(fresh, |r| r.scope.as_str()))
        .bind(bytes(fresh, |r| r.key.as_str()))
        .bind(fresh.iter().map(|r| r.token as i64).collect::<Vec<_>>())
        .bind(fresh.iter().map(|r| r.fingerprint.map(|f| f.as_bytes().to_vec())).collect::<Vec<_>>())
        .bind(fresh.iter().map(|r| r.created_at.as_millis()).collect::<Vec<_>>())
        .bind(fresh.iter().map(|r| r.expires_at.as_millis()).collect::<Vec<_>>())
        .bind(fresh.iter().map(Record::outcome).collect::<Vec<_>>())
        .fetch_all(&mut *self.conn)
        .await
        .map_err(|e| self.err(e))?;
        let mut inserted = HashSet::with_capacity(rows.len());
        for row in &rows {
            let scope: Vec<u8> = row.try_get("scope").map_err(|e| self.err(e))?;
            let key: Vec<u8> = row.try_get("key").map_err(|e| self.err(e))?;
            inserted.insert((scope, key));
        }
        let (inserted, others): (Vec<&Record>, Vec<&Record>) = fresh.iter().partition(|r| {
            inserted.contains(&(
                r.scope.as_str().as_bytes().to_vec(),
                r.key.as_str().as_bytes().to_vec(),
            ))
        });
        let mut taken = Taken {
            inserted: inserted
                .into_iter()
                .map(|r| (r.scope.clone(), r.key.clone()))
                .collect(),
            locked: HashMap::new(),
        };
        if !others.is_empty() {
            let rows = sqlx::query(LOCK_MANY)
                .bind(
                    others
                        .iter()
                        .map(|r| r.scope.as_str().as_bytes())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    others
                        .iter()
                        .map(|r| r.key.as_str().as_bytes())
                        .collect::<Vec<_>>(),
                )
                .fetch_all(&mut *self.conn)
                .await
                .map_err(|e| self.err(e))?;
            for row in &rows {
                let record = self.record(row)?;
                taken
                    .locked
                    .insert((record.scope.clone(), record.key.clone()), record);
            }
        }
        Ok(taken)
    }

    async fn rewrite(&mut self, records: &[Record]) -> Result<()> {
        sqlx::query(
            "UPDATE oncely_records AS r SET completed = u.o IS NOT NULL, token = u.t, attempt = u.a, \
             fingerprint = u.f, created_at = u.c, expires_at = u.e, outcome = u.o \
             FROM unnest($1::bytea[], $2::bytea[], $3::int8[], $4::int4[], $5::bytea[], $6::int8[], $7::int8[], $8::bytea[]) \
             AS u(s, k, t, a, f, c, e, o) WHERE r.scope = u.s AND r.key = u.k",
        )
        .bind(bytes(records, |r| r.scope.as_str()))
        .bind(bytes(records, |r| r.key.as_str()))
        .bind(records.iter().map(|r| r.token as i64).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.attempt as i32).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.fingerprint.map(|f| f.as_bytes().to_vec())).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.created_at.as_millis()).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.expires_at.as_millis()).collect::<Vec<_>>())
        .bind(records.iter().map(Record::outcome).collect::<Vec<_>>())
        .execute(&mut *self.conn)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn claim_many(
        &self,
        requests: &[ClaimRequest],
        now: Timestamp,
    ) -> Result<Vec<ClaimOutcome>> {
        if self.partitioned.is_some() {
            return self.partitioned_claim_many(requests, now).await;
        }
        let mut tries = 0;
        loop {
            let mut tx = self.begin().await?;
            // Keys already done are answered from a plain read: no lock, no write. On the
            // transaction's connection: one connection per batch, whatever runtime it was made on.
            let found = self.read_many(&mut tx, requests).await?;
            let (settled, requests) = settle_by_read(requests, &found, now);
            if requests.is_empty() {
                tx.rollback().await.map_err(|e| self.err(e))?;
                return Ok(merge_settled(settled, Vec::new()));
            }
            let mut claim_tx = ClaimTx {
                conn: &mut tx,
                store: &self.url,
            };
            // Fresh keys are inserted, then existing ones locked: each pass is in key order, but
            // two concurrent batches can still wait on each other across the passes. PostgreSQL
            // then rolls one back whole (nothing was claimed), and it runs again.
            match claim_in_transaction(&mut claim_tx, &self.url, &requests, now).await {
                Ok(outcomes) => {
                    if claimed_any(&outcomes) {
                        tx.commit().await.map_err(|e| self.err(e))?;
                    } else {
                        // Row locks only: nothing to make durable (no WAL flush).
                        tx.rollback().await.map_err(|e| self.err(e))?;
                    }
                    return Ok(merge_settled(settled, outcomes));
                }
                Err(e) if deadlocked(&e) && tries < RETRIES => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    async fn claim(&self, request: &ClaimRequest, now: Timestamp) -> Result<ClaimOutcome> {
        self.group.claim(self, request, now).await
    }

    async fn complete(&self, claim: &Claim, outcome: &[u8], expires_at: Timestamp) -> Result<()> {
        self.group.complete(self, claim, outcome, expires_at).await
    }

    async fn complete_many(&self, items: &[Completion]) -> Result<Vec<Result<()>>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        if self.partitioned.is_some() {
            let mut results = Vec::with_capacity(items.len());
            for item in items {
                results.push(
                    self.partitioned_complete(&item.claim, &item.outcome, item.expires_at)
                        .await,
                );
            }
            return Ok(results);
        }
        let mut tries = 0;
        loop {
            match self.complete_batch(items).await {
                Err(e) if is_deadlock(&e) && tries < RETRIES => tries += 1,
                Err(e) => return Err(self.err(e)),
                Ok(results) => return results,
            }
        }
    }

    async fn release(&self, claim: &Claim) -> Result<()> {
        self.write_guarded(claim, guarded("DELETE FROM oncely_records", claim))
            .await
    }

    /// One guarded `UPDATE`, in both layouts; in the partitioned one, under the key's advisory
    /// lock like every write of a key (the new `expires_at` may move the row to another
    /// partition).
    async fn extend(&self, claim: &Claim, lease_until: Timestamp) -> Result<()> {
        let update = guarded("UPDATE oncely_records SET expires_at = $4", claim)
            .bind(lease_until.as_millis());
        self.write_guarded(claim, update).await
    }

    async fn get(&self, scope: &Scope, key: &Key) -> Result<Option<Record>> {
        let mut tx = self.begin().await?;
        let record = self.select(&mut tx, scope, key, false).await?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(record)
    }

    async fn purge(&self, expired_before: Timestamp, limit: usize) -> Result<usize> {
        if self.partitioned.is_some() {
            return self.partitioned_purge(expired_before, limit).await;
        }
        let done = sqlx::query(
            "DELETE FROM oncely_records WHERE (scope, key) IN \
             (SELECT scope, key FROM oncely_records WHERE expires_at < $1 \
              ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind(expired_before.as_millis())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(done.rows_affected() as usize)
    }

    async fn stats(&self, now: Timestamp) -> Result<StoreStats> {
        // A partitioned table's size is the sum of its partitions'.
        let row = sqlx::query(if self.partitioned.is_some() {
            STATS_PARTITIONED
        } else {
            STATS
        })
        .bind(now.as_millis())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let count = |column: &str| -> Result<u64> {
            Ok(row.try_get::<i64, _>(column).map_err(|e| self.err(e))? as u64)
        };
        Ok(StoreStats {
            records: count("records")?,
            in_progress: count("in_progress")?,
            completed: count("completed")?,
            expired: count("expired")?,
            bytes: Some(count("bytes")?),
        })
    }

    async fn apply_if_newer(
        &self,
        scope: &Scope,
        entity: &Key,
        version: u64,
    ) -> Result<VersionCheck> {
        let mut tx = self.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO oncely_versions (scope, entity, version) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(scope.as_str().as_bytes())
        .bind(entity.as_str().as_bytes())
        .bind(version as i64)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        let check = if inserted.rows_affected() == 1 {
            decide_version(None, version)
        } else {
            let stored: i64 = sqlx::query_scalar(
                "SELECT version FROM oncely_versions WHERE scope = $1 AND entity = $2 FOR UPDATE",
            )
            .bind(scope.as_str().as_bytes())
            .bind(entity.as_str().as_bytes())
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
            let check = decide_version(Some(stored as u64), version);
            if let VersionCheck::Applied { .. } = check {
                sqlx::query(
                    "UPDATE oncely_versions SET version = $3 WHERE scope = $1 AND entity = $2",
                )
                .bind(scope.as_str().as_bytes())
                .bind(entity.as_str().as_bytes())
                .bind(version as i64)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
            }
            check
        };
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(check)
    }
}
