//! The servers on loopback for tests that run against PostgreSQL and Redis: a fresh schema or
//! key prefix per call, named `<prefix>_<run start>_<pid>_<n>`; what runs that are over left
//! behind is dropped once per run, while a run still going (another worktree's) keeps its data.
//! Each test binary passes its own `prefix`.
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The PostgreSQL server under test: `ONCELY_TEST_POSTGRES`, or the one on loopback.
pub fn postgres() -> String {
    std::env::var("ONCELY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
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

/// A name no other test of any run has used.
fn fresh_name(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let (secs, pid) = run();
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}_{secs}_{pid}_{n}")
}

/// Whether `name` (a schema, or a Redis key) belongs to an earlier run that is over.
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

/// Once per run: drops the schemas of runs that are over.
async fn forget_old_schemas(prefix: &str) {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_init(|| async {
        let url = postgres();
        let admin = sqlx::PgPool::connect(&url)
            .await
            .unwrap_or_else(|e| unavailable("postgres", &url, e));
        let schemas: Vec<String> = sqlx::query_scalar(
            "SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)",
        )
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
    })
    .await;
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

/// Once per run: removes the keys of runs that are over.
async fn forget_old_keys(prefix: &str) {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_init(|| async {
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
    })
    .await;
}

/// A URL of the Redis server with a fresh key prefix.
pub async fn redis_url(prefix: &str) -> String {
    forget_old_keys(prefix).await;
    let url = redis();
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}prefix={}", fresh_name(prefix))
}
