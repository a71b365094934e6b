//! What oncely is measured against, per store: the naive pattern and the store's own limit.

pub mod memory;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod sqlite;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::{BenchError, Latencies, Progress};

/// Connections the naive pattern uses on a server: a typical pool.
pub const NAIVE_CONNECTIONS: usize = 8;
/// Connections the batched limit uses on a server: the fastest of 1, 2, 4 and 8 measured here
/// for PostgreSQL (measured on this machine kind), kept for MySQL too.
pub const LIMIT_CONNECTIONS: usize = 4;
/// Keys per transaction of the batched limit.
pub const LIMIT_BATCH: usize = 1000;

/// What [`drive`] measured.
pub(crate) struct Driven {
    pub latencies: Latencies,
    pub new: usize,
    pub elapsed: Duration,
}

/// Runs `units` units of work (`unit_events` events each, the last one possibly fewer, of
/// `events` in all) on the connections, each connection taking the next unit as soon as it is
/// free. `work(conn, unit)` does one unit and gives the connection back with the number of new
/// keys; every event of a unit is timed as the unit's wall time.
pub(crate) async fn drive<C, F, Fut>(
    connections: Vec<C>,
    events: usize,
    unit_events: usize,
    progress: &dyn Progress,
    work: F,
) -> Result<Driven, BenchError>
where
    C: Send + 'static,
    F: Fn(C, usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(C, usize), BenchError>> + Send,
{
    let units = events.div_ceil(unit_events);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in connections {
        let (next, done, work) = (next.clone(), done.clone(), work.clone());
        tasks.spawn(async move {
            let mut latencies = Latencies::for_events(events);
            let mut new = 0;
            loop {
                let unit = next.fetch_add(1, Ordering::Relaxed);
                if unit >= units {
                    break;
                }
                let t0 = Instant::now();
                let (back, n) = work(conn, unit).await?;
                conn = back;
                let first = unit * unit_events;
                let range = first..(first + unit_events).min(events);
                done.fetch_add(range.len(), Ordering::Relaxed);
                latencies.record_range(range, t0.elapsed());
                new += n;
            }
            Ok::<_, BenchError>((latencies, new))
        });
    }
    let mut latencies = Latencies::for_events(events);
    let mut new = 0;
    let mut reported = 0;
    while !tasks.is_empty() {
        match tokio::time::timeout(Duration::from_millis(100), tasks.join_next()).await {
            Ok(Some(joined)) => {
                let (l, n) = joined.map_err(|e| BenchError::Other(e.to_string()))??;
                latencies.extend(l);
                new += n;
            }
            Ok(None) => break,
            Err(_) => {}
        }
        let now_done = done.load(Ordering::Relaxed);
        progress.advance((now_done - reported) as u64);
        reported = now_done;
    }
    let elapsed = started.elapsed();
    progress.advance((events - reported.min(events)) as u64);
    progress.finish();
    Ok(Driven {
        latencies,
        new,
        elapsed,
    })
}
