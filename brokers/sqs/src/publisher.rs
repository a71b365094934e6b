//! [`SqsPublisher`]: `SendMessage`s that return once SQS stored the message, for the outbox
//! relay.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::ProvideErrorMetadata as _;
use aws_sdk_sqs::types::MessageAttributeValue;
use oncely_core::async_trait;
use oncely_core::consumer::{BrokerError, Message};
use oncely_core::outbox::Publisher;
use sha2::{Digest, Sha256};

use crate::error::describe;
use crate::{BROKER, Error, SqsOptions, client};

/// The message attribute carrying a message's stable id (the relay's row id).
pub const MESSAGE_ID_ATTRIBUTE: &str = oncely_core::consumer::MESSAGE_ID_HEADER;

/// The most message attributes SQS takes on one message.
const MAX_ATTRIBUTES: usize = 10;

/// The longest `MessageGroupId` or `MessageDeduplicationId` SQS takes.
const MAX_FIFO_ID: usize = 128;

/// The `MessageGroupId` of a message without an ordering key (the relay's rows always have one:
/// their aggregate).
const DEFAULT_GROUP: &str = "oncely";

/// Sends outbox rows to SQS queues, as the relay (`oncely-relay`) asks: one `SendMessage` per
/// row, counted as sent once SQS answered it.
///
/// Each message goes out as:
///
/// - **body**: the payload. SQS bodies are text: a payload that is not UTF-8 is refused
///   ([`Error::NotUtf8`] as the [`BrokerError`]'s source) rather than converted with losses;
///   the row stays unsent.
/// - **message attributes**: its headers (String attributes), and the row's stable id in
///   [`MESSAGE_ID_ATTRIBUTE`] (`Oncely-Message-Id`), which [`SqsSource`](crate::SqsSource)
///   turns back into the message id, so consumers dedup with `oncely consume --key
///   message-id`. SQS takes at most 10 attributes: 9 headers besides the id; repeated header
///   names cannot be attributes either ([`Error::Unsendable`]).
/// - on a **FIFO queue** (its name ends in `.fifo`): `MessageGroupId` = the row's aggregate
///   (the message's ordering key), so SQS keeps each aggregate in order and consumers of the
///   queue take one aggregate's rows one at a time; `MessageDeduplicationId` = the row's id,
///   so SQS drops a re-publish within its 5-minute window (a relay killed between the send and
///   marking the row sent). SQS takes up to 128 ASCII letters, digits and punctuation in each:
///   a value that does not fit is sent as the hex SHA-256 of itself (one aggregate, one group
///   still).
///
/// On a standard queue SQS keeps no order and no dedup window: consumers dedup by the id
/// attribute.
///
/// ## The URL
///
/// `sqs://HOST[:PORT][/QUEUE][?region=REGION]` (HTTPS) or `sqs+http://HOST:PORT[/QUEUE]` (plain
/// HTTP: emulators such as moto or ElasticMQ). `QUEUE` is where rows without a destination
/// go; a row's own destination is a queue name too. Queues are not created here: connecting
/// checks that the default queue exists, and a row naming a queue that does not exist is
/// refused at once ([`Error::NoQueue`]). Each queue's URL is looked up once (`GetQueueUrl`).
/// Credentials as [`client`] says.
///
/// ```no_run
/// # async fn example() -> Result<(), oncely_sqs::Error> {
/// use oncely_sqs::SqsPublisher;
///
/// let publisher = SqsPublisher::connect("sqs://sqs.eu-west-1.amazonaws.com/orders.fifo?region=eu-west-1").await?;
/// let emulator = SqsPublisher::connect("sqs+http://127.0.0.1:5999/orders-events").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqsPublisher {
    client: Client,
    endpoint: String,
    queue: Option<String>,
    /// Queue name -> queue URL, for the queues seen to exist.
    urls: Arc<Mutex<HashMap<String, String>>>,
}

