//! The kill -9 proof of the outbox relay: PostgreSQL to NATS JetStream, to RabbitMQ, to Kafka and
//! to SQS, MariaDB to RabbitMQ, to Kafka and to SQS, and SQLite to NATS JetStream, to RabbitMQ, to
//! Kafka and to SQS.
//!
//! 5,000 rows (500 to SQS: see [`SQS_ROWS`]) over 50 aggregates are enqueued in 50 transactions while two relay *processes*
//! (this test binary, started again with the relay's environment set: see [`main`]) publish
//! them; about ten times, at random moments, one of them is killed with SIGKILL and started
//! again. In the end:
//!
//! - every row reached the broker (the destination is read back whole);
//! - nothing else did;
//! - each aggregate's rows, duplicates removed by message id (first copy kept), arrived in
//!   enqueue order; after that dedup each row is there exactly once.
//! - on Kafka (a topic of three partitions, each read back from the beginning to its high
//!   watermark, and on past it: see `support::read_topic`; the message id from the
//!   `Oncely-Message-Id` header): each record's key is its row's aggregate, and all of an
//!   aggregate's records are in one partition, where the order above is their offset order.
//! - on SQS (a FIFO queue, emptied ten messages a receive while the relays run, each receive
//!   deleted before the next: see `support::drain_queue`; the message id from the
//!   `Oncely-Message-Id` attribute): each message's group is its row's aggregate and its
//!   deduplication id its row's id, and the order above is each group's order. SQS drops a
//!   copy re-sent within five minutes by its deduplication id; moto only while the first copy
//!   is still on the queue, so re-published copies do arrive here.
//!
//! `ONCELY_PROOF_SEED` replays a run's kill schedule and aggregate choice.
//!
//! A test binary without libtest's harness (`harness = false`): its `main` is either a relay
//! process of a proof, when started by one, or the list of proofs, so no test stands in for the
//! relay process and passes while doing nothing in a normal run.

mod support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Trial};

use oncely_conformance::servers;
use oncely_core::outbox::{OutboxMessage, OutboxStore, message_id};
use oncely_mysql::outbox::MySqlOutboxStore;
use oncely_mysql::sqlx::MySqlPool;
use oncely_postgres::outbox::PostgresOutboxStore;
use oncely_relay::Relay;
use oncely_sqlite::outbox::SqliteOutboxStore;
use oncely_sqlite::sqlx::SqlitePool;
use oncely_sqlite::sqlx::sqlite::SqliteConnectOptions;
use sqlx::PgPool;
use support::{Destination, Service, check_delivery};

const CHILD_OUTBOX_ENV: &str = "ONCELY_RELAY_PROOF_OUTBOX";
const CHILD_TO_ENV: &str = "ONCELY_RELAY_PROOF_TO";

const ROWS: usize = 5_000;
const AGGREGATES: usize = 50;
const TRANSACTIONS: usize = 50;
const KILLS: usize = 10;
const RELAYS: usize = 2;
/// The rows of the SQS proofs, a tenth of [`ROWS`]: moto (the SQS-compatible server the tests
/// use) is a Python server answering a few dozen `SendMessage`s a second at best, one at a time
/// (and fewer on a busy machine), so 5,000 rows would take minutes. The kills come while these
/// are still being published, as they do for 5,000.
const SQS_ROWS: usize = 500;
/// The relays' batch on SQS: small enough to be published well within the SQLite lease (2 s)
/// at moto's pace. On the other brokers, 25.
const SQS_BATCH: usize = 5;

/// The brokers a proof relays to.
#[derive(Clone, Copy)]
enum Broker {
    Nats,
    RabbitMq,
    Kafka,
    SqsFifo,
}

