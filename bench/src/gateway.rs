//! The gateway benchmark (`oncely bench --gateway`): what `oncely serve` adds to a request,
//! against calling the upstream directly, for a first execution and for a replay.
//!
//! **Upstream.** A trivial HTTP/1.1 server in this process on a loopback port: every POST is
//! read whole and answered `200` with a [`RESPONSE_BYTES`]-byte JSON body (a payment charge),
//! each execution counted.
//!
//! **Gateway.** `oncely serve`'s, [`oncely_http::gateway::Gateway`], started in this process
//! with its defaults (`oncely serve`'s) on a loopback port, on a fresh store of the kind
//! `--store` names for each contender (a new
//! SQLite file, a fresh PostgreSQL schema or MySQL database dropped after, a Redis key prefix
//! removed after, or `memory:`), so contenders never see each other's keys and the store the URL
//! names is never written.
//!
//! **Client.** [`GatewayConfig::concurrency`] tasks, each with one keep-alive HTTP/1.1
//! connection (opened before the clock starts), send [`GatewayConfig::requests`] POSTs of a
//! small JSON body in all, one at a time per connection, each timed from send to the last byte
//! of the answer. The contenders, in the order they run:
//!
//! - **direct**: to the upstream itself (with an `Idempotency-Key`, which it ignores);
//! - **pass-through**: through the gateway without an `Idempotency-Key`: proxying only;
//! - **first execution**: through the gateway, a fresh key per request: claim, forward, store;
//! - **replay**: through the gateway, keys already answered (one untimed pass through the same
//!   gateway first): the stored response, without the upstream.
//!
//! The run fails unless every answer is `200` with the upstream's body, the upstream executed
//! each request of direct, pass-through and first execution once and none of the replay, and
//! every replay (and only a replay) carries `Idempotent-Replayed: true`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use oncely_http::IdempotencyLayer;
use oncely_http::gateway::{Gateway, GatewayOptions};
use tokio::net::{TcpListener, TcpStream};

use crate::fresh::FreshStores;
use crate::{BenchError, Progress, StoreKind, Workload, format_duration, percentile};

/// Requests per contender by default.
pub const DEFAULT_REQUESTS: usize = 10_000;
/// Concurrent client connections by default.
pub const DEFAULT_CONCURRENCY: usize = 16;
/// The size of the upstream's answer.
pub const RESPONSE_BYTES: usize = 200;
/// How long the run may wait for one answer before it is declared stuck.
pub const REQUEST_LIMIT: Duration = Duration::from_secs(60);

/// What the gateway benchmark runs.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The kind of store the gateway uses.
    pub store: StoreKind,
    /// The store URL (a server's: fresh namespaces are made on it).
    pub store_url: String,
    /// Where SQLite files go.
    pub dir: PathBuf,
    /// Requests per contender.
    pub requests: usize,
    /// Concurrent client connections.
    pub concurrency: usize,
    /// Seed of the keys.
    pub seed: u64,
}

/// A gateway serving in this process: `oncely serve`'s, with its defaults.
struct Running {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts a gateway on the store at `store_url`, forwarding to `upstream` (`http://ADDR`),
    /// listening on a loopback port.
    async fn start(store_url: &str, upstream: &str) -> Result<Running, BenchError> {
        let failed =
            |e: &dyn std::fmt::Display| BenchError::Other(format!("starting the gateway: {e}"));
        let store = oncely::connect(store_url).await.map_err(|e| failed(&e))?;
        let layer = IdempotencyLayer::new(oncely::Oncely::new(store));
        let gateway = Gateway::new(layer, GatewayOptions::new(upstream)).map_err(|e| failed(&e))?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| failed(&e))?;
        let addr = listener.local_addr().map_err(|e| failed(&e))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let until = async {
            let _ = stopped.await;
        };
        let served = tokio::spawn(async move {
            gateway.serve(listener, until).await;
        });
        Ok(Running { addr, stop, served })
    }

    /// Stops accepting and waits for the open connections to finish their requests.
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.served.await;
    }
}

/// The figures of one contender.
#[derive(Clone, Debug)]
pub struct GatewayRun {
    /// `direct`, `pass-through`, `first execution` or `replay`.
    pub name: String,
    /// Requests sent and answered `200`.
    pub requests: usize,
    /// Of them, executed by the upstream.
    pub executed: u64,
    /// Of them, answered with `Idempotent-Replayed: true`.
    pub replayed: u64,
    /// From the first request to the last answer.
    pub elapsed: Duration,
    /// Median request latency.
    pub p50: Duration,
    /// 99th percentile request latency.
    pub p99: Duration,
}

