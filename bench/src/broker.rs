//! The broker benchmark (`oncely bench --broker URL`): messages per second through
//! consume + claim + effect + ack on a real NATS JetStream, RabbitMQ, Kafka or SQS, oncely's
//! consumer runner against the naive per-message pattern, in the same run.
//!
//! **Workload.** [`BrokerConfig::events`] messages (S8's workload: 36-character UUID keys,
//! [`BrokerConfig::duplicate_ratio`] of them re-publishes of an earlier key, clustered within
//! the 10,000 before). Each payload is `{"eventId":"<key>"}`, so a re-publish is byte-for-byte
//! the original. Every contender gets a fresh stream (NATS: `ONCELY_BENCH_<pid>_<n>_<contender>`
//! with a durable pull consumer and a dead-letter stream of its own), queue (RabbitMQ:
//! `oncely.bench.<pid>.<n>.<contender>` and its `.dlq`, both with `x-expires` of 10 minutes) or
//! topic (Kafka: `oncely.bench.<pid>.<n>.<contender>` with [`KAFKA_PARTITIONS`] partitions, the
//! event key as the Kafka key so a re-publish shares its original's partition, a consumer group
//! named as the topic, and the `.dlq` topic the source makes), filled and confirmed by the broker
//! **before** the clock starts (Kafka: the idempotent producer, acks from all in-sync replicas,
//! one record per produce batch, every delivery report awaited), and deleted at the end (NATS streams and Kafka topics a
//! crashed run left are deleted by the next run, RabbitMQ's expire by themselves; the Kafka
//! consumer groups stay). The measured phase is consumption only.
//!
//! **Kafka's partitions.** Kafka's parallelism is per partition: the source hands out one message
//! per partition at a time (order per partition), so on Kafka oncely has at most
//! [`KAFKA_PARTITIONS`] (8) deliveries in flight, and concurrency above that is unused. Eight is
//! a common partition count for a topic of this size and is what a two-core machine can use; a
//! re-publish never meets its original in flight there (same key, same partition, one at a
//! time).
//!
//! **SQS.** `sqs://HOST[:PORT]` (`sqs+http://` for an emulator). Every contender gets a fresh
//! standard queue `oncely-bench-<pid>-<n>-<contender>` and its `-dlq` (deleted at the end; those
//! of a crashed run by the next one), filled before the clock by `SendMessageBatch` (ten
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
//! acks, and when it leaves the group), with an [`OncelyHandler`] (key `/eventId`, payload
//! fingerprint on, oncely's default lease) over a fresh store of the kind `--store` names
//! (SQLite: an empty file under the bench directory; PostgreSQL / MySQL: a fresh schema /
//! database on that server, dropped after). The effect is an in-process counter.
//! [`BrokerConfig::concurrency`] deliveries in flight (Kafka: at most one per partition); the
//! source's read-ahead follows it (NATS `batch=<concurrency>`, `max_ack_pending` at least twice
//! it; RabbitMQ `prefetch=<2 x concurrency>`; Kafka: the source's own per-partition fetching).
//! The clock runs from the consumer's start until the last message's ack is confirmed (Kafka:
//! from the first message handed out, see below).
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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oncely::consumer::{
    BrokerError, DeadLetter, Delivery, KeySource, Message, OncelyHandler, Source,
};
use oncely::kafka::rdkafka;
use oncely::nats::async_nats;
use oncely::rabbitmq::lapin;
use oncely::{Consumer, Oncely, Scope, async_trait};

use crate::{BenchError, Progress, StoreKind, Workload, format_duration, percentile};

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
    /// oncely's deliveries in flight (on Kafka at most one per partition:
    /// [`KAFKA_PARTITIONS`]).
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

/// Which broker a URL names.
#[derive(Clone, Debug)]
enum Broker {
    /// The server URL as async-nats takes it.
    Nats(String),
    /// `amqp://[USER:PASS@]HOST[:PORT][/VHOST]`, as lapin takes it.
    Amqp(String),
    /// The bootstrap brokers, `HOST:PORT[,HOST:PORT...]`, as librdkafka takes them.
    Kafka(String),
    /// `sqs://HOST[:PORT]` or `sqs+http://HOST[:PORT]`, and its options (queue empty).
    Sqs(String, Box<oncely::sqs::SqsOptions>),
}

impl Broker {
    fn parse(url: &str) -> Result<Self, BenchError> {
        let url = url.trim_end_matches('/');
        if url.contains('?') {
            return Err(BenchError::Other(format!(
                "--broker takes the server only ({}); the benchmark sets the options",
                oncely::backend::url::redact_password(url)
            )));
        }
        match url.split_once("://") {
            Some(("nats", rest)) if rest.split('/').count() == 1 => Ok(Broker::Nats(url.into())),
            Some(("amqp", rest)) if rest.split('/').count() <= 2 => Ok(Broker::Amqp(url.into())),
            // The consumer URL's parser fills in the default port of each broker.
            Some(("kafka", rest)) if !rest.is_empty() && !rest.contains('/') => {
                format!("{url}/topic?group=bench")
                    .parse::<oncely::kafka::KafkaOptions>()
                    .map(|options| Broker::Kafka(options.brokers))
                    .map_err(|e| BenchError::Other(format!("--broker: {e}")))
            }
            Some(("sqs" | "sqs+http", rest)) if !rest.is_empty() && !rest.contains('/') => {
                oncely::sqs::SqsOptions::parse_queue_optional(url)
                    .map(|options| Broker::Sqs(url.into(), Box::new(options)))
                    .map_err(|e| BenchError::Other(format!("--broker: {e}")))
            }
            _ => Err(BenchError::Other(format!(
                "--broker takes nats://HOST[:PORT], amqp://[USER:PASS@]HOST[:PORT][/VHOST], \
                 kafka://HOST[:PORT][,HOST[:PORT]...] or sqs[+http]://HOST[:PORT], not `{}`",
                oncely::backend::url::redact_password(url)
            ))),
        }
    }
}

fn other(what: &str) -> impl Fn(&dyn std::fmt::Display) -> BenchError + '_ {
    move |e| BenchError::Other(format!("{what}: {e}"))
}

