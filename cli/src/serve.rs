//! `oncely serve`: the Idempotency-Key gateway (S4) in front of any HTTP service.
//!
//! A streaming reverse proxy (hyper server, hyper-util's pooled client, plain http only) with
//! `oncely_http::IdempotencyLayer` in front of it: requests the layer applies to are claimed,
//! executed once upstream and their response stored; retries get the stored response. Every
//! request the layer lets through is forwarded (method, path and query, headers minus
//! hop-by-hop ones plus `X-Forwarded-*`, body) and its response streamed back. An upstream that cannot be reached
//! answers 502 problem+json, and the key is released so a retry executes.
//!
//! SIGINT or SIGTERM stops accepting connections and lets requests in flight finish (up to
//! [`GRACE`]); then the summary goes to stderr and the exit status is 0.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use oncely::Oncely;
use oncely_http::{Body, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, IdempotencyLayer, PROBLEM_JSON};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tower::{Layer as _, Service as _};

use crate::duration;

/// How long requests in flight get to finish after SIGINT or SIGTERM.
pub const GRACE: Duration = Duration::from_secs(30);

/// Arguments of `oncely serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The service to protect: a plain http://HOST[:PORT][/PREFIX] URL (no https). Each
    /// request's path and query are appended to it.
    #[arg(long, value_name = "URL")]
    upstream: String,

    /// Where to listen, ADDR:PORT (port 0 picks a free one; the bound address is printed).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// Answer 400 to a request without Idempotency-Key (of the --methods) instead of passing
    /// it through unprotected.
    #[arg(long)]
    require_key: bool,

    /// How long a stored response is replayed (500ms, 90s, 15m, 24h, 7d).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = duration::parse)]
    ttl: Duration,

    /// The methods the Idempotency-Key applies to, comma-separated; others pass through.
    #[arg(long, value_name = "LIST", default_value = "POST,PATCH", value_parser = parse_methods)]
    methods: Methods,

    /// A request header identifying the client (e.g. Authorization): keys are scoped by a
    /// SHA-256 of these headers' values, so one client never gets another's response.
    /// Repeat for several.
    #[arg(long = "principal-header", value_name = "NAME", value_parser = parse_header_name)]
    principal_headers: Vec<HeaderName>,

    /// Also serve Prometheus metrics at http://ADDR/metrics: requests by outcome, and their
    /// latency (until the response is ready) as a histogram by outcome.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,

    /// How long the upstream gets to start its response; then the answer is 504 and the key
    /// released. A key's claim is held for --timeout + 30s, so no retry executes while the
    /// first request may still be running.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration::parse)]
    timeout: Duration,
}

/// How much longer than `--timeout` a key's claim is held: the upstream's answer, and the
/// response's body, arrive before the lease ends.
const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// The `--methods` list.
#[derive(Clone, Debug)]
pub struct Methods(Vec<Method>);

fn parse_methods(text: &str) -> Result<Methods, String> {
    let mut methods = Vec::new();
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let method = Method::from_bytes(name.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("`{name}` is not an HTTP method"))?;
        if !methods.contains(&method) {
            methods.push(method);
        }
    }
    if methods.is_empty() {
        return Err("no method given; e.g. POST,PATCH".into());
    }
    Ok(Methods(methods))
}

fn parse_header_name(text: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(text.as_bytes()).map_err(|_| format!("`{text}` is not a header name"))
}

/// Checks `--upstream`: `http://HOST[:PORT][/PREFIX]`, no query.
fn parse_upstream(text: &str) -> Result<Upstream> {
    let bad = |why: &str| anyhow::anyhow!("--upstream `{text}`: {why}");
    let uri: Uri = text
        .parse()
        .map_err(|e| bad(&format!("not a URL ({e}); use http://HOST[:PORT]")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad(
                "https is not supported (this build has no TLS stack); put the gateway in \
                 front of a plain http:// service, e.g. on localhost",
            ));
        }
        Some(other) => {
            return Err(bad(&format!(
                "scheme `{other}` is not supported; use http://HOST[:PORT]"
            )));
        }
        None => return Err(bad("no scheme; use http://HOST[:PORT]")),
    }
    let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
        return Err(bad("no host; use http://HOST[:PORT]"));
    };
    if uri.query().is_some() {
        return Err(bad("a query is not supported; each request brings its own"));
    }
    Ok(Upstream {
        base: format!("http://{authority}{}", uri.path().trim_end_matches('/')),
    })
}

