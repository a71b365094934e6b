//! Checkout: charge an order through a payments API once, even when this process crashes
//! after the charge and before it recorded the order as done.
//!
//! ```sh
//! cargo run -p oncely-examples --bin payments &                               # 127.0.0.1:3000
//! cargo run -p oncely-examples --bin checkout -- --order o-1 --crash-after-charge
//! # charged, then the process aborts: the order's claim is left to its lease (2 s here)
//! cargo run -p oncely-examples --bin checkout -- --order o-1
//! # takes the order over after the lease and calls the payments API again, with the same key:
//! # the API answers with the first charge (Idempotent-Replayed), and nobody is charged twice
//! curl -s localhost:3000/charges                                              # one charge
//! ```
//!
//! The order is claimed in oncely's store; the charge's idempotency key is derived from the
//! order (`Key::derive`), so every attempt at this order sends the payments API the same one.
//! A fresh key per attempt (a UUID made at the call) would charge the order again after a
//! crash; the order's own key would collide with any other step that calls the same API.

use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Bytes;
use oncely::{BoxError, Key, Oncely, RunError, RunOutcome, Scope};

#[derive(Parser)]
#[command(about = "Charge an order once through the payments example, across crashes")]
struct Cli {
    /// The order to charge.
    #[arg(long)]
    order: String,
    /// The amount, in cents.
    #[arg(long, default_value_t = 1200)]
    amount: u64,
    /// The payments API (`--bin payments`).
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    payments: String,
    /// Where the orders' claims and outcomes live.
    #[arg(long, default_value = "sqlite:checkout.db")]
    store: String,
    /// How long a crashed attempt holds the order before another may take it over.
    #[arg(long, default_value = "2s", value_parser = oncely::duration::parse_positive)]
    lease: Duration,
    /// Abort the process right after the charge, before the order is recorded as done.
    #[arg(long)]
    crash_after_charge: bool,
}

/// POSTs the charge with `key` as its Idempotency-Key: the charge, and whether the API replayed
/// it. [`oncely_examples::call`] tells its failures apart: once the request may have reached
/// the API, the error is an `OutcomeUnknown`, and the order stays held until its lease ends
/// rather than released as if nothing was charged.
async fn charge(payments: &str, key: &Key, amount: u64) -> Result<(String, bool), BoxError> {
    let request = hyper::Request::post(format!("{payments}/charges"))
        .header("idempotency-key", key.as_str())
        .header("authorization", "Bearer checkout")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!(
            r#"{{"amount": {amount}, "currency": "eur"}}"#
        ))))?;
    let answer = oncely_examples::call(request).await?;
    let replayed = answer.headers.contains_key("idempotent-replayed");
    Ok((String::from_utf8_lossy(&answer.body).into_owned(), replayed))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let store = oncely::connect(&cli.store).await?;
    let oncely = Oncely::new(store).with_lease(cli.lease);
    let scope = Scope::new("checkout")?;
    let order = Key::new(cli.order.clone())?;
    // The same on every attempt at this order, and only for its charge.
    let charge_key = order.derive(&scope, "charge");
    loop {
        let outcome = oncely
            .run(&scope, &order, None, || async {
                let (charge, replayed) = charge(&cli.payments, &charge_key, cli.amount).await?;
                if replayed {
                    eprintln!("the payments API replayed the charge it made before");
                }
                if cli.crash_after_charge {
                    eprintln!("charged {charge}; crashing before the order is recorded");
                    std::process::abort();
                }
                Ok::<_, BoxError>(charge.into_bytes())
            })
            .await;
        match outcome {
            Ok(RunOutcome::Executed(charge)) => {
                println!("charged: {}", String::from_utf8_lossy(&charge));
                return Ok(());
            }
            Ok(RunOutcome::Replayed(charge)) => {
                println!("already charged: {}", String::from_utf8_lossy(&charge));
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
