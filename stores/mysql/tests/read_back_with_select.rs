//! The conformance suite once more, reading claim batches back the way MySQL needs (insert, then
//! SELECT) although MariaDB takes `INSERT ... RETURNING`, so both paths run in CI on MariaDB.
//! The switch is process-wide: this is `conformance.rs` compiled as a binary of its own, which
//! tells itself apart by its crate name.

include!("conformance.rs");
