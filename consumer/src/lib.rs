//! The consumer runner: takes deliveries from any broker and settles each by the consumer
//! contract ([`oncely_core::consumer`]).
//!
//! A broker crate (`oncely-nats`, `oncely-rabbitmq`) turns its client's stream into a
//! [`Source`]; you supply a [`Handler`] and where the key comes from ([`KeySource`]); the
//! [`Consumer`] does the rest:
//!
//! - up to [`concurrency`](Consumer::concurrency) deliveries in flight at once;
//! - per delivery: key, handler, then exactly one settlement (ack, redeliver, or dead-letter
//!   then ack), following the contract's rules;
//! - one delivery per key at a time: a second copy of a key waits for the first to settle,
//!   then is answered from the store at once, instead of being handed back to the broker as
//!   "in progress" for the rest of a lease; a key in progress in *another* consumer is looked
//!   at again after [`in_progress_recheck`](Consumer::in_progress_recheck);
//! - failed attempts retried in place with exponential backoff ([`RetryPolicy`]), telling the
//!   broker the message is still in progress so it does not redeliver it meanwhile;
//! - graceful shutdown: when `shutdown` resolves, no new delivery is taken; handlers already
//!   running finish and settle; a delivery waiting to retry is given back to the broker at once.
//!   Nothing is held when [`Consumer::run`] returns.
//!
//! ```no_run
//! # async fn example(source: impl oncely_core::consumer::Source) -> Result<(), Box<dyn std::error::Error>> {
//! use oncely_consumer::Consumer;
//! use oncely_core::consumer::{Message, OncelyHandler};
//! use oncely_core::{Key, Oncely, Scope};
//! # let store = std::sync::Arc::new(oncely_memory::MemoryStore::default());
//!
//! let handler = OncelyHandler::new(Oncely::new(store), Scope::new("emails")?, |key: Key, _: Message| async move {
//!     println!("sending the welcome email for {key}");
//!     Ok::<_, std::io::Error>(Vec::new())
//! });
//! let consumer = Consumer::new(handler, "/userId".parse()?).concurrency(16);
//! let shutdown = async { /* e.g. tokio::signal::ctrl_c() */ };
//! let report = consumer.run(source, shutdown).await?;
//! println!("{report:?}");
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod gate;
pub mod redrive;
pub mod service;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use oncely_core::Key;
pub use oncely_core::consumer::{
    BrokerError, DeadLetter, Delivery, Handled, Handler, HandlerError, KeySource, Message,
    RetryPolicy, Settled, Source,
};
use oncely_core::panic::catch_unwind;
use oncely_core::trace::{Hop, SpanKeys, TRACEPARENT, TraceParent};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;
use tracing::field::Empty;

/// The longest [`Consumer::run`] waits before receiving again after a failed receive: the
/// waits double from 100 ms up to this, each jittered.
pub const MAX_RECEIVE_BACKOFF: Duration = Duration::from_secs(30);

/// The wait after the `failures`-th failed receive in a row: 100 ms doubling up to
/// [`MAX_RECEIVE_BACKOFF`], then a random point in its upper half, so that consumers that lost
/// the broker together do not all come back in the same instant.
fn receive_backoff(failures: u32) -> Duration {
    let ceiling = (Duration::from_millis(100) * 2u32.saturating_pow(failures.saturating_sub(1)))
        .min(MAX_RECEIVE_BACKOFF);
    let half = ceiling / 2;
    half + half.mul_f64(jitter())
}

/// A number in [0, 1), different in each process and call (no dependency for one random
/// number: the standard library's randomly keyed hasher).
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_nanos() as u64),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs a [`Handler`] over a broker's deliveries. Cheap to clone; clones share counters.
pub struct Consumer<H> {
    inner: Arc<Inner<H>>,
}

