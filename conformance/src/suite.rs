//! The behaviour suite: each test a plain async function over a fresh store, named for the
//! guarantee it proves.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use oncely_core::{
    ClaimOutcome, Clock, Completion, Error, Fingerprint, Key, KeyError, LostReason, MAX_KEY_BYTES,
    MAX_SCOPE_BYTES, ManualClock, Oncely, PURGE_KEY, PURGE_SCOPE, PurgeRun, RunError, RunOutcome,
    Scope, Store, VersionCheck,
};
use tokio::sync::Barrier;

use crate::TestFuture;

/// The message of the panic the suite raises on purpose (in a handler, to prove the claim is
/// released); the harness keeps it out of the test output.
pub const INTENDED_PANIC: &str = "intended panic: handler bug";

/// The lease every test uses.
pub const LEASE: Duration = Duration::from_secs(30);
/// The retention every test uses.
pub const RETENTION: Duration = Duration::from_secs(3600);

type Test = fn(Arc<dyn Store>) -> TestFuture;

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        /// Every test in the suite, by name.
        pub fn all() -> Vec<(&'static str, Test)> {
            vec![$((stringify!($name), (|s| Box::pin($name(s)) as TestFuture) as Test)),*]
        }
    };
}

suite!(
    first_claim_is_new,
    completed_key_is_duplicate_with_stored_outcome,
    claim_during_live_lease_is_in_progress_with_retry_after,
    different_fingerprint_is_conflict_while_in_progress_and_after_completion,
    claims_without_fingerprint_never_conflict,
    release_makes_key_claimable_again,
    expired_lease_is_taken_over_and_old_holder_is_fenced,
    holder_past_its_lease_may_still_complete_if_nobody_took_over,
    completing_twice_is_rejected,
    complete_many_answers_each_item_on_its_own,
    completed_record_is_duplicate_until_retention_ends_then_new,
    claim_many_answers_in_order_with_in_batch_duplicates,
    claim_many_mixes_every_outcome,
    get_returns_the_record_and_stops_after_expiry,
    purge_is_bounded_by_its_limit_and_spares_live_records,
    purge_removes_expired_leases_and_fences_their_holders,
    only_one_instance_purges_at_a_time,
    empty_and_oversized_keys_are_typed_errors,
    longest_keys_and_scopes_round_trip_exactly,
    unusual_keys_are_stored_verbatim_and_kept_distinct,
    uuid_keys_differing_only_in_case_or_form_are_distinct,
    outcomes_round_trip_byte_for_byte,
    scopes_are_kept_apart,
    stats_count_records_by_state,
    version_guard_applies_only_newer_versions,
    run_executes_once_then_replays,
    run_releases_the_claim_when_the_handler_fails,
    run_releases_the_claim_when_the_handler_panics,
    run_reports_in_progress_and_conflict,
    concurrent_claims_yield_exactly_one_new,
    concurrent_claims_from_os_threads_yield_exactly_one_new,
    concurrent_overlapping_batches_grant_each_key_once,
    concurrent_single_claims_of_many_keys_grant_each_key_once,
    complete_racing_a_takeover_never_both_succeed,
    duplicate_storm_runs_the_effect_once,
    renewal_keeps_a_takeover_out_for_one_more_lease,
    holder_past_its_lease_may_still_renew_if_nobody_took_over,
    stale_token_cannot_renew,
    renewal_after_expiry_and_takeover_fails_and_spares_the_new_holder,
    completed_record_cannot_be_renewed,
    released_key_cannot_be_renewed,
    slow_handler_keeps_its_lease_and_runs_once_against_a_retrying_competitor,
    holder_that_stops_renewing_is_taken_over_about_one_lease_later,
);

fn setup(store: Arc<dyn Store>) -> (Oncely, ManualClock) {
    let clock = ManualClock::default();
    let oncely = Oncely::new(store)
        .with_clock(clock.clone())
        .with_lease(LEASE)
        .with_retention(RETENTION);
    (oncely, clock)
}

pub(crate) fn key(k: &str) -> Key {
    Key::new(k).expect("valid test key")
}

pub(crate) fn scope(s: &str) -> Scope {
    Scope::new(s).expect("valid test scope")
}

pub(crate) fn fp(s: &str) -> Option<Fingerprint> {
    Some(Fingerprint::of_bytes(s.as_bytes()))
}

fn expect_new(outcome: ClaimOutcome) -> oncely_core::Claim {
    match outcome {
        ClaimOutcome::New(claim) => claim,
        other => panic!("expected New, got {other:?}"),
    }
}

fn expect_lost<T: std::fmt::Debug>(result: oncely_core::Result<T>, want: LostReason) {
    match result {
        Err(Error::ClaimLost { reason, .. }) => assert_eq!(reason, want),
        other => panic!("expected ClaimLost({want:?}), got {other:?}"),
    }
}

async fn first_claim_is_new(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store);
    let claim = expect_new(
        oncely
            .claim(&Scope::default(), &key("a"), None)
            .await
            .unwrap(),
    );
    assert_eq!(claim.attempt, 1);
    assert_eq!(claim.lease_until, clock.now().saturating_add(LEASE));
    assert_eq!(claim.key, key("a"));
}

async fn completed_key_is_duplicate_with_stored_outcome(store: Arc<dyn Store>) {
    let (oncely, _) = setup(store);
    let s = Scope::default();
    let claim = expect_new(oncely.claim(&s, &key("a"), fp("p")).await.unwrap());
    oncely.complete(&claim, b"receipt-1").await.unwrap();
    for _ in 0..3 {
        match oncely.claim(&s, &key("a"), fp("p")).await.unwrap() {
            ClaimOutcome::Duplicate(rec) => {
                assert_eq!(rec.outcome(), Some(&b"receipt-1"[..]));
                assert_eq!(rec.fingerprint, fp("p"));
                assert_eq!(rec.key, key("a"));
            }
            other => panic!("expected Duplicate, got {other:?}"),
        }
    }
}

