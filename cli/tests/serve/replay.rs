//! A key executes once and its response is replayed: keys required, scoped, waited for, too
//! large to store, and a client that retries on its own.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};

use crate::client::{client, one_execution_per_key, retrying_python_client, send};
use crate::gateway::assert_summary_and_exit_0;
use crate::support::Gateway;
use crate::upstream::upstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_executes_once_and_its_response_is_replayed_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, executions, _task) = upstream().await;
    let gateway = Gateway::start(dir.path(), &upstream, &[]);
    let client = client();
    let orders = gateway.url("/orders?x=1");

    let first = send(&client, "POST", &orders, Some("k1"), "A").await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    assert!(!first.replayed());
    assert!(
        first.text().starts_with("POST /orders?x=1 key=k1 "),
        "{}",
        first.text()
    );
    // The Connection-named hop-by-hop header is not forwarded.
    assert!(first.text().contains("hop=false"), "{}", first.text());
    let upstream_host = upstream.trim_start_matches("http://");
    let forwarded = format!("host={upstream_host} xff=127.0.0.1 xfh={} ", gateway.addr);
    assert!(
        first.text().contains(&forwarded),
        "{forwarded} not in {}",
        first.text()
    );
    assert_eq!(first.headers["x-upstream"], "yes");
    assert_eq!(first.headers["set-cookie"], "session=1");
    assert_eq!(executions.of("k1"), 1);

    let again = send(&client, "POST", &orders, Some("k1"), "A").await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert!(again.replayed());
    assert_eq!(again.body, first.body);
    assert_eq!(again.headers["x-upstream"], "yes");
    // Set-Cookie is not stored, so not replayed.
    assert!(!again.headers.contains_key("set-cookie"));
    assert_eq!(executions.of("k1"), 1);

    let other = send(&client, "POST", &orders, Some("k1"), "B").await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.content_type(), "application/problem+json");
    assert!(
        other
            .text()
            .contains("urn:oncely:http:idempotency-key-reused")
    );
    assert_eq!(executions.of("k1"), 1);

    let malformed = send(&client, "POST", &orders, Some(""), "A").await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);

    for _ in 0..2 {
        let no_key = send(&client, "POST", &orders, None, "A").await;
        assert_eq!(no_key.status, StatusCode::CREATED);
        assert!(!no_key.replayed());
    }
    assert_eq!(executions.of(""), 2);

    let get = send(&client, "GET", &gateway.url("/orders/7"), Some("k1"), "").await;
    assert_eq!(get.status, StatusCode::OK);
    assert!(
        get.text().starts_with("GET /orders/7 key=k1 "),
        "{}",
        get.text()
    );
    assert!(!get.replayed());
    assert_eq!(executions.of("k1"), 2);

    assert_summary_and_exit_0(
        &gateway.terminate(),
        "requests 7: executed 1, replayed 1, in flight (409) 0, key reused (422) 1, \
         rejected 1, store unavailable (503) 0, upstream failed (502/504) 0, \
         passed through 3, abandoned 0",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_require_key_a_post_without_one_is_400_and_never_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, executions, _task) = upstream().await;
    let gateway = Gateway::start(
        dir.path(),
        &upstream,
        &["--require-key", "--methods", "post,put", "--ttl", "1h"],
    );
    let client = client();

    let no_key = send(&client, "POST", &gateway.url("/pay"), None, "A").await;
    assert_eq!(no_key.status, StatusCode::BAD_REQUEST);
    assert_eq!(no_key.content_type(), "application/problem+json");
    assert!(
        no_key.text().contains("idempotency-key-missing"),
        "{}",
        no_key.text()
    );
    let put = send(&client, "PUT", &gateway.url("/pay"), None, "A").await;
    assert_eq!(put.status, StatusCode::BAD_REQUEST);
    // PATCH is not in --methods: passed through.
    let patch = send(&client, "PATCH", &gateway.url("/pay"), None, "A").await;
    assert_eq!(patch.status, StatusCode::OK);
    let get = send(&client, "GET", &gateway.url("/pay"), None, "").await;
    assert_eq!(get.status, StatusCode::OK);
    assert_eq!(executions.of(""), 2);

    assert_summary_and_exit_0(
        &gateway.terminate(),
        "requests 4: executed 0, replayed 0, in flight (409) 0, key reused (422) 0, \
         rejected 2, store unavailable (503) 0, upstream failed (502/504) 0, \
         passed through 2, abandoned 0",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrying_python_client_gets_one_execution_per_key_and_its_answer() {
    const KEYS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let (upstream, executions, _task) = upstream().await;
    let gateway = Gateway::start(dir.path(), &upstream, &[]);
    let answers = retrying_python_client(gateway.url("/slow/charges"), KEYS, 25, &[]).await;
    one_execution_per_key(&answers, &executions, KEYS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_in_flight_wait_a_duplicate_waits_for_the_first_response_instead_of_409() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, executions, _task) = upstream().await;
    let gateway = Gateway::start(dir.path(), &upstream, &["--in-flight-wait", "5s"]);
    let client = client();
    let url = gateway.url("/slow");
    let first = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { send(&client, "POST", &url, Some("k"), "A").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = send(&client, "POST", &url, Some("k"), "A").await;
    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.text());
    assert!(!first.replayed() && second.replayed());
    assert_eq!(second.body, first.body);
    assert_eq!(executions.of("k"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_scoped_by_the_principal_headers() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, executions, _task) = upstream().await;
    let gateway = Gateway::start(
        dir.path(),
        &upstream,
        &["--principal-header", "authorization"],
    );
    let client = client();
    let as_user = |user: &'static str| {
        let client = client.clone();
        let url = gateway.url("/pay");
        async move {
            let request = Request::post(url)
                .header("idempotency-key", "k")
                .header("authorization", user)
                .body(Full::new(Bytes::from_static(b"A")))
                .unwrap();
            let response = client.request(request).await.unwrap();
            let replayed = response.headers().contains_key("idempotent-replayed");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (replayed, body)
        }
    };
    let (alice_replayed, alice) = as_user("Bearer alice").await;
    let (bob_replayed, bob) = as_user("Bearer bob").await;
    let (again_replayed, again) = as_user("Bearer alice").await;
    assert!(!alice_replayed && !bob_replayed && again_replayed);
    assert_ne!(alice, bob);
    assert_eq!(again, alice);
    assert_eq!(executions.of("k"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_over_the_storage_limit_streams_through_and_its_key_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, executions, _task) = upstream().await;
    let gateway = Gateway::start(dir.path(), &upstream, &[]);
    let client = client();

    let big = send(&client, "POST", &gateway.url("/big"), Some("k"), "A").await;
    assert_eq!(big.status, StatusCode::CREATED);
    assert!(big.body.len() > 2 * 1024 * 1024, "{}", big.body.len());
    let again = send(&client, "POST", &gateway.url("/big"), Some("k"), "A").await;
    assert!(!again.replayed());
    assert_ne!(again.body, big.body);
    assert_eq!(executions.of("k"), 2);
    let get = send(&client, "GET", &gateway.url("/big"), None, "").await;
    assert!(get.body.len() > 2 * 1024 * 1024);
}
