//! Payload fingerprints: the same key with a different payload is a conflict, not a duplicate.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::canonical::{canonical_json, canonical_json_text};

/// A SHA-256 digest of the payload a key arrived with.
///
/// Two claims of one key with different fingerprints are a [`Conflict`](crate::ClaimOutcome::Conflict):
/// a client reused a key for another request, or two operations collided on one key. Either way
/// the second must not be executed, and must not be told "already done".
///
/// ```
/// use oncely_core::Fingerprint;
/// use serde_json::json;
///
/// // Key order and whitespace do not change a JSON fingerprint.
/// let a = Fingerprint::of_json(&json!({"amount": 10, "currency": "EUR"}));
/// let b = Fingerprint::of_json(&serde_json::from_str(r#"{ "currency":"EUR",  "amount":10 }"#)?);
/// assert_eq!(a, b);
/// assert_ne!(a, Fingerprint::of_bytes(b"something else"));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Digest of raw bytes.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Fingerprint(Sha256::digest(bytes).into())
    }

    /// Digest of several parts, each length-prefixed so `("ab", "c")` and `("a", "bc")` differ.
    pub fn of_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        Fingerprint(hasher.finalize().into())
    }

    /// Digest of the canonical form of a JSON value (sorted keys, no insignificant whitespace).
    /// A `Value` may have rounded numbers beyond 64-bit integers and `f64`:
    /// [`of_json_text`](Self::of_json_text) keeps them exact.
    pub fn of_json(value: &serde_json::Value) -> Self {
        Self::of_bytes(canonical_json(value).as_bytes())
    }

    /// Digest of the canonical form of a JSON text as received, every number exact
    /// ([`canonical_json_text`](crate::canonical_json_text)): the same as
    /// [`of_json`](Self::of_json) of the parsed value wherever that value kept its numbers exact.
    /// Fails, as `serde_json::from_slice` does, on what is not one JSON text.
    pub fn of_json_text(text: &[u8]) -> Result<Self, serde_json::Error> {
        Ok(Self::of_bytes(canonical_json_text(text)?.as_bytes()))
    }

    /// Wraps a digest read back from a store.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Fingerprint(bytes)
    }

    /// Wraps a digest read back from a store, if it has the right length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Fingerprint)
    }

    /// The 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, as shown by `oncely inspect`.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_length_prefixed() {
        assert_ne!(
            Fingerprint::of_parts([b"ab".as_slice(), b"c"]),
            Fingerprint::of_parts([b"a".as_slice(), b"bc"])
        );
    }

    #[test]
    fn json_text_keeps_big_numbers_apart_and_agrees_with_a_value_elsewhere() {
        let of = |text: &str| Fingerprint::of_json_text(text.as_bytes()).unwrap();
        assert_ne!(
            of(r#"{"n":18446744073709551616}"#),
            of(r#"{"n":18446744073709551617}"#)
        );
        assert_ne!(
            of(r#"{"n":100000000000000000000001}"#),
            of(r#"{"n":100000000000000000000002}"#)
        );
        assert_ne!(of(r#"{"n":"42"}"#), of(r#"{"n":42}"#));
        let text = r#"{ "b": [1, 2.50, -3e-2], "a": "x" }"#;
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(of(text), Fingerprint::of_json(&value));
        assert!(Fingerprint::of_json_text(b"{").is_err());
    }

    #[test]
    fn hex_round_trips_known_digest() {
        // SHA-256 of the empty string.
        assert_eq!(
            Fingerprint::of_bytes(b"").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
