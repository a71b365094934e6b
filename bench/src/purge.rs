//! Retention under load: claim latency while a large backlog of expired records is purged.
//!
//! The store is filled with `records` expired records (claimed long ago by the store's own
//! batch claim, leases long run out). Then `claimers` tasks claim and complete fresh keys as fast
//! as they can, twice for the same duration: once alone (the baseline), once while
//! [`Oncely::purge_all`] removes the whole backlog in batches of `batch`. Each claim's latency is
//! recorded, so the table shows what the purge costs the claims running beside it (p50, p99,
//! max), and how fast the purge itself went.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use oncely::backend::ClaimRequest;
use oncely::{ClaimOutcome, Clock, Oncely, PurgeRun, Scope, Store, SystemClock};

use crate::{BenchError, Progress, Workload};

/// What the purge benchmark runs.
#[derive(Clone, Debug)]
pub struct PurgeConfig {
    /// Expired records to purge.
    pub records: usize,
    /// Concurrent claimants (each claims, then completes, a fresh key in a loop).
    pub claimers: usize,
    /// How long each phase of claims runs; the purge phase runs at least until the purge ends.
    pub phase: Duration,
    /// Records per purge batch.
    pub batch: usize,
    /// Seed of the generated keys.
    pub seed: u64,
}

/// Claim latencies of one phase.
#[derive(Clone, Debug)]
pub struct PhaseResult {
    /// `claims alone` or `claims + purge`.
    pub name: String,
    /// Claims made (each followed by its complete).
    pub claims: usize,
    /// Wall time of the phase.
    pub elapsed: Duration,
    /// Claim latencies.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// The slowest claim.
    pub max: Duration,
}

/// The benchmark's result: both phases, and the purge itself.
#[derive(Clone, Debug)]
pub struct PurgeReport {
    /// Claims without a purge, then during it.
    pub phases: Vec<PhaseResult>,
    /// Records the purge removed.
    pub purged: usize,
    /// How long the purge took.
    pub purge_elapsed: Duration,
}

/// Runs the benchmark on `store`, which should be empty: every expired record in it is purged.
pub async fn run(
    store: Arc<dyn Store>,
    config: &PurgeConfig,
    progress: &dyn Progress,
) -> Result<PurgeReport, BenchError> {
    let oncely = Oncely::new(store.clone());
    preload_expired(&store, config, progress).await?;

    let alone = claim_phase("claims alone", &oncely, config, None).await?;
    let done = Arc::new(AtomicBool::new(false));
    let purger = {
        let (oncely, done, batch) = (oncely.clone(), done.clone(), config.batch);
        tokio::spawn(async move {
            let started = Instant::now();
            let mut purged = 0;
            let result = loop {
                match oncely.purge_all(Duration::ZERO, batch).await {
                    Ok(PurgeRun::Done {
                        purged: n,
                        finished,
                    }) => {
                        purged += n;
                        if finished {
                            break Ok((purged, started.elapsed()));
                        }
                    }
                    Ok(PurgeRun::AnotherPurger { retry_after }) => {
                        tokio::time::sleep(retry_after).await
                    }
                    Err(e) => break Err(e),
                }
            };
            done.store(true, Ordering::SeqCst);
            result
        })
    };
    let during = claim_phase("claims + purge", &oncely, config, Some(&done)).await?;
    let (purged, purge_elapsed) = purger
        .await
        .map_err(|e| BenchError::Other(e.to_string()))??;
    Ok(PurgeReport {
        phases: vec![alone, during],
        purged,
        purge_elapsed,
    })
}

