//! A lease that ran out: another claim takes the key over and the old holder is fenced out;
//! while nobody has, the old holder may still complete.

use std::sync::Arc;
use std::time::Duration;

use oncely_core::{ClaimOutcome, Clock, LostReason, Oncely, Scope, Store, SystemClock, Timestamp};

use super::{LEASE, expect_lost, expect_new, fp, key, setup};

tests!(
    expired_lease_is_taken_over_and_old_holder_is_fenced,
    holder_past_its_lease_may_still_complete_if_nobody_took_over,
    hosts_whose_clocks_are_30_s_apart_agree_on_a_lease,
);

async fn expired_lease_is_taken_over_and_old_holder_is_fenced(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store);
    let s = Scope::default();
    let crashed = expect_new(oncely.claim(&s, &key("a"), fp("p")).await.unwrap());
    clock.advance(LEASE + Duration::from_millis(1));
    let takeover = expect_new(oncely.claim(&s, &key("a"), fp("p")).await.unwrap());
    assert_eq!(takeover.attempt, 2);
    assert_ne!(takeover.token, crashed.token);
    // The crashed holder wakes up: fenced out of both complete and release.
    expect_lost(
        oncely.complete(&crashed, b"stale").await,
        LostReason::TakenOver,
    );
    expect_lost(oncely.release(&crashed).await, LostReason::TakenOver);
    // The new holder is unaffected.
    assert!(matches!(
        oncely.claim(&s, &key("a"), fp("p")).await.unwrap(),
        ClaimOutcome::InProgress { .. }
    ));
    oncely.complete(&takeover, b"fresh").await.unwrap();
    let rec = oncely.get(&s, &key("a")).await.unwrap().unwrap();
    assert_eq!(rec.outcome(), Some(&b"fresh"[..]));
    assert_eq!(rec.attempt, 2);
}

async fn holder_past_its_lease_may_still_complete_if_nobody_took_over(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store);
    let s = Scope::default();
    let slow = expect_new(oncely.claim(&s, &key("a"), None).await.unwrap());
    clock.advance(LEASE * 3);
    oncely.complete(&slow, b"late but done").await.unwrap();
    match oncely.claim(&s, &key("a"), None).await.unwrap() {
        ClaimOutcome::Duplicate(rec) => assert_eq!(rec.outcome(), Some(&b"late but done"[..])),
        other => panic!("expected Duplicate, got {other:?}"),
    }
}

/// The system clock moved by a fixed amount: a host whose clock is off.
#[derive(Debug)]
struct OffClock(i64);

impl Clock for OffClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(SystemClock.now().as_millis() + self.0)
    }
}

/// Real time, not the suite's manual clock: the instances read the store's clock. A host 30 s
/// ahead would otherwise see a 10 s lease taken on time as run out, and one 30 s behind would
/// take leases that ran out 20 s ago.
async fn hosts_whose_clocks_are_30_s_apart_agree_on_a_lease(store: Arc<dyn Store>) {
    const SKEW: i64 = 30_000;
    let lease = Duration::from_secs(10);
    let host = |off: i64| {
        Oncely::new(store.clone())
            .with_lease(lease)
            .with_host_clock(OffClock(off))
    };
    let (on_time, ahead, behind) = (host(0), host(SKEW), host(-SKEW));
    let s = Scope::default();
    let (by_on_time, by_behind) = (
        key("held-by-the-host-on-time"),
        key("held-by-the-host-behind"),
    );
    expect_new(on_time.claim(&s, &by_on_time, None).await.unwrap());
    expect_new(behind.claim(&s, &by_behind, None).await.unwrap());
    if store.server_time().await.unwrap().is_none() {
        // A store whose clients share one host's clock: nothing to correct, the clock is taken
        // as it is.
        let off = ahead.now().as_millis() - on_time.now().as_millis();
        assert!((SKEW - 1_000..=SKEW + 1_000).contains(&off), "{off} ms");
        return;
    }
    for (taker, key) in [
        (&ahead, &by_on_time),
        (&on_time, &by_behind),
        (&ahead, &by_behind),
    ] {
        match taker.claim(&s, key, None).await.unwrap() {
            // Each host's offset is measured to within half a round trip: a few ms either way.
            ClaimOutcome::InProgress { retry_after } => assert!(
                retry_after > lease / 2 && retry_after <= lease + Duration::from_secs(1),
                "{key}: {retry_after:?} left of a {lease:?} lease just taken"
            ),
            other => panic!("{key}: a live lease must hold, got {other:?}"),
        }
    }
    for host in [&ahead, &behind] {
        let apart = host.now().as_millis() - on_time.now().as_millis();
        assert!(
            apart.abs() < 1_000,
            "{apart} ms apart after following the store's clock"
        );
    }
}
