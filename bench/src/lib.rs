//! # oncely-bench
//!
//! The benchmark. N events (default 1,000,000) with 10 % redeliveries and 36-character
//! UUID keys go through oncely's claim + complete; the same events then go through the naive
//! pattern (per event, in its own transaction: `SELECT EXISTS`, then `INSERT`), through the
//! store's own batched limit (a plain batched insert that ignores existing keys, 1,000 per
//! transaction) and through oncely's batch API, each on a fresh store of the same kind, in the
//! same run, side by side. The contenders, in the order they run and are reported:
//!
//! - **oncely**: `claim`, then `complete` for a new key, one event at a time, from
//!   [`BenchConfig::concurrency`] concurrent tasks (memory: one); the store coalesces the
//!   concurrent single calls (group commit).
//! - **naive**: per event, `SELECT EXISTS` then `INSERT` in its own transaction (Redis: `SET NX`
//!   one at a time; memory: a `Mutex<HashSet>`), on a sample of
//!   [`BenchConfig::naive_events`] events.
//! - **batched limit** (SQLite, PostgreSQL, MySQL, Redis): the store's plain batched insert of
//!   the keys, [`baseline::LIMIT_BATCH`] per transaction (Redis: pipelined `SET NX`), on
//!   [`baseline::LIMIT_CONNECTIONS`] connections.
//! - **oncely batch**: oncely's batch API on the same terms as the limit: [`BATCH_CALLERS`]
//!   callers at once, each `Oncely::claim_many` of the next [`baseline::LIMIT_BATCH`] events,
//!   then `Oncely::complete_many` of the new ones; an event's latency is its batch's.
//! - **oncely inbox batch** (PostgreSQL, MySQL): the transactional inbox on the same terms: on
//!   [`baseline::LIMIT_CONNECTIONS`] connections, each transaction `claim_many` of the next
//!   [`baseline::LIMIT_BATCH`] events, then commit. An inbox record is written completed in the
//!   caller's transaction (the claim and the effect commit together), so there is no second
//!   step: one transaction per batch, like the limit, with oncely's whole record.
//!
//! The [`broker`] module is the other throughput benchmark, `oncely bench --broker URL`: messages
//! per second through consume + claim + effect + ack on a real NATS JetStream or RabbitMQ,
//! oncely's consumer runner against the naive per-message consumer, in the same run.
//!
//! On PostgreSQL and MySQL/MariaDB every contender gets a fresh schema (PostgreSQL) or database
//! (MySQL) on the server the URL names, dropped at the end; the URL's own database is never
//! written.
//!
//! `oncely bench` is the front end; this crate is the engine, so it can be driven from tests
//! and other tools too.

#![warn(missing_docs)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use oncely::{ClaimOutcome, Key, Oncely, Scope};

pub mod baseline;
pub mod broker;
mod fresh;
pub mod gateway;
mod inbox;
pub mod purge;
mod server;
mod workload;

pub use workload::Workload;

/// The SQLite page size oncely's store gives a new file.
pub const DEFAULT_PAGE_SIZE: u32 = oncely_sqlite::DEFAULT_PAGE_SIZE;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Store kind.
    pub store: StoreKind,
    /// The server, for PostgreSQL and MySQL (its URL; fresh namespaces are made on it).
    pub url: String,
    /// Where SQLite files go (a fresh file per run).
    pub dir: PathBuf,
    /// Events through oncely and through the batched limit.
    pub events: usize,
    /// Share of events that are redeliveries of an earlier event.
    pub duplicate_ratio: f64,
    /// Concurrent single-event claimants driving oncely (group commit coalesces them).
    pub concurrency: usize,
    /// Events through the naive pattern, which is too slow for a million fsyncs.
    pub naive_events: usize,
    /// Distinct keys loaded into every store before measuring (0 = empty store).
    pub preload: usize,
    /// Seed for the workload.
    pub seed: u64,
    /// SQLite page size for every contender's new file (they share one configuration).
    pub page_size: u32,
}

