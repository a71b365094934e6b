//! The consumer contract: what every broker runner does with a delivered message.
//!
//! NATS JetStream, RabbitMQ, Kafka and SQS all deliver at least once. A runner for any of them
//! (the `oncely-consumer` crate drives one; `oncely-nats` and `oncely-rabbitmq` plug brokers in)
//! follows the same rules, which live here, with no broker code:
//!
//! - **Ack after the effect.** A message is acked only once its effect is committed
//!   ([`Handled::Done`]). A crash before the ack means a redelivery, which the handler answers
//!   as a duplicate.
//! - **Duplicates are acked unprocessed.** [`Handled::Duplicate`]: the key was already done.
//! - **In progress is not acked.** [`Handled::InProgress`]: another delivery of the same key is
//!   being handled right now; this one goes back to the broker and returns after the lease.
//! - **Failures retry, then dead-letter.** [`HandlerError::Failed`] is retried with exponential
//!   backoff ([`RetryPolicy`]) up to `max_attempts`; then the message is published to the
//!   dead-letter destination with the error and the attempt count attached ([`DeadLetter`]),
//!   and only after that publish is confirmed is the original acked. A message that can never
//!   succeed ([`HandlerError::Rejected`], a message with no key) goes there at once.
//! - **An unavailable store loses nothing.** [`HandlerError::Unavailable`] sends the message
//!   back without counting an attempt: a database outage is not the message's fault.
//!
//! A handler sees a [`Message`] (payload, headers, message id, where it came from) and the
//! [`Key`] its [`KeySource`] gave. [`OncelyHandler`] is the handler for effects outside the
//! store: claim, run your work, complete (or release on failure). When the effect is in the same
//! SQL database as the records, write a [`Handler`] that uses the transactional inbox
//! ([`crate::inbox`]) instead, so the effect and the dedup record commit together.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use oncely_core::consumer::{Handled, Handler, KeySource, Message, OncelyHandler};
//! use oncely_core::{Oncely, Scope};
//! # let store = std::sync::Arc::new(oncely_memory::MemoryStore::default());
//!
//! let key_source: KeySource = "/orderId".parse()?;
//! let handler = OncelyHandler::new(Oncely::new(store), Scope::new("emails")?, |_key, message: Message| async move {
//!     // ... send the email ...
//!     Ok::<_, std::io::Error>(message.payload().len().to_string().into_bytes())
//! });
//!
//! let message = Message::new(br#"{"orderId": "o-7"}"#.to_vec(), "orders");
//! let key = key_source.key_of(&message)?;
//! assert_eq!(handler.handle(&key, &message).await?, Handled::Done);
//! assert_eq!(handler.handle(&key, &message).await?, Handled::Duplicate);
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::{
    BoxError, CompositeKey, Fingerprint, Key, KeyError, Oncely, PayloadFingerprint, RunError,
    RunOutcome, Scope,
};
use crate::{ExtractError, JsonKeyError, KeySpecError};

/// Header carrying the error of a dead-lettered message.
pub const ERROR_HEADER: &str = "Oncely-Error";
/// Header carrying how many attempts a dead-lettered message had.
pub const ATTEMPTS_HEADER: &str = "Oncely-Attempts";
/// Header carrying a dead-lettered message's key, when it had one.
pub const KEY_HEADER: &str = "Oncely-Key";
/// Header carrying where a dead-lettered message was consumed from (subject, queue, topic).
pub const SOURCE_HEADER: &str = "Oncely-Source";
/// Header carrying a dead letter's own id, new each time a message is dead-lettered: what
/// `oncely redrive` claims, so it moves each dead letter back at most once.
pub const DEAD_LETTER_ID_HEADER: &str = "Oncely-Dead-Letter-Id";
/// Header carrying a message's stable id where the broker's own id field is taken for
/// something else (SQS and Kafka have no settable one; on NATS, a redriven message's
/// `Nats-Msg-Id` is its redrive's, so the stream's duplicate window does not drop it).
pub const MESSAGE_ID_HEADER: &str = "Oncely-Message-Id";

