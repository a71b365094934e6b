//! `oncely::testing` against handlers whose verdict we know: the checks pass the correct ones
//! and fail the broken ones, naming the phase.

#![cfg(all(feature = "testing", feature = "memory", feature = "sqlite"))]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oncely::consumer::{Handled, Handler, HandlerError, KeySource, Message, OncelyHandler};
use oncely::memory::MemoryStore;
use oncely::sqlite::inbox::{self, Inbox, InboxClaim, SqliteInbox};
use oncely::sqlite::sqlx::{self, SqlitePool};
use oncely::testing::{self, NotIdempotent, Phase, Scenario};
use oncely::{Key, ManualClock, Oncely, Scope, async_trait};

fn keys() -> KeySource {
    "/orderId".parse().unwrap()
}

fn order() -> Message {
    Message::new(br#"{"orderId": "o-1"}"#.to_vec(), "orders")
}

/// How a handler over [`Counted`] does its effect.
#[derive(Clone, Copy)]
enum Effect {
    /// Through `OncelyHandler`; the effect a counter bumped with no wait.
    InMemory,
    /// Through `OncelyHandler`; the effect a call to a service that records it, then answers
    /// after a round trip (a wait between the effect and the completion of the claim).
    RemoteCall,
    /// No claim at all: every delivery bumps the counter.
    Unclaimed,
    /// Nothing.
    None,
}

/// A world of a counter (the effect), a memory store and a manual clock.
struct Counted {
    effect: Effect,
    count: Mutex<Arc<AtomicU64>>,
    store: Mutex<Arc<MemoryStore>>,
    clock: ManualClock,
}

impl Counted {
    fn new(effect: Effect) -> Self {
        Counted {
            effect,
            count: Mutex::default(),
            store: Mutex::default(),
            clock: ManualClock::default(),
        }
    }

    fn handler(&self) -> Arc<dyn Handler> {
        let count = self.count.lock().unwrap().clone();
        let oncely = Oncely::new(self.store.lock().unwrap().clone()).with_clock(self.clock.clone());
        let scope = Scope::new("orders").unwrap();
        match self.effect {
            Effect::InMemory => Arc::new(OncelyHandler::new(oncely, scope, move |_, _| {
                let count = count.clone();
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(Vec::new())
                }
            })),
            Effect::RemoteCall => Arc::new(OncelyHandler::new(oncely, scope, move |_, _| {
                let count = count.clone();
                async move {
                    count.fetch_add(1, Ordering::SeqCst); // the service did it...
                    tokio::task::yield_now().await; // ...and its answer is on the way
                    Ok::<_, std::io::Error>(Vec::new())
                }
            })),
            Effect::Unclaimed => Arc::new(Unclaimed(count)),
            Effect::None => Arc::new(OncelyHandler::new(oncely, scope, |_, _| async {
                Ok::<_, std::io::Error>(Vec::new())
            })),
        }
    }
}

struct Unclaimed(Arc<AtomicU64>);

#[async_trait]
impl Handler for Unclaimed {
    async fn handle(&self, _: &Key, _: &Message) -> Result<Handled, HandlerError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(Handled::Done)
    }
}

#[async_trait]
impl Scenario for Counted {
    type Handler = Arc<dyn Handler>;
    type Effect = u64;

    async fn fresh(&self) -> Self::Handler {
        *self.count.lock().unwrap() = Arc::default();
        *self.store.lock().unwrap() = Arc::default();
        self.handler()
    }

    async fn restart(&self) -> Self::Handler {
        self.handler()
    }

    async fn effect(&self) -> u64 {
        self.count.lock().unwrap().load(Ordering::SeqCst)
    }

    async fn wait(&self, duration: Duration) {
        self.clock.advance(duration);
    }
}

#[tokio::test]
async fn oncely_handler_with_an_effect_in_memory_passes_every_check() {
    let scenario = Counted::new(Effect::InMemory);
    let proof = testing::assert_idempotent(&scenario, &keys(), &order(), 8)
        .await
        .unwrap();
    assert_eq!(
        proof.phases,
        [
            Phase::Reference,
            Phase::Sequential { times: 8 },
            Phase::Concurrent { times: 8 }
        ]
    );
    assert_eq!(proof.settled.done, 3, "one effect per phase: {proof:?}");
    assert_eq!(proof.settled.dead_lettered + proof.settled.unsettled, 0);

    let proof = testing::assert_survives_crash_before_ack(&scenario, &keys(), &order())
        .await
        .unwrap();
    assert_eq!(proof.phases, [Phase::Reference, Phase::CrashBeforeAck]);
    assert_eq!(proof.settled.duplicates, 1, "{proof:?}");

    let proof = testing::assert_survives_crashes(&scenario, &keys(), &order())
        .await
        .unwrap();
    assert!(
        proof.phases.contains(&Phase::CrashAt { point: 1 }),
        "the ack at least is a crash point: {proof:?}"
    );
}

