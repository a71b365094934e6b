//! What the PostgreSQL test binaries share: the server, and a fresh schema per test.

#![allow(dead_code)] // each test binary uses part of it

use sqlx::PgPool;

/// The server under test: `ONCELY_TEST_POSTGRES`, or the one on loopback.
pub fn server() -> String {
    std::env::var("ONCELY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Drops and recreates `schema`; answers a URL whose connections work in it (PostgreSQL's own
/// `options` parameter sets `search_path`), for `PostgresStore::connect` and `PgPool::connect`.
pub async fn fresh_schema(schema: &str) -> String {
    let admin = PgPool::connect(&server())
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {}: {e}", server()));
    let ddl = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE; CREATE SCHEMA \"{schema}\";");
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    format!("{}?options=-csearch_path%3D{schema}", server())
}

/// Drops every schema whose name starts with `prefix` (left by earlier runs).
pub async fn drop_schemas(prefix: &str) {
    let admin = PgPool::connect(&server()).await.unwrap();
    let old: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)")
            .bind(prefix)
            .fetch_all(&admin)
            .await
            .unwrap();
    for schema in old {
        let ddl = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
            .execute(&admin)
            .await
            .unwrap();
    }
    admin.close().await;
}

/// Whether `error` says PostgreSQL chose the transaction as a deadlock victim (SQLSTATE 40P01,
/// deadlock_detected) and rolled it back.
pub fn is_deadlock(error: &oncely_core::Error) -> bool {
    matches!(error, oncely_core::Error::Backend { source, .. }
        if source.downcast_ref::<sqlx::Error>()
            .and_then(sqlx::Error::as_database_error)
            .and_then(|e| e.code())
            .is_some_and(|code| code == "40P01"))
}
