//! The writer thread: owns the connection, runs queued jobs in batched transactions.

use std::sync::mpsc::Receiver;

use oncely_core::lifecycle::{check_holder, decide_claim, decide_version};
use oncely_core::{
    Claim, ClaimOutcome, ClaimRequest, Error, Fingerprint, Key, Record, RecordState, Result, Scope,
    StoreStats, Timestamp, VersionCheck,
};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::oneshot;

use crate::{MIGRATIONS, SqliteOptions};

type Reply<T> = oneshot::Sender<Result<T>>;

/// One queued operation and where its answer goes.
pub(crate) enum Job {
    Claim {
        requests: Vec<ClaimRequest>,
        now: Timestamp,
        reply: Reply<Vec<ClaimOutcome>>,
    },
    Complete {
        claim: Claim,
        outcome: Vec<u8>,
        expires_at: Timestamp,
        reply: Reply<()>,
    },
    Release {
        claim: Claim,
        reply: Reply<()>,
    },
    Get {
        scope: Scope,
        key: Key,
        reply: Reply<Option<Record>>,
    },
    Purge {
        expired_before: Timestamp,
        limit: usize,
        reply: Reply<usize>,
    },
    Stats {
        now: Timestamp,
        reply: Reply<StoreStats>,
    },
    Version {
        scope: Scope,
        entity: Key,
        version: u64,
        reply: Reply<VersionCheck>,
    },
}

/// A job's answer, held until its transaction commits.
enum Answer {
    Claims(Vec<ClaimOutcome>),
    Done(Result<()>),
    Record(Option<Record>),
    Count(usize),
    Stats(StoreStats),
    Version(VersionCheck),
}

pub(crate) struct Writer {
    conn: Connection,
    url: String,
    max_batch: usize,
}

const SELECT_RECORD: &str = "SELECT completed, token, attempt, fingerprint, created_at, expires_at, outcome \
     FROM oncely_records WHERE scope = ?1 AND key = ?2";
const INSERT_CLAIM: &str = "INSERT INTO oncely_records \
     (scope, key, completed, token, attempt, fingerprint, created_at, expires_at, outcome) \
     VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6, ?7, NULL) ON CONFLICT DO NOTHING";
const TAKE_OVER: &str = "UPDATE oncely_records SET completed = 0, token = ?3, attempt = ?4, \
     fingerprint = ?5, created_at = ?6, expires_at = ?7, outcome = NULL WHERE scope = ?1 AND key = ?2";
const COMPLETE: &str = "UPDATE oncely_records SET completed = 1, outcome = ?4, expires_at = ?5 \
     WHERE scope = ?1 AND key = ?2 AND token = ?3 AND completed = 0";
const RELEASE: &str =
    "DELETE FROM oncely_records WHERE scope = ?1 AND key = ?2 AND token = ?3 AND completed = 0";
const PURGE: &str = "DELETE FROM oncely_records WHERE (scope, key) IN \
     (SELECT scope, key FROM oncely_records WHERE expires_at < ?1 ORDER BY expires_at LIMIT ?2)";
const STATS: &str = "SELECT count(*), \
     coalesce(sum(completed = 0 AND expires_at >= ?1), 0), \
     coalesce(sum(completed = 1 AND expires_at >= ?1), 0), \
     coalesce(sum(expires_at < ?1), 0) FROM oncely_records";
const SELECT_VERSION: &str = "SELECT version FROM oncely_versions WHERE scope = ?1 AND entity = ?2";
const UPSERT_VERSION: &str = "INSERT INTO oncely_versions (scope, entity, version) VALUES (?1, ?2, ?3) \
     ON CONFLICT (scope, entity) DO UPDATE SET version = excluded.version";

impl Writer {
    pub(crate) fn open(options: &SqliteOptions) -> Result<Self> {
        let url = options.url();
        let unavailable = |e: rusqlite::Error| Error::Unavailable {
            store: url.clone(),
            source: e.into(),
        };
        let mut conn = Connection::open(&options.path).map_err(unavailable)?;
        conn.busy_timeout(options.busy_timeout)
            .map_err(unavailable)?;
        // page_size only takes effect on a database with no tables yet; harmless otherwise.
        conn.pragma_update(None, "page_size", options.page_size)
            .map_err(unavailable)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(unavailable)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(unavailable)?;
        conn.set_prepared_statement_cache_capacity(32);
        migrate(&mut conn, options.migrate, &url)?;
        Ok(Writer {
            conn,
            url,
            max_batch: options.max_batch,
        })
    }

