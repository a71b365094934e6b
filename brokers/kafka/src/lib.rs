//! # oncely-kafka
//!
//! Kafka as a source for the oncely consumer runner
//! ([`oncely-consumer`](https://docs.rs/oncely-consumer)), and as a destination of the outbox
//! relay: exactly one effect per key over Kafka's at-least-once delivery.
//!
//! Kafka redelivers from the group's last committed offset: after a crash, a rebalance, a
//! failed commit. [`KafkaSource`] is a consumer group member; the runner
//! ([`Consumer`](https://docs.rs/oncely-consumer)) takes each message's key, calls your handler,
//! and settles the message by the consumer contract ([`oncely_core::consumer`]):
//!
//! | the handler says | the runner does, on Kafka |
//! |---|---|
//! | done (effect committed) | the offset after it is committed (every `commit_interval`, and before a partition is given up) |
//! | duplicate (key already done) | the same, without running the handler |
//! | in progress elsewhere | the message goes back to the head of its partition and is handled again after a delay |
//! | failed | retry in place with backoff; after the last attempt, dead-letter |
//! | rejected, or no key | dead-letter at once |
//! | store unavailable | back to the head of its partition after a delay, no attempt counted |
//!
//! **Order per partition.** One message per partition is handled at a time, and a message given
//! back stays ahead of the rest of its partition: messages of one Kafka key (one partition) are
//! handled in the order they were produced. Partitions are handled side by side, up to the
//! runner's concurrency; more concurrency than assigned partitions is not used.
//!
//! **Offsets in two modes.**
//! - *Committed to Kafka after the effect* (the default). A crash between the effect and the
//!   commit redelivers messages whose effect is done; the dedup store answers them as
//!   duplicates.
//! - *Stored in your database with the effect* ([`KafkaSource::offsets`]). Your handler saves
//!   [`Message::position`](oncely_core::consumer::Message::position) in the transaction of its
//!   effect (`oncely_postgres::offsets::PostgresOffsets::save`, and the MySQL and SQLite
//!   ones); when a partition is assigned, the source starts it at the stored offset. The effect
//!   and "consumed" commit together, so a crash can neither skip a message nor apply one twice.
//!   Offsets are still committed to Kafka too, so lag shows in the usual tools.
//!
//! **Rebalances.** When partitions are revoked, what was fetched and not handed out is dropped,
//! the messages in flight are waited for (up to `revoke_wait`, 30 s) and their offsets
//! committed before the partitions go. A message still running after that is released: its
//! settlement is ignored, and the next owner reads it again (a duplicate, if its effect
//! committed).
//!
//! A dead letter is the message (payload, key and headers) plus the `Oncely-Error`,
//! `Oncely-Attempts`, `Oncely-Key` and `Oncely-Source` headers, produced with acks from all
//! in-sync replicas to the dead-letter topic; the original counts as settled only after that.
//!
//! ## The URL
//!
//! `kafka://HOST[:PORT][,HOST[:PORT]...]/TOPIC?group=NAME[&OPTIONS]`, as
//! `oncely consume --from` takes it. The port defaults to 9092.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `group=NAME` | (required) | the consumer group |
//! | `dlq=TOPIC` | `TOPIC.dlq` | where dead letters are produced |
//! | `create_dlq=true\|false` | `true` | create that topic (one partition) if missing |
//! | `session_timeout=10s` | 10 s | how soon a crashed member's partitions go to the others |
//! | `commit_interval=200ms` | 200 ms | how often settled offsets are committed |
//! | `revoke_wait=30s` | 30 s | how long a revocation waits for messages in flight |
//!
//! The topic must exist. A message's Kafka key becomes its
//! [`ordering_key`](oncely_core::consumer::Message::ordering_key), its headers its headers, and
//! the [`MESSAGE_ID_HEADER`] header (set by the relay) its message id, so `--key message-id`
//! dedups what the outbox relay produced.
//!
//! ## Example
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use oncely_consumer::Consumer;
//! use oncely_core::consumer::{Message, OncelyHandler};
//! use oncely_core::{Key, Oncely, Scope};
//! use oncely_kafka::KafkaSource;
//!
//! let store = Arc::new(oncely_memory::MemoryStore::default()); // a durable store in production
//! let handler = OncelyHandler::new(Oncely::new(store), Scope::new("billing")?, |key: Key, _: Message| async move {
//!     println!("charging order {key}");
//!     Ok::<_, std::io::Error>(Vec::new())
//! });
//!
//! let source = KafkaSource::connect("kafka://127.0.0.1:9092/orders?group=billing").await?;
//! let consumer = Consumer::new(handler, "/orderId".parse()?).concurrency(8);
//! let report = consumer.run(source, async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! println!("{report:?}");
//! # Ok(()) }
//! ```
//!
//! ## Publishing: the outbox relay
//!
//! [`KafkaPublisher`] is the relay's Kafka side (`oncely relay --to kafka://HOST/TOPIC`): the
//! idempotent producer with acks from all in-sync replicas, the row's aggregate as the Kafka key
//! (so one aggregate's messages share a partition and keep their order), and the row's stable id
//! in the [`MESSAGE_ID_HEADER`] header.

