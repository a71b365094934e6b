//! The layer around a plain tower service served by hyper, and an inner service that fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use oncely::Oncely;
use oncely_http::IdempotencyLayer;

use crate::StoreKind;
use crate::server::{Options, open_store, start_with};

per_store!(
    plugs_into_a_plain_hyper_server,
    an_inner_service_never_reached_releases_the_key,
    an_inner_service_failing_after_the_send_holds_the_key_for_its_lease,
);

async fn plugs_into_a_plain_hyper_server(kind: StoreKind) {
    let options = Options {
        hyper: true,
        ..Options::default()
    };
    let server = start_with(kind, options, |l| l.require_key(true)).await;
    let first = server.post("/charges", "k-1", "{}").await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = server.post("/charges", "k-1", "{}").await;
    assert!(again.replayed());
    assert_eq!(again.body, first.body);
    server
        .send(Method::POST, "/charges", &[], "{}")
        .await
        .problem(StatusCode::BAD_REQUEST);
    assert_eq!(server.upstream.total(), 1);
}

/// An inner service that fails without a response the first time, with `error`, then answers.
#[derive(Clone)]
struct FailsFirst {
    calls: Arc<AtomicUsize>,
    error: fn() -> oncely::BoxError,
}

impl tower::Service<Request<oncely_http::Body<Full<Bytes>>>> for FailsFirst {
    type Response = http::Response<Full<Bytes>>;
    type Error = oncely::BoxError;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<oncely_http::Body<Full<Bytes>>>) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        std::future::ready(if n == 1 {
            Err((self.error)())
        } else {
            Ok(http::Response::new(Full::new(Bytes::from(format!(
                "answer {n}"
            )))))
        })
    }
}

/// Sends one keyed request to a layer over `FailsFirst`: its error, or (replayed, body).
async fn send_to_fails_first(
    service: &mut oncely_http::IdempotencyService<FailsFirst>,
) -> Result<(StatusCode, bool, Bytes), oncely::BoxError> {
    let request = Request::post("/charges")
        .header("idempotency-key", "k-1")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    std::future::poll_fn(|cx| tower::Service::<Request<Full<Bytes>>>::poll_ready(service, cx))
        .await
        .unwrap();
    let response = tower::Service::call(service, request).await?;
    let status = response.status();
    let replayed = response.headers().contains_key("idempotent-replayed");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok((status, replayed, body))
}

async fn an_inner_service_never_reached_releases_the_key(kind: StoreKind) {
    let dir = tempfile::tempdir().unwrap();
    let oncely = Oncely::new(open_store(kind, &dir).await);
    let upstream = FailsFirst {
        calls: Arc::default(),
        error: || oncely_http::NotSent::new("connection refused").into(),
    };
    let mut service = tower::Layer::layer(&IdempotencyLayer::new(oncely), upstream.clone());
    let failed = send_to_fails_first(&mut service).await.unwrap_err();
    assert!(failed.is::<oncely_http::NotSent>(), "{failed}");
    let ok = StatusCode::OK;
    let answer = Bytes::from("answer 2");
    let send = send_to_fails_first(&mut service).await.unwrap();
    assert_eq!(send, (ok, false, answer.clone()));
    let send = send_to_fails_first(&mut service).await.unwrap();
    assert_eq!(send, (ok, true, answer));
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 2);
}

async fn an_inner_service_failing_after_the_send_holds_the_key_for_its_lease(kind: StoreKind) {
    let dir = tempfile::tempdir().unwrap();
    let lease = Duration::from_millis(400);
    let oncely = Oncely::new(open_store(kind, &dir).await).with_lease(lease);
    // A connection reset after the request went out: it may have been executed.
    let upstream = FailsFirst {
        calls: Arc::default(),
        error: || std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset").into(),
    };
    let mut service = tower::Layer::layer(&IdempotencyLayer::new(oncely), upstream.clone());
    let failed = send_to_fails_first(&mut service).await.unwrap_err();
    assert!(failed.is::<std::io::Error>(), "{failed}");
    // No release: a retry within the lease does not execute.
    let (status, _, _) = send_to_fails_first(&mut service).await.unwrap();
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 1);
    // The lease ran out with no answer: now a retry executes.
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let send = send_to_fails_first(&mut service).await.unwrap();
    assert_eq!(send, (StatusCode::OK, false, Bytes::from("answer 2")));
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 2);
}
