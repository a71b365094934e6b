//! `--metrics-addr`: where `serve`, `consume` and `relay` answer `/metrics`, `/healthz` and
//! `/readyz` (`oncely_http::gateway::ops::OpsServer`).

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

/// Histogram buckets of durations, in seconds: 0.5 ms to 10 s.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Histogram buckets of group-commit batch sizes.
const CALLERS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// The process's Prometheus recorder of the library's metrics (installed on first use), whose
/// `render()` is the `/metrics` text.
pub fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(oncely::telemetry::GROUP_COMMIT_BATCH.into()),
                        CALLERS,
                    )
                })
                .and_then(PrometheusBuilder::install_recorder)
                .expect("the process's only metrics recorder, with non-empty buckets");
            oncely::telemetry::describe();
            oncely::consumer::describe();
            oncely::relay::describe();
            // Histograms keep their samples until upkeep folds them in.
            let upkeep = handle.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    upkeep.run_upkeep();
                }
            });
            handle
        })
        .clone()
}

/// Listens on `addr` and says where on stderr (scripts and tests read the two lines).
pub async fn listen(addr: SocketAddr) -> Result<TcpListener> {
    // Installed before anything more is recorded.
    recorder();
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for --metrics-addr"))?;
    let bound = listener.local_addr().context("the metrics address")?;
    eprintln!("metrics on http://{bound}/metrics");
    eprintln!("health on http://{bound}/healthz and /readyz");
    Ok(listener)
}

/// A served endpoint, stopped when dropped.
pub struct Serving(pub tokio::task::JoinHandle<()>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.abort();
    }
}
