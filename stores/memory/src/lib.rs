//! # oncely-memory
//!
//! An in-memory [`Store`]: for tests, and for single-process services that accept losing their
//! dedup history on restart. Nothing here survives the process; use `oncely-sqlite` for that.
//!
//! The store is bounded: at most `capacity` records. When it is full, expired records are swept
//! first; if every record is still live, the claim fails with [`Error::StoreFull`] rather than
//! evicting a live record, which would silently let a duplicate through.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> oncely_core::Result<()> {
//! use std::sync::Arc;
//! use oncely_core::{ClaimOutcome, Key, Oncely, Scope};
//! use oncely_memory::MemoryStore;
//!
//! let oncely = Oncely::new(Arc::new(MemoryStore::with_capacity(100_000)));
//! let key = Key::new("evt-1")?;
//! let claim = oncely.claim(&Scope::default(), &key, None).await?.into_new().unwrap();
//! oncely.complete(&claim, b"ok").await?;
//! assert!(matches!(oncely.claim(&Scope::default(), &key, None).await?, ClaimOutcome::Duplicate(_)));
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

use std::collections::HashMap;
use std::mem::size_of;
use std::sync::Mutex;

use oncely_core::lifecycle::{check_holder, completed_record, decide_claim, decide_version};
use oncely_core::{
    Claim, ClaimOutcome, ClaimRequest, Error, Key, LostReason, Record, Result, Scope, Store,
    StoreStats, Timestamp, VersionCheck, async_trait,
};

/// Default bound: ten million records.
pub const DEFAULT_CAPACITY: usize = 10_000_000;

type RecordKey = (Scope, Key);

/// The in-memory store. See the crate docs.
#[derive(Debug)]
pub struct MemoryStore {
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    records: HashMap<RecordKey, Record>,
    versions: HashMap<RecordKey, u64>,
}

impl MemoryStore {
    /// A store holding at most [`DEFAULT_CAPACITY`] records.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A store holding at most `capacity` records.
    pub fn with_capacity(capacity: usize) -> Self {
        MemoryStore {
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a record half-written (every update is a
        // single insert or remove), so a poisoned lock is safe to keep using.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    fn claim_one(
        &mut self,
        req: &ClaimRequest,
        now: Timestamp,
        capacity: usize,
    ) -> Result<ClaimOutcome> {
        let id = (req.scope.clone(), req.key.clone());
        let decision = decide_claim(self.records.get(&id), req, now);
        if let Some(record) = decision.write {
            if !self.records.contains_key(&id) && self.records.len() >= capacity {
                // Sweeping is O(n), but it runs only when full, and frees every expired record
                // at once, so it is amortized over the claims that fill the space again.
                self.records.retain(|_, r| !r.is_expired(now));
                if self.records.len() >= capacity {
                    return Err(Error::StoreFull { capacity });
                }
            }
            self.records.insert(id, record);
        }
        Ok(decision.outcome)
    }

    fn held(&mut self, claim: &Claim) -> Result<&mut Record> {
        let id = (claim.scope.clone(), claim.key.clone());
        let existing = self.records.get(&id);
        check_holder(existing, claim).map_err(|reason| lost(claim, reason))?;
        Ok(self.records.get_mut(&id).expect("checked above"))
    }
}

fn lost(claim: &Claim, reason: LostReason) -> Error {
    Error::ClaimLost {
        scope: claim.scope.clone(),
        key: claim.key.clone(),
        reason,
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn claim_many(
        &self,
        requests: &[ClaimRequest],
        now: Timestamp,
    ) -> Result<Vec<ClaimOutcome>> {
        let mut state = self.lock();
        requests
            .iter()
            .map(|req| state.claim_one(req, now, self.capacity))
            .collect()
    }

    async fn claim(&self, request: &ClaimRequest, now: Timestamp) -> Result<ClaimOutcome> {
        self.lock().claim_one(request, now, self.capacity)
    }

    async fn complete(&self, claim: &Claim, outcome: &[u8], expires_at: Timestamp) -> Result<()> {
        let mut state = self.lock();
        let held = state.held(claim)?;
        *held = completed_record(held.clone(), outcome, expires_at);
        Ok(())
    }

    async fn release(&self, claim: &Claim) -> Result<()> {
        let mut state = self.lock();
        state.held(claim)?;
        state
            .records
            .remove(&(claim.scope.clone(), claim.key.clone()));
        Ok(())
    }

    async fn get(&self, scope: &Scope, key: &Key) -> Result<Option<Record>> {
        Ok(self
            .lock()
            .records
            .get(&(scope.clone(), key.clone()))
            .cloned())
    }

    async fn purge(&self, expired_before: Timestamp, limit: usize) -> Result<usize> {
        let mut state = self.lock();
        let doomed: Vec<RecordKey> = state
            .records
            .iter()
            .filter(|(_, r)| r.expires_at < expired_before)
            .map(|(id, _)| id.clone())
            .take(limit)
            .collect();
        for id in &doomed {
            state.records.remove(id);
        }
        Ok(doomed.len())
    }

    async fn stats(&self, now: Timestamp) -> Result<StoreStats> {
        let state = self.lock();
        let mut stats = StoreStats {
            records: state.records.len() as u64,
            ..StoreStats::default()
        };
        let mut bytes =
            state.records.capacity() * (size_of::<RecordKey>() + size_of::<Record>() + 1);
        for ((scope, key), rec) in &state.records {
            bytes += scope.as_str().len()
                + key.as_str().len() * 2
                + rec.outcome().map_or(0, <[u8]>::len);
            match (rec.is_expired(now), rec.is_completed()) {
                (true, _) => stats.expired += 1,
                (false, true) => stats.completed += 1,
                (false, false) => stats.in_progress += 1,
            }
        }
        stats.bytes = Some(bytes as u64);
        Ok(stats)
    }

    async fn apply_if_newer(
        &self,
        scope: &Scope,
        entity: &Key,
        version: u64,
    ) -> Result<VersionCheck> {
        let mut state = self.lock();
        let id = (scope.clone(), entity.clone());
        let check = decide_version(state.versions.get(&id).copied(), version);
        if let VersionCheck::Applied { .. } = check {
            state.versions.insert(id, version);
        }
        Ok(check)
    }
}
