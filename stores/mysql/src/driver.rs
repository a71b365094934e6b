//! The driver's rows and errors as the store reports them.

use oncely_core::{Record, RecordRow};
use sqlx::Row;
use sqlx::mysql::{MySqlDatabaseError, MySqlRow};

/// Whether `e` is the MySQL error `number`.
pub(crate) fn is(e: &sqlx::Error, number: u16) -> bool {
    e.as_database_error()
        .and_then(|d| d.try_downcast_ref::<MySqlDatabaseError>())
        .is_some_and(|d| d.number() == number)
}

/// Decodes a whole-record row; the error is what was wrong with it.
pub(crate) fn record_from_row(row: &MySqlRow) -> std::result::Result<Record, String> {
    let get = |e: sqlx::Error| e.to_string();
    RecordRow {
        scope: row.try_get("scope").map_err(get)?,
        key: row.try_get("key").map_err(get)?,
        completed: row.try_get("completed").map_err(get)?,
        token: row.try_get("token").map_err(get)?,
        attempt: row.try_get("attempt").map_err(get)?,
        fingerprint: row.try_get("fingerprint").map_err(get)?,
        created_at: row.try_get("created_at").map_err(get)?,
        expires_at: row.try_get("expires_at").map_err(get)?,
        outcome: row.try_get("outcome").map_err(get)?,
    }
    .into_record()
}

/// Whether `e` says the server could not be reached, rather than answering with an error.
pub(crate) fn unreachable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
    )
}