/// One delivered message, as every broker runner presents it. Cheap to clone.
#[derive(Clone, PartialEq, Eq)]
pub struct Message(Arc<Parts>);

#[derive(Clone, PartialEq, Eq)]
struct Parts {
    payload: Vec<u8>,
    headers: Vec<(String, String)>,
    message_id: Option<String>,
    dedup_id: Option<String>,
    broker_id: Option<String>,
    ordering_key: Option<String>,
    position: Option<Position>,
    source: String,
}

/// Where a message sits in a partitioned log (a Kafka topic partition), as its consumer group
/// reads it: what a handler stores with its effect when the consumer's offsets live in the
/// same database ([`OffsetStore`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    /// The consumer group reading it.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The message's offset in the partition.
    pub offset: i64,
}

impl Position {
    /// The offset to resume from once this message is done: the next one.
    pub fn next_offset(&self) -> i64 {
        self.offset + 1
    }
}

/// Consumer offsets kept in your own database, written by your handler in the transaction of
/// its effect (so the effect and "this message is consumed" commit together) and read back by
/// the consumer when a partition is assigned to it, to start exactly after the last effect.
///
/// The SQL stores implement it (`oncely_postgres::offsets::PostgresOffsets`, ...); their `save`
/// takes your transaction.
#[async_trait]
pub trait OffsetStore: Send + Sync + 'static {
    /// The next offset to read of each partition of `topic` that `group` has stored, as
    /// `(partition, offset)`.
    async fn load(&self, group: &str, topic: &str) -> crate::Result<Vec<(i32, i64)>>;
}

impl Message {
    /// A message with `payload`, consumed from `source` (a subject, queue or topic).
    pub fn new(payload: Vec<u8>, source: impl Into<String>) -> Self {
        Message(Arc::new(Parts {
            payload,
            headers: Vec::new(),
            message_id: None,
            dedup_id: None,
            broker_id: None,
            ordering_key: None,
            position: None,
            source: source.into(),
        }))
    }

    /// With the id a broker that drops repeated publishes within a window drops a second
    /// publish of (JetStream's `Nats-Msg-Id`, an SQS FIFO queue's deduplication id), when it
    /// must differ from the message id: `oncely redrive` keeps a message's id, so consumers
    /// still know it, and gives each redrive its own dedup id, so the window does not drop it
    /// as the original. Publishers use the message id where this is unset.
    pub fn with_dedup_id(mut self, id: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.0).dedup_id = Some(id.into());
        self
    }

    /// With the broker's own id of this stored copy (see [`broker_id`](Self::broker_id)).
    pub fn with_broker_id(mut self, id: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.0).broker_id = Some(id.into());
        self
    }

    /// With the broker's (or producer's) message id.
    pub fn with_message_id(mut self, id: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.0).message_id = Some(id.into());
        self
    }

    /// With an ordering key: messages of one key keep their order (the Kafka record key, the
    /// SQS FIFO message group). The outbox relay sets it to the row's aggregate.
    pub fn with_ordering_key(mut self, key: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.0).ordering_key = Some(key.into());
        self
    }

    /// With where it sits in a partitioned log.
    pub fn with_position(mut self, position: Position) -> Self {
        Arc::make_mut(&mut self.0).position = Some(position);
        self
    }

    /// With one more header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.0)
            .headers
            .push((name.into(), value.into()));
        self
    }

    /// With the header `name` set to `value`: every header of that name (in any case) replaced
    /// by this one, or it added.
    ///
    /// ```
    /// use oncely_core::consumer::Message;
    /// let message = Message::new(b"{}".to_vec(), "orders")
    ///     .with_header("Traceparent", "old")
    ///     .with_header_set("traceparent", "new");
    /// assert_eq!(message.headers(), [("traceparent".to_owned(), "new".to_owned())]);
    /// ```
    pub fn with_header_set(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into();
        let headers = &mut Arc::make_mut(&mut self.0).headers;
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
        headers.push((name, value.into()));
        self
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.0.payload
    }

    /// The first value of header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.0
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every header, in order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.0.headers
    }

    /// The message id, if the broker or the producer set one.
    pub fn message_id(&self) -> Option<&str> {
        self.0.message_id.as_deref()
    }

    /// The id a publisher gives the broker's duplicate window: the
    /// [dedup id](Self::with_dedup_id) if set, else the message id.
    pub fn dedup_id(&self) -> Option<&str> {
        self.0.dedup_id.as_deref().or(self.message_id())
    }

    /// The broker's own id of this stored copy, which no producer sets and no other copy
    /// shares: `STREAM:SEQUENCE` on JetStream, `TOPIC:PARTITION:OFFSET` on Kafka, the
    /// `MessageId` on SQS; none on RabbitMQ, whose queues keep no such id.
    pub fn broker_id(&self) -> Option<&str> {
        self.0.broker_id.as_deref()
    }

    /// The ordering key, if it has one (see [`with_ordering_key`](Self::with_ordering_key)).
    pub fn ordering_key(&self) -> Option<&str> {
        self.0.ordering_key.as_deref()
    }

    /// Where it sits in a partitioned log, for consumers of one (Kafka).
    pub fn position(&self) -> Option<&Position> {
        self.0.position.as_ref()
    }

    /// Where it was consumed from.
    pub fn source(&self) -> &str {
        &self.0.source
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("source", &self.0.source)
            .field("message_id", &self.0.message_id)
            .field("dedup_id", &self.0.dedup_id)
            .field("broker_id", &self.0.broker_id)
            .field("headers", &self.0.headers)
            .field("ordering_key", &self.0.ordering_key)
            .field("position", &self.0.position)
            .field("payload_len", &self.0.payload.len())
            .finish()
    }
}

