//! # oncely-broker-suite
//!
//! One behaviour suite for the consumer contract ([`oncely_core::consumer`]), run against every
//! broker on a real server. A broker crate implements [`Broker`] (fresh destinations, publish,
//! read the dead letters, count what is left unsettled) and adds a test target with
//! `harness = false`:
//!
//! ```no_run
//! # struct MyBroker;
//! # impl MyBroker { async fn connect() -> Self { MyBroker } }
//! # async fn connect_source(_: &str) -> Result<oncely_broker_suite::NoSource, oncely_core::BoxError> { Ok(oncely_broker_suite::NoSource) }
//! # #[oncely_core::async_trait] impl oncely_broker_suite::Broker for MyBroker {
//! #   type Channel = MyChannel;
//! #   async fn channel(&self, _: &str) -> Result<MyChannel, oncely_core::BoxError> { Ok(MyChannel) }
//! #   async fn connect_publisher(_: &str) -> Result<Box<dyn oncely_core::outbox::Publisher>, oncely_core::BoxError> { Err("none".into()) }
//! # }
//! # struct MyChannel;
//! # #[oncely_core::async_trait] impl oncely_broker_suite::Channel for MyChannel {
//! #   type Source = oncely_broker_suite::NoSource;
//! #   async fn publish(&self, _: &oncely_core::consumer::Message) -> Result<(), oncely_core::BoxError> { Ok(()) }
//! #   async fn consumer(&self) -> Result<Self::Source, oncely_core::BoxError> { Ok(oncely_broker_suite::NoSource) }
//! #   async fn dead_letters(&self) -> Result<Vec<oncely_core::consumer::Message>, oncely_core::BoxError> { Ok(vec![]) }
//! #   async fn unsettled(&self) -> Result<u64, oncely_core::BoxError> { Ok(0) }
//! #   fn source_url(&self) -> String { String::new() }
//! #   fn dead_letter_source_url(&self) -> String { String::new() }
//! #   fn publisher_url(&self) -> String { String::new() }
//! # }
//! fn main() {
//!     oncely_broker_suite::main(
//!         "my-broker",
//!         || async { MyBroker::connect().await },
//!         |url| async move { Ok(connect_source(&url).await?) },
//!     );
//! }
//! ```
//!
//! Each test is a plain async function over a fresh [`Channel`]: its own destination and
//! dead-letter destination, so tests never see each other's messages. Every test runs for every
//! broker; there is no way to skip one.

#![warn(missing_docs)]

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libtest_mimic::{Arguments, Conclusion, Trial};
use oncely_conformance::harness::{panic_text, quiet_panics, runtime};
use oncely_consumer::{Consumer, Report};
use oncely_core::consumer::{
    ATTEMPTS_HEADER, ERROR_HEADER, Handled, Handler, HandlerError, KEY_HEADER, KeySource, Message,
    OncelyHandler, RetryPolicy, Source,
};
use oncely_core::outbox::Publisher;
use oncely_core::{BoxError, ClaimOutcome, Key, Oncely, PayloadFingerprint, Scope, async_trait};
use tokio::sync::Notify;

pub use libtest_mimic;

// The example's own file, compiled here: the suite does not depend on the examples crate.
#[path = "../../../examples/src/inventory.rs"]
mod inventory;
pub mod proof;
pub mod redrive;

/// A broker under test: hands out fresh channels.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// One test's destination.
    type Channel: Channel;

    /// Whether this broker's suite also runs the store-fault proofs (the consumers' PostgreSQL
    /// restarted under them). They fault the store, not the broker, so one broker runs them:
    /// NATS, the quickest here.
    const RUNS_STORE_FAULT_PROOFS: bool = false;

    /// Whether a consumer can reach the broker through a TCP proxy the test puts in front of
    /// it, by rewriting the address in [`Channel::source_url`]; then the suite proves that a
    /// partition and a cut of the consumers' connections lose and double nothing. Not for a
    /// broker that tells its clients where to connect next (Kafka's advertised listeners).
    const CONSUMERS_REACH_IT_THROUGH_A_PROXY: bool = true;

    /// For a broker that tells its clients where to connect next, whether the partition proof
    /// runs on a server of the test's own that advertises the proxy's address instead
    /// ([`own_server_advertising`](Self::own_server_advertising)).
    const PARTITION_PROOF_ADVERTISES_THE_PROXY: bool = false;

    /// How many messages the restart proof publishes: 20,000 unless the broker's own server is
    /// too slow for that within the proof's deadline.
    const RESTART_PROOF_MESSAGES: usize = 20_000;

    /// Whether the suite restarts the broker itself under the consumers (3 times, crashed and
    /// shut down in turn): then [`own_server`](Self::own_server) starts one. A method, not a
    /// constant: one broker's suite runs against several servers (RabbitMQ plain and with
    /// TLS), and one of them is enough for this proof.
    fn runs_restart_proof(&self) -> bool {
        false
    }

    /// A server of the test's own for this broker, which the restart proof takes down and
    /// starts again, and this broker on it. `None` where the suite does not do that.
    async fn own_server(&self) -> Option<(Self, Box<dyn oncely_conformance::faults::Restartable>)>
    where
        Self: Sized,
    {
        None
    }

    /// A server of the test's own that tells its clients to connect at `127.0.0.1:advertised`
    /// (where the partition proof puts its proxy), this broker on it, and the port the server
    /// listens on. `None` where the suite does not do that.
    async fn own_server_advertising(
        &self,
        _advertised: u16,
    ) -> Option<(Self, Box<dyn oncely_conformance::faults::Restartable>, u16)>
    where
        Self: Sized,
    {
        None
    }

    /// A new, empty destination and dead-letter destination, unique to this call; `test`
    /// names the test, for a readable name on the server.
    async fn channel(&self, test: &str) -> Result<Self::Channel, BoxError>;

    /// How long a redrive waits for one more dead letter before it ends: longer where a
    /// consumer takes seconds to be given its share (a Kafka group joining).
    const REDRIVE_IDLE: Duration = Duration::from_secs(3);

    /// A publisher from a [`Channel::publisher_url`] (the broker crate's publisher), for the
    /// redrive proof's processes.
    async fn connect_publisher(url: &str) -> Result<Box<dyn Publisher>, BoxError>
    where
        Self: Sized;
}

/// One test's destination on the broker (a JetStream stream and consumer, an AMQP queue), with
/// its dead-letter destination.
#[async_trait]
pub trait Channel: Send + Sync + 'static {
    /// What the runner consumes from.
    type Source: Source;

    /// Publishes `message` (payload, headers, message id) to the destination and waits for
    /// the broker to confirm it.
    async fn publish(&self, message: &Message) -> Result<(), BoxError>;

    /// Publishes `messages` like [`publish`](Self::publish), for brokers with a batch call
    /// (SQS takes ten a request); not necessarily in order. One by one unless overridden.
    async fn publish_batch(&self, messages: &[Message]) -> Result<(), BoxError> {
        for message in messages {
            self.publish(message).await?;
        }
        Ok(())
    }

    /// Whether the kill -9 proof starts its consumers before publishing, and publishes while
    /// they run and are killed, rather than after: for servers that slow down with a queue's
    /// depth (moto's SQS scans every message of the queue on each call).
    fn consume_while_publishing(&self) -> bool {
        false
    }

    /// Whether the broker may leave work unassigned for minutes after a member was killed,
    /// so that the kill -9 proof, seeing no progress, restarts a consumer to make
    /// it rebalance: tansu, the Kafka-protocol broker the tests use, does (real Kafka does
    /// not). For every other broker a stall fails the proof at its deadline.
    fn rebalances_lazily(&self) -> bool {
        false
    }

    /// Whether a consumer that leaves its group gracefully may leave the group with nobody to
    /// assign its partitions, for good. tansu 0.6 does: a member that leaves while the group is
    /// forming stays its leader, so the members left wait for an assignment that never comes
    /// (seen after its restarts: the group's stored state named as leader a member no longer
    /// in it). The kill -9 proof then ends its consumers with SIGKILL, not SIGTERM: a member
    /// that stops answering is dropped after the session timeout, and a new leader is chosen.
    fn leaving_may_strand_the_group(&self) -> bool {
        false
    }

    /// Whether [`unsettled`](Channel::unsettled) can count while consumers are on the
    /// destination. RabbitMQ's `queue.declare` counts only ready messages, not those delivered
    /// and unacked, so its count needs every consumer gone; the kill -9 proof then drains in
    /// rounds, stopping its draining consumer before each count.
    fn counts_unsettled_while_consuming(&self) -> bool {
        true
    }

    /// One more consumer of the destination; several compete for its messages.
    async fn consumer(&self) -> Result<Self::Source, BoxError>;

    /// Every message in the dead-letter destination so far, with its headers.
    async fn dead_letters(&self) -> Result<Vec<Message>, BoxError>;

    /// Messages of the destination not acked yet: waiting, or delivered and unacked.
    async fn unsettled(&self) -> Result<u64, BoxError>;

    /// What the broker says of the messages [`unsettled`](Channel::unsettled) counts, printed
    /// when the kill -9 proof's drain makes no progress, so that a failure shows where they
    /// stopped (Kafka: each partition's committed offset, its end offsets, and what a
    /// consumer outside the group reads from there). Empty by default.
    async fn explain_unsettled(&self) -> Result<String, BoxError> {
        Ok(String::new())
    }

    /// The URL a consumer in another process connects to for this destination (the broker
    /// crate's `connect` form, e.g. `nats://127.0.0.1:4222/STREAM/CONSUMER?dlq=...`).
    fn source_url(&self) -> String;

    /// A URL that reads this destination's dead letters as a source with `dlq=none` (what
    /// `oncely redrive --from` takes), for one more reader: a killed reader's messages come
    /// back to the next within seconds (a short ack wait or visibility; on Kafka, a group of
    /// its own each call).
    fn dead_letter_source_url(&self) -> String;

    /// The URL a publisher (the relay's, a redrive's) publishes to this destination with.
    fn publisher_url(&self) -> String;
}

