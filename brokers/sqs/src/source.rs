//! [`SqsSource`]: a consumer of one queue for the runner.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
};
use oncely_core::async_trait;
use oncely_core::consumer::{BrokerError, DeadLetter, Delivery, Message, Source};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::AbortHandle;

use crate::options::queue_url as queue_url_of;
use crate::{BROKER, Error, MESSAGE_ID_ATTRIBUTE, SqsOptions, client};

/// SQS takes at most this many entries per batch call and messages per receive.
const BATCH: usize = 10;
/// Delete batches in flight at once.
const DELETES_IN_FLIGHT: usize = 4;
/// The longest visibility timeout SQS accepts.
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);

struct Shared {
    client: Client,
    queue_url: String,
    dead_letter_url: String,
    options: SqsOptions,
    fifo: bool,
    deletes: mpsc::UnboundedSender<PendingDelete>,
    /// FIFO queues: per message group with a message out to the runner, the group's later
    /// messages, held back until it settles (the runner handles deliveries side by side).
    groups: Mutex<HashMap<String, VecDeque<SqsDelivery>>>,
    released: mpsc::UnboundedSender<SqsDelivery>,
}

impl Shared {
    async fn change_visibility(
        &self,
        receipt: &str,
        after: Duration,
        what: &str,
    ) -> Result<(), BrokerError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(after.min(MAX_VISIBILITY).as_secs() as i32)
            .send()
            .await
            .map(drop)
            .map_err(|e| BrokerError::new(BROKER, what, e))
    }

    /// A FIFO group's message out to the runner is settled: the group's next message goes out,
    /// or, when it was given back, the held ones are given back too, to come again after it.
    fn group_settled(&self, group: &str, given_back: Option<Duration>) {
        let mut groups = self.groups.lock().unwrap();
        let Some(held) = groups.get_mut(group) else {
            return;
        };
        match given_back {
            None => match held.pop_front() {
                Some(next) => {
                    drop(groups);
                    // Undelivered when the source is gone: dropped, and given back by its Drop
                    // (outside the lock, which that takes).
                    let undelivered = self.released.send(next);
                    drop(undelivered);
                }
                None => {
                    groups.remove(group);
                }
            },
            Some(after) => {
                let held = groups.remove(group).unwrap_or_default();
                drop(groups);
                give_back_all(held, after);
            }
        }
    }
}

fn give_back_all(deliveries: impl IntoIterator<Item = SqsDelivery>, after: Duration) {
    let deliveries: Vec<SqsDelivery> = deliveries.into_iter().collect();
    if deliveries.is_empty() {
        return;
    }
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            for delivery in deliveries {
                delivery.stop_heartbeat();
                delivery.settled.store(true, Ordering::SeqCst);
                let _ = delivery
                    .shared
                    .change_visibility(&delivery.receipt, after, "give back")
                    .await;
            }
        });
    }
}

/// A consumer of one SQS queue (standard or FIFO), as a [`Source`] for the runner.
///
/// - Receives by long polling, up to 10 messages a call, no more than there is room for: a
///   message received and not yet handed out is invisible to other consumers.
/// - While a message is out (received, handled, waiting to retry), its visibility timeout is
///   extended every third of it, so it does not reappear while it is being worked on.
/// - An ack is a delete, batched with others (up to 10 per `DeleteMessageBatch`).
/// - A give-back (store unavailable, the key in progress elsewhere, shutdown) is a
///   `ChangeMessageVisibility`. On SQS every give-back costs a receive, counted towards
///   `max_receives`: so the more a message has been received, the longer it stays away (at
///   least 2^(receives-2) s), and about eight minutes of store outage fit in the default ten.
/// - A message received more than `max_receives` times (consumers that died holding it) is
///   dead-lettered on receipt with that as its error, then deleted.
/// - On a FIFO queue, messages of one message group go to the runner one at a time, in order.
pub struct SqsSource {
    shared: Arc<Shared>,
    received: mpsc::Receiver<Result<SqsDelivery, BrokerError>>,
    released: mpsc::UnboundedReceiver<SqsDelivery>,
    receiver: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for SqsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsSource")
            .field("queue_url", &self.shared.queue_url)
            .field("dead_letter_url", &self.shared.dead_letter_url)
            .field("fifo", &self.shared.fifo)
            .finish_non_exhaustive()
    }
}

