//! The kill -9 proof of the outbox relay, on NATS JetStream and on RabbitMQ.
//!
//! 5,000 rows over 50 aggregates are enqueued in 50 transactions while two relay *processes*
//! (this test binary, started again as `relay_child`) publish them; about ten times, at random
//! moments, one of them is killed with SIGKILL and started again. In the end:
//!
//! - every row reached the broker (the destination is read back whole);
//! - nothing else did;
//! - each aggregate's rows, duplicates removed by message id (first copy kept), arrived in
//!   enqueue order; after that dedup each row is there exactly once.
//!
//! `ONCELY_PROOF_SEED` replays a run's kill schedule and aggregate choice.

mod support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oncely_core::outbox::{OutboxStore, message_id};
use oncely_postgres::outbox::{Outbox, OutboxMessage, PostgresOutbox, PostgresOutboxStore};
use oncely_relay::Relay;
use sqlx::PgPool;
use support::{Destination, check_delivery, wait_all_sent};

const CHILD_OUTBOX_ENV: &str = "ONCELY_RELAY_PROOF_OUTBOX";
const CHILD_TO_ENV: &str = "ONCELY_RELAY_PROOF_TO";

const ROWS: usize = 5_000;
const AGGREGATES: usize = 50;
const TRANSACTIONS: usize = 50;
const KILLS: usize = 10;
const RELAYS: usize = 2;

/// A relay process of the proof: runs only when started by the proof (its environment set),
/// until SIGTERM or SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_child() {
    let (Ok(outbox), Ok(to)) = (std::env::var(CHILD_OUTBOX_ENV), std::env::var(CHILD_TO_ENV))
    else {
        return;
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    let store = PostgresOutboxStore::connect(&outbox).await.unwrap();
    let publisher: Box<dyn oncely_core::outbox::Publisher> = if to.starts_with("nats") {
        Box::new(oncely_nats::NatsPublisher::connect(&to).await.unwrap())
    } else {
        Box::new(oncely_rabbitmq::AmqpPublisher::connect(&to).await.unwrap())
    };
    Relay::new(store, publisher)
        .batch(25)
        .poll_interval(Duration::from_millis(20))
        .on_error(|e| eprintln!("relay child {}: {e}", std::process::id()))
        .run(async move {
            terminate.recv().await;
        })
        .await
        .unwrap();
}

fn spawn(outbox: &str, to: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "relay_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_OUTBOX_ENV, outbox)
        .env(CHILD_TO_ENV, to)
        .stdout(Stdio::null())
        .spawn()
        .expect("start a relay process")
}

/// The relay processes: killed if the proof fails, so none outlives it.
struct Relays(Vec<Child>);

impl Drop for Relays {
    fn drop(&mut self) {
        for child in &mut self.0 {
            kill9(child);
        }
    }
}

fn kill9(child: &mut Child) {
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            // A relay still starting up may not have its SIGTERM handler yet.
            let early = std::os::unix::process::ExitStatusExt::signal(&status) == Some(15);
            assert!(status.success() || early, "a relay stopped badly: {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    kill9(child);
    panic!("a relay did not stop within 10 s of SIGTERM");
}

async fn survives_kill_9(destination: Destination, name: &str) {
    // The pid in the name: a relay left over from an earlier run can never reach this schema.
    let schema = format!("oncely_relay_proof_{name}_{}", std::process::id());
    let outbox_url = support::fresh_schema(&schema).await;
    let store = PostgresOutboxStore::connect(&outbox_url).await.unwrap();
    let origin = store.origin().await.unwrap();
    let pool = PgPool::connect(&outbox_url).await.unwrap();
    let seed = std::env::var("ONCELY_PROOF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("relay kill -9 proof ({name}): seed {seed} (ONCELY_PROOF_SEED={seed} replays it)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let picks: Vec<usize> = (0..ROWS).map(|_| rng.usize(..AGGREGATES)).collect();

    let started = Instant::now();
    let to = destination.url();
    let mut relays = Relays((0..RELAYS).map(|_| spawn(&outbox_url, &to)).collect());

    // The service: enqueues while the relays run and die.
    let enqueue = {
        let pool = pool.clone();
        let origin = origin.clone();
        tokio::spawn(async move {
            let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let outbox = Outbox::new();
            for chunk in picks.chunks(ROWS / TRANSACTIONS) {
                let mut tx = pool.begin().await.unwrap();
                let mut ids = Vec::new();
                for (n, pick) in chunk.iter().enumerate() {
                    let aggregate = format!("agg-{pick:02}");
                    let message = OutboxMessage::new(&aggregate, format!("#{n}").into_bytes())
                        .with_header("Aggregate", &aggregate);
                    let id = outbox.enqueue(&mut tx, &message).await.unwrap();
                    ids.push((aggregate, message_id(&origin, id)));
                }
                tx.commit().await.unwrap();
                for (aggregate, id) in ids {
                    expected.entry(aggregate).or_default().push(id);
                }
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
            expected
        })
    };

    let mut kills = 0;
    while kills < KILLS {
        tokio::time::sleep(Duration::from_millis(rng.u64(100..600))).await;
        let victim = rng.usize(..RELAYS);
        kill9(&mut relays.0[victim]);
        kills += 1;
        relays.0[victim] = spawn(&outbox_url, &to);
    }
    let expected = enqueue.await.unwrap();
    wait_all_sent(&pool, Duration::from_secs(120)).await;
    let settled = started.elapsed();
    for relay in &mut relays.0 {
        stop(relay);
    }

    let delivered = check_delivery(&destination.read_all().await, &expected);
    eprintln!(
        "relay kill -9 proof ({name}): {ROWS} rows over {AGGREGATES} aggregates, {kills} kills, \
         {} messages read ({} duplicate copies: re-published after a kill and kept by the broker), {} distinct, all in order per \
         aggregate; settled in {:.1}s",
        delivered.total,
        delivered.total - delivered.distinct,
        delivered.distinct,
        settled.as_secs_f64()
    );
    assert_eq!(delivered.distinct, ROWS);
    destination.remove().await;
    pool.close().await;
    support::drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_relays_killed_at_random_lose_nothing_and_keep_each_aggregate_in_order() {
    survives_kill_9(Destination::nats("proof").await, "nats").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_relays_killed_at_random_lose_nothing_and_keep_each_aggregate_in_order() {
    survives_kill_9(Destination::rabbit("proof").await, "rabbitmq").await;
}
