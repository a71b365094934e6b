//! Which store or broker a URL names, from its scheme: each scheme is listed here once, and
//! every dispatch on a URL (the store, the outbox, the source, the publisher, the bench, the CLI)
//! matches on these kinds.

use oncely_core::url::scheme;

/// Why a URL names no store, or no broker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemeError {
    /// The URL has no `scheme:` in front.
    #[error("it has no scheme")]
    Missing,
    /// A scheme oncely has no store (or no broker) for.
    #[error("unknown scheme `{scheme}`")]
    Unknown {
        /// The URL's scheme.
        scheme: String,
    },
}

/// The store a URL names: every store oncely has, whether or not this build includes it
/// ([`StoreKind::is_built`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreKind {
    /// `memory:` (`oncely-memory`).
    Memory,
    /// `sqlite:PATH`, `sqlite://PATH` (`oncely-sqlite`).
    Sqlite,
    /// `postgres://`, `postgresql://` (`oncely-postgres`).
    Postgres,
    /// `mysql://`, `mariadb://` (`oncely-mysql`).
    MySql,
    /// One Redis server: `redis://`, `redis+unix://`, `rediss://` (`oncely-redis`).
    Redis,
    /// A Redis Cluster: `redis+cluster://`, `rediss+cluster://` (`oncely-redis`).
    RedisCluster,
    /// Amazon DynamoDB: `dynamodb://` (HTTPS), `dynamodb+http://` (emulators)
    /// (`oncely-dynamodb`).
    DynamoDb,
}

impl StoreKind {
    /// Every store kind, in the order messages list them.
    pub const ALL: [StoreKind; 7] = [
        StoreKind::Memory,
        StoreKind::Sqlite,
        StoreKind::Postgres,
        StoreKind::MySql,
        StoreKind::Redis,
        StoreKind::RedisCluster,
        StoreKind::DynamoDb,
    ];

    /// The store a URL's scheme names.
    ///
    /// ```
    /// use oncely::StoreKind;
    /// assert_eq!(StoreKind::from_url("postgresql://db/app"), Ok(StoreKind::Postgres));
    /// assert!(StoreKind::from_url("ftp://x").is_err());
    /// ```
    pub fn from_url(url: &str) -> Result<Self, SchemeError> {
        let scheme = scheme(url).ok_or(SchemeError::Missing)?;
        Self::from_scheme(scheme).ok_or_else(|| SchemeError::Unknown {
            scheme: scheme.to_owned(),
        })
    }

    /// The store a scheme (`postgres`, without the `:`) names, if any.
    pub fn from_scheme(scheme: &str) -> Option<Self> {
        Some(match scheme {
            "memory" => StoreKind::Memory,
            "sqlite" => StoreKind::Sqlite,
            "postgres" | "postgresql" => StoreKind::Postgres,
            "mysql" | "mariadb" => StoreKind::MySql,
            "redis" | "redis+unix" | "rediss" => StoreKind::Redis,
            "redis+cluster" | "rediss+cluster" => StoreKind::RedisCluster,
            "dynamodb" | "dynamodb+http" => StoreKind::DynamoDb,
            _ => return None,
        })
    }

    /// Whether this build includes the store (its feature of this crate is on).
    pub fn is_built(self) -> bool {
        match self {
            StoreKind::Memory => cfg!(feature = "memory"),
            StoreKind::Sqlite => cfg!(feature = "sqlite"),
            StoreKind::Postgres => cfg!(feature = "postgres"),
            StoreKind::MySql => cfg!(feature = "mysql"),
            StoreKind::Redis | StoreKind::RedisCluster => cfg!(feature = "redis"),
            StoreKind::DynamoDb => cfg!(feature = "dynamodb"),
        }
    }

    /// The URL's form, for messages: `sqlite:PATH`, `postgres://...`.
    pub fn url_form(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory:",
            StoreKind::Sqlite => "sqlite:PATH",
            StoreKind::Postgres => "postgres://...",
            StoreKind::MySql => "mysql://...",
            StoreKind::Redis => "redis://...",
            StoreKind::RedisCluster => "redis+cluster://...",
            StoreKind::DynamoDb => "dynamodb://HOST/TABLE",
        }
    }
}

