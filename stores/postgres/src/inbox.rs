//! The transactional inbox: a claim taken inside your own transaction.
//!
//! [`Inbox::claim`] writes the dedup record, already completed, in the transaction you pass.
//! Your business writes go in the same transaction, so both commit or both roll back: there is
//! no window in which the effect is durable and the record is not, or the other way round.
//!
//! A concurrent delivery of the same key blocks on the key's unique index until the first
//! transaction ends, then answers [`InboxClaim::Duplicate`] if it committed, or claims the key
//! itself if it rolled back. The business code never runs twice.
//!
//! **Isolation.** Use READ COMMITTED (PostgreSQL's default). After waiting on the key, the
//! inbox reads the row the other transaction committed, which READ COMMITTED allows. Under
//! REPEATABLE READ or SERIALIZABLE, PostgreSQL instead fails the waiting transaction with a
//! serialization error (SQLSTATE 40001); the inbox reports it as [`Error::Backend`] and nothing
//! is lost, but you must retry the whole transaction.
//!
//! ```no_run
//! # async fn handle(pool: sqlx::PgPool, event_id: &str) -> Result<(), Box<dyn std::error::Error>> {
//! use oncely_core::{Key, Scope};
//! use oncely_postgres::inbox::{Inbox, InboxClaim};
//!
//! let inbox = Inbox::new(Scope::new("orders-consumer")?);
//! let mut tx = pool.begin().await?;
//! if let InboxClaim::New = inbox.claim(&mut tx, &Key::new(event_id)?, None).await? {
//!     sqlx::query("UPDATE stock SET qty = qty - 1 WHERE item = 'apple'").execute(&mut *tx).await?;
//! }
//! tx.commit().await?; // the dedup record and the stock change, together
//! # Ok(()) }
//! ```

use std::time::Duration;

use oncely_core::lifecycle::decide_claim;
use oncely_core::{
    ClaimOutcome, ClaimRequest, Clock, DEFAULT_RETENTION, Error, Fingerprint, Key, Record, Result,
    Scope, SystemClock, Timestamp,
};
use sqlx::PgConnection;

use crate::{LOCK_ONE, record_from_row};

/// What [`Inbox::claim`] answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InboxClaim {
    /// First delivery: the record is written in your transaction. Do the work, then commit.
    New,
    /// Already done by a committed transaction: skip the work.
    Duplicate(Record),
    /// Held by a claim made outside a transaction (through the store) whose lease is live.
    InProgress {
        /// Time left on that lease.
        retry_after: Duration,
    },
    /// The key is known with another fingerprint.
    Conflict {
        /// The stored fingerprint.
        stored: Option<Fingerprint>,
    },
}

/// Claims keys inside callers' transactions. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Inbox {
    scope: Scope,
    retention: Duration,
    clock: std::sync::Arc<dyn Clock>,
}

impl Inbox {
    /// An inbox for `scope`, keeping records for [`DEFAULT_RETENTION`] by the system clock.
    pub fn new(scope: Scope) -> Self {
        Inbox {
            scope,
            retention: DEFAULT_RETENTION,
            clock: std::sync::Arc::new(SystemClock),
        }
    }

    /// How long a record is kept.
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// The clock retention is measured by.
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = std::sync::Arc::new(clock);
        self
    }

    /// Claims `key` in the transaction `conn` belongs to (pass `&mut tx`). See the module docs.
    pub async fn claim(
        &self,
        conn: &mut PgConnection,
        key: &Key,
        fingerprint: Option<Fingerprint>,
    ) -> Result<InboxClaim> {
        let now = self.clock.now();
        let request =
            ClaimRequest::new(self.scope.clone(), key.clone(), fingerprint, Duration::ZERO);
        let expires_at = now.saturating_add(self.retention);
        // A row seen as taken may vanish (purged, released) before it is locked: try again.
        for _ in 0..16 {
            if write_completed(conn, INSERT_COMPLETED, &request, now, expires_at).await? == 1 {
                return Ok(InboxClaim::New);
            }
            let row = sqlx::query(LOCK_ONE)
                .bind(self.scope.as_str().as_bytes())
                .bind(key.as_str().as_bytes())
                .fetch_optional(&mut *conn)
                .await
                .map_err(backend)?;
            let Some(row) = row else { continue };
            let existing = record_from_row(&row).map_err(|detail| Error::Corrupt {
                store: "postgres".into(),
                detail,
            })?;
            return Ok(match decide_claim(Some(&existing), &request, now).outcome {
                ClaimOutcome::New(_) => {
                    // Expired: the key is ours again, completed with this transaction.
                    write_completed(conn, TAKE_OVER_COMPLETED, &request, now, expires_at).await?;
                    InboxClaim::New
                }
                ClaimOutcome::Duplicate(record) => InboxClaim::Duplicate(record),
                ClaimOutcome::InProgress { retry_after } => InboxClaim::InProgress { retry_after },
                ClaimOutcome::Conflict { stored } => InboxClaim::Conflict { stored },
            });
        }
        Err(Error::Backend {
            store: "postgres".into(),
            source: "the key kept vanishing between insert and lock".into(),
        })
    }

    /// Stores `outcome` with a key claimed as [`InboxClaim::New`] in the same transaction, to be
    /// replayed to duplicates.
    pub async fn record_outcome(
        &self,
        conn: &mut PgConnection,
        key: &Key,
        outcome: &[u8],
    ) -> Result<()> {
        sqlx::query("UPDATE oncely_records SET outcome = $3 WHERE scope = $1 AND key = $2")
            .bind(self.scope.as_str().as_bytes())
            .bind(key.as_str().as_bytes())
            .bind(outcome)
            .execute(conn)
            .await
            .map_err(backend)?;
        Ok(())
    }
}

// Both take the claimant's columns as $1..$6 and write the record as completed in the caller's
// transaction: a first insert, or a takeover of an expired record.
const INSERT_COMPLETED: &str = "INSERT INTO oncely_records \
     (scope, key, completed, token, attempt, fingerprint, created_at, expires_at, outcome) \
     VALUES ($1, $2, true, $3, 1, $4, $5, $6, ''::bytea) ON CONFLICT (scope, key) DO NOTHING";
const TAKE_OVER_COMPLETED: &str = "UPDATE oncely_records SET completed = true, token = $3, \
     attempt = attempt + 1, fingerprint = $4, created_at = $5, expires_at = $6, outcome = ''::bytea \
     WHERE scope = $1 AND key = $2";

/// Runs INSERT_COMPLETED or TAKE_OVER_COMPLETED; answers how many rows it wrote.
async fn write_completed(
    conn: &mut PgConnection,
    statement: &'static str,
    req: &ClaimRequest,
    now: Timestamp,
    expires_at: Timestamp,
) -> Result<u64> {
    let done = sqlx::query(statement)
        .bind(req.scope.as_str().as_bytes())
        .bind(req.key.as_str().as_bytes())
        .bind(req.token as i64)
        .bind(req.fingerprint.map(|f| f.as_bytes().to_vec()))
        .bind(now.as_millis())
        .bind(expires_at.as_millis())
        .execute(conn)
        .await
        .map_err(backend)?;
    Ok(done.rows_affected())
}

fn backend(e: sqlx::Error) -> Error {
    Error::Backend {
        store: "postgres (your transaction)".into(),
        source: e.into(),
    }
}
