//! Purge by partition drop against purge by row delete, on N expired records (default 1,000,000).
//!
//! ```text
//! cargo run -p oncely-postgres --example purge_partitions -- [N]
//! ```
//!
//! Fills two fresh schemas on the server (`ONCELY_TEST_POSTGRES`, or the one on loopback) with N
//! completed records that all expired on 2026-01-01 (one bulk INSERT, routed to its partition
//! in the partitioned layout), then times: the default layout purged in batches of 10,000 (as
//! `oncely purge` does); the daily layout purged with one call whose limit covers the partition
//! (a drop); and the daily layout purged in batches of 10,000 (too small for the partition, so
//! rows are deleted as in the default layout).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use oncely_core::{ClaimRequest, Key, Scope, Store, Timestamp};
use oncely_postgres::PostgresStore;
use sqlx::{AssertSqlSafe, PgPool};

const DAY: i64 = 86_400_000;
const JAN_1: i64 = 1_767_225_600_000;

fn server() -> String {
    std::env::var("ONCELY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A store in a fresh schema, filled with `n` records expiring during 2026-01-01.
async fn filled(schema: &str, layout: &str, n: i64) -> (PostgresStore, PgPool) {
    let admin = PgPool::connect(&server()).await.unwrap();
    let ddl = format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};");
    sqlx::raw_sql(AssertSqlSafe(ddl))
        .execute(&admin)
        .await
        .unwrap();
    let url = format!("{}?options=-csearch_path%3D{schema}", server());
    let store = PostgresStore::connect(&format!("{url}{layout}"))
        .await
        .unwrap();
    store
        .create_partitions(Timestamp::from_millis(JAN_1))
        .await
        .unwrap();
    let pool = PgPool::connect(&url).await.unwrap();
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO oncely_records (scope, key, completed, token, attempt, fingerprint, \
         created_at, expires_at, outcome) \
         SELECT 'default'::bytea, convert_to(md5(i::text) || '-' || i, 'UTF8'), true, i, 1, NULL, \
         $2 + (i % $3) - 3600000, $2 + (i % $3), ''::bytea FROM generate_series(1, $1) AS i",
    )
    .bind(n)
    .bind(JAN_1)
    .bind(DAY)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE oncely_records")
        .execute(&pool)
        .await
        .unwrap();
    println!(
        "{schema}: {n} expired records written in {:.1?}",
        started.elapsed()
    );
    (store, pool)
}

async fn purge_in_batches(store: &PostgresStore, cutoff: Timestamp, batch: usize) -> usize {
    let mut total = 0;
    loop {
        let n = store.purge(cutoff, batch).await.unwrap();
        total += n;
        if n < batch {
            return total;
        }
    }
}

#[tokio::main]
async fn main() {
    let n: i64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("N: a number of records"))
        .unwrap_or(1_000_000);
    let cutoff = Timestamp::from_millis(JAN_1 + 2 * DAY);

    let (plain, _) = filled("oncely_purge_plain", "", n).await;
    let t = Instant::now();
    let purged = purge_in_batches(&plain, cutoff, 10_000).await;
    println!(
        "default layout, row delete, batches of 10,000: {purged} records in {:.2?}",
        t.elapsed()
    );

    let daily = "&oncely_partitions=daily";
    let (part, pool) = filled("oncely_purge_daily", daily, n).await;
    let part = Arc::new(part);
    // Claims go on meanwhile: the slowest one shows how long the drop held the table lock.
    let stop = Arc::new(AtomicBool::new(false));
    let claimer = {
        let (part, stop) = (part.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut claims, mut slowest) = (0, Duration::ZERO);
            while !stop.load(Ordering::SeqCst) {
                let key = Key::new(format!("live-{claims}")).unwrap();
                let req = ClaimRequest::new(Scope::default(), key, None, Duration::from_secs(30));
                let t = Instant::now();
                part.claim(&req, Timestamp::from_millis(JAN_1 + 3 * DAY))
                    .await
                    .unwrap();
                slowest = slowest.max(t.elapsed());
                claims += 1;
            }
            (claims, slowest)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let purged = part.purge(cutoff, usize::MAX).await.unwrap();
    let elapsed = t.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    let (claims, slowest) = claimer.await.unwrap();
    println!(
        "daily partitions, one purge call (partition drop): {purged} records in {elapsed:.2?}; \
         {claims} claims alongside, the slowest {slowest:.2?}"
    );
    let gone: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class WHERE relname = 'oncely_records_20260101' \
         AND relnamespace = 'oncely_purge_daily'::regnamespace",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    println!(
        "  partition oncely_records_20260101 still exists: {}",
        gone == 1
    );

    let (part, _) = filled("oncely_purge_daily", daily, n).await;
    let t = Instant::now();
    let purged = purge_in_batches(&part, cutoff, 10_000).await;
    println!(
        "daily partitions, batches of 10,000 (too small to drop, row delete): {purged} records in {:.2?}",
        t.elapsed()
    );
}
