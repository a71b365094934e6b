//! [`KafkaSource`], a consumer group member reading one topic, and its [`KafkaDelivery`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use oncely_core::async_trait;
use oncely_core::consumer::{BrokerError, DeadLetter, Delivery, Message, OffsetStore, Source};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Message as _, Offset, TopicPartitionList};
use tokio::sync::mpsc as async_mpsc;

use crate::client::{PRODUCE_TIMEOUT, SETUP_TIMEOUT, ensure_topic, idempotent_producer};
use crate::message::{kafka_headers, message_of};
use crate::options::Order;
use crate::partitions::{Handout, Partitions, Take};
use crate::{BROKER, Error, KafkaOptions};

/// How long the poll thread blocks in one poll.
const POLL: Duration = Duration::from_millis(50);

/// A consumer group member reading one topic, as a [`Source`] for the runner. See the
/// [crate docs](crate) for what it does with each settlement.
///
/// Dropping it commits what was settled and leaves the group (waiting up to a few seconds).
pub struct KafkaSource {
    shared: Arc<Shared>,
    errors: async_mpsc::UnboundedReceiver<BrokerError>,
    poller: Option<Poller>,
}

struct Poller {
    stop: Arc<AtomicBool>,
    done: mpsc::Receiver<()>,
}

/// What the poll thread and the deliveries share.
struct Shared {
    partitions: Partitions,
    producer: FutureProducer,
    options: KafkaOptions,
    dead_letter_topic: String,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl KafkaSource {
    /// Joins the group as `url` says (see the [crate docs](crate)), offsets committed to Kafka.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url.parse()?).await
    }

    /// Joins the group as `options` say, offsets committed to Kafka.
    pub async fn connect_with(options: KafkaOptions) -> Result<Self, Error> {
        Self::start(options, None).await
    }

    /// Joins the group as `options` say, each assigned partition started at the offset
    /// `offsets` has stored for it (your handler saves it with its effect; see the
    /// [crate docs](crate)). A partition with nothing stored starts at the group's committed
    /// offset, or at the beginning.
    pub async fn offsets(
        options: KafkaOptions,
        offsets: Arc<dyn OffsetStore>,
    ) -> Result<Self, Error> {
        Self::start(options, Some(offsets)).await
    }

    async fn start(
        options: KafkaOptions,
        offsets: Option<Arc<dyn OffsetStore>>,
    ) -> Result<Self, Error> {
        let dead_letter_topic = match options.dead_letters {
            true => options.dead_letter_topic_or_default(),
            false => String::new(),
        };
        if dead_letter_topic == options.topic {
            return Err(Error::DeadLettersLoop {
                topic: dead_letter_topic,
            });
        }
        ensure_topic(&options.cluster, &options.topic, None).await?;
        if options.dead_letters {
            let create = options.create_dead_letter_topic.then_some(1);
            ensure_topic(&options.cluster, &dead_letter_topic, create).await?;
        }
        let producer = idempotent_producer(&options.cluster)?;
        // A stored offset means "everything before it is done": one message per partition.
        let order = match offsets {
            Some(_) => Order::Partition,
            None => options.order,
        };
        let shared = Arc::new(Shared {
            partitions: Partitions::new(order),
            producer,
            options,
            dead_letter_topic,
        });
        let context = GroupContext {
            shared: shared.clone(),
            offsets,
            runtime: tokio::runtime::Handle::current(),
        };
        let o = &shared.options;
        let consumer: BaseConsumer<GroupContext> = o
            .cluster
            .client_config()
            .set("group.id", &o.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set(
                "session.timeout.ms",
                o.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (o.session_timeout.as_millis() / 3).max(1).to_string(),
            )
            .create_with_context(context)
            .map_err(|e| Error::Client(e.into()))?;
        consumer
            .subscribe(&[&o.topic])
            .map_err(|e| Error::Client(e.into()))?;
        let (errors_tx, errors) = async_mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = mpsc::channel();
        let thread_stop = stop.clone();
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("oncely-kafka-{}", o.topic))
            .spawn(move || {
                poll(&consumer, &thread_shared, &thread_stop, &errors_tx);
                // Leaving the group revokes what is held: the context commits it first.
                drop(consumer);
                thread_shared.partitions.close();
                let _ = done_tx.send(());
            })
            .map_err(|e| Error::Client(e.into()))?;
        Ok(KafkaSource {
            shared,
            errors,
            poller: Some(Poller { stop, done }),
        })
    }

    /// The options it was started with.
    pub fn options(&self) -> &KafkaOptions {
        &self.shared.options
    }