/// Runs oncely, then the naive pattern, each on a fresh stream or queue and a fresh store, and
/// answers their figures in that order.
pub fn run(config: &BrokerConfig, progress: &dyn Progress) -> Result<Vec<BrokerRun>, BenchError> {
    if !matches!(
        config.store,
        StoreKind::Sqlite | StoreKind::Postgres | StoreKind::Mysql
    ) {
        return Err(BenchError::Other(
            "bench --broker runs on sqlite:, postgres:// or mysql:// stores".into(),
        ));
    }
    let broker = Broker::parse(&config.broker)?;
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
            let oncely = run_oncely(&broker, config, &store_url, &workload, progress).await?;
            let naive_store = match &mut namespaces {
                Some(ns) => NaiveStore::Url(ns.fresh("broker_naive").await?),
                None => NaiveStore::File(crate::fresh_file(&config.dir, "broker-naive")?),
            };
            let naive = run_naive(&broker, config, naive_store, &naive_workload, progress).await?;
            Ok::<_, BenchError>(vec![oncely, naive])
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

/// A fresh stream (and durable consumer, and dead-letter stream) or queue (and dead-letter
/// queue) holding the workload's messages.
enum Channel {
    Nats {
        context: async_nats::jetstream::Context,
        stream: String,
        dlq_stream: String,
        server: String,
        subject_prefix: String,
    },
    Amqp {
        connection: lapin::Connection,
        server: String,
        queue: String,
        dlq: String,
    },
    Kafka {
        brokers: String,
        topic: String,
        /// Per partition, the offset after the last message produced to it, from the
        /// producer's delivery reports (tansu's high watermark can fall short of it).
        produced: Vec<i64>,
    },
    Sqs {
        client: aws_sdk_sqs::Client,
        /// `sqs[+http]://HOST[:PORT]`, as given.
        server: String,
        queue: String,
        queue_url: String,
        dlq_url: String,
    },
}

const NATS_PREFIX: &str = "ONCELY_BENCH_";
const NATS_CONSUMER: &str = "bench";
/// RabbitMQ deletes a bench queue this long after its last use.
const AMQP_EXPIRES_MS: i32 = 10 * 60 * 1000;
/// Publishes awaiting their confirmation at once while filling.
const PUBLISH_WINDOW: usize = 1000;
/// The name of a RabbitMQ queue or Kafka topic of the benchmark, before `<pid>.<n>.<contender>`.
const BENCH_PREFIX: &str = "oncely.bench.";
/// Partitions of a Kafka bench topic. Kafka's parallelism is per partition: the source hands out
/// one message per partition at a time, so on Kafka oncely has at most this many deliveries in
/// flight, whatever its concurrency.
pub const KAFKA_PARTITIONS: i32 = 8;
/// The name of an SQS queue of the benchmark (SQS names take no dots), before
/// `<pid>-<n>-<contender>`; its dead-letter queue is the name and `-dlq`.
const SQS_PREFIX: &str = "oncely-bench-";
/// SQS's most messages per SendMessageBatch.
const SQS_BATCH: usize = 10;
/// SendMessageBatch requests in flight at once while filling.
const SQS_BATCHES_IN_FLIGHT: usize = 4;
/// Messages by default on SQS: moto, the emulator it is tested with, reads every message of a
/// queue on each request, so a request's cost grows with the queue's depth. See the module docs.
pub const DEFAULT_SQS_EVENTS: usize = 1_000;
/// Messages through the naive pattern by default on SQS (one DeleteMessage per message).
pub const DEFAULT_SQS_NAIVE_EVENTS: usize = 500;

/// The default message count for `broker` (a `--broker` URL): [`DEFAULT_SQS_EVENTS`] on SQS,
/// [`DEFAULT_EVENTS`] otherwise.
pub fn default_events(broker: &str) -> usize {
    if broker.starts_with("sqs") {
        DEFAULT_SQS_EVENTS
    } else {
        DEFAULT_EVENTS
    }
}

/// How long a Kafka metadata, offsets or admin request may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

impl Channel {
    async fn create(broker: &Broker, contender: &str) -> Result<Channel, BenchError> {
        static MADE: AtomicUsize = AtomicUsize::new(0);
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        match broker {
            Broker::Nats(server) => {
                let client = async_nats::connect(server.as_str()).await.map_err(|e| {
                    BenchError::Other(format!(
                        "no NATS server at {}: {e}",
                        oncely::backend::url::redact_password(server)
                    ))
                })?;
                let context = async_nats::jetstream::new(client);
                remove_leftover_streams(&context).await;
                let stream = format!("{NATS_PREFIX}{pid}_{n}_{}", contender.to_uppercase());
                let subject_prefix = format!("oncely.bench.{pid}.{n}.{contender}");
                context
                    .create_stream(async_nats::jetstream::stream::Config {
                        name: stream.clone(),
                        subjects: vec![format!("{subject_prefix}.in")],
                        // A safety net: messages of a run that died before deleting expire.
                        max_age: Duration::from_secs(3600),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| other("create the NATS stream")(&e))?;
                Ok(Channel::Nats {
                    context,
                    dlq_stream: format!("{stream}_DLQ"),
                    stream,
                    server: server.clone(),
                    subject_prefix,
                })
            }
            Broker::Amqp(server) => {
                let connection =
                    lapin::Connection::connect(server, lapin::ConnectionProperties::default())
                        .await
                        .map_err(|e| {
                            BenchError::Other(format!(
                                "no RabbitMQ at {}: {e}",
                                oncely::backend::url::redact_password(server)
                            ))
                        })?;
                let queue = format!("{BENCH_PREFIX}{pid}.{n}.{contender}");
                let dlq = format!("{queue}.dlq");
                let channel = connection
                    .create_channel()
                    .await
                    .map_err(|e| other("AMQP channel")(&e))?;
                let mut arguments = lapin::types::FieldTable::default();
                arguments.insert(
                    "x-expires".into(),
                    lapin::types::AMQPValue::LongInt(AMQP_EXPIRES_MS),
                );
                for name in [&queue, &dlq] {
                    channel
                        .queue_declare(
                            name.as_str().into(),
                            lapin::options::QueueDeclareOptions::durable(),
                            arguments.clone(),
                        )
                        .await
                        .map_err(|e| other("declare the bench queue")(&e))?;
                }
                channel
                    .close(200, "OK".into())
                    .await
                    .map_err(|e| other("AMQP channel")(&e))?;
                Ok(Channel::Amqp {
                    connection,
                    server: server.clone(),
                    queue,
                    dlq,
                })
            }
            Broker::Kafka(brokers) => {
                remove_leftover_topics(brokers).await;
                let topic = format!("{BENCH_PREFIX}{pid}.{n}.{contender}");
                oncely::kafka::create_topic(brokers, &topic, KAFKA_PARTITIONS)
                    .await
                    .map_err(|e| other("create the Kafka topic")(&e))?;
                Ok(Channel::Kafka {
                    brokers: brokers.clone(),
                    topic,
                    produced: vec![0; KAFKA_PARTITIONS as usize],
                })
            }
            Broker::Sqs(server, options) => {
                let client = oncely::sqs::client(options).map_err(|e| other("SQS client")(&e))?;
                remove_leftover_queues(&client).await;
                let queue = format!("{SQS_PREFIX}{pid}-{n}-{contender}");
                let dlq = format!("{queue}-dlq");
                let mut urls = Vec::with_capacity(2);
                for name in [&queue, &dlq] {
                    let made = client
                        .create_queue()
                        .queue_name(name)
                        .send()
                        .await
                        .map_err(|e| {
                            BenchError::Other(format!(
                                "create the SQS queue {name} at {}: {}",
                                options.endpoint,
                                sqs_error(&e)
                            ))
                        })?;
                    urls.push(made.queue_url().unwrap_or_default().to_owned());
                }
                let dlq_url = urls.pop().unwrap_or_default();
                let queue_url = urls.pop().unwrap_or_default();
                Ok(Channel::Sqs {
                    client,
                    server: server.clone(),
                    queue,
                    queue_url,
                    dlq_url,
                })
            }
        }
    }

    /// Publishes the workload's messages, every one confirmed by the broker.
    async fn fill(
        &mut self,
        workload: &Workload,
        progress: &dyn Progress,
    ) -> Result<(), BenchError> {
        progress.start("publish", workload.len() as u64);
        match self {
            Channel::Nats {
                context,
                subject_prefix,
                ..
            } => {
                let subject = format!("{subject_prefix}.in");
                for chunk in workload.keys().chunks(PUBLISH_WINDOW) {
                    let mut acks = Vec::with_capacity(chunk.len());
                    for key in chunk {
                        acks.push(
                            context
                                .publish(subject.clone(), payload(key).into())
                                .await
                                .map_err(|e| other("NATS publish")(&e))?,
                        );
                    }
                    for ack in acks {
                        ack.await.map_err(|e| other("NATS publish ack")(&e))?;
                    }
                    progress.advance(chunk.len() as u64);
                }
            }
            Channel::Amqp {
                connection, queue, ..
            } => {
                let channel = connection
                    .create_channel()
                    .await
                    .map_err(|e| other("AMQP channel")(&e))?;
                channel
                    .confirm_select(lapin::options::ConfirmSelectOptions::default())
                    .await
                    .map_err(|e| other("AMQP confirm mode")(&e))?;
                for chunk in workload.keys().chunks(PUBLISH_WINDOW) {
                    let mut confirms = Vec::with_capacity(chunk.len());
                    for key in chunk {
                        confirms.push(
                            channel
                                .basic_publish(
                                    "".into(),
                                    queue.as_str().into(),
                                    lapin::options::BasicPublishOptions {
                                        mandatory: true,
                                        ..Default::default()
                                    },
                                    &payload(key),
                                    lapin::BasicProperties::default()
                                        .with_delivery_mode(2)
                                        .with_content_type("application/json".into()),
                                )
                                .await
                                .map_err(|e| other("AMQP publish")(&e))?,
                        );
                    }
                    for confirm in confirms {
                        let confirmation = confirm
                            .await
                            .map_err(|e| other("AMQP publish confirm")(&e))?;
                        if !matches!(confirmation, lapin::Confirmation::Ack(None)) {
                            return Err(BenchError::Other(format!(
                                "RabbitMQ did not confirm a publish to {queue}: {confirmation:?}"
                            )));
                        }
                    }
                    progress.advance(chunk.len() as u64);
                }
                channel
                    .close(200, "OK".into())
                    .await
                    .map_err(|e| other("AMQP channel")(&e))?;
            }
            Channel::Kafka {
                brokers,
                topic,
                produced,
            } => {
                use rdkafka::producer::{FutureProducer, FutureRecord};
                // The relay's producer: acks from all in-sync replicas, no duplicates from its
                // own retries. The event key is the Kafka key, so a re-publish shares a
                // partition with its original.
                // One record per produce batch: tansu serves a fetch only below its high
                // watermark (the last batch's base offset + 1), so a consumer paused and resumed
                // inside a batch of several records would wait for ever for the rest of it.
                let producer: FutureProducer = kafka_config(brokers)
                    .set("enable.idempotence", "true")
                    .set("acks", "all")
                    .set("batch.num.messages", "1")
                    .create()
                    .map_err(|e| other("Kafka producer")(&e))?;
                for chunk in workload.keys().chunks(PUBLISH_WINDOW) {
                    let mut reports = Vec::with_capacity(chunk.len());
                    for key in chunk {
                        let body = payload(key);
                        let record = FutureRecord::<str, [u8]>::to(topic)
                            .key(key.as_str())
                            .payload(&body);
                        reports.push(
                            producer
                                .send_result(record)
                                .map_err(|(e, _)| other("Kafka produce")(&e))?,
                        );
                    }
                    for report in reports {
                        let delivered = report
                            .await
                            .map_err(|e| other("Kafka produce")(&e))?
                            .map_err(|(e, _)| other("Kafka produce")(&e))?;
                        let partition = usize::try_from(delivered.partition).map_err(|_| {
                            BenchError::Other(format!(
                                "Kafka delivered to partition {}",
                                delivered.partition
                            ))
                        })?;
                        if partition >= produced.len() {
                            produced.resize(partition + 1, 0);
                        }
                        produced[partition] = produced[partition].max(delivered.offset + 1);
                    }
                    progress.advance(chunk.len() as u64);
                }
            }
            Channel::Sqs {
                client, queue_url, ..
            } => {
                use futures_util::StreamExt;
                // SendMessageBatch, ten messages a request, a few requests at once; a batch
                // answers each entry, and any entry refused fails the run.
                let batches = workload.keys().chunks(SQS_BATCH).map(|chunk| {
                    let entries = chunk
                        .iter()
                        .enumerate()
                        .map(|(n, key)| {
                            aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                                .id(n.to_string())
                                .message_body(String::from_utf8_lossy(&payload(key)))
                                .build()
                                .expect("id and body are set")
                        })
                        .collect::<Vec<_>>();
                    let request = client
                        .send_message_batch()
                        .queue_url(queue_url.as_str())
                        .set_entries(Some(entries));
                    async move { (chunk.len(), request.send().await) }
                });
                let mut sent =
                    futures_util::stream::iter(batches).buffer_unordered(SQS_BATCHES_IN_FLIGHT);
                while let Some((len, answer)) = sent.next().await {
                    let answer = answer.map_err(|e| {
                        BenchError::Other(format!("SQS SendMessageBatch: {}", sqs_error(&e)))
                    })?;
                    if let Some(failed) = answer.failed().first() {
                        return Err(BenchError::Other(format!(
                            "SQS refused a message: {}: {}",
                            failed.code(),
                            failed.message().unwrap_or_default()
                        )));
                    }
                    if answer.successful().len() != len {
                        return Err(BenchError::Other(format!(
                            "SQS answered {} of {len} messages of a batch",
                            answer.successful().len()
                        )));
                    }
                    progress.advance(len as u64);
                }
            }
        }
        progress.finish();
        Ok(())
    }

    /// Whether the clock starts when the first delivery is handed out rather than when the
    /// consumer starts: on Kafka, whose consumer joins its group (a rebalance round, about a
    /// second) before the first message, once per consumer and not per message.
    fn clock_from_first_delivery(&self) -> bool {
        matches!(self, Channel::Kafka { .. })
    }

    /// The source URL, with read-ahead for `concurrency` deliveries in flight (`None`: the
    /// URL's defaults).
    fn source_url(&self, concurrency: Option<usize>) -> String {
        match self {
            Channel::Nats {
                stream,
                dlq_stream,
                server,
                subject_prefix,
                ..
            } => {
                let mut url = format!(
                    "{server}/{stream}/{NATS_CONSUMER}?dlq={subject_prefix}.dlq&dlq_stream={dlq_stream}"
                );
                if let Some(c) = concurrency {
                    url.push_str(&format!("&batch={c}&max_ack_pending={}", (2 * c).max(1000)));
                }
                url
            }
            Channel::Amqp {
                server, queue, dlq, ..
            } => {
                let mut url = format!("{server}/{queue}?dlq={dlq}");
                if let Some(c) = concurrency {
                    url.push_str(&format!("&prefetch={}", 2 * c));
                }
                url
            }
            // No read-ahead to set: the source fetches per partition and hands out one message
            // per partition at a time.
            Channel::Kafka { brokers, topic, .. } => {
                format!("kafka://{brokers}/{topic}?group={topic}")
            }
            // Nothing to set either: the source receives up to ten messages ahead, whatever
            // the runner's concurrency. Receives wait a second at most (long polls on moto
            // spin its CPU for their whole wait when nothing is there).
            Channel::Sqs { server, queue, .. } => format!("{server}/{queue}?wait=1s"),
        }
    }

    /// Messages the broker still holds unsettled (pending or delivered and unacked), and
    /// messages in the dead-letter stream or queue. Call once the source is dropped.
    async fn leftovers(&self) -> Result<(u64, u64), BenchError> {
        match self {
            Channel::Nats {
                context,
                stream,
                dlq_stream,
                ..
            } => {
                let info = context
                    .get_stream(stream)
                    .await
                    .map_err(|e| other("NATS stream")(&e))?
                    .consumer_info(NATS_CONSUMER)
                    .await
                    .map_err(|e| other("NATS consumer info")(&e))?;
                let unsettled = info.num_pending + info.num_ack_pending as u64;
                let dead = match context.get_stream(dlq_stream).await {
                    Ok(s) => {
                        s.get_info()
                            .await
                            .map_err(|e| other("NATS dead-letter stream")(&e))?
                            .state
                            .messages
                    }
                    Err(_) => 0,
                };
                Ok((unsettled, dead))
            }
            Channel::Amqp {
                connection,
                queue,
                dlq,
                ..
            } => {
                let channel = connection
                    .create_channel()
                    .await
                    .map_err(|e| other("AMQP channel")(&e))?;
                // A passive declare counts ready messages only: wait until the consumer's
                // channel is closed, so that anything it left unacked is ready again.
                let deadline = Instant::now() + Duration::from_secs(10);
                let count = |name: String| {
                    let channel = channel.clone();
                    async move {
                        channel
                            .queue_declare(
                                name.as_str().into(),
                                lapin::options::QueueDeclareOptions::default().passive(),
                                lapin::types::FieldTable::default(),
                            )
                            .await
                            .map_err(|e| other("AMQP passive declare")(&e))
                    }
                };
                let declared = loop {
                    let declared = count(queue.clone()).await?;
                    if declared.consumer_count() == 0 {
                        break declared;
                    }
                    if Instant::now() >= deadline {
                        return Err(BenchError::Other(format!(
                            "consumers still on {queue}: its unacked messages cannot be counted"
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                let dead = count(dlq.clone()).await?.message_count();
                channel
                    .close(200, "OK".into())
                    .await
                    .map_err(|e| other("AMQP channel")(&e))?;
                Ok((u64::from(declared.message_count()), u64::from(dead)))
            }
            Channel::Kafka {
                brokers,
                topic,
                produced,
            } => {
                let (brokers, topic, produced) = (brokers.clone(), topic.clone(), produced.clone());
                // Offset and watermark requests block: off the runtime.
                tokio::task::spawn_blocking(move || kafka_leftovers(&brokers, &topic, &produced))
                    .await
                    .map_err(|e| other("Kafka offsets")(&e))?
            }
            // The source gives back what it received and never handed out when it is dropped
            // (visible again at once); acks are deletes the source awaited.
            Channel::Sqs {
                client,
                queue_url,
                dlq_url,
                ..
            } => Ok((
                sqs_count(client, queue_url, true).await?,
                sqs_count(client, dlq_url, false).await?,
            )),
        }
    }

    /// Deletes the stream or queue and its dead letters.
    async fn delete(self) -> Result<(), BenchError> {
        match self {
            Channel::Nats {
                context,
                stream,
                dlq_stream,
                ..
            } => {
                context
                    .delete_stream(&stream)
                    .await
                    .map_err(|e| other("delete the NATS stream")(&e))?;
                // Created by the source on first use; absent if it never got that far.
                context.delete_stream(&dlq_stream).await.ok();
            }
            Channel::Amqp {
                connection,
                queue,
                dlq,
                ..
            } => {
                let channel = connection
                    .create_channel()
                    .await
                    .map_err(|e| other("AMQP channel")(&e))?;
                for name in [queue, dlq] {
                    channel
                        .queue_delete(
                            name.as_str().into(),
                            lapin::options::QueueDeleteOptions::default(),
                        )
                        .await
                        .map_err(|e| other("delete the bench queue")(&e))?;
                }
                connection
                    .close(200, "OK".into())
                    .await
                    .map_err(|e| other("AMQP close")(&e))?;
            }
            Channel::Kafka { brokers, topic, .. } => {
                let dlq = format!("{topic}.dlq");
                delete_topics(&brokers, &[topic.as_str(), dlq.as_str()]).await?;
            }
            Channel::Sqs {
                client,
                queue,
                queue_url,
                dlq_url,
                ..
            } => {
                for url in [queue_url, dlq_url] {
                    client
                        .delete_queue()
                        .queue_url(&url)
                        .send()
                        .await
                        .map_err(|e| {
                            BenchError::Other(format!(
                                "delete the SQS queue {queue}: {}",
                                sqs_error(&e)
                            ))
                        })?;
                }
            }
        }
        Ok(())
    }
}

/// An SQS SDK error on one line, with its causes.
fn sqs_error(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    line
}

/// Messages in an SQS queue: visible ones, and with `all` also those received and not deleted
/// (in flight) and delayed.
async fn sqs_count(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    all: bool,
) -> Result<u64, BenchError> {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let mut names = vec![A::ApproximateNumberOfMessages];
    if all {
        names.extend([
            A::ApproximateNumberOfMessagesNotVisible,
            A::ApproximateNumberOfMessagesDelayed,
        ]);
    }
    let answer = client
        .get_queue_attributes()
        .queue_url(queue_url)
        .set_attribute_names(Some(names.clone()))
        .send()
        .await
        .map_err(|e| BenchError::Other(format!("SQS queue attributes: {}", sqs_error(&e))))?;
    let attributes = answer.attributes();
    Ok(names
        .iter()
        .filter_map(|name| attributes.and_then(|a| a.get(name)))
        .filter_map(|value| value.parse::<u64>().ok())
        .sum())
}

/// Deletes the SQS bench queues of earlier runs whose process is gone.
async fn remove_leftover_queues(client: &aws_sdk_sqs::Client) {
    let Ok(listed) = client
        .list_queues()
        .queue_name_prefix(SQS_PREFIX)
        .send()
        .await
    else {
        return;
    };
    for url in listed.queue_urls() {
        let name = url.rsplit('/').next().unwrap_or_default();
        let pid = name
            .strip_prefix(SQS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .unwrap_or_default();
        if !pid.is_empty() && gone(pid) {
            client.delete_queue().queue_url(url).send().await.ok();
        }
    }
}

/// A librdkafka configuration with the bootstrap brokers, logging errors only.
fn kafka_config(brokers: &str) -> rdkafka::ClientConfig {
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("log_level", "3");
    config
}

/// For a Kafka topic whose partitions end at `produced`: the messages the group (named as the
/// topic) has not committed, and the dead letters in `<topic>.dlq`.
///
/// A partition's end is the producer's (the offset after the last delivery report) or its high
/// watermark, whichever is further: tansu's watermark can stop at the base offset of the last
/// produce batch plus one. Any committed offset other than the end counts its distance.
fn kafka_leftovers(brokers: &str, topic: &str, produced: &[i64]) -> Result<(u64, u64), BenchError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = kafka_config(brokers)
        .set("group.id", topic)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| other("Kafka consumer")(&e))?;
    let mut partitions = rdkafka::TopicPartitionList::new();
    for partition in 0..produced.len() {
        partitions.add_partition(topic, partition as i32);
    }
    let committed = consumer
        .committed_offsets(partitions, KAFKA_TIMEOUT)
        .map_err(|e| other("Kafka committed offsets")(&e))?;
    let mut unsettled = 0;
    for (partition, &end) in (0i32..).zip(produced) {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, KAFKA_TIMEOUT)
            .map_err(|e| other("Kafka watermarks")(&e))?;
        let end = end.max(high);
        let done = match committed
            .find_partition(topic, partition)
            .map(|e| e.offset())
        {
            Some(rdkafka::Offset::Offset(offset)) => offset,
            _ => 0,
        };
        unsettled += end.abs_diff(done);
    }
    // Created by the source on first use; absent if it never got that far (and for the naive
    // consumer). Non-zero when anything was produced to it, although tansu may undercount.
    let dead = match consumer.fetch_watermarks(&format!("{topic}.dlq"), 0, KAFKA_TIMEOUT) {
        Ok((low, high)) => high.saturating_sub(low).max(0) as u64,
        Err(_) => 0,
    };
    Ok((unsettled, dead))
}

/// Deletes Kafka topics; topics that do not exist are no error.
async fn delete_topics(brokers: &str, topics: &[&str]) -> Result<(), BenchError> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> = kafka_config(brokers)
        .create()
        .map_err(|e| other("Kafka admin")(&e))?;
    let options = AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT));
    let results = admin
        .delete_topics(topics, &options)
        .await
        .map_err(|e| other("delete the Kafka topics")(&e))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => {
                return Err(BenchError::Other(format!(
                    "delete the Kafka topic {topic}: {code}"
                )));
            }
        }
    }
    Ok(())
}

