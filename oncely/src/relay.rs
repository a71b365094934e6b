//! The outbox relay by URL: what `oncely relay` runs.
//!
//! Enqueue with [`crate::outbox`] in your transaction (the store crate adds `enqueue` for its
//! connection type: [`crate::postgres::outbox::PostgresOutbox`]); run a [`Relay`] from the
//! outbox's database to a broker:
//!
//! | `--outbox` URL | table | crate |
//! |---|---|---|
//! | `postgres://USER@HOST/DB` (`postgresql://` too) | `oncely_outbox`, created by the store's migrations | `oncely-postgres` |
//! | `mysql://USER@HOST/DB` (`mariadb://` too) | `oncely_outbox`, created by the store's migrations | `oncely-mysql` |
//! | `sqlite:PATH` (`sqlite://` forms too) | `oncely_outbox` in the file, created by the store's migrations; one relay at a time per file (a lease) | `oncely-sqlite` |
//!
//! | `--to` URL | publishes | crate |
//! |---|---|---|
//! | `nats://[USER:PASS@]HOST[:PORT][/SUBJECT]` | JetStream, `Nats-Msg-Id` = the row's id, waits for the stream's ack | `oncely-nats` |
//! | `amqp://[USER:PASS@]HOST[:PORT][/VHOST]/ROUTING_KEY[?exchange=NAME]` | RabbitMQ, persistent, `message_id` = the row's id, publisher confirms | `oncely-rabbitmq` |
//! | `kafka://HOST[:PORT][,HOST[:PORT]...][/TOPIC]` | Kafka, the idempotent producer with acks from all in-sync replicas, key = the row's aggregate, `Oncely-Message-Id` header = the row's id | `oncely-kafka` |
//! | `sqs://HOST[:PORT][/QUEUE][?region=R]` (HTTPS), `sqs+http://HOST:PORT[/QUEUE]` (emulators) | Amazon SQS, one `SendMessage` per row, `Oncely-Message-Id` attribute = the row's id; on a `.fifo` queue `MessageGroupId` = the row's aggregate and `MessageDeduplicationId` = its id | `oncely-sqs` |
//!
//! A row's own destination (subject / routing key / topic / queue) replaces the URL's.
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
    BACKLOG_ROWS, DEFAULT_BATCH, DEFAULT_PARK_AFTER, DEFAULT_POLL_INTERVAL, DEFAULT_RETENTION,
    OLDEST_UNSENT_SECONDS, PUBLISH_SECONDS, Published, ROWS, Relay, RelayError, RelayProgress,
    RelayReport, describe, publish_in_order, record_backlog,
};

use std::time::Duration;

use oncely_core::async_trait;
use oncely_core::outbox::{
    AfterParked, Backlog, Enqueued, OutboxBatch, OutboxId, OutboxRow, OutboxStore, ParkedRow,
    Publisher, Refused,
};
use oncely_core::url::redact_password;

use crate::{BrokerKind, StoreKind};

/// Why an outbox or a broker URL could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayConnectError {
    /// No outbox of this build takes the URL.
    #[error(
        "no outbox at `{url}`: the outbox table lives in PostgreSQL (postgres://USER@HOST/DB), MySQL/MariaDB (mysql://USER@HOST/DB) or SQLite (sqlite:PATH)"
    )]
    UnknownOutbox {
        /// The URL, password redacted.
        url: String,
    },
    /// No broker of this build takes the URL.
    #[error(
        "no broker for `{url}`: use nats://HOST[:PORT]/SUBJECT (NATS JetStream), amqp://HOST[/VHOST]/QUEUE[?exchange=NAME] (RabbitMQ), kafka://HOST[:PORT]/TOPIC (Kafka) or sqs://HOST[:PORT]/QUEUE (SQS; sqs+http:// for emulators)"
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

