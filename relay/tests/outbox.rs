//! The outbox and its relay against the real servers: PostgreSQL, NATS JetStream, RabbitMQ.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use oncely_core::outbox::{OutboxStore, message_id};
use oncely_postgres::outbox::{Outbox, OutboxMessage, PostgresOutbox, PostgresOutboxStore};
use oncely_relay::Relay;
use sqlx::PgPool;
use support::{Destination, check_delivery, wait_all_sent};

/// A migrated outbox in a fresh schema: the relay's store and a pool for the "service".
async fn outbox(name: &str) -> (PostgresOutboxStore, PgPool) {
    let url = support::fresh_schema(&format!("oncely_relay_{name}")).await;
    let store = PostgresOutboxStore::connect(&url).await.unwrap();
    (store, PgPool::connect(&url).await.unwrap())
}

fn event(aggregate: &str, n: usize) -> OutboxMessage {
    OutboxMessage::new(aggregate, format!("{aggregate}#{n}").into_bytes())
        .with_header("Aggregate", aggregate)
}

/// Runs a relay until every row is sent (or `patience` is out), then stops it.
async fn relay_until_sent(
    store: PostgresOutboxStore,
    publisher: Box<dyn oncely_core::outbox::Publisher>,
    pool: &PgPool,
) -> oncely_relay::RelayReport {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = Relay::new(store, publisher)
        .batch(10)
        .poll_interval(Duration::from_millis(20));
    let running = tokio::spawn(relay.run(async {
        stopped.await.ok();
    }));
    wait_all_sent(pool, Duration::from_secs(30)).await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap()
}