/// Deletes the Kafka bench topics of earlier runs whose process is gone.
async fn remove_leftover_topics(brokers: &str) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let owned = brokers.to_owned();
    let stale = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = kafka_config(&owned).create().ok()?;
        let metadata = consumer.fetch_metadata(None, KAFKA_TIMEOUT).ok()?;
        Some(
            metadata
                .topics()
                .iter()
                .map(|t| t.name().to_owned())
                .filter(|name| {
                    name.strip_prefix(BENCH_PREFIX)
                        .is_some_and(|rest| gone(rest.split('.').next().unwrap_or_default()))
                })
                .collect::<Vec<_>>(),
        )
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_default();
    if !stale.is_empty() {
        let names: Vec<&str> = stale.iter().map(String::as_str).collect();
        delete_topics(brokers, &names).await.ok();
    }
}

/// Whether the process `pid` that made a bench stream or topic is gone.
fn gone(pid: &str) -> bool {
    pid != std::process::id().to_string() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Deletes the bench streams of earlier runs whose process is gone.
async fn remove_leftover_streams(context: &async_nats::jetstream::Context) {
    use futures_util::StreamExt;
    let mut names = context.stream_names();
    let mut stale = Vec::new();
    while let Some(Ok(name)) = names.next().await {
        let Some(rest) = name.strip_prefix(NATS_PREFIX) else {
            continue;
        };
        if gone(rest.split('_').next().unwrap_or_default()) {
            stale.push(name);
        }
    }
    for name in stale {
        context.delete_stream(&name).await.ok();
    }
}

/// Acked deliveries, their delivery-to-ack times and the instant of the last ack.
struct Tally {
    target: usize,
    acked: AtomicUsize,
    latencies: Mutex<Vec<Duration>>,
    acks_at: Mutex<Vec<Instant>>,
    all_acked: tokio::sync::Notify,
    /// When the source handed out its first delivery.
    first_taken: std::sync::OnceLock<Instant>,
}

impl Tally {
    fn new(target: usize) -> Self {
        Tally {
            target,
            acked: AtomicUsize::new(0),
            latencies: Mutex::new(Vec::with_capacity(target)),
            acks_at: Mutex::new(Vec::with_capacity(target)),
            all_acked: tokio::sync::Notify::new(),
            first_taken: std::sync::OnceLock::new(),
        }
    }

    fn acked(&self, taken: Instant) {
        let now = Instant::now();
        self.latencies.lock().unwrap().push(now - taken);
        self.acks_at.lock().unwrap().push(now);
        if self.acked.fetch_add(1, Ordering::AcqRel) + 1 == self.target {
            self.all_acked.notify_one();
        }
    }

    fn count(&self) -> usize {
        self.acked.load(Ordering::Acquire)
    }
}

/// The broker's source, timing each delivery from the moment the runner takes it.
struct Timed<S> {
    inner: S,
    tally: Arc<Tally>,
}

struct TimedDelivery<D> {
    inner: D,
    taken: Instant,
    tally: Arc<Tally>,
}

#[async_trait]
impl<S: Source> Source for Timed<S> {
    type Delivery = TimedDelivery<S::Delivery>;

    async fn next(&mut self) -> Option<Result<Self::Delivery, BrokerError>> {
        let next = self.inner.next().await?;
        Some(next.map(|inner| {
            let taken = Instant::now();
            self.tally.first_taken.get_or_init(|| taken);
            TimedDelivery {
                inner,
                taken,
                tally: self.tally.clone(),
            }
        }))
    }
}

#[async_trait]
impl<D: Delivery> Delivery for TimedDelivery<D> {
    fn message(&self) -> &Message {
        self.inner.message()
    }

    async fn ack(&self) -> Result<(), BrokerError> {
        self.inner.ack().await?;
        self.tally.acked(self.taken);
        Ok(())
    }

    async fn redeliver(&self, after: Duration) -> Result<(), BrokerError> {
        self.inner.redeliver(after).await
    }

    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), BrokerError> {
        self.inner.dead_letter(letter).await
    }

    async fn in_progress(&self) -> Result<(), BrokerError> {
        self.inner.in_progress().await
    }
}

