//! The Idempotency-Key layer over real HTTP on loopback: an axum app behind the layer, served by
//! `axum::serve` on 127.0.0.1:0, driven by hyper-util's client, against the memory store, the
//! SQLite store in a temporary directory, PostgreSQL (a fresh schema per test; the server at
//! `ONCELY_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/test`) and Redis (a fresh
//! key prefix per test; `ONCELY_TEST_REDIS`, default `redis://127.0.0.1:6379`). Each test runs
//! once per store.

#[derive(Clone, Copy, Debug)]
enum StoreKind {
    Memory,
    Sqlite,
    Postgres,
    Redis,
}

/// Each test of a module, once per store: `<module>::<store>::<test>`.
macro_rules! per_store {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::StoreKind::Memory).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::StoreKind::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::StoreKind::Postgres).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::StoreKind::Redis).await
                }
            )*
        }
    };
}

// The macro is defined above the modules that use it.
mod in_flight;
mod keys;
mod outcomes;
mod server;
mod services;
mod upstream;
