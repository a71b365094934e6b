//! `oncely bench --purge N`: claim latency while N expired records are purged, against claims
//! alone (issue 3's retention benchmark). Unlike the throughput benchmark, it runs on the store
//! `--store` names, which must be empty: a dedicated database, schema, file or Redis prefix.

use std::io::Write;
use std::time::Duration;

use anyhow::{Result, bail};
use oncely_bench::Progress;
use oncely_bench::purge::{PurgeConfig, format_report};

/// Runs the purge benchmark on `store_url` and prints the report.
pub fn run(
    store_url: &str,
    config: PurgeConfig,
    progress: &dyn Progress,
    out: &mut impl Write,
) -> Result<std::process::ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        let store = oncely::connect(store_url).await?;
        let held = store
            .stats(oncely::Clock::now(&oncely::SystemClock))
            .await?;
        if held.records > 0 {
            bail!(
                "bench --purge fills and purges the store it is given, so it must be empty; \
                 {store_url} holds {} records (point --store at a dedicated database, schema, \
                 file or ?prefix=)",
                held.records
            );
        }
        Ok(oncely_bench::purge::run(store, &config, progress).await?)
    })?;
    writeln!(
        out,
        "store {store_url}: {} expired records purged in batches of {} while {} claimants claim \
         and complete fresh keys; the same claims alone for {:?} first",
        config.records, config.batch, config.claimers, config.phase
    )?;
    write!(out, "{}", format_report(&report))?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// The default duration of each phase of claims.
pub const DEFAULT_PHASE: Duration = Duration::from_secs(10);
