//! The broker benchmark on SQS: each contender reads a fresh standard queue
//! ([`oncely::sqs::fresh_destination`], `oncely-bench-<pid>-<millis>-<n>-<contender>`), with its
//! `-dlq`, filled by `SendMessageBatch`.

use super::{Channel, payload, unsupported};
use crate::{BenchError, Progress, Workload};

/// The name of an SQS queue of the benchmark (SQS names take no dots), before
/// `<pid>-<millis>-<n>-<contender>`; its dead-letter queue is the name and `-dlq`.
const SQS_PREFIX: &str = "oncely-bench-";
/// SQS's most messages per SendMessageBatch.
const SQS_BATCH: usize = 10;
/// SendMessageBatch requests in flight at once while filling.
const SQS_BATCHES_IN_FLIGHT: usize = 4;
/// Messages by default on SQS: moto, the emulator it is tested with, reads every message of a
/// queue on each request, so a request's cost grows with the queue's depth. See the module docs.
pub const DEFAULT_SQS_EVENTS: usize = 1_000;
/// Messages through the naive pattern by default on SQS (one DeleteMessage per message).
pub const DEFAULT_SQS_NAIVE_EVENTS: usize = 500;

/// An SQS server as `--broker` names it.
pub(super) struct Endpoint {
    /// `sqs://HOST[:PORT]` or `sqs+http://HOST[:PORT]`, as given.
    url: String,
    /// Its options (queue empty).
    options: oncely::sqs::SqsOptions,
}

/// A fresh queue (and dead-letter queue) holding the workload's messages.
pub(super) struct Queues {
    client: aws_sdk_sqs::Client,
    /// `sqs[+http]://HOST[:PORT]`, as given.
    server: String,
    queue: String,
    queue_url: String,
    dlq_url: String,
}

impl Channel for Queues {
    type Server = Endpoint;

    fn server(url: &str, rest: &str) -> Result<Endpoint, BenchError> {
        if rest.is_empty() || rest.contains('/') {
            return Err(unsupported(url));
        }
        oncely::sqs::SqsOptions::parse_queue_optional(url)
            .map(|options| Endpoint {
                url: url.into(),
                options,
            })
            .map_err(|e| BenchError::Other(format!("--broker: {e}")))
    }

    async fn create(server: &Endpoint, contender: &str) -> Result<Self, BenchError> {
        let client = oncely::sqs::client(&server.options)
            .await
            .map_err(|e| super::other("SQS client")(&e))?;
        let fresh = oncely::sqs::fresh_destination(
            &server.url,
            &oncely::sqs::FreshOptions::new(SQS_PREFIX, contender),
        )
        .await
        .map_err(|e| BenchError::Other(e.to_string()))?;
        Ok(Queues {
            client,
            server: server.url.clone(),
            queue: fresh.queue,
            queue_url: fresh.queue_url,
            dlq_url: fresh.dead_letter_queue_url,
        })
    }

    async fn fill(
        &mut self,
        workload: &Workload,
        progress: &dyn Progress,
    ) -> Result<(), BenchError> {
        use futures_util::StreamExt;
        let Queues {
            client, queue_url, ..
        } = self;
        // SendMessageBatch, ten messages a request, a few requests at once; a batch answers
        // each entry, and any entry refused fails the run.
        let batches = workload.keys().chunks(SQS_BATCH).map(|chunk| {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(n, key)| {
                    aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                        .id(n.to_string())
                        .message_body(String::from_utf8_lossy(&payload(key)))
                        .build()
                        .expect("id and body are set")
                })
                .collect::<Vec<_>>();
            let request = client
                .send_message_batch()
                .queue_url(queue_url.as_str())
                .set_entries(Some(entries));
            async move { (chunk.len(), request.send().await) }
        });
        let mut sent = futures_util::stream::iter(batches).buffer_unordered(SQS_BATCHES_IN_FLIGHT);
        while let Some((len, answer)) = sent.next().await {
            let answer = answer.map_err(|e| {
                BenchError::Other(format!("SQS SendMessageBatch: {}", sqs_error(&e)))
            })?;
            if let Some(failed) = answer.failed().first() {
                return Err(BenchError::Other(format!(
                    "SQS refused a message: {}: {}",
                    failed.code(),
                    failed.message().unwrap_or_default()
                )));
            }
            if answer.successful().len() != len {
                return Err(BenchError::Other(format!(
                    "SQS answered {} of {len} messages of a batch",
                    answer.successful().len()
                )));
            }
            progress.advance(len as u64);
        }
        Ok(())
    }

    /// Nothing to set: the source receives up to ten messages ahead, whatever the runner's
    /// concurrency. Receives wait a second at most (long polls on moto spin its CPU for their
    /// whole wait when nothing is there).
    fn source_url(&self, _concurrency: Option<usize>) -> String {
        format!("{}/{}?wait=1s", self.server, self.queue)
    }

    /// The source gives back what it received and never handed out when it is dropped
    /// (visible again at once); acks are deletes the source awaited.
    async fn leftovers(&self) -> Result<(u64, u64), BenchError> {
        Ok((
            sqs_count(&self.client, &self.queue_url, true).await?,
            sqs_count(&self.client, &self.dlq_url, false).await?,
        ))
    }

    async fn delete(self) -> Result<(), BenchError> {
        for url in [&self.queue_url, &self.dlq_url] {
            self.client
                .delete_queue()
                .queue_url(url)
                .send()
                .await
                .map_err(|e| {
                    BenchError::Other(format!(
                        "delete the SQS queue {}: {}",
                        self.queue,
                        sqs_error(&e)
                    ))
                })?;
        }
        Ok(())
    }
}

/// An SQS SDK error on one line, with its causes.
fn sqs_error(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    line
}

/// Messages in an SQS queue: visible ones, and with `all` also those received and not deleted
/// (in flight) and delayed.
async fn sqs_count(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    all: bool,
) -> Result<u64, BenchError> {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let mut names = vec![A::ApproximateNumberOfMessages];
    if all {
        names.extend([
            A::ApproximateNumberOfMessagesNotVisible,
            A::ApproximateNumberOfMessagesDelayed,
        ]);
    }
    let answer = client
        .get_queue_attributes()
        .queue_url(queue_url)
        .set_attribute_names(Some(names.clone()))
        .send()
        .await
        .map_err(|e| BenchError::Other(format!("SQS queue attributes: {}", sqs_error(&e))))?;
    let attributes = answer.attributes();
    Ok(names
        .iter()
        .filter_map(|name| attributes.and_then(|a| a.get(name)))
        .filter_map(|value| value.parse::<u64>().ok())
        .sum())
}

#[cfg(test)]
mod tests {
    use super::super::server;
    use super::*;

    #[test]
    fn a_server_only() {
        assert!(matches!(
            server::<Queues>("sqs+http://127.0.0.1:5999/"),
            Ok(e) if e.url == "sqs+http://127.0.0.1:5999" && e.options.endpoint == "http://127.0.0.1:5999"
        ));
        assert!(server::<Queues>("sqs://sqs.eu-west-1.amazonaws.com").is_ok());
        assert!(server::<Queues>("sqs+http://h/queue").is_err());
        assert!(server::<Queues>("sqs://").is_err());
    }
}
