//! The store: connecting, migrating, and the [`Store`] operations in the default layout (the
//! partitioned layout's own are in [`crate::partitions`]).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use oncely_core::batch::{
    RecordId, claim_in_transaction, claimed_any, merge_settled, settle_by_read,
};
use oncely_core::group::DEFAULT_MAX_BATCH;
use oncely_core::lifecycle::{claim_lost, decide_version};
use oncely_core::url::{redact_password, unreachable_hint};
use oncely_core::{
    Claim, ClaimOutcome, ClaimRequest, Completion, Error, GroupCommit, Key, Record, Result, Scope,
    Store, StoreStats, Timestamp, VersionCheck, async_trait,
};
use sqlx::Connection;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};

use crate::MIGRATIONS;
use crate::claim_tx::ClaimTx;
use crate::driver::{error, is_unavailable, record_from_row};
use crate::options::{self, GROUP_IN_FLIGHT};
use crate::partitions::{self, Partitioning};

/// Connections in the store's pool.
const POOL_SIZE: u32 = 8;
/// SQLSTATE deadlock_detected: PostgreSQL rolled the transaction back to break a lock cycle.
const DEADLOCK: &str = "40P01";
/// How often a batch rolled back by a deadlock is run again.
const RETRIES: usize = 8;

/// Settings of the store's own sessions (not of the inbox's, which run on the caller's).
const SESSION_SETTINGS: &[(&str, &str)] = &[
    // A cached generic plan is costed on the table as it was when the statement was first
    // prepared: on a new (empty) table, a seq scan and a hash join, kept as the table grows until
    // autovacuum's next ANALYZE (every batch then reads every row). The batches' array sizes vary
    // too, so plan each execution for its own arguments instead.
    ("plan_cache_mode", "force_custom_plan"),
    // A batch joins its keys (an `unnest` of up to thousands) to the records. Costed on
    // statistics taken just after a burst of claims (most rows in progress), a hash join over a
    // seq scan of the table can look cheaper than probing the primary key per key: every batch
    // then reads every row, and a completion takes its row locks in the table's order instead of
    // its keys' (sorted) order, so it deadlocks with a claim locking the same rows in key order,
    // a cycle PostgreSQL breaks only after `deadlock_timeout` (1 s by default). Nested loops over
    // the keys probe the index, in the batch's order (`tests/plans.rs`).
    ("enable_hashjoin", "off"),
    ("enable_mergejoin", "off"),
];

/// The PostgreSQL store. See the crate docs.
#[derive(Clone)]
pub struct PostgresStore {
    pub(crate) pool: PgPool,
    /// The URL without its password: names the store in errors.
    pub(crate) url: String,
    pub(crate) partitioned: Option<Partitioning>,
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
// The version guard's statements, the store's and the inbox's: (scope, entity, version).
pub(crate) const INSERT_VERSION: &str = "INSERT INTO oncely_versions (scope, entity, version) \
     VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";
pub(crate) const LOCK_VERSION: &str =
    "SELECT version FROM oncely_versions WHERE scope = $1 AND entity = $2 FOR UPDATE";
pub(crate) const SET_VERSION: &str =
    "UPDATE oncely_versions SET version = $3 WHERE scope = $1 AND entity = $2";
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

impl PostgresStore {
    /// Connects with a `postgres://` URL and applies the migrations unless the URL carries
    /// `oncely_migrate=false`, in the layout `oncely_partitions` asks for (see [`partitions`]).
    /// Other query parameters are PostgreSQL's own (`sslmode`, `options`, ...).
    pub async fn connect(url: &str) -> Result<Self> {
        let options = options::parse(url)?;
        let mut store = Self::connect_with_layout(
            options.connect,
            &options.url,
            options.migrate,
            options.partitioning,
        )
        .await?;
        store.group = GroupCommit::new(&store.url, options.group_batches, DEFAULT_MAX_BATCH);
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
        partitioning: Option<Partitioning>,
    ) -> Result<Self> {
        let shown = redact_password(url);
        let unavailable = |e: sqlx::Error| Error::Unavailable {
            store: shown.clone(),
            source: format!("{e} {}", unreachable_hint(&e.to_string(), "PostgreSQL")).into(),
        };
        // One direct connection first: a refused connection or a bad password is then reported
        // at once and as itself, not as a pool timing out after retrying for half a minute.
        PgConnection::connect_with(&options)
            .await
            .map_err(unavailable)?
            .close()
            .await
            .map_err(unavailable)?;
        // The store's own sessions plan its statements for what they are: lookups by key. A
        // setting the URL's `options` already gives is the user's and wins.
        let given = options.get_options().unwrap_or_default().to_owned();
        let settings: Vec<(&str, &str)> = SESSION_SETTINGS
            .iter()
            .copied()
            .filter(|(name, _)| !given.contains(name))
            .collect();
        let options = options.options(settings);
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

    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        self.pool.begin().await.map_err(|e| self.err(e))
    }

