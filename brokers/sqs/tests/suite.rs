//! The broker behaviour suite and the kill -9 proof against the SQS-compatible server at
//! `ONCELY_SQS_URL` (`sqs+http://127.0.0.1:5999` by default: moto's `moto_server`).
//!
//! Each test gets its own queue and dead-letter queue, `oncely-suite-<pid>-<time>-<n>-<test>`
//! ([`oncely_sqs::fresh_destination`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry};
use oncely_broker_suite::libtest_mimic::Trial;
use oncely_broker_suite::{Broker, Channel, Running};
use oncely_conformance::harness::{panic_text, runtime};
use oncely_consumer::Consumer;
use oncely_core::consumer::{Handled, Handler, HandlerError, KeySource, Message};
use oncely_core::outbox::Publisher;
use oncely_core::{BoxError, Key, async_trait};
use oncely_sqs::{FreshOptions, MESSAGE_ID_ATTRIBUTE, SqsPublisher, SqsSource, fresh_destination};

/// How deep the proof lets its queue get (see [`Queue::publish_batch`]).
const MAX_DEPTH: u64 = 200;

struct Sqs {
    server: String,
}

struct Queue {
    url: String,
    dead_letter_source_url: String,
    publisher_url: String,
    client: aws_sdk_sqs::Client,
    queue_url: String,
    fifo: bool,
    dead_letter_url: String,
    /// Every dead letter read so far, by SQS message id: reading hides a letter for a while.
    letters: std::sync::Mutex<HashMap<String, Message>>,
}

impl Sqs {
    async fn connect() -> Self {
        let server =
            std::env::var("ONCELY_SQS_URL").unwrap_or_else(|_| "sqs+http://127.0.0.1:5999".into());
        Sqs { server }
    }
}

#[async_trait]
impl Broker for Sqs {
    type Channel = Queue;

    async fn channel(&self, test: &str) -> Result<Queue, BoxError> {
        self.queue(test, false).await
    }

    async fn connect_publisher(url: &str) -> Result<Box<dyn Publisher>, BoxError> {
        Ok(Box::new(SqsPublisher::connect(url).await?))
    }
}

impl Sqs {
    /// A FIFO queue and its FIFO dead-letter queue.
    async fn fifo_channel(&self, test: &str) -> Result<Queue, BoxError> {
        self.queue(test, true).await
    }

    async fn queue(&self, test: &str, fifo: bool) -> Result<Queue, BoxError> {
        // The proof's consumers are killed holding messages: those come back after the
        // visibility timeout, long enough that heartbeats (every third of it) stay few.
        let visibility = if test == "proof" { 20 } else { 5 };
        let mut options = FreshOptions::new("oncely-suite-", &test.replace('_', "-"))
            .visibility_timeout(Duration::from_secs(visibility));
        if fifo {
            options = options.fifo();
        }
        let fresh = fresh_destination(&self.server, &options)
            .await
            .map_err(|e| format!("no SQS at {}: {e} (start moto_server)", self.server))?;
        let url = format!(
            "{}/{}?visibility={visibility}s&wait=1s",
            self.server, fresh.queue
        );
        let client = oncely_sqs::client(&url.parse()?).await?;
        let dead_letter_queue = fresh.dead_letter_queue_url.rsplit('/').next().unwrap_or("");
        // A short visibility: what a killed redrive held comes back to the next one soon.
        let dead_letter_source_url = format!(
            "{}/{dead_letter_queue}?dlq=none&visibility=2s&wait=1s",
            self.server
        );
        let publisher_url = format!("{}/{}", self.server, fresh.queue);
        Ok(Queue {
            url,
            dead_letter_source_url,
            publisher_url,
            client,
            fifo,
            dead_letter_url: fresh.dead_letter_queue_url,
            queue_url: fresh.queue_url,
            letters: Default::default(),
        })
    }
}

fn attribute(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .unwrap()
}

fn attributes_of(message: &Message) -> Option<HashMap<String, MessageAttributeValue>> {
    let mut attributes: HashMap<String, MessageAttributeValue> = message
        .headers()
        .iter()
        .map(|(n, v)| (n.clone(), attribute(v)))
        .collect();
    if let Some(id) = message.message_id() {
        attributes.insert(MESSAGE_ID_ATTRIBUTE.into(), attribute(id));
    }
    (!attributes.is_empty()).then_some(attributes)
}

#[async_trait]
impl Channel for Queue {
    type Source = SqsSource;

    async fn publish(&self, message: &Message) -> Result<(), BoxError> {
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(String::from_utf8_lossy(message.payload()))
            .set_message_attributes(attributes_of(message))
            .send()
            .await?;
        Ok(())
    }

    /// moto scans the whole queue on every send, receive and delete: the proof keeps it short
    /// by consuming while it publishes, and publishing no faster than the consumers keep up.
    fn consume_while_publishing(&self) -> bool {
        true
    }

