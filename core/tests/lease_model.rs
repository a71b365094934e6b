//! The lease protocol, model-checked: every interleaving of a few deliveries of one key (claim,
//! effect, renew, complete, release, give up), a clock that moves a millisecond at a time and,
//! in some models, a process paused (SIGSTOP) for as long as the clock runs. The store's side of
//! each step is the real rule every record-keeping store calls ([`oncely_core::lifecycle`]:
//! `decide_claim`, `check_holder`, `complete_record`), applied atomically as a store does.
//!
//! A breadth-first search visits every reachable state once and checks, in each:
//!
//! 1. at most one holder completes the key within its retention (after it, the key is forgotten
//!    by design, and the counts start again);
//! 2. no claim is granted while a completed record is retained (a completed key is not
//!    executed again within retention);
//! 3. a released key was not executed by the holder that released it (the HTTP layer's rule:
//!    release only when the request provably had no effect);
//! 4. an effect outside the store runs twice only after a holder was paused past its lease or
//!    lost the answer of an effect it sent (the outcome was unknown): never from slowness alone,
//!    since a running holder renews its lease before it ends;
//! 5. an effect in the store's own transaction (the inbox) is applied at most once, pauses and
//!    all: it commits only with a fenced complete;
//! 6. only the delivery last granted the key renews, completes or releases its record (the
//!    fencing token at work: a holder that lost the key, woken from a pause, changes nothing).
//!
//! Each model must also reach the states that show the checks are not vacuous: a takeover of an
//! expired lease, a fenced complete refused, a duplicate answered, and where pauses or lost
//! answers exist, the second execution that property 4 allows.
//!
//! What it abstracts away: time is discrete (1 ms steps, a 3 ms lease, 5 ms retention, a
//! 14 ms horizon); the renewal heartbeat is "a running holder renews before its lease ends"
//! rather than a period; one key and one scope (keys are independent in every store); tokens are
//! distinct per delivery (they are random 64-bit numbers); fingerprints, batches and the purge
//! are out (the model test in `oncely_conformance::model` covers them against every store).

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use oncely_core::lifecycle::{check_holder, complete_record, decide_claim};
use oncely_core::{Claim, ClaimOutcome, ClaimRequest, Key, Record, RecordState, Scope, Timestamp};

const LEASE: i64 = 3;
const RETENTION: i64 = 5;
const HORIZON: i64 = 14;

/// Where the effect lives.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Effect {
    /// Another process (an HTTP upstream, an email): sent, then answered or not.
    Outside,
    /// The store's own database, in the transaction that completes the claim (the inbox).
    InTransaction,
}

/// One model: what the deliveries do and what may happen to them.
#[derive(Clone, Copy, Debug)]
struct Model {
    deliveries: usize,
    effect: Effect,
    /// A delivery may be paused (SIGSTOP) at any point, for any time, then resumed.
    pauses: bool,
    /// The answer of a sent effect may be lost (a connection cut after sending): the holder
    /// keeps the key until its lease ends, as the HTTP layer does.
    lost_answers: bool,
}

