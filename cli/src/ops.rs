//! `--metrics-addr`: where `serve`, `consume` and `relay` answer `/metrics`, `/healthz` and
//! `/readyz` (`oncely_http::gateway::ops::OpsServer`).

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::net::TcpListener;

/// Listens on `addr` and says where on stderr (scripts and tests read the two lines).
pub async fn listen(addr: SocketAddr) -> Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for --metrics-addr"))?;
    let bound = listener.local_addr().context("the metrics address")?;
    eprintln!("metrics on http://{bound}/metrics");
    eprintln!("health on http://{bound}/healthz and /readyz");
    Ok(listener)
}
