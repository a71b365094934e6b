//! [`AmqpSource`]: a queue consumed with manual acks; [`AmqpDelivery`]: one message of it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::Confirmation;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ErrorKind};
use oncely_core::async_trait;
use oncely_core::consumer::{BrokerError, DeadLetter, Delivery, Message, Source};

use crate::message::{PERSISTENT, from_amqp, long_string};
use crate::{AmqpOptions, AmqpUrl, BROKER, Error};

/// Gives one delivery back to its queue.
const REQUEUE: BasicNackOptions = BasicNackOptions {
    multiple: false,
    requeue: true,
};

/// A RabbitMQ queue as a [`Source`] for the runner.
///
/// It consumes with manual acks and a prefetch (`basic.qos`), so at most
/// [`prefetch`](AmqpOptions::prefetch) deliveries are unacked at once; its dead letters are
/// published through the default exchange to the dead-letter queue on a second channel with
/// publisher confirms. Dropping it (the runner does when `Consumer::run`
/// returns) closes its consuming channel, so whatever it still held unacked goes back to the
/// queue at once.
///
/// A source that opened its own connection ([`connect`](Self::connect)) survives losing it (a
/// restart of RabbitMQ, a network cut): [`next`](Source::next) reports the loss, and the next
/// call connects again, until it can. What was delivered on the lost connection cannot be acked
/// any more; RabbitMQ delivers it again. A queue deleted meanwhile, or a login refused, is a
/// [`permanent`](BrokerError::permanent) error.
pub struct AmqpSource {
    /// `None` from a lost connection until it is opened again.
    live: Option<Consuming>,
    /// How to connect again, when the source opened its own connection.
    reopen: Option<AmqpUrl>,
    queue: String,
    dead_letter_queue: String,
}

/// A consumer on one connection.
struct Consuming {
    consumer: lapin::Consumer,
    // Kept so the consuming channel closes when the source is dropped, not before.
    _channel: Channel,
    shared: Arc<Shared>,
}

/// What every delivery of one source needs to settle itself.
struct Shared {
    queue: String,
    dead_letter_queue: String,
    publisher: Channel,
    max_redelivery_wait: Duration,
}

impl AmqpSource {
    /// Connects to the URL (see [`AmqpUrl`] for its form) and starts consuming its queue.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), oncely_rabbitmq::Error> {
    /// use oncely_rabbitmq::AmqpSource;
    ///
    /// let source = AmqpSource::connect("amqp://guest:guest@127.0.0.1:5672/%2f/orders?prefetch=16").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_url(&url.parse()?).await
    }

    /// Connects to a parsed [`AmqpUrl`] and starts consuming its queue.
    pub async fn connect_url(url: &AmqpUrl) -> Result<Self, Error> {
        let live = Consuming::open(url).await?;
        Ok(AmqpSource {
            queue: live.shared.queue.clone(),
            dead_letter_queue: live.shared.dead_letter_queue.clone(),
            live: Some(live),
            reopen: Some(url.clone()),
        })
    }

    /// Consumes `options`' queue on an existing connection, on channels of its own (closed when
    /// the source and its deliveries are dropped; the connection stays yours). Such a source
    /// cannot connect again: when the connection is lost, its errors are reported and then it
    /// ends.
    ///
    /// The queue must exist. The dead-letter queue is declared durable if it does not.
    pub async fn with_connection(
        connection: &Connection,
        options: AmqpOptions,
    ) -> Result<Self, Error> {
        let live = Consuming::start(connection, options).await?;
        Ok(AmqpSource {
            queue: live.shared.queue.clone(),
            dead_letter_queue: live.shared.dead_letter_queue.clone(),
            live: Some(live),
            reopen: None,
        })
    }

    /// The queue consumed.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Where dead letters go.
    pub fn dead_letter_queue(&self) -> &str {
        &self.dead_letter_queue
    }

    /// The connection is lost: what the runner is told, and the source connects again at the
    /// next call.
    fn lost(&mut self, reason: impl Into<oncely_core::BoxError>) -> BrokerError {
        self.live = None;
        let what = format!("receiving from queue {} (will connect again)", self.queue);
        BrokerError::new(BROKER, what, reason)
    }
}

impl Consuming {
    async fn open(url: &AmqpUrl) -> Result<Self, Error> {
        let connection = url.open("oncely").await?;
        // The channels hold the connection open; it closes when they are all gone.
        Self::start(&connection, url.options().clone()).await
    }