    /// `SendMessageBatch`, ten a request, eight requests at a time (one on a FIFO queue), once
    /// no more than
    /// [`MAX_DEPTH`] messages are waiting.
    async fn publish_batch(&self, messages: &[Message]) -> Result<(), BoxError> {
        while self.count(&self.queue_url, true).await? > MAX_DEPTH {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let mut requests = tokio::task::JoinSet::new();
        for (n, batch) in messages.chunks(10).enumerate() {
            // A FIFO queue keeps the order batches arrive in: one at a time.
            if requests.len() >= if self.fifo { 1 } else { 8 } {
                requests.join_next().await.unwrap()??;
            }
            let entries = batch
                .iter()
                .enumerate()
                .map(|(i, message)| {
                    let mut entry = SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(String::from_utf8_lossy(message.payload()))
                        .set_message_attributes(attributes_of(message));
                    if self.fifo {
                        entry = entry
                            .set_message_group_id(message.ordering_key().map(Into::into))
                            .set_message_deduplication_id(message.message_id().map(Into::into));
                    }
                    entry.build()
                })
                .collect::<Result<Vec<_>, _>>()?;
            let send = self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries));
            requests.spawn(async move {
                let sent = send.send().await?;
                match sent.failed().first() {
                    Some(failed) => Err(format!("batch {n}: {failed:?}").into()),
                    None => Ok::<(), BoxError>(()),
                }
            });
        }
        while let Some(done) = requests.join_next().await {
            done??;
        }
        Ok(())
    }

    async fn consumer(&self) -> Result<SqsSource, BoxError> {
        Ok(SqsSource::connect(&self.url).await?)
    }

    async fn dead_letters(&self) -> Result<Vec<Message>, BoxError> {
        let total = self.count(&self.dead_letter_url, true).await?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let read = self.letters.lock().unwrap().len() as u64;
            if read >= total {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("read {read} of {total} dead letters").into());
            }
            // Hidden for a while once read, so that the next receive gets the next ones.
            let got = self
                .client
                .receive_message()
                .queue_url(&self.dead_letter_url)
                .max_number_of_messages(10)
                .visibility_timeout(2)
                .message_attribute_names("All")
                .send()
                .await?;
            for m in got.messages() {
                let mut message =
                    Message::new(m.body().unwrap_or_default().as_bytes().to_vec(), "dlq");
                for (name, value) in m.message_attributes().into_iter().flatten() {
                    message = message.with_header(name, value.string_value().unwrap_or_default());
                }
                let id = m.message_id().unwrap_or_default().to_owned();
                self.letters.lock().unwrap().insert(id, message);
            }
        }
        Ok(self.letters.lock().unwrap().values().cloned().collect())
    }

    async fn unsettled(&self) -> Result<u64, BoxError> {
        self.count(&self.queue_url, true).await
    }

    fn source_url(&self) -> String {
        self.url.clone()
    }

    fn dead_letter_source_url(&self) -> String {
        self.dead_letter_source_url.clone()
    }

    fn publisher_url(&self) -> String {
        self.publisher_url.clone()
    }
}

impl Queue {
    async fn count(&self, queue_url: &str, with_invisible: bool) -> Result<u64, BoxError> {
        let attributes = self
            .client
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await?;
        let get = |name: QueueAttributeName| -> u64 {
            attributes
                .attributes()
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let mut n = get(QueueAttributeName::ApproximateNumberOfMessages);
        if with_invisible {
            n += get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible);
        }
        Ok(n)
    }
}

/// Records each (group, seq) applied, in the order applied; gives the first delivery of each
/// group's event 3 back (store unavailable), so that event's group must wait for it.
#[derive(Clone, Default)]
struct InOrder {
    applied: Arc<Mutex<Vec<(String, u32)>>>,
    given_back: Arc<Mutex<HashSet<String>>>,
}

#[async_trait]
impl Handler for InOrder {
    async fn handle(&self, _: &Key, message: &Message) -> Result<Handled, HandlerError> {
        let json: serde_json::Value = serde_json::from_slice(message.payload()).unwrap();
        let group = json["group"].as_str().unwrap().to_owned();
        let seq = json["seq"].as_u64().unwrap() as u32;
        if seq == 3 && self.given_back.lock().unwrap().insert(group.clone()) {
            return Err(HandlerError::unavailable("given back once, on purpose"));
        }
        // Long enough that a later event of the group, handled side by side, would overtake.
        tokio::time::sleep(Duration::from_millis(fastrand::u64(1..15))).await;
        self.applied.lock().unwrap().push((group, seq));
        Ok(Handled::Done)
    }
}

