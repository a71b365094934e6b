//! Order placed -> inventory reserved, over NATS JetStream, RabbitMQ, Kafka or SQS, with
//! PostgreSQL.
//!
//! ```sh
//! PG=postgres://postgres@127.0.0.1:5432/test
//! cargo run -p oncely-examples --bin order-inventory -- setup --postgres $PG
//! cargo run -p oncely-examples --bin order-inventory -- publish --to nats://127.0.0.1:4222/ORDERS --orders 1000 --duplicates 200
//! cargo run -p oncely-examples --bin order-inventory -- consume --from nats://127.0.0.1:4222/ORDERS/inventory --postgres $PG
//! ```
//!
//! `publish` creates the stream (`ORDERS`, subject `orders.in`), the queue or the topic if
//! missing; for RabbitMQ use `--to amqp://127.0.0.1:5672/orders` and
//! `--from amqp://guest:guest@127.0.0.1:5672/orders`; for Kafka `--to kafka://127.0.0.1:9092/orders`
//! and `--from 'kafka://127.0.0.1:9092/orders?group=inventory'`. The Kafka consumer keeps its
//! offsets in PostgreSQL, saved with each order (`oncely_postgres::offsets`), and starts each
//! partition it is given there. For SQS (here moto, an emulator, over plain HTTP)
//! `--to sqs+http://127.0.0.1:5999/orders` (the queue and its dead-letter queue `orders-dlq`
//! are created if missing) and `--from 'sqs+http://127.0.0.1:5999/orders?wait=1s'`; against
//! AWS `sqs://sqs.REGION.amazonaws.com/orders?region=REGION` with credentials in
//! `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::sync::Arc;

use oncely::broker::AnySource;
use oncely::consumer::Handler;
use oncely::kafka::KafkaSource;
use oncely::postgres::offsets::PostgresOffsets;
use oncely::{Consumer, Oncely, Scope};
use oncely_examples::{ITEMS, ReserveInventory, publish, reserve_with_store, setup};
use sqlx::postgres::PgPoolOptions;

#[derive(Parser)]
#[command(
    about = "Order placed -> inventory reserved: each order applied once, whatever the broker redelivers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates the tables (orders, stock, oncely's records) and stocks every item.
    Setup {
        /// PostgreSQL URL.
        #[arg(long)]
        postgres: String,
        /// Units of each item.
        #[arg(long, default_value_t = 1_000_000)]
        stock: i64,
    },
    /// Publishes orders, some of them twice (same orderId, as a producer retry would).
    Publish {
        /// `nats://HOST[:PORT]/STREAM`, `amqp://[USER:PASS@]HOST[:PORT]/QUEUE`,
        /// `kafka://HOST[:PORT]/TOPIC` or `sqs[+http]://HOST[:PORT]/QUEUE`.
        #[arg(long)]
        to: String,
        /// Distinct orders.
        #[arg(long, default_value_t = 1000)]
        orders: usize,
        /// Orders published a second time.
        #[arg(long, default_value_t = 200)]
        duplicates: usize,
    },
    /// Reserves inventory for each order until Ctrl-C.
    Consume {
        /// `nats://HOST/STREAM/CONSUMER`, `amqp://USER:PASS@HOST/QUEUE`,
        /// `kafka://HOST/TOPIC?group=NAME` or `sqs[+http]://HOST[:PORT]/QUEUE`.
        #[arg(long)]
        from: String,
        /// PostgreSQL URL.
        #[arg(long)]
        postgres: String,
        /// Orders handled at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Keeps the dedup records in this store (`mysql://...`, `redis://...`, any URL
        /// `oncely::connect` takes) rather than in PostgreSQL with the orders: each key is
        /// claimed there, the order reserved here, then the key completed there.
        #[arg(long)]
        claims: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup { postgres, stock } => {
            setup(&postgres, &ITEMS, stock)
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            println!("stocked {} items with {stock} units each", ITEMS.len());
        }
        Command::Publish {
            to,
            orders,
            duplicates,
        } => {
            let payloads: Vec<Vec<u8>> = (0..orders)
                .chain((0..duplicates.min(orders)).map(|n| n * 7 % orders))
                .map(|n| {
                    let item = ITEMS[n % ITEMS.len()];
                    serde_json::json!({"orderId": format!("o-{n}"), "item": item, "qty": 1})
                        .to_string()
                        .into_bytes()
                })
                .collect();
            publish(&to, &payloads).await?;
            println!("published {} messages ({orders} orders)", payloads.len());
        }
        Command::Consume {
            from,
            postgres,
            concurrency,
            claims,
        } => {
            let pool = PgPoolOptions::new()
                .max_connections(concurrency as u32 + 2)
                .connect(&postgres)
                .await
                .with_context(|| format!("PostgreSQL at {postgres}"))?;
            let source = if oncely::BrokerKind::from_url(&from) == Ok(oncely::BrokerKind::Kafka) {
                // Offsets kept with the orders: each partition resumes after its last order.
                let offsets = PostgresOffsets::from_pool(pool.clone(), &postgres);
                AnySource::Kafka(Box::new(
                    KafkaSource::offsets(from.parse()?, Arc::new(offsets)).await?,
                ))
            } else {
                oncely::broker::connect(&from).await?
            };
            let scope = Scope::new("inventory")?;
            let handler: Arc<dyn Handler> = match claims {
                Some(url) => {
                    let store = oncely::connect(&url).await?;
                    Arc::new(reserve_with_store(pool.clone(), Oncely::new(store), scope))
                }
                None => Arc::new(ReserveInventory::new(pool.clone(), scope)),
            };
            let consumer = Consumer::new(handler, "/orderId".parse()?).concurrency(concurrency);
            eprintln!("consuming {from}; Ctrl-C to stop");
            let stop = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            let report = consumer.run(source, stop).await?;
            let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
                .fetch_one(&pool)
                .await?;
            eprintln!("{report:?}; {orders} orders in the table");
        }
    }
    Ok(())
}