/// A source that never delivers, for examples that need a type.
#[derive(Debug)]
pub struct NoSource;

/// The delivery type of [`NoSource`]; never made.
#[derive(Debug)]
pub enum NoDelivery {}

#[async_trait]
impl oncely_core::consumer::Delivery for NoDelivery {
    fn message(&self) -> &Message {
        match *self {}
    }
    async fn ack(&self) -> Result<(), oncely_core::consumer::BrokerError> {
        match *self {}
    }
    async fn redeliver(&self, _: Duration) -> Result<(), oncely_core::consumer::BrokerError> {
        match *self {}
    }
    async fn dead_letter(
        &self,
        _: &oncely_core::consumer::DeadLetter,
    ) -> Result<(), oncely_core::consumer::BrokerError> {
        match *self {}
    }
}

#[async_trait]
impl Source for NoSource {
    type Delivery = NoDelivery;
    async fn next(&mut self) -> Option<Result<NoDelivery, oncely_core::consumer::BrokerError>> {
        None
    }
}

/// Runs the suite, the kill -9 proof ([`proof`]) and the redrive proof ([`redrive`]) against
/// the broker `connect` returns, as a test binary, and exits with its status. `open` connects a
/// source from a [`Channel::source_url`] (or [`Channel::dead_letter_source_url`]): the proofs
/// start this same binary as consumer and redrive processes, which use it.
pub fn main<B, F, Fut, O, OFut, S>(broker: &str, connect: F, open: O) -> !
where
    B: Broker,
    F: FnOnce() -> Fut,
    Fut: Future<Output = B>,
    O: FnOnce(String) -> OFut,
    OFut: Future<Output = Result<S, BoxError>>,
    S: Source,
{
    run(broker, connect, open, Vec::new()).exit()
}

/// Like [`main`], with the broker's own `extra` trials, without exiting (except as a proof's
/// consumer process, which exits when it is stopped).
pub fn run<B, F, Fut, O, OFut, S>(name: &str, connect: F, open: O, extra: Vec<Trial>) -> Conclusion
where
    B: Broker,
    F: FnOnce() -> Fut,
    Fut: Future<Output = B>,
    O: FnOnce(String) -> OFut,
    OFut: Future<Output = Result<S, BoxError>>,
    S: Source,
{
    if let Ok(from) = std::env::var(redrive::CHILD_FROM_ENV) {
        let env = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name}"));
        let (to, store) = (env(redrive::CHILD_TO_ENV), env(redrive::CHILD_STORE_ENV));
        let idle = Duration::from_millis(env(redrive::CHILD_IDLE_ENV).parse().expect("ms"));
        runtime().block_on(async move {
            let source = open(from).await.expect("the redrive's dead letters");
            let publisher = B::connect_publisher(&to)
                .await
                .expect("the redrive's publisher");
            redrive::child(source, publisher, &store, idle).await;
        });
        std::process::exit(0);
    }
    if let Ok(url) = std::env::var(proof::CHILD_SOURCE_ENV) {
        let postgres = std::env::var(proof::CHILD_POSTGRES_ENV).expect("the proof's PostgreSQL");
        runtime().block_on(async move {
            let source = open(url).await.expect("the proof consumer's source");
            proof::consume(source, &postgres).await;
        });
        std::process::exit(0);
    }
    let args = Arguments::from_args();
    quiet_panics(INTENDED_PANIC);
    let broker = Arc::new(runtime().block_on(connect()));
    let mut trials = Vec::new();
    for (test, body) in all::<B>() {
        let broker = broker.clone();
        trials.push(
            Trial::test(format!("{name}::{test}"), move || {
                runtime().block_on(async move {
                    let channel = broker.channel(test).await.map_err(|e| e.to_string())?;
                    tokio::spawn(body(channel))
                        .await
                        .map_err(|e| panic_text(e).into())
                })
            })
            .with_kind(name.to_owned()),
        );
    }
    let redrive_broker = broker.clone();
    let redrive_schema = format!("oncely_redrive_{name}");
    trials.push(
        Trial::test(
            format!("{name}::redrive_killed_and_rerun_moves_each_dead_letter_back_at_most_once"),
            move || {
                runtime().block_on(async move {
                    let channel = redrive_broker
                        .channel("redrive")
                        .await
                        .map_err(|e| e.to_string())?;
                    let postgres = oncely_conformance::servers::postgres_url(&redrive_schema).await;
                    let spawn = |from: &str, to: &str, store: &str| {
                        redrive::child_process(from, to, store, B::REDRIVE_IDLE)
                    };
                    let report = redrive::run(&channel, &postgres, spawn).await;
                    eprintln!("redrive proof: {report:?}");
                    Ok(())
                })
            },
        )
        .with_kind(name.to_owned()),
    );
    let faults_broker = broker.clone();
    let schema_prefix = format!("oncely_proof_{name}");
    trials.push(
        Trial::test(
            format!("{name}::kill9_consumers_still_apply_every_order_exactly_once"),
            move || {
                runtime().block_on(async move {
                    let channel = broker.channel("proof").await.map_err(|e| e.to_string())?;
                    let postgres = oncely_conformance::servers::postgres_url(&schema_prefix).await;
                    let config = proof::ProofConfig::default();
                    let report = proof::run(&channel, &postgres, config, consumer_process).await;
                    eprintln!("kill -9 proof: {report:?}");
                    Ok(())
                })
            },
        )
        .with_kind(name.to_owned()),
    );
    type FaultProof<B> = fn(Arc<B>, String) -> Pin<Box<dyn Future<Output = ()>>>;
    let mut fault_proofs: Vec<(&str, FaultProof<B>)> = Vec::new();
    if B::RUNS_STORE_FAULT_PROOFS {
        fault_proofs.push((
            "store_restarted_5_times_still_applies_every_order_exactly_once",
            |broker, _| Box::pin(async move { store_restarted_5_times(&*broker).await }),
        ));
        fault_proofs.push((
            "mariadb_claims_restarted_5_times_still_applies_every_order_exactly_once",
            |broker, schema| {
                Box::pin(async move {
                    use oncely_conformance::faults::MariaDbServer;
                    claims_store_restarted_5_times(&*broker, &schema, MariaDbServer::start).await
                })
            },
        ));
        fault_proofs.push((
            "redis_claims_restarted_5_times_still_applies_every_order_exactly_once",
            |broker, schema| {
                Box::pin(async move {
                    use oncely_conformance::faults::RedisServer;
                    claims_store_restarted_5_times(&*broker, &schema, RedisServer::start).await
                })
            },
        ));
        fault_proofs.push((
            "a_consumer_30s_ahead_still_applies_every_order_exactly_once",
            |broker, schema| Box::pin(async move { consumer_clock_ahead(&*broker, &schema).await }),
        ));
        fault_proofs.push((
            "store_partitioned_20s_then_cut_still_applies_every_order_exactly_once",
            |broker, schema| Box::pin(async move { store_partitioned(&*broker, &schema).await }),
        ));
        fault_proofs.push((
            "consumers_paused_past_their_ack_wait_still_apply_every_order_exactly_once",
            |broker, schema| Box::pin(async move { consumers_paused(&*broker, &schema).await }),
        ));
        fault_proofs.push((
            "slow_lossy_links_still_apply_every_order_exactly_once",
            |broker, schema| Box::pin(async move { slow_links(&*broker, &schema).await }),
        ));
    }
    if faults_broker.runs_restart_proof() {
        fault_proofs.push((
            "broker_restarted_3_times_still_applies_every_order_exactly_once",
            |broker, schema| {
                Box::pin(async move { broker_restarted_3_times(&*broker, &schema).await })
            },
        ));
    }
    if B::CONSUMERS_REACH_IT_THROUGH_A_PROXY || B::PARTITION_PROOF_ADVERTISES_THE_PROXY {
        fault_proofs.push((
            "broker_partitioned_20s_then_cut_still_applies_every_order_exactly_once",
            |broker, schema| Box::pin(async move { broker_partitioned(&*broker, &schema).await }),
        ));
    }
    for (n, (test, proof)) in fault_proofs.into_iter().enumerate() {
        let (broker, schema) = (faults_broker.clone(), format!("oncely_fault{n}_{name}"));
        trials.push(
            Trial::test(format!("{name}::{test}"), move || {
                runtime().block_on(proof(broker, schema));
                Ok(())
            })
            .with_kind(name.to_owned()),
        );
    }
    trials.extend(extra);
    libtest_mimic::run(&args, trials)
}

