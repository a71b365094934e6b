//! The `Idempotency-Key` gateway: a streaming reverse proxy with [`IdempotencyLayer`] in front,
//! so a service in any language gets `Idempotency-Key` without a line of code. `oncely serve`
//! runs it; so can any Rust program (feature `gateway`).
//!
//! Every request the layer lets through is forwarded to the upstream (a plain `http://` URL,
//! HTTP/1.1): its method, path and query, headers minus hop-by-hop ones plus
//! `X-Forwarded-For`, `X-Forwarded-Host` and `X-Forwarded-Proto` (the upstream gets its own
//! `Host`), and its body; the response is streamed back. A keyed request runs to its end
//! whatever its client does (the layer runs it on a task of its own): past the
//! [timeout](GatewayOptions::timeout) the client gets 504 and the answer, when it comes, is
//! stored for the retry. An upstream that cannot be reached answers 502 problem+json and the
//! key is released; one that fails after the request was sent answers 502 and the key is held
//! until its lease ends. A request without a key past the timeout just gets 504.
//!
//! Connections are bounded ([`GatewayOptions`]): a header timeout, an idle timeout for
//! keep-alive connections, and how many are served at once. What happened to each request is
//! [counted](Counts), for a summary line and Prometheus metrics.
//!
//! [`Gateway::serve`] serves until its shutdown future resolves, then stops accepting and lets
//! the requests in flight finish, keyed requests whose clients left included, for up to the
//! [grace](GatewayOptions::grace).
//!
//! ```no_run
//! use std::time::Duration;
//! use oncely_http::IdempotencyLayer;
//! use oncely_http::gateway::{Gateway, GatewayOptions};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = oncely::connect("sqlite:gateway.db").await?;
//! let layer = IdempotencyLayer::new(oncely::Oncely::new(store))
//!     .principal_headers([http::header::AUTHORIZATION]);
//! let mut options = GatewayOptions::new("http://127.0.0.1:3000");
//! options.timeout = Duration::from_secs(10);
//! let gateway = Gateway::new(layer, options)?;
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let metrics = tokio::net::TcpListener::bind("127.0.0.1:9090").await?;
//! tokio::spawn(gateway.counts().serve_metrics(metrics));
//! let ctrl_c = async {
//!     let _ = tokio::signal::ctrl_c().await;
//! };
//! let served = gateway.serve(listener, ctrl_c).await;
//! eprintln!("{}", served.counts.summary());
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::{Layer as _, Service as _};

use crate::{
    Body, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, IdempotencyLayer, IdempotencyService, PROBLEM_JSON,
    Running,
};

pub mod client;
mod connections;
mod counts;
pub mod ops;
mod proxy;
mod tls;

pub use counts::{Counts, Outcome};
pub use tls::ServerTls;

use connections::{Timeouts, Watch, Watched};
use counts::CountOnDrop;
use proxy::{Forwarded, Peer, Proxy, parse_upstream, upstream_failed, upstream_timed_out};

/// How long a client waits for the upstream by default: 30 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client gets to send a request's line and headers by default: 30 s.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a keep-alive connection may wait for its next request by default: 75 s, longer
/// than the 60 s of the load balancers usually in front (AWS ALB, nginx's upstream
/// `keepalive`), so they close first and never send onto a connection being closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// The most connections served at once by default: 1024.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// How long requests in flight get to finish after shutdown by default: 30 s.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// What a [`Gateway`] forwards to and how it bounds its clients; the `Idempotency-Key`
/// semantics are the [`IdempotencyLayer`]'s it is given.
///
/// [`GatewayOptions::new`] takes the upstream and the defaults, `oncely serve`'s; set the
/// fields to change them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GatewayOptions {
    /// The service to protect: an `http[s]://HOST[:PORT][/PREFIX]` URL (no query; `https://`
    /// is verified against the system's roots, see [`client`]). Each request's path and query
    /// are appended to it.
    pub upstream: String,
    /// How long a client waits for the upstream to start its response (default 30 s); then it
    /// gets 504. It is the layer's [response timeout](IdempotencyLayer::response_timeout): a
    /// keyed request is not abandoned, the gateway waits on for the answer for the rest of the
    /// key's lease and stores it for the retry. A request without a key just gets 504.
    pub timeout: Duration,
    /// How long a client gets to send a request's line and headers (default 30 s): from the
    /// connection's opening for its first request, from the first byte for each later one.
    /// Then the connection is closed; bytes dribbled in do not extend it.
    pub header_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request, with nothing in
    /// progress, before it is closed (default 75 s); a request in progress is never cut by it.
    pub idle_timeout: Duration,
    /// The most connections served at once (default 1024); past it nothing more is accepted
    /// until one closes, so new clients wait in the listen backlog.
    pub max_connections: usize,
    /// How long the requests in flight get to finish once [`Gateway::serve`]'s shutdown came
    /// (default 30 s; at least the [timeout](Self::timeout)).
    pub grace: Duration,
    /// Listen with TLS, with this certificate and key (default: plain HTTP). The handshake
    /// counts against the [header timeout](Self::header_timeout); the upstream is told
    /// `X-Forwarded-Proto: https`.
    pub tls: Option<ServerTls>,
}

