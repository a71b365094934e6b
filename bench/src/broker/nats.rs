//! The broker benchmark on NATS JetStream: each contender reads a fresh stream
//! ([`oncely::nats::fresh_destination`], `ONCELY_BENCH_<pid>-<millis>-<n>-<contender>`) through a
//! durable pull consumer, with a dead-letter stream of its own.

use std::time::Duration;

use oncely::nats::async_nats;

use super::{Channel, PUBLISH_WINDOW, other, payload, unsupported};
use crate::{BenchError, Progress, Workload};

/// The name of a bench stream, before `<pid>-<millis>-<n>-<contender>`.
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
    /// The one subject the stream captures.
    subject: String,
    dlq_subject: String,
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

    async fn create(server: &String, contender: &str) -> Result<Self, BenchError> {
        let client = oncely::nats::connect(server)
            .await
            .map_err(|e| BenchError::Other(e.to_string()))?;
        let context = async_nats::jetstream::new(client);
        // A safety net: messages of a run that died before deleting expire.
        let options = oncely::nats::FreshOptions::new(NATS_PREFIX, contender)
            .max_age(Duration::from_secs(3600));
        let fresh = oncely::nats::fresh_destination(server, &options)
            .await
            .map_err(|e| BenchError::Other(e.to_string()))?;
        Ok(Stream {
            context,
            stream: fresh.stream,
            dlq_stream: fresh.dead_letter_stream,
            server: server.clone(),
            subject: fresh.subject,
            dlq_subject: fresh.dead_letter_subject,
        })
    }

    async fn fill(
        &mut self,
        workload: &Workload,
        progress: &dyn Progress,
    ) -> Result<(), BenchError> {
        for chunk in workload.keys().chunks(PUBLISH_WINDOW) {
            let mut acks = Vec::with_capacity(chunk.len());
            for key in chunk {
                acks.push(
                    self.context
                        .publish(self.subject.clone(), payload(key).into())
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
            dlq_subject,
            ..
        } = self;
        let mut url =
            format!("{server}/{stream}/{NATS_CONSUMER}?dlq={dlq_subject}&dlq_stream={dlq_stream}");
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
