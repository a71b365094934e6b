//! The transactional inbox suite: one set of behaviours, run against every SQL
//! store's inbox on a real server.
//!
//! A store crate implements [`InboxDatabase`] for a fresh database holding oncely's tables and
//! the inventory example's ([`INVENTORY_TABLES`]): begin a transaction (as its
//! inbox requires), claim through its inbox trait, do the example's writes, commit or roll back,
//! count. Then a test target with `harness = false` hands [`main`] the [`trials`] for it, with
//! the database's own tests beside the suite's, listed with [`inbox_tests!`](crate::inbox_tests)
//! (`stores/postgres/tests/inbox.rs` is the shortest such harness, `stores/sqlite/tests/inbox.rs`
//! one with tests of its own).
//!
//! Each behaviour is a plain async function over a fresh database, and becomes one test named
//! `<backend>::<behaviour>`. Every behaviour runs for every backend: there is no way to skip one.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use libtest_mimic::Trial;
use oncely_core::inbox::{Inbox, InboxClaim};
use oncely_core::{
    ClaimOutcome, Error, Fingerprint, Key, LostReason, ManualClock, Oncely, Result, Scope, Store,
    VersionCheck,
};
use tokio::sync::Barrier;

use crate::harness::{database_trials, run_trials};
use crate::suite::{fp, key, scope};

/// The inventory example's tables, in SQL every database takes: `orders`, and `stock` with 100
/// apples. A harness creates them in each fresh database.
pub const INVENTORY_TABLES: [&str; 3] = [
    "CREATE TABLE orders (event_id VARCHAR(64) NOT NULL, item VARCHAR(64) NOT NULL)",
    "CREATE TABLE stock (item VARCHAR(64) PRIMARY KEY, qty BIGINT NOT NULL)",
    "INSERT INTO stock VALUES ('apple', 100)",
];

/// What the inventory example's tables hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inventory {
    /// Rows in `orders`.
    pub orders: i64,
    /// Distinct `event_id`s among them.
    pub events: i64,
    /// Apples left in `stock` (100 at the start).
    pub apples: i64,
}

impl Inventory {
    /// Before any order.
    pub const UNTOUCHED: Inventory = Inventory {
        orders: 0,
        events: 0,
        apples: 100,
    };
    /// After one order, placed once.
    pub const ONE_ORDER: Inventory = Inventory {
        orders: 1,
        events: 1,
        apples: 99,
    };
}

/// One fresh database of a SQL store, reached the way a user reaches it: transactions on a pool
/// of real connections, the store's inbox trait inside them, the inventory example's writes
/// beside it. Driver errors outside the inbox's own calls panic: they are the harness's bugs.
///
/// The methods answer `Send` futures, so the suite can spawn them on a multi-threaded runtime;
/// an implementation writes them as `async fn`. [`sqlx_inbox_calls!`](crate::sqlx_inbox_calls)
/// writes the ones that read the same on every sqlx database.
pub trait InboxDatabase: Send + Sync + 'static {
    /// An open transaction.
    type Tx: Send + 'static;

    /// Begins a transaction the way the store's inbox asks for (`BEGIN IMMEDIATE` for SQLite),
    /// waiting for a connection of the pool if all are busy.
    fn begin(&self) -> impl Future<Output = Self::Tx> + Send;

    /// `inbox.claim(&mut tx, key, fingerprint)`, through the store's inbox trait.
    fn claim(
        &self,
        tx: &mut Self::Tx,
        inbox: &Inbox,
        key: &Key,
        fingerprint: Option<Fingerprint>,
    ) -> impl Future<Output = Result<InboxClaim>> + Send;

    /// `inbox.claim_many(&mut tx, items)`, through the store's inbox trait.
    fn claim_many(
        &self,
        tx: &mut Self::Tx,
        inbox: &Inbox,
        items: &[(Key, Option<Fingerprint>)],
    ) -> impl Future<Output = Result<Vec<InboxClaim>>> + Send;

    /// `inbox.record_outcome(&mut tx, key, outcome)`, through the store's inbox trait.
    fn record_outcome(
        &self,
        tx: &mut Self::Tx,
        inbox: &Inbox,
        key: &Key,
        outcome: &[u8],
    ) -> impl Future<Output = Result<()>> + Send;

    /// `inbox.apply_if_newer(&mut tx, entity, version)`, through the store's inbox trait.
    fn apply_if_newer(
        &self,
        tx: &mut Self::Tx,
        inbox: &Inbox,
        entity: &Key,
        version: u64,
    ) -> impl Future<Output = Result<VersionCheck>> + Send;

    /// Inserts an order row for `event` (`INSERT INTO orders (event_id, item) ...`).
    fn place_order(&self, tx: &mut Self::Tx, event: &Key) -> impl Future<Output = ()> + Send;

    /// Takes one apple from stock (`UPDATE stock SET qty = qty - 1 WHERE item = 'apple'`).
    fn take_apple(&self, tx: &mut Self::Tx) -> impl Future<Output = ()> + Send;

    /// The inventory example's effect for `event`: its order placed, its apple taken.
    fn sell_an_apple(&self, tx: &mut Self::Tx, event: &Key) -> impl Future<Output = ()> + Send {
        async move {
            self.place_order(tx, event).await;
            self.take_apple(tx).await;
        }
    }

    /// Commits `tx`.
    fn commit(&self, tx: Self::Tx) -> impl Future<Output = ()> + Send;

    /// Rolls `tx` back.
    fn rollback(&self, tx: Self::Tx) -> impl Future<Output = ()> + Send;

    /// What the inventory tables hold now, read outside any transaction.
    fn inventory(&self) -> impl Future<Output = Inventory> + Send;

    /// The store on this same database, for claims made outside any transaction.
    fn store(&self) -> impl Future<Output = Arc<dyn Store>> + Send;

    /// Whether `error` says the database chose this transaction as a deadlock victim and rolled
    /// it back: users run such a transaction again, and so do the concurrent tests.
    fn is_deadlock(&self, error: &Error) -> bool;
}