/// A proof consumer: this test binary again, consuming `source` with effects at `postgres`.
/// It dies with the test process, so a failed proof leaves no consumer behind.
fn consumer_process(source: &str, postgres: &str) -> std::process::Child {
    consumer_process_with(source, postgres, |_| {})
}

/// [`consumer_process`], its command set further by `more` (an environment variable).
fn consumer_process_with(
    source: &str,
    postgres: &str,
    more: impl FnOnce(&mut std::process::Command),
) -> std::process::Child {
    let mut command =
        std::process::Command::new(std::env::current_exe().expect("this test binary"));
    command
        .env(proof::CHILD_SOURCE_ENV, source)
        .env(proof::CHILD_POSTGRES_ENV, postgres)
        .stdout(std::process::Stdio::null());
    more(&mut command);
    oncely_conformance::process::spawn_tied(command).expect("a consumer process")
}

/// The proof with the consumers' PostgreSQL (a server of the test's own) restarted 5 times
/// while they work: crashed (SIGKILL, then crash recovery) and shut down in its own fast mode,
/// in turn, each down for up to 3 s. No consumer is killed: what is proven is that an outage
/// of the store loses and doubles nothing, and dead-letters no good order.
async fn store_restarted_5_times<B: Broker>(broker: &B) {
    use oncely_conformance::faults::{PostgresServer, Restartable};
    let channel = broker
        .channel("store-restarts")
        .await
        .expect("a channel for the proof");
    let server: Box<dyn Restartable> = Box::new(
        tokio::task::spawn_blocking(PostgresServer::start)
            .await
            .expect("the test's PostgreSQL"),
    );
    let postgres = server.url();
    let server = Arc::new(std::sync::Mutex::new(server));
    let faults = restarts_in_turn(server.clone(), postgres.clone(), 5, "PostgreSQL");
    let report = proof::run_with(&channel, &postgres, no_kills(), consumer_process, faults).await;
    eprintln!("store restarts proof: {report:?}");
    assert_eq!(report.faults, 5);
    drop(server);
}

/// The proof with the consumers' dedup records in another store - MariaDB or Redis, a server
/// of the test's own - restarted 5 times while they work (crashed and shut down in turn, each
/// down for up to 3 s), their effects in the machine's PostgreSQL apart (the inventory
/// example's `reserve_with_store`). No consumer is killed: a completion the store missed
/// while down must be made once it is back, within the claim's lease, or the re-published
/// copies of that order would apply it again.
async fn claims_store_restarted_5_times<B, S>(broker: &B, schema_prefix: &str, start: fn() -> S)
where
    B: Broker,
    S: oncely_conformance::faults::Restartable + 'static,
{
    let what = std::any::type_name::<S>()
        .rsplit("::")
        .next()
        .unwrap_or("the store");
    let channel = broker
        .channel("claims-restarts")
        .await
        .expect("a channel for the proof");
    let postgres = oncely_conformance::servers::postgres_url(schema_prefix).await;
    let server: Box<dyn oncely_conformance::faults::Restartable> = Box::new(
        tokio::task::spawn_blocking(start)
            .await
            .expect("the test's store server"),
    );
    let claims = server.url();
    let server = Arc::new(std::sync::Mutex::new(server));
    let spawn = move |source: &str, postgres: &str| {
        consumer_process_with(source, postgres, |command| {
            command.env(proof::CHILD_CLAIMS_ENV, &claims);
        })
    };
    let faults = restarts_in_turn(server.clone(), postgres.clone(), 5, what);
    let report = proof::run_with(&channel, &postgres, no_kills(), spawn, faults).await;
    eprintln!("{what} restarts proof: {report:?}");
    assert_eq!(report.faults, 5);
    drop(server);
}

/// The proof with one consumer's clock 30 s ahead (libfaketime, `LD_PRELOAD`), the records in
/// Redis (a server of the test's own, whose clock decides leases) and each re-published order
/// right after its original, so that copies meet their originals in flight in another
/// consumer. The consumer ahead must take the others' claims for live - its `Oncely` measures
/// its offset to Redis's clock - or it would take them over and reserve those orders again.
async fn consumer_clock_ahead<B: Broker>(broker: &B, schema_prefix: &str) {
    use std::sync::atomic::{AtomicBool, Ordering};
    const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: apt-get install libfaketime (scripts/test does)"
    );
    let channel = broker
        .channel("clock-ahead")
        .await
        .expect("a channel for the proof");
    let postgres = oncely_conformance::servers::postgres_url(schema_prefix).await;
    let redis = tokio::task::spawn_blocking(oncely_conformance::faults::RedisServer::start)
        .await
        .expect("the test's Redis");
    let claims = oncely_conformance::faults::Restartable::url(&redis);
    let first = AtomicBool::new(true);
    let spawn = move |source: &str, postgres: &str| {
        let ahead = first.swap(false, Ordering::SeqCst);
        consumer_process_with(source, postgres, |command| {
            command.env(proof::CHILD_CLAIMS_ENV, &claims);
            if ahead {
                command
                    .env("LD_PRELOAD", LIBFAKETIME)
                    .env("FAKETIME", "+30s")
                    // Tokio's timers run on the monotonic clock: only the wall clock is off.
                    .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
            }
        })
    };
    let config = proof::ProofConfig {
        copies_next_to_originals: true,
        ..no_kills()
    };
    let report = proof::run_with(&channel, &postgres, config, spawn, async { 0 }).await;
    eprintln!("clock ahead proof: {report:?}");
    drop(redis);
}

