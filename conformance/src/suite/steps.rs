//! `Oncely::run_steps`: a handler of several steps resumes at its first unfinished step after
//! a failure, a crash or a takeover, never redoing a finished one; a forgotten or expired key
//! starts its steps afresh; concurrent deliveries finish each step once.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oncely_core::{
    BoxError, ForgetOutcome, Oncely, OutcomeUnknown, RunError, RunOutcome, Scope, Steps, Store,
};

use super::{LEASE, RETENTION, key, setup};

tests!(
    a_retry_runs_only_the_steps_not_yet_finished,
    a_takeover_after_a_crash_resumes_at_the_first_unfinished_step,
    forgetting_a_key_runs_its_steps_again,
    steps_start_afresh_once_the_keys_record_expired,
    a_step_whose_outcome_is_unknown_is_held_for_its_lease,
    concurrent_runs_of_one_key_finish_each_step_once,
);

const STEPS: [&str; 3] = ["charge", "ship", "email"];

/// What the steps did: each step's effects, and how a step's next attempt goes wrong.
#[derive(Default)]
struct World {
    effects: [AtomicUsize; 3],
    /// Steps whose next attempt fails before its effect, one entry per failure.
    fail: Mutex<Vec<&'static str>>,
    /// A step whose next attempt has an unknown outcome: the effect, then an error.
    unknown: Mutex<Option<&'static str>>,
    /// A step after which the handler never returns, as a process that died there.
    hang_after: Mutex<Option<&'static str>>,
}

impl World {
    fn effects(&self) -> [usize; 3] {
        [0, 1, 2].map(|i| self.effects[i].load(SeqCst))
    }

    fn take(list: &Mutex<Vec<&'static str>>, step: &str) -> bool {
        let mut list = list.lock().unwrap();
        match list.iter().position(|s| *s == step) {
            Some(i) => {
                list.remove(i);
                true
            }
            None => false,
        }
    }
}

/// Runs the three steps of (default scope, `k`) once, as a delivery would.
async fn deliver(
    oncely: &Oncely,
    world: &Arc<World>,
    k: &str,
) -> Result<RunOutcome, RunError<BoxError>> {
    let handler = |steps: Steps| {
        let world = world.clone();
        async move {
            let mut results = Vec::new();
            for (i, name) in STEPS.into_iter().enumerate() {
                let world2 = world.clone();
                let result = steps
                    .step(name, || async move {
                        tokio::task::yield_now().await;
                        if World::take(&world2.fail, name) {
                            return Err(BoxError::from(format!("{name} failed")));
                        }
                        let n = world2.effects[i].fetch_add(1, SeqCst) + 1;
                        if world2
                            .unknown
                            .lock()
                            .unwrap()
                            .take_if(|s| *s == name)
                            .is_some()
                        {
                            return Err(OutcomeUnknown::new("no answer").into());
                        }
                        Ok(format!("{name}-{n}").into_bytes())
                    })
                    .await?;
                results.push(String::from_utf8(result).unwrap());
                if world
                    .hang_after
                    .lock()
                    .unwrap()
                    .take_if(|s| *s == name)
                    .is_some()
                {
                    std::future::pending::<()>().await;
                }
            }
            Ok::<_, BoxError>(results.join("|").into_bytes())
        }
    };
    oncely
        .run_steps(&Scope::default(), &key(k), None, handler)
        .await
}

fn executed(text: &str) -> RunOutcome {
    RunOutcome::Executed(text.as_bytes().to_vec())
}

async fn a_retry_runs_only_the_steps_not_yet_finished(store: Arc<dyn Store>) {
    let (oncely, _) = setup(store);
    let world = Arc::new(World::default());
    world.fail.lock().unwrap().extend(["ship", "email"]);
    let first = deliver(&oncely, &world, "order-1").await;
    assert!(matches!(first, Err(RunError::Handler(_))), "{first:?}");
    assert_eq!(world.effects(), [1, 0, 0]);
    let second = deliver(&oncely, &world, "order-1").await;
    assert!(matches!(second, Err(RunError::Handler(_))), "{second:?}");
    assert_eq!(world.effects(), [1, 1, 0], "the charge was not made again");
    let third = deliver(&oncely, &world, "order-1").await.unwrap();
    assert_eq!(third, executed("charge-1|ship-1|email-1"));
    assert_eq!(world.effects(), [1, 1, 1]);
    let again = deliver(&oncely, &world, "order-1").await.unwrap();
    assert_eq!(
        again,
        RunOutcome::Replayed(b"charge-1|ship-1|email-1".to_vec())
    );
    assert_eq!(world.effects(), [1, 1, 1]);
    // Another key has steps of its own.
    deliver(&oncely, &world, "order-2").await.unwrap();
    assert_eq!(world.effects(), [2, 2, 2]);
}

