//! The in-memory store: records in one hash map behind a mutex, bounded by a capacity.

use std::hash::{Hash, Hasher};

use hashbrown::hash_map::{EntryRef, HashMap};
use std::mem::size_of;
use std::sync::Mutex;

use oncely_core::lifecycle::{check_holder, complete_record, decide_claim, decide_version};
use oncely_core::{
    Claim, ClaimOutcome, ClaimRequest, Error, Key, LostReason, Record, Result, Scope, Store,
    StoreStats, Timestamp, VersionCheck, async_trait,
};

/// Default bound: ten million records.
pub const DEFAULT_CAPACITY: usize = 10_000_000;

/// A record's place in the map.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RecordKey {
    scope: Scope,
    key: Key,
}

/// A borrowed [`RecordKey`], so lookups need no clone. Hashes exactly as `RecordKey` does.
struct RecordKeyRef<'a> {
    scope: &'a Scope,
    key: &'a Key,
}

impl Hash for RecordKeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.scope.hash(state);
        self.key.hash(state);
    }
}

impl hashbrown::Equivalent<RecordKey> for RecordKeyRef<'_> {
    fn equivalent(&self, stored: &RecordKey) -> bool {
        *self.scope == stored.scope && *self.key == stored.key
    }
}

impl From<&RecordKeyRef<'_>> for RecordKey {
    fn from(r: &RecordKeyRef<'_>) -> Self {
        RecordKey {
            scope: r.scope.clone(),
            key: r.key.clone(),
        }
    }
}

fn id<'a>(scope: &'a Scope, key: &'a Key) -> RecordKeyRef<'a> {
    RecordKeyRef { scope, key }
}

/// The in-memory store. See the crate docs.
#[derive(Debug)]
pub struct MemoryStore {
    capacity: usize,
    state: Mutex<State>,
}

// hashbrown's default hasher (foldhash): several times faster than SipHash on short keys, and
// seeded at random per process, so keys chosen by clients cannot be crafted to collide.
type Map<V> = HashMap<RecordKey, V>;

#[derive(Debug, Default)]
struct State {
    // Boxed: the table then moves 40-byte entries, not 160-byte ones, each time it grows.
    records: Map<Box<Record>>,
    versions: Map<u64>,
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
        let id = id(&req.scope, &req.key);
        if self.records.len() >= capacity && !self.records.contains_key(&id) {
            // Sweeping is O(n), but it runs only when full, and frees every expired record at
            // once, so it is amortized over the claims that fill the space again.
            self.records.retain(|_, r| !r.is_expired(now));
            if self.records.len() >= capacity {
                return Err(Error::StoreFull { capacity });
            }
        }
        match self.records.entry_ref(&id) {
            EntryRef::Occupied(mut stored) => {
                let decision = decide_claim(Some(stored.get()), req, now);
                if let Some(record) = decision.write {
                    **stored.get_mut() = record;
                }
                Ok(decision.outcome)
            }
            EntryRef::Vacant(slot) => {
                let decision = decide_claim(None, req, now);
                slot.insert(Box::new(
                    decision.write.expect("an absent key is always claimed"),
                ));
                Ok(decision.outcome)
            }
        }
    }

    /// Checks that the keys `requests` would add fit, sweeping expired records if they do not.
    fn make_room(
        &mut self,
        requests: &[ClaimRequest],
        now: Timestamp,
        capacity: usize,
    ) -> Result<()> {
        let fits = |state: &State| {
            let mut new = hashbrown::HashSet::new();
            for req in requests {
                if !state.records.contains_key(&id(&req.scope, &req.key)) {
                    new.insert((req.scope.as_str(), req.key.as_str()));
                }
            }
            state.records.len() + new.len() <= capacity
        };
        if fits(self) {
            return Ok(());
        }
        self.records.retain(|_, r| !r.is_expired(now));
        if fits(self) {
            Ok(())
        } else {
            Err(Error::StoreFull { capacity })
        }
    }

    fn held(&mut self, claim: &Claim) -> Result<&mut Record> {
        let held = self.records.get_mut(&id(&claim.scope, &claim.key));
        check_holder(held.as_deref().map(|r| &**r), claim).map_err(|reason| lost(claim, reason))?;
        Ok(held.expect("check_holder rejects a missing record"))
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
        // All or nothing: a batch that does not fit fails before it writes, so no key of it is
        // left claimed by nobody.
        state.make_room(requests, now, self.capacity)?;
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
        complete_record(state.held(claim)?, outcome, expires_at);
        Ok(())
    }

    async fn extend(&self, claim: &Claim, lease_until: Timestamp) -> Result<()> {
        self.lock().held(claim)?.expires_at = lease_until;
        Ok(())
    }

    async fn release(&self, claim: &Claim) -> Result<()> {
        let mut state = self.lock();
        state.held(claim)?;
        state.records.remove(&id(&claim.scope, &claim.key));
        Ok(())
    }

    async fn forget(&self, scope: &Scope, key: &Key, token: u64) -> Result<bool> {
        let mut state = self.lock();
        let id = id(scope, key);
        if state.records.get(&id).is_some_and(|r| r.token == token) {
            state.records.remove(&id);
            return Ok(true);
        }
        Ok(false)
    }

    async fn get(&self, scope: &Scope, key: &Key) -> Result<Option<Record>> {
        Ok(self
            .lock()
            .records
            .get(&id(scope, key))
            .map(|r| (**r).clone()))
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
        let mut bytes = state.records.capacity()
            * (size_of::<RecordKey>() + size_of::<Box<Record>>() + 1)
            + state.records.len() * size_of::<Record>();
        // The map's key and the record share one allocation per string (Arc), with a 16-byte
        // header each.
        for (RecordKey { scope, key }, rec) in &state.records {
            bytes += scope.as_str().len()
                + key.as_str().len()
                + 32
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
        let check = decide_version(state.versions.get(&id(scope, entity)).copied(), version);
        if let VersionCheck::Applied { .. } = check {
            state.versions.insert(
                RecordKey {
                    scope: scope.clone(),
                    key: entity.clone(),
                },
                version,
            );
        }
        Ok(check)
    }
}
