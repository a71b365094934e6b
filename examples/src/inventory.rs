//! Order placed -> inventory reserved: a broker consumer whose effect lives in PostgreSQL.
//! The runnable example (`order-inventory`) runs it, and so do the kill -9 proof's consumer
//! processes (`brokers/suite` compiles this very file, so testing one broker does not build the
//! examples crate and every broker with it).
//!
//! Each `OrderPlaced` message (`{"orderId": "o-1", "item": "apple", "qty": 2}`) reserves stock:
//! one row in `orders`, and `stock.qty` goes down by the order's quantity. Both writes and the
//! dedup record commit in **one** transaction (the transactional inbox,
//! [`oncely_postgres::inbox`]), so a consumer killed at any moment - after the commit and
//! before the ack, in the middle of the transaction - never applies an order twice and never
//! loses one: the redelivery finds the record and is acked as a duplicate, or finds nothing and
//! does the work.
//!
//! A message read from Kafka also carries its position (topic, partition, offset): it is saved
//! in the same transaction ([`oncely_postgres::offsets`]), so a consumer that keeps its offsets
//! here resumes exactly after the last committed effect.
//!
//! `orders.order_id` is deliberately *not* unique: the database does not hide a double apply,
//! so the proofs can see one if it ever happens. `"item": "poison"` is an order for an item
//! that does not exist, which fails every time and ends in the dead-letter destination.

use oncely_core::consumer::{Handled, Handler, HandlerError, Message, OncelyHandler};
use oncely_core::{BoxError, Error, Fingerprint, Key, Oncely, Scope, async_trait};
use oncely_postgres::inbox::{Inbox, InboxClaim, PostgresInbox};
use oncely_postgres::offsets::PostgresOffsets;
use sqlx::{PgConnection, PgPool};

/// The items the example stocks.
pub const ITEMS: [&str; 3] = ["apple", "pear", "plum"];

/// The item that does not exist: its orders always fail.
pub const POISON_ITEM: &str = "poison";

/// Creates the example's tables (and oncely's) and sets the stock of `items` to `qty` each.
pub async fn setup(url: &str, items: &[&str], qty: i64) -> Result<(), BoxError> {
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

// The same for the example's own statements: a server down or restarting is an outage.
fn db_error(error: sqlx::Error) -> HandlerError {
    if oncely_postgres::is_unavailable(&error) {
        HandlerError::unavailable(error)
    } else {
        HandlerError::failed(error)
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
        reserve(&mut tx, &order).await?;
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

/// The effect: the order's row, and its quantity taken from the item's stock, in `tx`. An
/// unknown item fails it, and the caller's transaction rolls back with it.
async fn reserve(tx: &mut PgConnection, order: &Order) -> Result<(), HandlerError> {
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
    Ok(())
}

/// The same effect with its dedup records in another store - the `Oncely` passed, on MySQL,
/// Redis or any store: the key claimed there, the order reserved in its own transaction here,
/// then the key completed there ([`OncelyHandler`]). Unlike [`ReserveInventory`], a consumer
/// killed between the commit here and the completion there leaves the key to its lease, and
/// the redelivery after it reserves the order again; nothing else doubles it. The store-restart
/// proofs run it with each store restarted under it.
pub fn reserve_with_store(pool: PgPool, oncely: Oncely, scope: Scope) -> impl Handler {
    OncelyHandler::new(oncely, scope, move |_key, message: Message| {
        let pool = pool.clone();
        async move {
            let order = parse(&message).map_err(BoxError::from)?;
            let mut tx = pool.begin().await?;
            reserve(&mut tx, &order).await.map_err(BoxError::from)?;
            tx.commit().await?;
            Ok::<_, BoxError>(b"reserved".to_vec())
        }
    })
}
