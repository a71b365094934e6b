//! The upstream behind the layer: an axum app that counts its executions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use http::{HeaderMap, HeaderValue, StatusCode, header};

/// What the upstream saw: executions per (path, idempotency key).
#[derive(Default)]
pub struct Upstream {
    calls: Mutex<HashMap<String, usize>>,
    total: AtomicUsize,
}

impl Upstream {
    pub fn record(&self, path: &str, headers: &HeaderMap) -> usize {
        let key = headers
            .get("idempotency-key")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        let n = self.total.fetch_add(1, Ordering::SeqCst) + 1;
        *self
            .calls
            .lock()
            .unwrap()
            .entry(format!("{path} {key}"))
            .or_default() += 1;
        n
    }

    pub fn calls(&self, path: &str, key: &str) -> usize {
        let calls = self.calls.lock().unwrap();
        calls.get(&format!("{path} {key}")).copied().unwrap_or(0)
    }

    pub fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
}

pub type Shared = Arc<Upstream>;

/// 201 with a body naming the execution, the key the upstream received, and what was posted;
/// a session cookie, which must not be replayed.
async fn charge(
    State(up): State<Shared>,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    let n = up.record("/charges", &headers);
    let key = headers
        .get("idempotency-key")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let json = serde_json::json!({ "execution": n, "key": key, "body": body });
    let mut response = axum::response::Response::new(axum::body::Body::from(json.to_string()));
    *response.status_mut() = StatusCode::CREATED;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::SET_COOKIE,
        HeaderValue::from_static("session=s3cr3t; HttpOnly"),
    );
    h.insert("x-execution", HeaderValue::from(n));
    response
}

async fn refund(State(up): State<Shared>, headers: HeaderMap) -> (StatusCode, String) {
    let n = up.record("/refunds", &headers);
    (StatusCode::CREATED, format!("refund {n}"))
}

async fn list(State(up): State<Shared>, headers: HeaderMap) -> String {
    let n = up.record("/charges GET", &headers);
    format!("list {n}")
}

async fn slow(State(up): State<Shared>, headers: HeaderMap) -> (StatusCode, String) {
    tokio::time::sleep(Duration::from_millis(600)).await;
    let n = up.record("/slow", &headers);
    (StatusCode::CREATED, format!("slow {n}"))
}

/// 201 after 600 ms. The execution is recorded at receipt, before the handler awaits anything,
/// so dropping the request's future cannot undo it: as with an effect in another process.
async fn effect_first(State(up): State<Shared>, headers: HeaderMap) -> (StatusCode, String) {
    let n = up.record("/effect-first", &headers);
    tokio::time::sleep(Duration::from_millis(600)).await;
    (StatusCode::CREATED, format!("effect {n}"))
}

/// [`effect_first`]'s, for 3 s.
async fn effect_slow(State(up): State<Shared>, headers: HeaderMap) -> (StatusCode, String) {
    let n = up.record("/effect-slow", &headers);
    tokio::time::sleep(Duration::from_secs(3)).await;
    (StatusCode::CREATED, format!("effect {n}"))
}

/// 500 the first time per key, 201 after.
async fn flaky(State(up): State<Shared>, headers: HeaderMap) -> (StatusCode, String) {
    up.record("/flaky", &headers);
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    if up.calls("/flaky", &key) == 1 {
        (StatusCode::INTERNAL_SERVER_ERROR, "boom".into())
    } else {
        (StatusCode::CREATED, "recovered".into())
    }
}

async fn big(State(up): State<Shared>, headers: HeaderMap) -> (StatusCode, String) {
    let n = up.record("/big", &headers);
    (StatusCode::CREATED, format!("{n:>8}").repeat(8 * 1024))
}

/// A short per-key pause, so concurrent requests overlap, then a body unique to the execution.
async fn storm(State(up): State<Shared>, headers: HeaderMap) -> (StatusCode, String) {
    tokio::time::sleep(Duration::from_millis(20)).await;
    let n = up.record("/storm", &headers);
    (StatusCode::CREATED, format!("execution {n}"))
}

/// The status the path names (`/status/429`), with a body naming the execution: one path per
/// status, so each counts its own executions.
async fn status(
    State(up): State<Shared>,
    axum::extract::Path(code): axum::extract::Path<u16>,
    headers: HeaderMap,
) -> (StatusCode, String) {
    let n = up.record(&format!("/status/{code}"), &headers);
    (
        StatusCode::from_u16(code).unwrap(),
        format!("execution {n}"),
    )
}

pub fn app(up: Shared) -> Router {
    Router::new()
        .route("/charges", post(charge).get(list))
        .route("/refunds", post(refund))
        .route("/slow", post(slow))
        .route("/effect-first", post(effect_first))
        .route("/effect-slow", post(effect_slow))
        .route("/flaky", post(flaky))
        .route("/big", post(big))
        .route("/storm", post(storm))
        .route("/status/{code}", post(status))
        .with_state(up)
}
