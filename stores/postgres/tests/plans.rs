//! Query plans: the store's statements keep using the primary key as the table grows.
//!
//! PostgreSQL caches a generic plan for a prepared statement after a few executions, costed on
//! the table as it was then. Prepared on a new, empty table, the batch statements' generic plan
//! is a seq scan and a hash join, and a cached plan is not costed again as the table grows (only
//! the next ANALYZE replaces it): every batch would read every row. The store plans each
//! execution for its own arguments instead.

use std::time::{Duration, Instant};

use oncely_conformance::servers;
use oncely_core::{ClaimRequest, Completion, Key, Scope, Store, Timestamp};
use oncely_postgres::PostgresStore;
use sqlx::PgPool;

/// Scans of the records table so far: (sequential, by index).
async fn scans(admin: &PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables \
         WHERE relid = 'oncely_records'::regclass",
    )
    .fetch_one(admin)
    .await
    .unwrap()
}

/// A store named `app` and an admin pool, both on a fresh schema; `options` (URL-encoded
/// `-c` settings, each followed by `%20`) go first in the store's. Autovacuum is off on the
/// records table: no ANALYZE behind the test's back.
async fn store_and_admin(app: &str, options: &str) -> (PostgresStore, PgPool) {
    let url = servers::postgres_url("oncely_plans").await;
    assert!(
        url.contains("options="),
        "the test schema is set in the URL's options"
    );
    let admin = PgPool::connect(&url).await.unwrap();
    let with = url.replace("options=", &format!("options={options}"));
    let store = PostgresStore::connect(&format!("{with}&application_name={app}"))
        .await
        .unwrap();
    sqlx::query("ALTER TABLE oncely_records SET (autovacuum_enabled = false)")
        .execute(&admin)
        .await
        .unwrap();
    (store, admin)
}

/// No seq scan of the records table between `before` and `after`, and some index scans.
fn assert_read_by_index_only(before: (i64, i64), after: (i64, i64)) {
    assert_eq!(
        after.0 - before.0,
        0,
        "the store read the records table by seq scan (scans before, after: {before:?}, {after:?})"
    );
    assert!(after.1 > before.1, "{before:?}, {after:?}");
}

/// The scans so far, once they hold still: a backend reports its scans when it has been idle
/// for about a second, so counts read sooner may still grow.
async fn settled_scans(admin: &PgPool) -> (i64, i64) {
    let mut before = scans(admin).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "the scans were never reported");
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let now = scans(admin).await;
        if now == before && now != (0, 0) {
            return now;
        }
        before = now;
    }
}

/// The scans once `store` is closed: a backend reports its scans when idle for a while or when
/// it exits, so close the store's (named `app`) and wait for them.
async fn scans_once_closed(
    store: PostgresStore,
    admin: &PgPool,
    app: &str,
    before: (i64, i64),
) -> (i64, i64) {
    drop(store);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
                .bind(app)
                .fetch_one(admin)
                .await
                .unwrap();
        let now = scans(admin).await;
        if left == 0 && now != before {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the store's scans were never reported ({before:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn requests(keys: impl Iterator<Item = String>) -> Vec<ClaimRequest> {
    keys.map(|k| {
        ClaimRequest::new(
            Scope::default(),
            Key::new(k).unwrap(),
            None,
            Duration::from_secs(30),
        )
    })
    .collect()
}

/// Claims then completes `keys` in one batch each, as the group commit does.
async fn claim_and_complete(store: &PostgresStore, keys: Vec<String>, now: Timestamp) {
    let outcomes = store
        .claim_many(&requests(keys.into_iter()), now)
        .await
        .unwrap();
    let items: Vec<Completion> = outcomes
        .into_iter()
        .filter_map(|o| o.into_new())
        .map(|claim| Completion {
            claim,
            outcome: b"ok".to_vec(),
            expires_at: Timestamp::from_millis(now.as_millis() + 3_600_000),
        })
        .collect();
    for result in store.complete_many(&items).await.unwrap() {
        result.unwrap();
    }
}

#[tokio::test]
async fn batches_prepared_on_an_empty_table_use_the_index_once_it_has_grown() {
    let app = "oncely_plans_test";
    // Only the plan cache may change the plans here.
    let (store, admin) = store_and_admin(app, "").await;
    let now = Timestamp::from_millis(1_000);
    // Sequential batches run on one connection: more than the five executions after which
    // PostgreSQL may settle on a generic plan.
    for batch in 0..10 {
        claim_and_complete(
            &store,
            (0..10).map(|i| format!("warm-{batch}-{i}")).collect(),
            now,
        )
        .await;
    }
    sqlx::query(
        "INSERT INTO oncely_records (scope, key, completed, token, attempt, created_at, expires_at, outcome) \
         SELECT 'default', convert_to('grown-' || i, 'UTF8'), true, 1, 1, 0, 9000000000000, '' \
         FROM generate_series(1, 50000) AS i",
    )
    .execute(&admin)
    .await
    .unwrap();

    // The warm-up's own scans (on a tiny table a seq scan is the right plan).
    let before = settled_scans(&admin).await;
    for batch in 0..10 {
        // Keys stored already (answered from the read) and new ones (inserted, completed).
        let keys = (0..5)
            .map(|i| format!("grown-{}", batch * 5 + i + 1))
            .chain((0..5).map(|i| format!("new-{batch}-{i}")))
            .collect();
        claim_and_complete(&store, keys, now).await;
    }
    let after = scans_once_closed(store, &admin, app, before).await;
    assert_read_by_index_only(before, after);
}

/// Statistics taken just after a burst of claims say most rows are in progress. Costed on them,
/// a completion batch's join to its keys looked cheaper as a hash join over a seq scan of the
/// table: every batch read every row, and took its row locks in the table's order, not the keys',
/// so it deadlocked with claims locking the same rows in key order (each cycle broken only after
/// PostgreSQL's `deadlock_timeout`, 1 s). The store's batches probe the primary key whatever the
/// statistics say.
#[tokio::test]
async fn batches_probe_the_primary_key_when_the_statistics_say_most_rows_are_in_progress() {
    let app = "oncely_plans_in_progress";
    // Where the hash join starts to look cheaper depends on the table's size, its bloat and the
    // cost settings; pricier random reads put this test's table past that point, as stale
    // statistics did to `oncely bench`'s.
    let (store, admin) = store_and_admin(app, "-crandom_page_cost%3D40%20").await;
    sqlx::query(
        "INSERT INTO oncely_records (scope, key, completed, token, attempt, created_at, expires_at) \
         SELECT 'default', convert_to(md5(i::text), 'UTF8'), false, 1, 1, 0, 9000000000000 \
         FROM generate_series(1, 100000) AS i",
    )
    .execute(&admin)
    .await
    .unwrap();
    sqlx::query("ANALYZE oncely_records")
        .execute(&admin)
        .await
        .unwrap();
    let before = settled_scans(&admin).await;
    let now = Timestamp::from_millis(1_000);
    for batch in 0..3 {
        // Batches of 1,000, as `oncely bench` and a busy group commit make them.
        claim_and_complete(
            &store,
            (0..1_000).map(|i| format!("batch-{batch}-{i}")).collect(),
            now,
        )
        .await;
    }
    let after = scans_once_closed(store, &admin, app, before).await;
    assert_read_by_index_only(before, after);
}
