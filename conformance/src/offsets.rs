//! The consumer offsets suite: one set of behaviours, run against every SQL store's offsets
//! (`oncely_postgres::offsets`, `oncely_mysql::offsets`, `oncely_sqlite::offsets`) on a real
//! server.
//!
//! A store crate implements [`OffsetsDatabase`] for a fresh database holding oncely's tables:
//! begin a transaction (as its offsets ask), save a [`Position`] in it through the store's
//! `save`, commit or roll back, and load through its [`OffsetStore`], as the Kafka consumer
//! does. A test target with `harness = false` hands [`main`] the [`trials`] for it, with the
//! database's own tests beside the suite's (`stores/{postgres,mysql,sqlite}/tests/offsets.rs`).
//!
//! Each behaviour is a plain async function over a fresh database, and becomes one test named
//! `<backend>::<behaviour>`. Every behaviour runs for every backend: there is no way to skip one.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use libtest_mimic::Trial;
use oncely_core::consumer::{OffsetStore, Position};
use oncely_core::{Error, Result};
use tokio::sync::Barrier;

use crate::harness::{Test, database_trials, run_trials};

/// One fresh database of a SQL store, reached the way a consumer's handler reaches it:
/// transactions on a pool of real connections, the store's `save` inside them, and its
/// [`OffsetStore`] beside them. Driver errors outside `save` panic: they are the harness's bugs.
///
/// The methods answer `Send` futures, so the suite can spawn them on a multi-threaded runtime;
/// an implementation writes them as `async fn`.
pub trait OffsetsDatabase: Send + Sync + 'static {
    /// An open transaction.
    type Tx: Send + 'static;

    /// Begins a transaction the way the store's offsets ask for (`BEGIN IMMEDIATE` for
    /// SQLite), waiting for a connection of the pool if all are busy.
    fn begin(&self) -> impl Future<Output = Self::Tx> + Send;

    /// The store's `save(&mut tx, position)`.
    fn save(
        &self,
        tx: &mut Self::Tx,
        position: &Position,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Commits `tx`.
    fn commit(&self, tx: Self::Tx) -> impl Future<Output = ()> + Send;

    /// Rolls `tx` back.
    fn rollback(&self, tx: Self::Tx) -> impl Future<Output = ()> + Send;

    /// The store's offsets on this same database, read outside any transaction, as the Kafka
    /// consumer reads them on a partition's assignment.
    fn offsets(&self) -> &dyn OffsetStore;

    /// Whether `error` says the database chose this transaction as a deadlock victim and rolled
    /// it back: users run such a transaction again, and so do the concurrent tests.
    fn is_deadlock(&self, error: &Error) -> bool;
}

/// The [`OffsetsDatabase`] calls that are the same for every sqlx database: `save` through the
/// store's `$offsets::save`, commit, rollback, and the `offsets` field as the [`OffsetStore`].
/// The harness writes `begin` (SQLite begins with `BEGIN IMMEDIATE`) and `is_deadlock`.
#[macro_export]
macro_rules! sqlx_offsets_calls {
    ($offsets:ty) => {
        async fn save(
            &self,
            tx: &mut Self::Tx,
            position: &::oncely_core::consumer::Position,
        ) -> ::oncely_core::Result<()> {
            <$offsets>::save(&mut **tx, position).await
        }

        async fn commit(&self, tx: Self::Tx) {
            tx.commit().await.unwrap();
        }

        async fn rollback(&self, tx: Self::Tx) {
            tx.rollback().await.unwrap();
        }

        fn offsets(&self) -> &dyn ::oncely_core::consumer::OffsetStore {
            &self.offsets
        }
    };
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        /// Every behaviour of the suite, by name.
        pub fn all<D: OffsetsDatabase>() -> Vec<(&'static str, Test<D>)> {
            crate::database_tests![$($name),*]
        }
    };
}

