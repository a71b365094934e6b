//! The Idempotency-Key layer over real HTTP on loopback: an axum app behind the layer, served by
//! `axum::serve` on 127.0.0.1:0, driven by hyper-util's client, against the memory store, the
//! SQLite store in a temporary directory, PostgreSQL (a fresh schema per test; the server at
//! `ONCELY_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/test`) and Redis (a fresh
//! key prefix per test; `ONCELY_TEST_REDIS`, default `redis://127.0.0.1:6379`). Each test runs
//! once per store.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use oncely::backend::ClaimRequest;
use oncely::{
    Claim, ClaimOutcome, Error, Key, ManualClock, Oncely, Record, Scope, Store, StoreStats,
    Timestamp, VersionCheck, async_trait,
};
use oncely_http::{IdempotencyLayer, InFlight};

#[derive(Clone, Copy, Debug)]
enum StoreKind {
    Memory,
    Sqlite,
    Postgres,
    Redis,
}

/// The PostgreSQL and Redis servers under test: each test gets a schema (PostgreSQL) or a key
/// prefix (Redis) of its own, named `<PREFIX>_<run start, Unix s>_<pid>_<n>`; a run first drops
/// what earlier runs left (those whose process is gone, or that started over an hour ago).
/// Fresh schemas and key prefixes on the servers, named after this test binary.
mod servers {
    const PREFIX: &str = "oncely_http_test";

    pub async fn postgres_url() -> String {
        oncely_conformance::servers::postgres_url(PREFIX).await
    }

    pub async fn redis_url() -> String {
        oncely_conformance::servers::redis_url(PREFIX).await
    }
}

/// What the upstream saw: executions per (path, idempotency key).
#[derive(Default)]
struct Upstream {
    calls: Mutex<HashMap<String, usize>>,
    total: AtomicUsize,
}

