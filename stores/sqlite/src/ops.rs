//! The SQL of each job, run inside the writer's transaction.
//!
//! A key lives in at most one of two tables: `oncely_claims` while in progress, `oncely_records`
//! once completed (see `migrations/0001_records.sql` for why). Decisions use the shared rules in
//! `oncely_core::lifecycle`; the SQL only moves rows.

use std::collections::HashMap;

use oncely_core::lifecycle::{claim_lost, decide_claim, decide_version};
use oncely_core::{
    Claim, ClaimOutcome, ClaimRequest, Error, Fingerprint, Key, Record, RecordState, Result, Scope,
    StoreStats, Timestamp, VersionCheck,
};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{OptionalExtension, ToSql, Transaction, params};

use crate::job::{Answer, Job};

// Records name their scope by its id in oncely_scopes (?1 below), resolved by `ScopeIds`.
pub(crate) const SELECT_SCOPE_ID: &str = "SELECT id FROM oncely_scopes WHERE name = ?1";
/// Names scope ?1 in `oncely_scopes` if it is not there yet. It also takes the write lock, as
/// any INSERT does.
pub(crate) const NAME_SCOPE: &str =
    "INSERT INTO oncely_scopes (name) VALUES (?1) ON CONFLICT DO NOTHING";
pub(crate) const SELECT_CLAIM: &str = "SELECT token, attempt, fingerprint, created_at, expires_at \
     FROM oncely_claims WHERE scope_id = ?1 AND key = ?2";
pub(crate) const SELECT_DONE: &str = "SELECT token, attempt, fingerprint, expires_at - lifetime, \
     expires_at, outcome FROM oncely_records WHERE scope_id = ?1 AND key = ?2";
const UPSERT_CLAIM: &str = "INSERT OR REPLACE INTO oncely_claims \
     (scope_id, key, token, attempt, fingerprint, created_at, expires_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
// The common case in one statement: a key neither in flight nor done is claimed outright.
const CLAIM_FRESH: &str = "INSERT INTO oncely_claims \
     (scope_id, key, token, attempt, fingerprint, created_at, expires_at) \
     SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 \
     WHERE NOT EXISTS (SELECT 1 FROM oncely_records WHERE scope_id = ?1 AND key = ?2) \
     ON CONFLICT DO NOTHING";
const DELETE_DONE: &str = "DELETE FROM oncely_records WHERE scope_id = ?1 AND key = ?2";
// Completion removes the holder's row from oncely_claims, only if the token still matches; the
// completed record is then written from the claim itself (no RETURNING, which SQLite buffers).
const TAKE_CLAIM: &str =
    "DELETE FROM oncely_claims WHERE scope_id = ?1 AND key = ?2 AND token = ?3";
// ?6 is created_at, kept as the lifetime before ?7 (see migrations/0005_scope_ids.sql).
const INSERT_DONE: &str = "INSERT OR REPLACE INTO oncely_records \
     (scope_id, key, token, attempt, fingerprint, lifetime, expires_at, outcome) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?7 - ?6, ?7, ?8)";
const FORGET_DONE: &str =
    "DELETE FROM oncely_records WHERE scope_id = ?1 AND key = ?2 AND token = ?3";
const RELEASE: &str = "DELETE FROM oncely_claims WHERE scope_id = ?1 AND key = ?2 AND token = ?3";
// Only oncely_claims holds in-progress records, so the token alone fences a renewal.
const EXTEND: &str =
    "UPDATE oncely_claims SET expires_at = ?4 WHERE scope_id = ?1 AND key = ?2 AND token = ?3";
const PURGE_CLAIMS: &str = "DELETE FROM oncely_claims WHERE (scope_id, key) IN \
     (SELECT scope_id, key FROM oncely_claims WHERE expires_at < ?1 LIMIT ?2)";
const PURGE_DONE: &str = "DELETE FROM oncely_records WHERE (scope_id, key) IN \
     (SELECT scope_id, key FROM oncely_records WHERE expires_at < ?1 ORDER BY expires_at LIMIT ?2)";
