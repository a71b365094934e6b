//! `oncely serve` end to end: the binary as a process on loopback, a real SQLite store, and a
//! small upstream in this process that counts how often each Idempotency-Key is executed. The
//! storm also runs against PostgreSQL (`ONCELY_TEST_POSTGRES`, default
//! `postgres://postgres@127.0.0.1:5432/test`; a fresh schema) and Redis (`ONCELY_TEST_REDIS`,
//! default `redis://127.0.0.1:6379`; a fresh key prefix).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

mod support;

use support::{BIN, Gateway, PATIENCE};

/// The PostgreSQL and Redis servers under test: each storm gets a schema (PostgreSQL) or a key
/// prefix (Redis) of its own, named `<PREFIX>_<run start, Unix s>_<pid>_<n>`; a run first drops
/// what earlier runs left (those whose process is gone, or that started over an hour ago).
/// Fresh schemas and key prefixes on the servers, named after this test binary.
mod servers {
    const PREFIX: &str = "oncely_serve_test";

    pub async fn postgres_url() -> String {
        oncely_conformance::servers::postgres_url(PREFIX).await
    }

    pub async fn redis_url() -> String {
        oncely_conformance::servers::redis_url(PREFIX).await
    }
}

// ---------------------------------------------------------------------------------------------
// The upstream: answers every request, counting executions per Idempotency-Key.

/// Executions per key ("" for requests without one), shared with the upstream's tasks.
#[derive(Clone, Default)]
struct Executions(Arc<Mutex<HashMap<String, u64>>>);

impl Executions {
    fn of(&self, key: &str) -> u64 {
        self.0.lock().unwrap().get(key).copied().unwrap_or(0)
    }

    fn all(&self) -> HashMap<String, u64> {
        self.0.lock().unwrap().clone()
    }
}

