//! A record as a DynamoDB item, and back.
//!
//! One item per (scope, key), under the partition key `o_id`: `r`, the scope's length in bytes,
//! `:`, the scope, then the key, so no two (scope, key) pairs share an id. A version of the
//! version guard is an item of its own, `v...` in the same way. The attributes: `o_scope`,
//! `o_key`, `o_state` (`p` in progress, `c` completed), `o_token`, `o_attempt`, `o_fp` (the
//! fingerprint, when given), `o_created` and `o_expires` (milliseconds since the Unix epoch),
//! `o_outcome` (when not empty; `o_parts`, the number of parts, when larger than
//! [`PART_BYTES`]), and `o_ttl`: `o_expires` in seconds plus
//! [`TTL_GRACE_SECS`], for DynamoDB's TTL. Every name starts `o_`, so none is a DynamoDB
//! reserved word.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use oncely_core::{Fingerprint, Key, Record, RecordState, Scope, Timestamp};

/// An item's attributes.
pub(crate) type Item = HashMap<String, AttributeValue>;

/// The most outcome bytes one item holds (DynamoDB's limit is 400 KB an item, names and all);
/// a larger outcome is kept in parts of this size, items of their own (`o_parts` counts them).
pub(crate) const PART_BYTES: usize = 350_000;

/// The partition key's name.
pub(crate) const ID: &str = "o_id";
/// DynamoDB's TTL removes an item up to days after `o_ttl`, and only after it: an hour past the
/// record's own end, so that nothing a claim could still read as live is removed.
pub(crate) const TTL_GRACE_SECS: i64 = 3600;

/// The id of (scope, key)'s record.
pub(crate) fn record_id(scope: &Scope, key: &Key) -> String {
    format!(
        "r{}:{}{}",
        scope.as_str().len(),
        scope.as_str(),
        key.as_str()
    )
}

/// The id of part `part` of the outcome `token`'s holder completed (scope, key) with: `p`,
/// then as a record's id, then `#token#part` (read from the right, so a key holding `#` is
/// no trouble).
pub(crate) fn part_id(scope: &Scope, key: &Key, token: u64, part: usize) -> String {
    format!(
        "p{}:{}{}#{token}#{part}",
        scope.as_str().len(),
        scope.as_str(),
        key.as_str()
    )
}

/// The id of (scope, entity)'s version.
pub(crate) fn version_id(scope: &Scope, entity: &Key) -> String {
    format!(
        "v{}:{}{}",
        scope.as_str().len(),
        scope.as_str(),
        entity.as_str()
    )
}

pub(crate) fn s(text: &str) -> AttributeValue {
    AttributeValue::S(text.to_owned())
}

pub(crate) fn n(number: impl ToString) -> AttributeValue {
    AttributeValue::N(number.to_string())
}

/// `o_ttl` for a record that ends at `expires_at`.
pub(crate) fn ttl(expires_at: Timestamp) -> AttributeValue {
    n(expires_at
        .as_millis()
        .div_euclid(1000)
        .saturating_add(TTL_GRACE_SECS))
}

/// The item of `record`, as the store's writes leave it (claims write it attribute by attribute).
#[cfg(test)]
pub(crate) fn to_item(record: &Record) -> Item {
    let mut item = Item::from([
        (ID.to_owned(), s(&record_id(&record.scope, &record.key))),
        ("o_scope".to_owned(), s(record.scope.as_str())),
        ("o_key".to_owned(), s(record.key.as_str())),
        (
            "o_state".to_owned(),
            s(if record.is_completed() { "c" } else { "p" }),
        ),
        ("o_token".to_owned(), n(record.token)),
        ("o_attempt".to_owned(), n(record.attempt)),
        ("o_created".to_owned(), n(record.created_at.as_millis())),
        ("o_expires".to_owned(), n(record.expires_at.as_millis())),
        ("o_ttl".to_owned(), ttl(record.expires_at)),
    ]);
    if let Some(fp) = &record.fingerprint {
        item.insert(
            "o_fp".to_owned(),
            AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(
                fp.as_bytes().to_vec(),
            )),
        );
    }
    if let Some(outcome) = record.outcome().filter(|o| !o.is_empty()) {
        item.insert(
            "o_outcome".to_owned(),
            AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(outcome.to_vec())),
        );
    }
    item
}

/// The record an item holds; the error says what was wrong with it.
pub(crate) fn from_item(item: &Item) -> Result<Record, String> {
    let text = |name: &str| match item.get(name) {
        Some(AttributeValue::S(text)) => Ok(text.as_str()),
        _ => Err(format!("{name} is missing or not a string")),
    };
    let number = |name: &str| match item.get(name) {
        Some(AttributeValue::N(number)) => number
            .parse::<i128>()
            .map_err(|_| format!("{name} is not an integer: {number}")),
        _ => Err(format!("{name} is missing or not a number")),
    };
    let bytes = |name: &str| match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::B(blob)) => Ok(Some(blob.as_ref().to_vec())),
        Some(_) => Err(format!("{name} is not binary")),
    };
    let fingerprint = match bytes("o_fp")? {
        None => None,
        Some(fp) => Some(
            Fingerprint::from_slice(&fp)
                .ok_or_else(|| format!("o_fp is {} bytes, expected 32", fp.len()))?,
        ),
    };
    let state = match text("o_state")? {
        "p" => RecordState::InProgress,
        "c" => RecordState::Completed {
            outcome: bytes("o_outcome")?.unwrap_or_default(),
        },
        other => return Err(format!("o_state is `{other}`, expected p or c")),
    };
    let in_range = |name: &str, value: i128, max: i128| {
        if (0..=max).contains(&value) {
            Ok(value)
        } else {
            Err(format!("{name} is out of range: {value}"))
        }
    };
    Ok(Record {
        scope: Scope::new(text("o_scope")?).map_err(|e| e.to_string())?,
        key: Key::new(text("o_key")?).map_err(|e| e.to_string())?,
        state,
        fingerprint,
        token: in_range("o_token", number("o_token")?, u64::MAX as i128)? as u64,
        attempt: in_range("o_attempt", number("o_attempt")?, u32::MAX as i128)? as u32,
        created_at: Timestamp::from_millis(number("o_created")? as i64),
        expires_at: Timestamp::from_millis(number("o_expires")? as i64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_ids_never_collide() {
        let record = Record {
            scope: Scope::new("orders").unwrap(),
            key: Key::new("o-1").unwrap(),
            state: RecordState::Completed {
                outcome: b"done".to_vec(),
            },
            fingerprint: Some(Fingerprint::of_bytes(b"p")),
            token: u64::MAX - 1,
            attempt: 3,
            created_at: Timestamp::from_millis(1_700_000_000_000),
            expires_at: Timestamp::from_millis(1_700_000_360_000),
        };
        assert_eq!(from_item(&to_item(&record)), Ok(record));
        let (ab, c) = (Scope::new("ab").unwrap(), Key::new("c").unwrap());
        let (a, bc) = (Scope::new("a").unwrap(), Key::new("bc").unwrap());
        assert_ne!(record_id(&ab, &c), record_id(&a, &bc));
        assert_ne!(record_id(&a, &bc), version_id(&a, &bc));
    }
}
