//! The transactional outbox: messages written in the caller's own database transaction, and
//! the contract of the relay that publishes them.
//!
//! A service that updates its database and then publishes an event has a window in which the
//! update is committed and the event not yet sent (a crash there loses the event), or the event
//! is sent and the update then rolls back (the world hears of something that never happened).
//! The outbox closes it: the event is a row of `oncely_outbox`, inserted in the same
//! transaction as the business writes, so both commit or neither does. A **relay** (the
//! `oncely-relay` crate, or `oncely relay` on the command line) then publishes the committed
//! rows to the broker and marks them sent only once the broker has confirmed them.
//!
//! What this module holds is what every SQL store and every broker shares:
//!
//! - [`OutboxMessage`]: what you enqueue — an aggregate key (order is kept per aggregate), a
//!   payload, headers, and an optional destination (subject, queue or routing key; the relay's
//!   default when absent);
//! - [`Outbox`] and [`OutboxTransaction`]: the enqueue, whose checks live here and whose SQL each
//!   store crate supplies for its connection type (`outbox.enqueue(&mut tx, &message)`);
//! - [`OutboxStore`] and [`OutboxBatch`]: what the relay asks of the table — a batch of unsent
//!   rows of aggregates no other relay holds, marked sent in the same hold;
//! - [`Publisher`]: what the relay asks of a broker — publish with a message id and wait for the
//!   broker's confirm;
//! - [`message_id`]: the id a row is published with, the same on every attempt, so the broker
//!   (JetStream's duplicate window) and consumers (dedup by message id) drop a re-publish.
//!
//! **Guarantees.** At least once: a row is marked sent only after the broker confirmed it, so a
//! relay killed between the two publishes the row again, with the same message id. Per
//! aggregate, rows are published in the order they were enqueued (their ids), one after the
//! other: the next is sent only after the previous one was confirmed, and an aggregate is held
//! by one relay at a time, so relays running side by side never interleave one aggregate's
//! rows. Different aggregates are published concurrently and in no particular order. A row the
//! broker refuses for itself (too large, no such destination) is parked after a number of
//! refusals rather than holding its aggregate back for ever; the rows after it wait or go on
//! ([`AfterParked`]).

use crate::trace::{TRACEPARENT, TRACESTATE, TraceParent};
use async_trait::async_trait;

use crate::consumer::{BrokerError, Message};
use crate::{KeyError, MAX_KEY_BYTES, Result};

/// The longest destination (a NATS subject, an AMQP routing key) an outbox row may name.
pub const MAX_DESTINATION_BYTES: usize = 255;

/// One message to publish: what [`Outbox`] enqueues.
///
/// ```
/// use oncely_core::outbox::OutboxMessage;
///
/// let message = OutboxMessage::new("order-1001", br#"{"type":"OrderPlaced"}"#.to_vec())
///     .to("orders.placed")
///     .with_header("Content-Type", "application/json");
/// assert_eq!(message.aggregate(), "order-1001");
/// assert_eq!(message.destination(), Some("orders.placed"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxMessage {
    aggregate: String,
    destination: Option<String>,
    payload: Vec<u8>,
    headers: Vec<(String, String)>,
}

impl OutboxMessage {
    /// A message of `aggregate` (an order id, an account id: what its order is kept within)
    /// with `payload`, to the relay's default destination.
    pub fn new(aggregate: impl Into<String>, payload: Vec<u8>) -> Self {
        OutboxMessage {
            aggregate: aggregate.into(),
            destination: None,
            payload,
            headers: Vec::new(),
        }
    }

    /// Publishes to `destination` (a NATS subject, an AMQP routing key) instead of the relay's
    /// default.
    pub fn to(mut self, destination: impl Into<String>) -> Self {
        self.destination = Some(destination.into());
        self
    }

    /// With one more header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Carrying the trace of the work that wrote it: `traceparent` (and `tracestate`, if any)
    /// as headers, which the relay publishes with the message (see [`crate::trace`]).
    pub fn traced(self, traceparent: &TraceParent, tracestate: Option<&str>) -> Self {
        let message = self.with_header(TRACEPARENT, traceparent.to_string());
        match tracestate {
            Some(state) => message.with_header(TRACESTATE, state),
            None => message,
        }
    }

    /// The aggregate.
    pub fn aggregate(&self) -> &str {
        &self.aggregate
    }

