//! Moving dead letters back to where they came from, each at most once: [`Redrive`].
//!
//! A redrive reads a dead-letter destination as a [`Source`] (NATS, RabbitMQ, Kafka or SQS,
//! opened with `dlq=none`: it dead-letters nothing itself) and publishes each dead letter with a
//! [`Publisher`] to the destination it names, in this order:
//!
//! 1. claim the dead letter's key ([`dead_letter_key`]) in an oncely store;
//! 2. publish it ([`redriven`]: its payload and headers, the failure's headers dropped or kept
//!    as history) and wait for the broker's confirm;
//! 3. complete the claim, then ack the dead letter.
//!
//! Killed anywhere, a redrive run again publishes nothing twice: a completed key is acked
//! without a publish (its ack was lost); a key whose earlier claim ran out (a run killed
//! between its claim and its completion, which may or may not have published) is
//! **uncertain**: left in the dead letters, unpublished, and counted, for an operator to look
//! at the destination and `oncely forget` the key if it never arrived. At most once, never
//! twice: a duplicate would be the very thing dead letters are kept apart to avoid.
//!
//! Dead letters the filter passes over, uncertain ones, and those that could not go (no key, a
//! publish the broker refused) stay where they are: held until the run ends, then given back.
//! The run ends once the source has had nothing for [`idle`](Redrive::idle).
//!
//! ```no_run
//! # async fn example(
//! #     dead_letters: impl oncely_core::consumer::Source,
//! #     publisher: impl oncely_core::outbox::Publisher,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use oncely_consumer::redrive::Redrive;
//! use oncely_core::{Oncely, Scope, Selector};
//! # let store = std::sync::Arc::new(oncely_memory::MemoryStore::default());
//!
//! let report = Redrive::new(Oncely::new(store), Scope::new("redrive")?, publisher)
//!     .filter(Selector::parse("contains(headers.\"oncely-error\", '503')")?)
//!     .run(dead_letters)
//!     .await?;
//! println!("redrive: {report}");
//! # Ok(()) }
//! ```

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use oncely_core::consumer::{BrokerError, Delivery, KeySource, Message, Source};
use oncely_core::outbox::Publisher;
use oncely_core::redrive::{History, LetterError, dead_letter_key, filter_input, redriven};
use oncely_core::{ClaimOutcome, Key, Oncely, RecordState, Scope, Selector};

/// How long a run waits for one more dead letter before it ends, by default.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(5);

/// A failure of the source in a row that ends the run: the broker is not coming back soon.
const SOURCE_FAILURES: u32 = 10;

/// Moves dead letters back, each at most once (see the [module docs](self)).
pub struct Redrive<P> {
    oncely: Oncely,
    scope: Scope,
    publisher: P,
    destination: Option<String>,
    filter: Option<Selector>,
    key: Option<KeySource>,
    history: History,
    dry_run: bool,
    idle: Duration,
}

/// What a run did with the dead letters it read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedriveReport {
    /// Dead letters read (each once, however often the broker delivered it).
    pub read: u64,
    /// Published back and acked. In a dry run: those that would be.
    pub redriven: u64,
    /// Published back by an earlier run whose ack was lost: acked now, not published again.
    /// In a dry run: those that would be.
    pub already: u64,
    /// Passed over by the filter: left.
    pub filtered_out: u64,
    /// Claimed by an earlier run that stopped before it recorded the publish: maybe in the
    /// destination already, so left, unpublished (see the [module docs](self)).
    pub uncertain: u64,
    /// Being redriven by another run right now: left.
    pub in_progress: u64,
    /// Refused by the broker, with no key, or failing the filter: left.
    pub failed: u64,
    /// Whether nothing was published or acked.
    pub dry_run: bool,
}

impl RedriveReport {
    /// Dead letters left where they were.
    pub fn left(&self) -> u64 {
        self.filtered_out + self.uncertain + self.in_progress + self.failed
    }
}

impl fmt::Display for RedriveReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (moved, already) = match self.dry_run {
            true => ("would redrive", "already redriven (would ack)"),
            false => ("redriven", "already redriven"),
        };
        write!(
            f,
            "read {}, {moved} {}, {already} {}, filtered out {}, uncertain {}, in progress {}, failed {}",
            self.read,
            self.redriven,
            self.already,
            self.filtered_out,
            self.uncertain,
            self.in_progress,
            self.failed
        )
    }
}

/// Why a run stopped before the dead letters ran out, with what it did until then. Every
/// dead letter it had not moved is given back.
#[derive(Debug, thiserror::Error)]
#[error("{reason} (so far: {report})")]
pub struct RedriveStopped {
    /// What the run did.
    pub report: RedriveReport,
    /// Why it stopped.
    pub reason: StopReason,
}