const COUNT_CLAIMS: &str = "SELECT count(*), coalesce(sum(expires_at >= ?1), 0) FROM oncely_claims";
const COUNT_DONE: &str = "SELECT count(*), coalesce(sum(expires_at >= ?1), 0) FROM oncely_records";
/// The version guard's statements, the store's and the inbox's: (scope, entity[, version]).
pub(crate) const SELECT_VERSION: &str =
    "SELECT version FROM oncely_versions WHERE scope = ?1 AND entity = ?2";
pub(crate) const UPSERT_VERSION: &str = "INSERT INTO oncely_versions (scope, entity, version) VALUES (?1, ?2, ?3) \
     ON CONFLICT (scope, entity) DO UPDATE SET version = excluded.version";

/// A failed statement on the store at `url`: `Error::Unavailable` when the file cannot be
/// written or reached for now (a full disk, an I/O error, a lock held past the busy timeout),
/// which passes without the caller doing anything different; `Error::Backend` otherwise.
pub(crate) fn backend(url: &str, e: rusqlite::Error) -> Error {
    let outage = matches!(
        e.sqlite_error_code(),
        Some(
            rusqlite::ErrorCode::DiskFull
                | rusqlite::ErrorCode::SystemIoFailure
                | rusqlite::ErrorCode::CannotOpen
                | rusqlite::ErrorCode::DatabaseBusy
                | rusqlite::ErrorCode::DatabaseLocked
        )
    );
    Error::driver(url, outage, e.into())
}

/// Which table a record was read from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    /// `oncely_claims`: in progress.
    Claims,
    /// `oncely_records`: completed.
    Records,
}

/// The ids of scopes in `oncely_scopes`, as this writer has seen them. A scope's id never changes
/// once committed (no row of it is ever deleted), so it is read once; one named by the current
/// transaction is only kept if that transaction commits, as another process could give its id
/// to another scope after a rollback.
#[derive(Default)]
pub(crate) struct ScopeIds {
    committed: HashMap<Scope, i64>,
    /// Named by the current transaction.
    pending: Vec<(Scope, i64)>,
}

impl ScopeIds {
    /// The id of `scope`, or `None` while no record of it was ever written.
    pub(crate) fn find(
        &mut self,
        tx: &Transaction<'_>,
        scope: &Scope,
        url: &str,
    ) -> Result<Option<i64>> {
        if let Some(id) = self.committed.get(scope) {
            return Ok(Some(*id));
        }
        if let Some((_, id)) = self.pending.iter().find(|(named, _)| named == scope) {
            return Ok(Some(*id));
        }
        let id = tx
            .prepare_cached(SELECT_SCOPE_ID)
            .and_then(|mut s| s.query_row([scope.as_str()], |r| r.get(0)).optional())
            .map_err(|e| backend(url, e))?;
        // Not named by this transaction (it would be pending), so committed by another.
        if let Some(id) = id {
            self.committed.insert(scope.clone(), id);
        }
        Ok(id)
    }

    /// The id of `scope`, named by this transaction if it has none yet.
    fn name(&mut self, tx: &Transaction<'_>, scope: &Scope, url: &str) -> Result<i64> {
        if let Some(id) = self.find(tx, scope, url)? {
            return Ok(id);
        }
        let named = tx
            .prepare_cached(NAME_SCOPE)
            .and_then(|mut s| s.execute([scope.as_str()]))
            .map_err(|e| backend(url, e))?;
        // Under the write lock nobody else can name it after `find`; should the insert have done
        // nothing all the same, the id is read rather than taken from an earlier insert.
        let id = if named == 1 {
            tx.last_insert_rowid()
        } else {
            tx.prepare_cached(SELECT_SCOPE_ID)
                .and_then(|mut s| s.query_row([scope.as_str()], |r| r.get(0)))
                .map_err(|e| backend(url, e))?
        };
        self.pending.push((scope.clone(), id));
        Ok(id)
    }

    /// The current transaction ended: committed, or rolled back.
    pub(crate) fn ended(&mut self, committed: bool) {
        let pending = std::mem::take(&mut self.pending);
        if committed {
            self.committed.extend(pending);
        }
    }
}

