//! The driver's rows and errors as the store reports them.

use oncely_core::{Error, Record, RecordRow};
use sqlx::Row;
use sqlx::postgres::PgRow;

/// Decodes a whole-record row; the error is what was wrong with it.
pub(crate) fn record_from_row(row: &PgRow) -> std::result::Result<Record, String> {
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

/// A driver error as the store reports it; `store` names the store (its URL).
pub(crate) fn error(store: &str, e: sqlx::Error) -> Error {
    Error::driver(store, is_unavailable(&e), e.into())
}

/// Whether a driver error means PostgreSQL could not be reached or is going down or coming up,
/// rather than answering the statement with an error: an outage, for a later attempt, and no
/// fault of the message or request being handled.
///
/// That is: the connection failed, broke or answered nonsense (as one closed mid-handshake by a
/// proxy does), the pool had no connection in time, or the server
/// said so itself - SQLSTATE class 08 (connection exception) and 57P01 to 57P03 (shut down by an
/// administrator or a crash of another backend, "the database system is starting up"), which is
/// what the sessions of a restarting server get. A handler whose effect is in PostgreSQL maps
/// these to `HandlerError::unavailable` (see `examples/src/inventory.rs`).
///
/// ```
/// assert!(oncely_postgres::is_unavailable(&sqlx::Error::PoolTimedOut));
/// assert!(!oncely_postgres::is_unavailable(&sqlx::Error::RowNotFound));
/// ```
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        // Bytes that make no sense: a connection broken mid-answer, or closed during the
        // handshake by something in between.
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}
