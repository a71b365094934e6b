//! The transactional inbox on a real file with a pool of connections: the dedup record and the
//! business writes commit or roll back together, concurrent duplicates never run the business
//! code twice, and the inbox shares one history with `SqliteStore`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use oncely_core::{Error, Fingerprint, Key, LostReason, ManualClock, Oncely, Scope};
use oncely_sqlite::inbox::{self, Inbox, InboxClaim, SqliteInbox};
use oncely_sqlite::sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use oncely_sqlite::{SqliteOptions, SqliteStore, sqlx};

/// A pool of `connections` on a new file in `dir`, not migrated yet; and the file's path.
async fn pool(dir: &Path, connections: u32) -> (SqlitePool, PathBuf) {
    let path = dir.join("shop.db");
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .busy_timeout(Duration::from_secs(30));
    let pool = SqlitePoolOptions::new()
        .max_connections(connections)
        .connect_with(options)
        .await
        .unwrap();
    (pool, path)
}

/// A pool on a migrated file that also holds the inventory example's tables.
async fn inventory(dir: &Path, connections: u32) -> (SqlitePool, PathBuf) {
    let (pool, path) = pool(dir, connections).await;
    inbox::migrate(&mut pool.acquire().await.unwrap())
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, event_id TEXT NOT NULL, item TEXT NOT NULL); \
         CREATE TABLE stock (item TEXT PRIMARY KEY, qty INTEGER NOT NULL); \
         INSERT INTO stock VALUES ('apple', 100);",
    )
    .execute(&pool)
    .await
    .unwrap();
    (pool, path)
}

async fn counts(pool: &SqlitePool) -> (i64, i64) {
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(pool)
        .await
        .unwrap();
    let qty: i64 = sqlx::query_scalar("SELECT qty FROM stock WHERE item = 'apple'")
        .fetch_one(pool)
        .await
        .unwrap();
    (orders, qty)
}

async fn take_one_apple(tx: &mut sqlx::SqliteConnection, event: &str) {
    sqlx::query("INSERT INTO orders (event_id, item) VALUES (?1, 'apple')")
        .bind(event.to_owned())
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE stock SET qty = qty - 1 WHERE item = 'apple'")
        .execute(&mut *tx)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_deliveries_place_one_order_and_take_stock_once() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, _) = inventory(dir.path(), 8).await;
    let inbox = Inbox::new(Scope::new("orders-consumer").unwrap());
    let executed = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (pool, inbox, executed, barrier) = (
            pool.clone(),
            inbox.clone(),
            executed.clone(),
            barrier.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let key = Key::new("evt-order-1001").unwrap();
            barrier.wait().await;
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
            match inbox.claim(&mut tx, &key, None).await.unwrap() {
                InboxClaim::New => {
                    executed.fetch_add(1, Ordering::SeqCst);
                    take_one_apple(&mut tx, "evt-order-1001").await;
                    inbox
                        .record_outcome(&mut tx, &key, b"order placed")
                        .await
                        .unwrap();
                    tx.commit().await.unwrap();
                }
                InboxClaim::Duplicate(record) => {
                    assert_eq!(record.outcome(), Some(&b"order placed"[..]));
                    tx.rollback().await.unwrap();
                }
                other => panic!("{other:?}"),
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(executed.load(Ordering::SeqCst), 1);
    assert_eq!(counts(&pool).await, (1, 99));
}

#[tokio::test]
async fn a_rolled_back_claim_leaves_the_key_claimable() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, _) = inventory(dir.path(), 2).await;
    let inbox = Inbox::new(Scope::default());
    let key = Key::new("evt-7").unwrap();

    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    assert_eq!(
        inbox.claim(&mut tx, &key, None).await.unwrap(),
        InboxClaim::New
    );
    take_one_apple(&mut tx, "evt-7").await;
    tx.rollback().await.unwrap(); // the handler failed after its claim

    assert_eq!(counts(&pool).await, (0, 100));
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    assert_eq!(
        inbox.claim(&mut tx, &key, None).await.unwrap(),
        InboxClaim::New
    );
    take_one_apple(&mut tx, "evt-7").await;
    tx.commit().await.unwrap();
    assert_eq!(counts(&pool).await, (1, 99));

    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    assert!(matches!(
        inbox.claim(&mut tx, &key, None).await.unwrap(),
        InboxClaim::Duplicate(_)
    ));
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn the_inbox_and_the_store_share_one_history_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, path) = inventory(dir.path(), 2).await;
    let scope = Scope::new("payments").unwrap();
    let inbox = Inbox::new(scope.clone());
    let oncely = Oncely::new(Arc::new(
        SqliteStore::open(SqliteOptions::new(&path)).unwrap(),
    ));
    // Canonical UUID keys are packed into 16 bytes: both sides must agree on that.
    let from_store = Key::new("0f8fad5b-d9cb-469f-a165-70867728950e").unwrap();
    let from_inbox = Key::new("7c9e6679-7425-40de-944b-e07fc1f90ae7").unwrap();

    // Store -> inbox: a claim made through the store, still in progress, then completed.
    let claim = oncely
        .claim(&scope, &from_store, None)
        .await
        .unwrap()
        .into_new()
        .unwrap();
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    assert!(matches!(
        inbox.claim(&mut tx, &from_store, None).await.unwrap(),
        InboxClaim::InProgress { retry_after } if retry_after > Duration::ZERO
    ));
    tx.rollback().await.unwrap();
    oncely.complete(&claim, b"paid").await.unwrap();
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    match inbox.claim(&mut tx, &from_store, None).await.unwrap() {
        InboxClaim::Duplicate(record) => assert_eq!(record.outcome(), Some(&b"paid"[..])),
        other => panic!("{other:?}"),
    }
    tx.rollback().await.unwrap();

    // Inbox -> store: done in a transaction, then a duplicate to the store.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    assert_eq!(
        inbox.claim(&mut tx, &from_inbox, None).await.unwrap(),
        InboxClaim::New
    );
    inbox
        .record_outcome(&mut tx, &from_inbox, b"shipped")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    match oncely.claim(&scope, &from_inbox, None).await.unwrap() {
        oncely_core::ClaimOutcome::Duplicate(record) => {
            assert_eq!(record.outcome(), Some(&b"shipped"[..]))
        }
        other => panic!("{other:?}"),
    }

    // One representation on disk: both keys as 16-byte BLOBs in the one records table.
    let stored: Vec<(String, i64)> =
        sqlx::query_as("SELECT typeof(key), length(key) FROM oncely_records ORDER BY key")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(stored, vec![("blob".into(), 16), ("blob".into(), 16)]);
}

