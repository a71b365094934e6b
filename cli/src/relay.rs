//! `oncely relay`: publish an outbox to a broker until SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use oncely::backend::OutboxStore;
use oncely::duration;
use oncely::outbox::AfterParked;
use oncely::relay::{self, AnyOutbox, Relay};
use oncely_http::gateway::ops::OpsServer;

/// Arguments of `oncely relay`.
#[derive(Args, Debug)]
pub struct RelayArgs {
    /// The outbox's database: postgres://USER@HOST/DB, mysql://USER@HOST/DB (MariaDB too) or
    /// sqlite:PATH (one relay at a time per file; others wait as standbys). The oncely_outbox
    /// table is created on first use unless the URL says oncely_migrate=false (migrate=false for
    /// SQLite).
    #[arg(
        long,
        env = "ONCELY_OUTBOX",
        hide_env_values = true,
        value_name = "URL"
    )]
    outbox: String,

    /// Where to publish: nats://[USER:PASS@]HOST[:PORT][/SUBJECT] (JetStream; a stream must
    /// capture the subject), amqp://[USER:PASS@]HOST[:PORT][/VHOST]/ROUTING_KEY[?exchange=NAME]
    /// (RabbitMQ; without exchange the routing key is a queue),
    /// kafka://HOST[:PORT][,HOST...][/TOPIC] (the idempotent producer; the row's aggregate is
    /// the Kafka key, its id the Oncely-Message-Id header) or sqs://HOST[:PORT][/QUEUE] (SQS
    /// over HTTPS, sqs+http://HOST:PORT[/QUEUE] for an emulator; existing queues; the row's id
    /// in the Oncely-Message-Id attribute; on a .fifo queue its aggregate is the message group
    /// and its id the deduplication id). The subject, routing key, topic or queue is for rows
    /// that name no destination of their own.
    #[arg(
        long,
        env = "ONCELY_RELAY_TO",
        hide_env_values = true,
        value_name = "URL"
    )]
    to: String,

    /// Rows per batch: one transaction, holding its aggregates while their rows are published.
    #[arg(long, value_name = "N", default_value_t = relay::DEFAULT_BATCH as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,

    /// Park a row once the broker refused it this many times (a message too large, a
    /// destination that does not exist; a broker that is down or slow is no refusal): it is
    /// set aside with its error for `oncely outbox list|retry|drop`.
    #[arg(long, value_name = "N", default_value_t = relay::DEFAULT_PARK_AFTER,
          value_parser = clap::value_parser!(u32).range(1..))]
    park_after: u32,

    /// What the rows of an aggregate after a parked one do: wait (until it is retried or
    /// dropped: the aggregate's order holds) or go-on (published without it).
    #[arg(long, value_name = "WAIT|GO-ON", default_value = "wait", value_parser = parse_after_parked)]
    after_parked: AfterParked,

    /// Delete sent rows once they are older than this (90s, 15m, 24h, 7d).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = duration::parse)]
    retention: Duration,

    /// Serve Prometheus metrics at http://ADDR/metrics (rows published, failed and purged;
    /// the backlog and its oldest row's age), with /healthz and /readyz (503 while the outbox's
    /// database cannot be reached).
    #[arg(long, env = "ONCELY_METRICS_ADDR", value_name = "HOST:PORT")]
    metrics_addr: Option<std::net::SocketAddr>,
}

fn parse_after_parked(text: &str) -> Result<AfterParked, String> {
    match text {
        "wait" => Ok(AfterParked::Wait),
        "go-on" => Ok(AfterParked::GoOn),
        other => Err(format!("`{other}` is neither wait nor go-on")),
    }
}

/// How often the backlog shown at /metrics is counted again.
const BACKLOG_EVERY: Duration = Duration::from_secs(1);

/// Runs the relay until SIGINT or SIGTERM, then prints `relay: published N, failed N, purged N
/// in Ts` on stderr. Failures while running (database or broker down, a refused publish) are
/// printed as `warning: ...` and retried with back-off; the rows stay unsent until published.
pub async fn run(args: RelayArgs) -> Result<ExitCode> {
    // The broker first: a wrong --to then leaves the database untouched.
    let publisher = relay::connect_publisher(&args.to)
        .await
        .context("connecting to the broker")?;
    let outbox = relay::connect_outbox(&args.outbox)
        .await
        .context("opening the outbox")?;
    let relay = Relay::new(outbox.clone(), publisher)
        .batch(args.batch as usize)
        .retention(args.retention)
        .park_after(args.park_after)
        .after_parked(args.after_parked)
        .on_error(|e| eprintln!("warning: {}", e.to_string().replace(['\r', '\n'], " ")));
    let _ops = match args.metrics_addr {
        Some(addr) => Some(serve_ops(addr, outbox.clone()).await?),
        None => None,
    };
    // Catching up, on a terminal: the rows published so far and the backlog left.
    let shown = std::io::stderr()
        .is_terminal()
        .then(|| Tasks(vec![tokio::spawn(show_progress(outbox, relay.progress()))]));
    let report = relay.run(shutdown()?).await.context("relaying")?;
    drop(shown);
    eprintln!("relay: {report}");
    Ok(ExitCode::SUCCESS)
}

/// The metrics and health endpoints on `addr`, the backlog counted every second: the tasks
/// stop when the answer is dropped.
async fn serve_ops(addr: SocketAddr, outbox: AnyOutbox) -> Result<Tasks> {
    let listener = crate::ops::listen(addr).await?;
    let counting = tokio::spawn({
        let outbox = outbox.clone();
        async move {
            loop {
                if let Ok(backlog) = outbox.backlog().await {
                    relay::record_backlog(backlog);
                }
                tokio::time::sleep(BACKLOG_EVERY).await;
            }
        }
    });
    let library = crate::ops::recorder();
    let metrics = move || library.render();
    let ops = OpsServer::new(metrics).ready_when(move || {
        let outbox = outbox.clone();
        async move {
            outbox
                .backlog()
                .await
                .map(|_| ())
                .map_err(|e| format!("the outbox: {e}"))
        }
    });
    Ok(Tasks(vec![counting, tokio::spawn(ops.serve(listener))]))
}

/// Redraws the rows published and the backlog every second, until aborted.
async fn show_progress(outbox: AnyOutbox, progress: relay::RelayProgress) {
    let counter = crate::progress::Counter::new("published");
    loop {
        if let Ok(backlog) = outbox.backlog().await {
            counter.say(format!("published (backlog {})", backlog.unsent));
        }
        counter.set(progress.report().published);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Tasks aborted when dropped.
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Completes on the first stop signal (see `stop`).
fn shutdown() -> Result<impl std::future::Future<Output = ()> + Send> {
    let mut stop = crate::stop::Stop::install()?;
    Ok(async move { stop.first().await })
}
