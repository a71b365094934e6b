//! The broker benchmark (`oncely bench --broker URL`): messages per second through
//! consume + claim + effect + ack on a real NATS JetStream, RabbitMQ, Kafka or SQS, oncely's
//! consumer runner against the naive per-message pattern, in the same run.
//!
//! **Workload.** [`BrokerConfig::events`] messages (the store benchmark's workload:
//! 36-character UUID keys, [`BrokerConfig::duplicate_ratio`] of them re-publishes of an earlier
//! key, clustered within the 10,000 before). Each payload is `{"eventId":"<key>"}`, so a re-publish is byte-for-byte
//! the original. Every contender gets a fresh stream, queue or topic from its broker crate's
//! `fresh_destination`, named `<prefix><pid>-<millis>-<n>-<contender>` (NATS:
//! `ONCELY_BENCH_...` with a durable pull consumer and a dead-letter stream of its own; RabbitMQ:
//! `oncely.bench....` and its `.dlq`, both with `x-expires` of 10 minutes; Kafka:
//! `oncely.bench....` with [`KAFKA_PARTITIONS`] partitions, the event key as the Kafka key so a
//! re-publish shares its original's partition, a consumer group named as the topic, and the
//! `.dlq` topic the source makes), filled and confirmed by the broker **before** the clock starts
//! (Kafka: the idempotent producer, acks from all in-sync replicas, one record per produce batch,
//! every delivery report awaited), and deleted at the end (NATS streams, Kafka topics and SQS
//! queues a crashed run left are deleted by the next run, RabbitMQ's expire by themselves; the
//! Kafka consumer groups stay). The measured phase is consumption only.
//!
//! **Kafka's partitions.** The source keeps order per Kafka key (`order=key`, its default):
//! messages of other keys of one partition run side by side, up to the concurrency, and the
//! offset committed is the first one not settled. Eight partitions are a common count for a
//! topic of this size; a re-publish never meets its original in flight (same key, one at a
//! time). The naive contender reads one message at a time, as that pattern does.
//!
//! **SQS.** `sqs://HOST[:PORT]` (`sqs+http://` for an emulator). Every contender gets a fresh
//! standard queue `oncely-bench-<pid>-<millis>-<n>-<contender>` and its `-dlq` (deleted at the
//! end; those of a crashed run by the next one), filled before the clock by `SendMessageBatch` (ten
//! messages a request, four requests at once, every entry's answer checked). The source URL
//! adds `wait=1s` (long polls of a second). The source receives up to ten messages ahead
//! whatever the concurrency and deletes acked messages in batches of up to ten; the naive
//! consumer's ack is one `DeleteMessage` per message, awaited. "Unsettled" is the queue's
//! visible, in-flight and delayed messages after the consumer is gone; dead letters are the
//! `-dlq`'s messages. **The default size is small on purpose** ([`DEFAULT_SQS_EVENTS`], 1,000
//! messages; naive [`DEFAULT_SQS_NAIVE_EVENTS`], 500): the SQS server this is run against
//! (moto, a Python emulator) reads every message of a queue on each request, so a request
//! costs time in proportion to the queue's depth, and filling the whole workload first (so that
//! only consumption is timed) makes the queue as deep as the workload. At 1,000 messages a run
//! takes about half a minute; the figures then measure moto (a queue starting 1,000 deep, then
//! draining) far more than oncely, and say little about real SQS (network round trips of
//! milliseconds, no depth cost).
//!
//! **oncely.** [`oncely::Consumer`] over the broker's source (`oncely::broker::connect`; Kafka:
//! `oncely::kafka::KafkaSource`, offsets committed every `commit_interval`, 200 ms, after the
//! acks, and when it leaves the group), with an
//! [`OncelyHandler`](oncely::consumer::OncelyHandler) (key `/eventId`, payload fingerprint on,
//! oncely's default lease) over a fresh store of the kind `--store` names
//! (SQLite: an empty file under the bench directory; PostgreSQL / MySQL: a fresh schema /
//! database on that server, dropped after). The effect is an in-process counter.
//! [`BrokerConfig::concurrency`] deliveries in flight (Kafka: at most one per key); the
//! source's read-ahead follows it (NATS `batch=<concurrency>`, `max_ack_pending` at least twice
//! it; RabbitMQ `prefetch=<2 x concurrency>`; Kafka: the source's own per-partition fetching).
//! The clock runs from the consumer's start until the last message's ack is confirmed (Kafka:
//! from the first message handed out, see below).
//!
//! **raw.** The same runner, source and concurrency as oncely's, with a handler that answers
//! done at once: no store, no key, no dedup (the effect runs for every message, re-publishes
//! too). Consuming and acking alone: the broker's limit here, which oncely's figure is read
//! against.
//!
//! **naive.** One message at a time from the same kind of source (the URL's defaults; Kafka: a
//! plain rdkafka consumer in the group named as the topic, auto-commit off), per message: parse
//! the JSON, check-then-insert the key on the same kind of store in its own transaction
//! (`SELECT EXISTS` then `INSERT` on a `processed_events` table: the store benchmark's naive
//! pattern, one connection), the effect if the key was new, then the ack (awaited; Kafka: the
//! offset after the message committed synchronously). On the first
//! [`BrokerConfig::naive_events`] messages only.
//!
//! **Figures.** Messages per second; p50 / p99 of a message's time from the source handing its
//! delivery to the consumer (for oncely: to the runner, which takes one only when a slot is
//! free) until its ack is confirmed, every acked delivery timed. A delivery given back (the
//! contract's "in progress elsewhere": a re-publish that arrived while its original was still
//! being handled) is counted under `redelivered` and timed again from its next delivery, so
//! the wait it had is in the elapsed time and not in the percentiles. On Kafka the clock of
//! both contenders starts when the first message is handed out: a Kafka consumer joins its
//! group (a rebalance round, about a second on tansu) before it gets anything, once per
//! consumer and not per message. The run fails unless every message is acked, the broker holds
//! nothing unsettled after, nothing was dead-lettered and the effects applied equal the
//! distinct keys. On Kafka "unsettled" is, per partition, the distance between the group's
//! committed offset (read once the consumer has left) and the partition's end: the offset after
//! the last message the producer's delivery reports returned, or the high watermark if further
//! (tansu answers the base offset of a partition's last produce batch plus one, short of the end
//! when that batch held several records, so the watermark alone cannot tell).

