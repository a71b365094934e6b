//! [`SqsSource`]: a consumer of one queue for the runner.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName};
use oncely_core::async_trait;
use oncely_core::consumer::{BrokerError, DeadLetter, Delivery, Message, Source};
use tokio::sync::mpsc;

use crate::{BROKER, Error, MESSAGE_ID_ATTRIBUTE, SqsOptions, client};

struct Shared {
    client: Client,
    queue_url: String,
    dead_letter_url: String,
    options: SqsOptions,
}

/// A consumer of one SQS queue, as a [`Source`] for the runner.
pub struct SqsSource {
    shared: Arc<Shared>,
    received: mpsc::Receiver<Result<SqsDelivery, BrokerError>>,
    receiver: tokio::task::JoinHandle<()>,
}

impl Drop for SqsSource {
    fn drop(&mut self) {
        self.receiver.abort();
        // Received and never handed out: visible to other consumers again now, not after the
        // visibility timeout.
        self.received.close();
        let mut waiting = Vec::new();
        while let Ok(Ok(delivery)) = self.received.try_recv() {
            waiting.push(delivery);
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                for delivery in waiting {
                    let _ = delivery.redeliver(Duration::ZERO).await;
                }
            });
        }
    }
}

impl SqsSource {
    /// Consumes the queue `url` names.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url.parse()?).await
    }

    /// Consumes the queue `options` name; the dead-letter queue must exist.
    pub async fn connect_with(options: SqsOptions) -> Result<Self, Error> {
        let client = client(&options)?;
        let url_of = |name: String| {
            let client = client.clone();
            let endpoint = options.endpoint.clone();
            async move {
                client
                    .get_queue_url()
                    .queue_name(&name)
                    .send()
                    .await
                    .map_err(|e| Error::Sqs {
                        endpoint,
                        what: format!("the queue {name}"),
                        source: e.into(),
                    })
                    .map(|o| o.queue_url().unwrap_or_default().to_owned())
            }
        };
        let queue_url = url_of(options.queue.clone()).await?;
        let dead_letter_url = url_of(options.dead_letter_queue_or_default()).await?;
        let shared = Arc::new(Shared {
            client,
            queue_url,
            dead_letter_url,
            options,
        });
        let (tx, received) = mpsc::channel(10);
        let receiver = tokio::spawn(receive(shared.clone(), tx));
        Ok(SqsSource {
            shared,
            received,
            receiver,
        })
    }

    /// The options it was started with.
    pub fn options(&self) -> &SqsOptions {
        &self.shared.options
    }
}

