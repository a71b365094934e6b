//! MySQL/MariaDB baselines, each in a fresh database of the same server oncely runs on.

use sqlx::{AssertSqlSafe, Connection, MySqlConnection};

use super::{LIMIT_BATCH, LIMIT_CONNECTIONS, NAIVE_CONNECTIONS, drive};
use crate::{BenchError, Progress, RunResult, Workload, summarize};

/// ER_DUP_ENTRY.
const DUPLICATE: u16 = 1062;
/// ER_LOCK_DEADLOCK: InnoDB rolled the transaction back.
const DEADLOCK: u16 = 1213;

async fn connect(url: &str, n: usize) -> Result<Vec<MySqlConnection>, BenchError> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(MySqlConnection::connect(url).await?);
    }
    Ok(conns)
}

/// `INSERT IGNORE INTO table (column) VALUES (?), (?), ...` of `keys`; answers the rows inserted.
async fn insert_ignore(
    conn: &mut MySqlConnection,
    table: &str,
    keys: &[&str],
) -> Result<u64, sqlx::Error> {
    let sql = format!(
        "INSERT IGNORE INTO {table} VALUES {}",
        vec![
            if table == "processed_events" {
                "(?, 0)"
            } else {
                "(?)"
            };
            keys.len()
        ]
        .join(", ")
    );
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for k in keys {
        query = query.bind(*k);
    }
    Ok(query.execute(conn).await?.rows_affected())
}

async fn preload_rows(
    conn: &mut MySqlConnection,
    table: &str,
    preload: &Workload,
    progress: &dyn Progress,
) -> Result<(), BenchError> {
    if preload.is_empty() {
        return Ok(());
    }
    progress.start("preload", preload.len() as u64);
    for chunk in preload.keys().chunks(LIMIT_BATCH) {
        let keys: Vec<&str> = chunk.iter().map(|k| k.as_str()).collect();
        insert_ignore(conn, table, &keys).await?;
        progress.advance(chunk.len() as u64);
    }
    progress.finish();
    Ok(())
}

/// Data plus index bytes of `table` per row, after `ANALYZE TABLE` refreshed the figures.
pub(crate) async fn bytes_per_key(
    conn: &mut MySqlConnection,
    table: &str,
) -> Result<f64, BenchError> {
    sqlx::raw_sql(AssertSqlSafe(format!("ANALYZE TABLE {table}")))
        .execute(&mut *conn)
        .await?;
    let bytes: i64 = sqlx::query_scalar(
        "SELECT CAST(data_length + index_length AS SIGNED) FROM information_schema.tables \
         WHERE table_schema = DATABASE() AND table_name = ?",
    )
    .bind(table)
    .fetch_one(&mut *conn)
    .await?;
    let rows: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(&mut *conn)
        .await?;
    Ok(bytes as f64 / rows.max(1) as f64)
}

