//! [`TestBroker`]: an in-process broker for tests, with time that moves only when told.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use oncely_core::async_trait;
use oncely_core::consumer::{BrokerError, DeadLetter, Delivery, Message, Source};
use tokio::sync::Notify;

/// How long a delivery that was never settled (its consumer died, its ack was lost) stays
/// invisible before the broker delivers it again, unless [`TestBroker::with_ack_wait`] says
/// otherwise. JetStream's default `AckWait` and SQS's default visibility timeout are both 30 s.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);

const BROKER: &str = "test broker";

/// How one delivery ended, as the broker saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// Acked: the broker will not deliver it again.
    Acked,
    /// Given back, to be delivered again after `after`.
    Redelivered {
        /// The wait the consumer asked for.
        after: Duration,
    },
    /// Never settled: the consumer dropped it (a crash) or its ack was lost. It comes back
    /// after the ack wait.
    Abandoned,
}

/// An in-process broker: a queue of [`Message`]s delivered at least once, for tests.
///
/// It behaves as a broker does towards a consumer, and nothing more: a delivery is handed to
/// one consumer at a time; an ack removes it; a redelivery request brings it back after the
/// wait asked for; a delivery dropped unsettled (its consumer crashed) or whose ack was lost
/// ([`lose_next_acks`](Self::lose_next_acks)) comes back after the ack wait; a dead letter is
/// kept for you to read ([`dead_letters`](Self::dead_letters)).
///
/// Time is the broker's own and moves only by [`advance`](Self::advance): a source ends when
/// nothing is ready and nothing is in flight, and [`next_due`](Self::next_due) says how far to
/// move it for the next message to come back. Every call a consumer makes (ack, redeliver,
/// dead-letter) waits once before it takes effect, as a round trip to a real broker does, so
/// dropping the consumer there is a crash before the broker heard it.
///
/// Cheap to clone; clones are the same broker.
#[derive(Clone, Debug)]
pub struct TestBroker {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changed: Notify,
    ack_wait: Duration,
}

#[derive(Debug, Default)]
struct State {
    now: Duration,
    ready: VecDeque<Message>,
    delayed: Vec<(Duration, Message)>,
    in_flight: usize,
    lose_acks: usize,
    settlements: Vec<Settlement>,
    dead_letters: Vec<(Message, DeadLetter)>,
}

impl Default for TestBroker {
    fn default() -> Self {
        TestBroker::new()
    }
}

impl TestBroker {
    /// An empty broker with [`DEFAULT_ACK_WAIT`].
    pub fn new() -> Self {
        TestBroker::with_ack_wait(DEFAULT_ACK_WAIT)
    }

    /// An empty broker that delivers an unsettled message again `ack_wait` after it was
    /// handed out.
    pub fn with_ack_wait(ack_wait: Duration) -> Self {
        TestBroker {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changed: Notify::new(),
                ack_wait,
            }),
        }
    }

    /// Queues `message` for delivery.
    pub fn publish(&self, message: Message) {
        self.shared.lock().ready.push_back(message);
        self.shared.changed.notify_waiters();
    }

    /// A consumer's view of the queue, to pass to [`Consumer::run`](oncely_consumer::Consumer::run).
    /// Any number of sources may take from one broker at once.
    pub fn source(&self) -> TestSource {
        TestSource {
            shared: self.shared.clone(),
        }
    }

    /// Makes the next `n` acks fail as if the connection dropped after the consumer sent them:
    /// the consumer sees an error, the broker never saw the ack, and the message comes back
    /// after the ack wait.
    pub fn lose_next_acks(&self, n: usize) {
        self.shared.lock().lose_acks += n;
    }

    /// How far to [`advance`](Self::advance) for the next delayed message to be ready: `None`
    /// if none is waiting.
    pub fn next_due(&self) -> Option<Duration> {
        let state = self.shared.lock();
        let due = state.delayed.iter().map(|(due, _)| *due).min()?;
        Some(due.saturating_sub(state.now))
    }

    /// Moves the broker's time forward; the delayed messages now due become ready.
    pub fn advance(&self, by: Duration) {
        let mut state = self.shared.lock();
        state.now += by;
        let now = state.now;
        let (due, waiting) = std::mem::take(&mut state.delayed)
            .into_iter()
            .partition::<Vec<_>, _>(|(at, _)| *at <= now);
        state.delayed = waiting;
        state
            .ready
            .extend(due.into_iter().map(|(_, message)| message));
        drop(state);
        self.shared.changed.notify_waiters();
    }

    /// Whether every message was acked: nothing ready, delayed or in flight.
    pub fn is_drained(&self) -> bool {
        let state = self.shared.lock();
        state.ready.is_empty() && state.delayed.is_empty() && state.in_flight == 0
    }

    /// How every delivery so far ended, in order.
    pub fn settlements(&self) -> Vec<Settlement> {
        self.shared.lock().settlements.clone()
    }

    /// The messages published to the dead-letter destination, with what went with them.
    pub fn dead_letters(&self) -> Vec<(Message, DeadLetter)> {
        self.shared.lock().dead_letters.clone()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the queue half-updated: every change is one step.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The deliveries of one [`TestBroker`] to one consumer. Ends when nothing is ready and nothing
/// is in flight (messages still delayed wait for [`TestBroker::advance`]).
#[derive(Debug)]
pub struct TestSource {
    shared: Arc<Shared>,
}

#[async_trait]
impl Source for TestSource {
    type Delivery = TestDelivery;

    async fn next(&mut self) -> Option<Result<TestDelivery, BrokerError>> {
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = self.shared.lock();
                if let Some(message) = state.ready.pop_front() {
                    state.in_flight += 1;
                    return Some(Ok(TestDelivery {
                        shared: self.shared.clone(),
                        message,
                        settled: AtomicBool::new(false),
                    }));
                }
                if state.in_flight == 0 {
                    return None;
                }
            }
            // Another consumer holds a delivery: it may give it back.
            changed.await;
        }
    }
}