/// Long-polls the queue into `tx` until the source is dropped.
async fn receive(shared: Arc<Shared>, tx: mpsc::Sender<Result<SqsDelivery, BrokerError>>) {
    loop {
        // Receive no more than there is room for: a message waiting here is invisible to others.
        let room = match tx.reserve_many(10).await {
            Ok(permits) => permits.len(),
            Err(_) => return,
        };
        let o = &shared.options;
        let received = shared
            .client
            .receive_message()
            .queue_url(&shared.queue_url)
            .max_number_of_messages(room as i32)
            .wait_time_seconds(o.wait.as_secs() as i32)
            .visibility_timeout(o.visibility.as_secs().max(1) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await;
        let messages = match received {
            Ok(output) => output.messages.unwrap_or_default(),
            Err(error) => {
                if tx
                    .send(Err(BrokerError::new(BROKER, "receive", error)))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for received in messages {
            let delivery = SqsDelivery::new(shared.clone(), received);
            if delivery.receives > o.max_receives {
                let letter = DeadLetter {
                    error: format!(
                        "received {} times without being settled (max_receives {})",
                        delivery.receives, o.max_receives
                    ),
                    attempts: 0,
                    key: None,
                    source: delivery.message.source().to_owned(),
                };
                if delivery.dead_letter(&letter).await.is_ok() {
                    let _ = delivery.ack().await;
                }
                continue;
            }
            if tx.send(Ok(delivery)).await.is_err() {
                return;
            }
        }
    }
}

#[async_trait]
impl Source for SqsSource {
    type Delivery = SqsDelivery;

    async fn next(&mut self) -> Option<Result<SqsDelivery, BrokerError>> {
        self.received.recv().await
    }
}

/// One message from an [`SqsSource`].
pub struct SqsDelivery {
    shared: Arc<Shared>,
    message: Message,
    receipt: String,
    receives: u32,
    group: Option<String>,
    attributes: HashMap<String, MessageAttributeValue>,
}

impl SqsDelivery {
    fn new(shared: Arc<Shared>, received: aws_sdk_sqs::types::Message) -> Self {
        let system = received.attributes.clone().unwrap_or_default();
        let attributes = received.message_attributes.clone().unwrap_or_default();
        let mut message = Message::new(
            received.body.clone().unwrap_or_default().into_bytes(),
            shared.options.queue.clone(),
        );
        let group = system
            .get(&MessageSystemAttributeName::MessageGroupId)
            .cloned();
        if let Some(group) = &group {
            message = message.with_ordering_key(group.clone());
        }
        let mut id = received.message_id.clone();
        for (name, value) in &attributes {
            if let Some(text) = value.string_value() {
                if name.eq_ignore_ascii_case(MESSAGE_ID_ATTRIBUTE) {
                    id = Some(text.to_owned());
                }
                message = message.with_header(name.clone(), text);
            }
        }
        if let Some(id) = id {
            message = message.with_message_id(id);
        }
        let receives = system
            .get(&MessageSystemAttributeName::ApproximateReceiveCount)
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        SqsDelivery {
            shared,
            message,
            receipt: received.receipt_handle.unwrap_or_default(),
            receives,
            group,
            attributes,
        }
    }

    async fn visible_after(&self, after: Duration, what: &str) -> Result<(), BrokerError> {
        self.shared
            .client
            .change_message_visibility()
            .queue_url(&self.shared.queue_url)
            .receipt_handle(&self.receipt)
            .visibility_timeout(after.as_secs().min(12 * 3600) as i32)
            .send()
            .await
            .map(drop)
            .map_err(|e| BrokerError::new(BROKER, what, e))
    }
}

#[async_trait]
impl Delivery for SqsDelivery {
    fn message(&self) -> &Message {
        &self.message
    }

    async fn ack(&self) -> Result<(), BrokerError> {
        self.shared
            .client
            .delete_message()
            .queue_url(&self.shared.queue_url)
            .receipt_handle(&self.receipt)
            .send()
            .await
            .map(drop)
            .map_err(|e| BrokerError::new(BROKER, "delete", e))
    }

    async fn redeliver(&self, after: Duration) -> Result<(), BrokerError> {
        self.visible_after(after, "change visibility").await
    }

    async fn in_progress(&self) -> Result<(), BrokerError> {
        self.visible_after(self.shared.options.visibility, "extend visibility")
            .await
    }

    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), BrokerError> {
        let mut attributes = self.attributes.clone();
        for (name, value) in letter.headers() {
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(|e| BrokerError::new(BROKER, "dead-letter attributes", e))?;
            attributes.insert(name.to_owned(), value);
        }
        let mut send = self
            .shared
            .client
            .send_message()
            .queue_url(&self.shared.dead_letter_url)
            .message_body(String::from_utf8_lossy(self.message.payload()))
            .set_message_attributes(Some(attributes));
        if self.shared.dead_letter_url.ends_with(".fifo") {
            send = send
                .message_group_id(self.group.clone().unwrap_or_else(|| "dead-letters".into()))
                .message_deduplication_id(self.message.message_id().unwrap_or("none"));
        }
        send.send()
            .await
            .map(drop)
            .map_err(|e| BrokerError::new(BROKER, "send to the dead-letter queue", e))
    }
}
