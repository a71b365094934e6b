//! [`fresh_destination`]: a new, uniquely named JetStream stream for one test or benchmark run.

use std::time::Duration;

use async_nats::jetstream::{self, Context};
use futures_util::StreamExt;
use oncely_core::fresh::{first_use_of, made_by_a_gone_process, unique_name};
use oncely_core::url::redact_password;

use crate::Error;

/// What [`fresh_destination`] makes: its name's prefix (which run made it), a label (what it
/// is for), and how the stream is set up.
#[derive(Debug, Clone)]
pub struct FreshOptions {
    prefix: String,
    label: String,
    max_age: Option<Duration>,
}

impl FreshOptions {
    /// A stream named `<prefix><pid>-<millis>-<n>-<label>` (the label's characters other than
    /// letters, digits, `-` and `_` become `-`). Keep one prefix per kind of caller: leftovers
    /// are found by it.
    pub fn new(prefix: impl Into<String>, label: &str) -> Self {
        FreshOptions {
            prefix: prefix.into(),
            label: label.to_owned(),
            max_age: None,
        }
    }

    /// The stream drops messages older than `age`: a safety net for messages of a run that
    /// died before deleting its stream. Unlimited by default.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }
}

/// A stream [`fresh_destination`] made, and the names a source on it uses by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreshDestination {
    /// The stream.
    pub stream: String,
    /// The one subject it captures, `<stream>.in`: publish here.
    pub subject: String,
    /// The dead-letter subject a source on it defaults to, `<stream>.dlq` (not captured by the
    /// stream).
    pub dead_letter_subject: String,
    /// The dead-letter stream a source on it creates by default, `<stream>_DLQ`.
    pub dead_letter_stream: String,
}

/// Creates a new stream on the NATS server at `server` (`nats://[user:password@]HOST[:PORT]`,
/// with JetStream) capturing one subject, named uniquely (this process, the time, a counter):
/// for tests and benchmarks that need a destination of their own on a real server.
///
/// First, once per process and prefix, it deletes the streams with this prefix that a process
/// now gone made (a run that ended before deleting its own). The dead-letter stream is not
/// made here: a [`NatsSource`](crate::NatsSource) creates it.
///
/// ```no_run
/// # async fn example() -> Result<(), oncely_nats::Error> {
/// use oncely_nats::{FreshOptions, fresh_destination};
///
/// let fresh = fresh_destination("nats://127.0.0.1:4222", &FreshOptions::new("MY_TESTS_", "orders")).await?;
/// let url = format!("nats://127.0.0.1:4222/{}/runner", fresh.stream);
/// # let _ = url; Ok(()) }
/// ```
pub async fn fresh_destination(
    server: &str,
    options: &FreshOptions,
) -> Result<FreshDestination, Error> {
    let shown = redact_password(server);
    let client = crate::connect(server).await?;
    let context = jetstream::new(client);
    if first_use_of(&options.prefix) {
        remove_leftovers(&context, &options.prefix).await;
    }
    let stream = unique_name(&options.prefix, &options.label);
    let subject = format!("{stream}.in");
    context
        .create_stream(jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![subject.clone()],
            max_age: options.max_age.unwrap_or_default(),
            ..Default::default()
        })
        .await
        .map_err(|e| Error::JetStream {
            what: format!("creating the stream {stream}"),
            server: shown,
            source: e.into(),
        })?;
    Ok(FreshDestination {
        dead_letter_subject: format!("{stream}.dlq"),
        dead_letter_stream: format!("{stream}_DLQ"),
        stream,
        subject,
    })
}

/// Deletes the streams (and their dead-letter streams) under `prefix` whose process is gone.
async fn remove_leftovers(context: &Context, prefix: &str) {
    let mut names = context.stream_names();
    let mut stale = Vec::new();
    while let Some(Ok(name)) = names.next().await {
        if made_by_a_gone_process(&name, prefix) {
            stale.push(name);
        }
    }
    for name in stale {
        context.delete_stream(&name).await.ok();
    }
}
