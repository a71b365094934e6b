//! A claim batch's transaction: the statements are MySQL's, the orchestration is
//! [`oncely_core::batch`]'s. The store's own transaction for `claim_many`, the caller's for the
//! inbox.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

use oncely_core::batch::{ClaimTransaction, Taken};
use oncely_core::{Error, Key, Record, Result, Scope, async_trait};
use sqlx::AssertSqlSafe;
use sqlx::mysql::{MySqlConnection, MySqlRow};

use crate::driver::{is, record_from_row};
use crate::sql::{COLUMNS, bind_claim, groups, padded, rows_of};

/// ER_PARSE_ERROR: MySQL's answer to MariaDB's `INSERT ... RETURNING`.
const PARSE_ERROR: u16 = 1064;
/// Whether the server takes `INSERT ... RETURNING` (MariaDB 10.5+), which reads a batch's rows
/// back in the statement that writes them: a batch of 1,000 keys took ~30 % less time than
/// insert-then-SELECT here (BENCHMARKS.md). MySQL rejects it as a syntax error, which a
/// statement inside a transaction survives; this process then reads rows back with a SELECT.
static RETURNING: AtomicBool = AtomicBool::new(true);

/// Reads batches back with a SELECT from now on, as on MySQL, even where the server takes
/// `INSERT ... RETURNING`. For tests of that path on MariaDB; affects the whole process.
#[doc(hidden)]
pub fn read_back_with_select() {
    RETURNING.store(false, Ordering::Relaxed);
}

/// Whether batches are still read back with `INSERT ... RETURNING` (no server has refused it,
/// and [`read_back_with_select`] was not called).
#[doc(hidden)]
pub fn reads_back_with_returning() -> bool {
    RETURNING.load(Ordering::Relaxed)
}

/// Inserts `records` unless their keys exist, locking the rows of those that do; then reads
/// every row back, locked. Answers the rows found (a row carrying its record's token is one this
/// statement inserted). Shared by the batch claim and the inbox.
pub(crate) async fn insert_or_lock(
    conn: &mut MySqlConnection,
    records: &[&Record],
) -> Result<Vec<MySqlRow>, sqlx::Error> {
    // Changing nothing on a duplicate still takes the row's exclusive lock, so the row cannot
    // change before it is read back. A repeated record is such a duplicate.
    let records = padded(records);
    let insert = format!(
        "INSERT INTO oncely_records ({COLUMNS}) VALUES {} ON DUPLICATE KEY UPDATE token = token",
        groups("(?, ?, ?, ?, ?, ?, ?, ?, ?)", records.len())
    );
    if RETURNING.load(Ordering::Relaxed) {
        // MariaDB answers every row, inserted or found, as it stands after the statement.
        let mut query = sqlx::query(AssertSqlSafe(format!("{insert} RETURNING {COLUMNS}")));
        for r in &records {
            query = bind_claim(query, r);
        }
        match query.fetch_all(&mut *conn).await {
            Err(e) if is(&e, PARSE_ERROR) => RETURNING.store(false, Ordering::Relaxed),
            answered => return answered,
        }
    }
    let mut query = sqlx::query(AssertSqlSafe(insert));
    for r in &records {
        query = bind_claim(query, r);
    }
    query.execute(&mut *conn).await?;
    let mut ids: Vec<(&[u8], &[u8])> = records
        .iter()
        .map(|r| (r.scope.as_str().as_bytes(), r.key.as_str().as_bytes()))
        .collect();
    ids.sort_unstable();
    let (condition, values) = rows_of(&ids);
    let select = format!("SELECT {COLUMNS} FROM oncely_records WHERE {condition} FOR UPDATE");
    let mut query = sqlx::query(AssertSqlSafe(select));
    for value in values {
        query = query.bind(value);
    }
    query.fetch_all(conn).await
}

/// A claim batch's transaction; the statements are MySQL's, the orchestration the core's.
/// The store's own transaction for `claim_many`, the caller's for the inbox.
pub(crate) struct ClaimTx<'a> {
    pub(crate) conn: &'a mut MySqlConnection,
    /// Names the store in errors.
    pub(crate) store: &'a str,
    /// The driver error that ended the batch, kept so a deadlock can be told apart and retried.
    pub(crate) failed: Option<sqlx::Error>,
}

impl ClaimTx<'_> {
    fn fail(&mut self, e: sqlx::Error) -> Error {
        let reported = Error::Backend {
            store: self.store.to_owned(),
            source: e.to_string().into(),
        };
        self.failed = Some(e);
        reported
    }
}

#[async_trait]
impl ClaimTransaction for ClaimTx<'_> {
    async fn take(&mut self, fresh: &[Record]) -> Result<Taken> {
        let records: Vec<&Record> = fresh.iter().collect();
        let rows = match insert_or_lock(&mut *self.conn, &records).await {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail(e)),
        };
        let tokens: HashSet<(&Scope, &Key, u64)> =
            fresh.iter().map(|r| (&r.scope, &r.key, r.token)).collect();
        let mut taken = Taken::default();
        for row in &rows {
            let record = record_from_row(row).map_err(|detail| Error::Corrupt {
                store: self.store.to_owned(),
                detail,
            })?;
            let id = (record.scope.clone(), record.key.clone());
            // A row carrying this batch's token for its key is one the batch inserted.
            if tokens.contains(&(&record.scope, &record.key, record.token)) {
                taken.inserted.insert(id);
            } else {
                taken.locked.insert(id, record);
            }
        }
        Ok(taken)
    }

    async fn rewrite(&mut self, records: &[Record]) -> Result<()> {
        // Every row is locked by this transaction: replacing it in place is one statement.
        let records: Vec<&Record> = records.iter().collect();
        let records = padded(&records);
        let statement = format!(
            "INSERT INTO oncely_records ({COLUMNS}) VALUES {} ON DUPLICATE KEY UPDATE \
             completed = VALUES(completed), token = VALUES(token), attempt = VALUES(attempt), \
             fingerprint = VALUES(fingerprint), created_at = VALUES(created_at), \
             expires_at = VALUES(expires_at), outcome = VALUES(outcome)",
            groups("(?, ?, ?, ?, ?, ?, ?, ?, ?)", records.len())
        );
        let mut query = sqlx::query(AssertSqlSafe(statement));
        for r in records {
            query = bind_claim(query, r);
        }
        match query.execute(&mut *self.conn).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.fail(e)),
        }
    }
}
