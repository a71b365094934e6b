//! From SQS.

use std::collections::HashMap;

use oncely::consumer::{ATTEMPTS_HEADER, ERROR_HEADER, KEY_HEADER, Message, SOURCE_HEADER};

use oncely::sqs::{FreshOptions, fresh_destination};

use crate::handler::Handler;
use crate::process::{
    assert_each_key_posted_once, assert_summary_and_exit_0, runtime, spawn_consume, terminate,
    wait_for,
};
use crate::{FAILING, order, sqs_server};

/// A fresh standard queue and its dead-letter queue (`<queue>-dlq`, the default), named after
/// this process, the time and a counter; both deleted at the end.
struct Sqs {
    client: aws_sdk_sqs::Client,
    queue: String,
    queue_url: String,
    dlq: String,
    dlq_url: String,
}

impl Sqs {
    async fn new() -> Sqs {
        let options = oncely::sqs::SqsOptions::parse_queue_optional(&sqs_server()).unwrap();
        let client = oncely::sqs::client(&options).await.unwrap();
        let fresh = fresh_destination(
            &sqs_server(),
            &FreshOptions::new("oncely-cli-consume-", "orders"),
        )
        .await
        .unwrap_or_else(|e| panic!("SQS at {}: {e} (start moto_server)", sqs_server()));
        Sqs {
            client,
            queue: fresh.queue,
            queue_url: fresh.queue_url,
            dlq: fresh.dead_letter_queue,
            dlq_url: fresh.dead_letter_queue_url,
        }
    }

    /// `payload` with `message_id` in the Oncely-Message-Id attribute, as the relay sends it.
    async fn publish(&self, message_id: &str, payload: &[u8]) {
        let id = aws_sdk_sqs::types::MessageAttributeValue::builder()
            .data_type("String")
            .string_value(message_id)
            .build()
            .unwrap();
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(std::str::from_utf8(payload).unwrap())
            .message_attributes(oncely::sqs::MESSAGE_ID_ATTRIBUTE, id)
            .send()
            .await
            .unwrap();
    }

    /// True once the queue holds no message, visible or in flight: every one deleted (acked).
    async fn drained(&self) -> bool {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let answer = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap();
        let attributes = answer.attributes.unwrap_or_default();
        [
            A::ApproximateNumberOfMessages,
            A::ApproximateNumberOfMessagesNotVisible,
        ]
        .iter()
        .all(|name| attributes.get(name).map(String::as_str) == Some("0"))
    }

    /// The dead letters, taken for good: their String attributes as headers, the
    /// Oncely-Message-Id attribute as the message id.
    async fn dead_letters(&self) -> Vec<Message> {
        let mut letters = Vec::new();
        loop {
            let received = self
                .client
                .receive_message()
                .queue_url(&self.dlq_url)
                .max_number_of_messages(10)
                .message_attribute_names("All")
                .send()
                .await
                .unwrap()
                .messages
                .unwrap_or_default();
            if received.is_empty() {
                return letters;
            }
            for got in received {
                let body = got.body.clone().unwrap_or_default().into_bytes();
                let mut letter = Message::new(body, &self.dlq);
                for (name, value) in got.message_attributes.clone().unwrap_or_default() {
                    let text = value.string_value().unwrap_or_default();
                    if name == oncely::sqs::MESSAGE_ID_ATTRIBUTE {
                        letter = letter.with_message_id(text);
                    }
                    letter = letter.with_header(name, text);
                }
                letters.push(letter);
                self.client
                    .delete_message()
                    .queue_url(&self.dlq_url)
                    .receipt_handle(got.receipt_handle.unwrap_or_default())
                    .send()
                    .await
                    .unwrap();
            }
        }
    }

    async fn delete(&self) {
        for url in [&self.queue_url, &self.dlq_url] {
            self.client.delete_queue().queue_url(url).send().await.ok();
        }
    }
}