impl GatewayOptions {
    /// The options for forwarding to `upstream`, with the defaults.
    pub fn new(upstream: impl Into<String>) -> Self {
        GatewayOptions {
            upstream: upstream.into(),
            timeout: DEFAULT_TIMEOUT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            grace: DEFAULT_GRACE,
            tls: None,
        }
    }

    /// Checks the options as [`Gateway::new`] does, without a store: the upstream is an
    /// `http://` or `https://` URL, the timeouts are longer than zero and at least one
    /// connection is served.
    pub fn check(&self) -> Result<(), GatewayError> {
        self.checked().map(drop)
    }

    fn checked(&self) -> Result<proxy::Upstream, GatewayError> {
        let upstream = parse_upstream(&self.upstream)?;
        for (option, duration) in [
            ("timeout", self.timeout),
            ("header_timeout", self.header_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if duration.is_zero() {
                return Err(GatewayError::ZeroDuration { option });
            }
        }
        if self.max_connections == 0 {
            return Err(GatewayError::NoConnections);
        }
        Ok(upstream)
    }
}

/// Why [`GatewayOptions`] cannot make a [`Gateway`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The upstream is not an `http[s]://HOST[:PORT][/PREFIX]` URL, or an `https://` one on a
    /// machine with no trusted roots.
    #[error("upstream `{url}`: {reason}")]
    Upstream {
        /// The URL given.
        url: String,
        /// What is wrong with it, and what to use instead.
        reason: String,
    },
    /// A timeout is zero (which would answer or close everything at once).
    #[error("{option} must be longer than 0s")]
    ZeroDuration {
        /// The field of [`GatewayOptions`]: `timeout`, `header_timeout` or `idle_timeout`.
        option: &'static str,
    },
    /// `max_connections` is zero.
    #[error("max_connections must be at least 1")]
    NoConnections,
    /// The certificate or key to listen with could not be used.
    #[error("TLS certificate or key `{file}`: {reason}")]
    Tls {
        /// The file.
        file: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The gateway: an [`IdempotencyLayer`] over a proxy to the upstream, served on a listener.
///
/// See the [module docs](self) for what it does and an example. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Gateway {
    service: IdempotencyService<Proxy>,
    /// The methods the layer applies to: a request with a key on one of them is claimed.
    methods: Arc<Vec<Method>>,
    /// For the requests the layer does not hold (it applies it to the others).
    timeout: Duration,
    /// The claim's lease: how long a key is held when the outcome is unknown.
    lease: Duration,
    /// The layer's problem type base, for the gateway's own problems.
    problem_type_base: Arc<str>,
    timeouts: Timeouts,
    max_connections: usize,
    grace: Duration,
    counts: Counts,
    tls: Option<ServerTls>,
}

/// What [`Gateway::serve`] answers once it stopped.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Served {
    /// Whether every request in flight at shutdown finished within the grace. When not, the
    /// keys of those cut off are held until their lease ends.
    pub drained: bool,
    /// What happened to each request.
    pub counts: Counts,
}

