//! The naive pattern in memory: a mutex-guarded set, checked, then inserted into.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Instant;

use crate::{Latencies, Progress, RunResult, Workload, summarize};

/// Check-then-insert on a `Mutex<HashSet<String>>`, one event at a time on one core. It is the
/// floor of what a process-local dedup costs; it has no leases, outcomes or retention.
pub fn naive(workload: &Workload, preload: &Workload, progress: &dyn Progress) -> RunResult {
    let seen = Mutex::new(HashSet::with_capacity(workload.len() + preload.len()));
    for k in preload.keys() {
        seen.lock().unwrap().insert(k.as_str().to_owned());
    }
    progress.start("naive", workload.len() as u64);
    let mut latencies = Latencies::for_events(workload.len());
    let mut new = 0;
    let started = Instant::now();
    for (i, key) in workload.keys().iter().enumerate() {
        let t0 = Latencies::start(i);
        let exists = seen.lock().unwrap().contains(key.as_str());
        if !exists {
            seen.lock().unwrap().insert(key.as_str().to_owned());
            new += 1;
        }
        latencies.record(t0);
        if i % 65_536 == 0 {
            progress.advance(65_536.min(workload.len() - i) as u64);
        }
    }
    let elapsed = started.elapsed();
    progress.finish();
    summarize("naive", workload.len(), latencies, new, elapsed, None)
}
