//! What this consumer holds of each assigned partition: messages fetched and not handed out yet,
//! the messages in flight, and the offset to commit next.
//!
//! In [`Order::Key`], messages of one Kafka key are handled one at a time, in offset order, and
//! messages of other keys of the same partition beside them; in [`Order::Partition`], one
//! message of a partition at a time. Either way a message given back (retry later, in progress
//! elsewhere) returns to its place in its partition, so nothing of its key behind it overtakes
//! it, and the offset committed is the first one not settled: everything before it is done.
//!
//! Shared by the poll thread (which fetches, assigns, revokes and commits) and the runner's
//! tasks (which take, ack and give back). A revocation waits here, on the poll thread, for the
//! messages in flight of the revoked partitions to settle.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use oncely_core::consumer::Message;

use crate::options::Order;

/// Queued messages of one partition above which its fetching is paused.
pub(crate) const PAUSE_ABOVE: usize = 1000;
/// Queued messages at or below which a paused partition is resumed.
pub(crate) const RESUME_AT: usize = PAUSE_ABOVE / 2;

#[derive(Default)]
pub(crate) struct Partitions {
    state: Mutex<State>,
    /// Wakes the poll thread waiting out a revocation.
    settled: Condvar,
    /// Wakes the runner waiting for a message.
    pub(crate) ready: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    order: Order,
    parts: BTreeMap<i32, Part>,
    /// Bumped at every assignment: a settlement from before it belongs to an earlier owner.
    generation: u64,
    /// Where the round-robin over partitions starts next.
    after: Option<i32>,
    closed: bool,
}

struct Part {
    generation: u64,
    /// Fetched and not handed out, in offset order.
    queue: VecDeque<Fetched>,
    /// Handed out and not settled: offset -> what it is ordered by.
    in_flight: BTreeMap<i64, OrderKey>,
    /// The offset after the highest one settled.
    settled_up_to: Option<i64>,
    /// The offset to commit (the first one not settled), until committed.
    to_commit: Option<i64>,
    /// The last offset put in `to_commit`: it only moves forward.
    marked: Option<i64>,
    paused: bool,
}

/// What a message waits behind: the earlier messages with the same value. `None` for every
/// message in [`Order::Partition`], and for records without a key in [`Order::Key`].
type OrderKey = Option<String>;

struct Fetched {
    offset: i64,
    message: Message,
    not_before: Option<Instant>,
}

/// A message handed out to the runner.
#[derive(Debug)]
pub(crate) struct Handout {
    pub(crate) partition: i32,
    pub(crate) generation: u64,
    pub(crate) offset: i64,
    pub(crate) message: Message,
}

/// What [`Partitions::take`] found.
#[derive(Debug)]
pub(crate) enum Take {
    Ready(Handout),
    /// Nothing to hand out now; look again at the instant, if any, or when woken.
    Wait(Option<Instant>),
    Closed,
}

impl Part {
    /// The first offset not settled, if it moved past the last one marked: to commit.
    fn advance(&mut self) {
        let first_unsettled = [
            self.queue.front().map(|f| f.offset),
            self.in_flight.keys().next().copied(),
        ]
        .into_iter()
        .flatten()
        .min()
        .or(self.settled_up_to);
        if let Some(offset) = first_unsettled
            && self.marked.is_none_or(|m| offset > m)
        {
            self.marked = Some(offset);
            self.to_commit = Some(offset);
        }
    }
}

impl Partitions {
    /// Partitions handed out in `order`.
    pub(crate) fn new(order: Order) -> Self {
        let partitions = Partitions::default();
        partitions.lock().order = order;
        partitions
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("the partitions' lock is never poisoned")
    }

    /// Partitions newly assigned to this consumer. One already held keeps its state.
    pub(crate) fn assign(&self, partitions: &[i32]) {
        let mut state = self.lock();
        state.generation += 1;
        let generation = state.generation;
        for &partition in partitions {
            state.parts.entry(partition).or_insert_with(|| Part {
                generation,
                queue: VecDeque::new(),
                in_flight: BTreeMap::new(),
                settled_up_to: None,
                to_commit: None,
                marked: None,
                paused: false,
            });
        }
    }

