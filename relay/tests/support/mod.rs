//! What the relay's test binaries share: a fresh PostgreSQL schema per test, and a fresh
//! destination on each real broker (a JetStream stream, a RabbitMQ queue, a Kafka topic of
//! several partitions), read back whole; the service side of each database ([`Service`]), and
//! the scenarios every outbox passes ([`scenarios`]).

#![allow(dead_code)] // each test binary uses part of it

pub mod scenarios;
mod service;

pub use service::Service;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use oncely_core::consumer::{Message, Position};
use oncely_kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use oncely_kafka::rdkafka::client::DefaultClientContext;
use oncely_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use oncely_kafka::rdkafka::message::Headers;
use oncely_kafka::rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use oncely_kafka::{KafkaPublisher, MESSAGE_ID_HEADER};
use oncely_nats::{NatsPublisher, async_nats};
use oncely_rabbitmq::lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use oncely_rabbitmq::lapin::types::{AMQPValue, FieldTable};
use oncely_rabbitmq::lapin::{Connection, ConnectionProperties};
use oncely_rabbitmq::{AmqpPublisher, message};
use sqlx::PgPool;

pub fn postgres_server() -> String {
    std::env::var("ONCELY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

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

/// The partitions of each test's Kafka topic: several, so that keying by aggregate matters.
pub const KAFKA_PARTITIONS: i32 = 3;

/// How long a Kafka admin or metadata request may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// Reading a topic back ends when nothing more came for this long (see [`read_topic`]).
const KAFKA_QUIET: Duration = Duration::from_secs(1);

fn kafka_config() -> ClientConfig {
    oncely_kafka::client_config(&kafka_brokers())
}

/// Drops and recreates `schema`; answers a URL whose connections work in it.
pub async fn fresh_schema(schema: &str) -> String {
    let admin = PgPool::connect(&postgres_server())
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {}: {e}", postgres_server()));
    let ddl = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE; CREATE SCHEMA \"{schema}\";");
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    format!("{}?options=-csearch_path%3D{schema}", postgres_server())
}

/// Drops `schema`.
pub async fn drop_schema(schema: &str) {
    let admin = PgPool::connect(&postgres_server()).await.unwrap();
    let ddl = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
}

fn mysql_server() -> String {
    std::env::var("ONCELY_TEST_MYSQL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned())
}

async fn mysql_ddl(ddl: &[String]) {
    use oncely_mysql::sqlx as my;
    let admin = my::MySqlPool::connect(&format!("{}/test", mysql_server()))
        .await
        .unwrap_or_else(|e| panic!("MariaDB at {}: {e}", mysql_server()));
    for statement in ddl {
        my::raw_sql(my::AssertSqlSafe(statement.clone()))
            .execute(&admin)
            .await
            .unwrap();
    }
    admin.close().await;
}

/// Drops and recreates the MySQL database `name`; answers its URL.
pub async fn fresh_mysql_database(name: &str) -> String {
    mysql_ddl(&[
        format!("DROP DATABASE IF EXISTS `{name}`"),
        format!("CREATE DATABASE `{name}`"),
    ])
    .await;
    format!("{}/{name}", mysql_server())
}

/// Drops the MySQL database `name`.
pub async fn drop_mysql_database(name: &str) {
    mysql_ddl(&[format!("DROP DATABASE IF EXISTS `{name}`")]).await;
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
}

impl Destination {
    /// A new stream `ONCELY_RELAY_<name>_<pid>` on subject `oncely.relay.<name>.<pid>`.
    pub async fn nats(name: &str) -> Self {
        let client = async_nats::connect(nats_server())
            .await
            .unwrap_or_else(|e| panic!("NATS at {}: {e} (nats-server -js)", nats_server()));
        let context = jetstream::new(client);
        let pid = std::process::id();
        let stream = format!("ONCELY_RELAY_{name}_{pid}");
        let subject = format!("oncely.relay.{name}.{pid}");
        let _ = context.delete_stream(&stream).await;
        context
            .create_stream(jetstream::stream::Config {
                name: stream.clone(),
                subjects: vec![subject.clone()],
                ..Default::default()
            })
            .await
            .unwrap();
        Destination::Nats {
            context,
            stream,
            subject,
        }
    }

    /// A new durable queue `oncely.relay.<name>.<pid>`, deleted by the server 10 minutes after
    /// its last use.
    pub async fn rabbit(name: &str) -> Self {
        let connection = Connection::connect(&amqp_server(), ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ at {}: {e}", amqp_server()));
        let queue = format!("oncely.relay.{name}.{}", std::process::id());
        let channel = connection.create_channel().await.unwrap();
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let mut arguments = FieldTable::default();
        arguments.insert("x-expires".into(), AMQPValue::LongInt(600_000));
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::durable(),
                arguments,
            )
            .await
            .unwrap();
        Destination::Rabbit { connection, queue }
    }

    /// A new topic `oncely.relay.<name>.<pid>.<millis>` of [`KAFKA_PARTITIONS`] partitions
    /// (topics are not created by producing to them). The time in the name: a relay left over
    /// from an earlier run with this pid can never reach it.
    pub async fn kafka(name: &str) -> Self {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let topic = format!("oncely.relay.{name}.{}.{millis}", std::process::id());
        let admin: AdminClient<DefaultClientContext> = kafka_config().create().unwrap();
        let new = NewTopic::new(&topic, KAFKA_PARTITIONS, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT));
        let results = admin
            .create_topics([&new], &options)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "Kafka at {}: {e} (start tansu, or set ONCELY_KAFKA_BROKERS)",
                    kafka_brokers()
                )
            });
        for result in results {
            result.unwrap_or_else(|(name, code)| panic!("creating topic {name}: {code}"));
        }
        Destination::Kafka { topic }
    }

    /// The `--to` URL of `oncely relay` for this destination.
    pub fn url(&self) -> String {
        match self {
            Destination::Nats { subject, .. } => format!("{}/{subject}", nats_server()),
            Destination::Rabbit { queue, .. } => format!("{}/{queue}", amqp_server()),
            Destination::Kafka { topic } => format!("kafka://{}/{topic}", kafka_brokers()),
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
        }
    }

    /// Every message it holds, in the order the broker stored them (a queue is emptied; a
    /// topic is read partition after partition, each in offset order).
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
        }
    }

    /// What only this broker promises, checked on what [`read_all`](Self::read_all) answered.
    /// On Kafka: each record's key is its row's aggregate (the test's `Aggregate` header), and
    /// all records of one aggregate are in one partition (that they are in order there is
    /// [`check_delivery`]'s, as `read_all` keeps each partition's offset order). Answers the
    /// number of partitions holding records (1 on the other brokers, which check nothing).
    pub fn check_placement(&self, messages: &[Message]) -> usize {
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
        }
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
