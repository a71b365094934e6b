//! `oncely consume` end to end: the binary as a process, real brokers (NATS JetStream at
//! `ONCELY_NATS_URL`, default nats://127.0.0.1:4222; RabbitMQ at `ONCELY_AMQP_URL`, default
//! amqp://guest:guest@127.0.0.1:5672/%2f; a Kafka-protocol broker at `ONCELY_KAFKA_BROKERS`,
//! default 127.0.0.1:9092; an SQS-compatible server at `ONCELY_SQS_URL`, default
//! sqs+http://127.0.0.1:5999), a real SQLite store, and a small HTTP handler in this process that
//! records every request it gets.
//!
//! Streams, queues and topics come from each broker crate's `fresh_destination`, named after
//! this process, the time and a counter. Streams are deleted at the end of their test (and those
//! of dead earlier runs when the first of a run is made); queues carry `x-expires`, so RabbitMQ
//! removes them a few minutes after their last use; topics (and their dead-letter topics) are
//! deleted at the end of their test, and so are SQS queues.

use std::time::Duration;

mod handler;
mod handler_failures;
#[path = "../support/http_get.rs"]
mod http_get;
#[path = "../support/https.rs"]
mod https_handler;
mod kafka;
mod nats;
mod process;
mod rabbitmq;
mod redrive;
mod refusals;
mod sqs;

const BIN: &str = env!("CARGO_BIN_EXE_oncely");

/// How long the consumer gets to do what a test waits for.
const PATIENCE: Duration = Duration::from_secs(30);

/// The key whose handler answers 500, every time.
const FAILING: &str = "always-fails";

fn nats_server() -> String {
    std::env::var("ONCELY_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn amqp_server() -> String {
    std::env::var("ONCELY_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn kafka_brokers() -> String {
    std::env::var("ONCELY_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn sqs_server() -> String {
    std::env::var("ONCELY_SQS_URL").unwrap_or_else(|_| "sqs+http://127.0.0.1:5999".into())
}

fn order(id: &str, n: u32) -> Vec<u8> {
    format!(r#"{{"id":"{id}","n":{n}}}"#).into_bytes()
}