pub(crate) fn apply(
    tx: &Transaction<'_>,
    ids: &mut ScopeIds,
    job: &Job,
    url: &str,
) -> Result<Answer> {
    let sql = |e: rusqlite::Error| backend(url, e);
    Ok(match job {
        Job::Claim { requests, now, .. } => Answer::Claims(
            requests
                .iter()
                .map(|req| claim_one(tx, ids, req, *now, url))
                .collect::<Result<_>>()?,
        ),
        Job::Complete {
            claim,
            outcome,
            expires_at,
            ..
        } => Answer::Done(complete(tx, ids, claim, outcome, *expires_at, url)?),
        Job::CompleteMany { items, .. } => Answer::Completions(
            items
                .iter()
                .map(|item| complete(tx, ids, &item.claim, &item.outcome, item.expires_at, url))
                .collect::<Result<_>>()?,
        ),
        Job::Release { claim, .. } => {
            let changed = guarded(tx, ids, RELEASE, claim, None, url)?;
            Answer::Done(held(tx, ids, claim, changed, url)?)
        }
        Job::Extend {
            claim, lease_until, ..
        } => {
            let changed = guarded(tx, ids, EXTEND, claim, Some(lease_until.as_millis()), url)?;
            Answer::Done(held(tx, ids, claim, changed, url)?)
        }
        Job::Forget {
            scope, key, token, ..
        } => {
            // The record is in one table or the other: in progress, or completed.
            let mut removed = 0;
            if let Some(id) = ids.find(tx, scope, url)? {
                for statement in [RELEASE, FORGET_DONE] {
                    removed += tx
                        .prepare_cached(statement)
                        .and_then(|mut s| s.execute(params![id, StoredKey::of(key), *token as i64]))
                        .map_err(sql)?;
                }
            }
            Answer::Forgotten(removed == 1)
        }
        Job::Get { scope, key, .. } => {
            Answer::Record(select(tx, ids, scope, key, url)?.map(|(record, _)| record))
        }
        Job::Purge {
            expired_before,
            limit,
            ..
        } => {
            let mut purged = 0;
            for statement in [PURGE_CLAIMS, PURGE_DONE] {
                let left = i64::try_from(limit - purged).unwrap_or(i64::MAX);
                purged += tx
                    .prepare_cached(statement)
                    .and_then(|mut s| s.execute(params![expired_before.as_millis(), left]))
                    .map_err(sql)?;
            }
            Answer::Count(purged)
        }
        Job::Stats { now, .. } => {
            let count = |statement: &str| {
                tx.query_row(statement, [now.as_millis()], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
                })
                .map_err(sql)
            };
            let (claims, live_claims) = count(COUNT_CLAIMS)?;
            let (done, live_done) = count(COUNT_DONE)?;
            let pages: i64 = tx
                .query_row("PRAGMA page_count", [], |r| r.get(0))
                .map_err(sql)?;
            let page_size: i64 = tx
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .map_err(sql)?;
            Answer::Stats(StoreStats {
                records: claims + done,
                in_progress: live_claims,
                completed: live_done,
                expired: (claims - live_claims) + (done - live_done),
                bytes: Some((pages * page_size) as u64),
            })
        }
        Job::Version {
            scope,
            entity,
            version,
            ..
        } => {
            let stored: Option<i64> = tx
                .prepare_cached(SELECT_VERSION)
                .and_then(|mut s| {
                    s.query_row(params![scope.as_str(), entity.as_str()], |r| r.get(0))
                        .optional()
                })
                .map_err(sql)?;
            let check = decide_version(stored.map(|v| v as u64), *version);
            if let VersionCheck::Applied { .. } = check {
                tx.prepare_cached(UPSERT_VERSION)
                    .and_then(|mut s| {
                        s.execute(params![scope.as_str(), entity.as_str(), *version as i64])
                    })
                    .map_err(sql)?;
            }
            Answer::Version(check)
        }
    })
}

fn claim_one(
    tx: &Transaction<'_>,
    ids: &mut ScopeIds,
    req: &ClaimRequest,
    now: Timestamp,
    url: &str,
) -> Result<ClaimOutcome> {
    let scope_id = ids.name(tx, &req.scope, url)?;
    let fresh = decide_claim(None, req, now);
    let record = fresh
        .write
        .as_ref()
        .expect("an absent key is always claimed");
    if write_claim(tx, CLAIM_FRESH, scope_id, record).map_err(|e| backend(url, e))? == 1 {
        return Ok(fresh.outcome);
    }
    // The key is known: decide against what is stored, by the rules every store shares.
    let existing = select_in(tx, scope_id, &req.scope, &req.key, url)?;
    let decision = decide_claim(existing.as_ref().map(|(record, _)| record), req, now);
    if let Some(record) = &decision.write {
        // A claim over an expired completed record supersedes it: the key moves back to claims.
        if let Some((_, Table::Records)) = existing {
            tx.prepare_cached(DELETE_DONE)
                .and_then(|mut s| s.execute(params![scope_id, StoredKey::of(&req.key)]))
                .map_err(|e| backend(url, e))?;
        }
        write_claim(tx, UPSERT_CLAIM, scope_id, record).map_err(|e| backend(url, e))?;
    }
    Ok(decision.outcome)
}

