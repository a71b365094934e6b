//! # oncely
//!
//! Handling a message N times has the same effect as handling it once.
//!
//! Brokers (Kafka, RabbitMQ, NATS JetStream, SQS) deliver at least once and HTTP clients
//! retry, so every handler sees duplicates: a crash after the effect and before the ack, a
//! failed offset commit, a rebalance, an impatient client. oncely records each operation's key
//! in a store before the work and its outcome after, so a redelivery is recognised and answered
//! from the record instead of repeating the effect.
//!
//! This crate is the front door: what an application uses, and [`connect`], which opens any
//! store from a URL.
//!
//! | where | what |
//! |---|---|
//! | the crate root | [`Oncely`] and its answers ([`ClaimOutcome`], [`RunOutcome`], ...), [`Key`] and [`Scope`], [`Fingerprint`] and which fields count ([`PayloadFingerprint`]), keys from JSON by pointer or JMESPath ([`CompositeKey`], [`Selector`]), [`Error`], clocks, the [`Consumer`] runner, [`connect`], the store or broker a URL names ([`StoreKind`], [`BrokerKind`]), [`duration`]s |
//! | [`consumer`] | the consumer contract: [`Handler`](consumer::Handler), [`OncelyHandler`](consumer::OncelyHandler), [`Message`](consumer::Message), [`KeySource`](consumer::KeySource), [`RetryPolicy`](consumer::RetryPolicy), ... |
//! | [`inbox`], [`outbox`] | the transactional inbox and outbox (each SQL store crate adds their statements: `sqlite::inbox`, ...) |
//! | `broker`, `relay` | a source or an outbox relay opened from a URL (features `nats`, `rabbitmq`, `kafka`, `sqs`, `relay`) |
//! | `memory`, `sqlite`, `postgres`, `mysql`, `redis`, `dynamodb`; `nats`, `rabbitmq`, `kafka`, `sqs` | each store's and broker's own crate (one feature each) |
//! | `testing` | prove a handler idempotent and crash-safe (feature `testing`) |
//! | [`backend`] | what a store or broker of your own implements, and the rules every store shares |
//!
//! | URL | store | crate |
//! |---|---|---|
//! | `memory:` or `memory:?capacity=N` | in-process, bounded | `oncely-memory` |
//! | `sqlite:PATH` (`sqlite:oncely.db`), `sqlite://PATH` | embedded, durable, the default | `oncely-sqlite` |
//! | `postgres://USER@HOST/DB` (`postgresql://` too) | shared by many instances | `oncely-postgres` |
//! | `mysql://USER@HOST/DB` (`mariadb://` too) | shared by many instances | `oncely-mysql` |
//! | `redis://HOST[:PORT][/DB]`, `redis+cluster://H1:P1,H2:P2` | shared, in memory | `oncely-redis` |
//! | `dynamodb://HOST/TABLE` (`dynamodb+http://` for an emulator) | shared, managed by AWS | `oncely-dynamodb` |
//!
//! `cache=N` (and `cache_ttl=DURATION`, default `60s`) on any of them puts a local cache of
//! up to N completed records in front of the store (`oncely-cache`, feature `cache`): a
//! duplicate this process has seen done is answered without a round trip; a `forget` in
//! another process is seen here within `cache_ttl`.
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> oncely::Result<()> {
//! use oncely::{ClaimOutcome, Key, Oncely, Scope};
//!
//! # let dir = tempfile::tempdir().unwrap();
//! # let url = format!("sqlite:{}", dir.path().join("oncely.db").display());
//! let store = oncely::connect(&url).await?; // e.g. "sqlite:oncely.db"
//! let oncely = Oncely::new(store);
//! let key = Key::new("evt-2026-0001")?;
//!
//! if let ClaimOutcome::New(claim) = oncely.claim(&Scope::default(), &key, None).await? {
//!     // ... the effect ...
//!     oncely.complete(&claim, b"done").await?;
//! }
//! assert!(matches!(oncely.claim(&Scope::default(), &key, None).await?, ClaimOutcome::Duplicate(_)));
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

use std::sync::Arc;

// Claims and their answers.
pub use oncely_core::{
    Claim, ClaimOutcome, DEFAULT_LEASE, DEFAULT_RETENTION, ForgetOutcome, Oncely, PurgeRun, Record,
    RecordState, RunError, RunOutcome, Steps, StoreStats, VersionCheck,
};
// Keys, scopes and fingerprints.
pub use oncely_core::{
    Fingerprint, FingerprintError, FingerprintSpecError, Key, KeyError, MAX_KEY_BYTES,
    MAX_SCOPE_BYTES, PayloadFingerprint, Scope, canonical_json, canonical_json_text,
};
// Keys from JSON payloads, by JSON pointer or JMESPath.
pub use oncely_core::{
    CompositeKey, ExtractError, JsonKeyError, KeySpecError, Selector, payload_hash_key,
};
// Errors.
pub use oncely_core::{BoxError, Error, LostReason, OutcomeUnknown, Result};
// Time.
pub use oncely_core::{Clock, ManualClock, SystemClock, Timestamp};
// What `connect` answers, and the macro a `consumer::Handler` is implemented with.
pub use oncely_core::{Store, async_trait};

/// The consumer runner: drives a broker's deliveries through the consumer contract
/// ([`consumer`]).
pub use oncely_consumer::{Consumer, Report as ConsumerReport};

pub mod backend;
mod scheme;

pub use scheme::{BrokerKind, SchemeError, StoreKind};

/// Durations as oncely writes them, in command-line flags and URL options alike (`500ms`,
/// `90s`, `15m`, `24h`, `7d`, `1h30m`).
pub use oncely_core::duration;
/// The metrics the library records through the `metrics` facade, and their names (the
/// consumer's and the relay's are in [`consumer`] and [`relay`]).
pub use oncely_core::telemetry;
/// W3C Trace Context: how a trace crosses oncely.
pub use oncely_core::trace;

/// The consumer contract: what the runner ([`Consumer`]) does with each delivery, and the
/// handler it calls (see [`oncely_core::consumer`] for the rules).
pub mod consumer {
    pub use oncely_consumer::{
        Consumer, DELIVERIES, HANDLER_SECONDS, MAX_RECEIVE_BACKOFF, Report, current_trace,
        describe, service,
    };
    pub use oncely_core::consumer::{
        ATTEMPTS_HEADER, BrokerError, DEAD_LETTER_ID_HEADER, DeadLetter, Delivery, ERROR_HEADER,
        Handled, Handler, HandlerError, KEY_HEADER, KeySource, MESSAGE_ID_HEADER, Message, NoKey,
        OffsetStore, OncelyHandler, Position, RetryPolicy, SOURCE_HEADER, Settled, Source,
    };
}

/// Dead letters moved back to where they came from, each at most once (see
/// [`oncely_consumer::redrive`]); what `oncely redrive` runs.
pub mod redrive {
    pub use oncely_consumer::redrive::{
        DEFAULT_IDLE, Redrive, RedriveReport, RedriveStopped, StopReason,
    };
    pub use oncely_core::redrive::{
        History, LetterError, PREVIOUS_PREFIX, REDRIVES_HEADER, dead_letter_key, filter_input,
        redriven,
    };
}

/// The transactional inbox: a claim taken inside your own database transaction, so the effect
/// and its record commit together (see [`oncely_core::inbox`]). Each SQL store crate adds the
/// statements: `sqlite::inbox`, `postgres::inbox`, `mysql::inbox`.
pub mod inbox {
    pub use oncely_core::inbox::{Inbox, InboxClaim};
}

/// The transactional outbox: messages enqueued in your own database transaction and published
/// by a relay (see [`oncely_core::outbox`]). Each SQL store crate adds the statements:
/// `postgres::outbox`, `mysql::outbox`, `sqlite::outbox`.
pub mod outbox {
    pub use oncely_core::outbox::{
        AfterParked, Backlog, Enqueued, MAX_DESTINATION_BYTES, Outbox, OutboxId, OutboxMessage,
        ParkedRow, Refused, message_id,
    };
}

#[cfg(any(
    feature = "nats",
    feature = "rabbitmq",
    feature = "kafka",
    feature = "sqs"
))]
pub mod broker;