    /// The dead-letter topic.
    pub fn dead_letter_topic(&self) -> &str {
        &self.shared.dead_letter_topic
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        if let Some(poller) = self.poller.take() {
            poller.stop.store(true, Ordering::SeqCst);
            // Bounded: a broker that is gone must not hang the caller.
            let _ = poller.done.recv_timeout(Duration::from_secs(10));
        }
    }
}

/// The poll thread: fetches into the partitions, pauses and resumes them, commits.
fn poll(
    consumer: &BaseConsumer<GroupContext>,
    shared: &Shared,
    stop: &AtomicBool,
    errors: &async_mpsc::UnboundedSender<BrokerError>,
) {
    let topic = shared.options.topic.as_str();
    let mut last_commit = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        match consumer.poll(POLL) {
            None => {}
            Some(Ok(fetched)) => {
                let message = message_of(&fetched, &shared.options.group);
                let (partition, offset) = (fetched.partition(), fetched.offset());
                if shared.partitions.push(partition, offset, message)
                    && let Err(error) = consumer.pause(&one_partition(topic, partition))
                {
                    tracing::warn!(%error, partition, "could not pause a full partition");
                }
            }
            Some(Err(error)) => {
                tracing::warn!(%error, topic, "Kafka consumer error");
                if fatal(&error) {
                    let _ = errors.send(BrokerError::new(BROKER, "receive", error));
                }
            }
        }
        for p in shared.partitions.to_resume() {
            if let Err(error) = consumer.resume(&one_partition(topic, p)) {
                tracing::warn!(%error, partition = p, "could not resume a partition");
            }
        }
        if last_commit.elapsed() >= shared.options.commit_interval {
            commit(
                consumer,
                shared,
                shared.partitions.to_commit(),
                CommitMode::Async,
            );
            last_commit = Instant::now();
        }
    }
    commit(
        consumer,
        shared,
        shared.partitions.to_commit(),
        CommitMode::Sync,
    );
}

fn fatal(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Fatal
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
        )
    )
}

fn one_partition(topic: &str, partition: i32) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    tpl
}

/// Commits `offsets` (`(partition, next offset)`); a failed commit puts them back to be tried
/// again. An asynchronous commit's outcome arrives in [`GroupContext::commit_callback`].
fn commit<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    shared: &Shared,
    offsets: Vec<(i32, i64)>,
    mode: CommitMode,
) {
    if offsets.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for &(partition, offset) in &offsets {
        let _ = tpl.add_partition_offset(&shared.options.topic, partition, Offset::Offset(offset));
    }
    if let Err(error) = consumer.commit(&tpl, mode) {
        tracing::warn!(%error, ?offsets, "offset commit failed; tried again later");
        shared.partitions.uncommitted(&offsets);
    }
}

/// The group member's callbacks, run on the poll thread.
struct GroupContext {
    shared: Arc<Shared>,
    offsets: Option<Arc<dyn OffsetStore>>,
    runtime: tokio::runtime::Handle,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let topic = self.shared.options.topic.clone();
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let outcome = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let stored = self.start_at_stored_offsets(tpl, &topic);
                self.shared.partitions.assign(&partitions);
                for (partition, offset) in stored {
                    self.shared.partitions.started_at(partition, offset);
                }
                tracing::debug!(?partitions, "partitions assigned");
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                // librdkafka keeps a partition paused by the application across a revocation
                // and a new assignment; its queue here starts empty and unpaused.
                assigned.and_then(|()| consumer.resume(tpl))
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked = self
                    .shared
                    .partitions
                    .revoke(&partitions, self.shared.options.revoke_wait);
                if !revoked.released.is_empty() {
                    tracing::warn!(released = ?revoked.released,
                        "messages still in flight when their partitions were revoked; \
                         their next owner reads them again");
                }
                if !consumer.assignment_lost() {
                    commit(consumer, &self.shared, revoked.to_commit, CommitMode::Sync);
                }
                tracing::debug!(?partitions, "partitions revoked");
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed; giving up the assignment");
                let held = self.shared.partitions.held();
                self.shared.partitions.revoke(&held, Duration::ZERO);
                consumer.unassign()
            }
        };
        if let Err(error) = outcome {
            tracing::error!(%error, "applying a rebalance failed");
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        if let Err(error) = result {
            let failed: Vec<(i32, i64)> = offsets
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect();
            tracing::warn!(%error, ?failed, "offset commit failed; tried again later");
            self.shared.partitions.uncommitted(&failed);
        }
    }
}

