//! A batch of claims decided inside one database transaction, written once for every SQL store.
//!
//! A SQL store cannot read-then-write a key safely without locking it first, and two batches
//! that lock shared keys in different orders deadlock. [`claim_in_transaction`] holds the part
//! every SQL store shares: take each distinct key once, in sorted order (so concurrent batches
//! lock in the same order); retry keys that vanished between insert and lock (a concurrent
//! release or purge); then decide every request in order by [`decide_claim`], as if the batch
//! were a sequence of single claims, and write back the records the decisions replaced.
//!
//! A backend implements [`ClaimTransaction`] with its dialect's statements: how to insert fresh
//! claims and lock the rows that already exist, and how to rewrite locked rows.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;

use crate::lifecycle::decide_claim;
use crate::{ClaimOutcome, ClaimRequest, Error, Key, Record, Result, Scope, Timestamp};

/// A record's identity in a batch.
pub type RecordId = (Scope, Key);

/// What [`ClaimTransaction::take`] found.
#[derive(Debug, Default)]
pub struct Taken {
    /// Keys whose fresh claim was inserted by this transaction.
    pub inserted: HashSet<RecordId>,
    /// Rows that existed, now locked until the transaction ends.
    pub locked: HashMap<RecordId, Record>,
}

/// One open transaction of a SQL store, as [`claim_in_transaction`] drives it.
#[async_trait]
pub trait ClaimTransaction: Send {
    /// Inserts each of `fresh` (distinct keys, sorted) unless its key exists, and locks the
    /// rows of those that do. A key in neither answer was deleted in between; it is tried again.
    async fn take(&mut self, fresh: &[Record]) -> Result<Taken>;

    /// Overwrites the rows of `records`, all locked by an earlier `take` in this transaction.
    async fn rewrite(&mut self, records: &[Record]) -> Result<()>;
}

/// How often keys may vanish between insert and lock before the batch gives up.
const TAKE_ROUNDS: usize = 16;

/// Decides `requests` in order inside `tx`; the caller commits. See the module docs.
pub async fn claim_in_transaction<T: ClaimTransaction>(
    tx: &mut T,
    store: &str,
    requests: &[ClaimRequest],
    now: Timestamp,
) -> Result<Vec<ClaimOutcome>> {
    decide_in_transaction(tx, store, requests, now, |claim| claim).await
}

/// [`claim_in_transaction`], writing `shape(claim)` wherever a claim wins a key: the claim
/// itself for a store, a record completed on the spot for the inbox (whose transaction is the
/// work). Later requests for the same key in the batch are decided against what was written.
pub(crate) async fn decide_in_transaction<T, F>(
    tx: &mut T,
    store: &str,
    requests: &[ClaimRequest],
    now: Timestamp,
    shape: F,
) -> Result<Vec<ClaimOutcome>>
where
    T: ClaimTransaction,
    F: Fn(Record) -> Record + Sync,
{
    // The first request for each key decides how its row is taken.
    let mut seen = HashSet::new();
    let mut pending: Vec<&ClaimRequest> =
        requests.iter().filter(|req| seen.insert(id(req))).collect();
    pending.sort_by(|a, b| (&a.scope, &a.key).cmp(&(&b.scope, &b.key)));

    // Current state per key once taken: a claim this transaction inserted, or the locked row.
    let mut state: HashMap<RecordId, Record> = HashMap::new();
    let mut inserted: HashSet<RecordId> = HashSet::new();
    for _ in 0..TAKE_ROUNDS {
        if pending.is_empty() {
            break;
        }
        let fresh: Vec<Record> = pending
            .iter()
            .map(|req| {
                shape(
                    decide_claim(None, req, now)
                        .write
                        .expect("an absent key is always claimed"),
                )
            })
            .collect();
        let taken = tx.take(&fresh).await?;
        for record in fresh {
            let key = (record.scope.clone(), record.key.clone());
            if taken.inserted.contains(&key) {
                state.insert(key.clone(), record);
                inserted.insert(key);
            }
        }
        pending.retain(|req| {
            let key = id(req);
            !inserted.contains(&key) && !taken.locked.contains_key(&key)
        });
        state.extend(taken.locked);
    }
    if !pending.is_empty() {
        return Err(Error::Backend {
            store: store.to_owned(),
            source: "keys kept vanishing between insert and lock".into(),
        });
    }

    // Every request in order, as a sequence of single claims.
    let mut outcomes = Vec::with_capacity(requests.len());
    let mut rewritten: Vec<Record> = Vec::new();
    for req in requests {
        let key = id(req);
        if inserted.remove(&key) {
            // The inserted claim is this request's (the first for its key): answer it as New.
            outcomes.push(decide_claim(None, req, now).outcome);
            continue;
        }
        let decision = decide_claim(state.get(&key), req, now);
        if let Some(record) = decision.write {
            // At most once per key: the rewritten claim is live, so later requests wait on it.
            let record = shape(record);
            rewritten.push(record.clone());
            state.insert(key, record);
        }
        outcomes.push(decision.outcome);
    }
    if !rewritten.is_empty() {
        tx.rewrite(&rewritten).await?;
    }
    Ok(outcomes)
}

