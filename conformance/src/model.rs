//! The model test: random histories applied to the store and to a reference model must agree.
//!
//! The model is deliberately naive and written from the lifecycle rules as README states them, not from
//! `oncely_core::lifecycle`, so a bug in the shared rules shows up here too.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use oncely_core::{
    Claim, ClaimOutcome, ClaimRequest, Clock, Error, Fingerprint, Key, LostReason, ManualClock,
    Oncely, Scope, Store,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::StoreFactory;

const RETENTION_MS: i64 = 60_000;
const SLOTS: usize = 4;

/// One step of a history. A `slot` names one of four (scope, key) pairs over two scopes; a
/// `handle` picks a granted claim (modulo how many there are); `fp` is a fingerprint of one byte.
#[derive(Clone, Debug)]
#[allow(missing_docs)]
pub enum Op {
    /// Claim slot `slot` (a (scope, key) pair) with an optional fingerprint.
    Claim {
        slot: usize,
        fp: Option<u8>,
        lease_ms: u64,
    },
    /// Claim several slots in one batch.
    ClaimMany {
        items: Vec<(usize, Option<u8>)>,
        lease_ms: u64,
    },
    /// Complete the `handle`-th granted claim (modulo how many there are).
    Complete { handle: usize, outcome: u8 },
    /// Release the `handle`-th granted claim.
    Release { handle: usize },
    /// Renew the `handle`-th granted claim's lease to `lease_ms` from now.
    Extend { handle: usize, lease_ms: u64 },
    /// Read a slot's record.
    Get { slot: usize },
    /// Move the clock.
    Advance { ms: u64 },
    /// Purge at most `limit` records expired before now.
    Purge { limit: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let fp = proptest::option::of(0u8..2);
    prop_oneof![
        4 => (0..SLOTS, fp.clone(), 1u64..5_000).prop_map(|(slot, fp, lease_ms)| Op::Claim { slot, fp, lease_ms }),
        2 => (proptest::collection::vec((0..SLOTS, fp), 1..5), 1u64..5_000)
            .prop_map(|(items, lease_ms)| Op::ClaimMany { items, lease_ms }),
        3 => (0usize..16, any::<u8>()).prop_map(|(handle, outcome)| Op::Complete { handle, outcome }),
        2 => (0usize..16).prop_map(|handle| Op::Release { handle }),
        2 => (0usize..16, 1u64..5_000).prop_map(|(handle, lease_ms)| Op::Extend { handle, lease_ms }),
        1 => (0..SLOTS).prop_map(|slot| Op::Get { slot }),
        3 => prop_oneof![0u64..3_000, Just(RETENTION_MS as u64), 0u64..120_000].prop_map(|ms| Op::Advance { ms }),
        1 => (0usize..4).prop_map(|limit| Op::Purge { limit }),
    ]
}

#[derive(Clone, Debug, PartialEq)]
struct ModelRecord {
    completed: Option<Vec<u8>>,
    fp: Option<u8>,
    holder: usize,
    expires_at: i64,
}

#[derive(Default, Debug)]
struct Model {
    records: HashMap<usize, ModelRecord>,
    now: i64,
}

#[derive(Debug, PartialEq)]
enum Answer {
    New,
    Duplicate(Vec<u8>),
    InProgress(u64),
    Conflict(Option<u8>),
}

impl Model {
    fn live(&self, slot: usize) -> Option<&ModelRecord> {
        self.records.get(&slot).filter(|r| r.expires_at >= self.now)
    }

    fn claim(&mut self, slot: usize, fp: Option<u8>, lease_ms: u64, holder: usize) -> Answer {
        if let Some(r) = self.live(slot) {
            if let (Some(a), Some(b)) = (r.fp, fp)
                && a != b
            {
                return Answer::Conflict(r.fp);
            }
            return match &r.completed {
                Some(out) => Answer::Duplicate(out.clone()),
                None => Answer::InProgress((r.expires_at - self.now) as u64 + 1),
            };
        }
        let expires_at = self.now + lease_ms as i64;
        self.records.insert(
            slot,
            ModelRecord {
                completed: None,
                fp,
                holder,
                expires_at,
            },
        );
        Answer::New
    }