/// Where a message's key comes from. Parses from the text the CLI's `--key` takes:
///
/// | text | key |
/// |---|---|
/// | `header:NAME` | the value of header `NAME` |
/// | `message-id` | the message id (NATS: `Oncely-Message-Id` if set, else `Nats-Msg-Id`; AMQP `message_id`; Kafka and SQS: `Oncely-Message-Id`, else SQS's own id) |
/// | `/a` or `/a,/b` | fields of the JSON payload, numbers exact ([`CompositeKey::extract_json`]) |
/// | any other text, e.g. `detail.orderId` | a JMESPath expression over the JSON payload ([`Selector`](crate::Selector)), with Powertools' `powertools_json` for JSON inside a string field |
/// | `payload-hash` | SHA-256 of the payload's canonical JSON (numbers exact), else of its bytes |
///
/// ```
/// use oncely_core::consumer::{KeySource, Message};
///
/// let message = Message::new(br#"{"orderId": 7}"#.to_vec(), "orders").with_header("Event-Id", "e-1");
/// let by_header: KeySource = "header:event-id".parse()?;
/// assert_eq!(by_header.key_of(&message)?.as_str(), "e-1");
/// assert_eq!("/orderId".parse::<KeySource>()?.key_of(&message)?.as_str(), "7");
/// assert_eq!("orderId".parse::<KeySource>()?.key_of(&message)?.as_str(), "7");
/// assert!("message-id".parse::<KeySource>()?.key_of(&message).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// The value of a header.
    Header(String),
    /// The broker's message id.
    MessageId,
    /// Fields of the JSON payload, by JSON pointer or JMESPath.
    Json(CompositeKey),
    /// A digest of the payload.
    PayloadHash,
}