/// The proof on a broker server of the test's own ([`Broker::own_server`]), restarted 3 times
/// while the consumers work: crashed (SIGKILL), shut down, crashed, each down for up to 3 s.
/// Their PostgreSQL is the machine's, in a fresh schema. No consumer is killed, and none may
/// give up.
async fn broker_restarted_3_times<B: Broker>(broker: &B, schema_prefix: &str) {
    let (broker, server) = broker
        .own_server()
        .await
        .expect("a broker that runs the restart proof starts a server of its own");
    let channel = broker
        .channel("broker-restarts")
        .await
        .expect("a channel for the proof");
    let postgres = oncely_conformance::servers::postgres_url(schema_prefix).await;
    let server = Arc::new(std::sync::Mutex::new(server));
    let faults = restarts_in_turn(server.clone(), postgres.clone(), 3, "the broker");
    // Fewer messages keep the default's share of re-publishes.
    let base = no_kills();
    let config = proof::ProofConfig {
        messages: B::RESTART_PROOF_MESSAGES,
        duplicates: base.duplicates * B::RESTART_PROOF_MESSAGES / base.messages,
        ..base
    };
    let report = proof::run_with(&channel, &postgres, config, consumer_process, faults).await;
    eprintln!("broker restarts proof: {report:?}");
    assert_eq!(report.faults, 3);
    drop(server);
}

/// The proof's settings when something other than the consumers is faulted.
fn no_kills() -> proof::ProofConfig {
    proof::ProofConfig {
        kills: 0,
        ..proof::ProofConfig::default()
    }
}

/// A server the proof restarts, shared with the thread that restarts it.
type SharedServer = Arc<std::sync::Mutex<Box<dyn oncely_conformance::faults::Restartable>>>;

/// Once the consumers (their effects at `postgres`) have applied an order: `server` crashed,
/// shut down, crashed... `restarts` times, 0.3-2 s apart, each down for up to 3 s, and up at
/// the end. Answers how many restarts.
async fn restarts_in_turn(
    server: SharedServer,
    postgres: String,
    restarts: usize,
    what: &'static str,
) -> usize {
    use oncely_conformance::faults::Stop;
    until_consuming(&postgres).await;
    for n in 0..restarts {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(300..2_000))).await;
        let how = if n % 2 == 0 {
            Stop::Crash
        } else {
            Stop::Graceful
        };
        let down = Duration::from_millis(fastrand::u64(100..3_000));
        let server = server.clone();
        tokio::task::spawn_blocking(move || {
            server.lock().expect("never poisoned").restart(how, down)
        })
        .await
        .expect("a restart");
        eprintln!("restarts: {what} {how:?} and up again after {down:?}");
    }
    restarts
}

/// The proof with the consumers cut off from their PostgreSQL (the machine's, in a fresh
/// schema, through a [`FaultProxy`](oncely_conformance::faults::FaultProxy)): a 20 s partition (nothing gets through, nothing is
/// closed: queries hang, then go on), then a cut of 3 s (every connection closed, new ones
/// too). No consumer is killed.
async fn store_partitioned<B: Broker>(broker: &B, schema_prefix: &str) {
    let channel = broker
        .channel("store-partition")
        .await
        .expect("a channel for the proof");
    let direct = oncely_conformance::servers::postgres_url(schema_prefix).await;
    let (proxy, postgres) = through_proxy(&direct, 5432).await;
    let faults = async {
        until_consuming(&direct).await;
        partition_then_cut(&proxy, "PostgreSQL").await
    };
    let config = no_kills();
    let report = proof::run_with(&channel, &postgres, config, consumer_process, faults).await;
    eprintln!("store partition proof: {report:?}");
    assert_eq!(report.faults, 2);
}

/// The proof with a consumer frozen (SIGSTOP, as by a long GC pause or a stalled VM) for 8 s,
/// longer than the broker waits for an ack, 3 times: its unacked messages go to the other
/// consumer while it sleeps, and it wakes (SIGCONT) in the middle of work another has taken over,
/// with transactions open. No consumer is killed.
async fn consumers_paused<B: Broker>(broker: &B, schema_prefix: &str) {
    let channel = broker
        .channel("pauses")
        .await
        .expect("a channel for the proof");
    let postgres = oncely_conformance::servers::postgres_url(schema_prefix).await;
    let config = proof::ProofConfig {
        kills: 0,
        pauses: 3,
        ..proof::ProofConfig::default()
    };
    let report = proof::run(&channel, &postgres, config, consumer_process).await;
    eprintln!("pause proof: {report:?}");
    assert_eq!(report.pauses, 3);
}

/// The proof with the consumers reaching both their PostgreSQL and the broker over slow, lossy
/// links (through [`FaultProxy`](oncely_conformance::faults::FaultProxy)s set to
/// [`Link::Slow`](oncely_conformance::faults::Link::Slow): 100 ms each way, a 200 ms round
/// trip, 5 % of reads held as if lost) from start to end. 1,000 messages (200 of them
/// re-published), since each order takes a few round trips to its store. No consumer is killed.
async fn slow_links<B: Broker>(broker: &B, schema_prefix: &str) {
    use oncely_conformance::faults::Link;
    let channel = broker
        .channel("slow-links")
        .await
        .expect("a channel for the proof");
    let direct = oncely_conformance::servers::postgres_url(schema_prefix).await;
    let (store_proxy, postgres) = through_proxy(&direct, 5432).await;
    let (broker_proxy, source) = through_proxy(&channel.source_url(), 0).await;
    let slow = Link::Slow {
        delay: Duration::from_millis(100),
        loss_percent: 5,
    };
    store_proxy.set(slow);
    broker_proxy.set(slow);
    let spawn = move |_: &str, postgres: &str| consumer_process(&source, postgres);
    let config = proof::ProofConfig {
        messages: 1_000,
        duplicates: 200,
        kills: 0,
        ..proof::ProofConfig::default()
    };
    let report = proof::run_with(&channel, &postgres, config, spawn, async { 1 }).await;
    eprintln!("slow links proof: {report:?}");
}

/// The proof with the consumers cut off from the broker (through a
/// [`FaultProxy`](oncely_conformance::faults::FaultProxy); the proof itself publishes
/// directly): a 20 s partition, then a 3 s cut. No consumer is killed, and none may give up.
async fn broker_partitioned<B: Broker>(broker: &B, schema_prefix: &str) {
    if !B::CONSUMERS_REACH_IT_THROUGH_A_PROXY {
        return broker_partitioned_behind_its_advertised_proxy(broker, schema_prefix).await;
    }
    let channel = broker
        .channel("broker-partition")
        .await
        .expect("a channel for the proof");
    let postgres = oncely_conformance::servers::postgres_url(schema_prefix).await;
    let (proxy, source) = through_proxy(&channel.source_url(), 0).await;
    let spawn = move |_: &str, postgres: &str| consumer_process(&source, postgres);
    let faults = async {
        until_consuming(&postgres).await;
        partition_then_cut(&proxy, "the broker").await
    };
    let config = no_kills();
    let report = proof::run_with(&channel, &postgres, config, spawn, faults).await;
    eprintln!("broker partition proof: {report:?}");
    assert_eq!(report.faults, 2);
}

/// [`broker_partitioned`] for a broker that tells its clients where it is: on a server of the
/// test's own that advertises the proxy's port, so that every connection goes through it - the
/// consumers', and the proof's own publisher and readers too (they publish before the faults,
/// and read again once the link is up).
async fn broker_partitioned_behind_its_advertised_proxy<B: Broker>(
    broker: &B,
    schema_prefix: &str,
) {
    let advertised = oncely_conformance::process::free_port();
    let (broker, server, port) = broker
        .own_server_advertising(advertised)
        .await
        .expect("a broker whose partition proof advertises the proxy starts a server of its own");
    let proxy = oncely_conformance::faults::FaultProxy::start_on(advertised, port).await;
    let channel = broker
        .channel("broker-partition")
        .await
        .expect("a channel for the proof");
    let postgres = oncely_conformance::servers::postgres_url(schema_prefix).await;
    let faults = async {
        until_consuming(&postgres).await;
        partition_then_cut(&proxy, "the broker").await
    };
    let report = proof::run_with(&channel, &postgres, no_kills(), consumer_process, faults).await;
    eprintln!("broker partition proof: {report:?}");
    assert_eq!(report.faults, 2);
    drop(server);
}

