//! The oncely and raw contenders of the broker benchmark: oncely's consumer runner
//! ([`Consumer`]) over the broker's source, every delivery timed from the moment the runner takes
//! it until its ack is confirmed. oncely's handler is an [`OncelyHandler`] on a store; raw's
//! answers done at once, with no store: the broker's and the runner's own limit here.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oncely::consumer::{
    BrokerError, DeadLetter, Delivery, Handled, Handler, HandlerError, KeySource, Message,
    OncelyHandler, Source,
};
use oncely::{Consumer, Oncely, Scope, async_trait};

use super::{BrokerConfig, BrokerRun, Channel, STALL_LIMIT, check, fill, other};
use crate::{BenchError, Progress, Workload, percentile};

/// Acked deliveries, their delivery-to-ack times and the instant of the last ack.
struct Tally {
    target: usize,
    acked: AtomicUsize,
    latencies: Mutex<Vec<Duration>>,
    acks_at: Mutex<Vec<Instant>>,
    all_acked: tokio::sync::Notify,
    /// When the source handed out its first delivery.
    first_taken: std::sync::OnceLock<Instant>,
}

impl Tally {
    fn new(target: usize) -> Self {
        Tally {
            target,
            acked: AtomicUsize::new(0),
            latencies: Mutex::new(Vec::with_capacity(target)),
            acks_at: Mutex::new(Vec::with_capacity(target)),
            all_acked: tokio::sync::Notify::new(),
            first_taken: std::sync::OnceLock::new(),
        }
    }

    fn acked(&self, taken: Instant) {
        let now = Instant::now();
        self.latencies.lock().unwrap().push(now - taken);
        self.acks_at.lock().unwrap().push(now);
        if self.acked.fetch_add(1, Ordering::AcqRel) + 1 == self.target {
            self.all_acked.notify_one();
        }
    }

    fn count(&self) -> usize {
        self.acked.load(Ordering::Acquire)
    }
}

/// The broker's source, timing each delivery from the moment the runner takes it.
struct Timed<S> {
    inner: S,
    tally: Arc<Tally>,
}

struct TimedDelivery<D> {
    inner: D,
    taken: Instant,
    tally: Arc<Tally>,
}

#[async_trait]
impl<S: Source> Source for Timed<S> {
    type Delivery = TimedDelivery<S::Delivery>;

    async fn next(&mut self) -> Option<Result<Self::Delivery, BrokerError>> {
        let next = self.inner.next().await?;
        Some(next.map(|inner| {
            let taken = Instant::now();
            self.tally.first_taken.get_or_init(|| taken);
            TimedDelivery {
                inner,
                taken,
                tally: self.tally.clone(),
            }
        }))
    }
}

#[async_trait]
impl<D: Delivery> Delivery for TimedDelivery<D> {
    fn message(&self) -> &Message {
        self.inner.message()
    }

    async fn ack(&self) -> Result<(), BrokerError> {
        self.inner.ack().await?;
        self.tally.acked(self.taken);
        Ok(())
    }

    async fn redeliver(&self, after: Duration) -> Result<(), BrokerError> {
        self.inner.redeliver(after).await
    }

    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), BrokerError> {
        self.inner.dead_letter(letter).await
    }

    async fn in_progress(&self) -> Result<(), BrokerError> {
        self.inner.in_progress().await
    }
}

/// oncely's consumer runner with an [`OncelyHandler`] on `store_url`, over a fresh destination
/// on `server`.
pub(super) async fn run_oncely<C: Channel>(
    server: &C::Server,
    config: &BrokerConfig,
    store_url: &str,
    workload: &Workload,
    progress: &dyn Progress,
) -> Result<BrokerRun, BenchError> {
    let store = oncely::connect(store_url).await?;
    let effects = Arc::new(AtomicU64::new(0));
    let counter = effects.clone();
    let handler = OncelyHandler::new(
        Oncely::new(store).with_lease(config.lease),
        Scope::default(),
        move |_key: oncely::Key, _: Message| {
            counter.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Ok::<_, std::convert::Infallible>(Vec::new()))
        },
    );
    let expected = workload.distinct_keys() as u64;
    run_runner::<C, _>(
        server,
        config,
        workload,
        progress,
        ("oncely", expected),
        handler,
        effects,
    )
    .await
}