/// The outbox table of the database at `url` (PostgreSQL, MySQL/MariaDB or SQLite), migrated
/// (the table created) unless the URL says `oncely_migrate=false` (`migrate=false` for SQLite).
pub async fn connect_outbox(url: &str) -> Result<AnyOutbox, RelayConnectError> {
    let unknown = || RelayConnectError::UnknownOutbox {
        url: redact_password(url),
    };
    match StoreKind::from_url(url).map_err(|_| unknown())? {
        StoreKind::Postgres => Ok(AnyOutbox::Postgres(
            oncely_postgres::outbox::PostgresOutboxStore::connect(url).await?,
        )),
        #[cfg(feature = "mysql")]
        StoreKind::MySql => Ok(AnyOutbox::MySql(
            oncely_mysql::outbox::MySqlOutboxStore::connect(url).await?,
        )),
        #[cfg(feature = "sqlite")]
        StoreKind::Sqlite => Ok(AnyOutbox::Sqlite(
            oncely_sqlite::outbox::SqliteOutboxStore::connect(url).await?,
        )),
        // A store with no outbox table, or one this build leaves out.
        _ => Err(unknown()),
    }
}

/// An outbox table in any database of this build.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum AnyOutbox {
    /// In PostgreSQL.
    Postgres(oncely_postgres::outbox::PostgresOutboxStore),
    /// In MySQL/MariaDB.
    #[cfg(feature = "mysql")]
    MySql(oncely_mysql::outbox::MySqlOutboxStore),
    /// In a SQLite file.
    #[cfg(feature = "sqlite")]
    Sqlite(oncely_sqlite::outbox::SqliteOutboxStore),
}

/// A batch of an [`AnyOutbox`].
#[derive(Debug)]
#[non_exhaustive]
pub enum AnyBatch {
    /// Of PostgreSQL.
    Postgres(oncely_postgres::outbox::PostgresOutboxBatch),
    /// Of MySQL/MariaDB.
    #[cfg(feature = "mysql")]
    MySql(oncely_mysql::outbox::MySqlOutboxBatch),
    /// Of SQLite.
    #[cfg(feature = "sqlite")]
    Sqlite(oncely_sqlite::outbox::SqliteOutboxBatch),
}

#[async_trait]
impl OutboxStore for AnyOutbox {
    type Batch = AnyBatch;

    async fn origin(&self) -> oncely_core::Result<String> {
        match self {
            AnyOutbox::Postgres(s) => s.origin().await,
            #[cfg(feature = "mysql")]
            AnyOutbox::MySql(s) => s.origin().await,
            #[cfg(feature = "sqlite")]
            AnyOutbox::Sqlite(s) => s.origin().await,
        }
    }

    async fn take(
        &self,
        limit: usize,
        after_parked: AfterParked,
    ) -> oncely_core::Result<Option<AnyBatch>> {
        Ok(match self {
            AnyOutbox::Postgres(s) => s.take(limit, after_parked).await?.map(AnyBatch::Postgres),
            #[cfg(feature = "mysql")]
            AnyOutbox::MySql(s) => s.take(limit, after_parked).await?.map(AnyBatch::MySql),
            #[cfg(feature = "sqlite")]
            AnyOutbox::Sqlite(s) => s.take(limit, after_parked).await?.map(AnyBatch::Sqlite),
        })
    }

    async fn purge(&self, retention: Duration, limit: usize) -> oncely_core::Result<u64> {
        match self {
            AnyOutbox::Postgres(s) => s.purge(retention, limit).await,
            #[cfg(feature = "mysql")]
            AnyOutbox::MySql(s) => s.purge(retention, limit).await,
            #[cfg(feature = "sqlite")]
            AnyOutbox::Sqlite(s) => s.purge(retention, limit).await,
        }
    }

    async fn backlog(&self) -> oncely_core::Result<Backlog> {
        match self {
            AnyOutbox::Postgres(s) => s.backlog().await,
            #[cfg(feature = "mysql")]
            AnyOutbox::MySql(s) => s.backlog().await,
            #[cfg(feature = "sqlite")]
            AnyOutbox::Sqlite(s) => s.backlog().await,
        }
    }

