//! A key while its first request runs: duplicates, dropped requests, timeouts and leases.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use oncely::Oncely;
use oncely_http::{IdempotencyLayer, InFlight};

use crate::StoreKind;
use crate::server::{Options, Reply, open_store, start, start_with};
use crate::upstream::{Shared, app};

per_store!(
    same_key_in_flight_gets_409_with_retry_after,
    same_key_in_flight_waits_for_the_first_when_configured,
    concurrent_requests_execute_each_key_exactly_once,
    a_dropped_request_runs_on_and_its_response_is_replayed,
    a_response_timeout_answers_504_and_the_request_runs_on,
    a_handler_slower_than_its_lease_runs_once,
);

async fn same_key_in_flight_gets_409_with_retry_after(kind: StoreKind) {
    let server = Arc::new(start(kind, |l| l).await);
    let first = tokio::spawn({
        let server = server.clone();
        async move { server.post("/slow", "k-1", "{}").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = server.post("/slow", "k-1", "{}").await;
    assert_eq!(
        second.problem(StatusCode::CONFLICT),
        "urn:oncely:http:request-in-progress"
    );
    let retry_after: u64 = second.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // A hint of when the first is likely done, not the 30 s left on its lease.
    assert_eq!(retry_after, 1);

    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    let third = server.post("/slow", "k-1", "{}").await;
    assert!(third.replayed());
    assert_eq!(third.body, first.body);
    assert_eq!(server.upstream.calls("/slow", "k-1"), 1);
}

async fn same_key_in_flight_waits_for_the_first_when_configured(kind: StoreKind) {
    let server = Arc::new(
        start(kind, |l| {
            l.in_flight(InFlight::Wait(Duration::from_secs(5)))
        })
        .await,
    );
    let first = tokio::spawn({
        let server = server.clone();
        async move { server.post("/slow", "k-1", "{}").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = server.post("/slow", "k-1", "{}").await;
    let first = first.await.unwrap();
    assert!(second.replayed(), "{second:?}");
    assert_eq!(second.status, StatusCode::CREATED);
    assert_eq!(second.body, first.body);
    assert_eq!(server.upstream.calls("/slow", "k-1"), 1);

    // A wait shorter than the first request still ends in 409.
    let server = Arc::new(
        start(kind, |l| {
            l.in_flight(InFlight::Wait(Duration::from_millis(100)))
        })
        .await,
    );
    let first = tokio::spawn({
        let server = server.clone();
        async move { server.post("/slow", "k-2", "{}").await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server
        .post("/slow", "k-2", "{}")
        .await
        .problem(StatusCode::CONFLICT);
    assert_eq!(first.await.unwrap().status, StatusCode::CREATED);
}

async fn concurrent_requests_execute_each_key_exactly_once(kind: StoreKind) {
    let server = Arc::new(
        start(kind, |l| {
            l.in_flight(InFlight::Wait(Duration::from_secs(20)))
        })
        .await,
    );
    let mut tasks = Vec::new();
    for i in 0..200 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("storm-{}", i % 20);
            let reply = server.post("/storm", &key, "same body").await;
            (key, reply)
        }));
    }
    let mut by_key: HashMap<String, Vec<Reply>> = HashMap::new();
    for task in tasks {
        let (key, reply) = task.await.unwrap();
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        by_key.entry(key).or_default().push(reply);
    }
    assert_eq!(by_key.len(), 20);
    for (key, replies) in &by_key {
        assert_eq!(
            server.upstream.calls("/storm", key),
            1,
            "{key} executed more than once"
        );
        let executed: Vec<_> = replies.iter().filter(|r| !r.replayed()).collect();
        assert_eq!(executed.len(), 1, "{key}: one response is the execution");
        for reply in replies {
            assert_eq!(reply.body, executed[0].body, "{key}: a replay differs");
        }
    }
    assert_eq!(server.upstream.total(), 20);
}

async fn a_dropped_request_runs_on_and_its_response_is_replayed(kind: StoreKind) {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(kind, &dir).await;
    let oncely = Oncely::new(store).with_lease(Duration::from_secs(300));
    let upstream = Shared::default();
    let layer = IdempotencyLayer::new(oncely);
    let running = layer.running();
    let mut service = tower::Layer::layer(&layer, app(upstream.clone()));
    let request = || {
        Request::post("/effect-first")
            .header("idempotency-key", "k-1")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    };
    let effect_ran = {
        let upstream = upstream.clone();
        move || {
            let upstream = upstream.clone();
            async move {
                while upstream.calls("/effect-first", "k-1") == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    };
    let mut send = async |cut_once_the_effect_ran: bool| {
        std::future::poll_fn(|cx| {
            tower::Service::<Request<Full<Bytes>>>::poll_ready(&mut service, cx)
        })
        .await
        .unwrap();
        let call = tower::Service::call(&mut service, request());
        let response = if cut_once_the_effect_ran {
            // The client gives up (a timeout, a closed connection) while the handler runs:
            // once the effect ran, whatever the store's pace (the handler runs 600 ms on).
            tokio::select! {
                response = call => response.unwrap(),
                _ = tokio::time::timeout(Duration::from_secs(10), effect_ran()) => return None,
            }
        } else {
            call.await.unwrap()
        };
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Some((parts, body))
    };

    assert!(send(true).await.is_none());
    assert_eq!(upstream.calls("/effect-first", "k-1"), 1, "the effect ran");
    // The request runs on: a retry meanwhile is told to come back in a second ...
    let (parts, _) = send(false).await.unwrap();
    assert_eq!(parts.status, StatusCode::CONFLICT);
    assert_eq!(parts.headers[header::RETRY_AFTER], "1");
    // ... and once it is done, gets its response, without a second execution.
    assert!(running.count() >= 1, "the first runs on with no client");
    tokio::time::timeout(Duration::from_secs(5), running.finished())
        .await
        .unwrap();
    let (parts, body) = send(false).await.unwrap();
    assert_eq!(parts.status, StatusCode::CREATED);
    assert_eq!(parts.headers["idempotent-replayed"], "true");
    assert_eq!(body, "effect 1");
    assert_eq!(upstream.calls("/effect-first", "k-1"), 1);
}

async fn a_response_timeout_answers_504_and_the_request_runs_on(kind: StoreKind) {
    let server = start(kind, |l| l.response_timeout(Duration::from_millis(100))).await;
    let first = server.post("/effect-first", "k-1", "{}").await;
    assert_eq!(
        first.problem(StatusCode::GATEWAY_TIMEOUT),
        "urn:oncely:http:response-timeout"
    );
    server
        .post("/effect-first", "k-1", "{}")
        .await
        .problem(StatusCode::CONFLICT);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let replayed = server.post("/effect-first", "k-1", "{}").await;
    assert!(replayed.replayed(), "{replayed:?}");
    assert_eq!(replayed.status, StatusCode::CREATED);
    assert_eq!(replayed.text(), "effect 1");
    assert_eq!(server.upstream.calls("/effect-first", "k-1"), 1);
}

async fn a_handler_slower_than_its_lease_runs_once(kind: StoreKind) {
    // The handler takes 3 s, three leases: only renewal keeps the retries out. (A lease of
    // 200 ms under a 600 ms handler was too tight for a busy machine: a renewal every 67 ms.)
    let options = Options {
        lease: Some(Duration::from_secs(1)),
        ..Options::default()
    };
    let server = Arc::new(start_with(kind, options, |l| l).await);
    let first = tokio::spawn({
        let server = server.clone();
        async move { server.post("/effect-slow", "k-1", "{}").await }
    });
    // The retries start once the first request reached the upstream: on a busy machine a fixed
    // pause let a retry arrive first and become the execution.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.upstream.calls("/effect-slow", "k-1") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut conflicts = 0;
    while !first.is_finished() {
        let retry = server.post("/effect-slow", "k-1", "{}").await;
        if retry.replayed() {
            break;
        }
        retry.problem(StatusCode::CONFLICT);
        conflicts += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(conflicts >= 5, "retries while the first ran: {conflicts}");
    let replayed = server.post("/effect-slow", "k-1", "{}").await;
    assert_eq!(replayed.body, first.body);
    assert_eq!(server.upstream.calls("/effect-slow", "k-1"), 1);
}
