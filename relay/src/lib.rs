//! # oncely-relay
//!
//! The outbox relay: publishes the messages your transactions enqueued
//! ([`oncely_core::outbox`]) to a broker, in order per aggregate, and marks them sent once the
//! broker has confirmed them.
//!
//! A [`Relay`] joins an [`OutboxStore`] (the outbox table:
//! `oncely_postgres::outbox::PostgresOutboxStore`, `oncely_mysql::outbox::MySqlOutboxStore`,
//! `oncely_sqlite::outbox::SqliteOutboxStore`)
//! and a [`Publisher`] (`oncely_nats::NatsPublisher`, `oncely_rabbitmq::AmqpPublisher`) and
//! loops:
//!
//! 1. take a batch: the first unsent rows of some aggregates no other relay holds;
//! 2. publish them, each aggregate's rows one after the other (the next only once the broker
//!    confirmed the previous), the aggregates side by side; an aggregate stops at its first
//!    failed publish, so nothing of it goes out ahead of the failed row;
//! 3. mark the confirmed rows sent and let go of the aggregates;
//! 4. when there was nothing to take, wait a moment ([`Relay::poll_interval`]), or less if the
//!    store signals new rows ([`OutboxStore::enqueued`]: PostgreSQL's outbox wakes its relays
//!    with LISTEN/NOTIFY, so a row goes out within milliseconds of its commit); every so
//!    often, purge rows sent longer ago than the [retention](Relay::retention).
//!
//! Store and broker failures do not stop it: it reports them ([`Relay::on_error`]), backs off
//! (up to 5 s) and tries again. A row the broker refuses for itself (a
//! [permanent](BrokerError::is_permanent) error: too large, no such destination) is parked
//! after [`Relay::park_after`] refusals, and the rows after it in its aggregate wait or go on
//! ([`Relay::after_parked`]); an outage is never a refusal. It stops when the shutdown future completes, after finishing
//! the batch in hand, and answers a [`RelayReport`].
//!
//! **At least once, never lost.** A relay killed between the broker's confirm and the commit of
//! "sent" leaves the row unsent; the next relay publishes it again with the same message id
//! ([`oncely_core::outbox::message_id`]). JetStream drops that second copy within its duplicate
//! window; consumers dedup by message id otherwise (RabbitMQ keeps both copies).
//!
//! **Several relays at once.** Run as many as you like on one outbox: they take different
//! aggregates, so no row is published twice in the normal case and no aggregate's order is
//! broken; the store crate's docs explain how (PostgreSQL: an advisory lock per aggregate, held
//! by the relay's session; MySQL/MariaDB: a named lock per aggregate, held by the relay's
//! connection; SQLite: one lease per file with a fencing token, so one relay publishes at a time
//! and the others stand by).
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use oncely_postgres::outbox::{Outbox, OutboxMessage, PostgresOutbox, PostgresOutboxStore};
//! use oncely_relay::Relay;
//!
//! let url = "postgres://postgres@127.0.0.1/test";
//! let outbox_store = PostgresOutboxStore::connect(url).await?; // creates oncely_outbox
//!
//! // In your service: the event commits with the business writes, or not at all.
//! let pool = sqlx::PgPool::connect(url).await?;
//! let mut tx = pool.begin().await?;
//! let event = OutboxMessage::new("order-1001", br#"{"type":"OrderPlaced"}"#.to_vec());
//! Outbox::new().enqueue(&mut tx, &event).await?;
//! tx.commit().await?;
//!
//! // The relay, here or in another process (`oncely relay`).
//! let publisher = oncely_nats::NatsPublisher::connect("nats://127.0.0.1:4222/orders.events").await?;
//! let relay = Relay::new(outbox_store, publisher).batch(100).retention(Duration::from_secs(86_400));
//! let report = relay.run(async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! println!("published {}", report.published);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::join_all;
use oncely_core::consumer::{BrokerError, Message};
use oncely_core::outbox::{
    AfterParked, OutboxBatch, OutboxId, OutboxRow, OutboxStore, Publisher, Refused,
};
use oncely_core::trace::{Hop, TRACEPARENT};
use tracing::Instrument;
use tracing::field::Empty;

