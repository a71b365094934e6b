//! `oncely serve` end to end: the binary as a process on loopback, a real SQLite store, and a
//! small upstream in this process that counts how often each Idempotency-Key is executed. The
//! storm also runs against PostgreSQL (`ONCELY_TEST_POSTGRES`, default
//! `postgres://postgres@127.0.0.1:5432/test`; a fresh schema) and Redis (`ONCELY_TEST_REDIS`,
//! default `redis://127.0.0.1:6379`; a fresh key prefix).

#[path = "../support/mod.rs"]
mod support;

mod client;
mod clock;
mod failures;
mod flags;
mod gateway;
mod https;
mod process;
mod replay;
mod storm;
mod upstream;

/// The PostgreSQL and Redis servers under test: each storm gets a schema (PostgreSQL) or a key
/// prefix (Redis) of its own, named `<PREFIX>_<run start, Unix s>_<pid>_<n>`; a run first drops
/// what earlier runs left (those whose process is gone, or that started over an hour ago).
/// Fresh schemas and key prefixes on the servers, named after this test binary.
mod servers {
    const PREFIX: &str = "oncely_serve_test";

    pub async fn postgres_url() -> String {
        oncely_conformance::servers::postgres_url(PREFIX).await
    }

    pub async fn redis_url() -> String {
        oncely_conformance::servers::redis_url(PREFIX).await
    }
}
