//! [`SqsPublisher`] against the SQS-compatible server at `ONCELY_SQS_URL`
//! (`sqs+http://127.0.0.1:5999` by default: moto's `moto_server`): what a message looks like
//! on the queue, read back with the SDK and with [`SqsSource`], and what is refused.
//!
//! Each test makes its own queues, `oncely-pub-<pid>-<time>-<n>-publisher[.fifo]` and their
//! dead-letter queues ([`oncely_sqs::fresh_destination`]), and deletes them.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::types::MessageSystemAttributeName;
use oncely_core::consumer::{BrokerError, Delivery, Message, Source};
use oncely_core::outbox::Publisher;
use oncely_sqs::{
    Error, FreshOptions, MESSAGE_ID_ATTRIBUTE, SqsOptions, SqsPublisher, SqsSource,
    fresh_destination,
};

fn server() -> String {
    std::env::var("ONCELY_SQS_URL").unwrap_or_else(|_| "sqs+http://127.0.0.1:5999".into())
}

async fn client() -> aws_sdk_sqs::Client {
    oncely_sqs::client(&SqsOptions::parse_queue_optional(&server()).unwrap())
        .await
        .unwrap()
}

/// A queue of this test run: made here, deleted by [`Queue::delete`].
struct Queue {
    name: String,
    url: String,
    dead_letter_url: String,
}

impl Queue {
    async fn new(fifo: bool) -> Queue {
        let mut options = FreshOptions::new("oncely-pub-", "publisher");
        if fifo {
            options = options.fifo();
        }
        let fresh = fresh_destination(&server(), &options)
            .await
            .unwrap_or_else(|e| panic!("no SQS at {}: {e} (start moto_server)", server()));
        Queue {
            name: fresh.queue,
            url: fresh.queue_url,
            dead_letter_url: fresh.dead_letter_queue_url,
        }
    }

    /// Every message on the queue, taken for good: each receive's messages deleted before the
    /// next (a FIFO group stays locked while one of its messages is in flight).
    async fn take_all(&self) -> Vec<aws_sdk_sqs::types::Message> {
        let client = client().await;
        let mut all = Vec::new();
        loop {
            let received = client
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .visibility_timeout(60)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .message_attribute_names("All")
                .send()
                .await
                .unwrap()
                .messages
                .unwrap_or_default();
            if received.is_empty() {
                return all;
            }
            for message in &received {
                client
                    .delete_message()
                    .queue_url(&self.url)
                    .receipt_handle(message.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
            }
            all.extend(received);
        }
    }

    async fn delete(self) {
        for url in [&self.url, &self.dead_letter_url] {
            let _ = client().await.delete_queue().queue_url(url).send().await;
        }
    }
}

fn attribute<'a>(message: &'a aws_sdk_sqs::types::Message, name: &str) -> Option<&'a str> {
    message
        .message_attributes()
        .and_then(|a| a.get(name))
        .and_then(|v| v.string_value())
}

fn system(message: &aws_sdk_sqs::types::Message, name: MessageSystemAttributeName) -> Option<&str> {
    message
        .attributes()
        .and_then(|a| a.get(&name))
        .map(String::as_str)
}

fn row(aggregate: &str, id: &str, payload: &str) -> Message {
    Message::new(payload.as_bytes().to_vec(), "")
        .with_message_id(id)
        .with_ordering_key(aggregate)
        .with_header("Event-Type", "placed")
}

