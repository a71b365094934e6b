//! The consumer offsets suite (`oncely_conformance::offsets`) against the MySQL/MariaDB server on
//! loopback, with handlers' transactions under both isolation levels users run InnoDB with:
//! REPEATABLE READ (its default) as `mysql::*`, and READ COMMITTED as `mysql-read-committed::*`.
//! Each test on a fresh database, migrated by `MySqlOffsets::connect`, through a pool of real
//! connections. `ONCELY_TEST_MYSQL` overrides the server URL.

mod support;

use oncely_conformance::offsets::{self, OffsetsDatabase};
use oncely_core::Error;
use oncely_mysql::offsets::MySqlOffsets;
use sqlx::{MySql, MySqlPool, Transaction};

/// A fresh database: the handlers' pool, at one isolation level, and the consumer's offsets.
struct Consumer {
    pool: MySqlPool,
    offsets: MySqlOffsets,
}

impl Consumer {
    async fn fresh(isolation: &'static str) -> Consumer {
        let url = oncely_conformance::servers::mysql_url("oncely_offsets").await;
        // Connecting applies oncely's schema.
        let offsets = MySqlOffsets::connect(&url).await.expect("connect");
        // A connection for every transaction of the suite's concurrent saves.
        let pool = support::pool(&url, isolation, 40).await;
        Consumer { pool, offsets }
    }
}

impl OffsetsDatabase for Consumer {
    type Tx = Transaction<'static, MySql>;

    async fn begin(&self) -> Self::Tx {
        self.pool.begin().await.unwrap()
    }

    oncely_conformance::sqlx_offsets_calls!(MySqlOffsets);

    fn is_deadlock(&self, error: &Error) -> bool {
        support::is_deadlock(error)
    }
}

fn main() {
    let mut trials = offsets::trials("mysql", || Consumer::fresh("REPEATABLE READ"), Vec::new());
    trials.extend(offsets::trials(
        "mysql-read-committed",
        || Consumer::fresh("READ COMMITTED"),
        Vec::new(),
    ));
    offsets::main(trials);
}