async fn claim_during_live_lease_is_in_progress_with_retry_after(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store);
    let s = Scope::default();
    expect_new(oncely.claim(&s, &key("a"), None).await.unwrap());
    clock.advance(Duration::from_secs(10));
    assert_eq!(
        oncely.claim(&s, &key("a"), None).await.unwrap(),
        ClaimOutcome::InProgress {
            retry_after: Duration::from_secs(20) + Duration::from_millis(1)
        }
    );
    // Still live on its last millisecond.
    clock.advance(Duration::from_secs(20));
    assert!(matches!(
        oncely.claim(&s, &key("a"), None).await.unwrap(),
        ClaimOutcome::InProgress { .. }
    ));
}

async fn different_fingerprint_is_conflict_while_in_progress_and_after_completion(
    store: Arc<dyn Store>,
) {
    let (oncely, _) = setup(store);
    let s = Scope::default();
    let claim = expect_new(oncely.claim(&s, &key("a"), fp("first")).await.unwrap());
    assert_eq!(
        oncely.claim(&s, &key("a"), fp("second")).await.unwrap(),
        ClaimOutcome::Conflict {
            stored: fp("first")
        }
    );
    oncely.complete(&claim, b"done").await.unwrap();
    assert_eq!(
        oncely.claim(&s, &key("a"), fp("second")).await.unwrap(),
        ClaimOutcome::Conflict {
            stored: fp("first")
        }
    );
    // The conflict changed nothing: the right payload still replays.
    assert!(matches!(
        oncely.claim(&s, &key("a"), fp("first")).await.unwrap(),
        ClaimOutcome::Duplicate(_)
    ));
}

async fn claims_without_fingerprint_never_conflict(store: Arc<dyn Store>) {
    let (oncely, _) = setup(store);
    let s = Scope::default();
    let claim = expect_new(oncely.claim(&s, &key("a"), fp("x")).await.unwrap());
    oncely.complete(&claim, b"").await.unwrap();
    assert!(matches!(
        oncely.claim(&s, &key("a"), None).await.unwrap(),
        ClaimOutcome::Duplicate(_)
    ));
    let claim = expect_new(oncely.claim(&s, &key("b"), None).await.unwrap());
    oncely.complete(&claim, b"").await.unwrap();
    assert!(matches!(
        oncely.claim(&s, &key("b"), fp("y")).await.unwrap(),
        ClaimOutcome::Duplicate(_)
    ));
}

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

async fn expired_lease_is_taken_over_and_old_holder_is_fenced(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store);
    let s = Scope::default();
    let crashed = expect_new(oncely.claim(&s, &key("a"), fp("p")).await.unwrap());
    clock.advance(LEASE + Duration::from_millis(1));
    let takeover = expect_new(oncely.claim(&s, &key("a"), fp("p")).await.unwrap());
    assert_eq!(takeover.attempt, 2);
    assert_ne!(takeover.token, crashed.token);
    // The crashed holder wakes up: fenced out of both complete and release.
    expect_lost(
        oncely.complete(&crashed, b"stale").await,
        LostReason::TakenOver,
    );
    expect_lost(oncely.release(&crashed).await, LostReason::TakenOver);
    // The new holder is unaffected.
    assert!(matches!(
        oncely.claim(&s, &key("a"), fp("p")).await.unwrap(),
        ClaimOutcome::InProgress { .. }
    ));
    oncely.complete(&takeover, b"fresh").await.unwrap();
    let rec = oncely.get(&s, &key("a")).await.unwrap().unwrap();
    assert_eq!(rec.outcome(), Some(&b"fresh"[..]));
    assert_eq!(rec.attempt, 2);
}

async fn holder_past_its_lease_may_still_complete_if_nobody_took_over(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store);
    let s = Scope::default();
    let slow = expect_new(oncely.claim(&s, &key("a"), None).await.unwrap());
    clock.advance(LEASE * 3);
    oncely.complete(&slow, b"late but done").await.unwrap();
    match oncely.claim(&s, &key("a"), None).await.unwrap() {
        ClaimOutcome::Duplicate(rec) => assert_eq!(rec.outcome(), Some(&b"late but done"[..])),
        other => panic!("expected Duplicate, got {other:?}"),
    }
}

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

async fn empty_and_oversized_keys_are_typed_errors(store: Arc<dyn Store>) {
    let (oncely, _) = setup(store);
    assert_eq!(Key::new(""), Err(KeyError::Empty { what: "key" }));
    assert_eq!(
        Key::new("k".repeat(MAX_KEY_BYTES + 1)),
        Err(KeyError::TooLong {
            what: "key",
            len: MAX_KEY_BYTES + 1,
            max: MAX_KEY_BYTES
        })
    );
    assert_eq!(Scope::new(""), Err(KeyError::Empty { what: "scope" }));
    assert!(matches!(
        Scope::new("s".repeat(MAX_SCOPE_BYTES + 1)),
        Err(KeyError::TooLong { .. })
    ));
    // A rejected key never reaches the store: a neighbouring valid key is unaffected.
    let near = Key::new("k".repeat(MAX_KEY_BYTES)).unwrap();
    expect_new(oncely.claim(&Scope::default(), &near, None).await.unwrap());
}

async fn longest_keys_and_scopes_round_trip_exactly(store: Arc<dyn Store>) {
    let (oncely, _) = setup(store);
    // 170 three-byte characters plus two ASCII bytes: exactly 512 bytes.
    let long_key = Key::new(format!("{}ab", "€".repeat(170))).unwrap();
    assert_eq!(long_key.as_str().len(), MAX_KEY_BYTES);
    let long_scope = Scope::new("s".repeat(MAX_SCOPE_BYTES)).unwrap();
    let claim = expect_new(oncely.claim(&long_scope, &long_key, None).await.unwrap());
    oncely.complete(&claim, b"ok").await.unwrap();
    let rec = oncely.get(&long_scope, &long_key).await.unwrap().unwrap();
    assert_eq!((rec.scope, rec.key), (long_scope.clone(), long_key.clone()));
    // One byte short is a different key.
    let shorter = Key::new(format!("{}a", "€".repeat(170))).unwrap();
    expect_new(oncely.claim(&long_scope, &shorter, None).await.unwrap());
}