#[cfg(feature = "relay")]
pub mod relay;
/// The Kafka source for the consumer runner and the relay's Kafka producer.
#[cfg(feature = "kafka")]
pub use oncely_kafka as kafka;
/// The NATS JetStream source for the consumer runner.
#[cfg(feature = "nats")]
pub use oncely_nats as nats;
/// The RabbitMQ source for the consumer runner.
#[cfg(feature = "rabbitmq")]
pub use oncely_rabbitmq as rabbitmq;
/// The Amazon SQS source for the consumer runner and the relay's SQS publisher.
#[cfg(feature = "sqs")]
pub use oncely_sqs as sqs;

/// The in-memory store.
#[cfg(feature = "memory")]
pub use oncely_memory as memory;
/// The MySQL/MariaDB store and its transactional inbox.
#[cfg(feature = "mysql")]
pub use oncely_mysql as mysql;
/// The PostgreSQL store and its transactional inbox.
#[cfg(feature = "postgres")]
pub use oncely_postgres as postgres;
/// The Redis store (single server or Redis Cluster).
#[cfg(feature = "redis")]
pub use oncely_redis as redis;

/// The Amazon DynamoDB store.
#[cfg(feature = "dynamodb")]
pub use oncely_dynamodb as dynamodb;
/// The SQLite store and its transactional inbox.
#[cfg(feature = "sqlite")]
pub use oncely_sqlite as sqlite;