/// The naive pattern's table.
pub(crate) async fn create_processed_events(conn: &mut MySqlConnection) -> Result<(), BenchError> {
    sqlx::raw_sql(
        "CREATE TABLE processed_events (event_id VARBINARY(64) PRIMARY KEY, \
         processed_at BIGINT NOT NULL) ENGINE = InnoDB",
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The naive pattern for one event, in its own transaction: `SELECT EXISTS`, then `INSERT` if
/// absent. Answers whether the key was new (a racing connection's insert of the same key makes
/// this one roll back and answer `false`).
pub(crate) async fn check_then_insert(
    conn: &mut MySqlConnection,
    key: &str,
) -> Result<bool, BenchError> {
    let mut tx = conn.begin().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM processed_events WHERE event_id = ?)")
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
    if exists {
        tx.commit().await?;
        return Ok(false);
    }
    let inserted =
        sqlx::query("INSERT INTO processed_events (event_id, processed_at) VALUES (?, ?)")
            .bind(key)
            .bind(1_i64)
            .execute(&mut *tx)
            .await;
    match inserted {
        Ok(_) => {
            tx.commit().await?;
            Ok(true)
        }
        Err(e) if is(&e, DUPLICATE) => {
            tx.rollback().await?;
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// The pattern most handlers start with: per event, in its own transaction, `SELECT EXISTS`
/// on a processed-events table, then `INSERT` if absent; on [`NAIVE_CONNECTIONS`] connections
/// at once (the server's default isolation). When two connections race on one key, the
/// loser's `INSERT` fails on the primary key; it rolls back and counts the event as a duplicate.
pub async fn naive(
    url: &str,
    workload: &Workload,
    preload: &Workload,
    progress: &dyn Progress,
) -> Result<RunResult, BenchError> {
    let mut conns = connect(url, NAIVE_CONNECTIONS).await?;
    create_processed_events(&mut conns[0]).await?;
    preload_rows(&mut conns[0], "processed_events", preload, progress).await?;
    progress.start("naive", workload.len() as u64);
    let keys = std::sync::Arc::new(workload.keys().to_vec());
    let driven = drive(conns, keys.len(), 1, progress, move |mut conn, i| {
        let keys = keys.clone();
        async move {
            let new = check_then_insert(&mut conn, keys[i].as_str()).await?;
            Ok((conn, usize::from(new)))
        }
    })
    .await?;
    let mut conn = MySqlConnection::connect(url).await?;
    let bytes = bytes_per_key(&mut conn, "processed_events").await?;
    Ok(summarize(
        "naive",
        workload.len(),
        driven.latencies,
        driven.new,
        driven.elapsed,
        Some(bytes),
    ))
}

/// What MySQL does at best for this job: `INSERT IGNORE INTO limit_keys VALUES (?), (?), ...`
/// of [`LIMIT_BATCH`] keys per transaction (sorted, so concurrent batches lock in one order; a
/// deadlock InnoDB still reports is retried), on [`LIMIT_CONNECTIONS`] connections at once; a
/// key-only table, no outcome, no lease, no reply to anyone.
pub async fn batched_limit(
    url: &str,
    workload: &Workload,
    preload: &Workload,
    progress: &dyn Progress,
) -> Result<RunResult, BenchError> {
    let mut conns = connect(url, LIMIT_CONNECTIONS).await?;
    sqlx::raw_sql("CREATE TABLE limit_keys (k VARBINARY(64) PRIMARY KEY) ENGINE = InnoDB")
        .execute(&mut conns[0])
        .await?;
    preload_rows(&mut conns[0], "limit_keys", preload, progress).await?;
    progress.start("batched limit", workload.len() as u64);
    let keys = std::sync::Arc::new(workload.keys().to_vec());
    let driven = drive(
        conns,
        keys.len(),
        LIMIT_BATCH,
        progress,
        move |mut conn, unit| {
            let keys = keys.clone();
            async move {
                let first = unit * LIMIT_BATCH;
                let mut chunk: Vec<&str> = keys[first..(first + LIMIT_BATCH).min(keys.len())]
                    .iter()
                    .map(|k| k.as_str())
                    .collect();
                chunk.sort_unstable();
                loop {
                    let mut tx = conn.begin().await?;
                    match insert_ignore(&mut tx, "limit_keys", &chunk).await {
                        Ok(new) => {
                            tx.commit().await?;
                            return Ok((conn, new as usize));
                        }
                        Err(e) if is(&e, DEADLOCK) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        },
    )
    .await?;
    let mut conn = MySqlConnection::connect(url).await?;
    let bytes = bytes_per_key(&mut conn, "limit_keys").await?;
    Ok(summarize(
        "batched limit",
        workload.len(),
        driven.latencies,
        driven.new,
        driven.elapsed,
        Some(bytes),
    ))
}

fn is(e: &sqlx::Error, number: u16) -> bool {
    e.as_database_error()
        .and_then(|d| d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
        .is_some_and(|d| d.number() == number)
}