async fn run_oncely(
    broker: &Broker,
    config: &BrokerConfig,
    store_url: &str,
    workload: &Workload,
    progress: &dyn Progress,
) -> Result<BrokerRun, BenchError> {
    let mut channel = Channel::create(broker, "oncely").await?;
    let result = async {
        channel.fill(workload, progress).await?;
        let concurrency = config.concurrency.max(1);
        let store = oncely::connect(store_url).await?;
        let effects = Arc::new(AtomicU64::new(0));
        let counter = effects.clone();
        let handler = OncelyHandler::new(
            Oncely::new(store).with_lease(config.lease),
            Scope::default(),
            move |_key: oncely::Key, _: Message| {
                counter.fetch_add(1, Ordering::Relaxed);
                std::future::ready(Ok::<_, std::convert::Infallible>(Vec::new()))
            },
        );
        let keys: KeySource = "/eventId".parse().expect("a valid key source");
        let consumer = Consumer::new(handler, keys).concurrency(concurrency);
        let source = oncely::broker::connect(&channel.source_url(Some(concurrency)))
            .await
            .map_err(|e| other("broker")(&e))?;
        let tally = Arc::new(Tally::new(workload.len()));
        let source = Timed {
            inner: source,
            tally: tally.clone(),
        };
        progress.start("oncely", workload.len() as u64);
        let stalled = Arc::new(Mutex::new(None));
        let started = Instant::now();
        let shutdown = {
            let (tally, stalled) = (tally.clone(), stalled.clone());
            async move {
                let mut reported = 0;
                let mut last_progress = Instant::now();
                loop {
                    let tick = tokio::time::sleep(Duration::from_millis(100));
                    tokio::select! {
                        _ = tally.all_acked.notified() => break,
                        _ = tick => {}
                    }
                    let acked = tally.count();
                    if acked >= tally.target {
                        break;
                    }
                    if acked > reported {
                        progress.advance((acked - reported) as u64);
                        reported = acked;
                        last_progress = Instant::now();
                    } else if last_progress.elapsed() > STALL_LIMIT {
                        *stalled.lock().unwrap() = Some(acked);
                        break;
                    }
                }
                progress.advance((tally.count().saturating_sub(reported)) as u64);
            }
        };
        let report = consumer
            .run(source, shutdown)
            .await
            .map_err(|e| other("consumer")(&e))?;
        progress.finish();
        if let Some(acked) = *stalled.lock().unwrap() {
            return Err(BenchError::Other(format!(
                "oncely: no ack for {STALL_LIMIT:?} with {acked} of {} messages acked",
                workload.len()
            )));
        }
        let started = match (channel.clock_from_first_delivery(), tally.first_taken.get()) {
            (true, Some(first)) => *first,
            _ => started,
        };
        let mut acks_at = std::mem::take(&mut *tally.acks_at.lock().unwrap());
        acks_at.sort_unstable();
        let elapsed = acks_at.last().map_or(Duration::ZERO, |t| *t - started);
        let first = workload.len().saturating_sub(report.redelivered as usize);
        let before_waits =
            (report.redelivered > 0 && first > 0).then(|| (first, acks_at[first - 1] - started));
        let (unsettled, dead) = channel.leftovers().await?;
        let mut latencies = std::mem::take(&mut *tally.latencies.lock().unwrap());
        latencies.sort_unstable();
        let run = BrokerRun {
            name: "oncely".into(),
            messages: workload.len(),
            distinct: workload.distinct_keys(),
            effects: effects.load(Ordering::Relaxed),
            redelivered: report.redelivered,
            dead_lettered: report.dead_lettered.max(dead),
            unsettled: unsettled + report.unsettled,
            elapsed,
            p50: percentile(&latencies, 0.5),
            p99: percentile(&latencies, 0.99),
            before_waits,
        };
        check(&run, tally.count())?;
        Ok::<_, BenchError>(run)
    }
    .await;
    let deleted = channel.delete().await;
    let run = result?;
    deleted?;
    Ok(run)
}

