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
    let url = servers::postgres_url("oncely_plans").await;
    let admin = PgPool::connect(&url).await.unwrap();
    let store = PostgresStore::connect(&format!("{url}&application_name={app}"))
        .await
        .unwrap();
    // Only the plan cache may change the plans here: no ANALYZE behind the test's back.
    sqlx::query("ALTER TABLE oncely_records SET (autovacuum_enabled = false)")
        .execute(&admin)
        .await
        .unwrap();
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

    // The warm-up's own scans (on a tiny table a seq scan is the right plan) are reported once
    // its backend has been idle for about a second: wait until the counts hold still.
    let mut before = scans(&admin).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "the warm-up's scans were never reported"
        );
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let now = scans(&admin).await;
        if now == before && now != (0, 0) {
            break;
        }
        before = now;
    }
    for batch in 0..10 {
        // Keys stored already (answered from the read) and new ones (inserted, completed).
        let keys = (0..5)
            .map(|i| format!("grown-{}", batch * 5 + i + 1))
            .chain((0..5).map(|i| format!("new-{batch}-{i}")))
            .collect();
        claim_and_complete(&store, keys, now).await;
    }
    // A backend reports its scans when idle for a while or when it exits: close the store's.
    drop(store);
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
                .bind(app)
                .fetch_one(&admin)
                .await
                .unwrap();
        let now = scans(&admin).await;
        if left == 0 && now != before {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the store's scans were never reported ({before:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        after.0 - before.0,
        0,
        "the store read the records table by seq scan (scans before, after: {before:?}, {after:?})"
    );
    assert!(after.1 > before.1, "{before:?}, {after:?}");
}
