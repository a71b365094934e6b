//! The record lifecycle rules (claim, complete, release, expiry; README "Concepts"), written
//! once. Every store that keeps records it can read back (memory, SQLite, and the slow paths of
//! the SQL stores) calls these functions inside its own atomic section, so the rules cannot drift
//! between backends. The conformance suite checks the ones that cannot.

use std::time::Duration;

use crate::{
    Claim, ClaimOutcome, ClaimRequest, Error, LostReason, Record, RecordState, Timestamp,
    VersionCheck,
};

/// What a claim decided: the answer, and the record to write (insert or replace) if any.
#[derive(Debug)]
pub struct ClaimDecision {
    /// The answer for the caller.
    pub outcome: ClaimOutcome,
    /// `Some` when the store must write this record (a new claim or a takeover).
    pub write: Option<Record>,
}

/// Decides a claim against the record currently stored for its (scope, key), if any.
///
/// - no record, or an expired one (lease ran out, retention ended): `New`, with a fresh
///   record carrying the request's token. An expired record counts as absent, whatever its
///   fingerprint, so a purge never changes what a claim answers.
/// - a live record with a different fingerprint: `Conflict`.
/// - a live in-progress record: `InProgress` with the time left on its lease.
/// - a live completed record: `Duplicate` with the stored outcome.
pub fn decide_claim(
    existing: Option<&Record>,
    req: &ClaimRequest,
    now: Timestamp,
) -> ClaimDecision {
    match existing {
        Some(rec) if !rec.is_expired(now) => {
            if fingerprints_conflict(rec.fingerprint.as_ref(), req.fingerprint.as_ref()) {
                return answer(ClaimOutcome::Conflict {
                    stored: rec.fingerprint,
                });
            }
            match rec.state {
                RecordState::InProgress => answer(ClaimOutcome::InProgress {
                    // Live through `expires_at` inclusive, so free 1 ms after it.
                    retry_after: now.until(rec.expires_at) + Duration::from_millis(1),
                }),
                RecordState::Completed { .. } => answer(ClaimOutcome::Duplicate(rec.clone())),
            }
        }
        expired_or_absent => {
            let attempt = expired_or_absent.map_or(1, |r| r.attempt.saturating_add(1));
            let lease_until = now.saturating_add(req.lease);
            let record = Record {
                scope: req.scope.clone(),
                key: req.key.clone(),
                state: RecordState::InProgress,
                fingerprint: req.fingerprint,
                token: req.token,
                attempt,
                created_at: now,
                expires_at: lease_until,
            };
            let claim = Claim {
                scope: req.scope.clone(),
                key: req.key.clone(),
                token: req.token,
                attempt,
                fingerprint: req.fingerprint,
                claimed_at: now,
                lease_until,
            };
            ClaimDecision {
                outcome: ClaimOutcome::New(claim),
                write: Some(record),
            }
        }
    }
}

fn answer(outcome: ClaimOutcome) -> ClaimDecision {
    ClaimDecision {
        outcome,
        write: None,
    }
}

/// A fingerprint conflicts only when both sides have one and they differ: a caller that gives
/// none has asked for no payload check.
pub fn fingerprints_conflict<T: PartialEq>(stored: Option<&T>, given: Option<&T>) -> bool {
    matches!((stored, given), (Some(a), Some(b)) if a != b)
}

/// Checks that `claim` still holds `existing`, as complete and release require (fencing).
///
/// A holder whose lease ran out may still complete as long as nobody took the key over: the
/// work is done, and recording it is better than making the next delivery redo it.
pub fn check_holder(existing: Option<&Record>, claim: &Claim) -> Result<(), LostReason> {
    match existing {
        None => Err(LostReason::Missing),
        Some(rec) if rec.token != claim.token => Err(LostReason::TakenOver),
        Some(rec) if rec.is_completed() => Err(LostReason::AlreadyCompleted),
        Some(_) => Ok(()),
    }
}

/// The error for a complete or release whose guarded write (token matches, not completed)
/// changed nothing, given the record read back afterwards: why the claim is no longer held.
///
/// If the record says the claim *is* still held, the store and its guard disagree, which is
/// reported as [`Error::Corrupt`] rather than guessed at.
pub fn claim_lost(store: &str, existing: Option<&Record>, claim: &Claim) -> Error {
    match check_holder(existing, claim) {
        Err(reason) => Error::ClaimLost {
            scope: claim.scope.clone(),
            key: claim.key.clone(),
            reason,
        },
        Ok(()) => Error::Corrupt {
            store: store.to_owned(),
            detail: format!(
                "guarded update of {}/{} matched no row, yet the claim holds it",
                claim.scope, claim.key
            ),
        },
    }
}

/// Turns a held record into a completed one, once [`check_holder`] passed.
pub fn complete_record(held: &mut Record, outcome: &[u8], expires_at: Timestamp) {
    held.state = RecordState::Completed {
        outcome: outcome.to_vec(),
    };
    held.expires_at = expires_at;
}

/// The version guard's rule: a version is applied only if strictly greater than the stored one.
pub fn decide_version(stored: Option<u64>, version: u64) -> VersionCheck {
    match stored {
        Some(current) if version <= current => VersionCheck::Stale { current },
        previous => VersionCheck::Applied { previous },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Fingerprint, Key, Scope};

    fn req(fp: Option<Fingerprint>) -> ClaimRequest {
        ClaimRequest::new(
            Scope::default(),
            Key::new("k").unwrap(),
            fp,
            Duration::from_secs(10),
        )
    }

    #[test]
    fn lease_is_live_through_its_deadline_inclusive() {
        let now = Timestamp::from_millis(1_000);
        let first = decide_claim(None, &req(None), now).write.unwrap();
        assert_eq!(first.expires_at, Timestamp::from_millis(11_000));
        let at_deadline = decide_claim(Some(&first), &req(None), first.expires_at);
        assert_eq!(
            at_deadline.outcome,
            ClaimOutcome::InProgress {
                retry_after: Duration::from_millis(1)
            }
        );
        let after = decide_claim(Some(&first), &req(None), Timestamp::from_millis(11_001));
        assert!(matches!(
            after.outcome,
            ClaimOutcome::New(Claim { attempt: 2, .. })
        ));
    }

    #[test]
    fn missing_fingerprint_on_either_side_is_no_conflict() {
        let a = Fingerprint::of_bytes(b"a");
        assert!(!fingerprints_conflict(Some(&a), None));
        assert!(!fingerprints_conflict(None, Some(&a)));
        assert!(fingerprints_conflict(
            Some(&a),
            Some(&Fingerprint::of_bytes(b"b"))
        ));
    }
}
