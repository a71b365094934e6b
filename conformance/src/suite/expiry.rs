//! Records past their time: `get` stops answering them, and purge removes them (bounded by its
//! limit, live records spared, one purger at a time).

use std::sync::Arc;
use std::time::Duration;

use oncely_core::{
    ClaimOutcome, Clock, LostReason, PURGE_KEY, PURGE_SCOPE, PurgeRun, Scope, Store,
};

use super::{LEASE, RETENTION, expect_lost, expect_new, fp, key, scope, setup};

tests!(
    get_returns_the_record_and_stops_after_expiry,
    purge_is_bounded_by_its_limit_and_spares_live_records,
    purge_removes_expired_leases_and_fences_their_holders,
    only_one_instance_purges_at_a_time,
);

async fn get_returns_the_record_and_stops_after_expiry(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store.clone());
    let s = Scope::default();
    assert_eq!(oncely.get(&s, &key("a")).await.unwrap(), None);
    let claim = expect_new(oncely.claim(&s, &key("a"), fp("p")).await.unwrap());
    let rec = oncely.get(&s, &key("a")).await.unwrap().unwrap();
    assert!(!rec.is_completed());
    assert_eq!(
        (rec.token, rec.attempt, rec.fingerprint),
        (claim.token, 1, fp("p"))
    );
    assert_eq!(rec.created_at, clock.now());
    assert_eq!(rec.expires_at, claim.lease_until);
    clock.advance(Duration::from_secs(5));
    oncely.complete(&claim, b"r").await.unwrap();
    let rec = oncely.get(&s, &key("a")).await.unwrap().unwrap();
    assert_eq!(rec.outcome(), Some(&b"r"[..]));
    assert_eq!(
        rec.created_at, claim.claimed_at,
        "completing keeps when it was claimed"
    );
    assert_eq!(rec.expires_at, clock.now().saturating_add(RETENTION));
    clock.advance(RETENTION + Duration::from_millis(1));
    assert_eq!(oncely.get(&s, &key("a")).await.unwrap(), None);
    // The raw store still has it until purged.
    assert!(store.get(&s, &key("a")).await.unwrap().is_some());
}

async fn purge_is_bounded_by_its_limit_and_spares_live_records(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store.clone());
    let s = Scope::default();
    for i in 0..10 {
        let c = expect_new(
            oncely
                .claim(&s, &key(&format!("old-{i}")), None)
                .await
                .unwrap(),
        );
        oncely.complete(&c, b"").await.unwrap();
    }
    clock.advance(RETENTION * 2);
    for i in 0..5 {
        let c = expect_new(
            oncely
                .claim(&s, &key(&format!("live-{i}")), None)
                .await
                .unwrap(),
        );
        oncely.complete(&c, b"").await.unwrap();
    }
    expect_new(oncely.claim(&s, &key("leased"), None).await.unwrap());
    assert_eq!(oncely.purge(Duration::ZERO, 3).await.unwrap(), 3);
    assert_eq!(oncely.purge(Duration::ZERO, 0).await.unwrap(), 0);
    assert_eq!(oncely.purge(Duration::ZERO, 100).await.unwrap(), 7);
    assert_eq!(oncely.purge(Duration::ZERO, 100).await.unwrap(), 0);
    for i in 0..10 {
        assert!(
            store
                .get(&s, &key(&format!("old-{i}")))
                .await
                .unwrap()
                .is_none()
        );
    }
    for i in 0..5 {
        assert!(matches!(
            oncely
                .claim(&s, &key(&format!("live-{i}")), None)
                .await
                .unwrap(),
            ClaimOutcome::Duplicate(_)
        ));
    }
    assert!(matches!(
        oncely.claim(&s, &key("leased"), None).await.unwrap(),
        ClaimOutcome::InProgress { .. }
    ));
    // `older_than` keeps recently expired records: one hour later, the lease expired an hour
    // and 30 s ago, the five completed records only 60 s ago.
    clock.advance(RETENTION + Duration::from_secs(60));
    assert_eq!(
        oncely.purge(Duration::from_secs(3600), 100).await.unwrap(),
        1
    );
    assert_eq!(
        oncely.purge(Duration::from_secs(120), 100).await.unwrap(),
        0
    );
    assert_eq!(oncely.purge(Duration::from_secs(1), 100).await.unwrap(), 5);
}

async fn purge_removes_expired_leases_and_fences_their_holders(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store);
    let s = Scope::default();
    let crashed = expect_new(oncely.claim(&s, &key("a"), None).await.unwrap());
    clock.advance(LEASE + Duration::from_secs(1));
    assert_eq!(oncely.purge(Duration::ZERO, 10).await.unwrap(), 1);
    expect_lost(oncely.complete(&crashed, b"x").await, LostReason::Missing);
    let next = expect_new(oncely.claim(&s, &key("a"), None).await.unwrap());
    // A purged-then-reclaimed key gets a new token, so the crashed holder stays fenced out.
    expect_lost(oncely.complete(&crashed, b"x").await, LostReason::TakenOver);
    oncely.complete(&next, b"y").await.unwrap();
}

async fn only_one_instance_purges_at_a_time(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store.clone());
    let s = Scope::default();
    for i in 0..5 {
        let c = expect_new(
            oncely
                .claim(&s, &key(&format!("old-{i}")), None)
                .await
                .unwrap(),
        );
        oncely.complete(&c, b"").await.unwrap();
    }
    clock.advance(RETENTION * 2);
    let (lock_scope, lock_key) = (scope(PURGE_SCOPE), key(PURGE_KEY));

    // Another instance is purging: this one does nothing.
    let other = expect_new(oncely.claim(&lock_scope, &lock_key, None).await.unwrap());
    assert!(matches!(
        oncely.purge_all(Duration::ZERO, 2).await.unwrap(),
        PurgeRun::AnotherPurger { .. }
    ));
    assert!(store.get(&s, &key("old-0")).await.unwrap().is_some());
    oncely.release(&other).await.unwrap();

    // Its turn now; the lock is given back, so the next run may purge too.
    assert_eq!(
        oncely.purge_all(Duration::ZERO, 2).await.unwrap(),
        PurgeRun::Done {
            purged: 5,
            finished: true
        }
    );
    assert_eq!(
        oncely.purge_all(Duration::ZERO, 2).await.unwrap(),
        PurgeRun::Done {
            purged: 0,
            finished: true
        }
    );

    // A purger that died holds the lock only until its lease runs out.
    expect_new(oncely.claim(&lock_scope, &lock_key, None).await.unwrap());
    assert!(matches!(
        oncely.purge_all(Duration::ZERO, 2).await.unwrap(),
        PurgeRun::AnotherPurger { .. }
    ));
    clock.advance(LEASE + Duration::from_millis(1));
    assert!(matches!(
        oncely.purge_all(Duration::ZERO, 2).await.unwrap(),
        PurgeRun::Done { .. }
    ));
}
