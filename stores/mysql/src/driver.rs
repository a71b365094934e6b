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

/// Whether a driver error means MySQL/MariaDB could not be reached or is going down, rather
/// than answering the statement with an error: an outage, for a later attempt, and no fault of
/// the message or request being handled.
///
/// That is: the connection failed, broke or answered nonsense (as one closed mid-handshake by a
/// proxy does), the pool had no connection in time, or the server
/// said so itself - 1053 (server shutdown in progress), 1927 (connection killed) or SQLSTATE
/// class 08 (connection exception). A handler whose effect is in MySQL maps these to
/// `HandlerError::unavailable`.
///
/// ```
/// assert!(oncely_mysql::is_unavailable(&sqlx::Error::PoolTimedOut));
/// assert!(!oncely_mysql::is_unavailable(&sqlx::Error::RowNotFound));
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
        sqlx::Error::Database(db) => {
            let number = db
                .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .map(|e| e.number());
            matches!(number, Some(1053 | 1927))
                || db.code().is_some_and(|code| code.starts_with("08"))
        }
        _ => false,
    }
}