/// Each proof: its test name, the broker and the name of the destination made on it, and the
/// proof's name for [`survives_kill_9`] (which also chooses the outbox's database by it).
const PROOFS: &[(&str, Broker, &str, &str)] = &[
    (
        "nats_relays_killed_at_random_lose_nothing_and_keep_each_aggregate_in_order",
        Broker::Nats,
        "proof",
        "nats",
    ),
    (
        "mysql_to_rabbitmq_relays_killed_at_random_lose_nothing_and_keep_each_aggregate_in_order",
        Broker::RabbitMq,
        "proof_mysql",
        "mysql_rabbitmq",
    ),
    (
        "rabbitmq_relays_killed_at_random_lose_nothing_and_keep_each_aggregate_in_order",
        Broker::RabbitMq,
        "proof",
        "rabbitmq",
    ),
    (
        "sqlite_to_nats_relays_killed_at_random_lose_nothing_and_keep_each_aggregate_in_order",
        Broker::Nats,
        "proof_sqlite",
        "sqlite_nats",
    ),
    (
        "sqlite_to_rabbitmq_relays_killed_at_random_lose_nothing_and_keep_each_aggregate_in_order",
        Broker::RabbitMq,
        "proof_sqlite",
        "sqlite_rabbitmq",
    ),
    (
        "postgres_to_kafka_relays_killed_at_random_lose_nothing_and_keep_each_aggregate_in_order",
        Broker::Kafka,
        "proof",
        "kafka",
    ),
    (
        "mysql_to_kafka_relays_killed_at_random_lose_nothing_and_keep_each_aggregate_in_order",
        Broker::Kafka,
        "proof_mysql",
        "mysql_kafka",
    ),
    (
        "sqlite_to_kafka_relays_killed_at_random_lose_nothing_and_keep_each_aggregate_in_order",
        Broker::Kafka,
        "proof_sqlite",
        "sqlite_kafka",
    ),
    (
        "postgres_to_sqs_relays_killed_at_random_lose_nothing_and_keep_each_aggregate_in_order",
        Broker::SqsFifo,
        "proof",
        "sqs",
    ),
    (
        "mysql_to_sqs_relays_killed_at_random_lose_nothing_and_keep_each_aggregate_in_order",
        Broker::SqsFifo,
        "proof-mysql",
        "mysql_sqs",
    ),
    (
        "sqlite_to_sqs_relays_killed_at_random_lose_nothing_and_keep_each_aggregate_in_order",
        Broker::SqsFifo,
        "proof-sqlite",
        "sqlite_sqs",
    ),
];

/// What a proof does to the relays' world while they publish.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// SIGKILL of a relay, [`KILLS`] times, each restarted.
    Kills,
    /// The outbox's PostgreSQL (a server of the test's own) restarted [`RESTARTS`] times, each
    /// 0-25 ms after a transaction of rows was enqueued, so it lands while they are taken,
    /// published and marked: crashed and shut down in turn. The relays are not killed.
    DatabaseRestarts,
}

/// The database restarts of [`Fault::DatabaseRestarts`].
const RESTARTS: usize = 3;

/// Started by a proof (its environment set), this binary is one of its relay processes;
/// otherwise it runs the proofs as tests (`cargo test` arguments such as a name filter work).
fn main() {
    if let (Ok(outbox), Ok(to)) = (std::env::var(CHILD_OUTBOX_ENV), std::env::var(CHILD_TO_ENV)) {
        runtime().block_on(relay_process(outbox, to));
        return;
    }
    let restarts = (
        "postgres_restarted_3_times_mid_publish_to_nats_loses_nothing_and_keeps_each_aggregate_in_order",
        Broker::Nats,
        "proof_restarts",
        "restarts_nats",
        Fault::DatabaseRestarts,
    );
    let trials = PROOFS
        .iter()
        .map(|&(test, broker, destination, name)| (test, broker, destination, name, Fault::Kills))
        .chain([restarts])
        .map(|(test, broker, destination, name, fault)| {
            Trial::test(test, move || {
                runtime().block_on(async move {
                    let destination = match broker {
                        Broker::Nats => Destination::nats(destination).await,
                        Broker::RabbitMq => Destination::rabbit(destination).await,
                        Broker::Kafka => Destination::kafka(destination).await,
                        Broker::SqsFifo => Destination::sqs_fifo(destination).await,
                    };
                    survives(destination, name, fault).await;
                });
                Ok(())
            })
        })
        .collect();
    libtest_mimic::run(&Arguments::from_args(), trials).exit()
}

