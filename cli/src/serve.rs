//! `oncely serve`: the Idempotency-Key gateway in front of any HTTP service.
//!
//! The gateway is `oncely_http::gateway` (a streaming reverse proxy with
//! `oncely_http::IdempotencyLayer` in front of it); this module maps the flags to its options
//! and runs it as a process: SIGINT or SIGTERM stops accepting connections and lets requests in
//! flight finish (up to its grace, 30s, or `--timeout` if longer), a second signal stops at
//! once; then the summary goes to stderr and the exit status is 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use hyper::header::HeaderName;
use hyper::{Method, StatusCode};
use oncely::trace::SpanKeys;
use oncely::{CompositeKey, Oncely, PayloadFingerprint, duration};
use oncely_http::gateway::ops::OpsServer;
use oncely_http::gateway::{Gateway, GatewayError, GatewayOptions, ServerTls};
use oncely_http::{DEFAULT_DENY_HEADERS, IdempotencyLayer, InFlight};
use tokio::net::TcpListener;

use crate::size;
use crate::stop::Stop;

/// Arguments of `oncely serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The service to protect: an http[s]://HOST[:PORT][/PREFIX] URL (https verified against
    /// the system's roots; SSL_CERT_FILE replaces them). Each request's path and query are
    /// appended to it.
    #[arg(long, value_name = "URL")]
    upstream: String,

    /// Where to listen, ADDR:PORT (port 0 picks a free one; the bound address is printed).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// Listen with TLS (HTTPS): this PEM file's certificate, then any intermediates (a
    /// "fullchain" file). Needs --tls-key. The upstream is told X-Forwarded-Proto: https.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert, a PEM file (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

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

    /// Send the upstream, as its Idempotency-Key, the key derived for STEP from the claimed
    /// scope and key (a UUID, the same on every execution of that key) instead of the
    /// client's: for an upstream idempotent by Idempotency-Key itself, so a request this gateway
    /// runs again (after a crash, once the lease ran out) is answered there from its record.
    #[arg(long, value_name = "STEP")]
    forward_key: Option<String>,

    #[command(flatten)]
    purge: crate::purging::PurgeArgs,

    /// Store and replay responses with these statuses only (repeat, or separate with commas);
    /// any other releases the key. Default: every status but 5xx and 408, 409, 425, 429.
    #[arg(
        long = "store-status",
        env = "ONCELY_STORE_STATUSES",
        value_name = "CODE",
        value_delimiter = ',',
        value_parser = parse_status
    )]
    store_statuses: Vec<StatusCode>,

    /// What goes before each error's slug in the `type` of the gateway's problem+json
    /// answers (default urn:oncely:http:): a URL makes each type link to its documentation,
    /// e.g. https://docs.example.com/errors/ gives .../errors/idempotency-key-malformed.
    #[arg(long, env = "ONCELY_PROBLEM_TYPE_BASE", value_name = "URL")]
    problem_type_base: Option<String>,

    /// How long a stored error response (4xx, or 5xx with --store-server-errors) is replayed,
    /// when shorter than --ttl.
    #[arg(long, env = "ONCELY_ERROR_TTL", value_name = "DURATION", value_parser = duration::parse)]
    error_ttl: Option<Duration>,

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

    /// What of the body must match when a key comes again (else 422): json (its canonical
    /// JSON: key order and spacing do not count), bytes, fields:SELECTOR (only those fields, by
    /// JSON pointers or JMESPath: fields:/amount,/to), or ignore:/POINTER,... (all but those
    /// fields, e.g. a timestamp each retry changes).
    #[arg(
        long,
        env = "ONCELY_BODY_FINGERPRINT",
        value_name = "SPEC",
        default_value = "json"
    )]
    body_fingerprint: PayloadFingerprint,

    /// Key a request that sends no Idempotency-Key by fields of its JSON body: JSON pointers
    /// (/orderId, /orderId,/paymentId) or a JMESPath expression (detail.orderId,
    /// powertools_json(body).orderId). A body without them passes through, or gets 400 with
    /// --require-key.
    #[arg(long, env = "ONCELY_KEY_FROM_BODY", value_name = "SPEC")]
    key_from_body: Option<CompositeKey>,

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
    #[arg(long, env = "ONCELY_HEADER_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = duration::parse_positive)]
    header_timeout: Duration,

    /// How long a keep-alive connection may wait for its next request, with nothing in
    /// progress, before it is closed; a request in progress is never cut by it. 75s: longer
    /// than the 60s idle timeout of common load balancers in front (AWS ALB, nginx's upstream
    /// keepalive), so they close first and never send onto a connection being closed.
    #[arg(long, env = "ONCELY_IDLE_TIMEOUT", value_name = "DURATION", default_value = "75s", value_parser = duration::parse_positive)]
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