/// Runs `oncely serve` until SIGINT or SIGTERM; `store` is the global `--store` URL.
pub async fn run(store: &str, args: ServeArgs) -> Result<ExitCode> {
    let upstream = parse_upstream(&args.upstream)?;
    if args.timeout.is_zero() {
        bail!("--timeout must be longer than 0s");
    }
    // Signals first: a signal during the setup must not kill the process half-way.
    let mut stop = Stop::install()?;
    let oncely = Oncely::new(oncely::connect(store).await?)
        .with_lease(args.timeout.saturating_add(LEASE_MARGIN));
    let methods = args.methods.0;
    let layer = IdempotencyLayer::new(oncely)
        .retention(args.ttl)
        .require_key(args.require_key)
        .methods(methods.clone())
        .principal_headers(args.principal_headers);
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let bound = listener.local_addr().context("the bound address")?;

    let proxy = Proxy {
        client: Client::builder(TokioExecutor::new()).build_http(),
        upstream: Arc::new(upstream),
        timeout: args.timeout,
    };
    let gateway = Gateway {
        service: layer.layer(proxy.clone()),
        methods: Arc::new(methods),
        counts: Arc::new(Counts::default()),
    };
    if let Some(addr) = args.metrics_addr {
        let metrics = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for --metrics-addr"))?;
        let bound = metrics.local_addr().context("the metrics address")?;
        eprintln!("metrics on http://{bound}/metrics");
        tokio::spawn(serve_metrics(metrics, gateway.counts.clone()));
    }
    eprintln!(
        "listening on http://{bound}, forwarding to {} (store {}); stop with Ctrl-C or SIGTERM",
        proxy.upstream.base,
        oncely::url::redact_password(store),
    );

    let graceful = GracefulShutdown::new();
    let http = hyper::server::conn::http1::Builder::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors and the like: keep serving the connections we have.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.first() => break,
        };
        let gateway = gateway.clone();
        let service = hyper::service::service_fn(move |request| {
            let gateway = gateway.clone();
            async move { Ok::<_, Infallible>(gateway.handle(request, peer).await) }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // A client that goes away mid-request is its own business; the layer releases
            // the key of a request it abandons.
            let _ = connection.await;
        });
    }
    drop(listener);
    eprintln!(
        "stopping: no new connections; finishing the requests in flight for up to {}s \
         (a second signal stops at once)",
        GRACE.as_secs()
    );
    tokio::spawn(async move {
        stop.second().await;
        eprintln!(
            "error: stopped at once; the keys of unfinished requests are held until their lease ends"
        );
        std::process::exit(130);
    });
    let finished = tokio::time::timeout(GRACE, graceful.shutdown())
        .await
        .is_ok();
    eprintln!("{}", gateway.counts.summary());
    if !finished {
        eprintln!(
            "warning: requests still in flight after {}s were cut off; their keys are held \
             until their lease ends",
            GRACE.as_secs()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The upstream as `http://AUTHORITY[/PREFIX]`, without a trailing slash.
#[derive(Debug)]
struct Upstream {
    base: String,
}

/// Why the upstream gave no response.
#[derive(Debug)]
struct UpstreamFailed {
    /// No response within `--timeout` (504), rather than no connection or a broken one (502).
    timed_out: bool,
    reason: String,
}

impl UpstreamFailed {
    fn new(reason: String) -> Self {
        UpstreamFailed {
            timed_out: false,
            reason,
        }
    }
}

/// Set in a request's extensions by the proxy when it forwards the request.
#[derive(Clone, Debug, Default)]
struct Forwarded(Arc<AtomicBool>);

/// The innermost service: forwards a request to the upstream and streams the response back.
#[derive(Clone, Debug)]
struct Proxy {
    client: Client<HttpConnector, Body<Incoming>>,
    upstream: Arc<Upstream>,
    /// How long the upstream gets to start its response.
    timeout: Duration,
}

impl tower::Service<Request<Body<Incoming>>> for Proxy {
    type Response = Response<Incoming>;
    type Error = UpstreamFailed;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Response<Incoming>, UpstreamFailed>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), UpstreamFailed>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body<Incoming>>) -> Self::Future {
        let client = self.client.clone();
        let upstream = self.upstream.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            if let Some(forwarded) = parts.extensions.remove::<Forwarded>() {
                forwarded.0.store(true, Ordering::SeqCst);
            }
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            parts.uri = format!("{}{path}", upstream.base)
                .parse()
                .map_err(|e| UpstreamFailed::new(format!("cannot build the upstream URL: {e}")))?;
            // The client's HTTP version for the answer; HTTP/1.1 to the upstream.
            let version = std::mem::replace(&mut parts.version, Version::HTTP_11);
            remove_hop_by_hop(&mut parts.headers);
            let peer = parts.extensions.remove::<Peer>();
            add_forwarded_headers(&mut parts.headers, peer);
            let sent = client.request(Request::from_parts(parts, body));
            let response = match tokio::time::timeout(timeout, sent).await {
                Ok(Ok(response)) => response,
                Ok(Err(error)) => return Err(UpstreamFailed::new(error_chain(&error))),
                Err(_) => {
                    return Err(UpstreamFailed {
                        timed_out: true,
                        reason: format!("no response within {}", crate::deliver::humane(timeout)),
                    });
                }
            };
            let (mut parts, body) = response.into_parts();
            // An HTTP/1.0 upstream (Python's http.server) must not make the answer HTTP/1.0.
            parts.version = version;
            remove_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(parts, body))
        })
    }
}

