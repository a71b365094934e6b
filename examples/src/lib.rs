//! Order placed -> inventory reserved: a broker consumer whose effect lives in PostgreSQL.
//!
//! Each `OrderPlaced` message reserves stock: one row in `orders`, and `stock.qty` goes down
//! by the order's quantity. Both writes and the dedup record commit in **one** transaction
//! (the transactional inbox, [`oncely_postgres::inbox`]), so a consumer killed at any moment -
//! after the commit and before the ack, in the middle of the transaction - never applies an
//! order twice and never loses one: the redelivery finds the record and is acked as a
//! duplicate, or finds nothing and does the work.
//!
//! A message read from Kafka also carries its position (topic, partition, offset): it is saved
//! in the same transaction ([`oncely_postgres::offsets`]), so a consumer that keeps its offsets
//! here resumes exactly after the last committed effect.
//!
//! `orders.order_id` is deliberately *not* unique: the database does not hide a double apply,
//! so the proofs (`tests/`) can see one if it ever happens.
//!
//! The message: `{"orderId": "o-1", "item": "apple", "qty": 2}`; `"item": "poison"` is an
//! order for an item that does not exist, which fails every time and ends in the dead-letter
//! queue.

use anyhow::{Context, bail};
use oncely::nats::async_nats;
use oncely::rabbitmq::lapin;
use oncely_core::consumer::{Handled, Handler, HandlerError, Message};
use oncely_core::outbox::Publisher as _;
use oncely_core::{Error, Fingerprint, Key, Scope, async_trait};
use oncely_postgres::inbox::{Inbox, InboxClaim, PostgresInbox};
use oncely_postgres::offsets::PostgresOffsets;
use sqlx::PgPool;

/// The items the example stocks.
pub const ITEMS: [&str; 3] = ["apple", "pear", "plum"];

/// The item that does not exist: its orders always fail.
pub const POISON_ITEM: &str = "poison";

/// Creates the example's tables (and oncely's) and sets the stock of `items` to `qty` each.
pub async fn setup(url: &str, items: &[&str], qty: i64) -> anyhow::Result<()> {
    oncely_postgres::PostgresStore::connect(url).await?;
    let pool = PgPool::connect(url).await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS orders (\
             order_id text NOT NULL, item text NOT NULL, qty bigint NOT NULL, \
             placed_at timestamptz NOT NULL DEFAULT now()); \
         CREATE TABLE IF NOT EXISTS stock (item text PRIMARY KEY, qty bigint NOT NULL);",
    )
    .execute(&pool)
    .await?;
    for item in items {
        sqlx::query(
            "INSERT INTO stock (item, qty) VALUES ($1, $2) \
             ON CONFLICT (item) DO UPDATE SET qty = EXCLUDED.qty",
        )
        .bind(item)
        .bind(qty)
        .execute(&pool)
        .await?;
    }
    pool.close().await;
    Ok(())
}

/// Reserves inventory for each order, once per key, in one transaction with the dedup record.
#[derive(Clone, Debug)]
pub struct ReserveInventory {
    pool: PgPool,
    inbox: Inbox,
}

impl ReserveInventory {
    /// The handler over `pool`, recording keys in `scope`.
    pub fn new(pool: PgPool, scope: Scope) -> Self {
        ReserveInventory {
            pool,
            inbox: Inbox::new(scope),
        }
    }
}

#[derive(Debug)]
struct Order {
    order_id: String,
    item: String,
    qty: i64,
}

fn parse(message: &Message) -> Result<Order, HandlerError> {
    let json: serde_json::Value =
        serde_json::from_slice(message.payload()).map_err(HandlerError::rejected)?;
    let field = |name: &str| {
        json.get(name)
            .ok_or_else(|| HandlerError::rejected(format!("order without `{name}`")))
    };
    Ok(Order {
        order_id: field("orderId")?.as_str().unwrap_or_default().to_owned(),
        item: field("item")?.as_str().unwrap_or_default().to_owned(),
        qty: field("qty")?
            .as_i64()
            .ok_or_else(|| HandlerError::rejected("`qty` is not an integer"))?,
    })
}

// A store that cannot be reached is an outage, not the message's fault; anything else the
// database says (a deadlock, a serialization failure) is worth another attempt.
fn store_error(error: Error) -> HandlerError {
    match error {
        Error::Unavailable { .. } => HandlerError::unavailable(error),
        other => HandlerError::failed(other),
    }
}

fn db_error(error: sqlx::Error) -> HandlerError {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            HandlerError::unavailable(error)
        }
        other => HandlerError::failed(other),
    }
}

#[async_trait]
impl Handler for ReserveInventory {
    async fn handle(&self, key: &Key, message: &Message) -> Result<Handled, HandlerError> {
        let order = parse(message)?;
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let fingerprint = Some(Fingerprint::of_bytes(message.payload()));
        match self
            .inbox
            .claim(&mut tx, key, fingerprint)
            .await
            .map_err(store_error)?
        {
            InboxClaim::New => {}
            InboxClaim::Duplicate(_) => {
                // Consumed all the same: a consumer keeping its offsets here moves past it.
                if let Some(position) = message.position() {
                    PostgresOffsets::save(&mut tx, position)
                        .await
                        .map_err(store_error)?;
                    tx.commit().await.map_err(db_error)?;
                }
                return Ok(Handled::Duplicate);
            }
            InboxClaim::InProgress { retry_after } => {
                return Ok(Handled::InProgress { retry_after });
            }
            InboxClaim::Conflict { .. } => {
                return Err(HandlerError::rejected(format!(
                    "order key `{key}` was already used with a different order"
                )));
            }
        }
        sqlx::query("INSERT INTO orders (order_id, item, qty) VALUES ($1, $2, $3)")
            .bind(&order.order_id)
            .bind(&order.item)
            .bind(order.qty)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        let reserved = sqlx::query("UPDATE stock SET qty = qty - $2 WHERE item = $1")
            .bind(&order.item)
            .bind(order.qty)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        if reserved.rows_affected() == 0 {
            // Rolled back with the transaction: the order is not placed, the key stays free.
            return Err(HandlerError::failed(format!(
                "no stock row for item `{}`",
                order.item
            )));
        }
        self.inbox
            .record_outcome(&mut tx, key, b"reserved")
            .await
            .map_err(store_error)?;
        // A Kafka consumer's offset commits with the effect (oncely_postgres::offsets).
        if let Some(position) = message.position() {
            PostgresOffsets::save(&mut tx, position)
                .await
                .map_err(store_error)?;
        }
        tx.commit().await.map_err(db_error)?;
        Ok(Handled::Done)
    }
}