    fn holder_check(&self, slot: usize, holder: usize) -> Result<(), LostReason> {
        match self.records.get(&slot) {
            None => Err(LostReason::Missing),
            Some(r) if r.holder != holder => Err(LostReason::TakenOver),
            Some(r) if r.completed.is_some() => Err(LostReason::AlreadyCompleted),
            Some(_) => Ok(()),
        }
    }
}

fn slot_ids(slot: usize) -> (Scope, Key) {
    let scope = Scope::new(format!("scope-{}", slot % 2)).unwrap();
    let key = Key::new(format!("key-{}", slot / 2)).unwrap();
    (scope, key)
}

fn fingerprint(fp: Option<u8>) -> Option<Fingerprint> {
    fp.map(|b| Fingerprint::of_bytes(&[b]))
}

fn answer_of(outcome: &ClaimOutcome) -> Answer {
    match outcome {
        ClaimOutcome::New(_) => Answer::New,
        ClaimOutcome::Duplicate(r) => {
            Answer::Duplicate(r.outcome().expect("duplicate is completed").to_vec())
        }
        ClaimOutcome::InProgress { retry_after } => {
            Answer::InProgress(retry_after.as_millis() as u64)
        }
        ClaimOutcome::Conflict { stored } => Answer::Conflict(stored.map(|s| {
            (0..2u8)
                .find(|b| Fingerprint::of_bytes(&[*b]) == s)
                .expect("known fingerprint")
        })),
    }
}

/// Number of random histories to try: `ONCELY_MODEL_CASES`, default 64.
pub fn cases_from_env() -> u32 {
    std::env::var("ONCELY_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

/// Runs `cases` random histories of up to 60 steps against fresh stores from `factory`.
pub fn check(factory: &dyn StoreFactory, cases: u32) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&proptest::collection::vec(op(), 1..60), |ops| {
            let store = rt.block_on(factory.make());
            rt.block_on(replay(store, &ops))
        })
        .map_err(|e| e.to_string())
}

fn check_eq<T: PartialEq + std::fmt::Debug>(
    step: usize,
    what: &str,
    store: T,
    model: T,
) -> Result<(), TestCaseError> {
    if store == model {
        Ok(())
    } else {
        Err(TestCaseError::fail(format!(
            "step {step} {what}: store {store:?}, model {model:?}"
        )))
    }
}

fn lost_reason<T: std::fmt::Debug>(
    result: oncely_core::Result<T>,
) -> Result<Result<(), LostReason>, TestCaseError> {
    match result {
        Ok(_) => Ok(Ok(())),
        Err(Error::ClaimLost { reason, .. }) => Ok(Err(reason)),
        Err(other) => Err(TestCaseError::fail(format!("store error: {other}"))),
    }
}

async fn replay(store: Arc<dyn Store>, ops: &[Op]) -> Result<(), TestCaseError> {
    let clock = ManualClock::default();
    let oncely = Oncely::new(store.clone())
        .with_clock(clock.clone())
        .with_retention(Duration::from_millis(RETENTION_MS as u64));
    let mut model = Model {
        now: clock.now().as_millis(),
        ..Model::default()
    };
    // Granted claims, with the slot each is for; the index is the model's holder id.
    let mut handles: Vec<(usize, Claim)> = Vec::new();

    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Claim { slot, fp, lease_ms } => {
                let (scope, key) = slot_ids(*slot);
                let req = ClaimRequest::new(
                    scope,
                    key,
                    fingerprint(*fp),
                    Duration::from_millis(*lease_ms),
                );
                let outcome = store
                    .claim(&req, clock.now())
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let want = model.claim(*slot, *fp, *lease_ms, handles.len());
                check_eq(step, "claim", answer_of(&outcome), want)?;
                if let ClaimOutcome::New(claim) = outcome {
                    handles.push((*slot, claim));
                }
            }
            Op::ClaimMany { items, lease_ms } => {
                let reqs: Vec<_> = items
                    .iter()
                    .map(|(slot, fp)| {
                        let (scope, key) = slot_ids(*slot);
                        ClaimRequest::new(
                            scope,
                            key,
                            fingerprint(*fp),
                            Duration::from_millis(*lease_ms),
                        )
                    })
                    .collect();
                let outcomes = store
                    .claim_many(&reqs, clock.now())
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                check_eq(step, "claim_many length", outcomes.len(), items.len())?;
                for ((slot, fp), outcome) in items.iter().zip(outcomes) {
                    let want = model.claim(*slot, *fp, *lease_ms, handles.len());
                    check_eq(step, "claim_many", answer_of(&outcome), want)?;
                    if let ClaimOutcome::New(claim) = outcome {
                        handles.push((*slot, claim));
                    }
                }
            }
            Op::Complete { handle, outcome } => {
                if handles.is_empty() {
                    continue;
                }
                let holder = handle % handles.len();
                let (slot, claim) = &handles[holder];
                let got = lost_reason(oncely.complete(claim, &[*outcome]).await)?;
                let want = model.holder_check(*slot, holder);
                if want.is_ok() {
                    let r = model.records.get_mut(slot).expect("checked");
                    r.completed = Some(vec![*outcome]);
                    r.expires_at = model.now + RETENTION_MS;
                }
                check_eq(step, "complete", got, want)?;
            }
            Op::Release { handle } => {
                if handles.is_empty() {
                    continue;
                }
                let holder = handle % handles.len();
                let (slot, claim) = &handles[holder];
                let got = lost_reason(oncely.release(claim).await)?;
                let want = model.holder_check(*slot, holder);
                if want.is_ok() {
                    model.records.remove(slot);
                }
                check_eq(step, "release", got, want)?;
            }
            Op::Extend { handle, lease_ms } => {
                if handles.is_empty() {
                    continue;
                }
                let holder = handle % handles.len();
                let (slot, claim) = &handles[holder];
                let lease_until = clock.now().saturating_add(Duration::from_millis(*lease_ms));
                let got = lost_reason(store.extend(claim, lease_until).await)?;
                let want = model.holder_check(*slot, holder);
                if want.is_ok() {
                    let r = model.records.get_mut(slot).expect("checked");
                    r.expires_at = model.now + *lease_ms as i64;
                }
                check_eq(step, "extend", got, want)?;
            }
            Op::Get { slot } => {
                let (scope, key) = slot_ids(*slot);
                let got = oncely
                    .get(&scope, &key)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let want = model.live(*slot).cloned();
                let got = got.map(|r| {
                    (
                        r.outcome().map(<[u8]>::to_vec),
                        r.fingerprint,
                        r.expires_at.as_millis(),
                    )
                });
                let want = want.map(|r| (r.completed, fingerprint(r.fp), r.expires_at));
                check_eq(step, "get", got, want)?;
            }
            Op::Advance { ms } => {
                clock.advance(Duration::from_millis(*ms));
                model.now += *ms as i64;
            }
            Op::Purge { limit } => {
                let purged = store
                    .purge(clock.now(), *limit)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let expired: Vec<usize> = (0..SLOTS)
                    .filter(|s| {
                        model
                            .records
                            .get(s)
                            .is_some_and(|r| r.expires_at < model.now)
                    })
                    .collect();
                check_eq(step, "purge count", purged, expired.len().min(*limit))?;
                // Which expired records a bounded purge picks is the store's choice: read back
                // which ones went, check only expired ones did, and forget those in the model.
                for slot in 0..SLOTS {
                    let (scope, key) = slot_ids(slot);
                    let present = store
                        .get(&scope, &key)
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?
                        .is_some();
                    let in_model = model.records.contains_key(&slot);
                    if in_model && !present {
                        if !expired.contains(&slot) {
                            return Err(TestCaseError::fail(format!(
                                "step {step}: purge removed live slot {slot}"
                            )));
                        }
                        model.records.remove(&slot);
                    }
                    check_eq(
                        step,
                        "presence after purge",
                        present,
                        model.records.contains_key(&slot),
                    )?;
                }
            }
        }
    }
    Ok(())
}
