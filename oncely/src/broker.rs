//! Brokers by URL: one [`Source`] type for every broker this build includes.
//!
//! | URL | broker | crate |
//! |---|---|---|
//! | `nats://[USER:PASS@]HOST[:PORT]/STREAM/CONSUMER[?dlq=SUBJECT&ack_wait=30s&...]` | NATS JetStream | `oncely-nats` |
//! | `amqp://[USER:PASS@]HOST[:PORT][/VHOST]/QUEUE[?dlq=Q&prefetch=N]` | RabbitMQ | `oncely-rabbitmq` |
//! | `kafka://HOST[:PORT][,HOST[:PORT]...]/TOPIC?group=NAME[&dlq=TOPIC&...]` | Kafka | `oncely-kafka` |
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

/// Why a broker URL could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No broker of this build takes the URL's scheme.
    #[error(
        "no broker for `{url}`: use nats://HOST/STREAM/CONSUMER (NATS JetStream), amqp://HOST/QUEUE (RabbitMQ) or kafka://HOST/TOPIC?group=NAME (Kafka)"
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
    Amqp(#[from] oncely_rabbitmq::AmqpError),
    /// Kafka refused or the URL is invalid.
    #[cfg(feature = "kafka")]
    #[error(transparent)]
    Kafka(#[from] oncely_kafka::Error),
}

/// A source on any broker of this build.
#[derive(Debug)]
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
}

/// A delivery from any broker of this build.
#[derive(Debug)]
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
}

/// Opens a source from its URL (see the module docs for the forms).
pub async fn connect(url: &str) -> Result<AnySource, ConnectError> {
    let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or_default();
    match scheme {
        #[cfg(feature = "nats")]
        "nats" | "tls" => Ok(AnySource::Nats(Box::new(
            oncely_nats::NatsSource::connect(url).await?,
        ))),
        #[cfg(feature = "rabbitmq")]
        "amqp" | "amqps" => Ok(AnySource::Amqp(Box::new(
            oncely_rabbitmq::AmqpSource::connect(url).await?,
        ))),
        #[cfg(feature = "kafka")]
        "kafka" => Ok(AnySource::Kafka(Box::new(
            oncely_kafka::KafkaSource::connect(url).await?,
        ))),
        _ => Err(ConnectError::UnknownScheme {
            url: oncely_core::url::redact_password(url),
        }),
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
