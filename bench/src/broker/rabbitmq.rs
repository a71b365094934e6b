//! The broker benchmark on RabbitMQ: each contender reads a fresh durable queue
//! ([`oncely::rabbitmq::fresh_destination`], `oncely.bench.<pid>-<millis>-<n>-<contender>`),
//! with its `.dlq`, both expiring by themselves.

use std::time::{Duration, Instant};

use oncely::rabbitmq::lapin;

use super::{BENCH_PREFIX, Channel, PUBLISH_WINDOW, other, payload, unsupported};
use crate::{BenchError, Progress, Workload};

/// RabbitMQ deletes a bench queue this long after its last use.
const AMQP_EXPIRES: Duration = Duration::from_secs(10 * 60);

/// A fresh queue (and dead-letter queue) holding the workload's messages.
pub(super) struct Queues {
    connection: lapin::Connection,
    /// `amqp://[USER:PASS@]HOST[:PORT][/VHOST]`, as lapin takes it.
    server: String,
    queue: String,
    dlq: String,
}

impl Channel for Queues {
    type Server = String;

    fn server(url: &str, rest: &str) -> Result<String, BenchError> {
        if rest.split('/').count() <= 2 {
            Ok(url.into())
        } else {
            Err(unsupported(url))
        }
    }

    async fn create(server: &String, contender: &str) -> Result<Self, BenchError> {
        let connection = lapin::Connection::connect(server, lapin::ConnectionProperties::default())
            .await
            .map_err(|e| {
                BenchError::Other(format!(
                    "no RabbitMQ at {}: {e}",
                    oncely::backend::url::redact_password(server)
                ))
            })?;
        let options =
            oncely::rabbitmq::FreshOptions::new(BENCH_PREFIX, contender).expires(AMQP_EXPIRES);
        let fresh = oncely::rabbitmq::fresh_destination(server, &options)
            .await
            .map_err(|e| BenchError::Other(e.to_string()))?;
        let (queue, dlq) = (fresh.queue, fresh.dead_letter_queue);
        Ok(Queues {
            connection,
            server: server.clone(),
            queue,
            dlq,
        })
    }

    async fn fill(
        &mut self,
        workload: &Workload,
        progress: &dyn Progress,
    ) -> Result<(), BenchError> {
        let queue = &self.queue;
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(|e| other("AMQP channel")(&e))?;
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .map_err(|e| other("AMQP confirm mode")(&e))?;
        for chunk in workload.keys().chunks(PUBLISH_WINDOW) {
            let mut confirms = Vec::with_capacity(chunk.len());
            for key in chunk {
                confirms.push(
                    channel
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            lapin::options::BasicPublishOptions {
                                mandatory: true,
                                ..Default::default()
                            },
                            &payload(key),
                            lapin::BasicProperties::default()
                                .with_delivery_mode(2)
                                .with_content_type("application/json".into()),
                        )
                        .await
                        .map_err(|e| other("AMQP publish")(&e))?,
                );
            }
            for confirm in confirms {
                let confirmation = confirm
                    .await
                    .map_err(|e| other("AMQP publish confirm")(&e))?;
                if !matches!(confirmation, lapin::Confirmation::Ack(None)) {
                    return Err(BenchError::Other(format!(
                        "RabbitMQ did not confirm a publish to {queue}: {confirmation:?}"
                    )));
                }
            }
            progress.advance(chunk.len() as u64);
        }
        channel
            .close(200, "OK".into())
            .await
            .map_err(|e| other("AMQP channel")(&e))?;
        Ok(())
    }

    fn source_url(&self, concurrency: Option<usize>) -> String {
        let Queues {
            server, queue, dlq, ..
        } = self;
        let mut url = format!("{server}/{queue}?dlq={dlq}");
        if let Some(c) = concurrency {
            url.push_str(&format!("&prefetch={}", 2 * c));
        }
        url
    }

    async fn leftovers(&self) -> Result<(u64, u64), BenchError> {
        let queue = &self.queue;
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(|e| other("AMQP channel")(&e))?;
        // A passive declare counts ready messages only: wait until the consumer's channel is
        // closed, so that anything it left unacked is ready again.
        let deadline = Instant::now() + Duration::from_secs(10);
        let count = |name: String| {
            let channel = channel.clone();
            async move {
                channel
                    .queue_declare(
                        name.as_str().into(),
                        lapin::options::QueueDeclareOptions::default().passive(),
                        lapin::types::FieldTable::default(),
                    )
                    .await
                    .map_err(|e| other("AMQP passive declare")(&e))
            }
        };
        let declared = loop {
            let declared = count(queue.clone()).await?;
            if declared.consumer_count() == 0 {
                break declared;
            }
            if Instant::now() >= deadline {
                return Err(BenchError::Other(format!(
                    "consumers still on {queue}: its unacked messages cannot be counted"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let dead = count(self.dlq.clone()).await?.message_count();
        channel
            .close(200, "OK".into())
            .await
            .map_err(|e| other("AMQP channel")(&e))?;
        Ok((u64::from(declared.message_count()), u64::from(dead)))
    }

    async fn delete(self) -> Result<(), BenchError> {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(|e| other("AMQP channel")(&e))?;
        for name in [self.queue, self.dlq] {
            channel
                .queue_delete(
                    name.as_str().into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await
                .map_err(|e| other("delete the bench queue")(&e))?;
        }
        self.connection
            .close(200, "OK".into())
            .await
            .map_err(|e| other("AMQP close")(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::server;
    use super::*;

    #[test]
    fn a_server_and_vhost_only() {
        assert!(matches!(
            server::<Queues>("amqp://guest:guest@127.0.0.1:5672/"),
            Ok(u) if u == "amqp://guest:guest@127.0.0.1:5672"
        ));
        assert!(server::<Queues>("amqp://h/%2f").is_ok());
        assert!(server::<Queues>("amqp://h/vhost/queue").is_err());
    }
}
