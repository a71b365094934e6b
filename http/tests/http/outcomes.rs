//! Which responses are stored, released or passed through, how long a record is replayed, and a
//! store that is down.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::StatusCode;
use oncely::{ManualClock, Timestamp};

use crate::StoreKind;
use crate::server::{Options, start, start_with};

per_store!(
    server_error_releases_the_key_and_a_retry_executes,
    server_error_is_stored_when_configured,
    oversize_response_is_passed_through_and_released,
    oversize_request_gets_413,
    retention_ends_the_replay_then_the_key_is_new,
    store_down_gets_503,
    store_down_passes_through_when_fail_open,
);

async fn server_error_releases_the_key_and_a_retry_executes(kind: StoreKind) {
    let server = start(kind, |l| l).await;
    let first = server.post("/flaky", "k-1", "{}").await;
    assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(first.text(), "boom");
    let retry = server.post("/flaky", "k-1", "{}").await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert!(!retry.replayed());
    let again = server.post("/flaky", "k-1", "{}").await;
    assert!(again.replayed());
    assert_eq!(again.text(), "recovered");
    assert_eq!(server.upstream.calls("/flaky", "k-1"), 2);
}

async fn server_error_is_stored_when_configured(kind: StoreKind) {
    let server = start(kind, |l| l.store_server_errors(true)).await;
    let first = server.post("/flaky", "k-1", "{}").await;
    assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
    let retry = server.post("/flaky", "k-1", "{}").await;
    assert!(retry.replayed());
    assert_eq!(retry.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(retry.text(), "boom");
    assert_eq!(server.upstream.calls("/flaky", "k-1"), 1);
}

async fn oversize_response_is_passed_through_and_released(kind: StoreKind) {
    let server = start(kind, |l| l.max_response(16 * 1024)).await;
    let first = server.post("/big", "k-1", "{}").await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(
        first.body.len(),
        64 * 1024,
        "passed through whole, not truncated"
    );
    assert_eq!(first.text(), format!("{:>8}", 1).repeat(8 * 1024));
    let retry = server.post("/big", "k-1", "{}").await;
    assert!(!retry.replayed());
    assert_eq!(retry.body.len(), 64 * 1024);
    assert_eq!(server.upstream.calls("/big", "k-1"), 2);
}

async fn oversize_request_gets_413(kind: StoreKind) {
    let server = start(kind, |l| l.max_body(1024)).await;
    let reply = server.post("/charges", "k-1", &"x".repeat(1025)).await;
    assert_eq!(
        reply.problem(StatusCode::PAYLOAD_TOO_LARGE),
        "urn:oncely:http:request-too-large"
    );
    assert_eq!(server.upstream.total(), 0);
    // At the limit, it goes through.
    let reply = server.post("/charges", "k-1", &"x".repeat(1024)).await;
    assert_eq!(reply.status, StatusCode::CREATED);
}

async fn retention_ends_the_replay_then_the_key_is_new(kind: StoreKind) {
    for (configure, retention) in [
        (None, Duration::from_secs(24 * 3600)),
        (Some(Duration::from_secs(3600)), Duration::from_secs(3600)),
    ] {
        let clock = ManualClock::new(Timestamp::from_millis(1_800_000_000_000));
        let options = Options {
            clock: Some(clock.clone()),
            ..Options::default()
        };
        let server = start_with(kind, options, |l| match configure {
            Some(retention) => l.retention(retention),
            None => l,
        })
        .await;
        let first = server.post("/charges", "k-1", "{}").await;
        clock.advance(retention - Duration::from_secs(60));
        let replay = server.post("/charges", "k-1", "{}").await;
        assert!(replay.replayed(), "replayed within {retention:?}");
        assert_eq!(replay.body, first.body);
        clock.advance(Duration::from_secs(120));
        let after = server.post("/charges", "k-1", "{}").await;
        assert!(!after.replayed(), "a new operation after {retention:?}");
        assert_ne!(after.body, first.body);
        assert_eq!(server.upstream.calls("/charges", "k-1"), 2);
    }
}

async fn store_down_gets_503(kind: StoreKind) {
    let server = start(kind, |l| l).await;
    server.store.down.store(true, Ordering::SeqCst);
    let reply = server.post("/charges", "k-1", "{}").await;
    assert_eq!(
        reply.problem(StatusCode::SERVICE_UNAVAILABLE),
        "urn:oncely:http:store-unavailable"
    );
    assert_eq!(server.upstream.total(), 0);
    // Back up: the same key executes.
    server.store.down.store(false, Ordering::SeqCst);
    assert_eq!(
        server.post("/charges", "k-1", "{}").await.status,
        StatusCode::CREATED
    );
}

async fn store_down_passes_through_when_fail_open(kind: StoreKind) {
    let server = start(kind, |l| l.fail_open(true)).await;
    server.store.down.store(true, Ordering::SeqCst);
    let reply = server.post("/charges", "k-1", r#"{"amount":10}"#).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(json["body"], r#"{"amount":10}"#);
    assert_eq!(server.upstream.calls("/charges", "k-1"), 1);
}