/// Where the naive pattern keeps its processed-events table.
enum NaiveStore {
    /// A fresh SQLite file.
    File(PathBuf),
    /// A fresh PostgreSQL schema or MySQL database, by its URL.
    Url(String),
}

enum NaiveConn {
    Sqlite(rusqlite::Connection),
    Postgres(sqlx::PgConnection),
    Mysql(sqlx::MySqlConnection),
}

impl NaiveConn {
    async fn open(store: NaiveStore, kind: StoreKind, page_size: u32) -> Result<Self, BenchError> {
        use sqlx::Connection;
        Ok(match (store, kind) {
            (NaiveStore::File(path), _) => {
                NaiveConn::Sqlite(crate::baseline::sqlite::open_naive(&path, page_size)?)
            }
            (NaiveStore::Url(url), StoreKind::Postgres) => {
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                crate::baseline::postgres::create_processed_events(&mut conn).await?;
                NaiveConn::Postgres(conn)
            }
            (NaiveStore::Url(url), _) => {
                let mut conn = sqlx::MySqlConnection::connect(&url).await?;
                crate::baseline::mysql::create_processed_events(&mut conn).await?;
                NaiveConn::Mysql(conn)
            }
        })
    }

    async fn check_then_insert(&mut self, key: &str) -> Result<bool, BenchError> {
        match self {
            NaiveConn::Sqlite(conn) => crate::baseline::sqlite::check_then_insert(conn, key),
            NaiveConn::Postgres(conn) => {
                crate::baseline::postgres::check_then_insert(conn, key).await
            }
            NaiveConn::Mysql(conn) => crate::baseline::mysql::check_then_insert(conn, key).await,
        }
    }
}

