//! `Oncely::purge_every`: the background purge keeps a store bounded while it is used.

use std::sync::Arc;
use std::time::Duration;

use oncely_core::{Key, ManualClock, Oncely, Scope, Timestamp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_records_go_in_the_background_while_live_ones_stay() {
    let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
    let oncely = Oncely::new(Arc::new(oncely_memory::MemoryStore::default()))
        .with_clock(clock.clone())
        .with_retention(Duration::from_secs(60));
    let scope = Scope::default();
    let done = |prefix: &'static str| {
        let (oncely, scope) = (oncely.clone(), scope.clone());
        async move {
            for n in 0..100 {
                let key = Key::new(format!("{prefix}-{n}")).unwrap();
                let claim = oncely.claim(&scope, &key, None).await.unwrap();
                oncely
                    .complete(&claim.into_new().unwrap(), b"ok")
                    .await
                    .unwrap();
            }
        }
    };
    done("old").await;
    let purging = tokio::spawn(oncely.clone().purge_every(Duration::from_millis(20), 30));
    // The old records expire; new ones keep coming.
    clock.advance(Duration::from_secs(61));
    done("new").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = oncely.stats().await.unwrap();
        if stats.records == 100 {
            assert_eq!(stats.completed, 100);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not purged in 10 s: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in 0..100 {
        let key = Key::new(format!("new-{n}")).unwrap();
        assert!(oncely.get(&scope, &key).await.unwrap().is_some());
    }
    purging.abort();
}