    /// `partition` starts at `offset`, the one stored with the effects: everything before it is
    /// done, so it is committed to Kafka too, even if nothing after it comes. Otherwise a group
    /// whose last commits were lost (a broker restart) would show that lag until new messages
    /// come. Nothing changes for a partition already past it.
    pub(crate) fn started_at(&self, partition: i32, offset: i64) {
        let mut state = self.lock();
        if let Some(part) = state.parts.get_mut(&partition)
            && part.marked.is_none_or(|m| offset > m)
            && part.queue.is_empty()
            && part.in_flight.is_empty()
            && part.settled_up_to.is_none()
        {
            part.marked = Some(offset);
            part.to_commit = Some(offset);
        }
    }

    /// A fetched message. Answers true when its partition now has too many queued, and is to
    /// be paused. A message of a partition not held (revoked meanwhile) is dropped: its new owner
    /// reads it from the committed offset.
    pub(crate) fn push(&self, partition: i32, offset: i64, message: Message) -> bool {
        let mut state = self.lock();
        let Some(part) = state.parts.get_mut(&partition) else {
            return false;
        };
        part.queue.push_back(Fetched {
            offset,
            message,
            not_before: None,
        });
        let pause = part.queue.len() > PAUSE_ABOVE && !part.paused;
        part.paused |= pause;
        drop(state);
        self.ready.notify_one();
        pause
    }

    /// The next message to handle: in each partition, the first queued one whose key has
    /// nothing in flight and nothing queued ahead of it; partitions in turn.
    pub(crate) fn take(&self, now: Instant) -> Take {
        let mut state = self.lock();
        if state.closed {
            return Take::Closed;
        }
        let order = state.order;
        let after = state.after;
        let turn: Vec<i32> = {
            let (later, first): (Vec<i32>, Vec<i32>) = state
                .parts
                .keys()
                .partition(|&&p| after.is_none_or(|a| p > a));
            later.into_iter().chain(first).collect()
        };
        let mut wake: Option<Instant> = None;
        for partition in turn {
            let part = state.parts.get_mut(&partition).expect("listed above");
            let Some(at) = first_ready(part, order, now, &mut wake) else {
                continue;
            };
            let head = part.queue.remove(at).expect("found above");
            part.in_flight
                .insert(head.offset, order_key(order, &head.message));
            let generation = part.generation;
            state.after = Some(partition);
            return Take::Ready(Handout {
                partition,
                generation,
                offset: head.offset,
                message: head.message,
            });
        }
        Take::Wait(wake)
    }

    /// The message in flight at `offset` is done. False if the partition changed hands since
    /// it was handed out (nothing is recorded then).
    pub(crate) fn ack(&self, partition: i32, generation: u64, offset: i64) -> bool {
        self.settle(partition, generation, offset, |part| {
            part.settled_up_to = Some(part.settled_up_to.map_or(offset + 1, |s| s.max(offset + 1)));
            part.advance();
        })
    }

    /// The message in flight goes back to its place in its partition, to be handed out again
    /// after `after`. False if the partition changed hands.
    pub(crate) fn give_back(&self, handout: &Handout, after: Duration) -> bool {
        let not_before = Some(Instant::now() + after);
        self.settle(
            handout.partition,
            handout.generation,
            handout.offset,
            |part| {
                let at = part.queue.partition_point(|f| f.offset < handout.offset);
                part.queue.insert(
                    at,
                    Fetched {
                        offset: handout.offset,
                        message: handout.message.clone(),
                        not_before,
                    },
                );
            },
        )
    }

    fn settle(
        &self,
        partition: i32,
        generation: u64,
        offset: i64,
        then: impl FnOnce(&mut Part),
    ) -> bool {
        let mut state = self.lock();
        let held = match state.parts.get_mut(&partition) {
            Some(part) if part.generation == generation && part.in_flight.contains_key(&offset) => {
                part.in_flight.remove(&offset);
                then(part);
                true
            }
            _ => false,
        };
        drop(state);
        self.settled.notify_all();
        self.ready.notify_one();
        held
    }

    /// Offsets to commit now, taken out (put them back with [`uncommitted`](Self::uncommitted)
    /// if the commit fails).
    pub(crate) fn to_commit(&self) -> Vec<(i32, i64)> {
        let mut state = self.lock();
        state
            .parts
            .iter_mut()
            .filter_map(|(&p, part)| part.to_commit.take().map(|o| (p, o)))
            .collect()
    }