#![warn(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use oncely_core::async_trait;
use oncely_core::consumer::{
    BrokerError, DeadLetter, Delivery, Message, OffsetStore, Position, Source,
};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Message as _, Offset, TopicPartitionList};
use tokio::sync::mpsc as async_mpsc;

mod error;
mod fresh;
mod options;
mod partitions;
mod publisher;

pub use error::Error;
pub use fresh::{FreshDestination, FreshOptions, fresh_destination};
pub use options::{
    DEFAULT_COMMIT_INTERVAL, DEFAULT_PORT, DEFAULT_REVOKE_WAIT, DEFAULT_SESSION_TIMEOUT,
    KafkaOptions,
};
pub use publisher::KafkaPublisher;
pub use rdkafka;

use partitions::{Handout, Partitions, Take};

/// The broker's name in [`BrokerError`]s.
pub const BROKER: &str = "kafka";

/// The header carrying a message's stable id: the outbox relay sets it, and a consumed
/// message's [`message_id`](Message::message_id) is read from it.
pub const MESSAGE_ID_HEADER: &str = "Oncely-Message-Id";

/// How long a metadata or admin request may take while setting up.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a dead-letter produce may wait in the producer's queue.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the poll thread blocks in one poll.
const POLL: Duration = Duration::from_millis(50);

/// A consumer group member reading one topic, as a [`Source`] for the runner. See the
/// [crate docs](crate) for what it does with each settlement.
///
/// Dropping it commits what was settled and leaves the group (waiting up to a few seconds).
pub struct KafkaSource {
    shared: Arc<Shared>,
    errors: async_mpsc::UnboundedReceiver<BrokerError>,
    poller: Option<Poller>,
}

struct Poller {
    stop: Arc<AtomicBool>,
    done: mpsc::Receiver<()>,
}

/// What the poll thread and the deliveries share.
struct Shared {
    partitions: Partitions,
    producer: FutureProducer,
    options: KafkaOptions,
    dead_letter_topic: String,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

/// A librdkafka configuration with the bootstrap brokers (`host:port[,host:port...]`) and
/// librdkafka's own log cut to errors: the start of every client here, and of your own
/// producers, consumers or admin clients beside a source.
///
/// ```
/// let config = oncely_kafka::client_config("127.0.0.1:9092");
/// assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:9092"));
/// ```
pub fn client_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        // librdkafka logs through the `log` crate; oncely logs through tracing.
        .set("log_level", "3");
    config
}

