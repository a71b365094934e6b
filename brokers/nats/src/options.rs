//! Where to consume from and how: the server, the stream, the durable consumer, the dead-letter
//! subject, and the consumer settings used when it is created.

use std::str::FromStr;
use std::time::Duration;

use crate::Error;

mod parse;

/// The port used when the URL names none.
pub const DEFAULT_PORT: u16 = 4222;
/// How long the server waits for an ack before redelivering, for a consumer this crate creates.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// Messages asked of the server per pull request (see [`NatsOptions::batch`]).
pub const DEFAULT_BATCH: usize = 32;

/// Everything [`NatsSource::connect_with`](crate::NatsSource::connect_with) needs. Parse it
/// from a URL (`nats://HOST[:PORT]/STREAM/CONSUMER?...`, see the [crate docs](crate)) or build it:
///
/// ```
/// use std::time::Duration;
/// use oncely_nats::NatsOptions;
///
/// let from_url: NatsOptions = "nats://127.0.0.1:4222/ORDERS/billing?ack_wait=1m".parse()?;
/// let built = NatsOptions::new("nats://127.0.0.1:4222", "ORDERS", "billing")
///     .ack_wait(Duration::from_secs(60));
/// assert_eq!(from_url, built);
/// assert_eq!(built.dead_letter_subject_or_default(), "ORDERS.dlq");
/// # Ok::<(), oncely_nats::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsOptions {
    /// The server, as async-nats takes it: `nats://[user:password@]host:port`.
    pub server: String,
    /// The JetStream stream to consume.
    pub stream: String,
    /// The durable pull consumer's name.
    pub consumer: String,
    /// Where dead letters are published; `None` for `<STREAM>.dlq`.
    pub dead_letter_subject: Option<String>,
    /// The stream created for the dead letters when no stream captures their subject; `None` for
    /// `<STREAM>_DLQ`.
    pub dead_letter_stream: Option<String>,
    /// Create the dead-letter stream if no stream captures the dead-letter subject (default);
    /// `false` fails instead.
    pub create_dead_letter_stream: bool,
    /// Whether the source dead-letters at all (default). `false` (`dlq=none`): no dead-letter
    /// subject is checked or created, and a dead-lettering fails, so the message is given back:
    /// for a source that only moves messages on, as `oncely redrive` reads a dead-letter stream.
    pub dead_letters: bool,
    /// Create the durable consumer if it does not exist (default); `false` fails instead.
    pub create_consumer: bool,
    /// The consumer's ack wait; `None`: [`DEFAULT_ACK_WAIT`] for a new consumer, anything for an
    /// existing one. When set, an existing consumer must have it.
    pub ack_wait: Option<Duration>,
    /// The consumer's limit of delivered, unacked messages; `None`: the server's default for a
    /// new consumer, anything for an existing one. When set, an existing consumer must have it.
    pub max_ack_pending: Option<i64>,
    /// Messages asked of the server per pull request ([`DEFAULT_BATCH`]).
    pub batch: usize,
}

impl NatsOptions {
    /// Consumes `stream` through the durable `consumer` on `server`, with the defaults.
    pub fn new(
        server: impl Into<String>,
        stream: impl Into<String>,
        consumer: impl Into<String>,
    ) -> Self {
        NatsOptions {
            server: server.into(),
            stream: stream.into(),
            consumer: consumer.into(),
            dead_letter_subject: None,
            dead_letter_stream: None,
            create_dead_letter_stream: true,
            dead_letters: true,
            create_consumer: true,
            ack_wait: None,
            max_ack_pending: None,
            batch: DEFAULT_BATCH,
        }
    }

    /// Parses `nats://[user:password@]HOST[:PORT]/STREAM/CONSUMER[?OPTIONS]` (see the
    /// [crate docs](crate)).
    pub fn from_url(url: &str) -> Result<Self, Error> {
        parse::parse(url)
    }

    /// Publishes dead letters to `subject`.
    pub fn dead_letter_subject(mut self, subject: impl Into<String>) -> Self {
        self.dead_letter_subject = Some(subject.into());
        self
    }

    /// Names the dead-letter stream created when none captures the dead-letter subject.
    pub fn dead_letter_stream(mut self, stream: impl Into<String>) -> Self {
        self.dead_letter_stream = Some(stream.into());
        self
    }

    /// Whether to create a missing dead-letter stream.
    pub fn create_dead_letter_stream(mut self, create: bool) -> Self {
        self.create_dead_letter_stream = create;
        self
    }

    /// Whether to create a missing durable consumer.
    pub fn create_consumer(mut self, create: bool) -> Self {
        self.create_consumer = create;
        self
    }

    /// The consumer's ack wait.
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = Some(wait);
        self
    }

    /// The consumer's limit of delivered, unacked messages.
    pub fn max_ack_pending(mut self, max: i64) -> Self {
        self.max_ack_pending = Some(max);
        self
    }

    /// Messages asked of the server per pull request (at least 1). Messages waiting in the
    /// client for the runner count against the ack wait, so keep it near the runner's
    /// concurrency when handlers are slow.
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// The dead-letter subject: the one set, or `<STREAM>.dlq`.
    pub fn dead_letter_subject_or_default(&self) -> String {
        self.dead_letter_subject
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.stream))
    }

    /// The dead-letter stream's name: the one set, or `<STREAM>_DLQ`.
    pub fn dead_letter_stream_or_default(&self) -> String {
        self.dead_letter_stream
            .clone()
            .unwrap_or_else(|| format!("{}_DLQ", self.stream))
    }

    /// The server with any password replaced by `***`, for messages.
    pub fn shown_server(&self) -> String {
        oncely_core::url::redact_password(&self.server)
    }
}

impl FromStr for NatsOptions {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self, Error> {
        NatsOptions::from_url(url)
    }
}

impl std::fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsOptions")
            .field("server", &self.shown_server())
            .field("stream", &self.stream)
            .field("consumer", &self.consumer)
            .field("dead_letter_subject", &self.dead_letter_subject)
            .field("dead_letter_stream", &self.dead_letter_stream)
            .field("create_dead_letter_stream", &self.create_dead_letter_stream)
            .field("dead_letters", &self.dead_letters)
            .field("create_consumer", &self.create_consumer)
            .field("ack_wait", &self.ack_wait)
            .field("max_ack_pending", &self.max_ack_pending)
            .field("batch", &self.batch)
            .finish()
    }
}