    async fn parked(&self, limit: usize) -> oncely_core::Result<Vec<ParkedRow>> {
        match self {
            AnyOutbox::Postgres(s) => s.parked(limit).await,
            #[cfg(feature = "mysql")]
            AnyOutbox::MySql(s) => s.parked(limit).await,
            #[cfg(feature = "sqlite")]
            AnyOutbox::Sqlite(s) => s.parked(limit).await,
        }
    }

    async fn retry_parked(&self, ids: &[OutboxId]) -> oncely_core::Result<u64> {
        match self {
            AnyOutbox::Postgres(s) => s.retry_parked(ids).await,
            #[cfg(feature = "mysql")]
            AnyOutbox::MySql(s) => s.retry_parked(ids).await,
            #[cfg(feature = "sqlite")]
            AnyOutbox::Sqlite(s) => s.retry_parked(ids).await,
        }
    }

    async fn drop_parked(&self, ids: &[OutboxId]) -> oncely_core::Result<u64> {
        match self {
            AnyOutbox::Postgres(s) => s.drop_parked(ids).await,
            #[cfg(feature = "mysql")]
            AnyOutbox::MySql(s) => s.drop_parked(ids).await,
            #[cfg(feature = "sqlite")]
            AnyOutbox::Sqlite(s) => s.drop_parked(ids).await,
        }
    }

    async fn enqueued(&self) -> oncely_core::Result<Option<Enqueued>> {
        match self {
            AnyOutbox::Postgres(s) => s.enqueued().await,
            #[cfg(feature = "mysql")]
            AnyOutbox::MySql(s) => s.enqueued().await,
            #[cfg(feature = "sqlite")]
            AnyOutbox::Sqlite(s) => s.enqueued().await,
        }
    }
}

#[async_trait]
impl OutboxBatch for AnyBatch {
    fn rows(&self) -> &[OutboxRow] {
        match self {
            AnyBatch::Postgres(b) => b.rows(),
            #[cfg(feature = "mysql")]
            AnyBatch::MySql(b) => b.rows(),
            #[cfg(feature = "sqlite")]
            AnyBatch::Sqlite(b) => b.rows(),
        }
    }

    async fn finish(self, sent: &[OutboxId], refused: &[Refused]) -> oncely_core::Result<u64> {
        match self {
            AnyBatch::Postgres(b) => b.finish(sent, refused).await,
            #[cfg(feature = "mysql")]
            AnyBatch::MySql(b) => b.finish(sent, refused).await,
            #[cfg(feature = "sqlite")]
            AnyBatch::Sqlite(b) => b.finish(sent, refused).await,
        }
    }
}

/// A publisher to the broker at `url` (see the module docs for the forms).
pub async fn connect_publisher(url: &str) -> Result<Box<dyn Publisher>, RelayConnectError> {
    let unknown = || RelayConnectError::UnknownBroker {
        url: redact_password(url),
    };
    match BrokerKind::from_url(url).map_err(|_| unknown())? {
        #[cfg(feature = "nats")]
        BrokerKind::Nats => Ok(Box::new(oncely_nats::NatsPublisher::connect(url).await?)),
        #[cfg(feature = "rabbitmq")]
        BrokerKind::RabbitMq => Ok(Box::new(
            oncely_rabbitmq::AmqpPublisher::connect(url).await?,
        )),
        #[cfg(feature = "kafka")]
        BrokerKind::Kafka => Ok(Box::new(oncely_kafka::KafkaPublisher::connect(url).await?)),
        #[cfg(feature = "sqs")]
        BrokerKind::Sqs => Ok(Box::new(oncely_sqs::SqsPublisher::connect(url).await?)),
        // A broker this build leaves out (its feature is off); unreachable in a full build.
        #[allow(unreachable_patterns)]
        _ => Err(unknown()),
    }
}