async fn unusual_keys_are_stored_verbatim_and_kept_distinct(store: Arc<dyn Store>) {
    let (oncely, _) = setup(store);
    let s = Scope::default();
    let keys = [
        "a",
        "A",
        "a ",
        " a",
        "a\0b",
        "a\nb",
        "'; DROP TABLE records; --",
        "%",
        "_",
        "\\",
        "ключ",
        "🔑",
        "a:b",
        "a/b",
        "{scope}",
    ];
    for k in keys {
        expect_new(oncely.claim(&s, &key(k), None).await.unwrap());
    }
    for k in keys {
        let rec = oncely.get(&s, &key(k)).await.unwrap().expect("stored");
        assert_eq!(rec.key.as_str(), k);
        assert!(matches!(
            oncely.claim(&s, &key(k), None).await.unwrap(),
            ClaimOutcome::InProgress { .. }
        ));
    }
}

async fn uuid_keys_differing_only_in_case_or_form_are_distinct(store: Arc<dyn Store>) {
    let (oncely, _) = setup(store);
    let s = Scope::default();
    // Stores may keep UUID keys compactly; every spelling must still be its own key.
    let spellings = [
        "0f8fad5b-d9cb-469f-a165-70867728950e",
        "0F8FAD5B-D9CB-469F-A165-70867728950E",
        "0f8fad5bd9cb469fa16570867728950e",
        "{0f8fad5b-d9cb-469f-a165-70867728950e}",
        "0f8fad5b-d9cb-469f-a165-70867728950",
        "0f8fad5b-d9cb-469f-a165-70867728950g",
    ];
    for (i, k) in spellings.iter().enumerate() {
        let claim = expect_new(oncely.claim(&s, &key(k), None).await.unwrap());
        oncely
            .complete(&claim, format!("out-{i}").as_bytes())
            .await
            .unwrap();
    }
    for (i, k) in spellings.iter().enumerate() {
        let rec = oncely.get(&s, &key(k)).await.unwrap().expect("stored");
        assert_eq!(rec.key.as_str(), *k);
        assert_eq!(rec.outcome(), Some(format!("out-{i}").as_bytes()));
    }
    assert_eq!(oncely.purge(Duration::ZERO, 100).await.unwrap(), 0);
    assert_eq!(
        oncely.stats().await.unwrap().completed,
        spellings.len() as u64
    );
}

async fn outcomes_round_trip_byte_for_byte(store: Arc<dyn Store>) {
    let (oncely, _) = setup(store);
    let s = Scope::default();
    let every_byte: Vec<u8> = (0..=255u8).cycle().take(1024).collect();
    let large: Vec<u8> = (0..1_048_576u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    for (name, outcome) in [
        ("empty", Vec::new()),
        ("every-byte", every_byte),
        ("one-mib", large),
    ] {
        let claim = expect_new(oncely.claim(&s, &key(name), None).await.unwrap());
        oncely.complete(&claim, &outcome).await.unwrap();
        match oncely.claim(&s, &key(name), None).await.unwrap() {
            ClaimOutcome::Duplicate(rec) => {
                assert!(rec.outcome() == Some(&outcome[..]), "{name} differs")
            }
            other => panic!("expected Duplicate, got {other:?}"),
        }
    }
}

async fn scopes_are_kept_apart(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store);
    let (a, b) = (scope("tenant-a"), scope("tenant-b"));
    let in_a = expect_new(oncely.claim(&a, &key("k"), fp("pa")).await.unwrap());
    // Same key, other scope, other payload: a different operation, not a conflict.
    let in_b = expect_new(oncely.claim(&b, &key("k"), fp("pb")).await.unwrap());
    oncely.complete(&in_a, b"from a").await.unwrap();
    assert!(matches!(
        oncely.claim(&b, &key("k"), fp("pb")).await.unwrap(),
        ClaimOutcome::InProgress { .. }
    ));
    oncely.complete(&in_b, b"from b").await.unwrap();
    assert_eq!(
        oncely.get(&a, &key("k")).await.unwrap().unwrap().outcome(),
        Some(&b"from a"[..])
    );
    assert_eq!(
        oncely.get(&b, &key("k")).await.unwrap().unwrap().outcome(),
        Some(&b"from b"[..])
    );
    // A holder from one scope cannot touch the other.
    let in_a2 = expect_new(oncely.claim(&a, &key("k2"), None).await.unwrap());
    let mut forged = in_a2.clone();
    forged.scope = b.clone();
    expect_lost(oncely.complete(&forged, b"x").await, LostReason::Missing);
    clock.advance(Duration::from_secs(1));
    assert!(matches!(
        oncely.claim(&a, &key("k2"), None).await.unwrap(),
        ClaimOutcome::InProgress { .. }
    ));
}

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

async fn version_guard_applies_only_newer_versions(store: Arc<dyn Store>) {
    let (oncely, _) = setup(store);
    let (s, e) = (Scope::default(), key("order-1"));
    assert_eq!(
        oncely.apply_if_newer(&s, &e, 5).await.unwrap(),
        VersionCheck::Applied { previous: None }
    );
    assert_eq!(
        oncely.apply_if_newer(&s, &e, 5).await.unwrap(),
        VersionCheck::Stale { current: 5 }
    );
    assert_eq!(
        oncely.apply_if_newer(&s, &e, 4).await.unwrap(),
        VersionCheck::Stale { current: 5 }
    );
    assert_eq!(
        oncely.apply_if_newer(&s, &e, 9).await.unwrap(),
        VersionCheck::Applied { previous: Some(5) }
    );
    // Versions are per entity and per scope.
    assert_eq!(
        oncely.apply_if_newer(&s, &key("order-2"), 1).await.unwrap(),
        VersionCheck::Applied { previous: None }
    );
    assert_eq!(
        oncely.apply_if_newer(&scope("other"), &e, 1).await.unwrap(),
        VersionCheck::Applied { previous: None }
    );
    assert_eq!(
        oncely.apply_if_newer(&s, &key("zero"), 0).await.unwrap(),
        VersionCheck::Applied { previous: None }
    );
    assert_eq!(
        oncely.apply_if_newer(&s, &key("zero"), 0).await.unwrap(),
        VersionCheck::Stale { current: 0 }
    );
    version_guard_under_concurrency(&oncely).await;
}

