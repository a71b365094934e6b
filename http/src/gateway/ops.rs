//! [`OpsServer`]: the operations endpoints of a long-running process - `/metrics`, `/healthz`
//! and `/readyz` - on an address of their own, and the readiness checks they use.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use oncely_core::{Key, Oncely, Scope};
use tokio::net::TcpListener;

/// How long a readiness check may take before it counts as a failure.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

type Check =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// `/metrics` (Prometheus text), `/healthz` (200 while the process serves at all) and
/// `/readyz` (200 when what the process needs answers, 503 saying what does not), for a
/// process's load balancer, orchestrator and scraper.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> std::io::Result<()> {
/// use oncely_http::gateway::ops::{OpsServer, store_ready};
/// # let oncely = oncely::Oncely::new(std::sync::Arc::new(oncely::memory::MemoryStore::default()));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:9090").await?;
/// let ops = OpsServer::new(|| "# no metrics yet\n".to_owned()).ready_when(move || {
///     let oncely = oncely.clone();
///     async move { store_ready(&oncely).await }
/// });
/// tokio::spawn(ops.serve(listener));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct OpsServer {
    metrics: Arc<dyn Fn() -> String + Send + Sync>,
    ready: Check,
}

impl std::fmt::Debug for OpsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpsServer").finish_non_exhaustive()
    }
}

impl OpsServer {
    /// Serves `metrics()` at `/metrics`; ready whenever it is up, until
    /// [`ready_when`](Self::ready_when) says otherwise.
    pub fn new(metrics: impl Fn() -> String + Send + Sync + 'static) -> Self {
        OpsServer {
            metrics: Arc::new(metrics),
            ready: Arc::new(|| Box::pin(async { Ok(()) })),
        }
    }

    /// `/readyz` answers 200 when `check` succeeds within [`READY_TIMEOUT`], else 503 with
    /// its error (or the timeout) as the body.
    pub fn ready_when<F, Fut>(mut self, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.ready = Arc::new(move || Box::pin(check()));
        self
    }

    /// Serves on `listener` until the task is dropped; a failed accept is retried.
    pub async fn serve(self, listener: TcpListener) {
        let http = hyper::server::conn::http1::Builder::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let ops = self.clone();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let ops = ops.clone();
                async move { Ok::<_, Infallible>(ops.answer(request.uri().path()).await) }
            });
            let connection = http.serve_connection(TokioIo::new(stream), service);
            tokio::spawn(async move {
                let _ = connection.await;
            });
        }
    }

    async fn answer(&self, path: &str) -> Response<Full<Bytes>> {
        let (status, content_type, body) = match path {
            "/metrics" => (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                (self.metrics)(),
            ),
            "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
            "/readyz" => match tokio::time::timeout(READY_TIMEOUT, (self.ready)()).await {
                Ok(Ok(())) => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
                Ok(Err(why)) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {why}\n"),
                ),
                Err(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: no answer within {READY_TIMEOUT:?}\n"),
                ),
            },
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "see /metrics, /healthz and /readyz\n".to_owned(),
            ),
        };
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    }
}

/// Whether `oncely`'s store answers: a read of one reserved key (cheap on every store, unlike
/// counting its records).
pub async fn store_ready(oncely: &Oncely) -> Result<(), String> {
    let scope = Scope::new("oncely.ready").expect("a valid scope");
    let key = Key::new("probe").expect("a valid key");
    match oncely.store().get(&scope, &key).await {
        Ok(_) => Ok(()),
        Err(error) => Err(format!("the store: {error}")),
    }
}

/// Whether a TCP connection to `authority` (`HOST:PORT`) opens.
pub async fn reachable(authority: &str) -> Result<(), String> {
    match tokio::net::TcpStream::connect(authority).await {
        Ok(_) => Ok(()),
        Err(error) => Err(format!("{authority}: {error}")),
    }
}