impl GroupContext {
    /// Sets each assigned partition's start to the offset the store holds for it, if any, and
    /// answers those set.
    fn start_at_stored_offsets(
        &self,
        tpl: &mut TopicPartitionList,
        topic: &str,
    ) -> Vec<(i32, i64)> {
        let mut started = Vec::new();
        let Some(store) = self.offsets.clone() else {
            return started;
        };
        let (group, owned_topic) = (self.shared.options.group.clone(), topic.to_owned());
        // Run on the caller's runtime; this thread waits (it is not one of the runtime's).
        let (tx, rx) = mpsc::channel();
        self.runtime.spawn(async move {
            let _ = tx.send(store.load(&group, &owned_topic).await);
        });
        match rx.recv_timeout(SETUP_TIMEOUT) {
            Ok(Ok(stored)) => {
                for (partition, offset) in stored {
                    if tpl.find_partition(topic, partition).is_none() {
                        continue;
                    }
                    match tpl.set_partition_offset(topic, partition, Offset::Offset(offset)) {
                        Ok(()) => started.push((partition, offset)),
                        Err(error) => tracing::warn!(%error, partition,
                            "could not start at the stored offset"),
                    }
                }
            }
            Ok(Err(error)) => tracing::error!(%error,
                "reading the stored offsets failed; starting at the group's committed offsets \
                 (the dedup records answer what comes again)"),
            Err(_) => tracing::error!(
                "reading the stored offsets timed out; starting at the group's committed offsets"
            ),
        }
        started
    }
}

#[async_trait]
impl Source for KafkaSource {
    type Delivery = KafkaDelivery;

    async fn next(&mut self) -> Option<Result<KafkaDelivery, BrokerError>> {
        loop {
            if let Ok(error) = self.errors.try_recv() {
                return Some(Err(error));
            }
            let ready = self.shared.partitions.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            let wake = match self.shared.partitions.take(Instant::now()) {
                Take::Ready(handout) => {
                    return Some(Ok(KafkaDelivery {
                        shared: self.shared.clone(),
                        handout,
                    }));
                }
                Take::Closed => return None,
                Take::Wait(wake) => wake,
            };
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = ready => {}
                _ = sleep => {}
                error = self.errors.recv() => if let Some(error) = error {
                    return Some(Err(error));
                },
            }
        }
    }
}

/// One message from a [`KafkaSource`] and how to settle it.
pub struct KafkaDelivery {
    shared: Arc<Shared>,
    handout: Handout,
}

impl std::fmt::Debug for KafkaDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaDelivery")
            .field("partition", &self.handout.partition)
            .field("offset", &self.handout.offset)
            .finish_non_exhaustive()
    }
}

impl KafkaDelivery {
    /// The partition it came from.
    pub fn partition(&self) -> i32 {
        self.handout.partition
    }

    /// Its offset in the partition.
    pub fn offset(&self) -> i64 {
        self.handout.offset
    }
}

#[async_trait]
impl Delivery for KafkaDelivery {
    fn message(&self) -> &Message {
        &self.handout.message
    }

    async fn ack(&self) -> Result<(), BrokerError> {
        let h = &self.handout;
        if self
            .shared
            .partitions
            .ack(h.partition, h.generation, h.offset)
        {
            Ok(())
        } else {
            Err(BrokerError::new(
                BROKER,
                format!("commit offset {} of partition {}", h.offset, h.partition),
                "the partition was revoked before the message settled; its next owner reads it \
                 again",
            ))
        }
    }

    async fn redeliver(&self, after: Duration) -> Result<(), BrokerError> {
        // A partition revoked meanwhile: its next owner delivers the message again anyway.
        self.shared.partitions.give_back(&self.handout, after);
        Ok(())
    }

    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), BrokerError> {
        if self.shared.dead_letter_topic.is_empty() {
            return Err(BrokerError::no_dead_letters(BROKER));
        }
        let message = &self.handout.message;
        let extra = letter.headers();
        let headers = kafka_headers(message, extra.iter().map(|(n, v)| (*n, v.as_str())));
        let topic = &self.shared.dead_letter_topic;
        let mut record = FutureRecord::<str, [u8]>::to(topic)
            .payload(message.payload())
            .headers(headers);
        if let Some(key) = message.ordering_key() {
            record = record.key(key);
        }
        self.shared
            .producer
            .send(record, PRODUCE_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|(error, _)| BrokerError::new(BROKER, format!("produce to {topic}"), error))
    }
}
