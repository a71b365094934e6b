//! The consumer offsets suite (`oncely_conformance::offsets`) against the PostgreSQL server on
//! loopback: each test on a fresh schema, migrated by `PostgresOffsets::connect`, through a pool
//! of real connections. `ONCELY_TEST_POSTGRES` overrides the server URL.

mod support;

use oncely_conformance::offsets::{self, OffsetsDatabase};
use oncely_core::Error;
use oncely_postgres::offsets::PostgresOffsets;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres, Transaction};

/// A fresh schema: the handlers' pool, and the consumer's offsets.
struct Consumer {
    pool: PgPool,
    offsets: PostgresOffsets,
}

impl Consumer {
    async fn fresh() -> Consumer {
        let url = oncely_conformance::servers::postgres_url("oncely_offsets").await;
        // Connecting applies oncely's schema.
        let offsets = PostgresOffsets::connect(&url).await.expect("connect");
        // A connection for every transaction of the suite's concurrent saves.
        let pool = PgPoolOptions::new()
            .max_connections(40)
            .connect(&url)
            .await
            .unwrap();
        Consumer { pool, offsets }
    }
}

impl OffsetsDatabase for Consumer {
    type Tx = Transaction<'static, Postgres>;

    async fn begin(&self) -> Self::Tx {
        self.pool.begin().await.unwrap()
    }

    oncely_conformance::sqlx_offsets_calls!(PostgresOffsets);

    fn is_deadlock(&self, error: &Error) -> bool {
        support::is_deadlock(error)
    }
}

fn main() {
    offsets::main(offsets::trials("postgres", Consumer::fresh, Vec::new()));
}