    /// Offsets whose commit failed, to be tried again (unless a later one is waiting already,
    /// or the partition is gone).
    pub(crate) fn uncommitted(&self, offsets: &[(i32, i64)]) {
        let mut state = self.lock();
        for &(partition, offset) in offsets {
            if let Some(part) = state.parts.get_mut(&partition) {
                part.to_commit = Some(part.to_commit.map_or(offset, |o| o.max(offset)));
            }
        }
    }

    /// Paused partitions whose queue has drained enough to fetch again, marked resumed.
    pub(crate) fn to_resume(&self) -> Vec<i32> {
        let mut state = self.lock();
        state
            .parts
            .iter_mut()
            .filter(|(_, part)| part.paused && part.queue.len() <= RESUME_AT)
            .map(|(&p, part)| {
                part.paused = false;
                p
            })
            .collect()
    }

    /// Gives `partitions` up: drops what was not handed out, waits up to `wait` for the
    /// messages in flight to settle, and answers the offsets still to commit. A message still
    /// in flight after `wait` is released: its settlement will find the partition gone, and
    /// its next owner reads it again (the dedup store answers it as a duplicate if its effect
    /// did commit). Answers also the partitions whose message was released that way.
    pub(crate) fn revoke(&self, partitions: &[i32], wait: Duration) -> Revoked {
        let deadline = Instant::now() + wait;
        let mut state = self.lock();
        for partition in partitions {
            if let Some(part) = state.parts.get_mut(partition) {
                part.queue.clear();
            }
        }
        loop {
            let busy = partitions.iter().any(|p| {
                state
                    .parts
                    .get(p)
                    .is_some_and(|part| !part.in_flight.is_empty())
            });
            let now = Instant::now();
            if !busy || now >= deadline {
                break;
            }
            state = self
                .settled
                .wait_timeout(state, deadline - now)
                .expect("the partitions' lock is never poisoned")
                .0;
        }
        let mut revoked = Revoked::default();
        for partition in partitions {
            if let Some(part) = state.parts.remove(partition) {
                if let Some(offset) = part.to_commit {
                    revoked.to_commit.push((*partition, offset));
                }
                for offset in part.in_flight.keys() {
                    revoked.released.push((*partition, *offset));
                }
            }
        }
        revoked
    }

    /// No more messages: [`take`](Self::take) answers [`Take::Closed`] from now on.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_waiters();
        self.ready.notify_one();
    }

    /// Partitions held now.
    pub(crate) fn held(&self) -> Vec<i32> {
        self.lock().parts.keys().copied().collect()
    }
}

/// Where in `part`'s queue the first message ready to hand out is: its time has come, its key
/// has nothing in flight, and no message of its key is queued ahead of it. A message waiting
/// for its time sets `wake` to the earliest such time.
fn first_ready(
    part: &Part,
    order: Order,
    now: Instant,
    wake: &mut Option<Instant>,
) -> Option<usize> {
    let mut blocked: HashSet<Option<&str>> =
        part.in_flight.values().map(Option::as_deref).collect();
    for (at, fetched) in part.queue.iter().enumerate() {
        let key = order_key_ref(order, &fetched.message);
        if blocked.contains(&key) {
            continue;
        }
        match fetched.not_before.filter(|t| *t > now) {
            Some(time) => {
                *wake = Some(wake.map_or(time, |w| w.min(time)));
                // The rest of its key waits behind it.
                blocked.insert(key);
            }
            None => return Some(at),
        }
        if order == Order::Partition {
            return None;
        }
    }
    None
}

fn order_key(order: Order, message: &Message) -> OrderKey {
    order_key_ref(order, message).map(str::to_owned)
}

fn order_key_ref(order: Order, message: &Message) -> Option<&str> {
    match order {
        Order::Key => message.ordering_key(),
        Order::Partition => None,
    }
}

