//! `claim_many`: one answer per item, in order, with duplicates inside the batch and every kind
//! of outcome side by side.

use std::sync::Arc;

use oncely_core::{ClaimOutcome, Scope, Store};

use super::{expect_new, fp, key, setup};

tests!(
    claim_many_answers_in_order_with_in_batch_duplicates,
    claim_many_mixes_every_outcome,
);

async fn claim_many_answers_in_order_with_in_batch_duplicates(store: Arc<dyn Store>) {
    let (oncely, _) = setup(store);
    let s = Scope::default();
    let batch = ["a", "b", "a", "c", "b", "a"]
        .iter()
        .map(|k| (s.clone(), key(k), None))
        .collect::<Vec<_>>();
    let outcomes = oncely.claim_many(batch).await.unwrap();
    let kinds: Vec<_> = outcomes.iter().map(ClaimOutcome::kind).collect();
    assert_eq!(
        kinds,
        [
            "new",
            "new",
            "in_progress",
            "new",
            "in_progress",
            "in_progress"
        ]
    );
    let keys: Vec<_> = outcomes
        .into_iter()
        .filter_map(ClaimOutcome::into_new)
        .map(|c| c.key)
        .collect();
    assert_eq!(keys, [key("a"), key("b"), key("c")]);
    assert!(oncely.claim_many(Vec::new()).await.unwrap().is_empty());
}

async fn claim_many_mixes_every_outcome(store: Arc<dyn Store>) {
    let (oncely, _) = setup(store);
    let s = Scope::default();
    let done = expect_new(oncely.claim(&s, &key("done"), fp("p")).await.unwrap());
    oncely.complete(&done, b"out").await.unwrap();
    expect_new(oncely.claim(&s, &key("busy"), fp("p")).await.unwrap());
    let outcomes = oncely
        .claim_many([
            (s.clone(), key("fresh"), fp("p")),
            (s.clone(), key("done"), fp("p")),
            (s.clone(), key("busy"), fp("p")),
            (s.clone(), key("done"), fp("not-p")),
        ])
        .await
        .unwrap();
    assert!(matches!(outcomes[0], ClaimOutcome::New(_)));
    assert!(matches!(&outcomes[1], ClaimOutcome::Duplicate(r) if r.outcome() == Some(&b"out"[..])));
    assert!(matches!(outcomes[2], ClaimOutcome::InProgress { .. }));
    assert_eq!(outcomes[3], ClaimOutcome::Conflict { stored: fp("p") });
}
