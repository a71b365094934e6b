//! # oncely-rabbitmq
//!
//! A RabbitMQ (AMQP 0-9-1) queue as a source for the oncely consumer runner
//! (`oncely_consumer::Consumer`), built on [lapin](https://docs.rs/lapin).
//!
//! RabbitMQ delivers at least once: a consumer that dies before its ack gets the message again,
//! and producers retry publishes. The runner turns that into one effect per key: for each
//! delivery it takes the key ([`KeySource`](oncely_core::consumer::KeySource)), runs your
//! [`Handler`](oncely_core::consumer::Handler) (usually an
//! [`OncelyHandler`](oncely_core::consumer::OncelyHandler), which claims the key in a store
//! first), and only then settles the delivery:
//!
//! | the handler | the runner, on RabbitMQ |
//! |---|---|
//! | did the effect now | `basic.ack` |
//! | saw the key already done | `basic.ack`, handler not run again |
//! | saw the key in progress elsewhere | waits for the lease, then `basic.nack` with requeue |
//! | failed | retries in place with backoff; after the last attempt publishes a copy to the dead-letter queue (with `Oncely-Error`, `Oncely-Attempts`, `Oncely-Key`, `Oncely-Source` headers), waits for the publisher confirm, then `basic.ack` |
//! | rejected the message, or it has no key | dead-letters it at once |
//! | found its store down | `basic.nack` with requeue after a pause, no attempt counted |
//!
//! [`AmqpSource`] consumes a queue with manual acks and a prefetch; each [`AmqpDelivery`] gives
//! the runner the message (payload, headers as text, the `message_id` property, the queue as
//! its source) and the AMQP operations above.
//!
//! ## The URL
//!
//! `amqp://[USER:PASSWORD@]HOST[:PORT][/VHOST]/QUEUE[?dlq=NAME&prefetch=N]` — the **last path
//! segment is the queue**, a segment before it the vhost (`%2f` for the default vhost `/`,
//! which is also what a URL with the queue alone means). `dlq` defaults to `<QUEUE>.dlq` and is
//! declared durable if it is missing (`dlq=none`: no dead-letter queue, for a source that only
//! moves messages on); `prefetch` defaults to [`DEFAULT_PREFETCH`] (32): keep it
//! at about twice the runner's concurrency. The queue itself must exist. See [`AmqpUrl`].
//!
//! ## Example
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use oncely_consumer::Consumer;
//! use oncely_core::consumer::{Message, OncelyHandler};
//! use oncely_core::{Key, Oncely, Scope};
//! use oncely_rabbitmq::AmqpSource;
//! # let store = std::sync::Arc::new(oncely_memory::MemoryStore::default());
//!
//! // Consume `orders` on the default vhost; dead letters go to `orders.dlq`.
//! let source = AmqpSource::connect("amqp://guest:guest@127.0.0.1:5672/%2f/orders?prefetch=16").await?;
//!
//! let handler = OncelyHandler::new(Oncely::new(store), Scope::new("orders")?, |key: Key, message: Message| async move {
//!     println!("charging order {key} ({} bytes)", message.payload().len());
//!     Ok::<_, std::io::Error>(Vec::new())
//! });
//! let consumer = Consumer::new(handler, "/orderId".parse()?).concurrency(8);
//! let shutdown = async { /* e.g. tokio::signal::ctrl_c() */ };
//! let report = consumer.run(source, shutdown).await?;
//! println!("{report:?}");
//! # Ok(()) }
//! ```
//!
//! On an existing lapin [`Connection`](lapin::Connection), use
//! [`AmqpSource::with_connection`] with [`AmqpOptions`].
//!
//! ## Publishing: the outbox relay
//!
//! [`AmqpPublisher`] is the relay's RabbitMQ side (`oncely relay --to amqp://HOST/QUEUE`):
//! each outbox row published persistent, `mandatory`, with its stable id as the AMQP
//! `message_id`, counted only once the server confirmed it (publisher confirms).
//!
//! ## What AMQP does not give
//!
//! - **No delayed requeue.** A nacked message is back at once, so
//!   [`redeliver`](oncely_core::consumer::Delivery::redeliver) holds it for the wait asked (at
//!   most [`AmqpOptions::max_redelivery_wait`], 10 s by default) and then nacks it.
//! - **No "still working" signal.** A delivery stays unacked as long as the channel is open,
//!   up to the server's `consumer_timeout` (30 minutes by default); keep handlers well under it.

#![warn(missing_docs)]

mod error;
mod fresh;
pub mod message;
mod options;
mod publisher;
mod source;

pub use error::{BROKER, Error};
pub use fresh::{FreshDestination, FreshOptions, fresh_destination};
pub use options::{
    AmqpOptions, AmqpUrl, DEFAULT_MAX_REDELIVERY_WAIT, DEFAULT_PREFETCH, connect, queue_url,
};
pub use publisher::AmqpPublisher;
pub use source::{AmqpDelivery, AmqpSource};

pub use lapin;
