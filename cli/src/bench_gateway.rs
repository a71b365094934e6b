//! `oncely bench --gateway`: what `oncely serve` adds to a request against calling the upstream
//! directly, for pass-through, a first execution and a replay ([`oncely_bench::gateway`]), with
//! the gateway started in this process from `oncely serve`'s own code and defaults.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use oncely_bench::gateway::{Gateway, GatewayConfig, format_table};
use oncely_bench::{BenchError, Progress, StoreKind};

use crate::serve::InProcess;

/// `oncely serve --upstream URL --listen 127.0.0.1:0`, in this process.
struct Serve;

impl Gateway for Serve {
    type Running = InProcess;

    async fn start(
        &self,
        store_url: &str,
        upstream: &str,
    ) -> Result<(SocketAddr, InProcess), BenchError> {
        let flags = ["--upstream", upstream, "--listen", "127.0.0.1:0"];
        let running = InProcess::start(store_url, &flags)
            .await
            .map_err(|e| BenchError::Other(format!("starting the gateway: {e:#}")))?;
        Ok((running.addr, running))
    }

    async fn stop(&self, running: InProcess) {
        running.stop().await
    }
}

/// Runs the gateway benchmark on fresh stores of the kind `config.store_url` names and prints
/// the table.
pub fn run(
    config: GatewayConfig,
    progress: &dyn Progress,
    out: &mut impl Write,
) -> Result<std::process::ExitCode> {
    let results =
        oncely_bench::gateway::run(&config, &Serve, progress).context("gateway benchmark")?;
    let url = oncely::backend::url::redact_password(&config.store_url);
    let stores = match config.store {
        StoreKind::Memory => "memory".to_owned(),
        StoreKind::Sqlite => format!("sqlite (new files in {})", config.dir.display()),
        StoreKind::Postgres => format!("postgres (fresh schemas on {url})"),
        StoreKind::Mysql => format!("mysql (fresh databases on {url})"),
        StoreKind::Redis => format!("redis (fresh key prefixes on {url})"),
    };
    writeln!(
        out,
        "{} POSTs per contender from {} keep-alive connections, {}-byte JSON answers from an \
         upstream in this process; gateway: oncely serve's defaults, store {stores}, one per \
         contender",
        config.requests,
        config.concurrency,
        oncely_bench::gateway::RESPONSE_BYTES,
    )?;
    write!(out, "{}", format_table(&results))?;
    Ok(std::process::ExitCode::SUCCESS)
}