/// Claims `records` distinct keys two days ago with a one-minute lease: all long expired.
async fn preload_expired(
    store: &Arc<dyn Store>,
    config: &PurgeConfig,
    progress: &dyn Progress,
) -> Result<(), BenchError> {
    let keys = Workload::distinct(config.records, config.seed ^ 0x9u64);
    let long_ago = SystemClock
        .now()
        .saturating_sub(Duration::from_secs(2 * 24 * 3600));
    let scope = Scope::new("bench.expired").expect("a valid scope");
    progress.start("preload expired", config.records as u64);
    let chunks: Vec<Vec<ClaimRequest>> = keys
        .keys()
        .chunks(1000)
        .map(|chunk| {
            chunk
                .iter()
                .map(|k| ClaimRequest::new(scope.clone(), k.clone(), None, Duration::from_secs(60)))
                .collect()
        })
        .collect();
    // A few batches in flight at once, as several producers would fill a store.
    let mut in_flight = tokio::task::JoinSet::new();
    for chunk in chunks {
        if in_flight.len() >= 4 {
            let n = in_flight
                .join_next()
                .await
                .expect("a task in flight")
                .map_err(|e| BenchError::Other(e.to_string()))??;
            progress.advance(n as u64);
        }
        let store = store.clone();
        in_flight.spawn(async move {
            let outcomes = store.claim_many(&chunk, long_ago).await?;
            Ok::<_, oncely::Error>(outcomes.len())
        });
    }
    while let Some(n) = in_flight.join_next().await {
        progress.advance(n.map_err(|e| BenchError::Other(e.to_string()))?? as u64);
    }
    progress.finish();
    Ok(())
}

/// `config.claimers` tasks claim and complete fresh keys for `config.phase`, and, if `until` is
/// given, at least until it is set.
async fn claim_phase(
    name: &str,
    oncely: &Oncely,
    config: &PurgeConfig,
    until: Option<&Arc<AtomicBool>>,
) -> Result<PhaseResult, BenchError> {
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for claimer in 0..config.claimers {
        let (oncely, stop) = (oncely.clone(), stop.clone());
        let tag = format!("{name}-{claimer}-{}", fastrand::u64(..));
        tasks.spawn(async move {
            let scope = Scope::new("bench.live").expect("a valid scope");
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let key = crate::key(&format!("{tag}-{i}"));
                let t0 = Instant::now();
                let outcome = oncely.claim(&scope, &key, None).await?;
                latencies.push(t0.elapsed());
                match outcome {
                    ClaimOutcome::New(claim) => oncely.complete(&claim, b"").await?,
                    other => {
                        return Err(oncely::Error::Corrupt {
                            store: "bench".into(),
                            detail: format!("a fresh key was answered {other:?}"),
                        });
                    }
                }
            }
            Ok(latencies)
        });
    }
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let purge_running = until.is_some_and(|done| !done.load(Ordering::SeqCst));
        if started.elapsed() >= config.phase && !purge_running {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        latencies.extend(joined.map_err(|e| BenchError::Other(e.to_string()))??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let pick = |q: f64| crate::percentile(&latencies, q);
    Ok(PhaseResult {
        name: name.to_owned(),
        claims: latencies.len(),
        elapsed,
        p50: pick(0.5),
        p99: pick(0.99),
        max: latencies.last().copied().unwrap_or_default(),
    })
}

/// The report as an aligned text table.
pub fn format_report(report: &PurgeReport) -> String {
    let mut out = format!(
        "{:<16} {:>9} {:>10} {:>10} {:>10} {:>10}\n",
        "phase", "claims", "claims/s", "p50", "p99", "max"
    );
    for p in &report.phases {
        out.push_str(&format!(
            "{:<16} {:>9} {:>10.0} {:>10} {:>10} {:>10}\n",
            p.name,
            p.claims,
            p.claims as f64 / p.elapsed.as_secs_f64().max(1e-9),
            crate::format_duration(p.p50),
            crate::format_duration(p.p99),
            crate::format_duration(p.max),
        ));
    }
    out.push_str(&format!(
        "purged {} expired records in {:.1} s ({:.0} records/s)\n",
        report.purged,
        report.purge_elapsed.as_secs_f64(),
        report.purged as f64 / report.purge_elapsed.as_secs_f64().max(1e-9)
    ));
    out
}