/// Serves on `listener` until the returned handle is aborted. Each answer is unique (a global
/// sequence number), so a replay is told from a second execution by its bytes.
fn start_upstream(listener: TcpListener, executions: Executions) -> tokio::task::JoinHandle<()> {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let executions = executions.clone();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let executions = executions.clone();
                async move {
                    let key = request
                        .headers()
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let method = request.method().clone();
                    let path = request.uri().to_string();
                    let hop = request.headers().contains_key("x-hop");
                    let header = |name: &str| {
                        request
                            .headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    let forwarded = format!(
                        "host={} xff={} xfh={}",
                        header("host"),
                        header("x-forwarded-for"),
                        header("x-forwarded-host")
                    );
                    let body = request.into_body().collect().await.unwrap().to_bytes();
                    // Counted on arrival: a request the gateway gives up on still counts.
                    let n = SEQUENCE.fetch_add(1, Ordering::SeqCst);
                    *executions.0.lock().unwrap().entry(key.clone()).or_default() += 1;
                    // Long enough for concurrent duplicates to overlap; /slow for timeouts
                    // and shutdown.
                    let pause = if path.starts_with("/slow") { 1000 } else { 20 };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    let mut text = format!(
                        "{method} {path} key={key} n={n} hop={hop} {forwarded} body={}",
                        String::from_utf8_lossy(&body)
                    );
                    if path.starts_with("/big") {
                        // Over the 1 MiB the gateway stores.
                        text = text.repeat(2 * 1024 * 1024 / text.len() + 1);
                    }
                    let status = if path.starts_with("/fail") {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else if method == hyper::Method::POST {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    };
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(status)
                            .header("x-upstream", "yes")
                            .header("set-cookie", "session=1")
                            .body(Full::new(Bytes::from(text)))
                            .unwrap(),
                    )
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

async fn upstream() -> (String, Executions, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let executions = Executions::default();
    let task = start_upstream(listener, executions.clone());
    (url, executions, task)
}

// ---------------------------------------------------------------------------------------------
// The gateway process.

impl Gateway {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGTERM; the exit status and everything printed on stderr.
    fn terminate(mut self) -> (Option<i32>, Vec<String>) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on the pid of our own child, which has not been waited for.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let _ = self.ended.recv_timeout(PATIENCE);
                return (status.code(), self.stderr.lock().unwrap().clone());
            }
            assert!(Instant::now() < deadline, "oncely serve kept running");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Gateway {
    /// SIGKILL: no shutdown, no summary; returns once the process is gone.
    fn kill9(mut self) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on the pid of our own child, which has not been waited for.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        let status = self.child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
    }
}

fn assert_summary_and_exit_0((code, stderr): &(Option<i32>, Vec<String>), summary: &str) {
    assert_eq!(*code, Some(0), "{stderr:#?}");
    assert_eq!(
        stderr.last().map(String::as_str),
        Some(summary),
        "{stderr:#?}"
    );
    assert!(
        !stderr.iter().any(|l| l.contains("panicked")),
        "{stderr:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The client.

#[derive(Debug)]
struct Answer {
    version: hyper::Version,
    status: StatusCode,
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }

    fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
    key: Option<&str>,
    body: &str,
) -> Answer {
    try_send(client, method, url, key, body).await.unwrap()
}

/// [`send`], with a gateway that may be gone: an error rather than a panic.
async fn try_send(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
    key: Option<&str>,
    body: &str,
) -> Result<Answer, Box<dyn std::error::Error + Send + Sync>> {
    let mut request = Request::builder().method(method).uri(url);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let request = request
        .header("x-hop", "1")
        .header("connection", "x-hop")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = client.request(request).await?;
    let (parts, body) = response.into_parts();
    Ok(Answer {
        version: parts.version,
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await?.to_bytes(),
    })
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_executes_once_and_its_response_is_replayed_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, executions, _task) = upstream().await;
    let gateway = Gateway::start(dir.path(), &upstream, &[]);
    let client = client();
    let orders = gateway.url("/orders?x=1");

    let first = send(&client, "POST", &orders, Some("k1"), "A").await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    assert!(!first.replayed());
    assert!(
        first.text().starts_with("POST /orders?x=1 key=k1 "),
        "{}",
        first.text()
    );
    // The Connection-named hop-by-hop header is not forwarded.
    assert!(first.text().contains("hop=false"), "{}", first.text());
    let upstream_host = upstream.trim_start_matches("http://");
    let forwarded = format!("host={upstream_host} xff=127.0.0.1 xfh={} ", gateway.addr);
    assert!(
        first.text().contains(&forwarded),
        "{forwarded} not in {}",
        first.text()
    );
    assert_eq!(first.headers["x-upstream"], "yes");
    assert_eq!(first.headers["set-cookie"], "session=1");
    assert_eq!(executions.of("k1"), 1);

    let again = send(&client, "POST", &orders, Some("k1"), "A").await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert!(again.replayed());
    assert_eq!(again.body, first.body);
    assert_eq!(again.headers["x-upstream"], "yes");
    // Set-Cookie is not stored, so not replayed.
    assert!(!again.headers.contains_key("set-cookie"));
    assert_eq!(executions.of("k1"), 1);

    let other = send(&client, "POST", &orders, Some("k1"), "B").await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.content_type(), "application/problem+json");
    assert!(
        other
            .text()
            .contains("urn:oncely:http:idempotency-key-reused")
    );
    assert_eq!(executions.of("k1"), 1);

    let malformed = send(&client, "POST", &orders, Some(""), "A").await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);

    for _ in 0..2 {
        let no_key = send(&client, "POST", &orders, None, "A").await;
        assert_eq!(no_key.status, StatusCode::CREATED);
        assert!(!no_key.replayed());
    }
    assert_eq!(executions.of(""), 2);

    let get = send(&client, "GET", &gateway.url("/orders/7"), Some("k1"), "").await;
    assert_eq!(get.status, StatusCode::OK);
    assert!(
        get.text().starts_with("GET /orders/7 key=k1 "),
        "{}",
        get.text()
    );
    assert!(!get.replayed());
    assert_eq!(executions.of("k1"), 2);

    assert_summary_and_exit_0(
        &gateway.terminate(),
        "requests 7: executed 1, replayed 1, in flight (409) 0, key reused (422) 1, \
         rejected 1, store unavailable (503) 0, upstream failed (502/504) 0, \
         passed through 3, abandoned 0",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_require_key_a_post_without_one_is_400_and_never_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, executions, _task) = upstream().await;
    let gateway = Gateway::start(
        dir.path(),
        &upstream,
        &["--require-key", "--methods", "post,put", "--ttl", "1h"],
    );
    let client = client();

    let no_key = send(&client, "POST", &gateway.url("/pay"), None, "A").await;
    assert_eq!(no_key.status, StatusCode::BAD_REQUEST);
    assert_eq!(no_key.content_type(), "application/problem+json");
    assert!(
        no_key.text().contains("idempotency-key-missing"),
        "{}",
        no_key.text()
    );
    let put = send(&client, "PUT", &gateway.url("/pay"), None, "A").await;
    assert_eq!(put.status, StatusCode::BAD_REQUEST);
    // PATCH is not in --methods: passed through.
    let patch = send(&client, "PATCH", &gateway.url("/pay"), None, "A").await;
    assert_eq!(patch.status, StatusCode::OK);
    let get = send(&client, "GET", &gateway.url("/pay"), None, "").await;
    assert_eq!(get.status, StatusCode::OK);
    assert_eq!(executions.of(""), 2);

    assert_summary_and_exit_0(
        &gateway.terminate(),
        "requests 4: executed 0, replayed 0, in flight (409) 0, key reused (422) 0, \
         rejected 2, store unavailable (503) 0, upstream failed (502/504) 0, \
         passed through 2, abandoned 0",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_is_down_is_502_and_a_retry_executes_once_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let gateway = Gateway::start(dir.path(), &format!("http://{addr}"), &[]);
    let client = client();

    let down = send(&client, "POST", &gateway.url("/pay"), Some("k"), "A").await;
    assert_eq!(down.status, StatusCode::BAD_GATEWAY, "{}", down.text());
    assert_eq!(down.content_type(), "application/problem+json");
    assert!(
        down.text().contains("urn:oncely:http:upstream-unavailable"),
        "{}",
        down.text()
    );

    let executions = Executions::default();
    let _task = start_upstream(TcpListener::bind(addr).await.unwrap(), executions.clone());
    let retry = send(&client, "POST", &gateway.url("/pay"), Some("k"), "A").await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text());
    assert!(!retry.replayed());
    let replay = send(&client, "POST", &gateway.url("/pay"), Some("k"), "A").await;
    assert!(replay.replayed());
    assert_eq!(replay.body, retry.body);
    assert_eq!(executions.of("k"), 1);

    assert_summary_and_exit_0(
        &gateway.terminate(),
        "requests 3: executed 1, replayed 1, in flight (409) 0, key reused (422) 0, \
         rejected 0, store unavailable (503) 0, upstream failed (502/504) 1, \
         passed through 0, abandoned 0",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_slower_than_the_timeout_is_504_then_its_answer_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, executions, _task) = upstream().await;
    let gateway = Gateway::start(dir.path(), &upstream, &["--timeout", "300ms"]);
    let client = client();

    let slow = send(&client, "POST", &gateway.url("/slow"), Some("k"), "A").await;
    assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT, "{}", slow.text());
    assert_eq!(slow.content_type(), "application/problem+json");
    assert!(
        slow.text().contains("urn:oncely:http:response-timeout"),
        "{}",
        slow.text()
    );
    // Held, not released: the upstream is still executing the request.
    let retry = send(&client, "POST", &gateway.url("/slow"), Some("k"), "A").await;
    assert_eq!(retry.status, StatusCode::CONFLICT, "{}", retry.text());
    assert_eq!(retry.headers["retry-after"], "1");
    // The gateway waited on for the upstream and stored its answer.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let replay = send(&client, "POST", &gateway.url("/slow"), Some("k"), "A").await;
    assert_eq!(replay.status, StatusCode::CREATED, "{}", replay.text());
    assert!(replay.replayed());
    assert!(replay.text().contains("key=k n="), "{}", replay.text());
    assert_eq!(executions.of("k"), 1);

    assert_summary_and_exit_0(
        &gateway.terminate(),
        "requests 3: executed 0, replayed 1, in flight (409) 1, key reused (422) 0, \
         rejected 0, store unavailable (503) 0, upstream failed (502/504) 1, \
         passed through 0, abandoned 0",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unkeyed_request_slower_than_the_timeout_is_504() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, _executions, _task) = upstream().await;
    let gateway = Gateway::start(dir.path(), &upstream, &["--timeout", "300ms"]);
    let slow = send(&client(), "POST", &gateway.url("/slow"), None, "A").await;
    assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT, "{}", slow.text());
    assert!(
        slow.text().contains("urn:oncely:http:upstream-timeout"),
        "{}",
        slow.text()
    );
    assert!(slow.text().contains("within 300ms"), "{}", slow.text());
}

