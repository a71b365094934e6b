//! Typed errors. Every failure says what happened and, where it can, what to do.

use crate::{Key, Scope};

/// A boxed error from a store's driver.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A key or scope that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Empty keys would make every keyless message a duplicate of the first.
    #[error("{what} is empty")]
    Empty {
        /// `key` or `scope`.
        what: &'static str,
    },
    /// Longer than the limit; never truncated, since two keys could then collide.
    #[error("{what} is {len} bytes, longer than the limit of {max}")]
    TooLong {
        /// `key` or `scope`.
        what: &'static str,
        /// The length seen.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Why a claim can no longer complete or release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    /// The lease ran out and another delivery took the key over (fencing).
    TakenOver,
    /// The record is gone: released, or purged after its lease ran out.
    Missing,
    /// The claim was already completed.
    AlreadyCompleted,
}

impl std::fmt::Display for LostReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LostReason::TakenOver => "its lease ran out and another holder took the key over",
            LostReason::Missing => {
                "the record is gone (released, or purged after its lease ran out)"
            }
            LostReason::AlreadyCompleted => "it was already completed",
        })
    }
}

/// Everything that can go wrong in oncely.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key or scope is not usable.
    #[error("invalid {0}")]
    InvalidKey(#[from] KeyError),

    /// A complete or release by a holder that no longer holds the claim.
    #[error("claim on {scope}/{key} is no longer held: {reason}")]
    ClaimLost {
        /// The scope.
        scope: Scope,
        /// The key.
        key: Key,
        /// Why.
        reason: LostReason,
    },

    /// A bounded store is full of live records. Nothing is evicted silently.
    #[error("store is full: {capacity} live records (raise the capacity or shorten retention)")]
    StoreFull {
        /// The configured capacity.
        capacity: usize,
    },

    /// The store could not be reached or opened.
    #[error("store unavailable at {store}: {source}")]
    Unavailable {
        /// Which store (its URL, credentials removed).
        store: String,
        /// The driver's error.
        #[source]
        source: BoxError,
    },

    /// The store answered with an error.
    #[error("store error at {store}: {source}")]
    Backend {
        /// Which store.
        store: String,
        /// The driver's error.
        #[source]
        source: BoxError,
    },

    /// A store URL that cannot be used.
    #[error("invalid store URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong, and what is accepted.
        reason: String,
    },

    /// A stored record that cannot be decoded (written by a newer version, or damaged).
    #[error("corrupt record in {store}: {detail}")]
    Corrupt {
        /// Which store.
        store: String,
        /// What was wrong.
        detail: String,
    },
}

/// `Result` with oncely's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A driver's error as a store reports it: [`Error::Unavailable`] when the store could not
    /// be reached (`unreachable`: I/O, pool, TLS), else [`Error::Backend`].
    pub fn driver(store: impl Into<String>, unreachable: bool, source: BoxError) -> Error {
        let store = store.into();
        if unreachable {
            Error::Unavailable { store, source }
        } else {
            Error::Backend { store, source }
        }
    }
}
