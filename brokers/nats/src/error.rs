//! What can go wrong setting a source up, each saying what to do about it.

use oncely_core::BoxError;

/// The broker's name in [`BrokerError`](oncely_core::consumer::BrokerError)s.
pub const BROKER: &str = "nats";

/// Setting up a [`NatsSource`](crate::NatsSource) failed. Failures while consuming are
/// [`BrokerError`](oncely_core::consumer::BrokerError)s, which the runner handles.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL cannot be used.
    #[error("invalid NATS URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL, its password replaced.
        url: String,
        /// What is wrong, and what is accepted.
        reason: String,
    },
    /// No connection to the server.
    #[error("NATS server unreachable at {server}: {source} (is nats-server running?)")]
    Unreachable {
        /// The server, its password replaced.
        server: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// The stream does not exist.
    #[error("no JetStream stream {stream} at {server}: create it or check the name")]
    NoStream {
        /// The stream.
        stream: String,
        /// The server.
        server: String,
    },
    /// The durable consumer does not exist and the options say not to create it.
    #[error(
        "no consumer {consumer} on JetStream stream {stream} at {server}: create it, \
         or leave out `create=false` to let oncely create it"
    )]
    NoConsumer {
        /// The stream.
        stream: String,
        /// The consumer.
        consumer: String,
        /// The server.
        server: String,
    },
    /// The consumer exists but cannot be used as it is.
    #[error(
        "consumer {consumer} on JetStream stream {stream} at {server} cannot be used: {reason}"
    )]
    UnusableConsumer {
        /// The stream.
        stream: String,
        /// The consumer.
        consumer: String,
        /// The server.
        server: String,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// Dead letters would be lost, or consumed again.
    #[error("dead-letter subject {subject} at {server}: {reason}")]
    DeadLetters {
        /// The dead-letter subject.
        subject: String,
        /// The server.
        server: String,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// A JetStream request failed.
    #[error("{what} at {server}: {source}")]
    JetStream {
        /// What was being done.
        what: String,
        /// The server.
        server: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
}
