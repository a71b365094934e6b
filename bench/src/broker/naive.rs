//! The naive contender of the broker benchmark: one message at a time, check-then-insert of its
//! key on the same kind of store, the effect if the key was new, then the ack, awaited.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use oncely::consumer::{Delivery, Source};

use super::{BrokerConfig, BrokerRun, Channel, STALL_LIMIT, check, fill, other};
use crate::{BenchError, Progress, StoreKind, Workload, percentile};

/// Where the naive pattern keeps its processed-events table.
pub(super) enum NaiveStore {
    /// A fresh SQLite file.
    File(PathBuf),
    /// A fresh PostgreSQL schema or MySQL database, by its URL.
    Url(String),
}

enum NaiveConn {
    Sqlite(rusqlite::Connection),
    Postgres(sqlx::PgConnection),
    Mysql(sqlx::MySqlConnection),
}

impl NaiveConn {
    async fn open(store: NaiveStore, kind: StoreKind, page_size: u32) -> Result<Self, BenchError> {
        use sqlx::Connection;
        Ok(match (store, kind) {
            (NaiveStore::File(path), _) => {
                NaiveConn::Sqlite(crate::baseline::sqlite::open_naive(&path, page_size)?)
            }
            (NaiveStore::Url(url), StoreKind::Postgres) => {
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                crate::baseline::postgres::create_processed_events(&mut conn).await?;
                NaiveConn::Postgres(conn)
            }
            (NaiveStore::Url(url), _) => {
                let mut conn = sqlx::MySqlConnection::connect(&url).await?;
                crate::baseline::mysql::create_processed_events(&mut conn).await?;
                NaiveConn::Mysql(conn)
            }
        })
    }

    async fn check_then_insert(&mut self, key: &str) -> Result<bool, BenchError> {
        match self {
            NaiveConn::Sqlite(conn) => crate::baseline::sqlite::check_then_insert(conn, key),
            NaiveConn::Postgres(conn) => {
                crate::baseline::postgres::check_then_insert(conn, key).await
            }
            NaiveConn::Mysql(conn) => crate::baseline::mysql::check_then_insert(conn, key).await,
        }
    }
}

/// The naive pattern over a fresh destination on `server`.
pub(super) async fn run_naive<C: Channel>(
    server: &C::Server,
    config: &BrokerConfig,
    store: NaiveStore,
    workload: &Workload,
    progress: &dyn Progress,
) -> Result<BrokerRun, BenchError> {
    let mut channel = C::create(server, "naive").await?;
    let result = async {
        fill(&mut channel, workload, progress).await?;
        let conn = NaiveConn::open(store, config.store, config.page_size).await?;
        let source = channel.naive_source().await?;
        let (elapsed, mut latencies, effects) = naive_loop(
            source,
            conn,
            workload,
            C::CLOCK_FROM_FIRST_DELIVERY,
            progress,
        )
        .await?;
        let (unsettled, dead) = channel.leftovers().await?;
        latencies.sort_unstable();
        let run = BrokerRun {
            name: "naive".into(),
            messages: workload.len(),
            distinct: workload.distinct_keys(),
            effects,
            redelivered: 0,
            dead_lettered: dead,
            unsettled,
            elapsed,
            p50: percentile(&latencies, 0.5),
            p99: percentile(&latencies, 0.99),
            before_waits: None,
        };
        check(&run, latencies.len(), run.distinct as u64)?;
        Ok::<_, BenchError>(run)
    }
    .await;
    let deleted = channel.delete().await;
    let run = result?;
    deleted?;
    Ok(run)
}

/// The naive pattern over `source`, one message at a time: the elapsed time, each message's
/// delivery-to-ack time and the effects applied. The clock starts before the first receive, or
/// with `from_first_delivery` when the first delivery is handed out. The source is dropped
/// before it answers.
async fn naive_loop<S: Source>(
    mut source: S,
    mut conn: NaiveConn,
    workload: &Workload,
    from_first_delivery: bool,
    progress: &dyn Progress,
) -> Result<(Duration, Vec<Duration>, u64), BenchError> {
    progress.start("naive", workload.len() as u64);
    let mut latencies = Vec::with_capacity(workload.len());
    let mut effects = 0u64;
    let mut started = Instant::now();
    for n in 0..workload.len() {
        let delivery = tokio::time::timeout(STALL_LIMIT, source.next())
            .await
            .map_err(|_| BenchError::Other(format!("naive: no delivery for {STALL_LIMIT:?}")))?
            .ok_or_else(|| BenchError::Other("naive: the source ended".into()))?
            .map_err(|e| other("naive: receive")(&e))?;
        let taken = Instant::now();
        if n == 0 && from_first_delivery {
            started = taken;
        }
        let json: serde_json::Value = serde_json::from_slice(delivery.message().payload())
            .map_err(|e| other("naive: payload")(&e))?;
        let key = json["eventId"]
            .as_str()
            .ok_or_else(|| BenchError::Other("naive: a payload without eventId".into()))?;
        if conn.check_then_insert(key).await? {
            effects += 1;
        }
        delivery.ack().await.map_err(|e| other("naive: ack")(&e))?;
        latencies.push(taken.elapsed());
        progress.advance(1);
    }
    let elapsed = started.elapsed();
    progress.finish();
    drop(source);
    Ok((elapsed, latencies, effects))
}