/// Concurrent callers of the version guard. A read-then-write that is not atomic lets two
/// callers apply over the same stored version; each check below sees that.
async fn version_guard_under_concurrency(oncely: &Oncely) {
    const RACERS: usize = 8;
    const ROUNDS: u64 = 20;
    const VERSIONS: u64 = 40;
    let race = |entity: &'static str, versions: Vec<u64>| {
        let barrier = Arc::new(Barrier::new(versions.len()));
        let tasks: Vec<_> = versions
            .into_iter()
            .map(|v| {
                let (oncely, barrier) = (oncely.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let check = oncely
                        .apply_if_newer(&Scope::default(), &key(entity), v)
                        .await
                        .unwrap();
                    (v, check)
                })
            })
            .collect();
        async move {
            let mut checks = Vec::new();
            for t in tasks {
                checks.push(t.await.unwrap());
            }
            checks
        }
    };

    // Rounds of callers racing to apply one version, each round's above the last: in every
    // round exactly one caller applies it, over the previous round's, and the others are stale.
    for v in 1..=ROUNDS {
        let checks = race("rounds", vec![v; RACERS]).await;
        let applied: Vec<_> = checks
            .iter()
            .filter(|(_, c)| matches!(c, VersionCheck::Applied { .. }))
            .collect();
        let previous = (v > 1).then(|| v - 1);
        assert_eq!(
            applied,
            [&(v, VersionCheck::Applied { previous })],
            "round {v}: exactly one of {RACERS} callers applies version {v}: {checks:?}"
        );
        assert!(
            checks
                .iter()
                .all(|(_, c)| matches!(c, VersionCheck::Applied { .. })
                    || *c == VersionCheck::Stale { current: v }),
            "round {v}: {checks:?}"
        );
    }

    // Every version at once, each sent by three callers, in a scrambled order: each version is
    // applied at most once, the applied ones form one chain (each applied over the one applied
    // just before it, so none was lost), and the chain ends at the highest version.
    let versions: Vec<u64> = (0..3)
        .flat_map(|pass| (0..VERSIONS).map(move |i| (i * (7 + 2 * pass) + pass) % VERSIONS + 1))
        .collect();
    let checks = race("storm", versions).await;
    let mut applied: Vec<(u64, Option<u64>)> = checks
        .iter()
        .filter_map(|(v, c)| match c {
            VersionCheck::Applied { previous } => Some((*v, *previous)),
            VersionCheck::Stale { .. } => None,
        })
        .collect();
    applied.sort();
    let mut per_version: HashMap<u64, usize> = HashMap::new();
    for (v, _) in &applied {
        *per_version.entry(*v).or_default() += 1;
    }
    assert!(
        per_version.values().all(|&n| n == 1),
        "a version applied more than once: {applied:?}"
    );
    let mut before = None;
    for &(v, previous) in &applied {
        assert_eq!(
            previous, before,
            "version {v} applied over {previous:?}, but the version applied before it was \
             {before:?}: {applied:?}"
        );
        before = Some(v);
    }
    assert_eq!(
        before,
        Some(VERSIONS),
        "the highest version is applied: {applied:?}"
    );
    for (v, check) in &checks {
        if let VersionCheck::Stale { current } = check {
            assert!(
                current >= v && per_version.contains_key(current),
                "{v} answered {check:?}: {applied:?}"
            );
        }
    }
    for entity in ["rounds", "storm"] {
        let highest = if entity == "rounds" { ROUNDS } else { VERSIONS };
        assert_eq!(
            oncely
                .apply_if_newer(&Scope::default(), &key(entity), highest)
                .await
                .unwrap(),
            VersionCheck::Stale { current: highest }
        );
    }
}

async fn run_executes_once_then_replays(store: Arc<dyn Store>) {
    let (oncely, _) = setup(store);
    let effects = AtomicUsize::new(0);
    let handler = || async {
        effects.fetch_add(1, Ordering::SeqCst);
        Ok::<_, std::io::Error>(b"charged".to_vec())
    };
    let s = Scope::default();
    let first = oncely
        .run(&s, &key("pay-1"), fp("p"), handler)
        .await
        .unwrap();
    let second = oncely
        .run(&s, &key("pay-1"), fp("p"), handler)
        .await
        .unwrap();
    assert_eq!(first, RunOutcome::Executed(b"charged".to_vec()));
    assert_eq!(second, RunOutcome::Replayed(b"charged".to_vec()));
    assert_eq!(effects.load(Ordering::SeqCst), 1);
}

async fn run_releases_the_claim_when_the_handler_fails(store: Arc<dyn Store>) {
    let (oncely, _) = setup(store);
    let s = Scope::default();
    let failed = oncely
        .run(&s, &key("k"), None, || async {
            Err::<Vec<u8>, _>("smtp down")
        })
        .await;
    assert!(matches!(failed, Err(RunError::Handler("smtp down"))));
    assert_eq!(oncely.get(&s, &key("k")).await.unwrap(), None);
    let retried = oncely
        .run(&s, &key("k"), None, || async {
            Ok::<_, &str>(b"sent".to_vec())
        })
        .await
        .unwrap();
    assert_eq!(retried, RunOutcome::Executed(b"sent".to_vec()));
}

