//! Prove your handler idempotent and crash-safe, in your own tests (feature `testing`).
//!
//! ```toml
//! [dev-dependencies]
//! oncely = { version = "0.1", features = ["testing"] }
//! ```
//!
//! A handler is idempotent if handling a message N times has the effect of handling it once.
//! That is easy to claim and easy to break: a write before the claim, a claim in another
//! database than the effect, a completion that is a separate step from the effect. The checks
//! here run your [`Handler`] through the real runner ([`oncely_consumer::Consumer`]) over an
//! in-process broker ([`TestBroker`]), against whatever store and database your handler really
//! uses, and compare the effect with the effect of one delivery:
//!
//! | check | what it does | the effect must be |
//! |---|---|---|
//! | [`assert_idempotent`] | one delivery in a fresh world (the reference); then N one after another; then N at once, each to its own handler instance (N processes) | the reference, every delivery acked |
//! | [`assert_survives_crash_before_ack`] | one delivery whose ack is lost (the process died after the handler returned), then a redelivery to a restarted handler | the reference |
//! | [`assert_survives_crashes`] | for every point where the delivery waits (a database round trip, a call to a service, the ack), a delivery cut off there, as `kill -9` would, then a redelivery to a restarted handler | the reference, at every point |
//!
//! You describe your world with a [`Scenario`]: how to make a fresh one (empty effect, empty
//! dedup records), how to get a new handler over the same one (a process restart), what its
//! effect is now, and how to let time pass (so leases run out).
//!
//! # What the crash check catches
//!
//! The bug that duplicates effects in production is a window in which the effect is committed
//! and the dedup record is not: effect first and claim after, or a claim completed in a
//! separate step from the effect, or an effect in another database than the records. Losing the
//! ack alone never finds it: by the time of the ack, the handler has finished. So
//! [`assert_survives_crashes`] cuts the delivery off at each of its waits in turn, restarts,
//! and redelivers after the leases run out. A handler whose effect and record commit together
//! (the transactional inbox, [`crate::inbox`]) passes at every point; a handler that completes
//! its claim after an effect elsewhere fails at the point between the two, naming it.
//!
//! Only real waits are crash points: a step that completes without waiting (an in-memory
//! store, a counter in memory) cannot be cut in two by this check. That matches an async
//! process, which is only ever interrupted while waiting, except by a kill between two
//! instructions; a world in memory is lost with the process anyway. Run the crash check
//! against the store you deploy to see the windows it has.
//!
//! # Example
//!
//! Welcome e-mails through [`OncelyHandler`](crate::consumer::OncelyHandler) over the memory
//! store, the e-mails counted in memory, the leases on a [`ManualClock`](crate::ManualClock)
//! that the kit moves instead of sleeping:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//!
//! use oncely::consumer::{Handler, KeySource, Message, OncelyHandler};
//! use oncely::memory::MemoryStore;
//! use oncely::testing::{self, Scenario};
//! use oncely::{ManualClock, Oncely, Scope, async_trait};
//!
//! #[derive(Default)]
//! struct Welcome {
//!     sent: Mutex<Arc<AtomicU64>>,    // the effect: e-mails sent
//!     store: Mutex<Arc<MemoryStore>>, // the dedup records
//!     clock: ManualClock,             // what the leases are measured on
//! }
//!
//! impl Welcome {
//!     fn handler(&self) -> Arc<dyn Handler> {
//!         let sent = self.sent.lock().unwrap().clone();
//!         let oncely = Oncely::new(self.store.lock().unwrap().clone()).with_clock(self.clock.clone());
//!         Arc::new(OncelyHandler::new(oncely, Scope::new("welcome").unwrap(), move |_key, _message| {
//!             let sent = sent.clone();
//!             async move {
//!                 sent.fetch_add(1, Ordering::SeqCst); // "send" the e-mail
//!                 Ok::<_, std::io::Error>(Vec::new())
//!             }
//!         }))
//!     }
//! }
//!
//! #[async_trait]
//! impl Scenario for Welcome {
//!     type Handler = Arc<dyn Handler>;
//!     type Effect = u64;
//!
//!     async fn fresh(&self) -> Self::Handler {
//!         *self.sent.lock().unwrap() = Arc::default();
//!         *self.store.lock().unwrap() = Arc::default();
//!         self.handler()
//!     }
//!
//!     async fn restart(&self) -> Self::Handler {
//!         self.handler()
//!     }
//!
//!     async fn effect(&self) -> u64 {
//!         self.sent.lock().unwrap().load(Ordering::SeqCst)
//!     }
//!
//!     async fn wait(&self, duration: Duration) {
//!         self.clock.advance(duration);
//!     }
//! }
//!
//! let keys: KeySource = "/userId".parse().unwrap();
//! let signup = Message::new(br#"{"userId": "u-1"}"#.to_vec(), "signups");
//! testing::assert_idempotent(&Welcome::default(), &keys, &signup, 8).await.unwrap();
//! testing::assert_survives_crash_before_ack(&Welcome::default(), &keys, &signup).await.unwrap();
//! testing::assert_survives_crashes(&Welcome::default(), &keys, &signup).await.unwrap();
//! # }
//! ```
//!
//! Here the e-mail is a counter in memory, so nothing separates it from the completion of the
//! claim. Make `send` a call that waits for a mail server's answer and
//! [`assert_survives_crashes`] fails: killed while waiting, the e-mail is sent and the key is
//! not recorded, and the redelivery after the lease sends it again. That is the truth about
//! effects outside the store (see [`OncelyHandler`](crate::consumer::OncelyHandler)): make
//! them idempotent at the receiver (pass the key along), or move them into the store's
//! database and use the transactional inbox.
//!
//! # What the checks cannot prove
//!
//! They try one message, the interleavings your runtime happens to produce, and the crash
//! points your handler's waits offer on this run; they do not explore every schedule. They see
//! only the effect [`Scenario::effect`] shows: a side effect it leaves out is not compared.
//! And they test the store you give them: a memory store says nothing about a database's
//! isolation level.

