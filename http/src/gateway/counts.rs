//! [`Counts`]: what happened to each request, for the summary line and the Prometheus metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

/// What happened to one request the [`Gateway`](super::Gateway) answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Claimed and forwarded; the upstream answered.
    Executed,
    /// The stored response, replayed by the layer.
    Replayed,
    /// 409: the first request with the key was still in flight.
    InFlight,
    /// 422: the key was used with another request.
    Mismatch,
    /// The layer's 400 or 413 (or 500 for a stored response it could not decode).
    Rejected,
    /// 503: the store could not be reached.
    StoreUnavailable,
    /// 502 or 504: the upstream gave no response, or none within the
    /// [timeout](super::GatewayOptions::timeout).
    UpstreamFailed,
    /// Forwarded without a key, or with a method the layer does not apply to.
    PassedThrough,
    /// The client went away before the response was ready.
    Abandoned,
}

impl Outcome {
    /// Every outcome, in the summary line's order.
    pub const ALL: [Outcome; 9] = [
        Outcome::Executed,
        Outcome::Replayed,
        Outcome::InFlight,
        Outcome::Mismatch,
        Outcome::Rejected,
        Outcome::StoreUnavailable,
        Outcome::UpstreamFailed,
        Outcome::PassedThrough,
        Outcome::Abandoned,
    ];

    /// Its name in the summary line.
    fn summary_name(self) -> &'static str {
        match self {
            Outcome::Executed => "executed",
            Outcome::Replayed => "replayed",
            Outcome::InFlight => "in flight (409)",
            Outcome::Mismatch => "key reused (422)",
            Outcome::Rejected => "rejected",
            Outcome::StoreUnavailable => "store unavailable (503)",
            Outcome::UpstreamFailed => "upstream failed (502/504)",
            Outcome::PassedThrough => "passed through",
            Outcome::Abandoned => "abandoned",
        }
    }

    /// Its `outcome` label in the metrics: `executed`, `replayed`, `in_flight`, `key_reused`,
    /// `rejected`, `store_unavailable`, `upstream_failed`, `passed_through`, `abandoned`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Executed => "executed",
            Outcome::Replayed => "replayed",
            Outcome::InFlight => "in_flight",
            Outcome::Mismatch => "key_reused",
            Outcome::Rejected => "rejected",
            Outcome::StoreUnavailable => "store_unavailable",
            Outcome::UpstreamFailed => "upstream_failed",
            Outcome::PassedThrough => "passed_through",
            Outcome::Abandoned => "abandoned",
        }
    }

    fn index(self) -> usize {
        Outcome::ALL.iter().position(|o| *o == self).unwrap_or(0)
    }
}

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Requests of one outcome: how many, and how long each took until its response was ready.
#[derive(Debug, Default)]
struct Histogram {
    count: AtomicU64,
    sum_micros: AtomicU64,
    /// Not cumulative: `buckets[i]` counts durations in `(BUCKETS[i-1], BUCKETS[i]]`.
    buckets: [AtomicU64; BUCKETS.len()],
}

impl Histogram {
    fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&le| secs <= le) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::SeqCst);
    }
}

/// How many requests a [`Gateway`](super::Gateway) answered with each [`Outcome`], and how
/// long they took: for a summary line and Prometheus metrics.
///
/// Cheap to clone; clones share the counts, which go on as the gateway serves.
#[derive(Clone, Debug, Default)]
pub struct Counts(Arc<ByOutcome>);

#[derive(Debug, Default)]
struct ByOutcome([Histogram; Outcome::ALL.len()]);

impl Counts {
    fn histogram(&self, outcome: Outcome) -> &Histogram {
        &self.0.0[outcome.index()]
    }

    /// How many requests had `outcome` so far.
    pub fn count(&self, outcome: Outcome) -> u64 {
        self.histogram(outcome).count.load(Ordering::SeqCst)
    }

    /// `requests N: executed N, replayed N, in flight (409) N, key reused (422) N, rejected N,
    /// store unavailable (503) N, upstream failed (502/504) N, passed through N, abandoned N`:
    /// every count, in one line (`oncely serve`'s last).
    pub fn summary(&self) -> String {
        let total: u64 = Outcome::ALL.iter().map(|&o| self.count(o)).sum();
        let parts: Vec<String> = Outcome::ALL
            .iter()
            .map(|&o| format!("{} {}", o.summary_name(), self.count(o)))
            .collect();
        format!("requests {total}: {}", parts.join(", "))
    }

