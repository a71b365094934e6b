//! The transactional inbox against the real server: the dedup record and the business writes
//! commit or roll back together, and concurrent duplicates never run the business code twice.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use oncely_core::{Key, Scope};
use oncely_mysql::MySqlStore;
use oncely_mysql::inbox::{Inbox, InboxClaim, MySqlInbox};
use sqlx::MySqlPool;
use sqlx::mysql::MySqlPoolOptions;

/// A pool on a fresh database holding oncely's tables and the inventory example's; and its URL.
async fn inventory(name: &str) -> (MySqlPool, String) {
    let url = support::fresh_database(&format!("oncely_inbox_{name}")).await;
    // Opening the store applies oncely's schema.
    MySqlStore::connect(&url).await.unwrap();
    let pool = MySqlPoolOptions::new()
        .max_connections(70)
        .connect(&url)
        .await
        .unwrap();
    for ddl in [
        "CREATE TABLE orders (id INT AUTO_INCREMENT PRIMARY KEY, event_id VARCHAR(64) NOT NULL, item VARCHAR(64) NOT NULL) ENGINE = InnoDB",
        "CREATE TABLE stock (item VARCHAR(64) PRIMARY KEY, qty INT NOT NULL) ENGINE = InnoDB",
        "INSERT INTO stock VALUES ('apple', 100)",
    ] {
        sqlx::query(ddl).execute(&pool).await.unwrap();
    }
    (pool, url)
}

async fn counts(pool: &MySqlPool) -> (i64, i32) {
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(pool)
        .await
        .unwrap();
    let qty: i32 = sqlx::query_scalar("SELECT qty FROM stock WHERE item = 'apple'")
        .fetch_one(pool)
        .await
        .unwrap();
    (orders, qty)
}

/// One delivery of the order event: claim, place the order and take stock if new, commit.
/// Answers whether this delivery did the work. A deadlock victim runs again, as users should.
async fn deliver(pool: &MySqlPool, inbox: &Inbox, isolation: &str) -> oncely_core::Result<bool> {
    let key = Key::new("evt-order-1001").unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET SESSION TRANSACTION ISOLATION LEVEL {isolation}"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    match inbox.claim(&mut tx, &key, None).await? {
        InboxClaim::New => {
            sqlx::query("INSERT INTO orders (event_id, item) VALUES ('evt-order-1001', 'apple')")
                .execute(&mut *tx)
                .await
                .unwrap();
            sqlx::query("UPDATE stock SET qty = qty - 1 WHERE item = 'apple'")
                .execute(&mut *tx)
                .await
                .unwrap();
            inbox.record_outcome(&mut tx, &key, b"order placed").await?;
            tx.commit().await.unwrap();
            Ok(true)
        }
        InboxClaim::Duplicate(record) => {
            assert_eq!(record.outcome(), Some(&b"order placed"[..]));
            tx.rollback().await.unwrap();
            Ok(false)
        }
        other => panic!("{other:?}"),
    }
}