    /// The destination, if not the relay's default.
    pub fn destination(&self) -> Option<&str> {
        self.destination.as_deref()
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The headers, in order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// Checks what every store would refuse: an empty or over-long aggregate, an empty or
    /// over-long destination, an empty header name.
    pub fn validate(&self) -> std::result::Result<(), KeyError> {
        check("outbox aggregate", &self.aggregate, MAX_KEY_BYTES)?;
        if let Some(destination) = &self.destination {
            check("outbox destination", destination, MAX_DESTINATION_BYTES)?;
        }
        for (name, _) in &self.headers {
            check("outbox header name", name, MAX_DESTINATION_BYTES)?;
        }
        Ok(())
    }
}

fn check(what: &'static str, text: &str, max: usize) -> std::result::Result<(), KeyError> {
    if text.is_empty() {
        return Err(KeyError::Empty { what });
    }
    if text.len() > max {
        return Err(KeyError::TooLong {
            what,
            len: text.len(),
            max,
        });
    }
    Ok(())
}

/// Enqueues messages inside callers' transactions. The SQL store crates add
/// `enqueue(&mut tx, &message)` for their connection types (`oncely_postgres::outbox`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Outbox;

/// The statement one SQL dialect runs for [`Outbox::enqueue_in`], inside the caller's
/// transaction.
#[async_trait]
pub trait OutboxTransaction: Send {
    /// Inserts the row (headers already encoded by [`encode_headers`]) and answers its id.
    ///
    /// Before inserting, it must wait for any other transaction still holding an uncommitted
    /// row of the same aggregate (a lock per aggregate, held until the transaction ends). Ids
    /// of one aggregate then commit in increasing order, so a relay never sees a later row of
    /// an aggregate while an earlier one may still commit.
    async fn insert(&mut self, message: &OutboxMessage, encoded_headers: &str) -> Result<OutboxId>;
}

impl Outbox {
    /// An outbox.
    pub fn new() -> Self {
        Outbox
    }

    /// Checks `message` and inserts it through `tx`. Store crates call this.
    pub async fn enqueue_in<T: OutboxTransaction + ?Sized>(
        &self,
        tx: &mut T,
        message: &OutboxMessage,
    ) -> Result<OutboxId> {
        message.validate()?;
        tx.insert(message, &encode_headers(message.headers())).await
    }
}

/// A row's id: increasing in the order rows were inserted.
pub type OutboxId = i64;

/// Headers as the outbox stores them: a JSON array of `[name, value]` pairs, which keeps their
/// order and repeats.
///
/// ```
/// use oncely_core::outbox::{decode_headers, encode_headers};
///
/// let headers = vec![("Tag".to_owned(), "a".to_owned()), ("Tag".to_owned(), "b".to_owned())];
/// let text = encode_headers(&headers);
/// assert_eq!(text, r#"[["Tag","a"],["Tag","b"]]"#);
/// assert_eq!(decode_headers(&text).unwrap(), headers);
/// ```
pub fn encode_headers(headers: &[(String, String)]) -> String {
    serde_json::to_string(headers).expect("pairs of strings always serialize")
}

/// The headers [`encode_headers`] wrote; a description of the damage if the text is not theirs.
pub fn decode_headers(text: &str) -> std::result::Result<Vec<(String, String)>, String> {
    serde_json::from_str(text)
        .map_err(|e| format!("outbox headers are not [[name, value], ...]: {e}"))
}

/// The message id a row is published with: `ORIGIN-ID`, where `ORIGIN` is the outbox's own
/// random name (created with its table, so two databases' outboxes publishing to one stream
/// never share ids) and `ID` the row's id. The same row always gets the same id.
///
/// ```
/// assert_eq!(oncely_core::outbox::message_id("3f9a2c", 42), "3f9a2c-42");
/// ```
pub fn message_id(origin: &str, id: OutboxId) -> String {
    format!("{origin}-{id}")
}

/// One unsent row, as a relay reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxRow {
    /// The row's id.
    pub id: OutboxId,
    /// Its aggregate.
    pub aggregate: String,
    /// Its destination, or `None` for the relay's default.
    pub destination: Option<String>,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Its headers.
    pub headers: Vec<(String, String)>,
}

impl OutboxRow {
    /// The message to publish: payload, headers, [`message_id`]`(origin, id)`, and the
    /// aggregate as its ordering key. Its source is the destination (empty for the default).
    pub fn message(&self, origin: &str) -> Message {
        let mut message = Message::new(
            self.payload.clone(),
            self.destination.clone().unwrap_or_default(),
        )
        .with_message_id(message_id(origin, self.id))
        .with_ordering_key(&self.aggregate);
        for (name, value) in &self.headers {
            message = message.with_header(name, value);
        }
        message
    }
}

