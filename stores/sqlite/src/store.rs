//! The store: a handle that queues each call as a job for the writer thread.

use std::sync::mpsc;
use std::thread::JoinHandle;

use oncely_core::{
    Claim, ClaimOutcome, ClaimRequest, Completion, Error, Key, Record, Result, Scope, Store,
    StoreStats, Timestamp, VersionCheck, async_trait,
};
use tokio::sync::oneshot;

use crate::SqliteOptions;
use crate::job::Job;
use crate::writer::Writer;

/// The SQLite store. See the crate docs.
pub struct SqliteStore {
    url: String,
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("url", &self.url)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database and starts its writer thread.
    pub fn open(options: SqliteOptions) -> Result<Self> {
        let url = options.url();
        let writer = Writer::open(&options)?;
        let (jobs, queue) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("oncely-sqlite-writer".into())
            .spawn(move || writer.run(queue))
            .map_err(|e| Error::Unavailable {
                store: url.clone(),
                source: e.into(),
            })?;
        Ok(SqliteStore {
            url,
            jobs: Some(jobs),
            writer: Some(thread),
        })
    }

    /// The URL this store was opened from.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Job) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        let stopped = || Error::Backend {
            store: self.url.clone(),
            source: "the SQLite writer thread has stopped".into(),
        };
        self.jobs
            .as_ref()
            .ok_or_else(stopped)?
            .send(make(reply))
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued, then close the file.
        self.jobs.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn claim_many(
        &self,
        requests: &[ClaimRequest],
        now: Timestamp,
    ) -> Result<Vec<ClaimOutcome>> {
        let requests = requests.to_vec();
        self.call(|reply| Job::Claim {
            requests,
            now,
            reply,
        })
        .await
    }

    async fn complete(&self, claim: &Claim, outcome: &[u8], expires_at: Timestamp) -> Result<()> {
        let (claim, outcome) = (claim.clone(), outcome.to_vec());
        self.call(|reply| Job::Complete {
            claim,
            outcome,
            expires_at,
            reply,
        })
        .await
    }

    /// The whole batch in one job, so in one transaction of the writer: either every item is
    /// decided (each `Ok` or `ClaimLost`) and committed, or the batch fails as a whole.
    async fn complete_many(&self, items: &[Completion]) -> Result<Vec<Result<()>>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let items = items.to_vec();
        self.call(|reply| Job::CompleteMany { items, reply }).await
    }

    async fn release(&self, claim: &Claim) -> Result<()> {
        let claim = claim.clone();
        self.call(|reply| Job::Release { claim, reply }).await
    }

    /// Through the writer like any other job, so a renewal shares a commit (and its sync) with
    /// whatever else is queued.
    async fn extend(&self, claim: &Claim, lease_until: Timestamp) -> Result<()> {
        let claim = claim.clone();
        self.call(|reply| Job::Extend {
            claim,
            lease_until,
            reply,
        })
        .await
    }

    async fn forget(&self, scope: &Scope, key: &Key, token: u64) -> Result<bool> {
        let (scope, key) = (scope.clone(), key.clone());
        self.call(|reply| Job::Forget {
            scope,
            key,
            token,
            reply,
        })
        .await
    }

    async fn get(&self, scope: &Scope, key: &Key) -> Result<Option<Record>> {
        let (scope, key) = (scope.clone(), key.clone());
        self.call(|reply| Job::Get { scope, key, reply }).await
    }

    async fn purge(&self, expired_before: Timestamp, limit: usize) -> Result<usize> {
        self.call(|reply| Job::Purge {
            expired_before,
            limit,
            reply,
        })
        .await
    }

    async fn stats(&self, now: Timestamp) -> Result<StoreStats> {
        self.call(|reply| Job::Stats { now, reply }).await
    }

    async fn apply_if_newer(
        &self,
        scope: &Scope,
        entity: &Key,
        version: u64,
    ) -> Result<VersionCheck> {
        let (scope, entity) = (scope.clone(), entity.clone());
        self.call(|reply| Job::Version {
            scope,
            entity,
            version,
            reply,
        })
        .await
    }
}