impl std::fmt::Debug for SqsPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsPublisher")
            .field("endpoint", &self.endpoint)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl SqsPublisher {
    /// Connects as `url` says (see the type's docs). Only `region=` may be in its query: the
    /// other options are a consumer's.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let options = SqsOptions::parse_queue_optional(url)?;
        let query = url.split_once('?').map(|(_, q)| q).unwrap_or_default();
        if let Some(other) = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| pair.split_once('=').map_or(pair, |(name, _)| name))
            .find(|name| *name != "region")
        {
            return Err(Error::InvalidUrl {
                url: oncely_core::url::redact_password(url),
                reason: format!("a publisher takes only region=, not `{other}`"),
            });
        }
        Self::open(&options).await
    }

    /// A publisher to the endpoint of `options`, with its queue (unless empty) as the default
    /// destination. Checks that it exists.
    pub async fn open(options: &SqsOptions) -> Result<Self, Error> {
        let publisher = SqsPublisher {
            client: client(options).await?,
            endpoint: options.endpoint.clone(),
            queue: Some(options.queue.clone()).filter(|q| !q.is_empty()),
            urls: Arc::default(),
        };
        if let Some(queue) = &publisher.queue {
            publisher.queue_url(queue).await?;
        }
        Ok(publisher)
    }

    /// The URL of `queue`, looked up once.
    async fn queue_url(&self, queue: &str) -> Result<String, Error> {
        if let Some(url) = self.urls.lock().expect("never poisoned").get(queue) {
            return Ok(url.clone());
        }
        let url = crate::options::queue_url(&self.client, &self.endpoint, queue).await?;
        self.urls
            .lock()
            .expect("never poisoned")
            .insert(queue.to_owned(), url.clone());
        Ok(url)
    }
}

/// The message attributes of `message`: its headers and its id.
fn attributes(
    queue: &str,
    message: &Message,
) -> Result<HashMap<String, MessageAttributeValue>, Error> {
    let unsendable = |reason: String| Error::Unsendable {
        queue: queue.to_owned(),
        reason,
    };
    let headers: Vec<(&str, &str)> = message
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        // The id travels as the message's own, whatever a header says.
        .filter(|(name, _)| !name.eq_ignore_ascii_case(MESSAGE_ID_ATTRIBUTE))
        .chain(message.message_id().map(|id| (MESSAGE_ID_ATTRIBUTE, id)))
        .collect();
    if headers.len() > MAX_ATTRIBUTES {
        return Err(unsendable(format!(
            "{} headers and its id make {} message attributes; SQS takes at most {MAX_ATTRIBUTES}",
            headers.len() - usize::from(message.message_id().is_some()),
            headers.len()
        )));
    }
    let mut names = HashSet::new();
    let mut attributes = HashMap::with_capacity(headers.len());
    for (name, value) in headers {
        if !names.insert(name.to_ascii_lowercase()) {
            return Err(unsendable(format!(
                "the header {name} is repeated (names are case-insensitive): SQS message attributes have one value each"
            )));
        }
        let value = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(value)
            .build()
            .map_err(|e| unsendable(format!("the header {name}: {e}")))?;
        attributes.insert(name.to_owned(), value);
    }
    Ok(attributes)
}

