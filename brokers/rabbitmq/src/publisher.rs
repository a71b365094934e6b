//! [`AmqpPublisher`]: persistent publishes with publisher confirms, for the outbox relay.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{Channel, Confirmation, Connection};
use oncely_core::async_trait;
use oncely_core::consumer::{BrokerError, Message};
use oncely_core::outbox::Publisher;
use oncely_core::url::{redact_password, take_param};

use crate::message::to_amqp;
use crate::{AmqpUrl, BROKER, Error};

/// Publishes outbox rows to RabbitMQ, as the relay (`oncely-relay`) asks: each message
/// persistent, with the AMQP `message_id` property set to its stable id and its headers as AMQP
/// headers, `mandatory`, on a channel with publisher confirms. A publish counts only once the
/// server confirmed it (`basic.ack`) without returning it: routed to at least one queue, which
/// has taken it (to disk, for a durable queue).
///
/// ## The URL
///
/// `amqp://[USER:PASSWORD@]HOST[:PORT][/VHOST]/ROUTING_KEY[?exchange=NAME]`. Without
/// `exchange`, messages go through the default exchange, so the routing key is a queue name:
/// `amqp://guest:guest@127.0.0.1/orders` publishes to queue `orders`. With `exchange=NAME`,
/// to that exchange with `ROUTING_KEY`. A row's own destination replaces the routing key. The
/// vhost is as in [`AmqpUrl`] (`%2f` is `/`, the default).
///
/// RabbitMQ does not drop a second publish with the same `message_id`: a row re-published after
/// a relay crash arrives twice, and consumers dedup by message id (`oncely consume --key
/// message-id`).
///
/// ```no_run
/// # async fn example() -> Result<(), oncely_rabbitmq::Error> {
/// let publisher = oncely_rabbitmq::AmqpPublisher::connect("amqp://guest:guest@127.0.0.1:5672/%2f/orders").await?;
/// # Ok(()) }
/// ```
pub struct AmqpPublisher {
    channel: Channel,
    exchange: String,
    routing_key: String,
}

impl std::fmt::Debug for AmqpPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpPublisher")
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .finish_non_exhaustive()
    }
}

impl AmqpPublisher {
    /// Connects as `url` says (see the type's docs) and opens a channel with confirms.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let (rest, exchange) = take_param(url, "exchange");
        let parsed: AmqpUrl = rest.parse().map_err(|e| match e {
            Error::InvalidUrl { reason, .. } => Error::InvalidUrl {
                url: redact_password(url),
                reason: reason.replace(
                    "queue",
                    "routing key (a queue through the default exchange)",
                ),
            },
            other => other,
        })?;
        let connection = parsed.open("oncely-relay").await?;
        let routing_key = parsed.options().queue_name().to_owned();
        Self::with_connection(&connection, exchange.unwrap_or_default(), routing_key).await
    }

    /// A publisher on a channel of its own on `connection`, to `exchange` (`""`: the default
    /// exchange) with `routing_key` for rows without a destination.
    pub async fn with_connection(
        connection: &Connection,
        exchange: String,
        routing_key: String,
    ) -> Result<Self, Error> {
        let channel = connection
            .create_channel()
            .await
            .map_err(Error::setup("opening a channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(Error::setup("enabling publisher confirms"))?;
        Ok(AmqpPublisher {
            channel,
            exchange,
            routing_key,
        })
    }

    /// The exchange published to (`""`: the default exchange).
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The routing key of rows without a destination.
    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }
}

#[async_trait]
impl Publisher for AmqpPublisher {
    async fn publish(
        &self,
        destination: Option<&str>,
        message: &Message,
    ) -> Result<(), BrokerError> {
        let routing_key = destination.unwrap_or(&self.routing_key);
        let exchange = if self.exchange.is_empty() {
            "the default exchange"
        } else {
            &self.exchange
        };
        let what = format!("publish to {exchange} with routing key {routing_key}");
        let failed = |error: lapin::Error| BrokerError::new(BROKER, what.clone(), error);
        // What the row itself makes impossible is a refusal (the relay parks such a row in the
        // end); what the server or the connection does may pass.
        let properties =
            to_amqp(message).map_err(|e| BrokerError::permanent(BROKER, what.clone(), e))?;
        let key = ShortString::try_new(routing_key)
            .map_err(|e| BrokerError::permanent(BROKER, what.clone(), e))?;
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = self
            .channel
            .basic_publish(
                ShortString::from(self.exchange.as_str()),
                key,
                options,
                message.payload(),
                properties,
            )
            .await
            .map_err(failed)?
            .await
            .map_err(failed)?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                Err(BrokerError::permanent(
                    BROKER,
                    what,
                    format!(
                        "returned by the server: {} {} (no queue is bound for this routing key: \
                         declare the queue or bind it)",
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
                "publisher confirms are off on the relay's channel",
            )),
        }
    }
}
