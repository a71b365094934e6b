//! A lease that ran out: another claim takes the key over and the old holder is fenced out;
//! while nobody has, the old holder may still complete.

use std::sync::Arc;
use std::time::Duration;

use oncely_core::{ClaimOutcome, LostReason, Scope, Store};

use super::{LEASE, expect_lost, expect_new, fp, key, setup};

tests!(
    expired_lease_is_taken_over_and_old_holder_is_fenced,
    holder_past_its_lease_may_still_complete_if_nobody_took_over,
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
