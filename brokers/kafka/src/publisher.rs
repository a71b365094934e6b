//! [`KafkaPublisher`]: produces that wait for the brokers' acks, for the outbox relay.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use oncely_core::async_trait;
use oncely_core::consumer::{BrokerError, Message};
use oncely_core::outbox::Publisher;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::client::{PRODUCE_TIMEOUT, ensure_topic, idempotent_producer, topic_exists};
use crate::message::kafka_headers;
use crate::options::locate;
use crate::{BROKER, Cluster, Error, MESSAGE_ID_HEADER};

/// Produces outbox rows to Kafka, as the relay (`oncely-relay`) asks: with the idempotent
/// producer (`enable.idempotence`, acks from all in-sync replicas), the row's aggregate as the
/// Kafka key, so one aggregate's rows land in one partition in order, and the row's stable id
/// in the [`MESSAGE_ID_HEADER`] header. A produce counts only once the brokers acked it.
///
/// ## The URL
///
/// `kafka://HOST[:PORT][,HOST[:PORT]...][/TOPIC]` (port 9092 by default). `TOPIC` is where
/// rows without a destination go; a row's own destination is a topic too. Connecting checks
/// that the default topic exists: topics are not created here. A row whose own destination is
/// a topic that does not exist is refused at once (each topic is looked up once).
///
/// The idempotent producer drops its *own* retries; a row produced again by a relay that
/// crashed between the ack and marking the row sent is a second record with the same
/// [`MESSAGE_ID_HEADER`]: consumers dedup by it (`oncely consume --key message-id`).
///
/// ```no_run
/// # async fn example() -> Result<(), oncely_kafka::Error> {
/// let publisher = oncely_kafka::KafkaPublisher::connect("kafka://127.0.0.1:9092/orders.events").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KafkaPublisher {
    producer: FutureProducer,
    cluster: Cluster,
    topic: Option<String>,
    /// Topics seen to exist. A produce to a missing one would wait out the producer's queue
    /// timeout (30 s) before failing, holding up the relay's whole batch: it is refused at once.
    known: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("cluster", &self.cluster)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    /// Connects as `url` says (see the type's docs).
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let shown = oncely_core::url::redact_password(url);
        let (cluster, topic, query) = locate(url).map_err(|reason| Error::InvalidUrl {
            url: shown.clone(),
            reason,
        })?;
        if !query.is_empty() {
            return Err(Error::InvalidUrl {
                url: shown,
                reason: format!("a publisher takes no options but the connection's, not `{query}`"),
            });
        }
        Self::open(cluster, topic).await
    }

    /// A publisher to `cluster` (a [`Cluster`], or plain brokers `host:port[,host:port...]`),
    /// with `topic` as the default destination. Checks that it exists.
    pub async fn open(cluster: impl Into<Cluster>, topic: Option<String>) -> Result<Self, Error> {
        let cluster = cluster.into();
        let mut known = HashSet::new();
        if let Some(topic) = &topic {
            ensure_topic(&cluster, topic, None).await?;
            known.insert(topic.clone());
        }
        Ok(KafkaPublisher {
            producer: idempotent_producer(&cluster)?,
            cluster,
            topic,
            known: Arc::new(Mutex::new(known)),
        })
    }

    /// Fails at once if `topic` does not exist.
    async fn check(&self, topic: &str) -> Result<(), BrokerError> {
        if self.known.lock().expect("never poisoned").contains(topic) {
            return Ok(());
        }
        let what = || format!("produce to {topic}");
        match topic_exists(&self.cluster, topic).await {
            Ok(true) => {
                self.known
                    .lock()
                    .expect("never poisoned")
                    .insert(topic.to_owned());
                Ok(())
            }
            Ok(false) => Err(BrokerError::new(
                BROKER,
                what(),
                format!("no topic {topic} at {}: create it", self.cluster),
            )),
            Err(error) => Err(BrokerError::new(BROKER, what(), error)),
        }
    }
}

/// Whether the broker refused the record itself (too large, invalid, not allowed), which no
/// retry mends (the relay parks such a row in the end), rather than failing for a while.
fn is_refusal(error: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        error.rdkafka_error_code(),
        Some(
            Code::MessageSizeTooLarge
                | Code::InvalidMessageSize
                | Code::InvalidMessage
                | Code::InvalidRecord
                | Code::MessageBatchTooLarge
                | Code::InvalidTopic
                | Code::TopicAuthorizationFailed
        )
    )
}

#[async_trait]
impl Publisher for KafkaPublisher {
    async fn publish(
        &self,
        destination: Option<&str>,
        message: &Message,
    ) -> Result<(), BrokerError> {
        let topic = destination.or(self.topic.as_deref()).ok_or_else(|| {
            BrokerError::permanent(
                BROKER,
                "produce",
                "the row names no destination and the relay has no default topic \
                     (kafka://HOST/TOPIC)",
            )
        })?;
        self.check(topic).await?;
        let id = message.message_id().map(|id| (MESSAGE_ID_HEADER, id));
        let mut record = FutureRecord::<str, [u8]>::to(topic)
            .payload(message.payload())
            .headers(kafka_headers(message, id));
        if let Some(key) = message.ordering_key() {
            record = record.key(key);
        }
        self.producer
            .send(record, PRODUCE_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|(error, _)| {
                let what = format!("produce to {topic}");
                if is_refusal(&error) {
                    BrokerError::permanent(BROKER, what, error)
                } else {
                    BrokerError::new(BROKER, what, error)
                }
            })
    }
}