/// One delivery of a [`TestBroker`]. Dropped unsettled, it comes back after the ack wait.
#[derive(Debug)]
pub struct TestDelivery {
    shared: Arc<Shared>,
    message: Message,
    settled: AtomicBool,
}

impl TestDelivery {
    /// Ends the delivery once; `requeue_after` puts the message back after that wait.
    fn settle(&self, settlement: Settlement, requeue_after: Option<Duration>) {
        if self.settled.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut state = self.shared.lock();
        state.in_flight -= 1;
        if let Some(after) = requeue_after {
            let due = state.now + after;
            state.delayed.push((due, self.message.clone()));
        }
        state.settlements.push(settlement);
        drop(state);
        self.shared.changed.notify_waiters();
    }

    fn already_settled(&self, what: &str) -> Result<(), BrokerError> {
        if self.settled.load(Ordering::SeqCst) {
            return Err(BrokerError::new(
                BROKER,
                what,
                "the delivery was already settled (a runner settles each delivery once)",
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Delivery for TestDelivery {
    fn message(&self) -> &Message {
        &self.message
    }

    async fn ack(&self) -> Result<(), BrokerError> {
        tokio::task::yield_now().await;
        self.already_settled("ack")?;
        let lost = {
            let mut state = self.shared.lock();
            let lost = state.lose_acks > 0;
            state.lose_acks = state.lose_acks.saturating_sub(1);
            lost
        };
        if lost {
            // The broker never heard it: the delivery stays in flight until it is dropped.
            return Err(BrokerError::new(
                BROKER,
                "ack",
                "connection lost before the broker received the ack (injected)",
            ));
        }
        self.settle(Settlement::Acked, None);
        Ok(())
    }

    async fn redeliver(&self, after: Duration) -> Result<(), BrokerError> {
        tokio::task::yield_now().await;
        self.already_settled("redeliver")?;
        self.settle(Settlement::Redelivered { after }, Some(after));
        Ok(())
    }

    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), BrokerError> {
        tokio::task::yield_now().await;
        self.already_settled("publish to the dead-letter destination")?;
        let mut state = self.shared.lock();
        state
            .dead_letters
            .push((self.message.clone(), letter.clone()));
        Ok(())
    }
}

impl Drop for TestDelivery {
    fn drop(&mut self) {
        let ack_wait = self.shared.ack_wait;
        self.settle(Settlement::Abandoned, Some(ack_wait));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: u8) -> Message {
        Message::new(vec![n], "q")
    }

    #[tokio::test]
    async fn acked_messages_are_gone_and_dropped_ones_return_after_the_ack_wait() {
        let broker = TestBroker::with_ack_wait(Duration::from_secs(5));
        broker.publish(message(1));
        broker.publish(message(2));
        let mut source = broker.source();
        let first = source.next().await.unwrap().unwrap();
        first.ack().await.unwrap();
        let second = source.next().await.unwrap().unwrap();
        drop(second);
        assert!(
            source.next().await.is_none(),
            "the dropped one is not due yet"
        );
        assert_eq!(broker.next_due(), Some(Duration::from_secs(5)));
        broker.advance(Duration::from_secs(5));
        let again = source.next().await.unwrap().unwrap();
        assert_eq!(again.message(), &message(2));
        again.ack().await.unwrap();
        assert!(broker.is_drained());
        assert_eq!(
            broker.settlements(),
            [Settlement::Acked, Settlement::Abandoned, Settlement::Acked]
        );
    }

    #[tokio::test]
    async fn a_lost_ack_fails_and_the_message_comes_back() {
        let broker = TestBroker::with_ack_wait(Duration::from_secs(1));
        broker.publish(message(1));
        broker.lose_next_acks(1);
        let delivery = broker.source().next().await.unwrap().unwrap();
        assert!(delivery.ack().await.is_err());
        drop(delivery);
        broker.advance(Duration::from_secs(1));
        let again = broker.source().next().await.unwrap().unwrap();
        again.ack().await.unwrap();
        assert!(broker.is_drained());
    }

    #[tokio::test]
    async fn redeliveries_wait_for_the_time_asked() {
        let broker = TestBroker::new();
        broker.publish(message(1));
        let delivery = broker.source().next().await.unwrap().unwrap();
        delivery
            .redeliver(Duration::from_millis(300))
            .await
            .unwrap();
        drop(delivery);
        assert_eq!(broker.next_due(), Some(Duration::from_millis(300)));
        broker.advance(Duration::from_millis(299));
        assert!(broker.source().next().await.is_none());
        broker.advance(Duration::from_millis(1));
        assert!(broker.source().next().await.is_some());
    }
}
