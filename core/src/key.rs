//! Keys and scopes: what identifies one logical operation, and the namespace it lives in.

use std::fmt;
use std::sync::Arc;

use crate::error::KeyError;

/// The longest key accepted, in bytes. Longer keys are rejected, never truncated.
pub const MAX_KEY_BYTES: usize = 512;

/// The longest scope accepted, in bytes.
pub const MAX_SCOPE_BYTES: usize = 255;

/// Identifies one logical operation: a message id, a business key, a payload hash.
///
/// A key is non-empty UTF-8 of at most [`MAX_KEY_BYTES`] bytes. Anything else is a typed
/// [`KeyError`]: a key is never truncated or hashed behind the caller's back, because two
/// different operations silently sharing a key would drop one of them. Cloning is cheap (a
/// reference count), so keys move freely between tasks and stores.
///
/// ```
/// use oncely_core::{Key, KeyError};
///
/// let key = Key::new("evt-0001")?;
/// assert_eq!(key.as_str(), "evt-0001");
/// assert!(matches!(Key::new(""), Err(KeyError::Empty { .. })));
/// assert!(matches!(Key::new("x".repeat(513)), Err(KeyError::TooLong { .. })));
/// # Ok::<(), KeyError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Arc<str>);

impl Key {
    /// Validates and wraps a key.
    pub fn new(key: impl Into<String>) -> Result<Self, KeyError> {
        let key = key.into();
        validate("key", &key, MAX_KEY_BYTES)?;
        Ok(Key(key.into()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The idempotency key to send to another service for one `step` of the work this key
    /// names in `scope`: the same on every attempt, different for every scope, key and step.
    ///
    /// A step that calls out (a card charge, another team's API, an oncely gateway) cannot be
    /// undone by a crash after it: the retry calls again. If the call carries a derived key,
    /// the service deduplicates it on its side, so the retry is charged once. Send it as that
    /// service's idempotency key (Stripe's `Idempotency-Key` header, say).
    ///
    /// The derivation is stable across versions and machines, so any process (or a program in
    /// another language) can compute it: the SHA-256 of `oncely-derive-v1`, then the scope, the
    /// key and the step, each preceded by its length in bytes as a 4-byte big-endian integer;
    /// its first 16 bytes, with the version (8) and variant bits of RFC 9562 set, written as a
    /// lower-case hyphenated UUID.
    ///
    /// ```
    /// use oncely_core::{Key, Scope};
    ///
    /// let (scope, order) = (Scope::new("orders")?, Key::new("order-42")?);
    /// let charge = order.derive(&scope, "charge");
    /// assert_eq!(charge, order.derive(&scope, "charge"), "the same on every attempt");
    /// assert_ne!(charge, order.derive(&scope, "email"));
    /// assert_ne!(charge, order.derive(&Scope::new("refunds")?, "charge"));
    /// assert_eq!(charge.as_str(), "61fe2fc6-c363-809f-978c-7f6be86354a4");
    /// # Ok::<(), oncely_core::KeyError>(())
    /// ```
    pub fn derive(&self, scope: &Scope, step: &str) -> Key {
        derive_uuid(b"oncely-derive-v1", &[scope.as_str(), self.as_str(), step])
    }
}

/// A UUID (version 8) from the SHA-256 of `tag`, then each part preceded by its length in bytes
/// as a 4-byte big-endian integer: [`Key::derive`]'s construction, under other tags for keys
/// oncely keeps for itself, so they never meet a derived key sent to another service.
pub(crate) fn derive_uuid(tag: &[u8], parts: &[&str]) -> Key {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(tag);
    for part in parts {
        hasher.update((part.len() as u32).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    );
    Key(uuid.into())
}

/// A namespace in front of a key: a consumer group, a tenant, an API principal.
///
/// The same key in two scopes is two operations. A scope is non-empty UTF-8 of at most
/// [`MAX_SCOPE_BYTES`] bytes; [`Scope::default`] is `"default"`.
///
/// ```
/// use oncely_core::Scope;
///
/// let billing = Scope::new("billing-consumer")?;
/// assert_ne!(billing, Scope::default());
/// # Ok::<(), oncely_core::KeyError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(Arc<str>);

impl Scope {
    /// Validates and wraps a scope.
    pub fn new(scope: impl Into<String>) -> Result<Self, KeyError> {
        let scope = scope.into();
        validate("scope", &scope, MAX_SCOPE_BYTES)?;
        Ok(Scope(scope.into()))
    }

    /// The scope as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The scope as a metric label, sharing its text rather than copying it.
    pub(crate) fn shared(&self) -> metrics::SharedString {
        metrics::SharedString::from(self.0.clone())
    }
}

impl Default for Scope {
    fn default() -> Self {
        Scope("default".into())
    }
}

fn validate(what: &'static str, value: &str, max: usize) -> Result<(), KeyError> {
    if value.is_empty() {
        return Err(KeyError::Empty { what });
    }
    if value.len() > max {
        return Err(KeyError::TooLong {
            what,
            len: value.len(),
            max,
        });
    }
    Ok(())
}

macro_rules! text_newtype_impls {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<&str> for $t {
            type Error = KeyError;
            fn try_from(value: &str) -> Result<Self, KeyError> {
                <$t>::new(value)
            }
        }
        impl TryFrom<String> for $t {
            type Error = KeyError;
            fn try_from(value: String) -> Result<Self, KeyError> {
                <$t>::new(value)
            }
        }
    };
}
text_newtype_impls!(Key);
text_newtype_impls!(Scope);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_length_is_counted_in_bytes_not_chars() {
        // 171 three-byte chars = 513 bytes: rejected even though it is 171 chars.
        let long = "€".repeat(171);
        assert!(matches!(
            Key::new(long),
            Err(KeyError::TooLong { len: 513, .. })
        ));
        assert!(Key::new("€".repeat(170)).is_ok());
        assert!(Key::new("k".repeat(MAX_KEY_BYTES)).is_ok());
    }

    #[test]
    fn empty_scope_is_rejected() {
        assert!(matches!(
            Scope::new(""),
            Err(KeyError::Empty { what: "scope" })
        ));
    }
}
