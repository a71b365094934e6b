//! What the MySQL test binaries share: the server, and a fresh database per test.

#![allow(dead_code)] // each test binary uses part of it

use sqlx::MySqlPool;

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
