//! `oncely serve`: the Idempotency-Key gateway (S4) in front of any HTTP service.
//!
//! A streaming reverse proxy (hyper server, hyper-util's pooled client, plain http only) with
//! `oncely_http::IdempotencyLayer` in front of it: requests the layer applies to are claimed,
//! executed once upstream and their response stored; retries get the stored response. Every
//! request the layer lets through is forwarded (method, path and query, headers minus
//! hop-by-hop ones plus `X-Forwarded-*`, body) and its response streamed back ([`proxy`]). A
//! keyed request runs to its end whatever its client does (the layer runs it on a task of its
//! own): past `--timeout` the client gets 504 and the answer, when it comes, is stored for the
//! retry. An upstream that cannot be reached answers 502 problem+json and the key is released;
//! one that fails after the request was sent answers 502 and the key is held until its lease
//! ends. What happened to each request is counted ([`counts`]) for the summary line and
//! `--metrics-addr`.
//!
//! SIGINT or SIGTERM stops accepting connections and lets requests in flight finish (up to
//! [`GRACE`], or `--timeout` if longer); then the summary goes to stderr and the exit status is 0.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use hyper::body::Incoming;
use hyper::header::HeaderName;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use oncely::Oncely;
use oncely_http::{
    Body, DEFAULT_DENY_HEADERS, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, IdempotencyLayer, InFlight,
};
use tokio::net::TcpListener;
use tower::{Layer as _, Service as _};

use crate::stop::Stop;
use crate::{duration, size};

mod connections;
mod counts;
mod proxy;

use connections::{Limits, Watch, Watched};
use counts::{CountOnDrop, Counts, Outcome, serve_metrics};
use proxy::{
    Forwarded, Peer, Proxy, Upstream, parse_upstream, upstream_failed, upstream_timed_out,
};

/// How long requests in flight get to finish after SIGINT or SIGTERM, at least: `--timeout`
/// if it is longer.
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

    /// A request whose key's first request is still in flight waits up to this long for its
    /// response (then replays it, or executes if the first failed) instead of getting 409 at
    /// once; 409 if the first is still running by then.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    in_flight_wait: Option<Duration>,

    /// How long a client waits for the upstream to start its response; then it gets 504. A
    /// keyed request is not abandoned: the gateway waits on for the upstream's answer, holding
    /// the key (retries get 409), for 20-30s more (the rest of its 30s lease, renewed until
    /// --timeout), and stores the answer if it comes, for the retry. Only then, with no answer,
    /// may a retry execute again. A request without a key just gets 504.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration::parse)]
    timeout: Duration,

    /// When the store cannot be reached, forward keyed requests unprotected (counted as passed
    /// through) instead of answering 503: availability over exactly-once.
    #[arg(long, env = "ONCELY_FAIL_OPEN")]
    fail_open: bool,

    /// Store 5xx responses and replay them, as Stripe does, instead of releasing the key so a
    /// retry executes again.
    #[arg(long, env = "ONCELY_STORE_SERVER_ERRORS")]
    store_server_errors: bool,

    /// A response header never stored, so never replayed, besides Set-Cookie (always left
    /// out). Repeat, or separate with commas, for several.
    #[arg(
        long = "deny-header",
        env = "ONCELY_DENY_HEADERS",
        value_name = "NAME",
        value_delimiter = ',',
        value_parser = parse_header_name
    )]
    deny_headers: Vec<HeaderName>,

    /// A request header that is part of the fingerprint besides method, path and body (e.g.
    /// Content-Type, a tenant header): the same key with another value gets 422. Repeat, or
    /// separate with commas, for several.
    #[arg(
        long = "fingerprint-header",
        env = "ONCELY_FINGERPRINT_HEADERS",
        value_name = "NAME",
        value_delimiter = ',',
        value_parser = parse_header_name
    )]
    fingerprint_headers: Vec<HeaderName>,

    /// The largest request body of a keyed request (it is buffered to fingerprint it); larger
    /// gets 413. Bytes, or KiB, MiB, GiB: 65536, 64KiB, 1MiB.
    #[arg(long, env = "ONCELY_MAX_BODY", value_name = "SIZE", default_value = "1MiB", value_parser = size::parse)]
    max_body: usize,

    /// The largest response body stored; a larger response is streamed to the client unstored
    /// and its key released. Bytes, or KiB, MiB, GiB.
    #[arg(long, env = "ONCELY_MAX_RESPONSE", value_name = "SIZE", default_value = "1MiB", value_parser = size::parse)]
    max_response: usize,

    /// How long a client gets to send a request's line and headers: from the connection's
    /// opening for its first request, from the first byte for each later one. Then the
    /// connection is closed, so a client that sends half a request (or dribbles it) does not
    /// hold it.
    #[arg(long, env = "ONCELY_HEADER_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = connections::parse_timeout)]
    header_timeout: Duration,

    /// How long a keep-alive connection may wait for its next request, with nothing in
    /// progress, before it is closed; a request in progress is never cut by it. 75s: longer
    /// than the 60s idle timeout of common load balancers in front (AWS ALB, nginx's upstream
    /// keepalive), so they close first and never send onto a connection being closed.
    #[arg(long, env = "ONCELY_IDLE_TIMEOUT", value_name = "DURATION", default_value = "75s", value_parser = connections::parse_timeout)]
    idle_timeout: Duration,

    /// The most connections served at once (the default is a cautious bound on memory and file
    /// descriptors); more clients wait in the kernel's listen backlog (128) until one closes, and past that their connects go unanswered (and are retried by
    /// the client's kernel). Each connection takes a file descriptor, and one more to the
    /// upstream while it forwards: keep the open-file limit (ulimit -n) above twice this.
    #[arg(long, env = "ONCELY_MAX_CONNECTIONS", value_name = "N", default_value = "1024", value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
}