#[cfg(feature = "testing")]
pub mod testing;

// Every Rust example in the README is compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

/// The store used when none is given: `sqlite:oncely.db` in the working directory.
pub const DEFAULT_STORE_URL: &str = "sqlite:oncely.db";

/// Opens the store a URL names. See the crate docs for the schemes.
///
/// A URL this build cannot open is an [`Error::InvalidUrl`] naming the schemes it can; a store
/// that cannot be opened is an [`Error::Unavailable`].
pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
    let (store_url, cache) = cache_params(url)?;
    let store = connect_store(&store_url).await?;
    match cache {
        None => Ok(store),
        #[cfg(feature = "cache")]
        Some(CacheParams { capacity, ttl }) => {
            let ttl = ttl.unwrap_or(oncely_cache::DEFAULT_TTL);
            let options = oncely_cache::CacheOptions::new(capacity, ttl);
            Ok(Arc::new(oncely_cache::CachedStore::new(store, options)))
        }
        #[cfg(not(feature = "cache"))]
        Some(_) => Err(invalid(
            url,
            "cache=N needs the `cache` feature, not in this build",
        )),
    }
}

/// `cache=N` and `cache_ttl=DURATION` of a store URL.
#[cfg_attr(not(feature = "cache"), allow(dead_code))]
struct CacheParams {
    capacity: u64,
    ttl: Option<std::time::Duration>,
}

/// Takes `cache=N` and `cache_ttl=DURATION` out of `url`: the store behind never sees them.
fn cache_params(url: &str) -> Result<(String, Option<CacheParams>)> {
    use oncely_core::url::take_param;
    let (store_url, capacity) = take_param(url, "cache");
    let (store_url, ttl) = take_param(&store_url, "cache_ttl");
    let Some(capacity) = capacity else {
        return match ttl {
            Some(_) => Err(invalid(
                url,
                "cache_ttl needs cache=N (the most records cached)",
            )),
            None => Ok((store_url, None)),
        };
    };
    let capacity = capacity
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| invalid(url, "cache must be a whole number of records, at least 1"))?;
    let ttl = ttl
        .map(|ttl| {
            oncely_core::duration::parse_positive(&ttl)
                .map_err(|e| invalid(url, &format!("cache_ttl: {e}")))
        })
        .transpose()?;
    Ok((store_url, Some(CacheParams { capacity, ttl })))
}

