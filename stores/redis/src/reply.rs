//! Replies: records and numbers read back from the fields of a record hash or a script's answer.

use oncely_core::{Fingerprint, Key, Record, RecordState, Scope, Timestamp};
use redis::Value;

/// A reply value's bytes (a bulk or simple string); `None` for nil or any other kind.
pub(crate) fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// The number in `field`; the error names it `what`.
pub(crate) fn parse<T: std::str::FromStr>(field: Option<&[u8]>, what: &str) -> Result<T, String> {
    let text = field.ok_or_else(|| format!("{what} is missing"))?;
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("{what} `{}` is not a number", String::from_utf8_lossy(text)))
}

/// Builds a record from its hash fields `s f t a c e o`; the error says what was wrong.
pub(crate) fn decode_record(
    scope: &Scope,
    key: &Key,
    f: &[Option<&[u8]>],
) -> Result<Record, String> {
    let state = match f[0] {
        Some(b"p") => RecordState::InProgress,
        Some(b"d") => RecordState::Completed {
            outcome: f[6].unwrap_or_default().to_vec(),
        },
        _ => return Err(format!("{scope}/{key} has an unknown state")),
    };
    let fingerprint = match f[1] {
        None => None,
        Some(b) => Some(
            Fingerprint::from_slice(b)
                .ok_or_else(|| format!("fingerprint is {} bytes, expected 32", b.len()))?,
        ),
    };
    Ok(Record {
        scope: scope.clone(),
        key: key.clone(),
        state,
        fingerprint,
        token: parse(f[2], "token")?,
        attempt: parse(f[3], "attempt")?,
        created_at: Timestamp::from_millis(parse(f[4], "created_at")?),
        expires_at: Timestamp::from_millis(parse(f[5], "expires_at")?),
    })
}