/// Rows per batch unless told otherwise.
pub const DEFAULT_BATCH: usize = 100;
/// How long sent rows are kept unless told otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// How long an idle relay waits before looking again, unless told otherwise.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How often sent rows are purged.
const PURGE_EVERY: Duration = Duration::from_secs(60);
/// Rows deleted per purge statement.
const PURGE_CHUNK: usize = 1000;
/// The broker's refusals of a row after which it is parked, unless told otherwise.
pub const DEFAULT_PARK_AFTER: u32 = 10;
/// The longest back-off after a failure.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What went wrong in a relay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The outbox table failed (unreachable, not migrated, ...).
    #[error(transparent)]
    Store(#[from] oncely_core::Error),
    /// The broker failed or refused a publish.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// What a relay did, from start to stop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayReport {
    /// Rows published and marked sent.
    pub published: u64,
    /// Publishes that failed (their rows stay unsent and are tried again).
    pub failed: u64,
    /// Rows published but not marked sent because marking failed (published again later).
    pub unmarked: u64,
    /// Rows parked: the broker refused them [`Relay::park_after`] times.
    pub parked: u64,
    /// Batches finished.
    pub batches: u64,
    /// Sent rows purged.
    pub purged: u64,
    /// How long it ran.
    pub elapsed: Duration,
}

impl std::fmt::Display for RelayReport {
    /// `published N, failed N, purged N in 12.3s` (and `unmarked N`, `parked N` when not
    /// zero).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "published {}, failed {}", self.published, self.failed)?;
        if self.unmarked > 0 {
            write!(f, ", unmarked {}", self.unmarked)?;
        }
        if self.parked > 0 {
            write!(f, ", parked {}", self.parked)?;
        }
        write!(
            f,
            ", purged {} in {:.1}s",
            self.purged,
            self.elapsed.as_secs_f64()
        )
    }
}

type ErrorSink = Arc<dyn Fn(&RelayError) + Send + Sync>;

/// Publishes an outbox to a broker. See the [crate docs](crate).
pub struct Relay<S, P> {
    store: S,
    publisher: P,
    batch: usize,
    retention: Duration,
    poll_interval: Duration,
    park_after: u32,
    after_parked: AfterParked,
    on_error: ErrorSink,
    progress: RelayProgress,
}

/// What a running [`Relay`] has done so far, readable while it runs (for metrics): a handle
/// from [`Relay::progress`]. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct RelayProgress(Arc<std::sync::Mutex<RelayReport>>);

impl RelayProgress {
    /// The counts so far (`elapsed` is zero until the relay stops).
    pub fn report(&self) -> RelayReport {
        self.0.lock().expect("never poisoned").clone()
    }

    fn set(&self, report: &RelayReport) {
        *self.0.lock().expect("never poisoned") = report.clone();
    }
}

/// Outbox rows, by what the relay did with them (`result`: `published`, `failed`, `unmarked`,
/// `parked`, `purged`): a counter of the [`metrics`](https://docs.rs/metrics) facade, like the others here.
pub const ROWS: &str = "oncely_relay_rows_total";
/// Each publish's duration in seconds, by `result` (`ok`, `error`).
pub const PUBLISH_SECONDS: &str = "oncely_relay_publish_seconds";
/// Rows waiting to be sent (see [`record_backlog`]).
pub const BACKLOG_ROWS: &str = "oncely_relay_backlog_rows";
/// How long the oldest unsent row has waited, in seconds (see [`record_backlog`]).
pub const OLDEST_UNSENT_SECONDS: &str = "oncely_relay_oldest_unsent_seconds";

/// Registers the relay's metrics' help text with the installed recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(ROWS, "Outbox rows, by what the relay did with them.");
    describe_histogram!(PUBLISH_SECONDS, Unit::Seconds, "Each publish's duration.");
    describe_gauge!(BACKLOG_ROWS, "Rows waiting to be sent.");
    describe_gauge!(
        OLDEST_UNSENT_SECONDS,
        Unit::Seconds,
        "How long the oldest unsent row has waited."
    );
}

/// Sets the backlog gauges from a count of the outbox ([`OutboxStore::backlog`]): a relay
/// does not count it itself (a count is a query), so whoever serves the metrics does, as
/// often as it likes.
pub fn record_backlog(backlog: oncely_core::outbox::Backlog) {
    metrics::gauge!(BACKLOG_ROWS).set(backlog.unsent as f64);
    metrics::gauge!(OLDEST_UNSENT_SECONDS).set(backlog.oldest.map_or(0.0, |age| age.as_secs_f64()));
}

fn rows(result: &'static str, n: u64) {
    metrics::counter!(ROWS, "result" => result).increment(n);
}

impl<S, P> std::fmt::Debug for Relay<S, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("batch", &self.batch)
            .field("retention", &self.retention)
            .field("poll_interval", &self.poll_interval)
            .field("park_after", &self.park_after)
            .field("after_parked", &self.after_parked)
            .finish_non_exhaustive()
    }
}