async fn connect_store(url: &str) -> Result<Arc<dyn Store>> {
    let kind = StoreKind::from_url(url).map_err(|error| {
        let reason = match error {
            SchemeError::Unknown { scheme } => format!("unknown store scheme `{scheme}`"),
            other => other.to_string(),
        };
        invalid(url, &with_supported(&reason))
    })?;
    match kind {
        #[cfg(feature = "memory")]
        StoreKind::Memory => {
            let capacity = match query_param(url, "capacity") {
                Some(v) => v
                    .parse()
                    .map_err(|_| invalid(url, "capacity must be a whole number"))?,
                None => oncely_memory::DEFAULT_CAPACITY,
            };
            Ok(Arc::new(oncely_memory::MemoryStore::with_capacity(
                capacity,
            )))
        }
        #[cfg(feature = "sqlite")]
        StoreKind::Sqlite => {
            let options: oncely_sqlite::SqliteOptions = url.parse()?;
            Ok(Arc::new(oncely_sqlite::SqliteStore::open(options)?))
        }
        #[cfg(feature = "postgres")]
        StoreKind::Postgres => Ok(Arc::new(
            oncely_postgres::PostgresStore::connect(url).await?,
        )),
        #[cfg(feature = "mysql")]
        StoreKind::MySql => Ok(Arc::new(oncely_mysql::MySqlStore::connect(url).await?)),
        #[cfg(feature = "redis")]
        StoreKind::Redis | StoreKind::RedisCluster => {
            Ok(Arc::new(oncely_redis::RedisStore::connect(url).await?))
        }
        #[cfg(feature = "dynamodb")]
        StoreKind::DynamoDb => Ok(Arc::new(oncely_dynamodb::DynamoStore::connect(url).await?)),
        // A store this build leaves out (its feature is off); unreachable in a full build.
        #[allow(unreachable_patterns)]
        _ => Err(invalid(
            url,
            &with_supported(&format!(
                "the `{}` store is not in this build",
                oncely_core::url::scheme(url).unwrap_or_default()
            )),
        )),
    }
}

#[cfg_attr(not(feature = "memory"), allow(dead_code))]
fn query_param<'a>(url: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = url.split_once('?')?;
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn invalid(url: &str, reason: &str) -> Error {
    Error::InvalidUrl {
        url: oncely_core::url::redact_password(url),
        reason: reason.to_owned(),
    }
}

/// `reason`, followed by the stores this build opens.
fn with_supported(reason: &str) -> String {
    let supported: Vec<&str> = StoreKind::ALL
        .into_iter()
        .filter(|kind| kind.is_built())
        .map(StoreKind::url_form)
        .collect();
    format!("{reason} (supported: {})", supported.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_and_future_schemes_are_clear_errors() {
        for url in ["ftp://x", "nourl", "cassandra://localhost/0"] {
            let err = connect(url).await.unwrap_err();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{url}: {err}");
            assert!(err.to_string().contains("supported:"), "{err}");
        }
    }

    #[tokio::test]
    async fn memory_capacity_is_parsed_and_enforced() {
        let store = connect("memory:?capacity=1").await.unwrap();
        let oncely = Oncely::new(store);
        oncely
            .claim(&Scope::default(), &Key::new("a").unwrap(), None)
            .await
            .unwrap();
        let full = oncely
            .claim(&Scope::default(), &Key::new("b").unwrap(), None)
            .await;
        assert!(
            matches!(full, Err(Error::StoreFull { capacity: 1 })),
            "{full:?}"
        );
        assert!(matches!(
            connect("memory:?capacity=lots").await,
            Err(Error::InvalidUrl { .. })
        ));
    }
}
