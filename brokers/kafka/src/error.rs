//! What can go wrong setting a source or publisher up, each saying what to do about it.

use oncely_core::BoxError;

/// The broker's name in [`BrokerError`](oncely_core::consumer::BrokerError)s.
pub const BROKER: &str = "kafka";

/// Setting up a [`KafkaSource`](crate::KafkaSource) or [`KafkaPublisher`](crate::KafkaPublisher)
/// failed. Failures while consuming are [`BrokerError`](oncely_core::consumer::BrokerError)s,
/// which the runner handles.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL cannot be used.
    #[error("invalid Kafka URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// What is wrong, and what is accepted.
        reason: String,
    },
    /// No broker answered, or none let the client in (TLS, SASL).
    #[error("Kafka unreachable at {brokers}: {source} {hint}")]
    Unreachable {
        /// The bootstrap brokers.
        brokers: String,
        /// What to check.
        hint: &'static str,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// The topic does not exist.
    #[error(
        "no Kafka topic {topic} at {brokers}: create it (with as many partitions as consumers you want side by side)"
    )]
    NoTopic {
        /// The topic.
        topic: String,
        /// The brokers.
        brokers: String,
    },
    /// The dead-letter topic is the consumed topic: dead letters would come back as deliveries.
    #[error("the dead-letter topic {topic} is the topic consumed: name another with ?dlq=TOPIC")]
    DeadLettersLoop {
        /// The topic.
        topic: String,
    },
    /// The client refused its configuration or failed otherwise.
    #[error("Kafka client: {0}")]
    Client(#[source] BoxError),
}
