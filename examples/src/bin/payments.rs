//! Payments: create a charge once, however often the client retries.
//!
//! ```sh
//! cargo run -p oncely-examples --bin payments          # listens on 127.0.0.1:3000
//! curl -i -X POST localhost:3000/charges -H 'Idempotency-Key: order-7-charge' \
//!      -H 'Authorization: Bearer alice' -H 'Content-Type: application/json' \
//!      -d '{"amount": 1200, "currency": "eur"}'
//! # the same command again: the same charge id, `Idempotent-Replayed: true`, no second charge
//! ```
//!
//! The charge is an axum handler; `oncely_http::IdempotencyLayer` in front of it makes a
//! retried POST (a timeout, a dropped connection, a double click) replay the first response.
//! Keys are scoped by the `Authorization` header, so two customers who pick the same key get
//! their own charges. `GET /charges` lists what was really charged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header::AUTHORIZATION};
use axum::routing::post;
use axum::{Json, Router};
use clap::Parser;
use oncely::Oncely;
use oncely_http::{IdempotencyLayer, InFlight};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "A payments API whose POST /charges runs once per Idempotency-Key")]
struct Cli {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: String,
    /// Where keys and stored responses live.
    #[arg(long, default_value = "sqlite:payments.db")]
    store: String,
}

/// The "payment provider": every charge really made, in order.
#[derive(Clone, Default)]
struct Ledger {
    charges: Arc<Mutex<Vec<Value>>>,
    next_id: Arc<AtomicU64>,
}

async fn create_charge(
    State(ledger): State<Ledger>,
    Json(request): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let Some(amount) = request["amount"].as_u64() else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": "amount must be a positive integer (cents)"})),
        );
    };
    let id = ledger.next_id.fetch_add(1, Ordering::SeqCst) + 1;
    let charge = json!({
        "id": format!("ch_{id:06}"),
        "amount": amount,
        "currency": request["currency"].as_str().unwrap_or("eur"),
        "status": "succeeded",
    });
    ledger.charges.lock().unwrap().push(charge.clone());
    (StatusCode::CREATED, Json(charge))
}

async fn list_charges(State(ledger): State<Ledger>) -> Json<Value> {
    Json(Value::Array(ledger.charges.lock().unwrap().clone()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let store = oncely::connect(&cli.store).await?;
    let idempotency = IdempotencyLayer::new(Oncely::new(store))
        .principal_headers([AUTHORIZATION])
        .in_flight(InFlight::Wait(Duration::from_secs(5)));
    let app = Router::new()
        .route("/charges", post(create_charge).get(list_charges))
        .with_state(Ledger::default())
        .layer(idempotency);
    let listener = tokio::net::TcpListener::bind(&cli.listen).await?;
    eprintln!("payments API on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
