//! [`NatsSource`], a durable JetStream pull consumer's deliveries, and its [`NatsDelivery`].

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue, NATS_MESSAGE_ID};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::context::{
    GetStreamByNameErrorKind, GetStreamErrorKind, PublishErrorKind,
};
use async_nats::jetstream::{self, AckKind, Context};
use futures_util::{FutureExt, StreamExt};
use oncely_core::async_trait;
use oncely_core::consumer::{
    BrokerError, DeadLetter, Delivery, MESSAGE_ID_HEADER, Message, Source,
};

use crate::{BROKER, DEFAULT_ACK_WAIT, DEFAULT_BATCH, Error, NatsOptions};

/// The shortest delay of a redelivery. The runner gives messages back at once when it shuts
/// down; without a delay the server would send such a message straight back to this source's
/// open pull request, which closes a moment later, and the message would then wait out the ack
/// wait instead of going to the next consumer.
pub const MIN_REDELIVERY_DELAY: Duration = Duration::from_millis(250);

/// Idle heartbeat asked of the server for each pull request: a silent connection is noticed.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// How long one pull request waits on the server.
const PULL_EXPIRES: Duration = Duration::from_secs(30);

/// What a source and its deliveries share.
struct Shared {
    context: Context,
    server: String,
    stream: String,
    consumer: String,
    dead_letter_subject: String,
}

/// Deliveries from a durable JetStream pull consumer, for
/// [`Consumer::run`](https://docs.rs/oncely-consumer). Several sources on one consumer (in one
/// process or many) compete for its messages.
pub struct NatsSource {
    /// `None` only while dropping.
    messages: Option<pull::Stream>,
    /// Whether `next` was ever called: before, the stream has sent no pull request.
    pulled: bool,
    consumer: PullConsumer,
    batch: usize,
    shared: Arc<Shared>,
}

impl Drop for NatsSource {
    /// Gives back at once (NAK) the messages the server delivered here that the runner never
    /// took, so they do not wait out the ack wait: among them is any message the runner gave
    /// back while shutting down, which the server sent straight to this source's open pull.
    fn drop(&mut self) {
        if !self.pulled {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(mut messages) = self.messages.take() else {
            return;
        };
        let mut untaken = Vec::new();
        while let Some(Some(Ok(message))) = messages.next().now_or_never() {
            untaken.push(message);
        }
        // Unsubscribes before the NAKs go out, so the server does not hand them back to this
        // source's pull request.
        drop(messages);
        if !untaken.is_empty() {
            runtime.spawn(async move {
                for message in untaken {
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                }
            });
        }
    }
}

impl std::fmt::Debug for NatsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSource")
            .field("server", &self.shared.server)
            .field("stream", &self.shared.stream)
            .field("consumer", &self.shared.consumer)
            .field("dead_letter_subject", &self.shared.dead_letter_subject)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl NatsSource {
    /// Connects as `url` says (`nats://HOST[:PORT]/STREAM/CONSUMER[?OPTIONS]`, see the
    /// [crate docs](crate)), creating the consumer and the dead-letter stream if missing.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(NatsOptions::from_url(url)?).await
    }

    /// Connects to `options.server` and [`open`](Self::open)s the source.
    pub async fn connect_with(options: NatsOptions) -> Result<Self, Error> {
        let client = crate::connect(&options.server).await?;
        Self::open(jetstream::new(client), &options).await
    }

