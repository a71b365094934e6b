//! What the source and the publisher share of librdkafka: the client configuration, the
//! idempotent producer, and creating and checking topics.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::FutureProducer;

use crate::{Cluster, Error};

/// A client context that keeps the first error librdkafka reported: a failed TLS handshake, a
/// refused login. A request's own error only says that no broker could be reached.
#[derive(Default)]
pub(crate) struct LastError(std::sync::Mutex<Vec<String>>);

impl LastError {
    fn keep(&self, reason: &str) {
        let mut reasons = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if reasons.is_empty() {
            reasons.push(reason.replace(['\r', '\n'], " "));
        }
    }
}

impl rdkafka::ClientContext for LastError {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        tracing::debug!(?level, facility, message, "librdkafka");
        if (level as i32) <= (rdkafka::config::RDKafkaLogLevel::Error as i32) {
            self.keep(message);
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "librdkafka");
        self.keep(reason);
    }
}

impl rdkafka::consumer::ConsumerContext for LastError {}

/// [`Error::Unreachable`] for `error`, with the reason librdkafka last gave and what to check.
pub(crate) fn unreachable(
    cluster: &Cluster,
    error: rdkafka::error::KafkaError,
    context: &LastError,
) -> Error {
    let reasons = context.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let source = std::iter::once(error.to_string())
        .chain(reasons)
        .collect::<Vec<_>>()
        .join("; ");
    // librdkafka names a connection by its protocol (`sasl_ssl://host:port/bootstrap`): that
    // says how it connected, not what failed.
    let lower = ["sasl_ssl://", "sasl_plaintext://", "ssl://"]
        .iter()
        .fold(source.to_ascii_lowercase(), |text, protocol| {
            text.replace(protocol, "")
        });
    let hint = if lower.contains("sasl ") || lower.contains("authentication") {
        "(check the user, the password and sasl.mechanism)"
    } else if oncely_core::url::is_about_tls(&lower) {
        oncely_core::url::TLS_HINT
    } else {
        "(is the broker running?)"
    };
    Error::Unreachable {
        brokers: cluster.to_string(),
        hint,
        source: source.into(),
    }
}

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
///
/// For a cluster that needs TLS or SASL, [`Cluster::client_config`].
pub fn client_config(brokers: &str) -> ClientConfig {
    Cluster::from(brokers).client_config()
}

/// The idempotent producer: acks from all in-sync replicas, no duplicates from its own retries,
/// order kept per partition.
pub(crate) fn idempotent_producer(cluster: &Cluster) -> Result<FutureProducer, Error> {
    cluster
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .map_err(|e| Error::Client(e.into()))
}

/// Creates `topic` on `cluster` (a [`Cluster`], or plain brokers `host:port[,host:port...]`)
/// with `partitions` partitions and
/// the brokers' default replication, unless it exists. Kafka keeps one key's messages in one
/// partition; partitions are what consumers of one group share out.
///
/// ```no_run
/// # async fn example() -> Result<(), oncely_kafka::Error> {
/// oncely_kafka::create_topic("127.0.0.1:9092", "orders", 3).await?;
/// # Ok(()) }
/// ```
pub async fn create_topic(
    cluster: impl Into<Cluster>,
    topic: &str,
    partitions: i32,
) -> Result<(), Error> {
    ensure_topic(&cluster.into(), topic, Some(partitions)).await
}

/// Checks that `topic` exists; creates it with `create` partitions (and the broker's
/// replication) if missing and asked to.
pub(crate) async fn ensure_topic(
    cluster: &Cluster,
    topic: &str,
    create: Option<i32>,
) -> Result<(), Error> {
    if topic_exists(cluster, topic).await? {
        return Ok(());
    }
    let Some(partitions) = create else {
        return Err(Error::NoTopic {
            topic: topic.to_owned(),
            brokers: cluster.to_string(),
        });
    };
    let admin: AdminClient<DefaultClientContext> = cluster
        .client_config()
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

pub(crate) async fn topic_exists(cluster: &Cluster, topic: &str) -> Result<bool, Error> {
    let (cluster, topic) = (cluster.clone(), topic.to_owned());
    // Metadata requests block: off the runtime.
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer<LastError> = cluster
            .client_config()
            .set("allow.auto.create.topics", "false")
            .create_with_context(LastError::default())
            .map_err(|e| Error::Client(e.into()))?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), SETUP_TIMEOUT)
            .map_err(|e| {
                // Its logs and error events (why no broker let it in) arrive on polls.
                for _ in 0..5 {
                    let _ = consumer.poll(Duration::from_millis(20));
                }
                unreachable(&cluster, e, consumer.context())
            })?;
        Ok(metadata
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
    })
    .await
    .map_err(|e| Error::Client(e.into()))?
}
