//! The store: connecting, migrating, and the [`Store`] operations.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use oncely_core::batch::{
    RecordId, claim_in_transaction, claimed_any, merge_settled, settle_by_read,
};
use oncely_core::group::DEFAULT_MAX_BATCH;
use oncely_core::lifecycle::{check_holder, claim_lost, complete_record, decide_version};
use oncely_core::url::{redact_password, unreachable_hint};
use oncely_core::{
    Claim, ClaimOutcome, ClaimRequest, Completion, Error, GroupCommit, Key, Record, Result, Scope,
    Store, StoreStats, Timestamp, VersionCheck, async_trait,
};
use sqlx::mysql::{
    MySql, MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions, MySqlRow,
};
use sqlx::{AssertSqlSafe, Connection, Row, Transaction};

use crate::MIGRATIONS;
use crate::claim_tx::ClaimTx;
use crate::driver::{is, is_unavailable, record_from_row};
use crate::options::{self, GROUP_IN_FLIGHT};
use crate::sql::{COLUMNS, bind_claim, groups, padded, rows_of};

/// The MySQL/MariaDB store. See the crate docs.
#[derive(Clone)]
pub struct MySqlStore {
    pub(crate) pool: MySqlPool,
    /// The URL without its password: names the store in errors.
    pub(crate) url: String,
    group: GroupCommit,
}

impl std::fmt::Debug for MySqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MySqlStore")
            .field("url", &self.url)
            .finish()
    }
}

/// Connections in the store's pool.
const POOL_SIZE: u32 = 8;

/// ER_LOCK_DEADLOCK: InnoDB chose this transaction as a deadlock victim and rolled it back.
const DEADLOCK: u16 = 1213;
/// ER_DUP_ENTRY.
pub(crate) const DUPLICATE: u16 = 1062;
/// How often a transaction rolled back by InnoDB (deadlock) is run again.
const RETRIES: usize = 8;

impl MySqlStore {
    /// Connects with a `mysql://` (or `mariadb://`) URL and applies the migrations unless the
    /// URL carries `oncely_migrate=false`. Other parameters are the driver's (`ssl-mode`, ...).
    pub async fn connect(url: &str) -> Result<Self> {
        let options = options::parse(url)?;
        let mut store = Self::connect_with(options.connect, &options.url, options.migrate).await?;
        store.group = GroupCommit::new(&store.url, options.group_batches, DEFAULT_MAX_BATCH);
        Ok(store)
    }

