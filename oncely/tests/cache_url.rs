//! `cache=N` and `cache_ttl=DURATION` on a store URL: the cache goes in front, the store behind
//! never sees them, and bad values are typed errors.

use oncely::{ClaimOutcome, Error, Key, Oncely, Scope};

#[tokio::test]
async fn cache_options_put_a_cache_in_front_and_the_rest_goes_to_the_store() {
    let store = oncely::connect("memory:?cache=10&capacity=5&cache_ttl=30s")
        .await
        .unwrap();
    assert!(format!("{store:?}").starts_with("CachedStore"), "{store:?}");
    let oncely = Oncely::new(store);
    let (scope, key) = (Scope::default(), Key::new("k").unwrap());
    let ClaimOutcome::New(claim) = oncely.claim(&scope, &key, None).await.unwrap() else {
        panic!("a new key");
    };
    oncely.complete(&claim, b"done").await.unwrap();
    assert!(matches!(
        oncely.claim(&scope, &key, None).await.unwrap(),
        ClaimOutcome::Duplicate(_)
    ));

    let plain = oncely::connect("memory:?capacity=5").await.unwrap();
    assert!(!format!("{plain:?}").starts_with("CachedStore"));

    for bad in [
        "memory:?cache=0",
        "memory:?cache=many",
        "memory:?cache_ttl=30s",
        "memory:?cache=10&cache_ttl=30",
    ] {
        let error = oncely::connect(bad).await.unwrap_err();
        assert!(matches!(error, Error::InvalidUrl { .. }), "{bad}: {error}");
    }
}
