//! Consumer offsets kept with the effects, in a SQLite file: a Kafka consumer whose "consumed up
//! to here" commits in the same transaction as what the messages did.
//!
//! Your handler saves the message's [`Position`] in the transaction of its effect
//! ([`SqliteOffsets::save`]); the consumer (`oncely_kafka::KafkaSource::offsets`) reads the
//! saved offsets back ([`OffsetStore::load`]) whenever a partition is assigned to it and starts
//! there. A crash before the commit loses the effect and the offset together, so the message is
//! read again; after the commit, both are there, so it is not. Nothing is skipped and nothing is
//! applied twice, whatever Kafka's own committed offsets say.
//!
//! Keep the inbox claim ([`crate::inbox`]) in the same transaction: a producer's retry is a
//! second message at a later offset, which only the dedup record catches.
//!
//! Begin the transaction with `BEGIN IMMEDIATE`, as for the [inbox](crate::inbox): it takes
//! SQLite's write lock up front, waiting on the busy timeout, so transactions that save commit
//! one after the other and an offset never moves back (the save keeps the greater of the stored
//! and the saved offset). On a file without the offsets table, the first save applies the schema
//! in your transaction.
//!
//! ```no_run
//! # async fn handle(pool: oncely_sqlite::sqlx::SqlitePool, message: oncely_core::consumer::Message) -> Result<(), Box<dyn std::error::Error>> {
//! use oncely_sqlite::offsets::SqliteOffsets;
//!
//! let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
//! // ... the inbox claim and the effect ...
//! if let Some(position) = message.position() {
//!     SqliteOffsets::save(&mut tx, position).await?;
//! }
//! tx.commit().await?;
//! # Ok(()) }
//! ```

use oncely_core::consumer::{OffsetStore, Position};
use oncely_core::{Result, async_trait};
use sqlx::sqlite::{SqliteConnection, SqlitePool};

use crate::SqliteOptions;
use crate::inbox::{apply_migrations, backend, driver, is_missing_schema, open_pool};
use crate::outbox::now_ms;

// Never backwards: a late commit of an earlier owner of the partition cannot move it back.
const SAVE: &str = "INSERT INTO oncely_offsets \
     (consumer_group, topic, partition, next_offset, updated_at) VALUES (?1, ?2, ?3, ?4, ?5) \
     ON CONFLICT (consumer_group, topic, partition) DO UPDATE \
     SET next_offset = max(next_offset, excluded.next_offset), updated_at = excluded.updated_at";
const LOAD: &str =
    "SELECT partition, next_offset FROM oncely_offsets WHERE consumer_group = ?1 AND topic = ?2";

/// The offsets table of one SQLite file (`oncely_offsets`). See the module docs.
#[derive(Clone)]
pub struct SqliteOffsets {
    pool: SqlitePool,
    url: String,
}

impl std::fmt::Debug for SqliteOffsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteOffsets")
            .field("url", &self.url)
            .finish()
    }
}

impl SqliteOffsets {
    /// Opens the file of a `sqlite:PATH` URL (the store's URL forms and parameters, of which
    /// `busy_timeout_ms` and `migrate` apply), creating it if needed and applying the
    /// migrations (the offsets table among them) unless the URL says `migrate=false`.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::open(url.parse()?).await
    }

    /// Opens the file `options` name, as [`connect`](Self::connect) does.
    pub async fn open(options: SqliteOptions) -> Result<Self> {
        let pool = open_pool(&options, "the offsets").await?;
        Ok(Self::from_pool(pool, &options.url()))
    }

    /// The offsets of the file `pool` is open on, as it is (no migration). `url` is only used in
    /// messages.
    pub fn from_pool(pool: SqlitePool, url: &str) -> Self {
        SqliteOffsets {
            pool,
            url: url.to_owned(),
        }
    }

    /// Records, in the transaction `conn` belongs to (pass `&mut tx`, begun with
    /// `BEGIN IMMEDIATE`), that the message at `position` is consumed: its group resumes the
    /// partition after it. An offset never moves back.
    pub async fn save(conn: &mut SqliteConnection, position: &Position) -> Result<()> {
        match write(conn, position).await {
            Err(e) if is_missing_schema(&e) => {
                apply_migrations(conn).await?;
                write(conn, position).await
            }
            other => other,
        }
        .map_err(backend)
    }
}

async fn write(conn: &mut SqliteConnection, position: &Position) -> sqlx::Result<()> {
    sqlx::query(SAVE)
        .bind(&position.group)
        .bind(&position.topic)
        .bind(position.partition)
        .bind(position.next_offset())
        .bind(now_ms())
        .execute(conn)
        .await
        .map(drop)
}

#[async_trait]
impl OffsetStore for SqliteOffsets {
    async fn load(&self, group: &str, topic: &str) -> Result<Vec<(i32, i64)>> {
        sqlx::query_as(LOAD)
            .bind(group)
            .bind(topic)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| {
                driver(
                    &self.url,
                    "reading oncely_offsets (is the schema migrated?)",
                    e,
                )
            })
    }
}
