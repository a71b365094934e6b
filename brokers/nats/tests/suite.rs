//! The broker behaviour suite against the NATS server at `ONCELY_NATS_URL`
//! (`nats://127.0.0.1:4222` by default), which must run with JetStream (`nats-server -js`).
//!
//! Each test gets its own stream (from [`oncely_nats::fresh_destination`], named
//! `ONCELY_SUITE_<pid>-<millis>-<n>-<test>`), durable consumer and dead-letter stream; streams
//! an earlier run of this binary left behind (its process gone) are deleted at the first.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::{self, Context};
use oncely_broker_suite::{Broker, Channel};
use oncely_conformance::faults::{NatsServer, Restartable};
use oncely_core::consumer::Message;
use oncely_core::outbox::Publisher;
use oncely_core::{BoxError, async_trait};
use oncely_nats::{FreshOptions, NatsOptions, NatsPublisher, NatsSource};

const PREFIX: &str = "ONCELY_SUITE_";

/// The server. Each test runs on a runtime of its own, and a client's connection task lives on
/// the runtime that made it: every channel connects anew.
struct Nats {
    server: String,
}

async fn connect(server: &str) -> Context {
    let client = async_nats::connect(server).await.unwrap_or_else(|e| {
        panic!(
            "no NATS server at {server}: {e} (start nats-server with -js, or set ONCELY_NATS_URL)"
        )
    });
    jetstream::new(client)
}

impl Nats {
    async fn connect() -> Self {
        let server =
            std::env::var("ONCELY_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        // Fail fast, with the reason, when the server is not there.
        connect(&server).await;
        Nats { server }
    }
}

#[async_trait]
impl Broker for Nats {
    type Channel = NatsChannel;
    const RUNS_STORE_FAULT_PROOFS: bool = true;
    fn runs_restart_proof(&self) -> bool {
        true
    }

    async fn own_server(&self) -> Option<(Self, Box<dyn Restartable>)> {
        let server = tokio::task::spawn_blocking(NatsServer::start)
            .await
            .expect("the test's NATS server");
        let nats = Nats {
            server: server.url(),
        };
        connect(&nats.server).await;
        Some((nats, Box::new(server)))
    }

    async fn connect_publisher(url: &str) -> Result<Box<dyn Publisher>, BoxError> {
        Ok(Box::new(NatsPublisher::connect(url).await?))
    }

    async fn channel(&self, test: &str) -> Result<NatsChannel, BoxError> {
        let fresh =
            oncely_nats::fresh_destination(&self.server, &FreshOptions::new(PREFIX, test)).await?;
        let context = connect(&self.server).await;
        let options = NatsOptions::new(self.server.as_str(), fresh.stream.as_str(), "runner")
            .dead_letter_subject(fresh.dead_letter_subject.as_str())
            .dead_letter_stream(fresh.dead_letter_stream.as_str())
            .ack_wait(ACK_WAIT);
        // Creates the durable consumer and the dead-letter stream; a source never polled sends
        // no pull request.
        drop(NatsSource::open(context.clone(), &options).await?);
        let source_url = format!(
            "{}/{}/runner?dlq={}&dlq_stream={}&ack_wait={}s",
            self.server.trim_end_matches('/'),
            fresh.stream,
            fresh.dead_letter_subject,
            fresh.dead_letter_stream,
            ACK_WAIT.as_secs()
        );
        let server = self.server.trim_end_matches('/');
        // A short ack wait: what a killed redrive held comes back to the next one soon.
        let dead_letter_source_url = format!(
            "{server}/{}/redrive?dlq=none&ack_wait=1s",
            fresh.dead_letter_stream
        );
        Ok(NatsChannel {
            context,
            options,
            publisher_url: format!("{server}/{}", fresh.subject),
            subject: fresh.subject,
            source_url,
            dead_letter_source_url,
        })
    }
}

struct NatsChannel {
    context: Context,
    options: NatsOptions,
    subject: String,
    source_url: String,
    dead_letter_source_url: String,
    publisher_url: String,
}

/// Short, so the messages a killed consumer (the kill -9 proof) held come back soon.
const ACK_WAIT: Duration = Duration::from_secs(5);

#[async_trait]
impl Channel for NatsChannel {
    type Source = NatsSource;

    async fn publish(&self, message: &Message) -> Result<(), BoxError> {
        let mut headers = HeaderMap::new();
        for (name, value) in message.headers() {
            headers.append(name.as_str(), value.as_str());
        }
        // Only a real message id: JetStream drops a second publish with the same one.
        if let Some(id) = message.message_id() {
            headers.insert(NATS_MESSAGE_ID, id);
        }
        let payload = message.payload().to_vec().into();
        self.context
            .publish_with_headers(self.subject.clone(), headers, payload)
            .await?
            .await?;
        Ok(())
    }

    async fn consumer(&self) -> Result<NatsSource, BoxError> {
        Ok(NatsSource::open(self.context.clone(), &self.options).await?)
    }

    async fn dead_letters(&self) -> Result<Vec<Message>, BoxError> {
        let stream = self
            .context
            .get_stream(self.options.dead_letter_stream_or_default())
            .await?;
        let state = stream.get_info().await?.state;
        let mut letters = Vec::new();
        if state.messages == 0 {
            return Ok(letters);
        }
        for sequence in state.first_sequence..=state.last_sequence {
            let stored = stream.get_raw_message(sequence).await?;
            let mut letter = Message::new(stored.payload.to_vec(), stored.subject.as_str());
            for (name, values) in stored.headers.iter() {
                for value in values {
                    letter = letter.with_header(AsRef::<str>::as_ref(name), value.as_str());
                }
            }
            letters.push(letter);
        }
        Ok(letters)
    }

    fn source_url(&self) -> String {
        self.source_url.clone()
    }

    fn dead_letter_source_url(&self) -> String {
        self.dead_letter_source_url.clone()
    }

    fn publisher_url(&self) -> String {
        self.publisher_url.clone()
    }

    async fn unsettled(&self) -> Result<u64, BoxError> {
        let info = self
            .context
            .get_stream(&self.options.stream)
            .await?
            .consumer_info(&self.options.consumer)
            .await?;
        Ok(info.num_pending + info.num_ack_pending as u64)
    }
}

fn main() {
    oncely_broker_suite::main("nats", Nats::connect, |url| async move {
        Ok(NatsSource::connect(&url).await?)
    });
}