/// The record as the store keeps it, in the model's terms.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Stored {
    completed: bool,
    token: u64,
    attempt: u32,
    created_at: i64,
    expires_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Phase {
    /// Not claimed yet (or told the key is in progress: it tries again).
    Ready,
    /// Holds a claim granted at `claimed_at`; `sent` once its effect left (outside effects).
    Holding {
        attempt: u32,
        claimed_at: i64,
        lease_until: i64,
        sent: bool,
    },
    /// Done with the key, however it ended.
    Finished,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Delivery {
    phase: Phase,
    paused: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct World {
    now: i64,
    record: Option<Stored>,
    /// The delivery last granted the key (by the grants, not by tokens), while it is claimed.
    granted: Option<usize>,
    deliveries: Vec<Delivery>,
    /// Effects applied (outside: sent; in transaction: committed).
    effects: u8,
    /// Completes that succeeded, and the time of the last.
    completions: u8,
    completed_at: Option<i64>,
    /// A pause outlived a lease, or a sent effect's answer was lost: property 4's excuses.
    excused: bool,
    /// Seen along the way, for the non-vacuity checks.
    took_over: bool,
    fenced: bool,
    duplicate: bool,
    retention_ended: bool,
}

/// What the search found across every state.
#[derive(Debug, Default)]
struct Explored {
    states: usize,
    took_over: bool,
    fenced: bool,
    duplicate: bool,
    twice: bool,
    retention_ended: bool,
}

fn token(delivery: usize) -> u64 {
    1_000 + delivery as u64
}

fn record_of(stored: &Stored) -> Record {
    Record {
        scope: Scope::new("model").unwrap(),
        key: Key::new("k").unwrap(),
        state: if stored.completed {
            RecordState::Completed {
                outcome: b"done".to_vec(),
            }
        } else {
            RecordState::InProgress
        },
        fingerprint: None,
        token: stored.token,
        attempt: stored.attempt,
        created_at: Timestamp::from_millis(stored.created_at),
        expires_at: Timestamp::from_millis(stored.expires_at),
    }
}

fn stored_of(record: &Record) -> Stored {
    Stored {
        completed: record.is_completed(),
        token: record.token,
        attempt: record.attempt,
        created_at: record.created_at.as_millis(),
        expires_at: record.expires_at.as_millis(),
    }
}

fn claim_of(delivery: usize, attempt: u32, claimed_at: i64, lease_until: i64) -> Claim {
    Claim {
        scope: Scope::new("model").unwrap(),
        key: Key::new("k").unwrap(),
        token: token(delivery),
        attempt,
        fingerprint: None,
        claimed_at: Timestamp::from_millis(claimed_at),
        lease_until: Timestamp::from_millis(lease_until),
    }
}

/// The store's fenced check for delivery `d`'s claim: `Ok` when it still holds the key.
fn holds(world: &World, d: usize, attempt: u32, claimed_at: i64, lease_until: i64) -> bool {
    let record = world.record.as_ref().map(record_of);
    check_holder(
        record.as_ref(),
        &claim_of(d, attempt, claimed_at, lease_until),
    )
    .is_ok()
}

/// Every state one step from `world`.
fn successors(model: &Model, world: &World) -> Vec<World> {
    let mut next = Vec::new();
    // The clock moves, unless a running holder must renew first: it renews before its lease
    // ends (the heartbeat), so only a paused holder's lease runs out.
    let must_renew = world.deliveries.iter().enumerate().any(|(d, delivery)| {
        !delivery.paused
            && matches!(delivery.phase, Phase::Holding { .. })
            && world
                .record
                .as_ref()
                .is_some_and(|r| !r.completed && r.token == token(d) && r.expires_at <= world.now)
    });
    if world.now < HORIZON && !must_renew {
        let mut w = world.clone();
        w.now += 1;
        for (d, delivery) in w.deliveries.iter().enumerate() {
            let lapses = w
                .record
                .as_ref()
                .is_some_and(|r| !r.completed && r.token == token(d) && r.expires_at == world.now);
            if delivery.paused && lapses {
                w.excused = true;
            }
        }
        next.push(w);
    }
    for (d, delivery) in world.deliveries.iter().enumerate() {
        if model.pauses {
            let mut w = world.clone();
            w.deliveries[d].paused = !delivery.paused;
            if delivery.phase != Phase::Finished {
                next.push(w);
            }
        }
        if delivery.paused {
            continue;
        }
        match delivery.phase {
            Phase::Ready => next.extend(claim(world, d)),
            Phase::Holding {
                attempt,
                claimed_at,
                lease_until,
                sent,
            } => {
                let held = holds(world, d, attempt, claimed_at, lease_until);
                // Property 6: only the delivery last granted the key may change its record.
                if held {
                    assert_eq!(
                        world.granted,
                        Some(d),
                        "a holder that lost the key may change its record: {world:?}"
                    );
                }
                let finish = |w: &mut World| w.deliveries[d].phase = Phase::Finished;
                // Renew: fenced like complete.
                if held {
                    let mut w = world.clone();
                    let until = world.now + LEASE;
                    if let Some(r) = w.record.as_mut() {
                        r.expires_at = until;
                    }
                    w.deliveries[d].phase = Phase::Holding {
                        attempt,
                        claimed_at,
                        lease_until: until,
                        sent,
                    };
                    if w != *world {
                        next.push(w);
                    }
                }
                match (model.effect, sent) {
                    (Effect::Outside, false) => {
                        // The effect leaves the process: it happens, whatever follows.
                        let mut w = world.clone();
                        w.effects += 1;
                        w.deliveries[d].phase = Phase::Holding {
                            attempt,
                            claimed_at,
                            lease_until,
                            sent: true,
                        };
                        next.push(w);
                        // Or it never left (the upstream refused the connection): released.
                        next.push(released(world, d, held));
                    }
                    (Effect::Outside, true) => {
                        // Answered: complete, fenced.
                        let mut w = world.clone();
                        complete(&mut w, held);
                        finish(&mut w);
                        next.push(w);
                        if model.lost_answers {
                            // The answer is lost: the outcome is unknown, so the key is kept
                            // (not released) until its lease ends.
                            let mut w = world.clone();
                            w.excused = true;
                            finish(&mut w);
                            next.push(w);
                        }
                    }
                    (Effect::InTransaction, _) => {
                        // One transaction: the effect commits only with the fenced complete.
                        let mut w = world.clone();
                        if held {
                            w.effects += 1;
                        }
                        complete(&mut w, held);
                        finish(&mut w);
                        next.push(w);
                        // Or the transaction fails before its effect: released.
                        next.push(released(world, d, held));
                    }
                }
            }
            Phase::Finished => {}
        }
    }
    next
}

/// Delivery `d` gives the key back, fenced like complete (a release by a holder that lost the
/// key changes nothing), and is done with it.
fn released(world: &World, d: usize, held: bool) -> World {
    let mut w = world.clone();
    if held {
        w.record = None;
        w.granted = None;
    }
    w.deliveries[d].phase = Phase::Finished;
    w
}

/// Delivery `d` claims the key, by the store's rule.
fn claim(world: &World, d: usize) -> Option<World> {
    let request = ClaimRequest {
        scope: Scope::new("model").unwrap(),
        key: Key::new("k").unwrap(),
        fingerprint: None,
        lease: Duration::from_millis(LEASE as u64),
        token: token(d),
    };
    let existing = world.record.as_ref().map(record_of);
    let decision = decide_claim(
        existing.as_ref(),
        &request,
        Timestamp::from_millis(world.now),
    );
    let mut w = world.clone();
    match decision.outcome {
        ClaimOutcome::New(granted) => {
            // Property 2: no claim while a completed record is retained.
            if let Some(at) = world.completed_at {
                assert!(
                    world.now > at + RETENTION,
                    "a completed key was granted again within retention: {world:?}"
                );
            }
            w.took_over |= existing.as_ref().is_some_and(|r| !r.is_completed());
            if existing.as_ref().is_some_and(|r| r.is_completed()) {
                // Retention ended: the key is forgotten, by design; a new round of it begins.
                w.effects = 0;
                w.completions = 0;
                w.completed_at = None;
                w.retention_ended = true;
            }
            w.record = decision.write.as_ref().map(stored_of);
            w.granted = Some(d);
            w.deliveries[d].phase = Phase::Holding {
                attempt: granted.attempt,
                claimed_at: granted.claimed_at.as_millis(),
                lease_until: granted.lease_until.as_millis(),
                sent: false,
            };
        }
        ClaimOutcome::Duplicate(_) => {
            w.duplicate = true;
            w.deliveries[d].phase = Phase::Finished;
        }
        // Tries again later: nothing changed.
        ClaimOutcome::InProgress { .. } => return None,
        ClaimOutcome::Conflict { .. } => unreachable!("no fingerprints in the model"),
    }
    Some(w)
}

/// The fenced complete of a holder that `held` (or no longer does).
fn complete(w: &mut World, held: bool) {
    if !held {
        w.fenced = true;
        return;
    }
    let mut record = record_of(w.record.as_ref().expect("a held record"));
    complete_record(
        &mut record,
        b"done",
        Timestamp::from_millis(w.now + RETENTION),
    );
    w.record = Some(stored_of(&record));
    w.completions += 1;
    w.completed_at = Some(w.now);
}

/// Properties 1, 3, 4 and 5, in one state.
fn check(model: &Model, world: &World) {
    assert!(world.completions <= 1, "completed twice: {world:?}");
    match model.effect {
        Effect::Outside => assert!(
            world.effects <= 1 || world.excused,
            "executed twice with no pause and no lost answer: {world:?}"
        ),
        Effect::InTransaction => assert!(world.effects <= 1, "applied twice: {world:?}"),
    }
}

fn explore(model: Model) -> Explored {
    let start = World {
        now: 0,
        record: None,
        granted: None,
        deliveries: vec![
            Delivery {
                phase: Phase::Ready,
                paused: false,
            };
            model.deliveries
        ],
        effects: 0,
        completions: 0,
        completed_at: None,
        excused: false,
        took_over: false,
        fenced: false,
        duplicate: false,
        retention_ended: false,
    };
    let mut seen = HashSet::from([start.clone()]);
    let mut queue = VecDeque::from([start]);
    let mut explored = Explored::default();
    while let Some(world) = queue.pop_front() {
        check(&model, &world);
        explored.states += 1;
        explored.took_over |= world.took_over;
        explored.fenced |= world.fenced;
        explored.duplicate |= world.duplicate;
        explored.twice |= world.effects >= 2;
        explored.retention_ended |= world.retention_ended;
        for next in successors(&model, &world) {
            if seen.insert(next.clone()) {
                queue.push_back(next);
            }
        }
    }
    explored
}

/// Property 3 is structural in the model (a delivery releases only on the branch where its
/// effect never left); this checks the store's side of it: a release by a holder that lost the
/// key changes nothing, so it cannot free a key another holder executed.
#[test]
fn a_release_by_a_holder_that_lost_the_key_frees_nothing() {
    let taken = Stored {
        completed: false,
        token: token(1),
        attempt: 2,
        created_at: 4,
        expires_at: 7,
    };
    let world = World {
        now: 5,
        record: Some(taken),
        granted: Some(1),
        deliveries: vec![],
        effects: 1,
        completions: 0,
        completed_at: None,
        excused: false,
        took_over: true,
        fenced: false,
        duplicate: false,
        retention_ended: false,
    };
    assert!(
        !holds(&world, 0, 1, 0, 3),
        "delivery 0's claim was taken over"
    );
    assert!(holds(&world, 1, 2, 4, 7));
}

#[test]
fn running_holders_never_execute_twice() {
    let explored = explore(Model {
        deliveries: 3,
        effect: Effect::Outside,
        pauses: false,
        lost_answers: false,
    });
    eprintln!("{explored:?}");
    assert!(
        explored.duplicate,
        "a later delivery is told it is a duplicate"
    );
    assert!(
        explored.retention_ended,
        "and once retention ended, the key is claimed anew"
    );
    assert!(!explored.twice, "no pause, no lost answer: one execution");
    // A released key is claimed again: a takeover of nothing, not of a live lease.
    assert!(explored.states > 1_000);
}

#[test]
fn a_paused_holder_may_execute_again_but_is_fenced_from_completing() {
    let explored = explore(Model {
        deliveries: 2,
        effect: Effect::Outside,
        pauses: true,
        lost_answers: false,
    });
    eprintln!("{explored:?}");
    assert!(explored.took_over, "a paused holder's lease is taken over");
    assert!(explored.fenced, "it wakes and its complete is refused");
    assert!(
        explored.twice,
        "it wakes and executes a second time: why effects outside the store need the inbox or the \
         downstream's own idempotency key"
    );
}

#[test]
fn a_lost_answer_keeps_the_key_until_its_lease_ends() {
    let explored = explore(Model {
        deliveries: 2,
        effect: Effect::Outside,
        pauses: false,
        lost_answers: true,
    });
    eprintln!("{explored:?}");
    assert!(explored.took_over && explored.twice);
}

#[test]
fn the_inbox_applies_once_whatever_pauses() {
    let explored = explore(Model {
        deliveries: 3,
        effect: Effect::InTransaction,
        pauses: true,
        lost_answers: false,
    });
    eprintln!("{explored:?}");
    assert!(explored.took_over && explored.fenced && explored.duplicate);
    assert!(!explored.twice);
}