    /// The counts in the Prometheus text exposition format (version 0.0.4):
    /// `oncely_serve_requests_total` and the latency histogram
    /// `oncely_serve_request_duration_seconds` (until the response was ready), by `outcome`
    /// ([`Outcome::label`]).
    pub fn prometheus(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        out.push_str(
            "# HELP oncely_serve_requests_total Requests answered by the gateway, by outcome.\n\
             # TYPE oncely_serve_requests_total counter\n",
        );
        for outcome in Outcome::ALL {
            let _ = writeln!(
                out,
                "oncely_serve_requests_total{{outcome=\"{}\"}} {}",
                outcome.label(),
                self.count(outcome)
            );
        }
        out.push_str(
            "# HELP oncely_serve_request_duration_seconds Time from a request's arrival until \
             its response was ready to send, by outcome.\n\
             # TYPE oncely_serve_request_duration_seconds histogram\n",
        );
        for outcome in Outcome::ALL {
            let histogram = self.histogram(outcome);
            let label = outcome.label();
            let count = histogram.count.load(Ordering::SeqCst);
            let mut cumulative = 0;
            for (le, bucket) in BUCKETS.iter().zip(&histogram.buckets) {
                cumulative += bucket.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "oncely_serve_request_duration_seconds_bucket{{outcome=\"{label}\",le=\"{le}\"}} {}",
                    cumulative.min(count)
                );
            }
            let sum = histogram.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "oncely_serve_request_duration_seconds_bucket{{outcome=\"{label}\",le=\"+Inf\"}} {count}\n\
                 oncely_serve_request_duration_seconds_sum{{outcome=\"{label}\"}} {sum}\n\
                 oncely_serve_request_duration_seconds_count{{outcome=\"{label}\"}} {count}"
            );
        }
        out
    }
}

/// Counts a request once: with its outcome, or as abandoned if its future is dropped first.
pub(super) struct CountOnDrop {
    counts: Counts,
    started: Instant,
    outcome: Outcome,
}

impl CountOnDrop {
    /// Starts timing a request; dropped without [`done`](Self::done), it counts as abandoned.
    pub(super) fn start(counts: Counts) -> Self {
        CountOnDrop {
            counts,
            started: Instant::now(),
            outcome: Outcome::Abandoned,
        }
    }

    pub(super) fn done(mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl Drop for CountOnDrop {
    fn drop(&mut self) {
        self.counts
            .histogram(self.outcome)
            .observe(self.started.elapsed());
    }
}

impl Counts {
    /// Serves `GET /metrics` on `listener`, the [Prometheus text](Counts::prometheus), with
    /// `/healthz` and `/readyz` (always ready: see [`OpsServer`](super::ops::OpsServer) for a
    /// readiness check), until the future is dropped.
    pub async fn serve_metrics(self, listener: TcpListener) {
        super::ops::OpsServer::new(move || self.prometheus())
            .serve(listener)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_every_count() {
        let counts = Counts::default();
        for outcome in [Outcome::Executed, Outcome::Executed] {
            counts.histogram(outcome).observe(Duration::from_millis(3));
        }
        for _ in 0..3 {
            counts
                .histogram(Outcome::Replayed)
                .observe(Duration::from_millis(30));
        }
        assert_eq!(
            counts.summary(),
            "requests 5: executed 2, replayed 3, in flight (409) 0, key reused (422) 0, \
             rejected 0, store unavailable (503) 0, upstream failed (502/504) 0, \
             passed through 0, abandoned 0"
        );
    }

    #[test]
    fn metrics_are_cumulative_histograms_by_outcome() {
        let counts = Counts::default();
        let executed = counts.histogram(Outcome::Executed);
        executed.observe(Duration::from_millis(3));
        executed.observe(Duration::from_millis(30));
        executed.observe(Duration::from_secs(60));
        let text = counts.prometheus();
        for line in [
            "oncely_serve_requests_total{outcome=\"executed\"} 3",
            "oncely_serve_requests_total{outcome=\"replayed\"} 0",
            "oncely_serve_request_duration_seconds_bucket{outcome=\"executed\",le=\"0.001\"} 0",
            "oncely_serve_request_duration_seconds_bucket{outcome=\"executed\",le=\"0.005\"} 1",
            "oncely_serve_request_duration_seconds_bucket{outcome=\"executed\",le=\"0.05\"} 2",
            "oncely_serve_request_duration_seconds_bucket{outcome=\"executed\",le=\"10\"} 2",
            "oncely_serve_request_duration_seconds_bucket{outcome=\"executed\",le=\"+Inf\"} 3",
            "oncely_serve_request_duration_seconds_sum{outcome=\"executed\"} 60.033",
            "oncely_serve_request_duration_seconds_count{outcome=\"executed\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
