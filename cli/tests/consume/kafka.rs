//! From Kafka.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use oncely::consumer::{ATTEMPTS_HEADER, ERROR_HEADER, KEY_HEADER, Message, SOURCE_HEADER};
use oncely::kafka::MESSAGE_ID_HEADER;
use oncely::kafka::rdkafka::admin::{AdminClient, AdminOptions};
use oncely::kafka::rdkafka::client::DefaultClientContext;
use oncely::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use oncely::kafka::rdkafka::message::{Header, Headers, OwnedHeaders};
use oncely::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use oncely::kafka::rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};

use oncely::kafka::{FreshOptions, fresh_destination};

fn kafka_config() -> ClientConfig {
    oncely::kafka::client_config(&kafka_brokers())
}

use crate::handler::Handler;
use crate::process::{
    assert_each_key_posted_once, assert_summary_and_exit_0, runtime, spawn_consume, terminate,
    wait_for,
};
use crate::{FAILING, kafka_brokers, order};

const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh topic of three partitions, named after this process, a counter and the time (topics
/// outlive a run: a name is never reused); deleted, with its dead-letter topic, at the end.
struct Kafka {
    topic: String,
    producer: FutureProducer,
    /// Per partition, the offset after the last record produced to it.
    ends: Mutex<HashMap<i32, i64>>,
}

impl Kafka {
    async fn new() -> Kafka {
        let options = FreshOptions::new("oncely.cli.consume.", "orders").partitions(3);
        let topic = fresh_destination(&kafka_brokers(), &options)
            .await
            .expect("Kafka at ONCELY_KAFKA_BROKERS (start tansu)")
            .topic;
        let producer = kafka_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()
            .unwrap();
        Kafka {
            topic,
            producer,
            ends: Mutex::new(HashMap::new()),
        }
    }

    /// The `--from` URL for consumer group `group` (offsets committed every 50 ms).
    fn url(&self, group: &str) -> String {
        format!(
            "kafka://{}/{}?group={group}&commit_interval=50ms",
            kafka_brokers(),
            self.topic
        )
    }

    fn dead_letter_topic(&self) -> String {
        format!("{}.dlq", self.topic)
    }

    /// Produces `payload` with Kafka key `key` (one key, one partition) and `message_id` in the
    /// Oncely-Message-Id header, as the relay does.
    async fn publish(&self, key: &str, message_id: &str, payload: &[u8]) {
        let headers = OwnedHeaders::new().insert(Header {
            key: MESSAGE_ID_HEADER,
            value: Some(message_id),
        });
        let record = FutureRecord::to(&self.topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        let (partition, offset) = self
            .producer
            .send(record, KAFKA_TIMEOUT)
            .await
            .map(|d| (d.partition, d.offset))
            .map_err(|(e, _)| e)
            .unwrap();
        let mut ends = self.ends.lock().unwrap();
        let end = ends.entry(partition).or_default();
        *end = (*end).max(offset + 1);
    }

    /// True once `group` has committed every record produced (blocking). From the records'
    /// own offsets, not the high watermarks: tansu's can lag (see [`read_kafka_topic`]).
    fn settled(&self, group: &str) -> bool {
        let consumer: BaseConsumer = kafka_config().set("group.id", group).create().unwrap();
        let ends = self.ends.lock().unwrap().clone();
        let mut tpl = TopicPartitionList::new();
        for partition in ends.keys() {
            tpl.add_partition(&self.topic, *partition);
        }
        let Ok(committed) = consumer.committed_offsets(tpl, KAFKA_TIMEOUT) else {
            return false;
        };
        ends.iter().all(|(partition, end)| {
            matches!(
                committed.find_partition(&self.topic, *partition).map(|e| e.offset()),
                Some(Offset::Offset(at)) if at >= *end
            )
        })
    }

    async fn delete(&self) {
        let admin: AdminClient<DefaultClientContext> = kafka_config().create().unwrap();
        let options = AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT));
        let dlq = self.dead_letter_topic();
        admin
            .delete_topics(&[&self.topic, &dlq], &options)
            .await
            .ok();
    }
}

/// Every record of `topic`, if it exists (blocking): its partitions read from the beginning
/// until nothing more comes for half a second. Not up to the high watermark: tansu (0.6)
/// answers the base offset of a partition's last produce batch plus one, short of the records
/// after the first of a last batch of several.
fn read_kafka_topic(topic: &str) -> Vec<Message> {
    let consumer: BaseConsumer = kafka_config()
        .set("group.id", format!("{topic}.reader"))
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false")
        .create()
        .unwrap();
    let Ok(metadata) = consumer.fetch_metadata(Some(topic), KAFKA_TIMEOUT) else {
        return Vec::new();
    };
    let mut tpl = TopicPartitionList::new();
    for partition in metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions())
    {
        tpl.add_partition_offset(topic, partition.id(), Offset::Beginning)
            .unwrap();
    }
    let mut messages = Vec::new();
    if tpl.count() == 0 {
        return messages;
    }
    consumer.assign(&tpl).unwrap();
    let mut last_read = Instant::now();
    while last_read.elapsed() < Duration::from_millis(500) {
        let Some(Ok(read)) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        last_read = Instant::now();
        let mut message = Message::new(read.payload().unwrap_or_default().to_vec(), topic);
        if let Some(key) = read.key() {
            message = message.with_ordering_key(String::from_utf8_lossy(key));
        }
        for header in read.headers().iter().flat_map(|h| h.iter()) {
            let value = String::from_utf8_lossy(header.value.unwrap_or_default());
            if header.key == MESSAGE_ID_HEADER {
                message = message.with_message_id(value.clone());
            }
            message = message.with_header(header.key, value);
        }
        messages.push(message);
    }
    messages
}

