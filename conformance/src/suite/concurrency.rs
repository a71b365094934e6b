//! Real concurrency: many callers at once (tasks, OS threads, overlapping batches, a late
//! complete racing a takeover, a storm of duplicate deliveries) and still each key granted once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use oncely_core::{ClaimOutcome, Error, Key, LostReason, RunError, Scope, Store};
use tokio::sync::Barrier;

use super::{LEASE, expect_new, fp, key, setup};

tests!(
    concurrent_claims_yield_exactly_one_new,
    concurrent_claims_from_os_threads_yield_exactly_one_new,
    concurrent_overlapping_batches_grant_each_key_once,
    concurrent_single_claims_of_many_keys_grant_each_key_once,
    complete_racing_a_takeover_never_both_succeed,
    duplicate_storm_runs_the_effect_once,
);

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