impl GatewayRun {
    /// Requests per second.
    pub fn requests_per_sec(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs the four contenders and answers their figures in order: direct, pass-through, first
/// execution, replay.
pub fn run(config: &GatewayConfig, progress: &dyn Progress) -> Result<Vec<GatewayRun>, BenchError> {
    // Client, gateway and upstream share the two cores (with the store's server, if any).
    let runtime = crate::two_workers()?;
    runtime.block_on(async {
        let executions = Arc::new(AtomicU64::new(0));
        let upstream = start_upstream(executions.clone()).await?;
        let mut stores = FreshStores::new(config.store, &config.store_url, &config.dir);
        let results = contenders(config, &upstream, &executions, &mut stores, progress);
        let results = results.await;
        let removed = stores.remove_all().await;
        let results = results?;
        removed?;
        Ok(results)
    })
}

/// The contenders, each on a store of its own from `stores`.
async fn contenders(
    config: &GatewayConfig,
    upstream: &str,
    executions: &AtomicU64,
    stores: &mut FreshStores,
    progress: &dyn Progress,
) -> Result<Vec<GatewayRun>, BenchError> {
    let upstream_addr: SocketAddr = upstream
        .trim_start_matches("http://")
        .parse()
        .expect("the upstream's own address");
    let n = config.requests;
    let keys = |salt: u64| Arc::new(Workload::distinct(n, config.seed ^ salt));
    let load = |name: &'static str, addr, keys, expect| Load {
        name,
        addr,
        requests: n,
        keys,
        expect,
        concurrency: config.concurrency.max(1),
    };
    let mut results = Vec::new();
    let direct = load("direct", upstream_addr, Some(keys(1)), Expect::Executed);
    results.push(direct.measure(executions, progress).await?);

    for (name, salt, expect) in [
        ("pass-through", None, Expect::Executed),
        ("first execution", Some(2), Expect::Executed),
        ("replay", Some(3), Expect::Replayed),
    ] {
        let store = stores
            .fresh(&format!("gateway_{}", name.replace([' ', '-'], "_")))
            .await?;
        let running = Running::start(&store, upstream).await?;
        let addr = running.addr;
        let keys = salt.map(keys);
        let measured = async {
            if expect == Expect::Replayed {
                let fill = load("replay (fill)", addr, keys.clone(), Expect::Executed);
                fill.measure(executions, progress).await?;
            }
            load(name, addr, keys, expect)
                .measure(executions, progress)
                .await
        }
        .await;
        running.stop().await;
        results.push(measured?);
    }
    Ok(results)
}

/// What the upstream and the answers must show for every request of a contender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Executed by the upstream, not marked replayed.
    Executed,
    /// Not executed, marked `Idempotent-Replayed: true`.
    Replayed,
}

/// One contender's requests.
struct Load {
    name: &'static str,
    addr: SocketAddr,
    requests: usize,
    /// The `Idempotency-Key` of request `i` is `keys[i]`; none without.
    keys: Option<Arc<Workload>>,
    expect: Expect,
    concurrency: usize,
}

/// What one client connection measured.
struct Measured {
    latencies: Vec<Duration>,
    replayed: u64,
}

