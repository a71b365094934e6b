//! What a single claim answers: new the first time, the stored outcome once completed, in
//! progress while a live lease holds the key, and a conflict when the payload's fingerprint
//! differs from the stored one (never when either side has none).

use std::sync::Arc;
use std::time::Duration;

use oncely_core::{ClaimOutcome, Clock, Scope, Store};

use super::{LEASE, expect_new, fp, key, setup};

tests!(
    first_claim_is_new,
    completed_key_is_duplicate_with_stored_outcome,
    claim_during_live_lease_is_in_progress_with_retry_after,
    different_fingerprint_is_conflict_while_in_progress_and_after_completion,
    claims_without_fingerprint_never_conflict,
);

async fn first_claim_is_new(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store);
    let claim = expect_new(
        oncely
            .claim(&Scope::default(), &key("a"), None)
            .await
            .unwrap(),
    );
    assert_eq!(claim.attempt, 1);
    assert_eq!(claim.lease_until, clock.now().saturating_add(LEASE));
    assert_eq!(claim.key, key("a"));
}

async fn completed_key_is_duplicate_with_stored_outcome(store: Arc<dyn Store>) {
    let (oncely, _) = setup(store);
    let s = Scope::default();
    let claim = expect_new(oncely.claim(&s, &key("a"), fp("p")).await.unwrap());
    oncely.complete(&claim, b"receipt-1").await.unwrap();
    for _ in 0..3 {
        match oncely.claim(&s, &key("a"), fp("p")).await.unwrap() {
            ClaimOutcome::Duplicate(rec) => {
                assert_eq!(rec.outcome(), Some(&b"receipt-1"[..]));
                assert_eq!(rec.fingerprint, fp("p"));
                assert_eq!(rec.key, key("a"));
            }
            other => panic!("expected Duplicate, got {other:?}"),
        }
    }
}

async fn claim_during_live_lease_is_in_progress_with_retry_after(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store);
    let s = Scope::default();
    expect_new(oncely.claim(&s, &key("a"), None).await.unwrap());
    clock.advance(Duration::from_secs(10));
    assert_eq!(
        oncely.claim(&s, &key("a"), None).await.unwrap(),
        ClaimOutcome::InProgress {
            retry_after: Duration::from_secs(20) + Duration::from_millis(1)
        }
    );
    // Still live on its last millisecond.
    clock.advance(Duration::from_secs(20));
    assert!(matches!(
        oncely.claim(&s, &key("a"), None).await.unwrap(),
        ClaimOutcome::InProgress { .. }
    ));
}

async fn different_fingerprint_is_conflict_while_in_progress_and_after_completion(
    store: Arc<dyn Store>,
) {
    let (oncely, _) = setup(store);
    let s = Scope::default();
    let claim = expect_new(oncely.claim(&s, &key("a"), fp("first")).await.unwrap());
    assert_eq!(
        oncely.claim(&s, &key("a"), fp("second")).await.unwrap(),
        ClaimOutcome::Conflict {
            stored: fp("first")
        }
    );
    oncely.complete(&claim, b"done").await.unwrap();
    assert_eq!(
        oncely.claim(&s, &key("a"), fp("second")).await.unwrap(),
        ClaimOutcome::Conflict {
            stored: fp("first")
        }
    );
    // The conflict changed nothing: the right payload still replays.
    assert!(matches!(
        oncely.claim(&s, &key("a"), fp("first")).await.unwrap(),
        ClaimOutcome::Duplicate(_)
    ));
}

async fn claims_without_fingerprint_never_conflict(store: Arc<dyn Store>) {
    let (oncely, _) = setup(store);
    let s = Scope::default();
    let claim = expect_new(oncely.claim(&s, &key("a"), fp("x")).await.unwrap());
    oncely.complete(&claim, b"").await.unwrap();
    assert!(matches!(
        oncely.claim(&s, &key("a"), None).await.unwrap(),
        ClaimOutcome::Duplicate(_)
    ));
    let claim = expect_new(oncely.claim(&s, &key("b"), None).await.unwrap());
    oncely.complete(&claim, b"").await.unwrap();
    assert!(matches!(
        oncely.claim(&s, &key("b"), fp("y")).await.unwrap(),
        ClaimOutcome::Duplicate(_)
    ));
}
