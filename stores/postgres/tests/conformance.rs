//! The shared conformance suite and model test, against the PostgreSQL server on loopback.
//! Each test gets a schema of its own. `ONCELY_TEST_POSTGRES` overrides the server URL.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use oncely_postgres::PostgresStore;
use sqlx::postgres::PgConnectOptions;

fn main() {
    let url = std::env::var("ONCELY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let run = format!("oncely_conf_{}", std::process::id());
    // Schemas of earlier runs of this test binary go first.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let pool = sqlx::PgPool::connect(&url)
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL at {url}: {e}"));
            let old: Vec<String> = sqlx::query_scalar(
                "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'oncely_conf_%'",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            for schema in old {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                )))
                .execute(&pool)
                .await
                .unwrap();
            }
        });
    let counter = Arc::new(AtomicUsize::new(0));
    oncely_conformance::main("postgres", move || {
        let (url, run, n) = (
            url.clone(),
            run.clone(),
            counter.fetch_add(1, Ordering::SeqCst),
        );
        async move {
            let schema = format!("{run}_{n}");
            let admin = sqlx::PgPool::connect(&url).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
                .execute(&admin)
                .await
                .unwrap();
            admin.close().await;
            let options = PgConnectOptions::from_str(&url)
                .unwrap()
                .options([("search_path", schema.as_str())]);
            Arc::new(
                PostgresStore::connect_with(options, &url, true)
                    .await
                    .expect("connect"),
            ) as _
        }
    });
}
