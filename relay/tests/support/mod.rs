//! What the relay's test binaries share (beyond a fresh PostgreSQL schema or MySQL database
//! per test, from `oncely_conformance::servers`): a fresh destination on each real broker (a JetStream stream, a RabbitMQ queue, a Kafka topic of
//! several partitions, an SQS queue, FIFO or standard), read back whole; the service side of each database ([`Service`]), and
//! the scenarios every outbox passes ([`scenarios`]).

#![allow(dead_code)] // each test binary uses part of it

pub mod scenarios;
mod service;

pub use service::Service;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use oncely_core::consumer::{Message, Position};
use oncely_kafka::rdkafka::admin::{AdminClient, AdminOptions};
use oncely_kafka::rdkafka::client::DefaultClientContext;
use oncely_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use oncely_kafka::rdkafka::message::Headers;
use oncely_kafka::rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use oncely_kafka::{KafkaPublisher, MESSAGE_ID_HEADER};
use oncely_nats::{NatsPublisher, async_nats};
use oncely_rabbitmq::lapin::options::{BasicGetOptions, QueueDeleteOptions};
use oncely_rabbitmq::lapin::{Connection, ConnectionProperties};
use oncely_rabbitmq::{AmqpPublisher, message};
use oncely_sqs::{MESSAGE_ID_ATTRIBUTE, SqsOptions, SqsPublisher};

