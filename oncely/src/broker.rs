//! Brokers by URL: one [`Source`] type for every broker this build includes.
//!
//! | URL | broker | crate |
//! |---|---|---|
//! | `nats://[USER:PASS@]HOST[:PORT]/STREAM/CONSUMER[?dlq=SUBJECT&ack_wait=30s&...]` | NATS JetStream | `oncely-nats` |
//! | `amqp://[USER:PASS@]HOST[:PORT][/VHOST]/QUEUE[?dlq=Q&prefetch=N]` | RabbitMQ | `oncely-rabbitmq` |
//! | `kafka://HOST[:PORT][,HOST[:PORT]...]/TOPIC?group=NAME[&dlq=TOPIC&...]` | Kafka | `oncely-kafka` |
//! | `sqs://HOST[:PORT]/QUEUE[?dlq=QUEUE&visibility=30s&...]` (HTTPS), `sqs+http://HOST:PORT/QUEUE[?...]` (emulators) | Amazon SQS | `oncely-sqs` |
//!
//! Each broker crate's docs list every option.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use oncely::broker;
//! use oncely::consumer::{Message, OncelyHandler};
//! use oncely::{Key, Oncely, Scope};
//! use oncely::Consumer;
//!
//! let source = broker::connect("amqp://guest:guest@127.0.0.1:5672/%2f/orders").await?;
//! let store = oncely::connect("sqlite:oncely.db").await?;
//! let handler = OncelyHandler::new(Oncely::new(store), Scope::new("orders")?, |key: Key, _: Message| async move {
//!     println!("order {key}");
//!     Ok::<_, std::io::Error>(Vec::new())
//! });
//! Consumer::new(handler, "/orderId".parse()?).run(source, std::future::pending()).await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use oncely_core::async_trait;
use oncely_core::consumer::{BrokerError, DeadLetter, Delivery, Message, Source};

use crate::BrokerKind;

/// Why a broker URL could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// No broker of this build takes the URL's scheme.
    #[error(
        "no broker for `{url}`: use nats://HOST/STREAM/CONSUMER (NATS JetStream), amqp://HOST/QUEUE (RabbitMQ), kafka://HOST/TOPIC?group=NAME (Kafka) or sqs://HOST/QUEUE (SQS; sqs+http:// for emulators)"
    )]
    UnknownScheme {
        /// The URL, password redacted.
        url: String,
    },
    /// NATS refused or the URL is invalid.
    #[cfg(feature = "nats")]
    #[error(transparent)]
    Nats(#[from] oncely_nats::Error),
    /// RabbitMQ refused or the URL is invalid.
    #[cfg(feature = "rabbitmq")]
    #[error(transparent)]
    Amqp(#[from] oncely_rabbitmq::Error),
    /// Kafka refused or the URL is invalid.
    #[cfg(feature = "kafka")]
    #[error(transparent)]
    Kafka(#[from] oncely_kafka::Error),
    /// SQS refused or the URL is invalid.
    #[cfg(feature = "sqs")]
    #[error(transparent)]
    Sqs(#[from] oncely_sqs::Error),
}

/// A source on any broker of this build.
#[non_exhaustive]
pub enum AnySource {
    /// A durable JetStream consumer.
    #[cfg(feature = "nats")]
    Nats(Box<oncely_nats::NatsSource>),
    /// A RabbitMQ queue.
    #[cfg(feature = "rabbitmq")]
    Amqp(Box<oncely_rabbitmq::AmqpSource>),
    /// A Kafka consumer group member.
    #[cfg(feature = "kafka")]
    Kafka(Box<oncely_kafka::KafkaSource>),
    /// An SQS queue.
    #[cfg(feature = "sqs")]
    Sqs(Box<oncely_sqs::SqsSource>),
}

/// A delivery from any broker of this build.
#[non_exhaustive]
pub enum AnyDelivery {
    /// From NATS JetStream.
    #[cfg(feature = "nats")]
    Nats(oncely_nats::NatsDelivery),
    /// From RabbitMQ.
    #[cfg(feature = "rabbitmq")]
    Amqp(oncely_rabbitmq::AmqpDelivery),
    /// From Kafka.
    #[cfg(feature = "kafka")]
    Kafka(oncely_kafka::KafkaDelivery),
    /// From SQS.
    #[cfg(feature = "sqs")]
    Sqs(oncely_sqs::SqsDelivery),
}

// By hand: the SQS types have no Debug of their own (their options, their message instead).
impl std::fmt::Debug for AnySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            #[cfg(feature = "nats")]
            AnySource::Nats(source) => f.debug_tuple("Nats").field(source).finish(),
            #[cfg(feature = "rabbitmq")]
            AnySource::Amqp(source) => f.debug_tuple("Amqp").field(source).finish(),
            #[cfg(feature = "kafka")]
            AnySource::Kafka(source) => f.debug_tuple("Kafka").field(source).finish(),
            #[cfg(feature = "sqs")]
            AnySource::Sqs(source) => f.debug_tuple("Sqs").field(source.options()).finish(),
        }
    }
}