/// The runner with a handler that answers done at once, no store and no dedup (every message
/// is an effect): consuming and acking alone.
pub(super) async fn run_raw<C: Channel>(
    server: &C::Server,
    config: &BrokerConfig,
    workload: &Workload,
    progress: &dyn Progress,
) -> Result<BrokerRun, BenchError> {
    let effects = Arc::new(AtomicU64::new(0));
    let handler = RawHandler(effects.clone());
    let expected = workload.len() as u64;
    run_runner::<C, _>(
        server,
        config,
        workload,
        progress,
        ("raw", expected),
        handler,
        effects,
    )
    .await
}

/// Counts each message as an effect and answers done.
struct RawHandler(Arc<AtomicU64>);

#[async_trait]
impl Handler for RawHandler {
    async fn handle(&self, _: &oncely::Key, _: &Message) -> Result<Handled, HandlerError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(Handled::Done)
    }
}

/// The runner calling `handler` over a fresh destination on `server`: the contender `name`,
/// whose effects must come to `expected`.
async fn run_runner<C: Channel, H: Handler>(
    server: &C::Server,
    config: &BrokerConfig,
    workload: &Workload,
    progress: &dyn Progress,
    (name, expected): (&str, u64),
    handler: H,
    effects: Arc<AtomicU64>,
) -> Result<BrokerRun, BenchError> {
    let mut channel = C::create(server, name).await?;
    let result = async {
        fill(&mut channel, workload, progress).await?;
        let concurrency = config.concurrency.max(1);
        let keys: KeySource = "/eventId".parse().expect("a valid key source");
        let consumer = Consumer::new(handler, keys).concurrency(concurrency);
        let source = oncely::broker::connect(&channel.source_url(Some(concurrency)))
            .await
            .map_err(|e| other("broker")(&e))?;
        let tally = Arc::new(Tally::new(workload.len()));
        let source = Timed {
            inner: source,
            tally: tally.clone(),
        };
        progress.start(name, workload.len() as u64);
        let stalled = Arc::new(Mutex::new(None));
        let started = Instant::now();
        let shutdown = {
            let (tally, stalled) = (tally.clone(), stalled.clone());
            async move {
                let mut reported = 0;
                let mut last_progress = Instant::now();
                loop {
                    let tick = tokio::time::sleep(Duration::from_millis(100));
                    tokio::select! {
                        _ = tally.all_acked.notified() => break,
                        _ = tick => {}
                    }
                    let acked = tally.count();
                    if acked >= tally.target {
                        break;
                    }
                    if acked > reported {
                        progress.advance((acked - reported) as u64);
                        reported = acked;
                        last_progress = Instant::now();
                    } else if last_progress.elapsed() > STALL_LIMIT {
                        *stalled.lock().unwrap() = Some(acked);
                        break;
                    }
                }
                progress.advance((tally.count().saturating_sub(reported)) as u64);
            }
        };
        let report = consumer
            .run(source, shutdown)
            .await
            .map_err(|e| other("consumer")(&e))?;
        progress.finish();
        if let Some(acked) = *stalled.lock().unwrap() {
            return Err(BenchError::Other(format!(
                "{name}: no ack for {STALL_LIMIT:?} with {acked} of {} messages acked",
                workload.len()
            )));
        }
        let started = match (C::CLOCK_FROM_FIRST_DELIVERY, tally.first_taken.get()) {
            (true, Some(first)) => *first,
            _ => started,
        };
        let mut acks_at = std::mem::take(&mut *tally.acks_at.lock().unwrap());
        acks_at.sort_unstable();
        let elapsed = acks_at.last().map_or(Duration::ZERO, |t| *t - started);
        let first = workload.len().saturating_sub(report.redelivered as usize);
        let before_waits =
            (report.redelivered > 0 && first > 0).then(|| (first, acks_at[first - 1] - started));
        let (unsettled, dead) = channel.leftovers().await?;
        let mut latencies = std::mem::take(&mut *tally.latencies.lock().unwrap());
        latencies.sort_unstable();
        let run = BrokerRun {
            name: name.into(),
            messages: workload.len(),
            distinct: workload.distinct_keys(),
            effects: effects.load(Ordering::Relaxed),
            redelivered: report.redelivered,
            dead_lettered: report.dead_lettered.max(dead),
            unsettled: unsettled + report.unsettled,
            elapsed,
            p50: percentile(&latencies, 0.5),
            p99: percentile(&latencies, 0.99),
            before_waits,
        };
        check(&run, tally.count(), expected)?;
        Ok::<_, BenchError>(run)
    }
    .await;
    let deleted = channel.delete().await;
    let run = result?;
    deleted?;
    Ok(run)
}