async fn run_naive(
    broker: &Broker,
    config: &BrokerConfig,
    store: NaiveStore,
    workload: &Workload,
    progress: &dyn Progress,
) -> Result<BrokerRun, BenchError> {
    let mut channel = Channel::create(broker, "naive").await?;
    let result = async {
        channel.fill(workload, progress).await?;
        let conn = NaiveConn::open(store, config.store, config.page_size).await?;
        let (elapsed, mut latencies, effects) = match &channel {
            Channel::Kafka { brokers, topic, .. } => {
                let source = PlainKafka::subscribe(brokers, topic)?;
                naive_loop(source, conn, workload, true, progress).await?
            }
            _ => {
                let source = oncely::broker::connect(&channel.source_url(None))
                    .await
                    .map_err(|e| other("broker")(&e))?;
                naive_loop(source, conn, workload, false, progress).await?
            }
        };
        let (unsettled, dead) = channel.leftovers().await?;
        latencies.sort_unstable();
        let run = BrokerRun {
            name: "naive".into(),
            messages: workload.len(),
            distinct: workload.distinct_keys(),
            effects,
            redelivered: 0,
            dead_lettered: dead,
            unsettled,
            elapsed,
            p50: percentile(&latencies, 0.5),
            p99: percentile(&latencies, 0.99),
            before_waits: None,
        };
        check(&run, latencies.len())?;
        Ok::<_, BenchError>(run)
    }
    .await;
    let deleted = channel.delete().await;
    let run = result?;
    deleted?;
    Ok(run)
}

