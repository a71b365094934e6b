//! The transactional inbox suite (`oncely_conformance::inbox`) against the MySQL/MariaDB server
//! on loopback, under both isolation levels users run InnoDB with: REPEATABLE READ (its
//! default) as `mysql::*`, and READ COMMITTED as `mysql-read-committed::*`. Each test on a
//! fresh database holding oncely's tables and the inventory example's, through a pool of real
//! connections. `ONCELY_TEST_MYSQL` overrides the server URL.

mod support;

use std::sync::Arc;

use oncely_conformance::inbox::{self, InboxDatabase};
use oncely_core::{Error, Key, Store};
use oncely_mysql::MySqlStore;
use oncely_mysql::inbox::MySqlInbox;
use sqlx::{MySql, MySqlPool, Transaction};

/// A fresh database with the inventory example's tables (InnoDB), whose connections run their
/// transactions at one isolation level; and its URL.
struct Shop {
    pool: MySqlPool,
    url: String,
}

impl Shop {
    async fn fresh(isolation: &'static str) -> Shop {
        let url = oncely_conformance::servers::mysql_url("oncely_inbox").await;
        // Opening the store applies oncely's schema.
        MySqlStore::connect(&url).await.expect("connect");
        // Enough connections for every delivery of the suite's storm at once.
        let pool = support::pool(&url, isolation, 70).await;
        for ddl in inbox::INVENTORY_TABLES {
            sqlx::query(ddl).execute(&pool).await.unwrap();
        }
        Shop { pool, url }
    }
}

impl InboxDatabase for Shop {
    type Tx = Transaction<'static, MySql>;

    async fn begin(&self) -> Self::Tx {
        self.pool.begin().await.unwrap()
    }

    oncely_conformance::sqlx_inbox_calls!(MySqlInbox, pool);

    async fn place_order(&self, tx: &mut Self::Tx, event: &Key) {
        sqlx::query("INSERT INTO orders (event_id, item) VALUES (?, 'apple')")
            .bind(event.as_str())
            .execute(&mut **tx)
            .await
            .unwrap();
    }

    async fn store(&self) -> Arc<dyn Store> {
        Arc::new(MySqlStore::connect(&self.url).await.expect("connect"))
    }

    fn is_deadlock(&self, error: &Error) -> bool {
        support::is_deadlock(error)
    }
}

fn main() {
    let mut trials = inbox::trials("mysql", || Shop::fresh("REPEATABLE READ"), Vec::new());
    trials.extend(inbox::trials(
        "mysql-read-committed",
        || Shop::fresh("READ COMMITTED"),
        Vec::new(),
    ));
    inbox::main(trials);
}
