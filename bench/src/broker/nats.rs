//! The broker benchmark on NATS JetStream: each contender reads a fresh stream
//! `ONCELY_BENCH_<pid>_<n>_<CONTENDER>` through a durable pull consumer, with a dead-letter
//! stream of its own.

use std::time::Duration;

use oncely::nats::async_nats;

use super::{Channel, PUBLISH_WINDOW, Unique, gone, other, payload, unsupported};
use crate::{BenchError, Progress, Workload};

/// The name of a bench stream, before `<pid>_<n>_<CONTENDER>`.
const NATS_PREFIX: &str = "ONCELY_BENCH_";
/// The durable consumer the sources read the stream through.
const NATS_CONSUMER: &str = "bench";

/// A fresh stream (and durable consumer, and dead-letter stream) holding the workload's
/// messages.
pub(super) struct Stream {
    context: async_nats::jetstream::Context,
    stream: String,
    dlq_stream: String,
    /// The server URL, as async-nats takes it.
    server: String,
    subject_prefix: String,
}

impl Channel for Stream {
    type Server = String;

    fn server(url: &str, rest: &str) -> Result<String, BenchError> {
        if rest.split('/').count() == 1 {
            Ok(url.into())
        } else {
            Err(unsupported(url))
        }
    }

    async fn create(server: &String, unique: &Unique<'_>) -> Result<Self, BenchError> {
        let client = async_nats::connect(server.as_str()).await.map_err(|e| {
            BenchError::Other(format!(
                "no NATS server at {}: {e}",
                oncely::backend::url::redact_password(server)
            ))
        })?;
        let context = async_nats::jetstream::new(client);
        remove_leftover_streams(&context).await;
        let Unique { pid, n, contender } = unique;
        let stream = format!("{NATS_PREFIX}{pid}_{n}_{}", contender.to_uppercase());
        let subject_prefix = format!("oncely.bench.{pid}.{n}.{contender}");
        context
            .create_stream(async_nats::jetstream::stream::Config {
                name: stream.clone(),
                subjects: vec![format!("{subject_prefix}.in")],
                // A safety net: messages of a run that died before deleting expire.
                max_age: Duration::from_secs(3600),
                ..Default::default()
            })
            .await
            .map_err(|e| other("create the NATS stream")(&e))?;
        Ok(Stream {
            context,
            dlq_stream: format!("{stream}_DLQ"),
            stream,
            server: server.clone(),
            subject_prefix,
        })
    }

    async fn fill(
        &mut self,
        workload: &Workload,
        progress: &dyn Progress,
    ) -> Result<(), BenchError> {
        let subject = format!("{}.in", self.subject_prefix);
        for chunk in workload.keys().chunks(PUBLISH_WINDOW) {
            let mut acks = Vec::with_capacity(chunk.len());
            for key in chunk {
                acks.push(
                    self.context
                        .publish(subject.clone(), payload(key).into())
                        .await
                        .map_err(|e| other("NATS publish")(&e))?,
                );
            }
            for ack in acks {
                ack.await.map_err(|e| other("NATS publish ack")(&e))?;
            }
            progress.advance(chunk.len() as u64);
        }
        Ok(())
    }

    fn source_url(&self, concurrency: Option<usize>) -> String {
        let Stream {
            stream,
            dlq_stream,
            server,
            subject_prefix,
            ..
        } = self;
        let mut url = format!(
            "{server}/{stream}/{NATS_CONSUMER}?dlq={subject_prefix}.dlq&dlq_stream={dlq_stream}"
        );
        if let Some(c) = concurrency {
            url.push_str(&format!("&batch={c}&max_ack_pending={}", (2 * c).max(1000)));
        }
        url
    }

    async fn leftovers(&self) -> Result<(u64, u64), BenchError> {
        let info = self
            .context
            .get_stream(&self.stream)
            .await
            .map_err(|e| other("NATS stream")(&e))?
            .consumer_info(NATS_CONSUMER)
            .await
            .map_err(|e| other("NATS consumer info")(&e))?;
        let unsettled = info.num_pending + info.num_ack_pending as u64;
        let dead = match self.context.get_stream(&self.dlq_stream).await {
            Ok(s) => {
                s.get_info()
                    .await
                    .map_err(|e| other("NATS dead-letter stream")(&e))?
                    .state
                    .messages
            }
            Err(_) => 0,
        };
        Ok((unsettled, dead))
    }

    async fn delete(self) -> Result<(), BenchError> {
        self.context
            .delete_stream(&self.stream)
            .await
            .map_err(|e| other("delete the NATS stream")(&e))?;
        // Created by the source on first use; absent if it never got that far.
        self.context.delete_stream(&self.dlq_stream).await.ok();
        Ok(())
    }
}

/// Deletes the bench streams of earlier runs whose process is gone.
async fn remove_leftover_streams(context: &async_nats::jetstream::Context) {
    use futures_util::StreamExt;
    let mut names = context.stream_names();
    let mut stale = Vec::new();
    while let Some(Ok(name)) = names.next().await {
        let Some(rest) = name.strip_prefix(NATS_PREFIX) else {
            continue;
        };
        if gone(rest.split('_').next().unwrap_or_default()) {
            stale.push(name);
        }
    }
    for name in stale {
        context.delete_stream(&name).await.ok();
    }
}

#[cfg(test)]
mod tests {
    use super::super::server;
    use super::*;

    #[test]
    fn a_server_url_only() {
        assert!(server::<Stream>("nats://127.0.0.1:4222").is_ok());
        assert!(server::<Stream>("nats://h/STREAM/consumer").is_err());
        assert!(server::<Stream>("nats://h?batch=1").is_err());
    }
}