/// Why a run stopped early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StopReason {
    /// The store failed: no claim can be trusted to keep a dead letter from going twice.
    #[error("the store: {0}")]
    Store(#[from] oncely_core::Error),
    /// The broker failed a publish in a way that may have published it (a timeout, a lost
    /// connection): that dead letter is uncertain now, and the broker likely down.
    #[error("publishing a dead letter (now uncertain): {0}")]
    Publish(BrokerError),
    /// The dead-letter source failed for good, or many times in a row.
    #[error("reading the dead letters: {0}")]
    Source(BrokerError),
}

/// What became of one dead letter.
enum Fate {
    Redriven,
    Already,
    FilteredOut,
    Uncertain,
    InProgress,
    Failed,
    /// Delivered again within this run: counted the first time.
    Seen,
}

impl<P: Publisher> Redrive<P> {
    /// A redrive claiming dead letters in `scope` of `oncely`'s store and publishing them with
    /// `publisher` to its default destination.
    pub fn new(oncely: Oncely, scope: Scope, publisher: P) -> Self {
        Redrive {
            oncely,
            scope,
            publisher,
            destination: None,
            filter: None,
            key: None,
            history: History::Drop,
            dry_run: false,
            idle: DEFAULT_IDLE,
        }
    }

    /// Publishes to `destination` rather than the publisher's default.
    pub fn destination(mut self, destination: impl Into<String>) -> Self {
        self.destination = Some(destination.into());
        self
    }

    /// Moves only the dead letters `filter` holds for ([`Selector::holds_for`] over
    /// [`filter_input`]: their headers and payload).
    pub fn filter(mut self, filter: Selector) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Tells dead letters apart by `key` rather than [`dead_letter_key`]: for dead letters
    /// oncely did not make on a broker with no id of its own (RabbitMQ's dead-letter
    /// exchanges). Two dead letters of one key go back once.
    pub fn key(mut self, key: KeySource) -> Self {
        self.key = Some(key);
        self
    }

    /// What becomes of the failure's headers ([`History::Drop`] by default).
    pub fn history(mut self, history: History) -> Self {
        self.history = history;
        self
    }

