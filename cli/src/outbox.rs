//! `oncely outbox list|retry|drop`: the rows a relay parked because the broker kept refusing
//! them (see `oncely relay --park-after`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use oncely::backend::OutboxStore;
use oncely::outbox::{OutboxId, ParkedRow};
use oncely::relay;
use serde_json::json;

/// Arguments of `oncely outbox`.
#[derive(Args, Debug)]
pub struct OutboxArgs {
    /// The outbox's database, as `oncely relay --outbox` takes it: postgres://USER@HOST/DB,
    /// mysql://USER@HOST/DB or sqlite:PATH.
    #[arg(
        long,
        env = "ONCELY_OUTBOX",
        hide_env_values = true,
        value_name = "URL",
        global = true
    )]
    outbox: Option<String>,

    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// List the parked rows: id, aggregate, destination, refusals, how long ago, the error.
    List {
        /// At most this many, oldest first.
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        output: crate::output::OutputArgs,
    },
    /// Put parked rows back in line: the relay publishes them again, in their aggregate's order.
    Retry(Rows),
    /// Delete parked rows: they are never published, and their aggregates go on.
    Drop(Rows),
}

/// Which parked rows.
#[derive(Args, Debug)]
struct Rows {
    /// Their ids (from `oncely outbox list`).
    #[arg(value_name = "ID", required_unless_present = "all")]
    ids: Vec<OutboxId>,
    /// Every parked row.
    #[arg(long, conflicts_with = "ids")]
    all: bool,
}

/// The most rows `--all` acts on per statement.
const ALL_CHUNK: usize = 1000;

/// Runs `oncely outbox`.
pub async fn run(args: OutboxArgs, out: &mut impl Write) -> Result<ExitCode> {
    let Some(url) = args.outbox else {
        bail!("--outbox URL (or ONCELY_OUTBOX) names the outbox's database");
    };
    let outbox = relay::connect_outbox(&url)
        .await
        .context("opening the outbox")?;
    let text = match args.action {
        Action::List { limit, output } => {
            let rows = outbox.parked(limit).await.context("reading parked rows")?;
            if output.is_json() {
                format!("{}\n", json!(rows.iter().map(row_json).collect::<Vec<_>>()))
            } else {
                rows.iter().map(row_text).collect::<String>()
            }
        }
        Action::Retry(rows) => {
            let n = act(&outbox, rows, Verb::Retry).await?;
            format!("retried {n}\n")
        }
        Action::Drop(rows) => {
            let n = act(&outbox, rows, Verb::Drop).await?;
            format!("dropped {n}\n")
        }
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing standard output")?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Clone, Copy)]
enum Verb {
    Retry,
    Drop,
}

/// Retries or drops `rows` (every parked row with `--all`); answers how many were parked.
async fn act(outbox: &relay::AnyOutbox, rows: Rows, verb: Verb) -> Result<u64> {
    let once = async |ids: &[OutboxId]| match verb {
        Verb::Retry => outbox.retry_parked(ids).await,
        Verb::Drop => outbox.drop_parked(ids).await,
    };
    if !rows.all {
        return once(&rows.ids).await.context("changing parked rows");
    }
    let mut done = 0;
    loop {
        let ids: Vec<OutboxId> = outbox
            .parked(ALL_CHUNK)
            .await
            .context("reading parked rows")?
            .iter()
            .map(|row| row.id)
            .collect();
        if ids.is_empty() {
            return Ok(done);
        }
        done += once(&ids).await.context("changing parked rows")?;
    }
}

fn row_json(row: &ParkedRow) -> serde_json::Value {
    json!({
        "id": row.id,
        "aggregate": row.aggregate,
        "destination": row.destination,
        "attempts": row.attempts,
        "error": row.error,
        "parked_seconds": row.parked_for.as_secs_f64(),
        "payload_bytes": row.payload_bytes,
    })
}

fn row_text(row: &ParkedRow) -> String {
    format!(
        "{}\taggregate {}\tto {}\t{} refusals\tparked {}s ago\t{} bytes\t{}\n",
        row.id,
        row.aggregate,
        row.destination.as_deref().unwrap_or("(default)"),
        row.attempts,
        row.parked_for.as_secs(),
        row.payload_bytes,
        row.error.replace(['\r', '\n'], " ")
    )
}