impl Upstream {
    fn record(&self, path: &str, headers: &HeaderMap) -> usize {
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

    fn calls(&self, path: &str, key: &str) -> usize {
        let calls = self.calls.lock().unwrap();
        calls.get(&format!("{path} {key}")).copied().unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
}

type Shared = Arc<Upstream>;

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

fn app(up: Shared) -> Router {
    Router::new()
        .route("/charges", post(charge).get(list))
        .route("/refunds", post(refund))
        .route("/slow", post(slow))
        .route("/effect-first", post(effect_first))
        .route("/flaky", post(flaky))
        .route("/big", post(big))
        .route("/storm", post(storm))
        .with_state(up)
}

/// A store that can be switched off: every call then fails as an unreachable store does.
#[derive(Debug)]
struct Switchable {
    inner: Arc<dyn Store>,
    down: AtomicBool,
}

impl Switchable {
    fn check(&self) -> oncely::Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::Unavailable {
                store: format!("{:?}", self.inner),
                source: "connection refused (switched off by the test)".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Store for Switchable {
    async fn claim_many(
        &self,
        requests: &[ClaimRequest],
        now: Timestamp,
    ) -> oncely::Result<Vec<ClaimOutcome>> {
        self.check()?;
        self.inner.claim_many(requests, now).await
    }
    async fn complete(
        &self,
        claim: &Claim,
        outcome: &[u8],
        expires_at: Timestamp,
    ) -> oncely::Result<()> {
        self.check()?;
        self.inner.complete(claim, outcome, expires_at).await
    }
    async fn release(&self, claim: &Claim) -> oncely::Result<()> {
        self.check()?;
        self.inner.release(claim).await
    }
    async fn extend(&self, claim: &Claim, lease_until: Timestamp) -> oncely::Result<()> {
        self.check()?;
        self.inner.extend(claim, lease_until).await
    }
    async fn get(&self, scope: &Scope, key: &Key) -> oncely::Result<Option<Record>> {
        self.check()?;
        self.inner.get(scope, key).await
    }
    async fn purge(&self, expired_before: Timestamp, limit: usize) -> oncely::Result<usize> {
        self.check()?;
        self.inner.purge(expired_before, limit).await
    }
    async fn stats(&self, now: Timestamp) -> oncely::Result<StoreStats> {
        self.check()?;
        self.inner.stats(now).await
    }
    async fn apply_if_newer(
        &self,
        scope: &Scope,
        entity: &Key,
        version: u64,
    ) -> oncely::Result<VersionCheck> {
        self.check()?;
        self.inner.apply_if_newer(scope, entity, version).await
    }
}

struct Server {
    addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    upstream: Shared,
    store: Arc<Switchable>,
    _dir: tempfile::TempDir,
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .map(|v| v.as_bytes())
            == Some(b"true")
    }

    /// Asserts an RFC 9457 problem with `status`, and answers its `type`.
    fn problem(&self, status: StatusCode) -> String {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(
            self.headers.get(header::CONTENT_TYPE).unwrap(),
            "application/problem+json"
        );
        let json: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        assert_eq!(json["status"], status.as_u16());
        for field in ["type", "title", "detail"] {
            assert!(
                json[field].as_str().is_some_and(|s| !s.is_empty()),
                "{field} missing: {json}"
            );
        }
        json["type"].as_str().unwrap().to_owned()
    }
}

async fn start(
    kind: StoreKind,
    configure: impl FnOnce(IdempotencyLayer) -> IdempotencyLayer,
) -> Server {
    start_with(kind, Options::default(), configure).await
}

#[derive(Default)]
struct Options {
    /// The clock of the `Oncely` under the layer (the system clock if none).
    clock: Option<ManualClock>,
    /// Serve with a plain hyper connection instead of `axum::serve`.
    hyper: bool,
    /// The claim's lease (`Oncely`'s default if none).
    lease: Option<Duration>,
}

async fn open_store(kind: StoreKind, dir: &tempfile::TempDir) -> Arc<Switchable> {
    let url = match kind {
        StoreKind::Memory => "memory:".to_owned(),
        StoreKind::Sqlite => format!("sqlite:{}", dir.path().join("oncely.db").display()),
        StoreKind::Postgres => servers::postgres_url().await,
        StoreKind::Redis => servers::redis_url().await,
    };
    Arc::new(Switchable {
        inner: oncely::connect(&url).await.unwrap(),
        down: AtomicBool::new(false),
    })
}

async fn start_with(
    kind: StoreKind,
    options: Options,
    configure: impl FnOnce(IdempotencyLayer) -> IdempotencyLayer,
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(kind, &dir).await;
    let mut oncely = Oncely::new(store.clone());
    if let Some(clock) = options.clock {
        oncely = oncely.with_clock(clock);
    }
    if let Some(lease) = options.lease {
        oncely = oncely.with_lease(lease);
    }
    let upstream = Shared::default();
    let layer = configure(IdempotencyLayer::new(oncely));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    if options.hyper {
        // The layer around a tower service, served by hyper itself: no axum in the serving path.
        let service = tower::Layer::layer(&layer, app(upstream.clone()));
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let service = TowerToHyperService::new(service.clone());
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
    } else {
        let app = app(upstream.clone()).layer(layer);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    }
    let client = Client::builder(TokioExecutor::new()).build_http();
    Server {
        addr,
        client,
        upstream,
        store,
        _dir: dir,
    }
}

impl Server {
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &[u8])],
        body: &str,
    ) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            request = request.header(*name, HeaderValue::from_bytes(value).unwrap());
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    async fn post(&self, path: &str, key: &str, body: &str) -> Reply {
        self.send(
            Method::POST,
            path,
            &[("idempotency-key", key.as_bytes())],
            body,
        )
        .await
    }
}

macro_rules! per_store {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::StoreKind::Memory).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::StoreKind::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::StoreKind::Postgres).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::StoreKind::Redis).await
                }
            )*
        }
    };
}

per_store!(
    first_response_is_replayed_byte_for_byte_without_set_cookie,
    missing_key_passes_through_by_default,
    missing_key_gets_400_when_required,
    empty_key_gets_400,
    key_over_255_characters_gets_400,
    key_not_visible_ascii_gets_400,
    key_sent_twice_gets_400,
    same_key_other_body_gets_422,
    same_key_other_path_gets_422,
    same_key_in_flight_gets_409_with_retry_after,
    same_key_in_flight_waits_for_the_first_when_configured,
    server_error_releases_the_key_and_a_retry_executes,
    server_error_is_stored_when_configured,
    oversize_response_is_passed_through_and_released,
    oversize_request_gets_413,
    store_down_gets_503,
    store_down_passes_through_when_fail_open,
    get_passes_through_untouched,
    two_principals_with_one_key_never_see_each_others_response,
    key_header_reaches_the_upstream_unchanged,
    concurrent_requests_execute_each_key_exactly_once,
    retention_ends_the_replay_then_the_key_is_new,
    a_dropped_request_runs_on_and_its_response_is_replayed,
    a_response_timeout_answers_504_and_the_request_runs_on,
    a_handler_slower_than_its_lease_runs_once,
    plugs_into_a_plain_hyper_server,
    an_inner_service_never_reached_releases_the_key,
    an_inner_service_failing_after_the_send_holds_the_key_for_its_lease,
    same_key_other_fingerprint_header_gets_422,
);