impl Gateway {
    /// The gateway with `layer`'s `Idempotency-Key` semantics (its store, lease, methods,
    /// principal headers ...) in front of `options.upstream`. The layer's response timeout
    /// becomes [`options.timeout`](GatewayOptions::timeout).
    ///
    /// Fails if the options do not [check](GatewayOptions::check). Builds the HTTP client,
    /// which needs a Tokio runtime to serve.
    pub fn new(layer: IdempotencyLayer, options: GatewayOptions) -> Result<Gateway, GatewayError> {
        let upstream = options.checked()?;
        let config = layer.config();
        let (methods, lease) = (Arc::new(config.methods.clone()), config.oncely.lease());
        let problem_type_base = Arc::from(config.problem_type_base.as_str());
        let connector = client::connector(upstream.base.starts_with("https://")).map_err(|e| {
            GatewayError::Upstream {
                url: options.upstream.clone(),
                reason: e.to_string(),
            }
        })?;
        let proxy = Proxy {
            client: Client::builder(TokioExecutor::new()).build(connector),
            upstream: Arc::new(upstream),
        };
        Ok(Gateway {
            service: layer.response_timeout(options.timeout).layer(proxy),
            methods,
            timeout: options.timeout,
            lease,
            problem_type_base,
            timeouts: Timeouts {
                header: options.header_timeout,
                idle: options.idle_timeout,
            },
            max_connections: options.max_connections,
            grace: options.grace.max(options.timeout),
            counts: Counts::default(),
            tls: options.tls,
        })
    }

    /// The upstream requests go to, as `http://AUTHORITY[/PREFIX]`.
    pub fn upstream(&self) -> &str {
        &self.service.get_ref().upstream.base
    }

    /// Whether the gateway can do its work: its store answers and a connection to the
    /// upstream opens (for `/readyz`, see [`ops::OpsServer::ready_when`]).
    pub fn ready(&self) -> impl Future<Output = Result<(), String>> + Send + use<> {
        let oncely = self.service.oncely().clone();
        let authority = self.service.get_ref().upstream.authority.clone();
        async move {
            ops::store_ready(&oncely).await?;
            ops::reachable(&authority)
                .await
                .map_err(|why| format!("the upstream: {why}"))
        }
    }

    /// How long the requests in flight get to finish after shutdown: the
    /// [grace](GatewayOptions::grace), or the timeout if longer.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// What happened to each request so far (and from then on), e.g. to
    /// [serve as metrics](Counts::serve_metrics).
    pub fn counts(&self) -> Counts {
        self.counts.clone()
    }

    /// The keyed requests still running, their clients gone or not.
    pub fn running(&self) -> Running {
        self.service.running()
    }

