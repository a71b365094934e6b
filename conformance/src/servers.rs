//! The servers on loopback for tests that run against PostgreSQL, MySQL/MariaDB and Redis: a
//! fresh schema, database or key prefix per call, named `<prefix>_<run start>_<pid>_<n>`; what
//! runs that are over left behind under a prefix is dropped the first time this run uses that
//! prefix, while a run still going (another worktree's) keeps its data. Each test binary passes
//! its own `prefix`.
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// The PostgreSQL server under test: `ONCELY_TEST_POSTGRES`, or the one on loopback.
pub fn postgres() -> String {
    std::env::var("ONCELY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The MySQL/MariaDB server under test, with a database to connect to: `ONCELY_TEST_MYSQL`
/// (with the database `test` if it names none), or the MariaDB on loopback.
pub fn mysql() -> String {
    let url = std::env::var("ONCELY_TEST_MYSQL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
    match database_of(&url) {
        Some(_) => url,
        None => with_database(&url, "test"),
    }
}

/// The Redis server under test: `ONCELY_TEST_REDIS`, or the one on loopback.
pub fn redis() -> String {
    std::env::var("ONCELY_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// This run's start (Unix seconds) and pid.
fn run() -> &'static (u64, u32) {
    static RUN: OnceLock<(u64, u32)> = OnceLock::new();
    RUN.get_or_init(|| {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        (secs, std::process::id())
    })
}

/// A name no other test of any run has used: `<prefix>_<run start>_<pid>_<n>`. For a server
/// a test starts itself, where nothing of earlier runs is left to drop.
pub fn fresh_name(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let (secs, pid) = run();
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}_{secs}_{pid}_{n}")
}

/// Whether this run has not yet dropped what earlier runs left under `prefix` on `server`
/// (`"postgres"`, `"mysql"`, `"redis"`); it will now.
fn first_use(server: &str, prefix: &str) -> bool {
    static SWEPT: Mutex<Option<HashSet<(String, String)>>> = Mutex::new(None);
    let mut swept = SWEPT.lock().unwrap_or_else(|e| e.into_inner());
    swept
        .get_or_insert_with(HashSet::new)
        .insert((server.to_owned(), prefix.to_owned()))
}

/// Whether `name` (a schema, a database, or a Redis key) belongs to an earlier run that is over.
fn left_over(prefix: &str, name: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('_')) else {
        return false;
    };
    let mut parts = rest.split(['_', ':']);
    let (Some(Ok(secs)), Some(Ok(pid))) = (
        parts.next().map(str::parse::<u64>),
        parts.next().map(str::parse::<u32>),
    ) else {
        return false;
    };
    let (now, me) = *run();
    if (secs, pid) == (now, me) {
        return false;
    }
    let gone = !std::path::Path::new(&format!("/proc/{pid}")).exists();
    gone || secs + 3600 < now
}

fn unavailable(what: &str, url: &str, e: impl std::fmt::Display) -> ! {
    panic!(
        "these tests need {what} at {url} (set ONCELY_TEST_{}): {e}",
        what.to_uppercase()
    )
}

/// Once per run and prefix: drops the schemas of runs that are over.
async fn forget_old_schemas(prefix: &str) {
    if !first_use("postgres", prefix) {
        return;
    }
    let url = postgres();
    let admin = sqlx::PgPool::connect(&url)
        .await
        .unwrap_or_else(|e| unavailable("postgres", &url, e));
    let schemas: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)")
            .bind(prefix)
            .fetch_all(&admin)
            .await
            .unwrap();
    for schema in schemas.iter().filter(|s| left_over(prefix, s)) {
        let ddl = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
            .execute(&admin)
            .await
            .unwrap();
    }
    admin.close().await;
}

/// A URL of the PostgreSQL server whose connections work in a fresh schema.
pub async fn postgres_url(prefix: &str) -> String {
    forget_old_schemas(prefix).await;
    let url = postgres();
    let schema = fresh_name(prefix);
    let admin = sqlx::PgPool::connect(&url)
        .await
        .unwrap_or_else(|e| unavailable("postgres", &url, e));
    let ddl = format!("CREATE SCHEMA \"{schema}\"");
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-csearch_path%3D{schema}")
}

/// Once per run and prefix: removes the keys of runs that are over.
async fn forget_old_keys(prefix: &str) {
    if !first_use("redis", prefix) {
        return;
    }
    let url = redis();
    let client =
        redis::Client::open(url.as_str()).unwrap_or_else(|e| unavailable("redis", &url, e));
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| unavailable("redis", &url, e));
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}_*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        let old: Vec<&String> = keys.iter().filter(|k| left_over(prefix, k)).collect();
        if !old.is_empty() {
            redis::cmd("UNLINK")
                .arg(&old)
                .query_async::<()>(&mut conn)
                .await
                .unwrap();
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}