/// The idempotent producer: acks from all in-sync replicas, no duplicates from its own retries,
/// order kept per partition.
pub(crate) fn idempotent_producer(brokers: &str) -> Result<FutureProducer, Error> {
    client_config(brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .map_err(|e| Error::Client(e.into()))
}

impl KafkaSource {
    /// Joins the group as `url` says (see the [crate docs](crate)), offsets committed to Kafka.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url.parse()?).await
    }

    /// Joins the group as `options` say, offsets committed to Kafka.
    pub async fn connect_with(options: KafkaOptions) -> Result<Self, Error> {
        Self::start(options, None).await
    }

    /// Joins the group as `options` say, each assigned partition started at the offset
    /// `offsets` has stored for it (your handler saves it with its effect; see the
    /// [crate docs](crate)). A partition with nothing stored starts at the group's committed
    /// offset, or at the beginning.
    pub async fn offsets(
        options: KafkaOptions,
        offsets: Arc<dyn OffsetStore>,
    ) -> Result<Self, Error> {
        Self::start(options, Some(offsets)).await
    }

    async fn start(
        options: KafkaOptions,
        offsets: Option<Arc<dyn OffsetStore>>,
    ) -> Result<Self, Error> {
        let dead_letter_topic = options.dead_letter_topic_or_default();
        if dead_letter_topic == options.topic {
            return Err(Error::DeadLettersLoop {
                topic: dead_letter_topic,
            });
        }
        ensure_topic(&options.brokers, &options.topic, None).await?;
        let create = options.create_dead_letter_topic.then_some(1);
        ensure_topic(&options.brokers, &dead_letter_topic, create).await?;
        let producer = idempotent_producer(&options.brokers)?;
        let shared = Arc::new(Shared {
            partitions: Partitions::default(),
            producer,
            options,
            dead_letter_topic,
        });
        let context = GroupContext {
            shared: shared.clone(),
            offsets,
            runtime: tokio::runtime::Handle::current(),
        };
        let o = &shared.options;
        let consumer: BaseConsumer<GroupContext> = client_config(&o.brokers)
            .set("group.id", &o.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set(
                "session.timeout.ms",
                o.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (o.session_timeout.as_millis() / 3).max(1).to_string(),
            )
            .create_with_context(context)
            .map_err(|e| Error::Client(e.into()))?;
        consumer
            .subscribe(&[&o.topic])
            .map_err(|e| Error::Client(e.into()))?;
        let (errors_tx, errors) = async_mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = mpsc::channel();
        let thread_stop = stop.clone();
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("oncely-kafka-{}", o.topic))
            .spawn(move || {
                poll(&consumer, &thread_shared, &thread_stop, &errors_tx);
                // Leaving the group revokes what is held: the context commits it first.
                drop(consumer);
                thread_shared.partitions.close();
                let _ = done_tx.send(());
            })
            .map_err(|e| Error::Client(e.into()))?;
        Ok(KafkaSource {
            shared,
            errors,
            poller: Some(Poller { stop, done }),
        })
    }

    /// The options it was started with.
    pub fn options(&self) -> &KafkaOptions {
        &self.shared.options
    }

    /// The dead-letter topic.
    pub fn dead_letter_topic(&self) -> &str {
        &self.shared.dead_letter_topic
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        if let Some(poller) = self.poller.take() {
            poller.stop.store(true, Ordering::SeqCst);
            // Bounded: a broker that is gone must not hang the caller.
            let _ = poller.done.recv_timeout(Duration::from_secs(10));
        }
    }
}

/// The poll thread: fetches into the partitions, pauses and resumes them, commits.
fn poll(
    consumer: &BaseConsumer<GroupContext>,
    shared: &Shared,
    stop: &AtomicBool,
    errors: &async_mpsc::UnboundedSender<BrokerError>,
) {
    let topic = shared.options.topic.as_str();
    let mut last_commit = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        match consumer.poll(POLL) {
            None => {}
            Some(Ok(fetched)) => {
                let message = message_of(&fetched, &shared.options.group);
                let (partition, offset) = (fetched.partition(), fetched.offset());
                if shared.partitions.push(partition, offset, message)
                    && let Err(error) = consumer.pause(&one_partition(topic, partition))
                {
                    tracing::warn!(%error, partition, "could not pause a full partition");
                }
            }
            Some(Err(error)) => {
                tracing::warn!(%error, topic, "Kafka consumer error");
                if fatal(&error) {
                    let _ = errors.send(BrokerError::new(BROKER, "receive", error));
                }
            }
        }
        for p in shared.partitions.to_resume() {
            if let Err(error) = consumer.resume(&one_partition(topic, p)) {
                tracing::warn!(%error, partition = p, "could not resume a partition");
            }
        }
        if last_commit.elapsed() >= shared.options.commit_interval {
            commit(
                consumer,
                shared,
                shared.partitions.to_commit(),
                CommitMode::Async,
            );
            last_commit = Instant::now();
        }
    }
    commit(
        consumer,
        shared,
        shared.partitions.to_commit(),
        CommitMode::Sync,
    );
}

fn fatal(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Fatal
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
        )
    )
}

fn one_partition(topic: &str, partition: i32) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    tpl
}

/// Commits `offsets` (`(partition, next offset)`); a failed commit puts them back to be tried
/// again. An asynchronous commit's outcome arrives in [`GroupContext::commit_callback`].
fn commit<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    shared: &Shared,
    offsets: Vec<(i32, i64)>,
    mode: CommitMode,
) {
    if offsets.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for &(partition, offset) in &offsets {
        let _ = tpl.add_partition_offset(&shared.options.topic, partition, Offset::Offset(offset));
    }
    if let Err(error) = consumer.commit(&tpl, mode) {
        tracing::warn!(%error, ?offsets, "offset commit failed; tried again later");
        shared.partitions.uncommitted(&offsets);
    }
}

