//! Time partitions: an opt-in layout in which purge drops whole partitions.
//!
//! In the default layout one table holds every record and purge deletes expired rows in bounded
//! batches. At very large volumes those deletes bloat the table and keep vacuum busy. With
//! `?oncely_partitions=daily` (or `hourly`) in the URL, `oncely_records` is instead partitioned by
//! RANGE on `expires_at`, one partition per UTC day (or hour), and purge drops a partition as a
//! whole once every record in it has expired.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> oncely_core::Result<()> {
//! use oncely_postgres::PostgresStore;
//!
//! let store =
//!     PostgresStore::connect("postgres://postgres@127.0.0.1/test?oncely_partitions=daily").await?;
//! # Ok(()) }
//! ```
//!
//! # When to use it
//!
//! When purge's row deletes cost you: millions of records expiring a day, a table that bloats
//! between vacuums. Otherwise stay with the default layout: it is simpler and each claim is a
//! little cheaper (see the trade-offs).
//!
//! - `oncely_partitions=daily|hourly|off` (`off` by default). Pick a width so that your retention
//!   spans a handful to a few dozen partitions: `daily` for the default 7-day retention, `hourly`
//!   for retentions of a day or less.
//! - `oncely_partitions_ahead=N`: partitions kept ready ahead of now (default 8 daily, 48
//!   hourly). Cover your retention: a record expiring beyond the last partition lands in the
//!   DEFAULT partition (an insert never fails) and is moved into its own partition when that one
//!   is created, which costs a row move.
//!
//! # How (scope, key) stays unique
//!
//! PostgreSQL only enforces a unique constraint on a partitioned table if it includes the
//! partition key, so the database would accept one (scope, key) in two partitions. The store does
//! not rely on a constraint: every write of a key (claim, takeover, complete, release, extend)
//! first takes `pg_advisory_xact_lock` on a 64-bit hash of (scope, key), for a batch in ascending
//! hash order (so batches cannot deadlock; a hash collision only makes two keys wait for each
//! other), and only then reads the key across all partitions (`SELECT ... FOR UPDATE`, which also
//! keeps purge off the row) and inserts or rewrites it. Complete, release and extend (a lease
//! renewal) stay guarded by the holder's token (fencing), as in the default layout.
//!
//! Completing a record, renewing its lease or taking it over moves its `expires_at`, and
//! PostgreSQL moves the row into the partition of its new `expires_at`. So a partition whose
//! upper bound is at or before purge's cut-off holds only records that expired before it,
//! whatever happened to them.
//!
//! # Purge
//!
//! Each purge call first creates the partitions ahead of its cut-off and ahead of now by the system
//! clock (one instance at a time, under an advisory lock; claims pause briefly while a partition
//! is created, once per partition width), then drops, oldest first, every partition whose upper bound is at or before
//! the cut-off: under a short `lock_timeout` it locks `oncely_records` (a brief pause for claims,
//! once per partition), counts the partition's rows and drops it. The rest of the limit goes to
//! the usual bounded row delete (`FOR UPDATE SKIP LOCKED`), which covers the one partition the
//! cut-off falls in, and the DEFAULT partition.
//!
//! Purge still removes **at most `limit` records**, as every store does: a partition is dropped
//! only if its rows fit in what is left of the limit; otherwise its rows are deleted one batch at
//! a time like any others. A drop costs the same whatever the partition holds, so give purge a
//! limit above the records of one partition (`oncely purge --batch 100000000`) to get drops. And
//! run it shortly after each partition boundary: the records of the current partition that
//! expired since its start are deleted row by row.
//!
//! Measured on this project's test machine (2 cores, shared with other builds; PostgreSQL 15;
//! `cargo run -p oncely-postgres --example purge_partitions`), 1,000,000 records expired in
//! one day: the default layout purged them in batches of 10,000 in 33 s; the daily layout, in
//! one purge call, in 2.1 s (a drop), while claims running beside it waited at most 159 ms (the
//! table lock held for the count and the drop). Purged in batches of 10,000, too small to drop
//! the partition, the daily layout took 45 s: row deletes cost more here than in one table.
//!
//! # Trade-offs
//!
//! - A claim reads the key in every partition (one index probe each), and locks every partition
//!   it touches: keep the number of partitions to dozens, not thousands.
//! - A claim takes one advisory lock per key; very large batches on many connections need room
//!   in PostgreSQL's lock table (`max_locks_per_transaction`).
//! - Completing a record moves its row to another partition (a delete and an insert); the dead
//!   row goes away when its partition is dropped.
//! - The transactional inbox ([`crate::inbox`]) relies on a unique index on (scope, key), so it is
//!   not available in this layout: its claims fail with a backend error.
//!
//! # Choosing the layout is final
//!
//! The layout is fixed when the schema is created (by the first instance that migrates it).
//! Opening it with the other layout, or another granularity, is an [`Error::InvalidUrl`] saying
//! what the schema holds. To switch, create the new layout in a fresh schema or database and let
//! the old one age out (or copy the live records across).