impl Drop for SqsSource {
    fn drop(&mut self) {
        self.receiver.abort();
        // Received and never handed out: visible to other consumers again now, not after the
        // visibility timeout.
        self.received.close();
        self.released.close();
        let mut waiting = Vec::new();
        while let Ok(Ok(delivery)) = self.received.try_recv() {
            waiting.push(delivery);
        }
        while let Ok(delivery) = self.released.try_recv() {
            waiting.push(delivery);
        }
        let held: Vec<SqsDelivery> = std::mem::take(&mut *self.shared.groups.lock().unwrap())
            .into_values()
            .flatten()
            .collect();
        waiting.extend(held);
        give_back_all(waiting, Duration::ZERO);
    }
}

impl SqsSource {
    /// Consumes the queue `url` names.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url.parse()?).await
    }

    /// Consumes the queue `options` name; the dead-letter queue must exist.
    pub async fn connect_with(options: SqsOptions) -> Result<Self, Error> {
        let client = client(&options).await?;
        let queue_url = queue_url_of(&client, &options.endpoint, &options.queue).await?;
        let dead_letter_url = match options.dead_letters {
            true => {
                let dead_letter_queue = options.dead_letter_queue_or_default();
                queue_url_of(&client, &options.endpoint, &dead_letter_queue).await?
            }
            false => String::new(),
        };
        let (deletes, pending) = mpsc::unbounded_channel();
        tokio::spawn(delete_in_batches(
            client.clone(),
            queue_url.clone(),
            pending,
        ));
        let (release, released) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            client,
            queue_url,
            dead_letter_url,
            fifo: options.queue.ends_with(".fifo"),
            options,
            deletes,
            groups: Mutex::new(HashMap::new()),
            released: release,
        });
        let (tx, received) = mpsc::channel(BATCH);
        let receiver = tokio::spawn(receive(shared.clone(), tx));
        Ok(SqsSource {
            shared,
            received,
            released,
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
        let room = match tx.reserve_many(BATCH).await {
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
                let permanent = waiting_cannot_mend(error.code());
                let error = if permanent {
                    BrokerError::permanent(BROKER, "receive", error)
                } else {
                    BrokerError::new(BROKER, "receive", error)
                };
                if tx.send(Err(error)).await.is_err() || permanent {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for received in messages {
            let mut delivery = SqsDelivery::new(shared.clone(), received);
            if o.dead_letters && delivery.receives > o.max_receives {
                let letter = DeadLetter {
                    error: format!(
                        "received {} times without being settled (max_receives {})",
                        delivery.receives, o.max_receives
                    ),
                    attempts: 0,
                    key: None,
                    source: delivery.message.source().to_owned(),
                    id: DeadLetter::new_id(),
                };
                // Not through the group: nothing of its group waits on it.
                delivery.group = None;
                if delivery.dead_letter(&letter).await.is_ok() {
                    let _ = delivery.ack().await;
                }
                continue;
            }
            if let Some(group) = delivery.group.clone() {
                let mut groups = shared.groups.lock().unwrap();
                if let Some(held) = groups.get_mut(&group) {
                    held.push_back(delivery);
                    continue;
                }
                groups.insert(group, VecDeque::new());
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
        tokio::select! {
            biased;
            Some(next_of_group) = self.released.recv() => Some(Ok(next_of_group)),
            received = self.received.recv() => received,
        }
    }
}

struct PendingDelete {
    receipt: String,
    done: oneshot::Sender<Result<(), BrokerError>>,
}

/// Deletes what the acks send, up to 10 a call: acks that come while earlier batches are in
/// flight wait and go together.
async fn delete_in_batches(
    client: Client,
    queue_url: String,
    mut pending: mpsc::UnboundedReceiver<PendingDelete>,
) {
    let in_flight = Arc::new(Semaphore::new(DELETES_IN_FLIGHT));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = pending.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match pending.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let client = client.clone();
        let queue_url = queue_url.clone();
        tokio::spawn(async move {
            delete_batch(&client, &queue_url, batch).await;
            drop(permit);
        });
    }
}

async fn delete_batch(client: &Client, queue_url: &str, batch: Vec<PendingDelete>) {
    let entries = batch
        .iter()
        .enumerate()
        .map(|(n, delete)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(n.to_string())
                .receipt_handle(&delete.receipt)
                .build()
                .expect("id and receipt handle are set")
        })
        .collect();
    let sent = client
        .delete_message_batch()
        .queue_url(queue_url)
        .set_entries(Some(entries))
        .send()
        .await;
    let mut failed: HashMap<String, String> = HashMap::new();
    match sent {
        Ok(output) => {
            for entry in output.failed() {
                let reason = format!("{}: {}", entry.code(), entry.message().unwrap_or_default());
                failed.insert(entry.id().to_owned(), reason);
            }
        }
        Err(error) => {
            let reason = error.to_string();
            for n in 0..batch.len() {
                failed.insert(n.to_string(), reason.clone());
            }
        }
    }
    for (n, delete) in batch.into_iter().enumerate() {
        let result = match failed.remove(&n.to_string()) {
            None => Ok(()),
            Some(reason) => Err(BrokerError::new(BROKER, "delete", reason)),
        };
        let _ = delete.done.send(result);
    }
}

/// One message from an [`SqsSource`].
pub struct SqsDelivery {
    shared: Arc<Shared>,
    message: Message,
    /// SQS's own id of the message.
    sqs_id: String,
    receipt: String,
    receives: u32,
    group: Option<String>,
    attributes: HashMap<String, MessageAttributeValue>,
    heartbeat: AbortHandle,
    settled: AtomicBool,
}

impl std::fmt::Debug for SqsDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsDelivery")
            .field("message", &self.message)
            .field("sqs_id", &self.sqs_id)
            .field("receives", &self.receives)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl Drop for SqsDelivery {
    fn drop(&mut self) {
        self.heartbeat.abort();
        if !self.settled.load(Ordering::SeqCst)
            && let Some(group) = &self.group
        {
            self.shared.group_settled(group, Some(Duration::ZERO));
        }
    }
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
            .cloned()
            .filter(|_| shared.fifo);
        if let Some(group) = &group {
            message = message.with_ordering_key(group.clone());
        }
        let sqs_id = received.message_id.clone().unwrap_or_default();
        let mut id = Some(sqs_id.clone()).filter(|id| !id.is_empty());
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
        if !sqs_id.is_empty() {
            message = message.with_broker_id(sqs_id.clone());
        }
        let receives = system
            .get(&MessageSystemAttributeName::ApproximateReceiveCount)
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let receipt = received.receipt_handle.unwrap_or_default();
        let heartbeat = tokio::spawn(keep_invisible(shared.clone(), receipt.clone()));
        SqsDelivery {
            shared,
            message,
            sqs_id,
            receipt,
            receives,
            group,
            attributes,
            heartbeat: heartbeat.abort_handle(),
            settled: AtomicBool::new(false),
        }
    }

    fn stop_heartbeat(&self) {
        self.heartbeat.abort();
    }

    /// How many times SQS has handed this message out (`ApproximateReceiveCount`).
    pub fn receives(&self) -> u32 {
        self.receives
    }

    fn settle(&self, given_back: Option<Duration>) {
        if !self.settled.swap(true, Ordering::SeqCst)
            && let Some(group) = &self.group
        {
            self.shared.group_settled(group, given_back);
        }
    }
}

/// Whether an SQS error code says the queue or the credentials are wrong, which retrying does not
/// mend (a throttle, a timeout or a server error may pass).
fn waiting_cannot_mend(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "AWS.SimpleQueueService.NonExistentQueue"
                | "QueueDoesNotExist"
                | "AccessDenied"
                | "AccessDeniedException"
                | "InvalidClientTokenId"
                | "UnrecognizedClientException"
                | "SignatureDoesNotMatch"
                | "InvalidSecurity"
                | "KMS.AccessDeniedException"
        )
    )
}