pub fn nats_server() -> String {
    std::env::var("ONCELY_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

pub fn amqp_server() -> String {
    std::env::var("ONCELY_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The Kafka-protocol broker's bootstrap address (`.ci/run` starts tansu there).
pub fn kafka_brokers() -> String {
    std::env::var("ONCELY_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// The SQS-compatible server (`.ci/run` starts moto there).
pub fn sqs_server() -> String {
    std::env::var("ONCELY_SQS_URL").unwrap_or_else(|_| "sqs+http://127.0.0.1:5999".to_owned())
}

async fn sqs_client() -> aws_sdk_sqs::Client {
    let options = SqsOptions::parse_queue_optional(&sqs_server()).unwrap();
    oncely_sqs::client(&options).await.unwrap()
}

/// The pseudo-header [`Destination::read_all`] puts an SQS message's `MessageDeduplicationId`
/// in, for [`Destination::check_placement`].
const SQS_DEDUPLICATION_ID: &str = "Test-Sqs-Deduplication-Id";

/// The partitions of each test's Kafka topic: several, so that keying by aggregate matters.
pub const KAFKA_PARTITIONS: i32 = 3;

/// How long a Kafka admin or metadata request may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// Reading a topic back ends when nothing more came for this long (see [`read_topic`]).
const KAFKA_QUIET: Duration = Duration::from_secs(1);

fn kafka_config() -> ClientConfig {
    oncely_kafka::client_config(&kafka_brokers())
}

/// A destination on a real broker, fresh for one test.
pub enum Destination {
    /// A JetStream stream capturing one subject.
    Nats {
        context: jetstream::Context,
        stream: String,
        subject: String,
    },
    /// A durable queue, published to through the default exchange.
    Rabbit {
        connection: Connection,
        queue: String,
    },
    /// A topic of [`KAFKA_PARTITIONS`] partitions.
    Kafka { topic: String },
    /// An SQS queue: FIFO (its name ends in `.fifo`) or standard, emptied as messages arrive
    /// (see [`drain_queue`]).
    Sqs {
        client: aws_sdk_sqs::Client,
        queue: String,
        queue_url: String,
        /// Set when the test reads: the drainer ends once a receive started after it is empty.
        finish: Arc<AtomicBool>,
        /// What the drainer read, once it ends.
        drainer: std::sync::Mutex<Option<tokio::task::JoinHandle<Vec<Message>>>>,
    },
}

impl Destination {
    /// A new stream capturing one subject ([`oncely_nats::fresh_destination`], named
    /// `ONCELY_RELAY_<pid>-<millis>-<n>-<name>`).
    pub async fn nats(name: &str) -> Self {
        let options = oncely_nats::FreshOptions::new("ONCELY_RELAY_", name);
        let fresh = oncely_nats::fresh_destination(&nats_server(), &options)
            .await
            .unwrap_or_else(|e| panic!("NATS at {}: {e} (nats-server -js)", nats_server()));
        let client = async_nats::connect(nats_server()).await.unwrap();
        Destination::Nats {
            context: jetstream::new(client),
            stream: fresh.stream,
            subject: fresh.subject,
        }
    }

    /// A new durable queue ([`oncely_rabbitmq::fresh_destination`], named
    /// `oncely.relay.<pid>-<millis>-<n>-<name>`), deleted by the server 10 minutes after its
    /// last use.
    pub async fn rabbit(name: &str) -> Self {
        let options = oncely_rabbitmq::FreshOptions::new("oncely.relay.", name);
        let queue = oncely_rabbitmq::fresh_destination(&amqp_server(), &options)
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ at {}: {e}", amqp_server()))
            .queue;
        let connection = Connection::connect(&amqp_server(), ConnectionProperties::default())
            .await
            .unwrap();
        Destination::Rabbit { connection, queue }
    }

    /// A new topic of [`KAFKA_PARTITIONS`] partitions ([`oncely_kafka::fresh_destination`],
    /// named `oncely.relay.<pid>-<millis>-<n>-<name>`; topics are not created by producing to
    /// them). The time in the name: a relay left over from an earlier run with this pid can
    /// never reach it.
    pub async fn kafka(name: &str) -> Self {
        let options =
            oncely_kafka::FreshOptions::new("oncely.relay.", name).partitions(KAFKA_PARTITIONS);
        let topic = oncely_kafka::fresh_destination(&kafka_brokers(), &options)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "Kafka at {}: {e} (start tansu, or set ONCELY_KAFKA_BROKERS)",
                    kafka_brokers()
                )
            })
            .topic;
        Destination::Kafka { topic }
    }

    /// A new FIFO queue ([`oncely_sqs::fresh_destination`], named
    /// `oncely-relay-<pid>-<millis>-<n>-<name>.fifo`; no content-based dedup: the relay's dedup
    /// id is the row's id). The time in the name: a relay left over from an earlier run with
    /// this pid can never reach it.
    pub async fn sqs_fifo(name: &str) -> Self {
        Self::sqs(oncely_sqs::FreshOptions::new("oncely-relay-", name).fifo()).await
    }

    /// A new standard queue `oncely-relay-<pid>-<millis>-<n>-<name>`.
    pub async fn sqs_standard(name: &str) -> Self {
        Self::sqs(oncely_sqs::FreshOptions::new("oncely-relay-", name)).await
    }

    async fn sqs(options: oncely_sqs::FreshOptions) -> Self {
        let fresh = oncely_sqs::fresh_destination(&sqs_server(), &options)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "SQS at {}: {e} (start moto_server, or set ONCELY_SQS_URL)",
                    sqs_server()
                )
            });
        let client = sqs_client().await;
        let finish = Arc::new(AtomicBool::new(false));
        let drainer = tokio::spawn(drain_queue(
            client.clone(),
            fresh.queue.clone(),
            fresh.queue_url.clone(),
            finish.clone(),
        ));
        Destination::Sqs {
            client,
            queue: fresh.queue,
            queue_url: fresh.queue_url,
            finish,
            drainer: std::sync::Mutex::new(Some(drainer)),
        }
    }

    /// The `--to` URL of `oncely relay` for this destination.
    pub fn url(&self) -> String {
        match self {
            Destination::Nats { subject, .. } => format!("{}/{subject}", nats_server()),
            Destination::Rabbit { queue, .. } => format!("{}/{queue}", amqp_server()),
            Destination::Kafka { topic } => format!("kafka://{}/{topic}", kafka_brokers()),
            Destination::Sqs { queue, .. } => format!("{}/{queue}", sqs_server()),
        }
    }

    /// A publisher to it, boxed so tests run the same code on both brokers.
    pub async fn publisher(&self) -> Box<dyn oncely_core::outbox::Publisher> {
        match self {
            Destination::Nats { .. } => {
                Box::new(NatsPublisher::connect(&self.url()).await.unwrap())
            }
            Destination::Rabbit { .. } => {
                Box::new(AmqpPublisher::connect(&self.url()).await.unwrap())
            }
            Destination::Kafka { .. } => {
                Box::new(KafkaPublisher::connect(&self.url()).await.unwrap())
            }
            Destination::Sqs { .. } => Box::new(SqsPublisher::connect(&self.url()).await.unwrap()),
        }
    }

    /// Every message it holds, in the order the broker stored them (a queue is emptied; a
    /// topic is read partition after partition, each in offset order; an SQS queue in the order
    /// its receives answered, each message group in order on a FIFO queue).
    pub async fn read_all(&self) -> Vec<Message> {
        match self {
            Destination::Nats {
                context, stream, ..
            } => {
                let stream = context.get_stream(stream).await.unwrap();
                let state = stream.get_info().await.unwrap().state;
                let mut messages = Vec::new();
                if state.messages == 0 {
                    return messages;
                }
                for sequence in state.first_sequence..=state.last_sequence {
                    let stored = stream.get_raw_message(sequence).await.unwrap();
                    let mut m = Message::new(stored.payload.to_vec(), stored.subject.as_str());
                    for (name, values) in stored.headers.iter() {
                        for value in values {
                            m = m.with_header(AsRef::<str>::as_ref(name), value.as_str());
                        }
                    }
                    if let Some(id) = stored.headers.get("Nats-Msg-Id") {
                        m = m.with_message_id(id.as_str());
                    }
                    messages.push(m);
                }
                messages
            }
            Destination::Rabbit { connection, queue } => {
                let channel = connection.create_channel().await.unwrap();
                let mut messages = Vec::new();
                while let Some(got) = channel
                    .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
                    .await
                    .unwrap()
                {
                    let d = &got.delivery;
                    messages.push(message::from_amqp(&d.properties, &d.data, queue));
                }
                messages
            }
            Destination::Kafka { topic } => {
                let topic = topic.clone();
                tokio::task::spawn_blocking(move || read_topic(&topic))
                    .await
                    .unwrap()
            }
            Destination::Sqs {
                finish, drainer, ..
            } => {
                finish.store(true, Ordering::SeqCst);
                let drainer = drainer.lock().unwrap().take();
                drainer.expect("read once").await.unwrap()
            }
        }
    }

    /// What only this broker promises, checked on what [`read_all`](Self::read_all) answered.
    /// On Kafka: each record's key is its row's aggregate (the test's `Aggregate` header), and
    /// all records of one aggregate are in one partition (that they are in order there is
    /// [`check_delivery`]'s, as `read_all` keeps each partition's offset order). Answers the
    /// number of partitions holding records (1 on the other brokers, which check nothing).
    ///
    /// On an SQS FIFO queue: each message's group is its row's aggregate and its deduplication
    /// id its row's id; on a standard queue, no message has a group.
    pub fn check_placement(&self, messages: &[Message]) -> usize {
        if let Destination::Sqs { queue, .. } = self {
            for m in messages {
                if queue.ends_with(".fifo") {
                    let aggregate = m.header("Aggregate").expect("the test's Aggregate header");
                    assert_eq!(m.ordering_key(), Some(aggregate), "the group of {m:?}");
                    assert_eq!(m.header(SQS_DEDUPLICATION_ID), m.message_id(), "{m:?}");
                } else {
                    assert_eq!(m.ordering_key(), None, "no group on a standard queue");
                }
            }
            return 1;
        }
        let Destination::Kafka { topic } = self else {
            return 1;
        };
        let mut partition_of: HashMap<&str, i32> = HashMap::new();
        let mut used = HashSet::new();
        for m in messages {
            let aggregate = m.header("Aggregate").expect("the test's Aggregate header");
            assert_eq!(
                m.ordering_key(),
                Some(aggregate),
                "the Kafka key of {:?} is its row's aggregate",
                m.message_id()
            );
            let at = m.position().expect("a record's partition and offset");
            assert_eq!(&at.topic, topic);
            let first = *partition_of.entry(aggregate).or_insert(at.partition);
            assert_eq!(
                first, at.partition,
                "aggregate {aggregate} in partitions {first} and {}",
                at.partition
            );
            used.insert(at.partition);
        }
        used.len()
    }

    /// Removes what the test made.
    pub async fn remove(self) {
        match self {
            Destination::Nats {
                context, stream, ..
            } => {
                let _ = context.delete_stream(&stream).await;
            }
            Destination::Rabbit { connection, queue } => {
                let channel = connection.create_channel().await.unwrap();
                let _ = channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            Destination::Kafka { topic } => {
                let admin: AdminClient<DefaultClientContext> = kafka_config().create().unwrap();
                let options = AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT));
                let _ = admin.delete_topics(&[&topic], &options).await;
            }
            Destination::Sqs {
                client,
                queue_url,
                drainer,
                ..
            } => {
                if let Some(drainer) = drainer.into_inner().unwrap() {
                    drainer.abort();
                }
                let _ = client.delete_queue().queue_url(&queue_url).send().await;
            }
        }
    }
}

