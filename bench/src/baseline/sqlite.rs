//! SQLite baselines, both on their own file with the same durability as oncely's store
//! (WAL, synchronous=FULL).

use std::path::Path;
use std::time::Instant;

use rusqlite::{Connection, params};

use crate::{BenchError, Latencies, Progress, RunResult, Workload, summarize};

fn open(path: &Path, page_size: u32, schema: &str) -> Result<Connection, BenchError> {
    let conn = Connection::open(path)?;
    // The settings oncely's store uses, so only the access pattern differs.
    conn.pragma_update(None, "page_size", page_size)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(
        None,
        "cache_size",
        -(i64::from(oncely_sqlite::DEFAULT_CACHE_MIB) * 1024),
    )?;
    conn.pragma_update(
        None,
        "wal_autocheckpoint",
        oncely_sqlite::DEFAULT_WAL_AUTOCHECKPOINT,
    )?;
    conn.execute_batch(schema)?;
    Ok(conn)
}

fn preload_rows(
    conn: &mut Connection,
    sql: &str,
    preload: &Workload,
    progress: &dyn Progress,
) -> Result<(), BenchError> {
    if preload.is_empty() {
        return Ok(());
    }
    progress.start("preload", preload.len() as u64);
    for chunk in preload.keys().chunks(10_000) {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(sql)?;
            for k in chunk {
                insert.execute([k.as_str()])?;
            }
        }
        tx.commit()?;
        progress.advance(chunk.len() as u64);
    }
    progress.finish();
    Ok(())
}

fn bytes_per_key(conn: &Connection) -> Result<f64, BenchError> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let rows: i64 = conn.query_row("SELECT count(*) FROM keys", [], |r| r.get(0))?;
    Ok((pages * page_size) as f64 / rows.max(1) as f64)
}

/// A fresh file with the naive pattern's table, on oncely's store settings.
pub(crate) fn open_naive(path: &Path, page_size: u32) -> Result<Connection, BenchError> {
    open(
        path,
        page_size,
        "CREATE TABLE keys (event_id TEXT PRIMARY KEY, processed_at INTEGER NOT NULL);",
    )
}

/// The naive pattern for one event, in its own transaction: `SELECT EXISTS`, then `INSERT` if
/// absent. Answers whether the key was new.
pub(crate) fn check_then_insert(conn: &mut Connection, key: &str) -> Result<bool, BenchError> {
    let tx = conn.transaction()?;
    let exists: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM keys WHERE event_id = ?1)")?
        .query_row([key], |r| r.get(0))?;
    if !exists {
        tx.prepare_cached("INSERT INTO keys (event_id, processed_at) VALUES (?1, ?2)")?
            .execute(params![key, 1])?;
    }
    tx.commit()?;
    Ok(!exists)
}

/// The pattern most handlers start with: per event, in its own transaction, `SELECT EXISTS`
/// on a processed-events table, then `INSERT` if absent. One connection.
pub fn naive(
    path: &Path,
    page_size: u32,
    workload: &Workload,
    preload: &Workload,
    progress: &dyn Progress,
) -> Result<RunResult, BenchError> {
    let mut conn = open_naive(path, page_size)?;
    preload_rows(
        &mut conn,
        "INSERT INTO keys (event_id, processed_at) VALUES (?1, 0)",
        preload,
        progress,
    )?;
    progress.start("naive", workload.len() as u64);
    let mut latencies = Latencies::for_events(workload.len());
    let mut new = 0;
    let started = Instant::now();
    for (i, key) in workload.keys().iter().enumerate() {
        let t0 = Latencies::start(i);
        new += usize::from(check_then_insert(&mut conn, key.as_str())?);
        latencies.record(t0);
        progress.advance(1);
    }
    let elapsed = started.elapsed();
    progress.finish();
    let bytes = bytes_per_key(&conn)?;
    Ok(summarize(
        "naive",
        workload.len(),
        latencies,
        new,
        elapsed,
        Some(bytes),
    ))
}

/// What the store itself can do at best for this job: `INSERT OR IGNORE` of the same keys into
/// a key-only table, 1,000 per transaction, no outcome, no lease, no reply to anyone. Each event's
/// latency is the time until its transaction committed.
pub fn batched_limit(
    path: &Path,
    page_size: u32,
    workload: &Workload,
    preload: &Workload,
    progress: &dyn Progress,
) -> Result<RunResult, BenchError> {
    let mut conn = open(
        path,
        page_size,
        "CREATE TABLE keys (key TEXT PRIMARY KEY) WITHOUT ROWID;",
    )?;
    preload_rows(
        &mut conn,
        "INSERT INTO keys (key) VALUES (?1)",
        preload,
        progress,
    )?;
    progress.start("batched limit", workload.len() as u64);
    let mut latencies = Latencies::for_events(workload.len());
    let mut new = 0;
    let started = Instant::now();
    for (n, chunk) in workload.keys().chunks(1000).enumerate() {
        let t0 = Instant::now();
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached("INSERT OR IGNORE INTO keys (key) VALUES (?1)")?;
            for k in chunk {
                new += insert.execute([k.as_str()])?;
            }
        }
        tx.commit()?;
        let first = n * 1000;
        latencies.record_range(first..first + chunk.len(), t0.elapsed());
        progress.advance(chunk.len() as u64);
    }
    let elapsed = started.elapsed();
    progress.finish();
    let bytes = bytes_per_key(&conn)?;
    Ok(summarize(
        "batched limit",
        workload.len(),
        latencies,
        new,
        elapsed,
        Some(bytes),
    ))
}