/// The runtime of a proof, and of a relay process: two workers, as `#[tokio::test]` had them.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A relay process of a proof: relays from `outbox` to `to` until SIGTERM or SIGKILL.
async fn relay_process(outbox: String, to: String) {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    let batch = if to.starts_with("sqs") { SQS_BATCH } else { 25 };
    let publisher: Box<dyn oncely_core::outbox::Publisher> = if to.starts_with("nats") {
        Box::new(oncely_nats::NatsPublisher::connect(&to).await.unwrap())
    } else if to.starts_with("kafka") {
        Box::new(oncely_kafka::KafkaPublisher::connect(&to).await.unwrap())
    } else if to.starts_with("sqs") {
        Box::new(oncely_sqs::SqsPublisher::connect(&to).await.unwrap())
    } else {
        Box::new(oncely_rabbitmq::AmqpPublisher::connect(&to).await.unwrap())
    };
    let stop = async move {
        terminate.recv().await;
    };
    let report = if outbox.starts_with("mysql") {
        let store = MySqlOutboxStore::connect(&outbox).await.unwrap();
        child_relay(store, publisher, batch).run(stop).await
    } else if outbox.starts_with("sqlite:") {
        // A short lease: a killed holder is replaced within 2 s.
        let store = SqliteOutboxStore::connect(&outbox).await.unwrap();
        child_relay(store.lease(Duration::from_secs(2)), publisher, batch)
            .run(stop)
            .await
    } else {
        let store = PostgresOutboxStore::connect(&outbox).await.unwrap();
        child_relay(store, publisher, batch).run(stop).await
    };
    report.unwrap();
}

fn child_relay<S: OutboxStore>(
    store: S,
    publisher: Box<dyn oncely_core::outbox::Publisher>,
    batch: usize,
) -> Relay<S, Box<dyn oncely_core::outbox::Publisher>> {
    Relay::new(store, publisher)
        .batch(batch)
        .poll_interval(Duration::from_millis(20))
        .on_error(|e| eprintln!("relay child {}: {e}", std::process::id()))
}

fn spawn(outbox: &str, to: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env(CHILD_OUTBOX_ENV, outbox)
        .env(CHILD_TO_ENV, to)
        .stdout(Stdio::null())
        .spawn()
        .expect("start a relay process")
}

