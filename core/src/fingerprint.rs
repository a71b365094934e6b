//! Payload fingerprints: the same key with a different payload is a conflict, not a duplicate.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::canonical::canonical_json;

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
    pub fn of_json(value: &serde_json::Value) -> Self {
        Self::of_bytes(canonical_json(value).as_bytes())
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
    fn hex_round_trips_known_digest() {
        // SHA-256 of the empty string.
        assert_eq!(
            Fingerprint::of_bytes(b"").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