    /// A source on an existing connection: looks up `options.stream`, gets (or creates) the
    /// durable consumer, and makes sure a stream keeps the dead letters. `options.server` is
    /// only used in messages.
    pub async fn open(context: Context, options: &NatsOptions) -> Result<Self, Error> {
        let server = options.shown_server();
        let stream = match context.get_stream(&options.stream).await {
            Ok(stream) => stream,
            Err(e) => {
                return Err(match e.kind() {
                    GetStreamErrorKind::JetStream(js)
                        if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                    {
                        Error::NoStream {
                            stream: options.stream.clone(),
                            server,
                        }
                    }
                    _ => Error::JetStream {
                        what: format!(
                            "looking up JetStream stream {} (is JetStream enabled, nats-server -js?)",
                            options.stream
                        ),
                        server,
                        source: e.into(),
                    },
                });
            }
        };
        let consumer = durable_consumer(&stream, options, &server).await?;
        if !options.dead_letters {
            return Self::start(context, consumer, String::new(), options.batch, server).await;
        }
        let subject = options.dead_letter_subject_or_default();
        let keeper = match context.stream_by_subject(subject.as_str()).await {
            Ok(name) => name,
            Err(e) if e.kind() == GetStreamByNameErrorKind::NotFound => {
                if !options.create_dead_letter_stream {
                    return Err(Error::DeadLetters {
                        subject,
                        server,
                        reason: "no JetStream stream captures it, so dead letters would be lost: \
                                 create one, or leave out `create_dlq=false` to let oncely create it"
                            .into(),
                    });
                }
                let name = options.dead_letter_stream_or_default();
                ensure_stream_for(&context, &name, &subject)
                    .await
                    .map_err(|source| Error::JetStream {
                        what: format!("creating dead-letter stream {name} for {subject}"),
                        server: server.clone(),
                        source,
                    })?
            }
            Err(e) => {
                return Err(Error::JetStream {
                    what: format!("looking up the stream that captures {subject}"),
                    server,
                    source: e.into(),
                });
            }
        };
        if keeper == options.stream {
            return Err(Error::DeadLetters {
                subject,
                server,
                reason: format!(
                    "the consumed stream {keeper} captures it, so dead letters would be delivered \
                     again: pick a `dlq` subject outside {keeper}'s subjects"
                ),
            });
        }
        Self::start(context, consumer, subject, options.batch, server).await
    }

    /// A source on `consumer` as it is (it must be durable, with explicit acks), publishing dead
    /// letters to `dead_letter_subject`. Nothing checks that a stream captures that subject:
    /// see [`ensure_dead_letter_stream`].
    pub async fn from_consumer(
        context: Context,
        consumer: PullConsumer,
        dead_letter_subject: impl Into<String>,
    ) -> Result<Self, Error> {
        let server = server_of(&context);
        let cached = consumer.cached_info();
        check_consumer(
            &cached.config,
            None,
            &server,
            &cached.stream_name,
            &cached.name,
        )?;
        let subject = dead_letter_subject.into();
        Self::start(context, consumer, subject, DEFAULT_BATCH, server).await
    }

    /// Another source on the same consumer: the two compete for its messages.
    pub async fn another(&self) -> Result<Self, Error> {
        let s = &self.shared;
        let messages = pull_stream(&self.consumer, self.batch, s).await?;
        Ok(NatsSource {
            messages: Some(messages),
            pulled: false,
            consumer: self.consumer.clone(),
            batch: self.batch,
            shared: self.shared.clone(),
        })
    }

    async fn start(
        context: Context,
        consumer: PullConsumer,
        dead_letter_subject: String,
        batch: usize,
        server: String,
    ) -> Result<Self, Error> {
        let info = consumer.cached_info();
        let shared = Arc::new(Shared {
            server,
            stream: info.stream_name.clone(),
            consumer: info.name.clone(),
            dead_letter_subject,
            context,
        });
        let batch = batch.max(1);
        let messages = pull_stream(&consumer, batch, &shared).await?;
        Ok(NatsSource {
            messages: Some(messages),
            pulled: false,
            consumer,
            batch,
            shared,
        })
    }

    /// The stream consumed.
    pub fn stream(&self) -> &str {
        &self.shared.stream
    }

    /// The durable consumer's name.
    pub fn consumer_name(&self) -> &str {
        &self.shared.consumer
    }

    /// Where dead letters go; empty with `dlq=none`.
    pub fn dead_letter_subject(&self) -> &str {
        &self.shared.dead_letter_subject
    }

    /// The JetStream context, e.g. to read the consumer's state.
    pub fn context(&self) -> &Context {
        &self.shared.context
    }
}

async fn pull_stream(
    consumer: &PullConsumer,
    batch: usize,
    shared: &Shared,
) -> Result<pull::Stream, Error> {
    consumer
        .stream()
        .max_messages_per_batch(batch)
        .expires(PULL_EXPIRES)
        .heartbeat(HEARTBEAT)
        .messages()
        .await
        .map_err(|e| Error::JetStream {
            what: format!(
                "subscribing to consumer {} on stream {}",
                shared.consumer, shared.stream
            ),
            server: shared.server.clone(),
            source: e.into(),
        })
}

