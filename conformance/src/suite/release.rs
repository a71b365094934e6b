//! Release: the holder gives the key back, so the next claim is new, and the released claim can
//! touch the key no more.

use std::sync::Arc;

use oncely_core::{LostReason, Scope, Store};

use super::{expect_lost, expect_new, fp, key, setup};

tests!(release_makes_key_claimable_again);

async fn release_makes_key_claimable_again(store: Arc<dyn Store>) {
    let (oncely, _) = setup(store);
    let s = Scope::default();
    let first = expect_new(oncely.claim(&s, &key("a"), fp("p")).await.unwrap());
    oncely.release(&first).await.unwrap();
    assert_eq!(oncely.get(&s, &key("a")).await.unwrap(), None);
    // Released: even another payload may now use the key.
    let second = expect_new(oncely.claim(&s, &key("a"), fp("q")).await.unwrap());
    assert_ne!(first.token, second.token);
    // The first holder released; it can neither release nor complete again.
    expect_lost(oncely.release(&first).await, LostReason::TakenOver);
    expect_lost(oncely.complete(&first, b"x").await, LostReason::TakenOver);
    oncely.release(&second).await.unwrap();
    expect_lost(oncely.release(&second).await, LostReason::Missing);
}