use std::path::PathBuf;
use std::time::Duration;

use oncely::BrokerKind;
use oncely::consumer::Source;

use crate::{BenchError, Progress, StoreKind, Workload, format_duration};

mod kafka;
mod naive;
mod nats;
mod rabbitmq;
mod runner;
mod sqs;

pub use kafka::KAFKA_PARTITIONS;
pub use sqs::{DEFAULT_SQS_EVENTS, DEFAULT_SQS_NAIVE_EVENTS};

/// Deliveries in flight for oncely by default.
pub const DEFAULT_CONCURRENCY: usize = 64;
/// Messages by default (SQS: [`DEFAULT_SQS_EVENTS`], see [`default_events`]).
pub const DEFAULT_EVENTS: usize = 20_000;
/// How long the run may go without a single ack before it is declared stuck.
pub const STALL_LIMIT: Duration = Duration::from_secs(120);

/// What the broker benchmark runs.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// `nats://[USER:PASS@]HOST[:PORT]`, `amqp://[USER:PASS@]HOST[:PORT][/VHOST]`,
    /// `kafka://HOST[:PORT][,HOST[:PORT]...]` or `sqs[+http]://HOST[:PORT]`.
    pub broker: String,
    /// The store kind oncely and the naive pattern use (SQLite, PostgreSQL or MySQL).
    pub store: StoreKind,
    /// The store URL (for PostgreSQL and MySQL: the server, where fresh namespaces are made).
    pub store_url: String,
    /// Where the SQLite files go.
    pub dir: PathBuf,
    /// Messages through oncely.
    pub events: usize,
    /// Share of messages that re-publish an earlier key.
    pub duplicate_ratio: f64,
    /// oncely's deliveries in flight (on Kafka at most one per Kafka key).
    pub concurrency: usize,
    /// Messages through the naive pattern (the first of the workload).
    pub naive_events: usize,
    /// Seed of the workload.
    pub seed: u64,
    /// SQLite page size of the fresh files.
    pub page_size: u32,
    /// oncely's lease on a claimed key ([`oncely::DEFAULT_LEASE`] unless told): a re-publish
    /// that arrives while its original is being handled is given back for what is left of it.
    pub lease: Duration,
}