async fn first_response_is_replayed_byte_for_byte_without_set_cookie(kind: StoreKind) {
    let server = start(kind, |l| l).await;
    let first = server.post("/charges", "k-1", r#"{"amount":10}"#).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(!first.replayed());
    assert!(first.headers.contains_key(header::SET_COOKIE));

    for _ in 0..3 {
        let again = server.post("/charges", "k-1", r#"{"amount":10}"#).await;
        assert!(again.replayed(), "{again:?}");
        assert_eq!(again.status, first.status);
        assert_eq!(again.body, first.body);
        assert_eq!(
            again.headers.get("x-execution"),
            first.headers.get("x-execution")
        );
        assert_eq!(
            again.headers.get(header::CONTENT_TYPE),
            first.headers.get(header::CONTENT_TYPE)
        );
        assert!(!again.headers.contains_key(header::SET_COOKIE));
    }
    assert_eq!(server.upstream.calls("/charges", "k-1"), 1);
}

async fn missing_key_passes_through_by_default(kind: StoreKind) {
    let server = start(kind, |l| l).await;
    for _ in 0..2 {
        let reply = server.send(Method::POST, "/charges", &[], "{}").await;
        assert_eq!(reply.status, StatusCode::CREATED);
        assert!(!reply.replayed());
    }
    assert_eq!(server.upstream.total(), 2);
}

async fn missing_key_gets_400_when_required(kind: StoreKind) {
    let server = start(kind, |l| l.require_key(true)).await;
    let reply = server.send(Method::POST, "/charges", &[], "{}").await;
    assert_eq!(
        reply.problem(StatusCode::BAD_REQUEST),
        "urn:oncely:http:idempotency-key-missing"
    );
    assert_eq!(server.upstream.total(), 0);
}

async fn malformed(kind: StoreKind, headers: &[(&str, &[u8])]) {
    let server = start(kind, |l| l).await;
    let reply = server.send(Method::POST, "/charges", headers, "{}").await;
    assert_eq!(
        reply.problem(StatusCode::BAD_REQUEST),
        "urn:oncely:http:idempotency-key-malformed"
    );
    assert_eq!(server.upstream.total(), 0);
}

async fn empty_key_gets_400(kind: StoreKind) {
    malformed(kind, &[("idempotency-key", b"")]).await;
}

async fn key_over_255_characters_gets_400(kind: StoreKind) {
    malformed(kind, &[("idempotency-key", "k".repeat(256).as_bytes())]).await;
    // 255 is fine.
    let server = start(kind, |l| l).await;
    let reply = server.post("/charges", &"k".repeat(255), "{}").await;
    assert_eq!(reply.status, StatusCode::CREATED);
}

async fn key_not_visible_ascii_gets_400(kind: StoreKind) {
    malformed(kind, &[("idempotency-key", "clé-1".as_bytes())]).await;
    malformed(kind, &[("idempotency-key", b"a\tb")]).await;
    malformed(kind, &[("idempotency-key", b"order 7")]).await;
}

async fn key_sent_twice_gets_400(kind: StoreKind) {
    malformed(
        kind,
        &[("idempotency-key", b"k-1"), ("idempotency-key", b"k-1")],
    )
    .await;
}

async fn same_key_other_body_gets_422(kind: StoreKind) {
    let server = start(kind, |l| l).await;
    assert_eq!(
        server
            .post("/charges", "k-1", r#"{"amount":10}"#)
            .await
            .status,
        StatusCode::CREATED
    );
    let reply = server.post("/charges", "k-1", r#"{"amount":99}"#).await;
    assert_eq!(
        reply.problem(StatusCode::UNPROCESSABLE_ENTITY),
        "urn:oncely:http:idempotency-key-reused"
    );
    assert_eq!(server.upstream.total(), 1);
}

async fn same_key_other_path_gets_422(kind: StoreKind) {
    let server = start(kind, |l| l).await;
    assert_eq!(
        server.post("/charges", "k-1", "{}").await.status,
        StatusCode::CREATED
    );
    let reply = server.post("/refunds", "k-1", "{}").await;
    reply.problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(server.upstream.calls("/refunds", "k-1"), 0);
}

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

async fn get_passes_through_untouched(kind: StoreKind) {
    let server = start(kind, |l| l.require_key(true)).await;
    for _ in 0..2 {
        let reply = server
            .send(Method::GET, "/charges", &[("idempotency-key", b"k-1")], "")
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(!reply.replayed());
    }
    // No key needed either, even with require_key.
    assert_eq!(
        server.send(Method::GET, "/charges", &[], "").await.status,
        StatusCode::OK
    );
    assert_eq!(server.upstream.calls("/charges GET", "k-1"), 2);
}

async fn two_principals_with_one_key_never_see_each_others_response(kind: StoreKind) {
    let server = start(kind, |l| l.principal_headers([header::AUTHORIZATION])).await;
    let as_user = |token: &'static str| {
        let server = &server;
        async move {
            server
                .send(
                    Method::POST,
                    "/charges",
                    &[
                        ("idempotency-key", b"k-1"),
                        ("authorization", token.as_bytes()),
                    ],
                    "{}",
                )
                .await
        }
    };
    let alice = as_user("Bearer alice").await;
    let bob = as_user("Bearer bob").await;
    assert!(!alice.replayed() && !bob.replayed());
    assert_ne!(alice.body, bob.body);
    assert_eq!(as_user("Bearer alice").await.body, alice.body);
    assert_eq!(as_user("Bearer bob").await.body, bob.body);
    assert_eq!(server.upstream.calls("/charges", "k-1"), 2);
}

async fn key_header_reaches_the_upstream_unchanged(kind: StoreKind) {
    let server = start(kind, |l| l).await;
    let key = "Key-With.Mixed_CASE~and:punctuation/8e03978e";
    let reply = server.post("/charges", key, "{}").await;
    let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(json["key"], key);
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
    let mut send = async |cut_after: Option<Duration>| {
        std::future::poll_fn(|cx| {
            tower::Service::<Request<Full<Bytes>>>::poll_ready(&mut service, cx)
        })
        .await
        .unwrap();
        let call = tower::Service::call(&mut service, request());
        let response = match cut_after {
            // The client gives up (a timeout, a closed connection) while the handler runs.
            Some(cut) => match tokio::time::timeout(cut, call).await {
                Err(_) => return None,
                Ok(response) => response.unwrap(),
            },
            None => call.await.unwrap(),
        };
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Some((parts, body))
    };

    assert!(send(Some(Duration::from_millis(150))).await.is_none());
    assert_eq!(upstream.calls("/effect-first", "k-1"), 1, "the effect ran");
    // The request runs on: a retry meanwhile is told to come back in a second ...
    let (parts, _) = send(None).await.unwrap();
    assert_eq!(parts.status, StatusCode::CONFLICT);
    assert_eq!(parts.headers[header::RETRY_AFTER], "1");
    // ... and once it is done, gets its response, without a second execution.
    assert!(running.count() >= 1, "the first runs on with no client");
    tokio::time::timeout(Duration::from_secs(5), running.finished())
        .await
        .unwrap();
    let (parts, body) = send(None).await.unwrap();
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
    // The handler takes 600 ms, three leases: only renewal keeps the retries out.
    let options = Options {
        lease: Some(Duration::from_millis(200)),
        ..Options::default()
    };
    let server = Arc::new(start_with(kind, options, |l| l).await);
    let first = tokio::spawn({
        let server = server.clone();
        async move { server.post("/effect-first", "k-1", "{}").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut conflicts = 0;
    while !first.is_finished() {
        let retry = server.post("/effect-first", "k-1", "{}").await;
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
    let replayed = server.post("/effect-first", "k-1", "{}").await;
    assert_eq!(replayed.body, first.body);
    assert_eq!(server.upstream.calls("/effect-first", "k-1"), 1);
}

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

async fn same_key_other_fingerprint_header_gets_422(kind: StoreKind) {
    let server = start(kind, |l| {
        l.fingerprint_headers([http::HeaderName::from_static("x-tenant")])
    })
    .await;
    let as_tenant = |tenant: &'static str| {
        let server = &server;
        async move {
            server
                .send(
                    Method::POST,
                    "/charges",
                    &[("idempotency-key", b"k-1"), ("x-tenant", tenant.as_bytes())],
                    "{}",
                )
                .await
        }
    };
    assert_eq!(as_tenant("t1").await.status, StatusCode::CREATED);
    assert!(as_tenant("t1").await.replayed());
    as_tenant("t2")
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(server.upstream.total(), 1);
}