/// Which store a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// `oncely-memory`.
    Memory,
    /// `oncely-sqlite` (WAL, synchronous=FULL).
    Sqlite,
    /// `oncely-postgres`, on the server the URL names.
    Postgres,
    /// `oncely-mysql`, on the MySQL or MariaDB server the URL names.
    Mysql,
    /// `oncely-redis`, on the Redis server the URL names (each contender under a prefix).
    Redis,
}

impl StoreKind {
    /// Whether the store is a database server reached over the network.
    pub fn is_server(self) -> bool {
        matches!(self, StoreKind::Postgres | StoreKind::Mysql)
    }
}

/// The figures of one contender.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// `oncely`, `naive`, `powertools` (Redis), `batched limit` or `oncely batch`.
    pub name: String,
    /// Events processed.
    pub events: usize,
    /// Events that were new (the rest were duplicates).
    pub new: usize,
    /// Wall time.
    pub elapsed: Duration,
    /// Median per-event latency.
    pub p50: Duration,
    /// 99th percentile per-event latency.
    pub p99: Duration,
    /// Bytes the store occupies per stored key, where measurable.
    pub bytes_per_key: Option<f64>,
}

impl RunResult {
    /// Events per second.
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// oncely reported an error.
    #[error(transparent)]
    Oncely(#[from] oncely::Error),
    /// A baseline's SQLite failed.
    #[error("sqlite baseline: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A baseline's (or the benchmark's own) statement on a database server failed.
    #[error("server: {0}")]
    Server(#[from] sqlx::Error),
    /// A Redis baseline failed.
    #[error("redis baseline: {0}")]
    Redis(#[from] redis::RedisError),
    /// Something else (I/O on the bench directory, a runtime).
    #[error("{0}")]
    Other(String),
}

/// Progress reporting: `start(phase, total)` then `advance(n)` calls.
pub trait Progress: Send + Sync {
    /// A phase with `total` steps begins.
    fn start(&self, phase: &str, total: u64);
    /// `n` more steps are done.
    fn advance(&self, n: u64);
    /// The phase ended.
    fn finish(&self);
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

/// Runs oncely, the naive pattern, the batched limit (where the store has one) and oncely's
/// batch API on the same workload, and answers their figures in that order.
pub fn run(config: &BenchConfig, progress: &dyn Progress) -> Result<Vec<RunResult>, BenchError> {
    let workload = Workload::generate(config.events, config.duplicate_ratio, config.seed);
    let preload = Workload::distinct(config.preload, config.seed ^ 0x5eed);
    let naive_workload = workload.prefix(config.naive_events.min(config.events));
    if config.store == StoreKind::Redis {
        return run_redis(config, &workload, &naive_workload, &preload, progress);
    }
    if config.store.is_server() {
        return run_server(config, &workload, &naive_workload, &preload, progress);
    }
    let mut results = Vec::new();
    let url = match config.store {
        StoreKind::Memory => "memory:".to_owned(),
        _ => format!(
            "sqlite:{}?page_size={}",
            fresh_path(config, "oncely")?.display(),
            config.page_size
        ),
    };
    let runtime = match config.store {
        // Memory: one core, one task. SQLite: the writer thread plus a small runtime for claimants.
        StoreKind::Memory => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build(),
    }
    .map_err(|e| BenchError::Other(e.to_string()))?;
    let concurrency = match config.store {
        StoreKind::Memory => 1,
        _ => config.concurrency.max(1),
    };
    results.push(runtime.block_on(run_oncely(&url, concurrency, &workload, &preload, progress))?);
    results.push(match config.store {
        StoreKind::Memory => baseline::memory::naive(&naive_workload, &preload, progress),
        _ => baseline::sqlite::naive(
            &fresh_path(config, "naive")?,
            config.page_size,
            &naive_workload,
            &preload,
            progress,
        )?,
    });
    if config.store == StoreKind::Sqlite {
        results.push(baseline::sqlite::batched_limit(
            &fresh_path(config, "limit")?,
            config.page_size,
            &workload,
            &preload,
            progress,
        )?);
    }
    let url = match config.store {
        StoreKind::Memory => "memory:".to_owned(),
        _ => format!(
            "sqlite:{}?page_size={}",
            fresh_path(config, "batch")?.display(),
            config.page_size
        ),
    };
    results.push(runtime.block_on(run_oncely_batch(&url, &workload, &preload, progress))?);
    Ok(results)
}

/// A runtime of two workers: a benchmark's client shares the machine's two cores with what it
/// measures (a server, a gateway, a broker).
pub(crate) fn two_workers() -> Result<tokio::runtime::Runtime, BenchError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| BenchError::Other(e.to_string()))
}

/// The five contenders on a database server, each in a fresh namespace, all dropped after.
fn run_server(
    config: &BenchConfig,
    workload: &Workload,
    naive_workload: &Workload,
    preload: &Workload,
    progress: &dyn Progress,
) -> Result<Vec<RunResult>, BenchError> {
    // The server shares the two cores: two workers drive the claimants and the drivers.
    let runtime = two_workers()?;
    runtime.block_on(async {
        let mut namespaces = server::Namespaces::new(config.store, &config.url);
        let results = async {
            let url = namespaces.fresh("oncely").await?;
            let mut oncely = run_oncely(
                &namespaces.for_store(&url),
                config.concurrency.max(1),
                workload,
                preload,
                progress,
            )
            .await?;
            if config.store == StoreKind::Mysql {
                // information_schema's sizes are estimates until ANALYZE TABLE refreshes them.
                let mut conn = <sqlx::MySqlConnection as sqlx::Connection>::connect(&url).await?;
                oncely.bytes_per_key =
                    Some(baseline::mysql::bytes_per_key(&mut conn, "oncely_records").await?);
            }
            let url = namespaces.fresh("naive").await?;
            let naive = match config.store {
                StoreKind::Postgres => {
                    baseline::postgres::naive(&url, naive_workload, preload, progress).await?
                }
                _ => baseline::mysql::naive(&url, naive_workload, preload, progress).await?,
            };
            let url = namespaces.fresh("limit").await?;
            let limit = match config.store {
                StoreKind::Postgres => {
                    baseline::postgres::batched_limit(&url, workload, preload, progress).await?
                }
                _ => baseline::mysql::batched_limit(&url, workload, preload, progress).await?,
            };
            let url = namespaces.fresh("batch").await?;
            let mut batch =
                run_oncely_batch(&namespaces.for_store(&url), workload, preload, progress).await?;
            if config.store == StoreKind::Mysql {
                let mut conn = <sqlx::MySqlConnection as sqlx::Connection>::connect(&url).await?;
                batch.bytes_per_key =
                    Some(baseline::mysql::bytes_per_key(&mut conn, "oncely_records").await?);
            }
            let url = namespaces.fresh("inbox").await?;
            let store_url = namespaces.for_store(&url);
            let mut inbox =
                inbox::run(config.store, &url, &store_url, workload, preload, progress).await?;
            if config.store == StoreKind::Mysql {
                let mut conn = <sqlx::MySqlConnection as sqlx::Connection>::connect(&url).await?;
                inbox.bytes_per_key =
                    Some(baseline::mysql::bytes_per_key(&mut conn, "oncely_records").await?);
            }
            Ok::<_, BenchError>(vec![oncely, naive, limit, batch, inbox])
        }
        .await;
        let dropped = namespaces.drop_all().await;
        let results = results?;
        dropped?;
        Ok(results)
    })
}

/// The five contenders on a Redis server, each under a key prefix of its own, all removed after.
fn run_redis(
    config: &BenchConfig,
    workload: &Workload,
    naive_workload: &Workload,
    preload: &Workload,
    progress: &dyn Progress,
) -> Result<Vec<RunResult>, BenchError> {
    let runtime = two_workers()?;
    // oncely's own parameters go to oncely's store only; the baselines take the bare server.
    let prefixes = fresh::RedisPrefixes::new(&config.url);
    let driver_url = &prefixes.driver_url;
    runtime.block_on(async {
        let results = async {
            let oncely = run_oncely(
                &prefixes.store_url("oncely"),
                config.concurrency.max(1),
                workload,
                preload,
                progress,
            )
            .await?;
            let naive = baseline::redis::naive(
                driver_url,
                &prefixes.contender_prefix("naive"),
                naive_workload,
                preload,
                progress,
            )
            .await?;
            let powertools = baseline::redis::powertools(
                driver_url,
                &prefixes.contender_prefix("powertools"),
                workload,
                preload,
                progress,
            )
            .await?;
            let limit = baseline::redis::batched_limit(
                driver_url,
                &prefixes.contender_prefix("limit"),
                workload,
                preload,
                progress,
            )
            .await?;
            let batch =
                run_oncely_batch(&prefixes.store_url("batch"), workload, preload, progress).await?;
            Ok::<_, BenchError>(vec![oncely, naive, powertools, limit, batch])
        }
        .await;
        let forgotten = prefixes.forget().await;
        let results = results?;
        forgotten?;
        Ok(results)
    })
}

fn fresh_path(config: &BenchConfig, name: &str) -> Result<PathBuf, BenchError> {
    fresh_file(&config.dir, name)
}

/// `dir/bench-<name>.db`, with any earlier file of that name (and its WAL) removed.
pub(crate) fn fresh_file(dir: &std::path::Path, name: &str) -> Result<PathBuf, BenchError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| BenchError::Other(format!("{}: {e}", dir.display())))?;
    let path = dir.join(format!("bench-{name}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(path)
}

async fn run_oncely(
    url: &str,
    concurrency: usize,
    workload: &Workload,
    preload: &Workload,
    progress: &dyn Progress,
) -> Result<RunResult, BenchError> {
    let store = oncely::connect(url).await?;
    let oncely = Oncely::new(store.clone());
    preload_oncely(&oncely, preload, progress).await?;

    progress.start("oncely", workload.len() as u64);
    let keys = Arc::new(workload.keys().to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let new = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (oncely, keys, next, new) = (oncely.clone(), keys.clone(), next.clone(), new.clone());
        tasks.spawn(async move {
            let scope = Scope::default();
            let mut latencies = Latencies::for_events(keys.len() / concurrency);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(key) = keys.get(i) else { break };
                let t0 = Latencies::start(i);
                match oncely.claim(&scope, key, None).await? {
                    ClaimOutcome::New(claim) => {
                        oncely.complete(&claim, b"").await?;
                        new.fetch_add(1, Ordering::Relaxed);
                    }
                    // A redelivery of an event that is done, or still in flight on another
                    // claimant: either way not executed again.
                    ClaimOutcome::Duplicate(_) | ClaimOutcome::InProgress { .. } => {}
                    ClaimOutcome::Conflict { .. } => {
                        unreachable!("the benchmark sends no fingerprints")
                    }
                }
                latencies.record(t0);
            }
            Ok::<_, oncely::Error>(latencies)
        });
    }
    let mut latencies = Latencies::for_events(keys.len());
    let mut reported = 0;
    while !tasks.is_empty() {
        match tokio::time::timeout(Duration::from_millis(100), tasks.join_next()).await {
            Ok(Some(joined)) => {
                latencies.extend(joined.map_err(|e| BenchError::Other(e.to_string()))??)
            }
            Ok(None) => break,
            Err(_) => {}
        }
        let done = next.load(Ordering::Relaxed).min(keys.len());
        progress.advance((done - reported) as u64);
        reported = done;
    }
    let elapsed = started.elapsed();
    progress.advance((keys.len() - reported) as u64);
    progress.finish();
    let stats = oncely.stats().await?;
    let bytes_per_key = stats.bytes.map(|b| b as f64 / stats.records.max(1) as f64);
    Ok(summarize(
        "oncely",
        keys.len(),
        latencies,
        new.load(Ordering::Relaxed) as usize,
        elapsed,
        bytes_per_key,
    ))
}

/// oncely's batch API, the like-for-like counterpart of the batched limit: [`BATCH_CALLERS`]
/// callers at once, each taking the next [`baseline::LIMIT_BATCH`] events, `claim_many` of them
/// all, then `complete_many` of the `New` ones. Every completion must succeed. Each event's
/// latency is its batch's claim + complete time.
async fn run_oncely_batch(
    url: &str,
    workload: &Workload,
    preload: &Workload,
    progress: &dyn Progress,
) -> Result<RunResult, BenchError> {
    let store = oncely::connect(url).await?;
    let oncely = Oncely::new(store.clone());
    preload_oncely(&oncely, preload, progress).await?;

    progress.start("oncely batch", workload.len() as u64);
    let keys = Arc::new(workload.keys().to_vec());
    let events = keys.len();
    let callers = vec![oncely.clone(); BATCH_CALLERS];
    let driven = baseline::drive(
        callers,
        events,
        baseline::LIMIT_BATCH,
        progress,
        move |oncely: Oncely, unit| {
            let keys = keys.clone();
            async move {
                let first = unit * baseline::LIMIT_BATCH;
                let chunk = &keys[first..(first + baseline::LIMIT_BATCH).min(keys.len())];
                let outcomes = oncely
                    .claim_many(chunk.iter().map(|k| (Scope::default(), k.clone(), None)))
                    .await?;
                let mut claims = Vec::with_capacity(outcomes.len());
                for outcome in outcomes {
                    match outcome {
                        ClaimOutcome::New(claim) => claims.push((claim, Vec::new())),
                        // A redelivery of an event that is done, or still in flight (in another
                        // batch, or earlier in this one): either way not executed again.
                        ClaimOutcome::Duplicate(_) | ClaimOutcome::InProgress { .. } => {}
                        ClaimOutcome::Conflict { .. } => {
                            unreachable!("the benchmark sends no fingerprints")
                        }
                    }
                }
                let new = claims.len();
                for result in oncely.complete_many(claims).await? {
                    result?;
                }
                Ok((oncely, new))
            }
        },
    )
    .await?;
    let stats = oncely.stats().await?;
    let bytes_per_key = stats.bytes.map(|b| b as f64 / stats.records.max(1) as f64);
    Ok(summarize(
        "oncely batch",
        events,
        driven.latencies,
        driven.new,
        driven.elapsed,
        bytes_per_key,
    ))
}

pub(crate) async fn preload_oncely(
    oncely: &Oncely,
    preload: &Workload,
    progress: &dyn Progress,
) -> Result<(), BenchError> {
    if preload.is_empty() {
        return Ok(());
    }
    progress.start("preload oncely", preload.len() as u64);
    for chunk in preload.keys().chunks(1000) {
        let outcomes = oncely
            .claim_many(chunk.iter().map(|k| (Scope::default(), k.clone(), None)))
            .await?;
        let mut completes = tokio::task::JoinSet::new();
        for claim in outcomes.into_iter().filter_map(ClaimOutcome::into_new) {
            let oncely = oncely.clone();
            completes.spawn(async move { oncely.complete(&claim, b"").await });
        }
        while let Some(done) = completes.join_next().await {
            done.map_err(|e| BenchError::Other(e.to_string()))??;
        }
        progress.advance(chunk.len() as u64);
    }
    progress.finish();
    Ok(())
}

/// Concurrent callers of oncely's batch API in the "oncely batch" contender: as many as the
/// batched limit's connections, each with [`baseline::LIMIT_BATCH`] events per call.
pub const BATCH_CALLERS: usize = baseline::LIMIT_CONNECTIONS;

/// Every this-many-th event's latency is recorded, for every contender alike. Timing every event
/// would add two clock reads (~50 ns) to a ~1 us in-memory path: the timer would be measured.
pub const LATENCY_SAMPLE_EVERY: usize = 4;

/// The sampled latencies of one contender.
pub(crate) struct Latencies(Vec<Duration>);

impl Latencies {
    pub(crate) fn for_events(events: usize) -> Self {
        Latencies(Vec::with_capacity(events / LATENCY_SAMPLE_EVERY + 1))
    }

