//! The outbox on MySQL/MariaDB and its relay, against the real servers (MariaDB, RabbitMQ:
//! RabbitMQ keeps every copy, so a double publish would show).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use oncely_core::outbox::{OutboxStore, message_id};
use oncely_mysql::outbox::{MySqlOutbox, MySqlOutboxStore, Outbox, OutboxMessage};
use oncely_mysql::sqlx::{self, MySqlPool};
use oncely_relay::Relay;
use support::{Destination, check_delivery};

fn server() -> String {
    std::env::var("ONCELY_TEST_MYSQL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned())
}

/// A migrated outbox in a fresh database: the relay's store and a pool for the "service".
async fn outbox(name: &str) -> (MySqlOutboxStore, MySqlPool) {
    let name = format!("oncely_relay_{name}");
    let admin = MySqlPool::connect(&format!("{}/test", server()))
        .await
        .unwrap_or_else(|e| panic!("MariaDB at {}: {e}", server()));
    for ddl in [
        format!("DROP DATABASE IF EXISTS `{name}`"),
        format!("CREATE DATABASE `{name}`"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
            .execute(&admin)
            .await
            .unwrap();
    }
    let url = format!("{}/{name}", server());
    let store = MySqlOutboxStore::connect(&url).await.unwrap();
    (store, MySqlPool::connect(&url).await.unwrap())
}

fn event(aggregate: &str, n: usize) -> OutboxMessage {
    OutboxMessage::new(aggregate, format!("{aggregate}#{n}").into_bytes())
        .with_header("Aggregate", aggregate)
}

async fn wait_all_sent(pool: &MySqlPool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let unsent: i64 =
            sqlx::query_scalar("SELECT count(*) FROM oncely_outbox WHERE sent_at IS NULL")
                .fetch_one(pool)
                .await
                .unwrap();
        if unsent == 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{unsent} rows unsent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_committed_is_published_and_rolled_back_never_is() {
    let destination = Destination::rabbit("mysql_commit").await;
    let (store, pool) = outbox("commit").await;
    let origin = store.origin().await.unwrap();
    let outbox = Outbox::new();
    let mut tx = pool.begin().await.unwrap();
    let kept = outbox.enqueue(&mut tx, &event("order-1", 1)).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue(&mut tx, &event("order-2", 1)).await.unwrap();
    tx.rollback().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let also_kept = outbox
        .enqueue(&mut tx, &event("order-1", 2).with_header("Trace", "t-9"))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay =
        Relay::new(store, destination.publisher().await).poll_interval(Duration::from_millis(20));
    let running = tokio::spawn(relay.run(async {
        stopped.await.ok();
    }));
    wait_all_sent(&pool).await;
    stop.send(()).unwrap();
    assert_eq!(running.await.unwrap().unwrap().published, 2);
    let messages = destination.read_all().await;
    let ids: Vec<_> = messages.iter().map(|m| m.message_id().unwrap()).collect();
    assert_eq!(
        ids,
        [message_id(&origin, kept), message_id(&origin, also_kept)]
    );
    assert_eq!(messages[1].header("Trace"), Some("t-9"));
    destination.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_two_relays_at_once_publish_each_row_once_in_order_per_aggregate() {
    let destination = Destination::rabbit("mysql_two").await;
    let (store, pool) = outbox("two").await;
    let origin = store.origin().await.unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut relays = Vec::new();
    for _ in 0..2 {
        let relay = Relay::new(store.clone(), destination.publisher().await)
            .batch(7)
            .poll_interval(Duration::from_millis(5));
        let mut stopped = stopped.clone();
        relays.push(tokio::spawn(relay.run(async move {
            stopped.wait_for(|s| *s).await.ok();
        })));
    }
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let outbox = Outbox::new();
    for round in 0..40 {
        let mut tx = pool.begin().await.unwrap();
        for n in 0..10 {
            let aggregate = format!("agg-{}", (round * 7 + n) % 12);
            let id = outbox
                .enqueue(&mut tx, &event(&aggregate, n))
                .await
                .unwrap();
            expected
                .entry(aggregate)
                .or_default()
                .push(message_id(&origin, id));
        }
        tx.commit().await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    wait_all_sent(&pool).await;
    stop.send(true).unwrap();
    let mut published = 0;
    for relay in relays {
        let report = relay.await.unwrap().unwrap();
        assert_eq!(report.failed, 0, "{report:?}");
        published += report.published;
    }
    assert_eq!(published, 400);
    let delivered = check_delivery(&destination.read_all().await, &expected);
    assert_eq!(
        delivered.total, 400,
        "no row published twice: {delivered:?}"
    );
    destination.remove().await;
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
    let batch = store.take(10).await.unwrap().expect("rows to take");
    assert!(store.take(10).await.unwrap().is_none(), "all held");
    drop(batch);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(store.take(10).await.unwrap().is_some(), "free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_sent_rows_are_purged_after_the_retention_and_unsent_ones_never() {
    let (store, pool) = outbox("purge").await;
    let mut tx = pool.begin().await.unwrap();
    for n in 0..5 {
        Outbox::new()
            .enqueue(&mut tx, &event("p", n))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    sqlx::query("UPDATE oncely_outbox SET sent_at = NOW(6) - INTERVAL 2 HOUR ORDER BY id LIMIT 3")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE oncely_outbox SET sent_at = NOW(6) WHERE sent_at IS NULL ORDER BY id DESC LIMIT 1",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(store.purge(Duration::from_secs(3600), 2).await.unwrap(), 2);
    assert_eq!(
        store.purge(Duration::from_secs(3600), 100).await.unwrap(),
        1
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM oncely_outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 2);
}
