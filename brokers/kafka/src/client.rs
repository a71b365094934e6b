//! What the source and the publisher share of librdkafka: the client configuration, the
//! idempotent producer, and creating and checking topics.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::FutureProducer;

use crate::Error;

/// How long a metadata or admin request may take while setting up.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a dead-letter produce may wait in the producer's queue.
pub(crate) const PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);
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
