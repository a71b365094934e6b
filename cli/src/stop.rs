//! Stopping on SIGINT or SIGTERM, with a second signal for stopping at once.

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};

/// SIGINT and SIGTERM, installed before the setup.
pub struct Stop {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Stop {
    pub fn install() -> Result<Stop> {
        Ok(Stop {
            interrupt: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
        })
    }

    pub async fn first(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }

    pub async fn second(mut self) {
        self.first().await
    }
}