#[tokio::test]
async fn on_a_standard_queue_the_id_travels_as_an_attribute_and_comes_back_as_the_message_id() {
    let queue = Queue::new(false).await;
    let publisher = SqsPublisher::connect(&format!("{}/{}", server(), queue.name))
        .await
        .unwrap();
    publisher
        .publish(None, &row("order-1", "3f9a2c-41", r#"{"n":1}"#))
        .await
        .unwrap();

    let url = format!("{}/{}?wait=1s&dlq={}", server(), queue.name, queue.name);
    let mut source = SqsSource::connect(&url).await.unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(10), source.next())
        .await
        .expect("the message comes back")
        .unwrap()
        .unwrap();
    let message = delivery.message();
    assert_eq!(message.message_id(), Some("3f9a2c-41"));
    assert_eq!(message.header(MESSAGE_ID_ATTRIBUTE), Some("3f9a2c-41"));
    assert_eq!(
        message.header("event-type"),
        Some("placed"),
        "headers travel"
    );
    assert_eq!(message.payload(), br#"{"n":1}"#);
    assert_eq!(message.source(), queue.name);
    assert_eq!(
        message.ordering_key(),
        None,
        "a standard queue has no message groups"
    );
    delivery.ack().await.unwrap();
    drop(source);
    queue.delete().await;
}

#[tokio::test]
async fn on_a_fifo_queue_the_group_is_the_aggregate_and_a_republish_is_dropped() {
    let queue = Queue::new(true).await;
    // No default queue: each row names its own.
    let publisher = SqsPublisher::connect(&server()).await.unwrap();
    let long_id = format!("{}-7", "o".repeat(130));
    let rows = [
        row("order-1", "o-1", "a"),
        row("order-2", "o-2", "b"),
        row("order-1", "o-3", "c"),
        row("order-1", "o-3", "c"), // the relay again, after a kill
        row("order 3 (é)", &long_id, "d"),
    ];
    for message in &rows {
        publisher.publish(Some(&queue.name), message).await.unwrap();
    }
    let taken = queue.take_all().await;
    let seen: Vec<(&str, &str, &str, &str)> = taken
        .iter()
        .map(|m| {
            (
                system(m, MessageSystemAttributeName::MessageGroupId).unwrap(),
                system(m, MessageSystemAttributeName::MessageDeduplicationId).unwrap(),
                attribute(m, MESSAGE_ID_ATTRIBUTE).unwrap(),
                m.body().unwrap(),
            )
        })
        .collect();
    let mut by_group: HashMap<&str, Vec<(&str, &str, &str)>> = HashMap::new();
    for (group, dedup, id, body) in &seen {
        by_group.entry(group).or_default().push((dedup, id, body));
    }
    assert_eq!(by_group.len(), 3, "{seen:?}");
    assert_eq!(
        by_group["order-1"],
        [("o-1", "o-1", "a"), ("o-3", "o-3", "c")],
        "in order, the re-publish dropped by its deduplication id"
    );
    assert_eq!(by_group["order-2"], [("o-2", "o-2", "b")]);
    let hashed: Vec<_> = by_group
        .iter()
        .filter(|(group, _)| !group.starts_with("order-"))
        .collect();
    let (group, messages) = hashed[0];
    assert_eq!(
        group.len(),
        64,
        "an aggregate SQS cannot take goes as its SHA-256"
    );
    let (dedup, id, _) = messages[0];
    assert_eq!(dedup.len(), 64, "so does an id over 128 characters");
    assert_eq!(id, long_id, "the attribute keeps the id whole");
    queue.delete().await;
}

fn source_of(error: &BrokerError) -> &Error {
    error
        .source
        .downcast_ref::<Error>()
        .unwrap_or_else(|| panic!("not an oncely_sqs::Error: {error}"))
}

#[tokio::test]
async fn missing_queues_and_payloads_that_are_not_text_are_refused_at_once() {
    let missing = format!("oncely-pub-missing-{}", std::process::id());
    let error = SqsPublisher::connect(&format!("{}/{missing}", server()))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::NoQueue { .. }), "{error:?}");
    let endpoint = server().replace("sqs+http://", "http://");
    assert_eq!(
        error.to_string(),
        format!("no queue {missing} at {endpoint}: create it")
    );

    let queue = Queue::new(false).await;
    let publisher = SqsPublisher::connect(&format!("{}/{}", server(), queue.name))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let error = publisher
        .publish(Some(&missing), &row("a", "o-1", "x"))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "at once");
    assert!(
        matches!(source_of(&error), Error::NoQueue { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains(&format!("no queue {missing}")),
        "{error}"
    );

    let not_text = Message::new(vec![b'o', b'k', 0xff, 0xfe], "").with_message_id("o-2");
    let error = publisher.publish(None, &not_text).await.unwrap_err();
    assert!(
        matches!(source_of(&error), Error::NotUtf8 { valid_up_to: 2, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("is not UTF-8"), "{error}");
    assert!(queue.take_all().await.is_empty(), "nothing was sent");

    let error = SqsPublisher::connect(&format!("{}/{}?visibility=5s", server(), queue.name))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("a publisher takes only region="),
        "{error}"
    );
    queue.delete().await;
}