    async fn start(connection: &Connection, options: AmqpOptions) -> Result<Self, Error> {
        let queue = options.queue_name().to_owned();
        let dead_letter_queue = options.dead_letter_queue_name();
        let queue_name = short(&queue)?;
        ensure_queues(connection, &queue, &dead_letter_queue).await?;

        let publisher = open(connection).await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(Error::setup("enabling publisher confirms"))?;

        let channel = open(connection).await?;
        channel
            .basic_qos(options.prefetch_count(), BasicQosOptions::default())
            .await
            .map_err(Error::setup("setting the prefetch (basic.qos)"))?;
        let consumer = channel
            .basic_consume(
                queue_name,
                consumer_tag(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(Error::setup(format!("consuming queue `{queue}`")))?;
        Ok(Consuming {
            consumer,
            _channel: channel,
            shared: Arc::new(Shared {
                queue,
                dead_letter_queue,
                publisher,
                max_redelivery_wait: options.redelivery_wait_cap(),
            }),
        })
    }
}

impl fmt::Debug for AmqpSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpSource")
            .field("queue", &self.queue)
            .field("dead_letter_queue", &self.dead_letter_queue)
            .field("connected", &self.live.is_some())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Source for AmqpSource {
    type Delivery = AmqpDelivery;

    /// Cancel-safe: the consumer stream lives in the source, and a delivery is only taken out
    /// of it when this returns. A connection being opened again when the future is dropped is
    /// dropped with it, and opened again at the next call.
    async fn next(&mut self) -> Option<Result<AmqpDelivery, BrokerError>> {
        if self.live.is_none() {
            let url = self.reopen.as_ref()?;
            match Consuming::open(url).await {
                Ok(live) => {
                    tracing::info!(queue = %self.queue, "connected to RabbitMQ again");
                    self.live = Some(live);
                }
                Err(error) => return Some(Err(reopen_failed(&self.queue, error))),
            }
        }
        let live = self.live.as_mut()?;
        let delivery = match live.consumer.next().await {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) if self.reopen.is_some() => return Some(Err(self.lost(error))),
            Some(Err(error)) => {
                let what = format!("receiving from queue {}", self.queue);
                return Some(Err(BrokerError::new(BROKER, what, error)));
            }
            None if self.reopen.is_some() => {
                return Some(Err(self.lost(
                    "the server closed the consuming channel or cancelled the consumer",
                )));
            }
            None => return None,
        };
        let shared = live.shared.clone();
        let message = from_amqp(&delivery.properties, &delivery.data, &shared.queue);
        Some(Ok(AmqpDelivery {
            message,
            delivery,
            shared,
        }))
    }
}

/// Connecting again failed: permanent when waiting cannot mend it (the queue is gone, the login
/// is refused, a name is invalid), else to be tried again.
fn reopen_failed(queue: &str, error: Error) -> BrokerError {
    let what = format!("connecting again to consume queue {queue}");
    let permanent = match &error {
        Error::QueueNotFound { .. } | Error::InvalidQueueName { .. } | Error::InvalidUrl { .. } => {
            true
        }
        Error::Connect { source, .. } | Error::Setup { source, .. } => refused(source),
    };
    if permanent {
        BrokerError::permanent(BROKER, what, error)
    } else {
        BrokerError::new(BROKER, what, error)
    }
}

/// One message of an [`AmqpSource`], settled with `basic.ack` / `basic.nack`.
pub struct AmqpDelivery {
    message: Message,
    delivery: lapin::message::Delivery,
    shared: Arc<Shared>,
}

impl AmqpDelivery {
    /// Whether the server delivered it before (AMQP's `redelivered` flag).
    pub fn redelivered(&self) -> bool {
        self.delivery.redelivered
    }

    /// lapin's delivery: properties, exchange and routing key as received.
    pub fn amqp(&self) -> &lapin::message::Delivery {
        &self.delivery
    }

    fn settled(&self, what: &str, result: lapin::Result<bool>) -> Result<(), BrokerError> {
        match result {
            Ok(true) => Ok(()),
            Ok(false) => Err(BrokerError::new(
                BROKER,
                format!("{what} on queue {}", self.shared.queue),
                "the delivery was already settled, or its channel failed (the server will redeliver it)",
            )),
            Err(error) => Err(BrokerError::new(
                BROKER,
                format!("{what} on queue {}", self.shared.queue),
                error,
            )),
        }
    }
}

impl fmt::Debug for AmqpDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpDelivery")
            .field("message", &self.message)
            .field("delivery_tag", &self.delivery.delivery_tag)
            .field("redelivered", &self.delivery.redelivered)
            .finish()
    }
}

#[async_trait]
impl Delivery for AmqpDelivery {
    fn message(&self) -> &Message {
        &self.message
    }

    async fn ack(&self) -> Result<(), BrokerError> {
        let acked = self.delivery.acker.ack(BasicAckOptions::default()).await;
        self.settled("ack", acked)
    }