suite!(
    nothing_stored_loads_empty,
    a_saved_position_loads_as_the_next_offset_of_its_group_topic_and_partition_only,
    a_save_in_a_rolled_back_transaction_is_not_stored,
    an_offset_never_moves_back,
    saves_of_many_partitions_all_load,
    concurrent_saves_of_one_partition_end_at_the_highest,
);

/// One test per behaviour of the suite, then one per test of `own` (the database's own, over
/// the same harness, listed with [`database_tests!`](crate::database_tests)), each named
/// `<backend>::<name>` and run on a database `fresh` makes.
pub fn trials<D, F, Fut>(backend: &str, fresh: F, own: Vec<(&'static str, Test<D>)>) -> Vec<Trial>
where
    D: OffsetsDatabase,
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

fn position(group: &str, topic: &str, partition: i32, offset: i64) -> Position {
    Position {
        group: group.to_owned(),
        topic: topic.to_owned(),
        partition,
        offset,
    }
}

/// What `group` has stored for `topic`, by partition.
async fn load<D: OffsetsDatabase>(db: &D, group: &str, topic: &str) -> Vec<(i32, i64)> {
    let mut stored = db.offsets().load(group, topic).await.unwrap();
    stored.sort_unstable();
    stored
}

/// Saves `positions` in one transaction and commits it.
async fn save_and_commit<D: OffsetsDatabase>(db: &D, positions: &[Position]) {
    let mut tx = db.begin().await;
    for position in positions {
        db.save(&mut tx, position).await.unwrap();
    }
    db.commit(tx).await;
}

async fn nothing_stored_loads_empty<D: OffsetsDatabase>(db: Arc<D>) {
    assert_eq!(load(&*db, "billing", "orders").await, []);
}

async fn a_saved_position_loads_as_the_next_offset_of_its_group_topic_and_partition_only<
    D: OffsetsDatabase,
>(
    db: Arc<D>,
) {
    save_and_commit(&*db, &[position("billing", "orders", 2, 41)]).await;
    // The consumer resumes after the message that was handled.
    assert_eq!(load(&*db, "billing", "orders").await, [(2, 42)]);
    // Another group, another topic: nothing. Kafka's names are exact, case and spaces included.
    for (group, topic) in [
        ("shipping", "orders"),
        ("billing", "payments"),
        ("Billing", "orders"),
        ("billing ", "orders"),
        ("billing", "Orders"),
        ("billing", "orders "),
    ] {
        assert_eq!(load(&*db, group, topic).await, [], "{group:?} {topic:?}");
    }

    // Another group on the same partition keeps an offset of its own.
    save_and_commit(&*db, &[position("shipping", "orders", 2, 7)]).await;
    assert_eq!(load(&*db, "shipping", "orders").await, [(2, 8)]);
    assert_eq!(load(&*db, "billing", "orders").await, [(2, 42)]);
}

async fn a_save_in_a_rolled_back_transaction_is_not_stored<D: OffsetsDatabase>(db: Arc<D>) {
    let mut tx = db.begin().await;
    db.save(&mut tx, &position("billing", "orders", 0, 9))
        .await
        .unwrap();
    // Not committed yet: the consumer does not see it.
    assert_eq!(load(&*db, "billing", "orders").await, []);
    db.rollback(tx).await; // the handler failed after its save
    assert_eq!(load(&*db, "billing", "orders").await, []);

    // Nor does a rolled-back save move a committed offset.
    save_and_commit(&*db, &[position("billing", "orders", 0, 3)]).await;
    let mut tx = db.begin().await;
    db.save(&mut tx, &position("billing", "orders", 0, 10))
        .await
        .unwrap();
    db.rollback(tx).await;
    assert_eq!(load(&*db, "billing", "orders").await, [(0, 4)]);
}

async fn an_offset_never_moves_back<D: OffsetsDatabase>(db: Arc<D>) {
    let at = |offset| position("billing", "orders", 1, offset);
    save_and_commit(&*db, &[at(99)]).await;
    // A late commit of an earlier message (an earlier owner of the partition, a redelivery).
    save_and_commit(&*db, &[at(10)]).await;
    assert_eq!(load(&*db, "billing", "orders").await, [(1, 100)]);
    // The same message again changes nothing either.
    save_and_commit(&*db, &[at(99)]).await;
    assert_eq!(load(&*db, "billing", "orders").await, [(1, 100)]);
    // Within one transaction too: the later position stands.
    save_and_commit(&*db, &[at(200), at(150)]).await;
    assert_eq!(load(&*db, "billing", "orders").await, [(1, 201)]);
    save_and_commit(&*db, &[at(201)]).await;
    assert_eq!(load(&*db, "billing", "orders").await, [(1, 202)]);
}

async fn saves_of_many_partitions_all_load<D: OffsetsDatabase>(db: Arc<D>) {
    // A batch across 64 partitions in one transaction, offsets past 32 bits among them.
    let offset = |partition: i32| i64::from(partition) * 100_000_000 + 7;
    let batch: Vec<_> = (0..64)
        .map(|p| position("billing", "orders", p, offset(p)))
        .collect();
    save_and_commit(&*db, &batch).await;
    // Then a few of them again, further on, in a transaction of their own.
    let later: Vec<_> = (0..64)
        .step_by(9)
        .map(|p| position("billing", "orders", p, offset(p) + 5))
        .collect();
    save_and_commit(&*db, &later).await;

    let expected: Vec<_> = (0..64)
        .map(|p| {
            let next = offset(p) + if p % 9 == 0 { 6 } else { 1 };
            (p, next)
        })
        .collect();
    assert_eq!(load(&*db, "billing", "orders").await, expected);
    assert!(expected.last().unwrap().1 > i64::from(i32::MAX));
}

/// How many transactions save the one partition at once.
const CONCURRENT: usize = 32;

/// Two rounds of 32 transactions at once, each on its own connection and saving one position of
/// the same partition, holding the partition's row a moment before it commits: first onto no
/// row (concurrent inserts of one key), then onto the stored row, with offsets on both sides of
/// it. Each round ends at the highest offset saved so far, whatever order the commits came in.
/// A deadlock victim runs its transaction again, as users do.
async fn concurrent_saves_of_one_partition_end_at_the_highest<D: OffsetsDatabase>(db: Arc<D>) {
    let deadlocks = Arc::new(AtomicUsize::new(0));
    // Transactions begun (or waiting to begin) and not yet committed, and the most at once.
    let (open, most_open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // Round 0 saves the odd offsets 1..=63; round 1 the even ones 40..=102, from below what
    // round 0 stored to above it.
    for (round, lowest, expected) in [(0, 1, 64), (1, 40, 103)] {
        let barrier = Arc::new(Barrier::new(CONCURRENT));
        let mut tasks = Vec::new();
        for task in 0..CONCURRENT {
            let (db, barrier, deadlocks) = (db.clone(), barrier.clone(), deadlocks.clone());
            let (open, most_open) = (open.clone(), most_open.clone());
            // Tasks start in an order unrelated to their offsets.
            let offset = lowest + ((task * 13) % CONCURRENT) as i64 * 2;
            tasks.push(tokio::spawn(async move {
                let at = position("billing", "orders", 5, offset);
                barrier.wait().await;
                most_open.fetch_max(open.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                loop {
                    let mut tx = db.begin().await;
                    match db.save(&mut tx, &at).await {
                        Ok(()) => {
                            tokio::time::sleep(Duration::from_millis(task as u64 % 3)).await;
                            db.commit(tx).await;
                            open.fetch_sub(1, Ordering::SeqCst);
                            return;
                        }
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
        assert_eq!(
            load(&*db, "billing", "orders").await,
            [(5, expected)],
            "after round {round}"
        );
    }
    let most_open = most_open.load(Ordering::SeqCst);
    eprintln!(
        "at most {most_open} of {CONCURRENT} transactions at once; {} deadlock victims ran again",
        deadlocks.load(Ordering::SeqCst)
    );
    assert!(most_open > 1, "the saves never overlapped");
}
