//! # oncely-nats
//!
//! NATS JetStream as a source for the oncely consumer runner
//! ([`oncely-consumer`](https://docs.rs/oncely-consumer)): exactly one effect per key over
//! JetStream's at-least-once delivery.
//!
//! JetStream redelivers a message whenever its ack does not arrive in time: after a crash, a
//! slow handler, a lost connection. [`NatsSource`] reads a **durable pull consumer** with
//! explicit acks; the runner ([`Consumer`](https://docs.rs/oncely-consumer)) takes each
//! delivery's key, calls your handler, and settles the delivery by the consumer contract
//! ([`oncely_core::consumer`]):
//!
//! | the handler says | the runner does, on JetStream |
//! |---|---|
//! | done (effect committed) | ack, confirmed by the server (`+ACK`, double ack) |
//! | duplicate (key already done) | ack, without running the handler |
//! | in progress elsewhere | NAK with a delay of the other delivery's lease |
//! | failed | retry in place with backoff, sending `+WPI` (in progress) so the server waits; after the last attempt, dead-letter |
//! | rejected, or no key | dead-letter at once |
//! | store unavailable | NAK with a delay, no attempt counted |
//!
//! A dead letter is a JetStream publish of the message (its payload and all its headers) plus
//! the `Oncely-Error`, `Oncely-Attempts`, `Oncely-Key` and `Oncely-Source` headers, to the
//! dead-letter subject; the original is acked only once a stream has stored that copy.
//!
//! ## The URL
//!
//! `nats://[user:password@]HOST[:PORT]/STREAM/CONSUMER[?OPTIONS]` (or `tls://`), as
//! `oncely consume --from` takes it. The port defaults to 4222.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `create=true\|false` | `true` | create the durable consumer if missing: pull, explicit acks, from the stream's first message |
//! | `ack_wait=30s` | 30 s for a new consumer | how long the server waits for an ack (`ms`, `s`, `m`, `h`); an existing consumer must match if given |
//! | `max_ack_pending=N` | the server's (1000) | delivered, unacked messages at most; an existing consumer must match if given |
//! | `dlq=SUBJECT` | `STREAM.dlq` | where dead letters are published; `none`: nowhere (a failed dead-lettering gives the message back), for a source that only moves messages on |
//! | `dlq_stream=NAME` | `STREAM_DLQ` | the stream created to keep them when no stream captures the subject |
//! | `create_dlq=true\|false` | `true` | create that stream if missing; with `false` a missing one is an error |
//! | `batch=N` | 32 | messages asked of the server per pull request |
//! | `creds=PATH` | none | authenticate with a credentials file (`.creds`: user JWT and nkey seed) |
//! | `nkey=PATH` | none | authenticate with the user nkey seed in this file |
//!
//! A user and password, or a lone token (`nats://TOKEN@HOST`), in the URL authenticate too
//! (see [`connect`]).
//!
//! Setting up checks what it can: the stream exists; the consumer is a pull consumer with
//! explicit acks; a stream captures the dead-letter subject, and it is not the consumed stream
//! itself (dead letters would come back as deliveries). Each failure is an [`Error`] that says
//! what to do.
//!
//! ## Example
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use oncely_consumer::Consumer;
//! use oncely_core::consumer::{Message, OncelyHandler};
//! use oncely_core::{Key, Oncely, Scope};
//! use oncely_nats::NatsSource;
//!
//! let store = Arc::new(oncely_memory::MemoryStore::default()); // a durable store in production
//! let handler = OncelyHandler::new(Oncely::new(store), Scope::new("billing")?, |key: Key, _: Message| async move {
//!     println!("charging order {key}");
//!     Ok::<_, std::io::Error>(Vec::new())
//! });
//!
//! let source = NatsSource::connect("nats://127.0.0.1:4222/ORDERS/billing?dlq=orders.dlq").await?;
//! let consumer = Consumer::new(handler, "header:Nats-Msg-Id".parse()?).concurrency(8);
//! let report = consumer.run(source, async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! println!("{report:?}");
//! # Ok(()) }
//! ```
//!
//! With a JetStream context you already have, [`NatsSource::open`] takes [`NatsOptions`], and
//! [`NatsSource::from_consumer`] takes a pull consumer as it is.
//!
//! ## Publishing: the outbox relay
//!
//! [`NatsPublisher`] is the relay's JetStream side (`oncely relay --to nats://HOST/SUBJECT`):
//! each outbox row published with `Nats-Msg-Id` set to its stable id, counted only once the
//! stream acked it.
//!
//! ## Limits
//!
//! - Messages a pull request brought in and the runner has not taken yet are given back (NAK)
//!   when the source is dropped, so shutdown holds nothing. One the server sends in the moment
//!   of the drop is lost to this source and comes back after the ack wait; a smaller `batch`
//!   keeps such moments rare.
//! - A message given back comes again after at least [`MIN_REDELIVERY_DELAY`] (250 ms), even
//!   when the runner asks for "at once" (shutdown), so that it goes to another consumer rather
//!   than to the closing source's last pull request.
//! - Leave the consumer's `max_deliver` unlimited: the runner dead-letters by its own attempt
//!   count, and a message the server stops delivering is neither done nor dead-lettered.
//! - The dead-letter copy keeps `Nats-Msg-Id` (adding `STREAM:SEQUENCE` when the original has
//!   none), so a dead letter published twice within the dead-letter stream's duplicate window
//!   is stored once. It drops `Nats-Expected-*`, `Nats-Rollup` and `Nats-TTL`, which were meant
//!   for the original's stream.

#![warn(missing_docs)]

mod client;
mod error;
mod fresh;
mod options;
mod publisher;
mod source;

pub use async_nats;
pub use client::connect;
pub use error::{BROKER, Error};
pub use fresh::{FreshDestination, FreshOptions, fresh_destination};
pub use options::{DEFAULT_ACK_WAIT, DEFAULT_BATCH, DEFAULT_PORT, NatsOptions};
pub use publisher::NatsPublisher;
pub use source::{MIN_REDELIVERY_DELAY, NatsDelivery, NatsSource, ensure_dead_letter_stream};
