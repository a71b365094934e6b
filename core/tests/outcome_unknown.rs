//! `Oncely::run` with a handler whose outcome is unknown: the claim is kept until its lease
//! ends, not released.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use oncely_core::{
    BoxError, Key, ManualClock, Oncely, OutcomeUnknown, RunError, RunOutcome, Scope, Timestamp,
};

const LEASE: Duration = Duration::from_secs(60);

fn oncely(clock: &ManualClock) -> Oncely {
    Oncely::new(Arc::new(oncely_memory::MemoryStore::default()))
        .with_clock(clock.clone())
        .with_lease(LEASE)
}

/// Runs a handler that counts its calls and answers `answer`.
async fn run_counting<E: 'static>(
    oncely: &Oncely,
    key: &Key,
    calls: &AtomicUsize,
    answer: impl FnOnce() -> Result<Vec<u8>, E>,
) -> Result<RunOutcome, RunError<E>> {
    oncely
        .run(&Scope::default(), key, None, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            answer()
        })
        .await
}

#[tokio::test(flavor = "current_thread")]
async fn an_unknown_outcome_keeps_the_key_held_until_the_lease_ends() {
    let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
    let oncely = oncely(&clock);
    let calls = AtomicUsize::new(0);
    let timed_out = || OutcomeUnknown::new("no answer within 1s");

    // The error itself, and boxed as a BoxError: both keep the claim.
    let keys = [Key::new("as-is").unwrap(), Key::new("boxed").unwrap()];
    let first = run_counting(&oncely, &keys[0], &calls, || Err(timed_out())).await;
    match first {
        Err(RunError::Handler(e)) => assert_eq!(
            e.to_string(),
            "no answer within 1s; outcome unknown, so the key stays held until its lease ends"
        ),
        other => panic!("{other:?}"),
    }
    let boxed = run_counting(&oncely, &keys[1], &calls, || {
        Err::<Vec<u8>, BoxError>(timed_out().into())
    })
    .await;
    assert!(matches!(boxed, Err(RunError::Handler(_))), "{boxed:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Held: a retry within the lease is InProgress, and the handler does not run.
    clock.advance(LEASE - Duration::from_millis(1));
    for key in &keys {
        let retry = run_counting(&oncely, key, &calls, || Ok::<_, BoxError>(b"x".to_vec())).await;
        match retry {
            // The lease's last millisecond, and the one after which it is over.
            Err(RunError::InProgress { retry_after }) => {
                assert_eq!(retry_after, Duration::from_millis(2), "{key}")
            }
            other => panic!("{key}: {other:?}"),
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Once the lease is over, a redelivery takes the key over and runs the handler.
    clock.advance(Duration::from_millis(2));
    for key in &keys {
        let redelivery =
            run_counting(&oncely, key, &calls, || Ok::<_, BoxError>(b"done".to_vec())).await;
        assert_eq!(redelivery.unwrap(), RunOutcome::Executed(b"done".to_vec()));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "current_thread")]
async fn any_other_error_releases_the_key_at_once() {
    let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
    let oncely = oncely(&clock);
    let calls = AtomicUsize::new(0);
    let key = Key::new("refused").unwrap();

    let failed = run_counting(&oncely, &key, &calls, || {
        Err::<Vec<u8>, BoxError>("connection refused".into())
    })
    .await;
    assert!(matches!(failed, Err(RunError::Handler(_))), "{failed:?}");
    let retry = run_counting(&oncely, &key, &calls, || Ok::<_, BoxError>(b"ok".to_vec())).await;
    assert_eq!(retry.unwrap(), RunOutcome::Executed(b"ok".to_vec()));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn outcome_unknown_is_recognised_itself_or_boxed_only() {
    let unknown = || OutcomeUnknown::new("lost after sending");
    assert!(OutcomeUnknown::is_in(&unknown()));
    assert!(OutcomeUnknown::is_in::<BoxError>(&unknown().into()));
    let unsync: Box<dyn std::error::Error> = Box::new(unknown());
    assert!(OutcomeUnknown::is_in(&unsync));
    assert!(!OutcomeUnknown::is_in::<BoxError>(&"refused".into()));
    assert!(!OutcomeUnknown::is_in(&std::io::Error::other(unknown())));
    assert!(!OutcomeUnknown::is_in(&"outcome unknown"));
    assert_eq!(unknown().cause().to_string(), "lost after sending");
}
