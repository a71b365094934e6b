//! The metrics `Oncely` records through the facade, read back from a recorder of the test's
//! own: each count equals what the test did.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use oncely_core::telemetry::{
    CLAIMS, CLAIMS_LOST, FORGOTTEN, GROUP_COMMIT_BATCH, PURGE_RUNS, PURGED, RENEWALS,
    STORE_CALL_SECONDS, STORE_ERRORS, TAKEOVERS,
};
use oncely_core::{
    Claim, ClaimOutcome, ClaimRequest, Error, Fingerprint, GroupCommit, Key, ManualClock, Oncely,
    Record, Result, Scope, Store, StoreStats, Timestamp, VersionCheck, async_trait,
};
use oncely_memory::MemoryStore;

/// Each metric's value, by name and sorted `label=value` pairs.
type Values = HashMap<(String, Vec<String>), DebugValue>;

fn recorded(recorder: &DebuggingRecorder) -> Values {
    recorder
        .snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            ((key.name().to_owned(), labels), value)
        })
        .collect()
}

fn counter(values: &Values, name: &str, labels: &[&str]) -> u64 {
    let labels = labels.iter().map(|l| (*l).to_owned()).collect();
    match values.get(&(name.to_owned(), labels)) {
        Some(DebugValue::Counter(n)) => *n,
        None => 0,
        Some(other) => panic!("{name} is not a counter: {other:?}"),
    }
}

fn samples(values: &Values, name: &str, labels: &[&str]) -> Vec<f64> {
    let labels = labels.iter().map(|l| (*l).to_owned()).collect();
    match values.get(&(name.to_owned(), labels)) {
        Some(DebugValue::Histogram(samples)) => samples.iter().map(|s| s.into_inner()).collect(),
        other => panic!("{name}: no histogram: {other:?}"),
    }
}

fn run<T>(recorder: &DebuggingRecorder, test: impl Future<Output = T>) -> T {
    // The recorder is this thread's: a current-thread runtime keeps every task on it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    metrics::with_local_recorder(recorder, || runtime.block_on(test))
}

fn key(k: &str) -> Key {
    Key::new(k).unwrap()
}