    /// Connects with ready-made options.
    pub async fn connect_with(
        options: MySqlConnectOptions,
        url: &str,
        migrate: bool,
    ) -> Result<Self> {
        let shown = redact_password(url);
        let unavailable = |e: sqlx::Error| Error::Unavailable {
            store: shown.clone(),
            source: format!("{e} {}", unreachable_hint(&e.to_string(), "MySQL/MariaDB")).into(),
        };
        // One direct connection first: a refused connection, a bad password or a missing
        // database is reported at once and as itself, not as a pool timing out.
        MySqlConnection::connect_with(&options)
            .await
            .map_err(unavailable)?
            .close()
            .await
            .map_err(unavailable)?;
        let pool = MySqlPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .execute(conn)
                        .await
                        .map(drop)
                })
            })
            .connect_lazy_with(options);
        let group = GroupCommit::new(&shown, GROUP_IN_FLIGHT, DEFAULT_MAX_BATCH);
        let store = MySqlStore {
            pool,
            url: shown,
            group,
        };
        if migrate {
            store.migrate().await?;
        }
        Ok(store)
    }

    /// Applies the migrations this database has not seen yet, one instance at a time.
    ///
    /// MySQL commits each DDL statement on its own, so a migration cut off halfway is not rolled
    /// back; every statement is written to be run again safely (`IF NOT EXISTS`).
    pub async fn migrate(&self) -> Result<()> {
        let mut conn = self.pool.acquire().await.map_err(|e| self.err(e))?;
        // A named lock held by this connection: other instances wait here, up to a minute.
        let locked: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK('oncely_migrate', 60)")
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| self.err(e))?;
        if locked != Some(1) {
            return Err(self.backend("another instance held the migration lock for 60 s".into()));
        }
        let result = self.apply_migrations(&mut conn).await;
        let released = sqlx::query("SELECT RELEASE_LOCK('oncely_migrate')")
            .execute(&mut *conn)
            .await
            .map_err(|e| self.err(e));
        result.and(released.map(drop))
    }

    async fn apply_migrations(&self, conn: &mut MySqlConnection) -> Result<()> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS oncely_schema_version (version INT NOT NULL) ENGINE = InnoDB",
        )
        .execute(&mut *conn)
        .await
        .map_err(|e| self.err(e))?;
        let current: Option<i32> =
            sqlx::query_scalar("SELECT max(version) FROM oncely_schema_version")
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| self.err(e))?;
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current.unwrap_or(0)) {
            for statement in statements(sql) {
                sqlx::raw_sql(AssertSqlSafe(statement))
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| self.err(e))?;
            }
            sqlx::query("INSERT INTO oncely_schema_version (version) VALUES (?)")
                .bind(version)
                .execute(&mut *conn)
                .await
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    async fn begin(&self) -> Result<Transaction<'static, MySql>> {
        self.pool.begin().await.map_err(|e| self.err(e))
    }

    fn err(&self, e: sqlx::Error) -> Error {
        Error::driver(&self.url, is_unavailable(&e), e.into())
    }

    fn backend(&self, detail: String) -> Error {
        Error::Backend {
            store: self.url.clone(),
            source: detail.into(),
        }
    }

    /// The records of the requests' keys, read without a lock (a consistent read).
    async fn read_many(
        &self,
        conn: &mut MySqlConnection,
        requests: &[ClaimRequest],
    ) -> Result<HashMap<RecordId, Record>> {
        let ids: Vec<(&[u8], &[u8])> = requests
            .iter()
            .map(|r| (r.scope.as_str().as_bytes(), r.key.as_str().as_bytes()))
            .collect();
        let mut ids = padded(&ids);
        ids.sort_unstable();
        let (condition, values) = rows_of(&ids);
        let select = format!("SELECT {COLUMNS} FROM oncely_records WHERE {condition}");
        let mut query = sqlx::query(AssertSqlSafe(select));
        for value in values {
            query = query.bind(value);
        }
        let rows = query.fetch_all(conn).await.map_err(|e| self.err(e))?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in &rows {
            let record = self.record(row)?;
            found.insert((record.scope.clone(), record.key.clone()), record);
        }
        Ok(found)
    }

    fn record(&self, row: &MySqlRow) -> Result<Record> {
        record_from_row(row).map_err(|detail| Error::Corrupt {
            store: self.url.clone(),
            detail,
        })
    }

    async fn select(
        &self,
        conn: &mut MySqlConnection,
        scope: &Scope,
        key: &Key,
    ) -> Result<Option<Record>> {
        let row = sqlx::query(SELECT_ONE)
            .bind(scope.as_str().as_bytes())
            .bind(key.as_str().as_bytes())
            .fetch_optional(conn)
            .await
            .map_err(|e| self.err(e))?;
        row.map(|r| self.record(&r)).transpose()
    }

    /// One transaction completing `items`: lock every row they name (in key order, so
    /// concurrent batches cannot deadlock on each other), decide each item in order by the rule
    /// every store shares, and write the completed rows back in one statement. A driver error
    /// is answered as itself (the caller retries a deadlock); the inner result is the answer.
    async fn complete_batch(
        &self,
        items: &[Completion],
    ) -> std::result::Result<Result<Vec<Result<()>>>, sqlx::Error> {
        let mut ids: Vec<(&Scope, &Key)> = items
            .iter()
            .map(|item| (&item.claim.scope, &item.claim.key))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        ids.sort();
        let mut tx = self.pool.begin().await?;
        let ids: Vec<(&[u8], &[u8])> = padded(&ids)
            .into_iter()
            .map(|(scope, key)| (scope.as_str().as_bytes(), key.as_str().as_bytes()))
            .collect();
        let (condition, values) = rows_of(&ids);
        let select = format!(
            "SELECT {COLUMNS} FROM oncely_records WHERE {condition} \
             ORDER BY scope, `key` FOR UPDATE"
        );
        let mut query = sqlx::query(AssertSqlSafe(select));
        for value in values {
            query = query.bind(value);
        }
        let rows = query.fetch_all(&mut *tx).await?;
        let mut records: HashMap<(Scope, Key), Record> = HashMap::with_capacity(rows.len());
        for row in &rows {
            match self.record(row) {
                Ok(r) => {
                    records.insert((r.scope.clone(), r.key.clone()), r);
                }
                Err(e) => return Ok(Err(e)),
            }
        }
        // In order, as a sequence of single completes: a repeat sees the first one's write.
        let mut written: Vec<(Scope, Key)> = Vec::new();
        let results: Vec<Result<()>> = items
            .iter()
            .map(|item| {
                let id = (item.claim.scope.clone(), item.claim.key.clone());
                let record = records.get_mut(&id);
                match check_holder(record.as_deref(), &item.claim) {
                    Ok(()) => {
                        let record = record.expect("a held claim has its record");
                        complete_record(record, &item.outcome, item.expires_at);
                        written.push(id);
                        Ok(())
                    }
                    Err(reason) => Err(Error::ClaimLost {
                        scope: item.claim.scope.clone(),
                        key: item.claim.key.clone(),
                        reason,
                    }),
                }
            })
            .collect();
        if !written.is_empty() {
            // Every row is locked by this transaction and exists: the insert always updates.
            let written: Vec<&Record> = written.iter().map(|id| &records[id]).collect();
            let written = padded(&written);
            let statement = format!(
                "INSERT INTO oncely_records ({COLUMNS}) VALUES {} ON DUPLICATE KEY UPDATE \
                 completed = VALUES(completed), expires_at = VALUES(expires_at), \
                 outcome = VALUES(outcome)",
                groups("(?, ?, ?, ?, ?, ?, ?, ?, ?)", written.len())
            );
            let mut query = sqlx::query(AssertSqlSafe(statement));
            for record in written {
                query = bind_claim(query, record);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Ok(results))
    }

    /// Runs a guarded single-row write of `claim` (release or extend); if it changed nothing,
    /// answers why the claim is no longer held.
    async fn guarded(
        &self,
        query: sqlx::query::Query<'_, MySql, sqlx::mysql::MySqlArguments>,
        claim: &Claim,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let done = query.execute(&mut *tx).await.map_err(|e| self.err(e))?;
        if done.rows_affected() != 1 {
            let existing = self.select(&mut tx, &claim.scope, &claim.key).await?;
            return Err(claim_lost(&self.url, existing.as_ref(), claim));
        }
        tx.commit().await.map_err(|e| self.err(e))
    }
}

