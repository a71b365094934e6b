//! The broker behaviour suite and the kill -9 proof against the Kafka-protocol broker at
//! `ONCELY_KAFKA_BROKERS` (`127.0.0.1:9092` by default; `.ci/run` starts tansu there).
//!
//! Each test gets its own topic of three partitions, its dead-letter topic and its consumer
//! group, named `oncely-suite-<pid>-<time>-<n>-<test>`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use oncely_broker_suite::{Broker, Channel};
use oncely_core::consumer::Message;
use oncely_core::{BoxError, async_trait};
use oncely_kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use oncely_kafka::rdkafka::client::DefaultClientContext;
use oncely_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use oncely_kafka::rdkafka::message::{Header, Headers, OwnedHeaders};
use oncely_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use oncely_kafka::rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use oncely_kafka::{KafkaOptions, KafkaSource, MESSAGE_ID_HEADER};
use oncely_postgres::offsets::PostgresOffsets;

const PARTITIONS: i32 = 3;
const TIMEOUT: Duration = Duration::from_secs(10);

struct Kafka {
    brokers: String,
    run: String,
    made: AtomicUsize,
}

struct Topic {
    brokers: String,
    topic: String,
    producer: FutureProducer,
}

fn config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("log_level", "3");
    config
}

impl Kafka {
    async fn connect() -> Self {
        let brokers =
            std::env::var("ONCELY_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        Kafka {
            brokers,
            run: format!("{}-{millis}", std::process::id()),
            made: AtomicUsize::new(0),
        }
    }
}

#[async_trait]
impl Broker for Kafka {
    type Channel = Topic;

    async fn channel(&self, test: &str) -> Result<Topic, BoxError> {
        let n = self.made.fetch_add(1, Ordering::SeqCst);
        let topic = format!("oncely-suite-{}-{n}-{test}", self.run);
        let admin: AdminClient<DefaultClientContext> = config(&self.brokers).create()?;
        let new = NewTopic::new(&topic, PARTITIONS, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
        for result in admin.create_topics([&new], &options).await.map_err(|e| {
            format!(
                "no Kafka broker at {}: {e} (start tansu, or set ONCELY_KAFKA_BROKERS)",
                self.brokers
            )
        })? {
            result.map_err(|(name, code)| format!("creating topic {name}: {code}"))?;
        }
        let producer = config(&self.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()?;
        Ok(Topic {
            brokers: self.brokers.clone(),
            topic,
            producer,
        })
    }
}

impl Topic {
    fn options(&self) -> KafkaOptions {
        KafkaOptions::new(&self.brokers, &self.topic, &self.topic)
            .session_timeout(Duration::from_secs(6))
            .commit_interval(Duration::from_millis(50))
    }

    fn dead_letter_topic(&self) -> String {
        self.options().dead_letter_topic_or_default()
    }

    /// `(partition, low, high)` of every partition of `topic`.
    fn watermarks(consumer: &BaseConsumer, topic: &str) -> Result<Vec<(i32, i64, i64)>, BoxError> {
        let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
        let mut marks = Vec::new();
        for partition in metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions())
        {
            let (low, high) = consumer.fetch_watermarks(topic, partition.id(), TIMEOUT)?;
            marks.push((partition.id(), low, high));
        }
        Ok(marks)
    }
}

#[async_trait]
impl Channel for Topic {
    type Source = KafkaSource;

    async fn publish(&self, message: &Message) -> Result<(), BoxError> {
        let mut headers = OwnedHeaders::new();
        for (key, value) in message.headers() {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        if let Some(id) = message.message_id() {
            headers = headers.insert(Header {
                key: MESSAGE_ID_HEADER,
                value: Some(id),
            });
        }
        let mut record = FutureRecord::<str, [u8]>::to(&self.topic)
            .payload(message.payload())
            .headers(headers);
        if let Some(key) = message.ordering_key() {
            record = record.key(key);
        }
        self.producer
            .send(record, TIMEOUT)
            .await
            .map_err(|(e, _)| e)?;
        Ok(())
    }

    async fn consumer(&self) -> Result<KafkaSource, BoxError> {
        Ok(KafkaSource::connect_with(self.options()).await?)
    }

    async fn dead_letters(&self) -> Result<Vec<Message>, BoxError> {
        let (brokers, topic) = (self.brokers.clone(), self.dead_letter_topic());
        tokio::task::spawn_blocking(move || read_all(&brokers, &topic)).await?
    }

    async fn unsettled(&self) -> Result<u64, BoxError> {
        let (brokers, topic) = (self.brokers.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = config(&brokers).set("group.id", &topic).create()?;
            let marks = Topic::watermarks(&consumer, &topic)?;
            let mut tpl = TopicPartitionList::new();
            for (partition, _, _) in &marks {
                tpl.add_partition(&topic, *partition);
            }
            let committed = consumer.committed_offsets(tpl, TIMEOUT)?;
            let mut left = 0;
            for (partition, low, high) in marks {
                let at = match committed
                    .find_partition(&topic, partition)
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(o)) => o,
                    _ => low,
                };
                left += (high - at).max(0) as u64;
            }
            Ok(left)
        })
        .await?
    }

    fn source_url(&self) -> String {
        format!(
            "kafka://{}/{}?group={}&session_timeout=6s&commit_interval=50ms",
            self.brokers, self.topic, self.topic
        )
    }
}

/// Every message of `topic`, read from the beginning to the end as it is now.
fn read_all(brokers: &str, topic: &str) -> Result<Vec<Message>, BoxError> {
    let consumer: BaseConsumer = config(brokers)
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .create()?;
    let marks = Topic::watermarks(&consumer, topic)?;
    let mut tpl = TopicPartitionList::new();
    let mut left = 0;
    for (partition, low, high) in &marks {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*low))?;
        left += high - low;
    }
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut messages = Vec::new();
    while left > 0 {
        if std::time::Instant::now() > deadline {
            return Err(format!("{left} messages of {topic} not read in {TIMEOUT:?}").into());
        }
        let Some(read) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let read = read?;
        let mut message = Message::new(read.payload().unwrap_or_default().to_vec(), topic);
        if let Some(headers) = read.headers() {
            for header in headers.iter() {
                let value = String::from_utf8_lossy(header.value.unwrap_or_default());
                message = message.with_header(header.key, value);
            }
        }
        messages.push(message);
        left -= 1;
    }
    Ok(messages)
}

/// A consumer of `url`. The kill -9 proof's consumers keep their offsets in the proof's
/// PostgreSQL database, saved with each order by the inventory example, and start each
/// assigned partition there: the "offsets with the effect" mode.
async fn open(url: String) -> Result<KafkaSource, BoxError> {
    let options: KafkaOptions = url.parse()?;
    match std::env::var(oncely_broker_suite::proof::CHILD_POSTGRES_ENV) {
        Ok(postgres) => {
            let offsets = PostgresOffsets::connect(&postgres).await?;
            Ok(KafkaSource::offsets(options, Arc::new(offsets)).await?)
        }
        Err(_) => Ok(KafkaSource::connect_with(options).await?),
    }
}

fn main() {
    oncely_broker_suite::main("kafka", || async { Kafka::connect().await }, open);
}
