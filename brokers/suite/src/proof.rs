//! The kill -9 proof, the same for every broker.
//!
//! 20,000 `OrderPlaced` messages, of which 20 % re-publish an earlier order (same key, same
//! payload) and 20 are poison (an item that does not exist), go into one destination. Consumer
//! *processes* running the inventory consumer (the runnable example's, `examples/src/inventory.rs`,
//! compiled into this crate: the order row, the stock decrement and the dedup record in one
//! PostgreSQL transaction) are killed
//! with SIGKILL at random moments and restarted. In the end:
//!
//! - every order was applied exactly once: one row per order, none twice, none missing, and
//!   the stock went down by exactly the sum of the distinct orders;
//! - nothing is left unacked in the destination;
//! - every poison order sits in the dead-letter destination with its error (at least once: a
//!   consumer killed after the dead-letter publish and before the ack publishes it again on
//!   redelivery).
//!
//! A broker crate's `tests/proof.rs` calls [`run`] from its test, and [`consume`] with its own
//! source when the same binary is started as a consumer child ([`CHILD_SOURCE_ENV`] set).

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use oncely_consumer::Consumer;
use oncely_core::consumer::{ERROR_HEADER, Handler, KEY_HEADER, Message, RetryPolicy, Source};
use oncely_core::{Oncely, Scope};
use sqlx::PgPool;

use crate::Channel;
use crate::inventory::{ITEMS, POISON_ITEM, ReserveInventory, reserve_with_store};

/// The environment variable that makes a proof test binary run as a consumer of this URL.
pub const CHILD_SOURCE_ENV: &str = "ONCELY_PROOF_SOURCE";
/// The environment variable giving a consumer child its PostgreSQL URL.
pub const CHILD_POSTGRES_ENV: &str = "ONCELY_PROOF_POSTGRES";
/// The environment variable giving a consumer child a store (`mysql://`, `redis://`) for its
/// dedup records: then it claims keys there and reserves orders in PostgreSQL apart
/// (`reserve_with_store`), rather than in the transactional inbox.
pub const CHILD_CLAIMS_ENV: &str = "ONCELY_PROOF_CLAIMS";

/// The proof's size.
#[derive(Clone, Copy, Debug)]
pub struct ProofConfig {
    /// Messages published in all.
    pub messages: usize,
    /// Of which re-publishes of an earlier order.
    pub duplicates: usize,
    /// Of the distinct orders, how many are poison.
    pub poison: usize,
    /// SIGKILLs.
    pub kills: usize,
    /// SIGSTOPs, after the kills: a consumer frozen for [`pause`](Self::pause) (as by a long GC
    /// pause or a VM stall) while the others go on, then woken with SIGCONT.
    pub pauses: usize,
    /// How long each pause lasts.
    pub pause: Duration,
    /// Consumer processes running at once.
    pub consumers: usize,
    /// How long the whole run may take before the proof fails.
    pub deadline: Duration,
    /// Whether each re-publish goes right after its original rather than anywhere later, so
    /// that copies meet their originals in flight in another consumer: for the proofs about
    /// leases (a consumer whose clock is off).
    pub copies_next_to_originals: bool,
}

impl Default for ProofConfig {
    fn default() -> Self {
        ProofConfig {
            messages: 20_000,
            duplicates: 4_000,
            poison: 20,
            kills: 20,
            pauses: 0,
            pause: Duration::from_secs(8),
            consumers: 2,
            deadline: Duration::from_secs(600),
            copies_next_to_originals: false,
        }
    }
}

const STOCK: i64 = 1_000_000_000;

/// One order: its key, item and quantity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Order {
    id: String,
    item: &'static str,
    qty: i64,
}

impl Order {
    fn message(&self) -> Message {
        let payload = serde_json::json!({"orderId": self.id, "item": self.item, "qty": self.qty});
        Message::new(payload.to_string().into_bytes(), "")
    }
}