#[test]
fn sqs_each_key_is_posted_once_and_the_failing_one_is_dead_lettered() {
    let rt = runtime();
    let sqs = rt.block_on(Sqs::new());
    let handler = Handler::start();
    let dir = tempfile::tempdir().unwrap();

    // One at a time (--concurrency 1), in the order sent (a standard queue on moto keeps it):
    // each duplicate comes after its original settled.
    let bodies: HashMap<&str, Vec<u8>> = [
        ("a", order("a", 1)),
        ("b", order("b", 2)),
        (FAILING, order(FAILING, 3)),
        ("c", order("c", 4)),
        ("last", order("last", 5)),
    ]
    .into_iter()
    .collect();
    let sequence = ["a", "b", "a", FAILING, "c", "b", "last"];
    rt.block_on(async {
        for (i, key) in sequence.iter().enumerate() {
            sqs.publish(&format!("m-{i}"), &bodies[key]).await;
        }
    });

    let from = format!("{}/{}?wait=1s", sqs_server(), sqs.queue);
    let child = spawn_consume(
        dir.path(),
        &[
            "--from",
            &from,
            "--key",
            "/id",
            "--deliver",
            &handler.url,
            "--dlq",
            &sqs.dlq,
            "--max-attempts",
            "3",
            "--timeout",
            "5s",
        ],
    );
    wait_for("every message deleted from the queue", || {
        handler.per_key().contains_key("last") && rt.block_on(sqs.drained())
    });
    let letters = rt.block_on(sqs.dead_letters());
    let output = terminate(child);
    rt.block_on(sqs.delete());
    assert_summary_and_exit_0(
        &output,
        "consumed 7: done 4, duplicates 2, redelivered 0, dead-lettered 1",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("(scope {})", sqs.queue)),
        "the default scope is the queue: {stderr}"
    );

    assert_each_key_posted_once(&handler, &bodies, 3);
    let first_a = handler
        .received()
        .into_iter()
        .find(|r| r.key() == "a")
        .unwrap();
    assert_eq!(first_a.header("content-type"), Some("application/json"));
    assert_eq!(first_a.header("oncely-message-id"), Some("m-0"));
    assert_eq!(first_a.header("oncely-source"), Some(sqs.queue.as_str()));

    assert_eq!(letters.len(), 1, "dead letters on {}: {letters:?}", sqs.dlq);
    let letter = &letters[0];
    assert_eq!(letter.payload(), bodies[FAILING].as_slice());
    assert_eq!(
        letter.message_id(),
        Some("m-3"),
        "the original's attributes"
    );
    assert_eq!(letter.header(KEY_HEADER), Some(FAILING));
    assert_eq!(letter.header(ATTEMPTS_HEADER), Some("3"));
    assert_eq!(letter.header(SOURCE_HEADER), Some(sqs.queue.as_str()));
    assert_eq!(
        letter.header(ERROR_HEADER),
        Some("handler answered 500 Internal Server Error: boom: always-fails cannot be handled")
    );
}

/// What the outbox relay sends (the row's id in the Oncely-Message-Id attribute), with rows
/// sent twice as a relay killed between the send and marking them sent does (on a standard
/// queue, which keeps every copy): `--key message-id` POSTs each row once.
#[test]
fn sqs_rows_sent_twice_by_the_relay_are_posted_once_by_message_id() {
    let rt = runtime();
    let sqs = rt.block_on(Sqs::new());
    let handler = Handler::start();
    let dir = tempfile::tempdir().unwrap();

    let rows = [
        ("order-1", "o-1", "created"),
        ("order-2", "o-2", "created"),
        ("order-1", "o-3", "paid"),
        ("order-1", "o-3", "paid"),
        ("order-2", "o-4", "paid"),
        ("order-3", "o-5", "created"),
        ("order-2", "o-4", "paid"),
    ];
    rt.block_on(async {
        for (aggregate, id, event) in rows {
            let payload = format!(r#"{{"order":"{aggregate}","event":"{event}"}}"#);
            sqs.publish(id, payload.as_bytes()).await;
        }
    });

    // No --dlq: the default one, QUEUE-dlq, which must exist (Sqs::new made it).
    let from = format!("{}/{}?wait=1s", sqs_server(), sqs.queue);
    let child = spawn_consume(
        dir.path(),
        &[
            "--from",
            &from,
            "--key",
            "message-id",
            "--deliver",
            &handler.url,
        ],
    );
    wait_for("every message deleted from the queue", || {
        rt.block_on(sqs.drained())
    });
    let output = terminate(child);
    rt.block_on(sqs.delete());
    assert_summary_and_exit_0(
        &output,
        "consumed 7: done 5, duplicates 2, redelivered 0, dead-lettered 0",
    );
    let per_key = handler.per_key();
    assert_eq!(per_key.len(), 5, "{per_key:?}");
    assert!(per_key.values().all(|n| *n == 1), "{per_key:?}");
}
