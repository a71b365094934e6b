//! The broker behaviour suite and the kill -9 proof against the SQS-compatible server at
//! `ONCELY_SQS_URL` (`sqs+http://127.0.0.1:5999` by default: moto's `moto_server`).
//!
//! Each test gets its own queue and dead-letter queue, `oncely-suite-<pid>-<time>-<n>-<test>`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName};
use oncely_broker_suite::{Broker, Channel};
use oncely_core::consumer::Message;
use oncely_core::{BoxError, async_trait};
use oncely_sqs::{MESSAGE_ID_ATTRIBUTE, SqsOptions, SqsSource};

struct Sqs {
    server: String,
    run: String,
    made: AtomicUsize,
}

struct Queue {
    url: String,
    client: aws_sdk_sqs::Client,
    queue_url: String,
    dead_letter_url: String,
}

impl Sqs {
    async fn connect() -> Self {
        let server =
            std::env::var("ONCELY_SQS_URL").unwrap_or_else(|_| "sqs+http://127.0.0.1:5999".into());
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        Sqs {
            server,
            run: format!("{}-{millis}", std::process::id()),
            made: AtomicUsize::new(0),
        }
    }
}

#[async_trait]
impl Broker for Sqs {
    type Channel = Queue;

    async fn channel(&self, test: &str) -> Result<Queue, BoxError> {
        let n = self.made.fetch_add(1, Ordering::SeqCst);
        let name = format!("oncely-suite-{}-{n}-{}", self.run, test.replace('_', "-"));
        let name: String = name.chars().take(70).collect();
        let url = format!("{}/{name}?visibility=5s&wait=1s", self.server);
        let options: SqsOptions = url.parse()?;
        let client = oncely_sqs::client(&options)?;
        let mut urls = Vec::new();
        for queue in [
            options.queue.clone(),
            options.dead_letter_queue_or_default(),
        ] {
            let created = client
                .create_queue()
                .queue_name(&queue)
                .attributes(QueueAttributeName::VisibilityTimeout, "5")
                .send()
                .await
                .map_err(|e| format!("no SQS at {}: {e} (start moto_server)", self.server))?;
            urls.push(created.queue_url().unwrap_or_default().to_owned());
        }
        Ok(Queue {
            url,
            client,
            dead_letter_url: urls.pop().unwrap(),
            queue_url: urls.pop().unwrap(),
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

#[async_trait]
impl Channel for Queue {
    type Source = SqsSource;

    async fn publish(&self, message: &Message) -> Result<(), BoxError> {
        let mut attributes: HashMap<String, MessageAttributeValue> = message
            .headers()
            .iter()
            .map(|(n, v)| (n.clone(), attribute(v)))
            .collect();
        if let Some(id) = message.message_id() {
            attributes.insert(MESSAGE_ID_ATTRIBUTE.into(), attribute(id));
        }
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(String::from_utf8_lossy(message.payload()))
            .set_message_attributes((!attributes.is_empty()).then_some(attributes))
            .send()
            .await?;
        Ok(())
    }

    async fn consumer(&self) -> Result<SqsSource, BoxError> {
        Ok(SqsSource::connect(&self.url).await?)
    }

    async fn dead_letters(&self) -> Result<Vec<Message>, BoxError> {
        let total = self.count(&self.dead_letter_url, false).await?;
        let mut seen: HashMap<String, Message> = HashMap::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while (seen.len() as u64) < total {
            if std::time::Instant::now() > deadline {
                return Err(format!("read {} of {total} dead letters", seen.len()).into());
            }
            let got = self
                .client
                .receive_message()
                .queue_url(&self.dead_letter_url)
                .max_number_of_messages(10)
                .visibility_timeout(0)
                .message_attribute_names("All")
                .send()
                .await?;
            for m in got.messages() {
                let mut message =
                    Message::new(m.body().unwrap_or_default().as_bytes().to_vec(), "dlq");
                for (name, value) in m.message_attributes().into_iter().flatten() {
                    message = message.with_header(name, value.string_value().unwrap_or_default());
                }
                seen.insert(m.message_id().unwrap_or_default().to_owned(), message);
            }
        }
        Ok(seen.into_values().collect())
    }

    async fn unsettled(&self) -> Result<u64, BoxError> {
        self.count(&self.queue_url, true).await
    }

    fn source_url(&self) -> String {
        self.url.clone()
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

fn main() {
    oncely_broker_suite::main(
        "sqs",
        || async { Sqs::connect().await },
        |url| async move { Ok(SqsSource::connect(&url).await?) },
    );
}