fn parse_status(text: &str) -> Result<StatusCode, String> {
    text.trim()
        .parse::<u16>()
        .ok()
        .and_then(|code| StatusCode::from_u16(code).ok())
        .filter(|status| (100..600).contains(&status.as_u16()))
        .ok_or_else(|| format!("`{text}` is not an HTTP status (100-599)"))
}

fn parse_header_name(text: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(text.as_bytes()).map_err(|_| format!("`{text}` is not a header name"))
}

/// The Idempotency-Key layer as the flags configure it, over `oncely`'s store.
fn layer(oncely: Oncely, args: &ServeArgs) -> IdempotencyLayer {
    let mut layer = IdempotencyLayer::new(oncely);
    if !args.store_statuses.is_empty() {
        layer = layer.store_statuses(args.store_statuses.iter().copied());
    }
    if let Some(error_ttl) = args.error_ttl {
        layer = layer.error_retention(error_ttl);
    }
    if let Some(base) = &args.problem_type_base {
        layer = layer.problem_type_base(base.clone());
    }
    if let Some(step) = &args.forward_key {
        layer = layer.forward_key(step.clone());
    }
    if let Some(key) = &args.key_from_body {
        layer = layer.key_from_body(key.clone());
    }
    layer
        .retention(args.ttl)
        .require_key(args.require_key)
        .methods(args.methods.0.clone())
        .principal_headers(args.principal_headers.clone())
        .fingerprint_headers(args.fingerprint_headers.clone())
        .body_fingerprint(args.body_fingerprint.clone())
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
}

/// The gateway's options as the flags set them; the TLS files are read here.
fn options(args: &ServeArgs) -> Result<GatewayOptions, GatewayError> {
    let mut options = GatewayOptions::new(args.upstream.clone());
    options.timeout = args.timeout;
    options.header_timeout = args.header_timeout;
    options.idle_timeout = args.idle_timeout;
    options.max_connections = args.max_connections as usize;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        options.tls = Some(ServerTls::from_pem_files(cert, key)?);
    }
    Ok(options)
}

/// A refused option, in the words of the flag that set it.
fn flag_error(error: GatewayError) -> anyhow::Error {
    match error {
        GatewayError::Upstream { url, reason } => anyhow!("--upstream `{url}`: {reason}"),
        GatewayError::ZeroDuration { option } => {
            anyhow!("--{} must be longer than 0s", option.replace('_', "-"))
        }
        GatewayError::Tls { file, reason } => anyhow!("--tls-cert/--tls-key `{file}`: {reason}"),
        other => anyhow!("{other}"),
    }
}

/// Runs `oncely serve` until SIGINT or SIGTERM; `store` is the global `--store` URL.
pub async fn run(store: &str, span_keys: SpanKeys, args: ServeArgs) -> Result<ExitCode> {
    let options = options(&args).map_err(flag_error)?;
    options.check().map_err(flag_error)?;
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    // Signals first: a signal during the setup must not kill the process half-way.
    let mut stop = Stop::install()?;
    let oncely = Oncely::new(oncely::connect(store).await?)
        .with_lease(LEASE)
        .with_span_keys(span_keys);
    let _purging = args.purge.start(&oncely);
    let gateway = Gateway::new(layer(oncely, &args), options).map_err(flag_error)?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let bound = listener.local_addr().context("the bound address")?;
    if let Some(addr) = args.metrics_addr {
        let metrics = crate::ops::listen(addr).await?;
        let (counts, ready) = (gateway.counts(), gateway.clone());
        let library = crate::ops::recorder();
        let ops = OpsServer::new(move || counts.prometheus() + &library.render())
            .ready_when(move || ready.ready());
        tokio::spawn(ops.serve(metrics));
    }
    eprintln!(
        "listening on {scheme}://{bound}, forwarding to {} (store {}); stop with Ctrl-C or SIGTERM",
        gateway.upstream(),
        oncely::backend::url::redact_password(store),
    );

    let grace = gateway.grace();
    let shutdown = async move {
        stop.first().await;
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
    };
    // It waits for the keyed requests whose clients left too: their responses are still to be
    // stored.
    let served = gateway.serve(listener, shutdown).await;
    if !served.drained {
        eprintln!(
            "warning: requests still in flight after {}s were cut off; their keys are held \
             until their lease ends",
            grace.as_secs()
        );
    }
    // Last, as in every command: a script reads the summary from the last line.
    eprintln!("{}", served.counts.summary());
    Ok(ExitCode::SUCCESS)
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