/// A key's lease: renewed every third of it while the gateway waits for the upstream, up to
/// `--timeout`; then it runs out unless the answer comes first. So a key is held at most this
/// long after the gateway died, or after `--timeout` with no answer.
const LEASE: Duration = Duration::from_secs(30);

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

/// The Idempotency-Key layer as the flags configure it, over `oncely`'s store.
fn layer(oncely: Oncely, args: &ServeArgs) -> IdempotencyLayer {
    IdempotencyLayer::new(oncely)
        .retention(args.ttl)
        .require_key(args.require_key)
        .methods(args.methods.0.clone())
        .principal_headers(args.principal_headers.clone())
        .fingerprint_headers(args.fingerprint_headers.clone())
        .in_flight(match args.in_flight_wait {
            Some(wait) => InFlight::Wait(wait),
            None => InFlight::Conflict,
        })
        .fail_open(args.fail_open)
        .store_server_errors(args.store_server_errors)
        .deny_headers(
            DEFAULT_DENY_HEADERS
                .into_iter()
                .chain(args.deny_headers.iter().cloned()),
        )
        .max_body(args.max_body)
        .max_response(args.max_response)
        .response_timeout(args.timeout)
}

/// Runs `oncely serve` until SIGINT or SIGTERM; `store` is the global `--store` URL.
pub async fn run(store: &str, args: ServeArgs) -> Result<ExitCode> {
    let upstream = parse_upstream(&args.upstream)?;
    if args.timeout.is_zero() {
        bail!("--timeout must be longer than 0s");
    }
    // Signals first: a signal during the setup must not kill the process half-way.
    let mut stop = Stop::install()?;
    let gateway = Gateway::open(store, &args, upstream).await?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let bound = listener.local_addr().context("the bound address")?;
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
        gateway.service.get_ref().upstream.base,
        oncely::backend::url::redact_password(store),
    );

    let graceful = GracefulShutdown::new();
    gateway
        .clone()
        .serve(listener, &graceful, stop.first(), Limits::of(&args))
        .await;
    let grace = GRACE.max(args.timeout);
    eprintln!(
        "stopping: no new connections; finishing the requests in flight for up to {}s \
         (a second signal stops at once)",
        grace.as_secs()
    );
    tokio::spawn(async move {
        stop.second().await;
        eprintln!(
            "error: stopped at once; the keys of unfinished requests are held until their lease ends"
        );
        std::process::exit(130);
    });
    // Then the keyed requests whose clients left: their responses are still to be stored.
    let running = gateway.service.running();
    let drained = async {
        graceful.shutdown().await;
        running.finished().await;
    };
    let finished = tokio::time::timeout(grace, drained).await.is_ok();
    if !finished {
        eprintln!(
            "warning: requests still in flight after {}s were cut off; their keys are held \
             until their lease ends",
            grace.as_secs()
        );
    }
    // Last, as in every command: a script reads the summary from the last line.
    eprintln!("{}", gateway.counts.summary());
    Ok(ExitCode::SUCCESS)
}

/// `oncely serve`'s gateway running in this process, as `oncely bench --gateway` measures it:
/// the same code, configured by the same flags.
pub struct InProcess {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<()>,
}

