//! # oncely-memory
//!
//! An in-memory [`Store`]: for tests, and for single-process services that accept losing their
//! dedup history on restart. Nothing here survives the process; use `oncely-sqlite` for that.
//!
//! The store is bounded: at most `capacity` records. When it is full, expired records are swept
//! first; if every record is still live, the claim fails with [`Error::StoreFull`] rather than
//! evicting a live record, which would silently let a duplicate through.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> oncely_core::Result<()> {
//! use std::sync::Arc;
//! use oncely_core::{ClaimOutcome, Key, Oncely, Scope};
//! use oncely_memory::MemoryStore;
//!
//! let oncely = Oncely::new(Arc::new(MemoryStore::with_capacity(100_000)));
//! let key = Key::new("evt-1")?;
//! let claim = oncely.claim(&Scope::default(), &key, None).await?.into_new().unwrap();
//! oncely.complete(&claim, b"ok").await?;
//! assert!(matches!(oncely.claim(&Scope::default(), &key, None).await?, ClaimOutcome::Duplicate(_)));
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

// What the crate docs link to.
#[cfg(doc)]
use oncely_core::{Error, Store};

mod store;

pub use store::{DEFAULT_CAPACITY, MemoryStore};
