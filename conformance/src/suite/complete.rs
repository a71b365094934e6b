//! Completion: once per claim, `complete_many` answers each item on its own, and a completed
//! record replays until its retention ends.

use std::sync::Arc;
use std::time::Duration;

use oncely_core::{ClaimOutcome, Clock, Completion, Error, LostReason, Scope, Store};

use super::{LEASE, RETENTION, expect_lost, expect_new, fp, key, setup};

tests!(
    completing_twice_is_rejected,
    complete_many_answers_each_item_on_its_own,
    completed_record_is_duplicate_until_retention_ends_then_new,
);

async fn completing_twice_is_rejected(store: Arc<dyn Store>) {
    let (oncely, _) = setup(store);
    let s = Scope::default();
    let claim = expect_new(oncely.claim(&s, &key("a"), None).await.unwrap());
    oncely.complete(&claim, b"one").await.unwrap();
    expect_lost(
        oncely.complete(&claim, b"two").await,
        LostReason::AlreadyCompleted,
    );
    expect_lost(oncely.release(&claim).await, LostReason::AlreadyCompleted);
    let rec = oncely.get(&s, &key("a")).await.unwrap().unwrap();
    assert_eq!(rec.outcome(), Some(&b"one"[..]));
}

async fn complete_many_answers_each_item_on_its_own(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store.clone());
    let s = Scope::default();
    let held = expect_new(oncely.claim(&s, &key("held"), None).await.unwrap());
    let done = expect_new(oncely.claim(&s, &key("done"), None).await.unwrap());
    oncely.complete(&done, b"first").await.unwrap();
    let gone = expect_new(oncely.claim(&s, &key("gone"), None).await.unwrap());
    oncely.release(&gone).await.unwrap();
    let crashed = expect_new(oncely.claim(&s, &key("taken"), None).await.unwrap());
    let late = expect_new(oncely.claim(&s, &key("late"), None).await.unwrap());
    clock.advance(LEASE + Duration::from_millis(1));
    let taker = expect_new(oncely.claim(&s, &key("taken"), None).await.unwrap());
    let expires_at = clock.now().saturating_add(RETENTION);
    let item = |claim: &oncely_core::Claim, outcome: &[u8]| Completion {
        claim: claim.clone(),
        outcome: outcome.to_vec(),
        expires_at,
    };
    let results = store
        .complete_many(&[
            item(&crashed, b"stale"),
            item(&held, b"held-out"),
            item(&done, b"second"),
            item(&gone, b"gone"),
            item(&late, b"late-out"),
            // The new holder of the key the first item lost, and a repeat of the second item.
            item(&taker, b"taker-out"),
            item(&held, b"again"),
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 7);
    let lost = |r: &oncely_core::Result<()>| match r {
        Err(Error::ClaimLost { reason, .. }) => Some(*reason),
        Ok(()) => None,
        Err(other) => panic!("expected ClaimLost, got {other:?}"),
    };
    let reasons: Vec<_> = results.iter().map(lost).collect();
    assert_eq!(
        reasons,
        [
            Some(LostReason::TakenOver),
            None,
            Some(LostReason::AlreadyCompleted),
            Some(LostReason::Missing),
            None, // past its lease, but nobody took it over
            None,
            Some(LostReason::AlreadyCompleted),
        ]
    );
    for (k, want) in [
        ("held", &b"held-out"[..]),
        ("done", b"first"),
        ("late", b"late-out"),
        ("taken", b"taker-out"),
    ] {
        let rec = oncely.get(&s, &key(k)).await.unwrap().unwrap();
        assert_eq!(rec.outcome(), Some(want), "{k}");
        if k != "done" {
            assert_eq!(rec.expires_at, expires_at, "{k}");
        }
    }
    assert_eq!(oncely.get(&s, &key("gone")).await.unwrap(), None);
    assert!(store.complete_many(&[]).await.unwrap().is_empty());
}

async fn completed_record_is_duplicate_until_retention_ends_then_new(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store);
    let s = Scope::default();
    let claim = expect_new(oncely.claim(&s, &key("a"), fp("p")).await.unwrap());
    oncely.complete(&claim, b"x").await.unwrap();
    clock.advance(RETENTION);
    assert!(matches!(
        oncely.claim(&s, &key("a"), fp("p")).await.unwrap(),
        ClaimOutcome::Duplicate(_)
    ));
    clock.advance(Duration::from_millis(1));
    // Expired: the key is new again, even for another payload.
    let again = expect_new(oncely.claim(&s, &key("a"), fp("other")).await.unwrap());
    assert_ne!(again.token, claim.token);
}
