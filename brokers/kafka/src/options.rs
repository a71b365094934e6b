//! Where to consume from and how: the brokers, the topic, the consumer group, the dead-letter
//! topic, and the group's timing.

use std::str::FromStr;
use std::time::Duration;

use crate::{Cluster, Error};

mod parse;

pub(crate) use parse::locate;

/// The port used when the URL names none.
pub const DEFAULT_PORT: u16 = 9092;
/// How long the group waits for a silent member before giving its partitions to others.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// How often settled offsets are committed to the group.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(200);
/// How long a revocation waits for the messages in flight of the revoked partitions.
pub const DEFAULT_REVOKE_WAIT: Duration = Duration::from_secs(30);

/// Everything [`KafkaSource::connect_with`](crate::KafkaSource::connect_with) needs. Parse it
/// from a URL (`kafka://HOST[:PORT][,HOST[:PORT]...]/TOPIC?group=NAME...`, see the
/// [crate docs](crate)) or build it:
///
/// ```
/// use std::time::Duration;
/// use oncely_kafka::KafkaOptions;
///
/// let from_url: KafkaOptions = "kafka://127.0.0.1/orders?group=billing&session_timeout=6s".parse()?;
/// let built = KafkaOptions::new("127.0.0.1:9092", "orders", "billing")
///     .session_timeout(Duration::from_secs(6));
/// assert_eq!(from_url, built);
/// assert_eq!(built.dead_letter_topic_or_default(), "orders.dlq");
/// # Ok::<(), oncely_kafka::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KafkaOptions {
    /// The cluster: the bootstrap brokers (`host:port[,host:port...]`) and how to connect.
    pub cluster: Cluster,
    /// The topic to consume.
    pub topic: String,
    /// The consumer group.
    pub group: String,
    /// Where dead letters go; `None` for `<TOPIC>.dlq`.
    pub dead_letter_topic: Option<String>,
    /// Create the dead-letter topic (one partition, the broker's replication) if it does not
    /// exist (default); `false` fails instead.
    pub create_dead_letter_topic: bool,
    /// Whether the source dead-letters at all (default). `false` (`dlq=none`): no dead-letter
    /// topic is checked or created, and a dead-lettering fails, so the message is given back:
    /// for a source that only moves messages on, as `oncely redrive` reads a dead-letter topic.
    pub dead_letters: bool,
    /// The group's session timeout ([`DEFAULT_SESSION_TIMEOUT`]): how soon a crashed member's
    /// partitions go to the others.
    pub session_timeout: Duration,
    /// How often settled offsets are committed ([`DEFAULT_COMMIT_INTERVAL`]).
    pub commit_interval: Duration,
    /// How long a revocation waits for messages in flight ([`DEFAULT_REVOKE_WAIT`]).
    pub revoke_wait: Duration,
    /// What is handled in order ([`Order::Key`] by default).
    pub order: Order,
}

/// What a [`KafkaSource`](crate::KafkaSource) keeps in order, which decides how many messages
/// of one partition are in flight at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    /// The messages of one Kafka key, in the order they were produced; messages of other keys
    /// in the same partition run beside them (up to the runner's concurrency). Records without
    /// a key count as one key among themselves. Offsets are committed up to the first message
    /// not yet settled, so a crash redelivers only what may be unfinished (and duplicates,
    /// which the dedup store answers).
    #[default]
    Key,
    /// All the messages of a partition, one at a time. Always so when offsets are stored with
    /// the effect ([`KafkaSource::offsets`](crate::KafkaSource::offsets)): a stored offset
    /// means every message before it is done.
    Partition,
}

impl KafkaOptions {
    /// Consumes `topic` from `cluster` (a [`Cluster`], or plain `host:port[,...]` brokers) in
    /// `group`, with the defaults.
    pub fn new(
        cluster: impl Into<Cluster>,
        topic: impl Into<String>,
        group: impl Into<String>,
    ) -> Self {
        KafkaOptions {
            cluster: cluster.into(),
            topic: topic.into(),
            group: group.into(),
            dead_letter_topic: None,
            create_dead_letter_topic: true,
            dead_letters: true,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            revoke_wait: DEFAULT_REVOKE_WAIT,
            order: Order::Key,
        }
    }

    /// What is handled in order (see [`Order`]).
    pub fn order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }

    /// Dead letters go to `topic`.
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self
    }

    /// Whether to create a missing dead-letter topic.
    pub fn create_dead_letter_topic(mut self, create: bool) -> Self {
        self.create_dead_letter_topic = create;
        self
    }

    /// The group's session timeout.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// How often settled offsets are committed.
    pub fn commit_interval(mut self, every: Duration) -> Self {
        self.commit_interval = every;
        self
    }

    /// How long a revocation waits for messages in flight.
    pub fn revoke_wait(mut self, wait: Duration) -> Self {
        self.revoke_wait = wait;
        self
    }

    /// The dead-letter topic: the one set, or `<TOPIC>.dlq`.
    pub fn dead_letter_topic_or_default(&self) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.topic))
    }
}

impl FromStr for KafkaOptions {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self, Error> {
        parse::parse(url)
    }
}