    pub(crate) fn run(mut self, queue: Receiver<Job>) {
        while let Ok(first) = queue.recv() {
            // Everything that queued while the previous commit was syncing goes in this one.
            let mut batch = vec![first];
            while batch.len() < self.max_batch {
                match queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.execute(batch);
        }
    }

    fn execute(&mut self, batch: Vec<Job>) {
        let url = self.url.clone();
        let answers = (|| -> Result<Vec<Answer>> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| backend(&url, e))?;
            let answers = batch
                .iter()
                .map(|job| apply(&tx, job, &url))
                .collect::<Result<Vec<_>>>()?;
            tx.commit().map_err(|e| backend(&url, e))?;
            Ok(answers)
        })();
        match answers {
            Ok(answers) => {
                for (job, answer) in batch.into_iter().zip(answers) {
                    deliver(job, Ok(answer));
                }
            }
            Err(err) => {
                // The transaction rolled back: nothing in this batch happened, and every caller
                // is told so.
                let message = err.to_string();
                for job in batch {
                    deliver(
                        job,
                        Err(Error::Backend {
                            store: url.clone(),
                            source: message.clone().into(),
                        }),
                    );
                }
            }
        }
    }
}

fn migrate(conn: &mut Connection, apply: bool, url: &str) -> Result<()> {
    let latest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| unavailable(url, e))?;
    let current: u32 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| unavailable(url, e))?;
    if current > latest {
        return Err(Error::Unavailable {
            store: url.to_owned(),
            source: format!("schema version {current} is newer than this oncely understands ({latest}); upgrade oncely").into(),
        });
    }
    if current < latest {
        if !apply {
            return Err(Error::Unavailable {
                store: url.to_owned(),
                source: format!(
                    "schema version {current}, expected {latest}: apply stores/sqlite/migrations or open without migrate=false"
                )
                .into(),
            });
        }
        for (_, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            tx.execute_batch(sql).map_err(|e| unavailable(url, e))?;
        }
        tx.pragma_update(None, "user_version", latest)
            .map_err(|e| unavailable(url, e))?;
    }
    tx.commit().map_err(|e| unavailable(url, e))
}