/// Runs CLAIM_FRESH or UPSERT_CLAIM, which take an in-progress record's columns as ?1..?7.
fn write_claim(
    tx: &Transaction<'_>,
    statement: &str,
    scope_id: i64,
    r: &Record,
) -> rusqlite::Result<usize> {
    tx.prepare_cached(statement)?.execute(params![
        scope_id,
        StoredKey::of(&r.key),
        r.token as i64,
        r.attempt,
        r.fingerprint.as_ref().map(|f| f.as_bytes().as_slice()),
        r.created_at.as_millis(),
        r.expires_at.as_millis(),
    ])
}

/// Runs RELEASE or EXTEND (whose ?4 is `lease_until`) for `claim`: how many rows it changed.
fn guarded(
    tx: &Transaction<'_>,
    ids: &mut ScopeIds,
    statement: &str,
    claim: &Claim,
    lease_until: Option<i64>,
    url: &str,
) -> Result<usize> {
    let Some(scope_id) = ids.find(tx, &claim.scope, url)? else {
        return Ok(0);
    };
    let key = StoredKey::of(&claim.key);
    let token = claim.token as i64;
    tx.prepare_cached(statement)
        .and_then(|mut s| match lease_until {
            Some(until) => s.execute(params![scope_id, key, token, until]),
            None => s.execute(params![scope_id, key, token]),
        })
        .map_err(|e| backend(url, e))
}

fn complete(
    tx: &Transaction<'_>,
    ids: &mut ScopeIds,
    claim: &Claim,
    outcome: &[u8],
    expires_at: Timestamp,
    url: &str,
) -> Result<Result<()>> {
    let sql = |e: rusqlite::Error| backend(url, e);
    let Some(scope_id) = ids.find(tx, &claim.scope, url)? else {
        return Ok(Err(lost(tx, ids, claim, url)?));
    };
    let key = StoredKey::of(&claim.key);
    let taken = tx
        .prepare_cached(TAKE_CLAIM)
        .and_then(|mut s| s.execute(params![scope_id, key, claim.token as i64]))
        .map_err(sql)?;
    if taken != 1 {
        return Ok(Err(lost(tx, ids, claim, url)?));
    }
    tx.prepare_cached(INSERT_DONE)
        .and_then(|mut s| {
            s.execute(params![
                scope_id,
                key,
                claim.token as i64,
                claim.attempt,
                claim.fingerprint.as_ref().map(|f| f.as_bytes().as_slice()),
                claim.claimed_at.as_millis(),
                expires_at.as_millis(),
                outcome,
            ])
        })
        .map_err(sql)?;
    Ok(Ok(()))
}

/// The record of (scope, key), from whichever table holds it.
fn select(
    tx: &Transaction<'_>,
    ids: &mut ScopeIds,
    scope: &Scope,
    key: &Key,
    url: &str,
) -> Result<Option<(Record, Table)>> {
    match ids.find(tx, scope, url)? {
        Some(scope_id) => select_in(tx, scope_id, scope, key, url),
        None => Ok(None),
    }
}

/// [`select`], for a scope whose id is known.
fn select_in(
    tx: &Transaction<'_>,
    scope_id: i64,
    scope: &Scope,
    key: &Key,
    url: &str,
) -> Result<Option<(Record, Table)>> {
    let read = |statement: &str, table: Table| -> Result<Option<StoredRow>> {
        tx.prepare_cached(statement)
            .and_then(|mut s| {
                s.query_row(params![scope_id, StoredKey::of(key)], |r| {
                    let outcome = match table {
                        Table::Records => r.get(5)?,
                        Table::Claims => None,
                    };
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        outcome,
                    ))
                })
                .optional()
            })
            .map_err(|e| backend(url, e))
    };
    let (table, row) = match read(SELECT_CLAIM, Table::Claims)? {
        Some(row) => (Table::Claims, row),
        None => match read(SELECT_DONE, Table::Records)? {
            Some(row) => (Table::Records, row),
            None => return Ok(None),
        },
    };
    Ok(Some((decode(scope, key, table, row, url)?, table)))
}