mod broker;
mod interrupt;

use std::fmt;
use std::time::Duration;

use oncely_consumer::Consumer;
pub use oncely_consumer::Report;
use oncely_core::async_trait;
use oncely_core::consumer::{Handler, KeySource, Message, RetryPolicy, Source};
use tokio::task::JoinSet;

pub use broker::{DEFAULT_ACK_WAIT, Settlement, TestBroker, TestDelivery, TestSource};
use interrupt::Interrupt;

/// Times the kit lets the broker's time move for one phase before it gives up on a message
/// that keeps coming back (a handler answering "in progress" for good).
pub const MAX_REDELIVERY_ROUNDS: usize = 100;

/// Crash points [`assert_survives_crashes`] tries at most.
pub const MAX_CRASH_POINTS: usize = 1_000;

/// Your handler's world, as the checks need it.
#[async_trait]
pub trait Scenario: Send + Sync {
    /// The handler under test. `Arc<dyn Handler>` is a handler too, for closures' sake.
    type Handler: Handler;
    /// What the handler changes, as you compare it (rows written, e-mails sent, a balance).
    type Effect: Clone + PartialEq + fmt::Debug + Send + Sync + 'static;

    /// A fresh world (no effect yet, no dedup records) and a handler over it.
    async fn fresh(&self) -> Self::Handler;

    /// A new handler over the world of the last [`fresh`](Self::fresh), as after a process
    /// restart: the databases kept, the process's memory lost.
    async fn restart(&self) -> Self::Handler;

    /// The effect now.
    async fn effect(&self) -> Self::Effect;