/// A fetched Kafka message as the runner sees it.
fn message_of(fetched: &impl rdkafka::Message, group: &str) -> Message {
    let payload = fetched.payload().map(<[u8]>::to_vec).unwrap_or_default();
    let mut message = Message::new(payload, fetched.topic()).with_position(Position {
        group: group.to_owned(),
        topic: fetched.topic().to_owned(),
        partition: fetched.partition(),
        offset: fetched.offset(),
    });
    if let Some(key) = fetched.key() {
        message = message.with_ordering_key(String::from_utf8_lossy(key));
    }
    if let Some(headers) = fetched.headers() {
        for header in headers.iter() {
            let value = String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned();
            if header.key.eq_ignore_ascii_case(MESSAGE_ID_HEADER) {
                message = message.with_message_id(value.clone());
            }
            message = message.with_header(header.key, value);
        }
    }
    message
}

/// `message`'s headers, then `extra`, as Kafka headers.
pub(crate) fn kafka_headers<'a>(
    message: &'a Message,
    extra: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> OwnedHeaders {
    let all = message
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .chain(extra);
    let mut headers = OwnedHeaders::new();
    for (key, value) in all {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    headers
}

/// Creates `topic` on `brokers` (`host:port[,host:port...]`) with `partitions` partitions and
/// the brokers' default replication, unless it exists. Kafka keeps one key's messages in one
/// partition; partitions are what consumers of one group share out.
///
/// ```no_run
/// # async fn example() -> Result<(), oncely_kafka::Error> {
/// oncely_kafka::create_topic("127.0.0.1:9092", "orders", 3).await?;
/// # Ok(()) }
/// ```
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<(), Error> {
    ensure_topic(brokers, topic, Some(partitions)).await
}

/// Checks that `topic` exists; creates it with `create` partitions (and the broker's
/// replication) if missing and asked to.
pub(crate) async fn ensure_topic(
    brokers: &str,
    topic: &str,
    create: Option<i32>,
) -> Result<(), Error> {
    if topic_exists(brokers, topic).await? {
        return Ok(());
    }
    let Some(partitions) = create else {
        return Err(Error::NoTopic {
            topic: topic.to_owned(),
            brokers: brokers.to_owned(),
        });
    };
    let admin: AdminClient<DefaultClientContext> = client_config(brokers)
        .create()
        .map_err(|e| Error::Client(e.into()))?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    let options = AdminOptions::new().operation_timeout(Some(SETUP_TIMEOUT));
    let results = admin
        .create_topics([&new], &options)
        .await
        .map_err(|e| Error::Client(e.into()))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(Error::Client(
                    format!("creating topic {name}: {code}").into(),
                ));
            }
        }
    }
    Ok(())
}

pub(crate) async fn topic_exists(brokers: &str, topic: &str) -> Result<bool, Error> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    // Metadata requests block: off the runtime.
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client_config(&brokers)
            .set("allow.auto.create.topics", "false")
            .create()
            .map_err(|e| Error::Client(e.into()))?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), SETUP_TIMEOUT)
            .map_err(|e| Error::Unreachable {
                brokers: brokers.clone(),
                source: e.into(),
            })?;
        Ok(metadata
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
    })
    .await
    .map_err(|e| Error::Client(e.into()))?
}

/// The group member's callbacks, run on the poll thread.
struct GroupContext {
    shared: Arc<Shared>,
    offsets: Option<Arc<dyn OffsetStore>>,
    runtime: tokio::runtime::Handle,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let topic = self.shared.options.topic.clone();
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let outcome = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.start_at_stored_offsets(tpl, &topic);
                self.shared.partitions.assign(&partitions);
                tracing::debug!(?partitions, "partitions assigned");
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                // librdkafka keeps a partition paused by the application across a revocation
                // and a new assignment; its queue here starts empty and unpaused.
                assigned.and_then(|()| consumer.resume(tpl))
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked = self
                    .shared
                    .partitions
                    .revoke(&partitions, self.shared.options.revoke_wait);
                if !revoked.released.is_empty() {
                    tracing::warn!(released = ?revoked.released,
                        "messages still in flight when their partitions were revoked; \
                         their next owner reads them again");
                }
                if !consumer.assignment_lost() {
                    commit(consumer, &self.shared, revoked.to_commit, CommitMode::Sync);
                }
                tracing::debug!(?partitions, "partitions revoked");
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed; giving up the assignment");
                let held = self.shared.partitions.held();
                self.shared.partitions.revoke(&held, Duration::ZERO);
                consumer.unassign()
            }
        };
        if let Err(error) = outcome {
            tracing::error!(%error, "applying a rebalance failed");
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        if let Err(error) = result {
            let failed: Vec<(i32, i64)> = offsets
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect();
            tracing::warn!(%error, ?failed, "offset commit failed; tried again later");
            self.shared.partitions.uncommitted(&failed);
        }
    }
}

