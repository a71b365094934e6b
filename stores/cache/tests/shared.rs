//! Two caches in front of one SQLite file, as two processes of one service share a store: what
//! one process does is never hidden from the other's claims, except a forget, which the other
//! sees once its entry's time to live is over.

use std::sync::Arc;
use std::time::Duration;

use oncely_cache::{CacheOptions, CachedStore};
use oncely_core::{ClaimOutcome, ClaimRequest, Key, Scope, Store, Timestamp};
use oncely_sqlite::{SqliteOptions, SqliteStore};

const TTL: Duration = Duration::from_millis(300);

fn request(key: &str) -> ClaimRequest {
    ClaimRequest::new(
        Scope::default(),
        Key::new(key).unwrap(),
        None,
        Duration::from_secs(30),
    )
}

fn new_claim(outcome: ClaimOutcome) -> oncely_core::Claim {
    match outcome {
        ClaimOutcome::New(claim) => claim,
        other => panic!("expected New, got {other:?}"),
    }
}

#[tokio::test]
async fn a_forget_elsewhere_is_seen_within_the_ttl_and_nothing_else_is_ever_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let open = || {
        let store = SqliteStore::open(SqliteOptions::new(path.clone())).unwrap();
        CachedStore::new(Arc::new(store), CacheOptions::new(100, TTL))
    };
    let (a, b) = (open(), open());
    let now = Timestamp::from_millis(1_000_000);
    let retention = Timestamp::from_millis(1_000_000 + 3_600_000);

    // A completes a key: B's claim, which has nothing cached, asks the store.
    let claim = new_claim(a.claim(&request("k"), now).await.unwrap());
    a.complete(&claim, b"charged", retention).await.unwrap();
    assert!(matches!(
        b.claim(&request("k"), now).await.unwrap(),
        ClaimOutcome::Duplicate(_)
    ));

    // A key B holds in progress is never answered from A's cache, which has nothing of it.
    let held = new_claim(b.claim(&request("held"), now).await.unwrap());
    assert!(matches!(
        a.claim(&request("held"), now).await.unwrap(),
        ClaimOutcome::InProgress { .. }
    ));
    b.release(&held).await.unwrap();

    // B forgets the key: A still answers it from its cache, until the entry's TTL is over.
    assert!(
        b.forget(&claim.scope, &claim.key, claim.token)
            .await
            .unwrap()
    );
    assert!(
        matches!(
            a.claim(&request("k"), now).await.unwrap(),
            ClaimOutcome::Duplicate(_)
        ),
        "answered from A's cache: no round trip"
    );
    tokio::time::sleep(TTL + Duration::from_millis(200)).await;
    let again = new_claim(a.claim(&request("k"), now).await.unwrap());
    assert_eq!(again.attempt, 1, "a fresh record after the forget");

    // A forget in this process is seen at once.
    a.complete(&again, b"charged again", retention)
        .await
        .unwrap();
    assert!(
        a.forget(&again.scope, &again.key, again.token)
            .await
            .unwrap()
    );
    new_claim(a.claim(&request("k"), now).await.unwrap());
}

/// A purge here that removed records empties the cache: a purge may remove records still live
/// at the caller's `now` (one with `expired_before` ahead of it), and the cache must not answer
/// for them after.
#[tokio::test]
async fn a_purge_here_is_seen_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path().join("purged.db"))).unwrap();
    let cached = CachedStore::new(Arc::new(store), CacheOptions::new(100, TTL));
    let now = Timestamp::from_millis(1_000_000);
    let retention = Timestamp::from_millis(2_000_000);
    let claim = new_claim(cached.claim(&request("k"), now).await.unwrap());
    cached.complete(&claim, b"done", retention).await.unwrap();
    assert!(matches!(
        cached.claim(&request("k"), now).await.unwrap(),
        ClaimOutcome::Duplicate(_)
    ));
    let after = Timestamp::from_millis(2_000_001);
    assert_eq!(cached.purge(after, 10).await.unwrap(), 1);
    new_claim(cached.claim(&request("k"), now).await.unwrap());
}
