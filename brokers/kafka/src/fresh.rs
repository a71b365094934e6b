//! [`fresh_destination`]: a new, uniquely named topic for one test or benchmark run.

use oncely_core::fresh::{first_use_of, made_by_a_gone_process, unique_name};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::client::SETUP_TIMEOUT;
use crate::{Cluster, Error, create_topic};

/// Partitions of a fresh topic unless set otherwise.
const DEFAULT_PARTITIONS: i32 = 3;

/// What [`fresh_destination`] makes: its name's prefix (which run made it), a label (what it
/// is for), and how the topic is set up.
#[derive(Debug, Clone)]
pub struct FreshOptions {
    prefix: String,
    label: String,
    partitions: i32,
}

impl FreshOptions {
    /// A topic named `<prefix><pid>-<millis>-<n>-<label>` (the label's characters other than
    /// letters, digits, `-` and `_` become `-`). Keep one prefix per kind of caller: leftovers
    /// are found by it.
    pub fn new(prefix: impl Into<String>, label: &str) -> Self {
        FreshOptions {
            prefix: prefix.into(),
            label: label.to_owned(),
            partitions: DEFAULT_PARTITIONS,
        }
    }

    /// The topic's partitions: at most this many consumers of one group get messages side by
    /// side. 3 by default.
    pub fn partitions(mut self, partitions: i32) -> Self {
        self.partitions = partitions;
        self
    }
}

/// The topic [`fresh_destination`] made, and the dead-letter topic a source on it uses by
/// default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreshDestination {
    /// The topic.
    pub topic: String,
    /// `<topic>.dlq`, which a [`KafkaSource`](crate::KafkaSource) creates by default (not made
    /// here).
    pub dead_letter_topic: String,
}

/// Creates a new topic on the Kafka brokers `brokers` (`host:port[,host:port...]`), named
/// uniquely (this process, the time, a counter; topics outlive a run, so a name is never
/// reused): for tests and benchmarks that need a destination of their own on a real broker.
///
/// First, once per process and prefix, it deletes the topics with this prefix that a process
/// now gone made (a run that ended before deleting its own).
///
/// ```no_run
/// # async fn example() -> Result<(), oncely_kafka::Error> {
/// use oncely_kafka::{FreshOptions, fresh_destination};
///
/// let options = FreshOptions::new("my-tests-", "orders").partitions(8);
/// let fresh = fresh_destination("127.0.0.1:9092", &options).await?;
/// let url = format!("kafka://127.0.0.1:9092/{}?group=billing", fresh.topic);
/// # let _ = url; Ok(()) }
/// ```
pub async fn fresh_destination(
    cluster: impl Into<Cluster>,
    options: &FreshOptions,
) -> Result<FreshDestination, Error> {
    let cluster = cluster.into();
    if first_use_of(&options.prefix) {
        remove_leftovers(&cluster, &options.prefix).await;
    }
    let topic = unique_name(&options.prefix, &options.label);
    create_topic(&cluster, &topic, options.partitions).await?;
    Ok(FreshDestination {
        dead_letter_topic: format!("{topic}.dlq"),
        topic,
    })
}

/// Deletes the topics (and their dead-letter topics) under `prefix` whose process is gone; a
/// failure leaves them.
async fn remove_leftovers(cluster: &Cluster, prefix: &str) {
    let (owned, prefix) = (cluster.clone(), prefix.to_owned());
    // Metadata requests block: off the runtime.
    let stale = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = owned.client_config().create().ok()?;
        let metadata = consumer.fetch_metadata(None, SETUP_TIMEOUT).ok()?;
        Some(
            metadata
                .topics()
                .iter()
                .map(|t| t.name().to_owned())
                .filter(|name| made_by_a_gone_process(name, &prefix))
                .collect::<Vec<_>>(),
        )
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_default();
    if stale.is_empty() {
        return;
    }
    let Ok(admin) = cluster
        .client_config()
        .create::<AdminClient<DefaultClientContext>>()
    else {
        return;
    };
    let names: Vec<&str> = stale.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(SETUP_TIMEOUT));
    admin.delete_topics(&names, &options).await.ok();
}
