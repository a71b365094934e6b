//! What the MySQL test binaries share beyond the server and a fresh database per test
//! (`oncely_conformance::servers`): a pool at a chosen isolation level, and telling a deadlock
//! from other errors.

use sqlx::mysql::{MySqlDatabaseError, MySqlPoolOptions};
use sqlx::{Executor, MySqlPool};

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
