//! The service side of an outbox under test: its database, enqueueing as a service does, and
//! looking at the table.

use std::time::Duration;

use oncely_core::async_trait;
use oncely_core::outbox::OutboxMessage;
use oncely_mysql::outbox::MySqlOutbox;
use oncely_mysql::sqlx::MySqlPool;
use oncely_postgres::outbox::{Outbox, PostgresOutbox};
use oncely_sqlite::outbox::SqliteOutbox;
use oncely_sqlite::sqlx::SqlitePool;
use sqlx::PgPool;

/// A database holding an outbox, as the service that enqueues sees it.
#[async_trait]
pub trait Service: Send + Sync {
    /// Enqueues `messages` in one transaction, then commits it (or rolls it back); answers their
    /// ids.
    async fn enqueue(&self, messages: &[OutboxMessage], commit: bool) -> Vec<i64>;

    /// Rows with `sent_at` NULL (`sent = false`) or set (`sent = true`).
    async fn count(&self, sent: bool) -> i64;

    /// Rows not yet sent.
    async fn unsent(&self) -> i64 {
        self.count(false).await
    }

    /// Rows in the table, sent or not.
    async fn rows(&self) -> i64 {
        self.count(false).await + self.count(true).await
    }

    /// Marks `ids` sent, `ago` before now.
    async fn mark_sent(&self, ids: &[i64], ago: Duration);
}

fn count_sql(sent: bool) -> &'static str {
    if sent {
        "SELECT count(*) FROM oncely_outbox WHERE sent_at IS NOT NULL"
    } else {
        "SELECT count(*) FROM oncely_outbox WHERE sent_at IS NULL"
    }
}

#[async_trait]
impl Service for PgPool {
    async fn enqueue(&self, messages: &[OutboxMessage], commit: bool) -> Vec<i64> {
        let mut tx = self.begin().await.unwrap();
        let mut ids = Vec::new();
        for m in messages {
            ids.push(
                PostgresOutbox::enqueue(&Outbox::new(), &mut tx, m)
                    .await
                    .unwrap(),
            );
        }
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        ids
    }

    async fn count(&self, sent: bool) -> i64 {
        sqlx::query_scalar(count_sql(sent))
            .fetch_one(self)
            .await
            .unwrap()
    }

    async fn mark_sent(&self, ids: &[i64], ago: Duration) {
        sqlx::query(
            "UPDATE oncely_outbox SET sent_at = now() - make_interval(secs => $1) \
             WHERE id = ANY($2)",
        )
        .bind(ago.as_secs_f64())
        .bind(ids)
        .execute(self)
        .await
        .unwrap();
    }
}

#[async_trait]
impl Service for MySqlPool {
    async fn enqueue(&self, messages: &[OutboxMessage], commit: bool) -> Vec<i64> {
        let mut tx = self.begin().await.unwrap();
        let mut ids = Vec::new();
        for m in messages {
            ids.push(
                MySqlOutbox::enqueue(&Outbox::new(), &mut tx, m)
                    .await
                    .unwrap(),
            );
        }
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        ids
    }

    async fn count(&self, sent: bool) -> i64 {
        oncely_mysql::sqlx::query_scalar(count_sql(sent))
            .fetch_one(self)
            .await
            .unwrap()
    }

    async fn mark_sent(&self, ids: &[i64], ago: Duration) {
        for id in ids {
            oncely_mysql::sqlx::query(
                "UPDATE oncely_outbox SET sent_at = NOW(6) - INTERVAL ? MICROSECOND WHERE id = ?",
            )
            .bind(ago.as_micros() as i64)
            .bind(id)
            .execute(self)
            .await
            .unwrap();
        }
    }
}

#[async_trait]
impl Service for SqlitePool {
    async fn enqueue(&self, messages: &[OutboxMessage], commit: bool) -> Vec<i64> {
        let mut tx = self.begin_with("BEGIN IMMEDIATE").await.unwrap();
        let mut ids = Vec::new();
        for m in messages {
            ids.push(
                SqliteOutbox::enqueue(&Outbox::new(), &mut tx, m)
                    .await
                    .unwrap(),
            );
        }
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        ids
    }

    async fn count(&self, sent: bool) -> i64 {
        oncely_sqlite::sqlx::query_scalar(count_sql(sent))
            .fetch_one(self)
            .await
            .unwrap()
    }

    async fn mark_sent(&self, ids: &[i64], ago: Duration) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        for id in ids {
            oncely_sqlite::sqlx::query("UPDATE oncely_outbox SET sent_at = ?1 WHERE id = ?2")
                .bind((now - ago).as_millis() as i64)
                .bind(id)
                .execute(self)
                .await
                .unwrap();
        }
    }
}