async fn run_releases_the_claim_when_the_handler_panics(store: Arc<dyn Store>) {
    let (oncely, _) = setup(store);
    let s = Scope::default();
    let panicked = oncely
        .run(&s, &key("k"), None, || async {
            if always() {
                panic!("{INTENDED_PANIC}");
            }
            Ok::<Vec<u8>, std::io::Error>(Vec::new())
        })
        .await;
    match panicked {
        Err(RunError::Panicked(msg)) => assert_eq!(msg, INTENDED_PANIC),
        other => panic!("expected Panicked, got {other:?}"),
    }
    assert_eq!(oncely.get(&s, &key("k")).await.unwrap(), None);
    let retried = oncely
        .run(&s, &key("k"), None, || async {
            Ok::<_, std::io::Error>(b"ok".to_vec())
        })
        .await
        .unwrap();
    assert_eq!(retried, RunOutcome::Executed(b"ok".to_vec()));
}

// Keeps the compiler from seeing the panic as unconditional.
fn always() -> bool {
    std::hint::black_box(true)
}

async fn run_reports_in_progress_and_conflict(store: Arc<dyn Store>) {
    let (oncely, _) = setup(store);
    let s = Scope::default();
    let held = expect_new(oncely.claim(&s, &key("k"), fp("p")).await.unwrap());
    let never = || async {
        if always() {
            panic!("must not run");
        }
        Ok::<Vec<u8>, std::io::Error>(Vec::new())
    };
    assert!(matches!(
        oncely.run(&s, &key("k"), fp("p"), never).await,
        Err(RunError::InProgress { .. })
    ));
    assert!(matches!(
        oncely.run(&s, &key("k"), fp("q"), never).await,
        Err(RunError::Conflict { .. })
    ));
    oncely.complete(&held, b"").await.unwrap();
    assert!(matches!(
        oncely.run(&s, &key("k"), fp("q"), never).await,
        Err(RunError::Conflict { .. })
    ));
}

