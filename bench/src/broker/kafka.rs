//! The broker benchmark on Kafka: each contender reads a fresh topic
//! ([`oncely::kafka::fresh_destination`], `oncely.bench.<pid>-<millis>-<n>-<contender>`) of
//! [`KAFKA_PARTITIONS`] partitions in a consumer group named as the topic; oncely's source makes
//! the `.dlq` topic. The naive contender is a plain rdkafka consumer ([`PlainKafka`]).

use std::sync::Arc;
use std::time::Duration;

use oncely::async_trait;
use oncely::consumer::{BrokerError, DeadLetter, Delivery, Message, Source};
use oncely::kafka::rdkafka;

use super::{BENCH_PREFIX, Channel, PUBLISH_WINDOW, other, payload, unsupported};
use crate::{BenchError, Progress, Workload};

/// Partitions of a Kafka bench topic. The source keeps order per Kafka key, so its deliveries in
/// flight are bounded by the concurrency, not by this.
pub const KAFKA_PARTITIONS: i32 = 8;

/// How long a Kafka metadata, offsets or admin request may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh topic holding the workload's messages (its `.dlq` made by the source on first use).
pub(super) struct Topic {
    /// The bootstrap brokers, `HOST:PORT[,HOST:PORT...]`, as librdkafka takes them.
    brokers: String,
    topic: String,
    /// Per partition, the offset after the last message produced to it, from the producer's
    /// delivery reports (tansu's high watermark can fall short of it).
    produced: Vec<i64>,
}

impl Channel for Topic {
    type Server = String;

    /// On Kafka the consumer joins its group (a rebalance round, about a second) before the
    /// first message, once per consumer and not per message.
    const CLOCK_FROM_FIRST_DELIVERY: bool = true;

    fn server(url: &str, rest: &str) -> Result<String, BenchError> {
        if rest.is_empty() || rest.contains('/') {
            return Err(unsupported(url));
        }
        // The consumer URL's parser fills in the default port of each broker.
        format!("{url}/topic?group=bench")
            .parse::<oncely::kafka::KafkaOptions>()
            .map_err(|e| BenchError::Other(format!("--broker: {e}")))
            .and_then(|options| {
                let brokers = options.cluster.brokers();
                // The benchmark's own clients connect plainly: TLS or SASL would be dropped.
                if options.cluster != oncely::kafka::Cluster::from(brokers) {
                    return Err(BenchError::Other(
                        "--broker: the Kafka benchmark runs against plain brokers only (no \
                         TLS, no SASL)"
                            .into(),
                    ));
                }
                Ok(brokers.to_owned())
            })
    }

    async fn create(brokers: &String, contender: &str) -> Result<Self, BenchError> {
        let options =
            oncely::kafka::FreshOptions::new(BENCH_PREFIX, contender).partitions(KAFKA_PARTITIONS);
        let fresh = oncely::kafka::fresh_destination(brokers, &options)
            .await
            .map_err(|e| other("create the Kafka topic")(&e))?;
        Ok(Topic {
            brokers: brokers.clone(),
            topic: fresh.topic,
            produced: vec![0; KAFKA_PARTITIONS as usize],
        })
    }

