//! `--purge-every`: the long-running commands purge expired records in the background, so a
//! store stays bounded without a cron job (`Oncely::purge_every`).

use std::time::Duration;

use clap::Args;
use oncely::{Oncely, duration};

/// Records removed per statement by the background purge.
const BATCH: usize = 10_000;

/// The background purge's flag.
#[derive(Args, Debug)]
pub struct PurgeArgs {
    /// How often expired records are purged in the background (500ms, 90s, 15m, 24h), or off.
    /// With several instances on one store, one purges at a time.
    #[arg(
        long,
        env = "ONCELY_PURGE_EVERY",
        value_name = "DURATION|off",
        default_value = "10m",
        value_parser = parse_every
    )]
    purge_every: Every,
}

/// A period, or none.
#[derive(Clone, Copy, Debug)]
struct Every(Option<Duration>);

fn parse_every(text: &str) -> Result<Every, String> {
    if text == "off" {
        return Ok(Every(None));
    }
    match duration::parse(text).map_err(|e| e.to_string())? {
        every if every.is_zero() => Err("--purge-every must be longer than 0s, or off".into()),
        every => Ok(Every(Some(every))),
    }
}

/// The purge, running until dropped.
pub struct Purging(Option<tokio::task::JoinHandle<()>>);

impl PurgeArgs {
    /// Starts purging `oncely`'s store in the background, unless `off`.
    pub fn start(&self, oncely: &Oncely) -> Purging {
        Purging(
            self.purge_every
                .0
                .map(|every| tokio::spawn(oncely.clone().purge_every(every, BATCH))),
        )
    }
}

impl Drop for Purging {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}