    /// Starts timing event number `i` if it is sampled.
    #[inline]
    pub(crate) fn start(i: usize) -> Option<Instant> {
        i.is_multiple_of(LATENCY_SAMPLE_EVERY).then(Instant::now)
    }

    /// Records a started event.
    #[inline]
    pub(crate) fn record(&mut self, started: Option<Instant>) {
        if let Some(t0) = started {
            self.0.push(t0.elapsed());
        }
    }

    /// Records `latency` for each sampled event among events `range`.
    pub(crate) fn record_range(&mut self, range: std::ops::Range<usize>, latency: Duration) {
        let sampled = range
            .filter(|i| i.is_multiple_of(LATENCY_SAMPLE_EVERY))
            .count();
        self.0.extend(std::iter::repeat_n(latency, sampled));
    }

    pub(crate) fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }
}

/// Builds a result from sampled per-event latencies.
pub(crate) fn summarize(
    name: &str,
    events: usize,
    Latencies(mut latencies): Latencies,
    new: usize,
    elapsed: Duration,
    bytes_per_key: Option<f64>,
) -> RunResult {
    latencies.sort_unstable();
    let pick = |q: f64| percentile(&latencies, q);
    RunResult {
        name: name.to_owned(),
        events,
        new,
        elapsed,
        p50: pick(0.50),
        p99: pick(0.99),
        bytes_per_key,
    }
}