/// Waits until the proof's consumers have applied an order: they are connected to their broker
/// and store, so a fault that follows meets running consumers (one that came first would fail
/// their start, which is not what the proofs are about).
async fn until_consuming(postgres: &str) {
    let pool = sqlx::PgPool::connect(postgres).await.expect("PostgreSQL");
    // Generous: a consumer group on a broker of the test's own with slow storage (tansu on
    // moto's S3) can take long to form, and nothing nudges it before the faults are done.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(&pool)
            .await
            .expect("the orders table");
        if applied > 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the consumers applied nothing in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Soon after the consumers start: a 20 s partition through `proxy`, the link up for 2 s, then
/// a 3 s cut; the link is up at the end. Two faults.
async fn partition_then_cut(proxy: &oncely_conformance::faults::FaultProxy, server: &str) -> usize {
    use oncely_conformance::faults::Link;
    tokio::time::sleep(Duration::from_millis(fastrand::u64(500..2_000))).await;
    proxy.set(Link::Partitioned);
    eprintln!("partition: the consumers cut off from {server} for 20 s");
    tokio::time::sleep(Duration::from_secs(20)).await;
    proxy.set(Link::Up);
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set(Link::Cut);
    eprintln!("partition: every connection to {server} cut for 3 s");
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.set(Link::Up);
    2
}

/// A [`FaultProxy`](oncely_conformance::faults::FaultProxy) in front of the server `url`
/// names (`scheme://[userinfo@]127.0.0.1[:port]/...`, `default_port` if it names none), and
/// `url` pointed at the proxy instead.
async fn through_proxy(
    url: &str,
    default_port: u16,
) -> (oncely_conformance::faults::FaultProxy, String) {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (userinfo, rest) = match rest.split_once('@') {
        Some((userinfo, rest)) if !userinfo.contains('/') => (format!("{userinfo}@"), rest),
        _ => (String::new(), rest),
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (address, path) = rest.split_at(end);
    let upstream = address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or(default_port);
    let proxy = oncely_conformance::faults::FaultProxy::start(upstream).await;
    let through = format!("{scheme}://{userinfo}127.0.0.1:{}{path}", proxy.port());
    (proxy, through)
}

type Test<C> = fn(C) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// Every test, by name.
pub fn all<B: Broker>() -> Vec<(&'static str, Test<B::Channel>)> {
    vec![
        ("each_key_has_one_effect_and_every_message_is_acked", |c| {
            Box::pin(each_key_has_one_effect_and_every_message_is_acked(c))
        }),
        (
            "duplicate_of_a_done_key_is_acked_without_running_the_handler",
            |c| Box::pin(duplicate_of_a_done_key_is_acked_without_running_the_handler(c)),
        ),
        (
            "failing_handler_is_retried_then_dead_lettered_with_its_error",
            |c| Box::pin(failing_handler_is_retried_then_dead_lettered_with_its_error(c)),
        ),
        ("transient_failure_succeeds_on_a_retry", |c| {
            Box::pin(transient_failure_succeeds_on_a_retry(c))
        }),
        ("panicking_handler_is_a_failed_attempt", |c| {
            Box::pin(panicking_handler_is_a_failed_attempt(c))
        }),
        ("message_without_a_key_is_dead_lettered_at_once", |c| {
            Box::pin(message_without_a_key_is_dead_lettered_at_once(c))
        }),
        (
            "in_progress_duplicate_is_not_acked_and_comes_back_as_a_duplicate",
            |c| Box::pin(in_progress_duplicate_is_not_acked_and_comes_back_as_a_duplicate(c)),
        ),
        (
            "a_copy_meeting_its_original_in_flight_waits_for_it_and_is_a_duplicate",
            |c| Box::pin(a_copy_meeting_its_original_in_flight_waits_for_it_and_is_a_duplicate(c)),
        ),
        ("unavailable_store_gives_the_message_back", |c| {
            Box::pin(unavailable_store_gives_the_message_back(c))
        }),
        ("shutdown_lets_running_handlers_finish_and_ack", |c| {
            Box::pin(shutdown_lets_running_handlers_finish_and_ack(c))
        }),
        ("shutdown_gives_back_a_message_waiting_to_retry", |c| {
            Box::pin(shutdown_gives_back_a_message_waiting_to_retry(c))
        }),
        (
            "a_stale_version_is_acked_and_a_failed_update_is_retried_not_lost",
            |c| Box::pin(a_stale_version_is_acked_and_a_failed_update_is_retried_not_lost(c)),
        ),
        ("tower_layers_limit_and_time_out_the_handler", |c| {
            Box::pin(tower_layers_limit_and_time_out_the_handler(c))
        }),
        (
            "a_re_serialised_copy_is_a_duplicate_and_a_changed_payload_a_conflict",
            |c| Box::pin(a_re_serialised_copy_is_a_duplicate_and_a_changed_payload_a_conflict(c)),
        ),
        (
            "an_expression_keys_json_inside_a_string_and_fingerprints_only_it",
            |c| Box::pin(an_expression_keys_json_inside_a_string_and_fingerprints_only_it(c)),
        ),
    ]
}

/// How long a test waits for the broker to settle what it published.
const PATIENCE: Duration = Duration::from_secs(60);

/// The panic message of the suite's deliberately panicking handler.
pub const INTENDED_PANIC: &str = "intended panic from the broker suite";

fn event(key: &str, n: usize) -> Message {
    Message::new(format!(r#"{{"n":{n}}}"#).into_bytes(), "").with_header("Event-Id", key)
}

fn by_event_id() -> KeySource {
    KeySource::Header("Event-Id".into())
}

fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy::default()
        .with_max_attempts(max_attempts)
        .with_backoff(Duration::from_millis(20), Duration::from_millis(100))
}

/// Counts effects per key, like a table of applied orders would.
#[derive(Clone, Default)]
struct Effects(Arc<Mutex<HashMap<String, usize>>>);

impl Effects {
    fn apply(&self, key: &Key) {
        *self.0.lock().unwrap().entry(key.to_string()).or_default() += 1;
    }

    fn of(&self, key: &str) -> usize {
        self.0.lock().unwrap().get(key).copied().unwrap_or(0)
    }

    fn snapshot(&self) -> HashMap<String, usize> {
        self.0.lock().unwrap().clone()
    }
}

fn store_handler(effects: Effects) -> impl Handler {
    fingerprinting_handler(effects, PayloadFingerprint::default())
}

/// The store handler, with the payload's fingerprint taken as `fingerprint` says.
fn fingerprinting_handler(effects: Effects, fingerprint: PayloadFingerprint) -> impl Handler {
    let oncely = Oncely::new(Arc::new(oncely_memory::MemoryStore::default()));
    OncelyHandler::new(oncely, Scope::default(), move |key: Key, _: Message| {
        let effects = effects.clone();
        async move {
            effects.apply(&key);
            Ok::<_, BoxError>(Vec::new())
        }
    })
    .fingerprint(fingerprint)
}

/// Runs a consumer over `source` until it has handled one delivery, then awaits `delete` (which
/// deletes the destination under it); answers the error the run ended with. Fails the test if
/// the run does not end within 30 s, or ends without an error: a destination that is gone is
/// not coming back by waiting, so the broker's source must say so with a
/// [`permanent`](oncely_core::consumer::BrokerError::permanent) error.
pub async fn run_until_its_destination_is_deleted<S: Source>(
    source: S,
    delete: impl Future<Output = ()>,
) -> oncely_core::consumer::BrokerError {
    struct Done;
    #[async_trait]
    impl Handler for Done {
        async fn handle(&self, _: &Key, _: &Message) -> Result<Handled, HandlerError> {
            Ok(Handled::Done)
        }
    }
    let consumer = Consumer::new(Done, KeySource::MessageId);
    let running = tokio::spawn({
        let consumer = consumer.clone();
        async move { consumer.run(source, std::future::pending()).await }
    });
    while consumer.report().done < 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    delete.await;
    let ended = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the run ends within 30 s of the destination's deletion")
        .expect("the run's task");
    let error = ended.expect_err("the run fails");
    assert!(error.is_permanent(), "{error}");
    error
}

/// A consumer running on a task of its own: stop it with [`Running::stop`].
pub struct Running {
    stop: Arc<Notify>,
    task: tokio::task::JoinHandle<Report>,
}

impl Running {
    /// Runs `consumer` over `source` until stopped; panics if the run fails.
    pub fn spawn<H: Handler, S: Source>(consumer: &Consumer<H>, source: S) -> Self {
        let stop = Arc::new(Notify::new());
        let (consumer, stopped) = (consumer.clone(), stop.clone());
        let task = tokio::spawn(async move {
            consumer
                .run(source, async move { stopped.notified().await })
                .await
                .expect("the consumer runs until stopped")
        });
        Running { stop, task }
    }

    /// Stops it gracefully; answers what this run settled.
    pub async fn stop(self) -> Report {
        self.stop.notify_one();
        self.task.await.expect("the consumer task")
    }
}

async fn start<C: Channel, H: Handler>(channel: &C, consumer: &Consumer<H>) -> Running {
    Running::spawn(consumer, channel.consumer().await.expect("a consumer"))
}

/// Waits until `done(report)` holds for the consumer, or fails the test with what it saw.
async fn until<H: Handler>(consumer: &Consumer<H>, what: &str, done: impl Fn(&Report) -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let report = consumer.report();
        if done(&report) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}; report: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until nothing of the destination is left unsettled.
async fn until_all_settled<C: Channel>(channel: &C) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let left = channel.unsettled().await.expect("unsettled count");
        if left == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} messages still unsettled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn publish_all<C: Channel>(channel: &C, messages: &[Message]) {
    for message in messages {
        channel.publish(message).await.expect("publish");
    }
}

/// 300 messages, 60 of them repeats of earlier keys, through two competing consumers of
/// eight handlers each: one effect per key, every message acked.
async fn each_key_has_one_effect_and_every_message_is_acked<C: Channel>(channel: C) {
    let mut messages: Vec<Message> = (0..240).map(|n| event(&format!("k{n}"), n)).collect();
    for n in 0..60 {
        let again = (n * 37) % 240;
        messages.insert(n * 5 + 3, event(&format!("k{again}"), again));
    }
    publish_all(&channel, &messages).await;

    let effects = Effects::default();
    let consumer = Consumer::new(store_handler(effects.clone()), by_event_id()).concurrency(8);
    let (one, two) = (
        start(&channel, &consumer).await,
        start(&channel, &consumer).await,
    );
    until(&consumer, "all 300 settled", |r| {
        r.done + r.duplicates == 300
    })
    .await;
    let (a, b) = (one.stop().await, two.stop().await);

    let effects = effects.snapshot();
    assert_eq!(effects.len(), 240, "every key has an effect");
    assert!(
        effects.values().all(|&n| n == 1),
        "no key has two effects: {effects:?}"
    );
    assert_eq!(a.done + b.done, 240);
    assert_eq!(a.duplicates + b.duplicates, 60);
    assert_eq!(
        a.dead_lettered + b.dead_lettered + a.unsettled + b.unsettled,
        0
    );
    until_all_settled(&channel).await;
    assert!(channel.dead_letters().await.unwrap().is_empty());
}

async fn duplicate_of_a_done_key_is_acked_without_running_the_handler<C: Channel>(channel: C) {
    let effects = Effects::default();
    let consumer = Consumer::new(store_handler(effects.clone()), by_event_id());
    let running = start(&channel, &consumer).await;
    channel.publish(&event("order-1", 1)).await.unwrap();
    until(&consumer, "the first delivery", |r| r.done == 1).await;
    channel.publish(&event("order-1", 1)).await.unwrap();
    until(&consumer, "the duplicate", |r| r.duplicates == 1).await;
    let report = running.stop().await;

    assert_eq!(effects.of("order-1"), 1);
    assert_eq!((report.done, report.duplicates), (1, 1));
    until_all_settled(&channel).await;
}

/// Fails every time for one key: `attempts` calls, then the dead letter.
struct AlwaysFails {
    calls: AtomicUsize,
}

#[async_trait]
impl Handler for AlwaysFails {
    async fn handle(&self, _: &Key, _: &Message) -> Result<Handled, HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(HandlerError::failed("card declined: insufficient funds"))
    }
}

async fn failing_handler_is_retried_then_dead_lettered_with_its_error<C: Channel>(channel: C) {
    let handler = Arc::new(AlwaysFails {
        calls: AtomicUsize::new(0),
    });
    let consumer = Consumer::new(handler.clone(), by_event_id()).retry(fast_retry(3));
    let running = start(&channel, &consumer).await;
    let poison = event("charge-9", 9).with_header("Tenant", "acme");
    channel.publish(&poison).await.unwrap();
    until(&consumer, "the dead letter", |r| r.dead_lettered == 1).await;
    running.stop().await;

    assert_eq!(handler.calls.load(Ordering::SeqCst), 3, "three attempts");
    until_all_settled(&channel).await;
    let letters = channel.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1, "one dead letter: {letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.payload(), poison.payload(), "the original payload");
    assert_eq!(
        letter.header("Tenant"),
        Some("acme"),
        "the original headers"
    );
    assert_eq!(
        letter.header(ERROR_HEADER),
        Some("card declined: insufficient funds")
    );
    assert_eq!(letter.header(ATTEMPTS_HEADER), Some("3"));
    assert_eq!(letter.header(KEY_HEADER), Some("charge-9"));
}

/// Fails the first `failures` calls, then succeeds.
struct FailsFirst {
    failures: usize,
    calls: AtomicUsize,
    panic: bool,
}

#[async_trait]
impl Handler for FailsFirst {
    async fn handle(&self, _: &Key, _: &Message) -> Result<Handled, HandlerError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
            if self.panic {
                panic!("{INTENDED_PANIC}");
            }
            return Err(HandlerError::failed("timeout talking to the mail server"));
        }
        Ok(Handled::Done)
    }
}