// The version guard's statements, the store's and the inbox's: (scope, entity), or
// (version, scope, entity).
pub(crate) const LOCK_VERSION: &str =
    "SELECT version FROM oncely_versions WHERE scope = ? AND entity = ? FOR UPDATE";
pub(crate) const SET_VERSION: &str =
    "UPDATE oncely_versions SET version = ? WHERE scope = ? AND entity = ?";
pub(crate) const INSERT_VERSION: &str =
    "INSERT INTO oncely_versions (version, scope, entity) VALUES (?, ?, ?)";
const SELECT_ONE: &str = "SELECT scope, `key`, completed, token, attempt, fingerprint, created_at, \
     expires_at, outcome FROM oncely_records WHERE scope = ? AND `key` = ?";
pub(crate) const LOCK_ONE: &str = "SELECT scope, `key`, completed, token, attempt, fingerprint, \
     created_at, expires_at, outcome FROM oncely_records WHERE scope = ? AND `key` = ? FOR UPDATE";

/// The statements of a migration file: split on `;`, comments dropped (ours hold no `;` in
/// strings or comments).
fn statements(sql: &str) -> Vec<String> {
    sql.lines()
        .map(|line| line.split("--").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[async_trait]
impl Store for MySqlStore {
    async fn claim_many(
        &self,
        requests: &[ClaimRequest],
        now: Timestamp,
    ) -> Result<Vec<ClaimOutcome>> {
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
                failed: None,
            };
            match claim_in_transaction(&mut claim_tx, &self.url, &requests, now).await {
                Ok(outcomes) => {
                    if claimed_any(&outcomes) {
                        tx.commit().await.map_err(|e| self.err(e))?;
                    } else {
                        // Row locks only: nothing to make durable.
                        tx.rollback().await.map_err(|e| self.err(e))?;
                    }
                    return Ok(merge_settled(settled, outcomes));
                }
                Err(error) => match claim_tx.failed.take() {
                    Some(e) if is(&e, DEADLOCK) && tries < RETRIES => {
                        // InnoDB rolled the whole transaction back: nothing was claimed.
                        drop(tx);
                        tries += 1;
                    }
                    Some(e) => return Err(self.err(e)),
                    None => return Err(error),
                },
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
        let mut tries = 0;
        loop {
            match self.complete_batch(items).await {
                Err(e) if is(&e, DEADLOCK) && tries < RETRIES => tries += 1,
                Err(e) => return Err(self.err(e)),
                Ok(results) => return results,
            }
        }
    }

    async fn release(&self, claim: &Claim) -> Result<()> {
        let query = sqlx::query(
            "DELETE FROM oncely_records WHERE scope = ? AND `key` = ? AND token = ? AND NOT completed",
        )
        .bind(claim.scope.as_str().as_bytes())
        .bind(claim.key.as_str().as_bytes())
        .bind(claim.token as i64);
        self.guarded(query, claim).await
    }

    async fn forget(&self, scope: &Scope, key: &Key, token: u64) -> Result<bool> {
        let done =
            sqlx::query("DELETE FROM oncely_records WHERE scope = ? AND `key` = ? AND token = ?")
                .bind(scope.as_str().as_bytes())
                .bind(key.as_str().as_bytes())
                .bind(token as i64)
                .execute(&self.pool)
                .await
                .map_err(|e| self.err(e))?;
        Ok(done.rows_affected() == 1)
    }

    /// The connection reports rows matched, not changed (`CLIENT_FOUND_ROWS`, set by sqlx): a
    /// renewal to the deadline already stored still counts as done, not as lost.
    async fn extend(&self, claim: &Claim, lease_until: Timestamp) -> Result<()> {
        let query = sqlx::query(
            "UPDATE oncely_records SET expires_at = ? \
             WHERE scope = ? AND `key` = ? AND token = ? AND NOT completed",
        )
        .bind(lease_until.as_millis())
        .bind(claim.scope.as_str().as_bytes())
        .bind(claim.key.as_str().as_bytes())
        .bind(claim.token as i64);
        self.guarded(query, claim).await
    }

    async fn get(&self, scope: &Scope, key: &Key) -> Result<Option<Record>> {
        let mut conn = self.pool.acquire().await.map_err(|e| self.err(e))?;
        self.select(&mut conn, scope, key).await
    }

    async fn purge(&self, expired_before: Timestamp, limit: usize) -> Result<usize> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut tx = self.begin().await?;
        // Rows a claim holds (taking an expired key over) are skipped, never waited for.
        let rows = sqlx::query(
            "SELECT scope, `key` FROM oncely_records WHERE expires_at < ? \
             ORDER BY expires_at LIMIT ? FOR UPDATE SKIP LOCKED",
        )
        .bind(expired_before.as_millis())
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        if rows.is_empty() {
            // Ended here, not by dropping `tx`: sqlx would roll back only when the connection is
            // next used, and until then InnoDB keeps the lock the scan took on the first record
            // past the range, which the next purge (on another connection) skips.
            tx.commit().await.map_err(|e| self.err(e))?;
            return Ok(0);
        }
        let mut found: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(rows.len());
        for row in &rows {
            let scope: Vec<u8> = row.try_get(0).map_err(|e| self.err(e))?;
            let key: Vec<u8> = row.try_get(1).map_err(|e| self.err(e))?;
            found.push((scope, key));
        }
        found.sort_unstable();
        let ids: Vec<(&[u8], &[u8])> = found.iter().map(|(s, k)| (&s[..], &k[..])).collect();
        let (condition, values) = rows_of(&ids);
        let statement = format!("DELETE FROM oncely_records WHERE {condition}");
        let mut query = sqlx::query(AssertSqlSafe(statement));
        for value in values {
            query = query.bind(value);
        }
        // The rows are locked by this transaction: they are still expired.
        let done = query.execute(&mut *tx).await.map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(done.rows_affected() as usize)
    }

    /// `NOW(3)` in UTC seconds, whatever the session's time zone.
    async fn server_time(&self) -> Result<Option<Timestamp>> {
        let millis: i64 =
            sqlx::query_scalar("SELECT CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)")
                .fetch_one(&self.pool)
                .await
                .map_err(|e| self.err(e))?;
        Ok(Some(Timestamp::from_millis(millis)))
    }

    async fn stats(&self, now: Timestamp) -> Result<StoreStats> {
        let now = now.as_millis();
        let row = sqlx::query(
            "SELECT count(*) AS records, \
             CAST(coalesce(sum(NOT completed AND expires_at >= ?), 0) AS SIGNED) AS in_progress, \
             CAST(coalesce(sum(completed AND expires_at >= ?), 0) AS SIGNED) AS completed, \
             CAST(coalesce(sum(expires_at < ?), 0) AS SIGNED) AS expired, \
             (SELECT CAST(coalesce(data_length + index_length, 0) AS SIGNED) FROM information_schema.tables \
              WHERE table_schema = DATABASE() AND table_name = 'oncely_records') AS bytes \
             FROM oncely_records",
        )
        .bind(now)
        .bind(now)
        .bind(now)
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
            bytes: row
                .try_get::<Option<i64>, _>("bytes")
                .map_err(|e| self.err(e))?
                .map(|b| b as u64),
        })
    }

    async fn apply_if_newer(
        &self,
        scope: &Scope,
        entity: &Key,
        version: u64,
    ) -> Result<VersionCheck> {
        let (scope, entity) = (scope.as_str().as_bytes(), entity.as_str().as_bytes());
        loop {
            let mut tx = self.begin().await?;
            let stored: Option<i64> = sqlx::query_scalar(LOCK_VERSION)
                .bind(scope)
                .bind(entity)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
            let check = decide_version(stored.map(|v| v as u64), version);
            if let VersionCheck::Applied { .. } = check {
                let write = if stored.is_some() {
                    SET_VERSION
                } else {
                    // Two first writers both find no row; the second fails on the key and reads again.
                    INSERT_VERSION
                };
                let done = sqlx::query(write)
                    .bind(version as i64)
                    .bind(scope)
                    .bind(entity)
                    .execute(&mut *tx)
                    .await;
                match done {
                    Ok(_) => {}
                    Err(e) if is(&e, DUPLICATE) || is(&e, DEADLOCK) => continue,
                    Err(e) => return Err(self.err(e)),
                }
            }
            tx.commit().await.map_err(|e| self.err(e))?;
            return Ok(check);
        }
    }
}