/// The `q` quantile of sorted latencies (zero if there are none).
pub(crate) fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// The results as an aligned text table, with each contender's speed relative to oncely (the
/// first result) and, where the results have one, to the "oncely batch" contender.
pub fn format_table(results: &[RunResult]) -> String {
    let oncely_rate = results.first().map_or(1.0, RunResult::events_per_sec);
    let batch_rate = results
        .iter()
        .find(|r| r.name == "oncely batch")
        .map(RunResult::events_per_sec);
    let mut out = format!(
        "{:<14} {:>10} {:>10} {:>13} {:>10} {:>10} {:>11} {:>12}{}\n",
        "contender",
        "events",
        "new",
        "events/s",
        "p50",
        "p99",
        "bytes/key",
        "oncely is",
        if batch_rate.is_some() {
            format!(" {:>12}", "batch is")
        } else {
            String::new()
        }
    );
    for r in results {
        out.push_str(&format!(
            "{:<14} {:>10} {:>10} {:>13.0} {:>10} {:>10} {:>11} {:>12}{}\n",
            r.name,
            r.events,
            r.new,
            r.events_per_sec(),
            format_duration(r.p50),
            format_duration(r.p99),
            r.bytes_per_key
                .map_or("-".to_owned(), |b| format!("{b:.0}")),
            format!("{:.2}x", oncely_rate / r.events_per_sec()),
            batch_rate.map_or(String::new(), |b| format!(
                " {:>12}",
                format!("{:.2}x", b / r.events_per_sec())
            )),
        ));
    }
    out
}