impl<H> Clone for Consumer<H> {
    fn clone(&self) -> Self {
        Consumer {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<H> {
    handler: H,
    keys: KeySource,
    retry: RetryPolicy,
    concurrency: usize,
    unavailable_backoff: Duration,
    in_progress_recheck: Duration,
    progress_every: Duration,
    span_keys: SpanKeys,
    gate: gate::KeyGate,
    counts: Counts,
}

#[derive(Default)]
struct Counts {
    done: AtomicU64,
    duplicates: AtomicU64,
    stale: AtomicU64,
    redelivered: AtomicU64,
    dead_lettered: AtomicU64,
    unsettled: AtomicU64,
}

/// How many deliveries a consumer settled, and how.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Handled and acked.
    pub done: u64,
    /// Duplicates acked without handling.
    pub duplicates: u64,
    /// Acked without handling: older than a version of their entity already applied.
    pub stale: u64,
    /// Given back to the broker.
    pub redelivered: u64,
    /// Dead-lettered, then acked.
    pub dead_lettered: u64,
    /// Left to the broker's own redelivery because settling failed.
    pub unsettled: u64,
}

/// Deliveries settled, by `settlement` (`done`, `duplicate`, `stale`, `given_back`, `dead_lettered`,
/// `unsettled`): a counter of the [`metrics`](https://docs.rs/metrics) facade.
pub const DELIVERIES: &str = "oncely_consumer_deliveries_total";
/// Each handler call's duration in seconds, by `result`: what it answered (`done`,
/// `duplicate`, `stale`, `in_progress`), `error`, or `panic`.
pub const HANDLER_SECONDS: &str = "oncely_consumer_handler_seconds";

/// Registers the consumer's metrics' help text with the installed recorder.
pub fn describe() {
    metrics::describe_counter!(DELIVERIES, "Deliveries settled, by how.");
    metrics::describe_histogram!(
        HANDLER_SECONDS,
        metrics::Unit::Seconds,
        "Each handler call's duration, by result."
    );
}

impl<H: Handler> Consumer<H> {
    /// A consumer running `handler` on each message's key from `keys`, one delivery at a
    /// time, with the default [`RetryPolicy`].
    pub fn new(handler: H, keys: KeySource) -> Self {
        Consumer {
            inner: Arc::new(Inner {
                handler,
                keys,
                retry: RetryPolicy::default(),
                concurrency: 1,
                unavailable_backoff: Duration::from_secs(1),
                in_progress_recheck: Duration::from_secs(1),
                progress_every: Duration::from_secs(10),
                span_keys: SpanKeys::Plain,
                gate: gate::KeyGate::default(),
                counts: Counts::default(),
            }),
        }
    }

    fn configure(mut self, f: impl FnOnce(&mut Inner<H>)) -> Self {
        f(Arc::get_mut(&mut self.inner).expect("configured before it is cloned"));
        self
    }

    /// Deliveries handled at once (at least 1). Order per key holds only at 1, or where the
    /// broker never has two messages of one key in flight.
    pub fn concurrency(self, n: usize) -> Self {
        self.configure(|c| c.concurrency = n.max(1))
    }

    /// Attempts and backoff for failing handlers.
    pub fn retry(self, policy: RetryPolicy) -> Self {
        self.configure(|c| c.retry = policy.with_max_attempts(policy.max_attempts.max(1)))
    }

    /// How long a message waits before redelivery when the handler reports its store
    /// unavailable (1 s by default).
    pub fn unavailable_backoff(self, wait: Duration) -> Self {
        self.configure(|c| c.unavailable_backoff = wait)
    }

    /// How soon a message whose key is in progress in another consumer comes back to look
    /// again (1 s by default; never later than the holder's lease ends). Deliveries of one key
    /// within this consumer do not need it: they wait for each other here.
    pub fn in_progress_recheck(self, wait: Duration) -> Self {
        self.configure(|c| c.in_progress_recheck = wait)
    }

    /// How the delivery span names a message's key: as it is (the default) or hashed (see
    /// [`SpanKeys`]); give it the same as the handler's [`Oncely`](oncely_core::Oncely).
    pub fn span_keys(self, span_keys: SpanKeys) -> Self {
        self.configure(|c| c.span_keys = span_keys)
    }

    /// How often a running handler's message is reported in progress to the broker (10 s by
    /// default; keep it well under the broker's ack timeout).
    pub fn progress_every(self, every: Duration) -> Self {
        self.configure(|c| c.progress_every = every.max(Duration::from_millis(1)))
    }

    /// What this consumer (and its clones) settled so far.
    pub fn report(&self) -> Report {
        let c = &self.inner.counts;
        Report {
            done: c.done.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            stale: c.stale.load(Ordering::Relaxed),
            redelivered: c.redelivered.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            unsettled: c.unsettled.load(Ordering::Relaxed),
        }
    }

    /// Takes deliveries from `source` until it ends or `shutdown` resolves, then waits for the
    /// deliveries in flight to settle. Returns what was settled by this call.
    ///
    /// A failed receive is logged and tried again after a backoff (see [`MAX_RECEIVE_BACKOFF`]),
    /// for as long as it takes: a broker restarting or out of reach for minutes stops nothing.
    /// Fails only on a [`permanent`](BrokerError::permanent) error of the source (a queue that
    /// does not exist, credentials refused); what was in flight is settled first.
    pub async fn run<S: Source>(
        &self,
        mut source: S,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Report, BrokerError> {
        let mut report = Report::default();
        let (stop, stopping) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut receive_errors = 0;
        let mut failure = None;
        // After a failed receive, the next waits for this; settlements and the shutdown don't.
        let pause = tokio::time::sleep(Duration::ZERO);
        let mut paused = false;
        tokio::pin!(shutdown, pause);
        loop {
            // At capacity, only a settled delivery or the shutdown wakes the loop: the shutdown
            // must not wait for a handler slot (a delivery may be waiting out a long backoff).
            let room = tasks.len() < self.inner.concurrency && !paused;
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                joined = tasks.join_next(), if !tasks.is_empty() => self.joined(joined, &mut report),
                _ = &mut pause, if paused => paused = false,
                next = source.next(), if room => match next {
                    None => break,
                    Some(Ok(delivery)) => {
                        receive_errors = 0;
                        let (this, stopping) = (self.clone(), stopping.clone());
                        tasks.spawn(async move { this.settle(&delivery, stopping).await });
                    }
                    Some(Err(error)) if error.is_permanent() => {
                        tracing::error!(%error, "receiving failed for good; stopping");
                        failure = Some(error);
                        break;
                    }
                    Some(Err(error)) => {
                        receive_errors += 1;
                        let wait = receive_backoff(receive_errors);
                        tracing::warn!(%error, receive_errors, ?wait, "receiving failed; will try again");
                        pause.as_mut().reset(tokio::time::Instant::now() + wait);
                        paused = true;
                    }
                },
            }
        }
        let _ = stop.send(true);
        while let Some(joined) = tasks.join_next().await {
            self.joined(Some(joined), &mut report);
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(report),
        }
    }

    /// Counts a finished delivery task in this run's `report` (clones running at the same time
    /// share the consumer's counters, so the run counts its own).
    fn joined(&self, joined: Option<Result<Settled, tokio::task::JoinError>>, report: &mut Report) {
        let settled = match joined {
            None => return,
            Some(Ok(settled)) => settled,
            Some(Err(error)) => {
                // `settle` catches the handler's panics; this is a bug in a broker's settlement.
                tracing::error!(%error, "a delivery's task failed; the broker will redeliver it");
                self.inner.counts.unsettled.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(DELIVERIES, "settlement" => Settled::Unsettled.label())
                    .increment(1);
                Settled::Unsettled
            }
        };
        let counter = match settled {
            Settled::Done => &mut report.done,
            Settled::Duplicate => &mut report.duplicates,
            Settled::Stale => &mut report.stale,
            Settled::Redelivered => &mut report.redelivered,
            Settled::DeadLettered => &mut report.dead_lettered,
            Settled::Unsettled => &mut report.unsettled,
        };
        *counter += 1;
    }

    /// Settles one delivery by the contract and counts it. `stopping` turning true cuts a
    /// retry's backoff short: the delivery is given back at once.
    ///
    /// Its span, `oncely.delivery` (info), is a [`Hop`] of the message's trace (its
    /// `traceparent` header), with the source, the key and how it was settled; the handler
    /// runs inside it and finds the trace to send on in [`current_trace`].
    pub async fn settle<D: Delivery>(
        &self,
        delivery: &D,
        mut stopping: watch::Receiver<bool>,
    ) -> Settled {
        let message = delivery.message();
        let hop = Hop::after(message.header(TRACEPARENT));
        let span = tracing::info_span!(
            "oncely.delivery",
            otel.kind = "consumer",
            source = message.source(),
            key = Empty,
            settled = Empty,
            trace_id = Empty,
            span_id = Empty,
            parent_span_id = Empty
        );
        hop.record(&span);
        let settled = TRACE
            .scope(
                hop.onward(),
                self.decide_and_settle(delivery, &mut stopping),
            )
            .instrument(span.clone())
            .await;
        span.record("settled", settled.label());
        let c = &self.inner.counts;
        let counter = match settled {
            Settled::Done => &c.done,
            Settled::Duplicate => &c.duplicates,
            Settled::Stale => &c.stale,
            Settled::Redelivered => &c.redelivered,
            Settled::DeadLettered => &c.dead_lettered,
            Settled::Unsettled => &c.unsettled,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(DELIVERIES, "settlement" => settled.label()).increment(1);
        settled
    }

    async fn decide_and_settle<D: Delivery>(
        &self,
        delivery: &D,
        stopping: &mut watch::Receiver<bool>,
    ) -> Settled {
        let inner = &*self.inner;
        let message = delivery.message();
        let key = match inner.keys.key_of(message) {
            Ok(key) => {
                tracing::Span::current()
                    .record("key", tracing::field::display(inner.span_keys.show(&key)));
                key
            }
            Err(error) => {
                let error = format!("no key by `{}`: {error}", inner.keys);
                return dead_letter(delivery, None, error, 0, inner.unavailable_backoff).await;
            }
        };
        // Another delivery of this key in this consumer settles first (see `gate`).
        let _held = tokio::select! {
            held = self.keep_alive(delivery, inner.gate.enter(&key)) => held,
            _ = stopped(stopping) => {
                return redeliver(delivery, Duration::ZERO).await;
            }
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match self.attempt(delivery, &key).await {
                Ok(Handled::Done) => return ack(delivery, Settled::Done).await,
                Ok(Handled::Duplicate) => return ack(delivery, Settled::Duplicate).await,
                Ok(Handled::Stale { .. }) => return ack(delivery, Settled::Stale).await,
                Ok(Handled::InProgress { retry_after }) => {
                    // Held elsewhere: back soon to look again, not only when the lease ends (the
                    // holder usually finishes long before).
                    let after = retry_after.min(inner.in_progress_recheck);
                    return redeliver(delivery, after).await;
                }
                Err(HandlerError::Unavailable(error)) => {
                    tracing::warn!(%key, %error, "store unavailable; message given back");
                    return redeliver(delivery, inner.unavailable_backoff).await;
                }
                Err(HandlerError::Rejected(error)) => {
                    let error = error.to_string();
                    let wait = inner.unavailable_backoff;
                    return dead_letter(delivery, Some(key), error, attempt, wait).await;
                }
                Err(HandlerError::Failed(error)) => error.to_string(),
            };
            if attempt >= inner.retry.max_attempts {
                let wait = inner.unavailable_backoff;
                return dead_letter(delivery, Some(key), error, attempt, wait).await;
            }
            tracing::debug!(%key, attempt, %error, "handler failed; retrying");
            let backoff = inner.retry.backoff_after(attempt);
            if *stopping.borrow() {
                return redeliver(delivery, Duration::ZERO).await;
            }
            tokio::select! {
                _ = stopping.changed() => return redeliver(delivery, Duration::ZERO).await,
                _ = self.keep_alive(delivery, tokio::time::sleep(backoff)) => {}
            }
        }
    }

    /// One call of the handler, its panic turned into a failure, with the message kept alive
    /// at the broker while it runs.
    async fn attempt<D: Delivery>(&self, delivery: &D, key: &Key) -> Result<Handled, HandlerError> {
        let started = std::time::Instant::now();
        let handled = catch_unwind(self.inner.handler.handle(key, delivery.message()));
        let handled = self.keep_alive(delivery, handled).await;
        let result = match &handled {
            Ok(Ok(Handled::Done)) => "done",
            Ok(Ok(Handled::Duplicate)) => "duplicate",
            Ok(Ok(Handled::Stale { .. })) => "stale",
            Ok(Ok(Handled::InProgress { .. })) => "in_progress",
            Ok(Err(_)) => "error",
            Err(_) => "panic",
        };
        metrics::histogram!(HANDLER_SECONDS, "result" => result)
            .record(started.elapsed().as_secs_f64());
        match handled {
            Ok(result) => result,
            Err(panic) => Err(HandlerError::failed(format!("handler panicked: {panic}"))),
        }
    }

    async fn keep_alive<D: Delivery, T>(&self, delivery: &D, work: impl Future<Output = T>) -> T {
        tokio::pin!(work);
        let mut ticks = tokio::time::interval(self.inner.progress_every);
        ticks.tick().await;
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = ticks.tick() => {
                    if let Err(error) = delivery.in_progress().await {
                        tracing::warn!(%error, "could not report progress");
                    }
                }
            }
        }
    }
}

impl<H> std::fmt::Debug for Consumer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("keys", &self.inner.keys)
            .field("retry", &self.inner.retry)
            .field("concurrency", &self.inner.concurrency)
            .finish_non_exhaustive()
    }
}