/// Every message of the SQS queue, taken for good as it arrives, from the queue's creation until
/// a receive started after `finish` was set answers nothing: received ten at a time (a long
/// visibility timeout: nothing comes back while this reads), each receive's messages deleted
/// before the next (on a FIFO queue a message group stays locked while one of its messages is
/// in flight). On a FIFO queue each group's messages come in order across receives. Its group
/// is a message's ordering key, its `Oncely-Message-Id` attribute its message id, its String
/// attributes its headers, and its deduplication id the [`SQS_DEDUPLICATION_ID`] header.
///
/// Why while the relays run, not once at the end: moto counts a queue's messages (each one's
/// visibility, from the clock) several times on every `SendMessage`, so sends slow down as the
/// queue fills (a FIFO queue of 1,000 messages: ~0.2 s a send). Moto's FIFO deduplication only
/// looks at messages still on the queue, so a row re-published after a kill arrives twice here,
/// as on the brokers that keep every copy.
async fn drain_queue(
    client: aws_sdk_sqs::Client,
    queue: String,
    queue_url: String,
    finish: Arc<AtomicBool>,
) -> Vec<Message> {
    use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};
    let (queue, queue_url) = (queue.as_str(), queue_url.as_str());
    let mut messages = Vec::new();
    loop {
        let last = finish.load(Ordering::SeqCst);
        let received = client
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .visibility_timeout(300)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap_or_else(|e| panic!("receiving from {queue}: {e:?}"))
            .messages
            .unwrap_or_default();
        if received.is_empty() {
            if last {
                return messages;
            }
            continue;
        }
        let mut receipts = Vec::new();
        for (n, got) in received.into_iter().enumerate() {
            let mut m = Message::new(got.body.clone().unwrap_or_default().into_bytes(), queue);
            let system = got.attributes.clone().unwrap_or_default();
            if let Some(group) = system.get(&MessageSystemAttributeName::MessageGroupId) {
                m = m.with_ordering_key(group.clone());
            }
            if let Some(dedup) = system.get(&MessageSystemAttributeName::MessageDeduplicationId) {
                m = m.with_header(SQS_DEDUPLICATION_ID, dedup.clone());
            }
            for (name, value) in got.message_attributes.clone().unwrap_or_default() {
                let Some(text) = value.string_value() else {
                    continue;
                };
                if name == MESSAGE_ID_ATTRIBUTE {
                    m = m.with_message_id(text);
                }
                m = m.with_header(name, text);
            }
            messages.push(m);
            receipts.push(
                DeleteMessageBatchRequestEntry::builder()
                    .id(n.to_string())
                    .receipt_handle(got.receipt_handle.unwrap_or_default())
                    .build()
                    .unwrap(),
            );
        }
        let deleted = client
            .delete_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(receipts))
            .send()
            .await
            .unwrap_or_else(|e| panic!("deleting from {queue}: {e:?}"));
        assert!(deleted.failed.is_empty(), "{:?}", deleted.failed);
    }
}

