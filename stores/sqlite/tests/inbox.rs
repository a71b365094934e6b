//! The transactional inbox suite (`oncely_conformance::inbox`) on real files, each test on a
//! new one holding oncely's tables and the inventory example's, through a pool of as many
//! connections as the suite's storm has deliveries: SQLite runs one writer at a time, and the
//! others really wait on its lock (`BEGIN IMMEDIATE`, with a busy timeout). Then what only
//! SQLite has: deferred transactions, the schema a claim applies to a fresh file, keys packed
//! on disk, and an outcome refused without a claim.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use oncely_conformance::inbox::{self, InboxDatabase, Inventory};
use oncely_core::inbox::{Inbox, InboxClaim};
use oncely_core::{Error, Key, Oncely, Scope, Store};
use oncely_sqlite::inbox::{self as sqlite_inbox, SqliteInbox};
use oncely_sqlite::sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use oncely_sqlite::sqlx::{Sqlite, Transaction};
use oncely_sqlite::{SqliteOptions, SqliteStore, sqlx};

/// Connections per pool: one for each delivery of the suite's storm, so all of them contend
/// for the write lock at once.
const CONNECTIONS: u32 = 64;

/// A pool on the file `path` (created if missing, not migrated).
async fn pool(path: &Path) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .busy_timeout(Duration::from_secs(30));
    SqlitePoolOptions::new()
        .max_connections(CONNECTIONS)
        .connect_with(options)
        .await
        .unwrap()
}

/// A new file in a directory of its own, migrated, with the inventory example's tables.
struct Shop {
    pool: SqlitePool,
    path: PathBuf,
    dir: tempfile::TempDir,
}

impl Shop {
    async fn fresh() -> Shop {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shop.db");
        let pool = pool(&path).await;
        sqlite_inbox::migrate(&mut pool.acquire().await.unwrap())
            .await
            .unwrap();
        for ddl in inbox::INVENTORY_TABLES {
            sqlx::query(ddl).execute(&pool).await.unwrap();
        }
        Shop { pool, path, dir }
    }
}

impl InboxDatabase for Shop {
    type Tx = Transaction<'static, Sqlite>;

    async fn begin(&self) -> Self::Tx {
        self.pool.begin_with("BEGIN IMMEDIATE").await.unwrap()
    }

    oncely_conformance::sqlx_inbox_calls!(SqliteInbox, pool);

    async fn place_order(&self, tx: &mut Self::Tx, event: &Key) {
        sqlx::query("INSERT INTO orders (event_id, item) VALUES (?1, 'apple')")
            .bind(event.as_str().to_owned())
            .execute(&mut **tx)
            .await
            .unwrap();
    }

    async fn store(&self) -> Arc<dyn Store> {
        Arc::new(SqliteStore::open(SqliteOptions::new(&self.path)).expect("open store"))
    }

    fn is_deadlock(&self, _: &Error) -> bool {
        // One writer at a time, the others wait on the lock: SQLite has no deadlock victims.
        false
    }
}

async fn a_deferred_transaction_that_read_first_fails_clearly_and_loses_nothing(db: Arc<Shop>) {
    let inbox = Inbox::new(Scope::default());
    let key = Key::new("evt-14").unwrap();

    // A plain (deferred) BEGIN: reading takes a snapshot, not the write lock...
    let mut stale = db.pool.begin().await.unwrap();
    let _: i64 = sqlx::query_scalar("SELECT qty FROM stock WHERE item = 'apple'")
        .fetch_one(&mut *stale)
        .await
        .unwrap();
    // ...and another delivery commits meanwhile.
    let mut tx = db.begin().await;
    assert_eq!(
        inbox.claim(&mut tx, &key, None).await.unwrap(),
        InboxClaim::New
    );
    db.sell_an_apple(&mut tx, &key).await;
    tx.commit().await.unwrap();

    // The stale snapshot cannot be upgraded to a writer: SQLite answers busy at once.
    let err = inbox.claim(&mut stale, &key, None).await.unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert!(err.to_string().contains("BEGIN IMMEDIATE"), "{err}");
    stale.rollback().await.unwrap();

    // Retried the right way, the delivery is a duplicate; the effect happened once.
    let mut tx = db.begin().await;
    assert!(matches!(
        inbox.claim(&mut tx, &key, None).await.unwrap(),
        InboxClaim::Duplicate(_)
    ));
    tx.rollback().await.unwrap();
    assert_eq!(db.inventory().await, Inventory::ONE_ORDER);
}

async fn a_claim_on_a_fresh_file_applies_the_schema_the_store_then_accepts(db: Arc<Shop>) {
    // Another file beside the shop's, never migrated.
    let path = db.dir.path().join("fresh.db");
    let pool = pool(&path).await;
    let inbox = Inbox::new(Scope::default());
    let key = Key::new("evt-15").unwrap();
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    assert_eq!(
        inbox.claim(&mut tx, &key, None).await.unwrap(),
        InboxClaim::New
    );
    tx.commit().await.unwrap();
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        version,
        i64::from(oncely_sqlite::MIGRATIONS.last().unwrap().0)
    );

    // The store opens the same file without migrating again and sees the record; so does a
    // store opened with migrate=false, which demands the schema be there already.
    let mut options = SqliteOptions::new(&path);
    options.migrate = false;
    let oncely = Oncely::new(Arc::new(SqliteStore::open(options).unwrap()));
    assert!(
        oncely
            .get(&Scope::default(), &key)
            .await
            .unwrap()
            .is_some_and(|r| r.is_completed())
    );
    // migrate() on an up-to-date file changes nothing, and switches it to WAL.
    sqlite_inbox::migrate(&mut pool.acquire().await.unwrap())
        .await
        .unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

async fn uuid_keys_of_the_inbox_and_the_store_are_both_packed_into_16_byte_blobs(db: Arc<Shop>) {
    let scope = Scope::new("payments").unwrap();
    let inbox = Inbox::new(scope.clone());
    let oncely = Oncely::new(db.store().await);
    let from_store = Key::new("0f8fad5b-d9cb-469f-a165-70867728950e").unwrap();
    let from_inbox = Key::new("7c9e6679-7425-40de-944b-e07fc1f90ae7").unwrap();

    let claim = oncely
        .claim(&scope, &from_store, None)
        .await
        .unwrap()
        .into_new()
        .unwrap();
    oncely.complete(&claim, b"paid").await.unwrap();
    let mut tx = db.begin().await;
    assert_eq!(
        inbox.claim(&mut tx, &from_inbox, None).await.unwrap(),
        InboxClaim::New
    );
    tx.commit().await.unwrap();

    // One representation on disk: both keys as 16-byte BLOBs in the one records table.
    let stored: Vec<(String, i64)> =
        sqlx::query_as("SELECT typeof(key), length(key) FROM oncely_records ORDER BY key")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(stored, vec![("blob".into(), 16), ("blob".into(), 16)]);
}

fn main() {
    let own = oncely_conformance::inbox_tests![
        a_deferred_transaction_that_read_first_fails_clearly_and_loses_nothing,
        a_claim_on_a_fresh_file_applies_the_schema_the_store_then_accepts,
        uuid_keys_of_the_inbox_and_the_store_are_both_packed_into_16_byte_blobs,
    ];
    inbox::main(inbox::trials("sqlite", Shop::fresh, own));
}
