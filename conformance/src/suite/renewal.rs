//! Lease renewal (`Store::extend`, `Oncely::extend`, `Oncely::renewing`): on a manual clock, then
//! paced by real time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use oncely_core::{ClaimOutcome, Clock, LostReason, Oncely, RunError, RunOutcome, Scope, Store};

use super::{LEASE, REAL_LEASE, RETENTION, expect_lost, expect_new, fp, key, scope, setup};

tests!(
    renewal_keeps_a_takeover_out_for_one_more_lease,
    holder_past_its_lease_may_still_renew_if_nobody_took_over,
    stale_token_cannot_renew,
    renewal_after_expiry_and_takeover_fails_and_spares_the_new_holder,
    completed_record_cannot_be_renewed,
    released_key_cannot_be_renewed,
    slow_handler_keeps_its_lease_and_runs_once_against_a_retrying_competitor,
    holder_that_stops_renewing_is_taken_over_about_one_lease_later,
);

async fn renewal_keeps_a_takeover_out_for_one_more_lease(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store.clone());
    let s = Scope::default();
    let mut holder = expect_new(oncely.claim(&s, &key("a"), fp("p")).await.unwrap());
    let first_deadline = holder.lease_until;
    clock.advance(LEASE * 2 / 3);
    oncely.extend(&mut holder).await.unwrap();
    let renewed = clock.now().saturating_add(LEASE);
    assert_eq!(holder.lease_until, renewed);
    // Renewing to the deadline already stored is still a renewal, not a lost claim.
    oncely.extend(&mut holder).await.unwrap();
    let rec = store.get(&s, &key("a")).await.unwrap().unwrap();
    assert_eq!(
        (rec.expires_at, rec.token, rec.attempt, rec.is_completed()),
        (renewed, holder.token, 1, false)
    );
    assert_eq!(rec.fingerprint, fp("p"));
    // Past the first deadline, before the renewed one: still held.
    clock.set(first_deadline);
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        oncely.claim(&s, &key("a"), fp("p")).await.unwrap(),
        ClaimOutcome::InProgress {
            retry_after: clock.now().until(renewed) + Duration::from_millis(1)
        }
    );
    // Held through the renewed deadline, inclusive; not a moment longer.
    clock.set(renewed);
    assert!(matches!(
        oncely.claim(&s, &key("a"), fp("p")).await.unwrap(),
        ClaimOutcome::InProgress { .. }
    ));
    clock.advance(Duration::from_millis(1));
    let taker = expect_new(oncely.claim(&s, &key("a"), fp("p")).await.unwrap());
    assert_eq!(taker.attempt, 2);
    expect_lost(oncely.extend(&mut holder).await, LostReason::TakenOver);
}

async fn holder_past_its_lease_may_still_renew_if_nobody_took_over(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store);
    let s = Scope::default();
    let mut slow = expect_new(oncely.claim(&s, &key("a"), None).await.unwrap());
    clock.advance(LEASE * 3);
    oncely.extend(&mut slow).await.unwrap();
    assert_eq!(slow.lease_until, clock.now().saturating_add(LEASE));
    clock.advance(LEASE);
    assert!(matches!(
        oncely.claim(&s, &key("a"), None).await.unwrap(),
        ClaimOutcome::InProgress { .. }
    ));
    oncely
        .complete(&slow, b"late, renewed, done")
        .await
        .unwrap();
    match oncely.claim(&s, &key("a"), None).await.unwrap() {
        ClaimOutcome::Duplicate(rec) => {
            assert_eq!(rec.outcome(), Some(&b"late, renewed, done"[..]))
        }
        other => panic!("expected Duplicate, got {other:?}"),
    }
}

async fn stale_token_cannot_renew(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store.clone());
    let s = Scope::default();
    let holder = expect_new(oncely.claim(&s, &key("a"), None).await.unwrap());
    let before = store.get(&s, &key("a")).await.unwrap().unwrap();
    let mut forged = holder.clone();
    forged.token = holder.token.wrapping_add(1);
    let far = clock.now().saturating_add(LEASE * 100);
    expect_lost(store.extend(&forged, far).await, LostReason::TakenOver);
    // Nothing changed: the record is the holder's, with its own deadline.
    assert_eq!(store.get(&s, &key("a")).await.unwrap().unwrap(), before);
    // Nor was the lease renewed behind the record's back: it ends when the holder's did.
    clock.advance(LEASE + Duration::from_millis(1));
    expect_new(oncely.claim(&s, &key("a"), None).await.unwrap());
    // The same token in another scope is another record, which does not exist.
    let mut elsewhere = holder.clone();
    elsewhere.scope = scope("elsewhere");
    expect_lost(store.extend(&elsewhere, far).await, LostReason::Missing);
    assert_eq!(oncely.get(&elsewhere.scope, &key("a")).await.unwrap(), None);
}