#[test]
fn the_lifecycle_is_counted_by_outcome_scope_and_operation() {
    let recorder = DebuggingRecorder::new();
    let values = run(&recorder, async {
        let clock = ManualClock::default();
        let oncely = Oncely::new(Arc::new(MemoryStore::default()))
            .with_clock(clock.clone())
            .with_lease(Duration::from_secs(10));
        let (billing, emails) = (
            Scope::new("billing").unwrap(),
            Scope::new("emails").unwrap(),
        );
        let payload = Some(Fingerprint::of_bytes(b"p"));

        // billing: 3 new, 1 completed then claimed twice (duplicate), 1 conflict.
        let mut claims = Vec::new();
        for k in ["a", "b", "c"] {
            let outcome = oncely.claim(&billing, &key(k), payload).await.unwrap();
            claims.push(outcome.into_new().unwrap());
        }
        oncely.complete(&claims[0], b"ok").await.unwrap();
        for _ in 0..2 {
            let again = oncely.claim(&billing, &key("a"), payload).await.unwrap();
            assert!(matches!(again, ClaimOutcome::Duplicate(_)));
        }
        let other = Some(Fingerprint::of_bytes(b"q"));
        let conflict = oncely.claim(&billing, &key("a"), other).await.unwrap();
        assert!(matches!(conflict, ClaimOutcome::Conflict { .. }));
        // emails: 1 in progress (b is held in billing, not here: a claim of b here is new).
        let held = oncely.claim(&emails, &key("b"), None).await.unwrap();
        let mut held = held.into_new().unwrap();
        let busy = oncely.claim(&emails, &key("b"), None).await.unwrap();
        assert!(matches!(busy, ClaimOutcome::InProgress { .. }));
        // Two renewals, then the lease of billing/b runs out and is taken over.
        oncely.extend(&mut held).await.unwrap();
        oncely.extend(&mut held).await.unwrap();
        clock.advance(Duration::from_secs(11));
        let taken = oncely.claim(&billing, &key("b"), payload).await.unwrap();
        assert_eq!(taken.into_new().unwrap().attempt, 2);
        // The first holder of billing/b finds its claim gone: once on complete, once on release.
        assert!(matches!(
            oncely.complete(&claims[1], b"late").await,
            Err(Error::ClaimLost { .. })
        ));
        assert!(matches!(
            oncely.release(&claims[1]).await,
            Err(Error::ClaimLost { .. })
        ));
        // A batch: 2 new of emails, and a lost completion inside a batch.
        let batch = oncely
            .claim_many([
                (emails.clone(), key("x"), None),
                (emails.clone(), key("y"), None),
            ])
            .await
            .unwrap();
        assert!(batch.iter().all(|o| matches!(o, ClaimOutcome::New(_))));
        let results = oncely
            .complete_many([(claims[1].clone(), b"late".to_vec())])
            .await
            .unwrap();
        assert!(results[0].is_err());
        // Forget one completed, one absent.
        oncely.forget(&billing, &key("a"), false).await.unwrap();
        oncely.forget(&billing, &key("zzz"), false).await.unwrap();
        // Purge: everything expired by now is removed (billing/c, emails/x and y in progress).
        clock.advance(Duration::from_secs(3600 * 24 * 30));
        oncely.purge_all(Duration::ZERO, 100).await.unwrap();
        recorded(&recorder)
    });

    let claims = |scope: &str, outcome: &str| {
        counter(
            &values,
            CLAIMS,
            &[&format!("outcome={outcome}"), &format!("scope={scope}")],
        )
    };
    assert_eq!(claims("billing", "new"), 4);
    assert_eq!(claims("billing", "duplicate"), 2);
    assert_eq!(claims("billing", "conflict"), 1);
    assert_eq!(claims("emails", "new"), 3);
    assert_eq!(claims("emails", "in_progress"), 1);
    assert_eq!(counter(&values, TAKEOVERS, &["scope=billing"]), 1);
    assert_eq!(counter(&values, TAKEOVERS, &["scope=emails"]), 0);
    assert_eq!(counter(&values, RENEWALS, &["scope=emails"]), 2);
    assert_eq!(counter(&values, CLAIMS_LOST, &["operation=complete"]), 2);
    assert_eq!(counter(&values, CLAIMS_LOST, &["operation=release"]), 1);
    assert_eq!(counter(&values, FORGOTTEN, &["outcome=completed"]), 1);
    assert_eq!(counter(&values, FORGOTTEN, &["outcome=absent"]), 1);
    assert_eq!(counter(&values, PURGE_RUNS, &[]), 1);
    // billing/a's claim of the purge lock aside: c and b (billing), b, x, y (emails).
    assert_eq!(counter(&values, PURGED, &[]), 5);
    // Every claim call was timed: 9 single claims and the purge lock's, one batch.
    assert_eq!(
        samples(&values, STORE_CALL_SECONDS, &["operation=claim"]).len(),
        10
    );
    assert_eq!(
        samples(&values, STORE_CALL_SECONDS, &["operation=claim_many"]).len(),
        1
    );
    assert!(
        samples(&values, STORE_CALL_SECONDS, &["operation=claim"])
            .iter()
            .all(|s| (0.0..1.0).contains(s))
    );
}

/// The memory store, or none: down, every call fails as unreachable. A claim yields once
/// before it runs, as a round trip to a server would, so concurrent callers queue behind it.
#[derive(Debug, Default)]
struct Switchable {
    inner: MemoryStore,
    down: bool,
}

