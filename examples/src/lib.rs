//! What the runnable examples share: the order-inventory consumer ([`ReserveInventory`], its
//! tables made by [`setup`]; a broker consumer whose effect lives in PostgreSQL, in one
//! transaction with its dedup record), [`publish`], which puts orders on any broker, and
//! [`call`], an HTTP call to another service whose failures say whether it may have acted.

use anyhow::{Context, bail};
use oncely::BrokerKind;
use oncely::nats::async_nats;
use oncely::rabbitmq::lapin;
use oncely_core::consumer::Message;
use oncely_core::outbox::Publisher as _;

mod call;
mod inventory;

pub use call::{Answer, call};

pub use inventory::{ITEMS, POISON_ITEM, ReserveInventory, reserve_with_store, setup};

/// Publishes `payloads` to `nats://HOST[:PORT]/STREAM` (subject `<stream in lower case>.in`,
/// the stream created if missing), `amqp://[USER:PASS@]HOST[:PORT]/QUEUE` (the default
/// exchange, the queue declared durable if missing) or `kafka://HOST[:PORT]/TOPIC` (created
/// with three partitions if missing; each message keyed by its `orderId`) or
/// `sqs[+http]://HOST[:PORT]/QUEUE` (a standard queue, created with its dead-letter queue
/// `QUEUE-dlq` if missing; sent by SendMessageBatch, ten messages a request), each confirmed by
/// the broker.
pub async fn publish(to: &str, payloads: &[Vec<u8>]) -> anyhow::Result<()> {
    let (scheme, rest) = to
        .split_once("://")
        .context("a URL like nats://HOST/STREAM")?;
    let (server, name) = rest
        .rsplit_once('/')
        .context("the URL ends with /STREAM or /QUEUE")?;
    match BrokerKind::from_url(to)? {
        BrokerKind::Nats if scheme == "nats" => {
            let client = oncely::nats::connect(&format!("nats://{server}")).await?;
            let jetstream = async_nats::jetstream::new(client);
            let subject = subject_of(name);
            jetstream
                .get_or_create_stream(async_nats::jetstream::stream::Config {
                    name: name.to_owned(),
                    subjects: vec![subject.clone()],
                    ..Default::default()
                })
                .await?;
            for payload in payloads {
                jetstream
                    .publish(subject.clone(), payload.clone().into())
                    .await?
                    .await?;
            }
        }
        BrokerKind::RabbitMq if scheme == "amqp" => {
            let url = format!("amqp://{server}");
            let connection =
                lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await?;
            let channel = connection.create_channel().await?;
            channel
                .queue_declare(
                    name.into(),
                    lapin::options::QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    lapin::types::FieldTable::default(),
                )
                .await?;
            channel
                .confirm_select(lapin::options::ConfirmSelectOptions::default())
                .await?;
            for payload in payloads {
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        name.into(),
                        lapin::options::BasicPublishOptions::default(),
                        payload,
                        lapin::BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?
                    .await?;
                if !confirm.is_ack() {
                    bail!("RabbitMQ did not confirm a publish: {confirm:?}");
                }
            }
            connection.close(200, "done".into()).await?;
        }
        BrokerKind::Kafka => {
            // Three partitions, each order's copies keyed by its id: one order, one partition.
            oncely::kafka::create_topic(server, name, 3).await?;
            let publisher =
                oncely::kafka::KafkaPublisher::open(server, Some(name.to_owned())).await?;
            for payload in payloads {
                let order: serde_json::Value = serde_json::from_slice(payload)?;
                let id = order["orderId"].as_str().unwrap_or_default().to_owned();
                let message = Message::new(payload.clone(), name).with_ordering_key(id);
                publisher.publish(None, &message).await?;
            }
        }
        BrokerKind::Sqs => publish_sqs(to, payloads).await?,
        _ => bail!("`{to}`: use nats://, amqp://, kafka:// or sqs[+http]://"),
    }
    Ok(())
}

/// [`publish`] to SQS: the queue and its dead-letter queue created if missing (the consumer
/// needs both), then the payloads, ten a SendMessageBatch. A standard queue only: a FIFO
/// queue's deduplication would drop the very re-publishes the example is about.
async fn publish_sqs(to: &str, payloads: &[Vec<u8>]) -> anyhow::Result<()> {
    let options: oncely::sqs::SqsOptions = to.parse()?;
    if options.queue.ends_with(".fifo") {
        bail!("publish to a standard queue: a FIFO queue drops re-publishes by their dedup id");
    }
    let client = oncely::sqs::client(&options).await?;
    for name in [
        options.queue.clone(),
        options.dead_letter_queue_or_default(),
    ] {
        client
            .create_queue()
            .queue_name(&name)
            .send()
            .await
            .with_context(|| format!("create the SQS queue {name} at {}", options.endpoint))?;
    }
    let queue_url = client
        .get_queue_url()
        .queue_name(&options.queue)
        .send()
        .await?
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    for chunk in payloads.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(n, payload)| {
                Ok(aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(n.to_string())
                    .message_body(String::from_utf8(payload.clone())?)
                    .build()?)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let sent = client
            .send_message_batch()
            .queue_url(&queue_url)
            .set_entries(Some(entries))
            .send()
            .await?;
        if let Some(failed) = sent.failed().first() {
            bail!(
                "SQS refused a message: {}: {}",
                failed.code(),
                failed.message().unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// The subject [`publish`] uses for a stream: `ORDERS` -> `orders.in`.
pub fn subject_of(stream: &str) -> String {
    format!("{}.in", stream.to_lowercase())
}