/// Inside an `impl InboxDatabase` whose `Tx` is a `sqlx::Transaction`, the methods that read
/// the same on every database: `claim`, `claim_many`, `record_outcome` and `apply_if_newer` through the store's
/// inbox trait `$inbox` (e.g. `PostgresInbox`), `take_apple`, `commit`, `rollback`, and
/// `inventory` read through the pool in the field `$pool`.
#[macro_export]
macro_rules! sqlx_inbox_calls {
    ($inbox:path, $pool:ident) => {
        async fn claim(
            &self,
            tx: &mut Self::Tx,
            inbox: &::oncely_core::inbox::Inbox,
            key: &::oncely_core::Key,
            fingerprint: ::std::option::Option<::oncely_core::Fingerprint>,
        ) -> ::oncely_core::Result<::oncely_core::inbox::InboxClaim> {
            <::oncely_core::inbox::Inbox as $inbox>::claim(inbox, &mut **tx, key, fingerprint).await
        }

        async fn claim_many(
            &self,
            tx: &mut Self::Tx,
            inbox: &::oncely_core::inbox::Inbox,
            items: &[(
                ::oncely_core::Key,
                ::std::option::Option<::oncely_core::Fingerprint>,
            )],
        ) -> ::oncely_core::Result<::std::vec::Vec<::oncely_core::inbox::InboxClaim>> {
            <::oncely_core::inbox::Inbox as $inbox>::claim_many(inbox, &mut **tx, items).await
        }

        async fn record_outcome(
            &self,
            tx: &mut Self::Tx,
            inbox: &::oncely_core::inbox::Inbox,
            key: &::oncely_core::Key,
            outcome: &[u8],
        ) -> ::oncely_core::Result<()> {
            <::oncely_core::inbox::Inbox as $inbox>::record_outcome(inbox, &mut **tx, key, outcome)
                .await
        }

        async fn apply_if_newer(
            &self,
            tx: &mut Self::Tx,
            inbox: &::oncely_core::inbox::Inbox,
            entity: &::oncely_core::Key,
            version: u64,
        ) -> ::oncely_core::Result<::oncely_core::VersionCheck> {
            <::oncely_core::inbox::Inbox as $inbox>::apply_if_newer(
                inbox, &mut **tx, entity, version,
            )
            .await
        }

        async fn take_apple(&self, tx: &mut Self::Tx) {
            ::sqlx::query("UPDATE stock SET qty = qty - 1 WHERE item = 'apple'")
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

        async fn inventory(&self) -> $crate::inbox::Inventory {
            let (orders, events, apples) = ::sqlx::query_as(
                "SELECT count(*), count(DISTINCT event_id), \
                 (SELECT qty FROM stock WHERE item = 'apple') FROM orders",
            )
            .fetch_one(&self.$pool)
            .await
            .unwrap();
            $crate::inbox::Inventory {
                orders,
                events,
                apples,
            }
        }
    };
}

/// One behaviour (or one database's own test) over a fresh database.
pub type Test<D> = crate::harness::Test<D>;

/// A list of tests for [`trials`], each named after its function: `async fn name(db: Arc<D>)`.
/// For a database's own tests, beside the suite's.
#[macro_export]
macro_rules! inbox_tests {
    ($($name:ident),* $(,)?) => {
        $crate::database_tests![$($name),*]
    };
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        /// Every behaviour of the suite, by name.
        pub fn all<D: InboxDatabase>() -> Vec<(&'static str, Test<D>)> {
            crate::inbox_tests![$($name),*]
        }
    };
}