    /// Lets `duration` pass, as the broker waits before a redelivery. Leases run out here.
    ///
    /// By default, sleeps. If your handler measures leases on a clock you can move (a
    /// [`ManualClock`](crate::ManualClock)), move it instead and the checks take no time; if it
    /// holds no lease (the transactional inbox), do nothing.
    async fn wait(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// One step of a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// One delivery in a fresh world: the reference effect.
    Reference,
    /// Deliveries one after another, to one handler.
    Sequential {
        /// How many.
        times: usize,
    },
    /// Deliveries at once, each to its own handler instance.
    Concurrent {
        /// How many.
        times: usize,
    },
    /// One delivery whose ack was lost, then a redelivery to a restarted handler.
    CrashBeforeAck,
    /// One delivery cut off at one of its waits, then a redelivery to a restarted handler.
    CrashAt {
        /// Which wait, from 1.
        point: usize,
    },
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Phase::Reference => f.write_str("one delivery in a fresh world"),
            Phase::Sequential { times } => write!(f, "{times} deliveries one after another"),
            Phase::Concurrent { times } => {
                write!(f, "{times} deliveries at once, each to its own handler")
            }
            Phase::CrashBeforeAck => {
                f.write_str("a crash after the handler returned, before the ack, then a redelivery")
            }
            Phase::CrashAt { point } => write!(
                f,
                "a crash at wait {point} of the delivery (the handler dropped there), then a \
                 redelivery after the leases"
            ),
        }
    }
}

/// Why a check failed: the phase, and what was expected against what happened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotIdempotent<E: fmt::Debug> {
    /// One delivery left the effect as it was: the comparison would prove nothing.
    #[error(
        "the handler had no observable effect: the effect was {effect:?} before and after one \
         delivery in a fresh world, so the check proves nothing (make `Scenario::effect` show \
         what the handler changes)"
    )]
    NoEffect {
        /// The effect, unchanged.
        effect: E,
    },
    /// The effect differs from the effect of one delivery.
    #[error("{phase}: expected the effect of one delivery, {expected:?}, but got {actual:?}")]
    EffectDiffers {
        /// Where.
        phase: Phase,
        /// The effect of one delivery in a fresh world.
        expected: E,
        /// The effect after this phase.
        actual: E,
    },
    /// A delivery was dead-lettered, or never settled.
    #[error("{phase}: {problem}")]
    NotAcked {
        /// Where.
        phase: Phase,
        /// What happened to the delivery.
        problem: String,
    },
}

impl<E: fmt::Debug> NotIdempotent<E> {
    /// The phase that failed.
    pub fn phase(&self) -> Phase {
        match self {
            NotIdempotent::NoEffect { .. } => Phase::Reference,
            NotIdempotent::EffectDiffers { phase, .. } | NotIdempotent::NotAcked { phase, .. } => {
                phase.clone()
            }
        }
    }
}

/// What a check did, when it passed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Proof {
    /// The phases run, in order, each ending with the effect of one delivery.
    pub phases: Vec<Phase>,
    /// How the runner settled the deliveries of every phase, summed.
    pub settled: Report,
}

impl Proof {
    fn add(&mut self, phase: Phase, report: Report) {
        self.phases.push(phase);
        add(&mut self.settled, report);
    }
}

fn add(total: &mut Report, report: Report) {
    total.done += report.done;
    total.duplicates += report.duplicates;
    total.stale += report.stale;
    total.redelivered += report.redelivered;
    total.dead_lettered += report.dead_lettered;
    total.unsettled += report.unsettled;
}

type Checked<S> = Result<Proof, NotIdempotent<<S as Scenario>::Effect>>;