async fn concurrent_claims_yield_exactly_one_new(store: Arc<dyn Store>) {
    const CLAIMANTS: usize = 64;
    let (oncely, _) = setup(store);
    for round in 0..10 {
        let barrier = Arc::new(Barrier::new(CLAIMANTS));
        let tasks: Vec<_> = (0..CLAIMANTS)
            .map(|_| {
                let (oncely, barrier) = (oncely.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    oncely
                        .claim(&Scope::default(), &key(&format!("hot-{round}")), None)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut kinds: HashMap<&str, usize> = HashMap::new();
        for t in tasks {
            *kinds.entry(t.await.unwrap().kind()).or_default() += 1;
        }
        assert_eq!(kinds.get("new"), Some(&1), "round {round}: {kinds:?}");
        assert_eq!(
            kinds.get("in_progress"),
            Some(&(CLAIMANTS - 1)),
            "round {round}: {kinds:?}"
        );
    }
}

async fn concurrent_claims_from_os_threads_yield_exactly_one_new(store: Arc<dyn Store>) {
    const THREADS: usize = 32;
    let (oncely, _) = setup(store);
    let outcomes = tokio::task::spawn_blocking(move || {
        let barrier = Arc::new(std::sync::Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let (oncely, barrier) = (oncely.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    barrier.wait();
                    rt.block_on(oncely.claim(&Scope::default(), &key("hot"), None))
                        .unwrap()
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let news = outcomes
        .iter()
        .filter(|o| matches!(o, ClaimOutcome::New(_)))
        .count();
    assert_eq!(news, 1, "{outcomes:?}");
}

async fn concurrent_overlapping_batches_grant_each_key_once(store: Arc<dyn Store>) {
    const TASKS: usize = 16;
    const KEYS: usize = 50;
    let (oncely, _) = setup(store);
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let oncely = oncely.clone();
            tokio::spawn(async move {
                // Each task walks the keys from a different starting point.
                let batch = (0..KEYS).map(|i| {
                    let k = (i + t * 7) % KEYS;
                    (Scope::default(), key(&format!("k{k}")), None)
                });
                oncely.claim_many(batch).await.unwrap()
            })
        })
        .collect();
    let mut granted: HashMap<Key, usize> = HashMap::new();
    for t in tasks {
        for claim in t
            .await
            .unwrap()
            .into_iter()
            .filter_map(ClaimOutcome::into_new)
        {
            *granted.entry(claim.key).or_default() += 1;
        }
    }
    assert_eq!(granted.len(), KEYS);
    assert!(granted.values().all(|&n| n == 1), "{granted:?}");
}

/// Many single claims and completes at once, as a busy consumer makes them: stores that
/// coalesce concurrent calls into batches (group commit) must still grant each key once.
async fn concurrent_single_claims_of_many_keys_grant_each_key_once(store: Arc<dyn Store>) {
    const TASKS: usize = 256;
    const KEYS: usize = 64;
    let (oncely, _) = setup(store);
    let barrier = Arc::new(Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (oncely, barrier) = (oncely.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let k = key(&format!("k{}", t % KEYS));
                match oncely.claim(&Scope::default(), &k, None).await.unwrap() {
                    ClaimOutcome::New(claim) => {
                        oncely
                            .complete(&claim, k.as_str().as_bytes())
                            .await
                            .unwrap();
                        Some(k)
                    }
                    ClaimOutcome::InProgress { .. } | ClaimOutcome::Duplicate(_) => None,
                    other => panic!("{other:?}"),
                }
            })
        })
        .collect();
    let mut granted: HashMap<Key, usize> = HashMap::new();
    for t in tasks {
        if let Some(k) = t.await.unwrap() {
            *granted.entry(k).or_default() += 1;
        }
    }
    assert_eq!(granted.len(), KEYS, "{granted:?}");
    assert!(granted.values().all(|&n| n == 1), "{granted:?}");
    for n in 0..KEYS {
        let k = key(&format!("k{n}"));
        let rec = oncely.get(&Scope::default(), &k).await.unwrap().unwrap();
        assert_eq!(rec.outcome(), Some(k.as_str().as_bytes()));
    }
}

/// Which of a late complete and a takeover of the same claim reached the store first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Won {
    Complete,
    Takeover,
}

/// The holder of an expired lease completes while another delivery claims the key: exactly one
/// of them wins. Each order is first forced (one call strictly after the other) so that both
/// outcomes are checked whatever the scheduling; then the two race for real, with the head start
/// given to each side in turn, every round's pair of answers checked, until both orders have
/// happened in the races too (a race that only ever went one way would prove nothing).
async fn complete_racing_a_takeover_never_both_succeed(store: Arc<dyn Store>) {
    // At least this many races; more, up to the cap, while one order has not happened yet.
    const RACES: usize = 60;
    const MAX_RACES: usize = 300;
    let (oncely, clock) = setup(store);
    let s = Scope::default();
    let mut races: HashMap<Won, usize> = HashMap::new();
    for round in 0..MAX_RACES + 2 {
        if round >= RACES + 2 && races.len() == 2 {
            break;
        }
        let k = key(&format!("race-{round}"));
        let holder = expect_new(oncely.claim(&s, &k, None).await.unwrap());
        clock.advance(LEASE + Duration::from_millis(1));
        let (completed, claimed) = match round {
            0 => {
                let completed = oncely.complete(&holder, b"by holder").await;
                (completed, oncely.claim(&s, &k, None).await.unwrap())
            }
            1 => {
                let claimed = oncely.claim(&s, &k, None).await.unwrap();
                (oncely.complete(&holder, b"by holder").await, claimed)
            }
            _ => {
                // 0: no head start, 1: the complete starts a little earlier, 2: the claim does.
                let head_start = round % 3;
                let barrier = Arc::new(Barrier::new(2));
                let completing = {
                    let (oncely, barrier, holder) =
                        (oncely.clone(), barrier.clone(), holder.clone());
                    tokio::spawn(async move {
                        barrier.wait().await;
                        if head_start == 2 {
                            tokio::task::yield_now().await;
                        }
                        oncely.complete(&holder, b"by holder").await
                    })
                };
                let claiming = {
                    let (oncely, barrier, k) = (oncely.clone(), barrier.clone(), k.clone());
                    tokio::spawn(async move {
                        barrier.wait().await;
                        if head_start == 1 {
                            tokio::task::yield_now().await;
                        }
                        oncely.claim(&Scope::default(), &k, None).await.unwrap()
                    })
                };
                (completing.await.unwrap(), claiming.await.unwrap())
            }
        };
        let won = match (completed, claimed) {
            (Ok(()), ClaimOutcome::Duplicate(rec)) => {
                assert_eq!(rec.outcome(), Some(&b"by holder"[..]), "round {round}");
                assert_eq!(rec.token, holder.token, "round {round}");
                Won::Complete
            }
            (
                Err(Error::ClaimLost {
                    reason: LostReason::TakenOver,
                    ..
                }),
                ClaimOutcome::New(c),
            ) => {
                assert_ne!(c.token, holder.token, "round {round}");
                assert_eq!(c.attempt, 2, "round {round}");
                let rec = oncely.get(&s, &k).await.unwrap().unwrap();
                assert!(!rec.is_completed(), "round {round}: {rec:?}");
                assert_eq!(rec.token, c.token, "round {round}");
                Won::Takeover
            }
            (completed, claimed) => {
                panic!("round {round}: complete={completed:?} claim={claimed:?}")
            }
        };
        match round {
            0 => assert_eq!(won, Won::Complete, "the complete made first"),
            1 => assert_eq!(won, Won::Takeover, "the takeover made first"),
            _ => *races.entry(won).or_insert(0) += 1,
        }
    }
    assert_eq!(
        races.len(),
        2,
        "in {} real races one order never happened: {races:?}",
        races.values().sum::<usize>()
    );
}

async fn duplicate_storm_runs_the_effect_once(store: Arc<dyn Store>) {
    const DELIVERIES: usize = 48;
    let (oncely, _) = setup(store);
    let effects = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(DELIVERIES));
    let tasks: Vec<_> = (0..DELIVERIES)
        .map(|_| {
            let (oncely, effects, barrier) = (oncely.clone(), effects.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                loop {
                    let effects = effects.clone();
                    let handler = || async move {
                        effects.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        Ok::<_, std::io::Error>(b"stock-1".to_vec())
                    };
                    match oncely
                        .run(&Scope::default(), &key("order-77"), fp("o"), handler)
                        .await
                    {
                        Ok(outcome) => return outcome,
                        // Another delivery is mid-flight: redeliver a moment later, as a broker would.
                        Err(RunError::InProgress { .. }) => {
                            tokio::time::sleep(Duration::from_millis(2)).await
                        }
                        Err(other) => panic!("{other:?}"),
                    }
                }
            })
        })
        .collect();
    let mut executed = 0;
    for t in tasks {
        let outcome = t.await.unwrap();
        executed += usize::from(!outcome.was_replayed());
        assert_eq!(outcome.into_inner(), b"stock-1");
    }
    assert_eq!((executed, effects.load(Ordering::SeqCst)), (1, 1));
}

// Lease renewal (`Store::extend`, `Oncely::extend`, `Oncely::renewing`).

async fn renewal_keeps_a_takeover_out_for_one_more_lease(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store.clone());
    let s = Scope::default();
    let mut holder = expect_new(oncely.claim(&s, &key("a"), fp("p")).await.unwrap());
    let first_deadline = holder.lease_until;
    clock.advance(LEASE * 2 / 3);
    oncely.extend(&mut holder).await.unwrap();
    let renewed = clock.now().saturating_add(LEASE);
    assert_eq!(holder.lease_until, renewed);
    // Renewing to the deadline already stored is still a renewal, not a lost claim.
    oncely.extend(&mut holder).await.unwrap();
    let rec = store.get(&s, &key("a")).await.unwrap().unwrap();
    assert_eq!(
        (rec.expires_at, rec.token, rec.attempt, rec.is_completed()),
        (renewed, holder.token, 1, false)
    );
    assert_eq!(rec.fingerprint, fp("p"));
    // Past the first deadline, before the renewed one: still held.
    clock.set(first_deadline);
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        oncely.claim(&s, &key("a"), fp("p")).await.unwrap(),
        ClaimOutcome::InProgress {
            retry_after: clock.now().until(renewed) + Duration::from_millis(1)
        }
    );
    // Held through the renewed deadline, inclusive; not a moment longer.
    clock.set(renewed);
    assert!(matches!(
        oncely.claim(&s, &key("a"), fp("p")).await.unwrap(),
        ClaimOutcome::InProgress { .. }
    ));
    clock.advance(Duration::from_millis(1));
    let taker = expect_new(oncely.claim(&s, &key("a"), fp("p")).await.unwrap());
    assert_eq!(taker.attempt, 2);
    expect_lost(oncely.extend(&mut holder).await, LostReason::TakenOver);
}