pub(crate) fn format_duration(d: Duration) -> String {
    if d < Duration::from_micros(10) {
        format!("{}ns", d.as_nanos())
    } else if d < Duration::from_millis(10) {
        format!("{}us", d.as_micros())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The store kind a store URL names (`memory:`, `sqlite:PATH`, `postgres://`, `mysql://`,
/// `redis://`, with the schemes of [`oncely::StoreKind`]), or a bare `memory` or `sqlite`;
/// `None` for a store the bench does not measure (a Redis Cluster).
pub fn store_kind(url: &str) -> Option<StoreKind> {
    let kind = match oncely::backend::url::scheme(url) {
        Some(scheme) => oncely::StoreKind::from_scheme(scheme)?,
        // The example's shorthand for the stores that need no URL.
        None => oncely::StoreKind::from_scheme(url)
            .filter(|kind| matches!(kind, oncely::StoreKind::Memory | oncely::StoreKind::Sqlite))?,
    };
    match kind {
        oncely::StoreKind::Memory => Some(StoreKind::Memory),
        oncely::StoreKind::Sqlite => Some(StoreKind::Sqlite),
        oncely::StoreKind::Postgres => Some(StoreKind::Postgres),
        oncely::StoreKind::MySql => Some(StoreKind::Mysql),
        oncely::StoreKind::Redis => Some(StoreKind::Redis),
        _ => None,
    }
}

/// Keys as oncely sees them.
pub(crate) fn key(s: &str) -> Key {
    Key::new(s).expect("UUID keys are valid")
}