/// Extends the message's visibility every third of the timeout until aborted.
async fn keep_invisible(shared: Arc<Shared>, receipt: String) {
    let visibility = shared.options.visibility.max(Duration::from_secs(1));
    let every = (visibility / 3).max(Duration::from_millis(500));
    loop {
        tokio::time::sleep(every).await;
        if let Err(error) = shared
            .change_visibility(&receipt, visibility, "extend visibility")
            .await
        {
            tracing::warn!(%error, "could not extend a message's visibility");
        }
    }
}

/// At least 2^(receives-2) s: see [`SqsSource`].
fn give_back_delay(after: Duration, receives: u32) -> Duration {
    if receives <= 1 {
        return after;
    }
    after.max(Duration::from_secs(1 << (receives - 2).min(10)))
}

#[async_trait]
impl Delivery for SqsDelivery {
    fn message(&self) -> &Message {
        &self.message
    }

    async fn ack(&self) -> Result<(), BrokerError> {
        self.stop_heartbeat();
        let (done, result) = oneshot::channel();
        let delete = PendingDelete {
            receipt: self.receipt.clone(),
            done,
        };
        let result = match self.shared.deletes.send(delete) {
            Ok(()) => result
                .await
                .unwrap_or_else(|_| Err(BrokerError::new(BROKER, "delete", "the source is gone"))),
            Err(_) => Err(BrokerError::new(BROKER, "delete", "the source is gone")),
        };
        // A failed delete comes back after the visibility timeout, a duplicate of an effect
        // already committed: the group's next message need not wait for it.
        self.settle(None);
        result
    }