/// Publishes `payloads` to `nats://HOST[:PORT]/STREAM` (subject `<stream in lower case>.in`,
/// the stream created if missing), `amqp://[USER:PASS@]HOST[:PORT]/QUEUE` (the default
/// exchange, the queue declared durable if missing) or `kafka://HOST[:PORT]/TOPIC` (created
/// with three partitions if missing; each message keyed by its `orderId`) or
/// `sqs[+http]://HOST[:PORT]/QUEUE` (a standard queue, created with its dead-letter queue
/// `QUEUE-dlq` if missing; sent by SendMessageBatch, ten messages a request), each confirmed by
/// the broker.
pub async fn publish(to: &str, payloads: &[Vec<u8>]) -> anyhow::Result<()> {
    let (scheme, rest) = to
        .split_once("://")
        .context("a URL like nats://HOST/STREAM")?;
    let (server, name) = rest
        .rsplit_once('/')
        .context("the URL ends with /STREAM or /QUEUE")?;
    match scheme {
        "nats" => {
            let client = async_nats::connect(server).await?;
            let jetstream = async_nats::jetstream::new(client);
            let subject = subject_of(name);
            jetstream
                .get_or_create_stream(async_nats::jetstream::stream::Config {
                    name: name.to_owned(),
                    subjects: vec![subject.clone()],
                    ..Default::default()
                })
                .await?;
            for payload in payloads {
                jetstream
                    .publish(subject.clone(), payload.clone().into())
                    .await?
                    .await?;
            }
        }
        "amqp" => {
            let url = format!("amqp://{server}");
            let connection =
                lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await?;
            let channel = connection.create_channel().await?;
            channel
                .queue_declare(
                    name.into(),
                    lapin::options::QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    lapin::types::FieldTable::default(),
                )
                .await?;
            channel
                .confirm_select(lapin::options::ConfirmSelectOptions::default())
                .await?;
            for payload in payloads {
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        name.into(),
                        lapin::options::BasicPublishOptions::default(),
                        payload,
                        lapin::BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?
                    .await?;
                if !confirm.is_ack() {
                    bail!("RabbitMQ did not confirm a publish: {confirm:?}");
                }
            }
            connection.close(200, "done".into()).await?;
        }
        "kafka" => {
            // Three partitions, each order's copies keyed by its id: one order, one partition.
            oncely::kafka::create_topic(server, name, 3).await?;
            let publisher =
                oncely::kafka::KafkaPublisher::open(server, Some(name.to_owned())).await?;
            for payload in payloads {
                let order: serde_json::Value = serde_json::from_slice(payload)?;
                let id = order["orderId"].as_str().unwrap_or_default().to_owned();
                let message = Message::new(payload.clone(), name).with_ordering_key(id);
                publisher.publish(None, &message).await?;
            }
        }
        "sqs" | "sqs+http" => publish_sqs(to, payloads).await?,
        other => bail!("unknown scheme `{other}`: use nats://, amqp://, kafka:// or sqs://"),
    }
    Ok(())
}

/// [`publish`] to SQS: the queue and its dead-letter queue created if missing (the consumer
/// needs both), then the payloads, ten a SendMessageBatch. A standard queue only: a FIFO
/// queue's deduplication would drop the very re-publishes the example is about.
async fn publish_sqs(to: &str, payloads: &[Vec<u8>]) -> anyhow::Result<()> {
    let options: oncely::sqs::SqsOptions = to.parse()?;
    if options.queue.ends_with(".fifo") {
        bail!("publish to a standard queue: a FIFO queue drops re-publishes by their dedup id");
    }
    let client = oncely::sqs::client(&options)?;
    for name in [
        options.queue.clone(),
        options.dead_letter_queue_or_default(),
    ] {
        client
            .create_queue()
            .queue_name(&name)
            .send()
            .await
            .with_context(|| format!("create the SQS queue {name} at {}", options.endpoint))?;
    }
    let queue_url = client
        .get_queue_url()
        .queue_name(&options.queue)
        .send()
        .await?
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    for chunk in payloads.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(n, payload)| {
                Ok(aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(n.to_string())
                    .message_body(String::from_utf8(payload.clone())?)
                    .build()?)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let sent = client
            .send_message_batch()
            .queue_url(&queue_url)
            .set_entries(Some(entries))
            .send()
            .await?;
        if let Some(failed) = sent.failed().first() {
            bail!(
                "SQS refused a message: {}: {}",
                failed.code(),
                failed.message().unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// The subject [`publish`] uses for a stream: `ORDERS` -> `orders.in`.
pub fn subject_of(stream: &str) -> String {
    format!("{}.in", stream.to_lowercase())
}