async fn transient_failure_succeeds_on_a_retry<C: Channel>(channel: C) {
    let handler = Arc::new(FailsFirst {
        failures: 2,
        calls: AtomicUsize::new(0),
        panic: false,
    });
    let consumer = Consumer::new(handler.clone(), by_event_id()).retry(fast_retry(3));
    let running = start(&channel, &consumer).await;
    channel.publish(&event("mail-1", 1)).await.unwrap();
    until(&consumer, "success on the third attempt", |r| r.done == 1).await;
    let report = running.stop().await;

    assert_eq!(handler.calls.load(Ordering::SeqCst), 3);
    assert_eq!(report.dead_lettered, 0);
    until_all_settled(&channel).await;
    assert!(channel.dead_letters().await.unwrap().is_empty());
}

async fn panicking_handler_is_a_failed_attempt<C: Channel>(channel: C) {
    let handler = Arc::new(FailsFirst {
        failures: 1,
        calls: AtomicUsize::new(0),
        panic: true,
    });
    let consumer = Consumer::new(handler.clone(), by_event_id()).retry(fast_retry(3));
    let running = start(&channel, &consumer).await;
    channel.publish(&event("p-1", 1)).await.unwrap();
    until(&consumer, "success after the panic", |r| r.done == 1).await;
    running.stop().await;
    assert_eq!(handler.calls.load(Ordering::SeqCst), 2);
    until_all_settled(&channel).await;
}

async fn message_without_a_key_is_dead_lettered_at_once<C: Channel>(channel: C) {
    let effects = Effects::default();
    let consumer = Consumer::new(store_handler(effects.clone()), by_event_id());
    let running = start(&channel, &consumer).await;
    let keyless = Message::new(b"{}".to_vec(), "");
    channel.publish(&keyless).await.unwrap();
    until(&consumer, "the dead letter", |r| r.dead_lettered == 1).await;
    running.stop().await;

    assert!(effects.snapshot().is_empty(), "the handler never ran");
    until_all_settled(&channel).await;
    let letters = channel.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].header(ATTEMPTS_HEADER), Some("0"));
    let error = letters[0].header(ERROR_HEADER).unwrap();
    assert!(
        error.contains("Event-Id"),
        "names the missing header: {error}"
    );
}