/// The figures of one contender.
#[derive(Clone, Debug)]
pub struct BrokerRun {
    /// `oncely` or `naive`.
    pub name: String,
    /// Messages published and acked.
    pub messages: usize,
    /// Distinct keys among them.
    pub distinct: usize,
    /// Times the effect ran.
    pub effects: u64,
    /// Deliveries given back to the broker (and delivered again).
    pub redelivered: u64,
    /// Messages dead-lettered (0, or the run fails).
    pub dead_lettered: u64,
    /// Messages the broker still held, pending or unacked, after the run (0, or the run fails).
    pub unsettled: u64,
    /// From the start of consumption to the last ack.
    pub elapsed: Duration,
    /// Median delivery-to-ack time.
    pub p50: Duration,
    /// 99th percentile delivery-to-ack time.
    pub p99: Duration,
    /// oncely only: when `redelivered` > 0, the first `messages - redelivered` acks and the
    /// time they took, i.e. the run without the deliveries that were given back to wait.
    pub before_waits: Option<(usize, Duration)>,
}

impl BrokerRun {
    /// Messages per second.
    pub fn messages_per_sec(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// `--broker`'s URL without its trailing slashes; a URL with options is refused.
fn broker_url(url: &str) -> Result<&str, BenchError> {
    let url = url.trim_end_matches('/');
    if url.contains('?') {
        return Err(BenchError::Other(format!(
            "--broker takes the server only ({}); the benchmark sets the options",
            oncely::backend::url::redact_password(url)
        )));
    }
    Ok(url)
}

/// The error for a `--broker` URL no broker takes.
fn unsupported(url: &str) -> BenchError {
    BenchError::Other(format!(
        "--broker takes nats://HOST[:PORT], amqp://[USER:PASS@]HOST[:PORT][/VHOST], \
         kafka://HOST[:PORT][,HOST[:PORT]...] or sqs[+http]://HOST[:PORT], not `{}`",
        oncely::backend::url::redact_password(url)
    ))
}

/// The server `url` (a `--broker` URL) names, as the broker `C` parses it.
fn server<C: Channel>(url: &str) -> Result<C::Server, BenchError> {
    let url = broker_url(url)?;
    match url.split_once("://") {
        Some((_, rest)) => C::server(url, rest),
        None => Err(unsupported(url)),
    }
}

fn other(what: &str) -> impl Fn(&dyn std::fmt::Display) -> BenchError + '_ {
    move |e| BenchError::Other(format!("{what}: {e}"))
}

/// Publishes awaiting their confirmation at once while filling.
const PUBLISH_WINDOW: usize = 1000;
/// The name of a RabbitMQ queue or Kafka topic of the benchmark, before
/// `<pid>-<millis>-<n>-<contender>`.
const BENCH_PREFIX: &str = "oncely.bench.";

/// The default message count for `broker` (a `--broker` URL): [`DEFAULT_SQS_EVENTS`] on SQS,
/// [`DEFAULT_EVENTS`] otherwise.
pub fn default_events(broker: &str) -> usize {
    if BrokerKind::from_url(broker) == Ok(BrokerKind::Sqs) {
        DEFAULT_SQS_EVENTS
    } else {
        DEFAULT_EVENTS
    }
}

/// One broker's part of the benchmark: a fresh destination (a NATS stream, a RabbitMQ queue, a
/// Kafka topic or an SQS queue, each with its dead letters) that one contender consumes. It is
/// made and filled before the clock starts, read through a source URL, counted once the source
/// is gone, and deleted. Everything else is shared; [`run`] picks the implementation from the
/// URL's scheme.
trait Channel: Sized {
    /// The broker's server, parsed from `--broker`.
    type Server;

    /// Whether the clock starts when the first delivery is handed out rather than when the
    /// consumer starts (for both contenders).
    const CLOCK_FROM_FIRST_DELIVERY: bool = false;