impl FromStr for KeySource {
    type Err = KeySpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let spec = spec.trim();
        if let Some(name) = spec.strip_prefix("header:") {
            let name = name.trim();
            if name.is_empty() {
                return Err(KeySpecError::Empty);
            }
            return Ok(KeySource::Header(name.to_owned()));
        }
        match spec {
            "message-id" => Ok(KeySource::MessageId),
            "payload-hash" => Ok(KeySource::PayloadHash),
            _ => CompositeKey::parse(spec).map(KeySource::Json),
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Header(name) => write!(f, "header:{name}"),
            KeySource::MessageId => f.write_str("message-id"),
            KeySource::Json(spec) => spec.fmt(f),
            KeySource::PayloadHash => f.write_str("payload-hash"),
        }
    }
}

/// Why a message gave no key. Such a message can never be handled: it is dead-lettered at once.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum NoKey {
    /// The header is absent.
    #[error("no `{0}` header")]
    MissingHeader(String),
    /// The broker gave no message id.
    #[error("no message id")]
    MissingMessageId,
    /// The header or message id is not a valid key.
    #[error("invalid key: {0}")]
    Invalid(KeyError),
    /// The payload is not JSON.
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    /// The payload lacks a field of the key.
    #[error(transparent)]
    Extract(#[from] ExtractError),
}

impl KeySource {
    /// The key of `message`.
    pub fn key_of(&self, message: &Message) -> Result<Key, NoKey> {
        match self {
            KeySource::Header(name) => {
                let value = message
                    .header(name)
                    .ok_or_else(|| NoKey::MissingHeader(name.clone()))?;
                Key::new(value).map_err(NoKey::Invalid)
            }
            KeySource::MessageId => Key::new(message.message_id().ok_or(NoKey::MissingMessageId)?)
                .map_err(NoKey::Invalid),
            // From the payload's text, so every number in it is exact.
            KeySource::Json(spec) => match spec.extract_json(message.payload()) {
                Ok(key) => Ok(key),
                Err(JsonKeyError::NotJson(e)) => Err(NoKey::NotJson(e.to_string())),
                Err(JsonKeyError::Extract(e)) => Err(NoKey::Extract(e)),
            },
            KeySource::PayloadHash => {
                let digest = Fingerprint::of_json_text(message.payload())
                    .unwrap_or_else(|_| Fingerprint::of_bytes(message.payload()));
                Ok(Key::new(digest.to_hex()).expect("a 64-char hex digest is a valid key"))
            }
        }
    }
}

/// What a handler did with a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handled {
    /// The effect is committed now: ack.
    Done,
    /// The key was already done: ack without doing anything.
    Duplicate,
    /// Another delivery of the key is being handled: do not ack, redeliver after `retry_after`.
    InProgress {
        /// When the other delivery's lease ends.
        retry_after: Duration,
    },
    /// The message carries a version of its entity at or below one already applied (the
    /// version guard answered `Stale`): ack without doing anything. Counted apart from
    /// duplicates: it is another message, only older.
    Stale {
        /// The version applied already.
        current: u64,
    },
}

/// Why a handler produced no effect.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The work failed and may succeed later: retried with backoff, then dead-lettered.
    #[error("{0}")]
    Failed(BoxError),
    /// The message can never succeed (malformed, or its key was used with another payload):
    /// dead-lettered at once.
    #[error("{0}")]
    Rejected(BoxError),
    /// The store or database is down: the message goes back to the broker, no attempt counted.
    #[error("unavailable: {0}")]
    Unavailable(BoxError),
}

impl HandlerError {
    /// A retryable failure.
    pub fn failed(error: impl Into<BoxError>) -> Self {
        HandlerError::Failed(error.into())
    }

    /// A permanent failure.
    pub fn rejected(error: impl Into<BoxError>) -> Self {
        HandlerError::Rejected(error.into())
    }

    /// An outage of what the handler depends on.
    pub fn unavailable(error: impl Into<BoxError>) -> Self {
        HandlerError::Unavailable(error.into())
    }
}

/// Handles one message under its key. Called once per attempt; it must be safe to call again
/// for the same key (that is what the claim in it is for).
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles `message`, whose key is `key`.
    async fn handle(&self, key: &Key, message: &Message) -> Result<Handled, HandlerError>;
}