async fn renewal_after_expiry_and_takeover_fails_and_spares_the_new_holder(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store.clone());
    let s = Scope::default();
    let mut crashed = expect_new(oncely.claim(&s, &key("a"), None).await.unwrap());
    clock.advance(LEASE + Duration::from_millis(1));
    let mut taker = expect_new(oncely.claim(&s, &key("a"), None).await.unwrap());
    clock.advance(Duration::from_secs(1));
    let stale_lease = crashed.lease_until;
    expect_lost(oncely.extend(&mut crashed).await, LostReason::TakenOver);
    assert_eq!(
        crashed.lease_until, stale_lease,
        "a failed renewal moved the claim's deadline"
    );
    // The new holder's record is untouched: its token, its attempt, its deadline.
    let rec = store.get(&s, &key("a")).await.unwrap().unwrap();
    assert_eq!(
        (rec.token, rec.attempt, rec.expires_at),
        (taker.token, 2, taker.lease_until)
    );
    assert_eq!(
        oncely.claim(&s, &key("a"), None).await.unwrap(),
        ClaimOutcome::InProgress {
            retry_after: clock.now().until(taker.lease_until) + Duration::from_millis(1)
        }
    );
    // The crashed holder cannot complete either; the new one renews and completes.
    expect_lost(
        oncely.complete(&crashed, b"stale").await,
        LostReason::TakenOver,
    );
    oncely.extend(&mut taker).await.unwrap();
    oncely.complete(&taker, b"fresh").await.unwrap();
    let rec = oncely.get(&s, &key("a")).await.unwrap().unwrap();
    assert_eq!(rec.outcome(), Some(&b"fresh"[..]));
}

async fn completed_record_cannot_be_renewed(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store.clone());
    let s = Scope::default();
    let mut claim = expect_new(oncely.claim(&s, &key("a"), fp("p")).await.unwrap());
    oncely.complete(&claim, b"receipt").await.unwrap();
    let kept_until = clock.now().saturating_add(RETENTION);
    clock.advance(Duration::from_secs(1));
    expect_lost(
        oncely.extend(&mut claim).await,
        LostReason::AlreadyCompleted,
    );
    // Still the completed record, kept as long as before: the renewal wrote nothing.
    let rec = store.get(&s, &key("a")).await.unwrap().unwrap();
    assert_eq!(rec.outcome(), Some(&b"receipt"[..]));
    assert_eq!(rec.expires_at, kept_until);
    match oncely.claim(&s, &key("a"), fp("p")).await.unwrap() {
        ClaimOutcome::Duplicate(rec) => assert_eq!(rec.outcome(), Some(&b"receipt"[..])),
        other => panic!("expected Duplicate, got {other:?}"),
    }
    assert_eq!(oncely.stats().await.unwrap().completed, 1);
}

async fn released_key_cannot_be_renewed(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store.clone());
    let s = Scope::default();
    let mut claim = expect_new(oncely.claim(&s, &key("a"), None).await.unwrap());
    oncely.release(&claim).await.unwrap();
    expect_lost(oncely.extend(&mut claim).await, LostReason::Missing);
    // The renewal brought nothing back.
    assert_eq!(store.get(&s, &key("a")).await.unwrap(), None);
    // Nor does renewing a purged lease.
    let mut purged = expect_new(oncely.claim(&s, &key("b"), None).await.unwrap());
    clock.advance(LEASE + Duration::from_millis(1));
    assert_eq!(oncely.purge(Duration::ZERO, 10).await.unwrap(), 1);
    expect_lost(oncely.extend(&mut purged).await, LostReason::Missing);
    assert_eq!(store.get(&s, &key("b")).await.unwrap(), None);
    expect_new(oncely.claim(&s, &key("a"), None).await.unwrap());
}

/// An `Oncely` on the system clock with [`REAL_LEASE`]: renewal is paced by real time.
fn real_time(store: Arc<dyn Store>) -> Oncely {
    Oncely::new(store)
        .with_lease(REAL_LEASE)
        .with_retention(RETENTION)
}