/// `id` if SQS takes it as a `MessageGroupId` or `MessageDeduplicationId` (1 to 128 ASCII
/// letters, digits and punctuation), else its hex SHA-256.
fn fifo_id(id: &str) -> String {
    let fits = !id.is_empty()
        && id.len() <= MAX_FIFO_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b.is_ascii_punctuation());
    if fits {
        return id.to_owned();
    }
    Sha256::digest(id.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[async_trait]
impl Publisher for SqsPublisher {
    async fn publish(
        &self,
        destination: Option<&str>,
        message: &Message,
    ) -> Result<(), BrokerError> {
        let queue = destination.or(self.queue.as_deref()).ok_or_else(|| {
            BrokerError::permanent(
                BROKER,
                "send",
                "the row names no destination and the relay has no default queue \
                 (sqs://HOST/QUEUE)",
            )
        })?;
        let what = || format!("send to {queue}");
        let body = std::str::from_utf8(message.payload()).map_err(|e| {
            let error = Error::NotUtf8 {
                queue: queue.to_owned(),
                valid_up_to: e.valid_up_to(),
            };
            BrokerError::permanent(BROKER, what(), error)
        })?;
        let attributes =
            attributes(queue, message).map_err(|e| BrokerError::permanent(BROKER, what(), e))?;
        let url = self
            .queue_url(queue)
            .await
            .map_err(|e| BrokerError::new(BROKER, what(), e))?;
        let mut send = self
            .client
            .send_message()
            .queue_url(url)
            .message_body(body)
            .set_message_attributes(Some(attributes));
        if queue.ends_with(".fifo") {
            send = send.message_group_id(fifo_id(message.ordering_key().unwrap_or(DEFAULT_GROUP)));
            if let Some(id) = message.dedup_id() {
                send = send.message_deduplication_id(fifo_id(id));
            }
        }
        send.send().await.map(drop).map_err(|e| {
            // SQS refused the message itself (too long, characters it does not take, a queue
            // that does not exist): no retry mends it, and the relay parks the row in the end.
            let refused = e
                .as_service_error()
                .and_then(|e| e.code())
                .is_some_and(|code| {
                    matches!(
                        code,
                        "InvalidMessageContents"
                            | "InvalidParameterValue"
                            | "AWS.SimpleQueueService.NonExistentQueue"
                            | "QueueDoesNotExist"
                    )
                });
            if refused {
                BrokerError::permanent(BROKER, what(), describe(&e))
            } else {
                BrokerError::new(BROKER, what(), describe(&e))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_ids_that_fit_are_kept_and_others_hashed() {
        assert_eq!(fifo_id("3f9a2c-42"), "3f9a2c-42");
        assert_eq!(fifo_id("order/1:a"), "order/1:a");
        let long = "x".repeat(MAX_FIFO_ID + 1);
        for unfit in [long.as_str(), "order 1", "ordré-1", ""] {
            let hashed = fifo_id(unfit);
            assert_eq!(hashed.len(), 64, "{unfit:?}");
            assert!(hashed.bytes().all(|b| b.is_ascii_hexdigit()));
            assert_eq!(fifo_id(unfit), hashed, "the same value, the same id");
        }
        assert_ne!(fifo_id("order 1"), fifo_id("order 2"));
    }

    #[test]
    fn headers_and_the_id_become_attributes() {
        let message = Message::new(b"{}".to_vec(), "q")
            .with_message_id("o-7")
            .with_header("Event-Type", "placed")
            .with_header("oncely-message-id", "forged");
        let attributes = attributes("q", &message).unwrap();
        assert_eq!(attributes.len(), 2);
        assert_eq!(
            attributes[MESSAGE_ID_ATTRIBUTE].string_value(),
            Some("o-7"),
            "the message's id wins over a header of that name"
        );
        assert_eq!(attributes["Event-Type"].string_value(), Some("placed"));
    }

    #[test]
    fn too_many_or_repeated_headers_are_refused() {
        let mut message = Message::new(Vec::new(), "q").with_message_id("o-1");
        for n in 0..MAX_ATTRIBUTES {
            message = message.with_header(format!("H{n}"), "v");
        }
        let error = attributes("q", &message).unwrap_err().to_string();
        assert!(error.contains("at most 10"), "{error}");
        let repeated = Message::new(Vec::new(), "q")
            .with_header("Tag", "a")
            .with_header("tag", "b");
        let error = attributes("q", &repeated).unwrap_err().to_string();
        assert!(error.contains("header tag is repeated"), "{error}");
    }
}
