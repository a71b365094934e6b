//! The layer over a store that can be switched off, served on loopback, and its client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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
use oncely_http::IdempotencyLayer;

use crate::StoreKind;
use crate::upstream::{Shared, app};

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

/// A store that can be switched off: every call then fails as an unreachable store does.
#[derive(Debug)]
pub struct Switchable {
    inner: Arc<dyn Store>,
    pub down: AtomicBool,
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
    async fn server_time(&self) -> oncely::Result<Option<Timestamp>> {
        self.check()?;
        self.inner.server_time().await
    }
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
    async fn forget(&self, scope: &Scope, key: &Key, token: u64) -> oncely::Result<bool> {
        self.check()?;
        self.inner.forget(scope, key, token).await
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

pub struct Server {
    pub addr: SocketAddr,
    pub client: Client<HttpConnector, Full<Bytes>>,
    pub upstream: Shared,
    pub store: Arc<Switchable>,
    _dir: tempfile::TempDir,
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .map(|v| v.as_bytes())
            == Some(b"true")
    }

    /// Asserts an RFC 9457 problem with `status`, and answers its `type`.
    pub fn problem(&self, status: StatusCode) -> String {
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

pub async fn start(
    kind: StoreKind,
    configure: impl FnOnce(IdempotencyLayer) -> IdempotencyLayer,
) -> Server {
    start_with(kind, Options::default(), configure).await
}

#[derive(Default)]
pub struct Options {
    /// The clock of the `Oncely` under the layer (the system clock if none).
    pub clock: Option<ManualClock>,
    /// Serve with a plain hyper connection instead of `axum::serve`.
    pub hyper: bool,
    /// The claim's lease (`Oncely`'s default if none).
    pub lease: Option<Duration>,
}

pub async fn open_store(kind: StoreKind, dir: &tempfile::TempDir) -> Arc<Switchable> {
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

pub async fn start_with(
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
    pub async fn send(
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

    pub async fn post(&self, path: &str, key: &str, body: &str) -> Reply {
        self.send(
            Method::POST,
            path,
            &[("idempotency-key", key.as_bytes())],
            body,
        )
        .await
    }
}