/// The naive pattern over `source`, one message at a time: the elapsed time, each message's
/// delivery-to-ack time and the effects applied. The clock starts before the first receive, or
/// with `from_first_delivery` when the first delivery is handed out. The source is dropped
/// before it answers.
async fn naive_loop<S: Source>(
    mut source: S,
    mut conn: NaiveConn,
    workload: &Workload,
    from_first_delivery: bool,
    progress: &dyn Progress,
) -> Result<(Duration, Vec<Duration>, u64), BenchError> {
    progress.start("naive", workload.len() as u64);
    let mut latencies = Vec::with_capacity(workload.len());
    let mut effects = 0u64;
    let mut started = Instant::now();
    for n in 0..workload.len() {
        let delivery = tokio::time::timeout(STALL_LIMIT, source.next())
            .await
            .map_err(|_| BenchError::Other(format!("naive: no delivery for {STALL_LIMIT:?}")))?
            .ok_or_else(|| BenchError::Other("naive: the source ended".into()))?
            .map_err(|e| other("naive: receive")(&e))?;
        let taken = Instant::now();
        if n == 0 && from_first_delivery {
            started = taken;
        }
        let json: serde_json::Value = serde_json::from_slice(delivery.message().payload())
            .map_err(|e| other("naive: payload")(&e))?;
        let key = json["eventId"]
            .as_str()
            .ok_or_else(|| BenchError::Other("naive: a payload without eventId".into()))?;
        if conn.check_then_insert(key).await? {
            effects += 1;
        }
        delivery.ack().await.map_err(|e| other("naive: ack")(&e))?;
        latencies.push(taken.elapsed());
        progress.advance(1);
    }
    let elapsed = started.elapsed();
    progress.finish();
    drop(source);
    Ok((elapsed, latencies, effects))
}