    async fn redeliver(&self, after: Duration) -> Result<(), BrokerError> {
        self.stop_heartbeat();
        let after = give_back_delay(after, self.receives);
        let result = self
            .shared
            .change_visibility(&self.receipt, after, "change visibility")
            .await;
        self.settle(Some(after));
        result
    }

    async fn in_progress(&self) -> Result<(), BrokerError> {
        self.shared
            .change_visibility(
                &self.receipt,
                self.shared.options.visibility,
                "extend visibility",
            )
            .await
    }

    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), BrokerError> {
        if self.shared.dead_letter_url.is_empty() {
            return Err(BrokerError::no_dead_letters(BROKER));
        }
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
            // SQS's own id: unique per message, so no two letters are taken for one.
            send = send
                .message_group_id(self.group.clone().unwrap_or_else(|| "dead-letters".into()))
                .message_deduplication_id(&self.sqs_id);
        }
        send.send()
            .await
            .map(drop)
            .map_err(|e| BrokerError::new(BROKER, "send to the dead-letter queue", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn give_backs_space_out_as_receives_grow() {
        let asked = Duration::from_millis(100);
        assert_eq!(give_back_delay(asked, 1), asked);
        assert_eq!(give_back_delay(asked, 2), Duration::from_secs(1));
        assert_eq!(give_back_delay(asked, 3), Duration::from_secs(2));
        assert_eq!(give_back_delay(asked, 10), Duration::from_secs(256));
        assert_eq!(give_back_delay(asked, 40), Duration::from_secs(1024));
        let long = Duration::from_secs(5000);
        assert_eq!(give_back_delay(long, 3), long);
    }
}
