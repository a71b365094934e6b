//! The outbox on SQLite and its relay, against the real brokers (NATS JetStream, RabbitMQ,
//! Kafka, SQS), on files in temporary directories: the shared scenarios, and the lease that lets one
//! relay at a time publish a file's outbox.

mod support;

use std::time::Duration;

use oncely_core::outbox::{AfterParked, OutboxBatch, OutboxStore};
use oncely_sqlite::outbox::SqliteOutboxStore;
use oncely_sqlite::sqlx::SqlitePool;
use oncely_sqlite::sqlx::sqlite::SqliteConnectOptions;
use support::scenarios::{self, event};
use support::{Destination, Service};
use tempfile::TempDir;

/// A migrated outbox in a fresh file: the relay's store, a pool for the "service", and the
/// directory (removed when dropped).
async fn outbox() -> (SqliteOutboxStore, SqlitePool, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let store = SqliteOutboxStore::connect(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .busy_timeout(Duration::from_secs(5));
    (store, SqlitePool::connect_with(options).await.unwrap(), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_nats_committed_is_published_and_rolled_back_never_is() {
    let (store, pool, _dir) = outbox().await;
    let destination = Destination::nats("sqlite_commit").await;
    scenarios::committed_is_published_and_rolled_back_never_is(store, &pool, destination).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_rabbitmq_committed_is_published_and_rolled_back_never_is() {
    let (store, pool, _dir) = outbox().await;
    let destination = Destination::rabbit("sqlite_commit").await;
    scenarios::committed_is_published_and_rolled_back_never_is(store, &pool, destination).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_rabbitmq_two_relays_at_once_publish_each_row_once_in_order_per_aggregate() {
    let (store, pool, _dir) = outbox().await;
    let destination = Destination::rabbit("sqlite_two").await;
    scenarios::two_relays_keep_each_aggregate_in_order(store, &pool, destination).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_nats_two_relays_at_once_publish_each_row_once_in_order_per_aggregate() {
    let (store, pool, _dir) = outbox().await;
    let destination = Destination::nats("sqlite_two").await;
    scenarios::two_relays_keep_each_aggregate_in_order(store, &pool, destination).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_kafka_committed_is_published_and_rolled_back_never_is() {
    let (store, pool, _dir) = outbox().await;
    let destination = Destination::kafka("sqlite_commit").await;
    scenarios::committed_is_published_and_rolled_back_never_is(store, &pool, destination).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_kafka_two_relays_at_once_publish_each_row_once_in_order_per_aggregate() {
    let (store, pool, _dir) = outbox().await;
    let destination = Destination::kafka("sqlite_two").await;
    scenarios::two_relays_keep_each_aggregate_in_order(store, &pool, destination).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_sqs_fifo_committed_is_published_and_rolled_back_never_is() {
    let (store, pool, _dir) = outbox().await;
    let destination = Destination::sqs_fifo("sqlite_commit").await;
    scenarios::committed_is_published_and_rolled_back_never_is(store, &pool, destination).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_sqs_fifo_two_relays_at_once_publish_each_row_once_in_order_per_aggregate() {
    let (store, pool, _dir) = outbox().await;
    let destination = Destination::sqs_fifo("sqlite_two").await;
    scenarios::two_relays_keep_each_aggregate_in_order(store, &pool, destination).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sent_rows_are_purged_after_the_retention_and_unsent_ones_never() {
    let (store, pool, _dir) = outbox().await;
    scenarios::sent_rows_are_purged_after_the_retention_and_unsent_ones_never(&store, &pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_the_backlog_counts_unsent_rows_and_the_oldest_ones_wait() {
    let (store, pool, _dir) = outbox().await;
    scenarios::the_backlog_counts_unsent_rows_and_the_oldest_ones_wait(&store, &pool).await;
}

/// One relay at a time: a second waits while the first holds the lease, and takes over once it
/// has expired; the first, fenced out, can neither mark its rows sent nor take another batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_lease_was_taken_over_cannot_mark_rows_sent_or_take_more() {
    let (store, pool, _dir) = outbox().await;
    let first = store.lease(Duration::from_secs(1));
    let second = first.clone();
    let ids = pool
        .enqueue(&[event("a", 1), event("b", 1), event("a", 2)], true)
        .await;

    let stalled = first
        .take(10, AfterParked::Wait)
        .await
        .unwrap()
        .expect("the first takes the lease");
    assert_eq!(
        stalled.rows().iter().map(|r| r.id).collect::<Vec<_>>(),
        ids,
        "the first unsent rows, in id order"
    );
    assert!(
        second.take(10, AfterParked::Wait).await.unwrap().is_none(),
        "the second waits while the lease is live"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let successor = second
        .take(10, AfterParked::Wait)
        .await
        .unwrap()
        .expect("the second takes over an expired lease");
    assert_eq!(successor.rows().len(), 3, "and the same rows, still unsent");

    let err = stalled.finish(&ids, &[]).await.unwrap_err();
    assert!(err.to_string().contains("taken over"), "{err}");
    assert_eq!(pool.unsent().await, 3, "the fenced relay marked nothing");
    assert!(
        first.take(10, AfterParked::Wait).await.unwrap().is_none(),
        "nor does it take another batch"
    );
    successor.finish(&ids[..1], &[]).await.unwrap();
    assert_eq!(pool.unsent().await, 2, "the holder marks its rows");
}

/// The first enqueue into a file with no outbox table yet (a file of an older oncely, or none)
/// applies the schema in the caller's transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_on_a_fresh_file_applies_the_schema_itself() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("fresh.db"))
        .create_if_missing(true);
    let pool = SqlitePool::connect_with(options).await.unwrap();
    let ids = pool.enqueue(&[event("a", 1)], true).await;
    assert_eq!(ids, [1]);
    assert_eq!(pool.unsent().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_refused_row_is_parked_then_retried_or_dropped() {
    let (store, pool, _dir) = outbox().await;
    let destination = Destination::rabbit("sqlite_parked").await;
    scenarios::a_refused_row_is_parked_then_retried_or_dropped(store, &pool, destination).await;
}