use std::collections::{HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use oncely_core::batch::{ClaimTransaction, Taken, claim_in_transaction};
use oncely_core::url::{redact_password, take_param};
use oncely_core::{
    Claim, ClaimOutcome, ClaimRequest, Error, Key, Record, Result, Scope, Timestamp,
};
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};

use crate::{PostgresStore, guarded};

/// The schema migrations of the partitioned layout, in order: `(version, sql)`. Version numbers
/// are shared with [`crate::MIGRATIONS`]: version N of either layout brings a schema to the same
/// point.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        include_str!("../migrations/0001_records_partitioned.sql"),
    ),
    // The outbox is the same table in both layouts.
    (2, include_str!("../migrations/0002_outbox.sql")),
    // So are the consumer offsets.
    (3, include_str!("../migrations/0003_offsets.sql")),
];

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

/// How wide one partition is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// One partition per UTC hour.
    Hourly,
    /// One partition per UTC day.
    Daily,
}

impl Granularity {
    /// `hourly` or `daily`, as in the URL and in `oncely_partitioning`.
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Hourly => "hourly",
            Granularity::Daily => "daily",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "hourly" => Some(Granularity::Hourly),
            "daily" => Some(Granularity::Daily),
            _ => None,
        }
    }

    /// The width of one partition, in ms.
    fn millis(self) -> i64 {
        match self {
            Granularity::Hourly => 3_600_000,
            Granularity::Daily => 86_400_000,
        }
    }
}

/// The partitioned layout's settings: `?oncely_partitions=...&oncely_partitions_ahead=N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Partitioning {
    /// How wide one partition is.
    pub granularity: Granularity,
    /// How many partitions are kept ready after the current one.
    pub ahead: u32,
}

impl Partitioning {
    /// `granularity` with its default number of partitions ahead (8 daily, 48 hourly).
    pub fn new(granularity: Granularity) -> Self {
        let ahead = match granularity {
            Granularity::Hourly => 48,
            Granularity::Daily => 8,
        };
        Partitioning { granularity, ahead }
    }

