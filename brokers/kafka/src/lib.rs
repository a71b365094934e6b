//! # oncely-kafka
//!
//! Kafka as a source for the oncely consumer runner
//! ([`oncely-consumer`](https://docs.rs/oncely-consumer)), and as a destination of the outbox
//! relay: exactly one effect per key over Kafka's at-least-once delivery.
//!
//! Kafka redelivers from the group's last committed offset: after a crash, a rebalance, a
//! failed commit. [`KafkaSource`] is a consumer group member; the runner
//! ([`Consumer`](https://docs.rs/oncely-consumer)) takes each message's key, calls your handler,
//! and settles the message by the consumer contract ([`oncely_core::consumer`]):
//!
//! | the handler says | the runner does, on Kafka |
//! |---|---|
//! | done (effect committed) | the offset after it is committed (every `commit_interval`, and before a partition is given up) |
//! | duplicate (key already done) | the same, without running the handler |
//! | in progress elsewhere | the message goes back to the head of its partition and is handled again after a delay |
//! | failed | retry in place with backoff; after the last attempt, dead-letter |
//! | rejected, or no key | dead-letter at once |
//! | store unavailable | back to the head of its partition after a delay, no attempt counted |
//!
//! **Order per key.** Messages of one Kafka key are handled one at a time, in the order they
//! were produced, and a message given back stays ahead of the rest of its key; messages of
//! other keys, of the same partition or another, run beside them up to the runner's
//! concurrency (records without a key count as one key among themselves). The offset committed
//! is the first one of the partition not yet settled, so a crash redelivers only messages that
//! may be unfinished, and those after them that the dedup store answers as duplicates
//! (Confluent's parallel consumer works the same way). `order=partition` handles one message
//! of a partition at a time instead, as does the mode with offsets stored with the effect.
//!
//! **Offsets in two modes.**
//! - *Committed to Kafka after the effect* (the default). A crash between the effect and the
//!   commit redelivers messages whose effect is done; the dedup store answers them as
//!   duplicates.
//! - *Stored in your database with the effect* ([`KafkaSource::offsets`]). Your handler saves
//!   [`Message::position`](oncely_core::consumer::Message::position) in the transaction of its
//!   effect (`oncely_postgres::offsets::PostgresOffsets::save`, and the MySQL and SQLite
//!   ones); when a partition is assigned, the source starts it at the stored offset. The effect
//!   and "consumed" commit together, so a crash can neither skip a message nor apply one twice.
//!   Offsets are still committed to Kafka too, so lag shows in the usual tools.
//!
//! **Rebalances.** When partitions are revoked, what was fetched and not handed out is dropped,
//! the messages in flight are waited for (up to `revoke_wait`, 30 s) and their offsets
//! committed before the partitions go. A message still running after that is released: its
//! settlement is ignored, and the next owner reads it again (a duplicate, if its effect
//! committed).
//!
//! A dead letter is the message (payload, key and headers) plus the `Oncely-Error`,
//! `Oncely-Attempts`, `Oncely-Key` and `Oncely-Source` headers, produced with acks from all
//! in-sync replicas to the dead-letter topic; the original counts as settled only after that.
//!
//! ## The URL
//!
//! `kafka://HOST[:PORT][,HOST[:PORT]...]/TOPIC?group=NAME[&OPTIONS]`, as
//! `oncely consume --from` takes it. The port defaults to 9092.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `group=NAME` | (required) | the consumer group |
//! | `dlq=TOPIC` | `TOPIC.dlq` | where dead letters are produced; `none`: nowhere (a failed dead-lettering gives the message back), for a source that only moves messages on |
//! | `create_dlq=true\|false` | `true` | create that topic (one partition) if missing |
//! | `session_timeout=10s` | 10 s | how soon a crashed member's partitions go to the others |
//! | `commit_interval=200ms` | 200 ms | how often settled offsets are committed |
//! | `revoke_wait=30s` | 30 s | how long a revocation waits for messages in flight |
//! | `order=key\|partition` | `key` | what is kept in order: each key's messages, or each partition's |
//!
//! **TLS and SASL** take librdkafka's own names, so a managed cluster's settings paste in
//! ([`Cluster`]): `security.protocol` (`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT`, `SASL_SSL`),
//! `sasl.mechanism` (`PLAIN` - the default with SASL -, `SCRAM-SHA-256`, `SCRAM-SHA-512`),
//! `ssl.ca.location`, `ssl.certificate.location`, `ssl.key.location`. The user and password come
//! from the URL (`kafka://USER:PASSWORD@HOST/...`, which alone means `SASL_SSL`) or, to keep them
//! out of process lists, from [`USERNAME_VARIABLE`] and [`PASSWORD_VARIABLE`]. The broker's
//! certificate and name are always verified (OpenSSL, built in). For example, Confluent Cloud:
//! `kafka://pkc-1.eu-west-1.aws.confluent.cloud:9092/orders?group=billing&security.protocol=SASL_SSL`
//! with the API key and secret in `ONCELY_KAFKA_USERNAME` and `ONCELY_KAFKA_PASSWORD`.
//!
//! The topic must exist. A message's Kafka key becomes its
//! [`ordering_key`](oncely_core::consumer::Message::ordering_key), its headers its headers, and
//! the [`MESSAGE_ID_HEADER`] header (set by the relay) its message id, so `--key message-id`
//! dedups what the outbox relay produced.
//!
//! ## Example
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use oncely_consumer::Consumer;
//! use oncely_core::consumer::{Message, OncelyHandler};
//! use oncely_core::{Key, Oncely, Scope};
//! use oncely_kafka::KafkaSource;
//!
//! let store = Arc::new(oncely_memory::MemoryStore::default()); // a durable store in production
//! let handler = OncelyHandler::new(Oncely::new(store), Scope::new("billing")?, |key: Key, _: Message| async move {
//!     println!("charging order {key}");
//!     Ok::<_, std::io::Error>(Vec::new())
//! });
//!
//! let source = KafkaSource::connect("kafka://127.0.0.1:9092/orders?group=billing").await?;
//! let consumer = Consumer::new(handler, "/orderId".parse()?).concurrency(8);
//! let report = consumer.run(source, async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! println!("{report:?}");
//! # Ok(()) }
//! ```
//!
//! ## Publishing: the outbox relay
//!
//! [`KafkaPublisher`] is the relay's Kafka side (`oncely relay --to kafka://HOST/TOPIC`): the
//! idempotent producer with acks from all in-sync replicas, the row's aggregate as the Kafka key
//! (so one aggregate's messages share a partition and keep their order), and the row's stable id
//! in the [`MESSAGE_ID_HEADER`] header.

#![warn(missing_docs)]

mod client;
mod cluster;
mod error;
mod fresh;
mod message;
mod options;
mod partitions;
mod publisher;
mod source;

pub use client::{client_config, create_topic};
pub use cluster::{Cluster, PASSWORD_VARIABLE, USERNAME_VARIABLE};
pub use error::{BROKER, Error};
pub use fresh::{FreshDestination, FreshOptions, fresh_destination};
pub use message::MESSAGE_ID_HEADER;
pub use options::{
    DEFAULT_COMMIT_INTERVAL, DEFAULT_PORT, DEFAULT_REVOKE_WAIT, DEFAULT_SESSION_TIMEOUT,
    KafkaOptions, Order,
};
pub use publisher::KafkaPublisher;
pub use rdkafka;
pub use source::{KafkaDelivery, KafkaSource};
