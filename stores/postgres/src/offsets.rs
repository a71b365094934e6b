//! Consumer offsets kept with the effects: a Kafka consumer whose "consumed up to here" commits
//! in the same transaction as what the messages did.
//!
//! Your handler saves the message's [`Position`] in the transaction of its effect
//! ([`PostgresOffsets::save`]); the consumer (`oncely_kafka::KafkaSource::offsets`) reads the
//! saved offsets back ([`OffsetStore::load`]) whenever a partition is assigned to it and starts
//! there. A crash before the commit loses the effect and the offset together, so the message is
//! read again; after the commit, both are there, so it is not. Nothing is skipped and nothing is
//! applied twice, whatever Kafka's own committed offsets say.
//!
//! Keep the inbox claim ([`crate::inbox`]) in the same transaction: a producer's retry is a
//! second message at a later offset, which only the dedup record catches.
//!
//! ```no_run
//! # async fn handle(pool: sqlx::PgPool, message: oncely_core::consumer::Message) -> Result<(), Box<dyn std::error::Error>> {
//! use oncely_postgres::offsets::PostgresOffsets;
//!
//! let mut tx = pool.begin().await?;
//! // ... the inbox claim and the effect ...
//! if let Some(position) = message.position() {
//!     PostgresOffsets::save(&mut tx, position).await?;
//! }
//! tx.commit().await?;
//! # Ok(()) }
//! ```

use oncely_core::consumer::{OffsetStore, Position};
use oncely_core::url::redact_password;
use oncely_core::{Result, async_trait};
use sqlx::{PgConnection, PgPool};

use crate::PostgresStore;
use crate::driver::error;

// Never backwards: a late commit of an earlier owner of the partition cannot move it back.
const SAVE: &str = "INSERT INTO oncely_offsets (consumer_group, topic, partition, next_offset) \
     VALUES ($1, $2, $3, $4) \
     ON CONFLICT (consumer_group, topic, partition) DO UPDATE \
     SET next_offset = GREATEST(oncely_offsets.next_offset, EXCLUDED.next_offset), updated_at = now()";
const LOAD: &str =
    "SELECT partition, next_offset FROM oncely_offsets WHERE consumer_group = $1 AND topic = $2";

/// The offsets table of one PostgreSQL database (`oncely_offsets`). See the module docs.
#[derive(Clone)]
pub struct PostgresOffsets {
    pool: PgPool,
    url: String,
}

impl std::fmt::Debug for PostgresOffsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOffsets")
            .field("url", &self.url)
            .finish()
    }
}

impl PostgresOffsets {
    /// Connects with a `postgres://` URL as [`PostgresStore::connect`] does, applying the
    /// migrations (the offsets table among them) unless the URL says `oncely_migrate=false`.
    pub async fn connect(url: &str) -> Result<Self> {
        let store = PostgresStore::connect(url).await?;
        Ok(PostgresOffsets {
            pool: store.pool.clone(),
            url: store.url.clone(),
        })
    }

    /// The offsets of the database `pool` connects to, as it is (no migration). `url` is only
    /// used in messages.
    pub fn from_pool(pool: PgPool, url: &str) -> Self {
        PostgresOffsets {
            pool,
            url: redact_password(url),
        }
    }

    /// Records, in the transaction `conn` belongs to (pass `&mut tx`), that the message at
    /// `position` is consumed: its group resumes the partition after it. An offset never moves
    /// back.
    pub async fn save(conn: &mut PgConnection, position: &Position) -> Result<()> {
        sqlx::query(SAVE)
            .bind(&position.group)
            .bind(&position.topic)
            .bind(position.partition)
            .bind(position.next_offset())
            .execute(conn)
            .await
            .map_err(|e| error("postgres (your transaction)", e))?;
        Ok(())
    }
}

#[async_trait]
impl OffsetStore for PostgresOffsets {
    async fn load(&self, group: &str, topic: &str) -> Result<Vec<(i32, i64)>> {
        sqlx::query_as(LOAD)
            .bind(group)
            .bind(topic)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| error(&self.url, e))
    }
}