    /// Takes `oncely_partitions` and `oncely_partitions_ahead` out of `url`: answers the rest of
    /// the URL and the layout asked for (`None`: the default, unpartitioned).
    pub fn from_url(url: &str) -> Result<(String, Option<Partitioning>)> {
        let (url, mode) = take_param(url, "oncely_partitions");
        let (url, ahead) = take_param(&url, "oncely_partitions_ahead");
        let invalid = |reason: String| Error::InvalidUrl {
            url: redact_password(&url),
            reason,
        };
        let granularity = match mode.as_deref() {
            None | Some("off") => None,
            Some(text) => Some(Granularity::parse(text).ok_or_else(|| {
                invalid(format!(
                    "oncely_partitions must be daily, hourly or off, not `{text}`"
                ))
            })?),
        };
        let partitioning = match (granularity, ahead) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(invalid(
                    "oncely_partitions_ahead needs oncely_partitions=daily or hourly".into(),
                ));
            }
            (Some(g), None) => Some(Partitioning::new(g)),
            (Some(g), Some(n)) => {
                let ahead = n
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        invalid(format!(
                            "oncely_partitions_ahead must be a number of partitions from 1 to 1000, not `{n}`"
                        ))
                    })?;
                Some(Partitioning {
                    granularity: g,
                    ahead,
                })
            }
        };
        Ok((url, partitioning))
    }

    /// Where the partition holding `at` starts, in ms.
    fn start_of(&self, at: i64) -> i64 {
        let width = self.granularity.millis();
        at.div_euclid(width) * width
    }

    /// The name of the partition starting at `start`: `oncely_records_YYYYMMDD[_HH]`, UTC.
    fn name(&self, start: i64) -> String {
        let days = start.div_euclid(86_400_000);
        let (y, m, d) = civil_from_days(days);
        match self.granularity {
            Granularity::Daily => format!("oncely_records_{y:04}{m:02}{d:02}"),
            Granularity::Hourly => {
                let hour = start.rem_euclid(86_400_000) / 3_600_000;
                format!("oncely_records_{y:04}{m:02}{d:02}_{hour:02}")
            }
        }
    }
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (H. Hinnant).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The advisory lock of one (scope, key): FNV-1a over the scope's length, the scope and the key.
/// Stable across builds and instances, as it must be; a collision only makes two keys wait.
fn key_lock(scope: &Scope, key: &Key) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let scope = scope.as_str().as_bytes();
    let len = (scope.len() as u32).to_le_bytes();
    for byte in len.iter().chain(scope).chain(key.as_str().as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

/// Distinct lock ids of `keys`, ascending: the order every transaction takes them in.
fn lock_ids<'a>(keys: impl Iterator<Item = (&'a Scope, &'a Key)>) -> Vec<i64> {
    let mut ids: Vec<i64> = keys.map(|(s, k)| key_lock(s, k)).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

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

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

const LOCK_KEYS: &str = "SELECT pg_advisory_xact_lock(h) FROM unnest($1::int8[]) AS u(h)";
const LOCK_MANY: &str = "SELECT scope, key, completed, token, attempt, fingerprint, created_at, \
     expires_at, outcome FROM oncely_records \
     WHERE (scope, key) IN (SELECT * FROM unnest($1::bytea[], $2::bytea[])) \
     ORDER BY scope, key FOR UPDATE";
const PARTITIONS: &str = "SELECT c.relname::text AS name, \
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
    async fn maintain(&self, froms: &[i64], wait: bool) -> Result<()> {
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
    async fn drop_partition(&self, name: &str, limit: usize) -> Result<Option<usize>> {
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
    async fn delete_expired(&self, expired_before: Timestamp, limit: usize) -> Result<usize> {
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

/// A claim batch's transaction in the partitioned layout: advisory locks instead of a unique
/// index.
struct ClaimTx<'a> {
    store: &'a PostgresStore,
    tx: Transaction<'static, Postgres>,
}

fn bytes(records: &[&Record], column: impl Fn(&Record) -> &str) -> Vec<Vec<u8>> {
    records
        .iter()
        .map(|r| column(r).as_bytes().to_vec())
        .collect()
}

#[oncely_core::async_trait]
impl ClaimTransaction for ClaimTx<'_> {
    async fn take(&mut self, fresh: &[Record]) -> Result<Taken> {
        let store = self.store;
        let ids = lock_ids(fresh.iter().map(|r| (&r.scope, &r.key)));
        sqlx::query(LOCK_KEYS)
            .bind(ids)
            .execute(&mut *self.tx)
            .await
            .map_err(|e| store.err(e))?;
        // Every writer of these keys now waits for us; this statement's snapshot is taken after
        // the locks were granted, so it sees their last committed rows, in whichever partition.
        let all: Vec<&Record> = fresh.iter().collect();
        let rows = sqlx::query(LOCK_MANY)
            .bind(bytes(&all, |r| r.scope.as_str()))
            .bind(bytes(&all, |r| r.key.as_str()))
            .fetch_all(&mut *self.tx)
            .await
            .map_err(|e| store.err(e))?;
        let mut locked = HashMap::with_capacity(rows.len());
        for row in &rows {
            let record = store.record(row)?;
            let id = (record.scope.clone(), record.key.clone());
            if locked.insert(id, record).is_some() {
                return Err(
                    store.corrupt("a (scope, key) is stored twice across partitions".to_owned())
                );
            }
        }
        let absent: Vec<&Record> = fresh
            .iter()
            .filter(|r| !locked.contains_key(&(r.scope.clone(), r.key.clone())))
            .collect();
        if !absent.is_empty() {
            sqlx::query(
                "INSERT INTO oncely_records (scope, key, completed, token, attempt, fingerprint, created_at, expires_at) \
                 SELECT s, k, false, t, 1, f, c, e \
                 FROM unnest($1::bytea[], $2::bytea[], $3::int8[], $4::bytea[], $5::int8[], $6::int8[]) AS u(s, k, t, f, c, e)",
            )
            .bind(bytes(&absent, |r| r.scope.as_str()))
            .bind(bytes(&absent, |r| r.key.as_str()))
            .bind(absent.iter().map(|r| r.token as i64).collect::<Vec<_>>())
            .bind(absent.iter().map(|r| r.fingerprint.map(|f| f.as_bytes().to_vec())).collect::<Vec<_>>())
            .bind(absent.iter().map(|r| r.created_at.as_millis()).collect::<Vec<_>>())
            .bind(absent.iter().map(|r| r.expires_at.as_millis()).collect::<Vec<_>>())
            .execute(&mut *self.tx)
            .await
            .map_err(|e| store.err(e))?;
        }
        Ok(Taken {
            inserted: absent
                .iter()
                .map(|r| (r.scope.clone(), r.key.clone()))
                .collect(),
            locked,
        })
    }

    async fn rewrite(&mut self, records: &[Record]) -> Result<()> {
        let all: Vec<&Record> = records.iter().collect();
        // A new expires_at moves the row to its partition (PostgreSQL 11+).
        let done = sqlx::query(
            "UPDATE oncely_records AS r SET completed = false, token = u.t, attempt = u.a, fingerprint = u.f, \
             created_at = u.c, expires_at = u.e, outcome = NULL \
             FROM unnest($1::bytea[], $2::bytea[], $3::int8[], $4::int4[], $5::bytea[], $6::int8[], $7::int8[]) \
             AS u(s, k, t, a, f, c, e) WHERE r.scope = u.s AND r.key = u.k",
        )
        .bind(bytes(&all, |r| r.scope.as_str()))
        .bind(bytes(&all, |r| r.key.as_str()))
        .bind(records.iter().map(|r| r.token as i64).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.attempt as i32).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.fingerprint.map(|f| f.as_bytes().to_vec())).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.created_at.as_millis()).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.expires_at.as_millis()).collect::<Vec<_>>())
        .execute(&mut *self.tx)
        .await
        .map_err(|e| self.store.err(e))?;
        if done.rows_affected() != records.len() as u64 {
            return Err(self.store.corrupt(format!(
                "rewrote {} of {} locked rows",
                done.rows_affected(),
                records.len()
            )));
        }
        Ok(())
    }
}