#[tokio::test]
async fn an_expired_store_claim_is_taken_over_inside_the_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, path) = inventory(dir.path(), 2).await;
    let clock = ManualClock::default();
    let scope = Scope::new("payments").unwrap();
    let key = Key::new("evt-11").unwrap();
    let oncely = Oncely::new(Arc::new(
        SqliteStore::open(SqliteOptions::new(&path)).unwrap(),
    ))
    .with_clock(clock.clone())
    .with_lease(Duration::from_secs(30));
    // A holder outside any transaction claims the key, then dies.
    let crashed = oncely
        .claim(&scope, &key, None)
        .await
        .unwrap()
        .into_new()
        .unwrap();
    let inbox = Inbox::new(scope.clone()).with_clock(clock.clone());
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    assert!(matches!(
        inbox.claim(&mut tx, &key, None).await.unwrap(),
        InboxClaim::InProgress { .. }
    ));
    tx.rollback().await.unwrap();
    clock.advance(Duration::from_secs(31));

    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    assert_eq!(
        inbox.claim(&mut tx, &key, None).await.unwrap(),
        InboxClaim::New
    );
    take_one_apple(&mut tx, "evt-11").await;
    tx.commit().await.unwrap();

    let record = oncely.get(&scope, &key).await.unwrap().expect("recorded");
    assert!(record.is_completed());
    assert_eq!(record.attempt, 2);
    // The dead holder is fenced out.
    assert!(matches!(
        oncely.complete(&crashed, b"late").await,
        Err(Error::ClaimLost {
            reason: LostReason::TakenOver,
            ..
        })
    ));
    assert_eq!(counts(&pool).await, (1, 99));
}