#[test]
fn kafka_each_key_is_posted_once_and_the_failing_one_is_dead_lettered() {
    let rt = runtime();
    let kafka = rt.block_on(Kafka::new());
    let handler = Handler::start();
    let dir = tempfile::tempdir().unwrap();
    let group = format!("{}.group", kafka.topic);

    // The Kafka key is the order id: a duplicate shares its original's partition, so it comes
    // after the original settled, never beside it. Three partitions, side by side.
    let bodies: HashMap<&str, Vec<u8>> = [
        ("a", order("a", 1)),
        ("b", order("b", 2)),
        (FAILING, order(FAILING, 3)),
        ("c", order("c", 4)),
        ("last", order("last", 5)),
    ]
    .into_iter()
    .collect();
    let sequence = ["a", "b", "a", FAILING, "c", "b", "last"];
    rt.block_on(async {
        for (i, key) in sequence.iter().enumerate() {
            kafka.publish(key, &format!("m-{i}"), &bodies[key]).await;
        }
    });

    let from = kafka.url(&group);
    let child = spawn_consume(
        dir.path(),
        &[
            "--from",
            &from,
            "--key",
            "/id",
            "--deliver",
            &handler.url,
            "--max-attempts",
            "3",
            "--timeout",
            "5s",
            "--concurrency",
            "3",
        ],
    );
    // Every record settled: the duplicates too, which POST nothing.
    wait_for("every record's offset committed", || kafka.settled(&group));
    let letters = read_kafka_topic(&kafka.dead_letter_topic());
    let output = terminate(child);
    rt.block_on(kafka.delete());
    assert_summary_and_exit_0(
        &output,
        "consumed 7: done 4, duplicates 2, redelivered 0, dead-lettered 1",
    );

    assert_each_key_posted_once(&handler, &bodies, 3);
    let first_a = handler
        .received()
        .into_iter()
        .find(|r| r.key() == "a")
        .unwrap();
    assert_eq!(first_a.header("content-type"), Some("application/json"));
    assert_eq!(first_a.header("oncely-message-id"), Some("m-0"));
    assert_eq!(first_a.header("oncely-source"), Some(kafka.topic.as_str()));

    assert_eq!(
        letters.len(),
        1,
        "dead letters on {}",
        kafka.dead_letter_topic()
    );
    let letter = &letters[0];
    assert_eq!(letter.payload(), bodies[FAILING].as_slice());
    assert_eq!(
        letter.ordering_key(),
        Some(FAILING),
        "the original's Kafka key"
    );
    assert_eq!(letter.message_id(), Some("m-3"), "the original's headers");
    assert_eq!(letter.header(KEY_HEADER), Some(FAILING));
    assert_eq!(letter.header(ATTEMPTS_HEADER), Some("3"));
    assert_eq!(letter.header(SOURCE_HEADER), Some(kafka.topic.as_str()));
    assert_eq!(
        letter.header(ERROR_HEADER),
        Some("handler answered 500 Internal Server Error: boom: always-fails cannot be handled")
    );
}

/// What the outbox relay produces (one aggregate per Kafka key, the row's id in the
/// Oncely-Message-Id header), with a row produced twice as a relay killed between the ack and
/// marking it sent does: `--key message-id` POSTs each row once.
#[test]
fn kafka_rows_produced_twice_by_the_relay_are_posted_once_by_message_id() {
    let rt = runtime();
    let kafka = rt.block_on(Kafka::new());
    let handler = Handler::start();
    let dir = tempfile::tempdir().unwrap();
    let group = format!("{}.group", kafka.topic);

    let rows = [
        ("order-1", "o-1", "created"),
        ("order-2", "o-2", "created"),
        ("order-1", "o-3", "paid"),
        ("order-1", "o-3", "paid"),
        ("order-2", "o-4", "paid"),
        ("order-3", "o-5", "created"),
        ("order-2", "o-4", "paid"),
    ];
    rt.block_on(async {
        for (aggregate, id, event) in rows {
            let payload = format!(r#"{{"order":"{aggregate}","event":"{event}"}}"#);
            kafka.publish(aggregate, id, payload.as_bytes()).await;
        }
    });

    let from = kafka.url(&group);
    let child = spawn_consume(
        dir.path(),
        &[
            "--from",
            &from,
            "--key",
            "message-id",
            "--deliver",
            &handler.url,
            "--concurrency",
            "3",
        ],
    );
    wait_for("every record's offset committed", || kafka.settled(&group));
    let output = terminate(child);
    rt.block_on(kafka.delete());
    assert_summary_and_exit_0(
        &output,
        "consumed 7: done 5, duplicates 2, redelivered 0, dead-lettered 0",
    );
    let per_key = handler.per_key();
    assert_eq!(per_key.len(), 5, "{per_key:?}");
    assert!(per_key.values().all(|n| *n == 1), "{per_key:?}");
}
