//! PostgreSQL baselines, each in a fresh schema of the same server oncely runs on.

use sqlx::{Connection, PgConnection};

use super::{LIMIT_BATCH, LIMIT_CONNECTIONS, NAIVE_CONNECTIONS, drive};
use crate::{BenchError, Progress, RunResult, Workload, summarize};

/// SQLSTATE deadlock_detected.
const DEADLOCK: &str = "40P01";
/// SQLSTATE unique_violation.
const UNIQUE_VIOLATION: &str = "23505";

async fn connect(url: &str, n: usize) -> Result<Vec<PgConnection>, BenchError> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(PgConnection::connect(url).await?);
    }
    Ok(conns)
}

async fn preload_rows(
    conn: &mut PgConnection,
    sql: &'static str,
    preload: &Workload,
    progress: &dyn Progress,
) -> Result<(), BenchError> {
    if preload.is_empty() {
        return Ok(());
    }
    progress.start("preload", preload.len() as u64);
    for chunk in preload.keys().chunks(10_000) {
        let keys: Vec<&str> = chunk.iter().map(|k| k.as_str()).collect();
        sqlx::query(sql).bind(keys).execute(&mut *conn).await?;
        progress.advance(chunk.len() as u64);
    }
    progress.finish();
    Ok(())
}

async fn bytes_per_key(conn: &mut PgConnection, table: &'static str) -> Result<f64, BenchError> {
    let (bytes, rows): (i64, i64) = sqlx::query_as(match table {
        "processed_events" => {
            "SELECT pg_total_relation_size('processed_events'), count(*) FROM processed_events"
        }
        _ => "SELECT pg_total_relation_size('limit_keys'), count(*) FROM limit_keys",
    })
    .fetch_one(&mut *conn)
    .await?;
    Ok(bytes as f64 / rows.max(1) as f64)
}

/// The naive pattern's table.
pub(crate) async fn create_processed_events(conn: &mut PgConnection) -> Result<(), BenchError> {
    sqlx::raw_sql(
        "CREATE TABLE processed_events (event_id text PRIMARY KEY, processed_at bigint NOT NULL)",
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The naive pattern for one event, in its own transaction: `SELECT EXISTS`, then `INSERT` if
/// absent. Answers whether the key was new (a racing connection's insert of the same key makes
/// this one roll back and answer `false`).
pub(crate) async fn check_then_insert(
    conn: &mut PgConnection,
    key: &str,
) -> Result<bool, BenchError> {
    let mut tx = conn.begin().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM processed_events WHERE event_id = $1)")
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
    if exists {
        tx.commit().await?;
        return Ok(false);
    }
    let inserted =
        sqlx::query("INSERT INTO processed_events (event_id, processed_at) VALUES ($1, $2)")
            .bind(key)
            .bind(1_i64)
            .execute(&mut *tx)
            .await;
    match inserted {
        Ok(_) => {
            tx.commit().await?;
            Ok(true)
        }
        Err(e) if is(&e, UNIQUE_VIOLATION) => {
            tx.rollback().await?;
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// The pattern most handlers start with: per event, in its own transaction, `SELECT EXISTS`
/// on a processed-events table, then `INSERT` if absent; on [`NAIVE_CONNECTIONS`] connections
/// at once. When two connections race on one key, the loser's `INSERT` fails on the primary
/// key; it rolls back and counts the event as a duplicate.
pub async fn naive(
    url: &str,
    workload: &Workload,
    preload: &Workload,
    progress: &dyn Progress,
) -> Result<RunResult, BenchError> {
    let mut conns = connect(url, NAIVE_CONNECTIONS).await?;
    create_processed_events(&mut conns[0]).await?;
    preload_rows(
        &mut conns[0],
        "INSERT INTO processed_events SELECT unnest($1::text[]), 0",
        preload,
        progress,
    )
    .await?;
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
    let mut conn = PgConnection::connect(url).await?;
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

/// What PostgreSQL does at best for this job: `INSERT INTO limit_keys SELECT unnest($1::text[])
/// ON CONFLICT DO NOTHING` of [`LIMIT_BATCH`] keys per transaction, on [`LIMIT_CONNECTIONS`]
/// connections at once (each batch's keys sorted, so concurrent batches wait on each other in one
/// order; a deadlock PostgreSQL still reports is retried); a key-only table, no outcome, no
/// lease, no reply to anyone.
pub async fn batched_limit(
    url: &str,
    workload: &Workload,
    preload: &Workload,
    progress: &dyn Progress,
) -> Result<RunResult, BenchError> {
    let mut conns = connect(url, LIMIT_CONNECTIONS).await?;
    sqlx::raw_sql("CREATE TABLE limit_keys (key text PRIMARY KEY)")
        .execute(&mut conns[0])
        .await?;
    preload_rows(
        &mut conns[0],
        "INSERT INTO limit_keys SELECT unnest($1::text[])",
        preload,
        progress,
    )
    .await?;
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
                // Sorted, so concurrent batches wait on each other's keys in one order.
                chunk.sort_unstable();
                loop {
                    let mut tx = conn.begin().await?;
                    let done = sqlx::query(
                        "INSERT INTO limit_keys SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
                    )
                    .bind(&chunk)
                    .execute(&mut *tx)
                    .await;
                    match done {
                        Ok(done) => {
                            tx.commit().await?;
                            return Ok((conn, done.rows_affected() as usize));
                        }
                        Err(e) if is(&e, DEADLOCK) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        },
    )
    .await?;
    let mut conn = PgConnection::connect(url).await?;
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

fn is(e: &sqlx::Error, code: &str) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == code)
}
