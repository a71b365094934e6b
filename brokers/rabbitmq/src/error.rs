//! What can go wrong before the first delivery: the URL, the connection, the queues.

/// The broker's name in [`BrokerError`](oncely_core::consumer::BrokerError)s.
pub const BROKER: &str = "amqp";

/// Setting up an [`AmqpSource`](crate::AmqpSource) failed. Failures after that (receiving,
/// acking, publishing a dead letter) are [`BrokerError`](oncely_core::consumer::BrokerError)s,
/// which the runner handles.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL is not `amqp://[USER:PASSWORD@]HOST[:PORT][/VHOST]/QUEUE[?dlq=NAME&prefetch=N]`.
    #[error("invalid AMQP URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL, its password redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server could not be reached, its certificate did not verify, or it refused the login.
    #[error("cannot connect to RabbitMQ at {url}: {source} {hint}")]
    Connect {
        /// The URL, its password redacted.
        url: String,
        /// What to check.
        hint: &'static str,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// The queue to consume does not exist. oncely does not create it: its arguments
    /// (durability, dead-lettering, quorum type) are the application's choice.
    #[error(
        "queue `{queue}` does not exist: declare it first (oncely consumes a queue, it does not create it)"
    )]
    QueueNotFound {
        /// The queue.
        queue: String,
    },
    /// A queue name AMQP cannot carry.
    #[error("queue name `{queue}` is longer than AMQP's 255 bytes: choose a shorter one")]
    InvalidQueueName {
        /// The name.
        queue: String,
    },
    /// An AMQP operation of the setup failed: opening a channel, declaring the dead-letter
    /// queue, setting the prefetch, starting the consumer.
    #[error("{what}: {source}")]
    Setup {
        /// What was being done.
        what: String,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
}

impl Error {
    pub(crate) fn connect(url: &crate::AmqpUrl, source: lapin::Error) -> Error {
        let hint = if oncely_core::url::is_about_tls(&source.to_string()) {
            oncely_core::url::TLS_HINT
        } else {
            "(is RabbitMQ running there? are the user, password and vhost right?)"
        };
        Error::Connect {
            url: url.redacted_connection(),
            hint,
            source,
        }
    }

    pub(crate) fn setup(what: impl Into<String>) -> impl FnOnce(lapin::Error) -> Error {
        let what = what.into();
        move |source| Error::Setup { what, source }
    }
}
