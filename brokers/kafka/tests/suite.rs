//! The broker behaviour suite and the kill -9 proof against the Kafka-protocol broker at
//! `ONCELY_KAFKA_BROKERS` (`127.0.0.1:9092` by default; `.ci/run` starts tansu there).
//!
//! Each test gets its own topic of three partitions, its dead-letter topic and its consumer
//! group, named `oncely-suite-<pid>-<time>-<n>-<test>` ([`oncely_kafka::fresh_destination`]).

use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;
use std::sync::Mutex;

use oncely_broker_suite::libtest_mimic::Trial;
use oncely_broker_suite::{Broker, Channel, Running, proof};
use oncely_conformance::faults::{Restartable, TansuServer};
use oncely_conformance::harness::{panic_text, runtime};
use oncely_consumer::Consumer;
use oncely_core::consumer::{Delivery, KeySource, Message, OncelyHandler, Position, Source};
use oncely_core::outbox::Publisher;
use oncely_core::{BoxError, Key, Oncely, Scope, async_trait};
use oncely_kafka::rdkafka::consumer::{BaseConsumer, Consumer as _};
use oncely_kafka::rdkafka::error::RDKafkaErrorCode;
use oncely_kafka::rdkafka::message::{Header, Headers, OwnedHeaders};
use oncely_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use oncely_kafka::rdkafka::{Message as _, Offset, TopicPartitionList};
use oncely_kafka::{
    FreshOptions, KafkaOptions, KafkaPublisher, KafkaSource, MESSAGE_ID_HEADER, client_config,
    fresh_destination,
};
use oncely_postgres::offsets::PostgresOffsets;
use tokio::sync::Semaphore;

const PARTITIONS: i32 = 3;
const TIMEOUT: Duration = Duration::from_secs(10);

struct Kafka {
    brokers: String,
}

struct Topic {
    brokers: String,
    topic: String,
    producer: FutureProducer,
}

impl Kafka {
    async fn connect() -> Self {
        let brokers =
            std::env::var("ONCELY_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
        Kafka { brokers }
    }
}

#[async_trait]
impl Broker for Kafka {
    type Channel = Topic;
    // tansu advertises its own address: a proxy in front of its bootstrap would be bypassed.
    const CONSUMERS_REACH_IT_THROUGH_A_PROXY: bool = false;
    const PARTITION_PROOF_ADVERTISES_THE_PROXY: bool = true;
    /// tansu keeps each produced batch as an object, read back with a request of its own: on
    /// moto's S3 (Python) the consumers of a 20,000-message run applied nothing in their first
    /// minutes; 2,000 messages take ~40 s.
    const RESTART_PROOF_MESSAGES: usize = 2_000;

    fn runs_restart_proof(&self) -> bool {
        true
    }

    async fn own_server(&self) -> Option<(Self, Box<dyn Restartable>)> {
        // Its data on an S3 server of the test's own, which outlives the broker's restarts.
        // Not SQLite: tansu 0.6's SQLite engine serves all storage requests from one task that
        // ends at the first reply it cannot deliver (a client that left during a request, as
        // this proof's reconnecting clients do), after which the broker answers nothing.
        let server = tokio::task::spawn_blocking(TansuServer::start_on_s3)
            .await
            .expect("the test's tansu");
        let kafka = Kafka {
            brokers: server.url(),
        };
        Some((kafka, Box::new(server)))
    }

    async fn own_server_advertising(
        &self,
        advertised: u16,
    ) -> Option<(Self, Box<dyn Restartable>, u16)> {
        let server =
            tokio::task::spawn_blocking(move || TansuServer::start_advertising(advertised))
                .await
                .expect("the test's tansu");
        let kafka = Kafka {
            brokers: format!("127.0.0.1:{advertised}"),
        };
        let port = server.port();
        Some((kafka, Box::new(server), port))
    }

    /// A group joins in seconds on tansu: the redrive waits that long for its first letter.
    const REDRIVE_IDLE: Duration = Duration::from_secs(20);