/// Delivers `message` once in a fresh world (the reference), then `times` times one after
/// another in a fresh world, then `times` times at once in a fresh world, each delivery to its
/// own handler instance ([`Scenario::restart`]). Every delivery must be acked and every phase
/// must end with the reference effect, which must differ from the effect of an untouched world.
pub async fn assert_idempotent<S: Scenario>(
    scenario: &S,
    keys: &KeySource,
    message: &Message,
    times: usize,
) -> Checked<S> {
    let mut proof = Proof::default();
    let expected = reference(scenario, keys, message, &mut proof).await?;

    let phase = Phase::Sequential { times };
    let broker = TestBroker::with_ack_wait(Duration::ZERO);
    let handler = scenario.fresh().await;
    (0..times).for_each(|_| broker.publish(message.clone()));
    let report = settle_all(scenario, &broker, &[consumer(handler, keys)], &phase).await?;
    compare(scenario, &expected, &phase).await?;
    proof.add(phase, report);

    let phase = Phase::Concurrent { times };
    let broker = TestBroker::with_ack_wait(Duration::ZERO);
    let mut consumers = vec![consumer(scenario.fresh().await, keys)];
    for _ in 1..times {
        consumers.push(consumer(scenario.restart().await, keys));
    }
    (0..times).for_each(|_| broker.publish(message.clone()));
    let report = settle_all(scenario, &broker, &consumers, &phase).await?;
    compare(scenario, &expected, &phase).await?;
    proof.add(phase, report);
    Ok(proof)
}

/// Delivers `message` once in a fresh world and loses its ack, as if the process died after
/// the handler returned; then redelivers it to a restarted handler. The redelivery must be
/// acked and the effect must be the effect of one delivery.
///
/// This finds handlers that redo their effect on a redelivery of finished work. It cannot find
/// a window between the effect and the dedup record inside the handler: the handler has
/// finished by the time of the ack. [`assert_survives_crashes`] does.
pub async fn assert_survives_crash_before_ack<S: Scenario>(
    scenario: &S,
    keys: &KeySource,
    message: &Message,
) -> Checked<S> {
    let mut proof = Proof::default();
    let expected = reference(scenario, keys, message, &mut proof).await?;

    let phase = Phase::CrashBeforeAck;
    let broker = TestBroker::with_ack_wait(Duration::ZERO);
    broker.publish(message.clone());
    broker.lose_next_acks(1);
    let crashed = consumer(scenario.fresh().await, keys);
    let first = crashed
        .run(broker.source(), std::future::pending())
        .await
        .map_err(|e| not_acked(&phase, format!("the runner failed: {e}")))?;
    drop(crashed);
    if first.unsettled != 1 {
        let problem = format!("the first delivery never reached its ack (the runner: {first:?})");
        return Err(not_acked(&phase, problem));
    }
    let restarted = consumer(scenario.restart().await, keys);
    let mut report = settle_all(scenario, &broker, &[restarted], &phase).await?;
    compare(scenario, &expected, &phase).await?;
    report.unsettled += first.unsettled;
    proof.add(phase, report);
    Ok(proof)
}

/// For each point at which a delivery of `message` waits (a database round trip, a call to a
/// service, the ack), in a fresh world: cuts the delivery off there, dropping the runner and
/// the handler with it as a killed process would, then redelivers to a restarted handler after
/// the leases run out. At every point, the redelivery must be acked and the effect must be the
/// effect of one delivery. Stops after [`MAX_CRASH_POINTS`].
///
/// A handler whose effect can be committed while its dedup record is not (the record completed
/// in a separate step, or kept in another database) fails at the wait between the two.
pub async fn assert_survives_crashes<S: Scenario>(
    scenario: &S,
    keys: &KeySource,
    message: &Message,
) -> Checked<S> {
    let mut proof = Proof::default();
    let expected = reference(scenario, keys, message, &mut proof).await?;

    for waits in 0..MAX_CRASH_POINTS {
        let phase = Phase::CrashAt { point: waits + 1 };
        let broker = TestBroker::with_ack_wait(Duration::ZERO);
        broker.publish(message.clone());
        let crashed = consumer(scenario.fresh().await, keys);
        let delivery = match broker.source().next().await {
            Some(Ok(delivery)) => delivery,
            _ => unreachable!("the test broker delivers what was published"),
        };
        let (_running, stopping) = tokio::sync::watch::channel(false);
        let cut_off = Interrupt::at_wait(crashed.settle(&delivery, stopping), waits).await;
        drop(delivery);
        drop(crashed);
        if cut_off.is_some() {
            // The delivery finished before this wait: every wait has been a crash point.
            break;
        }
        let restarted = consumer(scenario.restart().await, keys);
        let mut report = settle_all(scenario, &broker, &[restarted], &phase).await?;
        compare(scenario, &expected, &phase).await?;
        report.unsettled += 1;
        proof.add(phase, report);
    }
    Ok(proof)
}