/// A fresh key prefix on the Redis server: no key starts with it yet.
pub async fn redis_prefix(prefix: &str) -> String {
    forget_old_keys(prefix).await;
    fresh_name(prefix)
}

/// A URL of the Redis server with a fresh key prefix.
pub async fn redis_url(prefix: &str) -> String {
    let fresh = redis_prefix(prefix).await;
    let url = redis();
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}prefix={fresh}")
}

/// The database a MySQL URL names (the path after the host), if any.
fn database_of(url: &str) -> Option<&str> {
    let base = url.split_once('?').map_or(url, |(base, _)| base);
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let path = &base[after_scheme..];
    path.find('/')
        .map(|i| &path[i + 1..])
        .filter(|db| !db.is_empty())
}

/// `url` naming `database` instead of its own (or of none); its query kept.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(base, query)| (base, Some(query)));
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let server = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    match query {
        Some(query) => format!("{server}/{database}?{query}"),
        None => format!("{server}/{database}"),
    }
}

/// Runs `statements` on the MySQL/MariaDB server, in order.
async fn mysql_admin(statements: impl IntoIterator<Item = String>) {
    let url = mysql();
    let admin = sqlx::MySqlPool::connect(&url)
        .await
        .unwrap_or_else(|e| unavailable("mysql", &url, e));
    for ddl in statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
            .execute(&admin)
            .await
            .unwrap();
    }
    admin.close().await;
}

/// Once per run and prefix: drops the databases of runs that are over.
async fn forget_old_databases(prefix: &str) {
    if !first_use("mysql", prefix) {
        return;
    }
    let url = mysql();
    let admin = sqlx::MySqlPool::connect(&url)
        .await
        .unwrap_or_else(|e| unavailable("mysql", &url, e));
    // LEFT, not LIKE: `_` in a prefix is a LIKE wildcard.
    let databases: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(schema_name AS CHAR) FROM information_schema.schemata \
         WHERE LEFT(schema_name, CHAR_LENGTH(?)) = ?",
    )
    .bind(prefix)
    .bind(prefix)
    .fetch_all(&admin)
    .await
    .unwrap();
    admin.close().await;
    let old = databases.into_iter().filter(|d| left_over(prefix, d));
    mysql_admin(old.map(|d| format!("DROP DATABASE IF EXISTS `{d}`"))).await;
}

/// A URL of the MySQL/MariaDB server naming a fresh, empty database.
pub async fn mysql_url(prefix: &str) -> String {
    forget_old_databases(prefix).await;
    let database = fresh_name(prefix);
    mysql_admin([format!("CREATE DATABASE `{database}`")]).await;
    with_database(&mysql(), &database)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mysql_url_gets_its_database_replaced_and_its_query_kept() {
        let cases = [
            ("mysql://root@h:3306", None, "mysql://root@h:3306/d"),
            ("mysql://root@h:3306/", None, "mysql://root@h:3306/d"),
            (
                "mysql://root@h:3306/test",
                Some("test"),
                "mysql://root@h:3306/d",
            ),
            (
                "mysql://u:p@h/test?ssl-mode=disabled",
                Some("test"),
                "mysql://u:p@h/d?ssl-mode=disabled",
            ),
            (
                "mysql://h?ssl-mode=disabled",
                None,
                "mysql://h/d?ssl-mode=disabled",
            ),
        ];
        for (url, database, fresh) in cases {
            assert_eq!(database_of(url), database, "{url}");
            assert_eq!(with_database(url, "d"), fresh, "{url}");
        }
    }

    #[test]
    fn only_names_of_runs_that_are_over_are_left_over() {
        let (secs, pid) = *run();
        assert!(!left_over("p", &fresh_name("p")));
        assert!(!left_over(
            "p",
            &format!("p_{secs}_{}_0", std::process::id())
        ));
        // An hour-old run is over, and so is one whose process is gone (no pid reaches 2^22).
        assert!(left_over("p", &format!("p_{}_{pid}_0", secs - 7200)));
        assert!(left_over("p", &format!("p_{secs}_4194304_3:{{scope}}:r:k")));
        assert!(!left_over("p", &format!("p_x_{}_0", secs - 7200)));
        assert!(!left_over("p", &format!("q_{}_{pid}_0", secs - 7200)));
        assert!(!left_over("p", &format!("p_other_{}_{pid}_0", secs - 7200)));
    }
}
