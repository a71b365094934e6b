//! From NATS JetStream.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use oncely::consumer::{ATTEMPTS_HEADER, ERROR_HEADER, KEY_HEADER};
use oncely::nats::async_nats::{self, HeaderMap, jetstream};

use oncely::nats::{FreshOptions, fresh_destination};

use crate::handler::Handler;
use crate::http_get::http_get;
use crate::process::{
    assert_each_key_posted_once, assert_summary_and_exit_0, runtime, spawn_consume, terminate,
    wait_for,
};
use crate::{FAILING, PATIENCE, nats_server, order};

/// A fresh stream capturing `<name>.in`; deleted, with its dead-letter stream, at the end.
struct Nats {
    context: jetstream::Context,
    name: String,
}

impl Nats {
    async fn new() -> Nats {
        let options = FreshOptions::new("ONCELY_CLI_", "consume");
        let fresh = fresh_destination(&nats_server(), &options)
            .await
            .expect("NATS with JetStream at ONCELY_NATS_URL (start nats-server -js)");
        let client = async_nats::connect(nats_server()).await.unwrap();
        let context = jetstream::new(client);
        Nats {
            context,
            name: fresh.stream,
        }
    }

    async fn publish(&self, message_id: &str, event_id: &str, payload: &[u8]) {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", message_id);
        headers.insert("Event-Id", event_id);
        // A trace per key (W3C Trace Context), which the handler's request must carry on.
        headers.insert("traceparent", traceparent(event_id).as_str());
        headers.insert("tracestate", "oncely=test");
        self.context
            .publish_with_headers(
                format!("{}.in", self.name),
                headers,
                payload.to_vec().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// True once the consumer has no message left to deliver and none unacked.
    async fn drained(&self, consumer: &str) -> bool {
        let stream = self.context.get_stream(&self.name).await.unwrap();
        let info = stream.consumer_info(consumer).await.unwrap();
        info.num_pending == 0 && info.num_ack_pending == 0
    }

    async fn dead_letters(&self, subject: &str) -> Vec<jetstream::message::StreamMessage> {
        let Ok(name) = self.context.stream_by_subject(subject).await else {
            return Vec::new();
        };
        let mut stream = self.context.get_stream(&name).await.unwrap();
        let count = stream.info().await.unwrap().state.messages;
        let mut letters = Vec::new();
        for sequence in 1..=count {
            letters.push(stream.get_raw_message(sequence).await.unwrap());
        }
        letters
    }

    async fn delete(&self) {
        for name in [self.name.clone(), format!("{}_DLQ", self.name)] {
            self.context.delete_stream(&name).await.ok();
        }
    }
}

#[test]
fn nats_each_key_is_posted_once_and_the_failing_one_is_dead_lettered() {
    let rt = runtime();
    let nats = rt.block_on(Nats::new());
    let handler = Handler::start();
    let dir = tempfile::tempdir().unwrap();
    let dlq = format!("{}.failed", nats.name);

    // Keys from a header; one payload is not JSON. Each publish has its own Nats-Msg-Id, so
    // the stream keeps the duplicates and the consumer sees them.
    let bodies: HashMap<&str, Vec<u8>> = [
        ("e-1", order("x", 1)),
        ("e-2", b"\x00\x01 raw bytes".to_vec()),
        ("e-3", order("y", 3)),
        (FAILING, order("z", 4)),
    ]
    .into_iter()
    .collect();
    rt.block_on(async {
        for (i, key) in ["e-1", "e-2", "e-3", FAILING].iter().enumerate() {
            nats.publish(&format!("m-{i}"), key, &bodies[key]).await;
        }
    });

    let from = format!("{}/{}/bridge", nats_server(), nats.name);
    let metrics_port = oncely_conformance::process::free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let child = spawn_consume(
        dir.path(),
        &[
            "--metrics-addr",
            &metrics_addr,
            "--from",
            &from,
            "--key",
            "header:Event-Id",
            "--deliver",
            &handler.url,
            "--dlq",
            &dlq,
            "--max-attempts",
            "2",
            "--concurrency",
            "4",
        ],
    );
    wait_for("the first round of POSTs", || {
        let per_key = handler.per_key();
        ["e-1", "e-2", "e-3"]
            .iter()
            .all(|k| per_key.contains_key(*k))
            && per_key.get(FAILING) == Some(&2)
    });
    // Duplicates after the originals are done, so none meets its original in flight.
    rt.block_on(async {
        nats.publish("m-4", "e-1", &bodies["e-1"]).await;
        nats.publish("m-5", "e-2", &bodies["e-2"]).await;
    });
    let letters = rt.block_on(async {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let letters = nats.dead_letters(&dlq).await;
            if (!letters.is_empty() && nats.drained("bridge").await) || Instant::now() > deadline {
                return letters;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // Scraped while it runs, the counters say what the test published.
    let expected = [
        "oncely_consumer_deliveries_total{settlement=\"done\"} 3",
        "oncely_consumer_deliveries_total{settlement=\"duplicate\"} 2",
        "oncely_consumer_deliveries_total{settlement=\"dead_lettered\"} 1",
        // The handler (claim, POST, complete): 3 done, 2 duplicates, the failing key twice 500.
        "oncely_consumer_handler_seconds_count{result=\"done\"} 3",
        "oncely_consumer_handler_seconds_count{result=\"duplicate\"} 2",
        "oncely_consumer_handler_seconds_count{result=\"error\"} 2",
    ];
    // The claims under them (the library's metrics): 5 new (one per POST), 2 duplicates.
    let claims = [("new", 5), ("duplicate", 2)];
    let mut scrape = String::new();
    wait_for("the metrics to count every delivery", || {
        scrape = http_get(metrics_port, "/metrics").unwrap_or_default();
        expected
            .iter()
            .all(|line| scrape.lines().any(|l| l == *line))
            && claims.iter().all(|(outcome, n)| {
                scrape.lines().any(|l| {
                    l.starts_with("oncely_claims_total{")
                        && l.ends_with(&format!("outcome=\"{outcome}\"}} {n}"))
                })
            })
    });
    assert!(
        scrape.contains("oncely_store_call_seconds_bucket{operation=\"claim\""),
        "{scrape}"
    );
    assert!(
        scrape.starts_with("HTTP/1.0 200") || scrape.starts_with("HTTP/1.1 200"),
        "{scrape}"
    );
    for path in ["/healthz", "/readyz"] {
        let answer = http_get(metrics_port, path).unwrap();
        assert!(answer.contains(" 200 "), "{path}: {answer}");
    }
    let output = terminate(child);
    rt.block_on(nats.delete());
    assert_summary_and_exit_0(
        &output,
        "consumed 6: done 3, duplicates 2, redelivered 0, dead-lettered 1",
    );

    assert_each_key_posted_once(&handler, &bodies, 2);
    let received = handler.received();
    let by_key = |key: &str| received.iter().find(|r| r.key() == key).unwrap();
    assert_eq!(
        by_key("e-1").header("content-type"),
        Some("application/json")
    );
    assert_eq!(
        by_key("e-2").header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(by_key("e-3").header("oncely-message-id"), Some("m-2"));
    // Each request carries its message's trace, with this delivery as the parent.
    for request in &received {
        let sent = traceparent(request.key());
        let got = request.header("traceparent").expect("a traceparent");
        let (sent, got): (Vec<&str>, Vec<&str>) =
            (sent.split('-').collect(), got.split('-').collect());
        assert_eq!(
            (got[0], got[1], got[3]),
            (sent[0], sent[1], sent[3]),
            "{got:?}"
        );
        assert_ne!(
            got[2], sent[2],
            "the parent is the delivery, not the publisher"
        );
        assert_eq!(got[2].len(), 16);
        assert_eq!(request.header("tracestate"), Some("oncely=test"));
    }
    assert_eq!(
        by_key("e-3").header("oncely-source"),
        Some(format!("{}.in", nats.name).as_str())
    );

    assert_eq!(letters.len(), 1, "dead letters on {dlq}");
    let letter = &letters[0];
    assert_eq!(letter.payload.as_ref(), bodies[FAILING].as_slice());
    let header = |name: &str| letter.headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(header(KEY_HEADER).as_deref(), Some(FAILING));
    assert_eq!(header(ATTEMPTS_HEADER).as_deref(), Some("2"));
    assert_eq!(
        header(ERROR_HEADER).as_deref(),
        Some("handler answered 500 Internal Server Error: boom: always-fails cannot be handled")
    );
}

/// The `traceparent` the test publishes `event_id` with: a trace id of its own per key.
fn traceparent(event_id: &str) -> String {
    let hex: String = event_id.bytes().map(|b| format!("{b:02x}")).collect();
    format!("00-{hex:0>32}-00f067aa0ba902b7-01")
}
