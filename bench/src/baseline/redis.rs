//! Redis baselines, each under a key prefix of its own on the server oncely runs on.

use redis::aio::MultiplexedConnection;

use super::{LIMIT_BATCH, LIMIT_CONNECTIONS, NAIVE_CONNECTIONS, drive};
use crate::{BenchError, Progress, RunResult, Workload, summarize};

async fn connect(url: &str, n: usize) -> Result<Vec<MultiplexedConnection>, BenchError> {
    let client = redis::Client::open(url)?;
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(client.get_multiplexed_async_connection().await?);
    }
    Ok(conns)
}

async fn preload_keys(
    conn: &mut MultiplexedConnection,
    prefix: &str,
    preload: &Workload,
    progress: &dyn Progress,
) -> Result<(), BenchError> {
    if preload.is_empty() {
        return Ok(());
    }
    progress.start("preload", preload.len() as u64);
    for chunk in preload.keys().chunks(LIMIT_BATCH) {
        let mut pipe = redis::pipe();
        for k in chunk {
            pipe.cmd("SET").arg(format!("{prefix}:{k}")).arg(1).ignore();
        }
        pipe.query_async::<()>(conn).await?;
        progress.advance(chunk.len() as u64);
    }
    progress.finish();
    Ok(())
}

/// The pattern most handlers start with on Redis: per event, `SET key 1 NX` and wait for the
/// answer (`OK`: new; nil: a duplicate), one command at a time on each of [`NAIVE_CONNECTIONS`]
/// connections.
pub async fn naive(
    url: &str,
    prefix: &str,
    workload: &Workload,
    preload: &Workload,
    progress: &dyn Progress,
) -> Result<RunResult, BenchError> {
    let name = "naive";
    one_at_a_time(
        name,
        url,
        prefix,
        workload,
        preload,
        progress,
        |mut conn, key| async move {
            let set: Option<String> = redis::cmd("SET")
                .arg(key)
                .arg(1)
                .arg("NX")
                .query_async(&mut conn)
                .await?;
            Ok((conn, usize::from(set.is_some())))
        },
    )
    .await
}

/// Runs `event(connection, prefixed key)` for each event of `workload`, one at a time on each of
/// [`NAIVE_CONNECTIONS`] connections; `event` answers 1 for a new key, 0 for a duplicate.
async fn one_at_a_time<F, Fut>(
    name: &str,
    url: &str,
    prefix: &str,
    workload: &Workload,
    preload: &Workload,
    progress: &dyn Progress,
    event: F,
) -> Result<RunResult, BenchError>
where
    F: Fn(MultiplexedConnection, String) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(MultiplexedConnection, usize), BenchError>> + Send,
{
    let mut conns = connect(url, NAIVE_CONNECTIONS).await?;
    preload_keys(&mut conns[0], prefix, preload, progress).await?;
    progress.start(name, workload.len() as u64);
    let keys = std::sync::Arc::new(workload.keys().to_vec());
    let prefix = prefix.to_owned();
    let driven = drive(conns, keys.len(), 1, progress, move |conn, i| {
        event.clone()(conn, format!("{prefix}:{}", keys[i]))
    })
    .await?;
    Ok(summarize(
        name,
        workload.len(),
        driven.latencies,
        driven.new,
        driven.elapsed,
        None,
    ))
}

/// How long the Powertools contender's in-progress record lives: the lease.
pub const POWERTOOLS_LEASE_MS: u64 = 30_000;
/// How long its completed record lives: the retention.
pub const POWERTOOLS_RETENTION_MS: u64 = 3_600_000;

/// What handlers on Redis do today, as AWS Lambda Powertools' Redis persistence layer does it,
/// one command at a time per event on each of [`NAIVE_CONNECTIONS`] connections:
/// `SET key in-progress-record NX PX lease`; if that set it, the effect, then `SET key
/// completed-record PX retention`; if not, `GET key` to read what is there (done, or in
/// progress elsewhere). A lease and an outcome like oncely's, but no fencing token: a holder
/// whose lease ran out still overwrites the next holder's record.
pub async fn powertools(
    url: &str,
    prefix: &str,
    workload: &Workload,
    preload: &Workload,
    progress: &dyn Progress,
) -> Result<RunResult, BenchError> {
    let name = "powertools";
    one_at_a_time(
        name,
        url,
        prefix,
        workload,
        preload,
        progress,
        |mut conn, key| async move {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let in_progress = format!(
                r#"{{"status":"INPROGRESS","in_progress_expiration":{}}}"#,
                now + POWERTOOLS_LEASE_MS
            );
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(in_progress)
                .arg("NX")
                .arg("PX")
                .arg(POWERTOOLS_LEASE_MS)
                .query_async(&mut conn)
                .await?;
            if set.is_some() {
                let completed = format!(
                    r#"{{"status":"COMPLETED","expiration":{},"data":""}}"#,
                    now + POWERTOOLS_RETENTION_MS
                );
                redis::cmd("SET")
                    .arg(&key)
                    .arg(completed)
                    .arg("PX")
                    .arg(POWERTOOLS_RETENTION_MS)
                    .query_async::<()>(&mut conn)
                    .await?;
            } else {
                let _existing: Option<Vec<u8>> =
                    redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
            }
            Ok((conn, usize::from(set.is_some())))
        },
    )
    .await
}

/// What Redis does at best for this job: `SET key 1 NX` pipelined, [`LIMIT_BATCH`] commands per
/// round trip, on [`LIMIT_CONNECTIONS`] connections at once; no lease, outcome or expiry.
pub async fn batched_limit(
    url: &str,
    prefix: &str,
    workload: &Workload,
    preload: &Workload,
    progress: &dyn Progress,
) -> Result<RunResult, BenchError> {
    let mut conns = connect(url, LIMIT_CONNECTIONS).await?;
    preload_keys(&mut conns[0], prefix, preload, progress).await?;
    progress.start("batched limit", workload.len() as u64);
    let keys = std::sync::Arc::new(workload.keys().to_vec());
    let prefix = prefix.to_owned();
    let driven = drive(
        conns,
        keys.len(),
        LIMIT_BATCH,
        progress,
        move |mut conn, unit| {
            let (keys, prefix) = (keys.clone(), prefix.clone());
            async move {
                let first = unit * LIMIT_BATCH;
                let mut pipe = redis::pipe();
                for k in &keys[first..(first + LIMIT_BATCH).min(keys.len())] {
                    pipe.cmd("SET")
                        .arg(format!("{prefix}:{k}"))
                        .arg(1)
                        .arg("NX");
                }
                let set: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
                Ok((conn, set.iter().filter(|s| s.is_some()).count()))
            }
        },
    )
    .await?;
    Ok(summarize(
        "batched limit",
        workload.len(),
        driven.latencies,
        driven.new,
        driven.elapsed,
        None,
    ))
}

/// Removes every key under `prefix` (the benchmark's own), in batches.
pub async fn forget(url: &str, prefix: &str) -> Result<(), BenchError> {
    let mut conn = connect(url, 1).await?.remove(0);
    let pattern = format!("{prefix}*");
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<()>(&mut conn)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}
