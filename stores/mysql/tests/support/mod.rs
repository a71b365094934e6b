//! What the MySQL test binaries share: the server, and a fresh database per test.

#![allow(dead_code)] // each test binary uses part of it

use sqlx::mysql::{MySqlDatabaseError, MySqlPoolOptions};
use sqlx::{Executor, MySqlPool};

/// The server under test: `ONCELY_TEST_MYSQL`, or the MariaDB on loopback.
pub fn server() -> String {
    std::env::var("ONCELY_TEST_MYSQL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned())
}

async fn admin() -> MySqlPool {
    let url = format!("{}/test", server());
    MySqlPool::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("MySQL/MariaDB at {url}: {e}"))
}

/// Drops and recreates the database `name`; answers its URL.
pub async fn fresh_database(name: &str) -> String {
    let admin = admin().await;
    for ddl in [
        format!("DROP DATABASE IF EXISTS `{name}`"),
        format!("CREATE DATABASE `{name}`"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
            .execute(&admin)
            .await
            .unwrap();
    }
    admin.close().await;
    format!("{}/{name}", server())
}

/// Drops every database whose name starts with `prefix` (left by earlier runs).
pub async fn drop_databases(prefix: &str) {
    let admin = admin().await;
    let old: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(schema_name AS CHAR) FROM information_schema.schemata WHERE schema_name LIKE CONCAT(?, '%')",
    )
    .bind(prefix)
    .fetch_all(&admin)
    .await
    .unwrap();
    for name in old {
        let ddl = format!("DROP DATABASE IF EXISTS `{name}`");
        sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
            .execute(&admin)
            .await
            .unwrap();
    }
    admin.close().await;
}

/// A pool of `connections` on the database at `url` whose transactions run at `isolation`
/// (`"REPEATABLE READ"`, `"READ COMMITTED"`) and whose new tables are InnoDB (transactional,
/// whatever the server's default); checked on one connection.
pub async fn pool(url: &str, isolation: &'static str, connections: u32) -> MySqlPool {
    let pool = MySqlPoolOptions::new()
        .max_connections(connections)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                conn.execute("SET SESSION default_storage_engine = InnoDB")
                    .await?;
                let set = format!("SET SESSION TRANSACTION ISOLATION LEVEL {isolation}");
                conn.execute(sqlx::AssertSqlSafe(set)).await.map(drop)
            })
        })
        .connect(url)
        .await
        .unwrap();
    // MariaDB names it tx_isolation, MySQL 8 only transaction_isolation.
    let mut conn = pool.acquire().await.unwrap();
    let level: String = match sqlx::query_scalar("SELECT @@transaction_isolation")
        .fetch_one(&mut *conn)
        .await
    {
        Ok(level) => level,
        Err(_) => sqlx::query_scalar("SELECT @@tx_isolation")
            .fetch_one(&mut *conn)
            .await
            .unwrap(),
    };
    assert_eq!(level, isolation.replace(' ', "-"));
    drop(conn);
    pool
}

/// Whether `error` says InnoDB chose the transaction as a deadlock victim (ER_LOCK_DEADLOCK,
/// 1213) and rolled it back.
pub fn is_deadlock(error: &oncely_core::Error) -> bool {
    matches!(error, oncely_core::Error::Backend { source, .. }
        if source.downcast_ref::<sqlx::Error>()
            .and_then(sqlx::Error::as_database_error)
            .and_then(|e| e.try_downcast_ref::<MySqlDatabaseError>())
            .is_some_and(|e| e.number() == 1213))
}