async fn slow_handler_keeps_its_lease_and_runs_once_against_a_retrying_competitor(
    store: Arc<dyn Store>,
) {
    const HANDLER: Duration = Duration::from_millis(1_600); // four leases
    let oncely = real_time(store);
    let (s, k) = (Scope::default(), key("slow-export"));
    let executions = Arc::new(AtomicUsize::new(0));
    let (started, handler_started) = tokio::sync::oneshot::channel();
    let holder = {
        let (oncely, s, k, executions) = (oncely.clone(), s.clone(), k.clone(), executions.clone());
        tokio::spawn(async move {
            oncely
                .run(&s, &k, fp("p"), || async move {
                    executions.fetch_add(1, Ordering::SeqCst);
                    let _ = started.send(());
                    tokio::time::sleep(HANDLER).await;
                    Ok::<_, std::io::Error>(b"exported".to_vec())
                })
                .await
        })
    };
    handler_started.await.expect("the holder's handler starts");
    let began = tokio::time::Instant::now();
    // A second consumer redelivers the same message every 50 ms, as a broker would.
    let mut held_seen = Vec::new();
    let replayed = loop {
        let executions = executions.clone();
        let competing = || async move {
            executions.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(b"competitor".to_vec())
        };
        match oncely.run(&s, &k, fp("p"), competing).await {
            Err(RunError::InProgress { .. }) => held_seen.push(began.elapsed()),
            Ok(RunOutcome::Replayed(outcome)) => break outcome,
            other => panic!(
                "after {:?} the competitor got {other:?}: the holder's lease was not kept",
                began.elapsed()
            ),
        }
        assert!(began.elapsed() < HANDLER * 10, "the holder never completed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let held = holder.await.unwrap();
    assert_eq!(
        held.expect("the holder completes"),
        RunOutcome::Executed(b"exported".to_vec())
    );
    assert_eq!(replayed, b"exported");
    assert_eq!(
        executions.load(Ordering::SeqCst),
        1,
        "the handler ran twice"
    );
    // The competitor was kept out well past the first lease, by renewals alone.
    let last_held = held_seen.last().copied().unwrap_or_default();
    assert!(
        last_held > REAL_LEASE * 2,
        "InProgress last seen after {last_held:?}"
    );
    let rec = oncely.get(&s, &k).await.unwrap().unwrap();
    assert_eq!((rec.attempt, rec.outcome()), (1, Some(&b"exported"[..])));
}

async fn holder_that_stops_renewing_is_taken_over_about_one_lease_later(store: Arc<dyn Store>) {
    let oncely = real_time(store);
    let (s, k) = (Scope::default(), key("crashing"));
    let executions = Arc::new(AtomicUsize::new(0));
    let (started, handler_started) = tokio::sync::oneshot::channel();
    let crashing = {
        let (oncely, s, k, executions) = (oncely.clone(), s.clone(), k.clone(), executions.clone());
        tokio::spawn(async move {
            oncely
                .run(&s, &k, None, || async move {
                    executions.fetch_add(1, Ordering::SeqCst);
                    let _ = started.send(());
                    std::future::pending::<()>().await;
                    Ok::<_, std::io::Error>(b"never".to_vec())
                })
                .await
        })
    };
    handler_started.await.expect("the holder's handler starts");
    // Two leases in: renewed, so still held.
    tokio::time::sleep(REAL_LEASE * 2).await;
    assert!(matches!(
        oncely.claim(&s, &k, None).await.unwrap(),
        ClaimOutcome::InProgress { .. }
    ));
    // The holder dies: its `run` future is dropped, and its renewals with it.
    crashing.abort();
    assert!(crashing.await.unwrap_err().is_cancelled());
    let died = tokio::time::Instant::now();
    let redone = loop {
        let executions = executions.clone();
        let redo = || async move {
            executions.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(b"redone".to_vec())
        };
        match oncely.run(&s, &k, None, redo).await {
            Ok(RunOutcome::Executed(outcome)) => break outcome,
            Err(RunError::InProgress { .. }) => {}
            other => panic!("after {:?}: {other:?}", died.elapsed()),
        }
        assert!(
            died.elapsed() < REAL_LEASE * 10,
            "the dead holder's key was never taken over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let waited = died.elapsed();
    // Held for what was left of its last renewal (at least two thirds of a lease), then free.
    assert!(
        waited >= REAL_LEASE / 3 && waited <= REAL_LEASE + Duration::from_secs(1),
        "taken over {waited:?} after the holder died, with a lease of {REAL_LEASE:?}"
    );
    assert_eq!(redone, b"redone");
    // The crash cost one redo, as a crash without renewal would.
    assert_eq!(executions.load(Ordering::SeqCst), 2);
    let rec = oncely.get(&s, &k).await.unwrap().unwrap();
    assert_eq!((rec.attempt, rec.outcome()), (2, Some(&b"redone"[..])));
}
