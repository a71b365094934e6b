//! Expiry at its exact millisecond, for every store.
//!
//! A record is live through its `expires_at` millisecond inclusive
//! ([`Record::is_expired`](oncely_core::Record::is_expired): expired at `now` when
//! `expires_at < now`). So at `expires_at` a claim answers `InProgress` or `Duplicate`, and one
//! millisecond later `New`; and [`Store::purge`]`(expired_before = t)` removes exactly the
//! records that expired before `t`, those whose `expires_at < t`: the ones a claim at `t` treats
//! as absent, never one on its last live millisecond.
//!
//! The store is driven with explicit timestamps, so each boundary is hit exactly. The cut-offs
//! sit on and one millisecond before an hour boundary, where a time-partitioned store's
//! partitions begin and end.

use std::sync::Arc;
use std::time::Duration;

use oncely_core::{
    Claim, ClaimOutcome, ClaimRequest, Clock, Error, Fingerprint, LostReason, ManualClock, Oncely,
    Scope, Store, Timestamp,
};

use crate::TestFuture;
use crate::suite::{LEASE, fp, key};

type Test = fn(Arc<dyn Store>) -> TestFuture;

macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        /// Every test of this module, by name; run beside [`crate::suite`] for every store.
        pub fn all() -> Vec<(&'static str, Test)> {
            vec![$((stringify!($name), (|s| Box::pin($name(s)) as TestFuture) as Test)),*]
        }
    };
}

tests!(
    a_record_is_live_through_its_expires_at_millisecond,
    purge_removes_exactly_the_records_that_expired_before_its_cutoff,
    stats_count_a_record_on_its_last_millisecond_as_live,
);

const HOUR: Duration = Duration::from_secs(3600);

/// Where the suite's clock starts: an hour boundary (2026-01-01T00:00:00Z).
fn start() -> Timestamp {
    ManualClock::default().now()
}

fn plus(t: Timestamp, ms: i64) -> Timestamp {
    Timestamp::from_millis(t.as_millis() + ms)
}

fn req(k: &str, fingerprint: Option<Fingerprint>, lease: Duration) -> ClaimRequest {
    ClaimRequest::new(Scope::default(), key(k), fingerprint, lease)
}

async fn claim_new(store: &dyn Store, request: &ClaimRequest, now: Timestamp) -> Claim {
    match store.claim(request, now).await.unwrap() {
        ClaimOutcome::New(claim) => claim,
        other => panic!("{} at {now:?}: expected New, got {other:?}", request.key),
    }
}

/// A lease claimed at `now` that runs out at `until`.
async fn held_until(store: &dyn Store, k: &str, now: Timestamp, until: Timestamp) -> Claim {
    let lease = Duration::from_millis((until.as_millis() - now.as_millis()) as u64);
    let claim = claim_new(store, &req(k, fp("p"), lease), now).await;
    assert_eq!(claim.lease_until, until);
    claim
}

/// A record claimed at `now`, completed and retained until `until`.
async fn done_until(store: &dyn Store, k: &str, now: Timestamp, until: Timestamp) -> Claim {
    let claim = claim_new(store, &req(k, fp("p"), LEASE), now).await;
    store.complete(&claim, k.as_bytes(), until).await.unwrap();
    claim
}

