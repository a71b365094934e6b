//! What the PostgreSQL test binaries share beyond the server and a fresh schema per test
//! (`oncely_conformance::servers`): telling a deadlock from other errors.

/// Whether `error` says PostgreSQL chose the transaction as a deadlock victim (SQLSTATE 40P01,
/// deadlock_detected) and rolled it back.
pub fn is_deadlock(error: &oncely_core::Error) -> bool {
    matches!(error, oncely_core::Error::Backend { source, .. }
        if source.downcast_ref::<sqlx::Error>()
            .and_then(sqlx::Error::as_database_error)
            .and_then(|e| e.code())
            .is_some_and(|code| code == "40P01"))
}