async fn in_progress_duplicate_is_not_acked_and_comes_back_as_a_duplicate<C: Channel>(channel: C) {
    let effects = Effects::default();
    let store = Arc::new(oncely_memory::MemoryStore::default());
    // A short lease: the in-progress answer asks for redelivery when it ends.
    let oncely = Oncely::new(store).with_lease(Duration::from_secs(5));
    let handler = OncelyHandler::new(oncely.clone(), Scope::default(), {
        let effects = effects.clone();
        move |key: Key, _: Message| {
            let effects = effects.clone();
            async move {
                effects.apply(&key);
                Ok::<_, BoxError>(Vec::new())
            }
        }
    });
    // Another delivery of the key is being handled elsewhere: it holds the claim.
    let key = Key::new("stock-1").unwrap();
    let elsewhere = match oncely.claim(&Scope::default(), &key, None).await.unwrap() {
        ClaimOutcome::New(claim) => claim,
        other => panic!("expected a new claim, got {other:?}"),
    };
    let consumer = Consumer::new(handler, by_event_id());
    let running = start(&channel, &consumer).await;
    channel.publish(&event("stock-1", 1)).await.unwrap();
    until(&consumer, "the in-progress redelivery", |r| {
        r.redelivered >= 1
    })
    .await;
    let report = consumer.report();
    assert_eq!(report.done + report.duplicates, 0, "not acked: {report:?}");

    // The other delivery finishes; the message comes back and is a duplicate.
    oncely.complete(&elsewhere, b"").await.unwrap();
    until(&consumer, "the duplicate after completion", |r| {
        r.duplicates == 1
    })
    .await;
    running.stop().await;
    assert_eq!(effects.of("stock-1"), 0, "this consumer never did the work");
    until_all_settled(&channel).await;
}

/// A producer's retry arrives while the original is still being handled by the same consumer:
/// the copy waits for the original to settle and is acked as a duplicate, without going back to
/// the broker for the rest of the original's lease.
async fn a_copy_meeting_its_original_in_flight_waits_for_it_and_is_a_duplicate<C: Channel>(
    channel: C,
) {
    let effects = Effects::default();
    let oncely = Oncely::new(Arc::new(oncely_memory::MemoryStore::default()))
        .with_lease(Duration::from_secs(600));
    let handler = OncelyHandler::new(oncely, Scope::default(), {
        let effects = effects.clone();
        move |key: Key, _: Message| {
            let effects = effects.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                effects.apply(&key);
                Ok::<_, BoxError>(Vec::new())
            }
        }
    });
    let consumer = Consumer::new(handler, by_event_id()).concurrency(4);
    publish_all(&channel, &[event("pay-1", 1), event("pay-1", 1)]).await;
    let running = start(&channel, &consumer).await;
    until(&consumer, "the original and its copy", |r| {
        r.done + r.duplicates == 2
    })
    .await;
    let report = running.stop().await;
    assert_eq!((report.done, report.duplicates), (1, 1));
    assert_eq!(
        report.redelivered, 0,
        "the copy never went back to the broker"
    );
    assert_eq!(effects.of("pay-1"), 1);
    until_all_settled(&channel).await;
}

/// Reports the store down a few times, then works.
struct FlakyStore {
    outages: usize,
    calls: AtomicUsize,
}

#[async_trait]
impl Handler for FlakyStore {
    async fn handle(&self, _: &Key, _: &Message) -> Result<Handled, HandlerError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.outages {
            return Err(HandlerError::unavailable("connection refused"));
        }
        Ok(Handled::Done)
    }
}

async fn unavailable_store_gives_the_message_back<C: Channel>(channel: C) {
    let handler = Arc::new(FlakyStore {
        outages: 3,
        calls: AtomicUsize::new(0),
    });
    // One attempt only: outages must not count as attempts, or this would dead-letter.
    let consumer = Consumer::new(handler.clone(), by_event_id())
        .retry(fast_retry(1))
        .unavailable_backoff(Duration::from_millis(50));
    let running = start(&channel, &consumer).await;
    channel.publish(&event("u-1", 1)).await.unwrap();
    until(&consumer, "done after the outage", |r| r.done == 1).await;
    let report = running.stop().await;
    assert_eq!(report.redelivered, 3);
    assert_eq!(report.dead_lettered, 0);
    until_all_settled(&channel).await;
}

/// Takes `delay` per message.
struct Slow {
    delay: Duration,
    started: Notify,
    finished: AtomicUsize,
}

#[async_trait]
impl Handler for Slow {
    async fn handle(&self, _: &Key, _: &Message) -> Result<Handled, HandlerError> {
        self.started.notify_one();
        tokio::time::sleep(self.delay).await;
        self.finished.fetch_add(1, Ordering::SeqCst);
        Ok(Handled::Done)
    }
}

async fn shutdown_lets_running_handlers_finish_and_ack<C: Channel>(channel: C) {
    let handler = Arc::new(Slow {
        delay: Duration::from_millis(500),
        started: Notify::new(),
        finished: AtomicUsize::new(0),
    });
    let consumer = Consumer::new(handler.clone(), by_event_id());
    let running = start(&channel, &consumer).await;
    channel.publish(&event("s-1", 1)).await.unwrap();
    handler.started.notified().await;
    let report = running.stop().await;
    assert_eq!(
        handler.finished.load(Ordering::SeqCst),
        1,
        "the handler finished"
    );
    assert_eq!(
        report.done, 1,
        "and its message was acked before run returned"
    );
    until_all_settled(&channel).await;
}

async fn shutdown_gives_back_a_message_waiting_to_retry<C: Channel>(channel: C) {
    let handler = Arc::new(AlwaysFails {
        calls: AtomicUsize::new(0),
    });
    let slow_retry = RetryPolicy::default()
        .with_max_attempts(5)
        .with_backoff(Duration::from_secs(30), Duration::from_secs(30));
    let consumer = Consumer::new(handler.clone(), by_event_id()).retry(slow_retry);
    let running = start(&channel, &consumer).await;
    channel.publish(&event("r-1", 1)).await.unwrap();
    while handler.calls.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let report = tokio::time::timeout(Duration::from_secs(10), running.stop())
        .await
        .expect("shutdown does not wait out a 30 s backoff");
    assert_eq!(report.redelivered, 1, "given back, not held");
    assert_eq!(report.dead_lettered, 0);

    // A new consumer gets it again.
    let effects = Effects::default();
    let next = Consumer::new(store_handler(effects.clone()), by_event_id());
    let running = start(&channel, &next).await;
    until(&next, "the redelivery", |r| r.done == 1).await;
    running.stop().await;
    assert_eq!(effects.of("r-1"), 1);
    until_all_settled(&channel).await;
}