async fn storm(name: &str, isolation: &'static str) {
    let (pool, _) = inventory(name).await;
    let inbox = Inbox::new(Scope::new("orders-consumer").unwrap());
    let (executed, deadlocks) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (pool, inbox, executed, deadlocks, barrier) = (
            pool.clone(),
            inbox.clone(),
            executed.clone(),
            deadlocks.clone(),
            barrier.clone(),
        );
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            loop {
                match deliver(&pool, &inbox, isolation).await {
                    Ok(true) => {
                        executed.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    Ok(false) => break,
                    Err(e) if e.to_string().contains("1213") => {
                        deadlocks.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!(
        "{isolation}: {} deadlock victims ran again",
        deadlocks.load(Ordering::SeqCst)
    );
    assert_eq!(executed.load(Ordering::SeqCst), 1);
    assert_eq!(counts(&pool).await, (1, 99));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_deliveries_place_one_order_and_take_stock_once() {
    storm("storm_rc", "READ COMMITTED").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_holds_under_repeatable_read() {
    storm("storm_rr", "REPEATABLE READ").await;
}

#[tokio::test]
async fn a_rolled_back_claim_leaves_the_key_claimable() {
    let (pool, _) = inventory("rollback").await;
    let inbox = Inbox::new(Scope::default());
    let key = Key::new("evt-7").unwrap();

    let mut tx = pool.begin().await.unwrap();
    assert_eq!(
        inbox.claim(&mut tx, &key, None).await.unwrap(),
        InboxClaim::New
    );
    sqlx::query("UPDATE stock SET qty = qty - 1 WHERE item = 'apple'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap(); // the handler failed after its claim

    assert_eq!(counts(&pool).await, (0, 100));
    let mut tx = pool.begin().await.unwrap();
    assert_eq!(
        inbox.claim(&mut tx, &key, None).await.unwrap(),
        InboxClaim::New
    );
    sqlx::query("UPDATE stock SET qty = qty - 1 WHERE item = 'apple'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(counts(&pool).await, (0, 99));

    let mut tx = pool.begin().await.unwrap();
    assert!(matches!(
        inbox.claim(&mut tx, &key, None).await.unwrap(),
        InboxClaim::Duplicate(_)
    ));
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn the_inbox_and_the_store_share_one_history() {
    let (pool, url) = inventory("shared").await;
    let scope = Scope::new("payments").unwrap();
    let inbox = Inbox::new(scope.clone());
    let key = Key::new("evt-9").unwrap();
    // A claim made through the store, outside any transaction, and still in progress.
    let store = Arc::new(MySqlStore::connect(&url).await.unwrap());
    let oncely = oncely_core::Oncely::new(store);
    let claim = oncely
        .claim(&scope, &key, None)
        .await
        .unwrap()
        .into_new()
        .unwrap();

    let mut tx = pool.begin().await.unwrap();
    assert!(matches!(
        inbox.claim(&mut tx, &key, None).await.unwrap(),
        InboxClaim::InProgress { .. }
    ));
    tx.rollback().await.unwrap();
    oncely.complete(&claim, b"paid").await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    match inbox.claim(&mut tx, &key, None).await.unwrap() {
        InboxClaim::Duplicate(record) => assert_eq!(record.outcome(), Some(&b"paid"[..])),
        other => panic!("{other:?}"),
    }
    tx.rollback().await.unwrap();

    // And the other way: a key the inbox completed is a duplicate to the store.
    let other = Key::new("evt-10").unwrap();
    let mut tx = pool.begin().await.unwrap();
    assert_eq!(
        inbox.claim(&mut tx, &other, None).await.unwrap(),
        InboxClaim::New
    );
    inbox
        .record_outcome(&mut tx, &other, b"refunded")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    match oncely.claim(&scope, &other, None).await.unwrap() {
        oncely_core::ClaimOutcome::Duplicate(record) => {
            assert_eq!(record.outcome(), Some(&b"refunded"[..]))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_expired_claim_is_taken_over_inside_the_transaction() {
    let (pool, url) = inventory("takeover").await;
    let clock = oncely_core::ManualClock::default();
    let scope = Scope::new("payments").unwrap();
    let key = Key::new("evt-11").unwrap();
    let store = Arc::new(MySqlStore::connect(&url).await.unwrap());
    let oncely = oncely_core::Oncely::new(store)
        .with_clock(clock.clone())
        .with_lease(std::time::Duration::from_secs(30));
    // A holder outside any transaction claims the key, then dies.
    let crashed = oncely
        .claim(&scope, &key, None)
        .await
        .unwrap()
        .into_new()
        .unwrap();
    clock.advance(std::time::Duration::from_secs(31));

    let inbox = Inbox::new(scope.clone()).with_clock(clock.clone());
    let mut tx = pool.begin().await.unwrap();
    assert_eq!(
        inbox.claim(&mut tx, &key, None).await.unwrap(),
        InboxClaim::New
    );
    tx.commit().await.unwrap();

    let record = oncely.get(&scope, &key).await.unwrap().expect("recorded");
    assert!(record.is_completed());
    assert_eq!(record.attempt, 2);
    // The dead holder is fenced out.
    assert!(matches!(
        oncely.complete(&crashed, b"late").await,
        Err(oncely_core::Error::ClaimLost {
            reason: oncely_core::LostReason::TakenOver,
            ..
        })
    ));
}

#[tokio::test]
async fn a_different_payload_under_the_same_key_is_a_conflict() {
    let (pool, _) = inventory("conflict").await;
    let inbox = Inbox::new(Scope::default());
    let key = Key::new("evt-12").unwrap();
    let (a, b) = (
        oncely_core::Fingerprint::of_bytes(b"a"),
        oncely_core::Fingerprint::of_bytes(b"b"),
    );
    let mut tx = pool.begin().await.unwrap();
    assert_eq!(
        inbox.claim(&mut tx, &key, Some(a)).await.unwrap(),
        InboxClaim::New
    );
    tx.commit().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    assert_eq!(
        inbox.claim(&mut tx, &key, Some(b)).await.unwrap(),
        InboxClaim::Conflict { stored: Some(a) }
    );
}

#[tokio::test]
async fn a_batch_answers_in_order_and_rolls_back_whole() {
    let (pool, _) = inventory("batch").await;
    let inbox = Inbox::new(Scope::new("orders-consumer").unwrap());
    let key = |k: &str| Key::new(k).unwrap();
    let (one, two) = (
        Some(oncely_core::Fingerprint::of_bytes(b"order 1")),
        Some(oncely_core::Fingerprint::of_bytes(b"order 2")),
    );

    let mut tx = pool.begin().await.unwrap();
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
    assert_eq!(claims[0], InboxClaim::New);
    assert_eq!(claims[1], InboxClaim::New);
    // Copies of a key in the batch are answered as its first occurrence left it.
    assert!(matches!(claims[2], InboxClaim::Duplicate(_)), "{claims:?}");
    assert!(
        matches!(claims[3], InboxClaim::Conflict { .. }),
        "{claims:?}"
    );
    tx.commit().await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    let claims = inbox
        .claim_many(&mut tx, &[(key("c"), one), (key("a"), one)])
        .await
        .unwrap();
    assert_eq!(claims[0], InboxClaim::New);
    assert!(matches!(claims[1], InboxClaim::Duplicate(_)), "{claims:?}");
    tx.rollback().await.unwrap();

    // The rolled-back batch recorded nothing: "c" is new again, "a" and "b" still done.
    let mut tx = pool.begin().await.unwrap();
    let claims = inbox
        .claim_many(
            &mut tx,
            &[(key("a"), one), (key("b"), one), (key("c"), one)],
        )
        .await
        .unwrap();
    assert!(matches!(claims[0], InboxClaim::Duplicate(_)), "{claims:?}");
    assert!(matches!(claims[1], InboxClaim::Duplicate(_)), "{claims:?}");
    assert_eq!(claims[2], InboxClaim::New);
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_batches_over_the_same_keys_place_each_order_once() {
    let (pool, _) = inventory("batch_storm").await;
    let inbox = Inbox::new(Scope::new("orders-consumer").unwrap());
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let mut tasks = Vec::new();
    for task in 0..16usize {
        let (pool, inbox, barrier) = (pool.clone(), inbox.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            // Each batch sees the 200 events in its own order, with some twice.
            let mut ids: Vec<usize> = (0..200).chain((0..200).step_by(7)).collect();
            ids.rotate_left(task * 13);
            if task % 2 == 1 {
                ids.reverse();
            }
            let items: Vec<_> = ids
                .iter()
                .map(|i| (Key::new(format!("evt-{i}")).unwrap(), None))
                .collect();
            barrier.wait().await;
            loop {
                let mut tx = pool.begin().await.unwrap();
                let claims = match inbox.claim_many(&mut tx, &items).await {
                    Ok(claims) => claims,
                    // A deadlock victim: InnoDB rolled it back; run it again, as users do.
                    Err(oncely_core::Error::Backend { .. }) => continue,
                    Err(e) => panic!("{e}"),
                };
                for ((key, _), claim) in items.iter().zip(&claims) {
                    if *claim == InboxClaim::New {
                        sqlx::query("INSERT INTO orders (event_id, item) VALUES (?, 'apple')")
                            .bind(key.as_str())
                            .execute(&mut *tx)
                            .await
                            .unwrap();
                    }
                }
                tx.commit().await.unwrap();
                return;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (orders, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM orders")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((orders, distinct), (200, 200));
}

#[tokio::test]
async fn a_batch_takes_over_an_expired_claim() {
    let (pool, url) = inventory("batch_takeover").await;
    let clock = oncely_core::ManualClock::default();
    let scope = Scope::new("payments").unwrap();
    let (dead, live) = (Key::new("evt-12").unwrap(), Key::new("evt-13").unwrap());
    let store = Arc::new(MySqlStore::connect(&url).await.unwrap());
    let oncely = oncely_core::Oncely::new(store)
        .with_clock(clock.clone())
        .with_lease(std::time::Duration::from_secs(30));
    let crashed = oncely
        .claim(&scope, &dead, None)
        .await
        .unwrap()
        .into_new()
        .unwrap();
    clock.advance(std::time::Duration::from_secs(31));
    let holding = oncely.claim(&scope, &live, None).await.unwrap();
    assert!(holding.into_new().is_some());

    let inbox = Inbox::new(scope.clone()).with_clock(clock.clone());
    let mut tx = pool.begin().await.unwrap();
    let claims = inbox
        .claim_many(&mut tx, &[(dead.clone(), None), (live.clone(), None)])
        .await
        .unwrap();
    assert_eq!(claims[0], InboxClaim::New);
    assert!(
        matches!(claims[1], InboxClaim::InProgress { .. }),
        "{claims:?}"
    );
    tx.commit().await.unwrap();

    let record = oncely.get(&scope, &dead).await.unwrap().expect("recorded");
    assert!(record.is_completed());
    assert_eq!(record.outcome(), Some(&b""[..]));
    assert_eq!(record.attempt, 2);
    assert!(matches!(
        oncely.complete(&crashed, b"late").await,
        Err(oncely_core::Error::ClaimLost {
            reason: oncely_core::LostReason::TakenOver,
            ..
        })
    ));
}