    async fn connect_publisher(url: &str) -> Result<Box<dyn Publisher>, BoxError> {
        Ok(Box::new(KafkaPublisher::connect(url).await?))
    }

    async fn channel(&self, test: &str) -> Result<Topic, BoxError> {
        let options = FreshOptions::new("oncely-suite-", test).partitions(PARTITIONS);
        let fresh = fresh_destination(&self.brokers, &options)
            .await
            .map_err(|e| {
                format!(
                    "no Kafka broker at {}: {e} (start tansu, or set ONCELY_KAFKA_BROKERS)",
                    self.brokers
                )
            })?;
        let producer = client_config(&self.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Each publish waits for its ack: no point lingering for a batch.
            .set("linger.ms", "0")
            .create()?;
        Ok(Topic {
            brokers: self.brokers.clone(),
            topic: fresh.topic,
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

    /// Produces `{}` with `headers` straight to `partition`, confirmed.
    async fn produce_to(&self, partition: i32, headers: OwnedHeaders) {
        let record = FutureRecord::<str, [u8]>::to(&self.topic)
            .partition(partition)
            .payload(b"{}")
            .headers(headers);
        self.producer
            .send(record, TIMEOUT)
            .await
            .map_err(|(e, _)| e)
            .unwrap();
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

    fn rebalances_lazily(&self) -> bool {
        true
    }

    fn leaving_may_strand_the_group(&self) -> bool {
        true
    }

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
        let (parts, _) =
            tokio::task::spawn_blocking(move || past_committed(&brokers, &topic)).await??;
        Ok(parts.iter().map(PastCommitted::unsettled).sum())
    }

    async fn explain_unsettled(&self) -> Result<String, BoxError> {
        let (brokers, topic) = (self.brokers.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || explain_unsettled(&brokers, &topic)).await?
    }

    fn source_url(&self) -> String {
        format!(
            "kafka://{}/{}?group={}&session_timeout=6s&commit_interval=50ms",
            self.brokers, self.topic, self.topic
        )
    }

    /// A group of its own each call: a killed member's partitions would wait for its session
    /// to end; a new group reads every letter again, and those already redriven are acked.
    fn dead_letter_source_url(&self) -> String {
        static READERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = READERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!(
            "kafka://{}/{}?group={}-redrive-{n}&dlq=none&commit_interval=50ms",
            self.brokers,
            self.dead_letter_topic(),
            self.topic
        )
    }

    fn publisher_url(&self) -> String {
        format!("kafka://{}/{}", self.brokers, self.topic)
    }
}

/// The messages of one partition past its group's committed offset.
struct PastCommitted {
    partition: i32,
    /// The group's committed offset, or the first one listed if it committed none.
    committed: i64,
    /// The offsets listed for the partition: its first, and the one after its last.
    listed: (i64, i64),
    /// Messages a reader outside the group found from `committed` on.
    read: u64,
    /// The first offset that reader found.
    first: Option<i64>,
}

impl PastCommitted {
    /// Messages not committed yet: by the listed end offset, or by what was read, whichever is
    /// more. tansu 0.6 lists as the end the offset after the object it stored last by the
    /// object's modification time, which moto's S3 keeps to the second, so the listed end can
    /// fall short (seen: 5 listed, 15 there).
    fn unsettled(&self) -> u64 {
        let listed = (self.listed.1 - self.committed).max(0) as u64;
        listed.max(self.read)
    }
}

/// Each partition of `topic` as its group (named like the topic) left it: what is listed past
/// the committed offset, and what a reader outside the group finds there, read until every
/// listed message came and then nothing more for a second (or for [`TIMEOUT`] at most); and
/// the errors that reader met (a broker restarting, say).
fn past_committed(
    brokers: &str,
    topic: &str,
) -> Result<(Vec<PastCommitted>, Vec<String>), BoxError> {
    let group: BaseConsumer = client_config(brokers).set("group.id", topic).create()?;
    let marks = Topic::watermarks(&group, topic)?;
    let mut tpl = TopicPartitionList::new();
    for (partition, _, _) in &marks {
        tpl.add_partition(topic, *partition);
    }
    let committed = group.committed_offsets(tpl, TIMEOUT)?;
    let mut parts = Vec::new();
    let mut assignment = TopicPartitionList::new();
    for (partition, low, high) in marks {
        let at = match committed
            .find_partition(topic, partition)
            .map(|e| e.offset())
        {
            Some(Offset::Offset(o)) => o,
            _ => low,
        };
        assignment.add_partition_offset(topic, partition, Offset::Offset(at))?;
        parts.push(PastCommitted {
            partition,
            committed: at,
            listed: (low, high),
            read: 0,
            first: None,
        });
    }
    let reader: BaseConsumer = client_config(brokers)
        .set("group.id", format!("{topic}-counter"))
        .set("enable.auto.commit", "false")
        .create()?;
    reader.assign(&assignment)?;
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut quiet_since = std::time::Instant::now();
    let mut errors = Vec::new();
    loop {
        let short = parts
            .iter()
            .any(|p| (p.read as i64) < p.listed.1 - p.committed);
        let quiet = quiet_since.elapsed() >= Duration::from_secs(1);
        if (!short && quiet) || std::time::Instant::now() >= deadline {
            break;
        }
        match reader.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                if let Some(part) = parts
                    .iter_mut()
                    .find(|p| p.partition == message.partition())
                {
                    part.read += 1;
                    part.first.get_or_insert(message.offset());
                }
                quiet_since = std::time::Instant::now();
            }
            Some(Err(e)) => errors.push(e.to_string()),
            None => {}
        }
    }
    errors.dedup();
    Ok((parts, errors))
}

/// For each partition of `topic` with messages past its group's committed offset: that offset,
/// the offsets listed, and what a reader outside the group found from there.
fn explain_unsettled(brokers: &str, topic: &str) -> Result<String, BoxError> {
    let (parts, errors) = past_committed(brokers, topic)?;
    let mut lines: Vec<String> = parts
        .iter()
        .filter(|p| p.unsettled() > 0)
        .map(|p| {
            format!(
                "partition {}: committed {}, listed offsets {}..{}; read from {} outside the \
                 group: {} (first {:?})",
                p.partition, p.committed, p.listed.0, p.listed.1, p.committed, p.read, p.first
            )
        })
        .collect();
    if !errors.is_empty() {
        lines.push(format!("the reader's errors: {errors:?}"));
    }
    Ok(lines.join("; "))
}

/// Every message of `topic`, read from the beginning to the end as it is now: past the high
/// watermark too, until nothing comes for a second (tansu 0.6 can list an end short of the
/// partition's: see [`PastCommitted::unsettled`]).
fn read_all(brokers: &str, topic: &str) -> Result<Vec<Message>, BoxError> {
    let consumer: BaseConsumer = client_config(brokers)
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
    let mut quiet_since = std::time::Instant::now();
    let mut messages = Vec::new();
    while left > 0 || quiet_since.elapsed() < Duration::from_secs(1) {
        if std::time::Instant::now() > deadline {
            return Err(format!("{left} messages of {topic} not read in {TIMEOUT:?}").into());
        }
        let Some(read) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let read = match read {
            Ok(read) => read,
            // A broker just restarted: librdkafka reconnects by itself, within the deadline.
            Err(e)
                if matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure
                    )
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let mut message = Message::new(read.payload().unwrap_or_default().to_vec(), topic);
        if let Some(headers) = read.headers() {
            for header in headers.iter() {
                let value = String::from_utf8_lossy(header.value.unwrap_or_default());
                message = message.with_header(header.key, value);
            }
        }
        messages.push(message);
        left -= 1;
        quiet_since = std::time::Instant::now();
    }
    Ok(messages)
}

/// Set for the consumer processes of the proof whose offsets are committed to Kafka.
const COMMITTED_ENV: &str = "ONCELY_KAFKA_PROOF_COMMITTED";

/// A consumer of `url`. The kill -9 proof's consumers keep their offsets in the proof's
/// PostgreSQL database, saved with each order by the inventory example, and start each
/// assigned partition there (the "offsets with the effect" mode); those of the second proof
/// ([`COMMITTED_ENV`]) commit them to Kafka after the effect.
async fn open(url: String) -> Result<KafkaSource, BoxError> {
    let options: KafkaOptions = url.parse()?;
    match std::env::var(proof::CHILD_POSTGRES_ENV) {
        Ok(postgres) if std::env::var_os(COMMITTED_ENV).is_none() => {
            let offsets = PostgresOffsets::connect(&postgres).await?;
            Ok(KafkaSource::offsets(options, Arc::new(offsets)).await?)
        }
        _ => Ok(KafkaSource::connect_with(options).await?),
    }
}

fn main() {
    let kafka_only = vec![
        trial("order_per_key_holds_across_rebalances", |kafka| {
            Box::pin(order_per_key_holds_across_rebalances(kafka))
        }),
        trial("keys_of_one_partition_run_side_by_side", |kafka| {
            Box::pin(keys_of_one_partition_run_side_by_side(kafka))
        }),
        trial(
            "a_partition_starts_at_the_offset_stored_with_the_effects",
            |kafka| {
                Box::pin(a_partition_starts_at_the_offset_stored_with_the_effects(
                    kafka,
                ))
            },
        ),
        trial(
            "an_offset_stored_with_the_effects_is_committed_to_kafka_with_nothing_after_it",
            |kafka| {
                Box::pin(an_offset_stored_with_the_effects_is_committed_to_kafka(
                    kafka,
                ))
            },
        ),
        trial(
            "a_partition_paused_when_full_resumes_after_rebalances",
            |kafka| Box::pin(a_partition_paused_when_full_resumes_after_rebalances(kafka)),
        ),
        trial(
            "every_message_published_counts_as_unsettled_until_consumed",
            |kafka| {
                Box::pin(every_message_published_counts_as_unsettled_until_consumed(
                    kafka,
                ))
            },
        ),
        trial("kill9_proof_with_offsets_committed_to_kafka", |kafka| {
            Box::pin(kill9_proof_with_offsets_committed_to_kafka(kafka))
        }),
    ];
    oncely_broker_suite::run(
        "kafka",
        || async { Kafka::connect().await },
        open,
        kafka_only,
    )
    .exit();
}

type KafkaTest = fn(Kafka) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

fn trial(name: &'static str, test: KafkaTest) -> Trial {
    Trial::test(format!("kafka::{name}"), move || {
        runtime().block_on(async move {
            let kafka = Kafka::connect().await;
            tokio::spawn(test(kafka))
                .await
                .map_err(|e| panic_text(e).into())
        })
    })
    .with_kind("kafka")
}

/// Counts effects in the order they happen.
#[derive(Clone, Default)]
struct Applied(Arc<Mutex<Vec<(String, u32)>>>);

impl Applied {
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    async fn until(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while self.len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {n} effects",
                self.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// 12 accounts x 40 events, each account's events under one Kafka key (so in one partition),
/// plus 60 re-published copies; one consumer, then a second joining mid-run (a rebalance),
/// then the first leaving (another). Every event applied once, and each account's events in
/// the order they were produced, whoever held the partition.
async fn order_per_key_holds_across_rebalances(kafka: Kafka) {
    let topic = kafka.channel("rebalance").await.unwrap();
    let (accounts, events) = (12, 40u32);
    let event = |account: usize, seq: u32| {
        Message::new(
            serde_json::json!({"account": format!("acct-{account}"), "seq": seq})
                .to_string()
                .into_bytes(),
            "",
        )
        .with_ordering_key(format!("acct-{account}"))
        .with_header("Event-Id", format!("acct-{account}-{seq}"))
    };
    for seq in 0..events {
        for account in 0..accounts {
            topic.publish(&event(account, seq)).await.unwrap();
        }
    }
    for n in 0..60 {
        topic
            .publish(&event(n % accounts, (n as u32 * 7) % events))
            .await
            .unwrap();
    }
    let applied = Applied::default();
    let oncely = Oncely::new(Arc::new(oncely_memory::MemoryStore::default()));
    let handler = OncelyHandler::new(oncely, Scope::default(), {
        let applied = applied.clone();
        move |_key: Key, message: Message| {
            let applied = applied.clone();
            async move {
                let json: serde_json::Value = serde_json::from_slice(message.payload()).unwrap();
                tokio::time::sleep(Duration::from_millis(3)).await;
                let account = json["account"].as_str().unwrap().to_owned();
                let seq = json["seq"].as_u64().unwrap() as u32;
                applied.0.lock().unwrap().push((account, seq));
                Ok::<_, BoxError>(Vec::new())
            }
        }
    });
    let consumer = Consumer::new(handler, KeySource::Header("Event-Id".into())).concurrency(8);
    let first = Running::spawn(&consumer, topic.consumer().await.unwrap());
    applied.until(100).await;
    let second = Running::spawn(&consumer, topic.consumer().await.unwrap());
    applied.until(300).await;
    let first = first.stop().await;
    let total = accounts * events as usize;
    applied.until(total).await;
    // The re-published copies come last: wait until they are settled too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while consumer.report().done + consumer.report().duplicates < (total + 60) as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all settled: {:?}",
            consumer.report()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = second.stop().await;
    assert!(
        first.done > 0 && second.done > 0,
        "both consumers worked: {first:?} {second:?}"
    );

    let applied = applied.0.lock().unwrap().clone();
    assert_eq!(applied.len(), total, "each event applied once");
    let mut last: HashMap<String, u32> = HashMap::new();
    for (account, seq) in applied {
        if let Some(before) = last.insert(account.clone(), seq) {
            assert!(
                seq == before + 1,
                "{account}: event {seq} applied after event {before}"
            );
        }
    }
    until_settled(&topic).await;
}

/// The proofs end when nothing is unsettled, so the count must see every message. tansu on S3
/// lists a partition's end short of it (by modification times kept to the second), so the
/// count reads past the committed offsets too.
async fn every_message_published_counts_as_unsettled_until_consumed(kafka: Kafka) {
    let (kafka, _server) = kafka
        .own_server()
        .await
        .expect("a tansu on S3 of the test's own");
    let topic = kafka.channel("unsettled_count").await.unwrap();
    let published = 30;
    for n in 0..published {
        let message = Message::new(format!(r#"{{"n":{n}}}"#).into_bytes(), &topic.topic)
            .with_message_id(format!("m-{n}"));
        topic.publish(&message).await.unwrap();
    }
    assert_eq!(topic.unsettled().await.unwrap(), published);
}

/// Six keys in one partition, two messages each, and a consumer of concurrency 6: handlers of
/// different keys overlap (each waits, up to 5 s, for another to be running), those of one key
/// never do, each key's messages run in order, and the partition is committed to its end.
async fn keys_of_one_partition_run_side_by_side(kafka: Kafka) {
    let topic = kafka.channel("side_by_side").await.unwrap();
    let keys = 6;
    for round in 0..2 {
        for key in 0..keys {
            let (kafka_key, event_id) = (format!("k{key}"), format!("k{key}-{round}"));
            let payload = format!(r#"{{"key":"k{key}","round":{round}}}"#);
            let record = FutureRecord::to(&topic.topic)
                .partition(0)
                .key(&kafka_key)
                .payload(&payload)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "Event-Id",
                    value: Some(&event_id),
                }));
            topic
                .producer
                .send(record, TIMEOUT)
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    }
    #[derive(Default)]
    struct Seen {
        running: HashMap<String, u32>,
        most_at_once: usize,
        one_key_twice: bool,
        order: Vec<String>,
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let oncely = Oncely::new(Arc::new(oncely_memory::MemoryStore::default()));
    let handler = OncelyHandler::new(oncely, Scope::default(), {
        let seen = seen.clone();
        move |key: Key, message: Message| {
            let seen = seen.clone();
            async move {
                let kafka_key = message.ordering_key().unwrap().to_owned();
                {
                    let mut seen = seen.lock().unwrap();
                    let running = seen.running.entry(kafka_key.clone()).or_default();
                    *running += 1;
                    let twice = *running > 1;
                    seen.one_key_twice |= twice;
                    let at_once = seen.running.values().filter(|n| **n > 0).count();
                    seen.most_at_once = seen.most_at_once.max(at_once);
                    seen.order.push(key.to_string());
                }
                // Gives another key the chance to start meanwhile (not a measure of speed).
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                while tokio::time::Instant::now() < deadline {
                    let running = seen
                        .lock()
                        .unwrap()
                        .running
                        .values()
                        .filter(|n| **n > 0)
                        .count();
                    if running > 1 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                *seen.lock().unwrap().running.get_mut(&kafka_key).unwrap() -= 1;
                Ok::<_, BoxError>(Vec::new())
            }
        }
    });
    let consumer = Consumer::new(handler, KeySource::Header("Event-Id".into())).concurrency(6);
    let running = Running::spawn(&consumer, topic.consumer().await.unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while consumer.report().done < 2 * keys {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            consumer.report()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    until_settled(&topic).await;
    running.stop().await;
    let seen = seen.lock().unwrap();
    assert!(
        seen.most_at_once > 1,
        "messages of different keys in one partition ran one at a time"
    );
    assert!(!seen.one_key_twice, "two messages of one key ran at once");
    for key in 0..keys {
        let first = seen.order.iter().position(|k| *k == format!("k{key}-0"));
        let second = seen.order.iter().position(|k| *k == format!("k{key}-1"));
        assert!(
            first < second,
            "k{key}'s messages out of order: {:?}",
            seen.order
        );
    }
}

async fn until_settled(topic: &Topic) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = topic.unsettled().await.unwrap();
        if left == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} messages uncommitted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A consumer with its offsets in PostgreSQL starts a partition at the stored offset, not at
/// the group's committed one (none here) nor at the beginning.
async fn a_partition_starts_at_the_offset_stored_with_the_effects(kafka: Kafka) {
    let (topic, offsets) = ten_messages_and_a_stored_offset(&kafka, "stored_offsets", 6).await;
    let mut source = KafkaSource::offsets(topic.options(), Arc::new(offsets))
        .await
        .unwrap();
    let mut offsets_read = Vec::new();
    while offsets_read.len() < 3 {
        let delivery = tokio::time::timeout(Duration::from_secs(30), source.next())
            .await
            .expect("a delivery")
            .expect("the source is open")
            .expect("no error");
        assert_eq!(delivery.partition(), 1);
        offsets_read.push(delivery.offset());
        delivery.ack().await.unwrap();
    }
    assert_eq!(
        offsets_read,
        vec![7, 8, 9],
        "started after the stored offset"
    );
}

/// A consumer with its offsets in PostgreSQL, whose group's commits to Kafka were lost (a
/// broker restart, say) after the effects and their offsets committed: it commits the stored
/// offset to Kafka when the partition is assigned, though no message comes after it. Else the
/// group's lag would show messages already done until new ones come.
async fn an_offset_stored_with_the_effects_is_committed_to_kafka(kafka: Kafka) {
    let (topic, offsets) =
        ten_messages_and_a_stored_offset(&kafka, "stored_offsets_committed", 9).await;
    assert_eq!(
        topic.unsettled().await.unwrap(),
        10,
        "nothing committed to Kafka"
    );
    let source = KafkaSource::offsets(topic.options(), Arc::new(offsets))
        .await
        .unwrap();
    until_settled(&topic).await;
    drop(source);
}

/// A topic `test` with ten messages in partition 1, and PostgreSQL offsets (in a schema of the
/// test's own) that say its group is done with partition 1 up to `done` included.
async fn ten_messages_and_a_stored_offset(
    kafka: &Kafka,
    test: &str,
    done: i64,
) -> (Topic, PostgresOffsets) {
    let topic = kafka.channel(test).await.unwrap();
    for _ in 0..10 {
        topic.produce_to(1, OwnedHeaders::new()).await;
    }
    let postgres = oncely_conformance::servers::postgres_url(&format!("oncely_kafka_{test}")).await;
    let offsets = PostgresOffsets::connect(&postgres).await.unwrap();
    let pool = oncely_postgres::sqlx::PgPool::connect(&postgres)
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    let options = topic.options();
    let position = Position {
        group: options.group.clone(),
        topic: options.topic.clone(),
        partition: 1,
        offset: done,
    };
    PostgresOffsets::save(&mut tx, &position).await.unwrap();
    tx.commit().await.unwrap();
    (topic, offsets)
}

/// More messages in one partition than the source queues (so it pauses the partition's
/// fetching) while the handler is stuck; then a second member joins and leaves, so the
/// partition is revoked and assigned again. librdkafka keeps a partition paused across that;
/// the source must resume it, or the partition stalls for good.
async fn a_partition_paused_when_full_resumes_after_rebalances(kafka: Kafka) {
    const MESSAGES: usize = 1_300; // above the source's queue limit per partition (1,000)
    let topic = kafka.channel("paused").await.unwrap();
    for n in 0..MESSAGES {
        let headers = OwnedHeaders::new().insert(Header {
            key: "Event-Id",
            value: Some(&format!("e-{n}")),
        });
        topic.produce_to(0, headers).await;
    }
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let applied = Applied::default();
    let oncely = Oncely::new(Arc::new(oncely_memory::MemoryStore::default()));
    let handler = OncelyHandler::new(oncely, Scope::default(), {
        let (gate, applied) = (gate.clone(), applied.clone());
        move |key: Key, _: Message| {
            let (gate, applied) = (gate.clone(), applied.clone());
            async move {
                drop(gate.acquire().await.unwrap());
                applied.0.lock().unwrap().push((key.to_string(), 0));
                Ok::<_, BoxError>(Vec::new())
            }
        }
    });
    let consumer = Consumer::new(handler, KeySource::Header("Event-Id".into()));
    let options = topic.options().revoke_wait(Duration::from_millis(500));
    let first = Running::spawn(
        &consumer,
        KafkaSource::connect_with(options.clone()).await.unwrap(),
    );
    // The first member fetches past its queue limit while its handler waits at the gate.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = Running::spawn(&consumer, KafkaSource::connect_with(options).await.unwrap());
    tokio::time::sleep(Duration::from_secs(4)).await;
    second.stop().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    gate.add_permits(Semaphore::MAX_PERMITS);
    applied.until(MESSAGES).await;
    first.stop().await;
    let keys: std::collections::HashSet<String> = applied
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(keys.len(), MESSAGES, "every message applied");
    assert_eq!(applied.len(), MESSAGES, "none twice");
}

/// The kill -9 proof again, with the consumers' offsets committed to Kafka after the effect
/// (the default mode): the dedup records absorb what a crash redelivers.
async fn kill9_proof_with_offsets_committed_to_kafka(kafka: Kafka) {
    let channel = kafka.channel("proof_committed").await.unwrap();
    let postgres = oncely_conformance::servers::postgres_url("oncely_proof_kafka_committed").await;
    let exe = std::env::current_exe().expect("this test binary");
    let spawn = |source: &str, postgres: &str| {
        std::process::Command::new(&exe)
            .env(proof::CHILD_SOURCE_ENV, source)
            .env(proof::CHILD_POSTGRES_ENV, postgres)
            .env(COMMITTED_ENV, "1")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("a consumer process")
    };
    let report = proof::run(&channel, &postgres, proof::ProofConfig::default(), spawn).await;
    eprintln!("kill -9 proof, offsets committed to Kafka: {report:?}");
}