#[async_trait]
impl<H: Handler + ?Sized> Handler for Arc<H> {
    async fn handle(&self, key: &Key, message: &Message) -> Result<Handled, HandlerError> {
        (**self).handle(key, message).await
    }
}

/// The handler for effects outside the store: claim the key, run `work`, complete with its
/// outcome, or release the key if it fails or panics (see [`Oncely::run`]), unless its error
/// says the outcome is unknown.
///
/// The payload's fingerprint goes with the claim, so a key reused with a different payload is
/// [`HandlerError::Rejected`] (dead-lettered) rather than silently treated as a duplicate. By
/// default it is the payload's canonical JSON ([`PayloadFingerprint::Json`]), so a producer that
/// re-serialises the same JSON (other key order, other spacing) does not conflict;
/// [`fingerprint`](Self::fingerprint) chooses which fields count (leave out a timestamp that
/// changes between resends), [`without_fingerprint`](Self::without_fingerprint) turns it off.
///
/// A crash after `work`'s effect and before the completion leaves the claim to its lease; the
/// redelivery after it runs `work` again. If that matters, keep the effect in the store's
/// database and use the transactional inbox.
///
/// When `work` cannot tell whether its effect happened (it called another process and the
/// answer never came), it fails with [`OutcomeUnknown`](crate::OutcomeUnknown) (itself or
/// boxed): the key is then **not** released. The failure is still
/// [`HandlerError::Failed`], one attempt, but the runner's next attempt finds the key
/// [`Handled::InProgress`] and gives the message back to the broker without counting an
/// attempt, again each time it returns, until the lease ends; then a redelivery takes the key
/// over and runs `work` again. So nothing runs it twice within a lease, and the message is not
/// dead-lettered for it (unless `max_attempts` is 1, which leaves no attempt after the first).
pub struct OncelyHandler<F> {
    oncely: Oncely,
    scope: Scope,
    fingerprint: Option<PayloadFingerprint>,
    work: F,
}

impl<F> OncelyHandler<F> {
    /// Runs `work(key, message)` once per key in `scope`.
    pub fn new(oncely: Oncely, scope: Scope, work: F) -> Self {
        OncelyHandler {
            oncely,
            scope,
            fingerprint: Some(PayloadFingerprint::Json),
            work,
        }
    }

    /// Does not check that a key always comes with the same payload.
    pub fn without_fingerprint(mut self) -> Self {
        self.fingerprint = None;
        self
    }

    /// Checks that a key always comes with the same payload as `fingerprint` sees it: see
    /// [`PayloadFingerprint`]. A payload it cannot fingerprint (fields asked of a payload that
    /// is not JSON) is [`HandlerError::Rejected`].
    pub fn fingerprint(mut self, fingerprint: PayloadFingerprint) -> Self {
        self.fingerprint = Some(fingerprint);
        self
    }
}

impl<F> fmt::Debug for OncelyHandler<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OncelyHandler")
            .field("scope", &self.scope)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<F, Fut, E> Handler for OncelyHandler<F>
