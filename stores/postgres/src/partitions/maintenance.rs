//! Migrations and the layout check of the partitioned layout, and its DDL: partitions created
//! ahead of time, dropped whole by purge.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use oncely_core::{Error, Result, Timestamp};
use sqlx::{AssertSqlSafe, Postgres, Transaction};

use super::{Granularity, MIGRATIONS, Partitioning};
use crate::PostgresStore;

/// The advisory lock every migration takes (see [`PostgresStore::migrate`]).
const MIGRATE_LOCK: i64 = 7216540419;
/// The advisory lock partition maintenance takes, so instances create partitions one at a time:
/// this base plus the OID of the `oncely_records` they share (instances on another schema of the
/// same database do not wait for them).
const MAINTAIN_LOCK: i64 = 0x6f6e_6365_0000_0000;
/// How long a purge or maintenance run waits for its table lock before trying again later.
const LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '500ms'";
/// How often a row-delete batch is retried when it races a row moving between partitions.
const DELETE_ATTEMPTS: usize = 5;

/// A quoted identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

/// Lock not available (`lock_timeout`), or the table went away meanwhile: try again next run.
fn is_busy(e: &sqlx::Error) -> bool {
    matches!(sqlstate(e).as_deref(), Some("55P03" | "40P01" | "42P01"))
}

pub(super) fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(super) const PARTITIONS: &str = "SELECT c.relname::text AS name, \
     substring(pg_get_expr(c.relpartbound, c.oid) from 'TO \\(''?(-?[0-9]+)''?\\)')::int8 AS hi \
     FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
     WHERE i.inhparent = 'oncely_records'::regclass";

impl PostgresStore {
    /// The partitioned layout this store was opened with, if any.
    pub fn partitioning(&self) -> Option<Partitioning> {
        self.partitioned
    }

    /// Creates the partitions from the one holding `from` to `ahead` after it, waiting for any
    /// other instance doing the same. The store does this on connect (from the system clock) and
    /// on every purge (from its cut-off); call it yourself to prepare partitions for a clock of
    /// your own. Does nothing in the default layout.
    pub async fn create_partitions(&self, from: Timestamp) -> Result<()> {
        self.maintain(&[from.as_millis()], true).await
    }