async fn holder_past_its_lease_may_still_renew_if_nobody_took_over(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store);
    let s = Scope::default();
    let mut slow = expect_new(oncely.claim(&s, &key("a"), None).await.unwrap());
    clock.advance(LEASE * 3);
    oncely.extend(&mut slow).await.unwrap();
    assert_eq!(slow.lease_until, clock.now().saturating_add(LEASE));
    clock.advance(LEASE);
    assert!(matches!(
        oncely.claim(&s, &key("a"), None).await.unwrap(),
        ClaimOutcome::InProgress { .. }
    ));
    oncely
        .complete(&slow, b"late, renewed, done")
        .await
        .unwrap();
    match oncely.claim(&s, &key("a"), None).await.unwrap() {
        ClaimOutcome::Duplicate(rec) => {
            assert_eq!(rec.outcome(), Some(&b"late, renewed, done"[..]))
        }
        other => panic!("expected Duplicate, got {other:?}"),
    }
}

async fn stale_token_cannot_renew(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store.clone());
    let s = Scope::default();
    let holder = expect_new(oncely.claim(&s, &key("a"), None).await.unwrap());
    let before = store.get(&s, &key("a")).await.unwrap().unwrap();
    let mut forged = holder.clone();
    forged.token = holder.token.wrapping_add(1);
    let far = clock.now().saturating_add(LEASE * 100);
    expect_lost(store.extend(&forged, far).await, LostReason::TakenOver);
    // Nothing changed: the record is the holder's, with its own deadline.
    assert_eq!(store.get(&s, &key("a")).await.unwrap().unwrap(), before);
    // Nor was the lease renewed behind the record's back: it ends when the holder's did.
    clock.advance(LEASE + Duration::from_millis(1));
    expect_new(oncely.claim(&s, &key("a"), None).await.unwrap());
    // The same token in another scope is another record, which does not exist.
    let mut elsewhere = holder.clone();
    elsewhere.scope = scope("elsewhere");
    expect_lost(store.extend(&elsewhere, far).await, LostReason::Missing);
    assert_eq!(oncely.get(&elsewhere.scope, &key("a")).await.unwrap(), None);
}

async fn renewal_after_expiry_and_takeover_fails_and_spares_the_new_holder(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store.clone());
    let s = Scope::default();
    let mut crashed = expect_new(oncely.claim(&s, &key("a"), None).await.unwrap());
    clock.advance(LEASE + Duration::from_millis(1));
    let mut taker = expect_new(oncely.claim(&s, &key("a"), None).await.unwrap());
    clock.advance(Duration::from_secs(1));
    let stale_lease = crashed.lease_until;
    expect_lost(oncely.extend(&mut crashed).await, LostReason::TakenOver);
    assert_eq!(
        crashed.lease_until, stale_lease,
        "a failed renewal moved the claim's deadline"
    );
    // The new holder's record is untouched: its token, its attempt, its deadline.
    let rec = store.get(&s, &key("a")).await.unwrap().unwrap();
    assert_eq!(
        (rec.token, rec.attempt, rec.expires_at),
        (taker.token, 2, taker.lease_until)
    );
    assert_eq!(
        oncely.claim(&s, &key("a"), None).await.unwrap(),
        ClaimOutcome::InProgress {
            retry_after: clock.now().until(taker.lease_until) + Duration::from_millis(1)
        }
    );
    // The crashed holder cannot complete either; the new one renews and completes.
    expect_lost(
        oncely.complete(&crashed, b"stale").await,
        LostReason::TakenOver,
    );
    oncely.extend(&mut taker).await.unwrap();
    oncely.complete(&taker, b"fresh").await.unwrap();
    let rec = oncely.get(&s, &key("a")).await.unwrap().unwrap();
    assert_eq!(rec.outcome(), Some(&b"fresh"[..]));
}

async fn completed_record_cannot_be_renewed(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store.clone());
    let s = Scope::default();
    let mut claim = expect_new(oncely.claim(&s, &key("a"), fp("p")).await.unwrap());
    oncely.complete(&claim, b"receipt").await.unwrap();
    let kept_until = clock.now().saturating_add(RETENTION);
    clock.advance(Duration::from_secs(1));
    expect_lost(
        oncely.extend(&mut claim).await,
        LostReason::AlreadyCompleted,
    );
    // Still the completed record, kept as long as before: the renewal wrote nothing.
    let rec = store.get(&s, &key("a")).await.unwrap().unwrap();
    assert_eq!(rec.outcome(), Some(&b"receipt"[..]));
    assert_eq!(rec.expires_at, kept_until);
    match oncely.claim(&s, &key("a"), fp("p")).await.unwrap() {
        ClaimOutcome::Duplicate(rec) => assert_eq!(rec.outcome(), Some(&b"receipt"[..])),
        other => panic!("expected Duplicate, got {other:?}"),
    }
    assert_eq!(oncely.stats().await.unwrap().completed, 1);
}