where
    F: Fn(Key, Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<u8>, E>> + Send,
    E: Into<BoxError> + Send + 'static,
{
    async fn handle(&self, key: &Key, message: &Message) -> Result<Handled, HandlerError> {
        let fingerprint = match &self.fingerprint {
            Some(spec) => Some(spec.of(message.payload()).map_err(|e| {
                HandlerError::rejected(format!("the payload has no fingerprint: {e}"))
            })?),
            None => None,
        };
        let work = || (self.work)(key.clone(), message.clone());
        match self.oncely.run(&self.scope, key, fingerprint, work).await {
            Ok(RunOutcome::Executed(_)) => Ok(Handled::Done),
            Ok(RunOutcome::Replayed(_)) => Ok(Handled::Duplicate),
            Err(RunError::InProgress { retry_after }) => Ok(Handled::InProgress { retry_after }),
            Err(RunError::Conflict { .. }) => Err(HandlerError::rejected(format!(
                "key `{key}` was already used with a different payload"
            ))),
            Err(RunError::Handler(e)) => Err(HandlerError::Failed(e.into())),
            Err(RunError::Panicked(message)) => {
                Err(HandlerError::failed(format!("handler panicked: {message}")))
            }
            Err(RunError::Store(e @ crate::Error::ClaimLost { .. })) => {
                Err(HandlerError::failed(e))
            }
            Err(RunError::Store(e)) => Err(HandlerError::unavailable(e)),
        }
    }
}

/// Exponential backoff between a failed attempt and the next, and how many attempts a message
/// gets before it is dead-lettered.
///
/// ```
/// use std::time::Duration;
/// use oncely_core::consumer::RetryPolicy;
///
/// let policy = RetryPolicy::default(); // 5 attempts, 100 ms doubling up to 10 s
/// assert_eq!(policy.backoff_after(1), Duration::from_millis(100));
/// assert_eq!(policy.backoff_after(3), Duration::from_millis(400));
/// assert_eq!(policy.backoff_after(30), Duration::from_secs(10));
///
/// let quick = RetryPolicy::default()
///     .with_max_attempts(3)
///     .with_backoff(Duration::from_millis(10), Duration::from_millis(50));
/// assert_eq!(quick.max_attempts, 3);
/// assert_eq!(quick.backoff_after(4), Duration::from_millis(50));
/// ```
///
/// It may gain fields (`#[non_exhaustive]`): start from [`RetryPolicy::default`] and use the
/// setters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts before the message is dead-lettered, at least 1.
    pub max_attempts: u32,
    /// Wait after the first failure.
    pub initial_backoff: Duration,
    /// The longest wait.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// This policy with `max_attempts` attempts before a message is dead-lettered (the runner
    /// counts 0 as 1).
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// This policy waiting `initial` after the first failure, doubling up to `max`.
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    /// The wait after failed attempt number `attempt` (1-based): doubling from
    /// `initial_backoff`, capped at `max_backoff`.
    pub fn backoff_after(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.initial_backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff)
    }
}

/// What goes with a dead-lettered message, as headers ([`DeadLetter::headers`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The last error.
    pub error: String,
    /// Attempts made (0 for a message rejected before any attempt, e.g. with no key).
    pub attempts: u32,
    /// The message's key, if it had one.
    pub key: Option<Key>,
    /// Where the message was consumed from.
    pub source: String,
    /// This dead letter's own id ([`DEAD_LETTER_ID_HEADER`]): [`DeadLetter::new_id`] for each
    /// dead-lettering.
    pub id: String,
}

impl DeadLetter {
    /// A new dead letter's id: 128 random bits, in hex.
    pub fn new_id() -> String {
        format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
    }

    /// The headers a runner attaches to the dead-lettered copy, besides the original ones.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            (ERROR_HEADER, one_line(&self.error)),
            (ATTEMPTS_HEADER, self.attempts.to_string()),
            (SOURCE_HEADER, self.source.clone()),
            (DEAD_LETTER_ID_HEADER, self.id.clone()),
        ];
        if let Some(key) = &self.key {
            headers.push((KEY_HEADER, key.as_str().to_owned()));
        }
        headers
    }
}

// Header values are single lines on every broker.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A broker failed to receive, ack or publish.
///
/// Most failures pass: a connection drops, a server restarts, a request times out. A runner
/// retries those with backoff. A few cannot pass by waiting (the queue does not exist, the
/// credentials are refused): a source reports those as [`permanent`](Self::permanent), and the
/// runner stops on them.
#[derive(Debug, thiserror::Error)]
#[error("{broker}: {what}: {source}")]
pub struct BrokerError {
    /// Which broker (`nats`, `amqp`, ...).
    pub broker: &'static str,
    /// What was being done (`ack`, `publish to dead-letter queue orders.dlq`, ...).
    pub what: String,
    /// The broker client's error.
    #[source]
    pub source: BoxError,
    permanent: bool,
}