/// Answers, from rows read without a lock, the requests whose key has a completed, live record:
/// a duplicate (or a conflict of fingerprints), decided as a claim would decide it. Such a record
/// changes only once it expires, so the answer needs no lock and no write: a replay costs a
/// read. Returns each request's answer where there is one, and the requests left to claim, in
/// order; [`merge_settled`] puts their outcomes back in place.
pub fn settle_by_read(
    requests: &[ClaimRequest],
    found: &HashMap<RecordId, Record>,
    now: Timestamp,
) -> (Vec<Option<ClaimOutcome>>, Vec<ClaimRequest>) {
    let mut settled = Vec::with_capacity(requests.len());
    let mut rest = Vec::new();
    for req in requests {
        let answer = found
            .get(&id(req))
            .filter(|record| record.is_completed())
            .map(|record| decide_claim(Some(record), req, now))
            .filter(|decision| decision.write.is_none())
            .map(|decision| decision.outcome);
        if answer.is_none() {
            rest.push(req.clone());
        }
        settled.push(answer);
    }
    (settled, rest)
}

/// The answers of [`settle_by_read`] with `claimed`, the outcomes of the requests it left, in
/// their places.
pub fn merge_settled(
    settled: Vec<Option<ClaimOutcome>>,
    claimed: Vec<ClaimOutcome>,
) -> Vec<ClaimOutcome> {
    let mut claimed = claimed.into_iter();
    settled
        .into_iter()
        .map(|answer| {
            answer.unwrap_or_else(|| claimed.next().expect("one outcome per request left"))
        })
        .collect()
}

/// Whether a batch decided by [`claim_in_transaction`] wrote anything: only a `New` claim writes
/// (an insert, or a takeover). A batch that wrote nothing (all duplicates, say: replays of
/// answered requests) can end with a rollback, which answers the same (its decisions were made
/// on rows it had locked) and skips the commit's synced log write.
pub fn claimed_any(outcomes: &[ClaimOutcome]) -> bool {
    outcomes.iter().any(|o| matches!(o, ClaimOutcome::New(_)))
}

fn id(req: &ClaimRequest) -> RecordId {
    (req.scope.clone(), req.key.clone())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{Fingerprint, RecordState};

    fn request(key: &str, fingerprint: &[u8]) -> ClaimRequest {
        ClaimRequest::new(
            Scope::default(),
            Key::new(key).unwrap(),
            Some(Fingerprint::of_bytes(fingerprint)),
            Duration::from_secs(30),
        )
    }

    fn record(key: &str, completed: bool, expires_at: i64) -> (RecordId, Record) {
        let id = (Scope::default(), Key::new(key).unwrap());
        let state = if completed {
            RecordState::Completed {
                outcome: b"done".to_vec(),
            }
        } else {
            RecordState::InProgress
        };
        let record = Record {
            scope: id.0.clone(),
            key: id.1.clone(),
            state,
            fingerprint: Some(Fingerprint::of_bytes(b"a")),
            token: 7,
            attempt: 1,
            created_at: Timestamp::from_millis(0),
            expires_at: Timestamp::from_millis(expires_at),
        };
        (id, record)
    }

    #[test]
    fn only_live_completed_records_are_answered_by_a_read() {
        let now = Timestamp::from_millis(1_000);
        let found: HashMap<RecordId, Record> = [
            record("done", true, 2_000),
            record("held", false, 2_000),
            record("expired", true, 500),
        ]
        .into_iter()
        .collect();
        let requests = [
            request("done", b"a"),
            request("held", b"a"),
            request("new", b"a"),
            request("done", b"other"),
            request("expired", b"a"),
        ];
        let (settled, rest) = settle_by_read(&requests, &found, now);
        assert!(matches!(settled[0], Some(ClaimOutcome::Duplicate(_))));
        assert!(matches!(settled[3], Some(ClaimOutcome::Conflict { .. })));
        let left: Vec<&str> = rest.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(left, ["held", "new", "expired"]);

        // The claimed outcomes go back in the places of the requests left.
        let claimed = vec![
            ClaimOutcome::InProgress {
                retry_after: Duration::from_secs(1),
            },
            decide_claim(None, &rest[1], now).outcome,
            decide_claim(None, &rest[2], now).outcome,
        ];
        let merged = merge_settled(settled, claimed);
        assert!(matches!(merged[0], ClaimOutcome::Duplicate(_)));
        assert!(matches!(merged[1], ClaimOutcome::InProgress { .. }));
        assert!(matches!(merged[2], ClaimOutcome::New(_)));
        assert!(matches!(merged[3], ClaimOutcome::Conflict { .. }));
        assert!(matches!(merged[4], ClaimOutcome::New(_)));
    }
}