async fn a_takeover_after_a_crash_resumes_at_the_first_unfinished_step(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store);
    let world = Arc::new(World::default());
    *world.hang_after.lock().unwrap() = Some("charge");
    // The attempt stops for good after the charge: its claim is left to its lease.
    let crashed =
        tokio::time::timeout(Duration::from_millis(200), deliver(&oncely, &world, "o")).await;
    assert!(crashed.is_err(), "the attempt hangs after the charge");
    assert_eq!(world.effects(), [1, 0, 0]);
    let during = deliver(&oncely, &world, "o").await;
    assert!(
        matches!(during, Err(RunError::InProgress { .. })),
        "{during:?}"
    );
    clock.advance(LEASE + Duration::from_millis(1));
    let taken_over = deliver(&oncely, &world, "o").await.unwrap();
    assert_eq!(taken_over, executed("charge-1|ship-1|email-1"));
    assert_eq!(world.effects(), [1, 1, 1]);
}

async fn forgetting_a_key_runs_its_steps_again(store: Arc<dyn Store>) {
    let (oncely, _) = setup(store);
    let (s, world) = (Scope::default(), Arc::new(World::default()));
    deliver(&oncely, &world, "o").await.unwrap();
    assert_eq!(
        oncely.forget(&s, &key("o"), false).await.unwrap(),
        ForgetOutcome::Completed
    );
    let rerun = deliver(&oncely, &world, "o").await.unwrap();
    assert_eq!(rerun, executed("charge-2|ship-2|email-2"));
    assert_eq!(world.effects(), [2, 2, 2]);

    // A key whose last attempt failed (released: no record) still has its steps, until it is
    // forgotten too.
    world.fail.lock().unwrap().push("ship");
    assert!(deliver(&oncely, &world, "p").await.is_err());
    assert_eq!(world.effects(), [3, 2, 2]);
    assert_eq!(
        oncely.forget(&s, &key("p"), false).await.unwrap(),
        ForgetOutcome::Absent
    );
    let rerun = deliver(&oncely, &world, "p").await.unwrap();
    assert_eq!(rerun, executed("charge-4|ship-3|email-3"));
}

async fn steps_start_afresh_once_the_keys_record_expired(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store);
    let world = Arc::new(World::default());
    deliver(&oncely, &world, "o").await.unwrap();
    clock.advance(RETENTION - Duration::from_secs(1));
    assert!(deliver(&oncely, &world, "o").await.unwrap().was_replayed());
    clock.advance(Duration::from_secs(1) + Duration::from_millis(1));
    let later = deliver(&oncely, &world, "o").await.unwrap();
    assert_eq!(later, executed("charge-2|ship-2|email-2"));
}

async fn a_step_whose_outcome_is_unknown_is_held_for_its_lease(store: Arc<dyn Store>) {
    let (oncely, clock) = setup(store);
    let world = Arc::new(World::default());
    *world.unknown.lock().unwrap() = Some("ship");
    assert!(deliver(&oncely, &world, "o").await.is_err());
    assert_eq!(world.effects(), [1, 1, 0]);
    // The key itself was released; its ship step is held: the retry stops there.
    assert!(deliver(&oncely, &world, "o").await.is_err());
    assert_eq!(world.effects(), [1, 1, 0], "ship was not tried again");
    clock.advance(LEASE + Duration::from_millis(1));
    let later = deliver(&oncely, &world, "o").await.unwrap();
    assert_eq!(later, executed("charge-1|ship-2|email-1"));
}

async fn concurrent_runs_of_one_key_finish_each_step_once(store: Arc<dyn Store>) {
    let (oncely, _) = setup(store);
    let world = Arc::new(World::default());
    world
        .fail
        .lock()
        .unwrap()
        .extend(["charge", "ship", "ship", "email"]);
    let attempts = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (oncely, world, attempts) = (oncely.clone(), world.clone(), attempts.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                attempts.fetch_add(1, SeqCst);
                match deliver(&oncely, &world, "o").await {
                    Ok(outcome) => return outcome.into_inner(),
                    Err(RunError::Store(e)) => panic!("store error: {e}"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), b"charge-1|ship-1|email-1");
    }
    assert_eq!(world.effects(), [1, 1, 1]);
    assert!(world.fail.lock().unwrap().is_empty(), "every failure ran");
    assert!(attempts.load(SeqCst) > 8);
}