    async fn fill(
        &mut self,
        workload: &Workload,
        progress: &dyn Progress,
    ) -> Result<(), BenchError> {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let Topic {
            brokers,
            topic,
            produced,
        } = self;
        // The relay's producer: acks from all in-sync replicas, no duplicates from its own
        // retries. The event key is the Kafka key, so a re-publish shares a partition with its
        // original.
        // One record per produce batch: tansu serves a fetch only below its high watermark (the
        // last batch's base offset + 1), so a consumer paused and resumed inside a batch of
        // several records would wait for ever for the rest of it.
        let producer: FutureProducer = kafka_config(brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("batch.num.messages", "1")
            .create()
            .map_err(|e| other("Kafka producer")(&e))?;
        for chunk in workload.keys().chunks(PUBLISH_WINDOW) {
            let mut reports = Vec::with_capacity(chunk.len());
            for key in chunk {
                let body = payload(key);
                let record = FutureRecord::<str, [u8]>::to(topic)
                    .key(key.as_str())
                    .payload(&body);
                reports.push(
                    producer
                        .send_result(record)
                        .map_err(|(e, _)| other("Kafka produce")(&e))?,
                );
            }
            for report in reports {
                let delivered = report
                    .await
                    .map_err(|e| other("Kafka produce")(&e))?
                    .map_err(|(e, _)| other("Kafka produce")(&e))?;
                let partition = usize::try_from(delivered.partition).map_err(|_| {
                    BenchError::Other(format!(
                        "Kafka delivered to partition {}",
                        delivered.partition
                    ))
                })?;
                if partition >= produced.len() {
                    produced.resize(partition + 1, 0);
                }
                produced[partition] = produced[partition].max(delivered.offset + 1);
            }
            progress.advance(chunk.len() as u64);
        }
        Ok(())
    }

    /// No read-ahead to set: the source fetches per partition and hands out up to the runner's
    /// concurrency, one message per key at a time.
    fn source_url(&self, _concurrency: Option<usize>) -> String {
        let Topic { brokers, topic, .. } = self;
        format!("kafka://{brokers}/{topic}?group={topic}")
    }

    async fn naive_source(&self) -> Result<impl Source, BenchError> {
        PlainKafka::subscribe(&self.brokers, &self.topic)
    }

    async fn leftovers(&self) -> Result<(u64, u64), BenchError> {
        let (brokers, topic, produced) = (
            self.brokers.clone(),
            self.topic.clone(),
            self.produced.clone(),
        );
        // Offset and watermark requests block: off the runtime.
        tokio::task::spawn_blocking(move || kafka_leftovers(&brokers, &topic, &produced))
            .await
            .map_err(|e| other("Kafka offsets")(&e))?
    }

    async fn delete(self) -> Result<(), BenchError> {
        let Topic { brokers, topic, .. } = self;
        let dlq = format!("{topic}.dlq");
        delete_topics(&brokers, &[topic.as_str(), dlq.as_str()]).await
    }
}

/// A librdkafka configuration with the bootstrap brokers, logging errors only.
fn kafka_config(brokers: &str) -> rdkafka::ClientConfig {
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("log_level", "3");
    config
}

/// For a Kafka topic whose partitions end at `produced`: the messages the group (named as the
/// topic) has not committed, and the dead letters in `<topic>.dlq`.
///
/// A partition's end is the producer's (the offset after the last delivery report) or its high
/// watermark, whichever is further: tansu's watermark can stop at the base offset of the last
/// produce batch plus one. Any committed offset other than the end counts its distance.
fn kafka_leftovers(brokers: &str, topic: &str, produced: &[i64]) -> Result<(u64, u64), BenchError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = kafka_config(brokers)
        .set("group.id", topic)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| other("Kafka consumer")(&e))?;
    let mut partitions = rdkafka::TopicPartitionList::new();
    for partition in 0..produced.len() {
        partitions.add_partition(topic, partition as i32);
    }
    let committed = consumer
        .committed_offsets(partitions, KAFKA_TIMEOUT)
        .map_err(|e| other("Kafka committed offsets")(&e))?;
    let mut unsettled = 0;
    for (partition, &end) in (0i32..).zip(produced) {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, KAFKA_TIMEOUT)
            .map_err(|e| other("Kafka watermarks")(&e))?;
        let end = end.max(high);
        let done = match committed
            .find_partition(topic, partition)
            .map(|e| e.offset())
        {
            Some(rdkafka::Offset::Offset(offset)) => offset,
            _ => 0,
        };
        unsettled += end.abs_diff(done);
    }
    // Created by the source on first use; absent if it never got that far (and for the naive
    // consumer). Non-zero when anything was produced to it, although tansu may undercount.
    let dead = match consumer.fetch_watermarks(&format!("{topic}.dlq"), 0, KAFKA_TIMEOUT) {
        Ok((low, high)) => high.saturating_sub(low).max(0) as u64,
        Err(_) => 0,
    };
    Ok((unsettled, dead))
}