fn apply(tx: &Transaction<'_>, job: &Job, url: &str) -> Result<Answer> {
    let sql = |e: rusqlite::Error| backend(url, e);
    Ok(match job {
        Job::Claim { requests, now, .. } => {
            let mut outcomes = Vec::with_capacity(requests.len());
            for req in requests {
                outcomes.push(claim_one(tx, req, *now, url)?);
            }
            Answer::Claims(outcomes)
        }
        Job::Complete {
            claim,
            outcome,
            expires_at,
            ..
        } => {
            let changed = tx
                .prepare_cached(COMPLETE)
                .and_then(|mut s| {
                    s.execute(params![
                        claim.scope.as_str(),
                        claim.key.as_str(),
                        claim.token as i64,
                        outcome,
                        expires_at.as_millis()
                    ])
                })
                .map_err(sql)?;
            Answer::Done(if changed == 1 {
                Ok(())
            } else {
                Err(lost(tx, claim, url)?)
            })
        }
        Job::Release { claim, .. } => {
            let changed = tx
                .prepare_cached(RELEASE)
                .and_then(|mut s| {
                    s.execute(params![
                        claim.scope.as_str(),
                        claim.key.as_str(),
                        claim.token as i64
                    ])
                })
                .map_err(sql)?;
            Answer::Done(if changed == 1 {
                Ok(())
            } else {
                Err(lost(tx, claim, url)?)
            })
        }
        Job::Get { scope, key, .. } => Answer::Record(select(tx, scope, key, url)?),
        Job::Purge {
            expired_before,
            limit,
            ..
        } => {
            let limit = i64::try_from(*limit).unwrap_or(i64::MAX);
            let purged = tx
                .prepare_cached(PURGE)
                .and_then(|mut s| s.execute(params![expired_before.as_millis(), limit]))
                .map_err(sql)?;
            Answer::Count(purged)
        }
        Job::Stats { now, .. } => {
            let (records, in_progress, completed, expired) = tx
                .query_row(STATS, [now.as_millis()], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })
                .map_err(sql)?;
            let pages: i64 = tx
                .query_row("PRAGMA page_count", [], |r| r.get(0))
                .map_err(sql)?;
            let page_size: i64 = tx
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .map_err(sql)?;
            Answer::Stats(StoreStats {
                records: records as u64,
                in_progress: in_progress as u64,
                completed: completed as u64,
                expired: expired as u64,
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
    req: &ClaimRequest,
    now: Timestamp,
    url: &str,
) -> Result<ClaimOutcome> {
    let sql = |e: rusqlite::Error| backend(url, e);
    // Fast path: a key never seen is one insert, no read.
    let fresh = decide_claim(None, req, now);
    let record = fresh
        .write
        .as_ref()
        .expect("an absent key is always claimed");
    let inserted = write_record(tx, INSERT_CLAIM, record).map_err(sql)?;
    if inserted == 1 {
        return Ok(fresh.outcome);
    }
    // The key exists: decide against what is stored, with the same rules as every store.
    let existing = select(tx, &req.scope, &req.key, url)?;
    let decision = decide_claim(existing.as_ref(), req, now);
    if let Some(record) = &decision.write {
        write_record(tx, TAKE_OVER, record).map_err(sql)?;
    }
    Ok(decision.outcome)
}

/// Runs INSERT_CLAIM or TAKE_OVER, which take an in-progress record's columns as ?1..?7.
fn write_record(tx: &Transaction<'_>, sql: &str, r: &Record) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(params![
        r.scope.as_str(),
        r.key.as_str(),
        r.token as i64,
        r.attempt,
        r.fingerprint.as_ref().map(|f| f.as_bytes().as_slice()),
        r.created_at.as_millis(),
        r.expires_at.as_millis(),
    ])
}

fn select(tx: &Transaction<'_>, scope: &Scope, key: &Key, url: &str) -> Result<Option<Record>> {
    type Row = (bool, i64, u32, Option<Vec<u8>>, i64, i64, Option<Vec<u8>>);
    let row: Option<Row> = tx
        .prepare_cached(SELECT_RECORD)
        .and_then(|mut s| {
            s.query_row(params![scope.as_str(), key.as_str()], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })
            .optional()
        })
        .map_err(|e| backend(url, e))?;
    let Some((completed, token, attempt, fingerprint, created_at, expires_at, outcome)) = row
    else {
        return Ok(None);
    };
    let fingerprint = match fingerprint {
        None => None,
        Some(bytes) => Some(
            Fingerprint::from_slice(&bytes).ok_or_else(|| Error::Corrupt {
                store: url.to_owned(),
                detail: format!(
                    "fingerprint of {scope}/{key} is {} bytes, expected 32",
                    bytes.len()
                ),
            })?,
        ),
    };
    Ok(Some(Record {
        scope: scope.clone(),
        key: key.clone(),
        state: if completed {
            RecordState::Completed {
                outcome: outcome.unwrap_or_default(),
            }
        } else {
            RecordState::InProgress
        },
        fingerprint,
        token: token as u64,
        attempt,
        created_at: Timestamp::from_millis(created_at),
        expires_at: Timestamp::from_millis(expires_at),
    }))
}

/// Why `claim` no longer holds its record, read after a guarded update changed nothing.
fn lost(tx: &Transaction<'_>, claim: &Claim, url: &str) -> Result<Error> {
    let existing = select(tx, &claim.scope, &claim.key, url)?;
    let reason = check_holder(existing.as_ref(), claim)
        .err()
        .ok_or_else(|| Error::Corrupt {
            store: url.to_owned(),
            detail: format!(
                "guarded update of {}/{} matched no row, yet the claim holds it",
                claim.scope, claim.key
            ),
        })?;
    Ok(Error::ClaimLost {
        scope: claim.scope.clone(),
        key: claim.key.clone(),
        reason,
    })
}

fn deliver(job: Job, answer: Result<Answer>) {
    // A caller that stopped waiting (its future was dropped) makes `send` fail; nothing to do.
    macro_rules! send {
        ($reply:expr, $variant:ident) => {{
            let _ = $reply.send(answer.and_then(|a| match a {
                Answer::$variant(v) => Ok(v),
                _ => unreachable!("each job kind has one answer kind"),
            }));
        }};
    }
    match job {
        Job::Claim { reply, .. } => send!(reply, Claims),
        Job::Complete { reply, .. } | Job::Release { reply, .. } => {
            let _ = reply.send(answer.and_then(|a| match a {
                Answer::Done(done) => done,
                _ => unreachable!("each job kind has one answer kind"),
            }));
        }
        Job::Get { reply, .. } => send!(reply, Record),
        Job::Purge { reply, .. } => send!(reply, Count),
        Job::Stats { reply, .. } => send!(reply, Stats),
        Job::Version { reply, .. } => send!(reply, Version),
    }
}

fn backend(url: &str, e: rusqlite::Error) -> Error {
    Error::Backend {
        store: url.to_owned(),
        source: e.into(),
    }
}

fn unavailable(url: &str, e: rusqlite::Error) -> Error {
    Error::Unavailable {
        store: url.to_owned(),
        source: e.into(),
    }
}
