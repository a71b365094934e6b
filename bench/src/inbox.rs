//! The "oncely inbox batch" contender: oncely's transactional inbox taking a batch of keys in
//! one transaction, on the batched limit's terms (PostgreSQL and MySQL/MariaDB).
//!
//! In the inbox the claim *is* the completion: the record is written completed inside the
//! transaction that does the work, so one transaction per batch records every key, as the
//! limit's one `INSERT` per batch does, but with oncely's whole record (token, attempt,
//! fingerprint, timestamps, outcome) and its rules (a key held by a live lease answers
//! `InProgress`, an expired one is taken over). What it leaves out is any business write: the
//! benchmark measures the dedup, as the limit does.

use std::future::Future;
use std::sync::Arc;

use oncely::inbox::{Inbox, InboxClaim};
use oncely::mysql::inbox::MySqlInbox;
use oncely::postgres::inbox::PostgresInbox;
use oncely::{Fingerprint, Key, Oncely, Scope};
use sqlx::{Connection, MySqlConnection, PgConnection};

use crate::baseline::{LIMIT_BATCH, LIMIT_CONNECTIONS, drive};
use crate::{BenchError, Progress, RunResult, StoreKind, Workload, preload_oncely, summarize};

/// How often a batch that lost a deadlock is run again before the benchmark gives up.
const RETRIES: usize = 16;

/// A connection whose transaction can take a batch of keys through the inbox.
trait InboxConnection: Send + Sized + 'static {
    /// In one transaction: claim `items`, commit; answers how many were new.
    fn record_batch(
        &mut self,
        inbox: &Inbox,
        items: &[(Key, Option<Fingerprint>)],
    ) -> impl Future<Output = oncely::Result<usize>> + Send;
}

fn new_ones(claims: &[InboxClaim]) -> usize {
    claims.iter().filter(|c| **c == InboxClaim::New).count()
}

fn driver(e: sqlx::Error) -> oncely::Error {
    oncely::Error::Backend {
        store: "benchmark connection".into(),
        source: e.into(),
    }
}

/// The same transaction on each database, through its own inbox trait.
macro_rules! inbox_connection {
    ($connection:ty, $inbox:ident) => {
        impl InboxConnection for $connection {
            async fn record_batch(
                &mut self,
                inbox: &Inbox,
                items: &[(Key, Option<Fingerprint>)],
            ) -> oncely::Result<usize> {
                let mut tx = self.begin().await.map_err(driver)?;
                let claims = $inbox::claim_many(inbox, &mut tx, items).await?;
                tx.commit().await.map_err(driver)?;
                Ok(new_ones(&claims))
            }
        }
    };
}
inbox_connection!(PgConnection, PostgresInbox);
inbox_connection!(MySqlConnection, MySqlInbox);

/// Runs the contender against the fresh namespace `url` (`store_url`: the same for oncely's
/// store, which applies the schema).
pub(crate) async fn run(
    kind: StoreKind,
    url: &str,
    store_url: &str,
    workload: &Workload,
    preload: &Workload,
    progress: &dyn Progress,
) -> Result<RunResult, BenchError> {
    let oncely = Oncely::new(oncely::connect(store_url).await?);
    preload_oncely(&oncely, preload, progress).await?;
    let mut result = match kind {
        StoreKind::Postgres => {
            let mut conns = Vec::with_capacity(LIMIT_CONNECTIONS);
            for _ in 0..LIMIT_CONNECTIONS {
                conns.push(PgConnection::connect(url).await?);
            }
            record(conns, workload, progress).await?
        }
        _ => {
            let mut conns = Vec::with_capacity(LIMIT_CONNECTIONS);
            for _ in 0..LIMIT_CONNECTIONS {
                let mut conn = MySqlConnection::connect(url).await?;
                // The isolation the MySQL inbox recommends (and oncely's store uses).
                sqlx::raw_sql("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .execute(&mut conn)
                    .await?;
                conns.push(conn);
            }
            record(conns, workload, progress).await?
        }
    };
    let stats = oncely.stats().await?;
    result.bytes_per_key = stats.bytes.map(|b| b as f64 / stats.records.max(1) as f64);
    Ok(result)
}

async fn record<C: InboxConnection>(
    conns: Vec<C>,
    workload: &Workload,
    progress: &dyn Progress,
) -> Result<RunResult, BenchError> {
    let inbox = Arc::new(Inbox::new(Scope::default()));
    progress.start("oncely inbox batch", workload.len() as u64);
    let keys = Arc::new(workload.keys().to_vec());
    let events = keys.len();
    let driven = drive(
        conns,
        events,
        LIMIT_BATCH,
        progress,
        move |mut conn, unit| {
            let (keys, inbox) = (keys.clone(), inbox.clone());
            async move {
                let first = unit * LIMIT_BATCH;
                let items: Vec<_> = keys[first..(first + LIMIT_BATCH).min(keys.len())]
                    .iter()
                    .map(|k| (k.clone(), None))
                    .collect();
                let mut tries = 0;
                loop {
                    match conn.record_batch(&inbox, &items).await {
                        Ok(new) => return Ok((conn, new)),
                        // The server rolled the batch back whole to break a deadlock: run it again,
                        // as the limit does.
                        Err(e) if tries < RETRIES && is_deadlock(&e) => tries += 1,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        },
    )
    .await?;
    Ok(summarize(
        "oncely inbox batch",
        events,
        driven.latencies,
        driven.new,
        driven.elapsed,
        None,
    ))
}

fn is_deadlock(e: &oncely::Error) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    matches!(e, oncely::Error::Backend { .. }) && text.contains("deadlock")
}
