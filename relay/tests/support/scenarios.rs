//! The scenarios every outbox passes, whatever its database: each a plain function over an
//! [`OutboxStore`] (the relay's side) and a [`Service`] (the side that enqueues).

use std::collections::BTreeMap;
use std::time::Duration;

use oncely_core::outbox::{AfterParked, OutboxMessage, OutboxStore, Publisher, message_id};
use oncely_relay::{Relay, RelayReport};

use super::{Destination, Service, check_delivery, wait_all_sent};

/// Message `n` of `aggregate`, which names its aggregate in a header for [`check_delivery`].
pub fn event(aggregate: &str, n: usize) -> OutboxMessage {
    OutboxMessage::new(aggregate, format!("{aggregate}#{n}").into_bytes())
        .with_header("Aggregate", aggregate)
}

/// Runs a relay until every row is sent (or 30 s are out), then stops it.
pub async fn relay_until_sent<S: OutboxStore + 'static>(
    store: S,
    publisher: Box<dyn Publisher>,
    service: &dyn Service,
) -> RelayReport {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = Relay::new(store, publisher)
        .batch(10)
        .poll_interval(Duration::from_millis(20));
    let running = tokio::spawn(relay.run(async {
        stopped.await.ok();
    }));
    wait_all_sent(service, Duration::from_secs(30)).await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap()
}

/// Committed rows reach the broker in order, with their payload and headers; a rolled-back row
/// never does.
pub async fn committed_is_published_and_rolled_back_never_is<S: OutboxStore + 'static>(
    store: S,
    service: &dyn Service,
    destination: Destination,
) {
    let origin = store.origin().await.unwrap();
    let kept = service.enqueue(&[event("order-1", 1)], true).await[0];
    let dropped = service.enqueue(&[event("order-2", 1)], false).await[0];
    let also_kept = service
        .enqueue(&[event("order-1", 2).with_header("Trace", "t-9")], true)
        .await[0];

    let report = relay_until_sent(store, destination.publisher().await, service).await;
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
    destination.check_placement(&messages);
    assert_eq!(service.count(true).await, 2, "both marked sent");
    destination.remove().await;
}