/// Every record of `topic`: each partition read from the beginning to its high watermark and
/// on until nothing more comes for [`KAFKA_QUIET`], then sorted partition after partition, each
/// in offset order. A record's Kafka key is its message's ordering key, its `Oncely-Message-Id`
/// header its message id, and its partition and offset its position.
///
/// Why on past the high watermark: tansu (0.6) answers a partition's high watermark as the base
/// offset of its last produce batch plus one, so the records after the first of a last batch of
/// several (the relay produces its aggregates side by side) lie beyond it. Everything was acked
/// before this reads, so a quiet spell means the end.
fn read_topic(topic: &str) -> Vec<Message> {
    let consumer: BaseConsumer = kafka_config()
        .set("group.id", format!("{topic}.reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), KAFKA_TIMEOUT).unwrap();
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    assert_eq!(
        partitions.len(),
        KAFKA_PARTITIONS as usize,
        "{topic}'s partitions"
    );
    // The offset each partition must at least be read up to (its high watermark).
    let mut short: HashMap<i32, i64> = HashMap::new();
    let mut highs: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for &partition in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, KAFKA_TIMEOUT)
            .unwrap();
        tpl.add_partition_offset(topic, partition, Offset::Offset(low))
            .unwrap();
        if high > low {
            short.insert(partition, high);
        }
        highs.insert(partition, high);
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + KAFKA_TIMEOUT * 3;
    let mut last_read = Instant::now();
    let mut messages = Vec::new();
    while !short.is_empty() || last_read.elapsed() < KAFKA_QUIET {
        assert!(
            Instant::now() < deadline,
            "{topic} not read to its end in {:?}: {short:?} left",
            KAFKA_TIMEOUT * 3
        );
        let Some(read) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let read = read.unwrap_or_else(|e| panic!("reading {topic}: {e}"));
        last_read = Instant::now();
        let (partition, offset) = (read.partition(), read.offset());
        if short
            .get(&partition)
            .is_some_and(|&high| offset + 1 >= high)
        {
            short.remove(&partition);
        }
        let mut m = Message::new(read.payload().unwrap_or_default().to_vec(), topic).with_position(
            Position {
                group: String::new(),
                topic: topic.to_owned(),
                partition,
                offset,
            },
        );
        if let Some(key) = read.key() {
            m = m.with_ordering_key(String::from_utf8_lossy(key));
        }
        if let Some(headers) = read.headers() {
            for header in headers.iter() {
                let value = String::from_utf8_lossy(header.value.unwrap_or_default());
                if header.key == MESSAGE_ID_HEADER {
                    m = m.with_message_id(value.clone());
                }
                m = m.with_header(header.key, value);
            }
        }
        messages.push(m);
    }
    let past = messages
        .iter()
        .filter(|m| {
            let at = m.position().unwrap();
            at.offset >= highs[&at.partition]
        })
        .count();
    if past > 0 {
        eprintln!("{topic}: {past} records read past the high watermarks the broker answered");
    }
    // Partition after partition, each in offset order: one aggregate's records (one
    // partition) in the order the broker stored them.
    messages.sort_by_key(|m| {
        let at = m.position().unwrap();
        (at.partition, at.offset)
    });
    messages
}

/// What the messages read back say, checked against the rows enqueued.
#[derive(Debug)]
pub struct Delivered {
    /// Messages read, duplicates included.
    pub total: usize,
    /// Distinct message ids.
    pub distinct: usize,
}

/// Checks `messages` against `expected` (aggregate -> message ids in enqueue order): every id
/// is there, nothing else is, and each aggregate's ids, duplicates removed by message id
/// (first copy kept), arrive in enqueue order.
pub fn check_delivery(messages: &[Message], expected: &BTreeMap<String, Vec<String>>) -> Delivered {
    let mut seen = HashSet::new();
    let mut arrived: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in messages {
        let id = m
            .message_id()
            .expect("every message carries its id")
            .to_owned();
        let aggregate = m
            .header("Aggregate")
            .expect("the test's Aggregate header")
            .to_owned();
        if seen.insert(id.clone()) {
            arrived.entry(aggregate).or_default().push(id);
        }
    }
    let want: usize = expected.values().map(Vec::len).sum();
    for (aggregate, ids) in expected {
        let got = arrived.get(aggregate).cloned().unwrap_or_default();
        if &got != ids {
            let missing: Vec<_> = ids.iter().filter(|id| !got.contains(id)).take(5).collect();
            panic!(
                "aggregate {aggregate}: {} of {} rows arrived, in {} order; missing e.g. {missing:?}; \
                 first arrived {:?}",
                got.len(),
                ids.len(),
                if missing.is_empty() {
                    "the wrong"
                } else {
                    "some"
                },
                &got[..got.len().min(8)],
            );
        }
    }
    assert_eq!(seen.len(), want, "nothing but the enqueued rows arrived");
    Delivered {
        total: messages.len(),
        distinct: seen.len(),
    }
}

/// Waits until `service`'s outbox has no unsent row, for at most `patience`.
pub async fn wait_all_sent(service: &dyn Service, patience: Duration) {
    let deadline = std::time::Instant::now() + patience;
    loop {
        let unsent = service.unsent().await;
        if unsent == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{unsent} rows still unsent after {patience:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