impl std::fmt::Debug for AnyDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            #[cfg(feature = "nats")]
            AnyDelivery::Nats(delivery) => f.debug_tuple("Nats").field(delivery).finish(),
            #[cfg(feature = "rabbitmq")]
            AnyDelivery::Amqp(delivery) => f.debug_tuple("Amqp").field(delivery).finish(),
            #[cfg(feature = "kafka")]
            AnyDelivery::Kafka(delivery) => f.debug_tuple("Kafka").field(delivery).finish(),
            #[cfg(feature = "sqs")]
            AnyDelivery::Sqs(delivery) => f.debug_tuple("Sqs").field(delivery.message()).finish(),
        }
    }
}

/// Opens a source from its URL (see the module docs for the forms).
pub async fn connect(url: &str) -> Result<AnySource, ConnectError> {
    let unknown = || ConnectError::UnknownScheme {
        url: oncely_core::url::redact_password(url),
    };
    match BrokerKind::from_url(url).map_err(|_| unknown())? {
        #[cfg(feature = "nats")]
        BrokerKind::Nats => Ok(AnySource::Nats(Box::new(
            oncely_nats::NatsSource::connect(url).await?,
        ))),
        #[cfg(feature = "rabbitmq")]
        BrokerKind::RabbitMq => Ok(AnySource::Amqp(Box::new(
            oncely_rabbitmq::AmqpSource::connect(url).await?,
        ))),
        #[cfg(feature = "kafka")]
        BrokerKind::Kafka => Ok(AnySource::Kafka(Box::new(
            oncely_kafka::KafkaSource::connect(url).await?,
        ))),
        #[cfg(feature = "sqs")]
        BrokerKind::Sqs => Ok(AnySource::Sqs(Box::new(
            oncely_sqs::SqsSource::connect(url).await?,
        ))),
        // A broker this build leaves out (its feature is off); unreachable in a full build.
        #[allow(unreachable_patterns)]
        _ => Err(unknown()),
    }
}

// Each arm forwards to the broker's own type. Sources are boxed: they differ a lot in size.
macro_rules! each {
    ($value:expr, $inner:ident => $body:expr) => {
        match $value {
            #[cfg(feature = "nats")]
            AnyDelivery::Nats($inner) => $body,
            #[cfg(feature = "rabbitmq")]
            AnyDelivery::Amqp($inner) => $body,
            #[cfg(feature = "kafka")]
            AnyDelivery::Kafka($inner) => $body,
            #[cfg(feature = "sqs")]
            AnyDelivery::Sqs($inner) => $body,
        }
    };
}

#[async_trait]
impl Source for AnySource {
    type Delivery = AnyDelivery;

    async fn next(&mut self) -> Option<Result<AnyDelivery, BrokerError>> {
        match self {
            #[cfg(feature = "nats")]
            AnySource::Nats(source) => source.next().await.map(|d| d.map(AnyDelivery::Nats)),
            #[cfg(feature = "rabbitmq")]
            AnySource::Amqp(source) => source.next().await.map(|d| d.map(AnyDelivery::Amqp)),
            #[cfg(feature = "kafka")]
            AnySource::Kafka(source) => source.next().await.map(|d| d.map(AnyDelivery::Kafka)),
            #[cfg(feature = "sqs")]
            AnySource::Sqs(source) => source.next().await.map(|d| d.map(AnyDelivery::Sqs)),
        }
    }
}

#[async_trait]
impl Delivery for AnyDelivery {
    fn message(&self) -> &Message {
        each!(self, d => d.message())
    }

    async fn ack(&self) -> Result<(), BrokerError> {
        each!(self, d => d.ack().await)
    }

    async fn redeliver(&self, after: Duration) -> Result<(), BrokerError> {
        each!(self, d => d.redeliver(after).await)
    }

    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), BrokerError> {
        each!(self, d => d.dead_letter(letter).await)
    }

    async fn in_progress(&self) -> Result<(), BrokerError> {
        each!(self, d => d.in_progress().await)
    }
}
