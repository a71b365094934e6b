//! The transactional inbox suite (`oncely_conformance::inbox`) against the PostgreSQL server on
//! loopback: each test on a fresh schema holding oncely's tables and the inventory example's,
//! through a pool of real connections. `ONCELY_TEST_POSTGRES` overrides the server URL.

use std::sync::Arc;

use oncely_conformance::inbox::{self, InboxDatabase, Inventory};
use oncely_core::inbox::{Inbox, InboxClaim};
use oncely_core::{Error, Fingerprint, Key, Result, Store, async_trait};
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
        sqlx::raw_sql(
            "CREATE TABLE orders (id serial PRIMARY KEY, event_id text NOT NULL, item text NOT NULL); \
             CREATE TABLE stock (item text PRIMARY KEY, qty integer NOT NULL); \
             INSERT INTO stock VALUES ('apple', 100);",
        )
        .execute(&pool)
        .await
        .unwrap();
        Shop { pool, url }
    }
}

#[async_trait]
impl InboxDatabase for Shop {
    type Tx = Transaction<'static, Postgres>;

    async fn begin(&self) -> Self::Tx {
        self.pool.begin().await.unwrap()
    }

    async fn claim(
        &self,
        tx: &mut Self::Tx,
        inbox: &Inbox,
        key: &Key,
        fingerprint: Option<Fingerprint>,
    ) -> Result<InboxClaim> {
        inbox.claim(tx, key, fingerprint).await
    }

    async fn claim_many(
        &self,
        tx: &mut Self::Tx,
        inbox: &Inbox,
        items: &[(Key, Option<Fingerprint>)],
    ) -> Result<Vec<InboxClaim>> {
        inbox.claim_many(tx, items).await
    }

    async fn record_outcome(
        &self,
        tx: &mut Self::Tx,
        inbox: &Inbox,
        key: &Key,
        outcome: &[u8],
    ) -> Result<()> {
        inbox.record_outcome(tx, key, outcome).await
    }

    async fn place_order(&self, tx: &mut Self::Tx, event: &Key) {
        sqlx::query("INSERT INTO orders (event_id, item) VALUES ($1, 'apple')")
            .bind(event.as_str())
            .execute(&mut **tx)
            .await
            .unwrap();
    }

    async fn take_apple(&self, tx: &mut Self::Tx) {
        sqlx::query("UPDATE stock SET qty = qty - 1 WHERE item = 'apple'")
            .execute(&mut **tx)
            .await
            .unwrap();
    }

    async fn commit(&self, tx: Self::Tx) {
        tx.commit().await.unwrap();
    }

    async fn rollback(&self, tx: Self::Tx) {
        tx.rollback().await.unwrap();
    }

    async fn inventory(&self) -> Inventory {
        let (orders, events, apples): (i64, i64, i32) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT event_id), \
             (SELECT qty FROM stock WHERE item = 'apple') FROM orders",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap();
        Inventory {
            orders,
            events,
            apples: apples.into(),
        }
    }

    async fn store(&self) -> Arc<dyn Store> {
        Arc::new(PostgresStore::connect(&self.url).await.expect("connect"))
    }

    fn is_deadlock(&self, error: &Error) -> bool {
        // SQLSTATE 40P01: deadlock_detected.
        matches!(error, Error::Backend { source, .. }
            if source.downcast_ref::<sqlx::Error>()
                .and_then(sqlx::Error::as_database_error)
                .and_then(|e| e.code())
                .is_some_and(|code| code == "40P01"))
    }
}

fn main() {
    inbox::main(inbox::trials("postgres", Shop::fresh, Vec::new()));
}
