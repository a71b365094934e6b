//! The consumer offsets suite (`oncely_conformance::offsets`) on real files, each test on a new
//! one migrated by `SqliteOffsets::connect`, through a pool of as many connections as the
//! suite's concurrent saves: SQLite runs one writer at a time, and the others really wait on its
//! lock (`BEGIN IMMEDIATE`, with a busy timeout). Then what only SQLite has: the schema a save
//! applies to a fresh file.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use oncely_conformance::offsets::{self, OffsetsDatabase};
use oncely_core::Error;
use oncely_core::consumer::{OffsetStore, Position};
use oncely_sqlite::offsets::SqliteOffsets;
use oncely_sqlite::sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use oncely_sqlite::sqlx::{self, Sqlite, Transaction};

/// A pool on the file `path` (created if missing, not migrated), with a connection for every
/// transaction of the suite's concurrent saves.
async fn pool(path: &Path) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .busy_timeout(Duration::from_secs(30));
    SqlitePoolOptions::new()
        .max_connections(40)
        .connect_with(options)
        .await
        .unwrap()
}

/// A new file in a directory of its own: the handlers' pool, and the consumer's offsets.
struct Consumer {
    pool: SqlitePool,
    offsets: SqliteOffsets,
    dir: tempfile::TempDir,
}

impl Consumer {
    async fn fresh() -> Consumer {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("consumer.db");
        // Opening the offsets applies oncely's schema.
        let offsets = SqliteOffsets::connect(&format!("sqlite:{}", path.display()))
            .await
            .expect("open");
        let pool = pool(&path).await;
        Consumer { pool, offsets, dir }
    }
}

impl OffsetsDatabase for Consumer {
    type Tx = Transaction<'static, Sqlite>;

    async fn begin(&self) -> Self::Tx {
        self.pool.begin_with("BEGIN IMMEDIATE").await.unwrap()
    }

    oncely_conformance::sqlx_offsets_calls!(SqliteOffsets);

    fn is_deadlock(&self, _: &Error) -> bool {
        // One writer at a time, the others wait on the lock: SQLite has no deadlock victims.
        false
    }
}

async fn a_save_on_a_fresh_file_applies_the_schema_in_its_transaction(db: Arc<Consumer>) {
    // Another file beside the consumer's, never migrated.
    let pool = pool(&db.dir.path().join("fresh.db")).await;
    let position = Position {
        group: "billing".into(),
        topic: "orders".into(),
        partition: 3,
        offset: 17,
    };
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    SqliteOffsets::save(&mut tx, &position).await.unwrap();
    tx.commit().await.unwrap();

    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        version,
        i64::from(oncely_sqlite::MIGRATIONS.last().unwrap().0)
    );
    let offsets = SqliteOffsets::from_pool(pool, "sqlite:fresh.db");
    assert_eq!(offsets.load("billing", "orders").await.unwrap(), [(3, 18)]);
}

fn main() {
    let own = oncely_conformance::database_tests![
        a_save_on_a_fresh_file_applies_the_schema_in_its_transaction,
    ];
    offsets::main(offsets::trials("sqlite", Consumer::fresh, own));
}
