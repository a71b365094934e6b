//! Upstreams that are down, slow, die or speak HTTP/1.0, and clients that hang up.

use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::StatusCode;
use tokio::net::TcpListener;

use crate::support::Gateway;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_is_down_is_502_and_a_retry_executes_once_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let gateway = Gateway::start(dir.path(), &format!("http://{addr}"), &[]);
    let client = client();

    let down = send(&client, "POST", &gateway.url("/pay"), Some("k"), "A").await;
    assert_eq!(down.status, StatusCode::BAD_GATEWAY, "{}", down.text());
    assert_eq!(down.content_type(), "application/problem+json");
    assert!(
        down.text().contains("urn:oncely:http:upstream-unavailable"),
        "{}",
        down.text()
    );

    let executions = Executions::default();
    let _task = start_upstream(TcpListener::bind(addr).await.unwrap(), executions.clone());
    let retry = send(&client, "POST", &gateway.url("/pay"), Some("k"), "A").await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text());
    assert!(!retry.replayed());
    let replay = send(&client, "POST", &gateway.url("/pay"), Some("k"), "A").await;
    assert!(replay.replayed());
    assert_eq!(replay.body, retry.body);
    assert_eq!(executions.of("k"), 1);

    assert_summary_and_exit_0(
        &gateway.terminate(),
        "requests 3: executed 1, replayed 1, in flight (409) 0, key reused (422) 0, \
         rejected 0, store unavailable (503) 0, upstream failed (502/504) 1, \
         passed through 0, abandoned 0",
    );
}

use crate::client::{client, send};
use crate::gateway::assert_summary_and_exit_0;
use crate::upstream::{
    Executions, http10_upstream, start_upstream, upstream, upstream_that_dies_on_receipt,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_slower_than_the_timeout_is_504_then_its_answer_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, executions, _task) = upstream().await;
    let gateway = Gateway::start(dir.path(), &upstream, &["--timeout", "300ms"]);
    let client = client();

    let slow = send(&client, "POST", &gateway.url("/slow"), Some("k"), "A").await;
    assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT, "{}", slow.text());
    assert_eq!(slow.content_type(), "application/problem+json");
    assert!(
        slow.text().contains("urn:oncely:http:response-timeout"),
        "{}",
        slow.text()
    );
    // Held, not released: the upstream is still executing the request.
    let retry = send(&client, "POST", &gateway.url("/slow"), Some("k"), "A").await;
    assert_eq!(retry.status, StatusCode::CONFLICT, "{}", retry.text());
    assert_eq!(retry.headers["retry-after"], "1");
    // The gateway waited on for the upstream and stored its answer.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let replay = send(&client, "POST", &gateway.url("/slow"), Some("k"), "A").await;
    assert_eq!(replay.status, StatusCode::CREATED, "{}", replay.text());
    assert!(replay.replayed());
    assert!(replay.text().contains("key=k n="), "{}", replay.text());
    assert_eq!(executions.of("k"), 1);

    assert_summary_and_exit_0(
        &gateway.terminate(),
        "requests 3: executed 0, replayed 1, in flight (409) 1, key reused (422) 0, \
         rejected 0, store unavailable (503) 0, upstream failed (502/504) 1, \
         passed through 0, abandoned 0",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unkeyed_request_slower_than_the_timeout_is_504() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, _executions, _task) = upstream().await;
    let gateway = Gateway::start(dir.path(), &upstream, &["--timeout", "300ms"]);
    let slow = send(&client(), "POST", &gateway.url("/slow"), None, "A").await;
    assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT, "{}", slow.text());
    assert!(
        slow.text().contains("urn:oncely:http:upstream-timeout"),
        "{}",
        slow.text()
    );
    assert!(slow.text().contains("within 300ms"), "{}", slow.text());
}

/// Writes a keyed POST of `body` (declaring `length` bytes) on a raw connection, waits `wait`,
/// and closes the connection without reading an answer: a client that gave up.
async fn post_and_hang_up(gateway: &Gateway, path: &str, key: &str, body: &str, length: usize) {
    use tokio::io::AsyncWriteExt as _;
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\nIdempotency-Key: {key}\r\n\
         Content-Length: {length}\r\n\r\n{body}"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_request_gets_the_one_execution_on_retry() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, executions, _task) = upstream().await;
    let gateway = Gateway::start(dir.path(), &upstream, &[]);
    let client = client();
    let url = gateway.url("/slow/pay");

    // Gone 0.2 s into the upstream's 1 s: the request runs on.
    post_and_hang_up(&gateway, "/slow/pay", "k", "A", 1).await;
    let retry = send(&client, "POST", &url, Some("k"), "A").await;
    assert_eq!(retry.status, StatusCode::CONFLICT, "{}", retry.text());
    assert_eq!(retry.headers["retry-after"], "1");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after = send(&client, "POST", &url, Some("k"), "A").await;
    assert_eq!(after.status, StatusCode::CREATED, "{}", after.text());
    assert!(after.replayed(), "{}", after.text());
    assert_eq!(executions.of("k"), 1);

    // Gone while its body was still arriving: nothing was sent on, so the retry executes.
    post_and_hang_up(&gateway, "/slow/pay", "half", "A", 10).await;
    let retry = send(&client, "POST", &url, Some("half"), "AAAAAAAAAA").await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text());
    assert!(!retry.replayed());
    assert_eq!(executions.of("half"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_dies_after_receiving_the_request_is_502_and_the_key_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, received) = upstream_that_dies_on_receipt().await;
    let gateway = Gateway::start(dir.path(), &upstream, &[]);
    let client = client();

    let died = send(&client, "POST", &gateway.url("/pay"), Some("k"), "A").await;
    assert_eq!(died.status, StatusCode::BAD_GATEWAY, "{}", died.text());
    assert!(died.text().contains("may have executed"), "{}", died.text());
    // It may have executed: the retry is not sent on while the key's lease lasts.
    let retry = send(&client, "POST", &gateway.url("/pay"), Some("k"), "A").await;
    assert_eq!(retry.status, StatusCode::CONFLICT, "{}", retry.text());
    assert_eq!(received.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_upstream_is_answered_in_the_clients_version() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(dir.path(), &http10_upstream(), &[]);
    let client = client();
    for replayed in [false, true] {
        let answer = send(&client, "POST", &gateway.url("/pay"), Some("k"), "A").await;
        assert_eq!(answer.status, StatusCode::CREATED);
        assert_eq!(answer.version, hyper::Version::HTTP_11);
        assert_eq!(answer.replayed(), replayed);
        assert_eq!(&answer.body[..], b"ok");
    }
}