/// Gets the durable consumer, or creates it if allowed.
async fn durable_consumer(
    stream: &jetstream::stream::Stream,
    options: &NatsOptions,
    server: &str,
) -> Result<PullConsumer, Error> {
    let name = options.consumer.as_str();
    let failed = |what: String, source: oncely_core::BoxError| Error::JetStream {
        what,
        server: server.to_owned(),
        source,
    };
    match stream.consumer_info(name).await {
        Ok(info) => {
            check_consumer(&info.config, Some(options), server, &options.stream, name)?;
            stream
                .get_consumer::<pull::Config>(name)
                .await
                .map_err(|e| failed(format!("getting consumer {name} on {}", options.stream), e))
        }
        Err(e) if is_not_found(&e) => {
            if !options.create_consumer {
                return Err(Error::NoConsumer {
                    stream: options.stream.clone(),
                    consumer: name.to_owned(),
                    server: server.to_owned(),
                });
            }
            let config = pull::Config {
                durable_name: Some(name.to_owned()),
                ack_policy: AckPolicy::Explicit,
                deliver_policy: DeliverPolicy::All,
                ack_wait: options.ack_wait.unwrap_or(DEFAULT_ACK_WAIT),
                max_ack_pending: options.max_ack_pending.unwrap_or(0),
                ..Default::default()
            };
            stream.create_consumer(config).await.map_err(|e| {
                failed(
                    format!("creating consumer {name} on {}", options.stream),
                    e.into(),
                )
            })
        }
        Err(e) => Err(failed(
            format!("looking up consumer {name} on {}", options.stream),
            e.into(),
        )),
    }
}

fn is_not_found(e: &jetstream::context::ConsumerInfoError) -> bool {
    use jetstream::context::ConsumerInfoErrorKind as Kind;
    match e.kind() {
        Kind::NotFound => true,
        Kind::JetStream(js) => js.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND,
        _ => false,
    }
}

/// An existing consumer must ack explicitly, and match what the options ask of it.
fn check_consumer(
    config: &jetstream::consumer::Config,
    options: Option<&NatsOptions>,
    server: &str,
    stream: &str,
    consumer: &str,
) -> Result<(), Error> {
    let unusable = |reason: String| Error::UnusableConsumer {
        stream: stream.to_owned(),
        consumer: consumer.to_owned(),
        server: server.to_owned(),
        reason,
    };
    if config.deliver_subject.is_some() {
        return Err(unusable(
            "it is a push consumer; oncely reads a pull consumer: name another consumer".into(),
        ));
    }
    if config.durable_name.is_none() {
        return Err(unusable(
            "it is not durable, so its acks do not survive it: use a durable consumer".into(),
        ));
    }
    if config.ack_policy != AckPolicy::Explicit {
        return Err(unusable(format!(
            "its ack policy is {:?}; oncely acks each message on its own: use an explicit ack \
             policy (a new consumer name gets one)",
            config.ack_policy
        )));
    }
    let Some(options) = options else {
        return Ok(());
    };
    if let Some(wait) = options.ack_wait
        && wait != config.ack_wait
    {
        return Err(unusable(format!(
            "its ack wait is {:?}, the URL asks for {wait:?}: leave out `ack_wait` or change the \
             consumer",
            config.ack_wait
        )));
    }
    if let Some(max) = options.max_ack_pending
        && max != config.max_ack_pending
    {
        return Err(unusable(format!(
            "its max ack pending is {}, the URL asks for {max}: leave out `max_ack_pending` or \
             change the consumer",
            config.max_ack_pending
        )));
    }
    Ok(())
}

/// Makes sure a stream captures `subject`: answers the name of the one that does, creating
/// `stream` (file storage, default limits, capturing only `subject`) when none does.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let client = async_nats::connect("127.0.0.1:4222").await?;
/// let context = async_nats::jetstream::new(client);
/// let keeper = oncely_nats::ensure_dead_letter_stream(&context, "ORDERS_DLQ", "orders.dlq").await?;
/// println!("dead letters of orders go to stream {keeper}");
/// # Ok(()) }
/// ```
pub async fn ensure_dead_letter_stream(
    context: &Context,
    stream: &str,
    subject: &str,
) -> Result<String, Error> {
    ensure_stream_for(context, stream, subject)
        .await
        .map_err(|source| Error::JetStream {
            what: format!("making sure a stream keeps the dead letters sent to {subject}"),
            server: server_of(context),
            source,
        })
}