async fn committed_is_published_and_rolled_back_never_is(destination: Destination) {
    let name = match &destination {
        Destination::Nats { .. } => "commit_nats",
        Destination::Rabbit { .. } => "commit_rabbit",
    };
    let (store, pool) = outbox(name).await;
    let origin = store.origin().await.unwrap();
    let outbox = Outbox::new();

    let mut tx = pool.begin().await.unwrap();
    let kept = outbox.enqueue(&mut tx, &event("order-1", 1)).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let dropped = outbox.enqueue(&mut tx, &event("order-2", 1)).await.unwrap();
    tx.rollback().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let also_kept = outbox
        .enqueue(&mut tx, &event("order-1", 2).with_header("Trace", "t-9"))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let report = relay_until_sent(store, destination.publisher().await, &pool).await;
    assert_eq!(report.published, 2, "{report:?}");
    let messages = destination.read_all().await;
    let ids: Vec<_> = messages.iter().map(|m| m.message_id().unwrap()).collect();
    assert_eq!(
        ids,
        [message_id(&origin, kept), message_id(&origin, also_kept)],
        "the committed rows, in order; never the rolled-back one ({dropped})"
    );
    assert_eq!(messages[1].payload(), b"order-1#2");
    assert_eq!(messages[1].header("Trace"), Some("t-9"), "headers travel");
    let sent: i64 =
        sqlx::query_scalar("SELECT count(*) FROM oncely_outbox WHERE sent_at IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(sent, 2);
    destination.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_committed_is_published_and_rolled_back_never_is() {
    committed_is_published_and_rolled_back_never_is(Destination::nats("commit").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_committed_is_published_and_rolled_back_never_is() {
    committed_is_published_and_rolled_back_never_is(Destination::rabbit("commit").await).await;
}

/// Two relays on one outbox while rows keep coming: every row once (RabbitMQ keeps every copy,
/// so a double publish would show), each aggregate in order.
async fn two_relays_keep_each_aggregate_in_order(destination: Destination, name: &str) {
    let (store, pool) = outbox(name).await;
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
    wait_all_sent(&pool, Duration::from_secs(60)).await;
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
async fn rabbitmq_two_relays_at_once_publish_each_row_once_in_order_per_aggregate() {
    two_relays_keep_each_aggregate_in_order(Destination::rabbit("two").await, "two_rabbit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_two_relays_at_once_publish_each_row_once_in_order_per_aggregate() {
    two_relays_keep_each_aggregate_in_order(Destination::nats("two").await, "two_nats").await;
}

/// A row the broker refuses (routed nowhere) stays unsent and holds back the rest of its
/// aggregate, and only its aggregate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_row_holds_back_its_aggregate_and_nothing_else() {
    let destination = Destination::rabbit("refused").await;
    let (store, pool) = outbox("refused").await;
    let origin = store.origin().await.unwrap();
    let outbox = Outbox::new();
    let mut tx = pool.begin().await.unwrap();
    let a1 = outbox.enqueue(&mut tx, &event("a", 1)).await.unwrap();
    let a2 = outbox
        .enqueue(&mut tx, &event("a", 2).to("oncely.relay.no-such-queue"))
        .await
        .unwrap();
    outbox.enqueue(&mut tx, &event("a", 3)).await.unwrap();
    let b1 = outbox.enqueue(&mut tx, &event("b", 1)).await.unwrap();
    tx.commit().await.unwrap();

    let errors = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = errors.clone();
    let relay = Relay::new(store, destination.publisher().await)
        .poll_interval(Duration::from_millis(20))
        .on_error(move |e| seen.lock().unwrap().push(e.to_string()));
    let report = relay
        .run(tokio::time::sleep(Duration::from_millis(500)))
        .await
        .unwrap();
    assert_eq!(report.published, 2, "{report:?}");
    assert!(report.failed >= 1, "{report:?}");
    let errors = errors.lock().unwrap().clone();
    assert!(
        errors[0].contains("no-such-queue") && errors[0].contains("NO_ROUTE"),
        "the error names the routing key and the reason: {errors:?}"
    );
    let ids: Vec<String> = destination
        .read_all()
        .await
        .iter()
        .map(|m| m.message_id().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&message_id(&origin, a1)) && ids.contains(&message_id(&origin, b1)));
    let unsent: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM oncely_outbox WHERE sent_at IS NULL ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(unsent, [a2, a2 + 1], "a#2 and what follows it stay unsent");
    destination.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_rows_are_purged_after_the_retention_and_unsent_ones_never() {
    let (store, pool) = outbox("purge").await;
    let outbox = Outbox::new();
    let mut tx = pool.begin().await.unwrap();
    for n in 0..5 {
        outbox.enqueue(&mut tx, &event("p", n)).await.unwrap();
    }
    tx.commit().await.unwrap();
    sqlx::query(
        "UPDATE oncely_outbox SET sent_at = now() - interval '2 hours' WHERE id IN \
         (SELECT id FROM oncely_outbox ORDER BY id LIMIT 3)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE oncely_outbox SET sent_at = now() WHERE id = (SELECT max(id) FROM oncely_outbox)",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(
        store.purge(Duration::from_secs(3600), 2).await.unwrap(),
        2,
        "bounded"
    );
    assert_eq!(
        store.purge(Duration::from_secs(3600), 100).await.unwrap(),
        1
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM oncely_outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 2, "the recent sent row and the unsent one stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_refuses_an_empty_aggregate_and_an_unmigrated_schema_says_so() {
    let (_store, pool) = outbox("refuse").await;
    let mut tx = pool.begin().await.unwrap();
    let err = Outbox::new()
        .enqueue(&mut tx, &OutboxMessage::new("", b"x".to_vec()))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("outbox aggregate is empty"),
        "{err}"
    );
    drop(tx);

    let bare = PgPool::connect(&support::fresh_schema("oncely_relay_bare").await)
        .await
        .unwrap();
    let mut tx = bare.begin().await.unwrap();
    let err = Outbox::new()
        .enqueue(&mut tx, &event("a", 1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is the schema migrated?"), "{err}");
}

/// Two transactions enqueueing for one aggregate: the second waits for the first, so ids commit
/// in order and a relay never sees the later one first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_enqueue_for_an_aggregate_waits_for_the_first_to_commit() {
    let (_store, pool) = outbox("serial").await;
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
    // Another aggregate does not wait.
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
    let second_id = second.await.unwrap();
    assert!(second_id > first_id);
}