/// The outbox table as a relay sees it. Each SQL store crate implements it.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// What a batch holds while it is published.
    type Batch: OutboxBatch;

    /// The outbox's origin: the prefix of its rows' message ids ([`message_id`]).
    async fn origin(&self) -> Result<String>;

    /// Takes hold of some aggregates with unsent rows that no other relay holds, and answers
    /// their unsent rows, in id order, at most `limit` of them: for each aggregate, its first
    /// unsent rows. Parked rows are never taken; the rows after one in its aggregate are taken
    /// only under [`AfterParked::GoOn`]. `None` when there is nothing to take. The hold lasts
    /// until the batch is [`finish`](OutboxBatch::finish)ed or dropped, and ends by itself if
    /// the relay dies.
    async fn take(&self, limit: usize, after_parked: AfterParked) -> Result<Option<Self::Batch>>;

    /// Deletes at most `limit` rows sent longer than `retention` ago; answers how many.
    async fn purge(&self, retention: std::time::Duration, limit: usize) -> Result<u64>;

    /// The rows waiting to be sent: how many, and how long the oldest has waited (by the
    /// database's clock).
    async fn backlog(&self) -> Result<Backlog>;

    /// The parked rows ([`Refused`]), in id order, at most `limit` of them.
    async fn parked(&self, limit: usize) -> Result<Vec<ParkedRow>>;

    /// Puts the parked rows among `ids` back in line, their attempts at zero: the relay
    /// publishes them again, in their aggregate's order. Answers how many were parked.
    async fn retry_parked(&self, ids: &[OutboxId]) -> Result<u64>;

    /// Deletes the parked rows among `ids`: they are never published; their aggregates go on.
    /// Answers how many were parked.
    async fn drop_parked(&self, ids: &[OutboxId]) -> Result<u64>;

    /// A signal that rows were enqueued, from a store that has one (PostgreSQL's LISTEN /
    /// NOTIFY): a relay then takes new rows at once instead of at its next poll. `None`, the
    /// default: the relay polls. Called once per relay run; the signal lasts as long as the
    /// [`Enqueued`] is kept.
    async fn enqueued(&self) -> Result<Option<Enqueued>> {
        Ok(None)
    }
}

/// Wakes a relay when rows were enqueued ([`OutboxStore::enqueued`]). A signal given while
/// nobody waits is kept for the next wait, so none given between two waits is missed.
pub struct Enqueued {
    signal: std::sync::Arc<tokio::sync::Notify>,
    _listening: Box<dyn Send + Sync>,
}

impl Enqueued {
    /// A signal given through `signal` (`notify_one`) by whatever `listening` is, kept alive
    /// (and dropped, to stop it) with this value: a task's abort-on-drop guard, a connection.
    pub fn new(
        signal: std::sync::Arc<tokio::sync::Notify>,
        listening: impl Send + Sync + 'static,
    ) -> Self {
        Enqueued {
            signal,
            _listening: Box::new(listening),
        }
    }

    /// Waits for the next signal, or answers at once for one given since the last wait.
    pub async fn notified(&self) {
        self.signal.notified().await
    }
}

impl std::fmt::Debug for Enqueued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enqueued").finish_non_exhaustive()
    }
}

/// What a relay does with the rows of an aggregate that come after a parked row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AfterParked {
    /// They wait until the parked row is retried or dropped (`oncely outbox retry|drop`):
    /// the aggregate's order holds. The default.
    #[default]
    Wait,
    /// They are published: the aggregate goes on without the parked row, which is published
    /// after them if it is retried.
    GoOn,
}

/// A row the broker refused (its publish failed with a
/// [`permanent`](crate::consumer::BrokerError::is_permanent) error: a message too large, a
/// destination that does not exist). Each refusal is an attempt; at `park_after` attempts the
/// row is **parked**: set aside with its error, no longer published, listed by
/// [`OutboxStore::parked`] until retried or dropped. A failure that may pass (the broker
/// unreachable, a timeout) is no attempt: the row waits for the broker, as long as it takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The row.
    pub id: OutboxId,
    /// The broker's error, kept with the row.
    pub error: String,
    /// The attempts at which it is parked (at least 1).
    pub park_after: u32,
}