suite!(
    sixty_four_concurrent_deliveries_place_one_order_and_take_stock_once,
    a_rolled_back_claim_leaves_the_key_claimable,
    the_inbox_and_the_store_share_one_history_both_ways,
    an_expired_store_claim_is_taken_over_inside_the_transaction,
    the_same_key_with_another_payload_is_a_conflict,
    after_retention_the_key_is_new_again,
    a_batch_answers_in_order_and_rolls_back_whole,
    concurrent_batches_over_the_same_keys_place_each_order_once,
    a_batch_takes_over_an_expired_claim,
    record_outcome_needs_the_key_completed_in_the_transaction,
    a_step_done_in_the_transaction_commits_with_it_and_is_not_done_again,
    a_version_applied_by_a_rolled_back_update_is_applied_again_on_redelivery,
    versions_in_transactions_and_through_the_store_share_one_history,
    concurrent_transactions_apply_each_version_of_an_entity_in_order,
);

/// One test per behaviour of the suite, then one per test of `own` (the database's own, over
/// the same harness), each named `<backend>::<name>` and run on a database `fresh` makes.
pub fn trials<D, F, Fut>(backend: &str, fresh: F, own: Vec<(&'static str, Test<D>)>) -> Vec<Trial>
where
    D: InboxDatabase,
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = D> + Send + 'static,
{
    database_trials(backend, fresh, all::<D>().into_iter().chain(own).collect())
}

/// Runs `trials` as a test binary (`cargo test` arguments such as a name filter work) and
/// exits with its status.
pub fn main(trials: Vec<Trial>) -> ! {
    run_trials(trials)
}

/// A claim made through the store, outside any transaction.
async fn store_claim(oncely: &Oncely, scope: &Scope, key: &Key) -> oncely_core::Claim {
    oncely
        .claim(scope, key, None)
        .await
        .unwrap()
        .into_new()
        .expect("the store's claim is new")
}

/// Begins a transaction and claims `key` in it, which must be new.
async fn begin_and_claim_new<D: InboxDatabase>(
    db: &D,
    inbox: &Inbox,
    key: &Key,
    fingerprint: Option<Fingerprint>,
) -> D::Tx {
    let mut tx = db.begin().await;
    assert_eq!(
        db.claim(&mut tx, inbox, key, fingerprint).await.unwrap(),
        InboxClaim::New
    );
    tx
}

fn assert_fenced(result: Result<()>) {
    assert!(
        matches!(
            result,
            Err(Error::ClaimLost {
                reason: LostReason::TakenOver,
                ..
            })
        ),
        "the dead holder must be fenced out: {result:?}"
    );
}

/// 64 deliveries of one event at once, each in its own transaction on its own connection: the
/// order is placed and the stock taken once; every other delivery sees the recorded outcome.
/// A deadlock victim runs its delivery again, as users do.
async fn sixty_four_concurrent_deliveries_place_one_order_and_take_stock_once<D: InboxDatabase>(
    db: Arc<D>,
) {
    let inbox = Inbox::new(scope("orders-consumer"));
    let (executed, deadlocks) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let barrier = Arc::new(Barrier::new(64));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (db, inbox, executed, deadlocks, barrier) = (
            db.clone(),
            inbox.clone(),
            executed.clone(),
            deadlocks.clone(),
            barrier.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let key = key("evt-order-1001");
            barrier.wait().await;
            loop {
                let mut tx = db.begin().await;
                match db.claim(&mut tx, &inbox, &key, None).await {
                    Ok(InboxClaim::New) => {
                        executed.fetch_add(1, Ordering::SeqCst);
                        db.sell_an_apple(&mut tx, &key).await;
                        match db
                            .record_outcome(&mut tx, &inbox, &key, b"order placed")
                            .await
                        {
                            Ok(()) => {
                                db.commit(tx).await;
                                return;
                            }
                            Err(e) if db.is_deadlock(&e) => {
                                // Rolled back with its writes: this run did not happen.
                                executed.fetch_sub(1, Ordering::SeqCst);
                                deadlocks.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                    Ok(InboxClaim::Duplicate(record)) => {
                        assert_eq!(record.outcome(), Some(&b"order placed"[..]));
                        db.rollback(tx).await;
                        return;
                    }
                    Ok(other) => panic!("{other:?}"),
                    Err(e) if db.is_deadlock(&e) => {
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
        "{} deadlock victims ran again",
        deadlocks.load(Ordering::SeqCst)
    );
    assert_eq!(executed.load(Ordering::SeqCst), 1);
    assert_eq!(db.inventory().await, Inventory::ONE_ORDER);
}

async fn a_rolled_back_claim_leaves_the_key_claimable<D: InboxDatabase>(db: Arc<D>) {
    let inbox = Inbox::new(Scope::default());
    let key = key("evt-7");

    let mut tx = begin_and_claim_new(&*db, &inbox, &key, None).await;
    db.sell_an_apple(&mut tx, &key).await;
    db.rollback(tx).await; // the handler failed after its claim

    assert_eq!(db.inventory().await, Inventory::UNTOUCHED);
    let mut tx = begin_and_claim_new(&*db, &inbox, &key, None).await;
    db.sell_an_apple(&mut tx, &key).await;
    db.commit(tx).await;
    assert_eq!(db.inventory().await, Inventory::ONE_ORDER);

    let mut tx = db.begin().await;
    assert!(matches!(
        db.claim(&mut tx, &inbox, &key, None).await.unwrap(),
        InboxClaim::Duplicate(_)
    ));
    db.rollback(tx).await;
}

async fn the_inbox_and_the_store_share_one_history_both_ways<D: InboxDatabase>(db: Arc<D>) {
    let scope = scope("payments");
    let inbox = Inbox::new(scope.clone());
    let oncely = Oncely::new(db.store().await);
    // Canonical UUID keys may be stored packed: both sides must agree on how.
    let from_store = key("0f8fad5b-d9cb-469f-a165-70867728950e");
    let from_inbox = key("7c9e6679-7425-40de-944b-e07fc1f90ae7");

    // Store -> inbox: a claim made through the store, still in progress, then completed.
    let claim = store_claim(&oncely, &scope, &from_store).await;
    let mut tx = db.begin().await;
    assert!(matches!(
        db.claim(&mut tx, &inbox, &from_store, None).await.unwrap(),
        InboxClaim::InProgress { retry_after } if retry_after > Duration::ZERO
    ));
    db.rollback(tx).await;
    oncely.complete(&claim, b"paid").await.unwrap();
    let mut tx = db.begin().await;
    match db.claim(&mut tx, &inbox, &from_store, None).await.unwrap() {
        InboxClaim::Duplicate(record) => assert_eq!(record.outcome(), Some(&b"paid"[..])),
        other => panic!("{other:?}"),
    }
    db.rollback(tx).await;

    // Inbox -> store: done in a transaction, then a duplicate to the store.
    let mut tx = begin_and_claim_new(&*db, &inbox, &from_inbox, None).await;
    db.record_outcome(&mut tx, &inbox, &from_inbox, b"shipped")
        .await
        .unwrap();
    db.commit(tx).await;
    match oncely.claim(&scope, &from_inbox, None).await.unwrap() {
        ClaimOutcome::Duplicate(record) => assert_eq!(record.outcome(), Some(&b"shipped"[..])),
        other => panic!("{other:?}"),
    }
}

async fn an_expired_store_claim_is_taken_over_inside_the_transaction<D: InboxDatabase>(db: Arc<D>) {
    let clock = ManualClock::default();
    let scope = scope("payments");
    let key = key("evt-11");
    let oncely = Oncely::new(db.store().await)
        .with_clock(clock.clone())
        .with_lease(Duration::from_secs(30));
    // A holder outside any transaction claims the key, then dies.
    let crashed = store_claim(&oncely, &scope, &key).await;
    let inbox = Inbox::new(scope.clone()).with_clock(clock.clone());
    let mut tx = db.begin().await;
    assert!(matches!(
        db.claim(&mut tx, &inbox, &key, None).await.unwrap(),
        InboxClaim::InProgress { .. }
    ));
    db.rollback(tx).await;
    clock.advance(Duration::from_secs(31));

    let mut tx = begin_and_claim_new(&*db, &inbox, &key, None).await;
    db.sell_an_apple(&mut tx, &key).await;
    db.commit(tx).await;

    let record = oncely.get(&scope, &key).await.unwrap().expect("recorded");
    assert!(record.is_completed());
    assert_eq!(record.attempt, 2);
    assert_fenced(oncely.complete(&crashed, b"late").await);
    assert_eq!(db.inventory().await, Inventory::ONE_ORDER);
}

async fn the_same_key_with_another_payload_is_a_conflict<D: InboxDatabase>(db: Arc<D>) {
    let inbox = Inbox::new(Scope::default());
    let key = key("evt-12");

    let tx = begin_and_claim_new(&*db, &inbox, &key, fp("paid")).await;
    db.commit(tx).await;

    let mut tx = db.begin().await;
    assert_eq!(
        db.claim(&mut tx, &inbox, &key, fp("refund")).await.unwrap(),
        InboxClaim::Conflict { stored: fp("paid") }
    );
    assert!(matches!(
        db.claim(&mut tx, &inbox, &key, fp("paid")).await.unwrap(),
        InboxClaim::Duplicate(_)
    ));
    // No fingerprint given: no payload check asked for.
    assert!(matches!(
        db.claim(&mut tx, &inbox, &key, None).await.unwrap(),
        InboxClaim::Duplicate(_)
    ));
    db.rollback(tx).await;
}

async fn after_retention_the_key_is_new_again<D: InboxDatabase>(db: Arc<D>) {
    let clock = ManualClock::default();
    let inbox = Inbox::new(Scope::default())
        .with_clock(clock.clone())
        .with_retention(Duration::from_secs(3600));
    let key = key("evt-13");
    for expected_attempt in [1, 2] {
        let tx = begin_and_claim_new(&*db, &inbox, &key, None).await;
        db.commit(tx).await;
        let mut tx = db.begin().await;
        match db.claim(&mut tx, &inbox, &key, None).await.unwrap() {
            InboxClaim::Duplicate(record) => assert_eq!(record.attempt, expected_attempt),
            other => panic!("{other:?}"),
        }
        db.rollback(tx).await;
        clock.advance(Duration::from_secs(3601));
    }
}

async fn a_batch_answers_in_order_and_rolls_back_whole<D: InboxDatabase>(db: Arc<D>) {
    let inbox = Inbox::new(scope("orders-consumer"));
    let (one, two) = (fp("order 1"), fp("order 2"));

    let mut tx = db.begin().await;
    let claims = db
        .claim_many(
            &mut tx,
            &inbox,
            &[
                (key("b"), one),
                (key("a"), one),
                (key("b"), one),
                (key("b"), two),
            ],
        )
        .await
        .unwrap();
    assert_eq!(claims.len(), 4, "{claims:?}");
    assert_eq!(claims[..2], [InboxClaim::New, InboxClaim::New]);
    // Copies of a key in the batch are answered as its first occurrence left it.
    assert!(matches!(claims[2], InboxClaim::Duplicate(_)), "{claims:?}");
    assert!(
        matches!(claims[3], InboxClaim::Conflict { .. }),
        "{claims:?}"
    );
    db.commit(tx).await;

    let mut tx = db.begin().await;
    let claims = db
        .claim_many(&mut tx, &inbox, &[(key("c"), one), (key("a"), one)])
        .await
        .unwrap();
    assert_eq!(claims[0], InboxClaim::New);
    assert!(matches!(claims[1], InboxClaim::Duplicate(_)), "{claims:?}");
    db.rollback(tx).await;

    // The rolled-back batch recorded nothing: "c" is new again, "a" and "b" still done.
    let mut tx = db.begin().await;
    let claims = db
        .claim_many(
            &mut tx,
            &inbox,
            &[(key("a"), one), (key("b"), one), (key("c"), one)],
        )
        .await
        .unwrap();
    assert!(matches!(claims[0], InboxClaim::Duplicate(_)), "{claims:?}");
    assert!(matches!(claims[1], InboxClaim::Duplicate(_)), "{claims:?}");
    assert_eq!(claims[2], InboxClaim::New);
    db.commit(tx).await;
}

/// 16 batches at once over the same 200 events, each in its own order and with some events
/// twice: every order is placed once. A deadlock victim runs its batch again, as users do.
async fn concurrent_batches_over_the_same_keys_place_each_order_once<D: InboxDatabase>(db: Arc<D>) {
    let inbox = Inbox::new(scope("orders-consumer"));
    let barrier = Arc::new(Barrier::new(16));
    let mut tasks = Vec::new();
    for task in 0..16usize {
        let (db, inbox, barrier) = (db.clone(), inbox.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids: Vec<usize> = (0..200).chain((0..200).step_by(7)).collect();
            ids.rotate_left(task * 13);
            if task % 2 == 1 {
                ids.reverse();
            }
            let items: Vec<_> = ids
                .iter()
                .map(|i| (key(&format!("evt-{i}")), None))
                .collect();
            barrier.wait().await;
            loop {
                let mut tx = db.begin().await;
                let claims = match db.claim_many(&mut tx, &inbox, &items).await {
                    Ok(claims) => claims,
                    Err(e) if db.is_deadlock(&e) => continue,
                    Err(e) => panic!("{e}"),
                };
                assert_eq!(claims.len(), items.len());
                for ((key, _), claim) in items.iter().zip(&claims) {
                    if *claim == InboxClaim::New {
                        db.place_order(&mut tx, key).await;
                    }
                }
                db.commit(tx).await;
                return;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let inventory = db.inventory().await;
    assert_eq!((inventory.orders, inventory.events), (200, 200));
}

async fn a_batch_takes_over_an_expired_claim<D: InboxDatabase>(db: Arc<D>) {
    let clock = ManualClock::default();
    let scope = scope("payments");
    let (dead, live) = (key("evt-12"), key("evt-13"));
    let oncely = Oncely::new(db.store().await)
        .with_clock(clock.clone())
        .with_lease(Duration::from_secs(30));
    let crashed = store_claim(&oncely, &scope, &dead).await;
    clock.advance(Duration::from_secs(31));
    let _holding = store_claim(&oncely, &scope, &live).await;

    let inbox = Inbox::new(scope.clone()).with_clock(clock.clone());
    let mut tx = db.begin().await;
    let claims = db
        .claim_many(
            &mut tx,
            &inbox,
            &[(dead.clone(), None), (live.clone(), None)],
        )
        .await
        .unwrap();
    assert_eq!(claims[0], InboxClaim::New);
    assert!(
        matches!(claims[1], InboxClaim::InProgress { .. }),
        "{claims:?}"
    );
    db.commit(tx).await;

    let record = oncely.get(&scope, &dead).await.unwrap().expect("recorded");
    assert!(record.is_completed());
    assert_eq!(record.outcome(), Some(&b""[..]));
    assert_eq!(record.attempt, 2);
    assert_fenced(oncely.complete(&crashed, b"late").await);
}

async fn record_outcome_needs_the_key_completed_in_the_transaction<D: InboxDatabase>(db: Arc<D>) {
    let scope = scope("payments");
    let inbox = Inbox::new(scope.clone());
    // Never claimed: the outcome would be lost, so it is an error.
    let mut tx = db.begin().await;
    let err = db
        .record_outcome(&mut tx, &inbox, &key("never-claimed"), b"x")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("claim the key"), "{err}");
    db.rollback(tx).await;
    // Held by a claim made through the store, still in progress: not the inbox's to complete.
    let oncely = Oncely::new(db.store().await);
    let held = key("held-by-the-store");
    let _claim = store_claim(&oncely, &scope, &held).await;
    let mut tx = db.begin().await;
    let err = db
        .record_outcome(&mut tx, &inbox, &held, b"x")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("claim the key"), "{err}");
    db.rollback(tx).await;
    assert!(
        !oncely
            .get(&scope, &held)
            .await
            .unwrap()
            .unwrap()
            .is_completed()
    );
}

/// How [`sell_in_a_step`]'s attempt ends.
#[derive(Clone, Copy, PartialEq)]
enum StepAttempt {
    /// Sells in the step's transaction, then fails before committing it.
    FailBeforeCommit,
    /// Sells and commits, then the next step fails.
    FailAfterCommit,
    /// Goes on to the end.
    Finish,
}

/// A handler of two steps (`Oncely::run_steps`): "sell", an apple sold in the caller's
/// transaction with the step's record (`Steps::inbox`), then "notify", outside.
async fn sell_in_a_step<D: InboxDatabase>(
    db: &D,
    steps: oncely_core::Steps,
    attempt: StepAttempt,
    notified: &AtomicUsize,
) -> std::result::Result<Vec<u8>, oncely_core::BoxError> {
    let (inbox, sell) = (steps.inbox(), steps.step_key("sell"));
    let mut tx = db.begin().await;
    match db.claim(&mut tx, &inbox, &sell, None).await? {
        InboxClaim::New => {
            db.sell_an_apple(&mut tx, steps.key()).await;
            db.record_outcome(&mut tx, &inbox, &sell, b"sold").await?;
            if attempt == StepAttempt::FailBeforeCommit {
                db.rollback(tx).await;
                return Err("failed before the commit".into());
            }
            db.commit(tx).await;
        }
        InboxClaim::Duplicate(record) => {
            assert_eq!(record.outcome(), Some(&b"sold"[..]));
            db.rollback(tx).await;
        }
        other => panic!("{other:?}"),
    }
    // The store reads the step's record the transaction wrote.
    let sold = steps
        .step("sell", || async { panic!("the sale was recorded") })
        .await
        .map_err(|e: oncely_core::RunError<oncely_core::BoxError>| e.to_string())?;
    steps
        .step("notify", || async {
            if attempt == StepAttempt::FailAfterCommit {
                return Err(oncely_core::BoxError::from("notify failed"));
            }
            notified.fetch_add(1, Ordering::SeqCst);
            Ok(Vec::new())
        })
        .await?;
    Ok(sold)
}

/// A step whose effect is in this database (`Steps::inbox`): rolled back with its transaction,
/// committed with it, and, once committed, never done again by a later attempt of the key.
async fn a_step_done_in_the_transaction_commits_with_it_and_is_not_done_again<D: InboxDatabase>(
    db: Arc<D>,
) {
    let oncely = Oncely::new(db.store().await);
    let (scope, event) = (scope("orders"), key("evt-step"));
    let notified = AtomicUsize::new(0);
    for (attempt, inventory) in [
        (StepAttempt::FailBeforeCommit, Inventory::UNTOUCHED),
        (StepAttempt::FailAfterCommit, Inventory::ONE_ORDER),
        (StepAttempt::Finish, Inventory::ONE_ORDER),
    ] {
        let done = oncely
            .run_steps(&scope, &event, None, |steps| {
                sell_in_a_step(&*db, steps, attempt, &notified)
            })
            .await;
        assert_eq!(done.is_ok(), attempt == StepAttempt::Finish, "{done:?}");
        assert_eq!(db.inventory().await, inventory);
    }
    assert_eq!(notified.load(Ordering::SeqCst), 1);
    let again = oncely
        .run_steps(&scope, &event, None, |steps| {
            sell_in_a_step(&*db, steps, StepAttempt::Finish, &notified)
        })
        .await
        .unwrap();
    assert_eq!(again, oncely_core::RunOutcome::Replayed(b"sold".to_vec()));
    assert_eq!(db.inventory().await, Inventory::ONE_ORDER);
}

/// Guards an order's status update with its version, as a consumer of order events does: in one
/// transaction, the version checked and, if newer, an order row placed (the update); committed
/// unless `fail`, when the update "fails" and the transaction rolls back. Answers the check.
async fn update_if_newer<D: InboxDatabase>(
    db: &D,
    inbox: &Inbox,
    entity: &Key,
    version: u64,
    fail: bool,
) -> Result<VersionCheck> {
    let mut tx = db.begin().await;
    let check = match db.apply_if_newer(&mut tx, inbox, entity, version).await {
        Ok(check) => check,
        Err(error) => {
            db.rollback(tx).await;
            return Err(error);
        }
    };
    if let VersionCheck::Applied { .. } = check {
        db.place_order(&mut tx, &key(&format!("{entity}-v{version}")))
            .await;
    }
    if fail {
        db.rollback(tx).await;
    } else {
        db.commit(tx).await;
    }
    Ok(check)
}

/// The update a version guards fails after the check: the version rolls back with it, so the
/// redelivery applies it again. With the version checked through the store before the
/// transaction (`Oncely::apply_if_newer`), the redelivery would be `Stale` and the update lost.
async fn a_version_applied_by_a_rolled_back_update_is_applied_again_on_redelivery<
    D: InboxDatabase,
>(
    db: Arc<D>,
) {
    let inbox = Inbox::new(scope("orders"));
    let order = key("order-7");
    let applied = |previous| VersionCheck::Applied { previous };
    let check = update_if_newer(&*db, &inbox, &order, 2, true).await;
    assert_eq!(check.unwrap(), applied(None));
    assert_eq!(db.inventory().await.orders, 0, "the update failed");
    let redelivered = update_if_newer(&*db, &inbox, &order, 2, false).await;
    assert_eq!(redelivered.unwrap(), applied(None), "not lost");
    assert_eq!(db.inventory().await.orders, 1);
    for (version, check) in [
        (2, VersionCheck::Stale { current: 2 }),
        (1, VersionCheck::Stale { current: 2 }),
        (5, applied(Some(2))),
        (4, VersionCheck::Stale { current: 5 }),
    ] {
        let answered = update_if_newer(&*db, &inbox, &order, version, false).await;
        assert_eq!(answered.unwrap(), check, "version {version}");
    }
    assert_eq!(
        db.inventory().await.orders,
        2,
        "v2 and v5 applied, once each"
    );
}

async fn versions_in_transactions_and_through_the_store_share_one_history<D: InboxDatabase>(
    db: Arc<D>,
) {
    let (s, order) = (scope("orders"), key("order-9"));
    let (inbox, oncely) = (Inbox::new(s.clone()), Oncely::new(db.store().await));
    assert_eq!(
        oncely.apply_if_newer(&s, &order, 3).await.unwrap(),
        VersionCheck::Applied { previous: None }
    );
    let check = update_if_newer(&*db, &inbox, &order, 3, false).await;
    assert_eq!(check.unwrap(), VersionCheck::Stale { current: 3 });
    let check = update_if_newer(&*db, &inbox, &order, u64::MAX, false).await;
    assert_eq!(check.unwrap(), VersionCheck::Applied { previous: Some(3) });
    assert_eq!(
        oncely.apply_if_newer(&s, &order, 4).await.unwrap(),
        VersionCheck::Stale { current: u64::MAX }
    );
    // Another scope, or another entity, is another history.
    let check = update_if_newer(&*db, &Inbox::new(scope("refunds")), &order, 1, false).await;
    assert_eq!(check.unwrap(), VersionCheck::Applied { previous: None });
    let check = update_if_newer(&*db, &inbox, &key("order-10"), 1, false).await;
    assert_eq!(check.unwrap(), VersionCheck::Applied { previous: None });
}

/// 24 transactions at once, each with one of the versions 1..=8 of one entity (three of each),
/// each placing an order row when its version applies: a version applies at most once, and
/// what applied increases in commit order, ending at 8. A deadlock victim runs again.
async fn concurrent_transactions_apply_each_version_of_an_entity_in_order<D: InboxDatabase>(
    db: Arc<D>,
) {
    let inbox = Arc::new(Inbox::new(scope("orders")));
    let order = key("order-storm");
    let barrier = Arc::new(Barrier::new(24));
    let mut tasks = Vec::new();
    for i in 0..24u64 {
        let (db, inbox, order, barrier) =
            (db.clone(), inbox.clone(), order.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let version = i % 8 + 1;
            barrier.wait().await;
            loop {
                match update_if_newer(&*db, &inbox, &order, version, false).await {
                    Ok(check) => return (version, check),
                    Err(error) if db.is_deadlock(&error) => continue,
                    Err(error) => panic!("version {version}: {error}"),
                }
            }
        }));
    }
    let mut applied = Vec::new();
    for task in tasks {
        let (version, check) = task.await.unwrap();
        match check {
            VersionCheck::Applied { previous } => {
                assert!(
                    previous.is_none_or(|p| p < version),
                    "{version} after {previous:?}"
                );
                applied.push((previous, version));
            }
            VersionCheck::Stale { current } => assert!(current >= version),
        }
    }
    // Each applied version names the one before it: together they form one increasing chain.
    applied.sort();
    let mut chain = vec![None];
    for (previous, version) in &applied {
        assert_eq!(Some(previous), chain.last(), "{applied:?}");
        chain.push(Some(*version));
    }
    assert_eq!(chain.last(), Some(&Some(8)), "{applied:?}");
    assert_eq!(db.inventory().await.orders, applied.len() as i64);
}
