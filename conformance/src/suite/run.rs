//! `Oncely::run`: the handler runs once and its outcome replays; a failing or panicking handler
//! releases the claim; in progress and conflict are reported without running it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use oncely_core::{RunError, RunOutcome, Scope, Store};

use super::{INTENDED_PANIC, expect_new, fp, key, setup};

tests!(
    run_executes_once_then_replays,
    run_releases_the_claim_when_the_handler_fails,
    run_releases_the_claim_when_the_handler_panics,
    run_reports_in_progress_and_conflict,
);

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
