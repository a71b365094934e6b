//! What oncely is measured against, per store: the naive pattern and the store's own limit.

pub mod memory;
pub mod sqlite;
