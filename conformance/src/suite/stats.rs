//! `stats`: records counted by state.

use std::sync::Arc;
use std::time::Duration;

use oncely_core::{Scope, Store};

use super::{LEASE, RETENTION, expect_new, key, setup};

tests!(stats_count_records_by_state);

async fn stats_count_records_by_state(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store);
    let s = Scope::default();
    for i in 0..3 {
        let c = expect_new(
            oncely
                .claim(&s, &key(&format!("done-{i}")), None)
                .await
                .unwrap(),
        );
        oncely.complete(&c, b"").await.unwrap();
    }
    expect_new(oncely.claim(&s, &key("leased"), None).await.unwrap());
    let stats = oncely.stats().await.unwrap();
    assert_eq!(
        (
            stats.records,
            stats.completed,
            stats.in_progress,
            stats.expired
        ),
        (4, 3, 1, 0)
    );
    clock.advance(LEASE + Duration::from_millis(1));
    let stats = oncely.stats().await.unwrap();
    assert_eq!(
        (
            stats.records,
            stats.completed,
            stats.in_progress,
            stats.expired
        ),
        (4, 3, 0, 1)
    );
    clock.advance(RETENTION);
    let stats = oncely.stats().await.unwrap();
    assert_eq!((stats.records, stats.expired), (4, 4));
    oncely.purge(Duration::ZERO, 100).await.unwrap();
    assert_eq!(oncely.stats().await.unwrap().records, 0);
}