async fn ensure_stream_for(
    context: &Context,
    stream: &str,
    subject: &str,
) -> Result<String, oncely_core::BoxError> {
    match context.stream_by_subject(subject).await {
        Ok(name) => return Ok(name),
        Err(e) if e.kind() == GetStreamByNameErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let config = jetstream::stream::Config {
        name: stream.to_owned(),
        subjects: vec![subject.to_owned()],
        description: Some("oncely dead letters".to_owned()),
        ..Default::default()
    };
    let created = context.get_or_create_stream(config).await?;
    Ok(created.cached_info().config.name.clone())
}

/// The server a context is connected to, for messages.
fn server_of(context: &Context) -> String {
    let info = context.client().server_info();
    format!("nats://{}:{}", info.host, info.port)
}

#[async_trait]
impl Source for NatsSource {
    type Delivery = NatsDelivery;

    /// Polls the message stream held in the source, so it is cancel-safe: a `select!` that
    /// drops this future loses no message.
    async fn next(&mut self) -> Option<Result<NatsDelivery, BrokerError>> {
        self.pulled = true;
        let received = self.messages.as_mut()?.next().await?;
        Some(match received {
            Ok(raw) => Ok(NatsDelivery::new(raw, self.shared.clone())),
            Err(e) => Err(BrokerError::new(
                BROKER,
                format!(
                    "receive from consumer {} on stream {} at {}",
                    self.shared.consumer, self.shared.stream, self.shared.server
                ),
                e,
            )),
        })
    }
}

/// One message from JetStream and the acks that settle it.
pub struct NatsDelivery {
    message: Message,
    raw: jetstream::Message,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NatsDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsDelivery")
            .field("message", &self.message)
            .field("reply", &self.raw.message.reply)
            .finish_non_exhaustive()
    }
}

impl NatsDelivery {
    fn new(raw: jetstream::Message, shared: Arc<Shared>) -> Self {
        let m = &raw.message;
        let mut message = message_of(&m.subject, m.headers.as_ref(), &m.payload);
        if let Ok(info) = raw.info() {
            message = message.with_broker_id(format!("{}:{}", info.stream, info.stream_sequence));
        }
        NatsDelivery {
            message,
            raw,
            shared,
        }
    }

    /// The message as the client received it (reply subject, JetStream metadata).
    pub fn raw(&self) -> &jetstream::Message {
        &self.raw
    }

    fn error(&self, what: &str, source: impl Into<oncely_core::BoxError>) -> BrokerError {
        let s = &self.shared;
        let sequence = self
            .raw
            .info()
            .map(|i| format!(" (stream sequence {})", i.stream_sequence))
            .unwrap_or_default();
        BrokerError::new(
            BROKER,
            format!(
                "{what} of a message from consumer {} on stream {}{sequence} at {}",
                s.consumer, s.stream, s.server
            ),
            source,
        )
    }
}

/// A JetStream message as the runner sees it: every header, in name order, the message id from
/// `Oncely-Message-Id` if set (a redriven message's, whose `Nats-Msg-Id` is its redrive's), else
/// `Nats-Msg-Id`, the subject as the source.
fn message_of(subject: &str, headers: Option<&HeaderMap>, payload: &[u8]) -> Message {
    let mut message = Message::new(payload.to_vec(), subject);
    let Some(headers) = headers else {
        return message;
    };
    let mut pairs: Vec<(&HeaderName, &Vec<HeaderValue>)> = headers.iter().collect();
    pairs.sort_by(|a, b| AsRef::<str>::as_ref(a.0).cmp(b.0.as_ref()));
    for (name, values) in pairs {
        for value in values {
            message = message.with_header(AsRef::<str>::as_ref(name), value.as_str());
        }
    }
    if let Some(id) = headers
        .get(MESSAGE_ID_HEADER)
        .or_else(|| headers.get(NATS_MESSAGE_ID))
    {
        message = message.with_message_id(id.as_str());
    }
    message
}

