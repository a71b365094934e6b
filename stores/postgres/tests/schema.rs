//! The schema: applied on first use, or by the user from the shipped SQL with
//! `oncely_migrate=false`.

use oncely_conformance::servers;
use oncely_core::{ClaimOutcome, Key, Oncely, Scope};
use oncely_postgres::{MIGRATIONS, PostgresStore};
use sqlx::PgPool;

/// A URL whose connections work in a fresh, empty schema; `name` says which test's it is.
async fn fresh_schema(name: &str) -> String {
    servers::postgres_url(&format!("oncely_schema_{name}")).await
}

#[tokio::test]
async fn the_shipped_sql_applied_by_hand_is_what_the_store_expects() {
    let url = fresh_schema("by_hand").await;
    let sql = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/0001_records.sql"
    ))
    .unwrap();
    assert_eq!(
        sql, MIGRATIONS[0].1,
        "the shipped file is the one the store applies"
    );
    let pool = PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&pool)
        .await
        .unwrap();

    let store = PostgresStore::connect(&format!("{url}&oncely_migrate=false"))
        .await
        .unwrap();
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE tablename = 'oncely_schema_version' AND schemaname = current_schema()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(tables, 0, "migrate=false must not touch the schema");
    let oncely = Oncely::new(std::sync::Arc::new(store));
    let key = Key::new("k").unwrap();
    let claim = oncely
        .claim(&Scope::default(), &key, None)
        .await
        .unwrap()
        .into_new()
        .unwrap();
    oncely.complete(&claim, b"ok").await.unwrap();
    assert!(matches!(
        oncely.claim(&Scope::default(), &key, None).await.unwrap(),
        ClaimOutcome::Duplicate(_)
    ));
}

#[tokio::test]
async fn migrations_apply_once_however_many_instances_start_together() {
    let url = fresh_schema("together").await;
    let starts: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PostgresStore::connect(&url).await.map(drop) })
        })
        .collect();
    for start in starts {
        start.await.unwrap().unwrap();
    }
    let pool = PgPool::connect(&url).await.unwrap();
    let versions: Vec<i32> =
        sqlx::query_scalar("SELECT version FROM oncely_schema_version ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        versions,
        MIGRATIONS.iter().map(|(v, _)| *v).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_bad_migrate_flag_is_a_clear_error() {
    let err = PostgresStore::connect(&format!("{}?oncely_migrate=maybe", servers::postgres()))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("oncely_migrate must be true or false"),
        "{err}"
    );
}