    /// Creates the missing partitions from each of `froms` to `ahead` after it; `wait: false`
    /// skips the run if another instance is at it or the table lock is not granted quickly.
    pub(super) async fn maintain(&self, froms: &[i64], wait: bool) -> Result<()> {
        let Some(layout) = self.partitioned else {
            return Ok(());
        };
        let width = layout.granularity.millis();
        let mut wanted: Vec<i64> = froms
            .iter()
            .flat_map(|from| {
                let first = layout.start_of(*from);
                (0..=i64::from(layout.ahead)).map(move |i| first.saturating_add(i * width))
            })
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut tx = self.begin().await?;
        let outcome = async {
            if wait {
                sqlx::query(
                    "SELECT pg_advisory_xact_lock($1 + 'oncely_records'::regclass::oid::int8)",
                )
                .bind(MAINTAIN_LOCK)
                .execute(&mut *tx)
                .await?;
                sqlx::query("SET LOCAL lock_timeout = '10s'")
                    .execute(&mut *tx)
                    .await?;
            } else {
                sqlx::query(LOCK_TIMEOUT).execute(&mut *tx).await?;
                let got: bool = sqlx::query_scalar(
                    "SELECT pg_try_advisory_xact_lock($1 + 'oncely_records'::regclass::oid::int8)",
                )
                .bind(MAINTAIN_LOCK)
                .fetch_one(&mut *tx)
                .await?;
                if !got {
                    return Ok(());
                }
            }
            let existing: HashSet<String> = sqlx::query_scalar(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 WHERE i.inhparent = 'oncely_records'::regclass",
            )
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
            let missing: Vec<i64> = wanted
                .into_iter()
                .filter(|start| !existing.contains(&layout.name(*start)))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            // Claims pause while partitions are created (once per partition width): nobody can
            // then insert into the DEFAULT partition a row that belongs to a new partition.
            sqlx::query("LOCK TABLE oncely_records IN ACCESS EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
            for start in missing {
                let (name, end) = (ident(&layout.name(start)), start.saturating_add(width));
                let strays: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM oncely_records_default \
                     WHERE expires_at >= $1 AND expires_at < $2)",
                )
                .bind(start)
                .bind(end)
                .fetch_one(&mut *tx)
                .await?;
                if strays {
                    // Records that expire in this range wait in DEFAULT: move them in, then
                    // attach (PostgreSQL refuses a partition whose rows DEFAULT still holds).
                    let ddl = format!(
                        "CREATE TABLE {name} (LIKE oncely_records INCLUDING DEFAULTS); \
                         WITH moved AS (DELETE FROM oncely_records_default \
                         WHERE expires_at >= {start} AND expires_at < {end} RETURNING *) \
                         INSERT INTO {name} SELECT * FROM moved; \
                         ALTER TABLE oncely_records ATTACH PARTITION {name} \
                         FOR VALUES FROM ({start}) TO ({end});"
                    );
                    sqlx::raw_sql(AssertSqlSafe(ddl)).execute(&mut *tx).await?;
                } else {
                    let ddl = format!(
                        "CREATE TABLE {name} PARTITION OF oncely_records \
                         FOR VALUES FROM ({start}) TO ({end})"
                    );
                    sqlx::raw_sql(AssertSqlSafe(ddl)).execute(&mut *tx).await?;
                }
            }
            Ok::<(), sqlx::Error>(())
        }
        .await;
        match outcome {
            Ok(()) => tx.commit().await.map_err(|e| self.err(e)),
            Err(e) if !wait && is_busy(&e) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Drops partition `name` if it holds at most `limit` rows; answers how many it held, or
    /// `None` if it was left (too big, or its lock was not granted quickly).
    pub(super) async fn drop_partition(&self, name: &str, limit: usize) -> Result<Option<usize>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let count = format!("SELECT count(*) FROM {}", ident(name));
        // A first count without any lock, so a partition too big is never worth a pause.
        match sqlx::query_scalar::<_, i64>(AssertSqlSafe(count.clone()))
            .fetch_one(&self.pool)
            .await
        {
            Ok(rows) if rows > limit => return Ok(None),
            Ok(_) => {}
            Err(e) if is_busy(&e) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        }
        let mut tx = self.begin().await?;
        let outcome = async {
            sqlx::query(LOCK_TIMEOUT).execute(&mut *tx).await?;
            // Parent first, as every claim locks it: no row can enter or leave the partition
            // between the count and the drop.
            sqlx::query("LOCK TABLE oncely_records IN ACCESS EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
            let rows: i64 = sqlx::query_scalar(AssertSqlSafe(count))
                .fetch_one(&mut *tx)
                .await?;
            if rows > limit {
                return Ok(None);
            }
            sqlx::raw_sql(AssertSqlSafe(format!("DROP TABLE {}", ident(name))))
                .execute(&mut *tx)
                .await?;
            Ok::<_, sqlx::Error>(Some(rows as usize))
        }
        .await;
        match outcome {
            Ok(Some(rows)) => {
                tx.commit().await.map_err(|e| self.err(e))?;
                Ok(Some(rows))
            }
            Ok(None) => Ok(None),
            Err(e) if is_busy(&e) => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Deletes at most `limit` records that expired before `expired_before`, oldest first,
    /// skipping rows a claim holds.
    pub(super) async fn delete_expired(
        &self,
        expired_before: Timestamp,
        limit: usize,
    ) -> Result<usize> {
        let mut attempt = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM oncely_records WHERE (scope, key, expires_at) IN \
                 (SELECT scope, key, expires_at FROM oncely_records WHERE expires_at < $1 \
                  ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
            )
            .bind(expired_before.as_millis())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await;
            match done {
                Ok(done) => return Ok(done.rows_affected() as usize),
                // A row completed meanwhile moved to another partition (40001): it is live now,
                // so the batch is simply chosen again.
                Err(e)
                    if attempt + 1 < DELETE_ATTEMPTS
                        && matches!(sqlstate(&e).as_deref(), Some("40001" | "40P01")) =>
                {
                    attempt += 1;
                }
                Err(e) => return Err(self.err(e)),
            }
        }
    }
}

/// Applies the partitioned layout's migrations this database has not seen yet, one instance at
/// a time, and records the granularity. Leaves a schema of the other layout alone: opening it
/// then fails in [`check_layout`] with what to do.
pub(crate) async fn migrate(store: &PostgresStore, layout: Partitioning) -> Result<()> {
    let mut tx = store.begin().await?;
    let outcome = async {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATE_LOCK)
            .execute(&mut *tx)
            .await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS oncely_schema_version (version integer NOT NULL)")
            .execute(&mut *tx)
            .await?;
        let kind: Option<String> = sqlx::query_scalar(
            "SELECT relkind::text FROM pg_class WHERE oid = to_regclass('oncely_records')",
        )
        .fetch_optional(&mut *tx)
        .await?;
        if kind.as_deref().is_some_and(|k| k != "p") {
            return Ok(());
        }
        let current: Option<i32> =
            sqlx::query_scalar("SELECT max(version) FROM oncely_schema_version")
                .fetch_one(&mut *tx)
                .await?;
        let current = current.unwrap_or(0);
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            sqlx::raw_sql(*sql).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO oncely_schema_version (version) VALUES ($1)")
                .bind(version)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO oncely_partitioning (granularity) SELECT $1 \
             WHERE NOT EXISTS (SELECT 1 FROM oncely_partitioning)",
        )
        .bind(layout.granularity.as_str())
        .execute(&mut *tx)
        .await?;
        Ok::<(), sqlx::Error>(())
    }
    .await;
    outcome.map_err(|e| store.err(e))?;
    tx.commit().await.map_err(|e| store.err(e))
}

