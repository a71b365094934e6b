//! Key strategies: where a message's key comes from.
//!
//! - **Message id**: the broker's or producer's id ([`Key::new`]). Best when producers set a
//!   stable id per logical event.
//! - **Composite business key**: fields of the payload named by JSON pointers
//!   ([`CompositeKey`]), e.g. `/orderId,/paymentId`. Best when producers may resend the same
//!   operation under a new message id.
//! - **Payload hash**: a digest of the canonical JSON ([`payload_hash_key`]). Best when nothing
//!   in the payload identifies it, at the price that two genuinely separate but identical
//!   payloads count as one.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use crate::canonical::canonical_json;
use crate::{Fingerprint, Key, KeyError};

/// A key built from one or more fields of a JSON payload, named by JSON pointers (RFC 6901).
///
/// One pointer to a string gives that string; several give the canonical JSON array of the
/// values, so `("a,b", "c")` and `("a", "b,c")` never collide.
///
/// ```
/// use oncely_core::CompositeKey;
/// use serde_json::json;
///
/// let by_event: CompositeKey = "/eventId".parse()?;
/// assert_eq!(by_event.extract(&json!({"eventId": "e-1", "n": 2}))?.as_str(), "e-1");
///
/// let by_business = CompositeKey::parse("/orderId, /payment/id")?;
/// let key = by_business.extract(&json!({"orderId": 7, "payment": {"id": "p-9"}}))?;
/// assert_eq!(key.as_str(), r#"[7,"p-9"]"#);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct CompositeKey {
    pointers: Vec<String>,
}

/// A key specification that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySpecError {
    /// Nothing was given.
    #[error(
        "key specification is empty (expected JSON pointers like /eventId or /orderId,/paymentId)"
    )]
    Empty,
    /// A part that is not a JSON pointer.
    #[error("`{0}` is not a JSON pointer (it must start with `/`, e.g. /eventId)")]
    NotAPointer(String),
}

/// Why a payload gave no key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    /// The pointer names no field in the payload.
    #[error("missing key field {0}")]
    Missing(String),
    /// The field is `null`.
    #[error("key field {0} is null")]
    Null(String),
    /// The field gave an empty or over-long key.
    #[error(transparent)]
    Invalid(#[from] KeyError),
}

impl CompositeKey {
    /// Parses comma-separated JSON pointers: `/eventId` or `/orderId,/paymentId`.
    pub fn parse(spec: &str) -> Result<Self, KeySpecError> {
        let pointers: Vec<String> = spec
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                if p.starts_with('/') {
                    Ok(p.to_owned())
                } else {
                    Err(KeySpecError::NotAPointer(p.to_owned()))
                }
            })
            .collect::<Result<_, _>>()?;
        if pointers.is_empty() {
            return Err(KeySpecError::Empty);
        }
        Ok(CompositeKey { pointers })
    }

    /// The pointers, in order.
    pub fn pointers(&self) -> &[String] {
        &self.pointers
    }

    /// The key of `payload`.
    pub fn extract(&self, payload: &Value) -> Result<Key, ExtractError> {
        let mut values = Vec::with_capacity(self.pointers.len());
        for pointer in &self.pointers {
            match payload.pointer(pointer) {
                None => return Err(ExtractError::Missing(pointer.clone())),
                Some(Value::Null) => return Err(ExtractError::Null(pointer.clone())),
                Some(v) => values.push(v),
            }
        }
        let text = match values.as_slice() {
            [Value::String(s)] => s.clone(),
            [single] => canonical_json(single),
            many => canonical_json(&Value::Array(many.iter().map(|v| (*v).clone()).collect())),
        };
        Ok(Key::new(text)?)
    }
}

impl FromStr for CompositeKey {
    type Err = KeySpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CompositeKey::parse(s)
    }
}

impl fmt::Debug for CompositeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CompositeKey({})", self.pointers.join(","))
    }
}

impl fmt::Display for CompositeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pointers.join(","))
    }
}

/// A key that is the SHA-256 (hex) of the payload's canonical JSON: key order and whitespace
/// do not change it.
///
/// ```
/// use oncely_core::payload_hash_key;
/// let a: serde_json::Value = serde_json::from_str(r#"{"to":"ann","body":"hi"}"#)?;
/// let b: serde_json::Value = serde_json::from_str(r#"{ "body": "hi", "to": "ann" }"#)?;
/// assert_eq!(payload_hash_key(&a), payload_hash_key(&b));
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn payload_hash_key(payload: &Value) -> Key {
    Key::new(Fingerprint::of_json(payload).to_hex()).expect("a 64-char hex digest is a valid key")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn composite_parts_cannot_collide_through_separators() {
        let spec = CompositeKey::parse("/a,/b").unwrap();
        let one = spec.extract(&json!({"a": "x,y", "b": "z"})).unwrap();
        let two = spec.extract(&json!({"a": "x", "b": "y,z"})).unwrap();
        assert_ne!(one, two);
    }

    #[test]
    fn missing_null_and_empty_fields_are_typed_errors() {
        let spec = CompositeKey::parse("/id").unwrap();
        assert_eq!(
            spec.extract(&json!({})),
            Err(ExtractError::Missing("/id".into()))
        );
        assert_eq!(
            spec.extract(&json!({"id": null})),
            Err(ExtractError::Null("/id".into()))
        );
        assert!(matches!(
            spec.extract(&json!({"id": ""})),
            Err(ExtractError::Invalid(KeyError::Empty { .. }))
        ));
    }

    #[test]
    fn bad_specs_are_rejected() {
        assert_eq!(CompositeKey::parse(" , "), Err(KeySpecError::Empty));
        assert_eq!(
            CompositeKey::parse("eventId"),
            Err(KeySpecError::NotAPointer("eventId".into()))
        );
    }

    #[test]
    fn numeric_ids_become_their_json_text() {
        let spec = CompositeKey::parse("/id").unwrap();
        assert_eq!(spec.extract(&json!({"id": 42})).unwrap().as_str(), "42");
    }
}
