//! Group commit for server stores: concurrent single calls share one transaction.
//!
//! A PostgreSQL or MySQL commit costs a round trip and a log flush whatever it holds, so a
//! thousand concurrent handlers that each claim, then complete, one key over a pool of eight
//! connections run at the pool's commit rate. [`GroupCommit`] turns the concurrent single calls
//! into batches: [`claim`](GroupCommit::claim) calls become one
//! [`Store::claim_many`], [`complete`](GroupCommit::complete) calls
//! one [`Store::complete_many`]. A store keeps one and routes its
//! `claim` and `complete` through it; its `claim_many` and `complete_many` stay direct, so an
//! explicit batch keeps its in-order semantics.
//!
//! ## How a batch forms
//!
//! There is no background task (this crate has no runtime): the callers do the work. A call
//! that finds fewer than `max_in_flight` batches running becomes a **leader**: it takes its own
//! request plus up to `max_batch - 1` waiting ones, runs them as one batch and hands each waiter
//! its answer. A call that finds every slot busy queues and waits. When a leader's batch ends,
//! its slot passes to the oldest waiter, which leads the next batch with whatever queued
//! meanwhile. Under light load every call is its own batch of one, as if there were no
//! coalescing; under heavy load batches grow to what queued during one round trip.
//!
//! ## Semantics
//!
//! - Each caller gets the answer its own request got in the batch, as if the batch were a
//!   sequence of single calls in some order (the order among concurrent callers is not
//!   defined). Two concurrent claims of one key still give one `New`.
//! - A batch of claims is decided at the latest `now` among its requests: a request is decided
//!   a little later than it was made, as with any queueing in front of a store.
//! - An error of the whole batch is every member's error.
//!
//! ## Cancellation
//!
//! A waiter that gives up (its future is dropped) before its batch starts is left out of the
//! batch: nothing is done for it. A leader that is dropped mid-batch (its transaction rolls
//! back, or may already have committed) can no longer tell its waiters what happened: they get
//! [`Error::Backend`] saying the outcome is unknown, never a guessed answer. A claim in such a
//! batch that did commit is held until its lease runs out, exactly like a claim whose holder
//! crashed. The slot of a dropped leader passes on, so the queue never stalls.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

use crate::{Claim, ClaimOutcome, ClaimRequest, Completion, Error, Result, Store, Timestamp};

/// Batches in flight per kind of call, unless a store says otherwise.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;
/// Most requests in one batch, unless a store says otherwise.
pub const DEFAULT_MAX_BATCH: usize = 1000;

/// Coalesces concurrent `claim` and `complete` calls into batches. See the module docs.
///
/// Cheap to clone; clones share the queues.
#[derive(Clone)]
pub struct GroupCommit {
    claims: Arc<Queue<(ClaimRequest, Timestamp), ClaimOutcome>>,
    completes: Arc<Queue<Completion, ()>>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("store", &self.claims.store)
            .field("max_in_flight", &self.claims.max_in_flight)
            .field("max_batch", &self.claims.max_batch)
            .finish()
    }
}

impl GroupCommit {
    /// At most `max_in_flight` claim batches and as many complete batches at once (match it to
    /// the connections the store has), each of at most `max_batch` requests. `store` names the
    /// store in errors. Both limits are at least 1.
    pub fn new(store: &str, max_in_flight: usize, max_batch: usize) -> Self {
        let (max_in_flight, max_batch) = (max_in_flight.max(1), max_batch.max(1));
        GroupCommit {
            claims: Arc::new(Queue::new(store, max_in_flight, max_batch)),
            completes: Arc::new(Queue::new(store, max_in_flight, max_batch)),
        }
    }

    /// Claims one key through `store`, in a [`Store::claim_many`] batch shared with concurrent
    /// callers.
    pub async fn claim<S: Store + ?Sized>(
        &self,
        store: &S,
        request: &ClaimRequest,
        now: Timestamp,
    ) -> Result<ClaimOutcome> {
        self.claims
            .submit((request.clone(), now), |batch| async move {
                let now = batch.iter().map(|(_, now)| *now).max().unwrap_or(now);
                let requests: Vec<ClaimRequest> = batch.into_iter().map(|(r, _)| r).collect();
                crate::telemetry::grouped("claim", requests.len());
                let outcomes = store.claim_many(&requests, now).await?;
                Ok(outcomes.into_iter().map(Ok).collect())
            })
            .await
    }

    /// Completes one claim through `store`, in a [`Store::complete_many`] batch shared with
    /// concurrent callers.
    pub async fn complete<S: Store + ?Sized>(
        &self,
        store: &S,
        claim: &Claim,
        outcome: &[u8],
        expires_at: Timestamp,
    ) -> Result<()> {
        let item = Completion {
            claim: claim.clone(),
            outcome: outcome.to_vec(),
            expires_at,
        };
        self.completes
            .submit(item, |batch| async move {
                crate::telemetry::grouped("complete", batch.len());
                store.complete_many(&batch).await
            })
            .await
    }
}

/// One kind of call's queue: the waiters, and how many batches run.
struct Queue<R, T> {
    store: String,
    max_in_flight: usize,
    max_batch: usize,
    state: Mutex<State<R, T>>,
}

struct State<R, T> {
    waiting: VecDeque<Waiter<R, T>>,
    /// Slots held: running batches, plus slots handed to a waiter that has not woken yet.
    /// While anyone waits, every slot is held.
    in_flight: usize,
}

struct Waiter<R, T> {
    request: R,
    reply: oneshot::Sender<Reply<R, T>>,
}

/// What a waiter is woken with.
enum Reply<R, T> {
    /// Its batch ran: its own answer.
    Done(Result<T>),
    /// A slot passed to it: lead the next batch, starting with its own request.
    Lead(R, Slot<R, T>),
}