/// A stored row's columns, as both tables hold them: token, attempt, fingerprint, created_at,
/// expires_at, and the outcome (records only).
pub(crate) type StoredRow = (i64, u32, Option<Vec<u8>>, i64, i64, Option<Vec<u8>>);

/// The record of (scope, key) from its stored columns, read from `table`. Shared by the store
/// and the inbox, so both read one representation.
pub(crate) fn decode(
    scope: &Scope,
    key: &Key,
    table: Table,
    row: StoredRow,
    store: &str,
) -> Result<Record> {
    let (token, attempt, fingerprint, created_at, expires_at, outcome) = row;
    let fingerprint = match fingerprint {
        None => None,
        Some(bytes) => Some(
            Fingerprint::from_slice(&bytes).ok_or_else(|| Error::Corrupt {
                store: store.to_owned(),
                detail: format!(
                    "fingerprint of {scope}/{key} is {} bytes, expected 32",
                    bytes.len()
                ),
            })?,
        ),
    };
    let state = match table {
        Table::Claims => RecordState::InProgress,
        Table::Records => RecordState::Completed {
            outcome: outcome.unwrap_or_default(),
        },
    };
    Ok(Record {
        scope: scope.clone(),
        key: key.clone(),
        state,
        fingerprint,
        token: token as u64,
        attempt,
        created_at: Timestamp::from_millis(created_at),
        expires_at: Timestamp::from_millis(expires_at),
    })
}

/// The answer of a guarded statement of `claim` (release, extend) that changed `changed` rows:
/// done, or why the claim is no longer held.
fn held(
    tx: &Transaction<'_>,
    ids: &mut ScopeIds,
    claim: &Claim,
    changed: usize,
    url: &str,
) -> Result<Result<()>> {
    Ok(if changed == 1 {
        Ok(())
    } else {
        Err(lost(tx, ids, claim, url)?)
    })
}

/// Why `claim` no longer holds its record, read after a guarded statement changed nothing.
fn lost(tx: &Transaction<'_>, ids: &mut ScopeIds, claim: &Claim, url: &str) -> Result<Error> {
    let existing = select(tx, ids, &claim.scope, &claim.key, url)?.map(|(record, _)| record);
    Ok(claim_lost(url, existing.as_ref(), claim))
}

/// How a key is stored: a canonical UUID (lower-case, hyphenated, as most producers write them)
/// as its 16 bytes, any other key as its text. A UUID key then takes 16 bytes instead of 36 in
/// the table and again in the expires_at index. The forms cannot collide: SQLite never
/// compares a BLOB equal to TEXT, and only the one canonical spelling is packed.
pub(crate) enum StoredKey<'a> {
    Uuid([u8; 16]),
    Text(&'a str),
}

impl<'a> StoredKey<'a> {
    pub(crate) fn of(key: &'a Key) -> Self {
        canonical_uuid(key.as_str()).map_or(StoredKey::Text(key.as_str()), StoredKey::Uuid)
    }
}

impl ToSql for StoredKey<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            StoredKey::Uuid(bytes) => ValueRef::Blob(bytes),
            StoredKey::Text(text) => ValueRef::Text(text.as_bytes()),
        }))
    }
}

// The same representation through sqlx, for the inbox.
impl sqlx::Type<sqlx::Sqlite> for StoredKey<'_> {
    fn type_info() -> sqlx::sqlite::SqliteTypeInfo {
        <&str as sqlx::Type<sqlx::Sqlite>>::type_info()
    }

    fn compatible(ty: &sqlx::sqlite::SqliteTypeInfo) -> bool {
        <&[u8] as sqlx::Type<sqlx::Sqlite>>::compatible(ty)
    }
}

