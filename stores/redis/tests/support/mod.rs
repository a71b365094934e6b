//! What the Redis test binaries share: the server under test and a fresh key prefix per store.

#![allow(dead_code)] // each test binary uses part of it

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Test prefixes start with this, then the run's start (Unix seconds), pid and a counter.
pub const TEST_PREFIX: &str = "oncelytest";

/// The server under test: `ONCELY_TEST_REDIS`, or the one on loopback.
pub fn server() -> String {
    std::env::var("ONCELY_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// `url` with `param` added to its query.
pub fn with_param(url: &str, param: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{param}")
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// A prefix no other store of any run has used: its keys are this store's alone.
pub fn fresh_prefix() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{TEST_PREFIX}-{}-{}-{}",
        unix_secs(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// A URL of the server under test with a fresh prefix.
pub fn fresh_url() -> String {
    with_param(&server(), &format!("prefix={}", fresh_prefix()))
}

/// Fails loudly, with the reason, when the server under test cannot be reached; then removes
/// the keys of test runs that started over two hours ago (runs still going are left alone).
pub async fn check_server_and_forget_old_runs() {
    let url = server();
    if let Err(e) = oncely_redis::RedisStore::connect(&url).await {
        panic!(
            "the Redis tests need a server at {url} (set ONCELY_TEST_REDIS to use another): {e}"
        );
    }
    let client = redis::Client::open(url.as_str()).expect("server URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let cutoff = unix_secs().saturating_sub(2 * 3600);
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{TEST_PREFIX}-*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .expect("SCAN");
        let old: Vec<&String> = keys
            .iter()
            .filter(|k| {
                k[TEST_PREFIX.len() + 1..]
                    .split('-')
                    .next()
                    .and_then(|s| s.parse::<u64>().ok())
                    .is_some_and(|started| started < cutoff)
            })
            .collect();
        if !old.is_empty() {
            redis::cmd("UNLINK")
                .arg(&old)
                .query_async::<()>(&mut conn)
                .await
                .expect("UNLINK");
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}