/// Writes a keyed POST of `body` (declaring `length` bytes) on a raw connection, waits `wait`,
/// and closes the connection without reading an answer: a client that gave up.
async fn post_and_hang_up(gateway: &Gateway, path: &str, key: &str, body: &str, length: usize) {
    use tokio::io::AsyncWriteExt as _;
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\nIdempotency-Key: {key}\r\n\
         Content-Length: {length}\r\n\r\n{body}"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_request_gets_the_one_execution_on_retry() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, executions, _task) = upstream().await;
    let gateway = Gateway::start(dir.path(), &upstream, &[]);
    let client = client();
    let url = gateway.url("/slow/pay");

    // Gone 0.2 s into the upstream's 1 s: the request runs on.
    post_and_hang_up(&gateway, "/slow/pay", "k", "A", 1).await;
    let retry = send(&client, "POST", &url, Some("k"), "A").await;
    assert_eq!(retry.status, StatusCode::CONFLICT, "{}", retry.text());
    assert_eq!(retry.headers["retry-after"], "1");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after = send(&client, "POST", &url, Some("k"), "A").await;
    assert_eq!(after.status, StatusCode::CREATED, "{}", after.text());
    assert!(after.replayed(), "{}", after.text());
    assert_eq!(executions.of("k"), 1);

    // Gone while its body was still arriving: nothing was sent on, so the retry executes.
    post_and_hang_up(&gateway, "/slow/pay", "half", "A", 10).await;
    let retry = send(&client, "POST", &url, Some("half"), "AAAAAAAAAA").await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text());
    assert!(!retry.replayed());
    assert_eq!(executions.of("half"), 1);
}