impl BrokerError {
    /// A failure of `broker` while doing `what`, which may pass: retrying later can succeed.
    pub fn new(broker: &'static str, what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        BrokerError {
            broker,
            what: what.into(),
            source: source.into(),
            permanent: false,
        }
    }

    /// A failure of `broker` while doing `what` that waiting will not mend: a destination
    /// that does not exist, credentials or permissions refused, a setting the broker rejects.
    ///
    /// ```
    /// use oncely_core::consumer::BrokerError;
    ///
    /// let gone = BrokerError::permanent("amqp", "consuming queue orders", "NOT_FOUND");
    /// assert!(gone.is_permanent());
    /// assert!(!BrokerError::new("amqp", "receive", "connection reset").is_permanent());
    /// ```
    pub fn permanent(
        broker: &'static str,
        what: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        BrokerError {
            permanent: true,
            ..BrokerError::new(broker, what, source)
        }
    }

    /// A source opened with `dlq=none` was asked to dead-letter: it has nowhere to.
    pub fn no_dead_letters(broker: &'static str) -> Self {
        BrokerError::permanent(
            broker,
            "dead-lettering",
            "this source has no dead-letter destination (dlq=none)",
        )
    }

    /// Whether retrying cannot help (see [`permanent`](Self::permanent)).
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }
}

/// One delivered message and the broker operations that settle it. A runner calls exactly one
/// of [`ack`](Self::ack) and [`redeliver`](Self::redeliver) per delivery, after
/// [`dead_letter`](Self::dead_letter) where the contract says so.
#[async_trait]
pub trait Delivery: Send + Sync + 'static {
    /// The message.
    fn message(&self) -> &Message;

    /// Settles the message for good: the broker will not deliver it again.
    async fn ack(&self) -> Result<(), BrokerError>;

    /// Gives the message back, to be delivered again after about `after` (to this consumer or
    /// another one).
    async fn redeliver(&self, after: Duration) -> Result<(), BrokerError>;

    /// Publishes a copy to the dead-letter destination with `letter`'s headers and waits for the
    /// broker to confirm it. The runner acks the original only after this succeeds.
    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), BrokerError>;

    /// Tells the broker the message is still being worked on, so it does not redeliver it
    /// meanwhile. Brokers without such a signal do nothing.
    async fn in_progress(&self) -> Result<(), BrokerError> {
        Ok(())
    }
}

/// A stream of deliveries from one consumer (a durable JetStream consumer, an AMQP queue).
#[async_trait]
pub trait Source: Send + 'static {
    /// What it delivers.
    type Delivery: Delivery;

    /// The next delivery; `None` when the consumer is closed for good.
    ///
    /// An error that may pass (a lost connection) is returned, not waited out: the runner
    /// logs it and calls again after a backoff, and the source reconnects on that call if it
    /// must. A [`permanent`](BrokerError::permanent) error ends the runner.
    async fn next(&mut self) -> Option<Result<Self::Delivery, BrokerError>>;
}

/// How one delivery was settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Handled now and acked.
    Done,
    /// A duplicate, acked without handling.
    Duplicate,
    /// Older than a version of its entity already applied, acked without handling.
    Stale,
    /// Given back to the broker (in progress elsewhere, store unavailable, or shutting down).
    Redelivered,
    /// Published to the dead-letter destination, then acked.
    DeadLettered,
    /// The broker failed to settle it; it will come back by the broker's own redelivery.
    Unsettled,
}