/// The `n`-th restart of the proof's PostgreSQL: crashed or shut down in turn, down for up to
/// 2 s. While it is down, the relays' takes and marks fail and are retried.
async fn restart(
    server: Arc<std::sync::Mutex<oncely_conformance::faults::PostgresServer>>,
    n: usize,
) {
    use oncely_conformance::faults::{Restartable, Stop};
    let how = if n.is_multiple_of(2) {
        Stop::Crash
    } else {
        Stop::Graceful
    };
    let down = Duration::from_millis(fastrand::u64(100..2_000));
    tokio::task::spawn_blocking(move || server.lock().unwrap().restart(how, down))
        .await
        .unwrap();
    eprintln!("relay proof: the outbox's PostgreSQL {how:?}, up again after {down:?}");
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

async fn survives(destination: Destination, name: &str, fault: Fault) {
    let rows = match &destination {
        Destination::Sqs { .. } => SQS_ROWS,
        _ => ROWS,
    };
    // A fresh schema or database, its name this run's (the pid among others): a relay left
    // over from an earlier run can never reach it.
    let prefix = format!("oncely_relay_proof_{name}");
    let dir = tempfile::tempdir().unwrap();
    let server = (fault == Fault::DatabaseRestarts).then(|| {
        Arc::new(std::sync::Mutex::new(
            oncely_conformance::faults::PostgresServer::start(),
        ))
    });
    let (outbox_url, origin, service): (String, String, Arc<dyn Service>) =
        if let Some(server) = &server {
            let url = oncely_conformance::faults::Restartable::url(&*server.lock().unwrap());
            let store = PostgresOutboxStore::connect(&url).await.unwrap();
            let pool = PgPool::connect(&url).await.unwrap();
            (url, store.origin().await.unwrap(), Arc::new(pool))
        } else if name.starts_with("mysql") {
            let url = servers::mysql_url(&prefix).await;
            let store = MySqlOutboxStore::connect(&url).await.unwrap();
            let pool = MySqlPool::connect(&url).await.unwrap();
            (url, store.origin().await.unwrap(), Arc::new(pool))
        } else if name.starts_with("sqlite") {
            let path = dir.path().join(format!("{prefix}.db"));
            let url = format!("sqlite:{}", path.display());
            let store = SqliteOutboxStore::connect(&url).await.unwrap();
            let options = SqliteConnectOptions::new()
                .filename(&path)
                .busy_timeout(Duration::from_secs(5));
            let pool = SqlitePool::connect_with(options).await.unwrap();
            (url, store.origin().await.unwrap(), Arc::new(pool))
        } else {
            let url = servers::postgres_url(&prefix).await;
            let store = PostgresOutboxStore::connect(&url).await.unwrap();
            let pool = PgPool::connect(&url).await.unwrap();
            (url, store.origin().await.unwrap(), Arc::new(pool))
        };
    let seed = std::env::var("ONCELY_PROOF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("relay kill -9 proof ({name}): seed {seed} (ONCELY_PROOF_SEED={seed} replays it)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let picks: Vec<usize> = (0..rows).map(|_| rng.usize(..AGGREGATES)).collect();

    let started = Instant::now();
    let to = destination.url();
    let mut relays = Relays((0..RELAYS).map(|_| spawn(&outbox_url, &to)).collect());

    // The service: enqueues while the relays run and die, or while their database restarts.
    let enqueue = {
        let service = service.clone();
        let origin = origin.clone();
        let server = server.clone();
        tokio::spawn(async move {
            let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let restart_every = TRANSACTIONS / RESTARTS;
            for (n, chunk) in picks.chunks(rows / TRANSACTIONS).enumerate() {
                let messages: Vec<OutboxMessage> = chunk
                    .iter()
                    .enumerate()
                    .map(|(n, pick)| {
                        let aggregate = format!("agg-{pick:02}");
                        OutboxMessage::new(&aggregate, format!("#{n}").into_bytes())
                            .with_header("Aggregate", &aggregate)
                    })
                    .collect();
                let ids = service.enqueue(&messages, true).await;
                for (message, id) in messages.iter().zip(ids) {
                    expected
                        .entry(message.aggregate().to_owned())
                        .or_default()
                        .push(message_id(&origin, id));
                }
                if let Some(server) = &server
                    && n % restart_every == restart_every / 2
                    && n / restart_every < RESTARTS
                {
                    // While the relays take, publish and mark this transaction's rows.
                    let into = Duration::from_millis(fastrand::u64(0..25));
                    tokio::time::sleep(into).await;
                    restart(server.clone(), n / restart_every).await;
                }
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
            expected
        })
    };

    let mut kills = 0;
    while fault == Fault::Kills && kills < KILLS {
        tokio::time::sleep(Duration::from_millis(rng.u64(100..600))).await;
        let victim = rng.usize(..RELAYS);
        kill9(&mut relays.0[victim]);
        kills += 1;
        relays.0[victim] = spawn(&outbox_url, &to);
    }
    let expected = enqueue.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let unsent = service.unsent().await;
        if unsent == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{unsent} rows unsent after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settled = started.elapsed();
    for relay in &mut relays.0 {
        stop(relay);
    }

    let messages = destination.read_all().await;
    let delivered = check_delivery(&messages, &expected);
    let partitions = destination.check_placement(&messages);
    if let Destination::Kafka { .. } = destination {
        // 50 aggregates' keys over 3 partitions: none is left empty.
        assert_eq!(partitions, support::KAFKA_PARTITIONS as usize);
        eprintln!(
            "relay kill -9 proof ({name}): each record keyed by its aggregate, each aggregate in \
             one of {partitions} partitions"
        );
    }
    eprintln!(
        "relay kill -9 proof ({name}): {rows} rows over {AGGREGATES} aggregates, {kills} kills, \
         {} messages read ({} duplicate copies: re-published after a kill and kept by the broker), {} distinct, all in order per \
         aggregate; settled in {:.1}s",
        delivered.total,
        delivered.total - delivered.distinct,
        delivered.distinct,
        settled.as_secs_f64()
    );
    assert_eq!(delivered.distinct, rows);
    destination.remove().await;
    // The schema or database stays until a later run sweeps it up (see `servers`).
    drop(service);
}