    /// Publishes and acks nothing, claims nothing: counts what a run would do.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Ends the run once the source has had nothing for `idle` ([`DEFAULT_IDLE`]).
    pub fn idle(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// Redrives what `source` delivers until it has nothing for [`idle`](Self::idle), then
    /// gives back what it left.
    pub async fn run<S: Source>(self, mut source: S) -> Result<RedriveReport, RedriveStopped> {
        let mut report = RedriveReport {
            dry_run: self.dry_run,
            ..RedriveReport::default()
        };
        let mut held = Vec::new();
        let mut seen = HashSet::new();
        let mut failures = 0;
        // Redeliveries of what the run holds (an ack wait ran out) are not news: only a dead
        // letter not seen yet keeps the run going.
        let mut news = tokio::time::Instant::now();
        let stopped = loop {
            let until = news + self.idle;
            let delivery = match tokio::time::timeout_at(until, source.next()).await {
                Err(_) | Ok(None) => break None,
                Ok(Some(Ok(delivery))) => delivery,
                Ok(Some(Err(error))) => {
                    failures += 1;
                    if error.is_permanent() || failures >= SOURCE_FAILURES {
                        break Some(StopReason::Source(error));
                    }
                    tracing::warn!(%error, "reading the dead letters");
                    tokio::time::sleep(Duration::from_millis(200) * failures).await;
                    continue;
                }
            };
            failures = 0;
            let fate = match self.one(&delivery, &mut seen).await {
                Ok(Fate::Seen) => Ok(Fate::Seen),
                other => {
                    news = tokio::time::Instant::now();
                    other
                }
            };
            let fate = match fate {
                Ok(fate) => fate,
                Err((reason, fate)) => {
                    report.read += 1;
                    match fate {
                        Fate::Uncertain => report.uncertain += 1,
                        _ => report.failed += 1,
                    }
                    held.push(delivery);
                    break Some(reason);
                }
            };
            let count = match fate {
                Fate::Redriven => &mut report.redriven,
                Fate::Already => &mut report.already,
                Fate::FilteredOut => &mut report.filtered_out,
                Fate::Uncertain => &mut report.uncertain,
                Fate::InProgress => &mut report.in_progress,
                Fate::Failed => &mut report.failed,
                Fate::Seen => {
                    held.push(delivery);
                    continue;
                }
            };
            *count += 1;
            report.read += 1;
            let moved = matches!(fate, Fate::Redriven | Fate::Already) && !self.dry_run;
            if !moved {
                held.push(delivery);
            }
        };
        for delivery in held {
            if let Err(error) = delivery.redeliver(Duration::ZERO).await {
                tracing::warn!(%error, "giving a dead letter back (the broker will, in time)");
            }
        }
        match stopped {
            None => Ok(report),
            Some(reason) => Err(RedriveStopped { report, reason }),
        }
    }

    /// One dead letter: acked here if it went (or had gone) back, else left to the caller. A
    /// failure that stops the run comes with what became of this one.
    async fn one<D: Delivery>(
        &self,
        delivery: &D,
        seen: &mut HashSet<Key>,
    ) -> Result<Fate, (StopReason, Fate)> {
        let unclaimed = |e: oncely_core::Error| (StopReason::Store(e), Fate::Failed);
        let letter = delivery.message();
        let key = match self.key_of(letter) {
            Ok(key) => key,
            Err(error) => {
                tracing::warn!(%error, source = letter.source(), "a dead letter left");
                return Ok(Fate::Failed);
            }
        };
        if !seen.insert(key.clone()) {
            return Ok(Fate::Seen);
        }
        if let Some(filter) = &self.filter {
            match filter.holds_for(&filter_input(letter)) {
                Ok(true) => {}
                Ok(false) => return Ok(Fate::FilteredOut),
                Err(error) => {
                    tracing::warn!(%key, error = %LetterError::from(error), "a dead letter left");
                    return Ok(Fate::Failed);
                }
            }
        }
        if self.dry_run {
            return Ok(
                match self
                    .oncely
                    .get(&self.scope, &key)
                    .await
                    .map_err(unclaimed)?
                {
                    None => Fate::Redriven,
                    Some(record) if matches!(record.state, RecordState::Completed { .. }) => {
                        Fate::Already
                    }
                    Some(_) => Fate::Uncertain,
                },
            );
        }
        let claim = || self.oncely.claim(&self.scope, &key, None);
        let mut outcome = claim().await.map_err(unclaimed)?;
        if let ClaimOutcome::InProgress { retry_after } = outcome {
            // A run killed a moment ago holds it until its lease ends: wait that out once.
            if retry_after > self.oncely.lease() {
                return Ok(Fate::InProgress);
            }
            tokio::time::sleep(retry_after + Duration::from_millis(50)).await;
            outcome = claim().await.map_err(unclaimed)?;
        }
        let claim = match outcome {
            ClaimOutcome::New(claim) if claim.attempt == 1 => claim,
            ClaimOutcome::New(_) => {
                tracing::warn!(
                    %key,
                    "an earlier redrive claimed this dead letter and stopped before it recorded \
                     the publish: it may be in the destination already, so it is left here \
                     (oncely forget the key to redrive it again)"
                );
                return Ok(Fate::Uncertain);
            }
            ClaimOutcome::Duplicate(_) => {
                self.ack(delivery, &key).await;
                return Ok(Fate::Already);
            }
            ClaimOutcome::InProgress { .. } => return Ok(Fate::InProgress),
            ClaimOutcome::Conflict { .. } => return Ok(Fate::Failed),
        };
        let message = redriven(letter, &key, self.history);
        match self
            .publisher
            .publish(self.destination.as_deref(), &message)
            .await
        {
            Ok(()) => {
                // Not recorded: the claim runs out and the next run finds it uncertain.
                let recorded = self.oncely.complete(&claim, &[]).await;
                recorded.map_err(|e| (StopReason::Store(e), Fate::Uncertain))?;
                self.ack(delivery, &key).await;
                Ok(Fate::Redriven)
            }
            Err(error) if error.is_permanent() => {
                // Refused: not published, so it may go another time.
                tracing::warn!(%key, %error, "the broker refused a dead letter; left");
                self.oncely.release(&claim).await.map_err(unclaimed)?;
                Ok(Fate::Failed)
            }
            // Maybe published: the claim stays, so no run publishes it again.
            Err(error) => Err((StopReason::Publish(error), Fate::Uncertain)),
        }
    }

    fn key_of(&self, letter: &Message) -> Result<Key, Box<dyn std::error::Error + Send + Sync>> {
        match &self.key {
            Some(source) => Ok(source.key_of(letter)?),
            None => Ok(dead_letter_key(letter)?),
        }
    }

    /// An ack that fails is no loss: the key is complete, the next run acks it.
    async fn ack<D: Delivery>(&self, delivery: &D, key: &Key) {
        if let Err(error) = delivery.ack().await {
            tracing::warn!(%key, %error, "acking a redriven dead letter (the next run will)");
        }
    }
}
