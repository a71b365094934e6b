//! The broker behaviour suite against the NATS server at `ONCELY_NATS_URL`
//! (`nats://127.0.0.1:4222` by default), which must run with JetStream (`nats-server -js`).
//!
//! Each test gets its own stream, durable consumer and dead-letter stream, named
//! `ONCELY_SUITE_<pid>_<n>_<test>`; streams an earlier run of this binary left behind (its
//! process gone) are deleted at start.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::{self, Context};
use futures_util::TryStreamExt;
use oncely_broker_suite::{Broker, Channel};
use oncely_core::consumer::Message;
use oncely_core::{BoxError, async_trait};
use oncely_nats::{NatsOptions, NatsSource};

const PREFIX: &str = "ONCELY_SUITE_";

/// The server. Each test runs on a runtime of its own, and a client's connection task lives on
/// the runtime that made it: every channel connects anew.
struct Nats {
    server: String,
    made: AtomicUsize,
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
        remove_leftovers(&connect(&server).await).await;
        Nats {
            server,
            made: AtomicUsize::new(0),
        }
    }
}

/// Deletes the streams of earlier runs whose process is gone.
async fn remove_leftovers(context: &Context) {
    let names: Vec<String> = context
        .stream_names()
        .try_collect()
        .await
        .expect("list streams (is JetStream enabled?)");
    for name in names {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('_').next().unwrap_or_default();
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if pid != std::process::id().to_string() && !alive {
            context.delete_stream(&name).await.ok();
        }
    }
}

#[async_trait]
impl Broker for Nats {
    type Channel = NatsChannel;

    async fn channel(&self, test: &str) -> Result<NatsChannel, BoxError> {
        let n = self.made.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let stream = format!("{PREFIX}{pid}_{n}_{test}");
        let subject = format!("oncely.suite.{pid}.{n}.in");
        let context = connect(&self.server).await;
        context
            .create_stream(jetstream::stream::Config {
                name: stream.clone(),
                subjects: vec![subject.clone()],
                ..Default::default()
            })
            .await?;
        let options = NatsOptions::new(self.server.as_str(), stream.as_str(), "runner")
            .dead_letter_subject(format!("oncely.suite.{pid}.{n}.dlq"))
            .dead_letter_stream(format!("{stream}_DLQ"))
            .ack_wait(ACK_WAIT);
        // Creates the durable consumer and the dead-letter stream; a source never polled sends
        // no pull request.
        drop(NatsSource::open(context.clone(), &options).await?);
        let source_url = format!(
            "{}/{stream}/runner?dlq={}&dlq_stream={stream}_DLQ&ack_wait={}s",
            self.server.trim_end_matches('/'),
            options.dead_letter_subject_or_default(),
            ACK_WAIT.as_secs()
        );
        Ok(NatsChannel {
            context,
            options,
            subject,
            source_url,
        })
    }
}

struct NatsChannel {
    context: Context,
    options: NatsOptions,
    subject: String,
    source_url: String,
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