/// Resolves when `stopping` turns true; never, if its sender is gone without saying so.
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    if stopping.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn ack<D: Delivery>(delivery: &D, settled: Settled) -> Settled {
    match delivery.ack().await {
        Ok(()) => settled,
        Err(error) => {
            // The effect is committed; the redelivery will be answered as a duplicate.
            tracing::warn!(%error, "ack failed; the broker will redeliver a duplicate");
            Settled::Unsettled
        }
    }
}

async fn redeliver<D: Delivery>(delivery: &D, after: Duration) -> Settled {
    match delivery.redeliver(after).await {
        Ok(()) => Settled::Redelivered,
        Err(error) => {
            tracing::warn!(%error, "redelivery request failed; left to the broker");
            Settled::Unsettled
        }
    }
}

/// Publishes the dead letter, then acks the original; if the publish fails, the original goes
/// back to the broker instead, so nothing is lost.
async fn dead_letter<D: Delivery>(
    delivery: &D,
    key: Option<Key>,
    error: String,
    attempts: u32,
    on_failure: Duration,
) -> Settled {
    let letter = DeadLetter {
        error,
        attempts,
        key,
        source: delivery.message().source().to_owned(),
        id: DeadLetter::new_id(),
    };
    tracing::warn!(key = ?letter.key, attempts, error = %letter.error, "dead-lettering");
    match delivery.dead_letter(&letter).await {
        Ok(()) => ack(delivery, Settled::DeadLettered).await,
        Err(error) => {
            tracing::warn!(%error, "dead-letter publish failed; message given back");
            redeliver(delivery, on_failure).await
        }
    }
}