    pub(crate) fn err(&self, e: sqlx::Error) -> Error {
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

    pub(crate) fn record(&self, row: &PgRow) -> Result<Record> {
        record_from_row(row).map_err(|detail| self.corrupt(detail))
    }

    pub(crate) fn corrupt(&self, detail: String) -> Error {
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

    /// Completes `items` with one guarded `UPDATE` for all, then, for the items it did not
    /// complete, one read that says why. A driver error of the `UPDATE` is answered as itself
    /// (the caller retries a deadlock, which rolled it back whole); otherwise the answer is one
    /// result per item, in which a failed read after it is the error of the items it was for
    /// only.
    ///
    /// No transaction around them: the `UPDATE` commits on its own, durably, and a transaction
    /// would add a `BEGIN` and a `COMMIT` round trip while giving the read nothing more (under
    /// READ COMMITTED each statement sees what was committed when it started, either way).
    async fn complete_batch(
        &self,
        items: &[Completion],
    ) -> std::result::Result<Vec<Result<()>>, sqlx::Error> {
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
        let mut conn = self.pool.acquire().await?;
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
        .fetch_all(&mut *conn)
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
        let mut unreadable = None;
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
                .fetch_all(&mut *conn)
                .await;
            match rows {
                Ok(rows) => {
                    for row in &rows {
                        match record_from_row(row) {
                            Ok(record) => {
                                found.insert((record.scope.clone(), record.key.clone()), record);
                            }
                            Err(detail) => unreadable = Some(Unread::Corrupt(detail)),
                        }
                    }
                }
                Err(e) => unreadable = Some(Unread::Failed(is_unavailable(&e), e.to_string())),
            }
        }
        // The completions stand (committed): only the lost items whose records could not be
        // read are answered with that, not with a guessed reason.
        Ok((0..items.len())
            .map(|i| {
                if completed[i] {
                    return Ok(());
                }
                let c = claim(&i);
                match (found.get(&(c.scope.clone(), c.key.clone())), &unreadable) {
                    (None, Some(Unread::Corrupt(detail))) => Err(self.corrupt(detail.clone())),
                    (None, Some(Unread::Failed(unavailable, e))) => Err(Error::driver(
                        self.url.clone(),
                        *unavailable,
                        format!("reading why this claim was not completed: {e}").into(),
                    )),
                    (existing, _) => Err(claim_lost(&self.url, existing, c)),
                }
            })
            .collect())
    }

    /// Why `claim` no longer holds its record, read after a guarded statement changed nothing.
    async fn lost(&self, tx: &mut Transaction<'static, Postgres>, claim: &Claim) -> Result<Error> {
        let existing = self.select(tx, &claim.scope, &claim.key, false).await?;
        Ok(claim_lost(&self.url, existing.as_ref(), claim))
    }

    /// Runs `write` (from [`guarded`]) in a transaction of its own; in the partitioned layout
    /// under the key's advisory lock first, as every write of a key. If it changed no row, the
    /// claim was lost: [`Error::ClaimLost`], with the reason read in the same transaction.
    pub(crate) async fn write_guarded(
        &self,
        claim: &Claim,
        write: Query<'static, Postgres, PgArguments>,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        if self.partitioned.is_some() {
            // No unique index serializes the key across partitions: its advisory lock does (and
            // a takeover moving the row cannot then race this write).
            self.lock_key(&mut tx, &claim.scope, &claim.key).await?;
        }
        let done = write.execute(&mut *tx).await.map_err(|e| self.err(e))?;
        if done.rows_affected() != 1 {
            return Err(self.lost(&mut tx, claim).await?);
        }
        tx.commit().await.map_err(|e| self.err(e))
    }
}

/// Why the records of a complete batch's lost items could not be read back.
enum Unread {
    /// A row did not decode: what was wrong with it.
    Corrupt(String),
    /// The read failed: whether PostgreSQL was unreachable, and the driver's error.
    Failed(bool, String),
}

/// `statement` (a `DELETE` or `UPDATE` of `oncely_records`) on `claim`'s record, guarded by its
/// token (fencing) and not yet completed: `$1`, `$2` and `$3` are bound to the scope, key and
/// token, further parameters (from `$4`) are the caller's to bind. Run by
/// [`PostgresStore::write_guarded`].
pub(crate) fn guarded(statement: &str, claim: &Claim) -> Query<'static, Postgres, PgArguments> {
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
                Ok(results) => return Ok(results),
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

    /// In the partitioned layout under the key's advisory lock, like every write of a key.
    async fn forget(&self, scope: &Scope, key: &Key, token: u64) -> Result<bool> {
        let mut tx = self.begin().await?;
        if self.partitioned.is_some() {
            self.lock_key(&mut tx, scope, key).await?;
        }
        let done =
            sqlx::query("DELETE FROM oncely_records WHERE scope = $1 AND key = $2 AND token = $3")
                .bind(scope.as_str().as_bytes())
                .bind(key.as_str().as_bytes())
                .bind(token as i64)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(done.rows_affected() == 1)
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

    /// `clock_timestamp()`: the time the server reads it, not its transaction's start.
    async fn server_time(&self) -> Result<Option<Timestamp>> {
        let millis: i64 =
            sqlx::query_scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8")
                .fetch_one(&self.pool)
                .await
                .map_err(|e| self.err(e))?;
        Ok(Some(Timestamp::from_millis(millis)))
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
        let inserted = sqlx::query(INSERT_VERSION)
            .bind(scope.as_str().as_bytes())
            .bind(entity.as_str().as_bytes())
            .bind(version as i64)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        let check = if inserted.rows_affected() == 1 {
            decide_version(None, version)
        } else {
            let stored: i64 = sqlx::query_scalar(LOCK_VERSION)
                .bind(scope.as_str().as_bytes())
                .bind(entity.as_str().as_bytes())
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
            let check = decide_version(Some(stored as u64), version);
            if let VersionCheck::Applied { .. } = check {
                sqlx::query(SET_VERSION)
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