/// What the proof saw.
#[derive(Debug)]
pub struct ProofReport {
    /// Messages published.
    pub published: usize,
    /// Distinct good orders applied.
    pub applied: usize,
    /// Dead letters read (poison orders, counting repeats).
    pub dead_letters: usize,
    /// SIGKILLs done.
    pub kills: usize,
    /// SIGSTOPs done (each followed by its SIGCONT).
    pub pauses: usize,
    /// Faults the run's `faults` injected ([`run_with`]).
    pub faults: usize,
    /// Consumers restarted because nothing progressed (only on brokers that
    /// [rebalance lazily](crate::Channel::rebalances_lazily)).
    pub nudges: usize,
    /// Wall time from the first consumer start to everything settled.
    pub elapsed: Duration,
}

/// Runs the proof on `channel`, with consumer processes started by `spawn(source_url,
/// postgres_url)`, effects in the (fresh, empty) schema `postgres_url` points at. Panics with
/// what went wrong.
pub async fn run<C: Channel>(
    channel: &C,
    postgres_url: &str,
    config: ProofConfig,
    spawn: impl Fn(&str, &str) -> Child,
) -> ProofReport {
    run_with(channel, postgres_url, config, spawn, async { 0 }).await
}

/// [`run`], with `faults` running beside the consumers from the moment they start (and beside
/// the publishing, on brokers that publish while consuming): a future that breaks something
/// around them - restarts their PostgreSQL, say - and returns how many faults it injected.
/// The checks start once it is done, so it must leave everything running.
pub async fn run_with<C: Channel>(
    channel: &C,
    postgres_url: &str,
    config: ProofConfig,
    spawn: impl Fn(&str, &str) -> Child,
    faults: impl Future<Output = usize>,
) -> ProofReport {
    crate::inventory::setup(postgres_url, &ITEMS, STOCK)
        .await
        .expect("the inventory tables");
    // A new seed each run, printed, so a failure can be replayed with ONCELY_PROOF_SEED.
    let seed = std::env::var("ONCELY_PROOF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("kill -9 proof: seed {seed} (ONCELY_PROOF_SEED={seed} replays it)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let distinct = config.messages - config.duplicates;
    // Every stride-th order is poison, `config.poison` of them in all.
    let stride = distinct / config.poison.max(1);
    let orders: Vec<Order> = (0..distinct)
        .map(|n| Order {
            id: format!("o-{n:06}"),
            item: if config.poison > 0 && n % stride == stride / 2 {
                POISON_ITEM
            } else {
                ITEMS[n % ITEMS.len()]
            },
            qty: 1 + (n % 5) as i64,
        })
        .collect();
    let poison: BTreeSet<String> = orders
        .iter()
        .filter(|o| o.item == POISON_ITEM)
        .map(|o| o.id.clone())
        .collect();
    assert_eq!(poison.len(), config.poison, "the proof's own poison count");
    let good: Vec<&Order> = orders.iter().filter(|o| o.item != POISON_ITEM).collect();

    // Every order once, in order; then re-publishes of random good orders, spread through
    // (or each right after its original).
    let mut stream: Vec<&Order> = orders.iter().collect();
    if config.copies_next_to_originals {
        let mut copies: BTreeMap<&str, usize> = BTreeMap::new();
        for _ in 0..config.duplicates {
            *copies.entry(&good[rng.usize(..good.len())].id).or_default() += 1;
        }
        stream = orders
            .iter()
            .flat_map(|o| std::iter::repeat_n(o, 1 + copies.get(o.id.as_str()).unwrap_or(&0)))
            .collect();
    } else {
        for _ in 0..config.duplicates {
            let again = good[rng.usize(..good.len())];
            let at = rng.usize(stream.len() / 10..=stream.len());
            stream.insert(at, again);
        }
    }
    let messages: Vec<Message> = stream.iter().map(|order| order.message()).collect();
    let together = channel.consume_while_publishing();
    if !together {
        publish(channel, &messages).await;
    }

    // A consumer the proof ends: gracefully, unless leaving may strand the group.
    let strands = channel.leaving_may_strand_the_group();
    let retire = |child: &mut Child| if strands { kill9(child) } else { stop(child) };
    let source_url = channel.source_url();
    let started = Instant::now();
    let mut children: Vec<Child> = (0..config.consumers)
        .map(|_| spawn(&source_url, postgres_url))
        .collect();
    let killing = async {
        let mut kills = 0;
        while kills < config.kills {
            tokio::time::sleep(Duration::from_millis(rng.u64(50..700))).await;
            let victim = rng.usize(..children.len());
            kill9(&mut children[victim]);
            kills += 1;
            children[victim] = spawn(&source_url, postgres_url);
        }
        for _ in 0..config.pauses {
            tokio::time::sleep(Duration::from_millis(rng.u64(300..2_000))).await;
            let victim = &children[rng.usize(..children.len())];
            signal(victim, "-STOP");
            eprintln!(
                "kill -9 proof: consumer {} paused for {:?}",
                victim.id(),
                config.pause
            );
            tokio::time::sleep(config.pause).await;
            signal(victim, "-CONT");
        }
        (kills, config.pauses)
    };
    let ((), (kills, pauses), faults) = if together {
        tokio::join!(publish(channel, &messages), killing, faults)
    } else {
        let (kills, faults) = tokio::join!(killing, faults);
        ((), kills, faults)
    };
    // After the faults: a server they restarted is up again.
    let pool = PgPool::connect(postgres_url).await.expect("PostgreSQL");
    // Every good order applied and every poison order dead-lettered...
    let mut progress = (0, Instant::now());
    let mut nudges = 0;
    loop {
        for child in &mut children {
            if let Some(status) = child.try_wait().expect("child status") {
                panic!("a consumer exited on its own: {status}");
            }
        }
        let applied: i64 = sqlx::query_scalar("SELECT count(DISTINCT order_id) FROM orders")
            .fetch_one(&pool)
            .await
            .unwrap();
        // A broker the faults restarted may refuse a read or two while its clients reconnect;
        // the loop asks again (the final count below may not fail).
        let letters = match channel.dead_letters().await {
            Ok(letters) => dead_letter_keys(&letters),
            Err(e) => {
                eprintln!("kill -9 proof: dead letters not read yet: {e}");
                assert!(
                    started.elapsed() < config.deadline,
                    "dead letters unreadable after {:?}: {e}",
                    config.deadline
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if applied as usize == good.len() && letters.len() == poison.len() {
            break;
        }
        // A liveness aid, not part of what is proven: tansu can leave a partition unassigned
        // for minutes after a member was SIGKILLed (real Kafka rebalances). With no progress
        // for a while, one consumer is stopped (gracefully, or with SIGKILL where leaving may
        // strand the group) and started again, so the group rebalances. That is one more fault
        // the run must survive, so it cannot hide a lost or doubled order.
        let done = applied as usize + letters.len();
        if done != progress.0 {
            progress = (done, Instant::now());
        } else if progress.1.elapsed() > LOST_AFTER && channel.unsettled().await.ok() == Some(0) {
            // Nothing left to deliver and no progress: what is missing was acked unapplied.
            let applied = applied_orders(&pool).await;
            let lost: Vec<&String> = good
                .iter()
                .map(|o| &o.id)
                .filter(|id| !applied.contains(*id))
                .take(10)
                .collect();
            let letters = channel.dead_letters().await.expect("dead letters");
            let wrongly: Vec<String> = letters
                .iter()
                .filter(|l| !poison.contains(l.header(KEY_HEADER).unwrap_or_default()))
                .take(3)
                .map(|l| {
                    format!(
                        "{}: {}",
                        l.header(KEY_HEADER).unwrap_or_default(),
                        l.header(ERROR_HEADER).unwrap_or_default()
                    )
                })
                .collect();
            panic!(
                "orders lost: every message is settled, yet {} of {} good orders are applied \
                 (missing, up to 10: {lost:?}; good orders dead-lettered, up to 3: {wrongly:?})",
                applied.len(),
                good.len()
            );
        } else if channel.rebalances_lazily() && progress.1.elapsed() > STALL {
            let nudged = nudges % children.len();
            eprintln!(
                "kill -9 proof: no progress for {STALL:?} at {applied} applied: restarting \
                 consumer {nudged} so the group rebalances"
            );
            retire(&mut children[nudged]);
            children[nudged] = spawn(&source_url, postgres_url);
            nudges += 1;
            progress.1 = Instant::now();
        }
        assert!(
            started.elapsed() < config.deadline,
            "not settled after {:?}: applied {applied} of {}, {} of {} poison orders \
             dead-lettered",
            config.deadline,
            good.len(),
            letters.len(),
            poison.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // ... then the consumers stop (gracefully, unless leaving may strand the group), and
    // whatever is still queued (re-published orders not yet seen, or, after SIGKILL, messages
    // handled but not yet committed) is drained by one more consumer until nothing is left
    // unsettled.
    for child in &mut children {
        retire(child);
    }
    // The drainer stays until it is done: a consumer stopped after a fixed while may not yet
    // have joined its group on a slow broker, and a new one would start the join over. Where
    // the count needs every consumer gone, the drainer is stopped before each count and the
    // next one stays twice as long (up to 16 s), so a slow join is still reached.
    // As in the run above, a broker that rebalances lazily may leave the drainer without
    // partitions: after STALL without progress it is restarted, which rejoins.
    let mut drain: Option<Child> = None;
    let mut stay = Duration::from_secs(1);
    let mut drain_progress = (u64::MAX, Instant::now());
    loop {
        if let Some(drainer) = &mut drain {
            if let Some(status) = drainer.try_wait().expect("drainer status") {
                panic!("the draining consumer exited on its own: {status}");
            }
            let stalled = channel.rebalances_lazily() && drain_progress.1.elapsed() > STALL;
            if !channel.counts_unsettled_while_consuming() || stalled {
                if stalled {
                    eprintln!(
                        "drain: no progress for {STALL:?}: restarting the draining consumer{}",
                        explained(channel).await
                    );
                    drain_progress.1 = Instant::now();
                }
                retire(drainer);
                drain = None;
            }
        }
        let unsettled = channel.unsettled().await.expect("unsettled");
        if unsettled == 0 {
            break;
        }
        if unsettled < drain_progress.0 {
            drain_progress = (unsettled, Instant::now());
        }
        if started.elapsed() >= config.deadline {
            panic!(
                "{unsettled} messages still unsettled after {:?}{}",
                config.deadline,
                explained(channel).await
            );
        }
        if drain.is_none() {
            eprintln!("drain: {unsettled} messages unsettled, a draining consumer started");
            drain = Some(spawn(&source_url, postgres_url));
        }
        if channel.counts_unsettled_while_consuming() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        } else {
            tokio::time::sleep(stay).await;
            stay = (stay * 2).min(Duration::from_secs(16));
        }
    }
    if let Some(mut drain) = drain {
        retire(&mut drain);
    }
    let settled = started.elapsed();

    // Exactly once: no order twice, none missing, stock down by exactly the distinct orders.
    let twice: Vec<(String, i64)> = sqlx::query_as(
        "SELECT order_id, count(*) FROM orders GROUP BY order_id HAVING count(*) > 1 LIMIT 10",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(twice.is_empty(), "orders applied more than once: {twice:?}");
    let applied = applied_orders(&pool).await;
    let expected: BTreeSet<String> = good.iter().map(|o| o.id.clone()).collect();
    assert_eq!(
        applied, expected,
        "the applied orders are exactly the good ones"
    );
    for item in ITEMS {
        let left: i64 = sqlx::query_scalar("SELECT qty FROM stock WHERE item = $1")
            .bind(item)
            .fetch_one(&pool)
            .await
            .unwrap();
        let ordered: i64 = good.iter().filter(|o| o.item == item).map(|o| o.qty).sum();
        assert_eq!(
            STOCK - left,
            ordered,
            "stock of {item} went down once per order"
        );
    }
    assert_eq!(
        channel.unsettled().await.unwrap(),
        0,
        "nothing left unacked"
    );
    let letters = channel.dead_letters().await.unwrap();
    let by_key = dead_letter_keys(&letters);
    assert_eq!(
        by_key.keys().cloned().collect::<BTreeSet<_>>(),
        poison,
        "the dead letters are exactly the poison orders"
    );
    for letter in &letters {
        let error = letter.header(ERROR_HEADER).unwrap_or_default();
        assert!(
            error.contains("no stock row for item `poison`"),
            "a dead letter carries its error: {error:?}"
        );
    }
    pool.close().await;
    ProofReport {
        published: stream.len(),
        applied: applied.len(),
        dead_letters: letters.len(),
        kills,
        pauses,
        faults,
        nudges,
        elapsed: settled,
    }
}

async fn publish<C: Channel>(channel: &C, messages: &[Message]) {
    for chunk in messages.chunks(100) {
        channel.publish_batch(chunk).await.expect("publish orders");
    }
}

/// The consumer side of the proof, in a child process: runs the inventory example over `source`
/// with effects at `postgres_url` until SIGTERM (a graceful stop) or SIGKILL.
pub async fn consume<S: Source>(source: S, postgres_url: &str) {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(20)
        .connect(postgres_url)
        .await
        .expect("PostgreSQL");
    let scope = Scope::new("orders").unwrap();
    let handler: std::sync::Arc<dyn Handler> = match std::env::var(CHILD_CLAIMS_ENV) {
        Ok(claims) => {
            let oncely = Oncely::new(claims_store(&claims).await);
            std::sync::Arc::new(reserve_with_store(pool, oncely, scope))
        }
        Err(_) => std::sync::Arc::new(ReserveInventory::new(pool, scope)),
    };
    let consumer = Consumer::new(handler, "/orderId".parse().unwrap())
        .concurrency(16)
        .retry(
            RetryPolicy::default()
                .with_max_attempts(3)
                .with_backoff(Duration::from_millis(10), Duration::from_millis(50)),
        );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    consumer
        .run(source, async move {
            terminate.recv().await;
        })
        .await
        .expect("the consumer runs until stopped");
}

/// The store a consumer child keeps its dedup records in, by `url`'s scheme. Waits for it: a
/// child started while the proof has it down comes up once it is back.
async fn claims_store(url: &str) -> std::sync::Arc<dyn oncely_core::Store> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match oncely::connect(url).await {
            Ok(store) => return store,
            Err(e) if Instant::now() < deadline => {
                eprintln!("proof consumer: the claims store is not up yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the claims store {url}: {e}"),
        }
    }
}

/// The orders applied so far, each once however often it was.
async fn applied_orders(pool: &PgPool) -> BTreeSet<String> {
    sqlx::query_scalar("SELECT order_id FROM orders")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

fn dead_letter_keys(letters: &[Message]) -> BTreeMap<String, usize> {
    let mut keys = BTreeMap::new();
    for letter in letters {
        let key = letter.header(KEY_HEADER).unwrap_or("<no key>").to_owned();
        *keys.entry(key).or_insert(0) += 1;
    }
    keys
}

/// How long the proof waits without progress before it restarts a consumer (see `run`): well
/// past the session timeouts the suites use, so a broker that rebalances does so first.
const STALL: Duration = Duration::from_secs(45);

/// How long the proof waits without progress, with nothing left unsettled, before it calls the
/// missing orders lost.
const LOST_AFTER: Duration = Duration::from_secs(20);

/// What [`Channel::explain_unsettled`] says, as a suffix for a message: `"; ..."`, or empty.
async fn explained<C: Channel>(channel: &C) -> String {
    match channel.explain_unsettled().await {
        Ok(why) if why.is_empty() => String::new(),
        Ok(why) => format!("; {why}"),
        Err(e) => format!("; (not explained: {e})"),
    }
}

fn kill9(child: &mut Child) {
    let _ = child.kill(); // SIGKILL on Unix
    let _ = child.wait();
}

fn signal(child: &Child, signal: &str) {
    let sent = Command::new("kill")
        .arg(signal)
        .arg(child.id().to_string())
        .status();
    assert!(
        sent.is_ok_and(|s| s.success()),
        "kill {signal} {}",
        child.id()
    );
}

fn stop(child: &mut Child) {
    // SIGTERM, for a graceful stop; SIGKILL if it does not come.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kill9(child);
}