/// Two relays on one outbox while rows keep coming: every row once (RabbitMQ and Kafka keep
/// every copy, so a double publish would show; an SQS FIFO queue drops a copy by its
/// deduplication id, so there the relays' own count shows it), each aggregate in order (on
/// Kafka: keyed by its aggregate, in one partition; on SQS: its message group).
pub async fn two_relays_keep_each_aggregate_in_order<S: OutboxStore + Clone + 'static>(
    store: S,
    service: &dyn Service,
    destination: Destination,
) {
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
    for round in 0..40 {
        let messages: Vec<_> = (0..10)
            .map(|n| event(&format!("agg-{}", (round * 7 + n) % 12), n))
            .collect();
        let ids = service.enqueue(&messages, true).await;
        for (message, id) in messages.iter().zip(ids) {
            expected
                .entry(message.aggregate().to_owned())
                .or_default()
                .push(message_id(&origin, id));
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    wait_all_sent(service, Duration::from_secs(60)).await;
    stop.send(true).unwrap();
    let mut published = 0;
    for relay in relays {
        let report = relay.await.unwrap().unwrap();
        assert_eq!(report.failed, 0, "{report:?}");
        published += report.published;
    }
    assert_eq!(published, 400);
    let messages = destination.read_all().await;
    let delivered = check_delivery(&messages, &expected);
    assert_eq!(
        delivered.total, 400,
        "no row published twice: {delivered:?}"
    );
    destination.check_placement(&messages);
    destination.remove().await;
}

/// Purge deletes rows sent longer ago than the retention, at most `limit` per call, and never
/// an unsent row or a recent one.
pub async fn sent_rows_are_purged_after_the_retention_and_unsent_ones_never<S: OutboxStore>(
    store: &S,
    service: &dyn Service,
) {
    let messages: Vec<_> = (0..5).map(|n| event("p", n)).collect();
    let ids = service.enqueue(&messages, true).await;
    service
        .mark_sent(&ids[..3], Duration::from_secs(2 * 3600))
        .await;
    service.mark_sent(&ids[4..], Duration::ZERO).await;
    assert_eq!(
        store.purge(Duration::from_secs(3600), 2).await.unwrap(),
        2,
        "bounded"
    );
    assert_eq!(
        store.purge(Duration::from_secs(3600), 100).await.unwrap(),
        1
    );
    assert_eq!(
        service.rows().await,
        2,
        "the recent sent row and the unsent one stay"
    );
}

/// [`OutboxStore::backlog`]: the rows not sent yet, and how long the oldest has waited, by the
/// database's clock.
pub async fn the_backlog_counts_unsent_rows_and_the_oldest_ones_wait<S: OutboxStore>(
    store: &S,
    service: &dyn Service,
) {
    let empty = store.backlog().await.unwrap();
    assert_eq!((empty.unsent, empty.oldest), (0, None));
    let messages: Vec<_> = (0..5).map(|n| event("b", n)).collect();
    let ids = service.enqueue(&messages, true).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let waiting = store.backlog().await.unwrap();
    assert_eq!(waiting.unsent, 5);
    let oldest = waiting.oldest.expect("an age");
    assert!(
        oldest >= Duration::from_secs(1) && oldest < Duration::from_secs(60),
        "{oldest:?}"
    );
    service.mark_sent(&ids[..3], Duration::ZERO).await;
    assert_eq!(store.backlog().await.unwrap().unsent, 2);
    service.mark_sent(&ids[3..], Duration::ZERO).await;
    let sent = store.backlog().await.unwrap();
    assert_eq!((sent.unsent, sent.oldest), (0, None));
}

/// Runs `relay` until `done(report)` (failing the test after 20 s), stops it, and answers its
/// report.
pub async fn run_until<S, P>(relay: Relay<S, P>, done: impl Fn(&RelayReport) -> bool) -> RelayReport
where
    S: OutboxStore + 'static,
    P: Publisher + 'static,
{
    let progress = relay.progress();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(relay.run(async {
        stopped.await.ok();
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done(&progress.report()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up: {:?}",
            progress.report()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    running.await.unwrap().unwrap()
}

/// [`run_until`] a relay on `store` that parks at 2 refusals and does `after_parked`.
async fn relay_until<S: OutboxStore + 'static>(
    store: S,
    publisher: Box<dyn Publisher>,
    after_parked: AfterParked,
    done: impl Fn(&RelayReport) -> bool,
) -> RelayReport {
    let relay = Relay::new(store, publisher)
        .poll_interval(Duration::from_millis(20))
        .park_after(2)
        .after_parked(after_parked)
        .on_error(|_| {});
    run_until(relay, done).await
}

/// A row RabbitMQ keeps refusing (routed to no queue) is parked after two refusals, with its
/// error: it no longer holds its aggregate back for good. The rows after it wait (the
/// aggregate's order) unless the relay goes on; other aggregates never wait. A parked row
/// retried is published again in line (here refused and parked again: its count starts over);
/// dropped, it is gone.
pub async fn a_refused_row_is_parked_then_retried_or_dropped<S: OutboxStore + Clone + 'static>(
    store: S,
    service: &dyn Service,
    destination: Destination,
) {
    let ids = service
        .enqueue(
            &[
                event("a", 1),
                event("a", 2).to("oncely.relay.no-such-queue"),
                event("a", 3),
                event("b", 1),
            ],
            true,
        )
        .await;
    let (a2, a3) = (ids[1], ids[2]);

    let report = relay_until(
        store.clone(),
        destination.publisher().await,
        AfterParked::Wait,
        |r| r.parked == 1,
    )
    .await;
    assert_eq!((report.published, report.parked), (2, 1), "{report:?}");
    let parked = store.parked(10).await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    let row = &parked[0];
    assert_eq!((row.id, row.attempts), (a2, 2));
    assert_eq!((row.aggregate.as_str(), row.payload_bytes), ("a", 3));
    assert_eq!(
        row.destination.as_deref(),
        Some("oncely.relay.no-such-queue")
    );
    assert!(
        row.error.contains("NO_ROUTE") && row.error.contains("no-such-queue"),
        "{row:?}"
    );
    assert!(row.parked_for < Duration::from_secs(60), "{row:?}");
    let sent: Vec<Vec<u8>> = destination
        .read_all()
        .await
        .iter()
        .map(|m| m.payload().to_vec())
        .collect();
    assert_eq!(
        sent,
        [&b"a#1"[..], b"b#1"],
        "a#3 waits behind the parked a#2"
    );
    assert_eq!(service.unsent().await, 2);

    // Going on: a#3 is published; the parked row is not taken again.
    let report = relay_until(
        store.clone(),
        destination.publisher().await,
        AfterParked::GoOn,
        |r| r.published == 1,
    )
    .await;
    assert_eq!((report.failed, report.parked), (0, 0), "{report:?}");
    let sent = destination.read_all().await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].payload(), b"a#3");
    assert_eq!(service.unsent().await, 1);

    // Retried: in line again, refused twice more, parked again with its count started over.
    assert_eq!(
        store.retry_parked(&[a2, a3]).await.unwrap(),
        1,
        "only a2 was parked"
    );
    assert!(store.parked(10).await.unwrap().is_empty());
    let report = relay_until(
        store.clone(),
        destination.publisher().await,
        AfterParked::Wait,
        |r| r.parked == 1,
    )
    .await;
    assert_eq!((report.failed, report.published), (2, 0), "{report:?}");
    assert_eq!(store.parked(10).await.unwrap()[0].attempts, 2);

    // Dropped: gone for good.
    assert_eq!(store.drop_parked(&[a2]).await.unwrap(), 1);
    assert_eq!(store.drop_parked(&[a2]).await.unwrap(), 0);
    assert!(store.parked(10).await.unwrap().is_empty());
    assert_eq!(service.unsent().await, 0);
    assert_eq!(service.rows().await, 3);
    destination.remove().await;
}