impl<'q> sqlx::Encode<'q, sqlx::Sqlite> for StoredKey<'_> {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::sqlite::SqliteArgumentsBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        match self {
            StoredKey::Uuid(bytes) => {
                <&[u8] as sqlx::Encode<'q, sqlx::Sqlite>>::encode_by_ref(&&bytes[..], buf)
            }
            StoredKey::Text(text) => {
                <&str as sqlx::Encode<'q, sqlx::Sqlite>>::encode_by_ref(text, buf)
            }
        }
    }
}

fn canonical_uuid(s: &str) -> Option<[u8; 16]> {
    let s = s.as_bytes();
    if s.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut nibbles = 0;
    for (i, &c) in s.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let v = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        out[nibbles / 2] |= if nibbles % 2 == 0 { v << 4 } else { v };
        nibbles += 1;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How SQLite plans `statement` on a file with the store's schema: one line per step.
    fn plan(statement: &str) -> Vec<String> {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        for (_, sql) in crate::MIGRATIONS {
            conn.execute_batch(sql).unwrap();
        }
        let mut explain = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {statement}"))
            .unwrap();
        let params = (1..=explain.parameter_count()).map(|_| 1);
        explain
            .query_map(rusqlite::params_from_iter(params), |r| {
                r.get::<_, String>(3)
            })
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn every_statement_finds_a_record_by_its_whole_primary_key() {
        for statement in [
            SELECT_CLAIM,
            SELECT_DONE,
            CLAIM_FRESH,
            DELETE_DONE,
            TAKE_CLAIM,
            FORGET_DONE,
            RELEASE,
            EXTEND,
            PURGE_CLAIMS,
            PURGE_DONE,
        ] {
            let plan = plan(statement);
            let by_key: Vec<_> = plan
                .iter()
                .filter(|step| step.contains("USING PRIMARY KEY"))
                .collect();
            assert!(!by_key.is_empty(), "{statement}: {plan:?}");
            // A lookup by scope_id alone walks every record of the scope.
            assert!(
                by_key
                    .iter()
                    .all(|step| step.contains("(scope_id=? AND key=?)")),
                "{statement}: {plan:?}"
            );
        }
    }

    #[test]
    fn a_scope_named_by_a_transaction_that_rolled_back_is_not_remembered() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        for (_, sql) in crate::MIGRATIONS {
            conn.execute_batch(sql).unwrap();
        }
        let (mut ids, url) = (ScopeIds::default(), "sqlite::memory:");
        let (x, y) = (Scope::new("x").unwrap(), Scope::new("y").unwrap());
        let tx = conn.transaction().unwrap();
        let first = ids.name(&tx, &x, url).unwrap();
        assert_eq!(ids.find(&tx, &x, url).unwrap(), Some(first));
        drop(tx);
        ids.ended(false);
        // Another writer of the file names another scope, which may get the same id.
        conn.execute(NAME_SCOPE, [y.as_str()]).unwrap();
        let tx = conn.transaction().unwrap();
        assert_eq!(ids.find(&tx, &y, url).unwrap(), Some(first));
        assert_eq!(ids.find(&tx, &x, url).unwrap(), None);
        let second = ids.name(&tx, &x, url).unwrap();
        assert_ne!(second, first);
        tx.commit().unwrap();
        ids.ended(true);
        let tx = conn.transaction().unwrap();
        assert_eq!(ids.find(&tx, &x, url).unwrap(), Some(second));
    }

    #[test]
    fn purge_walks_the_expiry_index() {
        let plan = plan(PURGE_DONE);
        assert!(
            plan.iter()
                .any(|step| step.contains("INDEX oncely_records_expires_at")),
            "{plan:?}"
        );
        assert!(
            !plan.iter().any(|step| step.starts_with("SCAN")),
            "{plan:?}"
        );
    }

    #[test]
    fn only_the_canonical_spelling_is_packed() {
        let packed = canonical_uuid("0f8fad5b-d9cb-469f-a165-70867728950e").unwrap();
        assert_eq!(packed[0], 0x0f);
        assert_eq!(packed[15], 0x0e);
        for other in [
            "0F8FAD5B-D9CB-469F-A165-70867728950E",
            "0f8fad5bd9cb469fa16570867728950e",
            "0f8fad5b-d9cb-469f-a165-70867728950g",
            "0f8fad5b_d9cb-469f-a165-70867728950e",
        ] {
            assert_eq!(canonical_uuid(other), None, "{other}");
        }
    }
}