    /// Serves the connections `listener` accepts until `shutdown` resolves; then closes the
    /// listener and lets the requests in flight finish: those on open connections, then the
    /// keyed requests whose clients left (their responses are still to be stored), for up to
    /// the [grace](Self::grace). Answers whether they all did, and the counts.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Served {
        let graceful = GracefulShutdown::new();
        self.accept(listener, &graceful, shutdown).await;
        let running = self.running();
        let drained = async {
            graceful.shutdown().await;
            running.finished().await;
        };
        let drained = tokio::time::timeout(self.grace, drained).await.is_ok();
        Served {
            drained,
            counts: self.counts,
        }
    }

    /// Accepts connections, each watched by `graceful`, until `until` resolves; then the
    /// listener is closed (the connections go on until `graceful` ends them). At most
    /// `max_connections` at once, each closed past its header or idle timeout
    /// ([`connections`]).
    async fn accept(
        &self,
        listener: TcpListener,
        graceful: &GracefulShutdown,
        until: impl Future<Output = ()>,
    ) {
        let mut http = hyper::server::conn::http1::Builder::new();
        // The header timeout is ours: hyper's would also cut idle keep-alive connections.
        http.header_read_timeout(None);
        let permits = Arc::new(tokio::sync::Semaphore::new(self.max_connections));
        let mut until = std::pin::pin!(until);
        loop {
            // Each connection holds a permit until it closes. With none left nothing is
            // accepted: new clients wait in the listen backlog.
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break, // never closed
                },
                _ = &mut until => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    // Out of file descriptors and the like: keep serving the connections we
                    // have.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut until => break,
            };
            let (gateway, http, watcher) = (self.clone(), http.clone(), graceful.watcher());
            tokio::spawn(async move {
                match gateway.tls.clone() {
                    None => gateway.serve_connection(http, watcher, stream, peer).await,
                    Some(tls) => {
                        // A client that never finishes its handshake is one that never sends
                        // its headers.
                        let handshake = tls.acceptor.accept(stream);
                        if let Ok(Ok(stream)) =
                            tokio::time::timeout(gateway.timeouts.header, handshake).await
                        {
                            gateway.serve_connection(http, watcher, stream, peer).await;
                        }
                    }
                }
                drop(permit);
            });
        }
    }

    /// Serves the requests of one connection, plain or TLS, until it closes, its client has
    /// been idle too long, or shutdown ended it.
    async fn serve_connection<S>(
        self,
        http: hyper::server::conn::http1::Builder,
        graceful: hyper_util::server::graceful::Watcher,
        stream: S,
        peer: SocketAddr,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let peer = Peer {
            address: peer,
            tls: self.tls.is_some(),
        };
        let gateway = self.clone();
        let service = hyper::service::service_fn(move |request| {
            let gateway = gateway.clone();
            async move { Ok::<_, Infallible>(gateway.handle(request, peer).await) }
        });
        let watch = Watch::new(self.timeouts);
        let connection = graceful.watch(http.serve_connection(
            TokioIo::new(Watched::new(stream, watch.clone())),
            watch.service(service),
        ));
        tokio::select! {
            // A client that goes away mid-request is its own business: the layer runs a keyed
            // request that reached the upstream to its end anyway.
            _ = connection => {}
            // No request in progress: dropping the connection closes it.
            () = watch.expired() => {}
        }
    }

    async fn handle(
        mut self,
        mut request: Request<Incoming>,
        peer: Peer,
    ) -> Response<Body<Incoming>> {
        let forwarded = Forwarded::default();
        request.extensions_mut().insert(forwarded.clone());
        request.extensions_mut().insert(peer);
        // With a key on a method it applies to, a request the layer forwards was claimed,
        // unless the store was down and the layer failed open (then it is passed through).
        let keyed = self.methods.contains(request.method())
            && request.headers().contains_key(IDEMPOTENCY_KEY);
        let counted = CountOnDrop::start(self.counts.clone());
        let call = self.service.call(request);
        // The layer answers a keyed request's client at the timeout and waits on for the
        // upstream itself; any other request is simply cut off.
        let result = if keyed {
            call.await
        } else {
            match tokio::time::timeout(self.timeout, call).await {
                Ok(result) => result,
                Err(_) => {
                    counted.done(Outcome::UpstreamFailed);
                    return upstream_timed_out(self.timeout, &self.problem_type_base);
                }
            }
        };
        let keyed = keyed && !forwarded.failed_open();
        let forwarded = forwarded.forwarded();
        let (outcome, response) = match result {
            Err(failed) => (
                Outcome::UpstreamFailed,
                upstream_failed(&failed, self.lease, &self.problem_type_base),
            ),
            Ok(response) => {
                let outcome = match () {
                    // The layer's 504: no answer within the timeout, the request still running.
                    _ if forwarded && keyed && is_layer_timeout(&response) => {
                        Outcome::UpstreamFailed
                    }
                    _ if forwarded && keyed => Outcome::Executed,
                    _ if forwarded => Outcome::PassedThrough,
                    _ if response.headers().contains_key(IDEMPOTENT_REPLAYED) => Outcome::Replayed,
                    _ => match response.status() {
                        StatusCode::CONFLICT => Outcome::InFlight,
                        StatusCode::UNPROCESSABLE_ENTITY => Outcome::Mismatch,
                        StatusCode::SERVICE_UNAVAILABLE => Outcome::StoreUnavailable,
                        _ => Outcome::Rejected,
                    },
                };
                (outcome, response)
            }
        };
        counted.done(outcome);
        response
    }
}

/// Whether `response` is the layer's own 504 (a problem), not the upstream's.
fn is_layer_timeout<B: hyper::body::Body>(response: &Response<B>) -> bool {
    response.status() == StatusCode::GATEWAY_TIMEOUT
        && response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .is_some_and(|v| v == PROBLEM_JSON)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked_before_a_store_is_needed() {
        let options = GatewayOptions::new("http://127.0.0.1:3000/api/");
        assert_eq!(options.check(), Ok(()));
        assert_eq!(GatewayOptions::new("https://example.com").check(), Ok(()));
        let ftp = GatewayOptions::new("ftp://example.com").check();
        assert!(
            matches!(&ftp, Err(GatewayError::Upstream { url, reason })
                if url == "ftp://example.com" && reason.contains("scheme `ftp`")),
            "{ftp:?}"
        );
        let mut zero = options.clone();
        zero.idle_timeout = Duration::ZERO;
        assert_eq!(
            zero.check().unwrap_err().to_string(),
            "idle_timeout must be longer than 0s"
        );
        let mut none = options;
        none.max_connections = 0;
        assert_eq!(none.check(), Err(GatewayError::NoConnections));
    }
}