/// The right to run one batch. Dropping it, however that happens (the batch ended, the leader
/// was cancelled, a woken waiter vanished before reading it), passes the slot on.
struct Slot<R, T> {
    queue: Arc<Queue<R, T>>,
    armed: bool,
}

impl<R, T> Drop for Slot<R, T> {
    fn drop(&mut self) {
        if self.armed {
            self.armed = false;
            self.queue.hand_over();
        }
    }
}

impl<R, T> Queue<R, T> {
    fn new(store: &str, max_in_flight: usize, max_batch: usize) -> Self {
        Queue {
            store: store.to_owned(),
            max_in_flight,
            max_batch,
            state: Mutex::new(State {
                waiting: VecDeque::new(),
                in_flight: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<R, T>> {
        // Nothing panics while the lock is held; a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `request` in a batch, leading one or waiting for one; `run` answers a batch with one
    /// result per request, in order.
    async fn submit<F, Fut>(self: &Arc<Self>, request: R, run: F) -> Result<T>
    where
        F: FnOnce(Vec<R>) -> Fut,
        Fut: Future<Output = Result<Vec<Result<T>>>>,
    {
        let waiting = {
            let mut state = self.lock();
            if state.in_flight < self.max_in_flight {
                state.in_flight += 1;
                Err(request)
            } else {
                let (reply, answer) = oneshot::channel();
                state.waiting.push_back(Waiter { request, reply });
                Ok(answer)
            }
        };
        let (request, slot) = match waiting {
            Err(request) => (
                request,
                Slot {
                    queue: self.clone(),
                    armed: true,
                },
            ),
            Ok(answer) => match answer.await {
                Ok(Reply::Done(result)) => return result,
                Ok(Reply::Lead(request, slot)) => (request, slot),
                Err(_) => return Err(self.abandoned()),
            },
        };
        self.lead(request, slot, run).await
    }

    /// Runs a batch of `own` and what waits, holding `slot`; answers the waiters, then `own`.
    async fn lead<F, Fut>(&self, own: R, slot: Slot<R, T>, run: F) -> Result<T>
    where
        F: FnOnce(Vec<R>) -> Fut,
        Fut: Future<Output = Result<Vec<Result<T>>>>,
    {
        let mut batch = vec![own];
        let mut replies = Vec::new();
        {
            let mut state = self.lock();
            while batch.len() < self.max_batch {
                let Some(waiter) = state.waiting.pop_front() else {
                    break;
                };
                // A caller that gave up is left out: nothing is done on its behalf.
                if !waiter.reply.is_closed() {
                    batch.push(waiter.request);
                    replies.push(waiter.reply);
                }
            }
        }
        let size = batch.len();
        // If this future is dropped here, `replies` go with it: the waiters learn the batch was
        // abandoned, and `slot` passes on.
        let answered = run(batch).await;
        drop(slot);
        match answered {
            Ok(results) if results.len() == size => {
                let mut results = results.into_iter();
                let own = results.next().expect("a batch holds its leader's request");
                for (reply, result) in replies.into_iter().zip(results) {
                    // A waiter that gave up meanwhile just misses its answer.
                    let _ = reply.send(Reply::Done(result));
                }
                own
            }
            Ok(results) => {
                let error = Error::Corrupt {
                    store: self.store.clone(),
                    detail: format!("a batch of {size} was answered {} results", results.len()),
                };
                self.fail(replies, error)
            }
            Err(error) => self.fail(replies, error),
        }
    }

    /// Gives every waiter of a failed batch its own copy of `error`, and answers it.
    fn fail(&self, replies: Vec<oneshot::Sender<Reply<R, T>>>, error: Error) -> Result<T> {
        for reply in replies {
            let _ = reply.send(Reply::Done(Err(copy(&error))));
        }
        Err(error)
    }

    /// Passes a freed slot to the oldest waiter still waiting, or frees it.
    fn hand_over(self: &Arc<Self>) {
        let mut state = self.lock();
        while let Some(waiter) = state.waiting.pop_front() {
            let slot = Slot {
                queue: self.clone(),
                armed: true,
            };
            match waiter.reply.send(Reply::Lead(waiter.request, slot)) {
                Ok(()) => return,
                // Its caller gave up: its request is dropped unrun, and the slot tries the next.
                Err(Reply::Lead(_, mut slot)) => slot.armed = false,
                Err(Reply::Done(_)) => unreachable!("a slot was sent"),
            }
        }
        state.in_flight -= 1;
    }

    fn abandoned(&self) -> Error {
        Error::Backend {
            store: self.store.clone(),
            source: "the batch this call was part of was abandoned mid-flight (the call leading \
                     it was cancelled), so whether it took effect is unknown; a claim it made \
                     is held until its lease runs out"
                .into(),
        }
    }
}

/// The same error for another member of a failed batch (driver errors become their text).
fn copy(error: &Error) -> Error {
    match error {
        Error::InvalidKey(e) => Error::InvalidKey(e.clone()),
        Error::ClaimLost { scope, key, reason } => Error::ClaimLost {
            scope: scope.clone(),
            key: key.clone(),
            reason: *reason,
        },
        Error::StoreFull { capacity } => Error::StoreFull {
            capacity: *capacity,
        },
        Error::Unavailable { store, source } => Error::Unavailable {
            store: store.clone(),
            source: source.to_string().into(),
        },
        Error::Backend { store, source } => Error::Backend {
            store: store.clone(),
            source: source.to_string().into(),
        },
        Error::InvalidUrl { url, reason } => Error::InvalidUrl {
            url: url.clone(),
            reason: reason.clone(),
        },
        Error::Corrupt { store, detail } => Error::Corrupt {
            store: store.clone(),
            detail: detail.clone(),
        },
    }
}
