//! The outbox relay by URL: what `oncely relay` runs.
//!
//! Enqueue with [`crate::outbox`] in your transaction (the store crate adds `enqueue` for its
//! connection type: [`crate::postgres::outbox::PostgresOutbox`]); run a [`Relay`] from the
//! outbox's database to a broker:
//!
//! | `--outbox` URL | table | crate |
//! |---|---|---|
//! | `postgres://USER@HOST/DB` (`postgresql://` too) | `oncely_outbox`, created by the store's migrations | `oncely-postgres` |
//!
//! | `--to` URL | publishes | crate |
//! |---|---|---|
//! | `nats://[USER:PASS@]HOST[:PORT][/SUBJECT]` | JetStream, `Nats-Msg-Id` = the row's id, waits for the stream's ack | `oncely-nats` |
//! | `amqp://[USER:PASS@]HOST[:PORT][/VHOST]/ROUTING_KEY[?exchange=NAME]` | RabbitMQ, persistent, `message_id` = the row's id, publisher confirms | `oncely-rabbitmq` |
//!
//! A row's own destination (subject / routing key) replaces the URL's.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use oncely::relay::{self, Relay};
//!
//! let outbox = relay::connect_outbox("postgres://postgres@127.0.0.1/test").await?;
//! let publisher = relay::connect_publisher("nats://127.0.0.1:4222/orders.events").await?;
//! let report = Relay::new(outbox, publisher).run(std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub use oncely_relay::{
    DEFAULT_BATCH, DEFAULT_POLL_INTERVAL, DEFAULT_RETENTION, Relay, RelayError, RelayReport,
    publish_in_order,
};

use oncely_core::outbox::Publisher;
use oncely_core::url::redact_password;

/// Why an outbox or a broker URL could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayConnectError {
    /// No outbox of this build takes the URL.
    #[error(
        "no outbox at `{url}`: the outbox table lives in PostgreSQL in this build (postgres://USER@HOST/DB)"
    )]
    UnknownOutbox {
        /// The URL, password redacted.
        url: String,
    },
    /// No broker of this build takes the URL.
    #[error(
        "no broker for `{url}`: use nats://HOST[:PORT]/SUBJECT (NATS JetStream) or amqp://HOST[/VHOST]/QUEUE[?exchange=NAME] (RabbitMQ)"
    )]
    UnknownBroker {
        /// The URL, password redacted.
        url: String,
    },
    /// The outbox's database refused.
    #[error(transparent)]
    Store(#[from] oncely_core::Error),
    /// NATS refused or the URL is invalid.
    #[cfg(feature = "nats")]
    #[error(transparent)]
    Nats(#[from] oncely_nats::Error),
    /// RabbitMQ refused or the URL is invalid.
    #[cfg(feature = "rabbitmq")]
    #[error(transparent)]
    Amqp(#[from] oncely_rabbitmq::AmqpError),
}

/// The outbox table of the database at `url`, migrated (the table created) unless the URL says
/// `oncely_migrate=false`.
#[cfg(feature = "postgres")]
pub async fn connect_outbox(
    url: &str,
) -> Result<oncely_postgres::outbox::PostgresOutboxStore, RelayConnectError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(RelayConnectError::UnknownOutbox {
            url: redact_password(url),
        });
    }
    Ok(oncely_postgres::outbox::PostgresOutboxStore::connect(url).await?)
}

/// A publisher to the broker at `url` (see the module docs for the forms).
pub async fn connect_publisher(url: &str) -> Result<Box<dyn Publisher>, RelayConnectError> {
    #[cfg(feature = "nats")]
    if url.starts_with("nats://") || url.starts_with("tls://") {
        return Ok(Box::new(oncely_nats::NatsPublisher::connect(url).await?));
    }
    #[cfg(feature = "rabbitmq")]
    if url.starts_with("amqp://") || url.starts_with("amqps://") {
        return Ok(Box::new(
            oncely_rabbitmq::AmqpPublisher::connect(url).await?,
        ));
    }
    Err(RelayConnectError::UnknownBroker {
        url: redact_password(url),
    })
}