async fn released_key_cannot_be_renewed(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store.clone());
    let s = Scope::default();
    let mut claim = expect_new(oncely.claim(&s, &key("a"), None).await.unwrap());
    oncely.release(&claim).await.unwrap();
    expect_lost(oncely.extend(&mut claim).await, LostReason::Missing);
    // The renewal brought nothing back.
    assert_eq!(store.get(&s, &key("a")).await.unwrap(), None);
    // Nor does renewing a purged lease.
    let mut purged = expect_new(oncely.claim(&s, &key("b"), None).await.unwrap());
    clock.advance(LEASE + Duration::from_millis(1));
    assert_eq!(oncely.purge(Duration::ZERO, 10).await.unwrap(), 1);
    expect_lost(oncely.extend(&mut purged).await, LostReason::Missing);
    assert_eq!(store.get(&s, &key("b")).await.unwrap(), None);
    expect_new(oncely.claim(&s, &key("a"), None).await.unwrap());
}

/// The lease of the real-time renewal tests: short, so a handler several leases long takes a
/// second or two, and long enough that a renewal every third of it gets through on a busy
/// machine.
pub const REAL_LEASE: Duration = Duration::from_millis(400);

/// An `Oncely` on the system clock with [`REAL_LEASE`]: renewal is paced by real time.
fn real_time(store: Arc<dyn Store>) -> Oncely {
    Oncely::new(store)
        .with_lease(REAL_LEASE)
        .with_retention(RETENTION)
}

async fn slow_handler_keeps_its_lease_and_runs_once_against_a_retrying_competitor(
    store: Arc<dyn Store>,
) {
    const HANDLER: Duration = Duration::from_millis(1_600); // four leases
    let oncely = real_time(store);
    let (s, k) = (Scope::default(), key("slow-export"));
    let executions = Arc::new(AtomicUsize::new(0));
    let (started, handler_started) = tokio::sync::oneshot::channel();
    let holder = {
        let (oncely, s, k, executions) = (oncely.clone(), s.clone(), k.clone(), executions.clone());
        tokio::spawn(async move {
            oncely
                .run(&s, &k, fp("p"), || async move {
                    executions.fetch_add(1, Ordering::SeqCst);
                    let _ = started.send(());
                    tokio::time::sleep(HANDLER).await;
                    Ok::<_, std::io::Error>(b"exported".to_vec())
                })
                .await
        })
    };
    handler_started.await.expect("the holder's handler starts");
    let began = tokio::time::Instant::now();
    // A second consumer redelivers the same message every 50 ms, as a broker would.
    let mut held_seen = Vec::new();
    let replayed = loop {
        let executions = executions.clone();
        let competing = || async move {
            executions.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(b"competitor".to_vec())
        };
        match oncely.run(&s, &k, fp("p"), competing).await {
            Err(RunError::InProgress { .. }) => held_seen.push(began.elapsed()),
            Ok(RunOutcome::Replayed(outcome)) => break outcome,
            other => panic!(
                "after {:?} the competitor got {other:?}: the holder's lease was not kept",
                began.elapsed()
            ),
        }
        assert!(began.elapsed() < HANDLER * 10, "the holder never completed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let held = holder.await.unwrap();
    assert_eq!(
        held.expect("the holder completes"),
        RunOutcome::Executed(b"exported".to_vec())
    );
    assert_eq!(replayed, b"exported");
    assert_eq!(
        executions.load(Ordering::SeqCst),
        1,
        "the handler ran twice"
    );
    // The competitor was kept out well past the first lease, by renewals alone.
    let last_held = held_seen.last().copied().unwrap_or_default();
    assert!(
        last_held > REAL_LEASE * 2,
        "InProgress last seen after {last_held:?}"
    );
    let rec = oncely.get(&s, &k).await.unwrap().unwrap();
    assert_eq!((rec.attempt, rec.outcome()), (1, Some(&b"exported"[..])));
}

async fn holder_that_stops_renewing_is_taken_over_about_one_lease_later(store: Arc<dyn Store>) {
    let oncely = real_time(store);
    let (s, k) = (Scope::default(), key("crashing"));
    let executions = Arc::new(AtomicUsize::new(0));
    let (started, handler_started) = tokio::sync::oneshot::channel();
    let crashing = {
        let (oncely, s, k, executions) = (oncely.clone(), s.clone(), k.clone(), executions.clone());
        tokio::spawn(async move {
            oncely
                .run(&s, &k, None, || async move {
                    executions.fetch_add(1, Ordering::SeqCst);
                    let _ = started.send(());
                    std::future::pending::<()>().await;
                    Ok::<_, std::io::Error>(b"never".to_vec())
                })
                .await
        })
    };
    handler_started.await.expect("the holder's handler starts");
    // Two leases in: renewed, so still held.
    tokio::time::sleep(REAL_LEASE * 2).await;
    assert!(matches!(
        oncely.claim(&s, &k, None).await.unwrap(),
        ClaimOutcome::InProgress { .. }
    ));
    // The holder dies: its `run` future is dropped, and its renewals with it.
    crashing.abort();
    assert!(crashing.await.unwrap_err().is_cancelled());
    let died = tokio::time::Instant::now();
    let redone = loop {
        let executions = executions.clone();
        let redo = || async move {
            executions.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(b"redone".to_vec())
        };
        match oncely.run(&s, &k, None, redo).await {
            Ok(RunOutcome::Executed(outcome)) => break outcome,
            Err(RunError::InProgress { .. }) => {}
            other => panic!("after {:?}: {other:?}", died.elapsed()),
        }
        assert!(
            died.elapsed() < REAL_LEASE * 10,
            "the dead holder's key was never taken over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let waited = died.elapsed();
    // Held for what was left of its last renewal (at least two thirds of a lease), then free.
    assert!(
        waited >= REAL_LEASE / 3 && waited <= REAL_LEASE + Duration::from_secs(1),
        "taken over {waited:?} after the holder died, with a lease of {REAL_LEASE:?}"
    );
    assert_eq!(redone, b"redone");
    // The crash cost one redo, as a crash without renewal would.
    assert_eq!(executions.load(Ordering::SeqCst), 2);
    let rec = oncely.get(&s, &k).await.unwrap().unwrap();
    assert_eq!((rec.attempt, rec.outcome()), (2, Some(&b"redone"[..])));
}