    /// Parses `url` (a `--broker` URL without trailing slashes or options; `rest` follows its
    /// `://`), refusing anything more than the server.
    fn server(url: &str, rest: &str) -> Result<Self::Server, BenchError>;

    /// A fresh stream, queue or topic at `server` for `contender`, made by the broker crate's
    /// `fresh_destination` (which first deletes what runs whose process is gone left).
    async fn create(server: &Self::Server, contender: &str) -> Result<Self, BenchError>;

    /// Publishes the workload's messages, every one confirmed by the broker, advancing
    /// `progress` as they are.
    async fn fill(
        &mut self,
        workload: &Workload,
        progress: &dyn Progress,
    ) -> Result<(), BenchError>;

    /// The source URL, with read-ahead for `concurrency` deliveries in flight (`None`: the
    /// URL's defaults).
    fn source_url(&self, concurrency: Option<usize>) -> String;

    /// The source the naive pattern reads: by default the source URL with its defaults.
    async fn naive_source(&self) -> Result<impl Source, BenchError> {
        oncely::broker::connect(&self.source_url(None))
            .await
            .map_err(|e| other("broker")(&e))
    }

    /// Messages the broker still holds unsettled (pending or delivered and unacked), and
    /// messages in the dead-letter stream or queue. Call once the source is dropped.
    async fn leftovers(&self) -> Result<(u64, u64), BenchError>;