/// What a revocation left.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Revoked {
    /// `(partition, offset)` to commit before the partition goes.
    pub(crate) to_commit: Vec<(i32, i64)>,
    /// `(partition, offset)` of messages still in flight when the wait ran out.
    pub(crate) released: Vec<(i32, i64)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn message(n: i64) -> Message {
        Message::new(n.to_string().into_bytes(), "t")
    }

    fn keyed(n: i64, key: &str) -> Message {
        message(n).with_ordering_key(key)
    }

    fn handed(p: &Partitions) -> (i64, String) {
        let h = ready(p);
        (
            h.offset,
            h.message.ordering_key().unwrap_or_default().to_owned(),
        )
    }

    #[test]
    fn keys_run_beside_each_other_one_key_waits_its_turn_and_commits_stop_at_the_first_unsettled() {
        let p = Partitions::new(Order::Key);
        p.assign(&[0]);
        for (offset, key) in [(0, "a"), (1, "b"), (2, "a"), (3, "c")] {
            p.push(0, offset, keyed(offset, key));
        }
        assert_eq!(handed(&p), (0, "a".into()));
        assert_eq!(handed(&p), (1, "b".into()));
        assert_eq!(
            handed(&p),
            (3, "c".into()),
            "offset 2 waits for key a's offset 0"
        );
        assert!(matches!(p.take(Instant::now()), Take::Wait(None)));
        let generation = 1;
        assert!(p.ack(0, generation, 1));
        assert_eq!(p.to_commit(), vec![(0, 0)], "offset 0 is not settled yet");
        assert!(p.ack(0, generation, 0));
        assert_eq!(p.to_commit(), vec![(0, 2)], "offset 2 is queued");
        assert_eq!(
            handed(&p),
            (2, "a".into()),
            "key a's next, now that 0 is done"
        );
        assert!(p.ack(0, generation, 3));
        assert_eq!(p.to_commit(), vec![], "2 is still in flight");
        assert!(p.ack(0, generation, 2));
        assert_eq!(p.to_commit(), vec![(0, 4)], "all settled");
    }

    #[test]
    fn a_stored_start_is_committed_before_anything_comes_and_never_moves_a_partition_back() {
        let p = Partitions::new(Order::Partition);
        p.assign(&[0, 1]);
        p.started_at(0, 40);
        assert_eq!(
            p.to_commit(),
            vec![(0, 40)],
            "done before 40, though nothing came"
        );
        p.push(0, 40, message(40));
        assert_eq!(ready(&p).offset, 40);
        assert!(p.ack(0, 1, 40));
        assert_eq!(p.to_commit(), vec![(0, 41)]);
        p.started_at(0, 30);
        p.started_at(0, 50);
        assert_eq!(
            p.to_commit(),
            vec![],
            "a partition with progress keeps its own"
        );
    }

    #[test]
    fn a_message_given_back_holds_its_key_behind_it_and_no_other() {
        let p = Partitions::new(Order::Key);
        p.assign(&[0]);
        for (offset, key) in [(0, "a"), (1, "a"), (2, "b")] {
            p.push(0, offset, keyed(offset, key));
        }
        let first = ready(&p);
        assert!(p.give_back(&first, Duration::from_millis(200)));
        assert_eq!(handed(&p), (2, "b".into()), "another key goes on");
        let now = Instant::now();
        match p.take(now) {
            Take::Wait(Some(at)) => assert!(at > now),
            other => panic!("offset 1 must not overtake offset 0 of key a: {other:?}"),
        }
        let again = ready_at(&p, now + Duration::from_millis(250));
        assert_eq!(again.offset, 0);
    }

    #[test]
    fn partition_order_hands_out_one_message_at_a_time_whatever_the_keys() {
        let p = Partitions::new(Order::Partition);
        p.assign(&[0]);
        p.push(0, 0, keyed(0, "a"));
        p.push(0, 1, keyed(1, "b"));
        let first = ready(&p);
        assert!(matches!(p.take(Instant::now()), Take::Wait(None)));
        assert!(p.ack(0, first.generation, 0));
        assert_eq!(ready(&p).offset, 1);
    }

    fn ready(partitions: &Partitions) -> Handout {
        match partitions.take(Instant::now()) {
            Take::Ready(handout) => handout,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[test]
    fn one_message_per_partition_in_flight_and_partitions_in_turn() {
        let p = Partitions::default();
        p.assign(&[0, 1]);
        for offset in 0..3 {
            p.push(0, offset, message(offset));
            p.push(1, 10 + offset, message(10 + offset));
        }
        let a = ready(&p);
        let b = ready(&p);
        assert_eq!((a.partition, a.offset), (0, 0));
        assert_eq!((b.partition, b.offset), (1, 10));
        assert!(
            matches!(p.take(Instant::now()), Take::Wait(None)),
            "both partitions have one in flight"
        );
        assert!(p.ack(1, b.generation, 10));
        assert_eq!(ready(&p).offset, 11, "the next of partition 1, in order");
        assert_eq!(p.to_commit(), vec![(1, 11)]);
        assert_eq!(p.to_commit(), vec![], "taken out once");
    }

    #[test]
    fn a_message_given_back_stays_ahead_of_the_rest_of_its_partition() {
        let p = Partitions::default();
        p.assign(&[0]);
        p.push(0, 5, message(5));
        p.push(0, 6, message(6));
        let first = ready(&p);
        assert!(p.give_back(&first, Duration::from_millis(200)));
        let now = Instant::now();
        match p.take(now) {
            Take::Wait(Some(at)) => assert!(at > now, "waits for the given-back message"),
            other => panic!("offset 6 must not overtake offset 5: {other:?}"),
        }
        let again = ready_at(&p, now + Duration::from_millis(250));
        assert_eq!(again.offset, 5);
        assert!(p.ack(0, again.generation, 5));
        assert_eq!(ready(&p).offset, 6);
    }

    fn ready_at(p: &Partitions, at: Instant) -> Handout {
        match p.take(at) {
            Take::Ready(handout) => handout,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[test]
    fn a_settlement_from_before_a_reassignment_changes_nothing() {
        let p = Partitions::default();
        p.assign(&[0]);
        p.push(0, 1, message(1));
        let stale = ready(&p);
        let revoked = p.revoke(&[0], Duration::ZERO);
        assert_eq!(revoked.released, vec![(0, 1)]);
        p.assign(&[0]);
        assert!(
            !p.ack(0, stale.generation, 1),
            "the partition changed hands"
        );
        assert!(!p.give_back(&stale, Duration::ZERO));
        assert_eq!(p.to_commit(), vec![], "no offset from the earlier owner");
    }

    #[test]
    fn a_revocation_waits_for_the_message_in_flight_and_commits_it() {
        let p = Arc::new(Partitions::default());
        p.assign(&[0, 1]);
        p.push(0, 7, message(7));
        p.push(0, 8, message(8));
        let handout = ready(&p);
        let acker = {
            let p = p.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                assert!(p.ack(0, handout.generation, 7));
            })
        };
        let revoked = p.revoke(&[0], Duration::from_secs(10));
        acker.join().unwrap();
        assert_eq!(revoked.to_commit, vec![(0, 7 + 1)]);
        assert_eq!(revoked.released, vec![]);
        assert_eq!(p.held(), vec![1], "partition 1 stays");
        assert!(
            matches!(p.take(Instant::now()), Take::Wait(None)),
            "offset 8 was dropped with the partition"
        );
    }

    #[test]
    fn a_full_partition_pauses_and_resumes_once_drained() {
        let p = Partitions::default();
        p.assign(&[3]);
        let mut pauses = 0;
        for offset in 0..=PAUSE_ABOVE as i64 + 5 {
            pauses += usize::from(p.push(3, offset, message(offset)));
        }
        assert_eq!(pauses, 1, "paused once");
        assert_eq!(p.to_resume(), Vec::<i32>::new());
        while p.to_resume().is_empty() {
            let h = ready(&p);
            assert!(p.ack(3, h.generation, h.offset));
        }
        assert!(p.to_resume().is_empty(), "resumed once");
    }

    #[test]
    fn failed_commits_are_tried_again_unless_overtaken() {
        let p = Partitions::default();
        p.assign(&[0]);
        p.push(0, 1, message(1));
        p.push(0, 2, message(2));
        let a = ready(&p);
        p.ack(0, a.generation, 1);
        let failed = p.to_commit();
        let b = ready(&p);
        p.ack(0, b.generation, 2);
        p.uncommitted(&failed);
        assert_eq!(p.to_commit(), vec![(0, 3)]);
    }
}