impl GroupContext {
    /// Sets each assigned partition's start to the offset the store holds for it, if any.
    fn start_at_stored_offsets(&self, tpl: &mut TopicPartitionList, topic: &str) {
        let Some(store) = self.offsets.clone() else {
            return;
        };
        let (group, owned_topic) = (self.shared.options.group.clone(), topic.to_owned());
        // Run on the caller's runtime; this thread waits (it is not one of the runtime's).
        let (tx, rx) = mpsc::channel();
        self.runtime.spawn(async move {
            let _ = tx.send(store.load(&group, &owned_topic).await);
        });
        match rx.recv_timeout(SETUP_TIMEOUT) {
            Ok(Ok(stored)) => {
                for (partition, offset) in stored {
                    if tpl.find_partition(topic, partition).is_some()
                        && let Err(error) =
                            tpl.set_partition_offset(topic, partition, Offset::Offset(offset))
                    {
                        tracing::warn!(%error, partition, "could not start at the stored offset");
                    }
                }
            }
            Ok(Err(error)) => tracing::error!(%error,
                "reading the stored offsets failed; starting at the group's committed offsets \
                 (the dedup records answer what comes again)"),
            Err(_) => tracing::error!(
                "reading the stored offsets timed out; starting at the group's committed offsets"
            ),
        }
    }
}

#[async_trait]
impl Source for KafkaSource {
    type Delivery = KafkaDelivery;

    async fn next(&mut self) -> Option<Result<KafkaDelivery, BrokerError>> {
        loop {
            if let Ok(error) = self.errors.try_recv() {
                return Some(Err(error));
            }
            let ready = self.shared.partitions.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            let wake = match self.shared.partitions.take(Instant::now()) {
                Take::Ready(handout) => {
                    return Some(Ok(KafkaDelivery {
                        shared: self.shared.clone(),
                        handout,
                    }));
                }
                Take::Closed => return None,
                Take::Wait(wake) => wake,
            };
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = ready => {}
                _ = sleep => {}
                error = self.errors.recv() => if let Some(error) = error {
                    return Some(Err(error));
                },
            }
        }
    }
}

/// One message from a [`KafkaSource`] and how to settle it.
pub struct KafkaDelivery {
    shared: Arc<Shared>,
    handout: Handout,
}

impl std::fmt::Debug for KafkaDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaDelivery")
            .field("partition", &self.handout.partition)
            .field("offset", &self.handout.offset)
            .finish_non_exhaustive()
    }
}

impl KafkaDelivery {
    /// The partition it came from.
    pub fn partition(&self) -> i32 {
        self.handout.partition
    }

    /// Its offset in the partition.
    pub fn offset(&self) -> i64 {
        self.handout.offset
    }
}

#[async_trait]
impl Delivery for KafkaDelivery {
    fn message(&self) -> &Message {
        &self.handout.message
    }

    async fn ack(&self) -> Result<(), BrokerError> {
        let h = &self.handout;
        if self
            .shared
            .partitions
            .ack(h.partition, h.generation, h.offset)
        {
            Ok(())
        } else {
            Err(BrokerError::new(
                BROKER,
                format!("commit offset {} of partition {}", h.offset, h.partition),
                "the partition was revoked before the message settled; its next owner reads it \
                 again",
            ))
        }
    }

    async fn redeliver(&self, after: Duration) -> Result<(), BrokerError> {
        // A partition revoked meanwhile: its next owner delivers the message again anyway.
        self.shared.partitions.give_back(&self.handout, after);
        Ok(())
    }

    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), BrokerError> {
        let message = &self.handout.message;
        let extra = letter.headers();
        let headers = kafka_headers(message, extra.iter().map(|(n, v)| (*n, v.as_str())));
        let topic = &self.shared.dead_letter_topic;
        let mut record = FutureRecord::<str, [u8]>::to(topic)
            .payload(message.payload())
            .headers(headers);
        if let Some(key) = message.ordering_key() {
            record = record.key(key);
        }
        self.shared
            .producer
            .send(record, PRODUCE_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|(error, _)| BrokerError::new(BROKER, format!("produce to {topic}"), error))
    }
}