/// An upstream that reads each request, counts it, and dies without answering (its connection
/// closes, as when its process is killed).
async fn upstream_that_dies_on_receipt() -> (String, Arc<AtomicU64>) {
    use tokio::io::AsyncReadExt as _;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(AtomicU64::new(0));
    let count = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            count.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (url, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_dies_after_receiving_the_request_is_502_and_the_key_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, received) = upstream_that_dies_on_receipt().await;
    let gateway = Gateway::start(dir.path(), &upstream, &[]);
    let client = client();

    let died = send(&client, "POST", &gateway.url("/pay"), Some("k"), "A").await;
    assert_eq!(died.status, StatusCode::BAD_GATEWAY, "{}", died.text());
    assert!(died.text().contains("may have executed"), "{}", died.text());
    // It may have executed: the retry is not sent on while the key's lease lasts.
    let retry = send(&client, "POST", &gateway.url("/pay"), Some("k"), "A").await;
    assert_eq!(retry.status, StatusCode::CONFLICT, "{}", retry.text());
    assert_eq!(received.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrying_python_client_gets_one_execution_per_key_and_its_answer() {
    const KEYS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let (upstream, executions, _task) = upstream().await;
    let gateway = Gateway::start(dir.path(), &upstream, &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/retrying_client.py");
    let url = gateway.url("/slow/charges");
    // Python's requests with urllib3's Retry, as .ci/run installs them: no silent skip.
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([script, &url, &KEYS.to_string(), "25"])
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let answers: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(answers.len(), KEYS, "{stderr}");
    let mut replayed = 0;
    for answer in &answers {
        let key = answer["key"].as_str().unwrap();
        assert_eq!(answer["status"], 201, "{answer}");
        // One execution, so the answer is that execution's, whoever got it first.
        assert_eq!(
            executions.of(key),
            1,
            "{key} executed more than once: {answer}"
        );
        let body = answer["body"].as_str().unwrap();
        assert!(body.contains(&format!("key={key} n=")), "{answer}");
        replayed += usize::from(answer["replayed"] == true);
    }
    let total = executions.all().values().sum::<u64>();
    eprintln!("{KEYS} keys: {total} upstream executions, {replayed} final answers replayed");
    assert_eq!(total, KEYS as u64);
    // The 0.3 s read timeout cuts every first attempt: the answers came from replays.
    assert!(replayed > KEYS / 2, "only {replayed} replays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_in_flight_wait_a_duplicate_waits_for_the_first_response_instead_of_409() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, executions, _task) = upstream().await;
    let gateway = Gateway::start(dir.path(), &upstream, &["--in-flight-wait", "5s"]);
    let client = client();
    let url = gateway.url("/slow");
    let first = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { send(&client, "POST", &url, Some("k"), "A").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = send(&client, "POST", &url, Some("k"), "A").await;
    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.text());
    assert!(!first.replayed() && second.replayed());
    assert_eq!(second.body, first.body);
    assert_eq!(executions.of("k"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_concurrent_duplicates_executes_each_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", dir.path().join("o.db").display());
    storm(&store, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_concurrent_duplicates_executes_each_key_once_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    storm(&servers::postgres_url().await, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_concurrent_duplicates_executes_each_key_once_on_redis() {
    let dir = tempfile::tempdir().unwrap();
    storm(&servers::redis_url().await, dir.path()).await;
}

/// A storm's requests: `requests` keys out of `keys` distinct ones, each key at least once and
/// the rest random duplicates, in a random order. The seed is printed, and
/// `ONCELY_TEST_STORM_SEED` replays it.
fn storm_order(requests: usize, keys: usize) -> Vec<usize> {
    let seed = std::env::var("ONCELY_TEST_STORM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
    eprintln!("storm: seed {seed} (ONCELY_TEST_STORM_SEED={seed} replays this order)");
    // SplitMix64: enough randomness for an order, and no dependency.
    let mut state = seed;
    let mut next = move |bound: usize| {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z % bound as u64) as usize
    };
    let mut order: Vec<usize> = (0..keys).collect();
    order.extend((keys..requests).map(|_| next(keys)));
    for i in (1..order.len()).rev() {
        order.swap(i, next(i + 1));
    }
    order
}

/// Sends the requests of `order` (key numbers) to `url`, at most `in_flight` at a time; a 409
/// (the key's first request in flight) is retried after 25 ms. Each answer, or the error of a
/// request the gateway never answered, goes to the returned channel with its key and the
/// number of 409s before it.
fn send_storm(
    url: String,
    order: Vec<usize>,
    in_flight: usize,
) -> tokio::sync::mpsc::UnboundedReceiver<(String, Option<Answer>, usize)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = client();
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight));
    tokio::spawn(async move {
        for k in order {
            let permit = permits.clone().acquire_owned().await.unwrap();
            let (client, url, tx) = (client.clone(), url.clone(), tx.clone());
            tokio::spawn(async move {
                let key = format!("key-{k}");
                let body = format!("order {k}");
                let mut conflicts = 0;
                let answer = loop {
                    match try_send(&client, "POST", &url, Some(&key), &body).await {
                        Ok(answer) if answer.status == StatusCode::CONFLICT => {
                            assert!(answer.headers.contains_key("retry-after"));
                            conflicts += 1;
                            tokio::time::sleep(Duration::from_millis(25)).await;
                        }
                        Ok(answer) => break Some(answer),
                        Err(_) => break None,
                    }
                };
                drop(permit);
                let _ = tx.send((key, answer, conflicts));
            });
        }
    });
    rx
}

/// 10,000 requests over 2,000 keys (each at least once, the rest random duplicates, shuffled),
/// 96 at a time, through a gateway on the store at `store`.
async fn storm(store: &str, dir: &Path) {
    const REQUESTS: usize = 10_000;
    const KEYS: usize = 2_000;
    let (upstream, executions, _task) = upstream().await;
    let gateway = Gateway::start_on(store, dir, &upstream, &[]);
    let started = Instant::now();
    let mut answers = send_storm(gateway.url("/orders"), storm_order(REQUESTS, KEYS), 96);

    let mut first: HashMap<String, Bytes> = HashMap::new();
    let mut fresh = 0;
    let mut replays = 0;
    let mut conflicts = 0;
    let mut received = 0;
    while let Some((key, answer, retried)) = answers.recv().await {
        received += 1;
        conflicts += retried;
        let answer = answer.unwrap_or_else(|| panic!("{key}: no answer"));
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
        if answer.replayed() {
            replays += 1;
        } else {
            fresh += 1;
        }
        let body = first
            .entry(key.clone())
            .or_insert_with(|| answer.body.clone());
        assert_eq!(*body, answer.body, "{key}: a different response");
    }
    eprintln!(
        "storm: {received} requests in {:?}; {conflicts} answers were 409 (first request in \
         flight) and retried",
        started.elapsed()
    );
    assert_eq!(received, REQUESTS);
    assert_eq!(fresh, KEYS);
    assert_eq!(replays, REQUESTS - KEYS);
    let all = executions.all();
    assert_eq!(all.len(), KEYS);
    assert!(all.values().all(|&n| n == 1), "{all:?}");

    assert_summary_and_exit_0(
        &gateway.terminate(),
        &format!(
            "requests {}: executed {KEYS}, replayed {}, in flight (409) {conflicts}, \
             key reused (422) 0, rejected 0, store unavailable (503) 0, \
             upstream failed (502/504) 0, passed through 0, abandoned 0",
            REQUESTS + conflicts,
            REQUESTS - KEYS
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_storm_and_restarted_loses_no_completed_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", dir.path().join("o.db").display());
    storm_killed(&store, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_storm_and_restarted_loses_no_completed_record_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    storm_killed(&servers::postgres_url().await, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_storm_and_restarted_loses_no_completed_record_on_redis() {
    let dir = tempfile::tempdir().unwrap();
    storm_killed(&servers::redis_url().await, dir.path()).await;
}

/// A storm (3,000 requests over 600 keys) through a gateway on `store` that is SIGKILLed once
/// 500 answers have arrived, then restarted on the same store and upstream. Every key the
/// client saw answered before the kill is a completed record: it replays that answer byte for
/// byte and the upstream is not called for it again. A key whose requests were all cut off may
/// execute at most once more: at once if the killed gateway had not claimed it, or once its
/// claim's lease (--timeout 1s + 30s) runs out, which the test waits for.
async fn storm_killed(store: &str, dir: &Path) {
    const REQUESTS: usize = 3_000;
    const KEYS: usize = 600;
    const KILL_AFTER: usize = 500;
    let (upstream, executions, _task) = upstream().await;
    let gateway = Gateway::start_on(store, dir, &upstream, &["--timeout", "1s"]);
    let mut answers = send_storm(gateway.url("/orders"), storm_order(REQUESTS, KEYS), 96);

    let mut gateway = Some(gateway);
    let mut completed: HashMap<String, Answer> = HashMap::new();
    let (mut received, mut cut_off) = (0, 0);
    while let Some((key, answer, _)) = answers.recv().await {
        let Some(answer) = answer else {
            assert!(gateway.is_none(), "{key}: no answer from a running gateway");
            cut_off += 1;
            continue;
        };
        received += 1;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
        match completed.get(&key) {
            Some(first) => assert_eq!(first.body, answer.body, "{key}: a different response"),
            None => {
                completed.insert(key, answer);
            }
        }
        if received == KILL_AFTER {
            gateway.take().unwrap().kill9();
        }
    }
    assert!(gateway.is_none(), "the storm ended before the kill");
    let before = executions.all();
    eprintln!(
        "killed mid-storm: {received} answers ({} keys completed), {cut_off} requests cut off, \
         {} keys executed",
        completed.len(),
        before.len()
    );
    for key in completed.keys() {
        assert_eq!(before.get(key), Some(&1), "{key}");
    }

    let gateway = Gateway::start_on(store, dir, &upstream, &[]);
    let client = client();
    let url = gateway.url("/orders");
    let (mut replayed, mut executed, mut held) = (0, 0, Vec::new());
    for k in 0..KEYS {
        let key = format!("key-{k}");
        let answer = send(&client, "POST", &url, Some(&key), &format!("order {k}")).await;
        let was = before.get(&key).copied().unwrap_or(0);
        if let Some(first) = completed.get(&key) {
            assert_eq!(answer.status, first.status, "{key}: {}", answer.text());
            assert!(answer.replayed(), "{key}: executed again after the restart");
            assert_eq!(answer.body, first.body, "{key}: a different response");
            assert_eq!(executions.of(&key), 1, "{key}");
            replayed += 1;
            continue;
        }
        match answer.status {
            StatusCode::CREATED if answer.replayed() => {
                assert_eq!(executions.of(&key), was, "{key}");
                replayed += 1;
            }
            StatusCode::CREATED => {
                assert_eq!(executions.of(&key), was + 1, "{key}");
                assert!(was <= 1, "{key}: executed {was} times before the restart");
                executed += 1;
            }
            StatusCode::CONFLICT => {
                assert!(answer.headers.contains_key("retry-after"));
                assert_eq!(executions.of(&key), was, "{key}");
                held.push(k);
            }
            status => panic!("{key}: {status} {}", answer.text()),
        }
    }
    eprintln!(
        "after the restart: {replayed} keys replayed, {executed} executed, {} still held by a \
         claim of the killed gateway (409 until its lease ends)",
        held.len()
    );
    assert!(replayed >= completed.len());

    // The killed gateway's claims end with their lease: then each held key executes once more
    // at most, and its next request replays that answer.
    let waited = Instant::now();
    let deadline = waited + Duration::from_secs(31) + PATIENCE;
    for k in held {
        let key = format!("key-{k}");
        let body = format!("order {k}");
        let was = before.get(&key).copied().unwrap_or(0);
        let answer = loop {
            let answer = send(&client, "POST", &url, Some(&key), &body).await;
            if answer.status != StatusCode::CONFLICT {
                break answer;
            }
            assert!(Instant::now() < deadline, "{key}: still held");
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "{key}: {}",
            answer.text()
        );
        assert!(executions.of(&key) <= was + 1, "{key}");
        let again = send(&client, "POST", &url, Some(&key), &body).await;
        assert!(again.replayed(), "{key}");
        assert_eq!(again.body, answer.body, "{key}: a different response");
        assert!(executions.of(&key) <= was + 1, "{key}");
    }
    eprintln!("the held keys were released after {:?}", waited.elapsed());
    assert!(executions.all().values().all(|&n| n <= 2));
    let (code, _) = gateway.terminate();
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gateway_on_the_same_store_replays_a_completed_key() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, executions, _task) = upstream().await;
    let client = client();

    let gateway = Gateway::start(dir.path(), &upstream, &[]);
    let first = send(&client, "POST", &gateway.url("/pay"), Some("k"), "A").await;
    assert_eq!(first.status, StatusCode::CREATED);
    let (code, _) = gateway.terminate();
    assert_eq!(code, Some(0));

    let gateway = Gateway::start(dir.path(), &upstream, &[]);
    let again = send(&client, "POST", &gateway.url("/pay"), Some("k"), "A").await;
    assert!(again.replayed());
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.body, first.body);
    assert_eq!(executions.of("k"), 1);
    let (code, _) = gateway.terminate();
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_request_in_flight_finish_then_exits_0_with_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, executions, _task) = upstream().await;
    let gateway = Gateway::start(dir.path(), &upstream, &[]);
    let client = client();
    let url = gateway.url("/slow");
    let in_flight = tokio::spawn(async move { send(&client, "POST", &url, Some("k"), "A").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let terminated = tokio::task::spawn_blocking(move || gateway.terminate());

    let answer = in_flight.await.unwrap();
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    assert_eq!(executions.of("k"), 1);
    let terminated = terminated.await.unwrap();
    assert!(
        terminated
            .1
            .iter()
            .any(|l| l.starts_with("stopping: no new connections")),
        "{:#?}",
        terminated.1
    );
    assert_summary_and_exit_0(
        &terminated,
        "requests 1: executed 1, replayed 0, in flight (409) 0, key reused (422) 0, \
         rejected 0, store unavailable (503) 0, upstream failed (502/504) 0, \
         passed through 0, abandoned 0",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_outcome_in_prometheus_text() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, _executions, _task) = upstream().await;
    let gateway = Gateway::start(dir.path(), &upstream, &["--metrics-addr", "127.0.0.1:0"]);
    let metrics = gateway
        .stderr
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| l.strip_prefix("metrics on ").map(str::to_owned))
        .expect("the metrics address on stderr");
    let client = client();
    for _ in 0..3 {
        send(&client, "POST", &gateway.url("/pay"), Some("k"), "A").await;
    }
    send(&client, "GET", &gateway.url("/pay"), None, "").await;

    let scrape = send(&client, "GET", &metrics, None, "").await;
    assert_eq!(scrape.status, StatusCode::OK);
    let text = scrape.text();
    for line in [
        "oncely_serve_requests_total{outcome=\"executed\"} 1",
        "oncely_serve_requests_total{outcome=\"replayed\"} 2",
        "oncely_serve_requests_total{outcome=\"passed_through\"} 1",
        "oncely_serve_requests_total{outcome=\"in_flight\"} 0",
        "oncely_serve_request_duration_seconds_count{outcome=\"replayed\"} 2",
        "oncely_serve_request_duration_seconds_bucket{outcome=\"replayed\",le=\"+Inf\"} 2",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
    let (code, _) = gateway.terminate();
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_scoped_by_the_principal_headers() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, executions, _task) = upstream().await;
    let gateway = Gateway::start(
        dir.path(),
        &upstream,
        &["--principal-header", "authorization"],
    );
    let client = client();
    let as_user = |user: &'static str| {
        let client = client.clone();
        let url = gateway.url("/pay");
        async move {
            let request = Request::post(url)
                .header("idempotency-key", "k")
                .header("authorization", user)
                .body(Full::new(Bytes::from_static(b"A")))
                .unwrap();
            let response = client.request(request).await.unwrap();
            let replayed = response.headers().contains_key("idempotent-replayed");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (replayed, body)
        }
    };
    let (alice_replayed, alice) = as_user("Bearer alice").await;
    let (bob_replayed, bob) = as_user("Bearer bob").await;
    let (again_replayed, again) = as_user("Bearer alice").await;
    assert!(!alice_replayed && !bob_replayed && again_replayed);
    assert_ne!(alice, bob);
    assert_eq!(again, alice);
    assert_eq!(executions.of("k"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_over_the_storage_limit_streams_through_and_its_key_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, executions, _task) = upstream().await;
    let gateway = Gateway::start(dir.path(), &upstream, &[]);
    let client = client();

    let big = send(&client, "POST", &gateway.url("/big"), Some("k"), "A").await;
    assert_eq!(big.status, StatusCode::CREATED);
    assert!(big.body.len() > 2 * 1024 * 1024, "{}", big.body.len());
    let again = send(&client, "POST", &gateway.url("/big"), Some("k"), "A").await;
    assert!(!again.replayed());
    assert_ne!(again.body, big.body);
    assert_eq!(executions.of("k"), 2);
    let get = send(&client, "GET", &gateway.url("/big"), None, "").await;
    assert!(get.body.len() > 2 * 1024 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_with_130() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, _executions, _task) = upstream().await;
    let mut gateway = Gateway::start(dir.path(), &upstream, &[]);
    let client = client();
    let url = gateway.url("/slow");
    let _in_flight = tokio::spawn(async move {
        client
            .request(Request::post(url).body(Full::default()).unwrap())
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = i32::try_from(gateway.child.id()).unwrap();
    // SAFETY: kill(2) on the pid of our own child, which has not been waited for.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let started = Instant::now();
    while !gateway
        .stderr
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.starts_with("stopping:"))
    {
        assert!(started.elapsed() < PATIENCE, "no stopping line");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = gateway.child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    // Before the slow request (1s) could finish.
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    let _ = gateway.ended.recv_timeout(PATIENCE);
    let stderr = gateway.stderr.lock().unwrap().clone();
    assert!(
        stderr.last().unwrap().starts_with("error: stopped at once"),
        "{stderr:#?}"
    );
}

/// An upstream answering HTTP/1.0 and closing the connection, like Python's http.server.
fn http10_upstream() -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let _ = stream.write_all(b"HTTP/1.0 201 Created\r\nContent-Length: 2\r\n\r\nok");
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_upstream_is_answered_in_the_clients_version() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(dir.path(), &http10_upstream(), &[]);
    let client = client();
    for replayed in [false, true] {
        let answer = send(&client, "POST", &gateway.url("/pay"), Some("k"), "A").await;
        assert_eq!(answer.status, StatusCode::CREATED);
        assert_eq!(answer.version, hyper::Version::HTTP_11);
        assert_eq!(answer.replayed(), replayed);
        assert_eq!(&answer.body[..], b"ok");
    }
}

#[test]
fn an_https_upstream_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let output: Output = Command::new(BIN)
        .args([
            "--store",
            "memory:",
            "serve",
            "--upstream",
            "https://example.com",
        ])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: --upstream `https://example.com`: https is not supported"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// The layer's options as flags.

/// A TCP link to the Redis server under test that the test can cut: the gateway's store goes
/// away mid-run (its connections closed, new ones refused), as when Redis goes down.
struct StoreLink {
    addr: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl StoreLink {
    /// A link to the server of the Redis URL `url`.
    async fn to(url: &str) -> StoreLink {
        let server = redis_authority(url);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let held = connections.clone();
        let accepting = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let server = server.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&server).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                held.lock().unwrap().push(task.abort_handle());
            }
        });
        StoreLink {
            addr,
            accepting,
            connections,
        }
    }

    /// `url` (a Redis URL) through this link.
    fn url(&self, url: &str) -> String {
        url.replacen(&redis_authority(url), &self.addr.to_string(), 1)
    }

    /// Closes every connection and refuses new ones.
    async fn cut(self) {
        self.accepting.abort();
        // The listener is dropped with the accepting task; then no connection is added.
        let _ = self.accepting.await;
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

/// `HOST:PORT` of a Redis URL.
fn redis_authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap();
    let host_port = authority.rsplit('@').next().unwrap();
    if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:6379")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_gone_down_is_503_and_with_fail_open_requests_still_reach_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, executions, _task) = upstream().await;
    let store = servers::redis_url().await;
    let link = StoreLink::to(&store).await;
    let through_link = link.url(&store);
    let closed = Gateway::start_on(&through_link, dir.path(), &upstream, &[]);
    let open = Gateway::start_on(&through_link, dir.path(), &upstream, &["--fail-open"]);
    let client = client();
    for gateway in [&closed, &open] {
        let key = format!("up-{}", gateway.addr.port());
        let answer = send(&client, "POST", &gateway.url("/pay"), Some(&key), "A").await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    }

    link.cut().await;
    let refused = send(&client, "POST", &closed.url("/pay"), Some("down-1"), "A").await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.text()
    );
    assert_eq!(refused.content_type(), "application/problem+json");
    assert!(
        refused.text().contains("urn:oncely:http:store-unavailable"),
        "{}",
        refused.text()
    );
    assert_eq!(executions.of("down-1"), 0, "fail closed forwards nothing");

    for _ in 0..2 {
        let through = send(&client, "POST", &open.url("/pay"), Some("down-2"), "A").await;
        assert_eq!(through.status, StatusCode::CREATED, "{}", through.text());
        assert!(!through.replayed());
        assert!(through.text().contains("key=down-2"), "{}", through.text());
    }
    // Unprotected: each retry executes, which is what fail open trades for availability.
    assert_eq!(executions.of("down-2"), 2);

    assert_summary_and_exit_0(
        &closed.terminate(),
        "requests 2: executed 1, replayed 0, in flight (409) 0, key reused (422) 0, \
         rejected 0, store unavailable (503) 1, upstream failed (502/504) 0, \
         passed through 0, abandoned 0",
    );
    let (code, stderr) = open.terminate();
    assert_summary_and_exit_0(
        &(code, stderr.clone()),
        "requests 3: executed 1, replayed 0, in flight (409) 0, key reused (422) 0, \
         rejected 0, store unavailable (503) 0, upstream failed (502/504) 0, \
         passed through 2, abandoned 0",
    );
    // The layer's warning reaches stderr through the log (RUST_LOG unset: warnings).
    assert!(
        stderr.iter().any(|l| l.contains("fail open")),
        "{stderr:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_releases_the_key_and_with_store_server_errors_it_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, executions, _task) = upstream().await;
    let releasing = Gateway::start(dir.path(), &upstream, &[]);
    let client = client();
    for _ in 0..2 {
        let answer = send(&client, "POST", &releasing.url("/fail"), Some("r-1"), "A").await;
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!answer.replayed());
    }
    assert_eq!(executions.of("r-1"), 2, "a released key executes again");
    drop(releasing);

    let storing = Gateway::start(dir.path(), &upstream, &["--store-server-errors"]);
    let first = send(&client, "POST", &storing.url("/fail"), Some("s-1"), "A").await;
    assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
    let again = send(&client, "POST", &storing.url("/fail"), Some("s-1"), "A").await;
    assert_eq!(again.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(again.replayed());
    assert_eq!(again.body, first.body);
    assert_eq!(executions.of("s-1"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_header_is_sent_but_never_replayed_and_set_cookie_stays_denied() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, _executions, _task) = upstream().await;
    let store = format!("sqlite:{}", dir.path().join("o.db").display());
    let by_flag = Gateway::start_on(
        &store,
        dir.path(),
        &upstream,
        &["--deny-header", "X-Upstream"],
    );
    let by_env = Gateway::start_with_env(
        &store,
        dir.path(),
        &upstream,
        &[],
        &[("ONCELY_DENY_HEADERS", "x-other,X-Upstream")],
    );
    let client = client();
    for (gateway, key) in [(&by_flag, "d-1"), (&by_env, "d-2")] {
        let first = send(&client, "POST", &gateway.url("/orders"), Some(key), "A").await;
        assert_eq!(first.headers["x-upstream"], "yes");
        assert_eq!(first.headers["set-cookie"], "session=1");
        let again = send(&client, "POST", &gateway.url("/orders"), Some(key), "A").await;
        assert!(again.replayed());
        assert_eq!(again.body, first.body);
        assert!(
            !again.headers.contains_key("x-upstream"),
            "{:?}",
            again.headers
        );
        assert!(
            !again.headers.contains_key("set-cookie"),
            "{:?}",
            again.headers
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_body_takes_binary_units_and_fingerprint_headers_tell_requests_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, executions, _task) = upstream().await;
    let gateway = Gateway::start(
        dir.path(),
        &upstream,
        &["--max-body", "1KiB", "--fingerprint-header", "X-Hop"],
    );
    let client = client();
    let small = send(
        &client,
        "POST",
        &gateway.url("/a"),
        Some("m-1"),
        &"x".repeat(1024),
    )
    .await;
    assert_eq!(small.status, StatusCode::CREATED);
    let large = send(
        &client,
        "POST",
        &gateway.url("/a"),
        Some("m-2"),
        &"x".repeat(1025),
    )
    .await;
    assert_eq!(
        large.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        large.text()
    );
    assert_eq!(executions.of("m-2"), 0);

    // `send` sends X-Hop: 1; the same key with another X-Hop value is another request.
    let request = Request::post(gateway.url("/a"))
        .header("idempotency-key", "m-1")
        .header("x-hop", "2")
        .body(Full::new(Bytes::from("x".repeat(1024))))
        .unwrap();
    let reused = client.request(request).await.unwrap();
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(executions.of("m-1"), 1);
}

#[test]
fn a_size_that_is_not_one_is_refused_with_the_accepted_forms() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args([
            "serve",
            "--upstream",
            "http://127.0.0.1:9",
            "--max-response",
            "1MB",
        ])
        .current_dir(dir.path())
        .env_remove("ONCELY_STORE")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`1MB` is not a size: unknown unit `MB`")
            && stderr.contains("e.g. 65536, 64KiB, 1MiB"),
        "{stderr}"
    );
    assert!(!dir.path().join("oncely.db").exists());
}