tokio::task_local! {
    /// The trace the delivery being handled sends on (see [`current_trace`]).
    static TRACE: Option<TraceParent>;
}

/// Within a handler that [`Consumer`] runs, the `traceparent` to send on with the calls it
/// makes for the message: the message's trace, with the delivery's span as the parent. `None`
/// when the message came without a (well-formed) `traceparent`, or outside a delivery. Like any
/// task-local value, it is not seen by a task the handler spawns: read it first.
///
/// ```
/// # async fn call_downstream(_: Option<String>) {}
/// // In a handler: pass the trace on to the service it calls.
/// let traceparent = oncely_consumer::current_trace().map(|t| t.to_string());
/// # let _ = call_downstream(traceparent);
/// ```
pub fn current_trace() -> Option<TraceParent> {
    TRACE.try_with(|trace| *trace).ok().flatten()
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use oncely_core::async_trait;

    use super::*;

    /// A source that plays a script: deliveries, errors, then its end.
    struct Scripted(VecDeque<Result<&'static str, BrokerError>>);

    struct Acked {
        message: Message,
        acks: Arc<Mutex<Vec<String>>>,
    }

    #[async_trait]
    impl Delivery for Acked {
        fn message(&self) -> &Message {
            &self.message
        }
        async fn ack(&self) -> Result<(), BrokerError> {
            let id = self.message.message_id().unwrap_or_default().to_owned();
            self.acks.lock().unwrap().push(id);
            Ok(())
        }
        async fn redeliver(&self, _: Duration) -> Result<(), BrokerError> {
            Ok(())
        }
        async fn dead_letter(&self, _: &DeadLetter) -> Result<(), BrokerError> {
            Ok(())
        }
    }

    struct Playing {
        script: Scripted,
        acks: Arc<Mutex<Vec<String>>>,
    }

    #[async_trait]
    impl Source for Playing {
        type Delivery = Acked;
        async fn next(&mut self) -> Option<Result<Acked, BrokerError>> {
            let next = self.script.0.pop_front()?;
            Some(next.map(|id| Acked {
                message: Message::new(Vec::new(), "q").with_message_id(id),
                acks: self.acks.clone(),
            }))
        }
    }

    struct Done;

    #[async_trait]
    impl Handler for Done {
        async fn handle(&self, _: &Key, _: &Message) -> Result<Handled, HandlerError> {
            Ok(Handled::Done)
        }
    }

    fn lost() -> Result<&'static str, BrokerError> {
        Err(BrokerError::new("test", "receive", "connection reset"))
    }

    fn play(script: Vec<Result<&'static str, BrokerError>>) -> (Playing, Arc<Mutex<Vec<String>>>) {
        let acks = Arc::new(Mutex::new(Vec::new()));
        let source = Playing {
            script: Scripted(script.into()),
            acks: acks.clone(),
        };
        (source, acks)
    }

    #[tokio::test(start_paused = true)]
    async fn failed_receives_are_retried_for_as_long_as_they_fail() {
        // Forty in a row: at the 30 s cap, about ten minutes of a broker out of reach.
        let mut script = vec![Ok("a")];
        script.extend((0..40).map(|_| lost()));
        script.push(Ok("b"));
        let (source, acks) = play(script);
        let started = tokio::time::Instant::now();
        let consumer = Consumer::new(Done, KeySource::MessageId);
        let report = consumer.run(source, std::future::pending()).await.unwrap();
        assert_eq!(report.done, 2);
        assert_eq!(*acks.lock().unwrap(), ["a", "b"]);
        let waited = started.elapsed();
        assert!(
            waited > Duration::from_secs(8 * 60) && waited < Duration::from_secs(21 * 60),
            "waited {waited:?} in all"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_ends_the_run_after_what_was_received() {
        let gone = BrokerError::permanent("test", "consuming queue q", "NOT_FOUND");
        let (source, acks) = play(vec![Ok("a"), lost(), Err(gone), Ok("never")]);
        let consumer = Consumer::new(Done, KeySource::MessageId);
        let error = consumer
            .run(source, std::future::pending())
            .await
            .unwrap_err();
        assert!(error.is_permanent());
        assert_eq!(error.to_string(), "test: consuming queue q: NOT_FOUND");
        assert_eq!(*acks.lock().unwrap(), ["a"]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_shutdown_does_not_wait_out_a_backoff() {
        let mut script: Vec<_> = (0..20).map(|_| lost()).collect();
        script.push(Ok("late"));
        let (source, acks) = play(script);
        let consumer = Consumer::new(Done, KeySource::MessageId);
        // By 60 s the waits are at 30 s each; the shutdown comes in the middle of one.
        let shutdown = tokio::time::sleep(Duration::from_secs(75));
        let started = tokio::time::Instant::now();
        consumer.run(source, shutdown).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(76));
        assert!(acks.lock().unwrap().is_empty());
    }

    #[test]
    fn receive_backoff_doubles_to_its_cap_with_jitter_in_the_upper_half() {
        for (failures, ceiling) in [(1, 100), (2, 200), (4, 800), (9, 25_600), (10, 30_000)] {
            let ceiling = Duration::from_millis(ceiling);
            let waits: Vec<Duration> = (0..200).map(|_| receive_backoff(failures)).collect();
            assert!(waits.iter().all(|w| *w >= ceiling / 2 && *w <= ceiling));
            let distinct: std::collections::HashSet<_> = waits.iter().collect();
            assert!(
                distinct.len() > 100,
                "jittered: {} distinct",
                distinct.len()
            );
        }
        assert!(receive_backoff(u32::MAX) <= MAX_RECEIVE_BACKOFF);
    }
}