#[tokio::test]
async fn counting_without_a_claim_fails_at_the_second_delivery() {
    let scenario = Counted::new(Effect::Unclaimed);
    let err = testing::assert_idempotent(&scenario, &keys(), &order(), 3)
        .await
        .unwrap_err();
    assert_eq!(err.phase(), Phase::Sequential { times: 3 });
    assert!(
        matches!(
            err,
            NotIdempotent::EffectDiffers {
                expected: 1,
                actual: 3,
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("3 deliveries one after another"), "{text}");
    assert!(
        text.contains("expected the effect of one delivery, 1, but got 3"),
        "{text}"
    );

    let err = testing::assert_survives_crash_before_ack(&scenario, &keys(), &order())
        .await
        .unwrap_err();
    assert_eq!(err.phase(), Phase::CrashBeforeAck, "{err}");
}

#[tokio::test]
async fn a_handler_with_no_visible_effect_proves_nothing() {
    let scenario = Counted::new(Effect::None);
    let err = testing::assert_idempotent(&scenario, &keys(), &order(), 2)
        .await
        .unwrap_err();
    assert!(
        matches!(err, NotIdempotent::NoEffect { effect: 0 }),
        "{err:?}"
    );
    assert!(err.to_string().contains("proves nothing"), "{err}");
}

#[tokio::test]
async fn a_message_without_a_key_is_reported_not_acked() {
    let scenario = Counted::new(Effect::InMemory);
    let keyless = Message::new(br#"{"other": 1}"#.to_vec(), "orders");
    let err = testing::assert_idempotent(&scenario, &keys(), &keyless, 2)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, NotIdempotent::NotAcked { phase: Phase::Reference, problem } if problem.contains("dead-lettered")),
        "{err:?}"
    );
}

/// The bug class: the effect done elsewhere, the claim completed in a separate step. Repeated
/// and concurrent deliveries, even a lost ack, all look fine; a crash between the two does not.
#[tokio::test]
async fn an_effect_outside_the_store_is_redone_after_a_crash_before_the_completion() {
    let scenario = Counted::new(Effect::RemoteCall);
    testing::assert_idempotent(&scenario, &keys(), &order(), 8)
        .await
        .unwrap();
    testing::assert_survives_crash_before_ack(&scenario, &keys(), &order())
        .await
        .unwrap();

    let err = testing::assert_survives_crashes(&scenario, &keys(), &order())
        .await
        .unwrap_err();
    assert!(matches!(err.phase(), Phase::CrashAt { .. }), "{err}");
    assert!(
        matches!(
            err,
            NotIdempotent::EffectDiffers {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("a crash at wait"), "{err}");
}

/// Orders reserved in a SQLite file: the reservation and the dedup record in one transaction
/// (the transactional inbox). A restart opens a new pool on the same file.
struct Reservations {
    dir: tempfile::TempDir,
    generation: AtomicU64,
}

impl Reservations {
    fn new() -> Self {
        Reservations {
            dir: tempfile::tempdir().unwrap(),
            generation: AtomicU64::new(0),
        }
    }

    fn url(&self) -> String {
        let generation = self.generation.load(Ordering::SeqCst);
        let path = self.dir.path().join(format!("shop-{generation}.db"));
        format!("sqlite://{}?mode=rwc", path.display())
    }

    async fn pool(&self) -> SqlitePool {
        let options: sqlx::sqlite::SqliteConnectOptions = self.url().parse().unwrap();
        let options = options.busy_timeout(Duration::from_secs(10));
        sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .unwrap()
    }
}

struct Reserve {
    pool: SqlitePool,
    inbox: Inbox,
}

#[async_trait]
impl Handler for Reserve {
    async fn handle(&self, key: &Key, message: &Message) -> Result<Handled, HandlerError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(HandlerError::unavailable)?;
        let claim = self.inbox.claim(&mut tx, key, None).await;
        match claim.map_err(HandlerError::unavailable)? {
            InboxClaim::New => {}
            InboxClaim::Duplicate(_) => return Ok(Handled::Duplicate),
            InboxClaim::InProgress { retry_after } => {
                return Ok(Handled::InProgress { retry_after });
            }
            InboxClaim::Conflict { .. } => return Err(HandlerError::rejected("key reused")),
        }
        sqlx::query("INSERT INTO reservations (order_id, payload) VALUES (?, ?)")
            .bind(key.as_str())
            .bind(message.payload())
            .execute(&mut *tx)
            .await
            .map_err(HandlerError::unavailable)?;
        tx.commit().await.map_err(HandlerError::unavailable)?;
        Ok(Handled::Done)
    }
}

#[async_trait]
impl Scenario for Reservations {
    type Handler = Reserve;
    type Effect = Vec<String>;

    async fn fresh(&self) -> Reserve {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let pool = self.pool().await;
        inbox::migrate(&mut pool.acquire().await.unwrap())
            .await
            .unwrap();
        sqlx::query("CREATE TABLE reservations (order_id TEXT NOT NULL, payload BLOB NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        self.restart_with(pool)
    }

    async fn restart(&self) -> Reserve {
        let pool = self.pool().await;
        self.restart_with(pool)
    }

    async fn effect(&self) -> Vec<String> {
        let pool = self.pool().await;
        let rows: Vec<(String,)> = sqlx::query_as("SELECT order_id FROM reservations ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        rows.into_iter().map(|(id,)| id).collect()
    }

    /// The inbox holds no lease: nothing waits on time.
    async fn wait(&self, _: Duration) {}
}

impl Reservations {
    fn restart_with(&self, pool: SqlitePool) -> Reserve {
        Reserve {
            pool,
            inbox: Inbox::new(Scope::new("reservations").unwrap()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_effect_and_the_record_in_one_sqlite_transaction_survive_every_crash() {
    let scenario = Reservations::new();
    testing::assert_idempotent(&scenario, &keys(), &order(), 8)
        .await
        .unwrap();
    testing::assert_survives_crash_before_ack(&scenario, &keys(), &order())
        .await
        .unwrap();
    let proof = testing::assert_survives_crashes(&scenario, &keys(), &order())
        .await
        .unwrap();
    let crash_points = proof.phases.len() - 1;
    assert!(
        crash_points > 2,
        "SQLite round trips are crash points: {proof:?}"
    );
}