impl<S: OutboxStore, P: Publisher> Relay<S, P> {
    /// A relay from `store` to `publisher`, with [`DEFAULT_BATCH`], [`DEFAULT_RETENTION`] and
    /// [`DEFAULT_POLL_INTERVAL`]; errors go to `tracing` at `warn`.
    pub fn new(store: S, publisher: P) -> Self {
        Relay {
            store,
            publisher,
            batch: DEFAULT_BATCH,
            retention: DEFAULT_RETENTION,
            poll_interval: DEFAULT_POLL_INTERVAL,
            park_after: DEFAULT_PARK_AFTER,
            after_parked: AfterParked::Wait,
            on_error: Arc::new(|error| tracing::warn!(%error, "outbox relay")),
            progress: RelayProgress::default(),
        }
    }

    /// A handle on what this relay has done so far, to read while it runs.
    pub fn progress(&self) -> RelayProgress {
        self.progress.clone()
    }

    /// At most `n` rows per batch (at least 1). A batch is one store transaction held while its
    /// rows are published.
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }

    /// Sent rows are deleted once older than `retention`.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// How long to wait when there was nothing to publish.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Parks a row once the broker refused it `attempts` times (at least 1; default
    /// [`DEFAULT_PARK_AFTER`]): a refusal is a publish that failed with a
    /// [permanent](BrokerError::is_permanent) error (too large, no such destination). A
    /// failure that may pass (the broker down, a timeout) is never counted: the row waits for
    /// the broker. A parked row stays in the outbox with its error until `oncely outbox retry`
    /// or `drop` ([`OutboxStore::retry_parked`], [`OutboxStore::drop_parked`]).
    pub fn park_after(mut self, attempts: u32) -> Self {
        self.park_after = attempts.max(1);
        self
    }

    /// What happens to the rows of an aggregate after a parked one (default
    /// [`AfterParked::Wait`]: they wait, so the aggregate's order holds).
    pub fn after_parked(mut self, after_parked: AfterParked) -> Self {
        self.after_parked = after_parked;
        self
    }

    /// Called with every failure the relay rides out (it then backs off and tries again).
    pub fn on_error(mut self, sink: impl Fn(&RelayError) + Send + Sync + 'static) -> Self {
        self.on_error = Arc::new(sink);
        self
    }

    /// Relays until `shutdown` completes, then finishes the batch in hand and answers what it
    /// did. Fails only if the outbox's origin cannot be read at the start (the table is
    /// missing or unreachable); later failures are reported to [`on_error`](Self::on_error) and
    /// retried.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<RelayReport, RelayError> {
        let started = Instant::now();
        let origin = self.store.origin().await?;
        // Without a signal (or if listening fails) the relay polls, as it always does.
        let enqueued = match self.store.enqueued().await {
            Ok(enqueued) => enqueued,
            Err(e) => {
                (self.on_error)(&e.into());
                None
            }
        };
        let woken = async || match &enqueued {
            Some(enqueued) => enqueued.notified().await,
            None => std::future::pending().await,
        };
        let mut shutdown = Box::pin(shutdown.fuse());
        let mut report = RelayReport::default();
        let mut backoff = Duration::ZERO;
        let mut last_purge: Option<Instant> = None;
        loop {
            if (&mut shutdown).now_or_never().is_some() {
                break;
            }
            if last_purge.is_none_or(|at| at.elapsed() >= PURGE_EVERY) {
                last_purge = Some(Instant::now());
                match self.purge().await {
                    Ok(n) => {
                        report.purged += n;
                        rows("purged", n);
                    }
                    Err(e) => (self.on_error)(&e),
                }
            }
            let (wait, wake) = match self.step(&origin, &mut report).await {
                Ok(Step::Full) => {
                    backoff = Duration::ZERO;
                    self.progress.set(&report);
                    continue;
                }
                Ok(Step::Idle) => {
                    backoff = Duration::ZERO;
                    (self.poll_interval, true)
                }
                Err(e) => {
                    (self.on_error)(&e);
                    backoff = (backoff * 2).clamp(Duration::from_millis(50), MAX_BACKOFF);
                    (backoff, false)
                }
            };
            self.progress.set(&report);
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(wait) => {}
                // New rows end an idle wait; a back-off after a failure is waited out.
                _ = woken(), if wake => {}
            }
        }
        report.elapsed = started.elapsed();
        self.progress.set(&report);
        Ok(report)
    }

    /// Purges sent rows older than the retention, in bounded statements.
    async fn purge(&self) -> Result<u64, RelayError> {
        let mut purged = 0;
        loop {
            let n = self.store.purge(self.retention, PURGE_CHUNK).await?;
            purged += n;
            if n < PURGE_CHUNK as u64 {
                return Ok(purged);
            }
        }
    }

    /// One batch: take, publish, mark sent (and count the refused).
    async fn step(&self, origin: &str, report: &mut RelayReport) -> Result<Step, RelayError> {
        let Some(batch) = self.store.take(self.batch, self.after_parked).await? else {
            return Ok(Step::Idle);
        };
        let full = batch.rows().len() >= self.batch;
        let Published { sent, failed } =
            publish_in_order(&self.publisher, origin, batch.rows()).await;
        report.failed += failed.len() as u64;
        rows("failed", failed.len() as u64);
        let refused: Vec<Refused> = failed
            .iter()
            .filter(|(_, e)| e.is_permanent())
            .map(|(id, e)| Refused {
                id: *id,
                error: e.to_string(),
                park_after: self.park_after,
            })
            .collect();
        match batch.finish(&sent, &refused).await {
            Ok(parked) => {
                report.parked += parked;
                rows("parked", parked);
            }
            Err(e) => {
                report.unmarked += sent.len() as u64;
                rows("unmarked", sent.len() as u64);
                return Err(e.into());
            }
        }
        report.published += sent.len() as u64;
        rows("published", sent.len() as u64);
        report.batches += 1;
        match failed.into_iter().next() {
            Some((_, e)) => Err(e.into()),
            None if full => Ok(Step::Full),
            None => Ok(Step::Idle),
        }
    }
}