/// The effect of one delivery in a fresh world, checked to differ from the untouched world's.
async fn reference<S: Scenario>(
    scenario: &S,
    keys: &KeySource,
    message: &Message,
    proof: &mut Proof,
) -> Result<S::Effect, NotIdempotent<S::Effect>> {
    let phase = Phase::Reference;
    let handler = scenario.fresh().await;
    let before = scenario.effect().await;
    let broker = TestBroker::with_ack_wait(Duration::ZERO);
    broker.publish(message.clone());
    let report = settle_all(scenario, &broker, &[consumer(handler, keys)], &phase).await?;
    let after = scenario.effect().await;
    if after == before {
        return Err(NotIdempotent::NoEffect { effect: after });
    }
    proof.add(phase, report);
    Ok(after)
}

async fn compare<S: Scenario>(
    scenario: &S,
    expected: &S::Effect,
    phase: &Phase,
) -> Result<(), NotIdempotent<S::Effect>> {
    let actual = scenario.effect().await;
    if &actual != expected {
        return Err(NotIdempotent::EffectDiffers {
            phase: phase.clone(),
            expected: expected.clone(),
            actual,
        });
    }
    Ok(())
}

/// The runner as the checks use it: retries quick, so a failing handler is reported at once.
fn consumer<H: Handler>(handler: H, keys: &KeySource) -> Consumer<H> {
    Consumer::new(handler, keys.clone()).retry(
        RetryPolicy::default()
            .with_max_attempts(3)
            .with_backoff(Duration::from_millis(1), Duration::from_millis(10)),
    )
}

/// Runs `consumers` over `broker` until every message is acked, letting time pass (by the
/// scenario) whenever only delayed messages are left. Dead letters fail the phase.
async fn settle_all<S: Scenario>(
    scenario: &S,
    broker: &TestBroker,
    consumers: &[Consumer<S::Handler>],
    phase: &Phase,
) -> Result<Report, NotIdempotent<S::Effect>> {
    let mut total = Report::default();
    for _ in 0..MAX_REDELIVERY_ROUNDS {
        let mut runs = JoinSet::new();
        for consumer in consumers {
            let (consumer, source) = (consumer.clone(), broker.source());
            runs.spawn(async move { consumer.run(source, std::future::pending()).await });
        }
        while let Some(run) = runs.join_next().await {
            let report = match run {
                Ok(Ok(report)) => report,
                Ok(Err(e)) => return Err(not_acked(phase, format!("the runner failed: {e}"))),
                Err(e) => return Err(not_acked(phase, format!("the runner panicked: {e}"))),
            };
            add(&mut total, report);
        }
        if let Some((_, letter)) = broker.dead_letters().into_iter().next() {
            let problem = format!(
                "a delivery was dead-lettered after {} attempt(s): {}",
                letter.attempts, letter.error
            );
            return Err(not_acked(phase, problem));
        }
        match broker.next_due() {
            None => return Ok(total),
            Some(wait) => {
                scenario.wait(wait).await;
                broker.advance(wait);
            }
        }
    }
    let problem = format!(
        "a delivery was still not acked after {MAX_REDELIVERY_ROUNDS} redeliveries ({:?}); a \
         handler answering \"in progress\" for good holds a lease that `Scenario::wait` does not \
         let run out",
        total
    );
    Err(not_acked(phase, problem))
}

fn not_acked<E: fmt::Debug>(phase: &Phase, problem: String) -> NotIdempotent<E> {
    NotIdempotent::NotAcked {
        phase: phase.clone(),
        problem,
    }
}
