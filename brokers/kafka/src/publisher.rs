//! [`KafkaPublisher`]: produces that wait for the brokers' acks, for the outbox relay.

use oncely_core::async_trait;
use oncely_core::consumer::{BrokerError, Message};
use oncely_core::outbox::Publisher;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::options::locate;
use crate::{BROKER, Error, MESSAGE_ID_HEADER, PRODUCE_TIMEOUT, ensure_topic, kafka_headers};

/// Produces outbox rows to Kafka, as the relay (`oncely-relay`) asks: with the idempotent
/// producer (`enable.idempotence`, acks from all in-sync replicas), the row's aggregate as the
/// Kafka key, so one aggregate's rows land in one partition in order, and the row's stable id
/// in the [`MESSAGE_ID_HEADER`] header. A produce counts only once the brokers acked it.
///
/// ## The URL
///
/// `kafka://HOST[:PORT][,HOST[:PORT]...][/TOPIC]` (port 9092 by default). `TOPIC` is where
/// rows without a destination go; a row's own destination is a topic too. Connecting checks
/// that the default topic exists: topics are not created here.
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
    brokers: String,
    topic: Option<String>,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    /// Connects as `url` says (see the type's docs).
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let (brokers, topic, query) = locate(url).map_err(|reason| Error::InvalidUrl {
            url: url.to_owned(),
            reason,
        })?;
        if !query.is_empty() {
            return Err(Error::InvalidUrl {
                url: url.to_owned(),
                reason: format!("a publisher takes no options, not `{query}`"),
            });
        }
        Self::open(&brokers, topic).await
    }

    /// A publisher to `brokers` (`host:port[,host:port...]`), with `topic` as the default
    /// destination. Checks that it exists.
    pub async fn open(brokers: &str, topic: Option<String>) -> Result<Self, Error> {
        if let Some(topic) = &topic {
            ensure_topic(brokers, topic, None).await?;
        }
        Ok(KafkaPublisher {
            producer: crate::idempotent_producer(brokers)?,
            brokers: brokers.to_owned(),
            topic,
        })
    }
}

#[async_trait]
impl Publisher for KafkaPublisher {
    async fn publish(
        &self,
        destination: Option<&str>,
        message: &Message,
    ) -> Result<(), BrokerError> {
        let topic = destination.or(self.topic.as_deref()).ok_or_else(|| {
            BrokerError::new(
                BROKER,
                "produce",
                "the row names no destination and the relay has no default topic \
                     (kafka://HOST/TOPIC)",
            )
        })?;
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
            .map_err(|(error, _)| BrokerError::new(BROKER, format!("produce to {topic}"), error))
    }
}