/// The broker a URL names: every broker oncely has, whether or not this build includes it
/// ([`BrokerKind::is_built`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BrokerKind {
    /// NATS JetStream: `nats://`, `tls://` (`oncely-nats`).
    Nats,
    /// RabbitMQ: `amqp://`, `amqps://` (`oncely-rabbitmq`).
    RabbitMq,
    /// Kafka: `kafka://` (`oncely-kafka`).
    Kafka,
    /// Amazon SQS: `sqs://` (HTTPS), `sqs+http://` (emulators) (`oncely-sqs`).
    Sqs,
}

impl BrokerKind {
    /// The broker a URL's scheme names.
    ///
    /// ```
    /// use oncely::BrokerKind;
    /// assert_eq!(BrokerKind::from_url("sqs+http://127.0.0.1:5999/q"), Ok(BrokerKind::Sqs));
    /// assert!(BrokerKind::from_url("postgres://db/app").is_err());
    /// ```
    pub fn from_url(url: &str) -> Result<Self, SchemeError> {
        let scheme = scheme(url).ok_or(SchemeError::Missing)?;
        Self::from_scheme(scheme).ok_or_else(|| SchemeError::Unknown {
            scheme: scheme.to_owned(),
        })
    }

    /// The broker a scheme (`nats`, without the `:`) names, if any.
    pub fn from_scheme(scheme: &str) -> Option<Self> {
        Some(match scheme {
            "nats" | "tls" => BrokerKind::Nats,
            "amqp" | "amqps" => BrokerKind::RabbitMq,
            "kafka" => BrokerKind::Kafka,
            "sqs" | "sqs+http" => BrokerKind::Sqs,
            _ => return None,
        })
    }

    /// Whether this build includes the broker (its feature of this crate is on).
    pub fn is_built(self) -> bool {
        match self {
            BrokerKind::Nats => cfg!(feature = "nats"),
            BrokerKind::RabbitMq => cfg!(feature = "rabbitmq"),
            BrokerKind::Kafka => cfg!(feature = "kafka"),
            BrokerKind::Sqs => cfg!(feature = "sqs"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_store_scheme_names_its_store() {
        for (url, kind) in [
            ("memory:", StoreKind::Memory),
            ("memory:?capacity=3", StoreKind::Memory),
            ("sqlite:oncely.db", StoreKind::Sqlite),
            ("sqlite:///var/lib/oncely.db", StoreKind::Sqlite),
            ("postgres://u@h/db", StoreKind::Postgres),
            ("postgresql://u@h/db", StoreKind::Postgres),
            ("mysql://u@h/db", StoreKind::MySql),
            ("mariadb://u@h/db", StoreKind::MySql),
            ("redis://h:6379", StoreKind::Redis),
            ("rediss://h:6379", StoreKind::Redis),
            ("redis+unix:///tmp/redis.sock", StoreKind::Redis),
            ("redis+cluster://h1:7000,h2:7000", StoreKind::RedisCluster),
            ("rediss+cluster://h1:7000", StoreKind::RedisCluster),
            (
                "dynamodb://dynamodb.eu-west-1.amazonaws.com/oncely",
                StoreKind::DynamoDb,
            ),
            ("dynamodb+http://127.0.0.1:5998/oncely", StoreKind::DynamoDb),
        ] {
            assert_eq!(StoreKind::from_url(url), Ok(kind), "{url}");
        }
        assert_eq!(StoreKind::from_url("oncely.db"), Err(SchemeError::Missing));
        assert_eq!(
            StoreKind::from_url("nats://h/S/C"),
            Err(SchemeError::Unknown {
                scheme: "nats".into()
            })
        );
    }

    #[test]
    fn every_broker_scheme_names_its_broker() {
        for (url, kind) in [
            ("nats://h:4222/S/C", BrokerKind::Nats),
            ("tls://h:4222/S/C", BrokerKind::Nats),
            ("amqp://h/%2f/q", BrokerKind::RabbitMq),
            ("amqps://h/%2f/q", BrokerKind::RabbitMq),
            ("kafka://h:9092/t?group=g", BrokerKind::Kafka),
            ("sqs://sqs.eu-west-1.amazonaws.com/q", BrokerKind::Sqs),
            ("sqs+http://127.0.0.1:5999/q", BrokerKind::Sqs),
        ] {
            assert_eq!(BrokerKind::from_url(url), Ok(kind), "{url}");
        }
        assert_eq!(BrokerKind::from_url("nourl"), Err(SchemeError::Missing));
        assert!(BrokerKind::from_url("sqlite:x").is_err());
    }
}
