//! Consumer offsets kept with the effects, on MySQL/MariaDB: a Kafka consumer whose "consumed up
//! to here" commits in the same transaction as what the messages did.
//!
//! Your handler saves the message's [`Position`] in the transaction of its effect
//! ([`MySqlOffsets::save`]); the consumer (`oncely_kafka::KafkaSource::offsets`) reads the
//! saved offsets back ([`OffsetStore::load`]) whenever a partition is assigned to it and starts
//! there. A crash before the commit loses the effect and the offset together, so the message is
//! read again; after the commit, both are there, so it is not. Nothing is skipped and nothing is
//! applied twice, whatever Kafka's own committed offsets say.
//!
//! Keep the inbox claim ([`crate::inbox`]) in the same transaction: a producer's retry is a
//! second message at a later offset, which only the dedup record catches.
//!
//! **Isolation.** READ COMMITTED or REPEATABLE READ both work: the save is one
//! `INSERT ... ON DUPLICATE KEY UPDATE`, which locks the partition's row and keeps the greater of
//! the stored and the saved offset, so an offset never moves back, however saves interleave.
//! The row lock is held until your transaction ends, so transactions saving the same partition
//! commit one after the other. As with the inbox, InnoDB may pick a transaction as a deadlock
//! victim (error 1213, more often under REPEATABLE READ): it is rolled back whole, the save
//! answers [`Error::Backend`], and you run the transaction again.
//!
//! ```no_run
//! # async fn handle(pool: sqlx::MySqlPool, message: oncely_core::consumer::Message) -> Result<(), Box<dyn std::error::Error>> {
//! use oncely_mysql::offsets::MySqlOffsets;
//!
//! let mut tx = pool.begin().await?;
//! // ... the inbox claim and the effect ...
//! if let Some(position) = message.position() {
//!     MySqlOffsets::save(&mut tx, position).await?;
//! }
//! tx.commit().await?;
//! # Ok(()) }
//! ```

use oncely_core::consumer::{OffsetStore, Position};
use oncely_core::url::redact_password;
use oncely_core::{Error, Result, async_trait};
use sqlx::{MySqlConnection, MySqlPool};

use crate::MySqlStore;
use crate::driver::is_unavailable;

// Never backwards: a late commit of an earlier owner of the partition cannot move it back.
// `next_offset` on the right is the stored row's, VALUES(next_offset) the one being saved.
const SAVE: &str = "INSERT INTO oncely_offsets (consumer_group, topic, `partition`, next_offset) \
     VALUES (?, ?, ?, ?) \
     ON DUPLICATE KEY UPDATE next_offset = GREATEST(next_offset, VALUES(next_offset)), \
     updated_at = CURRENT_TIMESTAMP(6)";
const LOAD: &str = "SELECT `partition`, next_offset FROM oncely_offsets \
     WHERE consumer_group = ? AND topic = ?";

/// The offsets table of one MySQL/MariaDB database (`oncely_offsets`). See the module docs.
#[derive(Clone)]
pub struct MySqlOffsets {
    pool: MySqlPool,
    url: String,
}

impl std::fmt::Debug for MySqlOffsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MySqlOffsets")
            .field("url", &self.url)
            .finish()
    }
}

impl MySqlOffsets {
    /// Connects with a `mysql://` (or `mariadb://`) URL as [`MySqlStore::connect`] does,
    /// applying the migrations (the offsets table among them) unless the URL says
    /// `oncely_migrate=false`.
    pub async fn connect(url: &str) -> Result<Self> {
        let store = MySqlStore::connect(url).await?;
        Ok(MySqlOffsets {
            pool: store.pool.clone(),
            url: store.url.clone(),
        })
    }

    /// The offsets of the database `pool` connects to, as it is (no migration). `url` is only
    /// used in messages.
    pub fn from_pool(pool: MySqlPool, url: &str) -> Self {
        MySqlOffsets {
            pool,
            url: redact_password(url),
        }
    }

    /// Records, in the transaction `conn` belongs to (pass `&mut tx`), that the message at
    /// `position` is consumed: its group resumes the partition after it. An offset never moves
    /// back.
    pub async fn save(conn: &mut MySqlConnection, position: &Position) -> Result<()> {
        sqlx::query(SAVE)
            .bind(position.group.as_bytes())
            .bind(position.topic.as_bytes())
            .bind(position.partition)
            .bind(position.next_offset())
            .execute(conn)
            .await
            .map_err(|e| Error::driver("mysql (your transaction)", is_unavailable(&e), e.into()))?;
        Ok(())
    }
}

#[async_trait]
impl OffsetStore for MySqlOffsets {
    async fn load(&self, group: &str, topic: &str) -> Result<Vec<(i32, i64)>> {
        sqlx::query_as(LOAD)
            .bind(group.as_bytes())
            .bind(topic.as_bytes())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| {
                let reading = format!("reading oncely_offsets (is the schema migrated?): {e}");
                Error::driver(&self.url, is_unavailable(&e), reading.into())
            })
    }
}
