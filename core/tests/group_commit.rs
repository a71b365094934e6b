//! GroupCommit over a store that counts its batches and can be held mid-batch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oncely_core::{
    Claim, ClaimOutcome, ClaimRequest, Completion, Error, GroupCommit, Key, LostReason, Record,
    Result, Scope, Store, StoreStats, Timestamp, VersionCheck, async_trait,
};
use oncely_memory::MemoryStore;
use tokio::sync::Semaphore;

/// A memory store whose batch calls are counted, take a little while, and wait for `gate`.
#[derive(Debug)]
struct Slow {
    inner: MemoryStore,
    batches: Mutex<Vec<usize>>,
    gate: Arc<Semaphore>,
    started: Mutex<Vec<(String, usize)>>,
}

impl Slow {
    fn open() -> Arc<Self> {
        Arc::new(Slow {
            inner: MemoryStore::default(),
            batches: Mutex::new(Vec::new()),
            gate: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
            started: Mutex::new(Vec::new()),
        })
    }

    /// A store whose batches all wait until `permits` are added.
    fn held() -> Arc<Self> {
        let store = Self::open();
        store.gate.forget_permits(Semaphore::MAX_PERMITS);
        store
    }

    async fn pass(&self, leader: String, size: usize) {
        self.started.lock().unwrap().push((leader, size));
        self.gate.acquire().await.unwrap().forget();
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.batches.lock().unwrap().push(size);
    }

    /// Sizes of the batches that ended.
    fn batches(&self) -> Vec<usize> {
        self.batches.lock().unwrap().clone()
    }

    /// Sizes of the batches that started.
    fn sizes(&self) -> Vec<usize> {
        self.started.lock().unwrap().iter().map(|s| s.1).collect()
    }

    /// The first key of each batch that started: its leader's.
    fn leaders(&self) -> Vec<String> {
        self.started
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.0.clone())
            .collect()
    }
}

#[async_trait]
impl Store for Slow {
    async fn claim_many(
        &self,
        requests: &[ClaimRequest],
        now: Timestamp,
    ) -> Result<Vec<ClaimOutcome>> {
        self.pass(requests[0].key.to_string(), requests.len()).await;
        self.inner.claim_many(requests, now).await
    }
    async fn complete_many(&self, items: &[Completion]) -> Result<Vec<Result<()>>> {
        self.pass(items[0].claim.key.to_string(), items.len()).await;
        self.inner.complete_many(items).await
    }
    async fn complete(&self, claim: &Claim, outcome: &[u8], expires_at: Timestamp) -> Result<()> {
        self.inner.complete(claim, outcome, expires_at).await
    }
    async fn release(&self, claim: &Claim) -> Result<()> {
        self.inner.release(claim).await
    }
    async fn extend(&self, claim: &Claim, lease_until: Timestamp) -> Result<()> {
        self.inner.extend(claim, lease_until).await
    }
    async fn forget(&self, scope: &Scope, key: &Key, token: u64) -> Result<bool> {
        self.inner.forget(scope, key, token).await
    }
    async fn get(&self, scope: &Scope, key: &Key) -> Result<Option<Record>> {
        self.inner.get(scope, key).await
    }
    async fn purge(&self, expired_before: Timestamp, limit: usize) -> Result<usize> {
        self.inner.purge(expired_before, limit).await
    }
    async fn stats(&self, now: Timestamp) -> Result<StoreStats> {
        self.inner.stats(now).await
    }
    async fn apply_if_newer(
        &self,
        scope: &Scope,
        entity: &Key,
        version: u64,
    ) -> Result<VersionCheck> {
        self.inner.apply_if_newer(scope, entity, version).await
    }
}

fn request(k: &str) -> ClaimRequest {
    ClaimRequest::new(
        Scope::default(),
        Key::new(k).unwrap(),
        None,
        Duration::from_secs(30),
    )
}