    /// AMQP has no delayed requeue: `basic.nack` with requeue puts the message back at once.
    /// So the message stays here, unacked (holding one prefetch slot), for `after` (at most
    /// [`AmqpOptions::max_redelivery_wait`]), then a background task nacks it back to the queue.
    /// This returns at once, freeing the runner's handler slot; with no wait it nacks before
    /// returning. If the source is dropped first, its channel closes and the server requeues
    /// the message then.
    async fn redeliver(&self, after: Duration) -> Result<(), BrokerError> {
        let wait = after.min(self.shared.max_redelivery_wait);
        if wait.is_zero() {
            let nacked = self.delivery.acker.nack(REQUEUE).await;
            return self.settled("nack (requeue)", nacked);
        }
        let acker = self.delivery.acker.clone();
        let queue = self.shared.queue.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            match acker.nack(REQUEUE).await {
                Ok(true) => {}
                // The channel closed meanwhile: the server requeued the message itself.
                Ok(false) => {}
                Err(error) => tracing::debug!(
                    %error, %queue,
                    "delayed nack failed; the message returns when its channel closes"
                ),
            }
        });
        Ok(())
    }

    /// Publishes the original payload and properties (but `expiration`, so the dead letter
    /// does not expire, and `user_id`, which the server checks against this connection's user),
    /// its headers plus the dead letter's, as a persistent message through the default exchange to the dead-letter queue, and waits
    /// for the server's confirm. A nack, or a return because the queue is gone, is an error.
    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), BrokerError> {
        let queue = &self.shared.dead_letter_queue;
        if queue.is_empty() {
            return Err(BrokerError::no_dead_letters(BROKER));
        }
        let what = format!("publish to dead-letter queue {queue}");
        let failed = |error: lapin::Error| BrokerError::new(BROKER, what.clone(), error);

        let mut headers = self
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        for (name, value) in letter.headers() {
            headers.insert(name.into(), long_string(&value));
        }
        let properties = dead_letter_properties(&self.delivery.properties, headers);
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = self
            .shared
            .publisher
            .basic_publish(
                ShortString::from(""),
                ShortString::from(queue.as_str()),
                options,
                &self.delivery.data,
                properties,
            )
            .await
            .map_err(failed)?
            .await
            .map_err(failed)?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                Err(BrokerError::new(
                    BROKER,
                    what,
                    format!(
                        "returned by the server: {} {} (does the queue exist?)",
                        returned.reply_code,
                        returned.reply_text.as_str()
                    ),
                ))
            }
            Confirmation::Nack(None) => Err(BrokerError::new(
                BROKER,
                what,
                "the server nacked it (out of disk or memory? see the RabbitMQ log)",
            )),
            Confirmation::NotRequested => Err(BrokerError::new(
                BROKER,
                what,
                "publisher confirms are off on the dead-letter channel",
            )),
        }
    }
}

fn dead_letter_properties(original: &BasicProperties, headers: FieldTable) -> BasicProperties {
    let mut properties = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(PERSISTENT);
    macro_rules! copy {
        ($($get:ident => $set:ident),*) => {
            $(if let Some(value) = original.$get() {
                properties = properties.$set(value.clone());
            })*
        };
    }
    copy!(
        content_type => with_content_type,
        content_encoding => with_content_encoding,
        priority => with_priority,
        correlation_id => with_correlation_id,
        reply_to => with_reply_to,
        message_id => with_message_id,
        timestamp => with_timestamp,
        kind => with_type,
        app_id => with_app_id,
        cluster_id => with_cluster_id
    );
    properties
}

async fn open(connection: &Connection) -> Result<Channel, Error> {
    connection
        .create_channel()
        .await
        .map_err(Error::setup("opening a channel"))
}

fn short(name: &str) -> Result<ShortString, Error> {
    ShortString::try_new(name).map_err(|_| Error::InvalidQueueName {
        queue: name.to_owned(),
    })
}

/// Checks that `queue` exists and declares `dead_letter_queue` durable if it does not (none if
/// it is empty). A
/// passive declare of a missing queue closes its channel, hence a channel per check.
async fn ensure_queues(
    connection: &Connection,
    queue: &str,
    dead_letter_queue: &str,
) -> Result<(), Error> {
    if !exists(connection, queue).await? {
        return Err(Error::QueueNotFound {
            queue: queue.to_owned(),
        });
    }
    if !dead_letter_queue.is_empty() && !exists(connection, dead_letter_queue).await? {
        let channel = open(connection).await?;
        channel
            .queue_declare(
                short(dead_letter_queue)?,
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
            .map_err(Error::setup(format!(
                "declaring dead-letter queue `{dead_letter_queue}`"
            )))?;
        let _ = channel.close(200, "OK".into()).await;
    }
    Ok(())
}

async fn exists(connection: &Connection, queue: &str) -> Result<bool, Error> {
    let channel = open(connection).await?;
    let declared = channel
        .queue_declare(
            short(queue)?,
            QueueDeclareOptions::default().passive(),
            FieldTable::default(),
        )
        .await;
    match declared {
        Ok(_) => {
            let _ = channel.close(200, "OK".into()).await;
            Ok(true)
        }
        Err(error) if not_found(&error) => Ok(false),
        Err(error) => Err(Error::Setup {
            what: format!("checking queue `{queue}`"),
            source: error,
        }),
    }
}

/// The server refused the login or an operation (AMQP's 403).
fn refused(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ProtocolError(e) if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
    )
}

fn not_found(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ProtocolError(e) if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)
    )
}

/// A consumer tag unique in this process, readable in the management UI.
fn consumer_tag() -> ShortString {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("oncely-{}-{n}", std::process::id()).into()
}
