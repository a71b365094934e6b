//! Typed errors. Every failure says what happened and, where it can, what to do.

use crate::{Key, Scope};

/// A boxed error from a store's driver.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The work may have had its effect, and there is no telling: return it from the handler of
/// [`Oncely::run`](crate::Oncely::run) so that the claim is **not** released.
///
/// An ordinary error from the handler releases the key, so the next delivery runs the work
/// again: right when the handler knows its effect did not happen. When the work is a call to
/// another process (a POST that timed out, a connection lost after the request was sent), it
/// may have happened, or may still be happening. Then return `OutcomeUnknown` (the error
/// itself, or boxed as a [`BoxError`]): the key stays held, as `InProgress`, until its lease
/// ends, and only then may a redelivery take it over and run the work again.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use oncely_core::{Key, Oncely, OutcomeUnknown, RunError, Scope};
/// let oncely = Oncely::new(std::sync::Arc::new(oncely_memory::MemoryStore::default()));
/// let (scope, key) = (Scope::default(), Key::new("charge-order-7")?);
///
/// // The payment provider did not answer in time: the charge may have gone through.
/// let charge = || async { Err::<Vec<u8>, _>(OutcomeUnknown::new("no answer within 10s")) };
/// let first = oncely.run(&scope, &key, None, charge).await;
/// assert!(matches!(first, Err(RunError::Handler(ref e)) if e.to_string().starts_with("no answer")));
///
/// // The key is still held: a retry does not charge again before the lease ends.
/// let again = || async { Ok::<_, OutcomeUnknown>(b"charged".to_vec()) };
/// let retry = oncely.run(&scope, &key, None, again).await;
/// assert!(matches!(retry, Err(RunError::InProgress { .. })));
/// # Ok(()) }
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{cause}; outcome unknown, so the key stays held until its lease ends")]
pub struct OutcomeUnknown {
    cause: BoxError,
}

impl OutcomeUnknown {
    /// The outcome of the work is unknown because of `cause` (a message or an error).
    pub fn new(cause: impl Into<BoxError>) -> Self {
        OutcomeUnknown {
            cause: cause.into(),
        }
    }

    /// What made the outcome unknown.
    pub fn cause(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.cause
    }

    /// Whether `error` is an `OutcomeUnknown`: the value itself, or one boxed as a
    /// [`BoxError`] (or a `Box<dyn Error>`, with or without `Send`). An error that merely
    /// wraps one, or an `anyhow::Error`, does not count.
    pub fn is_in<E: std::any::Any>(error: &E) -> bool {
        use std::error::Error as StdError;
        let any: &dyn std::any::Any = error;
        if any.is::<OutcomeUnknown>() {
            return true;
        }
        if let Some(boxed) = any.downcast_ref::<BoxError>() {
            return boxed.is::<OutcomeUnknown>();
        }
        if let Some(boxed) = any.downcast_ref::<Box<dyn StdError + Send + 'static>>() {
            return boxed.is::<OutcomeUnknown>();
        }
        if let Some(boxed) = any.downcast_ref::<Box<dyn StdError + 'static>>() {
            return boxed.is::<OutcomeUnknown>();
        }
        false
    }
}

/// A key or scope that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
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
#[non_exhaustive]
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
#[non_exhaustive]
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
