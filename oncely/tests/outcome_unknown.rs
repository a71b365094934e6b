//! The runner with an `OncelyHandler` whose work fails with `OutcomeUnknown`: the message is
//! given back while the key is held, using up no attempts, and runs again once the lease ends.

#![cfg(all(feature = "testing", feature = "memory"))]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use oncely::consumer::{Message, OncelyHandler, RetryPolicy};
use oncely::memory::MemoryStore;
use oncely::testing::{Settlement, TestBroker};
use oncely::{Consumer, Key, ManualClock, Oncely, OutcomeUnknown, Scope, Timestamp};

const LEASE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "current_thread")]
async fn an_unknown_outcome_is_redelivered_unattempted_until_the_lease_ends_then_run_again() {
    let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
    let oncely = Oncely::new(Arc::new(MemoryStore::default()))
        .with_clock(clock.clone())
        .with_lease(LEASE);
    let calls = Arc::new(AtomicU32::new(0));
    let work = {
        let calls = calls.clone();
        move |_: Key, _: Message| {
            let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if call == 1 {
                    Err(OutcomeUnknown::new("no answer within 1s").into())
                } else {
                    Ok::<_, oncely::BoxError>(b"done".to_vec())
                }
            }
        }
    };
    let handler = OncelyHandler::new(oncely, Scope::new("orders").unwrap(), work);
    // Two attempts: the one whose outcome is unknown, and the one that finds the key held.
    let consumer = Consumer::new(handler, "/orderId".parse().unwrap()).retry(
        RetryPolicy::default()
            .with_max_attempts(2)
            .with_backoff(Duration::from_millis(1), Duration::from_millis(1)),
    );
    let broker = TestBroker::new();
    broker.publish(Message::new(br#"{"orderId": "o-1"}"#.to_vec(), "orders"));

    let first = consumer.run(broker.source(), std::future::pending()).await;
    assert_eq!(first.unwrap().redelivered, 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Each time it comes back within the lease, the key is held: back to the broker again.
    let mut waited = Duration::ZERO;
    while !broker.is_drained() {
        let due = broker
            .next_due()
            .expect("the message is waiting to come back");
        clock.advance(due);
        broker.advance(due);
        waited += due;
        consumer
            .run(broker.source(), std::future::pending())
            .await
            .unwrap();
        let calls = calls.load(Ordering::SeqCst);
        if waited <= LEASE {
            assert_eq!(calls, 1, "run again {waited:?} after, within the lease");
        }
        assert!(waited < LEASE * 2, "still not done {waited:?} after");
    }

    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(broker.dead_letters().is_empty(), "no attempt was used up");
    let settlements = broker.settlements();
    assert_eq!(settlements.last(), Some(&Settlement::Acked));
    assert!(
        settlements[..settlements.len() - 1].iter().all(
            |s| matches!(s, Settlement::Redelivered { after } if *after <= Duration::from_secs(1))
        ),
        "{settlements:?}"
    );
    let report = consumer.report();
    assert_eq!((report.done, report.dead_lettered), (1, 0), "{report:?}");
    assert!(report.redelivered >= 60, "{report:?}");
}