/// Applies each order event's status if its version is newer than the one applied, in one
/// PostgreSQL transaction with the version guard (`PostgresInbox::apply_if_newer`). The first
/// attempt at version 2 fails after its update, rolling the transaction back.
struct OrderStatus {
    pool: sqlx::PgPool,
    inbox: oncely_postgres::inbox::Inbox,
    fail_first_v2: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl Handler for OrderStatus {
    async fn handle(&self, key: &Key, message: &Message) -> Result<Handled, HandlerError> {
        use oncely_postgres::inbox::PostgresInbox;
        let event: serde_json::Value =
            serde_json::from_slice(message.payload()).map_err(HandlerError::rejected)?;
        let (Some(version), Some(status)) = (event["version"].as_u64(), event["status"].as_str())
        else {
            return Err(HandlerError::rejected("no version or status"));
        };
        let mut tx = self.pool.begin().await.map_err(HandlerError::unavailable)?;
        let check = self.inbox.apply_if_newer(&mut tx, key, version).await;
        if let oncely_core::VersionCheck::Stale { current } = check.map_err(HandlerError::failed)? {
            return Ok(Handled::Stale { current });
        }
        sqlx::query(
            "INSERT INTO order_status (id, status) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET status = excluded.status",
        )
        .bind(key.as_str())
        .bind(status)
        .execute(&mut *tx)
        .await
        .map_err(HandlerError::failed)?;
        if version == 2 && self.fail_first_v2.swap(false, Ordering::SeqCst) {
            // Dropped: the update and its version roll back together.
            return Err(HandlerError::failed("the status update failed"));
        }
        tx.commit().await.map_err(HandlerError::failed)?;
        Ok(Handled::Done)
    }
}

/// Versioned events of one order: version 2's update fails once and is retried (applied, not
/// lost as `Stale`), the late version 1 and a second copy of version 3 are acked as stale.
async fn a_stale_version_is_acked_and_a_failed_update_is_retried_not_lost<C: Channel>(channel: C) {
    let url = oncely_conformance::servers::postgres_url("oncely_suite_versions").await;
    oncely_postgres::PostgresStore::connect(&url).await.unwrap(); // oncely's tables
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE order_status (id text PRIMARY KEY, status text NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let handler = Arc::new(OrderStatus {
        pool: pool.clone(),
        inbox: oncely_postgres::inbox::Inbox::new(Scope::new("order-status").unwrap()),
        fail_first_v2: true.into(),
    });
    let consumer = Consumer::new(handler.clone(), by_event_id()).retry(fast_retry(3));
    let running = start(&channel, &consumer).await;
    let versioned = |version: u64, status: &str| {
        let payload = format!(r#"{{"version":{version},"status":"{status}"}}"#);
        Message::new(payload.into_bytes(), "").with_header("Event-Id", "order-7")
    };
    let status = || async {
        sqlx::query_scalar::<_, String>("SELECT status FROM order_status WHERE id = 'order-7'")
            .fetch_optional(&pool)
            .await
            .unwrap()
    };
    channel.publish(&versioned(2, "shipped")).await.unwrap();
    until(&consumer, "version 2, on its retry", |r| r.done == 1).await;
    assert_eq!(status().await.as_deref(), Some("shipped"));
    channel.publish(&versioned(1, "packed")).await.unwrap();
    until(&consumer, "the late version 1", |r| r.stale == 1).await;
    channel.publish(&versioned(3, "delivered")).await.unwrap();
    until(&consumer, "version 3", |r| r.done == 2).await;
    channel.publish(&versioned(3, "delivered")).await.unwrap();
    until(&consumer, "version 3 again", |r| r.stale == 2).await;
    let report = running.stop().await;

    assert_eq!(status().await.as_deref(), Some("delivered"));
    assert_eq!((report.done, report.stale, report.dead_lettered), (2, 2, 0));
    assert!(
        !handler.fail_first_v2.load(Ordering::SeqCst),
        "version 2 failed once"
    );
    until_all_settled(&channel).await;
}

/// Counts the calls in it at once (and the most ever); a `slow-` key takes ten seconds.
#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    most: AtomicUsize,
}

#[async_trait]
impl Handler for InFlight {
    async fn handle(&self, key: &Key, _: &Message) -> Result<Handled, HandlerError> {
        /// Leaves on drop too: a timeout drops the call mid-sleep.
        struct Inside<'a>(&'a AtomicUsize);
        impl Drop for Inside<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        let _inside = Inside(&self.now);
        self.most.fetch_max(now, Ordering::SeqCst);
        let slow = key.as_str().starts_with("slow-");
        tokio::time::sleep(Duration::from_millis(if slow { 10_000 } else { 30 })).await;
        Ok(Handled::Done)
    }
}

/// The handler behind tower's layers (`oncely_consumer::service`): a concurrency limit of one
/// holds eight deliveries in flight to one call at a time, and a timeout makes a call that
/// hangs a failed attempt, retried, then dead-lettered with the layer's error.
async fn tower_layers_limit_and_time_out_the_handler<C: Channel>(channel: C) {
    use oncely_consumer::service::{HandlerService, ServiceHandler};
    let inner = Arc::new(InFlight::default());
    let stack = tower::ServiceBuilder::new()
        .concurrency_limit(1)
        .timeout(Duration::from_millis(300))
        .service(HandlerService::new(inner.clone()));
    let consumer = Consumer::new(ServiceHandler::new(stack), by_event_id())
        .concurrency(8)
        .retry(fast_retry(2));
    let running = start(&channel, &consumer).await;
    let mut events: Vec<Message> = (0..6).map(|i| event(&format!("fast-{i}"), i)).collect();
    events.push(event("slow-1", 6));
    publish_all(&channel, &events).await;
    until(&consumer, "six done and the slow one dead-lettered", |r| {
        r.done == 6 && r.dead_lettered == 1
    })
    .await;
    running.stop().await;

    assert_eq!(inner.most.load(Ordering::SeqCst), 1, "one call at a time");
    until_all_settled(&channel).await;
    let letters = channel.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].header(KEY_HEADER), Some("slow-1"));
    let error = letters[0].header(ERROR_HEADER).unwrap_or_default();
    assert!(error.contains("timed out"), "the timeout's error: {error}");
    assert_eq!(letters[0].header(ATTEMPTS_HEADER), Some("2"));
}

/// Publishes `payloads` one at a time, each settled (as `settled(report)` counts) before the
/// next, so the outcome of each is known; answers the report.
async fn one_by_one<C: Channel, H: Handler>(
    channel: &C,
    consumer: &Consumer<H>,
    payloads: &[&str],
) -> Report {
    let running = start(channel, consumer).await;
    for (n, payload) in payloads.iter().enumerate() {
        channel
            .publish(&Message::new(payload.as_bytes().to_vec(), ""))
            .await
            .unwrap();
        until(consumer, &format!("message {}", n + 1), |r| {
            (r.done + r.duplicates + r.dead_lettered) as usize == n + 1
        })
        .await;
    }
    running.stop().await
}

/// The default fingerprint is the payload's canonical JSON: a producer's resend that writes the
/// same object with its keys in another order and other spacing is a duplicate, while the same
/// key with another amount is a conflict, dead-lettered, never taken for done.
async fn a_re_serialised_copy_is_a_duplicate_and_a_changed_payload_a_conflict<C: Channel>(
    channel: C,
) {
    let effects = Effects::default();
    let key: KeySource = "orderId".parse().unwrap();
    let consumer = Consumer::new(store_handler(effects.clone()), key);
    let report = one_by_one(
        &channel,
        &consumer,
        &[
            r#"{"orderId":"o-1","amount":10,"lines":[{"sku":"s-1","n":2}]}"#,
            r#"{ "lines": [ { "n": 2, "sku": "s-1" } ], "amount": 10, "orderId": "o-1" }"#,
            r#"{"orderId":"o-1","amount":11,"lines":[{"sku":"s-1","n":2}]}"#,
        ],
    )
    .await;
    assert_eq!(effects.of("o-1"), 1);
    assert_eq!(
        (report.done, report.duplicates, report.dead_lettered),
        (1, 1, 1)
    );
    until_all_settled(&channel).await;
    let letters = channel.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert!(String::from_utf8_lossy(letters[0].payload()).contains("11"));
    let error = letters[0].header(ERROR_HEADER).unwrap();
    assert!(error.contains("different payload"), "{error}");
}

/// SNS notifications delivered through a queue: the key and the fingerprint are inside the
/// `Message` string (a JMESPath expression with `powertools_json`). A resend carries a new
/// `MessageId` and its `Message` re-serialised: a duplicate; another amount for the order: a
/// conflict; another order: its own effect.
async fn an_expression_keys_json_inside_a_string_and_fingerprints_only_it<C: Channel>(channel: C) {
    let sns = |id: &str, message: &str| {
        serde_json::json!({"Type": "Notification", "MessageId": id, "Message": message}).to_string()
    };
    let effects = Effects::default();
    let key: KeySource = "powertools_json(Message).orderId".parse().unwrap();
    let fingerprint = "fields:powertools_json(Message)".parse().unwrap();
    let handler = fingerprinting_handler(effects.clone(), fingerprint);
    let consumer = Consumer::new(handler, key);
    let payloads = [
        sns("m-1", r#"{"orderId":"o-1","amount":10}"#),
        sns("m-2", r#"{"amount": 10, "orderId": "o-1"}"#),
        sns("m-3", r#"{"orderId":"o-1","amount":99}"#),
        sns("m-4", r#"{"orderId":"o-2","amount":10}"#),
        sns("m-5", r#"{"amount":10}"#),
    ];
    let payloads: Vec<&str> = payloads.iter().map(String::as_str).collect();
    let report = one_by_one(&channel, &consumer, &payloads).await;
    assert_eq!((effects.of("o-1"), effects.of("o-2")), (1, 1));
    assert_eq!(
        (report.done, report.duplicates, report.dead_lettered),
        (2, 1, 2)
    );
    until_all_settled(&channel).await;
    let mut errors: Vec<String> = channel
        .dead_letters()
        .await
        .unwrap()
        .iter()
        .map(|m| m.header(ERROR_HEADER).unwrap().to_owned())
        .collect();
    errors.sort();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].contains("different payload"), "{errors:?}");
    assert!(errors[1].contains("selects nothing"), "{errors:?}");
}
