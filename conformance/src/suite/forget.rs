//! Forget: an operator removes a record so the next delivery runs the work again. A completed
//! record goes at once; an in-progress one only when forced, and its holder is then fenced off;
//! the removal touches exactly the record decided on, never one claimed anew meanwhile.

use std::sync::Arc;
use std::time::Duration;

use oncely_core::{ClaimOutcome, ForgetOutcome, LostReason, Scope, Store};
use tokio::sync::Barrier;

use super::{LEASE, RETENTION, expect_lost, expect_new, fp, key, scope, setup};

tests!(
    forgetting_a_completed_record_runs_the_next_delivery_again,
    an_in_progress_record_is_forgotten_only_when_forced_and_its_holder_is_fenced,
    forgetting_nothing_or_an_expired_record_answers_absent,
    the_store_removes_only_the_record_of_the_token_given,
    forget_racing_a_takeover_never_removes_the_new_holders_record,
);

async fn forgetting_a_completed_record_runs_the_next_delivery_again(store: Arc<dyn Store>) {
    let (oncely, _) = setup(store);
    let (s, other) = (Scope::default(), scope("other"));
    for sc in [&s, &other] {
        for k in ["a", "b"] {
            let claim = expect_new(oncely.claim(sc, &key(k), fp("p")).await.unwrap());
            oncely.complete(&claim, b"done").await.unwrap();
        }
    }
    assert_eq!(
        oncely.forget(&s, &key("a"), false).await.unwrap(),
        ForgetOutcome::Completed
    );
    assert_eq!(oncely.get(&s, &key("a")).await.unwrap(), None);
    // Forgotten: the next delivery is new, even with another payload (no fingerprint is kept).
    let again = expect_new(oncely.claim(&s, &key("a"), fp("q")).await.unwrap());
    oncely.complete(&again, b"again").await.unwrap();
    // Nothing else was touched: the other key, and the same key in another scope.
    for (sc, k) in [(&s, "b"), (&other, "a"), (&other, "b")] {
        match oncely.claim(sc, &key(k), fp("p")).await.unwrap() {
            ClaimOutcome::Duplicate(record) => assert_eq!(record.outcome(), Some(&b"done"[..])),
            answer => panic!("{sc}/{k}: expected Duplicate, got {answer:?}"),
        }
    }
}

async fn an_in_progress_record_is_forgotten_only_when_forced_and_its_holder_is_fenced(
    store: Arc<dyn Store>,
) {
    let (oncely, _) = setup(store);
    let s = Scope::default();
    let holder = expect_new(oncely.claim(&s, &key("a"), None).await.unwrap());
    assert_eq!(
        oncely.forget(&s, &key("a"), false).await.unwrap(),
        ForgetOutcome::Held {
            lease_until: holder.lease_until
        }
    );
    // Not forced: the holder still holds it.
    assert!(matches!(
        oncely.claim(&s, &key("a"), None).await.unwrap(),
        ClaimOutcome::InProgress { .. }
    ));
    assert_eq!(
        oncely.forget(&s, &key("a"), true).await.unwrap(),
        ForgetOutcome::InProgress
    );
    assert_eq!(oncely.get(&s, &key("a")).await.unwrap(), None);
    // The holder can no longer renew or complete what was forgotten...
    let mut renewing = holder.clone();
    expect_lost(oncely.extend(&mut renewing).await, LostReason::Missing);
    expect_lost(oncely.complete(&holder, b"late").await, LostReason::Missing);
    // ...nor touch the record of the next delivery, which runs the work again.
    let next = expect_new(oncely.claim(&s, &key("a"), None).await.unwrap());
    expect_lost(
        oncely.complete(&holder, b"late").await,
        LostReason::TakenOver,
    );
    oncely.complete(&next, b"done").await.unwrap();
    assert_eq!(
        oncely
            .get(&s, &key("a"))
            .await
            .unwrap()
            .and_then(|r| r.outcome().map(<[u8]>::to_vec)),
        Some(b"done".to_vec())
    );
}

