//! The writer thread: owns the connection, runs queued jobs in batched transactions.

use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use oncely_core::{Error, Result};
use rusqlite::{Connection, TransactionBehavior};

use crate::job::{Answer, Job};
use crate::ops::{self, backend};
use crate::{MIGRATIONS, SqliteOptions};

pub(crate) struct Writer {
    conn: Connection,
    url: String,
    max_batch: usize,
    ids: ops::ScopeIds,
}

impl Writer {
    pub(crate) fn open(options: &SqliteOptions) -> Result<Self> {
        // Processes opening one new file at once contend for the switch to WAL and for the
        // schema; SQLite reports some of that as busy without waiting, so wait here.
        let deadline = Instant::now() + options.busy_timeout;
        loop {
            match Self::try_open(options) {
                Err(Error::Unavailable { source, .. })
                    if is_busy(source.as_ref()) && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                opened => return opened,
            }
        }
    }

    fn try_open(options: &SqliteOptions) -> Result<Self> {
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
        // SQLite answers the mode it is in: a connection of another process (or a pool) reading
        // the file at that moment leaves it unchanged, without an error. Treated as busy, so
        // `open` tries again until the busy timeout.
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(unavailable)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(unavailable(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                Some(format!("the file stayed in journal mode {mode}, not WAL")),
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(unavailable)?;
        conn.set_prepared_statement_cache_capacity(32);
        // Negative cache_size is in KiB.
        conn.pragma_update(None, "cache_size", -(i64::from(options.cache_mib) * 1024))
            .map_err(unavailable)?;
        conn.pragma_update(None, "wal_autocheckpoint", options.wal_autocheckpoint)
            .map_err(unavailable)?;
        migrate(&mut conn, options.migrate, &url)?;
        Ok(Writer {
            conn,
            url,
            max_batch: options.max_batch,
            ids: ops::ScopeIds::default(),
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
        let ids = &mut self.ids;
        let answers = (|| -> Result<Vec<Answer>> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| backend(&url, e))?;
            let answers = batch
                .iter()
                .map(|job| ops::apply(&tx, ids, job, &url))
                .collect::<Result<Vec<_>>>()?;
            tx.commit().map_err(|e| backend(&url, e))?;
            Ok(answers)
        })();
        self.ids.ended(answers.is_ok());
        match answers {
            Ok(answers) => {
                for (job, answer) in batch.into_iter().zip(answers) {
                    deliver(job, Ok(answer));
                }
            }
            Err(err) => {
                // The transaction rolled back: nothing in this batch happened, and every caller
                // is told so, with the same kind of error (an outage stays an outage).
                for job in batch {
                    deliver(job, Err(for_each_caller(&err, &url)));
                }
            }
        }
    }
}

/// `err`, which failed a whole batch, for one of its callers.
fn for_each_caller(err: &Error, url: &str) -> Error {
    let (unreachable, source) = match err {
        Error::Unavailable { source, .. } => (true, source.to_string()),
        Error::Backend { source, .. } => (false, source.to_string()),
        other => (false, other.to_string()),
    };
    Error::driver(url, unreachable, source.into())
}

fn is_busy(err: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        err.downcast_ref::<rusqlite::Error>()
            .and_then(rusqlite::Error::sqlite_error_code),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
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
        Job::CompleteMany { reply, .. } => send!(reply, Completions),
        Job::Complete { reply, .. } | Job::Release { reply, .. } | Job::Extend { reply, .. } => {
            let _ = reply.send(answer.and_then(|a| match a {
                Answer::Done(done) => done,
                _ => unreachable!("each job kind has one answer kind"),
            }));
        }
        Job::Get { reply, .. } => send!(reply, Record),
        Job::Forget { reply, .. } => send!(reply, Forgotten),
        Job::Purge { reply, .. } => send!(reply, Count),
        Job::Stats { reply, .. } => send!(reply, Stats),
        Job::Version { reply, .. } => send!(reply, Version),
    }
}

fn unavailable(url: &str, e: rusqlite::Error) -> Error {
    Error::Unavailable {
        store: url.to_owned(),
        source: e.into(),
    }
}