impl InProcess {
    /// Starts the gateway on the store at `store`, configured by `flags`: what follows `serve`
    /// on the command line (`--upstream URL` at least; `--listen` defaults to 127.0.0.1:8080).
    pub async fn start(store: &str, flags: &[&str]) -> Result<InProcess> {
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            args: ServeArgs,
        }
        let Serve { args } =
            clap::Parser::try_parse_from(std::iter::once("serve").chain(flags.iter().copied()))?;
        let gateway = Gateway::open(store, &args, parse_upstream(&args.upstream)?).await?;
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr().context("the bound address")?;
        let limits = Limits::of(&args);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            let graceful = GracefulShutdown::new();
            let until = async {
                let _ = stopped.await;
            };
            gateway.serve(listener, &graceful, until, limits).await;
            graceful.shutdown().await;
        });
        Ok(InProcess { addr, stop, served })
    }

    /// Stops accepting and waits for the open connections to finish their requests.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.served.await;
    }
}

/// The layer over the proxy, and the counts of what happened to each request.
#[derive(Clone)]
struct Gateway {
    service: oncely_http::IdempotencyService<Proxy>,
    /// `--timeout`, for the requests the layer does not hold (it applies it to the others).
    timeout: Duration,
    methods: Arc<Vec<Method>>,
    counts: Arc<Counts>,
}

impl Gateway {
    /// The layer the flags configure, over a proxy to `upstream`, on the store at `store`.
    async fn open(store: &str, args: &ServeArgs, upstream: Upstream) -> Result<Gateway> {
        let oncely = Oncely::new(oncely::connect(store).await?).with_lease(LEASE);
        let proxy = Proxy {
            client: Client::builder(TokioExecutor::new()).build_http(),
            upstream: Arc::new(upstream),
        };
        Ok(Gateway {
            service: layer(oncely, args).layer(proxy),
            timeout: args.timeout,
            methods: Arc::new(args.methods.0.clone()),
            counts: Arc::new(Counts::default()),
        })
    }

    /// Serves the connections `listener` accepts, each watched by `graceful`, until `until`
    /// resolves; then the listener is closed (the connections go on until `graceful` ends them).
    /// At most `limits.max_connections` at once, each closed past its header or idle timeout
    /// ([`connections`]).
    async fn serve(
        self,
        listener: TcpListener,
        graceful: &GracefulShutdown,
        until: impl Future<Output = ()>,
        limits: Limits,
    ) {
        let mut http = hyper::server::conn::http1::Builder::new();
        // The header timeout is ours: hyper's would also cut idle keep-alive connections.
        http.header_read_timeout(None);
        let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
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
            let gateway = self.clone();
            let service = hyper::service::service_fn(move |request| {
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(gateway.handle(request, peer).await) }
            });
            let watch = Watch::new(limits.timeouts);
            let connection = graceful.watch(http.serve_connection(
                TokioIo::new(Watched::new(stream, watch.clone())),
                watch.service(service),
            ));
            tokio::spawn(async move {
                tokio::select! {
                    // A client that goes away mid-request is its own business: the layer runs
                    // a keyed request that reached the upstream to its end anyway.
                    _ = connection => {}
                    // No request in progress: dropping the connection closes it.
                    () = watch.expired() => {}
                }
                drop(permit);
            });
        }
    }

    async fn handle(
        mut self,
        mut request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body<Incoming>> {
        let forwarded = Forwarded::default();
        request.extensions_mut().insert(forwarded.clone());
        request.extensions_mut().insert(Peer(peer));
        // With a key on a method it applies to, a request the layer forwards was claimed,
        // unless the store was down and the layer failed open (then it is passed through).
        let keyed = self.methods.contains(request.method())
            && request.headers().contains_key(IDEMPOTENCY_KEY);
        let counted = CountOnDrop::start(self.counts.clone());
        let call = self.service.call(request);
        // The layer answers a keyed request's client at --timeout and waits on for the upstream
        // itself; any other request is simply cut off.
        let result = if keyed {
            call.await
        } else {
            match tokio::time::timeout(self.timeout, call).await {
                Ok(result) => result,
                Err(_) => {
                    counted.done(Outcome::UpstreamFailed);
                    return upstream_timed_out(self.timeout);
                }
            }
        };
        let keyed = keyed && !forwarded.failed_open();
        let forwarded = forwarded.forwarded();
        let (outcome, response) = match result {
            Err(failed) => (Outcome::UpstreamFailed, upstream_failed(&failed, LEASE)),
            Ok(response) => {
                let outcome = match () {
                    // The layer's 504: no answer within --timeout, the request still running.
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
            .is_some_and(|v| v == oncely_http::PROBLEM_JSON)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_a_comma_list() {
        let Methods(methods) = parse_methods("post, put,POST").unwrap();
        assert_eq!(methods, vec![Method::POST, Method::PUT]);
        assert!(parse_methods(",").is_err());
        assert!(parse_methods("PO ST").is_err());
    }
}