async fn forgetting_nothing_or_an_expired_record_answers_absent(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store.clone());
    let s = Scope::default();
    assert_eq!(
        oncely.forget(&s, &key("never"), true).await.unwrap(),
        ForgetOutcome::Absent
    );
    let claim = expect_new(oncely.claim(&s, &key("a"), None).await.unwrap());
    oncely.complete(&claim, b"done").await.unwrap();
    let abandoned = expect_new(oncely.claim(&s, &key("b"), None).await.unwrap());
    clock.advance(RETENTION + Duration::from_secs(1));
    assert_eq!(
        oncely.forget(&s, &key("a"), false).await.unwrap(),
        ForgetOutcome::Absent
    );
    // A lease that ran out is no holder: nothing to force.
    assert!(LEASE < RETENTION);
    assert_eq!(
        oncely.forget(&s, &key("b"), false).await.unwrap(),
        ForgetOutcome::Absent
    );
    // The expired records themselves are gone, not merely hidden.
    assert_eq!(store.get(&s, &key("a")).await.unwrap(), None);
    assert_eq!(store.get(&s, &key("b")).await.unwrap(), None);
    expect_lost(
        oncely.complete(&abandoned, b"late").await,
        LostReason::Missing,
    );
}

async fn the_store_removes_only_the_record_of_the_token_given(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store.clone());
    let s = Scope::default();
    let first = expect_new(oncely.claim(&s, &key("a"), None).await.unwrap());
    clock.advance(LEASE + Duration::from_secs(1));
    // The lease ran out and a second delivery took the key over: a new token.
    let second = expect_new(oncely.claim(&s, &key("a"), None).await.unwrap());
    assert_ne!(first.token, second.token);
    assert!(!store.forget(&s, &key("a"), first.token).await.unwrap());
    assert!(
        !store
            .forget(&scope("other"), &key("a"), second.token)
            .await
            .unwrap()
    );
    oncely.complete(&second, b"done").await.unwrap();
    assert!(store.get(&s, &key("a")).await.unwrap().is_some());
    assert!(store.forget(&s, &key("a"), second.token).await.unwrap());
    assert_eq!(store.get(&s, &key("a")).await.unwrap(), None);
    assert!(!store.forget(&s, &key("a"), second.token).await.unwrap());
}

/// Each key's record expired; a forget and a claim of it race. Whatever the order, the claim is
/// new and its holder completes: the forget, having decided on the expired record, removes that
/// one or nothing.
async fn forget_racing_a_takeover_never_removes_the_new_holders_record(store: Arc<dyn Store>) {
    const KEYS: usize = 60;
    let (oncely, clock) = setup(store);
    let s = Scope::default();
    for n in 0..KEYS {
        let claim = expect_new(
            oncely
                .claim(&s, &key(&format!("k{n}")), None)
                .await
                .unwrap(),
        );
        oncely.complete(&claim, b"old").await.unwrap();
    }
    clock.advance(RETENTION + Duration::from_secs(1));
    for n in 0..KEYS {
        let k = key(&format!("k{n}"));
        let barrier = Arc::new(Barrier::new(2));
        let forgetting = tokio::spawn({
            let (oncely, s, k, barrier) = (oncely.clone(), s.clone(), k.clone(), barrier.clone());
            async move {
                barrier.wait().await;
                oncely.forget(&s, &k, false).await.unwrap()
            }
        });
        let claiming = tokio::spawn({
            let (oncely, s, k, barrier) = (oncely.clone(), s.clone(), k.clone(), barrier.clone());
            async move {
                barrier.wait().await;
                oncely.claim(&s, &k, None).await.unwrap()
            }
        });
        let claim = expect_new(claiming.await.unwrap());
        let forgot = forgetting.await.unwrap();
        assert!(
            matches!(forgot, ForgetOutcome::Absent | ForgetOutcome::Held { .. }),
            "{k}: {forgot:?}"
        );
        oncely
            .complete(&claim, b"new")
            .await
            .unwrap_or_else(|e| panic!("{k}: the new holder lost its record to the forget: {e}"));
    }
}
