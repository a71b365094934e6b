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
