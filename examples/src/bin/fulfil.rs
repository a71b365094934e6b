//! Fulfil: an order in three steps, each a call to another service (charge the card, reserve
//! the stock, send the confirmation), so that a process that dies between two steps is
//! resumed by the next attempt at its first unfinished step: no call is made twice.
//!
//! ```sh
//! cargo run -p oncely-examples --bin fulfil -- --order o-1 --services http://127.0.0.1:3100 \
//!     --stop-after charge &     # charges, records the charge, then waits: kill -9 it there
//! kill -9 %1
//! cargo run -p oncely-examples --bin fulfil -- --order o-1 --services http://127.0.0.1:3100
//! # waits out the dead attempt's lease, then reserves and confirms: the charge is the one
//! # recorded before, and the payment service is not called again
//! ```
//!
//! Each step is a [`Steps::step`](oncely::Steps::step) of [`Oncely::run_steps`]: its result is
//! recorded before the next step starts. Each call also carries the step's derived key
//! ([`Steps::derive`](oncely::Steps::derive)) as its `Idempotency-Key`, for the one window steps
//! cannot close: a death after the service acted and before its answer was recorded.

use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Bytes;
use oncely::{BoxError, Key, Oncely, RunError, RunOutcome, Scope, Steps};

/// The steps, in order: each is a `POST {services}/{step}`.
const STEPS: [&str; 3] = ["charge", "reserve", "confirm"];

#[derive(Parser)]
#[command(about = "Fulfil an order in three steps, each done once across crashes")]
struct Cli {
    /// The order to fulfil.
    #[arg(long)]
    order: String,
    /// Where the services listen: each step POSTs to `{services}/{step}`.
    #[arg(long)]
    services: String,
    /// Where the orders' records and their steps live.
    #[arg(long, default_value = "sqlite:fulfil.db")]
    store: String,
    /// How long a dead attempt holds the order before another may take it over.
    #[arg(long, default_value = "2s", value_parser = oncely::duration::parse_positive)]
    lease: Duration,
    /// Stop for good at this point (`start`, or after the step of that name is recorded), and
    /// say so on stdout: where a test kills the process.
    #[arg(long)]
    stop_after: Option<String>,
}

/// `POST {services}/{step}` for `order`, with the step's derived key: the service's answer
/// ([`oncely_examples::call`]: once the request may have reached the service, an error is an
/// `OutcomeUnknown`).
async fn call(services: &str, step: &str, order: &Key, key: &Key) -> Result<Vec<u8>, BoxError> {
    let request = hyper::Request::post(format!("{services}/{step}"))
        .header("idempotency-key", key.as_str())
        .body(Full::new(Bytes::from(order.as_str().to_owned())))?;
    Ok(oncely_examples::call(request).await?.body)
}

/// Stops here for good if asked to: says so, then never returns.
async fn stop_if(cli: &Cli, point: &str) {
    if cli.stop_after.as_deref() == Some(point) {
        println!("stopped after {point}");
        std::future::pending::<()>().await;
    }
}

async fn fulfil(cli: &Cli, steps: Steps) -> Result<Vec<u8>, BoxError> {
    stop_if(cli, "start").await;
    let mut answers = Vec::new();
    for step in STEPS {
        let key = steps.derive(step);
        let answer = steps
            .step(step, || call(&cli.services, step, steps.key(), &key))
            .await?;
        answers.push(String::from_utf8_lossy(&answer).into_owned());
        stop_if(cli, step).await;
    }
    Ok(answers.join(", ").into_bytes())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let store = oncely::connect(&cli.store).await?;
    let oncely = Oncely::new(store).with_lease(cli.lease);
    let scope = Scope::new("fulfilment")?;
    let order = Key::new(cli.order.clone())?;
    loop {
        let outcome = oncely
            .run_steps(&scope, &order, None, |steps| fulfil(&cli, steps))
            .await;
        match outcome {
            Ok(RunOutcome::Executed(done)) => {
                println!("fulfilled: {}", String::from_utf8_lossy(&done));
                return Ok(());
            }
            Ok(RunOutcome::Replayed(done)) => {
                println!("already fulfilled: {}", String::from_utf8_lossy(&done));
                return Ok(());
            }
            Err(RunError::InProgress { retry_after }) => {
                eprintln!("order {order} held by another attempt; again in {retry_after:?}");
                tokio::time::sleep(retry_after).await;
            }
            Err(error) => bail!("order {order}: {error}"),
        }
    }
}