/// The address of the client a request came from.
#[derive(Clone, Copy, Debug)]
struct Peer(SocketAddr);

/// The headers a reverse proxy adds: `X-Forwarded-For` (the client's address appended to any
/// the request brought), `X-Forwarded-Host` (the `Host` it asked for; the upstream gets its
/// own name as `Host`, set by the client) and `X-Forwarded-Proto` (`http`, unless a proxy in
/// front already said).
fn add_forwarded_headers(headers: &mut HeaderMap, peer: Option<Peer>) {
    const FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    const HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
    const PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    if let Some(Peer(peer)) = peer {
        let mut chain: Vec<String> = headers
            .get_all(&FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect();
        chain.push(peer.ip().to_string());
        if let Ok(value) = HeaderValue::from_str(&chain.join(", ")) {
            headers.insert(FOR, value);
        }
    }
    if let Some(host) = headers.remove(header::HOST) {
        headers.insert(HOST, host);
    }
    if !headers.contains_key(&PROTO) {
        headers.insert(PROTO, HeaderValue::from_static("http"));
    }
}

/// The error and its sources, `outer: inner`.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

/// Headers that describe one connection, never the message (RFC 9110 7.6.1), and those the
/// `Connection` header names.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// The layer over the proxy, and the counts of what happened to each request.
#[derive(Clone)]
struct Gateway {
    service: oncely_http::IdempotencyService<Proxy>,
    methods: Arc<Vec<Method>>,
    counts: Arc<Counts>,
}

impl Gateway {
    async fn handle(
        mut self,
        mut request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body<Incoming>> {
        let forwarded = Forwarded::default();
        request.extensions_mut().insert(forwarded.clone());
        request.extensions_mut().insert(Peer(peer));
        // With a key on a method it applies to, a request the layer forwards was claimed
        // (the layer fails closed, so it never forwards such a request unclaimed).
        let keyed = self.methods.contains(request.method())
            && request.headers().contains_key(IDEMPOTENCY_KEY);
        let counted = CountOnDrop {
            counts: self.counts.clone(),
            started: Instant::now(),
            outcome: Outcome::Abandoned,
        };
        let result = self.service.call(request).await;
        let forwarded = forwarded.0.load(Ordering::SeqCst);
        let (outcome, response) = match result {
            Err(failed) => (Outcome::UpstreamFailed, upstream_failed(&failed)),
            Ok(response) => {
                let outcome = match () {
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

/// The 502 (or 504) the gateway answers when the upstream gave no response (in time).
fn upstream_failed(failed: &UpstreamFailed) -> Response<Body<Incoming>> {
    let reason = &failed.reason;
    let (status, json) = if failed.timed_out {
        let json = serde_json::json!({
            "type": "urn:oncely:http:upstream-timeout",
            "title": "Upstream timed out",
            "status": 504,
            "detail": format!(
                "the upstream gave no response ({reason}); it may still execute the request, \
                 and a retry with the same Idempotency-Key executes it again"
            ),
        });
        (StatusCode::GATEWAY_TIMEOUT, json)
    } else {
        let json = serde_json::json!({
            "type": "urn:oncely:http:upstream-unavailable",
            "title": "Upstream unavailable",
            "status": 502,
            "detail": format!(
                "the upstream gave no response ({reason}); a retry with the same \
                 Idempotency-Key executes the request"
            ),
        });
        (StatusCode::BAD_GATEWAY, json)
    };
    let mut response = Response::new(Body::buffered(Bytes::from(json.to_string()), None));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

/// What happened to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Claimed and forwarded; the upstream answered.
    Executed,
    /// The stored response, replayed by the layer.
    Replayed,
    /// 409: the first request with the key was still in flight.
    InFlight,
    /// 422: the key was used with another request.
    Mismatch,
    /// The layer's 400 or 413 (or 500 for a stored response it could not decode).
    Rejected,
    /// 503: the store could not be reached.
    StoreUnavailable,
    /// 502 or 504: the upstream gave no response, or none within `--timeout` (a claimed key
    /// was released).
    UpstreamFailed,
    /// Forwarded without a key, or with a method the layer does not apply to.
    PassedThrough,
    /// The client went away before the response was ready.
    Abandoned,
}

impl Outcome {
    const ALL: [Outcome; 9] = [
        Outcome::Executed,
        Outcome::Replayed,
        Outcome::InFlight,
        Outcome::Mismatch,
        Outcome::Rejected,
        Outcome::StoreUnavailable,
        Outcome::UpstreamFailed,
        Outcome::PassedThrough,
        Outcome::Abandoned,
    ];

    /// Its name in the summary line.
    fn summary_name(self) -> &'static str {
        match self {
            Outcome::Executed => "executed",
            Outcome::Replayed => "replayed",
            Outcome::InFlight => "in flight (409)",
            Outcome::Mismatch => "key reused (422)",
            Outcome::Rejected => "rejected",
            Outcome::StoreUnavailable => "store unavailable (503)",
            Outcome::UpstreamFailed => "upstream failed (502/504)",
            Outcome::PassedThrough => "passed through",
            Outcome::Abandoned => "abandoned",
        }
    }

    /// Its `outcome` label in the metrics.
    fn label(self) -> &'static str {
        match self {
            Outcome::Executed => "executed",
            Outcome::Replayed => "replayed",
            Outcome::InFlight => "in_flight",
            Outcome::Mismatch => "key_reused",
            Outcome::Rejected => "rejected",
            Outcome::StoreUnavailable => "store_unavailable",
            Outcome::UpstreamFailed => "upstream_failed",
            Outcome::PassedThrough => "passed_through",
            Outcome::Abandoned => "abandoned",
        }
    }

    fn index(self) -> usize {
        Outcome::ALL.iter().position(|o| *o == self).unwrap_or(0)
    }
}

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Requests of one outcome: how many, and how long each took until its response was ready.
#[derive(Debug, Default)]
struct Histogram {
    count: AtomicU64,
    sum_micros: AtomicU64,
    /// Not cumulative: `buckets[i]` counts durations in `(BUCKETS[i-1], BUCKETS[i]]`.
    buckets: [AtomicU64; BUCKETS.len()],
}

impl Histogram {
    fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&le| secs <= le) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Debug, Default)]
struct Counts {
    by_outcome: [Histogram; Outcome::ALL.len()],
}

impl Counts {
    fn count(&self, outcome: Outcome) -> u64 {
        self.by_outcome[outcome.index()]
            .count
            .load(Ordering::SeqCst)
    }

    /// `requests N: executed N, replayed N, ...`: every count, in one line.
    fn summary(&self) -> String {
        let total: u64 = Outcome::ALL.iter().map(|&o| self.count(o)).sum();
        let parts: Vec<String> = Outcome::ALL
            .iter()
            .map(|&o| format!("{} {}", o.summary_name(), self.count(o)))
            .collect();
        format!("requests {total}: {}", parts.join(", "))
    }

    /// The Prometheus text exposition format (version 0.0.4).
    fn prometheus(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        out.push_str(
            "# HELP oncely_serve_requests_total Requests answered by the gateway, by outcome.\n\
             # TYPE oncely_serve_requests_total counter\n",
        );
        for outcome in Outcome::ALL {
            let _ = writeln!(
                out,
                "oncely_serve_requests_total{{outcome=\"{}\"}} {}",
                outcome.label(),
                self.count(outcome)
            );
        }
        out.push_str(
            "# HELP oncely_serve_request_duration_seconds Time from a request's arrival until \
             its response was ready to send, by outcome.\n\
             # TYPE oncely_serve_request_duration_seconds histogram\n",
        );
        for outcome in Outcome::ALL {
            let histogram = &self.by_outcome[outcome.index()];
            let label = outcome.label();
            let count = histogram.count.load(Ordering::SeqCst);
            let mut cumulative = 0;
            for (le, bucket) in BUCKETS.iter().zip(&histogram.buckets) {
                cumulative += bucket.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "oncely_serve_request_duration_seconds_bucket{{outcome=\"{label}\",le=\"{le}\"}} {}",
                    cumulative.min(count)
                );
            }
            let sum = histogram.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "oncely_serve_request_duration_seconds_bucket{{outcome=\"{label}\",le=\"+Inf\"}} {count}\n\
                 oncely_serve_request_duration_seconds_sum{{outcome=\"{label}\"}} {sum}\n\
                 oncely_serve_request_duration_seconds_count{{outcome=\"{label}\"}} {count}"
            );
        }
        out
    }
}

/// Counts a request once: with its outcome, or as abandoned if its future is dropped first.
struct CountOnDrop {
    counts: Arc<Counts>,
    started: Instant,
    outcome: Outcome,
}

impl CountOnDrop {
    fn done(mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl Drop for CountOnDrop {
    fn drop(&mut self) {
        self.counts.by_outcome[self.outcome.index()].observe(self.started.elapsed());
    }
}

/// Serves `GET /metrics` on `listener` (Prometheus text); every other path is 404.
async fn serve_metrics(listener: TcpListener, counts: Arc<Counts>) {
    let http = hyper::server::conn::http1::Builder::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let counts = counts.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let counts = counts.clone();
            async move {
                let response = if request.uri().path() == "/metrics" {
                    Response::builder()
                        .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
                        .body(Full::new(Bytes::from(counts.prometheus())))
                } else {
                    Response::builder()
                        .status(StatusCode::NOT_FOUND)
                        .body(Full::new(Bytes::from_static(b"metrics are at /metrics\n")))
                };
                Ok::<_, Infallible>(response.unwrap_or_default())
            }
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}

/// SIGINT and SIGTERM, installed before the setup.
struct Stop {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Stop {
    fn install() -> Result<Stop> {
        Ok(Stop {
            interrupt: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
        })
    }

    async fn first(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }

    async fn second(mut self) {
        self.first().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_are_plain_http_with_an_optional_prefix() {
        assert_eq!(
            parse_upstream("http://127.0.0.1:9000").unwrap().base,
            "http://127.0.0.1:9000"
        );
        assert_eq!(
            parse_upstream("http://svc:9000/api/").unwrap().base,
            "http://svc:9000/api"
        );
        let https = parse_upstream("https://svc").unwrap_err().to_string();
        assert!(https.contains("https is not supported"), "{https}");
        let query = parse_upstream("http://svc/?a=1").unwrap_err().to_string();
        assert!(query.contains("query"), "{query}");
        assert!(parse_upstream("svc:80").is_err());
    }

    #[test]
    fn methods_are_a_comma_list() {
        let Methods(methods) = parse_methods("post, put,POST").unwrap();
        assert_eq!(methods, vec![Method::POST, Method::PUT]);
        assert!(parse_methods(",").is_err());
        assert!(parse_methods("PO ST").is_err());
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("close, x-hop"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn forwarded_headers_extend_what_a_proxy_in_front_said() {
        let peer = Some(Peer("10.0.0.7:5000".parse().unwrap()));
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("api.example.com"));
        add_forwarded_headers(&mut headers, peer);
        assert_eq!(headers["x-forwarded-for"], "10.0.0.7");
        assert_eq!(headers["x-forwarded-host"], "api.example.com");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert!(!headers.contains_key(header::HOST));

        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        headers.append("x-forwarded-for", HeaderValue::from_static("5.6.7.8"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        add_forwarded_headers(&mut headers, peer);
        assert_eq!(headers["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 10.0.0.7");
        assert_eq!(headers["x-forwarded-proto"], "https");
    }

    #[test]
    fn the_summary_names_every_count() {
        let counts = Counts::default();
        for outcome in [Outcome::Executed, Outcome::Executed] {
            counts.by_outcome[outcome.index()].observe(Duration::from_millis(3));
        }
        for _ in 0..3 {
            counts.by_outcome[Outcome::Replayed.index()].observe(Duration::from_millis(30));
        }
        assert_eq!(
            counts.summary(),
            "requests 5: executed 2, replayed 3, in flight (409) 0, key reused (422) 0, \
             rejected 0, store unavailable (503) 0, upstream failed (502/504) 0, \
             passed through 0, abandoned 0"
        );
    }

    #[test]
    fn metrics_are_cumulative_histograms_by_outcome() {
        let counts = Counts::default();
        let executed = &counts.by_outcome[Outcome::Executed.index()];
        executed.observe(Duration::from_millis(3));
        executed.observe(Duration::from_millis(30));
        executed.observe(Duration::from_secs(60));
        let text = counts.prometheus();
        for line in [
            "oncely_serve_requests_total{outcome=\"executed\"} 3",
            "oncely_serve_requests_total{outcome=\"replayed\"} 0",
            "oncely_serve_request_duration_seconds_bucket{outcome=\"executed\",le=\"0.001\"} 0",
            "oncely_serve_request_duration_seconds_bucket{outcome=\"executed\",le=\"0.005\"} 1",
            "oncely_serve_request_duration_seconds_bucket{outcome=\"executed\",le=\"0.05\"} 2",
            "oncely_serve_request_duration_seconds_bucket{outcome=\"executed\",le=\"10\"} 2",
            "oncely_serve_request_duration_seconds_bucket{outcome=\"executed\",le=\"+Inf\"} 3",
            "oncely_serve_request_duration_seconds_sum{outcome=\"executed\"} 60.033",
            "oncely_serve_request_duration_seconds_count{outcome=\"executed\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