/// Deletes Kafka topics; topics that do not exist are no error.
async fn delete_topics(brokers: &str, topics: &[&str]) -> Result<(), BenchError> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> = kafka_config(brokers)
        .create()
        .map_err(|e| other("Kafka admin")(&e))?;
    let options = AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT));
    let results = admin
        .delete_topics(topics, &options)
        .await
        .map_err(|e| other("delete the Kafka topics")(&e))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => {
                return Err(BenchError::Other(format!(
                    "delete the Kafka topic {topic}: {code}"
                )));
            }
        }
    }
    Ok(())
}

/// The Kafka consumer people write without oncely: a plain rdkafka consumer in the group named
/// as the topic (auto-commit off, from the earliest offset), each message's offset committed
/// synchronously (`CommitMode::Sync`) when it is acked.
pub(super) struct PlainKafka {
    consumer: Arc<rdkafka::consumer::StreamConsumer>,
}

/// A message from [`PlainKafka`], and where it was.
pub(super) struct PlainKafkaDelivery {
    consumer: Arc<rdkafka::consumer::StreamConsumer>,
    message: Message,
    topic: String,
    partition: i32,
    offset: i64,
}

impl PlainKafka {
    fn subscribe(brokers: &str, topic: &str) -> Result<Self, BenchError> {
        use rdkafka::consumer::Consumer as _;
        let consumer: rdkafka::consumer::StreamConsumer = kafka_config(brokers)
            .set("group.id", topic)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|e| other("Kafka consumer")(&e))?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| other("Kafka subscribe")(&e))?;
        Ok(PlainKafka {
            consumer: Arc::new(consumer),
        })
    }
}

#[async_trait]
impl Source for PlainKafka {
    type Delivery = PlainKafkaDelivery;

    async fn next(&mut self) -> Option<Result<PlainKafkaDelivery, BrokerError>> {
        use rdkafka::Message as _;
        Some(match self.consumer.recv().await {
            Ok(m) => Ok(PlainKafkaDelivery {
                consumer: self.consumer.clone(),
                message: Message::new(m.payload().unwrap_or_default().to_vec(), m.topic()),
                topic: m.topic().to_owned(),
                partition: m.partition(),
                offset: m.offset(),
            }),
            Err(e) => Err(BrokerError::new(oncely::kafka::BROKER, "receive", e)),
        })
    }
}

#[async_trait]
impl Delivery for PlainKafkaDelivery {
    fn message(&self) -> &Message {
        &self.message
    }

    async fn ack(&self) -> Result<(), BrokerError> {
        use rdkafka::consumer::{CommitMode, Consumer as _};
        let mut next = rdkafka::TopicPartitionList::new();
        next.add_partition_offset(
            &self.topic,
            self.partition,
            rdkafka::Offset::Offset(self.offset + 1),
        )
        .and_then(|()| self.consumer.commit(&next, CommitMode::Sync))
        .map_err(|e| BrokerError::new(oncely::kafka::BROKER, "commit", e))
    }

    async fn redeliver(&self, _after: Duration) -> Result<(), BrokerError> {
        Err(BrokerError::new(
            oncely::kafka::BROKER,
            "redeliver",
            "the naive consumer never gives a message back",
        ))
    }

    async fn dead_letter(&self, _letter: &DeadLetter) -> Result<(), BrokerError> {
        Err(BrokerError::new(
            oncely::kafka::BROKER,
            "dead-letter",
            "the naive consumer never dead-letters",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::server;
    use super::*;

    #[test]
    fn bootstrap_brokers_only_with_default_ports() {
        assert!(matches!(
            server::<Topic>("kafka://127.0.0.1"),
            Ok(b) if b == "127.0.0.1:9092"
        ));
        assert!(matches!(
            server::<Topic>("kafka://a:9093,b/"),
            Ok(b) if b == "a:9093,b:9092"
        ));
        assert!(server::<Topic>("kafka://h/topic").is_err());
        assert!(server::<Topic>("kafka://").is_err());
    }
}
