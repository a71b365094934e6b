//! `oncely purge`: remove expired records, in bounded batches.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use oncely::{Oncely, PurgeRun, duration};

/// Arguments of `oncely purge`.
#[derive(Args, Debug)]
pub struct PurgeArgs {
    /// Only remove records that expired at least this long ago (0s, 90s, 15m, 24h, 7d).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = duration::parse)]
    older_than: Duration,

    /// Records removed per store call; small batches keep each transaction short.
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
}

/// Runs `oncely purge`, printing `purged N records`.
///
/// Only one instance purges at a time (a lease on a reserved key, see `Oncely::purge_all`); if
/// another holds it, this one says so on stderr and purges nothing.
pub async fn run(oncely: &Oncely, args: PurgeArgs, out: &mut impl Write) -> Result<ExitCode> {
    let mut total = 0;
    let counter = crate::progress::Counter::new("purged");
    loop {
        match oncely
            .purge_all_reporting(args.older_than, args.batch as usize, |n| {
                counter.add(n as u64)
            })
            .await
            .context("purging expired records")?
        {
            PurgeRun::Done { purged, finished } => {
                total += purged;
                if finished {
                    break;
                }
            }
            PurgeRun::AnotherPurger { retry_after } => {
                eprintln!(
                    "note: another instance is purging this store; its turn ends within {retry_after:?}"
                );
                break;
            }
        }
    }
    drop(counter);
    writeln!(out, "purged {total} records").context("writing standard output")?;
    Ok(ExitCode::SUCCESS)
}