/// The [`Store`](oncely_core::Store) operations whose statements differ in the partitioned
/// layout; `get` and `apply_if_newer` are the default layout's.
impl PostgresStore {
    pub(crate) async fn partitioned_claim_many(
        &self,
        requests: &[ClaimRequest],
        now: Timestamp,
    ) -> Result<Vec<ClaimOutcome>> {
        let mut tx = ClaimTx {
            store: self,
            tx: self.begin().await?,
        };
        let outcomes = claim_in_transaction(&mut tx, &self.url, requests, now).await?;
        tx.tx.commit().await.map_err(|e| self.err(e))?;
        Ok(outcomes)
    }

    pub(crate) async fn lock_key(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        claim: &Claim,
    ) -> Result<()> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(key_lock(&claim.scope, &claim.key))
            .execute(&mut **tx)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub(crate) async fn partitioned_complete(
        &self,
        claim: &Claim,
        outcome: &[u8],
        expires_at: Timestamp,
    ) -> Result<()> {
        let update = guarded(
            "UPDATE oncely_records SET completed = true, outcome = $4, expires_at = $5",
            claim,
        )
        .bind(outcome)
        .bind(expires_at.as_millis());
        self.write_guarded(claim, update).await
    }

    pub(crate) async fn partitioned_purge(
        &self,
        expired_before: Timestamp,
        limit: usize,
    ) -> Result<usize> {
        if limit == 0 {
            return Ok(0);
        }
        // Ahead of the cut-off, and ahead of now by the system clock: a purge with a cut-off far
        // in the past must still keep partitions ready for the records being written now.
        self.maintain(&[expired_before.as_millis(), now_millis()], false)
            .await?;
        let candidates = sqlx::query(AssertSqlSafe(format!(
            "SELECT name, hi FROM ({PARTITIONS}) p WHERE hi IS NOT NULL AND hi <= $1 ORDER BY hi"
        )))
        .bind(expired_before.as_millis())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let mut purged = 0;
        for row in &candidates {
            if purged >= limit {
                break;
            }
            let name: String = row.try_get("name").map_err(|e| self.err(e))?;
            if let Some(rows) = self.drop_partition(&name, limit - purged).await? {
                purged += rows;
            }
        }
        if purged < limit {
            purged += self.delete_expired(expired_before, limit - purged).await?;
        }
        Ok(purged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_named_by_their_utc_start() {
        let daily = Partitioning::new(Granularity::Daily);
        // 2026-01-01T13:45:00Z
        let at = 1_767_275_100_000;
        assert_eq!(daily.start_of(at), 1_767_225_600_000);
        assert_eq!(daily.name(daily.start_of(at)), "oncely_records_20260101");
        let hourly = Partitioning::new(Granularity::Hourly);
        assert_eq!(
            hourly.name(hourly.start_of(at)),
            "oncely_records_20260101_13"
        );
        assert_eq!(daily.name(0), "oncely_records_19700101");
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn the_url_chooses_the_layout() {
        let (url, p) =
            Partitioning::from_url("postgres://h/db?sslmode=disable&oncely_partitions=hourly")
                .unwrap();
        assert_eq!(url, "postgres://h/db?sslmode=disable");
        assert_eq!(p, Some(Partitioning::new(Granularity::Hourly)));
        let (_, p) = Partitioning::from_url(
            "postgres://h/db?oncely_partitions=daily&oncely_partitions_ahead=3",
        )
        .unwrap();
        assert_eq!(
            p,
            Some(Partitioning {
                granularity: Granularity::Daily,
                ahead: 3
            })
        );
        assert_eq!(Partitioning::from_url("postgres://h/db").unwrap().1, None);
        assert_eq!(
            Partitioning::from_url("postgres://h/db?oncely_partitions=off")
                .unwrap()
                .1,
            None
        );
        let err = Partitioning::from_url("postgres://h/db?oncely_partitions=weekly").unwrap_err();
        assert!(err.to_string().contains("daily, hourly or off"), "{err}");
        assert!(Partitioning::from_url("postgres://h/db?oncely_partitions_ahead=3").is_err());
        assert!(
            Partitioning::from_url(
                "postgres://h/db?oncely_partitions=daily&oncely_partitions_ahead=0"
            )
            .is_err()
        );
    }

    #[test]
    fn key_locks_are_stable_and_keep_scope_and_key_apart() {
        let lock = |s: &str, k: &str| key_lock(&Scope::new(s).unwrap(), &Key::new(k).unwrap());
        assert_eq!(lock("a", "bc"), lock("a", "bc"));
        assert_ne!(lock("a", "bc"), lock("ab", "c"));
        let (s, x, y) = (
            Scope::new("s").unwrap(),
            Key::new("x").unwrap(),
            Key::new("y").unwrap(),
        );
        let ids = lock_ids([(&s, &x), (&s, &y), (&s, &x)].into_iter());
        assert_eq!(ids.len(), 2);
        assert!(ids[0] < ids[1]);
    }
}
