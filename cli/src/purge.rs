//! `oncely purge`: remove expired records, in bounded batches.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use oncely::Oncely;

use crate::duration;

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
pub async fn run(oncely: &Oncely, args: PurgeArgs, out: &mut impl Write) -> Result<ExitCode> {
    let batch = args.batch as usize;
    let mut total = 0;
    loop {
        let purged = oncely
            .purge(args.older_than, batch)
            .await
            .context("purging expired records")?;
        total += purged;
        if purged < batch {
            break;
        }
    }
    writeln!(out, "purged {total} records").context("writing standard output")?;
    Ok(ExitCode::SUCCESS)
}