impl Load {
    /// Sends the requests from [`Load::concurrency`] connections, opened before the clock
    /// starts, and checks every answer and the upstream's count.
    async fn measure(
        self,
        executions: &AtomicU64,
        progress: &dyn Progress,
    ) -> Result<GatewayRun, BenchError> {
        let load = Arc::new(self);
        progress.start(load.name, load.requests as u64);
        let next = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(tokio::sync::Barrier::new(load.concurrency + 1));
        let executed_before = executions.load(Ordering::SeqCst);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..load.concurrency {
            tasks.spawn(client(load.clone(), next.clone(), ready.clone()));
        }
        ready.wait().await;
        let started = Instant::now();
        let mut latencies = Vec::with_capacity(load.requests);
        let mut replayed = 0;
        let mut reported = 0;
        let mut failed = None;
        while !tasks.is_empty() {
            match tokio::time::timeout(Duration::from_millis(100), tasks.join_next()).await {
                Ok(Some(joined)) => {
                    match joined.map_err(|e| BenchError::Other(e.to_string()))? {
                        Ok(measured) => {
                            latencies.extend(measured.latencies);
                            replayed += measured.replayed;
                        }
                        // The first failure is the one to report; the others stop with it.
                        Err(error) => {
                            failed.get_or_insert(error);
                            next.store(load.requests, Ordering::SeqCst);
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => {}
            }
            let done = next.load(Ordering::Relaxed).min(load.requests);
            progress.advance((done - reported) as u64);
            reported = done;
        }
        let elapsed = started.elapsed();
        progress.finish();
        if let Some(error) = failed {
            return Err(error);
        }
        let executed = executions.load(Ordering::SeqCst) - executed_before;
        let (requests, name) = (load.requests, load.name);
        let expected = match load.expect {
            Expect::Executed => (requests as u64, 0),
            Expect::Replayed => (0, requests as u64),
        };
        if latencies.len() != requests || (executed, replayed) != expected {
            return Err(BenchError::Other(format!(
                "{name}: {} of {requests} requests answered, {executed} executed by the \
                 upstream, {replayed} replayed; expected {} executed and {} replayed",
                latencies.len(),
                expected.0,
                expected.1
            )));
        }
        latencies.sort_unstable();
        Ok(GatewayRun {
            name: name.to_owned(),
            requests,
            executed,
            replayed,
            elapsed,
            p50: percentile(&latencies, 0.50),
            p99: percentile(&latencies, 0.99),
        })
    }
}

/// One keep-alive connection sending the load's next request until there is none; waits at
/// `ready` once connected (or not), so the clock starts with every connection open.
async fn client(
    load: Arc<Load>,
    next: Arc<AtomicUsize>,
    ready: Arc<tokio::sync::Barrier>,
) -> Result<Measured, BenchError> {
    let name = load.name;
    let connected = async {
        let stream = TcpStream::connect(load.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(sender)
    }
    .await;
    ready.wait().await;
    let mut sender =
        connected.map_err(|e| BenchError::Other(format!("{name}: cannot connect: {e}")))?;
    let host = load.addr.to_string();
    let mut measured = Measured {
        latencies: Vec::with_capacity(load.requests / load.concurrency + 1),
        replayed: 0,
    };
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= load.requests {
            break;
        }
        let mut request = Request::post("/v1/charges")
            .header(hyper::header::HOST, &host)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(keys) = &load.keys {
            request = request.header("idempotency-key", keys.keys()[i].as_str());
        }
        let request = request
            .body(Full::new(charge_request(i)))
            .expect("a valid request");
        let sent = Instant::now();
        let answer = tokio::time::timeout(REQUEST_LIMIT, async {
            sender.ready().await?;
            let (parts, body) = sender.send_request(request).await?.into_parts();
            Ok::<_, hyper::Error>((parts, body.collect().await?.to_bytes()))
        })
        .await;
        let latency = sent.elapsed();
        let (parts, body) = match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(BenchError::Other(format!("{name}: request {i}: {e}"))),
            Err(_) => {
                return Err(BenchError::Other(format!(
                    "{name}: request {i}: no answer within {REQUEST_LIMIT:?}"
                )));
            }
        };
        if parts.status != StatusCode::OK || body.len() != RESPONSE_BYTES {
            return Err(BenchError::Other(format!(
                "{name}: request {i} answered {} with {} bytes: {}",
                parts.status,
                body.len(),
                String::from_utf8_lossy(&body[..body.len().min(300)])
            )));
        }
        if parts
            .headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
        {
            measured.replayed += 1;
        }
        measured.latencies.push(latency);
    }
    Ok(measured)
}

/// Starts the upstream on a loopback port; answers `http://ADDR`.
async fn start_upstream(executions: Arc<AtomicU64>) -> Result<String, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| BenchError::Other(format!("the upstream cannot listen: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| BenchError::Other(e.to_string()))?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let executions = executions.clone();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let executions = executions.clone();
                async move {
                    // The whole request is read, as a real handler would.
                    let _ = request.into_body().collect().await;
                    let n = executions.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header(hyper::header::CONTENT_TYPE, "application/json")
                            .body(Full::new(charge(n)))
                            .expect("a valid response"),
                    )
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(format!("http://{addr}"))
}

/// The upstream's answer to its `n`th request: a charge, [`RESPONSE_BYTES`] of JSON.
fn charge(n: u64) -> Bytes {
    let mut json = format!(
        r#"{{"id":"ch_{n:024}","object":"charge","amount":2000,"currency":"eur","status":"succeeded","paid":true,"captured":true,"livemode":false,"description":""#
    );
    let tail = r#""}"#;
    let pad = RESPONSE_BYTES.saturating_sub(json.len() + tail.len());
    json.extend(std::iter::repeat_n('.', pad));
    json.push_str(tail);
    Bytes::from(json)
}

/// The body of request `i`: a charge's parameters.
fn charge_request(i: usize) -> Bytes {
    Bytes::from(format!(
        r#"{{"amount":2000,"currency":"eur","customer":"cus_{i:010}","description":"order {i}"}}"#
    ))
}

/// The results as an aligned text table; `+p50` and `+p99` are each contender's latency minus
/// the direct one's (the first result).
pub fn format_table(results: &[GatewayRun]) -> String {
    let direct = results.first();
    let mut out = format!(
        "{:<16} {:>9} {:>9} {:>9} {:>11} {:>9} {:>9} {:>9} {:>9}\n",
        "contender", "requests", "executed", "replayed", "requests/s", "p50", "p99", "+p50", "+p99"
    );
    for r in results {
        let plus = |own: Duration, base: Option<Duration>| match base {
            Some(base) if r.name != "direct" => signed(own, base),
            _ => "-".to_owned(),
        };
        out.push_str(&format!(
            "{:<16} {:>9} {:>9} {:>9} {:>11.0} {:>9} {:>9} {:>9} {:>9}\n",
            r.name,
            r.requests,
            r.executed,
            r.replayed,
            r.requests_per_sec(),
            format_duration(r.p50),
            format_duration(r.p99),
            plus(r.p50, direct.map(|d| d.p50)),
            plus(r.p99, direct.map(|d| d.p99)),
        ));
    }
    out
}

/// `own - base`, with its sign.
fn signed(own: Duration, base: Duration) -> String {
    if own >= base {
        format!("+{}", format_duration(own - base))
    } else {
        format!("-{}", format_duration(base - own))
    }
}
