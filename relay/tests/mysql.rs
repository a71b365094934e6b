//! The outbox on MySQL/MariaDB and its relay, against the real servers (MariaDB; RabbitMQ and
//! Kafka, which keep every copy, so a double publish would show; an SQS FIFO queue).

mod support;

use std::time::Duration;

use oncely_conformance::servers;
use oncely_core::outbox::{AfterParked, OutboxStore};
use oncely_mysql::outbox::{MySqlOutbox, MySqlOutboxStore, Outbox};
use oncely_mysql::sqlx::MySqlPool;
use support::Destination;
use support::scenarios::{self, event};

/// A migrated outbox in a fresh database: the relay's store and a pool for the "service".
async fn outbox(name: &str) -> (MySqlOutboxStore, MySqlPool) {
    let url = servers::mysql_url(&format!("oncely_relay_{name}")).await;
    let store = MySqlOutboxStore::connect(&url).await.unwrap();
    (store, MySqlPool::connect(&url).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_committed_is_published_and_rolled_back_never_is() {
    let (store, pool) = outbox("commit").await;
    let destination = Destination::rabbit("mysql_commit").await;
    scenarios::committed_is_published_and_rolled_back_never_is(store, &pool, destination).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_two_relays_at_once_publish_each_row_once_in_order_per_aggregate() {
    let (store, pool) = outbox("two").await;
    let destination = Destination::rabbit("mysql_two").await;
    scenarios::two_relays_keep_each_aggregate_in_order(store, &pool, destination).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_to_kafka_committed_is_published_and_rolled_back_never_is() {
    let (store, pool) = outbox("commit_kafka").await;
    let destination = Destination::kafka("mysql_commit").await;
    scenarios::committed_is_published_and_rolled_back_never_is(store, &pool, destination).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_to_kafka_two_relays_at_once_publish_each_row_once_in_order_per_aggregate() {
    let (store, pool) = outbox("two_kafka").await;
    let destination = Destination::kafka("mysql_two").await;
    scenarios::two_relays_keep_each_aggregate_in_order(store, &pool, destination).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_to_sqs_fifo_committed_is_published_and_rolled_back_never_is() {
    let (store, pool) = outbox("commit_sqs").await;
    let destination = Destination::sqs_fifo("mysql_commit").await;
    scenarios::committed_is_published_and_rolled_back_never_is(store, &pool, destination).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_to_sqs_fifo_two_relays_at_once_publish_each_row_once_in_order_per_aggregate() {
    let (store, pool) = outbox("two_sqs").await;
    let destination = Destination::sqs_fifo("mysql_two").await;
    scenarios::two_relays_keep_each_aggregate_in_order(store, &pool, destination).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_a_second_enqueue_for_an_aggregate_waits_for_the_first_to_commit() {
    let (store, pool) = outbox("serial").await;
    let outbox = Outbox::new();
    let mut first = pool.begin().await.unwrap();
    let first_id = outbox.enqueue(&mut first, &event("x", 1)).await.unwrap();
    let second = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut tx = pool.begin().await.unwrap();
            let id = Outbox::new()
                .enqueue(&mut tx, &event("x", 2))
                .await
                .unwrap();
            tx.commit().await.unwrap();
            id
        })
    };
    let mut other = pool.begin().await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(2),
        outbox.enqueue(&mut other, &event("y", 1)),
    )
    .await
    .expect("another aggregate enqueues at once")
    .unwrap();
    other.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "the second waits on the first");
    first.commit().await.unwrap();
    assert!(second.await.unwrap() > first_id);

    // A relay's batch left unfinished lets go of its aggregates when dropped.
    let batch = store
        .take(10, AfterParked::Wait)
        .await
        .unwrap()
        .expect("rows to take");
    assert!(
        store.take(10, AfterParked::Wait).await.unwrap().is_none(),
        "all held"
    );
    drop(batch);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        store.take(10, AfterParked::Wait).await.unwrap().is_some(),
        "free again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_sent_rows_are_purged_after_the_retention_and_unsent_ones_never() {
    let (store, pool) = outbox("purge").await;
    scenarios::sent_rows_are_purged_after_the_retention_and_unsent_ones_never(&store, &pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_the_backlog_counts_unsent_rows_and_the_oldest_ones_wait() {
    let (store, pool) = outbox("backlog").await;
    scenarios::the_backlog_counts_unsent_rows_and_the_oldest_ones_wait(&store, &pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_a_refused_row_is_parked_then_retried_or_dropped() {
    let (store, pool) = outbox("parked").await;
    let destination = Destination::rabbit("mysql_parked").await;
    scenarios::a_refused_row_is_parked_then_retried_or_dropped(store, &pool, destination).await;
}