impl Switchable {
    fn check(&self) -> Result<()> {
        if self.down {
            return Err(Error::Unavailable {
                store: "down:".into(),
                source: "connection refused".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Store for Switchable {
    async fn claim_many(&self, r: &[ClaimRequest], now: Timestamp) -> Result<Vec<ClaimOutcome>> {
        tokio::task::yield_now().await;
        self.check()?;
        self.inner.claim_many(r, now).await
    }
    async fn complete(&self, c: &Claim, outcome: &[u8], until: Timestamp) -> Result<()> {
        self.check()?;
        self.inner.complete(c, outcome, until).await
    }
    async fn release(&self, c: &Claim) -> Result<()> {
        self.check()?;
        self.inner.release(c).await
    }
    async fn extend(&self, c: &Claim, until: Timestamp) -> Result<()> {
        self.check()?;
        self.inner.extend(c, until).await
    }
    async fn forget(&self, s: &Scope, k: &Key, token: u64) -> Result<bool> {
        self.check()?;
        self.inner.forget(s, k, token).await
    }
    async fn get(&self, s: &Scope, k: &Key) -> Result<Option<Record>> {
        self.check()?;
        self.inner.get(s, k).await
    }
    async fn purge(&self, before: Timestamp, limit: usize) -> Result<usize> {
        self.check()?;
        self.inner.purge(before, limit).await
    }
    async fn stats(&self, now: Timestamp) -> Result<StoreStats> {
        self.check()?;
        self.inner.stats(now).await
    }
    async fn apply_if_newer(&self, s: &Scope, k: &Key, v: u64) -> Result<VersionCheck> {
        self.check()?;
        self.inner.apply_if_newer(s, k, v).await
    }
}

#[test]
fn store_errors_are_counted_by_operation_and_kind() {
    let recorder = DebuggingRecorder::new();
    let values = run(&recorder, async {
        let down = Switchable {
            down: true,
            ..Default::default()
        };
        let oncely = Oncely::new(Arc::new(down));
        for _ in 0..3 {
            assert!(
                oncely
                    .claim(&Scope::default(), &key("a"), None)
                    .await
                    .is_err()
            );
        }
        assert!(oncely.stats().await.is_err());
        recorded(&recorder)
    });
    let errors = |operation: &str| {
        counter(
            &values,
            STORE_ERRORS,
            &["kind=unavailable", &format!("operation={operation}")],
        )
    };
    assert_eq!(errors("claim"), 3);
    assert_eq!(errors("stats"), 1);
    assert_eq!(
        counter(&values, CLAIMS, &["outcome=new", "scope=default"]),
        0
    );
}

#[test]
fn group_commit_records_how_many_callers_one_round_trip_carried() {
    let recorder = DebuggingRecorder::new();
    let values = run(&recorder, async {
        let store = Switchable::default();
        // One batch at a time: those who come while it runs wait and go together.
        let group = GroupCommit::new("memory:", 1, 100);
        let now = Timestamp::from_millis(1);
        let requests: Vec<ClaimRequest> = (0..5)
            .map(|n| {
                let k = key(&format!("k{n}"));
                ClaimRequest::new(Scope::default(), k, None, Duration::from_secs(5))
            })
            .collect();
        // Five callers at once on one thread: the first runs alone, the four queued behind it
        // share the next round trip.
        let claims = requests.iter().map(|r| group.claim(&store, r, now));
        let outcomes = futures_join_all(claims).await;
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Ok(ClaimOutcome::New(_))))
        );
        recorded(&recorder)
    });
    let sizes = samples(&values, GROUP_COMMIT_BATCH, &["operation=claim"]);
    assert_eq!(sizes.iter().sum::<f64>(), 5.0, "{sizes:?}");
    assert!(sizes.iter().any(|&s| s > 1.0), "never batched: {sizes:?}");
}

/// Polls every future on this task until all are done (no `futures` dependency for one helper).
async fn futures_join_all<F: Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut handles: Vec<_> = futures.map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = handles.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (handle, slot) in handles.iter_mut().zip(done.iter_mut()) {
            if slot.is_none() {
                match handle.as_mut().poll(cx) {
                    std::task::Poll::Ready(out) => *slot = Some(out),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    done.into_iter().map(Option::unwrap).collect()
}