/// Headers meant for the original's stream, not for the dead-letter stream.
fn for_the_original_stream(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("nats-expected-") || lower == "nats-rollup" || lower == "nats-ttl"
}

#[async_trait]
impl Delivery for NatsDelivery {
    fn message(&self) -> &Message {
        &self.message
    }

    /// Acks and waits for the server to confirm the ack.
    async fn ack(&self) -> Result<(), BrokerError> {
        self.raw
            .double_ack()
            .await
            .map_err(|e| self.error("ack", e))
    }

    /// NAKs with a delay of `after`, at least [`MIN_REDELIVERY_DELAY`], confirmed by the
    /// server.
    async fn redeliver(&self, after: Duration) -> Result<(), BrokerError> {
        self.raw
            .double_ack_with(AckKind::Nak(Some(after.max(MIN_REDELIVERY_DELAY))))
            .await
            .map_err(|e| self.error("nak", e))
    }

    /// Publishes the copy to the dead-letter subject and waits for a stream to store it.
    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), BrokerError> {
        let subject = &self.shared.dead_letter_subject;
        if subject.is_empty() {
            return Err(BrokerError::no_dead_letters(BROKER));
        }
        let mut headers = HeaderMap::new();
        if let Some(original) = &self.raw.message.headers {
            for (name, values) in original.iter() {
                let name_text: &str = name.as_ref();
                if for_the_original_stream(name_text)
                    || name_text.eq_ignore_ascii_case(NATS_MESSAGE_ID.as_ref())
                {
                    continue;
                }
                for value in values {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        for (name, value) in letter.headers() {
            let value: HeaderValue = value
                .parse()
                .map_err(|e| self.error(&format!("dead-letter header {name}"), e))?;
            headers.insert(name, value);
        }
        // The message's own id moves to Oncely-Message-Id: as Nats-Msg-Id it would make the
        // dead-letter stream drop the next dead letter of the same message (after a redrive)
        // within its duplicate window. The stored copy's sequence dedups only a repeat of this
        // dead-lettering (a crash before the ack).
        if let Some(id) = self.message.message_id()
            && headers.get(MESSAGE_ID_HEADER).is_none()
        {
            headers.insert(MESSAGE_ID_HEADER, id);
        }
        if let Some(id) = self.message.broker_id() {
            headers.insert(NATS_MESSAGE_ID, id);
        }
        let what = format!("publish to dead-letter subject {subject}");
        let published = self
            .shared
            .context
            .publish_with_headers(subject.clone(), headers, self.raw.message.payload.clone())
            .await
            .map_err(|e| self.error(&what, e))?;
        match published.await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound => Err(self.error(
                &format!(
                    "{what}: no JetStream stream captures it (create one, or connect with \
                     create_dlq left on)"
                ),
                e,
            )),
            Err(e) => Err(self.error(&what, e)),
        }
    }

    /// Tells the server the message is being worked on (`+WPI`), restarting its ack wait.
    async fn in_progress(&self) -> Result<(), BrokerError> {
        self.raw
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| self.error("in-progress signal", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_keeps_every_header_and_takes_its_id_from_nats_msg_id() {
        let mut headers = HeaderMap::new();
        headers.insert("Event-Id", "e-1");
        headers.append("Tag", "a");
        headers.append("Tag", "b");
        headers.insert(NATS_MESSAGE_ID, "m-1");
        let message = message_of("orders.created", Some(&headers), b"{}");
        assert_eq!(message.source(), "orders.created");
        assert_eq!(message.message_id(), Some("m-1"));
        assert_eq!(message.header("event-id"), Some("e-1"));
        let tags: Vec<_> = message
            .headers()
            .iter()
            .filter(|(n, _)| n == "Tag")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(tags, ["a", "b"]);
        assert_eq!(message_of("s", None, b"x").headers(), &[]);
    }

    #[test]
    fn headers_for_the_original_stream_stay_off_the_dead_letter() {
        for name in ["Nats-Expected-Last-Sequence", "Nats-Rollup", "nats-ttl"] {
            assert!(for_the_original_stream(name), "{name}");
        }
        for name in ["Nats-Msg-Id", "Event-Id", "Oncely-Error"] {
            assert!(!for_the_original_stream(name), "{name}");
        }
    }
}
