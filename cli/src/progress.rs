//! Progress of long work (`purge`, `dedup` of a file, `relay` catching up) on stderr, when it is
//! a terminal; nothing at all otherwise, so logs and pipes see only the final summary line.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A running count and the time so far, redrawn in place; cleared when dropped.
pub struct Counter(Option<ProgressBar>);

impl Counter {
    /// Counts `what` (`purged`, `lines read`) on a terminal's stderr.
    pub fn new(what: &'static str) -> Counter {
        if !std::io::stderr().is_terminal() {
            return Counter(None);
        }
        let bar =
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_message(what);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg}: {human_pos} ({elapsed})")
                .expect("a valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Counter(Some(bar))
    }

    /// Adds `n` to the count.
    pub fn add(&self, n: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(n);
        }
    }

    /// Replaces the text before the count.
    pub fn say(&self, what: String) {
        if let Some(bar) = &self.0 {
            bar.set_message(what);
        }
    }

    /// Sets the count.
    pub fn set(&self, n: u64) {
        if let Some(bar) = &self.0 {
            bar.set_position(n);
        }
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        if let Some(bar) = self.0.take() {
            bar.finish_and_clear();
        }
    }
}