enum Step {
    /// The batch was full: there may be more at once.
    Full,
    /// Less than a batch: wait before looking again.
    Idle,
}

/// What [`publish_in_order`] did: the rows the broker confirmed, in id order, and for each
/// aggregate that stopped, its row that failed and the error.
#[derive(Debug, Default)]
pub struct Published {
    /// Confirmed by the broker.
    pub sent: Vec<OutboxId>,
    /// Not confirmed: one per aggregate that stopped there (its later rows were not tried).
    pub failed: Vec<(OutboxId, BrokerError)>,
}

/// Publishes `rows` (in id order): each aggregate's rows one after the other, stopping at its
/// first failure; the aggregates concurrently.
pub async fn publish_in_order<P: Publisher + ?Sized>(
    publisher: &P,
    origin: &str,
    rows: &[OutboxRow],
) -> Published {
    let mut by_aggregate: Vec<Vec<&OutboxRow>> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for row in rows {
        let at = *index.entry(&row.aggregate).or_insert_with(|| {
            by_aggregate.push(Vec::new());
            by_aggregate.len() - 1
        });
        by_aggregate[at].push(row);
    }
    let lanes = by_aggregate.into_iter().map(|lane| async move {
        let mut sent = Vec::with_capacity(lane.len());
        for row in lane {
            let (message, span) = traced_message(row, origin);
            let started = Instant::now();
            let published = publisher
                .publish(row.destination.as_deref(), &message)
                .instrument(span.clone())
                .await;
            let result = if published.is_ok() { "ok" } else { "error" };
            span.record("result", result);
            metrics::histogram!(PUBLISH_SECONDS, "result" => result)
                .record(started.elapsed().as_secs_f64());
            if let Err(e) = published {
                return (sent, Some((row.id, e)));
            }
            sent.push(row.id);
        }
        (sent, None)
    });
    let mut published = Published::default();
    for (ids, failure) in join_all(lanes).await {
        published.sent.extend(ids);
        published.failed.extend(failure);
    }
    published.sent.sort_unstable();
    published.failed.sort_unstable_by_key(|(id, _)| *id);
    published
}

/// The message of `row`, and its span, `oncely.publish` (info): a [`Hop`] of the trace the
/// row was written in (its `traceparent` header), so the message goes out with this publish as
/// its parent; a row without one goes out as it is.
fn traced_message(row: &OutboxRow, origin: &str) -> (Message, tracing::Span) {
    let caller = row
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(TRACEPARENT))
        .map(|(_, value)| value.as_str());
    let hop = Hop::after(caller);
    let mut message = row.message(origin);
    let span = tracing::info_span!("oncely.publish", otel.kind = "producer",
        aggregate = %row.aggregate, message_id = message.message_id(),
        destination = row.destination.as_deref(), result = Empty,
        trace_id = Empty, span_id = Empty, parent_span_id = Empty);
    hop.record(&span);
    if let Some(onward) = hop.onward() {
        message = message.with_header_set(TRACEPARENT, onward.to_string());
    }
    (message, span)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn the_report_is_one_line() {
        let report = RelayReport {
            published: 5,
            purged: 2,
            elapsed: Duration::from_millis(1500),
            ..Default::default()
        };
        assert_eq!(
            report.to_string(),
            "published 5, failed 0, purged 2 in 1.5s"
        );
    }
}
