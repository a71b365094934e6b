//! `Oncely::complete_many`: the facade's batch completion.

use std::sync::Arc;
use std::time::Duration;

use oncely_core::{ClaimOutcome, Error, Key, ManualClock, Oncely, Scope, Timestamp};

#[tokio::test(flavor = "current_thread")]
async fn completes_each_held_claim_with_the_facades_retention_and_fails_a_lost_one_alone() {
    let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
    let oncely = Oncely::new(Arc::new(oncely_memory::MemoryStore::default()))
        .with_clock(clock.clone())
        .with_retention(Duration::from_secs(60));
    let scope = Scope::default();
    let keys: Vec<Key> = ["a", "b", "c"]
        .iter()
        .map(|k| Key::new(*k).unwrap())
        .collect();
    let claims: Vec<_> = oncely
        .claim_many(keys.iter().map(|k| (scope.clone(), k.clone(), None)))
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.into_new().expect("fresh keys are new"))
        .collect();
    // "b" is released, so its claim is no longer held when the batch completes.
    oncely.release(&claims[1]).await.unwrap();
    clock.advance(Duration::from_secs(1));

    let results = oncely
        .complete_many(
            claims
                .iter()
                .map(|c| (c.clone(), c.key.as_str().as_bytes().to_vec())),
        )
        .await
        .unwrap();
    assert_eq!(results.len(), 3);
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(
        matches!(results[1], Err(Error::ClaimLost { .. })),
        "{results:?}"
    );

    for k in [&keys[0], &keys[2]] {
        let record = oncely.get(&scope, k).await.unwrap().expect("completed");
        assert_eq!(record.outcome(), Some(k.as_str().as_bytes()));
        assert_eq!(record.expires_at, Timestamp::from_millis(1_061_000));
    }
    assert!(matches!(
        oncely.claim(&scope, &keys[1], None).await.unwrap(),
        ClaimOutcome::New(_)
    ));
    assert!(oncely.complete_many(Vec::new()).await.unwrap().is_empty());
}
