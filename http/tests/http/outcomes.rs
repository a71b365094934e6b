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
    not_now_statuses_release_the_key_and_other_client_errors_are_replayed,
    only_the_listed_statuses_are_stored_when_listed,
    error_responses_are_replayed_for_their_own_retention,
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

/// Two requests with one key (its own: a key is bound to its path) to `/status/{code}`: how
/// many executions, and whether the second was a replay.
async fn twice(server: &crate::server::Server, code: u16) -> (usize, bool) {
    let (path, key) = (format!("/status/{code}"), format!("k-{code}"));
    let first = server.post(&path, &key, "{}").await;
    assert_eq!(first.status.as_u16(), code);
    let second = server.post(&path, &key, "{}").await;
    assert_eq!(second.status.as_u16(), code);
    (server.upstream.calls(&path, &key), second.replayed())
}

async fn not_now_statuses_release_the_key_and_other_client_errors_are_replayed(kind: StoreKind) {
    let server = start(kind, |l| l).await;
    // "Not now": the retry runs again.
    for code in [408, 409, 425, 429, 500, 503] {
        assert_eq!(twice(&server, code).await, (2, false), "{code}");
    }
    // The same request would fail the same way: replayed, as successes are.
    for code in [200, 201, 202, 400, 404, 422] {
        assert_eq!(twice(&server, code).await, (1, true), "{code}");
    }
}

async fn only_the_listed_statuses_are_stored_when_listed(kind: StoreKind) {
    let server = start(kind, |l| {
        l.store_statuses([StatusCode::CREATED, StatusCode::SERVICE_UNAVAILABLE])
    })
    .await;
    for code in [201, 503] {
        assert_eq!(twice(&server, code).await, (1, true), "{code}");
    }
    for code in [200, 422, 429] {
        assert_eq!(twice(&server, code).await, (2, false), "{code}");
    }
}

async fn error_responses_are_replayed_for_their_own_retention(kind: StoreKind) {
    let clock = ManualClock::new(Timestamp::from_millis(1_800_000_000_000));
    let options = Options {
        clock: Some(clock.clone()),
        ..Options::default()
    };
    let server = start_with(kind, options, |l| {
        l.error_retention(Duration::from_secs(3600))
    })
    .await;
    for code in [201, 422] {
        let first = server
            .post(&format!("/status/{code}"), &format!("k-{code}"), "{}")
            .await;
        assert!(!first.replayed());
    }
    clock.advance(Duration::from_secs(3540));
    for code in [201, 422] {
        let replay = server
            .post(&format!("/status/{code}"), &format!("k-{code}"), "{}")
            .await;
        assert!(replay.replayed(), "{code} replayed within the hour");
    }
    clock.advance(Duration::from_secs(120));
    let success = server.post("/status/201", "k-201", "{}").await;
    assert!(
        success.replayed(),
        "a success is kept for the retention (24 h)"
    );
    let error = server.post("/status/422", "k-422", "{}").await;
    assert!(
        !error.replayed(),
        "an error is kept for the error retention"
    );
    assert_eq!(server.upstream.calls("/status/422", "k-422"), 2);
    assert_eq!(server.upstream.calls("/status/201", "k-201"), 1);
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