/// A parked row ([`Refused`]), as [`OutboxStore::parked`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkedRow {
    /// The row's id.
    pub id: OutboxId,
    /// Its aggregate.
    pub aggregate: String,
    /// Its destination, or `None` for the relay's default.
    pub destination: Option<String>,
    /// The refused publishes.
    pub attempts: u32,
    /// The last refusal's error.
    pub error: String,
    /// How long ago it was parked (by the database's clock).
    pub parked_for: std::time::Duration,
    /// The size of its payload.
    pub payload_bytes: u64,
}

/// A parked row's columns as SQL answers them: id, aggregate, destination, attempts, error,
/// seconds since it was parked, payload bytes.
pub type ParkedColumns = (OutboxId, String, Option<String>, i64, String, f64, i64);

impl ParkedRow {
    /// From its [`ParkedColumns`] (negative counts and ages, from clocks apart, read as zero).
    pub fn from_columns(
        (id, aggregate, destination, attempts, error, parked_secs, payload_bytes): ParkedColumns,
    ) -> Self {
        ParkedRow {
            id,
            aggregate,
            destination,
            attempts: attempts.clamp(0, i64::from(u32::MAX)) as u32,
            error,
            parked_for: std::time::Duration::from_secs_f64(parked_secs.max(0.0)),
            payload_bytes: payload_bytes.max(0) as u64,
        }
    }
}

/// What waits in an outbox ([`OutboxStore::backlog`]): what a relay has still to publish.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Rows not sent yet (parked rows included: they are not sent).
    pub unsent: u64,
    /// How long the oldest of them has waited; `None` when there is none.
    pub oldest: Option<std::time::Duration>,
}

impl Backlog {
    /// From a count and the oldest row's age in seconds (as SQL answers them).
    pub fn from_count_and_age(unsent: i64, oldest_secs: Option<f64>) -> Backlog {
        Backlog {
            unsent: unsent.max(0) as u64,
            oldest: oldest_secs
                .filter(|_| unsent > 0)
                .map(|secs| std::time::Duration::from_secs_f64(secs.max(0.0))),
        }
    }
}

/// A batch of rows a relay holds: publish them, then [`finish`](Self::finish) with the ids the
/// broker confirmed.
#[async_trait]
pub trait OutboxBatch: Send {
    /// The rows, in id order.
    fn rows(&self) -> &[OutboxRow];

    /// Marks `sent` (ids of this batch's rows) sent, durably, counts an attempt on each
    /// `refused` row (parking it once its attempts reach its `park_after`), and lets go of the
    /// aggregates. Answers how many of `refused` it parked.
    async fn finish(self, sent: &[OutboxId], refused: &[Refused]) -> Result<u64>;
}

/// A broker a relay publishes to. Each broker crate implements it.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Publishes `message` (payload, headers, message id: the broker's dedup id) to
    /// `destination`, or to the publisher's default destination if `None`, and returns once the
    /// broker has confirmed it (stored it, or routed it to a queue that did). An `Ok` is the
    /// relay's licence to mark the row sent.
    async fn publish(
        &self,
        destination: Option<&str>,
        message: &Message,
    ) -> std::result::Result<(), BrokerError>;
}

#[async_trait]
impl<P: Publisher + ?Sized> Publisher for Box<P> {
    async fn publish(
        &self,
        destination: Option<&str>,
        message: &Message,
    ) -> std::result::Result<(), BrokerError> {
        (**self).publish(destination, message).await
    }
}

#[async_trait]
impl<P: Publisher + ?Sized> Publisher for std::sync::Arc<P> {
    async fn publish(
        &self,
        destination: Option<&str>,
        message: &Message,
    ) -> std::result::Result<(), BrokerError> {
        (**self).publish(destination, message).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_aggregate_or_destination_is_refused() {
        assert!(OutboxMessage::new("", vec![]).validate().is_err());
        assert!(OutboxMessage::new("a", vec![]).to("").validate().is_err());
        let long = "x".repeat(MAX_DESTINATION_BYTES + 1);
        assert!(OutboxMessage::new("a", vec![]).to(long).validate().is_err());
        assert!(
            OutboxMessage::new("a", vec![])
                .to("orders")
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn a_row_becomes_a_message_with_its_stable_id() {
        let row = OutboxRow {
            id: 7,
            aggregate: "order-1".into(),
            destination: Some("orders".into()),
            payload: b"{}".to_vec(),
            headers: vec![("Event-Type".into(), "placed".into())],
        };
        let message = row.message("abc");
        assert_eq!(message.message_id(), Some("abc-7"));
        assert_eq!(message.header("event-type"), Some("placed"));
        assert_eq!(message.source(), "orders");
        assert_eq!(
            row.message("abc"),
            message,
            "every attempt, the same message"
        );
    }
}
