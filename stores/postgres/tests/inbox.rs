//! The transactional inbox suite (`oncely_conformance::inbox`) against the PostgreSQL server on
//! loopback: each test on a fresh schema holding oncely's tables and the inventory example's,
//! through a pool of real connections. `ONCELY_TEST_POSTGRES` overrides the server URL.

mod support;

use std::sync::Arc;

use oncely_conformance::inbox::{self, InboxDatabase};
use oncely_core::{Error, Key, Store};
use oncely_postgres::PostgresStore;
use oncely_postgres::inbox::PostgresInbox;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres, Transaction};

/// A fresh schema with the inventory example's tables, and the URL that reaches it.
struct Shop {
    pool: PgPool,
    url: String,
}

impl Shop {
    async fn fresh() -> Shop {
        let url = oncely_conformance::servers::postgres_url("oncely_inbox").await;
        // Opening the store applies oncely's schema.
        PostgresStore::connect(&url).await.expect("connect");
        // Enough connections for every delivery of the suite's storm at once.
        let pool = PgPoolOptions::new()
            .max_connections(70)
            .connect(&url)
            .await
            .unwrap();
        for ddl in inbox::INVENTORY_TABLES {
            sqlx::query(ddl).execute(&pool).await.unwrap();
        }
        Shop { pool, url }
    }
}

impl InboxDatabase for Shop {
    type Tx = Transaction<'static, Postgres>;

    async fn begin(&self) -> Self::Tx {
        self.pool.begin().await.unwrap()
    }

    oncely_conformance::sqlx_inbox_calls!(PostgresInbox, pool);

    async fn place_order(&self, tx: &mut Self::Tx, event: &Key) {
        sqlx::query("INSERT INTO orders (event_id, item) VALUES ($1, 'apple')")
            .bind(event.as_str())
            .execute(&mut **tx)
            .await
            .unwrap();
    }

    async fn store(&self) -> Arc<dyn Store> {
        Arc::new(PostgresStore::connect(&self.url).await.expect("connect"))
    }

    fn is_deadlock(&self, error: &Error) -> bool {
        support::is_deadlock(error)
    }
}

fn main() {
    inbox::main(inbox::trials("postgres", Shop::fresh, Vec::new()));
}
