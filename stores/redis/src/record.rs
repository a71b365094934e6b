//! The record string: one Redis string per record, so a claim or a completion is one `GET` and
//! one `SET` on the server.
//!
//! ```text
//! <state> <expires_at> <token> <attempt> <created_at> <fingerprint><outcome>
//! ```
//!
//! `state` is `p` (in progress) or `d` (done); the numbers are decimal; `fingerprint` is `-`
//! (none) or `F` followed by its 32 raw bytes; the outcome (done records only) is the rest of
//! the string, raw. The fields the scripts read (state, expires_at, token) come first, so they
//! are found without looking past them, and nothing after `created_at` needs escaping. An
//! in-progress record is about 50 bytes plus its fingerprint.

use oncely_core::{Claim, Fingerprint, Key, Record, RecordState, Scope, Timestamp};

/// How a request's fingerprint is written into a record: `-` or `F` and its bytes.
fn fingerprint_part(fingerprint: Option<&Fingerprint>) -> Vec<u8> {
    match fingerprint {
        None => b"-".to_vec(),
        Some(f) => {
            let mut part = Vec::with_capacity(33);
            part.push(b'F');
            part.extend_from_slice(f.as_bytes());
            part
        }
    }
}

/// The record a first attempt at a claim writes: in progress until `lease_until`. The claim
/// script writes it as is for a new key, and with the next attempt's number for an expired one.
pub(crate) fn first_claim(
    lease_until: Timestamp,
    token: u64,
    now: Timestamp,
    fingerprint: Option<&Fingerprint>,
) -> Vec<u8> {
    let mut value = format!(
        "p {} {} 1 {} ",
        lease_until.as_millis(),
        token,
        now.as_millis()
    )
    .into_bytes();
    value.extend_from_slice(&fingerprint_part(fingerprint));
    value
}

/// The record `claim` leaves once completed with `outcome`, kept until `expires_at`.
pub(crate) fn completed(claim: &Claim, outcome: &[u8], expires_at: Timestamp) -> Vec<u8> {
    let head = format!(
        "d {} {} {} {} ",
        expires_at.as_millis(),
        claim.token,
        claim.attempt,
        claim.claimed_at.as_millis()
    );
    let mut value = Vec::with_capacity(head.len() + 33 + outcome.len());
    value.extend_from_slice(head.as_bytes());
    value.extend_from_slice(&fingerprint_part(claim.fingerprint.as_ref()));
    value.extend_from_slice(outcome);
    value
}

/// Reads a record string back; the error says what was wrong with it.
pub(crate) fn decode(scope: &Scope, key: &Key, value: &[u8]) -> Result<Record, String> {
    let mut fields = value.splitn(6, |&b| b == b' ');
    let mut next = |what: &str| {
        fields
            .next()
            .ok_or_else(|| format!("{scope}/{key}: the record ends before its {what}"))
    };
    let state = next("state")?;
    let expires_at = number(next("expires_at")?, "expires_at")?;
    let token = number(next("token")?, "token")?;
    let attempt = number(next("attempt")?, "attempt")?;
    let created_at = number(next("created_at")?, "created_at")?;
    let rest = next("fingerprint")?;
    let (fingerprint, outcome) = match rest.split_first() {
        Some((b'-', outcome)) => (None, outcome),
        Some((b'F', tail)) if tail.len() >= 32 => {
            let (bytes, outcome) = tail.split_at(32);
            (Fingerprint::from_slice(bytes), outcome)
        }
        _ => {
            return Err(format!(
                "{scope}/{key}: the record's fingerprint is malformed"
            ));
        }
    };
    let state = match state {
        b"p" => RecordState::InProgress,
        b"d" => RecordState::Completed {
            outcome: outcome.to_vec(),
        },
        _ => return Err(format!("{scope}/{key} has an unknown state")),
    };
    Ok(Record {
        scope: scope.clone(),
        key: key.clone(),
        state,
        fingerprint,
        token,
        attempt,
        created_at: Timestamp::from_millis(created_at),
        expires_at: Timestamp::from_millis(expires_at),
    })
}

/// The decimal number in `text`; the error names it `what`.
fn number<T: std::str::FromStr>(text: &[u8], what: &str) -> Result<T, String> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("{what} `{}` is not a number", String::from_utf8_lossy(text)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use oncely_core::ClaimRequest;

    use super::*;

    fn claim(fingerprint: Option<Fingerprint>) -> Claim {
        let mut req = ClaimRequest::new(
            Scope::new("s").unwrap(),
            Key::new("k").unwrap(),
            fingerprint,
            Duration::from_secs(30),
        );
        req.token = u64::MAX;
        Claim {
            scope: req.scope,
            key: req.key,
            token: req.token,
            attempt: 7,
            fingerprint: req.fingerprint,
            claimed_at: Timestamp::from_millis(-5),
            lease_until: Timestamp::from_millis(29_995),
        }
    }

    #[test]
    fn a_completed_record_reads_back_whole_whatever_its_bytes() {
        // Spaces in the fingerprint and the outcome are data, not separators.
        let fingerprint = Fingerprint::from_slice(&[b' '; 32]).unwrap();
        for fp in [None, Some(fingerprint)] {
            let c = claim(fp);
            let outcome = b" a b \0\xff ";
            let value = completed(&c, outcome, Timestamp::from_millis(i64::MAX));
            let record = decode(&c.scope, &c.key, &value).unwrap();
            assert_eq!(record.outcome(), Some(&outcome[..]));
            assert_eq!(record.fingerprint, fp);
            assert_eq!(
                (
                    record.token,
                    record.attempt,
                    record.created_at,
                    record.expires_at
                ),
                (u64::MAX, 7, c.claimed_at, Timestamp::from_millis(i64::MAX))
            );
        }
    }

    #[test]
    fn an_in_progress_record_as_the_claim_script_writes_it_reads_back() {
        let (scope, key) = (Scope::new("s").unwrap(), Key::new("k").unwrap());
        let record = decode(&scope, &key, b"p 30000 42 1 0 -").unwrap();
        assert_eq!(record.state, RecordState::InProgress);
        assert_eq!((record.token, record.attempt), (42, 1));
        assert_eq!(record.expires_at, Timestamp::from_millis(30_000));
    }

    #[test]
    fn a_malformed_record_is_an_error_not_a_record() {
        let (scope, key) = (Scope::new("s").unwrap(), Key::new("k").unwrap());
        for bad in [
            &b""[..],
            b"p 1 2 3",
            b"x 1 2 3 4 -",
            b"p 1 2 3 4 F short",
            b"p one 2 3 4 -",
            b"p 1 2 3 4 ",
        ] {
            assert!(decode(&scope, &key, bad).is_err(), "{bad:?}");
        }
    }
}