#[tokio::test]
async fn the_same_key_with_another_payload_is_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, _) = inventory(dir.path(), 2).await;
    let inbox = Inbox::new(Scope::default());
    let key = Key::new("evt-12").unwrap();
    let (paid, refunded) = (
        Fingerprint::of_bytes(b"paid"),
        Fingerprint::of_bytes(b"refund"),
    );

    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    assert_eq!(
        inbox.claim(&mut tx, &key, Some(paid)).await.unwrap(),
        InboxClaim::New
    );
    tx.commit().await.unwrap();

    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    assert_eq!(
        inbox.claim(&mut tx, &key, Some(refunded)).await.unwrap(),
        InboxClaim::Conflict { stored: Some(paid) }
    );
    assert!(matches!(
        inbox.claim(&mut tx, &key, Some(paid)).await.unwrap(),
        InboxClaim::Duplicate(_)
    ));
    // No fingerprint given: no payload check asked for.
    assert!(matches!(
        inbox.claim(&mut tx, &key, None).await.unwrap(),
        InboxClaim::Duplicate(_)
    ));
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn after_retention_the_key_is_new_again() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, _) = inventory(dir.path(), 2).await;
    let clock = ManualClock::default();
    let inbox = Inbox::new(Scope::default())
        .with_clock(clock.clone())
        .with_retention(Duration::from_secs(3600));
    let key = Key::new("evt-13").unwrap();
    for expected_attempt in [1, 2] {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
        assert_eq!(
            inbox.claim(&mut tx, &key, None).await.unwrap(),
            InboxClaim::New
        );
        tx.commit().await.unwrap();
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
        match inbox.claim(&mut tx, &key, None).await.unwrap() {
            InboxClaim::Duplicate(record) => assert_eq!(record.attempt, expected_attempt),
            other => panic!("{other:?}"),
        }
        tx.rollback().await.unwrap();
        clock.advance(Duration::from_secs(3601));
    }
}

#[tokio::test]
async fn a_deferred_transaction_that_read_first_fails_clearly_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, _) = inventory(dir.path(), 2).await;
    let inbox = Inbox::new(Scope::default());
    let key = Key::new("evt-14").unwrap();

    // A plain (deferred) BEGIN: reading takes a snapshot, not the write lock...
    let mut stale = pool.begin().await.unwrap();
    let _: i64 = sqlx::query_scalar("SELECT qty FROM stock WHERE item = 'apple'")
        .fetch_one(&mut *stale)
        .await
        .unwrap();
    // ...and another delivery commits meanwhile.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    assert_eq!(
        inbox.claim(&mut tx, &key, None).await.unwrap(),
        InboxClaim::New
    );
    take_one_apple(&mut tx, "evt-14").await;
    tx.commit().await.unwrap();

    // The stale snapshot cannot be upgraded to a writer: SQLite answers busy at once.
    let err = inbox.claim(&mut stale, &key, None).await.unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert!(err.to_string().contains("BEGIN IMMEDIATE"), "{err}");
    stale.rollback().await.unwrap();

    // Retried the right way, the delivery is a duplicate; the effect happened once.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    assert!(matches!(
        inbox.claim(&mut tx, &key, None).await.unwrap(),
        InboxClaim::Duplicate(_)
    ));
    tx.rollback().await.unwrap();
    assert_eq!(counts(&pool).await, (1, 99));
}

#[tokio::test]
async fn a_claim_on_a_fresh_file_applies_the_schema_the_store_then_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, path) = pool(dir.path(), 2).await; // no migrate
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
    inbox::migrate(&mut pool.acquire().await.unwrap())
        .await
        .unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn record_outcome_without_a_claim_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, _) = inventory(dir.path(), 2).await;
    let inbox = Inbox::new(Scope::default());
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let err = inbox
        .record_outcome(&mut tx, &Key::new("never-claimed").unwrap(), b"x")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("claim the key"), "{err}");
}

#[tokio::test]
async fn a_batch_answers_in_order_and_rolls_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, _) = inventory(dir.path(), 2).await;
    let inbox = Inbox::new(Scope::new("orders-consumer").unwrap());
    let key = |k: &str| Key::new(k).unwrap();
    let (one, two) = (
        Some(Fingerprint::of_bytes(b"order 1")),
        Some(Fingerprint::of_bytes(b"order 2")),
    );

    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let claims = inbox
        .claim_many(
            &mut tx,
            &[
                (key("b"), one),
                (key("a"), one),
                (key("b"), one),
                (key("b"), two),
            ],
        )
        .await
        .unwrap();
    assert_eq!(claims[..2], [InboxClaim::New, InboxClaim::New]);
    assert!(matches!(claims[2], InboxClaim::Duplicate(_)), "{claims:?}");
    assert!(
        matches!(claims[3], InboxClaim::Conflict { .. }),
        "{claims:?}"
    );
    tx.commit().await.unwrap();

    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let claims = inbox
        .claim_many(&mut tx, &[(key("c"), one), (key("a"), one)])
        .await
        .unwrap();
    assert_eq!(claims[0], InboxClaim::New);
    assert!(matches!(claims[1], InboxClaim::Duplicate(_)), "{claims:?}");
    tx.rollback().await.unwrap();

    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let claims = inbox
        .claim_many(&mut tx, &[(key("a"), one), (key("c"), one)])
        .await
        .unwrap();
    assert!(matches!(claims[0], InboxClaim::Duplicate(_)), "{claims:?}");
    assert_eq!(claims[1], InboxClaim::New);
    tx.commit().await.unwrap();
}
