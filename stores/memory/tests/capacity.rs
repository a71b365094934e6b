//! The memory store when full: a live record (a lease not yet run out, a completed record
//! within its retention) is never evicted. A claim of a new key at capacity fails with
//! `Error::StoreFull` and changes nothing; expired records, and only those, are swept to make
//! room. A record is live through its `expires_at` millisecond inclusive, so the sweep spares
//! a record on its last millisecond.
//!
//! The store is driven directly, with explicit timestamps, so each boundary is exact.

use std::sync::Arc;
use std::time::Duration;

use oncely_core::{
    Claim, ClaimOutcome, ClaimRequest, Error, Key, Record, Scope, Store, StoreStats, Timestamp,
};
use oncely_memory::MemoryStore;

const T0: Timestamp = Timestamp::from_millis(1_767_225_600_000);
const LEASE: Duration = Duration::from_secs(30);
const RETENTION: Duration = Duration::from_secs(3600);

fn at(offset: Duration) -> Timestamp {
    T0.saturating_add(offset)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn key(k: &str) -> Key {
    Key::new(k).unwrap()
}

fn req(k: &str) -> ClaimRequest {
    ClaimRequest::new(Scope::default(), key(k), None, LEASE)
}

async fn claim_new(store: &MemoryStore, k: &str, now: Timestamp) -> Claim {
    match store.claim(&req(k), now).await.unwrap() {
        ClaimOutcome::New(claim) => claim,
        other => panic!("{k} at {now:?}: expected New, got {other:?}"),
    }
}

/// Claims `k` and completes it, kept until `expires_at`.
async fn done(store: &MemoryStore, k: &str, now: Timestamp, expires_at: Timestamp) -> Claim {
    let claim = claim_new(store, k, now).await;
    store
        .complete(&claim, k.as_bytes(), expires_at)
        .await
        .unwrap();
    claim
}

async fn record(store: &MemoryStore, k: &str) -> Option<Record> {
    store.get(&Scope::default(), &key(k)).await.unwrap()
}

async fn records(store: &MemoryStore, keys: &[&str]) -> Vec<Option<Record>> {
    let mut out = Vec::new();
    for k in keys {
        out.push(record(store, k).await);
    }
    out
}

fn assert_full<T: std::fmt::Debug>(result: oncely_core::Result<T>, capacity: usize) {
    match result {
        Err(Error::StoreFull { capacity: c }) => assert_eq!(c, capacity),
        other => panic!("expected StoreFull {{ capacity: {capacity} }}, got {other:?}"),
    }
}

fn counts(stats: StoreStats) -> (u64, u64, u64, u64) {
    (
        stats.records,
        stats.in_progress,
        stats.completed,
        stats.expired,
    )
}

#[tokio::test]
async fn a_store_full_of_live_leases_refuses_a_new_key_and_keeps_every_lease() {
    let store = MemoryStore::with_capacity(3);
    let keys = ["a", "b", "c"];
    let mut claims = Vec::new();
    for k in keys {
        claims.push(claim_new(&store, k, T0).await);
    }
    let before = records(&store, &keys).await;
    // The leases' last live millisecond: nothing is expired, so nothing may go.
    let last = at(LEASE);
    assert_full(store.claim(&req("d"), last).await, 3);
    assert_full(store.claim_many(&[req("d")], last).await, 3);
    assert_full(store.claim_many(&[req("a"), req("e")], last).await, 3);
    assert_eq!(records(&store, &keys).await, before);
    assert_eq!(record(&store, "d").await, None);
    assert_eq!(record(&store, "e").await, None);
    assert_eq!(counts(store.stats(last).await.unwrap()), (3, 3, 0, 0));
    // Each lease is still in force, and each holder still holds its claim.
    for k in keys {
        assert_eq!(
            store.claim(&req(k), last).await.unwrap(),
            ClaimOutcome::InProgress { retry_after: ms(1) },
            "{k}"
        );
    }
    for claim in &claims {
        store.complete(claim, b"done", at(RETENTION)).await.unwrap();
    }
}

#[tokio::test]
async fn a_store_full_of_completed_records_refuses_a_new_key_and_keeps_every_outcome() {
    let store = MemoryStore::with_capacity(3);
    let keys = ["a", "b", "c"];
    for k in keys {
        done(&store, k, T0, at(RETENTION)).await;
    }
    let before = records(&store, &keys).await;
    let last = at(RETENTION);
    assert_full(store.claim(&req("d"), last).await, 3);
    assert_full(store.claim_many(&[req("d")], last).await, 3);
    assert_eq!(records(&store, &keys).await, before);
    assert_eq!(record(&store, "d").await, None);
    assert_eq!(counts(store.stats(last).await.unwrap()), (3, 0, 3, 0));
    for k in keys {
        match store.claim(&req(k), last).await.unwrap() {
            ClaimOutcome::Duplicate(rec) => assert_eq!(rec.outcome(), Some(k.as_bytes())),
            other => panic!("{k}: expected Duplicate, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn expired_records_and_only_those_are_swept_to_make_room() {
    let store = MemoryStore::with_capacity(4);
    // a: completed, retained until T0 + 10 s.
    done(&store, "a", T0, at(Duration::from_secs(10))).await;
    // b: a lease until T0 + 30 s.
    claim_new(&store, "b", T0).await;
    // c: completed, retained for an hour.
    done(&store, "c", T0, at(RETENTION)).await;
    // d: a lease until T0 + 50 s.
    claim_new(&store, "d", at(Duration::from_secs(20))).await;
    let live = ["b", "c", "d"];
    let before = records(&store, &live).await;

    // T0 + 30 s: a has expired, b is on its last live millisecond. Only a makes room.
    let now = at(LEASE);
    claim_new(&store, "e", now).await;
    assert_eq!(record(&store, "a").await, None, "a was expired: swept");
    assert_eq!(records(&store, &live).await, before);
    assert_eq!(counts(store.stats(now).await.unwrap()), (4, 3, 1, 0));
    assert_full(store.claim(&req("f"), now).await, 4);
    assert_eq!(records(&store, &live).await, before);

    // One millisecond later b has expired too, and makes room for f.
    let now = at(LEASE + ms(1));
    claim_new(&store, "f", now).await;
    assert_eq!(record(&store, "b").await, None, "b was expired: swept");
    assert_eq!(records(&store, &["c", "d"]).await, before[1..]);
    assert!(record(&store, "e").await.is_some());
    assert_eq!(counts(store.stats(now).await.unwrap()), (4, 3, 1, 0));
    assert!(matches!(
        store.claim(&req("c"), now).await.unwrap(),
        ClaimOutcome::Duplicate(_)
    ));
}

#[tokio::test]
async fn a_full_store_still_answers_for_the_keys_it_holds() {
    let store = MemoryStore::with_capacity(2);
    let held = claim_new(&store, "held", T0).await;
    done(&store, "done", T0, at(RETENTION)).await;
    // A key already stored needs no room: its claims are answered, whatever the state.
    let outcomes = store
        .claim_many(&[req("held"), req("done")], at(ms(1)))
        .await
        .unwrap();
    assert!(matches!(outcomes[0], ClaimOutcome::InProgress { .. }));
    assert!(matches!(outcomes[1], ClaimOutcome::Duplicate(_)));
    // Taking over an expired lease reuses its place.
    let now = at(LEASE + ms(1));
    let takeover = claim_new(&store, "held", now).await;
    assert_eq!(takeover.attempt, 2);
    assert_ne!(takeover.token, held.token);
    // A released claim frees its place.
    store.release(&takeover).await.unwrap();
    claim_new(&store, "new", now).await;
    assert_full(store.claim(&req("another"), now).await, 2);
}

#[tokio::test]
async fn a_batch_needing_one_place_fits_in_the_last_one() {
    let store = MemoryStore::with_capacity(3);
    claim_new(&store, "a", T0).await;
    claim_new(&store, "b", T0).await;
    let outcomes = store
        .claim_many(&[req("c"), req("c"), req("a")], T0)
        .await
        .unwrap();
    let kinds: Vec<_> = outcomes.iter().map(ClaimOutcome::kind).collect();
    assert_eq!(kinds, ["new", "in_progress", "in_progress"]);
    assert_full(store.claim(&req("d"), T0).await, 3);
}

/// Many claims of distinct keys at once: exactly `capacity` are granted, the rest refused, and
/// every granted claim is still held afterwards (none was evicted to make room for another).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_at_capacity_grant_exactly_the_capacity_and_evict_nothing() {
    const CAPACITY: usize = 64;
    const CLAIMANTS: usize = 256;
    let store = Arc::new(MemoryStore::with_capacity(CAPACITY));
    let barrier = Arc::new(tokio::sync::Barrier::new(CLAIMANTS));
    let tasks: Vec<_> = (0..CLAIMANTS)
        .map(|i| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.claim(&req(&format!("k{i}")), T0).await
            })
        })
        .collect();
    let mut granted = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(ClaimOutcome::New(claim)) => granted.push(claim),
            Err(Error::StoreFull { capacity: CAPACITY }) => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((granted.len(), refused), (CAPACITY, CLAIMANTS - CAPACITY));
    for claim in &granted {
        store
            .complete(claim, b"done", at(RETENTION))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", claim.key));
    }
    assert_eq!(
        counts(store.stats(T0).await.unwrap()),
        (CAPACITY as u64, 0, CAPACITY as u64, 0)
    );
}

#[tokio::test]
async fn a_batch_that_does_not_fit_claims_none_of_its_keys() {
    let store = MemoryStore::with_capacity(4);
    let now = Timestamp::from_millis(1_000);
    let lease = Duration::from_secs(30);
    let request =
        |key: &str| ClaimRequest::new(Scope::default(), Key::new(key).unwrap(), None, lease);
    store.claim(&request("a"), now).await.unwrap();
    // "b", "b" and "c" need two places; three are left, so this fits ...
    let fits = [request("b"), request("b"), request("c")];
    assert_eq!(store.claim_many(&fits, now).await.unwrap().len(), 3);
    // ... and this does not (two new keys, one place): nothing of it is written, not even "d",
    // which alone would fit.
    let too_many = [request("d"), request("a"), request("e")];
    let full = store.claim_many(&too_many, now).await.unwrap_err();
    assert!(matches!(full, Error::StoreFull { capacity: 4 }), "{full}");
    for key in ["d", "e"] {
        let record = store.get(&Scope::default(), &Key::new(key).unwrap()).await;
        assert_eq!(record.unwrap(), None, "{key} was claimed by a failed batch");
    }
}