    /// Deletes the stream or queue and its dead letters.
    async fn delete(self) -> Result<(), BenchError>;
}

/// Publishes the workload's messages to `channel` (the `publish` phase).
async fn fill<C: Channel>(
    channel: &mut C,
    workload: &Workload,
    progress: &dyn Progress,
) -> Result<(), BenchError> {
    progress.start("publish", workload.len() as u64);
    channel.fill(workload, progress).await?;
    progress.finish();
    Ok(())
}

/// Runs oncely, the naive pattern, then raw, each on a fresh stream or queue (oncely and naive
/// on a fresh store), and answers their figures in that order.
pub fn run(config: &BrokerConfig, progress: &dyn Progress) -> Result<Vec<BrokerRun>, BenchError> {
    if !matches!(
        config.store,
        StoreKind::Sqlite | StoreKind::Postgres | StoreKind::Mysql
    ) {
        return Err(BenchError::Other(
            "bench --broker runs on sqlite:, postgres:// or mysql:// stores".into(),
        ));
    }
    // The one place that picks the broker.
    let url = broker_url(&config.broker)?;
    match BrokerKind::from_url(url) {
        Ok(BrokerKind::Nats) => run_on::<nats::Stream>(config, progress),
        Ok(BrokerKind::RabbitMq) => run_on::<rabbitmq::Queues>(config, progress),
        Ok(BrokerKind::Kafka) => run_on::<kafka::Topic>(config, progress),
        Ok(BrokerKind::Sqs) => run_on::<sqs::Queues>(config, progress),
        _ => Err(unsupported(url)),
    }
}

/// [`run`] on the broker `C`.
fn run_on<C: Channel>(
    config: &BrokerConfig,
    progress: &dyn Progress,
) -> Result<Vec<BrokerRun>, BenchError> {
    let server = server::<C>(&config.broker)?;
    let workload = Workload::generate(config.events, config.duplicate_ratio, config.seed);
    let naive_workload = workload.prefix(config.naive_events.min(config.events));
    // Two workers: the broker clients' connection tasks, the runner's tasks and the drivers
    // share them (SQLite's writer is a thread of its own).
    let runtime = crate::two_workers()?;
    runtime.block_on(async {
        let mut namespaces = config
            .store
            .is_server()
            .then(|| crate::server::Namespaces::new(config.store, &config.store_url));
        let results = async {
            let store_url = match &mut namespaces {
                Some(ns) => {
                    let url = ns.fresh("broker_oncely").await?;
                    ns.for_store(&url)
                }
                None => format!(
                    "sqlite:{}?page_size={}",
                    crate::fresh_file(&config.dir, "broker-oncely")?.display(),
                    config.page_size
                ),
            };
            let oncely =
                runner::run_oncely::<C>(&server, config, &store_url, &workload, progress).await?;
            let naive_store = match &mut namespaces {
                Some(ns) => naive::NaiveStore::Url(ns.fresh("broker_naive").await?),
                None => naive::NaiveStore::File(crate::fresh_file(&config.dir, "broker-naive")?),
            };
            let naive =
                naive::run_naive::<C>(&server, config, naive_store, &naive_workload, progress)
                    .await?;
            let raw = runner::run_raw::<C>(&server, config, &workload, progress).await?;
            Ok::<_, BenchError>(vec![oncely, naive, raw])
        }
        .await;
        let dropped = match &mut namespaces {
            Some(ns) => ns.drop_all().await,
            None => Ok(()),
        };
        let results = results?;
        dropped?;
        Ok(results)
    })
}

fn payload(key: &oncely::Key) -> Vec<u8> {
    format!("{{\"eventId\":\"{key}\"}}").into_bytes()
}

/// Fails the benchmark unless every message was acked, nothing is left at the broker, nothing
/// was dead-lettered and the effect ran `effects` times (once per distinct key; raw: once per
/// message).
fn check(run: &BrokerRun, acked: usize, effects: u64) -> Result<(), BenchError> {
    let mut wrong = Vec::new();
    if acked != run.messages {
        wrong.push(format!("{acked} of {} messages acked", run.messages));
    }
    if run.unsettled != 0 {
        wrong.push(format!(
            "{} messages unsettled at the broker",
            run.unsettled
        ));
    }
    if run.dead_lettered != 0 {
        wrong.push(format!("{} messages dead-lettered", run.dead_lettered));
    }
    if run.effects != effects {
        wrong.push(format!(
            "{} effects for {} distinct keys (expected {effects})",
            run.effects, run.distinct
        ));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(BenchError::Other(format!(
            "{}: {}",
            run.name,
            wrong.join(", ")
        )))
    }
}

/// The results as an aligned text table, each contender's speed relative to oncely's (the
/// first result).
pub fn format_table(results: &[BrokerRun]) -> String {
    let oncely_rate = results.first().map_or(1.0, BrokerRun::messages_per_sec);
    let mut out = format!(
        "{:<10} {:>9} {:>9} {:>9} {:>11} {:>11} {:>10} {:>10} {:>10}\n",
        "contender",
        "messages",
        "distinct",
        "effects",
        "redelivered",
        "messages/s",
        "p50",
        "p99",
        "oncely is"
    );
    for r in results {
        out.push_str(&format!(
            "{:<10} {:>9} {:>9} {:>9} {:>11} {:>11.0} {:>10} {:>10} {:>10}\n",
            r.name,
            r.messages,
            r.distinct,
            r.effects,
            r.redelivered,
            r.messages_per_sec(),
            format_duration(r.p50),
            format_duration(r.p99),
            format!("{:.2}x", oncely_rate / r.messages_per_sec()),
        ));
    }
    for r in results {
        if let Some((first, took)) = r.before_waits {
            out.push_str(&format!(
                "{}: {} deliveries found their key in progress and were given back, to come \
                 again when its lease runs out; the other {first} messages were acked in \
                 {:.2} s ({:.0} messages/s)\n",
                r.name,
                r.redelivered,
                took.as_secs_f64(),
                first as f64 / took.as_secs_f64().max(1e-9)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(broker: &str) -> BrokerConfig {
        BrokerConfig {
            broker: broker.into(),
            store: StoreKind::Sqlite,
            store_url: "sqlite:unused.db".into(),
            dir: std::env::temp_dir(),
            events: 10,
            duplicate_ratio: 0.1,
            concurrency: 1,
            naive_events: 10,
            seed: 7,
            page_size: crate::DEFAULT_PAGE_SIZE,
            lease: oncely::DEFAULT_LEASE,
        }
    }

    /// Refused before any connection: the brokers' own shapes are tested in their modules.
    #[test]
    fn broker_urls_are_servers_of_a_known_broker() {
        for url in ["pulsar://h", "nats://h?batch=1", "kafka://", "h:4222"] {
            assert!(run(&config(url), &crate::NoProgress).is_err(), "{url}");
        }
    }
}
