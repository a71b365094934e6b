//! The gateway used from Rust (`oncely_http::gateway`), over real HTTP on loopback: an axum
//! upstream counting its executions, the gateway on the memory store, hyper-util's client.
//! `oncely serve`'s own tests (`cli/tests/serve.rs`, `cli/tests/serve_connections.rs`) cover
//! the rest of its behaviour through the binary.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use oncely_http::IdempotencyLayer;
use oncely_http::gateway::{Gateway, GatewayOptions, Outcome, Served};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A gateway in front of `upstream`, on a fresh memory store, serving on a loopback port until
/// the sender is used or dropped.
async fn start(upstream: &str) -> (String, oneshot::Sender<()>, tokio::task::JoinHandle<Served>) {
    start_with(upstream, |layer| layer).await
}

/// [`start`], with the layer as `configure` makes it.
async fn start_with(
    upstream: &str,
    configure: impl FnOnce(IdempotencyLayer) -> IdempotencyLayer,
) -> (String, oneshot::Sender<()>, tokio::task::JoinHandle<Served>) {
    let store = oncely::connect("memory:").await.unwrap();
    let layer = configure(IdempotencyLayer::new(oncely::Oncely::new(store)));
    let gateway = Gateway::new(layer, GatewayOptions::new(upstream)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(gateway.serve(listener, async {
        let _ = stopped.await;
    }));
    (format!("http://{addr}"), stop, served)
}

/// POSTs `body` to `url`, with `key` as its Idempotency-Key if any: the status, whether it was
/// a replay, and the body.
async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    key: Option<&str>,
) -> (StatusCode, bool, String) {
    let mut request = Request::post(url);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let request = request.body(Full::new(Bytes::from("{}"))).unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let replayed = response.headers().contains_key("idempotent-replayed");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        replayed,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn a_key_is_executed_once_and_the_counts_say_what_happened() {
    let executions = Arc::new(AtomicUsize::new(0));
    let counter = executions.clone();
    let app = Router::new().route(
        "/charges",
        post(
            move || async move { format!("charge {}", counter.fetch_add(1, Ordering::SeqCst) + 1) },
        ),
    );
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_url = format!("http://{}", upstream.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(upstream, app).await });
    let (gateway, stop, served) = start(&upstream_url).await;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("{gateway}/charges");

    let first = send(&client, &url, Some("k1")).await;
    assert_eq!(first, (StatusCode::OK, false, "charge 1".to_owned()));
    let retry = send(&client, &url, Some("k1")).await;
    assert_eq!(retry, (StatusCode::OK, true, "charge 1".to_owned()));
    let unkeyed = send(&client, &url, None).await;
    assert_eq!(unkeyed, (StatusCode::OK, false, "charge 2".to_owned()));
    assert_eq!(executions.load(Ordering::SeqCst), 2);

    drop(client);
    stop.send(()).unwrap();
    let served = served.await.unwrap();
    assert!(served.drained);
    assert_eq!(served.counts.count(Outcome::Executed), 1);
    assert_eq!(
        served.counts.summary(),
        "requests 3: executed 1, replayed 1, in flight (409) 0, key reused (422) 0, rejected 0, \
         store unavailable (503) 0, upstream failed (502/504) 0, passed through 1, abandoned 0"
    );
    assert!(
        served
            .counts
            .prometheus()
            .lines()
            .any(|l| l == "oncely_serve_requests_total{outcome=\"replayed\"} 1")
    );
}

#[tokio::test]
async fn an_upstream_that_refuses_is_502_and_the_key_is_released() {
    // A port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (gateway, stop, served) = start(&upstream_url).await;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("{gateway}/charges");

    // Both attempts reach for the upstream: the first released its key (409 otherwise).
    for _ in 0..2 {
        let (status, replayed, body) = send(&client, &url, Some("k1")).await;
        assert_eq!(
            (status, replayed),
            (StatusCode::BAD_GATEWAY, false),
            "{body}"
        );
        assert!(
            body.contains("urn:oncely:http:upstream-unavailable"),
            "{body}"
        );
        assert!(body.contains("the request was not sent"), "{body}");
    }

    drop(client);
    stop.send(()).unwrap();
    let served = served.await.unwrap();
    assert_eq!(served.counts.count(Outcome::UpstreamFailed), 2);
}

/// With `forward_key`, the upstream gets the key derived for the step from the claimed scope
/// and key, not the client's: the same on every execution of that key, so an upstream that is
/// itself idempotent by `Idempotency-Key` runs a second execution of it once.
#[tokio::test]
async fn the_upstream_gets_the_derived_key_when_asked() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let recorder = seen.clone();
    let app = Router::new().route(
        "/charges",
        post(move |headers: http::HeaderMap| async move {
            let key = headers
                .get("idempotency-key")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            recorder.lock().unwrap().push(key.clone());
            key
        }),
    );
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_url = format!("http://{}", upstream.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(upstream, app).await });
    let client = Client::builder(TokioExecutor::new()).build_http();

    let (plain, stop, _) = start(&upstream_url).await;
    let (_, _, forwarded) = send(&client, &format!("{plain}/charges"), Some("k1")).await;
    assert_eq!(forwarded, "k1", "the client's key, unchanged, by default");
    stop.send(()).unwrap();

    let (gateway, stop, _) = start_with(&upstream_url, |l| l.forward_key("upstream")).await;
    let (_, _, forwarded) = send(&client, &format!("{gateway}/charges"), Some("k1")).await;
    let scope = oncely::Scope::new("http").unwrap();
    let derived = oncely::Key::new("k1").unwrap().derive(&scope, "upstream");
    assert_eq!(forwarded, derived.as_str());
    let (_, _, other) = send(&client, &format!("{gateway}/charges"), Some("k2")).await;
    assert_ne!(other, forwarded);
    stop.send(()).unwrap();
}

/// An inner service finds the claim in the request's extensions, to derive the keys of the
/// calls it makes.
#[tokio::test]
async fn the_inner_service_finds_the_claim_to_derive_its_own_keys() {
    use tower::ServiceExt;
    let store = oncely::connect("memory:").await.unwrap();
    let layer = IdempotencyLayer::new(oncely::Oncely::new(store));
    let app = Router::new()
        .route(
            "/orders",
            post(
                |axum::Extension(claim): axum::Extension<oncely::Claim>| async move {
                    claim.derive("charge").to_string()
                },
            ),
        )
        .layer(layer);
    let request = Request::post("/orders")
        .header("idempotency-key", "order-42")
        .body(axum::body::Body::from("{}"))
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let scope = oncely::Scope::new("http").unwrap();
    let expected = oncely::Key::new("order-42")
        .unwrap()
        .derive(&scope, "charge");
    assert_eq!(body, expected.as_str());
}