/// The Kafka consumer people write without oncely: a plain rdkafka consumer in the group named
/// as the topic (auto-commit off, from the earliest offset), each message's offset committed
/// synchronously (`CommitMode::Sync`) when it is acked.
struct PlainKafka {
    consumer: Arc<rdkafka::consumer::StreamConsumer>,
}

/// A message from [`PlainKafka`], and where it was.
struct PlainKafkaDelivery {
    consumer: Arc<rdkafka::consumer::StreamConsumer>,
    message: Message,
    topic: String,
    partition: i32,
    offset: i64,
}

impl PlainKafka {
    fn subscribe(brokers: &str, topic: &str) -> Result<Self, BenchError> {
        use rdkafka::consumer::Consumer as _;
        let consumer: rdkafka::consumer::StreamConsumer = kafka_config(brokers)
            .set("group.id", topic)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|e| other("Kafka consumer")(&e))?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| other("Kafka subscribe")(&e))?;
        Ok(PlainKafka {
            consumer: Arc::new(consumer),
        })
    }
}

#[async_trait]
impl Source for PlainKafka {
    type Delivery = PlainKafkaDelivery;

    async fn next(&mut self) -> Option<Result<PlainKafkaDelivery, BrokerError>> {
        use rdkafka::Message as _;
        Some(match self.consumer.recv().await {
            Ok(m) => Ok(PlainKafkaDelivery {
                consumer: self.consumer.clone(),
                message: Message::new(m.payload().unwrap_or_default().to_vec(), m.topic()),
                topic: m.topic().to_owned(),
                partition: m.partition(),
                offset: m.offset(),
            }),
            Err(e) => Err(BrokerError::new(oncely::kafka::BROKER, "receive", e)),
        })
    }
}

#[async_trait]
impl Delivery for PlainKafkaDelivery {
    fn message(&self) -> &Message {
        &self.message
    }

    async fn ack(&self) -> Result<(), BrokerError> {
        use rdkafka::consumer::{CommitMode, Consumer as _};
        let mut next = rdkafka::TopicPartitionList::new();
        next.add_partition_offset(
            &self.topic,
            self.partition,
            rdkafka::Offset::Offset(self.offset + 1),
        )
        .and_then(|()| self.consumer.commit(&next, CommitMode::Sync))
        .map_err(|e| BrokerError::new(oncely::kafka::BROKER, "commit", e))
    }

    async fn redeliver(&self, _after: Duration) -> Result<(), BrokerError> {
        Err(BrokerError::new(
            oncely::kafka::BROKER,
            "redeliver",
            "the naive consumer never gives a message back",
        ))
    }

    async fn dead_letter(&self, _letter: &DeadLetter) -> Result<(), BrokerError> {
        Err(BrokerError::new(
            oncely::kafka::BROKER,
            "dead-letter",
            "the naive consumer never dead-letters",
        ))
    }
}

/// Fails the benchmark unless every message was acked, nothing is left at the broker, nothing
/// was dead-lettered and the effect ran once per distinct key.
fn check(run: &BrokerRun, acked: usize) -> Result<(), BenchError> {
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
    if run.effects != run.distinct as u64 {
        wrong.push(format!(
            "{} effects for {} distinct keys",
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

    #[test]
    fn broker_urls_are_servers_only() {
        assert!(matches!(
            Broker::parse("nats://127.0.0.1:4222"),
            Ok(Broker::Nats(_))
        ));
        assert!(matches!(
            Broker::parse("amqp://guest:guest@127.0.0.1:5672/"),
            Ok(Broker::Amqp(u)) if u == "amqp://guest:guest@127.0.0.1:5672"
        ));
        assert!(matches!(Broker::parse("amqp://h/%2f"), Ok(Broker::Amqp(_))));
        assert!(Broker::parse("nats://h/STREAM/consumer").is_err());
        assert!(Broker::parse("amqp://h/vhost/queue").is_err());
        assert!(Broker::parse("nats://h?batch=1").is_err());
        assert!(matches!(
            Broker::parse("kafka://127.0.0.1"),
            Ok(Broker::Kafka(b)) if b == "127.0.0.1:9092"
        ));
        assert!(matches!(
            Broker::parse("kafka://a:9093,b/"),
            Ok(Broker::Kafka(b)) if b == "a:9093,b:9092"
        ));
        assert!(Broker::parse("kafka://h/topic").is_err());
        assert!(Broker::parse("kafka://").is_err());
        assert!(matches!(
            Broker::parse("sqs+http://127.0.0.1:5999/"),
            Ok(Broker::Sqs(u, o)) if u == "sqs+http://127.0.0.1:5999" && o.endpoint == "http://127.0.0.1:5999"
        ));
        assert!(matches!(
            Broker::parse("sqs://sqs.eu-west-1.amazonaws.com"),
            Ok(Broker::Sqs(..))
        ));
        assert!(Broker::parse("sqs+http://h/queue").is_err());
        assert!(Broker::parse("sqs://").is_err());
        assert!(Broker::parse("pulsar://h").is_err());
    }
}
