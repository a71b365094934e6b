//! `oncely stats`: what the store holds.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use oncely::Oncely;
use serde_json::json;

/// Arguments of `oncely stats`.
#[derive(Args, Debug)]
pub struct StatsArgs {
    #[command(flatten)]
    output: crate::output::OutputArgs,
}

/// Runs `oncely stats`.
pub async fn run(oncely: &Oncely, args: StatsArgs, out: &mut impl Write) -> Result<ExitCode> {
    let stats = oncely.stats().await.context("reading store statistics")?;
    let text = if args.output.is_json() {
        let value = json!({
            "records": stats.records,
            "in_progress": stats.in_progress,
            "completed": stats.completed,
            "expired": stats.expired,
            "bytes": stats.bytes,
        });
        format!("{value}\n")
    } else {
        let bytes = stats
            .bytes
            .map_or_else(|| "-".to_owned(), |b| b.to_string());
        format!(
            "records                   {}\nin progress               {}\ncompleted                 {}\n\
             expired (awaiting purge)  {}\nbytes                     {bytes}\n",
            stats.records, stats.in_progress, stats.completed, stats.expired,
        )
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing standard output")?;
    Ok(ExitCode::SUCCESS)
}