const NOW: Timestamp = Timestamp::from_millis(1_000);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_single_claims_share_batches_and_grant_each_key_once() {
    let store = Slow::open();
    let group = GroupCommit::new("slow", 2, 64);
    let tasks: Vec<_> = (0..400)
        .map(|i| {
            let (store, group) = (store.clone(), group.clone());
            tokio::spawn(async move {
                let req = request(&format!("k{}", i % 100));
                group.claim(&*store, &req, NOW).await.unwrap()
            })
        })
        .collect();
    let mut granted: HashMap<Key, usize> = HashMap::new();
    let mut claims = Vec::new();
    for t in tasks {
        if let ClaimOutcome::New(claim) = t.await.unwrap() {
            *granted.entry(claim.key.clone()).or_default() += 1;
            claims.push(claim);
        }
    }
    assert_eq!(granted.len(), 100);
    assert!(granted.values().all(|&n| n == 1), "{granted:?}");
    let batches = store.batches();
    assert_eq!(batches.iter().sum::<usize>(), 400);
    assert!(batches.iter().all(|&n| n <= 64), "{batches:?}");
    assert!(batches.len() < 100, "barely coalesced: {batches:?}");

    // Completes coalesce too, and each caller gets its own answer.
    let tasks: Vec<_> = claims
        .into_iter()
        .map(|claim| {
            let (store, group) = (store.clone(), group.clone());
            tokio::spawn(async move {
                let first = group.complete(&*store, &claim, b"x", NOW).await;
                let second = group.complete(&*store, &claim, b"y", NOW).await;
                (first, second)
            })
        })
        .collect();
    for t in tasks {
        let (first, second) = t.await.unwrap();
        first.unwrap();
        assert!(matches!(
            second,
            Err(Error::ClaimLost {
                reason: LostReason::AlreadyCompleted,
                ..
            })
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_call_is_a_batch_of_one() {
    let store = Slow::open();
    let group = GroupCommit::new("slow", 4, 1000);
    for i in 0..3 {
        let out = group.claim(&*store, &request(&format!("k{i}")), NOW).await;
        assert!(matches!(out, Ok(ClaimOutcome::New(_))));
    }
    assert_eq!(store.batches(), [1, 1, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_of_a_cancelled_leader_get_an_error_and_the_queue_goes_on() {
    let store = Slow::held();
    let group = GroupCommit::new("slow", 1, 1000);
    let spawn = |k: &str| {
        let (store, group, req) = (store.clone(), group.clone(), request(k));
        tokio::spawn(async move { group.claim(&*store, &req, NOW).await })
    };
    // The first call leads a batch of one and is held in the store.
    let first = spawn("first");
    wait_for_batches(&store, 1).await;
    // These queue behind it.
    let mut waiters: HashMap<String, _> = (0..5)
        .map(|i| (format!("w{i}"), spawn(&format!("w{i}"))))
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The first batch ends; its slot passes to the oldest waiter, which takes the others along.
    store.gate.add_permits(1);
    assert!(matches!(first.await.unwrap(), Ok(ClaimOutcome::New(_))));
    wait_for_batches(&store, 2).await;
    assert_eq!(store.sizes()[1], 5);
    // Cancel that leader mid-batch: its four followers learn it rather than hang or guess.
    let leader = store.leaders()[1].clone();
    let leading = waiters.remove(&leader).unwrap();
    leading.abort();
    assert!(leading.await.unwrap_err().is_cancelled());
    for (_, follower) in waiters {
        match follower.await.unwrap() {
            Err(Error::Backend { source, .. }) => {
                assert!(source.to_string().contains("abandoned"), "{source}")
            }
            other => panic!("expected the abandoned-batch error, got {other:?}"),
        }
    }
    // The slot passed on: a new call goes through.
    store.gate.add_permits(1000);
    let later = tokio::time::timeout(
        Duration::from_secs(5),
        group.claim(&*store, &request("later"), NOW),
    )
    .await
    .expect("the queue stalled");
    assert!(matches!(later, Ok(ClaimOutcome::New(_))));
}

async fn wait_for_batches(store: &Slow, n: usize) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while store.sizes().len() < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("batch never started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_gives_up_before_its_batch_is_left_out() {
    let store = Slow::held();
    let group = GroupCommit::new("slow", 1, 1000);
    let leader = {
        let (store, group) = (store.clone(), group.clone());
        tokio::spawn(async move { group.claim(&*store, &request("a"), NOW).await })
    };
    wait_for_batches(&store, 1).await;
    let quitter = {
        let (store, group) = (store.clone(), group.clone());
        tokio::spawn(async move { group.claim(&*store, &request("gave-up"), NOW).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    quitter.abort();
    let _ = quitter.await;
    store.gate.add_permits(1000);
    assert!(matches!(leader.await.unwrap(), Ok(ClaimOutcome::New(_))));
    let next = group.claim(&*store, &request("b"), NOW).await.unwrap();
    assert!(matches!(next, ClaimOutcome::New(_)));
    assert_eq!(store.batches(), [1, 1], "the abandoned request ran");
    assert!(
        store
            .get(&Scope::default(), &Key::new("gave-up").unwrap())
            .await
            .unwrap()
            .is_none()
    );
}
