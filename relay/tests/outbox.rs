//! The outbox and its relay against the real servers: PostgreSQL, NATS JetStream, RabbitMQ,
//! Kafka (tansu), SQS (moto).

mod support;

use std::time::Duration;

use oncely_conformance::servers;
use oncely_core::outbox::{OutboxStore, message_id};
use oncely_postgres::outbox::{Outbox, OutboxMessage, PostgresOutbox, PostgresOutboxStore};
use oncely_relay::Relay;
use sqlx::PgPool;
use support::Destination;
use support::scenarios::{self, event};

/// A migrated outbox in a fresh schema: the relay's store and a pool for the "service".
async fn outbox(name: &str) -> (PostgresOutboxStore, PgPool) {
    let url = servers::postgres_url(&format!("oncely_relay_{name}")).await;
    let store = PostgresOutboxStore::connect(&url).await.unwrap();
    (store, PgPool::connect(&url).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_committed_is_published_and_rolled_back_never_is() {
    let (store, pool) = outbox("commit_nats").await;
    let destination = Destination::nats("commit").await;
    scenarios::committed_is_published_and_rolled_back_never_is(store, &pool, destination).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_committed_is_published_and_rolled_back_never_is() {
    let (store, pool) = outbox("commit_rabbit").await;
    let destination = Destination::rabbit("commit").await;
    scenarios::committed_is_published_and_rolled_back_never_is(store, &pool, destination).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_two_relays_at_once_publish_each_row_once_in_order_per_aggregate() {
    let (store, pool) = outbox("two_rabbit").await;
    let destination = Destination::rabbit("two").await;
    scenarios::two_relays_keep_each_aggregate_in_order(store, &pool, destination).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_two_relays_at_once_publish_each_row_once_in_order_per_aggregate() {
    let (store, pool) = outbox("two_nats").await;
    let destination = Destination::nats("two").await;
    scenarios::two_relays_keep_each_aggregate_in_order(store, &pool, destination).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_committed_is_published_and_rolled_back_never_is() {
    let (store, pool) = outbox("commit_kafka").await;
    let destination = Destination::kafka("commit").await;
    scenarios::committed_is_published_and_rolled_back_never_is(store, &pool, destination).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_two_relays_at_once_publish_each_row_once_in_order_per_aggregate() {
    let (store, pool) = outbox("two_kafka").await;
    let destination = Destination::kafka("two").await;
    scenarios::two_relays_keep_each_aggregate_in_order(store, &pool, destination).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_fifo_committed_is_published_and_rolled_back_never_is() {
    let (store, pool) = outbox("commit_sqs").await;
    let destination = Destination::sqs_fifo("commit").await;
    scenarios::committed_is_published_and_rolled_back_never_is(store, &pool, destination).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_fifo_two_relays_at_once_publish_each_row_once_in_order_per_aggregate() {
    let (store, pool) = outbox("two_sqs").await;
    let destination = Destination::sqs_fifo("two").await;
    scenarios::two_relays_keep_each_aggregate_in_order(store, &pool, destination).await;
}

/// On a standard queue (no groups, no dedup window) each row's id travels as its
/// `Oncely-Message-Id` attribute, for consumers to dedup by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_standard_queue_carries_each_rows_id_as_its_message_attribute() {
    let (store, pool) = outbox("standard_sqs").await;
    let origin = store.origin().await.unwrap();
    let destination = Destination::sqs_standard("standard").await;
    let messages: Vec<_> = (0..6)
        .map(|n| event(&format!("order-{}", n % 2), n))
        .collect();
    let ids = support::Service::enqueue(&pool, &messages, true).await;
    let report = scenarios::relay_until_sent(store, destination.publisher().await, &pool).await;
    assert_eq!(report.published, 6, "{report:?}");
    let read = destination.read_all().await;
    let mut got: Vec<(String, String, Vec<u8>)> = read
        .iter()
        .map(|m| {
            (
                m.message_id().expect("the id attribute").to_owned(),
                m.header(oncely_sqs::MESSAGE_ID_ATTRIBUTE)
                    .unwrap()
                    .to_owned(),
                m.payload().to_vec(),
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String, Vec<u8>)> = ids
        .iter()
        .zip(&messages)
        .map(|(id, message)| {
            let id = message_id(&origin, *id);
            (id.clone(), id, message.payload().to_vec())
        })
        .collect();
    want.sort();
    assert_eq!(got, want);
    destination.check_placement(&read);
    destination.remove().await;
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
    scenarios::sent_rows_are_purged_after_the_retention_and_unsent_ones_never(&store, &pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_counts_unsent_rows_and_the_oldest_ones_wait() {
    let (store, pool) = outbox("backlog").await;
    scenarios::the_backlog_counts_unsent_rows_and_the_oldest_ones_wait(&store, &pool).await;
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

    let bare = PgPool::connect(&servers::postgres_url("oncely_relay_bare").await)
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

/// PostgreSQL wakes its relays (LISTEN/NOTIFY): with a poll of a minute, each committed row is
/// still published within a few seconds of its commit, one after the other (a wake-up is not
/// used up by the first). A rolled-back row wakes the relay for nothing and is never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_wakes_the_relay_long_before_its_poll() {
    let (store, pool) = outbox("wake").await;
    let destination = Destination::nats("wake").await;
    let relay = Relay::new(store, destination.publisher().await)
        .poll_interval(Duration::from_secs(60))
        .on_error(|e| panic!("the relay failed: {e}"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(relay.run(async {
        stopped.await.ok();
    }));
    // Idle, in its minute-long wait.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let outbox = Outbox::new();
    let mut rolled_back = pool.begin().await.unwrap();
    outbox
        .enqueue(&mut rolled_back, &event("a", 0))
        .await
        .unwrap();
    rolled_back.rollback().await.unwrap();
    for n in 1..=3 {
        let mut tx = pool.begin().await.unwrap();
        outbox.enqueue(&mut tx, &event("a", n)).await.unwrap();
        tx.commit().await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while destination.read_all().await.len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "row {n} not published 10 s after its commit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop.send(()).unwrap();
    let report = running.await.unwrap().unwrap();
    assert_eq!(report.published, 3);
    let payloads: Vec<Vec<u8>> = destination
        .read_all()
        .await
        .iter()
        .map(|m| m.payload().to_vec())
        .collect();
    assert_eq!(payloads, [&b"a#1"[..], b"a#2", b"a#3"]);
    destination.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_row_is_parked_then_retried_or_dropped() {
    let (store, pool) = outbox("parked").await;
    let destination = Destination::rabbit("parked").await;
    scenarios::a_refused_row_is_parked_then_retried_or_dropped(store, &pool, destination).await;
}

/// NATS refuses a message over its `max_payload` (1 MiB by default): a refusal, so the row is
/// parked at the first with park_after(1); the aggregate's other rows wait; other aggregates go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_parks_a_row_larger_than_its_max_payload() {
    let (store, pool) = outbox("too_large").await;
    let destination = Destination::nats("too_large").await;
    let outbox = Outbox::new();
    let mut tx = pool.begin().await.unwrap();
    let large = OutboxMessage::new("a", vec![b'x'; 2 * 1024 * 1024]);
    let large = outbox.enqueue(&mut tx, &large).await.unwrap();
    outbox.enqueue(&mut tx, &event("a", 2)).await.unwrap();
    outbox.enqueue(&mut tx, &event("b", 1)).await.unwrap();
    tx.commit().await.unwrap();

    let relay = Relay::new(store.clone(), destination.publisher().await)
        .poll_interval(Duration::from_millis(20))
        .park_after(1)
        .on_error(|_| {});
    let report = scenarios::run_until(relay, |r| r.parked >= 1 && r.published >= 1).await;
    assert_eq!((report.published, report.parked), (1, 1), "{report:?}");
    let parked = store.parked(10).await.unwrap();
    assert_eq!((parked[0].id, parked[0].attempts), (large, 1));
    assert!(parked[0].error.contains("max payload"), "{parked:?}");
    assert_eq!(parked[0].payload_bytes, 2 * 1024 * 1024);
    let sent = destination.read_all().await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].payload(), b"b#1");
    destination.remove().await;
}

/// A broker that is down refuses nothing: with park_after(1), a row enqueued while NATS is
/// down fails attempt after attempt and is never parked; once NATS is back it is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_never_a_refusal_and_parks_nothing() {
    use oncely_conformance::faults::{NatsServer, Restartable, Stop};
    let mut nats = NatsServer::start();
    let subject = "oncely.relay.outage";
    let client = oncely_nats::async_nats::connect(nats.url()).await.unwrap();
    let jetstream = oncely_nats::async_nats::jetstream::new(client);
    jetstream
        .create_stream(oncely_nats::async_nats::jetstream::stream::Config {
            name: "OUTAGE".into(),
            subjects: vec![subject.into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let (store, pool) = outbox("outage").await;
    let publisher = oncely_nats::NatsPublisher::connect(&format!("{}/{subject}", nats.url()))
        .await
        .unwrap();
    let relay = Relay::new(store.clone(), publisher)
        .poll_interval(Duration::from_millis(20))
        .park_after(1)
        .on_error(|_| {});
    let progress = relay.progress();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(relay.run(async {
        stopped.await.ok();
    }));

    nats.stop(Stop::Crash);
    let mut tx = pool.begin().await.unwrap();
    Outbox::new()
        .enqueue(&mut tx, &event("a", 1))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while progress.report().failed < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            progress.report()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        store.parked(10).await.unwrap().is_empty(),
        "an outage parked a row"
    );

    nats.start_again();
    while progress.report().published < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            progress.report()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    let report = running.await.unwrap().unwrap();
    assert_eq!((report.published, report.parked), (1, 0), "{report:?}");
}