/// A FIFO queue: 8 groups x 25 events, two consumers of eight handlers each. Each group's
/// events are applied once each and in the order sent, though the runner handles deliveries
/// side by side and one event of each group is given back once.
async fn a_fifo_queue_keeps_each_group_in_order(sqs: Sqs) {
    let queue = sqs.fifo_channel("fifo-order").await.unwrap();
    let (groups, events) = (8, 25u32);
    let mut messages = Vec::new();
    for seq in 0..events {
        for group in 0..groups {
            let body = serde_json::json!({"group": format!("g{group}"), "seq": seq});
            messages.push(
                Message::new(body.to_string().into_bytes(), "")
                    .with_ordering_key(format!("g{group}"))
                    .with_message_id(format!("g{group}-{seq}")),
            );
        }
    }
    queue.publish_batch(&messages).await.unwrap();
    let handler = InOrder::default();
    let consumer = Consumer::new(handler.clone(), KeySource::MessageId)
        .concurrency(8)
        .unavailable_backoff(Duration::from_millis(200));
    let first = Running::spawn(&consumer, queue.consumer().await.unwrap());
    let second = Running::spawn(&consumer, queue.consumer().await.unwrap());
    let total = (groups * events) as usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while handler.applied.lock().unwrap().len() < total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {total} applied",
            handler.applied.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.stop().await;
    second.stop().await;
    let applied = handler.applied.lock().unwrap().clone();
    assert_eq!(applied.len(), total, "each event applied once");
    let mut next: HashMap<String, u32> = HashMap::new();
    for (group, seq) in applied {
        let expected = next.entry(group.clone()).or_insert(0);
        assert_eq!(
            seq, *expected,
            "{group}: event {seq} applied when {expected} was due"
        );
        *expected += 1;
    }
    assert_eq!(
        handler.given_back.lock().unwrap().len(),
        groups as usize,
        "event 3 of every group was given back once"
    );
}

/// Counts calls; each takes `takes`.
#[derive(Clone)]
struct Slow {
    calls: Arc<AtomicUsize>,
    takes: Duration,
}

#[async_trait]
impl Handler for Slow {
    async fn handle(&self, _: &Key, _: &Message) -> Result<Handled, HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.takes).await;
        Ok(Handled::Done)
    }
}

/// A handler taking 12 s on a queue whose visibility timeout is 5 s, two consumers: the message
/// does not come back while it runs (the source extends its visibility), so the handler runs
/// once, and it is deleted after.
async fn a_long_handler_keeps_its_message_invisible(sqs: Sqs) {
    let queue = sqs.channel("long-handler").await.unwrap();
    queue
        .publish(&Message::new(b"{}".to_vec(), "").with_message_id("long-1"))
        .await
        .unwrap();
    let handler = Slow {
        calls: Arc::default(),
        takes: Duration::from_secs(12),
    };
    // The runner's own progress reports come too late to matter: the source's do it.
    let consumer = Consumer::new(handler.clone(), KeySource::MessageId)
        .progress_every(Duration::from_secs(60));
    let first = Running::spawn(&consumer, queue.consumer().await.unwrap());
    let second = Running::spawn(&consumer, queue.consumer().await.unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while consumer.report().done < 1 {
        assert!(tokio::time::Instant::now() < deadline, "not done in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One more visibility timeout: a copy that had come back would be handled meanwhile.
    tokio::time::sleep(Duration::from_secs(6)).await;
    first.stop().await;
    second.stop().await;
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1, "handled once");
    assert_eq!(queue.unsettled().await.unwrap(), 0, "deleted");
}

/// A receive that fails is retried for as long as it fails, but a queue that does not exist is
/// not coming back by waiting: the run ends with that error.
async fn a_queue_deleted_under_the_consumer_stops_it_with_a_permanent_error(sqs: Sqs) {
    let queue = sqs.queue("deleted", false).await.unwrap();
    queue
        .publish(&Message::new(b"{}".to_vec(), "").with_message_id("before"))
        .await
        .unwrap();
    let source = queue.consumer().await.unwrap();
    let error = oncely_broker_suite::run_until_its_destination_is_deleted(source, async {
        let deleted = queue.client.delete_queue().queue_url(&queue.queue_url);
        deleted.send().await.unwrap();
    })
    .await;
    assert!(error.to_string().contains("receive"), "{error}");
}

type SqsTest = fn(Sqs) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

fn trial(name: &'static str, test: SqsTest) -> Trial {
    Trial::test(format!("sqs::{name}"), move || {
        runtime().block_on(async move {
            let sqs = Sqs::connect().await;
            tokio::spawn(test(sqs))
                .await
                .map_err(|e| panic_text(e).into())
        })
    })
    .with_kind("sqs")
}

fn main() {
    let sqs_only = vec![
        trial("a_fifo_queue_keeps_each_group_in_order", |sqs| {
            Box::pin(a_fifo_queue_keeps_each_group_in_order(sqs))
        }),
        trial("a_long_handler_keeps_its_message_invisible", |sqs| {
            Box::pin(a_long_handler_keeps_its_message_invisible(sqs))
        }),
        trial(
            "a_queue_deleted_under_the_consumer_stops_it_with_a_permanent_error",
            |sqs| Box::pin(a_queue_deleted_under_the_consumer_stops_it_with_a_permanent_error(sqs)),
        ),
    ];
    oncely_broker_suite::run(
        "sqs",
        || async { Sqs::connect().await },
        |url| async move { Ok(SqsSource::connect(&url).await?) },
        sqs_only,
    )
    .exit();
}