impl Settled {
    /// A short name for metrics and logs: `done`, `duplicate`, `stale`, `given_back`,
    /// `dead_lettered`, `unsettled`.
    pub fn label(&self) -> &'static str {
        match self {
            Settled::Done => "done",
            Settled::Duplicate => "duplicate",
            Settled::Stale => "stale",
            Settled::Redelivered => "given_back",
            Settled::DeadLettered => "dead_lettered",
            Settled::Unsettled => "unsettled",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn key_sources_parse_and_print_back() {
        for spec in [
            "header:Event-Id",
            "message-id",
            "payload-hash",
            "/a,/b/c",
            "detail.orderId",
            "powertools_json(body).[a, b]",
        ] {
            let parsed: KeySource = spec.parse().unwrap();
            assert_eq!(parsed.to_string(), spec);
        }
        assert_eq!("header: ".parse::<KeySource>(), Err(KeySpecError::Empty));
        assert!("event id".parse::<KeySource>().is_err());
    }

    #[test]
    fn missing_or_invalid_keys_are_typed() {
        let message = Message::new(b"not json".to_vec(), "q").with_header("Id", "");
        assert_eq!(
            KeySource::Header("Other".into()).key_of(&message),
            Err(NoKey::MissingHeader("Other".into()))
        );
        assert!(matches!(
            KeySource::Header("id".into()).key_of(&message),
            Err(NoKey::Invalid(KeyError::Empty { .. }))
        ));
        assert!(matches!(
            "/id".parse::<KeySource>().unwrap().key_of(&message),
            Err(NoKey::NotJson(_))
        ));
        assert_eq!(
            KeySource::MessageId.key_of(&message),
            Err(NoKey::MissingMessageId)
        );
    }

    #[test]
    fn json_keys_keep_big_numbers_exact_and_strings_apart_from_numbers() {
        let key = |spec: &str, payload: &str| {
            let source: KeySource = spec.parse().unwrap();
            source
                .key_of(&Message::new(payload.as_bytes().to_vec(), "q"))
                .unwrap()
        };
        let distinct = [
            r#"{"id":18446744073709551616}"#,
            r#"{"id":18446744073709551617}"#,
            r#"{"id":100000000000000000000001}"#,
            r#"{"id":100000000000000000000002}"#,
            r#"{"id":"42"}"#,
            r#"{"id":42}"#,
        ];
        for spec in ["/id", "payload-hash"] {
            let keys: HashSet<Key> = distinct.iter().map(|p| key(spec, p)).collect();
            assert_eq!(keys.len(), distinct.len(), "{spec}: {keys:?}");
        }
        assert_eq!(key("/id", distinct[1]).as_str(), "18446744073709551617");
        assert_eq!(key("/id", r#"{ "id" : 42 }"#), key("/id", distinct[5]));
        assert_eq!(
            key("/a,/b", r#"{"a":100000000000000000000001,"b":"42"}"#).as_str(),
            r#"[100000000000000000000001,"42"]"#
        );
    }

    #[test]
    fn payload_hash_ignores_json_layout_but_not_bytes_of_non_json() {
        let a = Message::new(br#"{"a":1,"b":2}"#.to_vec(), "q");
        let b = Message::new(br#"{ "b": 2, "a": 1 }"#.to_vec(), "q");
        let c = Message::new(b"\x00raw".to_vec(), "q");
        let d = Message::new(b"\x00raw!".to_vec(), "q");
        let hash = |m: &Message| KeySource::PayloadHash.key_of(m).unwrap();
        assert_eq!(hash(&a), hash(&b));
        assert_ne!(hash(&c), hash(&d));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let policy = RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(35),
        };
        let waits: Vec<_> = (1..=4).map(|a| policy.backoff_after(a)).collect();
        assert_eq!(waits, [10, 20, 35, 35].map(Duration::from_millis).to_vec());
        assert_eq!(
            RetryPolicy::default().backoff_after(u32::MAX),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn dead_letter_headers_are_single_lines() {
        let letter = DeadLetter {
            error: "boom\nline two".into(),
            attempts: 3,
            key: Some(Key::new("k").unwrap()),
            source: "orders".into(),
            id: DeadLetter::new_id(),
        };
        let headers = letter.headers();
        assert!(headers.contains(&(ERROR_HEADER, "boom line two".into())));
        assert!(headers.contains(&(ATTEMPTS_HEADER, "3".into())));
        assert!(headers.contains(&(KEY_HEADER, "k".into())));
    }
}