async fn a_record_is_live_through_its_expires_at_millisecond(store: Arc<dyn Store>) {
    let t0 = start();
    let end = t0.saturating_add(LEASE);
    let held = held_until(&*store, "held", t0, end).await;
    let done = done_until(&*store, "done", t0, end).await;

    // On its last millisecond each record is live: a lease still held, an outcome replayed,
    // another payload a conflict. Single claims and batches agree.
    assert_eq!(
        store
            .claim(&req("held", fp("p"), LEASE), end)
            .await
            .unwrap(),
        ClaimOutcome::InProgress {
            retry_after: Duration::from_millis(1)
        },
        "a lease on its last millisecond"
    );
    match store
        .claim(&req("done", fp("p"), LEASE), end)
        .await
        .unwrap()
    {
        ClaimOutcome::Duplicate(rec) => {
            assert_eq!(rec.outcome(), Some(&b"done"[..]));
            assert_eq!(rec.expires_at, end);
        }
        other => panic!("a completed record on its last millisecond: {other:?}"),
    }
    let outcomes = store
        .claim_many(
            &[
                req("held", fp("p"), LEASE),
                req("done", fp("p"), LEASE),
                req("held", fp("q"), LEASE),
                req("done", fp("q"), LEASE),
            ],
            end,
        )
        .await
        .unwrap();
    let kinds: Vec<_> = outcomes.iter().map(ClaimOutcome::kind).collect();
    assert_eq!(
        kinds,
        ["in_progress", "duplicate", "conflict", "conflict"],
        "a batch at the records' last millisecond"
    );
    // Nothing has expired before `end`: a purge there removes nothing, and the holder still
    // holds its claim.
    assert_eq!(store.purge(end, 100).await.unwrap(), 0);
    assert_eq!(
        store
            .get(&Scope::default(), &key("held"))
            .await
            .unwrap()
            .map(|r| r.token),
        Some(held.token)
    );

    // One millisecond later both have expired: the keys are new, even for another payload.
    let after = plus(end, 1);
    let takeover = claim_new(&*store, &req("held", fp("q"), LEASE), after).await;
    assert_eq!(takeover.attempt, 2);
    assert_ne!(takeover.token, held.token);
    let outcomes = store
        .claim_many(&[req("done", fp("q"), LEASE)], after)
        .await
        .unwrap();
    match &outcomes[..] {
        [ClaimOutcome::New(again)] => {
            assert_eq!(again.attempt, 2);
            assert_ne!(again.token, done.token);
        }
        other => panic!("a completed record 1 ms after its retention: {other:?}"),
    }
    match store.complete(&held, b"late", plus(after, 1000)).await {
        Err(Error::ClaimLost {
            reason: LostReason::TakenOver,
            ..
        }) => {}
        other => panic!("the holder of a lease taken over: {other:?}"),
    }

    // Through `Oncely` with its clock: the same boundary, and `purge(ZERO)` at `now` removes
    // exactly what a claim at `now` treats as absent.
    let clock = ManualClock::new(after);
    let oncely = Oncely::new(store.clone()).with_clock(clock.clone());
    let last = takeover.lease_until;
    clock.set(last);
    assert!(
        oncely
            .get(&Scope::default(), &key("held"))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(oncely.purge(Duration::ZERO, 100).await.unwrap(), 0);
    clock.set(plus(last, 1));
    assert_eq!(
        oncely.get(&Scope::default(), &key("held")).await.unwrap(),
        None
    );
    // Both takeovers' leases ran out at `last`.
    assert_eq!(oncely.purge(Duration::ZERO, 100).await.unwrap(), 2);
}

/// The keys of one cut-off's records: a lease and a completed record ending 1 ms before the
/// cut-off, on it, and 1 ms after it.
fn records_around(tag: &str) -> Vec<(String, i64)> {
    [-1, 0, 1]
        .into_iter()
        .flat_map(|d| {
            [
                (format!("{tag}-held{d:+}"), d),
                (format!("{tag}-done{d:+}"), d),
            ]
        })
        .collect()
}

async fn purge_removes_exactly_the_records_that_expired_before_its_cutoff(store: Arc<dyn Store>) {
    let t0 = start();
    // On an hour boundary, then 1 ms before one: the records straddle a partition's end both
    // ways.
    let cutoffs = [
        ("on-hour", t0.saturating_add(HOUR)),
        ("before-hour", plus(t0.saturating_add(HOUR * 2), -1)),
    ];
    for (tag, cutoff) in cutoffs {
        let records = records_around(tag);
        for (k, d) in &records {
            let until = plus(cutoff, *d);
            if k.contains("held") {
                held_until(&*store, k, t0, until).await;
            } else {
                done_until(&*store, k, t0, until).await;
            }
        }
        let present = async |store: &dyn Store| {
            let mut present = Vec::new();
            for (k, _) in &records {
                if store
                    .get(&Scope::default(), &key(k))
                    .await
                    .unwrap()
                    .is_some()
                {
                    present.push(k.clone());
                }
            }
            present
        };
        let those = |pick: &dyn Fn(i64) -> bool| -> Vec<String> {
            records
                .iter()
                .filter(|(_, d)| pick(*d))
                .map(|(k, _)| k.clone())
                .collect()
        };
        // The records that expired before the cut-off go; the ones on their last millisecond
        // at the cut-off stay.
        assert_eq!(
            store.purge(cutoff, 100).await.unwrap(),
            2,
            "{tag}: purge({cutoff:?}) removes the two records whose expires_at is 1 ms before it"
        );
        assert_eq!(present(&*store).await, those(&|d| d >= 0), "{tag}");
        assert_eq!(store.purge(cutoff, 100).await.unwrap(), 0, "{tag}");
        // A claim at the cut-off agrees: the purged keys are new, the kept ones live.
        for (k, d) in &records {
            let outcome = store
                .claim_many(&[req(k, fp("p"), LEASE)], cutoff)
                .await
                .unwrap()
                .remove(0);
            let want = match (d, k.contains("held")) {
                (-1, _) => "new",
                (_, true) => "in_progress",
                (_, false) => "duplicate",
            };
            assert_eq!(outcome.kind(), want, "{k} at {cutoff:?}");
            if let ClaimOutcome::New(claim) = outcome {
                store.release(&claim).await.unwrap();
            }
        }
        assert_eq!(
            store.purge(plus(cutoff, 1), 100).await.unwrap(),
            2,
            "{tag}: purge(cutoff + 1 ms) removes the two records whose expires_at is the cut-off"
        );
        assert_eq!(present(&*store).await, those(&|d| d >= 1), "{tag}");
        assert_eq!(store.purge(plus(cutoff, 2), 100).await.unwrap(), 2, "{tag}");
        assert_eq!(present(&*store).await, those(&|_| false), "{tag}");
    }
}

async fn stats_count_a_record_on_its_last_millisecond_as_live(store: Arc<dyn Store>) {
    let t0 = start();
    let cutoff = t0.saturating_add(HOUR);
    for (k, d) in records_around("stats") {
        let until = plus(cutoff, d);
        if k.contains("held") {
            held_until(&*store, &k, t0, until).await;
        } else {
            done_until(&*store, &k, t0, until).await;
        }
    }
    let counts = |at: Timestamp| {
        let store = store.clone();
        async move {
            let s = store.stats(at).await.unwrap();
            (s.records, s.in_progress, s.completed, s.expired)
        }
    };
    // (records, in progress, completed, expired)
    assert_eq!(counts(plus(cutoff, -1)).await, (6, 3, 3, 0));
    assert_eq!(counts(cutoff).await, (6, 2, 2, 2));
    assert_eq!(counts(plus(cutoff, 1)).await, (6, 1, 1, 4));
    assert_eq!(counts(plus(cutoff, 2)).await, (6, 0, 0, 6));
}