/// Whether `oncely_records` is partitioned, in the transaction of a migration.
pub(crate) async fn is_partitioned(tx: &mut Transaction<'static, Postgres>) -> sqlx::Result<bool> {
    let kind: Option<String> = sqlx::query_scalar(
        "SELECT relkind::text FROM pg_class WHERE oid = to_regclass('oncely_records')",
    )
    .fetch_optional(&mut **tx)
    .await?;
    Ok(kind.as_deref() == Some("p"))
}

/// Checks that the schema's layout is the one the URL asked for, then, for the partitioned
/// layout, creates the partitions ahead of now (by the system clock). A schema not created yet
/// (`oncely_migrate=false` before you ran the SQL) is left for later.
pub(crate) async fn check_layout(store: &PostgresStore) -> Result<()> {
    let kind: Option<String> = sqlx::query_scalar(
        "SELECT relkind::text FROM pg_class WHERE oid = to_regclass('oncely_records')",
    )
    .fetch_optional(&store.pool)
    .await
    .map_err(|e| store.err(e))?;
    let Some(kind) = kind else {
        return Ok(());
    };
    let stored = if kind == "p" {
        let granularity: Option<String> = sqlx::query_scalar(
            "SELECT granularity FROM oncely_partitioning WHERE to_regclass('oncely_partitioning') IS NOT NULL LIMIT 1",
        )
        .fetch_optional(&store.pool)
        .await
        .map_err(|e| store.err(e))?;
        Some(granularity.as_deref().and_then(Granularity::parse))
    } else {
        None
    };
    let mismatch = |reason: String| Error::InvalidUrl {
        url: store.url.clone(),
        reason: format!(
            "{reason}; the layout is fixed when the schema is created (see oncely_postgres::partitions)"
        ),
    };
    match (store.partitioned, stored) {
        (None, None) => Ok(()),
        (None, Some(g)) => Err(mismatch(format!(
            "oncely_records in this schema is partitioned ({}): add oncely_partitions={} to the URL",
            g.map_or("granularity not recorded", Granularity::as_str),
            g.map_or("daily|hourly", Granularity::as_str)
        ))),
        (Some(want), None) => Err(mismatch(format!(
            "oncely_partitions={} was asked for, but oncely_records in this schema is not \
             partitioned: remove oncely_partitions from the URL, or use a fresh schema",
            want.granularity.as_str()
        ))),
        (Some(want), Some(None)) => Err(mismatch(format!(
            "oncely_records is partitioned but oncely_partitioning records no granularity: \
             INSERT INTO oncely_partitioning (granularity) VALUES ('{}')",
            want.granularity.as_str()
        ))),
        (Some(want), Some(Some(g))) if g != want.granularity => Err(mismatch(format!(
            "oncely_partitions={} was asked for, but this schema is partitioned {}: use \
             oncely_partitions={}",
            want.granularity.as_str(),
            g.as_str(),
            g.as_str()
        ))),
        (Some(_), Some(Some(_))) => store.maintain(&[now_millis()], true).await,
    }
}
